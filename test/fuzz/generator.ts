/**
 * Seeded generator of raw HTTP/1.1 request byte sequences for the gateway
 * fuzzer (test/fuzz/harness.ts runs them, test/fuzz/oracle.ts judges them).
 *
 * Every case is a pure function of (run seed, case index): `generateCase`
 * derives a per-case seed with a hash, so a failing case is replayed alone
 * with `FUZZ_SEED=<run seed> FUZZ_CASE=<index>`, whatever the concurrency or
 * timing of the run that found it.
 *
 * Shapes (RFC 9112 is the grammar the valid ones follow):
 *  - valid requests: GET/HEAD/POST/PUT/DELETE/OPTIONS/PATCH, origin-form
 *    targets with legal odd characters, percent-escapes, dot segments, `//`,
 *    queries, obs-text (UTF-8 and latin1 bytes) in header values, repeated
 *    end-to-end headers, hop-by-hop headers, bodies framed by Content-Length
 *    or chunked (extensions-free, optional trailers), `Expect: 100-continue`;
 *  - edge cases: one deliberate anomaly each (extension methods, Host twice
 *    or missing, Content-Length twice or invalid, Transfer-Encoding variants,
 *    CL+TE, malformed header lines, control characters incl. DEL, header
 *    count and size near/over the limits, long targets, other versions,
 *    absolute/asterisk/authority forms, bad chunk sizes, chunk extensions,
 *    bodies shorter/longer than declared...);
 *  - mutations of the above (byte flips, truncation, insertion of
 *    CR/LF/NUL/SP, deletion, duplicated or swapped lines, CRLF -> LF);
 *  - pipelines of 2-3 requests in one write;
 *  - modifiers: abrupt close mid-request (FIN or RST), slow writes split at
 *    random points.
 *
 * Bytes are built as latin1 strings (one char = one byte): UTF-8 text is
 * written as its bytes (`é` = '\xc3\xa9').
 *
 * Correlation token: every request carries `FzT` + 8 hex digits (in its
 * query, and sometimes as X-Request-Id) which the harness replaces with a
 * unique value per attempt, so the recording upstream can tell which case a
 * request it received came from. It has the same length, so offsets hold.
 */

/** mulberry32: small, fast, good enough for fuzzing, and trivially replayable. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  u32(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  float(): number {
    return this.u32() / 4294967296;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.float() * n);
  }
  /** Integer in [a, b]. */
  range(a: number, b: number): number {
    return a + this.int(b - a + 1);
  }
  chance(p: number): boolean {
    return this.float() < p;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)]!;
  }
  weighted<T>(items: readonly (readonly [number, T])[]): T {
    let total = 0;
    for (const [w] of items) total += w;
    let x = this.float() * total;
    for (const [w, v] of items) {
      x -= w;
      if (x < 0) return v;
    }
    return items[items.length - 1]![1];
  }
}

