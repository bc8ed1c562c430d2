/**
 * Configuration of target discovery (issue 11): targets of an upstream
 * found in DNS (`dns`) and in a registry services write to (`registry`),
 * besides the static `targets`. The schema fragments (merged into schema.ts
 * under `upstreams.<name>`), the rules a schema cannot say (with the path of
 * the problem), and the resolution into the objects the admin thread's
 * discovery (admin/discovery/) runs with.
 *
 *   upstreams:
 *     users:
 *       dns: { name: users.internal, port: 9001, refreshMs: 5s }   # A/AAAA, re-resolved
 *     orders:
 *       registry: { ttlMs: 30s }          # POST /admin/upstreams/orders/targets
 *       targets: [http://10.0.0.5:9001]   # static targets still allowed alongside
 *
 * The targets an upstream serves are the union of its three sources, each
 * URL once (a URL listed in `targets` keeps its configured weight; one both
 * registered and in DNS takes the registration's). An upstream needs at
 * least one source; `targets` may be left out when `dns` or `registry` is
 * set, and then the upstream has no target until discovery finds one
 * (requests meanwhile: 503 no_healthy_upstream).
 *
 * DISCOVERY_DEFAULTS is the one table of the defaults.
 */
import { isIP } from 'node:net';
import type { DnsDiscoveryConfig, RegistryDiscoveryConfig } from './types.js';
import { type ConfigError, type PathSegment, formatPath, isPlainObject } from './util.js';

type Obj = Record<string, unknown>;

export const DISCOVERY_DEFAULTS = Object.freeze({
  dns: Object.freeze({
    port: 80, // as a target URL without a port
    refreshMs: 5_000, // re-resolved every 5 s
    family: 'any' as const, // A and AAAA
    timeoutMs: 2_000, // per query (each resolver, one try)
    weight: 1, // every address found gets this weight
  }),
  registry: Object.freeze({
    ttlMs: 30_000, // a registration without ttlMs lives 30 s past its last heartbeat
    maxTargets: 256, // live registrations per upstream; more are refused (409)
  }),
});

/** Registry heartbeats (and DNS refreshes) no faster than this. */
export const MIN_REFRESH_MS = 100;
/** Longest refresh or TTL accepted: 24 h, as every timeout. */
export const MAX_DISCOVERY_MS = 86_400_000;
/** Shortest TTL of a registration: a heartbeat a second at most. */
export const MIN_TTL_MS = 1_000;
/** Resolvers per upstream (c-ares tries them in order). */
export const MAX_RESOLVERS = 8;
/**
 * A DNS answer yields at most this many targets (sorted by address, the
 * rest ignored with a warning): a huge answer must not eat the process's 511
 * target slots (common/metrics-layout.ts).
 */
export const MAX_DNS_TARGETS = 64;

/** A DNS name: labels of letters, digits, "-" and "_" (SRV-style labels), at most 253 characters, an optional final dot. */
export const DNS_NAME_PATTERN = '^(?=.{1,254}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\\.?$';

const D = DISCOVERY_DEFAULTS.dns;
const R = DISCOVERY_DEFAULTS.registry;

const int = (min: number, max: number, description: string, dflt: number) =>
  ({ type: 'integer', minimum: min, maximum: max, description: `${description} Default ${dflt}.`, default: dflt });
const ms = (min: number, description: string, dflt: number) =>
  ({ type: 'integer', minimum: min, maximum: MAX_DISCOVERY_MS, description: `${description} In milliseconds (${min}..${MAX_DISCOVERY_MS}). Default ${dflt}.`, default: dflt });

export const dnsSchema = {
  type: 'object', additionalProperties: false, required: ['name'],
  description: 'Targets from DNS: the A and/or AAAA records of `name`, re-resolved every refreshMs by the admin thread; each address becomes a target http://<address>:<port>. A change reaches every worker within about refreshMs + 250 ms; an address that disappears is drained (no new requests, those in flight finish). A failed lookup (timeout, SERVFAIL, NXDOMAIN, refused) keeps the last good answer. Absent: no DNS discovery.',
  properties: {
    name: { type: 'string', pattern: DNS_NAME_PATTERN, errorMessage: 'must be a DNS name such as "users.internal" (letters, digits, "-", "_" and dots)', description: 'The name resolved. Required.' },
    port: int(1, 65_535, 'The port of every target found (DNS A/AAAA records carry none).', D.port),
    refreshMs: ms(MIN_REFRESH_MS, 'Time between two lookups (record TTLs are not used: the name is looked up again every refreshMs, as nginx\'s resolver valid=).', D.refreshMs),
    family: { type: 'string', enum: ['any', 'ipv4', 'ipv6'], description: `Records looked up: "ipv4" (A), "ipv6" (AAAA) or "any" (both). Default "${D.family}".`, default: D.family },
    resolvers: {
      type: 'array', maxItems: MAX_RESOLVERS, uniqueItems: true,
      description: `DNS servers asked, in order: "ip" or "ip:port" ("[v6]:port" for IPv6), at most ${MAX_RESOLVERS} (nginx's resolver). Default: the system's (/etc/resolv.conf).`,
      items: { type: 'string', minLength: 1 },
    },
    timeoutMs: ms(1, 'A lookup without an answer within this (per resolver) fails.', D.timeoutMs),
    weight: int(1, 1_000, 'Weight of every target found.', D.weight),
  },
} as const;

