/**
 * JSON Schemas of the admin API's requests and responses, written once.
 * The endpoint table (endpoints.ts) points at these objects; the dispatcher
 * validates query strings (and, in test mode, every response) against them
 * with Ajv, and openapi.ts publishes the very same objects, so the document
 * cannot drift from what the handlers accept and return.
 *
 * They use the keywords common to draft-07 (what Ajv runs) and JSON Schema
 * 2020-12 (what OpenAPI 3.1 speaks). `named()` gives a schema a component
 * name: openapi.ts puts it under components/schemas and refers to it there.
 */
import { configSchema } from '../../common/config/schema.js';
import { ADMIN_ERROR_CODES } from './errors.js';
import { FIRST_TARGET_SLOT, MAX_TARGET_SLOTS, UPSTREAM_ERROR_CODES } from '../../common/metrics-layout.js';

export type Schema = Record<string, unknown>;

/** Schema object -> component name (identity, not equality). */
export const SCHEMA_NAMES = new Map<object, string>();

function named<T extends object>(name: string, schema: T): T {
  SCHEMA_NAMES.set(schema, name);
  return schema;
}

const int = (description: string, minimum = 0): Schema => ({ type: 'integer', minimum, description });
const str = (description: string): Schema => ({ type: 'string', description });
const strings = (description: string): Schema => ({ type: 'array', items: { type: 'string' }, description });

function object(properties: Record<string, Schema>, description?: string, optional: readonly string[] = []): Schema {
  return {
    type: 'object',
    additionalProperties: false,
    required: Object.keys(properties).filter((k) => !optional.includes(k)),
    properties,
    ...(description !== undefined ? { description } : {}),
  };
}

// -- query parameters ---------------------------------------------------------

export const PAGE_LIMIT_MAX = 1000;
export const PAGE_LIMIT_DEFAULT = 50;

const limitParam: Schema = {
  type: 'integer', minimum: 1, maximum: PAGE_LIMIT_MAX, default: PAGE_LIMIT_DEFAULT,
  description: `Page size (1..${PAGE_LIMIT_MAX}). Default ${PAGE_LIMIT_DEFAULT}.`,
};
const cursorParam: Schema = {
  type: 'string', minLength: 1, maxLength: 1024,
  description: 'Opaque cursor: the "next" value of the previous page. Absent: the first page.',
};
const dryRunParam: Schema = {
  type: 'boolean', default: false,
  description: 'true: validate and report what would change; nothing is applied or written. Default false.',
};

export const pageQuery: Schema = { type: 'object', additionalProperties: false, properties: { limit: limitParam, cursor: cursorParam } };
export const dryRunQuery: Schema = { type: 'object', additionalProperties: false, properties: { dryRun: dryRunParam } };
export const noQuery: Schema = { type: 'object', additionalProperties: false, properties: {} };
export const configQuery: Schema = {
  type: 'object', additionalProperties: false,
  properties: {
    format: {
      type: 'string', enum: ['resolved', 'file'], default: 'resolved',
      description: 'resolved: the resolved config, redacted (JSON). file: the document as written, in the config file\'s format (admin role). Default resolved.',
    },
  },
};

// -- shared pieces ------------------------------------------------------------

const configProblem = named('ConfigProblem', object({
  path: str('Where, e.g. "routes[2].upstream"; "" for the document as a whole.'),
  message: str('What is wrong and how to fix it.'),
}, 'One problem with a configuration.'));

export const errorBody = named('Error', object({
  error: object({
    code: { type: 'string', enum: [...ADMIN_ERROR_CODES], description: 'Stable machine-readable code.' },
    message: str('What went wrong and what to do next.'),
    parameter: str('invalid_query: the query parameter at fault.'),
    errors: { type: 'array', items: configProblem, description: 'config_invalid: every problem, by path.' },
  }, undefined, ['parameter', 'errors']),
}, 'Error answer, the gateway\'s format.'));

const changeSet = (what: string): Schema => object({
  added: strings(`${what} added.`),
  removed: strings(`${what} removed.`),
  changed: strings(`${what} changed.`),
});

export const configChanges = named('ConfigChanges', object({
  routes: changeSet('Route ids'),
  upstreams: changeSet('Upstream names'),
  settings: strings('Other settings that changed, by path (e.g. "server.limits.maxBodyBytes").'),
}, 'What a reload changes: routes and upstreams by id and name, other settings by path.'));

