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
import { F_PENDING, E_TAG, hashKey, type FindResult, type RateLimitTable } from '../../../common/rate-limit-layout.js';
import { CONTINUE, REFUSED, type Policy, type RequestContext } from '../../pipeline/context.js';
import {
  ALG_FIXED_WINDOW, ALG_GCRA, ALG_QUOTA, ALG_SLIDING_WINDOW, ALG_TOKEN_BUCKET, ALGORITHMS, Decision, fixedWindow, gcra, quota,
  slidingWindow, tokenBucket, undo, type LimitParams,
} from './algorithms.js';
import { PeriodCache } from './calendar.js';
import { keyFunction, keyKind, type KeyFn } from './keys.js';
import type net from 'node:net';

/** What the policies of every route of a worker share. */
export interface RateLimitEnv {
  table: RateLimitTable;
  /** This worker's metrics cells, or null when metrics are off. */
  metrics: Float64Array | null;
  trusted: net.BlockList | null;
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
const found: FindResult = { isNew: false, overflowed: false };
const decision = new Decision();
const MAX = 8;
const takenEntry = new Int32Array(MAX);
const takenWindow = new Float64Array(MAX);
const remainingOf = new Float64Array(MAX);
const resetOf = new Float64Array(MAX);

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

  constructor(policies: readonly RateLimitPolicy[], routeSlot: number, env: RateLimitEnv) {
    this.limits = policies.slice(0, MAX).map((p) => new Limit(p, env.trusted));
    this.table = env.table;
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
    for (let i = 0; i < n; i++) {
      const l = limits[i]!;
      if (l.cluster && l.deny && table.storeDown) {
        this.giveBack(i, now);
        this.count(i, RL_STORE_UNAVAILABLE);
        ctx.refusal = Errors.RATE_LIMIT_STORE_UNAVAILABLE;
        ctx.refusedBy = l.name;
        ctx.refusalMessage = `The rate-limit store (Redis) is unreachable and limit "${l.name}" refuses requests meanwhile (onStoreError: deny); retry later.`;
        ctx.refusalHeaders.push('retry-after', '1');
        return REFUSED;
      }
      const text = l.key(ctx);
      hashKey(l.tag ^ Math.imul(keyKind.kind, 0x9e3779b9), text, hash);
      const e = table.find(l.tag, hash[0]!, hash[1]!, now, found);
      const fb = table.base(e) >> 1;
      const scale = l.cluster ? table.share : 1;
      let window = 0;
      switch (l.algorithm) {
        case ALG_TOKEN_BUCKET:
          tokenBucket(f, fb, found.isNew, now, l, scale, decision);
          break;
        case ALG_GCRA:
          gcra(f, fb, found.isNew, now, l, scale, decision);
          break;
        case ALG_FIXED_WINDOW:
          window = now - (now % l.perMs);
          fixedWindow(f, fb, found.isNew, now, l, scale, decision);
          break;
        case ALG_SLIDING_WINDOW:
          window = now - (now % l.perMs);
          slidingWindow(f, fb, found.isNew, now, l, scale, decision);
          break;
        case ALG_QUOTA: {
          const period = l.period!;
          period.at(now);
          window = period.start;
          quota(f, fb, found.isNew, now, l.rate, period.start, period.end, decision);
          break;
        }
      }
      if (decision.allowed && l.cluster) f[fb + F_PENDING]! += 1;
      table.unlock(e);
      if (found.overflowed && this.metrics !== null) this.metrics[G_RATE_LIMIT_OVERFLOW]!++;
      if (!decision.allowed) {
        this.giveBack(i, now);
        this.count(i, RL_LIMITED);
        this.refuse(ctx, l, decision.retryMs);
        return REFUSED;
      }
      takenEntry[i] = e;
      takenWindow[i] = window;
      remainingOf[i] = decision.remaining;
      resetOf[i] = decision.resetMs;
    }
    for (let i = 0; i < n; i++) this.count(i, RL_ALLOWED);
    if (this.anyIetf) this.ietfState(ctx, n);
    if (this.anyLegacy) this.legacyState(ctx, n);
    return CONTINUE;
  }

  /** Undoes the admissions of limits [0, upTo). */
  private giveBack(upTo: number, _now: number): void {
    const table = this.table;
    const f = table.f64;
    for (let j = 0; j < upTo; j++) {
      const l = this.limits[j]!;
      const e = takenEntry[j]!;
      table.lock(e);
      const b = table.base(e);
      // The bucket is live (it just admitted), so its slot cannot have been reused; an
      // overflow bucket may have been taken by a policy sharing it: then leave it.
      if (table.i32[b + E_TAG] === l.tag) {
        const fb = b >> 1;
        undo(f, fb, l.algorithm, l, l.cluster ? table.share : 1, takenWindow[j]!);
        if (l.cluster && f[fb + F_PENDING]! > 0) f[fb + F_PENDING]! -= 1;
      }
      table.unlock(e);
    }
  }

  private count(i: number, result: number): void {
    const m = this.metrics;
    if (m !== null) m[this.cells + i * RATE_LIMIT_RESULTS.length + result]!++;
  }

  private refuse(ctx: RequestContext, l: Limit, retryMs: number): void {
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

  private ietfState(ctx: RequestContext, n: number): void {
    let state = '';
    for (let i = 0; i < n; i++) {
      const l = this.limits[i]!;
      if ((l.headers & HEADERS_IETF) === 0) continue;
      const item = l.stateItem + remainingOf[i]! + ';t=' + Math.ceil(resetOf[i]! / 1000);
      state = state === '' ? item : state + ', ' + item;
    }
    ctx.responseHeaders.push('ratelimit-policy', this.policyHeader!, 'ratelimit', state);
  }

  private legacyState(ctx: RequestContext, n: number): void {
    let pick = -1;
    for (let i = 0; i < n; i++) {
      if ((this.limits[i]!.headers & HEADERS_LEGACY) === 0) continue;
      if (pick === -1 || remainingOf[i]! < remainingOf[pick]!) pick = i;
    }
    const l = this.limits[pick]!;
    const capacity = l.algorithm === ALG_TOKEN_BUCKET || l.algorithm === ALG_GCRA ? l.burst : l.rate;
    ctx.responseHeaders.push(
      'x-ratelimit-limit', String(capacity),
      'x-ratelimit-remaining', String(remainingOf[pick]!),
      'x-ratelimit-reset', String(Math.ceil(resetOf[pick]! / 1000)),
    );
  }
}
