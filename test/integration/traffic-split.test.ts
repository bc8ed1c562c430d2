/**
 * Traffic split (issue 11: routes[].upstreams, when, hashOn) over real
 * sockets: a real gateway process (uWS, 2 workers) in front of real
 * node:http upstreams that answer with their own name. The 90/10 split over
 * 10k keep-alive requests on several connections; hashOn by cookie, header
 * and peer address (clients bound to distinct 127.0.0.x addresses) stable
 * across connections and workers; `when` overrides by header and cookie;
 * weight 0 reached only through `when`; a reload from 90/10 to 50/50 under
 * load without a failed request; each upstream's own header edits,
 * timeouts, access log and breaker; the admin API's route listing.
 */
import { writeFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { Client, Pool, request } from 'undici';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { freePort as deadPort } from '../helpers/ports.js';

const TOKEN = 'split-test-token';
const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanup.length > 0) await cleanup.pop()!().catch(() => {});
});

async function gateway(config: Record<string, any>, workers = 2): Promise<Gateway> {
  const gw = await startGateway(baseConfig({ ...config, server: { workers, ...(config.server ?? {}) }, admin: { enabled: true } }), {
    env: { TURNPIKE_ADMIN_TOKEN: TOKEN },
  });
  cleanup.push(() => gw.stop());
  return gw;
}

/** An upstream that answers its name (and echoes x-plan, the request header its upstream-level plan sets); `/slow` after `slowMs`. */
async function named(name: string, slowMs = 0): Promise<Upstream & { hits: number }> {
  const u = Object.assign(await startUpstream((req, res) => {
    u.hits++;
    const answer = () => {
      res.writeHead(200, { 'content-type': 'text/plain', 'x-seen-plan': String(req.headers['x-plan'] ?? '') });
      res.end(name);
    };
    if (req.url!.startsWith('/api/slow') && slowMs > 0) setTimeout(answer, slowMs);
    else answer();
  }), { hits: 0 });
  u.seen.length = 0;
  // `seen` keeps every request: not wanted over 10k requests.
  u.seen.push = () => 0;
  cleanup.push(() => u.close());
  return u;
}

/** `n` GETs over a keep-alive pool of `connections`, `concurrency` at a time; the bodies' counts (or `error:<code>`). */
async function load(gw: Gateway, path: string, n: number, opts: { connections?: number; concurrency?: number; headers?: Record<string, string> } = {}): Promise<Record<string, number>> {
  const pool = new Pool(gw.url, { connections: opts.connections ?? 8, pipelining: 1 });
  const out: Record<string, number> = {};
  let next = 0;
  const worker = async () => {
    while (next < n) {
      next++;
      const r = await pool.request({ path, method: 'GET', headers: opts.headers });
      const body = await r.body.text();
      const k = r.statusCode === 200 ? body : `${r.statusCode}:${body}`;
      out[k] = (out[k] ?? 0) + 1;
    }
  };
  try {
    await Promise.all(Array.from({ length: opts.concurrency ?? 16 }, worker));
  } finally {
    await pool.close();
  }
  return out;
}

/** One GET on a fresh connection (optionally from a given local address): status and body. */
async function once(gw: Gateway, path: string, headers: Record<string, string> = {}, localAddress?: string): Promise<{ status: number; body: string; headers: Record<string, any> }> {
  const c = new Client(gw.url, { localAddress });
  try {
    const r = await c.request({ path, method: 'GET', headers });
    return { status: r.statusCode, body: await r.body.text(), headers: r.headers };
  } finally {
    await c.close();
  }
}

function codeOf(body: string): string | null {
  try {
    return JSON.parse(body).error?.code ?? null;
  } catch {
    return null;
  }
}

