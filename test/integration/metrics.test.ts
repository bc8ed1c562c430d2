/**
 * /metrics and the per-target view of GET /admin/upstreams against a real
 * gateway (2 workers) and real upstreams, real scrapes:
 *  - names and labels as the README's Metrics section lists them: status
 *    codes (uncommon ones in their class's bucket, 499 for a client that
 *    left), per-target counters, latency and connections, gateway errors by
 *    reason, build info, event-loop delay and GC per thread, prom-client's
 *    defaults under their standard names;
 *  - target slots stable across a reload, and the `_overflow` target past
 *    the cap;
 *  - deploy/: every metric and label that an alert rule or a dashboard
 *    query uses exists in the scraped output (PromQL parsed loosely: the
 *    identifiers that look like metric names, the label names in selectors,
 *    in by/without/on/ignoring clauses, in label_values(), in legends and
 *    in alert annotations).
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { parse as parseYaml } from 'yaml';
import { CODE_LABELS, FIRST_TARGET_SLOT, MAX_TARGET_SLOTS } from '../../common/metrics-layout.js';
import { ROOT, baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const TOKEN = 'metrics-test-admin-token-0123456789abcdef';

let live: Upstream;
let slow: Upstream;
let gw: Gateway;
/** A port nothing listens on: connections are refused. */
let deadUrl: string;
/** Targets of the upstream that fills the target slots (never used). */
let fillers: string[];

async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

function config(flakyTargets: string[]) {
  return baseConfig({
    server: { workers: 2 },
    admin: { enabled: true, port: 0 },
    upstreams: {
      app: { targets: [live.url] },
      flaky: { targets: flakyTargets },
      slow: { targets: [slow.url] },
      // Fills every target slot left: `late`, configured after it, is past the cap.
      fill: { targets: fillers },
      late: { targets: [live.url] },
    },
    routes: [
      { id: 'app', path: '/app/*', upstream: 'app' },
      { id: 'flaky', path: '/flaky/*', upstream: 'flaky' },
      { id: 'slow', path: '/slow', upstream: 'slow' },
      { id: 'late', path: '/late', upstream: 'late' },
      { id: 'fill', path: '/fill', upstream: 'fill' },
      { id: 'get-only', path: '/get-only', methods: ['GET'], upstream: 'app' },
    ],
  });
}

async function get(path: string, headers: Record<string, string> = {}): Promise<number> {
  const r = await request(gw.url + path, { headers });
  await r.body.dump();
  return r.statusCode;
}

async function scrapeText(): Promise<string> {
  const r = await request(`http://127.0.0.1:${gw.adminPort}/metrics`);
  expect(r.statusCode).toBe(200);
  return r.body.text();
}

interface Sample { name: string; labels: Record<string, string>; value: number }

/** Prometheus text format -> samples (label values may hold escaped quotes). */
function parseSamples(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (m === null) throw new Error(`unparsable metrics line: ${line}`);
    const labels: Record<string, string> = {};
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/g;
    let lm: RegExpExecArray | null;
    while ((lm = re.exec(m[3] ?? '')) !== null) labels[lm[1]!] = lm[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[4]) });
  }
  return out;
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const s = samples.find((x) => x.name === name && Object.keys(labels).length === Object.keys(x.labels).length
    && Object.entries(labels).every(([k, v]) => x.labels[k] === v));
  return s?.value;
}

async function upstreams(): Promise<Record<string, any>> {
  const r = await request(`http://127.0.0.1:${gw.adminPort}/admin/upstreams?limit=100`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(r.statusCode).toBe(200);
  const body = await r.body.json() as { items: any[] };
  return Object.fromEntries(body.items.map((u) => [u.name, u]));
}

/** A GET the client abandons while the upstream thinks: the gateway counts 499. */
function abandon(path: string): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect(gw.port, '127.0.0.1', () => s.write(`GET ${path} HTTP/1.1\r\nHost: t\r\n\r\n`));
    s.on('error', () => {});
    setTimeout(() => { s.destroy(); resolve(); }, 200);
  });
}

let samples: Sample[];
let text: string;

