#!/usr/bin/env node
// WebSocket relay bench (issue 14): Turnpike (uWS backend, one worker)
// against nginx (one worker, the standard WebSocket proxy config) in the same
// run, both in front of the same echo upstream (ws/echo.mjs: uWebSockets.js
// by default, ECHO=ws for the `ws` one).
//
//   cd bench && node ws/run.mjs
//   NS=1000 DURATION=5 TARGETS=turnpike,nginx node ws/run.mjs     # a quick look
//
// Per N (connections) and target, a fresh proxy pinned to CPU 0 (taskset),
// the echo upstream (ws/echo.mjs) and the clients (ws/client.mjs, at most
// PER_PROC connections per process; CLIENT=raw, the default: its own lean
// net-socket client, or CLIENT=ws: the `ws` package's) on CPU 1:
//   1. warm-up: WARM connections, WARM_S seconds of 1 message/s each, closed;
//      SETTLE_S seconds; RSS (VmRSS summed over the proxy's process tree) and
//      open fds (/proc/PID/fd, summed over the tree) "before";
//   2. N connections opened (CONCURRENCY handshakes in flight per client
//      process); SETTLE_S; RSS and fds "open" (idle: no message yet), and the
//      proxy's CPU over IDLE_S seconds with all of them idle;
//   3. DURATION seconds at RATE messages/s per connection (MSG_BYTES-byte
//      text messages, sends spread evenly over each second): the RTT each
//      client measures (send to echo back, µs, hdr histogram merged over the
//      client processes), and the proxy's CPU time (utime+stime over its
//      tree, /proc/PID/stat) from the first send to the last echo back,
//      divided by the messages it relayed = 2 per echo received (client to
//      upstream and back), also user and system time apart; the load side's
//      CPU over it (clients, echo upstream, % busy of CPU 1); RSS after;
//   3b. SETTLE_S seconds, then the fan-out of a push to all connections: FANOUT_ROUNDS times,
//      FANOUT_GAP_S apart, run.mjs asks the echo upstream (GET /push on its
//      own port) to send one FANOUT_BYTES text message to every connection it
//      holds; the echo answers once every send is queued (count, queueing
//      time). The message carries the push time (process.hrtime.bigint() in
//      µs: CLOCK_MONOTONIC, one clock for every process on Linux) and the
//      round; each client records receive time - push time per connection
//      (its own histogram, apart from the RTT one; pushes start with 'p',
//      echoes with a digit) and says when all its connections got a round.
//      Per target and N: push to last delivery (per round, the largest
//      latency: every connection served), p50/p99 of the per-connection
//      latency, missing deliveries (must be 0), and the proxy's CPU per
//      pushed message delivered: utime+stime from the first push to the
//      last round fully delivered / deliveries (gaps included), and the same
//      from schedstat (ns; net of idle, and inside the rounds only);
//   4. every client closes with 1000; SETTLE_AFTER_S seconds; RSS and fds
//      "after", and the echo upstream's fds (its sockets must be gone too);
//      again SETTLE_LATE_S seconds after the close ("late": V8 returns heap
//      pages to the OS only some seconds after the garbage is gone), also
//      after every cycle with REPEAT > 1.
// KB per connection = (RSS open - RSS before) / connections open.
// `direct` (clients straight at the echo upstream) gives the RTT floor of
// the clients and upstream on CPU 1; it has no proxy figures.
//
// Knobs (env): CLIENT=raw|ws ECHO=uws|ws (the load side, see above) NS=1000,5000 (list of N; 9900 fits the 20,000-fd limit of a
// proxy process: two sockets per connection) TARGETS=turnpike,nginx,direct
// DURATION=20 RATE=1 MSG_BYTES=64 PER_PROC=10000 (2500 with CLIENT=ws) CONCURRENCY=200 WARM=500
// WARM_S=3 SETTLE_S=2 SETTLE_AFTER_S=3 SETTLE_LATE_S=30 (0: no late reading) IDLE_S=3 OPEN_TIMEOUT_S=60 NAME=ws
// FANOUT_ROUNDS=5 (0: no fan-out) FANOUT_GAP_S=1 FANOUT_BYTES=MSG_BYTES FANOUT_DRAIN_S=5 (a round's deadline)
// REPEAT=1 (more open/traffic/close cycles per proxy, REPEAT_TRAFFIC_S=5 s of
// traffic each: RSS and fds after every close, a leak check) NO_MD=1 (leave RESULTS.md alone) KEEP_TMP=1 TURNPIKE_DIST=<a build's dist>.
// Output: a table per target and N (late RSS/fds columns at the end), a
// fan-out table, a per-N summary, results/<NAME>-*.json with every figure.
// Ports 19500 (echo), 19510 (turnpike), 19520 (nginx) on 127.0.0.1 only;
// every step is bounded; only the processes started here are stopped, by PID.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, readdirSync, readFileSync, rmSync, mkdirSync, chmodSync, existsSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import * as hdr from 'hdr-histogram-js';
import { TURNPIKE_CLI, TURNPIKE_DIST, PROXY_CPU, LOAD_CPU } from '../lib/targets.mjs';
import {
  which, spawnPinned, waitReady, portInUse, stopChild, stopAll, stopAllOnExit, rssKb, processTree,
  cpuSnapshot, cpuDeltaTicks, ticksToMicros, machineBusyPct, cmdOutput, cpuSnapshotSplit, cpuDeltaSplit, cpuLineTicks,
  cpuRuntimeNs,
} from '../lib/proc.mjs';
import http from 'node:http';
import { machineFacts, writeResultsJson, mdTable, fmt, relPath } from '../lib/report.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ECHO_PORT = 19500;
const TURNPIKE_PORT = 19510;
const NGINX_PORT = 19520;
const NGINX = which('nginx');

