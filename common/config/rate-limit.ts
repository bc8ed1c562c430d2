/**
 * Configuration of rate limits, quotas and the Redis connection they sync
 * through: the schema fragments (merged into schema.ts), the rules a schema
 * cannot say (semantic checks with the path of the problem), and the
 * resolution into RateLimitPolicy objects the data plane compiles.
 *
 * A policy is written once under `rateLimits.<name>` and referenced by name
 * from routes, or inline in a route's `rateLimit` list:
 *
 *   rateLimits:
 *     standard: { by: ip, rate: 100, per: 1m, burst: 20 }
 *   routes:
 *     - { id: api, path: /api/*, upstream: users, rateLimit: [standard, { by: global, rate: 5000, per: 1s }] }
 *
 * A named policy is one set of buckets wherever it is used (a client's 100
 * per minute spans every route listing `standard`; `by: route` splits it
 * per route); an inline policy belongs to its route alone.
 *
 * Identity: a policy's buckets are found by its tag, a hash of its name and
 * of the fields that give its buckets their meaning (by, algorithm, rate,
 * per, burst, period, time zone, scope, mode). The same on every instance
 * and every start (Redis keys and saved quotas are named by it); a reload
 * that changes one of those fields starts that policy afresh and leaves
 * every other policy's buckets as they were. `headers` and `onStoreError`
 * can change without a reset.
 */
import { redactUrl } from './redact.js';
import net from 'node:net';
import { tagOf, DEFAULT_CAPACITY, MIN_CAPACITY, MAX_CAPACITY } from '../rate-limit-layout.js';
import type { RateLimitPolicy, RedisConfig, RateLimitAlgorithm, RateLimitKeyKind } from './types.js';
import { type ConfigError, type PathSegment, formatPath, isPlainObject, didYouMean } from './util.js';

export const RATE_LIMIT_DEFAULTS = Object.freeze({
  algorithm: 'token_bucket' as const,
  by: 'ip',
  scope: 'cluster' as const, // when `redis` is set; `local` otherwise
  mode: 'batched' as const,
  onStoreError: 'allow_local' as const,
  headers: 'ietf' as const,
  timeZone: 'UTC',
  /** Policies per route. */
  maxPerRoute: 8,
  redis: Object.freeze({
    keyPrefix: 'tp:',
    syncIntervalMs: 50,
    connectTimeoutMs: 2_000,
    commandTimeoutMs: 500,
  }),
  table: Object.freeze({ capacity: DEFAULT_CAPACITY, quotaFile: null as string | null }),
});

/** rateLimitTable.quotaFile when not set; `<port>` is the port the gateway serves. */
export const DEFAULT_QUOTA_FILE = '.turnpike/quotas-<server port>.json';

/** The default quota file of a gateway serving `port` (relative to the working directory). */
export function defaultQuotaFile(port: number): string {
  return `.turnpike/quotas-${port}.json`;
}

/** How often local quota counts are saved while they change (engine/quota-store.ts). */
export const QUOTA_SAVE_INTERVAL_MS = 1000;

/** `per`: a whole number and a unit: ms, s, m, h or d; at most one day (quotas count longer periods). */
export const PER_PATTERN = '^[0-9]+(?:ms|s|m|h|d)$';
const PER_RE = /^([0-9]+)(ms|s|m|h|d)$/;
const PER_UNIT: Readonly<Record<string, number>> = Object.freeze({ ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 });
export const MAX_PER_MS = 86_400_000;
/** Largest rate, burst or quota accepted (a typo guard). */
export const MAX_RATE = 1_000_000_000;

/** "1m" -> 60000; a number is milliseconds. Null when neither. */
export function parsePer(v: unknown): number | null {
  if (typeof v === 'number') return Number.isInteger(v) ? v : null;
  if (typeof v !== 'string') return null;
  const m = PER_RE.exec(v);
  return m === null ? null : Number(m[1]) * PER_UNIT[m[2]!]!;
}

