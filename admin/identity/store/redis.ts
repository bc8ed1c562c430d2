/**
 * The shared identity store (`store: { kind: redis }`, on `redis.url`): for
 * several Turnpike instances over one standalone (or Sentinel-managed)
 * Redis. Opened by the admin thread; workers never talk to it.
 *
 * Key layout (P = the key prefix, default `turnpike:id:`):
 *
 *   P schema                 string  schema version ("1"); a newer one is refused
 *   P pepper                 string  the pepper check (types.ts pepperCheck): an open with another pepper is refused;
 *                                    every write checks it in its script, verifyPepper re-checks (and re-claims
 *                                    it, SET NX, after a data loss)
 *   P c:<consumerId>         string  Consumer JSON
 *   P k:<keyId>              string  ApiKeyRecord JSON without lastUsedAt
 *   P k:used                 hash    keyId -> lastUsedAt (ms), written by touchKeys only
 *   P kh:<keyHash>           string  keyId: the lookup index (keyHash = HMAC, never the key)
 *   P g:<groupId>            string  Group JSON
 *   P gr:<grantId>           string  Grant JSON
 *   P a:<auditId>            string  AuditEntry JSON
 *   P ix:c                   zset    every consumer id (score 0: ordered by id, paged by ZRANGEBYLEX)
 *   P ix:c:t:<tenant>        zset    consumer ids of a tenant
 *   P ix:k                   zset    every key id
 *   P ix:k:c:<consumerId>    zset    key ids of a consumer
 *   P ix:k:exp               zset    key ids scored by min(expiresAt, graceUntil): purge candidates
 *   P ix:k:rev               zset    revoked key ids scored by revokedAt
 *   P ix:g                   zset    every group id
 *   P ix:g:m:<groupId>       zset    consumer ids in the group
 *   P ix:gr                  zset    every grant id
 *   P ix:gr:s:<kind>:<id>    zset    grant ids of a subject (kind consumer|group)
 *   P ix:a                   zset    every audit id
 *   P changes                channel each committed write's ChangeRecords (JSON array), for other instances
 *
 * Lists page by id with ZRANGEBYLEX from `(<last id>` (keyset paging: a
 * record present for the whole walk is seen exactly once), ids and records
 * read in one script call, so a page is a consistent snapshot.
 *
 * Writes are optimistic transactions: the records a write depends on are
 * read, the new state computed in JS, then ONE Lua script (COMMIT_LUA)
 * checks that every record read is unchanged (GET equals what was read; an
 * index's member list equals what was read; an id to create is absent)
 * and only then applies every SET/DEL/ZADD/ZREM/HDEL and the PUBLISH. A
 * script runs atomically and checks before it writes, so a write is
 * applied whole or not at all. A record changed meanwhile makes the write
 * start again (at most MAX_ATTEMPTS times); an id already taken is
 * StoreError conflict. Lookups are one script call (LOOKUP_LUA: key-hash
 * index, key, consumer, lastUsedAt). Scripts are sent by EVALSHA (ioredis
 * defineCommand re-sends them after NOSCRIPT). The scripts touch keys they
 * do not declare in KEYS, so Redis Cluster is not supported here.
 *
 * Persistence advice (README): run this Redis with `appendonly yes`,
 * `appendfsync everysec` (at most ~1 s of writes lost on a crash) and no
 * eviction (`maxmemory-policy noeviction`): an evicted key record would be
 * an unknown key, an evicted revocation would be lost.
 *
 * Failures: a command that cannot reach Redis (disconnected: no offline
 * queue; or slower than commandTimeoutMs) is StoreError unavailable; a
 * write is never re-sent after such a failure (it may have been applied).
 */
import { Redis } from 'ioredis';
import { generateKey, hashKey, keyDisplayPrefix } from '../../../common/identity/keys.js';
import {
  DEFAULT_GRACE_MS, MAX_TIME_MS, StoreError, checkTime, newConsumer, nextStatus, requireNotRevoked, checkTouchBatch, decodeCursor, emit, encodeCursor, fullRestrictions, idFor,
  keySummary, normalizeGroups, normalizeMethods, pageLimit,
  type ApiKeyRecord, type AuditAction, type AuditEntry, type ChangeRecord, type Consumer, type ConsumerPatch, type CreatedKey,
  type Grant, type Group, type GroupPatch, type IdentityStore, type KeyLookup, type KeyPatch, type NewConsumer, type NewGrant,
  type NewGroup, type NewKey, type Page, type PageQuery, type PurgeOptions, type WriteContext, pepperCheck, pepperMismatch,
} from './types.js';

export const DEFAULT_KEY_PREFIX = 'turnpike:id:';
/** The schema version this code writes. */
export const REDIS_SCHEMA_VERSION = 1;
/** Attempts of one write when records it read change under it. */
const MAX_ATTEMPTS = 20;

export interface RedisStoreOptions {
  /** redis://[user:pass@]host:port[/db] */
  url: string;
  /** Default DEFAULT_KEY_PREFIX. */
  keyPrefix?: string;
  pepper: Buffer;
  /** Env label of generated keys, default `live`. */
  keyEnv?: string;
  clock?: () => number;
  /** Per command, default 2000 ms. */
  commandTimeoutMs?: number;
  /** Connecting, default 5000 ms. */
  connectTimeoutMs?: number;
}