const num = (name, def) => {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number >= 0, got ${raw}`);
  return n;
};
const NS = (process.env.NS || '1000,5000').split(',').map((s) => Number(s.trim())).filter((n) => n > 0);
const DURATION = num('DURATION', 20);
const RATE = num('RATE', 1);
const MSG_BYTES = num('MSG_BYTES', 64);
// One raw client process carries N=9900 with half the CPU of four (fewer
// wakeups: echoes are read in batches), so raw defaults to 10000 per process
// (the 20,000-fd limit of a process fits that); `ws` clients keep 2500.
const PER_PROC = Math.max(1, num('PER_PROC', (process.env.CLIENT || 'raw') === 'ws' ? 2500 : 10000));
const CONCURRENCY = Math.max(1, num('CONCURRENCY', 200));
const WARM = num('WARM', 500);
const WARM_S = num('WARM_S', 3);
const SETTLE_S = num('SETTLE_S', 2);
const SETTLE_AFTER_S = num('SETTLE_AFTER_S', 3);
const IDLE_S = num('IDLE_S', 3);
const OPEN_TIMEOUT_S = num('OPEN_TIMEOUT_S', 60);
const REPEAT = Math.max(1, num('REPEAT', 1));
const REPEAT_TRAFFIC_S = num('REPEAT_TRAFFIC_S', 5);
// Fan-out phase (after the traffic, before the close): FANOUT_ROUNDS pushes
// from the echo upstream to every connection, FANOUT_GAP_S apart,
// FANOUT_BYTES-byte text messages; a round not fully delivered within
// FANOUT_DRAIN_S counts its missing deliveries. FANOUT_ROUNDS=0: no fan-out.
const FANOUT_ROUNDS = Math.floor(num('FANOUT_ROUNDS', 5));
const FANOUT_GAP_S = num('FANOUT_GAP_S', 1);
const FANOUT_BYTES = Math.max(32, Math.floor(num('FANOUT_BYTES', MSG_BYTES)));
const FANOUT_DRAIN_S = Math.max(0.1, num('FANOUT_DRAIN_S', 5));
// The late reading: RSS and fds SETTLE_LATE_S after the close (V8 gives heap
// pages back some seconds after the garbage is gone); 0 or <= SETTLE_AFTER_S: none.
const SETTLE_LATE_S = num('SETTLE_LATE_S', 30);
const LATE = SETTLE_LATE_S > SETTLE_AFTER_S;
const NAME = (process.env.NAME || 'ws').replace(/[^\w.-]/g, '_');
// The load side (both on CPU 1): CLIENT=raw (ws/client.mjs's own net-socket
// client, the default) or ws (the `ws` package's client); ECHO=uws
// (uWebSockets.js echo, the default) or ws (`ws` WebSocketServer). The
// children read the same env; the values are checked here and recorded.
const CLIENT = process.env.CLIENT || 'raw';
const ECHO = process.env.ECHO || 'uws';
if (!['raw', 'ws'].includes(CLIENT)) throw new Error(`CLIENT must be raw or ws, got ${CLIENT}`);
if (!['uws', 'ws'].includes(ECHO)) throw new Error(`ECHO must be uws or ws, got ${ECHO}`);
const TARGET_NAMES = (process.env.TARGETS || 'turnpike,nginx,direct').split(',').map((s) => s.trim()).filter(Boolean);
for (const t of TARGET_NAMES) if (!['turnpike', 'nginx', 'direct'].includes(t)) throw new Error(`unknown target ${t}; known: turnpike, nginx, direct`);
if (NS.some((n) => n > 9900)) console.log('note: N > 9900 needs more than the 20,000 fds a proxy process may open (two sockets per connection)');

// ---------------------------------------------------------------------------
// Targets: how to start each proxy (fresh per N), where its clients connect.

function turnpikeConfig(tmp) {
  const file = join(tmp, 'turnpike-ws.yaml');
  writeFileSync(
    file,
    `server: { host: 127.0.0.1, port: ${TURNPIKE_PORT}, workers: 1 }
admin: { enabled: false }
log: { access: { enabled: false } }
upstreams:
  echo: { targets: [ { url: "http://127.0.0.1:${ECHO_PORT}" } ] }
routes:
  - id: ws
    path: /ws/*
    upstream: echo
    websocket: { idleTimeoutMs: 0, pingIntervalMs: 0 }
`,
  );
  return file;
}

function nginxConfig(tmp) {
  const t = join(tmp, 'nginx-temp');
  mkdirSync(t, { recursive: true });
  chmodSync(t, 0o777); // the worker drops to `nobody` when started as root
  chmodSync(tmp, 0o755);
  const file = join(tmp, 'nginx-ws.conf');
  writeFileSync(
    file,
    `worker_processes 1;
daemon off;
master_process on;
pid ${join(tmp, 'nginx.pid')};
error_log ${join(tmp, 'nginx-error.log')} warn;
worker_rlimit_nofile 20000;
events { worker_connections 24000; } # more slots than fds: with 20000 it reused (dropped) connections near 9.4k proxied WebSockets
http {
  access_log off;
  client_body_temp_path ${t}/client;
  proxy_temp_path ${t}/proxy;
  fastcgi_temp_path ${t}/fastcgi;
  uwsgi_temp_path ${t}/uwsgi;
  scgi_temp_path ${t}/scgi;
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  server {
    listen 127.0.0.1:${NGINX_PORT} backlog=4096;
    location /ws/ {
      proxy_pass http://127.0.0.1:${ECHO_PORT};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }
  }
}
`,
  );
  return file;
}

const TARGETS = {
  turnpike: {
    port: TURNPIKE_PORT,
    skip: () => (existsSync(TURNPIKE_CLI) ? null : `not built: no ${TURNPIKE_CLI} (npm run build, or TURNPIKE_DIST=)`),
    command: (tmp) => [process.execPath, [TURNPIKE_CLI, 'start', '--config', turnpikeConfig(tmp)]],
    version: () => `turnpike (${TURNPIKE_DIST}), node ${process.version}`,
  },
  nginx: {
    port: NGINX_PORT,
    skip: () => (NGINX ? null : 'nginx not installed (bench/setup.sh)'),
    command: (tmp) => [NGINX, ['-c', nginxConfig(tmp), '-p', tmp]],
    version: () => cmdOutput(NGINX, ['-v'])?.replace(/^nginx version: /, '') ?? null,
  },
  direct: { port: ECHO_PORT, direct: true, skip: () => null, version: () => 'ws echo upstream, no proxy' },
};

// ---------------------------------------------------------------------------
// Helpers

const started = new Set(); // client processes (stopAll covers spawnPinned ones)
process.once('exit', () => {
  for (const c of started) {
    try {
      process.kill(c.pid, 'SIGKILL');
    } catch {}
  }
});

function fdCount(rootPid) {
  let n = 0;
  for (const pid of processTree(rootPid)) {
    try {
      n += readdirSync(`/proc/${pid}/fd`).length;
    } catch {}
  }
  return n;
}

const blank = () => ({ opened: 0, failed: 0, open: 0, errors: 0, unexpectedCloses: 0 });

/** Start client processes for `total` connections to url; returns a handle. */
function startClients(url, total) {
  const procs = Math.ceil(total / PER_PROC);
  const per = Math.ceil(total / procs);
  const handles = [];
  for (let i = 0, left = total; left > 0; i++, left -= per) {
    const n = Math.min(per, left);
    const args = [process.execPath, join(HERE, 'client.mjs'), url, String(n), String(CONCURRENCY), String(MSG_BYTES)];
    const child = which('taskset') ? spawn('taskset', ['-c', String(LOAD_CPU), ...args], { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, CLIENT } }) : spawn(args[0], args.slice(1), { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, CLIENT } });
    started.add(child);
    const h = { child, n, st: blank(), stats: null, closeReport: null, pushRounds: new Map(), pushStats: null };
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const body = line.slice(2);
        if (line.startsWith('P ')) h.st = JSON.parse(body);
        else if (line.startsWith('S ')) h.stats = JSON.parse(body);
        else if (line.startsWith('C ')) h.closeReport = JSON.parse(body);
        else if (line.startsWith('R ')) {
          const x = JSON.parse(body);
          h.pushRounds.set(x.round, x);
        } else if (line.startsWith('F ')) h.pushStats = JSON.parse(body);
      }
    });
    h.exited = new Promise((resolve) => child.once('exit', () => {
      started.delete(child);
      resolve();
    }));
    handles.push(h);
  }
  const sum = () => handles.reduce((a, h) => {
    for (const k of Object.keys(a)) a[k] += h.st[k] ?? 0;
    return a;
  }, blank());
  const send = (cmd) => {
    for (const h of handles) if (h.child.exitCode === null) h.child.stdin.write(`${cmd}\n`);
  };
  const waitFor = async (pred, timeoutS, pollMs = 100) => {
    const deadline = Date.now() + timeoutS * 1000;
    while (!pred()) {
      if (Date.now() > deadline) return false;
      await sleep(pollMs);
    }
    return true;
  };
  const kill = async () => {
    for (const h of handles) {
      try {
        process.kill(h.child.pid, 'SIGKILL');
      } catch {}
    }
    await Promise.race([Promise.all(handles.map((h) => h.exited)), sleep(3000)]);
  };
  return { handles, sum, send, waitFor, kill, procs: handles.length };
}

