/**
 * The Bun backend of a worker: Bun.serve({ reusePort }) in each worker
 * thread, and Bun's native fetch() as the upstream client (on Bun it is the
 * cheapest client there is: ~10 µs per proxied request here, see
 * ENVIRONMENT.md). Routing, path normalisation, header plans, limits, error
 * bodies and metrics are the same code as the uWS backend's; only the
 * transport differs. The rules are the uWS backend's too (uws-server.ts):
 * exactly one valid Host, `close` anywhere in Connection, header bytes
 * forwarded exactly or 400, HEAD answered with the GET's head, a bug answers
 * 500 internal_error instead of ending the worker.
 *
 * What Bun.serve does by itself (probed with raw sockets; README, Bun
 * section) and what this file does about it:
 *  - repeated request header lines reach the handler as one value joined
 *    with ", " (Connection, Transfer-Encoding, Host, the request id...):
 *    every decision is therefore taken on all the lines. Two Host lines
 *    become "a, b", which isValidHost refuses (400 bad_host); two request
 *    ids are never a safe id (one is generated); identical Content-Length
 *    lines ("3, 3") are one length, as on uWS;
 *  - header values arrive as latin1 strings (one char per byte) and fetch()
 *    writes such strings back as the same bytes, so header bytes reach the
 *    upstream exactly (DEL, which Bun lets through, is refused as on uWS);
 *  - `close` anywhere in a Connection list closes the connection after the
 *    response; a `Connection: close` response header does the same, which
 *    is how the gateway closes when it must (an early answer while a
 *    chunked or over-LINGER_MAX_BYTES body is unread, 500, draining). A
 *    smaller declared body left unread is read and discarded by Bun;
 *  - a null-body HEAD response keeps an explicit Content-Length but carries
 *    no Date, and gets `Content-Length: 0` when it has none: HEAD answers
 *    set Date, and `Transfer-Encoding: chunked` when the GET's length is
 *    unknown (no body bytes follow either way);
 *  - Bun.serve's idle timeout (10 s by default) also runs while a handler
 *    waits for the upstream: it is set to cover every upstream's head wait
 *    and idleMs, and a request that needs more (after a reload) raises its
 *    own with server.timeout();
 *  - Bun ignores statusText and writes its own reason phrases;
 *  - fetch() refuses a body on GET/HEAD: such a request is refused (400)
 *    rather than forwarded without its body.
 *
 * WebSocket handshakes take the same checks, routing and policies as a GET,
 * then go to the shared tunnel through bun-websocket.ts (its comment lists
 * what differs from uWS).
 */
import { parseProtocols, stripQueryParams, upgradeOffer } from '../policies/auth/index.js';
import type { WsCredential } from '../policies/auth/credential.js';
import type { Fallback, UpstreamGuard } from '../proxy/guard.js';
import { isTlsErrorCode, type TargetPool } from '../proxy/upstream-pool.js';
import { type UpstreamRuntime, withStickyCookie } from '../proxy/balancer.js';
import { Errors, errorBody, errorBodyWith, type GatewayErrorDef } from '../../common/errors.js';
import { log } from '../../common/log.js';
import { DURATION_BUCKETS, G_IN_FLIGHT, T_LATENCY, methodIndex, observe } from '../../common/metrics-layout.js';
import { countError, recordRequest, recordSizes } from '../request-metrics.js';
import type { Dataplane, RouteContext } from '../dataplane.js';
import { connectionListed, hasCloseOption, isSafeRequestId } from '../proxy/headers.js';
import { parseContentLength } from '../proxy/http1-parser.js';
import { MATCH_FOUND } from '../router/types.js';
import { isValidHost, normalizeHost, normalizePath } from '../router/normalize.js';
import {
  HEALTH_DRAINING, HEALTH_OK, LINGER_MAX_BYTES, SHUTDOWN_MESSAGE, gatewayErrorBytes, type Backend, type CloseReason, type ServerOptions,
} from './backend.js';
import { C_DRAINING } from '../../common/protocol.js';
import { entry, resetEntry } from '../access-log.js';
import { SWEEP_MS, coarse } from '../proxy/timers.js';
import { R_CONNECT_FAILURE, R_RESET, R_TIMEOUT, RETRY_BODY_MAX_BYTES, RetryPolicy } from '../proxy/retry.js';
import { isWebSocketUpgrade, wsSettings } from './websocket/settings.js';
import { BUN_WS_KEY, BunWebSockets } from './bun-websocket.js';
import type { RouteWebSocket } from '../../common/config/types.js';
import { BunRetry, RETRIED } from './bun-retry.js';
import { setGatewayHsts } from './uws-respond.js';
import { tlsSignature } from './uws-tls.js';
import { bunTlsOptions, checkBunTls } from './bun-tls.js';
import { CONTINUE, REFUSED, RequestContext, type PendingDecision } from '../pipeline/context.js';

/** The pipeline's context, reused for every request of this thread (workers/pipeline/context.ts). */
const pctx = new RequestContext();

/**
 * What the access log needs of one request on this backend (made only when
 * the access log is on). Bun streams the response body itself, so the line
 * is written when the response head is ready: duration_ms is the time to
 * the head, bytes_sent the Content-Length (0 when the body is chunked).
 */
interface AccessInfo {
  t0: number;
  requestId: string;
  client: string;
  method: string;
  host: string;
  path: string;
  query: string;
  bytesReceived: number;
  userAgent: string;
  referer: string;
  /** The consumer the route's auth found ('' for none). */
  consumer: string;
}

declare const Bun: any;

function accessInfo(req: Request, server: any, t0: number, requestId: string, method: string, contentLength: number): AccessInfo {
  const h = req.headers;
  const target = requestTarget(req.url);
  const q = target.indexOf('?');
  return {
    t0, requestId, method,
    client: server.requestIP(req)?.address ?? '',
    host: h.get('host') ?? '',
    path: q === -1 ? target : target.slice(0, q),
    query: q === -1 ? '' : target.slice(q + 1),
    bytesReceived: contentLength,
    userAgent: h.get('user-agent') ?? '',
    referer: h.get('referer') ?? '',
    consumer: '',
  };
}

/** The id of the route counted in metrics slot `slot` ('' if none). */
function route0(dp: Dataplane, slot: number): string {
  return dp.routes.find((r) => r.slot === slot)?.id ?? '';
}

const BODY_NONE = 0;
const BODY_LENGTH = 1;
const BODY_CHUNKED = 2;

/**
 * Test hooks (TURNPIKE_TEST_HOOKS=1 only), the same as the uWS backend's: a
 * request carrying this header with `handler` makes the handler throw, with
 * `upstream` the code that handles the upstream's response head, so tests
 * can check that a bug becomes a 500 internal_error and a log line, not a
 * dead worker.
 */
const TEST_HOOKS = process.env.TURNPIKE_TEST_HOOKS === '1';
const TEST_THROW_HEADER = 'x-turnpike-test-throw';

/** Longest idle timeout Bun accepts (seconds); 0 turns it off. */
const BUN_MAX_IDLE_S = 255;
/** Bun.serve's default idle timeout (seconds): never set shorter. */
const BUN_DEFAULT_IDLE_S = 10;

