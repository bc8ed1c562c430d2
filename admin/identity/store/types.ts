/**
 * The identity store (issue 12): consumers, their API keys, groups, grants
 * (who may call which route with which methods) and an audit log of every
 * change. One interface, two implementations passing one test suite
 * (test/unit/identity/store-suite.ts): `sqlite` (sqlite.ts, embedded, the
 * default) and `redis` (redis.ts, shared by many instances).
 *
 * Conventions, for both implementations:
 * - Times are milliseconds since the Unix epoch (numbers); null = never/none.
 *   "Now" is the store's `clock` (Date.now unless given).
 * - Ids: a caller may give one (`id`), else the store makes one with newId():
 *   `<kind>_<10 chars of ms time><16 random chars>` (Crockford base32), so
 *   generated ids sort by creation time. Ids match ID_PATTERN.
 * - Lists are keyset-paged by id in byte order: `{ items, nextCursor }`;
 *   `nextCursor` (opaque; null on the last page) goes back as `cursor`.
 *   `limit` is 1..MAX_PAGE_LIMIT (default DEFAULT_PAGE_LIMIT). A record that
 *   exists for the whole walk is returned exactly once, whatever is inserted
 *   or deleted meanwhile; records inserted during the walk appear at most
 *   once.
 * - Every write that touches several records (a consumer with its keys and
 *   group memberships, a rotation, a cascade delete, a purge) is atomic
 *   (SQLite transaction / one Redis Lua script) and writes its audit entry
 *   in the same unit: nothing half-written is ever visible.
 * - Plaintext keys never reach the store: createKey/rotateKey generate the
 *   key (common/identity/keys.ts), store HMAC-SHA256(pepper, key) and the
 *   display prefix, and return the plaintext once.
 * - Errors are StoreError with a stable `code`.
 * - After each committed write, onChange listeners get a ChangeRecord naming
 *   the key hashes whose cached lookups are now stale (the admin thread
 *   broadcasts them to workers for revocation).
 */
import { createHmac, randomBytes } from 'node:crypto';

export type ConsumerStatus = 'active' | 'suspended' | 'revoked';
export const CONSUMER_STATUSES: readonly ConsumerStatus[] = ['active', 'suspended', 'revoked'];
/** A key is `active` until revoked; expiry and rotation grace are times, judged at lookup (keyVerdict). */
export type KeyStatus = 'active' | 'revoked';

/** A JSON-safe metadata value. */
export type MetadataValue = string | number | boolean | null;

export interface Consumer {
  id: string;
  name: string;
  status: ConsumerStatus;
  /** Tenant label, null when none. */
  tenant: string | null;
  /** Rate-limit tier name, null when none. */
  plan: string | null;
  /** Ids of existing groups, sorted, unique. */
  groups: string[];
  metadata: Record<string, MetadataValue>;
  createdAt: number;
  updatedAt: number;
}

/** An allowed time window: on `days`, from `from` to `to` (HH:MM, 24 h, `to` exclusive; from > to spans midnight) in `timeZone` (IANA). */
export interface TimeWindow {
  days: Array<'mon' | 'tue' | 'wed' | 'thu' | 'fri' | 'sat' | 'sun'>;
  from: string;
  to: string;
  timeZone: string;
}

/** Per-key restrictions; an empty list does not restrict. */
export interface KeyRestrictions {
  /** Allowed client addresses (CIDR, IPv4 or IPv6). */
  cidrs: string[];
  timeWindows: TimeWindow[];
  /** Allowed Origin / Referer patterns. */
  origins: string[];
}

export const NO_RESTRICTIONS: Readonly<KeyRestrictions> = Object.freeze({ cidrs: [], timeWindows: [], origins: [] });

export interface ApiKeyRecord {
  id: string;
  consumerId: string;
  name: string;
  /** HMAC-SHA256(pepper, key), base64url (keys.ts hashKey). Internal: never shown by the admin API. */
  hash: string;
  /** What may be shown: `tp_<env>_` + 4 random characters (keys.ts keyDisplayPrefix). */
  prefix: string;
  scopes: string[];
  restrictions: KeyRestrictions;
  expiresAt: number | null;
  createdAt: number;
  lastUsedAt: number | null;
  status: KeyStatus;
  revokedAt: number | null;
  /** The key this one replaced (rotateKey), else null. */
  rotatedFrom: string | null;
  /** Set on the old key by rotateKey: it works until then, with Deprecation/Sunset headers. */
  graceUntil: number | null;
  /** Set on the old key by rotateKey: when it was rotated (ms), the date its Deprecation header gives (RFC 9745); null when never rotated. */
  rotatedAt: number | null;
}

