/**
 * The admin API v1, one row per endpoint: method, path, role, the schemas of
 * its query, body and answers (schemas.ts), and its handler. The dispatcher
 * (index.ts) validates and routes from this table and openapi.ts publishes
 * it; nothing about an endpoint is written anywhere else.
 */
import { isEmptyDiff, formatChanges } from '../../common/config/diff.js';
import type { GatewayConfig } from '../../common/config/types.js';
import type { ConfigChanges, ReloadResult } from '../../common/protocol.js';
import { isLevel } from '../../common/log.js';
import { stringify as toYaml } from 'yaml';
import {
  C_DRAINING, C_RELOADS_FAILED, C_RELOADS_OK, C_RESTARTS, C_WORKER_COUNT, workerState,
} from '../../common/protocol.js';
import type { AdminContext, Percentiles } from '../context.js';
import type { AuditLog, AuditResult } from './audit.js';
import type { Principal, Role } from './auth.js';
import { AdminErrors, ApiError } from './errors.js';
import { compareKeys, decodeCursor, encodeCursor, pageByKey } from './pagination.js';
import { redact } from './redact.js';
import * as S from './schemas.js';
import type { Schema } from './schemas.js';
import { deregisterTarget, listUpstreams, registerTarget } from './upstreams.js';
import { IDENTITY_ENDPOINTS } from './identity.js';

/** Largest request body accepted (PUT /admin/config). */
export const MAX_BODY_BYTES = 1_048_576; // 1 MiB

export interface RequestContext {
  api: AdminContext;
  principal: Principal;
  /** Path parameters (`{name}` in the endpoint's path), percent-decoded. */
  params: Record<string, string>;
  /** Validated, defaults filled. */
  query: Record<string, unknown>;
  /** Parsed body (endpoints with a body). */
  body: unknown;
  audit: AuditLog;
  warnings(): string[];
  openapi(): unknown;
}

export interface HandlerResult {
  status: number;
  body: unknown;
  /** A body that is not JSON (GET /admin/config?format=file): sent as is, not checked against a schema. */
  raw?: { contentType: string; text: string };
  /** Write endpoints: what to record beyond what the dispatcher knows. */
  audit?: { result: AuditResult; dryRun: boolean; versionAfter: number; changes: ConfigChanges | null; errors: { path: string; message: string }[] };
}

export interface BodySpec {
  schema: Schema;
  /** Media types accepted (parameters such as charset ignored). */
  contentTypes: readonly string[];
  maxBytes: number;
  description: string;
  /** The body may be left out (no Content-Length or 0, no Transfer-Encoding): the handler gets `undefined`. */
  optional?: boolean;
}

export interface Endpoint {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** The path; `{name}` segments are path parameters (described in `params`). */
  path: string;
  /** Path parameters: name -> schema (with a description), for the OpenAPI document. */
  params?: Readonly<Record<string, Schema>>;
  operationId: string;
  tag: string;
  summary: string;
  description: string;
  /** Least role allowed. */
  role: Role;
  query: Schema;
  /** null: no body; a non-empty one is refused with 400 unexpected_body. */
  body: BodySpec | null;
  /** Write endpoints: the audit action. */
  audit: 'config.reload' | 'config.replace' | 'logging.update' | S.IdentityAuditAction | null;
  responses: Readonly<Record<number, { description: string; schema: Schema }>>;
  handler(rc: RequestContext): HandlerResult | Promise<HandlerResult>;
}

const err = (description: string) => ({ description, schema: S.errorBody });
const R401 = { 401: err('Missing or invalid token (answered with WWW-Authenticate: Bearer).') };
const R403 = { 403: err('The token has the viewer role; this endpoint needs admin.') };
const R400 = { 400: err('Invalid query parameter (invalid_query, with "parameter").') };


function summaryLines(c: ConfigChanges): string[] {
  return isEmptyDiff(c) ? [] : formatChanges(c).split('\n');
}

