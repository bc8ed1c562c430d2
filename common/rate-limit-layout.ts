/**
 * Shared-memory layout of the rate-limit buckets: one table per process,
 * created by the engine at start and handed to every worker and to the
 * admin thread, so every thread of the process decides on the same bucket
 * (a limit of 100/s holds exactly whether 1 or 8 workers serve) and the
 * buckets outlive reloads and worker replacements.
 *
 * Entries (64 bytes, one cache line each, so two buckets never share a
 * line between cores):
 *
 *   Int32 view, 16 per entry          Float64 view, 8 per entry
 *   [0] E_LOCK  0 free, else holder   [2] F_A        algorithm state (below)
 *               (the view's id)
 *   [1] E_TAG   policy tag, 0 = empty [3] F_B        algorithm state
 *   [2] E_HI    key hash, high 32     [4] F_C        algorithm state
 *   [3] E_LO    key hash, low 32      [5] F_EXPIRES  ms: from then on the bucket
 *                                                    equals a fresh one (reusable)
 *                                     [6] F_PENDING  admissions not yet pushed to
 *                                                    Redis (cluster scope only)
 *                                     [7] F_SYNC     the admin thread's own (Redis sync)
 *
 * What F_A..F_C hold per algorithm (workers/policies/rate-limit/algorithms.ts):
 *   token_bucket    A tokens          B last refill (ms)
 *   gcra            A theoretical arrival time (ms), rounded  C what the rounding dropped
 *                   (TAT = A + C exactly; whoever writes A alone writes C = 0)
 *   fixed_window    A count           B window start (ms)
 *   sliding_window  A current count   B current window start   C previous count
 *   quota           A count           B period start (ms)
 *
 * Keys: a policy's tag (a 32-bit hash of its definition, the same on every
 * instance and every start: common/config/rate-limit.ts) seeds a 64-bit
 * hash of the key text (`10.0.0.7`, a tenant id...). The text itself is
 * never stored. Lookup is open addressing with linear probing over a
 * window of PROBE_WINDOW entries (1 KiB, contiguous). A slot is reused when
 * empty, or when its bucket is idle long enough to equal a fresh one
 * (F_EXPIRES passed) and holds nothing unsynced: idle keys are evicted as a
 * side effect of lookups, with no sweeper.
 *
 * Full table: when every slot of a key's window holds a live bucket, the
 * lookup (with `evict`, as the workers' requests do) evicts the live bucket
 * of that window that is worth least: one of the same policy as the new
 * key if there is one (so a client flooding one policy with keys it
 * chooses evicts its own buckets, never resets another policy's, such as
 * its own login limit), then one with no unsynced admissions (F_PENDING
 * 0), then the one that expires soonest (its state is the closest to "full
 * again", which a new bucket starts as anyway); a bucket of a protected
 * policy (`protect`: quotas, whose counts should survive) only when the
 * window holds nothing else, its own policy's first (with Redis a cluster
 * quota's evicted key learns its count again at its next sync; without,
 * it starts afresh). The evicted key merely gets a fresh (full) bucket on
 * its next request: one key is limited afresh, instead of every new key
 * sharing one bucket. That is what keeps a client that chooses its own
 * keys (by: header:..., query:...) from filling the table and denying
 * service to every new client of every policy. The policy's overflow
 * bucket (OVERFLOW_ENTRIES reserved entries after the table, indexed by
 * tag) is left for lookups without `evict` (the quota file's restore) and
 * for a key that loses every claim race (CLAIM_ATTEMPTS): keys there are
 * limited together, at the policy's limit.
 * Evictions are counted in the header (H_EVICTIONS). Memory never grows;
 * nothing throws. Size `rateLimitTable.capacity` to about twice the keys
 * active within a bucket's refill time.
 *
 * Concurrency: an entry is read and written only under its lock (a
 * spinlock on E_LOCK: Atomics.compareExchange, which also orders the plain
 * Float64 accesses between threads). Critical sections are a few dozen
 * arithmetic operations; a thread never holds two locks. A holder that
 * stays longer than LOCK_STEAL_MS (its thread died mid-section) has its
 * lock taken over: the lock holds the holder's id (one per view), so only
 * one waiter can take over a given holder's lock, and a holder that was
 * only slow, not dead, cannot release its successor's lock.
 *
 * Claims: two threads that look for the same new key at the same moment
 * may pick different free slots (they probe at slightly different times,
 * and a slot's expiry may fall in between), or evict different buckets.
 * Each publishes its claim (under the slot's lock: E_TAG set to 0, the key
 * written, then Atomics.store of the tag; so a thread that reads the tag
 * atomically and sees the claim sees its key too), then looks over the
 * window again; of two concurrent claims at least one sees the other
 * (sequentially consistent atomics: Dekker's argument), and a claimer that
 * sees another gives its own slot back (empty: an evicted bucket is not
 * put back). So a key never has two buckets. An eviction is a claim of a
 * live slot: the victim is chosen from an unlocked look, then checked again
 * under its lock (still the same key, still live)
 * before it is taken; its key's next lookup finds it gone and claims
 * another slot. A bucket's key can thus change between two lookups of the
 * same request: whoever gives a unit back later (index.ts giveBack) checks
 * the entry still holds the key it admitted.
 *
 * The table header (the first 64 bytes, Float64 cells) holds what the
 * admin thread tells the workers: H_SHARE, the share of a cluster-wide
 * limit this instance enforces alone while Redis is unreachable
 * (onStoreError allow_local: 1/instances), and H_STORE_DOWN (1 while Redis
 * is unreachable), H_DOWN_SHARE (1/instances at all times, for strict
 * limits falling back before H_SHARE drops); and H_QUOTA_DIRTY, set by a worker when a quota count
 * changes and cleared by the engine's quota file saver
 * (engine/quota-store.ts) when it takes a snapshot. Workers write it only
 * when it is clear, so the line is written about once per save, not per
 * request. H_EVICTIONS (a BigInt64 cell, Atomics.add) counts evictions of
 * every thread (turnpike_rate_limit_table_evictions_total: `evictions`).
 */

