/**
 * The upstream side of a WebSocket tunnel (issue 14): an RFC 6455 client,
 * written for the relay and nothing else.
 *
 * Why hand-written (the rule: `ws` first, a lean client if bench/
 * shows it clearly cheaper). Profiled through the tunnel with `ws` 8.23 as
 * the upstream client (bench/RESULTS.md, "WebSocket relay"), a message from
 * the upstream spent ~5 µs in JavaScript before uWS's send: a Buffer per
 * socket read, the Readable stream push and 'data' event, ws's Receiver (a
 * Writable stream), its 'message' event; a message to the upstream ~2 µs
 * in ws's Sender around the socket write. Here:
 *  - reads go into ONE buffer per thread (`net.connect({ onread })`, as the
 *    HTTP client upstream-pool.ts does): no allocation, no stream, no event
 *    per read;
 *  - a message that arrives whole in one read (the common case) is handed
 *    to the tunnel as a view of that buffer: it must be consumed (copied)
 *    during the call; uWS's send copies it;
 *  - a message to the upstream is one Buffer (header, mask, masked payload)
 *    and one socket write;
 *  - the handler is called directly (one implementation, the tunnel): no
 *    EventEmitter between the socket and the relay.
 *
 * What it does (RFC 6455; where it differs from what `ws` did for the
 * gateway before, it says so):
 *  - Handshake (4.1): `GET <target> HTTP/1.1` with the tunnel's headers
 *    (names must be tokens, values free of CR, LF, NUL and other controls
 *    but HTAB, as node:http required: otherwise the constructor throws a
 *    TypeError), `Upgrade: websocket`, `Connection: Upgrade`,
 *    `Sec-WebSocket-Version: 13`, a random `Sec-WebSocket-Key` and the
 *    offered subprotocols joined with `,` (tokens, no duplicate: else a
 *    SyntaxError). Repeated header values go out as repeated lines (node:http
 *    joined Cookie lines with `; `). The answer is read by the HTTP client's
 *    parser (proxy/http1-parser.ts, `allowUpgrade`): a 101 must carry
 *    `Upgrade: websocket` and the right `Sec-WebSocket-Accept`, name one of
 *    the offered subprotocols when some were offered and none otherwise, and
 *    no `Sec-WebSocket-Extensions` (none is offered): as `ws` required. Any
 *    other final status is a refusal, passed whole (status, header lines as
 *    sent, body up to `refusalBodyMax` bytes).
 *  - Frames (5.2): server frames must be unmasked, RSV bits clear, opcodes
 *    0-2 and 8-10, control frames FIN and at most 125 bytes, continuations
 *    only inside a fragmented message; a message (all its fragments) over
 *    `maxPayload` is 1009, a text message that is not UTF-8 (and a close
 *    reason) 1007, every other violation 1002: the upstream gets a Close with
 *    that code, then the socket ends (7.1.7 "Fail the WebSocket Connection"),
 *    and the handler gets onUpError (err.code one of WS_ERR_*), then onUpClose.
 *  - Pings are answered with a pong carrying the same payload (5.5.3), not
 *    reported; pongs are (onUpPong). No pong is queued while PONG_BACKLOG
 *    bytes wait unwritten (an upstream that pings without reading).
 *  - Close (5.5.1, 7.1.2): a Close from the upstream is answered with the
 *    same code and reason (none for a Close without a code), then the socket
 *    ends; close() sends ours and waits for the answer (the tunnel bounds the
 *    wait and calls terminate()). onUpClose comes once the socket has
 *    closed, with the upstream's code and reason, or 1006 when its Close
 *    never came.
 *  - A socket error once open is not reported: the socket closes and
 *    onUpClose says 1006 (as `ws` did).
 *
 * Masking (5.3): a fresh 4-byte key per frame from a random pool refilled
 * 8 KiB at a time (crypto.randomFillSync), as `ws` does.
 *
 * Memory per connection once open: this object, the socket, and nothing
 * else until a message spans frames or reads: its bytes then go into one
 * buffer grown by doubling as they arrive, at most maxPayload (so at most
 * 2x the message; fragments, even empty ones, cost nothing of their own).
 */
