#!/usr/bin/env node
// Bun smoke test: the same gateway (dist/) started under Bun, its workers on
// Bun.serve({ reusePort }), in front of real upstreams (node:http, and a raw
// node:net one for broken answers). Run by `npm run test:bun` (and CI).
// Prints "N passed, N failed".
//
// Requests whose bytes matter (repeated headers, odd Host values, DEL, HEAD,
// keep-alive follow-ups) go over raw sockets: fetch would normalise them.
// Requests are never pipelined: Bun.serve closes a connection on which a
// request arrives while an asynchronous response is pending (README, Bun).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket, WebSocketServer } from 'ws';
import { Errors, errorBody } from '../../dist/common/errors.js';
import { LINGER_MAX_BYTES } from '../../dist/workers/transport/backend.js';
import { check, eq, finish } from './checks.mjs';
import { startBunGateway } from './gateway.mjs';

const LIMITS = { maxBodyBytes: 1000, maxUrlBytes: 2048, maxHeaderBytes: 8192, maxHeaderCount: 30 };

// ------------------------------------------------------------------ upstreams

/** POST/PUT... to /api/die seen by the upstream: [method, nth request on its socket]. */
const died = [];
const held = [];
/** Every request target the upstream received. */
const seenUrls = [];
const upstream = http.createServer((req, res) => {
  seenUrls.push(req.url);
  req.socket.served = (req.socket.served ?? 0) + 1;
  if (req.url.startsWith('/api/die')) {
    died.push([req.method, req.socket.served]);
    req.socket.destroy();
    return;
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    if (req.url.endsWith('/cookies')) {
      res.setHeader('set-cookie', ['a=1', 'b=2']);
      res.setHeader('connection', 'keep-alive, x-hop');
      res.setHeader('x-hop', 'no');
      return res.end('cookies');
    }
    if (req.url.endsWith('/proxyauth')) {
      res.setHeader('proxy-authenticate', 'Basic realm="upstream-proxy"');
      res.setHeader('proxy-authentication-info', 'nextnonce="x"');
      res.setHeader('proxy-status', 'upstream; error=none');
      res.setHeader('x-ok', '1');
      return res.end('proxyauth');
    }
    const answer = () => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, bodyLength: body.length }));
    };
    if (req.url.startsWith('/api/hold')) held.push(answer);
    else answer();
  });
});
await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
const upPort = upstream.address().port;