export const ENTRY_BYTES = 64;
export const ENTRY_INTS = ENTRY_BYTES / 4;
export const ENTRY_FLOATS = ENTRY_BYTES / 8;

// Int32 offsets within an entry.
export const E_LOCK = 0;
export const E_TAG = 1;
export const E_HI = 2;
export const E_LO = 3;
// Float64 offsets within an entry.
export const F_A = 2;
export const F_B = 3;
export const F_C = 4;
export const F_EXPIRES = 5;
export const F_PENDING = 6;
export const F_SYNC = 7;

// Header cells (Float64), before entry 0.
export const H_CAPACITY = 0;
export const H_SHARE = 1;
export const H_STORE_DOWN = 2;
export const H_QUOTA_DIRTY = 3;
/**
 * 1/instances as last counted (heartbeats), whether Redis is up or not: the
 * share a strict limit's allow_local fallback uses from the first request
 * whose Redis call fails, before the admin thread has noticed the outage and
 * lowered H_SHARE (the worker's strict store usually notices first).
 */
export const H_DOWN_SHARE = 5;
/** Index in a BigInt64Array view of the header (bytes 32-39): evictions, all threads (Atomics.add). */
export const H_EVICTIONS = 4;
const HEADER_ENTRIES = 1;

/**
 * Lookups that lose this many races in a row for a key's window use the
 * overflow bucket. Losing one needs another thread claiming in the same
 * window at that instant; 16 was exhausted once in a test whose six threads
 * race on every key of a 2-CPU machine loaded by other test files (threads
 * preempted mid-claim), so the bound is far from anything traffic makes.
 */
const CLAIM_ATTEMPTS = 64;

/** Lock holder ids: one per view (thread), never 0. */
function newHolderId(): number {
  return 1 + Math.floor(Math.random() * 0x7ffffffe);
}

