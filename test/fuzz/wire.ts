/**
 * Strict HTTP/1.1 message parsing for the fuzzer, over latin1 strings (one
 * char = one byte), independent of the gateway's own parsers:
 *
 *  - `parseRequests`: a reference reading of what the client sent, by the
 *    RFC 9112 grammar. It never decides what the gateway must do; it lists
 *    the *reasons* a request deviates from the grammar (`bad-version`,
 *    `nul`, `cl-conflict`, `incomplete`...), how it is framed, and where it
 *    ends, so the oracle can tell which outcomes are acceptable.
 *  - `parseResponse`: what the client received, checked for framing
 *    (RFC 9112 4, 5, 6, 7; RFC 9110 8.6 and 15 for bodyless statuses).
 *  - `parseUpstreamRequest`: what the upstream received, checked strictly
 *    (the gateway must only ever send well-formed requests).
 */

// ------------------------------------------------------------------ grammar

/** tchar (RFC 9110 5.6.2). */
const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") TCHAR[c.charCodeAt(0)] = 1;

export function isToken(s: string): boolean {
  if (s.length === 0) return false;
  for (let i = 0; i < s.length; i++) if (TCHAR[s.charCodeAt(i)] !== 1) return false;
  return true;
}

/** OWS = *( SP / HTAB ) trimmed at both ends (RFC 9110 5.5: not part of the field value). */
export function trimOws(s: string): string {
  let a = 0;
  let b = s.length;
  while (a < b && (s.charCodeAt(a) === 32 || s.charCodeAt(a) === 9)) a++;
  while (b > a && (s.charCodeAt(b - 1) === 32 || s.charCodeAt(b - 1) === 9)) b--;
  return s.slice(a, b);
}

const HEX = /^[0-9a-fA-F]+$/;
const IS_HEX = (c: number): boolean => (c >= 48 && c <= 57) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102);

/** Characters RFC 3986 allows raw in a path or query (pchar / "/" / "?"), besides pct-encoded. */
const URI_CHAR = new Uint8Array(256);
for (const c of "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/?%") URI_CHAR[c.charCodeAt(0)] = 1;

/** Host = uri-host [ ":" port ] (RFC 9112 3.2, RFC 3986 3.2.2); an empty value is grammatical. */
export function isValidHostValue(h: string): boolean {
  if (h === '') return true;
  const m = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::([0-9]*))?$/.exec(h);
  if (m === null) return false;
  const host = m[1]!;
  if (/%(?![0-9A-Fa-f]{2})/.test(host)) return false;
  return true;
}

/** The methods this uWS build dispatches to JS (others close the connection: ENVIRONMENT.md). */
export const UWS_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'TRACE', 'CONNECT']);

// ------------------------------------------------------------------ requests

export type Framing = 'none' | 'length' | 'chunked' | 'unknown';

export interface RefRequest {
  start: number;
  /** Offset after the head's empty line; -1 when the head is incomplete. */
  headEnd: number;
  /** Offset after the whole message; -1 unless `complete`. */
  end: number;
  /** Head and body are all there and delimited. */
  complete: boolean;
  method: string;
  target: string;
  version: string;
  /** [lowercase name, value without OWS], in order. */
  headers: [string, string][];
  /** Grammar deviations, by name (see the oracle for what each one allows). */
  reasons: string[];
  framing: Framing;
  /** Decoded body (latin1) when complete. */
  body: string | null;
  /** `close` in Connection (RFC 9112 9.6). */
  closeOption: boolean;
  /** Other names listed in Connection (hop-by-hop for this message, RFC 9110 7.6.1). */
  connectionListed: string[];
}

export interface RefParse {
  text: string;
  requests: RefRequest[];
  /** Every byte belongs to a complete request. */
  exact: boolean;
}

function scanLine(line: string, reasons: Set<string>): void {
  if (line.includes('\n')) reasons.add('bare-lf');
  if (line.includes('\r')) reasons.add('bare-cr');
}

