/**
 * routes[].websocket.maxConnectionsPerKey across gateway instances, through
 * the config's `redis` section (issue 14): the same Redis, the same ioredis
 * client options and the same key prefix as cluster rate limits (no setting
 * of its own but the route's `perKeyLeaseMs`). Without `redis` nothing here
 * runs: the limit holds per instance (common/websocket-layout.ts).
 *
 * Who counts: every worker thread is one contributor, with an id of its own
 * (`<host>/<pid>/<thread id>/<random>`: a replacement worker never takes
 * over its predecessor's counts). Each keeps, per (route, key) it holds
 * connections of, its own count in memory (Entry.count), which is the
 * truth about its contribution: every write to Redis asserts it (absolute
 * values, never increments), so a lost write, a Redis that restarted empty
 * or an outage heals at the next write.
 *
 * What Redis holds, per (route, key): one hash
 *
 *   <keyPrefix>ws:{<64-bit hash of route id and key, hex>}
 *     <contributor id> -> "<count> <lease end, Unix ms on Redis's clock>"
 *
 * The braces are a Cluster hash tag (one key per call: every script call
 * names its one key; keys spread over the slots). The key text (a consumer
 * id, a client address) is never stored. The hash expires (PEXPIRE) when
 * no contributor renewed it for perKeyLeaseMs, so an idle key costs
 * nothing and a whole dead cluster leaves nothing behind.
 *
 * One script (PUT_LUA), atomically: reads the hash, drops the fields whose
 * lease ended (a crashed contributor), sums the others, and
 *  - admission (limit > 0): when the others + this contributor's count +
 *    1 exceed the limit, refuses (its own field is still asserted);
 *    otherwise writes its count + 1 with a fresh lease: check and
 *    increment in one step, so two instances racing for the last place
 *    cannot both get it;
 *  - renewal and release (limit 0): writes its count (0: the field goes).
 * One round trip per upgrade (admission) and per close (release); nothing
 * per message. Renewal: every perKeyLeaseMs / 3 per key this worker holds
 * connections of (a 100 ms sweep, writes pipelined), and at once for every
 * key when the connection to Redis is (re)established.
 *
 * The hot path: the instance's shared-memory table decides first
 * (tunnel.ts): a key this instance alone already holds `limit` connections
 * of is refused at once, without Redis. Only an upgrade the instance would
 * admit asks Redis (the upstream is contacted once it answered).
 *
 * Precision while Redis answers: never admits past the limit, with two
 * bounded exceptions, both documented in the README:
 *  - a contributor whose lease ended while it still holds connections
 *    (its renewal could not reach Redis for perKeyLeaseMs: cut off from
 *    Redis while the others reach it, or a thread stalled that long) stops
 *    counting on the others until its next write;
 *  - an admission whose reply did not come within redis.commandTimeoutMs is
 *    decided locally (below) though Redis may have applied it.
 * It may refuse early (never admit more) when two upgrades of one key race
 * on one worker: the first, still unanswered, counts in the second's
 * check.
 *
 * Redis away (a connection that fails or drops, a command that fails or
 * takes longer than redis.commandTimeoutMs): the worker's store is down,
 * and upgrades are decided by the instance's own count alone (the full
 * limit per instance: a key can then hold up to `limit` connections on
 * each instance), at once, without waiting for Redis; counted in
 * turnpike_websocket_per_key_decisions_total{decided_by="fallback"},
 * turnpike_websocket_per_key_store_up 0, one log line per change of state.
 * Connections admitted meanwhile are counted in memory as any other. Back
 * (ioredis reconnects with the rate limits' backoff, 50 ms doubling to 2
 * s; a connection that stayed open but stopped answering is probed with
 * PING on the same backoff): every held key is written at once, so the
 * other instances see this one's connections again, and admissions are
 * decided in Redis again. Keys already over their limit then (each
 * instance admitted alone) keep their connections; new upgrades are
 * refused until enough close.
 *
 * A reload that changes `redis`: new upgrades use the new connection;
 * connections admitted through the old one are released through it, and
 * it closes when it holds none.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { threadId } from 'node:worker_threads';
import type { RedisConfig } from '../../../common/config/types.js';
import { log } from '../../../common/log.js';
import { G_WS_PER_KEY, G_WS_PER_KEY_STORE_DOWN, G_WS_PER_KEY_STORE_OPEN, WS_PK_FALLBACK, WS_PK_REDIS } from '../../../common/metrics-layout.js';
import { hashKey } from '../../../common/rate-limit-layout.js';
import { LINK_DOWN, RedisLink, describeRedis, urlSecret, type RedisLinkOwner } from '../../redis-link.js';

/**
 * KEYS[1]: the (route, key) hash. ARGV: contributor id, its count before
 * this call (in-flight admissions included), limit (0: no check, write the
 * count), lease (ms). Returns {admitted 1|0, the count across contributors
 * after the call}.
 */