/** Entries probed for a key before it goes to its policy's overflow bucket. */
export const PROBE_WINDOW = 16;
/** Overflow buckets after the table (indexed by policy tag). */
export const OVERFLOW_ENTRIES = 1024;
/** Smallest and largest table (entries); the capacity is rounded up to a power of two. */
export const MIN_CAPACITY = 1024;
export const MAX_CAPACITY = 16_777_216;
/** rateLimitTable.capacity default: 262,144 entries = 16 MiB. */
export const DEFAULT_CAPACITY = 262_144;
/**
 * A lock held this long belongs to a thread that died inside its critical
 * section. Long enough that a live holder merely preempted by the kernel is
 * not robbed (at 50 ms, a 2-CPU machine at load 12 saw steals, and the two
 * holders then admitted a unit twice): a section is a few dozen operations.
 */
export const LOCK_STEAL_MS = 500;

/** Bytes of a table of `capacity` entries (rounded up to a power of two), overflow buckets and header included. */
export function tableBytes(capacity: number): number {
  return (HEADER_ENTRIES + roundCapacity(capacity) + OVERFLOW_ENTRIES) * ENTRY_BYTES;
}

export function roundCapacity(capacity: number): number {
  let c = MIN_CAPACITY;
  while (c < capacity && c < MAX_CAPACITY) c *= 2;
  return c;
}

/** Creates the table (engine, once per process). */
export function createRateLimitTable(capacity: number): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(tableBytes(capacity));
  const f = new Float64Array(sab);
  f[H_CAPACITY] = roundCapacity(capacity);
  f[H_SHARE] = 1;
  f[H_DOWN_SHARE] = 1;
  return sab;
}

// ---------------------------------------------------------------- hashing

/**
 * 64-bit hash of a key's text, seeded by the policy tag, as two 32-bit
 * halves written to `out` (cyrb53's two multiply lanes with cross mixing,
 * extended to 64 bits). Not cryptographic: a client that chooses its key
 * (header:, query:) could craft colliding keys, which would at worst share
 * a bucket with each other. The same text gives the same hash on every
 * thread, instance and start (Redis key names are built from it).
 */
export function hashKey(tag: number, text: string, out: Int32Array): void {
  let h1 = 0xdeadbeef ^ tag;
  let h2 = 0x41c6ce57 ^ tag;
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ ch, 2654435761);
    h2 = Math.imul(h2 ^ ch, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507);
  h1 ^= Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507);
  h2 ^= Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  out[0] = h1 | 0;
  out[1] = h2 | 0;
}

/** 32-bit FNV-1a of a string: policy tags (never 0: 0 marks an empty entry). */
export function tagOf(identity: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < identity.length; i++) h = Math.imul(h ^ identity.charCodeAt(i), 16777619);
  return (h | 0) === 0 ? 1 : h | 0;
}

// ---------------------------------------------------------------- clock

/**
 * The clock every thread of the process decides with: Unix time in
 * milliseconds (fractional), read as `performance.now() + clockOffset`.
 * performance.now() in any thread is the process's monotonic clock
 * (uv_hrtime) minus that thread's start; the offset, computed once per
 * thread from the engine's epoch (a wall-clock reading and a monotonic one
 * taken together at start), removes the difference. So the clock is
 * monotonic, the same in every thread, unmoved by wall-clock steps, and
 * costs no call per request: the request handler's own performance.now()
 * is reused. Unix-aligned so that windows (fixed_window: multiples of
 * `per` since 1970) line up across instances.
 */
export interface ClockEpoch {
  /** Date.now() at the engine's start. */
  wallMs: number;
  /** process.hrtime.bigint() at the same moment, in ms (monotonic, shared by every thread). */
  monoMs: number;
}

export function createClockEpoch(): ClockEpoch {
  return { wallMs: Date.now(), monoMs: monoNowMs() };
}

function monoNowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** This thread's `performance.now()` -> shared clock offset. */
export function clockOffset(epoch: ClockEpoch): number {
  // Two readings taken together; the error is the time between them (~100 ns).
  const mono = monoNowMs();
  const perf = performance.now();
  return epoch.wallMs + (mono - epoch.monoMs) - perf;
}

// ---------------------------------------------------------------- table

