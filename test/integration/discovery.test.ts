/**
 * Target discovery (issue 11) over real sockets: real gateway processes
 * with 2 workers, a real UDP DNS server (test/helpers/dns-server.ts), real
 * upstream HTTP servers on several loopback addresses that answer with their
 * own name, a private redis-server the tests kill, and a second gateway
 * sharing it.
 *
 * "Every worker": the workers share the listening port (SO_REUSEPORT), the
 * kernel spreads new connections over them by address hash. Each probe
 * sends FRESH requests, each on a new connection: all of them answering
 * from the new set means every worker serves it (the odds that 16 new
 * connections all land on one of 2 workers are 2^-15).
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.js';
import { startRedis, type PrivateRedis } from '../helpers/redis.js';
import { scrape, sampleValue } from '../helpers/metrics.js';
import { freePort } from '../helpers/ports.js';

const TOKEN = `disc-${randomBytes(12).toString('hex')}`;
const VIEWER = `view-${randomBytes(12).toString('hex')}`;
const FRESH = 16;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanup.length > 0) await cleanup.pop()!().catch(() => {});
});

// -- upstream servers that say who they are -------------------------------------

interface Named {
  name: string;
  host: string;
  port: number;
  url: string;
  /** Paths requested, in order. */
  seen: string[];
  close(): Promise<void>;
}

