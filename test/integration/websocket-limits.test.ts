/**
 * WebSocket metrics, status, maxConnectionsPerKey, reload drain and the
 * drop action (issue 14, second part) through a real gateway process with
 * two worker threads: real `ws` clients, a real `ws` upstream, 127.0.0.1 and
 * ephemeral ports. Counts are read from the admin /metrics and
 * /admin/status (summed over both workers); every wait is for an event or
 * polls with a deadline.
 */
import http from 'node:http';
import net from 'node:net';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { sampleValue, scrape } from '../helpers/metrics.js';

const ADMIN_TOKEN = 'ws-limits-admin-token-0123456789abcdef';
const PER_KEY = 3;

let upServer: http.Server;
let wss: WebSocketServer;
let upPort = 0;
let gw: Gateway;
const identityDir = mkdtempSync(join(tmpdir(), 'tp-wsl-id-'));
/** API keys of two consumers. */
const keys: string[] = [];
/** Upstream sockets by the `id` query parameter of their URL, with their close. */
const upstream = new Map<string, { ws: WebSocket; closed: Promise<{ code: number; reason: string }> }>();

function startUpstream(): Promise<void> {
  upServer = http.createServer((_req, res) => res.end('plain'));
  wss = new WebSocketServer({ noServer: true });
  upServer.on('upgrade', (req, socket, head) => {
    if (req.url!.includes('/refuse')) {
      socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const id = new URL(req.url!, 'http://x').searchParams.get('id') ?? 'none';
      upstream.set(id, { ws, closed: new Promise((r) => ws.on('close', (code, reason) => r({ code, reason: reason.toString() }))) });
      ws.on('error', () => {});
      ws.on('message', (data: Buffer, binary: boolean) => ws.send(data, { binary }));
    });
  });
  return new Promise((r) => upServer.listen(0, '127.0.0.1', () => {
    upPort = (upServer.address() as net.AddressInfo).port;
    r();
  }));
}

function routes(changed: boolean): Record<string, unknown>[] {
  const quiet = { idleTimeoutMs: 0, pingIntervalMs: 0 };
  return [
    { id: 'm', path: '/m/*', upstream: 'up', websocket: quiet },
    { id: 'perkey', path: '/perkey/*', upstream: 'up', websocket: { ...quiet, maxConnectionsPerKey: PER_KEY } },
    { id: 'perconsumer', path: '/perconsumer/*', upstream: 'up', auth: {}, websocket: { ...quiet, maxConnectionsPerKey: 1 } },
    { id: 'drop', path: '/drop/*', upstream: 'up', websocket: { ...quiet, messagesPerSecond: 2, messagesPerSecondAction: 'drop' } },
    { id: 'keep', path: '/keep/*', upstream: 'up', websocket: { ...quiet, drainMs: 0 } },
    // The reload changes this one (maxMessageBytes) and removes `gone`.
    { id: 'change', path: '/change/*', upstream: 'up', websocket: { ...quiet, drainMs: 400, maxMessageBytes: changed ? 2048 : 1024 } },
    ...(changed ? [] : [{ id: 'gone', path: '/gone/*', upstream: 'up', websocket: { ...quiet, drainMs: 0 } }]),
  ];
}

function config(changed: boolean): Record<string, any> {
  return baseConfig({
    // The test client is a trusted proxy: X-Forwarded-For names the client a per-key limit counts (as rate limits by ip).
    server: { workers: 2, trustedProxies: ['127.0.0.1/32'] },
    admin: { enabled: true, port: 0 },
    store: { path: join(identityDir, 'id.db') },
    upstreams: { up: { targets: [`http://127.0.0.1:${upPort}`] } },
    routes: routes(changed),
  });
}

interface Client {
  ws: WebSocket;
  /** The worker that took the upgrade (from the request id: `<random>-<worker>-<n>`). */
  worker: string;
  closed: Promise<{ code: number; reason: string }>;
  next(): Promise<string>;
}

class Refused extends Error {
  constructor(readonly status: number, readonly body: string, readonly worker: string) {
    super(`upgrade refused: ${status} ${body}`);
  }
}

const workerOf = (rid: string | string[] | undefined) => String(rid ?? '').split('-')[1] ?? '?';

