#!/usr/bin/env node
// Micro-bench of the traffic split's choice (issue 11, routes[].upstreams):
// ns per request of Split.choose (workers/proxy/split.ts) on a browser-like
// header list (12 lines, a 3-cookie Cookie header), in one thread, for the
// forms the handlers run: 2-way smooth weighted round robin; the same with
// a `when` header that does not match; hashOn cookie, header, ip; and what a
// single-upstream route pays (a null check: `route.split !== null`). A
// quick figure that needs no quiet machine; the CPU-µs/request comparison
// under load is the turnpike-split-base / turnpike-split /
// turnpike-split-hash trio (lib/split-targets.mjs, scenario split-cookie).
// usage: node bench/split-micro.mjs   (after npm run build at the repo root)
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const dist = process.env.TURNPIKE_DIST || join(dirname(fileURLToPath(import.meta.url)), '../dist');
const { Split } = await import(join(dist, 'workers/proxy/split.js'));

const hdrs = [
  'host', 'api.example.com', 'user-agent', 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36',
  'accept', 'application/json', 'accept-language', 'en-US,en;q=0.9', 'accept-encoding', 'gzip, deflate, br',
  'referer', 'https://app.example.com/dashboard', 'x-request-id', 'req-7f3a9c', 'x-user-id', 'user-48213',
  'cookie', 'theme=dark; session=4f1c2b9e7a; lang=en', 'sec-fetch-mode', 'cors', 'sec-fetch-site', 'same-site', 'connection', 'keep-alive',
];
const two = [{ name: 'v1', weight: 90, when: null }, { name: 'v2', weight: 10, when: null }];
const canary = [{ name: 'v1', weight: 90, when: null }, { name: 'v2', weight: 10, when: { kind: 'header', name: 'x-canary', equals: '1' } }];
const forms = {
  swrr: new Split(two, null, ['v1', 'v2']),
  'swrr+when(no match)': new Split(canary, null, ['v1', 'v2']),
  'hash cookie:session': new Split(two, 'cookie:session', ['v1', 'v2']),
  'hash header:x-user-id': new Split(two, 'header:x-user-id', ['v1', 'v2']),
  'hash ip': new Split(two, 'ip', ['v1', 'v2']),
};
const N = 5_000_000;
/** CPU time of this process (user + system), in ns: a busy machine stretches wall time, not this. */
function cpuNs() {
  const u = process.cpuUsage();
  return (u.user + u.system) * 1000;
}
function run(s) {
  let x = 0;
  const t = cpuNs();
  for (let i = 0; i < N; i++) x += s.choose(hdrs, '10.0.0.1', '/api/users/42').length;
  return [(cpuNs() - t) / N, x];
}
/** The single-upstream route: the handler's null check and nothing else. */
function runNone() {
  const route = { split: null, upstream: 'v1' };
  let x = 0;
  const t = cpuNs();
  for (let i = 0; i < N; i++) {
    const r = route.split !== null ? route.split.choose(hdrs, '10.0.0.1', '/') : route;
    x += r.upstream.length;
  }
  return [(cpuNs() - t) / N, x];
}
const out = {};
for (let round = 0; round < 3; round++) {
  const none = runNone();
  if (round === 2) out['single upstream (null check)'] = Math.round(none[0] * 10) / 10;
  for (const [name, s] of Object.entries(forms)) {
    const r = run(s);
    if (round === 2) out[name] = Math.round(r[0] * 10) / 10;
  }
}
console.log(JSON.stringify({ unit: 'CPU-ns per request (one thread, round 3 of 3)', ...out }, null, 1));