const BY_DESCRIPTION =
  'What a bucket is kept for: "ip" (the client address; behind proxies listed in server.trustedProxies, the right-most X-Forwarded-For address that is not one of them), "global" (one bucket for all), "route" (one per route), "header:<name>" (one per value of that request header; a request without it is keyed by ip), "query:<name>" (the same for a query parameter), "consumer" (one per consumer authenticated by the route\'s auth; a request without one is keyed by ip). Default "ip".';

/** One policy (named under `rateLimits`, or inline in a route's list). */
export const rateLimitPolicySchema = {
  type: 'object', additionalProperties: false,
  description: 'A rate limit (rate per per) or a quota (quota per calendar period).',
  properties: {
    by: { type: 'string', minLength: 1, maxLength: 256, description: BY_DESCRIPTION },
    rate: { type: 'integer', minimum: 1, maximum: MAX_RATE, description: `Requests admitted per "per" (1..${MAX_RATE}).` },
    per: {
      type: ['string', 'integer'], pattern: PER_PATTERN, minimum: 1, maximum: MAX_PER_MS,
      errorMessage: 'must be a duration such as "250ms", "1s", "1m", "1h" or "1d" (at most 1d; use quota with period for longer)',
      description: 'The window of "rate": "250ms", "1s", "1m", "1h", "1d" (a whole number and a unit), or milliseconds. At most 1d.',
    },
    burst: {
      type: 'integer', minimum: 1, maximum: MAX_RATE,
      description: 'token_bucket: the bucket capacity, requests that may pass back to back (default: rate). gcra: requests allowed back to back (default 1: perfectly spaced). Not for window algorithms.',
    },
    algorithm: {
      type: 'string', enum: ['token_bucket', 'gcra', 'fixed_window', 'sliding_window'],
      description: '"token_bucket" (default), "gcra" (smooth: one request per per/rate, at most burst back to back), "fixed_window" (rate per window aligned on the clock) or "sliding_window" (two-window approximation; README states its error bound).',
    },
    quota: { type: 'integer', minimum: 1, maximum: 1_000_000_000_000, description: 'Requests per calendar period (with "period"), instead of rate/per. Counted across restarts (Redis, or a file when there is none).' },
    period: { type: 'string', enum: ['hour', 'day', 'week', 'month'], description: 'The quota\'s calendar period; weeks start on Monday.' },
    timeZone: { type: 'string', minLength: 1, maxLength: 64, description: 'IANA time zone the quota period follows (e.g. "Europe/Paris"). Default "UTC".' },
    scope: {
      type: 'string', enum: ['cluster', 'local'],
      description: '"cluster": one limit for every instance sharing the Redis (default when redis is set); "local": this instance\'s own limit (the only scope without redis).',
    },
    mode: {
      type: 'string', enum: ['batched', 'strict'],
      description: '"batched" (default): decided in memory, synced with Redis every redis.syncIntervalMs (over-admission bound in the README). "strict": one atomic Redis decision per request, for low-rate, high-value limits (costs a Redis round trip per request).',
    },
    onStoreError: {
      type: 'string', enum: ['allow_local', 'deny'],
      description: 'While Redis is unreachable: "allow_local" (default: keep enforcing locally, with this instance\'s share of the limit) or "deny" (answer 503 rate_limit_store_unavailable).',
    },
    headers: {
      type: 'string', enum: ['ietf', 'legacy', 'both', 'none'],
      description: 'Rate-limit headers on responses: "ietf" (default: RateLimit-Policy and RateLimit, IETF httpapi draft), "legacy" (X-RateLimit-Limit/Remaining/Reset), "both" or "none".',
    },
  },
} as const;

const NODE = {
  type: 'object', additionalProperties: false, required: ['host', 'port'],
  description: 'A Redis node.',
  properties: {
    host: { type: 'string', minLength: 1, description: 'Host name or address.' },
    port: { type: 'integer', minimum: 1, maximum: 65535, description: 'TCP port.' },
  },
} as const;

