/**
 * Target discovery (issue 11), owned by the admin thread: a DnsWatcher per
 * upstream with `dns` (dns.ts) and one registry for the upstreams with
 * `registry` (registry.ts: in memory, or in Redis when `redis` is set).
 *
 * Whenever what they find changes, the whole snapshot (every discovering
 * upstream's registered then DNS targets) goes to the engine through
 * `push`, which merges it into the user's config and sends the workers a new
 * config version (engine/supervisor.ts applyDiscovery). Pushes are
 * coalesced: at most one per COALESCE_MS (a flapping registry or DNS answer
 * cannot storm the workers with versions), the first at once; a snapshot
 * equal to the last one pushed is not sent.
 *
 * Metrics (README, Metrics): turnpike_discovery_updates_total{upstream,source}
 * (a source's set for an upstream changed), turnpike_discovery_errors_total
 * {upstream,source} (a DNS lookup or a registry read failed; the last good
 * set is kept) and turnpike_upstream_targets{upstream} (targets of the
 * running config, every source).
 */
import type { GatewayConfig, RedisConfig, RegistryDiscoveryConfig } from '../../common/config/types.js';
import { log } from '../../common/log.js';
import type { DiscoveredTarget, DiscoverySnapshot } from '../../common/protocol.js';
import { DnsWatcher } from './dns.js';
import { MemoryRegistry, RedisRegistry, type RegisterResult, type Registry, type RegistryHooks } from './registry.js';

export { RegistryUnavailable } from './registry.js';

/** At most one snapshot per this many ms reaches the engine. */
export const COALESCE_MS = 250;
/** The first round (start, reload) is waited for at most this long before the admin thread reports ready. */
export const FIRST_ROUND_MAX_MS = 3_000;
/** While a source keeps failing, its error line is repeated at most this often. */
const ERROR_LOG_EVERY_MS = 60_000;

type Source = 'dns' | 'registry';
type Values = { labels: Record<string, string | number>; value: number }[];

interface DnsEntry {
  spec: string;
  watcher: DnsWatcher;
}

export interface DiscoveryOptions {
  /** Sends a snapshot to the engine (FromAdmin 'discovery'). */
  push(snapshot: DiscoverySnapshot): void;
  /** What the engine serves now (AdminData.discovered): a restarted admin thread keeps it until it knows better. */
  seed: DiscoverySnapshot;
}

export class Discovery {
  private readonly dns = new Map<string, DnsEntry>();
  private registry: Registry | null = null;
  private registrySpec = '';
  private registryUpstreams = new Map<string, RegistryDiscoveryConfig>();
  private config: GatewayConfig | null = null;
  /** Upstreams with dns or registry, in the running config. */
  private discovering: string[] = [];
  private readonly seed: Map<string, readonly DiscoveredTarget[]>;
  private lastKey: string;
  private lastPushAt = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private stopped = false;
  private readonly updates = new Map<string, number>();
  private readonly errors = new Map<string, number>();
  /** `upstream source` -> when its failure was last logged (0: not failing). */
  private readonly failing = new Map<string, number>();

  constructor(private readonly opts: DiscoveryOptions) {
    this.seed = new Map(opts.seed);
    this.lastKey = snapshotKey(opts.seed);
  }