/** Bun adds Date to every response but a null-body HEAD one: HEAD answers carry it themselves. */
let dateSecond = -1;
let dateText = '';
function httpDate(): string {
  const s = Math.floor(Date.now() / 1000);
  if (s !== dateSecond) {
    dateSecond = s;
    dateText = new Date(s * 1000).toUTCString();
  }
  return dateText;
}

/**
 * Content-Length as Bun hands it: repeated lines are joined with ", ", so
 * "3, 3" is two identical lines (one length, RFC 9110 8.6, as on uWS) and
 * "3, 4" a conflict (-1). Bun refuses a list on one line itself.
 */
function contentLengthOf(v: string): number {
  const n = parseContentLength(v);
  if (n >= 0 || v.indexOf(',') === -1) return n;
  const parts = v.split(',');
  const first = parts[0]!.trim();
  for (let i = 1; i < parts.length; i++) if (parts[i]!.trim() !== first) return -1;
  return parseContentLength(first);
}

/**
 * The request target from Bun's req.url: an absolute URL built from the
 * Host header, or only the target when that Host is not a valid authority
 * (it is then refused as bad_host anyway). An authority-form (CONNECT) or
 * `*` target comes back as it is, and normalizePath refuses it.
 */
function requestTarget(url: string): string {
  if (url.charCodeAt(0) === 47) return url;
  const s = url.indexOf('://');
  if (s === -1) return url;
  const p = url.indexOf('/', s + 3);
  return p === -1 ? '/' : url.slice(p);
}

/**
 * Response header values from the config are text and go out as their
 * UTF-8 bytes (as uWS writes them); Bun writes a header string as latin1
 * and throws on a char above U+00FF, so they are given to it as latin1
 * strings of their UTF-8 bytes. Cached per compiled plan.
 */
const latin1Extras = new WeakMap<readonly string[], readonly string[]>();
function latin1Extra(extra: readonly string[]): readonly string[] {
  let out = latin1Extras.get(extra);
  if (out === undefined) {
    out = extra.map((v, i) => (i % 2 === 1 ? Buffer.from(v, 'utf8').toString('latin1') : v));
    latin1Extras.set(extra, out);
  }
  return out;
}

/** A request body over its route's limit: the counting stream errors with this. */
class BodyTooLarge extends Error {}

/** The next try's request on `next` (a retry): its URL, Host (unless the route keeps the client's), target and metrics cells. */
function retarget(next: TargetPool, url: string, headers: Headers, preserveHost: boolean): { url: string; target: string; targetCells: number } {
  if (!preserveHost) headers.set('host', next.hostHeader);
  return { url: next.origin + url.slice(url.indexOf('/', 8)), target: next.target.url, targetCells: next.metricsBase };
}

/**
 * The upstream admission of a request (workers/proxy/guard.ts), given back
 * once its response head is ready. Bun's fetch hides which failure it was,
 * so the verdict comes from the status the client gets: 5xx (the gateway's
 * 502/504 for a connect failure, reset or timeout, or the target's own) is
 * a failure, anything else a success (slowCallMs: against the time to the
 * response head). A throw gives the place back with no verdict.
 */
async function settleAdmission(answer: Promise<Response>, guard: UpstreamGuard, pool: TargetPool, probe: boolean, t: number): Promise<Response> {
  let r: Response;
  try {
    r = await answer;
  } catch (err) {
    guard.finish(pool, probe, 'internal_error', 0, -1, performance.now());
    throw err;
  }
  const now = performance.now();
  // A retried request: each of its tries given back with its own outcome (bun-retry.ts).
  const retried = guard.retrying ? RETRIED.get(r) : undefined;
  if (retried !== undefined) retried.settle(guard, probe, r.status, now);
  else guard.finish(pool, probe, '', r.status, now - t, now);
  return r;
}

/** An open breaker's fallback (breaker.fallback): its status, headers and exact body bytes; HEAD: the head alone. */
function fallbackResponse(fb: Fallback, ridHeader: string, requestId: string, isHead: boolean, close: boolean, hsts: string | null): Response {
  const headers = new Headers();
  for (let i = 0; i < fb.headers.length; i += 2) headers.append(fb.headers[i]!, fb.headers[i + 1]!);
  headers.set(ridHeader, requestId);
  if (hsts !== null) headers.set('strict-transport-security', hsts);
  if (close) headers.set('connection', 'close');
  const init = { status: fb.status, statusText: fb.statusLine.slice(4), headers };
  const noBody = isHead || fb.status === 204 || fb.status === 304;
  if (!noBody) return new Response(fb.body, init);
  if (fb.status !== 204) headers.set('content-length', String(fb.body.length));
  if (isHead) headers.set('date', httpDate());
  return new Response(null, init);
}

/**
 * A chunked request body counted on its way to the upstream and cut off
 * past the route's limit (a Content-Length body is checked before a byte is
 * read). Bun's own maxRequestBodySize is set out of the way so that every
 * 413 is the gateway's JSON one.
 */
function limitedBody(body: ReadableStream<Uint8Array>, limit: number): ReadableStream<Uint8Array> {
  let seen = 0;
  return body.pipeThrough(new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, ctl) {
      seen += chunk.byteLength;
      if (seen > limit) ctl.error(new BodyTooLarge('request body over the route limit'));
      else ctl.enqueue(chunk);
    },
  }));
}

function abortUpstream(ac: AbortController): void {
  ac.abort();
}

function tickCoarse(): void {
  coarse.now = performance.now();
}

/** The abort reason of a fetch cut by the drain timeout (close('drained')). */
const SHUTDOWN = Symbol('shutting down');

/** Seconds of client-connection silence a request may need while waiting for its upstream's response head. */
function headWaitSeconds(t: { connectMs: number; responseMs: number }): number {
  return Math.ceil((t.connectMs + t.responseMs) / 1000) + 1;
}

/**
 * Bun.serve's idleTimeout for a config: long enough for every upstream's
 * response head and body silence (idleMs), so that the common request
 * needs no per-request server.timeout() call (measurably not free); never
 * below Bun's default, at most what Bun accepts.
 */
function serverIdleSeconds(dp: Dataplane): number {
  let s = BUN_DEFAULT_IDLE_S;
  for (const u of dp.upstreams.values()) {
    const t = u.config.timeouts;
    s = Math.max(s, headWaitSeconds(t), Math.ceil(t.idleMs / 1000));
  }
  return Math.min(s, BUN_MAX_IDLE_S);
}

/** swapTls: how long a replaced Bun.serve still accepts and answers with `Connection: close` before it stops (ms). */
export const RETIRE_GRACE_MS = 250;

