/**
 * One compiled configuration, as a worker uses it: the router, a context per
 * route (header plans, rewrite, limits, metrics slot, its upstream, or its
 * traffic split over several) and the upstream pools. Built once per config version; the transport holds one
 * reference and swaps it between requests. An exchange keeps the route
 * context it started with, so in-flight requests finish on the config they
 * started on.
 */
import type { GatewayConfig, HeaderPolicy, RouteConfig } from '../common/config/types.js';
import { OVERFLOW_SLOT } from '../common/metrics-layout.js';
import { UpstreamRuntime } from './proxy/balancer.js';
import { compileRequestPlan, compileResponsePlan, type RequestPlan, type ResponsePlan } from './proxy/headers.js';
import { compileRouter } from './router/compile.js';
import type { Router } from './router/types.js';
import { compilePipeline, type PolicyEnv } from './pipeline/compile.js';
import type { IdentityClient } from './policies/auth/client.js';
import type { Policy } from './pipeline/context.js';
import { trustedProxyList } from './policies/rate-limit/keys.js';
import { MIN_CAPACITY, RateLimitTable, createRateLimitTable } from '../common/rate-limit-layout.js';
import type { StrictStore, StrictStores } from './policies/rate-limit/strict-store.js';
import type { ResilienceEnv } from './proxy/guard.js';
import { Split } from './proxy/split.js';

export type Rewrite = ((path: string, paramNames: readonly string[], params: readonly string[]) => string) | null;

export class RouteContext {
  readonly id: string;
  readonly slot: number;
  /**
   * The upstream serving the route. A split route (`split` set): the first
   * listed upstream's, never used for a request: the handlers replace the
   * route by `split.choose(...)` (one context per listed upstream, with that
   * upstream and its header plans) before reading it.
   */
  readonly upstream: UpstreamRuntime;
  /** Header edits of server + upstream + route, compiled for `upstream`. */
  readonly requestPlan: RequestPlan;
  readonly responsePlan: ResponsePlan;
  readonly rewrite: Rewrite;
  readonly preserveHost: boolean;
  /** pathForwarding "original": forward the request target as sent (routes without a rewrite). */
  readonly forwardOriginalPath: boolean;
  readonly maxBodyBytes: number;
  /** The route's policies in order (workers/pipeline), or null: proxied as is. */
  readonly policies: Policy[] | null;
  /** routes[].retry.methods: what this route retries instead of its upstream's retry.methods (workers/proxy/retry.ts); null: the upstream's. */
  readonly retryMethods: ReadonlySet<string> | null;
  /** Query parameters removed before forwarding (an auth route's key sources, unless forwardCredentials), or null. */
  readonly stripQuery: readonly string[] | null;
  /** A traffic split (routes[].upstreams, workers/proxy/split.ts): its branches are this route for each upstream; null: one upstream. */
  split: Split<RouteContext> | null = null;

  /**
   * `parent`: this is a branch of that split route, for `upstream`: it shares
   * the parent's compiled parts (rewrite, policies) and has its own upstream
   * and header plans.
   */
  constructor(route: RouteConfig, slot: number, upstream: UpstreamRuntime, config: GatewayConfig, env: PolicyEnv, parent: RouteContext | null = null) {
    this.id = route.id;
    this.slot = slot;
    this.upstream = upstream;
    const levels = [config.server.headers, upstream.config.headers, route.headers];
    this.requestPlan = compileRequestPlan(levels, config.server.requestIdHeader, identityDrops(route, config));
    this.stripQuery = route.auth !== null && !route.auth.forwardCredentials
      ? config.identity.keys.sources.filter((s) => s.kind === 'query').map((s) => (s as { name: string }).name)
      : [];
    if (this.stripQuery.length === 0) this.stripQuery = null;
    const hsts = hstsLevel(config);
    this.responsePlan = compileResponsePlan(hsts === null ? levels : [hsts, ...levels]);
    this.rewrite = parent !== null ? parent.rewrite : compileRewrite(route);
    this.preserveHost = route.preserveHost;
    this.forwardOriginalPath = (route.pathForwarding ?? config.server.pathForwarding) === 'original';
    this.maxBodyBytes = route.maxBodyBytes ?? config.server.limits.maxBodyBytes;
    this.policies = parent !== null ? parent.policies : compilePipeline(route, slot, env);
    this.retryMethods = route.retryMethods ? new Set(route.retryMethods) : null;
  }

