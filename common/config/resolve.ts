/**
 * Turns a document that passed validation into the complete GatewayConfig:
 * every default filled from DEFAULTS, names lowercased where they are
 * case-insensitive, maps turned into arrays the data plane can iterate, and
 * the whole thing deep-frozen. Only called on valid input, so the casts below
 * describe what the schema already guaranteed.
 */
import { resolveBreaker, resolveHealthCheck, resolveOutlierDetection } from './resilience.js';
import os from 'node:os';
import type {
  Backend, Balance, GatewayConfig, HeaderPolicy, HeaderRules, LogConfig, LogLevel, PathForwarding, RouteConfig, TargetConfig,
  UpstreamConfig,
} from './types.js';
import { ACCESS_LOG_FIELDS, DEFAULTS, type AccessLogField } from './schema.js';
import { parseTargetUrl } from './validate.js';
import { deepFreeze, isPlainObject } from './util.js';
import { RATE_LIMIT_DEFAULTS, resolveNamedPolicies, resolveRedis, resolveRouteLimits } from './rate-limit.js';
import type { RateLimitPolicy } from './types.js';

type Obj = Record<string, unknown>;

export interface ResolveOptions {
  version: number;
  source: string;
  /** Run the built-in demo upstream on this port (embedded default config). */
  demoPort: number | null;
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

function target(raw: unknown): TargetConfig {
  const url = typeof raw === 'string' ? raw : String(obj(raw)['url']);
  const weight = typeof raw === 'string' ? DEFAULTS.upstream.weight : pick(obj(raw), 'weight', DEFAULTS.upstream.weight);
  const parsed = parseTargetUrl(url);
  if (typeof parsed === 'string') throw new Error(`resolve called on an invalid target: ${parsed}`);
  return { url: parsed.url, host: parsed.host, port: parsed.port, weight };
}

function upstream(name: string, raw: Obj): UpstreamConfig {
  const pool = obj(raw['pool']);
  const t = obj(raw['timeouts']);
  const d = DEFAULTS.upstream;
  return {
    name,
    targets: (raw['targets'] as unknown[]).map(target),
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
  };
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
    upstream: raw['upstream'] as string,
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
  };
}

function logConfig(raw: Obj): LogConfig {
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
      fields: pick<readonly AccessLogField[]>(access, 'fields', ACCESS_LOG_FIELDS),
      redactQuery: pick<readonly string[]>(access, 'redactQuery', d.access.redactQuery).map((n) => n.toLowerCase()),
    },
    errors: { burst: pick(errors, 'burst', d.errors.burst), intervalMs: pick(errors, 'intervalMs', d.errors.intervalMs) },
  };
}

export function resolveConfig(doc: Obj, opts: ResolveOptions): GatewayConfig {
  const s = obj(doc['server']);
  const limits = obj(s['limits']);
  const fwd = obj(s['forwarded']);
  const a = obj(doc['admin']);
  const d = DEFAULTS.server;
  const workers = pick<number | 'auto'>(s, 'workers', d.workers);
  // Null prototype: `upstreams[name]` must never find Object.prototype members.
  const upstreams = Object.create(null) as Record<string, UpstreamConfig>;
  for (const [name, raw] of Object.entries(obj(doc['upstreams']))) upstreams[name] = upstream(name, obj(raw));
  const named = resolveNamedPolicies(doc);
  const hasRedis = isPlainObject(doc['redis']);
  const config: GatewayConfig = {
    version: opts.version,
    source: opts.source,
    server: {
      host: pick(s, 'host', d.host),
      port: pick(s, 'port', d.port),
      workers: workers === 'auto' ? defaultWorkers() : workers,
      backend: pick<Backend>(s, 'backend', d.backend),
      drainTimeoutMs: pick(s, 'drainTimeoutMs', d.drainTimeoutMs),
      drainDelayMs: pick(s, 'drainDelayMs', d.drainDelayMs),
      healthPath: pick<string | null>(s, 'healthPath', d.healthPath),
      limits: {
        maxBodyBytes: pick(limits, 'maxBodyBytes', d.limits.maxBodyBytes),
        maxUrlBytes: pick(limits, 'maxUrlBytes', d.limits.maxUrlBytes),
        maxHeaderBytes: pick(limits, 'maxHeaderBytes', d.limits.maxHeaderBytes),
        maxHeaderCount: pick(limits, 'maxHeaderCount', d.limits.maxHeaderCount),
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
    },
    admin: {
      enabled: pick(a, 'enabled', DEFAULTS.admin.enabled),
      host: pick(a, 'host', DEFAULTS.admin.host),
      port: pick(a, 'port', DEFAULTS.admin.port),
      tokensFile: pick<string | null>(a, 'tokensFile', DEFAULTS.admin.tokensFile),
      auditLog: pick<string | null>(a, 'auditLog', DEFAULTS.admin.auditLog),
    },
    metrics: { enabled: pick(obj(doc['metrics']), 'enabled', DEFAULTS.metrics.enabled) },
    log: logConfig(obj(doc['log'])),
    upstreams,
    routes: Array.isArray(doc['routes']) ? (doc['routes'] as unknown[]).map((r) => route(obj(r), named, hasRedis)) : [],
    rateLimits: named,
    redis: resolveRedis(doc['redis']),
    rateLimitTable: {
      capacity: pick(obj(doc['rateLimitTable']), 'capacity', RATE_LIMIT_DEFAULTS.table.capacity),
      quotaFile: pick<string | null>(obj(doc['rateLimitTable']), 'quotaFile', RATE_LIMIT_DEFAULTS.table.quotaFile),
    },
    demo: opts.demoPort === null ? { enabled: false, port: 0 } : { enabled: true, port: opts.demoPort },
  };
  return deepFreeze(config);
}
