/**
 * Downstream TLS on the uWS backend (server.tls): an SSLApp with one
 * certificate per server name (SNI), built from the PEM bytes of the
 * resolved config.
 *
 * What the bundled uWS build (20.30) allows, and how this module deals with it
 * (probed on this machine; see the README, "TLS on the uWS backend"):
 *  - Certificates are read ONLY from files, when the app is constructed
 *    (the default pair) and in addServerName (each SNI name). The PEM of the
 *    config (TlsKeyPair.certPem/keyPem: the bytes checked when it loaded,
 *    never the user's files, which may have changed since) is written into a
 *    private directory (mkdtemp under os.tmpdir(), mode 0700; files 0600),
 *    the app is built, and the files are removed at once: the keys stay on
 *    disk for the few milliseconds of the build.
 *  - Material uWS cannot load (a key that does not match, a key type or
 *    a cipher list its BoringSSL does not have: tls-load.ts) makes SSLApp()
 *    throw "App construction failed", but makes addServerName() crash the
 *    whole process (SIGSEGV). So every pair is first loaded alone into a
 *    throwaway SSLApp (which throws) before any addServerName, then once
 *    with the cipher list, and the refusal names what failed.
 *  - A name added with addServerName gets its own router: requests on it
 *    get no answer unless the handlers are registered for it too
 *    (`app.domain(name)` then `.any`/`.ws`). After domain(x) every
 *    registration goes to x's router, so the default router's handlers come
 *    first. Each domain() call prints `finding <name>` and `Browsed to SNI:
 *    <name>` on stdout (native code, at once); that cannot be silenced.
 *  - Name lookup: exact names beat `*.example.com` wildcards beat the
 *    default certificate (uSockets' own SNI tree).
 *  - sniStrict: the app is built with no certificate of its own, and the
 *    default certificate is added under each of its own names (names that
 *    an sni entry lists keep that entry's): a client naming anything else,
 *    or nothing, fails the handshake.
 *  - TLS 1.2 is the fixed minimum (1.0/1.1 refused), TLS 1.3 is offered;
 *    `ssl_ciphers` sets the TLS 1.2 list. No ALPN is negotiated and the
 *    ECDH curves are OpenSSL's defaults (server.tls.alpn/ecdhCurve cannot
 *    be applied); there is no per-handshake hook (no handshake metrics).
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ServerTlsConfig, TlsKeyPair } from '../../common/config/types.js';
import type { UwsModule } from './uws-loader.js';
import { ciphersRefused, keyPairRefused } from './tls-load.js';

/** The TLS library uWS is built with, as the workers' refusals name it. */
const UWS_TLS = 'uWS (BoringSSL)';

/** Registers every handler of the server on `app` (its current router: the default one, or a domain's). */
export type RegisterHandlers = (app: any) => void;

/**
 * What a TLS listener is built from, as one string: two configs with the
 * same signature serve the same handshakes (the exact certificate chains
 * and keys, the names, sniStrict, ciphers and the settings other backends
 * apply), so a reload that keeps it keeps the listener. '' for no TLS.
 * Compares the PEM, not only the leaf's fingerprint: a renewed intermediate
 * keeps the leaf. Reload path only (a hash per pair).
 */
export function tlsSignature(tls: ServerTlsConfig | null | undefined): string {
  if (tls == null) return '';
  const h = createHash('sha256');
  const pair = (p: TlsKeyPair): void => {
    h.update(p.certPem).update('\0').update(p.keyPem).update('\0').update(p.hosts.join(',')).update('\0');
  };
  pair(tls.default);
  h.update(tls.default.names.join(',')).update('\0');
  for (const p of tls.sni) pair(p);
  h.update(JSON.stringify([tls.sniStrict, tls.minVersion, tls.ciphers, tls.ecdhCurve, tls.alpn]));
  return h.digest('hex');
}

/** The names an SSLApp adds with addServerName, each with the pair it serves: sni entries in order (first wins), then (sniStrict) the default's own names. */
export function serverNames(tls: ServerTlsConfig): Array<[name: string, pair: TlsKeyPair]> {
  const out = new Map<string, TlsKeyPair>();
  for (const p of tls.sni) for (const h of p.hosts) if (!out.has(h)) out.set(h, p);
  if (tls.sniStrict) for (const n of tls.default.names) if (!out.has(n)) out.set(n, tls.default);
  return [...out];
}

/**
 * Builds a uWS SSLApp serving `tls`, with `register` run once for the
 * default router and once per server name (after `app.domain(name)`).
 * Throws a ConfigRefusedError (backend.ts; built nothing) naming the
 * setting when uWS cannot load a certificate or key, or finds no cipher in
 * the cipher list; the temporary files are gone when it returns.
 */
export function buildSslApp(uws: UwsModule, tls: ServerTlsConfig, register: RegisterHandlers): any {
  if (typeof uws.SSLApp !== 'function') throw new Error('this uWS module has no SSLApp: server.tls cannot be served');
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-tls-')); // mode 0700
  try {
    const files = new Map<TlsKeyPair, { key_file_name: string; cert_file_name: string }>();
    const fileOf = (p: TlsKeyPair) => {
      let f = files.get(p);
      if (f === undefined) {
        const i = files.size;
        f = { key_file_name: join(dir, `${i}.key`), cert_file_name: join(dir, `${i}.crt`) };
        writeFileSync(f.key_file_name, p.keyPem, { mode: 0o600, flag: 'wx' });
        writeFileSync(f.cert_file_name, p.certPem, { mode: 0o600, flag: 'wx' });
        files.set(p, f);
      }
      return f;
    };
    const ciphers = tls.ciphers === '' ? {} : { ssl_ciphers: tls.ciphers };
    const names = serverNames(tls);
    // Every pair alone first: SSLApp() throws on what addServerName() would crash on.
    const pairs = new Set<TlsKeyPair>(names.map(([, p]) => p));
    if (!tls.sniStrict) pairs.add(tls.default);
    // Each pair without ssl_ciphers, then the cipher list once (it does not depend on the key): the
    // message says which of the two uWS cannot load.
    let ciphersLoaded = tls.ciphers === '';
    for (const p of pairs) {
      let probe: any;
      try {
        probe = uws.SSLApp(fileOf(p));
      } catch {
        throw keyPairRefused(UWS_TLS, tls, p, '', 'or run server.backend: node');
      }
      probe.close();
      if (ciphersLoaded) continue;
      try {
        probe = uws.SSLApp({ ...fileOf(p), ...ciphers });
      } catch {
        throw ciphersRefused(UWS_TLS, tls.ciphers);
      }
      probe.close();
      ciphersLoaded = true;
    }
    let app: any;
    try {
      app = tls.sniStrict ? uws.SSLApp({ ...ciphers }) : uws.SSLApp({ ...fileOf(tls.default), ...ciphers });
    } catch {
      // Only reached when no pair was probed (sniStrict, a default certificate without DNS names, no sni entry).
      throw ciphersRefused(UWS_TLS, tls.ciphers);
    }
    try {
      register(app);
      for (const [name, p] of names) {
        app.addServerName(name, { ...fileOf(p), ...ciphers });
        register(app.domain(name));
      }
    } catch (err) {
      app.close();
      throw err;
    }
    return app;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
