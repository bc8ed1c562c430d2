/**
 * The table side of the Redis sync: which buckets of the shared table
 * (common/rate-limit-layout.ts) to push, what to push, and how the
 * cluster-wide state that comes back is written into them. No I/O here:
 * index.ts sends the batches this module builds and hands the replies back.
 *
 * One cycle:
 *   collect()  a scan of the whole table (and the overflow buckets). A
 *              bucket of a cluster-scope, batched policy is taken when its
 *              F_PENDING (admissions the workers counted since the last
 *              push) is not 0, or when it was pushed within the last
 *              WARM_MS (a key in use here keeps learning what the other
 *              instances consume even through a quiet interval). Under the
 *              bucket's lock: F_PENDING is read and zeroed; the window
 *              algorithms also note which window the admissions belong to.
 *              Buckets are grouped into batches of one policy (and, for a
 *              Redis Cluster, one hash slot), at most MAX_BATCH each: one
 *              script call per batch.
 *   apply()    per batch reply, under each bucket's lock: the local state
 *              becomes the cluster-wide state minus what this instance
 *              admitted since the push (F_PENDING again: those admissions
 *              are in the local state but not yet in Redis):
 *                token_bucket  tokens = redis tokens - pending, refill from
 *                              the reply's time (negative tokens are debt:
 *                              over-admission is paid back, so admission
 *                              converges to the rate)
 *                gcra          TAT = redis TAT + pending × interval
 *                fixed_window, quota   count = max(local, redis + pending)
 *                sliding_window        both counts, the same way
 *              A quota also pushes the count it knows (F_A): Redis keeps
 *              max(its count + pending, known), so a Redis that lost its
 *              data learns the count back instead of restarting the period
 *              (script.ts). Buckets that are neither pending nor warm are
 *              not synced, so after such a loss (index.ts notices it from
 *              the heartbeat) `reconcileQuotas()` makes the next collect
 *              take every live quota bucket once.
 *
 * Windows. Admissions are counted per window (period, for a quota): the
 * key carries the window start. F_SYNC holds the window whose cluster
 * count the bucket's F_A reflects (0: none yet). While F_B (the bucket's
 * window) equals F_SYNC, every pending admission belongs to F_B's window;
 * once the worker moved the bucket to a new window it restarted F_A from
 * 0, so F_A is exactly what this instance admitted in the new window and
 * the rest of the pending admissions belong to the window before (only a
 * sliding window still needs those: they are pushed to its previous
 * window's counter).
 *
 * Scan cost: the scan reads every entry's tag (capacity + 1,024 entries,
 * ~0.7 ms for the default 262,144); the work per synced key is ~2 µs in
 * this thread plus the script's 1.4-4 µs in Redis (bench/RESULTS.md,
 * "Rate limits (Redis sync)"). A dirty list filled by the workers would
 * save the scan but put one more write (and a shared queue) on the request
 * path; at the default capacity the scan is cheap next to the keys.
 */
import type { RateLimitPolicy } from '../../common/config/types.js';
import {
  E_HI, E_LO, E_TAG, F_A, F_B, F_C, F_EXPIRES, F_PENDING, F_SYNC, OVERFLOW_ENTRIES, type RateLimitTable,
} from '../../common/rate-limit-layout.js';
import { periodBounds } from '../../workers/policies/rate-limit/calendar.js';
import { S_COUNTER, S_GCRA, S_QUOTA, S_SLIDING, S_TOKEN_BUCKET, bucketKey, keySlot, policyKeyHead } from './script.js';

/** Buckets per script call. Larger batches cost Redis the same per key but hold it longer at once. */
export const MAX_BATCH = 256;
/** A bucket pushed this recently is pulled every cycle, even with nothing to push (ms). */
export const WARM_MS = 1_000;
/** Extra lifetime of Redis keys past what they count (ms): covers clock differences between instances. */
export const EXPIRY_MARGIN_MS = 10_000;
/** A policy that left the config is still synced this long (other instances may not have reloaded yet), ms. */
export const RETIRE_GRACE_MS = 10_000;

/** A cluster-scope batched policy, as the sync needs it. */
export class SyncPolicy {
  readonly tag: number;
  readonly script: number;
  readonly quota: boolean;
  /** `<keyPrefix>rl:{<tag>:` */
  readonly head: string;
  /** Script ARGV[2], ARGV[3] (see script.ts). */
  readonly a: number;
  readonly b: number;
  readonly perMs: number;
  readonly burst: number;
  /** token_bucket: tokens per ms. */
  readonly perMsRate: number;
  /** When it left the config (ms), or 0 while in it. */
  retiredAt = 0;
  private periodStart = -1;
  private periodEnd = 0;

