/**
 * Configuration of upstream resilience: circuit breakers, active health
 * checks and passive outlier ejection (issue 11). The schema fragments
 * (merged into schema.ts under `upstreams.<name>`), the rules a schema
 * cannot say (with the path of the problem), and the resolution into the
 * objects the data plane and the admin thread use.
 *
 *   upstreams:
 *     users:
 *       targets: [http://10.0.0.11:9001, http://10.0.0.12:9001]
 *       balance: p2c
 *       breaker: { failureThreshold: 5, openMs: 30s, fallback: { status: 503, body: '{"degraded":true}' } }
 *       healthCheck: { path: /health, intervalMs: 2s }
 *       outlierDetection: { consecutiveFailures: 5, baseEjectionMs: 30s, maxEjectionPercent: 50 }
 *
 * Each section is off when absent; `{}` turns it on with every default
 * (RESILIENCE_DEFAULTS, the one table of them).
 */
import type { BreakerConfig, HealthCheckConfig, OutlierConfig, StatusRange } from './types.js';
import { type ConfigError, type PathSegment, formatPath, isPlainObject } from './util.js';

type Obj = Record<string, unknown>;

export const RESILIENCE_DEFAULTS = Object.freeze({
  breaker: Object.freeze({
    failureThreshold: 5, // consecutive failures that open the breaker (0: off)
    failureRate: 50, // % of failures over windowMs that opens it (0: off)
    windowMs: 10_000, // 10 s
    minRequests: 20, // requests in the window before the rate counts
    slowCallMs: 0, // 0: a slow answer is not a failure
    openMs: 30_000, // 30 s open, then half-open
    maxOpenMs: 300_000, // 5 min: the open time doubles per repeated trip up to this
    halfOpenProbes: 1, // requests let through while half-open, across every worker
    maxInFlight: 10_000, // requests in flight to the upstream, every worker (0: no limit)
  }),
  fallback: Object.freeze({ status: 503, body: '' }),
  healthCheck: Object.freeze({
    path: '/health',
    intervalMs: 2_000,
    timeoutMs: 500,
    healthyThreshold: 2,
    unhealthyThreshold: 2,
    expectStatus: '200-399',
  }),
  outlierDetection: Object.freeze({
    consecutiveFailures: 5,
    baseEjectionMs: 30_000, // ejection time = baseEjectionMs x times ejected, up to max(baseEjectionMs, 300 s)
    maxEjectionPercent: 50,
  }),
});

/** Envoy's max_ejection_time default: an ejection never lasts longer than max(baseEjectionMs, this). */
export const MAX_EJECTION_MS = 300_000;
/** Longest open or ejection time accepted (24 h, as every timeout; also the shared state's bound). */
const MAX_MS = 86_400_000;
/** Largest fallback body (bytes): it is kept in every worker. */
export const MAX_FALLBACK_BODY = 65_536;

const int = (min: number, max: number, description: string, dflt: number) =>
  ({ type: 'integer', minimum: min, maximum: max, description: `${description} Default ${dflt}.`, default: dflt });
const ms = (min: number, description: string, dflt: number, extra = '') =>
  ({ type: 'integer', minimum: min, maximum: MAX_MS, description: `${description} In milliseconds (${min}..${MAX_MS}). Default ${dflt}.${extra}`, default: dflt });

const B = RESILIENCE_DEFAULTS.breaker;
const H = RESILIENCE_DEFAULTS.healthCheck;
const O = RESILIENCE_DEFAULTS.outlierDetection;

export const breakerSchema = {
  type: 'object', additionalProperties: false,
  description: 'Circuit breaker per target, shared by every worker thread: closed -> open (failureThreshold failures in a row, or failureRate % of at least minRequests requests over windowMs) -> half-open after openMs (doubled per repeated trip, up to maxOpenMs) -> closed once halfOpenProbes probes succeed, open again when one fails. A failure is a connect failure or timeout, a reset, a response timeout, a bad or aborted response, or a 5xx from the target (and a response head slower than slowCallMs when set). Also bounds the requests in flight to the upstream (maxInFlight). Absent: no breaker.',
  properties: {
    failureThreshold: int(0, 1_000_000, 'Consecutive failures of a target that open its breaker (0: only failureRate opens it).', B.failureThreshold),
    failureRate: int(0, 100, 'Failure percentage over windowMs that opens the breaker, counted once the window holds minRequests requests (0: only failureThreshold opens it).', B.failureRate),
    windowMs: ms(100, 'The failure-rate window (a sliding window: the current one plus the previous one weighted by how much of it still overlaps).', B.windowMs),
    minRequests: int(1, 1_000_000_000, 'Requests in the window before failureRate is judged.', B.minRequests),
    slowCallMs: ms(0, 'A response head slower than this counts as a failure.', B.slowCallMs, ' 0 = slowness is not a failure.'),
    openMs: ms(1, 'How long the breaker stays open before letting probes through (half-open).', B.openMs),
    maxOpenMs: ms(1, 'The open time doubles on each trip that follows a failed probe, up to this.', B.maxOpenMs),
    halfOpenProbes: int(1, 1_000, 'Requests let through while half-open, across all worker threads; all must succeed to close.', B.halfOpenProbes),
    maxInFlight: int(0, 1_000_000_000, 'Requests in flight to this upstream across all workers; past it 503 upstream_overloaded (Envoy\'s max_requests). 0 = no limit.', B.maxInFlight),
    fallback: {
      type: 'object', additionalProperties: false,
      description: 'What an open breaker answers instead of 503 circuit_open: these exact bytes. Default none.',
      properties: {
        status: int(200, 599, 'Status code.', RESILIENCE_DEFAULTS.fallback.status),
        body: { type: 'string', maxLength: MAX_FALLBACK_BODY, description: `The body, sent as its UTF-8 bytes (at most ${MAX_FALLBACK_BODY} characters). Default "" (empty).` },
        headers: {
          type: 'object', description: 'Response headers (Content-Length is written by the gateway). Default none.',
          propertyNames: { pattern: "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", errorMessage: 'must be a valid header name (letters, digits and !#$%&\'*+-.^_`|~, no spaces or colons)' },
          additionalProperties: {
            type: ['string', 'number', 'boolean'], pattern: '^[^\\u0000-\\u0008\\u000A-\\u001F\\u007F]*$',
            errorMessage: 'must not contain control characters (CR, LF, NUL, ...)', description: 'Header value.',
          },
        },
      },
    },
  },
} as const;