/** Shared by reload and replace: the engine's answer -> HTTP. */
function reloadAnswer(r: ReloadResult, before: GatewayConfig, dryRun: boolean): HandlerResult {
  if (!r.ok) {
    const e = new ApiError(AdminErrors.CONFIG_INVALID,
      `The configuration was refused and nothing was applied; the running config (version ${r.version}) keeps serving. ${r.errors.length} problem${r.errors.length === 1 ? '' : 's'} in "errors".`,
      { errors: r.errors });
    return {
      status: e.status, body: e.body(),
      audit: { result: 'refused', dryRun, versionAfter: r.version, changes: null, errors: r.errors },
    };
  }
  const changes = r.changes ?? { routes: { added: [], removed: [], changed: [] }, upstreams: { added: [], removed: [], changed: [] }, settings: [] };
  return {
    status: 200,
    body: { ok: true, dryRun, version: r.version, versionBefore: before.version, persisted: r.persisted, changes, summary: summaryLines(changes), warnings: r.warnings ?? [] },
    audit: { result: dryRun ? 'dry_run' : 'applied', dryRun, versionAfter: r.version, changes, errors: [] },
  };
}

/** A whole config document, as PUT /admin/config and POST /admin/config/validate take it. */
const CONFIG_BODY: BodySpec = {
  schema: S.configDocument,
  contentTypes: ['application/json', 'application/yaml', 'application/x-yaml', 'text/yaml', 'text/x-yaml'],
  maxBytes: MAX_BODY_BYTES,
  description: 'A whole config document, JSON or YAML (the config file\'s schema, `turnpike schema`). At most 1 MiB.',
};

async function replaceConfig(api: RequestContext['api'], actor: string, body: unknown, dryRun: boolean): Promise<HandlerResult> {
  const before = api.config();
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    const errors = [{ path: '', message: `the body must be a whole configuration document (a JSON object or YAML mapping), got ${Array.isArray(body) ? 'a list' : body === null ? 'null' : typeof body}` }];
    return reloadAnswer({ ok: false, version: before.version, errors, changes: null, persisted: false }, before, dryRun);
  }
  const r = await api.reload({ doc: body, dryRun, actor: `admin-api:${actor}` });
  return reloadAnswer(r, before, dryRun);
}

function ms(us: number): number {
  return Math.round(us) / 1000;
}

function toMs(p: Percentiles) {
  return { count: p.count, p50: ms(p.p50), p90: ms(p.p90), p99: ms(p.p99), p999: ms(p.p999), max: ms(p.max), mean: ms(p.mean) };
}

