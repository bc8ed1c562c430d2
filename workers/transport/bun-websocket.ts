/**
 * WebSocket proxying on the Bun backend (`server.backend: bun`): the shared
 * tunnel (websocket/tunnel.ts, WsHub and WsTunnel: limits, pings, relay,
 * close codes, metrics, access log) driven over Bun.serve, by an adapter
 * that gives the tunnel the part of the uWS API it uses, as node/websocket.ts
 * does for the node backend:
 *
 *   res (the handshake's answer, BunUpgradeResponse): cork, writeStatus,
 *        writeHeader, end(body, close), endWithoutBody(), onAborted, and
 *        upgrade(userData, key, protocol, extensions, context), which calls
 *        Bun's server.upgrade(req, { data, headers }); the fetch handler's
 *        Promise resolves then (the 101 goes out only after the upstream
 *        accepted), or with the refusal's Response.
 *   ws  (the client, BunClientSocket over Bun's ServerWebSocket): send(data,
 *        isBinary, compress) -> 0 backpressure / 1 success / 2 dropped,
 *        getBufferedAmount, end(code?, reason?), close (drop the socket),
 *        ping, cork, getUserData.
 *   behavior: Bun.serve's `websocket` handlers (open, message, drain, pong,
 *        close) call WsHub.behavior()'s with the BunClientSocket.
 *
 * The routing, checks and policies of a handshake are bun-server.ts
 * handle()'s for a GET (they mirror uws-server.ts upgrade()); what is
 * WebSocket-only is here: open() builds the upstream handshake's headers
 * by the rules of uws-server.ts upgrade() (both through
 * websocket/handshake-head.ts; Bun's fields go straight into the header
 * map, uWS's through a head string checked byte for byte) and starts the
 * WsTunnel.
 *
 * Measured on Bun 1.4.5 (probes with raw sockets and `ws` clients) and what
 * this file does about it:
 *  - server.upgrade() runs the `open` handler synchronously, also from a
 *    fetch handler's pending Promise, as uWS's res.upgrade does: the tunnel's
 *    "did the client open" check holds unchanged;
 *  - server.upgrade() answers a Sec-WebSocket-Key that is not base64 of 16
 *    bytes with 400 and returns false: such a request is not a handshake
 *    here (bun-server.ts checks WS_KEY first, as the node backend does) and
 *    is proxied as plain HTTP, as uWS does with a key not 24 characters long;
 *  - when the 101 headers name no subprotocol, Bun picks the client's first
 *    offered one itself. The tunnel's upstream client (`ws`) fails a
 *    handshake in which the client offered protocols and the upstream chose
 *    none, so the 101 always names the upstream's choice when there is one
 *    to name; a credential entry (an auth route's `subprotocol:` key source)
 *    is taken out of the request's own offer too, so that Bun never picks it;
 *  - req.signal aborts when the client leaves while its answer is pending
 *    (uWS onAborted), but also when an upgraded connection ends: the
 *    listener is removed at the upgrade;
 *  - text messages reach `message` as strings (encoded here once, into the
 *    ArrayBuffer the tunnel reads), binary ones as ArrayBuffers
 *    (binaryType set at open); Bun's buffers stay valid after the callback;
 *  - ws.close() without a code sends a Close frame the client reads as 1000
 *    (uWS's end() without a code: 1005 at the client);
 *  - permessage-deflate (RFC 7692) is one server-wide switch on Bun, with
 *    no per-connection choice at upgrade time: it is on (Bun's shared
 *    compressor: no context takeover either way, as uWS's
 *    SHARED_COMPRESSOR), and a route without `compression: true` deletes
 *    the request's Sec-WebSocket-Extensions before server.upgrade(), so Bun
 *    negotiates it only where the route asks (measured, 1.4.5: Bun reads the
 *    offer from the Request it is given).
 */
