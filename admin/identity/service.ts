/**
 * The identity service of the admin thread (issue 12): owns the identity
 * store (store/sqlite.ts or store/redis.ts, per `store`), answers the
 * workers' key lookups (common/identity/wire.ts), tells them what to drop
 * from their caches after every change (and other instances, through Redis
 * pub/sub), writes keys' last use in batches and removes expired keys on a
 * schedule. The admin API (api/) and the auth_request listener use the same
 * store (getStore) and lookups (lookup).
 *
 * Opening. start() opens the store at once when the config uses identity
 * (a route with `auth`, or `authz`), so the first request does not pay for
 * it, and resolves with the outcome (the admin thread awaits it before
 * reporting ready, and makes a permanent failure fatal); otherwise it opens
 * at the first getStore() or lookup() (a gateway without auth never
 * creates a database file). The secrets come from `secrets`
 * (common/identity/keys.ts loadSecrets: generated under .turnpike/ when
 * absent, said once). A store that cannot open is said in a warning with
 * what to do (an error when it is permanent: another pepper's store, a
 * newer schema); lookups then answer `unavailable`, and opening is tried
 * again at most once per OPEN_RETRY_MS. While the store is down for any
 * reason, storeWarning says so (GET /admin/status lists it).
 *
 * Pepper guard. The store keeps a check of the pepper its keys were hashed
 * with (store/types.ts pepperCheck) and refuses an open with another one.
 * A Redis that loses its data (FLUSHALL, a restart without persistence)
 * loses that check too, and the first instance to open or verify the
 * empty store claims it. So the check is verified again (store.verifyPepper,
 * which claims it when missing) before a freshly opened store is adopted,
 * whenever the change feed (re)connects, and every PEPPER_CHECK_MS; the
 * Redis store's writes check it too. A store found holding another
 * pepper's check is closed: an error in the log names the check found and
 * what to do, lookups answer `unavailable`, workers drop their caches, and
 * it is opened again (and so checked again) at most once per
 * OPEN_RETRY_MS. Of two instances with different peppers after a data
 * loss, exactly one serves.
 *
 * Lookups (lookup(), and {t:'key'} from each attached worker line):
 *   - a malformed key (keys.ts checkKeyFormat) is `unknown` without a read;
 *   - hash = HMAC(pepper, key); a bounded negative cache (identity.cache
 *     negativeSize / negativeTtlMs) answers a hash recently found unknown
 *     without a read, so a flood of one bad key from N workers reads the
 *     store once;
 *   - concurrent lookups of one hash share one store read (coalescing);
 *   - a change seen while a read was in flight makes the read start again
 *     (at most MAX_READS times), so an answer posted after an invalidation
 *     never carries what that invalidation removed;
 *   - store errors are `unavailable` with a message for the log (never the
 *     key); lookup() never throws.
 *
 * Invalidation. Every ChangeRecord of the store (store.onChange) becomes one
 * {t:'inval'} per write on every attached worker line: the key hashes it
 * names, or null (drop everything) for grant and group changes and key
 * changes that name no hash. Creations are sent too: a worker (and this
 * thread) may remember the new key's hash as unknown.
 *
 * Between instances (store.kind redis): the Redis store publishes each
 * committed write's ChangeRecords (a JSON array) on `<store prefix>changes`
 * in the same Lua script as the write itself, so no committed change can
 * miss its message. A dedicated subscriber connection receives them. A
 * change this instance made arrives twice (store.onChange and the channel,
 * in either order): it is broadcast at the first arrival and recognised,
 * and skipped, at the second. After the subscriber reconnects (messages may have been missed)
 * the workers drop everything and the negative cache is cleared. Delay: one
 * Redis round trip plus a MessagePort hop, far under the 1 s target.
 *
 * Last use. {t:'used', batch: [keyId, atMs, ...]} from workers is merged
 * into keyId -> max(at) and written with store.touchKeys every
 * identity.lastUsedFlushMs (chunks of MAX_TOUCH_BATCH), never per request.
 *
 * Purge. Every identity.purgeIntervalMs (first run one interval after the
 * store opened) store.purgeExpired removes keys past their expiry or
 * rotation grace; the log says how many and which (ids and display
 * prefixes, never hashes or keys).
 */
import type { MessagePort } from 'node:worker_threads';
import { Redis } from 'ioredis';
import type { GatewayConfig } from '../../common/config/types.js';
import { usesIdentity } from '../../common/config/identity.js';

export { usesIdentity };
import { checkKeyFormat, hashKey, loadSecrets, SecretError } from '../../common/identity/keys.js';
import type { IdentityToAdmin, IdentityToWorker, KeyAnswer, KeyRecordAnswer } from '../../common/identity/wire.js';
import { log } from '../../common/log.js';
import { DEFAULT_KEY_PREFIX, openRedisStore } from './store/redis.js';
import { openSqliteStore } from './store/sqlite.js';
import { MAX_TOUCH_BATCH, StoreError, type ChangeRecord, type IdentityStore } from './store/types.js';

