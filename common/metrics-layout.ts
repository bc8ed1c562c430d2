/**
 * Shared-memory layout of the data-plane counters.
 *
 * The engine allocates one SharedArrayBuffer per worker *slot* (so a worker
 * that is replaced after a crash keeps counting where its predecessor
 * stopped) and hands it to the worker and to the admin thread. The worker is
 * the only writer of its buffer (one cell excepted: G_SCRAPE_EPOCH, which
 * only the admin thread writes): plain Float64Array increments, no Atomics,
 * no message per request. The admin thread sums all buffers when /metrics is
 * scraped; a read that races a write sees the old or the new value of that
 * one cell, which is all Prometheus needs.
 *
 * Layout (Float64 cells):
 *   [0, GLOBAL_CELLS)                          worker-wide gauges, counters, runtime samples
 *   then SLOT_CELLS per route slot             slot 0 = "no route" (404/400...), 1 = overflow
 *   then TARGET_CELLS per target slot          slot 0 = overflow
 *
 * Route slots are assigned by route id, target slots by (upstream name,
 * target url); both stay stable across reloads (the engine keeps the maps),
 * so a counter never jumps between routes or targets.
 */

export const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'OTHER'] as const;

/**
 * Status codes counted under their own `code` label; any other code is
 * counted in its class's bucket, labelled `1xx` ... `5xx` (so `code=~"5.."`
 * still matches every 5xx). A request the client abandoned before any
 * response counts as 499, as nginx logs it.
 */
export const STATUS_CODES = [
  200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 405, 408, 413, 414, 429, 431, 499, 500, 501, 502, 503, 504,
] as const;
export const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'] as const;
/** `code` label per column: the codes above, then one bucket per class. */
export const CODE_LABELS: readonly string[] = [...STATUS_CODES.map(String), ...STATUS_CLASSES];
export const CODE_COLUMNS = CODE_LABELS.length;

/** Status (0..599) -> column; 0 (no response: the client went away) -> 499's. */
const CODE_COLUMN = new Uint8Array(600);
for (let s = 0; s < 600; s++) {
  const own = STATUS_CODES.indexOf((s === 0 ? 499 : s) as (typeof STATUS_CODES)[number]);
  CODE_COLUMN[s] = own !== -1 ? own : STATUS_CODES.length + (s >= 100 ? ((s / 100) | 0) - 1 : 4);
}
const COL_5XX = STATUS_CODES.length + 4;

/** Column of a status in the code table: one array read. */
export function codeColumn(status: number): number {
  return status >= 0 && status < 600 ? CODE_COLUMN[status]! : COL_5XX;
}

/** Seconds; the same buckets for gateway and upstream latency. */
export const DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Bytes. */
export const SIZE_BUCKETS = [100, 1000, 10_000, 100_000, 1_000_000, 10_000_000];
/** Seconds; prom-client's buckets for nodejs_gc_duration_seconds. */
export const GC_BUCKETS = [0.001, 0.01, 0.1, 1, 2, 5];
/** nodejs_gc_duration_seconds{kind}, as prom-client names them. */
export const GC_KINDS = ['major', 'minor', 'incremental', 'weakcb'] as const;

/** Error codes counted by turnpike_gateway_errors_total{reason}; index = cell offset. */
export const ERROR_CODES = [
  'bad_request', 'bad_path', 'route_not_found', 'method_not_allowed', 'body_too_large', 'url_too_long',
  'headers_too_large', 'upstream_connect_failed', 'upstream_reset', 'upstream_bad_response',
  'upstream_unavailable', 'upstream_connect_timeout', 'upstream_timeout', 'internal_error', 'shutting_down',
  'upstream_aborted', 'client_aborted', 'bad_host', 'not_implemented', 'rate_limited', 'rate_limit_store_unavailable',
  'circuit_open', 'upstream_overloaded', 'no_healthy_upstream',
  'credentials_missing', 'key_malformed', 'key_invalid', 'key_revoked', 'key_expired', 'consumer_suspended',
  'key_restricted', 'insufficient_scope', 'no_grant', 'identity_store_unavailable',
  'version_not_supported', 'too_many_websocket_connections', 'upstream_tls_failed',
] as const;

