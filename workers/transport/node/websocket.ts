/**
 * The WebSocket side of the node:net server backend (`server.backend: node`):
 * the part of uWS's WebSocket API the gateway's hub and tunnels use
 * (websocket/tunnel.ts), over the `ws` package, so that uws-server.ts and
 * tunnel.ts proxy WebSockets on this backend unchanged.
 *
 *   app:  ws('/*', behavior)            (app.ts NodeApp.ws -> NodeWsServer)
 *   res:  upgrade(userData, secKey, protocol, extensions, context)
 *                                       (app.ts NodeResponse.upgrade -> NodeWsServer.accept)
 *   ws:   send(data, isBinary, compress) -> 0 backpressure / 1 success / 2 dropped,
 *         getBufferedAmount, end(code?, reason?), close, ping, cork,
 *         getUserData, getRemoteAddress(AsText), pause, resume
 *   behavior: upgrade, open, message, drain, pong, close, maxPayloadLength,
 *         compression (0: off; else permessage-deflate, RFC 7692)
 * with uWS's meaning, except where said below.
 *
 * Why `ws`'s WebSocketServer.handleUpgrade (noServer) and not the
 * lower-level `new WebSocket(null)` + setSocket(): handleUpgrade is ws's
 * public API for a server that owns its HTTP parsing; it writes the 101
 * (Sec-WebSocket-Accept, the subprotocol, the negotiated permessage-deflate
 * parameters: RFC 6455 4.2.2, RFC 7692 7.1) exactly as ws's own servers do,
 * lets extra headers in through its 'headers' event, and hands the bytes
 * already read past the head to the new WebSocket (`head`). The lower level
 * would need ws's private fields (`_protocol`, `_extensions`) and our own
 * copy of the negotiation. handleUpgrade re-checks the request (method,
 * Upgrade, Sec-WebSocket-Key, version) and answers a bad one with a bare 400
 * and a destroyed socket: the request object given to it is built here from
 * what res.upgrade gets, and only requests whose key passes ws's own check
 * (WS_KEY) reach the upgrade handler (app.ts), so that cannot happen after
 * the upstream accepted.
 *
 * Reads: the connection's socket keeps reading into the thread's shared
 * buffer (app.ts `onread`), which emits no 'data' events; each read is
 * copied (ws keeps references to what it is given) and handed to ws as a
 * 'data' event of the socket, the one ws listens to. ws pauses the socket
 * (net pause: no more reads) while its Receiver is full, and pause() below
 * does too (ws's public WebSocket.pause).
 *
 * Differences from uWS 20.30, none visible to the tunnel:
 *  - the behavior's close runs when the TCP connection is gone (ws's
 *    'close'), not when the client's Close frame arrives: a client that
 *    sends Close and keeps the connection open is closed by ws after
 *    CLOSE_TIMEOUT_MS.
 *  - a message over maxPayloadLength: ws closes with 1009 (uWS drops the
 *    connection without a Close frame: 1006 at the client).
 *  - send() never drops (no maxBackpressure): it returns 0 or 1, never 2;
 *    what the socket holds is bounded by the tunnel (HIGH_WATER).
 *  - a message's ArrayBuffer is valid during the callback only, as uWS's:
 *    messages up to MESSAGE_SCRATCH_BYTES are handed over in one scratch
 *    buffer of the thread (no allocation per message).
 */
import { createRequire } from 'node:module';
import type net from 'node:net';

const require = createRequire(import.meta.url);

/** uWS send() results. */
export const SEND_BACKPRESSURE = 0;
export const SEND_SUCCESS = 1;
export const SEND_DROPPED = 2;

/** uWS compression constants the transport may pass (any non-zero value enables permessage-deflate). */
export const DISABLED = 0;
export const SHARED_COMPRESSOR = 1;

/**
 * A Sec-WebSocket-Key ws accepts: base64 of 16 bytes (RFC 6455 4.1 and
 * 11.3.1; ws's keyRegex). uWS takes any 24 characters; a key that is not
 * base64 of 16 bytes is not a handshake here and reaches the HTTP handler,
 * as a key of another length does on uWS (proxied as plain HTTP).
 */
export const WS_KEY = /^[+/0-9A-Za-z]{22}==$/;

/** After the gateway sent its Close, how long the client has to answer before ws drops the socket (ms). */
export const CLOSE_TIMEOUT_MS = 5_000;

/** Messages up to this size reach the behavior in the thread's scratch ArrayBuffer; larger ones in one of their own. */
export const MESSAGE_SCRATCH_BYTES = 64 * 1024;

