/**
 * The access log: one line per request, as JSON (fields chosen in the
 * config) or nginx's "combined" format, written off the request path.
 *
 * Why hand-written and not pino: this runs once per request on the hot
 * path, and its budget is a few percent of a ~20 µs request. A line here is
 * one string concatenation from a per-thread scratch record (no object per
 * request, no closure, no generic serializer), copied as UTF-8 into this
 * worker's shared-memory ring (common/access-ring.ts); the engine's writer
 * (engine/access-writer.ts) writes the rings out from shared memory. No
 * buffer or message per line or batch, and a slow destination is the
 * writer's problem (full rings drop and count lines), never a request's.
 *
 * Secrets: no request header is logged but Host, User-Agent and Referer;
 * the values of parameters named in `redactQuery` are logged as [REDACTED]
 * wherever they appear: the query, the path's matrix parameters and the
 * Referer (its query, fragment and credentials), whatever the encoding of
 * the name (SecretParams).
 */
import { type AccessRing, RingWriter } from '../common/access-ring.js';
import type { AccessLogConfig, AccessLogField } from '../common/config/types.js';
/** Path and query longer than this (a 414, an attack) are cut, with a mark, to keep lines short. */
const MAX_TARGET_LOGGED = 2048;

function cap(s: string): string {
  return s.length <= MAX_TARGET_LOGGED ? s : s.slice(0, MAX_TARGET_LOGGED) + '...[truncated]';
}

/**
 * One request, as the access log needs it: filled in place by whoever ends
 * the request (the server's early answers, the exchange), then written.
 * One per thread: requests end one at a time.
 */
export const entry = {
  /** performance.now() at arrival (ms). */
  t0: 0,
  requestId: '',
  client: '',
  method: '',
  host: '',
  /** The request target's path as received. */
  path: '',
  /** The query as received, without `?` ('' for none). */
  query: '',
  status: 0,
  bytesReceived: 0,
  bytesSent: 0,
  durationMs: 0,
  /** Request sent upstream to response head, ms; -1 when no upstream answered. */
  upstreamMs: -1,
  route: '',
  upstream: '',
  target: '',
  /** Gateway error code ('' for none). */
  error: '',
  userAgent: '',
  referer: '',
  /** Retries the request took (upstream `retry`), 0 for none. */
  retries: 0,
  /** The consumer its API key belongs to (routes with auth), '' for none. */
  consumer: '',
};

const FIELD_IDS: Readonly<Record<AccessLogField, number>> = {
  time: 0, request_id: 1, client: 2, method: 3, host: 4, path: 5, query: 6, status: 7, bytes_received: 8, bytes_sent: 9,
  duration_ms: 10, upstream_ms: 11, route: 12, upstream: 13, target: 14, error: 15, user_agent: 16, retries: 17, consumer: 18,
};