/** Test hooks (see lookup): only with TURNPIKE_TEST_HOOKS=1. */
const TEST_HOOKS = process.env.TURNPIKE_TEST_HOOKS === '1';
/** A store that failed to open (or was closed by the pepper guard) is tried again at most this often (ms). */
export const OPEN_RETRY_MS = 1_000;
/** How often an open store's pepper check is verified again (ms; store.verifyPepper). */
export const PEPPER_CHECK_MS = 30_000;
/** Store reads of one lookup when changes keep arriving while it reads. */
export const MAX_READS = 3;
/** Distinct keys whose last use waits for the next flush; past it, a flush starts at once. */
export const MAX_PENDING_USED = 100_000;
/** Keys named one by one in the purge log line (the count is always exact). */
export const PURGE_LOG_KEYS = 100;
/** A failing store is warned about at most this often (ms). */
const WARN_EVERY_MS = 60_000;
/** How long a change already broadcast is remembered, to skip its second arrival (ms). */
const SEEN_CHANGE_TTL_MS = 10_000;
/** Changes remembered for that. */
const SEEN_CHANGE_MAX = 10_000;
/** Redis prefix of the identity store's keys, after `redis.keyPrefix` (default `tp:` -> `tp:id:`). */
export const REDIS_STORE_PREFIX_SUFFIX = 'id:';

/** One metric family as admin/metrics.ts MetricsView `extra` takes it. */
export interface IdentityMetric {
  name: string;
  help: string;
  type: string;
  collect: () => { labels: Record<string, string | number>; value: number }[];
}

/** Counters of the service (metrics, tests). */
export interface IdentityStats {
  /** store.lookupKey calls. */
  storeLookups: number;
  /** lookup() answers by outcome; `negativeCached`: unknown, answered by the negative cache without a read. */
  found: number;
  unknown: number;
  unavailable: number;
  negativeCached: number;
  /** {t:'inval'} broadcasts (one per write or pub/sub message, whatever the number of workers). */
  invalidations: number;
  /** Keys removed by the purge job. */
  purged: number;
  /** touchKeys calls made. */
  touchCalls: number;
}


/** The URL without its password, for logs. */
function safeUrl(url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');
}

/** A change's identity in the pub/sub echo check. */
function changeSig(c: ChangeRecord): string {
  return `${c.kind}|${c.op}|${c.at}|${c.ids.join(',')}`;
}

function isChangeRecord(v: unknown): v is ChangeRecord {
  if (v === null || typeof v !== 'object') return false;
  const c = v as Record<string, unknown>;
  return typeof c['kind'] === 'string' && typeof c['op'] === 'string' && Array.isArray(c['ids']) && Array.isArray(c['keyHashes'])
    && (c['keyHashes'] as unknown[]).every((h) => typeof h === 'string');
}

/**
 * What a write means for the workers' caches: `hashes` to drop (null: all).
 * Null when nothing cached can be affected (a consumer change naming no key).
 */
function invalidationOf(records: readonly ChangeRecord[]): { hashes: string[] | null } | null {
  let all = false;
  const hashes = new Set<string>();
  for (const c of records) {
    if (c.kind === 'grant' || c.kind === 'group') all = true;
    else if (c.keyHashes.length > 0) for (const h of c.keyHashes) hashes.add(h);
    else if (c.kind === 'key') all = true; // a key change naming no hash: be safe
    // a consumer record without key hashes: no key of it is cached anywhere
  }
  if (all) return { hashes: null };
  return hashes.size > 0 ? { hashes: [...hashes] } : null;
}

type Line = { port: MessagePort; on: (msg: unknown) => void };

/** Options of IdentityService (tests shorten the period). */
export interface IdentityServiceOptions {
  /** Period of the pepper check of an open store, ms; default PEPPER_CHECK_MS. */
  pepperCheckMs?: number;
}

/**
 * start()'s outcome: `open`; `lazy` (the config does not use identity: the
 * store opens at first use); or `failed` with the error, `permanent` when
 * retrying cannot help (StoreError.permanent: another pepper's store, a
 * newer schema): the admin thread then fails the start with its message.
 */
export type StartOutcome = { state: 'open' } | { state: 'lazy' } | { state: 'failed'; error: StoreError; permanent: boolean };

export class IdentityService {
  private config: GatewayConfig;
  private opening: Promise<IdentityStore> | null = null;
  /** The store once open (null before, or after close). */
  private store: IdentityStore | null = null;
  private pepper: Buffer | null = null;
  private lastOpenError: { at: number; error: StoreError } | null = null;
  private lastWarnAt = 0;
  private closed = false;

  private readonly lines: (Line | null)[] = [];
  /** hash -> expiry (ms since the epoch); Map order = insertion order, oldest evicted first. */
  private readonly negative = new Map<string, number>();
  /** hash -> the read in flight. */
  private readonly inflight = new Map<string, Promise<KeyAnswer>>();
  /** Bumped by every invalidation: a read that saw it change reads again. */
  private generation = 0;