/**
 * A view of the table for one thread. `find` returns the index of a key's
 * entry, locked; the caller reads and writes its fields through `i32`/`f64`
 * at `base(entry)` and then calls `unlock`. Every method is allocation-free.
 */
export class RateLimitTable {
  readonly sab: SharedArrayBuffer;
  readonly i32: Int32Array;
  readonly f64: Float64Array;
  readonly capacity: number;
  private readonly mask: number;
  /** Entries that went to an overflow bucket (table full), since this view was created. */
  overflows = 0;
  /** Live buckets this view evicted (table full around a key); every thread's: `evictions`. */
  evicted = 0;
  /** Locks taken over from a holder that never released (see LOCK_STEAL_MS). */
  steals = 0;
  /** What E_LOCK holds while this view holds an entry. */
  private readonly holder = newHolderId();
  /** The header as 64-bit integers (H_EVICTIONS). */
  private readonly i64: BigInt64Array;
  /** Tags whose buckets are never evicted (quotas): see `protect`. */
  private readonly protectedTags = new Set<number>();

  constructor(sab: SharedArrayBuffer) {
    this.sab = sab;
    this.i32 = new Int32Array(sab);
    this.f64 = new Float64Array(sab);
    this.i64 = new BigInt64Array(sab, 0, ENTRY_BYTES / 8);
    this.capacity = this.f64[H_CAPACITY]!;
    this.mask = this.capacity - 1;
  }

  /** Int32 index of an entry's first cell (Float64 index: half of it). */
  base(entry: number): number {
    return (HEADER_ENTRIES + entry) * ENTRY_INTS;
  }

  lock(entry: number): void {
    const at = (HEADER_ENTRIES + entry) * ENTRY_INTS + E_LOCK;
    if (Atomics.compareExchange(this.i32, at, 0, this.holder) === 0) return;
    this.lockSlow(at);
  }

  private lockSlow(at: number): void {
    const i32 = this.i32;
    const me = this.holder;
    let spins = 0;
    let waitedSince = 0;
    let holder = 0;
    for (;;) {
      const h = Atomics.load(i32, at);
      if (h === 0) {
        if (Atomics.compareExchange(i32, at, 0, me) === 0) return;
        continue;
      }
      if (h !== holder) {
        // A new holder: its time starts now.
        holder = h;
        waitedSince = 0;
      }
      if (++spins < 256) continue;
      // The holder is descheduled (or dead): stop burning the core, check back shortly.
      const now = performance.now();
      if (waitedSince === 0) waitedSince = now;
      else if (now - waitedSince > LOCK_STEAL_MS) {
        // Only one waiter replaces this holder; the others see a new one.
        if (Atomics.compareExchange(i32, at, h, me) === h) {
          this.steals++;
          return;
        }
        continue;
      }
      Atomics.wait(i32, at, h, 0.05);
      spins = 0;
    }
  }

  /** Releases an entry this view locked (a lock taken over meanwhile stays with its new holder). */
  unlock(entry: number): void {
    Atomics.compareExchange(this.i32, (HEADER_ENTRIES + entry) * ENTRY_INTS + E_LOCK, this.holder, 0);
  }

  /**
   * Buckets of policy `tag` are evicted last (quotas: their counts should
   * survive a full table; see `victim`). Per view: every thread that
   * decides requests registers the protected policies of its config
   * (index.ts).
   */
  protect(tag: number): void {
    this.protectedTags.add(tag);
  }

  /** Live buckets evicted by every thread of the process (H_EVICTIONS). */
  get evictions(): number {
    return Number(Atomics.load(this.i64, H_EVICTIONS));
  }

