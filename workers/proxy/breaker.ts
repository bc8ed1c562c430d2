/**
 * The circuit breaker and outlier-ejection state machine of one target, on
 * the shared state (common/upstream-state-layout.ts). Plain functions over
 * (state, target cell, settings, now): the same code runs in every worker,
 * and the unit tests drive it with a fake clock.
 *
 *   closed --(failureThreshold failures in a row, or failureRate % of at
 *             least minRequests requests over windowMs)--> open
 *   open   --(openMs x 2^(trips-1), at most maxOpenMs, elapsed; the first
 *             request after it moves the breaker)--> half_open
 *   half_open: exactly halfOpenProbes requests are let through, counted
 *             with compareExchange across every thread; the rest are
 *             refused as when open.
 *             all probes succeed --> closed (trips back to 0)
 *             one probe fails    --> open, for twice as long as last time
 *             a probe that ends with no verdict (the client left, the pool
 *             was full) gives its place back.
 *
 * What is a failure (Envoy's "5xx and locally originated errors",
 * resilience4j's recorded exceptions): the connection to the target could
 * not be made (refused, connect timeout), it was reset or closed before a
 * complete response, the response head did not come within responseMs (or
 * the body stalled past idleMs), the response was not valid HTTP, or the
 * target answered 5xx; and with slowCallMs > 0, a response head slower than
 * that. Not a failure, not a success: the client leaving, the target's
 * connection pool being full (a local limit), a request the gateway refused
 * itself.
 *
 * A probe held by a worker that died would keep the breaker half-open with
 * no place left: after PROBE_LEASE (openMs + connect + response timeouts,
 * the longest a live probe can take to get its head) the places are given
 * back.
 */
import type { BreakerConfig, OutlierConfig } from '../../common/config/types.js';
import {
  HD_EJECT_LOCK, MAX_DEADLINE_MS, ST_CLOSED, ST_HALF_OPEN, ST_OPEN, ST_TRANSIT, T_CONSEC, T_EJECTED, T_EJECTIONS, T_EJECT_COUNT,
  T_EJECT_UNTIL, T_FAILURES, T_HALF_SINCE, T_HEALTH, T_OPEN_UNTIL, T_OUT_CONSEC, T_PREV_FAIL, T_PREV_TOTAL, T_PROBES, T_PROBE_OK,
  T_STATE, T_TO, T_TRIPS, T_WIN_FAIL, T_WIN_START, T_WIN_TOTAL, H_UNHEALTHY, before, wrapMs,
} from '../../common/upstream-state-layout.js';
import { MAX_EJECTION_MS } from '../../common/config/resilience.js';

export const OUTCOME_SUCCESS = 0;
export const OUTCOME_FAILURE = 1;
/** Neither: the client left, the pool was full, the gateway refused (a probe gives its place back). */
export const OUTCOME_NONE = 2;

/** Why a target cannot be picked (availability). */
export const AVAILABLE = 0;
export const BLOCKED_BREAKER = 1;
export const BLOCKED_HEALTH = 2;

/** The settings one target's machine runs with (an upstream's, shared by its targets). */
export interface BreakerSettings {
  breaker: BreakerConfig | null;
  outlier: OutlierConfig | null;
  /** Failure window (breaker.windowMs, else the default 10 s: the admin API's recent failures). */
  windowMs: number;
  /** Half-open places held longer than this are given back. */
  probeLeaseMs: number;
}

/**
 * Whether the target may be picked now, without side effects: 0 available,
 * BLOCKED_BREAKER (open, or half-open with no probe place left),
 * BLOCKED_HEALTH (unhealthy by active checks, or ejected).
 * This is the hot path -- change with care!
 */
export function availability(s: Int32Array, b: number, probes: number, now: number): number {
  // Plain reads (aligned Int32 reads never tear): a hint read on every
  // request, where an Atomics.load costs a call; every decision that must
  // be exact (a probe place, a transition) is taken with compareExchange.
  if (s[b + T_HEALTH] === H_UNHEALTHY) return BLOCKED_HEALTH;
  if (s[b + T_EJECTED] === 1 && before(now, s[b + T_EJECT_UNTIL]!)) return BLOCKED_HEALTH;
  const st = s[b + T_STATE];
  if (st === ST_CLOSED) return AVAILABLE;
  if (st === ST_OPEN) return before(now, s[b + T_OPEN_UNTIL]!) ? BLOCKED_BREAKER : AVAILABLE;
  if (st === ST_HALF_OPEN) return s[b + T_PROBES]! < probes ? AVAILABLE : BLOCKED_BREAKER;
  return BLOCKED_BREAKER; // ST_TRANSIT
}

/**
 * Takes permission for one request: returns -1 refused, 0 admitted, 1
 * admitted as a half-open probe. Moves open -> half_open when its time is
 * up. Without a breaker every request is admitted.
 */
