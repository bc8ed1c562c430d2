/**
 * The resolved configuration every thread works from.
 *
 * The file a user writes (YAML or JSON, see schema.ts) is validated, merged
 * with environment and CLI overrides, filled with defaults and deep-frozen by
 * load.ts; what comes out has exactly this shape: every field present, no
 * optional lookups left for the hot path. Threads receive it by postMessage
 * (structured clone) and compile their own fast structures from it.
 */
import type { AccessLogField } from './schema.js';

export type { AccessLogField } from './schema.js';

export type Balance = 'round_robin' | 'least_conn' | 'random' | 'ip_hash' | 'p2c' | 'consistent_hash' | 'sticky';
/** server.backend: `node` is the strict node:net server (workers/transport/node/app.ts). */
export type Backend = 'auto' | 'uws' | 'bun' | 'node';

/** Header edits, applied in the order remove, set, add. Names are lowercase. */
export interface HeaderRules {
  /** Appended (a second value if the header exists). */
  add: ReadonlyArray<readonly [name: string, value: string]>;
  /** Replaces every existing value. */
  set: ReadonlyArray<readonly [name: string, value: string]>;
  remove: readonly string[];
}

export interface HeaderPolicy {
  request: HeaderRules;
  response: HeaderRules;
}

export interface Limits {
  /** Request bodies above this are refused with 413 (default 10 MiB). */
  maxBodyBytes: number;
  /** Request target (path + query) above this: 414 (default 8 KiB). */
  maxUrlBytes: number;
  /** Sum of header names + values above this: 431 (default 32 KiB). */
  maxHeaderBytes: number;
  /** More request headers than this: 431 (default 100; uWS itself closes past 48, see README). */
  maxHeaderCount: number;
}

/**
 * server.timeouts: how long the server waits on a client (the node backend,
 * workers/transport/node/app.ts; uWS has its own fixed ~10 s idle timeout,
 * Bun.serve its idleTimeout). A connection that runs out is closed without
 * an answer, as nginx does. Checked once a second.
 */
export interface ServerTimeouts {
  /** A request head must be complete this long after its first byte (slowloris; nginx client_header_timeout), ms. */
  headerMs: number;
  /** A connection with no request in progress is closed after this (nginx keepalive_timeout, Envoy idle_timeout), ms. */
  idleMs: number;
  /** The longest pause between two reads of a request body (nginx client_body_timeout), ms. */
  bodyMs: number;
}

export interface ForwardedHeaders {
  /** Append the client address to X-Forwarded-For (default true). */
  xForwardedFor: boolean;
  /** Set X-Forwarded-Proto and X-Forwarded-Host (default true). */
  xForwardedProtoHost: boolean;
  /** Also append an RFC 7239 `Forwarded` element (default false). */
  forwarded: boolean;
}

export interface ServerConfig {
  host: string;
  port: number;
  /** Resolved worker count (`auto` becomes os.availableParallelism()). */
  workers: number;
  backend: Backend;
  /** SIGTERM/SIGINT: how long in-flight requests may take before close. */
  drainTimeoutMs: number;
  /** SIGTERM/SIGINT: health checks fail this long (ms) before the listeners close. */
  drainDelayMs: number;
  /** A health endpoint on the public listener, or null (off). */
  healthPath: string | null;
  /** Idle keep-alive client connections are closed by uWS after ~10 s. */
  limits: Limits;
  /** Client timeouts of the node backend (ServerTimeouts). */
  timeouts: ServerTimeouts;
  forwarded: ForwardedHeaders;
  /** Header carrying the request id; generated when absent. */
  requestIdHeader: string;
  /** Path sent upstream by routes without a rewrite (routes may override). */
  pathForwarding: PathForwarding;
  /** Addresses / CIDRs of proxies in front (rate limits by ip look behind them in X-Forwarded-For). */
  trustedProxies: readonly string[];
  headers: HeaderPolicy;
  /** Downstream TLS (common/config/tls.ts), or null: plain HTTP. */
  tls: ServerTlsConfig | null;
  /** The plain listener that redirects to https (server.redirectHttp), or null: none. Only with tls. */
  redirectHttp: RedirectHttpConfig | null;
  /** Strict-Transport-Security on responses of the TLS listener, or null: not sent. */
  hsts: HstsConfig | null;
}

