/**
 * The uWS backend of a worker: one App per worker thread listening on the
 * shared port (SO_REUSEPORT spreads connections across workers), and the
 * request handler -- the start of the hot path.
 *
 * The handler reads everything it needs from the uWS HttpRequest at once
 * (it is stack-allocated and dies when the handler returns), checks limits,
 * normalises the path, routes, builds the upstream request head as one
 * string and starts an Exchange. Gateway errors that need no upstream
 * (400/404/405/413/414/431) are answered right here, synchronously.
 */
import { offerUpstream, parseProtocols, stripQueryParams, upgradeOffer } from '../policies/auth/index.js';
import type { WsCredential } from '../policies/auth/credential.js';
import { Errors, type GatewayErrorDef } from '../../common/errors.js';
import { methodIndex } from '../../common/metrics-layout.js';
import { countError, recordRequest, recordSizes } from '../request-metrics.js';
import type { Dataplane } from '../dataplane.js';
import { log } from '../../common/log.js';
import { connectionListed, hasCloseOption, isSafeRequestId } from '../proxy/headers.js';
import { parseContentLength } from '../proxy/http1-parser.js';
import { SWEEP_MS, TimerList, coarse } from '../proxy/timers.js';
import { loopTick } from '../../common/runtime-metrics.js';
import { entry, resetEntry } from '../access-log.js';
import { MATCH_FOUND } from '../router/types.js';
import { isValidHost, normalizeHost, normalizePath } from '../router/normalize.js';
import { Exchange, REQ_BODY_CHUNKED, REQ_BODY_LENGTH, REQ_BODY_NONE, type ExchangeEnv } from './uws-exchange.js';
import { loadUws, type UwsModule } from './uws-loader.js';
import { buildSslApp, tlsSignature } from './uws-tls.js';
import { CLOSE_BY_SERVER, CLOSE_ENFORCE, CLOSE_NONE, gatewayHsts, setGatewayHsts, writeFallback, writeGatewayError, writeJson } from './uws-respond.js';
import type { UpstreamGuard } from '../proxy/guard.js';
import type { TargetPool } from '../proxy/upstream-pool.js';
import { C_DRAINING } from '../../common/protocol.js';
import {
  HEALTH_DRAINING, HEALTH_OK, LINGER_MAX_BYTES, gatewayErrorBytes, type Backend, type CloseReason, type ServerOptions,
} from './backend.js';
import { REFUSED, RequestContext, type PendingDecision } from '../pipeline/context.js';
import { WsHub, WsTunnel, addLines, countUpgradeFailure, type UpgradeRequest } from './websocket/tunnel.js';
import { isWebSocketUpgrade, uwsPayloadCap, wsKeyAddress, wsSettings } from './websocket/settings.js';
import { forwardingIsPlain, handshakeDrops, handshakeGatewayLines, isPlainAscii } from './websocket/handshake-head.js';

/** The pipeline's context, reused for every request of this thread (workers/pipeline/context.ts). */
const pctx = new RequestContext();

/**
 * Client address text from uWS's binary form (4 or 16 bytes), with a small
 * cache for IPv4: getRemoteAddressAsText + TextDecoder cost ~2 µs a request
 * (4% of a proxied request's CPU in a profile).
 */
const v4Cache = new Map<number, string>();
const V4_CACHE_MAX = 4096;
function formatAddress(b: Uint8Array): string {
  if (b.length === 4 || isV4Mapped(b)) {
    const o = b.length === 4 ? 0 : 12;
    const key = ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
    let s = v4Cache.get(key);
    if (s === undefined) {
      s = `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}`;
      if (v4Cache.size >= V4_CACHE_MAX) v4Cache.clear();
      v4Cache.set(key, s);
    }
    return s;
  }
  if (b.length !== 16) return '';
  // RFC 5952 text: lowercase hex groups, the longest run of zero groups as `::`.
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push((b[i]! << 8) | b[i + 1]!);
  let bestAt = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) { bestAt = i; bestLen = j - i; }
    i = j;
  }
  const hex = g.map((x) => x.toString(16));
  if (bestAt === -1) return hex.join(':');
  return hex.slice(0, bestAt).join(':') + '::' + hex.slice(bestAt + bestLen).join(':');
}

