/**
 * One proxied HTTP exchange on the uWS backend: the client side is a uWS
 * HttpResponse, the upstream side a pooled keep-alive Connection.
 *
 * Life of an exchange:
 *   awaitDecision()    (only when a policy's decision is pending: a strict
 *                      rate limit) wait for it, queueing body chunks; then
 *                      start() as below, or answer its refusal (429/503)
 *   start()            pick a target, take an idle connection or open/queue one
 *   onConnection()     write the request head (+ buffered body) upstream
 *   onClientData()     stream the request body up; uWS pause() on backpressure
 *   onResponseHead()   write status + filtered headers to the client
 *   onResponseData()   stream the body down; tryEnd/write + onWritable backpressure
 *   onResponseEnd()    end the client response, hand the connection back
 * and at any point: client aborted (onAborted), upstream broke (502 before
 * the head, a closed client connection after it: never a clean short 200),
 * or a deadline passed (504 before the head).
 * With the upstream's `retry` (workers/proxy/retry.ts), a try that failed
 * before anything reached the client (connect failure, reset or timeout
 * before the head, or a listed 5xx head, dropped unwritten) may be retried:
 *   retryTry()         the failed try given back to the breaker and logged,
 *                      the budget taken, the next target admitted (an
 *                      untried one first); after the backoff wait:
 *   nextTry()          as start(), on the new target; a body goes again from
 *                      the chunks kept (at most RETRY_BODY_MAX_BYTES).
 *
 * uWS rules honoured here (ENVIRONMENT.md): onAborted is attached before any
 * asynchronous step; every write from outside a uWS callback is corked; an
 * HttpResponse is never touched after end/abort (`res` is nulled).
 */
import type { GatewayErrorDef } from '../../common/errors.js';
import { Errors } from '../../common/errors.js';
import { log } from '../../common/log.js';
import { DURATION_BUCKETS, G_IN_FLIGHT, T_LATENCY, observe } from '../../common/metrics-layout.js';
import { countError, recordRequest, recordSizes } from '../request-metrics.js';
import type { RouteContext } from '../dataplane.js';
import type { LatencyRecorder } from '../latency.js';
import { type UpstreamRuntime, withStickyCookie } from '../proxy/balancer.js';
import { R_CONNECT_FAILURE, R_RESET, R_TIMEOUT, RETRY_BODY_MAX_BYTES, RetryPolicy } from '../proxy/retry.js';
import { connectionListed } from '../proxy/headers.js';
import { BODY_CHUNKED, BODY_LENGTH, BODY_NONE, ParseError, type ResponseSink } from '../proxy/http1-parser.js';
import { coarse, type TimerList, type Timed } from '../proxy/timers.js';
import {
  ACQUIRE_FULL, READ_BUFFER, tlsFailureDetail, type Connection, type ConnectionUser, type TargetPool,
} from '../proxy/upstream-pool.js';
import { CLOSE_NONE, endWhole, endWithoutBody, writeGatewayError } from './uws-respond.js';
import { SHUTDOWN_MESSAGE } from './backend.js';
import { CONTINUE, type DecisionWaiter, type PendingDecision } from '../pipeline/context.js';
import { entry, resetEntry } from '../access-log.js';
import type { Phase } from '../error-log.js';
import type { WorkerLogs } from '../logs.js';

export const REQ_BODY_NONE = 0;
export const REQ_BODY_LENGTH = 1;
export const REQ_BODY_CHUNKED = 2;

const PHASE_CONNECT = 1;
const PHASE_SEND = 2;
const PHASE_HEAD = 3;
const PHASE_BODY = 4;
/** Waiting for a policy's pending decision (no upstream yet). */
const PHASE_DECIDE = 5;
/** Waiting out the backoff before a retry (retryTry). */
const PHASE_BACKOFF = 6;
const PHASE_NAMES: readonly Phase[] = ['connect', 'connect', 'send', 'head', 'body', 'gateway', 'connect'];

/** Takes the rest of a response dropped for a status retry (its connection is closed right after). */
const DISCARD: ResponseSink = { onResponseHead() {}, onResponseData() {}, onResponseEnd() {} };

/**
 * Request body bytes queued while a decision is pending before the client
 * is paused: a decision takes a Redis round trip, yet a slow Redis (up to
 * redis.commandTimeoutMs) must not make the gateway hold a whole upload.
 */
const DECIDE_QUEUE_MAX = 64 * 1024;

const CRLF = Buffer.from('\r\n');

/**
 * Methods a request may be sent again for after the upstream dropped it
 * (RFC 9110 9.2.2 idempotent methods; RFC 9112 9.3.1: a proxy MUST NOT
 * retry a non-idempotent request on its own).
 */
function isIdempotent(method: string): boolean {
  switch (method) {
    case 'GET': case 'HEAD': case 'OPTIONS': case 'TRACE': case 'PUT': case 'DELETE': return true;
    default: return false;
  }
}

/**
 * A response header value as uWS must be given it. The upstream head is
 * decoded as latin1 (one char per byte) but uWS writes a JS string as
 * UTF-8, which would turn each byte >= 0x80 into two: such values go over
 * as their original bytes. Only called when the head has such bytes.
 */
function exactValue(v: string): string | Buffer {
  return Buffer.byteLength(v, 'utf8') === v.length ? v : Buffer.from(v, 'latin1');
}
const LAST_CHUNK = Buffer.from('0\r\n\r\n');

/** Shared per-thread state the exchanges need (set by the server). */
export interface ExchangeEnv {
  /** Access and error logs of this worker. */
  logs: WorkerLogs;
  metrics: Float64Array;
  /** metrics.enabled: count into `metrics` and `latency`. */
  metricsOn: boolean;
  latency: LatencyRecorder | null;
  timers: TimerList;
  requestIdHeader: string;
  /** Called after work that may have queued process.nextTick callbacks from a uWS callback. */
  pump(): void;
}


// cork() takes a callback; these module-level slots let it run a method of
// the current exchange without a closure per call.
// Request body chunks: uWS detaches the ArrayBuffer it hands to onData when
// the callback returns, so a chunk must be copied before a socket may keep
// it. A fresh Buffer per chunk (16 KiB for a 16 KiB POST) is external memory
// that drives V8 into a major GC every few hundred requests (concurrent
// marking was ~12% of CPU under a POST load, invisible to --cpu-prof).
// Instead a chunk is copied into this thread's scratch buffer and written
// from there; almost always the kernel takes the whole write at once and the
// scratch buffer is free again. When the socket keeps the bytes (a partial
// or queued write), the scratch buffer becomes that write's and the next
// chunk gets a new one.
const SCRATCH_BYTES = 64 * 1024;
let scratch: Buffer | null = null;