  /** keyId -> last use (ms). */
  private pending = new Map<string, number>();
  private flushing: Promise<void> | null = null;
  private flushTimer: NodeJS.Timeout | null = null;
  private purgeTimer: NodeJS.Timeout | null = null;
  private timerPeriods = { flush: 0, purge: 0 };

  private unsubscribe: (() => void) | null = null;
  private sub: Redis | null = null;
  private subReady = false;
  private subWasReady = false;
  /** Local change records not yet broadcast (a write's records go out as one message). */
  private queued: ChangeRecord[] = [];
  /** Signatures of changes already broadcast -> expiry (Redis store only): a change of this instance arrives twice. */
  private readonly seen = new Map<string, number>();
  private storeFailing = false;
  /** The last store failure while open (for storeWarning). */
  private lastFailure = '';
  private pepperTimer: NodeJS.Timeout | null = null;
  /** A check again after one that could not reach the store (checkStore). */
  private recheckTimer: NodeJS.Timeout | null = null;
  private readonly pepperCheckMs: number;
  /** A verification in flight (checkStore). */
  private checking: Promise<boolean> | null = null;

  private readonly counters: IdentityStats = {
    storeLookups: 0, found: 0, unknown: 0, unavailable: 0, negativeCached: 0, invalidations: 0, purged: 0, touchCalls: 0,
  };

  constructor(config: GatewayConfig, opts: IdentityServiceOptions = {}) {
    this.config = config;
    this.pepperCheckMs = opts.pepperCheckMs ?? PEPPER_CHECK_MS;
  }

  /**
   * Opens the store now when the config uses identity (usesIdentity); else
   * it opens at first use. Resolves with the outcome (StartOutcome); never
   * rejects (a failure was logged; lookups answer unavailable).
   */
  start(): Promise<StartOutcome> {
    if (!usesIdentity(this.config)) return Promise.resolve({ state: 'lazy' });
    return this.getStore().then(
      (): StartOutcome => ({ state: 'open' }),
      (e: unknown): StartOutcome => {
        const error = e instanceof StoreError ? e : new StoreError('unavailable', (e as Error).message);
        return { state: 'failed', error, permanent: error.permanent };
      },
    );
  }

  /** A new running config (reload). A changed `store`, `secrets` or `redis` takes effect at the next start; timers follow at once. */
  configure(config: GatewayConfig): void {
    this.config = config;
    this.trimNegative();
    if (this.store !== null) this.startTimers();
    else if (!this.closed && usesIdentity(config)) void this.start();
  }

  /** Default grace of a rotation that names none (identity.rotationGraceMs, ms). */
  get rotationGraceMs(): number {
    return this.config.identity.rotationGraceMs;
  }

  /** Counters so far (a copy). */
  stats(): IdentityStats {
    return { ...this.counters };
  }

  /** Whether the store is open and its last operation did not fail as unreachable (and, for Redis, the change feed is connected). */
  get storeUp(): boolean {
    return this.store !== null && !this.storeFailing && (this.sub === null || this.subReady);
  }

  /**
   * What is wrong with the identity store now, in one line for GET
   * /admin/status, or null when nothing is (or it was never needed: a
   * config without auth that never used it): it could not be opened (or
   * was closed by the pepper guard), its last operation failed, or the
   * change feed is disconnected.
   */
  get storeWarning(): string | null {
    if (this.closed) return null;
    if (this.store === null) {
      const failed = this.lastOpenError;
      if (failed === null) return null;
      return `identity store unavailable: API key lookups answer 503 identity_store_unavailable and the identity endpoints 503 until it opens (tried again at most once per ${OPEN_RETRY_MS} ms): ${failed.error.message}`;
    }
    if (this.storeFailing) return `identity store failing: API key lookups answer 503 identity_store_unavailable while it fails (cached keys keep working): ${this.lastFailure}`;
    if (this.sub !== null && !this.subReady) return 'identity change feed disconnected from Redis: changes made by other instances (revocations) reach this one only once it reconnects';
    return null;
  }

