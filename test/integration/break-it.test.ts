/**
 * The operator break-it pass (issue 9), one test per finding whose fix had
 * none, each written to fail without the fix:
 *  - a crashed worker's in-flight requests are counted in
 *    turnpike_requests_lost_total (not logged as clients' 499s);
 *  - a response the gateway cuts mid-body (upstream died, or went silent)
 *    keeps its own code: res.close() used to make it a client_aborted too;
 *  - the port lock: a lock file left by a dead gateway whose pid now
 *    belongs to another process is taken over (start time and command line
 *    tell them apart), a live gateway's lock is not;
 *  - PUT /admin/config on a config file that is a symlink writes through
 *    it: the link stays a link, its target gets the document and a .bak;
 *  - a reload (SIGHUP, PUT /admin/config) after SIGTERM is refused while
 *    the drain runs, and nothing is persisted;
 *  - query redaction through a real gateway, JSON and combined formats: every
 *    default name × the encodings that leaked (the exhaustive matrix is
 *    test/unit/logs/access-redaction.test.ts).
 */
import { spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import type http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { DEFAULTS } from '../../common/config/schema.js';
import { portLockFile } from '../../engine/supervisor.js';
import { baseConfig, startGateway, startGatewayFile, trackProcess, type Gateway } from '../helpers/gateway.js';
import { sampleValue, scrape } from '../helpers/metrics.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { freePort } from '../helpers/ports.js';

const TOKEN = `break-it-admin-token-${Math.random().toString(36).slice(2)}`;
let up: Upstream;
const held: http.ServerResponse[] = [];

beforeAll(async () => {
  // /hold/*: held until the test lets it go; anything else: answered at once.
  up = await startUpstream((req, res) => {
    if (req.url!.startsWith('/hold')) held.push(res);
    else res.end('ok ' + req.url);
  });
});
afterAll(async () => {
  for (const r of held) r.destroy();
  await up?.close();
});

function jsonLines(gw: Gateway): any[] {
  return gw.logs.map((l) => { try { return JSON.parse(l); } catch { return null; } }).filter((j) => j !== null);
}

async function api(gw: Gateway, method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> {
  const r = await request(`http://127.0.0.1:${gw.adminPort}${path}`, {
    method: method as any,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await r.body.text();
  let json: any = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: r.statusCode, json };
}

describe('a crashed worker', () => {
  it('its in-flight requests are counted in turnpike_requests_lost_total, not logged or counted as client aborts', async () => {
    const gw = await startGateway(baseConfig({
      server: { workers: 1 },
      admin: { enabled: true, port: 0 },
      upstreams: { u: { targets: [up.url] } },
      routes: [{ id: 'all', path: '/*', upstream: 'u' }],
    }), { env: { TURNPIKE_TEST_HOOKS: '1', TURNPIKE_ADMIN_TOKEN: TOKEN } });
    const before = held.length;
    try {
      const inflight = [1, 2, 3].map((i) => request(`${gw.url}/hold/${i}`).then((r) => r.body.text().then(() => 'answered'), () => 'reset'));
      await expect.poll(() => held.length - before, { timeout: 5000 }).toBe(3);
      gw.proc.kill('SIGUSR2'); // test hook: worker 0 throws
      expect(await Promise.all(inflight)).toEqual(['reset', 'reset', 'reset']);
      await expect.poll(() => jsonLines(gw).some((j) => j.msg === 'worker exited; restarting'), { timeout: 5000 }).toBe(true);
      expect(jsonLines(gw).find((j) => j.msg === 'worker exited; restarting').lostRequests).toBe(3);
      // The replacement serves.
      await expect.poll(async () => {
        try { const r = await request(`${gw.url}/after`); await r.body.dump(); return r.statusCode; } catch { return 0; }
      }, { timeout: 5000 }).toBe(200);
      const text = await scrape(gw.adminPort!);
      expect(sampleValue(text, 'turnpike_requests_lost_total')).toBe(3);
      expect(sampleValue(text, 'turnpike_worker_restarts_total')).toBe(1);
      expect(sampleValue(text, 'turnpike_gateway_errors_total{reason="client_aborted"}') ?? 0).toBe(0);
      expect(text).not.toMatch(/^turnpike_requests_total\{[^}]*code="499"/m);
      expect(sampleValue(text, 'turnpike_active_requests')).toBe(0);
      // No access line for them (README: they have none), certainly not as 499s.
      const access = jsonLines(gw).filter((j) => 'request_id' in j && !('msg' in j));
      expect(access.filter((l) => String(l.path).startsWith('/hold/'))).toEqual([]);
    } finally {
      await gw.stop();
    }
  });
});

describe('a response the gateway cuts mid-body', () => {
  it('is logged and counted with its own code (upstream_aborted, upstream_timeout), never also as client_aborted', async () => {
    const raw = await startUpstream((req, res) => {
      res.writeHead(200, { 'content-length': '100' });
      res.write('x'.repeat(40));
      // /abort: the upstream dies mid-body; /stall: it goes silent past idleMs.
      if (req.url === '/abort') setTimeout(() => res.socket!.destroy(), 50);
      else held.push(res);
    });
    const gw = await startGateway(baseConfig({
      admin: { enabled: true, port: 0 },
      upstreams: { u: { targets: [raw.url], timeouts: { idleMs: 300 } } },
      routes: [{ id: 'all', path: '/*', upstream: 'u' }],
    }), { env: { TURNPIKE_ADMIN_TOKEN: TOKEN } });
    try {
      for (const path of ['/abort', '/stall']) {
        const got = await request(`${gw.url}${path}`).then((r) => r.body.text().then(() => 'whole', () => 'cut'), () => 'cut');
        expect(got, path).toBe('cut');
      }
      await expect.poll(() => jsonLines(gw).filter((j) => 'request_id' in j && !('msg' in j)).length, { timeout: 5000 }).toBe(2);
      const access = jsonLines(gw).filter((j) => 'request_id' in j && !('msg' in j));
      expect(access.find((l) => l.path === '/abort')).toMatchObject({ status: 200, error: 'upstream_aborted', bytes_sent: 40 });
      expect(access.find((l) => l.path === '/stall')).toMatchObject({ status: 200, error: 'upstream_timeout', bytes_sent: 40 });
      const text = await scrape(gw.adminPort!);
      expect(sampleValue(text, 'turnpike_gateway_errors_total{reason="upstream_aborted"}')).toBe(1);
      expect(sampleValue(text, 'turnpike_gateway_errors_total{reason="upstream_timeout"}')).toBe(1);
      expect(sampleValue(text, 'turnpike_gateway_errors_total{reason="client_aborted"}') ?? 0).toBe(0);
    } finally {
      await gw.stop();
      await raw.close();
    }
  });
});

describe('the port lock', () => {
  /** A process that is not a turnpike, alive for the test: its pid stands for a reused one. */
  function otherProcess() {
    const p = trackProcess(spawn('sleep', ['60'], { stdio: 'ignore' }));
    return p;
  }

  function startTime(pid: number): string {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]!;
  }

  it('a lock whose pid now belongs to another process is stale and taken over; a live holder\'s is not', async () => {
    const port = await freePort();
    const file = portLockFile('127.0.0.1', port);
    const other = otherProcess();
    const config = baseConfig({ server: { port }, upstreams: { u: { targets: [up.url] } }, routes: [{ id: 'all', path: '/*', upstream: 'u' }] });
    try {
      // Written by a gateway that was killed -9; its pid now runs `sleep` (another start time).
      for (const content of [`${other.pid} 1\n`, `${other.pid}\n` /* an older gateway's lock: no start time, not a turnpike */]) {
        writeFileSync(file, content);
        const gw = await startGateway(config);
        try {
          expect(gw.port).toBe(port);
          expect(readFileSync(file, 'utf8')).toBe(`${gw.proc.pid} ${startTime(gw.proc.pid!)}\n`);
        } finally {
          expect(await gw.stop()).toBe(0);
        }
        expect(existsSync(file)).toBe(false); // removed at stop
      }
      // The pid and start time of a live process: that lock is held.
      writeFileSync(file, `${other.pid} ${startTime(other.pid!)}\n`);
      const err = await startGateway(config).then((g) => g.stop().then(() => null), (e: Error) => e);
      expect(err?.message).toMatch(new RegExp(`is being taken by another turnpike \\(pid ${other.pid}`));
    } finally {
      other.kill('SIGKILL');
      try { unlinkSync(file); } catch { /* gone */ }
    }
  });
});

describe('PUT /admin/config on a symlinked config file', () => {
  it('writes through the link: the link stays, its target gets the document and the .bak', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'turnpike-symlink-'));
    mkdirSync(join(dir, 'real'));
    const target = join(dir, 'real', 'gw.json');
    const link = join(dir, 'gw.json');
    const routes = [{ id: 'all', path: '/*', upstream: 'u' }];
    const first = baseConfig({ admin: { enabled: true, port: 0 }, upstreams: { u: { targets: [up.url] } }, routes });
    writeFileSync(target, JSON.stringify(first, null, 2));
    symlinkSync(join('real', 'gw.json'), link);
    const gw = await startGatewayFile(link, { env: { TURNPIKE_ADMIN_TOKEN: TOKEN } });
    try {
      const next = { ...first, routes: [{ id: 'two', path: '/two/*', upstream: 'u' }, ...routes] };
      const r = await api(gw, 'PUT', '/admin/config', next);
      expect(r.status).toBe(200);
      expect(r.json.persisted).toBe(true);
      expect(lstatSync(link).isSymbolicLink()).toBe(true);
      expect(readlinkSync(link)).toBe(join('real', 'gw.json'));
      expect(JSON.parse(readFileSync(target, 'utf8')).routes.map((x: { id: string }) => x.id)).toEqual(['two', 'all']);
      expect(JSON.parse(readFileSync(`${target}.bak`, 'utf8'))).toEqual(first);
      expect(existsSync(`${link}.bak`)).toBe(false);
      // And the reload from the link (SIGHUP) reads what was written.
      const mark = gw.logs.length;
      gw.proc.kill('SIGHUP');
      await expect.poll(() => gw.logs.slice(mark).some((l) => l.includes('"msg":"config reloaded"')), { timeout: 5000 }).toBe(true);
      const res = await request(`${gw.url}/two/x`);
      expect(await res.body.text()).toBe('ok /two/x');
    } finally {
      await gw.stop();
    }
  });
});