/** The chunk in the scratch buffer (or a copy of its own when it is larger). Call settleScratch after writing it. */
function stageChunk(ab: ArrayBuffer, n: number): Buffer {
  if (n > SCRATCH_BYTES) return Buffer.copyBytesFrom(new Uint8Array(ab));
  const s = (scratch ??= Buffer.allocUnsafeSlow(SCRATCH_BYTES));
  s.set(new Uint8Array(ab));
  return s.subarray(0, n);
}

/** After writing a staged chunk: bytes still held by the socket mean it still points into the scratch buffer. */
function settleScratch(conn: Connection): void {
  if (conn.socket.writableLength !== 0) scratch = null;
}

/**
 * Request bodies kept for a retry (retry on, a retried method, at most
 * RETRY_BODY_MAX_BYTES) are copied into one buffer of that size per
 * exchange, taken from this thread's free list and given back when the
 * exchange completes (unless a socket may still be writing from it): a
 * fresh Buffer per chunk costs an allocation of external memory each and
 * the GC work that follows (5x the copy itself for 16 KiB chunks: bench/
 * retry-micro.mjs), as the scratch buffer above explains.
 */
const keptFree: Buffer[] = [];
/** Free kept-body buffers held per thread at most (64 x 64 KiB = 4 MiB). */
const KEPT_FREE_MAX = 64;

let corkEx: Exchange | null = null;
let corkN = 0;
function corkedRead(): void {
  corkEx!.readUpstream(corkConn!, corkN);
}

export class Exchange implements ConnectionUser, ResponseSink, Timed, DecisionWaiter {
  // --- client side
  res: any;
  readonly env: ExchangeEnv;
  readonly route: RouteContext;
  /**
   * The upstream this request goes to (the route's, or the one its traffic
   * split chose); a retry moves it to the runtime of the running config
   * when a reload or a discovery update replaced it (UpstreamRuntime.latest).
   */
  upstream: UpstreamRuntime;
  readonly method: string;
  readonly isHead: boolean;
  readonly requestId: string;
  readonly methodIdx: number;
  readonly t0: number;
  /**
   * CLOSE_NONE, or how the connection closes after this response because
   * the client asked (`close` in Connection): CLOSE_BY_SERVER when uWS does
   * it by itself, CLOSE_ENFORCE when the gateway must (uws-respond.ts).
   */
  readonly clientClose: number;
  /** How this connection closes when the gateway decides it must (CLOSE_BY_SERVER or CLOSE_ENFORCE). */
  readonly closeBy: number;
  /** `Connection: close` still to be written before the first body byte (a streamed response cannot close itself: uws-respond.ts). */
  private closeHeaderPending = false;
  /** Ending the response with a real close is under way: the onAborted it triggers is expected. */
  private closing = false;
  /** Request head for the upstream, built synchronously from the uWS request. */
  head: string;
  reqBodyMode: number;
  reqBodyLimit: number;
  reqBytes = 0;
  reqBodyDone: boolean;
  /** Body chunks received before the upstream connection was ready. */
  private bodyQueue: Buffer[] | null = null;
  private clientPaused = false;
  // --- upstream side
  pool: TargetPool | null = null;
  conn: Connection | null = null;
  queued = false;
  cancelled = false;
  connecting: Connection | null = null;
  private headSent = false;
  private retried = false;
  private tSent = 0;
  // --- response
  status = 0;
  private resBodyKind = BODY_NONE;
  private resTotal = 0;
  resBytes = 0;
  private pending: Buffer | null = null;
  private pendingBase = 0;
  private writableHooked = false;
  private upstreamPaused = false;
  responded = false;
  finished = false;
  /** Test hook (TURNPIKE_TEST_HOOKS=1 only): throw when the response head arrives. */
  testThrow = false;
  // --- retries (workers/proxy/retry.ts)
  /** The upstream's retry policy when this request's method may be retried, else null (nothing more is paid). */
  private readonly retry: RetryPolicy | null;
  /** From request sent to response head, per try (ms): the retry's perTryTimeoutMs, else timeouts.responseMs. */
  private readonly responseMs: number;
  /** Retries made. */
  retries = 0;
  /** The authenticated consumer (routes with auth), for the access log; '' for none. */
  consumer = '';
  /** Targets tried (a retry prefers another), or null: no retry yet. */
  private tried: TargetPool[] | null = null;
  /** Body chunks sent upstream are kept for a retry (own copies, not the scratch buffer) while the body fits RETRY_BODY_MAX_BYTES. */
  private keeping = false;
  /** The body chunks sent upstream so far on this try, when keeping. */
  private kept: Buffer[] | null = null;
  /** The buffer (from keptFree) the kept chunks live in, the bytes used in it, and the connection last written from it. */
  private keptBuf: Buffer | null = null;
  private keptLen = 0;
  private keptConn: Connection | null = null;
  /** The backoff timer of a pending retry. */
  private retryTimer: NodeJS.Timeout | null = null;
  /** Response headers the route's policies add (name/value pairs: RateLimit...), or null. */
  policyHeaders: string[] | null = null;
  /** The pending decision this exchange waits for (awaitDecision), or null. */
  private decision: PendingDecision | null = null;
  /** The target picked for the request, kept aside while the decision is pending (pool is null until then: nothing counted against it). */
  private pickedPool: TargetPool | null = null;
  /** The upstream admission (workers/proxy/guard.ts) holds a half-open probe place. */
  probe = false;
  /** How a refusal closes the connection (the handler's rule for early answers: unread body, client's close). */
  private refuseClose = CLOSE_NONE;
  // --- for the logs (set by the server; references, no copies)
  client = '';
  host = '';
  /** The request target's path as received, and its query. */
  path = '';
  query = '';
  userAgent = '';
  referer = '';
  /** Request sent to response head, ms (-1: none). */
  upstreamMs = -1;
  /** The gateway error code this exchange ended with ('' for none). */
  errorCode = '';
  /** What the upstream failure was: errno code, timeout, parse problem ('' for none). */
  detail = '';
  // --- timers
  deadline = 0;
  phase = 0;
  prevTimed: Timed | null = null;
  nextTimed: Timed | null = null;

