/**
 * The target registry of upstreams with `registry` (admin thread): services
 * register a target with a TTL and renew it (heartbeat) before it runs out;
 * a registration not renewed expires and is drained like any removed target.
 *
 * Two stores, one interface:
 *  - MemoryRegistry (no `redis` in the config): this instance's admin
 *    thread holds the registrations; each expires on a timer at its exact
 *    expiry. One gateway instance only (another instance has its own).
 *  - RedisRegistry (with `redis`): shared by every instance using that
 *    Redis. Per upstream a sorted set `<keyPrefix>registry:{<upstream>}`
 *    (member: the target URL exactly as `http://host:port`, normalised as
 *    config targets are; score: its expiry in ms since the epoch, by Redis's
 *    clock: the gateway's scripts read Redis TIME) and a hash
 *    `<keyPrefix>registry:{<upstream>}:weights` (member -> weight 1..1000,
 *    absent: 1). A change is published on `<keyPrefix>registry` (message:
 *    the upstream name), which every instance subscribes to and answers by
 *    reading that upstream's set; every instance also reads every set each
 *    POLL_MS (a lost message, a service that writes without publishing,
 *    expiries). So a change reaches every instance within POLL_MS, at
 *    once when published. Redis unreachable: the last set read is kept and
 *    served (an error line once per outage, turnpike_discovery_errors_total
 *    for every failed read), registrations through the API answer 503.
 *    The `{<upstream>}` hash tag keeps both keys of an upstream in one slot
 *    of a Redis Cluster.
 *
 * Services may write Redis directly (README, "Discovery"): ZADD the set
 * with score = now + ttl (Redis TIME, ms), HSET a weight, then PUBLISH the
 * upstream's name (optional: the poll finds it within POLL_MS). A member that
 * is not a normalised http:// URL is ignored, with a warning once.
 */
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { redisDatabase } from '../../common/config/rate-limit.js';
import type { RedisConfig, RegistryDiscoveryConfig } from '../../common/config/types.js';
import { parseTargetUrl } from '../../common/config/validate.js';
import { log } from '../../common/log.js';
import type { DiscoveredTarget } from '../../common/protocol.js';
import { describeStore, reconnectDelay, safeMessage } from '../rate-limit/store.js';

/** Every instance reads every registry set this often (ms): the bound on how late a change without a PUBLISH, or an expiry, is seen. */
export const POLL_MS = 500;

export type Registration = DiscoveredTarget & { expiresAt: number };

export type RegisterResult =
  | { kind: 'created' | 'renewed'; expiresAt: number }
  /** The upstream has registry.maxTargets live registrations and this URL is not one of them. */
  | { kind: 'full'; count: number };

/** The registry store is unreachable (Redis down): the API answers 503. */
export class RegistryUnavailable extends Error {
  override readonly name = 'RegistryUnavailable';
}

export interface RegistryHooks {
  /** The live set of `upstream` changed. */
  changed(upstream: string): void;
  /** A read of `upstream` failed (the last set stays). */
  error(upstream: string, message: string): void;
}

export interface Registry {
  /** Where it lives, for messages ("memory" or the Redis description). */
  readonly label: string;
  /** Sets which upstreams have a registry; resolves once each was read once (Redis: or failed to be). */
  configure(upstreams: ReadonlyMap<string, RegistryDiscoveryConfig>): Promise<void>;
  register(upstream: string, target: { url: string; host: string; port: number }, weight: number, ttlMs: number, maxTargets: number): Promise<RegisterResult>;
  /** true: it was registered. */
  deregister(upstream: string, url: string): Promise<boolean>;
  /** The live registrations of an upstream (as last read), by URL. */
  list(upstream: string): readonly Registration[];
  stop(): Promise<void>;
}

const byUrl = (a: { url: string }, b: { url: string }) => (a.url < b.url ? -1 : a.url > b.url ? 1 : 0);

function registration(target: { url: string; host: string; port: number }, weight: number, expiresAt: number): Registration {
  return { url: target.url, host: target.host, port: target.port, weight, source: 'registry', expiresAt };
}

/** The registry in this admin thread's memory (no `redis`). */
export class MemoryRegistry implements Registry {
  readonly label = 'memory';
  private readonly sets = new Map<string, Map<string, Registration>>();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private timerAt = Infinity;

