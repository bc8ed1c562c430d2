/**
 * WebSocket proxying on the uWS backend (issue 14): one WsTunnel per client
 * connection, from the upgrade request to the last close, and the WsHub of a
 * worker that holds them (the uWS behaviour, the sweep for pings and idle
 * connections, shutdown).
 *
 * Life of a tunnel:
 *   uws-server.ts upgrade()  reads the request, routes it and runs the route's
 *                            policies exactly as for a GET (a refusal is the
 *                            usual JSON error, never a 101), admits a target
 *   awaitDecision()          (a policy's decision still to come) wait for it
 *   start()                  open the upstream WebSocket (upstream-client.ts) to the target:
 *                            path and query as the HTTP proxy sends them,
 *                            headers filtered by the same rules,
 *                            Sec-WebSocket-Protocol offered as the client did
 *   onUpstreamOpen()         the upstream said 101: the client gets its 101
 *                            with the protocol the upstream chose (uWS
 *                            res.upgrade, corked); an upstream that refused
 *                            (any other status) has its answer passed on, one
 *                            that cannot be reached gets 502/504 JSON errors
 *   onClientMessage() / onUpstreamMessage()  relay, text and binary as they
 *                            came; messages are whole (uWS and ws reassemble
 *                            fragments) and at most maxMessageBytes
 *   close                    codes and reasons passed both ways (close-codes.ts)
 *
 * Backpressure and the memory bound per connection (README):
 *  - toward the client: when uWS holds more than HIGH_WATER bytes for the
 *    client, the upstream socket is paused (no more reads) until
 *    uWS's drain brings it under LOW_WATER. What the gateway holds for a
 *    client is therefore at most HIGH_WATER + maxMessageBytes + one socket
 *    read (64 KiB): the read in progress is relayed whole.
 *  - toward the upstream: where the client side can stop reading (the node
 *    backend's WebSocket: pause/resume), a message that takes the upstream
 *    socket's unsent bytes over HIGH_WATER pauses the client's reads until
 *    it is written out with less than LOW_WATER behind it (its send
 *    callback); the gateway then holds at most HIGH_WATER + maxMessageBytes
 *    + one read. This uWS build (20.30) cannot pause a WebSocket's reads (no
 *    WebSocket.pause), so there a client that sends faster than the upstream
 *    reads is closed with 1013 (try again later; the upstream gets 1001)
 *    once the upstream socket holds more than HIGH_WATER + maxMessageBytes
 *    unsent bytes. messagesPerSecond bounds the rate too.
 *  - a message being reassembled by uWS: at most 2 x the largest
 *    maxMessageBytes of the config the worker started with (uwsPayloadCap).
 *
 * Limits beyond the message ones: maxConnectionsPerKey is taken in start()
 * (after the policies, so a consumer found by a pending decision counts),
 * in the process's shared per-key table (common/websocket-layout.ts) and,
 * with a `redis` section, then in the count across instances
 * (cluster-count.ts: one Redis round trip, perKeyDecided), and given back
 * in finish(); over it the upgrade gets 429
 * too_many_websocket_connections and the upstream is never contacted.
 * messagesPerSecondAction `drop` skips the message instead of closing 1008.
 *
 * Reload: WsHub.reload() gives the tunnels of a removed or changed route a
 * deadline (websocket.drainMs), after which tick() closes them 1001 both
 * ways; the others keep running on the route context they began with.
 *
 * Credentials: a tunnel an API key admitted (UpgradeRequest.credential)
 * closes 1008 to the client, 1001 upstream, when that key stops working:
 * revoked, its consumer suspended, or refused by a re-check after any
 * identity change (credential-watch.ts, per distinct key), and at its
 * validity end (expiresAt, a rotated key's graceUntil) on the sweep.
 *
 * Metrics (common/metrics-layout.ts, the route slot's S_WS_* cells and
 * G_WS_UPGRADE_FAILURES, in the worker's own Float64Array): per relayed
 * message one increment and one addition, no allocation; the open gauge at
 * the client's open and close, the close column by the code the client
 * got (countClose, once), limit hits where each limit acts, upgrade
 * failures where the upgrade is refused (fail, passRefusal, onClientAborted;
 * uws-server.ts counts the refusals made before a tunnel exists).
 *
 * Pings: uWS answers a client's pings itself, upstream-client.ts the upstream's;
 * pings are not relayed. The gateway pings each side it heard nothing from
 * for pingIntervalMs, and a side that stays silent for another interval is
 * taken as lost (the other side gets 1001 / 1014). idleTimeoutMs counts only
 * messages (either way): past it both sides get 1001.
 */
import { STATUS_CODES } from 'node:http';
import { Errors, type GatewayErrorDef } from '../../../common/errors.js';
import type { RouteWebSocket } from '../../../common/config/types.js';
import { log } from '../../../common/log.js';
import {
  ERROR_CODES, G_WS_PER_KEY, G_WS_UPGRADE_FAILURES, WS_PK_AT_LIMIT, S_WS_BYTES, S_WS_CLOSES, S_WS_LIMITS, S_WS_MESSAGES, S_WS_OPEN, WS_C2U, WS_L_BACKPRESSURE,
  WS_L_IDLE, WS_L_MAX_MESSAGE, WS_L_PER_KEY, WS_L_PING, WS_L_RATE, WS_U2C, WS_UPSTREAM_REFUSED, methodIndex, slotBase, wsCloseColumn,
  WS_L_CREDENTIAL,
} from '../../../common/metrics-layout.js';
import { EXPIRED, type CredentialRefusal, type WsCredential } from '../../policies/auth/credential.js';
import { CredentialWatch } from './credential-watch.js';
import { WsConnectionTable, createWsConnectionTable } from '../../../common/websocket-layout.js';
import { PK_REFUSED, closeClusterCounts, clusterCounts, type PerKeyTicket, type PerKeyWaiter } from './cluster-count.js';
import { wsRedis } from './settings.js';
import type { RouteConfig } from '../../../common/config/types.js';
import { entry, resetEntry } from '../../access-log.js';
import type { Phase } from '../../error-log.js';
import type { RouteContext } from '../../dataplane.js';
import type { UpstreamRuntime } from '../../proxy/balancer.js';
import { isTlsErrorCode, tlsFailureDetail, upstreamSecureContext, type TargetPool } from '../../proxy/upstream-pool.js';
import { coarse } from '../../proxy/timers.js';
import { connectionListed } from '../../proxy/headers.js';
import { countError, recordRequest, recordSizes } from '../../request-metrics.js';
import { CONTINUE, type DecisionWaiter, type PendingDecision } from '../../pipeline/context.js';
import { endWhole, endWithoutBody, gatewayHsts, writeGatewayError } from '../uws-respond.js';
import type { ExchangeEnv } from '../uws-exchange.js';
import {
  CLOSE_BAD_GATEWAY, CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_MESSAGE_TOO_BIG, CLOSE_POLICY_VIOLATION,
  CLOSE_TRY_AGAIN_LATER, MAX_REASON_BYTES, codeForClient, codeForUpstream,
} from './close-codes.js';
import { UpstreamWs, WS_ERR_MESSAGE_TOO_BIG, WS_OPEN, type UpstreamWsHandler, type UpstreamWsTls } from './upstream-client.js';