const SCRATCH = new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer & { resize(n: number): void })(0, { maxByteLength: MESSAGE_SCRATCH_BYTES });
const SCRATCH_VIEW = new Uint8Array(SCRATCH);
const EMPTY_AB = new ArrayBuffer(0);

/** The bytes of `b` as an ArrayBuffer valid during the callback it is handed to (scratch, its own buffer, or a copy). */
function toArrayBuffer(b: Buffer): ArrayBuffer {
  const n = b.length;
  if (n === 0) return EMPTY_AB;
  if (b.byteOffset === 0 && b.buffer.byteLength === n) return b.buffer as ArrayBuffer;
  if (n <= MESSAGE_SCRATCH_BYTES) {
    SCRATCH.resize(n);
    SCRATCH_VIEW.set(b);
    return SCRATCH;
  }
  return b.buffer.slice(b.byteOffset, b.byteOffset + n) as ArrayBuffer;
}

/** What the gateway uses of a `ws` server-side WebSocket (ws 8.x ships no types). */
interface WsSocket {
  readonly readyState: number;
  readonly bufferedAmount: number;
  readonly isPaused: boolean;
  send(data: Buffer | ArrayBuffer | string, options: { binary: boolean; compress: boolean; fin: boolean }): void;
  close(code?: number, reason?: Buffer | string): void;
  ping(data?: Buffer | ArrayBuffer | string): void;
  pause(): void;
  resume(): void;
  terminate(): void;
  on(event: string, fn: (...a: any[]) => void): void;
}
interface WsServer {
  handleUpgrade(req: UpgradeRequestLike, socket: net.Socket, head: Buffer, cb: (ws: WsSocket) => void): void;
  on(event: 'headers', fn: (headers: string[], req: UpgradeRequestLike) => void): void;
}
type WsServerCtor = new (options: Record<string, unknown>) => WsServer;

/** The request handed to handleUpgrade: only what it reads (no verifyClient, no path option). */
interface UpgradeRequestLike {
  method: 'GET';
  url: string;
  headers: Record<string, string>;
  /** Header lines for the 101 (`name: value`), from res.writeHeader before res.upgrade. */
  extra: string[];
  /** The subprotocol to answer ('' none). */
  protocol: string;
}

/** The uWS WebSocketBehavior fields this backend uses. */
export interface NodeWsBehavior {
  maxPayloadLength?: number;
  compression?: number;
  upgrade?: (res: any, req: any, context: unknown) => void;
  open?: (ws: NodeWebSocket) => void;
  message?: (ws: NodeWebSocket, message: ArrayBuffer, isBinary: boolean) => void;
  drain?: (ws: NodeWebSocket) => void;
  pong?: (ws: NodeWebSocket, message: ArrayBuffer) => void;
  close?: (ws: NodeWebSocket, code: number, message: ArrayBuffer) => void;
  [other: string]: unknown;
}

/** The connection a WebSocket lives on (app.ts Connection): its socket, its address. */
export interface WsConnection {
  readonly socket: net.Socket;
  remoteAddress(): string;
}

/** Per-message options for ws.send: preallocated (binary x compress). */
const SEND_OPTS = [
  { binary: false, compress: false, fin: true },
  { binary: true, compress: false, fin: true },
  { binary: false, compress: true, fin: true },
  { binary: true, compress: true, fin: true },
];

/**
 * The WebSocket side of one NodeApp: the behavior registered with
 * app.ws('/*', behavior) and the `ws` server (noServer, no client tracking:
 * the hub holds the tunnels) that performs the handshakes.
 */
export class NodeWsServer {
  readonly behavior: NodeWsBehavior;
  private readonly wss: WsServer;

