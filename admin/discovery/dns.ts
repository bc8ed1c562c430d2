/**
 * DNS discovery of one upstream (`upstreams.<name>.dns`), in the admin
 * thread: the addresses of `dns.name`, looked up every `refreshMs`, each
 * address a target `http://<address>:<port>`. Two ways:
 *  - without `resolvers`: the system's resolver, as every program on the
 *    machine (getaddrinfo through dns.lookup: /etc/hosts, then the servers
 *    of /etc/resolv.conf, as nsswitch.conf says), so `localhost` and names
 *    in /etc/hosts (docker --add-host, Kubernetes hostAliases) resolve.
 *    getaddrinfo cannot tell "no such name" from "no address" on every
 *    system: ENOTFOUND is a failure (the last good answer stays), ENODATA
 *    the empty set; `timeoutMs` bounds the wait (the lookup itself cannot
 *    be cancelled: a late answer is dropped);
 *  - with `resolvers`: A and/or AAAA records (RFC 1035, RFC 3596) asked of
 *    those servers with node:dns's Resolver (c-ares: no thread pool, a
 *    timeout of its own), as nginx's `resolver`; /etc/hosts is not read.
 *
 * Record TTLs are not used: the name is looked up again every refreshMs
 * whatever the TTL says (a TTL longer than refreshMs cannot keep a removed
 * address alive longer; one shorter is not followed faster).
 *
 * Outcomes of a lookup round:
 *  - addresses (any family asked answered, none failed): the new set;
 *  - NODATA for every family asked (the name exists, no such record): the
 *    empty set, the upstream has no DNS target;
 *  - anything else (timeout, SERVFAIL, NXDOMAIN, refused, a family that
 *    failed while the other answered): an error; the last good answer is
 *    kept (at start: no DNS target until a lookup succeeds).
 * One round at a time: the next starts refreshMs after the last one ended.
 * Bun's resolver reports NODATA as ENOTFOUND: there an empty answer is a
 * failure, and the last good answer stays (the safe reading).
 */
import { Resolver, lookup as systemLookup } from 'node:dns/promises';
import { MAX_DNS_TARGETS } from '../../common/config/discovery.js';
import type { DnsDiscoveryConfig } from '../../common/config/types.js';
import type { DiscoveredTarget } from '../../common/protocol.js';

/** c-ares error codes that mean "the name has no record of this type" (an answer, not a failure). */
const NO_DATA = new Set(['ENODATA']);

export type DnsOutcome = { ok: true; targets: DiscoveredTarget[]; truncated: number } | { ok: false; error: string };

/** The address as a URL host: IPv6 in brackets (RFC 3986 3.2.2). */
function urlHost(address: string): string {
  return address.includes(':') ? `[${address}]` : address;
}

/** The addresses as targets of `cfg`, sorted, at most MAX_DNS_TARGETS. */
function asTargets(addresses: Set<string>, cfg: DnsDiscoveryConfig): DnsOutcome {
  const sorted = [...addresses].sort();
  const truncated = Math.max(0, sorted.length - MAX_DNS_TARGETS);
  const targets = sorted.slice(0, MAX_DNS_TARGETS).map((a): DiscoveredTarget => ({
    url: `http://${urlHost(a)}:${cfg.port}`, host: a, port: cfg.port, weight: cfg.weight, source: 'dns', expiresAt: null,
  }));
  return { ok: true, targets, truncated };
}

/**
 * getaddrinfo calls still running per name: a call that outlived timeoutMs
 * keeps one thread of libuv's pool (shared by every thread of the process:
 * the workers' connects to host-name targets and file writes wait behind
 * it) until the system resolver gives up by itself (resolv.conf's timeout x
 * attempts). A round never starts a second call for a name whose first is
 * still running: it fails at once, so a DNS server that hangs costs one
 * pool thread per name, never a growing queue.
 */
const running = new Set<string>();

