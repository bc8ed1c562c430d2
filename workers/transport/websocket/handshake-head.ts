/**
 * What the upstream WebSocket handshake carries, by the HTTP proxy's rules,
 * shared by the two places that build it: uws-server.ts upgrade() (uWS and
 * the node backend: a head string, its client part checked byte for byte,
 * then parsed into the header map) and bun-websocket.ts open() (Bun: the
 * header map). The plain HTTP path (uws-server.ts handle(), the hot path)
 * keeps its own inline copy, which differs where a handshake cannot: Host
 * may be missing there (HTTP/1.0), Sec-WebSocket-* fields are forwarded.
 *
 * - the client's fields: all but hop-by-hop ones (the route plan's `drop`,
 *   the fields the Connection header lists), Proxy-* and Sec-WebSocket-*
 *   (the tunnel's upstream client writes its own: RFC 6455 4.1);
 * - the lines the gateway owns, after them: X-Forwarded-For,
 *   X-Forwarded-Proto / -Host, Forwarded (RFC 7239), as `server.forwarded`
 *   enables them, the request id, the route plan's lines, the policies'
 *   lines. The client's X-Forwarded-For and Forwarded are extended, so they
 *   must be plain ASCII first (forwardingIsPlain).
 */
import type { Dataplane } from '../../dataplane.js';

/**
 * Whether `s` is plain ASCII without DEL (every char 0x00..0x7e): what a
 * client's X-Forwarded-For or Forwarded must be to be extended (addresses
 * and tokens, RFC 7239). One native scan.
 */
export function isPlainAscii(s: string): boolean {
  return Buffer.byteLength(s, 'utf8') === s.length && s.indexOf('\x7f') === -1;
}

/** Whether the client's X-Forwarded-For and Forwarded values (null: absent) may be extended (isPlainAscii); else 400 bad_request. */
export function forwardingIsPlain(xff: string | null, forwarded: string | null): boolean {
  return (xff === null || isPlainAscii(xff)) && (forwarded === null || isPlainAscii(forwarded));
}

/**
 * Whether the client's field `k` (lowercase) stays out of the upstream
 * handshake: in the route plan's `drop` (hop-by-hop and configured), a
 * Proxy-* or Sec-WebSocket-* field, or named by Connection (`listed`:
 * connectionListed(), null for none).
 */
export function handshakeDrops(k: string, drop: ReadonlySet<string>, listed: ReadonlySet<string> | null): boolean {
  return drop.has(k) || k.startsWith('proxy-') || k.startsWith('sec-websocket-') || (listed !== null && listed.has(k));
}

/**
 * The head lines the gateway owns in an upstream handshake, each ended by
 * CRLF, in this order: x-forwarded-for (the client's `xff` + ", " +
 * `clientIp`), x-forwarded-proto and x-forwarded-host (`host`), forwarded
 * (the client's + `for=<ip, IPv6 as "[..]">;host="<host without " and \>";proto=..`),
 * each as dp.config.server.forwarded enables it; then `ridName: requestId`,
 * the route plan's `planLines` and the policies' `policyLines` (both
 * already CRLF-ended lines). `host` is the client's Host (a handshake has
 * exactly one, validated); `xff` / `forwarded` are the client's values or
 * null, checked with forwardingIsPlain first.
 */
export function handshakeGatewayLines(
  dp: Dataplane, clientIp: string, host: string, xff: string | null, forwarded: string | null,
  ridName: string, requestId: string, planLines: string, policyLines: string,
): string {
  const fwd = dp.config.server.forwarded;
  let lines = '';
  if (fwd.xForwardedFor) lines += 'x-forwarded-for: ' + (xff === null ? clientIp : xff + ', ' + clientIp) + '\r\n';
  if (fwd.xForwardedProtoHost) lines += dp.xfProtoLine + 'x-forwarded-host: ' + host + '\r\n';
  if (fwd.forwarded) {
    const forIp = clientIp.includes(':') ? '"[' + clientIp + ']"' : clientIp;
    const el = 'for=' + forIp + ';host="' + host.replace(/["\\]/g, '') + '"' + dp.forwardedProto;
    lines += 'forwarded: ' + (forwarded === null ? el : forwarded + ', ' + el) + '\r\n';
  }
  return lines + ridName + ': ' + requestId + '\r\n' + planLines + policyLines;
}