/** The errors that are a target's fault (or its saturation), counted per target too. */
export const UPSTREAM_ERROR_CODES = [
  'upstream_connect_failed', 'upstream_connect_timeout', 'upstream_reset', 'upstream_bad_response', 'upstream_timeout',
  'upstream_unavailable', 'upstream_aborted', 'upstream_tls_failed',
] as const;
/** ERROR_CODES index -> UPSTREAM_ERROR_CODES index, or -1. */
export const TARGET_ERROR_COLUMN: readonly number[] = ERROR_CODES.map((c) => (UPSTREAM_ERROR_CODES as readonly string[]).indexOf(c));

const HIST_CELLS = (n: number) => n + 1 /* +Inf */ + 2 /* sum, count */;

// -- global section -----------------------------------------------------------
export const G_IN_FLIGHT = 0;
// 1, 2: free (the upstream connection gauges are per target now).
/** Written by the admin thread at each scrape: the runtime sampler starts a new event-loop window when it changes. */
export const G_SCRAPE_EPOCH = 4;
/** 1 while this thread's event-loop delay is sampled (not on Bun). */
export const G_LOOP_SAMPLED = 5;
/** 1 while this thread's GCs are observed. */
export const G_GC_OBSERVED = 6;
/** Date.now() by which the runtime sampler's next tick is due: a loop blocked since shows as an overdue tick. */
export const G_LOOP_TICK = 7;
export const G_ERRORS = 8;
/**
 * Event-loop delay of the thread since the previous scrape, seconds, as
 * prom-client's nodejs_eventloop_lag_* gauges: lag (a setImmediate's delay
 * at the last sample), then min, max, mean, stddev, p50, p90, p99.
 */
export const G_LOOP = G_ERRORS + ERROR_CODES.length;
export const LOOP_STATS = ['', '_min', '_max', '_mean', '_stddev', '_p50', '_p90', '_p99'] as const;
/** GC durations: one histogram (GC_BUCKETS) per GC_KINDS entry. */
export const G_GC = G_LOOP + LOOP_STATS.length;
export const GC_HIST_CELLS = HIST_CELLS(GC_BUCKETS.length);
/** Rate-limit lookups that found the key's table window full (the key used its policy's overflow bucket). */
export const G_RATE_LIMIT_OVERFLOW = G_GC + GC_KINDS.length * GC_HIST_CELLS;
/**
 * API-key decisions of this worker (workers/policies/auth): answered from
 * the worker's cache, from its negative cache, after asking the admin
 * thread (a miss), and requests made with a rotated key in its grace period.
 */
export const G_AUTH_CACHE_HITS = G_RATE_LIMIT_OVERFLOW + 1;
export const G_AUTH_NEGATIVE_HITS = G_AUTH_CACHE_HITS + 1;
export const G_AUTH_CACHE_MISSES = G_AUTH_NEGATIVE_HITS + 1;
export const G_AUTH_ROTATED_KEY_REQUESTS = G_AUTH_CACHE_MISSES + 1;
/**
 * turnpike_websocket_upgrade_failures_total{reason}: upgrade requests not
 * answered 101, by the gateway error code they got (ERROR_CODES order),
 * then one cell for `upstream_refused` (the upstream answered its handshake
 * with another status, passed to the client).
 */
export const G_WS_UPGRADE_FAILURES = G_AUTH_ROTATED_KEY_REQUESTS + 1;
export const WS_UPSTREAM_REFUSED = ERROR_CODES.length;
export const WS_UPGRADE_FAILURE_REASONS: readonly string[] = [...ERROR_CODES, 'upstream_refused'];
/**
 * maxConnectionsPerKey across instances (workers/transport/websocket/cluster-count.ts), with `redis` set:
 * turnpike_websocket_per_key_decisions_total{decided_by}: upgrades decided in Redis (`redis`), refused by
 * the instance's own count without asking it (`instance_at_limit`), or decided by the instance's count
 * alone because Redis was unreachable (`fallback`), WS_PER_KEY_DECIDERS order; then two gauges of the
 * worker: 1 while it has a Redis connection for them (G_WS_PER_KEY_STORE_OPEN), 1 while that is away
 * (G_WS_PER_KEY_STORE_DOWN).
 */