  /**
   * The entry of (tag, hi, lo), locked; created (fields zeroed, F_EXPIRES
   * 0) when absent. `isNew` tells the caller to initialise it. When the
   * key's window is full of live buckets: with `evict`, the window's live
   * bucket that is worth least is evicted and its slot claimed (`evicted`
   * true; module comment, "Full table"); without `evict`, or when none may
   * be evicted, the policy's overflow entry (also locked; `overflowed` is
   * then true).
   */
  find(tag: number, hi: number, lo: number, now: number, out: FindResult, evict = false): number {
    const i32 = this.i32;
    const f64 = this.f64;
    const mask = this.mask;
    out.evicted = false;
    // Each failed attempt means another thread claimed or gave back a slot of this window meanwhile.
    for (let attempt = 0; attempt < CLAIM_ATTEMPTS; attempt++) {
      let free = -1;
      let found = false;
      for (let p = 0; p < PROBE_WINDOW; p++) {
        const e = (lo + p) & mask;
        const b = (HEADER_ENTRIES + e) * ENTRY_INTS;
        // Cheap unlocked look first; the decision is taken again under the lock.
        const t = Atomics.load(i32, b + E_TAG);
        if (t === tag && i32[b + E_LO] === lo && i32[b + E_HI] === hi) {
          this.lock(e);
          if (i32[b + E_TAG] === tag && i32[b + E_LO] === lo && i32[b + E_HI] === hi) {
            out.isNew = false;
            out.overflowed = false;
            return e;
          }
          this.unlock(e);
          found = true;
          break; // taken over meanwhile: probe again
        }
        if (free === -1 && (t === 0 || reusable(f64, b >> 1, now))) free = e;
      }
      if (found) continue;
      let evicting = false;
      if (free === -1) {
        if (!evict) return this.overflow(tag, now, out);
        free = this.victim(lo, tag);
        if (free === -1) return this.overflow(tag, now, out);
        evicting = true;
      }
      const b = (HEADER_ENTRIES + free) * ENTRY_INTS;
      const fb = b >> 1;
      // Unlocked: what the victim held when it was chosen.
      const vTag = Atomics.load(i32, b + E_TAG);
      const vHi = i32[b + E_HI]!;
      const vLo = i32[b + E_LO]!;
      this.lock(free);
      const claimable = evicting
        // Still the bucket chosen, still live.
        ? i32[b + E_TAG] === vTag && vTag !== 0 && i32[b + E_HI] === vHi && i32[b + E_LO] === vLo && !reusable(f64, fb, now)
        : i32[b + E_TAG] === 0 || reusable(f64, fb, now);
      if (claimable) {
        // Publish the claim, then look for a concurrent one (module comment, "Claims").
        Atomics.store(i32, b + E_TAG, 0);
        f64[fb + F_A] = 0;
        f64[fb + F_B] = 0;
        f64[fb + F_C] = 0;
        f64[fb + F_EXPIRES] = 0;
        f64[fb + F_PENDING] = 0;
        f64[fb + F_SYNC] = 0;
        i32[b + E_HI] = hi;
        i32[b + E_LO] = lo;
        Atomics.store(i32, b + E_TAG, tag);
        if (evicting) {
          this.evicted++;
          Atomics.add(this.i64, H_EVICTIONS, 1n);
        }
        if (this.claimedElsewhere(tag, hi, lo, free)) {
          Atomics.store(i32, b + E_TAG, 0);
          this.unlock(free);
          // Both claimers may have seen each other and given both slots back:
          // a random pause (0-20 µs) keeps them from doing it again in step.
          const until = performance.now() + Math.random() * 0.02;
          while (performance.now() < until);
          continue;
        }
        out.isNew = true;
        out.overflowed = false;
        out.evicted = evicting;
        return free;
      }
      // Another thread claimed it first (maybe for this very key): look again.
      this.unlock(free);
    }
    return this.overflow(tag, now, out);
  }