/**
 * A certificate and its key, read and checked when the config loads
 * (common/config/tls.ts): what every worker serves is exactly these bytes,
 * never a file changed on disk since (a reload reads them again).
 */
export interface TlsKeyPair {
  /** The paths as written (for messages, metrics labels and the file watch). */
  certFile: string;
  keyFile: string;
  /** PEM text: the certificate chain (leaf first) and the unencrypted private key. */
  certPem: string;
  keyPem: string;
  /** The host names of `sni[].hosts` (lowercase; `*.example.com` wildcards); [] for the default certificate. */
  hosts: readonly string[];
  /** The DNS names the leaf certificate covers (subjectAltName, or its CN without one), lowercase. */
  names: readonly string[];
  /** The leaf's notAfter, ms since the epoch (turnpike_tls_certificate_expiry_seconds). */
  notAfterMs: number;
  /** SHA-256 fingerprint of the leaf, `AB:CD:...` (what changed on a reload). */
  fingerprint256: string;
}

export type TlsVersion = 'TLSv1.2' | 'TLSv1.3';

/** server.tls. Defaults: common/config/tls.ts TLS_DEFAULTS. */
export interface ServerTlsConfig {
  /** Served to clients whose server name no `sni` entry lists (and to clients that send none). */
  default: TlsKeyPair;
  /** More certificates by server name; exact names beat wildcards beat the default. */
  sni: readonly TlsKeyPair[];
  /** true: a name no entry lists (nor the default certificate covers) fails the handshake, as does no name. */
  sniStrict: boolean;
  minVersion: TlsVersion;
  /** OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults). */
  ciphers: string;
  /** ECDH curves, OpenSSL's `:`-separated list. */
  ecdhCurve: string;
  /** ALPN protocols offered (only `http/1.1` is served). */
  alpn: readonly string[];
}

/** server.redirectHttp: a plain listener answering every request with a redirect to the https URL. */
export interface RedirectHttpConfig {
  host: string;
  port: number;
  /** The port written in Location (443 left out), or null: server.port. */
  httpsPort: number | null;
  /** 301, 302, 307 or 308 (default 308: method and body kept, RFC 9110 15.4.9). */
  status: number;
  /** Files served under /.well-known/acme-challenge/ (ACME http-01), or null: that path redirects too. */
  acmeChallengeDir: string | null;
}

/** server.hsts (RFC 6797). */
export interface HstsConfig {
  maxAge: number;
  includeSubDomains: boolean;
  preload: boolean;
  /** The header value, built once: `max-age=31536000; includeSubDomains`. */
  value: string;
}

/** upstreams.<name>.tls: how the gateway connects to its https:// targets. */
export interface UpstreamTlsConfig {
  /** PEM CA bundle to trust instead of the system's, or null: Node's bundled root CAs. */
  caPem: string | null;
  caFile: string | null;
  /** SNI and the name checked against the certificate, or null: each target's host (an IP address sends no SNI). */
  servername: string | null;
  /** Refuse a certificate that does not verify (default true). */
  rejectUnauthorized: boolean;
  /** Client certificate for mTLS, or null. */
  clientCert: TlsKeyPair | null;
  minVersion: TlsVersion;
}

/**
 * `normalized`: the path the router matched; `original`: the request target
 * exactly as the client sent it (routing still uses the normalized path).
 */
export type PathForwarding = 'normalized' | 'original';

export interface AdminConfig {
  enabled: boolean;
  host: string;
  port: number;
  /** Admin API tokens file (`name role sha256:<hex>` lines), as written; null = none. */
  tokensFile: string | null;
  /** Audit log of admin API writes (JSON lines), as written; null = `.turnpike/audit-<bound admin port>.log`. */
  auditLog: string | null;
}

