/**
 * Logs as an operator reads them: the access log (JSON and combined, to a
 * file and to stdout, sampling, redaction, logrotate's SIGUSR1), the error
 * log (what failed, for which request id, rate limited), one format for
 * every thread, and the level changed at runtime through the admin API.
 */
import { existsSync, readFileSync, renameSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { rawExchange } from '../helpers/raw-http.js';

const TOKEN = 'logs-test-admin-token-0123456789';
let up: Upstream;
let dir: string;

beforeAll(async () => {
  up = await startUpstream((req, res) => { res.end('ok ' + req.url); });
  dir = mkdtempSync(join(tmpdir(), 'turnpike-logs-'));
});
afterAll(async () => {
  await up?.close();
});

const DEAD = 'http://127.0.0.1:9'; // discard port: nothing listens there

function config(log: Record<string, unknown>, workers = 1) {
  return {
    ...baseConfig({
      server: { workers },
      admin: { enabled: true, port: 0 },
      upstreams: { up: { targets: [up.url] }, dead: { targets: [DEAD] } },
      routes: [
        { id: 'up', path: '/up/*', upstream: 'up' },
        { id: 'dead', path: '/dead/*', upstream: 'dead' },
        { id: 'small', path: '/small/*', upstream: 'up', maxBodyBytes: 4 },
      ],
    }),
    log,
  };
}

async function get(gw: Gateway, path: string, headers: Record<string, string> = {}) {
  const r = await request(gw.url + path, { headers });
  const body = await r.body.text();
  return { status: r.statusCode, headers: r.headers, body };
}

/** Lines of a file as parsed JSON, waiting until at least `n` are there. */
async function jsonLines(file: string, n: number): Promise<any[]> {
  let lines: string[] = [];
  for (let i = 0; i < 200; i++) {
    lines = existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter((l) => l !== '') : [];
    if (lines.length >= n) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  return lines.map((l) => JSON.parse(l));
}

/** Parsed JSON lines the gateway wrote to stderr (its own log). */
function stderrJson(gw: Gateway): any[] {
  return gw.logs.map((l) => { try { return JSON.parse(l); } catch { return null; } }).filter((j) => j !== null && typeof j.msg === 'string');
}

describe('access log', () => {
  let gw: Gateway;
  let file: string;
  beforeAll(async () => {
    file = join(dir, 'access.log');
    gw = await startGateway(config({ access: { destination: file } }), { env: { TURNPIKE_ADMIN_TOKEN: TOKEN } });
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it('one JSON line per request with every field, secrets redacted, client text escaped', async () => {
    const ok = await get(gw, '/up/x?token=s3cr3t&a=1&API_KEY=k', { 'user-agent': 'agent "quoted" \\ back', authorization: 'Bearer hunter2', cookie: 'sid=xyz' });
    const notFound = await get(gw, '/nowhere');
    const bad = await get(gw, '/dead/x');
    const lines = await jsonLines(file, 3);
    const byId = (id: unknown) => lines.find((l) => l.request_id === id);
    const a = byId(ok.headers['x-request-id'])!;
    expect(Object.keys(a)).toEqual(['time', 'request_id', 'client', 'method', 'host', 'path', 'query', 'status', 'bytes_received',
      'bytes_sent', 'duration_ms', 'upstream_ms', 'route', 'upstream', 'target', 'error', 'user_agent']);
    expect(a.time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    expect(Math.abs(Date.parse(a.time) - Date.now())).toBeLessThan(10_000);
    expect(a).toMatchObject({
      client: '127.0.0.1', method: 'GET', host: `127.0.0.1:${gw.port}`, path: '/up/x', query: 'token=[REDACTED]&a=1&API_KEY=[REDACTED]',
      status: 200, bytes_received: 0, bytes_sent: ok.body.length, route: 'up', upstream: 'up', target: up.url, error: null,
      user_agent: 'agent "quoted" \\ back',
    });
    expect(a.duration_ms).toBeGreaterThan(0);
    expect(a.upstream_ms).toBeGreaterThan(0);
    expect(a.upstream_ms).toBeLessThanOrEqual(a.duration_ms);
    const text = readFileSync(file, 'utf8');
    for (const secret of ['s3cr3t', 'hunter2', 'sid=xyz', '=k&', '=k"']) expect(text).not.toContain(secret);
    expect(byId(notFound.headers['x-request-id'])).toMatchObject({ status: 404, route: null, upstream: null, error: 'route_not_found', upstream_ms: null });
    expect(byId(bad.headers['x-request-id'])).toMatchObject({ status: 502, route: 'dead', upstream: 'dead', target: DEAD, error: 'upstream_connect_failed' });
  });

  it('logs requests answered early, HEAD included, and bodies by their bytes', async () => {
    const head = await rawExchange(gw.port, 'HEAD /nowhere HTTP/1.1\r\nHost: t\r\n\r\n', true);
    const rid = head.res.headers.find(([k]) => k === 'x-request-id')![1];
    head.conn.close();
    const post = await request(gw.url + '/up/post', { method: 'POST', body: 'hello world' });
    await post.body.dump();
    const lines = await jsonLines(file, 5);
    expect(lines.find((l) => l.request_id === rid)).toMatchObject({ method: 'HEAD', status: 404, error: 'route_not_found' });
    expect(lines.find((l) => l.request_id === post.headers['x-request-id'])).toMatchObject({ method: 'POST', bytes_received: 11, status: 200 });
  });

  it('SIGUSR1 reopens the file (logrotate): new lines go to the new file', async () => {
    await get(gw, '/up/before-rotate');
    await expect.poll(() => readFileSync(file, 'utf8').includes('/up/before-rotate'), { timeout: 2000 }).toBe(true);
    renameSync(file, file + '.1');
    gw.proc.kill('SIGUSR1');
    await new Promise((r) => setTimeout(r, 200));
    const after = await get(gw, '/up/after-rotate');
    const fresh = await jsonLines(file, 1);
    expect(fresh.map((l) => l.path)).toContain('/up/after-rotate');
    expect(fresh.find((l) => l.request_id === after.headers['x-request-id'])).toBeDefined();
    expect(readFileSync(file + '.1', 'utf8')).toContain('/up/before-rotate');
    expect(readFileSync(file + '.1', 'utf8')).not.toContain('/up/after-rotate');
  });
});

describe('access log formats and sampling', () => {
  it('combined (nginx) format', async () => {
    const file = join(dir, 'combined.log');
    const gw = await startGateway(config({ access: { destination: file, format: 'combined' } }));
    try {
      await get(gw, '/up/c?x=1&password=pw', { 'user-agent': 'UA/1.0', referer: 'http://ref.test/"x"' });
      await expect.poll(() => existsSync(file) && readFileSync(file, 'utf8').includes('\n'), { timeout: 2000 }).toBe(true);
      const line = readFileSync(file, 'utf8').trim();
      expect(line).toMatch(/^127\.0\.0\.1 - - \[\d\d\/[A-Z][a-z]{2}\/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET \/up\/c\?x=1&password=\[REDACTED\] HTTP\/1\.1" 200 \d+ "http:\/\/ref\.test\/\\x22x\\x22" "UA\/1\.0"$/);
    } finally {
      await gw.stop();
    }
  });

  it('sampleRate 0 logs only 5xx; fields picks and orders fields; stdout is a destination', async () => {
    const gw = await startGateway(config({ access: { destination: 'stdout', sampleRate: 0, fields: ['status', 'request_id', 'error'] } }));
    try {
      for (let i = 0; i < 5; i++) await get(gw, '/up/ok');
      const bad = await get(gw, '/dead/x');
      let lines: any[] = [];
      for (let i = 0; i < 100 && lines.length === 0; i++) {
        lines = gw.logs.flatMap((chunk) => chunk.split('\n')).map((l) => { try { return JSON.parse(l); } catch { return null; } })
          .filter((j) => j !== null && 'status' in j && !('msg' in j));
        if (lines.length === 0) await new Promise((r) => setTimeout(r, 20));
      }
      expect(lines).toEqual([{ status: 502, request_id: bad.headers['x-request-id'], error: 'upstream_connect_failed' }]);
    } finally {
      await gw.stop();
    }
  });

  it('enabled: false writes nothing', async () => {
    const file = join(dir, 'off.log');
    const gw = await startGateway(config({ access: { enabled: false, destination: file } }));
    try {
      await get(gw, '/up/x');
      await new Promise((r) => setTimeout(r, 150));
      expect(existsSync(file)).toBe(false);
    } finally {
      await gw.stop();
    }
  });
});

describe('error log', () => {
  it('says what failed for the request id in the 502 body, rate limited per kind and target', async () => {
    const gw = await startGateway(config({ access: { enabled: false }, errors: { burst: 3, intervalMs: 300 } }));
    try {
      const first = await get(gw, '/dead/first');
      const rid = JSON.parse(first.body).error.requestId;
      for (let i = 0; i < 20; i++) await get(gw, '/dead/more');
      await new Promise((r) => setTimeout(r, 1500)); // the window ends; the worker's sweep reports the rest
      const lines = stderrJson(gw);
      const failures = lines.filter((j) => j.msg === 'upstream connect failed');
      expect(failures).toHaveLength(3);
      expect(failures[0]).toMatchObject({
        level: 'error', thread: 'worker-0', requestId: rid, status: 502, error: 'upstream_connect_failed', phase: 'connect',
        detail: 'ECONNREFUSED', route: 'dead', upstream: 'dead', target: DEAD,
      });
      const summary = lines.find((j) => j.msg === 'more upstream failures of this kind were left out of the log');
      expect(summary).toMatchObject({ error: 'upstream_connect_failed', target: DEAD, suppressed: 18, intervalMs: 300 });
    } finally {
      await gw.stop();
    }
  });

  it('every gateway log line is one JSON object with an ISO time, a level and its thread', async () => {
    const gw = await startGateway(config({ access: { enabled: false } }));
    await get(gw, '/dead/x');
    await new Promise((r) => setTimeout(r, 100));
    await gw.stop();
    const lines = gw.logs.flatMap((c) => c.split('\n')).filter((l) => l.trim() !== '');
    expect(lines.length).toBeGreaterThan(3);
    const threads = new Set<string>();
    for (const l of lines) {
      const j = JSON.parse(l);
      expect(j.time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      expect(['debug', 'info', 'warn', 'error']).toContain(j.level);
      expect(typeof j.msg).toBe('string');
      threads.add(j.thread);
    }
    expect(threads.has('main')).toBe(true);
    expect(threads.has('worker-0')).toBe(true);
  });
});

describe('log level at runtime (PUT /admin/logging)', () => {
  it('reaches every thread, is audited, refuses a body that is not one level', async () => {
    const gw = await startGateway(config({ access: { enabled: false } }, 2), { env: { TURNPIKE_ADMIN_TOKEN: TOKEN } });
    const admin = async (method: string, path: string, body?: unknown, token = TOKEN) => {
      const r = await request(`http://127.0.0.1:${gw.adminPort}${path}`, {
        method: method as any, headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
      return { status: r.statusCode, body: await r.body.json() as any };
    };
    try {
      expect((await admin('GET', '/admin/logging')).body).toMatchObject({ level: 'info', configuredLevel: 'info', access: { enabled: false } });
      // Workers log the reopen at debug: nothing at info.
      const count = () => stderrJson(gw).filter((j) => j.msg === 'log files reopened').length;
      gw.proc.kill('SIGUSR1');
      await new Promise((r) => setTimeout(r, 200));
      expect(count()).toBe(0);
      const put = await admin('PUT', '/admin/logging', { level: 'debug' });
      expect(put.status).toBe(200);
      expect(put.body.level).toBe('debug');
      expect((await admin('GET', '/admin/logging')).body.level).toBe('debug');
      await new Promise((r) => setTimeout(r, 100));
      gw.proc.kill('SIGUSR1');
      await expect.poll(count, { timeout: 2000 }).toBe(2); // both workers
      expect(stderrJson(gw).find((j) => j.msg === 'log level changed')).toMatchObject({ from: 'info', to: 'debug', thread: 'main' });
      const audit = await admin('GET', '/admin/audit');
      expect(JSON.stringify(audit.body)).toContain('logging.update');
      const bad = await admin('PUT', '/admin/logging', { level: 'verbose' });
      expect(bad.status).toBe(422);
      expect(bad.body.error.code).toBe('invalid_body');
      const extra = await admin('PUT', '/admin/logging', { level: 'info', format: 'json' });
      expect(extra.status).toBe(422);
    } finally {
      await gw.stop();
    }
  });
});
