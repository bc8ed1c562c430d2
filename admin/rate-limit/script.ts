/**
 * What the rate-limit sync sends to Redis: the key names, the Lua scripts
 * (each one atomic in Redis) and the Redis Cluster hash slot of a key.
 *
 * Key names (independent of the instance, its config version and its
 * start: every instance sharing the Redis meets on the same key, which is
 * what APISIX's per-node key names got wrong):
 *
 *   <keyPrefix>rl:{<tag>:<hi><lo>}               token_bucket, gcra
 *   <keyPrefix>rl:{<tag>:<hi><lo>}:<start ms>    fixed_window, sliding_window (window start),
 *                                                quota (period start)
 *   <keyPrefix>rl:instances                      heartbeats (a sorted set)
 *
 * `tag` is the policy's 32-bit tag and `hi`/`lo` the 64-bit hash of the
 * key's text (common/rate-limit-layout.ts), as fixed-width lowercase hex.
 * The braces are a Redis Cluster hash tag: every key of one (policy, key)
 * pair lands in one slot (a sliding window's two counters are read in one
 * script), while different keys spread across the cluster. A keyPrefix
 * holding its own `{...}` puts every key in that one slot instead.
 *
 * Values (strings, with an expiry, so nothing is ever left behind):
 *   token_bucket  "<tokens> <last refill ms>"   (tokens may be negative: debt)
 *   gcra          "<theoretical arrival time ms>"
 *   windows, quota  an integer count (INCRBY)
 * Times inside values are Redis's clock (TIME), never an instance's.
 */

/** Redis Cluster's slot of a key: CRC16 (XMODEM) of the hash tag, or of the whole key, mod 16384. */
export function keySlot(key: string): number {
  let s = 0;
  let e = key.length;
  const open = key.indexOf('{');
  if (open !== -1) {
    const close = key.indexOf('}', open + 1);
    if (close > open + 1) {
      s = open + 1;
      e = close;
    }
  }
  // Keys are ASCII here (the prefix is checked by the schema), so a char code is a byte.
  let crc = 0;
  for (let i = s; i < e; i++) {
    crc = ((crc << 8) & 0xffff) ^ CRC16[((crc >>> 8) ^ key.charCodeAt(i)) & 0xff]!;
  }
  return crc & 16383;
}

const CRC16 = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let k = 0; k < 8; k++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    t[i] = c;
  }
  return t;
})();

/** A 32-bit integer as 8 lowercase hex digits. */
export function hex8(n: number): string {
  const s = (n >>> 0).toString(16);
  return s.length === 8 ? s : '00000000'.slice(s.length) + s;
}

/** `<keyPrefix>rl:{<tag>:` of a policy (the rest is the key's hash). */
export function policyKeyHead(keyPrefix: string, tag: number): string {
  return `${keyPrefix}rl:{${hex8(tag)}:`;
}

/** The Redis key of one bucket: `<head><hi><lo>}`, plus `:<window start>` for windows and quotas. */
export function bucketKey(head: string, hi: number, lo: number, window?: number): string {
  const k = head + hex8(hi) + hex8(lo) + '}';
  return window === undefined ? k : k + ':' + window;
}

export function instancesKey(keyPrefix: string): string {
  return `${keyPrefix}rl:instances`;
}

/** Script algorithm codes (ARGV[1]). */
export const S_TOKEN_BUCKET = 1;
export const S_GCRA = 2;
/** fixed_window: one counter per window. */
export const S_COUNTER = 3;
export const S_SLIDING = 4;
/** quota: one counter per period, never lower than what the pushing instance knows. */
export const S_QUOTA = 5;

/**
 * The sync script: pushes an instance's consumption of many buckets of ONE
 * policy and returns each bucket's cluster-wide state, atomically.
 *
 *   KEYS   one per bucket (sliding_window: two, the current window's
 *          counter then the previous one's)
 *   ARGV   [1] algorithm (S_*), [2] a, [3] b, [4] expiry margin (ms), then
 *          per bucket:
 *            token_bucket         pending, the pushing instance's tokens now
 *            gcra                 pending, the pushing instance's TAT - now (ms)
 *            counter              pending, expire-at (Unix ms)
 *            quota                pending, expire-at (Unix ms), known: the count
 *                                 the pushing instance holds for that period
 *                                 (its pending admissions included)
 *            sliding              push to current, push to previous, expire-at of the current
 *          token_bucket: a = refill per ms, b = burst.
 *          gcra: a = emission interval (ms).
 *          sliding: a = the window (ms).
 *   Reply  per bucket:
 *            token_bucket  tokens now (string; negative = debt)
 *            gcra          TAT - now (string, ms; 0 when none)
 *            counter       the count
 *            quota         the count
 *            sliding       the current count, the previous count
 *          then, token_bucket and gcra: Redis's TIME they used (string, Unix ms)
 *
 * A bucket with nothing to push and no key yet is not created (a pull
 * writes nothing). A token bucket or GCRA key that does not exist yet is
 * created from the pushing instance's own state (its pending admissions
 * are in it): the refill that instance's bucket had since it was created
 * is kept, where starting a full bucket at the first push would lose up
 * to one interval of it. Token buckets and GCRA take Redis's TIME, once
 * per call; windows are named by their start, which instances agree on
 * (Unix-aligned), and expire at expire-at (each instance's clock, plus the
 * margin for clock differences).
 *
 * Quotas: the count becomes max(count + pending, known). Normally the
 * count already holds everything an instance knows (known <= count +
 * pending) and this is the plain INCRBY; but a Redis that lost its data
 * (restarted without persistence, FLUSHALL, a failover to a replica that
 * had not caught up) would otherwise restart the period's count from what
 * is pushed after, and an instance started next would admit the whole
 * quota again. Max, not sum: what Redis still counts may include what the
 * instance knows (it learned it from there), and a quota must never count
 * a request twice for ever.
 */
