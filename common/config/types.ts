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

export type Balance = 'round_robin' | 'least_conn' | 'random' | 'ip_hash' | 'p2c';
export type Backend = 'auto' | 'uws' | 'bun';

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
  forwarded: ForwardedHeaders;
  /** Header carrying the request id; generated when absent. */
  requestIdHeader: string;
  /** Path sent upstream by routes without a rewrite (routes may override). */
  pathForwarding: PathForwarding;
  /** Addresses / CIDRs of proxies in front (rate limits by ip look behind them in X-Forwarded-For). */
  trustedProxies: readonly string[];
  headers: HeaderPolicy;
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
  /** Normalised `http://host:port` (no path). */
  url: string;
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
  upstream: string;
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
}

export type RateLimitAlgorithm = 'token_bucket' | 'gcra' | 'fixed_window' | 'sliding_window' | 'quota';
export type RateLimitKeyKind = 'ip' | 'global' | 'route' | 'header' | 'query';

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
}
