/**
 * One limit shared by several gateway processes through Redis (issue 10,
 * "Many instances"): real gateway processes (2 workers each) on loopback,
 * a private redis-server, a real upstream, a paced load of about 10× the
 * limit over keep-alive connections.
 *
 *   admitted must be within 2% of burst + rate × t
 *
 * for one process (the sync must neither add nor lose anything) and for
 * three (the documented over-admission, about rate × syncIntervalMs ×
 * (instances - 1), must stay well inside 2%, and the first-touch burst
 * of each instance is paid back as debt). The measured numbers are
 * printed for bench/RESULTS.md.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { admitted, pacedLoad } from '../helpers/paced-load.js';
import { startRedis, type PrivateRedis } from '../helpers/redis.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { sampleValue, scrape } from '../helpers/metrics.js';

const RATE = 100; // per second
const BURST = 100;
const LOAD_MS = 10_000;

let redis: PrivateRedis;
let up: Upstream;
const gateways: Gateway[] = [];

function gatewayConfig(): Record<string, unknown> {
  return baseConfig({
    server: { workers: 2 },
    admin: { enabled: true, port: 0 },
    log: { access: { enabled: false } },
    redis: { url: redis.url, syncIntervalMs: 50 },
    upstreams: { up: { targets: [up.url] } },
    routes: [
      { id: 'shared', path: '/shared/*', upstream: 'up', rateLimit: [{ by: 'global', rate: RATE, per: '1s', burst: BURST }] },
      { id: 'single', path: '/single/*', upstream: 'up', rateLimit: [{ by: 'global', rate: RATE, per: '1s', burst: BURST }] },
    ],
  });
}

const scrapeGateway = (g: Gateway): Promise<string> => scrape(g.adminPort!);
const metric = sampleValue;

beforeAll(async () => {
  [redis, up] = await Promise.all([startRedis(), startUpstream((_req, res) => res.end('ok'))]);
  gateways.push(...(await Promise.all([0, 1, 2].map(() => startGateway(gatewayConfig())))));
}, 60_000);

afterAll(async () => {
  await Promise.all(gateways.map((g) => g.stop()));
  await up?.close();
  await redis?.stop();
});

/** Offers 10 × RATE for `durationMs` (over the gateways): what was admitted, against burst + rate × t. */
async function measure(targets: Gateway[], path: string, durationMs: number): Promise<{ admitted: number; expected: number; over: number; seconds: number; statuses: Record<number, number> }> {
  const r = await pacedLoad(targets.map((g) => g.url), { rate: RATE * 10, durationMs, path, connections: 32, maxInFlight: 512 });
  const seconds = (r.lastSentAt - r.firstSentAt) / 1000;
  const ok = admitted(r.byStatus);
  const expected = BURST + RATE * seconds;
  expect(r.failures).toBe(0);
  expect(r.skipped).toBe(0);
  return { admitted: ok, expected, over: ok - expected, seconds, statuses: r.byStatus };
}

describe('a limit shared through Redis', () => {
  it('every instance is connected, beats, and counts the others', async () => {
    // Heartbeats every second: within two, each instance counts all three.
    const deadline = Date.now() + 5000;
    for (const g of gateways) {
      for (;;) {
        const text = await scrapeGateway(g);
        if (metric(text, 'turnpike_rate_limit_store_up') === 1 && metric(text, 'turnpike_rate_limit_store_instances') === 3) break;
        if (Date.now() > deadline) throw new Error(`store_up ${metric(text, 'turnpike_rate_limit_store_up')}, instances ${metric(text, 'turnpike_rate_limit_store_instances')}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    // One line each: connected, never unreachable.
    for (const g of gateways) {
      const lines = g.logs.filter((l) => l.includes('"msg":"rate-limit store'));
      expect(lines.filter((l) => l.includes('rate-limit store connected')), lines.join('\n')).toHaveLength(1);
      expect(lines.filter((l) => l.includes('unreachable')), lines.join('\n')).toHaveLength(0);
    }
  });

  it('one process: admitted = burst + rate × t within 2% (the sync adds and loses nothing)', async () => {
    const m = await measure([gateways[0]!], '/single/x', LOAD_MS / 2);
    console.log(`[rate-limit] 1 process, 2 workers, 10x load for ${m.seconds.toFixed(2)} s: admitted ${m.admitted}, expected ${m.expected.toFixed(1)}, over-admission ${m.over.toFixed(1)} (${((m.over / m.expected) * 100).toFixed(2)}%) ${JSON.stringify(m.statuses)}`);
    expect(Object.keys(m.statuses).sort()).toEqual(['200', '429']);
    expect(Math.abs(m.over)).toBeLessThanOrEqual(0.02 * m.expected);
  }, 30_000);

  it('three processes: admitted = burst + rate × t within 2%', async () => {
    const m = await measure(gateways, '/shared/x', LOAD_MS);
    console.log(`[rate-limit] 3 processes x 2 workers, 10x load for ${m.seconds.toFixed(2)} s: admitted ${m.admitted}, expected ${m.expected.toFixed(1)}, over-admission ${m.over.toFixed(1)} (${((m.over / m.expected) * 100).toFixed(2)}%) ${JSON.stringify(m.statuses)}`);
    expect(Object.keys(m.statuses).sort()).toEqual(['200', '429']);
    expect(Math.abs(m.over)).toBeLessThanOrEqual(0.02 * m.expected);
    // Not shared, the three would have admitted about 3 × as much.
    for (const g of gateways) {
      const text = await scrapeGateway(g);
      expect(metric(text, 'turnpike_rate_limit_sync_duration_seconds_count')).toBeGreaterThan(50);
      expect(metric(text, 'turnpike_rate_limit_synced_keys_total')).toBeGreaterThan(50);
      expect(metric(text, 'turnpike_rate_limit_store_errors_total{reason="connection"}')).toBe(0);
    }
  }, 30_000);
});
