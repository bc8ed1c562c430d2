#!/usr/bin/env node
// The rate-limiting rows of RESULTS.md from a run.mjs results file of the
// `ratelimit` or `ratelimit-strict` scenario (targets turnpike-plain and
// turnpike-ratelimit*): CPU-µs/request per round and target, each
// rate-limit target's overhead over turnpike-plain in the same round, and
// the medians (with latency, and Redis's own CPU per request for the
// strict target, from its probe).
//
//   node ratelimit-report.mjs results/<date>-ratelimit.json [scenario]
//
// With --in-process instead of a file: the policy's own cost per request,
// without the server, the network or any load generator (the figure a busy
// VM does not blur): RateLimitPolicyRunner.onRequest of each
// turnpike-ratelimit* target's policy (lib/targets.mjs
// RATE_LIMIT_POLICIES) on the built dist/, for the scenario's 10,000
// client addresses in a shuffled order, the shared clock advancing 50 µs
// per request (20k req/s), minus the same loop without the policy. Best
// of 7 samples of 1,000,000 requests, one process, one thread.
//
//   node ratelimit-report.mjs --in-process
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { median, mdTable, fmt, fmtRate, fmtLatency } from './lib/report.mjs';
import { RATE_LIMIT_POLICIES, TURNPIKE_DIST } from './lib/targets.mjs';

const [file, scenario = 'ratelimit'] = process.argv.slice(2);
if (!file) {
  console.error('usage: node ratelimit-report.mjs <results.json> [scenario] | --in-process');
  process.exit(2);
}
if (file === '--in-process') {
  await inProcess();
  process.exit(0);
}

async function inProcess() {
  const load = (rel) => import(pathToFileURL(join(TURNPIKE_DIST, rel)).href);
  const { resolveNamedPolicies } = await load('common/config/rate-limit.js');
  const { RateLimitTable, createRateLimitTable } = await load('common/rate-limit-layout.js');
  const { RateLimitPolicyRunner } = await load('workers/policies/rate-limit/index.js');
  const { trustedProxyList } = await load('workers/policies/rate-limit/keys.js');
  const { RequestContext } = await load('workers/pipeline/context.js');
  const N = 1_000_000;
  const SAMPLES = 7;
  const addrs = Array.from({ length: 10_000 }, (_, a) => `10.${(a >> 16) & 255}.${(a >> 8) & 255}.${a & 255}`);
  // A fixed shuffle (LCG), like the wrk script's.
  let seed = 20261130;
  for (let k = addrs.length - 1; k > 0; k--) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    const j = seed % (k + 1);
    [addrs[k], addrs[j]] = [addrs[j], addrs[k]];
  }
  const heads = addrs.map((a) => ['host', '127.0.0.1:18051', 'user-agent', 'wrk', 'x-forwarded-for', a, 'x-client', a]);
  const trusted = trustedProxyList(['127.0.0.1']);
  let sink = 0;
  const time = (step) => {
    let best = Infinity;
    for (let s = 0; s < SAMPLES; s++) {
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < N; i++) sink += step(i % 10_000, s * N + i);
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / N);
    }
    return best;
  };
  const ctx = new RequestContext();
  ctx.clientIp = '127.0.0.1';
  const t0ms = Date.now();
  const setup = (k, i) => {
    ctx.reset();
    ctx.now = t0ms + i * 0.05;
    ctx.xff = addrs[k];
    ctx.headers = heads[k];
    return ctx.responseHeaders.length;
  };
  const floor = time(setup);
  const rows = [];
  for (const [target, policy] of Object.entries(RATE_LIMIT_POLICIES)) {
    const [p] = Object.values(resolveNamedPolicies({ rateLimits: { client: policy } }));
    const runner = new RateLimitPolicyRunner([p], 0, { table: new RateLimitTable(createRateLimitTable(262_144)), metrics: null, trusted, strict: null });
    let refused = 0;
    const ns = time((k, i) => {
      setup(k, i);
      const r = runner.onRequest(ctx);
      if (ctx.refusal !== null) refused++;
      return r + ctx.responseHeaders.length;
    });
    rows.push([target, JSON.stringify(policy), fmt((ns - floor) / 1000, 2), `${fmt((100 * refused) / (SAMPLES * N), 1)}%`]);
  }
  console.log(`In-process cost of the policy per request (${TURNPIKE_DIST}, node ${process.version}; loop floor ${fmt(floor, 0)} ns subtracted, best of ${SAMPLES} × ${N.toLocaleString('en')})\n`);
  console.log(mdTable(['target', 'policy', 'µs/request', 'refused'], rows));
  if (sink === 0.5) console.log('');
}
const r = JSON.parse(readFileSync(file, 'utf8'));
const runs = r.runs.filter((x) => x.scenario === scenario);
const targets = [...new Set(runs.map((x) => x.target))].filter((t) => t !== 'direct');
const base = 'turnpike-plain';
if (!targets.includes(base)) throw new Error(`${file}: no ${base} runs in scenario ${scenario}`);
const rounds = [...new Set(runs.map((x) => x.round))].sort((a, b) => a - b);
const at = (t, round) => runs.find((x) => x.target === t && x.round === round);
const pct = (a, b) => (100 * (a - b)) / b;
const sign = (n, unit = '%') => (n >= 0 ? '+' : '') + fmt(n) + unit;