beforeAll(async () => {
  live = await startUpstream((req, res) => {
    const m = /\/(\d{3})$/.exec(req.url ?? '');
    res.writeHead(m ? Number(m[1]) : 200, { 'content-type': 'text/plain' });
    res.end('ok');
  });
  slow = await startUpstream((_req, res) => { setTimeout(() => { res.end('late'); }, 1500); });
  deadUrl = `http://127.0.0.1:${await closedPort()}`;
  // app, flaky (2) and slow come first (4 targets): the fillers take every slot left, and `late` overflows.
  const free = MAX_TARGET_SLOTS - FIRST_TARGET_SLOT - 4;
  fillers = Array.from({ length: free }, (_, i) => `http://127.0.0.${2 + (i >> 8)}:${10_000 + (i & 255)}`);
  gw = await startGateway(config([live.url, deadUrl]), { env: { TURNPIKE_ADMIN_TOKEN: TOKEN, TURNPIKE_TEST_HOOKS: '1' } });

  // Traffic: codes of the table, an uncommon one (418 -> "4xx"), gateway errors, a dead target, a client that leaves.
  for (let i = 0; i < 6; i++) expect(await get('/app/x')).toBe(200);
  expect(await get('/app/201')).toBe(201);
  expect(await get('/app/418')).toBe(418);
  expect(await get('/app/503')).toBe(503);
  expect(await get('/nowhere')).toBe(404);
  const post = await request(gw.url + '/get-only', { method: 'POST', body: 'x' });
  await post.body.dump();
  expect(post.statusCode).toBe(405);
  // Round robin over [live, dead]: half succeed, half are refused (502).
  const flaky: number[] = [];
  for (let i = 0; i < 8; i++) flaky.push(await get('/flaky/x'));
  expect(flaky.filter((s) => s === 502).length).toBeGreaterThanOrEqual(3);
  expect(flaky.filter((s) => s === 200).length).toBeGreaterThanOrEqual(3);
  await abandon('/slow');
  expect(await get('/late')).toBe(200);
  // A refused reload, so every turnpike_config_reloads_total series moves.
  const bad = await request(`http://127.0.0.1:${gw.adminPort}/admin/config`, {
    method: 'PUT', body: JSON.stringify({ routes: [{ id: 'x', path: '/x', upstream: 'missing' }] }),
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
  });
  await bad.body.dump();
  expect(bad.statusCode).toBe(422);
  // Counters are read at scrape time; the client-aborted exchange ends on the gateway's side just after the client leaves.
  await new Promise((r) => setTimeout(r, 300));
  text = await scrapeText();
  samples = parseSamples(text);
}, 60_000);

afterAll(async () => {
  await gw?.stop();
  await live?.close();
  await slow?.close();
});

