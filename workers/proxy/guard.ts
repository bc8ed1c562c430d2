/**
 * An upstream's resilience at run time, in a worker: which of its targets
 * may be picked (breaker, active health, outlier ejection, all in the
 * shared state of common/upstream-state-layout.ts), the upstream's bound on
 * requests in flight (breaker.maxInFlight), p2c's choice on the shared
 * in-flight counts, and the outcome of each request fed back to the
 * breaker (breaker.ts).
 *
 * Built once per config version per upstream (none for an upstream that
 * has no breaker, health check or outlier detection and is not p2c: it
 * pays nothing). Per request: `enter` and `choose` when the request is
 * routed (a few Atomics loads, two Atomics adds), `finish` when it ends.
 * Nothing is allocated per request; the results of a pick are fields of
 * the guard (`probe`, `refusal`), read right after the call.
 *
 * A target without a slot of its own (past the 511 target slots of the
 * process) or an upstream without one (past 255) cannot be shared: such an
 * upstream's guard keeps its state in this worker alone.
 */
import type { GatewayErrorDef } from '../../common/errors.js';
import { Errors } from '../../common/errors.js';
import type { UpstreamConfig } from '../../common/config/types.js';
import { RESILIENCE_DEFAULTS } from '../../common/config/resilience.js';
import { FIRST_TARGET_SLOT, MAX_TARGET_SLOTS } from '../../common/metrics-layout.js';
import {
  FIRST_UPSTREAM_SLOT, HD_WORKERS, MAX_UPSTREAM_SLOTS, U_OVERLOADED, WORKER_INTS, createUpstreamState, targetCell, upstreamCell, workerCell,
} from '../../common/upstream-state-layout.js';
import {
  AVAILABLE, BLOCKED_BREAKER, OUTCOME_FAILURE, OUTCOME_NONE, OUTCOME_SUCCESS, type BreakerSettings, acquire, availability, eject, record,
} from './breaker.js';
import type { TargetPool } from './upstream-pool.js';

/** What a worker hands the upstreams of a config: the shared state and where this worker counts. */
export interface ResilienceEnv {
  /** The process's upstream state (Int32Array over the engine's SharedArrayBuffer). */
  state: Int32Array;
  /** Upstream name -> slot (the engine's, stable for the life of the process). */
  upstreamSlots: ReadonlyMap<string, number>;
  /** This worker's index: its own in-flight section. */
  workerIndex: number;
  /** performance.now() + clockOffset = the shared clock (common/rate-limit-layout.ts). */
  clockOffset: number;
}

export function needsGuard(u: UpstreamConfig): boolean {
  return u.breaker !== null || u.healthCheck !== null || u.outlierDetection !== null || u.balance === 'p2c';
}

/** The breaker's verdict on a finished request (breaker.ts explains what is a failure). */
export function outcomeOf(errorCode: string, status: number, headMs: number, slowCallMs: number): number {
  switch (errorCode) {
    case '':
      if (status >= 500) return OUTCOME_FAILURE;
      return slowCallMs > 0 && headMs > slowCallMs ? OUTCOME_FAILURE : OUTCOME_SUCCESS;
    case 'upstream_connect_failed':
    case 'upstream_tls_failed':
    case 'upstream_connect_timeout':
    case 'upstream_reset':
    case 'upstream_bad_response':
    case 'upstream_timeout':
    case 'upstream_aborted':
      return OUTCOME_FAILURE;
    default:
      // The client left, the pool was full, the gateway refused: no verdict,
      // unless the target had already answered 5xx.
      return headMs >= 0 && status >= 500 ? OUTCOME_FAILURE : OUTCOME_NONE;
  }
}

/** A rendered fallback (breaker.fallback): status line, headers, the exact body bytes. */
export interface Fallback {
  readonly status: number;
  readonly statusLine: string;
  /** Name/value pairs, names lowercase. */
  readonly headers: readonly string[];
  readonly body: Buffer;
  /** circuit_open with the fallback's status: what the access log and metrics record. */
  readonly def: GatewayErrorDef;
}

let local: Int32Array | null = null;
/** Private state, for a config compiled outside a worker (validation) and for unshareable upstreams. */
function privateState(): Int32Array {
  return new Int32Array(createUpstreamState(1));
}

export class UpstreamGuard {
  readonly state: Int32Array;
  readonly settings: BreakerSettings;
  readonly fallback: Fallback | null;
  private readonly pools: TargetPool[];
  /** First cell of each target (pool order), for the ejection cap. */
  private readonly cells: number[];
  private readonly ucell: number;
  /** This worker's own in-flight cells: per target slot from `own`, per upstream slot at `ownUp`. */
  private readonly own: number;
  private readonly ownUp: number;
  /** Worker 0's in-flight cell of each target (pool order) and of the upstream; worker i's is WORKER_INTS * i further. */
  private readonly flight: number[];
  private readonly flightUp: number;
  private readonly workers: number;
  private readonly maxInFlight: number;
  private readonly probes: number;
  private readonly slowCallMs: number;
  private readonly clockOffset: number;
  /** The last `choose` took a half-open probe place. */
  probe = false;
  /** The shared clock of the request being admitted (set by `enter`, read by `p2c`: no clock read of its own). */
  private at = 0;
  /** p2c's random state (xorshift32, never 0). */
  private rnd = (Math.random() * 0x7fffffff) | 1;
  /** Why the last `enter`/`choose` refused. */
  refusal: GatewayErrorDef = Errors.NO_HEALTHY_UPSTREAM;
  /** The upstream has `retry` (the Bun backend looks up a retried request's tries: bun-retry.ts). */
  readonly retrying: boolean;

