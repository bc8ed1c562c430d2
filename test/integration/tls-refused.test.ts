/**
 * server.tls material a backend's TLS library cannot load, although Node's
 * OpenSSL (the validator's) can: an EC key on brainpoolP256r1 or
 * secp256k1, an RSA-PSS or Ed448 key, a cipher list that selects nothing in
 * BoringSSL (uWS). The workers refuse such a config before applying
 * anything (Backend.prepare): a reload answers 422 and is rolled back, the
 * old certificates keep serving, /admin/config and
 * turnpike_tls_certificate_expiry_seconds keep showing them, the file is
 * not rewritten, and a worker that crashes afterwards comes back on the old
 * config; a start with it exits 1 with one line naming the setting.
 *
 * The validator may refuse some of these itself (it knows BoringSSL's key
 * types and cipher names): the reload cases below hold whichever layer
 * refuses. The case `ciphers: AES128+SHA384` (keywords BoringSSL knows that
 * select no suite together) passes the validator, so the refusal there must
 * come from the workers; the worker's own check of every key type and
 * cipher list is also run directly (uws-tls.ts buildSslApp, node/tls.ts
 * ServerTlsContexts), with no validator in front.
 */
import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServerTlsConfig, TlsKeyPair } from '../../common/config/types.js';
import { ConfigRefusedError } from '../../workers/transport/backend.js';
import { ServerTlsContexts } from '../../workers/transport/node/tls.js';
import { loadUws } from '../../workers/transport/uws-loader.js';
import { buildSslApp } from '../../workers/transport/uws-tls.js';
import { CertFactory, type CertFiles, type KeyType } from '../helpers/certs.js';
import { CLI, ROOT, baseConfig, startGateway, trackProcess, type Gateway } from '../helpers/gateway.js';
import { sampleValue, scrape } from '../helpers/metrics.js';

const TOKEN = 'tls-refused-test-admin-token-0123456789';
/** Keywords BoringSSL knows (the validator lets them through) that select no TLS 1.2 suite together: only the workers can refuse it. */
const WORKER_ONLY_CIPHERS = 'AES128+SHA384';

const certs = new CertFactory();
let ca: CertFiles;
let good: CertFiles;
const bad = {} as Record<'brainpoolP256r1' | 'secp256k1' | 'rsa-pss' | 'ed448', CertFiles>;
/** A certificate and a key that is not its own (every backend's OpenSSL refuses the pair). */
let mismatched: { certFile: string; keyFile: string };

beforeAll(() => {
  ca = certs.ca();
  good = certs.leaf({ names: ['localhost'], ca, days: 30 });
  for (const k of ['brainpoolP256r1', 'secp256k1', 'rsa-pss', 'ed448'] as const) bad[k] = certs.leaf({ names: ['localhost'], ca, days: 90, keyType: k });
  const other = certs.leaf({ names: ['localhost'], ca, days: 90 });
  mismatched = { certFile: other.certFile, keyFile: good.keyFile };
});

afterAll(() => certs.cleanup());

const fingerprint = (c: CertFiles): string => new X509Certificate(c.certPem).fingerprint256;

/** The fingerprint of the certificate the gateway serves (no SNI: 127.0.0.1), from a fresh handshake. */
function served(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      s.destroy();
      resolve(fp);
    });
    s.setTimeout(5000, () => s.destroy(new Error('handshake timeout')));
    s.on('error', reject);
  });
}

/** A ServerTlsConfig as the loader makes it, for the direct checks. */
function tlsOf(c: CertFiles, over: Partial<ServerTlsConfig> = {}): ServerTlsConfig {
  const x = new X509Certificate(c.certPem);
  const pair: TlsKeyPair = {
    certFile: c.certFile, keyFile: c.keyFile, certPem: c.certPem, keyPem: c.keyPem, hosts: [], names: ['localhost'],
    notAfterMs: Date.parse(x.validTo), fingerprint256: x.fingerprint256,
  };
  return {
    default: pair, sni: [], sniStrict: false, minVersion: 'TLSv1.2',
    ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256', ecdhCurve: 'X25519:prime256v1:secp384r1', alpn: [], ...over,
  };
}

/** What `fn` throws, or null. */
function thrown(fn: () => unknown): Error | null {
  try {
    fn();
    return null;
  } catch (e) {
    return e as Error;
  }
}

