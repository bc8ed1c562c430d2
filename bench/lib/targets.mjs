// The upstream and the targets (proxies under test). Adding a peer is ONE
// entry in TARGETS: a port, a reason it cannot run (or null), and how to
// start it (command + args; config files go in the run's temp dir).
//
// Every peer gets one worker/thread and an upstream keep-alive pool of 512
// (more than the largest -c), so no peer loses throughput to reconnects.
// nginx/haproxy run in the foreground with private configs and pid files in
// the temp dir: no system service is touched. Ports 18000-18099 only.
import { writeFileSync, readFileSync, mkdirSync, chmodSync, existsSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { which, spawnPinned, waitReady, portInUse, stopChild, cmdOutput } from './proc.mjs';
import { strictRateLimitTarget } from './strict-target.mjs';
import { resilienceTargets } from './resilience-targets.mjs';
import { balancingTargets } from './balancing-targets.mjs';
import { splitTargets } from './split-targets.mjs';
import { retryTargets } from './retry-targets.mjs';
import { authTargets } from './auth-targets.mjs';
import { tlsTargets } from './tls-targets.mjs';

export const BENCH_DIR = join(dirname(fileURLToPath(import.meta.url)), '..');
export const ROOT_DIR = join(BENCH_DIR, '..');
// TURNPIKE_DIST points the harness at another build (e.g. a copy of an older
// dist/ for an A/B run); default: this checkout's dist/.
export const TURNPIKE_DIST = process.env.TURNPIKE_DIST || join(ROOT_DIR, 'dist');
export const TURNPIKE_CLI = join(TURNPIKE_DIST, 'engine/cli.js');
// TURNPIKE_BASE_DIST: a second build (e.g. main before a change) benched as
// the `turnpike-base` target in the same run, rounds interleaved with
// `turnpike-node`: an A/B that a minute-scale swing of the VM hits alike.
export const TURNPIKE_BASE_DIST = process.env.TURNPIKE_BASE_DIST || null;
// Config keys added to the base target's config (JSON), e.g.
// '{"log":{"access":{"enabled":false}}}' when the base build has an access
// log too; none by default, since older builds refuse keys they do not know.
const TURNPIKE_BASE_EXTRA = process.env.TURNPIKE_BASE_EXTRA ? JSON.parse(process.env.TURNPIKE_BASE_EXTRA) : {};
/** The plain proxy: no access log (the turnpike-accesslog target measures it). */
const NO_ACCESS_LOG = { log: { access: { enabled: false } } };
export const BUN_BIN = join(ROOT_DIR, 'node_modules/.bin/bun');

export const UPSTREAM_PORT = 18000;
export const POOL = 512;
export const BIG_BODY_BYTES = 1024 * 1024;
// CPU 0: proxy under test. CPU 1: load generator and upstream.
export const PROXY_CPU = 0;
export const LOAD_CPU = 1;

const NGINX = which('nginx');
const HAPROXY = which('haproxy');

// Shared nginx settings. keepalive_requests defaults to 1000 (client and
// upstream side): that would make wrk and the proxy reconnect every 1000
// requests, so it is raised everywhere. Temp paths are private.
function nginxCommon(tmp, name) {
  const t = join(tmp, `${name}-temp`);
  mkdirSync(t, { recursive: true });
  chmodSync(t, 0o777); // workers drop to `nobody` when started as root
  return `
worker_processes 1;
daemon off;
master_process on;
pid ${join(tmp, `${name}.pid`)};
error_log ${join(tmp, `${name}-error.log`)} warn;
worker_rlimit_nofile 20000;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_max_body_size 4m;
  client_body_buffer_size 64k;
  client_body_temp_path ${t}/client;
  proxy_temp_path ${t}/proxy;
  fastcgi_temp_path ${t}/fastcgi;
  uwsgi_temp_path ${t}/uwsgi;
  scgi_temp_path ${t}/scgi;
  default_type application/octet-stream;
`;
}

/** One-worker nginx upstream: "ok" for any method on /, 1 MiB on /1mb. */
export async function startUpstream(tmp, log) {
  if (await portInUse(UPSTREAM_PORT)) throw new Error(`port ${UPSTREAM_PORT} is busy: stop what holds it`);
  const www = join(tmp, 'www');
  mkdirSync(www, { recursive: true });
  chmodSync(tmp, 0o755);
  chmodSync(www, 0o755);
  writeFileSync(join(www, '1mb'), Buffer.alloc(BIG_BODY_BYTES, 'x'), { mode: 0o644 });
  let child;
  let kind;
  if (NGINX) {
    kind = 'nginx';
    const conf = join(tmp, 'upstream-nginx.conf');
    // `return 200` answers POST too: nginx reads and discards the body
    // (client_max_body_size must cover it), verified by checkUpstream().
    writeFileSync(
      conf,
      `${nginxCommon(tmp, 'upstream')}
  sendfile on;
  server {
    listen 127.0.0.1:${UPSTREAM_PORT} backlog=4096;
    location = /1mb { root ${www}; }
    location / { return 200 "ok"; }
  }
}
`,
    );
    child = spawnPinned(LOAD_CPU, NGINX, ['-c', conf, '-p', tmp], { logFile: log });
  } else {
    kind = 'node:http (nginx missing)';
    child = spawnPinned(LOAD_CPU, process.execPath, [join(BENCH_DIR, 'peers/upstream-node.mjs'), String(UPSTREAM_PORT)], { logFile: log });
  }
  await waitReady(UPSTREAM_PORT, { child });
  await checkUpstream();
  return { child, kind, port: UPSTREAM_PORT };
}

/** The upstream must answer POST 16 KB with 200 and serve exactly 1 MiB. */
async function checkUpstream() {
  const post = await fetch(`http://127.0.0.1:${UPSTREAM_PORT}/`, { method: 'POST', body: Buffer.alloc(16384, 'p') });
  const postBody = await post.text();
  if (post.status !== 200 || postBody !== 'ok') throw new Error(`upstream POST check failed: ${post.status} ${postBody.slice(0, 80)}`);
  const big = await fetch(`http://127.0.0.1:${UPSTREAM_PORT}/1mb`);
  const len = (await big.arrayBuffer()).byteLength;
  if (big.status !== 200 || len !== BIG_BODY_BYTES) throw new Error(`upstream /1mb check failed: ${big.status}, ${len} bytes`);
}

const upstreamUrl = `http://127.0.0.1:${UPSTREAM_PORT}`;

function turnpikeConfig(tmp, name, port, extra = {}, routeExtra = {}) {
  const file = join(tmp, `${name}.json`);
  writeFileSync(
    file,
    JSON.stringify(
      {
        server: { host: '127.0.0.1', port, workers: 1 },
        admin: { enabled: false },
        ...extra,
        upstreams: { up: { targets: [{ url: upstreamUrl }], pool: { maxConnections: POOL } } },
        routes: [{ id: 'all', path: '/*', upstream: 'up', ...routeExtra }],
      },
      null,
      2,
    ),
  );
  return file;
}

const notBuilt = () => (existsSync(TURNPIKE_CLI) ? null : `not built: run npm run build (no ${TURNPIKE_CLI})`);

/**
 * The policies of the turnpike-ratelimit* targets (one each, named `client`
 * on the route; ratelimit-report.mjs --in-process times the same ones).
 */
export const RATE_LIMIT_POLICIES = {
  // One token bucket per client address, as behind a load balancer: by ip,
  // the load generator's 127.0.0.1 a trusted proxy, so the client is the
  // X-Forwarded-For address. The rate is far above what any one address
  // sends (each comes back once per 10,000 requests), so nothing is refused.
  'turnpike-ratelimit': { by: 'ip', rate: 1000, per: '1s' },
  // The same without RateLimit-Policy / RateLimit response headers: the
  // difference to turnpike-ratelimit is what writing them costs.
  'turnpike-ratelimit-noheaders': { by: 'ip', rate: 1000, per: '1s', headers: 'none' },
  // The same keyed by the X-Client header value instead (no X-Forwarded-For
  // parsing, no trusted-proxy check).
  'turnpike-ratelimit-header': { by: 'header:x-client', rate: 1000, per: '1s' },
  // One request per address per hour: each address's first request passes
  // (in the warm-up), every later one is a 429 (wrk counts them as errors).
  // The warm-up must send all 10,000 addresses (the default WARMUP=2 does
  // at this VM's rates; with WARMUP=1 some first requests fell in round 1).
  'turnpike-ratelimit-refusing': { by: 'ip', rate: 1, per: '1h' },
};

/**
 * name: label in tables. port: where load goes. proxy: false for `direct`.
 * skip(): a reason it cannot run here, or null. command(tmp): [cmd, args].
 * version(): for the results file.
 */
export const TARGETS = [
  {
    name: 'turnpike-node',
    port: 18080,
    skip: notBuilt,
    command: (tmp) => [process.execPath, [TURNPIKE_CLI, 'start', '--config', turnpikeConfig(tmp, 'turnpike-node', 18080, NO_ACCESS_LOG)]],
    version: () => `node ${process.version}`,
  },
  {
    // The same with the access log on (JSON, every field, to a file): the
    // difference to turnpike-node is what logging every request costs.
    name: 'turnpike-accesslog',
    port: 18084,
    skip: notBuilt,
    command: (tmp) => [process.execPath, [TURNPIKE_CLI, 'start', '--config',
      turnpikeConfig(tmp, 'turnpike-accesslog', 18084, { log: { access: { enabled: true, destination: process.env.ACCESS_LOG_DEST || join(tmp, 'access.log'), format: 'json' } } })]],
    version: () => `node ${process.version}`,
  },
  {
    // The same, with metrics.enabled: false: the difference to turnpike-node
    // is what counting (shared counters + HDR histograms) costs per request.
    name: 'turnpike-nometrics',
    port: 18082,
    skip: notBuilt,
    command: (tmp) => [process.execPath, [TURNPIKE_CLI, 'start', '--config', turnpikeConfig(tmp, 'turnpike-nometrics', 18082, { metrics: { enabled: false }, ...NO_ACCESS_LOG })]],
    version: () => `node ${process.version}`,
  },
  {
    name: 'turnpike-base',
    port: 18083,
    skip: () => {
      if (TURNPIKE_BASE_DIST === null) return 'set TURNPIKE_BASE_DIST to a built dist/ to bench it against this one';
      return existsSync(join(TURNPIKE_BASE_DIST, 'engine/cli.js')) ? null : `no ${join(TURNPIKE_BASE_DIST, 'engine/cli.js')}`;
    },
    command: (tmp) => [process.execPath, [join(TURNPIKE_BASE_DIST, 'engine/cli.js'), 'start', '--config', turnpikeConfig(tmp, 'turnpike-base', 18083, TURNPIKE_BASE_EXTRA)]],
    version: () => `node ${process.version}, ${TURNPIKE_BASE_DIST}`,
  },
  {
    name: 'turnpike-bun',
    port: 18081,
    skip: () => notBuilt() ?? (existsSync(BUN_BIN) ? null : `no bun: run npm ci at the repo root (${BUN_BIN})`),
    command: (tmp) => [BUN_BIN, [TURNPIKE_CLI, 'start', '--config', turnpikeConfig(tmp, 'turnpike-bun', 18081, NO_ACCESS_LOG)]],
    version: () => `bun ${cmdOutput(BUN_BIN, ['--version'])}`,
  },
  {
    // turnpike-node's config on the node backend (server.backend: node, a
    // strict HTTP/1.1 server on node:net; one worker thread, the only count
    // Node 20 allows there) instead of uWS: the backend as a bench dimension
    // (issue 13). Port 18079: outside 18080-18099, where another session's
    // uWS gateway (SO_REUSEPORT) could silently share the port.
    name: 'turnpike-node-backend',
    port: 18079,
    skip: notBuilt,
    command: (tmp) => [process.execPath, [TURNPIKE_CLI, 'start', '--config',
      turnpikeConfig(tmp, 'turnpike-node-backend', 18079, { server: { host: '127.0.0.1', port: 18079, workers: 1, backend: 'node' }, ...NO_ACCESS_LOG })]],
    version: () => `node ${process.version}, server.backend node`,
  },
  // Rate limiting (issue 10), with the `ratelimit` scenario (10,000 client
  // addresses in X-Forwarded-For and X-Client). Ports 18050-18056: outside
  // 18080-18099, which other work on a shared VM may hold (uWS listens with
  // SO_REUSEPORT, so a second gateway there would take part of the load
  // silently). turnpike-plain is turnpike-node's config on such a port: the
  // baseline of the ratelimit* targets in the same run.
  rateLimitTarget('turnpike-plain', 18050, null),
  rateLimitTarget('turnpike-ratelimit', 18051, RATE_LIMIT_POLICIES['turnpike-ratelimit']),
  rateLimitTarget('turnpike-ratelimit-noheaders', 18052, RATE_LIMIT_POLICIES['turnpike-ratelimit-noheaders']),
  rateLimitTarget('turnpike-ratelimit-header', 18053, RATE_LIMIT_POLICIES['turnpike-ratelimit-header']),
  rateLimitTarget('turnpike-ratelimit-refusing', 18054, RATE_LIMIT_POLICIES['turnpike-ratelimit-refusing']),
  // Strict mode, one Redis decision per request (its own redis-server): lib/strict-target.mjs.
  strictRateLimitTarget({ cli: TURNPIKE_CLI, upstreamUrl, pool: POOL, loadCpu: LOAD_CPU, notBuilt }),
  // Upstream resilience (issue 11): round_robin vs p2c + a breaker, two targets: lib/resilience-targets.mjs.
  ...resilienceTargets({ cli: TURNPIKE_CLI, benchDir: BENCH_DIR, pool: POOL, loadCpu: LOAD_CPU, notBuilt }),
  // Keyed balancers (issue 11): round_robin vs consistent_hash on a header, two targets: lib/balancing-targets.mjs.
  ...balancingTargets({ cli: TURNPIKE_CLI, benchDir: BENCH_DIR, pool: POOL, loadCpu: LOAD_CPU, notBuilt }),
  // Traffic split (issue 11): single upstream vs a 2-way split, with and without hashOn: lib/split-targets.mjs.
  ...splitTargets({ cli: TURNPIKE_CLI, upstreamUrl, pool: POOL, notBuilt }),
  // Retries (issue 11): no retry vs retry on, healthy path: lib/retry-targets.mjs.
  ...retryTargets({ cli: TURNPIKE_CLI, upstreamUrl, pool: POOL, notBuilt }),
  // API keys (issue 12): no auth vs auth with a warm cache (scopes + grants, an unknown key): lib/auth-targets.mjs.
  ...authTargets({ cli: TURNPIKE_CLI, dist: TURNPIKE_DIST, upstreamUrl, pool: POOL, notBuilt }),
  // TLS (issue 15): nginx-tls, turnpike-tls (uWS, node backend, Bun) over https, and https upstreams: lib/tls-targets.mjs.
  ...tlsTargets({ cli: TURNPIKE_CLI, bunBin: BUN_BIN, nginx: NGINX, nginxCommon, turnpikeConfig, noAccessLog: NO_ACCESS_LOG, upstreamUrl, pool: POOL, loadCpu: LOAD_CPU, notBuilt }),
  {
    name: 'nginx',
    port: 18001,
    skip: () => (NGINX ? null : 'nginx not installed: run bench/setup.sh'),
    command: (tmp) => {
      const conf = join(tmp, 'nginx-proxy.conf');
      // Upstream keepalive sized to the load (512 >= -c256); without it
      // nginx reconnects per request. proxy_buffers hold 1 MiB in memory and
      // proxy_max_temp_file_size 0 keeps big responses off the disk.
      writeFileSync(
        conf,
        `${nginxCommon(tmp, 'nginx-proxy')}
  proxy_buffer_size 16k;
  proxy_buffers 16 64k;
  proxy_busy_buffers_size 128k;
  proxy_max_temp_file_size 0;
  upstream up {
    server 127.0.0.1:${UPSTREAM_PORT};
    keepalive ${POOL};
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:18001 backlog=4096;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`,
      );
      return [NGINX, ['-c', conf, '-p', tmp]];
    },
    version: () => cmdOutput(NGINX, ['-v'])?.replace(/^nginx version: /, ''),
  },
  {
    // nginx with an access log like turnpike-accesslog's (JSON, the same
    // fields, to a file, buffered 64k and flushed every second): what
    // logging every request costs the reference.
    name: 'nginx-accesslog',
    port: 18005,
    skip: () => (NGINX ? null : 'nginx not installed: run bench/setup.sh'),
    command: (tmp) => {
      const conf = join(tmp, 'nginx-accesslog.conf');
      writeFileSync(
        conf,
        `${nginxCommon(tmp, 'nginx-accesslog')}
  log_format turnpike escape=json '{"time":"$time_iso8601","request_id":"$request_id","client":"$remote_addr","method":"$request_method",'
    '"host":"$http_host","path":"$uri","query":"$args","status":$status,"bytes_received":$request_length,"bytes_sent":$body_bytes_sent,'
    '"duration_ms":$request_time,"upstream_ms":$upstream_response_time,"route":"all","upstream":"up","target":"$upstream_addr",'
    '"error":null,"user_agent":"$http_user_agent"}';
  proxy_buffer_size 16k;
  proxy_buffers 16 64k;
  proxy_busy_buffers_size 128k;
  proxy_max_temp_file_size 0;
  upstream up {
    server 127.0.0.1:${UPSTREAM_PORT};
    keepalive ${POOL};
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:18005 backlog=4096;
    access_log ${process.env.ACCESS_LOG_DEST || join(tmp, 'nginx-access.log')} turnpike buffer=64k flush=1s;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`,
      );
      return [NGINX, ['-c', conf, '-p', tmp]];
    },
    version: () => cmdOutput(NGINX, ['-v'])?.replace(/^nginx version: /, ''),
  },
  {
    name: 'haproxy',
    port: 18002,
    skip: () => (HAPROXY ? null : 'haproxy not installed: run bench/setup.sh'),
    command: (tmp) => {
      const conf = join(tmp, 'haproxy.cfg');
      writeFileSync(
        conf,
        `global
  nbthread 1
  maxconn 8000
  pidfile ${join(tmp, 'haproxy.pid')}
defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
  http-reuse always
frontend fe
  bind 127.0.0.1:18002
  default_backend be
backend be
  server s1 127.0.0.1:${UPSTREAM_PORT} pool-max-conn ${POOL}
`,
      );
      return [HAPROXY, ['-db', '-f', conf]];
    },
    version: () => cmdOutput(HAPROXY, ['-v'])?.split('\n')[0],
  },
  {
    name: 'node-http-proxy',
    port: 18003,
    skip: () => (existsSync(join(BENCH_DIR, 'node_modules/http-proxy')) ? null : 'http-proxy missing: run bench/setup.sh'),
    command: () => [process.execPath, [join(BENCH_DIR, 'peers/node-http-proxy.mjs'), '18003', upstreamUrl, String(POOL)]],
    version: () => `http-proxy ${pkgVersion('http-proxy')} on node ${process.version}`,
  },
  {
    name: 'fastify',
    port: 18004,
    skip: () => (existsSync(join(BENCH_DIR, 'node_modules/@fastify/http-proxy')) ? null : '@fastify/http-proxy missing: run bench/setup.sh'),
    command: () => [process.execPath, [join(BENCH_DIR, 'peers/fastify-proxy.mjs'), '18004', upstreamUrl, String(POOL)]],
    version: () => `fastify ${pkgVersion('fastify')} + @fastify/http-proxy ${pkgVersion('@fastify/http-proxy')}`,
  },
  {
    // No proxy: load straight at the upstream. The latency baseline for
    // "added latency"; its CPU column is the upstream's, not a proxy's.
    name: 'direct',
    port: UPSTREAM_PORT,
    direct: true,
    skip: () => null,
    version: () => 'upstream only',
  },
];

/**
 * A Turnpike target with one rate-limit policy (`client`) on its route, or
 * none (policy null: the plain proxy). `verify` checks, before any load,
 * that the policy keys by the client address it is given: a fresh address
 * passes (with or without RateLimit headers, as configured), and for the
 * refusing target a second request of that address gets 429 while another
 * address still passes.
 */
function rateLimitTarget(name, port, policy) {
  const extra = policy === null
    ? NO_ACCESS_LOG
    : { ...NO_ACCESS_LOG, server: { host: '127.0.0.1', port, workers: 1, trustedProxies: ['127.0.0.1'] }, rateLimits: { client: policy } };
  return {
    name,
    port,
    skip: notBuilt,
    command: (tmp) => [process.execPath, [TURNPIKE_CLI, 'start', '--config', turnpikeConfig(tmp, name, port, extra, policy === null ? {} : { rateLimit: ['client'] })]],
    version: () => `node ${process.version}${policy === null ? '' : `, rateLimit ${JSON.stringify(policy)}`}`,
    verify: policy === null ? null : async () => {
      const get = async (addr) => {
        const r = await fetch(`http://127.0.0.1:${port}/`, { headers: { 'x-forwarded-for': addr, 'x-client': addr } });
        await r.arrayBuffer();
        return r;
      };
      // 192.0.2.0/24 (TEST-NET-1): never one of the scenario's 10.x addresses.
      const first = await get('192.0.2.1');
      const wantHeaders = (policy.headers ?? 'ietf') !== 'none';
      if (first.status !== 200) throw new Error(`${name}: a fresh address got ${first.status}, not 200`);
      if (first.headers.has('ratelimit') !== wantHeaders) throw new Error(`${name}: RateLimit header ${wantHeaders ? 'missing' : 'present'}`);
      if (policy.rate === 1) {
        const again = await get('192.0.2.1');
        const other = await get('192.0.2.2');
        if (again.status !== 429 || other.status !== 200) throw new Error(`${name}: expected 429 then 200 for another address, got ${again.status}, ${other.status}`);
      }
    },
  };
}

export function pkgVersion(name) {
  try {
    return JSON.parse(readFileSync(join(BENCH_DIR, 'node_modules', name, 'package.json'), 'utf8')).version;
  } catch {
    return null;
  }
}

/** TARGETS filtered by a comma list (env TARGETS), order kept. */
export function selectTargets(filter) {
  if (!filter) return TARGETS;
  const want = filter.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = want.filter((w) => !TARGETS.some((t) => t.name === w));
  if (unknown.length) throw new Error(`unknown target(s) ${unknown.join(', ')}; known: ${TARGETS.map((t) => t.name).join(', ')}`);
  return TARGETS.filter((t) => want.includes(t.name));
}

/**
 * Start one target pinned to PROXY_CPU and wait until a GET through it
 * returns 200. Returns { pid, child } (child null for direct).
 */
export async function startTarget(target, tmp, upstream) {
  if (target.direct) return { child: upstream.child, pid: upstream.child.pid, direct: true };
  if (await portInUse(target.port)) throw new Error(`port ${target.port} is busy`);
  const [cmd, args] = target.command(tmp);
  const log = join(tmp, `${target.name}.log`);
  const child = spawnPinned(PROXY_CPU, cmd, args, { logFile: log, cwd: BENCH_DIR });
  try {
    await waitReady(target.port, { child, timeoutMs: 20000, tls: target.tls === true });
  } catch (err) {
    await stopChild(child);
    await target.stop?.();
    let tail = '';
    try {
      tail = readFileSync(log, 'utf8').split('\n').slice(-8).join('\n');
    } catch {}
    throw new Error(`${target.name}: ${err.message}${tail ? `\n--- ${log} ---\n${tail}` : ''}`);
  }
  if (target.verify) {
    try {
      await target.verify();
    } catch (err) {
      await stopChild(child);
      await target.stop?.();
      throw err;
    }
  }
  return { child, pid: child.pid, direct: false, log };
}

/**
 * Start every target (skipping those that cannot run here, reporting those
 * that fail to start). Returns { running: [{ target, name, pid, child,
 * direct, log }], targetInfo: [{ name, status, version?, port?, reason? }] }.
 */
export async function startTargets(targets, tmp, upstream) {
  const running = [];
  const targetInfo = [];
  for (const target of targets) {
    const reason = target.skip();
    if (reason) {
      console.log(`skip ${target.name}: ${reason}`);
      targetInfo.push({ name: target.name, status: 'skipped', reason });
      continue;
    }
    try {
      const started = await startTarget(target, tmp, upstream);
      running.push({ target, ...started, name: target.name });
      const version = target.version?.() ?? null;
      targetInfo.push({ name: target.name, status: 'ok', version, port: target.port });
      console.log(`started ${target.name} (${version}) on 127.0.0.1:${target.port}, pid ${started.pid}, CPU ${started.direct ? LOAD_CPU : PROXY_CPU}`);
    } catch (err) {
      console.log(`FAILED to start ${target.name}: ${err.message}`);
      targetInfo.push({ name: target.name, status: 'failed', reason: err.message.split('\n')[0] });
    }
  }
  return { running, targetInfo };
}
