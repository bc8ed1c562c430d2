/**
 * The admin thread's Redis sync of cluster-wide rate limits (`scope:
 * cluster`, `mode: batched`): every `redis.syncIntervalMs` one pipelined
 * round of sync scripts pushes what this instance admitted since the last
 * push and writes the cluster-wide state back into the shared bucket table
 * (sync.ts says how, script.ts what Redis holds). The data plane never
 * waits for Redis: workers decide on the table; this module keeps the
 * table close to what every instance together has consumed.
 *
 * The store is `up` or `down` (and `connecting` until the first outcome):
 *  - down (connection refused or lost, a command failing or taking longer
 *    than redis.commandTimeoutMs): the table's header says so (H_STORE_DOWN
 *    = 1): cluster limits with onStoreError allow_local go on locally with
 *    this instance's share of the rate (H_SHARE = 1 / instances, the
 *    instance count last learned from the heartbeats; 1 if never known),
 *    and those with deny answer 503 rate_limit_store_unavailable. What
 *    rate limits admit meanwhile is dropped, not pushed later: it was
 *    already limited locally with the share, and charging it again after
 *    recovery would refuse the next requests for consumption that was
 *    within the limit. Quotas keep their count and push it on recovery (a
 *    quota is a count that must survive; its local decisions used the last
 *    known cluster count).
 *  - the client reconnects by itself with backoff (store.ts); once it is
 *    connected a heartbeat is tried at every cycle, at most every
 *    PROBE_INTERVAL_MS (so every max(syncIntervalMs, PROBE_INTERVAL_MS)),
 *    and on success the store is up again: a Redis that answers again is
 *    used again within about that interval (plus, while it still does not
 *    answer, commandTimeoutMs per probe).
 * Each change of state is one log line and moves
 * turnpike_rate_limit_store_up; failures are counted
 * (turnpike_rate_limit_store_errors_total), never logged one by one. How
 * long it was down (downForMs) is measured from the start of the operation
 * that failed first (a sync that timed out started commandTimeoutMs before
 * it failed). Nothing here lets a promise rejection escape: every store
 * call is awaited in a try or given a rejection handler, and the cycle
 * chain (serial) catches whatever is left.
 *
 * Redis that lost its data (a restart without persistence, FLUSHALL): the
 * heartbeat says so (this instance, which beat less than INSTANCE_TTL_MS
 * ago, is new to the set), and so may a recovery after an outage; the sync
 * then pushes every quota count this instance knows (sync.ts,
 * reconcileQuotas), so a quota is not restarted by it.
 *
 * Instances: every HEARTBEAT_MS this instance records itself in the
 * `<keyPrefix>rl:instances` sorted set (scored by Redis's clock); members
 * silent for INSTANCE_TTL_MS are dropped. Its size is the instance count.
 *
 * Reloads (`configure`): a changed `redis` section closes the old client
 * (after a last push with it) and opens the new one; changed policies
 * simply change the set of tags synced (a changed policy has a new tag,
 * hence new keys: its old keys expire). Shutdown (`stop`): a last push,
 * the heartbeat entry removed, QUIT.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { GatewayConfig, RateLimitPolicy, RedisConfig } from '../../common/config/types.js';
import { log } from '../../common/log.js';
import { H_DOWN_SHARE, H_SHARE, H_STORE_DOWN, type RateLimitTable } from '../../common/rate-limit-layout.js';
import { instancesKey } from './script.js';
import { RedisStore, STORE_ERROR_REASONS, StoreDatabaseError, classifyStoreError, safeMessage, type StoreErrorReason } from './store.js';
import { SyncEngine, type Batch } from './sync.js';

/** How often an instance records itself as alive (ms). */
export const HEARTBEAT_MS = 1_000;
/** An instance without a heartbeat for this long no longer counts (ms). */
export const INSTANCE_TTL_MS = 5_000;
/** Probing a store that is down: at most one heartbeat per this many ms (and at most one per cycle). */
export const PROBE_INTERVAL_MS = 250;
/** Without Redis, the leftovers of removed cluster policies are cleaned this often (ms). */
const OFF_INTERVAL_MS = 1_000;
/** Sync cycle durations (seconds): turnpike_rate_limit_sync_duration_seconds. */
export const SYNC_DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

