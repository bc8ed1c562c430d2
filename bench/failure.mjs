#!/usr/bin/env node
// The failure scenario of issue 11: two targets behind one upstream, load on
// at a fixed rate, and one target dead. What clients see (errors, p50, p99,
// p99.9) with retries off and on, against the all-healthy run:
//
//   healthy        both targets up (retries on): the reference latency
//   dead           target B is down from the start (its port refuses)
//   dies           target B is SIGKILLed a third of the way into the run
//                  (requests in flight on it are reset)
//
// each of `dead` and `dies` with retries off (`-noretry`) and on (`-retry`).
// The upstream has a breaker and outlier detection with every default
// (failureThreshold 5), so without retries the first failures reach the
// client until B is ejected/open; with retries (attempts 2, on
// connect_failure, reset, 502-504) the target is 0 errors.
//
// Every variant gets a fresh gateway and fresh upstreams (no breaker state
// carried over), 2 worker threads (the breaker is shared: both must agree),
// autocannon (lib/ac-run.mjs, its own process, pinned to the load CPU) at
// RATE req/s over CONNECTIONS connections for DURATION s; ROUNDS rounds,
// medians (errors summed). Ports 18093 (gateway), 18094-18095 (targets).
//
//   node bench/failure.mjs                        # ~2 min with defaults
//   ROUNDS=1 DURATION=5 VARIANTS=healthy,dead-retry node bench/failure.mjs
//
// Knobs: ROUNDS (3), DURATION (10 s), RATE (2000), CONNECTIONS (16),
// VARIANTS (comma list), NAME (failure), NO_MD=1 (leave RESULTS.md alone).
// Needs `npm run build` at the repository root.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BENCH_DIR, TURNPIKE_CLI, LOAD_CPU, PROXY_CPU } from './lib/targets.mjs';
import { spawnPinned, stopChild, stopAllOnExit } from './lib/proc.mjs';
import { autocannonRun } from './lib/autocannon.mjs';
import { machineFacts, writeResultsJson, updateResultsMd, mdTable, median, relPath } from './lib/report.mjs';

const ROUNDS = int('ROUNDS', 3);
const DURATION = int('DURATION', 10);
const RATE = int('RATE', 2000);
const CONNECTIONS = int('CONNECTIONS', 16);
const NAME = (process.env.NAME || 'failure').replace(/[^\w.-]/g, '_');
const GATEWAY_PORT = 18093;
const TARGET_PORTS = [18094, 18095];

const RETRY = { attempts: 2, on: ['connect_failure', 'reset', '502', '503', '504'], backoffMs: 25, maxBackoffMs: 250 };
const VARIANTS = [
  { name: 'healthy', retry: true, dead: null },
  { name: 'dead-noretry', retry: false, dead: 'start' },
  { name: 'dead-retry', retry: true, dead: 'start' },
  { name: 'dies-noretry', retry: false, dead: 'mid' },
  { name: 'dies-retry', retry: true, dead: 'mid' },
];

function int(name, def) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, got ${raw}`);
  return n;
}

const want = process.env.VARIANTS ? process.env.VARIANTS.split(',').filter(Boolean) : null;
const unknown = want?.filter((w) => !VARIANTS.some((v) => v.name === w)) ?? [];
if (unknown.length) throw new Error(`unknown variant(s) ${unknown.join(', ')}; known: ${VARIANTS.map((v) => v.name).join(', ')}`);
const variants = want === null ? VARIANTS : VARIANTS.filter((v) => want.includes(v.name));
if (!existsSync(TURNPIKE_CLI)) {
  console.error(`not built: run npm run build at the repository root (no ${TURNPIKE_CLI})`);
  process.exit(1);
}

stopAllOnExit();
const tmp = mkdtempSync(join(tmpdir(), 'turnpike-failure-'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitPort(port, what, ms = 10_000) {
  const probe = `const s=require('net').connect(${port},'127.0.0.1');s.on('connect',()=>process.exit(0));s.on('error',()=>process.exit(1));`;
  for (const end = Date.now() + ms; Date.now() < end; await sleep(50)) {
    if (spawnSync(process.execPath, ['-e', probe]).status === 0) return;
  }
  throw new Error(`${what} did not listen on ${port} within ${ms} ms (logs in ${tmp})`);
}

function gatewayConfig(v) {
  const file = join(tmp, `${v.name}.json`);
  writeFileSync(file, JSON.stringify({
    server: { host: '127.0.0.1', port: GATEWAY_PORT, workers: 2 },
    admin: { enabled: false },
    log: { access: { enabled: false } },
    upstreams: {
      up: {
        targets: TARGET_PORTS.map((p) => `http://127.0.0.1:${p}`),
        breaker: {},
        outlierDetection: {},
        ...(v.retry ? { retry: RETRY } : {}),
      },
    },
    routes: [{ id: 'all', path: '/*', upstream: 'up' }],
  }, null, 2));
  return file;
}

/** One autocannon run against the gateway; resolves with its ACJSON result. */
function load() {
  return autocannonRun({ url: `http://127.0.0.1:${GATEWAY_PORT}/`, connections: CONNECTIONS, duration: DURATION, rate: RATE, pacing: 'smooth' });
}

