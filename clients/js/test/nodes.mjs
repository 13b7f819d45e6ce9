// Starts real distribus-node processes with a client gateway for the tests:
// a seed and a second node that joins it, each on OS-chosen ports.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = join(dirname(fileURLToPath(import.meta.url)), '../../..');

export function nodeBinary() {
  if (process.env.DISTRIBUS_NODE) return process.env.DISTRIBUS_NODE;
  for (const profile of ['release', 'debug']) {
    const p = join(repo, 'target', profile, 'distribus-node');
    if (existsSync(p)) return p;
  }
  throw new Error('no distribus-node binary: run `cargo build --release` or set DISTRIBUS_NODE');
}

/** Starts one node; resolves with {url, addr, proc, stop} once it printed both. */
export function startNode(args = []) {
  const proc = spawn(nodeBinary(), [
    '--listen', '/ip4/127.0.0.1/tcp/0',
    '--gateway', '127.0.0.1:0',
    '--heartbeat', '250ms', '--lease', '3s',
    '-q',
    ...args,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stderr.on('data', (d) => { err += d; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`node did not start in 20 s: ${out} ${err}`));
    }, 20000);
    proc.on('exit', (code) => reject(new Error(`node exited with ${code}: ${err}`)));
    proc.stdout.on('data', (d) => {
      out += d;
      const url = out.match(/client gateway on (ws:\/\/\S+)/);
      const addr = out.match(/listening on (\S+)/);
      if (url && addr) {
        clearTimeout(timer);
        const stop = () => new Promise((done) => {
          if (proc.exitCode !== null) return done();
          proc.once('exit', done);
          proc.kill('SIGTERM');
          setTimeout(() => proc.kill('SIGKILL'), 5000);
        });
        resolve({ url: url[1], addr: addr[1], proc, stop });
      }
    });
  });
}

/** A seed node and a node joined to it (`extraB`: the second's own options). */
export async function twoNodes(extra = [], extraB = []) {
  const a = await startNode(extra);
  const b = await startNode(['--join', a.addr, ...extra, ...extraB]);
  return [a, b];
}

/** Polls `check` every 50 ms until it resolves truthy, for at most `ms`. */
export async function eventually(what, check, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    try { if (await check()) return; } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The next `n` values `register` delivers, within `ms`. */
export function collect(register, n, ms = 10000) {
  return new Promise((resolve, reject) => {
    const got = [];
    const timer = setTimeout(() => reject(new Error(`got ${got.length} of ${n}`)), ms);
    register((...args) => {
      got.push(args);
      if (got.length === n) { clearTimeout(timer); resolve(got); }
    });
  });
}