  constructor(
    res: any, env: ExchangeEnv, route: RouteContext, upstream: UpstreamRuntime, pool: TargetPool, method: string, methodIdx: number,
    requestId: string, head: string, reqBodyMode: number, reqBodyLimit: number, t0: number, clientClose: number, closeBy: number,
  ) {
    this.res = res;
    this.env = env;
    this.route = route;
    this.upstream = upstream;
    this.pool = pool;
    this.method = method;
    this.methodIdx = methodIdx;
    this.isHead = method === 'HEAD';
    this.requestId = requestId;
    this.head = head;
    this.reqBodyMode = reqBodyMode;
    this.reqBodyLimit = reqBodyLimit;
    this.reqBodyDone = reqBodyMode === REQ_BODY_NONE;
    this.t0 = t0;
    this.clientClose = clientClose;
    this.closeBy = closeBy;
    const r = upstream.retry;
    if (r === null) {
      this.retry = null;
      this.responseMs = upstream.config.timeouts.responseMs;
    } else {
      r.countRequest();
      this.retry = r.attempts > 0 && r.allows(method, route.retryMethods) ? r : null;
      this.responseMs = r.tryTimeoutMs;
      this.keeping = this.retry !== null && reqBodyMode !== REQ_BODY_NONE;
    }
  }

  /** Called synchronously from the uWS request handler. */
  start(): void {
    this.env.metrics[G_IN_FLIGHT]!++;
    this.env.timers.add(this);
    const pool = this.pool!;
    pool.active++;
    this.connectTo(pool);
  }

  /** An idle keep-alive connection of `pool` when there is one, else a new one (or a place in its queue). */
  private connectTo(pool: TargetPool): void {
    const idle = pool.takeIdle();
    if (idle !== null) {
      idle.user = this;
      this.onConnection(idle);
    } else {
      this.acquireNew();
    }
  }

  /**
   * Called from the uWS request handler instead of start() when a policy's
   * decision is pending (workers/pipeline/context.ts). The exchange counts
   * as in flight (drain waits for it) and is guarded by the decision's
   * guardMs; `refuseClose` is how a refusal closes (CLOSE_*), decided by
   * the handler as for any early answer. Body chunks are queued meanwhile
   * (the client is paused past DECIDE_QUEUE_MAX bytes).
   */
  awaitDecision(d: PendingDecision, refuseClose: number): void {
    this.env.metrics[G_IN_FLIGHT]!++;
    this.env.timers.add(this);
    this.pickedPool = this.pool;
    this.pool = null;
    this.decision = d;
    this.refuseClose = refuseClose;
    this.phase = PHASE_DECIDE;
    this.setDeadline(performance.now() + d.guardMs);
    d.begin(this);
  }

  /** DecisionWaiter: the decision is in (outside any uWS callback: writes are corked). Never throws. */
  decided(d: PendingDecision): void {
    try {
      this.onDecided(d);
    } catch (err) {
      this.crashed(err);
    }
  }

  private onDecided(d: PendingDecision): void {
    this.decision = null;
    if (d.consumerId !== '') this.consumer = d.consumerId;
    if (this.finished) return;
    if (d.result !== CONTINUE) {
      this.refuse(d.refusal!, d.refusalHeaders, d.refusalMessage);
      return;
    }
    const h = d.responseHeaders;
    if (h.length !== 0) this.policyHeaders = this.policyHeaders === null ? h : this.policyHeaders.concat(h);
    // Lines for the upstream go before the blank line that ends the head.
    if (d.requestLines !== '') this.head = this.head.slice(0, -2) + d.requestLines + '\r\n';
    if (this.clientPaused && this.res !== null) {
      this.clientPaused = false;
      this.res.resume();
    }
    this.phase = 0;
    this.deadline = 0;
    const pool = this.pickedPool!;
    this.pickedPool = null;
    this.pool = pool;
    // start(), the counting already done by awaitDecision.
    pool.active++;
    this.connectTo(pool);
    // Upstream writes (and net.connect) defer work with process.nextTick, which a promise callback may leave waiting.
    this.env.pump();
  }

  /**
   * Answers a policy's refusal that came after the handler returned (429
   * rate_limited, 503 rate_limit_store_unavailable...) with its headers and
   * message, counted and logged as the handler's own early answers are (no
   * upstream, no target), closing as the handler decided (refuseClose).
   */
  private refuse(e: GatewayErrorDef, headers: readonly string[] | null, message: string | null): void {
    this.countError(e.code);
    this.status = e.status;
    if (e.status >= 500 && e !== Errors.INTERNAL) this.report(e.code, e.status, 'gateway');
    const res = this.res;
    if (res !== null) {
      this.res = null;
      this.responded = true;
      // A paused upload must flow again: uWS discards the rest by its framing.
      if (this.clientPaused) {
        this.clientPaused = false;
        res.resume();
      }
      const close = e === Errors.INTERNAL ? this.closeBy : this.refuseClose;
      this.closing = close !== CLOSE_NONE;
      res.cork(() => { this.resBytes = writeGatewayError(res, e, this.env.requestIdHeader, this.requestId, this.isHead, close, true, null, headers, message); });
    }
    this.complete();
  }

  private acquireNew(): void {
    const pool = this.pool!;
    this.phase = PHASE_CONNECT;
    this.setDeadline(performance.now() + this.upstream.config.timeouts.connectMs);
    if (pool.connectOrQueue(this) === ACQUIRE_FULL) {
      // Answered after the request handler returns (this may run inside it):
      // inside it, uWS would go on to serve a request pipelined behind this
      // one even after a client's close (uws-respond.ts).
      this.detail = 'connection pool and its queue full';
      setImmediate(failUnavailable, this);
      return;
    }
    // net.connect defers its work with process.nextTick, which does not run
    // after a uWS callback until something else enters Node (ENVIRONMENT.md).
    this.env.pump();
  }

  // ---------------------------------------------------------------- upstream

