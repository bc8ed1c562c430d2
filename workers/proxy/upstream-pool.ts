/**
 * Keep-alive connection pools to upstream targets, one pool per target per
 * worker thread.
 *
 * Design:
 *  - Reads use `net.connect({ onread })` with ONE buffer shared by every
 *    upstream socket of the thread: a read is consumed synchronously (parsed
 *    and written to the client through uWS, which copies), so a shared buffer
 *    is safe and no Buffer is allocated per read, and Node's Readable stream
 *    machinery is skipped.
 *  - Socket callbacks are module-level functions that find their connection
 *    through a symbol on the socket: no closures per connection or request.
 *  - Idle connections are reused LIFO (the most recently used socket is the
 *    one least likely to have been closed by the upstream's keep-alive
 *    timer); idle ones older than pool.idleTimeoutMs are closed by the
 *    worker's sweeper (see timers.ts), not by a timer each.
 *  - A pool opens at most pool.maxConnections sockets; requests beyond that
 *    wait in a bounded FIFO (pool.maxPending), past which the request gets
 *    503 upstream_unavailable at once instead of queueing without bound.
 *
 * https:// targets (TargetConfig.tls; the upstream's `tls` settings,
 * UpstreamTlsConfig) connect with `tls.connect`, which honours `onread` on
 * Node 20 as net.connect does (each TLS record, at most 16 KiB of
 * plaintext, lands in the same READ_BUFFER and goes through the same
 * callback: the read path has no TLS branch). A TLS connection counts as
 * connected at 'secureConnect' (the certificate verified): the request is
 * never written before. One SecureContext per upstream `tls` block (the CA
 * bundle and client certificate parsed once per worker and config), and
 * the last TLS session each pool was given (the 'session' event: a TLS 1.3
 * ticket or a TLS 1.2 session) is offered by its next connection, so new
 * pooled connections resume instead of doing a full handshake. A handshake
 * that fails once TCP is up (certificate refused, wrong name, expired, no
 * shared version or ALPN protocol, the peer closed mid-handshake) marks the
 * connection `tlsFailed` for the exchange (502 upstream_tls_failed), as does
 * a TLS alert on a fresh connection before any response byte (TLS 1.3 mTLS:
 * the server refuses a missing client certificate after the client's side
 * of the handshake completed, before it reads any request).
 */
import net from 'node:net';
import tls from 'node:tls';
import type { PoolConfig, TargetConfig, UpstreamTlsConfig } from '../../common/config/types.js';
import { UPSTREAM_TLS_DEFAULTS, sniFor } from '../../common/config/tls.js';
import { FixedQueue } from './fixed-queue.js';
import { TARGET_OVERFLOW_SLOT, T_IDLE, T_OPEN, targetBase } from '../../common/metrics-layout.js';
import { ResponseParser } from './http1-parser.js';

export const READ_BUFFER_BYTES = 64 * 1024;
/** Shared by every upstream socket of this thread; valid only during a read callback. */
export const READ_BUFFER = Buffer.allocUnsafe(READ_BUFFER_BYTES);

const kConn = Symbol('turnpike.conn');

/**
 * This thread's shared counters (common/metrics-layout.ts), for the
 * open/idle upstream connection gauges of each target; set once by the worker.
 */
let gauges: Float64Array | null = null;
export function setPoolGauges(cells: Float64Array): void {
  gauges = cells;
}
function gauge(cell: number, delta: number): void {
  if (gauges !== null) gauges[cell]! += delta;
}

/** The request side of a connection: implemented by the exchange only. */
export interface ConnectionUser {
  /** Set while the user waits in a pool's queue. */
  queued: boolean;
  /** The socket being opened for this user, until onConnection or failure. */
  connecting: Connection | null;
  /** The user no longer wants a connection (client went away). */
  cancelled: boolean;
  onConnection(conn: Connection): void;
  /** Connect failed, or the connection broke before the exchange completed. */
  onConnectionError(conn: Connection, connectPhase: boolean, err: Error | null): void;
  onUpstreamRead(conn: Connection, n: number): void;
  onUpstreamDrain(conn: Connection): void;
  /** The socket closed cleanly (EOF); close-delimited bodies end here. */
  onUpstreamEof(conn: Connection): void;
  /**
   * One of the calls above threw (a bug): log it, answer 500 or close the
   * client side; must not throw. The connection is destroyed already.
   */
  crashed(err: unknown): void;
}