/** An HTTP server on host:port answering its name; /slow answers after `slowMs`; /health answers `health`. */
async function named(name: string, host: string, port = 0, opts: { slowMs?: number; health?: () => number } = {}): Promise<Named> {
  const seen: string[] = [];
  const server = http.createServer((req, res) => {
    seen.push(req.url ?? '');
    if (req.url === '/health') {
      res.writeHead(opts.health?.() ?? 200);
      res.end();
      return;
    }
    const send = () => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(name);
    };
    if (req.url === '/slow') setTimeout(send, opts.slowMs ?? 1500);
    else send();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const p = (server.address() as { port: number }).port;
  const n: Named = {
    name, host, port: p, url: `http://${host}:${p}`, seen,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
  cleanup.push(() => n.close());
  return n;
}

/** One request on a new connection: [status, body]. */
function fresh(gw: Gateway, path = '/'): Promise<[number, string]> {
  return new Promise((resolve, reject) => {
    const req = http.get(`${gw.url}${path}`, { agent: false, headers: { connection: 'close' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => resolve([res.statusCode ?? 0, body]));
    });
    req.on('error', reject);
  });
}

/** The bodies of FRESH requests, each on its own connection, as a sorted set. */
async function answers(gw: Gateway, path = '/'): Promise<string[]> {
  const rs = await Promise.all(Array.from({ length: FRESH }, () => fresh(gw, path)));
  return [...new Set(rs.map(([s, b]) => (s === 200 ? b : `${s} ${codeOf(b)}`)))].sort();
}

function codeOf(body: string): string {
  try {
    return JSON.parse(body).error?.code ?? body;
  } catch {
    return body;
  }
}

/**
 * Probes until every fresh request answers from exactly `want`, or
 * `deadlineMs` passed; returns the ms it took from `since` (or -1).
 */
async function until(gw: Gateway, want: string[], since: number, deadlineMs: number, path = '/'): Promise<number> {
  const end = since + deadlineMs;
  let last: string[] = [];
  while (Date.now() < end) {
    last = await answers(gw, path);
    if (JSON.stringify(last) === JSON.stringify([...want].sort())) return Date.now() - since;
    await sleep(20);
  }
  throw new Error(`after ${deadlineMs} ms the gateway still answers ${JSON.stringify(last)}, expected ${JSON.stringify(want)}`);
}

// -- gateway and admin API ------------------------------------------------------

const dir = mkdtempSync(join(tmpdir(), 'turnpike-discovery-'));
const tokensFile = join(dir, 'tokens');
const sha = (t: string) => createHash('sha256').update(t).digest('hex');
writeFileSync(tokensFile, `ops admin sha256:${sha(TOKEN)}\nalice viewer sha256:${sha(VIEWER)}\n`);

async function gateway(config: Record<string, any>, workers = 2, env: Record<string, string> = {}, runtime: 'node' | 'bun' = 'node'): Promise<Gateway> {
  const gw = await startGateway(baseConfig({
    ...config, server: { workers, ...(config.server ?? {}) },
    admin: { enabled: true, tokensFile, auditLog: join(dir, `audit-${randomBytes(4).toString('hex')}.log`), ...(config.admin ?? {}) },
    routes: config.routes ?? [{ id: 'app', path: '/*', upstream: 'app' }],
  }), { env, runtime });
  cleanup.push(() => gw.stop());
  return gw;
}

async function admin(gw: Gateway, method: string, path: string, body?: unknown, opts: { token?: string | null; type?: string } = {}): Promise<{ status: number; json: any }> {
  const token = opts.token === undefined ? TOKEN : opts.token;
  const headers: Record<string, string> = {};
  if (token !== null) headers['authorization'] = `Bearer ${token}`;
  let data: string | undefined;
  if (body !== undefined) {
    data = typeof body === 'string' ? body : JSON.stringify(body);
    headers['content-type'] = opts.type ?? 'application/json';
  }
  const r = await fetch(`http://127.0.0.1:${gw.adminPort}${path}`, { method, headers, body: data });
  const text = await r.text();
  let json: any = null;
  try { json = JSON.parse(text); } catch { json = text; }
  return { status: r.status, json };
}

const register = (gw: Gateway, upstream: string, body: unknown) => admin(gw, 'POST', `/admin/upstreams/${upstream}/targets`, body);
const deregister = (gw: Gateway, upstream: string, url: string) => admin(gw, 'DELETE', `/admin/upstreams/${upstream}/targets?url=${encodeURIComponent(url)}`);

async function targetsOf(gw: Gateway, upstream: string): Promise<any[]> {
  const r = await admin(gw, 'GET', '/admin/upstreams?limit=100');
  expect(r.status).toBe(200);
  return r.json.items.find((u: any) => u.name === upstream).targets;
}

async function metric(gw: Gateway, series: string): Promise<number> {
  return sampleValue(await scrape(gw.adminPort!), series) ?? 0;
}

// -- DNS ----------------------------------------------------------------------------

describe('DNS discovery', () => {
  let dns: TestDnsServer;
  beforeAll(async () => { dns = await startDnsServer(); });
  afterAll(async () => { await dns.stop(); });

  /** timeoutMs 1 s: a loaded test machine must not fail a lookup by accident (the outage test shortens it). */
  function dnsUpstream(name: string, port: number, extra: Record<string, unknown> = {}, timeoutMs = 1000) {
    return { app: { dns: { name, port, refreshMs: 200, family: 'ipv4', timeoutMs, resolvers: [dns.address] }, ...extra } };
  }

  it('without resolvers, names resolve as for every program (the system resolver: /etc/hosts too); a name that does not exist keeps no target and says why', async () => {
    const a = await named('a', '127.0.0.1');
    const gw = await gateway({
      upstreams: {
        app: { dns: { name: 'localhost', port: a.port, refreshMs: 200, family: 'ipv4' } },
        nowhere: { dns: { name: 'no-such-name.invalid', port: a.port, refreshMs: 200, family: 'ipv4' } },
      },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }, { id: 'nowhere', path: '/nowhere/*', upstream: 'nowhere' }],
    });
    expect(await answers(gw)).toEqual(['a']);
    expect((await targetsOf(gw, 'app')).map((t) => t.url)).toEqual([a.url]);
    const [s, body] = await fresh(gw, '/nowhere/x');
    expect(s).toBe(503);
    expect(JSON.parse(body).error.message).toContain('has no targets right now');
    expect(gw.logs.some((l) => l.includes('lookup of no-such-name.invalid failed'))).toBe(true);
  });

  it('an answer change reaches every worker within 1 s of the lookup that saw it; the old address is drained (its in-flight request finishes)', async () => {
    const a = await named('a', '127.0.0.1', 0, { slowMs: 1500 });
    const b = await named('b', '127.0.0.2', a.port);
    dns.records.set('app.test', { a: ['127.0.0.1'], ttl: 300 });
    const gw = await gateway({ upstreams: dnsUpstream('app.test', a.port) });
    // Started: the first answer is served at once.
    expect(await answers(gw)).toEqual(['a']);
    const t = await targetsOf(gw, 'app');
    expect(t.map((x) => [x.url, x.source, x.expiresAt])).toEqual([[a.url, 'dns', null]]);

    // A slow request in flight to a, then the answer moves to b.
    const slow = fresh(gw, '/slow');
    await sleep(100);
    expect(a.seen).toContain('/slow');
    dns.records.set('app.test', { a: ['127.0.0.2'], ttl: 300 });
    const changedAt = Date.now();
    const queriesBefore = dns.queries.length;
    // The lookup that sees the change is at most refreshMs away; propagation from it is what is bounded.
    while (dns.queries.length === queriesBefore) await sleep(5);
    const lookedUp = Date.now();
    const took = await until(gw, ['b'], lookedUp, 1000);
    const total = Date.now() - changedAt;
    const aHits = a.seen.length;
    expect(await answers(gw)).toEqual(['b']);
    expect(a.seen.length).toBe(aHits); // no new request to the drained target
    // The slow one finished on the old target.
    expect(await slow).toEqual([200, 'a']);
    console.log(`DNS change: every worker served it ${took} ms after the lookup, ${total} ms after the record changed (refreshMs 200)`);

    expect(await metric(gw, 'turnpike_upstream_targets{upstream="app"}')).toBe(1);
    expect(await metric(gw, 'turnpike_discovery_updates_total{upstream="app",source="dns"}')).toBeGreaterThanOrEqual(2);
    // Not a reload: no reload counted, nothing audited, the config file untouched.
    const status = await admin(gw, 'GET', '/admin/status');
    expect(status.json.reloads).toEqual({ success: 0, failure: 0 });
    expect(status.json.config.version).toBeGreaterThanOrEqual(2);
    expect((await admin(gw, 'GET', '/admin/audit')).json.items).toEqual([]);
    expect(gw.logs.some((l) => l.includes('"discovery update"') && l.includes('"level":"info"'))).toBe(true);
    expect(gw.logs.some((l) => l.includes('"config reloaded"'))).toBe(false);
  });

  it('the DNS server down, failing or silent: the last good answer keeps serving, with an error line and a metric; it recovers', async () => {
    const a = await named('a', '127.0.0.1');
    const b = await named('b', '127.0.0.3', a.port);
    dns.records.set('down.test', { a: ['127.0.0.1', '127.0.0.3'] });
    const gw = await gateway({ upstreams: dnsUpstream('down.test', a.port, {}, 300) });
    expect(await answers(gw)).toEqual(['a', 'b']);
    for (const mode of ['servfail', 'silent'] as const) {
      dns.mode = mode;
      const errors = await metric(gw, 'turnpike_discovery_errors_total{upstream="app",source="dns"}');
      await sleep(800);
      expect(await metric(gw, 'turnpike_discovery_errors_total{upstream="app",source="dns"}'), mode).toBeGreaterThan(errors);
      expect(await answers(gw), mode).toEqual(['a', 'b']);
    }
    dns.mode = 'answer';
    await dns.stop(); // the port closed: refused
    await sleep(600);
    expect(await answers(gw)).toEqual(['a', 'b']);
    expect(gw.logs.some((l) => l.includes('"DNS discovery failed"') && l.includes('"level":"error"') && l.includes('last good answer'))).toBe(true);
    // NXDOMAIN (the name gone from the zone) is an error too: kept.
    await dns.restart();
    dns.records.delete('down.test');
    await sleep(600);
    expect(await answers(gw)).toEqual(['a', 'b']);
    dns.records.set('down.test', { a: ['127.0.0.3'] });
    await until(gw, ['b'], Date.now(), 2000);
    // The line goes through the admin thread's log ring, the new targets through the workers' config: either may be first.
    await expect.poll(() => gw.logs.some((l) => l.includes('"DNS discovery works again"')), { timeout: 2000 }).toBe(true);
    expect(b.seen.length).toBeGreaterThan(0);
  });

  it('an answer with no address (NODATA) leaves the upstream without targets: 503 no_healthy_upstream, no crash; targets back when the name has addresses again', async () => {
    const a = await named('a', '127.0.0.1');
    dns.records.set('empty.test', { a: [] });
    const gw = await gateway({ upstreams: dnsUpstream('empty.test', a.port) });
    expect(await answers(gw)).toEqual(['503 no_healthy_upstream']);
    const [s, body] = await fresh(gw, '/x');
    expect(s).toBe(503);
    expect(JSON.parse(body).error.code).toBe('no_healthy_upstream');
    expect(JSON.parse(body).error.message, 'says there is no target, and where to look').toMatch(/has no targets right now.*GET \/admin\/upstreams/);
    dns.records.set('empty.test', { a: ['127.0.0.1'] });
    await until(gw, ['a'], Date.now(), 2000);
    dns.records.set('empty.test', { a: [] });
    await until(gw, ['503 no_healthy_upstream'], Date.now(), 2000);
  });

  it('on Bun too (its node:dns and the Bun.serve backend): DNS targets and a change; an upstream without targets answers 503', async () => {
    const a = await named('a', '127.0.0.1');
    const b = await named('b', '127.0.0.5', a.port);
    dns.records.set('bun.test', { a: ['127.0.0.1'] });
    const gw = await gateway({
      upstreams: { ...dnsUpstream('bun.test', a.port), reg: { registry: {} } },
      routes: [{ id: 'reg', path: '/reg', upstream: 'reg' }, { id: 'app', path: '/*', upstream: 'app' }],
    }, 2, {}, 'bun');
    expect(await answers(gw)).toEqual(['a']);
    dns.records.set('bun.test', { a: ['127.0.0.5'] });
    await until(gw, ['b'], Date.now(), 2000);
    expect(b.seen.length).toBeGreaterThan(0);
    // Bun's resolver reports NODATA as ENOTFOUND (NXDOMAIN): an empty answer keeps the last good one there.
    dns.records.set('bun.test', { a: [] });
    await sleep(600);
    expect(await answers(gw)).toEqual(['b']);
    expect(await answers(gw, '/reg')).toEqual(['503 no_healthy_upstream']);
  });

  it('static targets and DNS combine (each URL once); active health checks check the discovered targets too', async () => {
    let bHealth = 200;
    const a = await named('a', '127.0.0.1');
    const b = await named('b', '127.0.0.4', a.port, { health: () => bHealth });
    dns.records.set('mix.test', { a: ['127.0.0.1', '127.0.0.4'] });
    const gw = await gateway({
      upstreams: dnsUpstream('mix.test', a.port, { targets: [a.url], healthCheck: { path: '/health', intervalMs: 100, timeoutMs: 90, unhealthyThreshold: 1, healthyThreshold: 1 } }),
    });
    const t = await targetsOf(gw, 'app');
    expect(t.map((x) => [x.url, x.source])).toEqual([[a.url, 'config'], [b.url, 'dns']]);
    await sleep(300);
    expect(b.seen).toContain('/health');
    expect(await answers(gw)).toEqual(['a', 'b']);
    bHealth = 500;
    await until(gw, ['a'], Date.now(), 2000);
    expect((await targetsOf(gw, 'app')).find((x) => x.url === b.url).state.health).toBe('unhealthy');
  });
});