  constructor(u: UpstreamConfig, pools: TargetPool[], targetSlots: ReadonlyMap<string, number> | null, env: ResilienceEnv | null) {
    const uslot = env?.upstreamSlots.get(u.name) ?? 0;
    const shareable = env !== null && targetSlots !== null && uslot >= FIRST_UPSTREAM_SLOT && uslot < MAX_UPSTREAM_SLOTS &&
      pools.every((p) => p.slot >= FIRST_TARGET_SLOT && p.slot < MAX_TARGET_SLOTS);
    if (shareable) {
      this.state = env.state;
      this.ucell = upstreamCell(uslot);
      this.own = workerCell(env.workerIndex);
      this.ownUp = this.own + MAX_TARGET_SLOTS + uslot;
      pools.forEach((p) => {
        p.stateCell = targetCell(p.slot);
        p.flightSlot = p.slot;
      });
    } else {
      // Validation (no worker) or past the slot caps: this worker's own state.
      this.state = env === null ? (local ??= privateState()) : privateState();
      this.ucell = upstreamCell(FIRST_UPSTREAM_SLOT);
      this.own = workerCell(0);
      this.ownUp = this.own + MAX_TARGET_SLOTS + FIRST_UPSTREAM_SLOT;
      pools.forEach((p, i) => {
        p.stateCell = targetCell(FIRST_TARGET_SLOT + i);
        p.flightSlot = FIRST_TARGET_SLOT + i;
      });
    }
    this.clockOffset = env?.clockOffset ?? 0;
    this.retrying = u.retry != null;
    this.pools = pools;
    this.cells = pools.map((p) => p.stateCell);
    this.workers = shareable ? Math.max(1, Atomics.load(this.state, HD_WORKERS)) : 1;
    // Worker 0's cells; worker i's are WORKER_INTS * i further.
    this.flight = pools.map((p) => workerCell(0) + p.flightSlot);
    this.flightUp = workerCell(0) + (this.ownUp - this.own);
    const br = u.breaker;
    this.maxInFlight = br?.maxInFlight ?? 0;
    this.probes = br?.halfOpenProbes ?? 1;
    this.slowCallMs = br?.slowCallMs ?? 0;
    this.settings = {
      breaker: br,
      outlier: u.outlierDetection,
      windowMs: br?.windowMs ?? RESILIENCE_DEFAULTS.breaker.windowMs,
      probeLeaseMs: (br?.openMs ?? 0) + u.timeouts.connectMs + u.timeouts.responseMs,
    };
    const fb = br?.fallback ?? null;
    this.fallback = fb === null ? null : {
      status: fb.status,
      statusLine: `${fb.status} ${REASONS[fb.status] ?? 'Unknown'}`,
      headers: fb.headers.flatMap(([k, v]) => [k, v]),
      body: Buffer.from(fb.body, 'utf8'),
      def: Object.freeze({ ...Errors.CIRCUIT_OPEN, status: fb.status, statusLine: `${fb.status} ${REASONS[fb.status] ?? 'Unknown'}` }),
    };
  }

  /** The shared clock now. */
  now(): number {
    return performance.now() + this.clockOffset;
  }

  /**
   * Counts a request into the upstream, unless maxInFlight requests are
   * in flight already (every worker): then false, refusal upstream_overloaded.
   */
  enter(now: number): boolean {
    this.at = now;
    const s = this.state;
    if (this.maxInFlight > 0 && this.sum(this.flightUp) >= this.maxInFlight) {
      Atomics.add(s, this.ucell + U_OVERLOADED, 1);
      this.refusal = Errors.UPSTREAM_OVERLOADED;
      return false;
    }
    s[this.ownUp]!++;
    return true;
  }

  /** Gives back what `enter` counted (no target was found). */
  leave(): void {
    this.state[this.ownUp]!--;
  }

  /**
   * In flight at a worker-0 cell, summed over the workers: plain reads of
   * cells each worker alone writes. Two workers admitting at the same
   * instant may both see one place left (maxInFlight exceeded by at most
   * workers - 1 for that instant: Envoy's limits are as loose across its
   * threads); never a count that drifts.
   */
  private sum(cell: number): number {
    const s = this.state;
    let n = 0;
    for (let i = 0, c = cell; i < this.workers; i++, c += WORKER_INTS) n += s[c]!;
    return n;
  }