import net from 'node:net';
import tls from 'node:tls';
import { createHash, randomFillSync } from 'node:crypto';
import { isUtf8 } from 'node:buffer';
import { BODY_NONE, ResponseParser, type ResponseSink } from '../../proxy/http1-parser.js';
import { CLOSE_MESSAGE_TOO_BIG, CLOSE_NO_STATUS, CLOSE_PROTOCOL_ERROR, isSendableCode } from './close-codes.js';

/** What the client tells its tunnel. One implementation (WsTunnel): calls stay monomorphic. */
export interface UpstreamWsHandler {
  /** TLS targets: TCP is up, the TLS handshake begins. */
  onUpTcp(): void;
  /** Ready for the handshake's answer: TCP (and TLS) established, the request on its way. */
  onUpConnected(): void;
  /** The upstream answered 101; `protocol` is the subprotocol it chose ('' for none). */
  onUpOpen(protocol: string): void;
  /** The upstream answered the handshake with `status` (not 101): its header lines (name, value, ... as sent, latin1) and body. The socket is closed. */
  onUpRefused(status: number, headers: string[], body: Buffer): void;
  /** Before the 101: any failure (connect, TLS, a bad answer; `code` on the error as node:net gives it, or WS_ERR_*). After: a protocol violation by the upstream (WS_ERR_*); onUpClose follows. */
  onUpError(err: Error): void;
  /** A whole message. `shared`: `data` is a view of the thread's read buffer, valid only during the call. */
  onUpMessage(data: Buffer, isBinary: boolean, shared: boolean): void;
  onUpPong(): void;
  /** The connection is closed (after the 101): the upstream's close code and reason, 1005 for a Close without a code, 1006 when none came. */
  onUpClose(code: number, reason: Buffer): void;
}

/** TLS settings of an https target (proxy/upstream-pool.ts PoolTls, resolved). */
export interface UpstreamWsTls {
  secureContext: tls.SecureContext;
  /** '' sends no SNI (an IP address). */
  servername: string;
  rejectUnauthorized: boolean;
  session: Buffer | undefined;
  /** A new session to offer the next connection to the same pool. */
  onSession(session: Buffer): void;
}

export const WS_CONNECTING = 0;
export const WS_OPEN = 1;
export const WS_CLOSING = 2;
export const WS_CLOSED = 3;

/** err.code of a message over maxPayload (close 1009). */
export const WS_ERR_MESSAGE_TOO_BIG = 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH';
/** err.code of a text message or close reason that is not UTF-8 (close 1007). */
export const WS_ERR_INVALID_UTF8 = 'WS_ERR_INVALID_UTF8';
/** err.code of any other framing violation (close 1002). */
export const WS_ERR_PROTOCOL = 'WS_ERR_PROTOCOL';
/** err.code of a 101 that does not complete the handshake (wrong accept, subprotocol, extensions). */
export const WS_ERR_HANDSHAKE = 'WS_ERR_HANDSHAKE';

const CLOSE_INVALID_PAYLOAD = 1007;
/** A ping is not answered while this many bytes wait to be written to the upstream (see control()). */
export const PONG_BACKLOG = 64 * 1024;
const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** The thread's read buffer: every upstream WebSocket reads into it, and each read is consumed before the callback returns. */
const READ_BUFFER = Buffer.allocUnsafe(64 * 1024);
const EMPTY = Buffer.alloc(0);

const OP_CONT = 0;
const OP_TEXT = 1;
const OP_BINARY = 2;
const OP_CLOSE = 8;
const OP_PING = 9;
const OP_PONG = 10;

/** Masking keys (RFC 6455 5.3): 4 bytes per frame from a random pool. */
const maskPool = Buffer.allocUnsafe(8192);
let maskAt = maskPool.length;

