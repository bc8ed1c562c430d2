/**
 * Strict, incremental HTTP/1.x REQUEST parser for the node:net server
 * backend (issue 13). Fed the bytes of each socket read; hands out request
 * heads, body bytes and trailers, in order, through one sink.
 *
 * Reads land in a buffer shared by every connection of the thread (net's
 * `onread`), so nothing is kept by reference: an incomplete head or trailer
 * section, or the bytes left when the sink pauses, are COPIED into a buffer
 * of this parser (allocated on demand, dropped once empty: an idle
 * connection holds none). A complete head that arrived in one read is
 * parsed in place: one latin1 string of the head, sliced into the strings
 * handed out. Body bytes are handed out as views valid only during the call.
 *
 * Accepted (RFC 9112 unless noted):
 *  - 2.2: empty lines (CRLF) before the request line, at most
 *    MAX_LEADING_EMPTY_LINES of them.
 *  - 3: `method SP request-target SP HTTP-version CRLF`, exactly one SP
 *    each; method = token (RFC 9110 9.1: extension methods such as PURGE or
 *    PROPFIND pass, case-sensitive: `get` is a method of its own);
 *    HTTP-version `HTTP/1.1` or `HTTP/1.0` (2.3, case-sensitive); a higher
 *    minor version (`HTTP/1.2`) is served as HTTP/1.1 (2.3: "the highest
 *    minor version ... to which the recipient is conformant").
 *  - 3.2: request-target in origin-form (`/...`), absolute-form
 *    (`http[s]://authority[/path][?query]`, 3.2.2; no userinfo, RFC 9110
 *    4.2.4), authority-form (`host:port`) with CONNECT only (3.2.3),
 *    asterisk-form (`*`) with OPTIONS only (3.2.4). Target bytes: any
 *    VCHAR or obs-text; the path itself is judged later (normalizePath).
 *  - 5: `field-name ":" OWS field-value OWS CRLF`, field-name = token,
 *    field-value bytes HTAB / SP / VCHAR / obs-text (0x80-0xFF, RFC 9110
 *    5.5). Names are handed out lowercased, values trimmed of OWS, as
 *    latin1 strings (one char per byte) so they forward byte for byte.
 *  - 6.1-6.3 framing: Content-Length = 1*DIGIT (RFC 9110 8.6); several
 *    Content-Length LINES with the same value are accepted (RFC 9110 8.6
 *    allows it; the uWS backend does the same); a comma list (`5, 5`) is
 *    not 1*DIGIT and is refused. Transfer-Encoding in HTTP/1.1 must be
 *    exactly `chunked` (any case; across lines, once): other codings cannot
 *    be forwarded by a gateway that re-frames the body, so `gzip, chunked`
 *    is refused too.
 *  - 7.1: chunked body: chunk-size = 1*HEXDIG (at most MAX_CHUNK_SIZE_DIGITS
 *    significant digits, any number of leading zeros within the line cap;
 *    no sign, no space before it), chunk extensions
 *    `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`
 *    syntax-checked and ignored, the whole line capped (maxChunkLineBytes);
 *    7.1.2: trailer section parsed with the header rules, handed out with
 *    the end of the message.
 *  - 9.3 persistence: keep-alive is reported per request: HTTP/1.1 unless a
 *    `close` token is in any Connection line; HTTP/1.0 only with a
 *    `keep-alive` token and no `close`. RFC 9110 10.1.1: `Expect:
 *    100-continue` is reported (ignored for HTTP/1.0, as it asks).
 *  - Pipelining (9.3.2): any number of requests per read; request N+1 is
 *    handed out only after request N's end. After a request that closes
 *    the connection (keepAlive false), later bytes are ignored (9.6: the
 *    server "MUST NOT process any further requests"); see `closed`.
 *
 * Refused. Code / status as common/errors.ts names them:
 *  - bad_request 400: bare LF or bare CR anywhere in a head, a chunk line
 *    or trailers (2.2); whitespace or any non-token byte in the method; two
 *    SPs; NUL, other CTL or DEL in the target; garbage version; whitespace
 *    before the first field line (2.2); obs-fold (5.2); whitespace between
 *    field name and colon (5.1); empty or non-token field name; NUL, other
 *    CTLs (except HTAB) or DEL in a field value (RFC 9110 5.5); a target form
 *    not allowed with its method (CONNECT takes the origin-, authority- or
 *    absolute-form: the server answers it 501 whatever the form); invalid
 *    Content-Length, differing Content-Length values, Content-Length with
 *    Transfer-Encoding, Transfer-Encoding other than `chunked`,
 *    Transfer-Encoding in HTTP/1.0 (6.1, 6.3); bad chunk size / extension /
 *    CRLF after chunk data (7.1); too many empty lines before a request; a
 *    chunk line over maxChunkLineBytes.
 *  - version_not_supported 505: a well-formed `HTTP/x.y` whose major version
 *    is not 1 (`HTTP/2.0`, `HTTP/3.0`, `HTTP/0.9`; RFC 9110 15.6.6). Final:
 *    the framing of what follows is unknown.
 *  - bad_host 400: HTTP/1.1 without Host, more than one Host line, or a
 *    Host value that is not `uri-host [":" port]` (reg-name, IPv4 or a
 *    bracketed IPv6 address; 3.2, RFC 3986 3.2.2). HTTP/1.0 may omit it.
 *  - url_too_long 414: a request-target over maxUrlBytes.
 *  - headers_too_large 431 (RFC 6585 5): more than maxHeaderCount field
 *    lines, name + value bytes summed over maxHeaderBytes (as the uWS
 *    backend counts them), or a whole head over maxHeadBytes. The trailer
 *    section has the same limits, counted apart.
 *
 * Two kinds of refusal:
 *  - KEPT (R_OK, onRequestRefused): the rule broken leaves the message's
 *    framing readable: 414; 431 for the count or the bytes of the fields; a
 *    CTL (not NUL, CR, LF) or DEL in the target or a field value; the target
 *    form; Host. The scanner records the first such error and reads on to
 *    the end of the head (still within maxHeadBytes, every other rule still
 *    applied), then decides the framing as for any request and hands the
 *    head out refused (ParsedRequest.errorCode): its body, if any, follows
 *    and the end, as for any request, so the server can answer, discard the
 *    body by its framing and serve the next request (the uWS backend keeps
 *    the connection after these answers too). Decided at the head's last
 *    byte.
 *  - FINAL (R_ERROR): anything that could make the framing ambiguous (bare
 *    CR/LF, NUL, obs-fold, whitespace before a colon, a bad method, name or
 *    version, invalid or conflicting framing, a head over maxHeadBytes, any
 *    error in a body or trailers): the parser stops; the server answers and
 *    closes. When a kept error came first in the same head, the verdict
 *    (code, status, reason) is that first error's: the FIRST rule broken
 *    names the error, in byte order, then framing, target form and Host.
 * Every byte-level rule is judged at the byte that breaks it, so a final
 * error is refused as soon as that byte arrives, and the verdict (code and
 * reason, kept or final) does not depend on how the bytes were split into
 * reads. Semantic checks on the whole head (framing, target form, Host)
 * come right after its last CRLF, in that order.
 */
import { BODY_CHUNKED, BODY_LENGTH, BODY_NONE, parseContentLength } from '../../proxy/http1-parser.js';
import { isValidHost } from '../../router/normalize.js';

export { BODY_CHUNKED, BODY_LENGTH, BODY_NONE };

// ---------------------------------------------------------------------------
// Public shapes

/** Request-target forms (RFC 9112 3.2). */
export const FORM_ORIGIN = 0;
export const FORM_ABSOLUTE = 1;
export const FORM_AUTHORITY = 2;
export const FORM_ASTERISK = 3;

/** What execute() and resume() return. */
export const R_OK = 0;
/** The sink called pause(): the rest of the input is kept until resume(). */
export const R_PAUSED = 1;
/** A request was refused and the connection cannot go on: see errorCode, errorStatus, errorReason. Final. */
export const R_ERROR = 2;

