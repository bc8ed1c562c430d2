#!/usr/bin/env node
// Router micro-bench: every router on every dataset in a FRESH process
// (router/case.mjs, pinned to CPU 0 when taskset exists), so no router runs
// on a JIT or heap warmed or polluted by another. Each is verified against
// the expected route of every request before it is timed.
//
// Knobs (env): ROUTERS=find-my-way,rou3,...  DATASETS=github,synthetic-10k
//   SAMPLES=7  SAMPLE_MS=100  WARMUP_MS=300  NAME=router  NO_MD=1
import { spawn } from 'node:child_process';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ADAPTERS, selectAdapters } from './adapters.mjs';
import { DATASETS, loadDataset } from './datasets.mjs';
import { which, machineBusyPct } from '../lib/proc.mjs';
import { machineFacts, writeResultsJson, updateResultsMd, mdTable, fmt, relPath } from '../lib/report.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const adapters = selectAdapters(process.env.ROUTERS);
const datasets = (process.env.DATASETS || Object.keys(DATASETS).join(',')).split(',').filter(Boolean);
for (const d of datasets) if (!DATASETS[d]) throw new Error(`unknown dataset ${d}; known: ${Object.keys(DATASETS).join(', ')}`);
const NAME = (process.env.NAME || 'router').replace(/[^\w.-]/g, '_');
const CPU = process.env.ROUTER_CPU ?? '0';

function runCase(router, dataset) {
  const nodeArgs = ['--expose-gc', join(HERE, 'case.mjs'), router, dataset];
  const [cmd, args] = which('taskset') && CPU !== '' ? ['taskset', ['-c', CPU, process.execPath, ...nodeArgs]] : [process.execPath, nodeArgs];
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const guard = setTimeout(() => child.kill('SIGKILL'), 300_000);
    child.once('exit', (code, signal) => {
      clearTimeout(guard);
      const line = out.split('\n').find((l) => l.startsWith('ROUTERJSON '));
      if (line) return resolve(JSON.parse(line.slice(11)));
      resolve({ router, dataset, error: `exit ${code ?? signal}: ${(err || out).trim().split('\n').slice(-3).join(' | ').slice(0, 300)}` });
    });
  });
}

const M = (n) => (n == null ? '' : fmt(n / 1e6, n >= 1e7 ? 1 : n >= 1e5 ? 2 : 4));

const facts = machineFacts();
const startedAt = new Date();
console.log(`router bench: ${adapters.length} routers x ${datasets.length} datasets, one fresh process each (CPU ${CPU || 'any'}), SAMPLES=${process.env.SAMPLES || 7} SAMPLE_MS=${process.env.SAMPLE_MS || 100}`);
facts.busyPctBeforeStart = await machineBusyPct();
if (facts.busyPctBeforeStart > 15) console.log(`warning: the machine was ${facts.busyPctBeforeStart}% busy before the start (other processes): expect noisy numbers`);
const results = [];
for (const dataset of datasets) {
  for (const a of adapters) {
    if (a.datasets && !a.datasets.includes(dataset)) continue;
    const r = await runCase(a.name, dataset);
    results.push(r);
    let msg;
    if (r.skipped) msg = `skipped: ${r.skipped}`;
    else if (r.error) msg = `FAILED: ${r.error}`;
    else if (!r.verified) msg = `WRONG: ${r.mismatches.length} request(s) matched the wrong route, e.g. ${r.mismatches[0].method} ${r.mismatches[0].path} -> ${r.mismatches[0].got} (want ${r.mismatches[0].expect})`;
    else msg = `build ${fmt(r.buildMs)} ms, heap ${fmt(r.heapMB, 2)} MB, ${Object.entries(r.classes).map(([c, v]) => `${c} ${M(v.lookupsPerSec)}M`).join(', ')}`;
    console.log(`[router] ${dataset} ${a.name} ... ${msg}`);
  }
}

const result = {
  kind: 'router',
  name: NAME,
  startedAt: startedAt.toISOString(),
  finishedAt: new Date().toISOString(),
  machine: facts,
  method: {
    isolation: 'one fresh node process per router and dataset (--expose-gc), pinned to one CPU',
    verify: 'every request must return its expected route (null on miss) before timing; a wrong router is not timed',
    loop: 'requests of a class cycled in a tight loop, results folded into a printed sink; warm-up, calibration to ~SAMPLE_MS per sample, SAMPLES samples, median lookups/s',
    build: 'construct + add all routes + first lookup (lazy compilers), one cold build',
    heap: 'retained: heapUsed with the router alive minus heapUsed after dropping it, both after forced GCs, measured after timing',
  },
  knobs: { SAMPLES: Number(process.env.SAMPLES || 7), SAMPLE_MS: Number(process.env.SAMPLE_MS || 100), WARMUP_MS: Number(process.env.WARMUP_MS || 300), ROUTERS: process.env.ROUTERS || null, DATASETS: datasets },
  results,
};
const file = writeResultsJson(NAME, result);

const sections = [];
for (const dataset of datasets) {
  const classes = loadDataset(dataset).classes;
  const rows = [];
  const notes = [];
  for (const r of results.filter((x) => x.dataset === dataset)) {
    const label = `${ADAPTERS.find((a) => a.name === r.router)?.label ?? r.router}${r.version && r.version !== 'workspace' && !r.version.startsWith('node') ? ` ${r.version}` : ''}`;
    if (r.skipped) notes.push(`${label}: ${r.skipped}`);
    else if (r.error) notes.push(`${label}: ${r.error}`);
    else if (!r.verified) notes.push(`${label}: not timed, ${r.mismatches.length} wrong match(es) (${r.mismatches.slice(0, 3).map((m) => `${m.method} ${m.path} -> ${m.got}`).join('; ')})`);
    else rows.push([label, ...classes.map((c) => M(r.classes[c]?.lookupsPerSec)), fmt(r.buildMs), fmt(r.heapMB, 2)]);
  }
  const table = mdTable(['router', ...classes, 'build ms', 'heap MB'], rows);
  console.log(`\n${dataset} (millions of lookups/s)\n${table}${notes.length ? `\n${notes.join('\n')}` : ''}`);
  sections.push(`### ${dataset} (${results.find((x) => x.dataset === dataset)?.routes ?? '?'} routes), millions of lookups/s\n\n${table}${notes.length ? `\n\n${notes.map((n) => `- ${n}`).join('\n')}` : ''}`);
}
const md = `## Router micro-bench

Run ${startedAt.toISOString().slice(0, 16).replace('T', ' ')} UTC, \`${relPath(file)}\`; node ${facts.node}, ${facts.cpuModel}. SAMPLES=${result.knobs.SAMPLES}, SAMPLE_MS=${result.knobs.SAMPLE_MS}. The machine was ${facts.busyPctBeforeStart ?? '?'}% busy with other work just before the start.

${sections.join('\n\n')}

Caveats. Each router runs alone in a fresh process, verified first; cells are medians of ${result.knobs.SAMPLES} samples and still vary up to 2x between runs on this VM. Each adapter returns the matched route's data the way a server would read it; params are left as each router returns them (eager objects for find-my-way and rou3, lazy for hono), so the cost of building params is part of some numbers and not others. Map.get answers only static paths and misses (a floor, not a router). Build time is one cold build including the first lookup (hono RegExpRouter compiles lazily); heap MB is what the router retains (heapUsed with it minus without it, after GCs), give or take ~0.05 MB.`;
if (!process.env.NO_MD) console.log(`\nwrote ${relPath(updateResultsMd('router', md))} (router section)`);
console.log(`wrote ${relPath(file)}`);
