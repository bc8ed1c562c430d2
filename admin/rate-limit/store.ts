/**
 * The Redis connection of the rate-limit sync (admin thread only): one
 * ioredis client, standalone (`redis.url`), Sentinel (`redis.sentinels` +
 * `redis.name`) or Cluster (`redis.cluster`), with the two scripts of
 * script.ts defined on it (EVALSHA; ioredis re-sends the script after a
 * NOSCRIPT, e.g. when Redis restarted empty).
 *
 * Failure behaviour, chosen for a sync that must never pile up work or
 * count anything twice:
 *  - no offline queue: a command issued while disconnected fails at once
 *    (the sync then treats the store as down) instead of waiting;
 *  - no retry or re-send of a command whose connection dropped: a push
 *    that may have reached Redis must not be pushed again;
 *  - every command times out after `redis.commandTimeoutMs`, a connection
 *    attempt after `redis.connectTimeoutMs`;
 *  - reconnection with exponential backoff and jitter, RECONNECT_MIN_MS
 *    doubling to RECONNECT_MAX_MS, forever;
 *  - the database of `redis.url` (`/3`): ioredis SELECTs it when it
 *    connects, but when Redis refuses it (a number the server does not
 *    have) ioredis only emits an error and goes on, ready, on database 0.
 *    Here a refused SELECT is a store error (StoreDatabaseError: "Redis
 *    refused database N: ..."), the connection is never reported ready and
 *    is dropped and tried again with the backoff above (a Redis restarted
 *    with more databases is then used). A database that is not a whole
 *    number (refused by validation; ioredis would send `SELECT NaN`, and
 *    re-send it when ready without catching the error: an unhandled
 *    rejection) is never connected to at all.
 * Nothing here lets a promise rejection escape: every command's promise is
 * returned to the caller (index.ts handles each), and ioredis's own errors
 * arrive through the 'error' listener.
 * Pipelining: a cycle issues all its script calls without waiting for any
 * reply, so they travel back to back on the connection (to each node's,
 * on a Cluster: ioredis routes each call by its keys, which share one
 * slot). ioredis's auto-pipelining is off: it would save write calls but
 * costs more CPU here (measured: ~90 against ~55 ms per 50,000 keys), and
 * on a Cluster it routes a script by its first argument (the key count)
 * instead of its first key, which mixes slots.
 */
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import type { RedisConfig } from '../../common/config/types.js';
import { redactRedisUrl, redisDatabase } from '../../common/config/rate-limit.js';
import { HEARTBEAT_LUA, SYNC_LUA } from './script.js';

export const RECONNECT_MIN_MS = 50;
export const RECONNECT_MAX_MS = 2_000;

/** Why a store call failed, for metrics and the state-change log line. */
export type StoreErrorReason = 'connection' | 'timeout' | 'command';
export const STORE_ERROR_REASONS: readonly StoreErrorReason[] = ['connection', 'timeout', 'command'];

interface SyncCommands {
  rlsync(...args: (string | number)[]): Promise<unknown[]>;
  rlheartbeat(key: string, id: string, ttlMs: number, leave: string): Promise<[number, number]>;
}

type Client = (Redis | Cluster) & SyncCommands;

/** Reconnect delay after `attempt` failures: exponential with ±25% jitter (ms). */
export function reconnectDelay(attempt: number): number {
  const base = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** Math.min(attempt, 16));
  return Math.round(base * (0.75 + Math.random() * 0.5));
}

/** The kind of a failed call (ioredis errors carry no stable code for these). */
export function classifyStoreError(err: unknown): StoreErrorReason {
  const msg = err instanceof Error ? err.message : String(err);
  if (/timed? ?out/i.test(msg)) return 'timeout';
  if (/closed|writeable|ECONN|EPIPE|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|max ?retries|connect|All sentinels|Failed to refresh slots|None of startup nodes/i.test(msg)) return 'connection';
  return 'command';
}

/** Redis refused the database `redis.url` names (or that database is not a number): the store stays down. */
export class StoreDatabaseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StoreDatabaseError';
  }
}

/** An ioredis error about the SELECT it sends while connecting (replies carry the command they answer). */
function isSelectError(err: unknown): boolean {
  const cmd = (err as { command?: { name?: unknown } } | null)?.command;
  return typeof cmd?.name === 'string' && cmd.name.toLowerCase() === 'select';
}

/** A description of where the store is, without credentials (logs, messages). */
export function describeStore(cfg: RedisConfig): string {
  if (cfg.url !== null) return redactRedisUrl(cfg.url);
  if (cfg.sentinels !== null) return `sentinel master "${cfg.name ?? ''}" via ${cfg.sentinels.map((n) => `${n.host}:${n.port}`).join(',')}`;
  if (cfg.cluster !== null) return `cluster ${cfg.cluster.map((n) => `${n.host}:${n.port}`).join(',')}`;
  return '<no redis>';
}

/** An error message safe to log: no URL credentials, bounded length. */
export function safeMessage(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.replace(/rediss?:\/\/[^@\s/]*@/gi, (m) => m.slice(0, m.indexOf('//') + 2) + '***@').slice(0, 300);
}