  onConnection(conn: Connection): void {
    this.conn = conn;
    this.tSent = performance.now();
    conn.parser.reset(this, this.isHead);
    const q = this.bodyQueue;
    if (this.reqBodyMode === REQ_BODY_NONE) {
      conn.write(this.head);
      this.headSent = true;
      this.phase = PHASE_HEAD;
      this.setDeadline(this.tSent + this.responseMs);
    } else if (q === null && !this.reqBodyDone) {
      // No body byte has arrived yet (uWS hands over the body that came with
      // the headers right after the request handler returns): the head waits
      // for the first chunk so both leave in one writev (one syscall, one
      // upstream segment) instead of two.
      this.phase = PHASE_SEND;
      this.setDeadline(0); // the client's own idle timeout (uWS) bounds a slow upload
    } else {
      // Head and the body received so far leave in one writev.
      conn.socket.cork();
      conn.write(this.head);
      this.headSent = true;
      let ok = true;
      if (q !== null) {
        for (let i = 0; i < q.length; i++) ok = this.writeBody(conn, q[i]!);
        this.bodyQueue = null;
        if (this.keeping) {
          // Own copies (or kept chunks sent again): kept for a retry.
          this.kept = q;
          this.keptConn = conn;
        }
      }
      if (this.reqBodyDone && this.reqBodyMode === REQ_BODY_CHUNKED) ok = conn.write(LAST_CHUNK);
      conn.socket.uncork();
      if (this.reqBodyDone) {
        this.phase = PHASE_HEAD;
        this.setDeadline(this.tSent + this.responseMs);
      } else {
        this.phase = PHASE_SEND;
        this.setDeadline(0); // the client's own idle timeout (uWS) bounds a slow upload
        if (!ok) this.pauseClient();
      }
      // 'drain' for a paused upload is emitted with process.nextTick (see onClientData).
      this.env.pump();
    }
  }

  private writeBody(conn: Connection, chunk: Buffer): boolean {
    if (this.reqBodyMode === REQ_BODY_CHUNKED) {
      conn.write(chunk.length.toString(16) + '\r\n');
      conn.write(chunk);
      return conn.write(CRLF);
    }
    return conn.write(chunk);
  }

  private pauseClient(): void {
    if (this.clientPaused || this.res === null) return;
    this.clientPaused = true;
    this.res.pause();
  }

  onUpstreamDrain(_conn: Connection): void {
    if (this.clientPaused && this.res !== null) {
      this.clientPaused = false;
      this.res.resume();
    }
  }

  /** uWS onData. `ab` is neutered when this returns: copy before keeping. */
  onClientData(ab: ArrayBuffer, isLast: boolean): void {
    if (this.finished && this.res === null) return;
    const n = ab.byteLength;
    if (n === 0 && !isLast) return; // uWS may hand over an empty chunk before the body
    this.reqBytes += n;
    if (this.reqBytes > this.reqBodyLimit) {
      // A chunked body grew past the limit (a Content-Length one was refused up front).
      this.reqBodyDone = true;
      this.abortUpstream();
      this.fail(Errors.BODY_TOO_LARGE, true);
      return;
    }
    if (isLast) this.reqBodyDone = true;
    if (this.keeping && this.reqBytes > RETRY_BODY_MAX_BYTES) {
      // Too large to keep: never retried once sent.
      this.keeping = false;
      this.kept = null;
    }
    const conn = this.conn;
    if (conn !== null) {
      // The connection is ours but the head is still here (see onConnection):
      // it leaves corked together with this chunk.
      const withHead = !this.headSent;
      if (withHead) {
        conn.socket.cork();
        conn.write(this.head);
        this.headSent = true;
      }
      let ok = true;
      if (n > 0) {
        if (this.keeping) {
          // Kept for a retry: copied into this exchange's kept-body buffer (it fits: reqBytes <= RETRY_BODY_MAX_BYTES), written from there.
          const buf = (this.keptBuf ??= keptFree.pop() ?? Buffer.allocUnsafeSlow(RETRY_BODY_MAX_BYTES));
          const chunk = buf.subarray(this.keptLen, this.keptLen + n);
          chunk.set(new Uint8Array(ab));
          this.keptLen += n;
          (this.kept ??= []).push(chunk);
          this.keptConn = conn;
          ok = this.writeBody(conn, chunk);
        } else {
          ok = this.writeBody(conn, stageChunk(ab, n));
        }
      }
      if (isLast && this.reqBodyMode === REQ_BODY_CHUNKED) ok = conn.write(LAST_CHUNK);
      if (withHead) conn.socket.uncork();
      if (n > 0 && !this.keeping) settleScratch(conn);
      if (isLast) {
        this.phase = PHASE_HEAD;
        this.setDeadline(performance.now() + this.responseMs);
      } else if (!ok) {
        this.pauseClient();
      }
      // socket.write completes synchronously and defers its bookkeeping (and
      // 'drain') with process.nextTick, which does not run after a uWS
      // callback on its own: without this a paused upload waits for the next
      // timer to wake Node.
      this.env.pump();
      return;
    }
    if (n > 0) (this.bodyQueue ??= []).push(Buffer.copyBytesFrom(new Uint8Array(ab)));
    if (this.phase === PHASE_DECIDE && this.reqBytes > DECIDE_QUEUE_MAX && !isLast) this.pauseClient();
  }

  onUpstreamRead(conn: Connection, n: number): void {
    const res = this.res;
    corkEx = this;
    corkN = n;
    corkConn = conn;
    if (res !== null) res.cork(corkedRead);
    else corkedRead();
    corkEx = null;
    corkConn = null;
    // The exchange may have completed inside the parse: hand the socket back.
    const parser = conn.parser;
    if (parser.done && this.conn === conn) this.releaseConnection(this.consumedAll);
  }

  private consumedAll = true;

  /** Runs corked. */
  readUpstream(conn: Connection, n: number): void {
    if (this.conn !== conn) return;
    try {
      const used = conn.parser.execute(READ_BUFFER, 0, n);
      this.consumedAll = used === n;
    } catch (err) {
      if (!(err instanceof ParseError)) throw err;
      this.detail = err.message;
      this.upstreamBroken(Errors.UPSTREAM_BAD_RESPONSE);
    }
  }

  onUpstreamEof(conn: Connection): void {
    if (this.conn !== conn) return;
    const res = this.res;
    corkEx = this;
    if (res !== null) res.cork(corkedEof);
    else corkedEof();
    corkEx = null;
  }