/** The seed of one case: a hash of the run seed and the case index (splitmix32-style). */
export function caseSeed(runSeed: number, index: number): number {
  let h = (runSeed ^ Math.imul(index + 1, 0x9e3779b9)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** Placeholder correlation token; the harness swaps the 8 hex digits per attempt. */
export const TAG_PLACEHOLDER = 'FzT00000000';
export const TAG_RE = /FzT[0-9a-f]{8}/g;

/** Limits the gateway under test is configured with (see harness.ts). */
export interface GenLimits {
  maxUrlBytes: number;
  maxHeaderBytes: number;
  maxHeaderCount: number;
  maxBodyBytes: number;
  /** maxBodyBytes of the /small/ route. */
  smallBodyBytes: number;
  /** uWS stalls above this many request header lines (ENVIRONMENT.md: 48). */
  uwsMaxHeaders: number;
}

export const DEFAULT_LIMITS: GenLimits = {
  maxUrlBytes: 2048,
  maxHeaderBytes: 4096,
  maxHeaderCount: 40,
  maxBodyBytes: 65536,
  smallBodyBytes: 32,
  uwsMaxHeaders: 48,
};

/**
 * Path prefixes of the gateway routes (harness.ts configures them; the
 * recording upstream answers by the first segment: chunked, 204, 304...).
 */
export const PREFIXES: readonly (readonly [number, string])[] = [
  [30, '/api/'],
  [6, '/chunked/'],
  [4, '/204/'],
  [4, '/304/'],
  [4, '/head/'],
  [4, '/hop/'],
  [3, '/close/'],
  [5, '/small/'],
  [4, '/get-only/'],
  [4, '/v1/users/'],
  [4, '/strip/'],
  [3, '/host/'],
  [3, '/pred/'],
  [4, '/nowhere/'],
  [4, '/limited/'],
];

export interface FuzzCase {
  index: number;
  seed: number;
  /** How it was made: `valid`, `edge:<anomaly>`, `mutate:<ops>:<base>`, `pipeline<n>`, plus `+slow`/`+abort`. */
  kind: string;
  /** Everything the client writes (before the harness swaps the correlation tokens). */
  bytes: Buffer;
  /** Offsets at which the write is split (ascending, inside the input). */
  splits: number[];
  /** Pause between split writes. */
  writeDelayMs: number;
  /** Close the socket after writing `at` bytes (RST when `reset`), expecting nothing. */
  abort: { at: number; reset: boolean } | null;
}

// ------------------------------------------------------------------ pieces

const UNRESERVED = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~';
const SUB_DELIMS = "!$&'()*+,;=";
const LOWER = 'abcdefghijklmnopqrstuvwxyz';
const VCHAR_SAFE = UNRESERVED + SUB_DELIMS + ':@/?"<>[]{}|\\^`#%';

function str(r: Rng, alphabet: string, min: number, max: number): string {
  const n = r.range(min, max);
  let s = '';
  for (let i = 0; i < n; i++) s += alphabet[r.int(alphabet.length)];
  return s;
}

/** Latin1 string of the UTF-8 bytes of `s`. */
export function utf8(s: string): string {
  return Buffer.from(s, 'utf8').toString('latin1');
}

const VALID_ESCAPES = ['%41', '%7E', '%7e', '%2F', '%2f', '%2E', '%2e', '%20', '%C3%A9', '%25', '%3F', '%23', '%00', '%FF'];
const INVALID_ESCAPES = ['%', '%4', '%zz', '%G0', '%%', '%2', '%u0041'];

/** One legal path segment (RFC 3986 pchar), possibly odd. */
function segment(r: Rng): string {
  switch (r.int(9)) {
    case 0: return '.';
    case 1: return '..';
    case 2: return '';
    case 3: return r.pick(['%2e', '%2E%2e', '.%2e']);
    case 4: return str(r, UNRESERVED + SUB_DELIMS + ':@', 1, 12);
    case 5: return str(r, LOWER, 1, 6) + r.pick(VALID_ESCAPES) + str(r, LOWER, 0, 3);
    case 6: return r.chance(0.1) ? str(r, UNRESERVED, 100, 400) : str(r, UNRESERVED, 1, 20);
    default: return str(r, LOWER + '0123456789', 1, 10);
  }
}

function path(r: Rng): string {
  const prefix = r.weighted(PREFIXES);
  if (r.chance(0.02)) return '/health-route';
  if (prefix === '/v1/users/') return prefix + r.pick(['42', '0', 'abc', '%41', '12345678901234567890']);
  const n = r.range(0, 4);
  const segs: string[] = [];
  for (let i = 0; i < n; i++) segs.push(segment(r));
  return prefix + segs.join('/');
}

/** A query of legal characters (RFC 3986 query), always carrying the correlation token. */
function query(r: Rng): string {
  const parts: string[] = [];
  const n = r.range(0, 4);
  for (let i = 0; i < n; i++) {
    const k = str(r, LOWER, 1, 5);
    switch (r.int(6)) {
      case 0: parts.push(k); break;
      case 1: parts.push(k + '='); break;
      case 2: parts.push(k + '=' + r.pick(VALID_ESCAPES) + str(r, LOWER, 0, 3)); break;
      case 3: parts.push(k + '=' + str(r, UNRESERVED + "!$'()*+,;:@/?", 1, 16)); break;
      case 4: parts.push(''); break;
      default: parts.push(k + '=' + str(r, UNRESERVED, 1, 8));
    }
  }
  parts.splice(r.int(parts.length + 1), 0, 't=' + TAG_PLACEHOLDER);
  return parts.join('&');
}

function caseName(r: Rng, name: string): string {
  switch (r.int(4)) {
    case 0: return name.toLowerCase();
    case 1: return name.toUpperCase();
    default: return name;
  }
}

/** Separator between a field name and its value: `:` then optional whitespace (RFC 9112 5.1 OWS). */
function colon(r: Rng): string {
  return r.weighted([[8, ': '], [2, ':'], [1, ':\t'], [1, ':  ']]);
}

/** Trailing optional whitespace. */
function ows(r: Rng): string {
  return r.weighted([[10, ''], [1, ' '], [1, '\t'], [1, ' \t']]);
}

/**
 * A legal field value (RFC 9110 5.5): visible ASCII, inner SP/HTAB, and
 * obs-text (bytes >= 0x80: UTF-8 or latin1), anywhere in the value.
 */
function fieldValue(r: Rng): string {
  switch (r.int(8)) {
    case 0: return '';
    case 1: return str(r, UNRESERVED, 1, 10) + ' ' + str(r, UNRESERVED, 1, 10);
    case 2: return str(r, UNRESERVED, 1, 5) + '\t' + str(r, VCHAR_SAFE, 1, 8);
    case 3: return r.pick([utf8('é'), '\xe9', utf8('日本'), '\xff']) + str(r, LOWER, 0, 4);
    case 4: return str(r, LOWER, 0, 4) + r.pick([utf8('é'), '\xe9', utf8('ü'), '\x80']);
    case 5: return str(r, LOWER, 1, 4) + r.pick([utf8('é'), '\xe9', '\xa0']) + str(r, LOWER, 1, 4);
    case 6: return str(r, VCHAR_SAFE, 1, 40);
    default: return str(r, UNRESERVED, 1, 24);
  }
}

const HOSTS = ['fuzz.test', 'Fuzz.Test', 'api.fuzz.test', 'localhost', '127.0.0.1', '127.0.0.1:8080', '[::1]', '[::1]:80', 'fuzz.test.', 'xn--nxasmq6b.test', 'a-b.c_d.test'];

// ------------------------------------------------------------------ messages

/** A request as lines, before serialization; edges and mutations edit it. */
export interface Msg {
  prefix: string;
  method: string;
  target: string;
  version: string;
  /** Overrides `method SP target SP version` when set. */
  requestLine: string | null;
  /** Header lines without their CRLF. */
  lines: string[];
  /** Body bytes as sent (already chunk-framed when chunked). */
  body: string;
  /** Line terminator used after the request line and each header line. */
  eol: string;
}

export function serialize(m: Msg): string {
  const rl = m.requestLine ?? `${m.method} ${m.target} ${m.version}`;
  let s = m.prefix + rl + m.eol;
  for (const l of m.lines) s += l + m.eol;
  return s + m.eol + m.body;
}

function chunkEncode(r: Rng, data: string, trailers: string[] = []): string {
  let out = '';
  let i = 0;
  while (i < data.length) {
    const n = Math.min(data.length - i, r.chance(0.3) ? r.range(1, 8) : r.range(1, 4096));
    const hex = n.toString(16);
    out += (r.chance(0.2) ? hex.toUpperCase() : r.chance(0.1) ? '00' + hex : hex) + '\r\n' + data.slice(i, i + n) + '\r\n';
    i += n;
  }
  out += '0\r\n';
  for (const t of trailers) out += t + '\r\n';
  return out + '\r\n';
}

function bodyBytes(r: Rng, n: number): string {
  if (r.chance(0.5)) return 'b'.repeat(n);
  let s = '';
  for (let i = 0; i < n; i++) s += String.fromCharCode(r.int(256));
  return s;
}

function bodySize(r: Rng): number {
  return r.weighted([[2, 0], [10, r.range(1, 64)], [6, r.range(65, 2000)], [1, r.range(2001, 20000)]]);
}

const METHODS: readonly (readonly [number, string])[] = [
  [35, 'GET'], [10, 'HEAD'], [18, 'POST'], [8, 'PUT'], [8, 'DELETE'], [6, 'OPTIONS'], [8, 'PATCH'],
];

let ridCounter = 0;

/** A valid RFC 9112 request of a random shape. */
export function validMsg(r: Rng): Msg {
  const method = r.weighted(METHODS);
  const p = path(r);
  const target = p + '?' + query(r);
  const lines: string[] = [];
  const host = r.pick(HOSTS);
  const hostLine = caseName(r, 'Host') + colon(r) + (p.startsWith('/host/') ? r.pick(['api.fuzz.test', 'API.fuzz.test:80']) : host) + ows(r);
  const extra = r.weighted([[3, 0], [6, r.range(1, 4)], [3, r.range(5, 10)], [1, r.range(11, 20)]]);
  for (let i = 0; i < extra; i++) lines.push(...headerFromPool(r, i));
  lines.splice(r.chance(0.8) ? 0 : r.int(lines.length + 1), 0, hostLine);
  if (p.startsWith('/pred/') && r.chance(0.7)) lines.push('X-Fz-Ver: 2');
  // Rate-limit keys from hostile values: odd bytes, empty, huge, repeated; a forged X-Forwarded-For chain.
  if (p.startsWith('/limited/')) {
    if (r.chance(0.7)) lines.push('X-Fz-Key: ' + r.pick(['t1', '', ' ', 'a'.repeat(300), '%41', '127.0.0.1', 'caf\u00e9', 'k;k,k']));
    if (r.chance(0.3)) lines.push('X-Fz-Key: second');
    if (r.chance(0.4)) lines.push('X-Forwarded-For: ' + r.pick(['203.0.113.9', '1.1.1.1, 127.0.0.1', 'garbage, ::1', '[::1]:80', ', ,', '999.1.1.1', 'fe80::1%eth0']));
  }
  const m: Msg = { prefix: '', method, target, version: 'HTTP/1.1', requestLine: null, lines, body: '', eol: '\r\n' };
  const wantsBody = method === 'POST' || method === 'PUT' || method === 'PATCH' ? r.chance(0.85) : r.chance(0.05);
  if (wantsBody) {
    const data = bodyBytes(r, p.startsWith('/small/') && r.chance(0.5) ? r.range(0, 40) : bodySize(r));
    if (r.chance(0.6)) {
      lines.push(caseName(r, 'Content-Length') + colon(r) + data.length + ows(r));
      m.body = data;
    } else {
      lines.push(caseName(r, 'Transfer-Encoding') + colon(r) + r.pick(['chunked', 'Chunked', 'CHUNKED']) + ows(r));
      const trailers = r.chance(0.15) ? ['X-Fz-Trailer: ' + str(r, LOWER, 1, 8)] : [];
      m.body = chunkEncode(r, data, trailers);
    }
    if (r.chance(0.12)) lines.push(caseName(r, 'Expect') + colon(r) + r.pick(['100-continue', '100-Continue']));
  }
  return m;
}

/** One to three header lines from a pool of legal, sometimes hop-by-hop, headers. */
function headerFromPool(r: Rng, i: number): string[] {
  const c = colon(r);
  switch (r.int(18)) {
    case 0: return [caseName(r, 'User-Agent') + c + 'fuzz/1.0 (' + str(r, LOWER, 1, 8) + ')'];
    case 1: return ['Accept' + c + r.pick(['*/*', 'text/html, application/json;q=0.9', ''])];
    case 2: return ['Accept-Encoding' + c + 'gzip, deflate, br'];
    case 3: return ['Cookie' + c + 'a=1; b=' + str(r, UNRESERVED, 1, 10)];
    case 4: return ['Connection' + c + r.pick(['keep-alive', 'Keep-Alive', 'close', 'keep-alive, close', 'keep-alive, X-Fz-Hop', 'X-Fz-Hop, keep-alive', 'X-Foo']), 'X-Fz-Hop' + c + '1'];
    case 5: return ['Connection' + c + 'keep-alive', 'Connection' + c + r.pick(['X-Fz-Hop', 'TE', 'Upgrade']), 'X-Fz-Hop' + c + 'hop'];
    case 6: return [r.pick(['TE: trailers', 'Keep-Alive: timeout=5, max=100', 'Trailer: X-Fz-Trailer', 'Upgrade: h2c', 'Proxy-Connection: keep-alive', 'Proxy-Authorization: Basic eDp5', 'Proxy: http://evil.test'])];
    case 7: return [r.pick(['X-Forwarded-For: 10.0.0.1', 'X-Forwarded-For: 10.0.0.1, 10.0.0.2', 'Forwarded: for=192.0.2.60;proto=http', 'X-Forwarded-Host: other.test', 'X-Forwarded-Proto: https', 'Via: 1.1 other'])];
    // Unique within a case (pipelined requests must not share an id), or unsafe (the gateway makes its own).
    case 8: return ['X-Request-Id' + c + r.pick([TAG_PLACEHOLDER + '-' + (ridCounter++ % 100000), 'unsafe "id"', ''])];
    case 9: return ['X-Fz-Drop' + c + '1'];
    case 10: return ['X-Fz-Set' + c + 'client'];
    case 11: return ['Authorization: Bearer ' + str(r, UNRESERVED, 8, 32)];
    case 12: return ['X-Fz-Multi' + c + fieldValue(r), 'X-Fz-Multi' + c + fieldValue(r)];
    case 13: return ['Cache-Control' + c + 'no-cache'];
    // Legal field names beyond [A-Za-z0-9-] (RFC 9110 5.6.2 tchar), now and then.
    case 14: return r.chance(0.25) ? [r.pick(['X_Fz_Under', 'X.Fz.Dot', "X!Fz#$%&'*+^`|~"]) + c + fieldValue(r)] : ['X-Fz-' + i + c + fieldValue(r)];
    default: return ['X-Fz-' + i + c + fieldValue(r) + ows(r)];
  }
}

// ------------------------------------------------------------------ edge cases

function setHeader(m: Msg, name: string, value: string): void {
  const lower = name.toLowerCase();
  m.lines = m.lines.filter((l) => l.slice(0, l.indexOf(':')).toLowerCase() !== lower);
  m.lines.push(name + ': ' + value);
}

function dropHeader(m: Msg, lower: string): void {
  m.lines = m.lines.filter((l) => l.slice(0, l.indexOf(':')).toLowerCase() !== lower);
}

function withBody(r: Rng, m: Msg, data?: string): string {
  if (m.method === 'GET' || m.method === 'HEAD') m.method = r.pick(['POST', 'PUT']);
  dropHeader(m, 'content-length');
  dropHeader(m, 'transfer-encoding');
  return data ?? bodyBytes(r, r.range(1, 40));
}

function insertAt(s: string, at: number, x: string): string {
  return s.slice(0, at) + x + s.slice(at);
}

const CTLS = ['\x00', '\r', '\n', '\x01', '\x07', '\x08', '\x0b', '\x0c', '\x1b', '\x1f', '\x7f', '\t'];

/** One deliberate anomaly applied to a valid message. Returns its name. */
type Edge = (r: Rng, m: Msg, L: GenLimits) => string;

const EDGES: readonly (readonly [number, Edge])[] = [
  [3, (r, m) => { m.method = r.pick(['PURGE', 'PROPFIND', 'get', 'Get', 'M-SEARCH', 'LINK', 'MKCOL', 'QUERY', 'SEARCH']); return 'ext-method'; }],
  [1, (r, m) => {
    m.method = 'CONNECT';
    if (r.chance(0.5)) m.target = r.pick(['fuzz.test:443', '127.0.0.1:80', '[::1]:443']);
    return 'connect';
  }],
  [1, (r, m) => { m.method = 'TRACE'; return 'trace'; }],
  [3, (r, m) => {
    const v = r.chance(0.5) ? 'fuzz.test' : 'other.test';
    m.lines.splice(r.int(m.lines.length + 1), 0, 'Host: ' + v);
    return 'host-twice';
  }],
  [2, (_r, m) => { dropHeader(m, 'host'); return 'host-missing'; }],
  [2, (r, m) => { setHeader(m, 'Host', r.pick(['', 'a b', 'a/b', 'a@b', '[::1', 'x:99999', 'x:', ':80', utf8('é.test'), 'a\tb', 'a,b', '%41.test', 'a;b'])); return 'host-invalid'; }],
  [2, (r, m) => {
    m.lines.push('Connection: keep-alive', 'Connection: X-Fz-Hop', 'X-Fz-Hop: 1');
    if (r.chance(0.3)) m.lines.push('Connection: close');
    return 'connection-lines';
  }],
  [3, (r, m) => {
    const data = withBody(r, m);
    const v = r.chance(0.5) ? String(data.length) : String(data.length + r.range(1, 3));
    m.lines.push('Content-Length: ' + data.length, 'Content-Length: ' + v);
    m.body = data;
    return v === String(data.length) ? 'cl-twice-equal' : 'cl-twice-diff';
  }],
  [3, (r, m) => {
    const data = withBody(r, m, 'abc');
    m.lines.push('Content-Length: ' + r.pick(['+3', '-3', '0x3', '3 3', '', '3,3', '3, 3', ' 003', '99999999999999999999', '3.0', utf8('３'), '3\t', 'abc']));
    m.body = data;
    return 'cl-invalid';
  }],
  [3, (r, m) => {
    const data = withBody(r, m);
    const te = r.pick(['chunked, chunked', 'gzip', 'gzip, chunked', 'chunked, gzip', 'identity', 'identity, chunked', 'Chunked', ' chunked', 'chunked;q=1', 'chunked,', ', chunked', 'xchunked', 'chunked\x0b']);
    m.lines.push('Transfer-Encoding: ' + te);
    if (r.chance(0.2)) m.lines.push('Transfer-Encoding: chunked');
    m.body = chunkEncode(r, data);
    return 'te-variant';
  }],
  [3, (r, m) => {
    const data = withBody(r, m);
    const chunked = chunkEncode(r, data);
    const order = r.chance(0.5);
    const cl = 'Content-Length: ' + r.pick([data.length, chunked.length, 0]);
    const te = 'Transfer-Encoding: chunked';
    m.lines.push(order ? cl : te, order ? te : cl);
    m.body = chunked;
    return 'cl-te';
  }],
  [4, (r, m) => {
    const bad = r.pick([
      'X-Fz-Bad : 1', 'X-Fz-Bad\t: 1', 'NoColonHere', ': empty-name', ':', ' X-Fz-Fold: 1', '\tfolded', 'X@Fz: 1', 'X Fz: 1',
      'X\tFz: 1', 'X-Fz-Bad:: 1', '   ', 'X-Fz-(p): 1', 'X-Fz-' + utf8('é') + ': 1', 'X-Fz"q": 1',
    ]);
    m.lines.splice(r.range(0, m.lines.length), 0, bad);
    return 'bad-line';
  }],
  [2, (r, m) => {
    // obs-fold continuing the previous line (RFC 9112 5.2)
    const i = r.int(m.lines.length);
    m.lines.splice(i + 1, 0, r.pick([' continued', '\tcontinued', '  x']));
    return 'obs-fold';
  }],
  [5, (r, m) => {
    const i = r.int(m.lines.length);
    const l = m.lines[i]!;
    const c = l.indexOf(':');
    const at = c < 0 ? r.int(l.length + 1) : r.range(c + 1, l.length);
    m.lines[i] = insertAt(l, at, r.pick(CTLS));
    return 'ctl-in-value';
  }],
  [3, (r, m) => {
    const q = m.target.indexOf('?');
    const at = r.chance(0.5) && q > 0 ? r.range(q + 1, m.target.length) : r.range(1, q > 0 ? q : m.target.length);
    m.target = insertAt(m.target, at, r.pick(CTLS));
    return 'ctl-in-target';
  }],
  [4, (r, m) => {
    const q = m.target.indexOf('?');
    const bytes = r.pick([utf8('é'), '\xe9', utf8('日本語'), '\xff\xfe', '\x80', utf8('\u{1F600}'), '"', '<>', '{|}', '\\', '^', '`', '#frag', ' ']);
    const inQuery = r.chance(0.6) && q > 0;
    m.target = insertAt(m.target, inQuery ? r.range(q + 1, m.target.length) : r.range(1, q > 0 ? q : m.target.length), bytes);
    return inQuery ? 'odd-bytes-in-query' : 'odd-bytes-in-path';
  }],
  [2, (r, m) => {
    const q = m.target.indexOf('?');
    const inQuery = r.chance(0.5) && q > 0;
    m.target = insertAt(m.target, inQuery ? m.target.length : (q > 0 ? q : m.target.length), r.pick(INVALID_ESCAPES));
    return inQuery ? 'bad-escape-in-query' : 'bad-escape-in-path';
  }],
  [3, (r, m, L) => {
    // Total header lines (Host included) around the gateway's limit or uWS's.
    const want = r.chance(0.6) ? r.range(L.maxHeaderCount - 2, L.maxHeaderCount + 2) : r.range(L.uwsMaxHeaders - 2, L.uwsMaxHeaders + 2);
    for (let i = m.lines.length; i < want; i++) m.lines.push('X-Fz-N' + i + ': ' + i);
    return 'header-count';
  }],
  [3, (r, m, L) => {
    let used = 0;
    for (const l of m.lines) used += l.length - 2;
    const target = r.weighted([[6, L.maxHeaderBytes + r.range(-40, 40)], [1, 70 * 1024], [1, 300 * 1024]]);
    const pad = Math.max(0, target - used - 'x-fz-big'.length);
    m.lines.push('X-Fz-Big: ' + 'v'.repeat(pad));
    return 'header-bytes';
  }],
  [3, (r, m, L) => {
    const want = r.weighted([[6, L.maxUrlBytes + r.range(-8, 8)], [1, 100 * 1024], [1, 300 * 1024]]);
    const q = m.target.indexOf('?');
    const pad = Math.max(0, want - m.target.length);
    m.target = r.chance(0.5) && q > 0 ? m.target + '&pad=' + 'q'.repeat(pad) : (q > 0 ? m.target.slice(0, q) : m.target) + '/' + 'p'.repeat(pad) + (q > 0 ? m.target.slice(q) : '');
    return 'long-target';
  }],
  [3, (r, m) => {
    m.version = r.pick(['HTTP/1.0', 'HTTP/1.0', 'HTTP/1.2', 'HTTP/1.9', 'HTTP/2.0', 'HTTP/0.9', 'http/1.1', 'HTTP/11', 'HTTP/1', 'HTTP/1.1x', 'HTTP/1.01', 'HTTPS/1.1']);
    if (m.version === 'HTTP/1.0' && r.chance(0.5)) dropHeader(m, 'host');
    return 'version';
  }],
  [2, (r, m) => { m.target = r.pick(['http://fuzz.test', 'http://fuzz.test:80', 'HTTP://FUZZ.TEST', 'https://fuzz.test', 'http://other.test']) + m.target; return 'absolute-form'; }],
  [1, (r, m) => { m.method = r.pick(['OPTIONS', 'GET']); m.target = '*'; return 'asterisk-form'; }],
  [1, (r, m) => { m.target = m.target.slice(1) || 'x'; return 'no-leading-slash'; }],
  [2, (r, m) => { m.prefix = r.pick(['\r\n', '\r\n\r\n', '\n', ' ']); return 'leading-junk'; }],
  [2, (r, m) => {
    m.requestLine = r.pick([
      `${m.method}  ${m.target} ${m.version}`, `${m.method} ${m.target}  ${m.version}`, `${m.method}\t${m.target} ${m.version}`,
      `${m.method} ${m.target} ${m.version} `, ` ${m.method} ${m.target} ${m.version}`, `${m.method} ${m.target}`, `${m.method}`,
    ]);
    return 'request-line-ws';
  }],
  [3, (r, m) => {
    withBody(r, m);
    m.lines.push('Transfer-Encoding: chunked');
    const size = r.pick(['zz', '-1', 'fffffffffffffffffff', '', ' 5', '0x5', '5 5', '1ffffffffffffffff', '+5', '5\t', '00000000000000000005']);
    m.body = size + '\r\nhello\r\n0\r\n\r\n';
    return 'chunk-bad-size';
  }],
  [3, (r, m) => {
    withBody(r, m);
    m.lines.push('Transfer-Encoding: chunked');
    const ext = r.pick([';a=1', ';e', ' ;a', ';a="q"', ';', ';a=1;b', '; a']);
    m.body = '5' + ext + '\r\nhello\r\n0\r\n\r\n';
    return 'chunk-ext';
  }],
  [2, (r, m) => {
    withBody(r, m);
    m.lines.push('Transfer-Encoding: chunked');
    m.body = '5\r\nhello' + r.pick(['XX', '\n', '', 'X\r\n', '\r']) + '0\r\n\r\n';
    return 'chunk-data-framing';
  }],
  [1, (r, m) => {
    withBody(r, m);
    m.lines.push('Transfer-Encoding: chunked');
    m.body = r.pick(['5\nhello\n0\n\n', '5\r\nhello\r\n0\n\n', '5\nhello\r\n0\r\n\r\n']);
    return 'chunk-lf';
  }],
  [2, (r, m) => {
    withBody(r, m);
    m.lines.push('Transfer-Encoding: chunked');
    m.body = '5\r\nhello\r\n0\r\n' + r.pick(['X-T: 1\r\n', 'X-T : 1\r\n', 'X-T: a\x00b\r\n', 'Content-Length: 5\r\n', 'bad\r\n', 'X-T: 1\r\nX-U: 2\r\n']) + '\r\n';
    return 'chunk-trailers';
  }],
  [3, (r, m) => {
    const data = withBody(r, m, 'hello');
    m.lines.push('Transfer-Encoding: chunked');
    m.body = r.chance(0.5) ? '9\r\n' + data + '\r\n0\r\n\r\n' : '2\r\n' + data + '\r\n0\r\n\r\n';
    return 'chunk-size-mismatch';
  }],
  [3, (r, m) => {
    const lines = ['Expect: 100-continue', 'Expect: 100-Continue', 'Expect: 100-continue, foo', 'Expect: foo', 'Expect:', 'Expect: 100-continue'];
    m.lines.push(r.pick(lines));
    if (r.chance(0.3) && m.lines.every((l) => !/^expect: 100-continue$/i.test(l))) m.lines.push('Expect: 100-continue');
    return 'expect';
  }],
  [3, (r, m) => {
    const data = withBody(r, m);
    if (r.chance(0.5)) {
      m.lines.push('Content-Length: ' + (data.length + r.range(1, 50)));
      m.body = data;
      return 'body-short';
    }
    m.lines.push('Content-Length: ' + data.length);
    m.body = data + r.pick(['X', '\r\n', 'GET / HTTP/1.1\r\n', 'garbage-bytes']);
    return 'body-long';
  }],
  [2, (r, m) => {
    const data = bodyBytes(r, r.range(1, 30));
    m.method = r.pick(['GET', 'HEAD', 'DELETE', 'OPTIONS']);
    dropHeader(m, 'content-length');
    dropHeader(m, 'transfer-encoding');
    m.lines.push('Content-Length: ' + data.length);
    m.body = data;
    return 'body-on-get';
  }],
  [3, (r, m, L) => {
    m.target = '/small/x?t=' + TAG_PLACEHOLDER;
    const data = withBody(r, m, bodyBytes(r, r.range(L.smallBodyBytes - 2, L.smallBodyBytes + 200)));
    if (r.chance(0.5)) {
      m.lines.push('Content-Length: ' + data.length);
      m.body = data;
    } else {
      m.lines.push('Transfer-Encoding: chunked');
      m.body = chunkEncode(r, data);
    }
    if (r.chance(0.3)) m.lines.push('Expect: 100-continue');
    return 'small-route-body';
  }],
  [1, (r, m, L) => {
    withBody(r, m);
    m.lines.push('Content-Length: ' + r.pick([L.maxBodyBytes + 1, 10 * L.maxBodyBytes, 2 ** 40]));
    m.body = 'x'.repeat(r.range(0, 100));
    return 'body-over-limit';
  }],
  [2, (r, m) => {
    // Characters U+0100-U+01FF in the query (as UTF-8) next to a latin1 field value: a head
    // written as latin1 without re-encoding would turn them into CR/LF/SP and split the request.
    const inj = utf8('\u0120HTTP/1.1\u010d\u010aHost:\u0120x\u010d\u010a\u010d\u010aGET\u0120/api/injected?t=') + TAG_PLACEHOLDER + utf8('\u0120HTTP/1.1\u010d\u010aX-Fz-Ignore:');
    m.target += '&q=' + r.pick([utf8('\u010d\u010a'), utf8('\u0100\u01ff'), inj, utf8('\u{1F600}')]);
    m.lines.push('X-Fz-Latin1: ' + r.pick(['a\xe9b', 'x\xa0y', '\xff\xfe1']));
    return 'query-unicode-with-latin1-value';
  }],
  [2, (r, m) => {
    // A chunk whose data terminator is a bare LF: a reader that skips 2 bytes there instead of
    // checking for CRLF reads the next size line differently and the chunk data as a request.
    withBody(r, m);
    m.lines.push('Transfer-Encoding: chunked');
    const smug = 'GET /api/smuggled?t=' + TAG_PLACEHOLDER + ' HTTP/1.1\r\nHost: fuzz.test\r\nX-Pad: ';
    const data = '\r\n' + smug + 'p'.repeat(256 - 6 - smug.length) + '\r\n\r\n';
    m.body = '5\r\nhello' + r.pick(['\n', '\nX', 'XY']) + '100\r\n' + data + '\r\n0\r\n\r\n';
    if (r.chance(0.5)) m.target = '/nowhere/x?t=' + TAG_PLACEHOLDER;
    return 'chunk-terminator-desync';
  }],
  [3, (r, m) => {
    // A defective line before the framing header: does the framing still count?
    // (A server that stops reading fields there reads the body as the next request.)
    const smuggled = 'GET /api/smuggled?t=' + TAG_PLACEHOLDER + ' HTTP/1.1\r\nHost: fuzz.test\r\n\r\n';
    const data = withBody(r, m, r.chance(0.5) ? smuggled : bodyBytes(r, r.range(1, 40)));
    m.lines.push(r.pick([': x', ':', 'NoColon', ' folded', 'X Fz: 1', 'X-Fz-Bad : 1', 'X@Fz: 1', 'X-Fz: a\x01b', 'X-Fz: a\rb']));
    if (r.chance(0.6)) {
      m.lines.push('Content-Length: ' + data.length);
      m.body = data;
    } else {
      m.lines.push('Transfer-Encoding: chunked');
      m.body = chunkEncode(r, data);
    }
    return 'bad-line-before-framing';
  }],
  [2, (r, m) => {
    m.lines.push('Connection: Upgrade', 'Upgrade: websocket', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version: 13');
    return 'upgrade';
  }],
  [2, (r, m) => {
    m.lines.push(r.pick(['X-Fz-Empty:', 'X-Fz-Empty: ', 'X-Fz-Spaces:    ', 'X-Fz-Tab:\t\t', 'X-Fz-Ws: a  \t b']));
    return 'empty-values';
  }],
];

// ------------------------------------------------------------------ mutations

type Mutation = (r: Rng, s: string) => string;

function lineStarts(s: string): number[] {
  const out = [0];
  for (let i = s.indexOf('\n'); i !== -1 && i < s.length - 1; i = s.indexOf('\n', i + 1)) out.push(i + 1);
  return out;
}

const SPECIAL = ['\r', '\n', '\x00', ' ', '\t', ':', '\x7f', '\xff', '\x80', '\r\n', ',', ';'];

const MUTATIONS: readonly (readonly [number, string, Mutation])[] = [
  [4, 'flip', (r, s) => {
    const i = r.int(s.length);
    const c = s.charCodeAt(i) ^ (1 << r.int(8));
    return s.slice(0, i) + String.fromCharCode(c) + s.slice(i + 1);
  }],
  [3, 'byte', (r, s) => {
    const i = r.int(s.length);
    return s.slice(0, i) + String.fromCharCode(r.int(256)) + s.slice(i + 1);
  }],
  [3, 'truncate', (r, s) => s.slice(0, r.range(1, Math.max(1, s.length - 1)))],
  [5, 'insert', (r, s) => insertAt(s, r.int(s.length + 1), r.pick(SPECIAL))],
  [2, 'delete', (r, s) => {
    const i = r.int(s.length);
    return s.slice(0, i) + s.slice(i + r.range(1, 4));
  }],
  [3, 'dup-line', (r, s) => {
    const starts = lineStarts(s);
    const k = r.int(starts.length);
    const a = starts[k]!;
    const b = starts[k + 1] ?? s.length;
    return s.slice(0, b) + s.slice(a, b) + s.slice(b);
  }],
  [2, 'swap-lines', (r, s) => {
    const starts = lineStarts(s);
    if (starts.length < 3) return s;
    const k = r.range(0, starts.length - 2);
    const a = starts[k]!;
    const b = starts[k + 1]!;
    const c = starts[k + 2] ?? s.length;
    return s.slice(0, a) + s.slice(b, c) + s.slice(a, b) + s.slice(c);
  }],
  [2, 'crlf-to-lf', (r, s) => {
    const idx: number[] = [];
    for (let i = s.indexOf('\r\n'); i !== -1; i = s.indexOf('\r\n', i + 2)) idx.push(i);
    if (idx.length === 0) return s;
    const i = r.pick(idx);
    return s.slice(0, i) + s.slice(i + 1);
  }],
  [1, 'case', (r, s) => {
    const i = r.int(s.length);
    const ch = s[i]!;
    const sw = ch === ch.toLowerCase() ? ch.toUpperCase() : ch.toLowerCase();
    return s.slice(0, i) + sw + s.slice(i + 1);
  }],
];

// ------------------------------------------------------------------ cases

function edgeMsg(r: Rng, L: GenLimits): { m: Msg; name: string } {
  const m = validMsg(r);
  const edge = r.weighted(EDGES);
  const name = edge(r, m, L);
  return { m, name };
}

/** A request without a body, for pipelines (every request but the last is answered before the next is read). */
function simpleMsg(r: Rng): Msg {
  const m = validMsg(r);
  if (m.body !== '') {
    m.method = r.pick(['GET', 'HEAD']);
    dropHeader(m, 'content-length');
    dropHeader(m, 'transfer-encoding');
    dropHeader(m, 'expect');
    m.body = '';
  }
  m.lines = m.lines.filter((l) => !/^connection\s*:.*close/i.test(l));
  return m;
}

export interface GenWeights {
  valid: number;
  edge: number;
  mutate: number;
  pipeline: number;
  /** Probability of the abort and slow-write modifiers. */
  abort: number;
  slow: number;
}

export const DEFAULT_WEIGHTS: GenWeights = { valid: 40, edge: 30, mutate: 20, pipeline: 10, abort: 0.04, slow: 0.08 };

/** The case `index` of run `runSeed`. Deterministic. */
export function generateCase(runSeed: number, index: number, L: GenLimits = DEFAULT_LIMITS, W: GenWeights = DEFAULT_WEIGHTS): FuzzCase {
  const seed = caseSeed(runSeed, index);
  const r = new Rng(seed);
  ridCounter = index;
  let kind: string;
  let text: string;
  const family = r.weighted([[W.valid, 'valid'], [W.edge, 'edge'], [W.mutate, 'mutate'], [W.pipeline, 'pipeline']] as const);
  if (family === 'valid') {
    kind = 'valid';
    text = serialize(validMsg(r));
  } else if (family === 'edge') {
    const { m, name } = edgeMsg(r, L);
    kind = 'edge:' + name;
    text = serialize(m);
  } else if (family === 'mutate') {
    let base: string;
    if (r.chance(0.6)) {
      base = 'valid';
      text = serialize(validMsg(r));
    } else {
      const e = edgeMsg(r, L);
      base = e.name;
      text = serialize(e.m);
    }
    const ops: string[] = [];
    const n = r.weighted([[6, 1], [3, 2], [1, 3]]);
    for (let i = 0; i < n; i++) {
      const [, name, fn] = r.weighted(MUTATIONS.map((x) => [x[0], x] as const));
      text = fn(r, text);
      ops.push(name);
    }
    kind = `mutate:${ops.join('+')}:${base}`;
  } else {
    const n = r.range(2, 3);
    const parts: string[] = [];
    for (let i = 0; i < n; i++) {
      if (i === n - 1 && r.chance(0.3)) parts.push(serialize(edgeMsg(r, L).m));
      else if (i === n - 1) parts.push(serialize(validMsg(r)));
      else {
        const m = simpleMsg(r);
        // RFC 9112 9.6: nothing after a request with `close` may be processed.
        if (r.chance(0.1)) m.lines.push('Connection: ' + r.pick(['close', 'keep-alive, close']));
        parts.push(serialize(m));
      }
    }
    kind = 'pipeline' + n;
    text = parts.join('');
  }
  if (text.length === 0) text = 'G';
  const bytes = Buffer.from(text, 'latin1');
  let splits: number[] = [];
  let writeDelayMs = 0;
  let abort: FuzzCase['abort'] = null;
  // The smuggling edges: half the time the body comes 20 ms after the head,
  // once the first request is answered (a slow upload through a front proxy).
  const cut = kind === 'edge:bad-line-before-framing' ? text.indexOf('\r\n\r\n') + 4 : kind === 'edge:chunk-terminator-desync' ? text.indexOf('100\r\n') + 5 : -1;
  if (cut > 4 && cut < text.length && r.chance(0.5)) {
    return { index, seed, kind: kind + '+body-later', bytes: Buffer.from(text, 'latin1'), splits: [cut], writeDelayMs: 20, abort: null };
  }
  if (r.chance(W.abort)) {
    abort = { at: r.range(1, bytes.length), reset: r.chance(0.5) };
    kind += '+abort';
  } else if (r.chance(W.slow) && bytes.length > 1) {
    const k = r.range(1, Math.min(4, bytes.length - 1));
    const set = new Set<number>();
    for (let i = 0; i < k; i++) set.add(r.range(1, bytes.length - 1));
    splits = [...set].sort((a, b) => a - b);
    writeDelayMs = r.range(1, 15);
    kind += '+slow';
  }
  return { index, seed, kind, bytes, splits, writeDelayMs, abort };
}