export interface Group {
  id: string;
  name: string;
  description: string | null;
  createdAt: number;
  updatedAt: number;
}

/** Grants `subject` (a consumer or a group) calls to route `routeId` with `methods` (upper case; `*` = any). */
export interface Grant {
  id: string;
  subject: { kind: 'consumer' | 'group'; id: string };
  routeId: string;
  methods: string[];
  createdAt: number;
}

export type AuditAction =
  | 'consumer.create' | 'consumer.update' | 'consumer.delete'
  | 'key.create' | 'key.update' | 'key.rotate' | 'key.revoke' | 'key.purge'
  | 'group.create' | 'group.update' | 'group.delete'
  | 'grant.create' | 'grant.delete';

/** One audited change. `summary` names what changed (fields, ids, counts, key prefixes): never a key, a hash or a secret. */
export interface AuditEntry {
  id: string;
  at: number;
  actor: string;
  action: AuditAction;
  /** `<kind>:<id>` of the record changed (e.g. `key:key_01...`). */
  target: string;
  summary: Record<string, unknown>;
}

/** What a committed write changed; `keyHashes`: key lookups to drop from caches (revocation). */
export interface ChangeRecord {
  kind: 'consumer' | 'key' | 'group' | 'grant';
  op: 'create' | 'update' | 'delete';
  ids: string[];
  keyHashes: string[];
  at: number;
}

export interface Page<T> {
  items: T[];
  nextCursor: string | null;
}

export interface PageQuery {
  cursor?: string | null;
  limit?: number;
}

/** Who makes a write (the audit actor: an admin token's name, `cli`, `scheduler`). */
export interface WriteContext {
  actor: string;
}

export interface NewConsumer {
  id?: string;
  name: string;
  status?: ConsumerStatus;
  tenant?: string | null;
  plan?: string | null;
  groups?: string[];
  metadata?: Record<string, MetadataValue>;
  /** Keys created with the consumer, in the same atomic write. */
  keys?: NewKey[];
}

export type ConsumerPatch = Partial<Pick<Consumer, 'name' | 'status' | 'tenant' | 'plan' | 'groups' | 'metadata'>>;

export interface NewKey {
  id?: string;
  name: string;
  scopes?: string[];
  restrictions?: Partial<KeyRestrictions>;
  expiresAt?: number | null;
}

export type KeyPatch = Partial<Pick<ApiKeyRecord, 'name' | 'scopes' | 'restrictions' | 'expiresAt'>>;

/** A key just made: `key` is the plaintext, returned this once. */
export interface CreatedKey {
  key: string;
  record: ApiKeyRecord;
}

export interface NewGroup {
  id?: string;
  name: string;
  description?: string | null;
}

export type GroupPatch = Partial<Pick<Group, 'name' | 'description'>>;

export interface NewGrant {
  id?: string;
  subject: { kind: 'consumer' | 'group'; id: string };
  routeId: string;
  /** Default `['*']`. */
  methods?: string[];
}

/** The consumer fields a key lookup needs. */
export type ConsumerSummary = Pick<Consumer, 'id' | 'name' | 'status' | 'tenant' | 'plan' | 'groups'>;

/** lookupKey's answer: the key and its consumer, read together. */
export interface KeyLookup {
  key: ApiKeyRecord;
  consumer: ConsumerSummary;
}

/** What a lookup means at a given time (keyVerdict). */
export type KeyVerdict = 'ok' | 'key_revoked' | 'key_expired' | 'consumer_suspended';

/**
 * The decision on a looked-up key at `now` (ms): `key_revoked` (the key is
 * revoked, or its consumer is: a revoked consumer's keys are revoked with
 * it), `consumer_suspended`, `key_expired` (past expiresAt, or past the
 * rotation grace), else `ok` (check `key.graceUntil` for the Deprecation /
 * Sunset headers of a rotated key).
 */
