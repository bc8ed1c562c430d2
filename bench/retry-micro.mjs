#!/usr/bin/env node
// Micro-bench of what retries cost a request that does not fail (issue 11,
// upstream `retry`), in one thread: what the exchange adds per request with
// `retry` on (the budget's request count, the method lookup), and for a body
// on a retried method, keeping each chunk (a copy of its own) instead of
// copying it into the reused scratch buffer. A quick figure that needs no
// quiet machine; the CPU-µs/request comparison under load is the
// turnpike-retry-base / turnpike-retry / turnpike-retry-post trio
// (lib/retry-targets.mjs).
// usage: node bench/retry-micro.mjs   (after npm run build at the repo root)
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const dist = process.env.TURNPIKE_DIST || join(dirname(fileURLToPath(import.meta.url)), '../dist');
const { UpstreamRuntime } = await import(join(dist, 'workers/proxy/balancer.js'));
const { createUpstreamState } = await import(join(dist, 'common/upstream-state-layout.js'));
const { validateConfig } = await import(join(dist, 'common/config/load.js'));

function upstream(extra) {
  const r = validateConfig({ upstreams: { up: { targets: ['http://127.0.0.1:1'], ...extra } }, routes: [{ id: 'r', path: '/', upstream: 'up' }] });
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  return r.config.upstreams.up;
}

const state = new Int32Array(createUpstreamState(1));
const env = { state, upstreamSlots: new Map([['up', 1]]), workerIndex: 0, clockOffset: 0 };
const off = new UpstreamRuntime(upstream({}), null, env);
const on = new UpstreamRuntime(upstream({ retry: {} }), null, env);
const N = 10_000_000;
const METHODS = ['GET', 'GET', 'GET', 'POST'];

/** What the exchange's constructor does about retries: one null check without retry; with it, count and look up the method. */
function perRequest(u) {
  let x = 0;
  const t = process.hrtime.bigint();
  for (let i = 0; i < N; i++) {
    const r = u.retry;
    if (r === null) {
      x += u.config.timeouts.responseMs;
    } else {
      r.countRequest();
      x += (r.attempts > 0 && r.allows(METHODS[i & 3], null) ? 1 : 0) + r.tryTimeoutMs;
    }
  }
  return [Number(process.hrtime.bigint() - t) / N, x];
}

/** A 16 KiB body chunk from uWS: into the reused scratch buffer (retry off) or a copy kept for a retry. */
const CHUNK = 16 * 1024;
const M = 1_000_000;
const ab = new ArrayBuffer(CHUNK);
const scratch = Buffer.allocUnsafeSlow(64 * 1024);
function stage() {
  let x = 0;
  const t = process.hrtime.bigint();
  for (let i = 0; i < M; i++) {
    scratch.set(new Uint8Array(ab));
    x += scratch.subarray(0, CHUNK).length;
  }
  return [Number(process.hrtime.bigint() - t) / M, x];
}
/** As uws-exchange.ts keeps a body: chunks copied into a 64 KiB buffer from a per-thread free list, given back at the end of the request (4 chunks). */
function keep(fresh) {
  let x = 0;
  let kept = [];
  const free = [];
  let buf = null;
  let len = 0;
  const t = process.hrtime.bigint();
  for (let i = 0; i < M; i++) {
    let c;
    if (fresh) {
      c = Buffer.copyBytesFrom(new Uint8Array(ab));
    } else {
      buf ??= free.pop() ?? Buffer.allocUnsafeSlow(64 * 1024);
      c = buf.subarray(len, len + CHUNK);
      c.set(new Uint8Array(ab));
      len += CHUNK;
    }
    kept.push(c);
    x += c.length;
    if (kept.length === 4) {
      kept = [];
      if (buf !== null) free.push(buf);
      buf = null;
      len = 0;
    }
  }
  return [Number(process.hrtime.bigint() - t) / M, x];
}

for (let round = 0; round < 2; round++) {
  const a = perRequest(off);
  const b = perRequest(on);
  const c = stage();
  const d = keep(false);
  const e = keep(true);
  if (round === 1) {
    console.log(JSON.stringify({
      retryOffNsPerRequest: Math.round(a[0] * 10) / 10,
      retryOnNsPerRequest: Math.round(b[0] * 10) / 10,
      addedNsPerRequest: Math.round((b[0] - a[0]) * 10) / 10,
      scratch16kChunkNs: Math.round(c[0]),
      kept16kChunkNs: Math.round(d[0]),
      addedNsPer16kChunk: Math.round(d[0] - c[0]),
      freshBuffer16kChunkNs: Math.round(e[0]),
    }));
  }
}
