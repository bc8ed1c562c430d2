/**
 * An upstream's retry policy at run time, in a worker (upstream `retry`,
 * common/config/retry.ts): which failures are retried, for which methods,
 * how long to wait before a retry, and the retry budget shared by every
 * worker thread (common/upstream-state-layout.ts U_BUDGET_*).
 *
 * Built once per config version per upstream that has `retry` (none
 * otherwise: the plain data plane pays one null check). Per request: one
 * field increment (`countRequest`; the shared counter gets the requests in
 * batches of REQUEST_BATCH, one Atomics.add each). Everything else runs only
 * when a try failed.
 *
 * The budget (Envoy's retry_budget, Linkerd's/Finagle's RetryBudget): retries
 * over the last RETRY_BUDGET_WINDOW_MS may be at most budgetPercent % of the
 * requests sent to the upstream over the same window, plus
 * RETRY_BUDGET_MIN_RETRIES per window whatever the traffic. The window is
 * sliding, approximated as the breaker's failure rate is: the current fixed
 * window plus the previous one weighted by the share of it still inside the
 * last window. A retry is taken with one Atomics.add and given back when
 * that went over the budget, so concurrent workers never exceed it together.
 */
import {
  FIRST_UPSTREAM_SLOT, MAX_UPSTREAM_SLOTS, RETRY_REASONS, U_BUDGET_EXHAUSTED, U_BUDGET_PREV_REQ, U_BUDGET_PREV_RETRY, U_BUDGET_REQ,
  U_BUDGET_RETRY, U_BUDGET_START, U_RETRIES, createUpstreamState, upstreamCell, wrapMs,
} from '../../common/upstream-state-layout.js';
import { RETRY_BODY_MAX_BYTES, RETRY_BUDGET_MIN_RETRIES, RETRY_BUDGET_WINDOW_MS } from '../../common/config/retry.js';
import type { UpstreamConfig } from '../../common/config/types.js';
import type { ResilienceEnv } from './guard.js';

/** Conditions (indices into RETRY_REASONS: also the metric's reason label). */
export const R_CONNECT_FAILURE = 0;
export const R_RESET = 1;
export const R_TIMEOUT = 2;
const R_STATUS_500 = 3;
const R_STATUS_OTHER = 8;

/** Requests a worker counts locally before adding them to the shared window. */
const REQUEST_BATCH = 32;
const W = RETRY_BUDGET_WINDOW_MS;

export { RETRY_BODY_MAX_BYTES };

export class RetryPolicy {
  /** Retries after the first try. */
  readonly attempts: number;
  readonly backoffMs: number;
  readonly maxBackoffMs: number;
  /** Time from a try's request sent to its response head (ms): perTryTimeoutMs, or timeouts.responseMs when 0. */
  readonly tryTimeoutMs: number;
  readonly methods: ReadonlySet<string>;
  private readonly pct: number;
  /** Bit k: RETRY_REASONS[k] (k < 3) is retried. */
  private readonly onMask: number;
  /** 1 at status - 500 for each retried status. */
  private readonly statuses: Uint8Array;
  private readonly state: Int32Array;
  private readonly ucell: number;
  private readonly clockOffset: number;
  /** Requests counted here and not yet added to the shared window. */
  private pending = 0;

  /** `env`: the shared state; null (validation, tests) or an upstream past the slot cap: this worker's own budget. */
  constructor(u: UpstreamConfig, env: ResilienceEnv | null) {
    const r = u.retry!;
    this.attempts = r.attempts;
    this.backoffMs = r.backoffMs;
    this.maxBackoffMs = r.maxBackoffMs;
    this.tryTimeoutMs = r.perTryTimeoutMs > 0 ? r.perTryTimeoutMs : u.timeouts.responseMs;
    this.methods = new Set(r.methods);
    this.pct = r.budgetPercent;
    let mask = 0;
    this.statuses = new Uint8Array(100);
    for (const c of r.on) {
      const k = RETRY_REASONS.indexOf(c as (typeof RETRY_REASONS)[number]);
      if (k >= 0 && k < R_STATUS_500) mask |= 1 << k;
      else if (c === '5xx') this.statuses.fill(1);
      else if (/^5[0-9][0-9]$/.test(c)) this.statuses[Number(c) - 500] = 1;
    }
    this.onMask = mask;
    const slot = env?.upstreamSlots.get(u.name) ?? 0;
    if (env !== null && slot >= FIRST_UPSTREAM_SLOT && slot < MAX_UPSTREAM_SLOTS) {
      this.state = env.state;
      this.ucell = upstreamCell(slot);
    } else {
      this.state = new Int32Array(createUpstreamState(1));
      this.ucell = upstreamCell(FIRST_UPSTREAM_SLOT);
    }
    this.clockOffset = env?.clockOffset ?? 0;
  }

