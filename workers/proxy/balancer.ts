/**
 * An upstream at run time: its target pools and the load-balancing pick.
 *
 * round_robin is nginx's smooth weighted round robin (weights 1 everywhere
 * degrade to a plain counter); least_conn picks the fewest active requests
 * per unit of weight, ties broken round robin; random is weighted random;
 * ip_hash maps the client address onto the weighted target list (FNV-1a), so
 * a client sticks to one target while the target set is unchanged.
 */
import type { Balance, UpstreamConfig } from '../../common/config/types.js';
import { TargetPool } from './upstream-pool.js';
import { UpstreamGuard, type ResilienceEnv, needsGuard } from './guard.js';

export class UpstreamRuntime {
  readonly name: string;
  readonly config: UpstreamConfig;
  readonly pools: TargetPool[];
  private readonly weights: number[];
  private readonly current: number[];
  private readonly totalWeight: number;
  private readonly uniform: boolean;
  private readonly balance: Balance;
  /** Target index per weight unit, for random and ip_hash. */
  private readonly weighted: number[];
  private rr = 0;
  /**
   * Breakers, health, ejection, shared in-flight (guard.ts), or null: an
   * upstream with none of them (and not p2c) is picked by `pick` alone, at
   * the plain data plane's cost.
   */
  readonly guard: UpstreamGuard | null;

  /**
   * targetSlots: `upstream target-url` -> metrics slot (the engine's; absent: the overflow slot).
   * resilience: the shared upstream state, for an upstream that needs it (else none is used).
   */
  constructor(config: UpstreamConfig, targetSlots: ReadonlyMap<string, number> | null = null, resilience: ResilienceEnv | null = null) {
    this.name = config.name;
    this.config = config;
    this.balance = config.balance;
    this.pools = config.targets.map((t) => new TargetPool(t, config.pool, targetSlots?.get(targetKey(config.name, t.url))));
    this.guard = needsGuard(config) ? new UpstreamGuard(config, this.pools, targetSlots, resilience) : null;
    this.weights = config.targets.map((t) => t.weight);
    this.current = this.weights.map(() => 0);
    this.totalWeight = this.weights.reduce((a, b) => a + b, 0);
    this.uniform = this.weights.every((w) => w === this.weights[0]);
    this.weighted = [];
    this.weights.forEach((w, i) => {
      for (let k = 0; k < w; k++) this.weighted.push(i);
    });
  }

  /** This is the hot path -- change with care! */
  pick(clientIp: string): TargetPool {
    return this.pools[this.pickIndex(clientIp)]!;
  }

  /** The balancer's choice, before any target is skipped. */
  private pickIndex(clientIp: string): number {
    const n = this.pools.length;
    if (n === 1) return 0;
    switch (this.balance) {
      case 'round_robin':
        return this.uniform ? this.rr++ % n : this.smoothWeighted();
      case 'least_conn':
        return this.leastConn();
      case 'random':
        return this.weighted[(Math.random() * this.weighted.length) | 0]!;
      case 'ip_hash':
        return this.weighted[fnv1a(clientIp) % this.weighted.length]!;
      case 'p2c':
        return this.guard === null ? this.leastConn() : this.guard.p2c(this.weights);
    }
  }

  /**
   * The pick for an upstream with a guard: the balancer's choice, or when
   * that target is unhealthy, ejected or open, the next one in list order
   * that is not; admitted by its breaker (a half-open probe place taken
   * when so: `guard.probe`) and counted in flight. null: refused, with
   * `guard.refusal` (upstream_overloaded, circuit_open, no_healthy_upstream).
   * `now`: the shared clock (ms). Every admission is given back by
   * `guard.finish`.
   * This is the hot path -- change with care!
   */
  admit(clientIp: string, now: number): TargetPool | null {
    const g = this.guard!;
    if (!g.enter(now)) return null;
    const pool = g.choose(this.pickIndex(clientIp), now);
    if (pool === null) g.leave();
    return pool;
  }

  private smoothWeighted(): number {
    const w = this.weights;
    const cur = this.current;
    let best = 0;
    for (let i = 0; i < w.length; i++) {
      cur[i]! += w[i]!;
      if (cur[i]! > cur[best]!) best = i;
    }
    cur[best]! -= this.totalWeight;
    return best;
  }

  private leastConn(): number {
    const pools = this.pools;
    const n = pools.length;
    const start = this.rr++ % n;
    let best = start;
    let bestScore = pools[start]!.active / this.weights[start]!;
    for (let k = 1; k < n; k++) {
      const i = (start + k) % n;
      const score = pools[i]!.active / this.weights[i]!;
      if (score < bestScore) {
        best = i;
        bestScore = score;
      }
    }
    return best;
  }

  sweepIdle(cutoff: number): void {
    for (const p of this.pools) p.sweepIdle(cutoff);
  }

  close(): void {
    for (const p of this.pools) p.close();
  }
}

/** The key of a target's metrics slot (upstream names and URLs hold no space). */
export function targetKey(upstream: string, url: string): string {
  return upstream + ' ' + url;
}

function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