  /**
   * The store, opened at the first call. Throws StoreError('unavailable')
   * with a message saying what to do (bad secret reference, unreadable
   * database, Redis unreachable); a call within OPEN_RETRY_MS of a failure
   * throws the same error again, a later one tries again.
   */
  getStore(): Promise<IdentityStore> {
    if (this.closed) return Promise.reject(new StoreError('unavailable', 'the identity service is closed (the gateway is stopping)'));
    if (this.opening === null) {
      const failed = this.lastOpenError;
      if (failed !== null && Date.now() - failed.at < OPEN_RETRY_MS) return Promise.reject(failed.error);
      const p = this.open().then(async (store) => {
        // Checked again just before it serves (store/types.ts verifyPepper).
        try {
          await store.verifyPepper();
        } catch (e) {
          await store.close().catch(() => { /* closing anyway */ });
          throw e;
        }
        if (this.closed) {
          await store.close().catch(() => { /* closing anyway */ });
          throw new StoreError('unavailable', 'the identity service is closed (the gateway is stopping)');
        }
        this.opened(store);
        return store;
      }).catch((e: unknown) => {
        const error = e instanceof StoreError ? e : new StoreError('unavailable', `cannot open the identity store: ${(e as Error).message}`);
        const repeated = this.lastOpenError?.error.message === error.message;
        this.lastOpenError = { at: Date.now(), error };
        const now = Date.now();
        if (!repeated || now - this.lastWarnAt >= WARN_EVERY_MS) {
          this.lastWarnAt = now;
          if (error.permanent) log('error', 'identity store refused: API key lookups answer 503 identity_store_unavailable; trying again will not help until the configuration or the store changes (tried again at most once per second)', { error: error.message });
          else log('warn', 'identity store unavailable: API key lookups answer 503 identity_store_unavailable until it opens (tried again at the next lookup, at most once per second)', { error: error.message });
        }
        throw error;
      });
      this.opening = p;
      p.catch(() => {
        if (this.opening === p) this.opening = null;
      });
    }
    return this.opening;
  }

  private async open(): Promise<IdentityStore> {
    const c = this.config;
    let secrets;
    try {
      secrets = loadSecrets({ keyPepper: c.secrets.keyPepper ?? undefined, encryptionKeys: { ...c.secrets.encryptionKeys } });
    } catch (e) {
      throw new StoreError('unavailable', e instanceof SecretError ? e.message : `cannot load the identity secrets: ${(e as Error).message}`);
    }
    for (const path of secrets.generated) {
      log('warn', path.endsWith('key-pepper')
        ? 'generated the key pepper; keep this file and back it up with the store: without it no stored key verifies'
        : 'generated an encryption key; keep this file and back it up with the store: without it what the store holds encrypted cannot be read', { file: path });
    }
    if (c.store.kind === 'redis' && (c.secrets.keyPepper === null || Object.keys(c.secrets.encryptionKeys).length === 0)) {
      log('warn', 'store kind redis with secrets read from this machine\'s .turnpike/ files: every instance sharing the store must use the same pepper (or keys made on one are unknown on another) and the same encryption keys; set secrets.keyPepper and secrets.encryptionKeys (env:NAME or file:/path) to one value everywhere');
    }
    const keyEnv = c.identity.keys.env;
    let store: IdentityStore;
    if (c.store.kind === 'redis') {
      if (c.redis === null || c.redis.url === null) throw new StoreError('unavailable', 'store.kind redis needs redis.url (Sentinel and Cluster are not supported for the identity store)');
      store = await openRedisStore({
        url: c.redis.url, keyPrefix: this.redisPrefix(), pepper: secrets.pepper, keyEnv,
        commandTimeoutMs: c.redis.commandTimeoutMs, connectTimeoutMs: c.redis.connectTimeoutMs,
      });
      log('info', 'identity store opened', { kind: 'redis', url: safeUrl(c.redis.url), prefix: this.redisPrefix() });
    } else {
      store = await openSqliteStore({ path: c.store.path, pepper: secrets.pepper, keyEnv });
      log('info', 'identity store opened', { kind: 'sqlite', path: c.store.path });
    }
    if (this.closed) {
      await store.close();
      throw new StoreError('unavailable', 'the identity service is closed (the gateway is stopping)');
    }
    this.pepper = secrets.pepper;
    return store;
  }

  /** Key prefix of the Redis store: `redis.keyPrefix` + `id:`. */
  private redisPrefix(): string {
    const p = this.config.redis?.keyPrefix;
    return p === undefined ? DEFAULT_KEY_PREFIX : p + REDIS_STORE_PREFIX_SUFFIX;
  }

  private opened(store: IdentityStore): void {
    if (this.closed) return; // close() waits for this open and closes the store
    const again = this.lastOpenError !== null;
    this.store = store;
    this.lastOpenError = null;
    this.storeFailing = false;
    this.unsubscribe = store.onChange((c) => this.localChange(c));
    if (store.kind === 'redis') this.subscribe();
    this.startTimers();
    if (again) log('info', 'identity store open again: key lookups are answered');
  }

  /**
   * Verifies the open store's pepper check now (store.verifyPepper; the
   * scheduled check, and the change feed's (re)connection, call it).
   * Resolves false when the store was found unusable (another pepper's
   * check, a newer schema) and closed (dropStore), true otherwise (also
   * when the store could not be reached: a transient failure,
   * which is checked again after OPEN_RETRY_MS). Never rejects.
   */
  checkStore(): Promise<boolean> {
    if (this.checking !== null) return this.checking;
    const store = this.store;
    if (store === null || this.closed) return Promise.resolve(this.store !== null);
    const p = store.verifyPepper().then(() => {
      if (this.store === store) this.storeOk();
      return true;
    }, (e: unknown) => {
      if (e instanceof StoreError && e.permanent) {
        this.dropStore(store, e);
        return false;
      }
      // Unreachable for now (e.g. the feed reconnected before the store's own connection, which is still backing off):
      // not a failure of its own (lookups say that), but checked again soon rather than in PEPPER_CHECK_MS.
      if (this.recheckTimer === null && !this.closed) {
        this.recheckTimer = setTimeout(() => {
          this.recheckTimer = null;
          void this.checkStore();
        }, OPEN_RETRY_MS);
        this.recheckTimer.unref();
      }
      return true;
    });
    this.checking = p;
    void p.finally(() => {
      if (this.checking === p) this.checking = null;
    });
    return p;
  }

