/**
 * Consistent hashing for `balance: consistent_hash`: a Maglev lookup table
 * (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
 * Balancer", NSDI 2016, section 3.4; weighted as Envoy's
 * source/extensions/load_balancing_policies/maglev), the string hash used for
 * request keys (xxHash32), and the opaque ids of sticky-session cookies.
 * Pure functions, no state: the same targets give the same table in every
 * worker, every process and every build.
 *
 * Table: each target gets a permutation of the M slots (offset and skip from
 * two hashes of its URL); targets take turns claiming their next free
 * preferred slot until the table is full, a target of weight w taking a turn
 * on w / max(weights) of the rounds, in the order of their URLs (so the
 * order of the list in the config does not matter). A key's target is
 * table[hash mod M]. Adding or removing one of N targets moves about 1/N of the keys (measured
 * in test/unit/proxy/maglev.test.ts), and the slots of a removed target go
 * to the others in proportion to their weights.
 *
 * Size: a prime at least 100 x the number of targets (the paper's M >> N;
 * 100 x keeps each target's share within ~1% of its weight): 65537 (Envoy's
 * default) up to 655 targets, 131101 up to the schema's 1000. The size must
 * not follow the target count closely: a table of another size maps every
 * key anew, so a list of small sizes would move nearly all keys whenever an
 * added target crossed a step (measured: 91% at 10 -> 11 targets with
 * 1021/2053). Only an upstream growing past 655 targets changes size (once).
 * A table is a Uint16Array (2 bytes a slot: 128 KiB, 256 KiB past 655
 * targets) per consistent_hash upstream per worker, built once per config
 * version (a few ms).
 */

/** Table sizes, all prime (checked by the unit test). */
export const MAGLEV_SIZES: readonly number[] = Object.freeze([65537, 131101]);

/** The table size for `n` targets: the smallest of MAGLEV_SIZES >= 100 n (the largest one past 1311 targets, beyond the schema's 1000). */
export function maglevSize(n: number): number {
  for (const m of MAGLEV_SIZES) if (m >= 100 * n) return m;
  return MAGLEV_SIZES[MAGLEV_SIZES.length - 1]!;
}

/**
 * Builds the lookup table: slot -> target index (0..keys.length-1).
 * `keys`: a stable name per target (its URL: the same URL lands in the same
 * slots whatever its place in the list); `weights`: positive integers, one
 * per target; `size`: a prime (default maglevSize(keys.length)).
 * Throws on an empty list, a length mismatch, or more than 65535 targets.
 */
export function buildMaglev(keys: readonly string[], weights: readonly number[], size = maglevSize(keys.length)): Uint16Array {
  const n = keys.length;
  if (n === 0 || n !== weights.length || n > 0xffff) throw new Error(`buildMaglev: ${n} targets, ${weights.length} weights`);
  const m = size;
  // Each target's position in its permutation (offset + j * skip) mod M, a full cycle as M is prime;
  // advanced by adding skip (no multiply or modulo per step).
  const pos = new Int32Array(n);
  const skip = new Int32Array(n);
  /** Envoy's target_weight: a target claims in a round only when round * weight >= this, then it grows by maxWeight. */
  const due = new Float64Array(n);
  let maxWeight = 0;
  for (let i = 0; i < n; i++) {
    pos[i] = xxh32(keys[i]!, 0) % m;
    skip[i] = (xxh32(keys[i]!, 1) % (m - 1)) + 1;
    if (!(weights[i]! > 0)) throw new Error(`buildMaglev: weight ${weights[i]} of ${keys[i]}`);
    if (weights[i]! > maxWeight) maxWeight = weights[i]!;
  }
  const table = new Uint16Array(m);
  const taken = new Uint8Array(m);
  // Turns are taken in the order of the keys, not of the list: reordering the targets in the config moves no key.
  const order = keys.map((_, i) => i).sort((a, b) => (keys[a]! < keys[b]! ? -1 : keys[a]! > keys[b]! ? 1 : a - b));
  let filled = 0;
  for (let round = 1; filled < m; round++) {
    for (let k = 0; k < n && filled < m; k++) {
      const i = order[k]!;
      if (round * weights[i]! < due[i]!) continue;
      due[i]! += maxWeight;
      let c = pos[i]!;
      const sk = skip[i]!;
      while (taken[c] === 1) {
        c += sk;
        if (c >= m) c -= m;
      }
      taken[c] = 1;
      table[c] = i;
      c += sk;
      pos[i] = c >= m ? c - m : c;
      filled++;
    }
  }
  return table;
}

const P1 = 0x9e3779b1;
const P2 = 0x85ebca77;
const P3 = 0xc2b2ae3d;
const P4 = 0x27d4eb2f;
const P5 = 0x165667b1;

/**
 * xxHash32 (Yann Collet's reference algorithm, XXH32) of the UTF-16LE bytes
 * of `s` from code unit `start` to `end` (exclusive): `xxh32(s)` equals
 * XXH32(Buffer.from(s, 'utf16le'), seed). Hashing code units directly avoids
 * encoding the key to bytes (no allocation). Why not FNV-1a (ip_hash's): it
 * takes one multiply per character in a serial chain, and its low bits are
 * weak for `% size` without a finalizer; xxHash32 reads 4 bytes a step on
 * four independent lanes and ends with an avalanche. Hand-written because
 * the npm implementations take a Buffer (an encode per request) or are WASM
 * (a call boundary per key). Returns an unsigned 32-bit integer.
 */