async function waitOpen(c, total, label) {
  const deadline = Date.now() + OPEN_TIMEOUT_S * 1000;
  let lastPrint = 0;
  for (;;) {
    await sleep(200);
    const s = c.sum();
    const done = s.opened + s.failed >= total;
    if (done || Date.now() - lastPrint > 2000) {
      lastPrint = Date.now();
      console.log(`    ${label}: ${s.opened}/${total} open, ${s.failed} failed, ${s.errors} errors`);
    }
    if (done) return s.failed === 0;
    if (Date.now() > deadline) {
      console.log(`    ${label}: timeout after ${OPEN_TIMEOUT_S} s`);
      return false;
    }
  }
}

/**
 * Traffic for `seconds`; returns merged stats (RTT histogram decoded) and
 * `load`: the CPU the load side burnt over it (the client processes and, with
 * echoPid, the echo upstream: µs of CPU per second of wall time, user + sys)
 * and how busy LOAD_CPU was (%, /proc/stat, everything on it).
 */
async function traffic(c, seconds, echoPid = null) {
  const pids = c.handles.map((h) => h.child.pid);
  const snap = () => ({ at: performance.now(), clients: pids.map((p) => cpuSnapshotSplit(p)), echo: echoPid === null ? null : cpuSnapshotSplit(echoPid), line: cpuLineTicks(LOAD_CPU) });
  const l0 = snap();
  c.send(`go ${RATE}`);
  await sleep(seconds * 1000);
  c.send('stop');
  await c.waitFor(() => c.handles.every((h) => h.stats !== null || h.child.exitCode !== null), 15);
  const l1 = snap();
  const wallS = (l1.at - l0.at) / 1000;
  const perS = (d) => ({ userUsPerS: Math.round(ticksToMicros(d.utime) / wallS), sysUsPerS: Math.round(ticksToMicros(d.stime) / wallS) });
  const cd = l0.clients.map((b, k) => cpuDeltaSplit(b, l1.clients[k])).reduce((a, d) => ({ utime: a.utime + d.utime, stime: a.stime + d.stime }), { utime: 0, stime: 0 });
  const load = {
    wallS: Math.round(wallS * 10) / 10,
    clients: perS(cd),
    echo: echoPid === null ? null : perS(cpuDeltaSplit(l0.echo, l1.echo)),
    loadCpuBusyPct: l0.line && l1.line ? Math.round((1000 * (l1.line.busy - l0.line.busy)) / Math.max(1, l1.line.total - l0.line.total)) / 10 : null,
  };
  const hist = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 });
  const out = { sent: 0, received: 0, bad: 0, lost: 0, unexpectedCloses: 0, errors: 0, firstErrors: [], missingReports: 0 };
  for (const h of c.handles) {
    if (h.stats === null) {
      out.missingReports++;
      continue;
    }
    for (const k of ['sent', 'received', 'bad', 'lost', 'unexpectedCloses', 'errors']) out[k] += h.stats[k];
    out.firstErrors.push(...h.stats.firstErrors);
    hist.add(hdr.decodeFromCompressedBase64(h.stats.hist));
    h.stats = null;
  }
  out.firstErrors = [...new Set(out.firstErrors)].slice(0, 5);
  out.load = load;
  out.rttUs = {
    p50: hist.getValueAtPercentile(50), p90: hist.getValueAtPercentile(90), p99: hist.getValueAtPercentile(99),
    p999: hist.getValueAtPercentile(99.9), max: hist.maxValue, mean: Math.round(hist.mean), count: hist.totalCount,
  };
  return out;
}

/** Every client closes with 1000; waits for the processes to exit. */
async function closeClients(c) {
  c.send('close');
  const ok = await c.waitFor(() => c.handles.every((h) => h.child.exitCode !== null || h.child.signalCode !== null), 30);
  if (!ok) await c.kill();
  const codes = {};
  for (const h of c.handles) for (const [k, v] of Object.entries(h.closeReport?.closeCodes ?? {})) codes[k] = (codes[k] ?? 0) + v;
  return { closeCodes: codes, allExited: ok };
}

const rssReads = async (pid) => {
  const v = [];
  for (let i = 0; i < 3; i++) {
    if (i) await sleep(300);
    v.push(rssKb(pid));
  }
  return v.at(-1);
};

const ms = (us) => (us === null || us === undefined ? '' : (us / 1000).toFixed(2));