export function acquire(s: Int32Array, b: number, cfg: BreakerSettings, now: number): number {
  const br = cfg.breaker;
  if (br === null) return 0;
  // Closed, the common case: one plain read (see availability).
  if (s[b + T_STATE] === ST_CLOSED) return 0;
  for (let attempt = 0; attempt < 8; attempt++) {
    const st = Atomics.load(s, b + T_STATE);
    if (st === ST_CLOSED) return 0;
    if (st === ST_OPEN) {
      if (before(now, Atomics.load(s, b + T_OPEN_UNTIL))) return -1;
      if (Atomics.compareExchange(s, b + T_STATE, ST_OPEN, ST_TRANSIT) === ST_OPEN) {
        Atomics.store(s, b + T_PROBES, 0);
        Atomics.store(s, b + T_PROBE_OK, 0);
        Atomics.store(s, b + T_HALF_SINCE, wrapMs(now));
        Atomics.add(s, b + T_TO + ST_HALF_OPEN, 1);
        Atomics.store(s, b + T_STATE, ST_HALF_OPEN);
      }
      continue;
    }
    if (st === ST_HALF_OPEN) {
      const p = Atomics.load(s, b + T_PROBES);
      if (p < br.halfOpenProbes) {
        if (Atomics.compareExchange(s, b + T_PROBES, p, p + 1) === p) return 1;
        continue; // another thread took a place meanwhile: look again
      }
      // Every place is taken: given back after the lease (a probe whose worker died).
      if (before(now, (Atomics.load(s, b + T_HALF_SINCE) + cfg.probeLeaseMs) | 0)) return -1;
      if (Atomics.compareExchange(s, b + T_STATE, ST_HALF_OPEN, ST_TRANSIT) === ST_HALF_OPEN) {
        Atomics.store(s, b + T_PROBES, 0);
        Atomics.store(s, b + T_PROBE_OK, 0);
        Atomics.store(s, b + T_HALF_SINCE, wrapMs(now));
        Atomics.store(s, b + T_STATE, ST_HALF_OPEN);
      }
      continue;
    }
    return -1; // ST_TRANSIT: another thread is changing it; open for this instant
  }
  return -1;
}

/**
 * Records how a request admitted by `acquire` ended (`probe`: acquire
 * returned 1). Returns true when the target's failures in a row reached
 * outlierDetection.consecutiveFailures: the caller, which knows the
 * upstream's other targets, then calls `eject`.
 */
export function record(s: Int32Array, b: number, cfg: BreakerSettings, probe: boolean, outcome: number, now: number): boolean {
  if (outcome === OUTCOME_NONE) {
    if (probe && Atomics.load(s, b + T_STATE) === ST_HALF_OPEN) subPositive(s, b + T_PROBES);
    return false;
  }
  roll(s, b, cfg.windowMs, now);
  const br = cfg.breaker;
  // Requests in the window matter to failureRate alone: without it a success writes nothing shared.
  if (outcome === OUTCOME_FAILURE || (br !== null && br.failureRate > 0)) Atomics.add(s, b + T_WIN_TOTAL, 1);
  if (outcome === OUTCOME_SUCCESS) {
    // Plain reads first: the line is only written when there is something to reset.
    if (s[b + T_CONSEC] !== 0) Atomics.store(s, b + T_CONSEC, 0);
    if (s[b + T_OUT_CONSEC] !== 0) Atomics.store(s, b + T_OUT_CONSEC, 0);
    if (probe && br !== null && Atomics.load(s, b + T_STATE) === ST_HALF_OPEN) {
      if (Atomics.add(s, b + T_PROBE_OK, 1) + 1 >= br.halfOpenProbes) close(s, b);
    }
    return false;
  }
  Atomics.add(s, b + T_WIN_FAIL, 1);
  Atomics.add(s, b + T_FAILURES, 1);
  if (br !== null) {
    const st = Atomics.load(s, b + T_STATE);
    if (st === ST_CLOSED) {
      const c = Atomics.add(s, b + T_CONSEC, 1) + 1;
      if ((br.failureThreshold > 0 && c >= br.failureThreshold) || rateExceeded(s, b, br, now)) trip(s, b, br, ST_CLOSED, now);
    } else if (st === ST_HALF_OPEN && probe) {
      trip(s, b, br, ST_HALF_OPEN, now);
    }
  }
  return cfg.outlier !== null && Atomics.add(s, b + T_OUT_CONSEC, 1) + 1 >= cfg.outlier.consecutiveFailures;
}

function subPositive(s: Int32Array, cell: number): void {
  for (;;) {
    const v = Atomics.load(s, cell);
    if (v <= 0) return;
    if (Atomics.compareExchange(s, cell, v, v - 1) === v) return;
  }
}

/** Starts a new failure window when the current one is over; the old one becomes the previous window. */
function roll(s: Int32Array, b: number, windowMs: number, now: number): void {
  const ws = s[b + T_WIN_START]!;
  const el = (wrapMs(now) - ws) | 0;
  if (el >= 0 && el < windowMs) return;
  if (Atomics.compareExchange(s, b + T_WIN_START, ws, wrapMs(now)) !== ws) return;
  const total = Atomics.exchange(s, b + T_WIN_TOTAL, 0);
  const fail = Atomics.exchange(s, b + T_WIN_FAIL, 0);
  const adjacent = el >= 0 && el < 2 * windowMs;
  Atomics.store(s, b + T_PREV_TOTAL, adjacent ? total : 0);
  Atomics.store(s, b + T_PREV_FAIL, adjacent ? fail : 0);
}