export interface TargetConfig {
  /** Normalised `http://host:port` or `https://host:port` (no path). */
  url: string;
  /** An https:// target: connected to with TLS (the upstream's `tls` settings). */
  tls: boolean;
  host: string;
  port: number;
  weight: number;
}

export interface PoolConfig {
  /** Open connections per target, busy + idle (default 256). */
  maxConnections: number;
  /** Idle keep-alive connections are closed after this (default 30 s). */
  idleTimeoutMs: number;
  /** Requests waiting for a free connection per target before 503 (default 1024). */
  maxPending: number;
}

export interface TimeoutConfig {
  /** TCP connect (default 1 s) -> 504 upstream_connect_timeout. */
  connectMs: number;
  /** From request sent to response head (default 15 s) -> 504. */
  responseMs: number;
  /** Longest silence inside a response body (default 30 s) -> abort. */
  idleMs: number;
  /** Whole exchange, 0 = off (default 0). */
  totalMs: number;
}

export interface UpstreamConfig {
  name: string;
  targets: readonly TargetConfig[];
  balance: Balance;
  pool: PoolConfig;
  timeouts: TimeoutConfig;
  headers: HeaderPolicy;
  /** Circuit breaker per target and the upstream's in-flight bound (common/config/resilience.ts), or null: none. */
  breaker: BreakerConfig | null;
  /** Active health checks (admin thread), or null: none. */
  healthCheck: HealthCheckConfig | null;
  /** Passive outlier ejection, or null: none. */
  outlierDetection: OutlierConfig | null;
  /** Targets from DNS (common/config/discovery.ts; run by the admin thread), or null: none. */
  dns: DnsDiscoveryConfig | null;
  /** Targets from the registry (POST /admin/upstreams/<name>/targets, or Redis), or null: registrations refused. */
  registry: RegistryDiscoveryConfig | null;
  /** Retries with a budget (common/config/retry.ts), or null: none. */
  retry: RetryConfig | null;
  /** What balance: consistent_hash hashes (common/config/balancing.ts); null for every other balance. */
  hashOn: HashOnConfig | null;
  /** The affinity cookie of balance: sticky; null for every other balance. */
  sticky: StickyConfig | null;
  /** TLS settings for its https:// targets (common/config/tls.ts UPSTREAM_TLS_DEFAULTS when `tls` is absent). */
  tls: UpstreamTlsConfig;
}

/** Defaults: common/config/discovery.ts DISCOVERY_DEFAULTS. */
export interface DnsDiscoveryConfig {
  /** Lowercase, without a final dot. */
  name: string;
  port: number;
  refreshMs: number;
  family: 'any' | 'ipv4' | 'ipv6';
  /** `ip`, `ip:port` or `[v6]:port`; empty: the system's resolvers. */
  resolvers: readonly string[];
  timeoutMs: number;
  weight: number;
}

export interface RegistryDiscoveryConfig {
  /** TTL of a registration that gives none. */
  ttlMs: number;
  maxTargets: number;
}

/** `hashOn: ip | path | header:<name> | cookie:<name>`; name '' for ip and path, lowercase for a header. */
export interface HashOnConfig {
  source: 'ip' | 'header' | 'cookie' | 'path';
  name: string;
}

/** `sticky: { cookie, ttlMs }` (defaults tp_affinity, 1 h; ttlMs 0 = a session cookie). */
export interface StickyConfig {
  cookie: string;
  ttlMs: number;
}

/** Defaults: common/config/retry.ts RETRY_DEFAULTS. */
export interface RetryConfig {
  /** Retries after the first try (2 = at most 3 tries). */
  attempts: number;
  /** Conditions: connect_failure, reset, timeout, "500".."599", "5xx". */
  on: readonly string[];
  backoffMs: number;
  maxBackoffMs: number;
  /** 0 = timeouts.responseMs per try. */
  perTryTimeoutMs: number;
  budgetPercent: number;
  /** Uppercase methods retried. */
  methods: readonly string[];
}

