/**
 * Request path and Host normalisation, done once per request before the
 * router runs. The proxy routes on AND forwards exactly the normalised path,
 * so whatever the router decided is what the upstream sees: there is no
 * second interpretation of the path anywhere (the classic source of
 * `/public/..%2fadmin`-style bypasses).
 *
 * normalizePath rules (RFC 3986 sections 2.1-2.4, 6.2.2 and 5.2.4):
 *  1. The path must start with `/` (origin-form); otherwise -> null (400).
 *  2. Percent-escapes of unreserved characters (ALPHA DIGIT `-` `.` `_` `~`)
 *     are decoded; every other escape stays encoded, its hex uppercased
 *     (`%2f` -> `%2F`). An escaped slash therefore never becomes a separator.
 *  3. An invalid escape (`%G1`, `%4`, trailing `%`) -> null. `%00` -> null.
 *  4. Raw control characters (< 0x20, 0x7F), raw non-ASCII (>= 0x80: legit
 *     clients percent-encode; uWS hands bytes over as latin1) and backslash
 *     -> null.
 *  5. Raw printable ASCII that is not a pchar (space `"` `#` `<` `>` `?` `[`
 *     `]` `^` `` ` `` `{` `|` `}`) is percent-encoded, so a raw `|` and
 *     `%7C` give the same path. pchars (RFC 3986: unreserved, sub-delims
 *     `!$&'()*+,;=`, `:` and `@`) stay as they are.
 *  6. Runs of `/` are merged into one.
 *  7. Dot segments `.` and `..` are resolved (RFC 3986 5.2.4) AFTER step 2,
 *     so `%2e%2e` is a dot segment while `..%2F` is an ordinary segment;
 *     `..` above the root stays at the root.
 *  8. A trailing slash is kept (`/a/` stays `/a/`; `/a/b/..` -> `/a/`).
 * The result is canonical: normalizePath(normalizePath(x)) === normalizePath(x).
 *
 * Fast path: a path made only of raw pchars, with no `%`, no `//` and no
 * `/.`, is returned as is (the same string, no allocation).
 */

const C_REJECT = 0;
const C_OK = 1;
const C_ENCODE = 2;
const C_PERCENT = 3;

/** Class of each ASCII character when it appears raw in a request path. */
const RAW_CLASS = new Uint8Array(128);
/** 1 for unreserved characters (decoded when percent-encoded). */
const UNRESERVED = new Uint8Array(128);
/** Hex digit value + 1, 0 for non-hex characters. */
const HEX_VALUE = new Uint8Array(128);
const HEX_UPPER = '0123456789ABCDEF';

(function initTables(): void {
  const unreserved = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~';
  for (let i = 0; i < unreserved.length; i++) {
    UNRESERVED[unreserved.charCodeAt(i)] = 1;
    RAW_CLASS[unreserved.charCodeAt(i)] = C_OK;
  }
  const alsoRaw = "!$&'()*+,;=:@/";
  for (let i = 0; i < alsoRaw.length; i++) RAW_CLASS[alsoRaw.charCodeAt(i)] = C_OK;
  const encode = ' "#<>?[]^`{|}';
  for (let i = 0; i < encode.length; i++) RAW_CLASS[encode.charCodeAt(i)] = C_ENCODE;
  RAW_CLASS[37] = C_PERCENT; // '%'
  // Everything else (controls, 0x7F, backslash) stays C_REJECT.
  for (let i = 0; i < 10; i++) HEX_VALUE[48 + i] = i + 1;
  for (let i = 0; i < 6; i++) {
    HEX_VALUE[65 + i] = 11 + i;
    HEX_VALUE[97 + i] = 11 + i;
  }
})();

function hex(c: number): number {
  return c < 128 ? HEX_VALUE[c]! - 1 : -1;
}

function encodeByte(b: number): string {
  return '%' + HEX_UPPER[b >> 4]! + HEX_UPPER[b & 15]!;
}

/**
 * Normalise a request path (no query string). Returns null when the path
 * must be refused with 400. See the module comment for the rules.
 */
export function normalizePath(raw: string): string | null {
  const len = raw.length;
  if (len === 0 || raw.charCodeAt(0) !== 47) return null;
  // Fast path: one tight scan; any character that needs a decision (escape,
  // non-pchar, `//`, `/.`) sends the whole path to the slow path.
  let prev = 47;
  for (let i = 1; i < len; i++) {
    const c = raw.charCodeAt(i);
    if (c >= 128 || RAW_CLASS[c] !== C_OK || (prev === 47 && (c === 47 || c === 46))) {
      return normalizeSlow(raw);
    }
    prev = c;
  }
  return raw;
}