async function admin(gw: Gateway, method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const r = await fetch(`http://127.0.0.1:${gw.adminPort}${path}`, {
    method, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  return { status: r.status, body: await r.json() };
}

async function metric(gw: Gateway, series: string): Promise<number | null> {
  return sampleValue(await scrape(gw.adminPort!), series);
}

const expirySeries = (certFile: string) => `turnpike_tls_certificate_expiry_seconds{certificate="${certFile}",role="default"}`;

/**
 * With test hooks, SIGUSR2 makes worker 0 throw: waits until it was
 * replaced and /health says ok, then checks it stays so (no crash loop).
 */
async function crashWorker0(gw: Gateway): Promise<void> {
  const restarts = (await metric(gw, 'turnpike_worker_restarts_total'))!;
  gw.proc.kill('SIGUSR2');
  await expect.poll(async () => {
    if ((await metric(gw, 'turnpike_worker_restarts_total'))! <= restarts) return 'not restarted yet';
    return (await admin(gw, 'GET', '/health')).body.status;
  }, { timeout: 5_000, interval: 50 }).toBe('ok');
  await new Promise((r) => setTimeout(r, 400));
  expect((await admin(gw, 'GET', '/health')).body.status).toBe('ok');
  expect(await metric(gw, 'turnpike_worker_restarts_total')).toBe(restarts + 1);
}

function run(args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const p = trackProcess(spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: { ...process.env, TURNPIKE_LOG_FORMAT: 'json' } }));
    let stderr = '';
    p.stderr.on('data', (d) => { stderr += d; });
    p.stdout.resume();
    p.on('exit', (code) => resolve({ code, stderr }));
  });
}

describe('the uWS backend\'s own check (uws-tls.ts buildSslApp), no validator in front', () => {
  const uws = loadUws();

  it.each(['brainpoolP256r1', 'secp256k1', 'rsa-pss', 'ed448'] as const)('a %s key: refused, naming server.tls.cert, the file and the key type', (k) => {
    const err = thrown(() => buildSslApp(uws, tlsOf(bad[k]), () => {}));
    expect(err).toBeInstanceOf(ConfigRefusedError);
    expect(err!.message).toContain(`server.tls.cert "${bad[k].certFile}": uWS (BoringSSL) cannot load this certificate/key (key type `);
    expect(err!.message).toContain({ brainpoolP256r1: 'EC brainpoolP256r1', secp256k1: 'EC secp256k1', 'rsa-pss': 'RSA-PSS 2048', ed448: 'Ed448' }[k]);
    expect(err!.message).toContain('use an RSA (2048+) or ECDSA P-256/P-384 key');
    expect(err!.message).not.toContain('ciphers');
  });

  it('a bad sni entry is named by its index', () => {
    const t = tlsOf(good);
    const sniPair = { ...tlsOf(bad.ed448).default, hosts: ['api.example.com'] };
    const err = thrown(() => buildSslApp(uws, { ...t, sni: [sniPair] }, () => {}));
    expect(err!.message).toContain(`server.tls.sni[0].cert "${bad.ed448.certFile}"`);
  });

  it.each(['ECDHE-ECDSA-AES128-SHA256', 'DHE-RSA-AES128-GCM-SHA256', 'RC4-SHA', WORKER_ONLY_CIPHERS])('ciphers %s: refused as server.tls.ciphers, not as the certificate', (c) => {
    const err = thrown(() => buildSslApp(uws, tlsOf(good, { ciphers: c }), () => {}));
    expect(err).toBeInstanceOf(ConfigRefusedError);
    expect(err!.message).toBe(`server.tls.ciphers: uWS (BoringSSL) knows none of these ciphers: ${c}; use names such as ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256 (or remove ciphers: the default list loads everywhere)`);
  });

  it('a good pair with the default cipher list and one known name among unknown ones builds', () => {
    for (const c of ['ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256', 'ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256']) {
      const app = buildSslApp(uws, tlsOf(good, { ciphers: c }), () => {});
      app.close();
    }
  });
});

