/**
 * A uWebSockets.js-compatible App on node:net with the strict request
 * parser (request-parser.ts): the `server.backend: node` data plane (issue
 * 13). The uWS backend's handler and exchange (uws-server.ts,
 * uws-exchange.ts) run on it unchanged but for a few capability flags
 * (`NodeUws.strictHttp`), so there is one proxy, not two.
 *
 * Only the part of the uWS API the transport uses is implemented:
 *   module: App(), us_listen_socket_close(ls), us_socket_local_port(ls),
 *           SHARED_COMPRESSOR, DISABLED
 *   app:    any('/*', handler), ws('/*', behavior), listen(host, port, cb), close()
 *   req:    getCaseSensitiveMethod, getMethod, getUrl, getQuery, getHeader, forEach, setYield
 *   res:    writeStatus, writeHeader, write, end, tryEnd, endWithoutBody,
 *           cork, onAborted, onData, onWritable, getWriteOffset, pause,
 *           resume, close, getRemoteAddress, getRemoteAddressAsText, upgrade
 *   ws:     websocket.ts (NodeWebSocket, over the `ws` package)
 * with uWS's documented meaning, and none of the 20.30 build's quirks
 * (uws-respond.ts lists them): `endWithoutBody(n)` writes `Content-Length: n`
 * and ends; `end(body, true)` closes after whatever was written before; a
 * response that says `Connection: close` (the handler's header) is followed
 * by a close; no `uWebSockets` header.
 *
 * Connections (RFC 9112):
 *  - Reads land in ONE buffer per thread (net `onread`; ENVIRONMENT.md):
 *    accepted with `pauseOnConnect`, the handle is wrapped in a new
 *    net.Socket with `onread`. Each read is parsed at once; writes made
 *    while it is parsed (or inside res.cork) are gathered in the thread's
 *    staging buffer and leave in one socket write (see stageRoom).
 *  - Pipelining (9.3.2): requests are answered in order. The parser is
 *    paused after a request's end while its response is still under way;
 *    what follows stays in the parser (bounded by its head limits: it keeps
 *    at most one head plus one read) and, once bytes wait there, the socket
 *    stops reading until the response is complete (a lone request leaves
 *    reads armed: no stop/start per request). The next request is served
 *    from a microtask, never from inside the previous response's call
 *    stack.
 *  - Persistence (9.3): HTTP/1.1 keeps the connection unless `close` was
 *    asked; HTTP/1.0 only with `Connection: keep-alive`, and then the
 *    response says `Connection: keep-alive`. A response of unknown length
 *    to an HTTP/1.0 request is delimited by the close (no chunked coding).
 *  - A refused request is answered through the handler's `parseError` hook
 *    (the gateway's JSON error, counted and logged). When its head was
 *    complete and its framing known (request-parser.ts: 414, 431, a CTL or
 *    DEL in the target or a value, the target form, Host), the connection
 *    is kept as the uWS backend keeps it after an early answer: the body is
 *    read and discarded by its framing when it is declared with a
 *    Content-Length of at most LINGER_MAX_BYTES (backend.ts); a chunked or
 *    larger body, or a request that asked to close, closes it. Any other
 *    malformed request (400; 505 for an HTTP major version other than 1) is
 *    answered at once and the connection closes. An error inside a body
 *    (a bad chunk or trailer, after the head went to the handler) is
 *    answered 400 bad_request through the handler's `onBodyError` hook when
 *    no answer has started (the transport ends its exchange: the upstream
 *    request is aborted, the 400 counted and logged as bad_request), and the
 *    connection closes. A refused HEAD never gets a body (RFC 9110 9.3.2):
 *    the parser tells it from the method, however the head was split.
 *  - `Expect: 100-continue` (RFC 9110 10.1.1): `100 Continue` is sent once
 *    the handler has returned, only when it took the body (onData) and has
 *    not answered yet; an early answer (413...) goes without it.
 *  - Timeouts (server.timeouts, setTimeouts): headerMs from the first byte
 *    of a head to its end (slowloris), idleMs on a connection with no
 *    request, and bodyMs between reads of a request body. The connection is
 *    closed without an answer (as nginx does). Checked by one sweep a
 *    second (TIMEOUT_SWEEP_MS): a timeout fires up to a second late. A new
 *    value applies from the next time a connection's timer is armed.
 *  - Responses carry `Date` (RFC 9110 6.6.1), no `Server`, no `uWebSockets`.
 *  - WebSockets (RFC 6455; websocket.ts): with app.ws('/*', behavior), a
 *    GET (HTTP/1.1) carrying a valid Sec-WebSocket-Key goes to the
 *    behavior's upgrade handler first, as on uWS; req.setYield(true) there
 *    hands it to the HTTP handler. While the handshake is under way the
 *    parser holds what the client sends after the head (the next request,
 *    or the WebSocket's first frames) and no connection timer runs (the
 *    tunnel bounds the wait). res.upgrade() writes the 101 (ws's
 *    WebSocketServer.handleUpgrade) and the connection leaves HTTP for good:
 *    the bytes the parser held are the WebSocket's first, reads go to ws
 *    (copied out of the shared read buffer), the header/idle/body timers
 *    stop, and the connection stays counted until its socket closes. An
 *    upgrade answered with an error goes on as HTTP (keep-alive as usual).
 *    close() gives open WebSockets WS_CLOSE_GRACE_MS to finish the Close
 *    handshake the transport started (1001) before their sockets go.
 *
 * TLS (server.tls; tls.ts): `nodeUws.TlsApp(tls)` / `app.setTls(tls)`. An
 * accepted handle first goes through its handshake (tls.ts TlsHandshake:
 * the certificate picked from the ClientHello's server name, the deadline
 * server.timeouts.headerMs, plain HTTP answered 400, counted in the
 * worker's metrics cells), then the tls.TLSSocket becomes a Connection like
 * any other. Its reads come as 'data' events (node:tls decrypts into a
 * Buffer of its own; the static read buffer is for plain sockets), and what
 * it writes from the staging buffer is copied only when an earlier write is
 * still pending (flushStage): otherwise node:tls hands it to OpenSSL within
 * write(). A reload with new certificates applies to new connections.
 *
 * Listening: one net.Server per worker thread. Node 22.12+ binds the port in
 * every thread with `reusePort`; before (Node 20), node:net has no
 * reusePort and each worker listens on its own copy of one socket the
 * engine binds (engine/shared-listener.ts, `nodeUws.listenOnFd`).
 */
import net from 'node:net';
import type tls from 'node:tls';
import { isBun } from '../../../common/runtime.js';
import { errorBody, Errors } from '../../../common/errors.js';
import type { ServerTlsConfig } from '../../../common/config/types.js';
import { LINGER_MAX_BYTES } from '../backend.js';
import {
  BODY_CHUNKED, R_ERROR, R_PAUSED, RequestParser, type ParsedRequest, type RequestParserOptions, type RequestSink,
  DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADER_COUNT, DEFAULT_MAX_URL_BYTES, FORM_ABSOLUTE,
} from './request-parser.js';
import { DISABLED, NodeWsServer, SHARED_COMPRESSOR, WS_KEY, type NodeWebSocket, type NodeWsBehavior } from './websocket.js';
import { ServerTlsContexts, TlsHandshake, type TlsHost } from './tls.js';

/** Default header timeout (slowloris): a request head must be complete this long after its first byte (ms); server.timeouts.headerMs. nginx: 60 s; uWS closes idle sockets after ~10 s. */
export const DEFAULT_HEADER_TIMEOUT_MS = 10_000;
/** Default idle timeout: a connection with no request in progress is closed after this (ms); server.timeouts.idleMs. uWS's is ~10 s. */
export const DEFAULT_IDLE_TIMEOUT_MS = 10_000;
/** Default body timeout: the longest pause between two reads of a request body (ms); server.timeouts.bodyMs. */
export const DEFAULT_BODY_TIMEOUT_MS = 10_000;
/** close(): how long an open WebSocket has to finish its Close handshake before its socket is dropped (ms). */
export const WS_CLOSE_GRACE_MS = 1_000;
/** How often timeouts are checked (ms). */
export const TIMEOUT_SWEEP_MS = 1_000;
/** After the server closes its side (FIN), how long it still reads and discards before dropping the connection (ms): unread bytes would make the kernel reset the answer away (nginx's lingering_close). */
export const LINGER_MS = 2_000;
/** Shared read buffer of the thread (net `onread`): valid only during a read callback. */
export const CLIENT_READ_BUFFER_BYTES = 64 * 1024;

