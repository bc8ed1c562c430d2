/**
 * The arithmetic of every rate-limit algorithm (workers/policies/rate-limit/
 * algorithms.ts), white-box, on one bucket's cells with a fake clock (every
 * call passes `now`, on a Unix-time base with a fraction, as the shared
 * clock gives it: precision at 1.7e12 ms is what broke GCRA).
 *
 * - exactness: under a flood a token bucket and GCRA admit burst + rate × t,
 *   no more, no less, at every instant (integer arithmetic for the
 *   expectation); fixed windows admit rate per window;
 * - over any interval of generated traffic: never more than burst + rate × t;
 * - the sliding window's README bound (never more than 2 × rate within one
 *   `per`), on an adversarial schedule that comes close to it and on
 *   generated ones; with evenly spread traffic, exactly rate per `per`;
 * - the outputs, on generated schedules for every algorithm: `remaining`
 *   requests pass at that instant and not one more; a refused request passes
 *   after `retryMs` and not 10 µs before; `resetMs` is when the bucket is
 *   back to fresh;
 * - F_EXPIRES: from then on the bucket decides exactly as a fresh one would
 *   (so reusing its slot changes nothing), and not before;
 * - rateScale; undo (a decide then an undo is no decide at all, F_EXPIRES
 *   included); the quota dirty mark the quota file's saver reads.
 */
import { describe, expect, it } from 'vitest';
import { Decision, EXPIRY_MARGIN_MS } from '../../../../workers/policies/rate-limit/algorithms.js';
import { F_A, H_QUOTA_DIRTY } from '../../../../common/rate-limit-layout.js';
import { ALL, Bucket, Rng, T0, freshDecision, schedule, type AlgName } from './harness.js';

/** Floods `b` every `stepMs` for `spanMs`; the first instant where admitted != expected(t), or null. */
function floodMismatch(b: Bucket, stepMs: number, spanMs: number, expected: (t: number) => number): string | null {
  let admitted = 0;
  for (let k = 0; k * stepMs <= spanMs; k++) {
    const t = k * stepMs;
    admitted += b.flood(T0 + t);
    const want = expected(t);
    if (admitted !== want) return `at t=${t} ms: admitted ${admitted}, expected ${want}`;
  }
  return null;
}

/** Times of the admitted requests of a schedule. */
function admittedTimes(b: Bucket, times: number[]): number[] {
  const d = new Decision();
  const out: number[] = [];
  for (const t of times) if (b.decide(t, d).allowed) out.push(t);
  return out;
}

/** Most admissions within any half-open interval [t, t + span). */
function maxWithin(times: number[], span: number): number {
  let best = 0;
  let j = 0;
  for (let i = 0; i < times.length; i++) {
    while (j < times.length && times[j]! < times[i]! + span) j++;
    best = Math.max(best, j - i);
  }
  return best;
}

// rate, per (ms), burst, flood step (ms), span (ms). A flood comes often
// enough that the bucket never fills up between two instants (rate × step /
// per <= burst - 1: a full bucket keeps no more, by definition); steps are
// binary fractions, so that T0 + t is exact and so is the expectation.
const EXACT_CASES: [number, number, number, number, number][] = [
  [100, 1000, 150, 1, 5000],
  [3, 1000, 5, 1, 10_000], // 1/3 s: not a binary fraction
  [7, 60_000, 20, 7, 600_000],
  [40, 1000, 10, 1, 3000],
  [10_000, 1000, 10, 0.5, 2000], // 0.1 ms per request
  [1_000_000, 1000, 1000, 0.5, 40], // 1 µs per request
  [10_000_000, 1000, 100, 1 / 256, 4], // 0.1 µs per request: below the clock's resolution at Unix time
  [1, 250, 2, 1, 5000],
  [5, 86_400_000, 5, 3_600_000, 3 * 86_400_000],
];

