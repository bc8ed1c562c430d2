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
 * key shares its policy's overflow bucket (OVERFLOW_ENTRIES reserved
 * entries after the table, indexed by tag): keys that arrive while the
 * table is full are limited together, at the policy's limit, and the keys
 * already in the table keep their own buckets. Memory never grows; nothing
 * throws. Size `rateLimitTable.capacity` to about twice the keys active
 * within a bucket's refill time.
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
 * and a slot's expiry may fall in between). Each publishes its claim
 * (Atomics.store of the tag), then looks over the window again; of two
 * concurrent claims at least one sees the other (sequentially consistent
 * atomics: Dekker's argument), and a claimer that sees another gives its
 * own slot back. So a key never has two buckets.
 *
 * The table header (the first 64 bytes, Float64 cells) holds what the
 * admin thread tells the workers: H_SHARE, the share of a cluster-wide
 * limit this instance enforces alone while Redis is unreachable
 * (onStoreError allow_local: 1/instances), and H_STORE_DOWN (1 while Redis
 * is unreachable); and H_QUOTA_DIRTY, set by a worker when a quota count
 * changes and cleared by the engine's quota file saver
 * (engine/quota-store.ts) when it takes a snapshot. Workers write it only
 * when it is clear, so the line is written about once per save, not per
 * request.
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
/** A lock held this long belongs to a thread that died inside its critical section. */
export const LOCK_STEAL_MS = 50;

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
  /** Locks taken over from a holder that never released (see LOCK_STEAL_MS). */
  steals = 0;
  /** What E_LOCK holds while this view holds an entry. */
  private readonly holder = newHolderId();

  constructor(sab: SharedArrayBuffer) {
    this.sab = sab;
    this.i32 = new Int32Array(sab);
    this.f64 = new Float64Array(sab);
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
   * The entry of (tag, hi, lo), locked; created (fields zeroed, F_EXPIRES
   * 0) when absent. `isNew` tells the caller to initialise it. When the
   * key's window is full of live buckets, the policy's overflow entry
   * (also locked; `overflowed` is then true).
   */
  find(tag: number, hi: number, lo: number, now: number, out: FindResult): number {
    const i32 = this.i32;
    const f64 = this.f64;
    const mask = this.mask;
    // Each failed attempt means another thread claimed or gave back a slot of this window meanwhile.
    for (let attempt = 0; attempt < CLAIM_ATTEMPTS; attempt++) {
      let free = -1;
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
          break; // taken over meanwhile: probe again
        }
        if (free === -1 && (t === 0 || reusable(f64, b >> 1, now))) free = e;
      }
      if (free === -1) return this.overflow(tag, now, out);
      const b = (HEADER_ENTRIES + free) * ENTRY_INTS;
      this.lock(free);
      if (i32[b + E_TAG] === 0 || reusable(f64, b >> 1, now)) {
        const fb = b >> 1;
        f64[fb + F_A] = 0;
        f64[fb + F_B] = 0;
        f64[fb + F_C] = 0;
        f64[fb + F_EXPIRES] = 0;
        f64[fb + F_PENDING] = 0;
        f64[fb + F_SYNC] = 0;
        i32[b + E_HI] = hi;
        i32[b + E_LO] = lo;
        // Publish the claim, then look for a concurrent one (module comment, "Claims").
        Atomics.store(i32, b + E_TAG, tag);
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
        return free;
      }
      // Another thread claimed it first (maybe for this very key): look again.
      this.unlock(free);
    }
    return this.overflow(tag, now, out);
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
}