const READ_BUFFER = Buffer.allocUnsafe(CLIENT_READ_BUFFER_BYTES);
/** Request body chunks up to this size are handed to onData in BODY_AB; larger ones (input the parser kept while paused) in a copy of their own. */
const BODY_CHUNK_MAX_BYTES = CLIENT_READ_BUFFER_BYTES;
/**
 * The ArrayBuffer every request body chunk is handed to onData in, resized
 * to the chunk (a resizable ArrayBuffer, ES2024; Node 20+). As uWS's (which
 * detaches it when the callback returns) it is valid during the callback
 * only: the exchange copies what it keeps (uws-exchange.ts onClientData).
 * One copy per chunk, no allocation: a fresh ArrayBuffer per chunk is
 * external memory that drives the GC (the exchange's scratch buffer says
 * why).
 */
const BODY_AB = new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer & { resize(n: number): void })(0, { maxByteLength: BODY_CHUNK_MAX_BYTES });
/** A length-tracking view of BODY_AB. */
const BODY_VIEW = new Uint8Array(BODY_AB);
const EMPTY_AB = new ArrayBuffer(0);
const CONTINUE_100 = 'HTTP/1.1 100 Continue\r\n\r\n';
const noop = (): void => {};

// ---------------------------------------------------------------- Date header

let dateSec = -1;
let dateLine = '';
/** `date: <IMF-fixdate>\r\n`, recomputed once a second. */
function currentDateLine(): string {
  const now = Date.now();
  const sec = Math.floor(now / 1000);
  if (sec !== dateSec) {
    dateSec = sec;
    dateLine = 'date: ' + new Date(sec * 1000).toUTCString() + '\r\n';
  }
  return dateLine;
}

// ---------------------------------------------------------------- helpers

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return false;
  return true;
}

// Output. Everything a connection writes while it batches (a read being
// parsed, res.cork) is gathered in this thread's staging buffer and leaves
// in ONE socket write of one Buffer when the batch ends (as uWS's cork
// buffer): a response's head and body, or the answers to pipelined
// requests, make one write, not a writev of strings and buffers (whose
// strings net encodes into a fresh allocation per call). Outside a batch a
// piece is written at once, from the staging buffer too.
//
// Body chunks must be copied anyway: the caller's bytes may be a shared
// read buffer (the upstream pool's READ_BUFFER, overwritten by the next
// upstream read of the thread), and net.Socket keeps a reference to what it
// is given until the kernel took it (a write the kernel did not take at
// once until 'drain'); there is no public try-write on net to copy only
// the rest, as uWS does. A fresh Buffer per chunk (1 MiB of garbage per
// 1 MiB response) made the allocator and the GC a large cost of a large
// response (bench/RESULTS.md, "Server backends"). The staging buffer is
// reused from its start once no socket written from it holds bytes any
// more (almost always: the kernel takes the writes at once); when some
// socket still holds bytes (a slow client), the buffer is left to those
// writes and the next piece gets a new one. A piece larger than the buffer
// is written on its own (a copy for bytes).

/** Size of the per-thread staging buffer (bytes): one upstream read (READ_BUFFER_BYTES, 64 KiB) and a head fit. */
export const STAGE_BYTES = 80 * 1024;
/** Sockets written from one staging buffer at most before it is given away (bounds the free check). */
const STAGE_MAX_SOCKETS = 32;
let stage: Buffer | null = null;
/** End of what was written into `stage`. */
let stagePos = 0;
/** The sockets written from `stage` since it was last free (no duplicates in a row). */
const stageSockets: net.Socket[] = [];
/** The connection whose gathered bytes are stage[stageStart, stagePos) (not written yet), or null. */
let stageOwner: Connection | null = null;
let stageStart = 0;

/** No socket written from the staging buffer still holds bytes (a destroyed one never writes again). */
function stageIsFree(): boolean {
  for (let i = 0; i < stageSockets.length; i++) {
    const s = stageSockets[i]!;
    if (s.writableLength !== 0 && !s.destroyed) return false;
  }
  return true;
}

/** Writes the gathered bytes of the owner (if any) to its socket. */
function flushStage(): void {
  const c = stageOwner;
  if (c === null) return;
  stageOwner = null;
  if (stagePos <= stageStart || c.closed) return;
  // A TLS socket with nothing pending hands the bytes to OpenSSL (SSL_write into its
  // buffer) within write(): the staging buffer is free again at once. With a write
  // still pending, net queues this one by reference: it gets a copy.
  if (c.tls && c.socket.writableLength !== 0) c.socket.write(Buffer.copyBytesFrom(stage!, stageStart, stagePos - stageStart));
  else c.socket.write(stage!.subarray(stageStart, stagePos));
}

/** Room for `n` (<= STAGE_BYTES) more bytes gathered for `c` at stage[stagePos]: the staging buffer. */
function stageRoom(c: Connection, n: number): Buffer {
  if (stageOwner !== null && (stageOwner !== c || stagePos + n > STAGE_BYTES)) flushStage();
  if (stageOwner === null) {
    if (stagePos !== 0) {
      if (stageIsFree()) {
        stagePos = 0;
        stageSockets.length = 0;
      } else if (stagePos + n > STAGE_BYTES || stageSockets.length >= STAGE_MAX_SOCKETS) {
        stage = null; // left to the writes that still point into it
        stagePos = 0;
        stageSockets.length = 0;
      }
    }
    stage ??= Buffer.allocUnsafeSlow(STAGE_BYTES);
    stageOwner = c;
    stageStart = stagePos;
    // (A TLS socket never holds on to the staging buffer: flushStage.)
    if (!c.tls && (stageSockets.length === 0 || stageSockets[stageSockets.length - 1] !== c.socket)) stageSockets.push(c.socket);
  }
  return stage!;
}

function byteLen(chunk: unknown): number {
  if (chunk === undefined || chunk === null) return 0;
  if (typeof chunk === 'string') return Buffer.byteLength(chunk);
  return (chunk as ArrayBuffer | Uint8Array).byteLength;
}

/** `value` holds `close` as a list element (any case). */
function hasClose(value: string): boolean {
  const v = value.toLowerCase();
  let i = v.indexOf('close');
  while (i !== -1) {
    const before = i === 0 ? ',' : v[i - 1]!;
    const after = i + 5 >= v.length ? ',' : v[i + 5]!;
    if ((before === ',' || before === ' ' || before === '\t') && (after === ',' || after === ' ' || after === '\t')) return true;
    i = v.indexOf('close', i + 1);
  }
  return false;
}

/** IPv4 / IPv6 text (as net gives it) -> uWS's binary form (4 or 16 bytes). */
function addressBytes(text: string): ArrayBuffer {
  if (net.isIPv4(text)) {
    const out = new Uint8Array(4);
    const p = text.split('.');
    for (let i = 0; i < 4; i++) out[i] = Number(p[i]);
    return out.buffer;
  }
  const out = new Uint8Array(16);
  if (!net.isIPv6(text)) return out.buffer;
  let s = text;
  const pct = s.indexOf('%');
  if (pct !== -1) s = s.slice(0, pct);
  let tail4: number[] = [];
  const lastColon = s.lastIndexOf(':');
  if (s.indexOf('.', lastColon) !== -1) {
    tail4 = s.slice(lastColon + 1).split('.').map(Number);
    s = s.slice(0, lastColon) + ':0:0';
  }
  const [l, r] = s.includes('::') ? s.split('::') as [string, string] : [s, ''];
  const left = l === '' ? [] : l.split(':');
  const right = r === '' ? [] : r.split(':');
  const groups = [...left, ...new Array(8 - left.length - right.length).fill('0'), ...right];
  for (let i = 0; i < 8; i++) {
    const g = parseInt(groups[i]!, 16) || 0;
    out[2 * i] = g >> 8;
    out[2 * i + 1] = g & 0xff;
  }
  if (tail4.length === 4) for (let i = 0; i < 4; i++) out[12 + i] = tail4[i]!;
  return out.buffer;
}