describe('/metrics', () => {
  it('counts requests by route, method, status code and upstream; uncommon codes in their class bucket; 499 for a client that left', () => {
    const rq = (route: string, code: string, method = 'GET', upstream = route) => value(samples, 'turnpike_requests_total', { route, method, code, upstream });
    expect(rq('app', '200')).toBe(6);
    expect(rq('app', '201')).toBe(1);
    expect(rq('app', '4xx')).toBe(1); // 418
    expect(rq('app', '503')).toBe(1);
    expect(rq('_none', '404', 'GET', '_none')).toBe(1);
    expect(rq('_none', '405', 'POST', '_none')).toBe(1);
    expect((rq('flaky', '200') ?? 0) + (rq('flaky', '502') ?? 0)).toBe(8);
    expect(rq('slow', '499')).toBe(1);
    expect(rq('late', '200')).toBe(1);
    // Every code label comes from the table, never a raw status.
    for (const s of samples.filter((x) => x.name === 'turnpike_requests_total' || x.name === 'turnpike_upstream_requests_total')) {
      expect(CODE_LABELS).toContain(s.labels['code']);
    }
  });

  it('counts per upstream target: requests by code, latency histogram, errors by reason, connections', () => {
    const live1 = { upstream: 'flaky', target: live.url };
    const dead1 = { upstream: 'flaky', target: deadUrl };
    const ok = value(samples, 'turnpike_upstream_requests_total', { ...live1, code: '200' })!;
    const failed = value(samples, 'turnpike_upstream_requests_total', { ...dead1, code: '502' })!;
    expect(ok + failed).toBe(8);
    expect(failed).toBeGreaterThanOrEqual(3);
    expect(value(samples, 'turnpike_upstream_errors_total', { ...dead1, reason: 'upstream_connect_failed' })).toBe(failed);
    expect(value(samples, 'turnpike_upstream_latency_seconds_count', live1)).toBe(ok);
    expect(value(samples, 'turnpike_upstream_latency_seconds_count', dead1)).toBeUndefined(); // never answered
    expect(value(samples, 'turnpike_upstream_latency_seconds_bucket', { ...live1, le: '+Inf' })).toBe(ok);
    const app = { upstream: 'app', target: live.url };
    expect(value(samples, 'turnpike_upstream_requests_total', { ...app, code: '200' })).toBe(6);
    expect(value(samples, 'turnpike_upstream_requests_total', { ...app, code: '4xx' })).toBe(1);
    const open = value(samples, 'turnpike_upstream_connections', { ...app, state: 'open' })!;
    expect(open).toBeGreaterThanOrEqual(1);
    expect(value(samples, 'turnpike_upstream_connections', { ...app, state: 'idle' })).toBe(open);
    expect(value(samples, 'turnpike_upstream_connections', { ...dead1, state: 'open' })).toBe(0);
    // The abandoned request: counted against its target with 499; client_aborted is not the target's fault.
    expect(value(samples, 'turnpike_upstream_requests_total', { upstream: 'slow', target: slow.url, code: '499' })).toBe(1);
    expect(samples.some((s) => s.name === 'turnpike_upstream_errors_total' && s.labels['upstream'] === 'slow')).toBe(false);
  });

  it('puts targets past the cap under _overflow', () => {
    expect(value(samples, 'turnpike_upstream_requests_total', { upstream: '_overflow', target: '_overflow', code: '200' })).toBe(1);
    // (turnpike_upstream_targets is per upstream, not per target: it keeps the name.)
    expect(samples.some((s) => s.name.startsWith('turnpike_upstream_') && s.name !== 'turnpike_upstream_targets' && s.labels['upstream'] === 'late')).toBe(false);
    expect(value(samples, 'turnpike_upstream_targets', { upstream: 'late' })).toBe(1);
    // The route's own series keep their upstream's name.
    expect(value(samples, 'turnpike_requests_total', { route: 'late', method: 'GET', code: '200', upstream: 'late' })).toBe(1);
    const targets = new Set(samples.filter((s) => s.name === 'turnpike_upstream_connections').map((s) => `${s.labels['upstream']} ${s.labels['target']}`));
    expect(targets.size).toBeLessThanOrEqual(MAX_TARGET_SLOTS);
  });

  it('counts gateway errors by reason', () => {
    expect(value(samples, 'turnpike_gateway_errors_total', { reason: 'route_not_found' })).toBe(1);
    expect(value(samples, 'turnpike_gateway_errors_total', { reason: 'method_not_allowed' })).toBe(1);
    expect(value(samples, 'turnpike_gateway_errors_total', { reason: 'upstream_connect_failed' })).toBeGreaterThanOrEqual(3);
    expect(value(samples, 'turnpike_gateway_errors_total', { reason: 'client_aborted' })).toBe(1);
    expect(samples.some((s) => s.name === 'turnpike_errors_total')).toBe(false);
  });

  it('has build info, reloads, restarts, and prom-client defaults under their standard names', () => {
    const info = samples.filter((s) => s.name === 'turnpike_build_info');
    expect(info).toHaveLength(1);
    expect(info[0]!.value).toBe(1);
    const pkg = JSON.parse(readFileSync(`${ROOT}/package.json`, 'utf8'));
    expect(info[0]!.labels).toEqual({
      version: pkg.version, node: process.versions.node, backend: 'uws',
      uws: JSON.parse(readFileSync(`${ROOT}/node_modules/@trufflesuite/uws-js-unofficial/package.json`, 'utf8')).version,
    });
    expect(value(samples, 'turnpike_config_reloads_total', { result: 'failure' })).toBe(1);
    expect(value(samples, 'turnpike_config_reloads_total', { result: 'success' })).toBe(0);
    expect(value(samples, 'turnpike_worker_restarts_total')).toBe(0);
    for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'process_start_time_seconds', 'nodejs_heap_size_used_bytes', 'nodejs_version_info']) {
      expect(samples.some((s) => s.name === name), name).toBe(true);
    }
    expect(samples.filter((s) => s.name.startsWith('turnpike_process_'))).toEqual([]);
  });

  it('measures event-loop delay and GC in every worker thread and the admin thread', () => {
    const threads = ['admin', 'worker-0', 'worker-1'];
    for (const stat of ['', '_min', '_max', '_mean', '_stddev', '_p50', '_p90', '_p99']) {
      const got = samples.filter((s) => s.name === `nodejs_eventloop_lag${stat}_seconds`);
      expect(got.map((s) => s.labels['thread']).sort(), stat).toEqual(threads);
      for (const s of got) expect(s.value).toBeGreaterThanOrEqual(0);
    }
    for (const thread of threads) {
      for (const kind of ['major', 'minor', 'incremental', 'weakcb']) {
        expect(value(samples, 'nodejs_gc_duration_seconds_count', { thread, kind }), `${thread} ${kind}`).toBeGreaterThanOrEqual(0);
      }
    }
    // A thread that has not sampled for a second is not shown behind.
    for (const s of samples.filter((x) => x.name === 'nodejs_eventloop_lag_seconds')) expect(s.value, s.labels['thread']).toBeLessThan(1);
    // One family each: prom-client's own (admin-only, unlabelled) ones are replaced.
    expect(text.match(/^# TYPE nodejs_eventloop_lag_p99_seconds /gm)).toHaveLength(1);
    expect(text.match(/^# TYPE nodejs_gc_duration_seconds /gm)).toHaveLength(1);
  });

  it('shows a worker whose event loop is blocked right now: lag and max grow with the time since its last sample', async () => {
    // Test hook: the worker that takes this request spins for 3.5 s.
    const blocked = request(gw.url + '/app/x', { headers: { 'x-turnpike-test-block': '3500' } });
    try {
      await new Promise((r) => setTimeout(r, 2800));
      const s = parseSamples(await scrapeText());
      const lag = s.filter((x) => x.name === 'nodejs_eventloop_lag_seconds' && x.labels['thread'] !== 'admin');
      expect(lag).toHaveLength(2);
      const stuck = lag.reduce((a, b) => (a.value > b.value ? a : b));
      expect(stuck.value).toBeGreaterThan(0.8);
      expect(value(s, 'nodejs_eventloop_lag_max_seconds', { thread: stuck.labels['thread']! })).toBeGreaterThanOrEqual(stuck.value);
      expect(lag.find((x) => x !== stuck)!.value).toBeLessThan(0.5);
    } finally {
      await (await blocked).body.dump();
    }
  }, 15_000);

  it('records a stall once it is over: a worker blocked 200 ms shows it in lag_max, from the delay of its sweep', async () => {
    await scrapeText();
    // The scrape starts a new window at each thread's next summary (within a second): the stall must come after it.
    await new Promise((r) => setTimeout(r, 1300));
    expect(await get('/app/x', { 'x-turnpike-test-block': '200' })).toBe(200);
    // The next summary (within a second) publishes it; the worker is not blocked any more when scraped.
    await new Promise((r) => setTimeout(r, 1300));
    const s = parseSamples(await scrapeText());
    const max = s.filter((x) => x.name === 'nodejs_eventloop_lag_max_seconds' && x.labels['thread'] !== 'admin');
    expect(max).toHaveLength(2);
    const stalled = max.reduce((a, b) => (a.value > b.value ? a : b));
    expect(stalled.value).toBeGreaterThanOrEqual(0.15);
    // Not an overdue tick: the worker ticks again (an overdue one would be over a second by now).
    expect(stalled.value).toBeLessThan(1);
    expect(max.find((x) => x !== stalled)!.value).toBeLessThan(0.15);
    // What is exported is the delay beyond the 25 ms sweep period, not the time between sweeps.
    for (const p50 of s.filter((x) => x.name === 'nodejs_eventloop_lag_p50_seconds')) expect(p50.value, p50.labels['thread']).toBeLessThan(0.02);
  }, 15_000);

  /** The largest nodejs_eventloop_lag_max_seconds of the worker threads in one scrape. */
  async function workerLagMax(): Promise<number> {
    const max = parseSamples(await scrapeText()).filter((x) => x.name === 'nodejs_eventloop_lag_max_seconds' && x.labels['thread'] !== 'admin');
    expect(max).toHaveLength(2);
    return Math.max(...max.map((x) => x.value));
  }

  it('loses no stall to a scrape: one that ends 50 ms before a scrape shows in that scrape or the next', async () => {
    // A summary that follows a scrape starts a new window; the delays since the previous summary must go into it,
    // not be dropped with the old window. Random waits move the stall against the workers' 1 s summaries: with
    // the delays dropped, a stall showed only when a summary fell in it or in the 50 ms after it (~1 in 5).
    await workerLagMax();
    const shown: string[] = [];
    for (let i = 0; i < 4; i++) {
      await new Promise((r) => setTimeout(r, 1000 + Math.random() * 800));
      expect(await get('/app/x', { 'x-turnpike-test-block': '150' })).toBe(200);
      await new Promise((r) => setTimeout(r, 50));
      const first = await workerLagMax();
      await new Promise((r) => setTimeout(r, 1300));
      const next = await workerLagMax();
      shown.push(`${first.toFixed(3)}/${next.toFixed(3)}`);
    }
    // 150 ms between two 25 ms sweeps: a delay of at least 0.125 s.
    expect(shown.filter((x) => x.split('/').some((v) => Number(v) >= 0.1)), shown.join(' ')).toHaveLength(4);
  }, 30_000);

  it('keeps the gauges updating under scrapes every 350 ms: a stall shows in a scrape after it, then leaves the window', async () => {
    // Every summary then follows a scrape: each must still publish the delays since the previous summary.
    await workerLagMax();
    const t0 = Date.now();
    let stallEnd = 0;
    let stall: Promise<number> | null = null;
    const seen: { at: number; max: number }[] = [];
    while (stallEnd === 0 || Date.now() - stallEnd < 2700) {
      // The stall starts among the scrapes (not awaited: the scrapes go on).
      if (stall === null && Date.now() - t0 > 800) {
        stall = get('/app/x', { 'x-turnpike-test-block': '200' }).then((st) => { stallEnd = Date.now(); return st; });
      }
      seen.push({ at: Date.now(), max: await workerLagMax() });
      await new Promise((r) => setTimeout(r, 300 + Math.random() * 100));
    }
    expect(await stall).toBe(200);
    const after = seen.filter((x) => x.at > stallEnd);
    const log = after.map((x) => `+${x.at - stallEnd}ms:${x.max.toFixed(3)}`).join(' ');
    // Published by the next summary (within a second of the stall), shown until a summary after a scrape.
    expect(after.some((x) => x.max >= 0.15 && x.at - stallEnd < 1800), log).toBe(true);
    // A new window after each scrape: the summary after the first scrape that showed it drops it (within 2 s).
    expect(after.at(-1)!.max, log).toBeLessThan(0.1);
  }, 30_000);

  it('lists every turnpike metric, and every per-thread nodejs one, in the README Metrics section', () => {
    const readme = readFileSync(`${ROOT}/README.md`, 'utf8');
    const section = readme.slice(readme.indexOf('\n## Metrics'), readme.indexOf('\n## ', readme.indexOf('\n## Metrics') + 5));
    const families = [...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!] as const);
    for (const [name, type] of families) {
      if (!name.startsWith('turnpike_') && !name.startsWith('nodejs_eventloop_lag') && name !== 'nodejs_gc_duration_seconds') continue;
      const row = section.split('\n').find((l) => l.startsWith('|') && l.split('|')[1]!.includes('`' + name + '`'));
      expect(row, `README Metrics has no row for ${name}`).toBeDefined();
      expect(row, name).toContain(type);
    }
  });
});

describe('GET /admin/upstreams, per target', () => {
  it('shows requests, responses, errors by kind, connections and the last error with its time', async () => {
    const u = await upstreams();
    const [a, d] = u['flaky'].targets;
    expect(a.url).toBe(live.url);
    expect(d.url).toBe(deadUrl);
    expect(d.requests).toBeGreaterThanOrEqual(3);
    expect(d.responses).toEqual({ 502: d.requests });
    expect(d.errors.upstream_connect_failed).toBe(d.requests);
    expect(d.errors.upstream_timeout).toBe(0);
    expect(d.connections).toEqual({ open: 0, idle: 0 });
    expect(d.lastError.code).toBe('upstream_connect_failed');
    const age = Date.now() - Date.parse(d.lastError.at);
    expect(age).toBeGreaterThanOrEqual(0);
    expect(age).toBeLessThan(60_000);
    expect(a.requests + d.requests).toBe(8);
    expect(a.lastError).toBeNull();
    expect(a.connections.open).toBeGreaterThanOrEqual(1);
    expect(a.overflow).toBe(false);
    const late = u['late'].targets[0];
    expect(late.overflow).toBe(true);
    expect(late.requests).toBeGreaterThanOrEqual(1);
  });

  it('keeps each target\'s counters across a reload that reorders and adds targets (stable slots)', async () => {
    const before = (await upstreams())['flaky'].targets;
    const extra = await startUpstream();
    try {
      const r = await request(`http://127.0.0.1:${gw.adminPort}/admin/config`, {
        method: 'PUT', body: JSON.stringify(config([extra.url, deadUrl, live.url])),
        headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      });
      expect(r.statusCode, await r.body.text()).toBe(200);
      const after = (await upstreams())['flaky'].targets;
      expect(after.map((t: any) => t.url)).toEqual([extra.url, deadUrl, live.url]);
      // The new target past the cap shares _overflow; the others kept their own counters.
      expect(after[0].overflow).toBe(true);
      expect(after[1].requests).toBe(before[1].requests);
      expect(after[1].errors).toEqual(before[1].errors);
      expect(after[2].requests).toBe(before[0].requests);
      const s = parseSamples(await scrapeText());
      expect(value(s, 'turnpike_upstream_errors_total', { upstream: 'flaky', target: deadUrl, reason: 'upstream_connect_failed' })).toBe(before[1].requests);
      expect(value(s, 'turnpike_config_reloads_total', { result: 'success' })).toBe(1);
    } finally {
      await extra.close();
    }
  });
});

// ---------------------------------------------------------------- deploy/

interface Query { where: string; expr: string; /** Labels the result must carry (legend, alert annotations). */ uses: string[] }

const SCRAPE_LABELS = new Set(['instance', 'job']);
const METRIC = /\b(?:turnpike|nodejs|process)_[a-zA-Z0-9_]*/g;

function dashboardQueries(): Query[] {
  const d = JSON.parse(readFileSync(`${ROOT}/deploy/grafana/turnpike-dashboard.json`, 'utf8'));
  const out: Query[] = [];
  const walk = (panels: any[]) => {
    for (const p of panels) {
      for (const t of p.targets ?? []) {
        const uses = [...String(t.legendFormat ?? '').matchAll(/\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}/g)].map((m) => m[1]!);
        out.push({ where: `panel "${p.title}"`, expr: t.expr, uses });
      }
      walk(p.panels ?? []);
    }
  };
  walk(d.panels);
  for (const v of d.templating.list) {
    const q = typeof v.query === 'string' ? v.query : v.query?.query;
    if (v.type === 'query') {
      const m = /^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$/.exec(q);
      expect(m, `variable ${v.name}: ${q}`).not.toBeNull();
      out.push({ where: `variable $${v.name}`, expr: m![1]!, uses: [m![2]!] });
    }
  }
  return out;
}

