/**
 * WebSocket proxying (issue 14) through a real gateway process: real `ws`
 * clients, a real `ws` upstream server, 127.0.0.1 and ephemeral ports. The
 * upgrade is routed and passes the route's policies before the upstream is
 * contacted; the upstream's handshake comes before the client's 101;
 * messages, close codes, limits and backpressure both ways.
 *
 * The backend is TURNPIKE_SERVER__BACKEND's (uWS when unset), like the other
 * proxy suites: the gateway process inherits the variable, and the same
 * tests hold on `uws` and `node` (node/websocket.ts gives the strict node:net
 * server uWS's WebSocket API over `ws`). The end of the file checks a node
 * gateway and a Bun gateway proxy WebSockets in the default (uWS) run too
 * (test/bun/run-smoke.mjs has Bun's own cases).
 */
import http from 'node:http';
import net from 'node:net';
import { readFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { freePort } from '../helpers/ports.js';

const ADMIN_TOKEN = 'ws-test-admin-token-0123456789abcdef';
const BACKEND = process.env.TURNPIKE_SERVER__BACKEND === 'node' ? 'node' : 'uws';

/** What the upstream saw of one connection, by the `id` query parameter the tests put on each URL. */
interface Seen {
  url: string;
  headers: http.IncomingHttpHeaders;
  messages: { data: Buffer; binary: boolean }[];
  closed: Promise<{ code: number; reason: string }>;
  ws: WebSocket;
}
const seen = new Map<string, Seen>();
/** Plain (non-upgrade) requests the upstream got: url and headers. */
const plain: { url: string; headers: http.IncomingHttpHeaders }[] = [];

let upServer: http.Server;
let wss: WebSocketServer;
let upPort = 0;
let gw: Gateway;
let counter = 0;
const nextId = () => `c${++counter}`;

/** The big message the /push upstream sends again and again (its bytes number each message: first 4 bytes). */
const PUSH_MESSAGE_BYTES = 1 << 20;

function startUpstream(): Promise<void> {
  upServer = http.createServer((req, res) => {
    plain.push({ url: req.url!, headers: req.headers });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ plain: true, upgrade: req.headers.upgrade ?? null }));
  });
  wss = new WebSocketServer({
    noServer: true,
    maxPayload: 64 << 20,
    // The upstream chooses chat.v2 when offered, else the first offered.
    handleProtocols: (set) => (set.has('chat.v2') ? 'chat.v2' : set.size > 0 ? [...set][0]! : false),
  });
  upServer.on('upgrade', (req, socket, head) => {
    if (req.url!.startsWith('/refuse/')) {
      socket.end('HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nx-upstream: yes\r\nConnection: x-hop-secret\r\nx-hop-secret: s3cr3t\r\nkeep-alive: timeout=5\r\ncontent-length: 13\r\n\r\nnot for you\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => onConnection(ws, req));
  });
  return new Promise((r) => upServer.listen(0, '127.0.0.1', () => {
    upPort = (upServer.address() as net.AddressInfo).port;
    r();
  }));
}

function onConnection(ws: WebSocket, req: http.IncomingMessage): void {
  const id = new URL(req.url!, 'http://x').searchParams.get('id') ?? 'none';
  const s: Seen = {
    url: req.url!, headers: req.headers, messages: [], ws,
    closed: new Promise((r) => ws.on('close', (code, reason) => r({ code, reason: reason.toString() }))),
  };
  seen.set(id, s);
  ws.on('error', () => {});
  if (req.url!.startsWith('/deaf/')) {
    (ws as any)._socket.pause(); // never reads: the gateway must not buffer for it without bound
    return;
  }
  if (req.url!.startsWith('/push/')) {
    // Sends 1 MiB messages as fast as its socket takes them; counts what the kernel accepted.
    const total = Number(new URL(req.url!, 'http://x').searchParams.get('n'));
    const pushed = { flushed: 0 };
    (s as any).pushed = pushed;
    let i = 0;
    const sendNext = (): void => {
      while (i < total && ws.readyState === WebSocket.OPEN && ws.bufferedAmount < 4 * PUSH_MESSAGE_BYTES) {
        const m = Buffer.alloc(PUSH_MESSAGE_BYTES, i & 0xff);
        m.writeUInt32BE(i, 0);
        i++;
        ws.send(m, { binary: true }, (err) => { if (!err) pushed.flushed += PUSH_MESSAGE_BYTES; });
      }
      if (i < total && ws.readyState === WebSocket.OPEN) setTimeout(sendNext, 5);
    };
    sendNext();
    return;
  }
  ws.on('message', (data: Buffer, binary: boolean) => {
    s.messages.push({ data, binary });
    const text = binary ? '' : data.toString();
    if (text.startsWith('close:')) {
      const [, code, reason] = text.split(':');
      ws.close(Number(code), reason);
    } else if (text === 'noclose') {
      ws.close();
    } else if (text === 'kill') {
      ws.terminate();
    } else if (text.startsWith('big:')) {
      ws.send(Buffer.alloc(Number(text.slice(4)), 7));
    } else if (text === 'frag') {
      // One text message in three fragments.
      ws.send('fra', { fin: false });
      ws.send('gme', { fin: false });
      ws.send('nted', { fin: true });
    } else if (text === 'headers') {
      ws.send(JSON.stringify({ url: req.url, headers: req.headers }));
    } else {
      ws.send(data, { binary });
    }
  });
}

interface Client {
  ws: WebSocket;
  messages: { data: Buffer; binary: boolean }[];
  closed: Promise<{ code: number; reason: string }>;
  next(): Promise<{ data: Buffer; binary: boolean }>;
}

/** Opens a WebSocket through the gateway; rejects with { status, body, headers } when the upgrade is refused. */
function open(path: string, protocols: string[] = [], opts: WebSocket.ClientOptions = {}): Promise<Client> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${gw.port}${path}`, protocols, opts);
    const messages: Client['messages'] = [];
    const waiters: ((m: { data: Buffer; binary: boolean }) => void)[] = [];
    let read = 0;
    ws.on('message', (data: Buffer, binary: boolean) => {
      messages.push({ data, binary });
      const w = waiters.shift();
      if (w) w(messages[read++]!);
    });
    const closed = new Promise<{ code: number; reason: string }>((r) => ws.on('close', (code, reason) => r({ code, reason: reason.toString() })));
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => reject(Object.assign(new Error(`upgrade refused: ${res.statusCode}`), { status: res.statusCode, body, headers: res.headers })));
    });
    ws.on('error', (err) => reject(err));
    ws.on('open', () => resolve({
      ws, messages, closed,
      next: () => new Promise((r) => {
        if (read < messages.length) r(messages[read++]!);
        else waiters.push(r);
      }),
    }));
  });
}

async function refused(path: string, opts: WebSocket.ClientOptions = {}): Promise<{ status: number; body: any; headers: http.IncomingHttpHeaders }> {
  try {
    const c = await open(path, [], opts);
    c.ws.terminate();
  } catch (err: any) {
    if (err.status === undefined) throw err;
    let body: any = err.body;
    try { body = JSON.parse(err.body); } catch { /* not JSON */ }
    return { status: err.status, body, headers: err.headers };
  }
  throw new Error(`the upgrade to ${path} was accepted`);
}

async function upstreamConn(id: string): Promise<Seen> {
  for (let i = 0; i < 500 && !seen.has(id); i++) await new Promise((r) => setTimeout(r, 10));
  const s = seen.get(id);
  if (!s) throw new Error(`the upstream never saw connection ${id}`);
  return s;
}

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function rssKb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]);
}

/** The gateway's worker threads share its process: its RSS is what the gateway holds. */
let apiKey = '';
let downPort = 0;

beforeAll(async () => {
  await startUpstream();
  downPort = await freePort();
  const identityDir = mkdtempSync(join(tmpdir(), 'tp-ws-id-'));
  gw = await startGateway(baseConfig({
    admin: { enabled: true, port: 0 },
    identity: { keys: { sources: ['authorization', 'query:api_key'] } },
    store: { path: join(identityDir, 'id.db') },
    upstreams: {
      up: { targets: [`http://127.0.0.1:${upPort}`] },
      down: { targets: [`http://127.0.0.1:${downPort}`] },
    },
    routes: [
      { id: 'echo', path: '/echo/*', upstream: 'up' },
      { id: 'small', path: '/small/*', upstream: 'up', websocket: { maxMessageBytes: 1024 } },
      { id: 'rate', path: '/rate/*', upstream: 'up', websocket: { messagesPerSecond: 5 } },
      { id: 'idle', path: '/idle/*', upstream: 'up', websocket: { idleTimeoutMs: 500, pingIntervalMs: 0 } },
      { id: 'ping', path: '/ping/*', upstream: 'up', websocket: { pingIntervalMs: 1000, idleTimeoutMs: 0 } },
      { id: 'plain', path: '/plain/*', upstream: 'up', websocket: false },
      { id: 'auth', path: '/auth/*', upstream: 'up', auth: {} },
      { id: 'limited', path: '/limited/*', upstream: 'up', rateLimit: [{ by: 'global', rate: 1, per: '1d', scope: 'local' }] },
      { id: 'down', path: '/down/*', upstream: 'down' },
      { id: 'refuse', path: '/refuse/*', upstream: 'up' },
      { id: 'push', path: '/push/*', upstream: 'up', websocket: { idleTimeoutMs: 0, pingIntervalMs: 0 } },
      { id: 'deaf', path: '/deaf/*', upstream: 'up', websocket: { idleTimeoutMs: 0, pingIntervalMs: 0 } },
      { id: 'only-post', path: '/only-post', methods: ['POST'], upstream: 'up' },
    ],
  }), { env: { TURNPIKE_ADMIN_TOKEN: ADMIN_TOKEN }, cwd: identityDir });
  const r = await fetch(`http://127.0.0.1:${gw.adminPort}/admin/consumers`, {
    method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'ws', keys: [{ name: 'k' }] }),
  });
  const c = await r.json();
  if (r.status >= 300) throw new Error(`setup: ${r.status} ${JSON.stringify(c)}`);
  apiKey = c.keys[0].key;
}, 60_000);