/** One round through the system's resolver (getaddrinfo): see the module comment. */
async function lookupSystem(cfg: DnsDiscoveryConfig): Promise<DnsOutcome> {
  const family = cfg.family === 'ipv4' ? 4 : cfg.family === 'ipv6' ? 6 : 0;
  const key = `${cfg.name} ${family}`;
  if (running.has(key)) return { ok: false, error: `lookup of ${cfg.name} failed (ETIMEOUT: the previous lookup is still waiting for the system resolver)` };
  let timer: ReturnType<typeof setTimeout> | null = null;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error('timeout'), { code: 'ETIMEOUT' })), cfg.timeoutMs);
  });
  running.add(key);
  const call = systemLookup(cfg.name, { all: true, family, verbatim: true });
  call.then(() => running.delete(key), () => running.delete(key));
  try {
    const found = await Promise.race([call, timeout]);
    return asTargets(new Set(found.map((a) => a.address.toLowerCase())), cfg);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException)?.code ?? 'error';
    if (NO_DATA.has(code)) return asTargets(new Set(), cfg);
    return { ok: false, error: `lookup of ${cfg.name} failed (${code}${code === 'ENOTFOUND' ? ': no such name in /etc/hosts or DNS' : ''})` };
  } finally {
    if (timer !== null) clearTimeout(timer);
  }
}

/** One lookup round for `cfg`: the system's resolver, or `resolver` (built by the caller, so a round can be cancelled) when `resolvers` are set. */
export async function lookup(resolver: Resolver, cfg: DnsDiscoveryConfig): Promise<DnsOutcome> {
  if (cfg.resolvers.length === 0) return lookupSystem(cfg);
  const asks: Promise<string[]>[] = [];
  if (cfg.family !== 'ipv6') asks.push(resolver.resolve4(cfg.name));
  if (cfg.family !== 'ipv4') asks.push(resolver.resolve6(cfg.name));
  const results = await Promise.allSettled(asks);
  const addresses = new Set<string>();
  const errors: string[] = [];
  results.forEach((r, i) => {
    const rr = cfg.family === 'ipv6' || i === 1 ? 'AAAA' : 'A';
    if (r.status === 'fulfilled') for (const a of r.value) addresses.add(a.toLowerCase());
    else {
      const code = (r.reason as NodeJS.ErrnoException)?.code ?? 'error';
      if (!NO_DATA.has(code)) errors.push(`${rr} ${code}`);
    }
  });
  if (errors.length > 0) return { ok: false, error: `lookup of ${cfg.name} failed (${errors.join(', ')})` };
  return asTargets(addresses, cfg);
}

export interface DnsHooks {
  /** A round succeeded (called after every successful round; `changed`: the set differs from the last one). */
  answer(targets: DiscoveredTarget[], changed: boolean, truncated: number): void;
  /** A round failed; the last good set stays. */
  failure(error: string): void;
}

/** Re-resolves one upstream's name every refreshMs until stopped. */
export class DnsWatcher {
  /** The last good answer, or null before the first. */
  targets: DiscoveredTarget[] | null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private stopped = false;
  private readonly resolver: Resolver;
  /** Resolves once the first round ended (success or failure). */
  readonly first: Promise<void>;
  private firstDone!: () => void;

  /** `seed`: the last answer known (an admin thread restarted), kept until a round succeeds. */
  constructor(readonly cfg: DnsDiscoveryConfig, private readonly hooks: DnsHooks, seed: DiscoveredTarget[] | null = null) {
    this.targets = seed;
    this.resolver = new Resolver({ timeout: cfg.timeoutMs, tries: 1 });
    if (cfg.resolvers.length > 0) this.resolver.setServers([...cfg.resolvers]);
    this.first = new Promise((r) => { this.firstDone = r; });
  }

  start(): void {
    void this.round();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.resolver.cancel();
    this.firstDone();
  }

  private async round(): Promise<void> {
    if (this.stopped) return;
    let outcome: DnsOutcome;
    try {
      outcome = await lookup(this.resolver, this.cfg);
    } catch (err) {
      outcome = { ok: false, error: (err as Error).message };
    }
    if (this.stopped) return;
    if (outcome.ok) {
      const key = (ts: readonly DiscoveredTarget[] | null) => (ts === null ? null : ts.map((t) => t.url).join(' '));
      const changed = key(outcome.targets) !== key(this.targets);
      this.targets = outcome.targets;
      this.hooks.answer(outcome.targets, changed, outcome.truncated);
    } else {
      this.hooks.failure(outcome.error);
    }
    this.firstDone();
    this.timer = setTimeout(() => void this.round(), this.cfg.refreshMs);
    this.timer.unref();
  }
}
