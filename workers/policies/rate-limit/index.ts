/**
 * The rate-limit policy of one route: every limit and quota the route lists,
 * decided in memory on the shared bucket table (common/rate-limit-layout.ts)
 * with no I/O on the request path. Cluster-wide limits are kept in step
 * with the other instances by the admin thread (admin/rate-limit/), which
 * reads the admissions each bucket counts in F_PENDING and writes back what
 * the cluster consumed.
 *
 * Order and atomicity: the limits are decided in the order listed and the
 * first refusal ends the evaluation; the limits that had admitted the
 * request are then given their unit back (`undo`), so a refused request
 * consumes nothing from any limit. A thread holds one bucket lock at a
 * time (no lock order to get wrong, no deadlock); in the instant between
 * an admission and its undo a concurrent request may see one unit fewer,
 * never one more, so the limits are never exceeded.
 *
 * Strict limits (`mode: strict`, strict.ts) are decided in Redis, one
 * atomic script per limit and request, after every in-memory limit of the
 * route has admitted the request (a request refused in memory never costs
 * a round trip): the runner then returns PENDING with a StrictDecision in
 * ctx.pending, which gives the in-memory admissions back if Redis refuses.
 * While the strict store is down they are decided right here instead, by
 * their onStoreError (in memory with H_SHARE, or 503). A route without a
 * strict limit never touches any of it.
 *
 * Answers: a refusal is 429 rate_limited with Retry-After (seconds, at
 * least 1; RFC 9110 10.2.3) and a message naming the limit; while Redis is
 * unreachable a cluster limit with onStoreError "deny" answers 503
 * rate_limit_store_unavailable. Admitted responses carry the limits' state:
 * `headers: ietf` writes RateLimit-Policy and RateLimit of the IETF httpapi
 * draft (draft-ietf-httpapi-ratelimit-headers-09: items `"name";q=;w=` and
 * `"name";r=;t=`), `legacy` writes X-RateLimit-Limit/-Remaining/-Reset for
 * the limit with the fewest requests left (Reset in seconds from now).
 */
import { Errors } from '../../../common/errors.js';
import type { RateLimitPolicy } from '../../../common/config/types.js';
import { formatDuration } from '../../../common/config/duration.js';
import { G_RATE_LIMIT_OVERFLOW, RATE_LIMIT_RESULTS, RL_ALLOWED, RL_LIMITED, RL_STORE_UNAVAILABLE, S_RATE_LIMIT, slotBase } from '../../../common/metrics-layout.js';
import { F_PENDING, E_HI, E_LO, E_TAG, hashKey, type FindResult, type RateLimitTable } from '../../../common/rate-limit-layout.js';
import { CONTINUE, PENDING, REFUSED, type Policy, type PolicyOutcome, type RequestContext } from '../../pipeline/context.js';
import {
  ALG_FIXED_WINDOW, ALG_GCRA, ALG_QUOTA, ALG_SLIDING_WINDOW, ALG_TOKEN_BUCKET, ALGORITHMS, Decision, fixedWindow, gcra, quota,
  slidingWindow, tokenBucket, undo, type LimitParams,
} from './algorithms.js';
import { PeriodCache } from './calendar.js';
import { keyFunction, keyKind, type KeyFn } from './keys.js';
import { StrictDecision } from './strict.js';
import type { StrictStore } from './strict-store.js';
import type net from 'node:net';

/** What the policies of every route of a worker share. */
export interface RateLimitEnv {
  table: RateLimitTable;
  /** This worker's metrics cells, or null when metrics are off. */
  metrics: Float64Array | null;
  trusted: net.BlockList | null;
  /** The Redis connection of strict limits (strict-store.ts), or null: none in this config, or compiled outside a worker (validation). */
  strict: StrictStore | null;
}

const HEADERS_NONE = 0;
const HEADERS_IETF = 1;
const HEADERS_LEGACY = 2;
const HEADERS_BOTH = 3;

