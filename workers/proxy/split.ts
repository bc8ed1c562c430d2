/**
 * Traffic split of a route over several upstreams (`routes[].upstreams`,
 * issue 11: canary deployments). One `Split` per route and config version,
 * built at config compile time (workers/dataplane.ts); per request the
 * handler calls `choose` once, after the route's policies and before the
 * upstream request is built, and everything downstream (target pick, guard,
 * timeouts, header plans, access log, metrics by target) follows the branch
 * it returns.
 *
 * The choice, in order:
 * 1. `when` overrides, in list order: the first entry whose header (or
 *    cookie) has exactly the configured value wins, whatever the weights.
 * 2. A split with one positive weight: that entry.
 * 3. No `hashOn`: smooth weighted round robin (nginx's algorithm), per worker
 *    and per config version: over every sum-of-weights requests a worker
 *    sends each entry exactly its weight (within 1 request), with the
 *    entries interleaved rather than in runs.
 * 4. `hashOn`: the key is hashed (FNV-1a 32-bit with murmur3's finaliser)
 *    to a point u in [0, 1); the entries own consecutive ranges of [0, 1)
 *    sized by weight, in list order, and the one whose range holds u wins
 *    (`floor(u * totalWeight)` against the cumulative weights). The same key
 *    always lands on the same upstream, in every worker and instance. A
 *    weight change moves only the keys whose range changed owner: with two
 *    entries exactly the share that must move (90/10 -> 50/50 moves the
 *    keys in [0.5, 0.9): 40%, all from v1 to v2); with more, the ranges
 *    between two changed boundaries shift too (a consistent-hash ring would
 *    avoid that; a split has few entries and rarely needs it). A request
 *    without the key (the header or cookie missing or empty) hashes its
 *    peer address instead.
 *
 * Nothing here allocates per request: header values are read from the
 * handler's flat `[name, value, ...]` list (lowercase names) in place,
 * cookie values compared and hashed by index range, found by the
 * balancers' cookie reader (maglev.ts cookieRange), so a cookie means the
 * same to a `when`, a split's hashOn and an upstream's hashOn.
 */
import type { RouteUpstreamConfig } from '../../common/config/types.js';
import { cookieRange, found, matchAt } from './maglev.js';

/** routes[].hashOn, parsed: what is hashed. */
export const HASH_NONE = 0;
export const HASH_IP = 1;
export const HASH_PATH = 2;
export const HASH_HEADER = 3;
export const HASH_COOKIE = 4;

/** `ip` | `path` | `header:<name>` | `cookie:<name>` (validated by the config schema) -> kind and name; null -> HASH_NONE. */
export function parseHashOn(hashOn: string | null): { kind: number; name: string } {
  if (hashOn === null) return { kind: HASH_NONE, name: '' };
  if (hashOn === 'ip') return { kind: HASH_IP, name: '' };
  if (hashOn === 'path') return { kind: HASH_PATH, name: '' };
  if (hashOn.startsWith('header:')) return { kind: HASH_HEADER, name: hashOn.slice(7).toLowerCase() };
  if (hashOn.startsWith('cookie:')) return { kind: HASH_COOKIE, name: hashOn.slice(7) };
  throw new Error(`routes[].hashOn: unknown key ${JSON.stringify(hashOn)}`);
}

/**
 * A route's split over `branches` (one per `entries` item, same order; T is
 * the route context of each upstream). Throws on what validation refuses
 * (no positive weight, a length mismatch), so a bad config never reaches a
 * request.
 */
export class Split<T> {
  readonly branches: readonly T[];
  private readonly weights: Int32Array;
  /** Smooth weighted round robin state (current weights), per worker. */
  private readonly current: Int32Array;
  private readonly total: number;
  /** Cumulative weights: entry k owns the points [bounds[k-1], bounds[k]) of [0, total). */
  private readonly bounds: Int32Array;
  /** The only entry with a positive weight, or -1. */
  private readonly only: number;
  // `when` overrides, in list order.
  private readonly condCookie: Uint8Array;
  private readonly condName: string[];
  private readonly condValue: string[];
  private readonly condBranch: Int32Array;
  private readonly hashKind: number;
  private readonly hashName: string;

  constructor(entries: readonly RouteUpstreamConfig[], hashOn: string | null, branches: readonly T[]) {
    if (entries.length === 0 || entries.length !== branches.length) throw new Error('a traffic split needs one branch per listed upstream');
    const n = entries.length;
    this.branches = branches;
    this.weights = new Int32Array(n);
    this.current = new Int32Array(n);
    this.bounds = new Int32Array(n);
    let total = 0;
    let positive = 0;
    let only = -1;
    const condCookie: number[] = [];
    this.condName = [];
    this.condValue = [];
    const condBranch: number[] = [];
    for (let k = 0; k < n; k++) {
      const e = entries[k]!;
      this.weights[k] = e.weight;
      total += e.weight;
      this.bounds[k] = total;
      if (e.weight > 0) {
        positive++;
        only = k;
      }
      if (e.when !== null) {
        condCookie.push(e.when.kind === 'cookie' ? 1 : 0);
        this.condName.push(e.when.kind === 'header' ? e.when.name.toLowerCase() : e.when.name);
        this.condValue.push(e.when.equals);
        condBranch.push(k);
      }
    }
    if (total <= 0) throw new Error('a traffic split needs at least one positive weight');
    this.total = total;
    this.only = positive === 1 ? only : -1;
    this.condCookie = Uint8Array.from(condCookie);
    this.condBranch = Int32Array.from(condBranch);
    const h = parseHashOn(hashOn);
    this.hashKind = h.kind;
    this.hashName = h.name;
  }

