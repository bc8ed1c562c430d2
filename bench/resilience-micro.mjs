#!/usr/bin/env node
// Micro-bench of the upstream pick (issue 11): ns per request for the plain
// pick (round_robin over two targets) against admit + finish with
// balance: p2c and a breaker (every default), in one thread on the shared
// state, the success path (what every request pays). A quick figure that
// needs no quiet machine; the CPU-µs/request comparison under load is the
// turnpike-resilience-base / turnpike-resilience pair (lib/resilience-targets.mjs).
// usage: node bench/resilience-micro.mjs   (after npm run build at the repo root)
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const dist = process.env.TURNPIKE_DIST || join(dirname(fileURLToPath(import.meta.url)), '../dist');
const { UpstreamRuntime } = await import(join(dist, 'workers/proxy/balancer.js'));
const { createUpstreamState } = await import(join(dist, 'common/upstream-state-layout.js'));
const { validateConfig } = await import(join(dist, 'common/config/load.js'));

function upstream(extra) {
  const r = validateConfig({
    upstreams: { up: { targets: ['http://127.0.0.1:1', 'http://127.0.0.1:2'], ...extra } },
    routes: [{ id: 'r', path: '/', upstream: 'up' }],
  });
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  return r.config.upstreams.up;
}

const state = new Int32Array(createUpstreamState(1));
const env = { state, upstreamSlots: new Map([['up', 1]]), workerIndex: 0, clockOffset: 0 };
const slots = new Map([['up http://127.0.0.1:1', 1], ['up http://127.0.0.1:2', 2]]);
const plain = new UpstreamRuntime(upstream({}), slots, env);
const guarded = new UpstreamRuntime(upstream({ balance: 'p2c', breaker: {} }), slots, env);
const N = 5_000_000;

function runPlain() {
  let x = 0;
  const t = process.hrtime.bigint();
  for (let i = 0; i < N; i++) x += plain.pick('10.0.0.1').slot;
  return [Number(process.hrtime.bigint() - t) / N, x];
}
function runGuarded() {
  let x = 0;
  const g = guarded.guard;
  // The handler's own clock reading (t0) and the worker's coarse clock are reused by the gateway: none is read here either.
  const base = performance.now();
  const t = process.hrtime.bigint();
  for (let i = 0; i < N; i++) {
    const now = base + i * 0.001;
    const p = guarded.admit('10.0.0.1', now);
    x += p.slot;
    g.finish(p, g.probe, '', 200, 1, now);
  }
  return [Number(process.hrtime.bigint() - t) / N, x];
}
for (let round = 0; round < 2; round++) {
  const a = runPlain();
  const b = runGuarded();
  if (round === 1) {
    console.log(JSON.stringify({
      plainPickNs: Math.round(a[0] * 10) / 10,
      p2cBreakerAdmitFinishNs: Math.round(b[0] * 10) / 10,
      addedNsPerRequest: Math.round((b[0] - a[0]) * 10) / 10,
    }));
  }
}
