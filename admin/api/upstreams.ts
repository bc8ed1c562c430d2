/**
 * GET /admin/upstreams: each upstream of the running config and each of its
 * targets, with its counters since start (as before issue 11) and its
 * resilience state now, read from the shared upstream state
 * (common/upstream-state-layout.ts): health from the active checks, the
 * circuit breaker, outlier ejection, requests in flight across every
 * worker, recent failures. Registered in endpoints.ts's table, which it
 * replaces the earlier row of.
 */
import type { Endpoint } from './endpoints.js';
import * as S from './schemas.js';
import type { Schema } from './schemas.js';
import { compareKeys, pageByKey } from './pagination.js';

const err = (description: string) => ({ description, schema: S.errorBody });
const nullable = (s: Schema, description: string): Schema => ({ anyOf: [s, { type: 'null' }], description });
const time: Schema = { type: 'string', format: 'date-time' };

const targetProps = S.upstreamTarget['properties'] as Record<string, Schema>;
const baseUpstream = S.upstream['properties'] as Record<string, Schema>;

/** The state of a target (null for an upstream with no breaker, health check, outlier detection and not p2c: nothing is tracked). */
export const targetState: Schema = {
  type: 'object', additionalProperties: false,
  required: ['health', 'breaker', 'openUntil', 'ejectedUntil', 'inFlight', 'recentFailures', 'consecutiveFailures', 'ejections', 'trips'],
  description: 'Resilience state of the target now, shared by every worker.',
  properties: {
    health: { type: 'string', enum: ['unknown', 'healthy', 'unhealthy'], description: 'Active health checks\' verdict ("unknown": not checked, or no verdict yet; such a target receives traffic).' },
    breaker: { type: 'string', enum: ['closed', 'open', 'half_open'], description: 'Circuit breaker state ("closed" without a breaker).' },
    openUntil: nullable(time, 'Open: when it lets probes through (half-open); else null.'),
    ejectedUntil: nullable(time, 'Ejected by outlier detection: until when; else null.'),
    inFlight: { type: 'integer', minimum: 0, description: 'Requests to this target in flight now, every worker.' },
    recentFailures: { type: 'integer', minimum: 0, description: 'Failures in the breaker\'s current and previous window (breaker.windowMs, 10 s without a breaker).' },
    consecutiveFailures: { type: 'integer', minimum: 0, description: 'Failures in a row now.' },
    ejections: { type: 'integer', minimum: 0, description: 'Times ejected since start.' },
    trips: { type: 'integer', minimum: 0, description: 'Breaker trips since it last closed (the open time doubles with each).' },
  },
};

const targetWithState = {
  ...S.upstreamTarget,
  required: [...(S.upstreamTarget['required'] as string[]), 'state'],
  properties: { ...targetProps, state: nullable(targetState, 'Resilience state, or null when the upstream tracks none (no breaker, healthCheck, outlierDetection, and not p2c).') },
  description: 'A backend server of an upstream, with its counters since start and its resilience state now.',
};

const upstreamWithState = {
  ...S.upstream,
  properties: {
    ...baseUpstream,
    targets: { type: 'array', items: targetWithState, description: 'Backend servers, with their counters and state.' },
    balance: { type: 'string', enum: ['round_robin', 'least_conn', 'random', 'ip_hash', 'p2c'], description: 'Load-balancing policy.' },
  },
};

const page: Schema = {
  type: 'object', additionalProperties: false, required: ['items', 'next'],
  description: 'A page of upstreams in name order.',
  properties: {
    items: { type: 'array', items: upstreamWithState, description: 'Upstreams in name order.' },
    next: { type: ['string', 'null'], description: 'Cursor for the next page (pass it as ?cursor=); null on the last page.' },
  },
};
S.SCHEMA_NAMES.set(targetState, 'UpstreamTargetState');
S.SCHEMA_NAMES.set(targetWithState, 'UpstreamTargetWithState');
S.SCHEMA_NAMES.set(upstreamWithState, 'UpstreamWithState');
S.SCHEMA_NAMES.set(page, 'UpstreamStatePage');

export const listUpstreams: Endpoint = {
  method: 'GET', path: '/admin/upstreams', operationId: 'listUpstreams', tag: 'config', role: 'viewer',
  summary: 'Upstreams, with counters and resilience state per target',
  description: 'Upstreams of the running config in name order, cursor paginated. Each target has its counters since start, summed over the workers (requests and their status codes, upstream errors by kind, open and idle connections now, the last error with its time) and its resilience state now, shared by every worker: health (healthy, unhealthy, unknown), circuit breaker (closed, open, half_open) and when it half-opens, outlier ejection and until when, requests in flight, recent and consecutive failures.',
  query: S.pageQuery, body: null, audit: null,
  responses: { 200: { description: 'A page of upstreams.', schema: page }, 400: err('Invalid query parameter (invalid_query, with "parameter").'), 401: err('Missing or invalid token (answered with WWW-Authenticate: Bearer).') },
  handler({ api, query }) {
    const ups = Object.values(api.config().upstreams).sort((a, b) => compareKeys(a.name, b.name));
    const p = pageByKey(ups, (u) => u.name, 'upstreams', query['limit'] as number, query['cursor'] as string | undefined);
    return {
      status: 200,
      body: {
        items: p.items.map((u) => ({
          name: u.name,
          targets: u.targets.map((t) => {
            const st = api.metrics.targetStats(u.name, t.url);
            return {
              url: t.url, weight: t.weight, requests: st.requests, responses: st.responses, errors: st.errors,
              connections: { open: st.open, idle: st.idle }, lastError: st.lastError, overflow: st.overflow,
              state: api.targetState?.(u.name, t.url) ?? null,
            };
          }),
          balance: u.balance, timeouts: { ...u.timeouts },
        })),
        next: p.next,
      },
    };
  },
};