describe('a reload after SIGTERM', () => {
  it('is refused (SIGHUP and PUT /admin/config) while the drain runs; nothing is persisted; the in-flight request finishes', async () => {
    const gw = await startGateway(baseConfig({
      server: { workers: 1, drainTimeoutMs: 10_000 },
      admin: { enabled: true, port: 0 },
      upstreams: { u: { targets: [up.url] } },
      routes: [{ id: 'all', path: '/*', upstream: 'u' }],
    }), { env: { TURNPIKE_ADMIN_TOKEN: TOKEN } });
    const before = held.length;
    try {
      const fileBefore = readFileSync(gw.configFile, 'utf8');
      const slow = request(`${gw.url}/hold/drain`).then(async (r) => ({ status: r.statusCode, body: await r.body.text() }));
      await expect.poll(() => held.length - before, { timeout: 5000 }).toBe(1);
      gw.proc.kill('SIGTERM');
      await expect.poll(() => jsonLines(gw).some((j) => j.msg === 'draining'), { timeout: 5000 }).toBe(true);
      const mark = gw.logs.length;
      gw.proc.kill('SIGHUP');
      await expect.poll(() => gw.logs.slice(mark).some((l) => l.includes('reload refused: the gateway is shutting down')), { timeout: 5000 }).toBe(true);
      const doc = JSON.parse(fileBefore);
      doc.routes.unshift({ id: 'late', path: '/late/*', upstream: 'u' });
      const put = await api(gw, 'PUT', '/admin/config', doc);
      expect(put.status).toBe(422);
      expect(put.json.error.errors[0].message).toMatch(/shutting down/);
      expect(readFileSync(gw.configFile, 'utf8')).toBe(fileBefore);
      expect(jsonLines(gw).some((j) => j.msg === 'config reloaded')).toBe(false);
      held[before]!.end('slow-ok');
      expect(await slow).toEqual({ status: 200, body: 'slow-ok' });
      expect(await gw.exited).toBe(0);
    } finally {
      await gw.stop();
    }
  });
});