/** Validates one field line (header or trailer) and returns [lowercase name, value] or null. */
function fieldLine(line: string, reasons: Set<string>, pre: string): [string, string] | null {
  scanLine(line, reasons);
  if (line.includes('\x00')) reasons.add(pre + 'nul');
  const c0 = line.charCodeAt(0);
  if (c0 === 32 || c0 === 9) {
    reasons.add(pre + 'obs-fold');
    return null;
  }
  const colon = line.indexOf(':');
  if (colon < 0) {
    reasons.add(pre + 'no-colon');
    return null;
  }
  let name = line.slice(0, colon);
  if (name === '') reasons.add(pre + 'empty-name');
  if (/[ \t]$/.test(name)) {
    reasons.add(pre + 'space-before-colon');
    name = name.replace(/[ \t]+$/, '');
  }
  if (name !== '' && !isToken(name)) reasons.add(pre + 'bad-name-char');
  // Legal (RFC 9110 5.6.2 tchar) but outside [A-Za-z0-9-]: `X_Y`, `X.Y`...
  else if (name !== '' && /[^A-Za-z0-9-]/.test(name)) reasons.add(pre + 'name-special-tchar');
  const value = trimOws(line.slice(colon + 1));
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c === 0 || c === 10 || c === 13) continue; // reported above
    if (c < 32 && c !== 9) reasons.add(pre + 'ctl-in-value');
    else if (c === 127) reasons.add(pre + 'del-in-value');
    else if (c >= 128) reasons.add(pre + 'obs-text');
  }
  return [name.toLowerCase(), value];
}

function checkTarget(method: string, target: string, reasons: Set<string>): void {
  if (method === 'CONNECT') {
    reasons.add(target.startsWith('/') ? 'connect-origin-form' : 'authority-form');
    if (!target.startsWith('/')) return;
  }
  if (target === '*') {
    reasons.add(method === 'OPTIONS' ? 'asterisk-form' : 'asterisk-form-not-options');
    return;
  }
  if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(target)) {
    reasons.add('absolute-form');
    return;
  }
  if (!target.startsWith('/')) reasons.add('bad-target');
  for (let i = 0; i < target.length; i++) {
    const c = target.charCodeAt(i);
    if (c < 32 || c === 127) reasons.add('ctl-in-target');
    else if (c >= 128) reasons.add('non-ascii-target');
    else if (c === 37) {
      if (!(i + 2 < target.length && IS_HEX(target.charCodeAt(i + 1)) && IS_HEX(target.charCodeAt(i + 2)))) reasons.add('bad-escape-in-target');
    } else if (c === 35) reasons.add('fragment-in-target');
    else if (URI_CHAR[c] !== 1) reasons.add('unsafe-char-in-target');
  }
}

function checkVersion(v: string, reasons: Set<string>): void {
  if (v === 'HTTP/1.1') return;
  if (v === 'HTTP/1.0') reasons.add('http10');
  else if (/^HTTP\/1\.[2-9]$/.test(v)) reasons.add('higher-minor-version');
  else if (/^HTTP\/[02-9]\.[0-9]$/.test(v)) reasons.add('unsupported-version');
  else reasons.add('bad-version');
}

