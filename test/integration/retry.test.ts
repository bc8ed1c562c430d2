/**
 * Upstream retries with budgets (issue 11, "Retries") over real sockets:
 * real gateway processes (uWS on Node, and the Bun backend for the key
 * cases) in front of real upstream servers the tests start, stop, or make
 * fail (refuse, reset, hang, answer 5xx). Checked by outcome: what the
 * client got, how many tries each upstream saw, the bytes they saw, the
 * metrics and the breaker's state. No timing is asserted.
 */
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startRawUpstream, startUpstream, type Upstream } from '../helpers/upstream.js';
import { scrape, sampleValue } from '../helpers/metrics.js';
import { RETRY_BODY_MAX_BYTES, RETRY_BUDGET_MIN_RETRIES, RETRY_BUDGET_WINDOW_MS } from '../../common/config/retry.js';
import { freePort as deadPort } from '../helpers/ports.js';

const TOKEN = 'retry-test-token';
const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanup.length > 0) await cleanup.pop()!().catch(() => {});
});

type Runtime = 'node' | 'bun';

async function gateway(runtime: Runtime, config: Record<string, any>, workers = 1): Promise<Gateway> {
  const gw = await startGateway(baseConfig({ ...config, server: { workers, ...(config.server ?? {}) }, admin: { enabled: true } }), {
    runtime, env: { TURNPIKE_ADMIN_TOKEN: TOKEN },
  });
  cleanup.push(() => gw.stop());
  return gw;
}

async function upstream(handler?: Parameters<typeof startUpstream>[0]): Promise<Upstream> {
  const u = await startUpstream(handler);
  cleanup.push(() => u.close());
  return u;
}

/** An upstream answering `status` with body `name n` (n: its count of requests), after reading the request. */
function answering(name: string, status: number): Promise<Upstream> {
  let n = 0;
  return upstream((_req, res) => {
    n++;
    res.writeHead(status, { 'content-type': 'text/plain' });
    res.end(`${name} ${n}`);
  });
}

interface Answer { status: number; body: string }

/** One request on a connection of its own (so that requests spread over the gateway's workers). */
function send(gw: Gateway, path: string, method = 'GET', body?: Buffer, chunked = false): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = {};
    if (body !== undefined && !chunked) headers['content-length'] = body.length;
    const req = http.request(`${gw.url}${path}`, { method, agent: false, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body !== undefined) {
      if (chunked) {
        // Two writes without a length: sent chunked.
        req.write(body.subarray(0, body.length >> 1));
        req.end(body.subarray(body.length >> 1));
        return;
      }
      req.end(body);
      return;
    }
    req.end();
  });
}

function codeOf(body: string): string | null {
  try {
    return JSON.parse(body).error?.code ?? null;
  } catch {
    return null;
  }
}

async function metric(gw: Gateway, series: string): Promise<number> {
  return sampleValue(await scrape(gw.adminPort!), series) ?? 0;
}