export const ENDPOINTS: readonly Endpoint[] = [
  {
    method: 'GET', path: '/admin/status', operationId: 'getStatus', tag: 'gateway', role: 'viewer',
    summary: 'Gateway status',
    description: 'Version, uptime, config version and source, worker states, restarts, reload counts, draining, WebSocket connections open (in all and per route), and warnings (admin-side problems; the identity store while it is down).',
    query: S.noQuery, body: null, audit: null,
    responses: { 200: { description: 'Status.', schema: S.status }, ...R400, ...R401 },
    handler({ api, warnings }) {
      const c = api.control;
      const n = Atomics.load(c, C_WORKER_COUNT);
      const workers = [];
      for (let i = 0; i < n; i++) workers.push({ index: i, state: workerState(c, i) });
      const config = api.config();
      return {
        status: 200,
        body: {
          version: api.version,
          pid: process.pid,
          startedAt: new Date(api.startedAt).toISOString(),
          uptimeSeconds: Math.max(0, Math.round((Date.now() - api.startedAt) / 100) / 10),
          config: { version: config.version, source: config.source },
          workers,
          restarts: Atomics.load(c, C_RESTARTS),
          reloads: { success: Atomics.load(c, C_RELOADS_OK), failure: Atomics.load(c, C_RELOADS_FAILED) },
          draining: Atomics.load(c, C_DRAINING) === 1,
          websockets: api.metrics.websockets(),
          // Startup and reload warnings, and the identity store's state while it is down.
          warnings: [...warnings(), ...(api.identity?.storeWarning != null ? [api.identity.storeWarning] : [])],
        },
      };
    },
  },
  {
    method: 'GET', path: '/admin/config', operationId: 'getConfig', tag: 'config', role: 'viewer',
    summary: 'Running configuration',
    description: 'format=resolved (default): the resolved configuration now serving (defaults filled in), JSON; secrets are "[redacted]" (common/config/redact.ts, the rule shared with log lines and validation messages): values of keys matching /secret|passw(or)?d|token|credential|key$|keypem$/i (so TLS private keys), of header edits and match predicates with such a name or Authorization, Proxy-Authorization, Cookie or Set-Cookie, and the credentials and secret query parameters of URLs (redis.url: redis://[redacted]@host:6379). format=file (admin role: it holds secrets unredacted): the document now serving as written, before environment and --set overrides, in the config file\'s format (application/yaml or application/json), so that it round-trips: dump it, edit it, PUT it back. YAML comments are not kept.',
    query: S.configQuery, body: null, audit: null,
    responses: {
      200: { description: 'format=resolved: the running config, redacted (JSON). format=file: the config document (YAML or JSON text).', schema: S.resolvedConfig },
      ...R400, ...R401,
      403: err('format=file needs a token with the admin role (the document holds secrets).'),
    },
    handler({ api, principal, query }) {
      if (query['format'] !== 'file') return { status: 200, body: redact(api.config()) };
      if (principal.role !== 'admin') {
        throw new ApiError(AdminErrors.FORBIDDEN, `GET /admin/config?format=file returns the document with its secrets and needs a token with the admin role; "${principal.name}" has the ${principal.role} role (format=resolved is redacted).`);
      }
      const d = api.configDocument();
      const text = d.format === 'json' ? JSON.stringify(d.document, null, 2) + '\n' : toYaml(d.document);
      return { status: 200, body: null, raw: { contentType: d.format === 'json' ? 'application/json; charset=utf-8' : 'application/yaml; charset=utf-8', text } };
    },
  },
  {
    method: 'PUT', path: '/admin/config', operationId: 'replaceConfig', tag: 'config', role: 'admin',
    summary: 'Replace the configuration',
    description: 'Validates a whole config document (environment and --set overrides still apply on top, as after a restart) and, when valid, writes it to the config file atomically and applies it to every worker; in-flight requests finish on the old config. Invalid: 422 with every problem, nothing applied. ?dryRun=true only reports what would change. Settings that need a restart (server.host/port/workers/backend, admin.host/port/enabled) are refused. Comments of a YAML config file are not kept.',
    query: S.dryRunQuery,
    body: CONFIG_BODY,
    audit: 'config.replace',
    responses: {
      200: { description: 'Applied (or, with dryRun, would apply).', schema: S.reloadResult },
      400: err('Malformed JSON or YAML (malformed_body) or invalid query parameter (invalid_query).'),
      ...R401, ...R403,
      413: err('Body above 1 MiB (body_too_large).'),
      415: err('Content type other than JSON or YAML (unsupported_media_type).'),
      422: err('Refused (config_invalid): "errors" lists every problem by path; the running config keeps serving.'),
    },
    handler({ api, principal, query, body }) {
      return replaceConfig(api, principal.name, body, query['dryRun'] === true);
    },
  },
  {
    method: 'POST', path: '/admin/config/validate', operationId: 'validateConfig', tag: 'config', role: 'viewer',
    summary: 'Check a configuration against the running one',
    description: 'What PUT /admin/config?dryRun=true answers, for read-only tokens too: validates a whole config document (with the same overrides) and reports what would change. Nothing is applied, persisted or audited.',
    query: S.noQuery,
    body: CONFIG_BODY,
    audit: null,
    responses: {
      200: { description: 'Valid; "changes" is what applying it would change (dryRun is always true).', schema: S.reloadResult },
      400: err('Malformed JSON or YAML (malformed_body) or a query parameter (invalid_query).'),
      ...R401,
      413: err('Body above 1 MiB (body_too_large).'),
      415: err('Content type other than JSON or YAML (unsupported_media_type).'),
      422: err('Invalid (config_invalid): "errors" lists every problem by path.'),
    },
    handler({ api, principal, body }) {
      return replaceConfig(api, principal.name, body, true);
    },
  },
  {
    method: 'POST', path: '/admin/config/reload', operationId: 'reloadConfig', tag: 'config', role: 'admin',
    summary: 'Reload the config file',
    description: 'Reads the config file again (as SIGHUP does) and applies it if it validates; otherwise 422 and the running config keeps serving. ?dryRun=true only reports what would change. No body.',
    query: S.dryRunQuery, body: null, audit: 'config.reload',
    responses: {
      200: { description: 'Applied (or, with dryRun, would apply).', schema: S.reloadResult },
      400: err('A body was sent (unexpected_body) or invalid query parameter (invalid_query).'),
      ...R401, ...R403,
      422: err('Refused (config_invalid): "errors" lists every problem by path; the running config keeps serving.'),
    },
    async handler({ api, principal, query }) {
      const dryRun = query['dryRun'] === true;
      const before = api.config();
      const r = await api.reload({ dryRun, actor: `admin-api:${principal.name}` });
      return reloadAnswer(r, before, dryRun);
    },
  },
  {
    method: 'GET', path: '/admin/logging', operationId: 'getLogging', tag: 'gateway', role: 'viewer',
    summary: 'Log settings',
    description: 'The gateway log level now (every thread uses the same one) and the access log settings of the running config.',
    query: S.noQuery, body: null, audit: null,
    responses: { 200: { description: 'Log settings.', schema: S.logging }, ...R400, ...R401 },
    handler({ api }) {
      const a = api.config().log.access;
      return { status: 200, body: { level: api.logLevel(), configuredLevel: api.config().log.level, access: { enabled: a.enabled, destination: a.destination, format: a.format, sampleRate: a.sampleRate } } };
    },
  },
  {
    method: 'PUT', path: '/admin/logging', operationId: 'setLogging', tag: 'gateway', role: 'admin',
    summary: 'Change the log level at runtime',
    description: 'Body {"level": "debug" | "info" | "warn" | "error"}: every thread (engine, admin, workers) logs at that level from now on, until the next reload (which applies the config\'s log.level) or restart. Audited.',
    query: S.noQuery,
    body: {
      schema: S.loggingBody,
      contentTypes: ['application/json'],
      maxBytes: 4096,
      description: '{"level": "debug" | "info" | "warn" | "error"}',
    },
    audit: 'logging.update',
    responses: {
      200: { description: 'Changed: the settings now.', schema: S.logging },
      400: err('Malformed JSON (malformed_body) or a query parameter (invalid_query).'),
      ...R401, ...R403,
      415: err('Content type other than JSON (unsupported_media_type).'),
      422: err('Not a level (invalid_body).'),
    },
    handler({ api, principal, body }) {
      const level = (body as { level?: unknown } | null)?.level;
      if (body === null || typeof body !== 'object' || Array.isArray(body) || Object.keys(body).some((k) => k !== 'level') || !isLevel(level)) {
        throw new ApiError(AdminErrors.INVALID_BODY, 'The body must be {"level": "debug" | "info" | "warn" | "error"} and nothing else.', {
          errors: [{ path: 'level', message: `must be one of debug, info, warn, error (got ${JSON.stringify(level)})` }],
        });
      }
      const before = api.config().version;
      api.setLogLevel(level, `admin-api:${principal.name}`);
      const a = api.config().log.access;
      return {
        status: 200,
        body: { level, configuredLevel: api.config().log.level, access: { enabled: a.enabled, destination: a.destination, format: a.format, sampleRate: a.sampleRate } },
        audit: { result: 'applied', dryRun: false, versionAfter: before, changes: null, errors: [] },
      };
    },
  },
  {
    method: 'GET', path: '/admin/routes', operationId: 'listRoutes', tag: 'config', role: 'viewer',
    summary: 'Routes',
    description: 'Routes of the running config in id order, cursor paginated.',
    query: S.pageQuery, body: null, audit: null,
    responses: { 200: { description: 'A page of routes.', schema: S.routePage }, ...R400, ...R401 },
    handler({ api, query }) {
      const routes = [...api.config().routes].sort((a, b) => compareKeys(a.id, b.id));
      const p = pageByKey(routes, (r) => r.id, 'routes', query['limit'] as number, query['cursor'] as string | undefined);
      return {
        status: 200,
        body: {
          items: p.items.map((r) => ({
            id: r.id, host: r.host, path: r.path, methods: [...r.methods], upstream: r.upstream,
            upstreams: r.upstreams === null
              ? null
              : r.upstreams.map((u) => ({ name: u.name, weight: u.weight, when: u.when === null ? null : { [u.when.kind]: u.when.name, equals: u.when.equals } })),
            hashOn: r.hashOn, priority: r.priority,
          })),
          next: p.next,
        },
      };
    },
  },
  listUpstreams, // admin/api/upstreams.ts: counters and resilience state per target
  registerTarget, // admin/api/upstreams.ts: the registry (discovery)
  deregisterTarget,
  {
    method: 'GET', path: '/admin/stats', operationId: 'getStats', tag: 'gateway', role: 'viewer',
    summary: 'Latency percentiles',
    description: 'HDR-histogram percentiles since start, merged across workers: gateway latency (request arrival to response end) and upstream latency (request sent to response head), in milliseconds with 3 decimals.',
    query: S.noQuery, body: null, audit: null,
    responses: { 200: { description: 'Latency.', schema: S.stats }, ...R400, ...R401 },
    async handler({ api }) {
      const l = await api.latency();
      return { status: 200, body: { unit: 'ms', workers: l.workers, gateway: toMs(l.gateway), upstream: toMs(l.upstream) } };
    },
  },
  {
    method: 'GET', path: '/admin/audit', operationId: 'listAudit', tag: 'gateway', role: 'viewer',
    summary: 'Audit log',
    description: 'Admin write attempts (applied, dry run, refused, forbidden, malformed), newest first, cursor paginated; the newest 1000 are kept in memory (read back from admin.auditLog at start).',
    query: S.pageQuery, body: null, audit: null,
    responses: { 200: { description: 'A page of audit records.', schema: S.auditPage }, ...R400, ...R401 },
    handler({ audit, query }) {
      const cursor = query['cursor'] as string | undefined;
      const before = cursor === undefined ? null : decodeCursor('audit', cursor);
      const p = audit.page(query['limit'] as number, before);
      return { status: 200, body: { items: p.records, next: p.next === null ? null : encodeCursor('audit', p.next) } };
    },
  },
  {
    method: 'GET', path: '/admin/openapi.json', operationId: 'getOpenApi', tag: 'gateway', role: 'viewer',
    summary: 'This API as OpenAPI 3.1',
    description: 'Generated from the same schema table the handlers validate with. Behind auth like every /admin endpoint (viewer is enough).',
    query: S.noQuery, body: null, audit: null,
    responses: { 200: { description: 'OpenAPI 3.1 document.', schema: S.openapiDocument }, ...R400, ...R401 },
    handler({ openapi }) {
      return { status: 200, body: openapi() };
    },
  },
  ...IDENTITY_ENDPOINTS, // admin/api/identity.ts: consumers, keys, groups, grants
];