export class BunServer implements Backend {
  private dp: Dataplane;
  /** The Bun.serve taking new connections. */
  private server: any = null;
  /**
   * Servers a certificate reload replaced (swapTls): stopped (stop(false):
   * no longer accepting), still serving their in-flight requests and
   * WebSockets until those end or close() stops them.
   */
  private retired: any[] = [];
  /** The retired servers whose grace is over (stopped). */
  private readonly stoppedRetired = new WeakSet<object>();
  /** uws-tls.ts tlsSignature of the server.tls `server` serves ('' for plain HTTP). */
  private tlsKey = '';
  private ridCounter = 0;
  private readonly ridPrefix: string;
  /** The request id the synchronous part of the handler gave out: what a throw there is logged with. */
  private pendingId = '';
  /** Bun.serve's idleTimeout, fixed at listen (serverIdleSeconds); requests that need more set their own. */
  private idleS = BUN_DEFAULT_IDLE_S;
  /**
   * Keeps coarse.now (proxy/timers.ts) fresh every SWEEP_MS, as the uWS
   * backend's sweep does: the WebSocket tunnels' idle, ping and
   * messagesPerSecond clocks and the error log's rate limit read it.
   */
  private clock: ReturnType<typeof setInterval> | null = null;
  inFlight = 0;
  draining = false;
  /** Fetches waiting for their upstream's response head: aborted with SHUTDOWN when the drain times out. */
  private readonly fetching = new Set<AbortController>();
  /** WebSocket proxying (bun-websocket.ts over websocket/tunnel.ts). */
  private readonly ws: BunWebSockets;

  constructor(dp: Dataplane, private readonly opts: ServerOptions) {
    this.dp = dp;
    setGatewayHsts(dp.hsts); // the tunnel's own answers (websocket/tunnel.ts)
    this.ws = new BunWebSockets(dp, opts);
    this.ridPrefix = Math.random().toString(36).slice(2, 10) + '-b' + opts.workerIndex.toString(36) + '-';
  }

  async listen(): Promise<number> {
    this.idleS = serverIdleSeconds(this.dp);
    this.clock = setInterval(tickCoarse, SWEEP_MS);
    this.clock.unref();
    this.tlsKey = tlsSignature(this.dp.config.server.tls);
    this.server = this.serve(this.opts.port);
    const port = this.server.port as number;
    this.opts.onListen(port);
    return port;
  }

  /** A Bun.serve on `port` (reusePort: every worker, and a certificate swap, share it) with the current server.tls. */
  private serve(port: number): any {
    const tls = this.dp.config.server.tls ?? null;
    return Bun.serve({
      hostname: this.opts.host,
      port,
      reusePort: true,
      ...(tls !== null ? { tls: bunTlsOptions(tls) } : {}),
      // Bun's idle timer also runs while a handler waits for its upstream
      // (it would close the client connection with no answer): see proxy().
      idleTimeout: this.idleS,
      // The gateway checks Content-Length against the route's limit before
      // reading a byte and counts chunked bodies itself (JSON 413); Bun's
      // own refusal would be a bare 413 after its `100 Continue`.
      maxRequestBodySize: Number.MAX_SAFE_INTEGER,
      fetch: (req: Request, server: any) => this.onRequest(req, server),
      websocket: this.ws.handlers,
      // Only reached if something throws outside onRequest's own guard.
      error: (err: unknown) => this.internalError(err, this.nextRequestId(), 0, false, performance.now()),
    });
  }

  /**
   * New certificates (server.tls changed on a reload): Bun.serve cannot
   * change those of a running server (server.reload({ tls }) keeps them), so
   * a second Bun.serve with the new ones listens on the port (reusePort),
   * and the old one is stopped (stop(false)) a little later. stop(false) lets its in-flight
   * requests and its WebSockets finish, but Bun closes its idle keep-alive
   * connections at once, and a request a client sends on one at that moment
   * fails (a reset). So the old server first answers every request with
   * `Connection: close` for RETIRE_GRACE_MS (busy keep-alive connections
   * close after their next answer, and reconnect to the new certificates),
   * and only then stops (what was idle all that time is closed). New
   * connections may still reach the old certificates during that grace
   * (both listen). A config Bun refuses keeps the old ones (logged).
   */
  private swapTls(key: string): void {
    const old = this.server;
    let next: any;
    try {
      next = this.serve(old.port as number);
    } catch (err) {
      log('error', 'server.tls: Bun.serve refused the certificates of the new config; the previous ones keep serving', {
        worker: this.opts.workerIndex, error: err instanceof Error ? err.message : String(err),
      });
      return;
    }
    this.server = next;
    this.tlsKey = key;
    // Forget the replaced servers that are stopped and have nothing left.
    this.retired = this.retired.filter((s) => !this.stoppedRetired.has(s) || s.pendingRequests > 0 || s.pendingWebSockets > 0);
    this.retired.push(old);
    setTimeout(() => {
      this.stoppedRetired.add(old);
      old.stop(false);
    }, RETIRE_GRACE_MS).unref();
  }

  /**
   * Backend.prepare: a changed server.tls is loaded into BoringSSL first
   * (bun-tls.ts checkBunTls): what it cannot load refuses the config
   * (ConfigRefusedError) before anything changes.
   */
  prepare(dp: Dataplane): void {
    const tls = dp.config.server.tls ?? null;
    if (tls === null || tlsSignature(tls) === this.tlsKey) return;
    checkBunTls(tls);
  }

  setDataplane(dp: Dataplane): void {
    const old = this.dp;
    this.dp = dp;
    setGatewayHsts(dp.hsts);
    const tlsKey = tlsSignature(dp.config.server.tls);
    if (tlsKey !== this.tlsKey && this.server !== null && !this.draining) this.swapTls(tlsKey);
    // Bun's fetch pools upstream connections itself; only what the old
    // config's policies hold (a strict limits' Redis connection) is let go.
    this.ws.setDataplane(old, dp);
    if (old !== dp) {
      old.handOver(dp);
      old.releasePolicies();
    }
  }

  stopListening(): void {
    this.draining = true;
    // stop(false): stop accepting, let in-flight requests finish.
    this.server?.stop(false);
    for (const s of this.retired) s.stop(false);
  }

  /**
   * Backend.close. `drained`: the fetches still waiting for their upstream's
   * head are aborted, so that their requests are answered 503 shutting_down
   * (logged and counted so) before Bun closes every connection; a body Bun
   * is still streaming is cut (its line was written with the head).
   * `crashed`: nothing is answered or counted (turnpike_requests_lost_total).
   */
  async close(reason: CloseReason): Promise<void> {
    this.stopListening();
    if (reason === 'drained' && this.fetching.size > 0) {
      for (const ac of this.fetching) ac.abort(SHUTDOWN);
      // Let the aborted requests answer (their 503s are written by Bun's loop), for at most 500 ms.
      const until = performance.now() + 500;
      while (this.inFlight > 0 && performance.now() < until) await new Promise((r) => setTimeout(r, 5));
      await new Promise((r) => setTimeout(r, 20));
    }
    // WebSockets: 1001 both ways, handshakes in progress 503 (before Bun drops every connection).
    const hadWs = this.ws.hub.open.size > 0;
    this.ws.closeAll();
    if (hadWs && reason === 'drained') await new Promise((r) => setTimeout(r, 20));
    this.server?.stop(true);
    this.server = null;
    for (const s of this.retired) s.stop(true);
    this.retired = [];
    if (this.clock !== null) clearInterval(this.clock);
    this.clock = null;
    this.dp.releasePolicies();
  }

  private nextRequestId(): string {
    return this.ridPrefix + (++this.ridCounter).toString(36);
  }

  /** `target`: the first metrics cell of the target the request went to (-1: none); `bytes`: the answer's body bytes. */
  private count(e: GatewayErrorDef, slot: number, mIdx: number, t0: number, target: number, bytes: number): void {
    if (!this.dp.config.metrics.enabled) return;
    countError(this.opts.metrics, e.code, target);
    recordRequest(this.opts.metrics, this.opts.latency, slot, mIdx, e.status, performance.now() - t0, target);
    recordSizes(this.opts.metrics, slot, 0, bytes);
  }