/** GET http://127.0.0.1:<port><path>, the 200 body parsed as JSON (10 s at most). */
function httpGetJson(port, path) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, timeout: 10000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`GET ${path}: HTTP ${res.statusCode} ${body.slice(0, 100)}`));
        try {
          resolve(JSON.parse(body));
        } catch (err) {
          reject(new Error(`GET ${path}: ${err.message}`));
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${path}: no answer in 10 s`)));
    req.on('error', reject);
  });
}

/**
 * The fan-out phase on the open connections of `c`: FANOUT_ROUNDS times,
 * FANOUT_GAP_S apart (a round starts no earlier than the previous one is
 * fully delivered), GET /push on the echo upstream (it sends one message to
 * every connection it holds and answers once all are queued: ws/echo.mjs),
 * then waits (FANOUT_DRAIN_S at most) until every client process said `R`
 * (all its open connections got the round). Then `pstats` gathers the
 * clients' reports. With proxyPid (not for `direct`): the proxy's CPU, as
 * utime+stime (clock ticks) over the span from the first push to the last
 * round fully delivered, and as schedstat runtime (ns) over that span and
 * summed over the rounds' own windows (push to last delivery, gaps left out).
 * Latencies: µs, CLOCK_MONOTONIC receive time in the client - push time in
 * the echo (one value per connection and round).
 */
async function fanout(c, proxyPid, connsOpen, idleRuntimeUsPerS) {
  const K = FANOUT_ROUNDS;
  for (const h of c.handles) {
    h.pushRounds = new Map();
    h.pushStats = null;
  }
  const alive = (h) => h.child.exitCode === null && h.child.signalCode === null;
  const stat0 = proxyPid === null ? null : cpuSnapshotSplit(proxyPid);
  const rt0 = proxyPid === null ? null : cpuRuntimeNs(proxyPid);
  const lines0 = [cpuLineTicks(PROXY_CPU), cpuLineTicks(LOAD_CPU)];
  const t0 = performance.now();
  const rounds = [];
  let inRoundNs = 0;
  for (let k = 1; k <= K; k++) {
    const wait = t0 + (k - 1) * FANOUT_GAP_S * 1000 - performance.now();
    if (wait > 0) await sleep(wait);
    const a = proxyPid === null ? null : cpuRuntimeNs(proxyPid);
    const tPush = performance.now();
    const echoRes = await httpGetJson(ECHO_PORT, `/push?round=${k}&bytes=${FANOUT_BYTES}`);
    const complete = await c.waitFor(() => c.handles.every((h) => h.pushRounds.has(k) || !alive(h)), FANOUT_DRAIN_S, 2);
    const wallMs = performance.now() - tPush;
    const b = proxyPid === null ? null : cpuRuntimeNs(proxyPid);
    if (a !== null && b !== null) inRoundNs += b - a;
    rounds.push({ round: k, echo: echoRes, completeInTime: complete, wallToCompleteMs: Math.round(wallMs * 10) / 10, proxyRuntimeUs: a !== null && b !== null ? Math.round((b - a) / 1000) : null });
  }
  const spanS = (performance.now() - t0) / 1000;
  const split = proxyPid === null ? null : cpuDeltaSplit(stat0, cpuSnapshotSplit(proxyPid));
  const rt1 = proxyPid === null ? null : cpuRuntimeNs(proxyPid);
  const lines1 = [cpuLineTicks(PROXY_CPU), cpuLineTicks(LOAD_CPU)];
  c.send(`pstats ${K}`);
  await c.waitFor(() => c.handles.every((h) => h.pushStats !== null || !alive(h)), FANOUT_DRAIN_S + 5, 20);
  const hist = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 });
  const out = { rounds: K, bytes: FANOUT_BYTES, gapS: FANOUT_GAP_S, connsOpen, expected: connsOpen * K, delivered: 0, missing: 0, bad: 0, dup: 0, negative: 0, missingReports: 0 };
  const perRound = rounds.map((x) => ({ ...x, got: 0, minUs: null, lastDeliveryUs: null }));
  for (const h of c.handles) {
    const f = h.pushStats;
    if (f === null) {
      out.missingReports++;
      continue;
    }
    out.bad += f.bad;
    out.dup += f.dup;
    out.negative += f.negative;
    hist.add(hdr.decodeFromCompressedBase64(f.hist));
    for (const pr of perRound) {
      const x = f.rounds[pr.round];
      if (!x) continue;
      pr.got += x.got;
      if (x.got > 0) {
        pr.lastDeliveryUs = Math.max(pr.lastDeliveryUs ?? 0, x.maxUs);
        pr.minUs = Math.min(pr.minUs ?? Infinity, x.minUs);
      }
    }
    // Pushes of rounds run.mjs did not send would be a bench bug: count them as bad.
    for (const r of Object.keys(f.rounds)) if (!(Number(r) >= 1 && Number(r) <= K)) out.bad += f.rounds[r].got;
  }
  out.delivered = perRound.reduce((a, pr) => a + pr.got, 0);
  out.missing = out.expected - out.delivered;
  out.echoSockets = [...new Set(rounds.map((x) => x.echo.sockets))];
  out.echoDropped = rounds.reduce((a, x) => a + x.echo.dropped, 0);
  out.echoBackpressured = rounds.reduce((a, x) => a + x.echo.backpressured, 0);
  out.echoQueueUs = rounds.map((x) => x.echo.queueUs);
  out.perRound = perRound.map(({ echo, ...rest }) => ({ ...rest, echoSent: echo.sent, echoQueueUs: echo.queueUs }));
  const last = perRound.map((pr) => pr.lastDeliveryUs).filter((v) => v !== null).sort((x, y) => x - y);
  out.lastDeliveryUs = { median: last.length ? last[(last.length - 1) >> 1] : null, max: last.length ? last.at(-1) : null, perRound: perRound.map((pr) => pr.lastDeliveryUs) };
  // The part of it after the echo finished queueing the round's sends (the echo's own sequential sends excluded).
  const after = perRound.filter((pr) => pr.lastDeliveryUs !== null).map((pr) => pr.lastDeliveryUs - pr.echo.queueUs).sort((x, y) => x - y);
  out.afterEchoQueuedUs = { median: after.length ? after[(after.length - 1) >> 1] : null, max: after.length ? after.at(-1) : null };
  out.latencyUs = {
    p50: hist.getValueAtPercentile(50), p90: hist.getValueAtPercentile(90), p99: hist.getValueAtPercentile(99),
    max: hist.maxValue, mean: Math.round(hist.mean), count: hist.totalCount,
  };
  out.spanS = Math.round(spanS * 100) / 100;
  // How busy the two CPUs were over the span (everything on them: other work on the machine shows here).
  const busy = (a, b) => (a && b ? Math.round((1000 * (b.busy - a.busy)) / Math.max(1, b.total - a.total)) / 10 : null);
  out.cpuBusyPct = { proxyCpu: busy(lines0[0], lines1[0]), loadCpu: busy(lines0[1], lines1[1]) };
  if (split !== null && out.delivered > 0) {
    const per = (us) => Math.round((us / out.delivered) * 100) / 100;
    out.proxyCpu = {
      // The brief's figure: utime+stime over the span / deliveries (whole clock ticks: coarse at small N).
      usPerPushed: per(ticksToMicros(split.ticks)),
      userUsPerPushed: per(ticksToMicros(split.utime)),
      sysUsPerPushed: per(ticksToMicros(split.stime)),
      ticks: split.ticks,
      // schedstat (ns): the span, the span net of the idle CPU with N open connections, the rounds' own windows.
      runtimeUsPerPushed: rt0 !== null && rt1 !== null ? per((rt1 - rt0) / 1000) : null,
      runtimeUsPerPushedNetOfIdle: rt0 !== null && rt1 !== null && idleRuntimeUsPerS !== null ? per((rt1 - rt0) / 1000 - idleRuntimeUsPerS * spanS) : null,
      inRoundUsPerPushed: rt0 !== null ? per(inRoundNs / 1000) : null,
    };
  }
  return out;
}

/**
 * The late reading: waits until SETTLE_LATE_S after `closedAt`
 * (performance.now() when the last client process exited), then RSS (3
 * reads 300 ms apart, the last kept) and fds of the proxy tree and the echo's fds.
 */
async function lateReading(pid, echoPid, closedAt) {
  const wait = closedAt + SETTLE_LATE_S * 1000 - performance.now();
  if (wait > 0) await sleep(wait);
  const rssLateKb = await rssReads(pid);
  return { rssLateKb, fdsLate: fdCount(pid), echoFdsLate: fdCount(echoPid), lateAtS: Math.round((performance.now() - closedAt) / 100) / 10 };
}

/**
 * Replace RESULTS.md's `<!-- BEGIN ws -->` ... `<!-- END ws -->` block, or
 * append it at the end (lib/report.mjs's updateResultsMd puts a section it
 * does not know in front of the first one).
 */
function writeMdSection(section, body) {
  const file = join(HERE, '..', 'RESULTS.md');
  let text = existsSync(file) ? readFileSync(file, 'utf8') : '# Turnpike benchmark results\n';
  const begin = `<!-- BEGIN ${section} -->`;
  const end = `<!-- END ${section} -->`;
  const block = `${begin}\n${body.trim()}\n${end}`;
  const i = text.indexOf(begin);
  const j = text.indexOf(end);
  text = i !== -1 && j > i ? text.slice(0, i) + block + text.slice(j + end.length) : `${text.trimEnd()}\n\n${block}\n`;
  writeFileSync(file, text);
}

// ---------------------------------------------------------------------------
// One target at one N.

async function measure(name, target, tmp, echo, n) {
  const r = { target: name, n };
  let proc = null;
  try {
    if (!target.direct) {
      if (await portInUse(target.port)) throw new Error(`port ${target.port} is busy`);
      const [cmd, args] = target.command(tmp);
      const log = join(tmp, `${name}-${n}.log`);
      const child = spawnPinned(PROXY_CPU, cmd, args, { logFile: log });
      proc = child;
      try {
        await waitReady(target.port, { path: '/ws/ready', child, timeoutMs: 20000 });
      } catch (err) {
        let tail = '';
        try {
          tail = readFileSync(log, 'utf8').split('\n').slice(-8).join('\n');
        } catch {}
        throw new Error(`${err.message}${tail ? `\n--- ${log} ---\n${tail}` : ''}`);
      }
    }
    const pid = target.direct ? echo.pid : proc.pid;
    const url = `ws://127.0.0.1:${target.port}/ws/echo`;
    console.log(`  ${name} N=${n}: pid ${pid}${target.direct ? ' (the echo upstream)' : `, CPU ${PROXY_CPU}`}, RSS ${(rssKb(pid) / 1024).toFixed(1)} MB, ${fdCount(pid)} fds at start`);

    if (WARM > 0) {
      const w = startClients(url, Math.min(WARM, n));
      await waitOpen(w, Math.min(WARM, n), 'warm-up');
      if (WARM_S > 0) await traffic(w, WARM_S);
      await closeClients(w);
    }
    await sleep(SETTLE_S * 1000);
    r.rssBeforeKb = await rssReads(pid);
    r.fdsBefore = fdCount(pid);
    r.echoFdsBefore = fdCount(echo.pid);
    const base0 = cpuSnapshot(pid);
    await sleep(IDLE_S * 1000);
    r.baseCpuUsPerS = Math.round(ticksToMicros(cpuDeltaTicks(base0, cpuSnapshot(pid))) / IDLE_S);

    const t0 = Date.now();
    const c = startClients(url, n);
    r.clientProcs = c.procs;
    r.allOpened = await waitOpen(c, n, 'open');
    r.openS = Math.round((Date.now() - t0) / 100) / 10;
    await sleep(SETTLE_S * 1000);
    const opened = c.sum();
    r.connsOpen = opened.open;
    r.openFailed = opened.failed;
    r.rssOpenKb = await rssReads(pid);
    r.fdsOpen = fdCount(pid);
    const idle0 = cpuSnapshot(pid);
    const idleRt0 = cpuRuntimeNs(pid);
    const idleT0 = performance.now();
    await sleep(IDLE_S * 1000);
    r.idleCpuUsPerS = Math.round(ticksToMicros(cpuDeltaTicks(idle0, cpuSnapshot(pid))) / IDLE_S);
    const idleRt1 = cpuRuntimeNs(pid);
    // The same from schedstat (ns, every thread): fine enough to take off the fan-out span.
    r.idleRuntimeUsPerS = idleRt0 !== null && idleRt1 !== null ? Math.round((idleRt1 - idleRt0) / (performance.now() - idleT0)) : null;
    r.kbPerConn = r.connsOpen > 0 ? Math.round(((r.rssOpenKb - r.rssBeforeKb) / r.connsOpen) * 100) / 100 : null;
    console.log(`    ${r.connsOpen} open in ${r.openS} s (${r.openFailed} failed); RSS ${(r.rssBeforeKb / 1024).toFixed(1)} -> ${(r.rssOpenKb / 1024).toFixed(1)} MB = ${fmt(r.kbPerConn, 2)} KB/conn; fds ${r.fdsBefore} -> ${r.fdsOpen}; CPU ${r.baseCpuUsPerS} µs/s with no connection, ${r.idleCpuUsPerS} µs/s with them idle`);

    const cpu0 = cpuSnapshotSplit(pid);
    const tr0 = Date.now();
    const tr = await traffic(c, DURATION, echo.pid);
    const split = cpuDeltaSplit(cpu0, cpuSnapshotSplit(pid));
    const ticks = split.ticks;
    const trafficS = (Date.now() - tr0) / 1000;
    r.trafficS = Math.round(trafficS * 10) / 10;
    Object.assign(r, { sent: tr.sent, received: tr.received, badEchoes: tr.bad, lost: tr.lost, unexpectedCloses: tr.unexpectedCloses, clientErrors: tr.errors, firstErrors: tr.firstErrors, missingReports: tr.missingReports, rttUs: tr.rttUs });
    r.relayed = 2 * tr.received;
    r.cpuTicks = ticks;
    r.cpuUserTicks = split.utime;
    r.cpuSysTicks = split.stime;
    // The same split into user and kernel (system) time: utime and stime of the proxy tree.
    r.cpuUserUsPerRelayed = target.direct || r.relayed === 0 ? null : Math.round((ticksToMicros(split.utime) / r.relayed) * 100) / 100;
    r.cpuSysUsPerRelayed = target.direct || r.relayed === 0 ? null : Math.round((ticksToMicros(split.stime) / r.relayed) * 100) / 100;
    // The load side over the traffic (CPU ${LOAD_CPU}): clients, echo upstream (for direct it is also the target), how busy that CPU was.
    r.loadSide = tr.load;
    r.cpuUsPerRelayed = target.direct || r.relayed === 0 ? null : Math.round((ticksToMicros(ticks) / r.relayed) * 100) / 100;
    // The same without what the proxy burns with the N connections idle (timers, sweeps) over as long.
    r.cpuUsPerRelayedNetOfIdle = target.direct || r.relayed === 0 ? null : Math.round(((ticksToMicros(ticks) - r.idleCpuUsPerS * trafficS) / r.relayed) * 100) / 100;
    r.rssAfterTrafficKb = await rssReads(pid);
    r.kbPerConnAfterTraffic = r.connsOpen > 0 ? Math.round(((r.rssAfterTrafficKb - r.rssBeforeKb) / r.connsOpen) * 100) / 100 : null;
    console.log(`    traffic ${DURATION} s: ${tr.sent} sent, ${tr.received} echoed (${tr.lost} lost, ${tr.bad} bad, ${tr.unexpectedCloses} unexpected closes); RTT p50 ${ms(tr.rttUs.p50)} ms p99 ${ms(tr.rttUs.p99)} ms max ${ms(tr.rttUs.max)} ms; CPU ${fmt(ticksToMicros(ticks) / 1000, 0)} ms = ${fmt(r.cpuUsPerRelayed, 2)} µs per relayed message (${fmt(r.cpuUsPerRelayedNetOfIdle, 2)} net of idle; user ${fmt(r.cpuUserUsPerRelayed, 2)} + sys ${fmt(r.cpuSysUsPerRelayed, 2)}); RSS ${(r.rssAfterTrafficKb / 1024).toFixed(1)} MB`);
    console.log(`    load side (CPU ${LOAD_CPU}, ${CLIENT} clients, ${ECHO} echo): CPU ${LOAD_CPU} ${fmt(tr.load.loadCpuBusyPct, 1)}% busy; clients user ${tr.load.clients.userUsPerS} + sys ${tr.load.clients.sysUsPerS} µs/s; echo user ${tr.load.echo?.userUsPerS} + sys ${tr.load.echo?.sysUsPerS} µs/s`);

    if (FANOUT_ROUNDS > 0) {
      // Let the traffic's deferred work (V8's GC of its garbage) happen before the fan-out span starts.
      await sleep(SETTLE_S * 1000);
      const fo = await fanout(c, target.direct ? null : pid, r.connsOpen, r.idleRuntimeUsPerS);
      r.fanout = fo;
      const pc = fo.proxyCpu;
      console.log(`    fan-out ${fo.rounds} x ${fo.connsOpen} (CPU ${PROXY_CPU} ${fo.cpuBusyPct.proxyCpu}% / CPU ${LOAD_CPU} ${fo.cpuBusyPct.loadCpu}% busy over ${fo.spanS} s; ${fo.bytes} B, echo held ${fo.echoSockets.join('/')} sockets, queued in ${fo.echoQueueUs.map((u) => ms(u)).join('/')} ms, ${fo.echoDropped} dropped): ${fo.delivered} delivered, ${fo.missing} missing (${fo.bad} bad, ${fo.dup} dup, ${fo.negative} negative); push to last delivery ${fo.lastDeliveryUs.perRound.map((u) => ms(u)).join(' / ')} ms; per connection p50 ${ms(fo.latencyUs.p50)} p99 ${ms(fo.latencyUs.p99)} max ${ms(fo.latencyUs.max)} ms${pc ? `; proxy CPU ${fmt(pc.usPerPushed, 2)} µs per pushed msg (utime+stime over ${fo.spanS} s: ${pc.ticks} ticks; user ${fmt(pc.userUsPerPushed, 2)} + sys ${fmt(pc.sysUsPerPushed, 2)}), schedstat ${fmt(pc.runtimeUsPerPushed, 2)} over the span, ${fmt(pc.runtimeUsPerPushedNetOfIdle, 2)} net of idle, ${fmt(pc.inRoundUsPerPushed, 2)} inside the rounds` : ''}`);
    }

    const cl = await closeClients(c);
    const closedAt = performance.now();
    r.closeCodes = cl.closeCodes;
    r.clientsExitedCleanly = cl.allExited;
    await sleep(SETTLE_AFTER_S * 1000);
    r.rssAfterCloseKb = await rssReads(pid);
    r.fdsAfterClose = fdCount(pid);
    r.echoFdsAfterClose = fdCount(echo.pid);
    r.keptAfterCloseMb = Math.round(((r.rssAfterCloseKb - r.rssBeforeKb) / 1024) * 10) / 10;
    console.log(`    closed (codes ${JSON.stringify(r.closeCodes)}): RSS ${(r.rssAfterCloseKb / 1024).toFixed(1)} MB (${r.keptAfterCloseMb >= 0 ? '+' : ''}${r.keptAfterCloseMb} MB vs before), fds ${r.fdsAfterClose} (before ${r.fdsBefore}), echo fds ${r.echoFdsAfterClose} (before ${r.echoFdsBefore})`);
    if (LATE && !target.direct) {
      Object.assign(r, await lateReading(pid, echo.pid, closedAt));
      r.keptLateMb = Math.round(((r.rssLateKb - r.rssBeforeKb) / 1024) * 10) / 10;
      console.log(`    ${r.lateAtS} s after close: RSS ${(r.rssLateKb / 1024).toFixed(1)} MB (${r.keptLateMb >= 0 ? '+' : ''}${r.keptLateMb} MB vs before), fds ${r.fdsLate}, echo fds ${r.echoFdsLate}`);
    }
    // Leak check: REPEAT - 1 more cycles of open N, REPEAT_TRAFFIC_S s of traffic, close; RSS and fds after each.
    r.cycles = [];
    for (let k = 2; k <= REPEAT && !target.direct; k++) {
      const c2 = startClients(url, n);
      await waitOpen(c2, n, `cycle ${k} open`);
      const open2 = c2.sum().open;
      const tr2 = REPEAT_TRAFFIC_S > 0 ? await traffic(c2, REPEAT_TRAFFIC_S) : null;
      const rssOpen2 = rssKb(pid);
      const cl2 = await closeClients(c2);
      const closedAt2 = performance.now();
      await sleep(SETTLE_AFTER_S * 1000);
      const cy = { cycle: k, open: open2, echoes: tr2?.received ?? 0, lost: tr2?.lost ?? 0, rssWithTrafficKb: rssOpen2, closeCodes: cl2.closeCodes, rssAfterCloseKb: await rssReads(pid), fdsAfterClose: fdCount(pid), echoFdsAfterClose: fdCount(echo.pid) };
      if (LATE) Object.assign(cy, await lateReading(pid, echo.pid, closedAt2));
      r.cycles.push(cy);
      console.log(`    cycle ${k}: ${open2} open, ${cy.echoes} echoes (${cy.lost} lost), RSS ${(rssOpen2 / 1024).toFixed(1)} MB open, ${(cy.rssAfterCloseKb / 1024).toFixed(1)} MB after close, fds ${cy.fdsAfterClose}, echo fds ${cy.echoFdsAfterClose}, codes ${JSON.stringify(cy.closeCodes)}${LATE ? `; ${cy.lateAtS} s after close RSS ${(cy.rssLateKb / 1024).toFixed(1)} MB, fds ${cy.fdsLate}, echo fds ${cy.echoFdsLate}` : ''}`);
    }
    if (proc !== null && (proc.exitCode !== null || proc.signalCode !== null)) r.proxyDied = `exit ${proc.exitCode} signal ${proc.signalCode}`;
  } catch (err) {
    console.log(`  ${name} N=${n}: FAILED: ${err.message}`);
    r.error = err.message;
  }
  if (proc !== null) {
    if (proc.exitCode !== null || proc.signalCode !== null) r.proxyDied ??= `exit ${proc.exitCode} signal ${proc.signalCode}`;
    await stopChild(proc, 8000);
  }
  for (const c of [...started]) {
    try {
      process.kill(c.pid, 'SIGKILL');
    } catch {}
  }
  return r;
}