  constructor(behavior: NodeWsBehavior) {
    this.behavior = behavior;
    const compression = behavior.compression ?? DISABLED;
    const { WebSocketServer } = require('ws') as { WebSocketServer: WsServerCtor };
    this.wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      // ws's default (100 MiB) when the behavior sets none; uWS's default is 16 KiB, but the transport always sets it.
      maxPayload: behavior.maxPayloadLength ?? 100 * 1024 * 1024,
      // uWS SHARED_COMPRESSOR: no context kept between messages either way (RFC 7692 7.1.1), so no
      // per-connection window survives a message. ws's threshold (1024 bytes) applies: smaller messages go as they are.
      perMessageDeflate: compression === DISABLED ? false : { serverNoContextTakeover: true, clientNoContextTakeover: true },
      // The client's pings are answered by ws (uWS answers them too); the gateway pings and times out itself (the hub).
      autoPong: true,
      allowSynchronousEvents: true,
      closeTimeout: CLOSE_TIMEOUT_MS,
      // The one subprotocol res.upgrade was given (the upstream's choice), or none.
      handleProtocols: (_offered: Set<string>, req: UpgradeRequestLike) => (req.protocol === '' ? false : req.protocol),
    });
    this.wss.on('headers', (headers, req) => {
      for (let i = 0; i < req.extra.length; i++) headers.push(req.extra[i]!);
    });
  }

  /**
   * res.upgrade: writes the 101 (with `extraHead`, the `name: value\r\n`
   * lines written on the response before) and makes the connection a
   * WebSocket. `protocol`: the subprotocol to answer ('' none);
   * `extensions`: the client's Sec-WebSocket-Extensions offer ('' none: no
   * compression; an offer ws cannot parse or accept is dropped, never a
   * 400). Returns the WebSocket (its behavior's open not called yet), or
   * null when the socket could not be upgraded (the client is gone or
   * half-closed: ws destroyed it).
   */
  accept(conn: WsConnection, userData: unknown, key: string, protocol: string, extensions: string, extraHead: string): NodeWebSocket | null {
    const headers: Record<string, string> = {
      upgrade: 'websocket',
      'sec-websocket-key': key,
      'sec-websocket-version': '13',
    };
    if (protocol !== '') headers['sec-websocket-protocol'] = protocol;
    if (extensions !== '' && (this.behavior.compression ?? DISABLED) !== DISABLED && acceptableExtensions(extensions, this.behavior.maxPayloadLength)) {
      headers['sec-websocket-extensions'] = extensions;
    }
    const extra: string[] = [];
    for (let at = 0; at < extraHead.length;) {
      const end = extraHead.indexOf('\r\n', at);
      const stop = end === -1 ? extraHead.length : end;
      if (stop > at) extra.push(extraHead.slice(at, stop));
      at = stop + 2;
    }
    const req: UpgradeRequestLike = { method: 'GET', url: '/', headers, extra, protocol };
    let out: NodeWebSocket | null = null;
    this.wss.handleUpgrade(req, conn.socket, Buffer.alloc(0), (ws) => {
      out = new NodeWebSocket(this, conn, ws, userData);
    });
    return out;
  }
}

let extensionLib: { parse(h: string): Record<string, unknown[]> } | null = null;
let DeflateCtor: (new (o: Record<string, unknown>) => { accept(offers: unknown[]): unknown; cleanup(): void }) | null = null;

/**
 * Whether ws would accept this Sec-WebSocket-Extensions offer (ws answers an
 * offer it cannot parse, or a permessage-deflate it cannot accept, with
 * 400). Checked on compression routes only, at the upgrade.
 */
function acceptableExtensions(offer: string, maxPayload: number | undefined): boolean {
  if (extensionLib === null) {
    // Exported by the package (WebSocket.extension, WebSocket.PerMessageDeflate): its exports map closes ws/lib/*.
    const ws = require('ws') as { extension: NonNullable<typeof extensionLib>; PerMessageDeflate: NonNullable<typeof DeflateCtor> };
    extensionLib = ws.extension;
    DeflateCtor = ws.PerMessageDeflate;
  }
  try {
    const offers = extensionLib.parse(offer);
    const pmd = offers['permessage-deflate'];
    if (pmd === undefined) return true;
    const d = new DeflateCtor!({ serverNoContextTakeover: true, clientNoContextTakeover: true, isServer: true, maxPayload });
    d.accept(pmd);
    d.cleanup();
    return true;
  } catch {
    return false;
  }
}

/**
 * uWS's WebSocket over a `ws` server-side WebSocket. Every call after the
 * close does nothing (uWS throws there; the tunnel never does it).
 */
export class NodeWebSocket {
  private readonly server: NodeWsServer;
  readonly conn: WsConnection;
  private readonly ws: WsSocket;
  private readonly userData: unknown;
  closed = false;
  /** send() keeps `message` by reference until written (the tunnel copies what is only lent to it). */
  readonly keepsSentData = true;

