/**
 * A real browser through the gateway: headless Chromium (Debian's `chromium`
 * package, /usr/bin/chromium; TURNPIKE_CHROMIUM overrides the path) driven
 * by playwright-core loads a page through the gateway, and the page opens
 * `new WebSocket('ws://127.0.0.1:<gateway port>/...')` to a `ws` echo
 * upstream: text and binary round trips, the subprotocol the upstream chose
 * (ws.protocol), and close codes both ways (4001 from the browser reaches
 * the upstream; 4002 from the upstream reaches the browser's CloseEvent).
 *
 * Chromium is a requirement of this file, not an option: when it is missing
 * the setup installs Debian's package (apt-get, as root: ~1 min, ~113 MB;
 * .ci/run does it before the tests), and where it cannot, the tests fail
 * saying how to install it.
 * The backend is TURNPIKE_SERVER__BACKEND's (uWS when unset), like the other
 * proxy suites: the gateway process inherits the variable.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';

const BACKEND = process.env.TURNPIKE_SERVER__BACKEND === 'node' ? 'node' : 'uws';
const CHROMIUM = process.env.TURNPIKE_CHROMIUM ?? '/usr/bin/chromium';
/** Bound on each wait inside the page (ms). */
const PAGE_WAIT_MS = 5_000;

/** What the upstream saw of one connection (by the `id` query parameter). */
interface Seen {
  protocol: string;
  messages: { binary: boolean; data: Buffer }[];
  closed: Promise<{ code: number; reason: string }>;
  ws: WebSocket;
}
const seen = new Map<string, Seen>();
let upServer: http.Server;
let wss: WebSocketServer;
let gw: Gateway;
let browser: Browser | undefined;
let page: Page;

/**
 * The page the browser loads through the gateway. Its script is plain JS in
 * the page (not a function passed to page.evaluate, which the test transform
 * would rewrite: `WebSocket` there would become the imported `ws`). Each
 * function resolves a plain object; every wait is bounded by `waitMs`.
 */
const PAGE_HTML = `<!doctype html><meta charset="utf-8"><title>turnpike ws</title>
<script>
function step(what, waitMs, f) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('page: timed out waiting for ' + what)), waitMs);
    f((v) => { clearTimeout(t); resolve(v); });
  });
}
/** Opens path, sends a text and a binary message, reads the 2 echoes, closes with 4001. */
async function roundTrip(path, waitMs) {
  const out = { protocol: '', messages: [], close: null, error: '' };
  try {
    const ws = new WebSocket('ws://' + location.host + path, ['chat.v1', 'chat.v2']);
    ws.binaryType = 'arraybuffer';
    ws.onerror = () => { out.error += 'error event; '; };
    await step('open', waitMs, (done) => { ws.onopen = done; });
    out.protocol = ws.protocol;
    const got = step('2 echoes', waitMs, (done) => {
      ws.onmessage = (e) => {
        out.messages.push(typeof e.data === 'string' ? { kind: 'text', data: e.data } : { kind: 'binary', data: Array.from(new Uint8Array(e.data)) });
        if (out.messages.length === 2) done();
      };
    });
    ws.send('héllo κόσμε 🚀');
    const bin = new Uint8Array(256);
    for (let i = 0; i < 256; i++) bin[i] = 255 - i;
    ws.send(bin);
    await got;
    const closed = step('the close', waitMs, (done) => {
      ws.onclose = (e) => { out.close = { code: e.code, reason: e.reason, wasClean: e.wasClean }; done(); };
    });
    ws.close(4001, 'browser says bye');
    await closed;
  } catch (err) {
    out.error += String(err);
  }
  return out;
}
/** Opens path, asks the upstream to close with \`code\`, resolves the CloseEvent. */
async function upstreamCloses(path, code, waitMs) {
  try {
    const ws = new WebSocket('ws://' + location.host + path, ['chat.v2']);
    return await step('the close', waitMs, (done) => {
      ws.onopen = () => ws.send('close-me:' + code);
      ws.onclose = (e) => done({ protocol: ws.protocol, code: e.code, reason: e.reason, wasClean: e.wasClean });
    });
  } catch (err) {
    return String(err);
  }
}
</script><p>websocket test page</p>`;

function startUpstream(): Promise<number> {
  upServer = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(PAGE_HTML);
  });
  wss = new WebSocketServer({
    server: upServer,
    perMessageDeflate: false,
    handleProtocols: (set: Set<string>) => (set.has('chat.v2') ? 'chat.v2' : false),
  });
  wss.on('connection', (ws: WebSocket, req: http.IncomingMessage) => {
    const id = new URL(req.url!, 'http://x').searchParams.get('id') ?? 'none';
    const s: Seen = {
      protocol: ws.protocol, messages: [], ws,
      closed: new Promise((r) => ws.on('close', (code: number, reason: Buffer) => r({ code, reason: reason.toString() }))),
    };
    seen.set(id, s);
    ws.on('error', () => {});
    ws.on('message', (data: Buffer, binary: boolean) => {
      s.messages.push({ binary, data });
      const text = binary ? '' : data.toString();
      if (text.startsWith('close-me:')) ws.close(Number(text.slice(9)), 'upstream says bye');
      else ws.send(data, { binary }); // echo, text as text and binary as binary
    });
  });
  return new Promise((r) => upServer.listen(0, '127.0.0.1', () => r((upServer.address() as net.AddressInfo).port)));
}

