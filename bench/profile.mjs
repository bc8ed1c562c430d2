#!/usr/bin/env node
// Where a proxied request's CPU goes, for bench/RESULTS.md ("budget").
//
// Runs Turnpike (Node, one worker) pinned to CPU 0 in front of the bench's
// nginx upstream, loads it with wrk on CPU 1 twice: once plain, for
// CPU-µs/request split into user (JS, V8, uWS, libuv) and kernel (syscalls,
// loopback TCP) time from /proc; once under --cpu-prof, whose worker-thread
// profile attributes self time to the parts of the pipeline by function and
// file. Knobs: DURATION (s, default 8), SCENARIO (a name from
// lib/scenarios.mjs, default get-64; other than get-64 it writes its own
// section, budget-<name>), CONNECTIONS (the scenario's by default).
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { cpuSplit, clockTicks, spawnPinned, stopAllOnExit, stopChild, waitReady } from './lib/proc.mjs';
import { LOAD_CPU, PROXY_CPU, TURNPIKE_CLI, UPSTREAM_PORT, startUpstream } from './lib/targets.mjs';
import { machineFacts, mdTable, updateResultsMd, writeResultsJson } from './lib/report.mjs';
import { selectScenarios, wrkLua } from './lib/scenarios.mjs';
import { writeFileSync } from 'node:fs';

const DURATION = Number(process.env.DURATION ?? 8);
const [SCENARIO] = selectScenarios(process.env.SCENARIO || 'get-64');
const CONNECTIONS = Number(process.env.CONNECTIONS ?? SCENARIO.connections);
const SECTION = SCENARIO.name === 'get-64' ? 'budget' : `budget-${SCENARIO.name}`;
const PORT = 18085;
stopAllOnExit();

// Self time is attributed by the first rule whose pattern matches
// "<function> <file>"; order matters. Native frames (the socket write
// syscalls made from JS) are charged to the JS function that called them
// only when V8 reports them as separate frames (writeLatin1String).
const PARTS = [
  ['upstream client: socket write (syscall)', /^writeLatin1String |^writeBuffer |^writev /],
  ['response write: parse + write to client (uWS send under cork)', /^(onUpstreamRead|corkedRead|readUpstream|onResponseData|onResponseEnd|onWritable|clientDone|eof) .*uws-exchange/],
  ['response head: status + header filtering', /^onResponseHead .*uws-exchange/],
  ['upstream client: HTTP/1.1 parser', /http1-parser/],
  ['upstream client: pool, exchange, timers', /upstream-pool|balancer|fixed-queue|timers\.js|uws-exchange/],
  ['upstream client: Node net/stream internals', /node:internal\/(stream|streams|net)|node:net|node:buffer|node:internal\/buffer|^(subarray|FastBuffer|slice|indexOfBuffer|createWriteWrap|handleWriteReq) /],
  ['routing: normalize + match', /workers\/router\//],
  ['header work: request head, header plans', /^(collectHeader|resetScratch|connectionListed|isSafeRequestId) |proxy\/headers/],
  ['server side: request handler, client address', /uws-server|^(decode|decodeUTF8) /],
  ['metrics: counters + HDR histograms', /request-metrics|metrics-layout|latency\.js|wasm-function|^(now) /],
  ['garbage collector', /^\(garbage collector\) /],
  ['native outside JS (uWS/libuv loop)', /^\(program\) /],
];

function attribute(profile) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  let busy = 0;
  let idle = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const n = byId.get(profile.samples[i]);
    const dt = profile.timeDeltas[i] ?? 0;
    const cf = n.callFrame;
    const key = `${cf.functionName || '(anonymous)'} ${cf.url}`;
    if (cf.functionName === '(idle)') { idle += dt; continue; }
    busy += dt;
    self.set(key, (self.get(key) ?? 0) + dt);
  }
  const parts = new Map(PARTS.map(([name]) => [name, 0]));
  let other = 0;
  const unmatched = new Map();
  for (const [key, t] of self) {
    const rule = PARTS.find(([, re]) => re.test(key));
    if (rule) parts.set(rule[0], parts.get(rule[0]) + t);
    else { other += t; unmatched.set(key, t); }
  }
  parts.set('other JS', other);
  const top = [...unmatched].sort((a, b) => b[1] - a[1]).slice(0, 5).map(([k, t]) => `${k.split(' ')[0]} ${(100 * t / busy).toFixed(1)}%`);
  return { busy, idle, parts, topOther: top };
}

let luaFile = '';
function wrk(seconds) {
  const r = spawnSync('taskset', ['-c', String(LOAD_CPU), 'wrk', '-t1', `-c${CONNECTIONS}`, `-d${seconds}s`, '-s', luaFile, `http://127.0.0.1:${PORT}${SCENARIO.path}`], { encoding: 'utf8' });
  const m = /(\d+) requests in/.exec(r.stdout);
  if (!m) throw new Error(`wrk failed: ${r.stdout}${r.stderr}`);
  return Number(m[1]);
}

