/**
 * A bucket outside the table, for white-box tests of the algorithms
 * (workers/policies/rate-limit/algorithms.ts): the same cells an entry has
 * (F_A..F_EXPIRES at entry 1 of a Float64Array), a fake clock (every call
 * passes `now`), and a seeded PRNG for generated schedules.
 */
import {
  ALG_FIXED_WINDOW, ALG_GCRA, ALG_QUOTA, ALG_SLIDING_WINDOW, ALG_TOKEN_BUCKET, Decision, fixedWindow, gcra, quota, slidingWindow,
  tokenBucket, undo, type LimitParams,
} from '../../../../workers/policies/rate-limit/algorithms.js';
import { F_B, F_EXPIRES } from '../../../../common/rate-limit-layout.js';

/** A Unix-time base with a fraction, like the shared clock gives (2025-12-01T00:00:00.000Z + 0.37 ms). */
export const T0 = 1_764_547_200_000 + 0.37;

export type AlgName = 'token_bucket' | 'gcra' | 'fixed_window' | 'sliding_window' | 'quota';
export const ALL: AlgName[] = ['token_bucket', 'gcra', 'fixed_window', 'sliding_window', 'quota'];

const CODE: Record<AlgName, number> = {
  token_bucket: ALG_TOKEN_BUCKET, gcra: ALG_GCRA, fixed_window: ALG_FIXED_WINDOW, sliding_window: ALG_SLIDING_WINDOW, quota: ALG_QUOTA,
};

export interface Limits {
  rate: number;
  perMs: number;
  burst?: number;
}

/** One bucket and its limit; `decide` is what index.ts does for one request (less the table lookup). */
export class Bucket {
  f = new Float64Array(16);
  readonly fb = 8;
  fresh = true;
  readonly p: LimitParams;
  scale = 1;

  constructor(readonly alg: AlgName, l: Limits) {
    this.p = { algorithm: CODE[alg], rate: l.rate, perMs: l.perMs, burst: l.burst ?? (alg === 'gcra' ? 1 : l.rate) };
  }

  /** Quotas here use calendar-free periods: multiples of perMs since the epoch (the calendar has its own tests). */
  period(now: number): [number, number] {
    const start = now - (now % this.p.perMs);
    return [start, start + this.p.perMs];
  }

  /** The window an admission at `now` was counted in (what index.ts keeps for undo). */
  windowOf(now: number): number {
    return this.alg === 'token_bucket' || this.alg === 'gcra' ? 0 : this.period(now)[0];
  }

  decide(now: number, out = new Decision()): Decision {
    const { f, fb, p } = this;
    switch (this.alg) {
      case 'token_bucket': tokenBucket(f, fb, this.fresh, now, p, this.scale, out); break;
      case 'gcra': gcra(f, fb, this.fresh, now, p, this.scale, out); break;
      case 'fixed_window': fixedWindow(f, fb, this.fresh, now, p, this.scale, out); break;
      case 'sliding_window': slidingWindow(f, fb, this.fresh, now, p, this.scale, out); break;
      case 'quota': {
        const [s, e] = this.period(now);
        quota(f, fb, this.fresh, now, p.rate, s, e, out);
        break;
      }
    }
    this.fresh = false;
    return out;
  }

  undo(windowStart: number): void {
    undo(this.f, this.fb, this.p.algorithm, this.p, this.scale, windowStart);
  }

  get expires(): number {
    return this.f[this.fb + F_EXPIRES]!;
  }

  get cellB(): number {
    return this.f[this.fb + F_B]!;
  }

  clone(): Bucket {
    const b = new Bucket(this.alg, { rate: this.p.rate, perMs: this.p.perMs, burst: this.p.burst });
    b.f = this.f.slice();
    b.fresh = this.fresh;
    b.scale = this.scale;
    return b;
  }

  /** Requests admitted back to back at `now` (stops at the first refusal, or at `max`). */
  flood(now: number, max = 1e7): number {
    const d = new Decision();
    let n = 0;
    while (n < max && this.decide(now, d).allowed) n++;
    return n;
  }
}

/** A fresh bucket's view of one request at `now`: what a reusable slot must be indistinguishable from. */
export function freshDecision(b: Bucket, now: number): { d: Decision; cells: number[] } {
  const c = new Bucket(b.alg, { rate: b.p.rate, perMs: b.p.perMs, burst: b.p.burst });
  c.scale = b.scale;
  const d = c.decide(now);
  return { d, cells: Array.from(c.f.subarray(c.fb + 2, c.fb + 6)) };
}

/** mulberry32: small, seeded, deterministic. */
export class Rng {
  constructor(private s: number) {}
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) | 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}

/**
 * Arrival times of a generated schedule over `spanMs`: bursts (many
 * requests at one instant), dense runs, idle gaps, and arrivals right at
 * window boundaries and just before them (the instants the algorithms
 * treat specially).
 */
export function schedule(rng: Rng, perMs: number, spanMs: number, count: number): number[] {
  const out: number[] = [];
  let t = T0 + rng.next() * perMs;
  const end = T0 + spanMs;
  while (out.length < count && t < end) {
    const kind = rng.int(6);
    if (kind === 0) {
      const n = 1 + rng.int(20);
      for (let i = 0; i < n; i++) out.push(t);
    } else if (kind === 1) {
      // A boundary (a multiple of per since the epoch) or a hair before it.
      const b = Math.ceil(t / perMs) * perMs;
      t = rng.int(2) === 0 ? b : Math.max(t, b - 0.25);
      out.push(t);
    } else if (kind === 2) {
      t += rng.next() * perMs * 1.5; // idle
      out.push(t);
    } else {
      t += rng.next() * (perMs / 20);
      out.push(t);
    }
  }
  return out.filter((x) => x < end);
}