  /** The context of a route: with `upstreams`, a split whose branches are one context per listed upstream. */
  static of(route: RouteConfig, slot: number, upstreams: ReadonlyMap<string, UpstreamRuntime>, config: GatewayConfig, env: PolicyEnv): RouteContext {
    const list = route.upstreams;
    if (list === null) return new RouteContext(route, slot, upstreams.get(route.upstream!)!, config, env);
    const ctx = new RouteContext(route, slot, upstreams.get(list[0]!.name)!, config, env);
    const branches = list.map((u) => new RouteContext(route, slot, upstreams.get(u.name)!, config, env, ctx));
    ctx.split = new Split(list, route.hashOn, branches);
    return ctx;
  }
}

/**
 * Request headers never copied from the client for `route`: the identity
 * headers the gateway writes (on every route, so that no client can forge
 * a consumer), and on an auth route the credential's headers (unless
 * forwardCredentials; with a `subprotocol:` source, Sec-WebSocket-Protocol:
 * a tunnelled handshake offers upstream what offerUpstream() leaves).
 */
function identityDrops(route: RouteConfig, config: GatewayConfig): string[] {
  const h = config.identity.headers;
  const out = [h.consumerId, h.consumerName, h.routeId];
  if (route.auth !== null && !route.auth.forwardCredentials) {
    for (const s of config.identity.keys.sources) {
      if (s.kind === 'authorization') out.push('authorization');
      else if (s.kind === 'header') out.push(s.name);
      // A request that is not a tunnelled handshake (plain HTTP, a websocket: false route) reads no key there, but
      // its Sec-WebSocket-Protocol may still carry one: it means nothing outside a handshake, so it is not forwarded.
      else if (s.kind === 'subprotocol' && !out.includes('sec-websocket-protocol')) out.push('sec-websocket-protocol');
    }
  }
  return out;
}

/** The Strict-Transport-Security value a config sends (Dataplane.hsts): server.hsts, on a TLS listener only. */
export function gatewayHsts(config: GatewayConfig): string | null {
  const s = config.server;
  return s.tls != null && s.hsts != null ? s.hsts.value : null;
}

const NO_RULES = { add: [], set: [], remove: [] };
/**
 * HSTS on proxied responses, as the first header level (before server,
 * upstream and route rules): it replaces an upstream's own
 * Strict-Transport-Security (the gateway terminates TLS, so its policy is
 * the one that holds: Envoy's choice, not nginx's add_header, which would
 * send two), and a route or upstream rule that sets or removes the header
 * still wins over it.
 */
function hstsLevel(config: GatewayConfig): HeaderPolicy | null {
  const v = gatewayHsts(config);
  return v === null ? null : { request: NO_RULES, response: { add: [], set: [['strict-transport-security', v]], remove: [] } };
}

/** What a worker's dataplanes share across config versions. */
export interface DataplaneShared {
  /** The process's rate-limit buckets (the engine's table); null: a private scratch table (validation, tests). */
  rateLimitTable: RateLimitTable | null;
  /** This worker's metrics cells (policies count their decisions there), or null. */
  metrics: Float64Array | null;
  /** The worker's Redis connections for strict rate limits; absent outside a worker (validation, tests): none is opened. */
  strictStores?: StrictStores | null;
  /** The shared upstream state and this worker's place in it (breakers, health, p2c); absent outside a worker: private state. */
  resilience?: ResilienceEnv | null;
  /** The worker's API-key caches and line to the admin thread; absent outside a worker: every cache miss is unavailable. */
  identity?: IdentityClient | null;
}

