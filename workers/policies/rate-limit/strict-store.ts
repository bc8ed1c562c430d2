/**
 * The Redis connection of strict rate limits, one per worker thread (each
 * thread decides its own requests; ioredis works in worker threads). It
 * exists only while the running config has a strict limit: the Dataplane
 * of such a config acquires it from the worker's StrictStores, and gives
 * it back when it is replaced (reload) or at drain; the last one out
 * closes the connection (QUIT: replies still due arrive first). ioredis is
 * loaded on first use, so a config without strict limits never loads it.
 *
 * Commands: one EVALSHA per strict limit and request (strict-scripts.ts;
 * ioredis sends the script itself with EVAL when Redis does not know it,
 * after a restart too). Auto-pipelining puts the commands of every request
 * a worker receives in one event-loop turn into one write.
 *
 * State, as strict.ts reads it (`up`): while up, strict limits are decided
 * in Redis; while down, by their onStoreError (in memory, or 503), without
 * waiting for anything. Down after a command failed (redis.commandTimeoutMs
 * passed, the connection broke, a script error) or while the connection is
 * lost; up again when ioredis reconnects (its own backoff, below) or, when
 * the connection stayed open (a Redis that stopped answering), when a PING
 * probe answers (probes back off the same way). One log line per change of
 * state (warn when going down, info when back), with the Redis address
 * redacted (no credentials); never one per request.
 *
 * Before the first connection is ready the state is "connecting", counted
 * as up: commands wait in ioredis's offline queue, bounded by the command
 * timeout, so the first requests after a start are decided in Redis rather
 * than refused by a `deny` limit.
 *
 * Deadlines: a decision never waits longer than redis.commandTimeoutMs from
 * the moment it was asked (strict.ts registers each with `watch`; one timer
 * per store, decisions in deadline order), whatever ioredis does meanwhile:
 * with auto-pipelining, a command queued behind a batch that is waiting for
 * a paused Redis used to wait for that batch's timeout and then its own.
 *
 * The database of `redis.url` (`/3`): ioredis SELECTs it while connecting,
 * and when Redis refuses it (a number the server does not have) only emits
 * an error and goes on, ready, on database 0. Here that connection is never
 * used: the store is down ("Redis refused database N: ..."), the connection
 * is dropped (what waited in the offline queue fails: onStoreError decides)
 * and tried again with the backoff. A database that is not a number (which
 * validation refuses) is never connected to. No promise rejection escapes:
 * every command's promise gets a handler here or in strict.ts.
 */
import { createRequire } from 'node:module';
import type { RedisConfig } from '../../../common/config/types.js';
import { redactRedisUrl, redisDatabase } from '../../../common/config/rate-limit.js';
import { log } from '../../../common/log.js';
import { DECIDE_COMMANDS, STRICT_SCRIPTS, UNDO_COMMANDS } from './strict-scripts.js';

/** Reconnect and probe backoff: 50 ms, doubling, at most 2 s. */
export const BACKOFF_MIN_MS = 50;
export const BACKOFF_MAX_MS = 2_000;

const STATE_CONNECTING = 0;
const STATE_UP = 1;
const STATE_DOWN = 2;

const noop = (): void => {};

/** What the store's deadline timer calls (strict.ts StrictDecision). */
export interface Deadlined {
  /** performance.now() by which it must be decided. */
  readonly deadline: number;
  /** The deadline passed: decide now without waiting for Redis (no-op once decided). */
  expire(): void;
}

/** An ioredis error about the SELECT it sends while connecting (replies carry the command they answer). */
function isSelectError(err: unknown): boolean {
  const cmd = (err as { command?: { name?: unknown } } | null)?.command;
  return typeof cmd?.name === 'string' && cmd.name.toLowerCase() === 'select';
}

let ioredis: any = null;
/** ioredis, loaded on first use (CommonJS; createRequire works on Node and Bun). */
function loadIoredis(): any {
  if (ioredis === null) ioredis = createRequire(import.meta.url)('ioredis');
  return ioredis;
}

