/**
 * JSON Schema of the file a user writes (YAML or JSON). Draft-07, the dialect
 * the default `Ajv` class speaks.
 *
 * Design:
 * - `DEFAULTS` is the one table of default values; the schema's `default`
 *   keywords and descriptions are generated from it and resolve.ts fills the
 *   resolved GatewayConfig from it, so the three can never disagree.
 * - Every object with fixed keys has `additionalProperties: false`: a typo is
 *   an error, never a silently ignored option. Renamed or not-yet-supported
 *   options get a migration hint from `MIGRATION_HINTS` (like undici's
 *   `unsupported idleTimeout, use keepAliveTimeout instead`).
 * - `errorMessage` is an annotation keyword of ours (registered with Ajv in
 *   validate.ts, ignored by editors): the human sentence used when a
 *   `pattern` or count keyword fails, because a raw regex is no help to a user.
 * - Cross-field rules (upstream references, template params, target URL
 *   shape, ...) are in validate.ts, where the messages can say more.
 * - Every `*Ms` integer setting also takes a duration string ("250ms", "5s",
 *   "1m", "1h"): `acceptDurations` below widens each one, wherever and
 *   however it is declared, and validate.ts converts the string (duration.ts)
 *   before the same minimum and maximum are checked.
 */
import { DURATION_MESSAGE, DURATION_PATTERN } from './duration.js';
import { breakerSchema, healthCheckSchema, outlierDetectionSchema } from './resilience.js';
import { dnsSchema, registrySchema } from './discovery.js';
import { retrySchema, routeRetrySchema } from './retry.js';
import { websocketSchema } from './websocket.js';
import { hashOnSchema, stickySchema } from './balancing.js';
import { hstsSchema, redirectHttpSchema, serverTlsSchema, upstreamTlsSchema } from './tls.js';
import { rateLimitPolicySchema, rateLimitTableSchema, redisSchema, trustedProxiesSchema } from './rate-limit.js';
import { authzSchema, identitySchema, routeAuthSchema, secretsSchema, storeSchema } from './identity.js';

export const DEFAULTS = Object.freeze({
  server: Object.freeze({
    host: '0.0.0.0',
    port: 8080,
    workers: 'auto' as const,
    backend: 'auto' as const,
    drainTimeoutMs: 30_000, // 30 s
    drainDelayMs: 0, // SIGTERM: health checks fail this long before the listeners close
    healthPath: null as string | null, // off: the public listener has no health endpoint
    requestIdHeader: 'x-request-id',
    pathForwarding: 'normalized' as const,
    limits: Object.freeze({
      maxBodyBytes: 10_485_760, // 10 MiB
      maxUrlBytes: 8_192, // 8 KiB
      maxHeaderBytes: 32_768, // 32 KiB
      maxHeaderCount: 100,
    }),
    // Client timeouts of the node backend (workers/transport/node/app.ts DEFAULT_*_TIMEOUT_MS).
    timeouts: Object.freeze({
      headerMs: 10_000, // 10 s: a request head must be complete this long after its first byte
      idleMs: 10_000, // 10 s: a connection with no request in progress
      bodyMs: 10_000, // 10 s: between two reads of a request body
    }),
    forwarded: Object.freeze({ xForwardedFor: true, xForwardedProtoHost: true, forwarded: false }),
  }),
  admin: Object.freeze({
    enabled: true,
    host: '127.0.0.1',
    port: 9901,
    tokensFile: null as string | null, // none: TURNPIKE_ADMIN_TOKEN, else a generated token
    auditLog: null as string | null, // none: .turnpike/audit-<admin port>.log (one per gateway in a directory)
  }),
  metrics: Object.freeze({ enabled: true }),
  log: Object.freeze({
    level: 'info' as const,
    access: Object.freeze({
      enabled: true,
      destination: 'stdout',
      format: 'json' as const,
      sampleRate: 1,
      // Parameters whose values never reach a log line (workers/access-log.ts
      // SecretParams: compared ignoring case, encoding, `-_.`, spaces and a
      // trailing `[...]`; `*` matches anything). Credentials, OAuth/OIDC
      // parameters (RFC 6749, 7636, 7521), signed-URL signatures (S3, GCS,
      // Azure SAS `sig`), session ids (OWASP Logging Cheat Sheet).
      redactQuery: Object.freeze([
        'access_token', 'api_key', 'apikey', 'assertion', 'auth', 'authorization', 'client_assertion', 'client_secret',
        'code', 'code_verifier', 'credential', 'id_token', 'jsessionid', 'jwt', 'key', 'otp', 'passwd', 'password',
        'phpsessid', 'private_token', 'pwd', 'refresh_token', 'secret', 'session', 'session_id', 'sid', 'sig',
        'signature', 'token', 'x-amz-credential', 'x-amz-security-token', 'x-amz-signature', 'x-goog-credential',
        'x-goog-signature', '*_token', '*secret*', '*password*', '*passwd*', '*api_key', '*signature', '*session_id',
      ]),
    }),
    errors: Object.freeze({ burst: 10, intervalMs: 10_000 }), // per (kind, target): 10 lines per 10 s, then a count
  }),
  upstream: Object.freeze({
    balance: 'round_robin' as const,
    weight: 1,
    pool: Object.freeze({ maxConnections: 256, idleTimeoutMs: 30_000, maxPending: 1_024 }),
    timeouts: Object.freeze({ connectMs: 1_000, responseMs: 15_000, idleMs: 30_000, totalMs: 0 }),
  }),
  route: Object.freeze({ host: '*', priority: 0, preserveHost: false }),
});