/** One listed limit, compiled. */
export class Limit implements LimitParams {
  readonly policy: RateLimitPolicy;
  readonly name: string;
  readonly tag: number;
  readonly algorithm: number;
  readonly rate: number;
  readonly perMs: number;
  readonly burst: number;
  readonly key: KeyFn;
  readonly cluster: boolean;
  /** mode: strict: decided in Redis per request (strict.ts). */
  readonly strict: boolean;
  /** Admissions are counted in F_PENDING for the admin thread's Redis sync (cluster scope, batched). */
  readonly pends: boolean;
  /** The strict scripts' arguments: rate, perMs, burst (strict-scripts.ts). */
  readonly strictArgs: readonly string[];
  readonly deny: boolean;
  readonly headers: number;
  /** This limit's RateLimit-Policy item: `"standard";q=100;w=60`. */
  readonly policyItem: string;
  /** `RateLimit` item prefix: `"standard";r=`. */
  readonly stateItem: string;
  /** For messages: `100 requests per 1m, by ip`. */
  readonly describe: string;
  readonly period: PeriodCache | null;

  constructor(p: RateLimitPolicy, trusted: net.BlockList | null) {
    this.policy = p;
    this.name = p.name;
    this.tag = p.tag;
    this.algorithm = ALGORITHMS.indexOf(p.algorithm);
    this.rate = p.rate;
    this.perMs = p.perMs;
    this.burst = p.burst;
    this.key = keyFunction(p, trusted);
    this.cluster = p.scope === 'cluster';
    this.strict = p.mode === 'strict' && p.scope === 'cluster' && this.algorithm !== ALG_QUOTA;
    this.pends = this.cluster && !this.strict;
    this.strictArgs = [String(p.rate), String(p.perMs), String(p.burst)];
    this.deny = p.onStoreError === 'deny';
    this.headers = p.headers === 'ietf' ? HEADERS_IETF : p.headers === 'legacy' ? HEADERS_LEGACY : p.headers === 'both' ? HEADERS_BOTH : HEADERS_NONE;
    const quoted = '"' + p.name + '"';
    const capacity = p.algorithm === 'token_bucket' || p.algorithm === 'gcra' ? p.burst : p.rate;
    this.policyItem = `${quoted};q=${capacity};w=${Math.max(1, Math.ceil(p.perMs / 1000))}`;
    this.stateItem = quoted + ';r=';
    const by = p.by === 'header' ? `header ${p.keyName}` : p.by === 'query' ? `query parameter ${p.keyName}` : p.by;
    this.describe = p.period !== null
      ? `${p.rate} requests per ${p.period}${p.timeZone === 'UTC' ? '' : ` (${p.timeZone})`}, by ${by}`
      : `${p.rate} requests per ${formatDuration(p.perMs)}, by ${by}`;
    this.period = p.period !== null ? new PeriodCache(p.period, p.timeZone) : null;
  }
}

// Per-thread scratch: the handler is synchronous, one set serves every request.
const hash = new Int32Array(2);
const found: FindResult = { isNew: false, overflowed: false, evicted: false };
const decision = new Decision();
/** Policies per route (RATE_LIMIT_DEFAULTS.maxPerRoute). */
export const MAX_LIMITS = 8;

/**
 * Runs limit `l`'s algorithm on the bucket at `fb` (Float64 index in `f`,
 * locked by the caller) for one request at `now` (ms, the shared clock),
 * with `scale` the share of a cluster limit this instance enforces (1 when
 * local or shared); the verdict goes into `decision`. Returns the window the
 * unit was taken from (ms; 0 for the buckets without windows), which giving
 * the unit back needs.
 */
function decideAt(f: Float64Array, fb: number, isNew: boolean, now: number, l: Limit, scale: number): number {
  switch (l.algorithm) {
    case ALG_TOKEN_BUCKET:
      tokenBucket(f, fb, isNew, now, l, scale, decision);
      return 0;
    case ALG_GCRA:
      gcra(f, fb, isNew, now, l, scale, decision);
      return 0;
    case ALG_FIXED_WINDOW:
      fixedWindow(f, fb, isNew, now, l, scale, decision);
      return now - (now % l.perMs);
    case ALG_SLIDING_WINDOW:
      slidingWindow(f, fb, isNew, now, l, scale, decision);
      return now - (now % l.perMs);
    default: {
      const period = l.period!;
      period.at(now);
      quota(f, fb, isNew, now, l.rate, period.start, period.end, decision);
      return period.start;
    }
  }
}
const MAX = MAX_LIMITS;
/** Per position: the entry that admitted the request in memory, or -1 (a strict limit left to Redis). */
const takenEntry = new Int32Array(MAX);
const takenWindow = new Float64Array(MAX);
/**
 * Per position: the key the entry held when it admitted (E_HI, E_LO): on a
 * full table the entry can be evicted and given to another key before a
 * later limit refuses, and the unit must then not go to that key.
 */