  /**
   * Closes `store` (if still the one in use) after a permanent failure
   * found while it served: logs an error with what was found and what to
   * do, makes lookups answer `unavailable` (reopened, and so checked again,
   * at most once per OPEN_RETRY_MS), tells the workers to drop what they
   * cached from it.
   */
  private dropStore(store: IdentityStore, error: StoreError): void {
    if (this.store !== store || this.closed) return;
    if (error.code === 'schema') log('error', 'identity store closed: it now holds data of a newer schema than this Turnpike knows (a newer version wrote to it); API key lookups answer 503 identity_store_unavailable: upgrade this instance', { error: error.message });
    else log('error', 'identity store closed: it no longer holds this instance\'s pepper check (another instance with a different secrets.keyPepper claimed it after Redis lost its data, or the store was replaced); API key lookups answer 503 identity_store_unavailable until secrets.keyPepper on every instance sharing the store is the same (then restart the instance with the other pepper, or clear the store\'s data to let the right one claim it)', { error: error.message });
    this.store = null;
    this.opening = null;
    this.lastOpenError = { at: Date.now(), error };
    this.lastWarnAt = Date.now();
    this.storeFailing = false;
    this.unsubscribe?.();
    this.unsubscribe = null;
    const sub = this.sub;
    this.sub = null;
    this.subReady = false;
    this.subWasReady = false;
    sub?.disconnect();
    if (this.pepperTimer !== null) clearInterval(this.pepperTimer);
    this.pepperTimer = null;
    this.invalidateAll();
    void store.close().catch(() => { /* closing anyway */ });
  }

  // ------------------------------------------------------------------ worker lines

  /**
   * Serves identity messages (those with a `t` field) arriving on worker
   * `index`'s line to this thread; a replaced worker's new line replaces
   * the old one (the caller, LatencyCollector, closes the old port).
   */
  attach(index: number, port: MessagePort): void {
    this.detach(index);
    const on = (msg: unknown) => this.onLineMessage(port, msg);
    port.on('message', on);
    this.lines[index] = { port, on };
  }

  /** Stops serving worker `index`'s line. */
  detach(index: number): void {
    const line = this.lines[index];
    if (line === undefined || line === null) return;
    line.port.off('message', line.on);
    this.lines[index] = null;
  }

  private onLineMessage(port: MessagePort, msg: unknown): void {
    if (msg === null || typeof msg !== 'object' || !('t' in msg)) return; // latency snapshots
    const m = msg as IdentityToAdmin;
    if (m.t === 'key') {
      if (typeof m.id !== 'number') return;
      void this.lookup(m.key).then((answer) => this.post(port, { t: 'key', id: m.id, answer }));
    } else if (m.t === 'used') {
      this.used(m.batch);
    }
  }

  private post(port: MessagePort, msg: IdentityToWorker): void {
    try {
      port.postMessage(msg);
    } catch { /* the worker is gone */ }
  }

  /** Sends {t:'inval', hashes} to every attached worker. */
  private broadcast(hashes: string[] | null): void {
    this.counters.invalidations++;
    const msg: IdentityToWorker = { t: 'inval', hashes };
    for (const line of this.lines) if (line !== null && line !== undefined) this.post(line.port, msg);
  }

  // ------------------------------------------------------------------ lookups

  /**
   * What the store says of `key` (a plaintext key as presented). Never
   * throws: store trouble is { ok: false, reason: 'unavailable', message }.
   */
  async lookup(key: string): Promise<KeyAnswer> {
    if (typeof key !== 'string' || checkKeyFormat(key) !== null) {
      this.counters.unknown++;
      return { ok: false, reason: 'unknown' };
    }
    // Test hook (TURNPIKE_TEST_HOOKS=1 only): keys of env `down` stand for a store that does not answer.
    if (TEST_HOOKS && key.startsWith('tp_down_')) {
      this.counters.unavailable++;
      return { ok: false, reason: 'unavailable', message: 'test hook: a store that does not answer' };
    }
    let store: IdentityStore;
    try {
      store = this.store ?? await this.getStore();
    } catch (e) {
      this.counters.unavailable++;
      return { ok: false, reason: 'unavailable', message: (e as Error).message };
    }
    const hash = hashKey(this.pepper!, key);
    const exp = this.negative.get(hash);
    if (exp !== undefined) {
      if (exp > Date.now()) {
        this.counters.negativeCached++;
        return { ok: false, reason: 'unknown' };
      }
      this.negative.delete(hash);
    }
    let p = this.inflight.get(hash);
    if (p === undefined) {
      p = this.read(store, hash);
      this.inflight.set(hash, p);
      const mine = p;
      void p.finally(() => {
        if (this.inflight.get(hash) === mine) this.inflight.delete(hash);
      });
    }
    const answer = await p;
    if (answer.ok) this.counters.found++;
    else if (answer.reason === 'unknown') this.counters.unknown++;
    else this.counters.unavailable++;
    return answer;
  }