/** Error codes (common/errors.ts names; version_not_supported is new). */
export const E_BAD_REQUEST = 'bad_request';
export const E_BAD_HOST = 'bad_host';
export const E_URL_TOO_LONG = 'url_too_long';
export const E_HEADERS_TOO_LARGE = 'headers_too_large';
export const E_VERSION_NOT_SUPPORTED = 'version_not_supported';

/** Limits. Each one, once exceeded, is an error at that byte. */
export interface RequestParserOptions {
  /** Longest request-target in bytes; above it 414 url_too_long. */
  maxUrlBytes: number;
  /** Sum of field name + trimmed value bytes over the head; above it 431. */
  maxHeaderBytes: number;
  /** Most field lines in a head (and in a trailer section); above it 431. */
  maxHeaderCount: number;
  /**
   * Hard cap on the whole head (request line, field lines, OWS, CRLFs;
   * leading empty lines not counted); above it 431. Default
   * defaultMaxHeadBytes(): every head within the other limits fits.
   */
  maxHeadBytes?: number;
  /** Longest chunk-size line (size + extensions, without CRLF); above it 400. */
  maxChunkLineBytes?: number;
}

/** server.limits defaults (common/config/schema.ts). */
export const DEFAULT_MAX_URL_BYTES = 8192;
export const DEFAULT_MAX_HEADER_BYTES = 32768;
export const DEFAULT_MAX_HEADER_COUNT = 100;
/** A chunk-size line (size and extensions) longer than this is refused (nginx and llhttp cap extensions too). */
export const DEFAULT_MAX_CHUNK_LINE_BYTES = 4096;
/** RFC 9112 2.2 asks to ignore at least one empty line before a request; more than this many is an attack or a broken client. */
export const MAX_LEADING_EMPTY_LINES = 8;
/** 12 significant hex digits (leading zeros not counted): chunks up to 256 TiB, still exact in a double. */
export const MAX_CHUNK_SIZE_DIGITS = 12;

/** The whole-head cap implied by the other limits: request line, each field line with `: ` and CRLF and a little OWS. */
export function defaultMaxHeadBytes(maxUrlBytes: number, maxHeaderBytes: number, maxHeaderCount: number): number {
  return maxUrlBytes + maxHeaderBytes + 8 * maxHeaderCount + 1024;
}

/** One request head, as handed to the sink. Every field is set in the constructor (one hidden class). */
export class ParsedRequest {
  /** As sent (token, case kept). Common methods are interned constants. */
  method = '';
  /** The request-target as sent (latin1). */
  target = '';
  /** FORM_ORIGIN / FORM_ABSOLUTE / FORM_AUTHORITY / FORM_ASTERISK. */
  form = FORM_ORIGIN;
  /** origin-form: the target; absolute-form: its path and query (`/` if none); authority-form: ''; asterisk-form: `*`. */
  path = '';
  /** absolute-form and authority-form: the authority (host[:port]) of the target; else null. RFC 9112 3.2.2: it wins over Host. */
  authority: string | null = null;
  /** 1 for HTTP/1.1, 0 for HTTP/1.0. */
  minor = 1;
  /** [name, value, name, value, ...]: names lowercased, values trimmed, in order, duplicates kept. */
  headers: string[] = [];
  /** The head exactly as received (latin1, request line through the final CRLF CRLF): Buffer.from(raw, 'latin1') gives the bytes back. */
  raw = '';
  /** A byte >= 0x80 is in a field value: strings are latin1 and must be written back as latin1, not UTF-8. */
  highBytes = false;
  /** The Host value, or null (HTTP/1.0 without Host). */
  host: string | null = null;
  /** BODY_NONE, BODY_LENGTH or BODY_CHUNKED. */
  bodyKind = BODY_NONE;
  /** The Content-Length, or -1 (none, or chunked). */
  contentLength = -1;
  /** Whether the client wants the connection kept after this exchange (RFC 9112 9.3). */
  keepAlive = true;
  /** `Expect: 100-continue` in an HTTP/1.1 request. */
  expectContinue = false;
  /** The Connection lines joined with ", ", or null: the names listed are hop-by-hop. */
  connection: string | null = null;
  /** Any Expect lines joined with ", ", or null (an expectation other than 100-continue deserves 417). */
  expect: string | null = null;
  /**
   * A refused head (onRequestRefused): the error code (E_*), '' otherwise.
   * Then only method, target, minor, bodyKind, contentLength, keepAlive,
   * expectContinue, connection and expect are set (headers is empty).
   */
  errorCode = '';
  errorStatus = 0;
  errorReason = '';
}

/** What the parser feeds. One implementation per server: calls stay monomorphic. */
export interface RequestSink {
  /** A complete, valid head. Body bytes follow (onRequestBody), then onRequestEnd. */
  onRequestHead(req: ParsedRequest): void;
  /** `buf[start, end)` is request body (dechunked), valid only during the call. */
  onRequestBody(buf: Buffer, start: number, end: number): void;
  /** The request is complete; `trailers` as [name, value, ...] like headers, or null. */
  onRequestEnd(trailers: string[] | null): void;
  /**
   * A complete head refused by a rule that leaves its framing known
   * (req.errorCode / errorStatus / errorReason say which; see the module
   * comment): its body, if any, follows (onRequestBody: to discard) then
   * onRequestEnd, as for any request. The server answers the error and goes
   * on with the next request, or calls discardRest() to close instead.
   */
  onRequestRefused(req: ParsedRequest): void;
}

// ---------------------------------------------------------------------------
// Character classes

/** RFC 9110 5.6.2 tchar. */
const TCHAR = new Uint8Array(256);
/** Field-value bytes: 1 VCHAR, 2 SP/HTAB, 3 obs-text, 0 anything else (CTL, DEL, CR, LF). */
const VALUE = new Uint8Array(256);
/** Field-value bytes the fast loop runs over: VCHAR, SP, HTAB. */
const VALUE_FAST = new Uint8Array(256);
/** request-target bytes: VCHAR and obs-text. */
const TARGET = new Uint8Array(256);
/** HEXDIG value + 1 (0: not a hex digit). */
const HEX = new Uint8Array(256);
/** quoted-string qdtext (RFC 9110 5.6.4). */
const QDTEXT = new Uint8Array(256);
(function initTables(): void {
  const t = "!#$%&'*+-.^_`|~";
  for (let c = 0x30; c <= 0x39; c++) TCHAR[c] = 1;
  for (let c = 0x41; c <= 0x5a; c++) TCHAR[c] = 1;
  for (let c = 0x61; c <= 0x7a; c++) TCHAR[c] = 1;
  for (let k = 0; k < t.length; k++) TCHAR[t.charCodeAt(k)] = 1;
  for (let c = 0x21; c <= 0x7e; c++) { VALUE[c] = 1; TARGET[c] = 1; QDTEXT[c] = 1; }
  for (let c = 0x80; c <= 0xff; c++) { VALUE[c] = 3; TARGET[c] = 1; QDTEXT[c] = 1; }
  VALUE[0x20] = 2; VALUE[0x09] = 2;
  for (let c = 0; c < 256; c++) VALUE_FAST[c] = VALUE[c] === 1 || VALUE[c] === 2 ? 1 : 0;
  QDTEXT[0x20] = 1; QDTEXT[0x09] = 1; QDTEXT[0x22] = 0; QDTEXT[0x5c] = 0;
  for (let c = 0x30; c <= 0x39; c++) HEX[c] = c - 0x30 + 1;
  for (let c = 0x41; c <= 0x46; c++) HEX[c] = c - 0x41 + 11;
  for (let c = 0x61; c <= 0x66; c++) HEX[c] = c - 0x61 + 11;
})();

const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const HTAB = 0x09;

// ---------------------------------------------------------------------------
// Parser states

const S_HEAD = 0; // head (or leading empty lines)
const S_BODY_LENGTH = 1;
const S_CHUNK_LINE = 2;
const S_CHUNK_DATA = 3;
const S_CHUNK_CR = 4;
const S_CHUNK_LF = 5;
const S_TRAILERS = 6;
const S_END = 7; // message end to deliver (after a pause in onRequestHead)
const S_ERROR = 8;
const S_CLOSED = 9; // after a request that closes the connection: later bytes are ignored (RFC 9112 9.6)