function alertQueries(): Query[] {
  const doc = parseYaml(readFileSync(`${ROOT}/deploy/prometheus/turnpike-alerts.yaml`, 'utf8'));
  const out: Query[] = [];
  for (const g of doc.groups) {
    for (const r of g.rules) {
      const templates = Object.values({ ...(r.annotations ?? {}), ...(r.labels ?? {}) }).join('\n');
      const uses = [...templates.matchAll(/\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)/g)].map((m) => m[1]!);
      out.push({ where: `alert ${r.alert}`, expr: r.expr, uses });
    }
  }
  return out;
}

describe('deploy/: the dashboard and the alert rules use only metrics and labels that exist', () => {
  /** name -> label names seen on its samples. */
  let labelsOf: Map<string, Set<string>>;
  beforeAll(() => {
    labelsOf = new Map();
    for (const s of samples) {
      const set = labelsOf.get(s.name) ?? new Set<string>();
      for (const k of Object.keys(s.labels)) set.add(k);
      labelsOf.set(s.name, set);
    }
  });

  const check = (q: Query) => {
    const names = [...new Set(q.expr.match(METRIC) ?? [])];
    expect(names.length, `${q.where}: no metric in ${q.expr}`).toBeGreaterThan(0);
    for (const n of names) expect(labelsOf.has(n), `${q.where}: ${n} is not in /metrics`).toBe(true);
    const onAny = (label: string) => SCRAPE_LABELS.has(label) || names.some((n) => labelsOf.get(n)!.has(label));
    // Label matchers: each on the metric it selects.
    for (const m of q.expr.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}/g)) {
      for (const lm of m[2]!.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)/g)) {
        const label = lm[1]!;
        expect(SCRAPE_LABELS.has(label) || labelsOf.get(m[1]!)?.has(label), `${q.where}: ${m[1]} has no label ${label}`).toBe(true);
      }
    }
    // Grouping and matching clauses.
    const grouped: string[] = [];
    for (const m of q.expr.matchAll(/\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g)) {
      for (const label of m[2]!.split(',').map((x) => x.trim()).filter(Boolean)) {
        expect(onAny(label), `${q.where}: no metric of the expression has label ${label}`).toBe(true);
        if (m[1] === 'by') grouped.push(label);
      }
    }
    // What a legend or an annotation prints must be a label of the result.
    for (const label of q.uses) {
      if (grouped.length > 0 && !/\bwithout\b/.test(q.expr)) expect(grouped, `${q.where}: {{${label}}} is not kept by the aggregation`).toContain(label);
      else expect(onAny(label), `${q.where}: {{${label}}} is no label of ${names.join(', ')}`).toBe(true);
    }
  };

  it('every dashboard query (panels and variables)', () => {
    const qs = dashboardQueries();
    expect(qs.length).toBeGreaterThan(10);
    for (const q of qs) check(q);
  });

  it('every alert rule', () => {
    const qs = alertQueries();
    expect(qs.map((q) => q.where)).toEqual(expect.arrayContaining([
      'alert TurnpikeHigh5xxRatio', 'alert TurnpikeUpstreamTargetFailing', 'alert TurnpikeHighP99Latency',
      'alert TurnpikeWorkerRestarted', 'alert TurnpikeConfigReloadFailed', 'alert TurnpikeEventLoopLag',
    ]));
    for (const q of qs) check(q);
  });

  it('the checker itself refuses an unknown metric and an unknown label', () => {
    expect(() => check({ where: 't', expr: 'rate(turnpike_requests_totl[5m])', uses: [] })).toThrow();
    expect(() => check({ where: 't', expr: 'sum by (status_class) (rate(turnpike_requests_total[5m]))', uses: [] })).toThrow();
    expect(() => check({ where: 't', expr: 'turnpike_requests_total{status_class="5xx"}', uses: [] })).toThrow();
    expect(() => check({ where: 't', expr: 'sum by (route) (rate(turnpike_requests_total[5m]))', uses: ['code'] })).toThrow();
  });
});