  constructor(readonly policy: RateLimitPolicy, keyPrefix: string) {
    this.tag = policy.tag;
    this.head = policyKeyHead(keyPrefix, policy.tag);
    this.perMs = policy.perMs;
    this.burst = policy.burst;
    this.perMsRate = policy.rate / policy.perMs;
    this.quota = policy.algorithm === 'quota';
    switch (policy.algorithm) {
      case 'token_bucket':
        this.script = S_TOKEN_BUCKET;
        this.a = this.perMsRate;
        this.b = policy.burst;
        break;
      case 'gcra':
        this.script = S_GCRA;
        this.a = policy.perMs / policy.rate;
        this.b = 0;
        break;
      case 'sliding_window':
        this.script = S_SLIDING;
        this.a = policy.perMs;
        this.b = 0;
        break;
      case 'quota':
        this.script = S_QUOTA;
        this.a = 0;
        this.b = 0;
        break;
      default: // fixed_window
        this.script = S_COUNTER;
        this.a = 0;
        this.b = 0;
    }
  }

  /** When the counter of the window (period) starting at `start` stops mattering (Unix ms). */
  windowEnd(start: number): number {
    if (!this.quota) return start + (this.script === S_SLIDING ? 2 * this.perMs : this.perMs);
    if (start !== this.periodStart) {
      // The period containing its own start: calendar arithmetic, once per period.
      this.periodEnd = periodBounds(start, this.policy.period!, this.policy.timeZone)[1];
      this.periodStart = start;
    }
    return this.periodEnd;
  }
}

/** The buckets of one script call: one policy (and one slot on a cluster). */
export class Batch {
  readonly entries: number[] = [];
  readonly his: number[] = [];
  readonly los: number[] = [];
  /** What was pushed per bucket (given back to quotas when the call fails). */
  readonly pushed: number[] = [];
  /** Windows: the window (period) start of each bucket. */
  readonly windows: number[] = [];
  readonly keys: string[] = [];
  /** ARGV after the script's first four. */
  readonly args: number[] = [];
  /** Local clock (ms) when the batch was sent: with the reply's arrival, the moment Redis computed it. */
  sentAt = 0;

  constructor(readonly policy: SyncPolicy) {}

  get size(): number {
    return this.entries.length;
  }

  /** The script's whole argument list: numkeys, keys, ARGV. */
  command(): (string | number)[] {
    const p = this.policy;
    return [this.keys.length, ...this.keys, p.script, p.a, p.b, EXPIRY_MARGIN_MS, ...this.args];
  }
}

/**
 * Where Redis's clock stands against this thread's (offset = Redis - local,
 * ms), to date what Redis computed: a token bucket's tokens are "as of
 * Redis's TIME", and refilling locally from a later instant would lose
 * that much refill every cycle (from an earlier one, gain it: 0.2 ms per
 * 50 ms cycle is 0.4 % of the rate). A reply's TIME was read between the
 * batch's sending and the reply's arrival, so each reply bounds the offset
 * on both sides: offset <= TIME - sentAt, offset >= TIME - receivedAt.
 * The two sides are not alike: a batch leaves at once (the socket write
 * is synchronous) while its reply waits for this thread's event loop, so
 * the upper bound is the tight one. The offset used is the smallest upper
 * bound of the last SAMPLES replies (the fastest trip out), as long as it
 * is consistent with their lower bounds; otherwise (a clock step, the
 * nodes of a Cluster disagreeing) the reply's own midpoint. The result is
 * always kept between sentAt and receivedAt.
 */
export class RedisClock {
  static readonly SAMPLES = 32;
  private readonly lo = new Float64Array(RedisClock.SAMPLES).fill(-Infinity);
  private readonly hi = new Float64Array(RedisClock.SAMPLES).fill(Infinity);
  private next = 0;

  /** The local time of Redis's instant `redisNow`, read by a batch sent at `sentAt` and answered at `receivedAt` (local ms). */
  localTime(redisNow: number, sentAt: number, receivedAt: number): number {
    const i = this.next;
    this.lo[i] = redisNow - receivedAt;
    this.hi[i] = redisNow - sentAt;
    this.next = (i + 1) % RedisClock.SAMPLES;
    let lo = -Infinity;
    let hi = Infinity;
    for (let k = 0; k < RedisClock.SAMPLES; k++) {
      if (this.lo[k]! > lo) lo = this.lo[k]!;
      if (this.hi[k]! < hi) hi = this.hi[k]!;
    }
    const offset = lo <= hi ? hi : redisNow - (sentAt + receivedAt) / 2;
    const t = redisNow - offset;
    return t < sentAt ? sentAt : t > receivedAt ? receivedAt : t;
  }
}

