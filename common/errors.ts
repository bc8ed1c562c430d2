/**
 * Errors the gateway itself answers with. One table, one place: the code is
 * the stable machine-readable contract (clients branch on it), the status is
 * what HTTP says, the message tells a human what to do next.
 *
 * The JSON body is `{"error":{"code","message","requestId"}}`. Bodies are
 * pre-rendered around the request id so answering an error on the hot path
 * is two string concatenations.
 *
 * Codes are never reused for a different meaning; add new ones at the end of
 * their section.
 */

export interface GatewayErrorDef {
  readonly code: string;
  readonly status: number;
  readonly statusLine: string;
  readonly message: string;
  /** `{"error":{"code":"...","message":"...","requestId":"` — append id + SUFFIX. */
  readonly bodyPrefix: string;
}

const BODY_SUFFIX = '"}}';

function def(code: string, status: number, reason: string, message: string): GatewayErrorDef {
  return Object.freeze({
    code,
    status,
    statusLine: `${status} ${reason}`,
    message,
    bodyPrefix: `{"error":{"code":${JSON.stringify(code)},"message":${JSON.stringify(message)},"requestId":"`,
  });
}

/**
 * no_healthy_upstream for an upstream that has no target at all at the
 * moment (discovery found none: nothing registered, a DNS name without
 * addresses): the same code and status, a message that says where to look.
 */
export const NO_TARGETS: GatewayErrorDef = def('no_healthy_upstream', 503, 'Service Unavailable',
  'This upstream has no targets right now: nothing is registered with it (registry) or its DNS name gives no address (dns); GET /admin/upstreams lists its targets and the gateway log says why.');

