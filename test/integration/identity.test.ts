/**
 * API keys end to end (issue 12), on the real gateway over real sockets,
 * uWS and Bun: a SQLite store in a temporary directory, consumers and keys
 * made through the admin API, requests through the data plane to a real
 * upstream that records what it received.
 *
 * Every decision path of the gatekeeper (no key, malformed, unknown,
 * revoked, suspended, expired, restricted, scope, grant, admitted), what the
 * upstream sees (consumer headers; never the credential or a forged
 * consumer header), revocation on every worker within 1 s, the negative
 * cache under a flood (store reads counted), rotation's Deprecation/Sunset,
 * keys in the query (stripped, never logged), rate limits by consumer, and
 * that the store file holds no plaintext key.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { rawExchange } from '../helpers/raw-http.js';
import { sampleValue, scrape } from '../helpers/metrics.js';
import { generateKey, keyChecksum } from '../../common/identity/keys.js';

const TOKEN = `t-${randomBytes(12).toString('hex')}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let up: Upstream;

beforeAll(async () => {
  up = await startUpstream();
});

afterAll(async () => {
  await up?.close();
});

function config(dir: string, upUrl: string, over: Record<string, any> = {}): Record<string, any> {
  return baseConfig({
    server: { workers: 2 },
    admin: { enabled: true, port: 0 },
    store: { path: join(dir, 'id.db') },
    identity: { keys: { sources: ['authorization', 'header:x-api-key', 'query:api_key'] }, ...(over.identity ?? {}) },
    log: { access: { enabled: true, destination: 'stdout', fields: ['request_id', 'status', 'route', 'query', 'error', 'consumer'] } },
    upstreams: { u: { targets: [upUrl] } },
    rateLimits: { perConsumer: { by: 'consumer', rate: 3, per: '1h' } },
    routes: [
      { id: 'open', path: '/open/*', upstream: 'u' },
      { id: 'orders', path: '/orders/*', upstream: 'u', auth: { scopes: ['orders:read'] } },
      { id: 'any', path: '/any/*', upstream: 'u', auth: {} },
      { id: 'granted', path: '/granted/*', upstream: 'u', auth: { grants: 'required' } },
      { id: 'forward', path: '/forward/*', upstream: 'u', auth: { forwardCredentials: true } },
      { id: 'limited', path: '/limited/*', upstream: 'u', auth: {}, rateLimit: ['perConsumer'] },
    ],
  });
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  json: any;
}

async function call(gw: Gateway, path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Answer> {
  const r = await request(`${gw.url}${path}`, { method: method as 'GET', headers: { ...headers, connection: 'close' } });
  const body = await r.body.text();
  let json: any = null;
  try {
    json = JSON.parse(body);
  } catch { /* not JSON */ }
  return { status: r.statusCode, headers: r.headers, body, json };
}