const takenHi = new Int32Array(MAX);
const takenLo = new Int32Array(MAX);
const remainingOf = new Float64Array(MAX);
const resetOf = new Float64Array(MAX);
/** Per position of a strict limit left to Redis: its key hash. */
const keyHi = new Int32Array(MAX);
const keyLo = new Int32Array(MAX);

/** What one in-memory decision (decideLocal) left: read right after the call. */
export interface LocalResult {
  allowed: boolean;
  entry: number;
  /** The key the entry held (its E_HI, E_LO: the key's hash, or 0, 0 for an overflow bucket). */
  entryHi: number;
  entryLo: number;
  window: number;
  remaining: number;
  resetMs: number;
  retryMs: number;
}
const local: LocalResult = { allowed: false, entry: 0, entryHi: 0, entryLo: 0, window: 0, remaining: 0, resetMs: 0, retryMs: 0 };

/**
 * The share of limit `l` this instance enforces in memory: 1 for a local
 * limit; H_SHARE for a batched cluster limit (1 while Redis is up); for a
 * strict limit, decided in memory only while its store fails, 1/instances
 * at once (H_DOWN_SHARE): the worker's store usually sees the outage before
 * the admin thread lowers H_SHARE, and the first fallback decisions must not
 * admit a whole instance's burst.
 */
function scaleOf(l: Limit, table: RateLimitTable): number {
  return l.strict ? table.downShare : l.cluster ? table.share : 1;
}

export class RateLimitPolicyRunner implements Policy {
  readonly name = 'rate-limit';
  readonly limits: Limit[];
  private readonly table: RateLimitTable;
  private readonly metrics: Float64Array | null;
  /** First decision cell of this route (metrics layout S_RATE_LIMIT). */
  private readonly cells: number;
  /** The RateLimit-Policy value (ietf limits), or null when none writes it. */
  private readonly policyHeader: string | null;
  private readonly anyLegacy: boolean;
  private readonly anyIetf: boolean;
  /** The strict limits' store, or null when the route has none (or outside a worker: they then decide as if it were down). */
  readonly store: StrictStore | null;

  constructor(policies: readonly RateLimitPolicy[], routeSlot: number, env: RateLimitEnv) {
    this.limits = policies.slice(0, MAX).map((p) => new Limit(p, env.trusted));
    this.store = this.limits.some((l) => l.strict) ? env.strict : null;
    this.table = env.table;
    // A full table evicts buckets, never a quota's: its count must survive.
    for (const l of this.limits) if (l.algorithm === ALG_QUOTA) env.table.protect(l.tag);
    this.metrics = env.metrics;
    this.cells = slotBase(routeSlot) + S_RATE_LIMIT;
    const ietf = this.limits.filter((l) => (l.headers & HEADERS_IETF) !== 0);
    this.policyHeader = ietf.length === 0 ? null : ietf.map((l) => l.policyItem).join(', ');
    this.anyIetf = ietf.length !== 0;
    this.anyLegacy = this.limits.some((l) => (l.headers & HEADERS_LEGACY) !== 0);
  }

