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
 * and sets the entry's F_EXPIRES: from then on the bucket equals a fresh
 * one, so the entry may be reused (layout module).
 *
 * `undo` takes back one admission (a later policy of the same route refused
 * the request: a refused request consumes nothing anywhere).
 *
 * Limits: `rate` requests per `perMs`, `burst` for the token bucket and
 * GCRA. `rateScale` (0..1] scales the refill while a cluster-wide limit is
 * enforced by this instance alone (Redis away: H_SHARE).
 */
import { F_A, F_B, F_C, F_EXPIRES } from '../../../common/rate-limit-layout.js';

export const ALG_TOKEN_BUCKET = 0;
export const ALG_GCRA = 1;
export const ALG_FIXED_WINDOW = 2;
export const ALG_SLIDING_WINDOW = 3;
export const ALG_QUOTA = 4;

export const ALGORITHMS = ['token_bucket', 'gcra', 'fixed_window', 'sliding_window', 'quota'] as const;

/** Tolerance for float drift: 100 requests per second must give exactly 100 after 1 s. */
const EPS = 1e-9;

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
  const burst = p.burst;
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
  f[fb + F_EXPIRES] = now + toFull;
  out.remaining = tokens < 0 ? 0 : Math.floor(tokens + EPS);
  out.resetMs = toFull;
}

/**
 * GCRA (the generic cell rate algorithm: a leaky bucket as a meter). One
 * number, the theoretical arrival time TAT (F_A): requests are admitted at
 * one per emission interval T = per/rate on average, with at most `burst`
 * back to back (burst 1: perfectly smooth, no two closer than T).
 */
export function gcra(f: Float64Array, fb: number, isNew: boolean, now: number, p: LimitParams, rateScale: number, out: Decision): void {
  const t = p.perMs / (p.rate * rateScale); // emission interval, ms
  const tau = t * (p.burst - 1); // tolerance
  let tat = isNew ? now : f[fb + F_A]!;
  if (tat < now) tat = now;
  if (tat - now <= tau + EPS) {
    tat += t;
    f[fb + F_A] = tat;
    out.allowed = true;
    out.retryMs = 0;
  } else {
    out.allowed = false;
    out.retryMs = tat - tau - now;
    if (isNew) f[fb + F_A] = tat;
  }
  // Requests that would still pass now: how many more T fit under tau + T.
  const rem = Math.floor((tau + t - (tat - now)) / t + EPS);
  out.remaining = rem < 0 ? 0 : rem;
  out.resetMs = tat - now;
  f[fb + F_EXPIRES] = tat;
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
  let count = isNew || f[fb + F_B] !== start ? 0 : f[fb + F_A]!;
  const limit = Math.max(1, Math.floor(p.rate * rateScale + EPS));
  const end = start + per;
  if (count < limit) {
    count++;
    out.allowed = true;
    out.retryMs = 0;
  } else {
    out.allowed = false;
    out.retryMs = end - now;
  }
  f[fb + F_A] = count;
  f[fb + F_B] = start;
  f[fb + F_EXPIRES] = count === 0 ? now : end;
  out.remaining = limit - count;
  out.resetMs = end - now;
}

/**
 * Sliding window (the two-window counter approximation, as Cloudflare and
 * Kong use it): the count of the previous fixed window, weighted by the
 * share of it still inside the sliding window, plus the current window's
 * count. F_A current count, F_B current window start, F_C previous count.
 * Error bound (README): it assumes the previous window's requests were
 * spread evenly; in the worst case (all of them at its very end) up to
 * 2 × rate can pass in a window of `per`, never more.
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
  const limit = p.rate * rateScale;
  const elapsed = now - start;
  const weight = (per - elapsed) / per; // share of the previous window still inside
  const estimate = prev * weight + cur;
  if (estimate + 1 <= limit + EPS) {
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
  const est = prev * weight + cur;
  out.remaining = Math.max(0, Math.floor(limit - est + EPS));
  // Back to nothing counted once both windows holding requests are over.
  const clear = cur > 0 ? start + 2 * per : prev > 0 ? start + per : now;
  f[fb + F_EXPIRES] = clear;
  out.resetMs = clear - now;
}

/** When the estimate next leaves room for one request (ms from now). */
function slidingRetry(prev: number, cur: number, limit: number, per: number, elapsed: number): number {
  // This window: prev * (per - x) / per + cur + 1 <= limit, for x in (elapsed, per).
  if (prev > 0 && cur + 1 <= limit) {
    const x = per * (1 - (limit - cur - 1) / prev);
    if (x < per) return Math.max(x - elapsed, 0) + 0.001;
  }
  // Next window: cur becomes the previous count, weighted (per - y) / per.
  if (cur > 0 && limit >= 1) {
    const y = cur + 1 <= limit ? 0 : per * (1 - (limit - 1) / cur);
    return per - elapsed + Math.max(y, 0) + 0.001;
  }
  return per - elapsed;
}

/**
 * Quota: `rate` requests per calendar period; the caller passes the
 * period's start and end (ms), computed in the policy's time zone. F_A
 * count, F_B period start.
 */
export function quota(f: Float64Array, fb: number, isNew: boolean, now: number, limit: number, start: number, end: number, out: Decision): void {
  let count = isNew || f[fb + F_B] !== start ? 0 : f[fb + F_A]!;
  if (count < limit) {
    count++;
    out.allowed = true;
    out.retryMs = 0;
  } else {
    out.allowed = false;
    out.retryMs = end - now;
  }
  f[fb + F_A] = count;
  f[fb + F_B] = start;
  f[fb + F_EXPIRES] = count === 0 ? now : end;
  out.remaining = limit - count;
  out.resetMs = end - now;
}

/**
 * Takes back the admission `decide` just made on this bucket (same lock
 * or a later one: later requests may have changed it; the correction is
 * additive, so it stays right).
 */
export function undo(f: Float64Array, fb: number, algorithm: number, p: LimitParams, rateScale: number, windowStart: number): void {
  switch (algorithm) {
    case ALG_TOKEN_BUCKET:
      f[fb + F_A] = Math.min(p.burst, f[fb + F_A]! + 1);
      break;
    case ALG_GCRA:
      f[fb + F_A] = f[fb + F_A]! - p.perMs / (p.rate * rateScale);
      break;
    default:
      // Windows and quotas: only while the window it was counted in is current.
      if (f[fb + F_B] === windowStart && f[fb + F_A]! > 0) f[fb + F_A] = f[fb + F_A]! - 1;
      break;
  }
}