function open(path: string, headers: Record<string, string> = {}): Promise<Client> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${gw.port}${path}`, { headers });
    const inbox: string[] = [];
    const waiters: ((m: string) => void)[] = [];
    let worker = '?';
    ws.on('message', (d: Buffer) => {
      const w = waiters.shift();
      if (w) w(d.toString());
      else inbox.push(d.toString());
    });
    const closed = new Promise<{ code: number; reason: string }>((r) => ws.on('close', (code, reason) => r({ code, reason: reason.toString() })));
    ws.on('upgrade', (res) => { worker = workerOf(res.headers['x-request-id']); });
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => reject(new Refused(res.statusCode!, body, workerOf(res.headers['x-request-id']))));
    });
    ws.on('error', (err) => reject(err));
    ws.on('open', () => resolve({
      ws, worker, closed,
      next: () => new Promise((r) => { if (inbox.length > 0) r(inbox.shift()!); else waiters.push(r); }),
    }));
  });
}

async function refusal(path: string, headers: Record<string, string> = {}): Promise<Refused> {
  try {
    const c = await open(path, headers);
    c.ws.terminate();
  } catch (err) {
    if (err instanceof Refused) return err;
    throw err;
  }
  throw new Error(`the upgrade to ${path} was accepted`);
}

async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function metric(series: string): Promise<number> {
  return sampleValue(await scrape(gw.adminPort!), series) ?? 0;
}

async function status(): Promise<any> {
  const r = await fetch(`http://127.0.0.1:${gw.adminPort}/admin/status`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  return r.json();
}

beforeAll(async () => {
  await startUpstream();
  gw = await startGateway(config(false), { env: { TURNPIKE_ADMIN_TOKEN: ADMIN_TOKEN, TURNPIKE_TEST_HOOKS: '1' }, cwd: identityDir });
  for (const name of ['c1', 'c2']) {
    const r = await fetch(`http://127.0.0.1:${gw.adminPort}/admin/consumers`, {
      method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name, keys: [{ name: 'k' }] }),
    });
    const c = await r.json();
    if (r.status >= 300) throw new Error(`setup: ${r.status} ${JSON.stringify(c)}`);
    keys.push(c.keys[0].key);
  }
}, 60_000);

afterAll(async () => {
  await gw?.stop();
  for (const u of upstream.values()) u.ws.terminate();
  wss?.close();
  upServer?.close();
});

