/**
 * An open WebSocket does not outlive its credential (README, WebSockets):
 * a tunnel opened with an API key is closed when the key is revoked, its
 * consumer suspended, or the key expires (expiresAt, or a rotated key's
 * grace end), and when a grant change refuses its route; the client gets
 * Close 1008 with a short reason (never the key), the upstream 1001.
 * Invalidations that do not refuse it (a rename, a new key, an unrelated
 * grant or group) leave it open: the key is asked again, once per distinct
 * key (turnpike_identity_lookups_total counts it), never closed blindly.
 *
 * Real gateway processes (uWS, the node backend, Bun), a SQLite store in a
 * temporary directory, consumers and keys made and changed through the
 * admin API, real `ws` clients and a `ws` echo upstream that records how
 * each of its connections was closed.
 */
import http from 'node:http';
import net from 'node:net';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { sampleValue, scrape } from '../helpers/metrics.js';

const ADMIN_TOKEN = 'ws-credentials-admin-token-0123456789ab';
/** The hub's sweep (websocket/tunnel.ts SWEEP_INTERVAL_MS): expiry is seen at most this late. */
const SWEEP_MS = 250;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** How the upstream's side of connection `id` (the query's id) was closed: code and reason, once it was. */
const upClosed = new Map<string, { code: number; reason: string }>();
let upServer: http.Server;
let wss: WebSocketServer;
let upPort = 0;
let counter = 0;
const nextId = () => `c${++counter}`;

beforeAll(async () => {
  upServer = http.createServer((_req, res) => res.end('plain'));
  wss = new WebSocketServer({ noServer: true });
  upServer.on('upgrade', (req, socket, head) => {
    const id = new URL(req.url!, 'http://x').searchParams.get('id') ?? 'none';
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('error', () => {});
      ws.on('message', (data: Buffer, binary: boolean) => ws.send(data, { binary }));
      ws.on('close', (code: number, reason: Buffer) => upClosed.set(id, { code, reason: reason.toString() }));
    });
  });
  await new Promise<void>((r) => upServer.listen(0, '127.0.0.1', () => r()));
  upPort = (upServer.address() as net.AddressInfo).port;
});

afterAll(async () => {
  for (const c of wss?.clients ?? []) c.terminate();
  wss?.close();
  upServer?.close();
});

/** An open client and how it ends: `closed` resolves with the code, reason and Date.now() of its close. */
interface Tunnel {
  id: string;
  ws: WebSocket;
  closed: Promise<{ code: number; reason: string; at: number }>;
  isOpen(): boolean;
}

function open(port: number, path: string, key: string): Promise<Tunnel> {
  const id = nextId();
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${path}?id=${id}`, { headers: { authorization: `Bearer ${key}` } });
    let isOpen = false;
    const closed = new Promise<{ code: number; reason: string; at: number }>((r) => {
      ws.on('close', (code: number, reason: Buffer) => {
        isOpen = false;
        r({ code, reason: reason.toString(), at: Date.now() });
      });
    });
    ws.on('unexpected-response', (_req, res) => reject(new Error(`refused ${res.statusCode}`)));
    ws.on('error', reject);
    ws.on('open', () => {
      isOpen = true;
      resolve({ id, ws, closed, isOpen: () => isOpen });
    });
  });
}

/** One echo round trip: the tunnel works both ways. */
function echo(t: Tunnel, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no echo on ${t.id}`)), 5000);
    t.ws.once('message', (d: Buffer) => { clearTimeout(timer); resolve(d.toString()); });
    t.ws.once('close', () => { clearTimeout(timer); reject(new Error(`${t.id} closed before the echo`)); });
    t.ws.send(text);
  });
}

/** Resolves with `p`'s value, or rejects after `ms`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([p, sleep(ms).then(() => { throw new Error(`${what}: not within ${ms} ms`); })]);
}

async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await sleep(20);
  }
}

/** Closes clients (1000) and waits until the gateway let them go (the upstream's side closed). */
async function closeAll(...ts: Tunnel[]): Promise<void> {
  for (const t of ts) if (t.isOpen()) t.ws.close(1000);
  await Promise.all(ts.map((t) => within(t.closed, 5000, `close of ${t.id}`)));
  await until(() => ts.every((t) => upClosed.has(t.id)), 5000, 'the upstream sides closed');
}

/** The upstream side of `t` closed 1001 (the gateway's Close), within `ms`. */
async function upstreamGot1001(t: Tunnel, ms = 2000): Promise<void> {
  await until(() => upClosed.has(t.id), ms, `the upstream side of ${t.id} closed`);
  expect(upClosed.get(t.id)!.code).toBe(1001);
}

const BACKENDS = [
  { name: 'uWS', runtime: 'node' as const, backend: 'uws' },
  { name: 'node', runtime: 'node' as const, backend: 'node' },
  { name: 'Bun', runtime: 'bun' as const, backend: 'auto' },
];