/** The address text the uWS backend would print (formatAddress): IPv4-mapped IPv6 as IPv4. */
function addressText(text: string): string {
  return text.startsWith('::ffff:') && net.isIPv4(text.slice(7)) ? text.slice(7) : text;
}

// ---------------------------------------------------------------- request

/**
 * The uWS HttpRequest surface over a ParsedRequest. Valid during the
 * handler only, as uWS's (the transport copies what it keeps).
 */
export class NodeRequest {
  private p: ParsedRequest;
  private url: string;
  private query: string | undefined;
  /** setYield(true) in a WebSocket upgrade handler: the request goes to the HTTP handler instead. */
  yielded = false;

  constructor(p: ParsedRequest) {
    this.p = p;
    const path = p.path;
    const q = path.indexOf('?');
    this.url = q === -1 ? path : path.slice(0, q);
    this.query = q === -1 ? undefined : path.slice(q + 1);
  }

  getCaseSensitiveMethod(): string {
    return this.p.method;
  }

  /** uWS: in the WebSocket upgrade handler, pass the request on to the HTTP handler. */
  setYield(y: boolean): this {
    this.yielded = y;
    return this;
  }

  /**
   * An HTTP/1.0 request without Host (RFC 9112 3.2 requires Host in
   * HTTP/1.1 only): the transport routes it as a request without a host
   * (routes with no `host`, as nginx's default server) instead of 400.
   */
  get noHost10(): boolean {
    return this.p.minor === 0 && this.p.host === null && this.hostFromTarget() === null;
  }

  /**
   * RFC 9112 3.2.2: an absolute-form target's authority is the request's
   * host, with or without a Host line (HTTP/1.0 may have none); else null.
   */
  private hostFromTarget(): string | null {
    return this.p.form === FORM_ABSOLUTE ? this.p.authority : null;
  }

  /** uWS lowercases it; kept for compatibility. */
  getMethod(): string {
    return this.p.method.toLowerCase();
  }

  getUrl(): string {
    return this.url;
  }

  getQuery(): string | undefined {
    return this.query;
  }

  /** The first value of `name` (lowercase), or '' (as uWS). Values are latin1 strings: one char per byte. */
  getHeader(name: string): string {
    const h = this.p.headers;
    for (let i = 0; i < h.length; i += 2) if (h[i] === name) return this.value(i);
    if (name === 'host' && this.p.host === null) return this.hostFromTarget() ?? '';
    return '';
  }

  forEach(cb: (name: string, value: string) => void): void {
    const h = this.p.headers;
    // HTTP/1.0 in absolute form without a Host line: the target's authority stands for it.
    if (this.p.host === null) {
      const a = this.hostFromTarget();
      if (a !== null) cb('host', a);
    }
    for (let i = 0; i < h.length; i += 2) cb(h[i]!, this.value(i));
  }

  /** RFC 9112 3.2.2: an absolute-form target's authority replaces Host. */
  private value(i: number): string {
    const h = this.p.headers;
    if (this.p.form === FORM_ABSOLUTE && h[i] === 'host' && this.p.authority !== null) return this.p.authority;
    return h[i + 1]!;
  }
}

// ---------------------------------------------------------------- response

const HEAD_NONE = 0;
/** Head written with a Content-Length (end, tryEnd, endWithoutBody(n)). */
const HEAD_LENGTH = 1;
/** Head written with chunked coding (write() on HTTP/1.1). */
const HEAD_CHUNKED = 2;
/** Head written without framing: the body ends with the connection (write() on HTTP/1.0). */
const HEAD_CLOSE_DELIMITED = 3;
/** Head written without a body (endWithoutBody). */
const HEAD_NO_BODY = 4;

/**
 * The uWS HttpResponse surface, writing to one connection. Every call after
 * the response ended, or after the connection closed, does nothing (uWS
 * throws there; the transport never does it on purpose).
 */
export class NodeResponse {
  readonly conn: Connection;
  readonly isHead: boolean;
  readonly minor: number;
  /** The client asked to keep the connection (RFC 9112 9.3). */
  readonly keepAlive: boolean;
  done = false;
  aborted = false;
  private status = '200 OK';
  private headers = '';
  /** Some header value was written as exact latin1 bytes: the head goes out as latin1, string values re-encoded as UTF-8 bytes. */
  private exact = false;
  private sawConnection = false;
  /** The handler's Connection header said close (then the server closes after this response). */
  private saidClose = false;
  private headState = HEAD_NONE;
  private offset = 0;
  private total = -1;
  /** Close after this response (asked by the client, by end(..., true), or by the framing). */
  private closeAfter: boolean;
  /** The response's head was written or staged: an answer has begun. */
  get started(): boolean {
    return this.headState !== HEAD_NONE;
  }

  abortHandler: (() => void) | null = null;
  dataHandler: ((ab: ArrayBuffer, isLast: boolean) => void) | null = null;
  writableHandler: ((offset: number) => boolean) | null = null;
  /**
   * Not in uWS: called when the request's body turns out malformed (a bad
   * chunk or trailer, RFC 9112 7.1) after the head was handed to the
   * handler. The transport answers 400 bad_request if nothing was sent yet
   * (else closes) and ends its exchange; the connection closes either way.
   */
  onBodyError: (() => void) | null = null;

  /** `req` null: the answer to a request the parser refused; `head`: it was a HEAD (as far as could be seen). */
  constructor(conn: Connection, req: ParsedRequest | null, head = false) {
    this.conn = conn;
    this.isHead = req !== null ? req.method === 'HEAD' : head;
    this.minor = req === null ? 1 : req.minor;
    this.keepAlive = req !== null && req.keepAlive;
    this.closeAfter = !this.keepAlive;
  }

  writeStatus(s: string | Uint8Array): this {
    if (this.headState !== HEAD_NONE || this.done) return this;
    this.status = typeof s === 'string' ? (this.exact ? this.reencode(s) : s) : this.latin1(s);
    return this;
  }

  writeHeader(name: string | Uint8Array, value: string | Uint8Array): this {
    if (this.headState !== HEAD_NONE || this.done) return this;
    const n = typeof name === 'string' ? name : Buffer.from(name).toString('latin1');
    let v: string;
    if (typeof value === 'string') v = this.exact ? this.reencode(value) : value;
    else v = this.latin1(value);
    if (n.length === 10 && n.toLowerCase() === 'connection') {
      this.sawConnection = true;
      if (hasClose(v)) this.saidClose = true;
    }
    this.headers += n + ': ' + v + '\r\n';
    return this;
  }

  /** Switch the head to exact latin1 (a Buffer value arrived): what was written as UTF-8 strings is re-encoded to its bytes. */
  private latin1(b: Uint8Array): string {
    if (!this.exact) {
      this.exact = true;
      this.status = this.reencode(this.status);
      this.headers = this.reencode(this.headers);
    }
    return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1');
  }

  private reencode(s: string): string {
    return isAscii(s) ? s : Buffer.from(s, 'utf8').toString('latin1');
  }

  /** Writes the head; `framing`: HEAD_* of the body that follows; `length` for HEAD_LENGTH (or -1: none written). */
  private writeHead(framing: number, length: number): void {
    let h = 'HTTP/1.1 ' + this.status + '\r\n' + this.headers + currentDateLine();
    if (framing === HEAD_LENGTH && length >= 0) h += 'content-length: ' + length + '\r\n';
    else if (framing === HEAD_CHUNKED) h += 'transfer-encoding: chunked\r\n';
    if (framing === HEAD_CLOSE_DELIMITED) this.closeAfter = true;
    if (this.saidClose) this.closeAfter = true;
    // A final answer before `100 Continue` to a request that expects it: the client may never send the
    // body (RFC 9110 10.1.1), so what follows on the connection is unknown: close after the answer.
    if (this.conn.awaitingContinue(this)) this.closeAfter = true;
    if (!this.sawConnection) {
      if (this.closeAfter || this.conn.closing) h += 'connection: close\r\n';
      else if (this.minor === 0) h += 'connection: keep-alive\r\n';
    }
    h += '\r\n';
    this.headState = framing;
    this.conn.send(h, this.exact);
  }

  private body(chunk: unknown): void {
    if (this.isHead) return;
    const n = byteLen(chunk);
    if (n === 0) return;
    this.offset += n;
    if (this.headState === HEAD_CHUNKED) {
      this.conn.send(n.toString(16) + '\r\n', false);
      this.conn.sendChunk(chunk);
      this.conn.send('\r\n', false);
    } else {
      this.conn.sendChunk(chunk);
    }
  }