// PARALLEL=1 runs load every target at once: CPU 0's busy time is theirs together (no core-µs/req, no "not the target" share).
const parallel = r.knobs.PARALLEL === true;
const loads = runs.map((x) => x.loadAvg1).filter((x) => typeof x === 'number');
console.log(`${file}, scenario ${scenario}: ${rounds.length} rounds${parallel ? ' (PARALLEL: every target loaded at the same time)' : ''}, DURATION=${r.knobs.DURATION}s, started ${r.startedAt}; machine ${r.machine.busyPctBeforeStart}% busy before the start, load average at start ${r.machine.loadavgAtStart.join(' ')}${loads.length ? `, 1-min load average at the end of each run ${fmt(Math.min(...loads), 2)}-${fmt(Math.max(...loads), 2)} (median ${fmt(median(loads), 2)})` : ''}\n`);

const perRound = rounds.map((round) => [
  String(round),
  ...targets.map((t) => {
    const m = at(t, round);
    if (!m) return '-';
    const p = at(base, round);
    return t === base || !p ? fmt(m.cpuUsPerReq) : `${fmt(m.cpuUsPerReq)} (${sign(pct(m.cpuUsPerReq, p.cpuUsPerReq))})`;
  }),
  ...(parallel ? [] : [fmt(median(targets.map((t) => at(t, round)?.cpu0OtherPct)))]),
]);
console.log(`CPU-µs/request per round (overhead over ${base} in the same round)\n`);
console.log(mdTable(['round', ...targets, ...(parallel ? [] : ['CPU 0 not the target, % (median)'])], perRound));

const baseMed = median(runs.filter((x) => x.target === base).map((x) => x.cpuUsPerReq));
const withRedis = runs.some((x) => x.probe?.redisCpuUsPerReq !== undefined);
const summary = targets.map((t) => {
  const rs = rounds.map((round) => at(t, round)).filter(Boolean);
  const cpu = rs.map((x) => x.cpuUsPerReq);
  const overPct = rounds.map((round) => (at(t, round) && at(base, round) ? pct(at(t, round).cpuUsPerReq, at(base, round).cpuUsPerReq) : null)).filter((x) => x !== null);
  const med = median(cpu);
  const row = [
    t, fmt(med), `${fmt(Math.min(...cpu))}-${fmt(Math.max(...cpu))}`,
    t === base ? '' : `${sign(med - baseMed, ' µs')} (${sign(pct(med, baseMed))})`,
    t === base ? '' : `${sign(median(overPct))} (${sign(Math.min(...overPct))} to ${sign(Math.max(...overPct))})`,
    t === base ? '' : bootstrapMedian(overPct).map((x) => sign(x)).join(' to '),
    fmtRate(median(rs.map((x) => x.rps))), fmtLatency(median(rs.map((x) => x.p50Us))), fmtLatency(median(rs.map((x) => x.p99Us))),
    ...(parallel ? [] : [fmt(median(rs.map((x) => x.coreUsPerReq)))]), rs.reduce((a, x) => a + x.errors, 0),
  ];
  if (withRedis) {
    const rc = rs.map((x) => x.probe?.redisCpuUsPerReq).filter((x) => typeof x === 'number');
    const cmds = rs.map((x) => x.probe?.redisScriptsPerReq).filter((x) => typeof x === 'number');
    row.push(rc.length ? `${fmt(median(rc))} (${fmt(Math.min(...rc))}-${fmt(Math.max(...rc))})` : '', cmds.length ? fmt(median(cmds), 2) : '');
  }
  return row;
});
console.log('\nMedians across rounds\n');
console.log(mdTable([
  'target', 'CPU-µs/req', 'rounds min-max', 'overhead (medians)', 'overhead per round: median (min to max)', '95% interval of that median', 'req/s', 'p50', 'p99', ...(parallel ? [] : ['core-µs/req']), 'errors (429s included)',
  ...(withRedis ? ['Redis CPU-µs/req (min-max)', 'Redis scripts/req'] : []),
], summary));

/**
 * A 95% interval of the median of `xs` (percentile bootstrap, 10,000
 * resamples, fixed seed): how far the per-round median could move on
 * another run of as many rounds on an equally noisy machine.
 */
function bootstrapMedian(xs) {
  if (xs.length < 2) return [xs[0], xs[0]];
  let seed = 7;
  const rand = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const meds = [];
  for (let b = 0; b < 10_000; b++) meds.push(median(xs.map(() => xs[Math.floor(rand() * xs.length)])));
  meds.sort((a, b) => a - b);
  return [meds[Math.floor(0.025 * meds.length)], meds[Math.floor(0.975 * meds.length)]];
}