// ---------------------------------------------------------------------------

stopAllOnExit();
const facts = machineFacts();
facts.busyPctBeforeStart = await machineBusyPct(1000);
const tmp = mkdtempSync(join(tmpdir(), 'turnpike-ws-'));
const targets = TARGET_NAMES.map((n) => [n, TARGETS[n]]).filter(([n, t]) => {
  const why = t.skip();
  if (why) console.log(`skip ${n}: ${why}`);
  return !why;
});
console.log(`WebSocket relay bench: N=${NS.join(',')}, targets ${targets.map(([n]) => n).join(', ')}, ${DURATION} s at ${RATE} msg/s per connection, ${MSG_BYTES}-byte text messages, <= ${PER_PROC} connections per client process`);
console.log(`temp dir ${tmp}; node ${process.version}; load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}; machine busy ${facts.busyPctBeforeStart}% over 1 s`);

if (await portInUse(ECHO_PORT)) throw new Error(`port ${ECHO_PORT} is busy`);
const echo = spawnPinned(LOAD_CPU, process.execPath, [join(HERE, 'echo.mjs'), String(ECHO_PORT)], { logFile: join(tmp, 'echo.log'), env: { ECHO } });
await waitReady(ECHO_PORT, { path: '/ws/ready', child: echo });
const pkgVersion = (dir) => {
  try {
    return JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).version;
  } catch {
    return '?';
  }
};
const WS_VERSION = pkgVersion(join(HERE, '../node_modules/ws'));
const UWS_VERSION = pkgVersion(join(HERE, '../../node_modules/@trufflesuite/uws-js-unofficial'));
const ECHO_DESC = ECHO === 'uws' ? `uWebSockets.js ${UWS_VERSION} (@trufflesuite/uws-js-unofficial) echo` : `ws ${WS_VERSION} echo`;
const CLIENT_DESC = CLIENT === 'raw' ? 'raw net-socket clients (ws/client.mjs CLIENT=raw)' : `ws ${WS_VERSION} clients (CLIENT=ws)`;
TARGETS.direct.version = () => `${ECHO_DESC} upstream, no proxy`;
console.log(`echo upstream: ${ECHO_DESC} on 127.0.0.1:${ECHO_PORT}, pid ${echo.pid}, CPU ${LOAD_CPU}; clients: ${CLIENT_DESC}`);