/** Where Redis is, for log lines: the URL without credentials, or the sentinel / cluster nodes. */
export function describeRedis(cfg: RedisConfig): string {
  if (cfg.url !== null) return redactRedisUrl(cfg.url);
  const nodes = (cfg.sentinels ?? cfg.cluster ?? []).map((n) => `${n.host}:${n.port}`).join(',');
  return cfg.sentinels !== null ? `sentinel ${nodes} (master ${cfg.name ?? ''})` : `cluster ${nodes}`;
}

/** The password of a redis:// URL (decoded), or '' when none: scrubbed from error messages before they are logged. */
function urlSecret(cfg: RedisConfig): string {
  if (cfg.url === null) return '';
  try {
    const u = new URL(cfg.url);
    return u.password === '' ? '' : decodeURIComponent(u.password);
  } catch {
    return '';
  }
}

export class StrictStore {
  readonly config: RedisConfig;
  /** `${redis.keyPrefix}rl:s:`: every strict key starts with it (strict.ts adds the policy tag and the key hash). */
  readonly keyPrefix: string;
  /** For log lines (no credentials). */
  readonly target: string;
  /** Whether strict limits are decided in Redis right now (see the module comment). */
  up = true;
  private state = STATE_CONNECTING;
  private readonly client: any;
  private readonly secret: string;
  private lastError = '';
  private backoffMs = BACKOFF_MIN_MS;
  private probeTimer: NodeJS.Timeout | null = null;
  private closed = false;
  /** The database `redis.url` names (0 when none), or null when it is not a number (never connected). */
  private readonly db: number | null;
  /** Redis refused the SELECT of the current connection: not used, dropped. */
  private refused = false;
  private reason = '';
  /** Decisions waiting for Redis, in deadline order (all have the same timeout), from `watchHead` on. */
  private watched: Deadlined[] = [];
  private watchHead = 0;
  private watchTimer: NodeJS.Timeout | null = null;

  /** `name`: the connection name Redis shows in CLIENT LIST (`turnpike-strict-worker-0`). */
  constructor(cfg: RedisConfig, name: string) {
    this.config = cfg;
    this.keyPrefix = cfg.keyPrefix + 'rl:s:';
    this.target = describeRedis(cfg);
    this.secret = urlSecret(cfg);
    this.db = cfg.url !== null ? redisDatabase(cfg.url) : 0;
    const { Redis, Cluster } = loadIoredis();
    const retryStrategy = (times: number): number => Math.min(BACKOFF_MIN_MS * 2 ** Math.min(Math.max(times - 1, 0), 6), BACKOFF_MAX_MS);
    const options = {
      connectTimeout: cfg.connectTimeoutMs,
      commandTimeout: cfg.commandTimeoutMs,
      // A command caught by a broken connection fails now (the limit's
      // onStoreError decides) instead of being sent again later.
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      enableOfflineQueue: true,
      enableAutoPipelining: true,
      retryStrategy,
      connectionName: name,
      // A database that is not a number is never connected to (module comment).
      lazyConnect: this.db === null,
    };
    if (cfg.cluster !== null) {
      this.client = new Cluster(cfg.cluster.map((n) => ({ host: n.host, port: n.port })), {
        redisOptions: { connectTimeout: cfg.connectTimeoutMs, commandTimeout: cfg.commandTimeoutMs, connectionName: name, maxRetriesPerRequest: 0 },
        clusterRetryStrategy: retryStrategy,
        enableOfflineQueue: true,
        enableAutoPipelining: true,
      });
    } else if (cfg.sentinels !== null) {
      this.client = new Redis({ ...options, sentinels: cfg.sentinels.map((n) => ({ host: n.host, port: n.port })), name: cfg.name ?? undefined });
    } else {
      // The database as validated (redisDatabase), never ioredis's own reading of the URL.
      this.client = new Redis(cfg.url!, { ...options, db: this.db ?? 0 });
    }
    for (let i = 0; i < STRICT_SCRIPTS.length; i++) {
      this.client.defineCommand(DECIDE_COMMANDS[i]!, { numberOfKeys: 1, lua: STRICT_SCRIPTS[i]!.decide });
      this.client.defineCommand(UNDO_COMMANDS[i]!, { numberOfKeys: 1, lua: STRICT_SCRIPTS[i]!.undo });
    }
    this.client.on('connect', () => {
      this.refused = false;
    });
    this.client.on('ready', () => {
      if (!this.refused) this.markUp();
    });
    this.client.on('error', (err: Error) => {
      if (isSelectError(err)) {
        // ioredis would go on, ready, on database 0: never use this connection.
        this.refused = true;
        this.lastError = `Redis refused database ${this.db}: ${this.scrub(err.message)}`;
        this.markDown(this.lastError);
        if (!this.closed) this.client.disconnect(true); // dropped; reconnected with the backoff
        return;
      }
      this.lastError = this.scrub(err.message);
    });
    this.client.on('close', () => this.markDown(this.lastError === '' ? 'connection closed' : this.lastError));
    if (this.db === null) {
      let path = '';
      try {
        path = new URL(cfg.url!).pathname;
      } catch { /* described without it */ }
      this.markDown(`redis.url names database ${JSON.stringify(path)}, which is not a whole number: not connecting (write redis://host:6379/0, or leave the database out)`);
    }
  }