afterAll(async () => {
  await gw?.stop();
  for (const s of seen.values()) s.ws.terminate();
  wss?.close();
  upServer?.close();
});

describe(`websocket proxying (${BACKEND} backend)`, () => {
  it('relays text and binary both ways, and the upstream gets the request as HTTP would send it', async () => {
    const id = nextId();
    const c = await open(`/echo/a%7e?id=${id}&q=a%20b&x=%zz`, [], { headers: { 'x-custom': 'v1', 'x-request-id': 'rid-ws-1' } });
    c.ws.send('hello');
    c.ws.send(Buffer.from([0, 1, 2, 255]));
    const m1 = await c.next();
    const m2 = await c.next();
    expect(m1.binary).toBe(false);
    expect(m1.data.toString()).toBe('hello');
    expect(m2.binary).toBe(true);
    expect([...m2.data]).toEqual([0, 1, 2, 255]);
    const s = await upstreamConn(id);
    // The request target the HTTP proxy sends for the same URL (normalized path, query byte-exact).
    await fetchRaw(`GET /echo/a%7e?id=${id}&q=a%20b&x=%zz HTTP/1.1\r\nHost: t\r\n\r\n`);
    expect(plain[plain.length - 1]!.url).toBe(`/echo/a~?id=${id}&q=a%20b&x=%zz`);
    expect(s.url).toBe(`/echo/a~?id=${id}&q=a%20b&x=%zz`);
    expect(s.headers['x-custom']).toBe('v1');
    expect(s.headers['x-request-id']).toBe('rid-ws-1');
    expect(s.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(s.headers['x-forwarded-proto']).toBe('http');
    expect(s.headers.host).toBe(`127.0.0.1:${upPort}`);
    expect(s.headers.upgrade).toBe('websocket');
    expect(s.headers['sec-websocket-protocol']).toBeUndefined();
    c.ws.close(1000);
    expect(await s.closed).toEqual({ code: 1000, reason: '' });
  });

  it('passes the subprotocol offer and returns the one the upstream chose', async () => {
    const id = nextId();
    const c = await open(`/echo/p?id=${id}`, ['chat.v1', 'chat.v2']);
    expect(c.ws.protocol).toBe('chat.v2');
    const s = await upstreamConn(id);
    expect(s.headers['sec-websocket-protocol']).toBe('chat.v1,chat.v2');
    c.ws.close();
  });

  it('relays a 1 MiB message each way, intact', async () => {
    const id = nextId();
    const c = await open(`/echo/big?id=${id}`);
    const big = Buffer.alloc(1 << 20);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
    c.ws.send(big);
    const back = await c.next();
    expect(back.data.length).toBe(1 << 20);
    expect(back.data.equals(big)).toBe(true);
    c.ws.send(`big:${1 << 20}`);
    const down = await c.next();
    expect(down.data.length).toBe(1 << 20);
    c.ws.close();
  });

  it('keeps 1,000 messages in order', async () => {
    const c = await open(`/echo/order?id=${nextId()}`);
    for (let i = 0; i < 1000; i++) c.ws.send(`m${i}`);
    await until(() => c.messages.length === 1000, 10_000, '1000 echoes');
    expect(c.messages.map((m) => m.data.toString())).toEqual(Array.from({ length: 1000 }, (_, i) => `m${i}`));
    c.ws.close();
  });

  it('delivers fragmented messages whole, both ways', async () => {
    const id = nextId();
    const c = await open(`/echo/frag?id=${id}`);
    c.ws.send('abc', { fin: false });
    c.ws.send('def', { fin: false });
    c.ws.send('ghi', { fin: true });
    const echo = await c.next();
    expect(echo.data.toString()).toBe('abcdefghi');
    const s = await upstreamConn(id);
    expect(s.messages[0]!.data.toString()).toBe('abcdefghi');
    c.ws.send('frag');
    expect((await c.next()).data.toString()).toBe('fragmented');
    c.ws.close();
  });

  it('passes close codes and reasons both ways (4001 up, 4002 down, no code)', async () => {
    const id1 = nextId();
    const c1 = await open(`/echo/close?id=${id1}`);
    c1.ws.close(4001, 'client says bye');
    expect(await (await upstreamConn(id1)).closed).toEqual({ code: 4001, reason: 'client says bye' });
    expect((await c1.closed).code).toBe(4001);

    const c2 = await open(`/echo/close?id=${nextId()}`);
    c2.ws.send('close:4002:upstream says bye');
    expect(await c2.closed).toEqual({ code: 4002, reason: 'upstream says bye' });

    // A Close without a code (1005 on each side) stays one.
    const id3 = nextId();
    const c3 = await open(`/echo/close?id=${id3}`);
    c3.ws.close();
    expect((await (await upstreamConn(id3)).closed).code).toBe(1005);
    const c4 = await open(`/echo/close?id=${nextId()}`);
    c4.ws.send('noclose');
    expect((await c4.closed).code).toBe(1005);
  });

  it('refuses upgrades with the gateway JSON error, never a 101', async () => {
    const before = seen.size;
    const nf = await refused('/nowhere');
    expect(nf.status).toBe(404);
    expect(nf.body.error.code).toBe('route_not_found');
    expect(nf.headers['x-request-id']).toBe(nf.body.error.requestId);

    const na = await refused('/only-post');
    expect(na.status).toBe(405);

    const noKey = await refused(`/auth/x?id=${nextId()}`);
    expect(noKey.status).toBe(401);
    expect(noKey.body.error.code).toBe('credentials_missing');
    const badKey = await refused('/auth/x', { headers: { authorization: 'Bearer tp_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' } });
    expect(badKey.status).toBe(401);
    expect(seen.size).toBe(before); // the upstream was never contacted
  });

  it('accepts an API key from the header or the query (the query key is not forwarded)', async () => {
    const id1 = nextId();
    const c1 = await open(`/auth/x?id=${id1}`, [], { headers: { authorization: `Bearer ${apiKey}` } });
    c1.ws.send('hi');
    expect((await c1.next()).data.toString()).toBe('hi');
    c1.ws.close();
    const id2 = nextId();
    const c2 = await open(`/auth/x?id=${id2}&api_key=${apiKey}`);
    const s = await upstreamConn(id2);
    expect(s.url).toBe(`/auth/x?id=${id2}`);
    c2.ws.close();
  });

  it('answers 429 when the route rate limit refuses the upgrade', async () => {
    const c = await open(`/limited/x?id=${nextId()}`);
    c.ws.close();
    const r = await refused(`/limited/x?id=${nextId()}`);
    expect(r.status).toBe(429);
    expect(r.body.error.code).toBe('rate_limited');
    expect(r.headers['retry-after']).toBeDefined();
  });

  it('passes an upstream refusal (403) and answers 502 when the upstream is down', async () => {
    const r = await refused(`/refuse/x?id=${nextId()}`);
    expect(r.status).toBe(403);
    expect(r.body).toBe('not for you\r\n');
    expect(r.headers['x-upstream']).toBe('yes');
    // Hop-by-hop fields of the upstream's answer stay there, those its Connection names too (RFC 9110 7.6.1).
    expect(r.headers['x-hop-secret']).toBeUndefined();
    expect(r.headers['keep-alive']).toBeUndefined();
    const d = await refused(`/down/x?id=${nextId()}`);
    expect(d.status).toBe(502);
    expect(d.body.error.code).toBe('upstream_connect_failed');
  });

  it('proxies an upgrade as plain HTTP on a route with websocket: false, and strips any other Upgrade', async () => {
    const r = await refused(`/plain/x?id=${nextId()}`);
    expect(r.status).toBe(200);
    expect(r.body).toEqual({ plain: true, upgrade: null });
    const h2c = await fetchRaw(`GET /echo/h2c HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n`);
    expect(h2c).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(h2c).toContain('{"plain":true,"upgrade":null}');
    const last = plain[plain.length - 1]!;
    expect(last.url).toBe('/echo/h2c');
    expect(last.headers['http2-settings']).toBeUndefined();
  });

  it('closes with 1009 a message over maxMessageBytes, either way', async () => {
    const id = nextId();
    const c = await open(`/small/x?id=${id}`);
    c.ws.send(Buffer.alloc(1024, 1));
    expect((await c.next()).data.length).toBe(1024);
    c.ws.send(Buffer.alloc(1025, 1));
    expect((await c.closed).code).toBe(1009);
    expect((await (await upstreamConn(id)).closed).code).toBe(1001);

    const c2 = await open(`/small/x?id=${nextId()}`);
    c2.ws.send('big:2000');
    expect((await c2.closed).code).toBe(1009);
  });

  it('closes with 1008 a client over messagesPerSecond', async () => {
    const id = nextId();
    const c = await open(`/rate/x?id=${id}`);
    for (let i = 0; i < 6; i++) c.ws.send(`m${i}`);
    expect(await c.closed).toEqual({ code: 1008, reason: 'message rate limit exceeded' });
    const s = await upstreamConn(id);
    expect((await s.closed).code).toBe(1001);
    expect(s.messages.length).toBe(5);
  });

  it('closes an idle connection with 1001 both ways', async () => {
    const id = nextId();
    const c = await open(`/idle/x?id=${id}`);
    expect(await c.closed).toEqual({ code: 1001, reason: 'idle timeout' });
    expect((await (await upstreamConn(id)).closed).code).toBe(1001);
  });

  it('pings a silent client; one that answers stays, one that does not is dropped (upstream gets 1001)', async () => {
    const ok = await open(`/ping/x?id=${nextId()}`);
    let pings = 0;
    ok.ws.on('ping', () => pings++);
    const id = nextId();
    const mute = await open(`/ping/x?id=${id}`, [], { autoPong: false } as WebSocket.ClientOptions);
    expect((await mute.closed).code).toBe(1006);
    expect(await (await upstreamConn(id)).closed).toEqual({ code: 1001, reason: 'client not responding' });
    await until(() => pings >= 2, 5000, 'two pings');
    expect(ok.ws.readyState).toBe(WebSocket.OPEN);
    ok.ws.send('still here');
    expect((await ok.next()).data.toString()).toBe('still here');
    ok.ws.close();
  });

  it('closes the upstream when the client vanishes, and the client with 1014 when the upstream does', async () => {
    const id = nextId();
    const c = await open(`/echo/x?id=${id}`);
    const s = await upstreamConn(id);
    c.ws.terminate();
    expect(await s.closed).toEqual({ code: 1001, reason: 'client connection lost' });

    const c2 = await open(`/echo/x?id=${nextId()}`);
    c2.ws.send('kill');
    expect(await c2.closed).toEqual({ code: 1014, reason: 'upstream connection lost' });
  });

  it('holds a slow reader to the buffer bound: the upstream is paused, nothing is lost', async () => {
    const n = 96; // 96 MiB pushed; unbounded buffering would hold most of it in the gateway
    const id = nextId();
    const rss0 = rssKb(gw.proc.pid!);
    const c = await open(`/push/x?id=${id}&n=${n}`);
    (c.ws as any)._socket.pause(); // the client reads nothing
    const s = await upstreamConn(id);
    const pushed = (s as any).pushed as { flushed: number };
    // Wait until the upstream cannot push more (the gateway stopped reading it).
    let last = -1;
    for (let stable = 0; stable < 10;) {
      await new Promise((r) => setTimeout(r, 100));
      if (pushed.flushed === last) stable++;
      else stable = 0;
      last = pushed.flushed;
    }
    const held = pushed.flushed;
    const rssGrowthMb = (rssKb(gw.proc.pid!) - rss0) / 1024;
    console.log(`slow reader: the upstream got rid of ${(held / PUSH_MESSAGE_BYTES).toFixed(1)} MiB, gateway RSS grew ${rssGrowthMb.toFixed(1)} MB`);
    // What the upstream got rid of is in socket buffers (kernel) and the gateway's bound (~1.3 MiB + one message).
    expect(held).toBeLessThan(40 * PUSH_MESSAGE_BYTES);
    expect(rssGrowthMb).toBeLessThan(32);
    // Reading again: every message arrives, in order, intact.
    (c.ws as any)._socket.resume();
    await until(() => c.messages.length === n, 60_000, `${n} pushed messages`);
    for (let i = 0; i < n; i++) {
      const m = c.messages[i]!.data;
      expect(m.length).toBe(PUSH_MESSAGE_BYTES);
      expect(m.readUInt32BE(0)).toBe(i);
      expect(m[PUSH_MESSAGE_BYTES - 1]).toBe(i & 0xff);
    }
    c.ws.close();
  }, 90_000);

  // uWS 20.30 cannot pause a WebSocket's reads, so the tunnel closes instead; on the node backend the tunnel does the same (it does not pause the client there either).
  it.runIf(BACKEND === 'node')('pauses a client whose upstream does not read (node backend): memory stays bounded, every message arrives in order once it reads', async () => {
    const rss0 = rssKb(gw.proc.pid!);
    const id = nextId();
    const c = await open(`/deaf/x?id=${id}`);
    const s = await upstreamConn(id);
    const chunk = Buffer.alloc(512 * 1024, 3);
    let sent = 0;
    // 64 MiB offered; the client's own buffer grows once the gateway stops reading it.
    while (c.ws.readyState === WebSocket.OPEN && sent < 128) {
      const m = Buffer.from(chunk);
      m.writeUInt32BE(sent, 0);
      c.ws.send(m);
      sent++;
      if (c.ws.bufferedAmount > 8 << 20) await new Promise((r) => setTimeout(r, 5));
      if (c.ws.bufferedAmount > 48 << 20) break;
    }
    // The gateway paused the client: its unsent bytes pile up at the client, not in the gateway.
    await until(() => c.ws.bufferedAmount > 16 << 20, 10_000, 'the client to be held back');
    expect(c.ws.readyState).toBe(WebSocket.OPEN);
    expect((rssKb(gw.proc.pid!) - rss0) / 1024).toBeLessThan(32);
    const got: number[] = [];
    s.ws.on('message', (d: Buffer) => got.push(d.readUInt32BE(0)));
    (s.ws as any)._socket.resume();
    while (c.ws.readyState === WebSocket.OPEN && sent < 128) {
      const m = Buffer.from(chunk);
      m.writeUInt32BE(sent, 0);
      c.ws.send(m);
      sent++;
      if (c.ws.bufferedAmount > 8 << 20) await new Promise((r) => setTimeout(r, 5));
    }
    await until(() => got.length === sent, 30_000, `all ${sent} messages at the upstream (got ${got.length})`);
    expect(got).toEqual([...Array(sent).keys()]);
    expect(c.ws.readyState).toBe(WebSocket.OPEN);
    c.ws.close(1000);
    await c.closed;
  }, 60_000);

  it('drops a client that pings without reading its pongs: what waits for it stays bounded (found by the break-it pass: 1 GB on uWS)', async () => {
    const rss0 = rssKb(gw.proc.pid!);
    const id = nextId();
    const c = await open(`/echo/x?id=${id}`);
    const s = await upstreamConn(id);
    (c.ws as any)._socket.pause(); // reads nothing from here: the pongs pile up on the gateway's side
    const payload = Buffer.alloc(125, 1);
    let upClosed: { code: number; reason: string } | null = null;
    void s.closed.then((x) => { upClosed = x; });
    // Up to 40 MiB of pings (each answered with a 127-byte pong), or until the gateway gives up on the client.
    for (let i = 0; i < 320_000 && upClosed === null && c.ws.readyState === WebSocket.OPEN; i++) {
      c.ws.ping(payload);
      if (i % 2000 === 1999) await new Promise((r) => setTimeout(r, 1));
    }
    await until(() => upClosed !== null, 10_000, 'the upstream side to be closed');
    expect(upClosed!.code).toBe(1001);
    // uWS queues pongs without a limit: the gateway drops the client itself. The node backend's ws
    // server stops reading a client whose pongs are not read (the socket ends: client connection lost).
    if (BACKEND === 'uws') expect(upClosed!.reason).toBe('client not reading');
    expect((rssKb(gw.proc.pid!) - rss0) / 1024).toBeLessThan(64);
    c.ws.terminate();
  }, 60_000);

  it.runIf(BACKEND !== 'node')('closes with 1013 a client whose upstream does not read (uWS cannot pause a WebSocket\'s reads)', async () => {
    const rss0 = rssKb(gw.proc.pid!);
    const c = await open(`/deaf/x?id=${nextId()}`);
    const chunk = Buffer.alloc(512 * 1024, 3);
    let sent = 0;
    while (c.ws.readyState === WebSocket.OPEN && sent < 256) {
      c.ws.send(chunk);
      sent++;
      if (c.ws.bufferedAmount > 4 << 20) await new Promise((r) => setTimeout(r, 5));
    }
    expect(await c.closed).toEqual({ code: 1013, reason: 'upstream not keeping up' });
    expect((rssKb(gw.proc.pid!) - rss0) / 1024).toBeLessThan(32);
  }, 60_000);
});

describe('shutdown', () => {
  it('SIGTERM ends open WebSockets with 1001 both ways, and the gateway exits', async () => {
    const g = await startGateway(baseConfig({
      server: { workers: 1, drainTimeoutMs: 2000 },
      upstreams: { up: { targets: [`http://127.0.0.1:${upPort}`] } },
      routes: [{ id: 'echo', path: '/echo/*', upstream: 'up' }],
    }));
    const id = nextId();
    const ws = new WebSocket(`ws://127.0.0.1:${g.port}/echo/x?id=${id}`);
    const closed = new Promise<{ code: number; reason: string }>((r) => ws.on('close', (code, reason) => r({ code, reason: reason.toString() })));
    await new Promise((r, j) => { ws.on('open', r); ws.on('error', j); });
    const s = await upstreamConn(id);
    const code = await g.stop();
    expect(code).toBe(0);
    expect(await closed).toEqual({ code: 1001, reason: 'server shutting down' });
    expect(await s.closed).toEqual({ code: 1001, reason: 'gateway shutting down' });
  });
});

/** One request over a raw socket; resolves what came back before the connection went quiet. */
function fetchRaw(request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(gw.port, '127.0.0.1', () => s.write(request));
    let out = '';
    let timer: NodeJS.Timeout | null = null;
    s.on('data', (d) => {
      out += d;
      if (timer) clearTimeout(timer);
      timer = setTimeout(() => { s.destroy(); resolve(out); }, 150);
    });
    s.on('error', reject);
    s.on('close', () => resolve(out));
  });
}