it('the exactness cases flood often enough for the bucket never to fill up', () => {
  for (const [rate, per, burst, step] of EXACT_CASES) expect((rate * step) / per).toBeLessThanOrEqual(burst - 1);
});

describe('token_bucket', () => {
  it.each(EXACT_CASES)('admits burst + rate × t exactly under a flood (rate %d per %d ms, burst %d)', (rate, per, burst, step, span) => {
    const b = new Bucket('token_bucket', { rate, perMs: per, burst });
    expect(floodMismatch(b, step, span, (t) => burst + Math.floor((rate * t) / per))).toBeNull();
  });

  it('burst 1: one request per per/rate when they come at the refill instants, never a fraction of one more', () => {
    const b = new Bucket('token_bucket', { rate: 100, perMs: 1000, burst: 1 });
    expect(floodMismatch(b, 10, 10_000, (t) => 1 + t / 10)).toBeNull();
    // Between refill instants a capacity of one keeps no fraction: 1/3 s steps, 1 ms arrivals, at most 1 + rate × t.
    const c = new Bucket('token_bucket', { rate: 3, perMs: 1000, burst: 1 });
    let admitted = 0;
    for (let t = 0; t <= 10_000; t++) {
      admitted += c.flood(T0 + t);
      expect(admitted).toBeLessThanOrEqual(1 + Math.floor((3 * t) / 1000));
    }
  });

  it('never admits more than burst + rate × t over any interval of generated traffic', () => {
    for (let seed = 1; seed <= 12; seed++) {
      const rng = new Rng(seed);
      const rate = 1 + rng.int(50);
      const per = [250, 1000, 60_000][rng.int(3)]!;
      const burst = 1 + rng.int(2 * rate);
      const times = admittedTimes(new Bucket('token_bucket', { rate, perMs: per, burst }), schedule(rng, per, 8 * per, 3000));
      for (let i = 0; i < times.length; i++) {
        for (let j = i; j < times.length; j++) {
          expect(j - i + 1, `seed ${seed}`).toBeLessThanOrEqual(burst + (rate * (times[j]! - times[i]!)) / per + 1e-9);
        }
      }
    }
  });

  it('gives remaining, resetMs and retryMs', () => {
    // 10 per second: one token per 100 ms; 5 back to back.
    const b = new Bucket('token_bucket', { rate: 10, perMs: 1000, burst: 5 });
    let d = b.decide(T0);
    expect([d.allowed, d.remaining, d.resetMs, d.retryMs]).toEqual([true, 4, 100, 0]);
    for (let i = 0; i < 4; i++) d = b.decide(T0);
    expect([d.allowed, d.remaining]).toEqual([true, 0]);
    expect(d.resetMs).toBeCloseTo(500, 9);
    d = b.decide(T0);
    expect([d.allowed, d.remaining]).toEqual([false, 0]);
    expect(d.retryMs).toBeCloseTo(100, 9);
    expect(d.resetMs).toBeCloseTo(500, 9);
    d = b.decide(T0 + 50);
    expect(d.allowed).toBe(false);
    expect(d.retryMs).toBeCloseTo(50, 9);
    expect(d.resetMs).toBeCloseTo(450, 9);
    d = b.decide(T0 + 100);
    expect([d.allowed, d.remaining]).toEqual([true, 0]);
    expect(d.resetMs).toBeCloseTo(500, 9);
    // 250 ms idle: 2.5 tokens back; 2 may pass, the bucket is full 250 ms later.
    d = b.decide(T0 + 350);
    expect([d.allowed, d.remaining]).toEqual([true, 1]);
    expect(d.resetMs).toBeCloseTo(350, 9);
  });

  it('rateScale scales the refill and the burst (an instance\'s share of both), the burst at least 1', () => {
    const b = new Bucket('token_bucket', { rate: 100, perMs: 1000, burst: 20 });
    b.scale = 0.5;
    expect(floodMismatch(b, 1, 4000, (t) => 10 + Math.floor((50 * t) / 1000))).toBeNull();
    const third = new Bucket('token_bucket', { rate: 90, perMs: 1000, burst: 9 });
    third.scale = 1 / 3;
    expect(floodMismatch(third, 1, 4000, (t) => 3 + Math.floor((30 * t) / 1000))).toBeNull();
    // 3 instances, burst 2: each keeps a burst of 1 (never 0: it would refuse everything).
    const small = new Bucket('token_bucket', { rate: 3, perMs: 1000, burst: 2 });
    small.scale = 1 / 3;
    expect(floodMismatch(small, 1, 4000, (t) => 1 + Math.floor(t / 1000))).toBeNull();
    // An undo while scaled gives back up to the scaled burst only.
    const u = new Bucket('token_bucket', { rate: 100, perMs: 1000, burst: 20 });
    u.scale = 0.5;
    u.decide(T0);
    u.undo(0);
    u.undo(0);
    expect(u.f[u.fb + F_A]).toBe(10);
  });
});