import { Errors, errorBody } from '../../common/errors.js';
import type { RouteWebSocket } from '../../common/config/types.js';
import type { Dataplane, RouteContext } from '../dataplane.js';
import type { UpstreamRuntime } from '../proxy/balancer.js';
import type { TargetPool } from '../proxy/upstream-pool.js';
import { TimerList } from '../proxy/timers.js';
import type { PendingDecision } from '../pipeline/context.js';
import type { WsCredential } from '../policies/auth/credential.js';
import { offerUpstream, parseProtocols } from '../policies/auth/index.js';
import type { ServerOptions } from './backend.js';
import type { ExchangeEnv } from './uws-exchange.js';
import { CLOSE_ENFORCE, CLOSE_NONE } from './uws-respond.js';
import { WsHub, WsTunnel, addHeader, addLines, countUpgradeFailure, type UpgradeRequest } from './websocket/tunnel.js';
import { uwsPayloadCap, wsKeyAddress } from './websocket/settings.js';
import { forwardingIsPlain, handshakeDrops, handshakeGatewayLines } from './websocket/handshake-head.js';

/** uWS send() results, as the tunnel reads them. */
const SEND_BACKPRESSURE = 0;
const SEND_SUCCESS = 1;
const SEND_DROPPED = 2;
/** Bun's ServerWebSocket readyState OPEN. */
const BUN_WS_OPEN = 1;

/**
 * A Sec-WebSocket-Key Bun's server.upgrade accepts: base64 of 16 bytes
 * (RFC 6455 4.1); the same rule as node/websocket.ts WS_KEY.
 */
export const BUN_WS_KEY = /^[+/0-9A-Za-z]{22}==$/;

const encoder = new TextEncoder();
const EMPTY_AB = new ArrayBuffer(0);

/** A header value for Bun (which writes a string's chars as latin1 bytes): config text as its UTF-8 bytes, bytes as they are. */
function latin1Value(v: string | Uint8Array): string {
  if (typeof v !== 'string') return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('latin1');
  for (let i = 0; i < v.length; i++) if (v.charCodeAt(i) > 0x7f) return Buffer.from(v, 'utf8').toString('latin1');
  return v;
}

/** What the gateway uses of Bun's ServerWebSocket. */
interface BunServerWebSocket {
  data: BunClientSocket;
  readonly readyState: number;
  binaryType: string;
  sendText(data: string, compress?: boolean): number;
  sendBinary(data: Uint8Array, compress?: boolean): number;
  getBufferedAmount(): number;
  close(code?: number, reason?: string): void;
  terminate(): void;
  ping(data?: string | Uint8Array): number;
  cork<T>(fn: (ws: BunServerWebSocket) => T): T;
}

/**
 * The client WebSocket as the tunnel sees it (uWS's WebSocket API) over
 * Bun's ServerWebSocket; Bun's `data` of the connection. Made at the
 * upgrade, its socket set by the `open` handler (inside server.upgrade).
 */
export class BunClientSocket {
  ws: BunServerWebSocket | null = null;
  /** Whether Bun copies a sent Uint8Array before sendBinary returns is not documented: the tunnel copies what is only lent to it. */
  readonly keepsSentData = true;

  constructor(private readonly userData: unknown) {}

  getUserData(): unknown {
    return this.userData;
  }

  /** uWS send: 0 backpressure (queued), 1 sent, 2 dropped (over Bun's backpressureLimit). Text is UTF-8 (ws validated it). */
  send(data: Buffer, isBinary: boolean, compress: boolean): number {
    const ws = this.ws;
    if (ws === null) return SEND_SUCCESS;
    const r = isBinary ? ws.sendBinary(data, compress) : ws.sendText(data.toString('utf8'), compress);
    if (r > 0) return SEND_SUCCESS;
    if (r === -1) return SEND_BACKPRESSURE;
    // 0: dropped, or the socket is closing (its close handler follows: nothing to report here).
    return ws.readyState === BUN_WS_OPEN ? SEND_DROPPED : SEND_SUCCESS;
  }

  getBufferedAmount(): number {
    return this.ws === null ? 0 : this.ws.getBufferedAmount();
  }

  /** uWS end: a Close frame (`code` absent: without a code; Bun's client reads 1000), then the close handler. */
  end(code?: number, reason?: Buffer | string): void {
    const ws = this.ws;
    if (ws === null) return;
    if (code === undefined) ws.close();
    else ws.close(code, reason === undefined ? undefined : typeof reason === 'string' ? reason : reason.toString('utf8'));
  }

  /** uWS close: the connection is dropped without a Close frame. */
  close(): void {
    this.ws?.terminate();
  }

