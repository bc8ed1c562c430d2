/**
 * The shared bucket table (common/rate-limit-layout.ts), white-box:
 * sizes, hashing (stable, kinds kept apart), lookup (claim, find again,
 * probing, wrap-around), reuse of expired slots and only those, a
 * full probe window (with `evict`, as requests do: the bucket that expires
 * soonest is evicted, never a protected (quota) one, preferably one with
 * nothing unsynced; the overflow bucket only when all are protected, or
 * without `evict`), locks (a dead holder's
 * lock is taken over after LOCK_STEAL_MS, a live one's never), and real
 * worker_threads on one SharedArrayBuffer: many threads on one key admit
 * exactly the limit; many threads creating the same keys at once make one
 * bucket per key, also when they disagree about which slots have expired,
 * and when they evict each other's buckets from a table too small for
 * their keys.
 */
import { Worker } from 'node:worker_threads';
import { afterAll, describe, expect, it } from 'vitest';
import {
  E_HI, E_LO, E_LOCK, E_TAG, ENTRY_BYTES, F_A, F_B, F_EXPIRES, F_PENDING, LOCK_STEAL_MS, MAX_CAPACITY, MIN_CAPACITY, OVERFLOW_ENTRIES,
  PROBE_WINDOW, RateLimitTable, createRateLimitTable, hashKey, roundCapacity, tableBytes, tagOf, type FindResult,
} from '../../../../common/rate-limit-layout.js';
import { K_HEADER, K_IP } from '../../../../workers/policies/rate-limit/keys.js';
import { T0 } from './harness.js';
import { removeThreadModules, runThreads } from './threads.js';

const found = (): FindResult => ({ isNew: false, overflowed: false, evicted: false });

function hashOf(tag: number, text: string): [number, number] {
  const h = new Int32Array(2);
  hashKey(tag, text, h);
  return [h[0]!, h[1]!];
}

/** Claims (tag, hi, lo) and leaves it live until `expires`, unlocked. */
function put(t: RateLimitTable, tag: number, hi: number, lo: number, now: number, expires: number): number {
  const r = found();
  const e = t.find(tag, hi, lo, now, r);
  const fb = t.base(e) >> 1;
  t.f64[fb + F_A] = 1;
  t.f64[fb + F_EXPIRES] = expires;
  t.unlock(e);
  return e;
}

function entriesOf(t: RateLimitTable, tag: number, hi: number, lo: number): number[] {
  const out: number[] = [];
  for (let e = 0; e < t.capacity + OVERFLOW_ENTRIES; e++) {
    const b = t.base(e);
    if (t.i32[b + E_TAG] === tag && t.i32[b + E_HI] === hi && t.i32[b + E_LO] === lo) out.push(e);
  }
  return out;
}

describe('size', () => {
  it('rounds the capacity up to a power of two within bounds, 64 bytes per entry plus header and overflow buckets', () => {
    expect(roundCapacity(1)).toBe(MIN_CAPACITY);
    expect(roundCapacity(1024)).toBe(1024);
    expect(roundCapacity(1025)).toBe(2048);
    expect(roundCapacity(262_144)).toBe(262_144);
    expect(roundCapacity(MAX_CAPACITY * 4)).toBe(MAX_CAPACITY);
    expect(tableBytes(262_144)).toBe((1 + 262_144 + OVERFLOW_ENTRIES) * ENTRY_BYTES);
    const t = new RateLimitTable(createRateLimitTable(3000));
    expect(t.capacity).toBe(4096);
    expect(t.share).toBe(1);
    expect(t.storeDown).toBe(false);
  });
});