function isV4Mapped(b: Uint8Array): boolean {
  if (b.length !== 16) return false;
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

// Scratch state filled by collectHeader during req.forEach; the handler is
// synchronous and single-threaded, so one set of slots serves every request.
// Fields whose meaning depends on all their lines (RFC 9110 5.3: Connection,
// Transfer-Encoding, X-Forwarded-For, Forwarded) are joined with ", " as
// they arrive, so no decision is ever taken on one line of several.
const hdrs: string[] = [];
let hdrBytes = 0;
let hHost = '';
let hHostCount = 0;
let hContentLength: string | null = null;
let hConflict = false;
let hTransferEncoding: string | null = null;
let hConnection: string | null = null;
/** Length of the first Connection line: 5 makes uWS close after the response by itself (uws-respond.ts). */
let hConnectionFirstLength = 0;
let hXff: string | null = null;
let hUserAgent = '';
let hReferer = '';
let hForwarded: string | null = null;
/** The request id header's value; '' when it came more than once (then one is generated). */
let hRequestId: string | null = null;
let ridHeaderName = 'x-request-id';

function resetScratch(): void {
  hdrs.length = 0;
  hdrBytes = 0;
  hHost = '';
  hHostCount = 0;
  hContentLength = null;
  hConflict = false;
  hTransferEncoding = null;
  hConnection = null;
  hConnectionFirstLength = 0;
  hXff = null;
  hUserAgent = '';
  hReferer = '';
  hForwarded = null;
  hRequestId = null;
}

function collectHeader(k: string, v: string): void {
  hdrs.push(k, v);
  hdrBytes += k.length + v.length;
  switch (k.length) {
    case 4:
      if (k === 'host') {
        hHost = v;
        hHostCount++;
      }
      break;
    case 7:
      if (k === 'referer') hReferer = v;
      break;
    case 9:
      if (k === 'forwarded') hForwarded = hForwarded === null ? v : hForwarded + ', ' + v;
      break;
    case 10:
      if (k === 'user-agent') hUserAgent = v;
      else if (k === 'connection') {
        if (hConnection === null) {
          hConnection = v;
          hConnectionFirstLength = v.length;
        } else {
          hConnection += ', ' + v;
        }
      }
      break;
    case 14:
      if (k === 'content-length') {
        if (hContentLength !== null && hContentLength !== v) hConflict = true;
        hContentLength = v;
      }
      break;
    case 15:
      if (k === 'x-forwarded-for') hXff = hXff === null ? v : hXff + ', ' + v;
      break;
    case 17:
      if (k === 'transfer-encoding') hTransferEncoding = hTransferEncoding === null ? v : hTransferEncoding + ', ' + v;
      break;
  }
  if (k === ridHeaderName) hRequestId = hRequestId === null ? v : '';
}

/** Every line of field `name` (lowercase) in `h` (name, value pairs) joined as one list value (RFC 9110 5.3); '' when absent. */
function joinedField(h: string[], name: string): string {
  let v = '';
  for (let i = 0; i < h.length; i += 2) if (h[i] === name) v = v === '' ? h[i + 1]! : v + ', ' + h[i + 1]!;
  return v;
}

const HEAD_INDEX = methodIndex('HEAD');
const GET_INDEX = methodIndex('GET');

/** The `Allow` of an `OPTIONS *` answer (serverOptions). */
const SERVER_ALLOW = 'GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS';

/** The last Host value found valid: clients send the same one again and again. */
let lastValidHost = '';

/**
 * Test hook (TURNPIKE_TEST_HOOKS=1 only): a request carrying this header
 * makes the handler throw, so tests can check that a bug in the hot path
 * becomes a 500 internal_error and a log line, not a dead worker.
 */
const TEST_HOOKS = process.env.TURNPIKE_TEST_HOOKS === '1';
const TEST_THROW_HEADER = 'x-turnpike-test-throw';

export { formatAddress };

export class UwsServer implements Backend {
  private readonly uws: UwsModule;
  /**
   * The server implements HTTP/1.x strictly itself (the node backend,
   * workers/transport/node/app.ts): the workarounds of uWS 20.30's quirks
   * are skipped, header values arrive as latin1 strings (exact bytes), and
   * malformed requests come to onParseError.
   */
  private readonly strict: boolean;
  /** The app taking new connections (with TLS: rebuilt when the certificates change, swapTls). */
  private app: any;
  private listenSocket: any = null;
  /**
   * Apps a certificate reload replaced (swapTls): no longer listening, still
   * serving the connections they had (keep-alive, WebSockets) until close().
   */
  private readonly retired: any[] = [];
  /** uws-tls.ts tlsSignature of the certificates and settings `app` serves ('' for plain HTTP). */
  private tlsKey: string;
  /** The app prepare() built for a config's new server.tls, taken by the setDataplane of that config (swapTls); else null. */
  private prepared: { dp: Dataplane; tlsKey: string; app: any } | null = null;
  /** The handlers every app (and every SNI name's router) gets: registerHandlers. */
  private readonly httpHandler: (res: any, req: any) => void;
  private readonly wsBehavior: Record<string, unknown>;
  private dp: Dataplane;
  private readonly env: ExchangeEnv;
  private readonly timers = new TimerList();
  private sweeper: NodeJS.Timeout | null = null;
  private pumpScheduled = false;
  private readonly ridPrefix: string;
  private ridCounter = 0;
  /** WebSocket proxying (websocket/tunnel.ts), on uWS and on the strict node backend (node/websocket.ts gives it uWS's ws API). */
  private readonly wsHub: WsHub | null = null;
  draining = false;
  port = 0;

  /** `uws`: the server module (default: the uWebSockets.js build loadUws finds; the node backend passes node/app.ts's). */
  constructor(dp: Dataplane, private readonly opts: ServerOptions, uws: UwsModule = loadUws()) {
    this.uws = uws;
    this.strict = uws.strictHttp === true;
    this.dp = dp;
    ridHeaderName = dp.config.server.requestIdHeader;
    // Request ids: a per-process random prefix, the worker index and a counter;
    // unique without a random call per request.
    this.ridPrefix = Math.random().toString(36).slice(2, 10) + '-' + opts.workerIndex.toString(36) + '-';
    const runPump = () => {
      this.pumpScheduled = false;
    };
    this.env = {
      logs: opts.logs,
      metrics: opts.metrics,
      metricsOn: dp.config.metrics.enabled,
      latency: dp.config.metrics.enabled ? opts.latency : null,
      timers: this.timers,
      requestIdHeader: dp.config.server.requestIdHeader,
      pump: () => {
        // One setImmediate per loop turn: Node drains the nextTick queue after
        // it, which uWS callbacks do not do (see ENVIRONMENT.md, the 466 ms p99).
        if (!this.pumpScheduled) {
          this.pumpScheduled = true;
          setImmediate(runPump);
        }
      },
    };
    this.httpHandler = (res: any, req: any) => this.onRequest(res, req);
    // uWS gives this behaviour only GET requests with a 24-character
    // Sec-WebSocket-Key (the node backend: HTTP/1.1 GETs with a key `ws`
    // accepts, node/app.ts); every other request reaches the handler above
    // without any added work (websocket/tunnel.ts).
    this.wsHub = new WsHub(this.env, uwsPayloadCap(dp));
    const compressor = (this.uws as unknown as { SHARED_COMPRESSOR?: number }).SHARED_COMPRESSOR ?? 1;
    this.wsBehavior = this.wsHub.behavior((res: any, req: any, context: any) => this.onUpgrade(res, req, context), compressor);
    setGatewayHsts(dp.hsts);
    this.tlsKey = tlsSignature(dp.config.server.tls);
    this.app = this.createApp(dp);
  }

  /**
   * A new app for `dp`'s listener: plain (uws.App) or TLS (server.tls:
   * uws-tls.ts, one router per SNI name), with every handler registered.
   * Throws when the TLS material cannot be loaded (nothing is left open).
   */
  private createApp(dp: Dataplane): any {
    const tls = dp.config.server.tls ?? null;
    let app: any;
    if (tls === null) {
      app = this.uws.App();
      this.registerHandlers(app);
    } else if (this.uws.TlsApp !== undefined) {
      app = this.uws.TlsApp(tls);
      this.registerHandlers(app);
    } else {
      app = buildSslApp(this.uws, tls, (a) => this.registerHandlers(a));
    }
    if (this.strict) {
      app.setLimits(dp.config.server.limits);
      app.setTimeouts(dp.config.server.timeouts);
      app.parseErrorHandler = (res: any, code: string, _status: number, _reason: string, close: boolean, method: string, target: string) =>
        this.onParseError(res, code, close, method, target);
    }
    return app;
  }

  /** Every handler, on `app`'s current router (the default one, or an SNI name's after app.domain(name)): the start and every certificate swap use this. */
  private registerHandlers(app: any): void {
    app.any('/*', this.httpHandler);
    app.ws('/*', this.wsBehavior);
  }

  listen(): Promise<number> {
    const { host, port } = this.opts;
    return new Promise((resolve, reject) => {
      this.app.listen(host, port, (ls: any) => {
        if (!ls) {
          reject(new Error(`cannot listen on ${host}:${port}: the address is in use or not available; pick another server.port/host`));
          return;
        }
        this.listenSocket = ls;
        this.port = this.uws.us_socket_local_port(ls);
        this.sweeper = setInterval(() => this.sweep(), SWEEP_MS);
        this.opts.onListen(this.port);
        resolve(this.port);
      });
    });
  }

  /**
   * Backend.prepare: when `dp`'s server.tls differs from what is served,
   * builds its listener now: the new SSLApp (kept for setDataplane(dp),
   * which listens with it), or with the node module its SecureContexts
   * (UwsModule.prepareTls: setTls then reuses them). Throws the
   * ConfigRefusedError of uws-tls.ts / node/tls.ts when a certificate, key
   * or the cipher list cannot be loaded; nothing is applied then.
   */
  prepare(dp: Dataplane): void {
    this.dropPrepared();
    const tls = dp.config.server.tls ?? null;
    // No TLS: uws.App() cannot fail (turning TLS on or off is a restart anyway).
    if (tls === null) return;
    const tlsKey = tlsSignature(tls);
    if (tlsKey === this.tlsKey) return;
    if (this.uws.TlsApp !== undefined) {
      this.uws.prepareTls?.(tls);
      return;
    }
    this.prepared = { dp, tlsKey, app: this.createApp(dp) };
  }

  /** Closes an app prepare() built that no setDataplane took (never listened: no connection to keep). */
  private dropPrepared(): void {
    if (this.prepared === null) return;
    this.prepared.app.close();
    this.prepared = null;
  }

  /** Swap to a new config between requests; in-flight exchanges keep theirs. */
  setDataplane(dp: Dataplane): void {
    const old = this.dp;
    this.dp = dp;
    setGatewayHsts(dp.hsts);
    const tlsKey = this.prepared !== null && this.prepared.dp === dp ? this.prepared.tlsKey : tlsSignature(dp.config.server.tls);
    if (tlsKey !== this.tlsKey) this.swapTls(dp, tlsKey);
    this.dropPrepared();
    ridHeaderName = dp.config.server.requestIdHeader;
    this.env.requestIdHeader = dp.config.server.requestIdHeader;
    this.env.metricsOn = dp.config.metrics.enabled;
    this.env.latency = dp.config.metrics.enabled ? this.opts.latency : null;
    if (this.strict) {
      this.app.setLimits(dp.config.server.limits);
      this.app.setTimeouts(dp.config.server.timeouts);
    }
    if (old !== dp) {
      // WebSockets of routes the reload removed or changed: drained (websocket.drainMs), the others untouched.
      this.wsHub?.reload(old.config.routes, dp.config.routes);
      old.retire(dp);
    }
  }

  /**
   * New certificates (or TLS settings) without dropping a connection: a new
   * app with every handler listens on the same port (SO_REUSEPORT), then,
   * after one more poll phase, the old listen socket closes; the old app
   * keeps serving the connections it has (keep-alive requests, WebSockets,
   * with the certificate they were handshaken with) until close(). New
   * connections get the new certificates. A connection the kernel queued on
   * the old listen socket after uWS's last accept is reset by that close
   * (Linux; net.ipv4.tcp_migrate_req=1 moves it to the new socket instead):
   * ~0.1 per swap at 500 new connections/s, measured. If the new app cannot
   * be built or cannot listen, the old one keeps serving and an error is
   * logged (prepare() built it first and refuses a config it cannot build,
   * so only listen can fail here). Retired apps are kept until close():
   * measured ~600 KB of RSS per swap with three certificates, and a swap
   * with 1000 sni entries blocks the worker ~1.1 s and adds ~70 MB (README,
   * "TLS on the uWS backend").
   */
  private swapTls(dp: Dataplane, tlsKey: string): void {
    const tls = dp.config.server.tls ?? null;
    if (tls !== null && typeof this.app.setTls === 'function') {
      // A module that swaps certificates in place (UwsModule.TlsApp).
      try {
        this.app.setTls(tls);
        this.tlsKey = tlsKey;
      } catch (err) {
        log('error', 'server.tls: cannot apply the certificates of the new config; the previous ones keep serving', {
          worker: this.opts.workerIndex, error: err instanceof Error ? err.message : String(err),
        });
      }
      return;
    }
    let app: any;
    try {
      if (this.prepared !== null && this.prepared.dp === dp) {
        app = this.prepared.app;
        this.prepared = null;
      } else {
        app = this.createApp(dp);
      }
    } catch (err) {
      log('error', 'server.tls: cannot build the TLS listener of the new config; the previous certificates keep serving', {
        worker: this.opts.workerIndex, error: err instanceof Error ? err.message : String(err),
      });
      return;
    }
    if (this.listenSocket === null) {
      // Not listening: before listen() (it takes the new app) or after stopListening() (draining: no new app).
      if (this.draining) {
        app.close();
        return;
      }
      this.app.close(); // never listened: no connection to keep
      this.app = app;
      this.tlsKey = tlsKey;
      return;
    }
    let ls: any = null;
    // uWS calls back before listen() returns.
    app.listen(this.opts.host, this.port, (s: any) => { ls = s || null; });
    if (ls === null) {
      app.close();
      log('error', `server.tls: cannot listen on ${this.opts.host}:${this.port} again for the new certificates; the previous certificates keep serving`, {
        worker: this.opts.workerIndex,
      });
      return;
    }
    this.closeLater.push(this.listenSocket);
    this.listenSocket = ls;
    this.retired.push(this.app);
    this.app = app;
    this.tlsKey = tlsKey;
    // The old listen socket closes after the next poll phase, in which uWS accepts what the kernel queued on
    // it meanwhile (the build above blocked this thread): those connections would be reset by the close.
    setImmediate(() => setImmediate(this.closeOldListeners));
    log('debug', 'server.tls: new certificates serve new connections; open ones keep theirs', { worker: this.opts.workerIndex, retired: this.retired.length });
  }

  /** Listen sockets a certificate swap replaced, closed after one more poll phase (closeOldListeners). */
  private closeLater: any[] = [];

  private readonly closeOldListeners = (): void => {
    for (const ls of this.closeLater) this.uws.us_listen_socket_close(ls);
    this.closeLater.length = 0;
  };

  get inFlight(): number {
    return this.timers.count;
  }

  private lastIdleSweep = 0;

  private sweep(): void {
    const now = performance.now();
    loopTick(now); // this thread's event-loop delay (common/runtime-metrics.ts): the sweep is its timer
    this.timers.sweep(now);
    if (now - this.lastIdleSweep >= 1000) {
      this.lastIdleSweep = now;
      for (const u of this.dp.upstreams.values()) u.sweepIdle(now - u.config.pool.idleTimeoutMs);
    }
  }

  /** Stop accepting new connections; in-flight requests continue. */
  stopListening(): void {
    this.draining = true;
    this.closeOldListeners();
    if (this.listenSocket !== null) {
      this.uws.us_listen_socket_close(this.listenSocket);
      this.listenSocket = null;
    }
  }

  /** Final close (Backend.close): the worker exits by itself afterwards. */
  close(reason: CloseReason): void {
    this.stopListening();
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.sweeper = null;
    // Requests still in flight: ended by the gateway, not by their clients
    // (app.close() would make each look like a client abort, a 499).
    let t = this.timers.head;
    while (t !== null) {
      const next = t.nextTimed;
      const ex = t as Exchange;
      if (reason === 'crashed') ex.lose();
      else ex.shutDown();
      t = next;
    }
    // WebSockets: 1001 both ways (uWS's app.close() does not end them).
    this.wsHub?.closeAll();
    // Closes every client socket; what is left sees onAborted and lets go
    // of its upstream socket. (Apps a certificate reload replaced too.)
    this.app.close();
    for (const a of this.retired) a.close();
    this.retired.length = 0;
    this.dropPrepared();
    this.dp.retire(null);
  }

  private nextRequestId(): string {
    return this.ridPrefix + (++this.ridCounter).toString(36);
  }

  /**
   * uWS calls this for every request. A throw out of the handler would end
   * the worker with every request it carries: a bug answers 500
   * internal_error (logged with the request id and stack) instead.
   */
  private onRequest(res: any, req: any): void {
    try {
      this.handle(res, req);
    } catch (err) {
      this.internalError(res, err);
    }
  }

  /** This is the hot path -- change with care! */
  private handle(res: any, req: any): void {
    const t0 = performance.now();
    const dp = this.dp;
    const server = dp.config.server;
    const limits = server.limits;
    const method: string = req.getCaseSensitiveMethod();
    const url: string = req.getUrl();
    const query: string = req.getQuery() ?? '';
    this.currentMethod = method;
    this.currentUrl = url;
    this.currentQuery = query;
    this.currentConsumer = '';
    resetScratch();
    req.forEach(collectHeader);

    const requestId = hRequestId !== null && isSafeRequestId(hRequestId) ? hRequestId : this.nextRequestId();
    const mIdx = methodIndex(method);
    const isHead = method === 'HEAD';
    this.pendingId = requestId;
    this.pendingMethod = mIdx;
    if (TEST_HOOKS) this.testHooks(req);

    // Request framing first: whether a body follows decides whether an
    // early answer closes the connection (see LINGER_MAX_BYTES; with bad
    // framing it must, or body bytes could be taken for the next request).
    let bodyMode = REQ_BODY_NONE;
    let contentLength = 0;
    let badFraming = false;
    if (hContentLength !== null) {
      contentLength = parseContentLength(hContentLength);
      // Smuggling guards: conflicting values, a value that is not a plain
      // decimal, or Content-Length with Transfer-Encoding (RFC 9112 6.3).
      badFraming = hConflict || contentLength < 0 || hTransferEncoding !== null;
      if (contentLength > 0) bodyMode = REQ_BODY_LENGTH;
    } else if (hTransferEncoding !== null) {
      badFraming = hTransferEncoding.toLowerCase() !== 'chunked';
      bodyMode = REQ_BODY_CHUNKED;
    }
    // `close` anywhere in Connection; uWS itself closes only when the first
    // Connection line is 5 characters long (uws-respond.ts) -- any 5, `X-Foo`
    // too: then the response says `Connection: close`, so that the client
    // knows (it would lose its next request on the connection otherwise).
    // (A strict server closes whenever it is asked to: CLOSE_ENFORCE always works there.)
    const closeBy = hConnectionFirstLength === 5 && !this.strict ? CLOSE_BY_SERVER : CLOSE_ENFORCE;
    const clientClose = closeBy === CLOSE_BY_SERVER || (hConnection !== null && hasCloseOption(hConnection)) ? closeBy : CLOSE_NONE;
    const close = clientClose !== CLOSE_NONE || bodyMode === REQ_BODY_CHUNKED || contentLength > LINGER_MAX_BYTES ? closeBy : CLOSE_NONE;

    if (server.healthPath !== null && url === server.healthPath) return this.health(res, method, isHead);
    if (this.draining) return this.reject(res, Errors.SHUTTING_DOWN, requestId, mIdx, isHead, t0, closeBy);
    if (badFraming) return this.reject(res, Errors.BAD_REQUEST, requestId, mIdx, isHead, t0, closeBy);
    // The gateway does not tunnel: CONNECT is refused whatever the routes say (RFC 9110 9.3.6).
    if (method === 'CONNECT') return this.reject(res, Errors.NOT_IMPLEMENTED, requestId, mIdx, isHead, t0, close);
    if (url.length + (query.length === 0 ? 0 : query.length + 1) > limits.maxUrlBytes) {
      return this.reject(res, Errors.URL_TOO_LONG, requestId, mIdx, isHead, t0, close);
    }
    if (hdrs.length > limits.maxHeaderCount * 2 || hdrBytes > limits.maxHeaderBytes) {
      return this.reject(res, Errors.HEADERS_TOO_LARGE, requestId, mIdx, isHead, t0, close);
    }
    // RFC 9112 3.2: exactly one Host line, with a valid value, or 400.
    if (hHostCount !== 1 || (hHost !== lastValidHost && !this.acceptHost(hHost))) {
      // HTTP/1.0 may omit Host (RFC 9112 3.2 requires it in HTTP/1.1 only); the strict server says so
      // (NodeRequest.noHost10): routed with no host, so only routes without `host` match (nginx's default server).
      if (!(hHostCount === 0 && req.noHost10 === true)) return this.reject(res, Errors.BAD_HOST, requestId, mIdx, isHead, t0, close);
    }

    const path = normalizePath(url);
    if (path === null) {
      // `OPTIONS *` (asterisk-form, RFC 9112 3.2.4): only the strict server hands it over (its parser refuses `*` with another method).
      if (url === '*' && method === 'OPTIONS' && this.strict) return this.serverOptions(res, requestId, mIdx, t0, close);
      return this.reject(res, Errors.BAD_PATH, requestId, mIdx, isHead, t0, close);
    }
    const host = normalizeHost(hHost);
    const m = dp.router.find(method, host, path, hdrs, query);
    if (m === null) return this.reject(res, Errors.ROUTE_NOT_FOUND, requestId, mIdx, isHead, t0, close);
    if (m.kind !== MATCH_FOUND) {
      return this.reject(res, Errors.METHOD_NOT_ALLOWED, requestId, mIdx, isHead, t0, close, 0, m.allow);
    }
    let route = m.data!; // a split route: the branch of the chosen upstream, below
    if (bodyMode === REQ_BODY_LENGTH && contentLength > route.maxBodyBytes) {
      // Refused before reading a byte of it. (uWS has already answered an
      // `Expect: 100-continue` by then: see the README.)
      return this.reject(res, Errors.BODY_TOO_LARGE, requestId, mIdx, isHead, t0, close, route.slot);
    }

    const clientIp = this.remoteAddress(res);
    // --- the route's policies (workers/pipeline): null for a route without any
    const policies = route.policies;
    let policyHeaders: string[] | null = null;
    let policyLines = '';
    /** A decision still to come (a strict rate limit's Redis round trip), or null: then the exchange starts at once. */
    let pending: PendingDecision | null = null;
    if (policies !== null) {
      const ctx = pctx;
      const verdict = ctx.run(policies, t0 + this.opts.clockOffset, route.id, route.slot, method, clientIp, hXff, hdrs, query);
      this.currentConsumer = ctx.consumerId;
      if (verdict === REFUSED) {
        return this.reject(res, ctx.refusal!, requestId, mIdx, isHead, t0, close, route.slot, null, ctx.refusalHeaders.slice(), ctx.refusalMessage);
      }
      if (ctx.responseHeaders.length !== 0) policyHeaders = ctx.responseHeaders.slice();
      policyLines = ctx.requestLines;
      pending = ctx.pending;
      this.pendingDecision = pending;
    }

    // --- upstream request head
    const upstreamPath = route.rewrite !== null ? route.rewrite(path, m.paramNames, m.params) : route.forwardOriginalPath ? url : path;
    // A traffic split (workers/proxy/split.ts): the chosen upstream's context drives everything from here.
    if (route.split !== null) route = route.split.choose(hdrs, clientIp, path);
    const upstream = route.upstream;
    const guard = upstream.guard;
    let pool: TargetPool;
    if (guard === null) {
      pool = upstream.pick(clientIp, hdrs, path);
    } else {
      // Breakers, health, ejection, maxInFlight (workers/proxy/guard.ts): given back by the exchange, or below if refused before it exists.
      const admitted = upstream.admit(clientIp, t0 + this.opts.clockOffset, hdrs, path);
      if (admitted === null) {
        // Logged with the upstream that refused (a split route's branch, say).
        this.refusedUpstream = upstream.name;
        return this.refuseUpstream(res, guard, requestId, mIdx, isHead, t0, close, route.slot);
      }
      pool = admitted;
      this.admittedGuard = guard;
      this.admittedPool = pool;
      this.admittedProbe = guard.probe;
    }
    // balance: sticky: the affinity cookie, on the upstream's response only (never on a gateway error).
    if (upstream.setCookie !== null) (policyHeaders ??= []).push('set-cookie', upstream.setCookie);
    // (No client Host, HTTP/1.0: nothing to preserve, the upstream's name goes.)
    const hostLine = route.preserveHost && hHost !== '' ? hHost : pool.hostHeader;
    // An auth route's key in the query (identity.keys.sources) is not forwarded.
    const fq = route.stripQuery === null || query === '' ? query : stripQueryParams(query, route.stripQuery);
    let head = method + ' ' + (fq === '' ? upstreamPath : upstreamPath + '?' + fq) + ' HTTP/1.1\r\nhost: ' + hostLine + '\r\n';
    const drop = route.requestPlan.drop;
    let listed: Set<string> | null = null;
    if (hConnection !== null && hConnection !== 'keep-alive' && hConnection !== 'close') listed = connectionListed(hConnection);
    for (let i = 0; i < hdrs.length; i += 2) {
      const k = hdrs[i]!;
      if (drop.has(k) || k.charCodeAt(0) === 112 && k.startsWith('proxy-') || (listed !== null && listed.has(k))) continue;
      head += k + ': ' + hdrs[i + 1] + '\r\n';
    }
    // Header and query bytes reach the upstream exactly as the client sent
    // them, or the request is refused; never altered. The head is written as
    // latin1 (one char = one byte). uWS hands header values and the query
    // over decoded as UTF-8, so anything beyond ASCII (rare; one native scan
    // to find out) takes the slow path, as does DEL, which uWS lets through.
    // Only the client's part is checked: the lines the gateway owns come
    // after, so no recovered client value can ever stand in for them.
    if (Buffer.byteLength(head, 'utf8') !== head.length || head.indexOf('\x7f') !== -1) {
      // A strict server hands header values over as latin1 (the exact bytes): only what cannot be written as a head is refused.
      const exact = this.strict ? (SAFE_HEAD.test(head) ? head : null) : exactBytes(head, req);
      if (exact === null) return this.rejectAfterPolicies(res, Errors.BAD_REQUEST, requestId, mIdx, isHead, t0, close, route.slot);
      head = exact;
    }
    const fwd = server.forwarded;
    // The client's X-Forwarded-For / Forwarded are extended, so they must be
    // plain ASCII (addresses and tokens; RFC 7239): anything else is refused.
    if ((hXff !== null && !isPlainAscii(hXff)) || (hForwarded !== null && !isPlainAscii(hForwarded))) {
      return this.rejectAfterPolicies(res, Errors.BAD_REQUEST, requestId, mIdx, isHead, t0, close, route.slot);
    }
    if (fwd.xForwardedFor) head += 'x-forwarded-for: ' + (hXff === null ? clientIp : hXff + ', ' + clientIp) + '\r\n';
    if (fwd.xForwardedProtoHost) head += hHost === '' ? dp.xfProtoLine : dp.xfProtoLine + 'x-forwarded-host: ' + hHost + '\r\n';
    if (fwd.forwarded) {
      const forIp = clientIp.includes(':') ? '"[' + clientIp + ']"' : clientIp;
      const el = 'for=' + forIp + (hHost === '' ? '' : ';host="' + hHost.replace(/["\\]/g, '') + '"') + dp.forwardedProto;
      head += 'forwarded: ' + (hForwarded === null ? el : hForwarded + ', ' + el) + '\r\n';
    }
    head += ridHeaderName + ': ' + requestId + '\r\n' + route.requestPlan.extraLines + policyLines;
    if (bodyMode === REQ_BODY_LENGTH) head += 'content-length: ' + contentLength + '\r\n\r\n';
    else if (bodyMode === REQ_BODY_CHUNKED) head += 'transfer-encoding: chunked\r\n\r\n';
    else head += '\r\n';

    const ex = new Exchange(res, this.env, route, upstream, pool, method, mIdx, requestId, head, bodyMode, route.maxBodyBytes, t0, clientClose, closeBy);
    if (guard !== null) {
      // The exchange gives the admission back when it completes.
      ex.probe = this.admittedProbe;
      this.admittedGuard = null;
      this.admittedPool = null;
    }
    this.pendingEx = ex;
    ex.client = clientIp;
    ex.host = hHost;
    ex.path = url;
    ex.query = query;
    ex.consumer = this.currentConsumer;
    ex.userAgent = hUserAgent;
    ex.referer = hReferer;
    ex.policyHeaders = policyHeaders;
    if (TEST_HOOKS) ex.testThrow = req.getHeader(TEST_THROW_HEADER) === 'upstream';
    // A throw out of a uWS callback would end the worker: a bug ends only its exchange.
    res.onAborted(() => {
      try {
        ex.onClientAborted();
      } catch (err) {
        ex.crashed(err);
      }
    });
    // The strict server's parser found the body malformed (a bad chunk): 400 bad_request if nothing was sent yet, and close.
    if (this.strict) {
      res.onBodyError = () => {
        try {
          ex.fail(Errors.BAD_REQUEST, true);
        } catch (err) {
          ex.crashed(err);
        }
      };
    }
    if (bodyMode !== REQ_BODY_NONE) {
      res.onData((ab: ArrayBuffer, isLast: boolean) => {
        try {
          ex.onClientData(ab, isLast);
        } catch (err) {
          ex.crashed(err);
        }
      });
    }
    if (pending === null) {
      ex.start();
    } else {
      // The decision comes later (workers/pipeline/context.ts): the exchange
      // exists now, so the client's abort and body chunks (queued) are
      // handled meanwhile; it starts, or answers the refusal, when told.
      this.pendingDecision = null;
      ex.awaitDecision(pending, close);
      // ioredis may have queued work (auto-pipelining's setImmediate, or a
      // rejection's microtask) that a uWS callback does not run by itself.
      this.env.pump();
    }
    this.pendingEx = null;
  }

  /**
   * uWS's upgrade handler (websocket/tunnel.ts): a GET carrying a
   * 24-character Sec-WebSocket-Key. Not `Upgrade: websocket` with
   * `Connection: upgrade`, the health path, or a route with `websocket:
   * false`: yielded to the HTTP handler, which strips the Upgrade header as
   * hop-by-hop. Otherwise the request goes through the checks, the routing
   * and the route's policies of handle() for a GET (a refusal is the same
   * JSON error, never a 101), a target is admitted, and a WsTunnel opens the
   * upstream WebSocket before the client gets its 101. Mirrors handle():
   * change both together. The policies see the Sec-WebSocket-Protocol offer
   * (policies/auth upgradeOffer: an auth route's `subprotocol:<prefix>` key
   * source reads its key there), and the upstream is offered what
   * offerUpstream() leaves: never a credential entry.
   */
  private onUpgrade(res: any, req: any, context: any): void {
    try {
      this.upgrade(res, req, context);
    } catch (err) {
      this.countUpgradeFailure('internal_error');
      this.internalError(res, err);
    }
  }

  private upgrade(res: any, req: any, context: any): void {
    const t0 = performance.now();
    const dp = this.dp;
    const server = dp.config.server;
    const limits = server.limits;
    const url: string = req.getUrl();
    const query: string = req.getQuery() ?? '';
    if ((req.getHeader('upgrade') as string) === '' || (server.healthPath !== null && url === server.healthPath)) {
      req.setYield(true);
      return;
    }
    const key: string = req.getHeader('sec-websocket-key');
    const version: string = req.getHeader('sec-websocket-version');
    const protocolHeader: string = req.getHeader('sec-websocket-protocol');
    const extensions: string = req.getHeader('sec-websocket-extensions');
    this.currentMethod = 'GET';
    this.currentUrl = url;
    this.currentQuery = query;
    this.currentConsumer = '';
    resetScratch();
    req.forEach(collectHeader);
    // RFC 6455 4.2.1: Upgrade must list `websocket` (all its lines make one list, RFC 9110 5.3: uWS's
    // getHeader gives the first only) and Connection must name `upgrade`; else this is a plain GET.
    if (!isWebSocketUpgrade(joinedField(hdrs, 'upgrade')) || hConnection === null || connectionListed(hConnection)?.has('upgrade') !== true) {
      req.setYield(true);
      return;
    }
    const requestId = hRequestId !== null && isSafeRequestId(hRequestId) ? hRequestId : this.nextRequestId();
    const mIdx = GET_INDEX;
    this.pendingId = requestId;
    this.pendingMethod = mIdx;
    // A handshake has no body (RFC 6455 4.1): one announced is refused, and the connection closed.
    const closeBy = hConnectionFirstLength === 5 && !this.strict ? CLOSE_BY_SERVER : CLOSE_ENFORCE;
    if (hTransferEncoding !== null || (hContentLength !== null && hContentLength !== '0')) {
      return this.rejectUpgrade(res, Errors.BAD_REQUEST, requestId, mIdx, false, t0, closeBy, 0, null, null, 'A WebSocket handshake has no body.');
    }
    // A refusal (ours or the upstream's) keeps the connection unless the client asked to close (`close` in
    // Connection) or uWS will close anyway (a 5-byte first Connection line): then it says so, as handle() does.
    const close = closeBy === CLOSE_BY_SERVER || (hConnection !== null && hasCloseOption(hConnection)) ? closeBy : CLOSE_NONE;
    if (this.draining) return this.rejectUpgrade(res, Errors.SHUTTING_DOWN, requestId, mIdx, false, t0, closeBy);
    if (version !== '13') {
      // RFC 6455 4.4: the versions the server speaks, in Sec-WebSocket-Version.
      return this.rejectUpgrade(res, Errors.BAD_REQUEST, requestId, mIdx, false, t0, close, 0, null, ['sec-websocket-version', '13'], 'Sec-WebSocket-Version must be 13.');
    }
    if (url.length + (query.length === 0 ? 0 : query.length + 1) > limits.maxUrlBytes) return this.rejectUpgrade(res, Errors.URL_TOO_LONG, requestId, mIdx, false, t0, close);
    if (hdrs.length > limits.maxHeaderCount * 2 || hdrBytes > limits.maxHeaderBytes) {
      return this.rejectUpgrade(res, Errors.HEADERS_TOO_LARGE, requestId, mIdx, false, t0, close);
    }
    if (hHostCount !== 1 || (hHost !== lastValidHost && !this.acceptHost(hHost))) {
      return this.rejectUpgrade(res, Errors.BAD_HOST, requestId, mIdx, false, t0, close);
    }
    const path = normalizePath(url);
    if (path === null) return this.rejectUpgrade(res, Errors.BAD_PATH, requestId, mIdx, false, t0, close);
    const host = normalizeHost(hHost);
    const m = dp.router.find('GET', host, path, hdrs, query);
    if (m === null) return this.rejectUpgrade(res, Errors.ROUTE_NOT_FOUND, requestId, mIdx, false, t0, close);
    if (m.kind !== MATCH_FOUND) return this.rejectUpgrade(res, Errors.METHOD_NOT_ALLOWED, requestId, mIdx, false, t0, close, 0, m.allow);
    let route = m.data!;
    const settings = wsSettings(dp, route);
    if (settings === null) {
      req.setYield(true); // websocket: false: proxied as plain HTTP
      return;
    }

    const clientIp = this.remoteAddress(res);
    const policies = route.policies;
    let policyHeaders: string[] | null = null;
    let policyLines = '';
    let pending: PendingDecision | null = null;
    /** The API key the route's auth admitted (a pending decision brings its own): the tunnel closes when it stops working. */
    let credential: WsCredential | null = null;
    // The client's offer (uWS: the first Sec-WebSocket-Protocol line). An auth route may read its key in it
    // (identity.keys.sources `subprotocol:<prefix>`); what goes upstream is offerUpstream()'s, below.
    const offered = parseProtocols(protocolHeader);
    if (policies !== null) {
      const ctx = pctx;
      let verdict: number;
      upgradeOffer.protocols = offered;
      try {
        verdict = ctx.run(policies, t0 + this.opts.clockOffset, route.id, route.slot, 'GET', clientIp, hXff, hdrs, query);
        credential = upgradeOffer.credential;
      } finally {
        upgradeOffer.protocols = null;
        upgradeOffer.credential = null;
      }
      this.currentConsumer = ctx.consumerId;
      if (verdict === REFUSED) {
        return this.rejectUpgrade(res, ctx.refusal!, requestId, mIdx, false, t0, close, route.slot, null, ctx.refusalHeaders.slice(), ctx.refusalMessage);
      }
      if (ctx.responseHeaders.length !== 0) policyHeaders = ctx.responseHeaders.slice();
      policyLines = ctx.requestLines;
      pending = ctx.pending;
      this.pendingDecision = pending;
    }

    const upstreamPath = route.rewrite !== null ? route.rewrite(path, m.paramNames, m.params) : route.forwardOriginalPath ? url : path;
    if (route.split !== null) route = route.split.choose(hdrs, clientIp, path);
    const upstream = route.upstream;
    const guard = upstream.guard;
    let pool: TargetPool;
    let probe = false;
    if (guard === null) {
      pool = upstream.pick(clientIp, hdrs, path);
    } else {
      const admitted = upstream.admit(clientIp, t0 + this.opts.clockOffset, hdrs, path);
      if (admitted === null) {
        this.refusedUpstream = upstream.name;
        this.countUpgradeFailure(guard.refusal.code);
        return this.refuseUpstream(res, guard, requestId, mIdx, false, t0, close, route.slot);
      }
      pool = admitted;
      probe = guard.probe;
      this.admittedGuard = guard;
      this.admittedPool = pool;
      this.admittedProbe = probe;
    }
    if (upstream.setCookie !== null) (policyHeaders ??= []).push('set-cookie', upstream.setCookie);
    const hostLine = route.preserveHost ? hHost : pool.hostHeader;
    const fq = route.stripQuery === null || query === '' ? query : stripQueryParams(query, route.stripQuery);
    // The handshake's head, built by the HTTP rules (handle()); ws writes the Sec-WebSocket-* fields itself.
    let head = 'GET ' + (fq === '' ? upstreamPath : upstreamPath + '?' + fq) + ' HTTP/1.1\r\nhost: ' + hostLine + '\r\n';
    const drop = route.requestPlan.drop;
    const listed = connectionListed(hConnection);
    for (let i = 0; i < hdrs.length; i += 2) {
      if (!handshakeDrops(hdrs[i]!, drop, listed)) head += hdrs[i] + ': ' + hdrs[i + 1] + '\r\n';
    }
    if (Buffer.byteLength(head, 'utf8') !== head.length || head.indexOf('\x7f') !== -1) {
      // The strict (node) server's values are latin1 strings already (the exact bytes), as in handle().
      const exact = this.strict ? (SAFE_HEAD.test(head) ? head : null) : exactBytes(head, req);
      if (exact === null) return this.rejectUpgradeAfterPolicies(res, Errors.BAD_REQUEST, requestId, mIdx, false, t0, close, route.slot);
      head = exact;
    }
    if (!forwardingIsPlain(hXff, hForwarded)) {
      return this.rejectUpgradeAfterPolicies(res, Errors.BAD_REQUEST, requestId, mIdx, false, t0, close, route.slot);
    }
    head += handshakeGatewayLines(dp, clientIp, hHost, hXff, hForwarded, ridHeaderName, requestId, route.requestPlan.extraLines, policyLines);
    const lineEnd = head.indexOf('\r\n');
    const headers: Record<string, string | string[]> = {};
    addLines(headers, head.slice(lineEnd + 2));
    // Never a credential entry upstream: the upstream cannot choose it, so the client never gets it back in its 101.
    const protocols = offerUpstream(policies, offered);

    const r: UpgradeRequest = {
      requestId, t0, key, protocols, extensions, target: head.slice(4, lineEnd - 9), headers,
      client: clientIp, keyAddress: settings.maxConnectionsPerKey > 0 ? wsKeyAddress(dp, clientIp, hXff) : clientIp,
      host: hHost, path: url, query, consumer: this.currentConsumer,
      userAgent: hUserAgent, referer: hReferer, policyHeaders, close, credential,
    };
    const t = new WsTunnel(this.wsHub!, res, context, route, upstream, pool, probe, settings, r);
    // The tunnel gives the admission and the decision back from here.
    this.admittedGuard = null;
    this.admittedPool = null;
    this.pendingDecision = null;
    res.onAborted(() => {
      try {
        t.onClientAborted();
      } catch (err) {
        t.crashed(err);
      }
    });
    if (pending === null) t.start();
    else {
      t.awaitDecision(pending);
      this.env.pump();
    }
  }

  /** turnpike_websocket_upgrade_failures_total{reason}: an upgrade refused before its tunnel exists (the tunnel counts its own). */
  private countUpgradeFailure(code: string): void {
    if (this.env.metricsOn) countUpgradeFailure(this.env.metrics, code);
  }

  /** reject() of an upgrade request, counted as an upgrade failure. */
  private rejectUpgrade(
    res: any, e: GatewayErrorDef, requestId: string, mIdx: number, isHead: boolean, t0: number, close: number, slot = 0,
    allow: string | null = null, extra: string[] | null = null, message: string | null = null,
  ): void {
    this.countUpgradeFailure(e.code);
    this.reject(res, e, requestId, mIdx, isHead, t0, close, slot, allow, extra, message);
  }

  /** rejectAfterPolicies() of an upgrade request, counted as an upgrade failure. */
  private rejectUpgradeAfterPolicies(res: any, e: GatewayErrorDef, requestId: string, mIdx: number, isHead: boolean, t0: number, close: number, slot: number): void {
    this.countUpgradeFailure(e.code);
    this.rejectAfterPolicies(res, e, requestId, mIdx, isHead, t0, close, slot);
  }

  /**
   * A request the strict server's parser refused (node backend,
   * workers/transport/node/request-parser.ts: 400 bad_request / bad_host,
   * 414, 431, 505 version_not_supported for a major version other than 1):
   * answered as every gateway error, counted and logged. No handler runs.
   * `close` false (a complete, well-framed head: the server goes on with
   * the connection, as uWS does after an early answer): answered at once,
   * with the request's method and target in the log; else the connection
   * closes after the answer and the method and target may be unknown ('').
   */
  private onParseError(res: any, code: string, close = true, method = '', target = ''): void {
    const e = code === 'url_too_long' ? Errors.URL_TOO_LONG
      : code === 'headers_too_large' ? Errors.HEADERS_TOO_LARGE
      : code === 'bad_host' ? Errors.BAD_HOST
      : code === 'version_not_supported' ? Errors.VERSION_NOT_SUPPORTED
      : Errors.BAD_REQUEST;
    resetScratch();
    const q = target.indexOf('?');
    this.currentMethod = method;
    this.currentUrl = q === -1 ? target : target.slice(0, q);
    this.currentQuery = q === -1 ? '' : target.slice(q + 1);
    this.currentConsumer = '';
    const requestId = this.nextRequestId();
    // The server saw whether it was a HEAD (answered without a body).
    const isHead = res.isHead === true;
    this.pendingId = requestId;
    this.pendingMethod = isHead ? HEAD_INDEX : methodIndex(method);
    try {
      this.reject(res, e, requestId, this.pendingMethod, isHead, performance.now(), close ? CLOSE_ENFORCE : CLOSE_NONE);
    } catch (err) {
      this.internalError(res, err);
    }
  }

  /** A pending decision not yet handed to its exchange: a refusal (or a throw) before that must cancel it. */
  private pendingDecision: PendingDecision | null = null;

  /** reject() for a refusal after the policies ran: a decision they left pending gives back what it took, and so does an upstream admission. */
  private rejectAfterPolicies(res: any, e: GatewayErrorDef, requestId: string, mIdx: number, isHead: boolean, t0: number, close: number, slot: number): void {
    const p = this.pendingDecision;
    if (p !== null) {
      this.pendingDecision = null;
      p.cancel();
    }
    this.releaseAdmission(e.code);
    this.reject(res, e, requestId, mIdx, isHead, t0, close, slot);
  }

  /**
   * `OPTIONS *` (RFC 9110 9.3.7: a request about the server itself, not a
   * resource): 200 with `Allow` (SERVER_ALLOW: the methods the gateway
   * proxies; each route may allow fewer, which an OPTIONS to its path shows
   * with 405 and its own Allow) and no body (Content-Length: 0). Counted and
   * access-logged as a request without a route.
   */
  private serverOptions(res: any, requestId: string, mIdx: number, t0: number, close: number): void {
    const logs = this.opts.logs;
    const client = logs.access !== null ? this.remoteAddress(res) : '';
    res.writeStatus('200 OK').writeHeader(ridHeaderName, requestId).writeHeader('allow', SERVER_ALLOW);
    if (gatewayHsts !== null) res.writeHeader('strict-transport-security', gatewayHsts);
    res.end('', close !== CLOSE_NONE);
    const access = logs.access;
    if (access !== null) {
      resetEntry();
      const a = entry;
      a.t0 = t0;
      a.requestId = requestId;
      a.client = client;
      a.method = this.currentMethod;
      a.host = hHost;
      a.path = this.currentUrl;
      a.query = this.currentQuery;
      a.status = 200;
      a.bytesSent = 0;
      a.durationMs = performance.now() - t0;
      a.userAgent = hUserAgent;
      a.referer = hReferer;
      access.write();
    }
    if (!this.env.metricsOn) return;
    recordRequest(this.env.metrics, this.env.latency, 0, mIdx, 200, performance.now() - t0);
    recordSizes(this.env.metrics, 0, 0, 0);
  }

  /** An upstream admission (guard.ts) not yet handed to its exchange: a refusal (or a throw) before that gives it back, with no verdict. */
  private admittedGuard: UpstreamGuard | null = null;
  private admittedPool: TargetPool | null = null;
  private admittedProbe = false;

  private releaseAdmission(code: string): void {
    const g = this.admittedGuard;
    if (g === null) return;
    const pool = this.admittedPool!;
    this.admittedGuard = null;
    this.admittedPool = null;
    g.finish(pool, this.admittedProbe, code, 0, -1, coarse.now);
  }

  /**
   * The upstream refused the request (guard.ts: upstream_overloaded,
   * circuit_open, no_healthy_upstream): answered as every gateway error,
   * or with the breaker's fallback for circuit_open when one is set.
   */
  private refuseUpstream(res: any, guard: UpstreamGuard, requestId: string, mIdx: number, isHead: boolean, t0: number, close: number, slot: number): void {
    const p = this.pendingDecision;
    if (p !== null) {
      this.pendingDecision = null;
      p.cancel();
    }
    const e = guard.refusal;
    const fb = guard.fallback;
    if (fb === null || e !== Errors.CIRCUIT_OPEN) {
      this.reject(res, e, requestId, mIdx, isHead, t0, close, slot);
      this.refusedUpstream = '';
      return;
    }
    // The fallback's exact bytes, counted and logged as circuit_open with the fallback's status.
    const logs = this.opts.logs;
    const client = logs.access !== null ? this.remoteAddress(res) : '';
    if (close === CLOSE_NONE) {
      writeFallback(res, fb, ridHeaderName, requestId, isHead, CLOSE_NONE, false);
    } else {
      // After the handler returns, as every answer that closes (answerAfterHandler).
      const a = { aborted: false };
      res.onAborted(() => { a.aborted = true; });
      setImmediate(() => {
        if (a.aborted) return;
        try {
          res.cork(() => writeFallback(res, fb, ridHeaderName, requestId, isHead, close, true));
        } catch (err) {
          log('error', 'internal error while answering; the connection is dropped', { requestId, error: String(err) });
        }
      });
    }
    const bytes = isHead ? 0 : fb.body.length;
    if (logs.access !== null || fb.status >= 500) this.logReject(client, fb.def, requestId, t0, slot, bytes);
    this.refusedUpstream = ''; // not logged (a fallback under 500 with the access log off): not for the next answer
    if (!this.env.metricsOn) return;
    countError(this.env.metrics, e.code);
    recordRequest(this.env.metrics, this.env.latency, slot, mIdx, fb.status, performance.now() - t0);
    recordSizes(this.env.metrics, slot, 0, bytes);
  }

  /** The exchange the handler is starting, the request id it gave out and the method's index: what a throw must clean up. */
  private pendingEx: Exchange | null = null;
  private pendingId = '';
  private pendingMethod = 0;
  /** The request being handled, for the access log of an early answer. */
  private currentMethod = '';
  private currentUrl = '';
  private currentQuery = '';
  /** The consumer the route's auth found, once the policies ran ('' before, or none). */
  private currentConsumer = '';

  /**
   * TURNPIKE_TEST_HOOKS=1 only: `x-turnpike-test-throw: handler` throws here;
   * `x-turnpike-test-block: <ms>` blocks this worker's event loop that long
   * (a stand-in for a runaway computation: /health must say `stalled`).
   */
  private testHooks(req: any): void {
    if (req.getHeader(TEST_THROW_HEADER) === 'handler') throw new Error('internal error requested by test hook');
    const block = Number(req.getHeader('x-turnpike-test-block') || 0);
    if (block > 0) {
      const until = Date.now() + Math.min(block, 30_000);
      while (Date.now() < until) { /* blocked on purpose */ }
    }
  }

  private acceptHost(h: string): boolean {
    if (!isValidHost(h)) return false;
    lastValidHost = h;
    return true;
  }

  private internalError(res: any, err: unknown): void {
    const ex = this.pendingEx;
    this.pendingEx = null;
    try {
      this.releaseAdmission('internal_error');
    } catch { /* giving back is best effort on a path that already failed */ }
    const p = this.pendingDecision;
    this.pendingDecision = null;
    if (p !== null) {
      try {
        p.cancel();
      } catch { /* giving back is best effort on a path that already failed */ }
    }
    log('error', 'internal error in the request handler; answered 500', {
      requestId: this.pendingId, error: err instanceof Error ? err.stack ?? err.message : String(err),
    });
    try {
      if (ex !== null) ex.internalError();
      else this.reject(res, Errors.INTERNAL, this.pendingId, this.pendingMethod, this.pendingMethod === HEAD_INDEX, performance.now(), CLOSE_ENFORCE);
    } catch {
      // The response was already ended (or the client is gone): nothing to answer.
    }
  }

  private remoteAddress(res: any): string {
    if (this.strict) return res.remoteAddressText() as string;
    return formatAddress(new Uint8Array(res.getRemoteAddress() as ArrayBuffer));
  }

  private closing: ClosingAnswer[] = [];
  private closingScheduled = false;

  /**
   * An answer after which the connection must close is written once the
   * handler has returned (in one setImmediate per loop turn): inside the
   * handler uWS would go on to serve a request pipelined behind this one
   * and keep the connection (uws-respond.ts) -- after bad framing, the
   * request smuggling this answer is there to stop. Written later, a request
   * already pipelined makes uWS close the connection instead.
   */
  private answerAfterHandler(
    res: any, e: GatewayErrorDef, requestId: string, isHead: boolean, close: number, allow: string | null, extra: string[] | null, message: string | null,
  ): void {
    const a: ClosingAnswer = { res, e, ridHeader: ridHeaderName, requestId, isHead, close, allow, extra, message, aborted: false };
    res.onAborted(() => { a.aborted = true; });
    this.closing.push(a);
    if (!this.closingScheduled) {
      this.closingScheduled = true;
      setImmediate(this.flushClosing);
    }
  }

  private readonly flushClosing = (): void => {
    this.closingScheduled = false;
    const list = this.closing;
    this.closing = [];
    for (const a of list) {
      if (a.aborted) continue;
      try {
        a.res.cork(() => writeGatewayError(a.res, a.e, a.ridHeader, a.requestId, a.isHead, a.close, true, a.allow, a.extra, a.message));
      } catch (err) {
        log('error', 'internal error while answering; the connection is dropped', { requestId: a.requestId, error: String(err) });
      }
    }
  };

  /**
   * server.healthPath, for external load balancers: 200 while serving, 503
   * as soon as the engine drains (drainDelayMs: the listeners still accept
   * meanwhile, so the load balancer takes the node out first). Not routed,
   * not logged, not counted: a health check every second would drown the
   * request metrics.
   */
  private health(res: any, method: string, isHead: boolean): void {
    if (method !== 'GET' && !isHead) {
      writeJson(res, '405 Method Not Allowed', '{"status":"method not allowed: use GET or HEAD"}', false, 'GET, HEAD');
      return;
    }
    const draining = Atomics.load(this.opts.control, C_DRAINING) === 1;
    writeJson(res, draining ? '503 Service Unavailable' : '200 OK', draining ? HEALTH_DRAINING : HEALTH_OK, isHead, null);
  }

  /** The upstream whose guard refused the request being answered (refuseUpstream), for its log lines; '' otherwise. */
  private refusedUpstream = '';

  /** Access log line (and, for a 5xx, an error log line) of a request the gateway answered itself; `bytes`: its body bytes. */
  private logReject(client: string, e: GatewayErrorDef, requestId: string, t0: number, slot: number, bytes: number): void {
    const logs = this.opts.logs;
    const route = slot === 0 ? '' : (this.dp.routes.find((r) => r.slot === slot)?.id ?? '');
    const upstream = this.refusedUpstream;
    this.refusedUpstream = '';
    if (e.status >= 500 && e !== Errors.INTERNAL) {
      logs.errors.report({ requestId, route, upstream, target: '', phase: 'gateway', code: e.code, status: e.status, detail: '' }, coarse.now);
    }
    const access = logs.access;
    if (access === null) return;
    resetEntry();
    const a = entry;
    a.t0 = t0;
    a.requestId = requestId;
    a.client = client;
    a.method = this.currentMethod;
    a.host = hHost;
    a.path = this.currentUrl;
    a.query = this.currentQuery;
    a.status = e.status;
    a.bytesSent = bytes;
    a.durationMs = performance.now() - t0;
    a.route = route;
    a.upstream = upstream;
    a.error = e.code;
    a.consumer = this.currentConsumer;
    a.userAgent = hUserAgent;
    a.referer = hReferer;
    access.write();
  }

  /** Answers a gateway error (inside the uWS handler, or just after it when it must close) and counts it. */
  private reject(
    res: any, e: GatewayErrorDef, requestId: string, mIdx: number, isHead: boolean, t0: number, close: number, slot = 0,
    allow: string | null = null, extra: string[] | null = null, message: string | null = null,
  ): void {
    const logs = this.opts.logs;
    // The client address must be read before the response ends (res is dead after).
    const client = logs.access !== null ? this.remoteAddress(res) : '';
    let bytes: number;
    if (close === CLOSE_NONE) {
      bytes = writeGatewayError(res, e, ridHeaderName, requestId, isHead, CLOSE_NONE, false, allow, extra, message);
    } else {
      this.answerAfterHandler(res, e, requestId, isHead, close, allow, extra, message);
      bytes = gatewayErrorBytes(e, requestId, isHead, message);
    }
    if (logs.access !== null || e.status >= 500) this.logReject(client, e, requestId, t0, slot, bytes);
    if (!this.env.metricsOn) return;
    countError(this.env.metrics, e.code);
    recordRequest(this.env.metrics, this.env.latency, slot, mIdx, e.status, performance.now() - t0);
    // The body was not read (0 received); the answer's body was sent.
    recordSizes(this.env.metrics, slot, 0, bytes);
  }
}

/** An answer that must close, waiting for the handler to return (see answerAfterHandler). */
interface ClosingAnswer {
  res: any;
  e: GatewayErrorDef;
  ridHeader: string;
  requestId: string;
  isHead: boolean;
  close: number;
  allow: string | null;
  extra: string[] | null;
  message: string | null;
  aborted: boolean;
}

/**
 * Slow path of the upstream head (it holds a character beyond ASCII, or
 * DEL): the head as latin1 bytes equal to what the client sent, or null
 * when that cannot be known (the request is then refused with 400).
 *
 * uWS's forEach decodes header values as UTF-8, invalid sequences becoming
 * U+FFFD; getQuery does the same. Valid UTF-8 is re-encoded to its exact
 * bytes. A value holding U+FFFD was not valid UTF-8 (latin1 text, say): its
 * exact bytes come from req.getHeader, which decodes as latin1, when the
 * name occurs once; otherwise (and for the query, which has no exact
 * accessor) the bytes are lost and the request is refused. DEL is refused
 * anywhere (RFC 9110 5.5: not a field-value character).
 */
function exactBytes(head: string, req: any): string | null {
  if (head.indexOf('\x7f') !== -1) return null;
  let out: string;
  if (head.indexOf('\ufffd') === -1) {
    out = Buffer.from(head, 'utf8').toString('latin1');
  } else {
    // Lines holding U+FFFD: header lines can be recovered, the request line
    // (the query) cannot. Every other line, the request line included, is
    // re-encoded: a char left as UTF-16 would be cut to its low byte by the
    // latin1 write (U+010D U+010A -> CR LF: a header or request injected).
    const lines = head.split('\r\n');
    if (lines[0]!.includes('\ufffd')) return null;
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!;
      if (!line.includes('\ufffd')) {
        lines[i] = Buffer.from(line, 'utf8').toString('latin1');
        continue;
      }
      const name = line.slice(0, line.indexOf(':'));
      let count = 0;
      for (let k = 0; k < hdrs.length; k += 2) if (hdrs[k] === name) count++;
      if (count !== 1) return null;
      lines[i] = name + ': ' + (req.getHeader(name) as string);
    }
    out = lines.join('\r\n');
  }
  // Whatever happened above, the head goes out as latin1: one char per byte,
  // and no CR, LF or NUL but the line ends. Refuse anything else.
  return SAFE_HEAD.test(out) ? out : null;
}

/** Lines of tab, printable latin1 and obs-text, each ended by CRLF. */
const SAFE_HEAD = /^(?:[\t\x20-\x7e\x80-\xff]*\r\n)*$/;