// -- the registry, in memory ------------------------------------------------------------

describe('registry in the admin thread (no redis)', () => {
  it.each(['node', 'bun'] as const)('a split branch without targets answers its 503 with its upstream named in the access log (%s)', async (runtime) => {
    const a = await named('a', '127.0.0.1');
    const gw = await gateway({
      log: { access: { enabled: true, destination: 'stdout', format: 'json', fields: ['request_id', 'status', 'upstream', 'error'] } },
      upstreams: { full: { targets: [a.url] }, empty: { registry: {} } },
      routes: [{ id: 'split', path: '/*', upstreams: [{ name: 'full', weight: 1 }, { name: 'empty', weight: 0, when: { header: 'x-empty', equals: '1' } }] }],
    }, 1, {}, runtime);
    const r = await fetch(`${gw.url}/x`, { headers: { 'x-empty': '1' } });
    expect(r.status).toBe(503);
    const id = r.headers.get('x-request-id');
    await r.arrayBuffer();
    const line = async () => gw.logs.map((l) => { try { return JSON.parse(l); } catch { return null; } }).find((j) => j?.request_id === id);
    const until = Date.now() + 5000;
    while ((await line()) === undefined && Date.now() < until) await new Promise((res) => setTimeout(res, 20));
    expect(await line()).toEqual({ request_id: id, status: 503, upstream: 'empty', error: 'no_healthy_upstream' });
  });

  it.each(['node', 'bun'] as const)('a retry after a discovery update goes to the running config\'s targets, never to the old set (%s)', async (runtime) => {
    // a: 503 after 600 ms; b registered while that first try is under way.
    let aSeen = 0;
    const failing = http.createServer((_req, res) => {
      aSeen++;
      setTimeout(() => { res.writeHead(503); res.end('a'); }, 600);
    });
    await new Promise<void>((r) => failing.listen(0, '127.0.0.1', () => r()));
    cleanup.push(() => new Promise<void>((r) => { failing.closeAllConnections(); failing.close(() => r()); }));
    const aUrl = `http://127.0.0.1:${(failing.address() as { port: number }).port}`;
    const b = await named('b', '127.0.0.1');
    const gw = await gateway({
      upstreams: { app: { registry: {}, targets: [aUrl], retry: { attempts: 1, backoffMs: 1, maxBackoffMs: 5 } } },
    }, 1, {}, runtime);
    const pending = fresh(gw, '/x');
    await new Promise((r) => setTimeout(r, 150));
    expect(aSeen).toBe(1);
    expect((await register(gw, 'app', { url: b.url })).status).toBe(201);
    const [status, body] = await pending;
    // Before: the retry picked from the set the request started with (a alone) and got a's 503 again.
    expect([status, body], 'the retry went to the target registered meanwhile').toEqual([200, 'b']);
    expect(aSeen).toBe(1);
  });

  it('register (201), reach every worker within 1 s, heartbeat (200), expiry, deregister; shown with source and expiry', async () => {
    const a = await named('a', '127.0.0.1');
    const b = await named('b', '127.0.0.1');
    const gw = await gateway({ upstreams: { app: { registry: { ttlMs: 30000 }, targets: [a.url] } } });
    expect(await answers(gw)).toEqual(['a']);

    const r1 = await register(gw, 'app', { url: `${b.url}/`, weight: 1 });
    const at = Date.now();
    expect(r1.status).toBe(201);
    expect(r1.json).toEqual(expect.objectContaining({ upstream: 'app', url: b.url, weight: 1, ttlMs: 30000, created: true, store: 'memory' }));
    const took = await until(gw, ['a', 'b'], at, 1000);
    console.log(`registry (memory): every worker served a registration ${took} ms after the 201`);
    const t = await targetsOf(gw, 'app');
    expect(t.map((x) => [x.url, x.source])).toEqual([[a.url, 'config'], [b.url, 'registry']]);
    const exp1 = Date.parse(t[1].expiresAt);
    expect(exp1).toBeGreaterThan(Date.now() + 25_000);

    await sleep(20);
    const r2 = await register(gw, 'app', { url: b.url });
    expect([r2.status, r2.json.created]).toEqual([200, false]);
    expect(Date.parse(r2.json.expiresAt)).toBeGreaterThan(exp1);

    // Deregistered: drained at once; a second time: 404.
    const d1 = await deregister(gw, 'app', b.url);
    expect([d1.status, d1.json]).toEqual([200, { upstream: 'app', url: b.url, removed: true }]);
    await until(gw, ['a'], Date.now(), 1000);
    const d2 = await deregister(gw, 'app', b.url);
    expect([d2.status, d2.json.error.code]).toEqual([404, 'not_found']);

    // A short TTL not renewed: expires, then drained.
    expect((await register(gw, 'app', { url: b.url, ttlMs: 1000 })).status).toBe(201);
    await until(gw, ['a', 'b'], Date.now(), 1000);
    await until(gw, ['a'], Date.now(), 2500);
    expect((await targetsOf(gw, 'app')).map((x) => x.url)).toEqual([a.url]);
    expect(await metric(gw, 'turnpike_discovery_updates_total{upstream="app",source="registry"}')).toBeGreaterThanOrEqual(4);
    expect(gw.logs.some((l) => l.includes('"registered target expired: draining it"'))).toBe(true);
  });

  it('a flapping registry is coalesced: at most one config version per 250 ms reaches the workers', async () => {
    const a = await named('a', '127.0.0.1');
    const b = await named('b', '127.0.0.1');
    const gw = await gateway({ upstreams: { app: { registry: {}, targets: [a.url] } } });
    const v0 = (await admin(gw, 'GET', '/admin/status')).json.config.version;
    const t0 = Date.now();
    const FLAPS = 40;
    for (let i = 0; i < FLAPS; i++) {
      expect((await register(gw, 'app', { url: b.url })).status).toBe(201);
      expect((await deregister(gw, 'app', b.url)).status).toBe(200);
    }
    expect((await register(gw, 'app', { url: b.url })).status).toBe(201);
    const elapsed = Date.now() - t0;
    await until(gw, ['a', 'b'], Date.now(), 1000);
    await sleep(300);
    const versions = (await admin(gw, 'GET', '/admin/status')).json.config.version - v0;
    const total = Date.now() - t0;
    console.log(`registry flapping: ${2 * FLAPS + 1} changes in ${elapsed} ms became ${versions} config versions`);
    // One at once, then at most one per 250 ms over the whole time (the last one may come after the flapping).
    expect(versions).toBeGreaterThanOrEqual(1);
    expect(versions).toBeLessThanOrEqual(Math.ceil(total / 250) + 1);
    expect(versions).toBeLessThan(2 * FLAPS + 1);
  });

  it('an upstream with only a registry answers 503 no_healthy_upstream until a target registers', async () => {
    const a = await named('a', '127.0.0.1');
    const gw = await gateway({ upstreams: { app: { registry: {} } } });
    expect(await answers(gw)).toEqual(['503 no_healthy_upstream']);
    expect(await metric(gw, 'turnpike_upstream_targets{upstream="app"}')).toBe(0);
    expect((await register(gw, 'app', { url: a.url })).status).toBe(201);
    await until(gw, ['a'], Date.now(), 1000);
  });

  it('a user reload keeps the discovered targets; discovery never writes the config file and is never audited', async () => {
    const a = await named('a', '127.0.0.1');
    const b = await named('b', '127.0.0.1');
    const gw = await gateway({ upstreams: { app: { registry: {}, targets: [a.url] } } });
    const file = readFileSync(gw.configFile, 'utf8');
    expect((await register(gw, 'app', { url: b.url })).status).toBe(201);
    await until(gw, ['a', 'b'], Date.now(), 1000);
    // Many discovery updates: the file stays byte for byte.
    for (let i = 0; i < 5; i++) {
      await deregister(gw, 'app', b.url);
      await register(gw, 'app', { url: b.url });
    }
    await until(gw, ['a', 'b'], Date.now(), 1000);
    expect(readFileSync(gw.configFile, 'utf8')).toBe(file);
    // The user edits the file (a second route) and reloads: b stays.
    const doc = JSON.parse(file);
    doc.routes.unshift({ id: 'extra', path: '/extra', upstream: 'app' });
    writeFileSync(gw.configFile, JSON.stringify(doc, null, 2));
    const rl = await admin(gw, 'POST', '/admin/config/reload');
    expect(rl.status).toBe(200);
    expect(rl.json.changes.upstreams).toEqual({ added: [], removed: [], changed: [] });
    expect(await answers(gw)).toEqual(['a', 'b']);
    expect(await answers(gw, '/extra')).toEqual(['a', 'b']);
    const audit = (await admin(gw, 'GET', '/admin/audit')).json.items;
    expect(audit.map((x: any) => x.action)).toEqual(['config.reload']);
    expect((await admin(gw, 'GET', '/admin/status')).json.reloads.success).toBe(1);
    // Removing registry from the upstream by reload drops its registered targets.
    delete doc.upstreams.app.registry;
    writeFileSync(gw.configFile, JSON.stringify(doc, null, 2));
    expect((await admin(gw, 'POST', '/admin/config/reload')).status).toBe(200);
    expect(await answers(gw)).toEqual(['a']);
  });

  it('an admin thread that dies and is restarted keeps the registrations (with their expiry) the workers serve', async () => {
    const a = await named('a', '127.0.0.1');
    const b = await named('b', '127.0.0.1');
    const adminPort = await new Promise<number>((resolve) => {
      const srv = http.createServer().listen(0, '127.0.0.1', () => {
        const p = (srv.address() as { port: number }).port;
        srv.close(() => resolve(p));
      });
    });
    const gw = await gateway({ upstreams: { app: { registry: {}, targets: [a.url] } }, admin: { port: adminPort } }, 2, { TURNPIKE_TEST_HOOKS: '1' });
    expect((await register(gw, 'app', { url: b.url, ttlMs: 60000 })).status).toBe(201);
    await until(gw, ['a', 'b'], Date.now(), 1000);
    const before = (await targetsOf(gw, 'app')).find((t) => t.url === b.url).expiresAt;
    gw.proc.kill('SIGWINCH');
    const t0 = Date.now();
    while (!gw.logs.some((l) => l.includes('"admin thread restarted"')) && Date.now() - t0 < 10_000) await sleep(50);
    expect(gw.logs.some((l) => l.includes('"admin thread restarted"'))).toBe(true);
    expect(await answers(gw)).toEqual(['a', 'b']);
    const after = (await targetsOf(gw, 'app')).find((t) => t.url === b.url);
    expect([after.source, after.expiresAt]).toEqual(['registry', before]);
    // Its heartbeat is a renewal, not a new registration.
    const hb = await register(gw, 'app', { url: b.url });
    expect([hb.status, hb.json.created]).toEqual([200, false]);
  });

  it('a registration of the gateway\'s own listener is refused (a loop), by any loopback name; another port is fine', async () => {
    const port = await freePort();
    const gw = await gateway({
      server: { port },
      admin: { port: await freePort() },
      upstreams: { app: { registry: {} } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }],
    }, 1);
    const spellings = [
      '127.0.0.1', 'localhost', 'localhost.', '127.0.0.2', '[::1]', '0.0.0.0', '[::]', '[::ffff:127.0.0.1]', '127.1', '2130706433', 'LOCALHOST',
    ];
    for (const host of spellings) {
      const url = `http://${host}:${port}`;
      const r = await register(gw, 'app', { url });
      expect([r.status, r.json?.error?.code], url).toEqual([422, 'invalid_body']);
      expect(r.json.error.message, url).toContain('own listener');
    }
    // The admin listener too: registered, it would serve the admin API on the proxy port.
    const adminUrl = `http://127.0.0.1:${gw.adminPort}`;
    const viaAdmin = await register(gw, 'app', { url: adminUrl });
    expect([viaAdmin.status, viaAdmin.json?.error?.code]).toEqual([422, 'invalid_body']);
    expect(viaAdmin.json.error.message).toContain('own admin listener');
    expect((await register(gw, 'app', { url: `http://127.0.0.1:${port === 65535 ? port - 1 : port + 1}` })).status).toBe(201);
  });

  it('bad registrations get a clear 4xx', async () => {
    const gw = await gateway({
      upstreams: { app: { registry: { maxTargets: 1 }, targets: ['http://127.0.0.1:1'] }, fixed: { targets: ['http://127.0.0.1:2'] } },
      routes: [{ id: 'app', path: '/*', upstream: 'app' }, { id: 'fixed', path: '/fixed', upstream: 'fixed' }],
    });
    // [what, method, path, body, token, content type, status, code, message contains]
    const cases: [string, string, string, unknown, string | null, string | undefined, number, string, string][] = [
      ['no token', 'POST', '/admin/upstreams/app/targets', { url: 'http://127.0.0.1:5' }, null, undefined, 401, 'unauthorized', 'Bearer'],
      ['wrong token', 'POST', '/admin/upstreams/app/targets', { url: 'http://127.0.0.1:5' }, 'nope', undefined, 401, 'unauthorized', 'Invalid'],
      ['viewer token', 'POST', '/admin/upstreams/app/targets', { url: 'http://127.0.0.1:5' }, VIEWER, undefined, 403, 'forbidden', 'admin role'],
      ['viewer deregisters', 'DELETE', '/admin/upstreams/app/targets?url=http%3A%2F%2F127.0.0.1%3A5', undefined, VIEWER, undefined, 403, 'forbidden', 'admin role'],
      ['unknown upstream', 'POST', '/admin/upstreams/nope/targets', { url: 'http://127.0.0.1:5' }, TOKEN, undefined, 404, 'not_found', 'known: app, fixed'],
      ['upstream without registry', 'POST', '/admin/upstreams/fixed/targets', { url: 'http://127.0.0.1:5' }, TOKEN, undefined, 409, 'conflict', 'registry: {}'],
      ['ws://', 'POST', '/admin/upstreams/app/targets', { url: 'ws://127.0.0.1:5' }, TOKEN, undefined, 422, 'invalid_body', 'unsupported scheme "ws://"; only http:// and https:// upstreams are supported'],
      ['a path', 'POST', '/admin/upstreams/app/targets', { url: 'http://127.0.0.1:5/api' }, TOKEN, undefined, 422, 'invalid_body', 'must not have a path'],
      ['credentials', 'POST', '/admin/upstreams/app/targets', { url: 'http://u:p@127.0.0.1:5' }, TOKEN, undefined, 422, 'invalid_body', 'credentials'],
      ['not a URL', 'POST', '/admin/upstreams/app/targets', { url: '127.0.0.1:5' }, TOKEN, undefined, 422, 'invalid_body', 'absolute http:// or https:// URL'],
      ['no url', 'POST', '/admin/upstreams/app/targets', { weight: 2 }, TOKEN, undefined, 422, 'invalid_body', 'url: required'],
      ['weight 0', 'POST', '/admin/upstreams/app/targets', { url: 'http://127.0.0.1:5', weight: 0 }, TOKEN, undefined, 422, 'invalid_body', 'weight: must be a whole number from 1 to 1000'],
      ['ttl too short', 'POST', '/admin/upstreams/app/targets', { url: 'http://127.0.0.1:5', ttlMs: 10 }, TOKEN, undefined, 422, 'invalid_body', 'ttlMs: must be a whole number of milliseconds from 1000'],
      ['unknown field', 'POST', '/admin/upstreams/app/targets', { url: 'http://127.0.0.1:5', ttl: 5 }, TOKEN, undefined, 422, 'invalid_body', 'ttl: unknown field'],
      ['a list', 'POST', '/admin/upstreams/app/targets', ['http://127.0.0.1:5'], TOKEN, undefined, 422, 'invalid_body', 'JSON object'],
      ['malformed JSON', 'POST', '/admin/upstreams/app/targets', '{"url":', TOKEN, undefined, 400, 'malformed_body', 'not valid JSON'],
      ['YAML', 'POST', '/admin/upstreams/app/targets', 'url: http://127.0.0.1:5', TOKEN, 'application/yaml', 415, 'unsupported_media_type', 'application/json'],
      ['DELETE without url', 'DELETE', '/admin/upstreams/app/targets', undefined, TOKEN, undefined, 400, 'invalid_query', 'query parameter url is required: the registered target to remove, percent-encoded, e.g. ?url=http%3A%2F%2F'],
      ['a body past 4 KiB', 'POST', '/admin/upstreams/app/targets', { url: 'http://127.0.0.1:5', pad: 'x'.repeat(5000) }, TOKEN, undefined, 413, 'body_too_large', '4096 bytes (4 KiB)'],
      ['DELETE a bad url', 'DELETE', '/admin/upstreams/app/targets?url=ftp%3A%2F%2Fx', undefined, TOKEN, undefined, 400, 'invalid_query', 'only http://'],
      ['DELETE not registered', 'DELETE', '/admin/upstreams/app/targets?url=http%3A%2F%2F127.0.0.1%3A9', undefined, TOKEN, undefined, 404, 'not_found', 'not registered'],
      ['PUT', 'PUT', '/admin/upstreams/app/targets', { url: 'http://127.0.0.1:5' }, TOKEN, undefined, 405, 'method_not_allowed', 'POST, DELETE'],
    ];
    for (const [what, method, path, body, token, type, status, code, message] of cases) {
      const r = await admin(gw, method, path, body, { token, type });
      expect([r.status, r.json?.error?.code], what).toEqual([status, code]);
      expect(r.json.error.message, what).toContain(message);
    }
    // maxTargets: a second registration is refused, the first still renews.
    expect((await register(gw, 'app', { url: 'http://127.0.0.1:5' })).status).toBe(201);
    const full = await register(gw, 'app', { url: 'http://127.0.0.1:6' });
    expect([full.status, full.json.error.code]).toEqual([409, 'conflict']);
    expect(full.json.error.message).toContain('registry.maxTargets 1');
    expect((await register(gw, 'app', { url: 'http://127.0.0.1:5' })).status).toBe(200);
    // The OpenAPI document has both operations, with the path parameter.
    const doc = (await admin(gw, 'GET', '/admin/openapi.json')).json;
    const ops = doc.paths['/admin/upstreams/{name}/targets'];
    expect(Object.keys(ops).sort()).toEqual(['delete', 'post']);
    expect(ops.post.parameters).toEqual([expect.objectContaining({ name: 'name', in: 'path', required: true })]);
    expect(ops.delete.parameters.map((p: any) => [p.name, p.in, p.required])).toEqual([['name', 'path', true], ['url', 'query', true]]);
  });
});