/** Fields a JSON access log line may have (README, Logs): the default ones, in their order, then the ones written only when listed. */
export const ACCESS_LOG_FIELDS = Object.freeze([
  'time', 'request_id', 'client', 'method', 'host', 'path', 'query', 'status', 'bytes_received', 'bytes_sent',
  'duration_ms', 'upstream_ms', 'route', 'upstream', 'target', 'error', 'user_agent',
  'retries', 'consumer',
] as const);
export type AccessLogField = (typeof ACCESS_LOG_FIELDS)[number];
/** The fields of a line when `fields` is not set (every field but the opt-in ones: `retries`, `consumer`). */
export const DEFAULT_ACCESS_LOG_FIELDS: readonly AccessLogField[] = Object.freeze(ACCESS_LOG_FIELDS.filter((f) => f !== 'retries' && f !== 'consumer'));

/** Largest body limit accepted (1 TiB): a typo guard, not a real bound. */
export const MAX_BODY_BYTES = 1_099_511_627_776;
/** Longest timeout accepted anywhere (24 h). */
export const MAX_TIMEOUT_MS = 86_400_000;

/** RFC 9110 5.6.2 token: what a header name (and a method) may contain. */
export const TOKEN_PATTERN = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";
/** RFC 9110 5.5: no control characters but HTAB (no CR/LF header injection). */
export const HEADER_VALUE_PATTERN = '^[^\\u0000-\\u0008\\u000A-\\u001F\\u007F]*$';
const LABEL = '[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?';
/** `*`, `*.example.com` or a hostname / IPv4 address. */
export const HOST_PATTERN = `^(?:\\*|(?:\\*\\.)?${LABEL}(?:\\.${LABEL})*)$`;
export const NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.:-]*$';

/** routes[].upstreams: entries and weight bounds (workers/proxy/split.ts). */
export const MAX_SPLIT_UPSTREAMS = 32;
export const MAX_SPLIT_WEIGHT = 1000;
/** routes[].hashOn: ip | path | header:<token> | cookie:<token>. */
export const SPLIT_HASH_ON_PATTERN = "^(?:ip|path|(?:header|cookie):[!#$%&'*+.^_`|~0-9A-Za-z-]+)$";

const TOKEN_MSG = 'must be a valid header name (letters, digits and !#$%&\'*+-.^_`|~, no spaces or colons)';
const VALUE_MSG = 'must not contain control characters (CR, LF, NUL, ...)';

/**
 * Renamed or not-yet-supported options. Keys are paths with array indices
 * written `[]` and upstream names written `*`; values finish the sentence
 * `unsupported property "<key>"...`.
 */
export const MIGRATION_HINTS: Readonly<Record<string, string>> = Object.freeze({
  'server.threads': ', use "workers" instead',
  'server.address': ', use "host" instead',
  'server.bind': ', use "host" instead',
  'server.listen': ', use "host" and "port" instead',
  'server.maxBodyBytes': ', use "limits.maxBodyBytes" instead',
  'server.maxBodySize': ', use "limits.maxBodyBytes" instead',
  'server.bodyLimit': ', use "limits.maxBodyBytes" instead',
  'server.gracefulShutdownMs': ', use "drainTimeoutMs" instead',
  'server.shutdownTimeoutMs': ', use "drainTimeoutMs" instead',
  'admin.bind': ', use "host" instead',
  'upstreams.*.url': ', use "targets: [url]" instead',
  'upstreams.*.servers': ', use "targets" instead',
  'upstreams.*.nodes': ', use "targets" instead',
  'upstreams.*.hosts': ', use "targets" instead',
  'upstreams.*.loadBalancer': ', use "balance" instead',
  'upstreams.*.algorithm': ', use "balance" instead',
  'upstreams.*.lb': ', use "balance" instead',
  'upstreams.*.timeout': ', use "timeouts" (connectMs, responseMs, idleMs, totalMs) instead',
  'upstreams.*.circuitBreaker': ', use "breaker" instead',
  'upstreams.*.healthcheck': ', use "healthCheck" instead',
  'upstreams.*.health': ', use "healthCheck" (active checks) or "outlierDetection" (ejection from real traffic) instead',
  'upstreams.*.outlier': ', use "outlierDetection" instead',
  'upstreams.*.timeouts.readMs': ', use "responseMs" instead',
  'upstreams.*.timeouts.read': ', use "responseMs" instead',
  'upstreams.*.timeouts.sendMs': ', use "responseMs" instead',
  'upstreams.*.timeouts.connect': ', use "connectMs" instead',
  'upstreams.*.timeouts.requestMs': ', use "totalMs" instead',
  'upstreams.*.timeouts.keepAliveMs': ', use "pool.idleTimeoutMs" instead',
  'upstreams.*.timeouts.idleTimeoutMs': ', use "idleMs" (silence inside a response) or "pool.idleTimeoutMs" (idle connections) instead',
  'upstreams.*.pool.max': ', use "maxConnections" instead',
  'upstreams.*.pool.connections': ', use "maxConnections" instead',
  'upstreams.*.pool.keepAliveTimeoutMs': ', use "idleTimeoutMs" instead',
  'routes[].method': ', use "methods: [GET, ...]" instead',
  'routes[].uri': ', use "path" instead',
  'routes[].paths': ', use one route per "path"',
  'routes[].hosts': ', use one route per "host"',
  'routes[].service': ', use "upstream" instead',
  'routes[].backend': ', use "upstream" instead',
  'routes[].target': ', use "upstream" instead',
  'routes[].stripPrefix': ', use "rewrite: { stripPrefix: ... }" instead',
  'routes[].stripPath': ', use "rewrite: { stripPrefix: ... }" instead',
  'routes[].name': ', use "id" instead',
  'routes[].auth': ': authentication policies are not supported by this version yet',
  'routes[].rateLimits': ', use "rateLimit" (a list) instead',
  'routes[].ratelimit': ', use "rateLimit" (a list) instead',
  'routes[].rate_limit': ', use "rateLimit" (a list) instead',
  'rateLimit': ', use "rateLimits" (named policies) at the top level, and "rateLimit" in routes',
  'ratelimits': ', use "rateLimits" instead',
});