describe('hashing', () => {
  it('gives the same 64 bits for the same text on every call, and the values it always gave (Redis keys and the quota file are named by them)', () => {
    expect(hashOf(0x12345678, '10.0.0.7')).toEqual(hashOf(0x12345678, '10.0.0.7'));
    // Pinned: a change here renames every Redis key and forgets every saved quota.
    expect(hashOf(0x12345678, '10.0.0.7')).toEqual(PINNED_IP);
    expect(hashOf(tagOf('["standard"]'), '')).toEqual(PINNED_EMPTY);
    expect(tagOf('["standard","ip",null,"token_bucket",100,60000,20,null,"UTC","local","batched"]')).toBe(PINNED_TAG);
  });

  it('keeps policies, kinds and texts apart', () => {
    const tag = tagOf('policy');
    const seen = new Set<string>();
    for (let i = 0; i < 20_000; i++) seen.add(hashOf(tag, `key-${i}`).join(':'));
    expect(seen.size).toBe(20_000);
    expect(hashOf(tag, 'a')).not.toEqual(hashOf(tagOf('other policy'), 'a'));
    // index.ts seeds with the key's kind: a tenant header "10.0.0.7" is not the client 10.0.0.7.
    const seed = (kind: number) => tag ^ Math.imul(kind, 0x9e3779b9);
    expect(hashOf(seed(K_IP), '10.0.0.7')).not.toEqual(hashOf(seed(K_HEADER), '10.0.0.7'));
    // Near texts differ in both halves (both feed the probe start and the identity).
    const [hi1, lo1] = hashOf(tag, 'user-1');
    const [hi2, lo2] = hashOf(tag, 'user-2');
    expect(hi1).not.toBe(hi2);
    expect(lo1).not.toBe(lo2);
  });

  it('spreads probe starts evenly over the table', () => {
    const cap = 1024;
    const counts = new Array<number>(cap).fill(0);
    const n = 102_400;
    const tag = tagOf('spread');
    for (let i = 0; i < n; i++) counts[hashOf(tag, `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`)[1] & (cap - 1)]!++;
    // Chi-square with 1023 degrees of freedom: mean 1023, sd ~45; 1250 is 5 sd out.
    const expected = n / cap;
    const chi = counts.reduce((s, c) => s + ((c - expected) ** 2) / expected, 0);
    expect(chi).toBeLessThan(1250);
  });

  it('never gives a policy the tag 0 (an empty entry)', () => {
    for (let i = 0; i < 50_000; i++) expect(tagOf(`p${i}`)).not.toBe(0);
  });
});