// -- the registry in Redis ---------------------------------------------------------------

describe('registry in Redis', () => {
  let redis: PrivateRedis;
  beforeAll(async () => { redis = await startRedis(); });
  afterAll(async () => { await redis.stop(); });

  it('two instances share it: a registration through one, and one written directly in Redis by a service, reach every worker of both within 1 s; Redis killed: both keep serving the last set', async () => {
    const a = await named('a', '127.0.0.1');
    const b = await named('b', '127.0.0.1');
    const c = await named('c', '127.0.0.1');
    const config = { upstreams: { app: { registry: { ttlMs: 60000 }, targets: [a.url] } }, redis: { url: redis.url, keyPrefix: 'disc:' } };
    const gw1 = await gateway(config);
    const gw2 = await gateway(config);
    expect(await answers(gw2)).toEqual(['a']);

    const r = await register(gw1, 'app', { url: b.url, weight: 2 });
    const at = Date.now();
    expect([r.status, r.json.store]).toEqual([201, 'redis']);
    const t1 = await until(gw1, ['a', 'b'], at, 1000);
    const t2 = await until(gw2, ['a', 'b'], at, 1000);
    console.log(`registry (redis): a registration through instance 1 served by every worker of instance 1 after ${t1} ms, of instance 2 after ${t2} ms`);
    expect((await targetsOf(gw2, 'app')).map((x) => [x.url, x.source, x.weight])).toEqual([[a.url, 'config', 1], [b.url, 'registry', 2]]);

    // A service writes Redis itself, without PUBLISH: the poll finds it.
    const client = new Redis(redis.url);
    client.on('error', () => {}); // Redis is killed below
    cleanup.push(async () => client.disconnect());
    const [sec, usec] = (await client.time()) as [string, string];
    const now = Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
    await client.zadd('disc:registry:{app}', now + 60000, c.url);
    const direct = Date.now();
    const d1 = await until(gw1, ['a', 'b', 'c'], direct, 1000);
    const d2 = await until(gw2, ['a', 'b', 'c'], direct, 1000);
    console.log(`registry (redis): a direct ZADD (no PUBLISH) served by every worker after ${d1} / ${d2} ms`);
    // A member that is not a normalised URL is ignored, with a warning.
    await client.zadd('disc:registry:{app}', now + 60000, 'not a url');
    await client.publish('disc:registry', 'app');
    await sleep(700);
    expect(await answers(gw1)).toEqual(['a', 'b', 'c']);
    expect(gw1.logs.some((l) => l.includes('ignored a registry entry in Redis'))).toBe(true);
    await client.zrem('disc:registry:{app}', 'not a url');

    // Deregistered through instance 2: both drain it.
    expect((await deregister(gw2, 'app', b.url)).status).toBe(200);
    const gone = Date.now();
    await until(gw1, ['a', 'c'], gone, 1000);
    await until(gw2, ['a', 'c'], gone, 1000);

    // Redis killed: the last set keeps serving; registrations answer 503; the errors are counted.
    await redis.kill();
    await sleep(1200);
    expect(await answers(gw1)).toEqual(['a', 'c']);
    expect(await answers(gw2)).toEqual(['a', 'c']);
    const down = await register(gw1, 'app', { url: b.url });
    expect([down.status, down.json.error.code]).toEqual([503, 'unavailable']);
    expect(down.json.error.message).toContain('keep serving');
    expect(await metric(gw1, 'turnpike_discovery_errors_total{upstream="app",source="registry"}')).toBeGreaterThan(0);
    expect(gw2.logs.some((l) => l.includes('"registry discovery failed"') && l.includes('"level":"error"'))).toBe(true);
    // Back (empty: nothing was persisted): a new registration works again.
    await redis.restart();
    // Each instance reconnects on its own backoff (up to ~2.5 s) and then reads the (empty) set.
    await until(gw1, ['a'], Date.now(), 5000);
    await until(gw2, ['a'], Date.now(), 5000);
    expect((await register(gw1, 'app', { url: b.url })).status).toBe(201);
    await until(gw2, ['a', 'b'], Date.now(), 1000);
  });

  it('expiry in Redis: a registration not renewed is drained by every instance', async () => {
    const a = await named('a', '127.0.0.1');
    const b = await named('b', '127.0.0.1');
    const gw = await gateway({ upstreams: { app: { registry: {}, targets: [a.url] } }, redis: { url: redis.url, keyPrefix: 'exp:' } });
    expect((await register(gw, 'app', { url: b.url, ttlMs: 1000 })).status).toBe(201);
    await until(gw, ['a', 'b'], Date.now(), 1000);
    await until(gw, ['a'], Date.now(), 2500);
  });
});
