import { startNode } from './nodes.mjs';
import { spawn } from 'node:child_process';
import WebSocket from 'ws';
const N = 3000;
async function rtt(url, hello, ping) {
  const ws = new WebSocket(url);
  await new Promise((r) => ws.on('open', r));
  let pending = null;
  ws.on('message', () => { const p = pending; pending = null; if (p) p(); });
  if (hello) { const g = new Promise((r) => { pending = r; }); ws.send(hello); await g; }
  const xs = [];
  for (let i = 0; i < N; i++) {
    const g = new Promise((r) => { pending = r; });
    const s = performance.now();
    ws.send(ping(i));
    await g;
    if (i > 300) xs.push((performance.now() - s) * 1000);
  }
  ws.close();
  xs.sort((a, b) => a - b);
  return Math.round(xs[xs.length >> 1]);
}
const a = await startNode([]);
const child = spawn('node', ['test/echo.tmp.mjs'], { stdio: ['ignore', 'pipe', 'inherit'] });
const port = await new Promise((r) => child.stdout.on('data', (d) => { const m = String(d).match(/PORT (\d+)/); if (m) r(m[1]); }));
for (let k = 0; k < 6; k++) {
  console.log('gateway ping', await rtt(a.url, '{"op":"hello","id":1,"version":1}', (i) => `{"op":"ping","id":${i + 2}}`),
    'node echo (other process)', await rtt(`ws://127.0.0.1:${port}`, null, (i) => `{"op":"ping","id":${i + 2}}`));
}
child.kill();
await a.stop();
