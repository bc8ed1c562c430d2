/**
 * HTTP/1.1 response parser for upstream connections (RFC 9112).
 *
 * Why hand-written: undici's client side alone costs ~14 µs per request on
 * this machine (ENVIRONMENT.md), more than nginx spends on a whole proxied
 * request. A proxy needs much less than a general client: status, the header
 * list as sent, and body framing. This parser works on the bytes of one
 * socket read (which live in a buffer shared by every connection of the
 * thread, see upstream-pool.ts), copies only an incomplete head, and hands
 * body bytes out as views that the sink must consume synchronously.
 *
 * Framing, in the order RFC 9112 section 6.3 gives it:
 *  1. HEAD responses, 1xx, 204 and 304 have no body;
 *  2. Transfer-Encoding with chunked last -> chunked (Content-Length ignored);
 *     Transfer-Encoding without chunked last -> close-delimited;
 *  3. a valid Content-Length -> that many bytes (several different values or
 *     a non-numeric value -> error: response smuggling guard);
 *  4. otherwise read until the connection closes.
 * 1xx interim responses (100 Continue, 103 Early Hints) are skipped: the
 * client side (uWS) answers Expect itself. 101 is an error, except for the
 * WebSocket client's handshake (`allowUpgrade`, websocket/upstream-client.ts):
 * there it ends the response at its head, and execute() returns where the
 * head ended (the bytes after it are the new protocol's).
 */

export const BODY_NONE = 0;
export const BODY_LENGTH = 1;
export const BODY_CHUNKED = 2;
export const BODY_CLOSE = 3;

/** What the parser feeds. One implementation (the exchange): calls stay monomorphic. */
export interface ResponseSink {
  onResponseHead(status: number, reason: string, headers: string[], bodyKind: number, contentLength: number): void;
  /** `buf[start, end)` is only valid during the call. */
  onResponseData(buf: Buffer, start: number, end: number): void;
  onResponseEnd(): void;
}

/** The head of one response may not exceed this (nginx uses 4-8 KiB buffers; Envoy 60 KiB). */
export const MAX_RESPONSE_HEAD_BYTES = 64 * 1024;

const S_HEAD = 0;
const S_BODY_LENGTH = 1;
const S_CHUNK_SIZE = 2;
const S_CHUNK_DATA = 3;
const S_CHUNK_DATA_CRLF = 4;
const S_TRAILERS = 5;
const S_BODY_CLOSE = 6;
const S_DONE = 7;

const CRLFCRLF = Buffer.from('\r\n\r\n', 'latin1');
const CRLF = Buffer.from('\r\n', 'latin1');
const MAX_CHUNK_LINE = 4096;

export class ParseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ParseError';
  }
}

function isTokenChar(c: number): boolean {
  // RFC 9110 tchar
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) ||
    c === 0x2d || c === 0x21 || c === 0x23 || c === 0x24 || c === 0x25 || c === 0x26 || c === 0x27 ||
    c === 0x2a || c === 0x2b || c === 0x2e || c === 0x5e || c === 0x5f || c === 0x60 || c === 0x7c || c === 0x7e;
}

/** `s[pos, pos + lower.length)` equals `lower` (lowercase letters and '-') ignoring ASCII case; `s` holds token characters there. */
function nameIs(s: string, pos: number, lower: string): boolean {
  for (let k = 0; k < lower.length; k++) {
    if ((s.charCodeAt(pos + k) | 0x20) !== lower.charCodeAt(k)) return false;
  }
  return true;
}

export class ResponseParser {
  sink: ResponseSink | null = null;
  /** Set before each request: a HEAD request's response never has a body. */
  expectNoBody = false;
  state = S_DONE;
  /** Bytes still to come in the current Content-Length body or chunk. */
  remaining = 0;
  /** Partial head or chunk-size line carried over between reads. */
  private carry: Buffer | null = null;
  /** Connection: close seen, or close-delimited body: not reusable. */
  mustClose = false;
  /** A status line or byte of the response was seen (for retry decisions). */
  started = false;
  /** The final response's Connection value(s), comma-joined, or null: the names it lists are hop-by-hop. */
  connection: string | null = null;
  /**
   * The final response's head holds bytes >= 0x80 (obs-text, RFC 9110 5.5):
   * its strings are latin1 (one char per byte) and must be written back as
   * those bytes, not as UTF-8.
   */
  highBytes = false;
  /** A 101 answer is the response (a WebSocket handshake's): head only, no body, then done. */
  allowUpgrade = false;