  /** Streams a chunk of a body of unknown length; returns false under backpressure (wait for onWritable). */
  write(chunk: unknown): boolean {
    if (this.done) return true;
    if (this.headState === HEAD_NONE) this.writeHead(this.minor === 0 ? HEAD_CLOSE_DELIMITED : HEAD_CHUNKED, -1);
    this.body(chunk);
    return this.conn.writeOk();
  }

  /** Ends the response: the whole body (Content-Length) or the last chunk. `closeConnection`: close after it. */
  end(body?: unknown, closeConnection?: boolean): this {
    if (this.done) return this;
    if (closeConnection === true) this.closeAfter = true;
    if (this.headState === HEAD_NONE) {
      this.writeHead(HEAD_LENGTH, byteLen(body));
      this.body(body);
    } else {
      this.body(body);
      if (this.headState === HEAD_CHUNKED) this.conn.send('0\r\n\r\n', false);
    }
    this.finish();
    return this;
  }

  /**
   * Writes `chunk` of a body of `totalSize` bytes (Content-Length). Returns
   * [ok, done]: ok false under backpressure (the bytes are buffered here:
   * call again from onWritable with what is left after getWriteOffset(),
   * which is then nothing), done once totalSize bytes are written.
   */
  tryEnd(chunk: unknown, totalSize: number): [boolean, boolean] {
    if (this.done) return [true, true];
    if (this.headState === HEAD_NONE) {
      this.total = totalSize;
      this.writeHead(HEAD_LENGTH, totalSize);
    }
    this.body(chunk);
    const ok = this.conn.writeOk();
    if (this.isHead || this.offset >= this.total) {
      this.finish();
      return [ok, true];
    }
    return [ok, false];
  }

  /** Ends without a body; `reportedContentLength` (when given) is written as Content-Length (HEAD, 304). */
  endWithoutBody(reportedContentLength?: number, closeConnection?: boolean): this {
    if (this.done) return this;
    if (closeConnection === true) this.closeAfter = true;
    if (this.headState === HEAD_NONE) {
      if (typeof reportedContentLength === 'number' && reportedContentLength >= 0) this.headers += 'content-length: ' + reportedContentLength + '\r\n';
      this.writeHead(HEAD_NO_BODY, -1);
    }
    this.finish();
    return this;
  }

  getWriteOffset(): number {
    return this.offset;
  }

  cork(cb: () => void): this {
    this.conn.cork(cb);
    return this;
  }

  onAborted(cb: () => void): this {
    this.abortHandler = cb;
    return this;
  }

  onData(cb: (ab: ArrayBuffer, isLast: boolean) => void): this {
    this.dataHandler = cb;
    this.conn.tookBody(this);
    return this;
  }

  onWritable(cb: (offset: number) => boolean): this {
    this.writableHandler = cb;
    return this;
  }

  /** Stops reading the request body (upload backpressure). */
  pause(): this {
    if (!this.done || this.conn.current === this) this.conn.pauseUpload();
    return this;
  }

  resume(): this {
    this.conn.resumeUpload();
    return this;
  }

  /** Closes the connection at once; onAborted runs now (as in uWS). */
  close(): this {
    this.conn.destroy();
    return this;
  }

  getRemoteAddress(): ArrayBuffer {
    return addressBytes(this.conn.remoteAddress());
  }

  getRemoteAddressAsText(): ArrayBuffer {
    return new TextEncoder().encode(this.conn.remoteAddress()).buffer as ArrayBuffer;
  }

  /** The client address as text (IPv4-mapped IPv6 shown as IPv4): the transport's fast path on this backend. */
  remoteAddressText(): string {
    return addressText(this.conn.remoteAddress());
  }

  /**
   * uWS res.upgrade, in the WebSocket upgrade handler's response (now or
   * later, nothing written yet): writes `101 Switching Protocols` with the
   * headers written before (writeHeader), Sec-WebSocket-Accept for
   * `secKey`, `protocol` ('' none) and the permessage-deflate answer to the
   * `extensions` offer ('' none; only when the behavior has compression),
   * and makes the connection a WebSocket: the behavior's open runs before
   * this returns (not when the client is gone: ws destroyed the socket).
   * `context` is uWS's and ignored. Does nothing on any other response.
   */
  upgrade(userData: unknown, secKey: string, protocol: string, extensions: string, _context?: unknown): void {
    if (this.done || this.headState !== HEAD_NONE) return;
    this.conn.upgradeTo(this, userData, secKey, protocol, extensions, this.headers);
  }

  private finish(): void {
    this.done = true;
    this.conn.responseDone(this, this.closeAfter || this.conn.closing);
  }
}

// ---------------------------------------------------------------- connection

type Handler = (res: NodeResponse, req: NodeRequest) => void;
/**
 * Answers a refused request. `close`: the connection closes after the
 * answer (else it goes on: the answer must be written before the handler
 * returns, as for any request). `method` and `target`: the refused
 * request's, when its head was read to the end (a kept refusal); '' when
 * the parser stopped before (then `res.isHead` says whether the method, if
 * it was read, was HEAD).
 */
type ParseErrorHandler = (res: NodeResponse, code: string, status: number, reason: string, close: boolean, method: string, target: string) => void;

const T_NONE = 0;
const T_IDLE = 1;
const T_HEADER = 2;
const T_BODY = 3;

/** Connections whose parser must be resumed (their response ended): run from one microtask, outside any response's call stack. */
let resumeList: Connection[] = [];
let resumeScheduled = false;
function flushResumes(): void {
  resumeScheduled = false;
  const list = resumeList;
  resumeList = [];
  for (const c of list) c.continueParsing();
}

const kConn = Symbol('turnpike.node.conn');

/**
 * A WebSocket handshake for the behavior's upgrade handler (the caller
 * checked GET): HTTP/1.1 and a Sec-WebSocket-Key ws accepts (WS_KEY; the
 * first one, as req.getHeader reads it). uWS takes a GET with any
 * 24-character key; the rest is checked by the handler (uws-server.ts).
 */
function isHandshake(req: ParsedRequest): boolean {
  if (req.minor !== 1) return false;
  const h = req.headers;
  for (let i = 0; i < h.length; i += 2) {
    const k = h[i]!;
    if (k.length === 17 && k === 'sec-websocket-key') return WS_KEY.test(h[i + 1]!);
  }
  return false;
}

function onClientRead(this: net.Socket, nread: number, buf: Buffer): boolean | void {
  const c = (this as any)[kConn] as Connection | undefined;
  if (c === undefined) return;
  c.onRead(buf, nread);
}

/** A TLS connection's reads ('data': node:tls decrypts into a Buffer of its own per read). */
function onClientTlsData(this: net.Socket, chunk: Buffer): void {
  const c = (this as any)[kConn] as Connection | undefined;
  if (c === undefined) return;
  c.onRead(chunk, chunk.length);
}

function onClientClose(this: net.Socket): void {
  const c = (this as any)[kConn] as Connection | undefined;
  c?.onClose();
}

function onClientDrain(this: net.Socket): void {
  const c = (this as any)[kConn] as Connection | undefined;
  c?.onDrain();
}

function onClientEnd(this: net.Socket): void {
  const c = (this as any)[kConn] as Connection | undefined;
  c?.onEnd();
}

/** One client connection: its socket, parser and the response under way. */
export class Connection implements RequestSink {
  readonly app: NodeApp;
  readonly socket: net.Socket;
  readonly parser: RequestParser;
  /** The response of the request being served (in order: one at a time), or null. */
  current: NodeResponse | null = null;
  /** The request of `current` has not ended yet (body still coming). */
  private reqOpen = false;
  /** Waiting for `current` to end before the next request is parsed. */
  private waitingResponse = false;
  private uploadPaused = false;
  private readPaused = false;
  /** Closing: the server ends the connection after the response under way (or has already). */
  closing = false;
  closed = false;
  private peer: string | null = null;
  private inRead = false;
  /** Batch depth (cork, a read being parsed): writes are gathered while > 0, and written by the outermost endBatch(). */
  private batch = 0;
  /** The body receiver of the request in progress (the response that took onData), or null: body discarded. */
  private bodyTo: NodeResponse | null = null;
  private expectContinue = false;
  timer = T_NONE;
  deadline = 0;
  /** Parsing stopped until 'drain': the client does not read the answers already written (see writeBacklogged). */
  blockedOnWrite = false;
  /** The response of a WebSocket handshake under way (the behavior's upgrade handler took it), or null. */
  private upgrading: NodeResponse | null = null;
  /** The WebSocket this connection became (res.upgrade), or null: HTTP. */
  ws: NodeWebSocket | null = null;
  /** close(): the timer that drops an open WebSocket's socket, or null. */
  private graceTimer: NodeJS.Timeout | null = null;
  /** A TLS connection (a tls.TLSSocket, read through 'data' events instead of the thread's read buffer). */
  readonly tls: boolean;

