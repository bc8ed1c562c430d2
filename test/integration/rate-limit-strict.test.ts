/**
 * Strict rate limits (`mode: strict`: one atomic Redis decision per request)
 * end to end: real gateway processes (uWS and Bun backends, 2 workers
 * each), private redis-servers that tests kill, stop and restart, a real
 * upstream, real clients on real sockets.
 *
 * - exact across processes: two Node gateways (and a Bun one) admit
 *   exactly burst + rate × t from one strict limit, not approximately;
 * - headers and 429 bodies are those of the same limit in memory, exactly,
 *   for every algorithm, and the decision really is taken in Redis;
 * - check all, then commit: a request refused by the strict limit gives its
 *   unit back to the in-memory limits; one refused in memory never reaches
 *   Redis;
 * - bodies: a POST is proxied intact after the decision (also one that
 *   waited for a timeout), chunked too; a refused small POST keeps the
 *   connection; HEAD;
 * - store errors: Redis killed (allow_local limits locally, deny answers 503
 *   with Retry-After, one log line per worker, no credentials), restarted
 *   (back to Redis), stopped (command timeout: no hang), a client that
 *   leaves while its decision is pending;
 * - the Redis connection exists only while the config has a strict limit.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { RawConnection, headerValues } from '../helpers/raw-http.js';
import { startRedis, type PrivateRedis } from '../helpers/redis.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { sampleValue, scrape } from '../helpers/metrics.js';

const { Redis } = createRequire(import.meta.url)('ioredis');

const agent = new Agent({ connections: 64, keepAliveTimeout: 10_000 });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const fresh = () => randomUUID().slice(0, 8);

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
  ms: number;
}

async function call(gw: Gateway, path: string, headers: Record<string, string> = {}, method = 'GET', body?: Buffer): Promise<Answer> {
  const t = performance.now();
  const r = await request(gw.url + path, { method: method as 'GET', headers, body, dispatcher: agent });
  const text = await r.body.text();
  const h: Record<string, string> = {};
  for (const [k, v] of Object.entries(r.headers)) h[k] = Array.isArray(v) ? v.join(', ') : String(v);
  return { status: r.statusCode, headers: h, body: text, ms: performance.now() - t };
}

/** The headers a rate limit writes, with the policy's name replaced (to compare two policies). */
function limitView(a: Answer, name: string): Record<string, string | number> {
  const out: Record<string, string | number> = { status: a.status };
  for (const k of ['ratelimit-policy', 'ratelimit', 'x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset', 'retry-after', 'content-type']) {
    if (a.headers[k] !== undefined) out[k] = a.headers[k]!.split(`"${name}"`).join('"P"');
  }
  if (a.status !== 200) {
    const rid = a.headers['x-request-id']!;
    out['body'] = a.body.split(rid).join('<rid>').split(`\\"${name}\\"`).join('\\"P\\"');
  }
  return out;
}

let up: Upstream;

beforeAll(async () => {
  // Echo with a digest of the body, so a test can tell a body arrived intact.
  up = await startUpstream((req, res, body) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ method: req.method, url: req.url, length: body.length, sha256: createHash('sha256').update(body).digest('hex') }));
  });
});

afterAll(async () => {
  await up.close();
  await agent.close();
});

/** Redis keys of strict limits under `prefix`. */
async function strictKeys(client: any, prefix: string): Promise<string[]> {
  return (await client.keys(`${prefix}rl:s:*`)) as string[];
}

/** Names of the connections a Redis serves (CLIENT LIST). */
async function connectionNames(client: any): Promise<string[]> {
  const list = (await client.client('LIST')) as string;
  return list.split('\n').map((l) => /name=(\S*)/.exec(l)?.[1] ?? '').filter((n) => n !== '');
}

async function redisPid(client: any): Promise<number> {
  const info = (await client.info('server')) as string;
  return Number(/process_id:(\d+)/.exec(info)![1]);
}

const ALGS = [
  { id: 'tb', extra: { rate: 3, per: '1m', burst: 3 } },
  { id: 'gcra', extra: { rate: 2, per: '1m', burst: 2, algorithm: 'gcra' } },
  { id: 'fw', extra: { rate: 3, per: '1h', algorithm: 'fixed_window' } },
  { id: 'sw', extra: { rate: 3, per: '1h', algorithm: 'sliding_window' } },
];