/**
 * The node backend proxies WebSockets as uWS does (the whole suite above runs
 * on it with TURNPIKE_SERVER__BACKEND=node): here a node gateway next to the
 * uWS one of the default run, for the parts only this backend has: what the
 * client sends right behind its handshake (before the 101) reaches the
 * upstream as the first message, an upgrade answered with an error leaves a
 * keep-alive HTTP connection, and the connection count comes back down.
 */
describe('the node backend', () => {
  let nodeGw: Gateway;
  beforeAll(async () => {
    nodeGw = await startGateway(baseConfig({
      server: { backend: 'node', workers: 1, timeouts: { headerMs: 500, idleMs: 500 } },
      upstreams: { up: { targets: [`http://127.0.0.1:${upPort}`] } },
      routes: [
        { id: 'echo', path: '/echo/*', upstream: 'up', websocket: { maxMessageBytes: 4096 } },
        { id: 'plain', path: '/plain/*', upstream: 'up', websocket: false },
      ],
    }), { env: { TURNPIKE_SERVER__BACKEND: 'node' } });
  }, 60_000);
  afterAll(async () => {
    await nodeGw?.stop();
  });

  /** A raw handshake for `path`, with `extra` bytes written in the same packet right behind it. */
  function rawHandshake(path: string, extra: Buffer = Buffer.alloc(0), headers = ''): Promise<{ sock: net.Socket; head: string; rest: () => Buffer }> {
    return new Promise((resolve, reject) => {
      const sock = net.connect(nodeGw.port, '127.0.0.1');
      const key = Buffer.from('0123456789abcdef').toString('base64');
      let buf = Buffer.alloc(0);
      let done = false;
      sock.on('connect', () => sock.write(Buffer.concat([Buffer.from(
        `GET ${path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${headers}\r\n`,
      ), extra])));
      sock.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        const end = buf.indexOf('\r\n\r\n');
        if (!done && end !== -1) {
          done = true;
          resolve({ sock, head: buf.subarray(0, end).toString('latin1'), rest: () => buf.subarray(end + 4) });
        }
      });
      sock.on('error', reject);
      setTimeout(() => reject(new Error('no answer to the handshake')), 10_000).unref();
    });
  }

  /** A masked client frame (RFC 6455 5.2/5.3). */
  function clientFrame(opcode: number, payload: Buffer): Buffer {
    const mask = Buffer.from([1, 2, 3, 4]);
    const body = Buffer.from(payload.map((b, i) => b ^ mask[i & 3]!));
    return Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length]), mask, body]);
  }

  it('proxies: 101 with the upstream\'s subprotocol and the request id; messages both ways', async () => {
    const id = nextId();
    const c = await new Promise<WebSocket>((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${nodeGw.port}/echo/n?id=${id}`, ['chat.v1', 'chat.v2'], { headers: { 'x-request-id': 'rid-node-1' } });
      ws.on('upgrade', (res) => {
        expect(res.headers['x-request-id']).toBe('rid-node-1');
      });
      ws.on('open', () => resolve(ws));
      ws.on('error', reject);
    });
    expect(c.protocol).toBe('chat.v2');
    const got = new Promise<string>((r) => c.once('message', (d) => r(d.toString())));
    c.send('over node');
    expect(await got).toBe('over node');
    const s = await upstreamConn(id);
    expect(s.headers['sec-websocket-protocol']).toBe('chat.v1,chat.v2');
    const closed = new Promise<number>((r) => c.on('close', (code) => r(code)));
    c.close(4003, 'bye');
    expect(await s.closed).toEqual({ code: 4003, reason: 'bye' });
    expect(await closed).toBe(4003);
  });

  it('hands the bytes sent right behind the handshake to the WebSocket (the upstream gets them first)', async () => {
    const id = nextId();
    const early = clientFrame(1, Buffer.from('early bird'));
    const { sock, head } = await rawHandshake(`/echo/e?id=${id}`, early);
    expect(head).toMatch(/^HTTP\/1\.1 101 /);
    expect(head.toLowerCase()).toContain('sec-websocket-accept: ');
    const s = await upstreamConn(id);
    await until(() => s.messages.length >= 1, 5000, 'the early message at the upstream');
    expect(s.messages[0]!.data.toString()).toBe('early bird');
    sock.destroy();
    expect((await s.closed).code).toBe(1001);
  });

  it('keeps the connection for HTTP after an upgrade answered with an error (keep-alive, next request parsed)', async () => {
    // No route: 404 as JSON, then a pipelined plain request on the same connection.
    const next = 'GET /plain/after HTTP/1.1\r\nHost: t\r\n\r\n';
    const { sock, head, rest } = await rawHandshake('/nowhere', Buffer.from(next));
    expect(head).toMatch(/^HTTP\/1\.1 404 /);
    await until(() => rest().includes('{"plain":true'), 5000, 'the pipelined request\'s answer');
    expect(rest().toString()).toMatch(/HTTP\/1\.1 200 OK/);
    sock.destroy();
  });

  it('leaves a WebSocket to the hub: the server\'s idle and header timeouts no longer apply to it', async () => {
    const ws = await new Promise<WebSocket>((resolve, reject) => {
      const w = new WebSocket(`ws://127.0.0.1:${nodeGw.port}/echo/quiet?id=${nextId()}`);
      w.on('open', () => resolve(w));
      w.on('error', reject);
    });
    let closed = false;
    ws.on('close', () => { closed = true; });
    // server.timeouts (500 ms) plus two of the server's 1 s timeout sweeps, silent.
    await new Promise((r) => setTimeout(r, 2_600));
    expect(closed).toBe(false);
    const echo = new Promise<string>((r) => ws.once('message', (d) => r(d.toString())));
    ws.send('still open');
    expect(await echo).toBe('still open');
    ws.close();
  });
});