  /** The store's answer for `hash`, read again when a change arrives meanwhile. */
  private async read(store: IdentityStore, hash: string): Promise<KeyAnswer> {
    let answer: KeyAnswer = { ok: false, reason: 'unavailable', message: 'identity store lookup did not run' };
    for (let i = 0; i < MAX_READS; i++) {
      const gen = this.generation;
      answer = await this.readOnce(store, hash);
      if (gen === this.generation) {
        if (!answer.ok && answer.reason === 'unknown') this.rememberUnknown(hash);
        return answer;
      }
    }
    return answer; // changes kept coming: the last read, not remembered as unknown
  }

  private async readOnce(store: IdentityStore, hash: string): Promise<KeyAnswer> {
    this.counters.storeLookups++;
    try {
      const l = await store.lookupKey(hash);
      if (l === null) {
        this.storeOk();
        return { ok: false, reason: 'unknown' };
      }
      const { key: k, consumer: c } = l;
      // A dead key needs no grants: its answer is a refusal whatever they are.
      const live = k.status === 'active' && c.status === 'active';
      const grants = live ? await store.grantsForConsumer(c.id) : [];
      const byRoute = new Map<string, Set<string>>();
      for (const g of grants) {
        let m = byRoute.get(g.routeId);
        if (m === undefined) byRoute.set(g.routeId, (m = new Set()));
        for (const x of g.methods) m.add(x);
      }
      this.storeOk();
      const answer: KeyRecordAnswer = {
        ok: true, hash, keyId: k.id, keyName: k.name, keyPrefix: k.prefix, keyStatus: k.status, scopes: [...k.scopes],
        restrictions: k.restrictions, expiresAt: k.expiresAt, graceUntil: k.graceUntil, rotatedAt: k.rotatedAt,
        consumerId: c.id, consumerName: c.name, consumerStatus: c.status, tenant: c.tenant, plan: c.plan, groups: [...c.groups],
        grants: [...byRoute].map(([route, m]) => [route, m.has('*') ? ['*'] : [...m].sort()]),
      };
      return answer;
    } catch (e) {
      this.storeFailed(e);
      return { ok: false, reason: 'unavailable', message: `identity store lookup failed: ${(e as Error).message}` };
    }
  }

  private storeOk(): void {
    this.storeFailing = false;
  }

  private storeFailed(e: unknown): void {
    if (e instanceof StoreError && e.permanent && this.store !== null) {
      this.dropStore(this.store, e);
      return;
    }
    if (!(e instanceof StoreError) || e.code === 'unavailable') {
      this.storeFailing = true;
      this.lastFailure = (e as Error).message;
    }
    const now = Date.now();
    if (now - this.lastWarnAt >= WARN_EVERY_MS) {
      this.lastWarnAt = now;
      log('warn', 'identity store operation failed: key lookups answer 503 identity_store_unavailable while it fails; check the store (redis.url reachable, database file readable)', { error: (e as Error).message });
    }
  }

  private rememberUnknown(hash: string): void {
    const { negativeSize, negativeTtlMs } = this.config.identity.cache;
    this.negative.delete(hash);
    this.negative.set(hash, Date.now() + negativeTtlMs);
    while (this.negative.size > negativeSize) this.negative.delete(this.negative.keys().next().value!);
  }

  private trimNegative(): void {
    const max = this.config.identity.cache.negativeSize;
    while (this.negative.size > max) this.negative.delete(this.negative.keys().next().value!);
  }

  // ------------------------------------------------------------------ invalidation

  /** True when `c` was broadcast already (its other arrival); else remembers it. */
  private secondArrival(c: ChangeRecord): boolean {
    const sig = changeSig(c);
    if (this.seen.delete(sig)) return true;
    const now = Date.now();
    this.seen.set(sig, now + SEEN_CHANGE_TTL_MS);
    for (const [k, exp] of this.seen) {
      if (this.seen.size <= SEEN_CHANGE_MAX && exp > now) break;
      this.seen.delete(k);
    }
    return false;
  }

  private localChange(c: ChangeRecord): void {
    if (this.sub !== null && this.secondArrival(c)) return; // its pub/sub copy came first and was broadcast
    // One write emits its records synchronously: they leave as one message.
    if (this.queued.length === 0) queueMicrotask(() => this.flushQueued());
    this.queued.push(c);
  }