let scratch: RateLimitTable | null = null;
/** A small private table, for compiling a config outside a worker (validation) and for tests. */
function scratchTable(): RateLimitTable {
  if (scratch === null) scratch = new RateLimitTable(createRateLimitTable(MIN_CAPACITY));
  return scratch;
}

export class Dataplane {
  readonly config: GatewayConfig;
  readonly router: Router<RouteContext>;
  readonly upstreams: Map<string, UpstreamRuntime>;
  readonly routes: RouteContext[];
  /**
   * What the forwarding headers say of the client's connection, per config
   * (no per-request work): `https` when the server listener is TLS
   * (server.tls; the redirectHttp listener proxies nothing), else `http`.
   * `xfProtoLine`: the `x-forwarded-proto` head line; `forwardedProto`: the
   * Forwarded element's `;proto=` parameter (RFC 7239 5.4).
   */
  readonly proto: 'http' | 'https';
  readonly xfProtoLine: string;
  readonly forwardedProto: string;
  /**
   * Strict-Transport-Security value (RFC 6797) for every response of this
   * config's listener, or null: server.hsts unset, or no server.tls (RFC
   * 6797 7.2: never sent over plain HTTP). Proxied responses carry it
   * through the routes' response plans (hstsLevel); the gateway's own
   * answers through the backends (uws-respond.ts setGatewayHsts, bun-server.ts).
   */
  readonly hsts: string | null;
  /** The strict rate limits' Redis connection this config holds (given back by releasePolicies), or null. */
  private strictStore: StrictStore | null = null;
  private readonly strictStores: StrictStores | null;

  /**
   * slots: route id -> metrics slot, assigned by the engine and stable across
   * reloads; a route without one counts under the overflow slot. targetSlots:
   * the same for targets, keyed `upstream target-url` (balancer.ts targetKey).
   */
  constructor(
    config: GatewayConfig, slots: ReadonlyMap<string, number>, previous: Dataplane | null = null,
    targetSlots: ReadonlyMap<string, number> | null = null, shared: DataplaneShared = { rateLimitTable: null, metrics: null },
  ) {
    this.config = config;
    this.proto = config.server.tls != null ? 'https' : 'http';
    this.xfProtoLine = 'x-forwarded-proto: ' + this.proto + '\r\n';
    this.forwardedProto = ';proto=' + this.proto;
    this.hsts = gatewayHsts(config);
    this.upstreams = new Map();
    for (const [name, u] of Object.entries(config.upstreams)) {
      // An upstream whose settings did not change keeps its runtime: its warm
      // keep-alive connections and balancer position survive the reload.
      const prev = previous?.upstreams.get(name);
      this.upstreams.set(name, prev !== undefined && JSON.stringify(prev.config) === JSON.stringify(u) ? prev : new UpstreamRuntime(u, targetSlots, shared.resilience ?? null));
    }
    const needsTable = config.routes.some((r) => r.rateLimit.length > 0);
    // A Redis connection per worker only while some route has a strict limit (strict-store.ts).
    const needsStrict = config.redis !== null && config.routes.some((r) => r.rateLimit.some((p) => p.mode === 'strict'));
    this.strictStores = shared.strictStores ?? null;
    if (needsStrict && this.strictStores !== null) this.strictStore = this.strictStores.acquire(config.redis!);
    const env: PolicyEnv = {
      rateLimit: needsTable
        ? {
          table: shared.rateLimitTable ?? scratchTable(),
          metrics: config.metrics.enabled ? shared.metrics : null,
          trusted: trustedProxyList(config.server.trustedProxies),
          strict: this.strictStore,
        }
        : null,
      auth: config.routes.some((r) => r.auth !== null)
        ? {
          client: shared.identity ?? null,
          identity: config.identity,
          metrics: config.metrics.enabled ? shared.metrics : null,
          trusted: trustedProxyList(config.server.trustedProxies),
          laterGuardMs: config.redis === null ? 0 : config.redis.commandTimeoutMs + 1_000,
        }
        : null,
    };
    shared.identity?.configure(config.identity);
    try {
      this.routes = config.routes.map((r) => RouteContext.of(r, slots.get(r.id) ?? OVERFLOW_SLOT, this.upstreams, config, env));
      this.router = compileRouter(
        config.routes.map((r, i) => ({
          id: r.id,
          host: r.host,
          path: r.path,
          methods: r.methods,
          priority: r.priority,
          match: r.match,
          data: this.routes[i]!,
        })),
      );
    } catch (err) {
      this.releasePolicies(); // a config the worker refuses must not keep a connection open
      throw err;
    }
  }