const results = [];
let round = 0;
for (const n of NS) {
  // Rotate the target order per N so a slow minute of the VM does not always hit the same one.
  const order = targets.map((_, i) => targets[(i + round) % targets.length]);
  round++;
  for (const [name, target] of order) {
    const load1 = Math.round(loadavg()[0] * 100) / 100;
    console.log(`\n${name}, N=${n} (load average ${load1})`);
    const r = await measure(name, target, tmp, echo, n);
    r.loadavg1Before = load1;
    results.push(r);
  }
}
await stopChild(echo);
await stopAll();

const knobs = { CLIENT, ECHO, NS, REPEAT, REPEAT_TRAFFIC_S, DURATION, RATE, MSG_BYTES, PER_PROC, CONCURRENCY, WARM, WARM_S, SETTLE_S, SETTLE_AFTER_S, SETTLE_LATE_S, IDLE_S, OPEN_TIMEOUT_S, FANOUT_ROUNDS, FANOUT_GAP_S, FANOUT_BYTES, FANOUT_DRAIN_S, TARGETS: TARGET_NAMES, TURNPIKE_DIST };
const file = writeResultsJson(NAME, {
  kind: 'ws',
  name: NAME,
  finishedAt: new Date().toISOString(),
  machine: facts,
  knobs,
  method: `fresh proxy per N on CPU 0, echo upstream (${ECHO_DESC}, ECHO=${ECHO}) and clients (${CLIENT_DESC}, CLIENT=${CLIENT}) on CPU 1; user/sys µs per relayed message = utime and stime of the proxy tree apart, over the same window; loadSide = CPU of the clients and the echo upstream (µs per s of wall time) and % busy of CPU 1 over the traffic; RSS = VmRSS summed over the proxy process tree; KB/conn = (RSS with N idle connections - RSS before, after a warm-up) / connections open; CPU-µs per relayed message = utime+stime of the proxy tree from the first send to the last echo / (2 x echoes received): each echo is one message client->upstream and one upstream->client; RTT measured by the clients (send to echo), µs; rssLateKb/fdsLate = RSS and fds SETTLE_LATE_S after the close (lateAtS: when read), also per cycle; fanout = after the traffic, FANOUT_ROUNDS pushes of one FANOUT_BYTES text message from the echo upstream to every connection (GET /push on the echo, which answers once all are queued), FANOUT_GAP_S apart: latencyUs = client receive time - echo push time per connection and round (both CLOCK_MONOTONIC, process.hrtime.bigint()), lastDeliveryUs = per round the max of those (push to the last connection served), missing = connections open x rounds - distinct deliveries; proxyCpu.usPerPushed = utime+stime of the proxy tree from the first push to the last round fully delivered / deliveries (gaps included; whole clock ticks), runtimeUsPerPushed = the same from schedstat (ns), ...NetOfIdle = minus idleRuntimeUsPerS over the span, inRoundUsPerPushed = schedstat summed over each round's push-to-last-delivery window / deliveries`,
  targets: Object.fromEntries(targets.map(([n, t]) => [n, t.version()])),
  results,
});
if (!process.env.KEEP_TMP) rmSync(tmp, { recursive: true, force: true });
else console.log(`kept ${tmp}`);