/** Counters of what the engine did (metrics). */
export interface SyncCounts {
  /** Buckets taken by the last collect(). */
  lastKeys: number;
  /** Buckets synced, all cycles. */
  keysTotal: number;
  /** Pending admissions dropped because they could not be pushed (Redis away, or a policy gone). */
  discarded: number;
}

export class SyncEngine {
  /** tag -> policy: the running config's cluster-scope batched policies, and recently retired ones. */
  private readonly policies = new Map<number, SyncPolicy>();
  /** Tags whose policy left the config more than RETIRE_GRACE_MS ago: their pending admissions are dropped. */
  private readonly dead = new Set<number>();
  /** Per entry: when it was last pushed (ms since `base`, as uint32; 0 never). 4 bytes per entry. */
  private readonly lastPush: Uint32Array;
  private readonly base: number;
  private readonly end: number;
  readonly counts: SyncCounts = { lastKeys: 0, keysTotal: 0, discarded: 0 };
  readonly redisClock = new RedisClock();

  /** Group batches by Redis Cluster hash slot (every key of one script call must share one). */
  clusterSlots = false;
  /** The next collect() takes every live quota bucket (reconcileQuotas). */
  private reconcile = false;

  /** `clock`: the shared clock (Unix ms), read once to date the `lastPush` marks. */
  constructor(private readonly table: RateLimitTable, clock: () => number) {
    this.end = table.capacity + OVERFLOW_ENTRIES;
    this.lastPush = new Uint32Array(this.end);
    this.base = clock() - 1;
  }

  /**
   * The policies to sync: every cluster-scope, batched policy of `policies`.
   * Policies that left are kept RETIRE_GRACE_MS more, then their buckets'
   * pending admissions are dropped (nothing pushes them any more).
   */
  setPolicies(policies: Iterable<RateLimitPolicy>, keyPrefix: string, now: number): void {
    const next = new Map<number, RateLimitPolicy>();
    for (const p of policies) if (p.scope === 'cluster' && p.mode === 'batched') next.set(p.tag, p);
    for (const [tag, sp] of this.policies) {
      const p = next.get(tag);
      if (p === undefined) {
        if (sp.retiredAt === 0) sp.retiredAt = now;
      } else if (sp.head !== policyKeyHead(keyPrefix, tag)) {
        this.policies.delete(tag); // a new keyPrefix: rebuilt below
      } else {
        sp.retiredAt = 0;
      }
    }
    for (const [tag, p] of next) {
      if (!this.policies.has(tag)) this.policies.set(tag, new SyncPolicy(p, keyPrefix));
      this.dead.delete(tag);
    }
    this.expire(now);
  }

  /** Drops the policies retired for longer than the grace period. */
  expire(now: number): void {
    for (const [tag, sp] of this.policies) {
      if (sp.retiredAt !== 0 && now - sp.retiredAt > RETIRE_GRACE_MS) {
        this.policies.delete(tag);
        this.dead.add(tag);
      }
    }
    if (this.dead.size > 100_000) this.dead.clear(); // bounded; an old tag's buckets are long reusable by then
  }

  /**
   * Redis may have lost its data (index.ts: the heartbeat found this
   * instance missing, or Redis answers again after an outage): the next
   * collect() pushes the count of every live quota bucket, not only of those
   * with pending admissions or pushed within WARM_MS, so that Redis learns
   * back every count this instance knows.
   */
  reconcileQuotas(): void {
    this.reconcile = true;
  }

  /** Policies being synced (retiring ones included). */
  get size(): number {
    return this.policies.size;
  }

  private rel(now: number): number {
    return ((now - this.base) >>> 0) || 1;
  }