describe('lookup', () => {
  it('claims an entry for a new key, locked, and finds the same one again', () => {
    const t = new RateLimitTable(createRateLimitTable(1024));
    const [hi, lo] = hashOf(7, 'k');
    const r = found();
    const e = t.find(7, hi, lo, T0, r);
    expect(r).toEqual({ isNew: true, overflowed: false, evicted: false });
    expect(e).toBe(lo & 1023);
    expect(t.i32[t.base(e) + E_LOCK]).not.toBe(0);
    t.f64[(t.base(e) >> 1) + F_EXPIRES] = T0 + 1000;
    t.unlock(e);
    expect(t.i32[t.base(e) + E_LOCK]).toBe(0);
    expect(t.find(7, hi, lo, T0 + 1, r)).toBe(e);
    expect(r.isNew).toBe(false);
    t.unlock(e);
  });

  it('probes the next slots on a collision, wrapping around the end of the table', () => {
    const t = new RateLimitTable(createRateLimitTable(1024));
    const lo = 1022; // the window is 1022, 1023, 0, 1, ...
    const got: number[] = [];
    for (let hi = 1; hi <= PROBE_WINDOW; hi++) got.push(put(t, 9, hi, lo, T0, T0 + 1000));
    expect(got).toEqual(Array.from({ length: PROBE_WINDOW }, (_, i) => (1022 + i) & 1023));
    // Each found again where it was put.
    for (let hi = 1; hi <= PROBE_WINDOW; hi++) {
      const r = found();
      expect(t.find(9, hi, lo, T0 + 1, r)).toBe(got[hi - 1]);
      t.unlock(got[hi - 1]!);
    }
    // Negative low halves probe like any other (two's complement: -1 starts at the last slot).
    const u = new RateLimitTable(createRateLimitTable(1024));
    expect(put(u, 9, 5, -1, T0, T0 + 1000)).toBe(1023);
    expect(put(u, 9, 6, -1, T0, T0 + 1000)).toBe(0);
    expect(put(u, 9, 7, -1024, T0, T0 + 1000)).toBe(1);
  });

  it('reuses a slot once its bucket has expired and holds nothing unsynced, and zeroes it', () => {
    const t = new RateLimitTable(createRateLimitTable(1024));
    const lo = 100;
    const a = put(t, 3, 1, lo, T0, T0 + 50);
    t.f64[(t.base(a) >> 1) + F_B] = 1234;
    // Before it expires the next key goes to the next slot...
    expect(put(t, 3, 2, lo, T0 + 49, T0 + 1000)).toBe(a + 1);
    // ...from F_EXPIRES on, the slot is taken over, with every cell cleared.
    const r = found();
    const e = t.find(3, 3, lo, T0 + 50, r);
    expect([e, r.isNew]).toEqual([a, true]);
    const fb = t.base(e) >> 1;
    expect(Array.from(t.f64.subarray(fb + F_A, fb + 8))).toEqual([0, 0, 0, 0, 0, 0]);
    t.unlock(e);
    // A bucket with admissions not yet pushed to Redis is kept, expired or not.
    const p = put(t, 4, 1, 500, T0, T0 + 10);
    t.f64[(t.base(p) >> 1) + F_PENDING] = 2;
    expect(put(t, 4, 2, 500, T0 + 100, T0 + 1000)).toBe(p + 1);
  });

  it('finds a key that lives past a reusable slot instead of claiming the slot (no second bucket for a key)', () => {
    const t = new RateLimitTable(createRateLimitTable(1024));
    const first = put(t, 5, 1, 200, T0, T0 + 10); // expires soon
    const key = put(t, 5, 2, 200, T0, T0 + 10_000);
    expect(key).toBe(first + 1);
    const r = found();
    expect(t.find(5, 2, 200, T0 + 100, r)).toBe(key);
    expect(r.isNew).toBe(false);
    t.unlock(key);
    expect(entriesOf(t, 5, 2, 200)).toEqual([key]);
  });

  it('sends a key to its policy\'s overflow bucket when its window is full of live buckets, and back once a slot frees', () => {
    const t = new RateLimitTable(createRateLimitTable(1024));
    const lo = 300;
    for (let hi = 1; hi <= PROBE_WINDOW; hi++) put(t, 11, hi, lo, T0, T0 + 1000 + hi);
    const r = found();
    const o = t.find(11, 999, lo, T0 + 1, r);
    expect(o).toBe(1024 + (11 % OVERFLOW_ENTRIES));
    expect(r).toEqual({ isNew: true, overflowed: true, evicted: false });
    t.f64[(t.base(o) >> 1) + F_EXPIRES] = T0 + 500;
    t.unlock(o);
    // Another key in the same situation shares it.
    expect(t.find(11, 998, lo, T0 + 2, r)).toBe(o);
    expect(r).toEqual({ isNew: false, overflowed: true, evicted: false });
    t.unlock(o);
    expect(t.overflows).toBe(2);
    // A tag whose overflow index is taken by a live bucket of another policy shares it too (documented).
    const other = 11 + OVERFLOW_ENTRIES;
    for (let hi = 1; hi <= PROBE_WINDOW; hi++) put(t, other, hi, 600, T0, T0 + 1000);
    expect(t.find(other, 999, 600, T0 + 3, r)).toBe(o);
    expect(r.isNew).toBe(false);
    t.unlock(o);
    // Once the first bucket of the window expires, a new key gets its own slot again.
    const e = t.find(11, 997, lo, T0 + 1002, r);
    expect([e, r.isNew, r.overflowed]).toEqual([lo, true, false]);
    t.unlock(e);
  });
});