function mainConfig(redisUrl: string, upUrl: string): Record<string, any> {
  const rateLimits: Record<string, any> = {
    exact: { by: 'header:x-k', rate: 1, per: '1h', burst: 37, mode: 'strict' },
    mixedRuntimes: { by: 'header:x-k', rate: 1, per: '1h', burst: 23, mode: 'strict' },
    refill: { by: 'header:x-k', rate: 1, per: '1s', burst: 3, mode: 'strict' },
    sharedMem: { by: 'header:x-k', rate: 1, per: '1h', burst: 10, scope: 'local' },
  };
  const routes: any[] = [
    { id: 'exact', path: '/exact', upstream: 'u', rateLimit: ['exact'] },
    { id: 'mixed-runtimes', path: '/mixed-runtimes', upstream: 'u', rateLimit: ['mixedRuntimes'] },
    { id: 'refill', path: '/refill', upstream: 'u', rateLimit: ['refill'] },
    { id: 'mixed', path: '/mixed', upstream: 'u', rateLimit: ['sharedMem', { by: 'header:x-k', rate: 1, per: '1h', burst: 2, mode: 'strict' }] },
    { id: 'mem-only', path: '/mem-only', upstream: 'u', rateLimit: ['sharedMem'] },
    {
      id: 'memfirst', path: '/memfirst', upstream: 'u',
      rateLimit: [{ by: 'header:x-k', rate: 1, per: '1h', burst: 1, scope: 'local' }, { by: 'header:x-k', rate: 1, per: '1h', burst: 100, mode: 'strict' }],
    },
    { id: 'post', path: '/post', methods: ['POST', 'PUT'], upstream: 'u', rateLimit: [{ by: 'header:x-k', rate: 1, per: '1h', burst: 1000, mode: 'strict' }] },
    { id: 'one', path: '/one', methods: ['GET', 'HEAD', 'POST'], upstream: 'u', rateLimit: [{ by: 'header:x-k', rate: 1, per: '1h', burst: 1, mode: 'strict' }] },
    { id: 'plain', path: '/plain', upstream: 'u' },
  ];
  for (const a of ALGS) {
    rateLimits[`${a.id}-s`] = { by: 'header:x-k', mode: 'strict', headers: 'both', ...a.extra };
    rateLimits[`${a.id}-m`] = { by: 'header:x-k', scope: 'local', headers: 'both', ...a.extra };
    routes.push({ id: `${a.id}-s`, path: `/p/${a.id}-s`, methods: ['GET', 'HEAD'], upstream: 'u', rateLimit: [`${a.id}-s`] });
    routes.push({ id: `${a.id}-m`, path: `/p/${a.id}-m`, methods: ['GET', 'HEAD'], upstream: 'u', rateLimit: [`${a.id}-m`] });
  }
  return baseConfig({
    server: { workers: 2 },
    admin: { enabled: true, port: 0 },
    log: { access: { enabled: false } },
    redis: { url: redisUrl, keyPrefix: 'tpt:', commandTimeoutMs: 300 },
    rateLimits,
    upstreams: { u: { targets: [upUrl] } },
    routes,
  });
}