  eof(): void {
    const conn = this.conn;
    if (conn === null) return;
    if (conn.parser.onEof()) {
      // close-delimited body complete; the socket cannot be reused.
      this.conn = null;
      conn.destroy();
      if (this.res === null) this.complete();
      return;
    }
    if (this.detail === '') this.detail = 'closed by the upstream';
    this.connectionLost(conn, false);
  }

  onConnectionError(conn: Connection, connectPhase: boolean, err: Error | null): void {
    if (this.conn !== null && this.conn !== conn) return;
    if (conn.tlsFailed) this.detail = tlsFailureDetail(err);
    else if (err !== null) this.detail = (err as NodeJS.ErrnoException).code ?? err.message;
    const res = this.res;
    corkEx = this;
    corkConn = conn;
    corkConnect = connectPhase;
    if (res !== null) res.cork(corkedConnError);
    else corkedConnError();
    corkEx = null;
    corkConn = null;
  }

  connectionLost(conn: Connection, connectPhase: boolean): void {
    this.conn = null;
    // Detach it now: after 'end' the socket still emits 'close', which must
    // not reach this exchange again (it may be waiting on a retry by then).
    conn.destroy();
    if (this.finished) return;
    if (connectPhase) {
      // A TLS handshake the target failed (its certificate refused...) is a connect failure for retries: nothing reached the service.
      const e = conn.tlsFailed ? Errors.UPSTREAM_TLS_FAILED : Errors.UPSTREAM_CONNECT_FAILED;
      if (this.retry !== null && this.retryTry(R_CONNECT_FAILURE, e.code, 502)) return;
      this.fail(e);
      return;
    }
    // A reused keep-alive socket closed by the upstream just as we sent: the
    // request most likely never reached it, but it may have. Sent again on a
    // fresh connection when nothing at all was written (a body request whose
    // head was waiting for the first chunk), or when no response byte came
    // back, no body was streamed from the client and the method is
    // idempotent: a POST must never reach an upstream twice.
    if (
      !this.retried && !this.responded && !conn.parser.started &&
      (!this.headSent || (conn.served > 0 && this.reqBodyMode === REQ_BODY_NONE && isIdempotent(this.method)))
    ) {
      this.retried = true;
      this.headSent = false;
      this.acquireNew();
      return;
    }
    if (this.retry !== null && !this.responded && this.retryTry(R_RESET, Errors.UPSTREAM_RESET.code, 502)) return;
    this.upstreamBroken(Errors.UPSTREAM_RESET);
  }

  /**
   * A try failed with nothing sent to the client (condition `reason`:
   * retry.ts R_*; `code`: the gateway error it would end with, '' for a
   * listed status; `status`: 502/504, or the target's status). Retried when
   * the method is retried (checked at construction), the condition is
   * listed (by the caller), attempts are left, a body is whole and kept (or
   * nothing of the request was written), the backoff ends before
   * timeouts.totalMs, the budget allows it and a target admits it (an
   * untried one first). Then: the try is given back to the breaker with its
   * outcome, logged as an error line, counted by reason, its connection
   * dropped, and the next try starts after the backoff (nextTry). false:
   * the caller answers the failure as without retries (an exhausted budget
   * is counted).
   */
  private retryTry(reason: number, code: string, status: number): boolean {
    const r = this.retry!;
    if (this.responded || this.res === null || this.finished || this.retries >= r.attempts) return false;
    // A body that left (even in part) can go again only whole and kept.
    if (this.headSent && this.reqBodyMode !== REQ_BODY_NONE && !(this.reqBodyDone && this.keeping)) return false;
    const now = performance.now();
    const wait = r.backoff(this.retries + 1);
    const total = this.upstream.config.timeouts.totalMs;
    if (total > 0 && now + wait >= this.t0 + total) return false;
    // The targets of the running config: a discovery update or a reload may
    // have replaced this upstream's runtime since the request started (a
    // removed target is never retried on, a new one may be).
    const prev = this.upstream;
    const upstream = prev.latest();
    if (upstream.pools.length === 0) return false;
    if (!r.take(now)) return false;
    const guard = upstream.guard;
    const old = this.pool!;
    let tried = (this.tried ??= []);
    tried.push(old);
    if (upstream !== prev) this.tried = tried = upstream.samePools(tried);
    let next: TargetPool | null;
    let probe = false;
    if (guard === null) {
      next = upstream.pickUntried(this.client, tried);
    } else {
      next = upstream.admitUntried(this.client, guard.now(), tried);
      if (next === null) {
        // No target may take it (open, unhealthy, overloaded): the failure stands.
        if (upstream === prev) tried.pop();
        r.giveBack();
        return false;
      }
      probe = guard.probe;
    }
    // The failed try's outcome, for its breaker and outlier ejection (its own runtime's guard).
    if (prev.guard !== null) prev.guard.finish(old, this.probe, code, status, this.upstreamMs, coarse.now);
    this.probe = probe;
    this.upstream = upstream;
    // Its connection goes (a dropped 5xx response is not read to its end).
    const conn = this.conn;
    if (conn !== null) conn.parser.sink = DISCARD;
    this.abortUpstream();
    this.retries++;
    r.count(reason);
    const detail = this.detail;
    this.detail = (detail === '' ? '' : detail + '; ') + `retrying (try ${this.retries} of ${r.attempts + 1} failed)`;
    this.report(code === '' ? 'upstream_status' : code, status, PHASE_NAMES[this.phase] ?? 'connect');
    // The next target counts the request from now on (complete() during the wait gives it back).
    old.active--;
    next.active++;
    this.pool = next;
    // balance: sticky: the cookie names the target that will answer.
    const sticky = upstream.stickyCookie(next);
    if (sticky !== null) this.policyHeaders = withStickyCookie(this.policyHeaders, sticky);
    // The next try starts afresh; a body that left goes again from the kept chunks.
    if (this.headSent && this.reqBodyMode !== REQ_BODY_NONE) {
      this.bodyQueue = this.kept;
      this.kept = null;
    }
    this.headSent = false;
    this.retried = false;
    this.queued = false;
    this.status = 0;
    this.upstreamMs = -1;
    this.detail = '';
    this.phase = PHASE_BACKOFF;
    this.setDeadline(0); // timeouts.totalMs only
    this.retryTimer = setTimeout(retryNow, wait, this);
    return true;
  }