describe('a full window: eviction (find with evict, as requests do)', () => {
  /** Fills the window starting at `lo` with live buckets of `tag` expiring at `expires(i)`, pending `pending(i)`. */
  function fill(t: RateLimitTable, tag: number, lo: number, expires: (i: number) => number, pending: (i: number) => number = () => 0): number[] {
    const out: number[] = [];
    for (let i = 0; i < PROBE_WINDOW; i++) {
      const e = put(t, tag, 1000 + i, lo, T0, expires(i));
      t.f64[(t.base(e) >> 1) + F_PENDING] = pending(i);
      out.push(e);
    }
    return out;
  }

  it('evicts the live bucket that expires soonest and claims its slot, zeroed, for the new key; counts it', () => {
    const t = new RateLimitTable(createRateLimitTable(1024));
    const lo = 300;
    // Expiries 10 s, 9 s, ... : the one at position 9 expires soonest.
    const slots = fill(t, 11, lo, (i) => T0 + 10_000 + Math.abs(i - 9) * 1000);
    const r = found();
    const e = t.find(12, 7, lo, T0 + 1, r, true);
    expect([e, r.isNew, r.overflowed, r.evicted]).toEqual([slots[9], true, false, true]);
    const fb = t.base(e) >> 1;
    expect(Array.from(t.f64.subarray(fb + F_A, fb + 8))).toEqual([0, 0, 0, 0, 0, 0]);
    expect([t.i32[t.base(e) + E_TAG], t.i32[t.base(e) + E_HI], t.i32[t.base(e) + E_LO]]).toEqual([12, 7, lo]);
    t.f64[fb + F_EXPIRES] = T0 + 50_000;
    t.unlock(e);
    expect(t.evictions).toBe(1);
    expect(t.evicted).toBe(1);
    expect(t.overflows).toBe(0);
    // The evicted key finds no bucket: it gets one of its own again (evicting the next soonest).
    const again = t.find(11, 1009, lo, T0 + 2, r, true);
    expect([r.isNew, r.evicted]).toEqual([true, true]);
    expect(again).toBe(slots[8]); // 8 and 10 tie at 11 s: the first one probed
    t.f64[(t.base(again) >> 1) + F_EXPIRES] = T0 + 50_000;
    t.unlock(again);
    expect(t.evictions).toBe(2);
    // Without `evict` (the quota file's restore), a full window still overflows.
    const o = t.find(13, 5, lo, T0 + 3, r);
    expect([o, r.overflowed, r.evicted]).toEqual([t.overflowEntry(13), true, false]);
    t.unlock(o);
  });

  it('evicts a protected policy\'s bucket (quotas) only when the window holds nothing else; prefers a bucket with no unsynced admissions', () => {
    const t = new RateLimitTable(createRateLimitTable(1024));
    const quotaTag = 21;
    t.protect(quotaTag);
    const lo = 500;
    // Positions 0-13 quota buckets (expiring first), 14 pending (expiring before 15), 15 plain.
    const slots: number[] = [];
    for (let i = 0; i < PROBE_WINDOW; i++) {
      const tag = i < 14 ? quotaTag : 22;
      const e = put(t, tag, 2000 + i, lo, T0, i < 14 ? T0 + 100 + i : T0 + 5000 + (i === 14 ? 0 : 100));
      if (i === 14) t.f64[(t.base(e) >> 1) + F_PENDING] = 3;
      slots.push(e);
    }
    const r = found();
    const e = t.find(23, 1, lo, T0 + 1, r, true);
    expect([e, r.evicted]).toEqual([slots[15], true]); // not the quotas, not the pending one
    t.f64[(t.base(e) >> 1) + F_EXPIRES] = T0 + 9000;
    t.f64[(t.base(e) >> 1) + F_PENDING] = 1;
    t.unlock(e);
    // Now both non-quota buckets hold pending admissions: for a key of a third policy, the sooner one goes.
    const e2 = t.find(25, 2, lo, T0 + 2, r, true);
    expect([e2, r.evicted]).toEqual([slots[14], true]);
    t.unlock(e2);
    // Every bucket of a window protected: one of them is evicted (the soonest to expire), never the
    // overflow bucket (a flood of quota keys must not send every new key of every policy there).
    const u = new RateLimitTable(createRateLimitTable(1024));
    u.protect(quotaTag);
    fill(u, quotaTag, 700, (i) => T0 + 1000 + i);
    const o = u.find(24, 1, 700, T0 + 1, r, true);
    expect([o, r.overflowed, r.evicted]).toEqual([700, false, true]);
    u.f64[(u.base(o) >> 1) + F_EXPIRES] = T0 + 9000;
    u.unlock(o);
    expect(u.evictions).toBe(1);
    // The other quota buckets are all there, untouched.
    for (let i = 1; i < PROBE_WINDOW; i++) expect(entriesOf(u, quotaTag, 1000 + i, 700)).toHaveLength(1);
    // Without `evict` (the quota file's restore), a full window still goes to the overflow bucket.
    const v = u.find(25, 1, 700, T0 + 1, r, false);
    expect([v, r.overflowed]).toEqual([u.overflowEntry(25), true]);
    u.unlock(v);
  });

  it('a new key evicts a bucket of its own policy first: a key flood in one policy never resets another policy\'s buckets', () => {
    const t = new RateLimitTable(createRateLimitTable(1024));
    const flood = 41;
    const login = 42;
    const lo = 300;
    // One login bucket expiring soonest, 15 flood buckets expiring later.
    const loginEntry = put(t, login, 1, lo, T0, T0 + 100);
    for (let i = 1; i < PROBE_WINDOW; i++) put(t, flood, 5000 + i, lo, T0, T0 + 3_600_000 + i);
    const r = found();
    for (let k = 0; k < 40; k++) {
      const e = t.find(flood, 9000 + k, lo, T0 + 1, r, true);
      expect(r.evicted).toBe(true);
      expect(e).not.toBe(loginEntry);
      t.f64[(t.base(e) >> 1) + F_EXPIRES] = T0 + 3_600_000;
      t.unlock(e);
    }
    expect(entriesOf(t, login, 1, lo)).toHaveLength(1);
    // The rule is the same for every policy: a new login key there evicts the login bucket, its own policy's.
    const e = t.find(login, 2, lo, T0 + 1, r, true);
    expect([e, r.evicted]).toEqual([loginEntry, true]);
    t.unlock(e);
    expect(entriesOf(t, login, 2, lo)).toHaveLength(1);
  });

  it('the eviction counter is shared by every view (thread) of the table', () => {
    const sab = createRateLimitTable(1024);
    const a = new RateLimitTable(sab);
    const b = new RateLimitTable(sab);
    for (let i = 0; i < PROBE_WINDOW; i++) put(a, 31, 3000 + i, 900, T0, T0 + 10_000 + i);
    const r = found();
    const claim = (v: RateLimitTable, hi: number) => {
      const e = v.find(32, hi, 900, T0, r, true);
      v.f64[(v.base(e) >> 1) + F_EXPIRES] = T0 + 60_000;
      v.unlock(e);
    };
    claim(a, 1);
    claim(b, 2);
    expect([a.evicted, b.evicted, a.evictions, b.evictions]).toEqual([1, 1, 2, 2]);
  });
});

