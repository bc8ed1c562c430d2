/**
 * Upstream resilience (issue 11) over real sockets, against real gateway
 * processes and real upstream servers started and stopped by the tests:
 * circuit breakers shared by every worker, the half-open probe count across
 * 2 workers under concurrent load, doubled open time, exact fallback
 * bytes, maxInFlight, active health checks, outlier ejection capped by
 * maxEjectionPercent, p2c.
 */
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { Errors, errorBody } from '../../common/errors.js';
import { freePort as deadPort } from '../helpers/ports.js';

const TOKEN = 'resilience-test-token';
const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanup.length > 0) await cleanup.pop()!().catch(() => {});
});

async function gateway(config: Record<string, any>, workers = 1): Promise<Gateway> {
  const gw = await startGateway(baseConfig({ ...config, server: { workers, ...(config.server ?? {}) }, admin: { enabled: true } }), {
    env: { TURNPIKE_ADMIN_TOKEN: TOKEN },
  });
  cleanup.push(() => gw.stop());
  return gw;
}

async function upstream(handler?: Parameters<typeof startUpstream>[0]): Promise<Upstream> {
  const u = await startUpstream(handler);
  cleanup.push(() => u.close());
  return u;
}

async function get(gw: Gateway, path: string, method = 'GET'): Promise<{ status: number; body: string; headers: Record<string, string | string[] | undefined> }> {
  const r = await request(`${gw.url}${path}`, { method: method as 'GET' });
  const body = await r.body.text();
  return { status: r.statusCode, body, headers: r.headers };
}