export const EXPECT_STATUS_PATTERN = '^[1-5][0-9]{2}(?:-[1-5][0-9]{2})?(?:,[1-5][0-9]{2}(?:-[1-5][0-9]{2})?)*$';

export const healthCheckSchema = {
  type: 'object', additionalProperties: false,
  description: 'Active health checks, sent by the admin thread (one probe per target per interval, whatever the number of workers); every worker sees the result at once. A target is unhealthy after unhealthyThreshold failed checks in a row and healthy again after healthyThreshold good ones; before its first verdict it is "unknown" and receives traffic. Absent: no active checks.',
  properties: {
    path: { type: 'string', pattern: '^/[\\x21-\\x7e]*$', maxLength: 2_048, errorMessage: 'must be a path starting with "/" (printable ASCII, no spaces)', description: `The path requested (GET) on each target. Default "${H.path}".`, default: H.path },
    intervalMs: ms(100, 'Time between two checks of a target.', H.intervalMs),
    timeoutMs: ms(1, 'A check without a response head within this is a failure (result "timeout").', H.timeoutMs),
    healthyThreshold: int(1, 100, 'Good checks in a row that make a target healthy.', H.healthyThreshold),
    unhealthyThreshold: int(1, 100, 'Failed checks in a row that make a target unhealthy.', H.unhealthyThreshold),
    expectStatus: {
      type: 'string', pattern: EXPECT_STATUS_PATTERN, errorMessage: 'must be status codes or ranges separated by commas, such as "200-399" or "200,204"',
      description: `Status codes that mean healthy: codes and ranges, comma-separated ("200-399", "200,204"). Default "${H.expectStatus}".`, default: H.expectStatus,
    },
  },
} as const;

export const outlierDetectionSchema = {
  type: 'object', additionalProperties: false,
  description: 'Passive outlier ejection from real traffic: a target with consecutiveFailures failures in a row (5xx answers, connect failures, resets, timeouts) is ejected for baseEjectionMs x the times it was ejected (up to max(baseEjectionMs, 300 s)); never more than maxEjectionPercent of the upstream\'s targets at once. Absent: no ejection.',
  properties: {
    consecutiveFailures: int(1, 1_000_000, 'Failures in a row that eject a target.', O.consecutiveFailures),
    baseEjectionMs: ms(1, 'Ejection time of a first ejection; each further ejection lasts this times the number of ejections.', O.baseEjectionMs),
    maxEjectionPercent: int(0, 100, 'The largest share of the upstream\'s targets ejected at once, rounded down (50 of 3 targets: 1).', O.maxEjectionPercent),
  },
} as const;

/** Header names a fallback may not set: the gateway writes the framing itself. */
const FRAMING = new Set(['content-length', 'transfer-encoding', 'connection', 'keep-alive', 'upgrade', 'te', 'trailer']);

/** Parses "200-399,404" (already pattern-checked); null when a range is backwards. */
export function parseExpectStatus(text: string): StatusRange[] | null {
  const out: StatusRange[] = [];
  for (const part of text.split(',')) {
    const [a, b] = part.split('-');
    const lo = Number(a);
    const hi = b === undefined ? lo : Number(b);
    if (hi < lo) return null;
    out.push({ lo, hi });
  }
  return out;
}

