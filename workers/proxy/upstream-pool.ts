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
 */
import net from 'node:net';
import type { PoolConfig, TargetConfig } from '../../common/config/types.js';
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
  connected = false;
  destroyed = false;
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
    const socket = net.connect({
      host: pool.target.host,
      port: pool.target.port,
      noDelay: true,
      onread: { buffer: READ_BUFFER, callback: onSocketRead },
    });
    (socket as any)[kConn] = this;
    socket.on('connect', onSocketConnect);
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
  const connectPhase = !conn.connected;
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
  /** The Host header value for this target (port omitted when 80). */
  readonly hostHeader: string;
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

  constructor(target: TargetConfig, config: PoolConfig, metricsSlot = TARGET_OVERFLOW_SLOT) {
    this.target = target;
    this.config = config;
    this.slot = metricsSlot;
    this.metricsBase = targetBase(metricsSlot);
    const h = target.host.includes(':') ? `[${target.host}]` : target.host;
    this.hostHeader = target.port === 80 ? h : `${h}:${target.port}`;
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
    const idle = this.idle.splice(0);
    for (const c of idle) c.destroy();
    // Whoever still waits gets a socket of its own: their exchange is under way.
    for (let next = this.nextWaiting(); next !== null; next = this.nextWaiting()) {
      this.open++;
      new Connection(this, next);
    }
  }
}