  ping(): void {
    this.ws?.ping();
  }

  cork(fn: () => void): void {
    if (this.ws === null) fn();
    else this.ws.cork(fn);
  }
}

/**
 * The answer to one handshake, as the tunnel writes it (uWS's HttpResponse
 * surface): a gateway error or the upstream's refusal becomes the Response
 * the fetch handler's Promise resolves with; upgrade() makes Bun switch the
 * connection (101) and resolves it with undefined.
 */
export class BunUpgradeResponse {
  private status = 200;
  private readonly headers = new Headers();
  private settled = false;
  private aborted: (() => void) | null = null;
  private readonly onAbort = (): void => {
    const fn = this.aborted;
    this.aborted = null;
    if (this.settled) return;
    this.settled = true;
    if (fn !== null) fn();
    // Nobody reads it (the client is gone): it only lets the fetch handler's Promise go.
    this.resolve(new Response(null, { status: 499 }));
  };

  constructor(
    private readonly req: Request,
    private readonly server: any,
    private readonly resolve: (r: Response | undefined) => void,
    private readonly requestId: string,
    private readonly ridHeader: string,
  ) {}

  cork(fn: () => void): void {
    fn();
  }

  writeStatus(line: string): this {
    this.status = parseInt(line, 10);
    return this;
  }

  writeHeader(name: string, value: string | Uint8Array): this {
    this.headers.append(name, latin1Value(value));
    return this;
  }

  /** uWS end(body, closeConnection). */
  end(body?: string | Uint8Array, closeConnection?: boolean): void {
    if (closeConnection === true) this.headers.set('connection', 'close');
    this.answer(body === undefined ? '' : body);
  }

  /** uWS endWithoutBody(): the tunnel uses it only for a refusal that has no body (1xx, 204, 304), never with a length. */
  endWithoutBody(contentLength?: number, closeConnection?: boolean): void {
    if (contentLength !== undefined) this.headers.set('content-length', String(contentLength));
    if (closeConnection === true) this.headers.set('connection', 'close');
    this.answer(null);
  }

  /** uWS onAborted: the client left before its answer (req.signal). */
  onAborted(fn: () => void): this {
    this.aborted = fn;
    this.req.signal.addEventListener('abort', this.onAbort, { once: true });
    return this;
  }

  /**
   * uWS upgrade: Bun writes the 101 (Sec-WebSocket-Accept; the subprotocol
   * and the headers written before it) and calls `open` before this returns.
   * `extensions` is unused: Bun negotiates from the request's own offer (see the module comment).
   */
  upgrade(userData: unknown, _key: string, protocol: string, _extensions: string, _context: unknown): void {
    if (this.settled) return;
    this.settled = true;
    this.req.signal.removeEventListener('abort', this.onAbort);
    if (protocol !== '') this.headers.set('sec-websocket-protocol', protocol);
    const client = new BunClientSocket(userData);
    if (this.server.upgrade(this.req, { data: client, headers: this.headers })) {
      this.resolve(undefined);
      return;
    }
    // Bun refused the switch after the upstream accepted (the client is gone, or a request Bun's own checks refuse):
    // the tunnel sees no open and closes its upstream side.
    const h = new Headers({ 'content-type': 'application/json', connection: 'close' });
    h.set(this.ridHeader, this.requestId);
    this.resolve(new Response(errorBody(Errors.BAD_REQUEST, this.requestId), { status: 400, headers: h }));
  }

  private answer(body: string | Uint8Array | null): void {
    if (this.settled) return;
    this.settled = true;
    this.req.signal.removeEventListener('abort', this.onAbort);
    // Bun builds no Response with a 1xx status: such a refusal (never seen in practice) becomes 502.
    let status = this.status;
    if (status < 200 || status > 599) {
      status = 502;
      body = errorBody(Errors.UPSTREAM_BAD_RESPONSE, this.requestId);
      this.headers.set('content-type', 'application/json');
    }
    this.resolve(new Response(body, { status, headers: this.headers }));
  }
}

