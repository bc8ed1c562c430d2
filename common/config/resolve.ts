/**
 * Turns a document that passed validation into the complete GatewayConfig:
 * every default filled from DEFAULTS, names lowercased where they are
 * case-insensitive, maps turned into arrays the data plane can iterate, and
 * the whole thing deep-frozen. Only called on valid input, so the casts below
 * describe what the schema already guaranteed.
 */
import { resolveBreaker, resolveHealthCheck, resolveOutlierDetection } from './resilience.js';
import { resolveDns, resolveRegistry } from './discovery.js';
import { resolveRetry, resolveRouteRetryMethods } from './retry.js';
import { resolveRouteWebSocket } from './websocket.js';
import { resolveHashOn, resolveSticky } from './balancing.js';
import { type TlsMaterial, UPSTREAM_TLS_DEFAULTS } from './tls.js';
import os from 'node:os';
import type {
  UpstreamTlsConfig,
  Backend, Balance, GatewayConfig, HeaderPolicy, HeaderRules, LogConfig, LogLevel, PathForwarding, RouteConfig, RouteUpstreamConfig, TargetConfig,
  UpstreamConfig,
} from './types.js';
import { DEFAULT_ACCESS_LOG_FIELDS, DEFAULTS, type AccessLogField } from './schema.js';
import { parseTargetUrl } from './validate.js';
import { deepFreeze, isPlainObject, nodeBackendShardable } from './util.js';
import { autoBackend } from '../runtime.js';
import { resolveAuthz, resolveIdentity, resolveRouteAuth, resolveSecrets, resolveStore } from './identity.js';
import { RATE_LIMIT_DEFAULTS, resolveNamedPolicies, resolveRedis, resolveRouteLimits } from './rate-limit.js';
import type { RateLimitPolicy } from './types.js';

type Obj = Record<string, unknown>;

export interface ResolveOptions {
  version: number;
  source: string;
  /** Run the built-in demo upstream on this port (embedded default config). */
  demoPort: number | null;
  /** The certificates and TLS settings validation loaded (common/config/tls.ts), or null: none loaded (no TLS). */
  tls?: TlsMaterial | null;
}

function obj(v: unknown): Obj {
  return isPlainObject(v) ? v : {};
}

function pick<T>(o: Obj, key: string, dflt: T): T {
  const v = o[key];
  return v === undefined ? dflt : (v as T);
}

/** `{Name: value}` -> `[['name', 'value']]` (header names are case-insensitive). */
function entries(map: unknown): Array<readonly [string, string]> {
  return Object.entries(obj(map)).map(([k, v]) => [k.toLowerCase(), String(v)] as const);
}

function rules(raw: unknown): HeaderRules {
  const r = obj(raw);
  const remove = Array.isArray(r['remove']) ? (r['remove'] as string[]).map((n) => n.toLowerCase()) : [];
  return { add: entries(r['add']), set: entries(r['set']), remove: [...new Set(remove)] };
}

function policy(raw: unknown): HeaderPolicy {
  const p = obj(raw);
  return { request: rules(p['request']), response: rules(p['response']) };
}

export function defaultWorkers(): number {
  const n = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return Math.min(256, Math.max(1, n));
}

/** server.backend as the workers run it: `auto` becomes this runtime's backend (common/runtime.ts autoBackend). */
function concreteBackend(b: Backend): Backend {
  return b === 'auto' ? autoBackend() : b;
}

function target(raw: unknown): TargetConfig {
  const url = typeof raw === 'string' ? raw : String(obj(raw)['url']);
  const weight = typeof raw === 'string' ? DEFAULTS.upstream.weight : pick(obj(raw), 'weight', DEFAULTS.upstream.weight);
  const parsed = parseTargetUrl(url);
  if (typeof parsed === 'string') throw new Error(`resolve called on an invalid target: ${parsed}`);
  return { url: parsed.url, host: parsed.host, port: parsed.port, tls: parsed.tls, weight };
}

function upstream(name: string, raw: Obj, tls: UpstreamTlsConfig): UpstreamConfig {
  const pool = obj(raw['pool']);
  const t = obj(raw['timeouts']);
  const d = DEFAULTS.upstream;
  return {
    name,
    targets: Array.isArray(raw['targets']) ? (raw['targets'] as unknown[]).map(target) : [],
    balance: pick<Balance>(raw, 'balance', d.balance),
    pool: {
      maxConnections: pick(pool, 'maxConnections', d.pool.maxConnections),
      idleTimeoutMs: pick(pool, 'idleTimeoutMs', d.pool.idleTimeoutMs),
      maxPending: pick(pool, 'maxPending', d.pool.maxPending),
    },
    timeouts: {
      connectMs: pick(t, 'connectMs', d.timeouts.connectMs),
      responseMs: pick(t, 'responseMs', d.timeouts.responseMs),
      idleMs: pick(t, 'idleMs', d.timeouts.idleMs),
      totalMs: pick(t, 'totalMs', d.timeouts.totalMs),
    },
    headers: policy(raw['headers']),
    breaker: resolveBreaker(raw['breaker']),
    healthCheck: resolveHealthCheck(raw['healthCheck']),
    outlierDetection: resolveOutlierDetection(raw['outlierDetection']),
    dns: resolveDns(raw['dns']),
    registry: resolveRegistry(raw['registry']),
    retry: resolveRetry(raw['retry']),
    hashOn: resolveHashOn(raw),
    sticky: resolveSticky(raw),
    tls,
  };
}