export type StoreState = 'off' | 'connecting' | 'up' | 'down';

/** What /metrics reads (admin/metrics.ts). */
export interface RateLimitSyncStats {
  /** False without a `redis` section: the store metrics have no sample then. */
  configured: boolean;
  up: boolean;
  /** Instances sharing the store (last heartbeat; 1 if never known). */
  instances: number;
  errors: Readonly<Record<StoreErrorReason, number>>;
  /** Cumulative counts per SYNC_DURATION_BUCKETS bucket, then +Inf. */
  durationBuckets: readonly number[];
  durationSum: number;
  durationCount: number;
  /** Keys synced by the last cycle. */
  lastKeys: number;
  /** Keys synced since start. */
  keysTotal: number;
  /** Admissions not pushed (Redis away, or their policy gone). */
  discarded: number;
}

export interface RateLimitSyncOptions {
  table: RateLimitTable;
  /** The shared clock (common/rate-limit-layout.ts), Unix ms. */
  now: () => number;
}

/** The cluster-scope batched policies of a config (named and inline, each once). */
export function clusterPolicies(config: GatewayConfig): RateLimitPolicy[] {
  const byTag = new Map<number, RateLimitPolicy>();
  for (const p of Object.values(config.rateLimits)) byTag.set(p.tag, p);
  for (const r of config.routes) for (const p of r.rateLimit) byTag.set(p.tag, p);
  return [...byTag.values()].filter((p) => p.scope === 'cluster' && p.mode === 'batched');
}

function sameRedis(a: RedisConfig | null, b: RedisConfig | null): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

export class RateLimitSync {
  private readonly table: RateLimitTable;
  private readonly now: () => number;
  private readonly engine: SyncEngine;
  /** This process, in the heartbeat set: host, pid and a random part (two starts never collide). */
  readonly instanceId = `${hostname()}/${process.pid}/${randomBytes(4).toString('hex')}`;
  private redis: RedisConfig | null = null;
  private store: RedisStore | null = null;
  private state: StoreState = 'off';
  /** The current store has been up at least once. */
  private everUp = false;
  private downSince = 0;
  private instances = 1;
  private lastBeat = -Infinity;
  private nextProbe = 0;
  private timer: NodeJS.Timeout | null = null;
  /** Cycles, reconfigurations and the stop run one at a time, in order. */
  private chain: Promise<void> = Promise.resolve();
  private stopped = false;
  private outcome: (() => void) | null = null;
  /** Waiting for the next cycle to start and end (synced()). */
  private waiters: (() => void)[] = [];
  private readonly errors: Record<StoreErrorReason, number> = { connection: 0, timeout: 0, command: 0 };
  private readonly buckets = new Array<number>(SYNC_DURATION_BUCKETS.length + 1).fill(0);
  private durationSum = 0;
  private durationCount = 0;

  constructor(opts: RateLimitSyncOptions) {
    this.table = opts.table;
    this.now = opts.now;
    this.engine = new SyncEngine(this.table, this.now);
  }

  /** `up`, `down`, `connecting`, or `off` (no redis). */
  get storeState(): StoreState {
    return this.state;
  }