describe('the node backend\'s own check (node/tls.ts ServerTlsContexts)', () => {
  it('a key that is not the certificate\'s: refused naming the pair; a cipher list OpenSSL refuses: naming the settings', () => {
    const pairErr = thrown(() => new ServerTlsContexts(tlsOf({ ...good, certFile: mismatched.certFile, certPem: readFileSync(mismatched.certFile, 'utf8') })));
    expect(pairErr).toBeInstanceOf(ConfigRefusedError);
    expect(pairErr!.message).toMatch(new RegExp(`^server\\.tls\\.cert "${mismatched.certFile}": the node backend's OpenSSL cannot load this certificate/key \\(key type EC prime256v1: `));
    const cipherErr = thrown(() => new ServerTlsContexts(tlsOf(good, { ciphers: 'RC4-SHA' })));
    expect(cipherErr).toBeInstanceOf(ConfigRefusedError);
    expect(cipherErr!.message).toMatch(/^server\.tls: the node backend's OpenSSL cannot load ciphers "RC4-SHA"/);
    // What Node's OpenSSL loads (BoringSSL does not) builds on this backend.
    expect(thrown(() => new ServerTlsContexts(tlsOf(bad.brainpoolP256r1, { ciphers: 'ECDHE-ECDSA-AES128-SHA256' })))).toBeNull();
  });
});

/** The gateway's document: `cert` as the default certificate, `ciphers` if given. */
function doc(backend: 'uws' | 'node', cert: { certFile: string; keyFile: string }, ciphers?: string): Record<string, any> {
  return baseConfig({
    server: { backend, workers: backend === 'uws' ? 2 : 1, tls: { cert: cert.certFile, key: cert.keyFile, ...(ciphers !== undefined ? { ciphers } : {}) } },
    admin: { enabled: true },
  });
}

/** A refused reload changed nothing: old certificate served, expiry metric and /admin/config on the old file, the file as it was. */
async function expectUnchanged(gw: Gateway, fileText: string, refusedCert: string | null): Promise<void> {
  for (let i = 0; i < 6; i++) expect(await served(gw.port)).toBe(fingerprint(good));
  const text = await scrape(gw.adminPort!);
  expect(sampleValue(text, expirySeries(good.certFile))).toBe(Math.floor(Date.parse(new X509Certificate(good.certPem).validTo) / 1000));
  if (refusedCert !== null) expect(text).not.toContain(`certificate="${refusedCert}"`);
  const cfg = JSON.stringify((await admin(gw, 'GET', '/admin/config')).body.server.tls);
  expect(cfg).toContain(`"${good.certFile}"`);
  if (refusedCert !== null) expect(cfg).not.toContain(`"${refusedCert}"`);
  expect(readFileSync(gw.configFile, 'utf8')).toBe(fileText);
}

describe('uws backend: a reload uWS cannot load is refused and rolled back', () => {
  let gw: Gateway;
  let fileText: string;

  beforeAll(async () => {
    gw = await startGateway(doc('uws', good), { env: { TURNPIKE_ADMIN_TOKEN: TOKEN, TURNPIKE_TEST_HOOKS: '1' } });
    fileText = readFileSync(gw.configFile, 'utf8');
    expect(await served(gw.port)).toBe(fingerprint(good));
  });
  afterAll(async () => {
    await gw?.stop();
  });

  const cases: Array<[string, () => Record<string, any>, () => string | null, RegExp]> = [
    ['a brainpoolP256r1 key', () => doc('uws', bad.brainpoolP256r1), () => bad.brainpoolP256r1.certFile, /brainpoolP256r1/],
    ['ciphers ECDHE-ECDSA-AES128-SHA256', () => doc('uws', good, 'ECDHE-ECDSA-AES128-SHA256'), () => null, /server\.tls\.ciphers/],
  ];
  it.each(cases)('PUT %s: 422, nothing changes, a crashed worker comes back on the old certificate', async (_name, next, refusedCert, why) => {
    const failed = (await metric(gw, 'turnpike_config_reloads_total{result="failure"}'))!;
    const ok = (await metric(gw, 'turnpike_config_reloads_total{result="success"}'))!;
    const r = await admin(gw, 'PUT', '/admin/config', next());
    expect(r.status).toBe(422);
    expect(r.body.persisted ?? false).toBe(false);
    expect(JSON.stringify(r.body)).toMatch(why);
    expect(await metric(gw, 'turnpike_config_reloads_total{result="failure"}')).toBe(failed + 1);
    expect(await metric(gw, 'turnpike_config_reloads_total{result="success"}')).toBe(ok);
    await expectUnchanged(gw, fileText, refusedCert());
    await crashWorker0(gw);
    await expectUnchanged(gw, fileText, refusedCert());
  });

  it(`PUT ciphers ${WORKER_ONLY_CIPHERS} (passes the validator): the workers refuse it, every worker is rolled back`, async () => {
    const r = await admin(gw, 'PUT', '/admin/config', doc('uws', good, WORKER_ONLY_CIPHERS));
    expect(r.status).toBe(422);
    const msg = JSON.stringify(r.body);
    expect(msg).toContain('could not apply the config (server.tls.ciphers: uWS (BoringSSL) knows none of these ciphers: AES128+SHA384; use names such as');
    expect(msg).toContain('every worker was rolled back');
    expect(msg).not.toContain('    at ');
    await expectUnchanged(gw, fileText, null);
    await crashWorker0(gw);
    await expectUnchanged(gw, fileText, null);
  });

  it('SIGHUP with the file rewritten to such a config: "config refused", the old certificate keeps serving', async () => {
    const from = gw.logs.length;
    writeFileSync(gw.configFile, JSON.stringify(doc('uws', good, WORKER_ONLY_CIPHERS)));
    try {
      gw.proc.kill('SIGHUP');
      await expect.poll(() => gw.logs.slice(from).find((l) => l.includes('config refused')) ?? '', { timeout: 10_000, interval: 50 })
        .toContain('server.tls.ciphers: uWS (BoringSSL) knows none of these ciphers');
      expect(gw.logs.slice(from).some((l) => l.includes('"msg":"config reloaded"'))).toBe(false);
      for (let i = 0; i < 4; i++) expect(await served(gw.port)).toBe(fingerprint(good));
    } finally {
      writeFileSync(gw.configFile, fileText);
    }
    // A good reload still works afterwards (the prepared-app bookkeeping is clean).
    const renewed = certs.leaf({ names: ['localhost'], ca, days: 60 });
    const r = await admin(gw, 'PUT', '/admin/config', doc('uws', renewed));
    expect(r.status).toBe(200);
    for (let i = 0; i < 6; i++) expect(await served(gw.port)).toBe(fingerprint(renewed));
  });
});

describe('node backend: a pair OpenSSL refuses is refused on reload and the replaced worker serves the old one', () => {
  let gw: Gateway;
  let fileText: string;

  beforeAll(async () => {
    gw = await startGateway(doc('node', good), { env: { TURNPIKE_ADMIN_TOKEN: TOKEN, TURNPIKE_TEST_HOOKS: '1' } });
    fileText = readFileSync(gw.configFile, 'utf8');
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it('PUT a key that is not the certificate\'s: 422; a crashed worker comes back serving the old certificate', async () => {
    const r = await admin(gw, 'PUT', '/admin/config', doc('node', mismatched));
    expect(r.status).toBe(422);
    await expectUnchanged(gw, fileText, mismatched.certFile);
    await crashWorker0(gw);
    await expectUnchanged(gw, fileText, mismatched.certFile);
  });
});

describe('a start with material uWS cannot load exits 1 with one line, no stack trace', () => {
  const starts: Array<[string, () => Record<string, any>, RegExp]> = [
    [`ciphers ${WORKER_ONLY_CIPHERS} (refused by the workers)`, () => doc('uws', good, WORKER_ONLY_CIPHERS),
      /server\.tls\.ciphers: uWS \(BoringSSL\) knows none of these ciphers: AES128\+SHA384; use names such as/],
    ['an Ed448 key', () => doc('uws', bad.ed448), /server\.tls\.(cert|key)[^"]*"[^"]*".*Ed448/i],
  ];
  it.each(starts)('%s', async (_name, config, why) => {
    const file = certs.file(`start-${Math.random().toString(36).slice(2)}.json`, JSON.stringify(config()));
    const r = await run(['start', '--config', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).not.toContain('    at ');
    const errors = r.stderr.split('\n').filter((l) => l.includes('"level":"error"'));
    expect(errors.length).toBeGreaterThan(0);
    // The line that ends the start says what to fix.
    const end = errors.find((l) => /"msg":"(failed to start|the configuration is invalid[^"]*)"/.test(l));
    expect(end).toMatch(why);
  });
});