/**
 * ARGV[1]: {"x":[[key, expected or false, tag]], "xz":[[zset, [members], tag]],
 * "s":[[key, value]], "d":[key], "za":[[zset, score, member]], "zr":[[zset, member]],
 * "hd":[[hash, field]], "p":[channel, message] or false}.
 * Returns false when applied, else the tag of the first check that failed.
 */
const COMMIT_LUA = `
local op = cjson.decode(ARGV[1])
for _, e in ipairs(op.x) do
  if redis.call('GET', e[1]) ~= e[2] then return e[3] end
end
for _, e in ipairs(op.xz) do
  local m = redis.call('ZRANGE', e[1], 0, -1)
  if #m ~= #e[2] then return e[3] end
  for i = 1, #m do if m[i] ~= e[2][i] then return e[3] end end
end
for _, e in ipairs(op.s) do redis.call('SET', e[1], e[2]) end
for _, k in ipairs(op.d) do redis.call('DEL', k) end
for _, e in ipairs(op.zr) do redis.call('ZREM', e[1], e[2]) end
for _, e in ipairs(op.za) do redis.call('ZADD', e[1], e[2], e[3]) end
for _, e in ipairs(op.hd) do redis.call('HDEL', e[1], e[2]) end
if op.p then redis.call('PUBLISH', op.p[1], op.p[2]) end
return false
`;

/** ARGV: prefix, keyHash. Returns false or {key JSON, consumer JSON or '', lastUsedAt or ''}. */
const LOOKUP_LUA = `
local id = redis.call('GET', ARGV[1] .. 'kh:' .. ARGV[2])
if not id then return false end
local k = redis.call('GET', ARGV[1] .. 'k:' .. id)
if not k then return false end
local c = redis.call('GET', ARGV[1] .. 'c:' .. cjson.decode(k).consumerId)
return {k, c or '', redis.call('HGET', ARGV[1] .. 'k:used', id) or ''}
`;

/** ARGV: index zset, min ('-' or '(<id>'), count, record key prefix, used hash or ''. Returns {id, json, used, ...}. */
const PAGE_LUA = `
local ids = redis.call('ZRANGEBYLEX', ARGV[1], ARGV[2], '+', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('GET', ARGV[4] .. id) or ''
  out[#out + 1] = ARGV[5] ~= '' and (redis.call('HGET', ARGV[5], id) or '') or ''
end
return out
`;

/** ARGV: prefix, then id, at pairs. lastUsedAt = max(old, at) for existing keys; returns how many exist. */
const TOUCH_LUA = `
local n = 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('EXISTS', ARGV[1] .. 'k:' .. id) == 1 then
    n = n + 1
    local cur = redis.call('HGET', ARGV[1] .. 'k:used', id)
    if not cur or tonumber(cur) < tonumber(ARGV[i + 1]) then redis.call('HSET', ARGV[1] .. 'k:used', id, ARGV[i + 1]) end
  end
end
return n
`;

interface ScriptClient extends Redis {
  idCommit(op: string): Promise<string | null>;
  idLookup(prefix: string, hash: string): Promise<[string, string, string] | null>;
  idPage(index: string, min: string, count: number, recordPrefix: string, usedHash: string): Promise<string[]>;
  idTouch(prefix: string, ...pairs: string[]): Promise<number>;
}

/** One write under construction: what it checks and what it applies. */
class Tx {
  readonly x: Array<[string, string | false, string]> = [];
  readonly xz: Array<[string, string[], string]> = [];
  readonly s: Array<[string, string]> = [];
  readonly d: string[] = [];
  readonly za: Array<[string, string, string]> = [];
  readonly zr: Array<[string, string]> = [];
  readonly hd: Array<[string, string]> = [];
  readonly changes: ChangeRecord[] = [];
  /** GET key must still be `raw` (null: absent); else the write starts again. */
  same(key: string, raw: string | null): void {
    this.x.push([key, raw ?? false, 'retry']);
  }
  /** key must be absent; else StoreError conflict with `message`. */
  absent(key: string, message: string): void {
    this.x.push([key, false, `conflict:${message}`]);
  }
  /** The zset's members must still be `members` (sorted); else the write starts again. */
  sameMembers(key: string, members: string[]): void {
    this.xz.push([key, members, 'retry']);
  }
}

const parse = <T>(raw: string): T => JSON.parse(raw) as T;

/**
 * Connects to `opts.url` and checks (or writes) the schema version. Throws
 * StoreError unavailable (Redis unreachable) or schema (newer data).
 */
export async function openRedisStore(opts: RedisStoreOptions): Promise<IdentityStore> {
  const client = new Redis(opts.url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: opts.commandTimeoutMs ?? 2000,
    connectTimeout: opts.connectTimeoutMs ?? 5000,
    retryStrategy: (n) => Math.min(50 * 2 ** n, 2000),
  }) as ScriptClient;
  client.on('error', () => { /* surfaced as StoreError unavailable by the calls */ });
  client.defineCommand('idCommit', { numberOfKeys: 0, lua: COMMIT_LUA });
  client.defineCommand('idLookup', { numberOfKeys: 0, lua: LOOKUP_LUA });
  client.defineCommand('idPage', { numberOfKeys: 0, lua: PAGE_LUA });
  client.defineCommand('idTouch', { numberOfKeys: 0, lua: TOUCH_LUA });
  const prefix = opts.keyPrefix ?? DEFAULT_KEY_PREFIX;
  try {
    await client.connect();
    await checkMarkers(client, prefix, opts);
  } catch (e) {
    client.disconnect();
    if (e instanceof StoreError) throw e;
    throw new StoreError('unavailable', `cannot reach the identity store at Redis ${safeUrl(opts.url)} (${(e as Error).message}); check redis.url and that Redis runs`);
  }
  return new RedisIdentityStore(client, prefix, opts);
}