// Raw upstream: answers by path, one request head at a time (no bodies).
const rawUpstream = net.createServer((s) => {
  let buf = '';
  s.on('error', () => {});
  s.on('data', (d) => {
    buf += d.toString('latin1');
    let end;
    while ((end = buf.indexOf('\r\n\r\n')) !== -1) {
      const [method, url] = buf.slice(0, end).split(' ');
      buf = buf.slice(end + 4);
      const head = method === 'HEAD';
      if (url.startsWith('/reset/')) return s.destroy();
      if (url.startsWith('/garbage/')) return s.end('NOT HTTP AT ALL\r\n\r\n');
      if (url.startsWith('/silent/')) return; // never answers
      if (url.startsWith('/high/')) {
        // Header bytes >= 0x80: latin1 é, and é in UTF-8.
        s.write(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Latin1: caf\xe9\r\nX-Utf8: caf\xc3\xa9\r\n\r\n' + (head ? '' : 'hello'), 'latin1'));
      } else if (url.startsWith('/chunked/')) {
        s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n' + (head ? '' : '5\r\nhello\r\n0\r\n\r\n'));
      } else {
        s.write('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
      }
    }
  });
});
await new Promise((r) => rawUpstream.listen(0, '127.0.0.1', r));
const rawPort = rawUpstream.address().port;

// The canary of the traffic-split checks: answers its name.
const canary = http.createServer((req, res) => {
  res.setHeader('x-seen-plan', String(req.headers['x-plan'] ?? ''));
  res.end('canary');
});
await new Promise((r) => canary.listen(0, '127.0.0.1', r));
const canaryPort = canary.address().port;

// WebSocket upstream (`ws`): echoes text and binary as they came; `close4001` makes it close 4001; the
// Close frames it gets are kept; /ws/refuse is answered 403 (with a header and a body) instead of 101.
const wsSeen = { req: null, closes: [] };
const wsHttp = http.createServer((q, r) => r.end('not a websocket'));
const wss = new WebSocketServer({ noServer: true, handleProtocols: (p) => (p.has('chat') ? 'chat' : false) });
wsHttp.on('upgrade', (q, sock, head) => {
  if (q.url.startsWith('/ws/refuse')) {
    sock.end('HTTP/1.1 403 Forbidden\r\nX-Why: nope\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nforbidden!');
    return;
  }
  wss.handleUpgrade(q, sock, head, (w) => {
    wsSeen.req = { url: q.url, headers: q.headers };
    w.on('message', (d, isBinary) => {
      if (!isBinary && String(d) === 'close4001') w.close(4001, 'upstream bye');
      else w.send(d, { binary: isBinary });
    });
    w.on('close', (code, reason) => wsSeen.closes.push([code, String(reason)]));
  });
});
await new Promise((r) => wsHttp.listen(0, '127.0.0.1', r));
const wsPort = wsHttp.address().port;

/** A closed port: bound once, then released. */
const deadPort = await new Promise((resolve) => {
  const s = net.createServer();
  s.listen(0, '127.0.0.1', () => {
    const p = s.address().port;
    s.close(() => resolve(p));
  });
});

// ------------------------------------------------------------------ gateways

const dir = mkdtempSync(join(tmpdir(), 'turnpike-bun-'));
function writeConfig(name, server, routes) {
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify({
    server: { host: '127.0.0.1', port: 0, backend: 'bun', limits: LIMITS, ...server },
    admin: { enabled: true, host: '127.0.0.1', port: 0 },
    log: { access: { destination: join(dir, name + '.access.log') } },
    upstreams: {
      up: { targets: [`http://127.0.0.1:${upPort}`] },
      raw: { targets: [`http://127.0.0.1:${rawPort}`], timeouts: { connectMs: 300, responseMs: 300 } },
      dead: { targets: [`http://127.0.0.1:${deadPort}`] },
      wsup: { targets: [`http://127.0.0.1:${wsPort}`] },
      canary: {
        targets: [`http://127.0.0.1:${canaryPort}`],
        headers: { request: { set: { 'x-plan': 'canary' } }, response: { set: { 'x-upstream-plan': 'canary' } } },
      },
    },
    routes,
  }));
  return file;
}

/** The gateway under Bun, with the test hooks on (TURNPIKE_TEST_HOOKS: gateway.mjs). */
function startGateway(configFile) {
  return startBunGateway(configFile, { TURNPIKE_TEST_HOOKS: '1' });
}

const gw = startGateway(writeConfig('turnpike.json', { workers: 2 }, [
  { id: 'users', path: '/users/:id', methods: ['GET'], upstream: 'up', rewrite: { template: '/internal/{id}' } },
  { id: 'post-only', path: '/post-only', methods: ['POST'], upstream: 'up' },
  { id: 'original', path: '/a/*', upstream: 'up', pathForwarding: 'original' },
  { id: 'all', path: '/api/*', upstream: 'up' },
  { id: 'dead', path: '/dead/*', upstream: 'dead' },
  { id: 'split', path: '/split/*', upstreams: [{ name: 'up', weight: 3 }, { name: 'canary', weight: 1 }] },
  { id: 'split-when', path: '/split-when/*', upstreams: [{ name: 'up', weight: 1 }, { name: 'canary', weight: 0, when: { cookie: 'canary', equals: 'always' } }] },
  { id: 'split-hash', path: '/split-hash/*', upstreams: [{ name: 'up', weight: 1 }, { name: 'canary', weight: 1 }], hashOn: 'header:x-user' },
  { id: 'shared', path: '/shared', upstream: 'up', rateLimit: [{ by: 'global', rate: 100, per: '1h', headers: 'legacy' }] },
  { id: 'limited', path: '/limited/*', upstream: 'up', rateLimit: [{ by: 'global', rate: 1000, per: '1h' }, { by: 'header:x-k', rate: 10, per: '1m', burst: 2 }] },
  ...['reset', 'garbage', 'silent', 'high', 'chunked'].map((p) => ({ id: p, path: `/${p}/*`, upstream: 'raw' })),
  { id: 'ws', path: '/ws/*', upstream: 'wsup' },
  { id: 'ws-off', path: '/ws-off/*', upstream: 'up', websocket: false },
  { id: 'ws-idle', path: '/ws-idle/*', upstream: 'wsup', websocket: { idleTimeoutMs: 1000, messagesPerSecond: 3, messagesPerSecondAction: 'drop' } },
  { id: 'ws-deflate', path: '/ws-deflate/*', upstream: 'wsup', websocket: { compression: true } },
]));
const started = await gw.started;
const port = started.port;
const base = `http://127.0.0.1:${port}`;

// ------------------------------------------------------------------ raw client

/** One client connection reading HTTP/1.1 responses off a raw socket (1xx skipped, HEAD has no body). */
class Raw {
  static open(p = port) {
    return new Promise((resolve, reject) => {
      const s = net.connect(p, '127.0.0.1');
      s.once('connect', () => resolve(new Raw(s)));
      s.once('error', reject);
    });
  }

  constructor(socket) {
    this.socket = socket;
    this.buf = Buffer.alloc(0);
    this.ended = false;
    this.waiter = null;
    socket.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this.wake(); });
    socket.on('close', () => { this.ended = true; this.wake(); });
    socket.on('error', () => {});
  }

  wake() {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  async until(ready, ms) {
    const deadline = performance.now() + ms;
    while (!ready()) {
      if (this.ended) return ready();
      const left = deadline - performance.now();
      if (left <= 0) return false;
      await new Promise((r) => {
        const t = setTimeout(r, left);
        this.waiter = () => { clearTimeout(t); r(); };
      });
    }
    return true;
  }

  send(data) {
    this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }

  async read(isHead = false, ms = 5000) {
    for (;;) {
      if (!(await this.until(() => this.buf.indexOf('\r\n\r\n') !== -1, ms))) {
        throw new Error(`no response (${this.ended ? 'connection closed' : 'timeout'}); got ${JSON.stringify(this.buf.toString('latin1'))}`);
      }
      const end = this.buf.indexOf('\r\n\r\n');
      const lines = this.buf.subarray(0, end).toString('latin1').split('\r\n');
      this.buf = this.buf.subarray(end + 4);
      const statusLine = lines[0];
      const status = Number(statusLine.split(' ')[1]);
      if (status >= 100 && status < 200) {
        this.interim = statusLine;
        continue;
      }
      const headers = lines.slice(1).map((l) => {
        const i = l.indexOf(':');
        return [l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim()];
      });
      const res = { statusLine, status, headers, body: Buffer.alloc(0), get: (n) => headers.find(([k]) => k === n)?.[1] ?? null };
      if (isHead || status === 204 || status === 304) return res;
      const cl = res.get('content-length');
      if (cl !== null) {
        const n = Number(cl);
        if (!(await this.until(() => this.buf.length >= n, ms))) throw new Error(`body shorter than ${n}`);
        res.body = Buffer.from(this.buf.subarray(0, n));
        this.buf = this.buf.subarray(n);
        return res;
      }
      if ((res.get('transfer-encoding') ?? '').toLowerCase() === 'chunked') {
        const parts = [];
        for (;;) {
          if (!(await this.until(() => this.buf.indexOf('\r\n') !== -1, ms))) throw new Error('truncated chunk size');
          const nl = this.buf.indexOf('\r\n');
          const size = parseInt(this.buf.subarray(0, nl).toString('latin1'), 16);
          if (!(await this.until(() => this.buf.length >= nl + 4 + size, ms))) throw new Error('truncated chunk');
          parts.push(Buffer.from(this.buf.subarray(nl + 2, nl + 2 + size)));
          this.buf = this.buf.subarray(nl + 4 + size);
          if (size === 0) break;
        }
        res.body = Buffer.concat(parts);
        return res;
      }
      await this.until(() => false, ms); // close-delimited
      res.body = this.buf;
      this.buf = Buffer.alloc(0);
      return res;
    }
  }

  async request(data, isHead = false) {
    this.send(data);
    return this.read(isHead);
  }

  /** Bytes that arrive within `ms` unasked (none may follow a complete response). */
  async stray(ms = 60) {
    await new Promise((r) => setTimeout(r, ms));
    return this.buf.toString('latin1');
  }

  closes(ms = 1500) {
    return this.until(() => this.ended, ms);
  }

  destroy() {
    this.socket.destroy();
  }
}

function req(method, target, headers = [], body = '', { noHost = false } = {}) {
  return [`${method} ${target} HTTP/1.1`, ...(noHost ? [] : ['Host: gw.test']), ...headers].join('\r\n') + '\r\n\r\n' + body;
}
const OK = req('GET', '/api/ok');

// ------------------------------------------------------------------ checks

function truthy(v, what) {
  if (!v) throw new Error(what);
}
const upstreamSaw = async (r) => JSON.parse(r.body.toString('utf8'));
/** The main gateway's access log lines, once `ready(lines)` holds (or after 2 s). */
async function accessLines(ready) {
  const file = join(dir, 'turnpike.json.access.log');
  let lines = [];
  for (let i = 0; i < 100; i++) {
    lines = existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)) : [];
    if (ready(lines)) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  return lines;
}