/** What bun-server.ts handle() knows of a handshake when it hands it over (routed, policies run, target admitted). */
export interface BunHandshake {
  dp: Dataplane;
  req: Request;
  server: any;
  t0: number;
  requestId: string;
  route: RouteContext;
  upstream: UpstreamRuntime;
  pool: TargetPool;
  probe: boolean;
  settings: RouteWebSocket;
  /** The request's headers, [name, value, ...] lowercase names, latin1 values (Bun joins repeated lines with ", "). */
  flat: string[];
  /** The names the request's Connection lists (hop-by-hop too). */
  listed: Set<string> | null;
  host: string;
  clientIp: string;
  xff: string | null;
  forwarded: string | null;
  /** The upstream request target: path and query. */
  target: string;
  path: string;
  query: string;
  consumer: string;
  policyHeaders: string[] | null;
  policyLines: string;
  pending: PendingDecision | null;
  /** Whether a refusal closes the connection (the client asked to). */
  close: boolean;
  /** The API key the route's auth admitted (UpgradeRequest.credential), or null (none, or a pending decision brings it). */
  credential: WsCredential | null;
}

/**
 * A worker's WebSocket side on Bun: the WsHub, Bun.serve's `websocket`
 * option (handlers), and the start of a tunnel (open).
 */
export class BunWebSockets {
  readonly hub: WsHub;
  readonly env: ExchangeEnv;
  /** Bun.serve's `websocket` option. */
  readonly handlers: Record<string, unknown>;

  constructor(dp: Dataplane, private readonly opts: ServerOptions) {
    this.env = {
      logs: opts.logs,
      metrics: opts.metrics,
      metricsOn: dp.config.metrics.enabled,
      latency: dp.config.metrics.enabled ? opts.latency : null,
      timers: new TimerList(),
      requestIdHeader: dp.config.server.requestIdHeader,
      // Bun runs process.nextTick callbacks after its own callbacks: nothing to pump.
      pump: () => {},
    };
    const cap = uwsPayloadCap(dp);
    this.hub = new WsHub(this.env, cap);
    const b = this.hub.behavior(() => {}, 0) as {
      open: (ws: BunClientSocket) => void;
      message: (ws: BunClientSocket, ab: ArrayBuffer, isBinary: boolean) => void;
      drain: (ws: BunClientSocket) => void;
      pong: (ws: BunClientSocket) => void;
      close: (ws: BunClientSocket, code: number, message: ArrayBuffer) => void;
      maxBackpressure: number;
    };
    this.handlers = {
      // As uWS's behavior: the hub's own idle and ping handling, a payload cap of 2 x the largest maxMessageBytes,
      // a backpressure limit far above what the tunnels let build up (HIGH_WATER).
      maxPayloadLength: cap,
      idleTimeout: 0,
      sendPings: false,
      backpressureLimit: b.maxBackpressure,
      closeOnBackpressureLimit: false,
      // Negotiated only on compression routes: open() deletes the offer elsewhere.
      perMessageDeflate: true,
      publishToSelf: false,
      open: (ws: BunServerWebSocket) => {
        const c = ws.data;
        c.ws = ws;
        ws.binaryType = 'arraybuffer';
        b.open(c);
      },
      message: (ws: BunServerWebSocket, m: string | ArrayBuffer) => {
        if (typeof m === 'string') b.message(ws.data, m.length === 0 ? EMPTY_AB : (encoder.encode(m).buffer as ArrayBuffer), false);
        else b.message(ws.data, m, true);
      },
      drain: (ws: BunServerWebSocket) => b.drain(ws.data),
      pong: (ws: BunServerWebSocket) => b.pong(ws.data),
      close: (ws: BunServerWebSocket, code: number, reason: string) => {
        const c = ws.data;
        b.close(c, code, reason === '' ? EMPTY_AB : (encoder.encode(reason).buffer as ArrayBuffer));
        c.ws = null;
      },
    };
  }

  /** A new config: metrics switch, request id header, and the connections of changed routes drained (WsHub.reload). */
  setDataplane(old: Dataplane, dp: Dataplane): void {
    this.env.metricsOn = dp.config.metrics.enabled;
    this.env.latency = dp.config.metrics.enabled ? this.opts.latency : null;
    this.env.requestIdHeader = dp.config.server.requestIdHeader;
    if (old !== dp) this.hub.reload(old.config.routes, dp.config.routes);
  }