  /**
   * A gateway error: JSON body, request id, `Allow` for 405, and for HEAD
   * the same head (Content-Length of the JSON, Date) without the body.
   * `close` adds `Connection: close`, on which Bun closes after the response.
   */
  private errorResponse(
    e: GatewayErrorDef, requestId: string, isHead: boolean, close: boolean, allow: string | null = null,
    extra: readonly string[] | null = null, message: string | null = null,
  ): Response {
    const body = message === null ? errorBody(e, requestId) : errorBodyWith(e, message, requestId);
    const headers = new Headers();
    headers.set('content-type', 'application/json');
    headers.set(this.dp.config.server.requestIdHeader, requestId);
    if (allow !== null) headers.set('allow', allow);
    if (extra !== null) for (let i = 0; i < extra.length; i += 2) headers.append(extra[i]!, extra[i + 1]!);
    if (close) headers.set('connection', 'close');
    if (this.dp.hsts !== null) headers.set('strict-transport-security', this.dp.hsts);
    const init = { status: e.status, statusText: e.statusLine.slice(4), headers };
    if (!isHead) return new Response(body, init);
    headers.set('content-length', String(Buffer.byteLength(body)));
    headers.set('date', httpDate());
    return new Response(null, init);
  }

  /** server.healthPath (see the uWS backend): 200, or 503 as soon as the engine drains; not routed, logged or counted. */
  private health(method: string, isHead: boolean): Response {
    const headers: Record<string, string> = { 'content-type': 'application/json', 'cache-control': 'no-store' };
    if (this.dp.hsts !== null) headers['strict-transport-security'] = this.dp.hsts;
    if (method !== 'GET' && !isHead) {
      return new Response('{"status":"method not allowed: use GET or HEAD"}', { status: 405, headers: { ...headers, allow: 'GET, HEAD' } });
    }
    const draining = Atomics.load(this.opts.control, C_DRAINING) === 1;
    const body = draining ? HEALTH_DRAINING : HEALTH_OK;
    const status = draining ? 503 : 200;
    if (!isHead) return new Response(body, { status, headers });
    return new Response(null, { status, headers: { ...headers, 'content-length': String(body.length), date: httpDate() } });
  }

  /** The access log line of a request (no-op when the access log is off). */
  private logAnswer(
    info: AccessInfo | null, status: number, route: string | null, upstream: string, target: string, error: string, upstreamMs: number,
    bytesSent: number, retries = 0,
  ): void {
    const access = this.opts.logs.access;
    if (info === null || access === null) return;
    resetEntry();
    const e = entry;
    e.t0 = info.t0;
    e.requestId = info.requestId;
    e.client = info.client;
    e.method = info.method;
    e.host = info.host;
    e.path = info.path;
    e.query = info.query;
    e.status = status;
    e.bytesReceived = info.bytesReceived;
    e.bytesSent = bytesSent;
    e.durationMs = performance.now() - info.t0;
    e.upstreamMs = upstreamMs;
    e.route = route ?? '';
    e.upstream = upstream;
    e.target = target;
    e.error = error;
    e.retries = retries;
    e.consumer = info.consumer;
    e.userAgent = info.userAgent;
    e.referer = info.referer;
    access.write();
  }

  /**
   * A bug: logged with the request id and stack, answered 500 internal_error
   * (counted under the request's method) and the connection closed.
   */
  private internalError(
    err: unknown, requestId: string, mIdx: number, isHead: boolean, t0: number, info: AccessInfo | null = null, slot = 0, route: string | null = null,
  ): Response {
    log('error', 'internal error in the request handler; answered 500', {
      requestId, error: err instanceof Error ? err.stack ?? err.message : String(err),
    });
    const bytes = gatewayErrorBytes(Errors.INTERNAL, requestId, isHead);
    this.count(Errors.INTERNAL, slot, mIdx, t0, -1, bytes);
    this.logAnswer(info, Errors.INTERNAL.status, route, '', '', Errors.INTERNAL.code, -1, bytes);
    return this.errorResponse(Errors.INTERNAL, requestId, isHead, true);
  }

  /**
   * Bun calls this for every request. A throw out of the handler would reach
   * Bun's error callback without the request id: the synchronous part is
   * guarded here, the asynchronous part (proxy) guards itself.
   */
  private onRequest(req: Request, server: any): Response | Promise<Response> {
    this.pendingId = '';
    const t0 = performance.now();
    try {
      return this.handle(req, server, t0);
    } catch (err) {
      const method = req.method;
      const id = this.pendingId !== '' ? this.pendingId : this.nextRequestId();
      let info: AccessInfo | null = null;
      try {
        if (this.opts.logs.access !== null) info = accessInfo(req, server, t0, id, method, 0);
      } catch { /* the access line goes without what cannot be read */ }
      return this.internalError(err, id, methodIndex(method), method === 'HEAD', t0, info);
    }
  }

