// The strict rate-limit target (issue 10, `mode: strict`): Turnpike with
// one strict limit on its route, decided in Redis per request, beside the
// turnpike-plain / turnpike-ratelimit targets (targets.mjs) and meant for
// the same client spread (the `ratelimit` and `ratelimit-strict` scenarios:
// 10,000 client addresses in X-Forwarded-For).
//
// Its Redis is a private redis-server (no persistence) started with the
// target, pinned to the load generator's CPU like the upstream, so the
// target's CPU-µs/req is the gateway's own and CPU 0 stays the gateway's.
// Redis's own cost per request is in its INFO cpu counters (see README).
//
// Kept in its own module, with what it needs passed in, so that adding it
// to TARGETS is one line.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cmdOutput, spawnPinned, stopChild, which } from './proc.mjs';

/** `redis-cli -p port ...args` (null when it does not answer). */
function redisCli(port, ...args) {
  return cmdOutput('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args]);
}

/** `field:value` lines of an INFO answer as numbers (the numeric ones). */
function infoFields(text) {
  const out = {};
  for (const line of (text ?? '').split(/\r?\n/)) {
    const colon = line.indexOf(':');
    if (colon > 0 && Number.isFinite(Number(line.slice(colon + 1)))) out[line.slice(0, colon)] = Number(line.slice(colon + 1));
  }
  return out;
}

/** Scripts Redis has run (EVAL + EVALSHA calls, INFO commandstats). */
function scriptCalls(port) {
  let n = 0;
  for (const m of (redisCli(port, 'info', 'commandstats') ?? '').matchAll(/^cmdstat_(?:eval|evalsha):calls=(\d+)/gm)) n += Number(m[1]);
  return n;
}

const pause = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

export const STRICT_PORT = 18055;
export const STRICT_REDIS_PORT = 18056;

/**
 * The `turnpike-ratelimit-strict` target. `deps`: { cli (Turnpike's
 * dist/engine/cli.js), upstreamUrl, pool (upstream maxConnections), loadCpu,
 * notBuilt (() => reason or null) }.
 */
export function strictRateLimitTarget({ cli, upstreamUrl, pool, loadCpu, notBuilt }) {
  const name = 'turnpike-ratelimit-strict';
  const redisServer = which('redis-server');
  // By client address behind the load generator (a trusted proxy), like
  // turnpike-ratelimit, but with a rate no scenario reaches even from one
  // address (get-64, latency.mjs): nothing is refused, so the cost measured
  // is that of a decision that admits.
  const policy = { by: 'ip', rate: 100_000_000, per: '1s', mode: 'strict' };
  let redis = null;
  return {
    name,
    port: STRICT_PORT,
    skip: () => notBuilt() ?? (redisServer ? null : 'redis-server not installed: apt-get install -y redis-server'),
    command: (tmp) => {
      // Never someone else's Redis: the port must be free, and the server
      // answering on it must be the one started here (checked by pid in verify).
      if (redisCli(STRICT_REDIS_PORT, 'ping') === 'PONG') throw new Error(`${name}: port ${STRICT_REDIS_PORT} already has a Redis: stop what holds it`);
      redis = spawnPinned(loadCpu, redisServer, ['--port', String(STRICT_REDIS_PORT), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
        logFile: join(tmp, 'redis-strict.log'),
      });
      // A harness that never calls stop() (latency.mjs) still exits: its exit hook kills the server by PID.
      redis.unref();
      // Up before the gateway starts: its first connection attempt must
      // succeed, or strict decisions would be local until it reconnects.
      for (let i = 0; redisCli(STRICT_REDIS_PORT, 'ping') !== 'PONG'; i++) {
        if (i === 100 || redis.exitCode !== null) throw new Error(`${name}: its redis-server did not answer on ${STRICT_REDIS_PORT} (see ${join(tmp, 'redis-strict.log')})`);
        pause(50);
      }
      const file = join(tmp, `${name}.json`);
      writeFileSync(file, JSON.stringify({
        server: { host: '127.0.0.1', port: STRICT_PORT, workers: 1, trustedProxies: ['127.0.0.1'] },
        admin: { enabled: false },
        log: { access: { enabled: false } },
        redis: { url: `redis://127.0.0.1:${STRICT_REDIS_PORT}` },
        rateLimits: { client: policy },
        upstreams: { up: { targets: [{ url: upstreamUrl }], pool: { maxConnections: pool } } },
        routes: [{ id: 'all', path: '/*', upstream: 'up', rateLimit: ['client'] }],
      }, null, 2));
      return [process.execPath, [cli, 'start', '--config', file]];
    },
    version: () => `node ${process.version}, rateLimit ${JSON.stringify(policy)}, ${cmdOutput(redisServer, ['--version'])?.split(' ').slice(0, 3).join(' ')}`,
    // The limit is really decided in Redis (ours): a fresh address passes
    // with its RateLimit header, and Redis ran a script for it. (Its key
    // does not stay: with this rate the bucket is full again within a
    // millisecond, and the key expires then.) Retried for up to ~3 s: the
    // worker's Redis connection may still be opening for the first request.
    verify: async () => {
      const pid = infoFields(redisCli(STRICT_REDIS_PORT, 'info', 'server')).process_id;
      if (redis === null || redis.exitCode !== null || pid !== redis.pid) throw new Error(`${name}: the Redis on ${STRICT_REDIS_PORT} (pid ${pid}) is not the one started for it (pid ${redis?.pid})`);
      for (let i = 1; ; i++) {
        const calls = scriptCalls(STRICT_REDIS_PORT);
        const r = await fetch(`http://127.0.0.1:${STRICT_PORT}/`, { headers: { 'x-forwarded-for': `192.0.2.${i}` } });
        await r.arrayBuffer();
        if (r.status !== 200 || !r.headers.has('ratelimit')) throw new Error(`${name}: a fresh address got ${r.status} (RateLimit header ${r.headers.has('ratelimit') ? 'present' : 'missing'})`);
        if (scriptCalls(STRICT_REDIS_PORT) > calls) return;
        if (i === 30) throw new Error(`${name}: Redis ran no script for ${i} requests of fresh addresses: not decided in Redis`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    },
    // After the gateway: run.mjs calls stop() once the target's own process is stopped.
    stop: async () => {
      if (redis !== null) await stopChild(redis);
    },
    // Redis's own work per request (run.mjs calls probe() before and after
    // each run, then probeResult): its CPU time from INFO cpu (user + sys,
    // every thread of the server) and the scripts it ran (EVALSHA + EVAL,
    // INFO commandstats: one decision per request; the admin thread's sync
    // adds a few per second).
    probe: () => {
      const f = infoFields(redisCli(STRICT_REDIS_PORT, 'info', 'cpu'));
      return { cpuS: (f.used_cpu_user ?? NaN) + (f.used_cpu_sys ?? NaN), scripts: scriptCalls(STRICT_REDIS_PORT) };
    },
    probeResult: (before, after, requests) => {
      if (requests === 0) return {};
      return {
        redisCpuUsPerReq: Math.round(((after.cpuS - before.cpuS) * 1e6 / requests) * 100) / 100,
        redisScriptsPerReq: Math.round(((after.scripts - before.scripts) / requests) * 1000) / 1000,
      };
    },
  };
}