/** One frame to the upstream: header, masking key and the masked bytes of `p[from, to)`, in one buffer. */
function frame(opcode: number, p: Uint8Array, from: number, to: number): Buffer {
  const n = to - from;
  const hl = n < 126 ? 6 : n < 65536 ? 8 : 14;
  const out = Buffer.allocUnsafe(hl + n);
  out[0] = 0x80 | opcode;
  if (n < 126) {
    out[1] = 0x80 | n;
  } else if (n < 65536) {
    out[1] = 0x80 | 126;
    out[2] = n >>> 8;
    out[3] = n & 0xff;
  } else {
    out[1] = 0x80 | 127;
    out.writeUInt32BE(Math.floor(n / 0x100000000), 2);
    out.writeUInt32BE(n >>> 0, 6);
  }
  if (maskAt + 4 > maskPool.length) {
    randomFillSync(maskPool);
    maskAt = 0;
  }
  const k = hl - 4;
  const m0 = (out[k] = maskPool[maskAt]!);
  const m1 = (out[k + 1] = maskPool[maskAt + 1]!);
  const m2 = (out[k + 2] = maskPool[maskAt + 2]!);
  const m3 = (out[k + 3] = maskPool[maskAt + 3]!);
  maskAt += 4;
  let i = 0;
  let o = hl;
  let s = from;
  const n4 = n & ~3;
  while (i < n4) {
    out[o] = p[s]! ^ m0;
    out[o + 1] = p[s + 1]! ^ m1;
    out[o + 2] = p[s + 2]! ^ m2;
    out[o + 3] = p[s + 3]! ^ m3;
    i += 4;
    o += 4;
    s += 4;
  }
  if (i < n) out[o] = p[s]! ^ m0;
  if (i + 1 < n) out[o + 1] = p[s + 1]! ^ m1;
  if (i + 2 < n) out[o + 2] = p[s + 2]! ^ m2;
  return out;
}

/** RFC 9110 tchar, for header names and subprotocols. */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** What node:http refused in a header value: controls but HTAB, DEL kept out too. */
const BAD_VALUE = /[^\t\x20-\x7e\x80-\xff]/;

function headerLine(name: string, value: string): string {
  if (BAD_VALUE.test(value)) throw new TypeError(`invalid character in the value of header "${name}"`);
  return name + ': ' + value + '\r\n';
}

/**
 * The handshake request (RFC 6455 4.1): `target` as is (path and query,
 * byte-exact), `headers` (lowercase names, latin1 values, arrays as
 * repeated lines), `protocols` offered. Throws TypeError / SyntaxError for
 * what node:http and `ws` refused.
 */
export function handshakeHead(target: string, headers: Record<string, string | string[]>, protocols: readonly string[], key: string): string {
  if (target === '' || BAD_VALUE.test(target) || target.includes(' ')) throw new TypeError('invalid request target');
  let head = 'GET ' + target + ' HTTP/1.1\r\n';
  for (const name in headers) {
    if (!TOKEN.test(name)) throw new TypeError(`invalid header name "${name}"`);
    const v = headers[name]!;
    if (typeof v === 'string') head += headerLine(name, v);
    else for (let i = 0; i < v.length; i++) head += headerLine(name, v[i]!);
  }
  head += 'upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: ' + key + '\r\n';
  if (protocols.length > 0) {
    const seen = new Set<string>();
    for (const p of protocols) {
      if (!TOKEN.test(p) || seen.has(p)) throw new SyntaxError('an invalid or duplicated subprotocol was offered');
      seen.add(p);
    }
    head += 'sec-websocket-protocol: ' + protocols.join(',') + '\r\n';
  }
  return head + '\r\n';
}

/** Sec-WebSocket-Accept for `key` (RFC 6455 4.2.2). */
export function acceptFor(key: string): string {
  return createHash('sha1').update(key + GUID).digest('base64');
}

function wsError(code: string, message: string): Error {
  const e = new Error(message) as NodeJS.ErrnoException;
  e.code = code;
  return e;
}

/** Frame reading states: the 2-14 header bytes, or `remaining` payload bytes of the current frame. */
const R_HEADER = 0;
const R_PAYLOAD = 1;
/** After a Close from the upstream or a violation: the rest of the bytes are not read. */
const R_DONE = 2;