  private handle(req: Request, server: any, t0: number): Response | Promise<Response> {
    const dp = this.dp;
    const cfg = dp.config.server;
    const limits = cfg.limits;
    const method = req.method;
    const mIdx = methodIndex(method);
    const isHead = method === 'HEAD';
    const h = req.headers;
    // Repeated lines are joined with ", ": never a safe id, so one is generated.
    const incomingRid = h.get(cfg.requestIdHeader);
    const requestId = incomingRid !== null && isSafeRequestId(incomingRid) ? incomingRid : this.nextRequestId();
    this.pendingId = requestId;
    if (TEST_HOOKS && h.get(TEST_THROW_HEADER) === 'handler') throw new Error('internal error requested by test hook');
    if (cfg.healthPath !== null && requestTarget(req.url).split('?', 1)[0] === cfg.healthPath) return this.health(method, isHead);

    // Request framing first: whether a body follows decides whether an early
    // answer closes the connection. (Bun itself refuses two different
    // Content-Length lines, a non-decimal one, CL with TE, and any transfer
    // coding but chunked, before the handler runs.)
    const cl = h.get('content-length');
    const te = h.get('transfer-encoding');
    let bodyMode = BODY_NONE;
    let contentLength = 0;
    let badFraming = false;
    if (cl !== null) {
      contentLength = contentLengthOf(cl);
      badFraming = contentLength < 0 || te !== null;
      if (contentLength > 0) bodyMode = BODY_LENGTH;
    } else if (te !== null) {
      badFraming = te.toLowerCase() !== 'chunked';
      bodyMode = BODY_CHUNKED;
    }
    // `close` anywhere in Connection (all its lines, joined by Bun). An answer
    // given before the body was read keeps the connection when the body to
    // come is declared and at most LINGER_MAX_BYTES (Bun reads and discards
    // it by its framing, as uWS does); a chunked or larger one closes.
    const conn = h.get('connection');
    // A server a certificate reload replaced answers as if the client asked to close (swapTls).
    const clientClose = (conn !== null && hasCloseOption(conn)) || (this.retired.length !== 0 && this.retired.includes(server));
    const close = clientClose || bodyMode === BODY_CHUNKED || contentLength > LINGER_MAX_BYTES;
    const info = this.opts.logs.access === null ? null : accessInfo(req, server, t0, requestId, method, contentLength);
    // A WebSocket handshake (RFC 6455 4.1: GET, Upgrade websocket, Connection naming upgrade, a key Bun accepts);
    // anything else with an Upgrade header is plain HTTP (Upgrade is hop-by-hop), as on uWS.
    let wsAsk = false;
    if (method === 'GET') {
      const up = h.get('upgrade');
      if (up !== null && conn !== null && isWebSocketUpgrade(up) && connectionListed(conn)?.has('upgrade') === true) {
        const key = h.get('sec-websocket-key');
        wsAsk = key !== null && BUN_WS_KEY.test(key);
      }
    }
    const reject = (
      e: GatewayErrorDef, closeIt: boolean, slot = 0, allow: string | null = null, extra: string[] | null = null, message: string | null = null,
      upstreamName = '',
    ): Response => {
      const bytes = gatewayErrorBytes(e, requestId, isHead, message);
      if (wsAsk) this.ws.countFailure(e.code);
      this.count(e, slot, mIdx, t0, -1, bytes);
      this.logAnswer(info, e.status, slot === 0 ? null : route0(this.dp, slot), upstreamName, '', e.code, -1, bytes);
      return this.errorResponse(e, requestId, isHead, closeIt, allow, extra, message);
    };

    if (this.draining) return reject(Errors.SHUTTING_DOWN, true);
    if (badFraming) return reject(Errors.BAD_REQUEST, true);
    // The gateway does not tunnel: CONNECT is refused whatever the routes say (RFC 9110 9.3.6).
    if (method === 'CONNECT') return reject(Errors.NOT_IMPLEMENTED, close);
    const target = requestTarget(req.url);
    if (target.length > limits.maxUrlBytes) return reject(Errors.URL_TOO_LONG, close);
    const q = target.indexOf('?');
    const rawPath = q === -1 ? target : target.slice(0, q);
    const query = q === -1 ? '' : target.slice(q + 1);

    const flat: string[] = [];
    let bytes = 0;
    let del = false;
    h.forEach((v: string, k: string) => {
      flat.push(k, v);
      bytes += k.length + v.length;
      // DEL is not a field-value character (RFC 9110 5.5); Bun lets it through, uWS's backend refuses it.
      if (v.indexOf('\x7f') !== -1) del = true;
    });
    if (flat.length > limits.maxHeaderCount * 2 || bytes > limits.maxHeaderBytes) return reject(Errors.HEADERS_TOO_LARGE, close);
    // RFC 9112 3.2: exactly one Host line (two arrive as "a, b", never valid), with a valid value, or 400.
    const hostHeader = h.get('host');
    if (hostHeader === null || !isValidHost(hostHeader)) return reject(Errors.BAD_HOST, close);

    const path = normalizePath(rawPath);
    if (path === null) return reject(Errors.BAD_PATH, close);
    const m = dp.router.find(method, normalizeHost(hostHeader), path, flat, query);
    if (m === null) return reject(Errors.ROUTE_NOT_FOUND, close);
    if (m.kind !== MATCH_FOUND) return reject(Errors.METHOD_NOT_ALLOWED, close, 0, m.allow);
    let route = m.data!; // a split route: the branch of the chosen upstream, below
    // A handshake on a route with `websocket: false` is proxied as plain HTTP; else it must have no body and version 13.
    let wsRoute: RouteWebSocket | null = null;
    if (wsAsk) {
      wsRoute = wsSettings(dp, route);
      if (wsRoute === null) wsAsk = false;
      else if (bodyMode !== BODY_NONE) return reject(Errors.BAD_REQUEST, true, 0, null, null, 'A WebSocket handshake has no body.');
      // RFC 6455 4.4: the versions the server speaks, in Sec-WebSocket-Version.
      else if (h.get('sec-websocket-version') !== '13') return reject(Errors.BAD_REQUEST, close, 0, null, ['sec-websocket-version', '13'], 'Sec-WebSocket-Version must be 13.');
    }
    // Refused before reading a byte of it (Bun has already sent `100 Continue` to an Expect).
    if (bodyMode === BODY_LENGTH && contentLength > route.maxBodyBytes) return reject(Errors.BODY_TOO_LARGE, close, route.slot);
    // Bun's fetch cannot send a GET or HEAD body: refused rather than forwarded without it.
    if (bodyMode !== BODY_NONE && (method === 'GET' || isHead)) return reject(Errors.BAD_REQUEST, close, route.slot);
    if (del) return reject(Errors.BAD_REQUEST, close, route.slot);

    const clientIp: string = server.requestIP(req)?.address ?? '';
    const xff = h.get('x-forwarded-for');
    // --- the route's policies (workers/pipeline): null for a route without any
    const policies = route.policies;
    let policyHeaders: string[] | null = null;
    let policyLines = '';
    /** A decision still to come (a strict rate limit's Redis round trip): awaited before the upstream request. */
    let pending: PendingDecision | null = null;
    /** A handshake's API key as the route's auth admitted it (bun-websocket.ts: the tunnel closes when it stops working). */
    let credential: WsCredential | null = null;
    if (policies !== null) {
      const ctx = pctx;
      let verdict: number;
      // A handshake this server will tunnel: an auth route may read its key in the subprotocol offer
      // (identity.keys.sources `subprotocol:<prefix>`; bun-websocket.ts open() offers upstream the rest).
      if (wsRoute !== null) upgradeOffer.protocols = parseProtocols(h.get('sec-websocket-protocol'));
      try {
        verdict = ctx.run(policies, t0 + this.opts.clockOffset, route.id, route.slot, method, clientIp, xff, flat, query);
        credential = upgradeOffer.credential;
      } finally {
        upgradeOffer.protocols = null;
        upgradeOffer.credential = null;
      }
      if (info !== null) info.consumer = ctx.consumerId;
      if (verdict === REFUSED) {
        return reject(ctx.refusal!, close, route.slot, null, ctx.refusalHeaders.slice(), ctx.refusalMessage);
      }
      if (ctx.responseHeaders.length !== 0) policyHeaders = ctx.responseHeaders.slice();
      policyLines = ctx.requestLines;
      pending = ctx.pending;
    }

    // --- upstream request
    const upstreamPath = route.rewrite !== null
      ? route.rewrite(path, m.paramNames, m.params)
      : route.forwardOriginalPath ? rawPath : path;
    // A traffic split (workers/proxy/split.ts): the chosen upstream's context drives everything from here.
    if (route.split !== null) route = route.split.choose(flat, clientIp, path);
    const upstream = route.upstream;
    const guard = upstream.guard;
    let pool: TargetPool;
    if (guard === null) {
      pool = upstream.pick(clientIp, flat, path);
    } else {
      // Breakers, health, ejection, maxInFlight (workers/proxy/guard.ts); given back when the response is ready.
      const admitted = upstream.admit(clientIp, t0 + this.opts.clockOffset, flat, path);
      if (admitted === null) {
        pending?.cancel();
        const fb = guard.fallback;
        if (wsAsk && fb !== null && guard.refusal === Errors.CIRCUIT_OPEN) this.ws.countFailure(guard.refusal.code);
        // Logged with the upstream that refused (a split route's branch, say).
        if (fb === null || guard.refusal !== Errors.CIRCUIT_OPEN) return reject(guard.refusal, close, route.slot, null, null, null, upstream.name);
        this.count(fb.def, route.slot, mIdx, t0, -1, isHead ? 0 : fb.body.length);
        this.logAnswer(info, fb.status, route.id, upstream.name, '', fb.def.code, -1, isHead ? 0 : fb.body.length);
        return fallbackResponse(fb, this.dp.config.server.requestIdHeader, requestId, isHead, close, this.dp.hsts);
      }
      pool = admitted;
    }
    // balance: sticky: the affinity cookie, on the upstream's response only (never on a gateway error).
    if (upstream.setCookie !== null) (policyHeaders ??= []).push('set-cookie', upstream.setCookie);
    if (wsRoute !== null) {
      // The tunnel (bun-websocket.ts) gives the admission and the pending decision back from here.
      const fq = route.stripQuery === null || query === '' ? query : stripQueryParams(query, route.stripQuery);
      const opened = this.ws.open({
        dp, req, server, t0, requestId, route, upstream, pool, probe: guard?.probe ?? false, settings: wsRoute, flat,
        listed: conn !== null ? connectionListed(conn) : null, host: hostHeader, clientIp, xff, forwarded: h.get('forwarded'),
        target: fq === '' ? upstreamPath : upstreamPath + '?' + fq, path: rawPath, query, consumer: policies !== null ? pctx.consumerId : '',
        policyHeaders, policyLines, pending, close: clientClose, credential,
      });
      if (opened !== null) return opened as Promise<Response>;
      pending?.cancel();
      if (guard !== null) guard.finish(pool, guard.probe, Errors.BAD_REQUEST.code, 400, -1, performance.now());
      return reject(Errors.BAD_REQUEST, close, route.slot);
    }
    const headers = new Headers();
    const drop = route.requestPlan.drop;
    const listed = conn !== null ? connectionListed(conn) : null;
    for (let i = 0; i < flat.length; i += 2) {
      const k = flat[i]!;
      if (drop.has(k) || k.startsWith('proxy-') || (listed !== null && listed.has(k))) continue;
      headers.append(k, flat[i + 1]!);
    }
    headers.set('host', route.preserveHost ? hostHeader : pool.hostHeader);
    const fwd = cfg.forwarded;
    if (fwd.xForwardedFor) headers.set('x-forwarded-for', xff === null ? clientIp : `${xff}, ${clientIp}`);
    if (fwd.xForwardedProtoHost) {
      headers.set('x-forwarded-proto', dp.proto);
      headers.set('x-forwarded-host', hostHeader);
    }
    if (fwd.forwarded) {
      const forIp = clientIp.includes(':') ? `"[${clientIp}]"` : clientIp;
      const el = `for=${forIp};host="${hostHeader.replace(/["\\]/g, '')}"${dp.forwardedProto}`;
      const prev = h.get('forwarded');
      headers.set('forwarded', prev === null ? el : `${prev}, ${el}`);
    }
    headers.set(cfg.requestIdHeader, requestId);
    // Configured lines are latin1 strings of their UTF-8 bytes: fetch writes them as those bytes.
    const extraLines = route.requestPlan.extraLines + policyLines;
    if (extraLines !== '') {
      for (const line of extraLines.split('\r\n')) {
        const c = line.indexOf(':');
        if (c > 0) headers.append(line.slice(0, c), line.slice(c + 2));
      }
    }
    let body: ReadableStream<Uint8Array> | null = null;
    if (bodyMode === BODY_LENGTH) {
      headers.set('content-length', String(contentLength));
      body = req.body;
    } else if (bodyMode === BODY_CHUNKED && req.body !== null) {
      body = limitedBody(req.body, route.maxBodyBytes);
    }
    // An auth route's key in the query (identity.keys.sources) is not forwarded.
    const fq = route.stripQuery === null || query === '' ? query : stripQueryParams(query, route.stripQuery);
    const url = `${pool.origin}${fq === '' ? upstreamPath : `${upstreamPath}?${fq}`}`;
    const testThrow = TEST_HOOKS && h.get(TEST_THROW_HEADER) === 'upstream';
    if (guard !== null) {
      const answer = pending !== null
        ? this.decideThenProxy(
          pending, reject, req, server, route, upstream, url, method, mIdx, isHead, requestId, headers, body, clientClose, close, t0, testThrow, info, pool.target.url,
          pool.metricsBase, policyHeaders,
        )
        : this.proxy(
          req, server, route, upstream, url, method, mIdx, isHead, requestId, headers, body, clientClose, close, t0, testThrow, info, pool.target.url, pool.metricsBase,
          policyHeaders,
        );
      return settleAdmission(answer, guard, pool, guard.probe, performance.now());
    }
    if (pending !== null) {
      return this.decideThenProxy(
        pending, reject, req, server, route, upstream, url, method, mIdx, isHead, requestId, headers, body, clientClose, close, t0, testThrow, info, pool.target.url,
        pool.metricsBase, policyHeaders,
      );
    }
    return this.proxy(
      req, server, route, upstream, url, method, mIdx, isHead, requestId, headers, body, clientClose, close, t0, testThrow, info, pool.target.url, pool.metricsBase,
      policyHeaders,
    );
  }