const ok = results.filter((r) => !r.error);
const rows = ok.map((r) => [
  r.target, r.n, r.connsOpen,
  r.target === 'direct' ? '' : fmt(r.rssBeforeKb / 1024), r.target === 'direct' ? '' : fmt(r.rssOpenKb / 1024),
  r.target === 'direct' ? '' : fmt(r.kbPerConn, 2), r.target === 'direct' ? '' : fmt(r.kbPerConnAfterTraffic, 2),
  r.target === 'direct' ? '' : fmt(r.rssAfterCloseKb / 1024),
  r.target === 'direct' ? '' : `${r.fdsBefore} / ${r.fdsOpen} / ${r.fdsAfterClose}`,
  r.received, ms(r.rttUs?.p50), ms(r.rttUs?.p99),
  r.target === 'direct' ? '' : fmt(r.cpuUsPerRelayed, 2),
  r.target === 'direct' ? '' : fmt(r.cpuUsPerRelayedNetOfIdle, 2),
  r.target === 'direct' ? '' : fmt(r.cpuUserUsPerRelayed, 2),
  r.target === 'direct' ? '' : fmt(r.cpuSysUsPerRelayed, 2),
  r.target === 'direct' ? '' : `${r.baseCpuUsPerS} / ${r.idleCpuUsPerS}`,
  `${r.openFailed + r.lost + r.badEchoes + r.unexpectedCloses + r.clientErrors}`,
  r.target === 'direct' || r.rssLateKb === undefined ? '' : fmt(r.rssLateKb / 1024),
  r.target === 'direct' || r.fdsLate === undefined ? '' : String(r.fdsLate),
]);
const header = ['target', 'N', 'open', 'RSS before MB', 'RSS open MB', 'KB/conn idle', 'KB/conn after traffic', 'RSS after close MB', 'fds before / open / after', 'echoes', 'RTT p50 ms', 'RTT p99 ms', 'CPU-µs / relayed msg', 'net of idle', 'user µs / relayed msg', 'sys µs / relayed msg', 'CPU µs/s: no conn / N idle', 'errors', `RSS ${SETTLE_LATE_S} s after close MB`, `fds ${SETTLE_LATE_S} s after close`];
const table = mdTable(header, rows);
console.log(`\n${table}`);
// The fan-out table: one row per target and N that ran the phase.
const foRows = ok.filter((r) => r.fanout).map((r) => {
  const fo = r.fanout;
  const pc = fo.proxyCpu;
  return [
    r.target, r.n, `${fo.rounds} x ${fo.connsOpen}`, fo.delivered, fo.missing + fo.bad + fo.dup + fo.negative,
    `${ms(fo.lastDeliveryUs.median)} / ${ms(fo.lastDeliveryUs.max)}`, ms(fo.latencyUs.p50), ms(fo.latencyUs.p99),
    ms(Math.max(...fo.echoQueueUs)), ms(fo.afterEchoQueuedUs.median),
    pc ? fmt(pc.usPerPushed, 2) : '', pc ? fmt(pc.runtimeUsPerPushedNetOfIdle, 2) : '', pc ? fmt(pc.inRoundUsPerPushed, 2) : '',
  ];
});
const foHeader = ['target', 'N', 'rounds x conns', 'delivered', 'missing', 'push to last delivery ms: median / max round', 'delivery p50 ms', 'delivery p99 ms', 'echo queueing ms (max)', 'last delivery after echo queued ms (median)', 'CPU-µs / pushed msg (utime+stime)', 'schedstat net of idle', 'schedstat in rounds'];
const foTable = foRows.length ? mdTable(foHeader, foRows) : '';
if (foTable) console.log(`\nfan-out (${FANOUT_ROUNDS} pushes of ${FANOUT_BYTES} B to every connection, ${FANOUT_GAP_S} s apart):\n${foTable}`);
for (const r of results.filter((x) => x.error)) console.log(`not measured: ${r.target} N=${r.n} (${r.error.split('\n')[0]})`);
console.log('errors = failed opens + lost echoes + bad echoes + unexpected closes + client errors; CPU-µs per relayed message counts 2 messages per echo');
if (foTable) console.log('fan-out missing = connections x rounds - deliveries, + bad, duplicate and negative-latency pushes; CPU-µs per pushed msg = the proxy\'s CPU from the first push to the last delivery of the last round (gaps included) / deliveries');
console.log(`wrote ${relPath(file)}`);

