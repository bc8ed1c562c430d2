/**
 * Shared-memory layout of the upstream resilience state: per target, its
 * in-flight count, circuit breaker, active health and outlier ejection; per
 * upstream, its in-flight count, retry counters and retry budget window. One SharedArrayBuffer per process, created
 * by the engine at start and handed to every worker and to the admin
 * thread, so every thread agrees at once on which targets may be picked
 * (a breaker opened by one worker refuses in all; a half-open breaker lets
 * exactly `halfOpenProbes` requests through across all of them), and the
 * state outlives reloads (an unchanged target keeps its slot: the engine
 * never moves or reuses target slots, see workers/proxy/balancer.ts
 * targetKey) and worker replacements.
 *
 * Every cell is an Int32 read and written with Atomics (sequentially
 * consistent: no torn or reordered reads between threads).
 *
 *   [0, HEADER_INTS)                          header: the ejection lock, the worker count
 *   then TARGET_INTS per target slot          slot 0 = overflow (never guarded)
 *   then UPSTREAM_INTS per upstream slot      slot 0 = overflow (never guarded)
 *   then per worker index: WORKER_INTS        what that worker has in flight
 *                                             (per target slot, then per
 *                                             upstream slot)
 *
 * In-flight counts are per worker: each worker writes only its own cells
 * (plain increments: no lock-prefixed instruction and no cache line bounced
 * between cores per request), and a target's or an upstream's count is the
 * sum over the workers (a handful of plain reads, by p2c and maxInFlight).
 * A worker that dies has its section zeroed by the engine (releaseWorker):
 * nothing it had in flight stays counted.
 *
 * Times are milliseconds of the shared clock (common/rate-limit-layout.ts
 * ClockEpoch: performance.now() + clockOffset, Unix-aligned) truncated to
 * 32 bits (`t | 0`) and compared by wrapping difference (`(a - b) | 0`), as
 * TCP sequence numbers are: exact while the two times are less than 24 days
 * apart; every stored deadline is at most MAX_DEADLINE_MS away.
 *
 * Breaker state changes are serialised per target by the T_STATE cell
 * itself: a thread moves it with compareExchange to ST_TRANSIT, writes the
 * other cells of the new state, then stores the new state. A reader that
 * sees ST_TRANSIT treats the target as open for that instant (nanoseconds).
 * Only one thread wins each transition, so a transition is counted once.
 *
 * What workers write: their own in-flight cells, breaker cells, the outlier-ejection cells and the
 * retry counters and budget window cells. What the
 * admin thread writes: T_HEALTH (active health checks) and the health-check
 * counters. The counters (T_TO_*, T_HC_*, T_EJECTIONS, U_OVERLOADED,
 * U_RETRIES + k, U_BUDGET_EXHAUSTED) only
 * grow: /metrics reads them as Prometheus counters.
 */

import { MAX_TARGET_SLOTS } from './metrics-layout.js';

// -- breaker states (T_STATE), also the value of turnpike_circuit_breaker_state
export const ST_CLOSED = 0;
export const ST_OPEN = 1;
export const ST_HALF_OPEN = 2;
/** A thread is writing a state change (read as open). */
export const ST_TRANSIT = 3;
export const BREAKER_STATE_NAMES = ['closed', 'open', 'half_open', 'open'] as const;

// -- health (T_HEALTH)
export const H_UNKNOWN = 0;
export const H_HEALTHY = 1;
export const H_UNHEALTHY = 2;
export const HEALTH_NAMES = ['unknown', 'healthy', 'unhealthy'] as const;
/** turnpike_upstream_health_checks_total{result}: one counter cell each, from T_HC. */
export const HEALTH_CHECK_RESULTS = ['success', 'failure', 'timeout'] as const;

// -- header
/** 0 free, else held: serialises outlier ejections (rare), so maxEjectionPercent holds across workers. */
export const HD_EJECT_LOCK = 0;
/** Worker sections in the buffer (set at creation). */
export const HD_WORKERS = 1;
export const HEADER_INTS = 16;

