/**
 * Rate-limit configuration: every kind of nonsense is refused with the path
 * of the problem and what to write instead; valid policies resolve to the
 * numbers the data plane uses; a policy's tag changes exactly when the
 * meaning of its buckets does.
 */
import { describe, expect, it } from 'vitest';
import { parsePer, redactRedisUrl } from '../../../common/config/rate-limit.js';
import { lines, minimal, valid } from './helpers.js';

function withLimits(rateLimits: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { ...minimal(), rateLimits, ...extra };
}

function withRouteLimits(list: unknown[], extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { ...minimal(), ...extra, routes: [{ id: 'r', path: '/x', upstream: 'users', rateLimit: list }] };
}

const REDIS = { redis: { url: 'redis://127.0.0.1:6379' } };

describe('rate limits: refused with the path of the problem', () => {
  // [what, document, the exact error lines]
  const cases: [string, Record<string, unknown>, string[]][] = [
    ['rate 0', withLimits({ p: { rate: 0, per: '1s' } }), ['rateLimits.p.rate: must be an integer from 1 to 1000000000 (got 0)']],
    ['burst < 1', withLimits({ p: { rate: 5, per: '1s', burst: 0 } }), ['rateLimits.p.burst: must be an integer from 1 to 1000000000 (got 0)']],
    ['per: 1y', withLimits({ p: { rate: 5, per: '1y' } }), ['rateLimits.p.per: must be a duration such as "250ms", "1s", "1m", "1h" or "1d" (at most 1d; use quota with period for longer)']],
    ['per: 2d', withLimits({ p: { rate: 5, per: '2d' } }), ['rateLimits.p.per: "2d" is longer than a day; for a daily or monthly allowance use quota and period']],
    ['per with a space', withLimits({ p: { rate: 5, per: '1 s' } }), ['rateLimits.p.per: must be a duration such as "250ms", "1s", "1m", "1h" or "1d" (at most 1d; use quota with period for longer)']],
    ['rate without per', withLimits({ p: { rate: 5 } }), ['rateLimits.p: needs "per", the window of the rate (e.g. per: 1s, 1m, 1h)']],
    ['nothing at all', withLimits({ p: {} }), ['rateLimits.p: needs "rate" and "per" (e.g. rate: 100, per: 1m), or "quota" and "period"']],
    ['header: without a name', withLimits({ p: { by: 'header:', rate: 1, per: '1s' } }), ['rateLimits.p.by: "header:" must be followed by a header name (e.g. "header:x-tenant"), got "header:"']],
    ['header: with a bad name', withLimits({ p: { by: 'header:x y', rate: 1, per: '1s' } }), ['rateLimits.p.by: "header:" must be followed by a header name (e.g. "header:x-tenant"), got "header:x y"']],
    ['query: without a name', withLimits({ p: { by: 'query:', rate: 1, per: '1s' } }), ['rateLimits.p.by: "query:" must be followed by a query parameter name (e.g. "query:api_key")']],
    ['unknown key, close to one', withLimits({ p: { by: 'ipp', rate: 1, per: '1s' } }), ['rateLimits.p.by: unknown key "ipp" (did you mean "ip"?): use ip, global, route, consumer, header:<name> or query:<name>']],
    ['burst with a window algorithm', withLimits({ p: { rate: 1, per: '1s', burst: 2, algorithm: 'fixed_window' } }), ['rateLimits.p.burst: fixed_window counts rate requests per window and has no burst; remove it, or use token_bucket or gcra']],
    ['unknown algorithm', withLimits({ p: { rate: 1, per: '1s', algorithm: 'leaky' } }), ['rateLimits.p.algorithm: must be one of "token_bucket", "gcra", "fixed_window", "sliding_window" (got "leaky")']],
    ['rate and quota', withLimits({ p: { rate: 1, per: '1s', quota: 5, period: 'day' } }), ['rateLimits.p: sets both a rate (rate, per) and a quota (quota, period); a policy is one or the other: write two policies']],
    ['quota without period', withLimits({ p: { quota: 5 } }), ['rateLimits.p: has a "quota" but no "period" (hour, day, week or month)']],
    ['period: year', withLimits({ p: { quota: 5, period: 'year' } }), ['rateLimits.p.period: must be one of "hour", "day", "week", "month" (got "year")']],
    ['quota with an algorithm', withLimits({ p: { quota: 5, period: 'day', algorithm: 'gcra' } }), ['rateLimits.p.algorithm: a quota counts per calendar period; "algorithm" applies to rate limits only']],
    ['unknown time zone', withLimits({ p: { quota: 5, period: 'day', timeZone: 'Mars/Olympus' } }), ['rateLimits.p.timeZone: unknown time zone "Mars/Olympus": use an IANA name such as "UTC" or "Europe/Paris"']],
    ['time zone on a rate', withLimits({ p: { rate: 1, per: '1s', timeZone: 'UTC' } }), ['rateLimits.p.timeZone: a time zone applies to quotas (quota, period) only']],
    ['scope cluster without redis', withLimits({ p: { rate: 1, per: '1s', scope: 'cluster' } }), ['rateLimits.p.scope: scope "cluster" shares the limit through Redis: add a "redis" section, or use scope: local']],
    ['strict without redis', withLimits({ p: { rate: 1, per: '1s', mode: 'strict' } }), ['rateLimits.p.mode: strict mode decides each request in Redis: add a "redis" section, or remove mode']],
    ['strict and local', withLimits({ p: { rate: 1, per: '1s', mode: 'strict', scope: 'local' } }, REDIS), ['rateLimits.p.mode: strict mode decides in Redis, for the cluster; a local limit is always decided in memory: remove one of them']],
    ['unknown field', withLimits({ p: { rate: 1, per: '1s', limit: 5 } }), ['rateLimits.p: unknown property "limit" (known: by, rate, per, burst, algorithm, quota, period, timeZone, scope, mode, onStoreError, headers)']],
    ['bad policy name', withLimits({ 'a b': { rate: 1, per: '1s' } }), ['rateLimits["a b"]: must be a policy name of letters, digits, "_", ".", ":" and "-", starting with a letter or digit']],
    ['unknown named policy', withRouteLimits(['standrd'], { rateLimits: { standard: { rate: 1, per: '1s' } } }), ['routes[0].rateLimit[0]: unknown rate limit "standrd" (did you mean "standard"?)']],
    ['named policy, none defined', withRouteLimits(['standard']), ['routes[0].rateLimit[0]: unknown rate limit "standard" (no policies are defined under "rateLimits")']],
    ['inline nonsense in a route', withRouteLimits([{ by: 'global', rate: 0, per: '1s' }]), ['routes[0].rateLimit[0].rate: must be an integer from 1 to 1000000000 (got 0)']],
    ['not a list', { ...minimal(), routes: [{ id: 'r', path: '/x', upstream: 'users', rateLimit: 'standard' }] }, ['routes[0].rateLimit: must be a list (got "standard")']],
    ['more than 8 per route', withRouteLimits(Array.from({ length: 9 }, () => ({ rate: 1, per: '1s' }))), ['routes[0].rateLimit: lists 9 policies; at most 8 per route']],
    ['redis without a way to reach it', withLimits({}, { redis: {} }), ['redis: needs "url" (redis://host:6379), "sentinels" with "name", or "cluster"']],
    ['redis url that is not redis', withLimits({}, { redis: { url: 'http://x' } }), ['redis.url: must be a redis:// or rediss:// URL (e.g. redis://127.0.0.1:6379)']],
    ['redis url and cluster', withLimits({}, { redis: { url: 'redis://a', cluster: [{ host: 'a', port: 1 }] } }), ['redis: sets url and cluster: choose one way to reach Redis']],
    ['sentinels without a name', withLimits({}, { redis: { sentinels: [{ host: 'a', port: 26379 }] } }), ['redis.name: Sentinel needs the master\'s name: add name: <master name>']],
    ['syncIntervalMs below 10', withLimits({}, { redis: { url: 'redis://a', syncIntervalMs: 5 } }), ['redis.syncIntervalMs: must be an integer from 10 to 10000 (got 5)']],
    ['table too small', withLimits({}, { rateLimitTable: { capacity: 10 } }), ['rateLimitTable.capacity: must be an integer from 1024 to 16777216 (got 10)']],
    ['trusted proxy that is not an address', { ...minimal(), server: { trustedProxies: ['10.0.0.0/33', 'lb.local'] } }, [
      'server.trustedProxies[0]: "10.0.0.0/33" is not an IP address or CIDR range (e.g. 10.0.0.0/8, 192.168.1.5, fd00::/8)',
      'server.trustedProxies[1]: "lb.local" is not an IP address or CIDR range (e.g. 10.0.0.0/8, 192.168.1.5, fd00::/8)',
    ]],
  ];

  it.each(cases)('%s', (_what, doc, want) => {
    expect(lines(doc)).toEqual(want);
  });
});