/** Characters that need escaping inside a JSON string. */
const JSON_ESCAPE = /["\\\u0000-\u001f\u2028\u2029]/;

function jsonText(s: string): string {
  return JSON_ESCAPE.test(s) ? JSON.stringify(s) : '"' + s + '"';
}

/** nginx's escaping in the combined format: `"`, `\` and non-printable bytes as \xHH. */
const COMBINED_ESCAPE = /["\\\u0000-\u001f\u007f-\uffff]/;

function combinedText(s: string): string {
  if (s === '') return '-';
  if (!COMBINED_ESCAPE.test(s)) return s;
  let out = '';
  for (const b of Buffer.from(s, 'utf8')) {
    out += b === 0x22 || b === 0x5c || b < 0x20 || b >= 0x7f ? '\\x' + (b < 16 ? '0' : '') + b.toString(16).toUpperCase() : String.fromCharCode(b);
  }
  return out;
}

/**
 * Milliseconds with 3 decimals, as text, from integers only: turning a
 * float into text (shortest round-trip digits) costs several times more.
 */
function ms(x: number): string {
  const us = Math.round(x * 1000);
  const whole = Math.floor(us / 1000);
  const frac = us - whole * 1000;
  return whole + (frac < 10 ? '.00' : frac < 100 ? '.0' : '.') + frac;
}

// Time text is rebuilt once per second; the milliseconds are appended.
let isoSecond = -1;
let isoPrefix = '';
let clfSecond = -1;
let clfText = '';
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

function isoTime(epochMs: number): string {
  const second = Math.floor(epochMs / 1000);
  if (second !== isoSecond) {
    isoSecond = second;
    isoPrefix = new Date(second * 1000).toISOString().slice(0, 20); // 2026-11-30T01:02:03.
  }
  const m = Math.floor(epochMs - second * 1000);
  return isoPrefix + (m < 10 ? '00' : m < 100 ? '0' : '') + m + 'Z';
}

/** `30/Nov/2026:01:02:03 +0000` (nginx's $time_local, in UTC). */
function clfTime(epochMs: number): string {
  const second = Math.floor(epochMs / 1000);
  if (second !== clfSecond) {
    clfSecond = second;
    const d = new Date(second * 1000);
    const p = (n: number) => (n < 10 ? '0' : '') + n;
    clfText = `${p(d.getUTCDate())}/${MONTHS[d.getUTCMonth()]}/${d.getUTCFullYear()}:${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
  }
  return clfText;
}

/** What a redacted value is logged as. */
export const REDACTED_VALUE = '[REDACTED]';

/** `%HH` -> the byte as a char (latin1): names in the list are ASCII; never throws, unlike decodeURIComponent. */
function percentDecode(s: string): string {
  return s.replace(/%([0-9A-Fa-f]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
}

/**
 * Characters a name is compared without: separators and spaces (`+` is a
 * form-encoded space; `.` and space become `_` in PHP's names), controls,
 * and invisible Unicode spaces.
 */
const NAME_NOISE = /[\u0000-\u0020\u007f\u0085\u00a0\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u2064\u3000\ufeff._+-]/g;

/**
 * A query (or matrix) parameter name as `redactQuery` compares it: `+` as a
 * space, percent-decoded (up to three times: a name encoded twice is still
 * caught), lowercase, anything from its first `[` on dropped (`token[]`,
 * `token[x]`, PHP/Rails arrays), and without `-`, `_`, `.`, `+`, spaces and
 * controls anywhere (` token`, `api-key`, `API.KEY`, `Api_Key` are all
 * `apikey`). A false positive hides a value; a false negative leaks one.
 */
export function canonicalParamName(raw: string): string {
  let s = raw;
  if (s.indexOf('+') !== -1) s = s.replace(/\+/g, ' ');
  for (let i = 0; i < 3 && s.indexOf('%') !== -1; i++) {
    const d = percentDecode(s);
    if (d === s) break;
    s = d;
  }
  s = s.toLowerCase();
  const bracket = s.indexOf('[');
  if (bracket > 0) s = s.slice(0, bracket);
  return s.replace(NAME_NOISE, '');
}

/**
 * The compiled `redactQuery` list: names compared in canonical form
 * (canonicalParamName); an entry with `*` matches any characters there
 * (`*token` matches `access_token`, `csrf-token`...).
 */
export class SecretParams {
  private readonly exact = new Set<string>();
  /** Entries with `*`: their canonical parts, split at the `*`s. */
  private readonly globs: string[][] = [];

  constructor(names: readonly string[]) {
    for (const n of names) {
      if (n.indexOf('*') === -1) {
        const c = canonicalParamName(n);
        if (c !== '') this.exact.add(c);
      } else {
        this.globs.push(n.split('*').map((part) => (part === '' ? '' : canonicalParamName(part))));
      }
    }
  }

  get empty(): boolean {
    return this.exact.size === 0 && this.globs.length === 0;
  }

  /**
   * Names as sent -> whether they are secrets: traffic repeats the same few
   * names (page, sort, utm_source...), and one Map lookup costs a tenth of
   * canonicalParamName. Bounded: emptied when full (random names only cost
   * the slow path).
   */
  private readonly seen = new Map<string, boolean>();

  /** Whether a parameter written `raw` (as sent) is a secret. */
  matches(raw: string): boolean {
    let m = this.seen.get(raw);
    if (m === undefined) {
      m = this.decide(canonicalParamName(raw));
      if (this.seen.size >= SEEN_MAX) this.seen.clear();
      this.seen.set(raw, m);
    }
    return m;
  }

  private decide(name: string): boolean {
    if (this.exact.has(name)) return true;
    for (const g of this.globs) if (globMatch(g, name)) return true;
    return false;
  }
}

/** Names remembered per worker by SecretParams. */
const SEEN_MAX = 1024;

/** `parts` (a pattern split at its `*`s) against `s`: first part a prefix, last a suffix, the others in order between. */
function globMatch(parts: readonly string[], s: string): boolean {
  const first = parts[0]!;
  const last = parts[parts.length - 1]!;
  if (s.length < first.length + last.length || !s.startsWith(first) || !s.endsWith(last)) return false;
  let at = first.length;
  const end = s.length - last.length;
  for (let i = 1; i < parts.length - 1; i++) {
    const p = parts[i]!;
    if (p === '') continue;
    const k = s.indexOf(p, at);
    if (k === -1 || k + p.length > end) return false;
    at = k + p.length;
  }
  return true;
}

/** Separators of `name=value` pairs: `&`, `;` (the older form, and matrix parameters), and `?`/`#` (a URL nested unencoded). */
function isPairSeparator(c: number): boolean {
  return c === 38 || c === 59 || c === 63 || c === 35;
}

/**
 * `s` (pairs separated by `&`, `;`, `?` or `#`) with the value of every
 * pair whose name is a secret replaced by [REDACTED]; `s` itself when there
 * is none. A pair without `=` has no value to hide.
 */
function redactPairs(s: string, secrets: SecretParams): string {
  let out: string | null = null;
  let copied = 0;
  let start = 0;
  let eq = -1;
  const n = s.length;
  for (let i = 0; i <= n; i++) {
    const c = i < n ? s.charCodeAt(i) : 38;
    if (c === 61) {
      if (eq === -1) eq = i;
      continue;
    }
    if (!isPairSeparator(c)) continue;
    if (eq !== -1 && (secrets.matches(s.slice(start, eq)) || nestsSecret(s, eq + 1, i, secrets))) {
      out = (out ?? '') + s.slice(copied, eq + 1) + REDACTED_VALUE;
      copied = i;
    }
    start = i + 1;
    eq = -1;
  }
  return out === null ? s : out + s.slice(copied);
}

/**
 * Whether the value s[from, to) is a percent-encoded query that holds a
 * secret (`next=%2Fcb%3Ftoken%3Dabc`, a redirect URL carried in a
 * parameter; encoded up to three times): the whole value is then hidden,
 * since re-encoding a redacted copy could not be checked against the
 * client's bytes. Only values with an encoded `=` are decoded.
 */
function nestsSecret(s: string, from: number, to: number, secrets: SecretParams): boolean {
  const pct = s.indexOf('%', from);
  if (pct === -1 || pct >= to) return false;
  let v = s.slice(from, to);
  for (let i = 0; i < 3 && v.indexOf('%') !== -1; i++) {
    const d = percentDecode(v);
    if (d === v) break;
    v = d;
    if (v.indexOf('=') !== -1 && redactPairs(v, secrets) !== v) return true;
  }
  return false;
}

/** The query with the values of its secret parameters replaced by [REDACTED] (`&`, `;` separators; every name encoding: see canonicalParamName). */
export function redactQuery(query: string, secrets: SecretParams): string {
  if (query === '' || secrets.empty) return query;
  return redactPairs(query, secrets);
}

/** A path's matrix parameters (`/app;jsessionid=X/...`) with secret values replaced by [REDACTED]. */
export function redactPath(path: string, secrets: SecretParams): string {
  const semi = path.indexOf(';');
  if (semi === -1 || secrets.empty) return path;
  let out = path.slice(0, semi);
  // Each segment's `;name=value` parameters; the `/` ends them.
  let i = semi;
  while (i < path.length) {
    const slash = path.indexOf('/', i);
    const end = slash === -1 ? path.length : slash;
    const seg = path.slice(i, end);
    out += seg.charCodeAt(0) === 59 ? redactPairs(seg, secrets) : seg;
    if (slash === -1) break;
    const next = path.indexOf(';', slash);
    const stop = next === -1 ? path.length : next;
    out += path.slice(slash, stop);
    i = stop;
  }
  return out;
}

/**
 * A URL as a client sent it in a header (Referer): credentials before `@`,
 * secret matrix parameters, and the secret parameters of its query and
 * fragment (OAuth's implicit flow puts `access_token` there) redacted.
 */
export function redactUrl(url: string, secrets: SecretParams): string {
  if (url === '' || secrets.empty) return url;
  let q = url.length;
  for (let i = 0; i < url.length; i++) {
    const c = url.charCodeAt(i);
    if (c === 63 || c === 35) { q = i; break; }
  }
  let head = url.slice(0, q);
  const scheme = head.indexOf('://');
  if (scheme !== -1) {
    const pathAt = head.indexOf('/', scheme + 3);
    const authorityEnd = pathAt === -1 ? head.length : pathAt;
    const at = head.lastIndexOf('@', authorityEnd - 1);
    if (at > scheme + 2) head = head.slice(0, scheme + 3) + REDACTED_VALUE + head.slice(at);
  }
  head = redactPath(head, secrets);
  return q === url.length ? head : head + redactPairs(url.slice(q), secrets);
}

/**
 * One worker's access log. `write()` formats `entry` into the worker's ring;
 * the engine's writer (engine/access-writer.ts) owns the destination.
 */
export class AccessLog {
  private readonly ring: RingWriter;
  private readonly fields: number[];
  private readonly combined: boolean;
  private readonly sampleRate: number;
  private readonly secrets: SecretParams;
  readonly config: AccessLogConfig;
  /** performance.timeOrigin, to turn arrival times into wall-clock time. */
  private readonly origin = performance.timeOrigin;

  constructor(config: AccessLogConfig, ring: AccessRing) {
    this.config = config;
    this.ring = new RingWriter(ring);
    this.fields = config.fields.map((f) => FIELD_IDS[f]);
    this.combined = config.format === 'combined';
    this.sampleRate = config.sampleRate;
    this.secrets = new SecretParams(config.redactQuery);
  }

  /** Formats and queues `entry` (sampled; 5xx always). This is the hot path -- change with care! */
  write(): void {
    const e = entry;
    if (this.sampleRate < 1 && e.status < 500 && Math.random() >= this.sampleRate) return;
    this.ring.write(this.combined ? this.combinedLine() : this.jsonLine());
  }

  private jsonLine(): string {
    const e = entry;
    const f = this.fields;
    let s = '{';
    for (let i = 0; i < f.length; i++) {
      if (i > 0) s += ',';
      switch (f[i]) {
        case 0: s += '"time":"' + isoTime(this.origin + e.t0) + '"'; break;
        // request_id ([A-Za-z0-9._:-] or generated), client (an address), method
        // (a token uWS accepted), route and upstream (config names), target (a
        // validated URL) never hold a character JSON escapes; the client's own
        // text (host, path, query, user agent) is checked.
        case 1: s += '"request_id":"' + e.requestId + '"'; break;
        case 2: s += '"client":"' + e.client + '"'; break;
        case 3: s += '"method":"' + e.method + '"'; break;
        case 4: s += '"host":' + jsonText(e.host); break;
        case 5: s += '"path":' + jsonText(cap(redactPath(e.path, this.secrets))); break;
        case 6: s += '"query":' + jsonText(cap(redactQuery(e.query, this.secrets))); break;
        case 7: s += '"status":' + e.status; break;
        case 8: s += '"bytes_received":' + e.bytesReceived; break;
        case 9: s += '"bytes_sent":' + e.bytesSent; break;
        case 10: s += '"duration_ms":' + ms(e.durationMs); break;
        case 11: s += '"upstream_ms":' + (e.upstreamMs < 0 ? 'null' : ms(e.upstreamMs)); break;
        case 12: s += '"route":' + (e.route === '' ? 'null' : '"' + e.route + '"'); break;
        case 13: s += '"upstream":' + (e.upstream === '' ? 'null' : '"' + e.upstream + '"'); break;
        case 14: s += '"target":' + (e.target === '' ? 'null' : '"' + e.target + '"'); break;
        case 15: s += '"error":' + (e.error === '' ? 'null' : '"' + e.error + '"'); break;
        case 16: s += '"user_agent":' + jsonText(e.userAgent); break;
        case 17: s += '"retries":' + e.retries; break;
        case 18: s += '"consumer":' + (e.consumer === '' ? 'null' : jsonText(e.consumer)); break;
      }
    }
    return s + '}\n';
  }

  /**
   * `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"`,
   * `$remote_user` being the consumer of the request's API key (`-` for none), as nginx writes the Basic-auth user.
   */
  private combinedLine(): string {
    const e = entry;
    const q = cap(redactQuery(e.query, this.secrets));
    const path = cap(redactPath(e.path, this.secrets));
    const target = q === '' ? path : path + '?' + q;
    return (e.client === '' ? '-' : e.client) + ' - ' + (e.consumer === '' ? '-' : combinedText(e.consumer)) + ' [' + clfTime(this.origin + e.t0) + '] "' + combinedText(e.method) + ' ' +
      combinedText(target) + ' HTTP/1.1" ' + e.status + ' ' + e.bytesSent + ' "' + combinedText(cap(redactUrl(e.referer, this.secrets))) + '" "' +
      combinedText(e.userAgent) + '"\n';
  }

}

/** Reset `entry` before filling it for a new request (fields a path may not set). */
export function resetEntry(): void {
  const e = entry;
  e.upstreamMs = -1;
  e.route = '';
  e.upstream = '';
  e.target = '';
  e.error = '';
  e.bytesReceived = 0;
  e.bytesSent = 0;
  e.retries = 0;
  e.consumer = '';
}