/** Defaults: common/config/resilience.ts RESILIENCE_DEFAULTS. */
export interface BreakerConfig {
  failureThreshold: number;
  /** Percent, 0 = off. */
  failureRate: number;
  windowMs: number;
  minRequests: number;
  /** 0 = off. */
  slowCallMs: number;
  openMs: number;
  maxOpenMs: number;
  halfOpenProbes: number;
  /** 0 = no limit. */
  maxInFlight: number;
  fallback: { status: number; body: string; headers: ReadonlyArray<readonly [name: string, value: string]> } | null;
}

export interface StatusRange {
  lo: number;
  hi: number;
}

export interface HealthCheckConfig {
  path: string;
  intervalMs: number;
  timeoutMs: number;
  healthyThreshold: number;
  unhealthyThreshold: number;
  expectStatus: readonly StatusRange[];
}

export interface OutlierConfig {
  consecutiveFailures: number;
  baseEjectionMs: number;
  maxEjectionPercent: number;
}

export interface RewriteConfig {
  /** Remove this prefix from the matched path (`/api` + `/api/x` -> `/x`). */
  stripPrefix: string | null;
  /** Replace `from` prefix by `to`. */
  replacePrefix: { from: string; to: string } | null;
  /** Whole new path with `{param}` placeholders, e.g. `/users/{id}`. */
  template: string | null;
}

export interface RouteMatchPredicates {
  /** Exact value match per lowercase header name. */
  headers: ReadonlyArray<readonly [name: string, value: string]>;
  /** Exact value match per query parameter (decoded value). */
  query: ReadonlyArray<readonly [name: string, value: string]>;
}

export interface RouteConfig {
  id: string;
  /** `*`, `api.example.com` or `*.example.com`, lowercase. */
  host: string;
  /** Pattern: static, `:param`, `:param(regex)`, trailing `*`. */
  path: string;
  /** Uppercase methods; empty = any method. */
  methods: readonly string[];
  /** Higher wins among routes that match the same request (default 0). */
  priority: number;
  match: RouteMatchPredicates;
  /** The one upstream serving this route, or null when `upstreams` (a traffic split) is set instead. */
  upstream: string | null;
  /** A traffic split (workers/proxy/split.ts) over several upstreams, in config order, or null (then `upstream` is set). */
  upstreams: readonly RouteUpstreamConfig[] | null;
  /** What keeps a client on one upstream of the split: `ip`, `path`, `header:<name>`, `cookie:<name>` (names lowercase), or null: no key (smooth weighted round robin). */
  hashOn: string | null;
  rewrite: RewriteConfig;
  /** Send the client's Host upstream instead of the target's (default false). */
  preserveHost: boolean;
  /** Overrides server.pathForwarding for this route, null = inherit. */
  pathForwarding: PathForwarding | null;
  headers: HeaderPolicy;
  /** Overrides server.limits.maxBodyBytes for this route, null = inherit. */
  maxBodyBytes: number | null;
  /** Rate limits and quotas, in order; every one must pass (empty: none). */
  rateLimit: readonly RateLimitPolicy[];
  /** routes[].retry.methods (uppercase): this route's retried methods instead of its upstream's; null: the upstream's. */
  retryMethods: readonly string[] | null;
  /** Who may call the route (common/config/identity.ts); null: public. */
  auth: RouteAuth | null;
  /** routes[].websocket (common/config/websocket.ts): how upgrades are proxied; null: not proxied (`websocket: false`). */
  websocket: RouteWebSocket | null;
}

/** `routes[].websocket`, resolved (README, WebSocket). */
export interface RouteWebSocket {
  /** Largest message either way, bytes (close 1009 past it). */
  maxMessageBytes: number;
  /** Client messages per second per connection (messagesPerSecondAction past it); 0 = no limit. */
  messagesPerSecond: number;
  /** Past messagesPerSecond: `close` (1008) or `drop` the message. */
  messagesPerSecondAction: 'close' | 'drop';
  /** No message either way this long: close 1001; 0 = never. */
  idleTimeoutMs: number;
  /** Ping a silent client after this long; 0 = no pings. */
  pingIntervalMs: number;
  /** Open connections per (route, consumer or client address) across the workers; 0 = no limit; past it: 429. */
  maxConnectionsPerKey: number;
  /** permessage-deflate with the client. */
  compression: boolean;
  /** A reload that removes or changes the route closes its connections (1001) after this many ms; 0 = at once. */
  drainMs: number;
  /** With `redis`: lease of an instance's per-key counts in Redis, ms (renewed every third; workers/transport/websocket/cluster-count.ts). */
  perKeyLeaseMs: number;
}