export function xxh32(s: string, seed = 0, start = 0, end = s.length): number {
  return xxh32i(s, seed, start, end) >>> 0;
}

/**
 * xxh32 as a signed 32-bit integer (the same bits): what the hot path uses.
 * An unsigned result past 2^31 is no small integer to V8, so returning one
 * from a call that is not inlined boxes it (a heap number per request:
 * measured as 58% more scavenges in bench/balancing-micro.mjs).
 */
export function xxh32i(s: string, seed: number, start: number, end: number): number {
  // In 32-bit words: two code units each (little-endian).
  const len = (end - start) * 2;
  let i = start;
  let h: number;
  if (len >= 16) {
    let v1 = (seed + P1 + P2) | 0;
    let v2 = (seed + P2) | 0;
    let v3 = seed | 0;
    let v4 = (seed - P1) | 0;
    const limit = end - 8;
    while (i <= limit) {
      v1 = round(v1, s.charCodeAt(i) | (s.charCodeAt(i + 1) << 16));
      v2 = round(v2, s.charCodeAt(i + 2) | (s.charCodeAt(i + 3) << 16));
      v3 = round(v3, s.charCodeAt(i + 4) | (s.charCodeAt(i + 5) << 16));
      v4 = round(v4, s.charCodeAt(i + 6) | (s.charCodeAt(i + 7) << 16));
      i += 8;
    }
    h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
  } else {
    h = seed + P5;
  }
  h = (h + len) | 0;
  while (i + 2 <= end) {
    h = (h + Math.imul(s.charCodeAt(i) | (s.charCodeAt(i + 1) << 16), P3)) | 0;
    h = Math.imul(rotl(h, 17), P4);
    i += 2;
  }
  if (i < end) {
    // One code unit left: its two bytes, one at a time.
    const c = s.charCodeAt(i);
    h = (h + Math.imul(c & 0xff, P5)) | 0;
    h = Math.imul(rotl(h, 11), P1);
    h = (h + Math.imul(c >>> 8, P5)) | 0;
    h = Math.imul(rotl(h, 11), P1);
  }
  h ^= h >>> 15;
  h = Math.imul(h, P2);
  h ^= h >>> 13;
  h = Math.imul(h, P3);
  h ^= h >>> 16;
  return h;
}

function round(acc: number, word: number): number {
  acc = (acc + Math.imul(word, P2)) | 0;
  return Math.imul(rotl(acc, 13), P1);
}

function rotl(x: number, r: number): number {
  return (x << r) | (x >>> (32 - r));
}

/**
 * The opaque id a sticky cookie carries for a target: 16 lowercase hex
 * digits, two xxHash32 of `upstream + ' ' + url` (seeds 2 and 3). The same
 * in every worker, process and gateway instance, so a cookie set by one is
 * honoured by all; it does not show the target's address (it is not a
 * secret either: anyone knowing the upstream name and URL can compute it,
 * which only lets a client choose among the targets it could reach anyway).
 */
export function stickyId(upstream: string, url: string): string {
  const k = upstream + ' ' + url;
  // A flat string: a concatenation of 16 characters is a rope (ConsString) in V8, slower to
  // read by charCodeAt (matching a cookie against it: 94 ns vs 62 ns flat, measured).
  return Buffer.from(hex8(xxh32(k, 2)) + hex8(xxh32(k, 3)), 'latin1').toString('latin1');
}

function hex8(x: number): string {
  return x.toString(16).padStart(8, '0');
}

/** Where cookieRange found the value: code units [start, end) of the header. Reused: read right after the call. */
export const found = { start: 0, end: 0 };

/**
 * Finds the value of cookie `name` in a Cookie header (RFC 6265 5.4:
 * `a=1; b=2`): scans for `name=` at the start of a pair, with no split and
 * no allocation. true: the value is at `found.start`..`found.end` (code
 * units; surrounding DQUOTEs and trailing spaces excluded); false: the
 * cookie is absent or empty. The first pair with that name wins (RFC 6265
 * 5.4: the cookie with the more specific path comes first).
 */
export function cookieRange(header: string, name: string): boolean {
  const len = header.length;
  const nl = name.length;
  const first = name.charCodeAt(0);
  let i = 0;
  while (i < len) {
    let c = header.charCodeAt(i);
    while (c === 32 || c === 9) c = header.charCodeAt(++i);
    if (c === first && header.charCodeAt(i + nl) === 61 && matchAt(header, i, name)) {
      let start = i + nl + 1;
      let end = header.indexOf(';', start);
      if (end === -1) end = len;
      while (end > start && (header.charCodeAt(end - 1) === 32 || header.charCodeAt(end - 1) === 9)) end--;
      if (end - start >= 2 && header.charCodeAt(start) === 34 && header.charCodeAt(end - 1) === 34) {
        start++;
        end--;
      }
      if (end <= start) return false;
      found.start = start;
      found.end = end;
      return true;
    }
    const semi = header.indexOf(';', i);
    if (semi === -1) return false;
    i = semi + 1;
  }
  return false;
}

/**
 * Whether `s` holds `t` at code unit `at`. By hand rather than
 * `s.startsWith(t, at)`: the builtin call with a position measured 84 ns
 * against 62 ns for this loop on a 16-character id (loaded VM, CPU time).
 */
export function matchAt(s: string, at: number, t: string): boolean {
  const n = t.length;
  if (at + n > s.length) return false;
  for (let j = 0; j < n; j++) if (s.charCodeAt(at + j) !== t.charCodeAt(j)) return false;
  return true;
}
