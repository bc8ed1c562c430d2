/**
 * routes[].websocket.maxConnectionsPerKey across gateway instances through
 * Redis (issue 14; workers/transport/websocket/cluster-count.ts): two real
 * gateway processes sharing a private redis-server, real `ws` clients, a
 * real `ws` upstream, 127.0.0.1 and ephemeral ports.
 *
 *  - the limit holds across the two instances (an instance holding fewer
 *    than the limit itself refuses: only the count in Redis refuses there),
 *    also past the lease (renewed);
 *  - a close on one instance frees a place on the other;
 *  - an instance killed with SIGKILL stops counting once its lease
 *    (perKeyLeaseMs, 2 s here) ends;
 *  - Redis killed: upgrades are still served, each instance holding the
 *    limit alone (the documented fallback), counted in the metrics;
 *  - Redis back: each instance writes its counts again and the limit is
 *    shared again.
 *
 * Each phase counts under its own key (X-Forwarded-For from a trusted
 * proxy). Every wait polls with a deadline; no duration is asserted.
 */
import http from 'node:http';
import net from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { sampleValue, scrape } from '../helpers/metrics.js';
import { startRedis, type PrivateRedis } from '../helpers/redis.js';
import { PK_ADMITTED, PK_REFUSED, clusterCounts, closeClusterCounts } from '../../workers/transport/websocket/cluster-count.js';

const LIMIT = 3;
const LEASE_MS = 2_000;

let redis: PrivateRedis;
let upServer: http.Server;
let wss: WebSocketServer;
let upPort = 0;
const gateways: Gateway[] = [];
const clients: WebSocket[] = [];

function startUpstream(): Promise<void> {
  upServer = http.createServer((_req, res) => res.end('plain'));
  wss = new WebSocketServer({ server: upServer });
  wss.on('connection', (ws) => {
    ws.on('error', () => {});
    ws.on('message', (data: Buffer, binary: boolean) => ws.send(data, { binary }));
  });
  return new Promise((r) => upServer.listen(0, '127.0.0.1', () => {
    upPort = (upServer.address() as net.AddressInfo).port;
    r();
  }));
}

function config(workers: number): Record<string, any> {
  return baseConfig({
    // The test client is a trusted proxy: X-Forwarded-For names the client the limit counts (one key per phase).
    server: { workers, trustedProxies: ['127.0.0.1/32'] },
    admin: { enabled: true, port: 0 },
    log: { access: { enabled: false } },
    redis: { url: redis.url, commandTimeoutMs: 300 },
    upstreams: { up: { targets: [`http://127.0.0.1:${upPort}`] } },
    routes: [{
      id: 'pk', path: '/pk/*', upstream: 'up',
      websocket: { maxConnectionsPerKey: LIMIT, perKeyLeaseMs: LEASE_MS, idleTimeoutMs: 0, pingIntervalMs: 0 },
    }],
  });
}

/**
 * B runs on Bun (its Bun.serve WebSockets, ioredis in a Bun worker) unless the run
 * picks a backend for every gateway (TURNPIKE_SERVER__BACKEND=node: both on it).
 */
const B_RUNTIME = process.env['TURNPIKE_SERVER__BACKEND'] === undefined ? 'bun' as const : 'node' as const;

async function start(workers: number, runtime: 'node' | 'bun' = 'node'): Promise<Gateway> {
  const g = await startGateway(config(workers), { runtime });
  gateways.push(g);
  return g;
}

interface Client {
  ws: WebSocket;
  closed: Promise<void>;
}

class Refused extends Error {
  constructor(readonly status: number, readonly body: string) {
    super(`upgrade refused: ${status} ${body}`);
  }
}