export const Errors = Object.freeze({
  // -- client errors ---------------------------------------------------------
  BAD_REQUEST: def('bad_request', 400, 'Bad Request',
    'The request is malformed (conflicting Content-Length, bad framing, or header or query bytes that cannot be forwarded exactly); fix the client request.'),
  BAD_PATH: def('bad_path', 400, 'Bad Request',
    'The request path is invalid (bad percent-encoding, control or non-ASCII characters, or a backslash); percent-encode it per RFC 3986.'),
  ROUTE_NOT_FOUND: def('route_not_found', 404, 'Not Found',
    'No route matches this host, path and headers; check the URL or the gateway routes.'),
  METHOD_NOT_ALLOWED: def('method_not_allowed', 405, 'Method Not Allowed',
    'The route exists but does not accept this method; see the Allow header.'),
  BODY_TOO_LARGE: def('body_too_large', 413, 'Content Too Large',
    'The request body exceeds the limit for this route; send a smaller body.'),
  URL_TOO_LONG: def('url_too_long', 414, 'URI Too Long',
    'The request target exceeds server.limits.maxUrlBytes; shorten the URL.'),
  HEADERS_TOO_LARGE: def('headers_too_large', 431, 'Request Header Fields Too Large',
    'The request headers exceed server.limits.maxHeaderBytes or maxHeaderCount; send fewer or smaller headers.'),
  BAD_HOST: def('bad_host', 400, 'Bad Request',
    'The request has no valid Host header, or more than one (RFC 9112 3.2); send exactly one Host: name[:port].'),
  NOT_IMPLEMENTED: def('not_implemented', 501, 'Not Implemented',
    'The gateway does not tunnel: CONNECT is not supported; send requests to the gateway directly.'),
  RATE_LIMITED: def('rate_limited', 429, 'Too Many Requests',
    'A rate limit of this route is exceeded; retry after the number of seconds in Retry-After.'),
  // Authentication (401, with WWW-Authenticate) and permissions (403): workers/policies/auth.
  CREDENTIALS_MISSING: def('credentials_missing', 401, 'Unauthorized',
    'This route needs an API key; send it as Authorization: Bearer <key> (or the header the gateway documents).'),
  KEY_MALFORMED: def('key_malformed', 401, 'Unauthorized',
    'The API key is not well formed or its checksum does not match (a mistyped or truncated key); copy the whole key again.'),
  KEY_INVALID: def('key_invalid', 401, 'Unauthorized',
    'The API key is not known to this gateway; check that it is the key you were given, for this environment.'),
  KEY_REVOKED: def('key_revoked', 401, 'Unauthorized',
    'The API key has been revoked; ask its owner for a new one.'),
  KEY_EXPIRED: def('key_expired', 401, 'Unauthorized',
    'The API key has expired (or its rotation grace period is over); use its replacement or ask for a new one.'),
  CONSUMER_SUSPENDED: def('consumer_suspended', 401, 'Unauthorized',
    'The account this API key belongs to is suspended; contact the API provider.'),
  KEY_RESTRICTED: def('key_restricted', 403, 'Forbidden',
    'The API key may not be used from here: its allowed addresses, hours or origins exclude this request.'),
  INSUFFICIENT_SCOPE: def('insufficient_scope', 403, 'Forbidden',
    'The API key lacks a scope this route requires; ask for a key with the scopes in WWW-Authenticate.'),
  NO_GRANT: def('no_grant', 403, 'Forbidden',
    'The consumer of this API key has no grant for this route and method; ask the API provider for access.'),
  // An HTTP/1 request line with a major version other than 1 (RFC 9110 15.6.6; the node backend's parser: uWS cannot tell).
  VERSION_NOT_SUPPORTED: def('version_not_supported', 505, 'HTTP Version Not Supported',
    'The request line names an HTTP major version other than 1 (HTTP/2.0, HTTP/3.0); send HTTP/1.1 (the gateway speaks HTTP/1.0 and 1.1).'),
  // A WebSocket upgrade over routes[].websocket.maxConnectionsPerKey (workers/transport/websocket): a count of open
  // connections, not a rate, so no Retry-After (rate_limited promises one): a slot frees when one of them closes.
  TOO_MANY_WEBSOCKET_CONNECTIONS: def('too_many_websocket_connections', 429, 'Too Many Requests',
    'This client (its consumer, or its address without one) already holds the most WebSocket connections this route allows (websocket.maxConnectionsPerKey); close one before opening another.'),
  // -- policy stores -----------------------------------------------------------
  RATE_LIMIT_STORE_UNAVAILABLE: def('rate_limit_store_unavailable', 503, 'Service Unavailable',
    'The rate-limit store (Redis) is unreachable and this route\'s limit is set to refuse meanwhile (onStoreError: deny); retry later.'),
  IDENTITY_STORE_UNAVAILABLE: def('identity_store_unavailable', 503, 'Service Unavailable',
    'The gateway could not check this API key: its identity store did not answer in time; retry shortly.'),
  // -- upstream errors -------------------------------------------------------
  UPSTREAM_CONNECT_FAILED: def('upstream_connect_failed', 502, 'Bad Gateway',
    'The gateway could not connect to the upstream; check that the service is running.'),
  // An https:// target whose TLS handshake failed (certificate not trusted, wrong name, expired, no
  // shared protocol): the reason goes to the error log, not to the client (it describes the internal service).
  UPSTREAM_TLS_FAILED: def('upstream_tls_failed', 502, 'Bad Gateway',
    'The gateway could not establish TLS with the upstream (its certificate was refused or the handshake failed); the gateway\'s error log says why. Check upstreams.<name>.tls.'),
  UPSTREAM_RESET: def('upstream_reset', 502, 'Bad Gateway',
    'The upstream closed the connection before sending a complete response head.'),
  UPSTREAM_BAD_RESPONSE: def('upstream_bad_response', 502, 'Bad Gateway',
    'The upstream sent a response the gateway cannot parse.'),
  UPSTREAM_UNAVAILABLE: def('upstream_unavailable', 503, 'Service Unavailable',
    'The upstream has no free connection and its wait queue is full; retry later.'),
  UPSTREAM_CONNECT_TIMEOUT: def('upstream_connect_timeout', 504, 'Gateway Timeout',
    'Connecting to the upstream took longer than timeouts.connectMs.'),
  UPSTREAM_TIMEOUT: def('upstream_timeout', 504, 'Gateway Timeout',
    'The upstream did not answer within timeouts.responseMs (or totalMs).'),
  CIRCUIT_OPEN: def('circuit_open', 503, 'Service Unavailable',
    'The circuit breaker of every target of this upstream is open after repeated failures; retry after the breaker\'s open time.'),
  UPSTREAM_OVERLOADED: def('upstream_overloaded', 503, 'Service Unavailable',
    'The upstream has breaker.maxInFlight requests in flight already; retry later.'),
  NO_HEALTHY_UPSTREAM: def('no_healthy_upstream', 503, 'Service Unavailable',
    'No target of this upstream can take the request: each is unhealthy, ejected or has its circuit breaker open; retry later.'),
  // -- gateway ---------------------------------------------------------------
  INTERNAL: def('internal_error', 500, 'Internal Server Error',
    'The gateway failed unexpectedly; the error is logged with this request id.'),
  SHUTTING_DOWN: def('shutting_down', 503, 'Service Unavailable',
    'The gateway is shutting down; retry on another instance.'),
});

export type ErrorName = keyof typeof Errors;

export function errorBody(e: GatewayErrorDef, requestId: string): string {
  return e.bodyPrefix + requestId + BODY_SUFFIX;
}

/** The error body with a message of the moment (a policy says which limit and when to retry) instead of the catalogue's. */
export function errorBodyWith(e: GatewayErrorDef, message: string, requestId: string): string {
  return '{"error":{"code":"' + e.code + '","message":' + JSON.stringify(message) + ',"requestId":"' + requestId + BODY_SUFFIX;
}