  constructor(app: NodeApp, socket: net.Socket, opts: RequestParserOptions, isTls = false) {
    this.app = app;
    this.socket = socket;
    this.tls = isTls;
    this.parser = new RequestParser(this, opts);
    (socket as any)[kConn] = this;
    if (isTls) socket.on('data', onClientTlsData);
    socket.on('close', onClientClose);
    socket.on('drain', onClientDrain);
    socket.on('end', onClientEnd);
    socket.on('error', noop);
    this.arm(T_IDLE, app.idleTimeoutMs);
  }

  private arm(kind: number, ms: number): void {
    this.timer = kind;
    this.deadline = kind === T_NONE ? 0 : performance.now() + ms;
  }

  remoteAddress(): string {
    if (this.peer === null) this.peer = this.socket.remoteAddress ?? '';
    return this.peer;
  }

  /**
   * After a body write: false under backpressure (the socket holds its
   * high-water mark or more that the kernel has not taken: wait for
   * onWritable, which 'drain' calls). Bytes gathered in a batch (res.cork,
   * a read being parsed) are written first once they reach the mark, so
   * that the answer is the kernel's and not the batch's: a 64 KiB chunk
   * held back (it was corked, before) is above the 16 KiB mark even when
   * the kernel then takes all of it at once, and answering false there made
   * the exchange copy the chunk and pause and resume its upstream for every
   * chunk (x3 the CPU of uWS on a 1 MiB response).
   * (`writableNeedDrain` is no answer either: it stays set until the
   * next tick even after the kernel took everything.)
   */
  writeOk(): boolean {
    const s = this.socket;
    if (s.writableLength + this.gathered < s.writableHighWaterMark) return true;
    if (stageOwner === this) flushStage();
    return s.writableLength < s.writableHighWaterMark;
  }

  /** Text (latin1: one byte per char, else UTF-8), gathered (see stageRoom) or written now outside a batch. */
  send(s: string, latin1: boolean): void {
    if (this.closed) return;
    const n = latin1 || s.length * 3 <= STAGE_BYTES - stagePos ? (latin1 ? s.length : -1) : Buffer.byteLength(s, 'utf8');
    if (n > STAGE_BYTES) {
      if (stageOwner === this) flushStage();
      this.socket.write(s, latin1 ? 'latin1' : 'utf8');
      return;
    }
    if (n === -1) {
      // UTF-8 that surely fits (3 bytes a char at most).
      const b = stageRoom(this, s.length * 3);
      stagePos += b.write(s, stagePos, 'utf8');
    } else {
      const b = stageRoom(this, n);
      stagePos += b.write(s, stagePos, latin1 ? 'latin1' : 'utf8');
    }
    if (this.batch === 0) flushStage();
  }

  /** A body chunk (string: UTF-8; bytes: copied, see stageRoom). */
  sendChunk(chunk: unknown): void {
    if (typeof chunk === 'string') {
      this.send(chunk, false);
      return;
    }
    if (this.closed) return;
    const src = chunk instanceof ArrayBuffer ? new Uint8Array(chunk) : chunk as Uint8Array;
    const n = src.byteLength;
    if (n > STAGE_BYTES) {
      if (stageOwner === this) flushStage();
      this.socket.write(Buffer.copyBytesFrom(src));
      return;
    }
    const b = stageRoom(this, n);
    b.set(src, stagePos);
    stagePos += n;
    if (this.batch === 0) flushStage();
  }

  /** Bytes gathered for this connection and not written yet. */
  private get gathered(): number {
    return stageOwner === this ? stagePos - stageStart : 0;
  }

  /** Ends a batch (started by `this.batch++`): the outermost one writes what was gathered. */
  endBatch(): void {
    if (--this.batch === 0 && stageOwner === this) flushStage();
  }

  cork(cb: () => void): void {
    this.batch++;
    try {
      cb();
    } finally {
      this.endBatch();
    }
  }

  onRead(buf: Buffer, nread: number): void {
    if (this.closed || nread <= 0) return;
    const ws = this.ws;
    if (ws !== null) {
      // TLS: ws reads the socket's own 'data' events (these are them).
      // Else ws keeps what it is given: a copy of the shared read buffer.
      if (!this.tls) ws.onData(Buffer.copyBytesFrom(buf, 0, nread));
      return;
    }
    // Closing (after a refused request, a response that closes, or the client's FIN): later bytes are read and discarded.
    if (this.closing) return;
    if (this.timer === T_BODY) this.deadline = performance.now() + this.app.bodyTimeoutMs;
    this.batch++;
    this.inRead = true;
    let r: number;
    try {
      r = this.parser.execute(buf, 0, nread);
    } finally {
      this.inRead = false;
    }
    this.afterParse(r);
    this.endBatch();
  }

  /** After execute()/resume(): errors, read pausing, timers. */
  private afterParse(r: number): void {
    if (r === R_ERROR) {
      this.parseError();
      return;
    }
    if (r === R_PAUSED) {
      // Stop reading only when bytes are waiting in the parser (pipelined
      // requests, a read that came during a response) or the upload is
      // paused: a lone request leaves reads armed while its response is
      // under way (a pause and resume per request cost two epoll_ctl calls
      // and a read). A read that comes meanwhile is kept by the parser (one
      // read at most) and stops reading then.
      if (!this.readPaused && (this.uploadPaused || this.blockedOnWrite || this.parser.bufferedBytes !== 0)) {
        this.readPaused = true;
        this.socket.pause();
      }
    } else if (this.timer === T_IDLE && !this.parser.idle) {
      // The first bytes of a head: the header timeout runs from here.
      this.arm(T_HEADER, this.app.headerTimeoutMs);
    }
  }

  private parseError(): void {
    const p = this.parser;
    const cur = this.current;
    if (p.errorInBody || cur !== null) {
      // The request's head was handed out already (a bad chunk or trailer): the message is invalid
      // and the connection cannot go on. A request forwarded (its handler set onBodyError) is answered
      // 400 if nothing was sent yet, else cut; an answer of the handler's own still to come (a gateway
      // error written after the handler returned) is written, then the connection closes (bounded by
      // the body timeout); an answer already complete: closed at once.
      this.closing = true;
      this.bodyTo = null;
      if (cur !== null && !cur.done) {
        this.arm(T_BODY, this.app.bodyTimeoutMs);
        if (cur.onBodyError !== null) cur.onBodyError();
        return;
      }
      this.destroy();
      return;
    }
    this.closing = true;
    this.arm(T_NONE, 0);
    const res = new NodeResponse(this, null, p.methodIsHead);
    this.current = res;
    this.app.answerParseError(res, p.errorCode, p.errorStatus, p.errorReason, true, '', '');
  }

  /**
   * A refused head whose framing is known (request-parser.ts): answered, and
   * the connection goes on as after any early answer on the uWS backend
   * (uws-server.ts: `close` for early answers): its body is discarded by
   * its framing when declared with a Content-Length of at most
   * LINGER_MAX_BYTES; a chunked or larger body, or a request that asked to
   * close, closes the connection after the answer.
   */
  onRequestRefused(req: ParsedRequest): void {
    const close = !req.keepAlive || req.bodyKind === BODY_CHUNKED || req.contentLength > LINGER_MAX_BYTES;
    const res = new NodeResponse(this, req);
    this.current = res;
    this.bodyTo = null; // the body, if any, is discarded
    this.expectContinue = false; // no 100 Continue: the answer is final
    if (close) {
      this.parser.discardRest();
      this.closing = true;
      this.arm(T_NONE, 0);
    } else {
      this.reqOpen = true;
      this.arm(req.bodyKind === 0 ? T_NONE : T_BODY, this.app.bodyTimeoutMs);
    }
    this.app.answerParseError(res, req.errorCode, req.errorStatus, req.errorReason, close, req.method, req.target);
  }

