// The receiving side of test/bench.mjs in its own Node.js process, as the
// original distribus's benchmark runs its host B: connects to node B,
// attaches `bench-sink`, and reports over IPC when an armed count arrived.
//   (started by bench.mjs with fork(): node test/bench-sink.mjs <ws url>)
import { connect } from '../src/index.js';

const host = await connect(process.argv[2]);
const sink = await host.create('bench-sink');
let target = 0;
let count = 0;
sink.on('message', () => {
  count++;
  // The wall clock, comparable with the parent's (as the original's host B).
  if (count === target) process.send({ type: 'done', count, t: performance.timeOrigin + performance.now() });
});
process.on('message', (m) => {
  if (m.type === 'arm') {
    target = m.n;
    count = 0;
    process.send({ type: 'armed' });
  } else if (m.type === 'stop') {
    host.close().then(() => process.exit(0));
  }
});
process.on('disconnect', () => process.exit(0));
process.send({ type: 'ready' });
