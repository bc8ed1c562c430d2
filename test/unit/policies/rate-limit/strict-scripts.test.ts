/**
 * The strict limits' Lua scripts (workers/policies/rate-limit/
 * strict-scripts.ts) against their in-memory twins (algorithms.ts), in a
 * real Redis (a private redis-server): each script returns the Redis clock
 * it decided at, and the JS algorithm replayed at those instants on a
 * bucket of its own must give the same answer, bit for bit (allowed,
 * remaining, resetMs, retryMs, the window), so the headers and 429 bodies
 * of strict limits are those of in-memory limits. Undo too. Schedules mix
 * bursts, refills and window changes (real sleeps: Redis has its own
 * clock).
 *
 * Also: the key layout (policy tag, 64-bit key hash, no client text) and
 * expiry (an idle key disappears once its bucket is fresh again).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRequire } from 'node:module';
import {
  ALG_FIXED_WINDOW, ALG_GCRA, ALG_SLIDING_WINDOW, ALG_TOKEN_BUCKET, Decision, fixedWindow, gcra, slidingWindow, tokenBucket, undo,
  type LimitParams,
} from '../../../../workers/policies/rate-limit/algorithms.js';
import { DECIDE_COMMANDS, STRICT_SCRIPTS, UNDO_COMMANDS } from '../../../../workers/policies/rate-limit/strict-scripts.js';
import { strictKey } from '../../../../workers/policies/rate-limit/strict.js';
import { startRedis, type PrivateRedis } from '../../../helpers/redis.js';

const { Redis } = createRequire(import.meta.url)('ioredis');

let redis: PrivateRedis;
let client: any;

beforeAll(async () => {
  redis = await startRedis();
  client = new Redis(redis.url);
  for (let i = 0; i < STRICT_SCRIPTS.length; i++) {
    client.defineCommand(DECIDE_COMMANDS[i], { numberOfKeys: 1, lua: STRICT_SCRIPTS[i]!.decide });
    client.defineCommand(UNDO_COMMANDS[i], { numberOfKeys: 1, lua: STRICT_SCRIPTS[i]!.undo });
  }
});

afterAll(async () => {
  await client?.quit();
  await redis?.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Reply = [number, number, string, string, string, string];

/** One bucket replayed in JS beside its Redis key. */
class Twin {
  readonly f = new Float64Array(8);
  readonly d = new Decision();
  readonly args: string[];
  private n = 0;

  constructor(readonly alg: number, readonly p: LimitParams, readonly key: string) {
    this.args = [String(p.rate), String(p.perMs), String(p.burst)];
  }

  /** Decides in Redis and in JS at the instant Redis used; returns both. */
  async decide(): Promise<{ redis: Reply; js: { allowed: number; remaining: number; resetMs: number; retryMs: number; window: number }; now: number }> {
    const existed = (await client.exists(this.key)) === 1;
    const r = (await client[DECIDE_COMMANDS[this.alg]!](this.key, ...this.args)) as Reply;
    const now = Number(r[5]);
    // A key Redis let expire is a fresh bucket; so is the JS one by then (F_EXPIRES), but replay exactly.
    const isNew = !existed;
    if (isNew && this.n > 0) this.f.fill(0);
    this.n++;
    const { f, d, p } = this;
    let window = 0;
    switch (this.alg) {
      case ALG_TOKEN_BUCKET: tokenBucket(f, 0, isNew, now, p, 1, d); break;
      case ALG_GCRA: gcra(f, 0, isNew, now, p, 1, d); break;
      case ALG_FIXED_WINDOW: window = now - (now % p.perMs); fixedWindow(f, 0, isNew, now, p, 1, d); break;
      case ALG_SLIDING_WINDOW: window = now - (now % p.perMs); slidingWindow(f, 0, isNew, now, p, 1, d); break;
    }
    return { redis: r, js: { allowed: d.allowed ? 1 : 0, remaining: d.remaining, resetMs: d.resetMs, retryMs: d.retryMs, window }, now };
  }

  async undo(windowText: string): Promise<number> {
    const gave = (await client[UNDO_COMMANDS[this.alg]!](this.key, ...this.args, windowText)) as number;
    if (gave === 1 || this.alg === ALG_TOKEN_BUCKET || this.alg === ALG_GCRA) undo(this.f, 0, this.alg, this.p, 1, Number(windowText));
    return gave;
  }
}