type Json = Record<string, unknown>;

function int(min: number, max: number, description: string, dflt?: number): Json {
  const s: Json = { type: 'integer', minimum: min, maximum: max, description };
  if (dflt !== undefined) s['default'] = dflt;
  return s;
}

function ms(min: number, what: string, dflt: number, extra = ''): Json {
  return int(min, MAX_TIMEOUT_MS, `${what} In milliseconds (${min}..${MAX_TIMEOUT_MS}). Default ${dflt}.${extra}`, dflt);
}

function bool(description: string, dflt: boolean): Json {
  return { type: 'boolean', description: `${description} Default ${dflt}.`, default: dflt };
}

const headerValue = (description: string): Json => ({
  type: ['string', 'number', 'boolean'],
  pattern: HEADER_VALUE_PATTERN,
  errorMessage: VALUE_MSG,
  description: `${description} Numbers and booleans are written as text.`,
});

const headerMap = (description: string): Json => ({
  type: 'object',
  description,
  propertyNames: { pattern: TOKEN_PATTERN, errorMessage: TOKEN_MSG },
  additionalProperties: headerValue('Header value.'),
  default: {},
});

export const configSchema = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  $id: 'https://turnpike.dev/schema/turnpike.schema.json',
  title: 'Turnpike gateway configuration',
  description: 'Routes, upstreams and server settings. Environment variables (TURNPIKE_SERVER__PORT=8081) and --set server.port=8081 override values from this file.',
  type: 'object',
  additionalProperties: false,
  properties: {
    $schema: { type: 'string', description: 'Path or URL of this schema, for editors. Ignored by the gateway.' },
    server: {
      type: 'object',
      additionalProperties: false,
      description: 'The public listener. Every field is optional.',
      default: {},
      properties: {
        host: {
          type: 'string', minLength: 1, maxLength: 253, pattern: '^[A-Za-z0-9.:_\\[\\]%-]+$',
          errorMessage: 'must be an IP address or a host name, without spaces (e.g. 0.0.0.0, ::, 127.0.0.1)',
          description: `Address to listen on. Default "${DEFAULTS.server.host}" (all IPv4 interfaces).`,
          default: DEFAULTS.server.host,
        },
        port: int(0, 65535, `TCP port (0..65535; 0 picks a free port, useful in tests). Default ${DEFAULTS.server.port}.`, DEFAULTS.server.port),
        workers: {
          description: 'Worker threads serving requests: "auto" (one per available CPU) or a count 1..256. Default "auto".',
          default: 'auto',
          errorMessage: 'must be "auto" or an integer from 1 to 256',
          anyOf: [
            { type: 'string', enum: ['auto'], errorMessage: 'must be "auto" or an integer from 1 to 256' },
            { type: 'integer', minimum: 1, maximum: 256 },
          ],
        },
        backend: {
          type: 'string', enum: ['auto', 'uws', 'bun', 'node'],
          description: 'HTTP server implementation: "auto" (uWebSockets.js on Node, Bun.serve on Bun), "uws", "bun", or "node" (a strict HTTP/1.1 and HTTP/1.0 server on node:net: HTTP/1.0, pipelining, extension methods, exact header bytes; one worker thread on Node before 22.12). Default "auto".',
          default: DEFAULTS.server.backend,
        },
        drainTimeoutMs: int(0, 3_600_000,
          `On SIGTERM/SIGINT, how long in-flight requests may run before connections are closed. In milliseconds (0..3600000; 0 closes at once). Default ${DEFAULTS.server.drainTimeoutMs}.`,
          DEFAULTS.server.drainTimeoutMs),
        drainDelayMs: int(0, 3_600_000,
          `On SIGTERM/SIGINT, how long health checks (admin /health and server.healthPath) answer 503 while the listeners still accept and serve, so load balancers take the node out before it stops accepting; then the drain starts. In milliseconds (0..3600000). Default ${DEFAULTS.server.drainDelayMs}.`,
          DEFAULTS.server.drainDelayMs),
        healthPath: {
          type: 'string', pattern: '^/[A-Za-z0-9._~!$&\'()*+,;=:@/-]*$', maxLength: 256,
          errorMessage: 'must be a path such as "/healthz" (unreserved characters only, no query)',
          description: 'A health endpoint on the public listener for external load balancers: GET or HEAD answers 200 {"status":"ok"} (503 {"status":"draining"} during a drain), before any route; other methods 405. Default none (off). The admin listener always has /health.',
        },
        requestIdHeader: {
          type: 'string', pattern: TOKEN_PATTERN, errorMessage: TOKEN_MSG,
          description: `Header carrying the request id (generated when the client sends none, forwarded upstream and echoed in error bodies). Default "${DEFAULTS.server.requestIdHeader}".`,
          default: DEFAULTS.server.requestIdHeader,
        },
        pathForwarding: {
          type: 'string', enum: ['normalized', 'original'],
          description: 'What path the upstream receives when a route has no rewrite: "normalized" (the path the router matched: escapes of unreserved characters decoded, `//` merged, dot segments resolved) or "original" (the request target exactly as the client sent it; routing still uses the normalized path). A route may override it. Default "normalized".',
          default: DEFAULTS.server.pathForwarding,
        },
        limits: {
          type: 'object', additionalProperties: false, default: {},
          description: 'Request size limits.',
          properties: {
            maxBodyBytes: int(0, MAX_BODY_BYTES, `Largest request body; above it the gateway answers 413. In bytes (0..${MAX_BODY_BYTES}). Default ${DEFAULTS.server.limits.maxBodyBytes} (10 MiB).`, DEFAULTS.server.limits.maxBodyBytes),
            maxUrlBytes: int(64, 1_048_576, `Longest request target (path + query); above it 414. In bytes (64..1048576). Default ${DEFAULTS.server.limits.maxUrlBytes} (8 KiB).`, DEFAULTS.server.limits.maxUrlBytes),
            maxHeaderBytes: int(1_024, 1_048_576, `Largest sum of header names and values; above it 431. In bytes (1024..1048576). Default ${DEFAULTS.server.limits.maxHeaderBytes} (32 KiB).`, DEFAULTS.server.limits.maxHeaderBytes),
            maxHeaderCount: int(1, 1_000, `Most request headers; above it 431. A count (1..1000). Default ${DEFAULTS.server.limits.maxHeaderCount}.`, DEFAULTS.server.limits.maxHeaderCount),
          },
        },
        timeouts: {
          type: 'object', additionalProperties: false, default: {},
          description: 'How long the server waits on a client, with server.backend: node (uWS has its own fixed ~10 s idle timeout). A connection that runs out is closed without an answer, as nginx does; checked once a second, so a timeout fires up to 1 s late. A reload applies new values from the next wait of each connection.',
          properties: {
            headerMs: ms(100, 'A request head must be complete this long after its first byte, or the connection is closed (slowloris; like nginx client_header_timeout).', DEFAULTS.server.timeouts.headerMs, ' (10 s)'),
            idleMs: ms(100, 'A keep-alive connection with no request in progress is closed after this (like nginx keepalive_timeout, Envoy idle_timeout).', DEFAULTS.server.timeouts.idleMs, ' (10 s)'),
            bodyMs: ms(100, 'The longest pause between two reads of a request body, or the connection is closed (like nginx client_body_timeout).', DEFAULTS.server.timeouts.bodyMs, ' (10 s)'),
          },
        },
        forwarded: {
          type: 'object', additionalProperties: false, default: {},
          description: 'Proxy headers added to requests sent upstream.',
          properties: {
            xForwardedFor: bool('Append the client address to X-Forwarded-For.', DEFAULTS.server.forwarded.xForwardedFor),
            xForwardedProtoHost: bool('Set X-Forwarded-Proto and X-Forwarded-Host.', DEFAULTS.server.forwarded.xForwardedProtoHost),
            forwarded: bool('Also append an RFC 7239 Forwarded element.', DEFAULTS.server.forwarded.forwarded),
          },
        },
        trustedProxies: trustedProxiesSchema,
        headers: { $ref: '#/definitions/headerPolicy' },
        tls: serverTlsSchema,
        redirectHttp: redirectHttpSchema,
        hsts: hstsSchema,
      },
    },
    redis: redisSchema,
    rateLimits: {
      type: 'object', default: {},
      description: 'Named rate limits and quotas, listed by name in routes[].rateLimit. A named policy is one set of buckets wherever it is used. Default none.',
      propertyNames: {
        pattern: NAME_PATTERN, maxLength: 128,
        errorMessage: 'must be a policy name of letters, digits, "_", ".", ":" and "-", starting with a letter or digit',
      },
      additionalProperties: { $ref: '#/definitions/rateLimitPolicy' },
    },
    rateLimitTable: rateLimitTableSchema,
    store: storeSchema,
    secrets: secretsSchema,
    identity: identitySchema,
    authz: authzSchema,
    log: {
      type: 'object', additionalProperties: false, default: {},
      description: 'Logs: the gateway\'s own log (stderr) and the access log.',
      properties: {
        level: {
          type: 'string', enum: ['debug', 'info', 'warn', 'error'],
          description: `Least severe level written to the gateway log (stderr). Changeable at runtime: PUT /admin/logging. TURNPIKE_LOG_LEVEL overrides it. Default "${DEFAULTS.log.level}".`,
          default: DEFAULTS.log.level,
        },
        format: {
          type: 'string', enum: ['json', 'pretty'],
          description: 'Gateway log format: "json" (one object per line) or "pretty" (readable lines). TURNPIKE_LOG_FORMAT overrides it. Default: "pretty" when stderr is a terminal, else "json".',
        },
        access: {
          type: 'object', additionalProperties: false, default: {},
          description: 'The access log: one line per request, written in batches off the request path.',
          properties: {
            enabled: bool('Write the access log.', DEFAULTS.log.access.enabled),
            destination: {
              type: 'string', minLength: 1,
              description: `"stdout", "stderr", or a file path (appended to, created with mode 0640, reopened on SIGUSR1 for logrotate). A relative path is resolved from the working directory. Default "${DEFAULTS.log.access.destination}".`,
              default: DEFAULTS.log.access.destination,
            },
            format: {
              type: 'string', enum: ['json', 'combined'],
              description: `"json" (one object per line, fields below) or "combined" (nginx's combined format). Default "${DEFAULTS.log.access.format}".`,
              default: DEFAULTS.log.access.format,
            },
            sampleRate: {
              type: 'number', minimum: 0, maximum: 1,
              description: 'Share of requests logged (0..1); 5xx answers are always logged. Default 1.',
              default: DEFAULTS.log.access.sampleRate,
            },
            fields: {
              type: 'array', uniqueItems: true, minItems: 1,
              items: { type: 'string', enum: [...ACCESS_LOG_FIELDS] },
              description: `JSON format: the fields written, in this order. Default: ${DEFAULT_ACCESS_LOG_FIELDS.join(', ')} (add "retries", the retries the request took, by listing it).`,
            },
            redactQuery: {
              type: 'array', uniqueItems: true,
              items: { type: 'string', minLength: 1, maxLength: 128 },
              description: `Parameter names whose values are logged as "[REDACTED]", in the query, the path's ;matrix parameters and the Referer. Compared ignoring case, percent-encoding, "+", spaces, "-", "_", "." and a trailing "[...]" (so "api_key" also hides "API-Key", "%61pi_key", "api_key[]"); "*" matches any characters ("*_token": csrf_token, x-auth-token...). Replaces the default list: ${DEFAULTS.log.access.redactQuery.join(', ')}.`,
            },
          },
        },
        errors: {
          type: 'object', additionalProperties: false, default: {},
          description: 'Upstream failures and gateway 5xx in the gateway log: at most `burst` lines per kind and target per interval, then one line with the count of those left out.',
          properties: {
            burst: int(1, 10_000, `Lines per kind and target per interval (1..10000). Default ${DEFAULTS.log.errors.burst}.`, DEFAULTS.log.errors.burst),
            intervalMs: int(100, 3_600_000, `The interval. In milliseconds (100..3600000). Default ${DEFAULTS.log.errors.intervalMs}.`, DEFAULTS.log.errors.intervalMs),
          },
        },
      },
    },
    metrics: {
      type: 'object', additionalProperties: false, default: {},
      description: 'Request metrics of the data plane (/metrics, /admin/stats).',
      properties: {
        enabled: bool('Count requests, statuses, sizes and latencies (shared-memory counters and HDR histograms per worker). Turning it off only saves the few hundred nanoseconds per request that bench/ reports. Default true.', DEFAULTS.metrics.enabled),
      },
    },
    admin: {
      type: 'object', additionalProperties: false, default: {},
      description: 'The admin listener (REST API, /metrics, dashboard).',
      properties: {
        enabled: bool('Start the admin listener.', DEFAULTS.admin.enabled),
        host: {
          type: 'string', minLength: 1, maxLength: 253, pattern: '^[A-Za-z0-9.:_\\[\\]%-]+$',
          errorMessage: 'must be an IP address or a host name, without spaces (e.g. 127.0.0.1)',
          description: `Address to listen on. Default "${DEFAULTS.admin.host}" (loopback only; expose it with care).`,
          default: DEFAULTS.admin.host,
        },
        port: int(0, 65535, `TCP port (0..65535; 0 picks a free port). Default ${DEFAULTS.admin.port}.`, DEFAULTS.admin.port),
        tokensFile: {
          type: 'string', minLength: 1,
          description: 'File of admin API tokens, one per line: "name role sha256:<hex of the token>" (role admin or viewer; "#" starts a comment). Only hashes are stored. Re-read on every reload. A relative path is resolved from the working directory. Default none: the token in TURNPIKE_ADMIN_TOKEN, or, when no token is configured at all, one generated at start into .turnpike/admin-token-<admin port> (named by port, so gateways started from one directory keep their own).',
        },
        auditLog: {
          type: 'string', minLength: 1,
          description: 'File the admin API appends one JSON line to for every write (config reload or replace, refused attempts included); created with mode 0600. A relative path is resolved from the working directory. Default ".turnpike/audit-<admin port>.log" (the port the admin listener bound, so gateways started from one directory keep their own).',
        },
      },
    },
    upstreams: {
      type: 'object',
      description: 'Named groups of backend servers that routes send requests to. Default none.',
      default: {},
      propertyNames: {
        pattern: NAME_PATTERN, maxLength: 128,
        errorMessage: 'must be a valid upstream name (letters, digits, "_", ".", ":" and "-", starting with a letter or digit)',
      },
      additionalProperties: { $ref: '#/definitions/upstream' },
    },
    routes: {
      type: 'array',
      description: 'Routes, matched by host, path, method and optional header/query predicates; among matches the highest priority, then the most specific, wins. Default none.',
      default: [],
      items: { $ref: '#/definitions/route' },
    },
  },
  definitions: {
    headerRules: {
      type: 'object', additionalProperties: false, default: {},
      description: 'Header edits, applied in the order remove, set, add.',
      properties: {
        add: headerMap('Headers appended (a second value when the header is already present). Map of name to value. Default none.'),
        set: headerMap('Headers replaced (every existing value is dropped first). Map of name to value. Default none.'),
        remove: {
          type: 'array', default: [],
          description: 'Names of headers removed. Default none.',
          items: { type: 'string', pattern: TOKEN_PATTERN, errorMessage: TOKEN_MSG },
        },
      },
    },
    headerPolicy: {
      type: 'object', additionalProperties: false, default: {},
      description: 'Header edits on the request sent upstream and on the response sent back. Applied server, then upstream, then route.',
      properties: {
        request: { $ref: '#/definitions/headerRules' },
        response: { $ref: '#/definitions/headerRules' },
      },
    },
    target: {
      description: 'A backend server: "http://host:port" or "https://host:port" (TLS: see the upstream\'s tls), or { url, weight }. No path, query or credentials.',
      errorMessage: 'must be a URL string like "http://127.0.0.1:9001" or an object { url, weight }',
      anyOf: [
        { type: 'string', minLength: 1 },
        {
          type: 'object', additionalProperties: false, required: ['url'],
          properties: {
            url: { type: 'string', minLength: 1, description: 'http://host:port (port defaults to 80) or https://host:port (443). No path, query or credentials.' },
            weight: int(1, 1000, `Share of requests relative to the other targets (1..1000). Default ${DEFAULTS.upstream.weight}.`, DEFAULTS.upstream.weight),
          },
        },
      ],
    },
    upstream: {
      type: 'object', additionalProperties: false,
      description: 'A group of backend servers: `targets`, and/or those found by `dns` or a `registry` (at least one of the three).',
      properties: {
        targets: {
          type: 'array', minItems: 1, maxItems: 1_000,
          description: 'Backend servers (at least one when given). Optional when dns or registry is set: the upstream then serves the union of its sources. Required otherwise.',
          items: { $ref: '#/definitions/target' },
        },
        balance: {
          type: 'string', enum: ['round_robin', 'least_conn', 'random', 'ip_hash', 'p2c', 'consistent_hash', 'sticky'],
          description: `How a target is picked: "round_robin" (weighted), "least_conn", "random" (weighted), "ip_hash" (same client address, same target), "p2c" (power of two choices: of two random targets, the one with fewer requests in flight across every worker, per unit of weight), "consistent_hash" (a weighted Maglev table on the hashOn key: adding or removing one of N targets moves about 1/N of the keys) or "sticky" (an affinity cookie names the target: see sticky). Unhealthy, ejected and open targets are skipped. Default "${DEFAULTS.upstream.balance}".`,
          default: DEFAULTS.upstream.balance,
        },
        pool: {
          type: 'object', additionalProperties: false, default: {},
          description: 'Keep-alive connection pool, per target and per worker thread.',
          properties: {
            maxConnections: int(1, 100_000, `Open connections (busy + idle). A count (1..100000). Default ${DEFAULTS.upstream.pool.maxConnections}.`, DEFAULTS.upstream.pool.maxConnections),
            idleTimeoutMs: ms(1, 'Idle keep-alive connections are closed after this.', DEFAULTS.upstream.pool.idleTimeoutMs),
            maxPending: int(0, 1_000_000, `Requests waiting for a free connection before the gateway answers 503. A count (0..1000000; 0 = no queue). Default ${DEFAULTS.upstream.pool.maxPending}.`, DEFAULTS.upstream.pool.maxPending),
          },
        },
        timeouts: {
          type: 'object', additionalProperties: false, default: {},
          description: 'Upstream timeouts.',
          properties: {
            connectMs: ms(1, 'TCP connect; past it 504 upstream_connect_timeout.', DEFAULTS.upstream.timeouts.connectMs),
            responseMs: ms(1, 'From request sent to response head received; past it 504.', DEFAULTS.upstream.timeouts.responseMs),
            idleMs: ms(1, 'Longest silence inside a response body before it is aborted.', DEFAULTS.upstream.timeouts.idleMs),
            totalMs: ms(0, 'Whole exchange, response body included.', DEFAULTS.upstream.timeouts.totalMs, ' 0 = no limit.'),
          },
        },
        headers: { $ref: '#/definitions/headerPolicy' },
        breaker: breakerSchema,
        healthCheck: healthCheckSchema,
        outlierDetection: outlierDetectionSchema,
        dns: dnsSchema,
        registry: registrySchema,
        retry: retrySchema,
        hashOn: hashOnSchema,
        sticky: stickySchema,
        tls: upstreamTlsSchema,
      },
    },
    route: {
      // `upstream` or `upstreams`, exactly one: checked in validate.ts (checkRoutes), which names the route.
      type: 'object', additionalProperties: false, required: ['id', 'path'],
      description: 'Where a request goes.',
      properties: {
        id: {
          type: 'string', pattern: NAME_PATTERN, maxLength: 128,
          errorMessage: 'must be a route id of letters, digits, "_", ".", ":" and "-", starting with a letter or digit',
          description: 'Unique route name (metrics, logs, admin API). Required.',
        },
        host: {
          type: 'string', pattern: HOST_PATTERN, maxLength: 253,
          errorMessage: 'must be "*", a wildcard like "*.example.com" or a hostname like "api.example.com" (no port, no scheme)',
          description: `Host to match: "*" (any), "api.example.com" or "*.example.com" (any subdomain). Case-insensitive. Default "${DEFAULTS.route.host}".`,
          default: DEFAULTS.route.host,
        },
        path: {
          type: 'string', pattern: '^/', maxLength: 2_048, errorMessage: 'must start with "/"',
          description: 'Path pattern: static segments, ":name", ":name(regex)" and a trailing "*". Required.',
        },
        methods: {
          type: 'array', uniqueItems: true, default: [],
          description: 'HTTP methods to match (case-insensitive). Absent or empty = any method.',
          items: { type: 'string', pattern: TOKEN_PATTERN, errorMessage: 'must be an HTTP method such as GET or POST' },
        },
        priority: int(-1_000_000, 1_000_000, `Among routes matching the same request the highest priority wins before specificity. An integer (-1000000..1000000). Default ${DEFAULTS.route.priority}.`, DEFAULTS.route.priority),
        match: {
          type: 'object', additionalProperties: false, default: {},
          description: 'Extra predicates; all must hold. Default none.',
          properties: {
            headers: {
              type: 'object', default: {},
              description: 'Exact value per request header (name case-insensitive).',
              propertyNames: { pattern: TOKEN_PATTERN, errorMessage: TOKEN_MSG },
              additionalProperties: { type: ['string', 'number', 'boolean'], description: 'Exact value.' },
            },
            query: {
              type: 'object', default: {},
              description: 'Exact (decoded) value per query parameter.',
              propertyNames: { minLength: 1, errorMessage: 'must be a non-empty query parameter name' },
              additionalProperties: { type: ['string', 'number', 'boolean'], description: 'Exact value.' },
            },
          },
        },
        upstream: { type: 'string', minLength: 1, description: 'Name of the upstream (under "upstreams") that serves this route. Required unless "upstreams" is set (exactly one of the two).' },
        upstreams: {
          type: 'array', minItems: 1, maxItems: MAX_SPLIT_UPSTREAMS,
          description: `A traffic split instead of "upstream": each request goes to one of these upstreams, by weight, or to the first whose "when" matches. 1..${MAX_SPLIT_UPSTREAMS} entries, each upstream once, at least one positive weight. Default none.`,
          items: {
            type: 'object', additionalProperties: false, required: ['name', 'weight'],
            properties: {
              name: { type: 'string', minLength: 1, description: 'An upstream under "upstreams". Required.' },
              weight: int(0, MAX_SPLIT_WEIGHT, `Share of the route's requests relative to the other entries (0..${MAX_SPLIT_WEIGHT}); 0 = only requests matching "when" reach it. Required.`),
              when: {
                type: 'object', additionalProperties: false, required: ['equals'], minProperties: 2, maxProperties: 2,
                errorMessage: 'must be { header: <name>, equals: <value> } or { cookie: <name>, equals: <value> }',
                description: 'Canary override: a request whose header (or cookie) has exactly this value goes to this upstream whatever the weights; the first matching entry in list order wins. Default none.',
                properties: {
                  header: { type: 'string', pattern: TOKEN_PATTERN, errorMessage: TOKEN_MSG, description: 'Request header name (case-insensitive).' },
                  cookie: { type: 'string', pattern: TOKEN_PATTERN, errorMessage: 'must be a cookie name (an RFC 6265 token: letters, digits and !#$%&\'*+-.^_`|~)', description: 'Cookie name (case-sensitive).' },
                  equals: {
                    type: ['string', 'number', 'boolean'], pattern: '^(?:[^\\u0000-\\u0008\\u000A-\\u001F\\u007F]+)$', errorMessage: 'must be a non-empty value without control characters (CR, LF, NUL, ...): an empty header or cookie counts as absent, so it could never match',
                    description: 'The exact value (case-sensitive, not empty; repeated header lines are joined with ", ").',
                  },
                },
              },
            },
          },
        },
        hashOn: {
          type: 'string', pattern: SPLIT_HASH_ON_PATTERN,
          errorMessage: 'must be "ip", "path", "header:<name>" or "cookie:<name>"',
          description: 'Keeps a client on one upstream of the split ("upstreams"): "ip" (the connection\'s peer address), "path" (the normalized path), "header:<name>" or "cookie:<name>". A request without the header or cookie hashes its peer address. Default none: smooth weighted round robin per worker.',
        },
        rewrite: {
          type: 'object', additionalProperties: false, minProperties: 1, maxProperties: 1,
          errorMessage: 'must set exactly one of stripPrefix, replacePrefix or template',
          description: 'Path rewrite before forwarding (exactly one kind). Default none (the path is forwarded as is).',
          properties: {
            stripPrefix: {
              type: 'string', pattern: '^/', errorMessage: 'must start with "/"',
              description: 'Remove this prefix: "/api" turns "/api/x" into "/x".',
            },
            replacePrefix: {
              type: 'object', additionalProperties: false, required: ['from', 'to'],
              description: 'Replace the prefix "from" by "to".',
              properties: {
                from: { type: 'string', pattern: '^/', errorMessage: 'must start with "/"', description: 'Prefix to replace.' },
                to: { type: 'string', pattern: '^/', errorMessage: 'must start with "/"', description: 'Replacement.' },
              },
            },
            template: {
              type: 'string', pattern: '^/', errorMessage: 'must start with "/"',
              description: 'Whole new path with {param} placeholders naming the route\'s path params, e.g. "/users/{id}"; {*} is the trailing wildcard.',
            },
          },
        },
        preserveHost: bool('Send the client\'s Host header upstream instead of the target\'s host:port.', DEFAULTS.route.preserveHost),
        pathForwarding: {
          type: 'string', enum: ['normalized', 'original'],
          description: 'This route\'s server.pathForwarding ("normalized" or "original"). A route with a rewrite always forwards the rewritten normalized path. Default: server.pathForwarding.',
        },
        headers: { $ref: '#/definitions/headerPolicy' },
        maxBodyBytes: int(0, MAX_BODY_BYTES, `Overrides server.limits.maxBodyBytes for this route. In bytes (0..${MAX_BODY_BYTES}). Default: inherit.`),
        retry: routeRetrySchema,
        auth: routeAuthSchema,
        websocket: websocketSchema,
        rateLimit: {
          type: 'array', default: [],
          description: 'Rate limits and quotas for this route, checked in order; every one must pass, and a refused request consumes nothing from any of them. Each item is the name of a policy under "rateLimits" or a policy written inline. Default none.',
          items: {
            errorMessage: 'must be the name of a policy under "rateLimits" or a policy object such as { by: ip, rate: 100, per: 1m }',
            // Inline, not a $ref: union errors are reported per branch by schema path (validate.ts collapseUnions).
            anyOf: [{ type: 'string', minLength: 1 }, rateLimitPolicySchema],
          },
        },
      },
    },
    rateLimitPolicy: rateLimitPolicySchema,
  },
} as const;

