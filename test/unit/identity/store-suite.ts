/**
 * The one test suite both identity stores pass (admin/identity/store/types.ts
 * is the contract). Run by store-sqlite.test.ts (a temp file) and
 * store-redis.test.ts (a private redis-server). Time is the store's clock,
 * moved by the tests (rotation grace, expiry), never waited for.
 */
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { checkKeyFormat, hashKey, parseKey } from '../../../common/identity/keys.js';
import {
  DEFAULT_GRACE_MS, MAX_TIME_MS, StoreError, keyVerdict,
  type ChangeRecord, type Consumer, type IdentityStore, type Page, type StoreErrorCode,
} from '../../../admin/identity/store/types.js';

export interface StoreHarness {
  /** A new store object over empty data, with this clock and pepper. */
  fresh(opts: { clock: () => number; pepper: Buffer }): Promise<IdentityStore>;
  /** A second store object over the same data as the last fresh() (a restart, or another instance). */
  reopen(opts: { clock: () => number; pepper: Buffer }): Promise<IdentityStore>;
  /** Every byte the backend holds for the last fresh() store, as latin1 text. */
  dump(): Promise<string>;
}

const T0 = 1_800_000_000_000;
const ctx = { actor: 'suite' };
const DAY = 24 * 3600 * 1000;

async function rejectsWith(p: Promise<unknown>, code: StoreErrorCode): Promise<StoreError> {
  const e = await p.then(() => null, (err: unknown) => err);
  expect(e, `expected StoreError ${code}`).toBeInstanceOf(StoreError);
  expect((e as StoreError).code).toBe(code);
  return e as StoreError;
}

/** Every item of a paged list, walking cursors with `limit`. */
async function walk<T extends { id: string }>(list: (q: { cursor: string | null; limit: number }) => Promise<{ items: T[]; nextCursor: string | null }>, limit: number): Promise<T[]> {
  const out: T[] = [];
  let cursor: string | null = null;
  for (let i = 0; i < 10_000; i++) {
    const page = await list({ cursor, limit });
    expect(page.items.length).toBeLessThanOrEqual(limit);
    out.push(...page.items);
    if (page.nextCursor === null) return out;
    cursor = page.nextCursor;
  }
  throw new Error('paging never ended');
}

