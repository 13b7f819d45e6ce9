// A node with many connected clients, each with one peer: the node's
// memory per client, and the message rate among them.
//   node test/many.mjs [CLIENTS=10000] [MESSAGES=100000]
import { readFileSync } from 'node:fs';
import { connect } from '../src/index.js';
import { startNode } from './nodes.mjs';

const CLIENTS = Number(process.argv[2] || 10000);
const MESSAGES = Number(process.argv[3] || 100000);
const rss = (pid) => Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]) * 1024;

const node = await startNode(['--inbox-capacity', '1024']);
try {
  await new Promise((r) => setTimeout(r, 500));
  const before = rss(node.proc.pid);
  const hosts = [];
  const peers = [];
  let received = 0;
  let t0 = performance.now();
  for (let i = 0; i < CLIENTS; i += 100) {
    const batch = await Promise.all(Array.from({ length: Math.min(100, CLIENTS - i) }, async (_, k) => {
      const h = await connect(node.url, { reconnect: false });
      const p = await h.create(`c${i + k}`);
      p.on('message', () => { received++; });
      return [h, p];
    }));
    for (const [h, p] of batch) { hosts.push(h); peers.push(p); }
  }
  const connectS = (performance.now() - t0) / 1000;
  await new Promise((r) => setTimeout(r, 1000));
  const after = rss(node.proc.pid);

  // Each message from a random client's peer to another random one.
  t0 = performance.now();
  let sent = 0;
  const worker = async (w) => {
    for (let j = w; j < MESSAGES; j += 256) {
      const from = peers[(j * 7919) % CLIENTS];
      await from.send(`c${(j * 104729 + 1) % CLIENTS}`, 'x'.repeat(62));
      sent++;
    }
  };
  await Promise.all(Array.from({ length: 256 }, (_, w) => worker(w)));
  const deadline = Date.now() + 30000;
  while (received < sent && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  const rate = Math.round(received / ((performance.now() - t0) / 1000));
  const loaded = rss(node.proc.pid);
  console.log(`${CLIENTS} clients, one peer each, on one distribus-node (connected in ${connectS.toFixed(1)} s)`);
  console.log(`  node RSS: ${(before / 2 ** 20).toFixed(1)} MiB idle, ${(after / 2 ** 20).toFixed(1)} MiB with the clients, ${(loaded / 2 ** 20).toFixed(1)} MiB after the messages`);
  console.log(`  per client: ${Math.round((after - before) / CLIENTS)} bytes`);
  console.log(`  ${received} of ${sent} messages among them (256 in flight): ${rate} msg/s`);
  await Promise.all(hosts.map((h) => h.close()));
} finally {
  await node.stop();
}