export const redisSchema = {
  type: 'object', additionalProperties: false,
  description: 'Redis, for limits shared by several instances. Absent: one instance, limits held in memory only.',
  properties: {
    url: {
      type: 'string', pattern: '^rediss?://', errorMessage: 'must be a redis:// or rediss:// URL (e.g. redis://127.0.0.1:6379)',
      description: 'redis://[user:password@]host:port[/db], or rediss:// for TLS. Credentials in it are never logged.',
    },
    sentinels: {
      type: 'array', minItems: 1,
      items: NODE,
      description: 'Redis Sentinel: the sentinels (with "name", the master\'s name). Passed to ioredis.',
    },
    name: { type: 'string', minLength: 1, description: 'Sentinel master name.' },
    cluster: {
      type: 'array', minItems: 1,
      items: NODE,
      description: 'Redis Cluster: startup nodes. Passed to ioredis.Cluster.',
    },
    keyPrefix: {
      type: 'string', maxLength: 64, pattern: '^[A-Za-z0-9:_.{}-]*$', errorMessage: 'must be letters, digits and ":_.{}-" only',
      description: `Prefix of every key Turnpike writes. Default "${RATE_LIMIT_DEFAULTS.redis.keyPrefix}".`,
    },
    syncIntervalMs: {
      type: 'integer', minimum: 10, maximum: 10_000,
      description: `How often each instance pushes its consumption to Redis and pulls the cluster-wide figure. In milliseconds (10..10000). Default ${RATE_LIMIT_DEFAULTS.redis.syncIntervalMs}.`,
    },
    connectTimeoutMs: {
      type: 'integer', minimum: 100, maximum: 60_000,
      description: `In milliseconds (100..60000). Default ${RATE_LIMIT_DEFAULTS.redis.connectTimeoutMs}.`,
    },
    commandTimeoutMs: {
      type: 'integer', minimum: 10, maximum: 60_000,
      description: `A Redis command taking longer counts as a store error. In milliseconds (10..60000). Default ${RATE_LIMIT_DEFAULTS.redis.commandTimeoutMs}.`,
    },
  },
} as const;

export const rateLimitTableSchema = {
  type: 'object', additionalProperties: false,
  description: 'The shared-memory table of rate-limit buckets (one per process), and the file its local quotas are kept in.',
  properties: {
    capacity: {
      type: 'integer', minimum: MIN_CAPACITY, maximum: MAX_CAPACITY,
      description: `Buckets held at once (${MIN_CAPACITY}..${MAX_CAPACITY}, rounded up to a power of two; 64 bytes each). Idle buckets are reused; when full around a new key, the bucket that would be full again soonest is evicted (never a quota's; turnpike_rate_limit_table_evictions_total). Read at start only. Default ${DEFAULT_CAPACITY} (16 MiB).`,
    },
    quotaFile: {
      type: 'string', minLength: 1, maxLength: 4096, pattern: '^[^\\u0000]*$', errorMessage: 'must be a file path (e.g. .turnpike/quotas.json)',
      description: `File the counts of local quotas (no "redis", or scope: local) are kept in, so that a restart loses nothing: written atomically (mode 0600) every ${QUOTA_SAVE_INTERVAL_MS / 1000} s while counts change and at shutdown, read back at start; a crash loses at most the last ${QUOTA_SAVE_INTERVAL_MS / 1000} s of counting. A relative path is resolved from the working directory. Default "${DEFAULT_QUOTA_FILE}" (named by the port the gateway serves, so gateways started from one directory keep their own; with server.port 0, set it).`,
    },
  },
} as const;

export const trustedProxiesSchema = {
  type: 'array', uniqueItems: true, maxItems: 1_000,
  items: { type: 'string', minLength: 1, maxLength: 64 },
  description: 'Addresses or CIDR ranges (10.0.0.0/8, ::1) of proxies in front of the gateway. When the client address is one of them, rate limits "by: ip" use the right-most X-Forwarded-For address that is not. Default none: the client address as connected.',
} as const;

// ---------------------------------------------------------------------------
// semantic checks

type Obj = Record<string, unknown>;

const KEY_RE = /^(ip|global|route|consumer|header:(.*)|query:(.*))$/;
const TOKEN_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

function validTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** Problems of one policy object, pushed with paths under `at`. */
function checkPolicy(p: Obj, at: PathSegment[], hasRedis: boolean, out: ConfigError[]): void {
  const by = p['by'];
  if (typeof by === 'string') {
    const m = KEY_RE.exec(by);
    if (m === null) {
      const close = didYouMean(by, ['ip', 'global', 'route', 'consumer']);
      out.push({ path: formatPath([...at, 'by']), message: `unknown key ${JSON.stringify(by)}${close === null ? '' : ` (did you mean ${JSON.stringify(close)}?)`}: use ip, global, route, consumer, header:<name> or query:<name>` });
    } else if (m[2] !== undefined && !TOKEN_RE.test(m[2])) {
      out.push({ path: formatPath([...at, 'by']), message: `"header:" must be followed by a header name (e.g. "header:x-tenant"), got ${JSON.stringify(by)}` });
    } else if (m[3] !== undefined && m[3].length === 0) {
      out.push({ path: formatPath([...at, 'by']), message: '"query:" must be followed by a query parameter name (e.g. "query:api_key")' });
    }
  }
  const isQuota = p['quota'] !== undefined || p['period'] !== undefined;
  const isRate = p['rate'] !== undefined || p['per'] !== undefined;
  if (isQuota && isRate) {
    out.push({ path: formatPath(at), message: 'sets both a rate (rate, per) and a quota (quota, period); a policy is one or the other: write two policies' });
  } else if (isQuota) {
    if (p['quota'] === undefined) out.push({ path: formatPath(at), message: 'has a "period" but no "quota" (requests per period)' });
    if (p['period'] === undefined) out.push({ path: formatPath(at), message: 'has a "quota" but no "period" (hour, day, week or month)' });
    if (p['algorithm'] !== undefined) out.push({ path: formatPath([...at, 'algorithm']), message: 'a quota counts per calendar period; "algorithm" applies to rate limits only' });
    if (p['burst'] !== undefined) out.push({ path: formatPath([...at, 'burst']), message: 'a quota has no burst; remove it' });
    if (p['mode'] === 'strict') out.push({ path: formatPath([...at, 'mode']), message: 'strict mode applies to rate limits; a quota is already counted exactly per period' });
  } else {
    if (p['rate'] === undefined) out.push({ path: formatPath(at), message: 'needs "rate" and "per" (e.g. rate: 100, per: 1m), or "quota" and "period"' });
    else if (p['per'] === undefined) out.push({ path: formatPath(at), message: 'needs "per", the window of the rate (e.g. per: 1s, 1m, 1h)' });
    if (p['timeZone'] !== undefined) out.push({ path: formatPath([...at, 'timeZone']), message: 'a time zone applies to quotas (quota, period) only' });
    const alg = p['algorithm'] ?? RATE_LIMIT_DEFAULTS.algorithm;
    if (p['burst'] !== undefined && (alg === 'fixed_window' || alg === 'sliding_window')) {
      out.push({ path: formatPath([...at, 'burst']), message: `${String(alg)} counts rate requests per window and has no burst; remove it, or use token_bucket or gcra` });
    }
    const per = parsePer(p['per']);
    if (typeof p['per'] === 'string' && per !== null && per > MAX_PER_MS) {
      out.push({ path: formatPath([...at, 'per']), message: `${JSON.stringify(p['per'])} is longer than a day; for a daily or monthly allowance use quota and period` });
    }
    if (per !== null && per > 0 && Number.isInteger(p['rate']) && (p['rate'] as number) / per > 1e6) {
      out.push({ path: formatPath([...at, 'rate']), message: 'more than a billion requests per second: not a limit; check rate and per' });
    }
  }
  if (typeof p['timeZone'] === 'string' && !validTimeZone(p['timeZone'])) {
    out.push({ path: formatPath([...at, 'timeZone']), message: `unknown time zone ${JSON.stringify(p['timeZone'])}: use an IANA name such as "UTC" or "Europe/Paris"` });
  }
  if (!hasRedis) {
    if (p['scope'] === 'cluster') out.push({ path: formatPath([...at, 'scope']), message: 'scope "cluster" shares the limit through Redis: add a "redis" section, or use scope: local' });
    if (p['mode'] === 'strict') out.push({ path: formatPath([...at, 'mode']), message: 'strict mode decides each request in Redis: add a "redis" section, or remove mode' });
  } else if (p['mode'] === 'strict' && p['scope'] === 'local') {
    out.push({ path: formatPath([...at, 'mode']), message: 'strict mode decides in Redis, for the cluster; a local limit is always decided in memory: remove one of them' });
  }
}