describe('gcra', () => {
  it.each(EXACT_CASES)('admits burst + rate × t exactly under a flood (rate %d per %d ms, burst %d)', (rate, per, burst, step, span) => {
    const b = new Bucket('gcra', { rate, perMs: per, burst });
    expect(floodMismatch(b, step, span, (t) => burst + Math.floor((rate * t) / per))).toBeNull();
  });

  it('burst 1 (the default): no two admissions closer than per/rate, and one per per/rate under a flood', () => {
    for (const [rate, per] of [[3, 1000], [100, 1000], [7, 60_000]] as const) {
      const spacing = per / rate;
      const rng = new Rng(rate);
      const times = admittedTimes(new Bucket('gcra', { rate, perMs: per }), schedule(rng, per, 20 * per, 5000));
      for (let i = 1; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThanOrEqual(spacing - 1e-3);
    }
    const b = new Bucket('gcra', { rate: 100, perMs: 1000 });
    expect(floodMismatch(b, 1, 10_000, (t) => 1 + Math.floor(t / 10))).toBeNull();
  });

  it('never admits more than burst + rate × t over any interval of generated traffic', () => {
    for (let seed = 1; seed <= 12; seed++) {
      const rng = new Rng(100 + seed);
      const rate = 1 + rng.int(50);
      const per = [250, 1000, 60_000][rng.int(3)]!;
      const burst = 1 + rng.int(2 * rate);
      const times = admittedTimes(new Bucket('gcra', { rate, perMs: per, burst }), schedule(rng, per, 8 * per, 3000));
      for (let i = 0; i < times.length; i++) {
        for (let j = i; j < times.length; j++) {
          expect(j - i + 1, `seed ${seed}`).toBeLessThanOrEqual(burst + (rate * (times[j]! - times[i]!)) / per + 1e-9);
        }
      }
    }
  });

  it('gives remaining, resetMs and retryMs', () => {
    // 10 per second (one per 100 ms), 3 back to back.
    const b = new Bucket('gcra', { rate: 10, perMs: 1000, burst: 3 });
    let d = b.decide(T0);
    expect([d.allowed, d.remaining, d.resetMs, d.retryMs]).toEqual([true, 2, 100, 0]);
    b.decide(T0);
    d = b.decide(T0);
    expect([d.allowed, d.remaining, d.resetMs]).toEqual([true, 0, 300]);
    d = b.decide(T0 + 30);
    expect([d.allowed, d.remaining]).toEqual([false, 0]);
    expect(d.retryMs).toBeCloseTo(70, 6);
    expect(d.resetMs).toBeCloseTo(270, 6);
    d = b.decide(T0 + 100);
    expect([d.allowed, d.remaining]).toEqual([true, 0]);
    expect(d.resetMs).toBeCloseTo(300, 6);
    d = b.decide(T0 + 250);
    expect([d.allowed, d.remaining]).toEqual([true, 0]);
    expect(d.resetMs).toBeCloseTo(250, 6);
    d = b.decide(T0 + 1000);
    expect([d.allowed, d.remaining, d.resetMs]).toEqual([true, 2, 100]);
  });

  it('rateScale stretches the emission interval and scales the burst', () => {
    const b = new Bucket('gcra', { rate: 100, perMs: 1000, burst: 12 });
    b.scale = 0.25;
    expect(floodMismatch(b, 1, 4000, (t) => 3 + Math.floor((25 * t) / 1000))).toBeNull();
  });
});

describe('fixed_window', () => {
  it('admits rate per window, windows aligned on multiples of per since the epoch', () => {
    const per = 1000;
    const b = new Bucket('fixed_window', { rate: 5, perMs: per });
    const start = Math.ceil(T0 / per) * per;
    // A hair before a boundary: the whole allowance; at the boundary, a whole new one.
    expect(b.flood(start - 0.5)).toBe(5);
    expect(b.flood(start - 0.25)).toBe(0);
    expect(b.flood(start)).toBe(5);
    expect(b.flood(start + per - 0.001)).toBe(0);
    // Up to 2 × rate within one per across a boundary (documented), never within one window.
    expect(floodMismatch(new Bucket('fixed_window', { rate: 7, perMs: 250 }), 1, 5000, (t) => 7 * (Math.floor((T0 + t) / 250) - Math.floor(T0 / 250) + 1))).toBeNull();
  });

  it('gives remaining, resetMs and retryMs', () => {
    const per = 60_000;
    const start = Math.ceil(T0 / per) * per;
    const b = new Bucket('fixed_window', { rate: 3, perMs: per });
    let d = b.decide(start + 15_000);
    expect([d.allowed, d.remaining, d.resetMs, d.retryMs]).toEqual([true, 2, 45_000, 0]);
    b.decide(start + 15_000);
    d = b.decide(start + 20_000);
    expect([d.allowed, d.remaining, d.resetMs]).toEqual([true, 0, 40_000]);
    d = b.decide(start + 30_000);
    expect([d.allowed, d.remaining, d.resetMs, d.retryMs]).toEqual([false, 0, 30_000, 30_000]);
    d = b.decide(start + per);
    expect([d.allowed, d.remaining, d.resetMs]).toEqual([true, 2, 60_000]);
  });

  it('rateScale: floor(rate × scale) per window, at least one; remaining never negative when the share drops mid-window', () => {
    const per = 1000;
    const start = Math.ceil(T0 / per) * per;
    const b = new Bucket('fixed_window', { rate: 10, perMs: per });
    b.scale = 1 / 3;
    expect(b.flood(start)).toBe(3);
    const one = new Bucket('fixed_window', { rate: 2, perMs: per });
    one.scale = 1 / 3;
    expect(one.flood(start)).toBe(1);
    // 8 counted at full share, then Redis goes away and this instance's share is 1/3.
    const c = new Bucket('fixed_window', { rate: 10, perMs: per });
    for (let i = 0; i < 8; i++) c.decide(start + 1);
    c.scale = 1 / 3;
    const d = c.decide(start + 2);
    expect(d.allowed).toBe(false);
    expect(d.remaining).toBe(0);
  });
});

describe('sliding_window', () => {
  it('weighs the previous window by its share still inside', () => {
    const per = 1000;
    const start = Math.ceil(T0 / per) * per;
    const b = new Bucket('sliding_window', { rate: 10, perMs: per });
    expect(b.flood(start + 900)).toBe(10);
    // 25% into the next window: 10 × 0.75 = 7.5 estimated; 7.5, 8.5, 9.5 < 10: three more.
    const d = b.clone().decide(start + per + 250);
    expect([d.allowed, d.remaining]).toEqual([true, 2]);
    expect(b.flood(start + per + 250)).toBe(3);
    // Two windows later nothing counts any more.
    expect(b.flood(start + 3 * per)).toBe(10);
  });

  it('never admits more than 2 × rate within one per: adversarial schedule comes close, generated ones stay under', () => {
    for (const [rate, per] of [[10, 1000], [100, 60_000], [7, 250]] as const) {
      // The worst case the README names: the whole allowance at the very end of
      // a window, then a flood through the next.
      const b = new Bucket('sliding_window', { rate, perMs: per });
      const start = Math.ceil(T0 / per) * per;
      const times: number[] = [];
      for (let i = 0; i < rate; i++) times.push(start + per - 0.001);
      for (let t = start + per; t < start + 2 * per; t += per / 1000) times.push(t);
      const admitted = admittedTimes(b, times);
      const worst = maxWithin(admitted, per);
      expect(worst).toBeLessThanOrEqual(2 * rate);
      expect(worst).toBeGreaterThan(1.9 * rate - 1);
    }
    for (let seed = 1; seed <= 40; seed++) {
      const rng = new Rng(1000 + seed);
      const rate = 1 + rng.int(30);
      const per = [250, 1000, 60_000][rng.int(3)]!;
      const admitted = admittedTimes(new Bucket('sliding_window', { rate, perMs: per }), schedule(rng, per, 20 * per, 6000));
      expect(maxWithin(admitted, per), `seed ${seed}`).toBeLessThanOrEqual(2 * rate);
      // No fixed window ever holds more than rate.
      const perWindow = new Map<number, number>();
      for (const t of admitted) perWindow.set(Math.floor(t / per), (perWindow.get(Math.floor(t / per)) ?? 0) + 1);
      for (const n of perWindow.values()) expect(n).toBeLessThanOrEqual(rate);
    }
  });

  it('is exact with evenly spread traffic: rate in every interval of per', () => {
    for (const [rate, per] of [[10, 1000], [7, 1000], [100, 1000], [3, 250]] as const) {
      const b = new Bucket('sliding_window', { rate, perMs: per });
      const start = Math.ceil(T0 / per) * per;
      const times: number[] = [];
      for (let t = start; t < start + 20 * per; t += 1) times.push(t);
      const admitted = admittedTimes(b, times).filter((t) => t >= start + 2 * per && t < start + 18 * per);
      let lo = Infinity;
      let hi = 0;
      for (let i = 0; i < admitted.length; i++) {
        let j = i;
        while (j < admitted.length && admitted[j]! < admitted[i]! + per) j++;
        if (admitted[i]! + per < start + 18 * per) {
          lo = Math.min(lo, j - i);
          hi = Math.max(hi, j - i);
        }
      }
      expect([lo, hi], `rate ${rate} per ${per}`).toEqual([rate, rate]);
    }
  });

  it('rateScale: the scaled limit, at least one per window', () => {
    const per = 1000;
    const start = Math.ceil(T0 / per) * per;
    const b = new Bucket('sliding_window', { rate: 10, perMs: per });
    b.scale = 0.5;
    expect(b.flood(start)).toBe(5);
    const one = new Bucket('sliding_window', { rate: 2, perMs: per });
    one.scale = 1 / 3;
    expect(one.flood(start)).toBe(1);
    expect(one.flood(start + per)).toBe(0); // the previous window still weighs 1
    expect(one.flood(start + 2 * per)).toBe(1);
  });
});

describe('quota', () => {
  it('counts up to the quota per period, then refuses until the period ends', () => {
    const per = 86_400_000;
    const b = new Bucket('quota', { rate: 3, perMs: per });
    const [start, end] = b.period(T0);
    let d = b.decide(T0);
    expect([d.allowed, d.remaining, d.retryMs]).toEqual([true, 2, 0]);
    expect(d.resetMs).toBeCloseTo(end - T0, 6);
    expect(b.cellB).toBe(start);
    b.decide(T0 + 1);
    d = b.decide(T0 + 2);
    expect([d.allowed, d.remaining]).toEqual([true, 0]);
    d = b.decide(end - 1);
    expect([d.allowed, d.remaining]).toEqual([false, 0]);
    expect(d.retryMs).toBeCloseTo(1, 6);
    expect(b.expires).toBe(end);
    d = b.decide(end);
    expect([d.allowed, d.remaining, d.resetMs]).toEqual([true, 2, per]);
    expect(b.cellB).toBe(end);
  });
});

describe('every algorithm', () => {
  const limitsOf = (alg: AlgName, rng: Rng) => {
    const rate = 1 + rng.int(20);
    const perMs = [250, 1000, 60_000][rng.int(3)]!;
    const burst = alg === 'token_bucket' || alg === 'gcra' ? 1 + rng.int(2 * rate) : undefined;
    return burst === undefined ? { rate, perMs } : { rate, perMs, burst };
  };

  it.each(ALL)('%s: remaining, retryMs and resetMs say what the next requests will meet', (alg) => {
    for (let seed = 1; seed <= 15; seed++) {
      const rng = new Rng(seed * 7919 + alg.length);
      const l = limitsOf(alg, rng);
      const b = new Bucket(alg, l);
      for (const now of schedule(rng, l.perMs, 10 * l.perMs, 400)) {
        const d = b.decide(now);
        const where = `${alg} seed ${seed} ${JSON.stringify(l)} at +${now - T0} ms`;
        expect(d.remaining, where).toBeGreaterThanOrEqual(0);
        expect(Number.isInteger(d.remaining), where).toBe(true);
        // resetMs is when the bucket is full again; F_EXPIRES is that instant,
        // rounded up by at most EXPIRY_MARGIN_MS (and the clock's 0.24 µs).
        expect(b.expires - now, where).toBeGreaterThanOrEqual(d.resetMs - 3e-4);
        expect(b.expires - now, where).toBeLessThanOrEqual(d.resetMs + EXPIRY_MARGIN_MS + 3e-4);
        if (d.allowed) {
          expect(d.retryMs, where).toBe(0);
          // `remaining` more pass right now, and not one more.
          expect(b.clone().flood(now), where).toBe(d.remaining);
        } else {
          expect(d.remaining, where).toBe(0);
          expect(d.retryMs, where).toBeGreaterThan(0);
          expect(b.clone().decide(now + d.retryMs + 0.001).allowed, `${where}: after retryMs`).toBe(true);
          if (d.retryMs > 0.011) expect(b.clone().decide(now + d.retryMs - 0.01).allowed, `${where}: before retryMs`).toBe(false);
        }
      }
    }
  });

  it.each(ALL)('%s: from F_EXPIRES on the bucket decides as a fresh one, and not before', (alg) => {
    for (let seed = 1; seed <= 15; seed++) {
      const rng = new Rng(seed * 104_729 + alg.length);
      const l = limitsOf(alg, rng);
      const b = new Bucket(alg, l);
      const times = schedule(rng, l.perMs, 10 * l.perMs, 300);
      for (let i = 0; i < times.length; i++) {
        const now = times[i]!;
        b.decide(now);
        if (i % 7 !== 0) continue;
        const where = `${alg} seed ${seed} ${JSON.stringify(l)} at +${now - T0} ms`;
        const at = Math.max(now, b.expires);
        for (const x of [at, at + 0.5, at + 3 * l.perMs]) {
          const stale = b.clone();
          const d = stale.decide(x);
          const fresh = freshDecision(b, x);
          expect([d.allowed, d.remaining, d.retryMs], `${where}, decided at F_EXPIRES + ${x - at}`).toEqual([fresh.d.allowed, fresh.d.remaining, fresh.d.retryMs]);
          expect(d.resetMs, where).toBeCloseTo(fresh.d.resetMs, 6);
          const cells = Array.from(stale.f.subarray(stale.fb + 2, stale.fb + 6));
          for (let c = 0; c < 4; c++) expect(cells[c], `${where}: cell ${c}`).toBeCloseTo(fresh.cells[c]!, 3);
        }
        // Just before: the bucket still remembers something a fresh one would
        // not. (Not for the sliding window: once the previous window weighs
        // less than one request it decides as a fresh one would, a little
        // before F_EXPIRES, which is when it has nothing counted at all.)
        if (alg !== 'sliding_window' && b.expires - now > 1) {
          const x = now + (b.expires - now) * 0.98;
          const d = b.clone().decide(x);
          const fresh = freshDecision(b, x).d;
          const same = d.allowed === fresh.allowed && d.remaining === fresh.remaining && Math.abs(d.resetMs - fresh.resetMs) < 1e-6;
          expect(same, `${where}: equal to a fresh bucket before F_EXPIRES (${b.expires - now} ms early)`).toBe(false);
        }
      }
    }
  });

  it.each(ALL)('%s: an undo right after a decide leaves the bucket as if the request never came, F_EXPIRES included', (alg) => {
    for (let seed = 1; seed <= 10; seed++) {
      const rng = new Rng(seed * 31 + alg.length);
      const l = limitsOf(alg, rng);
      const a = new Bucket(alg, l);
      const b = new Bucket(alg, l);
      const times = schedule(rng, l.perMs, 10 * l.perMs, 300);
      for (let i = 0; i < times.length; i++) {
        const now = times[i]!;
        const where = `${alg} seed ${seed} ${JSON.stringify(l)} request ${i}`;
        if (i % 3 === 1) {
          // b takes a request that a later policy refuses: admitted, then given back.
          if (b.decide(now).allowed) {
            b.undo(b.windowOf(now));
            // Reusable when a's bucket is (either may say so with any time up to now).
            expect(Math.max(b.expires, now), `${where}: F_EXPIRES after the undo`).toBeCloseTo(Math.max(a.expires, now), 2);
          }
          // a never saw it; both see the next request the same way.
          continue;
        }
        const da = a.decide(now);
        const db = b.decide(now);
        expect([db.allowed, db.remaining], where).toEqual([da.allowed, da.remaining]);
        expect(db.retryMs, where).toBeCloseTo(da.retryMs, 6);
        expect(b.expires, where).toBeCloseTo(a.expires, 3);
      }
    }
  });

  it.each(['fixed_window', 'sliding_window', 'quota'] as const)('%s: an undo for a window that is over changes nothing', (alg) => {
    const per = 1000;
    const b = new Bucket(alg, { rate: 3, perMs: per });
    const start = Math.ceil(T0 / per) * per;
    b.decide(start + 10);
    b.decide(start + per + 10);
    const before = b.f.slice();
    b.undo(start);
    expect(Array.from(b.f)).toEqual(Array.from(before));
  });

  it('an undo of the only admission makes the bucket reusable at once', () => {
    for (const alg of ALL) {
      const b = new Bucket(alg, { rate: 5, perMs: 1000, burst: 5 });
      b.decide(T0);
      b.undo(b.windowOf(T0));
      expect(b.expires, alg).toBeLessThanOrEqual(T0);
    }
  });

  it('a quota admission or undo marks the table header for the quota saver; other algorithms do not', () => {
    for (const alg of ALL) {
      const b = new Bucket(alg, { rate: 5, perMs: 1000 });
      b.f[H_QUOTA_DIRTY] = 0;
      b.decide(T0);
      expect(b.f[H_QUOTA_DIRTY], alg).toBe(alg === 'quota' ? 1 : 0);
      b.f[H_QUOTA_DIRTY] = 0;
      b.undo(b.windowOf(T0));
      expect(b.f[H_QUOTA_DIRTY], alg).toBe(alg === 'quota' ? 1 : 0);
    }
    // A refusal changes no count.
    const q = new Bucket('quota', { rate: 1, perMs: 1000 });
    q.decide(T0);
    q.f[H_QUOTA_DIRTY] = 0;
    expect(q.decide(T0).allowed).toBe(false);
    expect(q.f[H_QUOTA_DIRTY]).toBe(0);
  });
});