  private flushQueued(): void {
    const records = this.queued;
    this.queued = [];
    this.invalidate(records);
  }

  /** Drops what `records` changed from this thread's caches and every worker's. */
  private invalidate(records: readonly ChangeRecord[]): void {
    const inv = invalidationOf(records);
    if (inv === null) return;
    // Reads in flight see this and read again before answering (read()).
    this.generation++;
    // Grants and groups do not make an unknown key known; a key change (a creation) does.
    for (const c of records) {
      if (c.kind === 'key' && c.keyHashes.length === 0) this.negative.clear();
      for (const h of c.keyHashes) this.negative.delete(h);
    }
    this.broadcast(inv.hashes);
  }

  /** Everything may be stale (missed pub/sub messages): workers drop all, this thread forgets its unknowns. */
  private invalidateAll(): void {
    this.generation++;
    this.negative.clear();
    this.broadcast(null);
  }

  /** The change feed of other instances (Redis store only). */
  private subscribe(): void {
    const r = this.config.redis;
    if (r === null || r.url === null) return;
    const channel = this.redisPrefix() + 'changes';
    const sub = new Redis(r.url, {
      lazyConnect: true,
      autoResubscribe: false, // subscribed again by hand on 'ready', then everything flushed: nothing missed in between
      enableOfflineQueue: true,
      maxRetriesPerRequest: null,
      connectTimeout: r.connectTimeoutMs,
      retryStrategy: (n) => Math.min(50 * 2 ** n, 1000),
    });
    this.sub = sub;
    sub.on('error', () => { /* 'close' and storeUp say it; reconnection is automatic */ });
    sub.on('close', () => {
      if (this.subReady) log('warn', 'identity change feed disconnected from Redis; reconnecting (revocations made by other instances wait for it)', { url: safeUrl(r.url!) });
      this.subReady = false;
    });
    sub.on('ready', () => {
      sub.subscribe(channel).then(() => {
        if (this.sub !== sub) return;
        this.subReady = true;
        this.storeFailing = false; // the same Redis answers again
        if (this.subWasReady) {
          log('info', 'identity change feed reconnected; workers drop their cached keys (changes may have been missed)');
          this.invalidateAll();
        }
        this.subWasReady = true;
        // Redis may have lost its data (a restart without persistence): the pepper check again.
        void this.checkStore();
      }, () => { /* the connection dropped again: the next 'ready' retries */ });
    });
    sub.on('message', (ch: string, text: string) => {
      if (ch === channel) this.remoteChange(text);
    });
    sub.connect().catch(() => { /* retried by the retryStrategy */ });
  }