  /** complete() of a retried method: the backoff timer cleared, the kept-body buffer given back when no socket may still write from it. */
  private endRetries(): void {
    if (this.retryTimer !== null) {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
    }
    const kb = this.keptBuf;
    if (kb === null) return;
    this.keptBuf = null;
    this.kept = null;
    const kc = this.keptConn;
    this.keptConn = null;
    if ((kc === null || kc.destroyed || kc.socket.writableLength === 0) && keptFree.length < KEPT_FREE_MAX) keptFree.push(kb);
  }

  /** The backoff is over: the next try, on `pool` (retryTry chose it and counted it active), as start(). */
  nextTry(): void {
    this.retryTimer = null;
    if (this.finished) return;
    this.phase = 0;
    this.connectTo(this.pool!);
    this.env.pump();
  }

  /** The upstream failed: 502/504 before the head, a hard close after it. */
  private upstreamBroken(e: GatewayErrorDef): void {
    this.abortUpstream();
    if (this.responded) {
      this.countError('upstream_aborted');
      this.report('upstream_aborted', 502, 'body');
      this.closeClient();
    } else {
      this.fail(e);
    }
  }

  private abortUpstream(): void {
    const connecting = this.connecting;
    if (connecting !== null) {
      // Not ours any more; once connected it goes idle or serves a waiting request.
      this.connecting = null;
      connecting.user = null;
    }
    const conn = this.conn;
    if (conn !== null) {
      this.conn = null;
      conn.destroy();
    }
  }

  private releaseConnection(consumedAll: boolean): void {
    const conn = this.conn!;
    this.conn = null;
    this.deadline = 0; // the upstream is done; uWS bounds a slow client itself
    conn.served++;
    if (this.upstreamPaused) {
      // The rest of the body waits in `pending` or in uWS; the socket itself is free.
      this.upstreamPaused = false;
      conn.resume();
    }
    if (!consumedAll || conn.parser.mustClose || !this.reqBodyDone) conn.destroy();
    else conn.pool.release(conn);
    if (this.res === null) this.complete();
  }

  // ---------------------------------------------------------------- response