  /**
   * A request to the upstream (the budget's denominator). Hot path: a field
   * increment; every REQUEST_BATCH requests a clock read and a shared add
   * (the clock is read, not the uWS sweep's coarse one, which the Bun
   * backend does not run).
   */
  countRequest(): void {
    if (++this.pending === REQUEST_BATCH) this.flush(performance.now() + this.clockOffset);
  }

  /** Condition `reason` (R_CONNECT_FAILURE, R_RESET, R_TIMEOUT) is retried. */
  retriesOn(reason: number): boolean {
    return ((this.onMask >> reason) & 1) === 1;
  }

  /** A response with this status is retried (5xx listed in `on`). */
  retriesStatus(status: number): boolean {
    return status >= 500 && status <= 599 && this.statuses[status - 500] === 1;
  }

  /** The metric reason of a status retry. */
  static statusReason(status: number): number {
    return status <= 504 ? R_STATUS_500 + status - 500 : R_STATUS_OTHER;
  }

  /** `method` is retried on a route whose own list is `routeMethods` (null: the upstream's). */
  allows(method: string, routeMethods: ReadonlySet<string> | null): boolean {
    return (routeMethods ?? this.methods).has(method);
  }

  /** Full jitter (AWS architecture blog, "Exponential Backoff and Jitter"): random(0, min(max, base x 2^(retry-1))) ms. `retry` from 1. */
  backoff(retry: number): number {
    const cap = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** (retry - 1));
    return Math.floor(Math.random() * cap);
  }

  /**
   * Takes one retry from the budget: true when it fits, else false and the
   * exhaustion counted. `perfNow`: this thread's performance.now().
   */
  take(perfNow: number): boolean {
    const now = perfNow + this.clockOffset;
    this.flush(now);
    const s = this.state;
    const c = this.ucell;
    const start = Math.floor(now / W) * W;
    const weight = 1 - (now - start) / W;
    const requests = Atomics.load(s, c + U_BUDGET_REQ) + Atomics.load(s, c + U_BUDGET_PREV_REQ) * weight;
    const allowed = RETRY_BUDGET_MIN_RETRIES + (requests * this.pct) / 100;
    const used = Atomics.add(s, c + U_BUDGET_RETRY, 1) + 1 + Atomics.load(s, c + U_BUDGET_PREV_RETRY) * weight;
    if (used > allowed) {
      Atomics.sub(s, c + U_BUDGET_RETRY, 1);
      Atomics.add(s, c + U_BUDGET_EXHAUSTED, 1);
      return false;
    }
    return true;
  }

  /** Gives back a retry taken but not made (no target could take it). */
  giveBack(): void {
    Atomics.sub(this.state, this.ucell + U_BUDGET_RETRY, 1);
  }

  /** Counts a retry made, by its reason (turnpike_upstream_retries_total). */
  count(reason: number): void {
    Atomics.add(this.state, this.ucell + U_RETRIES + reason, 1);
  }

  /** Moves to the current window when it changed (one thread wins), then adds the locally counted requests. */
  private flush(now: number): void {
    const s = this.state;
    const c = this.ucell;
    const start = wrapMs(Math.floor(now / W) * W);
    const cur = Atomics.load(s, c + U_BUDGET_START);
    if (cur !== start && Atomics.compareExchange(s, c + U_BUDGET_START, cur, start) === cur) {
      const req = Atomics.exchange(s, c + U_BUDGET_REQ, 0);
      const ret = Atomics.exchange(s, c + U_BUDGET_RETRY, 0);
      const adjacent = ((start - cur) | 0) === W;
      Atomics.store(s, c + U_BUDGET_PREV_REQ, adjacent ? req : 0);
      Atomics.store(s, c + U_BUDGET_PREV_RETRY, adjacent ? ret : 0);
    }
    const n = this.pending;
    if (n !== 0) {
      this.pending = 0;
      Atomics.add(s, c + U_BUDGET_REQ, n);
    }
  }
}
