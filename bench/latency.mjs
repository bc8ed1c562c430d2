#!/usr/bin/env node
// Latency at a fixed offered rate, and at saturation, with autocannon.
//
// For each target (default: turnpike-node and nginx, with `direct` always
// added as the baseline): a warm-up run, a saturation run (no rate limit)
// giving that target's max req/s through autocannon, then runs at LEVELS of
// that max (default 50% and 80%, autocannon overallRate, smooth pacing: see
// lib/ac-run.mjs). Each fixed-rate run of a proxy is followed by a `direct`
// run at the SAME offered rate, so "added p99" is the proxy's p99 minus the
// upstream's own p99 under the same load. Latencies come from an
// hdr-histogram-js histogram of every response.
//
// Same pinning as run.mjs: target on CPU 0, autocannon + upstream on CPU 1.
// autocannon is single-threaded JS and saturates near 60-70k req/s here, so a
// target's "max" may be the client's max; wrk (run.mjs) is the throughput
// tool, this one is for latency.
//
// Knobs (env): TARGETS=turnpike-node,nginx  DURATION=10 (s per run)
//   WARMUP=3  CONNECTIONS=64 (saturation)  RATE_CONNECTIONS=16 (fixed rate)
//   LEVELS=0.5,0.8  PACING=smooth|autocannon
//   NAME=latency  NO_MD=1  KEEP_TMP=1
import { autocannonRun as runAutocannon } from './lib/autocannon.mjs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { selectTargets, startTargets, startUpstream, LOAD_CPU, PROXY_CPU } from './lib/targets.mjs';
import { cpuSnapshot, cpuDeltaTicks, ticksToMicros, rssKb, stopChild, stopAllOnExit, stopAll, machineBusyPct } from './lib/proc.mjs';
import { machineFacts, writeResultsJson, updateResultsMd, mdTable, fmtRate, fmtLatency, fmt, relPath } from './lib/report.mjs';

const DURATION = num('DURATION', 10);
const WARMUP = num('WARMUP', 3);
const CONNECTIONS = num('CONNECTIONS', 64);
// Fewer connections at a fixed rate: with 64, autocannon's own per-connection
// work put ~1 ms on p50 even at 2k req/s against an idle nginx; 16 is
// enough in-flight capacity for these rates (Little's law) and keeps the
// client's noise floor near 0.3 ms p50 / 4 ms p99.
const RATE_CONNECTIONS = num('RATE_CONNECTIONS', 16);
const LEVELS = (process.env.LEVELS || '0.5,0.8').split(',').map(Number);
const PACING = process.env.PACING || 'smooth';
const NAME = (process.env.NAME || 'latency').replace(/[^\w.-]/g, '_');
if (LEVELS.some((l) => !(l > 0 && l <= 1))) throw new Error('LEVELS must be fractions in (0, 1]');
if (!['smooth', 'autocannon'].includes(PACING)) throw new Error('PACING must be smooth or autocannon');

function num(name, def) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!(n > 0)) throw new Error(`${name} must be a positive number, got ${raw}`);
  return n;
}

const names = (process.env.TARGETS || 'turnpike-node,nginx').split(',').filter((n) => n && n !== 'direct');
const targets = selectTargets([...names, 'direct'].join(','));

function autocannonRun(port, { rate = 0, duration }) {
  return runAutocannon({ url: `http://127.0.0.1:${port}/`, connections: rate ? RATE_CONNECTIONS : CONNECTIONS, duration, rate, pacing: PACING });
}

async function measured(t, opts) {
  const before = cpuSnapshot(t.pid);
  const r = await autocannonRun(t.target.port, opts);
  const cpuUs = ticksToMicros(cpuDeltaTicks(before, cpuSnapshot(t.pid)));
  r.cpuUsPerReq = r.requests ? Math.round((cpuUs / r.requests) * 100) / 100 : null;
  r.rssMb = Math.round((rssKb(t.pid) / 1024) * 10) / 10;
  return r;
}