// Head/trailer scanner sub-states (`hs`).
const H_LEAD = 0;
const H_LEAD_LF = 1;
const H_METHOD = 2;
const H_TARGET_START = 3;
const H_TARGET = 4;
const H_VERSION = 5;
const H_RL_LF = 6;
const H_LINE_START = 7;
const H_NAME = 8;
const H_VALUE = 9;
const H_LINE_LF = 10;
const H_END_LF = 11;

// Chunk-size line sub-states (`cs`), RFC 9112 7.1 / 7.1.1.
const C_SIZE_FIRST = 0;
const C_SIZE = 1;
const C_BWS_SEMI = 2; // BWS, then ";" must follow
const C_EXT_NAME_START = 3; // after ";": BWS then a token
const C_EXT_NAME = 4;
const C_EXT_AFTER_NAME = 5; // BWS after a name: "=" or ";" must follow
const C_EXT_VALUE_START = 6; // after "=": BWS then token or quoted-string
const C_EXT_TOKEN = 7;
const C_EXT_QUOTED = 8;
const C_EXT_QPAIR = 9;
const C_LF = 10;
const C_EXT_TOKEN_END = 11; // after the closing quote of a quoted-string

const VERSION_PREFIX = [0x48, 0x54, 0x54, 0x50, 0x2f]; // "HTTP/"
const HEAD_BYTES = [0x48, 0x45, 0x41, 0x44]; // "HEAD"

/**
 * Offsets of the field lines of the section being scanned, 4 per line (name
 * start, name length, value start, value end; section offsets), shared by
 * every parser of the thread. Valid for pass 2 only when the whole section
 * was scanned in one call (this.oneCall): no other parser ran in between.
 */
let LINES = new Int32Array(4 * 128);

/** Kept buffers are allocated at least this large (one allocation for most split heads). */
const KEEP_MIN_BYTES = 1024;

// ---------------------------------------------------------------------------
// Interned names and methods: no slice or toLowerCase for the common ones.

const KNOWN_NAMES: string[][] = [];
for (const n of [
  'host', 'connection', 'content-length', 'transfer-encoding', 'expect', 'user-agent', 'accept',
  'accept-encoding', 'accept-language', 'content-type', 'cookie', 'authorization', 'referer', 'origin',
  'cache-control', 'pragma', 'upgrade', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host',
  'x-request-id', 'x-real-ip', 'forwarded', 'if-none-match', 'if-modified-since', 'range', 'te', 'via',
  'keep-alive', 'dnt', 'priority', 'sec-fetch-site', 'sec-fetch-mode', 'sec-fetch-dest',
  'upgrade-insecure-requests', 'x-api-key',
]) {
  (KNOWN_NAMES[n.length] ??= []).push(n);
}

/** `s[pos, pos + lower.length)` equals `lower` (lowercase letters, digits and '-') ignoring ASCII case; `s` holds tchars there. */
function nameIs(s: string, pos: number, lower: string): boolean {
  for (let k = 0; k < lower.length; k++) {
    if ((s.charCodeAt(pos + k) | 0x20) !== lower.charCodeAt(k)) return false;
  }
  return true;
}

function lowerName(h: string, a: number, b: number): string {
  const cands = KNOWN_NAMES[b - a];
  if (cands !== undefined) {
    for (let k = 0; k < cands.length; k++) {
      if (nameIs(h, a, cands[k]!)) return cands[k]!;
    }
  }
  return h.slice(a, b).toLowerCase();
}

function internMethod(h: string, n: number): string {
  switch (n) {
    case 3:
      if (h.startsWith('GET')) return 'GET';
      if (h.startsWith('PUT')) return 'PUT';
      break;
    case 4:
      if (h.startsWith('POST')) return 'POST';
      if (h.startsWith('HEAD')) return 'HEAD';
      break;
    case 5:
      if (h.startsWith('PATCH')) return 'PATCH';
      break;
    case 6:
      if (h.startsWith('DELETE')) return 'DELETE';
      break;
    case 7:
      if (h.startsWith('OPTIONS')) return 'OPTIONS';
      if (h.startsWith('CONNECT')) return 'CONNECT';
      break;
  }
  return h.slice(0, n);
}

/** A comma-separated list holds `token` (lowercase) as an element, any case, OWS around (RFC 9110 5.6.1). */
export function listHas(value: string, token: string): boolean {
  const n = value.length;
  const tl = token.length;
  for (let i = 0, start = 0; i <= n; i++) {
    if (i === n || value.charCodeAt(i) === 44) {
      let a = start;
      let b = i;
      while (a < b && (value.charCodeAt(a) === SP || value.charCodeAt(a) === HTAB)) a++;
      while (b > a && (value.charCodeAt(b - 1) === SP || value.charCodeAt(b - 1) === HTAB)) b--;
      if (b - a === tl && nameIs(value, a, token)) return true;
      start = i + 1;
    }
  }
  return false;
}

/** Exactly one `chunked` element (any case, OWS around, empty elements skipped), nothing else. */
function isOnlyChunked(value: string): boolean {
  let seen = 0;
  const n = value.length;
  for (let i = 0, start = 0; i <= n; i++) {
    if (i === n || value.charCodeAt(i) === 44) {
      let a = start;
      let b = i;
      while (a < b && (value.charCodeAt(a) === SP || value.charCodeAt(a) === HTAB)) a++;
      while (b > a && (value.charCodeAt(b - 1) === SP || value.charCodeAt(b - 1) === HTAB)) b--;
      if (b > a) {
        if (b - a !== 7 || !nameIs(value, a, 'chunked')) return false;
        seen++;
      }
      start = i + 1;
    }
  }
  return seen === 1;
}

/** RFC 3986 IPv6address (no zone id, no IPvFuture): 8 groups, or fewer with one `::`, the last 32 bits optionally dotted IPv4. */
export function isIPv6(s: string, a: number, b: number): boolean {
  let groups = 0;
  let dbl = false;
  let i = a;
  if (b - a < 2) return false;
  if (s.charCodeAt(i) === 58) {
    if (s.charCodeAt(i + 1) !== 58) return false;
    dbl = true;
    i += 2;
    if (i === b) return true;
  }
  for (;;) {
    // One group: 1-4 hex digits, or a dotted IPv4 as the last piece.
    const gs = i;
    while (i < b && i - gs < 5 && (HEX[s.charCodeAt(i) & 0xff]! !== 0 && s.charCodeAt(i) < 0x100)) i++;
    const digits = i - gs;
    if (i < b && s.charCodeAt(i) === 46) {
      if (!isIPv4(s, gs, b)) return false;
      groups += 2;
      break;
    }
    if (digits === 0 || digits > 4) return false;
    groups++;
    if (i === b) break;
    if (s.charCodeAt(i) !== 58) return false;
    i++;
    if (i < b && s.charCodeAt(i) === 58) {
      if (dbl) return false;
      dbl = true;
      i++;
      if (i === b) break;
    } else if (i === b) {
      return false; // trailing single colon
    }
  }
  return dbl ? groups < 8 : groups === 8;
}

function isIPv4(s: string, a: number, b: number): boolean {
  let parts = 0;
  let i = a;
  for (;;) {
    const ps = i;
    let v = 0;
    while (i < b && s.charCodeAt(i) >= 48 && s.charCodeAt(i) <= 57 && i - ps < 4) v = v * 10 + s.charCodeAt(i++) - 48;
    const d = i - ps;
    if (d === 0 || d > 3 || v > 255 || (d > 1 && s.charCodeAt(ps) === 48)) return false;
    parts++;
    if (i === b) break;
    if (s.charCodeAt(i) !== 46 || parts === 4) return false;
    i++;
  }
  return parts === 4;
}

/** `uri-host [":" port]` (RFC 9112 3.2, RFC 3986 3.2.2): a reg-name / IPv4 (router/normalize isValidHost), or a strict bracketed IPv6 address. */
export function isValidHostValue(h: string): boolean {
  if (!isValidHost(h)) return false;
  if (h.charCodeAt(0) !== 91) return true;
  return isIPv6(h, 1, h.indexOf(']'));
}

/**
 * Framing (RFC 9112 6.1-6.3) from the Content-Length (`cl`: the value, -1
 * none; `clBad`: an invalid or differing one) and Transfer-Encoding lines:
 * sets req.bodyKind / contentLength, or returns why it cannot be known.
 */