console.log(`bun smoke: gateway on ${base} (backend ${started.backend})`);
await check('runs the bun backend', () => eq(started.backend, 'bun', 'backend'));
await check('writes the access log: one JSON line per request, proxied and answered by the gateway', async () => {
  const ok = await fetch(`${base}/api/logged?token=secret&a=1`);
  await ok.text();
  const miss = await fetch(`${base}/nowhere`);
  await miss.text();
  const file = join(dir, 'turnpike.json.access.log');
  let lines = [];
  for (let i = 0; i < 100; i++) {
    lines = existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)) : [];
    if (lines.some((l) => l.request_id === miss.headers.get('x-request-id'))) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const a = lines.find((l) => l.request_id === ok.headers.get('x-request-id'));
  eq(a?.status, 200, 'status');
  eq(a?.route, 'all', 'route');
  eq(a?.query, 'token=[REDACTED]&a=1', 'query redacted');
  const b = lines.find((l) => l.request_id === miss.headers.get('x-request-id'));
  eq(b?.error, 'route_not_found', 'error code');
});
await check('proxies GET with template rewrite and query', async () => {
  const r = await fetch(`${base}/users/7?x=%20y`);
  eq(r.status, 200, 'status');
  const j = await r.json();
  eq(j.url, '/internal/7?x=%20y', 'url');
  eq(j.headers['x-forwarded-for'], '127.0.0.1', 'xff');
  eq(typeof j.headers['x-request-id'], 'string', 'request id');
});
await check('streams a POST body', async () => {
  const r = await fetch(`${base}/api/post`, { method: 'POST', body: 'x'.repeat(500) });
  eq((await r.json()).bodyLength, 500, 'bodyLength');
});
await check('rate limits: both workers take from one bucket', async () => {
  const workers = new Set();
  const remaining = [];
  for (let i = 0; i < 12; i++) {
    const r = await fetch(`${base}/shared`, { headers: { connection: 'close' } });
    eq(r.status, 200, 'status');
    workers.add(r.headers.get('x-request-id').split('-')[1]);
    remaining.push(Number(r.headers.get('x-ratelimit-remaining')));
  }
  eq(workers.size, 2, 'workers that answered');
  eq(remaining, [99, 98, 97, 96, 95, 94, 93, 92, 91, 90, 89, 88], 'X-RateLimit-Remaining');
});
await check('rate limits: one bucket for both workers, RateLimit headers, 429 with Retry-After, a refused request consumes nothing', async () => {
  const seen = [];
  // New connections each time: the kernel spreads them over both workers.
  for (let i = 0; i < 2; i++) {
    const r = await fetch(`${base}/limited/x`, { headers: { 'x-k': 'bun-a', connection: 'close' } });
    eq(r.status, 200, `request ${i + 1}`);
    seen.push(r.headers.get('ratelimit'));
    eq(r.headers.get('ratelimit-policy'), '"limited#0";q=1000;w=3600, "limited#1";q=2;w=60', 'RateLimit-Policy');
  }
  eq(seen, ['"limited#0";r=999;t=4, "limited#1";r=1;t=6', '"limited#0";r=998;t=8, "limited#1";r=0;t=12'], 'RateLimit');
  for (let i = 0; i < 3; i++) {
    const r = await fetch(`${base}/limited/x`, { headers: { 'x-k': 'bun-a', connection: 'close' } });
    eq(r.status, 429, 'refused');
    eq(r.headers.get('retry-after'), '6', 'Retry-After');
    const j = await r.json();
    eq(j.error.code, 'rate_limited', 'code');
    eq(j.error.message, 'Rate limit "limited#1" exceeded (10 requests per 1m, by header x-k); retry in 6 s.', 'message');
  }
  const other = await fetch(`${base}/limited/x`, { headers: { 'x-k': 'bun-b' } });
  eq(other.status, 200, 'another key');
  eq(other.headers.get('ratelimit'), '"limited#0";r=997;t=11, "limited#1";r=1;t=6', 'the refused ones took nothing from the global bucket');
  const head = await fetch(`${base}/limited/x`, { method: 'HEAD', headers: { 'x-k': 'bun-a' } });
  eq(head.status, 429, 'HEAD refused too');
  eq(head.headers.get('retry-after'), '6', 'HEAD Retry-After');
});
// --- traffic split (routes[].upstreams): the chosen upstream's own header plan, weights, when, hashOn.
/** Which upstream answered a split request: the canary answers its name, `up` JSON. */
const whoAnswered = async (r) => {
  const text = await r.text();
  if (text === 'canary') {
    eq([r.headers.get('x-upstream-plan'), r.headers.get('x-seen-plan')], ['canary', 'canary'], 'the canary\'s own header plan');
    return 'canary';
  }
  eq([r.headers.get('x-upstream-plan'), JSON.parse(text).headers['x-plan']], [null, undefined], 'up has no canary header plan');
  return 'up';
};
await check('traffic split 3:1 over 400 keep-alive requests: within 5%, each upstream with its own header plan', async () => {
  const n = { up: 0, canary: 0 };
  for (let i = 0; i < 40; i++) {
    const rs = await Promise.all(Array.from({ length: 10 }, () => fetch(`${base}/split/x`)));
    for (const r of rs) n[await whoAnswered(r)]++;
  }
  truthy(Math.abs(n.canary - 100) <= 20, `canary got ${n.canary} of 400 (want 100 +- 20)`);
});
await check('traffic split when: cookie canary=always picks the weight-0 canary, another value does not', async () => {
  const got = [];
  for (const cookie of ['canary=always', 'a=1; canary=always', 'canary=never', 'xcanary=always', '']) {
    const r = await fetch(`${base}/split-when/x`, { headers: cookie === '' ? {} : { cookie } });
    got.push(await whoAnswered(r));
  }
  eq(got, ['canary', 'canary', 'up', 'up', 'up'], 'upstreams');
});
await check('traffic split hashOn header: each key stays on one upstream over new connections (both workers); both upstreams used', async () => {
  const byKey = new Map();
  for (let round = 0; round < 3; round++) {
    for (let k = 0; k < 30; k++) {
      const c = await Raw.open();
      const r = await c.request(req('GET', '/split-hash/x', [`X-User: u${k}`]));
      c.destroy();
      const who = r.body.toString() === 'canary' ? 'canary' : 'up';
      if (!byKey.has(k)) byKey.set(k, who);
      eq(who, byKey.get(k), `key u${k}`);
    }
  }
  const onCanary = [...byKey.values()].filter((w) => w === 'canary').length;
  truthy(onCanary > 3 && onCanary < 27, `canary got ${onCanary} of 30 keys`);
});
await check('413 JSON over the body limit', async () => {
  const r = await fetch(`${base}/api/post`, { method: 'POST', body: 'x'.repeat(5000) });
  eq(r.status, 413, 'status');
  eq((await r.json()).error.code, 'body_too_large', 'code');
});
await check('404 JSON for no route, 405 with Allow', async () => {
  const r = await fetch(`${base}/nope`);
  eq(r.status, 404, 'status');
  eq((await r.json()).error.code, 'route_not_found', 'code');
  const m = await fetch(`${base}/users/1`, { method: 'DELETE' });
  eq(m.status, 405, '405');
  eq(m.headers.get('allow')?.includes('GET'), true, 'allow');
});
await check('keeps Set-Cookie apart and strips hop-by-hop', async () => {
  const r = await fetch(`${base}/api/cookies`);
  eq(r.headers.getSetCookie(), ['a=1', 'b=2'], 'set-cookie');
  eq(r.headers.get('x-hop'), null, 'x-hop');
});
await check('normalises the path before routing', async () => {
  const r = await fetch(`${base}/api/a/../b//c`);
  eq((await r.json()).url, '/api/b/c', 'url');
});
await check('passes an extension method (PURGE) through', async () => {
  const r = await fetch(`${base}/api/purge`, { method: 'PURGE' });
  eq(r.status, 200, 'status');
  eq((await r.json()).method, 'PURGE', 'method');
});