const line = (label, name, r) =>
  console.log(
    `[${label}] ${name} ... ${fmtRate(r.rps)} req/s${r.offeredRate ? ` (offered ${fmtRate(r.offeredRate)})` : ''}, p50 ${fmtLatency(r.latencyUs.p50)}, p99 ${fmtLatency(r.latencyUs.p99)}, p99.9 ${fmtLatency(r.latencyUs.p999)}${r.errors ? `, ${r.errors} errors` : ''}`,
  );

// ---------------------------------------------------------------------------
stopAllOnExit();
const tmp = mkdtempSync(join(tmpdir(), 'turnpike-latency-'));
const facts = machineFacts();
const startedAt = new Date();
console.log(`latency bench: DURATION=${DURATION}s WARMUP=${WARMUP}s CONNECTIONS=${CONNECTIONS} RATE_CONNECTIONS=${RATE_CONNECTIONS} LEVELS=${LEVELS.join(',')} PACING=${PACING}`);
facts.busyPctBeforeStart = await machineBusyPct();
if (facts.busyPctBeforeStart > 15) console.log(`warning: the machine was ${facts.busyPctBeforeStart}% busy before the start (other processes): expect noisy numbers`);
const upstream = await startUpstream(tmp, join(tmp, 'upstream.log'));
console.log(`upstream: ${upstream.kind} on 127.0.0.1:${upstream.port}, CPU ${LOAD_CPU}`);

const { running, targetInfo } = await startTargets(targets, tmp, upstream);
const direct = running.find((t) => t.direct);
const proxies = running.filter((t) => !t.direct);
const est = running.length * (WARMUP + DURATION) + proxies.length * LEVELS.length * 2 * DURATION;
console.log(`plan: ~${(est / 60).toFixed(1)} min`);

const saturation = {};
const fixed = [];
const failures = [];
for (const t of running) {
  try {
    line('warm-up', t.name, await autocannonRun(t.target.port, { duration: WARMUP }));
    const r = await measured(t, { duration: DURATION });
    saturation[t.name] = r;
    line('saturation', t.name, r);
  } catch (err) {
    console.log(`[saturation] ${t.name} ... FAILED: ${err.message}`);
    failures.push({ target: t.name, phase: 'saturation', error: err.message });
  }
}
for (const level of LEVELS) {
  for (const t of proxies) {
    const max = saturation[t.name]?.rps;
    if (!max) continue;
    const rate = Math.max(1, Math.round(max * level));
    try {
      const r = await measured(t, { rate, duration: DURATION });
      line(`${Math.round(level * 100)}% of max`, t.name, r);
      const d = direct ? await measured(direct, { rate, duration: DURATION }) : null;
      if (d) line(`${Math.round(level * 100)}% of ${t.name} max`, 'direct', d);
      fixed.push({
        target: t.name,
        level,
        offeredRate: rate,
        result: r,
        direct: d,
        addedP50Us: d ? r.latencyUs.p50 - d.latencyUs.p50 : null,
        addedP99Us: d ? r.latencyUs.p99 - d.latencyUs.p99 : null,
        addedP999Us: d ? r.latencyUs.p999 - d.latencyUs.p999 : null,
      });
    } catch (err) {
      console.log(`[${level}] ${t.name} ... FAILED: ${err.message}`);
      failures.push({ target: t.name, phase: `level ${level}`, error: err.message });
    }
  }
}
for (const t of proxies) await stopChild(t.child);
await stopChild(upstream.child);
await stopAll();