function parseOne(s: string, start: number): RefRequest {
  const reasons = new Set<string>();
  const req: RefRequest = {
    start, headEnd: -1, end: -1, complete: false, method: '', target: '', version: '', headers: [], reasons: [],
    framing: 'unknown', body: null, closeOption: false, connectionListed: [],
  };
  const done = (): RefRequest => {
    req.reasons = [...reasons];
    return req;
  };
  let p = start;
  // RFC 9112 2.2: a server SHOULD ignore at least one empty line (CRLF) before the request-line.
  while (s.startsWith('\r\n', p)) {
    reasons.add('leading-empty-line');
    p += 2;
  }
  if (p >= s.length) {
    reasons.add('incomplete');
    return done();
  }
  const he = s.indexOf('\r\n\r\n', p);
  const lines = (he < 0 ? s.slice(p) : s.slice(p, he)).split('\r\n');
  // An incomplete head: only its finished lines say anything.
  const checked = he < 0 ? lines.length - 1 : lines.length;
  if (he < 0) reasons.add('incomplete');
  if (checked >= 1) {
    const rl = lines[0]!;
    scanLine(rl, reasons);
    if (rl.includes('\x00')) reasons.add('nul-in-request-line');
    const parts = rl.split(' ');
    if (parts.length !== 3 || parts.some((x) => x === '')) reasons.add('bad-request-line');
    req.method = parts[0]!;
    req.version = parts.length >= 3 ? parts[parts.length - 1]! : '';
    req.target = parts.length >= 3 ? parts.slice(1, -1).join(' ') : parts[1] ?? '';
    if (!isToken(req.method)) reasons.add('bad-method');
    else if (!UWS_METHODS.has(req.method)) reasons.add('extension-method');
    checkVersion(req.version, reasons);
    checkTarget(req.method, req.target, reasons);
  }
  for (let i = 1; i < checked; i++) {
    const f = fieldLine(lines[i]!, reasons, '');
    if (f !== null) req.headers.push(f);
  }
  if (checked - 1 > 48) reasons.add('too-many-headers');
  if (he < 0) return done();
  req.headEnd = he + 4;

  // --- semantics (RFC 9112 3.2, 6, 9.6; RFC 9110 8.6, 10.1.1)
  const all = (n: string) => req.headers.filter((h) => h[0] === n).map((h) => h[1]);
  const hosts = all('host');
  // RFC 9112 3.2: Host is required in HTTP/1.1 (and the versions served as 1.1); HTTP/1.0 may omit it.
  if (hosts.length === 0) reasons.add(req.version === 'HTTP/1.0' ? 'http10-without-host' : 'missing-host');
  else if (hosts.length > 1) reasons.add('multiple-host');
  else if (hosts[0] === '') reasons.add('empty-host');
  else if (!isValidHostValue(hosts[0]!)) reasons.add('bad-host');
  const conn = all('connection').join(',').split(',').map((x) => trimOws(x).toLowerCase()).filter((x) => x !== '');
  req.closeOption = conn.includes('close');
  req.connectionListed = conn.filter((x) => x !== 'close' && x !== 'keep-alive');
  const expect = all('expect');
  if (expect.length > 0) reasons.add(expect.length === 1 && expect[0]!.toLowerCase() === '100-continue' ? 'expect-100' : 'expect-other');

  const cls = all('content-length');
  const tes = all('transfer-encoding');
  let length = -1;
  let clBad = false;
  if (cls.length > 0) {
    const elems = cls.join(',').split(',').map(trimOws);
    if (elems.some((e) => !/^[0-9]+$/.test(e))) {
      reasons.add('bad-cl');
      clBad = true;
    } else {
      const values = new Set(elems.map((e) => BigInt(e)));
      if (values.size > 1) {
        reasons.add('cl-conflict');
        clBad = true;
      } else {
        if (elems.length > 1) reasons.add('cl-repeated');
        const v = [...values][0]!;
        if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
          reasons.add('cl-huge');
          clBad = true;
        } else length = Number(v);
      }
    }
  }
  if (tes.length > 0) {
    const codings = tes.join(',').split(',').map((x) => trimOws(x)).filter((x) => x !== '');
    const names = codings.map((c) => trimOws(c.split(';')[0]!).toLowerCase());
    if (codings.some((c) => c.includes(';'))) reasons.add('te-params');
    if (names.some((n) => !isToken(n))) reasons.add('te-bad-token');
    if (cls.length > 0) reasons.add('cl-te');
    if (names.length === 0) reasons.add('te-empty');
    if (names.filter((n) => n === 'chunked').length > 1) reasons.add('te-chunked-twice');
    if (names.some((n) => n !== 'chunked')) reasons.add('te-unknown-coding');
    if (names[names.length - 1] !== 'chunked') reasons.add('te-not-chunked');
    // RFC 9112 6.3: Transfer-Encoding overrides Content-Length; chunked must be final.
    req.framing = names[names.length - 1] === 'chunked' ? 'chunked' : 'unknown';
  } else if (cls.length > 0) {
    req.framing = clBad ? 'unknown' : 'length';
  } else {
    req.framing = 'none';
  }

  // --- body
  const q = req.headEnd;
  if (req.framing === 'none') {
    req.end = q;
    req.body = '';
    req.complete = true;
  } else if (req.framing === 'length') {
    if (s.length - q >= length) {
      req.end = q + length;
      req.body = s.slice(q, q + length);
      req.complete = true;
    } else reasons.add('incomplete');
  } else if (req.framing === 'chunked') {
    parseChunkedRequestBody(s, q, req, reasons);
  }
  return done();
}

