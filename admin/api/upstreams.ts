/**
 * GET /admin/upstreams: each upstream of the running config and each of its
 * targets, with its counters since start (as before issue 11) and its
 * resilience state now, read from the shared upstream state
 * (common/upstream-state-layout.ts): health from the active checks, the
 * circuit breaker, outlier ejection, requests in flight across every
 * worker, recent failures. Registered in endpoints.ts's table, which it
 * replaces the earlier row of. Each target also says where it comes from
 * (config, dns, registry) and, registered, when it expires.
 *
 * POST and DELETE /admin/upstreams/{name}/targets: the registry of target
 * discovery (admin/discovery/registry.ts). A registration is validated as a
 * config target is (common/config/validate.ts parseTargetUrl: http://host:port
 * only) and answered 201 (new) or 200 (a heartbeat renewing it). Not
 * audited: a heartbeat every few seconds per service would drown the audit
 * log; new registrations and deregistrations are logged at info.
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import os from 'node:os';
import type { GatewayConfig } from '../../common/config/types.js';
import type { Endpoint } from './endpoints.js';
import * as S from './schemas.js';
import type { Schema } from './schemas.js';
import { compareKeys, pageByKey } from './pagination.js';
import { AdminErrors, ApiError } from './errors.js';
import { configSchema } from '../../common/config/schema.js';
import { MAX_DISCOVERY_MS, MIN_TTL_MS } from '../../common/config/discovery.js';
import { parseTargetUrl } from '../../common/config/validate.js';
import { isPlainObject } from '../../common/config/util.js';
import { RegistryUnavailable } from '../discovery/index.js';
import type { AdminContext } from '../context.js';

const err = (description: string) => ({ description, schema: S.errorBody });
const nullable = (s: Schema, description: string): Schema => ({ anyOf: [s, { type: 'null' }], description });
const time: Schema = { type: 'string', format: 'date-time' };

const targetProps = S.upstreamTarget['properties'] as Record<string, Schema>;
/** Every balance the config accepts (the config schema's enum: one list). */
const BALANCES = [...((configSchema.definitions.upstream.properties.balance as { enum: readonly string[] }).enum)];
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
  required: [...(S.upstreamTarget['required'] as string[]), 'state', 'source', 'expiresAt'],
  properties: {
    ...targetProps,
    state: nullable(targetState, 'Resilience state, or null when the upstream tracks none (no breaker, healthCheck, outlierDetection, and not p2c).'),
    source: { type: 'string', enum: ['config', 'dns', 'registry'], description: 'Where the target comes from: the config file (targets), a DNS answer (dns) or a registration (registry). A URL in several is reported as config, then registry.' },
    expiresAt: nullable(time, 'A registered target: when its registration expires unless renewed; else null.'),
  },
  description: 'A backend server of an upstream, with its counters since start and its resilience state now.',
};

const upstreamWithState = {
  ...S.upstream,
  properties: {
    ...baseUpstream,
    targets: { type: 'array', items: targetWithState, description: 'Backend servers, with their counters and state.' },
    balance: { type: 'string', enum: BALANCES, description: 'Load-balancing policy.' },
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
              ...sourceOf(api, u.name, t.url),
            };
          }),
          balance: u.balance, timeouts: { ...u.timeouts },
        })),
        next: p.next,
      },
    };
  },
};

function sourceOf(api: AdminContext, upstream: string, url: string): { source: string; expiresAt: string | null } {
  const s = api.targetSource?.(upstream, url) ?? { source: 'config', expiresAt: null };
  return { source: s.source, expiresAt: s.expiresAt === null ? null : new Date(s.expiresAt).toISOString() };
}

// -- the registry -------------------------------------------------------------

const nameParam: Schema = { type: 'string', minLength: 1, maxLength: 128, description: 'The upstream\'s name (it must have `registry` in the config).' };

const registration: Schema = {
  type: 'object', additionalProperties: false, required: ['url'],
  description: 'A target to register, or to renew (heartbeat): the same URL again.',
  properties: {
    url: { type: 'string', minLength: 1, maxLength: 2048, description: 'http://host:port, as a config target (no https, path, query or credentials).' },
    weight: { type: 'integer', minimum: 1, maximum: 1000, default: 1, description: 'Share of requests relative to the other targets (1..1000). Default 1.' },
    ttlMs: { type: 'integer', minimum: MIN_TTL_MS, maximum: MAX_DISCOVERY_MS, description: `Lifetime of this registration from now, in milliseconds (${MIN_TTL_MS}..${MAX_DISCOVERY_MS}); renew before it runs out. Default the upstream's registry.ttlMs.` },
  },
};

