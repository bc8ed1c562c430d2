/**
 * The arithmetic of each rate-limit algorithm on one bucket's cells (the
 * F_A, F_B, F_C cells of a table entry: common/rate-limit-layout.ts). Pure
 * functions of (cells, now, limit): the caller holds the entry's lock and
 * passes the shared clock's `now` (ms); unit tests pass a fake one.
 *
 * Every function decides one request and writes into `out`:
 *   allowed    whether it may pass (when it may, it has been counted)
 *   remaining  requests that would still pass right now (>= 0)
 *   resetMs    until the bucket is back to full (the IETF draft's `t`)
 *   retryMs    refused: until the next request would pass (Retry-After)
 * and sets the entry's F_EXPIRES: from then on the bucket decides exactly
 * as a fresh one would, so the entry may be reused (layout module).
 *
 * `undo` takes back one admission (a later policy of the same route refused
 * the request: a refused request consumes nothing anywhere).
 *
 * Limits: `rate` requests per `perMs`, `burst` for the token bucket and
 * GCRA. `rateScale` (0..1] is this instance's share while a cluster-wide
 * limit is enforced by it alone (Redis away: H_SHARE): it scales the refill
 * and the burst alike (each of n instances gets 1/n of both, so together
 * they admit what one limit would: burst + rate × t), and a window's count;
 * a burst keeps at least one request, and a window at least one request
 * per window, whatever the scale.
 *
 * Precision: times are Unix milliseconds (~1.8e12), where a double resolves
 * only 2^-12 ms (0.24 µs). Nothing here adds small durations to such a time
 * and keeps the rounded sum: durations are computed from differences of two
 * clock readings (exact), GCRA keeps its arrival time as a rounded time plus
 * the exact remainder (F_A + F_C), and F_EXPIRES, a rounded sum, carries
 * EXPIRY_MARGIN_MS so it is never before the bucket is really fresh.
 */
import { F_A, F_B, F_C, F_EXPIRES, H_QUOTA_DIRTY } from '../../../common/rate-limit-layout.js';

export const ALG_TOKEN_BUCKET = 0;
export const ALG_GCRA = 1;
export const ALG_FIXED_WINDOW = 2;
export const ALG_SLIDING_WINDOW = 3;
export const ALG_QUOTA = 4;

export const ALGORITHMS = ['token_bucket', 'gcra', 'fixed_window', 'sliding_window', 'quota'] as const;

/** Tolerance for float drift, in requests: 100 requests per second must give exactly 100 after 1 s. */
const EPS = 1e-9;
/**
 * Added to a computed F_EXPIRES (a time rounded to 0.24 µs): the bucket is
 * fresh by then, whatever the rounding, and is kept 1 µs longer at most.
 */
export const EXPIRY_MARGIN_MS = 0.001;

export class Decision {
  allowed = false;
  remaining = 0;
  resetMs = 0;
  retryMs = 0;
}

/** The numbers an algorithm needs, precomputed per policy. */
export interface LimitParams {
  readonly algorithm: number;
  /** Requests per window (windows), or refill per `perMs` (token bucket, GCRA). */
  readonly rate: number;
  readonly perMs: number;
  readonly burst: number;
}

/**
 * Token bucket: `burst` tokens, refilled continuously at rate/per; a request
 * takes one. F_A tokens, F_B time of the last refill. A new bucket is full.
 */
export function tokenBucket(f: Float64Array, fb: number, isNew: boolean, now: number, p: LimitParams, rateScale: number, out: Decision): void {
  const perMsRate = (p.rate * rateScale) / p.perMs; // tokens per ms
  const burst = scaledBurst(p.burst, rateScale);
  let tokens: number;
  if (isNew) tokens = burst;
  else {
    const elapsed = now - f[fb + F_B]!;
    tokens = f[fb + F_A]! + (elapsed > 0 ? elapsed * perMsRate : 0);
    if (tokens > burst) tokens = burst;
  }
  if (tokens >= 1 - EPS) {
    tokens -= 1;
    out.allowed = true;
    out.retryMs = 0;
  } else {
    out.allowed = false;
    out.retryMs = (1 - tokens) / perMsRate;
  }
  f[fb + F_A] = tokens;
  f[fb + F_B] = now;
  const toFull = tokens >= burst ? 0 : (burst - tokens) / perMsRate;
  f[fb + F_EXPIRES] = toFull === 0 ? now : now + toFull + EXPIRY_MARGIN_MS;
  out.remaining = tokens < 0 ? 0 : Math.floor(tokens + EPS);
  out.resetMs = toFull;
}