  /** `seed`: registrations the engine still serves (an admin thread restarted): kept until they expire. */
  constructor(private readonly hooks: RegistryHooks, seed: ReadonlyArray<readonly [string, readonly DiscoveredTarget[]]> = []) {
    for (const [upstream, targets] of seed) {
      for (const t of targets) {
        if (t.source !== 'registry' || t.expiresAt === null) continue;
        this.setOf(upstream).set(t.url, { ...t, expiresAt: t.expiresAt });
      }
    }
    this.sweep();
  }

  configure(upstreams: ReadonlyMap<string, RegistryDiscoveryConfig>): Promise<void> {
    for (const name of [...this.sets.keys()]) if (!upstreams.has(name)) this.sets.delete(name);
    return Promise.resolve();
  }

  register(upstream: string, target: { url: string; host: string; port: number }, weight: number, ttlMs: number, maxTargets: number): Promise<RegisterResult> {
    this.sweep();
    const set = this.setOf(upstream);
    const old = set.get(target.url);
    if (old === undefined && set.size >= maxTargets) return Promise.resolve({ kind: 'full', count: set.size });
    const expiresAt = Date.now() + ttlMs;
    set.set(target.url, registration(target, weight, expiresAt));
    if (old === undefined || old.weight !== weight) this.hooks.changed(upstream);
    this.schedule(expiresAt);
    return Promise.resolve({ kind: old === undefined ? 'created' : 'renewed', expiresAt });
  }

  deregister(upstream: string, url: string): Promise<boolean> {
    const removed = this.sets.get(upstream)?.delete(url) ?? false;
    if (removed) this.hooks.changed(upstream);
    return Promise.resolve(removed);
  }

  list(upstream: string): readonly Registration[] {
    const set = this.sets.get(upstream);
    return set === undefined ? [] : [...set.values()].sort(byUrl);
  }

  stop(): Promise<void> {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    return Promise.resolve();
  }

  private setOf(upstream: string): Map<string, Registration> {
    let set = this.sets.get(upstream);
    if (set === undefined) this.sets.set(upstream, (set = new Map()));
    return set;
  }

  /** Drops what expired (telling who changed) and arms the timer for the next expiry. */
  private sweep(): void {
    const now = Date.now();
    let next = Infinity;
    for (const [upstream, set] of this.sets) {
      let removed = false;
      for (const [url, r] of set) {
        if (r.expiresAt <= now) {
          set.delete(url);
          removed = true;
          log('info', 'registered target expired: draining it', { upstream, target: url });
        } else if (r.expiresAt < next) next = r.expiresAt;
      }
      if (removed) this.hooks.changed(upstream);
    }
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = Infinity;
    if (next !== Infinity) this.schedule(next);
  }

  private schedule(at: number): void {
    if (at >= this.timerAt) return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(() => this.sweep(), Math.max(0, at - Date.now()) + 1);
    this.timer.unref();
  }
}

// -- Redis ----------------------------------------------------------------------

/** Redis's clock in ms (TIME: seconds, microseconds). */
const NOW_LUA = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) ";

/** KEYS: set, weights. ARGV: url, weight, ttlMs, maxTargets. Returns {1 created | 0 renewed | -1 full, expiresAt or count, weight changed}. */
const REGISTER_LUA = NOW_LUA + `
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) redis.call('HDEL', KEYS[2], unpack(gone)) end
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not old then
  local n = redis.call('ZCARD', KEYS[1])
  if n >= tonumber(ARGV[4]) then return {-1, n, 0} end
end
local exp = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], exp, ARGV[1])
local w = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local changed = 0
if (not old) or (w ~= ARGV[2] and not (w == false and ARGV[2] == '1')) then changed = 1 end
if old then return {0, exp, changed} end
return {1, exp, 1}
`;

/** KEYS: set, weights. Returns {now, [member, score, ...], [weight or false per member]}; drops what expired. */
const READ_LUA = NOW_LUA + `
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) redis.call('HDEL', KEYS[2], unpack(gone)) end
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local w = {}
for i = 1, #live, 2 do w[#w + 1] = redis.call('HGET', KEYS[2], live[i]) end
return {now, live, w}
`;

/** KEYS: set, weights. ARGV: url. Returns 1 when it was registered. */
const DEREGISTER_LUA = `
local n = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return n
`;

