/**
 * The admin API's identity endpoints (admin/api/identity.ts) and the CLI
 * over them (engine/identity-cli.ts), against the real gateway process:
 * consumers, keys (the plaintext only in the 201 that made it, never a
 * hash), rotation, revocation, groups, grants (with the unknown-route
 * warning), paging, both audit trails, the error mapping, and one run on
 * the Redis store.
 *
 * TURNPIKE_TEST_HOOKS=1: every answer is checked against its OpenAPI
 * response schema (a mismatch is a 500), so these tests verify the
 * published document too.
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { printable, table } from '../../engine/identity-cli.js';
import { CLI, baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startRedis, type PrivateRedis } from '../helpers/redis.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const TOKEN = `env-${randomBytes(16).toString('hex')}`;
const VIEWER = `viewer-${randomBytes(16).toString('hex')}`;
const sha = (t: string) => createHash('sha256').update(t).digest('hex');
const KEY_RE = /^tp_live_[0-9A-Za-z]+_[0-9A-Za-z]+$/;

interface Answer { status: number; json: any; text: string; headers: Record<string, unknown> }

function client(base: () => string) {
  // fresh: a connection of its own, closed after (between blocking spawnSync CLI runs, a kept-alive one may have been closed by the gateway).
  return async (method: string, path: string, body?: unknown, opts: { token?: string | null; type?: string; raw?: string; fresh?: boolean } = {}): Promise<Answer> => {
    const headers: Record<string, string> = {};
    const token = opts.token === undefined ? TOKEN : opts.token;
    if (token !== null) headers['authorization'] = `Bearer ${token}`;
    const text = opts.raw ?? (body === undefined ? undefined : JSON.stringify(body));
    if (text !== undefined) headers['content-type'] = opts.type ?? 'application/json';
    const dispatcher = opts.fresh === true ? new Agent() : undefined;
    const r = await request(base() + path, { method: method as any, headers, ...(text !== undefined ? { body: text } : {}), ...(dispatcher !== undefined ? { dispatcher } : {}) });
    const t = await r.body.text();
    await dispatcher?.close();
    let json: any = null;
    try { json = JSON.parse(t); } catch { /* not JSON */ }
    return { status: r.statusCode, json, text: t, headers: r.headers };
  };
}

/** Every page of a listing, following `next`; the pages' sizes too. */
async function walk(api: ReturnType<typeof client>, path: string, limit: number): Promise<{ items: any[]; sizes: number[] }> {
  const items: any[] = [];
  const sizes: number[] = [];
  let cursor: string | null = null;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const r = await api('GET', `${path}${sep}limit=${limit}${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`);
    expect(r.status, r.text).toBe(200);
    items.push(...r.json.items);
    sizes.push(r.json.items.length);
    cursor = r.json.next;
  } while (cursor !== null);
  return { items, sizes };
}

const dir = mkdtempSync(join(tmpdir(), 'turnpike-identity-api-'));
const tokensFile = join(dir, 'tokens');
writeFileSync(tokensFile, `alice viewer sha256:${sha(VIEWER)}\n`);

let up: Upstream;
let gw: Gateway;
let admin = '';
const api = client(() => admin);
/** api on a connection of its own (for tests that also run the CLI). */
const fapi = (method: string, path: string, body?: unknown) => api(method, path, body, { fresh: true });

