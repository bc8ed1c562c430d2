/**
 * The Redis identity store shared by two gateway instances (issue 12), on
 * a private redis-server this test can kill: a key made on one instance
 * works on the other, a revocation on one is refused by every worker of
 * the other within 1 s, and while Redis is down keys already seen keep
 * working (their cached entries) while a key never seen gets 503
 * identity_store_unavailable with Retry-After; once Redis is back, lookups
 * are answered again.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { startRedis, type PrivateRedis } from '../helpers/redis.js';
import { generateKey } from '../../common/identity/keys.js';

const TOKEN = `t-${randomBytes(12).toString('hex')}`;
// Every instance of one store must hash keys with the same pepper.
const PEPPER = randomBytes(32).toString('hex');

async function call(gw: Gateway, key: string, path = '/api/x'): Promise<{ status: number; code: string | null; retryAfter: string | undefined }> {
  const r = await request(`${gw.url}${path}`, { headers: { authorization: `Bearer ${key}`, connection: 'close' } });
  const text = await r.body.text();
  let code: string | null = null;
  try {
    code = JSON.parse(text).error?.code ?? null;
  } catch { /* the upstream's answer */ }
  return { status: r.statusCode, code, retryAfter: r.headers['retry-after'] as string | undefined };
}

async function admin(gw: Gateway, method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> {
  const r = await request(`http://127.0.0.1:${gw.adminPort}${path}`, {
    method: method as 'GET', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.body.text();
  return { status: r.statusCode, json: text === '' ? null : JSON.parse(text) };
}

describe('a Redis identity store shared by two instances', () => {
  let redis: PrivateRedis;
  let up: Upstream;
  let a: Gateway;
  let b: Gateway;

  beforeAll(async () => {
    redis = await startRedis();
    up = await startUpstream();
    const config = baseConfig({
      server: { workers: 2 },
      admin: { enabled: true, port: 0 },
      redis: { url: redis.url, commandTimeoutMs: 200, connectTimeoutMs: 500 },
      store: { kind: 'redis' },
      secrets: { keyPepper: 'env:TP_TEST_PEPPER' },
      identity: { lookupTimeoutMs: 500 },
      upstreams: { u: { targets: [up.url] } },
      routes: [
        { id: 'api', path: '/api/*', upstream: 'u', auth: {} },
        // A key lookup (a miss: pending) then a strict limit (pending on Redis) for the same request.
        { id: 'strict', path: '/strict/*', upstream: 'u', auth: {}, rateLimit: [{ by: 'consumer', rate: 2, per: '1h', mode: 'strict' }] },
      ],
    });
    const env = { TURNPIKE_ADMIN_TOKEN: TOKEN, TP_TEST_PEPPER: PEPPER };
    [a, b] = await Promise.all([
      startGateway(config, { env, cwd: mkdtempSync(join(tmpdir(), 'tp-idr-a-')) }),
      startGateway(config, { env, cwd: mkdtempSync(join(tmpdir(), 'tp-idr-b-')) }),
    ]);
  });

  afterAll(async () => {
    await redis?.restart();
    expect(await Promise.all([a?.stop(), b?.stop()])).toEqual([0, 0]);
    await up?.close();
    await redis?.stop();
  });

  it('a key made on one instance works on the other; revoked there, refused by every worker here within 1 s', async () => {
    const c = await admin(a, 'POST', '/admin/consumers', { name: 'shared', keys: [{ name: 'k' }] });
    expect(c.status, JSON.stringify(c.json)).toBe(201);
    const { id, key } = c.json.keys[0];
    for (let i = 0; i < 8; i++) expect((await call(b, key)).status).toBe(200);
    const t0 = Date.now();
    expect((await admin(a, 'POST', `/admin/keys/${id}/revoke`)).status).toBe(200);
    let codes: (string | null)[] = [];
    while (Date.now() - t0 < 1000) {
      codes = (await Promise.all(Array.from({ length: 8 }, () => call(b, key)))).map((r) => r.code);
      if (codes.every((x) => x === 'key_revoked')) break;
    }
    expect(codes).toEqual(Array(8).fill('key_revoked'));
    console.log(`[identity redis] revocation on instance A seen by every worker of B after ${Date.now() - t0} ms`);
  });

  it('a cache miss then a strict limit by consumer, in one request: decided in turn, held across both instances', async () => {
    const c = await admin(a, 'POST', '/admin/consumers', { name: 'strict', keys: [{ name: 'k1' }, { name: 'k2' }] });
    const [k1, k2] = c.json.keys.map((k: { key: string }) => k.key);
    // Each first request is a miss on that instance (lookup pending), then the strict decision (Redis, pending).
    const codes = [(await call(a, k1, '/strict/1')).status, (await call(b, k2, '/strict/1')).status, (await call(a, k2, '/strict/1')).status, (await call(b, k1, '/strict/1')).status];
    expect(codes).toEqual([200, 200, 429, 429]);
  });

  it('Redis down: keys already seen keep working, a key never seen is 503 identity_store_unavailable; back once Redis is', async () => {
    const c = await admin(a, 'POST', '/admin/consumers', { name: 'steady', keys: [{ name: 'k' }] });
    const { key } = c.json.keys[0];
    for (let i = 0; i < 8; i++) expect((await call(a, key)).status).toBe(200);
    await redis.kill();
    for (let i = 0; i < 8; i++) expect((await call(a, key)).status, 'a cached key while Redis is down').toBe(200);
    const never = generateKey('live');
    const t0 = Date.now();
    const r = await call(a, never);
    expect([r.status, r.code, r.retryAfter]).toEqual([503, 'identity_store_unavailable', '1']);
    expect(Date.now() - t0, 'answered within lookupTimeoutMs and the command timeout').toBeLessThan(1500);
    expect((await admin(a, 'GET', '/admin/consumers')).status).toBe(503);
    // GET /admin/status says the identity store is down.
    const identityWarnings = async (gw: Gateway) => ((await admin(gw, 'GET', '/admin/status')).json.warnings as string[]).filter((w) => w.startsWith('identity'));
    expect(await identityWarnings(a)).toEqual([expect.stringMatching(/^identity (store failing|change feed disconnected)/)]);
    await redis.restart();
    // An empty Redis (no persistence here): the store answers again, so the unknown key is key_invalid, not 503.
    await expect.poll(async () => (await call(a, generateKey('live'))).code, { timeout: 10_000, interval: 200 }).toBe('key_invalid');
    await expect.poll(() => identityWarnings(a), { timeout: 5000, interval: 100 }).toEqual([]);
    // The emptied Redis was claimed again with the shared pepper: both instances serve (same pepper), keys made now work on both.
    const again = await admin(b, 'POST', '/admin/consumers', { name: 'after-restart', keys: [{ name: 'k' }] });
    expect(again.status, JSON.stringify(again.json)).toBe(201);
    await expect.poll(async () => (await call(a, again.json.keys[0].key)).status, { timeout: 5000, interval: 100 }).toBe(200);
  });
});
