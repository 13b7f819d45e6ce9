// Throughput and round trip from Node.js through the gateways of two
// distribus-node processes: a client on node A sends 64-byte messages to a
// peer whose client is on node B (in a second Node.js process, as the
// original's benchmark runs its host B; once more with that client in this
// process), and round trips to echo peers: in node B itself, in node A, and
// behind clients. Compare with ../shared/peers/run.sh in the same sitting.
//   node test/bench.mjs [N=20000] [RTT=2000]
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { connect } from '../src/index.js';
import { startNode, eventually } from './nodes.mjs';

const N = Number(process.argv[2] || 20000);
const RTT = Number(process.argv[3] || 2000);
const PAYLOAD64 = 'x'.repeat(62); // 64 bytes as a JSON string

const a = await startNode(['--inbox-capacity', '65536', '--echo-peer', 'bench-echo-node-a']);
const b = await startNode(['--join', a.addr, '--inbox-capacity', '65536', '--echo-peer', 'bench-echo-node']);
try {
  const hostA = await connect(a.url);
  const hostB = await connect(b.url);
  const sender = await hostA.create('bench-a');
  // The sink's client runs in a second Node.js process, as the original's
  // benchmark runs its receiving host: each process does one side's work.
  const child = fork(fileURLToPath(new URL('./bench-sink.mjs', import.meta.url)), [b.url]);
  const fromChild = (type) => new Promise((resolve) => {
    const on = (m) => { if (m.type === type) { child.off('message', on); resolve(m); } };
    child.on('message', on);
  });
  await fromChild('ready');
  const arm = async (n) => {
    const armed = fromChild('armed');
    child.send({ type: 'arm', n });
    await armed;
    // In an object, so that awaiting `arm` does not wait for the count.
    return { done: fromChild('done') };
  };
  const echo = await hostB.create('bench-echo');
  // The same round trip with the echo's client on node A: the gateway's
  // share without the hop between hosts.
  const hostA2 = await connect(a.url);
  const localEcho = await hostA2.create('bench-echo-local');
  localEcho.on('message', (from, m) => { localEcho.send(from, m); });
  await eventually('sink findable', async () => (await hostA.find('bench-sink')).host === hostB.id);
  echo.on('message', (from, m) => { echo.send(from, m); });
  // Warm-up: as many sends as the original's benchmark makes before its
  // fired-at-once run (500, then N one at a time), so both measure code
  // that the JIT has compiled.
  let received = (await arm(N + 500)).done;
  await Promise.all(Array.from({ length: N + 500 }, () => sender.send('bench-sink', PAYLOAD64)));
  await received;

  const rows = [];
  // Fired at once: every send started, then all awaited.
  received = (await arm(N)).done;
  let t0 = performance.now();
  const wall0 = performance.timeOrigin + t0;
  await Promise.all(Array.from({ length: N }, () => sender.send('bench-sink', PAYLOAD64)));
  const last = await received;
  rows.push(['fired at once, acknowledged', Math.round(N / ((performance.now() - t0) / 1000)), 'msg/s']);
  // Until the sink's client had the last one, by its clock (as the
  // original's `remote_send_fire_all_received`).
  rows.push(['fired at once, received', Math.round(N / ((last.t - wall0) / 1000)), 'msg/s']);

  // 128 in flight.
  received = (await arm(N)).done;
  let next = 0;
  t0 = performance.now();
  const worker = async () => { while (next < N) { next++; await sender.send('bench-sink', PAYLOAD64); } };
  await Promise.all(Array.from({ length: 128 }, worker));
  await received;
  rows.push(['128 in flight, acknowledged', Math.round(N / ((performance.now() - t0) / 1000)), 'msg/s']);

  // The same fired at once with the sink's client in this process: one
  // Node.js process does both sides' work.
  const here = await hostB.create('bench-sink-here');
  await eventually('second sink findable', async () => (await hostA.find('bench-sink-here')).host === hostB.id);
  let hereCount = 0;
  let hereDone = null;
  here.on('message', () => { hereCount++; if (hereCount === N && hereDone) hereDone(); });
  const hereAll = new Promise((r) => { hereDone = r; });
  t0 = performance.now();
  await Promise.all(Array.from({ length: N }, () => sender.send('bench-sink-here', PAYLOAD64)));
  await hereAll;
  rows.push(['fired at once, sink in-process', Math.round(N / ((performance.now() - t0) / 1000)), 'msg/s']);

  // Ping-pong round trip: A -> echo on B -> A, one at a time.
  let pending = null;
  sender.on('message', () => { const r = pending; pending = null; if (r) r(); });
  // `awaitSend`: the round trip ends once both the send's acknowledgement
  // and the echo are in; without it, once the echo is in, as the
  // original's ping-pong measures (its send is not awaited).
  const roundTrips = async (to, awaitSend = true) => {
    const rtts = [];
    for (let i = 0; i < 200 + RTT; i++) {
      const got = new Promise((r) => { pending = r; });
      const s = performance.now();
      const sent = sender.send(to, PAYLOAD64);
      if (awaitSend) await sent; else sent.catch(() => {});
      await got;
      if (i >= 200) rtts.push((performance.now() - s) * 1000);
    }
    rtts.sort((x, y) => x - y);
    return (p) => Math.round(rtts[Math.floor(p * (rtts.length - 1))]);
  };
  let q = await roundTrips('bench-echo');
  rows.push(['round trip p50 (echo on B)', q(0.5), 'µs']);
  rows.push(['round trip p99 (echo on B)', q(0.99), 'µs']);
  q = await roundTrips('bench-echo-local');
  rows.push(['round trip p50 (echo on A)', q(0.5), 'µs']);
  // To a peer living in node B (the node's echo peer): the client's one
  // gateway hop each way and the hop between hosts.
  q = await roundTrips('bench-echo-node');
  rows.push(['round trip p50 (B\'s echo peer)', q(0.5), 'µs']);
  rows.push(['round trip p99 (B\'s echo peer)', q(0.99), 'µs']);
  // The original's ping-pong: the send not awaited, the echo awaited.
  q = await roundTrips('bench-echo-node', false);
  rows.push(['ping-pong p50 (B\'s echo peer)', q(0.5), 'µs']);
  rows.push(['ping-pong p99 (B\'s echo peer)', q(0.99), 'µs']);
  // To node A's own echo peer: one gateway hop each way, no hop between
  // hosts: the two process crossings of the original's ping-pong.
  q = await roundTrips('bench-echo-node-a');
  rows.push(['round trip p50 (A\'s echo peer)', q(0.5), 'µs']);
  rows.push(['round trip p99 (A\'s echo peer)', q(0.99), 'µs']);
  q = await roundTrips('bench-echo-node-a', false);
  rows.push(['ping-pong p50 (A\'s echo peer)', q(0.5), 'µs']);
  const rtts = [];
  for (let i = 0; i < 200 + RTT; i++) {
    const s = performance.now();
    await sender.request('bench-echo-node', PAYLOAD64);
    if (i >= 200) rtts.push((performance.now() - s) * 1000);
  }
  rtts.sort((x, y) => x - y);
  rows.push(['request/reply p50 (B\'s echo)', Math.round(rtts[Math.floor(0.5 * (rtts.length - 1))]), 'µs']);
  rows.push(['request/reply p99 (B\'s echo)', Math.round(rtts[Math.floor(0.99 * (rtts.length - 1))]), 'µs']);

  console.log(`distribus-client (Node.js ${process.version}), 64 B, N=${N}`);
  if (process.env.BENCH_CPU) {
    const { readFileSync } = await import('node:fs');
    const ticks = (pid) => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ').slice(11, 13).map(Number);
    const me = process.cpuUsage();
    console.log(`  cpu s: client ${((me.user + me.system) / 1e6).toFixed(1)}, node A ${ticks(a.proc.pid).map((t) => t / 100)}, node B ${ticks(b.proc.pid).map((t) => t / 100)}, sink's client ${ticks(child.pid).map((t) => t / 100)} (user, sys)`);
  }
  for (const [what, v, unit] of rows) console.log(`  ${what.padEnd(32)} ${String(v).padStart(9)} ${unit}`);
  await hostA.close();
  await hostA2.close();
  await hostB.close();
  child.send({ type: 'stop' });
} finally {
  await Promise.all([a.stop(), b.stop()]);
}