// --- every gateway error the Bun backend can produce x {GET, HEAD}: a GET
// and a HEAD answer carry the same status line and headers (Date and the
// request id included: the id is sent), HEAD no body but the JSON body's
// Content-Length, and the connection serves `GET /api/ok` next, unless the
// answer closes. Not producible on Bun: upstream_unavailable (Bun's fetch
// has no pool limit) and upstream_connect_timeout (connect and response
// head share one timer: upstream_timeout); bad framing (two Content-Length
// values, CL + TE, unknown codings) is refused by Bun itself with a bare
// 400 before the gateway sees it.
const manyHeaders = Array.from({ length: LIMITS.maxHeaderCount + 1 }, (_, i) => `X-H${i}: 1`);
const TABLE = [
  { e: Errors.BAD_REQUEST, how: 'a header value holding DEL', request: (m, rid) => req(m, '/api/x', [rid, 'X-Odd: a\x7fb']) },
  { e: Errors.BAD_REQUEST, how: 'a GET/HEAD with a body (fetch cannot forward it)', request: (m, rid) => req(m, '/api/x', [rid, 'Content-Length: 5'], 'hello') },
  { e: Errors.BAD_HOST, how: 'two Host lines', request: (m, rid) => req(m, '/api/x', [rid, 'Host: a', 'Host: b'], '', { noHost: true }) },
  { e: Errors.BAD_HOST, how: 'an invalid Host (a b)', request: (m, rid) => req(m, '/api/x', [rid, 'Host: a b'], '', { noHost: true }) },
  { e: Errors.BAD_PATH, how: '/a/%zz', request: (m, rid) => req(m, '/a/%zz', [rid]) },
  { e: Errors.ROUTE_NOT_FOUND, how: '/nowhere', request: (m, rid) => req(m, '/nowhere', [rid]) },
  { e: Errors.METHOD_NOT_ALLOWED, how: 'a POST-only route', allow: 'POST', request: (m, rid) => req(m, '/post-only', [rid]) },
  { e: Errors.BODY_TOO_LARGE, how: 'Content-Length 1016, body sent', request: (m, rid) => req(m, '/api/x', [rid, 'Content-Length: 1016'], 'b'.repeat(1016)) },
  { e: Errors.BODY_TOO_LARGE, how: 'Content-Length LINGER_MAX_BYTES + 1, not sent', closes: true, request: (m, rid) => req(m, '/api/x', [rid, `Content-Length: ${LINGER_MAX_BYTES + 1}`]) },
  { e: Errors.URL_TOO_LONG, how: 'a 3000-byte path', request: (m, rid) => req(m, '/api/' + 'a'.repeat(3000), [rid]) },
  { e: Errors.HEADERS_TOO_LARGE, how: `${manyHeaders.length} extra headers`, request: (m, rid) => req(m, '/api/x', [rid, ...manyHeaders]) },
  { e: Errors.HEADERS_TOO_LARGE, how: 'a 9000-byte header', request: (m, rid) => req(m, '/api/x', [rid, 'X-Big: ' + 'v'.repeat(9000)]) },
  { e: Errors.UPSTREAM_CONNECT_FAILED, how: 'a closed port', request: (m, rid) => req(m, '/dead/x', [rid]) },
  { e: Errors.UPSTREAM_RESET, how: 'an upstream closing on the request', request: (m, rid) => req(m, '/reset/x', [rid]) },
  { e: Errors.UPSTREAM_BAD_RESPONSE, how: 'NOT HTTP AT ALL', request: (m, rid) => req(m, '/garbage/x', [rid]) },
  { e: Errors.UPSTREAM_TIMEOUT, how: 'a silent upstream', request: (m, rid) => req(m, '/silent/x', [rid]) },
  { e: Errors.INTERNAL, how: 'test hook in the handler', closes: true, request: (m, rid) => req(m, '/api/x', [rid, 'X-Turnpike-Test-Throw: handler']) },
  { e: Errors.INTERNAL, how: 'test hook at the upstream response', closes: true, request: (m, rid) => req(m, '/api/x', [rid, 'X-Turnpike-Test-Throw: upstream']) },
];

/** Compares a GET and a HEAD answer to the same trigger. */
function sameHead(get, head, e, rid, allow) {
  // Bun writes its own reason phrase (statusText is ignored): 413 is "Payload Too Large" there.
  eq(get.status, e.status, 'GET status');
  eq(head.statusLine, get.statusLine, 'HEAD status line');
  eq(get.body.toString('latin1'), errorBody(e, rid), 'GET body');
  eq(get.get('content-type'), 'application/json', 'content-type');
  eq(get.get('x-request-id'), rid, 'request id');
  eq(get.get('allow'), allow ?? null, 'allow');
  truthy(get.get('date') !== null && head.get('date') !== null, 'Date on both');
  const norm = (r) => r.headers.filter(([k]) => k !== 'date').map(([k, v]) => `${k}: ${v}`).sort();
  eq(norm(head), norm(get), 'HEAD headers = GET headers');
  eq(head.get('content-length'), String(get.body.length), 'HEAD content-length');
}

let n = 0;
for (const t of TABLE) {
  await check(`${t.e.code} (${t.how}): GET and HEAD, ${t.closes ? 'closes' : 'same connection serves next'}`, async () => {
    const rid = `X-Request-Id: smoke-${++n}`;
    const id = rid.slice(14);
    const c1 = await Raw.open();
    try {
      const get = await c1.request(t.request('GET', rid));
      let head;
      if (t.closes) {
        truthy(await c1.closes(), 'GET: connection not closed');
        eq(get.get('connection'), 'close', 'GET connection header');
        const c2 = await Raw.open();
        head = await c2.request(t.request('HEAD', rid), true);
        eq(await c2.stray(), '', 'HEAD: bytes after the head');
        truthy(await c2.closes(), 'HEAD: connection not closed');
        c2.destroy();
      } else {
        head = await c1.request(t.request('HEAD', rid), true);
        eq(await c1.stray(), '', 'HEAD: bytes after the head');
        eq((await c1.request(OK)).status, 200, 'next request on the connection');
      }
      sameHead(get, head, t.e, id, t.allow);
      // The access log: the answer's status and code, and its body bytes (0 for HEAD).
      const lines = await accessLines((ls) => ls.filter((l) => l.request_id === id).length >= 2);
      const line = (method) => {
        const l = lines.find((x) => x.request_id === id && x.method === method);
        return l === undefined ? null : [l.status, l.error, l.bytes_sent];
      };
      eq(line('GET'), [t.e.status, t.e.code, get.body.length], 'GET access line [status, error, bytes_sent]');
      eq(line('HEAD'), [t.e.status, t.e.code, 0], 'HEAD access line [status, error, bytes_sent]');
    } finally {
      c1.destroy();
    }
  });
}

