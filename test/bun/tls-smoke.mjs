#!/usr/bin/env node
// Bun TLS smoke test (issue 15): the gateway (dist/) under Bun with server.tls,
// its two workers on Bun.serve({ tls, reusePort }), driven by node:tls, https
// and `ws` clients verified against a private CA. Run by `npm run test:bun`
// after run-smoke.mjs. Prints "N passed, N failed".
//
// Checks: SNI (exact, wildcard, one label only, default for unknown names and
// for no SNI), minVersion / ecdhCurve / ciphers as Bun applies them, a proxied
// request and a wss:// round trip with X-Forwarded-Proto https, plain HTTP on
// the TLS port, and a certificate reload (SIGHUP) under keep-alive load: no
// failed request, new connections get the new certificate and settings, an
// open WebSocket keeps working.
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket, { WebSocketServer } from 'ws';
import { check, eq, finish } from './checks.mjs';
import { startBunGateway } from './gateway.mjs';

const dir = mkdtempSync(join(tmpdir(), 'turnpike-bun-tls-'));

// ------------------------------------------------------------------ certificates (openssl)

function openssl(args) {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}
let n = 0;
function ca() {
  const b = `${++n}-ca`;
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${b}.key`, '-out', `${b}.crt`,
    '-days', '30', '-subj', '/CN=Turnpike Bun TLS CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  return { cert: join(dir, `${b}.crt`), key: join(dir, `${b}.key`) };
}
function leaf(names, signer, rsa = false) {
  const b = `${++n}-leaf`;
  writeFileSync(join(dir, `${b}.ext`), `subjectAltName=${names.map((x) => `DNS:${x}`).join(',')}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n`);
  const newkey = rsa ? ['-newkey', 'rsa:2048'] : ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'];
  openssl(['req', '-new', ...newkey, '-nodes', '-keyout', `${b}.key`, '-out', `${b}.csr`, '-subj', `/CN=${names[0]}`]);
  openssl(['x509', '-req', '-in', `${b}.csr`, '-CA', signer.cert, '-CAkey', signer.key, '-CAcreateserial', '-out', `${b}.crt`, '-days', '30', '-extfile', `${b}.ext`]);
  const cert = join(dir, `${b}.crt`);
  return { cert, key: join(dir, `${b}.key`), fp: new X509Certificate(readFileSync(cert)).fingerprint256 };
}
const CA = ca();
const caPem = readFileSync(CA.cert, 'utf8');
const def = leaf(['default.test', 'localhost'], CA);
const api = leaf(['api.example.com'], CA);
const wild = leaf(['*.example.com'], CA, true);
const renewed = leaf(['default.test', 'localhost'], CA);
// The default pair in files of their own: the reload rewrites them.
const defCrt = join(dir, 'default.crt');
const defKey = join(dir, 'default.key');
writeFileSync(defCrt, readFileSync(def.cert));
writeFileSync(defKey, readFileSync(def.key));

// ------------------------------------------------------------------ upstream

const upstream = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ url: req.url, proto: req.headers['x-forwarded-proto'] ?? null, forwarded: req.headers.forwarded ?? null }));
  });
});
upstream.keepAliveTimeout = 30_000;
new WebSocketServer({ server: upstream }).on('connection', (w) => w.on('message', (d) => w.send(`echo:${d}`)));
await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
const upPort = upstream.address().port;

// ------------------------------------------------------------------ gateway

const configFile = join(dir, 'turnpike.json');
function writeConfig(tlsOver) {
  writeFileSync(configFile, JSON.stringify({
    server: {
      host: '127.0.0.1', port: 0, backend: 'bun', workers: 2,
      forwarded: { xForwardedProtoHost: true, forwarded: true },
      tls: {
        cert: defCrt, key: defKey,
        sni: [
          { hosts: ['api.example.com'], cert: api.cert, key: api.key },
          { hosts: ['*.example.com'], cert: wild.cert, key: wild.key },
        ],
        ciphers: 'ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384',
        ...tlsOver,
      },
    },
    admin: { enabled: false },
    upstreams: { up: { targets: [`http://127.0.0.1:${upPort}`] } },
    routes: [{ id: 'all', path: '/*', upstream: 'up' }],
  }));
}
writeConfig({ minVersion: 'TLSv1.3', ecdhCurve: 'X25519' });

const { proc, logs, exited, started: starting } = startBunGateway(configFile);
// A crash of this script must not leave the gateway running.
process.on('exit', () => { if (proc.exitCode === null) proc.kill('SIGKILL'); });
proc.stdout.resume();
const started = await starting;
const port = started.port;

// ------------------------------------------------------------------ clients


/** A bare handshake; `servername` undefined: no SNI. Resolves the certificate's fingerprint, the protocol, or the error code. */
function handshake(servername, extra = {}) {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false, ...extra }, () => {
      const r = { fp: s.getPeerCertificate().fingerprint256, protocol: s.getProtocol(), error: '' };
      s.end();
      resolve(r);
    });
    s.setTimeout(5000, () => s.destroy(new Error('timeout')));
    s.on('error', (e) => resolve({ fp: '', protocol: null, error: e.code ?? e.message }));
  });
}