/** Semantic errors of `redis`, `rateLimits`, `rateLimitTable`, `server.trustedProxies` and every route's `rateLimit`. */
export function checkRateLimitConfig(doc: Obj, out: ConfigError[]): void {
  const redis = doc['redis'];
  const hasRedis = isPlainObject(redis);
  if (hasRedis) {
    const kinds = ['url', 'sentinels', 'cluster'].filter((k) => redis[k] !== undefined);
    if (kinds.length === 0) out.push({ path: 'redis', message: 'needs "url" (redis://host:6379), "sentinels" with "name", or "cluster"' });
    else if (kinds.length > 1) out.push({ path: 'redis', message: `sets ${kinds.join(' and ')}: choose one way to reach Redis` });
    if (redis['sentinels'] !== undefined && typeof redis['name'] !== 'string') out.push({ path: 'redis.name', message: 'Sentinel needs the master\'s name: add name: <master name>' });
    if (typeof redis['url'] === 'string') {
      let u: URL | null = null;
      try {
        u = new URL(redis['url']);
      } catch {
        out.push({ path: 'redis.url', message: 'is not a valid URL; write redis://host:port' });
      }
      if (u !== null) {
        const problem = redisDatabaseProblem(u);
        if (problem !== null) out.push({ path: 'redis.url', message: problem });
      }
    }
  }
  const named = isPlainObject(doc['rateLimits']) ? doc['rateLimits'] : {};
  for (const [name, p] of Object.entries(named)) {
    if (isPlainObject(p)) checkPolicy(p, ['rateLimits', name], hasRedis, out);
  }
  const server = doc['server'];
  const tp = isPlainObject(server) ? server['trustedProxies'] : undefined;
  if (Array.isArray(tp)) {
    tp.forEach((c, i) => {
      if (typeof c === 'string' && parseCidr(c) === null) {
        out.push({ path: formatPath(['server', 'trustedProxies', i]), message: `${JSON.stringify(c)} is not an IP address or CIDR range (e.g. 10.0.0.0/8, 192.168.1.5, fd00::/8)` });
      }
    });
  }
  const routes = Array.isArray(doc['routes']) ? doc['routes'] : [];
  routes.forEach((r: unknown, i: number) => {
    if (!isPlainObject(r)) return;
    const list = r['rateLimit'];
    if (!Array.isArray(list)) return;
    if (list.length > RATE_LIMIT_DEFAULTS.maxPerRoute) {
      out.push({ path: formatPath(['routes', i, 'rateLimit']), message: `lists ${list.length} policies; at most ${RATE_LIMIT_DEFAULTS.maxPerRoute} per route` });
    }
    list.forEach((item: unknown, k: number) => {
      if (typeof item === 'string') {
        // A named policy is one set of buckets: listed twice, each request would be charged twice.
        const first = list.indexOf(item);
        if (first !== k) {
          out.push({ path: formatPath(['routes', i, 'rateLimit', k]), message: `${JSON.stringify(item)} is listed twice (also at position ${first}): a named policy is one set of buckets, so each request would be charged twice; list it once (for a stricter limit, change its rate or add another policy)` });
          return;
        }
        if (!Object.prototype.hasOwnProperty.call(named, item)) {
          const names = Object.keys(named);
          const close = didYouMean(item, names);
          const known = names.length === 0 ? ' (no policies are defined under "rateLimits")' : close !== null ? ` (did you mean ${JSON.stringify(close)}?)` : ` (known: ${names.join(', ')})`;
          out.push({ path: formatPath(['routes', i, 'rateLimit', k]), message: `unknown rate limit ${JSON.stringify(item)}${known}` });
        }
      } else if (isPlainObject(item)) {
        checkPolicy(item, ['routes', i, 'rateLimit', k], hasRedis, out);
      }
    });
  });
}