  /**
   * The target at `first` or the next one after it that may be picked and
   * whose breaker admits the request; counted in flight. null: none, with
   * `refusal` circuit_open (every target's breaker refused) or
   * no_healthy_upstream.
   */
  choose(first: number, now: number): TargetPool | null {
    const s = this.state;
    const pools = this.pools;
    const n = pools.length;
    let breakerRefused = 0;
    for (let k = 0, i = first; k < n; k++, i = i + 1 === n ? 0 : i + 1) {
      const pool = pools[i]!;
      const b = pool.stateCell;
      const a = availability(s, b, this.probes, now);
      if (a !== AVAILABLE) {
        if (a === BLOCKED_BREAKER) breakerRefused++;
        continue;
      }
      const r = acquire(s, b, this.settings, now);
      if (r < 0) {
        breakerRefused++;
        continue;
      }
      this.probe = r === 1;
      s[this.own + pool.flightSlot]!++;
      return pool;
    }
    this.refusal = breakerRefused === n ? Errors.CIRCUIT_OPEN : Errors.NO_HEALTHY_UPSTREAM;
    return null;
  }

  /**
   * `choose` for a retry: the first target from `first` on that was not
   * tried yet and may take the request; none: `choose(first, now)` (a tried
   * one, when it may). Only called when a try failed.
   */
  chooseUntried(first: number, now: number, tried: readonly TargetPool[]): TargetPool | null {
    const s = this.state;
    const pools = this.pools;
    const n = pools.length;
    for (let k = 0, i = first; k < n; k++, i = i + 1 === n ? 0 : i + 1) {
      const pool = pools[i]!;
      if (tried.includes(pool) || availability(s, pool.stateCell, this.probes, now) !== AVAILABLE) continue;
      const r = acquire(s, pool.stateCell, this.settings, now);
      if (r < 0) continue;
      this.probe = r === 1;
      s[this.own + pool.flightSlot]!++;
      return pool;
    }
    return this.choose(first, now);
  }

  /**
   * Power of two choices: two distinct targets at random, the one with
   * fewer requests in flight (every worker) per unit of weight; a target
   * that may not be picked loses to one that may.
   */
  p2c(weights: readonly number[]): number {
    const n = this.pools.length;
    // xorshift32: two picks for the price of a few integer operations (Math.random is a call each).
    let x = this.rnd;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.rnd = x;
    // 31 bits: small-integer arithmetic (a uint32 past 2^31 would be a double, and % on it a call).
    const r = (x >>> 1) % (n * (n - 1));
    const a = (r / (n - 1)) | 0;
    let b = r - a * (n - 1);
    if (b >= a) b++;
    const s = this.state;
    const now = this.at;
    const ca = this.cells[a]!;
    const cb = this.cells[b]!;
    const okA = availability(s, ca, this.probes, now) === AVAILABLE;
    const okB = availability(s, cb, this.probes, now) === AVAILABLE;
    if (okA !== okB) return okA ? a : b;
    // Fewer in flight per weight unit: la / wa < lb / wb, without dividing.
    return this.sum(this.flight[b]!) * weights[a]! < this.sum(this.flight[a]!) * weights[b]! ? b : a;
  }

  /**
   * The request admitted on `pool` ended: in-flight counts given back and
   * its outcome recorded (breaker, outlier ejection). `probe`: it held a
   * half-open place. `errorCode`: the gateway error it ended with ('' for
   * none); `status`: what the client got; `headMs`: request sent to
   * response head (-1: no head); `perfNow`: this thread's
   * performance.now() (or the worker's coarse clock: times are then up to
   * its 25 ms sweep early).
   */
  finish(pool: TargetPool, probe: boolean, errorCode: string, status: number, headMs: number, perfNow: number): void {
    const s = this.state;
    const b = pool.stateCell;
    s[this.own + pool.flightSlot]!--;
    s[this.ownUp]!--;
    const outcome = outcomeOf(errorCode, status, headMs, this.slowCallMs);
    if (outcome === OUTCOME_SUCCESS && !probe && this.settings.outlier === null && this.settings.breaker === null) return;
    const now = perfNow + this.clockOffset;
    if (record(s, b, this.settings, probe, outcome, now)) eject(s, b, this.cells, this.settings.outlier!, now);
  }
}

/** Reason phrases for fallback status lines (RFC 9110 and common ones). */
const REASONS: Readonly<Record<number, string>> = {
  200: 'OK', 201: 'Created', 202: 'Accepted', 203: 'Non-Authoritative Information', 204: 'No Content', 206: 'Partial Content',
  300: 'Multiple Choices', 301: 'Moved Permanently', 302: 'Found', 303: 'See Other', 304: 'Not Modified', 307: 'Temporary Redirect', 308: 'Permanent Redirect',
  400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 408: 'Request Timeout', 409: 'Conflict', 410: 'Gone', 429: 'Too Many Requests',
  500: 'Internal Server Error', 501: 'Not Implemented', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout',
};