/** One `routes[].upstreams[]` entry; header names lowercase, values as strings (a YAML `1` is "1"). */
function splitUpstream(raw: Obj): RouteUpstreamConfig {
  const w = obj(raw['when']);
  const kind = typeof w['header'] === 'string' ? 'header' : 'cookie';
  return {
    name: raw['name'] as string,
    weight: raw['weight'] as number,
    when: raw['when'] === undefined ? null : { kind, name: kind === 'header' ? (w['header'] as string).toLowerCase() : w['cookie'] as string, equals: String(w['equals']) },
  };
}

/** `header:X-User` -> `header:x-user`; cookie names keep their case (RFC 6265 compares them exactly). */
function splitHashOn(s: string): string {
  return s.startsWith('header:') ? s.toLowerCase() : s;
}

function route(raw: Obj, named: Record<string, RateLimitPolicy>, hasRedis: boolean): RouteConfig {
  const match = obj(raw['match']);
  const rw = obj(raw['rewrite']);
  const rp = rw['replacePrefix'];
  const methods = Array.isArray(raw['methods']) ? (raw['methods'] as string[]).map((m) => m.toUpperCase()) : [];
  return {
    id: raw['id'] as string,
    host: pick(raw, 'host', DEFAULTS.route.host).toLowerCase(),
    path: raw['path'] as string,
    methods: [...new Set(methods)],
    priority: pick(raw, 'priority', DEFAULTS.route.priority),
    match: { headers: entries(match['headers']), query: Object.entries(obj(match['query'])).map(([k, v]) => [k, String(v)] as const) },
    upstream: typeof raw['upstream'] === 'string' ? raw['upstream'] : null,
    upstreams: Array.isArray(raw['upstreams']) ? (raw['upstreams'] as unknown[]).map((u) => splitUpstream(obj(u))) : null,
    hashOn: typeof raw['hashOn'] === 'string' ? splitHashOn(raw['hashOn']) : null,
    rewrite: {
      stripPrefix: typeof rw['stripPrefix'] === 'string' ? rw['stripPrefix'] : null,
      replacePrefix: isPlainObject(rp) ? { from: rp['from'] as string, to: rp['to'] as string } : null,
      template: typeof rw['template'] === 'string' ? rw['template'] : null,
    },
    preserveHost: pick(raw, 'preserveHost', DEFAULTS.route.preserveHost),
    pathForwarding: pick<PathForwarding | null>(raw, 'pathForwarding', null),
    headers: policy(raw['headers']),
    maxBodyBytes: pick<number | null>(raw, 'maxBodyBytes', null),
    rateLimit: resolveRouteLimits(raw['rateLimit'], raw['id'] as string, named, hasRedis),
    auth: resolveRouteAuth(raw['auth']),
    retryMethods: resolveRouteRetryMethods(raw['retry']),
    websocket: resolveRouteWebSocket(raw['websocket']),
  };
}

function logConfig(raw: Obj, keyParams: readonly string[] = []): LogConfig {
  const d = DEFAULTS.log;
  const access = obj(raw['access']);
  const errors = obj(raw['errors']);
  return {
    level: pick<LogLevel>(raw, 'level', d.level),
    format: pick<'json' | 'pretty' | null>(raw, 'format', null),
    access: {
      enabled: pick(access, 'enabled', d.access.enabled),
      destination: pick(access, 'destination', d.access.destination),
      format: pick<'json' | 'combined'>(access, 'format', d.access.format),
      sampleRate: pick(access, 'sampleRate', d.access.sampleRate),
      fields: pick<readonly AccessLogField[]>(access, 'fields', DEFAULT_ACCESS_LOG_FIELDS),
      // The query parameters API keys are read from (identity.keys.sources) are never logged, whatever the list says.
      redactQuery: [...new Set([...pick<readonly string[]>(access, 'redactQuery', d.access.redactQuery), ...keyParams].map((n) => n.toLowerCase()))],
    },
    errors: { burst: pick(errors, 'burst', d.errors.burst), intervalMs: pick(errors, 'intervalMs', d.errors.intervalMs) },
  };
}