describe('rate limits: resolution', () => {
  it('fills defaults: token bucket by ip, burst = rate, ietf headers, local without redis', () => {
    const c = valid(withRouteLimits(['p', { by: 'header:X-Tenant', rate: 10, per: '250ms', algorithm: 'gcra' }], { rateLimits: { p: { rate: 100, per: '1m' } } }));
    const [named, inline] = c.routes[0]!.rateLimit;
    expect(named).toMatchObject({
      name: 'p', by: 'ip', keyName: null, algorithm: 'token_bucket', rate: 100, perMs: 60_000, burst: 100, period: null,
      scope: 'local', mode: 'batched', onStoreError: 'allow_local', headers: 'ietf',
    });
    expect(c.rateLimits['p']).toBe(named);
    // gcra's burst defaults to 1 (smooth); header names are case-insensitive.
    expect(inline).toMatchObject({ name: 'r#1', by: 'header', keyName: 'x-tenant', algorithm: 'gcra', perMs: 250, burst: 1 });
  });

  it('cluster scope by default once redis is set; quotas resolve with their period', () => {
    const c = valid(withRouteLimits([{ quota: 1000, period: 'month', timeZone: 'Europe/Paris' }, { rate: 1, per: '1s', scope: 'local' }], REDIS));
    const [q, local] = c.routes[0]!.rateLimit;
    expect(q).toMatchObject({ algorithm: 'quota', rate: 1000, period: 'month', timeZone: 'Europe/Paris', scope: 'cluster' });
    expect(local!.scope).toBe('local');
    expect(c.redis).toEqual({
      url: 'redis://127.0.0.1:6379', sentinels: null, name: null, cluster: null, keyPrefix: 'tp:',
      syncIntervalMs: 50, connectTimeoutMs: 2000, commandTimeoutMs: 500,
    });
  });

  it('redis durations take "100ms"-style strings like every *Ms key', () => {
    const c = valid(withLimits({}, { redis: { url: 'redis://a:1', syncIntervalMs: '100ms', commandTimeoutMs: '1s' } }));
    expect(c.redis).toMatchObject({ syncIntervalMs: 100, commandTimeoutMs: 1000 });
  });

  it('a tag changes exactly when the meaning of the buckets does', () => {
    const tag = (p: Record<string, unknown>, name = 'p') => valid(withRouteLimits([name], { rateLimits: { [name]: p } })).rateLimits[name]!.tag;
    const base = { by: 'ip', rate: 10, per: '1m' };
    const t0 = tag(base);
    expect(tag({ ...base })).toBe(t0);
    // Same meaning written differently: same buckets.
    expect(tag({ ...base, per: 60_000 })).toBe(t0);
    expect(tag({ ...base, per: '60s' })).toBe(t0);
    expect(tag({ ...base, burst: 10 })).toBe(t0);
    // Presentation and outage handling: same buckets.
    expect(tag({ ...base, headers: 'legacy' })).toBe(t0);
    expect(tag({ ...base, onStoreError: 'deny' })).toBe(t0);
    // Meaning: fresh buckets.
    for (const change of [{ rate: 11 }, { per: '2m' }, { burst: 5 }, { by: 'global' }, { algorithm: 'gcra' }, { by: 'header:x-a' }]) {
      expect(tag({ ...base, ...change }), JSON.stringify(change)).not.toBe(t0);
    }
    expect(tag(base, 'q')).not.toBe(t0);
    expect(t0).not.toBe(0);
  });

  it('per: every unit; numbers are milliseconds', () => {
    expect(['250ms', '1s', '1m', '1h', '1d', 1500, '1.5s', 'x'].map(parsePer)).toEqual([250, 1000, 60_000, 3_600_000, 86_400_000, 1500, null, null]);
  });

  it('Redis URLs lose their credentials in messages (the rule of common/config/redact.ts, as in GET /admin/config)', () => {
    expect(redactRedisUrl('redis://user:s3cret@host:6379/0')).toBe('redis://[redacted]@host:6379/0');
    expect(redactRedisUrl('redis://:s3cret@host:6379')).toBe('redis://[redacted]@host:6379');
    expect(redactRedisUrl('rediss://host:6379/0?password=s3cret&db=1')).toBe('rediss://host:6379/0?password=[redacted]&db=1');
    expect(redactRedisUrl('redis://host:6379')).toBe('redis://host:6379');
  });
});
