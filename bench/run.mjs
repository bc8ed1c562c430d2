#!/usr/bin/env node
// Proxy peer benchmark: wrk load through each target (Turnpike on Node and
// Bun, nginx, HAProxy, node-http-proxy, Fastify) in front of one one-worker
// nginx upstream, plus `direct` (load straight at the upstream).
//
// Method (see README.md): the target runs on CPU 0, wrk and the upstream on
// CPU 1. All targets are started once and stay up; one discarded warm-up run
// per target and scenario, then ROUNDS rounds, each round running every
// scenario on every target (target order rotated per round), so a minute-
// scale swing of this VM hits all targets alike. The figure to compare is
// CPU-µs per request of the target's whole process tree (utime+stime from
// /proc), not requests/s, which swings up to 4x here.
//
// Knobs (env): ROUNDS=3 DURATION=5 (s per run) WARMUP=2 (s)
//   TARGETS=nginx,haproxy,...  SCENARIOS=get-64,...  NAME=peers (results file)
//   NO_MD=1 (do not rewrite RESULTS.md)  KEEP_TMP=1 (keep configs and logs)
//   PARALLEL=1: in each round, load every target at the same time (one wrk
//   each, all on the load CPU; the targets share CPU 0), so a swing of a
//   busy VM hits them all at the same instant: an A/B of Turnpike builds or
//   configs whose difference is smaller than the VM's minute-to-minute
//   noise. Only CPU-µs/req compares then (req/s and latency are shared;
//   cpu0OtherPct counts the other targets, upstreamCpuUsPerReq all of them).
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { TARGETS, selectTargets, startTargets, startUpstream, PROXY_CPU, LOAD_CPU, POOL, BENCH_DIR } from './lib/targets.mjs';
import { buildWrkShim } from './lib/tls-targets.mjs';
import { SCENARIOS, selectScenarios, wrkLua } from './lib/scenarios.mjs';
import { which, cpuSnapshot, cpuDeltaTicks, ticksToMicros, rssKb, stopChild, stopAllOnExit, stopAll, machineBusyPct, cpuLineTicks } from './lib/proc.mjs';
import { machineFacts, writeResultsJson, updateResultsMd, mdTable, median, fmtRate, fmtLatency, fmt, relPath } from './lib/report.mjs';

const ROUNDS = posInt('ROUNDS', 3);
const DURATION = posInt('DURATION', 5);
const WARMUP = posInt('WARMUP', 2, true);
const NAME = (process.env.NAME || 'peers').replace(/[^\w.-]/g, '_');
const PARALLEL = process.env.PARALLEL === '1';

function posInt(name, def, zeroOk = false) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < (zeroOk ? 0 : 1)) throw new Error(`${name} must be an integer >= ${zeroOk ? 0 : 1}, got ${raw}`);
  return n;
}

const WRK = which('wrk');
if (!WRK) {
  console.error('wrk not found: run bench/setup.sh (or bench/run.sh, which runs it first)');
  process.exit(2);
}

const targets = selectTargets(process.env.TARGETS);
const scenarios = selectScenarios(process.env.SCENARIOS);

// A TLS scenario (scenario.tls) goes to https:// with lib/wrk-tls-shim.c
// preloaded (when it built): its handshake counts come back as `tls`.
let wrkShim = null;