/** RFC 9112 7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF; last-chunk; trailer-section; CRLF. */
function parseChunkedRequestBody(s: string, start: number, req: RefRequest, reasons: Set<string>): void {
  let p = start;
  let body = '';
  const line = (): string | null => {
    const lf = s.indexOf('\n', p);
    if (lf < 0) return null;
    let l = s.slice(p, lf);
    if (l.endsWith('\r')) l = l.slice(0, -1);
    else reasons.add('chunk-bare-lf');
    if (l.includes('\r')) reasons.add('bare-cr');
    p = lf + 1;
    return l;
  };
  for (;;) {
    const l = line();
    if (l === null) {
      reasons.add('incomplete');
      return;
    }
    let size = l;
    const semi = l.indexOf(';');
    if (semi >= 0) {
      reasons.add('chunk-ext');
      size = l.slice(0, semi);
    }
    if (/[ \t]$/.test(size)) {
      reasons.add('chunk-size-bws');
      size = size.replace(/[ \t]+$/, '');
    }
    if (!HEX.test(size)) {
      reasons.add('bad-chunk-size');
      req.framing = 'unknown';
      return;
    }
    if (size.replace(/^0+/, '').length > 13) {
      reasons.add('chunk-size-overflow');
      req.framing = 'unknown';
      return;
    }
    if (size.length > 16) reasons.add('chunk-size-long');
    const n = parseInt(size, 16);
    if (n === 0) {
      for (;;) {
        const t = line();
        if (t === null) {
          reasons.add('incomplete');
          return;
        }
        if (t === '') break;
        const tr = new Set<string>();
        fieldLine(t, tr, '');
        if ([...tr].some((x) => x !== 'obs-text')) reasons.add('bad-trailer');
        reasons.add('trailers');
      }
      req.end = p;
      req.body = body;
      req.complete = true;
      return;
    }
    if (s.length - p < n) {
      reasons.add('incomplete');
      return;
    }
    body += s.slice(p, p + n);
    p += n;
    if (s.startsWith('\r\n', p)) p += 2;
    else if (s.charCodeAt(p) === 10) {
      reasons.add('chunk-bare-lf');
      p += 1;
    } else if (p >= s.length || (p === s.length - 1 && s.charCodeAt(p) === 13)) {
      reasons.add('incomplete');
      return;
    } else {
      reasons.add('chunk-data-no-crlf');
      req.framing = 'unknown';
      return;
    }
  }
}

/** The reference reading of a client byte stream: up to `max` requests, in order. */
export function parseRequests(buf: Buffer, max = 10): RefParse {
  const text = buf.toString('latin1');
  const requests: RefRequest[] = [];
  let pos = 0;
  while (pos < text.length && requests.length < max) {
    const r = parseOne(text, pos);
    requests.push(r);
    if (!r.complete) break;
    pos = r.end;
  }
  const last = requests[requests.length - 1];
  return { text, requests, exact: last !== undefined && last.complete && pos === text.length };
}

// ------------------------------------------------------------------ responses

export interface ParsedResponse {
  status: number;
  reason: string;
  /** [lowercase name, value]. */
  headers: [string, string][];
  body: string;
  /** 1xx statuses received before this final response. */
  interim: number[];
  framing: 'length' | 'chunked' | 'none' | 'close' | 'tunnel';
  connectionClose: boolean;
  /** Deviations that do not break framing (e.g. a status line without the SP before an empty reason). */
  notes: string[];
}

export type ResponseResult =
  | { kind: 'more' }
  | { kind: 'bad'; why: string }
  | { kind: 'ok'; res: ParsedResponse; end: number };

/**
 * An opening handshake of RFC 6455 4.1 as a client sends it: GET, `Upgrade:
 * websocket`, `upgrade` among the Connection options, a Sec-WebSocket-Key
 * and Sec-WebSocket-Version 13.
 */
