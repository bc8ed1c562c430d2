/**
 * The TLS control side, whatever the backend: the https redirect listener
 * (server.redirectHttp: 308 to the https URL with path and query kept,
 * every method, HTTP/1.0, hostile Host values, the ACME http-01 directory),
 * the certificate expiry gauge, and certificates replaced on disk: applied
 * by themselves once settled, a half-written pair refused while the old one
 * keeps serving, TLS on/off refused on reload.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { appendFileSync, copyFileSync, mkdirSync, readFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { CertFactory, type CertFiles } from '../helpers/certs.js';
import { freePort } from '../helpers/ports.js';
import { rawExchange } from '../helpers/raw-http.js';
import { rawRequest } from '../helpers/upstream.js';
import { sampleValue, scrape } from '../helpers/metrics.js';

let f: CertFactory;
let first: CertFiles;
let renewed: CertFiles;
let stranger: CertFiles;
let gw: Gateway;
let redirectPort: number;
let certFile: string;
let keyFile: string;
let acme: string;

const ADMIN = { TURNPIKE_ADMIN_TOKEN: 'admin-token-for-tls-tests' };

async function waitFor<T>(what: string, probe: () => Promise<T | null>, ms = 8000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== null) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function expiry(): Promise<number | null> {
  return sampleValue(await scrape(gw.adminPort!), `turnpike_tls_certificate_expiry_seconds{certificate="${certFile}",role="default"}`);
}

beforeAll(async () => {
  f = new CertFactory();
  const ca = f.ca();
  first = f.leaf({ names: ['example.test', 'localhost'], ca, days: 30 });
  renewed = f.leaf({ names: ['example.test', 'localhost'], ca, days: 90 });
  stranger = f.leaf({ names: ['stranger.test'], ca, days: 90 });
  certFile = join(f.dir, 'live', 'tls.crt');
  keyFile = join(f.dir, 'live', 'tls.key');
  mkdirSync(join(f.dir, 'live'));
  copyFileSync(first.certFile, certFile);
  copyFileSync(first.keyFile, keyFile);
  acme = join(f.dir, 'acme');
  mkdirSync(acme);
  writeFileSync(join(acme, 'tok_EN-123'), 'tok_EN-123.thumbprint');
  redirectPort = await freePort();
  gw = await startGateway(baseConfig({
    server: { tls: { cert: certFile, key: keyFile }, redirectHttp: { port: redirectPort, host: '127.0.0.1', httpsPort: 8443, acmeChallengeDir: acme } },
    admin: { enabled: true },
  }), { env: ADMIN });
});

afterAll(async () => {
  await gw?.stop();
  f?.cleanup();
});

describe('redirectHttp: every request is sent to https, path and query kept', () => {
  const methods = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'];
  const targets: [string, string][] = [
    ['/', '/'],
    ['/a/b?c=d&e=%2F', '/a/b?c=d&e=%2F'],
    ['/%7Euser/./x/../y?q', '/%7Euser/./x/../y?q'],
    ['/sp%20ace?x=1#', '/sp%20ace?x=1%23'],
    ['http://other.test/abs?x=1', '/abs?x=1'],
  ];
  for (const method of methods) {
    for (const [target, path] of targets) {
      it(`${method} ${target}`, async () => {
        const body = method === 'POST' || method === 'PUT' ? 'hello' : '';
        const { res, conn } = await rawExchange(redirectPort,
          `${method} ${target} HTTP/1.1\r\nHost: Example.TEST:8080\r\nContent-Length: ${body.length}\r\n\r\n${body}`, method === 'HEAD');
        conn.socket.destroy();
        expect(res.status).toBe(308);
        expect(res.headers.find(([n]) => n === 'location')?.[1]).toBe(`https://example.test:8443${path}`);
        expect(res.headers.some(([n]) => n === 'strict-transport-security')).toBe(false);
      });
    }
  }

  it('HTTP/1.0 is served (the redirect listener is node:http, whatever the backend)', async () => {
    const r = await rawRequest(redirectPort, 'GET /old HTTP/1.0\r\nHost: example.test\r\n\r\n');
    expect(r.text).toMatch(/^HTTP\/1\.1 308 /);
    expect(r.text).toContain('location: https://example.test:8443/old\r\n');
  });

  const hostile: [string, string][] = [
    ['no Host', 'GET / HTTP/1.1\r\nConnection: close\r\n\r\n'],
    ['an empty Host', 'GET / HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n'],
    ['a Host with a slash (open redirect)', 'GET / HTTP/1.1\r\nHost: evil.test/x\r\nConnection: close\r\n\r\n'],
    ['a Host with userinfo', 'GET / HTTP/1.1\r\nHost: a@evil.test\r\nConnection: close\r\n\r\n'],
    ['a Host with a space', 'GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n'],
    ['an asterisk target', 'OPTIONS * HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n'],
    ['two Host headers (RFC 9112 3.2)', 'GET / HTTP/1.1\r\nHost: example.test\r\nHost: evil.test\r\nConnection: close\r\n\r\n'],
    ['a Host of 300 characters', `GET / HTTP/1.1\r\nHost: ${'a'.repeat(300)}\r\nConnection: close\r\n\r\n`],
    ['a Host with port 99999', 'GET / HTTP/1.1\r\nHost: example.test:99999\r\nConnection: close\r\n\r\n'],
    ['CONNECT', 'CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n'],
    ['HTTP/1.0 without Host', 'GET / HTTP/1.0\r\n\r\n'],
  ];
  for (const [what, req] of hostile) {
    it(`400, never a Location, for ${what}`, async () => {
      const r = await rawRequest(redirectPort, req);
      expect(r.text).toMatch(/^HTTP\/1\.1 400 /);
      expect(r.text.toLowerCase()).not.toContain('location:');
      // This listener's JSON answer, saying what to do (not node:http's bare 400).
      expect(r.text).toMatch(/"code":"(bad_host|bad_request)"/);
    });
  }

  it('CR/LF cannot reach Location (node:http refuses them in the head)', async () => {
    const r = await rawRequest(redirectPort, 'GET /a\rSet-Cookie:x HTTP/1.1\r\nHost: example.test\r\n\r\n');
    expect(r.text).toMatch(/^HTTP\/1\.1 400 /);
    expect(r.text.toLowerCase()).not.toContain('set-cookie');
  });

  it('ACME http-01: a token file is served, anything else under the prefix is 404, never a file outside', async () => {
    const ok = await fetch(`http://127.0.0.1:${redirectPort}/.well-known/acme-challenge/tok_EN-123`);
    expect(ok.status).toBe(200);
    expect(await ok.text()).toBe('tok_EN-123.thumbprint');
    for (const bad of ['missing', '..%2F..%2Fetc%2Fpasswd', '../../../etc/passwd', 'a.b', '']) {
      const r = await rawRequest(redirectPort, `GET /.well-known/acme-challenge/${bad} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n`);
      expect(r.text, bad).toMatch(/^HTTP\/1\.1 404 /);
    }
    // Never a file outside through a symbolic link, never a FIFO (it would hold a thread until a writer came), nothing over 4 KiB.
    symlinkSync('/etc/passwd', join(acme, 'evil'));
    execFileSync('mkfifo', [join(acme, 'fifo')]);
    writeFileSync(join(acme, 'big'), 'x'.repeat(5000));
    for (const bad of ['evil', 'fifo', 'fifo', 'fifo', 'fifo', 'fifo', 'big']) {
      const r = await rawRequest(redirectPort, `GET /.well-known/acme-challenge/${bad} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n`);
      expect(r.text, bad).toMatch(/^HTTP\/1\.1 404 /);
      expect(r.text, bad).not.toContain('root:');
    }
    expect((await fetch(`http://127.0.0.1:${redirectPort}/.well-known/acme-challenge/tok_EN-123`)).status).toBe(200);
    // Other methods on the prefix redirect like any request.
    const post = await fetch(`http://127.0.0.1:${redirectPort}/.well-known/acme-challenge/tok_EN-123`, { method: 'POST', redirect: 'manual' });
    expect(post.status).toBe(308);
  });
});

describe('certificates on disk', () => {
  it('the expiry gauge gives the default certificate\'s notAfter in Unix seconds', async () => {
    const notAfter = Date.parse(new (await import('node:crypto')).X509Certificate(first.certPem).validTo) / 1000;
    expect(await expiry()).toBe(notAfter);
  });

  it('a half-written pair is refused (the old one keeps serving), the whole pair applies by itself', async () => {
    const before = await expiry();
    writeFileSync(certFile, readFileSync(renewed.certFile)); // the key is still the old one: refused
    await waitFor('the refusal in the log', async () => (gw.logs.some((l) => l.includes('config refused') && l.includes('cert-watch')) ? true : null));
    expect(await expiry()).toBe(before);
    writeFileSync(keyFile, readFileSync(renewed.keyFile));
    const notAfter = Date.parse(new (await import('node:crypto')).X509Certificate(renewed.certPem).validTo) / 1000;
    await waitFor('the renewed certificate', async () => ((await expiry()) === notAfter ? true : null));
  });

  it('GET /admin/config shows the certificates, never a private key', async () => {
    const r = await fetch(`http://127.0.0.1:${gw.adminPort}/admin/config`, { headers: { authorization: `Bearer ${ADMIN.TURNPIKE_ADMIN_TOKEN}` } });
    const text = await r.text();
    expect(r.status).toBe(200);
    expect(text).toContain('BEGIN CERTIFICATE');
    expect(text).not.toContain('PRIVATE KEY');
    expect(JSON.parse(text).server.tls.default.keyPem).toBe('[redacted]');
  });

  it('a file written every 100 ms in the same directory does not hold a renewal back', async () => {
    const noise = setInterval(() => appendFileSync(join(f.dir, 'live', 'noise.log'), 'x\n'), 100);
    try {
      writeFileSync(keyFile, readFileSync(first.keyFile));
      writeFileSync(certFile, readFileSync(first.certFile));
      const notAfter = Date.parse(new (await import('node:crypto')).X509Certificate(first.certPem).validTo) / 1000;
      await waitFor('the certificate written beside a noisy log', async () => ((await expiry()) === notAfter ? true : null));
    } finally {
      clearInterval(noise);
    }
  });

  it('a certificate directory replaced by another (mv live live.old; mkdir live) is watched again', async () => {
    renameSync(join(f.dir, 'live'), join(f.dir, 'live.old'));
    mkdirSync(join(f.dir, 'live'));
    copyFileSync(renewed.certFile, certFile);
    copyFileSync(renewed.keyFile, keyFile);
    const notAfter = Date.parse(new (await import('node:crypto')).X509Certificate(renewed.certPem).validTo) / 1000;
    await waitFor('the certificate in the new directory', async () => ((await expiry()) === notAfter ? true : null));
    // And a change inside the new directory afterwards.
    writeFileSync(keyFile, readFileSync(first.keyFile));
    writeFileSync(certFile, readFileSync(first.certFile));
    const back = Date.parse(new (await import('node:crypto')).X509Certificate(first.certPem).validTo) / 1000;
    await waitFor('a later change in the new directory', async () => ((await expiry()) === back ? true : null));
  });

  it('a SIGHUP that already read renewed files is not followed by a second reload from the watch', async () => {
    const reloads = () => gw.logs.filter((l) => l.includes('"actor":"cert-watch"') && l.includes('config reloaded')).length;
    await new Promise((r) => setTimeout(r, 1500));
    const before = reloads();
    // The tests above applied files through the watch: the filter finds its lines (else this test could not fail).
    expect(before).toBeGreaterThan(0);
    writeFileSync(keyFile, readFileSync(renewed.keyFile));
    writeFileSync(certFile, readFileSync(renewed.certFile));
    gw.proc.kill('SIGHUP');
    const notAfter = Date.parse(new (await import('node:crypto')).X509Certificate(renewed.certPem).validTo) / 1000;
    await waitFor('the SIGHUP reload', async () => ((await expiry()) === notAfter ? true : null));
    await new Promise((r) => setTimeout(r, 3000));
    expect(reloads()).toBe(before);
  });

  it('turning TLS off is refused on reload (a restart), the listener keeps speaking https', async () => {
    const doc = baseConfig({ server: { port: 0 }, admin: { enabled: true } });
    const r = await fetch(`http://127.0.0.1:${gw.adminPort}/admin/config`, {
      method: 'PUT', headers: { authorization: `Bearer ${ADMIN.TURNPIKE_ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(doc),
    });
    const text = await r.text();
    expect(r.status, text).toBe(422);
    expect(text).toContain('server.tls');
    expect(text).toContain('restart');
    expect(await expiry()).not.toBeNull();
  });

  it('a certificate that does not cover an sni host is refused with its path', async () => {
    const doc = baseConfig({ server: { port: 0, tls: { cert: certFile, key: keyFile, sni: [{ hosts: ['api.example.test'], cert: stranger.certFile, key: stranger.keyFile }] } }, admin: { enabled: true } });
    const r = await fetch(`http://127.0.0.1:${gw.adminPort}/admin/config`, {
      method: 'PUT', headers: { authorization: `Bearer ${ADMIN.TURNPIKE_ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(doc),
    });
    const text = await r.text();
    expect(r.status, text).toBe(422);
    expect(text).toContain('server.tls.sni[0].hosts[0]');
    expect(text).toContain('does not cover \\"api.example.test\\"');
  });
});