  onResponseHead(status: number, reason: string, headers: string[], bodyKind: number, contentLength: number): void {
    if (this.testThrow) throw new Error('internal error requested by test hook (upstream response)');
    const now = performance.now();
    if (this.retry !== null && this.retry.retriesStatus(status) && this.res !== null) {
      // A listed 5xx: dropped before anything is written to the client, and tried again.
      this.upstreamMs = now - this.tSent;
      this.detail = 'status ' + status;
      if (this.retryTry(RetryPolicy.statusReason(status), '', status)) return;
      this.detail = '';
    }
    const env = this.env;
    if (env.metricsOn) {
      // The target's histogram (its cell base comes with the pool).
      if (this.pool !== null) observe(env.metrics, this.pool.metricsBase + T_LATENCY, DURATION_BUCKETS, (now - this.tSent) / 1000);
      env.latency?.recordUpstream(now - this.tSent);
    }
    this.status = status;
    this.resBodyKind = bodyKind;
    this.resTotal = contentLength;
    this.phase = PHASE_BODY;
    this.upstreamMs = now - this.tSent;
    const idleMs = this.upstream.config.timeouts.idleMs;
    this.setDeadline(now + idleMs);
    const res = this.res;
    if (res === null) return;
    this.responded = true;
    const parser = this.conn === null ? null : this.conn.parser;
    // Bytes >= 0x80 in the upstream head (rare; the parser noticed) go over as they came.
    const exact = parser !== null && parser.highBytes;
    const statusLine = reason === '' ? String(status) : status + ' ' + reason;
    res.writeStatus(exact ? exactValue(statusLine) : statusLine);
    const plan = this.route.responsePlan;
    const drop = plan.drop;
    const ridHeader = env.requestIdHeader;
    // Names listed in Connection are hop-by-hop too (the parser kept its value).
    const connection = parser === null ? null : parser.connection;
    const listed = connection === null ? null : connectionListed(connection);
    let sawRid = false;
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i]!;
      const lname = name.toLowerCase();
      if (drop.has(lname) || (listed !== null && listed.has(lname))) continue;
      if (lname === ridHeader) sawRid = true;
      res.writeHeader(name, exact ? exactValue(headers[i + 1]!) : headers[i + 1]!);
    }
    if (!sawRid) res.writeHeader(ridHeader, this.requestId);
    const extra = plan.extra;
    for (let i = 0; i < extra.length; i += 2) res.writeHeader(extra[i]!, extra[i + 1]!);
    const ph = this.policyHeaders;
    if (ph !== null) for (let i = 0; i < ph.length; i += 2) res.writeHeader(ph[i]!, ph[i + 1]!);
    if (bodyKind === BODY_NONE) {
      const close = this.clientClose;
      this.closing = close !== CLOSE_NONE;
      if (this.isHead || status === 204 || status === 304) {
        // HEAD and 304 keep the upstream's Content-Length (the length a GET
        // or a 200 would have); a 204 never has one.
        endWithoutBody(res, status, contentLength, close, true);
      } else {
        endWhole(res, undefined, close); // Content-Length: 0
      }
      this.res = null;
      this.clientDone();
      return;
    }
    this.closeHeaderPending = this.clientClose !== CLOSE_NONE;
  }

  onResponseData(buf: Buffer, start: number, end: number): void {
    this.resBytes += end - start;
    const res = this.res;
    if (res === null) return;
    this.setDeadline(coarse.now + this.upstream.config.timeouts.idleMs);
    const view = buf.subarray(start, end);
    if (this.closeHeaderPending) {
      this.closeHeaderPending = false;
      if (this.resBodyKind === BODY_LENGTH && view.length === this.resTotal) {
        // The whole body is here: one end() call can still close for real.
        this.closing = true;
        endWhole(res, view, this.clientClose);
        this.res = null;
        this.clientDone();
        return;
      }
      res.writeHeader('connection', 'close');
    }
    if (this.resBodyKind === BODY_LENGTH) {
      if (this.pending !== null) {
        // Still waiting for the client: keep the order, keep a copy.
        this.pending = Buffer.concat([this.pending, view]);
        return;
      }
      const base = res.getWriteOffset();
      const r = res.tryEnd(view, this.resTotal);
      if (r[1]) {
        this.res = null;
        this.clientDone();
      } else if (!r[0]) {
        this.pending = Buffer.from(view); // the shared read buffer is reused by the next read
        this.pendingBase = base;
        this.backpressure(res);
      }
      return;
    }
    if (!res.write(view)) this.backpressure(res);
  }

  private backpressure(res: any): void {
    const conn = this.conn;
    if (conn !== null && !this.upstreamPaused) {
      this.upstreamPaused = true;
      conn.pause();
    }
    if (!this.writableHooked) {
      this.writableHooked = true;
      res.onWritable((offset: number) => {
        try {
          return this.onWritable(offset);
        } catch (err) {
          this.crashed(err);
          return true;
        }
      });
    }
  }

  private onWritable(offset: number): boolean {
    const res = this.res;
    if (res === null) return true;
    const pending = this.pending;
    if (pending !== null) {
      const r = res.tryEnd(pending.subarray(offset - this.pendingBase), this.resTotal);
      if (r[1]) {
        this.pending = null;
        this.res = null;
        this.clientDone();
        this.resumeUpstream();
        return true;
      }
      if (!r[0]) return false;
      this.pending = null;
    }
    this.resumeUpstream();
    return true;
  }

  private resumeUpstream(): void {
    if (this.upstreamPaused) {
      this.upstreamPaused = false;
      const conn = this.conn;
      if (conn !== null) conn.resume();
      // A parse that finished while paused already released the connection.
    }
  }

  onResponseEnd(): void {
    const res = this.res;
    if (res !== null && this.resBodyKind !== BODY_NONE) {
      if (this.resBodyKind === BODY_LENGTH) {
        if (this.pending === null) {
          // Content-Length body fully written by tryEnd (done already handled).
          return;
        }
        return; // onWritable finishes it
      }
      res.end();
      this.res = null;
      this.clientDone();
    }
  }

  // ---------------------------------------------------------------- endings

  /** The client has its full response (or is gone). */
  private clientDone(): void {
    this.responded = true;
    if (this.conn === null) this.complete();
  }

  /** uWS onAborted: the client connection closed before our response ended. */
  onClientAborted(): void {
    this.res = null;
    this.cancelled = true;
    if (this.finished || this.closing) return;
    this.countError('client_aborted');
    this.abortUpstream();
    this.complete();
  }

  /** Answers with a gateway error (when nothing was sent yet; `message` instead of the catalogue's) and ends. */
  fail(e: GatewayErrorDef, closeConnection = false, message: string | null = null): void {
    this.countError(e.code);
    this.status = e.status;
    if (e.status >= 500 && e !== Errors.INTERNAL) this.report(e.code, e.status, PHASE_NAMES[this.phase] ?? 'connect');
    this.abortUpstream();
    const res = this.res;
    if (res !== null) {
      this.res = null;
      if (this.responded) {
        this.closing = true; // the onAborted res.close() calls is ours (closeClient)
        res.close();
      } else {
        this.responded = true;
        // A paused upload must flow again: uWS discards the rest by its framing.
        if (this.clientPaused) {
          this.clientPaused = false;
          res.resume();
        }
        failEx = this;
        failRes = res;
        failError = e;
        failMessage = message;
        failClose = closeConnection ? this.closeBy : this.clientClose;
        this.closing = failClose !== CLOSE_NONE;
        res.cork(corkedFail);
        failEx = null;
        failRes = null;
      }
    }
    this.complete();
  }

  writeError(res: any, e: GatewayErrorDef, close: number, message: string | null): void {
    this.resBytes = writeGatewayError(res, e, this.env.requestIdHeader, this.requestId, this.isHead, close, true, null, null, message);
  }

  /**
   * server.drainTimeoutMs ran out with this exchange still in flight (the
   * worker is about to close its sockets). Whatever the client saw is what
   * is logged, with `error: shutting_down` (never client_aborted: the
   * gateway cut it): no response yet -> a 503 shutting_down that says the
   * upstream may have the request, and the connection closes; a response
   * under way -> its status, the bytes sent so far, and the connection
   * closed mid-body. Never throws.
   */
  shutDown(): void {
    if (this.finished) return;
    try {
      if (this.res === null) {
        // The client has its whole response: only the upstream side was left.
        this.abortUpstream();
        this.complete();
        return;
      }
      this.detail = 'server.drainTimeoutMs ran out';
      if (!this.responded) {
        this.fail(Errors.SHUTTING_DOWN, true, SHUTDOWN_MESSAGE);
        return;
      }
      this.countError('shutting_down');
      this.report('shutting_down', this.status, 'body');
      this.abortUpstream();
      this.closeClient();
    } catch (err) {
      this.crashed(err);
    }
  }

  /**
   * The worker is dying (a fatal error: worker.ts crash()): this request is
   * lost with it. Nothing is logged or counted here; its in-flight count is
   * left for the engine, which adds it to turnpike_requests_lost_total when
   * the thread has exited. The upstream side is let go.
   */
  lose(): void {
    if (this.finished) return;
    this.finished = true;
    this.cancelled = true;
    this.env.timers.remove(this);
    const d = this.decision;
    this.decision = null;
    d?.abandon();
    try {
      this.abortUpstream();
    } catch { /* the thread is going away */ }
  }

  /**
   * A bug threw while this exchange was being served (caller logs it): 500
   * internal_error if nothing was sent yet, else the client connection is
   * closed; the upstream socket is dropped either way.
   */
  internalError(): void {
    if (this.finished) return;
    this.fail(Errors.INTERNAL, true);
  }

  /** A callback of this exchange threw: log it with the request id and end only this exchange. Never throws. */
  crashed(err: unknown): void {
    log('error', 'internal error while proxying; answered 500 or closed the client connection', {
      requestId: this.requestId, route: this.route.id, error: err instanceof Error ? err.stack ?? err.message : String(err),
    });
    try {
      this.internalError();
    } catch {
      // The response could not be ended either; uWS's idle timeout closes its connection.
    }
  }

  /**
   * The gateway closes the client connection (a response it cannot finish).
   * res.close() calls onAborted at once: `closing` keeps that from counting
   * and logging the request as the client's abort (a 499 client_aborted
   * over the code it ended with).
   */
  private closeClient(): void {
    const res = this.res;
    if (res !== null) {
      this.res = null;
      this.closing = true;
      res.close();
    }
    this.complete();
  }

  onDeadline(_now: number): void {
    if (this.finished) return;
    switch (this.phase) {
      case PHASE_CONNECT: {
        const connecting = this.connecting;
        if (connecting !== null) {
          this.connecting = null;
          connecting.destroy();
        }
        // Waiting in the pool's queue for connectMs: the upstream is saturated.
        // An https:// target's connectMs covers its TLS handshake too (upstream-pool.ts).
        this.detail = this.queued ? 'waited connectMs for a free connection'
          : connecting !== null && connecting.tcpUp ? 'connect timeout (TCP connected, the TLS handshake did not finish)' : 'connect timeout';
        if (!this.queued && this.retry !== null && this.retryTry(R_CONNECT_FAILURE, Errors.UPSTREAM_CONNECT_TIMEOUT.code, 504)) return;
        this.fail(this.queued ? Errors.UPSTREAM_UNAVAILABLE : Errors.UPSTREAM_CONNECT_TIMEOUT);
        return;
      }
      case PHASE_SEND: // only a totalMs deadline can fire while the client uploads
      case PHASE_HEAD:
        this.detail = this.deadline === this.t0 + this.upstream.config.timeouts.totalMs ? 'total timeout' : 'response timeout';
        if (
          this.retry !== null && this.phase === PHASE_HEAD && this.detail === 'response timeout' &&
          this.retryTry(R_TIMEOUT, Errors.UPSTREAM_TIMEOUT.code, 504)
        ) return;
        this.fail(Errors.UPSTREAM_TIMEOUT);
        return;
      case PHASE_BACKOFF: // timeouts.totalMs ran out while waiting to retry
        this.detail = 'total timeout';
        this.fail(Errors.UPSTREAM_TIMEOUT);
        return;
      case PHASE_DECIDE: {
        // The decision should have settled by its own timeouts: give up on it (a bug guard).
        const d = this.decision;
        this.decision = null;
        d?.abandon();
        this.refuse(d?.guardError ?? Errors.RATE_LIMIT_STORE_UNAVAILABLE, ['retry-after', '1'], null);
        return;
      }
      case PHASE_BODY:
        this.countError('upstream_timeout');
        this.detail = 'idle timeout in the response body';
        this.report('upstream_timeout', 504, 'body');
        this.abortUpstream();
        this.closeClient();
        return;
      default:
    }
  }

  /** Phase deadline, never past the whole exchange's timeouts.totalMs. */
  private setDeadline(at: number): void {
    const total = this.upstream.config.timeouts.totalMs;
    this.deadline = total > 0 && (at === 0 || at > this.t0 + total) ? this.t0 + total : at;
  }

  countError(code: string): void {
    this.errorCode = code;
    // Upstream errors count against the target too (and become its last error).
    if (this.env.metricsOn) countError(this.env.metrics, code, this.pool === null ? -1 : this.pool.metricsBase);
  }

  /** One line in the (rate-limited) error log: what failed, where, for which request. */
  private report(code: string, status: number, phase: Phase): void {
    const pool = this.pool;
    this.env.logs.errors.report({
      requestId: this.requestId, route: this.route.id, upstream: this.upstream.config.name,
      target: pool === null ? '' : pool.target.url, phase, code, status, detail: this.detail,
    }, coarse.now);
  }

  /** The access log line of this exchange (called once, from complete()). */
  private writeAccess(): void {
    const access = this.env.logs.access!;
    resetEntry();
    const e = entry;
    e.t0 = this.t0;
    e.requestId = this.requestId;
    e.client = this.client;
    e.method = this.method;
    e.host = this.host;
    e.path = this.path;
    e.query = this.query;
    // No status yet: the client closed first (logged as nginx's 499).
    e.status = this.status === 0 ? 499 : this.status;
    e.bytesReceived = this.reqBytes;
    e.bytesSent = this.resBytes;
    e.durationMs = performance.now() - this.t0;
    e.upstreamMs = this.upstreamMs;
    e.route = this.route.id;
    e.upstream = this.upstream.config.name;
    e.target = this.pool === null ? '' : this.pool.target.url;
    e.error = this.errorCode;
    e.retries = this.retries;
    e.consumer = this.consumer;
    e.userAgent = this.userAgent;
    e.referer = this.referer;
    access.write();
  }

  /** Once, when both sides are done: metrics, timers, pool accounting. */
  complete(): void {
    if (this.finished) return;
    this.finished = true;
    this.cancelled = true; // a queued exchange is skipped by the pool
    const env = this.env;
    env.timers.remove(this);
    env.metrics[G_IN_FLIGHT]!--;
    if (this.retry !== null) this.endRetries();
    const pool = this.pool;
    if (pool !== null) pool.active--;
    this.bodyQueue = null;
    // Ended while a decision was pending (client gone, body too large): it completes unseen.
    const d = this.decision;
    if (d !== null) {
      this.decision = null;
      d.abandon();
    }
    // The upstream admission (guard.ts) is given back with the request's outcome for the breaker.
    const guard = this.upstream.guard;
    if (guard !== null) {
      const held = pool ?? this.pickedPool;
      // coarse.now (the sweep's clock, <= 25 ms behind): no clock read per request.
      if (held !== null) guard.finish(held, this.probe, this.errorCode, this.status, this.upstreamMs, coarse.now);
    }
    this.pickedPool = null;
    if (env.logs.access !== null) this.writeAccess();
    if (!env.metricsOn) return;
    recordRequest(
      env.metrics, env.latency, this.route.slot, this.methodIdx, this.status, performance.now() - this.t0, pool === null ? -1 : pool.metricsBase,
    );
    recordSizes(env.metrics, this.route.slot, this.reqBytes, this.resBytes);
  }
}

function retryNow(ex: Exchange): void {
  try {
    ex.nextTry();
  } catch (err) {
    ex.crashed(err);
  }
}

function failUnavailable(ex: Exchange): void {
  if (!ex.finished) ex.fail(Errors.UPSTREAM_UNAVAILABLE);
}

let failEx: Exchange | null = null;
let failRes: any = null;
let failError: GatewayErrorDef = Errors.INTERNAL;
let failMessage: string | null = null;
let failClose = CLOSE_NONE;
function corkedFail(): void {
  failEx!.writeError(failRes, failError, failClose, failMessage);
}

let corkConn: Connection | null = null;
let corkConnect = false;
function corkedConnError(): void {
  corkEx!.connectionLost(corkConn!, corkConnect);
}
function corkedEof(): void {
  corkEx!.eof();
}
