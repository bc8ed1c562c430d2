/**
 * One worker thread's Redis connection for a data-plane feature that must
 * keep deciding when Redis does not answer: strict rate limits
 * (policies/rate-limit/strict-store.ts) and maxConnectionsPerKey across
 * instances (transport/websocket/cluster-count.ts). It holds the ioredis
 * client and the up/down state; its owner decides what "down" means for
 * its requests and writes its own log lines (RedisLinkOwner).
 *
 * The client (ioredis, loaded on first use: a config without such a
 * feature never loads it): standalone (`redis.url`), Sentinel or Cluster;
 * a command caught by a broken connection fails at once and is never sent
 * again (maxRetriesPerRequest 0, no resend); commands issued before the
 * first connection wait in the offline queue, bounded by
 * redis.commandTimeoutMs; reconnection backs off 50 ms, doubling, at most
 * 2 s (retryStrategy).
 *
 * State: LINK_CONNECTING until the first 'ready', then LINK_UP or
 * LINK_DOWN. Down when the connection closes, when the owner reports a
 * failed command (`failed`: a timeout, a broken connection, a script
 * error), or when Redis refuses the database of `redis.url` (ioredis would
 * go on, ready, on database 0: that connection is dropped, never used, and
 * tried again with the backoff). Up again on the next 'ready', or, when the
 * connection stayed open (a Redis that stopped answering), when a PING
 * probe answers; probes back off as reconnections do, and a decision that
 * came back (`succeeded`) starts the next outage's backoff afresh. A
 * database that is not a whole number is never connected to (lazyConnect):
 * the owner marks the link down with its own words (`markDown`).
 *
 * Errors: none thrown; every ioredis promise this module makes gets a
 * handler. Reasons handed to the owner carry no credentials when
 * `secret` is given (it is cut out of Redis's error messages).
 */
import { createRequire } from 'node:module';
import type { RedisConfig } from '../common/config/types.js';
import { redactRedisUrl, redisDatabase } from '../common/config/rate-limit.js';

/** Reconnect and probe backoff: 50 ms, doubling, at most 2 s. */
export const BACKOFF_MIN_MS = 50;
export const BACKOFF_MAX_MS = 2_000;

/** RedisLink.state values. */
export const LINK_CONNECTING = 0;
export const LINK_UP = 1;
export const LINK_DOWN = 2;

let ioredis: any = null;
/** ioredis, loaded on first use (CommonJS; createRequire works on Node and Bun). */
function loadIoredis(): any {
  if (ioredis === null) ioredis = createRequire(import.meta.url)('ioredis');
  return ioredis;
}

/** An ioredis error about the SELECT it sends while connecting (replies carry the command they answer). */
function isSelectError(err: unknown): boolean {
  const cmd = (err as { command?: { name?: unknown } } | null)?.command;
  return typeof cmd?.name === 'string' && cmd.name.toLowerCase() === 'select';
}

/** Where Redis is, for log lines: the URL without credentials, or the sentinel / cluster nodes. */
export function describeRedis(cfg: RedisConfig): string {
  if (cfg.url !== null) return redactRedisUrl(cfg.url);
  const nodes = (cfg.sentinels ?? cfg.cluster ?? []).map((n) => `${n.host}:${n.port}`).join(',');
  return cfg.sentinels !== null ? `sentinel ${nodes} (master ${cfg.name ?? ''})` : `cluster ${nodes}`;
}

/** The password of a redis:// URL (decoded), or '' when none (or not decodable): to scrub from error messages. */
export function urlSecret(cfg: RedisConfig): string {
  if (cfg.url === null) return '';
  try {
    const u = new URL(cfg.url);
    return u.password === '' ? '' : decodeURIComponent(u.password);
  } catch {
    return '';
  }
}

/** What a RedisLink tells its owner: once per change of state, never while closed. */
export interface RedisLinkOwner {
  /** The link is up (connected, or a probe answered); `wasDown`: it was LINK_DOWN before (else connecting). */
  linkUp(wasDown: boolean): void;
  /** The link went down; `reason` for the log line (Redis's messages scrubbed of `secret`). */
  linkDown(reason: string): void;
}

/** How the owner wants its connection. */
export interface RedisLinkOptions {
  /** The connection name Redis shows in CLIENT LIST (`turnpike-strict-worker-0`). */
  readonly name: string;
  /** ioredis auto-pipelining (commands of one event-loop turn in one write); off where a Cluster must route scripts by key. */
  readonly autoPipelining: boolean;
  /** Cut out of Redis's error messages before they become reasons (urlSecret), '' for none. */
  readonly secret: string;
}