export const reloadResult = named('ReloadResult', object({
  ok: { type: 'boolean', enum: [true], description: 'Always true (a refused config is a 422).' },
  dryRun: { type: 'boolean', description: 'Nothing was applied; "changes" is what would change.' },
  version: int('Config version now serving (unchanged on a dry run).'),
  versionBefore: int('Config version serving before the request.'),
  persisted: { type: 'boolean', description: 'The document was written to the config file (PUT only; false without a config file or on a dry run).' },
  changes: configChanges,
  summary: strings('"changes" as lines: "+ route x", "- upstream y", "~ server.limits.maxBodyBytes".'),
  warnings: {
    type: 'array', items: configProblem,
    description: 'Valid, but probably not what was meant: an upstream no route uses, no routes, a match.headers name the uWS backend never receives. Never a reason to refuse.',
  },
}, 'Outcome of a reload or config replacement.'));

// -- resources ----------------------------------------------------------------

const WORKER_STATES = ['starting', 'ready', 'stalled', 'draining', 'dead', 'unknown'];

export const status = named('Status', object({
  version: str('Turnpike version.'),
  pid: int('Process id.'),
  startedAt: { type: 'string', format: 'date-time', description: 'When the gateway started.' },
  uptimeSeconds: { type: 'number', minimum: 0, description: 'Seconds since start.' },
  config: object({
    version: int('Config version serving (1 at start, +1 per applied reload).'),
    source: str('Config file path, or <embedded>.'),
  }),
  workers: {
    type: 'array', description: 'Data-plane worker threads.',
    items: object({ index: int('Worker index.'), state: { type: 'string', enum: WORKER_STATES, description: 'Worker state; stalled: ready but its event loop has not beaten for 3 s (blocked).' } }),
  },
  restarts: int('Workers restarted after a crash since start.'),
  reloads: object({ success: int('Reloads applied.'), failure: int('Reloads refused.') }),
  draining: { type: 'boolean', description: 'The gateway is shutting down.' },
  websockets: object({
    open: int('WebSocket connections open through the gateway (every worker, every route).'),
    routes: { type: 'object', description: 'Connections open by route id (routes with none are left out).', additionalProperties: { type: 'integer', minimum: 0 } },
  }, 'WebSocket connections open (turnpike_websocket_connections_open).'),
  warnings: strings('Admin-side problems worth a look (e.g. a tokens file that could not be re-read).'),
}, 'Gateway status.'));

export const resolvedConfig = named('ResolvedConfig', {
  type: 'object',
  additionalProperties: false,
  required: ['version', 'source', 'server', 'admin', 'metrics', 'log', 'upstreams', 'routes', 'demo', 'rateLimits', 'redis', 'rateLimitTable', 'store', 'secrets', 'identity', 'authz'],
  description: 'The running configuration, resolved (every default filled in), secrets shown as "[redacted]". Header edits are [name, value] pairs.',
  properties: {
    version: int('Config version.'),
    source: str('Config file path, or <embedded>.'),
    server: { type: 'object', description: 'Listener, limits, forwarded headers, header edits.' },
    admin: { type: 'object', description: 'Admin listener and admin API settings.' },
    metrics: { type: 'object', description: 'Metrics settings.' },
    log: { type: 'object', description: 'Gateway log and access log settings.' },
    upstreams: { type: 'object', description: 'Upstreams by name.', additionalProperties: { type: 'object' } },
    routes: { type: 'array', description: 'Routes, in file order.', items: { type: 'object' } },
    demo: { type: 'object', description: 'Built-in demo upstream (embedded default config only).' },
    rateLimits: { type: 'object', description: 'Named rate limits and quotas, resolved (name, tag, key, algorithm, numbers).', additionalProperties: { type: 'object' } },
    redis: { anyOf: [{ type: 'object' }, { type: 'null' }], description: 'Redis settings (the URL without its credentials), or null.' },
    rateLimitTable: { type: 'object', description: 'The shared bucket table (capacity as configured; applied at start).' },
    store: { type: 'object', description: 'Where consumers and keys live (kind, path).' },
    secrets: { type: 'object', description: 'References (env:NAME, file:/path) to the key pepper and encryption keys; never the secrets.' },
    identity: { type: 'object', description: 'How API keys are read, cached and judged.' },
    authz: { anyOf: [{ type: 'object' }, { type: 'null' }], description: 'The nginx auth_request listener, or null.' },
  },
});