function runWrk(port, scenario, seconds, luaFile) {
  const url = `${scenario.tls ? 'https' : 'http'}://127.0.0.1:${port}${scenario.path}`;
  const args = ['-c', String(LOAD_CPU), WRK, '-t1', `-c${scenario.connections}`, `-d${seconds}s`, '--timeout', '5s', '--latency', '-s', luaFile, url];
  const env = scenario.tls && wrkShim
    ? { ...process.env, LD_PRELOAD: wrkShim, WRK_TLS_NO_RESUME: scenario.fullHandshake ? '1' : '0', WRK_TLS_MAX: scenario.tlsMax ?? '' }
    : process.env;
  return new Promise((resolve, reject) => {
    const child = spawn('taskset', args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    // wrk stops by itself after -d; this only guards against a hang.
    const guard = setTimeout(() => child.kill('SIGKILL'), (seconds + 20) * 1000);
    // 'close', not 'exit': 'exit' can come before the last of stdout has
    // been read (seen with several wrk at once), losing the summary line.
    child.once('close', (code) => {
      clearTimeout(guard);
      const line = out.split('\n').find((l) => l.startsWith('WRKJSON '));
      if (!line) return reject(new Error(`wrk gave no summary (exit ${code}): ${(err || out).trim().slice(0, 300)}`));
      const summary = JSON.parse(line.slice(8));
      const shim = err.split('\n').find((l) => l.startsWith('TLSSHIM '));
      if (shim) summary.tls = JSON.parse(shim.slice(8));
      resolve(summary);
    });
  });
}

async function measure(t, scenario, seconds) {
  const cpu0Before = cpuLineTicks(PROXY_CPU);
  const cpu1Before = cpuLineTicks(LOAD_CPU);
  const before = cpuSnapshot(t.pid);
  const upBefore = cpuSnapshot(upstream.child.pid);
  // A target may report figures of its own per run (the strict rate-limit
  // target: its Redis's CPU per request): probe() before and after the run.
  const probeBefore = t.target.probe?.();
  const w = await runWrk(t.target.port, scenario, seconds, luaFiles.get(scenario.name));
  const after = cpuSnapshot(t.pid);
  const probeAfter = t.target.probe?.();
  const upAfter = cpuSnapshot(upstream.child.pid);
  const cpu0After = cpuLineTicks(PROXY_CPU);
  const cpu1After = cpuLineTicks(LOAD_CPU);
  const cpuUs = ticksToMicros(cpuDeltaTicks(before, after));
  const upCpuUs = ticksToMicros(cpuDeltaTicks(upBefore, upAfter));
  const seconds_ = w.duration_us / 1e6;
  const errors = w.status + w.connect + w.read + w.write + w.timeout;
  const req = w.requests;
  return {
    requests: req,
    durationS: round(seconds_, 3),
    rps: round(req / seconds_, 0),
    mbPerS: round(w.bytes / seconds_ / 2 ** 20, 1),
    p50Us: w.p50,
    p90Us: w.p90,
    p99Us: w.p99,
    p999Us: w.p999,
    maxUs: w.max,
    errors,
    errorDetail: { non2xx3xx: w.status, connect: w.connect, read: w.read, write: w.write, timeout: w.timeout },
    // For `direct` the "proxy" is the upstream itself.
    cpuUsPerReq: req > 0 ? round(cpuUs / req, 2) : null,
    cpuBusyPct: round((cpuUs / w.duration_us) * 100, 1),
    upstreamCpuUsPerReq: req > 0 ? round(upCpuUs / req, 2) : null,
    rssMb: round(rssKb(t.pid) / 1024, 1),
    // All of CPU 0's busy time per request: the target plus kernel work
    // (softirq) for its sockets that is not charged to it, plus any
    // foreign process that ran there. Complete on a quiet machine.
    coreUsPerReq: t.direct || !cpu0Before || !cpu0After || req === 0 ? null : round(ticksToMicros(cpu0After.busy - cpu0Before.busy) / req, 2),
    // CPU 0 time not charged to the target: kernel softirq work for its
    // sockets plus anything else that ran there (other sessions' builds and
    // tests on this shared VM). High values mean a noisy run.
    cpu0OtherPct: t.direct || !cpu0Before || !cpu0After ? null : round((100 * (cpu0After.busy - cpu0Before.busy - cpuDeltaTicks(before, after))) / Math.max(1, cpu0After.total - cpu0Before.total), 1),
    // The machine's 1-minute load average at the end of the run (2 CPUs: above 2, work waits).
    loadAvg1: round(loadavg()[0], 2),
    // How busy the load CPU (wrk + upstream) was: near 100, req/s is the
    // client's limit, not the target's (TLS handshakes cost wrk as much as
    // the server).
    loadCpuBusyPct: !cpu1Before || !cpu1After ? null : round((100 * (cpu1After.busy - cpu1Before.busy)) / Math.max(1, cpu1After.total - cpu1Before.total), 1),
    // TLS scenarios: wrk's handshakes (lib/wrk-tls-shim.c), per second and
    // the target's CPU per handshake (with a handshake per request, the
    // whole request: accept, handshake, proxying, close).
    ...(w.tls ? {
      tls: w.tls,
      handshakesPerS: round(w.tls.handshakes / seconds_, 0),
      resumedPct: w.tls.handshakes > 0 ? round((100 * w.tls.resumed) / w.tls.handshakes, 1) : null,
      cpuUsPerHandshake: w.tls.handshakes > 0 ? round(cpuUs / w.tls.handshakes, 2) : null,
    } : {}),
    ...(t.target.probeResult ? { probe: t.target.probeResult(probeBefore, probeAfter, req) } : {}),
  };
}

function round(n, d) {
  const f = 10 ** d;
  return Math.round(n * f) / f;
}

const alive = (t) => t.direct || (t.child.exitCode === null && t.child.signalCode === null);

// ---------------------------------------------------------------------------
stopAllOnExit();
const tmp = mkdtempSync(join(tmpdir(), 'turnpike-bench-'));
const log = join(tmp, 'upstream.log');
const facts = machineFacts();
const startedAt = new Date();
console.log(`turnpike bench: ${facts.nproc} CPUs (${facts.cpuModel}), node ${facts.node}, nginx ${facts.nginx ?? '-'}, ${facts.haproxy ?? 'haproxy -'}`);
console.log(`knobs: ROUNDS=${ROUNDS} DURATION=${DURATION}s WARMUP=${WARMUP}s TARGETS=${targets.map((t) => t.name).join(',')} SCENARIOS=${scenarios.map((s) => s.name).join(',')}`);
console.log(`temp dir (configs, logs): ${tmp}`);
if (facts.nproc < 2) console.log('warning: fewer than 2 CPUs, proxy and load generator share a core');

facts.busyPctBeforeStart = await machineBusyPct();
if (facts.busyPctBeforeStart > 15) console.log(`warning: the machine was ${facts.busyPctBeforeStart}% busy before the start (other processes): expect noisy numbers`);
const upstream = await startUpstream(tmp, log);
console.log(`upstream: ${upstream.kind} on 127.0.0.1:${upstream.port}, pid ${upstream.child.pid}, CPU ${LOAD_CPU}`);

if (scenarios.some((s) => s.tls)) {
  const shim = buildWrkShim(BENCH_DIR, tmp);
  if (shim.path) wrkShim = shim.path;
  else {
    console.log(`TLS scenarios run without handshake counts: ${shim.reason}`);
    for (let i = scenarios.length - 1; i >= 0; i--) {
      if (scenarios[i].fullHandshake || scenarios[i].tlsMax) console.log(`skip scenario ${scenarios.splice(i, 1)[0].name}: it needs the shim`);
    }
  }
}

const luaFiles = new Map();
for (const s of scenarios) {
  const f = join(tmp, `wrk-${s.name}.lua`);
  writeFileSync(f, wrkLua(s));
  luaFiles.set(s.name, f);
}

const { running, targetInfo } = await startTargets(targets, tmp, upstream);
if (running.length === 0) {
  console.error('no target could run');
  await stopAll();
  process.exit(1);
}

// A `tls: true` scenario runs only on `tls: true` targets (over https),
// every other scenario only on plain targets.
const fits = (t, s) => (t.target.tls === true) === (s.tls === true);
const pairs = scenarios.reduce((n, s) => n + running.filter((t) => fits(t, s)).length, 0);
const perRun = DURATION + 0.4;
const estS = pairs * (ROUNDS * perRun + (WARMUP ? WARMUP + 0.4 : 0));
console.log(`plan: ${pairs} target x scenario pairs (${running.length} targets, ${scenarios.length} scenarios) x ${ROUNDS} rounds x ${DURATION}s (+ ${WARMUP}s warm-up each) ~ ${(estS / 60).toFixed(1)} min`);

const runs = [];
const failures = [];

async function one(label, t, s, seconds, keep, round) {
  if (!alive(t) || !fits(t, s)) return;
  try {
    const m = await measure(t, s, seconds);
    const errs = (m.errors ? `, ${m.errors} errors` : '') + (m.cpu0OtherPct > 10 ? ` (CPU 0: ${m.cpu0OtherPct}% not the target)` : '');
    const hs = m.tls ? `, ${m.tls.handshakes} handshakes (${m.resumedPct}% resumed, ${m.tls.version} ${m.tls.cipher} ${m.tls.group})` : '';
    console.log(`[${label}] ${t.name} ${s.name} ... ${fmtRate(m.rps)} req/s, ${fmt(m.cpuUsPerReq)} µs/req, p99 ${fmtLatency(m.p99Us)}${errs}${hs}`);
    if (keep) runs.push({ round, target: t.name, scenario: s.name, ...m });
  } catch (err) {
    console.log(`[${label}] ${t.name} ${s.name} ... FAILED: ${err.message}`);
    failures.push({ round, target: t.name, scenario: s.name, error: err.message });
  }
  if (!alive(t)) {
    console.log(`${t.name} exited (code ${t.child.exitCode}, signal ${t.child.signalCode}); see ${t.log}`);
    failures.push({ round, target: t.name, scenario: s.name, error: 'process exited' });
  }
}

if (WARMUP > 0) {
  for (const s of scenarios) for (const t of running) await one('warm-up', t, s, WARMUP, false, 0);
}
for (let r = 1; r <= ROUNDS; r++) {
  for (const s of scenarios) {
    // Rotate the order each round so no target always runs first.
    const k = (r - 1) % running.length;
    const order = running.slice(k).concat(running.slice(0, k));
    if (PARALLEL) await Promise.all(order.filter((t) => fits(t, s)).map((t) => one(`round ${r}/${ROUNDS}`, t, s, DURATION, true, r)));
    else for (const t of order) await one(`round ${r}/${ROUNDS}`, t, s, DURATION, true, r);
  }
}

for (const t of running) {
  if (t.direct) continue;
  await stopChild(t.child);
  await t.target.stop?.(); // what the target started beside its process (the strict target's Redis)
}
await stopChild(upstream.child);

// ---------------------------------------------------------------------------
const medians = {};
for (const s of scenarios) {
  medians[s.name] = {};
  for (const t of running) {
    const rs = runs.filter((x) => x.scenario === s.name && x.target === t.name);
    if (rs.length === 0) continue;
    const pick = (k) => median(rs.map((x) => x[k]));
    medians[s.name][t.name] = {
      rounds: rs.length,
      rps: pick('rps'),
      p50Us: pick('p50Us'),
      p99Us: pick('p99Us'),
      cpuUsPerReq: pick('cpuUsPerReq'),
      cpuUsPerReqMin: Math.min(...rs.map((x) => x.cpuUsPerReq ?? Infinity)),
      cpuUsPerReqMax: Math.max(...rs.map((x) => x.cpuUsPerReq ?? -Infinity)),
      upstreamCpuUsPerReq: pick('upstreamCpuUsPerReq'),
      rssMb: pick('rssMb'),
      coreUsPerReq: pick('coreUsPerReq'),
      cpu0OtherPct: pick('cpu0OtherPct'),
      cpuBusyPct: pick('cpuBusyPct'),
      loadCpuBusyPct: pick('loadCpuBusyPct'),
      errors: rs.reduce((a, x) => a + x.errors, 0),
    };
    // TLS scenarios: wrk's handshakes (medians), what was negotiated.
    if (rs[0].tls) {
      Object.assign(medians[s.name][t.name], {
        handshakesPerS: pick('handshakesPerS'),
        cpuUsPerHandshake: pick('cpuUsPerHandshake'),
        resumedPct: pick('resumedPct'),
        tls: { version: rs[0].tls.version, cipher: rs[0].tls.cipher, group: rs[0].tls.group, noResume: rs[0].tls.noResume },
      });
    }
    // The figures of a target's own probe (medians too).
    if (rs[0].probe) {
      medians[s.name][t.name].probe = Object.fromEntries(Object.keys(rs[0].probe).map((k) => [k, median(rs.map((x) => x.probe?.[k]).filter((v) => typeof v === 'number'))]));
    }
  }
  // `× nginx`: against the target's `reference` (nginx-tls for the TLS
  // targets, ...), nginx for the others; `reference` names it.
  for (const [name, m] of Object.entries(medians[s.name])) {
    const ref = running.find((t) => t.name === name)?.target.reference ?? 'nginx';
    const ng = medians[s.name][ref]?.cpuUsPerReq;
    m.xNginx = ng && m.cpuUsPerReq !== null && name !== 'direct' ? round(m.cpuUsPerReq / ng, 2) : null;
    if (ref !== 'nginx') m.reference = ref;
  }
}

const method = {
  loadGenerator: `wrk -t1 -cN --latency (${facts.wrk ?? 'wrk'}), pinned to CPU ${LOAD_CPU}`,
  upstream: `${upstream.kind}, one worker, pinned to CPU ${LOAD_CPU}: "ok" on /, 1 MiB on /1mb`,
  proxyCpu: `target pinned to CPU ${PROXY_CPU} (taskset), one worker/thread each, upstream pool ${POOL}`,
  cpuPerRequest: 'delta utime+stime (clock ticks from /proc/PID/stat, whole process tree) / requests completed by wrk',
  rss: 'sum of VmRSS over the process tree right after the run',
  errors: 'wrk non-2xx/3xx responses + socket errors (connect, read, write, timeout), summed over rounds',
  order: PARALLEL
    ? 'one warm-up run per target and scenario (discarded), then rounds; in each round every target is loaded at the same time (one wrk each), so only CPU-µs/req compares'
    : 'one warm-up run per target and scenario (discarded), then rounds; each round runs every scenario on every target, target order rotated per round',
  aggregate: 'median across rounds',
};
const result = {
  kind: 'proxy',
  name: NAME,
  startedAt: startedAt.toISOString(),
  finishedAt: new Date().toISOString(),
  machine: facts,
  method,
  knobs: { ROUNDS, DURATION, WARMUP, TARGETS: process.env.TARGETS || null, SCENARIOS: process.env.SCENARIOS || null, PARALLEL, TLS_KEY: process.env.TLS_KEY || null },
  scenarios,
  targets: targetInfo,
  runs,
  failures,
  medians,
};
const file = writeResultsJson(NAME, result);
if (process.env.KEEP_TMP || failures.length) console.log(`kept ${tmp} (configs, logs)`);
else rmSync(tmp, { recursive: true, force: true });

// ---------------------------------------------------------------------------
const header = ['target', 'req/s', 'p50', 'p99', 'CPU-µs/req', 'rounds min-max', '× nginx', 'core-µs/req', 'RSS MB', 'errors'];
const sections = [];
for (const s of scenarios) {
  const rows = running
    .filter((t) => medians[s.name][t.name])
    .map((t) => {
      const m = medians[s.name][t.name];
      const cpu = t.direct ? `(${fmt(m.cpuUsPerReq)} upstream)` : fmt(m.cpuUsPerReq);
      const range = t.direct || !Number.isFinite(m.cpuUsPerReqMin) ? '' : `${fmt(m.cpuUsPerReqMin)}-${fmt(m.cpuUsPerReqMax)}`;
      return [t.name, fmtRate(m.rps), fmtLatency(m.p50Us), fmtLatency(m.p99Us), cpu, range, fmt(m.xNginx, 2), fmt(m.coreUsPerReq), fmt(m.rssMb), m.errors];
    });
  const table = mdTable(header, rows);
  console.log(`\n${s.name}: ${s.note}, -c${s.connections}\n${table}`);
  sections.push(`### ${s.name}: ${s.note}, wrk -c${s.connections}\n\n${table}`);
}
const skipped = targetInfo.filter((t) => t.status !== 'ok');
const md = `## Proxy peers (wrk)

Run ${startedAt.toISOString().slice(0, 16).replace('T', ' ')} UTC, \`${relPath(file)}\`; ${facts.nproc} CPUs (${facts.cpuModel}), node ${facts.node}${facts.bun ? `, bun ${facts.bun}` : ''}, nginx ${facts.nginx ?? '-'}, ${facts.haproxy ?? ''}.
Knobs: ROUNDS=${ROUNDS}, DURATION=${DURATION}s, WARMUP=${WARMUP}s. Medians across rounds; errors summed. The machine was ${facts.busyPctBeforeStart ?? '?'}% busy with other work just before the start.
${skipped.length ? `\nNot run: ${skipped.map((t) => `${t.name} (${t.reason})`).join('; ')}.\n` : ''}
${sections.join('\n\n')}

Caveats. This is a shared 2-core VM whose throughput swings up to 4x from minute to minute: read req/s and latency as rough, and compare **CPU-µs/req** (CPU time of the target's whole process tree divided by requests served), which is steadier; its spread over the rounds is shown (an event-loop proxy handles fewer requests per loop turn when the VM is busy, which raises its cost per request). wrk and the upstream share CPU 1, so for the fastest targets req/s is capped by CPU 1, not by the proxy; the target alone owns CPU 0. **core-µs/req** is all of CPU 0's busy time per request: it adds the kernel's softirq time for loopback TCP on CPU 0, which this kernel charges to no process (10-17% of CPU 0 under load in a check here), but also anything else that ran on CPU 0, so it is the complete figure on a quiet machine and a noisy one when other work runs (see busy % above and cpu0OtherPct in the JSON). \`direct\` has no proxy: its CPU column is the upstream's own cost, and its latency is the baseline for added latency. CPU time is counted in clock ticks (${facts.clkTck}/s): a fully busy ${DURATION} s run spans ${DURATION * facts.clkTck} ticks, so one tick is ${fmt(100 / (DURATION * facts.clkTck), 2)}%. Runs with ROUNDS=1 or short DURATION are indicative only.`;
if (!process.env.NO_MD) console.log(`\nwrote ${relPath(updateResultsMd('proxy', md))} (proxy section)`);
console.log(`wrote ${relPath(file)}`);
if (failures.length) console.log(`${failures.length} run(s) failed; see "failures" in the results file`);