  /**
   * The live bucket of the window starting at `lo` that is worth least to
   * evict for a new key of policy `tag` (unlocked look; find checks it again
   * under its lock). In order: a bucket of the same
   * policy (a policy whose keys fill the table evicts its own buckets first:
   * a client flooding one policy with keys it chooses cannot evict, and so
   * reset, the buckets of another policy, such as its own login limit), then
   * one with no unsynced admissions, then the one that expires soonest; a
   * protected (quota) bucket only when the window holds nothing else (its
   * own policy's first): a flood of quota keys must not send every new key
   * of every policy to one overflow bucket. -1 only when the window is empty
   * of live buckets (a race: find looks again).
   */
  private victim(lo: number, tag: number): number {
    const i32 = this.i32;
    const f64 = this.f64;
    let best = -1;
    let bestRank = 6;
    let bestExpires = Infinity;
    for (let p = 0; p < PROBE_WINDOW; p++) {
      const e = (lo + p) & this.mask;
      const b = (HEADER_ENTRIES + e) * ENTRY_INTS;
      const t = Atomics.load(i32, b + E_TAG);
      if (t === 0) continue;
      const fb = b >> 1;
      // 0: same policy, nothing pending; 1: same policy; 2: other, nothing pending; 3: other;
      // then protected (quota) buckets, the last resort: 4 same policy, 5 other.
      const rank = this.protectedTags.has(t) ? (t === tag ? 4 : 5) : (t === tag ? 0 : 2) + (f64[fb + F_PENDING] !== 0 ? 1 : 0);
      const expires = f64[fb + F_EXPIRES]!;
      if (rank < bestRank || (rank === bestRank && expires < bestExpires)) {
        best = e;
        bestRank = rank;
        bestExpires = expires;
      }
    }
    return best;
  }

  /** Whether another entry of the key's probe window holds (tag, hi, lo). */
  private claimedElsewhere(tag: number, hi: number, lo: number, mine: number): boolean {
    const i32 = this.i32;
    for (let p = 0; p < PROBE_WINDOW; p++) {
      const e = (lo + p) & this.mask;
      if (e === mine) continue;
      const b = (HEADER_ENTRIES + e) * ENTRY_INTS;
      if (Atomics.load(i32, b + E_TAG) === tag && i32[b + E_LO] === lo && i32[b + E_HI] === hi) return true;
    }
    return false;
  }

  /** The overflow entry of a policy (not locked): where its keys go while their windows are full. */
  overflowEntry(tag: number): number {
    return this.capacity + ((tag >>> 0) % OVERFLOW_ENTRIES);
  }

  private overflow(tag: number, now: number, out: FindResult): number {
    this.overflows++;
    const e = this.overflowEntry(tag);
    const b = (HEADER_ENTRIES + e) * ENTRY_INTS;
    this.lock(e);
    const i32 = this.i32;
    out.overflowed = true;
    // Two policies whose tags share an overflow entry share it while both are live.
    if (i32[b + E_TAG] !== tag && (i32[b + E_TAG] === 0 || reusable(this.f64, b >> 1, now))) {
      i32[b + E_TAG] = tag;
      i32[b + E_HI] = 0;
      i32[b + E_LO] = 0;
      this.f64.fill(0, (b >> 1) + F_A, (b >> 1) + ENTRY_FLOATS);
      out.isNew = true;
      return e;
    }
    out.isNew = false;
    return e;
  }

  /** Live entries (bucket not yet back to fresh) of the main table: a full scan, for metrics. */
  countLive(now: number): number {
    let n = 0;
    const i32 = this.i32;
    const f64 = this.f64;
    for (let e = 0; e < this.capacity; e++) {
      const b = (HEADER_ENTRIES + e) * ENTRY_INTS;
      if (i32[b + E_TAG] !== 0 && !reusable(f64, b >> 1, now)) n++;
    }
    return n;
  }

  get share(): number {
    return this.f64[H_SHARE]!;
  }

  /** H_DOWN_SHARE: this instance's share while Redis is away (1/instances), up or not. */
  get downShare(): number {
    return this.f64[H_DOWN_SHARE]!;
  }

  get storeDown(): boolean {
    return this.f64[H_STORE_DOWN] === 1;
  }
}

/** An entry whose bucket equals a fresh one and holds no unsynced admissions. */
function reusable(f64: Float64Array, fb: number, now: number): boolean {
  return f64[fb + F_EXPIRES]! <= now && f64[fb + F_PENDING] === 0;
}

export interface FindResult {
  isNew: boolean;
  overflowed: boolean;
  /** The entry was claimed by evicting a live bucket (find with `evict`). */
  evicted?: boolean;
}