/** A WebSocket through `g` for client `who`; resolves once open (echo checked), rejects with Refused on a non-101. */
function open(g: Gateway, who: string): Promise<Client> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${g.port}/pk/x`, { headers: { 'x-forwarded-for': who } });
    clients.push(ws);
    const closed = new Promise<void>((r) => ws.once('close', () => r()));
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => reject(new Refused(res.statusCode!, body)));
    });
    ws.on('error', (err) => reject(err));
    ws.once('open', () => {
      ws.once('message', (d: Buffer) => (d.toString() === 'ping' ? resolve({ ws, closed }) : reject(new Error(`echo: ${d.toString()}`))));
      ws.send('ping');
    });
  });
}

/** The upgrade is refused: its status and JSON error code. */
async function refusal(g: Gateway, who: string): Promise<{ status: number; code: string }> {
  try {
    const c = await open(g, who);
    c.ws.terminate();
  } catch (err) {
    if (err instanceof Refused) return { status: err.status, code: JSON.parse(err.body).error.code };
    throw err;
  }
  throw new Error(`the upgrade for ${who} through :${g.port} was accepted`);
}

/** Opens once a place is free (429 until then), within `ms`. */
async function openWhenFree(g: Gateway, who: string, ms: number, what: string): Promise<Client> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      return await open(g, who);
    } catch (err) {
      if (!(err instanceof Refused) || err.status !== 429) throw err;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

async function until(cond: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function metric(g: Gateway, series: string): Promise<number | null> {
  return sampleValue(await scrape(g.adminPort!), series);
}

async function close(cs: Client[]): Promise<void> {
  for (const c of cs) c.ws.close();
  await Promise.all(cs.map((c) => c.closed));
}

/** Connections counted in Redis: the sum over every contributor field of every `tp:ws:{...}` hash. */
async function countedInRedis(): Promise<number> {
  const r = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
  try {
    await r.connect();
    let n = 0;
    for (const k of await r.keys('tp:ws:*')) {
      for (const v of Object.values(await r.hgetall(k))) n += Number(v.split(' ')[0]);
    }
    return n;
  } finally {
    r.disconnect();
  }
}

let a: Gateway;
let b: Gateway;

beforeAll(async () => {
  [redis] = await Promise.all([startRedis(), startUpstream()]);
  // Two instances: one with two worker threads (two contributors of its own), one with one (on Bun, see B_RUNTIME).
  [a, b] = await Promise.all([start(2), start(1, B_RUNTIME)]);
}, 30_000);

afterAll(async () => {
  for (const c of clients) c.terminate();
  await Promise.all(gateways.map((g) => (g.proc.exitCode === null && g.proc.signalCode === null ? g.stop() : Promise.resolve(null))));
  wss?.close();
  await new Promise((r) => upServer?.close(r));
  await redis?.stop();
});

// A test that failed midway leaves nothing counted for the next (its clients dropped, their counts given back).
afterEach(async () => {
  for (const c of clients.splice(0)) c.terminate();
  if (redis.running) await until(async () => (await countedInRedis()) === 0, 5_000, 'every count given back after the test');
}, 10_000);

describe('maxConnectionsPerKey across instances (Redis)', () => {
  it('holds the limit across two instances, and a close on one frees a place on the other', async () => {
    const who = '10.20.0.1';
    const onA = [await open(a, who), await open(a, who)];
    const onB = [await open(b, who)];
    // B holds 1 of its own: only the count in Redis (2 on A) refuses it.
    expect(await refusal(b, who)).toEqual({ status: 429, code: 'too_many_websocket_connections' });
    expect(await refusal(a, who)).toEqual({ status: 429, code: 'too_many_websocket_connections' });
    expect(await countedInRedis()).toBe(LIMIT);
    // Held past their lease: renewed (every third of it), they still count.
    await new Promise((r) => setTimeout(r, LEASE_MS * 1.5));
    expect(await refusal(b, who)).toEqual({ status: 429, code: 'too_many_websocket_connections' });
    expect(await countedInRedis()).toBe(LIMIT);
    // Another client is not affected.
    const other = await open(b, '10.20.0.2');
    // One closes on A: B gets its place (the release is one write; poll for it).
    onA[0]!.ws.close();
    await onA[0]!.closed;
    onB.push(await openWhenFree(b, who, 5_000, 'the place A freed, on B'));
    expect(await refusal(b, who)).toEqual({ status: 429, code: 'too_many_websocket_connections' });
    expect(await refusal(a, who)).toEqual({ status: 429, code: 'too_many_websocket_connections' });
    expect(await metric(b, 'turnpike_websocket_per_key_decisions_total{decided_by="redis"}')).toBeGreaterThanOrEqual(3);
    expect(await metric(a, 'turnpike_websocket_per_key_store_up')).toBe(1);
    await close([onA[1]!, ...onB, other]);
    await until(async () => (await countedInRedis()) === 0, 5_000, 'every count given back in Redis');
  });

  it('stops counting an instance killed with SIGKILL once its lease ends', async () => {
    const who = '10.20.0.3';
    const onA = [await open(a, who), await open(a, who)];
    const onB = [await open(b, who)];
    expect(await refusal(b, who)).toEqual({ status: 429, code: 'too_many_websocket_connections' });
    a.proc.kill('SIGKILL');
    await a.exited;
    await Promise.all(onA.map((c) => c.closed)); // the clients saw the connections die
    // A's 2 still count until their leases end (no instance can say it died): B admits within about perKeyLeaseMs.
    // (A's two worker threads renewed at different moments: their leases end up to a third of the lease apart.)
    onB.push(await openWhenFree(b, who, LEASE_MS * 4, 'the dead instance\'s first place, after its lease'));
    onB.push(await openWhenFree(b, who, LEASE_MS * 4, 'the dead instance\'s second place, after its lease'));
    expect(await refusal(b, who)).toEqual({ status: 429, code: 'too_many_websocket_connections' });
    await close(onB);
    a = await start(2); // a fresh instance for the next tests
  });

  it('keeps serving without Redis, each instance holding the limit alone; shares it again once Redis is back', async () => {
    const who = '10.20.0.4';
    const warm = await open(a, who); // A's store is connected (a store opens on first use)
    await close([warm]);
    await redis.kill();
    await until(async () => (await metric(a, 'turnpike_websocket_per_key_store_up')) === 0 && (await metric(b, 'turnpike_websocket_per_key_store_up')) === 0,
      5_000, 'store_up 0 on both instances');
    const fallbackBefore = (await metric(b, 'turnpike_websocket_per_key_decisions_total{decided_by="fallback"}')) ?? 0;
    // The documented fallback: each instance its own limit; past it, its own count refuses.
    const onA: Client[] = [];
    const onB: Client[] = [];
    for (let i = 0; i < LIMIT; i++) onA.push(await open(a, who));
    for (let i = 0; i < LIMIT; i++) onB.push(await open(b, who));
    expect(await refusal(a, who)).toEqual({ status: 429, code: 'too_many_websocket_connections' });
    expect(await refusal(b, who)).toEqual({ status: 429, code: 'too_many_websocket_connections' });
    expect(((await metric(b, 'turnpike_websocket_per_key_decisions_total{decided_by="fallback"}')) ?? 0) - fallbackBefore).toBe(LIMIT);
    expect(await metric(b, 'turnpike_websocket_per_key_decisions_total{decided_by="instance_at_limit"}')).toBeGreaterThanOrEqual(1);

    await redis.restart(); // empty: nothing was persisted
    await until(async () => (await metric(a, 'turnpike_websocket_per_key_store_up')) === 1 && (await metric(b, 'turnpike_websocket_per_key_store_up')) === 1,
      10_000, 'store_up 1 on both instances');
    // Each instance wrote its counts again: Redis knows all 6.
    await until(async () => (await countedInRedis()) === 2 * LIMIT, 5_000, 'both instances\' counts in Redis again');
    // Over the limit together: B, holding 3 itself, refuses by its own count; close 2 of A's and 2 of B's: 2 left in all.
    await close([onA[0]!, onA[1]!, onB[0]!, onB[1]!]);
    await until(async () => (await countedInRedis()) === 2, 5_000, 'the closes counted in Redis');
    // Shared again: one more place in all, on whichever instance takes it.
    onB.push(await open(b, who));
    expect(await refusal(a, who)).toEqual({ status: 429, code: 'too_many_websocket_connections' });
    expect(await refusal(b, who)).toEqual({ status: 429, code: 'too_many_websocket_connections' });
    await close([onA[2]!, onB[2]!, onB[3]!]);
    await until(async () => (await countedInRedis()) === 0, 5_000, 'every count given back');
  });

  it('one worker\'s store: concurrent admissions of one key, and a release while its admission is unanswered, leave Redis exact', async () => {
    // The store of this test process (as a worker's), against the same Redis: its writes assert absolute counts.
    const store = clusterCounts({
      url: redis.url, sentinels: null, name: null, cluster: null, keyPrefix: 'tp:', syncIntervalMs: 50, connectTimeoutMs: 2000, commandTimeoutMs: 1000,
    }, null);
    const decide = (limit: number) => new Promise<{ outcome: number; ticket: ReturnType<typeof store.acquire> }>((resolve) => {
      const w = { perKeyDecided: (outcome: number) => resolve({ outcome, ticket }) };
      const ticket = store.acquire('pk', 'a 10.30.0.1', 60_000, w); // a long lease: no renewal heals a wrong count here
      store.decide(ticket, limit);
    });
    // Five at once for two places: two admitted, three refused; Redis counts exactly the two.
    const all = await Promise.all([0, 1, 2, 3, 4].map(() => decide(2)));
    expect(all.filter((r) => r.outcome === PK_ADMITTED)).toHaveLength(2);
    expect(all.filter((r) => r.outcome === PK_REFUSED)).toHaveLength(3);
    expect(await countedInRedis()).toBe(2);
    // Given back while its admission is on its way: Redis ends with what is held.
    const w = { perKeyDecided: () => {} };
    const t = store.acquire('pk', 'a 10.30.0.1', 60_000, w);
    store.decide(t, 10);
    store.release(t);
    await until(async () => (await countedInRedis()) === 2, 2_000, 'the release during the admission settled');
    for (const r of all) store.release(r.ticket); // refused ones: no-ops
    await until(async () => (await countedInRedis()) === 0, 2_000, 'everything given back');
    closeClusterCounts();
  });
});