/**
 * Socket callbacks run the exchange; a throw out of them would be an
 * uncaught exception that ends the worker and every request on it. A bug
 * ends only its own exchange instead.
 */
function userCrashed(conn: Connection, user: ConnectionUser, err: unknown): void {
  conn.destroy();
  user.crashed(err);
}

export class Connection {
  readonly socket: net.Socket;
  readonly pool: TargetPool;
  readonly parser = new ResponseParser();
  user: ConnectionUser | null = null;
  /** TCP connected, and for a TLS target the handshake done too ('secureConnect'). */
  connected = false;
  destroyed = false;
  /** A TLS target's TCP connection is up (its handshake may still be under way); unused for plain targets. */
  tcpUp = false;
  /**
   * Set when it broke: the TLS handshake failed (or the TLS layer refused the
   * connection before any response byte), not the TCP connect. Read by the
   * user in onConnectionError (then connectPhase is true).
   */
  tlsFailed = false;
  /** Requests completed on this connection (0: fresh; >0: a reused keep-alive socket). */
  served = 0;
  idleSince = 0;
  /** In its pool's idle stack (for the idle gauge). */
  idle = false;

  constructor(pool: TargetPool, user: ConnectionUser) {
    this.pool = pool;
    this.user = user;
    user.connecting = this;
    gauge(pool.metricsBase + T_OPEN, 1);
    const t = pool.tls;
    let socket: net.Socket;
    if (t === null) {
      socket = net.connect({
        host: pool.target.host,
        port: pool.target.port,
        noDelay: true,
        onread: { buffer: READ_BUFFER, callback: onSocketRead },
      });
      socket.on('connect', onSocketConnect);
    } else {
      socket = tls.connect({
        host: pool.target.host,
        port: pool.target.port,
        secureContext: (t.context ??= upstreamSecureContext(t.config)),
        servername: t.servername,
        rejectUnauthorized: t.rejectUnauthorized,
        ALPNProtocols: ALPN,
        session: pool.tlsSession ?? undefined,
        // Honoured by tls.connect (Node passes it to the TLSSocket's net.Socket) though @types/node leaves it out.
        onread: { buffer: READ_BUFFER, callback: onSocketRead },
      } as tls.ConnectionOptions);
      socket.setNoDelay(true); // tls.connect does not take noDelay; applied once TCP is up
      socket.on('connect', onTlsTcpConnect);
      socket.on('secureConnect', onSocketConnect);
      socket.on('session', onTlsSession);
    }
    (socket as any)[kConn] = this;
    socket.on('error', onSocketError);
    socket.on('close', onSocketClose);
    socket.on('end', onSocketEnd);
    socket.on('drain', onSocketDrain);
    this.socket = socket;
  }

  write(data: string | Buffer): boolean {
    return typeof data === 'string' ? this.socket.write(data, 'latin1') : this.socket.write(data);
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  /** Closes the socket without handing it back (broken or mid-exchange). */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.user = null;
    this.pool.onConnectionGone(this);
    this.socket.destroy();
  }
}

function onSocketConnect(this: net.Socket): void {
  const conn = (this as any)[kConn] as Connection;
  conn.connected = true;
  const user = conn.user;
  if (user === null || user.cancelled) {
    conn.user = null;
    conn.pool.release(conn);
    return;
  }
  user.connecting = null;
  try {
    user.onConnection(conn);
  } catch (err) {
    userCrashed(conn, user, err);
  }
}

function onTlsTcpConnect(this: net.Socket): void {
  ((this as any)[kConn] as Connection).tcpUp = true;
}

/** A TLS session (1.2) or ticket (1.3) the target issued: the pool's next connection offers it. */
function onTlsSession(this: net.Socket, session: Buffer): void {
  const conn = (this as any)[kConn] as Connection;
  if (!conn.pool.closed) conn.pool.tlsSession = session;
}

