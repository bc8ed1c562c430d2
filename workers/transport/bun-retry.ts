/**
 * Retries on the Bun backend (upstream `retry`, workers/proxy/retry.ts):
 * the state of one request's retries, made only once a try failed, and how
 * its tries are given back to the upstream's guard.
 *
 * Bun's fetch is one awaited call per try, so the retry loop lives in
 * bun-server.ts proxy(); this holds what it needs across tries: the targets
 * tried (a retry prefers another), and on an upstream with a guard, each
 * failed try's admission and outcome. The handler's settleAdmission gives
 * the first admission back when the response is ready; for a request that
 * was retried it finds this state by its Response (RETRIED) and gives back
 * every try instead, each with its own outcome, so the breaker records each
 * try (its verdicts come when the request ends, not at each try: Bun's
 * verdicts are per response anyway).
 */
import type { UpstreamGuard } from '../proxy/guard.js';
import type { UpstreamRuntime } from '../proxy/balancer.js';
import type { RetryPolicy } from '../proxy/retry.js';
import type { TargetPool } from '../proxy/upstream-pool.js';

/** Responses of retried requests on guarded upstreams -> their retry state (read once by settleAdmission). */
export const RETRIED = new WeakMap<Response, BunRetry>();

export class BunRetry {
  readonly policy: RetryPolicy;
  private readonly upstream: UpstreamRuntime;
  /** Retries made. */
  tries = 0;
  /** Targets tried, in order; the last one is the current try's. */
  private readonly tried: TargetPool[];
  /** Per failed try on a guarded upstream: its outcome (gateway error code or '', status, ms to the head or -1) and, from the second try on, its probe flag. */
  private readonly codes: string[] = [];
  private readonly statuses: number[] = [];
  private readonly headMs: number[] = [];
  private readonly probes: boolean[] = [];
  /** The current try's admission took a half-open probe place (tries after the first). */
  private probe = false;
  /** performance.now() when the current try was sent. */
  tSent = 0;
  /** The upstream has a guard: its tries are given back by settle(). */
  readonly guarded: boolean;
  readonly upstreamName: string;

  constructor(policy: RetryPolicy, upstream: UpstreamRuntime, first: TargetPool) {
    this.policy = policy;
    this.upstream = upstream;
    this.tried = [first];
    this.guarded = upstream.guard !== null;
    this.upstreamName = upstream.name;
  }

  /** The target of the current try. */
  get current(): TargetPool {
    return this.tried[this.tried.length - 1]!;
  }

  /**
   * The target of the next try after a failed one (`code`, `status`,
   * `headMs`: its outcome for the breaker), or null: no target may take it
   * (the failure stands; the budget's retry is given back). Counted in the
   * budget already (policy.take). `now`: performance.now().
   */
  next(code: string, status: number, headMs: number): TargetPool | null {
    // The targets of the running config: a discovery update or a reload may
    // have replaced the runtime since the request started (a removed target is
    // never retried on). Its tries are still given back through the first
    // runtime's guard (settle): the same shared cells, by upstream and target slot.
    const up = this.upstream.latest();
    if (up.pools.length === 0) return null;
    const avoid = up === this.upstream ? this.tried : up.samePools(this.tried);
    const g = up.guard;
    let pool: TargetPool | null;
    if (g === null) {
      pool = up.pickUntried('', avoid);
    } else {
      pool = up.admitUntried('', g.now(), avoid);
      if (pool === null) return null;
      this.codes.push(code);
      this.statuses.push(status);
      this.headMs.push(headMs);
      this.probes.push(this.probe);
      this.probe = g.probe;
    }
    this.tried.push(pool);
    this.tries++;
    return pool;
  }

  /**
   * The request ended with `status` for the client (settleAdmission, guarded
   * upstreams): every try given back, the failed ones with their outcome,
   * the last with the response's. `firstProbe`: the first admission's flag.
   */
  settle(g: UpstreamGuard, firstProbe: boolean, status: number, now: number): void {
    const n = this.codes.length;
    for (let i = 0; i < n; i++) g.finish(this.tried[i]!, i === 0 ? firstProbe : this.probes[i]!, this.codes[i]!, this.statuses[i]!, this.headMs[i]!, now);
    g.finish(this.tried[n]!, n === 0 ? firstProbe : this.probe, '', status, now - this.tSent, now);
  }
}
