/**
 * The admin thread's rate-limit sync (admin/rate-limit/) when Redis
 * misbehaves, white-box but real (real tables, the real worker policy, a
 * real RateLimitSync against private redis-servers, or a fake Redis that
 * answers errors):
 *
 *  - a database Redis refuses (`redis.url: .../99`) keeps the store down,
 *    says so ("Redis refused database 99"), never claims "connected" and
 *    never syncs into database 0; a database that is not a number (`/abc`,
 *    refused by validation) is never connected to, and a reload away from
 *    it works; a Redis answering errors to everything, or to the scripts
 *    only, never lets a rejection escape (it used to kill the admin thread);
 *  - Redis paused (SIGSTOP) then resumed: cluster limits are shared again,
 *    and `deny` limits admit, within about a second; the "reachable again"
 *    line's downForMs is about the pause, not the pause plus a backoff;
 *  - a quota holds when Redis loses its data (FLUSHALL) and an instance
 *    then restarts: the instance that knew the count pushes it back.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { Redis } from 'ioredis';

const logged: { level: string; msg: string; fields: Record<string, unknown> | undefined }[] = [];
vi.mock('../../../common/log.js', async (importOriginal) => {
  const orig = await importOriginal<typeof import('../../../common/log.js')>();
  return {
    ...orig,
    log: (level: string, msg: string, fields?: Record<string, unknown>) => {
      logged.push({ level, msg, fields });
    },
  };
});

import { resolvePolicy } from '../../../common/config/rate-limit.js';
import type { GatewayConfig, RateLimitPolicy } from '../../../common/config/types.js';
import { E_HI, E_LO, E_TAG, F_A, H_STORE_DOWN, RateLimitTable, createRateLimitTable, hashKey } from '../../../common/rate-limit-layout.js';
import { RateLimitSync } from '../../../admin/rate-limit/index.js';
import { bucketKey, policyKeyHead } from '../../../admin/rate-limit/script.js';
import { CONTINUE, RequestContext } from '../../../workers/pipeline/context.js';
import { RateLimitPolicyRunner, type RateLimitEnv } from '../../../workers/policies/rate-limit/index.js';
import { startRedis, type PrivateRedis } from '../../helpers/redis.js';
import { startFakeRedis, type FakeRedis } from '../policies/rate-limit/fake-redis.js';

const unhandled: unknown[] = [];
const onUnhandled = (err: unknown) => { unhandled.push(err); };
const live: RateLimitSync[] = [];

let redis: PrivateRedis;
let probe: Redis;

beforeAll(async () => {
  process.on('unhandledRejection', onUnhandled);
  redis = await startRedis();
  probe = new Redis(redis.port, '127.0.0.1', { lazyConnect: true, retryStrategy: () => 50 });
  probe.on('error', () => {});
  await probe.connect();
});

afterAll(async () => {
  process.off('unhandledRejection', onUnhandled);
  probe?.disconnect();
  await redis?.stop();
});

afterEach(async () => {
  await Promise.all(live.splice(0).map((s) => s.stop()));
  if (redis.running) await probe.flushall();
  logged.length = 0;
});

const clock = () => Date.now() + (performance.now() % 1);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function config(url: string, policies: RateLimitPolicy[], over: Record<string, unknown> = {}): GatewayConfig {
  return {
    redis: { url, sentinels: null, name: null, cluster: null, keyPrefix: 'tp:', syncIntervalMs: 20, connectTimeoutMs: 1000, commandTimeoutMs: 300, ...over },
    rateLimits: {},
    routes: [{ id: 'r', rateLimit: policies }],
  } as unknown as GatewayConfig;
}

const policy = (name: string, raw: Record<string, unknown>): RateLimitPolicy => resolvePolicy(raw, name, true);

/** One gateway instance without the gateway: a table, the worker's policy, the admin thread's sync. */
class Instance {
  readonly table = new RateLimitTable(createRateLimitTable(1024));
  readonly sync = new RateLimitSync({ table: this.table, now: clock });
  private runners = new Map<number, RateLimitPolicyRunner>();
  private readonly ctx = new RequestContext();

  async start(cfg: GatewayConfig): Promise<this> {
    live.push(this.sync);
    await this.apply(cfg);
    return this;
  }

  async apply(cfg: GatewayConfig): Promise<void> {
    const env = { table: this.table, metrics: null, trusted: null, strict: null };
    this.runners = new Map(cfg.routes[0]!.rateLimit.map((p) => [p.tag, new RateLimitPolicyRunner([p], 0, env as RateLimitEnv)]));
    await this.sync.configure(cfg);
  }

  request(p: RateLimitPolicy): boolean {
    const c = this.ctx;
    c.reset();
    c.now = clock();
    c.routeId = 'r';
    c.clientIp = '10.0.0.1';
    return this.runners.get(p.tag)!.onRequest(c) === CONTINUE;
  }