/** Pause the upstream when uWS holds more than this for the client (bytes). */
export const HIGH_WATER = 256 * 1024;
/** Resume it when uWS's drain finds less than this. */
export const LOW_WATER = 64 * 1024;
/** How often the hub looks for silent and idle connections (ms). */
export const SWEEP_INTERVAL_MS = 250;
/** After the gateway sent its Close, how long the upstream has to answer before its socket is dropped (ms). */
const UPSTREAM_CLOSE_GRACE_MS = 5_000;
/** Largest body of an upstream's refusal (a non-101 answer to the handshake) passed to the client; larger: 502. */
const REFUSAL_BODY_MAX = 64 * 1024;

/** Handshake headers no longer needed once the upstream connection is made (they are let go: memory per connection). */
const NO_HEADERS: Record<string, string | string[]> = Object.freeze({}) as Record<string, string | string[]>;

const GET_INDEX = methodIndex('GET');

/**
 * The process's WebSocket connections per key (common/websocket-layout.ts),
 * set by the worker at start (setConnectionTable); without one (a backend
 * run outside a worker: tests) a private table of this thread: the limit
 * then holds per thread only.
 */
let keyTable: WsConnectionTable | null = null;
export function setConnectionTable(t: WsConnectionTable): void {
  keyTable = t;
}
function connectionTable(): WsConnectionTable {
  return (keyTable ??= new WsConnectionTable(createWsConnectionTable(1), 0));
}

/** ERROR_CODES index of a gateway error code (turnpike_websocket_upgrade_failures_total). */
const failureIndex = new Map<string, number>(ERROR_CODES.map((c, i) => [c, i]));
failureIndex.set('upstream_refused', WS_UPSTREAM_REFUSED);

/** Counts an upgrade not answered 101 under `reason` (a gateway error code or upstream_refused); unknown codes are not counted. */
export function countUpgradeFailure(cells: Float64Array, reason: string): void {
  const i = failureIndex.get(reason);
  if (i !== undefined) cells[G_WS_UPGRADE_FAILURES + i]!++;
}

const ST_DECIDE = 0;
const ST_HANDSHAKE = 1;
const ST_OPEN = 2;
const ST_DONE = 3;

/** The request as the upgrade handler read it, for the tunnel (copied: the uWS request dies with the handler). */
export interface UpgradeRequest {
  requestId: string;
  t0: number;
  key: string;
  /** The client's offered subprotocols, in order (Sec-WebSocket-Protocol). */
  protocols: string[];
  /** Sec-WebSocket-Extensions as sent ('' for none). */
  extensions: string;
  /** The upstream request target: path and query, byte-exact as for HTTP. */
  target: string;
  /** Header name -> value(s) for the upstream handshake, latin1 strings (one char per byte). */
  headers: Record<string, string | string[]>;
  client: string;
  /** The address maxConnectionsPerKey counts under without a consumer (behind trusted proxies: X-Forwarded-For's client). */
  keyAddress: string;
  host: string;
  path: string;
  query: string;
  consumer: string;
  userAgent: string;
  referer: string;
  /** Response headers from the policies (name, value pairs) for the 101 or the refusal, or null. */
  policyHeaders: string[] | null;
  /** How a refusal (an error, the upstream's non-101 answer) ends the connection: uws-respond.ts CLOSE_* (the client's `close`, uWS's own). */
  close: number;
  /**
   * The API key that admitted the upgrade (policies/auth/credential.ts:
   * its hash, its validity end in ms since the epoch or 0, what a re-check
   * needs), or null: a route without auth. A pending decision brings it in
   * decided(). The tunnel closes 1008 when the key stops working
   * (credential-watch.ts, and tick() at the validity end).
   */
  credential: WsCredential | null;
}

/**
 * A worker's WebSocket side: the uWS behaviour (registered once, under
 * `/*`, next to the HTTP handler: uWS sends it only GET requests carrying a
 * 24-character Sec-WebSocket-Key, the others reach the HTTP handler
 * untouched), the open tunnels, and the sweep.
 */
export class WsHub {
  readonly open = new Set<WsTunnel>();
  /** Handshakes in progress (client waiting for its 101). */
  readonly pending = new Set<WsTunnel>();
  private sweeper: NodeJS.Timeout | null = null;
  closed = false;
  /** The open tunnels an API key admitted, re-checked when the identity store changes (credential-watch.ts). */
  readonly credentials = new CredentialWatch();
  /** Date.now() at the last sweep: the wall clock key expiry is read on (ms). */
  wallNow = Date.now();

  constructor(readonly env: ExchangeEnv, readonly uwsPayloadCap: number) {}

  /**
   * The uWS WebSocketBehavior. `upgrade`: the server's upgrade handler.
   * `compression`: uWS's SHARED_COMPRESSOR constant (negotiated only for
   * routes with `compression: true`: the others pass no extensions to
   * res.upgrade). Idle timeouts and pings are the hub's (per route), so
   * uWS's are off; maxBackpressure is set far above what the tunnels let
   * build up, so that uWS never drops a message (HIGH_WATER above).
   */
  behavior(upgrade: (res: any, req: any, context: any) => void, compression: number): Record<string, unknown> {
    return {
      maxPayloadLength: this.uwsPayloadCap,
      idleTimeout: 0,
      sendPingsAutomatically: false,
      maxBackpressure: 4 * this.uwsPayloadCap + 16 * 1024 * 1024,
      closeOnBackpressureLimit: false,
      compression,
      upgrade,
      open: (ws: any) => guard(ws, openClient),
      message: (ws: any, ab: ArrayBuffer, isBinary: boolean) => {
        const t = (ws.getUserData() as TunnelData).t;
        try {
          t.onClientMessage(ab, isBinary);
        } catch (err) {
          t.crashed(err);
        }
      },
      drain: (ws: any) => guard(ws, drainClient),
      pong: (ws: any) => guard(ws, heardClient),
      ping: (ws: any) => guard(ws, pingedByClient),
      close: (ws: any, code: number, message: ArrayBuffer) => {
        const t = (ws.getUserData() as TunnelData).t;
        try {
          t.onClientClose(code, message);
        } catch (err) {
          t.crashed(err);
        }
      },
    };
  }

  add(t: WsTunnel): void {
    this.open.add(t);
    const c = t.credential;
    if (c !== null) this.credentials.add(t, c);
    if (this.sweeper === null) {
      this.sweeper = setInterval(() => this.sweep(), SWEEP_INTERVAL_MS);
      this.sweeper.unref();
    }
  }

  remove(t: WsTunnel): void {
    this.open.delete(t);
    const c = t.credential;
    if (c !== null) this.credentials.remove(t, c);
    if (this.open.size === 0 && this.sweeper !== null) {
      clearInterval(this.sweeper);
      this.sweeper = null;
    }
  }

