/**
 * The identity store suite on the SQLite store (better-sqlite3), over a file
 * in a fresh temp directory per test; plus what only SQLite has: the file's
 * mode, WAL, the schema version table and refusing a newer schema.
 */
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { MIGRATIONS, SCHEMA_VERSION, openSqliteStore } from '../../../admin/identity/store/sqlite.js';
import { StoreError, pepperCheck } from '../../../admin/identity/store/types.js';
import { hashKey } from '../../../common/identity/keys.js';
import { storeSuite } from './store-suite.js';

const root = mkdtempSync(join(tmpdir(), 'turnpike-idstore-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
let dir = '';

storeSuite('sqlite', () => ({
  async fresh(opts) {
    dir = join(root, `t${n++}`);
    return openSqliteStore({ path: join(dir, 'sub', 'turnpike.db'), ...opts });
  },
  async reopen(opts) {
    return openSqliteStore({ path: join(dir, 'sub', 'turnpike.db'), ...opts });
  },
  async dump() {
    // The database file and its WAL (and shm), byte for byte.
    const sub = join(dir, 'sub');
    return readdirSync(sub).map((f) => readFileSync(join(sub, f)).toString('latin1')).join('\n');
  },
}));

describe('sqlite store: file, WAL, migrations', () => {
  const pepper = randomBytes(32);

  it('creates the file 0600 in a 0700 directory, in WAL mode, at the current schema version', async () => {
    const d = join(root, 'file');
    const path = join(d, 'nested', 'id.db');
    const store = await openSqliteStore({ path, pepper });
    await store.createConsumer({ name: 'x' }, { actor: 't' });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(join(d, 'nested')).mode & 0o777).toBe(0o700);
    expect(statSync(path + '-wal').mode & 0o777).toBe(0o600);
    const Database = createRequire(import.meta.url)('better-sqlite3');
    const db = new Database(path, { readonly: true });
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(db.prepare('SELECT version FROM schema_version ORDER BY version').all()).toEqual(MIGRATIONS.map((_, i) => ({ version: i + 1 })));
    db.close();
    await store.close();
    // Opening again applies nothing twice.
    const again = await openSqliteStore({ path, pepper });
    expect((await again.listConsumers()).items).toHaveLength(1);
    await again.close();
    expect(SCHEMA_VERSION).toBe(2);
  });

  it('refuses a file written by a newer schema, and leaves it untouched', async () => {
    const path = join(root, 'newer', 'id.db');
    (await openSqliteStore({ path, pepper })).close();
    const Database = createRequire(import.meta.url)('better-sqlite3');
    const db = new Database(path);
    db.prepare('INSERT INTO schema_version (version, applied_at) VALUES (?, ?)').run(SCHEMA_VERSION + 1, 0);
    db.close();
    const before = readFileSync(path);
    const e = await openSqliteStore({ path, pepper }).then(() => null, (err: unknown) => err);
    expect(e).toBeInstanceOf(StoreError);
    expect((e as StoreError).code).toBe('schema');
    expect((e as Error).message).toMatch(/newer than this Turnpike knows.*upgrade/);
    expect(readFileSync(path).equals(before)).toBe(true);
  });

  it('a path that cannot be a database is refused with the path in the message', async () => {
    const path = join(root, 'garbage.db');
    writeFileSync(path, 'this is not a sqlite file, not at all'.repeat(200));
    const e = await openSqliteStore({ path, pepper }).then(() => null, (err: unknown) => err);
    expect(e).toBeInstanceOf(StoreError);
    expect((e as StoreError).code).toBe('schema');
    expect((e as Error).message).toContain(path);
  });

  it('a path that is a directory is refused with unavailable and the path', async () => {
    const e = await openSqliteStore({ path: root, pepper }).then(() => null, (err: unknown) => err);
    expect((e as StoreError).code).toBe('unavailable');
    expect((e as Error).message).toContain(root);
  });

  it('refuses to open with another pepper than its keys were hashed with, saying so; the right one opens it', async () => {
    const path = join(root, 'pepper', 'id.db');
    const store = await openSqliteStore({ path, pepper });
    const { keys } = await store.createConsumer({ name: 'p', keys: [{ name: 'k' }] }, { actor: 't' });
    await store.close();
    const e = await openSqliteStore({ path, pepper: randomBytes(32) }).then(() => null, (err: unknown) => err);
    expect((e as StoreError).code).toBe('unavailable');
    expect((e as Error).message).toMatch(/hashed with another pepper.*secrets\.keyPepper/);
    const back = await openSqliteStore({ path, pepper });
    expect(await back.lookupKey(hashKey(pepper, keys[0]!.key))).not.toBeNull();
    await back.close();
  });

  it('a file of schema 1 (before the pepper check) is migrated and adopts the pepper it is opened with', async () => {
    const path = join(root, 'v1', 'id.db');
    mkdirSync(join(root, 'v1'), { recursive: true });
    const Database = createRequire(import.meta.url)('better-sqlite3');
    const db = new Database(path);
    db.exec('CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)');
    db.exec(MIGRATIONS[0]!);
    db.prepare('INSERT INTO schema_version (version, applied_at) VALUES (1, 0)').run();
    // A key rotated under schema 1 (no rotated_at then).
    db.prepare("INSERT INTO consumers VALUES ('c', 'C', 'active', NULL, NULL, '[]', '{}', 0, 0)").run();
    db.prepare("INSERT INTO api_keys (id, consumer_id, name, hash, prefix, scopes_json, restrictions_json, expires_at, created_at, last_used_at, status, revoked_at, rotated_from, grace_until) VALUES ('k', 'c', 'k', 'h', 'tp_live_abcd', '[]', ?, NULL, 0, NULL, 'active', NULL, NULL, 5)")
      .run(JSON.stringify({ cidrs: [], timeWindows: [], origins: [] }));
    db.close();
    const store = await openSqliteStore({ path, pepper });
    expect(await store.getKey('k')).toMatchObject({ graceUntil: 5, rotatedAt: null });
    await store.close();
    const check = new Database(path, { readonly: true });
    expect(check.prepare('SELECT MAX(version) AS v FROM schema_version').get()).toEqual({ v: 2 });
    expect(check.prepare("SELECT value FROM meta WHERE name = 'pepper_check'").get()).toEqual({ value: pepperCheck(pepper) });
    check.close();
  });

  it('verifyPepper: passes on the store\'s own pepper; a pepper check changed under an open store is refused, permanent, naming both checks', async () => {
    const path = join(root, 'verify', 'id.db');
    const store = await openSqliteStore({ path, pepper });
    await store.verifyPepper();
    const Database = createRequire(import.meta.url)('better-sqlite3');
    const db = new Database(path);
    const other = pepperCheck(randomBytes(32));
    db.prepare("UPDATE meta SET value = ? WHERE name = 'pepper_check'").run(other);
    db.close();
    const e = await store.verifyPepper().then(() => null, (err: unknown) => err);
    expect(e).toBeInstanceOf(StoreError);
    expect((e as StoreError).permanent).toBe(true);
    expect((e as Error).message).toContain(`pepper check found in the store: ${other}, this instance's pepper gives: ${pepperCheck(pepper)}`);
    await store.close();
  });

  it('a closed store refuses calls with unavailable', async () => {
    const store = await openSqliteStore({ path: join(root, 'closed', 'id.db'), pepper });
    await store.close();
    const e = await store.listConsumers().then(() => null, (err: unknown) => err);
    expect((e as StoreError).code).toBe('unavailable');
  });
});