async function admin(gw: Gateway, method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> {
  const r = await request(`http://127.0.0.1:${gw.adminPort}${path}`, {
    method: method as 'GET',
    headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.body.text();
  return { status: r.statusCode, json: text === '' ? null : JSON.parse(text) };
}

/** A consumer with one key; returns their ids and the plaintext key. */
async function consumerWithKey(gw: Gateway, name: string, key: Record<string, unknown> = {}, consumer: Record<string, unknown> = {}) {
  const r = await admin(gw, 'POST', '/admin/consumers', { name, ...consumer, keys: [{ name: 'default', scopes: ['orders:read'], ...key }] });
  expect(r.status, JSON.stringify(r.json)).toBe(201);
  return { consumerId: r.json.consumer.id as string, keyId: r.json.keys[0].id as string, key: r.json.keys[0].key as string };
}

const bearer = (k: string) => ({ authorization: `Bearer ${k}` });
/** Requests the upstream received since `from`, for a path prefix. */
const seenSince = (from: number, prefix: string) => up.seen.slice(from).filter((s) => s.url.startsWith(prefix));

for (const runtime of ['node', 'bun'] as const) {
  describe(`API keys on the data plane (${runtime === 'node' ? 'uWS' : 'Bun'})`, () => {
    let gw: Gateway;
    let dir: string;
    let alice: { consumerId: string; keyId: string; key: string };

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), 'tp-identity-'));
      gw = await startGateway(config(dir, up.url), { runtime, cwd: dir, env: { TURNPIKE_ADMIN_TOKEN: TOKEN } });
      alice = await consumerWithKey(gw, 'Alice Ltd');
    });

    afterAll(async () => {
      expect(await gw?.stop()).toBe(0);
    });

    it('no key: 401 credentials_missing with WWW-Authenticate; nothing reaches the upstream', async () => {
      const before = up.seen.length;
      const r = await call(gw, '/orders/1');
      expect(r.status).toBe(401);
      expect(r.json.error.code).toBe('credentials_missing');
      expect(r.headers['www-authenticate']).toBe('Bearer realm="turnpike"');
      expect(seenSince(before, '/orders').length).toBe(0);
    });

    it('bad input: each malformed key is 401 key_malformed, decided without a store lookup', async () => {
      const lookups = async () => sampleValue(await scrape(gw.adminPort!), 'turnpike_identity_store_lookups_total') ?? 0;
      const before = up.seen.length;
      const l0 = await lookups();
      const good = generateKey('live');
      const body = good.slice(0, good.lastIndexOf('_') + 1);
      const wrongSum = body + (keyChecksum(body.slice(0, -1)) === 'AAAAAA' ? 'BBBBBB' : 'AAAAAA');
      const cases: Array<[string, Record<string, string>]> = [
        ['empty bearer', { authorization: 'Bearer ' }],
        ['empty X-API-Key', { 'x-api-key': '' }],
        ['10 KB key', bearer('tp_live_' + 'a'.repeat(10_000))],
        ['wrong checksum', bearer(wrongSum)],
        ['truncated', bearer(good.slice(0, -1))],

        ['non-ASCII', { 'x-api-key': 'tp_live_é' + good.slice(9) }],
      ];
      for (const [name, h] of cases) {
        const r = await call(gw, '/orders/1', h);
        expect([r.status, r.json?.error?.code], name).toEqual([401, name.startsWith('empty') ? 'key_malformed' : 'key_malformed']);
        expect(r.headers['www-authenticate'], name).toBe('Bearer realm="turnpike", error="invalid_token"');
      }
      expect(seenSince(before, '/orders').length).toBe(0);
      expect(await lookups()).toBe(l0);
      // A Bearer credential that is not a Turnpike key (a token meant for the upstream) is not read as one: the next source is.
      const jwt = await call(gw, '/orders/1', bearer('eyJhbGciOiJIUzI1NiJ9.e30.sig'));
      expect([jwt.status, jwt.json.error.code]).toEqual([401, 'credentials_missing']);
      expect((await call(gw, '/orders/1', { ...bearer('eyJhbGciOiJIUzI1NiJ9.e30.sig'), 'x-api-key': alice.key })).status).toBe(200);
    });

    it('a valid key in Authorization (Bearer, ApiKey), X-API-Key or the query: admitted; the upstream sees the consumer, never the credential', async () => {
      for (const [name, path, h] of [
        ['bearer', '/orders/1', bearer(alice.key)],
        ['apikey scheme', '/orders/2', { authorization: `apikey ${alice.key}` }],
        ['x-api-key', '/orders/3', { 'x-api-key': alice.key }],
        ['query', `/orders/4?a=1&api_key=${alice.key}&b=2`, {}],
      ] as const) {
        const before = up.seen.length;
        const r = await call(gw, path, { ...h, 'x-consumer-id': 'forged', 'X-Consumer-Name': 'forged', 'x-route-id': 'forged' });
        expect(r.status, name).toBe(200);
        const seen = seenSince(before, '/orders');
        expect(seen.length, name).toBe(1);
        const hs = seen[0]!.headers;
        expect(hs['x-consumer-id'], name).toBe(alice.consumerId);
        expect(hs['x-consumer-name'], name).toBe('Alice Ltd');
        expect(hs['x-route-id'], name).toBe('orders');
        expect(hs['authorization'], name).toBeUndefined();
        expect(hs['x-api-key'], name).toBeUndefined();
        expect(seen[0]!.url, name).not.toContain(alice.key);
        if (name === 'query') expect(seen[0]!.url).toBe('/orders/4?a=1&b=2');
      }
    });

    it('a key sent twice (two lines, a parameter twice) is refused, whichever value; two Origin lines fail a restricted key', async () => {
      const other = (await consumerWithKey(gw, 'twice')).key;
      const before = up.seen.length;
      const cases: Array<[string, string]> = [
        ['two Authorization lines, same key', `Authorization: Bearer ${alice.key}\r\nAuthorization: Bearer ${alice.key}`],
        ['two Authorization lines, two keys', `Authorization: Bearer ${alice.key}\r\nAuthorization: Bearer ${other}`],
        ['two X-API-Key lines', `X-API-Key: ${other}\r\nX-API-Key: ${alice.key}`],
      ];
      for (const [name, lines] of cases) {
        const { res, conn } = await rawExchange(gw.port, `GET /orders/1 HTTP/1.1\r\nHost: t\r\n${lines}\r\nConnection: close\r\n\r\n`);
        conn.close();
        expect([res.status, JSON.parse(res.body.toString()).error.code], name).toEqual([401, 'key_malformed']);
      }
      const q = await call(gw, `/orders/1?api_key=${alice.key}&api_key=${alice.key}`);
      expect([q.status, q.json.error.code]).toEqual([401, 'key_malformed']);
      // The same name percent-encoded is the same parameter (the upstream's framework will decode it).
      const enc = await call(gw, `/orders/1?api_key=${alice.key}&api%5Fkey=x`);
      expect([enc.status, enc.json.error.code]).toEqual([401, 'key_malformed']);
      expect(q.json.error.message).toContain('more than once');
      expect(seenSince(before, '/orders').length).toBe(0);
      const encoded = await call(gw, `/orders/1?api%5Fkey=${alice.key}&b=2`);
      expect(encoded.status).toBe(200);
      expect(up.seen[up.seen.length - 1]!.url).toBe('/orders/1?b=2');
      const fenced = await consumerWithKey(gw, 'origin-twice', { restrictions: { origins: ['https://app.example.com'] } });
      const one = await rawExchange(gw.port, `GET /any/1 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer ${fenced.key}\r\nOrigin: https://app.example.com\r\nConnection: close\r\n\r\n`);
      one.conn.close();
      expect(one.res.status).toBe(200);
      const two = await rawExchange(gw.port, `GET /any/1 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer ${fenced.key}\r\nOrigin: https://evil.example.org\r\nOrigin: https://app.example.com\r\nConnection: close\r\n\r\n`);
      two.conn.close();
      expect([two.res.status, JSON.parse(two.res.body.toString()).error.code]).toEqual([403, 'key_restricted']);
    });

    it('clients cannot forge consumer headers on a public route either', async () => {
      const before = up.seen.length;
      const r = await call(gw, '/open/x', { 'x-consumer-id': 'forged', 'x-consumer-name': 'forged', 'x-route-id': 'forged' });
      expect(r.status).toBe(200);
      const hs = seenSince(before, '/open')[0]!.headers;
      expect([hs['x-consumer-id'], hs['x-consumer-name'], hs['x-route-id']]).toEqual([undefined, undefined, undefined]);
    });

    it('forwardCredentials: true forwards the credential', async () => {
      const before = up.seen.length;
      expect((await call(gw, '/forward/x', bearer(alice.key))).status).toBe(200);
      expect(seenSince(before, '/forward')[0]!.headers['authorization']).toBe(`Bearer ${alice.key}`);
    });

    it('an unknown key: 401 key_invalid; a flood of it reads the store once', async () => {
      const unknown = generateKey('live');
      const read = async () => sampleValue(await scrape(gw.adminPort!), 'turnpike_identity_store_lookups_total') ?? 0;
      const before = up.seen.length;
      const r0 = await read();
      const first = await call(gw, '/orders/x', bearer(unknown));
      expect([first.status, first.json.error.code]).toEqual([401, 'key_invalid']);
      const answers = await Promise.all(Array.from({ length: 200 }, () => call(gw, '/orders/x', bearer(unknown))));
      expect(new Set(answers.map((a) => `${a.status} ${a.json.error.code}`))).toEqual(new Set(['401 key_invalid']));
      expect(await read() - r0).toBe(1);
      expect(seenSince(before, '/orders').length).toBe(0);
    });

    it('scopes: a key without the route\'s scope is 403 insufficient_scope', async () => {
      const bob = await consumerWithKey(gw, 'bob', { scopes: ['billing:read'] });
      const r = await call(gw, '/orders/1', bearer(bob.key));
      expect([r.status, r.json.error.code]).toEqual([403, 'insufficient_scope']);
      expect(r.headers['www-authenticate']).toBe('Bearer realm="turnpike", error="insufficient_scope", scope="orders:read"');
      expect((await call(gw, '/any/1', bearer(bob.key))).status).toBe(200);
    });

    it('grants: required: 403 no_grant until a grant (to the consumer or one of its groups) exists, at once on every worker', async () => {
      const carol = await consumerWithKey(gw, 'carol');
      for (let i = 0; i < 4; i++) expect((await call(gw, '/granted/1', bearer(carol.key))).json.error.code).toBe('no_grant');
      const g = await admin(gw, 'POST', '/admin/grants', { subject: { kind: 'consumer', id: carol.consumerId }, routeId: 'granted', methods: ['GET'] });
      expect(g.status, JSON.stringify(g.json)).toBe(201);
      await sleep(300);
      for (let i = 0; i < 4; i++) expect((await call(gw, '/granted/1', bearer(carol.key))).status).toBe(200);
      expect((await call(gw, '/granted/1', bearer(carol.key), 'DELETE')).json.error.code).toBe('no_grant');
      // Through a group.
      const grp = await admin(gw, 'POST', '/admin/groups', { name: 'partners' });
      expect(grp.status).toBe(201);
      const dave = await consumerWithKey(gw, 'dave', {}, { groups: [grp.json.id] });
      expect((await call(gw, '/granted/1', bearer(dave.key))).json.error.code).toBe('no_grant');
      expect((await admin(gw, 'POST', '/admin/grants', { subject: { kind: 'group', id: grp.json.id }, routeId: 'granted' })).status).toBe(201);
      await sleep(300);
      expect((await call(gw, '/granted/1', bearer(dave.key), 'DELETE')).status).toBe(200);
    });

    it('revocation reaches every worker within 1 s; suspension and reactivation too', async () => {
      const erin = await consumerWithKey(gw, 'erin');
      // Warm both workers' caches (new connection each time: the kernel spreads them).
      for (let i = 0; i < 8; i++) expect((await call(gw, '/any/1', bearer(erin.key))).status).toBe(200);
      const t0 = Date.now();
      expect((await admin(gw, 'POST', `/admin/keys/${erin.keyId}/revoke`)).status).toBe(200);
      let codes: string[] = [];
      while (Date.now() - t0 < 1000) {
        codes = (await Promise.all(Array.from({ length: 8 }, () => call(gw, '/any/1', bearer(erin.key))))).map((r) => r.json?.error?.code ?? String(r.status));
        if (codes.every((c) => c === 'key_revoked')) break;
      }
      expect(codes).toEqual(Array(8).fill('key_revoked'));
      console.log(`[identity ${runtime}] revocation seen by every worker after ${Date.now() - t0} ms`);

      const frank = await consumerWithKey(gw, 'frank');
      for (let i = 0; i < 8; i++) await call(gw, '/any/1', bearer(frank.key));
      expect((await admin(gw, 'PATCH', `/admin/consumers/${frank.consumerId}`, { status: 'suspended' })).status).toBe(200);
      await sleep(300);
      for (let i = 0; i < 6; i++) expect((await call(gw, '/any/1', bearer(frank.key))).json.error.code).toBe('consumer_suspended');
      expect((await admin(gw, 'PATCH', `/admin/consumers/${frank.consumerId}`, { status: 'active' })).status).toBe(200);
      await sleep(300);
      for (let i = 0; i < 6; i++) expect((await call(gw, '/any/1', bearer(frank.key))).status).toBe(200);
    });

    it('expiry and restrictions', async () => {
      const soon = await consumerWithKey(gw, 'soon', { expiresAt: Date.now() + 1500 });
      expect((await call(gw, '/any/1', bearer(soon.key))).status).toBe(200);
      await sleep(1600);
      expect((await call(gw, '/any/1', bearer(soon.key))).json.error.code).toBe('key_expired');
      const fenced = await consumerWithKey(gw, 'fenced', { restrictions: { cidrs: ['192.0.2.0/24'] } });
      const r = await call(gw, '/any/1', bearer(fenced.key));
      expect([r.status, r.json.error.code]).toEqual([403, 'key_restricted']);
      expect(r.json.error.message).toContain('client addresses');
      const local = await consumerWithKey(gw, 'local', { restrictions: { cidrs: ['127.0.0.0/8', '::1/128'], origins: ['https://*.example.com'] } });
      expect((await call(gw, '/any/1', { ...bearer(local.key), origin: 'https://app.example.com' })).status).toBe(200);
      expect((await call(gw, '/any/1', { ...bearer(local.key), origin: 'https://evil.example.org' })).json.error.code).toBe('key_restricted');
    });

    it('rotation: the new key works, the old one too during its grace, with Deprecation and Sunset', async () => {
      const gus = await consumerWithKey(gw, 'gus');
      const rot = await admin(gw, 'POST', `/admin/keys/${gus.keyId}/rotate`, { graceMs: 3_600_000 });
      expect(rot.status, JSON.stringify(rot.json)).toBe(201);
      const fresh = rot.json.key as string;
      const n = await call(gw, '/any/1', bearer(fresh));
      expect(n.status).toBe(200);
      expect(n.headers['deprecation']).toBeUndefined();
      await sleep(300);
      const o = await call(gw, '/any/1', bearer(gus.key));
      expect(o.status).toBe(200);
      expect(o.headers['deprecation']).toMatch(/^@\d+$/);
      expect(new Date(o.headers['sunset'] as string).getTime()).toBeGreaterThan(Date.now() + 3_500_000);
      const m = await scrape(gw.adminPort!);
      expect(sampleValue(m, 'turnpike_auth_rotated_key_requests_total')).toBeGreaterThanOrEqual(1);
    });

    it('rate limits by consumer: two keys of one consumer share a bucket', async () => {
      const r = await admin(gw, 'POST', '/admin/consumers', { name: 'henry', keys: [{ name: 'a', scopes: [] }, { name: 'b', scopes: [] }] });
      expect(r.status).toBe(201);
      const [a, b] = r.json.keys.map((k: { key: string }) => k.key);
      const statuses: number[] = [];
      for (const k of [a, b, a, b, a]) statuses.push((await call(gw, '/limited/1', bearer(k))).status);
      expect(statuses).toEqual([200, 200, 200, 429, 429]);
      // Another consumer has its own bucket.
      expect((await call(gw, '/limited/1', bearer(alice.key))).status).toBe(200);
    });

    it('the access log names the consumer (also of a 403), never the key', async () => {
      const rid = `log-${runtime}-${Date.now()}`;
      expect((await call(gw, `/orders/9?api_key=${alice.key}`, { 'x-request-id': rid + '-ok' })).status).toBe(200);
      expect((await call(gw, '/granted/9', { ...bearer(alice.key), 'x-request-id': rid + '-403' })).status).toBe(403);
      expect((await call(gw, '/orders/9', { 'x-request-id': rid + '-401' })).status).toBe(401);
      const line = async (id: string) => {
        let found: any;
        await expect.poll(() => (found = gw.logs.map((l) => { try { return JSON.parse(l); } catch { return null; } }).find((j) => j?.request_id === id))).toBeDefined();
        return found;
      };
      expect(await line(rid + '-ok')).toMatchObject({ status: 200, route: 'orders', consumer: alice.consumerId, query: 'api_key=[REDACTED]' });
      expect(await line(rid + '-403')).toMatchObject({ status: 403, error: 'no_grant', consumer: alice.consumerId });
      expect(await line(rid + '-401')).toMatchObject({ status: 401, error: 'credentials_missing', consumer: null });
    });

    it('the store file and the logs never hold a plaintext key', async () => {
      await sleep(200);
      const files = readdirSync(dir).filter((f) => f.startsWith('id.db'));
      expect(files.length).toBeGreaterThan(0);
      const bytes = Buffer.concat(files.map((f) => readFileSync(join(dir, f))));
      expect(bytes.includes(Buffer.from(alice.key))).toBe(false);
      expect(bytes.includes(Buffer.from(alice.key.slice(8, 30)))).toBe(false);
      expect(gw.logs.filter((l) => l.includes(alice.key.slice(8, 30)))).toEqual([]);
    });
  });
}