for (const b of BACKENDS) {
  describe(`WebSockets close when their API key stops working (${b.name} backend)`, () => {
    let gw: Gateway;

    async function admin(method: string, path: string, body?: unknown): Promise<any> {
      const r = await fetch(`http://127.0.0.1:${gw.adminPort}${path}`, {
        method,
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await r.text();
      if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${text}`);
      return text === '' ? null : JSON.parse(text);
    }

    /** A consumer with one key (`key` fields added to the key's). */
    async function consumer(name: string, key: Record<string, unknown> = {}): Promise<{ consumerId: string; keyId: string; key: string }> {
      const c = await admin('POST', '/admin/consumers', { name, keys: [{ name: 'k', ...key }] });
      return { consumerId: c.consumer.id, keyId: c.keys[0].id, key: c.keys[0].key };
    }

    async function metric(series: string): Promise<number> {
      return sampleValue(await scrape(gw.adminPort!), series) ?? 0;
    }
    const found = () => metric('turnpike_identity_lookups_total{result="found"}');

    beforeAll(async () => {
      const dir = mkdtempSync(join(tmpdir(), 'tp-ws-cred-'));
      gw = await startGateway(baseConfig({
        admin: { enabled: true, port: 0 },
        store: { path: join(dir, 'id.db') },
        identity: { keys: { sources: ['authorization'] } },
        log: { access: { enabled: true, destination: 'stdout', fields: ['request_id', 'status', 'route', 'error', 'consumer'] } },
        upstreams: { up: { targets: [`http://127.0.0.1:${upPort}`] } },
        routes: [
          // No pings: a test's tunnel lives only by the key.
          { id: 'ws', path: '/ws/*', upstream: 'up', auth: {}, websocket: { pingIntervalMs: 0 } },
          { id: 'granted', path: '/granted/*', upstream: 'up', auth: { grants: 'required' }, websocket: { pingIntervalMs: 0 } },
        ],
      }), { runtime: b.runtime, cwd: dir, env: { TURNPIKE_ADMIN_TOKEN: ADMIN_TOKEN, TURNPIKE_SERVER__BACKEND: b.backend } });
    }, 30_000);

    afterAll(async () => {
      await gw?.stop();
    });

    it('revoking a key closes its open WebSocket with 1008 within 1 s (the upstream gets 1001); another key\'s stays open', async () => {
      const alice = await consumer('alice');
      const bob = await consumer('bob');
      const a = await open(gw.port, '/ws/x', alice.key);
      const a2 = await open(gw.port, '/ws/x', alice.key);
      const bt = await open(gw.port, '/ws/x', bob.key);
      expect(await echo(a, 'one')).toBe('one');
      const hitsBefore = await metric('turnpike_websocket_limit_hits_total{route="ws",limit="credential"}');
      const closesBefore = await metric('turnpike_websocket_closes_total{route="ws",code="1008"}');
      const t0 = Date.now();
      await admin('POST', `/admin/keys/${alice.keyId}/revoke`);
      for (const t of [a, a2]) {
        const c = await within(t.closed, 1000 + 500, 'the revoked key\'s tunnel closed');
        expect(c.code).toBe(1008);
        expect(c.reason).toBe('credential revoked');
        expect(c.reason).not.toContain(alice.key);
        expect(c.at - t0).toBeLessThan(1000);
        await upstreamGot1001(t);
      }
      expect(upClosed.get(a.id)!.reason).not.toContain(alice.key);
      // Bob's tunnel is untouched.
      await sleep(300);
      expect(bt.isOpen()).toBe(true);
      expect(await echo(bt, 'still here')).toBe('still here');
      await until(async () => (await metric('turnpike_websocket_limit_hits_total{route="ws",limit="credential"}')) - hitsBefore === 2, 3000, 'two credential limit hits');
      expect(await metric('turnpike_websocket_closes_total{route="ws",code="1008"}') - closesBefore).toBe(2);
      // The gateway's log never names the key.
      expect(gw.logs.join('\n')).not.toContain(alice.key);
      await closeAll(bt);
    });

    it('suspending the consumer closes its WebSocket with 1008', async () => {
      const carol = await consumer('carol');
      const t = await open(gw.port, '/ws/x', carol.key);
      expect(await echo(t, 'hi')).toBe('hi');
      await admin('PATCH', `/admin/consumers/${carol.consumerId}`, { status: 'suspended' });
      const c = await within(t.closed, 1500, 'the suspended consumer\'s tunnel closed');
      expect([c.code, c.reason]).toEqual([1008, 'credential revoked']);
      await upstreamGot1001(t);
    });

    it('a key with expiresAt closes 1008 at its expiry, not before (and within expiry + 1 s)', async () => {
      const expiresAt = Date.now() + 1500;
      const dave = await consumer('dave', { expiresAt });
      const t = await open(gw.port, '/ws/x', dave.key);
      expect(Date.now()).toBeLessThan(expiresAt - SWEEP_MS); // opened well before the expiry, or the test proves nothing
      expect(await echo(t, 'hi')).toBe('hi');
      const c = await within(t.closed, 4000, 'the expired key\'s tunnel closed');
      expect([c.code, c.reason]).toEqual([1008, 'credential expired']);
      expect(c.at).toBeGreaterThanOrEqual(expiresAt - SWEEP_MS);
      expect(c.at).toBeLessThanOrEqual(expiresAt + 1000);
      await upstreamGot1001(t);
    });

    it('a rotated key\'s tunnel closes at the end of its grace (the re-check takes the new validity end)', async () => {
      const erin = await consumer('erin');
      const t = await open(gw.port, '/ws/x', erin.key);
      const rotated = await admin('POST', `/admin/keys/${erin.keyId}/rotate`, { graceMs: 1500 });
      const graceUntil = Date.parse(rotated.old.graceUntil);
      expect(Number.isFinite(graceUntil)).toBe(true);
      // Still open during the grace: the rotation is a change, not a revocation.
      await sleep(500);
      expect(t.isOpen()).toBe(true);
      expect(await echo(t, 'in grace')).toBe('in grace');
      const c = await within(t.closed, 4000, 'the rotated key\'s tunnel closed');
      expect([c.code, c.reason]).toEqual([1008, 'credential expired']);
      expect(c.at).toBeGreaterThanOrEqual(graceUntil - SWEEP_MS);
      expect(c.at).toBeLessThanOrEqual(graceUntil + 1000);
      // The new key opens a tunnel.
      const n = await open(gw.port, '/ws/x', rotated.key);
      expect(await echo(n, 'new')).toBe('new');
      await closeAll(n);
    });

    it('a benign key change (rename, a new key, a new consumer) is re-checked once per key and leaves the tunnel open', async () => {
      const frank = await consumer('frank');
      const t1 = await open(gw.port, '/ws/x', frank.key);
      const t2 = await open(gw.port, '/ws/x', frank.key);
      const before = await found();
      await admin('PATCH', `/admin/keys/${frank.keyId}`, { name: 'renamed' });
      // The rename names frank's key: it is asked again (once, for two tunnels), and still admitted.
      await until(async () => (await found()) - before >= 1, 3000, 'frank\'s key asked again');
      await admin('POST', `/admin/consumers/${frank.consumerId}/keys`, { name: 'second' });
      await admin('POST', '/admin/consumers', { name: 'someone else', keys: [{ name: 'x' }] });
      await sleep(700);
      expect(await found() - before).toBe(1);
      for (const t of [t1, t2]) {
        expect(t.isOpen()).toBe(true);
        expect(await echo(t, 'ok')).toBe('ok');
      }
      await closeAll(t1, t2);
    });

    it('grant and group changes re-check every tunnel once per key: unrelated ones leave it open, removing its grant closes it', async () => {
      const gina = await consumer('gina');
      const grant = await admin('POST', '/admin/grants', { subject: { kind: 'consumer', id: gina.consumerId }, routeId: 'granted' });
      const hank = await consumer('hank');
      const g1 = await open(gw.port, '/granted/x', gina.key);
      const g2 = await open(gw.port, '/granted/x', gina.key);
      const h1 = await open(gw.port, '/ws/x', hank.key);
      const before = await found();
      // Unrelated: a group, a grant to someone else (both invalidate every cached key).
      await admin('POST', '/admin/groups', { name: 'partners' });
      await admin('POST', '/admin/grants', { subject: { kind: 'consumer', id: hank.consumerId }, routeId: 'granted' });
      // Two invalidations of everything, two distinct keys open: at most one lookup per key and invalidation.
      await until(async () => (await found()) - before >= 2, 3000, 'the open keys asked again');
      await sleep(500);
      const asked = await found() - before;
      expect(asked).toBeGreaterThanOrEqual(2);
      expect(asked).toBeLessThanOrEqual(4);
      for (const t of [g1, g2, h1]) {
        expect(t.isOpen()).toBe(true);
        expect(await echo(t, 'ok')).toBe('ok');
      }
      // gina's grant goes: her tunnels on the granted route now get what a new upgrade would (refused): closed.
      await admin('DELETE', `/admin/grants/${grant.id}`);
      for (const t of [g1, g2]) {
        const c = await within(t.closed, 1500, 'the ungranted tunnel closed');
        expect([c.code, c.reason]).toEqual([1008, 'credential not allowed']);
        await upstreamGot1001(t);
      }
      await sleep(300);
      expect(h1.isOpen()).toBe(true);
      expect(await echo(h1, 'ok')).toBe('ok');
      await closeAll(h1);
    });

    it('many tunnels: a grant change re-checks each distinct key once, and all stay open', async () => {
      const keys = await Promise.all(Array.from({ length: 30 }, (_, i) => consumer(`many-${i}`)));
      const ts: Tunnel[] = [];
      for (const k of keys) ts.push(await open(gw.port, '/ws/x', k.key), await open(gw.port, '/ws/x', k.key));
      const before = await found();
      await admin('POST', '/admin/groups', { name: 'many' });
      await until(async () => (await found()) - before >= keys.length, 5000, 'every open key asked again');
      await sleep(500);
      expect(await found() - before).toBe(keys.length);
      expect(ts.every((t) => t.isOpen())).toBe(true);
      expect(await echo(ts[ts.length - 1]!, 'ok')).toBe('ok');
      await closeAll(...ts);
    }, 30_000);
  });
}
