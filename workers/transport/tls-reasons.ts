/**
 * Why a downstream TLS handshake failed, as one of TLS_FAILURE_REASONS
 * (common/metrics-layout.ts: the `reason` label of
 * turnpike_tls_handshake_failures_total).
 *
 * Read from the error node:tls gives a server-side TLSSocket: OpenSSL's
 * reason as Node's `code` (`ERR_SSL_<REASON>`, e.g. ERR_SSL_NO_SHARED_CIPHER
 * for `error:0A0000C1:...:no shared cipher`) and `reason` text, Node's own
 * codes (ERR_TLS_HANDSHAKE_TIMEOUT), and errno codes (ECONNRESET). Each
 * mapping below was seen on Node 20 / OpenSSL 3.0 against a client that
 * provoked it (probes: openssl s_client, curl, node:tls clients):
 *
 * | client did | server error | reason |
 * |---|---|---|
 * | TLS 1.0 / 1.1, or 1.2 against minVersion TLSv1.3 | ERR_SSL_UNSUPPORTED_PROTOCOL | protocol_version |
 * | only ciphers the server does not take (1.2: `AES128-SHA`; 1.3: `TLS_AES_128_CCM_SHA256`) | ERR_SSL_NO_SHARED_CIPHER | no_shared_cipher |
 * | only curves outside `ecdhCurve` (1.3; 1.2 says no shared cipher) | ERR_SSL_NO_SUITABLE_KEY_SHARE | no_shared_cipher |
 * | only signature algorithms the key cannot make | ERR_SSL_NO_SUITABLE_SIGNATURE_ALGORITHM | no_shared_cipher |
 * | refused the certificate (curl without the CA: alert 48) | ERR_SSL_TLSV1_ALERT_UNKNOWN_CA | bad_certificate |
 * | (same, other alerts: 42 bad, 43 unsupported, 44 revoked, 45 expired, 46 unknown) | ERR_SSL_SSLV3_ALERT_*CERTIFICATE* (OpenSSL 3.2+, Node 22: ERR_SSL_SSL/TLS_ALERT_*) | bad_certificate |
 * | plain HTTP (`GET / ...`) | ERR_SSL_HTTP_REQUEST | not_tls |
 * | other bytes (`SSH-2.0...`, binary) | ERR_SSL_WRONG_VERSION_NUMBER | not_tls |
 * | no ALPN protocol in common | ERR_SSL_NO_APPLICATION_PROTOCOL | other |
 * | reset mid-handshake | ECONNRESET | other |
 *
 * Not visible in the error and decided by the caller (node/tls.ts): a
 * server name refused under `sniStrict` (unknown_server_name: the socket is
 * given a context without a certificate, so the error is a cipher one), a
 * handshake over `server.timeouts.headerMs` (timeout), a first byte that
 * is not a TLS handshake record (not_tls, answered before OpenSSL sees it).
 */
import type { TlsFailureReason } from '../../common/metrics-layout.js';
import { TLS_FAILURE_REASONS } from '../../common/metrics-layout.js';

/** Index of each reason in TLS_FAILURE_REASONS (the metrics cell is G_TLS_FAILURES + index). */
export const TLS_REASON_INDEX: Readonly<Record<TlsFailureReason, number>> = Object.freeze(
  Object.fromEntries(TLS_FAILURE_REASONS.map((r, i) => [r, i])) as Record<TlsFailureReason, number>,
);

