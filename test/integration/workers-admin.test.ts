/**
 * Threads and the admin thread: several workers share the port and all
 * serve; /health and /metrics reflect what the workers did.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent, request } from 'undici';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

let up: Upstream;
let gw: Gateway;

beforeAll(async () => {
  up = await startUpstream();
  gw = await startGateway(baseConfig({
    server: { workers: 2 },
    admin: { enabled: true, port: 0 },
    upstreams: { up: { targets: [up.url] } },
    routes: [
      { id: 'all', path: '/*', methods: ['GET', 'HEAD'], upstream: 'up' },
    ],
  }));
});

afterAll(async () => {
  await gw?.stop();
  await up?.close();
});

describe('worker threads', () => {
  it('spreads connections over both workers (SO_REUSEPORT)', async () => {
    const workers = new Set<string>();
    // Fresh connections each time: the kernel picks a listener per connection.
    for (let i = 0; i < 60 && workers.size < 2; i++) {
      const agent = new Agent({ connections: 1 });
      const r = await request(gw.url + '/who', { dispatcher: agent });
      await r.body.dump();
      const rid = String(r.headers['x-request-id']);
      workers.add(rid.split('-')[1]!); // <process>-<worker>-<counter>
      await agent.close();
    }
    expect([...workers].sort()).toEqual(['0', '1']);
  });
});

describe('admin thread', () => {
  it('reports health with every worker', async () => {
    const r = await request(`http://127.0.0.1:${gw.adminPort}/health`);
    expect(r.statusCode).toBe(200);
    const body = await r.body.json() as any;
    expect(body.status).toBe('ok');
    expect(body.workers).toEqual([{ index: 0, state: 'ready' }, { index: 1, state: 'ready' }]);
  });

  it('exposes Prometheus metrics summed across workers', async () => {
    const before = await scrape();
    const n = 25;
    for (let i = 0; i < n; i++) {
      const agent = new Agent({ connections: 1 });
      await (await request(gw.url + '/m', { dispatcher: agent })).body.dump();
      await agent.close();
    }
    await (await request(gw.url + '/post-here', { method: 'POST', body: 'x' })).body.dump();
    const after = await scrape();
    const key = 'turnpike_requests_total{route="all",method="GET",code="200",upstream="up"}';
    expect((after.get(key) ?? 0) - (before.get(key) ?? 0)).toBe(n);
    expect(after.get('turnpike_requests_total{route="_none",method="POST",code="405",upstream="_none"}')).toBeGreaterThanOrEqual(1);
    expect(after.get('turnpike_gateway_errors_total{reason="method_not_allowed"}')).toBeGreaterThanOrEqual(1);
    expect(after.get('turnpike_request_duration_seconds_count{route="all"}')).toBeGreaterThanOrEqual(n);
    const target = `upstream="up",target="${up.url}"`;
    expect(after.get(`turnpike_upstream_latency_seconds_count{${target}}`)).toBeGreaterThanOrEqual(n);
    expect(after.get(`turnpike_upstream_requests_total{${target},code="200"}`)).toBeGreaterThanOrEqual(n);
    expect(after.get('turnpike_request_duration_seconds_bucket{route="all",le="+Inf"}'))
      .toBe(after.get('turnpike_request_duration_seconds_count{route="all"}'));
    expect(after.get('turnpike_active_requests')).toBe(0);
    // Keep-alive sockets to the upstream stay open and, with nothing in flight, all idle.
    const open = after.get(`turnpike_upstream_connections{${target},state="open"}`)!;
    expect(open).toBeGreaterThanOrEqual(1);
    expect(after.get(`turnpike_upstream_connections{${target},state="idle"}`)).toBe(open);
    // Event-loop delay and GC of each worker thread and of the admin thread.
    for (const thread of ['admin', 'worker-0', 'worker-1']) {
      expect(after.get(`nodejs_eventloop_lag_p99_seconds{thread="${thread}"}`), thread).toBeGreaterThanOrEqual(0);
      expect(after.get(`nodejs_gc_duration_seconds_count{thread="${thread}",kind="minor"}`), thread).toBeGreaterThanOrEqual(0);
    }
    expect(after.get('turnpike_worker_restarts_total')).toBe(0);
    expect(after.get('turnpike_config_version')).toBe(1);
  });

  it('rejects writes and unknown paths with JSON errors', async () => {
    const w = await request(`http://127.0.0.1:${gw.adminPort}/metrics`, { method: 'POST', body: 'x' });
    expect(w.statusCode).toBe(405);
    await w.body.dump();
    const nf = await request(`http://127.0.0.1:${gw.adminPort}/nope`);
    expect(nf.statusCode).toBe(404);
    expect((await nf.body.json() as any).error.code).toBe('not_found');
  });
});

async function scrape(): Promise<Map<string, number>> {
  const r = await request(`http://127.0.0.1:${gw.adminPort}/metrics`);
  const text = await r.body.text();
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const sp = line.lastIndexOf(' ');
    out.set(line.slice(0, sp), Number(line.slice(sp + 1)));
  }
  return out;
}