// --- HTTP semantics, over raw sockets
await check('two Host lines: 400 bad_host, nothing upstream', async () => {
  const c = await Raw.open();
  const r = await c.request(req('GET', '/api/two-hosts', ['Host: a.test', 'Host: b.test'], '', { noHost: true }));
  c.destroy();
  eq(r.status, 400, 'status');
  eq(JSON.parse(r.body).error.code, 'bad_host', 'code');
  eq(seenUrls.includes('/api/two-hosts'), false, 'reached the upstream');
});
await check('HTTP/1.0: served with a Host, 400 bad_host without', async () => {
  const c = await Raw.open();
  const r = await c.request('GET /api/ten HTTP/1.0\r\nHost: gw.test\r\n\r\n');
  eq(r.status, 200, 'status with Host');
  const c2 = await Raw.open();
  const r2 = await c2.request('GET /api/ten HTTP/1.0\r\n\r\n');
  eq(JSON.parse(r2.body).error.code, 'bad_host', 'without Host');
  c.destroy();
  c2.destroy();
});
await check('Connection: keep-alive, close: answered, then the connection closes', async () => {
  const c = await Raw.open();
  const r = await c.request(req('GET', '/api/ok', ['Connection: keep-alive, close']));
  eq(r.status, 200, 'status');
  eq(r.get('connection'), 'close', 'connection header');
  truthy(await c.closes(), 'connection not closed');
  c.destroy();
});
await check('Connection on two lines (X-Secret, keep-alive): x-secret, Proxy and Proxy-Authorization never reach the upstream', async () => {
  const c = await Raw.open();
  const r = await c.request(req('GET', '/api/conn', [
    'Connection: X-Secret', 'Connection: keep-alive', 'X-Secret: s3cret', 'X-Kept: yes', 'Proxy: http://evil.test', 'Proxy-Authorization: Basic eA==',
  ]));
  const h = (await upstreamSaw(r)).headers;
  eq(h['x-secret'], undefined, 'x-secret upstream');
  eq(h['proxy'], undefined, 'proxy upstream');
  eq(h['proxy-authorization'], undefined, 'proxy-authorization upstream');
  eq(h['x-kept'], 'yes', 'x-kept upstream');
  eq((await c.request(OK)).status, 200, 'connection kept');
  c.destroy();
});
await check('two request id lines: one is generated', async () => {
  const c = await Raw.open();
  const r = await c.request(req('GET', '/api/rid', ['X-Request-Id: a', 'X-Request-Id: b']));
  c.destroy();
  const rid = (await upstreamSaw(r)).headers['x-request-id'];
  truthy(/^[A-Za-z0-9._:-]+$/.test(rid) && rid !== 'a' && rid !== 'b', `upstream request id ${rid}`);
  eq(r.get('x-request-id'), rid, 'echoed');
});
await check('a POST is never sent twice upstream (reused socket dies under it: 502)', async () => {
  died.length = 0;
  const c = await Raw.open();
  eq((await c.request(req('GET', '/api/warm'))).status, 200, 'warm-up');
  const r = await c.request(req('POST', '/api/die', ['Content-Length: 3'], 'abc'));
  c.destroy();
  eq(r.status, 502, 'status');
  eq(JSON.parse(r.body).error.code, 'upstream_reset', 'code');
  eq(died.filter(([m]) => m === 'POST').length, 1, 'POSTs the upstream saw');
  truthy(died[0][1] > 1, `the POST went on a fresh socket (request ${died[0][1]} on it), not a reused one: nothing proven`);
});
await check('upstream Proxy-Authenticate / -Authentication-Info stop at the gateway; Proxy-Status passes', async () => {
  const c = await Raw.open();
  const r = await c.request(req('GET', '/api/proxyauth'));
  c.destroy();
  eq(r.status, 200, 'status');
  eq(r.get('proxy-authenticate'), null, 'proxy-authenticate');
  eq(r.get('proxy-authentication-info'), null, 'proxy-authentication-info');
  eq(r.get('proxy-status'), 'upstream; error=none', 'proxy-status');
  eq(r.get('x-ok'), '1', 'x-ok');
});
await check('pathForwarding original forwards /a//b/%7e as sent; normalized (default) /api/b/~', async () => {
  const c = await Raw.open();
  eq((await upstreamSaw(await c.request(req('GET', '/a//b/%7e?q=%7e')))).url, '/a//b/%7e?q=%7e', 'original');
  eq((await upstreamSaw(await c.request(req('GET', '/api//b/%7e?q=%7e')))).url, '/api/b/~?q=%7e', 'normalized');
  c.destroy();
});
await check('header bytes >= 0x80 pass exactly both ways', async () => {
  const c = await Raw.open();
  const r = await c.request(req('GET', '/api/bytes', ['X-L: caf\xe9', 'X-U: caf\xc3\xa9']));
  const h = (await upstreamSaw(r)).headers; // node decodes header values as latin1
  eq([h['x-l'], h['x-u']], ['caf\xe9', 'caf\xc3\xa9'], 'upstream saw');
  const r2 = await c.request(req('GET', '/high/x'));
  eq([r2.get('x-latin1'), r2.get('x-utf8')], ['caf\xe9', 'caf\xc3\xa9'], 'client saw');
  c.destroy();
});
await check('proxied HEAD: the GET\'s Content-Length (or chunked), Date, no body; connection reused', async () => {
  const c = await Raw.open();
  const r = await c.request(req('HEAD', '/high/x'), true);
  eq([r.status, r.get('content-length')], [200, '5'], 'HEAD /high');
  truthy(r.get('date') !== null, 'Date');
  eq(await c.stray(), '', 'bytes after the head');
  const r2 = await c.request(req('HEAD', '/chunked/x'), true);
  eq([r2.get('content-length'), r2.get('transfer-encoding')], [null, 'chunked'], 'HEAD /chunked');
  eq(await c.stray(), '', 'bytes after the head');
  eq((await c.request(req('GET', '/chunked/x'))).body.toString(), 'hello', 'GET after the HEADs');
  c.destroy();
});
await check('a chunked body over the limit: 413 body_too_large, connection closed', async () => {
  const c = await Raw.open();
  const chunk = 'c'.repeat(600);
  const r = await c.request(req('POST', '/api/up', ['Transfer-Encoding: chunked'], `258\r\n${chunk}\r\n258\r\n${chunk}\r\n0\r\n\r\n`));
  eq(r.status, 413, 'status');
  eq(JSON.parse(r.body).error.code, 'body_too_large', 'code');
  truthy(await c.closes(), 'connection not closed');
  c.destroy();
});
await check('Expect: 100-continue over the limit: Bun\'s 100 Continue, then the JSON 413', async () => {
  const c = await Raw.open();
  const r = await c.request(req('POST', '/api/up', ['Content-Length: 5000', 'Expect: 100-continue']));
  c.destroy();
  eq(c.interim, 'HTTP/1.1 100 Continue', 'interim');
  eq(JSON.parse(r.body).error.code, 'body_too_large', 'code');
});
await check('test hook: 500 internal_error logged with the request id; the workers keep serving', async () => {
  const c = await Raw.open();
  const r = await c.request(req('GET', '/api/x', ['X-Request-Id: hook-1', 'X-Turnpike-Test-Throw: handler']));
  c.destroy();
  eq([r.status, JSON.parse(r.body).error.code], [500, 'internal_error'], 'answer');
  await new Promise((res) => setTimeout(res, 100));
  truthy(gw.logs.some((l) => l.includes('"requestId":"hook-1"') && l.includes('"level":"error"')), 'no error log line with the request id');
  for (let i = 0; i < 8; i++) eq((await fetch(`${base}/api/after-${i}`)).status, 200, `request ${i} after the throw`);
  const h = await (await fetch(`http://127.0.0.1:${started.adminPort}/health`)).json();
  eq(h.workers.length, 2, 'workers');
});
await check('admin health sees both workers', async () => {
  const r = await fetch(`http://127.0.0.1:${started.adminPort}/health`);
  const j = await r.json();
  eq(r.status, 200, 'status');
  eq(j.workers.length, 2, 'workers');
});