async function runVariant(v, round) {
  const ups = TARGET_PORTS.map((p, i) => (v.dead === 'start' && i === 1
    ? null
    : spawnPinned(LOAD_CPU, process.execPath, [join(BENCH_DIR, 'peers/upstream-node.mjs'), String(p)], { logFile: join(tmp, `${v.name}-${round}-target-${p}.log`) })));
  let gw = null;
  try {
    for (let i = 0; i < ups.length; i++) if (ups[i] !== null) await waitPort(TARGET_PORTS[i], `target ${TARGET_PORTS[i]}`);
    gw = spawnPinned(PROXY_CPU, process.execPath, [TURNPIKE_CLI, 'start', '--config', gatewayConfig(v)], { logFile: join(tmp, `${v.name}-${round}-gateway.log`) });
    await waitPort(GATEWAY_PORT, 'the gateway');
    const running = load();
    let killedAtMs = null;
    if (v.dead === 'mid') {
      await sleep((DURATION * 1000) / 3);
      process.kill(ups[1].pid, 'SIGKILL');
      killedAtMs = Math.round((DURATION * 1000) / 3);
    }
    const r = await running;
    return { ...r, killedAtMs };
  } finally {
    await stopChild(gw);
    for (const u of ups) await stopChild(u, 1000);
  }
}

const results = Object.fromEntries(variants.map((v) => [v.name, []]));
for (let round = 1; round <= ROUNDS; round++) {
  for (const v of variants) {
    process.stdout.write(`round ${round}/${ROUNDS} ${v.name.padEnd(13)} ${DURATION} s at ${RATE} req/s ... `);
    const r = await runVariant(v, round);
    results[v.name].push(r);
    console.log(`${r.requests} requests, ${r.errors} errors (${r.errorDetail.non2xx} non-2xx, ${r.errorDetail.socket} socket, ${r.errorDetail.timeouts} timeouts), p99 ${(r.latencyUs.p99 / 1000).toFixed(2)} ms`);
  }
}

const summary = variants.map((v) => {
  const rs = results[v.name];
  const requests = rs.reduce((a, r) => a + r.requests, 0);
  const errors = rs.reduce((a, r) => a + r.errors, 0);
  return {
    variant: v.name,
    retry: v.retry,
    dead: v.dead,
    requests,
    errors,
    errorsPerRound: rs.map((r) => r.errors),
    p50Us: median(rs.map((r) => r.latencyUs.p50)),
    p99Us: median(rs.map((r) => r.latencyUs.p99)),
    p999Us: median(rs.map((r) => r.latencyUs.p999)),
    maxUs: median(rs.map((r) => r.latencyUs.max)),
  };
});
const healthy = summary.find((s) => s.variant === 'healthy');
const ms = (us) => (us / 1000).toFixed(2);
const rows = summary.map((s) => [
  s.variant, s.retry ? 'on' : 'off', s.dead === null ? '-' : s.dead === 'start' ? 'from the start' : `SIGKILL at ${Math.round(DURATION / 3)} s`,
  s.requests, `${s.errors} (${s.errorsPerRound.join(', ')})`, ms(s.p50Us), ms(s.p99Us), ms(s.p999Us),
  healthy && s !== healthy ? `${(s.p99Us / healthy.p99Us).toFixed(2)}x` : '',
]);
const table = mdTable(['variant', 'retries', 'target B', 'requests', 'errors (per round)', 'p50 ms', 'p99 ms', 'p99.9 ms', 'p99 vs healthy'], rows);
console.log(`\n${table}`);

const file = writeResultsJson(NAME, {
  kind: 'failure',
  date: new Date().toISOString(),
  machine: machineFacts(),
  method: `two node:http targets (peers/upstream-node.mjs, CPU ${LOAD_CPU}), a gateway with 2 workers (CPU ${PROXY_CPU}), breaker {} + outlierDetection {} (every default), retry ${JSON.stringify(RETRY)} where on; autocannon ${CONNECTIONS} connections at ${RATE} req/s for ${DURATION} s per run (CPU ${LOAD_CPU}); fresh gateway and targets per run; medians of ${ROUNDS} rounds, errors summed`,
  knobs: { ROUNDS, DURATION, RATE, CONNECTIONS, VARIANTS: process.env.VARIANTS || null },
  summary,
  runs: results,
});
console.log(`\nwrote ${relPath(file)}`);
if (!process.env.NO_MD && want === null) {
  const md = `## Failure scenario (issue 11)\n\n${new Date().toISOString().slice(0, 10)}, \`node bench/failure.mjs\` (${ROUNDS} rounds of ${DURATION} s at ${RATE} req/s, ${CONNECTIONS} connections): one of two targets dead, what clients see. Errors = non-2xx + socket errors + timeouts, summed over the rounds; latencies are medians of the rounds.\n\n${table}\n\nRaw: \`${relPath(file)}\`.`;
  console.log(`wrote ${relPath(updateResultsMd('failure', md))} (failure section)`);
}
if (!process.env.KEEP_TMP) rmSync(tmp, { recursive: true, force: true });
else console.log(`kept ${tmp}`);
process.exit(0);