  /** Why the store went down last (for tests and diagnostics; no credentials). */
  get lastReason(): string {
    return this.reason;
  }

  /**
   * Calls `d.expire()` at `d.deadline` (unless it was decided before: then
   * expire does nothing). Deadlines must come in increasing order (every
   * decision's is its start + commandTimeoutMs).
   */
  watch(d: Deadlined): void {
    this.watched.push(d);
    if (this.watchTimer === null) this.armWatch();
  }

  private armWatch(): void {
    const head = this.watched[this.watchHead];
    if (head === undefined) {
      this.watched = [];
      this.watchHead = 0;
      return;
    }
    this.watchTimer = setTimeout(() => this.fireWatch(), Math.max(0, head.deadline - performance.now()));
    // A decision still waiting has a command on the connection, which keeps the thread alive;
    // the timer alone must not (a draining worker exits without waiting for it).
    this.watchTimer.unref();
  }

  private fireWatch(): void {
    this.watchTimer = null;
    const now = performance.now();
    const w = this.watched;
    let i = this.watchHead;
    // Half a millisecond early is on time (timers round).
    while (i < w.length && w[i]!.deadline <= now + 0.5) {
      const d = w[i]!;
      w[i] = undefined as unknown as Deadlined;
      i++;
      try {
        d.expire();
      } catch (err) {
        log('error', 'internal error expiring a strict rate-limit decision', { error: err instanceof Error ? err.stack ?? err.message : String(err) });
      }
    }
    this.watchHead = i;
    if (i > 1024 && i * 2 > w.length) {
      this.watched = w.slice(i);
      this.watchHead = 0;
    }
    this.armWatch();
  }

  /**
   * One strict decision: algorithm `alg` (ALG_*: 0..3) on `key` with the
   * limit's script arguments (rate, perMs, burst). Resolves the script's
   * reply (strict-scripts.ts); rejects on any store error (timeout
   * included), which the caller reports with `failed`.
   */
  decide(alg: number, key: string, args: readonly string[]): Promise<unknown> {
    if (this.db === null) return Promise.reject(new Error(this.reason));
    return this.client[DECIDE_COMMANDS[alg]!](key, args[0], args[1], args[2]);
  }

  /** Gives back one admission (another limit of the request refused). Fire and forget: a failure only leaves one unit taken. */
  undo(alg: number, key: string, args: readonly string[], windowStart: string): void {
    if (this.closed || this.db === null) return;
    this.client[UNDO_COMMANDS[alg]!](key, args[0], args[1], args[2], windowStart).catch(noop);
  }

