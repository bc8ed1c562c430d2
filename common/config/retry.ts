/**
 * Configuration of upstream retries with a budget (issue 11, "Retries"):
 * the schema fragments (merged into schema.ts under `upstreams.<name>.retry`
 * and `routes[].retry`), the rules a schema cannot say (with the path of the
 * problem) and the resolution into what the data plane uses.
 *
 *   upstreams:
 *     users:
 *       retry: { attempts: 2, on: [connect_failure, reset, "502", "503", "504"], backoffMs: 25,
 *                maxBackoffMs: 250, perTryTimeoutMs: 0, budgetPercent: 20,
 *                methods: [GET, HEAD, OPTIONS, PUT, DELETE] }
 *   routes:
 *     - { id: orders, path: /orders, upstream: users, retry: { methods: [GET, POST] } }
 *
 * `attempts` counts retries after the first try (Envoy's num_retries, Kong's
 * retries): attempts 2 = at most 3 tries. Absent: no retries; `retry: {}`:
 * every default (RETRY_DEFAULTS, the one table of them). What the words mean
 * at run time: workers/proxy/retry.ts.
 */
import type { RetryConfig } from './types.js';
import { type ConfigError, type PathSegment, formatPath, isPlainObject } from './util.js';

/** The retry conditions besides response statuses. */
export const RETRY_CONDITIONS = ['connect_failure', 'reset', 'timeout'] as const;

