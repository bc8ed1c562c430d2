// TLS (issue 15): what terminating TLS costs, against nginx with the same
// certificate, in the same run as the plain proxies (run.mjs, NAME=tls;
// tables: tls-report.mjs). Targets, each in front of the bench's plain
// nginx upstream (127.0.0.1:18000) unless said otherwise:
//
//   nginx-tls                  one worker, `listen ssl`, TLSv1.2 + TLSv1.3,
//                              Turnpike's default TLS 1.2 ciphers and curves;
//                              session resumption as nginx ships it:
//                              ssl_session_cache none (no server-side
//                              cache) and ssl_session_tickets on, i.e.
//                              stateless tickets (no ssl_session_* line)
//   turnpike-tls               turnpike-node's config + server.tls (uWS)
//   turnpike-tls-node-backend  the same on server.backend: node
//   turnpike-bun-tls           the same on Bun (Bun.serve)
//
// Upstream TLS (https:// targets), plain downstream, scenario get-64:
//
//   turnpike-upstream-tls      turnpike-node proxying to an https upstream
//                              (tls: ca + servername, certificates verified)
//   nginx-upstream-tls         nginx proxying to the same upstream
//                              (proxy_ssl_verify on, proxy_ssl_session_reuse
//                              on, upstream keepalive 512)
//
// The https upstream is a one-worker nginx on 127.0.0.1:18046 (`listen
// ssl`, `return 200 "ok"`), pinned to the load CPU like the plain upstream,
// started with the first of the two upstream-TLS targets and stopped with
// the last.
//
// Certificates are made once per run, with openssl, into <tmp>/tls/: a
// private CA (ECDSA P-256) and two leaves it signs, `server` (SANs
// localhost, bench.test, 127.0.0.1: every TLS target serves it) and
// `upstream` (upstream.bench.test, 127.0.0.1). TLS_KEY=rsa makes the
// leaves RSA 2048 instead of ECDSA P-256 (a full handshake costs the server
// an RSA signature then: several times an ECDSA one).
//
// Downstream TLS targets carry `tls: true`: run.mjs loads them over https
// and only with `tls: true` scenarios (tls-get-64, tls-handshake,
// tls-handshake-full); the plain targets get the plain scenarios. Each
// target's `reference` names what its `× nginx` column divides by.
//
// Ports 18040-18046 (the table in README.md lists the others).
import { execFileSync, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { join } from 'node:path';
import { cmdOutput, spawnPinned, stopChild, which } from './proc.mjs';

export const TLS_PORTS = {
  'nginx-tls': 18040,
  'turnpike-tls': 18041,
  'turnpike-tls-node-backend': 18042,
  'turnpike-bun-tls': 18043,
  'turnpike-upstream-tls': 18044,
  'nginx-upstream-tls': 18045,
  httpsUpstream: 18046,
};

/**
 * Each TLS target's plain counterpart (tls-report.mjs: what TLS adds, in
 * the same run): the same proxy and config without TLS.
 */
export const TLS_BASELINES = {
  'nginx-tls': 'nginx',
  'turnpike-tls': 'turnpike-node',
  'turnpike-tls-node-backend': 'turnpike-node-backend',
  'turnpike-bun-tls': 'turnpike-bun',
  'turnpike-upstream-tls': 'turnpike-node',
  'nginx-upstream-tls': 'nginx',
};

/** `ec` (ECDSA P-256, default) or `rsa` (RSA 2048): the leaves' key type (env TLS_KEY). */
export const TLS_KEY = (process.env.TLS_KEY || 'ec').toLowerCase();
if (TLS_KEY !== 'ec' && TLS_KEY !== 'rsa') throw new Error(`TLS_KEY must be ec or rsa, got ${process.env.TLS_KEY}`);
export const TLS_KEY_LABEL = TLS_KEY === 'rsa' ? 'RSA 2048' : 'ECDSA P-256';
const UPSTREAM_NAME = 'upstream.bench.test';

/** Turnpike's defaults (common/config/tls.ts TLS_DEFAULTS), given to nginx too so both offer the same. */
const CIPHERS = 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:'
  + 'ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305';
const CURVES = 'X25519:prime256v1:secp384r1';

function openssl(args, cwd) {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    if (err.code === 'ENOENT') throw new Error('openssl is not installed (apt-get install openssl)');
    throw new Error(`openssl ${args[0]} failed: ${err.stderr?.toString() ?? err.message}`);
  }
}

