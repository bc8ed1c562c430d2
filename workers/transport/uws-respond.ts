/**
 * Ending a uWS response the way RFC 9110/9112 want it, around what the
 * bundled uWS build (20.30) actually does. Every way the gateway ends a
 * response goes through here, so the rules live in one place.
 *
 * What the build does (probed with raw sockets, see ENVIRONMENT.md):
 *  - `endWithoutBody(n)` with ANY argument treats `n` as a body still to
 *    come: inside a request handler without an onAborted handler it aborts
 *    the process ("Returning from a request handler without responding...");
 *    elsewhere it leaves the response open, and the next request on the
 *    connection closes it. `endWithoutBody()` with no argument ends cleanly
 *    and writes no Content-Length, so a HEAD response's Content-Length is
 *    written as an ordinary header first.
 *  - `endWithoutBody(n, true)` with onAborted attached writes
 *    `Content-Length: n` and `Connection: close` and closes: the one way to
 *    close after a HEAD response (onAborted then runs once).
 *  - `end(body, true)` closes cleanly only when nothing of the body was
 *    written before: after a `write`/`tryEnd` it inserts `Connection: close`
 *    INTO the body bytes. A streamed response therefore cannot close the
 *    connection at its end; it carries `Connection: close` in its head and
 *    the client closes (RFC 9112 9.6 obliges it to).
 *  - `end()` writes `Content-Length: 0`, which a 204 must never carry
 *    (RFC 9110 8.6); 204 and 304 end with `endWithoutBody()`.
 * A client's `Connection: close` (exactly that value) makes uWS close by
 * itself; `close` inside a list (`keep-alive, close`) does not, so the
 * gateway passes `close` here for those.
 */
import { errorBody, type GatewayErrorDef } from '../../common/errors.js';

const noop = (): void => {};

/**
 * Ends a response that has no body: HEAD (with the Content-Length the GET
 * would have, or none when unknown: -1), 204 and 304 (Content-Length only
 * for 304, and only a known one). `close` closes the connection after it
 * when the build allows it, else says `Connection: close`. The caller must
 * have attached onAborted when `close` may be true (the exchange always
 * has; the synchronous error path passes abortAttached = false).
 */
export function endWithoutBody(res: any, status: number, contentLength: number, close: boolean, abortAttached: boolean): void {
  const lengthAllowed = status !== 204 && contentLength >= 0;
  if (close && lengthAllowed && status !== 304) {
    if (!abortAttached) res.onAborted(noop);
    res.endWithoutBody(contentLength, true);
    return;
  }
  if (lengthAllowed) res.writeHeader('content-length', String(contentLength));
  if (close) res.writeHeader('connection', 'close');
  res.endWithoutBody();
}

/**
 * Writes a gateway error (JSON body `{"error":{code,message,requestId}}`)
 * in full: status, content-type, request id, `Allow` for 405, and for HEAD
 * the same head without the body. Call inside a cork (or the handler).
 */
export function writeGatewayError(
  res: any, e: GatewayErrorDef, requestIdHeader: string, requestId: string, isHead: boolean, close: boolean,
  abortAttached: boolean, allow: string | null,
): void {
  res.writeStatus(e.statusLine).writeHeader('content-type', 'application/json').writeHeader(requestIdHeader, requestId);
  if (allow !== null) res.writeHeader('allow', allow);
  const body = errorBody(e, requestId);
  // Messages and request ids are ASCII: length in characters = in bytes.
  if (isHead) endWithoutBody(res, e.status, body.length, close, abortAttached);
  else res.end(body, close);
}