  /**
   * Applies a config: at start, and on every reload. When it opens a new
   * store, resolves once the first connection attempt succeeded or failed
   * (at most connectTimeoutMs + commandTimeoutMs later), so that a gateway
   * that reports itself started knows whether its store is reachable.
   */
  async configure(config: GatewayConfig): Promise<void> {
    let opened = false;
    await this.serial(async () => {
      if (this.stopped) return;
      const now = this.now();
      if (!sameRedis(this.redis, config.redis)) {
        await this.closeStore(true);
        this.redis = config.redis;
        if (config.redis !== null) {
          this.openStore(config.redis);
          opened = true;
        }
      }
      this.engine.clusterSlots = config.redis?.cluster != null;
      this.engine.setPolicies(clusterPolicies(config), config.redis?.keyPrefix ?? '', now);
      this.schedule(0);
    });
    if (opened && this.state === 'connecting') {
      const r = this.redis!;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, r.connectTimeoutMs + r.commandTimeoutMs);
        this.outcome = () => { clearTimeout(timer); resolve(); };
      });
    }
  }

  /** The last push, leave the instance set, close the connection. No cycle runs after. */
  async stop(): Promise<void> {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    await this.serial(async () => {
      this.stopped = true;
      await this.closeStore(true);
    });
  }

  /**
   * Resolves once a cycle that started after this call has finished: what
   * the workers admitted before the call has been pushed (or dropped, while
   * Redis is away) and the replies written back.
   */
  synced(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  stats(): RateLimitSyncStats {
    let cum = 0;
    const cumulative = this.buckets.map((n) => (cum += n));
    return {
      configured: this.redis !== null,
      up: this.state === 'up',
      instances: this.instances,
      errors: { ...this.errors },
      durationBuckets: cumulative,
      durationSum: this.durationSum,
      durationCount: this.durationCount,
      lastKeys: this.engine.counts.lastKeys,
      keysTotal: this.engine.counts.keysTotal,
      discarded: this.engine.counts.discarded,
    };
  }

  private serial(fn: () => Promise<void>): Promise<void> {
    const run = this.chain.then(fn);
    this.chain = run.catch((err: Error) => log('error', 'rate-limit sync failed unexpectedly', { error: err.stack ?? err.message }));
    return this.chain;
  }

  /** The next cycle in `delayMs` (replacing a later one). */
  private schedule(delayMs: number): void {
    if (this.stopped) return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      const started = performance.now();
      const waiting = this.waiters.splice(0);
      void this.serial(() => this.cycle()).then(() => {
        for (const w of waiting) w();
        if (this.timer !== null || this.stopped) return;
        const interval = this.redis?.syncIntervalMs ?? OFF_INTERVAL_MS;
        // Nothing left to clean without Redis: sleep until the next configure.
        if (this.redis === null && this.engine.size === 0) return;
        this.schedule(Math.max(0, interval - (performance.now() - started)));
      });
    }, delayMs);
    this.timer.unref();
  }

  private openStore(cfg: RedisConfig): void {
    this.state = 'connecting';
    // Not connected yet is not shared yet: deny limits refuse until markUp
    // (allow_local ones decide locally meanwhile), as when Redis is away.
    this.table.f64[H_STORE_DOWN] = 1;
    this.everUp = false;
    this.setInstances(1);
    this.lastBeat = -Infinity;
    const store = new RedisStore(cfg, {
      onConnectionError: (err) => {
        if (this.store !== store) return;
        this.failure(err);
      },
      onReady: () => {
        if (this.store !== store) return;
        // Try now rather than at the next tick.
        this.nextProbe = 0;
        this.schedule(0);
      },
      onClose: () => {
        if (this.store !== store || this.state !== 'up') return;
        this.failure(new Error('the connection to Redis was closed'));
      },
    });
    this.store = store;
    store.connect();
  }

  /** Closes the current store, after a last push when it is up and `flush`. */
  private async closeStore(flush: boolean): Promise<void> {
    const store = this.store;
    if (store === null) return;
    this.store = null;
    if (flush && this.state === 'up') {
      const calls: Promise<unknown>[] = [];
      this.push(store, calls, () => {});
      calls.push(store.heartbeat(instancesKey(store.config.keyPrefix), this.instanceId, INSTANCE_TTL_MS, true).catch(() => {}));
      await Promise.all(calls);
    }
    await store.close(store.config.commandTimeoutMs);
    this.state = 'off';
    this.table.f64[H_STORE_DOWN] = 0;
    this.table.f64[H_SHARE] = 1;
    this.resolveOutcome();
  }

  /** Sends every batch collect() builds; `onError` hears each failed call. */
  private push(store: RedisStore, calls: Promise<unknown>[], onError: (err: unknown) => void): void {
    const engine = this.engine;
    engine.collect(this.now(), (batch: Batch) => {
      batch.sentAt = this.now();
      calls.push(store.sync(batch.command()).then(
        (reply) => engine.apply(batch, reply, this.now()),
        (err: unknown) => {
          engine.failed(batch);
          onError(err);
        },
      ));
    });
  }

  private async cycle(): Promise<void> {
    if (this.stopped) return;
    const now = this.now();
    this.engine.expire(now);
    const store = this.store;
    if (store === null) {
      this.engine.discardPending();
      return;
    }
    if (this.state !== 'up') {
      this.engine.discardPending();
      if (!store.ready || now < this.nextProbe) return;
      this.nextProbe = now + PROBE_INTERVAL_MS;
      try {
        await this.beat(store);
      } catch (err) {
        this.failure(err, now);
        return;
      }
      if (this.store !== store) return;
      // Down, then up: Redis may have restarted empty meanwhile (the heartbeat
      // tells only when this instance beat less than INSTANCE_TTL_MS ago).
      if (this.everUp) this.engine.reconcileQuotas();
      this.markUp();
    }
    const started = performance.now();
    const calls: Promise<unknown>[] = [];
    let firstError: unknown = null;
    const onError = (err: unknown) => { firstError ??= err; };
    if (now - this.lastBeat >= HEARTBEAT_MS) calls.push(this.beat(store).catch(onError));
    this.push(store, calls, onError);
    await Promise.all(calls);
    this.observe((performance.now() - started) / 1000);
    if (firstError !== null && this.store === store) this.failure(firstError, now);
  }

  /** The instance count, and the share a strict limit falls back to (H_DOWN_SHARE) with it. */
  private setInstances(n: number): void {
    this.instances = n;
    this.table.f64[H_DOWN_SHARE] = 1 / n;
  }

  private async beat(store: RedisStore): Promise<void> {
    const before = this.lastBeat;
    const reply = await store.heartbeat(instancesKey(store.config.keyPrefix), this.instanceId, INSTANCE_TTL_MS);
    const [n, added] = Array.isArray(reply) ? reply : [reply, 0];
    this.setInstances(Math.max(1, Number(n) || 1));
    const at = this.now();
    this.lastBeat = at;
    // New to the set although it beat within the ttl: the set (and so, most
    // likely, every key) was lost. Push every quota count known here.
    if (Number(added) === 1 && at - before < INSTANCE_TTL_MS) this.engine.reconcileQuotas();
  }

  private observe(seconds: number): void {
    let i = 0;
    while (i < SYNC_DURATION_BUCKETS.length && seconds > SYNC_DURATION_BUCKETS[i]!) i++;
    this.buckets[i]!++;
    this.durationSum += seconds;
    this.durationCount++;
  }

  /** A store operation failed; `since`: when the operation that failed started (default: now). */
  private failure(err: unknown, since?: number): void {
    this.errors[classifyStoreError(err)]++;
    this.markDown(err, since);
  }

  private markDown(err: unknown, since?: number): void {
    if (this.state === 'down' || this.store === null) return;
    const first = !this.everUp;
    this.state = 'down';
    const now = this.now();
    this.downSince = since !== undefined && since < now ? since : now;
    this.nextProbe = now + PROBE_INTERVAL_MS;
    const share = 1 / this.instances;
    this.table.f64[H_SHARE] = share;
    this.table.f64[H_STORE_DOWN] = 1;
    const database = err instanceof StoreDatabaseError;
    log('warn', database
      ? 'rate-limit store refused the database named in redis.url; cluster limits are enforced locally until it accepts it (name a database the server has: 0-15 unless its "databases" setting says otherwise)'
      : first
      ? 'rate-limit store unreachable (not connected yet); cluster limits are enforced locally until it answers (check that Redis is running and reachable at the address configured under redis)'
      : 'rate-limit store unreachable; cluster limits are enforced locally with this instance\'s share until it answers again (check that Redis is running and reachable)', {
      store: this.store.label,
      reason: classifyStoreError(err),
      error: safeMessage(err),
      instances: this.instances,
      share,
    });
    this.resolveOutcome();
  }

  private markUp(): void {
    if (this.state === 'up' || this.store === null) return;
    const was = this.state;
    this.state = 'up';
    this.table.f64[H_STORE_DOWN] = 0;
    this.table.f64[H_SHARE] = 1;
    if (!this.everUp) {
      this.everUp = true;
      log('info', 'rate-limit store connected; cluster limits are shared', { store: this.store.label, instances: this.instances });
    } else if (was === 'down') {
      log('info', 'rate-limit store reachable again; cluster limits are shared again', {
        store: this.store.label, instances: this.instances, downForMs: Math.round(this.now() - this.downSince),
      });
    }
    this.resolveOutcome();
  }

  private resolveOutcome(): void {
    const o = this.outcome;
    this.outcome = null;
    o?.();
  }
}

export { STORE_ERROR_REASONS };
