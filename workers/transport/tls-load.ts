/**
 * The messages a worker refuses server.tls material with when its
 * backend's TLS library cannot load it (Backend.prepare): each names the
 * setting (`server.tls.cert`, `server.tls.sni[2].cert`,
 * `server.tls.ciphers`...), the file, what the library is, and what to use
 * instead, in one line (ConfigRefusedError).
 *
 * What BoringSSL (uWS 20.30's build, and Bun 1.4's) loads, probed on this
 * machine with keys made by `openssl genpkey` (Node's OpenSSL 3 loads them
 * all):
 *  - keys: RSA (1024 to 4096 bits), EC on P-256, P-384 and P-521, Ed25519;
 *    not EC on brainpoolP256r1 or secp256k1, RSA-PSS, Ed448, DSA.
 *  - ssl_ciphers: a list is refused only when it selects no suite at all
 *    (names BoringSSL does not know are skipped): `ECDHE-ECDSA-AES128-SHA256`,
 *    `DHE-RSA-AES128-GCM-SHA256`, `RC4-SHA` alone are refused on uWS (Bun's
 *    build knows the first).
 */
import { createPrivateKey } from 'node:crypto';
import type { ServerTlsConfig, TlsKeyPair } from '../../common/config/types.js';
import { ConfigRefusedError } from './backend.js';

/** What to use instead, for a key BoringSSL cannot load. */
const KEY_ADVICE = 'use an RSA (2048+) or ECDSA P-256/P-384 key';

/** What to use instead, for a cipher list BoringSSL finds nothing in. */
const CIPHER_ADVICE = 'use names such as ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256 (or remove ciphers: the default list loads everywhere)';

/**
 * `key type EC brainpoolP256r1`, `key type RSA 2048`, `key type Ed448`...
 * When this runtime cannot parse the key either (Bun's BoringSSL: a
 * brainpool, secp256k1, RSA-PSS, Ed448 or DSA key), says it is none of the
 * types it supports.
 */
export function describeKey(keyPem: string): string {
  try {
    const k = createPrivateKey(keyPem);
    const d = k.asymmetricKeyDetails ?? {};
    switch (k.asymmetricKeyType) {
      case 'ec': return `key type EC ${String(d.namedCurve)}`;
      case 'rsa': return `key type RSA ${d.modulusLength ?? '?'}`;
      case 'rsa-pss': return `key type RSA-PSS ${d.modulusLength ?? '?'}`;
      case 'ed25519': return 'key type Ed25519';
      case 'ed448': return 'key type Ed448';
      default: return `key type ${String(k.asymmetricKeyType).toUpperCase()}`;
    }
  } catch {
    return 'a key type other than RSA, EC P-256/P-384/P-521 and Ed25519';
  }
}

/** The config path of a pair's `cert`: `server.tls.cert` (the default certificate) or `server.tls.sni[i].cert`. */
export function certSetting(tls: ServerTlsConfig, p: TlsKeyPair): string {
  const i = tls.sni.indexOf(p);
  return i === -1 ? 'server.tls.cert' : `server.tls.sni[${i}].cert`;
}

/**
 * `lib` (e.g. `uWS (BoringSSL)`) cannot load the pair `p` of `tls`.
 * `detail`: the library's own words, if any; `orElse`: another way out
 * (`or run server.backend: node`), if any.
 */
export function keyPairRefused(lib: string, tls: ServerTlsConfig, p: TlsKeyPair, detail = '', orElse = ''): ConfigRefusedError {
  return new ConfigRefusedError(`${certSetting(tls, p)} "${p.certFile}": ${lib} cannot load this certificate/key ` +
    `(${describeKey(p.keyPem)}${detail === '' ? '' : `: ${detail}`}): ${KEY_ADVICE}${orElse === '' ? '' : `, ${orElse}`}`);
}

/** `lib` finds no cipher suite it knows in server.tls.ciphers. */
export function ciphersRefused(lib: string, ciphers: string): ConfigRefusedError {
  return new ConfigRefusedError(`server.tls.ciphers: ${lib} knows none of these ciphers: ${ciphers}; ${CIPHER_ADVICE}`);
}