/**
 * The schema version and the pepper check (pepperCheck) under `prefix`,
 * each written when absent (SET NX: the first instance to find it missing
 * claims it; after a data loss, of two instances with different peppers
 * exactly one wins) and then compared. Throws StoreError schema (newer
 * data) or pepperMismatch (permanent), or the client's error.
 */
async function checkMarkers(client: Redis, prefix: string, opts: RedisStoreOptions): Promise<void> {
  await client.set(prefix + 'schema', String(REDIS_SCHEMA_VERSION), 'NX');
  const v = Number(await client.get(prefix + 'schema'));
  if (!(v <= REDIS_SCHEMA_VERSION)) {
    throw new StoreError('schema', `Redis ${safeUrl(opts.url)} holds identity schema version ${v} under ${prefix}, newer than this Turnpike knows (${REDIS_SCHEMA_VERSION}); upgrade Turnpike`);
  }
  const check = pepperCheck(opts.pepper);
  await client.set(prefix + 'pepper', check, 'NX');
  const found = await client.get(prefix + 'pepper');
  if (found !== check) throw pepperMismatch(`the identity store in Redis ${safeUrl(opts.url)} (${prefix})`, found, check);
}

/** The URL without its password, for messages. */
function safeUrl(url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');
}

class RedisIdentityStore implements IdentityStore {
  readonly kind = 'redis' as const;
  private readonly listeners = new Set<(c: ChangeRecord) => void>();
  private readonly clock: () => number;
  private readonly keyEnv: string;
  private closed = false;
  /** pepperCheck(opts.pepper): what `P pepper` must hold. */
  private readonly check: string;

  constructor(private readonly r: ScriptClient, private readonly p: string, private readonly opts: RedisStoreOptions) {
    this.clock = opts.clock ?? Date.now;
    this.keyEnv = opts.keyEnv ?? 'live';
    this.check = pepperCheck(opts.pepper);
  }

  async verifyPepper(): Promise<void> {
    await this.io(() => checkMarkers(this.r, this.p, this.opts));
  }

  /** Runs a Redis call, turning transport errors into StoreError unavailable. */
  private async io<T>(call: () => Promise<T>): Promise<T> {
    if (this.closed) throw new StoreError('unavailable', 'the identity store is closed');
    try {
      return await call();
    } catch (e) {
      if (e instanceof StoreError) throw e;
      throw new StoreError('unavailable', `identity store (Redis ${safeUrl(this.opts.url)}): ${(e as Error).message}`);
    }
  }

  private get(key: string): Promise<string | null> {
    return this.io(() => this.r.get(key));
  }

  private members(key: string): Promise<string[]> {
    return this.io(() => this.r.zrange(key, '0', '-1'));
  }