interface RegistryCommands {
  tpregister(set: string, weights: string, url: string, weight: number, ttlMs: number, max: number): Promise<[number, number, number]>;
  tpread(set: string, weights: string): Promise<[number, string[], (string | null)[]]>;
  tpderegister(set: string, weights: string, url: string): Promise<number>;
}
type Client = (Redis | Cluster) & RegistryCommands;

/** The two keys of an upstream's registry and the change channel (README, "Discovery"). */
export function registryKeys(prefix: string, upstream: string): { set: string; weights: string } {
  const set = `${prefix}registry:{${upstream}}`;
  return { set, weights: `${set}:weights` };
}
export const registryChannel = (prefix: string) => `${prefix}registry`;

function createClient(cfg: RedisConfig, name: string, subscriber: boolean): Client {
  const scripts = {
    tpregister: { lua: REGISTER_LUA, numberOfKeys: 2 },
    tpread: { lua: READ_LUA, numberOfKeys: 2 },
    tpderegister: { lua: DEREGISTER_LUA, numberOfKeys: 2 },
  };
  const common: RedisOptions = {
    lazyConnect: true,
    connectTimeout: cfg.connectTimeoutMs,
    commandTimeout: subscriber ? undefined : cfg.commandTimeoutMs,
    maxRetriesPerRequest: subscriber ? null : 0,
    connectionName: name,
  };
  if (cfg.cluster !== null) {
    return new Cluster(cfg.cluster.map((n) => ({ host: n.host, port: n.port })), {
      lazyConnect: true, enableOfflineQueue: subscriber, clusterRetryStrategy: (times: number) => reconnectDelay(times), scripts, redisOptions: common,
    }) as Client;
  }
  const opts: RedisOptions = { ...common, enableOfflineQueue: subscriber, retryStrategy: (times: number) => reconnectDelay(times), scripts };
  if (cfg.sentinels !== null) {
    return new Redis({ ...opts, sentinels: cfg.sentinels.map((n) => ({ host: n.host, port: n.port })), name: cfg.name!, sentinelRetryStrategy: (t: number) => reconnectDelay(t) }) as Client;
  }
  return new Redis(cfg.url!, { ...opts, db: redisDatabase(cfg.url!) ?? 0 }) as Client;
}

/** The registry in Redis (`redis` set): shared by every instance, see the module comment. */
export class RedisRegistry implements Registry {
  readonly label: string;
  private readonly client: Client;
  private readonly sub: Client;
  private readonly prefix: string;
  private upstreams: ReadonlyMap<string, RegistryDiscoveryConfig> = new Map();
  /** Live set per upstream as last read (kept while Redis is unreachable). */
  private readonly cache = new Map<string, Registration[]>();
  private poll: ReturnType<typeof setInterval> | null = null;
  private stopped = false;
  /** Members already warned about (not a normalised URL). */
  private readonly warned = new Set<string>();
  private readonly ready: Promise<void>;

  constructor(readonly cfg: RedisConfig, private readonly hooks: RegistryHooks, seed: ReadonlyArray<readonly [string, readonly DiscoveredTarget[]]> = []) {
    this.label = describeStore(cfg);
    this.prefix = cfg.keyPrefix;
    for (const [upstream, targets] of seed) {
      const regs = targets.filter((t): t is Registration => t.source === 'registry' && t.expiresAt !== null);
      if (regs.length > 0) this.cache.set(upstream, regs);
    }
    this.client = createClient(cfg, 'turnpike-discovery', false);
    this.sub = createClient(cfg, 'turnpike-discovery-sub', true);
    // Connection errors: reported by the failed reads (with the upstream); ioredis needs a listener.
    this.client.on('error', () => {});
    this.sub.on('error', () => {});
    this.ready = new Promise<void>((resolve) => {
      const t = setTimeout(resolve, cfg.connectTimeoutMs);
      t.unref();
      this.client.once('ready', () => { clearTimeout(t); resolve(); });
    });
    this.client.connect().catch(() => { /* reconnects with backoff; reads report it */ });
    this.sub.connect().catch(() => {});
    this.sub.on('message', (_channel: string, upstream: string) => {
      if (this.upstreams.has(upstream)) void this.read(upstream);
    });
    void this.sub.subscribe(registryChannel(this.prefix)).catch(() => { /* re-subscribed on reconnect (ioredis autoResubscribe) */ });
    // The subscriber was away: a message may have been missed.
    this.sub.on('ready', () => { for (const u of this.upstreams.keys()) void this.read(u); });
  }

