/**
 * Rate-limit configuration that used to pass validation and then went
 * wrong at run time (common/config/rate-limit.ts):
 *
 *  - `redis.url` naming a database that is not a whole number (`/abc`,
 *    `/-1`, `/1.5`, `?db=x`): ioredis sent `SELECT NaN`, the start failed
 *    with only "ERR value is not an integer or out of range" and a reload to
 *    it killed the admin thread. Refused, with the path and what to write.
 *  - a named policy listed twice on one route (`rateLimit: [a, a]`): one
 *    set of buckets charged twice per request. Refused with its position.
 *    Two identical inline policies are two policies (each its own
 *    buckets): accepted.
 */
import { describe, expect, it } from 'vitest';
import { MAX_REDIS_DB, redisDatabase } from '../../../../common/config/rate-limit.js';
import { lines, minimal, valid } from '../../config/helpers.js';

const DB_HINT = `must be a whole number from 0 to ${MAX_REDIS_DB} (a Redis server has databases 0-15 unless its "databases" setting says otherwise, and may have fewer): write redis://host:6379/0, or leave the database out for 0`;

function withRedis(url: string): Record<string, unknown> {
  return { ...minimal(), redis: { url } };
}

describe('redis.url: the database part', () => {
  it.each([
    ['redis://127.0.0.1:6379/abc', 'the database part "/abc"'],
    ['redis://127.0.0.1:6379/-1', 'the database part "/-1"'],
    ['redis://127.0.0.1:6379/1.5', 'the database part "/1.5"'],
    ['redis://127.0.0.1:6379/01', 'the database part "/01"'],
    ['redis://127.0.0.1:6379/0/x', 'the database part "/0/x"'],
    ['redis://127.0.0.1:6379/99999999999', 'the database part "/99999999999"'],
    ['redis://127.0.0.1:6379?db=abc', 'the database parameter db="abc"'],
    ['rediss://:pw@127.0.0.1:6380/%20', 'the database part "/%20"'],
    // Percent-encoded digits: ioredis would send them as they are (SELECT %31).
    ['redis://127.0.0.1:6379/%31', 'the database part "/%31"'],
  ])('%s is refused', (url, what) => {
    expect(lines(withRedis(url))).toEqual([`redis.url: ${what} ${DB_HINT}`]);
  });

  it('a database named twice (path and ?db=) is refused: which one ioredis uses is not ours to guess', () => {
    expect(lines(withRedis('redis://127.0.0.1:6379/1?db=99'))).toEqual([
      'redis.url: names a database twice (the path "/1" and ?db="99"): keep one, e.g. redis://host:6379/0',
    ]);
    expect(redisDatabase('redis://127.0.0.1:6379/1?db=99')).toBeNull();
  });

  it('a password in the URL is never echoed by the message', () => {
    expect(lines(withRedis('redis://:s3cret@127.0.0.1:6379/x')).join('\n')).not.toContain('s3cret');
  });

  it.each([
    ['redis://127.0.0.1:6379', 0],
    ['redis://127.0.0.1:6379/', 0],
    ['redis://127.0.0.1:6379/0', 0],
    ['redis://127.0.0.1:6379/15', 15],
    ['redis://127.0.0.1:6379/99', 99], // more than the default 16: the server decides (and refuses it when connecting)
    ['redis://127.0.0.1:6379?db=3', 3],
    ['rediss://user:pw@h:6380/7', 7],
  ])('%s is accepted (database %d)', (url, db) => {
    expect(valid(withRedis(url)).redis!.url).toBe(url);
    expect(redisDatabase(url)).toBe(db);
  });
});

describe('a route listing the same named policy twice', () => {
  const limits = { a: { by: 'ip', rate: 4, per: '1m' }, b: { by: 'ip', rate: 10, per: '1m' } };

  it('is refused with the position of the second listing', () => {
    expect(lines({ ...minimal(), rateLimits: limits, routes: [
      { id: 'ok', path: '/ok', upstream: 'users', rateLimit: ['a', 'b'] },
      { id: 'r', path: '/x', upstream: 'users', rateLimit: ['b', 'a', 'a'] },
    ] })).toEqual([
      'routes[1].rateLimit[2]: "a" is listed twice (also at position 1): a named policy is one set of buckets, so each request would be charged twice; list it once (for a stricter limit, change its rate or add another policy)',
    ]);
  });

  it('two identical inline policies are two policies, each with its own buckets: accepted', () => {
    const c = valid({ ...minimal(), routes: [{ id: 'r', path: '/x', upstream: 'users', rateLimit: [{ by: 'ip', rate: 4, per: '1m' }, { by: 'ip', rate: 4, per: '1m' }] }] });
    const [p0, p1] = c.routes[0]!.rateLimit;
    expect([p0!.name, p1!.name]).toEqual(['r#0', 'r#1']);
    expect(p0!.tag).not.toBe(p1!.tag);
  });
});