describe('websocket metrics, limits and reload (uws backend, 2 workers)', () => {
  it('counts messages and bytes each way, open connections and closes by code; /admin/status shows the open ones', async () => {
    const a = await open('/m/x?id=m-a');
    const b = await open('/m/x?id=m-b');
    expect(await metric('turnpike_websocket_connections_open{route="m"}')).toBe(2);
    const st = await status();
    expect(st.websockets.routes.m).toBe(2);
    expect(st.websockets.open).toBeGreaterThanOrEqual(2);
    for (const text of ['one', 'two', 'three']) {
      a.ws.send(text);
      expect(await a.next()).toBe(text);
    }
    b.ws.send(Buffer.alloc(100), { binary: true });
    await b.next();
    a.ws.close(1000);
    b.ws.close(4001, 'app');
    await Promise.all([a.closed, b.closed]);
    await until(async () => (await metric('turnpike_websocket_connections_open{route="m"}')) === 0, 5000, 'the open gauge back to 0');
    const text = await scrape(gw.adminPort!);
    expect(sampleValue(text, 'turnpike_websocket_messages_total{route="m",direction="client_to_upstream"}')).toBe(4);
    expect(sampleValue(text, 'turnpike_websocket_messages_total{route="m",direction="upstream_to_client"}')).toBe(4);
    expect(sampleValue(text, 'turnpike_websocket_bytes_total{route="m",direction="client_to_upstream"}')).toBe(3 + 3 + 5 + 100);
    expect(sampleValue(text, 'turnpike_websocket_bytes_total{route="m",direction="upstream_to_client"}')).toBe(3 + 3 + 5 + 100);
    expect(sampleValue(text, 'turnpike_websocket_closes_total{route="m",code="1000"}')).toBe(1);
    expect(sampleValue(text, 'turnpike_websocket_closes_total{route="m",code="other"}')).toBe(1);
    expect((await status()).websockets.routes.m).toBeUndefined();
  });

  it('counts upgrade failures by reason: the gateway error code, or upstream_refused', async () => {
    const before = await scrape(gw.adminPort!);
    const v = (t: string, reason: string) => sampleValue(t, `turnpike_websocket_upgrade_failures_total{reason="${reason}"}`) ?? 0;
    expect((await refusal('/nowhere')).status).toBe(404);
    expect((await refusal('/m/refuse')).status).toBe(403);
    expect((await refusal('/m/refuse')).status).toBe(403);
    const after = await scrape(gw.adminPort!);
    expect(v(after, 'route_not_found') - v(before, 'route_not_found')).toBe(1);
    expect(v(after, 'upstream_refused') - v(before, 'upstream_refused')).toBe(2);
  });

  it(`refuses the upgrade past maxConnectionsPerKey (${PER_KEY}) with 429, counted across both workers, and admits again after a close`, async () => {
    const held: Client[] = [];
    for (let i = 0; i < PER_KEY; i++) held.push(await open(`/perkey/x?id=pk-${i}`));
    const perWorker = new Map<string, number>();
    for (const c of held) perWorker.set(c.worker, (perWorker.get(c.worker) ?? 0) + 1);
    const hitsBefore = await metric('turnpike_websocket_limit_hits_total{route="perkey",limit="max_connections_per_key"}');
    // Refusals until one comes from a worker holding fewer than the limit itself: only the shared count refuses it there.
    let crossWorker = false;
    let refusals = 0;
    for (let i = 0; i < 30 && !crossWorker; i++) {
      const r = await refusal(`/perkey/x?id=pk-refused-${i}`);
      refusals++;
      expect(r.status).toBe(429);
      expect(JSON.parse(r.body).error.code).toBe('too_many_websocket_connections');
      if ((perWorker.get(r.worker) ?? 0) < PER_KEY) crossWorker = true;
    }
    expect(crossWorker).toBe(true);
    expect(upstream.has('pk-refused-0')).toBe(false); // refused before the upstream was contacted
    expect(await metric('turnpike_websocket_limit_hits_total{route="perkey",limit="max_connections_per_key"}') - hitsBefore).toBe(refusals);
    // One closes: one place frees (the count goes down when both sides are closed).
    held[0]!.ws.close();
    await held[0]!.closed;
    let again: Client | null = null;
    await until(async () => {
      try {
        again = await open('/perkey/x?id=pk-again');
        return true;
      } catch (err) {
        if (err instanceof Refused && err.status === 429) return false;
        throw err;
      }
    }, 5000, 'a place after a close');
    held[0] = again!;
    expect((await refusal('/perkey/x?id=pk-refused-last')).status).toBe(429);
    for (const c of held) c.ws.close();
    await Promise.all(held.map((c) => c.closed));
    // All gone: the key holds nothing, PER_KEY can open again.
    await until(async () => (await metric('turnpike_websocket_connections_open{route="perkey"}')) === 0, 5000, 'perkey connections closed');
    const fresh: Client[] = [];
    for (let i = 0; i < PER_KEY; i++) fresh.push(await open(`/perkey/x?id=pk-fresh-${i}`));
    for (const c of fresh) c.ws.close();
    await Promise.all(fresh.map((c) => c.closed));
  });

  it('behind a trusted proxy, counts per X-Forwarded-For client', async () => {
    const a = { 'x-forwarded-for': '10.9.0.1' };
    const b = { 'x-forwarded-for': '10.9.0.2' };
    const held: Client[] = [];
    for (let i = 0; i < PER_KEY; i++) held.push(await open(`/perkey/x?id=xff-a-${i}`, a));
    expect((await refusal('/perkey/x?id=xff-a-over', a)).status).toBe(429);
    held.push(await open('/perkey/x?id=xff-b-0', b)); // another client behind the same proxy
    held.push(await open('/perkey/x?id=xff-peer-0')); // the proxy's own address
    for (const c of held) c.ws.close();
    await Promise.all(held.map((c) => c.closed));
  });

  it('with an API key, counts per consumer, whatever the client address', async () => {
    const as = (k: number, ip: string) => ({ authorization: `Bearer ${keys[k]}`, 'x-forwarded-for': ip });
    const first = await open('/perconsumer/x?id=pc-1', as(0, '10.8.0.1'));
    // The same consumer from another address: refused; another consumer from the first address: admitted.
    const r = await refusal('/perconsumer/x?id=pc-2', as(0, '10.8.0.2'));
    expect(r.status).toBe(429);
    expect(JSON.parse(r.body).error.code).toBe('too_many_websocket_connections');
    const other = await open('/perconsumer/x?id=pc-3', as(1, '10.8.0.1'));
    first.ws.close();
    other.ws.close();
    await Promise.all([first.closed, other.closed]);
  });

  it('drop mode: messages over messagesPerSecond are not relayed, the connection stays, each is a limit hit', async () => {
    const hitsBefore = await metric('turnpike_websocket_limit_hits_total{route="drop",limit="messages_per_second"}');
    const relayedBefore = await metric('turnpike_websocket_messages_total{route="drop",direction="client_to_upstream"}');
    const c = await open('/drop/x?id=drop-1');
    const got: string[] = [];
    c.ws.on('message', (d: Buffer) => got.push(d.toString()));
    // Five messages in one burst (well inside one second): two pass, three are dropped.
    for (let i = 1; i <= 5; i++) c.ws.send(`m${i}`);
    await until(async () => (await metric('turnpike_websocket_limit_hits_total{route="drop",limit="messages_per_second"}')) - hitsBefore === 3, 5000, 'three limit hits');
    await until(() => got.length >= 2, 5000, 'the two relayed messages echoed');
    const relayed = (await metric('turnpike_websocket_messages_total{route="drop",direction="client_to_upstream"}')) - relayedBefore;
    // Still open, and relays again once a new second begins.
    expect(c.ws.readyState).toBe(WebSocket.OPEN);
    await new Promise((r) => setTimeout(r, 1100));
    c.ws.send('later');
    await until(() => got.includes('later'), 5000, 'a message in the next second relayed');
    expect(got.slice(0, 2)).toEqual(['m1', 'm2']);
    expect(relayed).toBe(2);
    c.ws.close();
    expect((await c.closed).code).toBe(1005);
  });

  it('reload: an unchanged route keeps its sockets (and relays); a changed one closes 1001 after drainMs, a removed one (drainMs 0) at once', async () => {
    const keep = await open('/keep/x?id=keep-1');
    const change = await open('/change/x?id=change-1');
    const gone = await open('/gone/x?id=gone-1');
    const goneUp = upstream.get('gone-1')!;
    const changeUp = upstream.get('change-1')!;
    let changeClosedAt = 0;
    void change.closed.then(() => { changeClosedAt = Date.now(); });
    writeFileSync(gw.configFile, JSON.stringify(config(true), null, 2));
    const reloadedAt = Date.now();
    const r = await fetch(`http://127.0.0.1:${gw.adminPort}/admin/config/reload`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(r.status).toBe(200);
    const body = await r.json();
    expect(body.summary).toEqual(['- route gone', '~ route change']);
    // Removed with drainMs 0: 1001 both ways at once.
    expect(await gone.closed).toEqual({ code: 1001, reason: 'route changed by a reload' });
    expect((await goneUp.closed).code).toBe(1001);
    // Changed, drainMs 400: still open right after the reload, relaying; then 1001 both ways.
    expect(changeClosedAt).toBe(0);
    change.ws.send('still here');
    expect(await change.next()).toBe('still here');
    expect(await change.closed).toEqual({ code: 1001, reason: 'route changed by a reload' });
    expect((await changeUp.closed).code).toBe(1001);
    expect(changeClosedAt - reloadedAt).toBeGreaterThanOrEqual(400);
    // Unchanged: open, relaying both ways.
    expect(keep.ws.readyState).toBe(WebSocket.OPEN);
    keep.ws.send('after reload');
    expect(await keep.next()).toBe('after reload');
    expect(await metric('turnpike_websocket_closes_total{route="change",code="1001"}')).toBe(1);
    expect(await metric('turnpike_websocket_closes_total{route="gone",code="1001"}')).toBe(1);
    expect(await metric('turnpike_websocket_connections_open{route="keep"}')).toBe(1);
    keep.ws.close();
    await keep.closed;
  });
  // Last: it crashes a worker.
  it('a crashed worker\'s connections stop counting: the key gets its places back after the replacement starts', async () => {
    const k = { 'x-forwarded-for': '10.7.0.1' };
    let held: Client[] = [];
    // PER_KEY connections of one key, at least one of them on worker 0 (the one the test hook crashes).
    for (let attempt = 0; attempt < 20; attempt++) {
      held = [];
      for (let i = 0; i < PER_KEY; i++) held.push(await open(`/perkey/x?id=crash-${attempt}-${i}`, k));
      if (held.some((c) => c.worker === '0')) break;
      for (const c of held) c.ws.close();
      await Promise.all(held.map((c) => c.closed));
      await until(async () => (await metric('turnpike_websocket_connections_open{route="perkey"}')) === 0, 5000, 'perkey closed');
    }
    const onZero = held.filter((c) => c.worker === '0');
    expect(onZero.length).toBeGreaterThan(0);
    const survivors = held.length - onZero.length;
    const restartsBefore = await metric('turnpike_worker_restarts_total');
    gw.proc.kill('SIGUSR2'); // test hook: worker 0 throws
    await Promise.all(onZero.map((c) => c.closed));
    await until(async () => (await metric('turnpike_worker_restarts_total')) > restartsBefore, 10_000, 'worker 0 replaced');
    // The key holds `survivors` connections again: exactly PER_KEY - survivors more are admitted, then 429.
    const more: Client[] = [];
    await until(async () => {
      try {
        more.push(await open(`/perkey/x?id=crash-more-${more.length}`, k));
        return more.length === PER_KEY - survivors;
      } catch (err) {
        if (err instanceof Refused && (err.status === 429 || err.status === 503)) return false;
        throw err;
      }
    }, 10_000, 'places freed by the crash');
    expect((await refusal('/perkey/x?id=crash-over', k)).status).toBe(429);
    const alive = [...held.filter((c) => c.worker !== '0'), ...more];
    for (const c of alive) c.ws.close();
    await Promise.all(alive.map((c) => c.closed));
  }, 40_000);
});
