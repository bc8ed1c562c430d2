/**
 * The embedded identity store (`store: { kind: sqlite, path }`, default
 * `.turnpike/turnpike.db`): one SQLite file, opened by the admin thread.
 * On Node it uses better-sqlite3 (or Node's node:sqlite where the addon,
 * built for Node 20, does not load: openDriver), on Bun bun:sqlite (chosen at
 * run time: better-sqlite3 does not load on Bun); all sit behind the small SqlDb
 * interface below, with positional `?` parameters only (the two drivers
 * differ on named ones).
 *
 * File: created 0600 (its directory 0700 when created here); SQLite gives
 * the -wal and -shm files the same mode. Pragmas: journal_mode=WAL (readers
 * never block the writer), synchronous=NORMAL (durable across a process
 * crash; the last transactions may be lost on power loss), foreign_keys=ON,
 * busy_timeout=5000 ms (another process holding the write lock).
 *
 * Schema migrations: `schema_version(version, applied_at)`; MIGRATIONS[i]
 * takes the schema from version i to i + 1, each in its own transaction. A
 * file whose version is newer than this code knows is refused (StoreError
 * schema: upgrade Turnpike), never written to.
 *
 * Writes run in `BEGIN IMMEDIATE` transactions (the write lock is taken
 * before the first read, so check-then-write sequences cannot interleave
 * with another process's); any throw rolls everything back, the audit
 * entry included. The driver is synchronous: calls are short indexed
 * statements on the admin thread, never on a worker's request path.
 */