function onSocketRead(this: net.Socket, n: number, _buf: Buffer): boolean {
  const conn = (this as any)[kConn] as Connection;
  const user = conn.user;
  if (user === null) {
    // Bytes on an idle connection: the upstream broke framing; never reuse it.
    conn.destroy();
    return false;
  }
  try {
    user.onUpstreamRead(conn, n);
  } catch (err) {
    userCrashed(conn, user, err);
    return false;
  }
  return true;
}

function onSocketDrain(this: net.Socket): void {
  const conn = (this as any)[kConn] as Connection;
  const user = conn.user;
  if (user === null) return;
  try {
    user.onUpstreamDrain(conn);
  } catch (err) {
    userCrashed(conn, user, err);
  }
}

function onSocketEnd(this: net.Socket): void {
  const conn = (this as any)[kConn] as Connection;
  const user = conn.user;
  if (user === null) return;
  try {
    user.onUpstreamEof(conn);
  } catch (err) {
    userCrashed(conn, user, err);
  }
}

function onSocketError(this: net.Socket, err: Error): void {
  const conn = (this as any)[kConn] as Connection;
  connectionBroken(conn, err);
}

function onSocketClose(this: net.Socket): void {
  const conn = (this as any)[kConn] as Connection;
  connectionBroken(conn, null);
}

function connectionBroken(conn: Connection, err: Error | null): void {
  const user = conn.user;
  let connectPhase = !conn.connected;
  if (conn.pool.tls !== null && !conn.destroyed) {
    if (connectPhase) {
      conn.tlsFailed = conn.tcpUp;
    } else if (err !== null && conn.served === 0 && !conn.parser.started && isTlsAlert(err)) {
      // TLS 1.3: a server that refuses the client's certificate (or its
      // absence) says so after the client's side of the handshake is done,
      // before it reads the request: the request never reached the service.
      conn.tlsFailed = true;
      connectPhase = true;
    }
    // A session from a handshake that failed is not offered again.
    if (conn.tlsFailed) conn.pool.tlsSession = null;
  }
  if (user !== null && user.connecting === conn) user.connecting = null;
  if (!conn.destroyed) {
    conn.destroyed = true;
    conn.user = null;
    conn.pool.onConnectionGone(conn);
  }
  if (user === null) return;
  try {
    user.onConnectionError(conn, connectPhase, err);
  } catch (e) {
    user.crashed(e);
  }
}

/** An error raised by the TLS layer (OpenSSL alerts and record errors, Node's certificate checks), not by the TCP socket. */
function isTlsAlert(err: Error): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code !== undefined && (code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_'));
}

/**
 * What a TLS failure was, for the error log (never for the client): the
 * error's code (a certificate check: UNABLE_TO_VERIFY_LEAF_SIGNATURE,
 * DEPTH_ZERO_SELF_SIGNED_CERT, CERT_HAS_EXPIRED, ERR_TLS_CERT_ALTNAME_INVALID;
 * a handshake alert: ERR_SSL_...) and its message.
 */
export function tlsFailureDetail(err: Error | null): string {
  if (err === null) return 'TLS handshake: the connection closed before it completed';
  const code = (err as NodeJS.ErrnoException).code;
  // OpenSSL's messages are "<id>:error:<code>:<library>:<function>:<reason>:<file>:<line>:<data>\n": keep the reason.
  let msg = err.message.trim();
  const openssl = /:error:[0-9A-Fa-f]+:[^:]*:[^:]*:([^:]+)/.exec(msg);
  if (openssl !== null) msg = openssl[1]!.trim();
  return code === undefined ? `TLS handshake: ${msg}` : `TLS handshake: ${code}: ${msg}`;
}

/**
 * How a pool connects to its https:// target, built once per pool from the
 * upstream's `tls` block (UpstreamTlsConfig).
 */
export interface PoolTls {
  readonly config: UpstreamTlsConfig;
  /** CA bundle (or Node's bundled roots), client certificate, minVersion: shared by the pools of one `tls` block; made at the first connect. */
  context: tls.SecureContext | null;
  /**
   * SNI and the name the certificate must carry: `servername`, else the
   * target's host; undefined for an IP address (RFC 6066 3: no IP literals
   * in SNI; the certificate is then checked against the IP itself).
   */
  readonly servername: string | undefined;
  readonly rejectUnauthorized: boolean;
  /** The same settings as Bun's fetch() takes them (its `tls` option; the Bun backend): no minVersion there. */
  readonly fetch: { ca?: string; cert?: string; key?: string; rejectUnauthorized: boolean; serverName?: string };
}