/**
 * GCRA (the generic cell rate algorithm: a leaky bucket as a meter). One
 * number, the theoretical arrival time TAT: requests are admitted at one
 * per emission interval T = per/rate on average, with at most `burst` back
 * to back (burst 1: perfectly smooth, no two closer than T).
 *
 * TAT is F_A + F_C: F_A the time rounded to a double, F_C the remainder the
 * rounding dropped (|F_C| <= half of F_A's last digit). At Unix-time
 * magnitudes a plain `tat += T` loses up to 0.12 µs per request, which adds
 * up (1,000,000 per second would admit 2% too many, 10,000,000 per second
 * without limit); the remainder keeps it exact. Whoever writes a TAT into
 * F_A alone (the Redis sync) sets F_C to 0.
 */
export function gcra(f: Float64Array, fb: number, isNew: boolean, now: number, p: LimitParams, rateScale: number, out: Decision): void {
  const t = p.perMs / (p.rate * rateScale); // emission interval, ms
  const tau = t * (scaledBurst(p.burst, rateScale) - 1); // tolerance
  let hi = now;
  let lo = 0;
  // How far TAT is ahead of now: F_A - now is exact (two close doubles).
  let ahead = 0;
  if (!isNew) {
    ahead = (f[fb + F_A]! - now) + f[fb + F_C]!;
    if (ahead > 0) {
      hi = f[fb + F_A]!;
      lo = f[fb + F_C]!;
    } else {
      ahead = 0;
    }
  }
  if (ahead <= tau + t * EPS) {
    // hi + lo += t, exactly (Fast2Sum twice: |hi| >= |t|, |hi| >= |lo|).
    const s = hi + t;
    lo += t - (s - hi);
    hi = s + lo;
    lo -= hi - s;
    ahead += t;
    out.allowed = true;
    out.retryMs = 0;
  } else {
    out.allowed = false;
    out.retryMs = ahead - tau;
  }
  f[fb + F_A] = hi;
  f[fb + F_C] = lo;
  // Requests that would still pass now: how many more T fit under tau + T.
  const rem = Math.floor((tau + t - ahead) / t + EPS);
  out.remaining = rem < 0 ? 0 : rem;
  out.resetMs = ahead;
  f[fb + F_EXPIRES] = gcraExpiry(hi, lo);
}

/** This instance's share of a burst (module comment): at least 1. */
function scaledBurst(burst: number, rateScale: number): number {
  if (rateScale === 1) return burst;
  const b = burst * rateScale;
  return b < 1 ? 1 : b;
}

/** TAT rounded up: a bucket whose TAT has passed equals a fresh one. */
function gcraExpiry(hi: number, lo: number): number {
  return lo > 0 ? hi + EXPIRY_MARGIN_MS : hi;
}

/**
 * Fixed window: `rate` requests per window of `per`, windows aligned on
 * multiples of `per` since the Unix epoch (so every instance has the same
 * windows). F_A count, F_B window start. Up to 2 × rate can pass around a
 * window boundary (the end of one window and the start of the next).
 */
export function fixedWindow(f: Float64Array, fb: number, isNew: boolean, now: number, p: LimitParams, rateScale: number, out: Decision): void {
  const per = p.perMs;
  const start = now - (now % per);
  // The share may have dropped below what this window already counted: countIn clamps remaining.
  countIn(f, fb, isNew, now, Math.max(1, Math.floor(p.rate * rateScale + EPS)), start, start + per, out);
}

/**
 * One request counted in the window [start, end) (ms) of at most `limit`:
 * F_A count, F_B window start (a bucket whose F_B is another window starts
 * at 0). Shared by fixed windows and quotas (a calendar period). Returns
 * whether it was admitted (also in `out`). `remaining` is never negative,
 * even when the count exceeds the limit (a smaller share, a count learned
 * from the Redis sync).
 */
function countIn(f: Float64Array, fb: number, isNew: boolean, now: number, limit: number, start: number, end: number, out: Decision): boolean {
  let count = isNew || f[fb + F_B] !== start ? 0 : f[fb + F_A]!;
  const allowed = count < limit;
  if (allowed) {
    count++;
    out.retryMs = 0;
  } else {
    out.retryMs = end - now;
  }
  out.allowed = allowed;
  f[fb + F_A] = count;
  f[fb + F_B] = start;
  f[fb + F_EXPIRES] = count === 0 ? now : end;
  out.remaining = count < limit ? limit - count : 0;
  out.resetMs = end - now;
  return allowed;
}

/**
 * Sliding window (the two-window counter approximation, as Cloudflare and
 * Kong use it): the count of the previous fixed window, weighted by the
 * share of it still inside the sliding window, plus the current window's
 * count; a request passes while that estimate is below the limit (so that
 * evenly spread traffic gets exactly `rate` in every interval of `per`).
 * F_A current count, F_B current window start, F_C previous count.
 * Error bound (README): it assumes the previous window's requests were
 * spread evenly; in the worst case (all of them at its very end) up to
 * 2 × rate can pass in a window of `per`, never more (no fixed window ever
 * counts more than rate).
 */
