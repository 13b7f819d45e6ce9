// Throughput and round trip from Node.js through the gateways of two
// distribus-node processes: a client on node A sends 64-byte messages to a
// peer whose client is on node B (same Node.js process, as separate
// connections), and round trips to a peer living in node B itself (its
// echo peer). Compare with ../shared/peers/run.sh in the same sitting.
//   node test/bench.mjs [N=20000] [RTT=2000]
import { connect } from '../src/index.js';
import { twoNodes, eventually } from './nodes.mjs';

const N = Number(process.argv[2] || 20000);
const RTT = Number(process.argv[3] || 2000);
const PAYLOAD64 = 'x'.repeat(62); // 64 bytes as a JSON string

const [a, b] = await twoNodes(['--inbox-capacity', '65536'], ['--echo-peer', 'bench-echo-node']);
try {
  const hostA = await connect(a.url);
  const hostB = await connect(b.url);
  const sender = await hostA.create('bench-a');
  const sink = await hostB.create('bench-sink');
  const echo = await hostB.create('bench-echo');
  // The same round trip with the echo's client on node A: the gateway's
  // share without the hop between hosts.
  const hostA2 = await connect(a.url);
  const localEcho = await hostA2.create('bench-echo-local');
  localEcho.on('message', (from, m) => { localEcho.send(from, m); });
  await eventually('sink findable', async () => (await hostA.find('bench-sink')).host === hostB.id);
  echo.on('message', (from, m) => { echo.send(from, m); });
  let received = 0;
  let onCount = null;
  sink.on('message', () => { received++; if (onCount && received >= onCount.n) onCount.resolve(); });
  const allReceived = (n) => new Promise((resolve) => { onCount = { n, resolve }; if (received >= n) resolve(); });

  // Warm-up.
  await Promise.all(Array.from({ length: 2000 }, () => sender.send('bench-sink', PAYLOAD64)));
  await allReceived(2000);

  const rows = [];
  // Fired at once: every send started, then all awaited.
  received = 0;
  let t0 = performance.now();
  await Promise.all(Array.from({ length: N }, () => sender.send('bench-sink', PAYLOAD64)));
  await allReceived(N);
  rows.push(['fired at once, acknowledged', Math.round(N / ((performance.now() - t0) / 1000)), 'msg/s']);

  // 128 in flight.
  received = 0;
  let next = 0;
  t0 = performance.now();
  const worker = async () => { while (next < N) { next++; await sender.send('bench-sink', PAYLOAD64); } };
  await Promise.all(Array.from({ length: 128 }, worker));
  await allReceived(N);
  rows.push(['128 in flight, acknowledged', Math.round(N / ((performance.now() - t0) / 1000)), 'msg/s']);

  // Ping-pong round trip: A -> echo on B -> A, one at a time.
  let pending = null;
  sender.on('message', () => { const r = pending; pending = null; if (r) r(); });
  const roundTrips = async (to) => {
    const rtts = [];
    for (let i = 0; i < 200 + RTT; i++) {
      const got = new Promise((r) => { pending = r; });
      const s = performance.now();
      await sender.send(to, PAYLOAD64);
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
    console.log(`  cpu s: client ${((me.user + me.system) / 1e6).toFixed(1)}, node A ${ticks(a.proc.pid).map((t) => t / 100)}, node B ${ticks(b.proc.pid).map((t) => t / 100)} (user, sys)`);
  }
  for (const [what, v, unit] of rows) console.log(`  ${what.padEnd(32)} ${String(v).padStart(9)} ${unit}`);
  await hostA.close();
  await hostA2.close();
  await hostB.close();
} finally {
  await Promise.all([a.stop(), b.stop()]);
}