function framing(req: ParsedRequest, minor: number, cl: number, clBad: boolean, te: string | null): string | null {
  if (te !== null) {
    if (minor === 0) return 'Transfer-Encoding in an HTTP/1.0 request';
    if (cl !== -1 || clBad) return 'Content-Length with Transfer-Encoding';
    if (!isOnlyChunked(te)) return 'Transfer-Encoding other than chunked';
    req.bodyKind = BODY_CHUNKED;
  } else if (clBad) {
    return 'invalid or conflicting Content-Length';
  } else if (cl > 0) {
    req.bodyKind = BODY_LENGTH;
    req.contentLength = cl;
  } else if (cl === 0) {
    req.contentLength = 0;
  }
  return null;
}

/** Persistence (RFC 9112 9.3) and Expect (RFC 9110 10.1.1) into req. */
function persistence(req: ParsedRequest, minor: number, connection: string | null, expect: string | null): void {
  req.connection = connection;
  if (connection !== null) {
    req.keepAlive = !listHas(connection, 'close') && (minor === 1 || listHas(connection, 'keep-alive'));
  } else {
    req.keepAlive = minor === 1;
  }
  req.expect = expect;
  req.expectContinue = minor === 1 && expect !== null && listHas(expect, '100-continue');
}

/** authority-form (RFC 9112 3.2.3): `uri-host ":" port`, the port required. */
function isAuthorityForm(target: string): boolean {
  const colon = target.charCodeAt(0) === 91 ? target.indexOf(']') + 1 : target.indexOf(':');
  return colon > 0 && target.charCodeAt(colon) === 0x3a && colon !== target.length - 1 && isValidHostValue(target);
}

/**
 * absolute-form (RFC 9112 3.2.2): `http` or `https` (any case) `://`
 * authority, then path-abempty and query. Sets req.form / authority / path,
 * or returns why the target is refused.
 */
function absoluteForm(req: ParsedRequest, target: string): string | null {
  const sep = target.indexOf('://');
  if (sep < 0) return 'invalid request target';
  if (!(sep === 4 && nameIs(target, 0, 'http')) && !(sep === 5 && nameIs(target, 0, 'https'))) {
    return 'absolute-form with a scheme other than http or https';
  }
  const as = sep + 3;
  let ae = as;
  const n = target.length;
  while (ae < n) {
    const c = target.charCodeAt(ae);
    if (c === 0x2f || c === 0x3f || c === 0x23) break;
    ae++;
  }
  const authority = target.slice(as, ae);
  if (authority.indexOf('@') >= 0) return 'userinfo in the request target';
  if (!isValidHostValue(authority)) return 'invalid authority in the request target';
  req.form = FORM_ABSOLUTE;
  req.authority = authority;
  req.path = ae === n ? '/' : target.charCodeAt(ae) === 0x2f ? target.slice(ae) : '/' + target.slice(ae);
  return null;
}

// ---------------------------------------------------------------------------

/**
 * One parser per connection. Not re-entrant: execute() and resume() must not
 * be called from inside a sink callback (pause() may be, and resume() right
 * after it inside the same callback just cancels the pause).
 */
export class RequestParser {
  // Limits (setLimits may change them between two reads: each check reads the current value).
  maxUrlBytes: number;
  maxHeaderBytes: number;
  maxHeaderCount: number;
  maxHeadBytes: number;
  maxChunkLineBytes: number;

  sink: RequestSink;
  /** Requests whose head was handed out (for logs and tests). */
  requests = 0;

  /** Set with R_ERROR (and by each refused head): a common/errors.ts code, its status, a short reason for logs. */
  errorCode = '';
  errorStatus = 0;
  errorReason = '';
  /** The error came after the head of its request was handed out (in its body or trailers). */
  errorInBody = false;
  /**
   * The head being scanned (or the last one) has the method HEAD (known
   * from the SP after the method on): an answer to it, a refusal too, has
   * no body (RFC 9110 9.3.2), however the head was split into reads.
   */
  methodIsHead = false;

  private state = S_HEAD;
  private paused = false;
  private running = false;

  // Kept input: keep[0, kScan) is the scanned prefix of the head or trailer
  // section in progress; keep[kScan, kLen) is input not scanned yet (only
  // while paused). Not paused => kLen === kScan.
  private keep: Buffer | null = null;
  private kLen = 0;
  private kScan = 0;

  // Head / trailer scanner, offsets relative to the section's first byte.
  private hs = H_LEAD;
  private leading = 0;
  private methodEnd = 0;
  private targetStart = 0;
  private targetEnd = 0;
  private versionIdx = 0;
  private major = 0;
  private minorV = 0;
  private nameStart = 0;
  private nameLen = 0;
  private valueFirst = -1;
  private valueLast = -1;
  private fieldCount = 0;
  private fieldBytes = 0;
  private high = false;
  /** The first kept error of the head being scanned ('' none): the scan reads on to the head's end (see the module comment). */
  private softCode = '';
  private softStatus = 0;
  private softReason = '';
  /** The section being scanned started in the current scanSection call: LINES holds its lines. */
  private oneCall = false;

  // Body.
  private remaining = 0;
  private cs = C_SIZE_FIRST;
  private chunkLine = 0;
  private chunkDigits = 0;
  private req: ParsedRequest | null = null;

  constructor(sink: RequestSink, opts: RequestParserOptions) {
    this.sink = sink;
    this.maxUrlBytes = this.maxHeaderBytes = this.maxHeaderCount = this.maxHeadBytes = this.maxChunkLineBytes = 0;
    this.setLimits(opts);
  }

  /**
   * New limits (a config reload: server.limits), applied to everything
   * parsed from the next execute()/resume() on, the head in progress
   * included (each check reads the current value; nothing on the hot path
   * changes). Must not be called from a sink callback.
   */
  setLimits(opts: RequestParserOptions): void {
    this.maxUrlBytes = opts.maxUrlBytes;
    this.maxHeaderBytes = opts.maxHeaderBytes;
    this.maxHeaderCount = opts.maxHeaderCount;
    this.maxHeadBytes = opts.maxHeadBytes ?? defaultMaxHeadBytes(opts.maxUrlBytes, opts.maxHeaderBytes, opts.maxHeaderCount);
    this.maxChunkLineBytes = opts.maxChunkLineBytes ?? DEFAULT_MAX_CHUNK_LINE_BYTES;
    if (LINES.length < 4 * (this.maxHeaderCount + 1)) LINES = new Int32Array(4 * (this.maxHeaderCount + 1));
  }

  /** Between requests with nothing buffered: an EOF here is a clean close; elsewhere it cuts a request. */
  get idle(): boolean {
    return (this.state === S_HEAD && this.hs === H_LEAD && this.leading === 0 && this.kLen === 0) || this.state === S_CLOSED;
  }