// --- strict rate limits (mode: strict): one Redis decision per request,
// made while Bun holds the request (workers/transport/bun-server.ts
// decideThenProxy), against a private redis-server that the check kills.
await check('strict rate limits: exact across both workers, body kept while pending, Redis killed: deny 503 / allow_local 200, active requests back to 0', async () => {
  const redisPort = await new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
  const redis = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const redisUp = Date.now() + 5000;
  for (;;) {
    const ok = await new Promise((r) => { const t = net.connect(redisPort, '127.0.0.1'); t.once('connect', () => { t.destroy(); r(true); }); t.once('error', () => r(false)); });
    if (ok) break;
    if (Date.now() > redisUp) throw new Error('redis-server did not start (install it: apt-get install -y redis-server)');
    await new Promise((r) => setTimeout(r, 20));
  }
  const file = join(dir, 'strict.json');
  writeFileSync(file, JSON.stringify({
    server: { host: '127.0.0.1', port: 0, backend: 'bun', workers: 2, limits: LIMITS },
    admin: { enabled: true, host: '127.0.0.1', port: 0 },
    log: { access: { enabled: false } },
    redis: { url: `redis://127.0.0.1:${redisPort}`, commandTimeoutMs: 200 },
    upstreams: { up: { targets: [`http://127.0.0.1:${upPort}`] } },
    routes: [
      { id: 'deny', path: '/strict/*', upstream: 'up', rateLimit: [{ by: 'header:x-k', rate: 3, per: '1h', mode: 'strict', onStoreError: 'deny' }] },
      { id: 'local', path: '/lenient/*', upstream: 'up', rateLimit: [{ by: 'header:x-k', rate: 3, per: '1h', mode: 'strict' }] },
    ],
  }));
  const g = startGateway(file);
  try {
    const s = await g.started;
    const at = (path, init = {}) => fetch(`http://127.0.0.1:${s.port}${path}`, { ...init, headers: { connection: 'close', ...init.headers } });
    // 8 requests of one key over fresh connections (both workers): exactly 3 admitted.
    const statuses = [];
    for (let i = 0; i < 8; i++) {
      const r = await at('/strict/a', { headers: { 'x-k': 'k1' } });
      await r.arrayBuffer();
      statuses.push(r.status);
    }
    eq(statuses, [200, 200, 200, 429, 429, 429, 429, 429], 'one key over both workers');
    const refused = await at('/strict/a', { headers: { 'x-k': 'k1' } });
    eq((await refused.json()).error.code, 'rate_limited', 'refusal code');
    truthy(Number(refused.headers.get('retry-after')) >= 1, 'Retry-After');
    // A body sent while the decision is pending reaches the upstream whole.
    const body = 'b'.repeat(900);
    const post = await at('/strict/p', { method: 'POST', body, headers: { 'x-k': 'k2', 'content-type': 'text/plain' } });
    eq(post.status, 200, 'POST admitted');
    eq((await post.json()).bodyLength, 900, 'body length at the upstream');
    // Redis killed: deny answers 503 rate_limit_store_unavailable, allow_local decides in memory.
    redis.kill('SIGKILL');
    await new Promise((r) => redis.once('exit', r));
    const t0 = Date.now();
    const down = await at('/strict/a', { headers: { 'x-k': 'k3' } });
    eq(down.status, 503, 'deny while Redis is away');
    eq((await down.json()).error.code, 'rate_limit_store_unavailable', 'code while Redis is away');
    eq(down.headers.get('retry-after'), '1', 'Retry-After while Redis is away');
    truthy(Date.now() - t0 < 2000, `the 503 took ${Date.now() - t0} ms (commandTimeoutMs is 200)`);
    const lenient = await at('/lenient/a', { headers: { 'x-k': 'k3' } });
    await lenient.arrayBuffer();
    eq(lenient.status, 200, 'allow_local while Redis is away');
    // Every request above is finished: nothing is left counted in flight.
    const metrics = await (await fetch(`http://127.0.0.1:${s.adminPort}/metrics`)).text();
    const active = metrics.split('\n').find((l) => l.startsWith('turnpike_active_requests '));
    eq(active, 'turnpike_active_requests 0', 'active requests');
    g.proc.kill('SIGTERM');
    eq(await g.exited, 0, 'exit code');
  } finally {
    g.proc.kill('SIGKILL');
    redis.kill('SIGKILL');
  }
});