export function storeSuite(name: string, harness: () => StoreHarness): void {
  describe(`identity store: ${name}`, () => {
    let now = T0;
    const clock = () => now;
    const pepper = randomBytes(32);
    let store: IdentityStore;
    let changes: ChangeRecord[];
    const extra: IdentityStore[] = [];

    beforeEach(async () => {
      now = T0;
      store = await harness().fresh({ clock, pepper });
      changes = [];
      store.onChange((c) => changes.push(c));
    });
    afterEach(async () => {
      await store.close();
      for (const s of extra.splice(0)) await s.close();
    });
    const reopen = async () => {
      const s = await harness().reopen({ clock, pepper });
      extra.push(s);
      return s;
    };

    describe('consumers', () => {
      it('create, get, update, list, delete', async () => {
        const { consumer } = await store.createConsumer({ name: 'Acme', tenant: 't1', plan: 'gold', metadata: { tier: 2, vip: true } }, ctx);
        expect(consumer).toMatchObject({ name: 'Acme', status: 'active', tenant: 't1', plan: 'gold', groups: [], metadata: { tier: 2, vip: true }, createdAt: T0, updatedAt: T0 });
        expect(consumer.id).toMatch(/^con_[0-9A-Z]{26}$/);
        expect(await store.getConsumer(consumer.id)).toEqual(consumer);
        now += 1000;
        const upd = await store.updateConsumer(consumer.id, { name: 'Acme Inc', plan: null, metadata: { a: 'b' } }, ctx);
        expect(upd).toEqual({ ...consumer, name: 'Acme Inc', plan: null, metadata: { a: 'b' }, updatedAt: T0 + 1000 });
        expect(await store.getConsumer(consumer.id)).toEqual(upd);
        expect((await store.listConsumers()).items).toEqual([upd]);
        const del = await store.deleteConsumer(consumer.id, ctx);
        expect(del.consumer).toEqual(upd);
        expect(await store.getConsumer(consumer.id)).toBeNull();
        expect((await store.listConsumers()).items).toEqual([]);
      });

      it('refuses bad input and missing records with stable codes', async () => {
        await store.createConsumer({ id: 'c1', name: 'one' }, ctx);
        const cases: Array<[string, () => Promise<unknown>, StoreErrorCode]> = [
          ['duplicate id', () => store.createConsumer({ id: 'c1', name: 'again' }, ctx), 'conflict'],
          ['bad id', () => store.createConsumer({ id: '-x', name: 'x' }, ctx), 'invalid'],
          ['id too long', () => store.createConsumer({ id: 'a'.repeat(129), name: 'x' }, ctx), 'invalid'],
          ['empty name', () => store.createConsumer({ name: '' }, ctx), 'invalid'],
          ['bad status', () => store.createConsumer({ name: 'x', status: 'paused' as never }, ctx), 'invalid'],
          ['unknown group', () => store.createConsumer({ name: 'x', groups: ['nope'] }, ctx), 'invalid'],
          ['update missing', () => store.updateConsumer('zz', { name: 'x' }, ctx), 'not_found'],
          ['update bad status', () => store.updateConsumer('c1', { status: 'gone' as never }, ctx), 'invalid'],
          ['delete missing', () => store.deleteConsumer('zz', ctx), 'not_found'],
          ['key for missing consumer', () => store.createKey('zz', { name: 'k' }, ctx), 'not_found'],
          ['rotate missing', () => store.rotateKey('zz', {}, ctx), 'not_found'],
          ['revoke missing', () => store.revokeKey('zz', ctx), 'not_found'],
          ['update missing key', () => store.updateKey('zz', { name: 'x' }, ctx), 'not_found'],
          ['grant to missing consumer', () => store.createGrant({ subject: { kind: 'consumer', id: 'zz' }, routeId: 'r' }, ctx), 'not_found'],
          ['grant to missing group', () => store.createGrant({ subject: { kind: 'group', id: 'zz' }, routeId: 'r' }, ctx), 'not_found'],
          ['grant bad method', () => store.createGrant({ subject: { kind: 'consumer', id: 'c1' }, routeId: 'r', methods: ['GET /'] }, ctx), 'invalid'],
          ['grant no methods', () => store.createGrant({ subject: { kind: 'consumer', id: 'c1' }, routeId: 'r', methods: [] }, ctx), 'invalid'],
          ['delete missing group', () => store.deleteGroup('zz', ctx), 'not_found'],
          ['delete missing grant', () => store.deleteGrant('zz', ctx), 'not_found'],
        ];
        for (const [what, call, code] of cases) {
          const e = await call().then(() => null, (err: unknown) => err);
          expect(e instanceof StoreError ? e.code : e, what).toBe(code);
        }
        expect((await store.listConsumers()).items.map((c) => c.id)).toEqual(['c1']);
      });
    });

    describe('keys', () => {
      it('createKey returns the plaintext once; the store keeps only its HMAC; lookup reads key and consumer together', async () => {
        const { consumer } = await store.createConsumer({ name: 'A', tenant: 't', plan: 'p' }, ctx);
        const { key, record } = await store.createKey(consumer.id, { name: 'ci', scopes: ['orders:read'], restrictions: { cidrs: ['10.0.0.0/8'] }, expiresAt: T0 + DAY }, ctx);
        expect(checkKeyFormat(key)).toBeNull();
        expect(parseKey(key)).toMatchObject({ ok: true, env: 'live' });
        expect(record).toEqual({
          id: record.id, consumerId: consumer.id, name: 'ci', hash: hashKey(pepper, key), prefix: key.slice(0, 12), scopes: ['orders:read'],
          restrictions: { cidrs: ['10.0.0.0/8'], timeWindows: [], origins: [] }, expiresAt: T0 + DAY, createdAt: T0, lastUsedAt: null,
          status: 'active', revokedAt: null, rotatedFrom: null, graceUntil: null, rotatedAt: null,
        });
        expect(JSON.stringify(record)).not.toContain(parseKey(key).ok ? (parseKey(key) as { random: string }).random : key);
        expect(await store.getKey(record.id)).toEqual(record);
        const l = await store.lookupKey(record.hash);
        expect(l).toEqual({ key: record, consumer: { id: consumer.id, name: 'A', status: 'active', tenant: 't', plan: 'p', groups: [] } });
        expect(keyVerdict(l!, now)).toBe('ok');
        expect(keyVerdict(l!, T0 + DAY)).toBe('key_expired');
        expect(await store.lookupKey(hashKey(pepper, key + 'x'))).toBeNull();
        expect(await store.lookupKey(hashKey(randomBytes(32), key))).toBeNull(); // another pepper: another hash
        const upd = await store.updateKey(record.id, { name: 'ci2', scopes: [], expiresAt: null }, ctx);
        expect(upd).toEqual({ ...record, name: 'ci2', scopes: [], expiresAt: null });
        expect((await store.lookupKey(record.hash))!.key).toEqual(upd);
      });

      it('many keys created concurrently are all distinct and all found', async () => {
        const { consumer } = await store.createConsumer({ name: 'A' }, ctx);
        const made = await Promise.all(Array.from({ length: 40 }, (_, i) => store.createKey(consumer.id, { name: `k${i}` }, ctx)));
        expect(new Set(made.map((m) => m.key)).size).toBe(40);
        expect(new Set(made.map((m) => m.record.id)).size).toBe(40);
        for (const m of made) expect((await store.lookupKey(m.record.hash))?.key.id).toBe(m.record.id);
        expect((await walk((q) => store.listKeys({ ...q, consumerId: consumer.id }), 7)).length).toBe(40);
      });

      it('suspending or revoking a consumer fails all its key lookups at once; the change lists every key hash', async () => {
        const { consumer, keys } = await store.createConsumer({ name: 'A', keys: [{ name: 'k1' }, { name: 'k2' }] }, ctx);
        const { keys: [other] } = await store.createConsumer({ name: 'B', keys: [{ name: 'b1' }] }, ctx);
        const verdicts = async () => Promise.all([...keys, other!].map(async (k) => keyVerdict((await store.lookupKey(k.record.hash))!, now)));
        expect(await verdicts()).toEqual(['ok', 'ok', 'ok']);
        changes.length = 0;
        await store.updateConsumer(consumer.id, { status: 'suspended' }, ctx);
        expect(await verdicts()).toEqual(['consumer_suspended', 'consumer_suspended', 'ok']);
        expect(changes).toHaveLength(1);
        expect(changes[0]).toMatchObject({ kind: 'consumer', op: 'update', ids: [consumer.id] });
        expect([...changes[0]!.keyHashes].sort()).toEqual(keys.map((k) => k.record.hash).sort());
        await store.updateConsumer(consumer.id, { status: 'active' }, ctx);
        expect(await verdicts()).toEqual(['ok', 'ok', 'ok']);
        await store.updateConsumer(consumer.id, { status: 'revoked' }, ctx);
        expect(await verdicts()).toEqual(['key_revoked', 'key_revoked', 'ok']);
        // ... and that survives a restart (another store object over the same data).
        const again = await reopen();
        expect(keyVerdict((await again.lookupKey(keys[0]!.record.hash))!, now)).toBe('key_revoked');
      });

      it('deleting a consumer removes its keys and grants', async () => {
        const { consumer, keys } = await store.createConsumer({ id: 'c1', name: 'A', keys: [{ name: 'k1' }, { name: 'k2' }] }, ctx);
        const grant = await store.createGrant({ subject: { kind: 'consumer', id: 'c1' }, routeId: 'orders', methods: ['get'] }, ctx);
        changes.length = 0;
        const del = await store.deleteConsumer('c1', ctx);
        expect(del.keys.map((k) => k.id).sort()).toEqual(keys.map((k) => k.record.id).sort());
        expect(del.grants).toEqual([grant]);
        for (const k of keys) {
          expect(await store.lookupKey(k.record.hash)).toBeNull();
          expect(await store.getKey(k.record.id)).toBeNull();
        }
        expect(await store.getGrant(grant.id)).toBeNull();
        expect((await store.listKeys()).items).toEqual([]);
        expect((await store.listGrants()).items).toEqual([]);
        expect(changes.find((c) => c.kind === 'consumer')!.keyHashes.sort()).toEqual(keys.map((k) => k.record.hash).sort());
        expect(consumer.id).toBe('c1');
      });

      it('rotation: a new key at once; the old one works until the grace ends, then is expired', async () => {
        const { keys: [old] } = await store.createConsumer({ name: 'A', keys: [{ name: 'ci', scopes: ['s'], expiresAt: T0 + 100 * DAY }] }, ctx);
        changes.length = 0;
        now += 1000;
        const rot = await store.rotateKey(old!.record.id, { graceMs: 7 * DAY }, ctx);
        expect(rot.key).not.toBe(old!.key);
        expect(checkKeyFormat(rot.key)).toBeNull();
        expect(rot.record).toMatchObject({ consumerId: old!.record.consumerId, name: 'ci', scopes: ['s'], expiresAt: T0 + 100 * DAY, rotatedFrom: old!.record.id, graceUntil: null, rotatedAt: null, createdAt: now });
        expect(rot.old).toEqual({ ...old!.record, graceUntil: now + 7 * DAY, rotatedAt: now });
        expect(changes.map((c) => [c.kind, c.op, c.keyHashes])).toEqual([['key', 'update', [old!.record.hash]], ['key', 'create', [rot.record.hash]]]);
        const oldL = (await store.lookupKey(old!.record.hash))!;
        expect(oldL.key.graceUntil).toBe(now + 7 * DAY);
        // When it was rotated is kept (the Deprecation date): the same on every read, later and after a restart.
        const rotatedAt = now;
        expect(oldL.key.rotatedAt).toBe(rotatedAt);
        now += 5000;
        expect((await store.getKey(old!.record.id))!.rotatedAt).toBe(rotatedAt);
        expect((await (await reopen()).lookupKey(old!.record.hash))!.key.rotatedAt).toBe(rotatedAt);
        expect((await walk((q) => store.listKeys(q), 10)).find((k) => k.id === old!.record.id)!.rotatedAt).toBe(rotatedAt);
        now -= 5000;
        expect(keyVerdict(oldL, now + 7 * DAY - 1)).toBe('ok');
        expect(keyVerdict(oldL, now + 7 * DAY)).toBe('key_expired');
        expect(keyVerdict((await store.lookupKey(rot.record.hash))!, now + 7 * DAY)).toBe('ok');
        await rejectsWith(store.rotateKey(old!.record.id, {}, ctx), 'conflict'); // already rotated
        await rejectsWith(store.rotateKey(rot.record.id, { graceMs: -1 }, ctx), 'invalid');
        const rot2 = await store.rotateKey(rot.record.id, {}, ctx);
        expect(rot2.old.graceUntil).toBe(now + DEFAULT_GRACE_MS);
        const rot3 = await store.rotateKey(rot2.record.id, { graceMs: 0 }, ctx);
        expect(keyVerdict((await store.lookupKey(rot3.old.hash))!, now)).toBe('key_expired');
      });

      it('revoke: immediate, idempotent, audited once, announced, kept across a restart', async () => {
        const { keys: [k] } = await store.createConsumer({ name: 'A', keys: [{ name: 'ci' }] }, ctx);
        changes.length = 0;
        now += 5;
        const r = await store.revokeKey(k!.record.id, ctx);
        expect(r).toEqual({ ...k!.record, status: 'revoked', revokedAt: now });
        expect(changes).toEqual([{ kind: 'key', op: 'update', ids: [k!.record.id], keyHashes: [k!.record.hash], at: now }]);
        expect(keyVerdict((await store.lookupKey(k!.record.hash))!, now)).toBe('key_revoked');
        const again = await store.revokeKey(k!.record.id, { actor: 'other' });
        expect(again).toEqual(r);
        const audit = await walk((q) => store.listAudit(q), 100);
        expect(audit.filter((a) => a.action === 'key.revoke')).toHaveLength(1);
        await rejectsWith(store.rotateKey(k!.record.id, {}, ctx), 'conflict');
        const other = await reopen();
        expect(keyVerdict((await other.lookupKey(k!.record.hash))!, now)).toBe('key_revoked');
      });

      it('purgeExpired removes keys past expiry or grace (and old revoked ones when asked) and returns them', async () => {
        const { keys } = await store.createConsumer({
          name: 'A',
          keys: [{ id: 'k-exp', name: 'e', expiresAt: T0 + 10 }, { id: 'k-live', name: 'l', expiresAt: T0 + DAY }, { id: 'k-forever', name: 'f' }, { id: 'k-rev', name: 'r' }, { id: 'k-rot', name: 'o' }],
        }, ctx);
        const byId = new Map(keys.map((k) => [k.record.id, k.record]));
        const rot = await store.rotateKey('k-rot', { graceMs: 20 }, ctx);
        await store.revokeKey('k-rev', ctx);
        changes.length = 0;
        expect(await store.purgeExpired(T0 + 9, ctx)).toEqual([]);
        const removed = await store.purgeExpired(T0 + 20, { actor: 'scheduler' });
        expect(removed.map((k) => k.id)).toEqual(['k-exp', 'k-rot']);
        expect(removed[0]).toEqual(byId.get('k-exp'));
        for (const id of ['k-exp', 'k-rot']) expect(await store.getKey(id)).toBeNull();
        expect(await store.lookupKey(byId.get('k-exp')!.hash)).toBeNull();
        expect(changes).toEqual([{ kind: 'key', op: 'delete', ids: ['k-exp', 'k-rot'], keyHashes: [byId.get('k-exp')!.hash, byId.get('k-rot')!.hash], at: T0 + 20 }]);
        const audit = (await walk((q) => store.listAudit(q), 50)).filter((a) => a.action === 'key.purge');
        expect(audit).toHaveLength(1);
        expect(audit[0]).toMatchObject({ actor: 'scheduler', summary: { count: 2 } });
        expect(await store.purgeExpired(T0 + 20, ctx, { revokedBefore: T0 })).toEqual([]); // revoked at T0: not before T0
        expect((await store.purgeExpired(T0 + 20, ctx, { revokedBefore: T0 + 1 })).map((k) => k.id)).toEqual(['k-rev']);
        expect((await walk((q) => store.listKeys(q), 2)).map((k) => k.id).sort()).toEqual(['k-forever', 'k-live', rot.record.id].sort());
      });

      it('touchKeys: one call for many keys, lastUsedAt only moves forward, unknown ids ignored', async () => {
        const { keys } = await store.createConsumer({ name: 'A', keys: Array.from({ length: 30 }, (_, i) => ({ id: `k${String(i).padStart(2, '0')}`, name: `k${i}` })) }, ctx);
        changes.length = 0;
        const batch = keys.map((k, i) => ({ id: k.record.id, at: T0 + 1000 + i }));
        expect(await store.touchKeys([...batch, { id: 'missing', at: T0 }])).toBe(30);
        expect(await store.touchKeys([{ id: 'k00', at: T0 + 1 }, { id: 'k01', at: T0 + 5000 }])).toBe(2);
        const all = await walk((q) => store.listKeys(q), 1000);
        expect(all.map((k) => k.lastUsedAt)).toEqual(keys.map((_, i) => (i === 1 ? T0 + 5000 : T0 + 1000 + i)));
        expect((await store.lookupKey(keys[0]!.record.hash))!.key.lastUsedAt).toBe(T0 + 1000);
        expect(await store.touchKeys([])).toBe(0);
        for (const bad of [[{ id: 'k00', at: Number.NaN }], [{ id: 'k00', at: 1.5 }], [{ id: 'k00', at: -1 }], [{ id: 5, at: 1 }], Array.from({ length: 10_001 }, () => ({ id: 'k00', at: 1 }))]) {
          await rejectsWith(store.touchKeys(bad as never), 'invalid');
        }
        expect(changes).toEqual([]);
        expect((await walk((q) => store.listAudit(q), 100)).filter((a) => a.action.startsWith('key.') && a.action !== 'key.create')).toEqual([]);
      });
    });

    describe('revoked is final', () => {
      it('a revoked consumer cannot become active or suspended again (conflict); its keys stay revoked; suspended <-> active stays reversible', async () => {
        const { consumer, keys } = await store.createConsumer({ id: 'c-rev', name: 'A', keys: [{ name: 'k1' }, { name: 'k2' }] }, ctx);
        const verdicts = async (s: IdentityStore = store) => Promise.all(keys.map(async (k) => keyVerdict((await s.lookupKey(k.record.hash))!, now)));
        expect((await store.updateConsumer(consumer.id, { status: 'suspended' }, ctx)).status).toBe('suspended');
        expect((await store.updateConsumer(consumer.id, { status: 'active' }, ctx)).status).toBe('active');
        expect(await verdicts()).toEqual(['ok', 'ok']);
        await store.updateConsumer(consumer.id, { status: 'revoked' }, ctx);
        const auditBefore = await walk((q) => store.listAudit(q), 1000);
        changes.length = 0;
        for (const to of ['active', 'suspended'] as const) {
          const e = await rejectsWith(store.updateConsumer(consumer.id, { status: to }, ctx), 'conflict');
          expect(e.message).toMatch(/revoked is final/);
          expect(e.message).toMatch(/create a new consumer/);
          expect(e.message).toMatch(/suspended for a reversible stop/);
          // ... even hidden among other changes: nothing of the patch is written.
          await rejectsWith(store.updateConsumer(consumer.id, { name: 'renamed', status: to }, ctx), 'conflict');
        }
        expect(changes).toEqual([]);
        expect(await walk((q) => store.listAudit(q), 1000)).toEqual(auditBefore);
        expect(await store.getConsumer(consumer.id)).toMatchObject({ name: 'A', status: 'revoked' });
        expect(await verdicts()).toEqual(['key_revoked', 'key_revoked']);
        // Staying revoked and other fields still change.
        expect(await store.updateConsumer(consumer.id, { status: 'revoked', name: 'A (gone)' }, ctx)).toMatchObject({ status: 'revoked', name: 'A (gone)' });
        // No new key for it (it could never work), no rotation either.
        expect((await rejectsWith(store.createKey(consumer.id, { name: 'k3' }, ctx), 'conflict')).message).toMatch(/revoked/);
        expect((await rejectsWith(store.rotateKey(keys[0]!.record.id, {}, ctx), 'conflict')).message).toMatch(/revoked/);
        expect((await store.listKeys({ consumerId: consumer.id })).items).toHaveLength(2);
        // Another store object over the same data (a restart, another instance) refuses too.
        const other = await reopen();
        await rejectsWith(other.updateConsumer(consumer.id, { status: 'active' }, ctx), 'conflict');
        expect(await verdicts(other)).toEqual(['key_revoked', 'key_revoked']);
      });

      it('a consumer created revoked cannot have keys (conflict, as a key added to a revoked consumer; nothing written); without keys it is created', async () => {
        const auditBefore = await walk((q) => store.listAudit(q), 1000);
        const e = await rejectsWith(store.createConsumer({ id: 'dead', name: 'D', status: 'revoked', keys: [{ name: 'k' }] }, ctx), 'conflict');
        const { consumer: other } = await store.createConsumer({ name: 'R', status: 'revoked' }, ctx);
        const added = await rejectsWith(store.createKey(other.id, { name: 'k' }, ctx), 'conflict');
        expect(e.message).toBe(added.message.replace(other.id, 'dead'));
        expect(await store.getConsumer('dead')).toBeNull();
        expect((await walk((q) => store.listKeys(q), 100))).toEqual([]);
        expect((await walk((q) => store.listAudit(q), 1000)).length).toBe(auditBefore.length + 1); // R's creation only
        expect(other.status).toBe('revoked');
        expect((await store.createConsumer({ name: 'E', status: 'revoked', keys: [] }, ctx)).keys).toEqual([]);
      });

      it('a revoked key stays revoked: no update, rotation or re-revoke makes it active', async () => {
        const { keys: [k] } = await store.createConsumer({ name: 'A', keys: [{ name: 'ci' }] }, ctx);
        const r = await store.revokeKey(k!.record.id, ctx);
        // A patch smuggling a status (not part of KeyPatch) is ignored; the other fields change.
        const u = await store.updateKey(k!.record.id, { name: 'renamed', expiresAt: T0 + DAY, status: 'active', revokedAt: null } as never, ctx);
        expect(u).toMatchObject({ name: 'renamed', status: 'revoked', revokedAt: r.revokedAt });
        await rejectsWith(store.rotateKey(k!.record.id, {}, ctx), 'conflict');
        expect(await store.revokeKey(k!.record.id, ctx)).toMatchObject({ status: 'revoked', revokedAt: r.revokedAt });
        expect(await store.getKey(k!.record.id)).toMatchObject({ status: 'revoked', revokedAt: r.revokedAt });
        expect(keyVerdict((await store.lookupKey(k!.record.hash))!, now)).toBe('key_revoked');
      });
    });

    describe('time bounds', () => {
      it('expiresAt and the rotation grace: whole ms, 0..MAX_TIME_MS (9999-12-31T23:59:59.999Z), else invalid with nothing written', async () => {
        expect(MAX_TIME_MS).toBe(Date.UTC(9999, 11, 31, 23, 59, 59, 999));
        const { consumer } = await store.createConsumer({ id: 'c1', name: 'A' }, ctx);
        const ok = await store.createKey(consumer.id, { name: 'max', expiresAt: MAX_TIME_MS }, ctx);
        expect(ok.record.expiresAt).toBe(MAX_TIME_MS);
        expect(new Date(ok.record.expiresAt!).toISOString()).toBe('9999-12-31T23:59:59.999Z');
        const auditBefore = await walk((q) => store.listAudit(q), 1000);
        for (const bad of [1e20, 8_640_000_000_000_001, MAX_TIME_MS + 1, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
          const e = await rejectsWith(store.createKey(consumer.id, { name: 'k', expiresAt: bad }, ctx), 'invalid');
          expect(e.message).toMatch(/^expiresAt /);
          await rejectsWith(store.updateKey(ok.record.id, { expiresAt: bad }, ctx), 'invalid');
          await rejectsWith(store.createConsumer({ id: 'c2', name: 'B', keys: [{ name: 'k', expiresAt: bad }] }, ctx), 'invalid');
        }
        expect(await store.getConsumer('c2')).toBeNull();
        expect((await store.listKeys()).items.map((k) => k.id)).toEqual([ok.record.id]);
        expect((await store.getKey(ok.record.id))!.expiresAt).toBe(MAX_TIME_MS);
        expect(await walk((q) => store.listAudit(q), 1000)).toEqual(auditBefore);
        await rejectsWith(store.rotateKey(ok.record.id, { graceMs: MAX_TIME_MS }, ctx), 'invalid');
        await rejectsWith(store.rotateKey(ok.record.id, { graceMs: Number.POSITIVE_INFINITY }, ctx), 'invalid');
        expect((await store.getKey(ok.record.id))!.graceUntil).toBeNull();
        expect((await store.rotateKey(ok.record.id, { graceMs: MAX_TIME_MS - now }, ctx)).old.graceUntil).toBe(MAX_TIME_MS);
      });
    });

    describe('paging', () => {
      it('limits 1..1000 and only cursors the store made', async () => {
        for (const limit of [0, -1, 1001, 1.5, Number.NaN]) await rejectsWith(store.listConsumers({ limit }), 'invalid');
        for (const cursor of ['x', 'Zm9v', '!!', Buffer.from('c1:../..').toString('base64url'), 'a'.repeat(1000)]) await rejectsWith(store.listConsumers({ cursor }), 'bad_cursor');
        expect((await store.listConsumers({ limit: 1000 })).nextCursor).toBeNull();
        expect((await store.listConsumers({ limit: 1, cursor: '' })).items).toEqual([]);
      });

      it('each list pages every record exactly once, for page sizes 1, 7 and 1000', async () => {
        await store.createGroup({ id: 'g1', name: 'g' }, ctx);
        for (let i = 0; i < 23; i++) {
          const { consumer } = await store.createConsumer({ name: `c${i}`, tenant: i % 2 ? 'odd' : 'even', groups: i % 3 ? [] : ['g1'], keys: [{ name: 'a' }, { name: 'b' }] }, ctx);
          await store.createGrant({ subject: { kind: 'consumer', id: consumer.id }, routeId: 'r' }, ctx);
        }
        for (const limit of [1, 7, 1000]) {
          const lists: Array<[string, () => Promise<{ id: string }[]>, number]> = [
            ['consumers', () => walk((q) => store.listConsumers(q), limit), 23],
            ['consumers of a tenant', () => walk((q) => store.listConsumers({ ...q, tenant: 'odd' }), limit), 11],
            ['keys', () => walk((q) => store.listKeys(q), limit), 46],
            ['groups', () => walk((q) => store.listGroups(q), limit), 1],
            ['grants', () => walk((q) => store.listGrants(q), limit), 23],
            ['audit', () => walk((q) => store.listAudit(q), limit), 1 + 23 + 23],
          ];
          for (const [what, list, n] of lists) {
            const ids = (await list()).map((x) => x.id);
            expect(ids.length, `${what} @${limit}`).toBe(n);
            expect(new Set(ids).size, `${what} @${limit}`).toBe(n);
            expect(ids, `${what} sorted`).toEqual([...ids].sort());
          }
        }
      });

      it('concurrent inserts while paging: every record present from the start is seen exactly once', async () => {
        const pad = (i: number) => String(i).padStart(4, '0');
        const initial: string[] = [];
        for (let i = 0; i < 300; i += 2) {
          initial.push(`c-${pad(i)}`);
          await store.createConsumer({ id: `c-${pad(i)}`, name: 'x' }, ctx);
        }
        const seen: string[] = [];
        let cursor: string | null = null;
        let n = 1;
        for (;;) {
          // Writers race the reader: inserts before and after the cursor, between and during page reads.
          const page: Promise<Page<Consumer>> = store.listConsumers({ cursor, limit: 9 });
          const inserts: Promise<unknown> = Promise.all([
            store.createConsumer({ id: `c-${pad(n)}`, name: 'late' }, ctx),
            store.createConsumer({ id: `c-${pad(300 - n)}`, name: 'late' }, ctx),
            // behind the cursor once there is one
            cursor === null ? null : store.createConsumer({ id: `b-${pad(n)}`, name: 'before all' }, ctx),
            store.createConsumer({ id: `d-${pad(n)}`, name: 'after all' }, ctx),
          ]);
          const [p]: [Page<Consumer>, unknown] = await Promise.all([page, inserts]);
          n += 2;
          seen.push(...p.items.map((c) => c.id));
          if (p.nextCursor === null) break;
          cursor = p.nextCursor;
        }
        expect(new Set(seen).size).toBe(seen.length); // nothing twice
        const seenSet = new Set(seen);
        expect(initial.filter((id) => !seenSet.has(id))).toEqual([]); // nothing present from the start missed
        expect(seen).toEqual([...seen].sort());
        expect(seen.some((id) => id.startsWith('d-'))).toBe(true); // inserted ahead of the cursor: seen
        expect(seen.some((id) => id.startsWith('b-'))).toBe(false); // inserted behind it: not
      });
    });

    describe('groups and grants', () => {
      it('grants to a consumer and to its groups; deleting a group removes its grants and memberships', async () => {
        await store.createGroup({ id: 'ops', name: 'Ops', description: 'operators' }, ctx);
        await store.createGroup({ id: 'dev', name: 'Dev' }, ctx);
        const { consumer, keys: [k] } = await store.createConsumer({ id: 'c1', name: 'A', groups: ['ops', 'dev', 'ops'], keys: [{ name: 'k' }] }, ctx);
        expect(consumer.groups).toEqual(['dev', 'ops']);
        expect((await store.lookupKey(k!.record.hash))!.consumer.groups).toEqual(['dev', 'ops']);
        const g1 = await store.createGrant({ subject: { kind: 'consumer', id: 'c1' }, routeId: 'orders', methods: ['get', 'POST', 'GET'] }, ctx);
        const g2 = await store.createGrant({ subject: { kind: 'group', id: 'ops' }, routeId: 'admin', methods: ['GET', '*'] }, ctx);
        const g3 = await store.createGrant({ subject: { kind: 'group', id: 'dev' }, routeId: 'docs' }, ctx);
        await store.createConsumer({ id: 'c2', name: 'B' }, ctx);
        await store.createGrant({ subject: { kind: 'consumer', id: 'c2' }, routeId: 'orders' }, ctx);
        expect(g1.methods).toEqual(['GET', 'POST']);
        expect(g2.methods).toEqual(['*']);
        expect(g3.methods).toEqual(['*']);
        expect(await store.getGrant(g1.id)).toEqual(g1);
        expect((await store.grantsForConsumer('c1')).map((g) => g.id).sort()).toEqual([g1.id, g2.id, g3.id].sort());
        expect((await store.listGrants({ subject: { kind: 'group', id: 'ops' } })).items).toEqual([g2]);
        expect(await store.updateGroup('ops', { name: 'Operators' }, ctx)).toMatchObject({ name: 'Operators', description: 'operators' });
        changes.length = 0;
        const del = await store.deleteGroup('ops', ctx);
        expect(del).toMatchObject({ grants: [g2], members: ['c1'] });
        expect(await store.getGroup('ops')).toBeNull();
        expect(await store.getGrant(g2.id)).toBeNull();
        expect((await store.getConsumer('c1'))!.groups).toEqual(['dev']);
        expect((await store.lookupKey(k!.record.hash))!.consumer.groups).toEqual(['dev']);
        expect((await store.grantsForConsumer('c1')).map((g) => g.id).sort()).toEqual([g1.id, g3.id].sort());
        expect(changes.find((c) => c.kind === 'consumer')?.keyHashes).toEqual([k!.record.hash]);
        // Re-creating the group does not bring the membership back.
        await store.createGroup({ id: 'ops', name: 'Ops again' }, ctx);
        expect((await store.grantsForConsumer('c1')).map((g) => g.id).sort()).toEqual([g1.id, g3.id].sort());
        await store.updateConsumer('c1', { groups: [] }, ctx);
        expect((await store.grantsForConsumer('c1')).map((g) => g.id)).toEqual([g1.id]);
        expect(await store.deleteGrant(g1.id, ctx)).toEqual(g1);
        expect(await store.grantsForConsumer('c1')).toEqual([]);
      });
    });

    describe('atomicity', () => {
      it('a duplicate key id inside a consumer-with-keys write leaves nothing behind', async () => {
        await store.createConsumer({ id: 'c0', name: 'first', keys: [{ id: 'taken', name: 'k' }] }, ctx);
        await store.createGroup({ id: 'g', name: 'g' }, ctx);
        const auditBefore = await walk((q) => store.listAudit(q), 1000);
        const keysBefore = await walk((q) => store.listKeys(q), 1000);
        changes.length = 0;
        await rejectsWith(store.createConsumer({ id: 'c1', name: 'second', groups: ['g'], keys: [{ id: 'fresh', name: 'a' }, { id: 'taken', name: 'b' }] }, ctx), 'conflict');
        await rejectsWith(store.createConsumer({ id: 'c1', name: 'second', keys: [{ id: 'fresh', name: 'a' }, { name: '' }] }, ctx), 'invalid');
        await rejectsWith(store.createConsumer({ id: 'c1', name: 'second', groups: ['g', 'missing'], keys: [{ id: 'fresh', name: 'a' }] }, ctx), 'invalid');
        await rejectsWith(store.createKey('c0', { id: 'taken', name: 'dup' }, ctx), 'conflict');
        expect(await store.getConsumer('c1')).toBeNull();
        expect(await store.getKey('fresh')).toBeNull();
        expect(await walk((q) => store.listKeys(q), 1000)).toEqual(keysBefore);
        expect(await walk((q) => store.listAudit(q), 1000)).toEqual(auditBefore);
        expect((await store.listKeys({ consumerId: 'c1' })).items).toEqual([]);
        await store.deleteGroup('g', ctx); // no member left behind by the failed writes
        expect(changes.filter((c) => c.kind !== 'group')).toEqual([]);
        // The same write with a fresh id succeeds whole.
        const ok = await store.createConsumer({ id: 'c1', name: 'second', keys: [{ id: 'fresh', name: 'a' }, { id: 'other', name: 'b' }] }, ctx);
        expect(ok.keys.map((k) => k.record.id)).toEqual(['fresh', 'other']);
      });
    });

    describe('racing writers (two store objects over the same data)', () => {
      it('keys created while their consumer is deleted, grants while their group is deleted: nothing is left orphaned', async () => {
        const other = await reopen();
        for (let round = 0; round < 5; round++) {
          await store.createGroup({ id: `g${round}`, name: 'g' }, ctx);
          await store.createConsumer({ id: `c${round}`, name: 'A', groups: [`g${round}`] }, ctx);
          const creations = Array.from({ length: 12 }, (_, i) => (i % 2 ? store : other).createKey(`c${round}`, { name: `k${i}` }, ctx).then((k) => k, (e: unknown) => e));
          const grants = Array.from({ length: 12 }, (_, i) => (i % 2 ? other : store).createGrant({ subject: { kind: 'group', id: `g${round}` }, routeId: `r${i}` }, ctx).then((g) => g, (e: unknown) => e));
          const deletions = [other.deleteConsumer(`c${round}`, ctx), store.deleteGroup(`g${round}`, ctx)];
          const settled = await Promise.all([...creations, ...grants, ...deletions]);
          for (const r of settled) if (r instanceof Error) expect((r as StoreError).code, String(r)).toBe('not_found');
          const made = settled.slice(0, 12).filter((r) => !(r instanceof Error)) as Array<{ record: { hash: string } }>;
          for (const m of made) expect(await store.lookupKey(m.record.hash)).toBeNull();
        }
        const keys = await walk((q) => store.listKeys(q), 1000);
        const grants = await walk((q) => store.listGrants(q), 1000);
        expect(keys).toEqual([]);
        expect(grants).toEqual([]);
        for (let round = 0; round < 5; round++) {
          expect((await other.listKeys({ consumerId: `c${round}` })).items).toEqual([]);
          expect((await other.listGrants({ subject: { kind: 'group', id: `g${round}` } })).items).toEqual([]);
        }
      });
    });

    describe('audit and change feed', () => {
      it('every write is audited with its actor; summaries never hold a key or its hash', async () => {
        await store.createGroup({ id: 'g', name: 'g' }, { actor: 'alice' });
        const { keys: [k] } = await store.createConsumer({ id: 'c', name: 'A', groups: ['g'], keys: [{ name: 'k' }] }, { actor: 'bob' });
        await store.createKey('c', { name: 'k2' }, { actor: 'bob' });
        const rot = await store.rotateKey(k!.record.id, {}, { actor: 'carol' });
        await store.revokeKey(rot.record.id, { actor: 'carol' });
        await store.updateKey(k!.record.id, { name: 'renamed' }, { actor: 'carol' });
        await store.updateConsumer('c', { status: 'suspended' }, { actor: 'dave' });
        const gr = await store.createGrant({ subject: { kind: 'group', id: 'g' }, routeId: 'r' }, { actor: 'erin' });
        await store.deleteGrant(gr.id, { actor: 'erin' });
        await store.updateGroup('g', { description: 'd' }, { actor: 'erin' });
        await store.deleteGroup('g', { actor: 'erin' });
        await store.deleteConsumer('c', { actor: 'frank' });
        const audit = await walk((q) => store.listAudit(q), 1000);
        expect(audit.map((a) => [a.actor, a.action]).sort()).toEqual([
          ['alice', 'group.create'], ['bob', 'consumer.create'], ['bob', 'key.create'], ['carol', 'key.rotate'], ['carol', 'key.revoke'], ['carol', 'key.update'],
          ['dave', 'consumer.update'], ['erin', 'grant.create'], ['erin', 'grant.delete'], ['erin', 'group.update'], ['erin', 'group.delete'], ['frank', 'consumer.delete'],
        ].sort());
        const text = JSON.stringify(audit);
        for (const secret of [k!.key, k!.record.hash, rot.key, rot.record.hash]) expect(text).not.toContain(secret);
        expect(text).toContain(k!.record.prefix); // the display prefix is what names a key
        expect(audit.find((a) => a.action === 'consumer.update')!.summary).toEqual({ changed: ['status'], status: { from: 'active', to: 'suspended' } });
        expect(audit.every((a) => a.at === T0)).toBe(true);
      });

      it('listeners get each committed write; unsubscribe works; a throwing listener breaks nothing', async () => {
        const seen: string[] = [];
        const off = store.onChange((c) => seen.push(`${c.kind}.${c.op}`));
        store.onChange(() => { throw new Error('listener bug'); });
        const { consumer } = await store.createConsumer({ name: 'A' }, ctx);
        await rejectsWith(store.createConsumer({ id: consumer.id, name: 'dup' }, ctx), 'conflict');
        off();
        await store.updateConsumer(consumer.id, { name: 'B' }, ctx);
        expect(seen).toEqual(['consumer.create']);
        expect(changes.map((c) => `${c.kind}.${c.op}`)).toEqual(['consumer.create', 'consumer.update']);
      });
    });

    describe('dump', () => {
      it('the stored bytes hold no plaintext key (nor its random part), only what may be shown', async () => {
        const plain: string[] = [];
        await store.createGroup({ id: 'g', name: 'g' }, ctx);
        for (let i = 0; i < 5; i++) {
          const { keys } = await store.createConsumer({ name: `consumer-${i}-marker`, groups: ['g'], keys: [{ name: 'a' }, { name: 'b' }] }, ctx);
          plain.push(...keys.map((k) => k.key));
          const rot = await store.rotateKey(keys[0]!.record.id, {}, ctx);
          plain.push(rot.key);
          await store.revokeKey(keys[1]!.record.id, ctx);
          await store.touchKeys([{ id: rot.record.id, at: now }]);
        }
        const dump = await harness().dump();
        expect(dump).toContain('consumer-4-marker'); // the dump does hold the store's data
        for (const key of plain) {
          const p = parseKey(key);
          if (!p.ok) throw new Error('bad key');
          expect(dump).not.toContain(key);
          expect(dump).not.toContain(p.random);
          expect(dump).not.toContain(p.random.slice(4, 24)); // nor a long piece of it
        }
      });
    });
  });
}
