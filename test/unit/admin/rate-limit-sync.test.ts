/**
 * The admin thread's Redis sync of cluster rate limits (admin/rate-limit/),
 * white-box but real: each "instance" is a real bucket table with the
 * real worker policy (RateLimitPolicyRunner) deciding requests on it and
 * a real RateLimitSync pushing and pulling through a private redis-server
 * (test/helpers/redis.ts). No gateway process: the sockets, threads and
 * 10-second loads are in test/integration/rate-limit-cluster.test.ts.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { resolvePolicy } from '../../../common/config/rate-limit.js';
import type { GatewayConfig, RateLimitPolicy } from '../../../common/config/types.js';
import {
  E_TAG, F_A, F_PENDING, H_SHARE, H_STORE_DOWN, RateLimitTable, createRateLimitTable, hashKey,
} from '../../../common/rate-limit-layout.js';
import { RateLimitSync } from '../../../admin/rate-limit/index.js';
import { bucketKey, hex8, keySlot, policyKeyHead } from '../../../admin/rate-limit/script.js';
import { classifyStoreError, describeStore, safeMessage } from '../../../admin/rate-limit/store.js';
import { RequestContext, CONTINUE } from '../../../workers/pipeline/context.js';
import { RateLimitPolicyRunner, type RateLimitEnv } from '../../../workers/policies/rate-limit/index.js';
import { startRedis, type PrivateRedis } from '../../helpers/redis.js';
import { startRedisCluster, startSentinel } from '../../helpers/redis-topologies.js';
import { Cluster } from 'ioredis';

const INTERVAL = 20;

let redis: PrivateRedis;
let probe: Redis;
const live: RateLimitSync[] = [];

beforeAll(async () => {
  redis = await startRedis();
  // Waits for its connection (offline queue) when a test restarted the server.
  probe = new Redis(redis.port, '127.0.0.1', { lazyConnect: true, retryStrategy: () => 50 });
  probe.on('error', () => {});
  await probe.connect();
});

afterAll(async () => {
  probe?.disconnect();
  await redis?.stop();
});

afterEach(async () => {
  await Promise.all(live.splice(0).map((s) => s.stop()));
  if (redis.running) await probe.flushall();
});

const clock = () => Date.now() + (performance.now() % 1);

function config(policies: RateLimitPolicy[], redisOver: Record<string, unknown> = {}): GatewayConfig {
  return {
    redis: {
      url: redis.url, sentinels: null, name: null, cluster: null, keyPrefix: 'tp:',
      syncIntervalMs: INTERVAL, connectTimeoutMs: 1000, commandTimeoutMs: 300, ...redisOver,
    },
    rateLimits: {},
    routes: [{ id: 'r', rateLimit: policies }],
  } as unknown as GatewayConfig;
}

function policy(name: string, raw: Record<string, unknown>): RateLimitPolicy {
  return resolvePolicy(raw, name, true);
}

/** One gateway instance, without the gateway: a table, the worker's policy runner, the admin thread's sync. */
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

  /** One request against policy `p` (by global unless `ip` says whose): admitted? */
  request(p: RateLimitPolicy, ip = '10.0.0.1'): boolean {
    const c = this.ctx;
    c.reset();
    c.now = clock();
    c.routeId = 'r';
    c.clientIp = ip;
    return this.runners.get(p.tag)!.onRequest(c) === CONTINUE;
  }

  /** `n` requests at once; how many were admitted. */
  burst(p: RateLimitPolicy, n: number): number {
    let ok = 0;
    for (let i = 0; i < n; i++) if (this.request(p)) ok++;
    return ok;
  }

  get down(): boolean {
    return this.table.f64[H_STORE_DOWN] === 1;
  }

  get share(): number {
    return this.table.f64[H_SHARE]!;
  }

  /** Pending admissions left in the table (not yet pushed). */
  pending(): number {
    let n = 0;
    for (let e = 0; e < this.table.capacity; e++) {
      const b = this.table.base(e);
      if (this.table.i32[b + E_TAG] !== 0) n += this.table.f64[(b >> 1) + F_PENDING]!;
    }
    return n;
  }

  /** F_A of the bucket of `p` for key `text` (by global: ''), or null. */
  cellA(p: RateLimitPolicy, kind: number, text: string): number | null {
    const h = new Int32Array(2);
    hashKey(p.tag ^ Math.imul(kind, 0x9e3779b9), text, h);
    for (let e = 0; e < this.table.capacity; e++) {
      const b = this.table.base(e);
      if (this.table.i32[b + E_TAG] === p.tag && this.table.i32[b + 2] === h[0] && this.table.i32[b + 3] === h[1]) return this.table.f64[(b >> 1) + F_A]!;
    }
    return null;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = performance.now() + ms;
  while (!(await cond())) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** The Redis key of a `by: global` bucket of `p`. */
function globalKey(p: RateLimitPolicy, window?: number): string {
  const h = new Int32Array(2);
  hashKey(p.tag ^ Math.imul(2 /* K_GLOBAL */, 0x9e3779b9), '', h);
  return bucketKey(policyKeyHead('tp:', p.tag), h[0]!, h[1]!, window);
}

describe('key names and slots', () => {
  it('names a bucket by policy tag and key hash only: the same on every instance, start and config version', () => {
    const head = policyKeyHead('tp:', 0x0a0b0c0d);
    expect(bucketKey(head, 1, -1)).toBe('tp:rl:{0a0b0c0d:00000001ffffffff}');
    expect(bucketKey(head, 0x7fffffff, 0, 1764547200000)).toBe('tp:rl:{0a0b0c0d:7fffffff00000000}:1764547200000');
    expect(hex8(-1)).toBe('ffffffff');
    // Tags are hashes of a policy's meaning, not of the config version or the instance.
    const a = policy('standard', { by: 'ip', rate: 10, per: '1s' });
    const b = policy('standard', { by: 'ip', rate: 10, per: '1s', headers: 'legacy', onStoreError: 'deny' });
    expect(b.tag).toBe(a.tag);
    expect(policy('standard', { by: 'ip', rate: 11, per: '1s' }).tag).not.toBe(a.tag);
  });

  it('computes Redis Cluster slots as Redis does (CRC16 XMODEM, hash tags)', () => {
    // Expected values from `CLUSTER KEYSLOT` of redis-server 7.0 in cluster mode.
    expect(keySlot('123456789')).toBe(12739);
    expect(keySlot('foo')).toBe(12182);
    expect(keySlot('foo{}{bar}')).toBe(8363); // empty tag: the whole key
    expect(keySlot('foo{{bar}}zap')).toBe(4015);
    expect(keySlot('foo{bar}{zap}')).toBe(5061);
    expect(keySlot('tp:rl:{0000002a:0000000500000006}:1000')).toBe(3052);
    // A bucket's keys (its windows) share a slot.
    const head = policyKeyHead('tp:', 42);
    expect(keySlot(bucketKey(head, 5, 6, 1000))).toBe(3052);
    expect(keySlot(bucketKey(head, 5, 6, 0))).toBe(3052);
    expect(keySlot(bucketKey(head, 5, 6))).toBe(3052);
  });

  it('never shows credentials in what it logs', () => {
    expect(describeStore({ url: 'redis://user:s3cret@h:6379/0' } as never)).not.toContain('s3cret');
    expect(safeMessage(new Error('failed for redis://:s3cret@h:1'))).not.toContain('s3cret');
    expect(classifyStoreError(new Error('Command timed out'))).toBe('timeout');
    expect(classifyStoreError(new Error('connect ECONNREFUSED 127.0.0.1:1'))).toBe('connection');
    expect(classifyStoreError(new Error("Stream isn't writeable and enableOfflineQueue options is false"))).toBe('connection');
    expect(classifyStoreError(new Error('OOM command not allowed when used memory > maxmemory'))).toBe('command');
  });
});

describe('push and pull', () => {
  it('token_bucket: pushes what one instance admitted, and the other instance learns it (debt included)', async () => {
    const p = policy('tb', { by: 'global', rate: 10, per: '1m', burst: 10 });
    const cfg = config([p]);
    const a = await new Instance().start(cfg);
    const b = await new Instance().start(cfg);
    expect(a.sync.storeState).toBe('up');
    // B touches the key first, so that it has a bucket to learn into.
    expect(b.request(p)).toBe(true);
    await b.sync.synced();
    expect(a.burst(p, 20)).toBe(10); // A's own bucket started full: it does not know about B's request yet
    await until(async () => Number((await probe.get(globalKey(p)))?.split(' ')[0]) < 0, 1000, 'the push');
    // Redis: 10 - 1 - 10 = -1 (plus the refill of a few ms at 10/min).
    const [tokens] = (await probe.get(globalKey(p)))!.split(' ').map(Number);
    expect(tokens).toBeGreaterThan(-1.01);
    expect(tokens).toBeLessThan(-0.9);
    // Both instances learn the debt (B is warm: it pushed within WARM_MS).
    await until(() => (b.cellA(p, 2, '') ?? 1) < 0 && (a.cellA(p, 2, '') ?? 1) < 0, 1000, 'the pull');
    expect(a.request(p)).toBe(false);
    expect(b.request(p)).toBe(false);
    expect(await probe.pttl(globalKey(p))).toBeGreaterThan(60_000); // expires once full again (+ margin), not before
  });

  it('gcra, fixed_window, sliding_window and quota: pushes counts to the key of their window, pulls the total', async () => {
    const ps = [
      policy('g', { by: 'global', rate: 10, per: '1m', algorithm: 'gcra', burst: 5 }),
      policy('fw', { by: 'global', rate: 10, per: '1h', algorithm: 'fixed_window' }),
      policy('sw', { by: 'global', rate: 10, per: '1h', algorithm: 'sliding_window' }),
      policy('q', { by: 'global', quota: 10, period: 'day' }),
    ];
    const cfg = config(ps);
    const a = await new Instance().start(cfg);
    const b = await new Instance().start(cfg);
    for (const p of ps) expect(b.request(p), p.name).toBe(true);
    await b.sync.synced();
    for (const p of ps) expect(a.burst(p, 3), p.name).toBe(3);
    await a.sync.synced();
    const hour = Date.now() - (Date.now() % 3_600_000);
    const day = Date.now() - (Date.now() % 86_400_000);
    expect(await probe.get(globalKey(ps[1]!, hour))).toBe('4');
    expect(await probe.get(globalKey(ps[2]!, hour))).toBe('4');
    expect(await probe.get(globalKey(ps[3]!, day))).toBe('4');
    // GCRA: four emission intervals (6 s each) ahead of Redis's clock.
    expect(await probe.pttl(globalKey(ps[0]!))).toBeGreaterThan(4 * 6000);
    // Windows expire after the window they count (+ margin): the hour, the hour after (sliding), the day.
    expect(await probe.pttl(globalKey(ps[1]!, hour))).toBeLessThanOrEqual(3_600_000 + 10_000);
    expect(await probe.pttl(globalKey(ps[2]!, hour))).toBeGreaterThan(3_600_000);
    expect(await probe.pttl(globalKey(ps[3]!, day))).toBeLessThanOrEqual(86_400_000 + 10_000);
    // B pulls what A counted: the windows and the quota count 4 on both.
    await until(() => ps.slice(1).every((p) => b.cellA(p, 2, '') === 4), 1000, 'B to pull');
    expect(b.burst(ps[1]!, 10)).toBe(6);
    expect(b.burst(ps[3]!, 10)).toBe(6);
  });

  it('a quota survives a restart: a new instance learns the count from Redis on its first sync', async () => {
    const q = policy('q', { by: 'ip', quota: 10, period: 'month' });
    const a = await new Instance().start(config([q]));
    expect(a.burst(q, 7)).toBe(7);
    await a.sync.stop(); // shutdown: a last push
    const month = await probe.keys('tp:rl:*:*');
    expect(month).toHaveLength(1);
    expect(await probe.get(month[0]!)).toBe('7');
    const c = await new Instance().start(config([q]));
    expect(c.request(q)).toBe(true); // first touch: decided before the first sync
    await until(() => c.cellA(q, 1, '10.0.0.1') === 8, 1000, 'C to learn the count');
    expect(c.burst(q, 5)).toBe(2);
    await c.sync.synced();
    expect(await probe.get(month[0]!)).toBe('10');
  });

  it('stop() pushes what was admitted since the last cycle before closing', async () => {
    const p = policy('tb', { by: 'global', rate: 100, per: '1h' });
    const a = await new Instance().start(config([p], { syncIntervalMs: 10_000 }));
    await sleep(50); // the first cycle (at configure) is done
    expect(a.burst(p, 12)).toBe(12);
    expect(a.pending()).toBe(12);
    await a.sync.stop();
    expect(a.pending()).toBe(0);
    const [tokens] = (await probe.get(globalKey(p)))!.split(' ').map(Number);
    // 100 - 12, plus a few ms of refill; the test clock (Date.now() plus a fraction) may step back by < 1 ms.
    expect(tokens).toBeGreaterThanOrEqual(87.999);
    expect(tokens).toBeLessThan(88.1);
    expect(await probe.zcard('tp:rl:instances')).toBe(0); // it left the instance set
  });
});

describe('Redis away', () => {
  it('marks the store down with this instance\'s share, drops rate-limit admissions, keeps quota ones for after', async () => {
    const tb = policy('tb', { by: 'global', rate: 600, per: '1m' });
    const q = policy('q', { by: 'global', quota: 100, period: 'day' });
    const cfg = config([tb, q]);
    const a = await new Instance().start(cfg);
    const b = await new Instance().start(cfg);
    await until(async () => (await probe.zcard('tp:rl:instances')) === 2, 2000, 'two heartbeats');
    await sleep(1100); // both have beaten since the other arrived: each knows there are 2
    const day = Date.now() - (Date.now() % 86_400_000);
    a.burst(q, 3);
    await until(async () => (await probe.get(globalKey(q, day))) === '3' && a.cellA(q, 2, '') === 3, 1000, 'A to push and pull');
    await redis.kill();
    await until(() => a.down && b.down, 2000, 'both to see the store down');
    expect(a.sync.storeState).toBe('down');
    expect(a.share).toBe(0.5);
    const stats = a.sync.stats();
    expect(stats.up).toBe(false);
    expect(stats.errors.connection + stats.errors.timeout).toBeGreaterThan(0);
    // Decided locally meanwhile: rate-limit admissions are dropped, quota ones kept.
    expect(a.burst(tb, 5)).toBe(5);
    expect(a.burst(q, 4)).toBe(4);
    await until(() => a.pending() === 4, 1000, 'the rate-limit admissions to be dropped');
    await redis.restart();
    await until(() => !a.down && !b.down, 8000, 'both to see the store up again');
    expect(a.share).toBe(1);
    await a.sync.synced();
    expect(a.pending()).toBe(0);
    // Redis restarted empty: A pushed the 4 counted meanwhile, and raised the count to the 7
    // it knows (3 + 4): a Redis that lost its data never restarts a quota.
    expect(await probe.get(globalKey(q, day))).toBe('7');
    // A still knows its count: a Redis that lost its data never lowers a local count.
    expect(a.cellA(q, 2, '')).toBe(7);
  }, 20_000);

  it('starts with Redis unreachable: the first outcome (down) is known when configure() resolves, then it connects', async () => {
    await redis.kill();
    const p = policy('tb', { by: 'global', rate: 10, per: '1s', onStoreError: 'deny' });
    const t0 = performance.now();
    const a = await new Instance().start(config([p]));
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(a.sync.storeState).toBe('down');
    expect(a.down).toBe(true);
    expect(a.share).toBe(1); // no instance count known yet
    await redis.restart();
    await until(() => a.sync.storeState === 'up', 8000, 'the store to come up');
    expect(a.down).toBe(false);
  }, 15_000);
});

describe('reloads', () => {
  it('a changed policy syncs under its new tag; the others keep theirs; redis removed stops the store', async () => {
    const keep = policy('keep', { by: 'global', rate: 10, per: '1m' });
    const old = policy('chg', { by: 'global', rate: 10, per: '1m' });
    const a = await new Instance().start(config([keep, old]));
    a.burst(keep, 2);
    a.burst(old, 2);
    await a.sync.synced();
    const changed = policy('chg', { by: 'global', rate: 20, per: '1m' });
    await a.apply(config([keep, changed]));
    a.burst(keep, 1);
    a.burst(changed, 1);
    await a.sync.synced();
    expect(Number((await probe.get(globalKey(keep)))!.split(' ')[0])).toBeLessThan(7.1);
    expect(Number((await probe.get(globalKey(changed)))!.split(' ')[0])).toBeGreaterThan(18.9);
    expect(Number((await probe.get(globalKey(old)))!.split(' ')[0])).toBeLessThan(8.1);
    // Without redis the policies are local (new tags); the store closes and the header says "not down".
    a.table.f64[H_STORE_DOWN] = 1;
    await a.apply({ ...config([]), redis: null } as GatewayConfig);
    expect(a.sync.storeState).toBe('off');
    expect(a.down).toBe(false);
    expect(a.sync.stats().configured).toBe(false);
  });
});

describe('Redis Cluster and Sentinel (ioredis options)', () => {
  it('Cluster: script calls grouped by slot, both windows of a bucket in one slot, shared between instances', async () => {
    const cluster = await startRedisCluster(3);
    const check = new Cluster(cluster.nodes, { lazyConnect: true });
    try {
      const tb = policy('tb', { by: 'ip', rate: 2, per: '1h' });
      const sw = policy('sw', { by: 'ip', rate: 2, per: '1h', algorithm: 'sliding_window' });
      // A generous command timeout: this test is about routing, and a loaded machine (other test
      // files running beside it) sometimes takes longer than 300 ms for a round over three nodes.
      const cfg = config([tb, sw], { url: null, cluster: cluster.nodes, commandTimeoutMs: 3000 });
      const a = await new Instance().start(cfg);
      const b = await new Instance().start(cfg);
      expect(a.sync.storeState).toBe('up');
      const ips = Array.from({ length: 300 }, (_, i) => `10.1.${i >> 8}.${i & 255}`);
      // B first (one request per key: it has the buckets to learn into), then A takes the rest.
      for (const ip of ips) {
        expect(b.request(tb, ip)).toBe(true);
        expect(b.request(sw, ip)).toBe(true);
      }
      await b.sync.synced();
      for (const ip of ips) {
        expect(a.request(tb, ip)).toBe(true);
        expect(a.request(sw, ip)).toBe(true);
      }
      await a.sync.synced();
      await b.sync.synced();
      // The keys spread over the three masters; each bucket's debt or count reached B.
      let refused = 0;
      for (const ip of ips) if (!b.request(tb, ip) && !b.request(sw, ip)) refused++;
      expect(refused).toBe(ips.length);
      for (const s of [a, b]) {
        const st = s.sync.stats();
        expect(st.errors).toEqual({ connection: 0, timeout: 0, command: 0 });
        expect(s.sync.storeState).toBe('up');
      }
      await check.connect();
      const masters = check.nodes('master');
      expect(masters).toHaveLength(3);
      const perNode = await Promise.all(masters.map((m) => m.dbsize()));
      expect(perNode.every((n) => n > 50)).toBe(true);
      const hour = Date.now() - (Date.now() % 3_600_000);
      const h = new Int32Array(2);
      hashKey(sw.tag ^ Math.imul(1 /* K_IP */, 0x9e3779b9), ips[7]!, h);
      expect(await check.get(bucketKey(policyKeyHead('tp:', sw.tag), h[0]!, h[1]!, hour))).toBe('2');
    } finally {
      check.disconnect();
      await Promise.all(live.splice(0).map((s) => s.stop()));
      await cluster.stop();
    }
  }, 30_000);

  it('Sentinel: connects to the master the sentinel names', async () => {
    const sentinel = await startSentinel();
    const direct = new Redis(sentinel.masterPort, '127.0.0.1', { lazyConnect: true });
    try {
      const tb = policy('tb', { by: 'global', rate: 10, per: '1h' });
      const a = await new Instance().start(config([tb], { url: null, sentinels: sentinel.sentinels, name: sentinel.name }));
      expect(a.sync.storeState).toBe('up');
      expect(a.burst(tb, 3)).toBe(3);
      await a.sync.synced();
      await direct.connect();
      const [tokens] = (await direct.get(globalKey(tb)))!.split(' ').map(Number);
      expect(tokens).toBeGreaterThan(6.99);
      expect(tokens).toBeLessThan(7.01);
    } finally {
      direct.disconnect();
      await Promise.all(live.splice(0).map((s) => s.stop()));
      await sentinel.stop();
    }
  }, 30_000);
});