  /**
   * Follows a (new) running config: starts, restarts (settings changed) or
   * stops each upstream's DNS watcher and the registry. Resolves once the
   * new watchers' first lookups and the registry's first reads ended (or
   * FIRST_ROUND_MAX_MS passed), after the snapshot they make was pushed.
   */
  async configure(config: GatewayConfig): Promise<void> {
    if (this.stopped) return;
    this.config = config;
    const ups = Object.values(config.upstreams);
    this.discovering = ups.filter((u) => u.dns !== null || u.registry !== null).map((u) => u.name).sort();
    const firsts: Promise<void>[] = [];
    const wanted = new Set<string>();
    for (const u of ups) {
      if (u.dns === null) continue;
      wanted.add(u.name);
      const spec = JSON.stringify(u.dns);
      const old = this.dns.get(u.name);
      if (old !== undefined && old.spec === spec) continue;
      old?.watcher.stop();
      // The answer served so far stays until a lookup succeeds: the old watcher's, or what the engine serves (an admin thread restarted).
      const seeded = this.seed.get(u.name)?.filter((t) => t.source === 'dns');
      const seed = old?.watcher.targets ?? (seeded !== undefined && seeded.length > 0 ? seeded : null);
      const watcher = new DnsWatcher(u.dns, {
        answer: (targets, changed, truncated) => {
          if (this.dns.get(u.name)?.watcher !== watcher) return;
          this.recovered(u.name, 'dns');
          if (truncated > 0) log('warn', 'DNS answer has more addresses than a DNS upstream takes; the first ones (by address) are used', { upstream: u.name, name: u.dns!.name, used: targets.length, ignored: truncated });
          if (changed) {
            this.count(this.updates, u.name, 'dns');
            log('info', 'DNS targets changed', { upstream: u.name, name: u.dns!.name, targets: targets.map((t) => t.url) });
            this.schedule();
          }
        },
        failure: (error) => {
          if (this.dns.get(u.name)?.watcher !== watcher) return;
          this.failed(u.name, 'dns', `${error}; the last good answer keeps serving (${watcher.targets?.length ?? 0} targets)`);
        },
      }, seed === null ? null : [...seed]);
      this.dns.set(u.name, { spec, watcher });
      watcher.start();
      firsts.push(watcher.first);
    }
    for (const [name, e] of this.dns) {
      if (wanted.has(name)) continue;
      e.watcher.stop();
      this.dns.delete(name);
    }
    this.registryUpstreams = new Map(ups.filter((u) => u.registry !== null).map((u) => [u.name, u.registry!] as const));
    const spec = this.registryUpstreams.size === 0 ? '' : JSON.stringify(config.redis);
    if (spec !== this.registrySpec) {
      const previous = this.registry;
      this.registry = null;
      this.registrySpec = spec;
      if (previous !== null) void previous.stop();
      if (spec !== '') this.registry = this.createRegistry(config.redis, previous);
    }
    if (this.registry !== null) firsts.push(this.registry.configure(this.registryUpstreams));
    this.seed.clear();
    let bound: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([Promise.all(firsts), new Promise<void>((r) => { bound = setTimeout(r, FIRST_ROUND_MAX_MS); })]);
    clearTimeout(bound);
    // At once when allowed (at start: before the thread reports ready), else within the coalescing window.
    if (Date.now() - this.lastPushAt >= COALESCE_MS) this.flush();
    else this.schedule();
  }

  private createRegistry(redis: RedisConfig | null, previous: Registry | null): Registry {
    const hooks: RegistryHooks = {
      changed: (upstream) => {
        if (!this.registryUpstreams.has(upstream)) return;
        this.recovered(upstream, 'registry');
        this.count(this.updates, upstream, 'registry');
        this.schedule();
      },
      error: (upstream, message) => this.failed(upstream, 'registry', `${message}; the last known registrations keep serving`),
    };
    // What the registry served so far (a new store, or a restarted admin thread) stays until the new one is read.
    const seed: [string, DiscoveredTarget[]][] = previous !== null
      ? [...this.registryUpstreams.keys()].map((u) => [u, [...previous.list(u)]])
      : [...this.seed].map(([u, ts]) => [u, ts.filter((t) => t.source === 'registry')]);
    return redis === null ? new MemoryRegistry(hooks, seed) : new RedisRegistry(redis, hooks, seed);
  }

  /** The registry of an upstream, or why there is none: 'unknown' (no such upstream), 'disabled' (no registry). */
  registryOf(upstream: string): { registry: Registry; cfg: RegistryDiscoveryConfig } | 'unknown' | 'disabled' {
    const u = this.config?.upstreams[upstream];
    if (u === undefined) return 'unknown';
    const cfg = this.registryUpstreams.get(upstream);
    if (cfg === undefined || this.registry === null) return 'disabled';
    return { registry: this.registry, cfg };
  }

  async register(upstream: string, target: { url: string; host: string; port: number }, weight: number, ttlMs: number): Promise<RegisterResult> {
    const r = this.registryOf(upstream);
    if (typeof r === 'string') throw new Error(`upstream ${upstream}: ${r}`);
    const result = await r.registry.register(upstream, target, weight, ttlMs, r.cfg.maxTargets);
    if (result.kind === 'created') log('info', 'target registered', { upstream, target: target.url, weight, ttlMs, store: r.registry.label });
    return result;
  }

  async deregister(upstream: string, url: string): Promise<boolean> {
    const r = this.registryOf(upstream);
    if (typeof r === 'string') throw new Error(`upstream ${upstream}: ${r}`);
    const removed = await r.registry.deregister(upstream, url);
    if (removed) log('info', 'target deregistered: draining it', { upstream, target: url, store: r.registry.label });
    return removed;
  }