const BY_CODE: ReadonlyMap<string, TlsFailureReason> = new Map<string, TlsFailureReason>([
  // The client's version is below minVersion (or above what OpenSSL speaks).
  ['ERR_SSL_UNSUPPORTED_PROTOCOL', 'protocol_version'],
  ['ERR_SSL_VERSION_TOO_LOW', 'protocol_version'],
  ['ERR_SSL_WRONG_SSL_VERSION', 'protocol_version'],
  ['ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION', 'protocol_version'],
  ['ERR_SSL_UNSUPPORTED_SSL_VERSION', 'protocol_version'],
  // Nothing in common to negotiate the keys or the signature with.
  ['ERR_SSL_NO_SHARED_CIPHER', 'no_shared_cipher'],
  ['ERR_SSL_NO_CIPHERS_AVAILABLE', 'no_shared_cipher'],
  ['ERR_SSL_NO_SUITABLE_KEY_SHARE', 'no_shared_cipher'],
  ['ERR_SSL_NO_SHARED_GROUPS', 'no_shared_cipher'],
  ['ERR_SSL_NO_SUITABLE_SIGNATURE_ALGORITHM', 'no_shared_cipher'],
  ['ERR_SSL_NO_SHARED_SIGNATURE_ALGORITHMS', 'no_shared_cipher'],
  ['ERR_SSL_TLSV1_ALERT_INSUFFICIENT_SECURITY', 'no_shared_cipher'],
  // The client refused the certificate it was served (its alert).
  ['ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', 'bad_certificate'],
  ['ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE', 'bad_certificate'],
  ['ERR_SSL_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE', 'bad_certificate'],
  ['ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED', 'bad_certificate'],
  ['ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED', 'bad_certificate'],
  ['ERR_SSL_SSLV3_ALERT_CERTIFICATE_UNKNOWN', 'bad_certificate'],
  ['ERR_SSL_TLSV1_ALERT_BAD_CERTIFICATE_STATUS_RESPONSE', 'bad_certificate'],
  ['ERR_SSL_TLSV1_CERTIFICATE_REQUIRED', 'bad_certificate'],
  // The client refused the name (it sent an alert unrecognized_name).
  ['ERR_SSL_TLSV1_UNRECOGNIZED_NAME', 'unknown_server_name'],
  ['ERR_TLS_HANDSHAKE_TIMEOUT', 'timeout'],
  // Not a TLS client at all.
  ['ERR_SSL_HTTP_REQUEST', 'not_tls'],
  ['ERR_SSL_HTTPS_PROXY_REQUEST', 'not_tls'],
  ['ERR_SSL_WRONG_VERSION_NUMBER', 'not_tls'],
  ['ERR_SSL_UNKNOWN_PROTOCOL', 'not_tls'],
]);

/** OpenSSL reason texts, for errors that reach us without a Node code (checked after the code). */
const BY_TEXT: ReadonlyArray<readonly [RegExp, TlsFailureReason]> = [
  [/unsupported protocol|version too low|alert protocol version/i, 'protocol_version'],
  [/no shared cipher|no suitable key share|no shared groups|no suitable signature|no shared signature/i, 'no_shared_cipher'],
  [/alert (unknown ca|bad certificate|unsupported certificate|certificate)/i, 'bad_certificate'],
  [/unrecognized name/i, 'unknown_server_name'],
  [/http request|https proxy request|wrong version number/i, 'not_tls'],
];

/**
 * The reason a server-side handshake failed with `err` (any value; a
 * non-error is `other`). Pure and allocation-free but for the regex scan of
 * an unknown code's message; failures are rare next to handshakes.
 */
export function tlsFailureReason(err: unknown): TlsFailureReason {
  if (err === null || typeof err !== 'object') return 'other';
  const e = err as { code?: unknown; reason?: unknown; message?: unknown };
  if (typeof e.code === 'string') {
    // OpenSSL 3.2+ (Node 22+) names the SSLv3 alerts `SSL/TLS alert ...`: ERR_SSL_SSL/TLS_ALERT_BAD_CERTIFICATE.
    const code = e.code.startsWith('ERR_SSL_SSL/TLS_ALERT_') ? 'ERR_SSL_SSLV3_ALERT_' + e.code.slice(22) : e.code;
    const r = BY_CODE.get(code);
    if (r !== undefined) return r;
    if (code.startsWith('ERR_SSL_SSLV3_ALERT_') && code.includes('CERTIFICATE')) return 'bad_certificate';
  }
  const text = typeof e.reason === 'string' ? e.reason : typeof e.message === 'string' ? e.message : '';
  for (const [re, r] of BY_TEXT) if (re.test(text)) return r;
  return 'other';
}
