/**
 * TLS configuration (common/config/tls.ts): every kind of bad certificate,
 * key or CA file is refused at load with the path of the problem and what
 * to do; a good one resolves to the PEM bytes that were checked; the rules
 * between sections (redirectHttp and hsts need tls, the uWS backend's
 * limits) and the https:// target form.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { validateConfig } from '../../../common/config/load.js';
import { hstsValue, TLS_DEFAULTS, UPSTREAM_TLS_DEFAULTS } from '../../../common/config/tls.js';
import { parseTargetUrl } from '../../../common/config/validate.js';
import { CertFactory, type CertFiles } from '../../helpers/certs.js';
import { lines, minimal, valid } from './helpers.js';

let f: CertFactory;
let ca: CertFiles;
let api: CertFiles;
let wild: CertFiles;
let other: CertFiles;
let expired: CertFiles;
let soon: CertFiles;
let client: CertFiles;
let rsa1024: CertFiles;
let brainpool: { certFile: string; keyFile: string };

/** A named pipe at <dir>/fifo.crt (made once): reading it would block until a writer comes. */
function fifo(): string {
  const p = join(f.dir, 'fifo.crt');
  if (!existsSync(p)) execFileSync('mkfifo', [p]);
  return p;
}

beforeAll(() => {
  f = new CertFactory();
  ca = f.ca();
  api = f.leaf({ names: ['api.example.com'], ca });
  wild = f.leaf({ names: ['*.example.com'], ca, keyType: 'rsa' });
  other = f.leaf({ names: ['other.test'], ca });
  expired = f.leaf({ names: ['old.example.com'], ca, expired: true });
  soon = f.leaf({ names: ['soon.example.com'], ca, days: 3 });
  client = f.leaf({ names: ['gateway-client'], ca, usage: 'client' });
  // Keys the factory does not make: a 1024-bit RSA key and an EC key on brainpoolP256r1 (OpenSSL loads it, BoringSSL does not).
  for (const [name, genkey] of [['rsa1024', ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:1024']], ['brainpool', ['ecparam', '-genkey', '-noout', '-name', 'brainpoolP256r1']]] as const) {
    execFileSync('openssl', [...genkey, '-out', join(f.dir, `${name}.key`)], { stdio: 'ignore' });
    execFileSync('openssl', ['req', '-x509', '-key', join(f.dir, `${name}.key`), '-out', join(f.dir, `${name}.crt`), '-days', '30', '-subj', `/CN=${name}.test`, '-addext', `subjectAltName=DNS:${name}.test`], { stdio: 'ignore' });
  }
  rsa1024 = { certFile: join(f.dir, 'rsa1024.crt'), keyFile: join(f.dir, 'rsa1024.key'), certPem: '', keyPem: '' };
  brainpool = { certFile: join(f.dir, 'brainpool.crt'), keyFile: join(f.dir, 'brainpool.key') };
});
afterAll(() => f.cleanup());

/** minimal() with server.tls (and other server keys) set, on a backend. */
function withServer(server: Record<string, unknown>, backend = 'node'): Record<string, unknown> {
  return { ...minimal(), server: { backend, workers: 1, ...server } };
}

describe('server.tls: certificates checked at load, each problem at its path', () => {
  it('a valid default + sni set resolves to the bytes read, with names, expiry and fingerprint', () => {
    const c = valid(withServer({ tls: { cert: other.certFile, key: other.keyFile, sni: [{ hosts: ['api.example.com'], cert: api.certFile, key: api.keyFile }, { hosts: ['*.example.com', 'x.example.com'], cert: wild.certFile, key: wild.keyFile }] } }));
    const tls = c.server.tls!;
    expect(tls.default.certPem).toBe(other.certPem);
    expect(tls.default.keyPem).toBe(other.keyPem);
    expect(tls.default.names).toEqual(['other.test']);
    expect(tls.sni.map((p) => [p.hosts, p.names])).toEqual([[['api.example.com'], ['api.example.com']], [['*.example.com', 'x.example.com'], ['*.example.com']]]);
    expect(tls.default.notAfterMs).toBeGreaterThan(Date.now() + 29 * 86_400_000);
    expect(tls.default.fingerprint256).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    expect(tls).toMatchObject({ sniStrict: false, minVersion: 'TLSv1.2', ciphers: TLS_DEFAULTS.ciphers, ecdhCurve: TLS_DEFAULTS.ecdhCurve, alpn: ['http/1.1'] });
    expect(c.server.redirectHttp).toBeNull();
    expect(c.server.hsts).toBeNull();
  });

  it('no tls: plain HTTP, upstreams get the TLS defaults for registered https targets', () => {
    const c = valid(minimal());
    expect(c.server.tls).toBeNull();
    expect(c.upstreams['users']!.tls).toEqual(UPSTREAM_TLS_DEFAULTS);
    expect(c.upstreams['users']!.targets[0]!.tls).toBe(false);
  });

  // [what, server.tls (functions: paths exist only once the factory ran), the exact error lines]
  const cases: [string, () => Record<string, unknown>, () => string[]][] = [
    ['a missing certificate file', () => ({ cert: '/nonexistent/a.crt', key: api.keyFile }),
      () => ['server.tls.cert: cannot read the certificate "/nonexistent/a.crt": no such file']],
    ['a missing key file', () => ({ cert: api.certFile, key: '/nonexistent/a.key' }),
      () => ['server.tls.key: cannot read the private key "[redacted]": no such file']],
    ['a directory as certificate', () => ({ cert: f.dir, key: api.keyFile }),
      () => [`server.tls.cert: cannot read the certificate "${f.dir}": it is a directory`]],
    ['cert and key swapped', () => ({ cert: api.keyFile, key: api.certFile }),
      () => [`server.tls.cert: "${api.keyFile}" holds a private key, not a certificate (are cert and key swapped?)`,
        'server.tls.key: "[redacted]" holds a certificate, not a private key (are cert and key swapped?)']],
    ['text that is not PEM', () => ({ cert: f.file('junk.crt', 'hello'), key: api.keyFile }),
      () => [`server.tls.cert: "${f.dir}/junk.crt" holds no PEM certificate (-----BEGIN CERTIFICATE-----); convert a DER file with: openssl x509 -inform der -in FILE -out FILE.pem`]],
    ['an empty file', () => ({ cert: f.file('empty.crt', '\n'), key: api.keyFile }),
      () => [`server.tls.cert: the certificate "${f.dir}/empty.crt" is empty`]],
    ['a FIFO (never read: it would block the load)', () => ({ cert: fifo(), key: api.keyFile }),
      () => [`server.tls.cert: cannot read the certificate "${f.dir}/fifo.crt": it is not a regular file (a FIFO, socket or device); name the PEM file itself`]],
    ['a file too large to be PEM', () => ({ cert: f.file('huge.crt', 'x'.repeat(1_048_577)), key: api.keyFile }),
      () => [`server.tls.cert: the certificate "${f.dir}/huge.crt" is 1048577 bytes, more than a PEM file of certificates or a key can be (at most 1048576); name the right file`]],
    ['BEGIN lines without END (linear: a regex scan would take minutes)', () => ({ cert: f.file('unterminated.crt', '-----BEGIN CERTIFICATE-----\n'.repeat(37_000)), key: api.keyFile }),
      () => [`server.tls.cert: "${f.dir}/unterminated.crt" holds no PEM certificate (-----BEGIN CERTIFICATE-----); convert a DER file with: openssl x509 -inform der -in FILE -out FILE.pem`]],
    ['a chain in the wrong order', () => ({ cert: f.file('reversed.crt', ca.certPem + api.certPem), key: api.keyFile }),
      () => [`server.tls.key: "[redacted]" is the key of certificate number 2 in "${f.dir}/reversed.crt", not of the first: put the leaf (the server's own certificate) first, then its chain`]],
    ['a DER key', () => ({ cert: api.certFile, key: f.file('der.key', 'MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg') }),
      () => ['server.tls.key: "[redacted]" holds no PEM private key (-----BEGIN PRIVATE KEY-----); convert a DER key with: openssl pkey -inform der -in KEY -out KEY.pem']],
    ['an RSA key below 2048 bits', () => ({ cert: rsa1024.certFile, key: rsa1024.keyFile }),
      () => ['server.tls.key: "[redacted]" is a 1024-bit RSA key; use 2048 bits or more (or ECDSA P-256)']],
    ['an IP address as an sni host', () => ({ cert: api.certFile, key: api.keyFile, sni: [{ hosts: ['127.0.0.1'], cert: api.certFile, key: api.keyFile }] }),
      () => ['server.tls.sni[0].hosts[0]: "127.0.0.1" is an IP address: a client connecting to an address sends no server name (RFC 6066 3) and gets the default certificate; remove it, and put the address in the default certificate']],
    ['a cipher list OpenSSL refuses', () => ({ cert: api.certFile, key: api.keyFile, ciphers: 'RC4-SHA' }),
      () => ['server.tls.ciphers: OpenSSL refuses this cipher list (no cipher match); use names such as ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256']],
    ['a curve OpenSSL does not know', () => ({ cert: api.certFile, key: api.keyFile, ecdhCurve: 'X25519:nope' }),
      () => ['server.tls.ecdhCurve: OpenSSL knows no such group in "X25519:nope"; use names such as X25519:prime256v1:secp384r1']],
    ['a key of another certificate', () => ({ cert: api.certFile, key: other.keyFile }),
      () => [`server.tls.key: "[redacted]" is not the private key of the certificate "${api.certFile}" (CN=api.example.com); use the key the certificate was issued for`]],
    ['an encrypted key', () => ({ cert: api.certFile, key: f.file('enc.key', '-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n') }),
      () => ['server.tls.key: "[redacted]" is an encrypted private key; the gateway needs it unencrypted (openssl pkey -in KEY -out KEY.plain), readable only by its user']],
    ['an expired certificate', () => ({ cert: expired.certFile, key: expired.keyFile }),
      () => [`server.tls.cert: "${expired.certFile}" expired on 2020-02-01T00:00:00.000Z; renew it`]],
    ['an sni certificate that does not cover a host listed', () => ({ cert: api.certFile, key: api.keyFile, sni: [{ hosts: ['other.test', 'api.example.com'], cert: api.certFile, key: api.keyFile }] }),
      () => [`server.tls.sni[0].hosts[0]: the certificate "${api.certFile}" does not cover "other.test" (it covers "api.example.com")`]],
    ['a wildcard host needs a wildcard certificate', () => ({ cert: api.certFile, key: api.keyFile, sni: [{ hosts: ['*.example.com'], cert: api.certFile, key: api.keyFile }] }),
      () => [`server.tls.sni[0].hosts[0]: the certificate "${api.certFile}" does not cover "*.example.com" (it covers "api.example.com")`]],
    ['a name listed twice', () => ({ cert: api.certFile, key: api.keyFile, sni: [{ hosts: ['a.example.com'], cert: wild.certFile, key: wild.keyFile }, { hosts: ['A.example.com'], cert: wild.certFile, key: wild.keyFile }] }),
      () => ['server.tls.sni[1].hosts[0]: "A.example.com" is listed already by server.tls.sni[0]; a name picks one certificate']],
    ['a host with a port', () => ({ cert: api.certFile, key: api.keyFile, sni: [{ hosts: ['api.example.com:443'], cert: api.certFile, key: api.keyFile }] }),
      () => ['server.tls.sni[0].hosts[0]: must be a host name such as "api.example.com" or "*.example.com" (no port, no IP address)',
        `server.tls.sni[0].hosts[0]: the certificate "${api.certFile}" does not cover "api.example.com:443" (it covers "api.example.com")`]],
    ['no key', () => ({ cert: api.certFile }), () => ['server.tls: missing required property "key"']],
    ['TLS 1.1', () => ({ cert: api.certFile, key: api.keyFile, minVersion: 'TLSv1.1' }),
      () => ['server.tls.minVersion: must be one of "TLSv1.2", "TLSv1.3" (got "TLSv1.1") (did you mean "TLSv1.2"?)']],
  ];
  for (const [what, tls, want] of cases) {
    it(`refuses ${what}`, () => {
      expect(lines(withServer({ tls: tls() }))).toEqual(want());
    });
  }

  it('every problem of the file at once, and a certificate expiring within 14 days is a warning', () => {
    const r = validateConfig(withServer({ tls: { cert: soon.certFile, key: soon.keyFile } }));
    expect(r.ok).toBe(true);
    expect(r.ok && r.warnings.map((w) => `${w.path}: ${w.message}`)).toEqual([
      expect.stringMatching(/^server\.tls\.cert: ".*soon\.example\.com\.crt" \(the default certificate\) expires on .*, in less than 14 days; renew it$/),
    ]);
  });

  it('the uWS backend: TLS 1.3 minimum and curve choice are refused (uWebSockets.js cannot)', () => {
    expect(lines(withServer({ tls: { cert: api.certFile, key: api.keyFile, minVersion: 'TLSv1.3', ecdhCurve: 'X25519' } }, 'uws'))).toEqual([
      'server.tls.minVersion: the uWS backend cannot require TLS 1.3 (its minimum is TLS 1.2, fixed in uWebSockets.js); remove minVersion, or run server.backend: node (or bun)',
      'server.tls.ecdhCurve: the uWS backend cannot choose key-exchange groups (uWebSockets.js uses OpenSSL\'s defaults); remove ecdhCurve, or run server.backend: node (or bun)',
    ]);
    expect(valid(withServer({ tls: { cert: api.certFile, key: api.keyFile, minVersion: 'TLSv1.3', ecdhCurve: 'X25519' } })).server.tls!.minVersion).toBe('TLSv1.3');
  });

  it('the uWS backend: keys BoringSSL cannot load and cipher lists it has no suite of are refused; node takes them', () => {
    expect(lines(withServer({ tls: { cert: brainpool.certFile, key: brainpool.keyFile, ciphers: 'ECDHE-ECDSA-AES128-SHA256:DHE-RSA-AES128-GCM-SHA256' } }, 'uws'))).toEqual([
      'server.tls.key: "[redacted]" is an EC key on brainpoolP256r1, which the uWS backend\'s TLS library (BoringSSL) cannot load; use an RSA (2048+) or ECDSA P-256/P-384/P-521 key, or run server.backend: node (or bun)',
      'server.tls.ciphers: names no TLS 1.2 suite the uWS backend\'s TLS library (BoringSSL) has; use names such as ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256 (the default is Mozilla\'s intermediate list)',
    ]);
    for (const ciphers of ['HIGH:!aNULL', 'ECDHE+AESGCM', 'AES128-SHA:FOO', TLS_DEFAULTS.ciphers]) {
      expect(valid(withServer({ tls: { cert: api.certFile, key: api.keyFile, ciphers } }, 'uws')).server.tls!.ciphers, ciphers).toBe(ciphers);
    }
    expect(valid(withServer({ tls: { cert: brainpool.certFile, key: brainpool.keyFile, ciphers: 'ECDHE-ECDSA-AES128-SHA256' } })).server.tls).not.toBeNull();
  });

  it('a file holding the certificate and its key serves both, and the key never lands in certPem', () => {
    const both = f.file('combined.pem', api.certPem + api.keyPem);
    const tls = valid(withServer({ tls: { cert: both, key: both } })).server.tls!;
    expect(tls.default.certPem).not.toContain('PRIVATE KEY');
    expect(tls.default.certPem.trim()).toBe(api.certPem.trim());
    expect(tls.default.keyPem.trim()).toBe(api.keyPem.trim());
  });

  it('an ACME directory that is a file is refused', () => {
    expect(lines(withServer({ tls: { cert: api.certFile, key: api.keyFile }, redirectHttp: { port: 8080, acmeChallengeDir: api.certFile } }))).toEqual([
      `server.redirectHttp.acmeChallengeDir: "${api.certFile}" is not a readable directory (it is a file, not a directory); create it for the ACME client to write into`,
    ]);
  });

  it('the Bun backend: sniStrict is refused (Bun.serve serves its default to unknown names)', () => {
    expect(lines(withServer({ tls: { cert: api.certFile, key: api.keyFile, sniStrict: true } }, 'bun'))).toEqual([
      'server.tls.sniStrict: the Bun backend cannot refuse a handshake by name (Bun.serve serves its default certificate to every unknown name); remove sniStrict, or run server.backend: node (or uws)',
    ]);
  });

  it('an explicit alpn on uWS or Bun is a warning (neither negotiates ALPN); on node it applies', () => {
    for (const backend of ['uws', 'bun']) {
      const r = validateConfig(withServer({ tls: { cert: api.certFile, key: api.keyFile, alpn: ['http/1.1'] } }, backend));
      expect(r.ok && r.warnings.map((w) => w.path), backend).toEqual(['server.tls.alpn']);
    }
    const r = validateConfig(withServer({ tls: { cert: api.certFile, key: api.keyFile, alpn: ['http/1.1'] } }, 'node'));
    expect(r.ok && r.warnings).toEqual([]);
  });

  it('a private key never appears in an error: paths under `key` are redacted, key bytes are never quoted', () => {
    const pem = f.file('pem-as-path.key', api.keyPem);
    const out = lines(withServer({ tls: { cert: pem, key: api.keyFile } })).join('\n');
    expect(out).not.toContain('PRIVATE KEY-----\n');
    expect(out).not.toContain(api.keyPem.split('\n')[1]);
  });
});

describe('server.redirectHttp and server.hsts', () => {
  it('resolve with their defaults', () => {
    const c = valid(withServer({ port: 8443, tls: { cert: api.certFile, key: api.keyFile }, redirectHttp: { port: 8080 }, hsts: {} }));
    expect(c.server.redirectHttp).toEqual({ host: '0.0.0.0', port: 8080, httpsPort: null, status: 308, acmeChallengeDir: null });
    expect(c.server.hsts).toEqual({ maxAge: 31_536_000, includeSubDomains: false, preload: false, value: 'max-age=31536000' });
  });

  it('hstsValue follows RFC 6797 6.1', () => {
    expect(hstsValue(0, false, false)).toBe('max-age=0');
    expect(hstsValue(63_072_000, true, true)).toBe('max-age=63072000; includeSubDomains; preload');
  });

  const cases: [string, () => Record<string, unknown>, string[]][] = [
    ['redirectHttp without tls', () => ({ redirectHttp: { port: 8080 } }),
      ['server.redirectHttp: redirects to https need server.tls (the gateway must serve https to redirect to it); add server.tls or remove redirectHttp']],
    ['hsts without tls', () => ({ hsts: { maxAge: 10 } }),
      ['server.hsts: Strict-Transport-Security is sent only over https (RFC 6797 7.2); add server.tls or remove hsts']],
    ['redirectHttp on server.port', () => ({ port: 8443, tls: { cert: api.certFile, key: api.keyFile }, redirectHttp: { port: 8443 } }),
      ['server.redirectHttp.port: is server.port (8443); the redirect listener needs a port of its own, such as 80 or 8080']],
    ['an ACME directory that does not exist', () => ({ tls: { cert: api.certFile, key: api.keyFile }, redirectHttp: { port: 8080, acmeChallengeDir: '/nonexistent/acme' } }),
      ['server.redirectHttp.acmeChallengeDir: "/nonexistent/acme" is not a readable directory (no such directory); create it for the ACME client to write into']],
    ['a redirect status that is not a redirect', () => ({ tls: { cert: api.certFile, key: api.keyFile }, redirectHttp: { port: 8080, status: 200 } }),
      ['server.redirectHttp.status: must be one of "301", "302", "307", "308" (got 200)']],
  ];
  for (const [what, server, want] of cases) {
    it(`refuses ${what}`, () => {
      expect(lines(withServer(server()))).toEqual(want);
    });
  }

  it('preload without includeSubDomains and a year is a warning', () => {
    const r = validateConfig(withServer({ tls: { cert: api.certFile, key: api.keyFile }, hsts: { preload: true } }));
    expect(r.ok && r.warnings.map((w) => w.path)).toEqual(['server.hsts.preload']);
  });
});

describe('https upstreams', () => {
  it('https:// targets parse with port 443 by default and tls: true', () => {
    expect(parseTargetUrl('https://billing.internal')).toEqual({ url: 'https://billing.internal:443', host: 'billing.internal', port: 443, tls: true });
    expect(parseTargetUrl('HTTPS://10.0.0.1:8443')).toEqual({ url: 'https://10.0.0.1:8443', host: '10.0.0.1', port: 8443, tls: true });
    expect(parseTargetUrl('http://a')).toEqual({ url: 'http://a:80', host: 'a', port: 80, tls: false });
    expect(parseTargetUrl('ftp://a')).toBe('unsupported scheme "ftp://"; only http:// and https:// upstreams are supported');
  });

  it('upstreams.<n>.tls resolves the CA bundle, the client certificate and the defaults', () => {
    const doc = minimal() as { upstreams: Record<string, unknown> };
    doc.upstreams['users'] = { targets: ['https://127.0.0.1:9443'], tls: { ca: ca.certFile, servername: 'Users.Internal', cert: client.certFile, key: client.keyFile } };
    const u = valid(doc).upstreams['users']!;
    expect(u.targets[0]).toMatchObject({ url: 'https://127.0.0.1:9443', tls: true });
    expect(u.tls).toMatchObject({ caPem: ca.certPem, caFile: ca.certFile, servername: 'users.internal', rejectUnauthorized: true, minVersion: 'TLSv1.2' });
    expect(u.tls.clientCert).toMatchObject({ certPem: client.certPem, keyPem: client.keyPem, names: ['gateway-client'] });
  });

  const cases: [string, () => Record<string, unknown>, () => string[]][] = [
    ['an empty CA file', () => ({ ca: f.file('empty-ca.pem', '') }),
      () => [`upstreams.users.tls.ca: the CA bundle "${f.dir}/empty-ca.pem" is empty`]],
    ['a CA file with no certificate', () => ({ ca: f.file('key-as-ca.pem', api.keyPem) }),
      () => [`upstreams.users.tls.ca: "${f.dir}/key-as-ca.pem" holds no PEM certificate (-----BEGIN CERTIFICATE-----)`]],
    ['a CA file that cannot be read', () => ({ ca: '/nonexistent/ca.pem' }),
      () => ['upstreams.users.tls.ca: cannot read the CA bundle "/nonexistent/ca.pem": no such file']],
    ['a client certificate without its key', () => ({ cert: client.certFile }),
      () => ['upstreams.users.tls.key: a client certificate needs both cert and key; add key or remove cert']],
    ['a client key that does not match', () => ({ cert: client.certFile, key: api.keyFile }),
      () => [`upstreams.users.tls.key: "[redacted]" is not the private key of the certificate "${client.certFile}" (CN=gateway-client); use the key the certificate was issued for`]],
    ['a servername with a port', () => ({ servername: 'billing.internal:8443' }),
      () => ['upstreams.users.tls.servername: must be a host name such as "billing.internal"']],
  ];
  for (const [what, tls, want] of cases) {
    it(`refuses ${what}`, () => {
      const doc = minimal() as { upstreams: Record<string, unknown> };
      doc.upstreams['users'] = { targets: ['https://127.0.0.1:9443'], tls: tls() };
      expect(lines(doc)).toEqual(want());
    });
  }

  it('tls settings on an upstream without https targets is a warning', () => {
    const doc = minimal() as { upstreams: Record<string, unknown> };
    doc.upstreams['users'] = { targets: ['http://127.0.0.1:9001'], tls: { rejectUnauthorized: false } };
    const r = validateConfig(doc);
    expect(r.ok && r.warnings.map((w) => `${w.path}: ${w.message}`)).toEqual([
      'upstreams.users.tls: no target of this upstream is https://, so these settings are not used; write its targets as https://host:port',
    ]);
  });
});

describe('a certificate replaced on disk is read again by the next load', () => {
  it('the resolved PEM follows the file', () => {
    const certFile = f.file('swap.crt', api.certPem);
    const keyFile = f.file('swap.key', api.keyPem);
    const doc = withServer({ tls: { cert: certFile, key: keyFile } });
    expect(valid(doc).server.tls!.default.names).toEqual(['api.example.com']);
    writeFileSync(certFile, other.certPem);
    expect(lines(doc)).toEqual([`server.tls.key: "[redacted]" is not the private key of the certificate "${certFile}" (CN=other.test); use the key the certificate was issued for`]);
    writeFileSync(keyFile, other.keyPem);
    expect(valid(doc).server.tls!.default.names).toEqual(['other.test']);
  });
});
