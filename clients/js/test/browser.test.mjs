// The demo page in a real browser (Debian's chromium driven by
// playwright-core): two pages on two different nodes chat, get an echo
// from a Rust peer, and receive a publish.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { twoNodes } from './nodes.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
let a;
let b;
let browser;

before(async () => {
  [a, b] = await twoNodes(['--gateway-ui', '--echo-peer', 'echo']);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});
after(async () => {
  await browser?.close();
  await Promise.all([a?.stop(), b?.stop()]);
});

async function open(node, name) {
  const page = await browser.newPage();
  page.on('pageerror', (e) => { throw e; });
  await page.goto(node.url.replace('ws://', 'http://') + '/');
  await page.fill('#me', name);
  await page.click('#join');
  await page.waitForFunction((n) => document.querySelector('#status').textContent === `connected as ${n}`, name);
  return page;
}

const logHas = (page, text) => page.waitForFunction(
  (t) => document.querySelector('#log').textContent.includes(t), text, { timeout: 15000 });

test('two pages on two nodes chat, hear a Rust echo peer, and get a publish', async () => {
  const tabA = await open(a, 'tab-a');
  const tabB = await open(b, 'tab-b');
  // The page lists the hosts of the network and the peers of its node.
  await tabA.waitForFunction(() => document.querySelector('#hosts').textContent.split(',').length === 2,
    null, { timeout: 15000 });
  await tabB.waitForFunction(() => document.querySelector('#peers').textContent.includes('tab-b'),
    null, { timeout: 15000 });

  // tab-b may not be findable from a at once: retry the send until it is.
  await tabA.fill('#to', 'tab-b');
  await tabA.fill('#text', 'hello from a');
  for (let i = 0; i < 50; i++) {
    await tabA.click('#send');
    try { await logHas(tabA, 'you → tab-b'); break; } catch { /* not found yet */ }
  }
  await logHas(tabB, 'tab-a → you: "hello from a"');

  // The Rust echo peer on node b answers a page on node a.
  await tabA.fill('#to', 'echo');
  await tabA.fill('#text', 'ping');
  await tabA.click('#send');
  await logHas(tabA, 'echo → you: "ping"');

  // A publish from one page reaches both.
  await tabB.fill('#text', 'to everyone');
  for (let i = 0; i < 50; i++) {
    await tabB.click('#publish');
    try { await logHas(tabA, '"text":"to everyone"'); break; } catch { /* subscription not known yet */ }
  }
  await logHas(tabB, '"text":"to everyone"');
  const errors = await tabA.locator('#log .error').count();
  assert.ok(errors <= 50, 'errors beyond the retries');
});