async function runTurnpike(tmp, extraArgs) {
  const conf = join(tmp, 'turnpike.json');
  writeFileSync(conf, JSON.stringify({
    server: { host: '127.0.0.1', port: PORT, workers: 1 }, admin: { enabled: false },
    upstreams: { up: { targets: [`http://127.0.0.1:${UPSTREAM_PORT}`], pool: { maxConnections: 512 } } },
    routes: [{ id: 'all', path: '/*', upstream: 'up' }],
  }));
  const child = spawnPinned(PROXY_CPU, process.execPath, [...extraArgs, TURNPIKE_CLI, 'start', '--config', conf], { logFile: join(tmp, 'turnpike.log') });
  await waitReady(PORT, { child });
  return child;
}

const tmp = mkdtempSync(join(tmpdir(), 'turnpike-profile-'));
luaFile = join(tmp, 'scenario.lua');
writeFileSync(luaFile, wrkLua(SCENARIO));
const upstream = await startUpstream(tmp, join(tmp, 'upstream.log'));
try {
  console.log(`[1/2] plain run, ${SCENARIO.name}, ${DURATION}s at -c${CONNECTIONS}`);
  let child = await runTurnpike(tmp, []);
  wrk(2); // warm-up
  const a = cpuSplit(child.pid);
  const n = wrk(DURATION);
  const b = cpuSplit(child.pid);
  await stopChild(child);
  const tick = 1e6 / clockTicks();
  const userUs = ((b.utime - a.utime) * tick) / n;
  const sysUs = ((b.stime - a.stime) * tick) / n;
  console.log(`  ${n} requests: user ${userUs.toFixed(1)} µs/req, kernel ${sysUs.toFixed(1)} µs/req`);

  console.log(`[2/2] profiled run (--cpu-prof), ${DURATION}s`);
  const profDir = join(tmp, 'prof');
  child = await runTurnpike(tmp, ['--cpu-prof', `--cpu-prof-dir=${profDir}`]);
  wrk(2);
  wrk(DURATION);
  await stopChild(child);
  // One profile per thread; the data-plane worker is the busiest one.
  const files = readdirSync(profDir).map((f) => join(profDir, f));
  const analyses = files.map((f) => attribute(JSON.parse(readFileSync(f, 'utf8')))).sort((x, y) => y.busy - x.busy);
  const { busy, parts, topOther } = analyses[0];
  const total = userUs + sysUs;
  const rows = [...parts].sort((x, y) => y[1] - x[1]).map(([name, t]) => [name, `${(100 * t / busy).toFixed(1)}%`, (userUs * t / busy).toFixed(1)]);
  for (const r of rows) console.log(`  ${r[1].padStart(6)}  ${r[2].padStart(5)} µs  ${r[0]}`);
  console.log(`  largest in other JS: ${topOther.join(', ') || 'none'}`);
  const md = [
    `## CPU budget of a proxied request: ${SCENARIO.name}, ${SCENARIO.note} (Turnpike on Node, one worker, -c${CONNECTIONS})`,
    '',
    `Run on ${new Date().toISOString().slice(0, 10)} by \`${SCENARIO.name === 'get-64' ? '' : `SCENARIO=${SCENARIO.name} `}node bench/profile.mjs\`. CPU per request: **${total.toFixed(1)} µs** = ${userUs.toFixed(1)} µs user (JS, V8, uWS, libuv) + ${sysUs.toFixed(1)} µs kernel (syscalls and loopback TCP, which the proxy's own writes pay for the receiving side too). The user part is split by the worker thread's --cpu-prof self time (share of busy samples; µs = that share of the user time; syscalls made from JS such as the upstream socket write show up as their JS frame, so part of the kernel time is also inside these shares). --cpu-prof samples the JS thread only: V8's concurrent marking and sweeping run on background threads and are in the µs/req total but in no row (\`perf record -p PID\` shows them).`,
    '',
    mdTable(['part', 'share of busy samples', '≈ µs/req'], rows),
    '',
    `Largest functions left in "other JS": ${topOther.join(', ') || 'none'}.`,
  ].join('\n');
  updateResultsMd(SECTION, md);
  writeResultsJson(SECTION, { kind: 'budget', scenario: SCENARIO.name, machine: machineFacts(), knobs: { DURATION, CONNECTIONS }, requests: n, userUs, sysUs, parts: Object.fromEntries(parts), topOther });
  console.log(`wrote bench/RESULTS.md (${SECTION}) and results/`);
} finally {
  await stopChild(upstream.child);
  rmSync(tmp, { recursive: true, force: true });
}