/** Offered in every upstream TLS handshake: the gateway speaks HTTP/1.1 only (RFC 7301). */
const ALPN = ['http/1.1'];

/** One SecureContext per `tls` block (each worker compiles its own copy of the config): parsed once, not per pool. */
const contexts = new WeakMap<UpstreamTlsConfig, tls.SecureContext>();

/**
 * The SecureContext of an upstream's `tls` block: `caPem` replaces Node's
 * bundled root CAs when set; `clientCert` is presented when the target asks
 * (mTLS). Throws what tls.createSecureContext throws (the config loader
 * checked these already).
 */
export function upstreamSecureContext(c: UpstreamTlsConfig): tls.SecureContext {
  let ctx = contexts.get(c);
  if (ctx === undefined) {
    ctx = tls.createSecureContext({
      ca: c.caPem ?? undefined,
      cert: c.clientCert?.certPem,
      key: c.clientCert?.keyPem,
      minVersion: c.minVersion,
    });
    contexts.set(c, ctx);
  }
  return ctx;
}

/** The TLS settings of an https:// target (`tls` null: the upstream's defaults: bundled roots, verified, TLSv1.2+). */
export function poolTls(target: TargetConfig, c: UpstreamTlsConfig | null): PoolTls {
  const cfg = c ?? UPSTREAM_TLS_DEFAULTS;
  const servername = sniFor(target.host, cfg.servername);
  const fetch: PoolTls['fetch'] = { rejectUnauthorized: cfg.rejectUnauthorized };
  if (cfg.caPem !== null) fetch.ca = cfg.caPem;
  if (cfg.clientCert !== null) {
    fetch.cert = cfg.clientCert.certPem;
    fetch.key = cfg.clientCert.keyPem;
  }
  if (cfg.servername !== null) fetch.serverName = cfg.servername;
  return { config: cfg, context: null, servername, rejectUnauthorized: cfg.rejectUnauthorized, fetch };
}

/**
 * Whether an error code (Node's or Bun fetch's) is a TLS failure: a
 * certificate check (OpenSSL's X509 verify names: UNABLE_TO_VERIFY_LEAF_SIGNATURE,
 * DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_CERT_IN_CHAIN, CERT_HAS_EXPIRED,
 * CERT_NOT_YET_VALID...), Node's name check (ERR_TLS_CERT_ALTNAME_INVALID),
 * an OpenSSL alert (ERR_SSL_...) or Bun's EPROTO (handshake failed).
 */
export function isTlsErrorCode(code: string): boolean {
  return /^(?:ERR_TLS_|ERR_SSL_|EPROTO$|CERT_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_|HOSTNAME_MISMATCH|INVALID_CA|INVALID_PURPOSE|PATH_LENGTH_EXCEEDED)/.test(code);
}

export const ACQUIRE_QUEUED = 1;
export const ACQUIRE_CONNECTING = 2;
export const ACQUIRE_FULL = 3;

export class TargetPool {
  readonly target: TargetConfig;
  readonly config: PoolConfig;
  private readonly idle: Connection[] = [];
  private readonly pending = new FixedQueue<ConnectionUser>();
  /** Sockets open or connecting. */
  open = 0;
  /** Requests assigned to this target and not finished (least_conn). */
  active = 0;
  closed = false;
  /** The Host header value for this target (port omitted when it is the scheme's default: 80, or 443 for https). */
  readonly hostHeader: string;
  /** `http://` or `https://` and hostHeader: the origin of request URLs to this target (the Bun backend's fetch). */
  readonly origin: string;
  /** How to connect with TLS (an https:// target), or null: plain TCP. */
  readonly tls: PoolTls | null;
  /** The last TLS session the target issued on a connection of this pool, offered by the next one (resumption), or null. */
  tlsSession: Buffer | null = null;
  /**
   * First cell of this target's metrics slot (common/metrics-layout.ts
   * targetBase), fixed at config time: the exchange counts into it with no
   * lookup per request.
   */
  readonly metricsBase: number;
  /** The target's slot (metrics and shared upstream state: the same engine-assigned number). */
  readonly slot: number;
  /** First cell of this target in the shared upstream state (common/upstream-state-layout.ts), or -1: unguarded. Set by the guard. */
  stateCell = -1;
  /** This target's in-flight cell within a worker's section of the shared upstream state. Set by the guard. */
  flightSlot = 0;