  sweepIdle(cutoff: number): void {
    for (const u of this.upstreams.values()) u.sweepIdle(cutoff);
  }

  /**
   * `next` replaces this config: each upstream runtime it replaced points at
   * its successor, so that a request still on an old runtime retries on the
   * running config's targets (UpstreamRuntime.latest). Both backends call it.
   */
  handOver(next: Dataplane): void {
    for (const [name, u] of this.upstreams) {
      const n = next.upstreams.get(name);
      if (n !== undefined && n !== u) u.successor = n;
    }
  }

  /**
   * Replaced by `next` (or shut down when null): upstreams it does not keep
   * close their idle sockets now and their busy ones when the exchange ends.
   */
  retire(next: Dataplane | null): void {
    if (next !== null) this.handOver(next);
    for (const [name, u] of this.upstreams) if (next?.upstreams.get(name) !== u) u.close();
    this.releasePolicies();
  }

  /**
   * Gives back what the policies hold beyond this config (the strict
   * limits' Redis connection: closed when no newer config uses the same
   * one). Decisions still pending finish first (QUIT). Idempotent.
   */
  releasePolicies(): void {
    const store = this.strictStore;
    if (store === null) return;
    this.strictStore = null;
    this.strictStores!.release(store);
  }
}

/**
 * Path rewrites, compiled to a small function per route. The path handed in
 * is the normalised path that was matched, so whatever the upstream receives
 * was checked by the router (no `..%2f` tricks survive a rewrite).
 */
export function compileRewrite(route: RouteConfig): Rewrite {
  const rw = route.rewrite;
  if (rw.stripPrefix !== null) {
    const prefix = rw.stripPrefix.endsWith('/') ? rw.stripPrefix.slice(0, -1) : rw.stripPrefix;
    const n = prefix.length;
    return (path) => {
      if (!path.startsWith(prefix)) return path;
      const rest = path.slice(n);
      if (rest === '') return '/';
      return rest.charCodeAt(0) === 47 ? rest : path; // only strip at a segment boundary
    };
  }
  if (rw.replacePrefix !== null) {
    const from = rw.replacePrefix.from;
    const to = rw.replacePrefix.to;
    return (path) => {
      if (!path.startsWith(from)) return path;
      const out = to + path.slice(from.length);
      return out.charCodeAt(0) === 47 ? out.replace(/\/{2,}/g, '/') : '/' + out;
    };
  }
  if (rw.template !== null) {
    // Split once into literals and parameter references: `/users/{id}` ->
    // ['/users/', 'id', '']; odd indexes are parameter names.
    const parts = rw.template.split(/\{([A-Za-z_][A-Za-z0-9_]*|\*)\}/);
    return (_path, names, values) => {
      let out = parts[0]!;
      for (let i = 1; i < parts.length; i += 2) {
        const k = names.indexOf(parts[i]!);
        out += (k === -1 ? '' : values[k]!) + parts[i + 1]!;
      }
      return out;
    };
  }
  return null;
}
