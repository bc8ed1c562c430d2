/**
 * An upstream at run time: its target pools and the load-balancing pick.
 *
 * round_robin is nginx's smooth weighted round robin (weights 1 everywhere
 * degrade to a plain counter); least_conn picks the fewest active requests
 * per unit of weight, ties broken round robin; random is weighted random;
 * ip_hash maps the client address onto the weighted target list (FNV-1a), so
 * a client sticks to one target while the target set is unchanged.
 *
 * consistent_hash looks the request's key (hashOn: client address, a
 * header, a cookie or the path; xxHash32) up in a weighted Maglev table
 * (maglev.ts), so adding or removing a target moves only ~1/N of the keys;
 * sticky sends a request carrying a valid affinity cookie to the target it
 * names and balances the others round robin (smooth weighted), telling the
 * server which Set-Cookie the response must carry (`setCookie`).
 */
import type { Balance, UpstreamConfig } from '../../common/config/types.js';
import { NO_TARGETS } from '../../common/errors.js';
import { TargetPool } from './upstream-pool.js';
import { UpstreamGuard, type ResilienceEnv, needsGuard } from './guard.js';
import { RetryPolicy } from './retry.js';
import { AVAILABLE, availability } from './breaker.js';
import { buildMaglev, cookieRange, found, matchAt, stickyId, xxh32i } from './maglev.js';

