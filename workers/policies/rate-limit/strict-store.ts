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
 * lost; up again when ioredis reconnects (the backoff of workers/redis-link.ts) or, when
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
import type { RedisConfig } from '../../../common/config/types.js';
import { log } from '../../../common/log.js';
import { RedisLink, describeRedis, urlSecret, type RedisLinkOwner } from '../../redis-link.js';
import { DECIDE_COMMANDS, STRICT_SCRIPTS, UNDO_COMMANDS } from './strict-scripts.js';

const noop = (): void => {};

/** What the store's deadline timer calls (strict.ts StrictDecision). */
export interface Deadlined {
  /** performance.now() by which it must be decided. */
  readonly deadline: number;
  /** The deadline passed: decide now without waiting for Redis (no-op once decided). */
  expire(): void;
}

/** The strict limits' Redis connection of one worker (module comment); its connection and up/down state are a RedisLink. */
export class StrictStore implements RedisLinkOwner {
  readonly config: RedisConfig;
  /** `${redis.keyPrefix}rl:s:`: every strict key starts with it (strict.ts adds the policy tag and the key hash). */
  readonly keyPrefix: string;
  /** For log lines (no credentials). */
  readonly target: string;
  /** Whether strict limits are decided in Redis right now (see the module comment). */
  up = true;
  private readonly link: RedisLink;
  /** link.client (the ioredis client, with the strict scripts defined on it). */
  private readonly client: any;
  /** The database `redis.url` names (0 when none), or null when it is not a number (never connected). */
  private readonly db: number | null;
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
    // A command caught by a broken connection fails now (the limit's onStoreError decides) instead of being sent
    // again later (RedisLink); Redis's error messages are scrubbed of the URL's password before they are logged.
    this.link = new RedisLink(cfg, { name, autoPipelining: true, secret: urlSecret(cfg) }, this);
    this.client = this.link.client;
    this.db = this.link.db;
    for (let i = 0; i < STRICT_SCRIPTS.length; i++) {
      this.client.defineCommand(DECIDE_COMMANDS[i]!, { numberOfKeys: 1, lua: STRICT_SCRIPTS[i]!.decide });
      this.client.defineCommand(UNDO_COMMANDS[i]!, { numberOfKeys: 1, lua: STRICT_SCRIPTS[i]!.undo });
    }
    if (this.db === null) {
      let path = '';
      try {
        path = new URL(cfg.url!).pathname;
      } catch { /* described without it */ }
      this.link.markDown(`redis.url names database ${JSON.stringify(path)}, which is not a whole number: not connecting (write redis://host:6379/0, or leave the database out)`);
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
    if (this.link.closed || this.db === null) return;
    this.client[UNDO_COMMANDS[alg]!](key, args[0], args[1], args[2], windowStart).catch(noop);
  }

  /** A command failed (timeout, broken connection, script error): down until the connection or a probe says otherwise. */
  failed(err: unknown): void {
    this.link.failed(err);
  }

  /** A decision came back: the next outage starts its backoff afresh. */
  succeeded(): void {
    this.link.succeeded();
  }

  /** Closes the connection (replies still due arrive first; cut after commandTimeoutMs + 100 ms); the store is unusable afterwards. */
  close(): void {
    if (this.link.closed) return;
    this.up = false;
    this.link.close();
  }

  /** RedisLink: connected, or Redis answers again (a log line: info after an outage, debug at the first connection). */
  linkUp(wasDown: boolean): void {
    this.up = true;
    if (wasDown) log('info', 'rate-limit store (Redis) reachable again: strict limits are decided in Redis', { redis: this.target });
    else log('debug', 'rate-limit store (Redis) connected for strict limits', { redis: this.target });
  }

  /** RedisLink: unreachable for `reason` (no credentials): one warn line. */
  linkDown(reason: string): void {
    this.up = false;
    this.reason = reason;
    log('warn', 'rate-limit store (Redis) unreachable: strict limits follow their onStoreError (allow_local: decided in memory with this instance\'s share; deny: 503) until it answers again', {
      redis: this.target, reason,
    });
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
