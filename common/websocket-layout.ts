/**
 * Shared-memory layout of the WebSocket connection counts per key
 * (routes[].websocket.maxConnectionsPerKey, issue 14): one table per
 * process, created by the engine at start and handed to every worker, so
 * that a limit of N holds across all the worker threads of an instance.
 *
 * What is counted: open connections per (route id, key), the key being the
 * consumer the identity policy found, or the client address without one.
 * A connection counts from the moment its upgrade passed the route's
 * policies (before the upstream is contacted) until it is over (both sides
 * closed, or the handshake failed).
 *
 * Layout: Int32 cells, one column per worker index, each column
 * WS_KEY_ROWS (4) rows of WS_KEY_CELLS (65,536) cells (a count-min sketch):
 *
 *   [worker 0: row 0 cells | row 1 | row 2 | row 3][worker 1: ...]...
 *
 * A key's 64-bit hash picks one cell per row (16 bits each). A worker adds 1 to its own
 * column's 4 cells when it admits a connection and takes 1 off when the
 * connection ends (Atomics.add / Atomics.sub: only that worker writes its
 * column). The key's count is, per row, the sum of its cell over all
 * columns, and the smallest of the 4 rows' sums: never less than the key's
 * true count (every one of its connections is in every one of its cells),
 * more only when each of its 4 cells is shared with other keys that have
 * connections open too.
 *
 * Admission adds first, then reads the count, and takes its 1 back when the
 * count is over the limit: two upgrades of one key racing on two workers
 * cannot both pass the last free place (sequentially consistent atomics:
 * at least one sees the other's add). They may both be refused when they
 * race for the last place at the same instant (each sees the other's add).
 *
 * Collisions: a key is refused below its limit only if all 4 of its cells
 * are shared with other keys (of any route) whose open connections, with
 * its own, reach its limit in every row. With K keys holding connections
 * the chance that a given key shares all 4 cells is about
 * (1 - e^(-K/65536))^4: 0.04% at 10,000 keys, 0.5% at 20,000, 8% at
 * 50,000 (measured: the same; test/unit/common/websocket-layout.test.ts),
 * and then only when the others' counts add up to the limit: sized for
 * tens of thousands of keys with connections open per instance. There is no
 * overflow: memory is fixed (1 MiB per worker), the table never refuses
 * for lack of room; it only grows less precise with many keys, always in
 * the direction of refusing, never of admitting past a limit.
 *
 * Worker crash: a dead worker's connections died with it, but its column
 * still holds them; the replacement worker (same index) zeroes the column
 * when it starts (reset()). Until then (normally well under a second) the
 * dead worker's keys may be refused early.
 *
 * Across instances: with a `redis` section this table is the first, local
 * step of every admission (a key this instance alone holds `limit`
 * connections of is refused without asking Redis); an upgrade it admits
 * is then checked against the count of every instance in Redis
 * (workers/transport/websocket/cluster-count.ts, which says how, and what
 * happens while Redis is away: this table alone decides).
 */
import { hashKey } from './rate-limit-layout.js';

export const WS_KEY_ROWS = 4;
export const WS_KEY_CELLS = 65_536;
const COLUMN = WS_KEY_ROWS * WS_KEY_CELLS;
/** Seed of the key hash ("WSKY"): the table's own, apart from the rate-limit policies' tags. */
const TAG = 0x57534b59;

/** The engine's table for `workers` worker indexes (zeroed): 1 MiB per worker. */
export function createWsConnectionTable(workers: number): SharedArrayBuffer {
  return new SharedArrayBuffer(Math.max(1, workers) * COLUMN * 4);
}

/**
 * A worker's view of the table: it writes its own column only. A key is
 * (route id, key text); its cells come from a 64-bit hash of both (16 bits
 * per row), computed again for the release (no state kept per connection
 * but the key text).
 */
export class WsConnectionTable {
  private readonly v: Int32Array;
  private readonly own: number;
  private readonly columns: number;
  private readonly h = new Int32Array(2);
  /** The key's cell in each row (row offset included), of the last locate(). */
  private readonly at = new Int32Array(WS_KEY_ROWS);

  /** `sab`: the engine's table; `worker`: this worker's index (its column). */
  constructor(sab: SharedArrayBuffer, worker: number) {
    this.v = new Int32Array(sab);
    this.columns = this.v.length / COLUMN;
    if (!Number.isInteger(this.columns) || worker < 0 || worker >= this.columns) throw new Error(`websocket table: no column for worker ${worker}`);
    this.own = worker * COLUMN;
  }

  /** Zeroes this worker's column (a replacement worker starts with no connection). */
  reset(): void {
    for (let i = this.own; i < this.own + COLUMN; i++) Atomics.store(this.v, i, 0);
  }

  /**
   * Counts one more connection of `key` on `route` unless the key already
   * holds `limit` there (then nothing changes). True: admitted (give it
   * back with release(route, key)).
   */
  acquire(route: string, key: string, limit: number): boolean {
    this.locate(route, key);
    this.add(1);
    if (this.sum() <= limit) return true;
    this.add(-1);
    return false;
  }

  /** Gives back a connection acquire() admitted. */
  release(route: string, key: string): void {
    this.locate(route, key);
    this.add(-1);
  }

  /** The key's count (the smallest row sum over every worker's column). */
  count(route: string, key: string): number {
    this.locate(route, key);
    return this.sum();
  }

  private locate(route: string, key: string): void {
    hashKey(TAG, route + '\n' + key, this.h);
    const a = this.h[0]! >>> 0;
    const b = this.h[1]! >>> 0;
    this.at[0] = a & 0xffff;
    this.at[1] = WS_KEY_CELLS + (a >>> 16);
    this.at[2] = 2 * WS_KEY_CELLS + (b & 0xffff);
    this.at[3] = 3 * WS_KEY_CELLS + (b >>> 16);
  }

  private sum(): number {
    let min = Infinity;
    for (let r = 0; r < WS_KEY_ROWS; r++) {
      const cell = this.at[r]!;
      let sum = 0;
      for (let w = 0; w < this.columns; w++) sum += Atomics.load(this.v, w * COLUMN + cell);
      if (sum < min) min = sum;
    }
    return min;
  }

  private add(d: number): void {
    for (let r = 0; r < WS_KEY_ROWS; r++) Atomics.add(this.v, this.own + this.at[r]!, d);
  }
}