/** hashOn sources (consistent_hash). */
const SRC_IP = 0;
const SRC_HEADER = 1;
const SRC_COOKIE = 2;
const SRC_PATH = 3;
/** Maglev entries tried after a key's own when its target may not be picked (then list order: guard.choose). */
const MAX_TABLE_WALK = 64;
const NO_HEADERS: readonly string[] = Object.freeze([]);

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
  /** The retry policy (upstream `retry`, retry.ts), or null: no retries, nothing paid. */
  readonly retry: RetryPolicy | null;
  /** consistent_hash: the Maglev table (slot -> target index); null for every other balance. */
  private readonly table: Uint16Array | null;
  private readonly hashSource: number;
  /** The header (lowercase) or cookie name hashed. */
  private readonly hashName: string;
  /** The Maglev slot of the request being picked (for the walk past a target that may not be picked). */
  private slot = 0;
  /** breaker.halfOpenProbes (availability's argument, as the guard's). */
  private readonly probes: number;
  /** sticky: the affinity cookie's name, and per target its opaque id and the whole Set-Cookie value; null otherwise. */
  private readonly stickyName: string;
  private readonly stickyIds: string[];
  private readonly cookies: string[] | null;
  /** sticky: the first 7 hex digits of each id (a small integer) -> target index. */
  private readonly stickyIndex: Map<number, number>;
  /** sticky: two ids share their first 7 digits (odds ~n^2 / 2^29): ids are then matched one by one. */
  private readonly stickyClash: boolean;
  /** sticky: the target the request's cookie names (-1: none, unknown or forged). */
  private wanted = -1;
  /**
   * sticky: what the response to the request just picked (`pick`/`admit`)
   * must carry as Set-Cookie, or null (its cookie already names the target
   * picked). Always null for other balances. Read right after the call.
   */
  setCookie: string | null = null;

  /**
   * targetSlots: `upstream target-url` -> metrics slot (the engine's; absent: the overflow slot).
   * resilience: the shared upstream state, for an upstream that needs it (else none is used).
   */
  constructor(config: UpstreamConfig, targetSlots: ReadonlyMap<string, number> | null = null, resilience: ResilienceEnv | null = null) {
    this.name = config.name;
    this.config = config;
    this.balance = config.balance;
    this.pools = config.targets.map((t) => new TargetPool(t, config.pool, targetSlots?.get(targetKey(config.name, t.url)), config.tls));
    // No target (discovery found none yet, or all were removed): a guard, so every request goes through admit and is refused.
    this.guard = needsGuard(config) || config.targets.length === 0 ? new UpstreamGuard(config, this.pools, targetSlots, resilience) : null;
    this.retry = config.retry ? new RetryPolicy(config, resilience) : null;
    this.weights = config.targets.map((t) => t.weight);
    this.current = this.weights.map(() => 0);
    this.totalWeight = this.weights.reduce((a, b) => a + b, 0);
    this.uniform = this.weights.every((w) => w === this.weights[0]);
    this.weighted = [];
    this.weights.forEach((w, i) => {
      for (let k = 0; k < w; k++) this.weighted.push(i);
    });
    this.probes = config.breaker?.halfOpenProbes ?? 1;
    const h = config.balance === 'consistent_hash' ? config.hashOn ?? { source: 'ip', name: '' } : null;
    this.table = h === null || config.targets.length === 0 ? null : buildMaglev(config.targets.map((t) => t.url), this.weights);
    this.hashSource = h === null ? SRC_IP : h.source === 'header' ? SRC_HEADER : h.source === 'cookie' ? SRC_COOKIE : h.source === 'path' ? SRC_PATH : SRC_IP;
    this.hashName = h === null ? '' : h.name;
    const st = config.balance === 'sticky' ? config.sticky ?? { cookie: 'tp_affinity', ttlMs: 3_600_000 } : null;
    this.stickyName = st === null ? '' : st.cookie;
    this.stickyIds = st === null ? [] : config.targets.map((t) => stickyId(config.name, t.url));
    const attrs = st === null ? '' : st.ttlMs > 0 ? `; Path=/; Max-Age=${Math.floor(st.ttlMs / 1000)}; HttpOnly; SameSite=Lax` : '; Path=/; HttpOnly; SameSite=Lax';
    this.cookies = st === null ? null : this.stickyIds.map((id) => st.cookie + '=' + id + attrs);
    this.stickyIndex = new Map();
    let clash = false;
    this.stickyIds.forEach((id, i) => {
      const k = parseInt(id.slice(0, 7), 16);
      if (this.stickyIndex.has(k)) clash = true;
      else this.stickyIndex.set(k, i);
    });
    this.stickyClash = clash;
  }

  /**
   * The target for a request of an upstream without a guard. `hdrs`: the
   * request's headers as lowercase name/value pairs (consistent_hash on a
   * header or cookie, sticky); `path`: its normalized path (hashOn: path).
   * sticky: sets `setCookie`.
   * This is the hot path -- change with care!
   */
  pick(clientIp: string, hdrs: readonly string[] = NO_HEADERS, path = ''): TargetPool {
    const i = this.pickIndex(clientIp, hdrs, path);
    if (this.cookies !== null) this.setCookie = i === this.wanted ? null : this.cookies[i]!;
    return this.pools[i]!;
  }

  /** The balancer's choice, before any target is skipped. */
  private pickIndex(clientIp: string, hdrs: readonly string[] = NO_HEADERS, path = ''): number {
    const n = this.pools.length;
    if (n === 1 && this.cookies === null) return 0;
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
      case 'consistent_hash': {
        const t = this.table;
        if (t === null) return 0; // no target (discovery): the guard refuses
        // 31 bits: small-integer % (a uint32 past 2^31 is a double, and % on it a call).
        this.slot = (this.keyHash(clientIp, hdrs, path) >>> 1) % t.length;
        return t[this.slot]!;
      }
      case 'sticky': {
        const w = this.stickyTarget(hdrs);
        this.wanted = w;
        if (w >= 0) return w;
        return n === 1 ? 0 : this.uniform ? this.rr++ % n : this.smoothWeighted();
      }
    }
  }

  /**
   * consistent_hash: xxHash32 (as an int32: never boxed) of the request's
   * key: the header's first line, the cookie's value, the path, or the
   * client address (also when the header or cookie is absent or empty).
   * Allocates nothing: the header strings are those the server already read.
   */
  private keyHash(clientIp: string, hdrs: readonly string[], path: string): number {
    switch (this.hashSource) {
      case SRC_HEADER: {
        const name = this.hashName;
        for (let i = 0; i < hdrs.length; i += 2) {
          if (hdrs[i] === name) {
            const v = hdrs[i + 1]!;
            if (v.length !== 0) return xxh32i(v, 0, 0, v.length);
            break;
          }
        }
        return xxh32i(clientIp, 0, 0, clientIp.length);
      }
      case SRC_COOKIE: {
        const name = this.hashName;
        for (let i = 0; i < hdrs.length; i += 2) {
          if (hdrs[i] === 'cookie' && cookieRange(hdrs[i + 1]!, name)) return xxh32i(hdrs[i + 1]!, 0, found.start, found.end);
        }
        return xxh32i(clientIp, 0, 0, clientIp.length);
      }
      case SRC_PATH:
        return xxh32i(path, 0, 0, path.length);
      default:
        return xxh32i(clientIp, 0, 0, clientIp.length);
    }
  }

  /** sticky: the target the request's affinity cookie names, or -1 (none, or an id no target of this config has). */
  private stickyTarget(hdrs: readonly string[]): number {
    const name = this.stickyName;
    for (let i = 0; i < hdrs.length; i += 2) {
      if (hdrs[i] !== 'cookie') continue;
      const v = hdrs[i + 1]!;
      if (!cookieRange(v, name)) continue;
      const start = found.start;
      if (found.end - start !== 16) return -1;
      let k = 0;
      for (let j = start; j < start + 7; j++) {
        const c = v.charCodeAt(j);
        const d = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : -1;
        if (d < 0) return -1;
        k = (k << 4) | d;
      }
      const ids = this.stickyIds;
      const t = this.stickyIndex.get(k);
      if (t !== undefined && matchAt(v, start, ids[t]!)) return t;
      if (this.stickyClash) for (let j = 0; j < ids.length; j++) if (matchAt(v, start, ids[j]!)) return j;
      return -1;
    }
    return -1;
  }

  /**
   * sticky: the Set-Cookie value naming `pool` (one of this upstream's), or
   * null for other balances: for a response that ends up coming from
   * another target than the one picked (a retry), so that the cookie names
   * the target that answered.
   */
  /** A runtime of the same upstream in a newer config that replaced this one (Dataplane.retire), or null. */
  successor: UpstreamRuntime | null = null;

  /** The runtime of this upstream in the running config: this one, or the last that replaced it. */
  latest(): UpstreamRuntime {
    let u: UpstreamRuntime = this;
    while (u.successor !== null) u = u.successor;
    return u;
  }

  /** This runtime's pools for the targets (same URLs) of `pools`, another runtime's; those it no longer has are left out. */
  samePools(pools: readonly TargetPool[]): TargetPool[] {
    const out: TargetPool[] = [];
    for (const p of pools) {
      const mine = this.pools.find((q) => q.target.url === p.target.url);
      if (mine !== undefined && !out.includes(mine)) out.push(mine);
    }
    return out;
  }

  stickyCookie(pool: TargetPool): string | null {
    const i = this.pools.indexOf(pool);
    return this.cookies === null || i < 0 ? null : this.cookies[i]!;
  }

  /**
   * With a guard, where the walk for a target starts when the balancer's
   * choice `first` may not be picked (unhealthy, ejected, open):
   * consistent_hash tries the next entries of the key's Maglev slot (up to
   * MAX_TABLE_WALK), so a blocked target's keys spread over the others in
   * proportion to their weights, each key always to the same one, and come
   * back when it recovers; sticky re-picks round robin (the cookie is then
   * set anew). Anything else: list order from `first` (guard.choose).
   */
  private detour(first: number, now: number): number {
    const s = this.guard!.state;
    const pools = this.pools;
    if (availability(s, pools[first]!.stateCell, this.probes, now) === AVAILABLE) return first;
    const t = this.table;
    if (t !== null) {
      const m = t.length;
      for (let k = 1, j = this.slot + 1; k <= MAX_TABLE_WALK; k++, j++) {
        if (j === m) j = 0;
        const c = t[j]!;
        if (c !== first && availability(s, pools[c]!.stateCell, this.probes, now) === AVAILABLE) return c;
      }
      return first;
    }
    const n = pools.length;
    return n === 1 ? 0 : this.uniform ? this.rr++ % n : this.smoothWeighted();
  }

  /**
   * The pick for an upstream with a guard: the balancer's choice, or when
   * that target is unhealthy, ejected or open, the next one in list order
   * that is not; admitted by its breaker (a half-open probe place taken
   * when so: `guard.probe`) and counted in flight. null: refused, with
   * `guard.refusal` (upstream_overloaded, circuit_open, no_healthy_upstream).
   * `now`: the shared clock (ms). Every admission is given back by
   * `guard.finish`. `hdrs`, `path`: as for `pick` (consistent_hash and
   * sticky start the walk elsewhere: `detour`; sticky sets `setCookie` for
   * the target admitted).
   * This is the hot path -- change with care!
   */
  admit(clientIp: string, now: number, hdrs: readonly string[] = NO_HEADERS, path = ''): TargetPool | null {
    const g = this.guard!;
    // No target (discovery found none): 503 no_healthy_upstream, saying so.
    if (this.pools.length === 0) {
      g.refusal = NO_TARGETS;
      return null;
    }
    if (!g.enter(now)) return null;
    let first = this.pickIndex(clientIp, hdrs, path);
    if (this.table !== null || this.cookies !== null) first = this.detour(first, now);
    const pool = g.choose(first, now);
    if (pool === null) g.leave();
    else if (this.cookies !== null) {
      const i = pool === this.pools[first] ? first : this.pools.indexOf(pool);
      this.setCookie = i === this.wanted ? null : this.cookies[i]!;
    }
    return pool;
  }

  /**
   * The target for a retry (upstreams without a guard): the balancer's
   * choice, or when that one was tried already (`tried`), the next one in
   * list order that was not; all tried: the balancer's choice. Only called
   * when a try failed.
   */
  pickUntried(clientIp: string, tried: readonly TargetPool[]): TargetPool {
    const pools = this.pools;
    const n = pools.length;
    const first = this.pickIndex(clientIp);
    for (let k = 0; k < n; k++) {
      const p = pools[(first + k) % n]!;
      if (!tried.includes(p)) return p;
    }
    return pools[first]!;
  }

  /**
   * `admit` for a retry: an untried target that may take the request when
   * there is one (guard.chooseUntried), else a tried one that may; null:
   * refused (`guard.refusal`). Given back by `guard.finish` as any admission.
   */
  admitUntried(clientIp: string, now: number, tried: readonly TargetPool[]): TargetPool | null {
    const g = this.guard!;
    if (!g.enter(now)) return null;
    const pool = g.chooseUntried(this.pickIndex(clientIp), now, tried);
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

/**
 * Response headers (name/value pairs, or null) with the affinity cookie
 * `cookie` (a whole Set-Cookie value, `name=id; attributes`) in place of the
 * one set for the target first picked, or added: a retried request's
 * response names the target that answered it. Only on a retry.
 */
export function withStickyCookie(headers: string[] | null, cookie: string): string[] {
  const name = cookie.slice(0, cookie.indexOf('=') + 1);
  const out = headers ?? [];
  for (let i = 0; i < out.length; i += 2) {
    if (out[i] === 'set-cookie' && out[i + 1]!.startsWith(name)) {
      out[i + 1] = cookie;
      return out;
    }
  }
  out.push('set-cookie', cookie);
  return out;
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