export class UpstreamWs implements ResponseSink {
  readyState = WS_CONNECTING;
  /** The subprotocol the upstream chose ('' for none), set at the 101. */
  protocol = '';
  private readonly socket: net.Socket;
  /** null once nothing more is to be told (the tunnel let go during the handshake). */
  private h: UpstreamWsHandler | null;
  // --- handshake (null once open)
  private parser: ResponseParser | null = new ResponseParser();
  private key: string | null;
  private offered: readonly string[] | null;
  private status = 0;
  private refusalHeaders: string[] | null = null;
  private refusalBody: Buffer[] | null = null;
  private refusalSize = 0;
  /** Before the 101: the failure was reported (no second report, no hang-up report). */
  private reported = false;
  // --- frames
  private rstate = R_HEADER;
  /** A frame header cut by the end of a read: its first hdrLen bytes (allocated on first need). */
  private hdr: Buffer | null = null;
  private hdrLen = 0;
  private fin = false;
  private opcode = 0;
  private remaining = 0;
  /** A control frame's payload when it spans reads, filled up to payAt. */
  private pay: Buffer | null = null;
  private payAt = 0;
  /** The message being received: its opcode (1 or 2) from its first frame's header to its end (0: none). */
  private msgOpcode = 0;
  /** Its bytes when it spans frames or reads (append()), the first msgLen of them; null otherwise. */
  private msg: Buffer | null = null;
  private msgLen = 0;
  // --- closing
  private closeSent = false;
  private closeCode = 1006;
  private closeReason: Buffer = EMPTY;

  /**
   * Connects to `host`:`port` (TLS with `tlsOptions`) and sends the
   * handshake at once (queued until connected). Throws TypeError /
   * SyntaxError (nothing connected) for a header or subprotocol that cannot
   * be sent.
   */
  constructor(
    handler: UpstreamWsHandler,
    host: string,
    port: number,
    target: string,
    headers: Record<string, string | string[]>,
    protocols: readonly string[],
    private readonly maxPayload: number,
    private readonly refusalBodyMax: number,
    tlsOptions: UpstreamWsTls | null,
  ) {
    const keyBytes = Buffer.allocUnsafe(16);
    randomFillSync(keyBytes);
    const key = keyBytes.toString('base64');
    const head = handshakeHead(target, headers, protocols, key);
    this.h = handler;
    this.key = key;
    this.offered = protocols;
    this.parser!.allowUpgrade = true;
    this.parser!.reset(this, false);
    // A closure per connection: Bun calls the onread callback without the socket as `this`.
    const onread = { buffer: READ_BUFFER, callback: (n: number) => this.onRead(n) };
    let socket: net.Socket;
    if (tlsOptions === null) {
      socket = net.connect({ host, port, noDelay: true, onread });
      socket.once('connect', onConnect);
    } else {
      socket = tls.connect({
        host,
        port,
        secureContext: tlsOptions.secureContext,
        servername: tlsOptions.servername,
        rejectUnauthorized: tlsOptions.rejectUnauthorized,
        ALPNProtocols: ['http/1.1'],
        session: tlsOptions.session,
        onread,
      } as tls.ConnectionOptions);
      socket.setNoDelay(true);
      socket.once('connect', onTcp);
      socket.once('secureConnect', onConnect);
      socket.on('session', (s: Buffer) => tlsOptions.onSession(s));
    }
    // Socket events call shared functions that find this client on the socket: no closure per connection for them.
    (socket as any)[kClient] = this;
    socket.on('error', onError);
    socket.on('end', onEnd);
    socket.on('close', onClose);
    this.socket = socket;
    socket.write(head, 'latin1');
  }

  /** Bytes written to the socket and not yet taken by the kernel. */
  get bufferedAmount(): number {
    return this.socket.writableLength;
  }

  /** One message (`data` whole, masked into a new buffer before this returns). `cb` once written (or failed). Ignored unless open. */
  send(data: Uint8Array, isBinary: boolean, cb?: (err?: Error | null) => void): void {
    if (this.readyState !== WS_OPEN) return;
    this.socket.write(frame(isBinary ? OP_BINARY : OP_TEXT, data, 0, data.length), cb);
  }

  ping(): void {
    if (this.readyState === WS_OPEN) this.socket.write(frame(OP_PING, EMPTY, 0, 0));
  }

  /** Stops reading the upstream (backpressure toward the client). */
  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  /**
   * Sends a Close (`code` 0: without a code; `reason` at most 123 bytes,
   * the caller's to cut) and waits for the upstream's. Only when open.
   */
  close(code: number, reason: Buffer | string): void {
    if (this.readyState !== WS_OPEN) return;
    this.readyState = WS_CLOSING;
    this.sendClose(code, reason);
  }

  /**
   * Drops the connection at once. Before the 101: nothing more is reported
   * (the tunnel has moved on). After it: onUpClose follows (1006 unless
   * the upstream's Close came).
   */
  terminate(): void {
    if (this.readyState === WS_CONNECTING) this.h = null;
    else if (this.readyState === WS_OPEN) this.readyState = WS_CLOSING;
    this.rstate = R_DONE;
    this.socket.destroy();
  }

