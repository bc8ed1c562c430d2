#!/usr/bin/env node
// Micro-bench of the keyed balancers (issue 11): ns per pick, one thread,
// for round_robin and ip_hash (today's) against consistent_hash on each
// hashOn source and sticky (a valid cookie, and none: a first request), on
// a request with 8 headers as the server hands them over (lowercase
// name/value pairs), over 256 keys in turn; then the same with a health
// check configured (admit + finish on the shared state: the guard's walk).
// A quick figure that needs no quiet machine; the CPU-µs/request comparison
// under load is the turnpike-hash-base / turnpike-hash pair
// (lib/balancing-targets.mjs).
// usage: node bench/balancing-micro.mjs   (after npm run build at the repo root)
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const dist = process.env.TURNPIKE_DIST || join(dirname(fileURLToPath(import.meta.url)), '../dist');
const { UpstreamRuntime } = await import(join(dist, 'workers/proxy/balancer.js'));
const { createUpstreamState } = await import(join(dist, 'common/upstream-state-layout.js'));
const { validateConfig } = await import(join(dist, 'common/config/load.js'));
const { stickyId } = await import(join(dist, 'workers/proxy/maglev.js'));

const TARGETS = ['http://127.0.0.1:1', 'http://127.0.0.1:2', 'http://127.0.0.1:3', 'http://127.0.0.1:4'];
function upstream(extra) {
  const r = validateConfig({ upstreams: { up: { targets: TARGETS, ...extra } }, routes: [{ id: 'r', path: '/', upstream: 'up' }] });
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  return r.config.upstreams.up;
}
const state = new Int32Array(createUpstreamState(1));
const env = { state, upstreamSlots: new Map([['up', 1]]), workerIndex: 0, clockOffset: 0 };
const slots = new Map(TARGETS.map((t, i) => [`up ${t}`, i + 1]));

// 256 different requests in turn: their header strings stay in cache, as a request's are when the
// server has just read them (10,000 here measured cache misses, 3-6x the figures below).
const K = Number(process.env.KEYS || 256);
const ids = TARGETS.map((t) => stickyId('up', t));
/** K requests' header lists: 8 headers, the key in x-user-id, a 3-cookie Cookie header. */
const reqs = Array.from({ length: K }, (_, k) => [
  'host', 'api.example.com', 'user-agent', 'Mozilla/5.0 (X11; Linux x86_64) bench', 'accept', 'application/json',
  'accept-encoding', 'gzip, deflate, br', 'x-request-id', `req-${k}`, 'x-user-id', `6f1c2b9e-${k}-4a7b-9c2d`,
  'cookie', `theme=dark; session=s${k}; tp_affinity=${ids[k % 4]}`, 'x-forwarded-for', `10.1.${k >> 8}.${k & 255}`,
]);
const ips = Array.from({ length: K }, (_, k) => `10.0.${k >> 8}.${k & 255}`);
const paths = Array.from({ length: K }, (_, k) => `/items/${k}`);
const noCookie = reqs.map((h) => h.slice(0, 12));
// Flat strings, as a server hands them over (template literals above are rope strings, slower to read).
for (const a of [reqs, ips, paths, noCookie]) a.splice(0, a.length, ...JSON.parse(JSON.stringify(a)));

const CASES = [
  ['round_robin', { balance: 'round_robin' }, reqs],
  ['ip_hash', { balance: 'ip_hash' }, reqs],
  ['consistent_hash ip', { balance: 'consistent_hash', hashOn: 'ip' }, reqs],
  ['consistent_hash header:x-user-id', { balance: 'consistent_hash', hashOn: 'header:x-user-id' }, reqs],
  ['consistent_hash cookie:session', { balance: 'consistent_hash', hashOn: 'cookie:session' }, reqs],
  ['consistent_hash path', { balance: 'consistent_hash', hashOn: 'path' }, reqs],
  ['sticky, valid cookie', { balance: 'sticky' }, reqs],
  ['sticky, no cookie (first request)', { balance: 'sticky' }, noCookie],
];
const N = 3_000_000;
// ONLY=<case name prefix>: one case per process (no type feedback from the others).
const only = process.env.ONLY;
if (only) CASES.splice(0, CASES.length, ...CASES.filter(([n]) => n.startsWith(only)));

/** CPU time (user + system) since `t0`, in ns: on a shared VM, wall time counts the time other work held the core. */
function cpuNs(t0) {
  const c = process.cpuUsage(t0);
  return (c.user + c.system) * 1000;
}

function plain(rt, hdrs) {
  let x = 0;
  const t = process.cpuUsage();
  for (let i = 0, k = 0; i < N; i++, k = k + 1 === K ? 0 : k + 1) x += rt.pick(ips[k], hdrs[k], paths[k]).slot;
  return [cpuNs(t) / N, x];
}
function guarded(rt, hdrs) {
  let x = 0;
  const g = rt.guard;
  const base = performance.now();
  const t = process.cpuUsage();
  for (let i = 0, k = 0; i < N; i++, k = k + 1 === K ? 0 : k + 1) {
    const now = base + i * 0.001;
    const p = rt.admit(ips[k], now, hdrs[k], paths[k]);
    x += p.slot;
    g.finish(p, g.probe, '', 200, 1, now);
  }
  return [cpuNs(t) / N, x];
}

const out = {};
for (let round = 0; round < 3; round++) {
  for (const [name, extra, hdrs] of CASES) {
    const a = plain(new UpstreamRuntime(upstream(extra), slots, env), hdrs);
    const b = guarded(new UpstreamRuntime(upstream({ ...extra, healthCheck: {} }), slots, env), hdrs);
    if (round === 0) continue;
    const o = (out[name] ??= { pickNs: [], withHealthCheckAdmitFinishNs: [] });
    o.pickNs.push(a[0]);
    o.withHealthCheckAdmitFinishNs.push(b[0]);
  }
}
const r1 = (xs) => Math.round(Math.min(...xs) * 10) / 10;
console.log(JSON.stringify(Object.fromEntries(Object.entries(out).map(([k, v]) => [k, { pickNs: r1(v.pickNs), withHealthCheckAdmitFinishNs: r1(v.withHealthCheckAdmitFinishNs) }])), null, 1));
