/**
 * The strict limits' Redis connection (workers/policies/rate-limit/
 * strict-store.ts) and decisions (strict.ts) when Redis misbehaves, with
 * the real store, the real policy runner and real redis-servers (or a
 * fake one that answers errors):
 *
 *  - Redis paused (SIGSTOP): no decision waits longer than
 *    redis.commandTimeoutMs (+ a few ms) from the moment it was asked,
 *    however many are sent and whenever they are sent (ioredis's
 *    auto-pipelining used to make later ones wait for the running batch's
 *    timeout and then their own: up to 2 × commandTimeoutMs);
 *  - a Redis that answers errors to everything (SELECT, EVALSHA, EVAL,
 *    PING...) never lets a rejection escape: the thread keeps running, the
 *    limit follows onStoreError;
 *  - a database that Redis refuses (`/99`) keeps the store down ("Redis
 *    refused database 99"): never decided on database 0.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createRequire } from 'node:module';
import { resolvePolicy, resolveRedis } from '../../../../common/config/rate-limit.js';
import type { RateLimitPolicy, RedisConfig } from '../../../../common/config/types.js';
import { H_DOWN_SHARE, RateLimitTable, createRateLimitTable } from '../../../../common/rate-limit-layout.js';
import { CONTINUE, PENDING, RequestContext, type PendingDecision } from '../../../../workers/pipeline/context.js';
import { RateLimitPolicyRunner, type RateLimitEnv } from '../../../../workers/policies/rate-limit/index.js';
import { StrictStore } from '../../../../workers/policies/rate-limit/strict-store.js';
import { startRedis, type PrivateRedis } from '../../../helpers/redis.js';
import { startFakeRedis, type FakeRedis } from './fake-redis.js';

const { Redis } = createRequire(import.meta.url)('ioredis');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const unhandled: unknown[] = [];
const onUnhandled = (err: unknown) => { unhandled.push(err); };

beforeAll(() => {
  process.on('unhandledRejection', onUnhandled);
});

afterAll(() => {
  process.off('unhandledRejection', onUnhandled);
});

const stores: StrictStore[] = [];
afterEach(() => {
  for (const s of stores.splice(0)) s.close();
});

function redisConfig(url: string, commandTimeoutMs: number): RedisConfig {
  return resolveRedis({ url, commandTimeoutMs, connectTimeoutMs: 1000 })!;
}

function strictPolicy(name: string, extra: Record<string, unknown> = {}): RateLimitPolicy {
  return resolvePolicy({ by: 'header:x-k', rate: 1, per: '1h', burst: 1_000_000, mode: 'strict', ...extra }, name, true);
}

/** A worker's view: the shared table, the runner of one route, and the strict store. */
function worker(store: StrictStore, policies: RateLimitPolicy[]) {
  const table = new RateLimitTable(createRateLimitTable(4096));
  const env: RateLimitEnv = { table, metrics: null, trusted: null, strict: store };
  const runner = new RateLimitPolicyRunner(policies, 0, env);
  let n = 0;
  /** One request (key `k`): resolves its result and how long its decision took (ms, from begin to decided). */
  const request = (k: string): Promise<{ result: number; ms: number; status: string }> => {
    const ctx = new RequestContext();
    ctx.reset();
    ctx.now = Date.now();
    ctx.routeId = 'r';
    ctx.clientIp = '10.0.0.1';
    ctx.headers = ['x-k', k];
    const r = runner.onRequest(ctx);
    if (r !== PENDING) return Promise.resolve({ result: r, ms: 0, status: ctx.refusal?.code ?? 'ok' });
    const d = ctx.pending!;
    const t0 = performance.now();
    return new Promise((resolve) => {
      d.begin({
        decided(x: PendingDecision) {
          resolve({ result: x.result, ms: performance.now() - t0, status: x.refusal?.code ?? 'ok' });
        },
      });
    });
  };
  return { table, runner, request, next: () => `k${n++}` };
}

async function redisPid(url: string): Promise<number> {
  const c = new Redis(url);
  try {
    const info = (await c.info('server')) as string;
    return Number(/process_id:(\d+)/.exec(info)![1]);
  } finally {
    c.disconnect();
  }
}