  // ------------------------------------------------------------- reading

  private onRead(n: number): boolean {
    try {
      const p = this.parser;
      if (p !== null) {
        const used = p.execute(READ_BUFFER, 0, n);
        // Past the 101's head: frames from the same read (also when onUpOpen already began a close: the upstream's Close may be among them).
        if (this.parser === null && this.rstate !== R_DONE && used < n) this.frames(READ_BUFFER, used, n);
      } else if (this.rstate !== R_DONE) {
        this.frames(READ_BUFFER, 0, n);
      }
    } catch (err) {
      this.handshakeFailed(err as Error);
    }
    return true;
  }

  // ResponseSink: the handshake's answer.
  onResponseHead(status: number, _reason: string, headers: string[], bodyKind: number): void {
    this.status = status;
    if (status === 101) {
      this.opened(headers);
      return;
    }
    this.refusalHeaders = headers;
    this.refusalBody = [];
    if (bodyKind === BODY_NONE) return; // onResponseEnd follows
  }

  onResponseData(buf: Buffer, start: number, end: number): void {
    this.refusalSize += end - start;
    if (this.refusalSize > this.refusalBodyMax) {
      throw wsError('WS_ERR_REFUSAL_TOO_LARGE', `handshake answered ${this.status} with a body over ${this.refusalBodyMax} bytes`);
    }
    this.refusalBody!.push(Buffer.from(buf.subarray(start, end)));
  }

  onResponseEnd(): void {
    if (this.status === 101) return;
    const h = this.h;
    const body = Buffer.concat(this.refusalBody!, this.refusalSize);
    this.parser = null;
    this.reported = true;
    this.h = null;
    this.rstate = R_DONE;
    this.socket.destroy();
    h?.onUpRefused(this.status, this.refusalHeaders!, body);
  }

  /** A 101: checked as `ws` checks it (RFC 6455 4.1, the client's steps 1-6 of the server's answer). */
  private opened(headers: string[]): void {
    let upgrade = '';
    let accept = '';
    let protocol: string | null = null;
    let extensions = false;
    for (let i = 0; i < headers.length; i += 2) {
      const k = headers[i]!.toLowerCase();
      if (k === 'upgrade') upgrade = headers[i + 1]!;
      else if (k === 'sec-websocket-accept') accept = headers[i + 1]!;
      else if (k === 'sec-websocket-protocol') protocol = protocol === null ? headers[i + 1]! : protocol + ',' + headers[i + 1]!;
      else if (k === 'sec-websocket-extensions') extensions = true;
    }
    if (upgrade.toLowerCase() !== 'websocket') throw wsError(WS_ERR_HANDSHAKE, 'invalid Upgrade header in the 101');
    if (accept !== acceptFor(this.key!)) throw wsError(WS_ERR_HANDSHAKE, 'invalid Sec-WebSocket-Accept header');
    const offered = this.offered!;
    if (protocol !== null) {
      if (offered.length === 0) throw wsError(WS_ERR_HANDSHAKE, 'server sent a subprotocol but none was offered');
      if (!offered.includes(protocol)) throw wsError(WS_ERR_HANDSHAKE, 'server sent a subprotocol that was not offered');
    } else if (offered.length > 0) {
      throw wsError(WS_ERR_HANDSHAKE, 'server sent no subprotocol');
    }
    if (extensions) throw wsError(WS_ERR_HANDSHAKE, 'server sent a Sec-WebSocket-Extensions header but no extension was offered');
    this.parser = null;
    this.key = null;
    this.offered = null;
    this.protocol = protocol ?? '';
    this.readyState = WS_OPEN;
    this.h?.onUpOpen(this.protocol);
  }

  /** A failure before the 101: reported once, the socket dropped. */
  private handshakeFailed(err: Error): void {
    if (this.readyState !== WS_CONNECTING) {
      // A throw from the handler while open (the tunnel catches its own: should not happen): the socket goes, onUpClose follows.
      this.rstate = R_DONE;
      this.socket.destroy();
      return;
    }
    const h = this.h;
    this.h = null;
    this.reported = true;
    this.rstate = R_DONE;
    this.socket.destroy();
    h?.onUpError(err);
  }

