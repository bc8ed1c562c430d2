/**
 * WebSocket close codes across the gateway (RFC 6455 7.4).
 *
 * A close code from one side is passed to the other as is (a 4001 from the
 * upstream reaches the client as 4001, and the other way), with its reason.
 * Three codes are never sent on the wire (7.4.1: "MUST NOT be set as a
 * status code in a Close control frame"); they only report what happened,
 * and the gateway turns them into what the other side can be told:
 *
 *   seen from      code   meaning                         sent to the other side
 *   either side    1005   a Close frame without a code    a Close frame without a code
 *   the client     1006   the connection was lost         1001 going away ("client connection lost")
 *   the upstream   1006   the connection was lost         1014 bad gateway ("upstream connection lost")
 *   either side    1015   TLS handshake failure           as 1006
 *
 * A code the peer may not send (0-999, 1004, 1016-2999, 5000+) never gets
 * through: uWS and ws refuse such a frame (a protocol error) before the
 * gateway sees it, so it arrives here as 1006 (or ws's 1002).
 */

/** Close codes the gateway itself sends. */
export const CLOSE_NORMAL = 1000;
export const CLOSE_GOING_AWAY = 1001;
export const CLOSE_PROTOCOL_ERROR = 1002;
export const CLOSE_NO_STATUS = 1005;
export const CLOSE_ABNORMAL = 1006;
export const CLOSE_POLICY_VIOLATION = 1008;
export const CLOSE_MESSAGE_TOO_BIG = 1009;
export const CLOSE_INTERNAL_ERROR = 1011;
export const CLOSE_TRY_AGAIN_LATER = 1013;
export const CLOSE_BAD_GATEWAY = 1014;
export const CLOSE_TLS = 1015;

/** A code that may be sent in a Close frame (RFC 6455 7.4.1-7.4.2, IANA registry): what `ws` accepts too. */
export function isSendableCode(code: number): boolean {
  return (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999);
}

/** What to send upstream when the client closed with `code` (0: a Close frame without a code). `lost`: reason to give when the connection was lost. */
export function codeForUpstream(code: number): number {
  if (code === CLOSE_NO_STATUS || code === 0) return 0;
  if (isSendableCode(code)) return code;
  return CLOSE_GOING_AWAY; // 1006, 1015, anything unsendable: the client is gone
}

/** What to send the client when the upstream closed with `code` (0: a Close frame without a code). */
export function codeForClient(code: number): number {
  if (code === CLOSE_NO_STATUS || code === 0) return 0;
  if (isSendableCode(code)) return code;
  return CLOSE_BAD_GATEWAY; // 1006, 1015, anything unsendable: the upstream broke
}

/** Longest close reason in bytes: a Close frame's payload is at most 125 bytes, 2 of them the code (RFC 6455 5.5). */
export const MAX_REASON_BYTES = 123;