// -- per target (Int32 offsets within its slot)
/** (Unused: in-flight counts are per worker, see above.) */
export const T_RESERVED = 0;
/** ST_* */
export const T_STATE = 1;
/** Open: half-open from this time on. */
export const T_OPEN_UNTIL = 2;
/** Trips since the breaker last closed (the open time doubles with each). */
export const T_TRIPS = 3;
/** Half-open: probes admitted, and probes that succeeded. */
export const T_PROBES = 4;
export const T_PROBE_OK = 5;
/** Half-open since (a probe held by a worker that died is given back after a lease: see breaker.ts). */
export const T_HALF_SINCE = 6;
/** Consecutive failures (breaker's failureThreshold). */
export const T_CONSEC = 7;
/** Failure-rate window: its start, requests and failures in it, and in the window before. */
export const T_WIN_START = 8;
export const T_WIN_TOTAL = 9;
export const T_WIN_FAIL = 10;
export const T_PREV_TOTAL = 11;
export const T_PREV_FAIL = 12;
/** H_* (admin thread's active checks). */
export const T_HEALTH = 13;
/** Ejected until T_EJECT_UNTIL when 1. */
export const T_EJECTED = 14;
export const T_EJECT_UNTIL = 15;
/** Times ejected (the ejection time grows with it); reset after a long healthy spell. */
export const T_EJECT_COUNT = 16;
/** Consecutive failures (outlierDetection.consecutiveFailures). */
export const T_OUT_CONSEC = 17;
/** Counters: breaker transitions to closed, open, half_open (BREAKER_STATE_NAMES order). */
export const T_TO = 18;
/** Counters: health checks by HEALTH_CHECK_RESULTS. */
export const T_HC = 21;
/** Counter: outlier ejections. */
export const T_EJECTIONS = 24;
/** Counter: failures recorded (every failure kind, see breaker.ts). */
export const T_FAILURES = 25;
export const TARGET_INTS = 32; // 128 bytes: two cache lines

// -- per upstream
/** (Unused: in-flight counts are per worker, see above.) */
export const U_RESERVED = 0;
/** Counter: requests refused by breaker.maxInFlight. */
export const U_OVERLOADED = 1;
/**
 * Retries (upstream `retry`, workers/proxy/retry.ts), for every upstream
 * with a retry section whatever its guard. Counters: retries by
 * RETRY_REASONS (U_RETRIES + k), and retries refused by the budget.
 */
export const U_RETRIES = 2;
/** turnpike_upstream_retries_total{reason}: the condition that triggered the retry; "5xx" for a listed 5xx status other than 500..504. */
export const RETRY_REASONS = ['connect_failure', 'reset', 'timeout', '500', '501', '502', '503', '504', '5xx'] as const;
export const U_BUDGET_EXHAUSTED = U_RETRIES + RETRY_REASONS.length; // 11
/**
 * The retry budget's sliding window (two-window approximation, as the
 * breaker's failure rate): the current window's start (wrapped ms, a
 * multiple of the window), requests and retries in it, and in the window
 * before. Requests are added by each worker in batches (retry.ts), retries
 * one by one with Atomics.add (taken, then given back when over budget).
 */
export const U_BUDGET_START = 12;
export const U_BUDGET_REQ = 13;
export const U_BUDGET_RETRY = 14;
export const U_BUDGET_PREV_REQ = 15;
export const U_BUDGET_PREV_RETRY = 16;
export const UPSTREAM_INTS = 32; // two cache lines

/** Upstream slots (by name, stable for the life of the process); past this they share slot 0 (unguarded). */
export const MAX_UPSTREAM_SLOTS = 256;
export const UPSTREAM_OVERFLOW_SLOT = 0;
export const FIRST_UPSTREAM_SLOT = 1;

/** The longest deadline ever stored (breaker open time, ejection time): far below the 24-day wrap. */
export const MAX_DEADLINE_MS = 86_400_000;

const TARGETS_START = HEADER_INTS;
const UPSTREAMS_START = TARGETS_START + MAX_TARGET_SLOTS * TARGET_INTS;
const WORKERS_START = UPSTREAMS_START + MAX_UPSTREAM_SLOTS * UPSTREAM_INTS;
export const WORKER_INTS = MAX_TARGET_SLOTS + MAX_UPSTREAM_SLOTS;

export function upstreamStateBytes(workers: number): number {
  return (WORKERS_START + workers * WORKER_INTS) * 4;
}

