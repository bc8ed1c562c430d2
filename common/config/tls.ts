/**
 * TLS configuration (issue 15): the schema fragments merged into schema.ts
 * (`server.tls`, `server.redirectHttp`, `server.hsts`, `upstreams.<n>.tls`),
 * the rules a schema cannot say, and the loading of certificates and keys.
 *
 *   server:
 *     port: 8443
 *     tls:
 *       cert: /etc/turnpike/default.crt      # PEM, chain allowed (leaf first)
 *       key: /etc/turnpike/default.key       # PEM, unencrypted
 *       sni:
 *         - { hosts: [api.example.com, "*.example.com"], cert: ..., key: ... }
 *       sniStrict: false
 *       minVersion: TLSv1.2
 *     redirectHttp: { port: 8080, status: 308 }
 *     hsts: { maxAge: 31536000, includeSubDomains: true }
 *   upstreams:
 *     billing:
 *       targets: [https://billing.internal:8443]
 *       tls: { ca: /etc/turnpike/internal-ca.pem, servername: billing.internal }
 *
 * Certificates are read and checked when the config loads (`turnpike
 * validate`, start, every reload), each problem reported with its path: a
 * file that cannot be read, text that is not PEM, an encrypted key, a key
 * that does not match its certificate, an expired certificate (or one not
 * valid yet), a certificate that does not cover a host its `sni` entry
 * lists. The bytes checked are the bytes served: the resolved config carries
 * the PEM text (TlsKeyPair), never just a path a later change could swap.
 * Node's crypto (X509Certificate, createPrivateKey) does the parsing: no
 * hand-written ASN.1.
 */
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { closeSync, constants as fsConstants, fstatSync, openSync, readFileSync, statSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { isIP } from 'node:net';
import type { GatewayConfig, HstsConfig, RedirectHttpConfig, ServerTlsConfig, TlsKeyPair, TlsVersion, UpstreamTlsConfig } from './types.js';
import { type ConfigError, type PathSegment, formatPath, isPlainObject } from './util.js';
import { isBun } from '../runtime.js';

/**
 * Mozilla's "intermediate" TLS 1.2 suites (ECDHE + AEAD only; TLS 1.3 suites
 * are OpenSSL's, all AEAD), the curves of the same profile.
 */
export const TLS_DEFAULTS = Object.freeze({
  minVersion: 'TLSv1.2' as TlsVersion,
  ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:'
    + 'ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305',
  ecdhCurve: 'X25519:prime256v1:secp384r1',
  alpn: ['http/1.1'] as readonly string[],
  sniStrict: false,
  redirectStatus: 308,
  hstsMaxAge: 31_536_000, // one year, in seconds (RFC 6797 6.1.1)
  /** `turnpike validate` warns about a certificate that expires within this many days. */
  expiryWarningDays: 14,
});

const pemFile = (what: string): Record<string, unknown> => ({
  type: 'string', minLength: 1, maxLength: 4096,
  description: `${what} A path to a PEM file, read when the config loads and on every reload (relative paths from the working directory).`,
});

const HOST_PATTERN = '^(\\*\\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$';

const versionSchema = (d: string): Record<string, unknown> => ({
  type: 'string', enum: ['TLSv1.2', 'TLSv1.3'], default: d,
  description: `Oldest TLS version accepted: "TLSv1.2" or "TLSv1.3" (older ones are never offered). Default "${d}".`,
});

export const serverTlsSchema = {
  type: 'object', additionalProperties: false, required: ['cert', 'key'],
  description: 'Serve HTTPS on server.port (TLS termination). Absent: plain HTTP.',
  properties: {
    cert: pemFile('The default certificate (leaf first, then its chain): served to clients whose server name no sni entry lists.'),
    key: pemFile('The default certificate\'s private key (unencrypted PEM: PKCS#8, PKCS#1 or SEC1).'),
    sni: {
      type: 'array', maxItems: 1000, default: [],
      description: 'More certificates, chosen by the server name the client sends (SNI, RFC 6066): an exact name beats a wildcard, a wildcard beats the default. Default none.',
      items: {
        type: 'object', additionalProperties: false, required: ['hosts', 'cert', 'key'],
        properties: {
          hosts: {
            type: 'array', minItems: 1, maxItems: 1000,
            description: 'Server names this certificate is served for: "api.example.com" or "*.example.com" (one label). The certificate must cover each.',
            items: { type: 'string', maxLength: 253, pattern: HOST_PATTERN, errorMessage: 'must be a host name such as "api.example.com" or "*.example.com" (no port, no IP address)' },
          },
          cert: pemFile('The certificate (leaf first, then its chain).'),
          key: pemFile('Its private key (unencrypted PEM).'),
        },
      },
    },
    sniStrict: {
      type: 'boolean', default: TLS_DEFAULTS.sniStrict,
      description: 'true: a client whose server name no sni entry lists and the default certificate does not cover (or that sends no name) fails the handshake, as nginx\'s ssl_reject_handshake. Default false: it gets the default certificate.',
    },
    minVersion: versionSchema(TLS_DEFAULTS.minVersion),
    ciphers: {
      type: 'string', minLength: 1, maxLength: 4096, pattern: '^[A-Za-z0-9:+!@=_.-]+$', default: TLS_DEFAULTS.ciphers,
      errorMessage: 'must be an OpenSSL cipher list such as "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"',
      description: 'TLS 1.2 cipher suites, an OpenSSL cipher list (TLS 1.3 suites are OpenSSL\'s defaults). Default: Mozilla\'s intermediate profile (ECDHE with AES-GCM or ChaCha20-Poly1305).',
    },
    ecdhCurve: {
      type: 'string', minLength: 1, maxLength: 256, pattern: '^[A-Za-z0-9:_-]+$', default: TLS_DEFAULTS.ecdhCurve,
      errorMessage: 'must be a ":"-separated list of curve names such as "X25519:prime256v1"',
      description: `Key-exchange groups, ":"-separated OpenSSL names. Default "${TLS_DEFAULTS.ecdhCurve}".`,
    },
    alpn: {
      type: 'array', maxItems: 1, uniqueItems: true, default: TLS_DEFAULTS.alpn,
      items: { type: 'string', enum: ['http/1.1'] },
      description: 'ALPN protocols offered (RFC 7301): ["http/1.1"] or [] (none). HTTP/2 is not served. Default ["http/1.1"].',
    },
  },
};

export const redirectHttpSchema = {
  type: 'object', additionalProperties: false, required: ['port'],
  description: 'A plain HTTP listener that answers every request with a redirect to the same URL over https (path and query kept), and can serve ACME http-01 challenge files. Needs server.tls. Absent: none.',
  properties: {
    port: { type: 'integer', minimum: 0, maximum: 65535, description: 'TCP port of the plain listener (0..65535; 0 picks a free port).' },
    host: { type: 'string', minLength: 1, maxLength: 253, pattern: '^[A-Za-z0-9.:_\\[\\]%-]+$', description: 'Address to listen on. Default: server.host.' },
    httpsPort: { type: 'integer', minimum: 1, maximum: 65535, description: 'The https port written in the redirect\'s Location (left out when 443). Default: server.port; set it when a load balancer or port mapping publishes the TLS listener on another port.' },
    status: { type: 'integer', enum: [301, 302, 307, 308], default: TLS_DEFAULTS.redirectStatus, description: 'Redirect status: 308 (method and body kept, RFC 9110 15.4.9), 301, 302 or 307. Default 308.' },
    acmeChallengeDir: {
      type: 'string', minLength: 1, maxLength: 4096,
      description: 'A directory whose files are served as /.well-known/acme-challenge/<token> (ACME http-01, RFC 8555 8.3) instead of redirected, for an ACME client run beside the gateway (Turnpike has none built in). Default none.',
    },
  },
};

export const hstsSchema = {
  type: 'object', additionalProperties: false,
  description: 'Send Strict-Transport-Security (RFC 6797) on every response of the TLS listener. Needs server.tls. Absent: not sent.',
  properties: {
    maxAge: { type: 'integer', minimum: 0, maximum: 1_000_000_000, default: TLS_DEFAULTS.hstsMaxAge, description: `max-age in seconds (0 tells browsers to forget the policy). Default ${TLS_DEFAULTS.hstsMaxAge} (one year).` },
    includeSubDomains: { type: 'boolean', default: false, description: 'Add includeSubDomains. Default false.' },
    preload: { type: 'boolean', default: false, description: 'Add preload (for browser preload lists; they require includeSubDomains and max-age of at least one year). Default false.' },
  },
};

export const upstreamTlsSchema = {
  type: 'object', additionalProperties: false,
  description: 'How the gateway connects to this upstream\'s https:// targets. Absent: every default (system trust, target host as server name, certificates verified).',
  properties: {
    ca: pemFile('CA certificates (PEM bundle) trusted for the targets\' certificates, instead of Node\'s bundled root CAs. Default: the bundled roots.'),
    servername: {
      type: 'string', maxLength: 253, pattern: '^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$',
      errorMessage: 'must be a host name such as "billing.internal"',
      description: 'Server name sent (SNI) and checked against the certificate. Default: each target\'s host (an IP address target sends no SNI and is checked against the certificate\'s IP addresses).',
    },
    rejectUnauthorized: { type: 'boolean', default: true, description: 'Refuse a certificate that does not verify (untrusted, wrong name, expired): 502 upstream_tls_failed. false accepts any certificate (testing only). Default true.' },
    cert: pemFile('Client certificate for mutual TLS. Needs key.'),
    key: pemFile('Client certificate\'s private key (unencrypted PEM). Needs cert.'),
    minVersion: versionSchema(TLS_DEFAULTS.minVersion),
  },
};

/** upstreams.<n>.tls when absent: the bundled root CAs, each target's host as server name, certificates verified. */
export const UPSTREAM_TLS_DEFAULTS: UpstreamTlsConfig = Object.freeze({
  caPem: null, caFile: null, servername: null, rejectUnauthorized: true, clientCert: null, minVersion: TLS_DEFAULTS.minVersion,
});

// ---------------------------------------------------------------------------
// Loading and checking the files

/** What loading found: problems by config path, and the material to resolve from. */
export interface TlsMaterial {
  errors: ConfigError[];
  warnings: ConfigError[];
  server: ServerTlsConfig | null;
  redirectHttp: RedirectHttpConfig | null;
  hsts: HstsConfig | null;
  /** Per upstream name, for upstreams with a `tls` section (the others: UPSTREAM_TLS_DEFAULTS). */
  upstreams: Map<string, UpstreamTlsConfig>;
}

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (isPlainObject(v) ? v : {});

/** Largest certificate, key or CA file read (a CA bundle of every public root is ~220 KB). */
export const MAX_PEM_FILE_BYTES = 1_048_576;

/**
 * Reads one file; null (and an error at `at`) when it cannot be read. Only
 * a regular file of at most MAX_PEM_FILE_BYTES is read: opened without
 * blocking and checked before reading, so a FIFO, a device or a huge file
 * named by mistake is refused instead of hanging or filling memory.
 */
function readPem(path: unknown, at: PathSegment[], what: string, out: ConfigError[]): string | null {
  if (typeof path !== 'string' || path.length === 0) return null; // the schema reported it
  let fd = -1;
  try {
    fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
    const st = fstatSync(fd);
    if (st.isDirectory()) throw Object.assign(new Error('directory'), { code: 'EISDIR' });
    if (!st.isFile()) {
      out.push({ path: formatPath(at), message: `cannot read the ${what} "${path}": it is not a regular file (a FIFO, socket or device); name the PEM file itself` });
      return null;
    }
    if (st.size > MAX_PEM_FILE_BYTES) {
      out.push({ path: formatPath(at), message: `the ${what} "${path}" is ${st.size} bytes, more than a PEM file of certificates or a key can be (at most ${MAX_PEM_FILE_BYTES}); name the right file` });
      return null;
    }
    const text = readFileSync(fd, 'utf8');
    if (text.trim() === '') {
      out.push({ path: formatPath(at), message: `the ${what} "${path}" is empty` });
      return null;
    }
    return text;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied (the gateway\'s user must be able to read it)'
      : code === 'EISDIR' ? 'it is a directory' : code === 'ELOOP' ? 'a loop of symbolic links' : String((e as Error).message);
    out.push({ path: formatPath(at), message: `cannot read the ${what} "${path}": ${why}` });
    return null;
  } finally {
    if (fd !== -1) closeSync(fd);
  }
}

/**
 * The PEM blocks of one label in `text`, in order, each from its BEGIN line
 * to its END line. Linear: indexOf from each BEGIN to its END (a block with
 * no END ends the scan), never a regex that backtracks over the text.
 */
export function pemBlocks(text: string, label: string): string[] {
  const begin = `-----BEGIN ${label}-----`;
  const end = `-----END ${label}-----`;
  const out: string[] = [];
  let i = text.indexOf(begin);
  while (i !== -1) {
    const j = text.indexOf(end, i + begin.length);
    if (j === -1) break;
    out.push(text.slice(i, j + end.length));
    i = text.indexOf(begin, j + end.length);
  }
  return out;
}

const PRIVATE_KEY_LINE = /-----BEGIN (?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY-----/;

/** The certificates of a PEM file as served (TlsKeyPair.certPem): its CERTIFICATE blocks only. */
function servedCerts(text: string): string {
  return pemBlocks(text, 'CERTIFICATE').join('\n') + '\n';
}

/** The private key of a PEM file as served (TlsKeyPair.keyPem): its first key block, or null. */
function servedKey(text: string): string | null {
  const m = PRIVATE_KEY_LINE.exec(text);
  const block = m === null ? undefined : pemBlocks(text, m[0].slice(11, -5))[0];
  return block === undefined ? null : block + '\n';
}

/**
 * Whether the TLS files of `config` on disk hold what it serves (the file
 * watch then has nothing to apply: a reload from another source read them
 * already). A file that cannot be read counts as changed.
 */
export function tlsFilesMatch(config: GatewayConfig): boolean {
  const read = (path: string): string | null => {
    try {
      return readFileSync(path, 'utf8');
    } catch {
      return null;
    }
  };
  const pairs: TlsKeyPair[] = [];
  if (config.server.tls !== null) pairs.push(config.server.tls.default, ...config.server.tls.sni);
  for (const u of Object.values(config.upstreams)) {
    if (u.tls.clientCert !== null) pairs.push(u.tls.clientCert);
    if (u.tls.caFile !== null && read(u.tls.caFile) !== u.tls.caPem) return false;
  }
  return pairs.every((p) => {
    const cert = read(p.certFile);
    const key = read(p.keyFile);
    return cert !== null && key !== null && servedCerts(cert) === p.certPem && servedKey(key) === p.keyPem;
  });
}

/** The certificates of a PEM chain (leaf first), or a message. */
function parseChain(pem: string): X509Certificate[] | string {
  const blocks = pemBlocks(pem, 'CERTIFICATE');
  if (blocks.length === 0) {
    if (PRIVATE_KEY_LINE.test(pem)) return 'holds a private key, not a certificate (are cert and key swapped?)';
    return 'holds no PEM certificate (-----BEGIN CERTIFICATE-----); convert a DER file with: openssl x509 -inform der -in FILE -out FILE.pem';
  }
  const chain: X509Certificate[] = [];
  for (const [i, b] of blocks.entries()) {
    try {
      chain.push(new X509Certificate(b));
    } catch (e) {
      return `holds a certificate that cannot be parsed (the ${i === 0 ? 'first' : `number ${i + 1}`}: ${(e as Error).message})`;
    }
  }
  return chain;
}

function parseKey(pem: string): KeyObject | string {
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(pem)) {
    return 'is an encrypted private key; the gateway needs it unencrypted (openssl pkey -in KEY -out KEY.plain), readable only by its user';
  }
  const m = PRIVATE_KEY_LINE.exec(pem);
  if (m === null) {
    if (pem.includes('-----BEGIN CERTIFICATE-----')) return 'holds a certificate, not a private key (are cert and key swapped?)';
    return 'holds no PEM private key (-----BEGIN PRIVATE KEY-----); convert a DER key with: openssl pkey -inform der -in KEY -out KEY.pem';
  }
  const label = m[0].slice(11, -5);
  const block = pemBlocks(pem, label)[0];
  if (block === undefined) return `holds a private key with no "-----END ${label}-----" line (a truncated file?)`;
  try {
    return createPrivateKey(block);
  } catch (e) {
    return `holds a private key that cannot be parsed (${(e as Error).message})`;
  }
}

/**
 * Why a key cannot serve TLS here, or null. Every backend: RSA below 2048
 * bits (NIST SP 800-131A; OpenSSL's own security level refuses 1024 at
 * level 2). uWS: its TLS library (BoringSSL) loads RSA and ECDSA on P-256,
 * P-384 and P-521 only: a brainpool, secp256k1, RSA-PSS, Ed25519, Ed448 or
 * DSA key would load in Node and fail in every worker.
 */
function keyProblem(key: KeyObject, backend: 'uws' | 'bun' | 'node'): string | null {
  const type = key.asymmetricKeyType;
  const d = key.asymmetricKeyDetails ?? {};
  if (type === 'rsa' && (d.modulusLength ?? 0) < 2048) return `is a ${d.modulusLength}-bit RSA key; use 2048 bits or more (or ECDSA P-256)`;
  if (backend !== 'uws') return null;
  if (type === 'rsa') return null;
  if (type === 'ec' && ['prime256v1', 'secp384r1', 'secp521r1'].includes(String(d.namedCurve))) return null;
  const what = type === 'ec' ? `an EC key on ${String(d.namedCurve)}` : `a${type === 'ed25519' || type === 'ed448' ? 'n' : ''} ${String(type).toUpperCase()} key`;
  return `is ${what}, which the uWS backend's TLS library (BoringSSL) cannot load; use an RSA (2048+) or ECDSA P-256/P-384/P-521 key, or run server.backend: node (or bun)`;
}

/** DNS names of the leaf: subjectAltName DNS entries, or the CN when there are none (lowercase). */
function certNames(x: X509Certificate): string[] {
  const san = x.subjectAltName;
  if (san !== undefined && san.length > 0) {
    return san.split(/,\s*/).filter((e) => e.startsWith('DNS:')).map((e) => e.slice(4).toLowerCase());
  }
  const cn = /(?:^|\n)CN=([^\n]+)/.exec(x.subject);
  return cn === null ? [] : [cn[1]!.toLowerCase()];
}

/** Does the certificate cover `host` (a name, or `*.zone`: then any one label of the zone)? */
function covers(x: X509Certificate, host: string): boolean {
  if (host.startsWith('*.')) {
    // A wildcard host needs a wildcard certificate for the same zone: a name under it stands for all of them.
    return certNames(x).includes(host.toLowerCase());
  }
  return x.checkHost(host, { wildcards: true, singleLabelSubdomains: false }) !== undefined;
}

/**
 * Reads and checks one certificate + key pair. `hosts` are the names it is
 * listed for (checked against the certificate); returns null when anything
 * is wrong (each problem reported at its own path).
 */
function loadPair(o: Obj, at: PathSegment[], hosts: string[], role: string, backend: 'uws' | 'bun' | 'node', now: number, out: ConfigError[], warn: ConfigError[]): TlsKeyPair | null {
  const certText = readPem(o['cert'], [...at, 'cert'], 'certificate', out);
  const keyText = readPem(o['key'], [...at, 'key'], 'private key', out);
  if (certText === null || keyText === null) return null;
  const chain = parseChain(certText);
  const key = parseKey(keyText);
  let ok = true;
  if (typeof chain === 'string') {
    out.push({ path: formatPath([...at, 'cert']), message: `"${String(o['cert'])}" ${chain}` });
    ok = false;
  }
  if (typeof key === 'string') {
    out.push({ path: formatPath([...at, 'key']), message: `"${String(o['key'])}" ${key}` });
    ok = false;
  }
  if (typeof chain === 'string' || typeof key === 'string') return null;
  const leaf = chain[0]!;
  if (!leaf.checkPrivateKey(key)) {
    const later = chain.findIndex((c, i) => i > 0 && c.checkPrivateKey(key));
    out.push({
      path: formatPath([...at, 'key']),
      message: later !== -1
        ? `"${String(o['key'])}" is the key of certificate number ${later + 1} in "${String(o['cert'])}", not of the first: put the leaf (the server's own certificate) first, then its chain`
        : `"${String(o['key'])}" is not the private key of the certificate "${String(o['cert'])}" (${leaf.subject.replace(/\n/g, ', ')}); use the key the certificate was issued for`,
    });
    ok = false;
  }
  const weak = keyProblem(key, backend);
  if (weak !== null) {
    out.push({ path: formatPath([...at, 'key']), message: `"${String(o['key'])}" ${weak}` });
    ok = false;
  }
  const notAfter = Date.parse(leaf.validTo);
  const notBefore = Date.parse(leaf.validFrom);
  if (notAfter <= now) {
    out.push({ path: formatPath([...at, 'cert']), message: `"${String(o['cert'])}" expired on ${new Date(notAfter).toISOString()}; renew it` });
    ok = false;
  } else if (notBefore > now) {
    out.push({ path: formatPath([...at, 'cert']), message: `"${String(o['cert'])}" is not valid before ${new Date(notBefore).toISOString()} (check this machine's clock)` });
    ok = false;
  } else if (notAfter - now < TLS_DEFAULTS.expiryWarningDays * 86_400_000) {
    warn.push({ path: formatPath([...at, 'cert']), message: `"${String(o['cert'])}" (${role}) expires on ${new Date(notAfter).toISOString()}, in less than ${TLS_DEFAULTS.expiryWarningDays} days; renew it` });
  }
  hosts.forEach((h, i) => {
    if (!covers(leaf, h)) {
      out.push({ path: formatPath([...at, 'hosts', i]), message: `the certificate "${String(o['cert'])}" does not cover "${h}" (it covers ${certNames(leaf).map((n) => `"${n}"`).join(', ') || 'no DNS name'})` });
      ok = false;
    }
  });
  if (!ok) return null;
  // Only the certificates and the one key block are served: a combined file (cert + key in one) never puts its key into certPem.
  const certPem = servedCerts(certText);
  const keyPem = servedKey(keyText)!;
  return {
    certFile: String(o['cert']), keyFile: String(o['key']), certPem, keyPem,
    hosts: hosts.map((h) => h.toLowerCase()), names: certNames(leaf), notAfterMs: notAfter, fingerprint256: leaf.fingerprint256,
  };
}

function serverTls(raw: Obj, backend: 'uws' | 'bun' | 'node', now: number, out: ConfigError[], warn: ConfigError[]): ServerTlsConfig | null {
  const at: PathSegment[] = ['server', 'tls'];
  const def = loadPair(raw, at, [], 'the default certificate', backend, now, out, warn);
  const sni: TlsKeyPair[] = [];
  const seen = new Map<string, number>();
  const entries = Array.isArray(raw['sni']) ? (raw['sni'] as unknown[]) : [];
  entries.forEach((e, i) => {
    const o = obj(e);
    const hosts = Array.isArray(o['hosts']) ? (o['hosts'] as unknown[]).filter((h): h is string => typeof h === 'string') : [];
    hosts.forEach((h, j) => {
      if (isIP(h) !== 0) {
        out.push({ path: formatPath([...at, 'sni', i, 'hosts', j]), message: `"${h}" is an IP address: a client connecting to an address sends no server name (RFC 6066 3) and gets the default certificate; remove it, and put the address in the default certificate` });
        return;
      }
      const k = h.toLowerCase();
      const first = seen.get(k);
      if (first !== undefined) out.push({ path: formatPath([...at, 'sni', i, 'hosts', j]), message: `"${h}" is listed already by server.tls.sni[${first}]; a name picks one certificate` });
      else seen.set(k, i);
    });
    const pair = loadPair(o, [...at, 'sni', i], hosts.filter((h) => isIP(h) === 0), `server.tls.sni[${i}]`, backend, now, out, warn);
    if (pair !== null) sni.push(pair);
  });
  if (def === null || sni.length !== entries.length) return null;
  return {
    default: def, sni,
    sniStrict: raw['sniStrict'] === true,
    minVersion: (raw['minVersion'] as TlsVersion | undefined) ?? TLS_DEFAULTS.minVersion,
    ciphers: (raw['ciphers'] as string | undefined) ?? TLS_DEFAULTS.ciphers,
    ecdhCurve: (raw['ecdhCurve'] as string | undefined) ?? TLS_DEFAULTS.ecdhCurve,
    alpn: (raw['alpn'] as string[] | undefined) ?? TLS_DEFAULTS.alpn,
  };
}

function upstreamTls(name: string, raw: Obj, now: number, out: ConfigError[], warn: ConfigError[]): UpstreamTlsConfig | null {
  const at: PathSegment[] = ['upstreams', name, 'tls'];
  let caPem: string | null = null;
  let ok = true;
  if (raw['ca'] !== undefined) {
    caPem = readPem(raw['ca'], [...at, 'ca'], 'CA bundle', out);
    if (caPem === null) ok = false;
    else {
      const certs = pemBlocks(caPem, 'CERTIFICATE');
      if (certs.length === 0) {
        out.push({ path: formatPath([...at, 'ca']), message: `"${String(raw['ca'])}" holds no PEM certificate (-----BEGIN CERTIFICATE-----)` });
        ok = false;
      }
      for (const c of certs) {
        try {
          const x = new X509Certificate(c);
          if (Date.parse(x.validTo) <= now) warn.push({ path: formatPath([...at, 'ca']), message: `"${String(raw['ca'])}" holds an expired CA certificate (${x.subject.replace(/\n/g, ', ')}, expired ${new Date(Date.parse(x.validTo)).toISOString()})` });
        } catch (e) {
          out.push({ path: formatPath([...at, 'ca']), message: `"${String(raw['ca'])}" holds a certificate that cannot be parsed (${(e as Error).message})` });
          ok = false;
        }
      }
    }
  }
  let clientCert: TlsKeyPair | null = null;
  const hasCert = raw['cert'] !== undefined;
  const hasKey = raw['key'] !== undefined;
  if (hasCert !== hasKey) {
    out.push({ path: formatPath([...at, hasCert ? 'key' : 'cert']), message: `a client certificate needs both cert and key; add ${hasCert ? 'key' : 'cert'} or remove ${hasCert ? 'cert' : 'key'}` });
    ok = false;
  } else if (hasCert) {
    clientCert = loadPair(raw, at, [], `the client certificate of upstream ${name}`, 'node', now, out, warn);
    if (clientCert === null) ok = false;
  }
  if (!ok) return null;
  return {
    caPem, caFile: typeof raw['ca'] === 'string' ? raw['ca'] : null,
    servername: typeof raw['servername'] === 'string' ? raw['servername'].toLowerCase() : null,
    rejectUnauthorized: raw['rejectUnauthorized'] !== false,
    clientCert,
    minVersion: (raw['minVersion'] as TlsVersion | undefined) ?? TLS_DEFAULTS.minVersion,
  };
}

/**
 * TLS 1.2 suites BoringSSL (the uWS backend's TLS library) knows, by their
 * OpenSSL names: a list naming none of them fails in every uWS worker.
 */
const BORINGSSL_CIPHERS = new Set([
  'ECDHE-ECDSA-AES128-GCM-SHA256', 'ECDHE-RSA-AES128-GCM-SHA256', 'ECDHE-ECDSA-AES256-GCM-SHA384', 'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305', 'ECDHE-RSA-CHACHA20-POLY1305', 'ECDHE-PSK-CHACHA20-POLY1305', 'ECDHE-ECDSA-AES128-SHA',
  'ECDHE-RSA-AES128-SHA', 'ECDHE-PSK-AES128-CBC-SHA', 'ECDHE-ECDSA-AES256-SHA', 'ECDHE-RSA-AES256-SHA', 'ECDHE-PSK-AES256-CBC-SHA',
  'AES128-GCM-SHA256', 'AES256-GCM-SHA384', 'AES128-SHA', 'PSK-AES128-CBC-SHA', 'AES256-SHA', 'PSK-AES256-CBC-SHA', 'DES-CBC3-SHA',
]);

/** BoringSSL's cipher-list keywords (alone or joined with "+"). */
const BORINGSSL_KEYWORDS = new Set([
  'ALL', 'DEFAULT', 'HIGH', 'FIPS', 'ECDHE', 'EECDH', 'RSA', 'ECDSA', 'PSK', 'AES', 'AES128', 'AES256', 'AESGCM', 'CHACHA20',
  'SHA1', 'SHA', 'SHA256', 'SHA384', '3DES', 'kRSA', 'kECDHE', 'kEECDH', 'kPSK', 'aRSA', 'aECDSA', 'aPSK', 'TLSv1', 'TLSv1.2', 'SSLv3',
]);

/**
 * ciphers and ecdhCurve as the backend's TLS library takes them: Node's
 * OpenSSL (node and Bun backends: a context is built with them, so what it
 * refuses is refused here with its path), BoringSSL's cipher names on uWS
 * (the workers also refuse what their TLS library cannot load; this says it
 * at validate time).
 */
function checkTlsSettings(raw: Obj, backend: 'uws' | 'bun' | 'node', out: ConfigError[]): void {
  const ciphers = raw['ciphers'];
  if (typeof ciphers === 'string') {
    if (backend === 'uws') {
      // BoringSSL ignores names it does not know; a list with no name or keyword it knows loads nothing.
      const known = ciphers.split(':').some((c) => !/^[!-]/.test(c) && (BORINGSSL_CIPHERS.has(c.replace(/^\+/, ''))
        || c.replace(/^\+/, '').split('+').every((k) => BORINGSSL_KEYWORDS.has(k))));
      if (!known) {
        out.push({ path: 'server.tls.ciphers', message: `names no TLS 1.2 suite the uWS backend's TLS library (BoringSSL) has; use names such as ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256 (the default is Mozilla's intermediate list)` });
      }
    } else {
      try {
        createSecureContext({ ciphers });
      } catch (e) {
        out.push({ path: 'server.tls.ciphers', message: `${isBun() ? 'BoringSSL (Bun\'s TLS library)' : 'OpenSSL'} refuses this cipher list (${(e as Error).message.replace(/^error:[0-9A-F]+:[^:]*::/, '')}); use names such as ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256` });
      }
    }
  }
  const curve = raw['ecdhCurve'];
  if (typeof curve === 'string' && backend !== 'uws') {
    try {
      createSecureContext({ ecdhCurve: curve });
    } catch {
      out.push({ path: 'server.tls.ecdhCurve', message: `OpenSSL knows no such group in "${curve}"; use names such as X25519:prime256v1:secp384r1` });
    }
  }
}

/** `max-age=N[; includeSubDomains][; preload]` (RFC 6797 6.1). */
export function hstsValue(maxAge: number, includeSubDomains: boolean, preload: boolean): string {
  return `max-age=${maxAge}${includeSubDomains ? '; includeSubDomains' : ''}${preload ? '; preload' : ''}`;
}

/**
 * Reads and checks every certificate, key and CA file the document names,
 * and checks the TLS rules between sections (redirectHttp and hsts need
 * tls; the uWS backend's limits). Defensive about types: anything of the
 * wrong type was reported by the schema and is skipped here. `now` (ms)
 * decides expiry; `backend` is the backend the config will run on.
 */
export function loadTlsMaterial(doc: Obj, backend: 'uws' | 'bun' | 'node', now = Date.now()): TlsMaterial {
  const errors: ConfigError[] = [];
  const warnings: ConfigError[] = [];
  const s = obj(doc['server']);
  const tlsRaw = isPlainObject(s['tls']) ? s['tls'] : null;
  const server = tlsRaw === null ? null : serverTls(tlsRaw, backend, now, errors, warnings);
  if (tlsRaw !== null) checkTlsSettings(tlsRaw, backend, errors);
  if (tlsRaw !== null && backend === 'uws') {
    if (tlsRaw['minVersion'] === 'TLSv1.3') {
      errors.push({ path: 'server.tls.minVersion', message: 'the uWS backend cannot require TLS 1.3 (its minimum is TLS 1.2, fixed in uWebSockets.js); remove minVersion, or run server.backend: node (or bun)' });
    }
    if (tlsRaw['ecdhCurve'] !== undefined && tlsRaw['ecdhCurve'] !== TLS_DEFAULTS.ecdhCurve) {
      errors.push({ path: 'server.tls.ecdhCurve', message: 'the uWS backend cannot choose key-exchange groups (uWebSockets.js uses OpenSSL\'s defaults); remove ecdhCurve, or run server.backend: node (or bun)' });
    }
  }
  if (tlsRaw !== null && backend === 'bun' && tlsRaw['sniStrict'] === true) {
    errors.push({ path: 'server.tls.sniStrict', message: 'the Bun backend cannot refuse a handshake by name (Bun.serve serves its default certificate to every unknown name); remove sniStrict, or run server.backend: node (or uws)' });
  }
  if (tlsRaw !== null && backend === 'node' && isBun()) {
    errors.push({ path: 'server.tls', message: 'the node backend cannot serve TLS under Bun (Bun cannot wrap its sockets in TLS); run server.backend: bun, or the node backend on Node' });
  }
  if (tlsRaw !== null && backend !== 'node' && Array.isArray(tlsRaw['alpn']) && tlsRaw['alpn'].length > 0) {
    warnings.push({ path: 'server.tls.alpn', message: `the ${backend === 'uws' ? 'uWS' : 'Bun'} backend negotiates no ALPN (clients then use HTTP/1.1, all the gateway serves): this setting applies on server.backend: node only` });
  }
  let redirectHttp: RedirectHttpConfig | null = null;
  if (isPlainObject(s['redirectHttp'])) {
    const r = s['redirectHttp'];
    if (tlsRaw === null) errors.push({ path: 'server.redirectHttp', message: 'redirects to https need server.tls (the gateway must serve https to redirect to it); add server.tls or remove redirectHttp' });
    if (typeof r['port'] === 'number' && r['port'] !== 0 && r['port'] === s['port']) {
      errors.push({ path: 'server.redirectHttp.port', message: `is server.port (${String(r['port'])}); the redirect listener needs a port of its own, such as 80 or 8080` });
    }
    const dir = r['acmeChallengeDir'];
    if (typeof dir === 'string') {
      let problem: string | null = null;
      try {
        if (!statSync(dir).isDirectory()) problem = 'it is a file, not a directory';
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        problem = code === 'ENOENT' ? 'no such directory' : String(code);
      }
      if (problem !== null) errors.push({ path: 'server.redirectHttp.acmeChallengeDir', message: `"${dir}" is not a readable directory (${problem}); create it for the ACME client to write into` });
    }
    redirectHttp = {
      host: typeof r['host'] === 'string' ? r['host'] : typeof s['host'] === 'string' ? s['host'] : '0.0.0.0',
      port: typeof r['port'] === 'number' ? r['port'] : 0,
      httpsPort: typeof r['httpsPort'] === 'number' ? r['httpsPort'] : null,
      status: typeof r['status'] === 'number' ? r['status'] : TLS_DEFAULTS.redirectStatus,
      acmeChallengeDir: typeof dir === 'string' ? dir : null,
    };
  }
  let hsts: HstsConfig | null = null;
  if (isPlainObject(s['hsts'])) {
    const h = s['hsts'];
    if (tlsRaw === null) errors.push({ path: 'server.hsts', message: 'Strict-Transport-Security is sent only over https (RFC 6797 7.2); add server.tls or remove hsts' });
    const maxAge = typeof h['maxAge'] === 'number' ? h['maxAge'] : TLS_DEFAULTS.hstsMaxAge;
    const sub = h['includeSubDomains'] === true;
    const preload = h['preload'] === true;
    if (preload && (!sub || maxAge < 31_536_000)) {
      warnings.push({ path: 'server.hsts.preload', message: 'browser preload lists require includeSubDomains: true and maxAge of at least 31536000 (one year); this policy would not be accepted there' });
    }
    hsts = { maxAge, includeSubDomains: sub, preload, value: hstsValue(maxAge, sub, preload) };
  }
  const upstreams = new Map<string, UpstreamTlsConfig>();
  for (const [name, rawUp] of Object.entries(obj(doc['upstreams']))) {
    const u = obj(rawUp);
    const targets = Array.isArray(u['targets']) ? (u['targets'] as unknown[]) : [];
    const https = targets.some((t) => /^https:\/\//i.test(typeof t === 'string' ? t : String(obj(t)['url'] ?? '')));
    if (isPlainObject(u['tls'])) {
      const t = upstreamTls(name, u['tls'], now, errors, warnings);
      if (t !== null) upstreams.set(name, t);
      if (!https && targets.length > 0 && !isPlainObject(u['registry'])) {
        warnings.push({ path: formatPath(['upstreams', name, 'tls']), message: 'no target of this upstream is https://, so these settings are not used; write its targets as https://host:port' });
      }
    }
  }
  return { errors, warnings, server: tlsRaw === null ? null : server, redirectHttp, hsts, upstreams };
}

/** An IP address target sends no server name (RFC 6066 3: "Literal IPv4 and IPv6 addresses are not permitted"). */
export function sniFor(host: string, servername: string | null): string | undefined {
  if (servername !== null) return servername;
  return isIP(host) === 0 ? host : undefined;
}