  async configure(upstreams: ReadonlyMap<string, RegistryDiscoveryConfig>): Promise<void> {
    this.upstreams = upstreams;
    for (const name of [...this.cache.keys()]) if (!upstreams.has(name)) this.cache.delete(name);
    if (this.poll === null && !this.stopped) {
      this.poll = setInterval(() => { for (const u of this.upstreams.keys()) void this.read(u); }, POLL_MS);
      this.poll.unref();
    }
    await this.ready;
    await Promise.all([...upstreams.keys()].map((u) => this.read(u)));
  }

  async register(upstream: string, target: { url: string; host: string; port: number }, weight: number, ttlMs: number, maxTargets: number): Promise<RegisterResult> {
    const k = registryKeys(this.prefix, upstream);
    let r: [number, number, number];
    try {
      r = await this.client.tpregister(k.set, k.weights, target.url, weight, ttlMs, maxTargets);
    } catch (err) {
      throw new RegistryUnavailable(`the registry's Redis (${this.label}) is unreachable: ${safeMessage(err)}`);
    }
    const [kind, value, changed] = r.map(Number) as [number, number, number];
    if (kind === -1) return { kind: 'full', count: value };
    // Every instance (this one too) reads the set when told.
    if (changed === 1) await this.client.publish(registryChannel(this.prefix), upstream).catch(() => {});
    await this.read(upstream);
    return { kind: kind === 1 ? 'created' : 'renewed', expiresAt: value };
  }

  async deregister(upstream: string, url: string): Promise<boolean> {
    const k = registryKeys(this.prefix, upstream);
    let n: number;
    try {
      n = Number(await this.client.tpderegister(k.set, k.weights, url));
    } catch (err) {
      throw new RegistryUnavailable(`the registry's Redis (${this.label}) is unreachable: ${safeMessage(err)}`);
    }
    if (n > 0) {
      await this.client.publish(registryChannel(this.prefix), upstream).catch(() => {});
      await this.read(upstream);
    }
    return n > 0;
  }

  list(upstream: string): readonly Registration[] {
    return this.cache.get(upstream) ?? [];
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.poll !== null) clearInterval(this.poll);
    this.poll = null;
    this.client.disconnect();
    this.sub.disconnect();
  }

  /** Reads one upstream's live set; tells `changed` when it differs from the cached one. A failure keeps the cache. */
  private async read(upstream: string): Promise<void> {
    if (this.stopped) return;
    const k = registryKeys(this.prefix, upstream);
    let reply: [number, string[], (string | null)[]];
    try {
      reply = await this.client.tpread(k.set, k.weights);
    } catch (err) {
      if (!this.stopped) this.hooks.error(upstream, `cannot read the registry of upstream "${upstream}" from Redis (${this.label}): ${safeMessage(err)}`);
      return;
    }
    if (this.stopped || !this.upstreams.has(upstream)) return;
    const [, live, weights] = reply;
    const regs: Registration[] = [];
    for (let i = 0, j = 0; i < live.length; i += 2, j++) {
      const member = live[i]!;
      const parsed = parseTargetUrl(member);
      if (typeof parsed === 'string' || parsed.url !== member) {
        const key = `${upstream} ${member}`;
        if (!this.warned.has(key)) {
          this.warned.add(key);
          log('warn', 'ignored a registry entry in Redis: not a target URL written as http://host:port', {
            upstream, member: member.slice(0, 200), problem: typeof parsed === 'string' ? parsed : `write it as ${parsed.url}`, key: k.set,
          });
        }
        continue;
      }
      const w = Number(weights[j] ?? 1);
      regs.push(registration(parsed, Number.isInteger(w) && w >= 1 && w <= 1000 ? w : 1, Number(live[i + 1])));
    }
    regs.sort(byUrl);
    const before = this.cache.get(upstream) ?? [];
    const key = (rs: readonly Registration[]) => rs.map((r) => `${r.url} ${r.weight}`).join(',');
    this.cache.set(upstream, regs);
    if (key(before) !== key(regs)) this.hooks.changed(upstream);
  }
}