  private sweep(): void {
    const now = performance.now();
    this.wallNow = Date.now();
    for (const t of this.open) {
      try {
        t.tick(now);
      } catch (err) {
        t.crashed(err);
      }
    }
  }

  /**
   * A reload replaced the routes `before` by `after` (workers/transport/uws-server.ts
   * setDataplane): the connections of a route that is gone or whose resolved
   * definition (its routes[] entry, JSON-compared as common/config/diff.ts
   * does) changed get their route's websocket.drainMs, then close with 1001
   * both ways (tick()); handshakes in progress on such a route too, from
   * their 101 on. Every other connection is left as it is.
   */
  reload(before: readonly RouteConfig[], after: readonly RouteConfig[]): void {
    if (this.open.size === 0 && this.pending.size === 0) return;
    const next = new Map<string, string>();
    for (const r of after) next.set(r.id, JSON.stringify(r));
    const changed = new Set<string>();
    for (const r of before) if (next.get(r.id) !== JSON.stringify(r)) changed.add(r.id);
    if (changed.size === 0) return;
    const now = performance.now();
    for (const t of [...this.pending, ...this.open]) {
      if (!changed.has(t.routeId)) continue;
      try {
        t.drain(now);
      } catch (err) {
        t.crashed(err);
      }
    }
  }

  /** The worker closes: every tunnel ends with 1001 both ways, every handshake with 503 shutting_down. */
  closeAll(): void {
    this.closed = true;
    for (const t of [...this.pending]) t.shutDown();
    for (const t of [...this.open]) t.shutDown();
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.sweeper = null;
    this.credentials.close();
    closeClusterCounts(); // each Redis connection of maxConnectionsPerKey closes once its last connection is given back
  }
}

interface TunnelData {
  t: WsTunnel;
}

function guard(ws: any, fn: (t: WsTunnel, ws: any) => void): void {
  const t = (ws.getUserData() as TunnelData).t;
  try {
    fn(t, ws);
  } catch (err) {
    t.crashed(err);
  }
}
function openClient(t: WsTunnel, ws: any): void {
  t.onClientOpen(ws);
}
function drainClient(t: WsTunnel): void {
  t.onClientDrain();
}
function pingedByClient(t: WsTunnel): void {
  t.onClientPing();
}
function heardClient(t: WsTunnel): void {
  t.clientHeard = coarse.now;
  t.clientPingAt = 0;
}

export class WsTunnel implements DecisionWaiter, PerKeyWaiter, UpstreamWsHandler {
  private state = ST_DECIDE;
  /** The upgrade request's response until the 101 (or an error) is written, then null. */
  private res: any;
  private client: any = null;
  private up: UpstreamWs | null = null;
  private upPaused = false;
  /** The client's reads are paused until the upstream takes what waits for it (server sides that can pause: the node backend). */
  private clientPaused = false;
  /** The client WebSocket can stop reading (pause/resume): the node backend's; uWS 20.30's cannot. */
  private clientCanPause = false;
  /** The client WebSocket may keep a reference to what it is sent (node backend, Bun): a view of the upstream's read buffer is copied first. */
  private copyOut = false;
  private upClosed = false;
  private clientClosed = false;
  private decision: PendingDecision | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** The upstream's socket is ready for the handshake: TCP connected (wss://: and TLS established, 'secureConnect'). */
  private connected = false;
  /** wss://: TCP is up (its TLS handshake may still be under way). */
  private tcpUp = false;
  private tSent = 0;
  private upstreamMs = -1;
  /** What the client got for its upgrade: 101, or the error's / the upstream's status. */
  private status = 0;
  private errorCode = '';
  private detail = '';
  /** Close codes each way, for the log: what the client sent or was sent. */
  private closeCode = 0;
  // --- limits
  private winStart = 0;
  private winCount = 0;
  private lastMessage = 0;
  clientHeard = 0;
  clientPingAt = 0;
  private upHeard = 0;
  private upPingAt = 0;
  /** performance.now() past which a reload's drain closes the connection (1001), or 0. */
  private drainAt = 0;
  /** This connection's key in the per-key table (websocket-layout.ts: `c <consumer>` or `a <address>`), or null: not counted. */
  private countedKey: string | null = null;
  /** With `redis`: this connection's place in the count across instances (cluster-count.ts), given back in finish(); or null. */
  private perKey: PerKeyTicket | null = null;
  // --- metrics: the worker's cells (null: metrics off when the tunnel began), the route slot's first cell
  private readonly cells: Float64Array | null;
  private readonly mb: number;
  /** Counted in the route's open gauge (from the client's open to its close). */
  private openCounted = false;
  // --- counts
  private bytesIn = 0;
  private bytesOut = 0;
  private messagesIn = 0;
  private messagesOut = 0;

  constructor(
    private readonly hub: WsHub,
    res: any,
    private readonly context: any,
    private readonly route: RouteContext,
    private readonly upstream: UpstreamRuntime,
    private readonly pool: TargetPool,
    private readonly probe: boolean,
    private readonly s: RouteWebSocket,
    private readonly r: UpgradeRequest,
  ) {
    this.res = res;
    this.cells = hub.env.metricsOn ? hub.env.metrics : null;
    this.mb = slotBase(route.slot);
    pool.active++;
    hub.pending.add(this);
  }

  /** The route id (reload: was its route changed). */
  get routeId(): string {
    return this.route.id;
  }

  /** The API key that admitted this tunnel, or null (UpgradeRequest.credential). */
  get credential(): WsCredential | null {
    return this.r.credential;
  }

  /**
   * The key that admitted this open tunnel stopped working (revoked, its
   * consumer suspended, expired: credential-watch.ts, tick()): the client
   * gets 1008 (policy violation, RFC 6455 7.4.1) with `why.client` as the
   * reason (never the key), the upstream 1001 with `why.upstream`; counted
   * as a `credential` limit hit. Does nothing unless open. Never throws.
   */
  closeForCredential(why: CredentialRefusal): void {
    try {
      if (this.state !== ST_OPEN || this.clientClosed) return;
      this.limitHit(WS_L_CREDENTIAL);
      this.gatewayClose(CLOSE_POLICY_VIOLATION, why.client, CLOSE_GOING_AWAY, why.upstream);
    } catch (err) {
      this.crashed(err);
    }
  }

  /** A reload removed or changed the route: close (1001 both ways) after its drainMs; an earlier deadline stays. */
  drain(now: number): void {
    if (this.drainAt !== 0 || this.state === ST_DONE) return;
    this.drainAt = now + this.s.drainMs;
    if (this.s.drainMs === 0 && this.state === ST_OPEN) this.drainClose();
  }

  private drainClose(): void {
    this.gatewayClose(CLOSE_GOING_AWAY, 'route changed by a reload', CLOSE_GOING_AWAY, 'gateway route changed by a reload');
  }