describe('locks', () => {
  it('takes over a lock whose holder died inside its critical section, after LOCK_STEAL_MS', () => {
    const t = new RateLimitTable(createRateLimitTable(1024));
    Atomics.store(t.i32, t.base(10) + E_LOCK, 12345); // a holder that will never unlock
    const start = performance.now();
    t.lock(10);
    const waited = performance.now() - start;
    expect(waited).toBeGreaterThanOrEqual(LOCK_STEAL_MS);
    expect(waited).toBeLessThan(LOCK_STEAL_MS + 1000);
    expect(t.steals).toBe(1);
    expect(Atomics.load(t.i32, t.base(10) + E_LOCK)).not.toBe(0);
    t.unlock(10);
    expect(Atomics.load(t.i32, t.base(10) + E_LOCK)).toBe(0);
  });

  it('waits for a live holder without taking its lock over', async () => {
    const sab = createRateLimitTable(1024);
    const t = new RateLimitTable(sab);
    const at = t.base(20) + E_LOCK;
    // Another thread holds the lock for LOCK_STEAL_MS / 2 (it posts once it has it).
    const w = new Worker(`
      const { parentPort, workerData } = require('node:worker_threads');
      const i32 = new Int32Array(workerData.sab);
      Atomics.compareExchange(i32, workerData.at, 0, 777);
      parentPort.postMessage('locked');
      const until = performance.now() + workerData.hold;
      while (performance.now() < until) {}
      Atomics.store(i32, workerData.at, 0);
    `, { eval: true, workerData: { sab, at, hold: LOCK_STEAL_MS / 2 } });
    await new Promise((r) => w.once('message', r));
    const start = performance.now();
    t.lock(20);
    expect(performance.now() - start).toBeGreaterThan(LOCK_STEAL_MS / 4);
    expect(t.steals).toBe(0);
    t.unlock(20);
    await w.terminate();
  });

  it('an unlock by a holder whose lock was taken over leaves the new holder\'s lock alone', () => {
    const sab = createRateLimitTable(1024);
    const slow = new RateLimitTable(sab);
    const fast = new RateLimitTable(sab);
    slow.lock(30);
    // The same thread plays both parts: "fast" gives up waiting and steals.
    fast.lock(30);
    expect(fast.steals).toBe(1);
    const held = Atomics.load(fast.i32, fast.base(30) + E_LOCK);
    expect(held).not.toBe(0);
    // The slow holder wakes and unlocks: nothing changes for the new holder...
    slow.unlock(30);
    expect(Atomics.load(fast.i32, fast.base(30) + E_LOCK)).toBe(held);
    fast.unlock(30);
    expect(Atomics.load(fast.i32, fast.base(30) + E_LOCK)).toBe(0);
  });
});