  /** `tls`: the upstream's TLS settings (UpstreamConfig.tls), used when the target is https://. */
  constructor(target: TargetConfig, config: PoolConfig, metricsSlot = TARGET_OVERFLOW_SLOT, tls: UpstreamTlsConfig | null = null) {
    this.target = target;
    this.config = config;
    this.slot = metricsSlot;
    this.metricsBase = targetBase(metricsSlot);
    const h = target.host.includes(':') ? `[${target.host}]` : target.host;
    const secure = target.tls === true;
    this.hostHeader = target.port === (secure ? 443 : 80) ? h : `${h}:${target.port}`;
    this.origin = (secure ? 'https://' : 'http://') + this.hostHeader;
    this.tls = secure ? poolTls(target, tls) : null;
  }

  /**
   * An idle connection, or null; then call `connectOrQueue`.
   * This is the hot path -- change with care!
   */
  takeIdle(): Connection | null {
    const idle = this.idle;
    while (idle.length > 0) {
      const conn = idle.pop()!;
      if (!conn.destroyed) {
        conn.idle = false;
        gauge(this.metricsBase + T_IDLE, -1);
        return conn;
      }
    }
    return null;
  }

  connectOrQueue(user: ConnectionUser): number {
    if (this.open < this.config.maxConnections) {
      this.open++;
      new Connection(this, user);
      return ACQUIRE_CONNECTING;
    }
    if (this.pending.length >= this.config.maxPending) return ACQUIRE_FULL;
    user.queued = true;
    this.pending.push(user);
    return ACQUIRE_QUEUED;
  }

  /** The exchange is done with a healthy keep-alive connection. */
  release(conn: Connection): void {
    conn.user = null;
    if (conn.destroyed) return;
    if (this.closed) {
      conn.destroy();
      return;
    }
    const next = this.nextWaiting();
    if (next !== null) {
      conn.user = next;
      try {
        next.onConnection(conn);
      } catch (err) {
        userCrashed(conn, next, err);
      }
      return;
    }
    conn.idleSince = performance.now();
    conn.idle = true;
    gauge(this.metricsBase + T_IDLE, 1);
    this.idle.push(conn);
  }

  /** The oldest queued request still wanting a connection (cancelled ones are dropped). */
  private nextWaiting(): ConnectionUser | null {
    let next = this.pending.shift();
    while (next !== undefined) {
      next.queued = false;
      if (!next.cancelled) return next;
      next = this.pending.shift();
    }
    return null;
  }

  /** A socket closed or was destroyed: its slot may serve a waiting request. */
  onConnectionGone(conn: Connection): void {
    this.open--;
    gauge(this.metricsBase + T_OPEN, -1);
    if (conn.idle) {
      conn.idle = false;
      gauge(this.metricsBase + T_IDLE, -1);
    }
    if (this.closed) return;
    const next = this.nextWaiting();
    if (next !== null) {
      this.open++;
      new Connection(this, next);
    }
  }

  /** Close idle sockets unused since before `cutoff` (performance.now ms). */
  sweepIdle(cutoff: number): void {
    const idle = this.idle;
    if (idle.length === 0) return;
    // Oldest are at the bottom of the LIFO stack.
    let k = 0;
    while (k < idle.length && (idle[k]!.destroyed || idle[k]!.idleSince < cutoff)) k++;
    if (k === 0) return;
    const stale = idle.splice(0, k);
    for (const c of stale) c.destroy();
  }

  get idleCount(): number {
    return this.idle.length;
  }

  /** Config replaced: close idle sockets now, busy ones when their exchange ends. */
  close(): void {
    this.closed = true;
    this.tlsSession = null;
    const idle = this.idle.splice(0);
    for (const c of idle) c.destroy();
    // Whoever still waits gets a socket of its own: their exchange is under way.
    for (let next = this.nextWaiting(); next !== null; next = this.nextWaiting()) {
      this.open++;
      new Connection(this, next);
    }
  }
}