  /** This is the hot path -- change with care! */
  onRequest(ctx: RequestContext): number {
    const limits = this.limits;
    const table = this.table;
    const f = table.f64;
    const now = ctx.now;
    const n = limits.length;
    let deferred = 0;
    for (let i = 0; i < n; i++) {
      const l = limits[i]!;
      if (l.strict) {
        // Left to Redis, after every in-memory limit (strict.ts); or, while
        // the store is down, decided here by onStoreError.
        if (this.store !== null && this.store.up) {
          const text = l.key(ctx);
          hashKey(l.tag ^ Math.imul(keyKind.kind, 0x9e3779b9), text, hash);
          keyHi[i] = hash[0]!;
          keyLo[i] = hash[1]!;
          takenEntry[i] = -1;
          deferred++;
          continue;
        }
        if (l.deny) {
          this.giveBack(takenEntry, takenWindow, takenHi, takenLo, i);
          this.count(i, RL_STORE_UNAVAILABLE);
          this.storeUnavailable(ctx, l);
          return REFUSED;
        }
      } else if (l.cluster && l.deny && table.storeDown) {
        this.giveBack(takenEntry, takenWindow, takenHi, takenLo, i);
        this.count(i, RL_STORE_UNAVAILABLE);
        this.storeUnavailable(ctx, l);
        return REFUSED;
      }
      const text = l.key(ctx);
      hashKey(l.tag ^ Math.imul(keyKind.kind, 0x9e3779b9), text, hash);
      const e = table.find(l.tag, hash[0]!, hash[1]!, now, found, true);
      const ib = table.base(e);
      const fb = ib >> 1;
      const window = decideAt(f, fb, found.isNew, now, l, scaleOf(l, table));
      if (decision.allowed && l.pends) f[fb + F_PENDING]! += 1;
      takenHi[i] = table.i32[ib + E_HI]!;
      takenLo[i] = table.i32[ib + E_LO]!;
      table.unlock(e);
      if (found.overflowed && this.metrics !== null) this.metrics[G_RATE_LIMIT_OVERFLOW]!++;
      if (!decision.allowed) {
        this.giveBack(takenEntry, takenWindow, takenHi, takenLo, i);
        this.count(i, RL_LIMITED);
        this.refuse(ctx, l, decision.retryMs);
        return REFUSED;
      }
      takenEntry[i] = e;
      takenWindow[i] = window;
      remainingOf[i] = decision.remaining;
      resetOf[i] = decision.resetMs;
    }
    if (deferred !== 0) {
      // Every in-memory limit admitted: the strict ones decide in Redis (strict.ts).
      ctx.pending = new StrictDecision(this, this.store!, now, n, takenEntry, takenWindow, takenHi, takenLo, remainingOf, resetOf, keyHi, keyLo);
      return PENDING;
    }
    for (let i = 0; i < n; i++) this.count(i, RL_ALLOWED);
    if (this.anyIetf) this.ietfState(ctx.responseHeaders, remainingOf, resetOf, n);
    if (this.anyLegacy) this.legacyState(ctx.responseHeaders, remainingOf, resetOf, n);
    return CONTINUE;
  }

  /**
   * Undoes the in-memory admissions of positions [0, upTo) recorded in
   * `entries`/`windows`, each entry holding the key `his`/`los` when it
   * admitted (positions holding -1 were left to Redis: skipped).
   */
  giveBack(entries: Int32Array, windows: Float64Array, his: Int32Array, los: Int32Array, upTo: number): void {
    const table = this.table;
    const f = table.f64;
    const i32 = table.i32;
    for (let j = 0; j < upTo; j++) {
      const l = this.limits[j]!;
      const e = entries[j]!;
      if (e < 0) continue;
      table.lock(e);
      const b = table.base(e);
      // The bucket is live (it just admitted), but on a full table it may have been evicted
      // and given to another key meanwhile, and an overflow bucket may have been taken by a
      // policy sharing it: then leave it (the evicted key starts afresh anyway).
      if (i32[b + E_TAG] === l.tag && i32[b + E_HI] === his[j] && i32[b + E_LO] === los[j]) {
        const fb = b >> 1;
        undo(f, fb, l.algorithm, l, scaleOf(l, table), windows[j]!);
        if (l.pends && f[fb + F_PENDING]! > 0) f[fb + F_PENDING]! -= 1;
      }
      table.unlock(e);
    }
  }

  /**
   * One limit decided in memory on key hash (hi, lo) at `now` (a strict
   * limit while its store fails: onStoreError allow_local, with H_SHARE of
   * the rate). Returns whether it admitted; the details are in the returned
   * scratch object (valid until the next call). Never counts in F_PENDING.
   */
  decideLocal(i: number, hi: number, lo: number, now: number): LocalResult {
    const l = this.limits[i]!;
    const table = this.table;
    const f = table.f64;
    const e = table.find(l.tag, hi, lo, now, found, true);
    const ib = table.base(e);
    const fb = ib >> 1;
    const window = decideAt(f, fb, found.isNew, now, l, scaleOf(l, table));
    local.entryHi = table.i32[ib + E_HI]!;
    local.entryLo = table.i32[ib + E_LO]!;
    table.unlock(e);
    if (found.overflowed && this.metrics !== null) this.metrics[G_RATE_LIMIT_OVERFLOW]!++;
    local.allowed = decision.allowed;
    local.entry = e;
    local.window = window;
    local.remaining = decision.remaining;
    local.resetMs = decision.resetMs;
    local.retryMs = decision.retryMs;
    return local;
  }