function normalizeSlow(raw: string): string | null {
  const len = raw.length;
  const stack: string[] = [];
  let trailingSlash = false;
  let seg = '';
  let runStart = 1;
  for (let i = 1; i <= len; i++) {
    const c = i === len ? 47 : raw.charCodeAt(i);
    if (c === 47) {
      // End of a segment (or of the path).
      if (runStart < i) seg += raw.slice(runStart, i);
      const last = i === len;
      if (seg === '' || seg === '.') {
        // Empty (from `//` or a trailing slash) or `.`: dropped.
        if (last) trailingSlash = true;
      } else if (seg === '..') {
        stack.pop();
        if (last) trailingSlash = true;
      } else {
        stack.push(seg);
      }
      seg = '';
      runStart = i + 1;
      continue;
    }
    if (c >= 128) return null;
    const cls = RAW_CLASS[c];
    if (cls === C_OK) continue;
    if (cls === C_PERCENT) {
      if (i + 2 >= len) return null;
      const hi = hex(raw.charCodeAt(i + 1));
      const lo = hex(raw.charCodeAt(i + 2));
      if (hi < 0 || lo < 0) return null;
      const b = (hi << 4) | lo;
      if (b === 0) return null;
      if (runStart < i) seg += raw.slice(runStart, i);
      seg += b < 128 && UNRESERVED[b] === 1 ? String.fromCharCode(b) : encodeByte(b);
      i += 2;
      runStart = i + 1;
      continue;
    }
    if (cls === C_ENCODE) {
      if (runStart < i) seg += raw.slice(runStart, i);
      seg += encodeByte(c);
      runStart = i + 1;
      continue;
    }
    return null; // control character, DEL or backslash
  }
  if (stack.length === 0) return '/';
  const joined = '/' + stack.join('/');
  return trailingSlash ? joined + '/' : joined;
}

/**
 * True when `seg` (one path segment, no `/`) is already in the form
 * normalizePath produces and is not a dot segment: only raw pchars, no `%`.
 */
export function isPlainSegment(seg: string): boolean {
  return isPlainRange(seg, 0, seg.length) && seg !== '.' && seg !== '..';
}

/** isPlainSegment for s[start, end), without the dot-segment check and without slicing. */
export function isPlainRange(s: string, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c >= 128 || RAW_CLASS[c] !== C_OK || c === 47) return false;
  }
  return true;
}

/**
 * Normalise a Host header for host matching: lowercase, `:port` removed
 * (`[v6]:port` -> `[v6]`), one trailing dot removed. `''` when absent.
 * A value with several colons and no brackets is not a valid Host; it is
 * only lowercased, so it can match nothing but `*` routes.
 */
export function normalizeHost(hostHeader: string | undefined | null): string {
  if (hostHeader === undefined || hostHeader === null || hostHeader.length === 0) return '';
  const h = hostHeader;
  let end = h.length;
  let upper = false;
  if (h.charCodeAt(0) === 91) {
    // `[v6]` or `[v6]:port`
    const close = h.indexOf(']');
    if (close !== -1) end = close + 1;
  } else {
    const colon = h.indexOf(':');
    if (colon !== -1 && h.indexOf(':', colon + 1) === -1) end = colon;
    if (end > 0 && h.charCodeAt(end - 1) === 46) end--;
  }
  for (let i = 0; i < end; i++) {
    const c = h.charCodeAt(i);
    if (c >= 65 && c <= 90) {
      upper = true;
      break;
    }
  }
  const s = end === h.length ? h : h.slice(0, end);
  return upper ? s.toLowerCase() : s;
}

/** reg-name characters (RFC 3986 3.2.2: unreserved / sub-delims; `%` is checked apart). */
const REG_NAME = new Uint8Array(128);
(function initRegName(): void {
  const ok = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=";
  for (let i = 0; i < ok.length; i++) REG_NAME[ok.charCodeAt(i)] = 1;
})();

/** Longest Host value accepted: a 253-character DNS name, or a bracketed IPv6 literal, plus `:65535`. */
export const MAX_HOST_LENGTH = 261;

/**
 * A Host header value as RFC 9112 3.2 requires it: `uri-host [":" port]`
 * (RFC 3986 3.2.2-3.2.3): a non-empty reg-name (unreserved, sub-delims,
 * `%HH`) or a bracketed IP literal (hex digits, `:`, `.`), then an optional
 * port of up to 5 digits no greater than 65535. An empty value is invalid
 * for an `http` URI (RFC 9110 4.2.1). Used to answer 400 bad_host.
 */
export function isValidHost(h: string): boolean {
  const n = h.length;
  if (n === 0 || n > MAX_HOST_LENGTH) return false;
  let i = 0;
  if (h.charCodeAt(0) === 91) {
    const close = h.indexOf(']');
    if (close < 3) return false;
    for (let k = 1; k < close; k++) {
      const c = h.charCodeAt(k);
      if (!(c === 58 || c === 46 || (c >= 48 && c <= 57) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102))) return false;
    }
    i = close + 1;
  } else {
    for (; i < n; i++) {
      const c = h.charCodeAt(i);
      if (c === 58) break;
      if (c === 37) {
        if (i + 2 >= n || hex(h.charCodeAt(i + 1)) < 0 || hex(h.charCodeAt(i + 2)) < 0) return false;
        i += 2;
        continue;
      }
      if (c >= 128 || REG_NAME[c] === 0) return false;
    }
    if (i === 0) return false;
  }
  if (i === n) return true;
  if (h.charCodeAt(i) !== 58 || n - i - 1 > 5) return false;
  let port = 0;
  for (let k = i + 1; k < n; k++) {
    const d = h.charCodeAt(k) - 48;
    if (d < 0 || d > 9) return false;
    port = port * 10 + d;
  }
  return port <= 65535;
}
