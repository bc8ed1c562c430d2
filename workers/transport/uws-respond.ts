/**
 * Ending a uWS response the way RFC 9110/9112 want it, around what the
 * bundled uWS build (20.30) actually does. Every way the gateway ends a
 * response goes through here, so the rules live in one place.
 *
 * What the build does (probed with raw sockets, see ENVIRONMENT.md):
 *  - `endWithoutBody(n)` with ANY argument n > 0 treats `n` as body bytes
 *    still to come: inside a request handler without an onAborted handler
 *    it aborts the process ("Returning from a request handler without
 *    responding..."); elsewhere it leaves the response open, and the next
 *    request on the connection kills the connection. `endWithoutBody()`
 *    with no argument ends cleanly and writes no Content-Length, so a HEAD
 *    response's Content-Length is written as an ordinary header first.
 *  - `endWithoutBody(n, true)` (onAborted attached) writes the right head,
 *    `Content-Length: n` and `Connection: close`, and the connection then
 *    serves no further request: whatever the client sends next, uWS closes
 *    it (or its idle timeout does). That is the one way to honour a close
 *    after a HEAD response with a length: used for it. `endWithoutBody(0,
 *    true)` closes at once.
 *  - `end(body, true)` closes cleanly only when nothing of the body was
 *    written before: after a `write`/`tryEnd` it inserts `Connection: close`
 *    INTO the body bytes.
 *  - `end()` writes `Content-Length: 0`, which a 204 must never carry
 *    (RFC 9110 8.6); 204 and 304 end with `endWithoutBody()`.
 *  - uWS closes after any complete response by itself when the request's
 *    first Connection line is 5 characters long (`close`, in any case;
 *    also `x-abc`); `close` inside a list (`keep-alive, close`) or on a
 *    second line does not make it close.
 *  - An answer ended inside the request handler does not stop uWS from
 *    handling a request pipelined behind it, even with `end(body, true)`:
 *    uWS serves it and keeps the connection. An answer ended after the
 *    handler returned is safe: a request already pipelined then makes uWS
 *    close the connection. So an answer that must close is written from
 *    setImmediate (uws-server.ts).
 * So a `close` (the client's, or the gateway's own after bad framing) is
 * honoured for real where uWS closes by itself (CLOSE_BY_SERVER), where one
 * `end(body, true)` call writes the whole response (the gateway's own
 * errors, bodies that arrive whole) and for HEAD as above; otherwise (a 204
 * or 304, which must not carry `Content-Length: 0`, or a streamed body) the
 * response carries `Connection: close` and the client closes (RFC 9112 9.6
 * obliges it to).
 */

/** Keep the connection. */
export const CLOSE_NONE = 0;
/** Close after the response; uWS will do it by itself (the request's first Connection line has 5 characters). */
export const CLOSE_BY_SERVER = 1;
/** Close after the response; the gateway must make it happen. */
export const CLOSE_ENFORCE = 2;
import { errorBody, errorBodyWith, type GatewayErrorDef } from '../../common/errors.js';
import type { Fallback } from '../proxy/guard.js';

const noop = (): void => {};

/**
 * Strict-Transport-Security value (RFC 6797) of the running config
 * (Dataplane.hsts: server.hsts on a TLS listener), written on every answer
 * of the gateway's own (errors, fallbacks, health, 101s), or null: none.
 * One per thread, like the server: set by it on start and on each config
 * (setGatewayHsts). Proxied responses get it from their route's response plan.
 */
export let gatewayHsts: string | null = null;

/** Sets gatewayHsts (the server, for each config it applies). */
export function setGatewayHsts(value: string | null): void {
  gatewayHsts = value;
}

/**
 * Ends a response that has no body: HEAD (with the Content-Length the GET
 * would have, or none when unknown: -1), 204 (never a Content-Length) and
 * 304 (a known one). `close` (CLOSE_*): with CLOSE_ENFORCE no further
 * request is served on the connection where the build allows it, else the
 * response says `Connection: close` (see above). `abortAttached`: the
 * caller attached onAborted (the exchange); the synchronous path has not.
 */