export function checkResilience(upstreams: unknown, out: ConfigError[]): void {
  if (!isPlainObject(upstreams)) return;
  for (const [name, up] of Object.entries(upstreams)) {
    if (!isPlainObject(up)) continue;
    const at = (...rest: PathSegment[]) => formatPath(['upstreams', name, ...rest]);
    const b = up['breaker'];
    if (isPlainObject(b)) {
      const open = typeof b['openMs'] === 'number' ? b['openMs'] : B.openMs;
      const max = typeof b['maxOpenMs'] === 'number' ? b['maxOpenMs'] : B.maxOpenMs;
      if (max < open) {
        out.push({ path: at('breaker', b['maxOpenMs'] !== undefined ? 'maxOpenMs' : 'openMs'), message: `maxOpenMs (${max}) is shorter than openMs (${open}); the open time only grows from openMs up to maxOpenMs` });
      }
      if (b['failureThreshold'] === 0 && b['failureRate'] === 0) {
        out.push({ path: at('breaker'), message: 'failureThreshold and failureRate are both 0, so the breaker could never open; set one of them (or remove breaker)' });
      }
      const fb = b['fallback'];
      if (isPlainObject(fb)) {
        const status = fb['status'];
        if ((status === 204 || status === 304) && typeof fb['body'] === 'string' && fb['body'] !== '') {
          out.push({ path: at('breaker', 'fallback', 'body'), message: `a ${status} response has no body; remove body or use another status` });
        }
        if (isPlainObject(fb['headers'])) {
          for (const h of Object.keys(fb['headers'])) {
            if (FRAMING.has(h.toLowerCase())) out.push({ path: at('breaker', 'fallback', 'headers', h), message: `"${h}" is written by the gateway (the body's length and the connection's framing); remove it` });
          }
        }
      }
    }
    const hc = up['healthCheck'];
    if (isPlainObject(hc)) {
      const interval = typeof hc['intervalMs'] === 'number' ? hc['intervalMs'] : H.intervalMs;
      const timeout = typeof hc['timeoutMs'] === 'number' ? hc['timeoutMs'] : H.timeoutMs;
      if (interval >= 100 && timeout >= 1 && timeout > interval) {
        out.push({ path: at('healthCheck', hc['timeoutMs'] !== undefined ? 'timeoutMs' : 'intervalMs'), message: `timeoutMs (${timeout}) is longer than intervalMs (${interval}); a check must end before the next one starts` });
      }
      if (typeof hc['expectStatus'] === 'string' && new RegExp(EXPECT_STATUS_PATTERN).test(hc['expectStatus']) && parseExpectStatus(hc['expectStatus']) === null) {
        out.push({ path: at('healthCheck', 'expectStatus'), message: `range ${JSON.stringify(hc['expectStatus'])} goes backwards; write the low code first ("200-399")` });
      }
    }
  }
}

function num(o: Obj, key: string, dflt: number): number {
  const v = o[key];
  return typeof v === 'number' ? v : dflt;
}

export function resolveBreaker(raw: unknown): BreakerConfig | null {
  if (!isPlainObject(raw)) return null;
  const fb = raw['fallback'];
  let fallback: BreakerConfig['fallback'] = null;
  if (isPlainObject(fb)) {
    const headers = isPlainObject(fb['headers']) ? Object.entries(fb['headers']).map(([k, v]) => [k.toLowerCase(), String(v)] as const) : [];
    fallback = { status: num(fb, 'status', RESILIENCE_DEFAULTS.fallback.status), body: typeof fb['body'] === 'string' ? fb['body'] : '', headers };
  }
  return {
    failureThreshold: num(raw, 'failureThreshold', B.failureThreshold),
    failureRate: num(raw, 'failureRate', B.failureRate),
    windowMs: num(raw, 'windowMs', B.windowMs),
    minRequests: num(raw, 'minRequests', B.minRequests),
    slowCallMs: num(raw, 'slowCallMs', B.slowCallMs),
    openMs: num(raw, 'openMs', B.openMs),
    maxOpenMs: num(raw, 'maxOpenMs', B.maxOpenMs),
    halfOpenProbes: num(raw, 'halfOpenProbes', B.halfOpenProbes),
    maxInFlight: num(raw, 'maxInFlight', B.maxInFlight),
    fallback,
  };
}

export function resolveHealthCheck(raw: unknown): HealthCheckConfig | null {
  if (!isPlainObject(raw)) return null;
  const expect = typeof raw['expectStatus'] === 'string' ? raw['expectStatus'] : H.expectStatus;
  return {
    path: typeof raw['path'] === 'string' ? raw['path'] : H.path,
    intervalMs: num(raw, 'intervalMs', H.intervalMs),
    timeoutMs: num(raw, 'timeoutMs', H.timeoutMs),
    healthyThreshold: num(raw, 'healthyThreshold', H.healthyThreshold),
    unhealthyThreshold: num(raw, 'unhealthyThreshold', H.unhealthyThreshold),
    expectStatus: parseExpectStatus(expect) ?? [{ lo: 200, hi: 399 }],
  };
}

export function resolveOutlierDetection(raw: unknown): OutlierConfig | null {
  if (!isPlainObject(raw)) return null;
  return {
    consecutiveFailures: num(raw, 'consecutiveFailures', O.consecutiveFailures),
    baseEjectionMs: num(raw, 'baseEjectionMs', O.baseEjectionMs),
    maxEjectionPercent: num(raw, 'maxEjectionPercent', O.maxEjectionPercent),
  };
}