  /** Frames in `buf[i, end)` (RFC 6455 5.2). */
  private frames(buf: Buffer, i: number, end: number): void {
    while (i < end) {
      if (this.rstate === R_HEADER) {
        i = this.header(buf, i, end);
        if (i < 0) return; // a violation: the connection is being failed
        if (this.rstate === R_HEADER) continue; // (a header still incomplete: i === end)
        if (this.remaining === 0) {
          this.frameEnd(EMPTY, false);
          continue;
        }
      }
      if (this.rstate !== R_PAYLOAD) return;
      const avail = end - i;
      const need = this.remaining;
      const n = avail < need ? avail : need;
      if (this.opcode >= OP_CLOSE) {
        // A control frame's payload (at most 125 bytes), collected if it spans reads.
        let pay = this.pay;
        if (pay === null) {
          if (avail >= need) {
            this.rstate = R_HEADER;
            this.frameEnd(buf.subarray(i, i + need), true);
            i += need;
            continue;
          }
          pay = this.pay = Buffer.allocUnsafe(need);
          this.payAt = 0;
        }
        buf.copy(pay, this.payAt, i, i + n);
        this.payAt += n;
        this.remaining -= n;
        i += n;
        if (this.remaining === 0) {
          this.pay = null;
          this.frameEnd(pay, false);
        }
      } else if (this.msg === null && this.fin && avail >= need) {
        // A whole message in this read (the common case): a view, no copy.
        this.rstate = R_HEADER;
        this.frameEnd(buf.subarray(i, i + need), true);
        i += need;
      } else {
        // A message over several frames or reads: its bytes go into one buffer as they come.
        this.append(buf, i, n);
        this.remaining -= n;
        i += n;
        if (this.remaining === 0) this.frameEnd(null, false);
      }
    }
  }

  /**
   * Adds `buf[from, from + n)` to the message being collected: one buffer,
   * grown by doubling as bytes arrive (never ahead of them: a frame that
   * declares 64 MiB holds only what was received), at most maxPayload.
   * Fragments of any size, empty ones included, cost no memory of their own.
   */
  private append(buf: Buffer, from: number, n: number): void {
    if (n === 0) return;
    let m = this.msg;
    const want = this.msgLen + n;
    if (m === null || want > m.length) {
      let cap = m === null ? 4096 : m.length * 2;
      if (cap < want) cap = want;
      if (this.maxPayload > 0 && cap > this.maxPayload) cap = Math.max(want, this.maxPayload);
      const grown = Buffer.allocUnsafe(cap);
      if (m !== null) m.copy(grown, 0, 0, this.msgLen);
      m = this.msg = grown;
    }
    buf.copy(m, this.msgLen, from, from + n);
    this.msgLen = want;
  }