/**
 * Installs Debian's chromium when it is missing and this process may (root,
 * apt-get present, no TURNPIKE_CHROMIUM given); throws with what to do
 * otherwise. Output goes to the terminal: the install takes about a minute.
 */
function ensureChromium(): void {
  if (existsSync(CHROMIUM)) return;
  const howTo = `Chromium is not installed (${CHROMIUM} is missing). This test needs it: install it with `
    + '`apt-get install -y chromium` (Debian 12; .ci/run does it on CI), or point TURNPIKE_CHROMIUM at a Chromium binary.';
  if (process.env.TURNPIKE_CHROMIUM !== undefined || process.getuid?.() !== 0 || !existsSync('/usr/bin/apt-get')) throw new Error(howTo);
  process.stdout.write(`[websocket-browser] ${CHROMIUM} is missing: installing Debian's chromium (apt-get, ~1 min, ~113 MB)...\n`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () => spawnSync('apt-get', ['install', '-y', '-qq', 'chromium'], { stdio: 'inherit', env, timeout: 300_000 }).status === 0;
  // No package lists yet (a fresh machine), or stale ones: update once and try again.
  if (!install()) {
    spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env, timeout: 300_000 });
    install();
  }
  if (!existsSync(CHROMIUM)) throw new Error(`installing chromium with apt-get failed (see above). ${howTo}`);
}

beforeAll(async () => {
  ensureChromium();
  const upPort = await startUpstream();
  gw = await startGateway(baseConfig({
    upstreams: { up: { targets: [`http://127.0.0.1:${upPort}`] } },
    routes: [{ id: 'app', path: '/app/*', upstream: 'up', websocket: { pingIntervalMs: 0, idleTimeoutMs: 0 } }],
  }));
  // --no-sandbox: Chromium's sandbox refuses to run as root (CI runs as root).
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--no-proxy-server'], timeout: 30_000 });
  page = await browser.newPage();
  page.setDefaultTimeout(15_000);
  const r = await page.goto(`http://127.0.0.1:${gw.port}/app/page.html`);
  expect(r?.status()).toBe(200);
}, 420_000); // an install of chromium (above) takes about a minute, apt-get update more

afterAll(async () => {
  await browser?.close();
  await gw?.stop();
  for (const s of seen.values()) s.ws.terminate();
  wss?.close();
  upServer?.close();
});

async function upstreamOf(id: string): Promise<Seen> {
  const end = Date.now() + PAGE_WAIT_MS;
  while (!seen.has(id) && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  const s = seen.get(id);
  if (!s) throw new Error(`the upstream never saw connection ${id}`);
  return s;
}

function withTimeout<T>(p: Promise<T>, what: string): Promise<T> {
  return Promise.race([p, new Promise<T>((_, rej) => setTimeout(() => rej(new Error(`timed out waiting for ${what}`)), PAGE_WAIT_MS))]);
}

describe(`a browser's WebSocket through the gateway (headless Chromium, ${BACKEND} backend)`, () => {
  it('round-trips text and binary with the subprotocol the upstream chose, then closes with 4001 which the upstream sees', async () => {
    const id = 'b1';
    const result = await page.evaluate(([path, waitMs]) => (window as any).roundTrip(path, waitMs), [`/app/chat?id=${id}`, PAGE_WAIT_MS] as const);

    expect(result.error).toBe('');
    expect(result.protocol, 'ws.protocol: the subprotocol the upstream chose').toBe('chat.v2');
    expect(result.messages).toEqual([
      { kind: 'text', data: 'héllo κόσμε 🚀' },
      { kind: 'binary', data: Array.from({ length: 256 }, (_, i) => 255 - i) },
    ]);
    const up = await upstreamOf(id);
    expect(up.protocol).toBe('chat.v2');
    expect(up.messages.map((m) => ({ binary: m.binary, hex: m.data.toString('hex') }))).toEqual([
      { binary: false, hex: Buffer.from('héllo κόσμε 🚀').toString('hex') },
      { binary: true, hex: Buffer.from(Array.from({ length: 256 }, (_, i) => 255 - i)).toString('hex') },
    ]);
    expect(await withTimeout(up.closed, 'the upstream\'s close')).toEqual({ code: 4001, reason: 'browser says bye' });
    // The gateway answered the browser's Close: a clean close, the code echoed.
    expect(result.close).toEqual({ code: 4001, reason: 'browser says bye', wasClean: true });
  });

  it('a close 4002 from the upstream reaches the browser\'s CloseEvent, code and reason', async () => {
    const id = 'b2';
    const result = await page.evaluate(([path, waitMs]) => (window as any).upstreamCloses(path, 4002, waitMs), [`/app/chat?id=${id}`, PAGE_WAIT_MS] as const);
    expect(result).toEqual({ protocol: 'chat.v2', code: 4002, reason: 'upstream says bye', wasClean: true });
    expect((await withTimeout((await upstreamOf(id)).closed, 'the upstream\'s close')).code).toBe(4002);
  });
});