export function keyVerdict(l: KeyLookup, now: number): KeyVerdict {
  if (l.key.status === 'revoked' || l.consumer.status === 'revoked') return 'key_revoked';
  if (l.consumer.status === 'suspended') return 'consumer_suspended';
  if (l.key.expiresAt !== null && now >= l.key.expiresAt) return 'key_expired';
  if (l.key.graceUntil !== null && now >= l.key.graceUntil) return 'key_expired';
  return 'ok';
}

export type StoreErrorCode =
  | 'not_found' // no record with that id
  | 'conflict' // the id exists, or the record's state forbids the change (rotating a revoked key)
  | 'invalid' // bad input: id shape, unknown group, limit out of range
  | 'bad_cursor' // a cursor this store did not make
  | 'schema' // the store's data is newer than this code, or unreadable
  | 'unavailable'; // the backend cannot be reached

export class StoreError extends Error {
  /**
   * True when trying again cannot help until the configuration or the data
   * changes: the store holds another pepper's keys (pepperMismatch), or data
   * of a newer schema (code `schema`). The admin thread makes such a failure
   * at start fatal, and closes a store that turns out so while running.
   */
  readonly permanent: boolean;
  constructor(readonly code: StoreErrorCode, message: string, permanent: boolean = code === 'schema') {
    super(message);
    this.name = 'StoreError';
    this.permanent = permanent;
  }
}

export interface PurgeOptions {
  /** Also remove revoked keys revoked before this time (ms). Default: revoked keys are kept (a lookup says key_revoked). */
  revokedBefore?: number;
}

/** Default rotation grace: 30 days. */
export const DEFAULT_GRACE_MS = 30 * 24 * 3600 * 1000;
export const DEFAULT_PAGE_LIMIT = 100;
export const MAX_PAGE_LIMIT = 1000;
/** Ids given by callers: 1-128 of [A-Za-z0-9_.:-], starting alphanumeric. */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
/** Largest batch touchKeys accepts in one call. */
export const MAX_TOUCH_BATCH = 10_000;

export interface IdentityStore {
  readonly kind: 'sqlite' | 'redis';

  createConsumer(input: NewConsumer, ctx: WriteContext): Promise<{ consumer: Consumer; keys: CreatedKey[] }>;
  getConsumer(id: string): Promise<Consumer | null>;
  /**
   * A status change reaches every key lookup of the consumer at once (and
   * the change feed lists their hashes). active <-> suspended is reversible;
   * revoked is final: revoked -> any other status is a conflict (nextStatus).
   * expiresAt-like times are checked by checkTime.
   */
  updateConsumer(id: string, patch: ConsumerPatch, ctx: WriteContext): Promise<Consumer>;
  /** Removes the consumer, its keys and its grants; returns what was removed. */
  deleteConsumer(id: string, ctx: WriteContext): Promise<{ consumer: Consumer; keys: ApiKeyRecord[]; grants: Grant[] }>;
  listConsumers(q?: PageQuery & { tenant?: string }): Promise<Page<Consumer>>;

  /** A new key for an existing consumer; throws not_found / conflict (id taken, or the consumer is revoked) / invalid (expiresAt outside checkTime's range). */
  createKey(consumerId: string, input: NewKey, ctx: WriteContext): Promise<CreatedKey>;
  getKey(id: string): Promise<ApiKeyRecord | null>;
  updateKey(id: string, patch: KeyPatch, ctx: WriteContext): Promise<ApiKeyRecord>;
  /** The hot path's miss path: one indexed read, key and consumer together; null when no key has that hash. */
  lookupKey(hash: string): Promise<KeyLookup | null>;
  listKeys(q?: PageQuery & { consumerId?: string }): Promise<Page<ApiKeyRecord>>;
  /**
   * A new key with the old one's consumer, name, scopes, restrictions and
   * expiry (rotatedFrom = old id); the old key keeps working until now +
   * graceMs (default DEFAULT_GRACE_MS; 0 ends it now). Conflict when the old
   * key is revoked or already rotated, or its consumer is revoked; invalid
   * when the grace would end after MAX_TIME_MS.
   */
  rotateKey(id: string, opts: { graceMs?: number }, ctx: WriteContext): Promise<CreatedKey & { old: ApiKeyRecord }>;
  /** Revokes a key (idempotent: revoking a revoked key returns it unchanged, no audit). Final: no write makes a revoked key active again. */
  revokeKey(id: string, ctx: WriteContext): Promise<ApiKeyRecord>;
  /** Removes keys past expiresAt or graceUntil at `now` (and revoked ones, see PurgeOptions); returns them. */
  purgeExpired(now: number, ctx: WriteContext, opts?: PurgeOptions): Promise<ApiKeyRecord[]>;
  /** lastUsedAt = max(lastUsedAt, at) for many keys in one call (no audit, no change record); returns how many keys exist of those given. */
  touchKeys(batch: ReadonlyArray<{ id: string; at: number }>): Promise<number>;