  /**
   * Takes the pending admissions of every bucket to sync (zeroing them) and
   * builds the batches. `onBatch` receives each batch once it is full, and
   * the partly filled ones at the end of the scan.
   */
  collect(now: number, onBatch: (b: Batch) => void): void {
    const t = this.table;
    const i32 = t.i32;
    const f64 = t.f64;
    const rel = this.rel(now);
    const lastPush = this.lastPush;
    const open = new Map<number, Batch>();
    let taken = 0;
    const reconcile = this.reconcile;
    this.reconcile = false;
    for (let e = 0; e < this.end; e++) {
      const b = t.base(e);
      const tag = i32[b + E_TAG]!;
      if (tag === 0) continue;
      const fb = b >> 1;
      const hasPending = f64[fb + F_PENDING] !== 0;
      if (!hasPending) {
        const lp = lastPush[e]!;
        if (lp === 0 || ((rel - lp) >>> 0) > WARM_MS) {
          if (!reconcile || f64[fb + F_A]! <= 0 || f64[fb + F_EXPIRES]! <= now || this.policies.get(tag)?.script !== S_QUOTA) continue;
        }
      }
      const pol = this.policies.get(tag);
      if (pol === undefined) {
        if (hasPending && this.dead.has(tag)) this.drop(e, tag);
        continue;
      }
      t.lock(e);
      if (i32[b + E_TAG] !== tag) {
        t.unlock(e);
        continue;
      }
      const hi = i32[b + E_HI]!;
      const lo = i32[b + E_LO]!;
      const p = f64[fb + F_PENDING]!;
      f64[fb + F_PENDING] = 0;
      let window = 0;
      let cur = p;
      let prev = 0;
      let known = 0;
      let stale = false;
      // Token bucket, GCRA: this instance's view now, which a key Redis does not have yet starts from (script.ts).
      let mine = 0;
      if (pol.script === S_TOKEN_BUCKET) {
        const tokens = f64[fb + F_A]! + (now - f64[fb + F_B]!) * pol.perMsRate;
        mine = tokens > pol.burst ? pol.burst : tokens;
      } else if (pol.script === S_GCRA) {
        // TAT is F_A + F_C (algorithms.ts).
        mine = Math.max(0, (f64[fb + F_A]! - now) + f64[fb + F_C]!);
      } else {
        window = f64[fb + F_B]!;
        const synced = f64[fb + F_SYNC]!;
        if (synced !== window) {
          // The bucket moved to a new window since the last sync (or was just
          // created): F_A is what this instance admitted in it.
          cur = Math.min(p, f64[fb + F_A]!);
          if (pol.script === S_SLIDING && (synced === 0 || synced === window - pol.perMs)) prev = p - cur;
        }
        known = f64[fb + F_A]!;
        // Nothing to push, and nothing counted any more: nothing to learn either.
        stale = p === 0 && f64[fb + F_EXPIRES]! <= now;
      }
      t.unlock(e);
      if (p > 0) lastPush[e] = rel;
      if (stale) continue;
      const k = pol.script === S_TOKEN_BUCKET || pol.script === S_GCRA ? bucketKey(pol.head, hi, lo) : bucketKey(pol.head, hi, lo, window);
      // Tags are 32-bit, slots 14-bit: tag * 16384 + slot is exact in a double.
      const group = this.clusterSlots ? (tag >>> 0) * 16384 + keySlot(k) : tag;
      let batch = open.get(group);
      if (batch === undefined) {
        batch = new Batch(pol);
        open.set(group, batch);
      }
      batch.entries.push(e);
      batch.his.push(hi);
      batch.los.push(lo);
      batch.pushed.push(p);
      batch.windows.push(window);
      batch.keys.push(k);
      switch (pol.script) {
        case S_TOKEN_BUCKET:
        case S_GCRA:
          batch.args.push(p, mine);
          break;
        case S_COUNTER:
          batch.args.push(cur, pol.windowEnd(window));
          break;
        case S_QUOTA:
          batch.args.push(cur, pol.windowEnd(window), known);
          break;
        case S_SLIDING:
          batch.keys.push(bucketKey(pol.head, hi, lo, window - pol.perMs));
          batch.args.push(cur, prev, pol.windowEnd(window));
          break;
      }
      taken++;
      if (batch.size >= MAX_BATCH) {
        open.delete(group);
        onBatch(batch);
      }
    }
    for (const batch of open.values()) onBatch(batch);
    this.counts.lastKeys = taken;
    this.counts.keysTotal += taken;
  }