export function resolveConfig(doc: Obj, opts: ResolveOptions): GatewayConfig {
  const s = obj(doc['server']);
  const limits = obj(s['limits']);
  const timeouts = obj(s['timeouts']);
  const fwd = obj(s['forwarded']);
  const a = obj(doc['admin']);
  const d = DEFAULTS.server;
  const workers = pick<number | 'auto'>(s, 'workers', d.workers);
  // Null prototype: `upstreams[name]` must never find Object.prototype members.
  const upstreams = Object.create(null) as Record<string, UpstreamConfig>;
  const material = opts.tls ?? null;
  for (const [name, raw] of Object.entries(obj(doc['upstreams']))) {
    // Registered targets may be https:// whatever the config lists: every upstream has settings for them.
    upstreams[name] = upstream(name, obj(raw), material?.upstreams.get(name) ?? UPSTREAM_TLS_DEFAULTS);
  }
  const named = resolveNamedPolicies(doc);
  const hasRedis = isPlainObject(doc['redis']);
  const config: GatewayConfig = {
    version: opts.version,
    source: opts.source,
    server: {
      host: pick(s, 'host', d.host),
      port: pick(s, 'port', d.port),
      // The node backend serves one thread under Bun (validate.ts checkNodeBackend).
      workers: workers === 'auto' ? (pick<Backend>(s, 'backend', d.backend) === 'node' && !nodeBackendShardable() ? 1 : defaultWorkers()) : workers,
      // auto: what this runtime can serve (common/runtime.ts): uws on Node 20, node on Node 22+, bun on Bun.
      backend: concreteBackend(pick<Backend>(s, 'backend', d.backend)),
      drainTimeoutMs: pick(s, 'drainTimeoutMs', d.drainTimeoutMs),
      drainDelayMs: pick(s, 'drainDelayMs', d.drainDelayMs),
      healthPath: pick<string | null>(s, 'healthPath', d.healthPath),
      limits: {
        maxBodyBytes: pick(limits, 'maxBodyBytes', d.limits.maxBodyBytes),
        maxUrlBytes: pick(limits, 'maxUrlBytes', d.limits.maxUrlBytes),
        maxHeaderBytes: pick(limits, 'maxHeaderBytes', d.limits.maxHeaderBytes),
        maxHeaderCount: pick(limits, 'maxHeaderCount', d.limits.maxHeaderCount),
      },
      timeouts: {
        headerMs: pick(timeouts, 'headerMs', d.timeouts.headerMs),
        idleMs: pick(timeouts, 'idleMs', d.timeouts.idleMs),
        bodyMs: pick(timeouts, 'bodyMs', d.timeouts.bodyMs),
      },
      forwarded: {
        xForwardedFor: pick(fwd, 'xForwardedFor', d.forwarded.xForwardedFor),
        xForwardedProtoHost: pick(fwd, 'xForwardedProtoHost', d.forwarded.xForwardedProtoHost),
        forwarded: pick(fwd, 'forwarded', d.forwarded.forwarded),
      },
      requestIdHeader: pick(s, 'requestIdHeader', d.requestIdHeader).toLowerCase(),
      pathForwarding: pick<PathForwarding>(s, 'pathForwarding', d.pathForwarding),
      trustedProxies: pick<readonly string[]>(s, 'trustedProxies', []),
      headers: policy(s['headers']),
      tls: material?.server ?? null,
      redirectHttp: material?.redirectHttp ?? null,
      hsts: material?.hsts ?? null,
    },
    admin: {
      enabled: pick(a, 'enabled', DEFAULTS.admin.enabled),
      host: pick(a, 'host', DEFAULTS.admin.host),
      port: pick(a, 'port', DEFAULTS.admin.port),
      tokensFile: pick<string | null>(a, 'tokensFile', DEFAULTS.admin.tokensFile),
      auditLog: pick<string | null>(a, 'auditLog', DEFAULTS.admin.auditLog),
    },
    metrics: { enabled: pick(obj(doc['metrics']), 'enabled', DEFAULTS.metrics.enabled) },
    log: logConfig(obj(doc['log']), resolveIdentity(doc['identity']).keys.sources.flatMap((k) => (k.kind === 'query' ? [k.name] : []))),
    upstreams,
    routes: Array.isArray(doc['routes']) ? (doc['routes'] as unknown[]).map((r) => route(obj(r), named, hasRedis)) : [],
    rateLimits: named,
    redis: resolveRedis(doc['redis']),
    rateLimitTable: {
      capacity: pick(obj(doc['rateLimitTable']), 'capacity', RATE_LIMIT_DEFAULTS.table.capacity),
      quotaFile: pick<string | null>(obj(doc['rateLimitTable']), 'quotaFile', RATE_LIMIT_DEFAULTS.table.quotaFile),
    },
    demo: opts.demoPort === null ? { enabled: false, port: 0 } : { enabled: true, port: opts.demoPort },
    store: resolveStore(doc['store']),
    secrets: resolveSecrets(doc['secrets']),
    identity: resolveIdentity(doc['identity']),
    authz: resolveAuthz(doc['authz']),
  };
  return deepFreeze(config);
}
