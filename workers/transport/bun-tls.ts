/**
 * Downstream TLS on the Bun backend (server.tls, issue 15): the `tls`
 * option of Bun.serve for a resolved ServerTlsConfig.
 *
 * What Bun.serve 1.4.5 does with it (probed with node:tls, openssl and curl
 * clients; README "TLS on the Bun backend"):
 *  - `tls` is an array: the first entry (no serverName) is served to
 *    clients whose name no other entry lists and to clients without SNI;
 *    each other entry serves its `serverName`. Exact names beat wildcards,
 *    a wildcard `*.example.com` covers one label (a.b.example.com gets the
 *    default), names compare case-insensitively: the contract's rules.
 *  - `ciphers` (TLS 1.2 suites) and `ecdhCurve` are applied; `minVersion`
 *    takes a number, the TLS protocol version (0x0303 TLS 1.2, 0x0304 TLS
 *    1.3): a string is refused ("must be a number").
 *  - Not possible: sniStrict (an unknown name or no SNI always gets the
 *    first entry; a request does not tell which name its handshake carried),
 *    ALPN (`ALPNProtocols` is accepted and nothing is negotiated, as on
 *    uWS), handshake counts or failure reasons (no event reaches
 *    JavaScript), a handshake deadline of our own (Bun closes a silent or
 *    stalled handshake after ~12 s, whatever idleTimeout says), an answer to
 *    plain HTTP on the TLS port (closed at once), and changing certificates
 *    of a running server (server.reload({ tls }) keeps the old ones: the
 *    backend starts a second Bun.serve on the port, bun-server.ts swapTls).
 */
import { createSecureContext } from 'node:tls';
import type { ServerTlsConfig, TlsKeyPair } from '../../common/config/types.js';
import { ConfigRefusedError } from './backend.js';
import { ciphersRefused, keyPairRefused } from './tls-load.js';

/** Bun.serve's minVersion: the protocol version number (RFC 8446 4.2.1: 0x0303 is TLS 1.2, 0x0304 TLS 1.3). */
const BUN_TLS_VERSION = { 'TLSv1.2': 0x0303, 'TLSv1.3': 0x0304 } as const;

/** One entry of Bun.serve's `tls` array. */
export interface BunTlsEntry {
  cert: string;
  key: string;
  serverName?: string;
  ciphers: string;
  ecdhCurve: string;
  minVersion: number;
}

/**
 * Bun.serve's `tls` for `cfg`: the default pair first, then one entry per
 * name of every sni entry (first listing wins, as the config refuses
 * duplicates), each with the same ciphers, curves and minimum version.
 * `cfg.sniStrict` and `cfg.alpn` cannot be honoured (the validator refuses
 * sniStrict on this backend).
 */
export function bunTlsOptions(cfg: ServerTlsConfig): BunTlsEntry[] {
  const common = { ciphers: cfg.ciphers, ecdhCurve: cfg.ecdhCurve, minVersion: BUN_TLS_VERSION[cfg.minVersion] };
  const entry = (kp: TlsKeyPair, serverName?: string): BunTlsEntry =>
    (serverName === undefined ? { cert: kp.certPem, key: kp.keyPem, ...common } : { cert: kp.certPem, key: kp.keyPem, serverName, ...common });
  const out: BunTlsEntry[] = [entry(cfg.default)];
  const seen = new Set<string>();
  for (const kp of cfg.sni) {
    for (const h of kp.hosts) {
      const name = h.toLowerCase();
      if (seen.has(name)) continue;
      seen.add(name);
      out.push(entry(kp, name));
    }
  }
  return out;
}

/** The TLS library Bun.serve is built with, as the workers' refusals name it. */
const BUN_TLS = 'Bun (BoringSSL)';

/**
 * Loads every certificate/key pair of `cfg`, then its ciphers and
 * ecdhCurve, into node:tls contexts, which on Bun are BoringSSL's, as
 * Bun.serve's are (probed: a brainpool, secp256k1, RSA-PSS, Ed448 or DSA
 * key, and a cipher list selecting nothing, fail both with the same
 * error). Throws a ConfigRefusedError naming the setting
 * (Backend.prepare); Bun.serve itself can still refuse at serve time
 * (swapTls logs it and keeps the previous certificates). ~15 µs a context.
 */
export function checkBunTls(cfg: ServerTlsConfig): void {
  for (const p of [cfg.default, ...cfg.sni]) {
    try {
      createSecureContext({ cert: p.certPem, key: p.keyPem });
    } catch (err) {
      throw keyPairRefused(BUN_TLS, cfg, p, err instanceof Error ? err.message : String(err));
    }
  }
  try {
    createSecureContext({ ciphers: cfg.ciphers });
  } catch {
    throw ciphersRefused(BUN_TLS, cfg.ciphers);
  }
  try {
    createSecureContext({ ecdhCurve: cfg.ecdhCurve });
  } catch {
    throw new ConfigRefusedError(`server.tls.ecdhCurve: ${BUN_TLS} knows none of these groups: ${cfg.ecdhCurve}; use names such as X25519:prime256v1:secp384r1 (or remove ecdhCurve: the default loads)`);
  }
}
