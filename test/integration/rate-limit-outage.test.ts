/**
 * Cluster rate limits when Redis goes away and comes back, onStoreError
 * deny, and reloads (issue 10): real gateway processes, a private
 * redis-server killed (SIGKILL) and restarted mid-test, real clients.
 *
 *  - outage: no 5xx but from `deny` limits; `allow_local` limits keep
 *    holding, each instance with its share (1/instances) of the rate; one
 *    log line per state change; turnpike_rate_limit_store_up 0, then 1;
 *    after the restart the instances share the limit again;
 *  - deny: 503 rate_limit_store_unavailable with Retry-After and the JSON
 *    error, from a gateway whose Redis was never reachable (admin listener
 *    off: the admin thread runs for the sync alone);
 *  - reload: changing one cluster policy resets that policy on every
 *    instance and leaves the others' buckets as they were.
 */
import net from 'node:net';
import { writeFileSync } from 'node:fs';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { admitted, pacedLoad } from '../helpers/paced-load.js';
import { startRedis, type PrivateRedis } from '../helpers/redis.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { sampleValue, scrape } from '../helpers/metrics.js';

let redis: PrivateRedis;
let up: Upstream;
const started: Gateway[] = [];

beforeAll(async () => {
  [redis, up] = await Promise.all([startRedis(), startUpstream((_req, res) => res.end('ok'))]);
}, 30_000);

afterAll(async () => {
  await Promise.all(started.map((g) => g.stop()));
  await up?.close();
  await redis?.stop();
});

async function start(config: Record<string, unknown>): Promise<Gateway> {
  const g = await startGateway(config);
  started.push(g);
  return g;
}

const scrapeGateway = (g: Gateway): Promise<string> => scrape(g.adminPort!);
const metric = sampleValue;

