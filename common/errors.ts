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
  // -- policy stores -----------------------------------------------------------
  RATE_LIMIT_STORE_UNAVAILABLE: def('rate_limit_store_unavailable', 503, 'Service Unavailable',
    'The rate-limit store (Redis) is unreachable and this route\'s limit is set to refuse meanwhile (onStoreError: deny); retry later.'),
  // -- upstream errors -------------------------------------------------------
  UPSTREAM_CONNECT_FAILED: def('upstream_connect_failed', 502, 'Bad Gateway',
    'The gateway could not connect to the upstream; check that the service is running.'),
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