function retries(gw: Gateway, name: string, reason: string): Promise<number> {
  return metric(gw, `turnpike_upstream_retries_total{upstream="${name}",reason="${reason}"}`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const FAST = { backoffMs: 1, maxBackoffMs: 5 };

describe.each<Runtime>(['node', 'bun'])('retries (%s backend)', (runtime) => {
  it('a connect failure is retried on another target: every client gets 200 from the live one', async () => {
    const dead = `http://127.0.0.1:${await deadPort()}`;
    const live = await answering('live', 200);
    const gw = await gateway(runtime, {
      upstreams: { app: { targets: [dead, live.url], retry: { ...FAST } } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    const answers: Answer[] = [];
    for (let i = 0; i < 6; i++) answers.push(await send(gw, '/x'));
    expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 200, 200, 200]);
    expect(live.seen.length).toBe(6);
    expect(await retries(gw, 'app', 'connect_failure')).toBeGreaterThanOrEqual(1);
    expect(await retries(gw, 'app', 'connect_failure')).toBeLessThanOrEqual(6);
  });

  it('only listed methods: a POST is not retried unless its route opts in; attempts bound the tries; the last failure reaches the client', async () => {
    const a = await answering('a', 503);
    const gw = await gateway(runtime, {
      upstreams: { app: { targets: [a.url], retry: { ...FAST, attempts: 2 } } },
      routes: [
        { id: 'post', path: '/post/*', upstream: 'app', retry: { methods: ['POST'] } },
        { id: 'app', path: '/*', upstream: 'app' },
      ],
    });
    // GET: the first try and 2 retries (attempts 2 = 3 tries), then the last 503 as the target sent it.
    const get = await send(gw, '/x');
    expect(get).toEqual({ status: 503, body: 'a 3' });
    expect(a.seen.length).toBe(3);
    // POST on a route that does not opt in: one try.
    const post = await send(gw, '/x', 'POST', Buffer.from('hello'));
    expect(post).toEqual({ status: 503, body: 'a 4' });
    expect(a.seen.length).toBe(4);
    // POST on the route that opts in: retried, with its body each time.
    const opted = await send(gw, '/post/x', 'POST', Buffer.from('hello'));
    expect(opted).toEqual({ status: 503, body: 'a 7' });
    expect(a.seen.slice(4).map((s) => [s.method, s.body.toString()])).toEqual([['POST', 'hello'], ['POST', 'hello'], ['POST', 'hello']]);
    expect(await retries(gw, 'app', '503')).toBe(4);
  });

  it('balance: sticky: a retried request\'s cookie names the target that answered, so the client\'s next request goes straight there', async () => {
    const a = await answering('a', 503);
    const b = await answering('b', 200);
    const gw = await gateway(runtime, {
      upstreams: { app: { targets: [a.url, b.url], balance: 'sticky', retry: { ...FAST } } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    // Fresh clients are placed round robin: about half land on a first, are retried on b.
    for (let i = 0; i < 6; i++) {
      const r = await request(`${gw.url}/x`);
      expect(r.statusCode).toBe(200);
      expect(await r.body.text()).toMatch(/^b /);
      const set = r.headers['set-cookie'];
      const cookie = String(Array.isArray(set) ? set[0] : set).split(';')[0]!;
      expect(cookie).toMatch(/^tp_affinity=[0-9a-f]{16}$/);
      const seenByA = a.seen.length;
      const again = await request(`${gw.url}/x`, { headers: { cookie } });
      expect(await again.body.text()).toMatch(/^b /);
      expect(again.headers['set-cookie'], 'the cookie already names the target that answers').toBeUndefined();
      expect(a.seen.length, 'the cookie named a, which failed the first request').toBe(seenByA);
    }
    expect(a.seen.length).toBeGreaterThanOrEqual(1);
    expect(await retries(gw, 'app', '503')).toBe(a.seen.length);
  });

  it('the access log\'s retries field (opt-in) counts each request\'s retries, under the target that answered', async () => {
    const dead = `http://127.0.0.1:${await deadPort()}`;
    const live = await answering('live', 200);
    const gw = await gateway(runtime, {
      log: { access: { enabled: true, destination: 'stdout', format: 'json', fields: ['request_id', 'status', 'target', 'retries'] } },
      upstreams: { app: { targets: [dead, live.url], retry: { ...FAST } } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    for (let i = 0; i < 6; i++) expect((await send(gw, '/x')).status).toBe(200);
    const lines = async () => gw.logs.map((l) => { try { return JSON.parse(l); } catch { return null; } }).filter((j) => j !== null && 'retries' in j);
    const until = Date.now() + 5000;
    while ((await lines()).length < 6 && Date.now() < until) await sleep(20);
    const access = await lines();
    expect(access.length).toBe(6);
    for (const j of access) expect(Object.keys(j)).toEqual(['request_id', 'status', 'target', 'retries']);
    expect(access.map((j) => [j.status, j.target])).toEqual(Array(6).fill([200, live.url]));
    const total = access.reduce((n, j) => n + j.retries, 0);
    expect(total).toBeGreaterThanOrEqual(1);
    expect(total).toBe(await retries(gw, 'app', 'connect_failure'));
  });

  it('only listed conditions: a 500 is not retried when only 502 is listed', async () => {
    const a = await answering('a', 500);
    const gw = await gateway(runtime, {
      upstreams: { app: { targets: [a.url], retry: { ...FAST, on: ['502'] } } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    expect(await send(gw, '/x')).toEqual({ status: 500, body: 'a 1' });
    expect(a.seen.length).toBe(1);
    expect(await retries(gw, 'app', '500')).toBe(0);
  });

  it('a listed 503 is dropped and retried on the other target; all targets failing -> exactly attempts + 1 tries, spread over both', async () => {
    const a = await answering('a', 503);
    const b = await answering('b', 200);
    const gw = await gateway(runtime, {
      upstreams: { app: { targets: [a.url, b.url], retry: { ...FAST } } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    for (let i = 0; i < 4; i++) {
      const r = await send(gw, '/x');
      expect(r.status).toBe(200);
      expect(r.body).toMatch(/^b /);
    }
    expect(b.seen.length).toBe(4);
    expect(a.seen.length).toBeGreaterThanOrEqual(1);
    expect(await retries(gw, 'app', '503')).toBe(a.seen.length);

    const c = await answering('c', 502);
    const d = await answering('d', 502);
    const gw2 = await gateway(runtime, {
      upstreams: { app: { targets: [c.url, d.url], retry: { ...FAST, attempts: 2 } } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    const r = await send(gw2, '/x');
    expect(r.status).toBe(502);
    expect(c.seen.length + d.seen.length).toBe(3);
    // The first retry went to the target not tried yet.
    expect(c.seen.length).toBeGreaterThanOrEqual(1);
    expect(d.seen.length).toBeGreaterThanOrEqual(1);
  });

  it('a small body is kept and sent again byte for byte; a body past the keep limit is never retried', async () => {
    const a = await answering('a', 503);
    const b = await upstream((_req, res, body) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`b ${body.length}`);
    });
    const gw = await gateway(runtime, {
      upstreams: {
        app: { targets: [a.url, b.url], retry: { ...FAST, methods: ['POST'] } },
        one: { targets: [a.url], retry: { ...FAST, methods: ['POST'] } },
      },
      routes: [
        { id: 'one', path: '/one/*', upstream: 'one' },
        { id: 'app', path: '/*', upstream: 'app' },
      ],
    });
    const small = randomBytes(20_000);
    for (let i = 0; i < 2; i++) {
      expect(await send(gw, '/x', 'POST', small)).toEqual({ status: 200, body: `b ${small.length}` });
    }
    for (const s of [...a.seen, ...b.seen]) expect(s.body.equals(small)).toBe(true);
    expect(a.seen.length).toBeGreaterThanOrEqual(1);
    if (runtime === 'node') {
      // Chunked (no Content-Length): kept too on uWS.
      const seenBefore = b.seen.length;
      expect(await send(gw, '/x', 'POST', small, true)).toEqual({ status: 200, body: `b ${small.length}` });
      expect(b.seen[seenBefore]!.body.equals(small)).toBe(true);
    }
    // One target answering 503: a small body is retried (3 tries), a large one is not (1 try).
    const before = a.seen.length;
    expect((await send(gw, '/one/x', 'POST', Buffer.from('tiny'))).status).toBe(503);
    expect(a.seen.length - before).toBe(3);
    const large = randomBytes(RETRY_BODY_MAX_BYTES + 1000);
    const r = await send(gw, '/one/x', 'POST', large);
    expect(r.status).toBe(503);
    expect(a.seen.length - before).toBe(4);
    expect(a.seen[a.seen.length - 1]!.body.equals(large)).toBe(true);
  });

  it('per-try timeout: a hanging target is left after perTryTimeoutMs and the next one answers', async () => {
    const hung: http.ServerResponse[] = [];
    const hang = await upstream((_req, res) => { hung.push(res); });
    const live = await answering('live', 200);
    const gw = await gateway(runtime, {
      upstreams: {
        app: {
          targets: [hang.url, live.url], timeouts: { responseMs: 30_000 },
          retry: { ...FAST, on: ['timeout'], perTryTimeoutMs: 300 },
        },
      },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    for (let i = 0; i < 3; i++) expect(await send(gw, '/x')).toMatchObject({ status: 200 });
    expect(hang.seen.length).toBeGreaterThanOrEqual(1);
    expect(await retries(gw, 'app', 'timeout')).toBe(hang.seen.length);
  });

  it('the breaker records every try: a target answering 503 opens after failureThreshold tries the clients never saw', async () => {
    const a = await answering('a', 503);
    const b = await answering('b', 200);
    const gw = await gateway(runtime, {
      upstreams: {
        app: {
          targets: [a.url, b.url], retry: { ...FAST },
          breaker: { failureThreshold: 3, failureRate: 0, openMs: 60_000 },
        },
      },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    for (let i = 0; i < 10; i++) expect((await send(gw, '/x')).status).toBe(200);
    expect(a.seen.length).toBe(3);
    const st = await request(`http://127.0.0.1:${gw.adminPort}/admin/upstreams?limit=100`, { headers: { authorization: `Bearer ${TOKEN}` } });
    const items = ((await st.body.json()) as any).items;
    const target = items[0].targets.find((t: any) => t.url === a.url);
    expect(target.state.breaker).toBe('open');
  });

  it('the budget bounds retries across workers: floor + budgetPercent of the requests, the rest counted as exhausted', async () => {
    // Stay inside one budget window (the shared clock is Unix-aligned).
    const into = Date.now() % RETRY_BUDGET_WINDOW_MS;
    if (into > RETRY_BUDGET_WINDOW_MS - 4000) await sleep(RETRY_BUDGET_WINDOW_MS - into + 50);
    const a = await answering('a', 503);
    const gw = await gateway(runtime, {
      upstreams: { app: { targets: [a.url], retry: { ...FAST, attempts: 1, budgetPercent: 10 } } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    }, 2);
    const n = 40;
    for (let i = 0; i < n; i++) expect((await send(gw, '/x')).status).toBe(503);
    const made = await retries(gw, 'app', '503');
    const exhausted = await metric(gw, 'turnpike_upstream_retry_budget_exhausted_total{upstream="app"}');
    // The floor is always there; 10 % of 40 requests on top at most (per worker it would be twice the floor).
    expect(made).toBeGreaterThanOrEqual(RETRY_BUDGET_MIN_RETRIES);
    expect(made).toBeLessThanOrEqual(RETRY_BUDGET_MIN_RETRIES + n / 10);
    expect(made + exhausted).toBe(n);
    expect(a.seen.length).toBe(n + made);
  });
});

describe('retries (node backend): what only the uWS exchange can tell apart', () => {
  it('never after a response byte reached the client: head then reset -> no retry, connection closed; a reset before the head is retried', async () => {
    const mid = await startRawUpstream((_head, socket) => {
      socket.write('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc');
      setTimeout(() => socket.destroy(), 50);
    });
    cleanup.push(() => mid.close());
    const early = await startRawUpstream((_head, socket) => socket.destroy());
    cleanup.push(() => early.close());
    const gw = await gateway('node', {
      upstreams: {
        mid: { targets: [mid.url], retry: { ...FAST, on: ['reset', 'connect_failure', '502'] } },
        early: { targets: [early.url], retry: { ...FAST, on: ['reset'] } },
      },
      routes: [
        { id: 'mid', path: '/mid/*', upstream: 'mid' },
        { id: 'early', path: '/early/*', upstream: 'early' },
      ],
    });
    const r = await request(`${gw.url}/mid/x`);
    expect(r.statusCode).toBe(200);
    await expect(r.body.text()).rejects.toThrow();
    expect(mid.seen.length).toBe(1);
    expect(await retries(gw, 'mid', 'reset')).toBe(0);

    const e = await send(gw, '/early/x');
    expect(e.status).toBe(502);
    expect(codeOf(e.body)).toBe('upstream_reset');
    expect(early.seen.length).toBe(3);
    expect(await retries(gw, 'early', 'reset')).toBe(2);
    // Each failed try is an error-log line with its target and phase.
    await sleep(200);
    const lines = gw.logs.filter((l) => l.includes('retrying (try'));
    expect(lines.length).toBeGreaterThanOrEqual(2);
    expect(lines.some((l) => l.includes(early.url))).toBe(true);
  });

  it('a client that leaves during the backoff wait: the request ends, nothing stays counted in flight (gateway, targets)', async () => {
    const a = await answering('a', 503);
    const b = await answering('b', 200);
    const gw = await gateway('node', {
      upstreams: {
        app: {
          // round_robin: the first request goes to a (the breaker makes the upstream guarded: its in-flight counts are shown).
          targets: [a.url, b.url], retry: { backoffMs: 5000, maxBackoffMs: 5000 },
          breaker: { failureThreshold: 100, failureRate: 0 },
        },
      },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    for (let i = 0; i < 4; i++) {
      await new Promise<void>((resolve) => {
        const req = http.request(`${gw.url}/x`, { agent: false }, (res) => { res.resume(); res.on('end', resolve); });
        req.on('error', () => resolve());
        req.end();
        setTimeout(() => { req.destroy(); resolve(); }, 300);
      });
    }
    // At least one request met a's 503 first and was left waiting to retry when its client went.
    expect(await retries(gw, 'app', '503')).toBeGreaterThanOrEqual(1);
    await expect.poll(async () => metric(gw, 'turnpike_active_requests'), { timeout: 5000 }).toBe(0);
    const st = await request(`http://127.0.0.1:${gw.adminPort}/admin/upstreams?limit=100`, { headers: { authorization: `Bearer ${TOKEN}` } });
    const targets = ((await st.body.json()) as any).items[0].targets;
    expect(targets.map((t: any) => t.state.inFlight)).toEqual([0, 0]);
  });

  it('retries off: the plain path answers the failure at once (no retry counters shown)', async () => {
    const a = await answering('a', 503);
    const gw = await gateway('node', {
      upstreams: { app: { targets: [a.url] } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    expect(await send(gw, '/x')).toEqual({ status: 503, body: 'a 1' });
    expect(a.seen.length).toBe(1);
    expect(await scrape(gw.adminPort!)).not.toContain('turnpike_upstream_retries_total{upstream="app"');
  });
});