  // ---- RequestSink

  /** Whether `res` answers a request that expects `100 Continue`, none sent, its body not all read. */
  awaitingContinue(res: NodeResponse): boolean {
    return this.expectContinue && this.current === res && this.reqOpen;
  }

  onRequestHead(req: ParsedRequest): void {
    const res = new NodeResponse(this, req);
    this.current = res;
    this.reqOpen = true;
    this.bodyTo = null;
    this.expectContinue = req.expectContinue && req.bodyKind !== 0; // no body: nothing to wait for
    this.arm(req.bodyKind === 0 ? T_NONE : T_BODY, this.app.bodyTimeoutMs);
    const nreq = new NodeRequest(req);
    if (this.app.wsServer !== null && req.method === 'GET' && isHandshake(req) && this.tryUpgrade(res, nreq)) {
      this.expectContinue = false;
      return;
    }
    this.app.handle(res, nreq);
    if (this.expectContinue && !res.done && this.bodyTo === res) this.send(CONTINUE_100, false);
    this.expectContinue = false;
  }

  /**
   * A WebSocket handshake: the behavior's upgrade handler first (uWS's
   * order). The parser stays paused from here (its end not delivered):
   * what follows the head is kept, for the WebSocket if it comes to one
   * (upgradeTo), else parsed as HTTP once the answer is complete
   * (responseDone). False: the handler yielded (setYield), the request is
   * HTTP's.
   */
  private tryUpgrade(res: NodeResponse, req: NodeRequest): boolean {
    this.upgrading = res;
    this.parser.pause();
    this.app.wsServer!.behavior.upgrade!(res, req, null);
    if (!req.yielded) return true;
    this.upgrading = null;
    this.parser.resume(); // inside the parser's callback: cancels the pause
    return false;
  }

  /** NodeResponse.upgrade: the handshake's response becomes a 101 and the connection a WebSocket. */
  upgradeTo(res: NodeResponse, userData: unknown, key: string, protocol: string, extensions: string, extraHead: string): void {
    const server = this.app.wsServer;
    if (res !== this.upgrading || this.closed || server === null) return;
    this.upgrading = null;
    res.done = true;
    this.current = null;
    this.reqOpen = false;
    this.bodyTo = null;
    this.arm(T_NONE, 0); // no HTTP timer from here: the hub's idle timeout and pings apply
    if (stageOwner === this) flushStage(); // (nothing is gathered before a 101; kept in order all the same)
    const head = this.parser.kept();
    this.parser.discardRest();
    const ws = server.accept(this, userData, key, protocol, extensions, extraHead);
    if (ws === null) return; // ws destroyed the socket (the client is gone or half-closed): onClose follows
    this.ws = ws;
    if (this.tls) this.socket.off('data', onClientTlsData); // ws reads the TLS socket's 'data' itself
    this.waitingResponse = false;
    this.uploadPaused = false;
    this.blockedOnWrite = false;
    this.readPaused = false;
    ws.opened(head);
  }

  /** close(): an open WebSocket's socket is dropped WS_CLOSE_GRACE_MS from now (its Close handshake may finish first). */
  closeUpgradedSoon(): void {
    if (this.closed || this.graceTimer !== null) return;
    this.graceTimer = setTimeout(() => this.destroy(), WS_CLOSE_GRACE_MS);
  }

  onRequestBody(buf: Buffer, start: number, end: number): void {
    const to = this.bodyTo;
    if (to === null || to.aborted) return;
    const n = end - start;
    if (n > BODY_CHUNK_MAX_BYTES) {
      to.dataHandler!(buf.buffer.slice(buf.byteOffset + start, buf.byteOffset + end) as ArrayBuffer, false);
      return;
    }
    BODY_AB.resize(n);
    BODY_VIEW.set(buf.subarray(start, end));
    to.dataHandler!(BODY_AB as unknown as ArrayBuffer, false);
  }

  onRequestEnd(_trailers: string[] | null): void {
    this.reqOpen = false;
    const to = this.bodyTo;
    this.bodyTo = null;
    if (to !== null && !to.aborted) to.dataHandler!(EMPTY_AB, true);
    const res = this.current;
    if (res !== null && !res.done) {
      // Answered in order: the next request waits for this response.
      this.waitingResponse = true;
      this.arm(T_NONE, 0);
      this.parser.pause();
    } else if (this.writeBacklogged()) {
      // Answered at once (a gateway error, the health path) to a client that does not read:
      // parse nothing more until the socket drains, or its answers would pile up without bound.
      this.blockedOnWrite = true;
      this.parser.pause();
      // A client that never reads is closed by the idle timeout.
      this.arm(T_IDLE, this.app.idleTimeoutMs);
    } else if (!this.closing) {
      this.arm(T_IDLE, this.app.idleTimeoutMs);
    }
  }

  /** Whether the socket holds its high-water mark or more that the kernel has not taken (answers gathered in this batch included). */
  private writeBacklogged(): boolean {
    const s = this.socket;
    if (stageOwner === this) flushStage();
    return s.writableLength >= s.writableHighWaterMark;
  }

  /** res.onData: the handler takes the body of the request under way. */
  tookBody(res: NodeResponse): void {
    if (this.current === res && this.reqOpen) this.bodyTo = res;
  }

  pauseUpload(): void {
    if (this.uploadPaused) return;
    this.uploadPaused = true;
    this.parser.pause();
    if (!this.readPaused) {
      this.readPaused = true;
      this.socket.pause();
    }
  }

  resumeUpload(): void {
    if (!this.uploadPaused) return;
    this.uploadPaused = false;
    this.scheduleResume();
  }

  private scheduleResume(): void {
    resumeList.push(this);
    if (!resumeScheduled) {
      resumeScheduled = true;
      queueMicrotask(flushResumes);
    }
  }

  /** From flushResumes: parse what was kept, then read the socket again. */
  continueParsing(): void {
    if (this.closed || this.uploadPaused || this.waitingResponse || this.blockedOnWrite) return;
    if (this.writeBacklogged()) {
      this.blockedOnWrite = true;
      if (!this.readPaused) {
        this.readPaused = true;
        this.socket.pause();
      }
      return;
    }
    if (this.closing && this.current === null) return;
    const s = this.socket;
    this.batch++;
    this.inRead = true;
    let r: number;
    try {
      r = this.parser.resume();
    } finally {
      this.inRead = false;
    }
    this.afterParse(r);
    this.endBatch();
    if (r !== R_PAUSED && r !== R_ERROR && this.readPaused && !this.closed) {
      this.readPaused = false;
      s.resume();
    }
  }

  /** A response ended (all of it handed to the socket). */
  responseDone(res: NodeResponse, close: boolean): void {
    if (res !== this.current) return;
    this.current = null;
    if (this.upgrading === res) {
      // A handshake answered without a 101 (an error, the upstream's refusal): HTTP goes on from the end of its request.
      this.upgrading = null;
      if (!close && !this.parser.closed) this.scheduleResume();
    }
    if (this.uploadPaused) {
      // The rest of its body (if any) is discarded by its framing, or read on for an upload still under way.
      this.uploadPaused = false;
      if (!close) this.scheduleResume();
    }
    if (close || this.parser.closed) {
      this.closing = true;
      this.arm(T_NONE, 0);
      this.endGracefully();
      return;
    }
    if (this.waitingResponse) {
      this.waitingResponse = false;
      this.arm(T_IDLE, this.app.idleTimeoutMs);
      this.scheduleResume();
    } else if (!this.reqOpen) {
      this.arm(T_IDLE, this.app.idleTimeoutMs);
    }
  }

  /** FIN after what was written; reads go on (discarded) until the client closes or LINGER_MS passes. */
  private endGracefully(): void {
    if (this.closed) return;
    this.closing = true;
    if (stageOwner === this) flushStage();
    this.socket.end();
    if (this.readPaused) {
      this.readPaused = false;
      this.socket.resume();
    }
    this.timer = T_IDLE;
    this.deadline = performance.now() + LINGER_MS;
  }