/** Sliding-window estimate: the current window plus the previous one weighted by the share of it still inside windowMs. */
export function rateExceeded(s: Int32Array, b: number, br: BreakerConfig, now: number): boolean {
  if (br.failureRate <= 0) return false;
  const el = Math.min(Math.max((wrapMs(now) - Atomics.load(s, b + T_WIN_START)) | 0, 0), br.windowMs);
  const w = 1 - el / br.windowMs;
  const total = Atomics.load(s, b + T_WIN_TOTAL) + Atomics.load(s, b + T_PREV_TOTAL) * w;
  if (total < br.minRequests) return false;
  const fail = Atomics.load(s, b + T_WIN_FAIL) + Atomics.load(s, b + T_PREV_FAIL) * w;
  return fail * 100 >= br.failureRate * total;
}

/** How long the breaker stays open on its `trips`-th trip in a row. */
export function openTime(br: BreakerConfig, trips: number): number {
  let d = br.openMs;
  for (let i = 1; i < trips && d < br.maxOpenMs; i++) d *= 2;
  return Math.min(d, br.maxOpenMs, MAX_DEADLINE_MS);
}

function clearWindow(s: Int32Array, b: number): void {
  Atomics.store(s, b + T_CONSEC, 0);
  Atomics.store(s, b + T_WIN_TOTAL, 0);
  Atomics.store(s, b + T_WIN_FAIL, 0);
  Atomics.store(s, b + T_PREV_TOTAL, 0);
  Atomics.store(s, b + T_PREV_FAIL, 0);
}

function trip(s: Int32Array, b: number, br: BreakerConfig, from: number, now: number): void {
  if (Atomics.compareExchange(s, b + T_STATE, from, ST_TRANSIT) !== from) return;
  const trips = Math.min(Atomics.load(s, b + T_TRIPS) + 1, 64);
  Atomics.store(s, b + T_TRIPS, trips);
  Atomics.store(s, b + T_OPEN_UNTIL, wrapMs(now + openTime(br, trips)));
  clearWindow(s, b);
  Atomics.add(s, b + T_TO + ST_OPEN, 1);
  Atomics.store(s, b + T_STATE, ST_OPEN);
}

function close(s: Int32Array, b: number): void {
  if (Atomics.compareExchange(s, b + T_STATE, ST_HALF_OPEN, ST_TRANSIT) !== ST_HALF_OPEN) return;
  Atomics.store(s, b + T_TRIPS, 0);
  clearWindow(s, b);
  Atomics.add(s, b + T_TO + ST_CLOSED, 1);
  Atomics.store(s, b + T_STATE, ST_CLOSED);
}

/**
 * Ejects target `b` of an upstream whose targets are `cells`, unless that
 * would eject more than maxEjectionPercent of them (rounded down): then its
 * count starts again. Serialised across threads by the header's lock
 * (ejections are rare); a thread that finds it taken leaves this ejection
 * to the next failure. Returns whether it ejected.
 */
export function eject(s: Int32Array, b: number, cells: readonly number[], o: OutlierConfig, now: number): boolean {
  if (Atomics.compareExchange(s, HD_EJECT_LOCK, 0, 1) !== 0) return false;
  try {
    Atomics.store(s, b + T_OUT_CONSEC, 0);
    if (Atomics.load(s, b + T_EJECTED) === 1 && before(now, Atomics.load(s, b + T_EJECT_UNTIL))) return false;
    let ejected = 0;
    for (let i = 0; i < cells.length; i++) {
      const c = cells[i]!;
      if (Atomics.load(s, c + T_EJECTED) === 1 && before(now, Atomics.load(s, c + T_EJECT_UNTIL))) ejected++;
    }
    if ((ejected + 1) * 100 > o.maxEjectionPercent * cells.length) return false;
    const cap = Math.max(o.baseEjectionMs, MAX_EJECTION_MS);
    let count = Atomics.load(s, b + T_EJECT_COUNT);
    // A target that stayed in for a whole maximum ejection time since its last one starts over.
    if (count > 0 && ((wrapMs(now) - Atomics.load(s, b + T_EJECT_UNTIL)) | 0) > cap) count = 0;
    count = Math.min(count + 1, 1_000_000);
    Atomics.store(s, b + T_EJECT_COUNT, count);
    Atomics.store(s, b + T_EJECT_UNTIL, wrapMs(now + Math.min(o.baseEjectionMs * count, cap, MAX_DEADLINE_MS)));
    Atomics.store(s, b + T_EJECTED, 1);
    Atomics.add(s, b + T_EJECTIONS, 1);
    return true;
  } finally {
    Atomics.store(s, HD_EJECT_LOCK, 0);
  }
}