async function upstreamsState(gw: Gateway): Promise<any[]> {
  const r = await request(`http://127.0.0.1:${gw.adminPort}/admin/upstreams?limit=100`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(r.statusCode).toBe(200);
  return ((await r.body.json()) as any).items;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function codeOf(body: string): string | null {
  try {
    return JSON.parse(body).error?.code ?? null;
  } catch {
    return null;
  }
}

describe('circuit breaker', () => {
  it('opens after failureThreshold failures, answers circuit_open at once (HEAD too), half-opens after openMs and closes on success', async () => {
    let failing = true;
    const up = await upstream((_req, res) => {
      res.writeHead(failing ? 500 : 200, { 'content-type': 'text/plain' });
      res.end(failing ? 'boom' : 'ok');
    });
    const gw = await gateway({
      upstreams: { app: { targets: [up.url], breaker: { failureThreshold: 3, failureRate: 0, openMs: 400, maxOpenMs: 5000 } } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    for (let i = 0; i < 3; i++) expect((await get(gw, '/x')).status).toBe(500);
    const seen = up.seen.length;
    const refused = await get(gw, '/x');
    expect(refused.status).toBe(503);
    expect(codeOf(refused.body)).toBe('circuit_open');
    expect(refused.headers['content-type']).toBe('application/json');
    const head = await get(gw, '/x', 'HEAD');
    expect(head.status).toBe(503);
    expect(head.body).toBe('');
    expect(Number(head.headers['content-length'])).toBe(Buffer.byteLength(errorBody(Errors.CIRCUIT_OPEN, String(head.headers['x-request-id']))));
    expect(up.seen.length).toBe(seen); // nothing reached the target while open
    let state = (await upstreamsState(gw))[0].targets[0].state;
    expect(state.breaker).toBe('open');
    expect(state.openUntil).not.toBeNull();
    failing = false;
    await sleep(450);
    expect((await get(gw, '/x')).status).toBe(200); // the probe
    expect((await get(gw, '/x')).status).toBe(200); // closed again
    state = (await upstreamsState(gw))[0].targets[0].state;
    expect(state.breaker).toBe('closed');
    const metrics = await (await request(`http://127.0.0.1:${gw.adminPort}/metrics`)).body.text();
    expect(metrics).toContain(`turnpike_circuit_breaker_state{upstream="app",target="${up.url}"} 0`);
    expect(metrics).toContain(`turnpike_circuit_breaker_transitions_total{upstream="app",target="${up.url}",to="open"} 1`);
    expect(metrics).toContain(`turnpike_circuit_breaker_transitions_total{upstream="app",target="${up.url}",to="half_open"} 1`);
    expect(metrics).toContain(`turnpike_circuit_breaker_transitions_total{upstream="app",target="${up.url}",to="closed"} 1`);
    expect(metrics).toMatch(/turnpike_gateway_errors_total\{reason="circuit_open"\} 2/);
  });

  it('opens on a connect failure too, and reopens for twice as long when a probe fails', async () => {
    const port = await deadPort();
    const gw = await gateway({
      upstreams: { app: { targets: [`http://127.0.0.1:${port}`], breaker: { failureThreshold: 2, failureRate: 0, openMs: 300, maxOpenMs: 10_000 } } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    expect((await get(gw, '/x')).status).toBe(502);
    expect((await get(gw, '/x')).status).toBe(502);
    expect(codeOf((await get(gw, '/x')).body)).toBe('circuit_open');
    await sleep(350);
    // The probe fails: open again, now for 600 ms.
    expect((await get(gw, '/x')).status).toBe(502);
    const t0 = Date.now();
    const st = (await upstreamsState(gw))[0].targets[0].state;
    expect(st.breaker).toBe('open');
    expect(st.trips).toBe(2);
    const openFor = Date.parse(st.openUntil) - t0;
    expect(openFor).toBeGreaterThan(450);
    expect(openFor).toBeLessThanOrEqual(650);
    await sleep(350);
    expect(codeOf((await get(gw, '/x')).body)).toBe('circuit_open'); // 300 ms would have half-opened by now
  });

  it('half-open lets exactly halfOpenProbes requests through while 2 workers take concurrent load', async () => {
    let failing = true;
    let probesSeen = 0;
    const up = await upstream((_req, res) => {
      if (failing) {
        res.writeHead(503);
        res.end();
        return;
      }
      probesSeen++;
      // Slow probes: the load below keeps arriving while they are out.
      setTimeout(() => { res.writeHead(200); res.end('ok'); }, 400);
    });
    const gw = await gateway({
      upstreams: { app: { targets: [up.url], breaker: { failureThreshold: 4, failureRate: 0, openMs: 500, halfOpenProbes: 3 } } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    }, 2);
    // Trip it (connections spread over both workers: one shared breaker).
    await Promise.all(Array.from({ length: 8 }, () => get(gw, '/x')));
    expect(codeOf((await get(gw, '/x')).body)).toBe('circuit_open');
    failing = false;
    await sleep(550);
    // 60 concurrent requests on 60 connections (both workers) the moment it may half-open.
    const results = await Promise.all(Array.from({ length: 60 }, async () => {
      const r = await request(gw.url + '/x', { reset: true });
      const body = await r.body.text();
      return r.statusCode === 200 ? 'ok' : codeOf(body);
    }));
    expect(results.filter((r) => r === 'ok').length).toBe(3);
    expect(results.filter((r) => r === 'circuit_open').length).toBe(57);
    expect(probesSeen).toBe(3);
    // All three succeeded: closed.
    expect((await get(gw, '/x')).status).toBe(200);
    expect((await upstreamsState(gw))[0].targets[0].state.breaker).toBe('closed');
  });

  it('answers the fallback, exact bytes, while open', async () => {
    const port = await deadPort();
    const body = '{"degraded":true,"note":"é ✓"}';
    const gw = await gateway({
      upstreams: {
        app: {
          targets: [`http://127.0.0.1:${port}`],
          breaker: { failureThreshold: 1, openMs: 60_000, fallback: { status: 200, body, headers: { 'content-type': 'application/json', 'x-fallback': 'yes' } } },
        },
      },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    expect((await get(gw, '/x')).status).toBe(502);
    const raw = await new Promise<Buffer>((resolve, reject) => {
      const s = net.connect(gw.port, '127.0.0.1', () => s.write('GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n'));
      const chunks: Buffer[] = [];
      s.on('data', (c) => chunks.push(c));
      s.on('end', () => resolve(Buffer.concat(chunks)));
      s.on('error', reject);
    });
    const text = raw.toString('latin1');
    const split = raw.indexOf('\r\n\r\n');
    expect(text.startsWith('HTTP/1.1 200 OK\r\n')).toBe(true);
    expect(text.toLowerCase()).toContain('\r\nx-fallback: yes\r\n');
    expect(text.toLowerCase()).toContain('\r\ncontent-type: application/json\r\n');
    expect(raw.subarray(split + 4).equals(Buffer.from(body, 'utf8'))).toBe(true);
    const head = await get(gw, '/x', 'HEAD');
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
    expect(Number(head.headers['content-length'])).toBe(Buffer.byteLength(body));
  });

  it('maxInFlight: 503 upstream_overloaded past the bound', async () => {
    const up = await upstream((_req, res) => setTimeout(() => { res.writeHead(200); res.end('ok'); }, 300));
    const gw = await gateway({
      upstreams: { app: { targets: [up.url], breaker: { maxInFlight: 2 } } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    const results = await Promise.all(Array.from({ length: 5 }, async () => {
      const r = await request(gw.url + '/x', { reset: true });
      const body = await r.body.text();
      return r.statusCode === 200 ? 'ok' : codeOf(body);
    }));
    expect(results.filter((r) => r === 'ok').length).toBe(2);
    expect(results.filter((r) => r === 'upstream_overloaded').length).toBe(3);
    const metrics = await (await request(`http://127.0.0.1:${gw.adminPort}/metrics`)).body.text();
    expect(metrics).toContain('turnpike_upstream_overloaded_total{upstream="app"} 3');
    // The OpenAPI document describes the state the endpoint answers with.
    const doc = (await (await request(`http://127.0.0.1:${gw.adminPort}/admin/openapi.json`, { headers: { authorization: `Bearer ${TOKEN}` } })).body.json()) as any;
    expect(doc.paths['/admin/upstreams'].get.responses['200'].content['application/json'].schema).toEqual({ $ref: '#/components/schemas/UpstreamStatePage' });
    expect(Object.keys(doc.components.schemas.UpstreamTargetState.properties)).toEqual([
      'health', 'breaker', 'openUntil', 'ejectedUntil', 'inFlight', 'recentFailures', 'consecutiveFailures', 'ejections', 'trips',
    ]);
    expect((await upstreamsState(gw))[0].targets[0].state.inFlight).toBe(0);
  });
});

describe('shared state lifetime', () => {
  it('an open breaker stays open across a reload (target unchanged) and a worker replacement; a slow request\'s in-flight count is given back when its worker dies', async () => {
    const port = await deadPort();
    const target = `http://127.0.0.1:${port}`;
    const slow = await upstream((_req, res) => setTimeout(() => { res.writeHead(200); res.end('late'); }, 5000));
    const config = (extraRoute: boolean) => baseConfig({
      server: { workers: 1 }, admin: { enabled: true },
      upstreams: {
        app: { targets: [target], breaker: { failureThreshold: 2, openMs: 60_000 } },
        slow: { targets: [slow.url], balance: 'p2c' },
      },
      routes: [
        { id: 'slow', path: '/slow', upstream: 'slow' },
        { id: 'app', path: '/*', upstream: 'app' }, ...(extraRoute ? [{ id: 'extra', path: '/extra', upstream: 'app' }] : []),
      ],
    });
    const gw = await startGateway(config(false), { env: { TURNPIKE_ADMIN_TOKEN: TOKEN, TURNPIKE_TEST_HOOKS: '1' } });
    cleanup.push(() => gw.stop());
    await get(gw, '/x');
    await get(gw, '/x');
    expect(codeOf((await get(gw, '/x')).body)).toBe('circuit_open');
    // Reload: a new route, the same upstream and target.
    writeFileSync(gw.configFile, JSON.stringify(config(true)));
    const mark = gw.logs.length;
    gw.proc.kill('SIGHUP');
    await expect.poll(() => gw.logs.slice(mark).some((l) => l.includes('"msg":"config reloaded"')), { timeout: 10_000 }).toBe(true);
    expect(codeOf((await get(gw, '/extra')).body)).toBe('circuit_open');
    // A request in flight to `slow` when the worker dies.
    const lost = request(gw.url + '/slow').then((r) => r.body.text(), () => 'reset');
    await expect.poll(() => slow.seen.length, { timeout: 5000 }).toBe(1);
    expect((await upstreamsState(gw)).find((u) => u.name === 'slow').targets[0].state.inFlight).toBe(1);
    // The worker dies (SIGUSR2 with test hooks: worker 0 throws) and is replaced.
    gw.proc.kill('SIGUSR2');
    await expect.poll(() => gw.logs.slice(mark).some((l) => l.includes('worker exited; restarting')), { timeout: 10_000 }).toBe(true);
    await expect.poll(async () => { try { return (await get(gw, '/x')).status; } catch { return 0; } }, { timeout: 10_000 }).toBe(503);
    expect(codeOf((await get(gw, '/x')).body)).toBe('circuit_open');
    const ups = await upstreamsState(gw);
    expect(ups.find((u) => u.name === 'app').targets[0].state.breaker).toBe('open');
    expect(ups.find((u) => u.name === 'slow').targets[0].state.inFlight).toBe(0);
    expect(await lost).toBe('reset');
  });
});

describe('health and ejection', () => {
  it('an active check ejects a target and restores it', async () => {
    let healthy = true;
    const a = await upstream((req, res) => {
      if (req.url === '/health') { res.writeHead(healthy ? 200 : 500); res.end(); return; }
      res.writeHead(200); res.end('a');
    });
    const b = await upstream((req, res) => { res.writeHead(200); res.end(req.url === '/health' ? '' : 'b'); });
    const gw = await gateway({
      upstreams: { app: { targets: [a.url, b.url], healthCheck: { path: '/health', intervalMs: 100, timeoutMs: 80, healthyThreshold: 2, unhealthyThreshold: 2 } } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    await sleep(350);
    let st = await upstreamsState(gw);
    expect(st[0].targets.map((t: any) => t.state.health)).toEqual(['healthy', 'healthy']);
    healthy = false;
    await sleep(400);
    st = await upstreamsState(gw);
    expect(st[0].targets[0].state.health).toBe('unhealthy');
    const bodies = await Promise.all(Array.from({ length: 10 }, async () => (await get(gw, '/x')).body));
    expect(bodies.every((x) => x === 'b')).toBe(true);
    healthy = true;
    await sleep(400);
    expect((await upstreamsState(gw))[0].targets[0].state.health).toBe('healthy');
    const again = [];
    for (let i = 0; i < 6; i++) again.push((await get(gw, '/x')).body);
    expect(again).toContain('a');
    const metrics = await (await request(`http://127.0.0.1:${gw.adminPort}/metrics`)).body.text();
    expect(metrics).toMatch(new RegExp(`turnpike_upstream_health_checks_total\\{upstream="app",target="${a.url}",result="failure"\\} [1-9]`));
  });

  it('no healthy target left: 503 no_healthy_upstream', async () => {
    const a = await upstream((req, res) => { res.writeHead(req.url === '/health' ? 500 : 200); res.end(); });
    const gw = await gateway({
      upstreams: { app: { targets: [a.url], healthCheck: { intervalMs: 100, timeoutMs: 80, unhealthyThreshold: 1 } } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    await sleep(300);
    const r = await get(gw, '/x');
    expect(r.status).toBe(503);
    expect(codeOf(r.body)).toBe('no_healthy_upstream');
  });

  it('outlier ejection never ejects more than maxEjectionPercent of the targets', async () => {
    const bad = await Promise.all([0, 1, 2].map(() => upstream((_req, res) => { res.writeHead(500); res.end(); })));
    const good = await upstream((_req, res) => { res.writeHead(200); res.end('good'); });
    const targets = [...bad.map((u) => u.url), good.url];
    const gw = await gateway({
      upstreams: { app: { targets, outlierDetection: { consecutiveFailures: 2, baseEjectionMs: 60_000, maxEjectionPercent: 50 } } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    for (let i = 0; i < 40; i++) await get(gw, '/x');
    const st = (await upstreamsState(gw))[0].targets;
    const ejected = st.filter((t: any) => t.state.ejectedUntil !== null);
    expect(ejected.length).toBe(2); // 50% of 4
    expect(st[3].state.ejectedUntil).toBeNull();
    const metrics = await (await request(`http://127.0.0.1:${gw.adminPort}/metrics`)).body.text();
    const total = [...metrics.matchAll(/turnpike_upstream_ejections_total\{[^}]*\} (\d+)/g)].reduce((n, m) => n + Number(m[1]), 0);
    expect(total).toBe(2);
  });
});

describe('p2c', () => {
  it('prefers the idle target', async () => {
    const slow = await upstream((_req, res) => setTimeout(() => { res.writeHead(200); res.end('slow'); }, 1500));
    const fast = await upstream((_req, res) => { res.writeHead(200); res.end('fast'); });
    const gw = await gateway({
      upstreams: { app: { targets: [slow.url, fast.url], balance: 'p2c' } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    });
    // Occupy the slow target with one request first, then everything else goes to the idle one.
    const pending: Promise<unknown>[] = [];
    for (let i = 0; i < 2 && slow.seen.length === 0; i++) {
      pending.push(get(gw, '/warm'));
      await sleep(50);
    }
    while (slow.seen.length === 0) {
      pending.push(get(gw, '/warm'));
      await sleep(50);
    }
    const bodies = [];
    for (let i = 0; i < 20; i++) bodies.push((await get(gw, '/x')).body);
    expect(bodies.every((b) => b === 'fast')).toBe(true);
    await Promise.all(pending);
  });
});

describe('Bun backend', () => {
  it('the same shared breaker across 2 Bun workers: opens, answers the fallback (HEAD too), half-opens and closes', async () => {
    let failing = true;
    const up = await upstream((_req, res) => { res.writeHead(failing ? 500 : 200); res.end('up'); });
    const gw = await startGateway(baseConfig({
      server: { backend: 'bun', workers: 2 }, admin: { enabled: true },
      upstreams: { app: { targets: [up.url], breaker: { failureThreshold: 2, failureRate: 0, openMs: 400, fallback: { status: 200, body: 'fallback ✓' } } } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    }), { runtime: 'bun', env: { TURNPIKE_ADMIN_TOKEN: TOKEN } });
    cleanup.push(() => gw.stop());
    const seen: string[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await request(gw.url + '/x', { reset: true });
      seen.push(`${r.statusCode} ${await r.body.text()}`);
    }
    expect(seen).toEqual(['500 up', '500 up', '200 fallback ✓', '200 fallback ✓', '200 fallback ✓']);
    const head = await request(gw.url + '/x', { method: 'HEAD' });
    await head.body.text();
    expect(Number(head.headers['content-length'])).toBe(Buffer.byteLength('fallback ✓'));
    failing = false;
    await sleep(450);
    expect((await get(gw, '/x')).body).toBe('up');
    expect((await upstreamsState(gw))[0].targets[0].state.breaker).toBe('closed');
  });
});