export const G_WS_PER_KEY = G_WS_UPGRADE_FAILURES + WS_UPGRADE_FAILURE_REASONS.length;
export const WS_PER_KEY_DECIDERS = ['redis', 'instance_at_limit', 'fallback'] as const;
export const WS_PK_REDIS = 0;
export const WS_PK_AT_LIMIT = 1;
export const WS_PK_FALLBACK = 2;
export const G_WS_PER_KEY_STORE_OPEN = G_WS_PER_KEY + WS_PER_KEY_DECIDERS.length;
export const G_WS_PER_KEY_STORE_DOWN = G_WS_PER_KEY_STORE_OPEN + 1;
/**
 * Downstream TLS (server.tls), counted by the backends that can see
 * handshakes (the node backend: node:tls events; uWS and Bun.serve expose
 * none, see README): turnpike_tls_handshakes_total (completed) and
 * turnpike_tls_handshake_failures_total{reason} (TLS_FAILURE_REASONS order;
 * workers/transport/tls-reasons.ts tlsFailureReason maps an error to one).
 */
export const G_TLS_HANDSHAKES = G_WS_PER_KEY_STORE_DOWN + 1;
export const TLS_FAILURE_REASONS = [
  'protocol_version', 'no_shared_cipher', 'unknown_server_name', 'bad_certificate', 'timeout', 'not_tls', 'other',
] as const;
export type TlsFailureReason = (typeof TLS_FAILURE_REASONS)[number];
export const G_TLS_FAILURES = G_TLS_HANDSHAKES + 1;
export const GLOBAL_CELLS = G_TLS_FAILURES + TLS_FAILURE_REASONS.length + 4; // padded

// -- per route slot -----------------------------------------------------------
export const S_REQUESTS = 0; // [method][code column]
export const S_DURATION = S_REQUESTS + METHODS.length * CODE_COLUMNS;
export const S_REQ_SIZE = S_DURATION + HIST_CELLS(DURATION_BUCKETS.length);
export const S_RES_SIZE = S_REQ_SIZE + HIST_CELLS(SIZE_BUCKETS.length);
/**
 * turnpike_rate_limit_decisions_total{route,policy,result}: per position in
 * the route's rateLimit list (at most RATE_LIMIT_POSITIONS), per result.
 */
export const S_RATE_LIMIT = S_RES_SIZE + HIST_CELLS(SIZE_BUCKETS.length);
export const RATE_LIMIT_POSITIONS = 8;
export const RATE_LIMIT_RESULTS = ['allowed', 'limited', 'store_unavailable'] as const;
export const RL_ALLOWED = 0;
export const RL_LIMITED = 1;
export const RL_STORE_UNAVAILABLE = 2;
/**
 * WebSockets of the route (workers/transport/websocket/tunnel.ts):
 *   S_WS_OPEN      gauge: client connections open (from the 101 to the close)
 *   S_WS_MESSAGES  [direction]: messages relayed (WS_DIRECTIONS order)
 *   S_WS_BYTES     [direction]: their payload bytes (after reassembly, before any compression)
 *   S_WS_CLOSES    [close column]: client connections closed, by the code the client got
 *   S_WS_LIMITS    [limit]: limit hits (WS_LIMITS order)
 */
export const S_WS_OPEN = S_RATE_LIMIT + RATE_LIMIT_POSITIONS * RATE_LIMIT_RESULTS.length;
export const S_WS_MESSAGES = S_WS_OPEN + 1;
export const S_WS_BYTES = S_WS_MESSAGES + 2;
export const S_WS_CLOSES = S_WS_BYTES + 2;
export const WS_DIRECTIONS = ['client_to_upstream', 'upstream_to_client'] as const;
export const WS_C2U = 0;
export const WS_U2C = 1;
/**
 * Close codes counted under their own `code` label (RFC 6455 7.4.1: 1005 a
 * Close without a code, 1006 a connection lost without one); every other
 * code (1004, 1015, the 3000-4999 ones of libraries and applications) under
 * `other`.
 */
export const WS_CLOSE_CODES = [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014] as const;
export const WS_CLOSE_LABELS: readonly string[] = [...WS_CLOSE_CODES.map(String), 'other'];
const WS_CLOSE_COLUMN = new Uint8Array(1016).fill(WS_CLOSE_CODES.length);
WS_CLOSE_CODES.forEach((c, i) => { WS_CLOSE_COLUMN[c] = i; });
/** Column of a close code (0: a Close without a code, as 1005): one array read. */
export function wsCloseColumn(code: number): number {
  if (code === 0) return 4; // 1005
  return code >= 0 && code < 1016 ? WS_CLOSE_COLUMN[code]! : WS_CLOSE_CODES.length;
}
export const S_WS_LIMITS = S_WS_CLOSES + WS_CLOSE_LABELS.length;
/** turnpike_websocket_limit_hits_total{route,limit}: what each WS_L_* column counts (README, WebSockets). */
export const WS_LIMITS = ['max_message', 'messages_per_second', 'max_connections_per_key', 'backpressure', 'idle', 'ping_timeout', 'credential'] as const;
export const WS_L_MAX_MESSAGE = 0;
export const WS_L_RATE = 1;
export const WS_L_PER_KEY = 2;
export const WS_L_BACKPRESSURE = 3;
export const WS_L_IDLE = 4;
export const WS_L_PING = 5;
/** The API key that opened the tunnel was revoked, its consumer suspended, or it expired (1008; websocket/credential-watch.ts). */
export const WS_L_CREDENTIAL = 6;
export const SLOT_CELLS = S_WS_LIMITS + WS_LIMITS.length;