describe('threads on one table', () => {
  afterAll(removeThreadModules);

  interface HammerResult { admitted: number; steals: number; overflows: number }
  interface KeysResult { perKey: Record<string, number>; steals: number; overflows: number }

  it.each([
    ['quota', 4, 8000, 20_000],
    ['token_bucket', 4, 8000, 15_000],
  ] as const)('%s: %d threads hammering one key admit exactly the limit', async (algorithm, threads, each, limit) => {
    const sab = createRateLimitTable(1024);
    const job = {
      kind: 'hammer' as const, algorithm, tag: tagOf('hammer'), rate: limit, perMs: 86_400_000, burst: limit,
      periodStart: T0 - 1000, periodEnd: T0 + 86_400_000, now: T0, key: 'one key', requests: each,
    };
    const results = await runThreads<HammerResult>(sab, Array.from({ length: threads }, () => job));
    expect(results.reduce((s, r) => s + r.admitted, 0)).toBe(Math.min(limit, threads * each));
    expect(results.every((r) => r.steals === 0 && r.overflows === 0)).toBe(true);
    const [hi, lo] = hashOf(job.tag, 'one key');
    expect(entriesOf(new RateLimitTable(sab), job.tag, hi, lo)).toHaveLength(1);
  });

  it('threads creating the same keys at once make one bucket per key, and each key admits exactly its limit', async () => {
    // 1200 keys in 8192 slots: no window fills up (else keys would share the overflow bucket, as documented).
    const sab = createRateLimitTable(8192);
    const keys = Array.from({ length: 1200 }, (_, i) => `tenant-${i}`);
    const tag = tagOf('keys');
    const job = { kind: 'keys' as const, algorithm: 'quota' as const, tag, rate: 7, perMs: 86_400_000, burst: 7, periodStart: T0 - 1000, periodEnd: T0 + 86_400_000, now: T0, keys, perKey: 3 };
    const results = await runThreads<KeysResult>(sab, [0, 0, 1, 600].map((offset) => ({ ...job, offset })));
    expect(results.map((r) => r.overflows)).toEqual([0, 0, 0, 0]);
    const t = new RateLimitTable(sab);
    for (const key of keys) {
      const [hi, lo] = hashOf(tag, key);
      const admitted = results.reduce((s, r) => s + (r.perKey[key] ?? 0), 0);
      expect(admitted, key).toBe(7);
      expect(entriesOf(t, tag, hi, lo), key).toHaveLength(1);
    }
  });

  it('threads creating more keys than the table holds evict, and still make at most one bucket per key; protected buckets survive', async () => {
    const sab = createRateLimitTable(1024);
    const t = new RateLimitTable(sab);
    // A quarter of the table holds protected buckets (a quota's), live all day.
    const quotaTag = tagOf('quota');
    t.protect(quotaTag);
    const quotaKeys: [number, number][] = [];
    for (let i = 0; i < 256; i++) {
      const [hi, lo] = hashOf(quotaTag, `q${i}`);
      const r = found();
      const e = t.find(quotaTag, hi, lo, T0, r, true);
      if (r.overflowed) { t.unlock(e); continue; }
      t.f64[(t.base(e) >> 1) + F_A] = 5;
      t.f64[(t.base(e) >> 1) + F_EXPIRES] = T0 + 86_400_000;
      t.unlock(e);
      quotaKeys.push([hi, lo]);
    }
    const tag = tagOf('attacker keys');
    const keys = Array.from({ length: 3000 }, (_, i) => `key-${i}`);
    const job = {
      kind: 'keys' as const, algorithm: 'token_bucket' as const, tag, rate: 1, perMs: 86_400_000, burst: 1, now: T0 + 1, keys, perKey: 1,
      evict: true, protect: [quotaTag],
    };
    const results = await runThreads<KeysResult & { evicted: number }>(sab, [0, 0, 750, 1500, 2250].map((offset) => ({ ...job, offset })));
    const evicted = results.reduce((s, r) => s + r.evicted, 0);
    // (Lock steals are not checked here: on a machine loaded enough to stall a holder for
    // LOCK_STEAL_MS they happen, by design; the hammer tests above are about them.)
    expect(evicted).toBeGreaterThan(1000);
    expect(t.evictions).toBe(evicted);
    let duplicated = 0;
    for (const key of keys) {
      const [hi, lo] = hashOf(tag, key);
      if (entriesOf(t, tag, hi, lo).length > 1) duplicated++;
    }
    expect(duplicated).toBe(0);
    for (const [hi, lo] of quotaKeys) {
      const es = entriesOf(t, quotaTag, hi, lo);
      expect(es).toHaveLength(1);
      expect(t.f64[(t.base(es[0]!) >> 1) + F_A]).toBe(5);
    }
  });

  it('threads that disagree about which slots have expired still make one bucket per key', async () => {
    // Each key's probe window starts with buckets of another policy that
    // expire one after the other; each thread decides at a different
    // instant, so each sees a different first reusable slot, and they race
    // to claim different slots for the same key. (Without the re-check after
    // a claim, about three rounds in four end with duplicated keys.)
    for (let round = 0; round < 5; round++) {
      const sab = createRateLimitTable(16_384);
      const t = new RateLimitTable(sab);
      const tag = tagOf(`disagree ${round}`);
      // Keys whose windows do not overlap: the fillers of one key never fill
      // another's window (a full window would send a key to the overflow
      // bucket, as documented, which is not what this test is about).
      const keys: string[] = [];
      const used = new Uint8Array(t.capacity);
      for (let i = 0; keys.length < 300; i++) {
        const lo = hashOf(tag, `k${i}`)[1];
        let clear = true;
        for (let p = 0; p < PROBE_WINDOW; p++) if (used[(lo + p) & (t.capacity - 1)]) clear = false;
        if (!clear) continue;
        for (let p = 0; p < PROBE_WINDOW; p++) used[(lo + p) & (t.capacity - 1)] = 1;
        keys.push(`k${i}`);
      }
      let filler = 1;
      for (const key of keys) {
        const lo = hashOf(tag, key)[1];
        for (let p = 0; p < 6; p++) put(t, 99, filler++, (lo + p) & (t.capacity - 1), T0 - 1, T0 + 1 + 2 * p);
      }
      const job = { kind: 'keys' as const, algorithm: 'quota' as const, tag, rate: 1, perMs: 86_400_000, burst: 1, periodStart: T0 - 1000, periodEnd: T0 + 86_400_000, keys, perKey: 1, offset: 0 };
      const results = await runThreads<KeysResult>(sab, [0.5, 2.5, 4.5, 6.5, 8.5, 10.5].map((d) => ({ ...job, now: T0 + d })));
      let duplicated = 0;
      let over = 0;
      for (const key of keys) {
        const [hi, lo] = hashOf(tag, key);
        if (entriesOf(t, tag, hi, lo).length !== 1) duplicated++;
        if (results.reduce((s, r) => s + (r.perKey[key] ?? 0), 0) !== 1) over++;
      }
      expect({ round, duplicated, over, overflows: results.reduce((s, r) => s + r.overflows, 0) }).toEqual({ round, duplicated: 0, over: 0, overflows: 0 });
    }
  });
});

// The hash as shipped with the first rate-limit release (6b97780).
const PINNED_IP: [number, number] = [1113883830, -1406378892];
const PINNED_EMPTY: [number, number] = [1487081941, -176479392];
const PINNED_TAG = -381124820;