describe('query redaction through a real gateway', () => {
  const names = DEFAULTS.log.access.redactQuery.filter((n) => !n.includes('*')).concat(['csrf_token', 'x-api-key', 'db_password']);
  const encode = (n: string) => [
    n.toUpperCase(),
    `%${n.charCodeAt(0).toString(16).toUpperCase()}${n.slice(1)}`,
    `${n}[]`,
    `${n}[x]`,
    `+${n}`,
    `${n}%20`,
  ];
  for (const format of ['json', 'combined'] as const) {
    it(`${format}: every default name, written every way that leaked, in the query, after ";" and in the Referer`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'turnpike-redact-'));
      const file = join(dir, 'access.log');
      const gw = await startGateway({
        ...baseConfig({ upstreams: { u: { targets: [up.url] } }, routes: [{ id: 'all', path: '/*', upstream: 'u' }] }),
        log: { access: { destination: file, format } },
      });
      const secrets: string[] = [];
      try {
        let i = 0;
        for (const name of names) {
          const forms = encode(name).map((f) => {
            const s = `sEcReT${(i++).toString(36)}z`;
            secrets.push(s);
            return `${f}=${s}`;
          });
          const s = `sEcReT${(i++).toString(36)}z`;
          secrets.push(s);
          const query = `keep=${i}&${forms.join('&')};${name}=${s}`;
          const ref = `sEcReT${(i++).toString(36)}z`;
          secrets.push(ref);
          const r = await request(`${gw.url}/r?${query}`, { headers: { referer: `https://app.test/page?${name}=${ref}` } });
          expect(r.statusCode).toBe(200);
          await r.body.dump();
        }
        await expect.poll(() => (existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean).length : 0), { timeout: 5000 }).toBe(names.length);
        const text = readFileSync(file, 'utf8');
        expect(secrets.filter((s) => text.includes(s))).toEqual([]);
        expect(text.split('[REDACTED]').length - 1).toBe(names.length * (encode('x').length + 1 + (format === 'combined' ? 1 : 0)));
        // The upstream got every one of them as sent: only the log hides them.
        expect(up.seen.filter((x) => x.url.startsWith('/r?')).length).toBeGreaterThanOrEqual(names.length);
      } finally {
        await gw.stop();
      }
    });
  }
});