export const route = named('Route', object({
  id: str('Route id.'),
  host: str('Host pattern: "*", "api.example.com" or "*.example.com".'),
  path: str('Path pattern.'),
  methods: strings('Methods matched; empty: any.'),
  upstream: { type: ['string', 'null'], description: 'Upstream name; null for a traffic split ("upstreams").' },
  upstreams: {
    anyOf: [
      {
        type: 'array',
        items: object({
          name: str('Upstream name.'),
          weight: int('Share relative to the other entries (0..1000); 0: reached only through "when".'),
          when: {
            anyOf: [
              object({ header: str('Request header name (lowercase).'), equals: str('Exact value.') }, 'Canary override by header.'),
              object({ cookie: str('Cookie name.'), equals: str('Exact value.') }, 'Canary override by cookie.'),
              { type: 'null' },
            ],
            description: 'Canary override: a matching request goes to this upstream whatever the weights; null: none.',
          },
        }, 'One upstream of the split.'),
      },
      { type: 'null' },
    ],
    description: 'The traffic split, in config order; null for a route with one "upstream".',
  },
  hashOn: { type: ['string', 'null'], description: 'What keeps a client on one upstream of the split: "ip", "path", "header:<name>", "cookie:<name>"; null: smooth weighted round robin.' },
  priority: { type: 'integer', description: 'Higher wins among matching routes.' },
}, 'A route, in short (GET /admin/config has every field).'));

const count = (description: string): Schema => ({ type: 'number', minimum: 0, description });

/** A target's counters: the base of GET /admin/upstreams' target schema (admin/api/upstreams.ts extends and names it). */
export const upstreamTarget = object({
  url: str('http://host:port'),
  weight: int('Relative share.', 1),
  requests: count('Requests assigned to this target since start, all workers (as turnpike_upstream_requests_total).'),
  responses: {
    type: 'object', additionalProperties: { type: 'number', minimum: 0 },
    description: 'Those requests by the status code the client got (the gateway\'s 502/503/504 when the target failed; uncommon codes under "1xx".."5xx"), non-zero only.',
  },
  errors: object(Object.fromEntries(UPSTREAM_ERROR_CODES.map((c) => [c, count(`Requests that failed with ${c}.`)])),
    'Upstream failures by kind (the error codes of the README), zero included.'),
  connections: object({
    open: count('Sockets to this target open now (busy + idle, connecting included), all workers.'),
    idle: count('Of those, idle keep-alive sockets.'),
  }, 'Upstream connections now (0 on the Bun backend, whose fetch pools connections itself).'),
  lastError: {
    anyOf: [
      object({ code: { type: 'string', enum: [...UPSTREAM_ERROR_CODES], description: 'Error code.' }, at: { type: 'string', format: 'date-time', description: 'When.' } }),
      { type: 'null' },
    ],
    description: 'The latest upstream failure of this target in any worker, or null.',
  },
  overflow: {
    type: 'boolean',
    description: `The target came after the first ${MAX_TARGET_SLOTS - FIRST_TARGET_SLOT} (upstream, target) pairs the gateway has seen: its counters are those of every such target (the \`_overflow\` series).`,
  },
}, 'A backend server of an upstream, with its counters since start.');

/** An upstream in short: the base of GET /admin/upstreams' item schema (admin/api/upstreams.ts extends and names it). */
export const upstream = object({
  name: str('Upstream name.'),
  targets: { type: 'array', items: upstreamTarget, description: 'Backend servers, with their counters.' },
  balance: { type: 'string', enum: ['round_robin', 'least_conn', 'random', 'ip_hash', 'p2c', 'consistent_hash', 'sticky'], description: 'Load-balancing policy.' },
  timeouts: object({
    connectMs: int('TCP connect timeout.'),
    responseMs: int('Request sent to response head.'),
    idleMs: int('Longest silence inside a response body.'),
    totalMs: int('Whole exchange; 0 = none.'),
  }, 'Timeouts in milliseconds.'),
}, 'An upstream, in short (GET /admin/config has every field).');