const result = {
  kind: 'latency',
  name: NAME,
  startedAt: startedAt.toISOString(),
  finishedAt: new Date().toISOString(),
  machine: facts,
  method: {
    client: `autocannon (lib/ac-run.mjs), ${CONNECTIONS} connections at saturation, ${RATE_CONNECTIONS} at a fixed rate, pinned to CPU ${LOAD_CPU}; latency = hdr-histogram-js over every response (µs)`,
    pacing: PACING === 'smooth' ? 'overallRate with the per-second budget refilled every 1 ms (see lib/ac-run.mjs)' : 'autocannon overallRate as is (per-second bursts)',
    levels: 'fractions of each target\'s own saturation req/s (through autocannon); direct re-run at the same offered rate for added latency',
    correctedLatency: 'latencyCorrectedUs: coordinated-omission corrected with the per-connection expected interval',
  },
  knobs: { DURATION, WARMUP, CONNECTIONS, RATE_CONNECTIONS, LEVELS, PACING, TARGETS: process.env.TARGETS || null },
  targets: targetInfo,
  saturation,
  fixed,
  failures,
};
const file = writeResultsJson(NAME, result);
if (process.env.KEEP_TMP || failures.length) console.log(`kept ${tmp}`);
else rmSync(tmp, { recursive: true, force: true });

const satTable = mdTable(
  ['target', 'max req/s', 'p50', 'p99', 'p99.9', 'CPU-µs/req', 'errors'],
  running
    .filter((t) => saturation[t.name])
    .map((t) => {
      const r = saturation[t.name];
      return [t.name, fmtRate(r.rps), fmtLatency(r.latencyUs.p50), fmtLatency(r.latencyUs.p99), fmtLatency(r.latencyUs.p999), t.direct ? `(${fmt(r.cpuUsPerReq)} upstream)` : fmt(r.cpuUsPerReq), r.errors];
    }),
);
const fixedTable = mdTable(
  ['target', 'load', 'offered', 'achieved', 'p50', 'p99', 'p99.9', 'direct p99', 'added p50', 'added p99', 'added p99.9', 'errors'],
  fixed.map((f) => [
    f.target,
    `${Math.round(f.level * 100)}%`,
    fmtRate(f.offeredRate),
    fmtRate(f.result.rps),
    fmtLatency(f.result.latencyUs.p50),
    fmtLatency(f.result.latencyUs.p99),
    fmtLatency(f.result.latencyUs.p999),
    fmtLatency(f.direct?.latencyUs.p99),
    fmtLatency(f.addedP50Us),
    fmtLatency(f.addedP99Us),
    fmtLatency(f.addedP999Us),
    f.result.errors + (f.direct?.errors ?? 0),
  ]),
);
console.log(`\nsaturation (autocannon -c${CONNECTIONS})\n${satTable}\n\nfixed rate\n${fixedTable}`);
const skipped = targetInfo.filter((t) => t.status !== 'ok');
const md = `## Latency at a fixed rate (autocannon)

Run ${startedAt.toISOString().slice(0, 16).replace('T', ' ')} UTC, \`${relPath(file)}\`. ${CONNECTIONS} connections at saturation, ${RATE_CONNECTIONS} at a fixed rate, ${DURATION}s per run, pacing ${PACING}. The machine was ${facts.busyPctBeforeStart ?? '?'}% busy with other work just before the start.
${skipped.length ? `\nNot run: ${skipped.map((t) => `${t.name} (${t.reason})`).join('; ')}.\n` : ''}
### Saturation

${satTable}

### Fixed offered rate (fraction of each target's own max; direct re-run at the same rate)

${fixedTable}

Caveats. autocannon is single-threaded JS sharing CPU 1 with the upstream: "max req/s" may be the client's limit, not the target's (use run.mjs/wrk for throughput). Added latency = proxy minus direct at the same offered rate, run back to back; on this noisy VM single runs can differ by a few hundred µs at p99, more at p99.9. Latencies are from send to full response (not corrected for coordinated omission; the JSON also has corrected figures). The client's own noise floor here, straight at an idle nginx at 8-14k req/s, was ~0.35-0.6 ms p50 and ~4 ms p99: added latency below that is within noise.`;
if (!process.env.NO_MD) console.log(`\nwrote ${relPath(updateResultsMd('latency', md))} (latency section)`);
console.log(`wrote ${relPath(file)}`);