/**
 * Bun.serve proxies WebSockets through the same tunnel (bun-websocket.ts): a
 * config with WebSocket routes serves HTTP, an upgrade round-trips, and a
 * route with `websocket: false` still proxies it as plain HTTP.
 */
describe('the bun backend', () => {
  let other: Gateway;
  beforeAll(async () => {
    other = await startGateway(baseConfig({
      server: { workers: 1 },
      upstreams: { up: { targets: [`http://127.0.0.1:${upPort}`] } },
      routes: [
        { id: 'echo', path: '/echo/*', upstream: 'up', websocket: { maxMessageBytes: 4096 } },
        { id: 'plain', path: '/plain/*', upstream: 'up', websocket: false },
      ],
      // Bun's own server whatever TURNPIKE_SERVER__BACKEND says for the rest of the file.
    }), { runtime: 'bun', env: { TURNPIKE_SERVER__BACKEND: 'auto' } });
  }, 60_000);
  afterAll(async () => {
    await other?.stop();
  });

  it('serves HTTP, proxies a WebSocket (a round trip, the upstream sees the path and query), and plain HTTP where websocket: false', async () => {
    const r = await fetch(`http://127.0.0.1:${other.port}/echo/x`);
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ plain: true, upgrade: null });
    const id = nextId();
    const echoed = await new Promise<string>((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${other.port}/echo/x?id=${id}`);
      ws.on('open', () => ws.send('hi'));
      ws.on('message', (d: Buffer) => {
        resolve(d.toString());
        ws.close(1000);
      });
      ws.on('unexpected-response', (_q, res) => reject(new Error(`upgrade answered ${res.statusCode}`)));
      ws.on('error', reject);
    });
    expect(echoed).toBe('hi');
    expect(seen.get(id)?.url).toBe(`/echo/x?id=${id}`);
    const p = await new Promise<number>((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${other.port}/plain/x`);
      ws.on('unexpected-response', (_q, res) => resolve(res.statusCode!));
      ws.on('error', () => {});
    });
    expect(p).toBe(200);
  });
});