export const RETRY_DEFAULTS = Object.freeze({
  attempts: 2, // retries after the first try: at most 3 tries
  on: Object.freeze(['connect_failure', 'reset', '502', '503', '504']),
  backoffMs: 25, // full jitter: wait random(0, min(maxBackoffMs, backoffMs * 2^(retry-1)))
  maxBackoffMs: 250,
  perTryTimeoutMs: 0, // 0: timeouts.responseMs per try
  budgetPercent: 20, // retries <= 20 % of the upstream's requests over RETRY_BUDGET_WINDOW_MS (+ the floor)
  methods: Object.freeze(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']),
});

/** Most retries after the first try. */
export const MAX_RETRY_ATTEMPTS = 10;
/** The retry budget's sliding window (ms): retries and requests are counted over the last 10 s. */
export const RETRY_BUDGET_WINDOW_MS = 10_000;
/** Retries always allowed per budget window whatever the traffic, so a quiet upstream can still retry (Linkerd's minRetriesPerSecond, Envoy's min_retry_concurrency). */
export const RETRY_BUDGET_MIN_RETRIES = 10;
/** A request body is kept for a retry up to this many bytes (the chunks sent upstream are kept, no more); a larger body is never retried once sent. */
export const RETRY_BODY_MAX_BYTES = 64 * 1024;

const MAX_MS = 86_400_000;
const METHOD_PATTERN = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";
/** A condition: connect_failure, reset, timeout, a 5xx status ("503"; 503 unquoted is accepted too) or "5xx". */
export const RETRY_ON_PATTERN = '^(?:connect_failure|reset|timeout|5[0-9][0-9]|5xx)$';
const ON_MESSAGE = 'must be connect_failure, reset, timeout, a status from "500" to "599", or "5xx"';

const D = RETRY_DEFAULTS;
const methodsSchema = (description: string) => ({
  type: 'array', uniqueItems: true, maxItems: 32, description,
  items: { type: 'string', pattern: METHOD_PATTERN, maxLength: 32, errorMessage: 'must be an HTTP method such as GET or POST' },
});

export const retrySchema = {
  type: 'object', additionalProperties: false,
  description: `Retries of a failed try on another target, with exponential backoff and full jitter, bounded by a budget shared by every worker thread (retries <= budgetPercent % of the upstream's requests over the last ${RETRY_BUDGET_WINDOW_MS / 1000} s, plus ${RETRY_BUDGET_MIN_RETRIES} per window). Never after a response byte reached the client; a request body only when it was whole, at most ${RETRY_BODY_MAX_BYTES} bytes, and fully sent. Absent: no retries.`,
  properties: {
    attempts: {
      type: 'integer', minimum: 0, maximum: MAX_RETRY_ATTEMPTS, default: D.attempts,
      description: `Retries after the first try (attempts 2 = at most 3 tries), 0..${MAX_RETRY_ATTEMPTS}. Default ${D.attempts}.`,
    },
    on: {
      type: 'array', uniqueItems: true, minItems: 1, maxItems: 103,
      description: `When a try is retried: connect_failure (refused, unreachable, connect timeout), reset (the connection closed before a response head), timeout (no response head within perTryTimeoutMs, or responseMs), a status "500".."599" from the target, or "5xx" (any of them). Default ${JSON.stringify(D.on)}.`,
      items: {
        anyOf: [{ type: 'string', pattern: RETRY_ON_PATTERN, errorMessage: ON_MESSAGE }, { type: 'integer', minimum: 500, maximum: 599 }],
        errorMessage: ON_MESSAGE,
      },
    },
    backoffMs: {
      type: 'integer', minimum: 0, maximum: 60_000, default: D.backoffMs,
      description: `Base of the exponential backoff: before retry n the gateway waits a random time from 0 to min(maxBackoffMs, backoffMs x 2^(n-1)) (full jitter). In milliseconds (0..60000; 0 = no wait). Default ${D.backoffMs}.`,
    },
    maxBackoffMs: {
      type: 'integer', minimum: 0, maximum: 60_000, default: D.maxBackoffMs,
      description: `The longest backoff wait. In milliseconds (0..60000), at least backoffMs. Default ${D.maxBackoffMs}.`,
    },
    perTryTimeoutMs: {
      type: 'integer', minimum: 0, maximum: MAX_MS, default: D.perTryTimeoutMs,
      description: `Time from a try's request sent to its response head; past it the try fails (condition "timeout"). In milliseconds (0..${MAX_MS}). Default 0: timeouts.responseMs applies to each try. timeouts.totalMs still bounds the whole exchange.`,
    },
    budgetPercent: {
      type: 'integer', minimum: 0, maximum: 100, default: D.budgetPercent,
      description: `Retries may be at most this % of the requests sent to the upstream over the last ${RETRY_BUDGET_WINDOW_MS / 1000} s (every worker thread), plus ${RETRY_BUDGET_MIN_RETRIES} retries per window always allowed. Over it: no retry (counted). 0..100. Default ${D.budgetPercent}.`,
    },
    methods: methodsSchema(`Request methods that are retried (a route may set its own list: routes[].retry.methods). Default ${JSON.stringify(D.methods)} (the idempotent ones, RFC 9110 9.2.2).`),
  },
} as const;

export const routeRetrySchema = {
  type: 'object', additionalProperties: false, required: ['methods'],
  description: 'This route\'s retry methods, instead of its upstream\'s retry.methods (the upstream\'s retry settings apply; an upstream without retry never retries). Default: the upstream\'s.',
  properties: {
    methods: methodsSchema('Request methods retried on this route (e.g. [GET, POST] to retry a POST known to be idempotent; [] for none).'),
  },
} as const;

/** Cross-field rules (the schema has checked each field). */
export function checkRetry(doc: Record<string, unknown>, out: ConfigError[]): void {
  const upstreams = doc['upstreams'];
  if (isPlainObject(upstreams)) {
    for (const [name, up] of Object.entries(upstreams)) {
      if (!isPlainObject(up)) continue;
      const r = up['retry'];
      if (!isPlainObject(r)) continue;
      const at = (...rest: PathSegment[]) => formatPath(['upstreams', name, 'retry', ...rest]);
      const base = typeof r['backoffMs'] === 'number' ? r['backoffMs'] : D.backoffMs;
      const max = typeof r['maxBackoffMs'] === 'number' ? r['maxBackoffMs'] : D.maxBackoffMs;
      if (max < base) {
        out.push({ path: at(r['maxBackoffMs'] !== undefined ? 'maxBackoffMs' : 'backoffMs'), message: `maxBackoffMs (${max}) is shorter than backoffMs (${base}); the wait grows from backoffMs up to maxBackoffMs` });
      }
      const t = up['timeouts'];
      const total = isPlainObject(t) && typeof t['totalMs'] === 'number' ? t['totalMs'] : 0;
      const perTry = r['perTryTimeoutMs'];
      if (typeof perTry === 'number' && total > 0 && perTry >= total) {
        out.push({ path: at('perTryTimeoutMs'), message: `perTryTimeoutMs (${perTry}) is not shorter than timeouts.totalMs (${total}), so no retry could follow a timed-out try; lower it or raise totalMs` });
      }
    }
  }
  const routes = doc['routes'];
  if (!Array.isArray(routes)) return;
  routes.forEach((route, i) => {
    if (!isPlainObject(route) || !isPlainObject(route['retry'])) return;
    // The route's upstream, or every upstream of its traffic split: the override applies to those with retry.
    const split = route['upstreams'];
    const names = typeof route['upstream'] === 'string'
      ? [route['upstream']]
      : Array.isArray(split) ? split.map((e) => (isPlainObject(e) ? e['name'] : undefined)).filter((n): n is string => typeof n === 'string') : [];
    const ups = names.map((n) => (isPlainObject(upstreams) ? upstreams[n] : undefined));
    // Unknown names are reported where they are referenced.
    if (names.length === 0 || !ups.every(isPlainObject)) return;
    if (ups.every((up) => (up as Record<string, unknown>)['retry'] === undefined)) {
      const which = names.length === 1 ? `upstream "${names[0]}" has no retry section` : `none of the upstreams ${names.map((n) => `"${n}"`).join(', ')} has a retry section`;
      out.push({ path: formatPath(['routes', i, 'retry']), message: `${which}, so this route would never retry; add retry to the upstream (or remove it here)` });
    }
  });
}

function num(o: Record<string, unknown>, key: string, dflt: number): number {
  const v = o[key];
  return typeof v === 'number' ? v : dflt;
}

function methods(v: unknown, dflt: readonly string[]): readonly string[] {
  return Array.isArray(v) ? [...new Set((v as string[]).map((m) => m.toUpperCase()))] : dflt;
}

/** `upstreams.<name>.retry` as the data plane uses it, or null: no retries. */
export function resolveRetry(raw: unknown): RetryConfig | null {
  if (!isPlainObject(raw)) return null;
  const on = Array.isArray(raw['on']) ? [...new Set((raw['on'] as unknown[]).map(String))] : D.on;
  return {
    attempts: num(raw, 'attempts', D.attempts),
    on,
    backoffMs: num(raw, 'backoffMs', D.backoffMs),
    maxBackoffMs: num(raw, 'maxBackoffMs', D.maxBackoffMs),
    perTryTimeoutMs: num(raw, 'perTryTimeoutMs', D.perTryTimeoutMs),
    budgetPercent: num(raw, 'budgetPercent', D.budgetPercent),
    methods: methods(raw['methods'], D.methods),
  };
}

/** `routes[].retry.methods`, uppercase, or null: the upstream's. */
export function resolveRouteRetryMethods(raw: unknown): readonly string[] | null {
  if (!isPlainObject(raw)) return null;
  return methods(raw['methods'], []);
}