  /**
   * The last request asked to close the connection (Connection: close, or
   * HTTP/1.0 without keep-alive): RFC 9112 9.6 forbids processing further
   * requests on it, so any later bytes are ignored. The server closes after
   * its response.
   */
  get closed(): boolean {
    return this.state === S_CLOSED;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** Bytes held by the parser (a partial head, or input kept while paused). */
  get bufferedBytes(): number {
    return this.kLen;
  }

  /**
   * The input held unparsed while paused at the end of a request (the
   * bytes a client sent behind a WebSocket handshake), or null. A view of
   * the parser's buffer: valid until the next execute(); after
   * discardRest() the parser no longer refers to it, so it is the caller's.
   */
  kept(): Buffer | null {
    if (this.keep === null || this.kLen <= this.kScan) return null;
    return this.keep.subarray(this.kScan, this.kLen);
  }

  /**
   * Ignore everything from now on (the server closes the connection after
   * its answer, e.g. after a refused head whose body it will not read): the
   * parser becomes `closed`, holds nothing and hands out nothing more. May
   * be called from a sink callback.
   */
  discardRest(): void {
    if (this.state === S_ERROR) return;
    this.state = S_CLOSED;
    this.paused = false;
    this.req = null;
    this.keep = null;
    this.kLen = this.kScan = 0;
  }

  /** Stop handing out events after the current callback; input is kept (copied) until resume(). */
  pause(): void {
    if (this.state !== S_ERROR) this.paused = true;
  }

  /** Continue with the kept input. Returns R_OK, R_PAUSED or R_ERROR like execute(). */
  resume(): number {
    if (this.state === S_ERROR) return R_ERROR;
    this.paused = false;
    if (this.running) return R_OK;
    if (this.state === S_END) {
      this.running = true;
      this.endMessage(null);
      this.running = false;
      if (this.paused) return R_PAUSED;
    }
    if (this.kLen === this.kScan) return R_OK; // nothing unscanned
    return this.run(this.keep!, this.kScan, this.kLen, true);
  }

  /**
   * Feed `buf[start, end)` (one socket read). Returns R_OK when every byte
   * was used or kept, R_PAUSED when the sink paused (the rest is kept; stop
   * reading the socket until resume()), R_ERROR on a refused request.
   * This is the hot path -- change with care!
   */
  execute(buf: Buffer, start: number, end: number): number {
    if (this.state === S_ERROR) return R_ERROR;
    if (this.state === S_CLOSED) return R_OK;
    if (this.paused) {
      this.append(buf, start, end);
      return R_PAUSED;
    }
    if (start >= end) return R_OK;
    return this.run(buf, start, end, false);
  }

  // -------------------------------------------------------------------------

  private run(src: Buffer, from: number, end: number, srcIsKeep: boolean): number {
    this.running = true;
    let i = from;
    while (i < end) {
      switch (this.state) {
        case S_HEAD:
        case S_TRAILERS: {
          const r = this.scanSection(src, i, end, srcIsKeep);
          if (r < 0) return this.stop(R_ERROR);
          i = r;
          break;
        }
        case S_BODY_LENGTH: {
          const n = Math.min(this.remaining, end - i);
          this.remaining -= n;
          this.sink.onRequestBody(src, i, i + n);
          i += n;
          if (this.remaining === 0) this.endMessage(null);
          break;
        }
        case S_CHUNK_LINE: {
          i = this.scanChunkLine(src, i, end);
          if (i < 0) return this.stop(R_ERROR);
          break;
        }
        case S_CHUNK_DATA: {
          const n = Math.min(this.remaining, end - i);
          this.remaining -= n;
          this.sink.onRequestBody(src, i, i + n);
          i += n;
          if (this.remaining === 0) this.state = S_CHUNK_CR;
          break;
        }
        case S_CHUNK_CR: {
          if (src[i] !== CR) {
            this.fail(E_BAD_REQUEST, 400, src[i] === LF ? 'bare LF after chunk data' : 'chunk data longer than its size');
            return this.stop(R_ERROR);
          }
          i++;
          this.state = S_CHUNK_LF;
          break;
        }
        case S_CHUNK_LF: {
          if (src[i] !== LF) {
            this.fail(E_BAD_REQUEST, 400, 'bare CR after chunk data');
            return this.stop(R_ERROR);
          }
          i++;
          this.state = S_CHUNK_LINE;
          this.cs = C_SIZE_FIRST;
          this.chunkLine = 0;
          this.chunkDigits = 0;
          this.remaining = 0;
          break;
        }
        case S_END: {
          this.endMessage(null);
          break;
        }
        case S_CLOSED: {
          i = end;
          break;
        }
        default:
          return this.stop(R_ERROR);
      }
      if (this.paused) {
        // Keep what is left; positions in keep restart at 0.
        if (srcIsKeep) {
          if (i < end) src.copy(src, 0, i, end);
          this.kLen = end - i;
          this.kScan = 0;
        } else {
          this.kLen = this.kScan = 0;
          this.append(src, i, end);
        }
        return this.stop(R_PAUSED);
      }
    }
    // Kept input used up, but for the prefix of a section still incomplete (moved to 0 by scanSection).
    if (srcIsKeep) this.kLen = this.kScan;
    if (this.kLen === 0) this.keep = null;
    return this.stop(this.paused ? R_PAUSED : R_OK);
  }

  private stop(r: number): number {
    this.running = false;
    if (r === R_ERROR) {
      this.keep = null;
      this.kLen = this.kScan = 0;
    }
    return r;
  }

  /** Appends to keep (growing it by doubling). */
  private append(src: Buffer, a: number, b: number): void {
    const n = b - a;
    if (n <= 0) return;
    let k = this.keep;
    const need = this.kLen + n;
    if (k === null || k.length < need) {
      const grown = Buffer.allocUnsafeSlow(Math.max(KEEP_MIN_BYTES, need, k === null ? 0 : k.length * 2));
      if (k !== null && this.kLen > 0) k.copy(grown, 0, 0, this.kLen);
      this.keep = k = grown;
    }
    src.copy(k, this.kLen, a, b);
    this.kLen = need;
  }

  private fail(code: string, status: number, reason: string): number {
    if (this.softCode !== '') {
      // A kept error came first in this head: it names the verdict (the first rule broken).
      code = this.softCode;
      status = this.softStatus;
      reason = this.softReason;
      this.softCode = '';
    }
    this.state = S_ERROR;
    this.paused = false;
    this.errorCode = code;
    this.errorStatus = status;
    this.errorReason = reason;
    this.errorInBody = this.req !== null;
    return -1;
  }

  private endMessage(trailers: string[] | null): void {
    const keep = this.req!.keepAlive;
    this.req = null;
    this.methodIsHead = false;
    this.state = keep ? S_HEAD : S_CLOSED;
    this.hs = H_LEAD;
    this.leading = 0;
    this.sink.onRequestEnd(trailers);
  }

  /**
   * Scans the head (S_HEAD) or the trailer section (S_TRAILERS) from
   * `src[from]` on. Returns where it stopped (end: section incomplete, its
   * bytes kept), or -1 on error.
   */
  private scanSection(src: Buffer, from: number, end: number, srcIsKeep: boolean): number {
    let i = from;
    let hs = this.hs;
    if (hs <= H_LEAD_LF) {
      // Empty lines before a request line (RFC 9112 2.2); not part of the head.
      for (; i < end; i++) {
        const c = src[i]!;
        if (hs === H_LEAD) {
          if (c === CR) hs = H_LEAD_LF;
          else if (TCHAR[c] === 1) break;
          else return this.fail(E_BAD_REQUEST, 400, c === LF ? 'bare LF before the request line' : 'invalid method');
        } else {
          if (c !== LF) return this.fail(E_BAD_REQUEST, 400, 'bare CR before the request line');
          if (++this.leading > MAX_LEADING_EMPTY_LINES) return this.fail(E_BAD_REQUEST, 400, 'too many empty lines before the request line');
          hs = H_LEAD;
        }
      }
      if (i === end) {
        this.hs = hs;
        return end;
      }
      hs = H_METHOD;
      this.resetSection();
      from = i;
    }
    // L(p) = p - base: offset in the section; a prefix already in keep
    // (keep[0, kScan), also when src is keep itself) counts.
    const base = from - this.kScan;
    this.oneCall = this.kScan === 0;
    const cap = base + this.maxHeadBytes;
    const stop = end < cap ? end : cap;
    i = this.scanLines(src, i, stop, base, hs);
    if (i < 0) return -1;
    if (this.hs === -1) {
      // Complete: the section is src[base, i) or keep[0, kScan) + src[from, i).
      let hb = src;
      let hStart = base;
      let hEnd = i;
      if (!srcIsKeep && this.kScan > 0) {
        this.append(src, from, i);
        hb = this.keep!;
        hStart = 0;
        hEnd = this.kLen;
      }
      this.kScan = 0;
      if (!srcIsKeep) {
        this.kLen = 0;
        this.keep = null;
      }
      if (this.state === S_HEAD) return this.onHead(hb, hStart, hEnd) ? i : -1;
      return this.onTrailers(hb, hStart, hEnd) ? i : -1;
    }
    if (i < end) {
      // Stopped at the cap with bytes still to come.
      return this.fail(E_HEADERS_TOO_LARGE, 431, this.state === S_HEAD ? 'request head too large' : 'trailer section too large');
    }
    // Incomplete: keep its bytes (copied: src is a shared read buffer).
    if (srcIsKeep) {
      if (base > 0) src.copy(src, 0, base, end);
      this.kScan = this.kLen = end - base;
    } else if (this.kScan > 0) {
      this.append(src, from, end);
      this.kScan = this.kLen;
    } else {
      this.kLen = 0;
      this.append(src, base, end);
      this.kScan = this.kLen;
    }
    return end;
  }

  /**
   * A kept error (see the module comment) at this byte of a head: the first
   * one is recorded and the scan goes on (returns 0). In a trailer section
   * (the body was handed out already) every error is final: -1.
   */
  private soft(code: string, status: number, reason: string): number {
    if (this.state !== S_HEAD) return this.fail(code, status, reason);
    if (this.softCode === '') {
      this.softCode = code;
      this.softStatus = status;
      this.softReason = reason;
    }
    return 0;
  }

  /** The 4-byte method of the section (its first bytes: in keep[0, kScan), then in src from base + kScan) is `HEAD`. */
  private isHeadMethod(src: Buffer, base: number): boolean {
    const k = this.kScan;
    const keep = this.keep;
    for (let j = 0; j < 4; j++) {
      const c = j < k ? keep![j] : src[base + j];
      if (c !== HEAD_BYTES[j]) return false;
    }
    return true;
  }

  private resetSection(): void {
    this.methodIsHead = false;
    this.softCode = '';
    this.fieldCount = 0;
    this.fieldBytes = 0;
    this.high = false;
    this.valueFirst = -1;
    this.valueLast = -1;
  }

  /**
   * The byte-level state machine of a head or trailer section, over
   * `src[i, stop)`. Sets this.hs (-1 when the section is complete) and
   * returns the position after the last byte used, or -1 on error.
   */
  private scanLines(src: Buffer, i: number, stop: number, base: number, hs: number): number {
    while (i < stop) {
      switch (hs) {
        case H_METHOD: {
          while (i < stop && TCHAR[src[i]!] === 1) i++;
          if (i === stop) break;
          // The request line's first word is its method even when the line is bad ("HEAD\r\n"): a
          // refused HEAD gets no body (RFC 9110 9.3.2), so a client reading it as one stays in step.
          if (i - base === 4 && (src[i] === SP || src[i] === CR)) this.methodIsHead = this.isHeadMethod(src, base);
          if (src[i] !== SP) return this.fail(E_BAD_REQUEST, 400, 'invalid method');
          this.methodEnd = i - base;
          i++;
          hs = H_TARGET_START;
          break;
        }
        case H_TARGET_START: {
          const c = src[i]!;
          if (TARGET[c] !== 1) return this.fail(E_BAD_REQUEST, 400, c === SP ? 'more than one space in the request line' : 'invalid request target');
          this.targetStart = i - base;
          hs = H_TARGET;
          break;
        }
        case H_TARGET: {
          // After a kept error the length is no longer counted (the head cap still bounds it).
          const limit = this.softCode !== '' ? stop : base + this.targetStart + this.maxUrlBytes;
          const lim = limit < stop ? limit : stop;
          while (i < lim && TARGET[src[i]!] === 1) i++;
          if (i === stop) break;
          const c = src[i]!;
          if (i === limit && TARGET[c] === 1) {
            this.soft(E_URL_TOO_LONG, 414, 'request target too long');
            break;
          }
          if (c !== SP) {
            if (c === CR || c === LF) return this.fail(E_BAD_REQUEST, 400, 'no HTTP version in the request line');
            if (c === 0) return this.fail(E_BAD_REQUEST, 400, 'NUL in the request target');
            // Another CTL or DEL: refused, but the line is still delimited by SP and CRLF.
            this.soft(E_BAD_REQUEST, 400, 'invalid character in the request target');
            i++;
            break;
          }
          this.targetEnd = i - base;
          i++;
          this.versionIdx = 0;
          hs = H_VERSION;
          break;
        }
        case H_VERSION: {
          const c = src[i]!;
          const v = this.versionIdx;
          if (v < 5) {
            if (c !== VERSION_PREFIX[v]) return this.fail(E_BAD_REQUEST, 400, c === SP ? 'more than one space in the request line' : 'invalid HTTP version');
          } else if (v === 5 || v === 7) {
            if (c < 0x30 || c > 0x39) return this.fail(E_BAD_REQUEST, 400, 'invalid HTTP version');
            if (v === 5) this.major = c - 0x30;
            else this.minorV = c - 0x30;
          } else if (v === 6) {
            if (c !== 0x2e) return this.fail(E_BAD_REQUEST, 400, 'invalid HTTP version');
          } else {
            if (c !== CR) return this.fail(E_BAD_REQUEST, 400, c === LF ? 'bare LF after the request line' : 'invalid HTTP version');
            // RFC 9110 15.6.6: a major version other than 1 in an HTTP/1 request line is 505 (the framing of
            // what follows is unknown: final). RFC 9112 2.3: a higher minor (HTTP/1.2) is served as HTTP/1.1.
            if (this.major !== 1) return this.fail(E_VERSION_NOT_SUPPORTED, 505, 'HTTP version not supported');
            if (this.minorV > 1) this.minorV = 1;
            hs = H_RL_LF;
          }
          this.versionIdx = v + 1;
          i++;
          break;
        }
        case H_RL_LF:
        case H_LINE_LF: {
          if (src[i] !== LF) return this.fail(E_BAD_REQUEST, 400, 'bare CR in the head');
          i++;
          hs = H_LINE_START;
          break;
        }
        case H_LINE_START: {
          const c = src[i]!;
          if (TCHAR[c] === 1) {
            if (this.fieldCount >= this.maxHeaderCount && this.softCode === '' && this.soft(E_HEADERS_TOO_LARGE, 431, 'too many header fields') < 0) return -1;
            this.nameStart = i - base;
            hs = H_NAME;
            break;
          }
          if (c === CR) {
            i++;
            hs = H_END_LF;
            break;
          }
          if (c === SP || c === HTAB) {
            return this.fail(E_BAD_REQUEST, 400, this.fieldCount === 0 && this.state === S_HEAD ? 'whitespace before the first header field' : 'obsolete line folding');
          }
          if (c === LF) return this.fail(E_BAD_REQUEST, 400, 'bare LF in the head');
          return this.fail(E_BAD_REQUEST, 400, c === 0x3a ? 'empty header name' : 'invalid header name');
        }
        case H_NAME: {
          // name bytes count toward maxHeaderBytes: the first one over is refused.
          const limit = this.softCode !== '' ? stop : base + this.nameStart + this.maxHeaderBytes - this.fieldBytes;
          const lim = limit < stop ? limit : stop;
          while (i < lim && TCHAR[src[i]!] === 1) i++;
          if (i === stop) break;
          const c = src[i]!;
          if (i === limit && TCHAR[c] === 1) {
            if (this.soft(E_HEADERS_TOO_LARGE, 431, 'header fields too large') < 0) return -1;
            break;
          }
          if (c !== 0x3a) {
            return this.fail(E_BAD_REQUEST, 400, c === SP || c === HTAB ? 'whitespace between header name and colon' : c === CR || c === LF ? 'header line without colon' : 'invalid header name');
          }
          this.nameLen = i - base - this.nameStart;
          this.valueFirst = -1;
          this.valueLast = -1;
          i++;
          hs = H_VALUE;
          break;
        }
        case H_VALUE: {
          if (this.softCode !== '' && this.state === S_HEAD) {
            // After a kept error: the line is only delimited (nothing recorded,
            // nothing counted); a CTL or DEL is refused already, CR, LF and NUL still judged.
            while (i < stop) {
              const c = src[i]!;
              if (c === CR || c === LF || c === 0) break;
              i++;
            }
            if (i === stop) break;
            const c = src[i]!;
            if (c !== CR) return this.fail(E_BAD_REQUEST, 400, c === LF ? 'bare LF in the head' : 'NUL in a header value');
            this.fieldCount++;
            i++;
            hs = H_LINE_LF;
            break;
          }
          // Value bytes from the first non-OWS one to the last count toward
          // maxHeaderBytes (trailing OWS does not): a VCHAR or obs-text byte
          // at or past `limit` is refused. Offsets are section offsets.
          let first = this.valueFirst;
          if (first < 0) {
            while (i < stop && (src[i] === SP || src[i] === HTAB)) i++;
            if (i === stop) break;
            first = this.valueFirst = i - base;
            this.valueLast = first - 1;
          }
          const limit = base + first + this.maxHeaderBytes - this.fieldBytes - this.nameLen;
          const lim = limit < i ? i : limit < stop ? limit : stop;
          let last = this.valueLast;
          let run = i;
          for (;;) {
            while (i < lim && VALUE_FAST[src[i]!] === 1) i++;
            if (i > run) {
              // The run may end in OWS: the last non-OWS byte of it counts.
              let j = i - 1;
              while (j >= run && (src[j] === SP || src[j] === HTAB)) j--;
              if (j >= run) last = j - base;
            }
            if (i === lim) break;
            const t = VALUE[src[i]!]!;
            if (t === 0) break;
            if (t === 3) {
              this.high = true;
              last = i - base;
            }
            run = ++i;
          }
          this.valueLast = last;
          if (i === stop) break;
          let c = src[i]!;
          if (i === lim && c !== CR) {
            // At the limit: only OWS (then CR) may follow.
            while (i < stop && (src[i] === SP || src[i] === HTAB)) i++;
            if (i === stop) break;
            c = src[i]!;
            if (VALUE[c] !== 0) {
              if (this.soft(E_HEADERS_TOO_LARGE, 431, 'header fields too large') < 0) return -1;
              break;
            }
          }
          if (c !== CR) {
            if (c === LF || c === 0) return this.fail(E_BAD_REQUEST, 400, c === LF ? 'bare LF in the head' : 'NUL in a header value');
            // Another CTL or DEL: refused, but the line is still delimited by CRLF.
            if (this.soft(E_BAD_REQUEST, 400, 'control character in a header value') < 0) return -1;
            break;
          }
          const k = this.fieldCount * 4;
          LINES[k] = this.nameStart;
          LINES[k + 1] = this.nameLen;
          LINES[k + 2] = first;
          LINES[k + 3] = last + 1;
          this.fieldBytes += this.nameLen + (last + 1 - first);
          this.fieldCount++;
          i++;
          hs = H_LINE_LF;
          break;
        }
        case H_END_LF: {
          if (src[i] !== LF) return this.fail(E_BAD_REQUEST, 400, 'bare CR in the head');
          this.hs = -1;
          return i + 1;
        }
        default:
          return this.fail(E_BAD_REQUEST, 400, 'internal parser state');
      }
    }
    this.hs = hs;
    return i;
  }

  /** The complete head is `b[s, e)`: build the request, apply the semantic rules, hand it out. */
  private onHead(b: Buffer, s: number, e: number): boolean {
    const h = b.toString('latin1', s, e);
    if (this.softCode !== '') return this.onRefusedHead(h);
    const req = new ParsedRequest();
    req.raw = h;
    req.highBytes = this.high;
    const mEnd = this.methodEnd;
    const method = internMethod(h, mEnd);
    req.method = method;
    const target = h.slice(this.targetStart, this.targetEnd);
    req.target = target;
    const minor = this.minorV;
    req.minor = minor;

    // Field lines (pass 1 checked the syntax: every line has a colon and a token name).
    const count = this.fieldCount;
    const headers: string[] = new Array(count * 2);
    req.headers = headers;
    const lines = this.oneCall ? LINES : this.lineOffsets(h, this.targetEnd + 11, count);
    let host: string | null = null;
    let hostCount = 0;
    let cl = -1;
    let clBad = false;
    let te: string | null = null;
    let connection: string | null = null;
    let expect: string | null = null;
    for (let f = 0; f < count; f++) {
      const k = f * 4;
      const ns = lines[k]!;
      const name = lowerName(h, ns, ns + lines[k + 1]!);
      const value = h.slice(lines[k + 2]!, lines[k + 3]!);
      headers[f * 2] = name;
      headers[f * 2 + 1] = value;
      switch (name.length) {
        case 4:
          if (name === 'host') {
            host = value;
            hostCount++;
          }
          break;
        case 6:
          if (name === 'expect') expect = expect === null ? value : expect + ', ' + value;
          break;
        case 10:
          if (name === 'connection') connection = connection === null ? value : connection + ', ' + value;
          break;
        case 14:
          if (name === 'content-length') {
            const n = parseContentLength(value);
            if (n < 0 || (cl >= 0 && n !== cl)) clBad = true;
            cl = n;
          }
          break;
        case 17:
          if (name === 'transfer-encoding') te = te === null ? value : te + ', ' + value;
          break;
      }
    }

    // Framing (RFC 9112 6.1-6.3): decided before anything else, since a
    // wrong guess here would read body bytes as the next request.
    const bad = framing(req, minor, cl, clBad, te);
    if (bad !== null) return this.failHead(bad);
    persistence(req, minor, connection, expect);

    // Request-target form against the method (RFC 9112 3.2). The framing is
    // known from here on: refusals keep the connection (refuse()).
    const t0 = target.charCodeAt(0);
    if (t0 === 0x2f) {
      // CONNECT too: the gateway does not tunnel, the server answers 501 whatever the form.
      req.path = target;
    } else if (mEnd === 7 && method === 'CONNECT' && isAuthorityForm(target)) {
      // authority-form = uri-host ":" port, port required (3.2.3).
      req.form = FORM_AUTHORITY;
      req.authority = target;
    } else if (t0 === 0x2a && target.length === 1) {
      if (method !== 'OPTIONS') return this.refuse(req, E_BAD_REQUEST, 400, 'asterisk-form only with OPTIONS');
      req.form = FORM_ASTERISK;
      req.path = '*';
    } else {
      const why = absoluteForm(req, target);
      if (why !== null) return this.refuse(req, E_BAD_REQUEST, 400, why);
    }

    // Host (RFC 9112 3.2): exactly one, valid; HTTP/1.1 must send it.
    if (hostCount > 1) return this.refuse(req, E_BAD_HOST, 400, 'more than one Host header');
    if (hostCount === 0) {
      if (minor === 1) return this.refuse(req, E_BAD_HOST, 400, 'no Host header');
    } else if (!isValidHostValue(host!)) {
      return this.refuse(req, E_BAD_HOST, 400, 'invalid Host header');
    }
    req.host = host;
    return this.handOut(req, false);
  }

  /**
   * A head scanned after a kept error (this.softCode): only the request
   * line and the framing, persistence and Expect fields are read (the scan
   * checked the line syntax: every field line is `token ":" value CRLF`).
   */
  private onRefusedHead(h: string): boolean {
    const req = new ParsedRequest();
    req.method = internMethod(h, this.methodEnd);
    req.target = h.slice(this.targetStart, this.targetEnd);
    const minor = this.minorV;
    req.minor = minor;
    let cl = -1;
    let clBad = false;
    let te: string | null = null;
    let connection: string | null = null;
    let expect: string | null = null;
    const last = h.length - 2; // the empty line ending the head
    for (let pos = this.targetEnd + 11; pos < last;) {
      const eol = h.indexOf('\r\n', pos);
      const colon = h.indexOf(':', pos);
      const n = colon - pos;
      if (n === 14 || n === 17 || n === 10 || n === 6) {
        let vs = colon + 1;
        let ve = eol;
        while (vs < ve && (h.charCodeAt(vs) === SP || h.charCodeAt(vs) === HTAB)) vs++;
        while (ve > vs && (h.charCodeAt(ve - 1) === SP || h.charCodeAt(ve - 1) === HTAB)) ve--;
        if (n === 14 && nameIs(h, pos, 'content-length')) {
          const v = parseContentLength(h.slice(vs, ve));
          if (v < 0 || (cl >= 0 && v !== cl)) clBad = true;
          cl = v;
        } else if (n === 17 && nameIs(h, pos, 'transfer-encoding')) {
          te = te === null ? h.slice(vs, ve) : te + ', ' + h.slice(vs, ve);
        } else if (n === 10 && nameIs(h, pos, 'connection')) {
          connection = connection === null ? h.slice(vs, ve) : connection + ', ' + h.slice(vs, ve);
        } else if (n === 6 && nameIs(h, pos, 'expect')) {
          expect = expect === null ? h.slice(vs, ve) : expect + ', ' + h.slice(vs, ve);
        }
      }
      pos = eol + 2;
    }
    // Unknown framing: final (fail() reports the kept error that came first).
    const bad = framing(req, minor, cl, clBad, te);
    if (bad !== null) return this.failHead(bad);
    persistence(req, minor, connection, expect);
    return this.refuse(req, this.softCode, this.softStatus, this.softReason);
  }

  /** Hands out a well-framed head refused by `code` (onRequestRefused). */
  private refuse(req: ParsedRequest, code: string, status: number, reason: string): boolean {
    this.softCode = '';
    req.errorCode = this.errorCode = code;
    req.errorStatus = this.errorStatus = status;
    req.errorReason = this.errorReason = reason;
    return this.handOut(req, true);
  }

  /** Hands `req` to the sink and sets up for its body (or its end). */
  private handOut(req: ParsedRequest, refused: boolean): boolean {
    this.req = req;
    this.requests++;
    if (req.bodyKind === BODY_CHUNKED) {
      this.state = S_CHUNK_LINE;
      this.cs = C_SIZE_FIRST;
      this.chunkLine = 0;
      this.chunkDigits = 0;
      this.remaining = 0;
    } else if (req.bodyKind === BODY_LENGTH) {
      this.state = S_BODY_LENGTH;
      this.remaining = req.contentLength;
    } else {
      this.state = S_END;
    }
    if (refused) this.sink.onRequestRefused(req);
    else this.sink.onRequestHead(req);
    // (discardRest() in the callback: the parser is closed, nothing ends.)
    if (this.state === S_END && !this.paused) this.endMessage(null);
    return true;
  }

  private failHead(reason: string): boolean {
    this.fail(E_BAD_REQUEST, 400, reason);
    return false;
  }

  /** The trailer section is `b[s, e)` (field lines then CRLF). */
  private onTrailers(b: Buffer, s: number, e: number): boolean {
    let trailers: string[] | null = null;
    const count = this.fieldCount;
    if (count > 0) {
      const h = b.toString('latin1', s, e);
      const lines = this.oneCall ? LINES : this.lineOffsets(h, 0, count);
      trailers = new Array(count * 2);
      for (let f = 0; f < count; f++) {
        const k = f * 4;
        trailers[f * 2] = lowerName(h, lines[k]!, lines[k]! + lines[k + 1]!);
        trailers[f * 2 + 1] = h.slice(lines[k + 2]!, lines[k + 3]!);
      }
    }
    this.endMessage(trailers);
    return true;
  }

  /**
   * The LINES layout recomputed from the section string, for a section that
   * was scanned over several calls (its syntax is already checked).
   */
  private lineOffsets(h: string, pos: number, count: number): Int32Array {
    const out = LINES;
    for (let f = 0; f < count; f++) {
      const eol = h.indexOf('\r\n', pos);
      const colon = h.indexOf(':', pos);
      let vs = colon + 1;
      let ve = eol;
      while (vs < ve && (h.charCodeAt(vs) === SP || h.charCodeAt(vs) === HTAB)) vs++;
      while (ve > vs && (h.charCodeAt(ve - 1) === SP || h.charCodeAt(ve - 1) === HTAB)) ve--;
      const k = f * 4;
      out[k] = pos;
      out[k + 1] = colon - pos;
      out[k + 2] = vs;
      out[k + 3] = ve;
      pos = eol + 2;
    }
    return out;
  }

  /**
   * The chunk-size line, byte by byte (RFC 9112 7.1): nothing of it is
   * kept, so a line split across reads needs no copy.
   */
  private scanChunkLine(src: Buffer, i: number, end: number): number {
    let cs = this.cs;
    const room = this.maxChunkLineBytes - this.chunkLine;
    const stop = end - i > room ? i + room : end;
    const i0 = i;
    for (; i < stop; i++) {
      const c = src[i]!;
      switch (cs) {
        case C_SIZE_FIRST:
        case C_SIZE: {
          const v = HEX[c]!;
          if (v !== 0) {
            // RFC 9112 7.1: chunk-size = 1*HEXDIG; leading zeros do not change the value: only the
            // significant digits are counted (the line limit bounds the zeros).
            if ((v !== 1 || this.chunkDigits !== 0) && ++this.chunkDigits > MAX_CHUNK_SIZE_DIGITS) {
              return this.fail(E_BAD_REQUEST, 400, 'chunk size too large');
            }
            this.remaining = this.remaining * 16 + v - 1;
            cs = C_SIZE;
            continue;
          }
          if (cs === C_SIZE_FIRST) return this.fail(E_BAD_REQUEST, 400, c === LF ? 'bare LF in a chunk line' : 'invalid chunk size');
          if (c === CR) cs = C_LF;
          else if (c === 0x3b) cs = C_EXT_NAME_START;
          else if (c === SP || c === HTAB) cs = C_BWS_SEMI;
          else return this.fail(E_BAD_REQUEST, 400, c === LF ? 'bare LF in a chunk line' : 'invalid chunk size');
          continue;
        }
        case C_BWS_SEMI:
          if (c === 0x3b) cs = C_EXT_NAME_START;
          else if (c !== SP && c !== HTAB) return this.badExt(c);
          continue;
        case C_EXT_NAME_START:
          if (TCHAR[c] === 1) cs = C_EXT_NAME;
          else if (c !== SP && c !== HTAB) return this.badExt(c);
          continue;
        case C_EXT_NAME:
          if (TCHAR[c] === 1) continue;
          if (c === 0x3d) cs = C_EXT_VALUE_START;
          else if (c === 0x3b) cs = C_EXT_NAME_START;
          else if (c === CR) cs = C_LF;
          else if (c === SP || c === HTAB) cs = C_EXT_AFTER_NAME;
          else return this.badExt(c);
          continue;
        case C_EXT_AFTER_NAME:
          if (c === 0x3d) cs = C_EXT_VALUE_START;
          else if (c === 0x3b) cs = C_EXT_NAME_START;
          else if (c !== SP && c !== HTAB) return this.badExt(c);
          continue;
        case C_EXT_VALUE_START:
          if (TCHAR[c] === 1) cs = C_EXT_TOKEN;
          else if (c === 0x22) cs = C_EXT_QUOTED;
          else if (c !== SP && c !== HTAB) return this.badExt(c);
          continue;
        case C_EXT_TOKEN:
          if (TCHAR[c] === 1) continue;
          if (c === 0x3b) cs = C_EXT_NAME_START;
          else if (c === CR) cs = C_LF;
          else if (c === SP || c === HTAB) cs = C_BWS_SEMI;
          else return this.badExt(c);
          continue;
        case C_EXT_QUOTED:
          if (c === 0x22) cs = C_EXT_TOKEN_END;
          else if (c === 0x5c) cs = C_EXT_QPAIR;
          else if (QDTEXT[c] !== 1) return this.badExt(c);
          continue;
        case C_EXT_QPAIR:
          if (QDTEXT[c] !== 1 && c !== 0x22 && c !== 0x5c) return this.badExt(c);
          cs = C_EXT_QUOTED;
          continue;
        case C_EXT_TOKEN_END:
          if (c === 0x3b) cs = C_EXT_NAME_START;
          else if (c === CR) cs = C_LF;
          else if (c === SP || c === HTAB) cs = C_BWS_SEMI;
          else return this.badExt(c);
          continue;
        default: {
          // C_LF
          if (c !== LF) return this.fail(E_BAD_REQUEST, 400, 'bare CR in a chunk line');
          i++;
          if (this.remaining === 0) {
            this.state = S_TRAILERS;
            this.hs = H_LINE_START;
            this.resetSection();
            this.kScan = 0;
          } else {
            this.state = S_CHUNK_DATA;
          }
          return i;
        }
      }
    }
    this.chunkLine += i - i0;
    this.cs = cs;
    if (i < end) return this.fail(E_BAD_REQUEST, 400, 'chunk line too long');
    return i;
  }

  private badExt(c: number): number {
    return this.fail(E_BAD_REQUEST, 400, c === LF ? 'bare LF in a chunk line' : 'invalid chunk extension');
  }
}
