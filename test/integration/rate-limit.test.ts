/**
 * Rate limits in one process, end to end: real gateway processes (2
 * workers), a real upstream, real clients on real sockets.
 *
 * - exactness across workers: a token bucket admits burst + rate × t, no
 *   more, no less, whichever worker serves (request ids carry the worker);
 * - a refused request consumes nothing from the policies before it;
 * - headers and the 429 body, exactly;
 * - keys: ip behind trusted proxies (right-most untrusted X-Forwarded-For
 *   hop; untrusted X-Forwarded-For ignored), header and query keys with
 *   their ip fallback, percent-decoded query values;
 * - a reload keeps the buckets of unchanged policies and starts changed ones afresh;
 * - decisions are counted in turnpike_rate_limit_decisions_total.
 */
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorBodyWith, Errors } from '../../common/errors.js';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { sampleValue } from '../helpers/metrics.js';
import { rawExchange } from '../helpers/raw-http.js';

let up: Upstream;

beforeAll(async () => {
  up = await startUpstream();
});

afterAll(async () => {
  await up.close();
});

interface Answer {
  status: number;
  headers: Headers;
  body: string;
}

async function get(gw: Gateway, path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Answer> {
  const r = await fetch(gw.url + path, { method, headers });
  return { status: r.status, headers: r.headers, body: await r.text() };
}

/** The worker that answered: request ids are `<prefix>-<worker index, base 36>-<counter>`. */
function workerOf(a: Answer): string {
  return (a.headers.get('x-request-id') ?? '').split('-')[1] ?? '';
}

const metric = sampleValue;

describe('one process, two workers: exact', () => {
  let gw: Gateway;

  beforeAll(async () => {
    gw = await startGateway(baseConfig({
      server: { workers: 2 },
      admin: { enabled: true, port: 0 },
      log: { access: { enabled: false } },
      upstreams: { u: { targets: [up.url] } },
      routes: [
        { id: 'exact', path: '/exact', upstream: 'u', rateLimit: [{ by: 'global', rate: 40, per: '1s', burst: 10 }] },
        { id: 'gcra', path: '/gcra', upstream: 'u', rateLimit: [{ by: 'global', rate: 40, per: '1s', burst: 10, algorithm: 'gcra' }] },
        { id: 'window', path: '/window', upstream: 'u', rateLimit: [{ by: 'global', rate: 15, per: '250ms', algorithm: 'fixed_window' }] },
        {
          id: 'chain', path: '/chain', upstream: 'u',
          rateLimit: [{ by: 'global', rate: 1000, per: '1m', burst: 1000 }, { by: 'header:x-k', rate: 1, per: '1d' }],
        },
      ],
    }));
  });

  afterAll(async () => {
    await gw.stop();
  });

  /**
   * 32 concurrent clients for ~1.5 s; admissions with their times (ms, this
   * clock): when the answer came, and `spans`, when it was sent and came (the
   * gateway decided in between).
   */
  async function push(path: string): Promise<{ admitted: number[]; spans: [number, number][]; refused: number; workers: Set<string>; firstAt: number }> {
    const t0 = performance.now();
    const admitted: number[] = [];
    const spans: [number, number][] = [];
    let refused = 0;
    const workers = new Set<string>();
    const until = t0 + 1500;
    let firstAt = 0;
    await Promise.all(Array.from({ length: 32 }, async () => {
      while (performance.now() < until) {
        const sent = performance.now();
        const a = await get(gw, path);
        if (firstAt === 0) firstAt = sent;
        workers.add(workerOf(a));
        if (a.status === 200) {
          admitted.push(performance.now());
          spans.push([sent, performance.now()]);
        } else {
          expect(a.status).toBe(429);
          refused++;
        }
      }
    }));
    return { admitted, spans, refused, workers, firstAt };
  }

  it.each(['exact', 'gcra'])('%s: admits burst + rate × t across both workers, however many clients push', async (path) => {
    const rate = 40; // per second
    const burst = 10;
    const { admitted, refused, workers, firstAt } = await push('/' + path);
    expect(workers.size, 'both workers served').toBe(2);
    expect(refused).toBeGreaterThan(admitted.length); // offered far more than the limit
    // The gateway decided between the first send and the last answer.
    const t = (Math.max(...admitted) - firstAt) / 1000;
    expect(admitted.length).toBeLessThanOrEqual(Math.floor(burst + rate * t) + 1);
    expect(admitted.length).toBeGreaterThanOrEqual(Math.floor(burst + rate * (t - 0.1)));
  });

  it('fixed_window: at most rate per window, across both workers', async () => {
    const { admitted, spans, workers } = await push('/window');
    expect(workers.size, 'both workers served').toBe(2);
    // Windows are aligned on multiples of 250 ms of Unix time; map this clock to it.
    const offset = Date.now() - performance.now();
    // Each admission was decided somewhere between its send and its answer, so
    // in one of the windows that interval touches. The limiter kept "at most 15
    // per window" iff the admissions can be given windows within their
    // intervals with at most 15 in each (earliest-deadline-first decides that
    // exactly). Checked this way, an answer that comes a window late on a loaded
    // machine is not a violation, and 16 decided inside one window is.
    // The gateway's clock and this one are both Date.now() at a start plus a monotonic clock: they
    // agree within ~2 ms (Date.now() is whole milliseconds); each interval is widened by 3 ms.
    const intervals = spans
      .map(([sent, came]) => [Math.floor((sent + offset - 3) / 250), Math.floor((came + offset + 3) / 250)] as const)
      .sort((a, b) => a[0] - b[0]);
    const open: number[] = []; // deadlines (last window) of admissions not yet given a window
    let next = 0;
    for (let w = intervals[0][0]; next < intervals.length || open.length > 0; w++) {
      while (next < intervals.length && intervals[next][0] <= w) open.push(intervals[next++][1]);
      open.sort((a, b) => a - b);
      open.splice(0, 15);
      expect(open.filter((deadline) => deadline <= w), `admissions that no window up to ${w} could hold`).toEqual([]);
    }
    // Offered far more than 15 per window for ~6 windows: every full window was used.
    expect(admitted.length).toBeGreaterThanOrEqual(15 * 5);
    expect(admitted.length).toBeLessThanOrEqual(15 * 8);
  });

  it('a request refused by a later policy consumes nothing from the earlier ones', async () => {
    const first = await get(gw, '/chain', { 'x-k': 'a' });
    expect(first.status).toBe(200);
    for (let i = 0; i < 20; i++) expect((await get(gw, '/chain', { 'x-k': 'a' })).status).toBe(429);
    // Only the one admitted request came out of the global bucket (1000 - 1 - this one).
    const other = await get(gw, '/chain', { 'x-k': 'b' });
    expect(other.status).toBe(200);
    expect(other.headers.get('ratelimit')).toMatch(/^"chain#0";r=998;t=\d+, "chain#1";r=0;t=\d+$/);
  });

  it('counts every decision per route, policy and result', async () => {
    const text = await (await fetch(`http://127.0.0.1:${gw.adminPort}/metrics`)).text();
    expect(metric(text, 'turnpike_rate_limit_decisions_total{route="chain",policy="chain#0",result="allowed"}')).toBe(2);
    expect(metric(text, 'turnpike_rate_limit_decisions_total{route="chain",policy="chain#1",result="limited"}')).toBe(20);
    expect(metric(text, 'turnpike_rate_limit_decisions_total{route="chain",policy="chain#1",result="allowed"}')).toBe(2);
    expect(metric(text, 'turnpike_gateway_errors_total{reason="rate_limited"}')).toBeGreaterThanOrEqual(20);
    expect(metric(text, 'turnpike_requests_total{route="chain",method="GET",code="429",upstream="u"}')).toBe(20);
    expect(metric(text, 'turnpike_rate_limit_table_capacity')).toBe(262144);
    expect(metric(text, 'turnpike_rate_limit_table_entries')).toBeGreaterThanOrEqual(3);
  });
});

describe('answers: headers and body', () => {
  let gw: Gateway;

  beforeAll(async () => {
    gw = await startGateway(baseConfig({
      log: { access: { enabled: false } },
      rateLimits: {
        tb: { by: 'header:x-k', rate: 10, per: '1m', burst: 3 },
        legacy: { by: 'header:x-k', rate: 5, per: '1h', algorithm: 'fixed_window', headers: 'legacy' },
        quiet: { by: 'header:x-k', rate: 2, per: '1m', headers: 'none' },
      },
      upstreams: { u: { targets: [up.url] } },
      routes: [
        { id: 'ietf', path: '/ietf', upstream: 'u', rateLimit: ['tb'] },
        { id: 'legacy', path: '/legacy', upstream: 'u', rateLimit: ['legacy'] },
        { id: 'quiet', path: '/quiet', upstream: 'u', rateLimit: ['quiet'] },
      ],
    }));
  });

  afterAll(async () => {
    await gw.stop();
  });

  it('ietf: RateLimit-Policy and RateLimit on admitted responses; 429 with Retry-After and the policy named', async () => {
    const h = { 'x-k': 'ietf-1' };
    const seen: string[] = [];
    for (let i = 0; i < 3; i++) {
      const a = await get(gw, '/ietf', h);
      expect(a.status).toBe(200);
      expect(a.headers.get('ratelimit-policy')).toBe('"tb";q=3;w=60');
      seen.push(a.headers.get('ratelimit')!);
    }
    // 10 per minute: a token every 6 s; the bucket is full again 6 s per missing token later.
    expect(seen).toEqual(['"tb";r=2;t=6', '"tb";r=1;t=12', '"tb";r=0;t=18']);
    const refused = await get(gw, '/ietf', h);
    expect(refused.status).toBe(429);
    expect(refused.headers.get('retry-after')).toBe('6');
    expect(refused.headers.get('ratelimit-policy')).toBe('"tb";q=3;w=60');
    expect(refused.headers.get('ratelimit')).toBe('"tb";r=0;t=6');
    expect(refused.headers.get('content-type')).toBe('application/json');
    const rid = refused.headers.get('x-request-id')!;
    expect(refused.body).toBe(errorBodyWith(Errors.RATE_LIMITED, 'Rate limit "tb" exceeded (10 requests per 1m, by header x-k); retry in 6 s.', rid));
    // Another key has its own bucket.
    expect((await get(gw, '/ietf', { 'x-k': 'ietf-2' })).status).toBe(200);
  });

  it('HEAD gets the same 429 head, with the Content-Length of the GET body', async () => {
    const h = { 'x-k': 'head-1' };
    for (let i = 0; i < 3; i++) await get(gw, '/ietf', h);
    const r = await get(gw, '/ietf', h, 'HEAD');
    expect(r.status).toBe(429);
    expect(r.body).toBe('');
    const rid = r.headers.get('x-request-id')!;
    const body = errorBodyWith(Errors.RATE_LIMITED, 'Rate limit "tb" exceeded (10 requests per 1m, by header x-k); retry in 6 s.', rid);
    expect(r.headers.get('content-length')).toBe(String(Buffer.byteLength(body)));
    expect(r.headers.get('retry-after')).toBe('6');
  });

  it('legacy: X-RateLimit-Limit/Remaining/Reset, no IETF headers', async () => {
    const a = await get(gw, '/legacy', { 'x-k': 'legacy-1' });
    expect(a.status).toBe(200);
    expect(a.headers.get('x-ratelimit-limit')).toBe('5');
    expect(a.headers.get('x-ratelimit-remaining')).toBe('4');
    const reset = Number(a.headers.get('x-ratelimit-reset'));
    // The fixed hour window ends on the next full UTC hour.
    const toHour = Math.ceil((3_600_000 - (Date.now() % 3_600_000)) / 1000);
    expect(Math.abs(reset - toHour)).toBeLessThanOrEqual(2);
    expect(a.headers.get('ratelimit')).toBeNull();
    expect(a.headers.get('ratelimit-policy')).toBeNull();
  });

  it('none: no rate-limit header on admitted responses; a refusal still says Retry-After', async () => {
    const h = { 'x-k': 'quiet-1' };
    for (let i = 0; i < 2; i++) {
      const a = await get(gw, '/quiet', h);
      expect(a.status).toBe(200);
      expect([...a.headers.keys()].filter((k) => k.includes('ratelimit'))).toEqual([]);
    }
    const r = await get(gw, '/quiet', h);
    expect(r.status).toBe(429);
    expect(r.headers.get('retry-after')).toBe('30');
    expect([...r.headers.keys()].filter((k) => k.includes('ratelimit'))).toEqual([]);
  });

  it('a refused request never reaches the upstream', async () => {
    const before = up.seen.filter((s) => s.headers['x-k'] === 'never-1').length;
    for (let i = 0; i < 6; i++) await get(gw, '/ietf', { 'x-k': 'never-1' });
    expect(up.seen.filter((s) => s.headers['x-k'] === 'never-1').length - before).toBe(3);
  });
});

describe('keys', () => {
  let trusted: Gateway;
  let plain: Gateway;
  const routes = [
    { id: 'ip', path: '/ip', upstream: 'u', rateLimit: [{ by: 'ip', rate: 1, per: '1d' }] },
    { id: 'q', path: '/q', upstream: 'u', rateLimit: [{ by: 'query:api_key', rate: 1, per: '1d' }] },
    { id: 'h', path: '/h', upstream: 'u', rateLimit: [{ by: 'header:x-tenant', rate: 1, per: '1d' }] },
  ];

  beforeAll(async () => {
    [trusted, plain] = await Promise.all([
      startGateway(baseConfig({
        server: { trustedProxies: ['127.0.0.0/8', '10.0.0.0/8'] },
        log: { access: { enabled: false } },
        upstreams: { u: { targets: [up.url] } },
        routes,
      })),
      startGateway(baseConfig({ log: { access: { enabled: false } }, upstreams: { u: { targets: [up.url] } }, routes })),
    ]);
  });

  afterAll(async () => {
    await Promise.all([trusted.stop(), plain.stop()]);
  });

  it('behind trusted proxies, the client is the right-most untrusted X-Forwarded-For hop', async () => {
    const xff = (v: string) => ({ 'x-forwarded-for': v });
    expect((await get(trusted, '/ip', xff('203.0.113.9, 10.1.2.3'))).status).toBe(200);
    // Same client behind another chain of trusted proxies: same bucket.
    expect((await get(trusted, '/ip', xff('198.51.100.1, 203.0.113.9, 10.9.9.9'))).status).toBe(429);
    // A forged left part does not make a new client.
    expect((await get(trusted, '/ip', xff('1.1.1.1, 203.0.113.9'))).status).toBe(429);
    // Another client: its own bucket.
    expect((await get(trusted, '/ip', xff('203.0.113.10'))).status).toBe(200);
    // No X-Forwarded-For: the peer (127.0.0.1) itself.
    expect((await get(trusted, '/ip')).status).toBe(200);
    expect((await get(trusted, '/ip')).status).toBe(429);
  });

  it('without trusted proxies, X-Forwarded-For is ignored: forging it gives no new bucket', async () => {
    expect((await get(plain, '/ip', { 'x-forwarded-for': '203.0.113.1' })).status).toBe(200);
    expect((await get(plain, '/ip', { 'x-forwarded-for': '203.0.113.2' })).status).toBe(429);
  });

  it('query keys are percent-decoded; a request without the key falls back to the client address', async () => {
    expect((await get(plain, '/q?api_key=A'))).toMatchObject({ status: 200 });
    expect((await get(plain, '/q?api_key=%41'))).toMatchObject({ status: 429 });
    expect((await get(plain, '/q?x=1&api_key=A&y=2'))).toMatchObject({ status: 429 });
    expect((await get(plain, '/q?api_key=B'))).toMatchObject({ status: 200 });
    // No key: keyed by ip (this client's first request by ip on /q).
    expect((await get(plain, '/q'))).toMatchObject({ status: 200 });
    expect((await get(plain, '/q?api_key='))).toMatchObject({ status: 429 });
  });

  it('header keys: one bucket per value; a header value equal to an address is not that address', async () => {
    expect((await get(plain, '/h', { 'x-tenant': 't1' })).status).toBe(200);
    expect((await get(plain, '/h', { 'x-tenant': 't1' })).status).toBe(429);
    expect((await get(plain, '/h', { 'x-tenant': 't2' })).status).toBe(200);
    // The client's fallback bucket (by ip, 127.0.0.1) is not the bucket of tenant "127.0.0.1".
    expect((await get(plain, '/h', { 'x-tenant': '127.0.0.1' })).status).toBe(200);
    expect((await get(plain, '/h')).status).toBe(200);
    expect((await get(plain, '/h')).status).toBe(429);
  });

  it('a header key sent on several lines is its last line (the one a proxy in front appends): lines put before it change nothing', async () => {
    const lines = async (...values: string[]) => {
      const { res, conn } = await rawExchange(plain.port, `GET /h HTTP/1.1\r\nHost: t\r\n${values.map((v) => `X-Tenant: ${v}\r\n`).join('')}Connection: close\r\n\r\n`);
      conn.close();
      return res.status;
    };
    expect(await lines('r1', 't8')).toBe(200);
    // The bucket is t8's, whatever comes before it (a client varying its own line gets no fresh key).
    expect(await lines('r2', 't8')).toBe(429);
    expect(await lines('r3', 'r4', 't8')).toBe(429);
    expect((await get(plain, '/h', { 'x-tenant': 't8' })).status).toBe(429);
    // And a line's whole value is the key: "r1, t8" on one line is another tenant.
    expect((await get(plain, '/h', { 'x-tenant': 'r1, t8' })).status).toBe(200);
  });
});

describe('reload', () => {
  it('keeps the buckets of unchanged policies and starts a changed policy afresh', async () => {
    const config = (rateB: number) => baseConfig({
      log: { access: { enabled: false } },
      rateLimits: {
        a: { by: 'global', rate: 5, per: '1h' },
        b: { by: 'global', rate: rateB, per: '1h' },
      },
      upstreams: { u: { targets: [up.url] } },
      routes: [
        { id: 'a', path: '/a', upstream: 'u', rateLimit: ['a'] },
        { id: 'b', path: '/b', upstream: 'u', rateLimit: ['b'] },
      ],
    });
    const gw = await startGateway(config(5));
    try {
      for (let i = 0; i < 5; i++) {
        expect((await get(gw, '/a')).status).toBe(200);
        expect((await get(gw, '/b')).status).toBe(200);
      }
      expect((await get(gw, '/a')).status).toBe(429);
      expect((await get(gw, '/b')).status).toBe(429);
      writeFileSync(gw.configFile, JSON.stringify(config(6)));
      const mark = gw.logs.length;
      gw.proc.kill('SIGHUP');
      await expect.poll(() => gw.logs.slice(mark).some((l) => l.includes('"msg":"config reloaded"')), { timeout: 10_000 }).toBe(true);
      // a did not change: still empty. b changed (rate 6): a fresh bucket of 6.
      expect((await get(gw, '/a')).status).toBe(429);
      const b = await get(gw, '/b');
      expect(b.status).toBe(200);
      expect(b.headers.get('ratelimit')).toBe('"b";r=5;t=600');
    } finally {
      await gw.stop();
    }
  });

  it('a replaced worker finds the buckets as they were', async () => {
    const gw = await startGateway(baseConfig({
      server: { workers: 2 },
      log: { access: { enabled: false } },
      upstreams: { u: { targets: [up.url] } },
      routes: [{ id: 'g', path: '/g', upstream: 'u', rateLimit: [{ by: 'global', rate: 5, per: '1h' }] }],
    }), { env: { TURNPIKE_TEST_HOOKS: '1' } });
    const fresh = (path: string) => get(gw, path, { connection: 'close' });
    try {
      for (let i = 0; i < 5; i++) expect((await fresh('/g')).status).toBe(200);
      const before = await fresh('/g');
      expect(before.status).toBe(429);
      const prefixes = new Set<string>();
      // Both workers' request-id prefixes, then crash worker 0 (test hook) and wait for its replacement.
      for (let i = 0; i < 20 && prefixes.size < 2; i++) prefixes.add((await fresh('/g')).headers.get('x-request-id')!.split('-').slice(0, 2).join('-'));
      gw.proc.kill('SIGUSR2');
      let replaced = false;
      const until = performance.now() + 5000;
      while (!replaced && performance.now() < until) {
        // A request that lands on the dying worker gets a reset (a crash loses what is in flight): try again.
        const a = await fresh('/g').catch(() => null);
        if (a === null) continue;
        const p = a.headers.get('x-request-id')!.split('-').slice(0, 2).join('-');
        if (!prefixes.has(p)) replaced = true;
        // Before, during and after the replacement: never admitted again.
        expect(a.status).toBe(429);
      }
      expect(replaced, 'a replacement worker answered').toBe(true);
    } finally {
      await gw.stop();
    }
  });
});