  /** A registered target's expiry now (ms since the epoch), or null. */
  expiresAt(upstream: string, url: string): number | null {
    if (this.registry === null) return null;
    return this.registry.list(upstream).find((r) => r.url === url)?.expiresAt ?? null;
  }

  /** The snapshot now: every discovering upstream's registrations, then its DNS answer. */
  snapshot(): DiscoverySnapshot {
    return this.discovering.map((name) => {
      const regs = this.registryUpstreams.has(name) && this.registry !== null ? this.registry.list(name) : [];
      const dns = this.dns.get(name)?.watcher.targets ?? [];
      return [name, [...regs, ...dns]] as const;
    });
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    for (const e of this.dns.values()) e.watcher.stop();
    this.dns.clear();
    void this.registry?.stop();
    this.registry = null;
  }

  /** The discovery metrics, read at scrape; `config()`: the running config (targets of every source merged). */
  metrics(config: () => GatewayConfig): { name: string; help: string; type: string; collect: () => Values }[] {
    const pairs = (m: Map<string, number>) => () => {
      const out: Values = [];
      for (const [k, value] of m) {
        const [upstream, source] = k.split(' ') as [string, string];
        out.push({ labels: { upstream, source }, value });
      }
      return out;
    };
    return [
      { name: 'turnpike_discovery_updates_total', type: 'counter', help: 'Changes of the set of targets an upstream discovers, by source (dns, registry).', collect: pairs(this.updates) },
      { name: 'turnpike_discovery_errors_total', type: 'counter', help: 'Failed DNS lookups and registry reads, by upstream and source; the last good set keeps serving.', collect: pairs(this.errors) },
      {
        name: 'turnpike_upstream_targets', type: 'gauge', help: 'Targets of each upstream in the running config, every source (config, dns, registry).',
        collect: () => Object.values(config().upstreams).map((u) => ({ labels: { upstream: u.name }, value: u.targets.length })),
      },
    ];
  }

  private count(m: Map<string, number>, upstream: string, source: Source): void {
    const k = `${upstream} ${source}`;
    m.set(k, (m.get(k) ?? 0) + 1);
  }

  private failed(upstream: string, source: Source, message: string): void {
    this.count(this.errors, upstream, source);
    const k = `${upstream} ${source}`;
    const last = this.failing.get(k) ?? 0;
    const now = Date.now();
    if (last !== 0 && now - last < ERROR_LOG_EVERY_MS) return;
    this.failing.set(k, now);
    log('error', source === 'dns' ? 'DNS discovery failed' : 'registry discovery failed', {
      upstream, error: message,
      hint: source === 'dns'
        ? 'the last good answer keeps serving; check the name (dns.name), the DNS servers (dns.resolvers, or /etc/resolv.conf) and dns.timeoutMs'
        : 'the last set of registered targets keeps serving; check that the Redis of redis.url is running and reachable from this host',
    });
  }

  private recovered(upstream: string, source: Source): void {
    const k = `${upstream} ${source}`;
    if (!this.failing.has(k)) return;
    this.failing.delete(k);
    log('info', source === 'dns' ? 'DNS discovery works again' : 'registry discovery works again', { upstream });
  }

  /** A push at most COALESCE_MS after the previous one. */
  private schedule(): void {
    if (this.timer !== null || this.stopped) return;
    const wait = Math.max(0, this.lastPushAt + COALESCE_MS - Date.now());
    this.timer = setTimeout(() => {
      this.timer = null;
      this.flush();
    }, wait);
    this.timer.unref();
  }

  /** Pushes the snapshot now when it differs from the last one pushed. */
  private flush(): void {
    if (this.stopped) return;
    const snap = this.snapshot();
    const key = snapshotKey(snap);
    if (key === this.lastKey) return;
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    this.lastKey = key;
    this.lastPushAt = Date.now();
    this.opts.push(snap);
  }
}

/** What a snapshot serves (URLs and weights per upstream and source), expiries left out: a heartbeat is no change. */
function snapshotKey(s: DiscoverySnapshot): string {
  return JSON.stringify(s.filter(([, ts]) => ts.length > 0).map(([u, ts]) => [u, ts.map((t) => `${t.source} ${t.url} ${t.weight}`)]));
}