export const registrySchema = {
  type: 'object', additionalProperties: false,
  description: 'Targets from a registry services write to: POST /admin/upstreams/<name>/targets registers (and heartbeats) a target for ttlMs, DELETE deregisters it; with `redis` the registry lives in Redis (shared by every gateway instance; services may write it directly, see README), otherwise in this instance\'s admin thread. A registration that is not renewed within its TTL expires and is drained. Absent: registrations for this upstream are refused.',
  properties: {
    ttlMs: ms(MIN_TTL_MS, 'How long a registration lives after its last heartbeat, when the registration gives no ttlMs of its own.', R.ttlMs),
    maxTargets: int(1, 1_000, 'Live registrations this upstream takes; past it a new one is refused (409 conflict), heartbeats still renew.', R.maxTargets),
  },
} as const;

/** `ip`, `ip:port` or `[v6]:port`; null when valid, else the problem. */
export function resolverProblem(text: string): string | null {
  let host = text;
  let port: string | null = null;
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  if (v6 !== null) {
    host = v6[1]!;
    port = v6[2] ?? null;
    if (isIP(host) !== 6) return `"${text}" is not an IPv6 address in brackets`;
  } else if (isIP(text) === 6) {
    return null;
  } else {
    const m = /^([^:]+)(?::(\d+))?$/.exec(text);
    if (m === null) return `"${text}" must be "ip" or "ip:port" (IPv6: "[addr]:port")`;
    host = m[1]!;
    port = m[2] ?? null;
    if (isIP(host) !== 4) return `"${text}" must be an IP address (a resolver named by a host name would need a resolver itself)`;
  }
  if (port !== null && !(Number(port) >= 1 && Number(port) <= 65_535)) return `"${text}": port must be from 1 to 65535`;
  return null;
}

/**
 * The rules the schema cannot say, per upstream: at least one source of
 * targets; `dns.name` not an IP address; resolvers as addresses.
 */
export function checkDiscovery(upstreams: unknown, out: ConfigError[]): void {
  if (!isPlainObject(upstreams)) return;
  for (const [name, up] of Object.entries(upstreams)) {
    if (!isPlainObject(up)) continue;
    const at = (...rest: PathSegment[]) => formatPath(['upstreams', name, ...rest]);
    if (up['targets'] === undefined && up['dns'] === undefined && up['registry'] === undefined) {
      out.push({ path: at(), message: 'missing required property "targets" (an upstream needs at least one source of targets: "targets", "dns" or "registry")' });
    }
    const dns = up['dns'];
    if (isPlainObject(dns)) {
      const n = dns['name'];
      if (typeof n === 'string' && isIP(n.replace(/\.$/, '')) !== 0) {
        out.push({ path: at('dns', 'name'), message: `"${n}" is an IP address, not a name to resolve; list it under targets instead (targets: ["http://${n}:${typeof dns['port'] === 'number' ? dns['port'] : D.port}"])` });
      }
      const rs = dns['resolvers'];
      if (Array.isArray(rs)) {
        rs.forEach((r, i) => {
          if (typeof r !== 'string' || r === '') return;
          const p = resolverProblem(r);
          if (p !== null) out.push({ path: at('dns', 'resolvers', i), message: p });
        });
      }
    }
  }
}

/** What is valid but cannot work as meant: a registry no one can write to. */
export function discoveryWarnings(doc: Obj, out: ConfigError[]): void {
  const ups = doc['upstreams'];
  if (!isPlainObject(ups)) return;
  const admin = doc['admin'];
  const adminOff = isPlainObject(admin) && admin['enabled'] === false;
  if (!adminOff || isPlainObject(doc['redis'])) return;
  for (const [name, up] of Object.entries(ups)) {
    if (isPlainObject(up) && isPlainObject(up['registry'])) {
      out.push({ path: formatPath(['upstreams', name, 'registry']), message: 'admin.enabled is false and there is no redis: nothing can register a target (the registry is written through the admin API, or in Redis); enable the admin listener or set redis' });
    }
  }
}

function num(o: Obj, key: string, dflt: number): number {
  const v = o[key];
  return typeof v === 'number' ? v : dflt;
}

export function resolveDns(raw: unknown): DnsDiscoveryConfig | null {
  if (!isPlainObject(raw)) return null;
  const family = raw['family'];
  return {
    name: String(raw['name']).toLowerCase().replace(/\.$/, ''),
    port: num(raw, 'port', D.port),
    refreshMs: num(raw, 'refreshMs', D.refreshMs),
    family: family === 'ipv4' || family === 'ipv6' ? family : 'any',
    resolvers: Array.isArray(raw['resolvers']) ? (raw['resolvers'] as unknown[]).map(String) : [],
    timeoutMs: num(raw, 'timeoutMs', D.timeoutMs),
    weight: num(raw, 'weight', D.weight),
  };
}

export function resolveRegistry(raw: unknown): RegistryDiscoveryConfig | null {
  if (!isPlainObject(raw)) return null;
  return { ttlMs: num(raw, 'ttlMs', R.ttlMs), maxTargets: num(raw, 'maxTargets', R.maxTargets) };
}