const registered: Schema = {
  type: 'object', additionalProperties: false, required: ['upstream', 'url', 'weight', 'ttlMs', 'expiresAt', 'created', 'store'],
  description: 'A registration now.',
  properties: {
    upstream: { type: 'string', description: 'Upstream name.' },
    url: { type: 'string', description: 'The target, normalised (http://host:port).' },
    weight: { type: 'integer', minimum: 1, maximum: 1000, description: 'Its weight.' },
    ttlMs: { type: 'integer', minimum: MIN_TTL_MS, description: 'The TTL applied.' },
    expiresAt: { ...time, description: 'When it expires unless renewed.' },
    created: { type: 'boolean', description: 'true: a new registration (201); false: a renewal (200).' },
    store: { type: 'string', enum: ['memory', 'redis'], description: 'Where the registry lives: this instance\'s memory, or Redis (shared by every instance).' },
  },
};

const deregistered: Schema = {
  type: 'object', additionalProperties: false, required: ['upstream', 'url', 'removed'],
  description: 'A deregistration.',
  properties: {
    upstream: { type: 'string', description: 'Upstream name.' },
    url: { type: 'string', description: 'The target, normalised.' },
    removed: { type: 'boolean', enum: [true], description: 'Always true (a target that was not registered is a 404).' },
  },
};

const deregisterQuery: Schema = {
  type: 'object', additionalProperties: false, required: ['url'],
  properties: { url: { type: 'string', minLength: 1, maxLength: 2048, description: 'the registered target to remove, percent-encoded, e.g. ?url=http%3A%2F%2F10.0.0.7%3A9001' } },
};
S.SCHEMA_NAMES.set(registration, 'TargetRegistration');
S.SCHEMA_NAMES.set(registered, 'RegisteredTarget');
S.SCHEMA_NAMES.set(deregistered, 'DeregisteredTarget');

/** The upstream's registry, or the 404/409 that says why there is none. */
function registryFor(api: AdminContext, name: string) {
  const d = api.discovery;
  const r = d?.registryOf(name) ?? 'disabled';
  if (r === 'unknown') {
    const known = Object.keys(api.config().upstreams).sort();
    throw new ApiError(AdminErrors.NOT_FOUND, `No upstream ${JSON.stringify(name)}${known.length > 0 ? ` (known: ${known.join(', ')})` : ''}; register targets of an upstream of the running config.`);
  }
  if (r === 'disabled') {
    throw new ApiError(AdminErrors.CONFLICT, `Upstream ${JSON.stringify(name)} takes no registrations: it has no registry. Add "registry: {}" under upstreams.${name} in the config and reload, or register with an upstream that has one.`);
  }
  return { discovery: d!, cfg: r.cfg, store: r.registry.label === 'memory' ? 'memory' : 'redis' };
}

/**
 * Which of this gateway's listeners host:port reaches ('proxy', 'admin'),
 * or null: a registration of one would make each request come back in as
 * a new one until the pools fill (a loop), or put the admin API on the
 * public port. The host is taken as every spelling of it: a host name is
 * looked up (at most 1 s; an answer that does not come counts as not
 * local), an IPv4-mapped IPv6 address is its IPv4 address, 0.0.0.0 and ::
 * are this machine, and with a wildcard listener every local address is.
 */
async function gatewayListener(host: string, port: number, config: GatewayConfig): Promise<'proxy' | 'admin' | null> {
  const listeners: ['proxy' | 'admin', string, number][] = [['proxy', config.server.host, config.server.port]];
  if (config.admin.enabled) listeners.push(['admin', config.admin.host, config.admin.port]);
  const mine = listeners.filter(([, , p]) => p === port);
  if (mine.length === 0) return null;
  let addresses: string[];
  const h = host.endsWith('.') ? host.slice(0, -1) : host;
  if (isIP(h) !== 0) {
    addresses = [h];
  } else {
    let timer: ReturnType<typeof setTimeout> | null = null;
    const found = await Promise.race([
      lookup(h, { all: true, verbatim: true }).then((as) => as.map((a) => a.address), () => [] as string[]),
      new Promise<string[]>((r) => { timer = setTimeout(() => r([]), 1000); }),
    ]);
    if (timer !== null) clearTimeout(timer);
    addresses = found;
  }
  const local = new Set(Object.values(os.networkInterfaces()).flatMap((l) => (l ?? []).map((a) => a.address.toLowerCase())));
  for (const raw of addresses) {
    const a = unmapped(raw.toLowerCase());
    const loopback = a === '::1' || a.startsWith('127.') || a === '0.0.0.0' || a === '::';
    for (const [which, listenHost] of mine) {
      const wildcard = listenHost === '0.0.0.0' || listenHost === '::';
      if (loopback && (wildcard || listenHost === '::1' || listenHost.startsWith('127.') || listenHost === 'localhost')) return which;
      if (a === unmapped(listenHost.toLowerCase()) || (wildcard && local.has(a))) return which;
    }
  }
  return null;
}

