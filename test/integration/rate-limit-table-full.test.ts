/**
 * A full rate-limit table, end to end (a real gateway, 2 workers, a real
 * upstream, real clients): one policy whose keys the client chooses
 * (`by: header:x-key`, 1 per hour) is fed thousands of keys, more than the
 * table holds; then new clients of another policy (a login limit, 5 per
 * minute by ip) must each get a bucket of their own: 5 admitted each, the
 * 6th refused. Before eviction, every new key went to its policy's single
 * overflow bucket once the table was full: 20 new clients shared 5
 * requests (5 admitted, 15 refused), a denial of service for every new
 * client of every policy.
 */
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { sampleValue, scrape } from '../helpers/metrics.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

let up: Upstream;
let gw: Gateway;
const agent = new Agent({ connections: 32, keepAliveTimeout: 10_000 });

beforeAll(async () => {
  up = await startUpstream((_req, res) => res.end('ok'));
  gw = await startGateway(baseConfig({
    server: { workers: 2, trustedProxies: ['127.0.0.1'] },
    admin: { enabled: true, port: 0 },
    log: { access: { enabled: false } },
    rateLimitTable: { capacity: 1024 },
    upstreams: { u: { targets: [up.url] } },
    rateLimits: {
      signup: { by: 'header:x-key', rate: 1, per: '1h' },
      login: { by: 'ip', rate: 5, per: '1m' },
      monthly: { by: 'header:x-tenant', quota: 3, period: 'month' },
    },
    routes: [
      { id: 'k', path: '/k/*', upstream: 'u', rateLimit: ['signup'] },
      { id: 'login', path: '/login', upstream: 'u', rateLimit: ['login'] },
      { id: 'q', path: '/q', upstream: 'u', rateLimit: ['monthly'] },
    ],
  }));
}, 30_000);

afterAll(async () => {
  await gw?.stop();
  await up?.close();
  await agent.close();
});

async function status(path: string, headers: Record<string, string>): Promise<number> {
  const r = await request(gw.url + path, { headers, dispatcher: agent });
  await r.body.dump();
  return r.statusCode;
}

describe('a table filled by one policy\'s client-chosen keys', () => {
  it('new clients of another policy still get a bucket each (eviction, not one shared overflow bucket); quota counts survive', async () => {
    // Quota counts first: 3 of 3 used by 10 tenants.
    for (let t = 0; t < 10; t++) for (let i = 0; i < 3; i++) expect(await status('/q', { 'x-tenant': `tenant-${t}` }), `quota tenant-${t} #${i}`).toBe(200);
    // 3,000 keys for a table of 1,024 buckets, 1 per hour each: every one stays live.
    const KEYS = 3000;
    let next = 0;
    let filled = 0;
    await Promise.all(Array.from({ length: 32 }, async () => {
      for (;;) {
        const i = next++;
        if (i >= KEYS) return;
        if ((await status('/k/x', { 'x-key': `attacker-${i}` })) === 200) filled++;
      }
    }));
    // Each new key got its own bucket (an evicted key simply starts afresh).
    expect(filled, 'flood keys admitted (each its own fresh bucket)').toBe(KEYS);
    const perClient: number[][] = [];
    for (let c = 0; c < 20; c++) {
      const statuses: number[] = [];
      for (let i = 0; i < 6; i++) statuses.push(await status('/login', { 'x-forwarded-for': `198.51.100.${c + 1}` }));
      perClient.push(statuses);
    }
    const admitted = perClient.reduce((s, st) => s + st.filter((x) => x === 200).length, 0);
    console.log(`[rate-limit] table of 1024 filled with ${KEYS} client-chosen keys: 20 new login clients admitted ${admitted} (5 each expected)`);
    perClient.forEach((st, c) => expect(st, `login client ${c + 1}`).toEqual([200, 200, 200, 200, 200, 429]));
    // The quota buckets were never evicted: still 3 of 3.
    for (let t = 0; t < 10; t++) expect(await status('/q', { 'x-tenant': `tenant-${t}` }), `quota tenant-${t} after the flood`).toBe(429);
    const text = await scrape(gw.adminPort!);
    expect(sampleValue(text, 'turnpike_rate_limit_table_overflow_total'), 'overflow lookups').toBe(0);
    // Registered by admin/metrics.ts (from the table header's H_EVICTIONS).
    const evictions = sampleValue(text, 'turnpike_rate_limit_table_evictions_total');
    expect(evictions).toBeGreaterThan(KEYS - 1024);
  }, 60_000);
});