/**
 * The run's certificates in <tmp>/tls/ (made on the first call, reused
 * after): { dir, caCert, serverCert, serverKey, upstreamCert, upstreamKey,
 * serverFingerprint256, keyType }.
 */
export function ensureCerts(tmp) {
  const dir = join(tmp, 'tls');
  const f = (n) => join(dir, n);
  if (!existsSync(f('upstream.crt'))) {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt',
      '-days', '30', '-subj', '/CN=Turnpike bench CA', '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
    const newkey = TLS_KEY === 'rsa' ? ['-newkey', 'rsa:2048'] : ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'];
    for (const [base, names] of [['server', ['localhost', 'bench.test', '127.0.0.1']], ['upstream', [UPSTREAM_NAME, '127.0.0.1']]]) {
      openssl(['req', '-new', ...newkey, '-nodes', '-keyout', `${base}.key`, '-out', `${base}.csr`, '-subj', `/CN=${names[0]}`], dir);
      const san = names.map((n) => (/^[\d.]+$/.test(n) ? `IP:${n}` : `DNS:${n}`)).join(',');
      writeFileSync(f(`${base}.ext`), `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature${TLS_KEY === 'rsa' ? ',keyEncipherment' : ''}\nextendedKeyUsage=serverAuth\nsubjectAltName=${san}\n`);
      openssl(['x509', '-req', '-in', `${base}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${base}.crt`, '-days', '30', '-extfile', `${base}.ext`], dir);
    }
    // nginx workers run as `nobody` when the harness is root: they read the files after the master did, but keep them readable.
    for (const n of ['ca.crt', 'server.crt', 'server.key', 'upstream.crt', 'upstream.key']) execFileSync('chmod', ['0644', f(n)]);
  }
  return {
    dir,
    caCert: f('ca.crt'),
    serverCert: f('server.crt'),
    serverKey: f('server.key'),
    upstreamCert: f('upstream.crt'),
    upstreamKey: f('upstream.key'),
    serverFingerprint256: new X509Certificate(readFileSync(f('server.crt'))).fingerprint256,
    keyType: TLS_KEY_LABEL,
  };
}

/**
 * GET https://127.0.0.1:port/ (certificate not verified: the fingerprint
 * is checked instead). Resolves { status, body, protocol, cipher,
 * fingerprint256 }.
 */
function httpsGet(port, { session } = {}) {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path: '/', servername: 'bench.test', rejectUnauthorized: false, agent: false, session, timeout: 3000 }, (res) => {
      const sock = res.socket;
      const facts = { status: res.statusCode, protocol: sock.getProtocol(), cipher: sock.getCipher()?.standardName, fingerprint256: sock.getPeerCertificate()?.fingerprint256, reused: sock.isSessionReused() };
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ ...facts, body, session: sock.getSession?.() }));
    });
    req.once('timeout', () => req.destroy(new Error('timeout')));
    req.once('error', reject);
  });
}

/** The downstream TLS targets' check: "ok" over TLS, with the run's server certificate. */
function verifyTls(name, port, tmp) {
  return async () => {
    const want = ensureCerts(tmp).serverFingerprint256;
    const r = await httpsGet(port);
    if (r.status !== 200 || r.body !== 'ok') throw new Error(`${name}: GET over TLS gave ${r.status} ${String(r.body).slice(0, 80)}`);
    if (r.fingerprint256 !== want) throw new Error(`${name}: served certificate ${r.fingerprint256}, not the run's (${want})`);
  };
}

/**
 * A TLS-terminating Turnpike: turnpike-node's config (deps.turnpikeConfig)
 * with server.tls (and `serverExtra`: the backend).
 */
function turnpikeTls(deps, name, bin, serverExtra, skipExtra) {
  const port = TLS_PORTS[name];
  let tmpDir = null;
  return {
    name,
    port,
    tls: true,
    reference: 'nginx-tls',
    skip: () => deps.notBuilt() ?? skipExtra?.() ?? null,
    command: (tmp) => {
      tmpDir = tmp;
      const c = ensureCerts(tmp);
      const server = { host: '127.0.0.1', port, workers: 1, ...serverExtra, tls: { cert: c.serverCert, key: c.serverKey } };
      return [bin(), [deps.cli, 'start', '--config', deps.turnpikeConfig(tmp, name, port, { ...deps.noAccessLog, server })]];
    },
    version: () => `${bin() === process.execPath ? `node ${process.version}` : `bun ${cmdOutput(deps.bunBin, ['--version'])}`}${serverExtra.backend ? `, server.backend ${serverExtra.backend}` : ''}, ${TLS_KEY_LABEL} cert`,
    verify: async () => verifyTls(name, port, tmpDir)(),
  };
}