  /**
   * Writes a batch's reply into its buckets (see the module comment).
   * `receivedAt` is the local clock when the reply arrived; token buckets
   * and GCRA are dated by the Redis TIME the reply carries (RedisClock).
   */
  apply(batch: Batch, reply: readonly unknown[], receivedAt: number): void {
    const t = this.table;
    const i32 = t.i32;
    const f64 = t.f64;
    const pol = batch.policy;
    const at = pol.script === S_TOKEN_BUCKET || pol.script === S_GCRA
      ? this.redisClock.localTime(Number(reply[reply.length - 1]), batch.sentAt, receivedAt)
      : receivedAt;
    for (let j = 0; j < batch.entries.length; j++) {
      const e = batch.entries[j]!;
      const b = t.base(e);
      const fb = b >> 1;
      t.lock(e);
      if (i32[b + E_TAG] !== pol.tag || i32[b + E_HI] !== batch.his[j] || i32[b + E_LO] !== batch.los[j]) {
        // The slot went to another key meanwhile: what came back is not its.
        t.unlock(e);
        continue;
      }
      const since = f64[fb + F_PENDING]!;
      switch (pol.script) {
        case S_TOKEN_BUCKET: {
          const tokens = Number(reply[j]) - since;
          f64[fb + F_A] = tokens;
          f64[fb + F_B] = at;
          // + 1 µs as the workers do (algorithms.ts): the rounded sum is never before the bucket is full.
          f64[fb + F_EXPIRES] = tokens >= pol.burst ? at : at + (pol.burst - tokens) / pol.perMsRate + 0.001;
          break;
        }
        case S_GCRA: {
          // TAT is F_A + F_C (algorithms.ts): written whole into F_A, remainder 0.
          const tat = at + Number(reply[j]) + since * pol.a;
          f64[fb + F_A] = tat;
          f64[fb + F_C] = 0;
          f64[fb + F_EXPIRES] = tat;
          break;
        }
        case S_COUNTER:
        case S_QUOTA: {
          const w = batch.windows[j]!;
          if (f64[fb + F_B] === w) {
            const count = Math.max(f64[fb + F_A]!, Number(reply[j]) + since);
            f64[fb + F_A] = count;
            if (count > 0) f64[fb + F_EXPIRES] = Math.max(f64[fb + F_EXPIRES]!, pol.windowEnd(w));
          }
          f64[fb + F_SYNC] = w;
          break;
        }
        case S_SLIDING: {
          const w = batch.windows[j]!;
          const cur = Number(reply[2 * j]);
          const prev = Number(reply[2 * j + 1]);
          const fbw = f64[fb + F_B]!;
          if (fbw === w) {
            const count = Math.max(f64[fb + F_A]!, cur + since);
            f64[fb + F_A] = count;
            f64[fb + F_C] = Math.max(f64[fb + F_C]!, prev);
            const clear = count > 0 ? w + 2 * pol.perMs : prev > 0 ? w + pol.perMs : 0;
            if (clear > f64[fb + F_EXPIRES]!) f64[fb + F_EXPIRES] = clear;
          } else if (fbw === w + pol.perMs) {
            // Moved on to the next window meanwhile: what Redis counted in w is
            // that window's previous count (plus what was admitted in w since the push).
            const inW = since - Math.min(since, f64[fb + F_A]!);
            f64[fb + F_C] = Math.max(f64[fb + F_C]!, cur + inW);
          }
          f64[fb + F_SYNC] = w;
          break;
        }
      }
      t.unlock(e);
    }
  }

  /**
   * A batch could not be synced. Quotas get their pending admissions back
   * (pushed once Redis answers again: a quota's count must survive an
   * outage); rate limits drop them (see discardPending).
   */
  failed(batch: Batch): void {
    const pol = batch.policy;
    if (!pol.quota) {
      for (const p of batch.pushed) this.counts.discarded += p;
      return;
    }
    const t = this.table;
    for (let j = 0; j < batch.entries.length; j++) {
      const p = batch.pushed[j]!;
      if (p === 0) continue;
      const e = batch.entries[j]!;
      const b = t.base(e);
      t.lock(e);
      if (t.i32[b + E_TAG] === pol.tag && t.i32[b + E_HI] === batch.his[j] && t.i32[b + E_LO] === batch.los[j]) {
        t.f64[(b >> 1) + F_PENDING]! += p;
      } else {
        this.counts.discarded += p;
      }
      t.unlock(e);
    }
  }

  /**
   * While Redis is away: the pending admissions of rate limits are dropped
   * every cycle (they were decided locally with this instance's share;
   * pushing them on recovery would charge the same requests twice), and a
   * bucket holding pending admissions can never be reused, so they must
   * not pile up. Quotas keep theirs until Redis is back.
   */
  discardPending(): void {
    const t = this.table;
    const i32 = t.i32;
    const f64 = t.f64;
    for (let e = 0; e < this.end; e++) {
      const b = t.base(e);
      const tag = i32[b + E_TAG]!;
      if (tag === 0 || f64[(b >> 1) + F_PENDING] === 0) continue;
      const pol = this.policies.get(tag);
      if (pol === undefined ? this.dead.has(tag) : !pol.quota) this.drop(e, tag);
    }
  }

  private drop(e: number, tag: number): void {
    const t = this.table;
    const b = t.base(e);
    t.lock(e);
    if (t.i32[b + E_TAG] === tag) {
      this.counts.discarded += t.f64[(b >> 1) + F_PENDING]!;
      t.f64[(b >> 1) + F_PENDING] = 0;
    }
    t.unlock(e);
  }
}