  private remoteChange(text: string): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      return;
    }
    if (!Array.isArray(parsed)) return;
    const records: ChangeRecord[] = [];
    for (const c of parsed) {
      if (!isChangeRecord(c)) continue;
      if (this.secondArrival(c)) continue; // this instance's own write: its workers were told already
      records.push(c);
    }
    if (records.length > 0) this.invalidate(records);
  }

  // ------------------------------------------------------------------ last use

  /** Merges a worker's {t:'used'} batch ([keyId, atMs, ...]). */
  used(batch: unknown): void {
    if (!Array.isArray(batch)) return;
    for (let i = 0; i + 1 < batch.length; i += 2) {
      const id = batch[i];
      const at = batch[i + 1];
      if (typeof id !== 'string' || id.length === 0 || id.length > 128 || typeof at !== 'number' || !Number.isSafeInteger(at) || at < 0) continue;
      const cur = this.pending.get(id);
      if (cur === undefined) {
        if (this.pending.size >= MAX_PENDING_USED) continue; // the store is not keeping up: this use is not recorded
        this.pending.set(id, at);
      } else if (cur < at) this.pending.set(id, at);
    }
    if (this.pending.size >= MAX_PENDING_USED) void this.flushUsed();
  }

  /** Writes the pending last uses now (touchKeys in chunks of MAX_TOUCH_BATCH). Resolves when written or failed (kept for the next flush). */
  flushUsed(): Promise<void> {
    if (this.flushing !== null) return this.flushing;
    if (this.pending.size === 0 || this.store === null) return Promise.resolve();
    const store = this.store;
    const batch = this.pending;
    this.pending = new Map();
    const p = (async () => {
      const entries = [...batch].map(([id, at]) => ({ id, at }));
      for (let i = 0; i < entries.length; i += MAX_TOUCH_BATCH) {
        const chunk = entries.slice(i, i + MAX_TOUCH_BATCH);
        try {
          this.counters.touchCalls++;
          await store.touchKeys(chunk);
          this.storeOk();
        } catch (e) {
          this.storeFailed(e);
          // Kept for the next flush, within the bound.
          for (const { id, at } of entries.slice(i)) {
            if (this.pending.size >= MAX_PENDING_USED) break;
            const cur = this.pending.get(id);
            if (cur === undefined || cur < at) this.pending.set(id, at);
          }
          return;
        }
      }
    })();
    this.flushing = p;
    void p.finally(() => {
      if (this.flushing === p) this.flushing = null;
    });
    return p;
  }

  // ------------------------------------------------------------------ purge

  /** Removes expired keys now (the scheduled job); returns how many. Does nothing before the store is open. */
  async purge(now: number = Date.now()): Promise<number> {
    const store = this.store;
    if (store === null) return 0;
    let removed;
    try {
      removed = await store.purgeExpired(now, { actor: 'scheduler' });
      this.storeOk();
    } catch (e) {
      this.storeFailed(e);
      return 0;
    }
    if (removed.length > 0) {
      this.counters.purged += removed.length;
      log('info', 'purged expired API keys', {
        count: removed.length,
        keys: removed.slice(0, PURGE_LOG_KEYS).map((k) => ({ id: k.id, prefix: k.prefix, consumerId: k.consumerId })),
        ...(removed.length > PURGE_LOG_KEYS ? { more: removed.length - PURGE_LOG_KEYS } : {}),
      });
    }
    return removed.length;
  }

  // ------------------------------------------------------------------ timers

  private startTimers(): void {
    const flush = this.config.identity.lastUsedFlushMs;
    const purge = this.config.identity.purgeIntervalMs;
    if (this.flushTimer === null || this.timerPeriods.flush !== flush) {
      if (this.flushTimer !== null) clearInterval(this.flushTimer);
      this.flushTimer = setInterval(() => void this.flushUsed(), flush);
      this.flushTimer.unref();
    }
    if (this.purgeTimer === null || this.timerPeriods.purge !== purge) {
      if (this.purgeTimer !== null) clearInterval(this.purgeTimer);
      this.purgeTimer = setInterval(() => void this.purge(), purge);
      this.purgeTimer.unref();
    }
    this.timerPeriods = { flush, purge };
    if (this.pepperTimer === null) {
      this.pepperTimer = setInterval(() => void this.checkStore(), this.pepperCheckMs);
      this.pepperTimer.unref();
    }
  }

  // ------------------------------------------------------------------ metrics

  /** The identity metric families, for MetricsView's `extra` (read at scrape). */
  metrics(): IdentityMetric[] {
    const c = this.counters;
    return [
      {
        name: 'turnpike_identity_store_lookups_total', type: 'counter',
        help: 'Key lookups that read the identity store (worker cache misses that the admin thread\'s negative cache and coalescing did not answer).',
        collect: () => [{ labels: {}, value: c.storeLookups }],
      },
      {
        name: 'turnpike_identity_lookups_total', type: 'counter',
        help: 'Key lookups answered by the admin thread, by result: found, unknown (no such key, or malformed), unavailable (store unreachable), negative_cached (unknown, from the negative cache without a store read).',
        collect: () => [
          { labels: { result: 'found' }, value: c.found },
          { labels: { result: 'unknown' }, value: c.unknown },
          { labels: { result: 'unavailable' }, value: c.unavailable },
          { labels: { result: 'negative_cached' }, value: c.negativeCached },
        ],
      },
      {
        name: 'turnpike_identity_invalidations_total', type: 'counter',
        help: 'Cache invalidations sent to the workers (one per store write or change message from another instance, and one after the change feed reconnects).',
        collect: () => [{ labels: {}, value: c.invalidations }],
      },
      {
        name: 'turnpike_identity_keys_purged_total', type: 'counter',
        help: 'Expired API keys (and rotated keys past their grace) removed by the scheduled purge.',
        collect: () => [{ labels: {}, value: c.purged }],
      },
      {
        name: 'turnpike_identity_store_up', type: 'gauge',
        help: '1 when the identity store is open and its last operation succeeded (and, for Redis, the change feed is connected); 0 otherwise (not opened yet, unreachable).',
        collect: () => [{ labels: {}, value: this.storeUp ? 1 : 0 }],
      },
    ];
  }

  // ------------------------------------------------------------------ close

  /** Stops the timers, writes the pending last uses, closes the change feed and the store. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.flushTimer !== null) clearInterval(this.flushTimer);
    if (this.purgeTimer !== null) clearInterval(this.purgeTimer);
    if (this.pepperTimer !== null) clearInterval(this.pepperTimer);
    if (this.recheckTimer !== null) clearTimeout(this.recheckTimer);
    this.flushTimer = this.purgeTimer = this.pepperTimer = this.recheckTimer = null;
    for (let i = 0; i < this.lines.length; i++) this.detach(i);
    const sub = this.sub;
    this.sub = null;
    this.subReady = false;
    sub?.disconnect();
    const p = this.opening;
    this.opening = null;
    if (p === null) return;
    let store: IdentityStore;
    try {
      store = await p;
    } catch {
      return; // never opened
    }
    if (this.flushing !== null) await this.flushing;
    await this.flushUsed();
    this.unsubscribe?.();
    this.unsubscribe = null;
    this.store = null;
    try {
      await store.close();
    } catch { /* closing anyway */ }
  }
}