/** `routes[].auth`, resolved (README, Identity). */
export interface RouteAuth {
  /** Accepted credential kinds, any one suffices: `key` (API keys) for now. */
  any: readonly 'key'[];
  /** Scopes the key must hold, every one of them (empty: none). */
  scopes: readonly string[];
  /** `required`: a grant for (consumer or one of its groups, this route, the method) must exist. */
  grants: 'required' | 'none';
  /** Forward the credential (its header or query parameter) upstream; default false: removed. */
  forwardCredentials: boolean;
}

/** Where a request's API key is read, in `identity.keys.sources` order. */
export type KeySource =
  /** `Authorization: Bearer <key>` or `Authorization: ApiKey <key>` (scheme case-insensitive). */
  | { kind: 'authorization' }
  /** A request header (lowercase name), its whole value. */
  | { kind: 'header'; name: string }
  /** A query parameter; stripped before forwarding, never logged. */
  | { kind: 'query'; name: string }
  /**
   * `subprotocol:<prefix>`: on a WebSocket upgrade only, the entry of
   * Sec-WebSocket-Protocol that starts with `prefix` (case-sensitive); the
   * rest of the entry is the key, base64url-decoded (RFC 4648 5, no
   * padding) when the prefix starts with `base64url.` (`base64url`).
   * Removed from the offer sent upstream (workers/policies/auth).
   */
  | { kind: 'subprotocol'; prefix: string; base64url: boolean };

/** `identity`, resolved: how keys are read, cached and judged (README, Identity). */
export interface IdentityConfig {
  keys: {
    sources: readonly KeySource[];
    /** The `<env>` label of keys made by this gateway (`tp_<env>_...`). */
    env: string;
  };
  /** Names (lowercase) of the headers sent upstream; incoming copies are removed on every route. */
  headers: { consumerId: string; consumerName: string; routeId: string };
  /** Per-worker caches: positive (key -> record) and negative (unknown keys). */
  cache: { size: number; ttlMs: number; negativeSize: number; negativeTtlMs: number };
  /** A cache miss waits this long for the store (through the admin thread), then 503 identity_store_unavailable. */
  lookupTimeoutMs: number;
  /** How often expired keys are removed (and logged). */
  purgeIntervalMs: number;
  /** Rotation grace when a rotate request names none. */
  rotationGraceMs: number;
  /** How often workers report keys' last use (batched into one store write). */
  lastUsedFlushMs: number;
}

/** `store`: where consumers and keys live. */
export interface StoreConfig {
  kind: 'sqlite' | 'redis';
  /** sqlite: the database file (relative to the working directory). */
  path: string;
}

/** `secrets`: references (`env:NAME`, `file:/path`), never values; absent ones are generated under .turnpike/. */
export interface SecretsRefs {
  keyPepper: string | null;
  encryptionKeys: Readonly<Record<string, string>>;
}

/** `authz`: the nginx auth_request listener (node:http, HTTP/1.0 and 1.1). */
export interface AuthzConfig {
  host: string;
  port: number;
}

/** One upstream of a route's traffic split (`routes[].upstreams[]`). */
export interface RouteUpstreamConfig {
  /** An upstream under `upstreams`. */
  name: string;
  /** Share of the route's requests relative to the other listed upstreams (0..1000); 0 = reached only through `when`. */
  weight: number;
  /** Canary override: a request that matches goes to this upstream whatever the weights; null = none. */
  when: SplitCondition | null;
}