/** `::ffff:7f00:1` or `::ffff:127.0.0.1` -> `127.0.0.1` (RFC 4291 2.5.5.2); anything else as is. */
function unmapped(a: string): string {
  const m = /^::ffff:(?:([0-9a-f]{1,4}):([0-9a-f]{1,4})|(\d+\.\d+\.\d+\.\d+))$/.exec(a);
  if (m === null) return a;
  if (m[3] !== undefined) return m[3];
  const hi = parseInt(m[1]!, 16);
  const lo = parseInt(m[2]!, 16);
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

/** The url as a config target, or a 422 naming the field. */
function targetOf(raw: string, field: string): { url: string; host: string; port: number } {
  const parsed = parseTargetUrl(raw);
  if (typeof parsed === 'string') {
    throw new ApiError(AdminErrors.INVALID_BODY, `${field}: ${parsed}`, { errors: [{ path: field, message: parsed }] });
  }
  return parsed;
}

function unavailable(err: unknown): never {
  if (err instanceof RegistryUnavailable) throw new ApiError(AdminErrors.UNAVAILABLE, `${err.message}; the targets registered so far keep serving. Try again shortly.`);
  throw err;
}

export const registerTarget: Endpoint = {
  method: 'POST', path: '/admin/upstreams/{name}/targets', operationId: 'registerTarget', tag: 'config', role: 'admin',
  params: { name: nameParam },
  summary: 'Register a target (or renew its registration)',
  description: 'Adds a target to an upstream that has `registry` in the config, for ttlMs (default registry.ttlMs); the same URL again renews it (a heartbeat: send one well within the TTL, e.g. every ttlMs/3). A registration not renewed in time expires; an expired or deregistered target is drained (no new requests, those in flight finish). Every worker serves a new target within about 250 ms (with Redis: every instance, within 1 s). The URL follows the rules of config targets. Not audited (heartbeats would drown the audit log): new registrations and removals are logged.',
  query: S.noQuery,
  body: { schema: registration, contentTypes: ['application/json'], maxBytes: 4096, description: '{"url": "http://10.0.0.7:9001", "weight": 1, "ttlMs": 30000} (weight and ttlMs optional).' },
  audit: null,
  responses: {
    200: { description: 'Renewed (a heartbeat).', schema: registered },
    201: { description: 'Registered.', schema: registered },
    400: err400('Malformed JSON (malformed_body) or a query parameter (invalid_query).'),
    401: { description: 'Missing or invalid token (answered with WWW-Authenticate: Bearer).', schema: S.errorBody },
    403: { description: 'The token has the viewer role; this endpoint needs admin.', schema: S.errorBody },
    404: { description: 'No such upstream in the running config (not_found).', schema: S.errorBody },
    409: { description: 'The upstream has no registry, or already registry.maxTargets registrations (conflict).', schema: S.errorBody },
    413: { description: 'Body above 4 KiB (body_too_large).', schema: S.errorBody },
    415: { description: 'Content type other than JSON (unsupported_media_type).', schema: S.errorBody },
    422: { description: 'Not a registration: "errors" names the field (invalid_body).', schema: S.errorBody },
    503: { description: 'The registry\'s Redis is unreachable (unavailable); registered targets keep serving.', schema: S.errorBody },
  },
  async handler({ api, params, body }) {
    const name = params['name']!;
    const { discovery, cfg, store } = registryFor(api, name);
    const problems: { path: string; message: string }[] = [];
    if (!isPlainObject(body)) {
      throw new ApiError(AdminErrors.INVALID_BODY, 'The body must be a JSON object {"url": "http://host:port", "weight"?: 1..1000, "ttlMs"?: milliseconds}.', { errors: [{ path: '', message: 'must be an object' }] });
    }
    for (const k of Object.keys(body)) if (k !== 'url' && k !== 'weight' && k !== 'ttlMs') problems.push({ path: k, message: 'unknown field (known: url, weight, ttlMs)' });
    const url = body['url'];
    if (typeof url !== 'string' || url === '') problems.push({ path: 'url', message: url === undefined ? 'required: the target, e.g. "http://10.0.0.7:9001"' : `must be a URL string (got ${JSON.stringify(url)})` });
    const weight = body['weight'] ?? 1;
    if (!Number.isInteger(weight) || (weight as number) < 1 || (weight as number) > 1000) problems.push({ path: 'weight', message: `must be a whole number from 1 to 1000 (got ${JSON.stringify(weight)})` });
    const ttlMs = body['ttlMs'] ?? cfg.ttlMs;
    if (!Number.isInteger(ttlMs) || (ttlMs as number) < MIN_TTL_MS || (ttlMs as number) > MAX_DISCOVERY_MS) problems.push({ path: 'ttlMs', message: `must be a whole number of milliseconds from ${MIN_TTL_MS} to ${MAX_DISCOVERY_MS} (got ${JSON.stringify(ttlMs)})` });
    if (typeof url === 'string' && url !== '') {
      const parsed = parseTargetUrl(url);
      if (typeof parsed === 'string') problems.push({ path: 'url', message: parsed });
      else {
        const own = await gatewayListener(parsed.host, parsed.port, api.config());
        if (own === 'proxy') problems.push({ path: 'url', message: `is this gateway's own listener (server.port ${parsed.port} on this machine): every request would loop back into the gateway; register the service's own address` });
        else if (own === 'admin') problems.push({ path: 'url', message: `is this gateway's own admin listener (admin.port ${parsed.port}): it would put the admin API on the proxy port; register the service's own address` });
      }
    }
    if (problems.length > 0) {
      throw new ApiError(AdminErrors.INVALID_BODY, `Not a registration: ${problems.map((p) => `${p.path}: ${p.message}`).join('; ')}.`, { errors: problems });
    }
    const target = targetOf(url as string, 'url');
    const r = await discovery.register(name, target, weight as number, ttlMs as number).catch(unavailable);
    if (r.kind === 'full') {
      throw new ApiError(AdminErrors.CONFLICT, `Upstream ${JSON.stringify(name)} already has ${r.count} registered targets (registry.maxTargets ${cfg.maxTargets}); deregister one, let one expire, or raise registry.maxTargets.`);
    }
    const created = r.kind === 'created';
    return {
      status: created ? 201 : 200,
      body: { upstream: name, url: target.url, weight, ttlMs, expiresAt: new Date(r.expiresAt).toISOString(), created, store },
    };
  },
};

export const deregisterTarget: Endpoint = {
  method: 'DELETE', path: '/admin/upstreams/{name}/targets', operationId: 'deregisterTarget', tag: 'config', role: 'admin',
  params: { name: nameParam },
  summary: 'Deregister a target',
  description: 'Removes a registered target at once (?url=http://host:port, percent-encoded); it is drained: no new requests, those in flight finish. Targets from the config file or DNS cannot be removed here.',
  query: deregisterQuery, body: null, audit: null,
  responses: {
    200: { description: 'Removed.', schema: deregistered },
    400: err400('A body was sent (unexpected_body), or ?url is missing, repeated or not a target URL (invalid_query, with "parameter").'),
    401: { description: 'Missing or invalid token (answered with WWW-Authenticate: Bearer).', schema: S.errorBody },
    403: { description: 'The token has the viewer role; this endpoint needs admin.', schema: S.errorBody },
    404: { description: 'No such upstream, or the URL is not registered (not_found).', schema: S.errorBody },
    409: { description: 'The upstream has no registry (conflict).', schema: S.errorBody },
    503: { description: 'The registry\'s Redis is unreachable (unavailable).', schema: S.errorBody },
  },
  async handler({ api, params, query }) {
    const name = params['name']!;
    const { discovery } = registryFor(api, name);
    const raw = query['url'];
    if (typeof raw !== 'string') {
      throw new ApiError(AdminErrors.INVALID_QUERY, 'query parameter url is required: DELETE /admin/upstreams/<name>/targets?url=http%3A%2F%2Fhost%3Aport', { parameter: 'url' });
    }
    // A query parameter: its problems are 400 invalid_query, as every query's.
    const parsed = parseTargetUrl(raw);
    if (typeof parsed === 'string') throw new ApiError(AdminErrors.INVALID_QUERY, `query parameter url: ${parsed}`, { parameter: 'url' });
    const target = parsed;
    const removed = await discovery.deregister(name, target.url).catch(unavailable);
    if (!removed) throw new ApiError(AdminErrors.NOT_FOUND, `${target.url} is not registered with upstream ${JSON.stringify(name)} (it may have expired already); GET /admin/upstreams lists the targets and their source.`);
    return { status: 200, body: { upstream: name, url: target.url, removed: true } };
  },
};

function err400(description: string) {
  return { description, schema: S.errorBody };
}