  burst(p: RateLimitPolicy, n: number): number {
    let ok = 0;
    for (let i = 0; i < n; i++) if (this.request(p)) ok++;
    return ok;
  }

  get down(): boolean {
    return this.table.f64[H_STORE_DOWN] === 1;
  }

  /** F_A of the `by: global` bucket of `p`, or null. */
  count(p: RateLimitPolicy): number | null {
    const h = new Int32Array(2);
    hashKey(p.tag ^ Math.imul(2 /* K_GLOBAL */, 0x9e3779b9), '', h);
    for (let e = 0; e < this.table.capacity; e++) {
      const b = this.table.base(e);
      if (this.table.i32[b + E_TAG] === p.tag && this.table.i32[b + E_HI] === h[0] && this.table.i32[b + E_LO] === h[1]) return this.table.f64[(b >> 1) + F_A]!;
    }
    return null;
  }
}

function globalKey(p: RateLimitPolicy, window?: number): string {
  const h = new Int32Array(2);
  hashKey(p.tag ^ Math.imul(2 /* K_GLOBAL */, 0x9e3779b9), '', h);
  return bucketKey(policyKeyHead('tp:', p.tag), h[0]!, h[1]!, window);
}

const msgs = (prefix: string) => logged.filter((l) => l.msg.startsWith(prefix));

async function redisPid(): Promise<number> {
  const info = await probe.info('server');
  return Number(/process_id:(\d+)/.exec(info)![1]);
}

describe('store errors never escape, and a refused database keeps the store down', () => {
  it('redis.url /99 (a database the server does not have): down, "Redis refused database 99", never "connected", nothing synced to database 0', async () => {
    const q = policy('q', { by: 'global', quota: 100, period: 'day' });
    const a = await new Instance().start(config(`${redis.url}/99`, [q]));
    expect(a.sync.storeState).toBe('down');
    expect(a.burst(q, 5)).toBe(5); // decided locally meanwhile
    await sleep(600);
    expect(a.sync.storeState).toBe('down');
    expect(a.down).toBe(true);
    expect(msgs('rate-limit store connected')).toEqual([]);
    const down = msgs('rate-limit store refused the database');
    expect(down).toHaveLength(1);
    expect(down[0]!.level).toBe('warn');
    expect(String(down[0]!.fields?.['error'])).toMatch(/^Redis refused database 99: ERR DB index is out of range/);
    expect(a.sync.stats().errors.command).toBeGreaterThan(0);
    expect(await probe.dbsize()).toBe(0); // nothing went to database 0
    expect(unhandled).toEqual([]);
  });

  it('redis.url /abc (not a number: validation refuses it): never connected, no crash; a reload to a good URL connects', async () => {
    const tb = policy('tb', { by: 'global', rate: 10, per: '1s', onStoreError: 'deny' });
    const a = await new Instance().start(config(`${redis.url}/abc`, [tb]));
    expect(a.sync.storeState).toBe('down');
    await sleep(300);
    expect(a.request(tb)).toBe(false); // deny: 503 while the store is down
    // The reload that used to kill the admin thread (an unhandled rejection of ioredis's SELECT NaN).
    await a.apply(config(`${redis.url}/0`, [tb]));
    await a.apply(config(`${redis.url}/abc`, [tb]));
    await a.apply(config(`${redis.url}/0`, [tb]));
    await expect.poll(() => a.sync.storeState, { timeout: 3000 }).toBe('up');
    expect(a.request(tb)).toBe(true);
    await sleep(300);
    expect(unhandled).toEqual([]);
  });

  describe('a fake Redis answering errors', () => {
    let fake: FakeRedis;

    beforeAll(async () => {
      fake = await startFakeRedis();
    });

    afterAll(async () => {
      await fake?.close();
    });

    it('to every command (SELECT, INFO, EVALSHA, EVAL...): down, errors counted, nothing escapes', async () => {
      fake.failAll = true;
      const tb = policy('tb', { by: 'global', rate: 10, per: '1s' });
      const q = policy('q', { by: 'global', quota: 100, period: 'day' });
      const a = await new Instance().start(config(`${fake.url}/2`, [tb, q]));
      for (let i = 0; i < 10; i++) {
        a.burst(tb, 2);
        a.burst(q, 2);
        await sleep(50);
      }
      expect(a.sync.storeState).toBe('down');
      const e = a.sync.stats().errors;
      expect(e.connection + e.command + e.timeout).toBeGreaterThan(0);
      expect(msgs('rate-limit store connected')).toEqual([]);
      expect(unhandled).toEqual([]);
    });

    it('to the scripts only (EVALSHA, EVAL; the connection is fine): down, probed again and again, nothing escapes', async () => {
      fake.failAll = false;
      fake.fail = new Set(['evalsha', 'eval']);
      const q = policy('q', { by: 'global', quota: 100, period: 'day' });
      const a = await new Instance().start(config(fake.url, [q]));
      for (let i = 0; i < 10; i++) {
        a.burst(q, 2);
        await sleep(50);
      }
      expect(a.sync.storeState).toBe('down');
      expect(a.sync.stats().errors.command).toBeGreaterThan(1);
      expect(msgs('rate-limit store unreachable')).toHaveLength(1); // logged once
      expect(unhandled).toEqual([]);
    });
  });
});