  /** Reads (the rest of) a frame header from `buf[i, end)`; returns where it ended, or -1 after failing the connection. */
  private header(buf: Buffer, i: number, end: number): number {
    let src = buf;
    let at = i;
    let next: number;
    if (this.hdrLen === 0 && end - i >= 2 && end - i >= headerSize(buf[i + 1]!)) {
      next = i + headerSize(buf[i + 1]!);
    } else {
      // Cut by the end of a read: collect it (rare; at most 14 bytes).
      const hdr = (this.hdr ??= Buffer.allocUnsafe(14));
      while (i < end && (this.hdrLen < 2 || this.hdrLen < headerSize(hdr[1]!))) hdr[this.hdrLen++] = buf[i++]!;
      if (this.hdrLen < 2 || this.hdrLen < headerSize(hdr[1]!)) return i;
      src = hdr;
      at = 0;
      next = i;
      this.hdrLen = 0;
    }
    const b0 = src[at]!;
    const b1 = src[at + 1]!;
    const fin = (b0 & 0x80) !== 0;
    const opcode = b0 & 0x0f;
    if ((b0 & 0x70) !== 0) return this.fail(CLOSE_PROTOCOL_ERROR, WS_ERR_PROTOCOL, 'RSV bits set without an extension');
    if ((b1 & 0x80) !== 0) return this.fail(CLOSE_PROTOCOL_ERROR, WS_ERR_PROTOCOL, 'a masked frame from the server');
    let len = b1 & 0x7f;
    if (len === 126) {
      len = (src[at + 2]! << 8) | src[at + 3]!;
    } else if (len === 127) {
      const hi = src.readUInt32BE(at + 2);
      if (hi > 0x1fffff) return this.fail(CLOSE_MESSAGE_TOO_BIG, WS_ERR_MESSAGE_TOO_BIG, 'payload length over 2^53 - 1');
      len = hi * 0x100000000 + src.readUInt32BE(at + 6);
    }
    if (opcode >= OP_CLOSE) {
      if (opcode > OP_PONG) return this.fail(CLOSE_PROTOCOL_ERROR, WS_ERR_PROTOCOL, `invalid opcode ${opcode}`);
      if (!fin) return this.fail(CLOSE_PROTOCOL_ERROR, WS_ERR_PROTOCOL, 'a fragmented control frame');
      if (len > 125) return this.fail(CLOSE_PROTOCOL_ERROR, WS_ERR_PROTOCOL, 'a control frame over 125 bytes');
    } else if (opcode === OP_CONT) {
      if (this.msgOpcode === 0) return this.fail(CLOSE_PROTOCOL_ERROR, WS_ERR_PROTOCOL, 'a continuation frame outside a fragmented message');
    } else if (opcode === OP_TEXT || opcode === OP_BINARY) {
      if (this.msgOpcode !== 0) return this.fail(CLOSE_PROTOCOL_ERROR, WS_ERR_PROTOCOL, 'a new message inside a fragmented one');
      this.msgOpcode = opcode;
    } else {
      return this.fail(CLOSE_PROTOCOL_ERROR, WS_ERR_PROTOCOL, `invalid opcode ${opcode}`);
    }
    if (opcode < OP_CLOSE && this.maxPayload > 0 && this.msgLen + len > this.maxPayload) {
      return this.fail(CLOSE_MESSAGE_TOO_BIG, WS_ERR_MESSAGE_TOO_BIG, 'message over maxMessageBytes');
    }
    this.fin = fin;
    this.opcode = opcode;
    this.remaining = len;
    this.rstate = R_PAYLOAD;
    return next;
  }

  /**
   * A frame is complete. `p`: a control frame's payload, or a data frame's
   * when it is the whole message (`shared`: a view of the read buffer), or
   * EMPTY; null: the data frame's bytes went into the message buffer.
   */
  private frameEnd(p: Buffer | null, shared: boolean): void {
    this.rstate = R_HEADER;
    const op = this.opcode;
    if (op >= OP_CLOSE) {
      this.control(op, p ?? EMPTY);
      return;
    }
    if (!this.fin) return; // a fragment: its bytes are in the message buffer
    let msg: Buffer;
    if (this.msg !== null) {
      msg = this.msg.subarray(0, this.msgLen);
      shared = false;
    } else {
      msg = p ?? EMPTY;
    }
    const binary = this.msgOpcode === OP_BINARY;
    this.msg = null;
    this.msgLen = 0;
    this.msgOpcode = 0;
    if (!binary && !isUtf8(msg)) {
      this.fail(CLOSE_INVALID_PAYLOAD, WS_ERR_INVALID_UTF8, 'a text message that is not UTF-8');
      return;
    }
    this.h?.onUpMessage(msg, binary, shared);
  }

  private control(op: number, p: Buffer): void {
    if (op === OP_PING) {
      // Not while PONG_BACKLOG bytes wait unwritten: an upstream that pings without reading would make the
      // pongs grow without bound (the break-it pass: 3 GB in 20 s). RFC 6455 5.5.3 lets an endpoint answer
      // only the most recent of the pings it has not answered yet.
      if (this.readyState === WS_OPEN && this.socket.writableLength < PONG_BACKLOG) this.socket.write(frame(OP_PONG, p, 0, p.length));
      return;
    }
    if (op === OP_PONG) {
      this.h?.onUpPong();
      return;
    }
    // Close (5.5.1): the code, then a UTF-8 reason.
    let code = CLOSE_NO_STATUS;
    let reason = EMPTY;
    if (p.length === 1) {
      this.fail(CLOSE_PROTOCOL_ERROR, WS_ERR_PROTOCOL, 'a Close frame of 1 byte');
      return;
    }
    if (p.length >= 2) {
      code = (p[0]! << 8) | p[1]!;
      if (!isSendableCode(code)) {
        this.fail(CLOSE_PROTOCOL_ERROR, WS_ERR_PROTOCOL, `invalid close code ${code}`);
        return;
      }
      reason = Buffer.from(p.subarray(2));
      if (!isUtf8(reason)) {
        this.fail(CLOSE_INVALID_PAYLOAD, WS_ERR_INVALID_UTF8, 'a close reason that is not UTF-8');
        return;
      }
    }
    this.closeCode = code;
    this.closeReason = reason;
    this.rstate = R_DONE;
    if (this.readyState === WS_OPEN) {
      // Answered with the same code and reason (7.1.2).
      this.readyState = WS_CLOSING;
      this.sendClose(code === CLOSE_NO_STATUS ? 0 : code, reason);
    }
    // Both Close frames are sent: the socket goes once ours is written (a server that never closes TCP holds nothing).
    this.endThenDestroy();
  }

