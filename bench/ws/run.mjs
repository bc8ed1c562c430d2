#!/usr/bin/env node
// WebSocket relay bench (issue 14): Turnpike (uWS backend, one worker)
// against nginx (one worker, the standard WebSocket proxy config) in the same
// run, both in front of the same `ws` echo upstream.
//
//   cd bench && node ws/run.mjs
//   NS=1000 DURATION=5 TARGETS=turnpike,nginx node ws/run.mjs     # a quick look
//
// Per N (connections) and target, a fresh proxy pinned to CPU 0 (taskset),
// the echo upstream (ws/echo.mjs) and the clients (ws/client.mjs, at most
// PER_PROC connections per process) on CPU 1:
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
//      upstream and back); RSS after the traffic;
//   4. every client closes with 1000; SETTLE_AFTER_S seconds; RSS and fds
//      "after", and the echo upstream's fds (its sockets must be gone too).
// KB per connection = (RSS open - RSS before) / connections open.
// `direct` (clients straight at the echo upstream) gives the RTT floor of
// the clients and upstream on CPU 1; it has no proxy figures.
//
// Knobs (env): NS=1000,5000 (list of N; 9900 fits the 20,000-fd limit of a
// proxy process: two sockets per connection) TARGETS=turnpike,nginx,direct
// DURATION=20 RATE=1 MSG_BYTES=64 PER_PROC=2500 CONCURRENCY=200 WARM=500
// WARM_S=3 SETTLE_S=2 SETTLE_AFTER_S=3 IDLE_S=3 OPEN_TIMEOUT_S=60 NAME=ws
// REPEAT=1 (more open/traffic/close cycles per proxy, REPEAT_TRAFFIC_S=5 s of
// traffic each: RSS and fds after every close, a leak check) NO_MD=1 (leave RESULTS.md alone) KEEP_TMP=1 TURNPIKE_DIST=<a build's dist>.
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
  cpuSnapshot, cpuDeltaTicks, ticksToMicros, machineBusyPct, cmdOutput,
} from '../lib/proc.mjs';
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
const PER_PROC = Math.max(1, num('PER_PROC', 2500));
const CONCURRENCY = Math.max(1, num('CONCURRENCY', 200));
const WARM = num('WARM', 500);
const WARM_S = num('WARM_S', 3);
const SETTLE_S = num('SETTLE_S', 2);
const SETTLE_AFTER_S = num('SETTLE_AFTER_S', 3);
const IDLE_S = num('IDLE_S', 3);
const OPEN_TIMEOUT_S = num('OPEN_TIMEOUT_S', 60);
const REPEAT = Math.max(1, num('REPEAT', 1));
const REPEAT_TRAFFIC_S = num('REPEAT_TRAFFIC_S', 5);
const NAME = (process.env.NAME || 'ws').replace(/[^\w.-]/g, '_');
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
    const child = which('taskset') ? spawn('taskset', ['-c', String(LOAD_CPU), ...args], { stdio: ['pipe', 'pipe', 'inherit'] }) : spawn(args[0], args.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
    started.add(child);
    const h = { child, n, st: blank(), stats: null, closeReport: null };
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
  const waitFor = async (pred, timeoutS) => {
    const deadline = Date.now() + timeoutS * 1000;
    while (!pred()) {
      if (Date.now() > deadline) return false;
      await sleep(100);
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

/** Traffic for `seconds`; returns merged stats (RTT histogram decoded). */
async function traffic(c, seconds) {
  c.send(`go ${RATE}`);
  await sleep(seconds * 1000);
  c.send('stop');
  await c.waitFor(() => c.handles.every((h) => h.stats !== null || h.child.exitCode !== null), 15);
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
    await sleep(IDLE_S * 1000);
    r.idleCpuUsPerS = Math.round(ticksToMicros(cpuDeltaTicks(idle0, cpuSnapshot(pid))) / IDLE_S);
    r.kbPerConn = r.connsOpen > 0 ? Math.round(((r.rssOpenKb - r.rssBeforeKb) / r.connsOpen) * 100) / 100 : null;
    console.log(`    ${r.connsOpen} open in ${r.openS} s (${r.openFailed} failed); RSS ${(r.rssBeforeKb / 1024).toFixed(1)} -> ${(r.rssOpenKb / 1024).toFixed(1)} MB = ${fmt(r.kbPerConn, 2)} KB/conn; fds ${r.fdsBefore} -> ${r.fdsOpen}; CPU ${r.baseCpuUsPerS} µs/s with no connection, ${r.idleCpuUsPerS} µs/s with them idle`);

    const cpu0 = cpuSnapshot(pid);
    const tr0 = Date.now();
    const tr = await traffic(c, DURATION);
    const ticks = cpuDeltaTicks(cpu0, cpuSnapshot(pid));
    const trafficS = (Date.now() - tr0) / 1000;
    r.trafficS = Math.round(trafficS * 10) / 10;
    Object.assign(r, { sent: tr.sent, received: tr.received, badEchoes: tr.bad, lost: tr.lost, unexpectedCloses: tr.unexpectedCloses, clientErrors: tr.errors, firstErrors: tr.firstErrors, missingReports: tr.missingReports, rttUs: tr.rttUs });
    r.relayed = 2 * tr.received;
    r.cpuTicks = ticks;
    r.cpuUsPerRelayed = target.direct || r.relayed === 0 ? null : Math.round((ticksToMicros(ticks) / r.relayed) * 100) / 100;
    // The same without what the proxy burns with the N connections idle (timers, sweeps) over as long.
    r.cpuUsPerRelayedNetOfIdle = target.direct || r.relayed === 0 ? null : Math.round(((ticksToMicros(ticks) - r.idleCpuUsPerS * trafficS) / r.relayed) * 100) / 100;
    r.rssAfterTrafficKb = await rssReads(pid);
    r.kbPerConnAfterTraffic = r.connsOpen > 0 ? Math.round(((r.rssAfterTrafficKb - r.rssBeforeKb) / r.connsOpen) * 100) / 100 : null;
    console.log(`    traffic ${DURATION} s: ${tr.sent} sent, ${tr.received} echoed (${tr.lost} lost, ${tr.bad} bad, ${tr.unexpectedCloses} unexpected closes); RTT p50 ${ms(tr.rttUs.p50)} ms p99 ${ms(tr.rttUs.p99)} ms max ${ms(tr.rttUs.max)} ms; CPU ${fmt(ticksToMicros(ticks) / 1000, 0)} ms = ${fmt(r.cpuUsPerRelayed, 2)} µs per relayed message (${fmt(r.cpuUsPerRelayedNetOfIdle, 2)} net of idle); RSS ${(r.rssAfterTrafficKb / 1024).toFixed(1)} MB`);

    const cl = await closeClients(c);
    r.closeCodes = cl.closeCodes;
    r.clientsExitedCleanly = cl.allExited;
    await sleep(SETTLE_AFTER_S * 1000);
    r.rssAfterCloseKb = await rssReads(pid);
    r.fdsAfterClose = fdCount(pid);
    r.echoFdsAfterClose = fdCount(echo.pid);
    r.keptAfterCloseMb = Math.round(((r.rssAfterCloseKb - r.rssBeforeKb) / 1024) * 10) / 10;
    console.log(`    closed (codes ${JSON.stringify(r.closeCodes)}): RSS ${(r.rssAfterCloseKb / 1024).toFixed(1)} MB (${r.keptAfterCloseMb >= 0 ? '+' : ''}${r.keptAfterCloseMb} MB vs before), fds ${r.fdsAfterClose} (before ${r.fdsBefore}), echo fds ${r.echoFdsAfterClose} (before ${r.echoFdsBefore})`);
    // Leak check: REPEAT - 1 more cycles of open N, REPEAT_TRAFFIC_S s of traffic, close; RSS and fds after each.
    r.cycles = [];
    for (let k = 2; k <= REPEAT && !target.direct; k++) {
      const c2 = startClients(url, n);
      await waitOpen(c2, n, `cycle ${k} open`);
      const open2 = c2.sum().open;
      const tr2 = REPEAT_TRAFFIC_S > 0 ? await traffic(c2, REPEAT_TRAFFIC_S) : null;
      const rssOpen2 = rssKb(pid);
      const cl2 = await closeClients(c2);
      await sleep(SETTLE_AFTER_S * 1000);
      const cy = { cycle: k, open: open2, echoes: tr2?.received ?? 0, lost: tr2?.lost ?? 0, rssWithTrafficKb: rssOpen2, closeCodes: cl2.closeCodes, rssAfterCloseKb: await rssReads(pid), fdsAfterClose: fdCount(pid), echoFdsAfterClose: fdCount(echo.pid) };
      r.cycles.push(cy);
      console.log(`    cycle ${k}: ${open2} open, ${cy.echoes} echoes (${cy.lost} lost), RSS ${(rssOpen2 / 1024).toFixed(1)} MB open, ${(cy.rssAfterCloseKb / 1024).toFixed(1)} MB after close, fds ${cy.fdsAfterClose}, echo fds ${cy.echoFdsAfterClose}, codes ${JSON.stringify(cy.closeCodes)}`);
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
const echo = spawnPinned(LOAD_CPU, process.execPath, [join(HERE, 'echo.mjs'), String(ECHO_PORT)], { logFile: join(tmp, 'echo.log') });
await waitReady(ECHO_PORT, { path: '/ws/ready', child: echo });
console.log(`echo upstream: ws ${JSON.parse(readFileSync(join(HERE, '../node_modules/ws/package.json'), 'utf8')).version} on 127.0.0.1:${ECHO_PORT}, pid ${echo.pid}, CPU ${LOAD_CPU}`);

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

const knobs = { NS, REPEAT, REPEAT_TRAFFIC_S, DURATION, RATE, MSG_BYTES, PER_PROC, CONCURRENCY, WARM, WARM_S, SETTLE_S, SETTLE_AFTER_S, IDLE_S, OPEN_TIMEOUT_S, TARGETS: TARGET_NAMES, TURNPIKE_DIST };
const file = writeResultsJson(NAME, {
  kind: 'ws',
  name: NAME,
  finishedAt: new Date().toISOString(),
  machine: facts,
  knobs,
  method: 'fresh proxy per N on CPU 0, echo upstream and clients on CPU 1; RSS = VmRSS summed over the proxy process tree; KB/conn = (RSS with N idle connections - RSS before, after a warm-up) / connections open; CPU-µs per relayed message = utime+stime of the proxy tree from the first send to the last echo / (2 x echoes received): each echo is one message client->upstream and one upstream->client; RTT measured by the clients (send to echo), µs',
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
  r.target === 'direct' ? '' : `${r.baseCpuUsPerS} / ${r.idleCpuUsPerS}`,
  `${r.openFailed + r.lost + r.badEchoes + r.unexpectedCloses + r.clientErrors}`,
]);
const header = ['target', 'N', 'open', 'RSS before MB', 'RSS open MB', 'KB/conn idle', 'KB/conn after traffic', 'RSS after close MB', 'fds before / open / after', 'echoes', 'RTT p50 ms', 'RTT p99 ms', 'CPU-µs / relayed msg', 'net of idle', 'CPU µs/s: no conn / N idle', 'errors'];
const table = mdTable(header, rows);
console.log(`\n${table}`);
for (const r of results.filter((x) => x.error)) console.log(`not measured: ${r.target} N=${r.n} (${r.error.split('\n')[0]})`);
console.log('errors = failed opens + lost echoes + bad echoes + unexpected closes + client errors; CPU-µs per relayed message counts 2 messages per echo');
console.log(`wrote ${relPath(file)}`);

if (!process.env.NO_MD) {
  const cmd = `cd bench && ${process.env.TURNPIKE_DIST ? `TURNPIKE_DIST=${process.env.TURNPIKE_DIST} ` : ''}NS=${NS.join(',')} DURATION=${DURATION}${REPEAT > 1 ? ` REPEAT=${REPEAT}` : ''} TARGETS=${TARGET_NAMES.join(',')} node ws/run.mjs`;
  const verdict = [];
  const maxN = Math.max(...ok.map((r) => r.n));
  const at = (t, n) => ok.find((r) => r.target === t && r.n === n);
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
    }
    verdict.push(`- ${parts.join('; ')}`);
  }
  const body = `## WebSocket relay: Turnpike (uWS) vs nginx (issue 14)

Written by \`ws/run.mjs\` (${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, \`${relPath(file)}\`), ${facts.nproc} CPUs (${facts.cpuModel}), node ${facts.node}, ${facts.nginx ?? 'no nginx'}; load average before ${facts.loadavgAtStart.join(' ')}, machine ${facts.busyPctBeforeStart}% busy over 1 s before the start.

\`\`\`sh
${cmd}
\`\`\`

Turnpike: one worker, uWS backend, access log and admin off, route \`/ws/*\` with \`websocket: { idleTimeoutMs: 0, pingIntervalMs: 0 }\`. nginx: one worker, \`proxy_http_version 1.1\`, \`Upgrade\`/\`Connection\` headers, \`proxy_read_timeout 3600s\`, \`worker_rlimit_nofile 20000\`. Both in front of one \`ws\` echo upstream (CPU 1); a fresh proxy per N on CPU 0; clients (\`ws\`, ≤ ${PER_PROC} connections per process) on CPU 1. Per N: warm-up (${WARM} connections, ${WARM_S} s of traffic, closed), RSS/fds before, N idle connections (RSS/fds open, idle CPU over ${IDLE_S} s), ${DURATION} s at ${RATE} message/s per connection (${MSG_BYTES}-byte text, sends spread over each second; RTT measured by the clients), all closed with 1000, RSS/fds after ${SETTLE_AFTER_S} s. CPU-µs per relayed message = the proxy's utime+stime from the first send to the last echo / (2 × echoes): each echo is two relayed messages. \`direct\` = the clients straight at the echo upstream (the RTT floor of CPU 1).

${table}

${verdict.join('\n')}
`;
  writeMdSection('ws', body);
  console.log('updated RESULTS.md (section ws)');
}