describe('traffic split (uWS, 2 workers)', () => {
  it('90/10 without hashOn: within 5% over 10k keep-alive requests on 8 connections', async () => {
    const [v1, v2] = [await named('v1'), await named('v2')];
    const gw = await gateway({
      upstreams: { v1: { targets: [v1.url] }, v2: { targets: [v2.url] } },
      routes: [{ id: 'api', path: '/api/*', upstreams: [{ name: 'v1', weight: 90 }, { name: 'v2', weight: 10 }] }],
    });
    const c = await load(gw, '/api/x', 10_000);
    expect(c['v1']! + c['v2']!).toBe(10_000);
    expect(Math.abs(c['v2']! - 1000)).toBeLessThanOrEqual(500);
    // Smooth weighted round robin is exact per worker to within one cycle: far tighter than 5%.
    expect(Math.abs(c['v2']! - 1000)).toBeLessThanOrEqual(20);
    expect([v1.hits, v2.hits]).toEqual([c['v1'], c['v2']]);
  }, 60_000);

  it('hashOn cookie, header and ip: the same key stays on one upstream across connections and workers; a missing key falls back to the address', async () => {
    const [a, b] = [await named('a'), await named('b')];
    const ups = [{ name: 'a', weight: 50 }, { name: 'b', weight: 50 }];
    const gw = await gateway({
      upstreams: { a: { targets: [a.url] }, b: { targets: [b.url] } },
      routes: [
        { id: 'cookie', path: '/c/*', upstreams: ups, hashOn: 'cookie:session' },
        { id: 'header', path: '/h/*', upstreams: ups, hashOn: 'header:x-user' },
        { id: 'ip', path: '/i/*', upstreams: ups, hashOn: 'ip' },
      ],
    });
    const seen = { cookie: new Map<string, Set<string>>(), header: new Map<string, Set<string>>() };
    const note = (m: Map<string, Set<string>>, k: string, v: string) => (m.get(k) ?? m.set(k, new Set()).get(k)!).add(v);
    // 60 keys x 4 rounds, each request on its own connection (SO_REUSEPORT spreads them over both workers).
    for (let round = 0; round < 4; round++) {
      await Promise.all(Array.from({ length: 60 }, async (_, k) => {
        const rc = await once(gw, '/c/x', { cookie: `theme=dark; session=s-${k}` });
        const rh = await once(gw, '/h/x', { 'x-user': `user-${k}` });
        expect([rc.status, rh.status]).toEqual([200, 200]);
        note(seen.cookie, `s-${k}`, rc.body);
        note(seen.header, `user-${k}`, rh.body);
      }));
    }
    for (const m of [seen.cookie, seen.header]) {
      expect([...m.values()].every((s) => s.size === 1)).toBe(true); // stable per key
      const onA = [...m.values()].filter((s) => s.has('a')).length;
      expect(onA).toBeGreaterThan(10); // and both upstreams get keys
      expect(onA).toBeLessThan(50);
    }
    // ip: clients bound to 127.0.0.2..41; each address stays put; a header/cookie route without its key agrees with the ip route.
    const byIp = new Map<string, Set<string>>();
    for (let round = 0; round < 3; round++) {
      await Promise.all(Array.from({ length: 40 }, async (_, k) => {
        const addr = `127.0.0.${k + 2}`;
        const ri = await once(gw, '/i/x', {}, addr);
        const rh = await once(gw, '/h/x', {}, addr);
        const rc = await once(gw, '/c/x', { cookie: 'theme=dark' }, addr);
        expect([rh.body, rc.body]).toEqual([ri.body, ri.body]);
        note(byIp, addr, ri.body);
      }));
    }
    expect([...byIp.values()].every((s) => s.size === 1)).toBe(true);
    const onA = [...byIp.values()].filter((s) => s.has('a')).length;
    expect(onA).toBeGreaterThan(5);
    expect(onA).toBeLessThan(35);
  }, 60_000);

  it('when: a header or cookie with exactly the value picks its upstream whatever the weights; other values do not; weight 0 only through when', async () => {
    const [v1, v2, v3] = [await named('v1'), await named('v2'), await named('v3')];
    const gw = await gateway({
      upstreams: { v1: { targets: [v1.url] }, v2: { targets: [v2.url] }, v3: { targets: [v3.url] } },
      routes: [{
        id: 'api', path: '/api/*', hashOn: 'cookie:session',
        upstreams: [
          { name: 'v1', weight: 100 },
          { name: 'v2', weight: 0, when: { header: 'X-Canary', equals: 1 } },
          { name: 'v3', weight: 0, when: { cookie: 'canary', equals: 'always' } },
        ],
      }],
    });
    const cases: [Record<string, string>, string][] = [
      [{}, 'v1'],
      [{ 'x-canary': '1' }, 'v2'],
      [{ 'x-canary': '0' }, 'v1'],
      [{ 'x-canary': '11' }, 'v1'],
      [{ cookie: 'canary=always' }, 'v3'],
      [{ cookie: 'session=abc; canary=always' }, 'v3'],
      [{ cookie: 'canary=Always' }, 'v1'],
      [{ cookie: 'xcanary=always' }, 'v1'],
      [{ cookie: 'canary=always', 'x-canary': '1' }, 'v2'], // first in list order
    ];
    for (const [headers, want] of cases) {
      const c = await load(gw, '/api/x', 40, { headers, connections: 4, concurrency: 4 });
      expect([headers, c]).toEqual([headers, { [want]: 40 }]);
    }
    // Weight 0: 2000 requests without the header or cookie never reach v2 or v3.
    const plain = await load(gw, '/api/x', 2000);
    expect(plain).toEqual({ v1: 2000 });
  }, 60_000);

  it('a reload from 90/10 to 50/50 under load fails no request, and the new weights apply', async () => {
    const [v1, v2] = [await named('v1'), await named('v2')];
    const config = (w1: number, w2: number) => baseConfig({
      server: { workers: 2 }, admin: { enabled: true },
      upstreams: { v1: { targets: [v1.url] }, v2: { targets: [v2.url] } },
      routes: [{ id: 'api', path: '/api/*', upstreams: [{ name: 'v1', weight: w1 }, { name: 'v2', weight: w2 }] }],
    });
    const gw = await gateway(config(90, 10));
    const pool = new Pool(gw.url, { connections: 8 });
    cleanup.push(() => pool.close());
    let stop = false;
    const failures: string[] = [];
    let okCount = 0;
    const loop = async () => {
      while (!stop) {
        try {
          const r = await pool.request({ path: '/api/x', method: 'GET' });
          const body = await r.body.text();
          if (r.statusCode !== 200) failures.push(`${r.statusCode} ${body}`);
          else okCount++;
        } catch (err) {
          failures.push(String(err));
        }
      }
    };
    const loops = Array.from({ length: 8 }, loop);
    await expect.poll(() => okCount, { timeout: 10_000 }).toBeGreaterThan(500);
    const mark = gw.logs.length;
    writeFileSync(gw.configFile, JSON.stringify(config(50, 50)));
    gw.proc.kill('SIGHUP');
    await expect.poll(() => gw.logs.slice(mark).some((l) => l.includes('"msg":"config reloaded"')), { timeout: 10_000 }).toBe(true);
    const afterReload = okCount;
    await expect.poll(() => okCount - afterReload, { timeout: 10_000 }).toBeGreaterThan(500);
    stop = true;
    await Promise.all(loops);
    expect(failures).toEqual([]);
    const c = await load(gw, '/api/x', 4000);
    expect(Math.abs(c['v2']! - 2000)).toBeLessThanOrEqual(200);
  }, 60_000);

  it('each upstream\'s own header edits, timeouts, access log upstream and breaker apply; the admin API lists the split', async () => {
    const v1 = await named('v1', 300);
    const v2 = await named('v2', 1000);
    const dead = await deadPort();
    const gw = await gateway({
      upstreams: {
        v1: { targets: [v1.url], timeouts: { responseMs: 5000 }, headers: { request: { set: { 'x-plan': 'v1' } }, response: { set: { 'x-upstream-plan': 'v1' } } } },
        v2: { targets: [v2.url], timeouts: { responseMs: 200 }, headers: { request: { set: { 'x-plan': 'v2' } }, response: { set: { 'x-upstream-plan': 'v2' } } } },
        broken: { targets: [`http://127.0.0.1:${dead}`], breaker: { failureThreshold: 2, failureRate: 0, openMs: 60_000 } },
      },
      routes: [
        {
          id: 'api', path: '/api/*', headers: { response: { set: { 'x-route': 'api' } } },
          upstreams: [{ name: 'v1', weight: 1 }, { name: 'v2', weight: 0, when: { header: 'x-canary', equals: '1' } }],
        },
        { id: 'fragile', path: '/fragile/*', upstreams: [{ name: 'v1', weight: 1 }, { name: 'broken', weight: 0, when: { header: 'x-canary', equals: '1' } }] },
      ],
    }, 1);
    const r1 = await once(gw, '/api/x', { 'x-request-id': 'split-v1' });
    expect([r1.status, r1.body, r1.headers['x-seen-plan'], r1.headers['x-upstream-plan'], r1.headers['x-route']]).toEqual([200, 'v1', 'v1', 'v1', 'api']);
    const r2 = await once(gw, '/api/x', { 'x-canary': '1', 'x-request-id': 'split-v2' });
    expect([r2.status, r2.body, r2.headers['x-seen-plan'], r2.headers['x-upstream-plan'], r2.headers['x-route']]).toEqual([200, 'v2', 'v2', 'v2', 'api']);
    // Timeouts: v1 (5 s) waits out its 300 ms answer; v2 (200 ms) gives up on its 1 s one.
    const s1 = await once(gw, '/api/slow');
    expect([s1.status, s1.body]).toEqual([200, 'v1']);
    const s2 = await once(gw, '/api/slow', { 'x-canary': '1', 'x-request-id': 'split-v2-slow' });
    expect([s2.status, codeOf(s2.body)]).toEqual([504, 'upstream_timeout']);
    // The access log names the chosen upstream.
    await expect.poll(() => gw.logs.filter((l) => l.includes('"request_id":"split-')).length, { timeout: 5000 }).toBe(3);
    const access = (id: string) => JSON.parse(gw.logs.find((l) => l.includes(`"request_id":"${id}"`))!);
    expect([access('split-v1').upstream, access('split-v2').upstream, access('split-v2-slow').upstream]).toEqual(['v1', 'v2', 'v2']);
    expect(access('split-v2').target).toBe(v2.url);
    // broken's breaker: two connect failures, then its own 503 circuit_open at once; v1 keeps serving the rest of the route.
    const f = [];
    for (let i = 0; i < 3; i++) f.push(await once(gw, '/fragile/x', { 'x-canary': '1' }));
    expect(f.map((r) => [r.status, codeOf(r.body)])).toEqual([[502, 'upstream_connect_failed'], [502, 'upstream_connect_failed'], [503, 'circuit_open']]);
    expect(await load(gw, '/fragile/x', 50)).toEqual({ v1: 50 });
    // The admin API's route listing shows the split as configured.
    const r = await request(`http://127.0.0.1:${gw.adminPort}/admin/routes`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(r.statusCode).toBe(200);
    const api = ((await r.body.json()) as any).items.find((x: any) => x.id === 'api');
    expect(api).toMatchObject({
      upstream: null, hashOn: null,
      upstreams: [{ name: 'v1', weight: 1, when: null }, { name: 'v2', weight: 0, when: { header: 'x-canary', equals: '1' } }],
    });
    // Requests of a split route count under its upstreams' names (per upstream: the target metrics).
    const m = await (await request(`http://127.0.0.1:${gw.adminPort}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).body.text();
    expect(m).toMatch(/turnpike_requests_total\{route="api",method="GET",code="200",upstream="v1,v2"\} [1-9]/);
  }, 60_000);
});