/** Creates the state (engine, once per process); every target starts closed, health unknown. */
export function createUpstreamState(workers: number): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(upstreamStateBytes(workers));
  Atomics.store(new Int32Array(sab), HD_WORKERS, workers);
  return sab;
}

/** Requests in flight to a target (its slot), summed over the workers. */
export function targetInFlight(state: Int32Array, slot: number): number {
  let n = 0;
  const w = state[HD_WORKERS]!;
  for (let i = 0, c = WORKERS_START + slot; i < w; i++, c += WORKER_INTS) n += state[c]!;
  return n;
}

/** Requests in flight to an upstream (its slot), summed over the workers. */
export function upstreamInFlight(state: Int32Array, slot: number): number {
  return targetInFlight(state, MAX_TARGET_SLOTS + slot);
}

/** First cell of a target slot. */
export function targetCell(slot: number): number {
  return TARGETS_START + slot * TARGET_INTS;
}

/** First cell of an upstream slot. */
export function upstreamCell(slot: number): number {
  return UPSTREAMS_START + slot * UPSTREAM_INTS;
}

/** First cell of a worker's own in-flight section (per target slot, then per upstream slot). */
export function workerCell(index: number): number {
  return WORKERS_START + index * WORKER_INTS;
}

/** Wrapped ms: `now` truncated to 32 bits. */
export function wrapMs(now: number): number {
  return Math.floor(now) | 0;
}

/** `until` (wrapped) is still ahead of `now`. */
export function before(now: number, until: number): boolean {
  return ((until - wrapMs(now)) | 0) > 0;
}

/** Milliseconds from `now` to `until` (wrapped), <= 0 when passed. */
export function msUntil(now: number, until: number): number {
  return (until - wrapMs(now)) | 0;
}

/**
 * A worker died (engine): what it had in flight is no longer counted (its
 * section is zeroed for its replacement), so a crash never leaves a target
 * or an upstream counted busy forever. Probes it held are given back by the
 * half-open lease (breaker.ts).
 */
export function releaseWorker(state: Int32Array, index: number): void {
  const w = workerCell(index);
  for (let i = 0; i < WORKER_INTS; i++) Atomics.store(state, w + i, 0);
}

/** What GET /admin/upstreams shows of a target. */
export interface TargetStateView {
  health: (typeof HEALTH_NAMES)[number];
  breaker: 'closed' | 'open' | 'half_open';
  /** Open: when it goes half-open (ISO time), else null. */
  openUntil: string | null;
  ejectedUntil: string | null;
  inFlight: number;
  /** Failures in the breaker's current window and the one before, and in a row. */
  recentFailures: number;
  consecutiveFailures: number;
  /** Times ejected (the next ejection lasts longer), and breaker trips since it last closed. */
  ejections: number;
  trips: number;
}

/** Reads a target's state (admin thread). `now` is the shared clock's ms. */
export function readTargetState(state: Int32Array, slot: number, now: number): TargetStateView {
  const b = targetCell(slot);
  const st = Atomics.load(state, b + T_STATE);
  const openUntil = Atomics.load(state, b + T_OPEN_UNTIL);
  const ejectUntil = Atomics.load(state, b + T_EJECT_UNTIL);
  const ejected = Atomics.load(state, b + T_EJECTED) === 1 && before(now, ejectUntil);
  const wall = (until: number) => new Date(Math.round(now + msUntil(now, until))).toISOString();
  return {
    health: HEALTH_NAMES[Atomics.load(state, b + T_HEALTH)] ?? 'unknown',
    breaker: BREAKER_STATE_NAMES[st] ?? 'closed',
    openUntil: st === ST_OPEN ? wall(openUntil) : null,
    ejectedUntil: ejected ? wall(ejectUntil) : null,
    inFlight: Math.max(0, targetInFlight(state, slot)),
    recentFailures: Atomics.load(state, b + T_WIN_FAIL) + Atomics.load(state, b + T_PREV_FAIL),
    consecutiveFailures: Math.max(Atomics.load(state, b + T_CONSEC), Atomics.load(state, b + T_OUT_CONSEC)),
    ejections: Atomics.load(state, b + T_EJECTIONS),
    trips: Atomics.load(state, b + T_TRIPS),
  };
}