/**
 * Largest database number `redis.url` may name. Redis has 16 databases
 * (0-15) unless its `databases` setting says otherwise, and that setting
 * goes up to 2^31 - 1: a number the server does not have is refused by it
 * when connecting (the store then stays down, saying so), not here.
 */
export const MAX_REDIS_DB = 2_147_483_646;
const DB_RE = /^(?:0|[1-9][0-9]{0,9})$/;

/**
 * The database a redis:// URL names: its path (`/3`) or, without one, its
 * `db` query parameter (as ioredis reads them); 0 when it names none; null
 * when what it names is not a whole number 0..MAX_REDIS_DB (ioredis would
 * send `SELECT NaN`).
 */
export function redisDatabase(url: string | URL): number | null {
  let u: URL;
  try {
    u = typeof url === 'string' ? new URL(url) : url;
  } catch {
    return null;
  }
  const text = databaseText(u);
  if (text === null) return 0;
  if (!DB_RE.test(text)) return null;
  const n = Number(text);
  return n <= MAX_REDIS_DB ? n : null;
}

/**
 * The database part of a redis:// URL exactly as written, not decoded
 * (ioredis sends `/%31` as `SELECT %31`), path first, then ?db=; null when
 * there is none. Both at once is ambiguous: returned as '' (not a number),
 * so that it is refused.
 */
function databaseText(u: URL): string | null {
  const path = u.pathname;
  const query = u.searchParams.get('db');
  if (path !== '' && path !== '/') return query !== null ? '' : path.slice(1);
  return query;
}

/** What is wrong with the database part of a redis:// URL (validation message), or null. */
function redisDatabaseProblem(u: URL): string | null {
  if (redisDatabase(u) !== null) return null;
  const text = databaseText(u) ?? '';
  const both = u.pathname !== '' && u.pathname !== '/' && u.searchParams.get('db') !== null;
  if (both) return `names a database twice (the path ${JSON.stringify(u.pathname)} and ?db=${JSON.stringify(u.searchParams.get('db'))}): keep one, e.g. redis://host:6379/0`;
  const where = u.pathname !== '' && u.pathname !== '/' ? `the database part ${JSON.stringify('/' + text)}` : `the database parameter db=${JSON.stringify(text)}`;
  return `${where} must be a whole number from 0 to ${MAX_REDIS_DB} (a Redis server has databases 0-15 unless its "databases" setting says otherwise, and may have fewer): write redis://host:6379/0, or leave the database out for 0`;
}

/** `10.0.0.0/8`, `::1`, `fd00::/8` -> [address, prefix, family]; null when invalid. */
export function parseCidr(text: string): [string, number, 'ipv4' | 'ipv6'] | null {
  const slash = text.indexOf('/');
  const addr = slash === -1 ? text : text.slice(0, slash);
  const v = net.isIP(addr);
  if (v === 0) return null;
  const max = v === 4 ? 32 : 128;
  let prefix = max;
  if (slash !== -1) {
    const p = text.slice(slash + 1);
    if (!/^[0-9]{1,3}$/.test(p)) return null;
    prefix = Number(p);
    if (prefix > max) return null;
  }
  return [addr, prefix, v === 4 ? 'ipv4' : 'ipv6'];
}

// ---------------------------------------------------------------------------
// resolution

function keyOf(by: string): { kind: RateLimitKeyKind; name: string | null } {
  if (by.startsWith('header:')) return { kind: 'header', name: by.slice(7).toLowerCase() };
  if (by.startsWith('query:')) return { kind: 'query', name: by.slice(6) };
  return { kind: by as RateLimitKeyKind, name: null };
}

const PERIOD_MS: Readonly<Record<string, number>> = Object.freeze({ hour: 3_600_000, day: 86_400_000, week: 604_800_000, month: 2_592_000_000 });

/**
 * One policy, resolved. `name` is the policy's name (`standard`) or, inline,
 * `<route id>#<position>`; `owner` is '' for a named policy, else the route.
 */