describe('Redis paused (SIGSTOP)', () => {
  let redis: PrivateRedis;

  beforeAll(async () => {
    redis = await startRedis();
  });

  afterAll(async () => {
    await redis?.stop();
  });

  it('no decision waits longer than commandTimeoutMs from when it was asked, however many are in flight', async () => {
    const TIMEOUT = 300;
    const store = new StrictStore(redisConfig(redis.url, TIMEOUT), 'test-strict');
    stores.push(store);
    const w = worker(store, [strictPolicy('s')]);
    // Connected and answering first.
    expect((await w.request(w.next())).result).toBe(CONTINUE);
    const pid = await redisPid(redis.url);
    process.kill(pid, 'SIGSTOP');
    const waits: number[] = [];
    try {
      // Waves of concurrent decisions, asked at different moments while the
      // first ones are still waiting (the case that used to wait twice).
      const all: Promise<{ result: number; ms: number }>[] = [];
      for (let wave = 0; wave < 6; wave++) {
        for (let i = 0; i < 40; i++) all.push(w.request(w.next()));
        await sleep(TIMEOUT / 5);
      }
      for (const r of await Promise.all(all)) {
        expect(r.result).toBe(CONTINUE); // allow_local: decided in memory
        waits.push(r.ms);
      }
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    waits.sort((a, b) => a - b);
    const max = waits[waits.length - 1]!;
    console.log(`[strict] Redis paused, ${waits.length} decisions, commandTimeoutMs ${TIMEOUT}: wait p50 ${waits[waits.length >> 1]!.toFixed(1)} ms, max ${max.toFixed(1)} ms`);
    // The bound, with room for a loaded machine's timer lateness (2 × would be 600).
    expect(max).toBeLessThan(TIMEOUT + 80);
    expect(unhandled).toEqual([]);
    // Back once it answers again.
    await expect.poll(() => store.up, { timeout: 5000 }).toBe(true);
  });
});

describe('a Redis that answers errors', () => {
  let fake: FakeRedis;

  beforeAll(async () => {
    fake = await startFakeRedis();
  });

  afterAll(async () => {
    await fake?.close();
  });

  it('to every command (SELECT, EVALSHA, EVAL, PING): nothing escapes, the limits follow onStoreError', async () => {
    fake.failAll = true;
    const store = new StrictStore(redisConfig(`${fake.url}/3`, 200), 'test-strict');
    stores.push(store);
    const allow = worker(store, [strictPolicy('a')]);
    const deny = worker(store, [strictPolicy('d', { onStoreError: 'deny' })]);
    const results: string[] = [];
    for (let i = 0; i < 20; i++) {
      results.push((await allow.request(allow.next())).status, (await deny.request(deny.next())).status);
      await sleep(20);
    }
    expect(new Set(results)).toEqual(new Set(['ok', 'rate_limit_store_unavailable']));
    await sleep(300);
    expect(store.up).toBe(false);
    expect(unhandled).toEqual([]);
  });

  it('allow_local falls back on this instance\'s share from the first failed call, before the admin thread lowers H_SHARE', async () => {
    // The worker's store sees Redis fail before the admin thread's next sync
    // does: H_SHARE is still 1 then; H_DOWN_SHARE (1/instances, kept by the
    // admin thread from its heartbeats) already says 1/2. A burst of 4 on
    // two instances is 2 here, from the first request on (CI once saw 3).
    fake.failAll = true;
    for (const key of ['first-call', 'already-down']) {
      const store = new StrictStore(redisConfig(fake.url, 200), 'test-strict');
      stores.push(store);
      const allow = worker(store, [strictPolicy('a', { burst: 4 })]);
      allow.table.f64[H_DOWN_SHARE] = 0.5;
      expect(allow.table.share).toBe(1);
      if (key === 'already-down') await allow.request('warm-up');
      const statuses: string[] = [];
      for (let i = 0; i < 6; i++) statuses.push((await allow.request(key)).status);
      expect(statuses, key).toEqual(['ok', 'ok', 'rate_limited', 'rate_limited', 'rate_limited', 'rate_limited']);
    }
    expect(unhandled).toEqual([]);
  });

  it('to EVALSHA and EVAL only (scripts refused, connection fine): store errors, nothing escapes', async () => {
    fake.failAll = false;
    fake.fail = new Set(['evalsha', 'eval']);
    const store = new StrictStore(redisConfig(fake.url, 200), 'test-strict');
    stores.push(store);
    const deny = worker(store, [strictPolicy('d', { onStoreError: 'deny' })]);
    const first = await deny.request(deny.next());
    expect(first.status).toBe('rate_limit_store_unavailable');
    expect(store.up).toBe(false);
    // Probes (PING) answer, so it comes back, fails again: never a crash.
    for (let i = 0; i < 10; i++) {
      await deny.request(deny.next());
      await sleep(30);
    }
    expect(unhandled).toEqual([]);
  });
});

describe('a database Redis refuses', () => {
  let redis: PrivateRedis;

  beforeAll(async () => {
    redis = await startRedis();
  });

  afterAll(async () => {
    await redis?.stop();
  });

  it('keeps the strict store down ("Redis refused database 99"), never deciding on database 0', async () => {
    const store = new StrictStore(redisConfig(`${redis.url}/99`, 200), 'test-strict');
    stores.push(store);
    const w = worker(store, [strictPolicy('d', { onStoreError: 'deny' })]);
    await sleep(300);
    expect(store.up).toBe(false);
    expect(store.lastReason).toContain('Redis refused database 99');
    for (let i = 0; i < 5; i++) expect((await w.request(w.next())).status).toBe('rate_limit_store_unavailable');
    const probe = new Redis(redis.url);
    expect(await probe.dbsize()).toBe(0); // nothing was decided in database 0
    probe.disconnect();
    expect(unhandled).toEqual([]);
  });

  it('a database that is not a number (validation refuses it) is never connected to', async () => {
    const store = new StrictStore(redisConfig(`${redis.url}/abc`, 200), 'test-strict');
    stores.push(store);
    const w = worker(store, [strictPolicy('a')]);
    expect((await w.request(w.next())).result).toBe(CONTINUE); // allow_local
    expect(store.up).toBe(false);
    await sleep(200);
    expect(unhandled).toEqual([]);
  });
});