export const PUT_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local own = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local all = redis.call('HGETALL', KEYS[1])
local others = 0
for i = 1, #all, 2 do
  local f = all[i]
  if f ~= id then
    local v = all[i + 1]
    local sep = string.find(v, ' ', 1, true)
    local exp = sep and tonumber(string.sub(v, sep + 1)) or nil
    if exp == nil or exp <= now then
      redis.call('HDEL', KEYS[1], f)
    else
      others = others + (tonumber(string.sub(v, 1, sep - 1)) or 0)
    end
  end
end
local ok = 1
if limit > 0 then
  if others + own + 1 > limit then ok = 0 else own = own + 1 end
end
if own > 0 then
  redis.call('HSET', KEYS[1], id, own .. ' ' .. (now + lease))
  if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
else
  redis.call('HDEL', KEYS[1], id)
end
return { ok, others + own }
`;

/** Seed of the key hash ("WSCL"), apart from the shared table's and the rate limits'. */
const TAG = 0x5753434c;
/** How often held keys are looked at for renewal (ms); each is renewed every perKeyLeaseMs / 3. */
export const RENEW_SWEEP_MS = 100;

/** Outcome of an admission, handed to PerKeyWaiter.perKeyDecided. */
export const PK_ADMITTED = 0;
export const PK_REFUSED = 1;
/** Redis away: admitted on the instance's own count (which had admitted it). */
export const PK_FALLBACK = 2;

/** The tunnel waiting for an admission (called once, maybe synchronously). */
export interface PerKeyWaiter {
  perKeyDecided(outcome: number): void;
}

/** A (route, key) this worker holds connections of. */
interface Entry {
  readonly rkey: string;
  /** Connections held or being admitted here. */
  count: number;
  /** Admissions sent to Redis and not answered yet. */
  pending: number;
  /**
   * A write was sent while an admission was pending, so it counted that
   * admission: if the admission is refused, Redis holds one too many for
   * this worker; the entry is written again once nothing is pending.
   */
  stale: boolean;
  leaseMs: number;
  /** performance.now() at which to renew. */
  renewAt: number;
}

const T_PENDING = 0;
const T_HELD = 1;
const T_DONE = 2;

/** One admission: given back with release() whatever happened (idempotent). */
export class PerKeyTicket {
  state = T_PENDING;
  /** Sent to Redis and not answered (or given up on) yet. */
  inFlight = false;
  timer: NodeJS.Timeout | null = null;
  constructor(readonly store: ClusterCounts, readonly entry: Entry, readonly waiter: PerKeyWaiter) {}
}

/** This worker's stores by `redis` settings (JSON): the newest is the one new upgrades use. */
const stores = new Map<string, ClusterCounts>();
let newest: ClusterCounts | null = null;

/**
 * The worker's store for these `redis` settings (opened on first use; one
 * Redis connection per worker thread). `metrics`: the worker's cells, or
 * null (metrics off).
 */
export function clusterCounts(cfg: RedisConfig, metrics: Float64Array | null): ClusterCounts {
  const k = JSON.stringify(cfg);
  let s = stores.get(k);
  if (s === undefined) {
    s = new ClusterCounts(cfg, metrics);
    stores.set(k, s);
  }
  if (newest !== s) {
    const old = newest;
    newest = s;
    old?.closeIfIdle();
  }
  return s;
}

/**
 * The worker closes (WsHub.closeAll): each store closes once the
 * connections counted through it are given back (their last writes sent),
 * so that the thread can exit.
 */
export function closeClusterCounts(): void {
  newest = null;
  for (const s of [...stores.values()]) s.closeIfIdle();
}

/** The Redis side of maxConnectionsPerKey for one worker and one `redis` section (module comment). */
export class ClusterCounts implements RedisLinkOwner {
  readonly id = `${hostname()}/${process.pid}/${threadId}/${randomBytes(4).toString('hex')}`;
  readonly target: string;
  private readonly prefix: string;
  /** The connection and its up/down state (closed once closeIfIdle closed it). */
  private readonly link: RedisLink;
  /** link.client, with PUT_LUA defined on it as `tpwsput`. */
  private readonly client: any;
  private readonly entries = new Map<string, Entry>();
  private readonly h = new Int32Array(2);
  private sweeper: NodeJS.Timeout | null = null;
  private readonly timeoutMs: number;
  /** The password of redis.url (decoded), scrubbed from error messages before they are logged; '' when none. */
  private readonly secret: string;

  constructor(readonly config: RedisConfig, private readonly metrics: Float64Array | null) {
    this.prefix = `${config.keyPrefix}ws:{`;
    this.target = describeRedis(config);
    this.timeoutMs = config.commandTimeoutMs;
    this.secret = urlSecret(config);
    // As the strict rate limits' connection (strict-store.ts): a command caught by a broken connection fails
    // at once (the upgrade is then decided locally) and is never sent again; no auto-pipelining (on a
    // Cluster it routes a script by its first argument instead of its key). Reasons are scrubbed whole
    // here (linkDown), so the link hands them over as Redis wrote them (secret '').
    this.link = new RedisLink(config, { name: `turnpike-ws-${threadId}`, autoPipelining: false, secret: '' }, this);
    this.client = this.link.client;
    this.client.defineCommand('tpwsput', { numberOfKeys: 1, lua: PUT_LUA });
    if (this.link.db === null) this.link.markDown('redis.url names a database that is not a whole number: not connecting');
    if (this.metrics !== null) this.metrics[G_WS_PER_KEY_STORE_OPEN]! += 1;
  }

  /** Whether admissions are decided in Redis now (connecting counts: they wait, bounded by the command timeout). */
  get up(): boolean {
    return this.link.state !== LINK_DOWN;
  }

  /**
   * One more connection of `key` on `route`, its count leased for
   * `leaseMs`: counted here at once (the instance's table admitted it
   * already); decide() then asks Redis. Give it back with release().
   */
  acquire(route: string, key: string, leaseMs: number, w: PerKeyWaiter): PerKeyTicket {
    const e = this.entry(route, key, leaseMs);
    e.count++;
    return new PerKeyTicket(this, e, w);
  }

  /**
   * Decides an acquired ticket against `limit` across every contributor:
   * `perKeyDecided` is called once with PK_ADMITTED, PK_REFUSED (nothing
   * to give back then, release() is a no-op) or PK_FALLBACK (Redis away:
   * admitted on the instance's count); synchronously when Redis is known
   * to be away.
   */
  decide(t: PerKeyTicket, limit: number): void {
    if (t.state !== T_PENDING) return;
    const e = t.entry;
    if (this.link.state === LINK_DOWN || this.link.closed) {
      t.state = T_HELD;
      this.count(WS_PK_FALLBACK);
      t.waiter.perKeyDecided(PK_FALLBACK);
      return;
    }
    // Guard: ioredis's command timeout should answer first; this one decides whatever ioredis does.
    t.timer = setTimeout(() => this.answered(t, null, new Error(`no reply within redis.commandTimeoutMs (${this.timeoutMs} ms)`)), this.timeoutMs + 50);
    t.timer.unref();
    e.renewAt = performance.now() + e.leaseMs / 3;
    if (e.pending > 0) e.stale = true; // this write counts the admissions still pending
    e.pending++;
    t.inFlight = true;
    this.client.tpwsput(e.rkey, this.id, e.count - 1, limit, e.leaseMs).then(
      (r: unknown) => this.answered(t, r, null),
      (err: unknown) => this.answered(t, null, err),
    );
  }

  /** Gives back a connection acquire() counted (any state; twice is once). */
  release(t: PerKeyTicket): void {
    if (t.state === T_DONE) return;
    t.state = T_DONE;
    if (t.timer !== null) clearTimeout(t.timer);
    t.timer = null;
    t.entry.count--;
    this.write(t.entry);
    if (this !== newest) this.closeIfIdle();
  }

  /** The admission's reply, its error, or the guard's timeout (whichever comes first decides; the entry's pending count drops once). */
  private answered(t: PerKeyTicket, reply: unknown, err: unknown): void {
    if (t.timer !== null) clearTimeout(t.timer);
    t.timer = null;
    if (err !== null) this.link.failed(err);
    const e = t.entry;
    if (t.inFlight) {
      t.inFlight = false;
      e.pending--;
    }
    let outcome = -1;
    if (t.state === T_PENDING) {
      if (err !== null) {
        t.state = T_HELD;
        this.count(WS_PK_FALLBACK);
        outcome = PK_FALLBACK;
      } else {
        this.link.succeeded();
        this.count(WS_PK_REDIS);
        if (Array.isArray(reply) && Number(reply[0]) === 1) {
          t.state = T_HELD;
          outcome = PK_ADMITTED;
        } else {
          t.state = T_DONE; // the script wrote the count without it
          e.count--;
          outcome = PK_REFUSED;
        }
      }
    }
    if (e.pending === 0) {
      if (e.stale) {
        // Writes sent meanwhile counted admissions that were refused or given back: assert the count again.
        e.stale = false;
        this.write(e);
      } else if (e.count === 0 && this.link.state !== LINK_DOWN) {
        this.entries.delete(e.rkey);
      }
    }
    if (outcome !== -1) t.waiter.perKeyDecided(outcome);
  }

  private entry(route: string, key: string, leaseMs: number): Entry {
    hashKey(TAG, route + '\n' + key, this.h);
    const rkey = this.prefix + hex8(this.h[0]!) + hex8(this.h[1]!) + '}';
    let e = this.entries.get(rkey);
    if (e === undefined) {
      e = { rkey, count: 0, pending: 0, stale: false, leaseMs, renewAt: 0 };
      this.entries.set(rkey, e);
      if (this.sweeper === null) {
        this.sweeper = setInterval(() => this.renew(false), RENEW_SWEEP_MS);
        this.sweeper.unref();
      }
    }
    e.leaseMs = leaseMs;
    return e;
  }

  /**
   * Asserts this worker's count of `e` in Redis (fire and forget: a failure
   * marks the store down; the next write heals). A key whose count is 0 is
   * forgotten once written; while Redis is away it is kept, count 0, for
   * the write that follows the reconnection (else its last count would
   * stay in Redis until its lease ends).
   */
  private write(e: Entry): void {
    if (this.link.closed) {
      if (e.count === 0 && e.pending === 0) this.entries.delete(e.rkey);
      return;
    }
    if (this.link.state === LINK_DOWN) return;
    e.renewAt = performance.now() + e.leaseMs / 3;
    if (e.pending > 0) e.stale = true;
    this.client.tpwsput(e.rkey, this.id, e.count, 0, e.leaseMs).then(() => this.link.succeeded(), (err: unknown) => this.link.failed(err));
    // Forgotten once written at 0; an entry with admissions pending stays (their answers come back to it).
    if (e.count === 0 && e.pending === 0) this.entries.delete(e.rkey);
  }

  /** The renewal sweep: keys due (all of them when `all`, after a reconnection). */
  private renew(all: boolean): void {
    if (this.entries.size === 0) {
      if (this.sweeper !== null) clearInterval(this.sweeper);
      this.sweeper = null;
      return;
    }
    if (this.link.state === LINK_DOWN || this.link.closed) return;
    const now = performance.now();
    for (const e of this.entries.values()) if (all || now >= e.renewAt) this.write(e);
  }

  private count(i: number): void {
    if (this.metrics !== null) this.metrics[G_WS_PER_KEY + i]!++;
  }

  /** RedisLink: connected, or Redis answers again: store_up 1, a log line after an outage, every held key written. */
  linkUp(wasDown: boolean): void {
    if (this.metrics !== null) this.metrics[G_WS_PER_KEY_STORE_DOWN] = 0;
    if (wasDown) {
      log('info', 'WebSocket per-key store (Redis) reachable again: maxConnectionsPerKey counts across instances again', { redis: this.target, thread: threadId, keys: this.entries.size });
    }
    // (Re)connected: every held key is asserted now (Redis may have lost them, or their leases ended).
    this.renew(true);
  }

  /** RedisLink: unreachable for `why` (redis.url's password scrubbed here): store_up 0, one warn line. */
  linkDown(why: string): void {
    const reason = this.secret === '' ? why : why.split(this.secret).join('***');
    if (this.metrics !== null) this.metrics[G_WS_PER_KEY_STORE_DOWN] = 1;
    log('warn', 'WebSocket per-key store (Redis) unreachable: maxConnectionsPerKey holds per instance (this instance\'s count alone) until it answers again', {
      redis: this.target, thread: threadId, reason,
    });
  }

  /**
   * Closes the connection once no connection is counted through it (a
   * reload moved to other `redis` settings, or the worker closes): the
   * writes already sent are answered first (QUIT). Keys kept at 0 for
   * a reconnection do not hold it open (their counts end with their lease).
   */
  closeIfIdle(): void {
    if (this.link.closed || this === newest) return;
    for (const e of this.entries.values()) if (e.count > 0) return;
    this.entries.clear();
    stores.delete(JSON.stringify(this.config));
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.sweeper = null;
    if (this.metrics !== null) {
      this.metrics[G_WS_PER_KEY_STORE_OPEN]! -= 1;
      if (this.link.state === LINK_DOWN) this.metrics[G_WS_PER_KEY_STORE_DOWN] = 0;
    }
    this.link.close();
  }
}

function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}