  reset(sink: ResponseSink, headRequest: boolean): void {
    this.sink = sink;
    this.expectNoBody = headRequest;
    this.state = S_HEAD;
    this.remaining = 0;
    this.carry = null;
    this.mustClose = false;
    this.started = false;
    this.connection = null;
    this.highBytes = false;
  }

  get done(): boolean {
    return this.state === S_DONE;
  }

  get closeDelimited(): boolean {
    return this.state === S_BODY_CLOSE;
  }

  /**
   * Feed the bytes of one read. Returns the number of bytes consumed; bytes
   * left over after a complete response are a protocol error for a
   * non-pipelined client (the caller closes the connection).
   * This is the hot path -- change with care!
   */
  execute(buf: Buffer, start: number, end: number): number {
    let i = start;
    while (i < end) {
      switch (this.state) {
        case S_HEAD: {
          i = this.parseHeadFrom(buf, i, end);
          break;
        }
        case S_BODY_LENGTH: {
          const n = Math.min(this.remaining, end - i);
          this.remaining -= n;
          this.sink!.onResponseData(buf, i, i + n);
          i += n;
          if (this.remaining === 0) this.finish();
          break;
        }
        case S_CHUNK_SIZE: {
          i = this.parseChunkSize(buf, i, end);
          break;
        }
        case S_CHUNK_DATA: {
          const n = Math.min(this.remaining, end - i);
          this.remaining -= n;
          this.sink!.onResponseData(buf, i, i + n);
          i += n;
          if (this.remaining === 0) this.state = S_CHUNK_DATA_CRLF;
          break;
        }
        case S_CHUNK_DATA_CRLF: {
          i = this.expectCrlf(buf, i, end);
          break;
        }
        case S_TRAILERS: {
          i = this.skipTrailers(buf, i, end);
          break;
        }
        case S_BODY_CLOSE: {
          this.sink!.onResponseData(buf, i, end);
          i = end;
          break;
        }
        default:
          // S_DONE: extra bytes after a complete response.
          return i - start;
      }
    }
    return i - start;
  }

  /** The connection closed: completes a close-delimited body, else an error. */
  onEof(): boolean {
    if (this.state === S_BODY_CLOSE) {
      this.finish();
      return true;
    }
    return this.state === S_DONE;
  }

  private finish(): void {
    this.state = S_DONE;
    this.carry = null;
    this.sink!.onResponseEnd();
  }

  private parseHeadFrom(buf: Buffer, start: number, end: number): number {
    this.started = true;
    let data = buf;
    let from = start;
    let to = end;
    const carry = this.carry;
    if (carry !== null) {
      // Incomplete head: join with what we kept. Rare (heads fit in one read).
      data = Buffer.concat([carry, buf.subarray(start, end)]);
      from = 0;
      to = data.length;
    }
    // `data` may be the shared read buffer: bytes past `to` are an older read's, so a match must end by `to`.
    const idx = data.indexOf(CRLFCRLF, carry !== null ? Math.max(0, carry.length - 3) : from);
    if (idx === -1 || idx + 4 > to) {
      if (to - from > MAX_RESPONSE_HEAD_BYTES) throw new ParseError('response head too large');
      // Keep a copy: buf is a shared read buffer, overwritten by the next read.
      this.carry = Buffer.from(data.subarray(from, to));
      return end;
    }
    const headEnd = idx + 4;
    if (headEnd - from > MAX_RESPONSE_HEAD_BYTES) throw new ParseError('response head too large');
    this.carry = null;
    const consumedOfBuf = carry !== null ? headEnd - carry.length : headEnd - start;
    this.onHead(data.toString('latin1', from, idx));
    return start + consumedOfBuf;
  }