export function resolvePolicy(raw: Obj, name: string, hasRedis: boolean): RateLimitPolicy {
  const d = RATE_LIMIT_DEFAULTS;
  const { kind, name: keyName } = keyOf(typeof raw['by'] === 'string' ? raw['by'] : d.by);
  const isQuota = raw['quota'] !== undefined;
  const algorithm: RateLimitAlgorithm = isQuota ? 'quota' : ((raw['algorithm'] as RateLimitAlgorithm | undefined) ?? d.algorithm);
  const rate = isQuota ? (raw['quota'] as number) : (raw['rate'] as number);
  const period = isQuota ? (raw['period'] as RateLimitPolicy['period']) : null;
  const perMs = isQuota ? PERIOD_MS[period!]! : parsePer(raw['per'])!;
  const burst = typeof raw['burst'] === 'number' ? raw['burst'] : algorithm === 'gcra' ? 1 : rate;
  const timeZone = typeof raw['timeZone'] === 'string' ? raw['timeZone'] : d.timeZone;
  const scope = hasRedis ? ((raw['scope'] as 'cluster' | 'local' | undefined) ?? 'cluster') : 'local';
  const mode = (raw['mode'] as 'batched' | 'strict' | undefined) ?? d.mode;
  // What the buckets mean: a change here starts the policy afresh (module comment).
  const identity = JSON.stringify([name, kind, keyName, algorithm, rate, perMs, burst, period, timeZone, scope, mode]);
  return {
    name,
    identity,
    tag: tagOf(identity),
    by: kind,
    keyName,
    algorithm,
    rate,
    perMs,
    burst,
    period,
    timeZone,
    scope,
    mode,
    onStoreError: (raw['onStoreError'] as 'allow_local' | 'deny' | undefined) ?? d.onStoreError,
    headers: (raw['headers'] as RateLimitPolicy['headers'] | undefined) ?? d.headers,
  };
}

/** Named policies of a valid document. */
export function resolveNamedPolicies(doc: Obj): Record<string, RateLimitPolicy> {
  const hasRedis = isPlainObject(doc['redis']);
  const out = Object.create(null) as Record<string, RateLimitPolicy>;
  const named = isPlainObject(doc['rateLimits']) ? doc['rateLimits'] : {};
  for (const [name, p] of Object.entries(named)) out[name] = resolvePolicy(p as Obj, name, hasRedis);
  return out;
}

/** A route's `rateLimit` list, resolved (named entries are the shared objects). */
export function resolveRouteLimits(list: unknown, routeId: string, named: Record<string, RateLimitPolicy>, hasRedis: boolean): RateLimitPolicy[] {
  if (!Array.isArray(list)) return [];
  return list.map((item: unknown, k: number) => (typeof item === 'string' ? named[item]! : resolvePolicy(item as Obj, `${routeId}#${k}`, hasRedis)));
}

export function resolveRedis(raw: unknown): RedisConfig | null {
  if (!isPlainObject(raw)) return null;
  const d = RATE_LIMIT_DEFAULTS.redis;
  const nodes = (v: unknown): { host: string; port: number }[] | null =>
    Array.isArray(v) ? v.map((n) => ({ host: String((n as Obj)['host']), port: Number((n as Obj)['port']) })) : null;
  return {
    url: typeof raw['url'] === 'string' ? raw['url'] : null,
    sentinels: nodes(raw['sentinels']),
    name: typeof raw['name'] === 'string' ? raw['name'] : null,
    cluster: nodes(raw['cluster']),
    keyPrefix: typeof raw['keyPrefix'] === 'string' ? raw['keyPrefix'] : d.keyPrefix,
    syncIntervalMs: typeof raw['syncIntervalMs'] === 'number' ? raw['syncIntervalMs'] : d.syncIntervalMs,
    connectTimeoutMs: typeof raw['connectTimeoutMs'] === 'number' ? raw['connectTimeoutMs'] : d.connectTimeoutMs,
    commandTimeoutMs: typeof raw['commandTimeoutMs'] === 'number' ? raw['commandTimeoutMs'] : d.commandTimeoutMs,
  };
}

/** A Redis URL without its secrets, for logs and messages: the rule of common/config/redact.ts (`redis://[redacted]@host:6379`). */
export function redactRedisUrl(url: string): string {
  return redactUrl(url);
}