  private endThenDestroy(): void {
    const s = this.socket;
    s.end(() => s.destroy());
  }

  /**
   * Fails the connection (7.1.7): a Close with `code` to the upstream, the
   * socket ended once it is written, the handler told (err.code `errCode`).
   * Returns -1 (for header()).
   */
  private fail(code: number, errCode: string, message: string): number {
    this.rstate = R_DONE;
    this.msg = null;
    this.pay = null;
    if (this.readyState === WS_OPEN) {
      this.readyState = WS_CLOSING;
      this.sendClose(code, '');
    }
    this.endThenDestroy();
    this.h?.onUpError(wsError(errCode, message));
    return -1;
  }

  private sendClose(code: number, reason: Buffer | string): void {
    if (this.closeSent) return;
    this.closeSent = true;
    let p = EMPTY;
    if (code !== 0) {
      const r = typeof reason === 'string' ? Buffer.from(reason) : reason;
      p = Buffer.allocUnsafe(2 + r.length);
      p[0] = code >>> 8;
      p[1] = code & 0xff;
      r.copy(p, 2);
    }
    this.socket.write(frame(OP_CLOSE, p, 0, p.length));
  }

  // ------------------------------------------------------------- socket events

  /** @internal (socket events) */
  onConnected(): void {
    this.h?.onUpConnected();
  }

  /** @internal (socket events) */
  onTcp(): void {
    this.h?.onUpTcp();
  }

  /** @internal (socket events) */
  onSocketError(err: Error): void {
    if (this.readyState === WS_CONNECTING && !this.reported) {
      this.reported = true;
      const h = this.h;
      this.h = null;
      h?.onUpError(err);
    }
    // Once open: not reported ('close' follows, 1006 unless the Close came).
  }

  /** @internal (socket events) */
  onSocketEnd(): void {
    const p = this.parser;
    if (p !== null && this.readyState === WS_CONNECTING && !this.reported) {
      // A refusal whose body ends with the connection.
      try {
        if (p.onEof()) return;
      } catch (err) {
        this.handshakeFailed(err as Error);
      }
    }
  }

  /** @internal (socket events) */
  onSocketClose(): void {
    if (this.readyState === WS_CONNECTING) {
      if (!this.reported) {
        this.reported = true;
        const h = this.h;
        this.h = null;
        h?.onUpError(wsError('ECONNRESET', 'socket hang up'));
      }
      this.readyState = WS_CLOSED;
      return;
    }
    // A socket emits 'close' once: this is the one report.
    this.readyState = WS_CLOSED;
    this.h?.onUpClose(this.closeCode, this.closeReason);
  }
}

const kClient = Symbol('turnpike.upstreamWs');
function clientOf(socket: unknown): UpstreamWs {
  return (socket as Record<symbol, UpstreamWs>)[kClient]!;
}
function onConnect(this: net.Socket): void {
  clientOf(this).onConnected();
}
function onTcp(this: net.Socket): void {
  clientOf(this).onTcp();
}
function onError(this: net.Socket, err: Error): void {
  clientOf(this).onSocketError(err);
}
function onEnd(this: net.Socket): void {
  clientOf(this).onSocketEnd();
}
function onClose(this: net.Socket): void {
  clientOf(this).onSocketClose();
}

/** A frame header's size from its second byte: 2, 4 (16-bit length) or 10 (64-bit) bytes. */
function headerSize(b1: number): number {
  const l = b1 & 0x7f;
  return l < 126 ? 2 : l === 126 ? 4 : 10;
}