/** Runs a schedule (numbers: sleep that many ms; 'u': undo the last admission) and compares every decision. */
async function replay(t: Twin, schedule: (number | 'd' | 'u')[]): Promise<{ decisions: number; admitted: number; refused: number; undone: number }> {
  let decisions = 0;
  let admitted = 0;
  let refused = 0;
  let undone = 0;
  let lastAdmittedWindow: string | null = null;
  for (const step of schedule) {
    if (typeof step === 'number') {
      await sleep(step);
      continue;
    }
    if (step === 'u') {
      if (lastAdmittedWindow === null) continue;
      undone += await t.undo(lastAdmittedWindow);
      lastAdmittedWindow = null;
      continue;
    }
    const { redis: r, js, now } = await t.decide();
    const at = `decision ${decisions} at ${now}`;
    expect(r[0], `${at}: allowed`).toBe(js.allowed);
    expect(r[1], `${at}: remaining`).toBe(js.remaining);
    expect(Number(r[2]), `${at}: resetMs`).toBe(js.resetMs);
    expect(Number(r[3]), `${at}: retryMs`).toBe(js.retryMs);
    expect(Number(r[4]), `${at}: window`).toBe(js.window);
    decisions++;
    if (r[0] === 1) {
      admitted++;
      lastAdmittedWindow = r[4];
    } else {
      refused++;
    }
  }
  return { decisions, admitted, refused, undone };
}

const d = 'd' as const;
const u = 'u' as const;
const burst = (n: number) => Array<'d'>(n).fill(d);

describe('strict scripts decide exactly as the in-memory algorithms', () => {
  it('token_bucket: burst, refusals, refill, undo', async () => {
    const t = new Twin(ALG_TOKEN_BUCKET, { algorithm: ALG_TOKEN_BUCKET, rate: 7, perMs: 1300, burst: 3 }, 'tb:1');
    const s = await replay(t, [...burst(5), 230, ...burst(3), u, d, 450, ...burst(4), 30, u, d]);
    // 3 of the first 5; one refilled in 230 ms; the undone one back again; ~2 refilled in 450 ms.
    // (Rates whose intervals are not round numbers, so rounding differences would show.)
    expect(s.admitted).toBeGreaterThanOrEqual(7);
    expect(s.refused).toBeGreaterThanOrEqual(4);
    expect(s.undone).toBe(2);
  });

  it('gcra: spacing, burst, undo (arrival time kept exactly)', async () => {
    const t = new Twin(ALG_GCRA, { algorithm: ALG_GCRA, rate: 7, perMs: 700.3, burst: 2 }, 'gcra:1');
    const s = await replay(t, [...burst(4), 110, ...burst(2), u, d, 60, d, 250, ...burst(4), u, d, 40, d, 70, d, 100, d]);
    expect(s.admitted).toBeGreaterThanOrEqual(6);
    expect(s.refused).toBeGreaterThanOrEqual(3);
  });

  it('fixed_window: counts per window aligned on the clock, across window changes', async () => {
    // 1 s windows, and the schedule starts just after a window starts (Redis runs on this machine's
    // clock): each burst falls in one window even when a loaded machine slows every round trip.
    const t = new Twin(ALG_FIXED_WINDOW, { algorithm: ALG_FIXED_WINDOW, rate: 3, perMs: 1000, burst: 3 }, 'fw:1');
    while (Date.now() % 1000 < 5 || Date.now() % 1000 > 40) await sleep(2);
    const s = await replay(t, [...burst(5), u, d, 1010, ...burst(4), 1010, ...burst(2), u, d]);
    expect(s.admitted).toBeGreaterThanOrEqual(7);
    expect(s.refused).toBeGreaterThanOrEqual(2);
  });

  it('sliding_window: previous window weighted, across window changes', async () => {
    const t = new Twin(ALG_SLIDING_WINDOW, { algorithm: ALG_SLIDING_WINDOW, rate: 4, perMs: 301, burst: 4 }, 'sw:1');
    const s = await replay(t, [...burst(6), 160, ...burst(3), 160, ...burst(3), u, d, 90, ...burst(3), 320, ...burst(5)]);
    expect(s.admitted).toBeGreaterThanOrEqual(8);
    expect(s.refused).toBeGreaterThanOrEqual(4);
  });

  it('a window undo for a window that is over gives nothing back (as in memory)', async () => {
    const t = new Twin(ALG_FIXED_WINDOW, { algorithm: ALG_FIXED_WINDOW, rate: 2, perMs: 100, burst: 2 }, 'fw:2');
    const first = await t.decide();
    expect(first.redis[0]).toBe(1);
    await sleep(120);
    await t.decide(); // a new window
    expect(await t.undo(first.redis[4])).toBe(0);
  });
});

describe('strict keys', () => {
  it('are named by the policy tag and the 64-bit key hash, zero-padded hex', () => {
    expect(strictKey('tp:rl:s:', 0x1a2b, -1, 5)).toBe('tp:rl:s:00001a2b:ffffffff00000005');
    expect(strictKey('x:rl:s:', -2, 0, 0)).toBe('x:rl:s:fffffffe:0000000000000000');
  });

  it('expire once their bucket is fresh again, and not before', async () => {
    // token bucket 10 per second, burst 2: one request leaves 100 ms to full.
    const key = 'tb:expiry';
    const args = ['10', '1000', '2'];
    await client[DECIDE_COMMANDS[ALG_TOKEN_BUCKET]!](key, ...args);
    const ttl = await client.pttl(key);
    expect(ttl).toBeGreaterThan(80);
    expect(ttl).toBeLessThanOrEqual(101);
    await sleep(ttl + 30);
    expect(await client.exists(key)).toBe(0);
  });
});
