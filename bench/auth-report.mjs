#!/usr/bin/env node
// The API-key rows of RESULTS.md (issue 12, routes[].auth) from a run.mjs
// results file of the `auth` scenario (targets turnpike-auth-base and
// turnpike-auth-*, lib/auth-targets.mjs): CPU-µs/request per round and
// target, each auth target's overhead over turnpike-auth-base in the same
// round, and the medians.
//
//   node auth-report.mjs results/<date>-auth.json
//
// With --in-process instead of a file: the policy's own cost per request,
// without the server, the network or a load generator: the built dist/'s
// AuthPolicy on a RequestContext holding the request wrk sends (Host and
// `Authorization: Bearer <key>`), run as the transport runs a route's
// policies (ctx.run), with the worker's IdentityClient warmed the way a
// worker's is: one lookup answered through a real MessageChannel by a
// stand-in admin thread with a KeyRecordAnswer (common/identity/wire.ts),
// or with `unknown` for the invalid key (then in the negative cache).
// Minus the same loop without a policy (a route without auth runs none).
// Best of 7 samples of 1,000,000 requests, one process, one thread.
//
//   node auth-report.mjs --in-process
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { MessageChannel } from 'node:worker_threads';
import { median, mdTable, fmt, fmtRate, fmtLatency } from './lib/report.mjs';
import { TURNPIKE_DIST } from './lib/targets.mjs';

const [file, scenario = 'auth'] = process.argv.slice(2);
if (!file) {
  console.error('usage: node auth-report.mjs <results.json> [scenario] | --in-process');
  process.exit(2);
}
if (file === '--in-process') {
  await inProcess();
  process.exit(0);
}

async function inProcess() {
  const load = (rel) => import(pathToFileURL(join(TURNPIKE_DIST, rel)).href);
  const { validateConfig } = await load('common/config/load.js');
  const { AuthPolicy } = await load('workers/policies/auth/index.js');
  const { IdentityClient } = await load('workers/policies/auth/client.js');
  const { RequestContext } = await load('workers/pipeline/context.js');
  const { generateKey } = await load('common/identity/keys.js');
  const { GLOBAL_CELLS } = await load('common/metrics-layout.js');
  const N = 1_000_000;
  const SAMPLES = 7;

  // The auth targets' routes (lib/auth-targets.mjs), resolved by the config loader.
  const v = validateConfig({
    upstreams: { up: { targets: ['http://127.0.0.1:18000'] } },
    routes: [
      { id: 'orders', path: '/orders/*', upstream: 'up', auth: {} },
      { id: 'orders-sg', path: '/sg/*', upstream: 'up', auth: { scopes: ['orders:read'], grants: 'required' } },
    ],
  });
  if (!v.ok) throw new Error(JSON.stringify(v.errors));
  const { identity, routes } = v.config;

  // The worker's client, its line to a stand-in admin thread that knows one key.
  const valid = generateKey('live');
  const unknown = generateKey('live');
  const answer = {
    ok: true, hash: 'h'.repeat(43), keyId: 'key_bench', keyName: 'k', keyPrefix: valid.slice(0, 12), keyStatus: 'active',
    scopes: ['orders:read'], restrictions: { cidrs: [], timeWindows: [], origins: [] }, expiresAt: null, graceUntil: null,
    consumerId: 'con_bench', consumerName: 'bench', consumerStatus: 'active', tenant: null, plan: null, groups: [],
    grants: [['orders-sg', ['GET']]],
  };
  const { port1, port2 } = new MessageChannel();
  port2.on('message', (m) => {
    if (m?.t === 'key') port2.postMessage({ t: 'key', id: m.id, answer: m.key === valid ? answer : { ok: false, reason: 'unknown' } });
  });
  const client = new IdentityClient();
  client.configure(identity);
  client.attach(port1);
  for (const k of [valid, unknown]) {
    const a = await new Promise((resolve) => client.lookup(k, (_entry, ans) => resolve(ans)));
    if (a.ok !== (k === valid)) throw new Error(`lookup of the ${k === valid ? 'valid' : 'unknown'} key answered ${JSON.stringify(a)}`);
  }
  if (client.cached(valid) === undefined || !client.knownUnknown(unknown, Date.now())) throw new Error('the client did not cache the answers');

  const env = { client, identity, metrics: new Float64Array(GLOBAL_CELLS), trusted: null };
  const policyOf = (id) => [new AuthPolicy(routes.find((r) => r.id === id).auth, id, env)];
  const heads = (key) => ['host', '127.0.0.1:18076', 'authorization', `Bearer ${key}`];
  const ctx = new RequestContext();
  let sink = 0;
  const time = (step) => {
    let best = Infinity;
    for (let s = 0; s < SAMPLES; s++) {
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < N; i++) sink += step(i);
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / N);
    }
    return best;
  };
  // The floor: what a route without auth does here (nothing: its policies are null).
  const hv = heads(valid);
  const floor = time(() => hv.length);
  const cases = [
    ['turnpike-auth-key', 'auth: {}, warm cache', policyOf('orders'), 'orders', hv, 'admitted'],
    ['turnpike-auth-key-scopes-grants', 'scopes [orders:read] + grants: required, warm cache', policyOf('orders-sg'), 'orders-sg', hv, 'admitted'],
    ['turnpike-auth-invalid', 'auth: {}, unknown key (negative cache)', policyOf('orders'), 'orders', heads(unknown), 'key_invalid'],
  ];
  // As the transport runs a route's policies (ctx.now from the clock, outputs cleared first).
  const runOnce = (policies, routeId, headers) => ctx.run(policies, Date.now(), routeId, 0, 'GET', '127.0.0.1', null, headers, '');
  const empty = time(() => runOnce([], 'orders', hv));
  const rows = [];
  for (const [target, what, policies, routeId, headers, expect] of cases) {
    let wrong = 0;
    const ns = time(() => {
      const r = runOnce(policies, routeId, headers);
      if ((ctx.refusal?.code ?? 'admitted') !== expect || ctx.pending !== null) wrong++;
      return r + ctx.requestLines.length;
    });
    if (wrong > 0) throw new Error(`${target}: ${wrong} requests not ${expect} (${ctx.refusal?.code ?? 'admitted'})`);
    rows.push([target, what, fmt(ns - empty, 0), fmt(ns - floor, 0)]);
  }
  client.close();
  port2.close();
  console.log(`In-process cost of the auth policy per request (${TURNPIKE_DIST}, node ${process.version}; best of ${SAMPLES} × ${N.toLocaleString('en')}; loop floor ${fmt(floor, 1)} ns, ctx.run with no policy ${fmt(empty - floor, 0)} ns over it)\n`);
  console.log(mdTable(['target', 'policy', 'ns/request: AuthPolicy.onRequest (over ctx.run([]))', 'ns/request: the route\'s policy run (ctx.run + Date.now() + onRequest; a route without auth runs none)'], rows));
  if (sink === 0.5) console.log('');
}