  createGroup(input: NewGroup, ctx: WriteContext): Promise<Group>;
  getGroup(id: string): Promise<Group | null>;
  updateGroup(id: string, patch: GroupPatch, ctx: WriteContext): Promise<Group>;
  /** Removes the group, its grants, and its id from every member's `groups`. */
  deleteGroup(id: string, ctx: WriteContext): Promise<{ group: Group; grants: Grant[]; members: string[] }>;
  listGroups(q?: PageQuery): Promise<Page<Group>>;

  /** Throws not_found when the subject does not exist. */
  createGrant(input: NewGrant, ctx: WriteContext): Promise<Grant>;
  getGrant(id: string): Promise<Grant | null>;
  deleteGrant(id: string, ctx: WriteContext): Promise<Grant>;
  listGrants(q?: PageQuery & { subject?: { kind: 'consumer' | 'group'; id: string } }): Promise<Page<Grant>>;
  /** Every grant of the consumer and of its groups (the gatekeeper's grant check). */
  grantsForConsumer(consumerId: string): Promise<Grant[]>;

  listAudit(q?: PageQuery): Promise<Page<AuditEntry>>;

  /**
   * Checks again, now, what the open checked: the schema version and the
   * pepper check (pepperCheck) the store keeps, writing them when missing
   * (a Redis that lost its data: set if absent, so of two instances after
   * the loss the first one claims it and the other is refused). Throws
   * StoreError with `permanent` (pepperMismatch, or schema) when the store
   * is no longer one this instance may use, StoreError('unavailable') when
   * it cannot be reached. The identity service calls it before adopting a
   * store, whenever its change feed (re)connects and every
   * PEPPER_CHECK_MS.
   */
  verifyPepper(): Promise<void>;

  /** Calls `cb` after each committed write of this store object; returns the unsubscribe function. A throwing listener is ignored. */
  onChange(cb: (c: ChangeRecord) => void): () => void;
  close(): Promise<void>;
}

// ------------------------------------------------------------------ helpers shared by the implementations

/**
 * What a store keeps of its pepper: HMAC-SHA256(pepper, a fixed text),
 * base64url, 22 characters (128 bits). It tells a store opened with another
 * pepper (every key would be unknown: `key_invalid` for everyone) from the
 * right one, and says nothing of the pepper itself.
 */
export function pepperCheck(pepper: Buffer): string {
  return createHmac('sha256', pepper).update('turnpike identity pepper check v1').digest('base64url').slice(0, 22);
}

/**
 * The open (or a later check, verifyPepper) refused: the store's keys were
 * hashed with another pepper. `found` is the pepper check the store holds,
 * `mine` the one of this instance's pepper (pepperCheck: safe to show, they
 * say nothing of the peppers), so an operator can tell which instance has
 * which pepper. A permanent StoreError (code `unavailable`).
 */
export function pepperMismatch(where: string, found: string | null, mine: string): StoreError {
  return new StoreError('unavailable', `${where} holds keys hashed with another pepper than secrets.keyPepper gives (every key would be unknown; pepper check found in the store: ${found ?? 'none'}, this instance's pepper gives: ${mine}): set secrets.keyPepper to the pepper this store was made with (the .turnpike/key-pepper file it was created next to, or the value every instance uses), or point the store elsewhere`, true);
}

const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