  /**
   * The branch for one request. `hdrs`: the request's header lines as
   * `[name, value, ...]` with lowercase names (repeated lines apart, or
   * already joined with ", "); `clientIp`: the connection's peer address;
   * `path`: the normalized path the router matched.
   */
  choose(hdrs: readonly string[], clientIp: string, path: string): T {
    const conds = this.condName.length;
    for (let c = 0; c < conds; c++) {
      const hit = this.condCookie[c] === 1
        ? cookieEquals(hdrs, this.condName[c]!, this.condValue[c]!)
        : headerEquals(hdrs, this.condName[c]!, this.condValue[c]!);
      if (hit) return this.branches[this.condBranch[c]!]!;
    }
    if (this.only >= 0) return this.branches[this.only]!;
    if (this.hashKind === HASH_NONE) return this.branches[this.nextRoundRobin()]!;
    return this.branches[this.owner(this.keyHash(hdrs, clientIp, path))]!;
  }

  /** Smooth weighted round robin (nginx ngx_http_upstream_get_peer): the entry furthest ahead of its share. */
  private nextRoundRobin(): number {
    const w = this.weights;
    const cur = this.current;
    let best = -1;
    for (let k = 0; k < w.length; k++) {
      if (w[k] === 0) continue;
      cur[k] += w[k]!;
      if (best < 0 || cur[k]! > cur[best]!) best = k;
    }
    cur[best] -= this.total;
    return best;
  }

  /** The entry owning a 32-bit hash (int32 bits): floor(hash / 2^32 * total) against the cumulative weights. */
  owner(hash: number): number {
    const point = Math.floor(((hash >>> 0) * this.total) / 4294967296);
    const b = this.bounds;
    for (let k = 0; k < b.length; k++) if (point < b[k]!) return k;
    return b.length - 1; // not reached: point < total = b[last]
  }

  /**
   * The 32-bit hash of this request's key, as int32 bits (a small integer
   * for V8, never a heap number); a missing or empty header/cookie hashes
   * the peer address.
   */
  keyHash(hdrs: readonly string[], clientIp: string, path: string): number {
    switch (this.hashKind) {
      case HASH_PATH:
        return finish(hashRange(FNV_OFFSET, path, 0, path.length));
      case HASH_HEADER: {
        // Every line of the header, as if joined with ", " (RFC 9110 5.3), without joining them.
        const name = this.hashName;
        let h = FNV_OFFSET;
        let found = false;
        for (let i = 0; i < hdrs.length; i += 2) {
          if (hdrs[i] !== name) continue;
          const v = hdrs[i + 1]!;
          if (found) h = hashRange(h, ', ', 0, 2);
          else if (v === '') continue;
          found = true;
          h = hashRange(h, v, 0, v.length);
        }
        if (found) return finish(h);
        break;
      }
      case HASH_COOKIE:
        for (let i = 0; i < hdrs.length; i += 2) {
          if (hdrs[i] !== 'cookie') continue;
          const line = hdrs[i + 1]!;
          if (cookieRange(line, this.hashName)) return finish(hashRange(FNV_OFFSET, line, found.start, found.end));
        }
        break;
    }
    return finish(hashRange(FNV_OFFSET, clientIp, 0, clientIp.length));
  }
}

/** FNV-1a's offset basis as int32 bits (0x811c9dc5 | 0): hashes stay small integers in V8. */
const FNV_OFFSET = 0x811c9dc5 | 0;

/** FNV-1a over the UTF-16 code units s[start, end), continuing from h. */
function hashRange(h: number, s: string, start: number, end: number): number {
  for (let i = start; i < end; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h;
}

/** murmur3's fmix32: FNV-1a alone leaves the high bits (which pick the entry) poorly mixed for short keys. */
function finish(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/** A header's value (repeated lines joined with ", ", RFC 9110 5.3) equals `value` exactly; allocates only for repeated lines. */
export function headerEquals(hdrs: readonly string[], name: string, value: string): boolean {
  let first = -1;
  let joined: string | null = null;
  for (let i = 0; i < hdrs.length; i += 2) {
    if (hdrs[i] !== name) continue;
    if (first < 0) first = i + 1;
    else joined = (joined ?? hdrs[first]!) + ', ' + hdrs[i + 1]!;
  }
  if (first < 0) return false;
  return (joined ?? hdrs[first]!) === value;
}

/**
 * The first cookie `name` of the Cookie lines (maglev.ts cookieRange: the
 * balancers' own reading, so a cookie means the same to a `when`, a split's
 * hashOn and an upstream's) has exactly `value`.
 */
export function cookieEquals(hdrs: readonly string[], name: string, value: string): boolean {
  for (let i = 0; i < hdrs.length; i += 2) {
    if (hdrs[i] !== 'cookie') continue;
    const line = hdrs[i + 1]!;
    if (cookieRange(line, name)) return found.end - found.start === value.length && matchAt(line, found.start, value);
  }
  return false;
}
