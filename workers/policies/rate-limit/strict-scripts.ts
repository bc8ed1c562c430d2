/**
 * The Lua scripts of strict rate limits: one atomic decision per request,
 * taken inside Redis on Redis's own clock (TIME), so every worker of every
 * instance decides on the same bucket at the same time base.
 *
 * Each algorithm is a line-for-line port of its in-memory twin
 * (algorithms.ts: token_bucket, gcra, fixed_window, sliding_window) with
 * rateScale 1, in the same units (ms, fractional) and the same order of
 * floating-point operations: Lua 5.1 numbers are IEEE doubles like JS
 * numbers, `math.fmod` is JS `%`, so for the same state and `now` both
 * give the same bits. The results go back as `%.17g` strings (Redis would
 * truncate a Lua number to an integer) and the headers and the 429 body
 * are then written by the same JS code as for in-memory limits.
 *
 * One key per (policy, request key) (strict.ts builds the name), holding
 * one string "A B C" (the F_A, F_B, F_C cells of the in-memory bucket, each
 * `%.17g`, so a value read back is the double written) with a PX expiry at
 * the moment the bucket equals a fresh one (rounded up to the ms): an idle
 * key costs nothing.
 *
 *   decide  KEYS[1]  ARGV rate, perMs, burst
 *           -> { allowed (0|1), remaining (integer >= 0), resetMs, retryMs, windowStart, now }
 *              (the last four as strings; windowStart "0" for buckets; now:
 *              the Redis clock the decision was taken at, Unix ms)
 *   undo    KEYS[1]  ARGV rate, perMs, burst, windowStart -> 1 when it gave a unit back, else 0
 *
 * `undo` takes back one admission when a later limit of the same request
 * refused (algorithms.ts `undo`); it keeps the key's expiry, which stays
 * long enough since giving a unit back only brings "fresh" closer.
 *
 * Redis >= 3.2 (scripts that write after TIME: effects replication, the
 * default from Redis 5; asked for explicitly before that).
 */

const PRELUDE = `
if redis.replicate_commands then pcall(redis.replicate_commands) end
local EPS = 1e-9
local MARGIN = 0.001
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local function f(x) return string.format('%.17g', x) end
local function load()
  local v = redis.call('GET', KEYS[1])
  if not v then return nil end
  local a, b, c = string.match(v, '^(%S+) (%S+) (%S+)$')
  return tonumber(a), tonumber(b), tonumber(c)
end
local function save(a, b, c, freshAt)
  local ttl = math.ceil(freshAt - now)
  if ttl < 1 then ttl = 1 end
  redis.call('SET', KEYS[1], f(a) .. ' ' .. f(b) .. ' ' .. f(c), 'PX', ttl)
end
local rate = tonumber(ARGV[1])
local per = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
`;

const UNDO_PRELUDE = `
local function load()
  local v = redis.call('GET', KEYS[1])
  if not v then return nil end
  local a, b, c = string.match(v, '^(%S+) (%S+) (%S+)$')
  return tonumber(a), tonumber(b), tonumber(c)
end
local function f(x) return string.format('%.17g', x) end
local function keep(a, b, c)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('SET', KEYS[1], f(a) .. ' ' .. f(b) .. ' ' .. f(c), 'PX', ttl) end
end
local rate = tonumber(ARGV[1])
local per = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local windowStart = tonumber(ARGV[4])
local a, b, c = load()
if a == nil then return 0 end
`;

/** token_bucket: A tokens, B last refill (ms). algorithms.ts tokenBucket. */
const TOKEN_BUCKET = PRELUDE + `
local perMsRate = rate / per
local a, b = load()
local tokens
if a == nil then
  tokens = burst
else
  local elapsed = now - b
  tokens = a
  if elapsed > 0 then tokens = tokens + elapsed * perMsRate end
  if tokens > burst then tokens = burst end
end
local allowed = 0
local retry = 0
if tokens >= 1 - EPS then
  tokens = tokens - 1
  allowed = 1
else
  retry = (1 - tokens) / perMsRate
end
local toFull = 0
if tokens < burst then toFull = (burst - tokens) / perMsRate end
save(tokens, now, 0, now + toFull + MARGIN)
local remaining = 0
if tokens >= 0 then remaining = math.floor(tokens + EPS) end
return { allowed, remaining, f(toFull), f(retry), '0', f(now) }
`;

/**
 * gcra: the theoretical arrival time TAT = A + C, A the time rounded to a
 * double and C the remainder the rounding dropped (exact sums: Fast2Sum).
 * algorithms.ts gcra.
 */
