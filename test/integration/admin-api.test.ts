/**
 * Admin API v1 against the real gateway process over real sockets: tokens
 * and roles, status, config redaction, reload and replace (applied, refused,
 * dry run, persisted), pagination, audit, stats, OpenAPI, and the CLI's
 * `reload` and `validate --diff` against the running gateway.
 *
 * TURNPIKE_TEST_HOOKS=1 makes the admin API check every answer against its
 * OpenAPI response schema (a mismatch is a 500), so these tests also verify
 * the published document.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { configSchema } from '../../common/config/schema.js';
import { CLI, baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const ENV_TOKEN = `env-${randomBytes(16).toString('hex')}`;
const VIEWER_TOKEN = `viewer-${randomBytes(16).toString('hex')}`;
const OPS_TOKEN = `ops-${randomBytes(16).toString('hex')}`;
const sha = (t: string) => createHash('sha256').update(t).digest('hex');

const dir = mkdtempSync(join(tmpdir(), 'turnpike-admin-api-'));
const tokensFile = join(dir, 'tokens');
const auditLog = join(dir, 'audit', 'audit.log');
writeFileSync(tokensFile, `# admin API tokens\nalice viewer sha256:${sha(VIEWER_TOKEN)}\nops admin sha256:${sha(OPS_TOKEN)}  # on-call\n`);

let up: Upstream;
let gw: Gateway;
let admin: string;

/** A whole config document around these routes (same listener and admin settings as at start). */
function doc(routes: Record<string, unknown>[], upstreams?: Record<string, unknown>): Record<string, any> {
  return baseConfig({
    server: { headers: { request: { set: { 'x-api-key': 'upstream-secret-1', authorization: 'Bearer upstream-cred-2', 'x-plain': 'visible' } } } },
    admin: { enabled: true, port: 0, tokensFile, auditLog },
    upstreams: upstreams ?? { up: { targets: [up.url] } },
    routes,
  });
}

const R1 = { id: 'r1', path: '/r1', methods: ['GET'], upstream: 'up' };

interface Answer { status: number; headers: Record<string, string | string[] | undefined>; json: any; text: string }

async function api(method: string, path: string, opts: { token?: string | null; body?: string | Buffer; type?: string; headers?: Record<string, string> } = {}): Promise<Answer> {
  const token = opts.token === undefined ? ENV_TOKEN : opts.token;
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  if (token !== null) headers['authorization'] = `Bearer ${token}`;
  if (opts.type !== undefined) headers['content-type'] = opts.type;
  const r = await request(admin + path, { method: method as any, headers, ...(opts.body !== undefined ? { body: opts.body } : {}) });
  const text = await r.body.text();
  let json: any = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: r.statusCode, headers: r.headers, json, text };
}

const put = (body: unknown, query = '', token?: string) => api('PUT', `/admin/config${query}`, { body: JSON.stringify(body), type: 'application/json', ...(token ? { token } : {}) });

async function proxied(path: string): Promise<number> {
  const r = await request(gw.url + path);
  await r.body.dump();
  return r.statusCode;
}

function readConfigFile(): any {
  return JSON.parse(readFileSync(gw.configFile, 'utf8'));
}