describe('strict limits on two gateway processes sharing one Redis (and a Bun one)', () => {
  let redis: PrivateRedis;
  let client: any;
  let a: Gateway;
  let b: Gateway;
  /** The same config on the Bun backend. */
  let bn: Gateway;

  beforeAll(async () => {
    redis = await startRedis();
    client = new Redis(redis.url);
    const config = mainConfig(redis.url, up.url);
    [a, b, bn] = await Promise.all([startGateway(config), startGateway(config), startGateway(config, { runtime: 'bun' })]);
  });

  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop(), bn?.stop()]);
    await client?.quit();
    await redis?.stop();
  });

  /** `total` requests to the gateways in turn, `concurrency` at a time; statuses counted, and which gateway answered 200. */
  async function offer(gws: Gateway[], path: string, headers: Record<string, string>, total: number, concurrency: number) {
    const statuses = new Map<number, number>();
    const admittedBy = gws.map(() => 0);
    let next = 0;
    await Promise.all(Array.from({ length: concurrency }, async () => {
      for (;;) {
        const i = next++;
        if (i >= total) return;
        const g = i % gws.length;
        const r = await call(gws[g]!, path, headers);
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
        if (r.status === 200) admittedBy[g]!++;
      }
    }));
    return { statuses, admittedBy };
  }

  it('admit exactly the burst across 2 processes × 2 workers, however many push at once', async () => {
    const k = fresh();
    const { statuses } = await offer([a, b], '/exact', { 'x-k': k }, 200, 32);
    expect(Object.fromEntries(statuses)).toEqual({ 200: 37, 429: 163 });
    // The decisions were taken in Redis, under one key (policy tag + key hash).
    const keys = await strictKeys(client, 'tpt:');
    expect(keys.some((key) => /^tpt:rl:s:[0-9a-f]{8}:[0-9a-f]{16}$/.test(key))).toBe(true);
  });

  it('admit exactly burst + rate × t across 2 processes while the bucket refills', async () => {
    // 1 per second, burst 3: refills at t0 + 1 s and t0 + 2 s (t0: the first
    // decision). Load stops at 2.5 s: 500 ms from either refill boundary.
    const k = fresh();
    const c0 = Date.now();
    const until = c0 + 2_500;
    let admitted = 0;
    let refused = 0;
    const answeredBy = [0, 0];
    await Promise.all(Array.from({ length: 8 }, async (_, n) => {
      const gw = n % 2 === 0 ? a : b;
      while (Date.now() < until) {
        const r = await call(gw, '/refill', { 'x-k': k });
        answeredBy[n % 2]!++;
        if (r.status === 200) admitted++;
        else {
          expect(r.status).toBe(429);
          refused++;
          await sleep(2);
        }
      }
    }));
    expect(answeredBy[0]).toBeGreaterThan(50);
    expect(answeredBy[1]).toBeGreaterThan(50);
    expect(refused).toBeGreaterThan(100);
    expect(admitted).toBe(3 + 2);
  });

  it.each(ALGS.map((x) => x.id))('%s: the same headers and 429 body as in memory, decided in Redis', async (alg) => {
    const k = fresh();
    // Window algorithms report seconds to the window's end: start just after a second boundary.
    while (Date.now() % 1000 > 400) await sleep(20);
    const strict: Record<string, string | number>[] = [];
    const memory: Record<string, string | number>[] = [];
    for (let i = 0; i < 5; i++) {
      strict.push(limitView(await call(a, `/p/${alg}-s`, { 'x-k': k }), `${alg}-s`));
      memory.push(limitView(await call(a, `/p/${alg}-m`, { 'x-k': k }), `${alg}-m`));
    }
    expect(strict).toEqual(memory);
    expect(strict.map((s) => s.status)).toContain(429);
    const before = (await strictKeys(client, 'tpt:')).length;
    await call(a, `/p/${alg}-s`, { 'x-k': fresh() });
    expect((await strictKeys(client, 'tpt:')).length, 'a new key decided in Redis').toBe(before + 1);
  });

  it('token bucket: the exact headers and 429 body', async () => {
    const k = fresh();
    const before = (await strictKeys(client, 'tpt:')).length;
    const seen: Answer[] = [];
    for (let i = 0; i < 4; i++) seen.push(await call(b, '/p/tb-s', { 'x-k': k }));
    expect((await strictKeys(client, 'tpt:')).length, 'decided in Redis').toBe(before + 1);
    expect(seen.map((s) => [s.status, s.headers['ratelimit-policy'], s.headers['ratelimit'], s.headers['x-ratelimit-remaining'], s.headers['x-ratelimit-reset']])).toEqual([
      [200, '"tb-s";q=3;w=60', '"tb-s";r=2;t=20', '2', '20'],
      [200, '"tb-s";q=3;w=60', '"tb-s";r=1;t=40', '1', '40'],
      [200, '"tb-s";q=3;w=60', '"tb-s";r=0;t=60', '0', '60'],
      [429, '"tb-s";q=3;w=60', '"tb-s";r=0;t=20', '0', '20'],
    ]);
    const refused = seen[3]!;
    expect(refused.headers['retry-after']).toBe('20');
    expect(refused.headers['x-ratelimit-limit']).toBe('3');
    expect(refused.headers['content-type']).toBe('application/json');
    const rid = refused.headers['x-request-id'];
    expect(refused.body).toBe(
      `{"error":{"code":"rate_limited","message":"Rate limit \\"tb-s\\" exceeded (3 requests per 1m, by header x-k); retry in 20 s.","requestId":"${rid}"}}`,
    );
  });

  it('a request the strict limit refuses gives its unit back to the in-memory limit before it', async () => {
    const k = fresh();
    const before = (await strictKeys(client, 'tpt:')).length;
    // sharedMem (10, in memory) then strict (2): 5 requests, 2 admitted.
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) statuses.push((await call(a, '/mixed', { 'x-k': k })).status);
    expect(statuses).toEqual([200, 200, 429, 429, 429]);
    expect((await strictKeys(client, 'tpt:')).length, 'the strict limit decided in Redis').toBe(before + 1);
    // sharedMem gave out 2 units, not 5: this third request leaves 7.
    const r = await call(a, '/mem-only', { 'x-k': k });
    expect(r.headers['ratelimit']).toBe('"sharedMem";r=7;t=10800');
  });

  it('a request refused in memory never reaches Redis', async () => {
    const k = fresh();
    const before = new Set(await strictKeys(client, 'tpt:'));
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await call(a, '/memfirst', { 'x-k': k })).status);
    expect(statuses).toEqual([200, 429, 429, 429]);
    const added = (await strictKeys(client, 'tpt:')).filter((key) => !before.has(key));
    expect(added).toHaveLength(1);
    // One admission taken from the strict bucket of 100, not four.
    expect(((await client.get(added[0])) as string).split(' ')[0]).toBe('99');
  });

  it('Bun: two uWS gateways and a Bun one admit exactly the burst of one strict limit', async () => {
    const k = fresh();
    const { statuses, admittedBy } = await offer([a, b, bn], '/mixed-runtimes', { 'x-k': k }, 150, 24);
    expect(Object.fromEntries(statuses)).toEqual({ 200: 23, 429: 127 });
    expect(admittedBy.reduce((x, y) => x + y, 0)).toBe(23);
  });

  // The in-memory reference is the uWS gateway's: a Bun worker's shared clock
  // runs behind the wall clock by the time the worker took to start (its
  // process.hrtime restarts per thread), which shifts window ends in memory
  // but not in Redis. Strict limits decide on Redis's clock on both backends.
  it.each(ALGS.map((x) => x.id))('Bun: %s gives the same headers and 429 body as in memory, decided in Redis', async (alg) => {
    const k = fresh();
    while (Date.now() % 1000 > 400) await sleep(20);
    const strict: Record<string, string | number>[] = [];
    const memory: Record<string, string | number>[] = [];
    for (let i = 0; i < 5; i++) {
      strict.push(limitView(await call(bn, `/p/${alg}-s`, { 'x-k': k }), `${alg}-s`));
      memory.push(limitView(await call(a, `/p/${alg}-m`, { 'x-k': k }), `${alg}-m`));
    }
    expect(strict).toEqual(memory);
    expect(strict.map((s) => s.status)).toContain(429);
    const before = (await strictKeys(client, 'tpt:')).length;
    await call(bn, `/p/${alg}-s`, { 'x-k': fresh() });
    expect((await strictKeys(client, 'tpt:')).length, 'a new key decided in Redis').toBe(before + 1);
  });

  it('Bun: a POST is proxied intact after the decision; a refusal gives the in-memory unit back', async () => {
    const k = fresh();
    const body = Buffer.alloc(200 * 1024, 'q');
    const before = (await strictKeys(client, 'tpt:')).length;
    const r = await call(bn, '/post', { 'x-k': k }, 'POST', body);
    expect(r.status).toBe(200);
    expect((await strictKeys(client, 'tpt:')).length, 'decided in Redis').toBe(before + 1);
    expect(JSON.parse(r.body)).toMatchObject({ method: 'POST', length: body.length, sha256: createHash('sha256').update(body).digest('hex') });
    expect(r.headers['ratelimit']).toMatch(/^"post#0";r=999;t=\d+$/);
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await call(bn, '/mixed', { 'x-k': k })).status);
    expect(statuses).toEqual([200, 200, 429, 429]);
    // The in-memory table is the Bun process's own: 10 - 2 - this one.
    expect((await call(bn, '/mem-only', { 'x-k': k })).headers['ratelimit']).toBe('"sharedMem";r=7;t=10800');
  });

  it('a POST is proxied intact after the decision; chunked too', async () => {
    const k = fresh();
    const body = Buffer.alloc(300 * 1024);
    for (let i = 0; i < body.length; i++) body[i] = (i * 7 + 3) & 0xff;
    const before = (await strictKeys(client, 'tpt:')).length;
    const r = await call(a, '/post', { 'x-k': k, 'content-type': 'application/octet-stream' }, 'POST', body);
    expect(r.status).toBe(200);
    expect((await strictKeys(client, 'tpt:')).length, 'decided in Redis').toBe(before + 1);
    const echo = JSON.parse(r.body);
    expect(echo).toMatchObject({ method: 'POST', length: body.length, sha256: createHash('sha256').update(body).digest('hex') });
    expect(r.headers['ratelimit']).toMatch(/^"post#0";r=999;t=\d+$/);

    // Chunked, in pieces that arrive while the decision is pending and after.
    const conn = await RawConnection.open(a.port);
    try {
      conn.send(`PUT /post HTTP/1.1\r\nHost: x\r\nx-k: ${k}\r\nTransfer-Encoding: chunked\r\n\r\n`);
      const parts = [body.subarray(0, 1000), body.subarray(1000, 70_000), body.subarray(70_000)];
      for (const p of parts) {
        conn.send(Buffer.concat([Buffer.from(p.length.toString(16) + '\r\n'), p, Buffer.from('\r\n')]));
        await sleep(5);
      }
      conn.send('0\r\n\r\n');
      const res = await conn.read();
      expect(res.status).toBe(200);
      expect(JSON.parse(res.body.toString())).toMatchObject({ method: 'PUT', length: body.length, sha256: echo.sha256 });
    } finally {
      conn.close();
    }
  });

  it('a refused POST with a small body is answered and the connection kept; HEAD too', async () => {
    const k = fresh();
    const conn = await RawConnection.open(a.port);
    try {
      const post = (n: number) => `POST /one HTTP/1.1\r\nHost: x\r\nx-k: ${k}\r\nContent-Length: ${n}\r\n\r\n${'b'.repeat(n)}`;
      conn.send(post(1000));
      expect((await conn.read()).status).toBe(200);
      conn.send(post(1000));
      const refused = await conn.read();
      expect(refused.status).toBe(429);
      expect(JSON.parse(refused.body.toString()).error.code).toBe('rate_limited');
      conn.send('HEAD /one HTTP/1.1\r\nHost: x\r\nx-k: ' + k + '\r\n\r\n');
      const head = await conn.read(true);
      expect(head.status).toBe(429);
      // The length of the body a GET would get (the same JSON, its own request id), no body.
      const ridOf = (r: typeof head) => headerValues(r, 'x-request-id')[0]!;
      expect(Number(headerValues(head, 'content-length')[0])).toBe(refused.body.length - ridOf(refused).length + ridOf(head).length);
      expect(head.body.length).toBe(0);
      expect(headerValues(head, 'retry-after')).toEqual(headerValues(refused, 'retry-after'));
      // Same connection, still usable.
      conn.send('GET /plain HTTP/1.1\r\nHost: x\r\n\r\n');
      expect((await conn.read()).status).toBe(200);
      expect(conn.closed).toBe(false);
    } finally {
      conn.close();
    }
    // An admitted HEAD: the limit's headers, no body.
    const k2 = fresh();
    const conn2 = await RawConnection.open(a.port);
    try {
      conn2.send('HEAD /p/tb-s HTTP/1.1\r\nHost: x\r\nx-k: ' + k2 + '\r\n\r\n');
      const head = await conn2.read(true);
      expect(head.status).toBe(200);
      expect(headerValues(head, 'ratelimit')).toEqual(['"tb-s";r=2;t=20']);
      conn2.send('GET /plain HTTP/1.1\r\nHost: x\r\n\r\n');
      expect((await conn2.read()).status).toBe(200);
    } finally {
      conn2.close();
    }
  });
});