// The per-N summary: printed, and written under the tables in RESULTS.md (unless NO_MD).
const verdict = [];
{
  const at = (t, n) => ok.find((r) => r.target === t && r.n === n);
  const mb = (kb) => fmt(kb / 1024);
  const signed = (x) => `${x >= 0 ? '+' : ''}${x}`;
  for (const n of [...new Set(ok.map((r) => r.n))]) {
    const tp = at('turnpike', n);
    const ng = at('nginx', n);
    if (!tp) continue;
    const parts = [`N=${n}: ${fmt(tp.kbPerConn, 2)} KB/conn (target ≤ 8${ng ? `, nginx ${fmt(ng.kbPerConn, 2)}` : ''})`];
    if (ng) parts.push(`CPU ${fmt(tp.cpuUsPerRelayed, 2)} vs nginx ${fmt(ng.cpuUsPerRelayed, 2)} µs/msg (${tp.cpuUsPerRelayed <= ng.cpuUsPerRelayed ? 'met' : 'not met'})`);
    if (ng) parts.push(`p99 ${ms(tp.rttUs.p99)} vs nginx ${ms(ng.rttUs.p99)} ms (${tp.rttUs.p99 <= ng.rttUs.p99 ? 'met' : 'not met'})`);
    parts.push(`after close: RSS ${tp.keptAfterCloseMb >= 0 ? '+' : ''}${tp.keptAfterCloseMb} MB, fds ${tp.fdsAfterClose} vs ${tp.fdsBefore} before`);
    for (const x of [tp, ng].filter(Boolean)) {
      if (x.cycles?.length) parts.push(`${x.target} RSS before ${fmt(x.rssBeforeKb / 1024)} MB, after each close ${[x.rssAfterCloseKb, ...x.cycles.map((cy) => cy.rssAfterCloseKb)].map((kb) => fmt(kb / 1024)).join(' / ')} MB, fds ${[x.fdsAfterClose, ...x.cycles.map((cy) => cy.fdsAfterClose)].join(' / ')}`);
      // Late: RSS and fds SETTLE_LATE_S after the close against "before" (and per cycle).
      if (x.rssLateKb !== undefined) {
        const late = [x.rssLateKb, ...(x.cycles ?? []).map((cy) => cy.rssLateKb).filter((v) => v !== undefined)];
        parts.push(`${x.target} RSS before ${mb(x.rssBeforeKb)} MB, ${SETTLE_AFTER_S} s after close ${mb(x.rssAfterCloseKb)} MB, ${x.lateAtS} s after close ${late.map(mb).join(' / ')} MB (${late.map((kb) => signed(Math.round(((kb - x.rssBeforeKb) / 1024) * 10) / 10)).join(' / ')} MB vs before), fds ${[x.fdsLate, ...(x.cycles ?? []).map((cy) => cy.fdsLate).filter((v) => v !== undefined)].join(' / ')} vs ${x.fdsBefore} before`);
      }
    }
    // Fan-out: push to the last connection served (worst round), delivery p99, proxy CPU per pushed message, missing.
    const fos = [tp, ng, at('direct', n)].filter((x) => x?.fanout);
    if (fos.length) {
      parts.push(`fan-out: push to last delivery (worst round) ${fos.map((x) => `${x.target} ${ms(x.fanout.lastDeliveryUs.max)}`).join(', ')} ms; delivery p99 ${fos.map((x) => `${x.target} ${ms(x.fanout.latencyUs.p99)}`).join(', ')} ms; CPU ${fos.filter((x) => x.fanout.proxyCpu).map((x) => `${x.target} ${fmt(x.fanout.proxyCpu.usPerPushed, 2)}`).join(', ')} µs per pushed msg; missing ${fos.map((x) => `${x.target} ${x.fanout.missing}`).join(', ')}`);
    }
    verdict.push(`- ${parts.join('; ')}`);
  }
}
if (verdict.length) console.log(`\nsummary:\n${verdict.join('\n')}`);

if (!process.env.NO_MD) {
  const knobArgs = ['FANOUT_ROUNDS', 'FANOUT_GAP_S', 'FANOUT_BYTES', 'SETTLE_LATE_S'].filter((k) => process.env[k]).map((k) => `${k}=${process.env[k]} `).join('');
  const cmd = `cd bench && ${CLIENT !== 'raw' ? `CLIENT=${CLIENT} ` : ''}${ECHO !== 'uws' ? `ECHO=${ECHO} ` : ''}${process.env.PER_PROC ? `PER_PROC=${PER_PROC} ` : ''}${process.env.TURNPIKE_DIST ? `TURNPIKE_DIST=${process.env.TURNPIKE_DIST} ` : ''}${knobArgs}NS=${NS.join(',')} DURATION=${DURATION}${REPEAT > 1 ? ` REPEAT=${REPEAT}` : ''} TARGETS=${TARGET_NAMES.join(',')} node ws/run.mjs`;
  const body = `## WebSocket relay: Turnpike (uWS) vs nginx (issue 14)

Written by \`ws/run.mjs\` (${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, \`${relPath(file)}\`), ${facts.nproc} CPUs (${facts.cpuModel}), node ${facts.node}, ${facts.nginx ?? 'no nginx'}; load average before ${facts.loadavgAtStart.join(' ')}, machine ${facts.busyPctBeforeStart}% busy over 1 s before the start.

\`\`\`sh
${cmd}
\`\`\`

Turnpike: one worker, uWS backend, access log and admin off, route \`/ws/*\` with \`websocket: { idleTimeoutMs: 0, pingIntervalMs: 0 }\`. nginx: one worker, \`proxy_http_version 1.1\`, \`Upgrade\`/\`Connection\` headers, \`proxy_read_timeout 3600s\`, \`worker_rlimit_nofile 20000\`. Both in front of one echo upstream (${ECHO_DESC}, \`ECHO=${ECHO}\`, CPU 1); a fresh proxy per N on CPU 0; clients (${CLIENT_DESC}, \`CLIENT=${CLIENT}\`, ≤ ${PER_PROC} connections per process) on CPU 1. Per N: warm-up (${WARM} connections, ${WARM_S} s of traffic, closed), RSS/fds before, N idle connections (RSS/fds open, idle CPU over ${IDLE_S} s), ${DURATION} s at ${RATE} message/s per connection (${MSG_BYTES}-byte text, sends spread over each second; RTT measured by the clients), ${FANOUT_ROUNDS > 0 ? `then the fan-out: ${FANOUT_ROUNDS} pushes, ${FANOUT_GAP_S} s apart, of one ${FANOUT_BYTES}-byte text message from the echo upstream to every connection it holds (\`GET /push\` on the echo, which answers once every send is queued); `: ''}all closed with 1000, RSS/fds after ${SETTLE_AFTER_S} s${LATE ? ` and again ${SETTLE_LATE_S} s after the close (V8 gives heap pages back late)${REPEAT > 1 ? ', after every cycle' : ''}` : ''}. CPU-µs per relayed message = the proxy's utime+stime from the first send to the last echo / (2 × echoes): each echo is two relayed messages; user / sys µs = the same with utime and stime apart. \`direct\` = the clients straight at the echo upstream (the RTT floor of CPU 1).${foTable ? ` Fan-out: delivery latency = the client's receive time - the echo's push time (both CLOCK_MONOTONIC, \`process.hrtime.bigint()\`), one value per connection and round; push to last delivery = per round the largest of them (all connections served), median and worst of the rounds; missing = connections × rounds - deliveries (+ bad, duplicate, negative-latency pushes); CPU-µs per pushed message = the proxy's utime+stime from the first push to the last round fully delivered (the gaps included) / deliveries; schedstat = the same from /proc/PID/task/*/schedstat (ns), net of the idle CPU with N connections open over as long, or only inside each round's push-to-last-delivery window; echo queueing = the time the echo took to queue the sends of one round (included in the latencies); last delivery after echo queued = push to last delivery - that queueing time, per round (median).` : ''}

${table}
${foTable ? `\n${foTable}\n` : ''}
${verdict.join('\n')}
`;
  writeMdSection('ws', body);
  console.log('updated RESULTS.md (section ws)');
}
