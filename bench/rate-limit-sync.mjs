#!/usr/bin/env node
// What the Redis sync of cluster rate limits (admin/rate-limit/) costs the
// admin thread, per cycle, at N active keys (default 50,000): the real
// SyncEngine and RedisStore of dist/ against a private redis-server on a
// free loopback port (started and stopped here, by PID).
//
// Each cycle first plays the workers (outside the measurement): one request
// per key through the real worker policy (RateLimitPolicyRunner), so every
// key has a pending admission; then one sync cycle as index.ts runs it:
// collect (scan + lock + build batches), the pipelined script calls,
// apply (write back under the locks). Measured per cycle:
//   cpu      this process's CPU time (user + system; the admin thread's
//            work: scan, ioredis encoding and decoding, write-back)
//   wall     start of the scan to the last reply written back
//   scan     collect() alone (synchronous), apply() summed
//   redis    redis-server's CPU time (INFO cpu) for the cycle
//   batch    the round trip of one batch (MAX_BATCH keys) sent alone
// and the scan of an idle table (no key to sync) at the default capacity.
//
//   node bench/rate-limit-sync.mjs                 # 50,000 keys, 20 cycles
//   KEYS=10000 CYCLES=10 ALG=sliding_window node bench/rate-limit-sync.mjs
//
// Prints a JSON summary; `--markdown` also prints its row for RESULTS.md
// ("Rate limits (Redis sync)"); `--save` writes the summary to
// results/<date>-rate-limit-sync-<algorithm>-<keys>.json.
// Needs `npm run build` at the repository root and redis-server on PATH.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';

const DIST = fileURLToPath(new URL('../dist/', import.meta.url));
const { createRateLimitTable, RateLimitTable, DEFAULT_CAPACITY } = await import(`${DIST}common/rate-limit-layout.js`);
const { resolvePolicy } = await import(`${DIST}common/config/rate-limit.js`);
const { SyncEngine, MAX_BATCH } = await import(`${DIST}admin/rate-limit/sync.js`);
const { RedisStore } = await import(`${DIST}admin/rate-limit/store.js`);
const { RequestContext } = await import(`${DIST}workers/pipeline/context.js`);
const { RateLimitPolicyRunner } = await import(`${DIST}workers/policies/rate-limit/index.js`);

const KEYS = Number(process.env.KEYS ?? 50_000);
const CYCLES = Number(process.env.CYCLES ?? 20);
const ALG = process.env.ALG ?? 'token_bucket';
const CAPACITY = Number(process.env.CAPACITY ?? DEFAULT_CAPACITY);

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startRedis(port) {
  const p = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve, reject) => {
    let out = '';
    p.once('error', reject);
    p.stdout.on('data', (b) => {
      out += b;
      if (out.includes('Ready to accept connections')) resolve();
    });
  });
  return p;
}

const port = await freePort();
const redisProc = await startRedis(port);
const stopRedis = () => { if (redisProc.exitCode === null) redisProc.kill('SIGTERM'); };
process.on('SIGINT', () => { stopRedis(); process.exit(130); });