  private limitHit(limit: number): void {
    const c = this.cells;
    if (c !== null) c[this.mb + S_WS_LIMITS + limit]!++;
  }

  /** The client side is over with `code` (what the client got, or sent; 1006 lost): the open gauge and the close count. */
  private countClose(code: number): void {
    if (!this.openCounted) return;
    this.openCounted = false;
    const c = this.cells;
    if (c === null) return;
    c[this.mb + S_WS_OPEN]!--;
    c[this.mb + S_WS_CLOSES + wsCloseColumn(code)]!++;
  }

  /** Waits for a policy's decision (workers/pipeline/context.ts) before start(); its guardMs bounds the wait. */
  awaitDecision(d: PendingDecision): void {
    this.decision = d;
    this.timer = setTimeout(() => {
      const p = this.decision;
      if (p === null || this.state !== ST_DECIDE) return;
      this.decision = null;
      p.abandon();
      this.fail(p.guardError, null, ['retry-after', '1']);
    }, d.guardMs);
    d.begin(this);
  }

  /** DecisionWaiter: the decision is in. Never throws. */
  decided(d: PendingDecision): void {
    try {
      this.decision = null;
      if (this.timer !== null) clearTimeout(this.timer);
      this.timer = null;
      if (d.consumerId !== '') this.r.consumer = d.consumerId;
      if (d.credential !== null) this.r.credential = d.credential;
      if (this.state !== ST_DECIDE) return;
      if (d.result !== CONTINUE) {
        this.fail(d.refusal!, d.refusalMessage, d.refusalHeaders);
        return;
      }
      if (d.responseHeaders.length !== 0) this.r.policyHeaders = (this.r.policyHeaders ?? []).concat(d.responseHeaders);
      if (d.requestLines !== '') addLines(this.r.headers, d.requestLines);
      this.start();
      this.hub.env.pump();
    } catch (err) {
      this.crashed(err);
    }
  }

  /**
   * maxConnectionsPerKey, then the upstream: the instance's shared table
   * first (a key this instance alone holds `limit` connections of is
   * refused at once); with `redis`, then the count across instances
   * (cluster-count.ts: one round trip; the tunnel stays in ST_DECIDE until
   * perKeyDecided), then openUpstream().
   */
  start(): void {
    const limit = this.s.maxConnectionsPerKey;
    if (limit > 0) {
      // The consumer when identity found one (a pending decision has brought it by now), else the client address.
      const key = this.r.consumer !== '' ? 'c ' + this.r.consumer : 'a ' + this.r.keyAddress;
      const redis = wsRedis(this.s);
      if (!connectionTable().acquire(this.route.id, key, limit)) {
        if (redis !== null && this.cells !== null) this.cells[G_WS_PER_KEY + WS_PK_AT_LIMIT]!++;
        this.refusePerKey(limit);
        return;
      }
      this.countedKey = key;
      if (redis !== null) {
        const t = clusterCounts(redis, this.cells).acquire(this.route.id, key, this.s.perKeyLeaseMs, this);
        this.perKey = t;
        t.store.decide(t, limit); // perKeyDecided goes on (maybe at once)
        return;
      }
    }
    this.openUpstream();
  }

  /** cluster-count.ts answered the admission (PK_*). Never throws. */
  perKeyDecided(outcome: number): void {
    try {
      if (this.state !== ST_DECIDE || this.finished) return; // ended meanwhile (client gone, shutdown): finish() gave the place back
      if (outcome === PK_REFUSED) {
        this.perKey = null;
        this.refusePerKey(this.s.maxConnectionsPerKey);
        return;
      }
      this.openUpstream();
      this.hub.env.pump();
    } catch (err) {
      this.crashed(err);
    }
  }

  /** 429 too_many_websocket_connections (the place taken in the instance's table is given back by finish()). */
  private refusePerKey(limit: number): void {
    this.limitHit(WS_L_PER_KEY);
    this.detail = `${limit} connections open for this key (maxConnectionsPerKey)`;
    this.fail(Errors.TOO_MANY_WEBSOCKET_CONNECTIONS, null, null);
  }

  /** Opens the upstream WebSocket; the client's 101 waits for the upstream's. */
  private openUpstream(): void {
    this.state = ST_HANDSHAKE;
    const t = this.pool.target;
    const timeouts = this.upstream.config.timeouts;
    this.tSent = performance.now();
    // wss:// for an https:// target, with its upstream's tls settings (upstream-pool.ts PoolTls); the pool's last TLS session is offered and renewed.
    const pool = this.pool;
    const ptls = pool.tls;
    let tlsOptions: UpstreamWsTls | null = null;
    if (ptls !== null) {
      tlsOptions = {
        secureContext: (ptls.context ??= upstreamSecureContext(ptls.config)),
        // '' : no SNI (an IP address).
        servername: ptls.servername ?? '',
        rejectUnauthorized: ptls.rejectUnauthorized,
        session: pool.tlsSession ?? undefined,
        onSession: (session: Buffer) => { if (!pool.closed) pool.tlsSession = session; },
      };
    }
    try {
      this.up = new UpstreamWs(this, t.host, t.port, this.r.target, this.r.headers, this.r.protocols, this.s.maxMessageBytes, REFUSAL_BODY_MAX, tlsOptions);
    } catch (err) {
      // A header or subprotocol that cannot be sent (not a token, a control character): the client's request is at fault.
      this.detail = (err as Error).message;
      this.fail(Errors.BAD_REQUEST, null, null);
      return;
    }
    this.r.headers = NO_HEADERS;
    this.timer = setTimeout(() => this.upstreamCallback(this.onHandshakeTimeout), timeouts.connectMs);
    // net.connect defers work with process.nextTick, which a uWS callback does not run by itself.
    this.hub.env.pump();
  }

  // UpstreamWsHandler (upstream-client.ts): each call guarded, a throw ends this tunnel only.
  onUpTcp(): void {
    this.tcpUp = true;
  }

  onUpConnected(): void {
    this.upstreamCallback(this.onConnected);
  }

  onUpOpen(): void {
    this.upstreamCallback(this.onUpstreamOpen);
  }

  onUpRefused(status: number, headers: string[], body: Buffer): void {
    try {
      this.passRefusal(status, headers, body);
    } catch (err) {
      this.crashed(err);
    }
  }

  onUpError(err: Error): void {
    try {
      this.onUpstreamError(err);
    } catch (e) {
      this.crashed(e);
    }
  }

  onUpMessage(data: Buffer, isBinary: boolean, shared: boolean): void {
    try {
      this.onUpstreamMessage(data, isBinary, shared);
    } catch (err) {
      this.crashed(err);
    }
  }

  onUpPong(): void {
    this.upHeard = coarse.now;
    this.upPingAt = 0;
  }

  onUpClose(code: number, reason: Buffer): void {
    try {
      this.onUpstreamClose(code, reason);
    } catch (err) {
      this.crashed(err);
    }
  }

  private upstreamCallback(fn: (this: WsTunnel) => void): void {
    try {
      fn.call(this);
    } catch (err) {
      this.crashed(err);
    }
  }