const percentiles = named('Percentiles', object({
  count: int('Requests measured since start.'),
  p50: { type: 'number', minimum: 0, description: 'Median, ms.' },
  p90: { type: 'number', minimum: 0, description: '90th percentile, ms.' },
  p99: { type: 'number', minimum: 0, description: '99th percentile, ms.' },
  p999: { type: 'number', minimum: 0, description: '99.9th percentile, ms.' },
  max: { type: 'number', minimum: 0, description: 'Largest, ms.' },
  mean: { type: 'number', minimum: 0, description: 'Mean, ms.' },
}, 'Latency percentiles in milliseconds (3 decimals), all workers merged.'));

export const stats = named('Stats', object({
  unit: { type: 'string', enum: ['ms'], description: 'Unit of every latency figure.' },
  workers: int('Workers that answered (a restarting worker is skipped).'),
  gateway: percentiles,
  upstream: percentiles,
}, 'Latency since start: gateway (request arrival to response end) and upstream (request sent to response head).'));

/** Admin audit actions of the identity endpoints (admin/api/identity.ts): the store's own action names. */
export const IDENTITY_AUDIT_ACTIONS = [
  'consumer.create', 'consumer.update', 'consumer.delete', 'key.create', 'key.update', 'key.rotate', 'key.revoke',
  'group.create', 'group.update', 'group.delete', 'grant.create', 'grant.delete',
] as const;
export type IdentityAuditAction = typeof IDENTITY_AUDIT_ACTIONS[number];

export const auditRecord = named('AuditRecord', object({
  time: { type: 'string', format: 'date-time', description: 'When.' },
  actor: str('Token name: "env", "generated" or a tokens-file name.'),
  role: { type: 'string', enum: ['admin', 'viewer'], description: 'Role of the token.' },
  action: { type: 'string', enum: ['config.reload', 'config.replace', 'logging.update', ...IDENTITY_AUDIT_ACTIONS], description: 'What was attempted (identity writes: the action names of GET /admin/identity/audit).' },
  method: str('HTTP method.'),
  path: str('Request path.'),
  result: { type: 'string', enum: ['applied', 'dry_run', 'refused', 'forbidden', 'rejected', 'error'], description: 'applied, dry_run, refused (invalid config), forbidden (viewer), rejected (malformed request) or error.' },
  status: int('HTTP status answered.'),
  dryRun: { type: 'boolean', description: 'A dry run (nothing applied).' },
  versionBefore: int('Config version before.'),
  versionAfter: int('Config version after.'),
  beforeHash: str('SHA-256 (hex) of the resolved config JSON before, version number left out.'),
  afterHash: str('Same, after (equal to beforeHash when nothing was applied).'),
  changes: { anyOf: [configChanges, { type: 'null' }], description: 'What changed or would change; null when refused.' },
  errors: { type: 'array', items: configProblem, description: 'Problems when refused or rejected.' },
}, 'One admin write attempt.'));

const page = (name: string, item: Schema, what: string): Schema => named(name, object({
  items: { type: 'array', items: item, description: what },
  next: { type: ['string', 'null'], description: 'Cursor for the next page (pass it as ?cursor=); null on the last page.' },
}, `A page of ${what.toLowerCase()}`));

export const routePage = page('RoutePage', route, 'Routes in id order.');
export const auditPage = page('AuditPage', auditRecord, 'Audit records, newest first.');

export const openapiDocument: Schema = {
  type: 'object', required: ['openapi', 'info', 'paths'],
  description: 'This document (OpenAPI 3.1).',
  properties: { openapi: { type: 'string', enum: ['3.1.0'] }, info: { type: 'object' }, paths: { type: 'object' } },
};

/** PUT /admin/config's body: the config file's own schema, the object the config loader validates with. */
export const configDocument = named('ConfigDocument', configSchema as unknown as Schema);

// -- logging ------------------------------------------------------------------

const levelSchema: Schema = { type: 'string', enum: ['debug', 'info', 'warn', 'error'], description: 'Log level.' };

export const logging = named('Logging', object({
  level: { ...levelSchema, description: 'The level every thread logs at now.' },
  configuredLevel: { ...levelSchema, description: 'log.level of the running config (what a reload returns to).' },
  access: object({
    enabled: { type: 'boolean', description: 'The access log is written.' },
    destination: str('stdout, stderr or a file path.'),
    format: { type: 'string', enum: ['json', 'combined'], description: 'Line format.' },
    sampleRate: { type: 'number', minimum: 0, maximum: 1, description: 'Share of requests logged (5xx always).' },
  }, 'The access log settings of the running config.'),
}));

export const loggingBody = named('LoggingUpdate', object({ level: levelSchema }));
