/**
 * `match.headers` / `match.query` predicates, compiled once per route.
 *
 * - headers: the request's flat [name, value, ...] list (lowercase names);
 *   a predicate holds when some header line with that name has exactly that
 *   value.
 * - query: the raw query string is only looked at when a route with query
 *   predicates is a candidate; each predicate scans the `&`-separated pairs
 *   for its name. Names and values are decoded like decodeURIComponent (`+`
 *   is NOT a space); a badly encoded name or value never matches and never
 *   throws. A pair without `=` has the value ''. Any occurrence may match.
 */
import type { RouteMatchPredicates } from '../../common/config/types.js';

export type Predicate = (headers: readonly string[], query: string) => boolean;

function hexByte(s: string, i: number): number {
  if (i + 1 >= s.length) return -1;
  const h = hexDigit(s.charCodeAt(i));
  const l = hexDigit(s.charCodeAt(i + 1));
  return h < 0 || l < 0 ? -1 : (h << 4) | l;
}

function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 65 && c <= 70) return c - 55;
  if (c >= 97 && c <= 102) return c - 87;
  return -1;
}

/**
 * True exactly when decodeURIComponent(s) does not throw: every `%` starts
 * an escape, and escapes >= 0x80 form valid UTF-8 (no overlongs, no
 * surrogates, <= U+10FFFF). Checking first lets the hot path avoid
 * try/catch.
 */
export function isDecodable(s: string): boolean {
  const n = s.length;
  for (let i = 0; i < n; i++) {
    if (s.charCodeAt(i) !== 37) continue;
    const b = hexByte(s, i + 1);
    if (b < 0) return false;
    i += 2;
    if (b < 0x80) continue;
    let more: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) more = 1;
    else if (b >= 0xe0 && b <= 0xef) {
      more = 2;
      if (b === 0xe0) lo = 0xa0;
      else if (b === 0xed) hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
      more = 3;
      if (b === 0xf0) lo = 0x90;
      else if (b === 0xf4) hi = 0x8f;
    } else return false;
    for (let k = 0; k < more; k++) {
      if (s.charCodeAt(i + 1) !== 37) return false;
      const cb = hexByte(s, i + 2);
      if (cb < lo || cb > hi) return false;
      lo = 0x80;
      hi = 0xbf;
      i += 3;
    }
  }
  return true;
}

/** decodeURIComponent that returns null instead of throwing. */
export function safeDecode(s: string): string | null {
  if (s.indexOf('%') === -1) return s;
  return isDecodable(s) ? decodeURIComponent(s) : null;
}

/** Some header line `name` has exactly `value`. */
export function headerHas(headers: readonly string[], name: string, value: string): boolean {
  for (let i = 0; i + 1 < headers.length; i += 2) {
    if (headers[i] === name && headers[i + 1] === value) return true;
  }
  return false;
}

/** Some query pair has the decoded name `name` and decoded value `value`. */
export function queryHas(query: string, name: string, value: string): boolean {
  const n = query.length;
  let i = 0;
  while (i < n) {
    let amp = query.indexOf('&', i);
    if (amp === -1) amp = n;
    if (amp > i) {
      let eq = query.indexOf('=', i);
      if (eq === -1 || eq > amp) eq = amp;
      if (safeDecode(query.slice(i, eq)) === name) {
        const v = eq === amp ? '' : safeDecode(query.slice(eq + 1, amp));
        if (v === value) return true;
      }
    }
    i = amp + 1;
  }
  return false;
}

/** One closure per route (built at compile time, never per request); null when the route has no predicates. */
export function compilePredicate(match: RouteMatchPredicates): Predicate | null {
  if (match.headers.length === 0 && match.query.length === 0) return null;
  const hs = match.headers.map(([n, v]) => [n.toLowerCase(), v] as const);
  const qs = match.query.map(([n, v]) => [n, v] as const);
  if (hs.length === 0 && qs.length === 0) return null;
  if (qs.length === 0 && hs.length === 1) {
    const [n, v] = hs[0]!;
    return (headers) => headerHas(headers, n, v);
  }
  return (headers, query) => {
    for (let i = 0; i < hs.length; i++) if (!headerHas(headers, hs[i]![0], hs[i]![1])) return false;
    for (let i = 0; i < qs.length; i++) if (!queryHas(query, qs[i]![0], qs[i]![1])) return false;
    return true;
  };
}

/** Order-insensitive identity of a predicate set, for duplicate detection. */
export function predicateKey(match: RouteMatchPredicates): string {
  if (match.headers.length === 0 && match.query.length === 0) return '';
  const h = match.headers.map(([n, v]) => JSON.stringify([n.toLowerCase(), v])).sort();
  const q = match.query.map(([n, v]) => JSON.stringify([n, v])).sort();
  return `h${h.join(',')}q${q.join(',')}`;
}