/** Route series kept apart; routes past this share the `_overflow` slot. */
export const DEFAULT_MAX_ROUTE_SLOTS = 1024;
export const OVERFLOW_SLOT = 1;
export const FIRST_ROUTE_SLOT = 2;

// -- per target slot ----------------------------------------------------------
export const T_REQUESTS = 0; // [code column]
/** Upstream latency (request sent -> response head), DURATION_BUCKETS. */
export const T_LATENCY = T_REQUESTS + CODE_COLUMNS;
export const T_ERRORS = T_LATENCY + HIST_CELLS(DURATION_BUCKETS.length); // [UPSTREAM_ERROR_CODES]
/** Gauges: sockets open (busy + idle + connecting) and idle keep-alive ones. */
export const T_OPEN = T_ERRORS + UPSTREAM_ERROR_CODES.length;
export const T_IDLE = T_OPEN + 1;
/** Date.now() of the last upstream error, and its ERROR_CODES index + 1 (0: none). */
export const T_LAST_ERROR_AT = T_IDLE + 1;
export const T_LAST_ERROR_CODE = T_LAST_ERROR_AT + 1;
export const TARGET_CELLS = T_LAST_ERROR_CODE + 1;

/** (upstream, target) series kept apart; targets past this share the `_overflow` slot. */
export const MAX_TARGET_SLOTS = 512;
export const TARGET_OVERFLOW_SLOT = 0;
export const FIRST_TARGET_SLOT = 1;

const TARGETS_START = GLOBAL_CELLS + DEFAULT_MAX_ROUTE_SLOTS * SLOT_CELLS;

export function metricsBufferBytes(routeSlots: number): number {
  if (routeSlots !== DEFAULT_MAX_ROUTE_SLOTS) throw new Error(`metrics layout: ${DEFAULT_MAX_ROUTE_SLOTS} route slots`);
  return (TARGETS_START + MAX_TARGET_SLOTS * TARGET_CELLS) * 8;
}

export function slotBase(slot: number): number {
  return GLOBAL_CELLS + slot * SLOT_CELLS;
}

/** First cell of a target slot (TargetPool.metricsBase). */
export function targetBase(slot: number): number {
  return TARGETS_START + slot * TARGET_CELLS;
}

/** Zeroes the gauges (a replacement worker starts with no request in flight and no socket). */
export function resetGauges(cells: Float64Array): void {
  cells[G_IN_FLIGHT] = 0;
  cells[G_LOOP_SAMPLED] = 0;
  cells[G_GC_OBSERVED] = 0;
  for (let t = 0; t < MAX_TARGET_SLOTS; t++) {
    const b = targetBase(t);
    cells[b + T_OPEN] = 0;
    cells[b + T_IDLE] = 0;
  }
  for (let r = 0; r < DEFAULT_MAX_ROUTE_SLOTS; r++) cells[slotBase(r) + S_WS_OPEN] = 0;
}

export function methodIndex(m: string): number {
  switch (m) {
    case 'GET': return 0;
    case 'HEAD': return 1;
    case 'POST': return 2;
    case 'PUT': return 3;
    case 'DELETE': return 4;
    case 'PATCH': return 5;
    case 'OPTIONS': return 6;
    default: return 7;
  }
}

/** Adds one observation to a histogram at `base` (buckets are cumulative at read time). */
export function observe(cells: Float64Array, base: number, buckets: readonly number[], v: number): void {
  let i = 0;
  const n = buckets.length;
  while (i < n && v > buckets[i]!) i++;
  cells[base + i]!++;
  cells[base + n + 1]! += v;
  cells[base + n + 2]!++;
}