/** A gateway config for the store-error tests: a Redis URL with a password (never logged), short command timeout. */
function outageConfig(redisUrl: string, upUrl: string): Record<string, any> {
  return baseConfig({
    server: { workers: 2 },
    admin: { enabled: true, port: 0 },
    log: { access: { enabled: false } },
    redis: { url: redisUrl, commandTimeoutMs: 150 },
    upstreams: { u: { targets: [upUrl] } },
    routes: [
      { id: 'allow', path: '/allow', upstream: 'u', rateLimit: [{ by: 'header:x-k', rate: 1, per: '1h', burst: 4, mode: 'strict' }] },
      { id: 'deny', path: '/deny', upstream: 'u', rateLimit: [{ by: 'header:x-k', rate: 1, per: '1h', burst: 100_000, mode: 'strict', onStoreError: 'deny' }] },
      { id: 'post', path: '/post', methods: ['POST'], upstream: 'u', rateLimit: [{ by: 'header:x-k', rate: 1, per: '1h', burst: 100_000, mode: 'strict' }] },
      { id: 'plain', path: '/plain', upstream: 'u' },
    ],
  });
}

const DOWN = 'rate-limit store (Redis) unreachable';
const BACK = 'rate-limit store (Redis) reachable again';
const SECRET = 's3cret-pw';