export class RedisStore {
  readonly client: Client;
  readonly label: string;
  readonly cluster: boolean;
  /** The database `redis.url` names (0 when none), or null when it is not a number (never connected). */
  readonly db: number | null;
  private closed = false;
  /** Redis refused the SELECT of the current connection: it is not used, and is dropped. */
  private refused = false;
  private readonly hooks: { onConnectionError(err: Error): void; onReady(): void; onClose(): void };

  /**
   * Creates the client (not connected yet: `connect()`). `onConnectionError`
   * hears every failed connection attempt (ioredis 'error' events, which
   * must have a listener); `onReady` every (re)connection; `onClose` every
   * lost connection.
   */
  constructor(readonly config: RedisConfig, hooks: { onConnectionError(err: Error): void; onReady(): void; onClose(): void }) {
    this.label = describeStore(config);
    this.cluster = config.cluster !== null;
    this.hooks = hooks;
    this.db = config.url !== null ? redisDatabase(config.url) : 0;
    const scripts = {
      rlsync: { lua: SYNC_LUA },
      rlheartbeat: { lua: HEARTBEAT_LUA, numberOfKeys: 1 },
    };
    const common: RedisOptions = {
      lazyConnect: true,
      connectTimeout: config.connectTimeoutMs,
      commandTimeout: config.commandTimeoutMs,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      connectionName: 'turnpike-rate-limit-sync',
    };
    if (this.cluster) {
      const opts: ClusterOptions = {
        lazyConnect: true,
        enableOfflineQueue: false,
        clusterRetryStrategy: (times: number) => reconnectDelay(times),
        scripts,
        redisOptions: common,
      };
      this.client = new Cluster(config.cluster!.map((n) => ({ host: n.host, port: n.port })), opts) as Client;
    } else {
      const opts: RedisOptions = {
        ...common,
        enableOfflineQueue: false,
        retryStrategy: (times: number) => reconnectDelay(times),
        scripts,
      };
      if (config.sentinels !== null) {
        opts.sentinels = config.sentinels.map((n) => ({ host: n.host, port: n.port }));
        opts.name = config.name!;
        opts.sentinelRetryStrategy = (times: number) => reconnectDelay(times);
        this.client = new Redis(opts) as Client;
      } else {
        // The database as validated (redisDatabase), never ioredis's own reading of the URL.
        this.client = new Redis(config.url!, { ...opts, db: this.db ?? 0 }) as Client;
      }
    }
    // A new connection: its handshake (AUTH, SELECT) is about to run.
    this.client.on('connect', () => {
      this.refused = false;
    });
    this.client.on('error', (err: Error) => {
      if (this.closed) return;
      if (isSelectError(err)) {
        // ioredis would go on, ready, on database 0: never use this connection.
        this.refused = true;
        hooks.onConnectionError(new StoreDatabaseError(`Redis refused database ${this.db ?? '?'}: ${err.message}`));
        (this.client as Redis).disconnect(true); // dropped; reconnected with the backoff
        return;
      }
      hooks.onConnectionError(err);
    });
    this.client.on('ready', () => {
      if (!this.closed && !this.refused) hooks.onReady();
    });
    this.client.on('close', () => {
      if (!this.closed) hooks.onClose();
    });
  }

  /** Starts connecting; the outcome arrives through the hooks (a failure keeps reconnecting). */
  connect(): void {
    if (this.db === null) {
      // Validation refuses such a URL; never SELECT NaN (module comment).
      let path = '';
      try {
        path = new URL(this.config.url!).pathname;
      } catch { /* described below without it */ }
      this.hooks.onConnectionError(new StoreDatabaseError(`redis.url names database ${JSON.stringify(path)}, which is not a whole number: not connecting (write redis://host:6379/0, or leave the database out)`));
      return;
    }
    this.client.connect().catch(() => { /* reported through the 'error' hook; reconnection goes on */ });
  }

  /** Connected (to the right database) and ready for commands. */
  get ready(): boolean {
    return this.client.status === 'ready' && !this.refused && this.db !== null;
  }

  /** One sync script call (see script.ts SYNC_LUA): [numkeys, ...keys, ...argv]. */
  sync(command: (string | number)[]): Promise<unknown[]> {
    return this.client.rlsync(...command);
  }

  /** Beats (or leaves, `leave`): the live instance count, and whether this instance was new to the set. */
  heartbeat(key: string, id: string, ttlMs: number, leave = false): Promise<[number, number]> {
    return this.client.rlheartbeat(key, id, ttlMs, leave ? '1' : '0');
  }

  /** Closes the connection: QUIT when connected (bounded by `timeoutMs`), else at once. */
  async close(timeoutMs: number): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.ready) {
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          this.client.quit(),
          new Promise((resolve) => { timer = setTimeout(resolve, timeoutMs); }),
        ]);
      } catch { /* disconnect below */ } finally {
        clearTimeout(timer);
      }
    }
    this.client.disconnect();
  }
}