try {
  const now = () => Date.now() + (performance.now() % 1);
  const raw = ALG === 'quota' ? { by: 'ip', quota: 1_000_000_000, period: 'day' } : { by: 'ip', rate: 1_000_000, per: '1h', ...(ALG === 'token_bucket' ? {} : { algorithm: ALG }) };
  const policy = resolvePolicy(raw, 'bench', true);
  const table = new RateLimitTable(createRateLimitTable(CAPACITY));
  const runner = new RateLimitPolicyRunner([policy], 0, { table, metrics: null, trusted: null, strict: null });
  const ctx = new RequestContext();
  const ips = Array.from({ length: KEYS }, (_, i) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`);
  const playWorkers = () => {
    for (const ip of ips) {
      ctx.reset();
      ctx.now = now();
      ctx.routeId = 'r';
      ctx.clientIp = ip;
      runner.onRequest(ctx);
    }
  };
  const cfg = { url: `redis://127.0.0.1:${port}`, sentinels: null, name: null, cluster: null, keyPrefix: 'tp:', syncIntervalMs: 50, connectTimeoutMs: 2000, commandTimeoutMs: 5000 };
  const store = new RedisStore(cfg, { onConnectionError: (e) => console.error('redis:', e.message), onReady: () => {}, onClose: () => {} });
  store.connect();
  while (!store.ready) await new Promise((r) => setTimeout(r, 10));
  const redisCpu = async () => {
    const info = await store.client.info('cpu');
    return (Number(/used_cpu_user:([\d.]+)/.exec(info)[1]) + Number(/used_cpu_sys:([\d.]+)/.exec(info)[1])) * 1000;
  };

  // Idle scan at this capacity: nothing pending, nothing warm.
  const idle = new SyncEngine(new RateLimitTable(createRateLimitTable(CAPACITY)), now);
  idle.setPolicies([policy], 'tp:', now());
  const idleRuns = [];
  for (let i = 0; i < 20; i++) {
    const t0 = performance.now();
    idle.collect(now(), () => {});
    idleRuns.push(performance.now() - t0);
  }

  const engine = new SyncEngine(table, now);
  engine.setPolicies([policy], 'tp:', now());
  const rows = [];
  for (let c = 0; c < CYCLES + 2; c++) {
    playWorkers();
    const r0 = await redisCpu();
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const calls = [];
    let applyMs = 0;
    let batches = 0;
    engine.collect(now(), (batch) => {
      batches++;
      batch.sentAt = now();
      calls.push(store.sync(batch.command()).then((reply) => {
        const a = performance.now();
        engine.apply(batch, reply, now());
        applyMs += performance.now() - a;
      }));
    });
    const scanMs = performance.now() - t0;
    await Promise.all(calls);
    const wallMs = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    const r1 = await redisCpu();
    if (c >= 2) rows.push({ keys: engine.counts.lastKeys, batches, cpuMs: (cpu.user + cpu.system) / 1000, wallMs, scanMs, applyMs, redisMs: r1 - r0 });
  }
  // One batch alone: its round trip (script execution included).
  playWorkers();
  const rtts = [];
  for (let i = 0; i < 20; i++) {
    let first = null;
    engine.collect(now(), (batch) => { if (first === null) first = batch; else engine.failed(batch); });
    first.sentAt = now();
    const t0 = performance.now();
    const reply = await store.sync(first.command());
    rtts.push(performance.now() - t0);
    engine.apply(first, reply, now());
    playWorkers();
  }
  const memory = await store.client.call('MEMORY', 'USAGE', (await store.client.keys('tp:rl:{*'))[0]);
  const dbsize = await store.client.dbsize();
  const usedMemory = Number(/used_memory:(\d+)/.exec(await store.client.info('memory'))[1]);
  await store.close(1000);

  const med = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const pick = (k) => med(rows.map((r) => r[k]));
  const summary = {
    date: new Date().toISOString(), node: process.version, cpus: `${cpus().length} × ${cpus()[0]?.model ?? '?'}`,
    algorithm: ALG, keys: KEYS, capacity: table.capacity, cycles: rows.length, maxBatch: MAX_BATCH,
    median: { keysPerCycle: pick('keys'), batches: pick('batches'), adminCpuMs: pick('cpuMs'), wallMs: pick('wallMs'), scanMs: pick('scanMs'), applyMs: pick('applyMs'), redisCpuMs: pick('redisMs') },
    perKeyUs: { adminCpu: (pick('cpuMs') * 1000) / KEYS, redisCpu: (pick('redisMs') * 1000) / KEYS },
    batchRoundTripMs: { median: med(rtts), min: Math.min(...rtts), max: Math.max(...rtts) },
    idleScanMs: { capacity: CAPACITY, median: med(idleRuns) },
    redis: { keys: dbsize, bytesPerKey: memory, usedMemoryBytesPerKey: Math.round(usedMemory / Math.max(1, dbsize)) },
  };
  console.log(JSON.stringify(summary, null, 2));
  if (process.argv.includes('--save')) {
    const file = fileURLToPath(new URL(`results/${summary.date.slice(0, 10)}-rate-limit-sync-${ALG}-${KEYS}.json`, import.meta.url));
    writeFileSync(file, JSON.stringify(summary, null, 2) + '\n');
    console.error(`saved ${file}`);
  }
  if (process.argv.includes('--markdown')) {
    const m = summary.median;
    console.log(`| ${ALG} | ${KEYS.toLocaleString('en')} | ${m.adminCpuMs.toFixed(1)} | ${m.wallMs.toFixed(1)} | ${m.scanMs.toFixed(1)} | ${m.applyMs.toFixed(1)} | ${m.redisCpuMs.toFixed(1)} | ${m.batches} | ${summary.batchRoundTripMs.median.toFixed(2)} | ${summary.redis.bytesPerKey} |`);
  }
} finally {
  stopRedis();
}