async function waitMetric(gs: Gateway[], series: string, value: number, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  for (const g of gs) {
    for (;;) {
      if (metric(await scrapeGateway(g), series) === value) break;
      if (Date.now() > deadline) throw new Error(`${series} never became ${value}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** The gateway's log lines (JSON) whose msg starts with `prefix`. */
function logLines(g: Gateway, prefix: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const l of g.logs) {
    try {
      const j = JSON.parse(l) as Record<string, unknown>;
      if (typeof j['msg'] === 'string' && j['msg'].startsWith(prefix)) out.push(j);
    } catch { /* access log or not JSON */ }
  }
  return out;
}

async function get(g: Gateway, path: string): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  const r = await request(g.url + path);
  return { status: r.statusCode, headers: r.headers, body: await r.body.text() };
}

async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

describe('Redis killed mid-test', () => {
  // Rates per second. `during`: first used while Redis is away, so every
  // instance's bucket starts full with its share of the burst (BURST / 3)
  // and refills at RATE / 3: together, the three admit what one limit would.
  const RATE = 60;
  const BURST = 30;
  let gs: Gateway[];

  beforeAll(async () => {
    const cfg = baseConfig({
      server: { workers: 2 },
      admin: { enabled: true, port: 0 },
      log: { access: { enabled: false } },
      redis: { url: redis.url, syncIntervalMs: 50, commandTimeoutMs: 200 },
      upstreams: { up: { targets: [up.url] } },
      rateLimits: {
        during: { by: 'global', rate: RATE, per: '1s', burst: BURST },
        after: { by: 'global', rate: RATE, per: '1s', burst: BURST },
        guarded: { by: 'global', rate: 1000, per: '1s', onStoreError: 'deny' },
      },
      routes: [
        { id: 'during', path: '/during/*', upstream: 'up', rateLimit: ['during'] },
        { id: 'after', path: '/after/*', upstream: 'up', rateLimit: ['after'] },
        { id: 'guarded', path: '/guarded/*', upstream: 'up', rateLimit: ['guarded'] },
      ],
    });
    gs = await Promise.all([0, 1, 2].map(() => start(cfg)));
    await waitMetric(gs, 'turnpike_rate_limit_store_instances', 3, 5000);
  }, 30_000);

  it('goes on without Redis: no 5xx but from deny limits, each instance holding its share, one log line, store_up 0', async () => {
    expect((await get(gs[0]!, '/guarded/x')).status).toBe(200);
    await redis.kill();
    await waitMetric(gs, 'turnpike_rate_limit_store_up', 0, 3000);
    const T = 3_000;
    const [load, denied] = await Promise.all([
      pacedLoad(gs.map((g) => g.url), { rate: RATE * 10, durationMs: T, path: '/during/x' }),
      pacedLoad(gs.map((g) => g.url), { rate: 30, durationMs: 1000, path: '/guarded/x' }),
    ]);
    // allow_local: only 200 and 429; deny: only 503, with the JSON error and Retry-After.
    expect(Object.keys(load.byStatus).sort()).toEqual(['200', '429']);
    expect(load.failures).toBe(0);
    expect(Object.keys(denied.byStatus)).toEqual(['503']);
    const sample = denied.samples[503]!;
    expect(sample.headers['retry-after']).toBe('1');
    expect(sample.headers['content-type']).toBe('application/json');
    const body = JSON.parse(sample.body);
    expect(body.error.code).toBe('rate_limit_store_unavailable');
    expect(body.error.message).toContain('"guarded"');
    expect(body.error.message).toContain('retry later');
    expect(body.error.requestId).toBe(sample.headers['x-request-id']);
    // Each instance alone: its bucket (full at first use) holds a third of the burst and refills at a third of the rate.
    const seconds = (load.lastSentAt - load.firstSentAt) / 1000;
    const share = BURST / 3 + (RATE / 3) * seconds;
    const each = load.perGateway.map((by) => admitted(by));
    console.log(`[rate-limit] Redis away ${seconds.toFixed(2)} s: admitted per instance ${each.join(', ')} (total ${each.reduce((a, b) => a + b, 0)}); share bound ${share.toFixed(1)} each, ${(3 * share).toFixed(1)} together = one limit's burst + rate × t (the full burst each would allow ${(BURST + (RATE / 3) * seconds).toFixed(0)} each)`);
    for (const n of each) {
      expect(n).toBeLessThanOrEqual(share * 1.05 + 1);
      expect(n).toBeGreaterThanOrEqual(share * 0.9);
    }
    // One line per state change, however many syncs and reconnections failed.
    for (const g of gs) {
      expect(logLines(g, 'rate-limit store unreachable')).toHaveLength(1);
      const line = logLines(g, 'rate-limit store unreachable')[0]!;
      expect(line['level']).toBe('warn');
      expect(line['instances']).toBe(3);
      expect(line['share']).toBeCloseTo(1 / 3, 5);
      const text = await scrapeGateway(g);
      expect(metric(text, 'turnpike_rate_limit_store_up')).toBe(0);
      expect(metric(text, 'turnpike_rate_limit_store_errors_total{reason="connection"}')).toBeGreaterThan(0);
      expect(metric(text, 'turnpike_rate_limit_decisions_total{route="guarded",policy="guarded",result="store_unavailable"}')).toBeGreaterThan(0);
      expect(metric(text, 'turnpike_gateway_errors_total{reason="rate_limit_store_unavailable"}')).toBeGreaterThan(0);
      expect(metric(text, 'turnpike_gateway_errors_total{reason="internal_error"}')).toBe(0);
    }
  }, 20_000);

  it('comes back after the restart: store_up 1, one log line, the instances share the limit again', async () => {
    await redis.restart();
    // Reconnection backs off up to 2 s.
    await waitMetric(gs, 'turnpike_rate_limit_store_up', 1, 8000);
    // The line is written with the state change, but reaches stdout through the admin thread's log
    // ring and the main thread: a scrape can see store_up 1 first (a CI run did).
    const until = Date.now() + 3000;
    while (gs.some((g) => logLines(g, 'rate-limit store reachable again').length === 0) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    for (const g of gs) {
      expect(logLines(g, 'rate-limit store reachable again')).toHaveLength(1);
      expect(logLines(g, 'rate-limit store unreachable')).toHaveLength(1);
      expect(logLines(g, 'rate-limit store connected')).toHaveLength(1);
    }
    expect((await get(gs[1]!, '/guarded/x')).status).toBe(200);
    const load = await pacedLoad(gs.map((g) => g.url), { rate: RATE * 10, durationMs: 3000, path: '/after/x' });
    expect(Object.keys(load.byStatus).sort()).toEqual(['200', '429']);
    const seconds = (load.lastSentAt - load.firstSentAt) / 1000;
    const ok = admitted(load.byStatus);
    const expected = BURST + RATE * seconds;
    console.log(`[rate-limit] after recovery, 3 instances ${seconds.toFixed(2)} s: admitted ${ok}, expected ${expected.toFixed(1)}`);
    // Shared again: one limit for the three (unshared, it would be about 3 × as much).
    expect(Math.abs(ok - expected)).toBeLessThanOrEqual(0.05 * expected);
  }, 20_000);
});

describe('onStoreError: deny', () => {
  it('answers 503 rate_limit_store_unavailable (Retry-After, JSON) while allow_local limits keep serving; never a 401/403/500', async () => {
    const port = await closedPort();
    const t0 = performance.now();
    const g = await start(baseConfig({
      server: { workers: 2 },
      admin: { enabled: false },
      redis: { url: `redis://user:s3cret-pass@127.0.0.1:${port}` },
      upstreams: { up: { targets: [up.url] } },
      routes: [
        { id: 'deny', path: '/deny/*', upstream: 'up', rateLimit: [{ by: 'ip', rate: 100, per: '1s', onStoreError: 'deny' }] },
        { id: 'local', path: '/local/*', upstream: 'up', rateLimit: [{ by: 'ip', rate: 100, per: '1s' }] },
      ],
    }));
    expect(performance.now() - t0).toBeLessThan(10_000);
    expect(g.adminPort).toBeNull();
    const deny = await get(g, '/deny/x');
    expect(deny.status).toBe(503);
    expect(deny.headers['retry-after']).toBe('1');
    expect(deny.headers['content-type']).toBe('application/json');
    const body = JSON.parse(deny.body);
    expect(body).toEqual({
      error: {
        code: 'rate_limit_store_unavailable',
        message: 'The rate-limit store (Redis) is unreachable and limit "deny#0" refuses requests meanwhile (onStoreError: deny); retry later.',
        requestId: deny.headers['x-request-id'],
      },
    });
    const local = await get(g, '/local/x');
    expect(local.status).toBe(200);
    expect(local.headers['ratelimit']).toBe('"local#0";r=99;t=1');
    // Reconnection keeps failing in the background: still one line, and no credentials in any line.
    await new Promise((r) => setTimeout(r, 1000));
    expect(logLines(g, 'rate-limit store unreachable')).toHaveLength(1);
    expect(logLines(g, 'rate-limit store unreachable')[0]!['store']).toBe(`redis://[redacted]@127.0.0.1:${port}`);
    expect(g.logs.join('\n')).not.toContain('s3cret-pass');
    // Many refusals: still no log line per request (the state is logged once; the access log has each).
    for (let i = 0; i < 40; i++) expect((await get(g, '/deny/x')).status).toBe(503);
    const perRequest = g.logs.filter((l) => l.includes('"level":"error"') && l.includes('rate_limit_store_unavailable'));
    expect(perRequest).toEqual([]);
  }, 20_000);
});

describe('reload', () => {
  it('changing one cluster policy resets it on every instance; the other keeps its buckets', async () => {
    const cfg = (rate: number) => baseConfig({
      server: { workers: 1 },
      admin: { enabled: false },
      log: { access: { enabled: false } },
      redis: { url: redis.url, syncIntervalMs: 20 },
      upstreams: { up: { targets: [up.url] } },
      rateLimits: {
        changed: { by: 'global', rate, per: '1h' },
        kept: { by: 'global', rate: 5, per: '1h' },
      },
      routes: [
        { id: 'changed', path: '/changed/*', upstream: 'up', rateLimit: ['changed'] },
        { id: 'kept', path: '/kept/*', upstream: 'up', rateLimit: ['kept'] },
      ],
    });
    const [a, b] = await Promise.all([start(cfg(5)), start(cfg(5))]);
    // Exhaust both policies through both instances (each admits at most its first-touch burst, then the debt).
    const drain = async (path: string) => {
      for (const g of [a, b]) for (let i = 0; i < 8; i++) await get(g, path);
      await new Promise((r) => setTimeout(r, 200)); // a few syncs
    };
    await drain('/changed/x');
    await drain('/kept/x');
    for (const g of [a, b]) {
      expect((await get(g, '/changed/x')).status).toBe(429);
      expect((await get(g, '/kept/x')).status).toBe(429);
    }
    for (const g of [a, b]) {
      writeFileSync(g.configFile, JSON.stringify(cfg(6)));
      g.proc.kill('SIGHUP');
    }
    const deadline = Date.now() + 10_000;
    while (![a, b].every((g) => logLines(g, 'config reloaded').length === 1)) {
      if (Date.now() > deadline) throw new Error('the reload did not happen');
      await new Promise((r) => setTimeout(r, 20));
    }
    // `changed` starts afresh on both instances; `kept` is still exhausted on both.
    for (const g of [a, b]) {
      const r = await get(g, '/changed/x');
      expect(r.status).toBe(200);
      expect(r.headers['ratelimit-policy']).toBe('"changed";q=6;w=3600');
      expect((await get(g, '/kept/x')).status).toBe(429);
    }
    // And the fresh one is shared: 6 in all, whichever instance admits them
    // (requests spaced by a few sync intervals: each sees the other's).
    let ok = 2;
    for (let i = 0; i < 6; i++) {
      for (const g of [a, b]) {
        await new Promise((r) => setTimeout(r, 80));
        if ((await get(g, '/changed/x')).status === 200) ok++;
      }
    }
    expect(ok).toBe(6);
  }, 30_000);
});