describe('strict limits while Redis fails (uWS and Bun)', () => {
  let redis: PrivateRedis;
  let client: any;
  let c: Gateway;
  let cb: Gateway;
  let gws: [string, Gateway][];

  beforeAll(async () => {
    redis = await startRedis();
    client = new Redis(redis.url, { maxRetriesPerRequest: 0, retryStrategy: () => 50 });
    client.on('error', () => {});
    const config = outageConfig(`redis://:${SECRET}@127.0.0.1:${redis.port}`, up.url);
    [c, cb] = await Promise.all([startGateway(config), startGateway(config, { runtime: 'bun' })]);
    gws = [['uws', c], ['bun', cb]];
    // Both count each other (heartbeats): while Redis is away each enforces half of every limit.
    for (const [name, gw] of gws) {
      const deadline = Date.now() + 5000;
      while (sampleValue(await scrape(gw.adminPort!), 'turnpike_rate_limit_store_instances') !== 2) {
        if (Date.now() > deadline) throw new Error(`${name}: the two instances never counted each other`);
        await sleep(100);
      }
    }
  });

  afterAll(async () => {
    await redis?.restart();
    // Drained cleanly: nothing left waiting on a decision, no connection keeps a worker alive.
    const codes = await Promise.all([c?.stop(), cb?.stop()]);
    expect(codes).toEqual([0, 0]);
    client?.disconnect();
    await redis?.stop();
  });

  const lines = (gw: Gateway, text: string) => gw.logs.filter((l) => l.includes(text));

  it('Redis killed: allow_local keeps limiting locally, deny answers 503 with Retry-After; one log line per worker, no credentials', async () => {
    for (const [, gw] of gws) {
      expect((await call(gw, '/deny', { 'x-k': 'up' })).status).toBe(200);
      expect((await call(gw, '/allow', { 'x-k': 'before' })).status).toBe(200);
    }
    await redis.kill();
    for (const [name, gw] of gws) {
      const k = fresh();
      const allow: number[] = [];
      for (let i = 0; i < 10; i++) allow.push((await call(gw, '/allow', { 'x-k': k })).status);
      // This instance's own bucket, with its share (1/2: two instances) of the burst of 4: 2 of 10, the rest 429; never a 5xx.
      expect(allow, name).toEqual([200, 200, 429, 429, 429, 429, 429, 429, 429, 429]);
      for (let i = 0; i < 10; i++) {
        const r = await call(gw, '/deny', { 'x-k': k });
        expect(r.status, name).toBe(503);
        expect(r.headers['retry-after'], name).toBe('1');
        expect(JSON.parse(r.body).error.code, name).toBe('rate_limit_store_unavailable');
      }
      await expect.poll(() => lines(gw, DOWN).length, { timeout: 3000 }).toBe(2);
    }
    await sleep(300); // reconnect attempts meanwhile: still one line per worker
    for (const [name, gw] of gws) {
      expect(lines(gw, DOWN).length, name).toBe(2);
      const line = JSON.parse(lines(gw, DOWN)[0]!.slice(lines(gw, DOWN)[0]!.indexOf('{')));
      expect(line.level).toBe('warn');
      expect(line.redis).toBe(`redis://[redacted]@127.0.0.1:${redis.port}`);
      expect(gw.logs.filter((l) => l.includes(SECRET)), name).toEqual([]);
    }
  });

  it('Redis restarted: strict limits are decided in Redis again; one line per worker', async () => {
    await redis.restart();
    for (const [name, gw] of gws) {
      await expect.poll(async () => (await call(gw, '/deny', { 'x-k': fresh() })).status, { timeout: 5000, interval: 100 }).toBe(200);
      await expect.poll(() => lines(gw, BACK).length, { timeout: 3000 }).toBe(2);
      const k = fresh();
      const before = (await strictKeys(client, 'tp:')).length;
      const allow: number[] = [];
      for (let i = 0; i < 6; i++) allow.push((await call(gw, '/allow', { 'x-k': k })).status);
      expect(allow, name).toEqual([200, 200, 200, 200, 429, 429]);
      expect((await strictKeys(client, 'tp:')).length, `${name}: decided in Redis`).toBe(before + 1);
    }
  });

  it('Redis stops answering: a decision waits commandTimeoutMs at most, then onStoreError decides; a POST that waited is proxied intact', async () => {
    const pid = await redisPid(client);
    process.kill(pid, 'SIGSTOP');
    try {
      const body = Buffer.alloc(100 * 1024, 'w');
      const digest = createHash('sha256').update(body).digest('hex');
      for (const [name, gw] of gws) {
        // The first ones wait for the timeout (150 ms); later ones are decided at once.
        const [deny, post] = await Promise.all([
          call(gw, '/deny', { 'x-k': fresh() }),
          call(gw, '/post', { 'x-k': fresh() }, 'POST', body),
        ]);
        expect(deny.status, name).toBe(503);
        expect(deny.headers['retry-after'], name).toBe('1');
        expect(deny.ms, name).toBeLessThan(1500);
        expect(post.status, name).toBe(200);
        expect(JSON.parse(post.body), name).toMatchObject({ length: body.length, sha256: digest });
        const allow = await call(gw, '/allow', { 'x-k': fresh() });
        expect(allow.status, name).toBe(200);
        expect(allow.ms, name).toBeLessThan(1500);
      }
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    for (const [name, gw] of gws) {
      // Log lines reach stderr through the engine's log writer, a moment after they are logged.
      const timeouts = () => lines(gw, DOWN).filter((l) => l.includes('commandTimeoutMs (150 ms)')).length;
      await expect.poll(timeouts, { timeout: 3000, message: name }).toBeGreaterThanOrEqual(1);
      expect(timeouts(), name).toBeLessThanOrEqual(2);
      // Back by a probe (the connection never broke).
      await expect.poll(async () => (await call(gw, '/deny', { 'x-k': fresh() })).status, { timeout: 5000, interval: 100 }).toBe(200);
    }
  });

  it('a client that leaves while its decision is pending: nothing crashes, nothing stays in flight', async () => {
    for (const [, gw] of gws) await expect.poll(async () => (await call(gw, '/deny', { 'x-k': fresh() })).status, { timeout: 5000 }).toBe(200);
    const pid = await redisPid(client);
    const marks = gws.map(([, gw]) => gw.logs.length);
    process.kill(pid, 'SIGSTOP');
    const conns: RawConnection[] = [];
    try {
      for (const [, gw] of gws) {
        for (let i = 0; i < 3; i++) {
          const get = await RawConnection.open(gw.port);
          get.send(`GET /allow HTTP/1.1\r\nHost: x\r\nx-k: ${fresh()}\r\n\r\n`);
          const post = await RawConnection.open(gw.port);
          post.send(`POST /post HTTP/1.1\r\nHost: x\r\nx-k: ${fresh()}\r\nContent-Length: 100000\r\n\r\n${'p'.repeat(30_000)}`);
          conns.push(get, post);
        }
      }
      await sleep(40);
      for (const conn of conns) conn.close();
      await sleep(400);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    for (const [name, gw] of gws) {
      await expect.poll(async () => (await call(gw, '/deny', { 'x-k': fresh() })).status, { timeout: 5000, interval: 100 }).toBe(200);
      const r = await call(gw, '/plain');
      expect(r.status, name).toBe(200);
      const m = await request(`http://127.0.0.1:${gw.adminPort}/metrics`, { dispatcher: agent });
      const text = await m.body.text();
      expect(/^turnpike_active_requests (\d+)$/m.exec(text)?.[1], `${name}: nothing left in flight`).toBe('0');
    }
    gws.forEach(([name, gw], i) => {
      const after = gw.logs.slice(marks[i]);
      expect(after.filter((l) => /internal error|worker failed|worker thread error|fatal/.test(l)), name).toEqual([]);
    });
  });
});

describe('the strict limits\' Redis connection', () => {
  let redis: PrivateRedis;
  let client: any;

  beforeAll(async () => {
    redis = await startRedis();
    client = new Redis(redis.url);
  });

  afterAll(async () => {
    await client?.quit();
    await redis?.stop();
  });

  const strictConnections = async () => (await connectionNames(client)).filter((n) => n.startsWith('turnpike-strict-'));

  it('exists only while the running config has a strict limit (reload opens and closes it; drain closes it)', async () => {
    const config = (strict: boolean) => baseConfig({
      server: { workers: 2 },
      log: { access: { enabled: false } },
      redis: { url: redis.url },
      upstreams: { u: { targets: [up.url] } },
      routes: [
        { id: 'batched', path: '/batched', upstream: 'u', rateLimit: [{ by: 'ip', rate: 100, per: '1s' }] },
        ...(strict ? [{ id: 'strict', path: '/strict', upstream: 'u', rateLimit: [{ by: 'ip', rate: 100, per: '1s', mode: 'strict' }] }] : []),
      ],
    });
    const gw = await startGateway(config(false));
    try {
      expect((await call(gw, '/batched')).status).toBe(200);
      await sleep(200);
      expect(await strictConnections()).toEqual([]);

      writeFileSync(gw.configFile, JSON.stringify(config(true)));
      let mark = gw.logs.length;
      gw.proc.kill('SIGHUP');
      await expect.poll(() => gw.logs.slice(mark).some((l) => l.includes('"msg":"config reloaded"')), { timeout: 10_000 }).toBe(true);
      await expect.poll(async () => (await strictConnections()).sort(), { timeout: 5000 }).toEqual(['turnpike-strict-worker-0', 'turnpike-strict-worker-1']);
      // A connection is listed by Redis a moment before the client counts it ready (until then a
      // decision takes the store-down path, locally): the decisions reach Redis once it is.
      await expect.poll(async () => {
        expect((await call(gw, '/strict')).status).toBe(200);
        return (await strictKeys(client, 'tp:')).length;
      }, { timeout: 5000 }).toBe(1);

      // The same redis settings in the next config: the connections stay as they are.
      const ids = ((await client.client('LIST')) as string).split('\n').filter((l) => l.includes('name=turnpike-strict-')).map((l) => /id=(\d+)/.exec(l)![1]).sort();
      writeFileSync(gw.configFile, JSON.stringify({ ...config(true), routes: [...config(true).routes, { id: 'plain', path: '/plain', upstream: 'u' }] }));
      mark = gw.logs.length;
      gw.proc.kill('SIGHUP');
      await expect.poll(() => gw.logs.slice(mark).some((l) => l.includes('"msg":"config reloaded"')), { timeout: 10_000 }).toBe(true);
      expect((await call(gw, '/plain')).status).toBe(200);
      const idsAfter = ((await client.client('LIST')) as string).split('\n').filter((l) => l.includes('name=turnpike-strict-')).map((l) => /id=(\d+)/.exec(l)![1]).sort();
      expect(idsAfter).toEqual(ids);

      writeFileSync(gw.configFile, JSON.stringify(config(false)));
      mark = gw.logs.length;
      gw.proc.kill('SIGHUP');
      await expect.poll(() => gw.logs.slice(mark).some((l) => l.includes('"msg":"config reloaded"')), { timeout: 10_000 }).toBe(true);
      await expect.poll(strictConnections, { timeout: 5000 }).toEqual([]);

      writeFileSync(gw.configFile, JSON.stringify(config(true)));
      mark = gw.logs.length;
      gw.proc.kill('SIGHUP');
      await expect.poll(async () => (await strictConnections()).length, { timeout: 10_000 }).toBe(2);
    } finally {
      expect(await gw.stop()).toBe(0);
    }
    await expect.poll(strictConnections, { timeout: 5000 }).toEqual([]);
  });
});