  onDrain(): void {
    const ws = this.ws;
    if (ws !== null) {
      ws.onDrain();
      return;
    }
    if (this.blockedOnWrite) {
      this.blockedOnWrite = false;
      this.scheduleResume();
    }
    const res = this.current;
    if (res === null || res.done || res.writableHandler === null) return;
    res.writableHandler(res.getWriteOffset());
  }

  onEnd(): void {
    if (this.ws !== null) return; // ws ends its side (its own 'end' listener)
    // The client half-closed: with nothing under way the connection is done; else the answer is still written, then closed.
    const cur = this.current;
    if (cur === null) {
      this.destroy();
      return;
    }
    // A request whose body was still coming can no longer be complete (RFC
    // 9112 8: an incomplete message): when no answer has started and no byte
    // of it waits unread in the parser, it is aborted now (the upstream's
    // request too, logged client_aborted) instead of at bodyMs.
    if (this.reqOpen && !cur.started && !this.uploadPaused && this.parser.bufferedBytes === 0) {
      this.destroy();
      return;
    }
    this.closing = true;
  }

  /** Closes the connection now; the response under way (if any) is aborted. */
  destroy(): void {
    if (this.closed) return;
    if (stageOwner === this) {
      // What was gathered is dropped (its bytes are the last in the staging buffer).
      stageOwner = null;
      stagePos = stageStart;
    }
    this.socket.destroy();
    this.onClose();
  }

  onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.timer = T_NONE;
    if (this.graceTimer !== null) clearTimeout(this.graceTimer);
    this.graceTimer = null;
    this.upgrading = null;
    this.app.forget(this);
    const res = this.current;
    this.current = null;
    if (res !== null && !res.done) {
      res.aborted = true;
      res.done = true;
      const h = res.abortHandler;
      if (h !== null) h();
    }
  }

  /** One timeout sweep: true when this connection was closed. */
  sweep(now: number): void {
    if (this.timer === T_NONE || now < this.deadline) return;
    this.destroy();
  }
}

// ---------------------------------------------------------------- app

/** The listen socket handed to listen()'s callback (uWS's us_listen_socket). */
export interface NodeListenSocket {
  server: net.Server;
  port: number;
}

/** Limits the parser applies (server.limits). */
export interface NodeAppLimits {
  maxUrlBytes: number;
  maxHeaderBytes: number;
  maxHeaderCount: number;
}

/** Timeouts the connections apply (server.timeouts), in ms. */
export interface NodeAppTimeouts {
  /** From the first byte of a request head to its end (slowloris). */
  headerMs: number;
  /** A connection with no request in progress. */
  idleMs: number;
  /** The longest pause between two reads of a request body. */
  bodyMs: number;
}

/** Node ≥ 22.12 (and 23.1+) can share a port across threads with `reusePort`. */
export function netHasReusePort(): boolean {
  const [maj, min] = process.versions.node.split('.').map(Number) as [number, number];
  return maj > 23 || (maj === 23 && min >= 1) || (maj === 22 && min >= 12);
}

/** The contexts last built (per thread): every app of the thread serves the same config, built once. */
let lastTls: ServerTlsContexts | null = null;

/** The SecureContexts for `cfg` (null: none), reusing the thread's last ones for the same config object. Throws what createSecureContext throws. */
function tlsContextsFor(cfg: ServerTlsConfig | null): ServerTlsContexts | null {
  if (cfg === null) return null;
  if (lastTls === null || lastTls.config !== cfg) lastTls = new ServerTlsContexts(cfg);
  return lastTls;
}

/** A uWS-compatible App on node:net. */
export class NodeApp implements TlsHost {
  private handler: Handler | null = null;
  /** Set by the transport (uws-server.ts): answers a malformed request as a gateway error. */
  parseErrorHandler: ParseErrorHandler | null = null;
  private limits: RequestParserOptions = {
    maxUrlBytes: DEFAULT_MAX_URL_BYTES, maxHeaderBytes: DEFAULT_MAX_HEADER_BYTES, maxHeaderCount: DEFAULT_MAX_HEADER_COUNT,
  };
  /** server.timeouts (setTimeouts), in ms. */
  headerTimeoutMs = DEFAULT_HEADER_TIMEOUT_MS;
  idleTimeoutMs = DEFAULT_IDLE_TIMEOUT_MS;
  bodyTimeoutMs = DEFAULT_BODY_TIMEOUT_MS;
  private readonly conns = new Set<Connection>();
  /** app.ws('/*', behavior): the WebSocket side (websocket.ts), or null: no upgrade handler, handshakes are HTTP requests. */
  wsServer: NodeWsServer | null = null;
  private servers: net.Server[] = [];
  private sweeper: NodeJS.Timeout | null = null;
  /** server.tls as SecureContexts (setTls), or null: plain HTTP. */
  tlsContexts: ServerTlsContexts | null = null;
  /** The worker's metrics cells for the TLS handshake counters (setTls), or null. */
  tlsMetrics: Float64Array | null = null;
  /** TLS handshakes under way (tls.ts): swept with the connections (server.timeouts.headerMs). */
  private readonly handshakes = new Set<TlsHandshake>();

  /** Only `any('/*', handler)` is supported: the transport routes by itself. */
  any(pattern: string, handler: Handler): this {
    if (pattern !== '/*') throw new Error(`NodeApp.any: only "/*" is supported, got ${pattern}`);
    this.handler = handler;
    return this;
  }

  /**
   * uWS's app.ws: WebSocket handshakes (a GET with a valid
   * Sec-WebSocket-Key) go to `behavior.upgrade` (required: the transport
   * routes and answers them itself), the rest of the behavior runs the
   * WebSockets res.upgrade makes (websocket.ts). Only '/*'.
   */
  ws(pattern: string, behavior: NodeWsBehavior): this {
    if (pattern !== '/*') throw new Error(`NodeApp.ws: only "/*" is supported, got ${pattern}`);
    if (typeof behavior.upgrade !== 'function') throw new Error('NodeApp.ws: the behavior needs an upgrade handler');
    this.wsServer = new NodeWsServer(behavior);
    return this;
  }

  /**
   * server.limits: for new connections, and for what the open ones parse
   * from their next read on (a reload raises or lowers them at once; the
   * parser reads them per check, so this costs nothing per request).
   */
  setLimits(l: NodeAppLimits): void {
    const limits = { maxUrlBytes: l.maxUrlBytes, maxHeaderBytes: l.maxHeaderBytes, maxHeaderCount: l.maxHeaderCount };
    this.limits = limits;
    for (const c of this.conns) c.parser.setLimits(limits);
  }

  /**
   * server.timeouts (common/config/types.ts ServerTimeouts), in ms: applied
   * from the next time each connection arms its timer (a reload does not
   * shorten a wait already under way).
   */
  setTimeouts(t: NodeAppTimeouts): void {
    this.headerTimeoutMs = t.headerMs;
    this.idleTimeoutMs = t.idleMs;
    this.bodyTimeoutMs = t.bodyMs;
  }

  /**
   * server.tls (common/config/types.ts ServerTlsConfig), or null: plain.
   * New connections handshake with the new certificates (a reload);
   * connections open or handshaking keep theirs. `metrics`: the worker's
   * cells, where handshakes and their failures are counted
   * (G_TLS_HANDSHAKES, G_TLS_FAILURES). Throws when a certificate or
   * setting cannot be loaded into OpenSSL (nothing changes then).
   */
  setTls(cfg: ServerTlsConfig | null, metrics: Float64Array | null = this.tlsMetrics): void {
    if (cfg !== null && isBun()) {
      // Bun's node:net / node:tls cannot put a TLSSocket over the handle-wrapped sockets this server uses.
      throw new Error('server.tls with server.backend: node is not supported on Bun; use server.backend: bun (the default on Bun)');
    }
    this.tlsContexts = tlsContextsFor(cfg);
    this.tlsMetrics = metrics;
  }

  /** TlsHost: a handshake completed; the TLS socket becomes a connection like any other. */
  secured(socket: tls.TLSSocket): void {
    const c = new Connection(this, socket, this.limits, true);
    this.conns.add(c);
  }

  /** TlsHost: a handshake is over. */
  handshakeDone(h: TlsHandshake): void {
    this.handshakes.delete(h);
  }