/**
 * Widens every `*Ms` integer property under `node` to also take a duration
 * string, and returns those schema nodes. Runs once, on the schema above.
 */
function acceptDurations(node: unknown, found: Set<object> = new Set()): Set<object> {
  if (Array.isArray(node)) {
    for (const x of node) acceptDurations(x, found);
    return found;
  }
  if (typeof node !== 'object' || node === null) return found;
  const n = node as Record<string, unknown>;
  const props = n['properties'];
  if (typeof props === 'object' && props !== null) {
    for (const [key, child] of Object.entries(props as Record<string, Record<string, unknown>>)) {
      if (!/Ms$/.test(key) || child['type'] !== 'integer') continue;
      child['type'] = ['integer', 'string'];
      child['pattern'] = DURATION_PATTERN;
      child['errorMessage'] = DURATION_MESSAGE;
      child['description'] = `${String(child['description'] ?? '')} Also a duration string: "250ms", "5s", "1m", "1h" (a whole number and a unit).`.trim();
      found.add(child);
    }
  }
  for (const v of Object.values(n)) acceptDurations(v, found);
  return found;
}

/**
 * Schema nodes of the `*Ms` settings, each taking a number of milliseconds
 * or a duration string (validate.ts converts the string before the bounds).
 */
export const DURATION_NODES: ReadonlySet<object> = acceptDurations(configSchema);

/** The schema as pretty JSON (no trailing newline), for `turnpike schema > turnpike.schema.json`. */
export function schemaJson(): string {
  return JSON.stringify(configSchema, null, 2);
}