import { chmodSync, closeSync, mkdirSync, openSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { generateKey, hashKey, keyDisplayPrefix } from '../../../common/identity/keys.js';
import {
  DEFAULT_GRACE_MS, MAX_TIME_MS, StoreError, checkTime, newConsumer, nextStatus, requireNotRevoked, checkTouchBatch, decodeCursor, emit, encodeCursor, fullRestrictions, idFor,
  keySummary, normalizeGroups, normalizeMethods, pageLimit,
  type ApiKeyRecord, type AuditAction, type AuditEntry, type ChangeRecord, type Consumer, type ConsumerPatch, type CreatedKey,
  type Grant, type Group, type GroupPatch, type IdentityStore, type KeyLookup, type KeyPatch, type NewConsumer, type NewGrant,
  type NewGroup, type NewKey, type Page, type PageQuery, type PurgeOptions, type WriteContext, pepperCheck, pepperMismatch,
} from './types.js';

/** The driver surface used here (common to better-sqlite3 and bun:sqlite). */
interface SqlStatement {
  get(...params: unknown[]): unknown;
  all(...params: unknown[]): unknown[];
  run(...params: unknown[]): { changes: number | bigint };
}
interface SqlDb {
  prepare(sql: string): SqlStatement;
  exec(sql: string): void;
  close(): void;
}

/** Options of openSqliteStore. */
export interface SqliteStoreOptions {
  /** The database file (relative to the working directory). */
  path: string;
  /** secrets.keyPepper bytes: keys are stored as HMAC-SHA256(pepper, key). */
  pepper: Buffer;
  /** Env label of generated keys (`tp_<env>_...`), default `live`. */
  keyEnv?: string;
  /** Milliseconds since the epoch; Date.now by default. */
  clock?: () => number;
}

/** Schema steps: MIGRATIONS[i] takes version i to i + 1. Append only; never edit a released step. */
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE consumers (
    id TEXT PRIMARY KEY, name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
    tenant TEXT, plan TEXT, groups_json TEXT NOT NULL, metadata_json TEXT NOT NULL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX consumers_tenant ON consumers (tenant, id);
  CREATE TABLE groups (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES groups (id), consumer_id TEXT NOT NULL REFERENCES consumers (id),
    PRIMARY KEY (group_id, consumer_id)
  ) WITHOUT ROWID;
  CREATE INDEX group_members_consumer ON group_members (consumer_id);
  CREATE TABLE api_keys (
    id TEXT PRIMARY KEY, consumer_id TEXT NOT NULL REFERENCES consumers (id), name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, scopes_json TEXT NOT NULL, restrictions_json TEXT NOT NULL,
    expires_at INTEGER, created_at INTEGER NOT NULL, last_used_at INTEGER,
    status TEXT NOT NULL CHECK (status IN ('active', 'revoked')), revoked_at INTEGER,
    rotated_from TEXT, grace_until INTEGER
  ) WITHOUT ROWID;
  CREATE INDEX api_keys_consumer ON api_keys (consumer_id, id);
  CREATE INDEX api_keys_expires ON api_keys (expires_at) WHERE expires_at IS NOT NULL;
  CREATE INDEX api_keys_grace ON api_keys (grace_until) WHERE grace_until IS NOT NULL;
  CREATE INDEX api_keys_revoked ON api_keys (revoked_at) WHERE revoked_at IS NOT NULL;
  CREATE TABLE grants (
    id TEXT PRIMARY KEY, subject_kind TEXT NOT NULL CHECK (subject_kind IN ('consumer', 'group')),
    subject_id TEXT NOT NULL, route_id TEXT NOT NULL, methods_json TEXT NOT NULL, created_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX grants_subject ON grants (subject_kind, subject_id, id);
  CREATE TABLE audit (
    id TEXT PRIMARY KEY, at INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL, summary_json TEXT NOT NULL
  ) WITHOUT ROWID;
  `,
  // 2: settings of the store itself (the pepper check); when a key was rotated (its Deprecation date).
  `
  CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
  ALTER TABLE api_keys ADD COLUMN rotated_at INTEGER;
  `,
];

/** The schema version this code writes. */
export const SCHEMA_VERSION = MIGRATIONS.length;

declare const Bun: unknown;

/**
 * Opens better-sqlite3 (Node) or bun:sqlite (Bun) on `file`.
 *
 * better-sqlite3 is a native addon built by `npm ci` for the Node that ran
 * it (ABI 115 for Node 20). On another Node its binary does not load
 * (ERR_DLOPEN_FAILED, "NODE_MODULE_VERSION"); then Node's built-in
 * node:sqlite (DatabaseSync: the same prepare/get/all/run/exec/close
 * surface, the same file format; no flag from Node 22.13, an
 * ExperimentalWarning on Node 24) opens the file instead. Where neither
 * loads, throws an Error saying what to do.
 */
async function openDriver(file: string): Promise<SqlDb> {
  if (typeof Bun !== 'undefined') {
    const spec = 'bun:sqlite'; // a variable: tsc on Node must not resolve it
    const mod = (await import(spec)) as { Database: new (f: string, o?: { create?: boolean }) => SqlDb };
    return new mod.Database(file, { create: true });
  }
  const require = createRequire(import.meta.url);
  const Database = require('better-sqlite3') as new (f: string) => SqlDb;
  try {
    return new Database(file); // the addon loads here, on first use
  } catch (e) {
    if (!isAbiMismatch(e)) throw e;
    const builtin = builtinSqlite(require);
    if (builtin !== null) return new builtin(file);
    throw new Error(
      `better-sqlite3 was built for another Node than ${process.version} (ABI ${process.versions.modules}) and this Node has no node:sqlite without a flag: ` +
      'run Turnpike on the Node that ran npm ci (Node 20), on Node 22.13+ (its built-in node:sqlite is used), rebuild it for this Node ' +
      '(npm rebuild better-sqlite3, needs a C++ toolchain), or use store: { kind: redis }',
    );
  }
}

/** A native addon built for another Node ABI (or that cannot be loaded at all). */
function isAbiMismatch(e: unknown): boolean {
  const err = e as { code?: unknown; message?: unknown };
  return err?.code === 'ERR_DLOPEN_FAILED' || (typeof err?.message === 'string' && err.message.includes('NODE_MODULE_VERSION'));
}

/**
 * node:sqlite's DatabaseSync where this Node has it without a flag, else null.
 * Node 22 emits "ExperimentalWarning: SQLite is an experimental feature" when
 * the module loads: two plain-text lines among the gateway's JSON logs on
 * stderr for a choice made on purpose here, so that one warning is dropped.
 */
function builtinSqlite(require: NodeJS.Require): (new (f: string) => SqlDb) | null {
  const emit = process.emitWarning;
  process.emitWarning = function (this: unknown, warning: string | Error, ...rest: unknown[]): void {
    const text = typeof warning === 'string' ? warning : warning.message;
    const type = typeof rest[0] === 'string' ? rest[0] : (rest[0] as { type?: unknown } | undefined)?.type ?? (warning as Error).name;
    if (type === 'ExperimentalWarning' && text.startsWith('SQLite')) return;
    (emit as (...a: unknown[]) => void).call(process, warning, ...rest);
  } as typeof process.emitWarning;
  try {
    return (require('node:sqlite') as { DatabaseSync: new (f: string) => SqlDb }).DatabaseSync;
  } catch {
    return null;
  } finally {
    process.emitWarning = emit;
  }
}

interface ConsumerRow { id: string; name: string; status: string; tenant: string | null; plan: string | null; groups_json: string; metadata_json: string; created_at: number; updated_at: number }
interface KeyRow {
  id: string; consumer_id: string; name: string; hash: string; prefix: string; scopes_json: string; restrictions_json: string;
  expires_at: number | null; created_at: number; last_used_at: number | null; status: string; revoked_at: number | null;
  rotated_from: string | null; grace_until: number | null; rotated_at: number | null;
}
interface GroupRow { id: string; name: string; description: string | null; created_at: number; updated_at: number }
interface GrantRow { id: string; subject_kind: string; subject_id: string; route_id: string; methods_json: string; created_at: number }
interface AuditRow { id: string; at: number; actor: string; action: string; target: string; summary_json: string }

const toConsumer = (r: ConsumerRow): Consumer => ({
  id: r.id, name: r.name, status: r.status as Consumer['status'], tenant: r.tenant, plan: r.plan,
  groups: JSON.parse(r.groups_json), metadata: JSON.parse(r.metadata_json), createdAt: Number(r.created_at), updatedAt: Number(r.updated_at),
});
const num = (v: number | bigint | null): number | null => (v === null ? null : Number(v));
const toKey = (r: KeyRow): ApiKeyRecord => ({
  id: r.id, consumerId: r.consumer_id, name: r.name, hash: r.hash, prefix: r.prefix, scopes: JSON.parse(r.scopes_json),
  restrictions: JSON.parse(r.restrictions_json), expiresAt: num(r.expires_at), createdAt: Number(r.created_at),
  lastUsedAt: num(r.last_used_at), status: r.status as ApiKeyRecord['status'], revokedAt: num(r.revoked_at),
  rotatedFrom: r.rotated_from, graceUntil: num(r.grace_until), rotatedAt: num(r.rotated_at ?? null),
});
const toGroup = (r: GroupRow): Group => ({ id: r.id, name: r.name, description: r.description, createdAt: Number(r.created_at), updatedAt: Number(r.updated_at) });
const toGrant = (r: GrantRow): Grant => ({
  id: r.id, subject: { kind: r.subject_kind as Grant['subject']['kind'], id: r.subject_id }, routeId: r.route_id,
  methods: JSON.parse(r.methods_json), createdAt: Number(r.created_at),
});
const toAudit = (r: AuditRow): AuditEntry => ({
  id: r.id, at: Number(r.at), actor: r.actor, action: r.action as AuditAction, target: r.target, summary: JSON.parse(r.summary_json),
});

const KEY_COLS = 'id, consumer_id, name, hash, prefix, scopes_json, restrictions_json, expires_at, created_at, last_used_at, status, revoked_at, rotated_from, grace_until, rotated_at';

/**
 * Opens (creating when missing) the store at `opts.path` and migrates it to
 * SCHEMA_VERSION. Throws StoreError schema for a newer file, and the
 * driver's error (with the path) when the file cannot be opened.
 */
export async function openSqliteStore(opts: SqliteStoreOptions): Promise<IdentityStore> {
  const file = resolve(opts.path);
  const dir = dirname(file);
  let db: SqlDb;
  try {
    if (mkdirSync(dir, { recursive: true, mode: 0o700 }) !== undefined) chmodSync(dir, 0o700);
    closeSync(openSync(file, 'a', 0o600)); // exists with 0600 before SQLite (and so its -wal/-shm) sees it
    db = await openDriver(file);
  } catch (e) {
    throw new StoreError('unavailable', `cannot open the identity store ${file}: ${(e as Error).message}`);
  }
  try {
    db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;');
    migrate(db, file, opts.clock ?? Date.now);
    checkPepper(db, file, opts.pepper);
  } catch (e) {
    db.close();
    if (e instanceof StoreError) throw e;
    throw new StoreError('schema', `cannot use ${file} as the identity store (${(e as Error).message}); restore it from a backup or point store.path at a new file`);
  }
  return new SqliteIdentityStore(db, opts);
}

/**
 * The pepper this store's hashes were made with (pepperCheck): written when
 * missing (the first open), compared otherwise. Throws pepperMismatch.
 */
function checkPepper(db: SqlDb, file: string, pepper: Buffer): void {
  const check = pepperCheck(pepper);
  db.prepare("INSERT OR IGNORE INTO meta (name, value) VALUES ('pepper_check', ?)").run(check);
  const stored = db.prepare("SELECT value FROM meta WHERE name = 'pepper_check'").get() as { value: string } | undefined;
  if (stored?.value !== check) throw pepperMismatch(`the identity store ${file}`, stored?.value ?? null, check);
}

/** Applies the missing MIGRATIONS, each in its own transaction. */
function migrate(db: SqlDb, file: string, clock: () => number): void {
  db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)');
  const row = db.prepare('SELECT MAX(version) AS v FROM schema_version').get() as { v: number | null } | null | undefined;
  const current = Number(row?.v ?? 0);
  if (current > SCHEMA_VERSION) {
    throw new StoreError('schema', `${file} has identity schema version ${current}, newer than this Turnpike knows (${SCHEMA_VERSION}); upgrade Turnpike or point store.path elsewhere`);
  }
  for (let v = current; v < SCHEMA_VERSION; v++) {
    db.exec('BEGIN IMMEDIATE');
    try {
      db.exec(MIGRATIONS[v]!);
      db.prepare('INSERT INTO schema_version (version, applied_at) VALUES (?, ?)').run(v + 1, clock());
      db.exec('COMMIT');
    } catch (e) {
      db.exec('ROLLBACK');
      throw e;
    }
  }
}

class SqliteIdentityStore implements IdentityStore {
  readonly kind = 'sqlite' as const;
  private readonly listeners = new Set<(c: ChangeRecord) => void>();
  private readonly clock: () => number;
  private readonly keyEnv: string;
  private readonly stmts = new Map<string, SqlStatement>();
  private closed = false;

  constructor(private readonly db: SqlDb, private readonly opts: SqliteStoreOptions) {
    this.clock = opts.clock ?? Date.now;
    this.keyEnv = opts.keyEnv ?? 'live';
  }

  /** A prepared statement, cached by its text. */
  private q(sql: string): SqlStatement {
    if (this.closed) throw new StoreError('unavailable', 'the identity store is closed');
    let s = this.stmts.get(sql);
    if (s === undefined) {
      s = this.db.prepare(sql);
      this.stmts.set(sql, s);
    }
    return s;
  }

  private one<T>(sql: string, ...params: unknown[]): T | null {
    return (this.q(sql).get(...params) as T | undefined | null) ?? null;
  }

  private all<T>(sql: string, ...params: unknown[]): T[] {
    return this.q(sql).all(...params) as T[];
  }

  /** Runs `fn` in BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any throw. Then emits the change records. */
  private tx<T>(fn: (changes: ChangeRecord[]) => T): T {
    if (this.closed) throw new StoreError('unavailable', 'the identity store is closed');
    const changes: ChangeRecord[] = [];
    this.db.exec('BEGIN IMMEDIATE');
    let result: T;
    try {
      result = fn(changes);
      this.db.exec('COMMIT');
    } catch (e) {
      try {
        this.db.exec('ROLLBACK');
      } catch { /* SQLite already rolled back (e.g. SQLITE_FULL): the original error is the one to report */ }
      const code = (e as { code?: string }).code;
      if (typeof code === 'string' && code.startsWith('SQLITE_CONSTRAINT')) throw new StoreError('conflict', `write refused: ${(e as Error).message}`);
      throw e;
    }
    for (const c of changes) emit(this.listeners, c);
    return result;
  }

  private audit(now: number, actor: string, action: AuditAction, target: string, summary: Record<string, unknown>): void {
    this.q('INSERT INTO audit (id, at, actor, action, target, summary_json) VALUES (?, ?, ?, ?, ?, ?)')
      .run(idFor('aud', undefined, now), now, actor, action, target, JSON.stringify(summary));
  }

  private page<R extends { id: string }, T>(rows: R[], limit: number, map: (r: R) => T): Page<T> {
    const more = rows.length > limit;
    if (more) rows.length = limit;
    return { items: rows.map(map), nextCursor: more ? encodeCursor(rows[rows.length - 1]!.id) : null };
  }

  private requireGroups(groups: string[]): void {
    for (const g of groups) {
      if (this.one('SELECT 1 AS x FROM groups WHERE id = ?', g) === null) throw new StoreError('invalid', `groups: no group with id ${JSON.stringify(g)}; give a group's id (not its name), or create it first`);
    }
  }

  private keyHashesOf(consumerId: string): string[] {
    return this.all<{ hash: string }>('SELECT hash FROM api_keys WHERE consumer_id = ?', consumerId).map((r) => r.hash);
  }

  /** Inserts one new key of `consumerId` (inside a transaction); returns the plaintext and the record. */
  private insertKey(consumerId: string, input: NewKey, now: number, rotatedFrom: string | null): CreatedKey {
    if (typeof input.name !== 'string' || input.name === '') throw new StoreError('invalid', 'key name: a non-empty string');
    const key = generateKey(this.keyEnv);
    const record: ApiKeyRecord = {
      id: idFor('key', input.id, now), consumerId, name: input.name, hash: hashKey(this.opts.pepper, key), prefix: keyDisplayPrefix(key),
      scopes: [...(input.scopes ?? [])], restrictions: fullRestrictions(input.restrictions), expiresAt: checkTime('expiresAt', input.expiresAt),
      createdAt: now, lastUsedAt: null, status: 'active', revokedAt: null, rotatedFrom, graceUntil: null, rotatedAt: null,
    };
    if (this.one('SELECT 1 AS x FROM api_keys WHERE id = ?', record.id) !== null) throw new StoreError('conflict', `key ${record.id} exists`);
    this.q(`INSERT INTO api_keys (${KEY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`).run(
      record.id, consumerId, record.name, record.hash, record.prefix, JSON.stringify(record.scopes), JSON.stringify(record.restrictions),
      record.expiresAt, now, null, 'active', null, rotatedFrom, null, null,
    );
    return { key, record };
  }

  // ---------------------------------------------------------------- consumers

  async createConsumer(input: NewConsumer, ctx: WriteContext): Promise<{ consumer: Consumer; keys: CreatedKey[] }> {
    const now = this.clock();
    const consumer = newConsumer(input, now);
    return this.tx((changes) => {
      if (this.one('SELECT 1 AS x FROM consumers WHERE id = ?', consumer.id) !== null) throw new StoreError('conflict', `consumer ${consumer.id} exists`);
      this.requireGroups(consumer.groups);
      this.q('INSERT INTO consumers (id, name, status, tenant, plan, groups_json, metadata_json, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)').run(
        consumer.id, consumer.name, consumer.status, consumer.tenant, consumer.plan, JSON.stringify(consumer.groups), JSON.stringify(consumer.metadata), now, now,
      );
      for (const g of consumer.groups) this.q('INSERT INTO group_members (group_id, consumer_id) VALUES (?, ?)').run(g, consumer.id);
      const keys = (input.keys ?? []).map((k) => this.insertKey(consumer.id, k, now, null));
      this.audit(now, ctx.actor, 'consumer.create', `consumer:${consumer.id}`, {
        name: consumer.name, status: consumer.status, tenant: consumer.tenant, plan: consumer.plan, groups: consumer.groups,
        keys: keys.map((k) => ({ id: k.record.id, prefix: k.record.prefix })),
      });
      changes.push({ kind: 'consumer', op: 'create', ids: [consumer.id], keyHashes: [], at: now });
      if (keys.length > 0) changes.push({ kind: 'key', op: 'create', ids: keys.map((k) => k.record.id), keyHashes: keys.map((k) => k.record.hash), at: now });
      return { consumer, keys };
    });
  }

  async getConsumer(id: string): Promise<Consumer | null> {
    const r = this.one<ConsumerRow>('SELECT * FROM consumers WHERE id = ?', id);
    return r === null ? null : toConsumer(r);
  }

  async updateConsumer(id: string, patch: ConsumerPatch, ctx: WriteContext): Promise<Consumer> {
    const now = this.clock();
    return this.tx((changes) => {
      const r = this.one<ConsumerRow>('SELECT * FROM consumers WHERE id = ?', id);
      if (r === null) throw new StoreError('not_found', `no consumer ${id}`);
      const before = toConsumer(r);
      const after: Consumer = { ...before, updatedAt: now };
      if (patch.name !== undefined) {
        if (typeof patch.name !== 'string' || patch.name === '') throw new StoreError('invalid', 'consumer name: a non-empty string');
        after.name = patch.name;
      }
      if (patch.status !== undefined) after.status = nextStatus(id, before.status, patch.status);
      if (patch.tenant !== undefined) after.tenant = patch.tenant;
      if (patch.plan !== undefined) after.plan = patch.plan;
      if (patch.metadata !== undefined) after.metadata = { ...patch.metadata };
      if (patch.groups !== undefined) {
        after.groups = normalizeGroups(patch.groups);
        this.requireGroups(after.groups);
        this.q('DELETE FROM group_members WHERE consumer_id = ?').run(id);
        for (const g of after.groups) this.q('INSERT INTO group_members (group_id, consumer_id) VALUES (?, ?)').run(g, id);
      }
      this.q('UPDATE consumers SET name = ?, status = ?, tenant = ?, plan = ?, groups_json = ?, metadata_json = ?, updated_at = ? WHERE id = ?').run(
        after.name, after.status, after.tenant, after.plan, JSON.stringify(after.groups), JSON.stringify(after.metadata), now, id,
      );
      const changed = Object.keys(patch).filter((k) => JSON.stringify((before as unknown as Record<string, unknown>)[k]) !== JSON.stringify((after as unknown as Record<string, unknown>)[k]));
      this.audit(now, ctx.actor, 'consumer.update', `consumer:${id}`, {
        changed, ...(changed.includes('status') ? { status: { from: before.status, to: after.status } } : {}),
      });
      changes.push({ kind: 'consumer', op: 'update', ids: [id], keyHashes: this.keyHashesOf(id), at: now });
      return after;
    });
  }

  async deleteConsumer(id: string, ctx: WriteContext): Promise<{ consumer: Consumer; keys: ApiKeyRecord[]; grants: Grant[] }> {
    const now = this.clock();
    return this.tx((changes) => {
      const r = this.one<ConsumerRow>('SELECT * FROM consumers WHERE id = ?', id);
      if (r === null) throw new StoreError('not_found', `no consumer ${id}`);
      const keys = this.all<KeyRow>(`SELECT ${KEY_COLS} FROM api_keys WHERE consumer_id = ? ORDER BY id`, id).map(toKey);
      const grants = this.all<GrantRow>("SELECT * FROM grants WHERE subject_kind = 'consumer' AND subject_id = ? ORDER BY id", id).map(toGrant);
      this.q('DELETE FROM api_keys WHERE consumer_id = ?').run(id);
      this.q("DELETE FROM grants WHERE subject_kind = 'consumer' AND subject_id = ?").run(id);
      this.q('DELETE FROM group_members WHERE consumer_id = ?').run(id);
      this.q('DELETE FROM consumers WHERE id = ?').run(id);
      this.audit(now, ctx.actor, 'consumer.delete', `consumer:${id}`, {
        name: r.name, keys: keys.map((k) => ({ id: k.id, prefix: k.prefix })), grants: grants.map((g) => g.id),
      });
      changes.push({ kind: 'consumer', op: 'delete', ids: [id], keyHashes: keys.map((k) => k.hash), at: now });
      if (keys.length > 0) changes.push({ kind: 'key', op: 'delete', ids: keys.map((k) => k.id), keyHashes: keys.map((k) => k.hash), at: now });
      if (grants.length > 0) changes.push({ kind: 'grant', op: 'delete', ids: grants.map((g) => g.id), keyHashes: [], at: now });
      return { consumer: toConsumer(r), keys, grants };
    });
  }

  async listConsumers(q?: PageQuery & { tenant?: string }): Promise<Page<Consumer>> {
    const limit = pageLimit(q);
    const after = decodeCursor(q?.cursor) ?? '';
    const rows = q?.tenant !== undefined
      ? this.all<ConsumerRow>('SELECT * FROM consumers WHERE tenant = ? AND id > ? ORDER BY id LIMIT ?', q.tenant, after, limit + 1)
      : this.all<ConsumerRow>('SELECT * FROM consumers WHERE id > ? ORDER BY id LIMIT ?', after, limit + 1);
    return this.page(rows, limit, toConsumer);
  }

  // ---------------------------------------------------------------- keys

  async createKey(consumerId: string, input: NewKey, ctx: WriteContext): Promise<CreatedKey> {
    const now = this.clock();
    return this.tx((changes) => {
      const c = this.one<{ status: Consumer['status'] }>('SELECT status FROM consumers WHERE id = ?', consumerId);
      if (c === null) throw new StoreError('not_found', `no consumer ${consumerId}`);
      requireNotRevoked(consumerId, c.status);
      const created = this.insertKey(consumerId, input, now, null);
      this.audit(now, ctx.actor, 'key.create', `key:${created.record.id}`, keySummary(created.record));
      changes.push({ kind: 'key', op: 'create', ids: [created.record.id], keyHashes: [created.record.hash], at: now });
      return created;
    });
  }

  async getKey(id: string): Promise<ApiKeyRecord | null> {
    const r = this.one<KeyRow>(`SELECT ${KEY_COLS} FROM api_keys WHERE id = ?`, id);
    return r === null ? null : toKey(r);
  }

  async updateKey(id: string, patch: KeyPatch, ctx: WriteContext): Promise<ApiKeyRecord> {
    const now = this.clock();
    return this.tx((changes) => {
      const r = this.one<KeyRow>(`SELECT ${KEY_COLS} FROM api_keys WHERE id = ?`, id);
      if (r === null) throw new StoreError('not_found', `no key ${id}`);
      const k = toKey(r);
      if (patch.name !== undefined) {
        if (typeof patch.name !== 'string' || patch.name === '') throw new StoreError('invalid', 'key name: a non-empty string');
        k.name = patch.name;
      }
      if (patch.scopes !== undefined) k.scopes = [...patch.scopes];
      if (patch.restrictions !== undefined) k.restrictions = fullRestrictions(patch.restrictions);
      if (patch.expiresAt !== undefined) k.expiresAt = checkTime('expiresAt', patch.expiresAt);
      this.q('UPDATE api_keys SET name = ?, scopes_json = ?, restrictions_json = ?, expires_at = ? WHERE id = ?')
        .run(k.name, JSON.stringify(k.scopes), JSON.stringify(k.restrictions), k.expiresAt, id);
      this.audit(now, ctx.actor, 'key.update', `key:${id}`, { prefix: k.prefix, changed: Object.keys(patch) });
      changes.push({ kind: 'key', op: 'update', ids: [id], keyHashes: [k.hash], at: now });
      return k;
    });
  }

  async lookupKey(hash: string): Promise<KeyLookup | null> {
    const r = this.one<KeyRow & { c_id: string; c_name: string; c_status: string; c_tenant: string | null; c_plan: string | null; c_groups: string }>(
      `SELECT k.id, k.consumer_id, k.name, k.hash, k.prefix, k.scopes_json, k.restrictions_json, k.expires_at, k.created_at,
              k.last_used_at, k.status, k.revoked_at, k.rotated_from, k.grace_until, k.rotated_at,
              c.id AS c_id, c.name AS c_name, c.status AS c_status, c.tenant AS c_tenant, c.plan AS c_plan, c.groups_json AS c_groups
         FROM api_keys k JOIN consumers c ON c.id = k.consumer_id WHERE k.hash = ?`, hash);
    if (r === null) return null;
    return {
      key: toKey(r),
      consumer: { id: r.c_id, name: r.c_name, status: r.c_status as Consumer['status'], tenant: r.c_tenant, plan: r.c_plan, groups: JSON.parse(r.c_groups) },
    };
  }

  async listKeys(q?: PageQuery & { consumerId?: string }): Promise<Page<ApiKeyRecord>> {
    const limit = pageLimit(q);
    const after = decodeCursor(q?.cursor) ?? '';
    const rows = q?.consumerId !== undefined
      ? this.all<KeyRow>(`SELECT ${KEY_COLS} FROM api_keys WHERE consumer_id = ? AND id > ? ORDER BY id LIMIT ?`, q.consumerId, after, limit + 1)
      : this.all<KeyRow>(`SELECT ${KEY_COLS} FROM api_keys WHERE id > ? ORDER BY id LIMIT ?`, after, limit + 1);
    return this.page(rows, limit, toKey);
  }

  async rotateKey(id: string, opts: { graceMs?: number }, ctx: WriteContext): Promise<CreatedKey & { old: ApiKeyRecord }> {
    const now = this.clock();
    const graceMs = opts.graceMs ?? DEFAULT_GRACE_MS;
    if (!Number.isFinite(graceMs) || graceMs < 0 || now + graceMs > MAX_TIME_MS) throw new StoreError('invalid', `graceMs ${graceMs}: a duration >= 0 in ms, ending by ${MAX_TIME_MS} ms since the epoch`);
    return this.tx((changes) => {
      const r = this.one<KeyRow>(`SELECT ${KEY_COLS} FROM api_keys WHERE id = ?`, id);
      if (r === null) throw new StoreError('not_found', `no key ${id}`);
      const old = toKey(r);
      if (old.status === 'revoked') throw new StoreError('conflict', `key ${id} is revoked; create a new key instead`);
      if (old.graceUntil !== null) throw new StoreError('conflict', `key ${id} was already rotated; rotate its replacement instead`);
      requireNotRevoked(old.consumerId, this.one<{ status: Consumer['status'] }>('SELECT status FROM consumers WHERE id = ?', old.consumerId)!.status);
      old.graceUntil = now + graceMs;
      old.rotatedAt = now;
      this.q('UPDATE api_keys SET grace_until = ?, rotated_at = ? WHERE id = ?').run(old.graceUntil, now, id);
      const created = this.insertKey(old.consumerId, { name: old.name, scopes: old.scopes, restrictions: old.restrictions, expiresAt: old.expiresAt }, now, id);
      this.audit(now, ctx.actor, 'key.rotate', `key:${id}`, { prefix: old.prefix, newKey: { id: created.record.id, prefix: created.record.prefix }, graceUntil: old.graceUntil });
      changes.push({ kind: 'key', op: 'update', ids: [id], keyHashes: [old.hash], at: now });
      changes.push({ kind: 'key', op: 'create', ids: [created.record.id], keyHashes: [created.record.hash], at: now });
      return { ...created, old };
    });
  }

  async revokeKey(id: string, ctx: WriteContext): Promise<ApiKeyRecord> {
    const now = this.clock();
    return this.tx((changes) => {
      const r = this.one<KeyRow>(`SELECT ${KEY_COLS} FROM api_keys WHERE id = ?`, id);
      if (r === null) throw new StoreError('not_found', `no key ${id}`);
      const k = toKey(r);
      if (k.status === 'revoked') return k;
      k.status = 'revoked';
      k.revokedAt = now;
      this.q("UPDATE api_keys SET status = 'revoked', revoked_at = ? WHERE id = ?").run(now, id);
      this.audit(now, ctx.actor, 'key.revoke', `key:${id}`, { prefix: k.prefix, consumerId: k.consumerId });
      changes.push({ kind: 'key', op: 'update', ids: [id], keyHashes: [k.hash], at: now });
      return k;
    });
  }

  async purgeExpired(now: number, ctx: WriteContext, opts: PurgeOptions = {}): Promise<ApiKeyRecord[]> {
    const revokedBefore = opts.revokedBefore ?? -1;
    return this.tx((changes) => {
      const keys = this.all<KeyRow>(
        `SELECT ${KEY_COLS} FROM api_keys WHERE expires_at <= ? OR grace_until <= ? OR revoked_at < ? ORDER BY id`, now, now, revokedBefore,
      ).map(toKey);
      if (keys.length === 0) return keys;
      for (const k of keys) this.q('DELETE FROM api_keys WHERE id = ?').run(k.id);
      this.audit(now, ctx.actor, 'key.purge', 'key:*', { count: keys.length, keys: keys.map((k) => ({ id: k.id, prefix: k.prefix, consumerId: k.consumerId })) });
      changes.push({ kind: 'key', op: 'delete', ids: keys.map((k) => k.id), keyHashes: keys.map((k) => k.hash), at: now });
      return keys;
    });
  }

  async touchKeys(batch: ReadonlyArray<{ id: string; at: number }>): Promise<number> {
    if (checkTouchBatch(batch) === 0) return 0;
    return this.tx(() => {
      let n = 0;
      const s = this.q('UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?');
      for (const { id, at } of batch) n += Number(s.run(at, id).changes);
      return n;
    });
  }

  // ---------------------------------------------------------------- groups

  async createGroup(input: NewGroup, ctx: WriteContext): Promise<Group> {
    const now = this.clock();
    if (typeof input.name !== 'string' || input.name === '') throw new StoreError('invalid', 'group name: a non-empty string');
    const g: Group = { id: idFor('grp', input.id, now), name: input.name, description: input.description ?? null, createdAt: now, updatedAt: now };
    return this.tx((changes) => {
      if (this.one('SELECT 1 AS x FROM groups WHERE id = ?', g.id) !== null) throw new StoreError('conflict', `group ${g.id} exists`);
      this.q('INSERT INTO groups (id, name, description, created_at, updated_at) VALUES (?, ?, ?, ?, ?)').run(g.id, g.name, g.description, now, now);
      this.audit(now, ctx.actor, 'group.create', `group:${g.id}`, { name: g.name });
      changes.push({ kind: 'group', op: 'create', ids: [g.id], keyHashes: [], at: now });
      return g;
    });
  }

  async getGroup(id: string): Promise<Group | null> {
    const r = this.one<GroupRow>('SELECT * FROM groups WHERE id = ?', id);
    return r === null ? null : toGroup(r);
  }

  async updateGroup(id: string, patch: GroupPatch, ctx: WriteContext): Promise<Group> {
    const now = this.clock();
    return this.tx((changes) => {
      const r = this.one<GroupRow>('SELECT * FROM groups WHERE id = ?', id);
      if (r === null) throw new StoreError('not_found', `no group ${id}`);
      const g = { ...toGroup(r), updatedAt: now };
      if (patch.name !== undefined) {
        if (typeof patch.name !== 'string' || patch.name === '') throw new StoreError('invalid', 'group name: a non-empty string');
        g.name = patch.name;
      }
      if (patch.description !== undefined) g.description = patch.description;
      this.q('UPDATE groups SET name = ?, description = ?, updated_at = ? WHERE id = ?').run(g.name, g.description, now, id);
      this.audit(now, ctx.actor, 'group.update', `group:${id}`, { changed: Object.keys(patch) });
      changes.push({ kind: 'group', op: 'update', ids: [id], keyHashes: [], at: now });
      return g;
    });
  }

  async deleteGroup(id: string, ctx: WriteContext): Promise<{ group: Group; grants: Grant[]; members: string[] }> {
    const now = this.clock();
    return this.tx((changes) => {
      const r = this.one<GroupRow>('SELECT * FROM groups WHERE id = ?', id);
      if (r === null) throw new StoreError('not_found', `no group ${id}`);
      const members = this.all<{ consumer_id: string }>('SELECT consumer_id FROM group_members WHERE group_id = ? ORDER BY consumer_id', id).map((m) => m.consumer_id);
      const grants = this.all<GrantRow>("SELECT * FROM grants WHERE subject_kind = 'group' AND subject_id = ? ORDER BY id", id).map(toGrant);
      const hashes: string[] = [];
      for (const cid of members) {
        const c = toConsumer(this.one<ConsumerRow>('SELECT * FROM consumers WHERE id = ?', cid)!);
        this.q('UPDATE consumers SET groups_json = ?, updated_at = ? WHERE id = ?').run(JSON.stringify(c.groups.filter((x) => x !== id)), now, cid);
        hashes.push(...this.keyHashesOf(cid));
      }
      this.q('DELETE FROM group_members WHERE group_id = ?').run(id);
      this.q("DELETE FROM grants WHERE subject_kind = 'group' AND subject_id = ?").run(id);
      this.q('DELETE FROM groups WHERE id = ?').run(id);
      this.audit(now, ctx.actor, 'group.delete', `group:${id}`, { name: r.name, members, grants: grants.map((g) => g.id) });
      changes.push({ kind: 'group', op: 'delete', ids: [id], keyHashes: [], at: now });
      if (members.length > 0) changes.push({ kind: 'consumer', op: 'update', ids: members, keyHashes: hashes, at: now });
      if (grants.length > 0) changes.push({ kind: 'grant', op: 'delete', ids: grants.map((g) => g.id), keyHashes: [], at: now });
      return { group: toGroup(r), grants, members };
    });
  }

  async listGroups(q?: PageQuery): Promise<Page<Group>> {
    const limit = pageLimit(q);
    const rows = this.all<GroupRow>('SELECT * FROM groups WHERE id > ? ORDER BY id LIMIT ?', decodeCursor(q?.cursor) ?? '', limit + 1);
    return this.page(rows, limit, toGroup);
  }

  // ---------------------------------------------------------------- grants

  async createGrant(input: NewGrant, ctx: WriteContext): Promise<Grant> {
    const now = this.clock();
    const kind = input.subject?.kind;
    if (kind !== 'consumer' && kind !== 'group') throw new StoreError('invalid', 'grant subject.kind: consumer or group');
    if (typeof input.routeId !== 'string' || input.routeId === '') throw new StoreError('invalid', 'grant routeId: a route id');
    const g: Grant = { id: idFor('gra', input.id, now), subject: { kind, id: input.subject.id }, routeId: input.routeId, methods: normalizeMethods(input.methods), createdAt: now };
    return this.tx((changes) => {
      const table = kind === 'consumer' ? 'consumers' : 'groups';
      if (this.one(`SELECT 1 AS x FROM ${table} WHERE id = ?`, g.subject.id) === null) throw new StoreError('not_found', `no ${kind} ${g.subject.id}`);
      if (this.one('SELECT 1 AS x FROM grants WHERE id = ?', g.id) !== null) throw new StoreError('conflict', `grant ${g.id} exists`);
      this.q('INSERT INTO grants (id, subject_kind, subject_id, route_id, methods_json, created_at) VALUES (?, ?, ?, ?, ?, ?)')
        .run(g.id, kind, g.subject.id, g.routeId, JSON.stringify(g.methods), now);
      this.audit(now, ctx.actor, 'grant.create', `grant:${g.id}`, { subject: g.subject, routeId: g.routeId, methods: g.methods });
      changes.push({ kind: 'grant', op: 'create', ids: [g.id], keyHashes: [], at: now });
      return g;
    });
  }

  async getGrant(id: string): Promise<Grant | null> {
    const r = this.one<GrantRow>('SELECT * FROM grants WHERE id = ?', id);
    return r === null ? null : toGrant(r);
  }

  async deleteGrant(id: string, ctx: WriteContext): Promise<Grant> {
    const now = this.clock();
    return this.tx((changes) => {
      const r = this.one<GrantRow>('SELECT * FROM grants WHERE id = ?', id);
      if (r === null) throw new StoreError('not_found', `no grant ${id}`);
      this.q('DELETE FROM grants WHERE id = ?').run(id);
      const g = toGrant(r);
      this.audit(now, ctx.actor, 'grant.delete', `grant:${id}`, { subject: g.subject, routeId: g.routeId });
      changes.push({ kind: 'grant', op: 'delete', ids: [id], keyHashes: [], at: now });
      return g;
    });
  }

  async listGrants(q?: PageQuery & { subject?: { kind: 'consumer' | 'group'; id: string } }): Promise<Page<Grant>> {
    const limit = pageLimit(q);
    const after = decodeCursor(q?.cursor) ?? '';
    const rows = q?.subject !== undefined
      ? this.all<GrantRow>('SELECT * FROM grants WHERE subject_kind = ? AND subject_id = ? AND id > ? ORDER BY id LIMIT ?', q.subject.kind, q.subject.id, after, limit + 1)
      : this.all<GrantRow>('SELECT * FROM grants WHERE id > ? ORDER BY id LIMIT ?', after, limit + 1);
    return this.page(rows, limit, toGrant);
  }

  async grantsForConsumer(consumerId: string): Promise<Grant[]> {
    return this.all<GrantRow>(
      `SELECT * FROM grants WHERE (subject_kind = 'consumer' AND subject_id = ?)
          OR (subject_kind = 'group' AND subject_id IN (SELECT group_id FROM group_members WHERE consumer_id = ?)) ORDER BY id`,
      consumerId, consumerId,
    ).map(toGrant);
  }

  async listAudit(q?: PageQuery): Promise<Page<AuditEntry>> {
    const limit = pageLimit(q);
    const rows = this.all<AuditRow>('SELECT * FROM audit WHERE id > ? ORDER BY id LIMIT ?', decodeCursor(q?.cursor) ?? '', limit + 1);
    return this.page(rows, limit, toAudit);
  }

  async verifyPepper(): Promise<void> {
    if (this.closed) throw new StoreError('unavailable', 'the identity store is closed');
    checkPepper(this.db, resolve(this.opts.path), this.opts.pepper);
  }

  onChange(cb: (c: ChangeRecord) => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stmts.clear();
    this.db.close();
  }
}