const r = JSON.parse(readFileSync(file, 'utf8'));
const runs = r.runs.filter((x) => x.scenario === scenario);
const targets = [...new Set(runs.map((x) => x.target))];
const base = 'turnpike-auth-base';
if (!targets.includes(base)) throw new Error(`${file}: no ${base} runs in scenario ${scenario}`);
const rounds = [...new Set(runs.map((x) => x.round))].sort((a, b) => a - b);
const at = (t, round) => runs.find((x) => x.target === t && x.round === round);
const pct = (a, b) => (100 * (a - b)) / b;
const sign = (n, unit = '%') => (n >= 0 ? '+' : '') + fmt(n) + unit;
const parallel = r.knobs.PARALLEL === true;
const loads = runs.map((x) => x.loadAvg1).filter((x) => typeof x === 'number');
console.log(`${file}, scenario ${scenario}: ${rounds.length} rounds${parallel ? ' (PARALLEL: every target loaded at the same time)' : ''}, DURATION=${r.knobs.DURATION}s, started ${r.startedAt}; machine ${r.machine.busyPctBeforeStart}% busy before the start${loads.length ? `, 1-min load average at the end of each run ${fmt(Math.min(...loads), 2)}-${fmt(Math.max(...loads), 2)}` : ''}\n`);

console.log(`CPU-µs/request per round (overhead over ${base} in the same round)\n`);
console.log(mdTable(['round', ...targets], rounds.map((round) => [
  String(round),
  ...targets.map((t) => {
    const m = at(t, round);
    const p = at(base, round);
    if (!m) return '-';
    return t === base || !p ? fmt(m.cpuUsPerReq) : `${fmt(m.cpuUsPerReq)} (${sign(pct(m.cpuUsPerReq, p.cpuUsPerReq))})`;
  }),
])));

const baseMed = median(runs.filter((x) => x.target === base).map((x) => x.cpuUsPerReq));
const summary = targets.map((t) => {
  const rs = rounds.map((round) => at(t, round)).filter(Boolean);
  const cpu = rs.map((x) => x.cpuUsPerReq);
  const over = rounds.map((round) => (at(t, round) && at(base, round) ? pct(at(t, round).cpuUsPerReq, at(base, round).cpuUsPerReq) : null)).filter((x) => x !== null);
  const med = median(cpu);
  return [
    t, fmt(med), `${fmt(Math.min(...cpu))}-${fmt(Math.max(...cpu))}`,
    t === base ? '' : `${sign(med - baseMed, ' µs')} (${sign(pct(med, baseMed))})`,
    t === base ? '' : `${sign(median(over))} (${sign(Math.min(...over))} to ${sign(Math.max(...over))})`,
    fmtRate(median(rs.map((x) => x.rps))), fmtLatency(median(rs.map((x) => x.p50Us))), fmtLatency(median(rs.map((x) => x.p99Us))),
    rs.reduce((a, x) => a + x.errors, 0),
  ];
});
console.log('\nMedians across rounds\n');
console.log(mdTable(['target', 'CPU-µs/req', 'rounds min-max', 'overhead (medians)', 'overhead per round: median (min to max)', 'req/s', 'p50', 'p99', 'errors (401s included)'], summary));