  private onConnected(): void {
    this.connected = true;
    if (this.state !== ST_HANDSHAKE) return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.upstreamCallback(this.onHandshakeTimeout), this.upstream.config.timeouts.responseMs);
  }

  private onHandshakeTimeout(): void {
    this.timer = null;
    if (this.state !== ST_HANDSHAKE) return;
    this.detail = this.connected ? 'no handshake answer within timeouts.responseMs' : 'connect timeout';
    this.fail(this.connected ? Errors.UPSTREAM_TIMEOUT : Errors.UPSTREAM_CONNECT_TIMEOUT, null, null);
  }

  /** The upstream accepted (101): the client gets its 101, with the subprotocol the upstream chose. */
  private onUpstreamOpen(): void {
    if (this.state !== ST_HANDSHAKE) return;
    this.upstreamMs = performance.now() - this.tSent;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const res = this.res;
    if (res === null) {
      // The client left during the handshake (onClientAborted finished the tunnel).
      this.up?.terminate();
      return;
    }
    this.res = null;
    this.status = 101;
    this.hub.pending.delete(this);
    this.finishAdmission('', 101);
    const ext = this.s.compression ? this.r.extensions : '';
    const ridHeader = this.hub.env.requestIdHeader;
    const rid = this.r.requestId;
    const ph = this.r.policyHeaders;
    res.cork(() => {
      res.writeStatus('101 Switching Protocols');
      res.writeHeader(ridHeader, rid);
      if (ph !== null) for (let i = 0; i < ph.length; i += 2) res.writeHeader(ph[i]!, ph[i + 1]!);
      if (gatewayHsts !== null) res.writeHeader('strict-transport-security', gatewayHsts);
      res.upgrade({ t: this } satisfies TunnelData, this.r.key, this.up!.protocol, ext, this.context);
    });
    if (this.client === null) {
      // uWS did not open the socket (the client went away inside upgrade): its onAborted may not come.
      this.clientClosed = true;
      this.closeUpstream(CLOSE_GOING_AWAY, 'client connection lost');
      this.maybeFinish();
    }
    const env = this.hub.env;
    if (env.metricsOn) recordRequest(env.metrics, env.latency, this.route.slot, GET_INDEX, 101, performance.now() - this.r.t0, this.pool.metricsBase);
  }

  /** uWS open: called inside res.upgrade. */
  onClientOpen(ws: any): void {
    this.client = ws;
    this.clientCanPause = typeof ws.pause === 'function';
    this.copyOut = ws.keepsSentData === true;
    this.state = ST_OPEN;
    this.openCounted = true;
    if (this.cells !== null) this.cells[this.mb + S_WS_OPEN]!++;
    const now = coarse.now;
    this.lastMessage = now;
    this.clientHeard = now;
    this.upHeard = now;
    this.winStart = now;
    this.hub.add(this);
    if (this.hub.closed) this.shutDown();
    else if (this.drainAt !== 0 && this.s.drainMs === 0) this.drainClose();
  }

  /** A handshake answer other than 101 (`raw`: its header lines, name, value, ... as sent): its status, headers and (small) body go to the client. */
  private passRefusal(status: number, raw: string[], body: Buffer): void {
    if (this.state !== ST_HANDSHAKE) return;
    this.upstreamMs = performance.now() - this.tSent;
    this.endHandshake();
    this.status = status;
    this.finishAdmission(status >= 500 ? 'upstream_refused' : '', status);
    if (this.cells !== null) countUpgradeFailure(this.cells, 'upstream_refused');
    const res = this.res;
    if (res !== null) {
      this.res = null;
      const drop = this.route.responsePlan.drop;
      const extra = this.route.responsePlan.extra;
      const ph = this.r.policyHeaders;
      const ridHeader = this.hub.env.requestIdHeader;
      // Fields the upstream's Connection header names are hop-by-hop too (RFC 9110 7.6.1).
      let listed: Set<string> | null = null;
      for (let i = 0; i < raw.length; i += 2) {
        if (raw[i]!.toLowerCase() !== 'connection') continue;
        const names = connectionListed(raw[i + 1]!);
        if (names !== null) for (const n of names) (listed ??= new Set()).add(n);
      }
      res.cork(() => {
        res.writeStatus(`${status} ${STATUS_CODES[status] ?? 'Unknown'}`);
        for (let i = 0; i < raw.length; i += 2) {
          const k = raw[i]!.toLowerCase();
          if (drop.has(k) || k === ridHeader || k.startsWith('sec-websocket-') || listed?.has(k) === true) continue;
          res.writeHeader(k, Buffer.from(raw[i + 1]!, 'latin1'));
        }
        for (let i = 0; i < extra.length; i += 2) res.writeHeader(extra[i]!, extra[i + 1]!);
        if (ph !== null) for (let i = 0; i < ph.length; i += 2) res.writeHeader(ph[i]!, ph[i + 1]!);
        res.writeHeader(ridHeader, this.r.requestId);
        // 1xx/204/304 carry no body and no Content-Length (RFC 9110 8.6, 15.3.5, 15.4.5).
        if (status < 200 || status === 204 || status === 304) endWithoutBody(res, status, -1, this.r.close, true);
        else endWhole(res, body, this.r.close);
      });
    }
    this.bytesOut = body.length;
    this.upClosed = true;
    this.clientClosed = true;
    this.finish(status);
  }

  private onUpstreamError(err: Error): void {
    const code = (err as NodeJS.ErrnoException).code ?? '';
    if (this.detail === '') this.detail = code !== '' && !code.startsWith('WS_ERR_') ? code : err.message;
    if (this.state === ST_HANDSHAKE) {
      // Connect failures (refused, unreachable) before the socket connected; anything after is a bad answer.
      // wss://: a failure once TCP was up and before TLS was (or a TLS alert before the 101: TLS 1.3 refusing a client certificate) is the TLS handshake's.
      const tlsFailed = this.pool.tls !== null && (this.connected ? isTlsErrorCode(code) : this.tcpUp);
      if (tlsFailed) this.detail = tlsFailureDetail(err);
      const e = tlsFailed ? Errors.UPSTREAM_TLS_FAILED
        : !this.connected ? Errors.UPSTREAM_CONNECT_FAILED : code === 'ECONNRESET' || code === 'EPIPE' ? Errors.UPSTREAM_RESET : Errors.UPSTREAM_BAD_RESPONSE;
      if (tlsFailed) this.pool.tlsSession = null;
      this.fail(e, null, null);
      return;
    }
    // Open: 'close' follows; what the client is told depends on what went wrong.
    this.upError = code === WS_ERR_MESSAGE_TOO_BIG ? CLOSE_MESSAGE_TOO_BIG : CLOSE_BAD_GATEWAY;
    if (this.upError === CLOSE_MESSAGE_TOO_BIG) this.limitHit(WS_L_MAX_MESSAGE);
    // A violation of the upstream's (upstream-client.ts says which): one error-log line, as for HTTP.
    this.detail = err.message;
    this.relayFailed(Errors.UPSTREAM_BAD_RESPONSE.code);
  }

  /** Set by an upstream error while open: the code the client gets when the upstream's close follows (1009 or 1014). */
  private upError = 0;
  /** The upstream was dropped for not answering a ping (its close reason to the client says so). */
  private upSilent = false;

  // ------------------------------------------------------------------ relay

  /** uWS message: `ab` is neutered when this returns (upstream-client.ts masks it into its own buffer, synchronously). */
  onClientMessage(ab: ArrayBuffer, isBinary: boolean): void {
    const n = ab.byteLength;
    const now = coarse.now;
    this.clientHeard = now;
    this.clientPingAt = 0;
    if (n > this.s.maxMessageBytes) {
      this.limitHit(WS_L_MAX_MESSAGE);
      this.gatewayClose(CLOSE_MESSAGE_TOO_BIG, 'message too big', CLOSE_GOING_AWAY, 'client sent a message over maxMessageBytes');
      return;
    }
    const mps = this.s.messagesPerSecond;
    if (mps > 0) {
      if (now - this.winStart >= 1000) {
        this.winStart = now;
        this.winCount = 0;
      }
      if (++this.winCount > mps) {
        this.limitHit(WS_L_RATE);
        if (this.s.messagesPerSecondAction === 'drop') {
          this.lastMessage = now; // the client is active: a dropped message is not idleness
          return;
        }
        this.gatewayClose(CLOSE_POLICY_VIOLATION, 'message rate limit exceeded', CLOSE_GOING_AWAY, 'client over messagesPerSecond');
        return;
      }
    }
    this.lastMessage = now;
    const up = this.up;
    if (up === null || up.readyState !== WS_OPEN) return;
    this.bytesIn += n;
    this.messagesIn++;
    const cells = this.cells;
    if (cells !== null) {
      cells[this.mb + S_WS_MESSAGES + WS_C2U]!++;
      cells[this.mb + S_WS_BYTES + WS_C2U]! += n;
    }
    if (this.clientCanPause && up.bufferedAmount + n > HIGH_WATER) {
      // The upstream is not keeping up: stop reading the client until this message is written out
      // (what the gateway holds stays under HIGH_WATER + maxMessageBytes + one read). A closure only here.
      up.send(new Uint8Array(ab), isBinary, (err?: Error | null) => this.onUpstreamFlushed(err));
      if (!this.clientPaused) {
        this.clientPaused = true;
        this.limitHit(WS_L_BACKPRESSURE);
        this.client.pause();
      }
      this.hub.env.pump();
      return;
    }
    up.send(new Uint8Array(ab), isBinary);
    if (up.bufferedAmount > HIGH_WATER + this.s.maxMessageBytes) {
      this.limitHit(WS_L_BACKPRESSURE);
      // The upstream does not read and uWS cannot stop reading the client (see the module comment).
      this.gatewayClose(CLOSE_TRY_AGAIN_LATER, 'upstream not keeping up', CLOSE_GOING_AWAY, 'upstream not reading');
      return;
    }
    // No pump() here (it costs a loop turn per message): a write the kernel takes at once is done, and
    // writableLength already counts it off; what Node defers to process.nextTick is its callback and
    // 'drain' (one tick per socket, however many writes), run at the next Node callback: the echo's read
    // or the worker's 25 ms sweep at the latest.
  }

  /**
   * The client pinged (its pong is the server side's: uWS queues it). A
   * client that pings without reading would make that queue grow without
   * bound (uWS has no limit on it: found by the break-it pass, 1 GB from
   * one connection): past HIGH_WATER + maxMessageBytes unread toward the
   * client, it is dropped like a client that stopped answering pings
   * (counted as a backpressure hit; the upstream gets 1001).
   */
  onClientPing(): void {
    const c = this.client;
    if (c === null) return;
    this.clientHeard = coarse.now;
    this.clientPingAt = 0;
    if (c.getBufferedAmount() <= HIGH_WATER + this.s.maxMessageBytes) return;
    this.dropClient(c, 'client pings without reading', WS_L_BACKPRESSURE, 'client not reading');
  }

  /**
   * Drops a client that cannot be closed politely (it does not read, or
   * does not answer): its socket closes without a Close frame (1006 in the
   * metrics), the upstream gets 1001 with `upReason`; `hit` is the limit
   * counted.
   */
  private dropClient(c: any, detail: string, hit: number, upReason: string): void {
    this.detail = detail;
    this.limitHit(hit);
    this.client = null;
    this.clientClosed = true;
    this.closeCode = 1006;
    this.countClose(1006);
    this.hub.remove(this);
    c.close();
    this.closeUpstream(CLOSE_GOING_AWAY, upReason);
    this.maybeFinish();
  }

  /** A message sent while the upstream was behind was written out: the client's reads resume once little waits. */
  private onUpstreamFlushed(err: Error | null | undefined): void {
    if ((err !== undefined && err !== null) || !this.clientPaused || this.client === null) return;
    const up = this.up;
    if (up === null || up.bufferedAmount > LOW_WATER) return; // a later message's callback resumes
    this.clientPaused = false;
    this.clientHeard = coarse.now; // pongs were not read while paused
    this.clientPingAt = 0;
    this.client.resume();
  }

  /** `shared`: `data` is a view of upstream-client.ts's read buffer, valid during this call only. */
  private onUpstreamMessage(data: Buffer, isBinary: boolean, shared: boolean): void {
    const now = coarse.now;
    this.upHeard = now;
    this.upPingAt = 0;
    this.lastMessage = now;
    const c = this.client;
    if (c === null) return;
    this.bytesOut += data.length;
    this.messagesOut++;
    const cells = this.cells;
    if (cells !== null) {
      cells[this.mb + S_WS_MESSAGES + WS_U2C]!++;
      cells[this.mb + S_WS_BYTES + WS_U2C]! += data.length;
    }
    const r = c.send(shared && this.copyOut ? Buffer.from(data) : data, isBinary, this.s.compression);
    if (r === 2) {
      this.limitHit(WS_L_BACKPRESSURE);
      // Dropped by uWS (maxBackpressure): cannot happen while the pause below works; never lose a message silently.
      this.gatewayClose(CLOSE_INTERNAL_ERROR, 'backpressure limit', CLOSE_GOING_AWAY, 'client backpressure limit');
      return;
    }
    // Only a send that left bytes waiting (0: backpressure) can have taken the client over HIGH_WATER: no native call per message otherwise.
    if (r === 0 && !this.upPaused && c.getBufferedAmount() > HIGH_WATER) {
      this.upPaused = true;
      this.up?.pause();
    }
  }

  onClientDrain(): void {
    if (this.upPaused && this.client !== null && this.client.getBufferedAmount() < LOW_WATER) {
      this.upPaused = false;
      this.up?.resume();
      this.hub.env.pump();
    }
  }

  // ------------------------------------------------------------------ closing

  /** uWS close (whoever started it; `ws` is dead after this). */
  onClientClose(code: number, message: ArrayBuffer): void {
    this.client = null;
    if (this.clientClosed) return; // the gateway's own end() (gatewayClose, upstream closed first)
    this.clientClosed = true;
    this.closeCode = code;
    this.countClose(code);
    this.hub.remove(this);
    if (!this.upClosed) {
      const c = codeForUpstream(code);
      // A copy: uWS's buffer dies with this callback.
      const reason = c === code ? Buffer.copyBytesFrom(new Uint8Array(message)) : Buffer.from('client connection lost');
      this.closeUpstream(c, reason);
    }
    this.maybeFinish();
  }

  private onUpstreamClose(code: number, reason: Buffer): void {
    if (this.state === ST_HANDSHAKE) {
      // Closed before 'open' with no error event (rare): the handshake failed.
      if (this.detail === '') this.detail = 'closed during the handshake';
      this.fail(this.connected ? Errors.UPSTREAM_RESET : this.tcpUp ? Errors.UPSTREAM_TLS_FAILED : Errors.UPSTREAM_CONNECT_FAILED, null, null);
      return;
    }
    this.upClosed = true;
    this.up = null;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (!this.clientClosed) {
      this.clientClosed = true;
      this.hub.remove(this);
      const c = this.upError !== 0 ? this.upError : codeForClient(code);
      let why: Buffer | string = reason;
      if (this.upError !== 0) why = this.upError === CLOSE_MESSAGE_TOO_BIG ? 'upstream message too big' : this.upSilent ? 'upstream not responding' : 'upstream protocol error';
      else if (c !== code) why = code === 1006 ? 'upstream connection lost' : 'upstream closed';
      if (c === CLOSE_BAD_GATEWAY && this.upError === 0) {
        // Lost without a Close frame while the gateway had asked for nothing: a failure of the upstream's.
        this.detail = 'upstream connection lost without a Close frame';
        this.relayFailed(Errors.UPSTREAM_RESET.code);
      }
      this.closeCode = c;
      this.countClose(c);
      const client = this.client;
      this.client = null;
      if (client !== null) {
        if (c === 0) client.end();
        else client.end(c, why);
      }
    }
    this.maybeFinish();
  }

  /** Sends the upstream its Close (`code` 0: a Close without a code); drops the socket if it does not answer. */
  private closeUpstream(code: number, reason: Buffer | string): void {
    const up = this.up;
    if (up === null || this.upClosed) return;
    if (up.readyState !== WS_OPEN) {
      up.terminate();
      return;
    }
    if (this.upPaused) {
      this.upPaused = false;
      up.resume(); // its Close answer must be read
    }
    up.close(code, code === 0 ? '' : truncateReason(reason));
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.up?.terminate(), UPSTREAM_CLOSE_GRACE_MS);
    this.hub.env.pump();
  }

  /** The gateway ends an open tunnel: `cc`/`cr` to the client, `uc`/`ur` to the upstream. */
  private gatewayClose(cc: number, cr: string, uc: number, ur: string): void {
    if (this.errorCode === '') this.detail = ur;
    this.closeCode = cc;
    this.closeUpstream(uc, ur);
    const client = this.client;
    if (client !== null && !this.clientClosed) {
      this.clientClosed = true;
      this.client = null;
      this.countClose(cc);
      this.hub.remove(this);
      client.end(cc, cr);
    }
    this.maybeFinish();
  }

  /** Sweep (every SWEEP_INTERVAL_MS): idle timeout, pings, silent peers. */
  tick(now: number): void {
    if (this.state !== ST_OPEN || this.client === null) return;
    if (this.drainAt !== 0 && now >= this.drainAt) {
      this.drainClose();
      return;
    }
    const cred = this.r.credential;
    if (cred !== null && cred.until !== 0 && this.hub.wallNow >= cred.until) {
      this.closeForCredential(EXPIRED);
      return;
    }
    const s = this.s;
    if (s.idleTimeoutMs > 0 && now - this.lastMessage >= s.idleTimeoutMs) {
      this.limitHit(WS_L_IDLE);
      this.gatewayClose(CLOSE_GOING_AWAY, 'idle timeout', CLOSE_GOING_AWAY, 'idle timeout');
      return;
    }
    const every = s.pingIntervalMs;
    if (every === 0) return;
    if (this.clientPaused) {
      // Reads are paused (the upstream is behind): a pong could not be read, so no ping timeout.
    } else if (this.clientPingAt !== 0) {
      if (now - this.clientPingAt >= every) {
        // No answer to the ping: the client is gone without a word. Its socket is dropped.
        this.dropClient(this.client, 'client did not answer a ping', WS_L_PING, 'client not responding');
        return;
      }
    } else if (now - this.clientHeard >= every) {
      this.clientPingAt = now;
      this.client.ping();
    }
    if (this.up === null || this.upClosed) return;
    if (this.upPingAt !== 0) {
      if (now - this.upPingAt >= every) {
        this.detail = 'upstream did not answer a ping';
        this.relayFailed(Errors.UPSTREAM_TIMEOUT.code);
        this.limitHit(WS_L_PING);
        this.upError = CLOSE_BAD_GATEWAY;
        this.upSilent = true;
        this.up.terminate(); // 'close' follows: the client gets 1014
      }
    } else if (now - this.upHeard >= every) {
      this.upPingAt = now;
      this.up.ping();
      this.hub.env.pump();
    }
  }

  /** The worker shuts down: 1001 both ways (a handshake in progress: 503 shutting_down). */
  shutDown(): void {
    try {
      if (this.state === ST_DECIDE || this.state === ST_HANDSHAKE) {
        this.fail(Errors.SHUTTING_DOWN, null, null);
        return;
      }
      this.gatewayClose(CLOSE_GOING_AWAY, 'server shutting down', CLOSE_GOING_AWAY, 'gateway shutting down');
      // The worker is going away: its upstream sockets must not hold it for the close grace.
      if (this.timer !== null) clearTimeout(this.timer);
      this.timer = setTimeout(() => this.up?.terminate(), 1000);
    } catch (err) {
      this.crashed(err);
    }
  }

  /** uWS onAborted of the upgrade request: the client left before its 101. */
  onClientAborted(): void {
    this.res = null;
    if (this.state === ST_DONE || this.state === ST_OPEN) return;
    const d = this.decision;
    this.decision = null;
    d?.abandon();
    this.errorCode = 'client_aborted';
    this.countError('client_aborted');
    if (this.cells !== null) countUpgradeFailure(this.cells, 'client_aborted');
    this.endHandshake();
    this.finishAdmission('', 0);
    this.upClosed = true;
    this.clientClosed = true;
    this.finish(0);
  }

  /** Answers the upgrade request with a gateway error (nothing sent yet) and ends the tunnel. */
  fail(e: GatewayErrorDef, message: string | null, headers: readonly string[] | null): void {
    if (this.state === ST_DONE || this.state === ST_OPEN) return;
    this.errorCode = e.code;
    this.countError(e.code);
    if (this.cells !== null) countUpgradeFailure(this.cells, e.code);
    this.status = e.status;
    this.endHandshake();
    this.finishAdmission(e.code, e.status);
    if (e.status >= 500 && e !== Errors.INTERNAL) this.report(e.code, e.status);
    const res = this.res;
    if (res !== null) {
      this.res = null;
      const env = this.hub.env;
      let extra: string[] | null = headers === null ? null : headers.slice();
      const ph = this.r.policyHeaders;
      if (ph !== null && e.status === 429) extra = extra === null ? ph : extra.concat(ph);
      res.cork(() => {
        this.bytesOut = writeGatewayError(res, e, env.requestIdHeader, this.r.requestId, false, this.r.close, true, null, extra, message);
      });
    }
    this.upClosed = true;
    this.clientClosed = true;
    this.finish(e.status);
  }

  /** Drops whatever the handshake holds: the timer, the upstream socket, a pending decision. */
  private endHandshake(): void {
    this.hub.pending.delete(this);
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const up = this.up;
    this.up = null;
    if (up !== null) up.terminate(); // before the 101: it reports nothing more
  }

  private admissionDone = false;
  /** The upstream admission (guard.ts) given back with the handshake's outcome (breaker, outlier ejection). */
  private finishAdmission(code: string, status: number): void {
    if (this.admissionDone) return;
    this.admissionDone = true;
    const g = this.upstream.guard;
    if (g !== null) g.finish(this.pool, this.probe, code, status, this.upstreamMs, coarse.now);
  }

  private maybeFinish(): void {
    if (this.clientClosed && this.upClosed) this.finish(this.status);
  }

  private finished = false;
  /** Once, when both sides are done: pool accounting, access log, metrics of a failed upgrade. */
  private finish(status: number): void {
    if (this.finished) return;
    this.finished = true;
    this.state = ST_DONE;
    this.hub.pending.delete(this);
    this.hub.remove(this);
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.pool.active--;
    this.countClose(1006); // (never left counted by the paths above: a safety net for the gauge)
    if (this.countedKey !== null) {
      connectionTable().release(this.route.id, this.countedKey);
      this.countedKey = null;
    }
    if (this.perKey !== null) {
      this.perKey.store.release(this.perKey);
      this.perKey = null;
    }
    const env = this.hub.env;
    if (env.logs.access !== null) this.writeAccess(status);
    if (status === 101) {
      // The request was counted when its 101 was sent; its sizes (the message bytes each way, as the access log's) now.
      if (this.cells !== null) recordSizes(this.cells, this.route.slot, this.bytesIn, this.bytesOut);
      return;
    }
    if (!env.metricsOn) return;
    recordRequest(env.metrics, env.latency, this.route.slot, GET_INDEX, status, performance.now() - this.r.t0, status === 0 ? -1 : this.pool.metricsBase);
    recordSizes(env.metrics, this.route.slot, 0, this.bytesOut);
  }

  /** A callback of this tunnel threw: logged, and the tunnel ends (500 before the 101, 1011 after). Never throws. */
  crashed(err: unknown): void {
    log('error', 'internal error while proxying a WebSocket; answered 500 or closed with 1011', {
      requestId: this.r.requestId, route: this.route.id, error: err instanceof Error ? err.stack ?? err.message : String(err),
    });
    try {
      if (this.state === ST_OPEN) this.gatewayClose(CLOSE_INTERNAL_ERROR, 'internal error', CLOSE_GOING_AWAY, 'gateway internal error');
      else this.fail(Errors.INTERNAL, null, null);
    } catch {
      // Nothing more can be done for this connection.
    }
  }

  private countError(code: string): void {
    const env = this.hub.env;
    if (env.metricsOn) countError(env.metrics, code, code.startsWith('upstream_') ? this.pool.metricsBase : -1);
  }

  /**
   * The upstream failed after the 101 (`code`: upstream_bad_response, _reset,
   * _timeout; `detail` says how): one error-log line (phase websocket) and
   * the same counters as an HTTP request's upstream failure
   * (turnpike_gateway_errors_total, turnpike_upstream_errors_total of the
   * target), so logs and metrics agree.
   */
  private relayFailed(code: string): void {
    this.countError(code);
    this.report(code, 101, 'websocket');
  }

  /** One error-log line (rate limited per code and target): `phase` 'connect' / 'head' before the 101 (TCP not up / the answer was bad), 'websocket' after it. */
  private report(code: string, status: number, phase: Phase = this.connected ? 'head' : 'connect'): void {
    this.hub.env.logs.errors.report({
      requestId: this.r.requestId, route: this.route.id, upstream: this.upstream.config.name,
      target: this.pool.target.url, phase, code, status, detail: this.detail,
    }, coarse.now);
  }

  /** One access log line per upgrade, when it ends: status 101 and the message bytes each way for a tunnel. */
  private writeAccess(status: number): void {
    const access = this.hub.env.logs.access!;
    const r = this.r;
    resetEntry();
    const e = entry;
    e.t0 = r.t0;
    e.requestId = r.requestId;
    e.client = r.client;
    e.method = 'GET';
    e.host = r.host;
    e.path = r.path;
    e.query = r.query;
    e.status = status === 0 ? 499 : status;
    e.bytesReceived = this.bytesIn;
    e.bytesSent = this.bytesOut;
    e.durationMs = performance.now() - r.t0;
    e.upstreamMs = this.upstreamMs;
    e.route = this.route.id;
    e.upstream = this.upstream.config.name;
    e.target = this.pool.target.url;
    e.error = this.errorCode;
    e.consumer = r.consumer;
    e.userAgent = r.userAgent;
    e.referer = r.referer;
    access.write();
  }
}