  constructor(server: NodeWsServer, conn: WsConnection, ws: WsSocket, userData: unknown) {
    this.server = server;
    this.conn = conn;
    this.ws = ws;
    this.userData = userData;
    const b = server.behavior;
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!this.closed && b.message !== undefined) b.message(this, toArrayBuffer(data), isBinary);
    });
    ws.on('pong', (data: Buffer) => {
      if (!this.closed && b.pong !== undefined) b.pong(this, toArrayBuffer(data));
    });
    // An 'error' (a protocol error of the client, a message over maxPayload) is followed by 'close'.
    ws.on('error', noop);
    ws.on('close', (code: number, reason: Buffer) => {
      if (this.closed) return;
      this.closed = true;
      if (b.close !== undefined) b.close(this, code, toArrayBuffer(reason));
    });
  }

  /**
   * Inside res.upgrade, after the 101: the behavior's open, then (from a
   * microtask, once the upgrade returned) the bytes read past the handshake
   * (`head`), and reads go on.
   */
  opened(head: Buffer | null): void {
    const open = this.server.behavior.open;
    if (open !== undefined) open(this);
    if (head !== null && head.length !== 0) queueMicrotask(() => this.onData(head));
    this.conn.socket.resume();
  }

  /** Bytes read from the client (owned: ws keeps references to them). */
  onData(chunk: Buffer): void {
    this.conn.socket.emit('data', chunk);
  }

  /** The socket drained: uWS's drain. */
  onDrain(): void {
    const drain = this.server.behavior.drain;
    if (!this.closed && drain !== undefined) drain(this);
  }

  getUserData(): unknown {
    return this.userData;
  }

  /**
   * Sends one message (whole: FIN). Returns SEND_SUCCESS when the socket
   * took it all, SEND_BACKPRESSURE when bytes wait to be written (wait for
   * drain); never SEND_DROPPED. `message` is kept by reference until written
   * (ws frames without copying on a server): pass bytes that stay valid.
   */
  send(message: Buffer | ArrayBuffer | string, isBinary = false, compress = false): number {
    if (this.closed || this.ws.readyState !== WS_OPEN) return SEND_SUCCESS; // closing: dropped, as after uWS's close
    this.ws.send(message, SEND_OPTS[(isBinary ? 1 : 0) + (compress ? 2 : 0)]!);
    return this.ws.bufferedAmount === 0 ? SEND_SUCCESS : SEND_BACKPRESSURE;
  }

  /** Bytes not yet taken by the kernel (ws's bufferedAmount: the socket's and what waits for compression). */
  getBufferedAmount(): number {
    return this.closed ? 0 : this.ws.bufferedAmount;
  }

  /**
   * Closes with a Close frame (`code` absent or 0: none in it; `reason` cut
   * to 123 bytes); the behavior's close follows once the client answered
   * and the connection is gone (at most CLOSE_TIMEOUT_MS).
   */
  end(code?: number, reason?: Buffer | ArrayBuffer | string): void {
    if (this.closed) return;
    if (code === undefined || code === 0) {
      this.ws.close();
      return;
    }
    let r: Buffer | string | undefined = reason instanceof ArrayBuffer ? Buffer.from(reason) : reason;
    if (r !== undefined && (typeof r === 'string' ? Buffer.byteLength(r) : r.length) > 123) {
      const b = typeof r === 'string' ? Buffer.from(r) : r;
      let n = 123;
      while (n > 0 && (b[n]! & 0xc0) === 0x80) n--;
      r = b.subarray(0, n);
    }
    try {
      this.ws.close(code, r);
    } catch {
      // A code the peer may not be sent (ws checks RFC 6455 7.4): a Close without one.
      this.ws.close();
    }
  }

  /** Drops the connection without a Close frame (the behavior's close gets 1006). */
  close(): void {
    if (this.closed) return;
    this.ws.terminate();
  }

  ping(message?: Buffer | ArrayBuffer | string): number {
    if (this.closed || this.ws.readyState !== WS_OPEN) return SEND_SUCCESS;
    this.ws.ping(message);
    return this.ws.bufferedAmount === 0 ? SEND_SUCCESS : SEND_BACKPRESSURE;
  }

  /** Gathers the writes `cb` makes into one socket write. */
  cork(cb: () => void): this {
    const s = this.conn.socket;
    s.cork();
    try {
      cb();
    } finally {
      s.uncork();
    }
    return this;
  }

  /**
   * Stops reading the client (not in uWS 20.30): its messages wait in the
   * kernel, and TCP flow control slows the client down. ws's public pause.
   */
  pause(): void {
    if (!this.closed) this.ws.pause();
  }

  resume(): void {
    if (!this.closed) this.ws.resume();
  }

  get isPaused(): boolean {
    return this.ws.isPaused;
  }

  getRemoteAddressAsText(): ArrayBuffer {
    return new TextEncoder().encode(this.conn.remoteAddress()).buffer as ArrayBuffer;
  }
}

const WS_OPEN = 1;
function noop(): void {}