  private onHead(head: string): void {
    // Status line: HTTP/1.x SP 3DIGIT SP reason
    if (head.length < 12 || head.charCodeAt(0) !== 0x48 || !head.startsWith('HTTP/1.')) {
      throw new ParseError('invalid status line');
    }
    const minor = head.charCodeAt(7);
    if ((minor !== 0x31 && minor !== 0x30) || head.charCodeAt(8) !== 0x20) throw new ParseError('invalid HTTP version');
    const d0 = head.charCodeAt(9) - 48;
    const d1 = head.charCodeAt(10) - 48;
    const d2 = head.charCodeAt(11) - 48;
    if (d0 < 1 || d0 > 5 || d1 < 0 || d1 > 9 || d2 < 0 || d2 > 9) throw new ParseError('invalid status code');
    const status = d0 * 100 + d1 * 10 + d2;
    let lineEnd = head.indexOf('\r\n', 12);
    if (lineEnd === -1) lineEnd = head.length;
    const c12 = head.charCodeAt(12);
    if (lineEnd > 12 && c12 !== 0x20) throw new ParseError('invalid status line');
    const reason = lineEnd > 13 ? head.slice(13, lineEnd) : '';
    // reason-phrase = *( HTAB / SP / VCHAR / obs-text ) (RFC 9112 4): a bare
    // LF or CR here would become a line break in the client's response.
    for (let k = 13; k < lineEnd; k++) {
      const c = head.charCodeAt(k);
      if ((c < 0x20 && c !== 0x09) || c === 0x7f) throw new ParseError('invalid reason phrase');
    }

    const headers: string[] = [];
    let contentLength = -1;
    let chunked = false;
    let hasTE = false;
    let close = minor === 0x30; // HTTP/1.0 closes unless keep-alive
    let connection: string | null = null;
    let pos = lineEnd + 2;
    const len = head.length;
    while (pos < len) {
      let eol = head.indexOf('\r\n', pos);
      if (eol === -1) eol = len;
      const colon = head.indexOf(':', pos);
      if (colon === -1 || colon >= eol || colon === pos) throw new ParseError('invalid header line');
      // Obsolete line folding and whitespace before the colon are refused (RFC 9112 5.1, 5.2).
      for (let k = pos; k < colon; k++) {
        if (!isTokenChar(head.charCodeAt(k))) throw new ParseError('invalid header name');
      }
      let vs = colon + 1;
      let ve = eol;
      while (vs < ve && (head.charCodeAt(vs) === 0x20 || head.charCodeAt(vs) === 0x09)) vs++;
      while (ve > vs && (head.charCodeAt(ve - 1) === 0x20 || head.charCodeAt(ve - 1) === 0x09)) ve--;
      const name = head.slice(pos, colon);
      const value = head.slice(vs, ve);
      for (let k = vs; k < ve; k++) {
        const c = head.charCodeAt(k);
        if ((c < 0x20 && c !== 0x09) || c === 0x7f) throw new ParseError('invalid header value');
      }
      headers.push(name, value);
      // Framing headers, matched by length first and compared in place (no
      // lowercased copy of every name).
      const nl = colon - pos;
      if (nl === 14 && nameIs(head, pos, 'content-length')) {
        const n = parseContentLength(value);
        if (n < 0 || (contentLength !== -1 && contentLength !== n)) throw new ParseError('invalid content-length');
        contentLength = n;
      } else if (nl === 17 && nameIs(head, pos, 'transfer-encoding')) {
        hasTE = true;
        chunked = /(?:^|,)\s*chunked\s*$/i.test(value);
      } else if (nl === 10 && nameIs(head, pos, 'connection')) {
        connection = connection === null ? value : connection + ', ' + value;
        const v = value.toLowerCase();
        if (v.includes('close')) close = true;
        else if (minor === 0x30 && v.includes('keep-alive')) close = false;
      }
      pos = eol + 2;
    }

    if (status < 200) {
      if (status === 101) {
        if (!this.allowUpgrade) throw new ParseError('unexpected 101 Switching Protocols');
        this.state = S_DONE;
        this.sink!.onResponseHead(101, reason, headers, BODY_NONE, -1);
        return;
      }
      // Interim response: discard and wait for the final one.
      this.state = S_HEAD;
      return;
    }
    this.mustClose = close;
    this.connection = connection;
    // One native scan: a latin1 string is longer in UTF-8 only if it has a char >= 0x80.
    this.highBytes = Buffer.byteLength(head, 'utf8') !== head.length;
    const sink = this.sink!;
    if (this.expectNoBody || status === 204 || status === 304) {
      sink.onResponseHead(status, reason, headers, BODY_NONE, contentLength);
      if (this.state === S_HEAD) this.finish();
      return;
    }
    if (hasTE) {
      if (chunked) {
        this.state = S_CHUNK_SIZE;
        sink.onResponseHead(status, reason, headers, BODY_CHUNKED, -1);
      } else {
        this.state = S_BODY_CLOSE;
        this.mustClose = true;
        sink.onResponseHead(status, reason, headers, BODY_CLOSE, -1);
      }
      return;
    }
    if (contentLength >= 0) {
      this.remaining = contentLength;
      this.state = S_BODY_LENGTH;
      sink.onResponseHead(status, reason, headers, contentLength === 0 ? BODY_NONE : BODY_LENGTH, contentLength);
      if (contentLength === 0 && this.state === S_BODY_LENGTH) this.finish();
      return;
    }
    this.state = S_BODY_CLOSE;
    this.mustClose = true;
    sink.onResponseHead(status, reason, headers, BODY_CLOSE, -1);
  }