// --- shutting_down: a one-worker gateway, keep-alive connections opened and
// used first, a slow request in flight, SIGTERM, then GET and HEAD on the
// open connections.
await check('shutting_down: GET and HEAD begun before draining, same head, closed; idle connections closed; the slow request finishes; exit 0', async () => {
  const d = startGateway(writeConfig('drain.json', { workers: 1, drainTimeoutMs: 10000 }, [{ id: 'all', path: '/api/*', upstream: 'up' }]));
  const s = await d.started;
  const rid = 'X-Request-Id: drain-1';
  try {
    const conns = [];
    for (let i = 0; i < 3; i++) {
      const c = await Raw.open(s.port);
      eq((await c.request(OK)).status, 200, 'before draining');
      conns.push(c);
    }
    // Two connections with a request head under way (Bun closes idle ones when it stops listening).
    conns[0].send(req('GET', '/api/ok', [rid]).slice(0, 30));
    conns[1].send(req('HEAD', '/api/ok', [rid]).slice(0, 30));
    const slow = await Raw.open(s.port);
    slow.send(req('GET', '/api/hold'));
    const deadline = Date.now() + 5000;
    while (held.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    truthy(held.length === 1, 'the slow request did not reach the upstream');
    d.proc.kill('SIGTERM');
    // Draining once new connections are refused.
    for (;;) {
      const refused = await new Promise((r) => {
        const t = net.connect(s.port, '127.0.0.1');
        t.once('connect', () => { t.destroy(); r(false); });
        t.once('error', () => r(true));
      });
      if (refused) break;
      if (Date.now() > deadline) throw new Error('the draining gateway kept accepting connections');
      await new Promise((r) => setTimeout(r, 20));
    }
    truthy(await conns[2].closes(), 'idle keep-alive connection not closed by the drain');
    const get = await conns[0].request(req('GET', '/api/ok', [rid]).slice(30));
    const head = await conns[1].request(req('HEAD', '/api/ok', [rid]).slice(30), true);
    sameHead(get, head, Errors.SHUTTING_DOWN, 'drain-1', undefined);
    truthy(await conns[0].closes() && await conns[1].closes(), 'connections not closed');
    held.shift()();
    eq((await slow.read()).status, 200, 'the slow request');
    eq(await d.exited, 0, 'exit code');
  } finally {
    d.proc.kill('SIGKILL');
  }
});

// --- the drain timeout: a request still waiting for its upstream is answered
// 503 shutting_down by the gateway and logged so (never 499 client_aborted).
await check('drain timeout: a request still waiting for its upstream gets 503 shutting_down, logged with its bytes; exit 0', async () => {
  const d = startGateway(writeConfig('drain-timeout.json', { workers: 1, drainTimeoutMs: 300 }, [{ id: 'all', path: '/api/*', upstream: 'up' }]));
  const s = await d.started;
  try {
    const before = held.length;
    const c = await Raw.open(s.port);
    c.send(req('GET', '/api/hold', ['X-Request-Id: drain-timeout-1']));
    const deadline = Date.now() + 5000;
    while (held.length === before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    truthy(held.length > before, 'the request did not reach the upstream');
    d.proc.kill('SIGTERM');
    const r = await c.read();
    eq(r.status, 503, 'status');
    eq(JSON.parse(r.body).error.code, 'shutting_down', 'code');
    truthy(await c.closes(), 'connection not closed');
    c.destroy();
    eq(await d.exited, 0, 'exit code');
    const file = join(dir, 'drain-timeout.json.access.log');
    const line = readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((l) => l.request_id === 'drain-timeout-1');
    eq([line?.status, line?.error, line?.bytes_sent], [503, 'shutting_down', r.body.length], 'access line [status, error, bytes_sent]');
  } finally {
    while (held.length > 0) held.shift()();
    d.proc.kill('SIGKILL');
  }
});

// --- keyed balancers (balance: consistent_hash, sticky) on the Bun backend:
// three upstreams that say who they are; every request on a fresh connection
// so both workers take some (the request id names the worker that answered).
await check('consistent_hash and sticky: same key same target on both workers, keys spread, cookie set once and honoured, forged re-picked', async () => {
  const { stickyId } = await import('../../dist/workers/proxy/maglev.js');
  const servers = await Promise.all(['a', 'b', 'c'].map((name) => new Promise((resolve) => {
    const srv = http.createServer((q, r) => {
      r.writeHead(200, { 'x-served-by': name });
      r.end(name);
    });
    srv.listen(0, '127.0.0.1', () => resolve({ name, srv, url: `http://127.0.0.1:${srv.address().port}` }));
  })));
  const file = join(dir, 'balancing.json');
  writeFileSync(file, JSON.stringify({
    server: { host: '127.0.0.1', port: 0, backend: 'bun', workers: 2 },
    admin: { enabled: false },
    log: { access: { enabled: false } },
    upstreams: {
      hashed: { targets: servers.map((x) => x.url), balance: 'consistent_hash', hashOn: 'header:x-key' },
      web: { targets: servers.map((x) => x.url), balance: 'sticky', sticky: { cookie: 'aff', ttlMs: 60000 } },
    },
    routes: [{ id: 'h', path: '/h/*', upstream: 'hashed' }, { id: 's', path: '/s/*', upstream: 'web' }],
  }));
  const g = startGateway(file);
  try {
    const s = await g.started;
    const get = (path, headers = {}) => new Promise((resolve, reject) => {
      const q = http.request({ host: '127.0.0.1', port: s.port, path, headers, agent: false }, (r) => {
        r.resume();
        // The request id's prefix names the worker (`<random>-b<worker>-<counter>`).
        r.on('end', () => resolve({ status: r.statusCode, by: r.headers['x-served-by'], cookie: r.headers['set-cookie'] ?? [], worker: r.headers['x-request-id'].replace(/-[0-9a-z]+$/, '') }));
      });
      q.on('error', reject);
      q.end();
    });
    const owner = new Map();
    const workers = new Set();
    for (let round = 0; round < 3; round++) {
      for (let k = 0; k < 40; k++) {
        const r = await get('/h/x', { 'x-key': `user-${k}` });
        eq(r.status, 200, 'status');
        workers.add(r.worker);
        if (round === 0) owner.set(k, r.by);
        else eq(r.by, owner.get(k), `user-${k} round ${round}`);
      }
    }
    eq(new Set(owner.values()).size, 3, 'targets used by 40 keys');
    // Bun's fetch shares one client (and its upstream sockets) between workers: the request ids tell them apart.
    eq(workers.size, 2, 'workers that answered');
    const first = await get('/s/x');
    const m = /^aff=([0-9a-f]{16}); Path=\/; Max-Age=60; HttpOnly; SameSite=Lax$/.exec(first.cookie[0] ?? '');
    truthy(m !== null && first.cookie.length === 1, `Set-Cookie: ${JSON.stringify(first.cookie)}`);
    eq(m[1], stickyId('web', servers.find((x) => x.name === first.by).url), 'cookie names the target that served');
    const stickyWorkers = new Set();
    for (let i = 0; i < 12; i++) {
      const r = await get('/s/x', { cookie: `z=1; aff=${m[1]}` });
      stickyWorkers.add(r.worker);
      eq([r.by, r.cookie], [first.by, []], `request ${i} with the cookie`);
    }
    eq(stickyWorkers.size, 2, 'workers that honoured the cookie');
    const forged = await get('/s/x', { cookie: 'aff=0123456789abcdef' });
    eq(forged.cookie.length, 1, 'forged cookie: a new Set-Cookie');
    eq(/^aff=([0-9a-f]{16});/.exec(forged.cookie[0])[1], stickyId('web', servers.find((x) => x.name === forged.by).url), 'forged: re-picked');
  } finally {
    g.proc.kill('SIGKILL');
    for (const x of servers) x.srv.close();
  }
});

// ------------------------------------------------------------------ WebSockets

/** A `ws` client through the gateway: resolves on open (with the 101's headers) or the refusal (status, headers, body). */
function wsOpen(path, protocols = [], headers = {}) {
  return new Promise((resolve, reject) => {
    const c = new WebSocket(`ws://127.0.0.1:${port}${path}`, protocols, { headers });
    const msgs = [];
    const waiters = [];
    c.on('message', (d, isBinary) => {
      msgs.push([isBinary, Buffer.from(d)]);
      waiters.splice(0).forEach((w) => w());
    });
    c.closed = new Promise((r) => c.on('close', (code, reason) => r([code, String(reason)])));
    c.next = async (ms = 3000) => {
      const deadline = performance.now() + ms;
      while (msgs.length === 0) {
        if (performance.now() > deadline) throw new Error('no message');
        await new Promise((r) => { waiters.push(r); setTimeout(r, 50); });
      }
      return msgs.shift();
    };
    c.once('upgrade', (res) => { c.head = res.headers; });
    c.once('open', () => resolve(c));
    c.once('unexpected-response', (_q, res) => {
      const chunks = [];
      res.on('data', (x) => chunks.push(x));
      res.on('end', () => resolve({ refused: true, status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
    });
    c.once('error', reject);
    setTimeout(() => reject(new Error('no answer to the upgrade')), 5000);
  });
}

await check('websocket: upgrade through to a ws echo upstream (path, query, request id, forwarding); text and binary round trip', async () => {
  const c = await wsOpen('/ws/room?x=1', [], { 'x-custom': 'yes' });
  truthy(!c.refused, 'refused');
  truthy(/^[0-9a-z]+-b[0-9a-z]+-[0-9a-z]+$/.test(c.head['x-request-id'] ?? ''), `101 x-request-id: ${c.head['x-request-id']}`);
  eq(wsSeen.req.url, '/ws/room?x=1', 'upstream target');
  eq([wsSeen.req.headers['x-custom'], wsSeen.req.headers['x-forwarded-for'], wsSeen.req.headers['x-request-id']], ['yes', '127.0.0.1', c.head['x-request-id']], 'upstream headers');
  c.send('héllo');
  eq(await c.next(), [false, Buffer.from('héllo')], 'text echo');
  const bin = Buffer.from([0, 1, 2, 255, 254]);
  c.send(bin);
  eq(await c.next(), [true, bin], 'binary echo');
  const big = Buffer.alloc(300_000, 7);
  c.send(big);
  const [isBin, got] = await c.next();
  truthy(isBin && got.equals(big), 'a 300 kB binary message echoed whole');
  c.close(1000);
  eq(await c.closed, [1000, ''], 'close');
});

await check('websocket: subprotocol chosen by the upstream reaches the client', async () => {
  const c = await wsOpen('/ws/p', ['a', 'chat']);
  eq([c.protocol, wsSeen.req.headers['sec-websocket-protocol']], ['chat', 'a,chat'], 'protocol, offered upstream');
  c.close();
  await c.closed;
});

await check('websocket: permessage-deflate is negotiated on a compression route only; messages round trip either way', async () => {
  // `ws` clients offer permessage-deflate by default.
  const z = await wsOpen('/ws-deflate/z');
  eq([z.extensions, z.head['sec-websocket-extensions']], ['permessage-deflate', 'permessage-deflate; client_no_context_takeover; server_no_context_takeover'], 'compression route');
  eq(wsSeen.req.headers['sec-websocket-extensions'], undefined, 'the upstream side is never compressed');
  const text = 'compressible '.repeat(2000);
  z.send(text);
  eq(await z.next(), [false, Buffer.from(text)], 'a 26 kB text message through both inflations');
  z.close(1000);
  await z.closed;
  const p = await wsOpen('/ws/plain');
  eq([p.extensions, p.head['sec-websocket-extensions']], ['', undefined], 'route without compression');
  p.send(text);
  eq(await p.next(), [false, Buffer.from(text)], 'echo');
  p.close(1000);
  await p.closed;
});

await check('websocket: close code 4001 and its reason both ways', async () => {
  const c = await wsOpen('/ws/c');
  c.close(4001, 'client bye');
  eq(await c.closed, [4001, 'client bye'], 'client: the echo of its close');
  const deadline = performance.now() + 3000;
  while (!wsSeen.closes.some(([code]) => code === 4001) && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  eq(wsSeen.closes.find(([code]) => code === 4001), [4001, 'client bye'], 'upstream got');
  const d = await wsOpen('/ws/c');
  d.send('close4001');
  eq(await d.closed, [4001, 'upstream bye'], 'client got the upstream close');
});

await check('websocket: an upstream refusal (403, header, body) is passed through; bad version 400 with Sec-WebSocket-Version', async () => {
  const r = await wsOpen('/ws/refuse');
  eq([r.refused, r.status, r.headers['x-why'], r.body], [true, 403, 'nope', 'forbidden!'], 'refusal');
  truthy(typeof r.headers['x-request-id'] === 'string', 'request id on the refusal');
  const raw = await Raw.open();
  const a = await raw.request(req('GET', '/ws/v', ['Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version: 8']));
  eq([a.status, a.get('sec-websocket-version'), JSON.parse(a.body).error.code], [400, '13', 'bad_request'], 'version 8');
  raw.destroy();
});

await check('websocket: a route with websocket: false proxies the upgrade request as plain HTTP (no Upgrade upstream)', async () => {
  const raw = await Raw.open();
  const a = await raw.request(req('GET', '/ws-off/x', ['Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version: 13']));
  eq(a.status, 200, 'status');
  const saw = await upstreamSaw(a);
  eq([saw.url, saw.headers.upgrade, saw.headers['sec-websocket-key']], ['/ws-off/x', undefined, 'dGhlIHNhbXBsZSBub25jZQ=='], 'upstream saw');
  raw.destroy();
});

await check('websocket: idleTimeoutMs and messagesPerSecond count on the live clock (a gateway up for longer than both)', async () => {
  const c = await wsOpen('/ws-idle/x');
  // A message every 400 ms for 1.6 s: never idle for 1 s, never over 3 in one second (a stale clock would drop the 4th).
  for (let i = 0; i < 5; i++) {
    c.send(`tick${i}`);
    eq(await c.next(), [false, Buffer.from(`tick${i}`)], `echo ${i}`);
    if (i < 4) await new Promise((r) => setTimeout(r, 400));
  }
  eq(c.readyState, WebSocket.OPEN, 'open after 1.6 s of traffic');
  const t0 = performance.now();
  eq(await c.closed, [1001, 'idle timeout'], 'closed when idle');
  truthy(performance.now() - t0 > 500, 'not closed before about idleTimeoutMs of silence');
});

await check('websocket: access log has the 101 with the message bytes each way', async () => {
  const lines = await accessLines((ls) => ls.some((l) => l.path === '/ws/room' && l.status === 101));
  const l = lines.find((x) => x.path === '/ws/room' && x.status === 101);
  truthy(l !== undefined, 'no 101 line for /ws/room');
  eq([l.route, l.bytes_received > 300_000, l.bytes_sent > 300_000], ['ws', true, true], 'route and bytes');
});

const lastWs = await wsOpen('/ws/shut');
gw.proc.kill('SIGTERM');
const code = await gw.exited;
await check('drains and exits 0 on SIGTERM', async () => eq(code, 0, 'exit code'));
await check('websocket: an open WebSocket gets 1001 both ways at shutdown', async () => {
  eq(await lastWs.closed, [1001, 'server shutting down'], 'client got');
  const deadline = performance.now() + 2000;
  const shut = ([c, r]) => c === 1001 && r === 'gateway shutting down';
  while (!wsSeen.closes.some(shut) && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  truthy(wsSeen.closes.some(shut), `upstream got 1001 'gateway shutting down': ${JSON.stringify(wsSeen.closes)}`);
});
upstream.close();
rawUpstream.close();
wsHttp.close();
for (const w of wss.clients) w.terminate();
canary.close();
finish();