function cli(args: string[], env: Record<string, string> = {}) {
  const clean = { ...process.env };
  delete clean['TURNPIKE_ADMIN_TOKEN'];
  delete clean['TURNPIKE_ADMIN_TOKEN_FILE'];
  delete clean['TURNPIKE_ADMIN_URL'];
  const r = spawnSync(process.execPath, [CLI, ...args], {
    cwd: dir, encoding: 'utf8', timeout: 30_000,
    env: { ...clean, TURNPIKE_ADMIN_TOKEN: TOKEN, TURNPIKE_ADMIN_URL: admin, ...env },
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

beforeAll(async () => {
  up = await startUpstream();
  gw = await startGateway(baseConfig({
    admin: { enabled: true, port: 0, tokensFile },
    upstreams: { up: { targets: [up.url] } },
    routes: [{ id: 'orders', path: '/orders/*', upstream: 'up' }, { id: 'docs', path: '/docs/*', upstream: 'up' }],
    store: { path: join(dir, 't.db') },
  }), { cwd: dir, env: { TURNPIKE_ADMIN_TOKEN: TOKEN, TURNPIKE_TEST_HOOKS: '1' } });
  admin = `http://127.0.0.1:${gw.adminPort}`;
});

afterAll(async () => {
  await gw?.stop();
  await up?.close();
});

describe('consumers', () => {
  it('POST creates a consumer with its keys: 201, each plaintext key this once, never a hash', async () => {
    const r = await api('POST', '/admin/consumers', {
      name: 'acme', tenant: 't1', plan: 'gold', metadata: { team: 'billing', tier: 2 },
      keys: [{ name: 'ci', scopes: ['orders:read'], expiresAt: '2099-01-01T00:00:00Z' }, { name: 'dev' }],
    });
    expect(r.status, r.text).toBe(201);
    expect(r.json.consumer).toMatchObject({ name: 'acme', status: 'active', tenant: 't1', plan: 'gold', groups: [], metadata: { team: 'billing', tier: 2 } });
    expect(r.json.consumer.createdAt).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    expect(r.json.keys).toHaveLength(2);
    const [ci, dev] = r.json.keys;
    expect(ci.key).toMatch(KEY_RE);
    expect(ci).toMatchObject({ name: 'ci', consumerId: r.json.consumer.id, scopes: ['orders:read'], expiresAt: '2099-01-01T00:00:00.000Z', status: 'active' });
    expect(ci.key.startsWith(ci.prefix)).toBe(true);
    expect(dev.key).not.toBe(ci.key);
    expect(r.text).not.toContain('"hash"');

    // Reading back: never the key, never the hash.
    const id = r.json.consumer.id;
    const g = await api('GET', `/admin/consumers/${id}`);
    expect(g.status).toBe(200);
    expect(g.json).toEqual(r.json.consumer);
    const keys = await api('GET', `/admin/keys?consumer=${id}`);
    expect(keys.json.items.map((k: any) => k.name).sort()).toEqual(['ci', 'dev']);
    for (const text of [keys.text, (await api('GET', `/admin/keys/${ci.id}`)).text, (await api('GET', '/admin/keys')).text]) {
      expect(text).not.toContain(ci.key);
      expect(text).not.toContain(dev.key);
      expect(text).not.toContain('"hash"');
      expect(text).not.toContain('"key":');
    }
  });

  it('GET lists, PATCH changes, DELETE removes with the keys and grants', async () => {
    const c = (await api('POST', '/admin/consumers', { name: 'temp', keys: [{ name: 'k' }] })).json;
    const id = c.consumer.id;
    const p = await api('PATCH', `/admin/consumers/${id}`, { status: 'suspended', tenant: null, metadata: { a: true } });
    expect(p.status, p.text).toBe(200);
    expect(p.json).toMatchObject({ id, status: 'suspended', tenant: null, metadata: { a: true } });
    expect(Date.parse(p.json.updatedAt)).toBeGreaterThanOrEqual(Date.parse(p.json.createdAt));
    const grant = (await api('POST', '/admin/grants', { subject: { kind: 'consumer', id }, routeId: 'orders' })).json;
    const d = await api('DELETE', `/admin/consumers/${id}`);
    expect(d.status, d.text).toBe(200);
    expect(d.json.consumer.id).toBe(id);
    expect(d.json.keys.map((k: any) => k.id)).toEqual([c.keys[0].id]);
    expect(d.json.grants.map((g: any) => g.id)).toEqual([grant.id]);
    expect(d.text).not.toContain('"hash"');
    expect((await api('GET', `/admin/consumers/${id}`)).status).toBe(404);
    expect((await api('GET', `/admin/keys/${c.keys[0].id}`)).status).toBe(404);
    expect((await api('GET', `/admin/grants/${grant.id}`)).status).toBe(404);
    expect((await api('DELETE', `/admin/consumers/${id}`)).status).toBe(404);
  });

  it('refuses bodies that are not a consumer: 422 with the path of each problem, nothing created', async () => {
    const before = (await walk(api, '/admin/consumers', 1000)).items.length;
    const unknown = await api('POST', '/admin/consumers', { name: 'x', colour: 'red', keys: [{ name: 'k', scope: ['a'] }] });
    expect(unknown.status).toBe(422);
    expect(unknown.json.error.code).toBe('invalid_body');
    expect(unknown.json.error.errors.map((e: any) => e.path).sort()).toEqual(['colour', 'keys[0].scope']);
    expect(unknown.json.error.errors[0].message).toMatch(/unknown field \(known: /);

    const missing = await api('POST', '/admin/consumers', { tenant: 't' });
    expect([missing.status, missing.json.error.errors]).toEqual([422, [{ path: 'name', message: 'required' }]]);
    const status = await api('POST', '/admin/consumers', { name: 'x', status: 'paused' });
    expect(status.json.error.errors[0]).toMatchObject({ path: 'status', message: expect.stringMatching(/active/) });

    const semantic = await api('POST', '/admin/consumers', {
      name: 'x', keys: [{ name: 'k', expiresAt: '2001-01-01T00:00:00Z', restrictions: { cidrs: ['10.0.0.0/33', 'nope'], timeWindows: [{ days: ['mon'], from: '09:00', to: '17:00', timeZone: 'Mars/Olympus' }] } }],
    });
    expect(semantic.status).toBe(422);
    expect(semantic.json.error.errors.map((e: any) => e.path)).toEqual([
      'keys[0].expiresAt', 'keys[0].restrictions.cidrs[0]', 'keys[0].restrictions.cidrs[1]', 'keys[0].restrictions.timeWindows[0].timeZone',
    ]);
    expect(semantic.json.error.errors[0].message).toMatch(/future/);

    const unknownGroup = await api('POST', '/admin/consumers', { name: 'x', groups: ['grp_nope'] });
    expect([unknownGroup.status, unknownGroup.json.error.code]).toEqual([422, 'invalid_body']);
    expect(unknownGroup.json.error.message).toMatch(/create it first/);

    expect((await api('POST', '/admin/consumers', null, { raw: '{"name":', type: 'application/json' })).json.error.code).toBe('malformed_body');
    expect((await api('POST', '/admin/consumers', null, { raw: 'name=x', type: 'application/x-www-form-urlencoded' })).status).toBe(415);
    expect((await api('PATCH', '/admin/consumers/con_x', {})).json.error.errors[0].message).toMatch(/at least one field/);
    expect((await walk(api, '/admin/consumers', 1000)).items.length).toBe(before);
  });

  it('maps store errors: 404 with where to look, 409 for a taken id', async () => {
    const nf = await api('GET', '/admin/consumers/con_nope');
    expect([nf.status, nf.json.error.code]).toEqual([404, 'not_found']);
    expect(nf.json.error.message).toMatch(/GET \/admin\/consumers/);
    expect((await api('PATCH', '/admin/consumers/con_nope', { name: 'n' })).json.error.message).toMatch(/No consumer "con_nope"; GET \/admin\/consumers lists them/);
    expect((await api('POST', '/admin/consumers/con_nope/keys', { name: 'k' })).status).toBe(404);
    expect((await api('POST', '/admin/consumers', { id: 'fixed-id', name: 'one' })).status).toBe(201);
    const dup = await api('POST', '/admin/consumers', { id: 'fixed-id', name: 'two' });
    expect([dup.status, dup.json.error.code]).toEqual([409, 'conflict']);
    expect(dup.json.error.message).toMatch(/exists already/);
    expect((await api('POST', '/admin/consumers', { id: 'bad id!', name: 'x' })).json.error.errors[0].path).toBe('id');
  });

  it('revoked is final: PATCH back to active or suspended is a 409 and revives no key; suspended <-> active stays reversible', async () => {
    const c = (await api('POST', '/admin/consumers', { name: 'doomed', keys: [{ name: 'k1' }, { name: 'k2' }] })).json;
    const id = c.consumer.id;
    expect((await api('PATCH', `/admin/consumers/${id}`, { status: 'suspended' })).json.status).toBe('suspended');
    expect((await api('PATCH', `/admin/consumers/${id}`, { status: 'active' })).json.status).toBe('active');
    expect((await api('PATCH', `/admin/consumers/${id}`, { status: 'revoked' })).json.status).toBe('revoked');
    for (const status of ['active', 'suspended']) {
      const back = await api('PATCH', `/admin/consumers/${id}`, { status, name: 'revived' });
      expect([back.status, back.json.error.code], back.text).toEqual([409, 'conflict']);
      expect(back.json.error.message).toMatch(/revoked is final; create a new consumer, or use suspended for a reversible stop\.$/);
    }
    expect((await api('GET', `/admin/consumers/${id}`)).json).toMatchObject({ status: 'revoked', name: 'doomed' });
    expect((await api('PATCH', `/admin/consumers/${id}`, { status: 'revoked', name: 'doomed (gone)' })).status).toBe(200);
    // No new or rotated key for it either (it could never work), and a key's own status is not writable.
    const nk = await api('POST', `/admin/consumers/${id}/keys`, { name: 'k3' });
    expect([nk.status, nk.json.error.code]).toEqual([409, 'conflict']);
    expect(nk.json.error.message).toMatch(/revoked/);
    expect((await api('POST', `/admin/keys/${c.keys[0].id}/rotate`)).status).toBe(409);
    const ks = await api('PATCH', `/admin/keys/${c.keys[0].id}`, { status: 'active' });
    expect([ks.status, ks.json.error.errors[0].path]).toEqual([422, 'status']);
    expect((await api('GET', `/admin/keys?consumer=${id}`)).json.items.map((k: any) => k.status)).toEqual(['active', 'active']);
    // The admin audit log records the refusals.
    const recent = (await api('GET', '/admin/audit?limit=20')).json.items;
    expect(recent.some((e: any) => e.action === 'consumer.update' && e.status === 409)).toBe(true);
    // The published document says so.
    const doc = (await api('GET', '/admin/openapi.json')).json;
    expect(doc.paths['/admin/consumers/{id}'].patch.responses).toHaveProperty('409');
  });

  it('refuses control characters in names, descriptions, tenant, plan, routeId and origins: 422 with the path; metadata values are kept', async () => {
    const before = (await walk(api, '/admin/consumers', 1000)).items.length;
    for (const [ch, code] of [['\u0000', '0000'], ['\r', '000D'], ['\n', '000A'], ['\u001b', '001B'], ['\u0007', '0007'], ['\t', '0009'], ['\u007f', '007F'], ['\u009b', '009B']]) {
      const r = await api('POST', '/admin/consumers', { name: `ev${ch}il` });
      expect([r.status, r.json.error.code], JSON.stringify(ch)).toEqual([422, 'invalid_body']);
      expect(r.json.error.errors).toEqual([{ path: 'name', message: expect.stringContaining(`found U+${code} at character 3`) }]);
      expect(r.text).not.toContain(ch); // the answer never holds the raw character
    }
    const many = await api('POST', '/admin/consumers', {
      name: 'ok', tenant: 't\u001b[2J', plan: 'gold\r\nFAKE', keys: [{ name: 'k\u0007', restrictions: { origins: ['https://a.example\u0000'] } }],
    });
    expect(many.status).toBe(422);
    expect(many.json.error.errors.map((e: any) => e.path).sort()).toEqual(['keys[0].name', 'keys[0].restrictions.origins[0]', 'plan', 'tenant']);
    expect(many.json.error.errors[0].message).toMatch(/must not contain control characters/);
    const c = await api('POST', '/admin/consumers', { name: 'ctl', metadata: { note: 'line1\nline2\u001b[31m' } });
    expect(c.status, c.text).toBe(201);
    expect(c.json.consumer.metadata.note).toBe('line1\nline2\u001b[31m');
    const id = c.json.consumer.id;
    expect((await api('PATCH', `/admin/consumers/${id}`, { name: 'a\nb' })).json.error.errors[0].path).toBe('name');
    expect((await api('POST', `/admin/consumers/${id}/keys`, { name: '\u001b]0;x\u0007' })).json.error.errors[0].path).toBe('name');
    const k = (await api('POST', `/admin/consumers/${id}/keys`, { name: 'fine' })).json;
    expect((await api('PATCH', `/admin/keys/${k.id}`, { name: 'x\ry' })).json.error.errors[0].path).toBe('name');
    expect((await api('POST', '/admin/groups', { name: 'g\u0000' })).json.error.errors[0].path).toBe('name');
    expect((await api('POST', '/admin/groups', { name: 'g', description: 'two\nlines' })).json.error.errors[0].path).toBe('description');
    const g = (await api('POST', '/admin/groups', { name: 'clean' })).json;
    expect((await api('PATCH', `/admin/groups/${g.id}`, { name: 'x\u009bm' })).json.error.errors[0].path).toBe('name');
    expect((await api('POST', '/admin/grants', { subject: { kind: 'group', id: g.id }, routeId: 'orders\n' })).json.error.errors[0].path).toBe('routeId');
    expect((await walk(api, '/admin/consumers', 1000)).items.length).toBe(before + 1);
    await api('DELETE', `/admin/groups/${g.id}`);
    await api('DELETE', `/admin/consumers/${id}`);
  });

  it('refuses strings that are not well-formed Unicode (a lone surrogate) anywhere in a body: 422 with the path, nothing stored changed', async () => {
    const before = (await walk(api, '/admin/consumers', 1000)).items.length;
    const lone = '\ud800x';
    const r = await api('POST', '/admin/consumers', { name: lone });
    expect([r.status, r.json.error.code]).toEqual([422, 'invalid_body']);
    expect(r.json.error.errors).toEqual([{ path: 'name', message: expect.stringContaining('lone surrogate U+D800 at character 1') }]);
    const many = await api('POST', '/admin/consumers', {
      name: 'ok', tenant: 't\udc00', plan: '\ud83d', metadata: { ['k\udfff']: 1, note: 'a\ud800' },
      keys: [{ name: 'k\ud800', scopes: ['a', 'b\ud800'], restrictions: { origins: ['https://x\udc00'] } }],
    });
    expect(many.status, many.text).toBe(422);
    expect(many.json.error.errors.map((e: any) => e.path).sort()).toEqual([
      'keys[0].name', 'keys[0].restrictions.origins[0]', 'keys[0].scopes[1]', 'metadata.k\\udfff', 'metadata.note', 'plan', 'tenant',
    ].sort());
    // Paired surrogates are fine (an emoji), and kept as sent.
    const ok = await api('POST', '/admin/consumers', { name: 'emoji \ud83d\ude00', metadata: { ['\ud83d\ude00']: '\ud83d\ude00' } });
    expect(ok.status, ok.text).toBe(201);
    expect((await api('GET', `/admin/consumers/${ok.json.consumer.id}`)).json).toMatchObject({ name: 'emoji \u{1F600}', metadata: { '\u{1F600}': '\u{1F600}' } });
    const id = ok.json.consumer.id;
    expect((await api('PATCH', `/admin/consumers/${id}`, { name: lone })).json.error.errors[0].path).toBe('name');
    expect((await api('PATCH', `/admin/consumers/${id}`, { metadata: { a: lone } })).json.error.errors[0].path).toBe('metadata.a');
    expect((await api('POST', `/admin/consumers/${id}/keys`, { name: 'k', scopes: [lone] })).json.error.errors[0].path).toBe('scopes[0]');
    const k = (await api('POST', `/admin/consumers/${id}/keys`, { name: 'fine' })).json;
    expect((await api('PATCH', `/admin/keys/${k.id}`, { name: lone })).json.error.errors[0].path).toBe('name');
    expect((await api('POST', '/admin/groups', { name: 'g', description: lone })).json.error.errors[0].path).toBe('description');
    const g = (await api('POST', '/admin/groups', { name: 'surrogates' })).json;
    expect((await api('PATCH', `/admin/groups/${g.id}`, { name: lone })).json.error.errors[0].path).toBe('name');
    expect((await api('POST', '/admin/grants', { subject: { kind: 'group', id: g.id }, routeId: `orders${lone}` })).json.error.errors[0].path).toBe('routeId');
    expect((await walk(api, '/admin/consumers', 1000)).items.length).toBe(before + 1);
    expect((await api('GET', `/admin/consumers/${id}`)).json.name).toBe('emoji \u{1F600}');
    await api('DELETE', `/admin/groups/${g.id}`);
    await api('DELETE', `/admin/consumers/${id}`);
  });

  it('a consumer created revoked cannot have keys: 409 as adding one to a revoked consumer, nothing created; without keys it is created', async () => {
    const before = (await walk(api, '/admin/consumers', 1000)).items.length;
    const r = await api('POST', '/admin/consumers', { id: 'born-revoked', name: 'x', status: 'revoked', keys: [{ name: 'k' }] });
    expect([r.status, r.json.error.code], r.text).toEqual([409, 'conflict']);
    expect(r.text).not.toMatch(/tp_live_/);
    const c = await api('POST', '/admin/consumers', { id: 'revoked-no-keys', name: 'x', status: 'revoked' });
    expect(c.status, c.text).toBe(201);
    const add = await api('POST', '/admin/consumers/revoked-no-keys/keys', { name: 'k' });
    expect(add.status).toBe(409);
    expect(r.json.error.message).toBe(add.json.error.message.replace('revoked-no-keys', 'born-revoked'));
    expect((await api('GET', '/admin/consumers/born-revoked')).status).toBe(404);
    expect((await walk(api, '/admin/consumers', 1000)).items.length).toBe(before + 1);
    expect((await walk(api, '/admin/keys?consumer=revoked-no-keys', 100)).items).toEqual([]);
    const doc = (await api('GET', '/admin/openapi.json')).json;
    expect(doc.paths['/admin/consumers'].post.responses['409'].description).toMatch(/revoked/);
    await api('DELETE', '/admin/consumers/revoked-no-keys');
  });

  it('error messages repeat a client value at most 64 characters of it, escaped, with "..." and its length', async () => {
    const long = 'x'.repeat(700);
    const cursor = Buffer.from(JSON.stringify({ k: long, c: 'y' })).toString('base64url');
    expect(cursor.length).toBeLessThanOrEqual(1024);
    const cur = await api('GET', `/admin/consumers?cursor=${cursor}`);
    expect([cur.status, cur.json.error.parameter]).toEqual([400, 'cursor']);
    expect(cur.json.error.message).toContain(`another listing (${'x'.repeat(64)}... (700 characters))`);
    expect(cur.json.error.message).not.toContain('x'.repeat(65));
    expect(cur.json.error.message.length).toBeLessThan(400);

    const id = `c${'z'.repeat(127)}`;
    const nf = await api('PATCH', `/admin/consumers/${id}`, { name: 'n' });
    expect(nf.status).toBe(404);
    expect(nf.json.error.message).toContain(`No consumer "${id.slice(0, 64)}"... (128 characters)`);
    const field = 'f'.repeat(2000);
    const unk = await api('POST', '/admin/consumers', { name: 'x', [field]: 1 });
    expect(unk.status).toBe(422);
    expect(unk.json.error.errors[0].path).toBe(`${'f'.repeat(64)}...`);
    expect(unk.text).not.toContain('f'.repeat(65));
    const meta = await api('POST', '/admin/consumers', { name: 'x', metadata: { [field]: 'v'.repeat(300) } });
    expect(meta.json.error.errors[0].path).toBe(`metadata.${'f'.repeat(64)}...`);
    const bigGroup = `g${'q'.repeat(127)}`;
    const grp = await api('POST', '/admin/consumers', { name: 'x', groups: [bigGroup] });
    expect(grp.status).toBe(422);
    expect(grp.text).not.toContain('q'.repeat(65));
    const tz = await api('POST', '/admin/consumers', { name: 'x', keys: [{ name: 'k', restrictions: { timeWindows: [{ days: ['mon'], from: '09:00', to: '10:00', timeZone: `\u009b${'Z'.repeat(63)}` }] } }] });
    expect(tz.json.error.errors[0].message).toMatch(/^"\\u009bZ{63}" is not an IANA time zone/);
  });

  it('needs a token; writes need the admin role (a viewer reads)', async () => {
    const none = await api('GET', '/admin/consumers', undefined, { token: null });
    expect(none.status).toBe(401);
    expect((await api('GET', '/admin/consumers', undefined, { token: VIEWER })).status).toBe(200);
    const w = await api('POST', '/admin/consumers', { name: 'x' }, { token: VIEWER });
    expect([w.status, w.json.error.code]).toEqual([403, 'forbidden']);
    expect((await api('POST', '/admin/keys/key_x/revoke', undefined, { token: VIEWER })).status).toBe(403);
    const m = await api('PUT', '/admin/consumers', { name: 'x' });
    expect(m.status).toBe(405);
    expect(m.headers['allow']).toBe('POST, GET, HEAD');
  });
});

describe('keys', () => {
  let consumerId = '';
  beforeAll(async () => {
    consumerId = (await api('POST', '/admin/consumers', { name: 'keyholder' })).json.consumer.id;
  });

  it('POST /admin/consumers/{id}/keys: 201 with the key (expiresAt in ms or ISO), restrictions kept', async () => {
    const exp = Date.now() + 86_400_000;
    const r = await api('POST', `/admin/consumers/${consumerId}/keys`, {
      name: 'ci', scopes: ['orders:read', 'orders:read', 'orders:write'], expiresAt: exp,
      restrictions: { cidrs: ['10.0.0.0/8', '::1'], timeWindows: [{ days: ['mon', 'fri'], from: '22:00', to: '06:00' }], origins: ['https://*.example.com'] },
    });
    expect(r.status, r.text).toBe(201);
    expect(r.json.key).toMatch(KEY_RE);
    expect(r.json).toMatchObject({
      consumerId, name: 'ci', scopes: ['orders:read', 'orders:write'], expiresAt: new Date(exp).toISOString(),
      restrictions: { cidrs: ['10.0.0.0/8', '::1'], timeWindows: [{ days: ['mon', 'fri'], from: '22:00', to: '06:00', timeZone: 'UTC' }], origins: ['https://*.example.com'] },
      lastUsedAt: null, revokedAt: null, rotatedFrom: null, graceUntil: null, rotatedAt: null,
    });
    const g = await api('GET', `/admin/keys/${r.json.id}`);
    const { key: _key, ...rest } = r.json;
    expect(g.json).toEqual(rest);
    expect(g.text).not.toContain(r.json.key);
  });

  it('PATCH changes name, scopes, expiry and restrictions; refuses unknown fields', async () => {
    const k = (await api('POST', `/admin/consumers/${consumerId}/keys`, { name: 'p' })).json;
    const p = await api('PATCH', `/admin/keys/${k.id}`, { name: 'p2', scopes: ['a'], expiresAt: '2099-06-01T00:00:00+02:00', restrictions: { origins: ['https://a.example'] } });
    expect(p.status, p.text).toBe(200);
    expect(p.json).toMatchObject({ name: 'p2', scopes: ['a'], expiresAt: '2099-05-31T22:00:00.000Z', restrictions: { cidrs: [], timeWindows: [], origins: ['https://a.example'] } });
    expect((await api('PATCH', `/admin/keys/${k.id}`, { expiresAt: null })).json.expiresAt).toBeNull();
    const bad = await api('PATCH', `/admin/keys/${k.id}`, { hash: 'x' });
    expect([bad.status, bad.json.error.errors[0].path]).toEqual([422, 'hash']);
    expect((await api('PATCH', `/admin/keys/${k.id}`, { expiresAt: 'tomorrow' })).json.error.errors[0].path).toBe('expiresAt');
    expect((await api('PATCH', '/admin/keys/key_nope', { name: 'x' })).status).toBe(404);
  });

  it('expiresAt: far future, non-integer and impossible dates are a 422 naming the field, never a 500; 9999-12-31T23:59:59.999Z is the last', async () => {
    const k = (await api('POST', `/admin/consumers/${consumerId}/keys`, { name: 'bounds' })).json;
    const cases: Array<[unknown, RegExp]> = [
      [1e20, /at most 9999-12-31T23:59:59\.999Z \(253402300799999 ms since the epoch\)/],
      [8_640_000_000_000_001, /at most 9999-12-31T23:59:59\.999Z/],
      [253_402_300_800_000, /at most 9999-12-31T23:59:59\.999Z/],
      ['2030-02-30T00:00:00Z', /February 2030 has no day 30 \(it has 28 days\)/],
      ['2028-02-30T00:00:00Z', /February 2028 has no day 30 \(it has 29 days\)/],
      ['2030-04-31', /April 2030 has no day 31/],
      ['2030-13-01T00:00:00Z', /month 13 does not exist/],
      ['2030-01-01T24:00:00Z', /not a time of day/],
      ['2030-01-01T23:59:60Z', /not a time of day/],
      ['2030-01-01T00:00:00+24:00', /zone offset/],
      ['2030-01-01T00:00:00', /with a zone/],
      ['+275760-09-13T00:00:00Z', /ISO-8601/],
      ['9999-12-31T23:59:59-01:00', /at most 9999-12-31T23:59:59\.999Z/],
    ];
    for (const [v, msg] of cases) {
      for (const [method, path, body, at] of [
        ['POST', `/admin/consumers/${consumerId}/keys`, { name: 'k', expiresAt: v }, 'expiresAt'],
        ['PATCH', `/admin/keys/${k.id}`, { expiresAt: v }, 'expiresAt'],
        ['POST', '/admin/consumers', { name: 'c', keys: [{ name: 'ok' }, { name: 'k', expiresAt: v }] }, 'keys[1].expiresAt'],
      ] as const) {
        const r = await api(method, path, body);
        expect([r.status, r.json?.error?.code], `${method} ${path} ${String(v)}: ${r.text}`).toEqual([422, 'invalid_body']);
        expect(r.json.error.errors, String(v)).toEqual([{ path: at, message: expect.stringMatching(msg) }]);
      }
    }
    // A number JSON cannot hold as a finite one, and a fraction: refused by the schema.
    for (const raw of ['{"name":"k","expiresAt":1e400}', '{"name":"k","expiresAt":1893456000000.5}']) {
      const r = await api('POST', `/admin/consumers/${consumerId}/keys`, null, { raw });
      expect([r.status, r.json.error.errors[0].path], raw).toEqual([422, 'expiresAt']);
    }
    expect((await api('GET', `/admin/keys/${k.id}`)).json.expiresAt).toBeNull();
    // The last instant accepted, as ISO and as ms.
    const last = await api('POST', `/admin/consumers/${consumerId}/keys`, { name: 'last', expiresAt: '9999-12-31T23:59:59.999Z' });
    expect([last.status, last.json.expiresAt], last.text).toEqual([201, '9999-12-31T23:59:59.999Z']);
    expect((await api('PATCH', `/admin/keys/${k.id}`, { expiresAt: 253_402_300_799_999 })).json.expiresAt).toBe('9999-12-31T23:59:59.999Z');
    expect((await api('PATCH', `/admin/keys/${k.id}`, { expiresAt: '2028-02-29T12:00:00.123456789+05:30' })).json.expiresAt).toBe('2028-02-29T06:30:00.123Z');
    expect((await api('GET', '/admin/keys')).status).toBe(200);
  });

  it('rotation grace: out of range or absurdly long is a 422 naming the field', async () => {
    const k = (await api('POST', `/admin/consumers/${consumerId}/keys`, { name: 'grace' })).json;
    for (const [body, at] of [
      [{ graceMs: 1e20 }, 'graceMs'], [{ graceMs: 366 * 86_400_000 + 1 }, 'graceMs'], [{ grace: '367d' }, 'grace'],
      [{ grace: `${'9'.repeat(20)}d` }, 'grace'], [{ grace: `${'9'.repeat(400)}ms` }, 'grace'], [{ graceMs: -1 }, 'graceMs'],
    ] as const) {
      const r = await api('POST', `/admin/keys/${k.id}/rotate`, body);
      expect([r.status, r.json.error.errors[0].path], JSON.stringify(body).slice(0, 80)).toEqual([422, at]);
      expect(r.text).not.toContain('9'.repeat(65));
    }
    expect((await api('GET', `/admin/keys/${k.id}`)).json.graceUntil).toBeNull();
    expect((await api('POST', `/admin/keys/${k.id}/rotate`, { grace: '366d' })).status).toBe(201);
  });

  it('rotate: 201 with the new key once; the old one gets the default 30-day grace; rotating it again is a 409', async () => {
    const k = (await api('POST', `/admin/consumers/${consumerId}/keys`, { name: 'rot', scopes: ['s1'] })).json;
    const t0 = Date.now();
    const r = await api('POST', `/admin/keys/${k.id}/rotate`);
    expect(r.status, r.text).toBe(201);
    expect(r.json.key).toMatch(KEY_RE);
    expect(r.json.key).not.toBe(k.key);
    expect(r.json).toMatchObject({ name: 'rot', scopes: ['s1'], consumerId, rotatedFrom: k.id, graceUntil: null, rotatedAt: null });
    expect(r.json.old.id).toBe(k.id);
    // When it was rotated (its Deprecation date) is kept and shown, the same on every read.
    expect(Math.abs(Date.parse(r.json.old.rotatedAt) - t0)).toBeLessThan(60_000);
    expect((await api('GET', `/admin/keys/${k.id}`)).json.rotatedAt).toBe(r.json.old.rotatedAt);
    const grace = Date.parse(r.json.old.graceUntil) - t0;
    expect(grace).toBeGreaterThan(30 * 86_400_000 - 60_000);
    expect(grace).toBeLessThan(30 * 86_400_000 + 60_000);
    expect(r.text).not.toContain('"hash"');
    expect(r.json.old).not.toHaveProperty('key');
    const again = await api('POST', `/admin/keys/${k.id}/rotate`);
    expect([again.status, again.json.error.code]).toEqual([409, 'conflict']);

    const r2 = await api('POST', `/admin/keys/${r.json.id}/rotate`, { grace: '1d' });
    expect(r2.status).toBe(201);
    expect(Math.abs(Date.parse(r2.json.old.graceUntil) - Date.now() - 86_400_000)).toBeLessThan(60_000);
    const r3 = await api('POST', `/admin/keys/${r2.json.id}/rotate`, { graceMs: 0 });
    expect(Date.parse(r3.json.old.graceUntil)).toBeLessThanOrEqual(Date.now());
    const both = await api('POST', `/admin/keys/${r3.json.id}/rotate`, { graceMs: 1, grace: '1d' });
    expect([both.status, both.json.error.errors[0].path]).toEqual([422, 'grace']);
    expect((await api('POST', `/admin/keys/${r3.json.id}/rotate`, { grace: '1 week' })).json.error.errors[0].path).toBe('grace');
    expect((await api('POST', '/admin/keys/key_nope/rotate')).status).toBe(404);
  });

  it('revoke: 200, idempotent; a revoked key cannot be rotated; revoke takes no body', async () => {
    const k = (await api('POST', `/admin/consumers/${consumerId}/keys`, { name: 'rev' })).json;
    const r = await api('POST', `/admin/keys/${k.id}/revoke`);
    expect(r.status, r.text).toBe(200);
    expect(r.json).toMatchObject({ id: k.id, status: 'revoked' });
    expect(Date.parse(r.json.revokedAt)).toBeGreaterThan(Date.now() - 60_000);
    const again = await api('POST', `/admin/keys/${k.id}/revoke`);
    expect([again.status, again.json.revokedAt]).toEqual([200, r.json.revokedAt]);
    const rot = await api('POST', `/admin/keys/${k.id}/rotate`);
    expect(rot.status).toBe(409);
    expect(rot.json.error.message).toMatch(/revoked/);
    expect((await api('POST', `/admin/keys/${k.id}/revoke`, { why: 'x' })).json.error.code).toBe('unexpected_body');
    expect((await api('POST', '/admin/keys/key_nope/revoke')).status).toBe(404);
  });

  it('GET /admin/keys?consumer= lists one consumer\'s keys; an unknown consumer is a 404', async () => {
    const other = (await api('POST', '/admin/consumers', { name: 'other', keys: [{ name: 'o' }] })).json;
    const mine = await walk(api, `/admin/keys?consumer=${consumerId}`, 3);
    expect(mine.items.every((k: any) => k.consumerId === consumerId)).toBe(true);
    expect(mine.items.map((k: any) => k.id)).not.toContain(other.keys[0].id);
    const nf = await api('GET', '/admin/keys?consumer=con_nope');
    expect(nf.status).toBe(404);
    expect((await api('GET', '/admin/keys?consumer=')).json.error.parameter).toBe('consumer');
  });
});

describe('paging', () => {
  it('25 consumers, pages of 10: every one exactly once (10, 10, 5), in id order', async () => {
    const made: string[] = [];
    for (let i = 0; i < 25; i++) made.push((await api('POST', '/admin/consumers', { name: `p${i}`, tenant: 'paging' })).json.consumer.id);
    const { items, sizes } = await walk(api, '/admin/consumers?tenant=paging', 10);
    expect(sizes).toEqual([10, 10, 5]);
    expect(items.map((c: any) => c.id)).toEqual([...made].sort());
    expect(new Set(items.map((c: any) => c.id)).size).toBe(25);
  });

  it('cursors: another listing\'s or a made-up one is a 400 naming cursor; limit is bounded', async () => {
    const first = await api('GET', '/admin/consumers?tenant=paging&limit=1');
    const foreign = await api('GET', `/admin/keys?cursor=${first.json.next}`);
    expect([foreign.status, foreign.json.error.parameter]).toEqual([400, 'cursor']);
    expect(foreign.json.error.message).toMatch(/another listing \(consumers\)/);
    expect((await api('GET', '/admin/groups?cursor=garbage!')).json.error.parameter).toBe('cursor');
    const notOurs = Buffer.from(JSON.stringify({ k: 'grants', c: 'not-a-store-cursor' })).toString('base64url');
    expect((await api('GET', `/admin/grants?cursor=${notOurs}`)).json.error.parameter).toBe('cursor');
    expect((await api('GET', '/admin/consumers?limit=0')).json.error.parameter).toBe('limit');
    expect((await api('GET', '/admin/consumers?limit=1001')).json.error.parameter).toBe('limit');
    expect((await api('GET', '/admin/consumers?colour=red')).json.error.parameter).toBe('colour');
  });
});

describe('groups and grants', () => {
  it('groups: create, get, patch, list, delete (its grants and memberships go with it)', async () => {
    const g = await api('POST', '/admin/groups', { name: 'partners', description: 'partner integrations' });
    expect(g.status, g.text).toBe(201);
    const id = g.json.id;
    expect((await api('GET', `/admin/groups/${id}`)).json).toEqual(g.json);
    expect((await api('PATCH', `/admin/groups/${id}`, { description: null })).json.description).toBeNull();
    expect((await walk(api, '/admin/groups', 2)).items.map((x: any) => x.id)).toContain(id);
    const member = (await api('POST', '/admin/consumers', { name: 'member', groups: [id] })).json.consumer;
    expect(member.groups).toEqual([id]);
    const grant = await api('POST', '/admin/grants', { subject: { kind: 'group', id }, routeId: 'orders', methods: ['get', 'POST'] });
    expect(grant.status, grant.text).toBe(201);
    expect(grant.json).toMatchObject({ subject: { kind: 'group', id }, routeId: 'orders', methods: ['GET', 'POST'], warnings: [] });
    const d = await api('DELETE', `/admin/groups/${id}`);
    expect(d.status).toBe(200);
    expect(d.json.members).toEqual([member.id]);
    expect(d.json.grants.map((x: any) => x.id)).toEqual([grant.json.id]);
    expect((await api('GET', `/admin/consumers/${member.id}`)).json.groups).toEqual([]);
    expect((await api('GET', `/admin/groups/${id}`)).status).toBe(404);
    expect((await api('POST', '/admin/groups', { name: '' })).json.error.errors[0].path).toBe('name');
  });

  it('a group given by name where an id is wanted: the messages say to give its id', async () => {
    const g = (await api('POST', '/admin/groups', { name: 'by-name-only' })).json;
    const asMember = await api('POST', '/admin/consumers', { name: 'x', groups: ['by-name-only'] });
    expect([asMember.status, asMember.json.error.errors[0].path]).toEqual([422, 'groups']);
    expect(asMember.json.error.message).toMatch(/no group with id "by-name-only": give a group's id \(not its name; GET \/admin\/groups or turnpike groups list shows them\), or create it first/);
    const asSubject = await api('POST', '/admin/grants', { subject: { kind: 'group', id: 'by-name-only' }, routeId: 'orders' });
    expect([asSubject.status, asSubject.json.error.code]).toEqual([404, 'not_found']);
    expect(asSubject.json.error.message).toBe('No group with id "by-name-only"; give the group\'s id (not its name): GET /admin/groups (turnpike groups list) lists them.');
    expect((await api('GET', '/admin/grants?subject=group:by-name-only')).json.error.message).toMatch(/give the group's id \(not its name\)/);
    expect((await api('GET', '/admin/groups/by-name-only')).json.error.message).toMatch(/give the group's id/);
    await api('DELETE', `/admin/groups/${g.id}`);
  });

  it('grants: a route the config does not have is accepted with a warning; list by subject; get; delete', async () => {
    const c = (await api('POST', '/admin/consumers', { name: 'granted' })).json.consumer;
    const ok = await api('POST', '/admin/grants', { subject: { kind: 'consumer', id: c.id }, routeId: 'docs' });
    expect(ok.status).toBe(201);
    expect(ok.json).toMatchObject({ methods: ['*'], warnings: [] });
    const warned = await api('POST', '/admin/grants', { subject: { kind: 'consumer', id: c.id }, routeId: 'no-such-route', methods: ['GET'] });
    expect(warned.status).toBe(201);
    expect(warned.json.warnings).toEqual([{ path: 'routeId', message: expect.stringMatching(/no route "no-such-route" \(routes: orders, docs\)/) }]);
    const mine = await api('GET', `/admin/grants?subject=consumer:${c.id}`);
    expect(mine.json.items.map((g: any) => g.routeId).sort()).toEqual(['docs', 'no-such-route']);
    expect(mine.json.items[0]).not.toHaveProperty('warnings');
    expect((await api('GET', '/admin/grants?subject=consumer:con_nope')).status).toBe(404);
    expect((await api('GET', '/admin/grants?subject=user:x')).json.error.parameter).toBe('subject');
    expect((await api('GET', `/admin/grants/${ok.json.id}`)).json.routeId).toBe('docs');
    expect((await api('POST', '/admin/grants', { subject: { kind: 'consumer', id: 'con_nope' }, routeId: 'docs' })).status).toBe(404);
    expect((await api('POST', '/admin/grants', { subject: { kind: 'team', id: 'x' }, routeId: 'docs' })).json.error.errors[0].path).toBe('subject.kind');
    expect((await api('POST', '/admin/grants', { subject: { kind: 'consumer', id: c.id }, routeId: 'docs', methods: ['GET POST'] })).json.error.errors[0].path).toBe('methods[0]');
    const d = await api('DELETE', `/admin/grants/${warned.json.id}`);
    expect([d.status, d.json.id]).toEqual([200, warned.json.id]);
    expect((await api('DELETE', `/admin/grants/${warned.json.id}`)).status).toBe(404);
  });
});

describe('audit', () => {
  it('the store\'s audit log names every write with the token\'s name, never a key', async () => {
    const c = (await api('POST', '/admin/consumers', { name: 'audited', keys: [{ name: 'k' }] })).json;
    const revoked = await api('POST', `/admin/keys/${c.keys[0].id}/revoke`, undefined, { token: TOKEN });
    expect(revoked.status).toBe(200);
    const { items, sizes } = await walk(api, '/admin/identity/audit', 50);
    expect(sizes.length).toBeGreaterThan(1);
    const mine = items.filter((e: any) => e.target === `consumer:${c.consumer.id}` || e.target === `key:${c.keys[0].id}`);
    expect(mine.map((e: any) => e.action)).toEqual(expect.arrayContaining(['consumer.create', 'key.revoke']));
    for (const e of mine) {
      expect(e.actor).toBe('env');
      expect(e.at).toMatch(/Z$/);
    }
    const text = JSON.stringify(items);
    expect(text).not.toContain(c.keys[0].key);
    expect(text).not.toContain('"hash"');
    expect(new Set(items.map((e: any) => e.id)).size).toBe(items.length);
  });

  it('the admin audit log records identity writes (applied and refused) next to config writes', async () => {
    const c = (await api('POST', '/admin/consumers', { name: 'admin-audited' })).json.consumer;
    await api('POST', '/admin/consumers', { name: 'x', nope: 1 });
    await api('POST', '/admin/consumers', { name: 'x' }, { token: VIEWER });
    const recent = (await api('GET', '/admin/audit?limit=10')).json.items;
    expect(recent[0]).toMatchObject({ action: 'consumer.create', result: 'forbidden', status: 403, actor: 'alice' });
    expect(recent[1]).toMatchObject({ action: 'consumer.create', result: 'rejected', status: 422, actor: 'env' });
    expect(recent[1].errors).toEqual([{ path: 'nope', message: expect.stringMatching(/unknown field/) }]);
    expect(recent[2]).toMatchObject({ action: 'consumer.create', result: 'applied', status: 201, path: '/admin/consumers' });
    await api('DELETE', `/admin/consumers/${c.id}`);
    expect((await api('GET', '/admin/audit?limit=1')).json.items[0]).toMatchObject({ action: 'consumer.delete', result: 'applied', path: `/admin/consumers/${c.id}` });
  });
});

describe('OpenAPI', () => {
  it('documents every identity endpoint, its times as date-time, rotate\'s body as optional', async () => {
    const d = (await api('GET', '/admin/openapi.json')).json;
    for (const [p, ms] of Object.entries({
      '/admin/consumers': ['get', 'post'], '/admin/consumers/{id}': ['delete', 'get', 'patch'], '/admin/consumers/{id}/keys': ['post'],
      '/admin/keys': ['get'], '/admin/keys/{id}': ['get', 'patch'], '/admin/keys/{id}/rotate': ['post'], '/admin/keys/{id}/revoke': ['post'],
      '/admin/groups': ['get', 'post'], '/admin/groups/{id}': ['delete', 'get', 'patch'], '/admin/grants': ['get', 'post'],
      '/admin/grants/{id}': ['delete', 'get'], '/admin/identity/audit': ['get'],
    })) {
      expect(Object.keys(d.paths[p] ?? {}).sort(), p).toEqual(ms);
      for (const m of ms) expect(d.paths[p][m].tags).toEqual(['identity']);
    }
    expect(d.paths['/admin/keys/{id}/rotate'].post.requestBody.required).toBe(false);
    expect(d.paths['/admin/consumers'].post.requestBody.required).toBe(true);
    const key = d.components.schemas.IdentityApiKey;
    expect(key.properties.expiresAt.format).toBe('date-time');
    expect(key.properties).not.toHaveProperty('hash');
    expect(key.properties).not.toHaveProperty('key');
    expect(d.components.schemas.IdentityNewApiKey.properties).toHaveProperty('key');
    expect(d.paths['/admin/keys'].get.parameters.map((p: any) => p.name)).toEqual(['limit', 'cursor', 'consumer']);
  });
});

describe('CLI', () => {
  it('round trip: consumers, keys (printed once), groups, grants, with tables and --json', async () => {
    const made = cli(['consumers', 'create', 'cli-co', '--tenant', 'cli', '--plan', 'gold', '--meta', 'team=ops', '--key', 'first']);
    expect(made.code, made.err).toBe(0);
    const id = /created consumer (\S+)/.exec(made.out)![1]!;
    const firstKey = /key "first" \(id (\S+)\):\s+(\S+)/.exec(made.out)!;
    expect(firstKey[2]).toMatch(KEY_RE);
    expect(made.err).toMatch(/only time a new key is shown/);

    const list = cli(['consumers', 'list', '--tenant', 'cli']);
    expect(list.code).toBe(0);
    expect(list.out).toMatch(/^ID\s+NAME\s+STATUS\s+TENANT\s+PLAN/);
    expect(list.out).toContain(id);
    expect(list.out).toMatch(/cli-co\s+active\s+cli\s+gold/);

    const k = cli(['keys', 'create', id, '--name', 'ci', '--scope', 'orders:read', '--expires', '90d', '--cidr', '10.0.0.0/8']);
    expect(k.code, k.err).toBe(0);
    const key = /key:\s+(\S+)/.exec(k.out)![1]!;
    const keyId = /id:\s+(\S+)/.exec(k.out)![1]!;
    expect(key).toMatch(KEY_RE);
    expect(k.err).toMatch(/only time a new key is shown/);

    const keys = cli(['keys', 'list', '--consumer', id]);
    expect(keys.code).toBe(0);
    expect(keys.out).toContain(keyId);
    expect(keys.out).toContain(`${key.slice(0, 12)}...`);
    expect(keys.out).not.toContain(key);
    const json = JSON.parse(cli(['keys', 'list', '--consumer', id, '--json']).out);
    expect(json.items.map((x: any) => x.name).sort()).toEqual(['ci', 'first']);
    expect(JSON.stringify(json)).not.toContain(key);
    const got = cli(['keys', 'get', keyId]);
    expect(got.out).toMatch(/scopes:\s+orders:read/);
    expect(got.out).toMatch(/cidrs:\s+10\.0\.0\.0\/8/);

    const rot = cli(['keys', 'rotate', keyId, '--grace', '7d', '--json']);
    expect(rot.code, rot.err).toBe(0);
    const rotated = JSON.parse(rot.out);
    expect(rotated.key).toMatch(KEY_RE);
    expect(rotated.old.id).toBe(keyId);
    expect(rot.err).toMatch(/only time/);
    const rev = cli(['keys', 'revoke', rotated.id]);
    expect(rev.code).toBe(0);
    expect(rev.out).toMatch(new RegExp(`revoked key ${rotated.id}`));

    const grp = cli(['groups', 'create', 'cli-group', '--id', 'cli-group', '--description', 'from the CLI']);
    expect(grp.code, grp.err).toBe(0);
    expect(cli(['groups', 'list']).out).toMatch(/cli-group\s+cli-group\s+from the CLI/);
    expect(cli(['consumers', 'update', id, '--group', 'cli-group', '--status', 'suspended']).code).toBe(0);
    expect(JSON.parse(cli(['consumers', 'get', id, '--json']).out)).toMatchObject({ groups: ['cli-group'], status: 'suspended' });

    const gr = cli(['grants', 'create', '--subject', 'group:cli-group', '--route', 'ghost', '--method', 'GET']);
    expect(gr.code, gr.err).toBe(0);
    expect(gr.err).toMatch(/warning: routeId: the running config has no route "ghost"/);
    const grantId = /created grant (\S+):/.exec(gr.out)![1]!;
    expect(cli(['grants', 'list', '--subject', 'group:cli-group']).out).toMatch(new RegExp(`${grantId}\\s+group:cli-group\\s+ghost\\s+GET`));
    expect(cli(['grants', 'delete', grantId]).code).toBe(0);

    const del = cli(['consumers', 'delete', id]);
    expect(del.code).toBe(0);
    expect(del.out).toMatch(/with 3 keys and 0 grants/);
    expect(cli(['groups', 'delete', 'cli-group']).code).toBe(0);
  });

  it('groups by name: grants create --subject group:NAME and consumers create/update --group NAME resolve the name; ambiguity and unknown names exit 1', async () => {
    const partners = (await fapi('POST', '/admin/groups', { name: 'cli-partners' })).json;
    const gr = cli(['grants', 'create', '--subject', 'group:cli-partners', '--route', 'orders', '--json']);
    expect(gr.code, gr.err).toBe(0);
    expect(JSON.parse(gr.out).subject).toEqual({ kind: 'group', id: partners.id });
    const listed = cli(['grants', 'list', '--subject', 'group:cli-partners']);
    expect([listed.code, listed.out]).toEqual([0, expect.stringContaining(`group:${partners.id}`)]);
    const made = cli(['consumers', 'create', 'cli-member', '--group', 'cli-partners', '--json']);
    expect(made.code, made.err).toBe(0);
    const member = JSON.parse(made.out).consumer;
    expect(member.groups).toEqual([partners.id]);
    expect(cli(['consumers', 'update', member.id, '--no-groups']).code).toBe(0);
    const upd = cli(['consumers', 'update', member.id, '--group', 'cli-partners', '--group', partners.id, '--json']);
    expect(upd.code, upd.err).toBe(0);
    expect(JSON.parse(upd.out).groups).toEqual([partners.id]);

    // An existing id wins over a name; several groups with one name: their ids are listed.
    const shadow = (await fapi('POST', '/admin/groups', { id: 'shadow-id', name: 'shadow' })).json;
    const named = (await fapi('POST', '/admin/groups', { name: 'shadow-id' })).json;
    expect(JSON.parse(cli(['consumers', 'update', member.id, '--group', 'shadow-id', '--json']).out).groups).toEqual([shadow.id]);
    const twin = (await fapi('POST', '/admin/groups', { name: 'shadow' })).json;
    const amb = cli(['grants', 'create', '--subject', 'group:shadow', '--route', 'orders']);
    expect(amb.code).toBe(1);
    expect(amb.err).toMatch(/2 groups are named "shadow": /);
    expect(amb.err).toContain(shadow.id);
    expect(amb.err).toContain(twin.id);
    expect(amb.err).toMatch(/give the id of the one you mean/);
    const none = cli(['consumers', 'update', member.id, '--group', 'no such group']);
    expect(none.code).toBe(1);
    expect(none.err).toMatch(/no group with id or name "no such group" \(turnpike groups list shows what exists/);
    for (const g of [partners, shadow, named, twin]) await fapi('DELETE', `/admin/groups/${g.id}`);
    await fapi('DELETE', `/admin/consumers/${member.id}`);
  });

  it('--expires beyond 9999-12-31 is a usage error saying the limit (2), never "Invalid time value"', () => {
    for (const v of ['99999999d', '9999999999999999999ms', '253402300800000']) {
      const r = cli(['keys', 'create', 'con_any', '--expires', v]);
      expect(r.code, `${v}: ${r.err}`).toBe(2);
      expect(r.err).toMatch(/too far in the future; a key expires at the latest 9999-12-31T23:59:59\.999Z/);
      expect(r.err).not.toMatch(/Invalid time value|RangeError/);
    }
    const bad = cli(['keys', 'create', 'con_any', '--expires', '2030-02-30T00:00:00Z']);
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/February 2030 has no day 30/);
  });

  it('prints control characters escaped: tables, details and --json (defence in depth; the API refuses most)', async () => {
    const c = (await fapi('POST', '/admin/consumers', { name: 'rtl\u202Egnp.exe', tenant: 'esc-test', metadata: { note: 'a\u001b[2Jb\u009b31m', 'k\u0007': 1 } })).json.consumer;
    const list = cli(['consumers', 'list', '--tenant', 'esc-test']);
    expect(list.code).toBe(0);
    expect(list.out).toContain('rtl\\u{202e}gnp.exe');
    expect(list.out).not.toMatch(/[\u0000-\u0009\u000B-\u001F\u007F-\u009F\u202E]/);
    const got = cli(['consumers', 'get', c.id]);
    expect(got.out).not.toMatch(/[\u0000-\u0009\u000B-\u001F\u007F-\u009F\u202E]/);
    expect(got.out).toContain('\\u001b[2Jb\\x9b31m');
    const json = cli(['consumers', 'get', c.id, '--json']);
    expect(json.out).not.toMatch(/[\u0000-\u0009\u000B-\u001F\u007F-\u009F\u202E]/);
    expect(JSON.parse(json.out).metadata).toEqual({ note: 'a\u001b[2Jb\u009b31m', 'k\u0007': 1 });
    await fapi('DELETE', `/admin/consumers/${c.id}`);

    // What an older store may hold (the API refuses it now) is still printed escaped.
    expect(printable('a\u0000b\rc\nd\u001b[31me\u0007\u007f\u009b\u2028\u202e')).toBe('a\\x00b\\x0dc\\x0ad\\x1b[31me\\x07\\x7f\\x9b\\u{2028}\\u{202e}');
    const t = table(['ID', 'NAME'], [['con_1', 'evil\r\ncon_2  fake\u001b[2J'], ['con_3', 'ok']]);
    expect(t.split('\n')).toHaveLength(4);
    expect(t).toContain('evil\\x0d\\x0acon_2  fake\\x1b[2J');
    expect(t).not.toMatch(/[\u0000-\u0009\u000B-\u001F\u007F-\u009F]/);
  });

  it('errors say what to do: a missing record (1), a bad option (2), a refused body (1), no gateway (1)', () => {
    const nf = cli(['keys', 'get', 'key_nope']);
    expect(nf.code).toBe(1);
    expect(nf.err).toMatch(/No key "key_nope"\. \(turnpike keys list shows what exists\)/);
    const grant = cli(['grants', 'create', '--subject', 'consumer:con_nope', '--route', 'docs']);
    expect(grant.code).toBe(1);
    expect(grant.err).toMatch(/turnpike consumers list shows what exists/);
    const opt = cli(['keys', 'create', 'x', '--colour', 'red']);
    expect(opt.code).toBe(2);
    expect(opt.err).toMatch(/unknown option --colour for "keys create"/);
    expect(opt.err).toMatch(/Usage: turnpike keys/);
    expect(cli(['keys', 'explode']).err).toMatch(/unknown subcommand "explode": list, get, create, rotate, revoke/);
    expect(cli(['keys', 'create', 'x', '--expires', 'soon']).code).toBe(2);
    const refused = cli(['keys', 'create', 'x', '--cidr', '300.0.0.0/8']);
    expect(refused.code).toBe(1);
    expect(refused.err).toMatch(/restrictions\.cidrs\[0\]/);
    const viewer = cli(['consumers', 'create', 'v'], { TURNPIKE_ADMIN_TOKEN: VIEWER });
    expect(viewer.code).toBe(1);
    expect(viewer.err).toMatch(/viewer role/);
    const down = cli(['consumers', 'list'], { TURNPIKE_ADMIN_URL: 'http://127.0.0.1:1' });
    expect(down.code).toBe(1);
    expect(down.err).toMatch(/cannot reach the admin API/);
    const help = cli(['keys', '--help']);
    expect([help.code, help.out]).toEqual([0, expect.stringMatching(/^Usage: turnpike keys list/)]);
  });
});

describe('store kinds', () => {
  let redis: PrivateRedis;
  let rgw: Gateway;
  const rapi = client(() => `http://127.0.0.1:${rgw.adminPort}`);

  beforeAll(async () => {
    redis = await startRedis();
    const rdir = mkdtempSync(join(tmpdir(), 'turnpike-identity-redis-'));
    rgw = await startGateway(baseConfig({
      admin: { enabled: true, port: 0 }, redis: { url: redis.url }, store: { kind: 'redis' },
      upstreams: { up: { targets: ['http://127.0.0.1:9'] } }, routes: [{ id: 'orders', path: '/orders/*', upstream: 'up' }],
    }), { cwd: rdir, env: { TURNPIKE_ADMIN_TOKEN: TOKEN, TURNPIKE_TEST_HOOKS: '1' } });
  });

  afterAll(async () => {
    await rgw?.stop();
    await redis?.stop();
  });

  it('redis: create, list and revoke over the same API', async () => {
    const c = await rapi('POST', '/admin/consumers', { name: 'on-redis', keys: [{ name: 'k' }] });
    expect(c.status, c.text).toBe(201);
    expect(c.json.keys[0].key).toMatch(KEY_RE);
    for (let i = 0; i < 4; i++) expect((await rapi('POST', `/admin/consumers/${c.json.consumer.id}/keys`, { name: `k${i}` })).status).toBe(201);
    const { items, sizes } = await walk(rapi, `/admin/keys?consumer=${c.json.consumer.id}`, 2);
    expect(sizes).toEqual([2, 2, 1]);
    expect(JSON.stringify(items)).not.toContain(c.json.keys[0].key);
    const r = await rapi('POST', `/admin/keys/${c.json.keys[0].id}/revoke`);
    expect([r.status, r.json.status]).toEqual([200, 'revoked']);
    expect((await rapi('GET', `/admin/keys/${c.json.keys[0].id}`)).json.status).toBe('revoked');
    expect((await walk(rapi, '/admin/identity/audit', 100)).items.map((e: any) => e.action)).toEqual(expect.arrayContaining(['consumer.create', 'key.create', 'key.revoke']));
  });

  it('a store made with another pepper: `turnpike start` fails (exit non-zero) with the message; a healthy store lists no identity warning', async () => {
    const pdir = mkdtempSync(join(tmpdir(), 'turnpike-identity-pepper-'));
    const db = join(pdir, 'id.db');
    const { openSqliteStore } = await import('../../admin/identity/store/sqlite.js');
    const made = await openSqliteStore({ path: db, pepper: randomBytes(32) }); // pepper A
    await made.createConsumer({ name: 'a', keys: [{ name: 'k' }] }, { actor: 'test' });
    await made.close();
    const config = (store: Record<string, unknown>) => baseConfig({
      admin: { enabled: true, port: 0 }, store, secrets: { keyPepper: 'env:TP_PEPPER_B' },
      upstreams: { up: { targets: ['http://127.0.0.1:9'] } }, routes: [{ id: 'orders', path: '/orders/*', upstream: 'up', auth: {} }],
    });
    const env = { TURNPIKE_ADMIN_TOKEN: TOKEN, TURNPIKE_TEST_HOOKS: '1', TP_PEPPER_B: randomBytes(32).toString('hex') };
    const e = await startGateway(config({ path: db }), { cwd: pdir, env }).then(() => null, (err: Error) => err);
    expect(e, 'the gateway must not start').not.toBeNull();
    expect(e!.message).toMatch(/gateway exited \((?!0\))\d+\) before starting/);
    expect(e!.message).toMatch(/cannot use the identity store: the identity store .*id\.db holds keys hashed with another pepper/);
    // The same config over a new file starts, and its status has no identity warning.
    const good = await startGateway(config({ path: join(pdir, 'new.db') }), { cwd: pdir, env });
    try {
      const st = await client(() => `http://127.0.0.1:${good.adminPort}`)('GET', '/admin/status');
      expect(st.json.warnings.filter((w: string) => w.startsWith('identity'))).toEqual([]);
    } finally {
      expect(await good.stop()).toBe(0);
    }
  });

  it('an identity store that cannot be opened: 503 saying what is wrong, nothing else affected', async () => {
    const bdir = mkdtempSync(join(tmpdir(), 'turnpike-identity-broken-'));
    mkdirSync(join(bdir, 'db-is-a-dir'));
    const bgw = await startGateway(baseConfig({
      admin: { enabled: true, port: 0 }, store: { path: join(bdir, 'db-is-a-dir') },
      upstreams: { up: { targets: ['http://127.0.0.1:9'] } }, routes: [{ id: 'orders', path: '/orders/*', upstream: 'up' }],
    }), { cwd: bdir, env: { TURNPIKE_ADMIN_TOKEN: TOKEN, TURNPIKE_TEST_HOOKS: '1' } });
    try {
      const bapi = client(() => `http://127.0.0.1:${bgw.adminPort}`);
      const r = await bapi('POST', '/admin/consumers', { name: 'x' });
      expect([r.status, r.json.error.code]).toEqual([503, 'unavailable']);
      expect(r.json.error.message).toMatch(/db-is-a-dir/);
      expect(r.json.error.message).toMatch(/try again/);
      expect((await bapi('GET', '/admin/keys')).status).toBe(503);
      const st = await bapi('GET', '/admin/status');
      expect(st.status).toBe(200);
      // While the store is down, the status says so.
      expect(st.json.warnings).toEqual(expect.arrayContaining([expect.stringMatching(/^identity store unavailable: .*db-is-a-dir/)]));
    } finally {
      await bgw.stop();
    }
  });
});