/** `when: { header: <name>, equals: <value> }` or `when: { cookie: <name>, equals: <value> }`, resolved. */
export interface SplitCondition {
  /** Where the value is read: a request header (lowercase name) or a cookie of the Cookie header (case-sensitive name). */
  kind: 'header' | 'cookie';
  name: string;
  /** The exact value (case-sensitive) that selects the upstream. */
  equals: string;
}

export type RateLimitAlgorithm = 'token_bucket' | 'gcra' | 'fixed_window' | 'sliding_window' | 'quota';
export type RateLimitKeyKind = 'ip' | 'global' | 'route' | 'header' | 'query' | 'consumer';

/** A rate limit or quota, resolved (common/config/rate-limit.ts). */
export interface RateLimitPolicy {
  /** The name under `rateLimits`, or `<route id>#<position>` for an inline policy. */
  name: string;
  /** What its buckets mean (JSON); `tag` is its hash. A change starts the policy afresh. */
  identity: string;
  /** 32-bit hash of `identity`, never 0: the policy's buckets in the shared table and in Redis. */
  tag: number;
  by: RateLimitKeyKind;
  /** Lowercase header name (`header`) or query parameter name (`query`); null otherwise. */
  keyName: string | null;
  algorithm: RateLimitAlgorithm;
  /** Requests per `perMs` (a quota: per period). */
  rate: number;
  /** The window in ms (a quota: the period's nominal length, for headers). */
  perMs: number;
  /** token_bucket capacity / gcra requests back to back; windows: = rate. */
  burst: number;
  /** Quotas only: the calendar period; null for rate limits. */
  period: 'hour' | 'day' | 'week' | 'month' | null;
  /** Quotas: IANA time zone of the period (default UTC). */
  timeZone: string;
  /** `cluster`: shared through Redis; `local`: this instance alone (always without redis). */
  scope: 'cluster' | 'local';
  mode: 'batched' | 'strict';
  onStoreError: 'allow_local' | 'deny';
  headers: 'ietf' | 'legacy' | 'both' | 'none';
}

export interface RedisConfig {
  url: string | null;
  sentinels: readonly { host: string; port: number }[] | null;
  /** Sentinel master name. */
  name: string | null;
  cluster: readonly { host: string; port: number }[] | null;
  keyPrefix: string;
  syncIntervalMs: number;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
}

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface AccessLogConfig {
  enabled: boolean;
  /** `stdout`, `stderr` or a file path (as written in the config). */
  destination: string;
  format: 'json' | 'combined';
  /** 0..1; 5xx are always logged. */
  sampleRate: number;
  /** JSON fields in order. */
  fields: readonly AccessLogField[];
  /** Lowercase query parameter names whose values are redacted. */
  redactQuery: readonly string[];
}

export interface LogConfig {
  level: LogLevel;
  /** null: pretty on a terminal, else json. */
  format: 'json' | 'pretty' | null;
  access: AccessLogConfig;
  /** Rate limit of upstream-failure and 5xx lines, per kind and target. */
  errors: { burst: number; intervalMs: number };
}

export interface GatewayConfig {
  /** Monotonic, assigned by whoever loads the config (1 for the first). */
  version: number;
  /** Where it came from: a path, or `<embedded>`. */
  source: string;
  server: ServerConfig;
  admin: AdminConfig;
  metrics: { enabled: boolean };
  log: LogConfig;
  upstreams: Readonly<Record<string, UpstreamConfig>>;
  routes: readonly RouteConfig[];
  /** Named rate limits (routes hold the resolved objects). */
  rateLimits: Readonly<Record<string, RateLimitPolicy>>;
  /** null: no Redis (one instance; every limit local). */
  redis: RedisConfig | null;
  /**
   * The shared bucket table (capacity is read at start only) and the file
   * local quotas are kept in (null: `.turnpike/quotas-<server port>.json`).
   */
  rateLimitTable: { capacity: number; quotaFile: string | null };
  /** Run the built-in demo upstream (the embedded default config only). */
  demo: { enabled: boolean; port: number };
  store: StoreConfig;
  secrets: SecretsRefs;
  identity: IdentityConfig;
  /** null: no auth_request listener. */
  authz: AuthzConfig | null;
}