export function isWebSocketHandshake(method: string, h: [string, string][]): boolean {
  if (method !== 'GET') return false;
  const up = headerAll(h, 'upgrade');
  // Every Upgrade line makes one list (RFC 9110 5.3, 7.8): a handshake when it lists websocket.
  if (!up.flatMap((v) => v.split(',')).some((t) => t.trim().toLowerCase() === 'websocket')) return false;
  const conn = headerAll(h, 'connection').flatMap((v) => v.split(',')).map((t) => t.trim().toLowerCase());
  return conn.includes('upgrade') && header(h, 'sec-websocket-key') !== undefined && header(h, 'sec-websocket-version') === '13';
}

/**
 * Whether the i-th request of what the client sent has a request line that
 * starts with `HEAD `, even where the reference parser could not finish its
 * head (a NUL, a cut): the server knows the method, and its answer to a HEAD
 * has no body (RFC 9110 9.3.2).
 */
export function startsAsHead(ref: RefParse, i: number): boolean {
  const req = ref.requests[i];
  const at = req !== undefined ? req.start : i === 0 ? 0 : i === ref.requests.length ? ref.requests[i - 1]!.end : -1;
  return at >= 0 && ref.text.startsWith('HEAD ', at);
}

export function header(h: [string, string][], name: string): string | undefined {
  for (const [k, v] of h) if (k === name) return v;
  return undefined;
}

function headerAll(h: [string, string][], name: string): string[] {
  return h.filter((x) => x[0] === name).map((x) => x[1]);
}

/** Strict chunked body (RFC 9112 7.1) from `p`; returns the decoded body and end, 'more' or a problem. */
function chunkedBody(s: string, p: number): { body: string; end: number } | 'more' | string {
  let body = '';
  for (;;) {
    const le = s.indexOf('\r\n', p);
    if (le < 0) return s.length - p > 4096 ? 'chunk-size-line-too-long' : 'more';
    const l = s.slice(p, le);
    const m = /^([0-9a-fA-F]{1,16})(;[^\r\n]*)?$/.exec(l);
    if (m === null) return 'bad-chunk-size-line';
    const n = parseInt(m[1]!, 16);
    p = le + 2;
    if (n === 0) {
      for (;;) {
        const te = s.indexOf('\r\n', p);
        if (te < 0) return 'more';
        const t = s.slice(p, te);
        p = te + 2;
        if (t === '') return { body, end: p };
        if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*$/.test(t)) return 'bad-trailer-line';
      }
    }
    if (s.length < p + n + 2) return 'more';
    body += s.slice(p, p + n);
    p += n;
    if (!s.startsWith('\r\n', p)) return 'chunk-data-not-followed-by-crlf';
    p += 2;
  }
}

/**
 * One final response (after any 1xx) at `pos`. `head`: it answers a HEAD;
 * `connect`: it answers a CONNECT (a 2xx makes the connection a tunnel);
 * `eof`: the server closed the connection (ends a close-delimited body).
 */