/** The connection and its up/down state (module comment); `client` is the ioredis client for the owner's commands. */
export class RedisLink {
  /** The ioredis Redis or Cluster client (define the owner's scripts on it). */
  readonly client: any;
  /** The database `redis.url` names (0 when none), or null when it is not a whole number (never connected). */
  readonly db: number | null;
  /** LINK_CONNECTING, LINK_UP or LINK_DOWN (read only outside). */
  state = LINK_CONNECTING;
  /** close() was called: the link is unusable, and tells its owner nothing more. */
  closed = false;
  /** Redis refused the SELECT of the current connection: not used, dropped. */
  private refused = false;
  private lastError = '';
  /** Delay of the next probe (ms). */
  private backoffMs = BACKOFF_MIN_MS;
  private probeTimer: NodeJS.Timeout | null = null;
  private readonly timeoutMs: number;
  private readonly secret: string;

  constructor(cfg: RedisConfig, opts: RedisLinkOptions, private readonly owner: RedisLinkOwner) {
    this.timeoutMs = cfg.commandTimeoutMs;
    this.secret = opts.secret;
    const db = cfg.url !== null ? redisDatabase(cfg.url) : 0;
    this.db = db;
    const { Redis, Cluster } = loadIoredis();
    const retryStrategy = (times: number): number => Math.min(BACKOFF_MIN_MS * 2 ** Math.min(Math.max(times - 1, 0), 6), BACKOFF_MAX_MS);
    const options = {
      connectTimeout: cfg.connectTimeoutMs,
      commandTimeout: cfg.commandTimeoutMs,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      enableOfflineQueue: true,
      enableAutoPipelining: opts.autoPipelining,
      retryStrategy,
      connectionName: opts.name,
      // A database that is not a number is never connected to (module comment).
      lazyConnect: db === null,
    };
    if (cfg.cluster !== null) {
      this.client = new Cluster(cfg.cluster.map((n) => ({ host: n.host, port: n.port })), {
        redisOptions: { connectTimeout: cfg.connectTimeoutMs, commandTimeout: cfg.commandTimeoutMs, connectionName: opts.name, maxRetriesPerRequest: 0 },
        clusterRetryStrategy: retryStrategy,
        enableOfflineQueue: true,
        enableAutoPipelining: opts.autoPipelining,
      });
    } else if (cfg.sentinels !== null) {
      this.client = new Redis({ ...options, sentinels: cfg.sentinels.map((n) => ({ host: n.host, port: n.port })), name: cfg.name ?? undefined });
    } else {
      // The database as validated (redisDatabase), never ioredis's own reading of the URL.
      this.client = new Redis(cfg.url!, { ...options, db: db ?? 0 });
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
  }

  /** A command failed (timeout, broken connection, script error): down until the connection or a probe says otherwise. */
  failed(err: unknown): void {
    if (this.closed) return;
    const msg = err instanceof Error ? err.message : String(err);
    this.markDown(/timed out/i.test(msg) ? `no reply within redis.commandTimeoutMs (${this.timeoutMs} ms)` : this.scrub(msg));
    // The connection may still look fine (a Redis that stopped answering):
    // nothing else would bring the state back, so probe.
    if (this.client.status === 'ready' && !this.refused) this.scheduleProbe();
  }

  /** A command came back: the next outage starts its probe backoff afresh. */
  succeeded(): void {
    this.backoffMs = BACKOFF_MIN_MS;
  }

  /** Down for `reason` (told to the owner once; no-op while down or closed). */
  markDown(reason: string): void {
    if (this.closed || this.state === LINK_DOWN) return;
    this.state = LINK_DOWN;
    this.owner.linkDown(reason);
  }

  /**
   * Closes the connection (no-op the second time): QUIT, so replies still
   * due arrive first; if Redis does not answer it within
   * redis.commandTimeoutMs + 100 ms, the connection is cut. State is left
   * as it was; the owner hears nothing more.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.probeTimer !== null) clearTimeout(this.probeTimer);
    this.probeTimer = null;
    const client = this.client;
    if (client.status === 'ready') {
      const cut = setTimeout(() => client.disconnect(), this.timeoutMs + 100);
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
    if (this.closed || this.state === LINK_UP || this.refused || this.db === null) return;
    const was = this.state;
    this.state = LINK_UP;
    this.lastError = '';
    if (this.probeTimer !== null) clearTimeout(this.probeTimer);
    this.probeTimer = null;
    this.owner.linkUp(was === LINK_DOWN);
  }

  private scheduleProbe(): void {
    if (this.probeTimer !== null || this.closed) return;
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null;
      if (this.closed || this.state !== LINK_DOWN) return;
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