  /** A command failed (timeout, broken connection, script error): down until the connection or a probe says otherwise. */
  failed(err: unknown): void {
    if (this.closed) return;
    const msg = err instanceof Error ? err.message : String(err);
    const reason = /timed out/i.test(msg) ? `no reply within redis.commandTimeoutMs (${this.config.commandTimeoutMs} ms)` : this.scrub(msg);
    this.markDown(reason);
    // The connection may still look fine (a Redis that stopped answering):
    // nothing else would bring the state back, so probe.
    if (this.client.status === 'ready' && !this.refused) this.scheduleProbe();
  }

  /** A decision came back: the next outage starts its backoff afresh. */
  succeeded(): void {
    this.backoffMs = BACKOFF_MIN_MS;
  }

  /** Closes the connection (replies still due arrive first); the store is unusable afterwards. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.up = false;
    if (this.probeTimer !== null) clearTimeout(this.probeTimer);
    this.probeTimer = null;
    const client = this.client;
    if (client.status === 'ready') {
      // QUIT waits for the replies still due; if Redis does not answer it either, cut.
      const cut = setTimeout(() => client.disconnect(), this.config.commandTimeoutMs + 100);
      cut.unref();
      client.quit().then(() => clearTimeout(cut), () => {
        clearTimeout(cut);
        client.disconnect();
      });
    } else {
      client.disconnect();
    }
  }

  private scrub(msg: string): string {
    return this.secret === '' ? msg : msg.split(this.secret).join('***');
  }

  private markUp(): void {
    if (this.closed || this.state === STATE_UP || this.refused || this.db === null) return;
    const was = this.state;
    this.state = STATE_UP;
    this.up = true;
    this.lastError = '';
    if (this.probeTimer !== null) clearTimeout(this.probeTimer);
    this.probeTimer = null;
    if (was === STATE_DOWN) log('info', 'rate-limit store (Redis) reachable again: strict limits are decided in Redis', { redis: this.target });
    else log('debug', 'rate-limit store (Redis) connected for strict limits', { redis: this.target });
  }

  private markDown(reason: string): void {
    if (this.closed || this.state === STATE_DOWN) return;
    this.state = STATE_DOWN;
    this.up = false;
    this.reason = reason;
    log('warn', 'rate-limit store (Redis) unreachable: strict limits follow their onStoreError (allow_local: decided in memory with this instance\'s share; deny: 503) until it answers again', {
      redis: this.target, reason,
    });
  }

  private scheduleProbe(): void {
    if (this.probeTimer !== null || this.closed) return;
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null;
      if (this.closed || this.state !== STATE_DOWN) return;
      this.client.ping().then(
        () => this.markUp(),
        () => {
          if (this.client.status === 'ready' && !this.refused) this.scheduleProbe();
          // else: the connection is being re-established; 'ready' brings the state back.
        },
      );
    }, delay);
    this.probeTimer.unref();
  }
}

/**
 * The strict stores of one worker thread, shared by the configs that use
 * the same `redis` settings (a reload that keeps them keeps the connection)
 * and closed when the last config using one lets go.
 */
export class StrictStores {
  private readonly stores = new Map<string, { store: StrictStore; refs: number }>();

  /** `name`: this thread's name, for the Redis connection name. */
  constructor(private readonly name: string) {}

  acquire(cfg: RedisConfig): StrictStore {
    const key = JSON.stringify(cfg);
    let e = this.stores.get(key);
    if (e === undefined) {
      e = { store: new StrictStore(cfg, `turnpike-strict-${this.name}`), refs: 0 };
      this.stores.set(key, e);
    }
    e.refs++;
    return e.store;
  }

  release(store: StrictStore): void {
    const key = JSON.stringify(store.config);
    const e = this.stores.get(key);
    if (e === undefined || e.store !== store) return;
    if (--e.refs > 0) return;
    this.stores.delete(key);
    store.close();
  }

  /** Stores open right now (tests, diagnostics). */
  get size(): number {
    return this.stores.size;
  }
}