/** A new id for `kind` (`con`, `key`, `grp`, `gra`, `aud`): time-ordered, 26 chars after the kind. */
export function newId(kind: string, now: number = Date.now()): string {
  let t = '';
  let n = now;
  for (let i = 0; i < 10; i++) {
    t = CROCKFORD[n % 32]! + t;
    n = Math.floor(n / 32);
  }
  const r = randomBytes(10);
  let s = '';
  for (let i = 0; i < 16; i++) {
    // 5 bits at a time out of 80 bits
    const bit = i * 5;
    const byte = bit >> 3;
    const v = ((r[byte]! << 8) | (r[byte + 1] ?? 0)) >> (11 - (bit & 7));
    s += CROCKFORD[v & 31];
  }
  return `${kind}_${t}${s}`;
}

/** Checks a caller's id (or makes one). Throws StoreError invalid. */
export function idFor(kind: string, given: string | undefined, now: number): string {
  if (given === undefined) return newId(kind, now);
  if (typeof given !== 'string' || !ID_PATTERN.test(given)) throw new StoreError('invalid', `id ${JSON.stringify(given)}: 1-128 of [A-Za-z0-9_.:-], starting with a letter or digit`);
  return given;
}

/** The page size of a query. Throws StoreError invalid outside 1..MAX_PAGE_LIMIT. */
export function pageLimit(q: PageQuery | undefined): number {
  const l = q?.limit ?? DEFAULT_PAGE_LIMIT;
  if (!Number.isInteger(l) || l < 1 || l > MAX_PAGE_LIMIT) throw new StoreError('invalid', `limit ${l}: 1..${MAX_PAGE_LIMIT}`);
  return l;
}

/** An opaque cursor: base64url of `c1:<last id>`. */
export function encodeCursor(lastId: string): string {
  return Buffer.from(`c1:${lastId}`, 'utf8').toString('base64url');
}

/** The last id of a cursor, or null for none. Throws StoreError bad_cursor. */
export function decodeCursor(cursor: string | null | undefined): string | null {
  if (cursor === undefined || cursor === null || cursor === '') return null;
  const text = /^[A-Za-z0-9_-]{1,400}$/.test(cursor) ? Buffer.from(cursor, 'base64url').toString('utf8') : '';
  const id = text.startsWith('c1:') ? text.slice(3) : '';
  if (!ID_PATTERN.test(id)) throw new StoreError('bad_cursor', 'cursor is not one this store returned; start again without a cursor');
  return id;
}

/** A full restrictions object (missing lists empty), copied. */
export function fullRestrictions(r: Partial<KeyRestrictions> | undefined): KeyRestrictions {
  return {
    cidrs: [...(r?.cidrs ?? [])],
    timeWindows: (r?.timeWindows ?? []).map((w) => ({ ...w, days: [...w.days] })),
    origins: [...(r?.origins ?? [])],
  };
}

/** Grant methods normalized: upper case, unique, sorted; `*` alone when present. Default ['*']. */
export function normalizeMethods(methods: string[] | undefined): string[] {
  const m = [...new Set((methods ?? ['*']).map((x) => x.toUpperCase()))].sort();
  if (m.length === 0) throw new StoreError('invalid', 'methods: at least one method (or "*")');
  for (const x of m) if (!/^(\*|[A-Z]{1,20})$/.test(x)) throw new StoreError('invalid', `methods: ${JSON.stringify(x)} is not a method name or "*"`);
  return m.includes('*') ? ['*'] : m;
}

/**
 * The record of a consumer being created at `now` (ms), as both stores
 * write it. Throws StoreError('invalid') for a missing or empty name or an
 * unknown status, StoreError('conflict') for keys with a consumer created
 * revoked (requireNotRevoked); the groups are checked by the store (they
 * must exist).
 */
export function newConsumer(input: NewConsumer, now: number): Consumer {
  if (typeof input.name !== 'string' || input.name === '') throw new StoreError('invalid', 'consumer name: a non-empty string');
  const c: Consumer = {
    id: idFor('con', input.id, now), name: input.name, status: checkStatus(input.status), tenant: input.tenant ?? null,
    plan: input.plan ?? null, groups: normalizeGroups(input.groups), metadata: { ...(input.metadata ?? {}) }, createdAt: now, updatedAt: now,
  };
  // Keys of a consumer created revoked could never work: refused as a key added to a revoked consumer is.
  if ((input.keys?.length ?? 0) > 0) requireNotRevoked(c.id, c.status);
  return c;
}