  /** turnpike_websocket_upgrade_failures_total{reason}: a handshake refused before its tunnel exists. */
  countFailure(code: string): void {
    if (this.env.metricsOn) countUpgradeFailure(this.env.metrics, code);
  }

  /** The worker closes: 1001 both ways, handshakes in progress 503 shutting_down. */
  closeAll(): void {
    this.hub.closeAll();
  }

  /**
   * Starts the tunnel of a handshake bun-server.ts routed and admitted: the
   * upstream handshake's headers by the HTTP proxy's rules, as uws-server.ts
   * upgrade() builds them (websocket/handshake-head.ts: host, the client's
   * fields but hop-by-hop, proxy-*, Sec-WebSocket-* and the plan's drops,
   * the forwarding fields, the request id, the plan's and policies' lines),
   * then the upstream WebSocket; the client's 101 or refusal resolves the
   * returned Promise. Returns null (nothing started; the caller answers 400
   * bad_request, as uWS does) for an X-Forwarded-For or Forwarded value
   * that is not plain ASCII.
   */
  open(x: BunHandshake): Promise<Response | undefined> | null {
    if (!forwardingIsPlain(x.xff, x.forwarded)) return null;
    const ridHeader = x.dp.config.server.requestIdHeader;
    const route = x.route;
    const clientIp = x.clientIp;
    const headers: Record<string, string | string[]> = {};
    addHeader(headers, 'host', route.preserveHost ? x.host : x.pool.hostHeader);
    const drop = route.requestPlan.drop;
    const listed = x.listed;
    const flat = x.flat;
    // The client's values as Bun gives them (addHeader: never trimmed, as a head line parsed by addLines would be).
    for (let i = 0; i < flat.length; i += 2) {
      if (!handshakeDrops(flat[i]!, drop, listed)) addHeader(headers, flat[i]!, flat[i + 1]!);
    }
    // The gateway's lines, parsed: their values are plain ASCII (forwardingIsPlain) with no control character
    // (Bun refuses one in a field with 400) and without white space at either end, so addLines keeps them whole.
    addLines(headers, handshakeGatewayLines(x.dp, clientIp, x.host, x.xff, x.forwarded, ridHeader, x.requestId, route.requestPlan.extraLines, x.policyLines));
    const h = x.req.headers;
    const offered = parseProtocols(h.get('sec-websocket-protocol'));
    // Never a credential entry upstream (an auth route's `subprotocol:` key source). Bun answers an upgrade
    // whose 101 names no subprotocol with the client's first offered one (measured, 1.4.5): the request's
    // offer is cut to what the upstream was offered, so that it can never be a credential.
    const protocols = offerUpstream(route.policies, offered);
    // permessage-deflate only where the route asks for it (Bun negotiates whatever the request offers).
    if (!x.settings.compression) h.delete('sec-websocket-extensions');
    if (protocols !== offered) {
      if (protocols.length === 0) h.delete('sec-websocket-protocol');
      else h.set('sec-websocket-protocol', protocols.join(', '));
    }
    const r: UpgradeRequest = {
      requestId: x.requestId, t0: x.t0, key: h.get('sec-websocket-key') ?? '', protocols,
      extensions: h.get('sec-websocket-extensions') ?? '', target: x.target, headers,
      client: clientIp, keyAddress: x.settings.maxConnectionsPerKey > 0 ? wsKeyAddress(x.dp, clientIp, x.xff) : clientIp,
      host: x.host, path: x.path, query: x.query, consumer: x.consumer,
      userAgent: h.get('user-agent') ?? '', referer: h.get('referer') ?? '',
      policyHeaders: x.policyHeaders, close: x.close ? CLOSE_ENFORCE : CLOSE_NONE, credential: x.credential,
    };
    return new Promise<Response | undefined>((resolve) => {
      const res = new BunUpgradeResponse(x.req, x.server, resolve, x.requestId, ridHeader);
      const t = new WsTunnel(this.hub, res, null, route, x.upstream, x.pool, x.probe, x.settings, r);
      res.onAborted(() => {
        try {
          t.onClientAborted();
        } catch (err) {
          t.crashed(err);
        }
      });
      try {
        if (x.pending === null) t.start();
        else t.awaitDecision(x.pending);
      } catch (err) {
        t.crashed(err);
      }
    });
  }
}