export function endWithoutBody(res: any, status: number, contentLength: number, close: number, abortAttached: boolean): void {
  if (close === CLOSE_ENFORCE && status !== 204 && status !== 304 && contentLength >= 0) {
    if (!abortAttached) res.onAborted(noop);
    res.endWithoutBody(contentLength, true);
    return;
  }
  if (status !== 204 && contentLength >= 0) res.writeHeader('content-length', String(contentLength));
  if (close !== CLOSE_NONE) res.writeHeader('connection', 'close');
  res.endWithoutBody();
}

/**
 * Ends a response in one call (nothing of its body written before): with
 * CLOSE_ENFORCE uWS closes and writes `Connection: close`; with
 * CLOSE_BY_SERVER uWS closes by itself but writes no header (it only does
 * when asked to close what it would not), so the gateway writes it: a client
 * must know (RFC 9112 9.6).
 */
export function endWhole(res: any, body: string | Uint8Array | undefined, close: number): void {
  if (close === CLOSE_BY_SERVER) {
    res.writeHeader('connection', 'close');
    res.end(body);
  } else {
    res.end(body, close === CLOSE_ENFORCE);
  }
}

/**
 * A small JSON answer of the gateway's own (the public health endpoint):
 * status line, JSON body, no-store, and for HEAD the same head without the
 * body. Call inside the handler or a cork.
 */
export function writeJson(res: any, statusLine: string, body: string, isHead: boolean, allow: string | null): void {
  res.writeStatus(statusLine).writeHeader('content-type', 'application/json').writeHeader('cache-control', 'no-store');
  if (allow !== null) res.writeHeader('allow', allow);
  if (gatewayHsts !== null) res.writeHeader('strict-transport-security', gatewayHsts);
  if (isHead) endWithoutBody(res, 200, body.length, CLOSE_NONE, false);
  else res.end(body);
}

/**
 * Writes a gateway error (JSON body `{"error":{code,message,requestId}}`)
 * in full: status, content-type, request id, `Allow` for 405, a policy's
 * headers (`extra`: name/value pairs, e.g. Retry-After) and message, and
 * for HEAD the same head without the body. Call inside a cork (or the handler).
 * Returns the body bytes written (0 for HEAD).
 */
export function writeGatewayError(
  res: any, e: GatewayErrorDef, requestIdHeader: string, requestId: string, isHead: boolean, close: number,
  abortAttached: boolean, allow: string | null, extra: readonly string[] | null = null, message: string | null = null,
): number {
  res.writeStatus(e.statusLine).writeHeader('content-type', 'application/json').writeHeader(requestIdHeader, requestId);
  if (allow !== null) res.writeHeader('allow', allow);
  if (extra !== null) for (let i = 0; i < extra.length; i += 2) res.writeHeader(extra[i]!, extra[i + 1]!);
  if (gatewayHsts !== null) res.writeHeader('strict-transport-security', gatewayHsts);
  const body = message === null ? errorBody(e, requestId) : errorBodyWith(e, message, requestId);
  // Messages and request ids are ASCII (a policy's message too: names and numbers): length in characters = in bytes.
  if (isHead) {
    endWithoutBody(res, e.status, Buffer.byteLength(body), close, abortAttached);
    return 0;
  }
  endWhole(res, body, close);
  return Buffer.byteLength(body);
}

/**
 * Writes an open breaker's fallback (upstreams.<name>.breaker.fallback):
 * its status, its headers, the request id, and its body as its exact
 * bytes; for HEAD the same head without the body (a 204 has no
 * Content-Length). Call inside a cork (or the handler).
 */
export function writeFallback(res: any, fb: Fallback, requestIdHeader: string, requestId: string, isHead: boolean, close: number, abortAttached: boolean): void {
  res.writeStatus(fb.statusLine);
  const h = fb.headers;
  for (let i = 0; i < h.length; i += 2) res.writeHeader(h[i]!, h[i + 1]!);
  res.writeHeader(requestIdHeader, requestId);
  if (gatewayHsts !== null) res.writeHeader('strict-transport-security', gatewayHsts);
  if (isHead || fb.status === 204 || fb.status === 304) endWithoutBody(res, fb.status, fb.status === 204 ? -1 : fb.body.length, close, abortAttached);
  else endWhole(res, fb.body, close);
}