  /** Open connections (the net.Server's own count is wrong with re-wrapped handles: ENVIRONMENT.md). */
  get connections(): number {
    return this.conns.size;
  }

  /** The worker's copy of the engine's listening socket (listenOnFd), or null: listen() binds host:port itself. */
  listenFd: number | null = null;

  /**
   * uWS's listen(host, port, cb): cb(listenSocket) or cb(false) when the port
   * cannot be bound. With `listenFd` set, listens on that descriptor instead
   * (host and port are the ones the engine bound).
   */
  listen(host: string, port: number, cb: (ls: NodeListenSocket | false) => void): this {
    const server = net.createServer({ pauseOnConnect: true, noDelay: true });
    server.on('connection', (raw: net.Socket) => this.accept(raw));
    const onError = (err: Error): void => {
      server.close();
      if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE' && this.listenFd === null && !netHasReusePort()) {
        process.emitWarning(`server.backend: node cannot share ${host}:${port} across worker threads here (no listening socket from the engine, no reusePort in this runtime): set server.workers: 1`);
      }
      cb(false);
    };
    server.once('error', onError);
    let opts: (net.ListenOptions & { reusePort?: boolean }) | { fd: number };
    if (this.listenFd !== null) {
      opts = { fd: this.listenFd };
    } else {
      opts = { host, port, exclusive: true, ...(netHasReusePort() ? { reusePort: true } : {}) };
    }
    server.listen(opts, () => {
      server.off('error', onError);
      server.on('error', noop);
      // Accepted handles come straight here (acceptHandle), not through
      // net.Server's onconnection, which builds a net.Socket per connection
      // only for us to take its handle: that throwaway Socket was a fifth of
      // the CPU of a short connection. Runs before the first accept (the
      // 'listening' callback precedes the loop's first poll of the socket).
      const h = (server as unknown as { _handle?: { onconnection?: unknown } })._handle;
      if (h !== undefined && h !== null && typeof h.onconnection === 'function') {
        h.onconnection = (err: number, clientHandle: unknown): void => {
          if (err === 0 && clientHandle !== undefined && clientHandle !== null) this.acceptHandle(clientHandle);
        };
      }
      this.servers.push(server);
      if (this.sweeper === null) {
        this.sweeper = setInterval(() => this.sweep(), TIMEOUT_SWEEP_MS);
        this.sweeper.unref();
      }
      cb({ server, port: (server.address() as net.AddressInfo).port });
    });
    return this;
  }

  /** A connection net.Server built a Socket for (where its onconnection could not be replaced): its handle is taken over. */
  private accept(raw: net.Socket): void {
    const handle = (raw as any)._handle;
    if (handle === null || handle === undefined) return;
    (raw as any)._handle = null;
    this.acceptHandle(handle);
  }

  /** An accepted libuv TCP handle, wrapped to read into the thread's static buffer (onread). */
  private acceptHandle(handle: unknown): void {
    (handle as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
    const tlsContexts = this.tlsContexts;
    if (tlsContexts !== null) {
      // TLS: the handshake first (tls.ts), then secured() makes the connection.
      this.handshakes.add(new TlsHandshake(this, tlsContexts, handle));
      return;
    }
    const socket = new net.Socket({ handle, allowHalfOpen: true, onread: { buffer: READ_BUFFER, callback: onClientRead } } as any);
    const c = new Connection(this, socket, this.limits);
    this.conns.add(c);
  }

  handle(res: NodeResponse, req: NodeRequest): void {
    this.handler!(res, req);
  }

  /** A refused request (see ParseErrorHandler); without a handler, the bare JSON error. */
  answerParseError(res: NodeResponse, code: string, status: number, reason: string, close: boolean, method: string, target: string): void {
    const h = this.parseErrorHandler;
    if (h !== null) {
      h(res, code, status, reason, close, method, target);
      return;
    }
    const e = code === 'url_too_long' ? Errors.URL_TOO_LONG : code === 'headers_too_large' ? Errors.HEADERS_TOO_LARGE
      : code === 'bad_host' ? Errors.BAD_HOST : code === 'version_not_supported' ? Errors.VERSION_NOT_SUPPORTED : Errors.BAD_REQUEST;
    res.writeStatus(e.statusLine).writeHeader('content-type', 'application/json').end(errorBody(e, ''), close);
  }

  forget(c: Connection): void {
    this.conns.delete(c);
  }

  private sweep(): void {
    const now = performance.now();
    for (const c of this.conns) c.sweep(now);
    if (this.handshakes.size !== 0) for (const h of this.handshakes) h.sweep(now);
  }

  /** Stops accepting on `ls` (uWS's us_listen_socket_close). */
  closeListenSocket(ls: NodeListenSocket): void {
    const i = this.servers.indexOf(ls.server);
    if (i !== -1) this.servers.splice(i, 1);
    ls.server.close();
  }

  /**
   * Stops listening and closes every connection (responses under way see
   * onAborted). WebSockets get WS_CLOSE_GRACE_MS to finish the Close
   * handshake the transport started (the hub's 1001) before their sockets go.
   */
  close(): void {
    for (const s of this.servers) s.close();
    this.servers = [];
    for (const c of [...this.conns]) {
      if (c.ws !== null) c.closeUpgradedSoon();
      else c.destroy();
    }
    for (const h of [...this.handshakes]) h.destroy();
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.sweeper = null;
  }
}

/** nodeUws.listenOnFd: the descriptor new Apps listen on, or null. */
let sharedFd: number | null = null;
/** nodeUws.setTlsMetrics: the worker's metrics cells TLS handshakes are counted in, or null. */
let tlsMetricsCells: Float64Array | null = null;

/** The listen sockets' apps, for the module-level uWS functions. */
const appsOf = new WeakMap<NodeListenSocket, NodeApp>();

/**
 * The module the transport loads instead of uWebSockets.js
 * (uws-loader.ts UwsModule). `strictHttp`: this server implements HTTP/1.x
 * itself, strictly; the transport skips its workarounds of uWS 20.30's
 * quirks (uws-server.ts).
 */
export const nodeUws = {
  strictHttp: true as const,
  /** uWS's compression constants for app.ws behaviors (any non-zero: permessage-deflate, websocket.ts). */
  SHARED_COMPRESSOR,
  DISABLED,
  /**
   * The worker's own descriptor of the engine's listening socket
   * (common/protocol.ts WorkerData.listenFd): Apps made from now on listen
   * on it. The worker owns it: closing its listen socket closes it.
   */
  listenOnFd(fd: number): void {
    sharedFd = fd;
  },
  /**
   * The worker's metrics cells (common/metrics-layout.ts) where the TLS
   * handshakes of the Apps made from now on are counted (G_TLS_HANDSHAKES,
   * G_TLS_FAILURES + reason): workers/worker.ts, before the transport.
   */
  setTlsMetrics(metrics: Float64Array | null): void {
    tlsMetricsCells = metrics;
  },
  /**
   * UwsModule.TlsApp: an App serving `tls` (server.tls) from the PEM in the
   * config (tls.ts); `app.setTls(next)` swaps the certificates in place on a
   * reload (new connections get them, open ones keep theirs). Throws what
   * tls.createSecureContext throws.
   */
  TlsApp(tls: ServerTlsConfig): NodeApp {
    const app = nodeUws.App();
    app.setTls(tls, tlsMetricsCells);
    return app;
  },
  /**
   * UwsModule.prepareTls: the SecureContexts of `tls`, built now (a
   * reload's Backend.prepare) and kept for the setTls of the same config.
   * Throws the ConfigRefusedError of tls.ts ServerTlsContexts.
   */
  prepareTls(tls: ServerTlsConfig): void {
    tlsContextsFor(tls);
  },
  App(): NodeApp {
    const app = new NodeApp();
    app.listenFd = sharedFd;
    const listen = app.listen.bind(app);
    app.listen = (host: string, port: number, cb: (ls: NodeListenSocket | false) => void) => listen(host, port, (ls) => {
      if (ls !== false) appsOf.set(ls, app);
      cb(ls);
    });
    return app;
  },
  us_listen_socket_close(ls: NodeListenSocket): void {
    const app = appsOf.get(ls);
    if (app !== undefined) app.closeListenSocket(ls);
    else ls.server.close();
  },
  us_socket_local_port(ls: NodeListenSocket): number {
    return ls.port;
  },
};
