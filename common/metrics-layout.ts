/**
 * Shared-memory layout of the data-plane counters.
 *
 * The engine allocates one SharedArrayBuffer per worker *slot* (so a worker
 * that is replaced after a crash keeps counting where its predecessor
 * stopped) and hands it to the worker and to the admin thread. The worker is
 * the only writer of its buffer: plain Float64Array increments, no Atomics,
 * no message per request. The admin thread sums all buffers when /metrics is
 * scraped; a read that races a write sees the old or the new value of that
 * one cell, which is all Prometheus needs.
 *
 * Layout (Float64 cells):
 *   [0, GLOBAL_CELLS)                       worker-wide gauges and counters
 *   then SLOT_CELLS per route slot          slot 0 = "no route" (404/400...)
 *
 * Route slots are assigned by route id and stay stable across reloads (the
 * engine keeps the id -> slot map), so a counter never jumps between routes.
 */

export const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'OTHER'] as const;
export const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'] as const;

/** Seconds; the same buckets for gateway and upstream latency. */
export const DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Bytes. */
export const SIZE_BUCKETS = [100, 1000, 10_000, 100_000, 1_000_000, 10_000_000];

/** Error codes counted by turnpike_errors_total{code}; index = cell offset. */
export const ERROR_CODES = [
  'bad_request', 'bad_path', 'route_not_found', 'method_not_allowed', 'body_too_large', 'url_too_long',
  'headers_too_large', 'upstream_connect_failed', 'upstream_reset', 'upstream_bad_response',
  'upstream_unavailable', 'upstream_connect_timeout', 'upstream_timeout', 'internal_error', 'shutting_down',
  'upstream_aborted', 'client_aborted', 'bad_host', 'not_implemented',
] as const;

// -- global section -----------------------------------------------------------
export const G_IN_FLIGHT = 0;
export const G_UPSTREAM_OPEN = 1;
export const G_UPSTREAM_IDLE = 2;
/** Access log lines dropped because the destination could not keep up or failed (a running total). */
export const G_ACCESS_LOG_DROPPED = 3;
export const G_ERRORS = 8;
export const GLOBAL_CELLS = G_ERRORS + ERROR_CODES.length + 7; // padded

// -- per route slot -----------------------------------------------------------
const HIST_CELLS = (n: number) => n + 1 /* +Inf */ + 2 /* sum, count */;
export const S_REQUESTS = 0; // [method][class]
export const S_DURATION = S_REQUESTS + METHODS.length * STATUS_CLASSES.length;
export const S_UPSTREAM = S_DURATION + HIST_CELLS(DURATION_BUCKETS.length);
export const S_REQ_SIZE = S_UPSTREAM + HIST_CELLS(DURATION_BUCKETS.length);
export const S_RES_SIZE = S_REQ_SIZE + HIST_CELLS(SIZE_BUCKETS.length);
export const SLOT_CELLS = S_RES_SIZE + HIST_CELLS(SIZE_BUCKETS.length);

/** Route series kept apart; routes past this share the `_overflow` slot. */
export const DEFAULT_MAX_ROUTE_SLOTS = 1024;
export const OVERFLOW_SLOT = 1;
export const FIRST_ROUTE_SLOT = 2;

export function metricsBufferBytes(slots: number): number {
  return (GLOBAL_CELLS + slots * SLOT_CELLS) * 8;
}

export function slotBase(slot: number): number {
  return GLOBAL_CELLS + slot * SLOT_CELLS;
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