  private parseChunkSize(buf: Buffer, start: number, end: number): number {
    let data = buf;
    let from = start;
    const carry = this.carry;
    if (carry !== null) {
      data = Buffer.concat([carry, buf.subarray(start, end)]);
      from = 0;
    }
    const to = carry !== null ? data.length : end;
    const eol = data.indexOf(CRLF, from);
    if (eol === -1 || eol + 2 > to) {
      if (to - from > MAX_CHUNK_LINE) throw new ParseError('chunk size line too long');
      this.carry = Buffer.from(data.subarray(from, to));
      return end;
    }
    this.carry = null;
    let size = 0;
    let k = from;
    let digits = 0;
    for (; k < eol; k++) {
      const c = data[k]!;
      let v: number;
      if (c >= 0x30 && c <= 0x39) v = c - 0x30;
      else if (c >= 0x61 && c <= 0x66) v = c - 0x57;
      else if (c >= 0x41 && c <= 0x46) v = c - 0x37;
      else break;
      if (++digits > 12) throw new ParseError('chunk size too large');
      size = size * 16 + v;
    }
    if (digits === 0) throw new ParseError('invalid chunk size');
    // Anything after the digits must be chunk extensions (`;name=value`), optionally after whitespace.
    while (k < eol && (data[k] === 0x20 || data[k] === 0x09)) k++;
    if (k < eol && data[k] !== 0x3b) throw new ParseError('invalid chunk size');
    const consumed = carry !== null ? eol + 2 - carry.length : eol + 2 - start;
    if (size === 0) {
      this.state = S_TRAILERS;
    } else {
      this.remaining = size;
      this.state = S_CHUNK_DATA;
    }
    return start + consumed;
  }

  private expectCrlf(buf: Buffer, start: number, end: number): number {
    // The CRLF after chunk data may be split across reads; `remaining` counts its bytes seen.
    let i = start;
    while (i < end && this.remaining < 2) {
      const want = this.remaining === 0 ? 0x0d : 0x0a;
      if (buf[i] !== want) throw new ParseError('missing CRLF after chunk data');
      this.remaining++;
      i++;
    }
    if (this.remaining === 2) {
      this.remaining = 0;
      this.state = S_CHUNK_SIZE;
    }
    return i;
  }

  private skipTrailers(buf: Buffer, start: number, end: number): number {
    // Trailer section: zero or more header lines, then an empty line. Trailers
    // are dropped (uWS cannot send them and few clients read them).
    let data = buf;
    let from = start;
    const carry = this.carry;
    if (carry !== null) {
      data = Buffer.concat([carry, buf.subarray(start, end)]);
      from = 0;
    }
    const to = carry !== null ? data.length : end;
    let p = from;
    for (;;) {
      const eol = data.indexOf(CRLF, p);
      if (eol === -1 || eol + 2 > to) {
        if (to - from > MAX_RESPONSE_HEAD_BYTES) throw new ParseError('trailers too large');
        this.carry = Buffer.from(data.subarray(from, to));
        return end;
      }
      if (eol === p) {
        const consumed = carry !== null ? eol + 2 - carry.length : eol + 2 - start;
        this.finish();
        return start + consumed;
      }
      p = eol + 2;
    }
  }
}

/** Strict decimal Content-Length (RFC 9110 8.6): digits only, -1 if invalid. */
export function parseContentLength(v: string): number {
  const n = v.length;
  if (n === 0 || n > 15) return -1;
  let x = 0;
  for (let i = 0; i < n; i++) {
    const c = v.charCodeAt(i) - 48;
    if (c < 0 || c > 9) return -1;
    x = x * 10 + c;
  }
  return x;
}