  /** Counts one decision of position `i` (RL_ALLOWED, RL_LIMITED, RL_STORE_UNAVAILABLE). */
  count(i: number, result: number): void {
    const m = this.metrics;
    if (m !== null) m[this.cells + i * RATE_LIMIT_RESULTS.length + result]!++;
  }

  /** Admitted: the RateLimit-Policy/RateLimit (ietf) and X-RateLimit-* (legacy) headers of positions [0, n) into `out`. */
  admittedHeaders(out: string[], remaining: Float64Array, reset: Float64Array, n: number): void {
    if (this.anyIetf) this.ietfState(out, remaining, reset, n);
    if (this.anyLegacy) this.legacyState(out, remaining, reset, n);
  }

  /** 503 rate_limit_store_unavailable for limit `l` (onStoreError deny while Redis is unreachable). */
  storeUnavailable(out: PolicyOutcome, l: Limit): void {
    out.refusal = Errors.RATE_LIMIT_STORE_UNAVAILABLE;
    out.refusedBy = l.name;
    out.refusalMessage = `The rate-limit store (Redis) is unreachable and limit "${l.name}" refuses requests meanwhile (onStoreError: deny); retry later.`;
    out.refusalHeaders.push('retry-after', '1');
  }

  /** 429 rate_limited by limit `l`, the next request passing in `retryMs`. */
  refuse(ctx: PolicyOutcome, l: Limit, retryMs: number): void {
    const retry = Math.max(1, Math.ceil(retryMs / 1000));
    ctx.refusal = Errors.RATE_LIMITED;
    ctx.refusedBy = l.name;
    ctx.refusalMessage = `Rate limit "${l.name}" exceeded (${l.describe}); retry in ${retry} s.`;
    const h = ctx.refusalHeaders;
    h.push('retry-after', String(retry));
    if ((l.headers & HEADERS_IETF) !== 0) h.push('ratelimit-policy', l.policyItem, 'ratelimit', l.stateItem + '0;t=' + retry);
    if ((l.headers & HEADERS_LEGACY) !== 0) {
      const capacity = l.algorithm === ALG_TOKEN_BUCKET || l.algorithm === ALG_GCRA ? l.burst : l.rate;
      h.push('x-ratelimit-limit', String(capacity), 'x-ratelimit-remaining', '0', 'x-ratelimit-reset', String(retry));
    }
  }

  private ietfState(out: string[], remainingOf: Float64Array, resetOf: Float64Array, n: number): void {
    let state = '';
    for (let i = 0; i < n; i++) {
      const l = this.limits[i]!;
      if ((l.headers & HEADERS_IETF) === 0) continue;
      const item = l.stateItem + remainingOf[i]! + ';t=' + Math.ceil(resetOf[i]! / 1000);
      state = state === '' ? item : state + ', ' + item;
    }
    out.push('ratelimit-policy', this.policyHeader!, 'ratelimit', state);
  }

  private legacyState(out: string[], remainingOf: Float64Array, resetOf: Float64Array, n: number): void {
    let pick = -1;
    for (let i = 0; i < n; i++) {
      if ((this.limits[i]!.headers & HEADERS_LEGACY) === 0) continue;
      if (pick === -1 || remainingOf[i]! < remainingOf[pick]!) pick = i;
    }
    const l = this.limits[pick]!;
    const capacity = l.algorithm === ALG_TOKEN_BUCKET || l.algorithm === ALG_GCRA ? l.burst : l.rate;
    out.push(
      'x-ratelimit-limit', String(capacity),
      'x-ratelimit-remaining', String(remainingOf[pick]!),
      'x-ratelimit-reset', String(Math.ceil(resetOf[pick]! / 1000)),
    );
  }
}