describe('API keys with the admin listener off', () => {
  it('the admin thread still runs the identity store: a key made beforehand is admitted, an unknown one refused', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tp-identity-noadmin-'));
    const pepper = randomBytes(32).toString('hex');
    // The key is made directly in the store file, with the pepper the gateway will use.
    const { openSqliteStore } = await import('../../admin/identity/store/sqlite.js');
    const store = await openSqliteStore({ path: join(dir, 'id.db'), pepper: Buffer.from(pepper, 'hex') });
    const made = await store.createConsumer({ name: 'offline', keys: [{ name: 'k' }] }, { actor: 'test' });
    await store.close();
    const gw = await startGateway(baseConfig({
      server: { workers: 1 },
      admin: { enabled: false },
      store: { path: join(dir, 'id.db') },
      secrets: { keyPepper: 'env:TP_TEST_PEPPER' },
      upstreams: { u: { targets: [up.url] } },
      routes: [{ id: 'api', path: '/api/*', upstream: 'u', auth: {} }],
    }), { cwd: dir, env: { TP_TEST_PEPPER: pepper } });
    try {
      expect(gw.adminPort).toBeNull();
      expect((await call(gw, '/api/x', bearer(made.keys[0]!.key))).status).toBe(200);
      expect((await call(gw, '/api/x', bearer(generateKey('live')))).json.error.code).toBe('key_invalid');
    } finally {
      expect(await gw.stop()).toBe(0);
    }
  });
});
