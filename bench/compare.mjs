#!/usr/bin/env node
// Compare two proxy results files (run.mjs output): per target and
// scenario, the median CPU-µs/req of b against a. Exits 1 when any target
// present in both got more than THRESHOLD (default 5%) more expensive.
// usage: node compare.mjs a.json b.json   (env THRESHOLD=5, TARGETS=...)
//
// This VM's speed drifts between runs, and that moves every target's
// CPU-µs/req, nginx's too. NORMALIZE=nginx judges each target by its ratio
// to nginx in the same run instead (the "× nginx" column), which cancels a
// machine-wide drift; a warning says when nginx itself moved past the
// threshold.
import { readFileSync } from 'node:fs';
import { mdTable, fmt, fmtRate } from './lib/report.mjs';

const [aFile, bFile] = process.argv.slice(2);
if (!aFile || !bFile) {
  console.error('usage: node compare.mjs <baseline.json> <candidate.json>');
  process.exit(2);
}
const threshold = Number(process.env.THRESHOLD ?? 5);
const normalize = process.env.NORMALIZE === 'nginx';
const onlyTargets = process.env.TARGETS ? new Set(process.env.TARGETS.split(',')) : null;
const load = (f) => {
  const d = JSON.parse(readFileSync(f, 'utf8'));
  if (d.kind !== 'proxy' || !d.medians) throw new Error(`${f}: not a run.mjs results file`);
  return d;
};
const a = load(aFile);
const b = load(bFile);

const rows = [];
const regressions = [];
const drift = [];
for (const scenario of Object.keys(b.medians)) {
  for (const [target, mb] of Object.entries(b.medians[scenario])) {
    if (onlyTargets && !onlyTargets.has(target)) continue;
    const ma = a.medians[scenario]?.[target];
    if (!ma || ma.cpuUsPerReq == null || mb.cpuUsPerReq == null) continue;
    const delta = ((mb.cpuUsPerReq - ma.cpuUsPerReq) / ma.cpuUsPerReq) * 100;
    const ratioDelta = ma.xNginx && mb.xNginx ? ((mb.xNginx - ma.xNginx) / ma.xNginx) * 100 : null;
    if (target === 'nginx' && Math.abs(delta) > threshold) drift.push(`${scenario} ${delta >= 0 ? '+' : ''}${fmt(delta, 1)}%`);
    const judged = normalize ? ratioDelta : delta;
    // `direct` is the upstream alone and nginx is the yardstick when
    // normalising: shown, never counted as a regression.
    const bad = target !== 'direct' && !(normalize && target === 'nginx') && judged !== null && judged > threshold;
    if (bad) regressions.push(`${target} ${scenario}`);
    rows.push([
      scenario,
      target,
      fmt(ma.cpuUsPerReq, 2),
      fmt(mb.cpuUsPerReq, 2),
      `${delta >= 0 ? '+' : ''}${fmt(delta, 1)}%${bad && !normalize ? ' REGRESSION' : ''}`,
      `${fmt(ma.xNginx, 2)} -> ${fmt(mb.xNginx, 2)}${ratioDelta === null ? '' : ` (${ratioDelta >= 0 ? '+' : ''}${fmt(ratioDelta, 1)}%)`}${bad && normalize ? ' REGRESSION' : ''}`,
      `${fmtRate(ma.rps)} -> ${fmtRate(mb.rps)}`,
    ]);
  }
}
console.log(`a: ${aFile} (${a.startedAt}, commit ${a.machine?.turnpikeCommit?.slice(0, 10) ?? '?'})`);
console.log(`b: ${bFile} (${b.startedAt}, commit ${b.machine?.turnpikeCommit?.slice(0, 10) ?? '?'})`);
if (rows.length === 0) {
  console.log('nothing to compare: no target/scenario with CPU figures in both files');
  process.exit(0);
}
console.log(mdTable(['scenario', 'target', 'a µs/req', 'b µs/req', 'delta', '× nginx', 'req/s'], rows));
console.log(`\njudged on ${normalize ? 'the ratio to nginx (NORMALIZE=nginx)' : 'CPU-µs/req'}, threshold ${threshold}%`);
if (drift.length && !normalize) console.log(`warning: nginx itself moved (${drift.join(', ')}): the machine drifted between the runs; NORMALIZE=nginx compares ratios instead`);
if (regressions.length) {
  console.log(`${regressions.length} regression(s) over ${threshold}%: ${regressions.join(', ')}`);
  process.exit(1);
}
console.log(`no regression over ${threshold}%`);