  /**
   * A policy's decision is pending (a strict rate limit: workers/pipeline/
   * context.ts): wait for it (the request counts as in flight meanwhile, so
   * a drain waits too), then proxy, or answer its refusal as the handler
   * answers its own (`reject`: counted, logged, closing when a body is left
   * unread). The request body stays unread until then. A decision that
   * outlives its guardMs (a bug guard: the store times out by itself)
   * answers 503 rate_limit_store_unavailable. A client gone meanwhile
   * (req.signal) is not proxied.
   */
  private async decideThenProxy(
    d: PendingDecision,
    reject: (e: GatewayErrorDef, closeIt: boolean, slot?: number, allow?: string | null, extra?: string[] | null, message?: string | null) => Response,
    req: Request, server: any, route: RouteContext, upstream: UpstreamRuntime, url: string, method: string, mIdx: number, isHead: boolean,
    requestId: string, headers: Headers, body: ReadableStream<Uint8Array> | null, clientClose: boolean, close: boolean, t0: number,
    testThrow: boolean, info: AccessInfo | null, target: string, targetCells: number, policyHeaders: string[] | null,
  ): Promise<Response> {
    const cells = this.opts.metrics;
    this.inFlight++;
    cells[G_IN_FLIGHT]!++;
    let guard: ReturnType<typeof setTimeout> | null = null;
    let outcome: PendingDecision | null;
    try {
      outcome = await new Promise<PendingDecision | null>((resolve) => {
        guard = setTimeout(() => {
          d.abandon();
          resolve(null);
        }, d.guardMs);
        d.begin({ decided: resolve });
      });
    } finally {
      if (guard !== null) clearTimeout(guard);
      this.inFlight--;
      cells[G_IN_FLIGHT]!--;
    }
    if (outcome === null) return reject(d.guardError, close, route.slot, null, ['retry-after', '1'], null);
    if (info !== null && outcome.consumerId !== '') info.consumer = outcome.consumerId;
    if (outcome.result !== CONTINUE) {
      const e = outcome.refusal!;
      return reject(e, close || e === Errors.INTERNAL, route.slot, null, outcome.refusalHeaders, outcome.refusalMessage);
    }
    if ((req as { signal?: AbortSignal }).signal?.aborted === true) {
      // The client left while the decision was pending: nothing to proxy for (Bun drops this answer).
      this.logAnswer(info, 499, route.id, '', '', 'client_aborted', -1, 0);
      return new Response(null, { status: 499 });
    }
    const lines = outcome.requestLines;
    if (lines !== '') {
      for (const line of lines.split('\r\n')) {
        const c = line.indexOf(':');
        if (c > 0) headers.append(line.slice(0, c), line.slice(c + 2));
      }
    }
    const extra = outcome.responseHeaders;
    const allHeaders = extra.length === 0 ? policyHeaders : policyHeaders === null ? extra : policyHeaders.concat(extra);
    return this.proxy(
      req, server, route, upstream, url, method, mIdx, isHead, requestId, headers, body, clientClose, close, t0, testThrow, info, target, targetCells, allHeaders,
    );
  }