export const SYNC_LUA = `
local alg = tonumber(ARGV[1])
local a = tonumber(ARGV[2])
local b = tonumber(ARGV[3])
local margin = tonumber(ARGV[4])
local out = {}
local n = #KEYS
if alg == 1 or alg == 2 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  for i = 1, n do
    local k = KEYS[i]
    local pending = tonumber(ARGV[3 + 2 * i])
    local mine = tonumber(ARGV[4 + 2 * i])
    local v = redis.call('GET', k)
    if alg == 1 then
      local tokens, ts = b, now
      if v then
        local sp = string.find(v, ' ', 1, true)
        tokens = tonumber(string.sub(v, 1, sp - 1))
        ts = tonumber(string.sub(v, sp + 1))
        if now > ts then
          tokens = tokens + (now - ts) * a
          if tokens > b then tokens = b end
          ts = now
        end
        tokens = tokens - pending
      elseif pending > 0 then
        tokens = mine
        if tokens > b then tokens = b end
      end
      if pending > 0 then
        redis.call('SET', k, string.format('%.17g %.17g', tokens, ts), 'PX', math.ceil((b - tokens) / a) + margin)
      end
      out[i] = string.format('%.17g', tokens)
    else
      local tat = now
      if v then
        tat = tonumber(v)
        if tat < now then tat = now end
        tat = tat + pending * a
      elseif pending > 0 and mine > 0 then
        tat = now + mine
      end
      if pending > 0 then
        redis.call('SET', k, string.format('%.17g', tat), 'PX', math.ceil(tat - now) + margin)
      end
      out[i] = string.format('%.17g', tat - now)
    end
  end
  out[n + 1] = string.format('%.17g', now)
elseif alg == 3 then
  for i = 1, n do
    local k = KEYS[i]
    local pending = tonumber(ARGV[3 + 2 * i])
    local c
    if pending > 0 then
      c = redis.call('INCRBY', k, pending)
      if c == pending then redis.call('PEXPIREAT', k, tonumber(ARGV[4 + 2 * i]) + margin) end
    else
      c = tonumber(redis.call('GET', k) or '0')
    end
    out[i] = c
  end
elseif alg == 5 then
  for i = 1, n do
    local k = KEYS[i]
    local pending = tonumber(ARGV[2 + 3 * i])
    local known = tonumber(ARGV[4 + 3 * i])
    local c = tonumber(redis.call('GET', k) or '0')
    local target = c + pending
    if target < known then target = known end
    if target > c then
      local d = target - c
      c = redis.call('INCRBY', k, d)
      if c == d then redis.call('PEXPIREAT', k, tonumber(ARGV[3 + 3 * i]) + margin) end
    end
    out[i] = c
  end
else
  local j = 1
  for i = 1, n, 2 do
    local cur, prev = KEYS[i], KEYS[i + 1]
    local at = 4 + 3 * (j - 1)
    local pc, pp, exp = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
    local c, p
    if pc > 0 then
      c = redis.call('INCRBY', cur, pc)
      if c == pc then redis.call('PEXPIREAT', cur, exp + margin) end
    else
      c = tonumber(redis.call('GET', cur) or '0')
    end
    if pp > 0 then
      p = redis.call('INCRBY', prev, pp)
      if p == pp then redis.call('PEXPIREAT', prev, exp - a + margin) end
    else
      p = tonumber(redis.call('GET', prev) or '0')
    end
    out[i] = c
    out[i + 1] = p
    j = j + 1
  end
end
return out
`;

/**
 * The heartbeat script: records this instance as alive (a sorted set of
 * instance ids scored by Redis's TIME), forgets instances silent for
 * longer than ARGV[2] ms, and returns how many remain (the instance count
 * a cluster-wide limit is shared by while Redis is away) and whether this
 * instance was new to the set (1) or already in it (0): an instance that
 * beat less than the ttl ago and is new again is talking to a Redis that
 * lost its data (index.ts then pushes every quota count it knows).
 *
 *   KEYS[1] the instances key; ARGV[1] this instance's id; ARGV[2] ttl (ms);
 *   ARGV[3] "1" to leave (shutdown) instead of beating.
 *   Reply   { instances, new (0 or 1) }
 */
export const HEARTBEAT_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local added = 0
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  added = redis.call('ZADD', KEYS[1], now, ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return { redis.call('ZCARD', KEYS[1]), added }
`;