  /**
   * Builds a write with `build` (reads, checks, changes) and commits it in
   * one script call; starts again when a record read changed meanwhile.
   */
  private async write<T>(build: (tx: Tx) => Promise<T>): Promise<T> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const tx = new Tx();
      // Only into a store that still holds this pepper's check: after a data loss another instance may have claimed it.
      tx.x.push([this.p + 'pepper', this.check, 'pepper']);
      const result = await build(tx);
      const op = JSON.stringify({
        x: tx.x, xz: tx.xz, s: tx.s, d: tx.d, za: tx.za, zr: tx.zr, hd: tx.hd,
        p: tx.changes.length > 0 ? [this.p + 'changes', JSON.stringify(tx.changes)] : false,
      });
      const failed = await this.io(() => this.r.idCommit(op));
      if (failed === null) {
        for (const c of tx.changes) emit(this.listeners, c);
        return result;
      }
      if (failed.startsWith('conflict:')) throw new StoreError('conflict', failed.slice(9));
      // The pepper check is gone (claimed again, then the write starts again) or another one (pepperMismatch, thrown).
      if (failed === 'pepper') await this.verifyPepper();
    }
    throw new StoreError('unavailable', `identity store: a write lost ${MAX_ATTEMPTS} races with other writers; try again`);
  }

  private audit(tx: Tx, now: number, actor: string, action: AuditAction, target: string, summary: Record<string, unknown>): void {
    const entry: AuditEntry = { id: idFor('aud', undefined, now), at: now, actor, action, target, summary };
    tx.s.push([this.p + 'a:' + entry.id, JSON.stringify(entry)]);
    tx.za.push([this.p + 'ix:a', '0', entry.id]);
  }

  private async page<T extends { id: string }>(index: string, recordPrefix: string, q: PageQuery | undefined, map: (raw: string, used: string) => T): Promise<Page<T>> {
    const limit = pageLimit(q);
    const after = decodeCursor(q?.cursor);
    const flat = await this.io(() => this.r.idPage(index, after === null ? '-' : '(' + after, limit + 1, recordPrefix, recordPrefix === this.p + 'k:' ? this.p + 'k:used' : ''));
    const items: T[] = [];
    let last: string | null = null;
    let more = false;
    for (let i = 0; i < flat.length; i += 3) {
      if (i / 3 === limit) {
        more = true;
        break;
      }
      last = flat[i]!;
      if (flat[i + 1] !== '') items.push(map(flat[i + 1]!, flat[i + 2]!));
    }
    return { items, nextCursor: more && last !== null ? encodeCursor(last) : null };
  }

  // ---------------------------------------------------------------- keys of records and their indexes

  private toKey(raw: string, used: string | null): ApiKeyRecord {
    const k = parse<ApiKeyRecord>(raw);
    k.lastUsedAt = used === null || used === '' ? null : Number(used);
    k.rotatedAt ??= null;
    return k;
  }

  /** The stored JSON of a key (lastUsedAt lives in k:used). */
  private keyJson(k: ApiKeyRecord): string {
    const { lastUsedAt: _, ...rest } = k;
    return JSON.stringify(rest);
  }

  private async readKey(id: string): Promise<{ raw: string; key: ApiKeyRecord } | null> {
    const [raw, used] = await this.io(() => Promise.all([this.r.get(this.p + 'k:' + id), this.r.hget(this.p + 'k:used', id)]));
    return raw === null ? null : { raw, key: this.toKey(raw, used) };
  }

  /** Adds the writes that store `k` (new or changed) and keep its indexes right. */
  private putKey(tx: Tx, k: ApiKeyRecord): void {
    tx.s.push([this.p + 'k:' + k.id, this.keyJson(k)]);
    tx.s.push([this.p + 'kh:' + k.hash, k.id]);
    tx.za.push([this.p + 'ix:k', '0', k.id]);
    tx.za.push([this.p + 'ix:k:c:' + k.consumerId, '0', k.id]);
    const ends = [k.expiresAt, k.graceUntil].filter((x): x is number => x !== null);
    if (ends.length > 0) tx.za.push([this.p + 'ix:k:exp', String(Math.min(...ends)), k.id]);
    else tx.zr.push([this.p + 'ix:k:exp', k.id]);
    if (k.revokedAt !== null) tx.za.push([this.p + 'ix:k:rev', String(k.revokedAt), k.id]);
  }

  private dropKey(tx: Tx, k: ApiKeyRecord): void {
    tx.d.push(this.p + 'k:' + k.id, this.p + 'kh:' + k.hash);
    tx.zr.push([this.p + 'ix:k', k.id], [this.p + 'ix:k:c:' + k.consumerId, k.id], [this.p + 'ix:k:exp', k.id], [this.p + 'ix:k:rev', k.id]);
    tx.hd.push([this.p + 'k:used', k.id]);
  }

  private putConsumer(tx: Tx, c: Consumer, before: Consumer | null): void {
    tx.s.push([this.p + 'c:' + c.id, JSON.stringify(c)]);
    tx.za.push([this.p + 'ix:c', '0', c.id]);
    if (before !== null && before.tenant !== null && before.tenant !== c.tenant) tx.zr.push([this.p + 'ix:c:t:' + before.tenant, c.id]);
    if (c.tenant !== null) tx.za.push([this.p + 'ix:c:t:' + c.tenant, '0', c.id]);
    for (const g of before?.groups ?? []) if (!c.groups.includes(g)) tx.zr.push([this.p + 'ix:g:m:' + g, c.id]);
    for (const g of c.groups) tx.za.push([this.p + 'ix:g:m:' + g, '0', c.id]);
  }

  /** Checks (in the transaction) that every group exists. */
  private async requireGroups(tx: Tx, groups: string[]): Promise<void> {
    for (const g of groups) {
      const raw = await this.get(this.p + 'g:' + g);
      if (raw === null) throw new StoreError('invalid', `groups: no group with id ${JSON.stringify(g)}; give a group's id (not its name), or create it first`);
      tx.same(this.p + 'g:' + g, raw);
    }
  }

  /** The consumer's keys, read for a write: their index is checked unchanged at commit. */
  private async keysOf(tx: Tx, consumerId: string): Promise<ApiKeyRecord[]> {
    const ids = await this.members(this.p + 'ix:k:c:' + consumerId);
    tx.sameMembers(this.p + 'ix:k:c:' + consumerId, ids);
    const out: ApiKeyRecord[] = [];
    for (const id of ids) {
      const k = await this.readKey(id);
      if (k === null) continue;
      tx.same(this.p + 'k:' + id, k.raw);
      out.push(k.key);
    }
    return out;
  }

  private newKey(tx: Tx, consumerId: string, input: NewKey, now: number, rotatedFrom: string | null): CreatedKey {
    if (typeof input.name !== 'string' || input.name === '') throw new StoreError('invalid', 'key name: a non-empty string');
    const key = generateKey(this.keyEnv);
    const record: ApiKeyRecord = {
      id: idFor('key', input.id, now), consumerId, name: input.name, hash: hashKey(this.opts.pepper, key), prefix: keyDisplayPrefix(key),
      scopes: [...(input.scopes ?? [])], restrictions: fullRestrictions(input.restrictions), expiresAt: checkTime('expiresAt', input.expiresAt),
      createdAt: now, lastUsedAt: null, status: 'active', revokedAt: null, rotatedFrom, graceUntil: null, rotatedAt: null,
    };
    tx.absent(this.p + 'k:' + record.id, `key ${record.id} exists`);
    tx.absent(this.p + 'kh:' + record.hash, 'key hash collision; try again');
    this.putKey(tx, record);
    return { key, record };
  }

  // ---------------------------------------------------------------- consumers

  async createConsumer(input: NewConsumer, ctx: WriteContext): Promise<{ consumer: Consumer; keys: CreatedKey[] }> {
    const now = this.clock();
    const consumer = newConsumer(input, now);
    return this.write(async (tx) => {
      tx.absent(this.p + 'c:' + consumer.id, `consumer ${consumer.id} exists`);
      await this.requireGroups(tx, consumer.groups);
      this.putConsumer(tx, consumer, null);
      const keys = (input.keys ?? []).map((k) => this.newKey(tx, consumer.id, k, now, null));
      const ids = keys.map((k) => k.record.id);
      if (new Set(ids).size !== ids.length) throw new StoreError('conflict', 'two keys with one id in one write');
      this.audit(tx, now, ctx.actor, 'consumer.create', `consumer:${consumer.id}`, {
        name: consumer.name, status: consumer.status, tenant: consumer.tenant, plan: consumer.plan, groups: consumer.groups,
        keys: keys.map((k) => ({ id: k.record.id, prefix: k.record.prefix })),
      });
      tx.changes.push({ kind: 'consumer', op: 'create', ids: [consumer.id], keyHashes: [], at: now });
      if (keys.length > 0) tx.changes.push({ kind: 'key', op: 'create', ids, keyHashes: keys.map((k) => k.record.hash), at: now });
      return { consumer, keys };
    });
  }

  /**
   * The stored JSON of record `prefix + id` for a write that changes it: read,
   * and checked unchanged when the write commits (tx.same). Throws
   * StoreError('not_found') naming `what` when there is none.
   */
  private async loadForUpdate(tx: Tx, prefix: string, id: string, what: string): Promise<string> {
    const raw = await this.get(this.p + prefix + id);
    if (raw === null) throw new StoreError('not_found', `no ${what} ${id}`);
    tx.same(this.p + prefix + id, raw);
    return raw;
  }

  async getConsumer(id: string): Promise<Consumer | null> {
    const raw = await this.get(this.p + 'c:' + id);
    return raw === null ? null : parse<Consumer>(raw);
  }

  async updateConsumer(id: string, patch: ConsumerPatch, ctx: WriteContext): Promise<Consumer> {
    const now = this.clock();
    return this.write(async (tx) => {
      const raw = await this.loadForUpdate(tx, 'c:', id, 'consumer');
      const before = parse<Consumer>(raw);
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
        await this.requireGroups(tx, after.groups);
      }
      this.putConsumer(tx, after, before);
      const changed = Object.keys(patch).filter((k) => JSON.stringify((before as unknown as Record<string, unknown>)[k]) !== JSON.stringify((after as unknown as Record<string, unknown>)[k]));
      this.audit(tx, now, ctx.actor, 'consumer.update', `consumer:${id}`, {
        changed, ...(changed.includes('status') ? { status: { from: before.status, to: after.status } } : {}),
      });
      const ids = await this.members(this.p + 'ix:k:c:' + id);
      tx.sameMembers(this.p + 'ix:k:c:' + id, ids);
      const hashes: string[] = [];
      for (const kid of ids) {
        const k = await this.readKey(kid);
        if (k !== null) hashes.push(k.key.hash);
      }
      tx.changes.push({ kind: 'consumer', op: 'update', ids: [id], keyHashes: hashes, at: now });
      return after;
    });
  }

  async deleteConsumer(id: string, ctx: WriteContext): Promise<{ consumer: Consumer; keys: ApiKeyRecord[]; grants: Grant[] }> {
    const now = this.clock();
    return this.write(async (tx) => {
      const raw = await this.loadForUpdate(tx, 'c:', id, 'consumer');
      const consumer = parse<Consumer>(raw);
      const keys = await this.keysOf(tx, id);
      const grants = await this.grantsOfSubject(tx, 'consumer', id);
      for (const k of keys) this.dropKey(tx, k);
      for (const g of grants) this.dropGrant(tx, g);
      tx.d.push(this.p + 'c:' + id);
      tx.zr.push([this.p + 'ix:c', id]);
      if (consumer.tenant !== null) tx.zr.push([this.p + 'ix:c:t:' + consumer.tenant, id]);
      for (const g of consumer.groups) tx.zr.push([this.p + 'ix:g:m:' + g, id]);
      this.audit(tx, now, ctx.actor, 'consumer.delete', `consumer:${id}`, {
        name: consumer.name, keys: keys.map((k) => ({ id: k.id, prefix: k.prefix })), grants: grants.map((g) => g.id),
      });
      tx.changes.push({ kind: 'consumer', op: 'delete', ids: [id], keyHashes: keys.map((k) => k.hash), at: now });
      if (keys.length > 0) tx.changes.push({ kind: 'key', op: 'delete', ids: keys.map((k) => k.id), keyHashes: keys.map((k) => k.hash), at: now });
      if (grants.length > 0) tx.changes.push({ kind: 'grant', op: 'delete', ids: grants.map((g) => g.id), keyHashes: [], at: now });
      return { consumer, keys, grants };
    });
  }

  async listConsumers(q?: PageQuery & { tenant?: string }): Promise<Page<Consumer>> {
    const index = q?.tenant !== undefined ? this.p + 'ix:c:t:' + q.tenant : this.p + 'ix:c';
    return this.page(index, this.p + 'c:', q, (raw) => parse<Consumer>(raw));
  }

  // ---------------------------------------------------------------- keys

  async createKey(consumerId: string, input: NewKey, ctx: WriteContext): Promise<CreatedKey> {
    const now = this.clock();
    return this.write(async (tx) => {
      const raw = await this.get(this.p + 'c:' + consumerId);
      if (raw === null) throw new StoreError('not_found', `no consumer ${consumerId}`);
      tx.same(this.p + 'c:' + consumerId, raw);
      requireNotRevoked(consumerId, parse<Consumer>(raw).status);
      const created = this.newKey(tx, consumerId, input, now, null);
      this.audit(tx, now, ctx.actor, 'key.create', `key:${created.record.id}`, keySummary(created.record));
      tx.changes.push({ kind: 'key', op: 'create', ids: [created.record.id], keyHashes: [created.record.hash], at: now });
      return created;
    });
  }

  async getKey(id: string): Promise<ApiKeyRecord | null> {
    return (await this.readKey(id))?.key ?? null;
  }

  async updateKey(id: string, patch: KeyPatch, ctx: WriteContext): Promise<ApiKeyRecord> {
    const now = this.clock();
    return this.write(async (tx) => {
      const r = await this.readKey(id);
      if (r === null) throw new StoreError('not_found', `no key ${id}`);
      tx.same(this.p + 'k:' + id, r.raw);
      const k = r.key;
      if (patch.name !== undefined) {
        if (typeof patch.name !== 'string' || patch.name === '') throw new StoreError('invalid', 'key name: a non-empty string');
        k.name = patch.name;
      }
      if (patch.scopes !== undefined) k.scopes = [...patch.scopes];
      if (patch.restrictions !== undefined) k.restrictions = fullRestrictions(patch.restrictions);
      if (patch.expiresAt !== undefined) k.expiresAt = checkTime('expiresAt', patch.expiresAt);
      this.putKey(tx, k);
      this.audit(tx, now, ctx.actor, 'key.update', `key:${id}`, { prefix: k.prefix, changed: Object.keys(patch) });
      tx.changes.push({ kind: 'key', op: 'update', ids: [id], keyHashes: [k.hash], at: now });
      return k;
    });
  }

  async lookupKey(hash: string): Promise<KeyLookup | null> {
    const r = await this.io(() => this.r.idLookup(this.p, hash));
    if (r === null || r[1] === '') return null;
    const c = parse<Consumer>(r[1]);
    return {
      key: this.toKey(r[0], r[2]),
      consumer: { id: c.id, name: c.name, status: c.status, tenant: c.tenant, plan: c.plan, groups: c.groups },
    };
  }

  async listKeys(q?: PageQuery & { consumerId?: string }): Promise<Page<ApiKeyRecord>> {
    const index = q?.consumerId !== undefined ? this.p + 'ix:k:c:' + q.consumerId : this.p + 'ix:k';
    return this.page(index, this.p + 'k:', q, (raw, used) => this.toKey(raw, used));
  }

  async rotateKey(id: string, opts: { graceMs?: number }, ctx: WriteContext): Promise<CreatedKey & { old: ApiKeyRecord }> {
    const now = this.clock();
    const graceMs = opts.graceMs ?? DEFAULT_GRACE_MS;
    if (!Number.isFinite(graceMs) || graceMs < 0 || now + graceMs > MAX_TIME_MS) throw new StoreError('invalid', `graceMs ${graceMs}: a duration >= 0 in ms, ending by ${MAX_TIME_MS} ms since the epoch`);
    return this.write(async (tx) => {
      const r = await this.readKey(id);
      if (r === null) throw new StoreError('not_found', `no key ${id}`);
      tx.same(this.p + 'k:' + id, r.raw);
      const old = r.key;
      if (old.status === 'revoked') throw new StoreError('conflict', `key ${id} is revoked; create a new key instead`);
      if (old.graceUntil !== null) throw new StoreError('conflict', `key ${id} was already rotated; rotate its replacement instead`);
      const craw = await this.get(this.p + 'c:' + old.consumerId);
      tx.same(this.p + 'c:' + old.consumerId, craw);
      if (craw !== null) requireNotRevoked(old.consumerId, parse<Consumer>(craw).status);
      old.graceUntil = now + graceMs;
      old.rotatedAt = now;
      this.putKey(tx, old);
      const created = this.newKey(tx, old.consumerId, { name: old.name, scopes: old.scopes, restrictions: old.restrictions, expiresAt: old.expiresAt }, now, id);
      this.audit(tx, now, ctx.actor, 'key.rotate', `key:${id}`, { prefix: old.prefix, newKey: { id: created.record.id, prefix: created.record.prefix }, graceUntil: old.graceUntil });
      tx.changes.push({ kind: 'key', op: 'update', ids: [id], keyHashes: [old.hash], at: now });
      tx.changes.push({ kind: 'key', op: 'create', ids: [created.record.id], keyHashes: [created.record.hash], at: now });
      return { ...created, old };
    });
  }

  async revokeKey(id: string, ctx: WriteContext): Promise<ApiKeyRecord> {
    const now = this.clock();
    return this.write(async (tx) => {
      const r = await this.readKey(id);
      if (r === null) throw new StoreError('not_found', `no key ${id}`);
      tx.same(this.p + 'k:' + id, r.raw);
      const k = r.key;
      if (k.status === 'revoked') return k;
      k.status = 'revoked';
      k.revokedAt = now;
      this.putKey(tx, k);
      this.audit(tx, now, ctx.actor, 'key.revoke', `key:${id}`, { prefix: k.prefix, consumerId: k.consumerId });
      tx.changes.push({ kind: 'key', op: 'update', ids: [id], keyHashes: [k.hash], at: now });
      return k;
    });
  }

  async purgeExpired(now: number, ctx: WriteContext, opts: PurgeOptions = {}): Promise<ApiKeyRecord[]> {
    return this.write(async (tx) => {
      const ids = new Set(await this.io(() => this.r.zrangebyscore(this.p + 'ix:k:exp', '-inf', String(now))));
      if (opts.revokedBefore !== undefined) {
        for (const id of await this.io(() => this.r.zrangebyscore(this.p + 'ix:k:rev', '-inf', '(' + opts.revokedBefore))) ids.add(id);
      }
      const keys: ApiKeyRecord[] = [];
      for (const id of [...ids].sort()) {
        const r = await this.readKey(id);
        if (r === null) continue;
        const k = r.key;
        const due = (k.expiresAt !== null && k.expiresAt <= now) || (k.graceUntil !== null && k.graceUntil <= now)
          || (opts.revokedBefore !== undefined && k.revokedAt !== null && k.revokedAt < opts.revokedBefore);
        if (!due) continue;
        tx.same(this.p + 'k:' + id, r.raw);
        this.dropKey(tx, k);
        keys.push(k);
      }
      if (keys.length === 0) return keys;
      this.audit(tx, now, ctx.actor, 'key.purge', 'key:*', { count: keys.length, keys: keys.map((k) => ({ id: k.id, prefix: k.prefix, consumerId: k.consumerId })) });
      tx.changes.push({ kind: 'key', op: 'delete', ids: keys.map((k) => k.id), keyHashes: keys.map((k) => k.hash), at: now });
      return keys;
    });
  }

  async touchKeys(batch: ReadonlyArray<{ id: string; at: number }>): Promise<number> {
    if (checkTouchBatch(batch) === 0) return 0;
    const args: string[] = [];
    for (const { id, at } of batch) args.push(id, String(Math.trunc(at)));
    return this.io(() => this.r.idTouch(this.p, ...args));
  }

  // ---------------------------------------------------------------- groups

  async createGroup(input: NewGroup, ctx: WriteContext): Promise<Group> {
    const now = this.clock();
    if (typeof input.name !== 'string' || input.name === '') throw new StoreError('invalid', 'group name: a non-empty string');
    const g: Group = { id: idFor('grp', input.id, now), name: input.name, description: input.description ?? null, createdAt: now, updatedAt: now };
    return this.write(async (tx) => {
      tx.absent(this.p + 'g:' + g.id, `group ${g.id} exists`);
      tx.s.push([this.p + 'g:' + g.id, JSON.stringify(g)]);
      tx.za.push([this.p + 'ix:g', '0', g.id]);
      this.audit(tx, now, ctx.actor, 'group.create', `group:${g.id}`, { name: g.name });
      tx.changes.push({ kind: 'group', op: 'create', ids: [g.id], keyHashes: [], at: now });
      return g;
    });
  }

  async getGroup(id: string): Promise<Group | null> {
    const raw = await this.get(this.p + 'g:' + id);
    return raw === null ? null : parse<Group>(raw);
  }

  async updateGroup(id: string, patch: GroupPatch, ctx: WriteContext): Promise<Group> {
    const now = this.clock();
    return this.write(async (tx) => {
      const raw = await this.loadForUpdate(tx, 'g:', id, 'group');
      const g = { ...parse<Group>(raw), updatedAt: now };
      if (patch.name !== undefined) {
        if (typeof patch.name !== 'string' || patch.name === '') throw new StoreError('invalid', 'group name: a non-empty string');
        g.name = patch.name;
      }
      if (patch.description !== undefined) g.description = patch.description;
      tx.s.push([this.p + 'g:' + id, JSON.stringify(g)]);
      this.audit(tx, now, ctx.actor, 'group.update', `group:${id}`, { changed: Object.keys(patch) });
      tx.changes.push({ kind: 'group', op: 'update', ids: [id], keyHashes: [], at: now });
      return g;
    });
  }

  async deleteGroup(id: string, ctx: WriteContext): Promise<{ group: Group; grants: Grant[]; members: string[] }> {
    const now = this.clock();
    return this.write(async (tx) => {
      const raw = await this.loadForUpdate(tx, 'g:', id, 'group');
      const members = await this.members(this.p + 'ix:g:m:' + id);
      tx.sameMembers(this.p + 'ix:g:m:' + id, members);
      const hashes: string[] = [];
      for (const cid of members) {
        const craw = await this.get(this.p + 'c:' + cid);
        if (craw === null) continue;
        tx.same(this.p + 'c:' + cid, craw);
        const c = parse<Consumer>(craw);
        tx.s.push([this.p + 'c:' + cid, JSON.stringify({ ...c, groups: c.groups.filter((x) => x !== id), updatedAt: now })]);
        for (const k of await this.keysOf(tx, cid)) hashes.push(k.hash);
      }
      const grants = await this.grantsOfSubject(tx, 'group', id);
      for (const gr of grants) this.dropGrant(tx, gr);
      tx.d.push(this.p + 'g:' + id, this.p + 'ix:g:m:' + id);
      tx.zr.push([this.p + 'ix:g', id]);
      this.audit(tx, now, ctx.actor, 'group.delete', `group:${id}`, { name: parse<Group>(raw).name, members, grants: grants.map((g) => g.id) });
      tx.changes.push({ kind: 'group', op: 'delete', ids: [id], keyHashes: [], at: now });
      if (members.length > 0) tx.changes.push({ kind: 'consumer', op: 'update', ids: members, keyHashes: hashes, at: now });
      if (grants.length > 0) tx.changes.push({ kind: 'grant', op: 'delete', ids: grants.map((g) => g.id), keyHashes: [], at: now });
      return { group: parse<Group>(raw), grants, members };
    });
  }

  async listGroups(q?: PageQuery): Promise<Page<Group>> {
    return this.page(this.p + 'ix:g', this.p + 'g:', q, (raw) => parse<Group>(raw));
  }

  // ---------------------------------------------------------------- grants

  private subjectIndex(kind: string, id: string): string {
    return `${this.p}ix:gr:s:${kind}:${id}`;
  }

  /** The subject's grants, read for a write: their index is checked unchanged at commit. */
  private async grantsOfSubject(tx: Tx, kind: 'consumer' | 'group', id: string): Promise<Grant[]> {
    const ids = await this.members(this.subjectIndex(kind, id));
    tx.sameMembers(this.subjectIndex(kind, id), ids);
    const out: Grant[] = [];
    for (const gid of ids) {
      const raw = await this.get(this.p + 'gr:' + gid);
      if (raw === null) continue;
      tx.same(this.p + 'gr:' + gid, raw);
      out.push(parse<Grant>(raw));
    }
    return out;
  }

  private dropGrant(tx: Tx, g: Grant): void {
    tx.d.push(this.p + 'gr:' + g.id);
    tx.zr.push([this.p + 'ix:gr', g.id], [this.subjectIndex(g.subject.kind, g.subject.id), g.id]);
  }

  async createGrant(input: NewGrant, ctx: WriteContext): Promise<Grant> {
    const now = this.clock();
    const kind = input.subject?.kind;
    if (kind !== 'consumer' && kind !== 'group') throw new StoreError('invalid', 'grant subject.kind: consumer or group');
    if (typeof input.routeId !== 'string' || input.routeId === '') throw new StoreError('invalid', 'grant routeId: a route id');
    const g: Grant = { id: idFor('gra', input.id, now), subject: { kind, id: input.subject.id }, routeId: input.routeId, methods: normalizeMethods(input.methods), createdAt: now };
    return this.write(async (tx) => {
      const subjectKey = this.p + (kind === 'consumer' ? 'c:' : 'g:') + g.subject.id;
      const raw = await this.get(subjectKey);
      if (raw === null) throw new StoreError('not_found', `no ${kind} ${g.subject.id}`);
      tx.same(subjectKey, raw);
      tx.absent(this.p + 'gr:' + g.id, `grant ${g.id} exists`);
      tx.s.push([this.p + 'gr:' + g.id, JSON.stringify(g)]);
      tx.za.push([this.p + 'ix:gr', '0', g.id], [this.subjectIndex(kind, g.subject.id), '0', g.id]);
      this.audit(tx, now, ctx.actor, 'grant.create', `grant:${g.id}`, { subject: g.subject, routeId: g.routeId, methods: g.methods });
      tx.changes.push({ kind: 'grant', op: 'create', ids: [g.id], keyHashes: [], at: now });
      return g;
    });
  }

  async getGrant(id: string): Promise<Grant | null> {
    const raw = await this.get(this.p + 'gr:' + id);
    return raw === null ? null : parse<Grant>(raw);
  }

  async deleteGrant(id: string, ctx: WriteContext): Promise<Grant> {
    const now = this.clock();
    return this.write(async (tx) => {
      const raw = await this.loadForUpdate(tx, 'gr:', id, 'grant');
      const g = parse<Grant>(raw);
      this.dropGrant(tx, g);
      this.audit(tx, now, ctx.actor, 'grant.delete', `grant:${id}`, { subject: g.subject, routeId: g.routeId });
      tx.changes.push({ kind: 'grant', op: 'delete', ids: [id], keyHashes: [], at: now });
      return g;
    });
  }

  async listGrants(q?: PageQuery & { subject?: { kind: 'consumer' | 'group'; id: string } }): Promise<Page<Grant>> {
    const index = q?.subject !== undefined ? this.subjectIndex(q.subject.kind, q.subject.id) : this.p + 'ix:gr';
    return this.page(index, this.p + 'gr:', q, (raw) => parse<Grant>(raw));
  }

  async grantsForConsumer(consumerId: string): Promise<Grant[]> {
    const c = await this.getConsumer(consumerId);
    if (c === null) return [];
    const subjects: Array<['consumer' | 'group', string]> = [['consumer', consumerId], ...c.groups.map((g): ['group', string] => ['group', g])];
    const ids = new Set<string>();
    for (const [kind, id] of subjects) for (const gid of await this.members(this.subjectIndex(kind, id))) ids.add(gid);
    if (ids.size === 0) return [];
    const sorted = [...ids].sort();
    const raws = await this.io(() => this.r.mget(sorted.map((id) => this.p + 'gr:' + id)));
    return raws.filter((x): x is string => x !== null).map((raw) => parse<Grant>(raw));
  }

  async listAudit(q?: PageQuery): Promise<Page<AuditEntry>> {
    return this.page(this.p + 'ix:a', this.p + 'a:', q, (raw) => parse<AuditEntry>(raw));
  }

  onChange(cb: (c: ChangeRecord) => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.r.quit();
    } catch {
      this.r.disconnect();
    }
  }
}