/** Sorted unique group ids. */
export function normalizeGroups(groups: string[] | undefined): string[] {
  const g = [...new Set(groups ?? [])].sort();
  for (const id of g) if (!ID_PATTERN.test(id)) throw new StoreError('invalid', `groups: ${JSON.stringify(id)} is not a group id`);
  return g;
}

/** Checks a touchKeys batch (size, ids, times); returns its length. Throws StoreError invalid. */
export function checkTouchBatch(batch: ReadonlyArray<{ id: string; at: number }>): number {
  if (!Array.isArray(batch) || batch.length > MAX_TOUCH_BATCH) throw new StoreError('invalid', `touchKeys: an array of at most ${MAX_TOUCH_BATCH} entries per call`);
  for (const e of batch) {
    if (typeof e?.id !== 'string' || !Number.isSafeInteger(e.at) || e.at < 0) throw new StoreError('invalid', 'touchKeys: entries are { id: string, at: integer ms >= 0 }');
  }
  return batch.length;
}

/**
 * The status a consumer may move to from `before`: `revoked` is final (its
 * keys were announced revoked everywhere; reviving them would undo that
 * silently), `active` <-> `suspended` is reversible. Throws
 * StoreError('conflict') for revoked -> anything else, StoreError('invalid')
 * for an unknown status.
 */
export function nextStatus(id: string, before: ConsumerStatus, wanted: string): ConsumerStatus {
  const to = checkStatus(wanted);
  if (before === 'revoked' && to !== 'revoked') {
    throw new StoreError('conflict', `consumer ${id} is revoked and cannot become ${to}: revoked is final; create a new consumer, or use suspended for a reversible stop`);
  }
  return to;
}

/** Refuses a new key (createKey, rotateKey) for a revoked consumer: it could never be used. Throws StoreError('conflict'). */
export function requireNotRevoked(consumerId: string, status: ConsumerStatus): void {
  if (status === 'revoked') throw new StoreError('conflict', `consumer ${consumerId} is revoked (final), so a new key of it would never work; create a new consumer instead`);
}

/**
 * The latest time (ms since the epoch) a store keeps in expiresAt or
 * graceUntil: 9999-12-31T23:59:59.999Z, the last instant with a four-digit
 * year (the range of ISO-8601 without an expanded year), far inside
 * JavaScript's Date range (+-8.64e15 ms), so every stored time prints.
 */
export const MAX_TIME_MS = 253_402_300_799_999;
/** MAX_TIME_MS as ISO-8601, for messages. */
export const MAX_TIME_ISO = '9999-12-31T23:59:59.999Z';

/** Checks a time a caller gives the store (`field`: for the message): null, or an integer 0..MAX_TIME_MS ms. Throws StoreError('invalid'). */
export function checkTime(field: string, v: number | null | undefined): number | null {
  if (v === undefined || v === null) return null;
  if (!Number.isSafeInteger(v) || v < 0 || v > MAX_TIME_MS) throw new StoreError('invalid', `${field} ${String(v).slice(0, 64)}: null or whole ms since the epoch, 0..${MAX_TIME_MS} (${MAX_TIME_ISO})`);
  return v;
}

/** Checks a new consumer's status. */
export function checkStatus(s: string | undefined): ConsumerStatus {
  const v = s ?? 'active';
  if (!CONSUMER_STATUSES.includes(v as ConsumerStatus)) throw new StoreError('invalid', `status ${JSON.stringify(s)}: one of ${CONSUMER_STATUSES.join(', ')}`);
  return v as ConsumerStatus;
}

/** The audit summary of a key: never the hash. */
export function keySummary(k: ApiKeyRecord): Record<string, unknown> {
  return { consumerId: k.consumerId, name: k.name, prefix: k.prefix, scopes: k.scopes, expiresAt: k.expiresAt };
}

/** Calls each listener, ignoring throws (a listener never breaks a committed write). */
export function emit(listeners: ReadonlySet<(c: ChangeRecord) => void>, c: ChangeRecord): void {
  for (const cb of listeners) {
    try {
      cb(c);
    } catch { /* a listener's own problem */ }
  }
}