/** The https upstream shared by the two upstream-TLS targets (started once, stopped with its last user). */
function httpsUpstream(deps) {
  let child = null;
  const users = new Set();
  return {
    start(tmp, user) {
      users.add(user);
      if (child !== null) return;
      const c = ensureCerts(tmp);
      const port = TLS_PORTS.httpsUpstream;
      const conf = join(tmp, 'https-upstream.conf');
      writeFileSync(conf, `${deps.nginxCommon(tmp, 'https-upstream')}
  server {
    listen 127.0.0.1:${port} ssl backlog=4096;
    ssl_certificate ${c.upstreamCert};
    ssl_certificate_key ${c.upstreamKey};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ${CIPHERS};
    ssl_ecdh_curve ${CURVES};
    location / { return 200 "ok"; }
  }
}
`);
      child = spawnPinned(deps.loadCpu, deps.nginx, ['-c', conf, '-p', tmp], { logFile: join(tmp, 'https-upstream.log') });
      child.unref();
      // Listening before the gateway starts (a synchronous wait: command() is synchronous).
      const probe = `const s=require('net').connect(${port},'127.0.0.1');s.on('connect',()=>process.exit(0));s.on('error',()=>process.exit(1));`;
      for (let i = 0; spawnSync(process.execPath, ['-e', probe]).status !== 0; i++) {
        if (i === 100) throw new Error(`the https upstream on ${port} did not start (see ${join(tmp, 'https-upstream.log')})`);
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
      }
    },
    async stop(user) {
      users.delete(user);
      if (users.size > 0 || child === null) return;
      const c = child;
      child = null;
      await stopChild(c);
    },
  };
}

/**
 * Every TLS target. `deps`: { cli, bunBin, nginx (path or null),
 * nginxCommon(tmp, name), turnpikeConfig(tmp, name, port, extra),
 * noAccessLog, upstreamUrl, pool, loadCpu, notBuilt }.
 */
