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
 * query parameters named in `redactQuery` are logged as [REDACTED].
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
};

const FIELD_IDS: Readonly<Record<AccessLogField, number>> = {
  time: 0, request_id: 1, client: 2, method: 3, host: 4, path: 5, query: 6, status: 7, bytes_received: 8, bytes_sent: 9,
  duration_ms: 10, upstream_ms: 11, route: 12, upstream: 13, target: 14, error: 15, user_agent: 16,
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

/** The query with the values of the named parameters replaced by [REDACTED]. */
export function redactQuery(query: string, names: ReadonlySet<string>): string {
  if (query === '' || names.size === 0) return query;
  let changed = false;
  const parts = query.split('&');
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i]!;
    const eq = p.indexOf('=');
    if (eq === -1) continue;
    let name = p.slice(0, eq).toLowerCase();
    if (name.includes('%')) {
      try { name = decodeURIComponent(name.replace(/\+/g, ' ')); } catch { /* logged as sent */ }
    }
    if (names.has(name)) {
      parts[i] = p.slice(0, eq + 1) + '[REDACTED]';
      changed = true;
    }
  }
  return changed ? parts.join('&') : query;
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
  private readonly redact: ReadonlySet<string>;
  readonly config: AccessLogConfig;
  /** performance.timeOrigin, to turn arrival times into wall-clock time. */
  private readonly origin = performance.timeOrigin;

  constructor(config: AccessLogConfig, ring: AccessRing) {
    this.config = config;
    this.ring = new RingWriter(ring);
    this.fields = config.fields.map((f) => FIELD_IDS[f]);
    this.combined = config.format === 'combined';
    this.sampleRate = config.sampleRate;
    this.redact = new Set(config.redactQuery);
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
        case 5: s += '"path":' + jsonText(cap(e.path)); break;
        case 6: s += '"query":' + jsonText(cap(redactQuery(e.query, this.redact))); break;
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
      }
    }
    return s + '}\n';
  }

  /** `$remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"` */
  private combinedLine(): string {
    const e = entry;
    const q = cap(redactQuery(e.query, this.redact));
    const target = q === '' ? cap(e.path) : cap(e.path) + '?' + q;
    return (e.client === '' ? '-' : e.client) + ' - - [' + clfTime(this.origin + e.t0) + '] "' + combinedText(e.method) + ' ' +
      combinedText(target) + ' HTTP/1.1" ' + e.status + ' ' + e.bytesSent + ' "' + combinedText(e.referer) + '" "' +
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
}