/** `name: value\r\n` lines (a policy's, the route's header plan) into the handshake's header map. */
export function addLines(headers: Record<string, string | string[]>, lines: string): void {
  let at = 0;
  while (at < lines.length) {
    let end = lines.indexOf('\r\n', at);
    if (end === -1) end = lines.length;
    const line = lines.slice(at, end);
    at = end + 2;
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    addHeader(headers, line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim());
  }
}

export function addHeader(headers: Record<string, string | string[]>, name: string, value: string): void {
  const prev = headers[name];
  if (prev === undefined) headers[name] = value;
  else if (typeof prev === 'string') headers[name] = [prev, value];
  else prev.push(value);
}

/** A close reason cut to the 123 bytes a Close frame holds, on a character boundary. */
function truncateReason(reason: Buffer | string): Buffer | string {
  if (typeof reason === 'string') {
    if (reason.length <= MAX_REASON_BYTES / 3 || Buffer.byteLength(reason) <= MAX_REASON_BYTES) return reason;
    reason = Buffer.from(reason);
  }
  if (reason.length <= MAX_REASON_BYTES) return reason;
  let n = MAX_REASON_BYTES;
  while (n > 0 && (reason[n]! & 0xc0) === 0x80) n--;
  return reason.subarray(0, n);
}