export function parseResponse(s: string, pos: number, o: { head: boolean; connect: boolean; eof: boolean }): ResponseResult {
  const interim: number[] = [];
  let p = pos;
  for (;;) {
    const he = s.indexOf('\r\n\r\n', p);
    if (he < 0) {
      const have = s.slice(p, p + 9);
      if (!'HTTP/1.1 '.startsWith(have) && !have.startsWith('HTTP/1.1 ')) return { kind: 'bad', why: 'bad-status-line' };
      if (o.eof) return { kind: 'bad', why: p === s.length ? 'eof-after-interim' : 'truncated-head' };
      return s.length - p > 256 * 1024 ? { kind: 'bad', why: 'response-head-too-long' } : { kind: 'more' };
    }
    const lines = s.slice(p, he).split('\r\n');
    const sl = /^HTTP\/1\.1 ([1-9][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?$/.exec(lines[0]!);
    if (sl === null) return { kind: 'bad', why: 'bad-status-line' };
    const notes: string[] = [];
    if (sl[2] === undefined) notes.push('status-line-without-sp');
    const status = Number(sl[1]);
    const headers: [string, string][] = [];
    for (let i = 1; i < lines.length; i++) {
      const l = lines[i]!;
      const m = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):(.*)$/.exec(l);
      if (m === null) return { kind: 'bad', why: 'bad-response-header-line' };
      const v = trimOws(m[2]!);
      if (/[\x00-\x08\x0a-\x1f\x7f]/.test(v)) return { kind: 'bad', why: 'ctl-in-response-header' };
      headers.push([m[1]!.toLowerCase(), v]);
    }
    p = he + 4;
    if (status < 200) {
      if (status === 101) return { kind: 'bad', why: 'unexpected-101' };
      interim.push(status);
      continue;
    }
    const cls = headerAll(headers, 'content-length');
    const tes = headerAll(headers, 'transfer-encoding');
    const connectionClose = headerAll(headers, 'connection').join(',').split(',').some((x) => trimOws(x).toLowerCase() === 'close');
    const res: ParsedResponse = { status, reason: sl[2] ?? '', headers, body: '', interim, framing: 'none', connectionClose, notes };
    // RFC 9110 8.6 and RFC 9112 6.1: no Content-Length/Transfer-Encoding in a 204; no TE in a 304.
    if (status === 204 && (cls.length > 0 || tes.length > 0)) return { kind: 'bad', why: 'framing-header-on-204' };
    if (status === 304 && tes.length > 0) return { kind: 'bad', why: 'transfer-encoding-on-304' };
    if (cls.length > 1) return { kind: 'bad', why: 'duplicate-content-length' };
    if (cls.length === 1 && tes.length > 0) return { kind: 'bad', why: 'content-length-and-transfer-encoding' };
    if (cls.length === 1 && !/^[0-9]+$/.test(cls[0]!)) return { kind: 'bad', why: 'bad-content-length' };
    if (o.connect && status < 300) {
      res.framing = 'tunnel';
      return { kind: 'ok', res, end: p };
    }
    if (o.head || status === 204 || status === 304) return { kind: 'ok', res, end: p };
    if (tes.length > 0) {
      if (tes.join(',').trim().toLowerCase() !== 'chunked') return { kind: 'bad', why: 'response-transfer-coding-not-chunked' };
      const r = chunkedBody(s, p);
      if (r === 'more') return o.eof ? { kind: 'bad', why: 'truncated-chunked-body' } : { kind: 'more' };
      if (typeof r === 'string') return { kind: 'bad', why: r };
      res.framing = 'chunked';
      res.body = r.body;
      return { kind: 'ok', res, end: r.end };
    }
    if (cls.length === 1) {
      const n = Number(cls[0]);
      if (s.length - p < n) return o.eof ? { kind: 'bad', why: 'truncated-body' } : { kind: 'more' };
      res.framing = 'length';
      res.body = s.slice(p, p + n);
      return { kind: 'ok', res, end: p + n };
    }
    // RFC 9112 6.3 (8): no length: the body runs to the end of the connection.
    if (!o.eof) return { kind: 'more' };
    res.framing = 'close';
    res.body = s.slice(p);
    return { kind: 'ok', res, end: s.length };
  }
}

// ------------------------------------------------------------------ upstream side

export interface UpstreamHead {
  method: string;
  target: string;
  /** [lowercase name, value] in order. */
  headers: [string, string][];
  framing: 'none' | 'length' | 'chunked' | 'invalid';
  length: number;
  /** Violations of RFC 9112/9110 for a request a proxy sends (property c). */
  violations: string[];
  /** Deviations the gateway makes on purpose (documented), counted but not failed. */
  notes: string[];
}

/** Headers a proxy must not forward (RFC 9110 7.6.1), besides its own single framing header. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade']);

/**
 * Strict check of a request head as the upstream received it (text up to,
 * not including, the empty line). Property (c): one Host, no hop-by-hop
 * fields, framing only by the gateway's own single Content-Length or
 * `Transfer-Encoding: chunked` (never both), no CR/LF/NUL/CTL/DEL in
 * values, request line `METHOD SP origin-form SP HTTP/1.1`.
 */
export function parseUpstreamRequest(head: string): UpstreamHead {
  const v: string[] = [];
  const notes: string[] = [];
  const lines = head.split('\r\n');
  const out: UpstreamHead = { method: '', target: '', headers: [], framing: 'none', length: 0, violations: v, notes };
  const rl = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([^ ]+) HTTP\/1\.1$/.exec(lines[0]!);
  if (rl === null) {
    v.push('upstream-bad-request-line');
    return out;
  }
  out.method = rl[1]!;
  out.target = rl[2]!;
  if (/[\x00-\x20\x7f]/.test(out.target)) v.push('upstream-ctl-in-target');
  if (out.method === 'CONNECT') v.push('upstream-connect-origin-form'); // RFC 9112 3.2.3: CONNECT takes authority-form
  if (!out.target.startsWith('/')) v.push('upstream-target-not-origin-form');
  for (let i = 0; i < out.target.length; i++) {
    const c = out.target.charCodeAt(i);
    if (c >= 128) v.push('upstream-target-non-ascii');
    else if (c === 35) v.push('upstream-target-fragment');
    else if (c === 37 && !(IS_HEX(out.target.charCodeAt(i + 1)) && IS_HEX(out.target.charCodeAt(i + 2)))) v.push('upstream-target-bad-escape');
    else if (c > 32 && c < 127 && URI_CHAR[c] !== 1) v.push('upstream-target-unsafe-char');
  }
  const q = out.target.indexOf('?');
  const pathPart = q < 0 ? out.target : out.target.slice(0, q);
  if (/\/\/|\/\.\.?(?:\/|$)/.test(pathPart)) v.push('upstream-path-not-normalized');
  for (let i = 1; i < lines.length; i++) {
    const l = lines[i]!;
    if (/[\r\n]/.test(l)) v.push('upstream-bare-cr-lf');
    if (l.charCodeAt(0) === 32 || l.charCodeAt(0) === 9) {
      v.push('upstream-obs-fold');
      continue;
    }
    const m = /^([^:]*):(.*)$/.exec(l);
    if (m === null || !isToken(m[1]!)) {
      v.push('upstream-bad-field-line');
      continue;
    }
    const value = trimOws(m[2]!);
    if (value.includes('\x00')) v.push('upstream-nul-in-value');
    else if (/[\x01-\x08\x0a-\x1f]/.test(value)) v.push('upstream-ctl-in-value');
    if (value.includes('\x7f')) v.push('upstream-del-in-value');
    out.headers.push([m[1]!.toLowerCase(), value]);
  }
  const count = (n: string) => out.headers.filter((h) => h[0] === n).length;
  if (count('host') !== 1) v.push('upstream-host-count-' + count('host'));
  else if (!isValidHostValue(header(out.headers, 'host')!) || header(out.headers, 'host') === '') v.push('upstream-bad-host');
  // A WebSocket handshake the gateway opened itself (routes proxy upgrades on
  // uWS: README "WebSockets") carries Upgrade and Connection: upgrade by RFC 6455 4.1.
  const ws = isWebSocketHandshake(out.method, out.headers);
  for (const [n] of out.headers) {
    if (ws && (n === 'upgrade' || n === 'connection')) continue;
    if (HOP_BY_HOP.has(n)) v.push('upstream-hop-by-hop:' + n);
    else if (n.startsWith('proxy-')) v.push('upstream-proxy-header:' + n);
  }
  const cls = headerAll(out.headers, 'content-length');
  const tes = headerAll(out.headers, 'transfer-encoding');
  if (cls.length > 1) v.push('upstream-duplicate-content-length');
  if (tes.length > 1) v.push('upstream-duplicate-transfer-encoding');
  if (cls.length > 0 && tes.length > 0) v.push('upstream-cl-and-te');
  // The gateway adds exactly one to every request it builds: a head without one was not built by it (injected).
  if (count('x-request-id') === 0) v.push('upstream-request-not-built-by-gateway');
  else if (count('x-request-id') !== 1) v.push('upstream-request-id-count-' + count('x-request-id'));
  if (tes.length > 0) {
    if (tes[0] !== 'chunked') v.push('upstream-transfer-coding-not-chunked');
    out.framing = tes.length === 1 && tes[0] === 'chunked' && cls.length === 0 ? 'chunked' : 'invalid';
  } else if (cls.length > 0) {
    if (!/^[0-9]+$/.test(cls[0]!)) v.push('upstream-bad-content-length');
    out.framing = cls.length === 1 && /^[0-9]+$/.test(cls[0]!) ? 'length' : 'invalid';
    out.length = Number(cls[0]);
  }
  out.violations = [...new Set(v)];
  return out;
}

/** Incremental strict chunked decoder for the upstream side. */
export function upstreamChunked(s: string, p: number): { body: string; end: number } | 'more' | string {
  return chunkedBody(s, p);
}