const GCRA = PRELUDE + `
local t = per / rate
local tau = t * (burst - 1)
local a, b, c = load()
local hi = now
local lo = 0
local ahead = 0
if a ~= nil then
  ahead = (a - now) + c
  if ahead > 0 then
    hi = a
    lo = c
  else
    ahead = 0
  end
end
local allowed = 0
local retry = 0
if ahead <= tau + t * EPS then
  local s = hi + t
  lo = lo + (t - (s - hi))
  hi = s + lo
  lo = lo - (hi - s)
  ahead = ahead + t
  allowed = 1
else
  retry = ahead - tau
end
local freshAt = hi
if lo > 0 then freshAt = hi + MARGIN end
save(hi, 0, lo, freshAt)
local remaining = math.floor((tau + t - ahead) / t + EPS)
if remaining < 0 then remaining = 0 end
return { allowed, remaining, f(ahead), f(retry), '0', f(now) }
`;

/** fixed_window: A count, B window start (ms). algorithms.ts fixedWindow. */
const FIXED_WINDOW = PRELUDE + `
local start = now - math.fmod(now, per)
local a, b = load()
local count = 0
if a ~= nil and b == start then count = a end
local limit = math.max(1, math.floor(rate + EPS))
local fin = start + per
local allowed = 0
local retry = 0
if count < limit then
  count = count + 1
  allowed = 1
else
  retry = fin - now
end
save(count, start, 0, fin)
local remaining = 0
if count < limit then remaining = limit - count end
return { allowed, remaining, f(fin - now), f(retry), f(start), f(now) }
`;

/** sliding_window: A current count, B current window start, C previous count. algorithms.ts slidingWindow. */
const SLIDING_WINDOW = PRELUDE + `
local function slidingRetry(prev, cur, limit, elapsed)
  if prev > 0 and cur < limit then
    local x = per * (1 - (limit - cur) / prev)
    if x < per then return math.max(x - elapsed, 0) + 0.001 end
  end
  local y = 0
  if not (cur < limit) then y = per * (1 - limit / cur) + 0.001 end
  return per - elapsed + y
end
local start = now - math.fmod(now, per)
local a, b, c = load()
local cur = 0
local prev = 0
if a ~= nil then
  if b == start then
    cur = a
    prev = c
  elseif b == start - per then
    prev = a
  end
end
local limit = rate
if limit < 1 then limit = 1 end
local elapsed = now - start
local weight = (per - elapsed) / per
local allowed = 0
local retry = 0
if prev * weight + cur < limit - EPS then
  cur = cur + 1
  allowed = 1
else
  retry = slidingRetry(prev, cur, limit, elapsed)
end
local room = math.ceil(limit - EPS - (prev * weight + cur))
local remaining = 0
if room > 0 then remaining = room end
local clear = now
if cur > 0 then clear = start + 2 * per elseif prev > 0 then clear = start + per end
save(cur, start, prev, clear)
return { allowed, remaining, f(clear - now), f(retry), f(start), f(now) }
`;

/** algorithms.ts undo, per algorithm. */
const UNDO_TOKEN_BUCKET = UNDO_PRELUDE + `
keep(math.min(burst, a + 1), b, c)
return 1
`;
const UNDO_GCRA = UNDO_PRELUDE + `
local t = per / rate
local s = a - t
local lo = c + (-t - (s - a))
local h2 = s + lo
lo = lo - (h2 - s)
keep(h2, b, lo)
return 1
`;
const UNDO_WINDOW = UNDO_PRELUDE + `
if b == windowStart and a > 0 then
  keep(a - 1, b, c)
  return 1
end
return 0
`;

/** One script pair per algorithm, indexed like ALGORITHMS (algorithms.ts): token_bucket, gcra, fixed_window, sliding_window. */
export const STRICT_SCRIPTS: readonly { decide: string; undo: string }[] = [
  { decide: TOKEN_BUCKET, undo: UNDO_TOKEN_BUCKET },
  { decide: GCRA, undo: UNDO_GCRA },
  { decide: FIXED_WINDOW, undo: UNDO_WINDOW },
  { decide: SLIDING_WINDOW, undo: UNDO_WINDOW },
];

/** ioredis command names of the scripts (defineCommand), indexed like STRICT_SCRIPTS. */
export const DECIDE_COMMANDS = ['tpRlStrictTokenBucket', 'tpRlStrictGcra', 'tpRlStrictFixedWindow', 'tpRlStrictSlidingWindow'] as const;
export const UNDO_COMMANDS = ['tpRlStrictUndoTokenBucket', 'tpRlStrictUndoGcra', 'tpRlStrictUndoFixedWindow', 'tpRlStrictUndoSlidingWindow'] as const;
