/**
 * The identity store suite on the Redis store, against a private
 * redis-server for this file (test/helpers/redis.ts), flushed before each
 * test; plus what only Redis has: the key layout, the schema marker, and
 * failures when Redis goes away.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_KEY_PREFIX, REDIS_SCHEMA_VERSION, openRedisStore } from '../../../admin/identity/store/redis.js';
import { StoreError, type ChangeRecord, pepperCheck } from '../../../admin/identity/store/types.js';
import { startRedis, type PrivateRedis } from '../../helpers/redis.js';
import { storeSuite } from './store-suite.js';

let redis: PrivateRedis;
let admin: Redis;
beforeAll(async () => {
  redis = await startRedis();
  admin = new Redis(redis.url, { lazyConnect: true });
  await admin.connect();
});
afterAll(async () => {
  admin?.disconnect();
  await redis?.stop();
});

/** Every key under SCAN with its value by type, and its DUMP bytes: all as latin1 text. */
async function dumpAll(): Promise<string> {
  const parts: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await admin.scan(cursor, 'COUNT', 500);
    cursor = next;
    for (const key of keys) {
      const type = await admin.type(key);
      parts.push(key, type);
      if (type === 'string') parts.push((await admin.getBuffer(key))!.toString('latin1'));
      else if (type === 'zset') parts.push(...(await admin.zrange(key, '0', '-1', 'WITHSCORES')));
      else if (type === 'hash') parts.push(...Object.entries(await admin.hgetall(key)).flat());
      else throw new Error(`unexpected type ${type} of ${key}`);
      parts.push((await admin.dumpBuffer(key))!.toString('latin1'));
    }
  } while (cursor !== '0');
  return parts.join('\n');
}

storeSuite('redis', () => ({
  async fresh(opts) {
    await admin.flushall();
    return openRedisStore({ url: redis.url, ...opts });
  },
  async reopen(opts) {
    return openRedisStore({ url: redis.url, ...opts });
  },
  dump: dumpAll,
}));