function auditLines(): any[] {
  return readFileSync(auditLog, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

function cli(args: string[], env: Record<string, string> = {}, cwd = dir) {
  const clean = { ...process.env };
  delete clean['TURNPIKE_ADMIN_TOKEN'];
  delete clean['TURNPIKE_ADMIN_TOKEN_FILE'];
  delete clean['TURNPIKE_ADMIN_URL'];
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd, env: { ...clean, ...env }, encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

beforeAll(async () => {
  up = await startUpstream();
  gw = await startGateway(doc([R1]), { env: { TURNPIKE_ADMIN_TOKEN: ENV_TOKEN, TURNPIKE_TEST_HOOKS: '1' } });
  admin = `http://127.0.0.1:${gw.adminPort}`;
});

afterAll(async () => {
  await gw?.stop();
  await up?.close();
});

describe('authentication', () => {
  it('401 without a token, with WWW-Authenticate: Bearer', async () => {
    const r = await api('GET', '/admin/status', { token: null });
    expect(r.status).toBe(401);
    expect(String(r.headers['www-authenticate'])).toMatch(/^Bearer\b/);
    expect(r.json.error.code).toBe('unauthorized');
  });

  it('401 with a wrong token, another scheme, or a near miss', async () => {
    for (const headers of [
      { authorization: 'Bearer not-the-token' },
      { authorization: `Bearer ${ENV_TOKEN}x` },
      { authorization: `Bearer ${ENV_TOKEN.slice(0, -1)}` },
      { authorization: `Basic ${Buffer.from(`admin:${ENV_TOKEN}`).toString('base64')}` },
      { authorization: ENV_TOKEN },
    ]) {
      const r = await api('GET', '/admin/status', { token: null, headers });
      expect(r.status, headers.authorization).toBe(401);
      expect(r.json.error.code).toBe('unauthorized');
    }
  });

  it('unknown paths answer 401 too before authentication (nothing is revealed)', async () => {
    expect((await api('GET', '/admin/nope', { token: null })).status).toBe(401);
  });

  it('accepts the env token and the tokens-file tokens', async () => {
    expect((await api('GET', '/admin/status')).status).toBe(200);
    expect((await api('GET', '/admin/status', { token: OPS_TOKEN })).status).toBe(200);
    expect((await api('GET', '/admin/status', { token: VIEWER_TOKEN })).status).toBe(200);
  });

  it('viewer: 200 on every read, 403 on writes (and the attempt is audited)', async () => {
    for (const p of ['/admin/status', '/admin/config', '/admin/routes', '/admin/upstreams', '/admin/stats', '/admin/audit', '/admin/logging', '/admin/openapi.json']) {
      expect((await api('GET', p, { token: VIEWER_TOKEN })).status, p).toBe(200);
    }
    const dump = await api('GET', '/admin/config?format=file', { token: VIEWER_TOKEN });
    expect(dump.status).toBe(403); // the document holds secrets unredacted
    expect(dump.json.error.message).toContain('admin role');
    const reload = await api('POST', '/admin/config/reload', { token: VIEWER_TOKEN });
    expect(reload.status).toBe(403);
    expect(reload.json.error.code).toBe('forbidden');
    const replace = await put(doc([R1, { id: 'sneaky', path: '/sneaky', upstream: 'up' }]), '', VIEWER_TOKEN);
    expect(replace.status).toBe(403);
    expect(await proxied('/sneaky')).toBe(404);
    const last = auditLines().slice(-2);
    expect(last.map((l) => [l.actor, l.role, l.action, l.result, l.status])).toEqual([
      ['alice', 'viewer', 'config.reload', 'forbidden', 403],
      ['alice', 'viewer', 'config.replace', 'forbidden', 403],
    ]);
  });
});

describe('reads', () => {
  it('GET /admin/status', async () => {
    const r = await api('GET', '/admin/status');
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toMatch(/^application\/json/);
    const s = r.json;
    expect(s.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(s.uptimeSeconds).toBeGreaterThanOrEqual(0);
    expect(s.config).toEqual({ version: 1, source: gw.configFile });
    expect(s.workers).toEqual([{ index: 0, state: 'ready' }]);
    expect(s.restarts).toBe(0);
    expect(s.reloads).toEqual({ success: 0, failure: 0 });
    expect(s.draining).toBe(false);
  });

  it('GET /admin/config is the running config with secrets redacted', async () => {
    const r = await api('GET', '/admin/config');
    expect(r.status).toBe(200);
    expect(r.json.version).toBe(1);
    expect(r.json.routes.map((x: any) => x.id)).toEqual(['r1']);
    expect(r.json.upstreams.up.targets[0].url).toBe(up.url);
    expect(r.json.server.headers.request.set).toEqual([['x-api-key', '[redacted]'], ['authorization', '[redacted]'], ['x-plain', 'visible']]);
    expect(r.json.admin.tokensFile).toBe('[redacted]');
    expect(r.text).not.toContain('upstream-secret-1');
    expect(r.text).not.toContain('upstream-cred-2');
    // The upstream still gets the real values.
    const seen = up.seen.length;
    expect(await proxied('/r1')).toBe(200);
    expect(up.seen[seen]!.headers['x-api-key']).toBe('upstream-secret-1');
  });

  it('unknown endpoint 404, wrong method 405 with Allow, HEAD like GET', async () => {
    const nf = await api('GET', '/admin/nope');
    expect(nf.status).toBe(404);
    expect(nf.json.error.code).toBe('not_found');
    const m = await api('DELETE', '/admin/routes');
    expect(m.status).toBe(405);
    expect(m.headers['allow']).toBe('GET, HEAD');
    expect(m.json.error.code).toBe('method_not_allowed');
    const m2 = await api('POST', '/admin/config');
    expect(m2.status).toBe(405);
    expect(m2.headers['allow']).toBe('GET, HEAD, PUT');
    const h = await api('HEAD', '/admin/status');
    expect(h.status).toBe(200);
    expect(h.text).toBe('');
  });

  it('query parameters are validated, naming the parameter', async () => {
    for (const [q, param] of [['limit=0', 'limit'], ['limit=1001', 'limit'], ['limit=abc', 'limit'], ['limit=2&limit=3', 'limit'], ['cursor=%21%21', 'cursor'], ['colour=red', 'colour']] as const) {
      const r = await api('GET', `/admin/routes?${q}`);
      expect(r.status, q).toBe(400);
      expect(r.json.error.code).toBe('invalid_query');
      expect(r.json.error.parameter).toBe(param);
      expect(r.json.error.message).toContain(param);
    }
    const d = await api('PUT', '/admin/config?dryRun=maybe', { body: '{}', type: 'application/json' });
    expect([d.status, d.json.error.parameter]).toEqual([400, 'dryRun']);
    const s = await api('GET', '/admin/status?x=1');
    expect([s.status, s.json.error.parameter]).toEqual([400, 'x']);
  });

  it('GET /admin/openapi.json is an OpenAPI 3.1 document of every endpoint', async () => {
    expect((await api('GET', '/admin/openapi.json', { token: null })).status).toBe(401);
    const r = await api('GET', '/admin/openapi.json', { token: VIEWER_TOKEN });
    expect(r.status).toBe(200);
    const d = r.json;
    expect(d.openapi).toBe('3.1.0');
    expect(d.info.title).toMatch(/Turnpike/);
    const expected: Record<string, string[]> = {
      '/admin/status': ['get'], '/admin/config': ['get', 'put'], '/admin/config/reload': ['post'], '/admin/config/validate': ['post'], '/admin/routes': ['get'],
      '/admin/upstreams': ['get'], '/admin/stats': ['get'], '/admin/audit': ['get'], '/admin/openapi.json': ['get'],
      '/admin/logging': ['get', 'put'], '/admin/upstreams/{name}/targets': ['delete', 'post'],
      // admin/api/identity.ts (issue 12)
      '/admin/consumers': ['get', 'post'], '/admin/consumers/{id}': ['delete', 'get', 'patch'], '/admin/consumers/{id}/keys': ['post'],
      '/admin/keys': ['get'], '/admin/keys/{id}': ['get', 'patch'], '/admin/keys/{id}/rotate': ['post'], '/admin/keys/{id}/revoke': ['post'],
      '/admin/groups': ['get', 'post'], '/admin/groups/{id}': ['delete', 'get', 'patch'],
      '/admin/grants': ['get', 'post'], '/admin/grants/{id}': ['delete', 'get'], '/admin/identity/audit': ['get'],
    };
    expect(Object.keys(d.paths).sort()).toEqual(Object.keys(expected).sort());
    for (const [p, methods] of Object.entries(expected)) expect(Object.keys(d.paths[p]).sort(), p).toEqual(methods);
    const body = d.paths['/admin/config'].put.requestBody.content['application/json'].schema;
    const resolved = body.$ref ? d.components.schemas[body.$ref.split('/').pop()] : body;
    expect(resolved.properties).toEqual(JSON.parse(JSON.stringify(configSchema.properties)));
    expect(d.paths['/admin/config'].put.requestBody.content['application/yaml']).toBeDefined();
    expect(d.paths['/admin/routes'].get.parameters.map((x: any) => x.name)).toEqual(['limit', 'cursor']);
    expect(d.components.securitySchemes.bearerAuth.scheme).toBe('bearer');
  });
});

describe('writes', () => {
  it('PUT invalid: 422 with every problem by path, nothing applied, the old config keeps serving', async () => {
    const fileBefore = readFileSync(gw.configFile, 'utf8');
    expect(await proxied('/r1')).toBe(200);
    const bad = doc([R1, { id: 'half', path: '/half', upstream: 'up' }, { id: 'bad', path: '/bad', upstream: 'nope' }]);
    bad.routes.push({ id: 'r1', path: '/dup', upstream: 'up' });
    const r = await put(bad);
    expect(r.status).toBe(422);
    expect(r.json.error.code).toBe('config_invalid');
    const paths = r.json.error.errors.map((e: any) => e.path);
    expect(paths).toEqual(expect.arrayContaining(['routes[2].upstream', 'routes[3].id']));
    expect(r.json.error.errors.find((e: any) => e.path === 'routes[2].upstream').message).toMatch(/unknown upstream "nope"/);
    // Nothing half-applied: the valid part (route "half") is not serving either.
    expect(await proxied('/r1')).toBe(200);
    expect(await proxied('/half')).toBe(404);
    expect(readFileSync(gw.configFile, 'utf8')).toBe(fileBefore);
    const s = (await api('GET', '/admin/status')).json;
    expect(s.config.version).toBe(1);
    expect(s.reloads.failure).toBe(1);
  });

  it('PUT with an unknown field: 422 naming it', async () => {
    const d = doc([{ ...R1, colour: 'blue' }]);
    const r = await put(d);
    expect(r.status).toBe(422);
    expect(r.json.error.errors).toEqual([expect.objectContaining({ path: 'routes[0]', message: expect.stringMatching(/unknown property "colour"/) })]);
  });

  it('PUT malformed bodies: 400 for bad JSON/YAML or empty, 415 for other types, 413 above 1 MiB, 422 for a non-object', async () => {
    const j = await api('PUT', '/admin/config', { body: '{"routes": [', type: 'application/json' });
    expect(j.status).toBe(400);
    expect(j.json.error.code).toBe('malformed_body');
    expect(j.json.error.message).toMatch(/not valid JSON at line 1/);
    const y = await api('PUT', '/admin/config', { body: 'routes: [\n  - id: x\n bad', type: 'application/yaml' });
    expect([y.status, y.json.error.code]).toEqual([400, 'malformed_body']);
    expect((await api('PUT', '/admin/config', { body: '', type: 'application/json' })).status).toBe(400);
    const t = await api('PUT', '/admin/config', { body: '{}', type: 'text/plain' });
    expect([t.status, t.json.error.code]).toEqual([415, 'unsupported_media_type']);
    const none = await api('PUT', '/admin/config', { body: '{}' });
    expect(none.status).toBe(415);
    const big = await api('PUT', '/admin/config', { body: Buffer.alloc(1_048_577, 0x20), type: 'application/json' });
    expect([big.status, big.json.error.code]).toEqual([413, 'body_too_large']);
    const arr = await api('PUT', '/admin/config', { body: '[1, 2]', type: 'application/json' });
    expect([arr.status, arr.json.error.code]).toEqual([422, 'config_invalid']);
    expect((await api('GET', '/admin/status')).json.config.version).toBe(1);
  });

  it('413 is answered from the declared length without reading the body', async () => {
    const text = await new Promise<string>((resolve, reject) => {
      const s = net.connect(gw.adminPort!, '127.0.0.1');
      let buf = '';
      s.on('data', (d) => { buf += d.toString(); if (buf.includes('}}')) { s.destroy(); resolve(buf); } });
      s.on('error', reject);
      s.write(`PUT /admin/config HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ENV_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{`);
    });
    expect(text).toMatch(/^HTTP\/1\.1 413/);
    expect(text).toContain('"body_too_large"');
  });

  it('PUT ?dryRun=true reports the diff and changes nothing', async () => {
    const fileBefore = readFileSync(gw.configFile, 'utf8');
    const auditBefore = auditLines().length;
    const r = await put(doc([R1, { id: 'r2', path: '/r2', upstream: 'up' }]), '?dryRun=true');
    expect(r.status).toBe(200);
    expect(r.json).toEqual(expect.objectContaining({ ok: true, dryRun: true, version: 1, versionBefore: 1, persisted: false, summary: ['+ route r2'], warnings: [] }));
    // Valid but probably not meant: the validate answer says so (an upstream no route uses; not audited).
    const spare = await api('POST', '/admin/config/validate', {
      token: VIEWER_TOKEN, type: 'application/json', body: JSON.stringify(doc([R1], { up: { targets: [up.url] }, spare: { targets: [up.url] } })),
    });
    expect(spare.status).toBe(200);
    expect(spare.json.warnings).toEqual([{ path: 'upstreams.spare', message: 'no route uses this upstream; point a route at it (routes[].upstream: "spare") or remove it' }]);
    expect(await proxied('/r2')).toBe(404);
    expect(readFileSync(gw.configFile, 'utf8')).toBe(fileBefore);
    expect((await api('GET', '/admin/status')).json.config.version).toBe(1);
    const lines = auditLines();
    expect(lines.length).toBe(auditBefore + 1);
    expect(lines.at(-1)).toEqual(expect.objectContaining({ result: 'dry_run', dryRun: true, versionBefore: 1, versionAfter: 1 }));
    expect(lines.at(-1).afterHash).toBe(lines.at(-1).beforeHash);
  });

  it('POST /admin/config/validate: a viewer gets the diff or the problems; nothing is applied or audited', async () => {
    const fileBefore = readFileSync(gw.configFile, 'utf8');
    const auditBefore = auditLines().length;
    const version = (await api('GET', '/admin/status')).json.config.version;
    const ok = await api('POST', '/admin/config/validate', {
      token: VIEWER_TOKEN, type: 'application/json', body: JSON.stringify(doc([R1, { id: 'checked', path: '/checked', upstream: 'up' }])),
    });
    expect(ok.status).toBe(200);
    expect(ok.json).toEqual(expect.objectContaining({ ok: true, dryRun: true, version, versionBefore: version, persisted: false }));
    expect(ok.json.summary).toContain('+ route checked');
    const bad = await api('POST', '/admin/config/validate', {
      token: VIEWER_TOKEN, type: 'application/yaml', body: 'routes:\n  - id: x\n    path: /x\n    upstream: nowhere\n',
    });
    expect(bad.status).toBe(422);
    expect(bad.json.error.code).toBe('config_invalid');
    expect(bad.json.error.errors.map((e: any) => e.path)).toContain('routes[0].upstream');
    const query = await api('POST', '/admin/config/validate?dryRun=true', { token: VIEWER_TOKEN, type: 'application/json', body: '{}' });
    expect([query.status, query.json.error.parameter]).toEqual([400, 'dryRun']);
    expect(await proxied('/checked')).toBe(404);
    expect(readFileSync(gw.configFile, 'utf8')).toBe(fileBefore);
    expect((await api('GET', '/admin/status')).json.config.version).toBe(version);
    expect(auditLines().length).toBe(auditBefore);
  });

  it('PUT valid: the new route serves, the file on disk is updated, an audit line names the actor with hashes', async () => {
    expect(await proxied('/r2')).toBe(404);
    const next = doc([R1, { id: 'r2', path: '/r2', methods: ['GET'], upstream: 'up' }]);
    const r = await put(next, '', OPS_TOKEN);
    expect(r.status).toBe(200);
    expect(r.json).toEqual(expect.objectContaining({ ok: true, dryRun: false, version: 2, versionBefore: 1, persisted: true, summary: ['+ route r2'] }));
    expect(r.json.changes.routes.added).toEqual(['r2']);
    expect(await proxied('/r2')).toBe(200);
    expect(await proxied('/r1')).toBe(200);
    expect(readConfigFile()).toEqual(next);
    const line = auditLines().at(-1);
    expect(line).toEqual(expect.objectContaining({
      actor: 'ops', role: 'admin', action: 'config.replace', method: 'PUT', path: '/admin/config', result: 'applied', status: 200,
      versionBefore: 1, versionAfter: 2,
    }));
    expect(line.beforeHash).toMatch(/^[0-9a-f]{64}$/);
    expect(line.afterHash).toMatch(/^[0-9a-f]{64}$/);
    expect(line.afterHash).not.toBe(line.beforeHash);
    expect(line.changes.routes.added).toEqual(['r2']);
    expect(Date.parse(line.time)).toBeGreaterThan(Date.now() - 60_000);
    expect(statSync(auditLog).mode & 0o777).toBe(0o600);
    const listed = (await api('GET', '/admin/audit?limit=1')).json.items[0];
    expect(listed).toEqual(line);
  });

  it('PUT accepts YAML; the JSON config file stays JSON', async () => {
    const yaml = [
      'server:', '  host: 127.0.0.1', '  port: 0', '  workers: 1',
      '  headers: { request: { set: { x-api-key: upstream-secret-1, authorization: Bearer upstream-cred-2, x-plain: visible } } }',
      'admin:', '  enabled: true', '  host: 127.0.0.1', '  port: 0', `  tokensFile: ${JSON.stringify(tokensFile)}`, `  auditLog: ${JSON.stringify(auditLog)}`,
      'upstreams:', `  up: { targets: ["${up.url}"] }`,
      'routes:', '  - { id: r1, path: /r1, methods: [GET], upstream: up }', '  - { id: r3, path: /r3, upstream: up }', '',
    ].join('\n');
    const r = await api('PUT', '/admin/config', { body: yaml, type: 'application/yaml; charset=utf-8' });
    expect(r.status).toBe(200);
    expect(r.json.summary).toEqual(['+ route r3', '- route r2']);
    expect(await proxied('/r3')).toBe(200);
    expect(await proxied('/r2')).toBe(404);
    expect(readConfigFile().routes.map((x: any) => x.id)).toEqual(['r1', 'r3']);
  });

  it('POST /admin/config/reload picks up the file edited on disk; a bad file is refused', async () => {
    writeFileSync(gw.configFile, JSON.stringify(doc([R1, { id: 'r4', path: '/r4', upstream: 'up' }]), null, 2));
    const r = await api('POST', '/admin/config/reload', { token: OPS_TOKEN });
    expect(r.status).toBe(200);
    expect(r.json.summary).toEqual(['+ route r4', '- route r3']);
    expect(r.json.warnings).toEqual([]);
    expect(r.json.persisted).toBe(false);
    expect(await proxied('/r4')).toBe(200);
    const version = r.json.version;
    writeFileSync(gw.configFile, JSON.stringify(doc([{ id: 'r5', path: '/r5', upstream: 'missing' }])));
    const bad = await api('POST', '/admin/config/reload');
    expect(bad.status).toBe(422);
    expect(bad.json.error.errors.map((e: any) => e.path)).toEqual(['routes[0].upstream']);
    expect(await proxied('/r4')).toBe(200);
    expect(await proxied('/r5')).toBe(404);
    expect((await api('GET', '/admin/status')).json.config.version).toBe(version);
    expect(auditLines().at(-1)).toEqual(expect.objectContaining({ actor: 'env', action: 'config.reload', result: 'refused', status: 422 }));
    const withBody = await api('POST', '/admin/config/reload', { body: '{}', type: 'application/json' });
    expect([withBody.status, withBody.json.error.code]).toEqual([400, 'unexpected_body']);
  });

  it('routes and upstreams are cursor paginated', async () => {
    const ids = ['p07', 'p01', 'p05', 'p03', 'p02', 'p06', 'p04'];
    const upstreams: Record<string, unknown> = {};
    for (const n of ['u5', 'u1', 'u4', 'u2', 'u3']) upstreams[n] = { targets: [up.url], balance: 'least_conn', timeouts: { connectMs: 500 } };
    const r = await put(doc(ids.map((id) => ({ id, path: `/${id}`, upstream: 'u1', priority: 2 })), upstreams));
    expect(r.status).toBe(200);
    const walk = async (path: string, limit: number) => {
      const pages: any[][] = [];
      let cursor: string | null = null;
      do {
        const res: Answer = await api('GET', `${path}?limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
        expect(res.status).toBe(200);
        pages.push(res.json.items);
        cursor = res.json.next;
      } while (cursor !== null && pages.length < 20);
      return pages;
    };
    const routePages = await walk('/admin/routes', 3);
    expect(routePages.map((p) => p.length)).toEqual([3, 3, 1]);
    expect(routePages.flat().map((x) => x.id)).toEqual([...ids].sort());
    expect(routePages[0]![0]).toEqual({ id: 'p01', host: '*', path: '/p01', methods: [], upstream: 'u1', upstreams: null, hashOn: null, priority: 2 });
    const upPages = await walk('/admin/upstreams', 2);
    expect(upPages.map((p) => p.length)).toEqual([2, 2, 1]);
    expect(upPages.flat().map((x) => x.name)).toEqual(['u1', 'u2', 'u3', 'u4', 'u5']);
    expect(upPages[0]![0]).toEqual({
      name: 'u1',
      targets: [{
        url: up.url, weight: 1, requests: 0, responses: {},
        errors: {
          upstream_connect_failed: 0, upstream_connect_timeout: 0, upstream_reset: 0, upstream_bad_response: 0, upstream_timeout: 0,
          upstream_unavailable: 0, upstream_aborted: 0, upstream_tls_failed: 0,
        },
        connections: { open: 0, idle: 0 }, lastError: null, overflow: false,
        state: null, // no breaker, healthCheck, outlierDetection, not p2c: nothing tracked
        source: 'config', expiresAt: null,
      }],
      balance: 'least_conn', timeouts: { connectMs: 500, responseMs: 15000, idleMs: 30000, totalMs: 0 },
    });
    // Default page size, and a cursor of another listing.
    expect((await api('GET', '/admin/routes')).json.items.length).toBe(7);
    const routeCursor = (await api('GET', '/admin/routes?limit=1')).json.next;
    const wrong = await api('GET', `/admin/upstreams?cursor=${routeCursor}`);
    expect([wrong.status, wrong.json.error.parameter]).toEqual([400, 'cursor']);
  });

  it('GET /admin/audit pages newest first', async () => {
    const all = auditLines();
    const newest = [...all].reverse();
    const first = await api('GET', '/admin/audit?limit=2');
    expect(first.json.items).toEqual(newest.slice(0, 2));
    const second = await api('GET', `/admin/audit?limit=2&cursor=${first.json.next}`);
    expect(second.json.items).toEqual(newest.slice(2, 4));
    const rest = await api('GET', `/admin/audit?limit=1000&cursor=${second.json.next}`);
    expect(rest.json.items).toEqual(newest.slice(4));
    expect(rest.json.next).toBeNull();
  });

  it('GET /admin/stats has counts after traffic', async () => {
    const before = (await api('GET', '/admin/stats')).json;
    for (let i = 0; i < 20; i++) expect(await proxied('/p01')).toBe(200);
    const r = await api('GET', '/admin/stats');
    expect(r.status).toBe(200);
    const s = r.json;
    expect(s.unit).toBe('ms');
    expect(s.workers).toBe(1);
    expect(s.gateway.count - before.gateway.count).toBeGreaterThanOrEqual(20);
    expect(s.upstream.count - before.upstream.count).toBeGreaterThanOrEqual(20);
    for (const k of ['p50', 'p90', 'p99', 'p999', 'max', 'mean']) {
      expect(s.gateway[k], k).toBeGreaterThan(0);
      expect(Math.round(s.gateway[k] * 1000) / 1000).toBe(s.gateway[k]);
    }
    expect(s.gateway.p50).toBeLessThanOrEqual(s.gateway.p99);
    expect(s.gateway.p50).toBeLessThan(1000); // ms, not µs
  });
});

describe('CLI against the running gateway', () => {
  it('turnpike validate --diff prints what would change and applies nothing', async () => {
    const status = (await api('GET', '/admin/status')).json;
    const running = (await api('GET', '/admin/routes')).json.items.map((x: any) => x.id);
    const file = join(dir, 'candidate.yaml');
    const ups = Object.fromEntries(['u1', 'u2', 'u3', 'u4'].map((n) => [n, { targets: [up.url], balance: 'least_conn', timeouts: { connectMs: 500 } }]));
    const candidate = doc([
      ...running.filter((id: string) => id !== 'p07').map((id: string) => ({ id, path: `/${id}`, upstream: 'u1', priority: 2 })),
      { id: 'fresh', path: '/fresh', upstream: 'u1' },
    ], ups);
    candidate.server.limits = { maxBodyBytes: 1024 };
    writeFileSync(file, JSON.stringify(candidate)); // JSON is YAML too; sent as application/yaml
    // A read-only token is enough for a dry run.
    const r = cli(['validate', file, '--diff', '--admin', admin], { TURNPIKE_ADMIN_TOKEN: VIEWER_TOKEN });
    // Valid, with a warning per upstream no route uses (u2..u4).
    expect(r.err.trim().split('\n')).toEqual(['u2', 'u3', 'u4'].map((n) => `warning: upstreams.${n}: no route uses this upstream; point a route at it (routes[].upstream: "${n}") or remove it`));
    expect(r.code).toBe(0);
    expect(r.out).toContain('valid (7 routes, 4 upstreams)');
    expect(r.out).toContain('+ route fresh');
    expect(r.out).toContain('- route p07');
    expect(r.out).toContain('- upstream u5');
    expect(r.out).toContain('~ server.limits.maxBodyBytes');
    expect(r.out).toContain('nothing was applied');
    expect(await proxied('/fresh')).toBe(404);
    expect((await api('GET', '/admin/status')).json.config.version).toBe(status.config.version);
  });

  it('turnpike validate --diff shows what the gateway would refuse (exit 1)', () => {
    const file = join(dir, 'restart.json');
    const d = doc([R1]);
    d.server.workers = 2;
    writeFileSync(file, JSON.stringify(d));
    const r = cli(['validate', file, '--diff', '--admin', admin], { TURNPIKE_ADMIN_TOKEN: ENV_TOKEN });
    expect(r.code).toBe(1);
    expect(r.err).toContain('would refuse');
    expect(r.err).toContain('server.workers: cannot change on reload');
  });

  it('turnpike reload applies the edited file and prints the changes; a bad file exits 1', async () => {
    writeFileSync(gw.configFile, JSON.stringify(doc([R1, { id: 'via-cli', path: '/via-cli', upstream: 'up' }]), null, 2));
    const ok = cli(['reload', '--admin', admin], { TURNPIKE_ADMIN_TOKEN: ENV_TOKEN });
    expect(ok.err).toBe('');
    expect(ok.code).toBe(0);
    expect(ok.out).toMatch(/^reloaded: config version \d+ \(was \d+\)/);
    expect(ok.out).toContain('+ route via-cli');
    expect(ok.out).toContain('- route p01');
    expect(await proxied('/via-cli')).toBe(200);
    writeFileSync(gw.configFile, JSON.stringify(doc([{ id: 'x', path: 'no-slash', upstream: 'up' }])));
    const bad = cli(['reload', '--admin', admin], { TURNPIKE_ADMIN_TOKEN: ENV_TOKEN });
    expect(bad.code).toBe(1);
    expect(bad.err).toContain('reload refused');
    expect(bad.err).toContain('routes[0].path');
    expect(await proxied('/via-cli')).toBe(200);
    const viewer = cli(['reload', '--admin', admin], { TURNPIKE_ADMIN_TOKEN: VIEWER_TOKEN });
    expect(viewer.code).toBe(1);
    expect(viewer.err).toContain('viewer role');
    const wrong = cli(['reload', '--admin', admin], { TURNPIKE_ADMIN_TOKEN: 'wrong-token-value' });
    expect(wrong.code).toBe(1);
    expect(wrong.err).toContain('401');
  });

  it('turnpike reload says when no gateway runs there', async () => {
    const free = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as net.AddressInfo).port; s.close(() => resolve(p)); });
    });
    const r = cli(['reload', '--admin', `http://127.0.0.1:${free}`], { TURNPIKE_ADMIN_TOKEN: ENV_TOKEN });
    expect(r.code).toBe(1);
    expect(r.err).toContain("doesn't seem to run there");
    expect(r.err).toContain('--admin');
  });

  it('never logs a token', () => {
    const logs = gw.logs.join('\n');
    for (const t of [ENV_TOKEN, VIEWER_TOKEN, OPS_TOKEN]) expect(logs).not.toContain(t);
    expect(readFileSync(auditLog, 'utf8')).not.toContain(ENV_TOKEN);
  });
});

// ---------------------------------------------------------------------------

/** Like startGateway, but in a given working directory and without any admin token in the environment. */
async function startIn(cwd: string, config: Record<string, unknown>): Promise<{ proc: ChildProcess; adminPort: number; logs: string[]; stop(): Promise<void> }> {
  const configFile = join(cwd, 'turnpike.json');
  writeFileSync(configFile, JSON.stringify(config));
  const env = { ...process.env, TURNPIKE_LOG_FORMAT: 'json', TURNPIKE_TEST_HOOKS: '1' };
  delete env['TURNPIKE_ADMIN_TOKEN'];
  delete env['TURNPIKE_ADMIN_TOKEN_FILE'];
  const proc = spawn(process.execPath, [CLI, 'start', '--config', configFile], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: string[] = [];
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const adminPort = await new Promise<number>((resolve, reject) => {
    let buf = '';
    proc.stderr!.on('data', (c: Buffer) => {
      buf += c.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) !== -1) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        logs.push(line);
        try { const j = JSON.parse(line); if (j.msg === 'turnpike started') resolve(j.adminPort); } catch { /* not JSON */ }
      }
    });
    proc.once('exit', (code) => reject(new Error(`gateway exited (${code}):\n${logs.join('\n')}`)));
    setTimeout(() => reject(new Error(`gateway did not start:\n${logs.join('\n')}`)), 20_000);
  });
  return { proc, adminPort, logs, stop: async () => { if (proc.exitCode === null) proc.kill('SIGTERM'); await exited; } };
}

describe('no token configured', () => {
  let cwd: string;
  let g: Awaited<ReturnType<typeof startIn>>;

  beforeAll(async () => {
    cwd = mkdtempSync(join(tmpdir(), 'turnpike-gen-token-'));
    g = await startIn(cwd, baseConfig({ admin: { enabled: true, port: 0 } }));
  });
  afterAll(async () => { await g?.stop(); });

  it('generates a token in .turnpike/admin-token-<admin port> (0600, directory 0700) and logs only the path', async () => {
    const file = join(cwd, '.turnpike', `admin-token-${g.adminPort}`);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(statSync(join(cwd, '.turnpike')).mode & 0o777).toBe(0o700);
    const token = readFileSync(file, 'utf8').trim();
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const logs = g.logs.join('\n');
    expect(logs).toContain(file);
    expect(logs).not.toContain(token);
    const r = await request(`http://127.0.0.1:${g.adminPort}/admin/status`, { headers: { authorization: `Bearer ${token}` } });
    expect(r.statusCode).toBe(200);
    await r.body.dump();
    const no = await request(`http://127.0.0.1:${g.adminPort}/admin/status`, { headers: { authorization: 'Bearer x' } });
    expect(no.statusCode).toBe(401);
    await no.body.dump();
  });

  it('turnpike reload finds the generated token in the working directory; the default audit log is written there', () => {
    const r = cli(['reload', '--admin', `http://127.0.0.1:${g.adminPort}`], {}, cwd);
    // The reload answer's warnings (this config has no routes), printed by the CLI.
    expect(r.err).toBe('warning: routes: no routes: every request will be answered 404 route_not_found; add a route under "routes" (turnpike init prints an example)\n');
    expect(r.code).toBe(0);
    expect(r.out).toContain('reloaded: config version 2 (was 1)');
    const audit = join(cwd, '.turnpike', `audit-${g.adminPort}.log`);
    expect(statSync(audit).mode & 0o777).toBe(0o600);
    const line = JSON.parse(readFileSync(audit, 'utf8').trim().split('\n').at(-1)!);
    expect(line).toEqual(expect.objectContaining({ actor: 'generated', role: 'admin', action: 'config.reload', result: 'applied', versionAfter: 2 }));
  });
});

describe('bad tokens file', () => {
  it('fails the start, naming the file and the line', async () => {
    const file = join(dir, 'bad-tokens');
    writeFileSync(file, `ok admin sha256:${sha('a-fine-token-1234')}\nbob admin plaintext-token\n`);
    const err = await startGateway(baseConfig({ admin: { enabled: true, port: 0, tokensFile: file, auditLog } })).then(
      (g) => { void g.stop(); return null; },
      (e: Error) => e,
    );
    expect(err).not.toBeNull();
    expect(err!.message).toContain(`${file}:2`);
    expect(err!.message).toContain('sha256:<64 hex digits>');
    expect(err!.message).not.toContain('plaintext-token');
  });
});