export function tlsTargets(deps) {
  const noNginx = () => (deps.nginx ? null : 'nginx not installed: run bench/setup.sh');
  const noBun = () => (existsSync(deps.bunBin) ? null : `no bun: run npm ci at the repo root (${deps.bunBin})`);
  const nginxVersion = () => cmdOutput(deps.nginx, ['-v'])?.replace(/^nginx version: /, '');
  const up = httpsUpstream(deps);
  const upstreamTlsUrl = `https://127.0.0.1:${TLS_PORTS.httpsUpstream}`;
  let nginxTlsTmp = null;

  const nginxTls = {
    name: 'nginx-tls',
    port: TLS_PORTS['nginx-tls'],
    tls: true,
    reference: 'nginx-tls',
    skip: noNginx,
    command: (tmp) => {
      nginxTlsTmp = tmp;
      const c = ensureCerts(tmp);
      const conf = join(tmp, 'nginx-tls.conf');
      // The plain nginx target's proxy settings; TLS as nginx ships it
      // (no ssl_session_cache: `none`; ssl_session_tickets on), with
      // Turnpike's default TLS 1.2 ciphers and curves.
      writeFileSync(conf, `${deps.nginxCommon(tmp, 'nginx-tls')}
  proxy_buffer_size 16k;
  proxy_buffers 16 64k;
  proxy_busy_buffers_size 128k;
  proxy_max_temp_file_size 0;
  upstream up {
    server ${deps.upstreamUrl.replace(/^http:\/\//, '')};
    keepalive ${deps.pool};
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:${TLS_PORTS['nginx-tls']} ssl backlog=4096;
    ssl_certificate ${c.serverCert};
    ssl_certificate_key ${c.serverKey};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ${CIPHERS};
    ssl_ecdh_curve ${CURVES};
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`);
      return [deps.nginx, ['-c', conf, '-p', tmp]];
    },
    version: () => `${nginxVersion()}, ${TLS_KEY_LABEL} cert, session cache none + tickets on (nginx defaults)`,
    verify: async () => verifyTls('nginx-tls', TLS_PORTS['nginx-tls'], nginxTlsTmp)(),
  };

  /** Turnpike (Node, uWS) in front of the https upstream. */
  const turnpikeUpstreamTls = {
    name: 'turnpike-upstream-tls',
    port: TLS_PORTS['turnpike-upstream-tls'],
    reference: 'nginx-upstream-tls',
    skip: () => deps.notBuilt() ?? noNginx(),
    command: (tmp) => {
      up.start(tmp, 'turnpike-upstream-tls');
      const c = ensureCerts(tmp);
      const port = TLS_PORTS['turnpike-upstream-tls'];
      const file = join(tmp, 'turnpike-upstream-tls.json');
      writeFileSync(file, JSON.stringify({
        server: { host: '127.0.0.1', port, workers: 1 },
        admin: { enabled: false },
        ...deps.noAccessLog,
        upstreams: { up: { targets: [upstreamTlsUrl], pool: { maxConnections: deps.pool }, tls: { ca: c.caCert, servername: UPSTREAM_NAME } } },
        routes: [{ id: 'all', path: '/*', upstream: 'up' }],
      }, null, 2));
      return [process.execPath, [deps.cli, 'start', '--config', file]];
    },
    version: () => `node ${process.version}, https upstream (${TLS_KEY_LABEL} cert, verified)`,
    verify: async () => {
      const r = await fetch(`http://127.0.0.1:${TLS_PORTS['turnpike-upstream-tls']}/`);
      const body = await r.text();
      if (r.status !== 200 || body !== 'ok') throw new Error(`turnpike-upstream-tls: ${r.status} ${body.slice(0, 120)}`);
    },
    stop: () => up.stop('turnpike-upstream-tls'),
  };

  const nginxUpstreamTls = {
    name: 'nginx-upstream-tls',
    port: TLS_PORTS['nginx-upstream-tls'],
    reference: 'nginx-upstream-tls',
    skip: noNginx,
    command: (tmp) => {
      up.start(tmp, 'nginx-upstream-tls');
      const c = ensureCerts(tmp);
      const conf = join(tmp, 'nginx-upstream-tls.conf');
      writeFileSync(conf, `${deps.nginxCommon(tmp, 'nginx-upstream-tls')}
  proxy_buffer_size 16k;
  proxy_buffers 16 64k;
  proxy_busy_buffers_size 128k;
  proxy_max_temp_file_size 0;
  upstream tlsup {
    server 127.0.0.1:${TLS_PORTS.httpsUpstream};
    keepalive ${deps.pool};
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:${TLS_PORTS['nginx-upstream-tls']} backlog=4096;
    location / {
      proxy_pass https://tlsup;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_session_reuse on;
      proxy_ssl_server_name on;
      proxy_ssl_name ${UPSTREAM_NAME};
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate ${c.caCert};
      proxy_ssl_protocols TLSv1.2 TLSv1.3;
    }
  }
}
`);
      return [deps.nginx, ['-c', conf, '-p', tmp]];
    },
    version: () => `${nginxVersion()}, https upstream (${TLS_KEY_LABEL} cert, proxy_ssl_verify on, session reuse on)`,
    stop: () => up.stop('nginx-upstream-tls'),
  };

  return [
    nginxTls,
    turnpikeTls(deps, 'turnpike-tls', () => process.execPath, {}),
    turnpikeTls(deps, 'turnpike-tls-node-backend', () => process.execPath, { backend: 'node' }),
    turnpikeTls(deps, 'turnpike-bun-tls', () => deps.bunBin, {}, noBun),
    turnpikeUpstreamTls,
    nginxUpstreamTls,
  ];
}

/**
 * Compile lib/wrk-tls-shim.c into `dir` (LD_PRELOAD for wrk: counts full
 * and resumed handshakes, WRK_TLS_NO_RESUME=1 forces full ones). Returns
 * { path } or { reason } when there is no C compiler or it fails.
 */
export function buildWrkShim(benchDir, dir) {
  const cc = which('cc') ?? which('gcc');
  if (!cc) return { reason: 'no C compiler (cc) for lib/wrk-tls-shim.c: apt-get install gcc libc6-dev' };
  const out = join(dir, 'wrk-tls-shim.so');
  const r = spawnSync(cc, ['-shared', '-fPIC', '-O2', '-o', out, join(benchDir, 'lib/wrk-tls-shim.c'), '-ldl'], { encoding: 'utf8' });
  if (r.status !== 0) return { reason: `cc failed on lib/wrk-tls-shim.c: ${(r.stderr || r.error?.message || '').trim().slice(0, 200)}` };
  return { path: out };
}