  /**
   * The asynchronous part: fetch, then the response for the client. Guards
   * itself: a throw anywhere in it answers 500 with this request's id.
   * `close`: whether an error answer closes (see handle); `clientClose`:
   * the client asked to close after the response.
   */
  private async proxy(
    req: Request, server: any, route: RouteContext, upstream: UpstreamRuntime, url: string, method: string, mIdx: number, isHead: boolean,
    requestId: string, headers: Headers, body: ReadableStream<Uint8Array> | null, clientClose: boolean, close: boolean, t0: number,
    testThrow: boolean, info: AccessInfo | null, target: string, targetCells: number, policyHeaders: string[] | null,
  ): Promise<Response> {
    const ridName = this.dp.config.server.requestIdHeader;
    const t = upstream.config.timeouts;
    const cells = this.opts.metrics;
    const metricsOn = this.dp.config.metrics.enabled;
    this.inFlight++;
    cells[G_IN_FLIGHT]!++;
    let counted = true;
    let upBody: ReadableStream<Uint8Array> | null = null;
    /** This request's retries (bun-retry.ts), made at its first failed try; null: none. */
    let retry: BunRetry | null = null;
    let tSent = 0;
    const done = (): void => {
      if (!counted) return;
      counted = false;
      this.inFlight--;
      cells[G_IN_FLIGHT]!--;
    };
    try {
      // Connect and response head share one budget; the timer stops at the
      // head, so a long body is never cut by it. Bun.serve's idle timer
      // also runs while the upstream thinks and would close the client
      // connection with no answer: it is set long enough for every
      // upstream at listen; a config reloaded with longer timeouts raises
      // it for this request (head budget, then idleMs for the body).
      // With `retry`, its per-try timeout (perTryTimeoutMs, else responseMs: retry.ts tryTimeoutMs).
      const policy = upstream.retry;
      const headBudget = t.connectMs + (policy === null ? t.responseMs : policy.tryTimeoutMs);
      const headS = headWaitSeconds(t);
      const raised = headS > this.idleS;
      if (raised) server.timeout(req, headS > BUN_MAX_IDLE_S ? 0 : headS);
      // Retries (workers/proxy/retry.ts): a body only whole, with a Content-Length within RETRY_BODY_MAX_BYTES, read before the first try.
      let retryable = false;
      let sendBody: ReadableStream<Uint8Array> | Uint8Array | null = body;
      if (policy !== null) {
        policy.countRequest();
        retryable = policy.attempts > 0 && policy.allows(method, route.retryMethods);
        if (retryable && body !== null) {
          const cl = headers.get('content-length');
          if (cl === null || Number(cl) > RETRY_BODY_MAX_BYTES) {
            retryable = false;
          } else {
            try {
              sendBody = new Uint8Array(await new Response(body).arrayBuffer());
            } catch {
              // The client left before its body was whole: nothing to proxy for (Bun drops this answer).
              done();
              this.logAnswer(info, 499, route.id, '', '', 'client_aborted', -1, 0);
              return new Response(null, { status: 499 });
            }
          }
        }
      }
      let up!: Response;
      for (;;) {
        const ac = new AbortController();
        const timer = setTimeout(abortUpstream, headBudget, ac);
        this.fetching.add(ac);
        tSent = performance.now();
        try {
          // Bun's fetch sends a request again on a fresh connection when a
          // reused one dies under it only for idempotent methods (GET, HEAD,
          // PUT, DELETE...): a POST or PATCH fails instead (502).
          up = await fetch(url, {
            method,
            headers,
            body: sendBody,
            redirect: 'manual',
            decompress: false,
            keepalive: true,
            signal: ac.signal,
            duplex: 'half', // stream the request body
            // An https:// target: its upstream's tls settings (upstream-pool.ts PoolTls.fetch).
            tls: url.charCodeAt(4) === 115 /* https: */ ? poolOf(upstream, target).tls?.fetch : undefined,
          } as RequestInit);
        } catch (err) {
          const code = (err as { code?: string }).code ?? '';
          let e: GatewayErrorDef = Errors.UPSTREAM_RESET;
          const shutdown = ac.signal.aborted && ac.signal.reason === SHUTDOWN;
          if (err instanceof BodyTooLarge || (err as { cause?: unknown }).cause instanceof BodyTooLarge) e = Errors.BODY_TOO_LARGE;
          else if (shutdown) e = Errors.SHUTTING_DOWN;
          else if (ac.signal.aborted) e = Errors.UPSTREAM_TIMEOUT;
          else if (code === 'ConnectionRefused' || code === 'ECONNREFUSED' || code === 'FailedToOpenSocket') e = Errors.UPSTREAM_CONNECT_FAILED;
          else if (url.charCodeAt(4) === 115 && isTlsErrorCode(code)) e = Errors.UPSTREAM_TLS_FAILED;
          else if (code.startsWith('Invalid') || code.startsWith('Malformed')) e = Errors.UPSTREAM_BAD_RESPONSE;
          if (retryable) {
            // Bun's fetch tells a refused connection, a timeout (ours: connect and head share it) and anything else (a reset).
            const reason = e === Errors.UPSTREAM_CONNECT_FAILED || e === Errors.UPSTREAM_TLS_FAILED ? R_CONNECT_FAILURE : e === Errors.UPSTREAM_TIMEOUT ? R_TIMEOUT : e === Errors.UPSTREAM_RESET ? R_RESET : -1;
            if (reason >= 0 && policy!.retriesOn(reason)) {
              retry ??= new BunRetry(policy!, upstream, poolOf(upstream, target));
              const detail = e === Errors.UPSTREAM_TIMEOUT ? 'response timeout' : code !== '' ? code : (err as Error).message ?? '';
              const wait = this.retryNext(retry, req, t0, t.totalMs, reason, e.code, e.status, -1, requestId, route.id, target, detail);
              if (wait >= 0) {
                clearTimeout(timer);
                if (wait > 0) await sleep(wait);
                ({ url, target, targetCells } = retarget(retry.current, url, headers, route.preserveHost));
                continue;
              }
            }
          }
          done();
          const message = shutdown ? SHUTDOWN_MESSAGE : null;
          const bytes = gatewayErrorBytes(e, requestId, isHead, message);
          this.count(e, route.slot, mIdx, t0, targetCells, bytes);
          if (e.status >= 500) {
            this.opts.logs.errors.report({
              requestId, route: route.id, upstream: upstream.config.name, target,
              phase: e === Errors.UPSTREAM_CONNECT_FAILED || e === Errors.UPSTREAM_TLS_FAILED ? 'connect' : 'head', code: e.code, status: e.status,
              detail: shutdown ? 'server.drainTimeoutMs ran out' : ac.signal.aborted ? 'response timeout' : code !== '' ? code : (err as Error).message ?? '',
            }, coarse.now);
          }
          this.logAnswer(info, e.status, route.id, upstream.config.name, target, e.code, -1, bytes, retry === null ? 0 : retry.tries);
          return this.settleRetries(retry, tSent, this.errorResponse(e, requestId, isHead, close || shutdown, null, null, message));
        } finally {
          clearTimeout(timer);
          this.fetching.delete(ac);
        }
        if (retryable && policy!.retriesStatus(up.status)) {
          // A listed 5xx: dropped (its body cancelled, its connection not reused) and tried again.
          retry ??= new BunRetry(policy!, upstream, poolOf(upstream, target));
          const wait = this.retryNext(
            retry, req, t0, t.totalMs, RetryPolicy.statusReason(up.status), 'upstream_status', up.status, performance.now() - tSent, requestId, route.id, target,
            'status ' + up.status,
          );
          if (wait >= 0) {
            up.body?.cancel().catch(() => {});
            if (wait > 0) await sleep(wait);
            ({ url, target, targetCells } = retarget(retry.current, url, headers, route.preserveHost));
            continue;
          }
        }
        break;
      }
      upBody = up.body;
      const bodyS = Math.min(Math.ceil(t.idleMs / 1000), BUN_MAX_IDLE_S);
      if (raised || bodyS > this.idleS) server.timeout(req, Math.max(bodyS, 1));
      if (testThrow) throw new Error('internal error requested by test hook (upstream response)');
      const upMs = performance.now() - tSent;
      if (metricsOn) {
        observe(cells, targetCells + T_LATENCY, DURATION_BUCKETS, upMs / 1000);
        this.opts.latency?.recordUpstream(upMs);
      }
      const out = new Headers();
      const plan = route.responsePlan;
      const rdrop = plan.drop;
      const uh = up.headers;
      const rconn = uh.get('connection');
      const rlisted = rconn !== null ? connectionListed(rconn) : null;
      let sawRid = false;
      // Values are latin1 strings of the upstream's bytes, written back as those bytes.
      uh.forEach((v: string, k: string) => {
        if (k === 'set-cookie' || rdrop.has(k) || (rlisted !== null && rlisted.has(k))) return;
        if (k === ridName) sawRid = true;
        out.append(k, v);
      });
      // Headers.forEach merges Set-Cookie; getSetCookie keeps each one apart.
      if (!rdrop.has('set-cookie') && !(rlisted !== null && rlisted.has('set-cookie'))) {
        for (const c of uh.getSetCookie()) out.append('set-cookie', c);
      }
      if (!sawRid) out.set(ridName, requestId);
      const extra = plan.extra;
      if (extra.length !== 0) {
        const vals = latin1Extra(extra);
        for (let i = 0; i < vals.length; i += 2) out.append(vals[i]!, vals[i + 1]!);
      }
      if (retry !== null && retry.tries > 0) {
        // balance: sticky: the cookie names the target that answered.
        const sticky = upstream.stickyCookie(retry.current);
        if (sticky !== null) policyHeaders = withStickyCookie(policyHeaders, sticky);
      }
      if (policyHeaders !== null) for (let i = 0; i < policyHeaders.length; i += 2) out.append(policyHeaders[i]!, policyHeaders[i + 1]!);
      const status = up.status;
      const noBody = isHead || status === 204 || status === 304;
      if (noBody) {
        // HEAD and 304 keep the upstream's Content-Length (the length a GET or
        // a 200 would have); a 204 never has one. A HEAD without one says
        // chunked, else Bun would write `Content-Length: 0`.
        const upLen = status === 204 ? null : uh.get('content-length');
        if (upLen !== null) out.set('content-length', upLen);
        else if (isHead && status !== 204 && status !== 304) out.set('transfer-encoding', 'chunked');
        if (isHead) out.set('date', httpDate());
      }
      if (clientClose) out.set('connection', 'close');
      done();
      // Bun streams the body itself: its bytes are the Content-Length (0 when chunked), as in the access log.
      const len = noBody ? 0 : Number(uh.get('content-length') ?? '0');
      const sent = Number.isFinite(len) ? len : 0;
      if (metricsOn) {
        recordRequest(cells, this.opts.latency, route.slot, mIdx, status, performance.now() - t0, targetCells);
        recordSizes(cells, route.slot, info?.bytesReceived ?? 0, sent);
      }
      if (info !== null) this.logAnswer(info, status, route.id, upstream.config.name, target, '', upMs, sent, retry === null ? 0 : retry.tries);
      return this.settleRetries(retry, tSent, new Response(noBody ? null : up.body, { status, statusText: up.statusText, headers: out }));
    } catch (err) {
      done();
      // The upstream connection is not left holding an unread body.
      upBody?.cancel().catch(() => {});
      return this.settleRetries(retry, tSent, this.internalError(err, requestId, mIdx, isHead, t0, info, route.slot, route.id));
    }
  }