describe('redis store: layout, schema, failures', () => {
  const pepper = randomBytes(32);

  it('keeps every key under turnpike:id:, with the documented layout', async () => {
    await admin.flushall();
    const store = await openRedisStore({ url: redis.url, pepper });
    await store.createGroup({ id: 'g', name: 'g' }, { actor: 't' });
    const { keys: [k] } = await store.createConsumer({ id: 'c', name: 'A', tenant: 't1', groups: ['g'], keys: [{ id: 'k', name: 'k', expiresAt: Date.now() + 1000 }] }, { actor: 't' });
    await store.createGrant({ id: 'gr', subject: { kind: 'group', id: 'g' }, routeId: 'r' }, { actor: 't' });
    await store.revokeKey('k', { actor: 't' });
    await store.touchKeys([{ id: 'k', at: 5 }]);
    const keys = (await admin.keys('*')).sort();
    expect(keys.every((x) => x.startsWith(DEFAULT_KEY_PREFIX))).toBe(true);
    const shapes = keys.map((x) => x.slice(DEFAULT_KEY_PREFIX.length).replace(/^a:.*/, 'a:<id>'));
    expect(shapes).toEqual([
      'a:<id>', 'a:<id>', 'a:<id>', 'a:<id>', 'c:c', 'g:g', 'gr:gr', 'ix:a', 'ix:c', 'ix:c:t:t1', 'ix:g', 'ix:g:m:g', 'ix:gr', 'ix:gr:s:group:g',
      'ix:k', 'ix:k:c:c', 'ix:k:exp', 'ix:k:rev', `k:k`, 'k:used', `kh:${k!.record.hash}`, 'pepper', 'schema',
    ].sort());
    expect(await admin.get(DEFAULT_KEY_PREFIX + 'schema')).toBe(String(REDIS_SCHEMA_VERSION));
    expect(await admin.hget(DEFAULT_KEY_PREFIX + 'k:used', 'k')).toBe('5');
    await store.close();
  });

  it('publishes each committed write on turnpike:id:changes for other instances', async () => {
    await admin.flushall();
    const sub = new Redis(redis.url);
    const got: ChangeRecord[][] = [];
    await sub.subscribe(DEFAULT_KEY_PREFIX + 'changes');
    sub.on('message', (_ch, msg) => got.push(JSON.parse(msg)));
    const store = await openRedisStore({ url: redis.url, pepper });
    const { keys: [k] } = await store.createConsumer({ id: 'c', name: 'A', keys: [{ id: 'k', name: 'k' }] }, { actor: 't' });
    await store.revokeKey('k', { actor: 't' });
    for (let i = 0; i < 100 && got.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
    expect(got.map((batch) => batch.map((c) => `${c.kind}.${c.op}`))).toEqual([['consumer.create', 'key.create'], ['key.update']]);
    expect(got[1]![0]!.keyHashes).toEqual([k!.record.hash]);
    sub.disconnect();
    await store.close();
  });

  it('refuses data of a newer schema', async () => {
    await admin.flushall();
    await admin.set(DEFAULT_KEY_PREFIX + 'schema', String(REDIS_SCHEMA_VERSION + 1));
    const e = await openRedisStore({ url: redis.url, pepper }).then(() => null, (err: unknown) => err);
    expect((e as StoreError).code).toBe('schema');
    expect((e as Error).message).toMatch(/newer than this Turnpike knows/);
  });

  it('refuses to open with another pepper than the store\'s (an instance configured with another one), saying so', async () => {
    await admin.flushall();
    (await openRedisStore({ url: redis.url, pepper })).close();
    expect(await admin.get(DEFAULT_KEY_PREFIX + 'pepper')).toBe(pepperCheck(pepper));
    const e = await openRedisStore({ url: redis.url, pepper: randomBytes(32) }).then(() => null, (err: unknown) => err);
    expect((e as StoreError).code).toBe('unavailable');
    expect((e as Error).message).toMatch(/hashed with another pepper.*secrets\.keyPepper/);
    const again = await openRedisStore({ url: redis.url, pepper });
    await again.close();
  });

  it('after Redis lost its data, verifyPepper claims the empty store again (schema and pepper check); a write does too before it writes', async () => {
    await admin.flushall();
    const store = await openRedisStore({ url: redis.url, pepper });
    await store.verifyPepper();
    await admin.flushall();
    await store.verifyPepper();
    expect(await admin.get(DEFAULT_KEY_PREFIX + 'pepper')).toBe(pepperCheck(pepper));
    expect(await admin.get(DEFAULT_KEY_PREFIX + 'schema')).toBe(String(REDIS_SCHEMA_VERSION));
    await admin.flushall();
    await store.createConsumer({ id: 'c', name: 'A' }, { actor: 't' });
    expect(await admin.get(DEFAULT_KEY_PREFIX + 'pepper')).toBe(pepperCheck(pepper));
    expect(await store.getConsumer('c')).not.toBeNull();
    await store.close();
  });

  it('after Redis lost its data, an instance of another pepper that claims it first: verifyPepper and every write are refused (permanent, naming both checks), nothing written', async () => {
    await admin.flushall();
    const store = await openRedisStore({ url: redis.url, pepper });
    await admin.flushall();
    const wrong = randomBytes(32);
    const other = await openRedisStore({ url: redis.url, pepper: wrong });
    await other.createConsumer({ id: 'w', name: 'W' }, { actor: 't' });
    const found = `pepper check found in the store: ${pepperCheck(wrong)}, this instance's pepper gives: ${pepperCheck(pepper)}`;
    for (const call of [() => store.verifyPepper(), () => store.createConsumer({ id: 'c', name: 'A' }, { actor: 't' }), () => store.updateConsumer('w', { name: 'X' }, { actor: 't' })]) {
      const e = await call().then(() => null, (err: unknown) => err);
      expect(e).toBeInstanceOf(StoreError);
      expect([(e as StoreError).code, (e as StoreError).permanent]).toEqual(['unavailable', true]);
      expect((e as Error).message).toContain(found);
    }
    expect(await admin.get(DEFAULT_KEY_PREFIX + 'c:c')).toBeNull();
    expect((await other.getConsumer('w'))!.name).toBe('W');
    await Promise.all([store.close(), other.close()]);
  });

  it('Redis unreachable: open and calls fail with unavailable (no hang), and work again once it is back', async () => {
    await admin.flushall();
    const store = await openRedisStore({ url: redis.url, pepper, commandTimeoutMs: 300 });
    await store.createConsumer({ id: 'c', name: 'A' }, { actor: 't' });
    await redis.kill();
    try {
      const calls: Array<[string, () => Promise<unknown>]> = [
        ['get', () => store.getConsumer('c')],
        ['lookup', () => store.lookupKey('x')],
        ['write', () => store.createConsumer({ name: 'B' }, { actor: 't' })],
        ['list', () => store.listConsumers()],
        ['touch', () => store.touchKeys([{ id: 'k', at: 1 }])],
      ];
      for (const [what, call] of calls) {
        const e = await call().then(() => null, (err: unknown) => err);
        expect(e instanceof StoreError ? e.code : e, what).toBe('unavailable');
      }
      const e = await openRedisStore({ url: redis.url, pepper, connectTimeoutMs: 300 }).then(() => null, (err: unknown) => err);
      expect((e as StoreError).code).toBe('unavailable');
      expect((e as Error).message).toContain(`127.0.0.1:${redis.port}`);
    } finally {
      await redis.restart();
      admin.disconnect();
      admin = new Redis(redis.url, { lazyConnect: true });
      await admin.connect();
    }
    // The restarted Redis is empty (no persistence in tests); the store reconnects by itself.
    let listed = null;
    for (let i = 0; i < 100 && listed === null; i++) {
      listed = await store.listConsumers().catch(() => null);
      if (listed === null) await new Promise((r) => setTimeout(r, 50));
    }
    expect(listed).toEqual({ items: [], nextCursor: null });
    await store.close();
  });
});