describe('Redis paused (SIGSTOP), then answering again', () => {
  it('is shared again, and deny limits admit, within about a second; downForMs is about the pause', async () => {
    const deny = policy('deny', { by: 'global', rate: 1000, per: '1s', onStoreError: 'deny' });
    const a = await new Instance().start(config(redis.url, [deny]));
    expect(a.sync.storeState).toBe('up');
    expect(a.request(deny)).toBe(true);
    const pid = await redisPid();
    // Long enough for the old probe backoff (doubling up to 5 s) to have reached
    // gaps of seconds: it used to notice the recovery 1.5-3 s late here.
    const PAUSE = 6000;
    process.kill(pid, 'SIGSTOP');
    let resumedAt = 0;
    try {
      await expect.poll(() => a.sync.storeState, { timeout: 2000, interval: 10 }).toBe('down');
      expect(a.request(deny)).toBe(false);
      await sleep(PAUSE - 300);
    } finally {
      process.kill(pid, 'SIGCONT');
      resumedAt = performance.now();
    }
    await expect.poll(() => a.sync.storeState, { timeout: 5000, interval: 5 }).toBe('up');
    const back = performance.now() - resumedAt;
    expect(a.request(deny)).toBe(true);
    const line = msgs('rate-limit store reachable again')[0]!;
    const downFor = Number(line.fields?.['downForMs']);
    console.log(`[rate-limit] Redis paused ${PAUSE} ms: shared again ${back.toFixed(0)} ms after it answered; downForMs ${downFor}`);
    // Probes every max(syncIntervalMs, 250 ms), each up to commandTimeoutMs (300) while paused.
    expect(back).toBeLessThan(1000);
    expect(downFor).toBeGreaterThan(PAUSE - 400);
    expect(downFor).toBeLessThan(PAUSE + 1000);
    expect(unhandled).toEqual([]);
  }, 30_000);
});

describe('Redis that loses its data', () => {
  it('a quota holds across FLUSHALL and the restart of another instance: the instance that knew the count pushes it back', async () => {
    const q = policy('q', { by: 'global', quota: 300, period: 'day' });
    const day = Date.now() - (Date.now() % 86_400_000);
    const cfg = config(redis.url, [q]);
    const a = await new Instance().start(cfg);
    let b = await new Instance().start(cfg);
    expect(a.burst(q, 300)).toBe(300);
    await a.sync.synced();
    expect(await probe.get(globalKey(q, day))).toBe('300');
    // Redis loses everything; then B restarts (a new process: nothing known).
    await probe.flushall();
    await b.sync.stop();
    // A notices (its heartbeat finds it missing from the instance set) and pushes its count back.
    await expect.poll(async () => await probe.get(globalKey(q, day)), { timeout: 3000, interval: 20 }).toBe('300');
    b = await new Instance().start(cfg);
    let admitted = 0;
    for (let i = 0; i < 20; i++) {
      if (b.request(q)) admitted++;
      await b.sync.synced();
    }
    // The first request of a key an instance never saw is decided before its first sync (README).
    expect(admitted).toBeLessThanOrEqual(1);
    expect(Number(await probe.get(globalKey(q, day)))).toBeLessThanOrEqual(301);
    expect(unhandled).toEqual([]);
  }, 20_000);

  it('a push raises the count to what the instance knows: max(count + pending, known)', async () => {
    const q = policy('q', { by: 'global', quota: 1000, period: 'day' });
    const day = Date.now() - (Date.now() % 86_400_000);
    const a = await new Instance().start(config(redis.url, [q]));
    expect(a.burst(q, 40)).toBe(40);
    await a.sync.synced();
    expect(await probe.get(globalKey(q, day))).toBe('40');
    await probe.del(globalKey(q, day));
    expect(a.burst(q, 2)).toBe(2);
    await a.sync.synced();
    expect(await probe.get(globalKey(q, day))).toBe('42');
    expect(await probe.pttl(globalKey(q, day))).toBeGreaterThan(0); // created again: with its expiry
    // Redis ahead (the other instances' admissions): the plain sum.
    await probe.set(globalKey(q, day), '100', 'PX', 86_400_000);
    expect(a.burst(q, 3)).toBe(3);
    await a.sync.synced();
    expect(await probe.get(globalKey(q, day))).toBe('103');
  });
});