/** An https GET verified against the CA for `name`. */
function get(name, path, agent = false) {
  return new Promise((resolve, reject) => {
    const r = https.request({ host: '127.0.0.1', port, servername: name, path, ca: caPem, headers: { host: name }, agent }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    r.setTimeout(10_000, () => r.destroy(new Error('request timeout')));
    r.on('error', reject);
    r.end();
  });
}

function wss(name, path) {
  return new Promise((resolve, reject) => {
    const w = new WebSocket(`wss://127.0.0.1:${port}${path}`, { ca: caPem, servername: name, headers: { host: name } });
    w.once('open', () => resolve(w));
    w.once('error', reject);
  });
}
const echo = (w, text) => new Promise((resolve, reject) => {
  w.once('message', (d) => resolve(String(d)));
  w.once('error', reject);
  w.send(text);
});

console.log(`bun tls smoke: gateway on https://127.0.0.1:${port} (backend ${started.backend})`);
await check('runs the bun backend', () => eq(started.backend, 'bun', 'backend'));

await check('SNI: exact name, wildcard (one label), default for its names, unknown names and no SNI, any case', async () => {
  eq((await handshake('api.example.com')).fp, api.fp, 'api.example.com');
  eq((await handshake('API.Example.com')).fp, api.fp, 'API.Example.com');
  eq((await handshake('www.example.com')).fp, wild.fp, 'www.example.com');
  eq((await handshake('a.b.example.com')).fp, def.fp, 'a.b.example.com');
  eq((await handshake('default.test')).fp, def.fp, 'default.test');
  eq((await handshake('other.test')).fp, def.fp, 'other.test');
  eq((await handshake(undefined)).fp, def.fp, 'no SNI');
});

await check('minVersion TLSv1.3 and ecdhCurve X25519 are applied: TLS 1.2 and P-256-only clients refused', async () => {
  eq((await handshake('default.test', { maxVersion: 'TLSv1.2' })).error, 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION', 'TLS 1.2');
  eq((await handshake('default.test', { ecdhCurve: 'prime256v1' })).error, 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE', 'P-256 only');
  eq((await handshake('default.test')).protocol, 'TLSv1.3', 'TLS 1.3');
});

await check('a proxied request over https: verified on every name, X-Forwarded-Proto and Forwarded say https', async () => {
  for (const name of ['default.test', 'api.example.com', 'shop.example.com']) {
    const r = await get(name, `/p/${name}?q=1`);
    eq(r.status, 200, name);
    const j = JSON.parse(r.body);
    eq([j.url, j.proto, /;proto=https$/.test(j.forwarded)], [`/p/${name}?q=1`, 'https', true], name);
  }
});

let wsBefore = null;
await check('a wss:// round trip (exact SNI name)', async () => {
  wsBefore = await wss('api.example.com', '/ws/before');
  eq(await echo(wsBefore, 'hello'), 'echo:hello', 'echo');
});

await check('plain HTTP on the TLS port: closed without an answer; the gateway serves on', async () => {
  const got = await new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => s.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    let b = '';
    s.on('data', (d) => (b += d));
    s.on('error', () => {});
    s.on('close', () => resolve(b));
    s.setTimeout(5000, () => s.destroy());
  });
  eq(got.startsWith('HTTP/'), false, 'an HTTP answer');
  eq((await get('default.test', '/after-plain')).status, 200, 'after');
});

await check('reload (SIGHUP) with a renewed certificate and minVersion TLSv1.2: no failed request under keep-alive load; new connections get both; the open WebSocket keeps working', async () => {
  const agent = new https.Agent({ keepAlive: true, maxSockets: 8, ca: caPem });
  let stop = false;
  let ok = 0;
  const failures = [];
  const loop = async (i) => {
    while (!stop) {
      try {
        const r = await get(i % 2 === 0 ? 'default.test' : 'api.example.com', `/load/${i}`, agent);
        if (r.status === 200) ok++;
        else failures.push(`status ${r.status}`);
      } catch (e) {
        failures.push(String(e));
      }
    }
  };
  const loops = Array.from({ length: 8 }, (_, i) => loop(i));
  await new Promise((r) => setTimeout(r, 300));
  const okBefore = ok;
  writeFileSync(defCrt, readFileSync(renewed.cert));
  writeFileSync(defKey, readFileSync(renewed.key));
  writeConfig({ minVersion: 'TLSv1.2', ecdhCurve: 'X25519' });
  const from = logs.length;
  proc.kill('SIGHUP');
  const until = performance.now() + 10_000;
  while (!logs.slice(from).some((l) => l.includes('"msg":"config reloaded"')) && performance.now() < until) await new Promise((r) => setTimeout(r, 50));
  eq(logs.slice(from).some((l) => l.includes('"msg":"config reloaded"')), true, `reloaded (logs: ${logs.slice(from).join(' | ')})`);
  // The replaced servers stop after their grace (bun-server.ts RETIRE_GRACE_MS); load goes on past it.
  await new Promise((r) => setTimeout(r, 600));
  stop = true;
  await Promise.all(loops);
  agent.destroy();
  eq(failures, [], 'failed requests');
  eq(okBefore > 10 && ok > okBefore, true, `requests served (${okBefore} before, ${ok} in all)`);
  eq((await handshake('default.test')).fp, renewed.fp, 'default.test now');
  eq((await handshake(undefined)).fp, renewed.fp, 'no SNI now');
  eq((await handshake('api.example.com')).fp, api.fp, 'api.example.com unchanged');
  eq((await handshake('default.test', { maxVersion: 'TLSv1.2' })).protocol, 'TLSv1.2', 'TLS 1.2 now');
  eq(await echo(wsBefore, 'after'), 'echo:after', 'WebSocket opened before the reload');
  const w2 = await wss('chat.example.com', '/ws/after');
  eq(await echo(w2, 'new'), 'echo:new', 'new WebSocket');
  w2.close();
  wsBefore.close();
});

proc.kill('SIGTERM');
await check('drains and exits 0 on SIGTERM', async () => eq(await exited, 0, 'exit code'));
upstream.closeAllConnections();
upstream.close();
rmSync(dir, { recursive: true, force: true });
finish();