export function slidingWindow(f: Float64Array, fb: number, isNew: boolean, now: number, p: LimitParams, rateScale: number, out: Decision): void {
  const per = p.perMs;
  const start = now - (now % per);
  let cur = 0;
  let prev = 0;
  if (!isNew) {
    const s = f[fb + F_B]!;
    if (s === start) {
      cur = f[fb + F_A]!;
      prev = f[fb + F_C]!;
    } else if (s === start - per) {
      prev = f[fb + F_A]!;
    }
  }
  const scaled = p.rate * rateScale;
  const limit = scaled < 1 ? 1 : scaled;
  const elapsed = now - start;
  const weight = (per - elapsed) / per; // share of the previous window still inside
  if (prev * weight + cur < limit - EPS) {
    cur++;
    out.allowed = true;
    out.retryMs = 0;
  } else {
    out.allowed = false;
    out.retryMs = slidingRetry(prev, cur, limit, per, elapsed);
  }
  f[fb + F_A] = cur;
  f[fb + F_B] = start;
  f[fb + F_C] = prev;
  const room = Math.ceil(limit - EPS - (prev * weight + cur));
  out.remaining = room > 0 ? room : 0;
  // Back to nothing counted once both windows holding requests are over.
  const clear = slidingClear(cur, prev, start, per, now);
  f[fb + F_EXPIRES] = clear;
  out.resetMs = clear - now;
}

function slidingClear(cur: number, prev: number, start: number, per: number, otherwise: number): number {
  return cur > 0 ? start + 2 * per : prev > 0 ? start + per : otherwise;
}

/** When the estimate next falls below the limit (ms from now; 1 µs past the exact instant). */
function slidingRetry(prev: number, cur: number, limit: number, per: number, elapsed: number): number {
  // This window: prev * (per - x) / per + cur < limit, for x in (elapsed, per).
  if (prev > 0 && cur < limit) {
    const x = per * (1 - (limit - cur) / prev);
    if (x < per) return Math.max(x - elapsed, 0) + 0.001;
  }
  // Next window: cur becomes the previous count, weighted (per - y) / per.
  const y = cur < limit ? 0 : per * (1 - limit / cur) + 0.001;
  return per - elapsed + y;
}

/**
 * Quota: `rate` requests per calendar period; the caller passes the
 * period's start and end (ms), computed in the policy's time zone. F_A
 * count, F_B period start.
 */
export function quota(f: Float64Array, fb: number, isNew: boolean, now: number, limit: number, start: number, end: number, out: Decision): void {
  if (countIn(f, fb, isNew, now, limit, start, end, out)) markQuotaDirty(f);
}

/**
 * Tells the quota file's saver (engine/quota-store.ts) that a count
 * changed. Written only when clear, so the header's cache line is written
 * about once per save, not per request.
 */
function markQuotaDirty(f: Float64Array): void {
  if (f[H_QUOTA_DIRTY] === 0) f[H_QUOTA_DIRTY] = 1;
}

/**
 * Takes back the admission `decide` just made on this bucket (same lock
 * or a later one: later requests may have changed it; the correction is
 * additive, so it stays right). F_EXPIRES follows, so a bucket whose only
 * admission is taken back is reusable at once.
 */
export function undo(f: Float64Array, fb: number, algorithm: number, p: LimitParams, rateScale: number, windowStart: number): void {
  switch (algorithm) {
    case ALG_TOKEN_BUCKET: {
      const burst = scaledBurst(p.burst, rateScale);
      const tokens = Math.min(burst, f[fb + F_A]! + 1);
      f[fb + F_A] = tokens;
      const last = f[fb + F_B]!;
      f[fb + F_EXPIRES] = tokens >= burst ? last : last + (burst - tokens) / ((p.rate * rateScale) / p.perMs) + EXPIRY_MARGIN_MS;
      break;
    }
    case ALG_GCRA: {
      // hi + lo -= T, exactly (as in gcra()).
      const t = p.perMs / (p.rate * rateScale);
      const hi = f[fb + F_A]!;
      const s = hi - t;
      let lo = f[fb + F_C]! + (-t - (s - hi));
      const h2 = s + lo;
      lo -= h2 - s;
      f[fb + F_A] = h2;
      f[fb + F_C] = lo;
      f[fb + F_EXPIRES] = gcraExpiry(h2, lo);
      break;
    }
    case ALG_SLIDING_WINDOW:
      if (f[fb + F_B] === windowStart && f[fb + F_A]! > 0) {
        const cur = f[fb + F_A]! - 1;
        f[fb + F_A] = cur;
        f[fb + F_EXPIRES] = slidingClear(cur, f[fb + F_C]!, windowStart, p.perMs, windowStart);
      }
      break;
    default:
      // Fixed windows and quotas: only while the window it was counted in is current.
      if (f[fb + F_B] === windowStart && f[fb + F_A]! > 0) {
        const count = f[fb + F_A]! - 1;
        f[fb + F_A] = count;
        if (count === 0) f[fb + F_EXPIRES] = windowStart;
        if (algorithm === ALG_QUOTA) markQuotaDirty(f);
      }
      break;
  }
}