  /**
   * After a failed try (retryable method and body, listed condition
   * `reason`): the backoff wait before the next try (ms), its target in
   * `r.current`, or -1: the failure stands (attempts used, the client gone,
   * past timeouts.totalMs, the budget used up: counted, or no target may
   * take it). A retry is counted by reason and the failed try logged as an
   * error line (`code`, `status`, `detail`) with its target.
   */
  private retryNext(
    r: BunRetry, req: Request, t0: number, totalMs: number, reason: number, code: string, status: number, headMs: number,
    requestId: string, routeId: string, target: string, detail: string,
  ): number {
    const p = r.policy;
    if (r.tries >= p.attempts || (req as { signal?: AbortSignal }).signal?.aborted === true) return -1;
    const now = performance.now();
    const wait = p.backoff(r.tries + 1);
    if (totalMs > 0 && now + wait >= t0 + totalMs) return -1;
    if (!p.take(now)) return -1;
    if (r.next(code, status, headMs) === null) {
      p.giveBack();
      return -1;
    }
    p.count(reason);
    this.opts.logs.errors.report({
      requestId, route: routeId, upstream: r.upstreamName, target, phase: reason === R_CONNECT_FAILURE ? 'connect' : 'head', code, status,
      detail: `${detail}; retrying (try ${r.tries} of ${p.attempts + 1} failed)`,
    }, coarse.now);
    return wait;
  }

  /** A response of a request that was retried on a guarded upstream: its tries are given back by settleAdmission (bun-retry.ts RETRIED). */
  private settleRetries(r: BunRetry | null, tSent: number, res: Response): Response {
    if (r !== null && r.tries > 0 && r.guarded) {
      r.tSent = tSent;
      RETRIED.set(res, r);
    }
    return res;
  }
}

/** The pool of a target URL (the first failed try's, found once a retry is considered). */
function poolOf(upstream: UpstreamRuntime, target: string): TargetPool {
  return upstream.pools.find((p) => p.target.url === target) ?? upstream.pools[0]!;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
