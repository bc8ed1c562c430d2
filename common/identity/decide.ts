/**
 * The gatekeeper's decision on a known API key (issue 12), shared by the
 * workers (workers/policies/auth) and the nginx auth_request listener
 * (admin/identity/authz.ts), so both answer alike.
 *
 * Order (the gatekeeper seed's): the key's state (revoked, its consumer
 * suspended, expired or past its rotation grace: 401), its restrictions
 * (client address, time of day, Origin/Referer: 403 key_restricted), the
 * route's scopes (403 insufficient_scope), the route's grants (403 no_grant).
 * What comes before (no route: 404; no auth: public; no or malformed or
 * unknown key: 401) is the caller's.
 *
 * A looked-up key is compiled once (compileKey) into what the checks need:
 * a CIDR matcher, time windows, origin patterns, the scope and grant sets,
 * and the header lines sent upstream; a request then costs a few property
 * reads and, only for keys that have them, the restriction checks.
 */
import net from 'node:net';
import type { RouteAuth } from '../config/types.js';
import type { KeyRecordAnswer } from './wire.js';
import type { TimeWindow } from '../../admin/identity/store/types.js';

/** Decision results; OK is 0, every other one names an error of common/errors.ts. */
export const AUTH_OK = 0;
export const AUTH_KEY_REVOKED = 1;
export const AUTH_CONSUMER_SUSPENDED = 2;
export const AUTH_KEY_EXPIRED = 3;
export const AUTH_KEY_RESTRICTED = 4;
export const AUTH_INSUFFICIENT_SCOPE = 5;
export const AUTH_NO_GRANT = 6;

/** Why a restriction refused (for the message and the log). */
export const restrictionFailed = { what: '' };

const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] as const;

/** A key as the checks need it. Immutable once compiled. */
export interface CompiledKey {
  readonly answer: KeyRecordAnswer;
  readonly scopes: ReadonlySet<string>;
  /** routeId -> methods (upper case), `*` for any. */
  readonly grants: ReadonlyMap<string, ReadonlySet<string>>;
  readonly cidrs: net.BlockList | null;
  readonly windows: readonly CompiledWindow[] | null;
  readonly origins: readonly RegExp[] | null;
  /**
   * Upstream header lines (`name: value\r\n`) naming the consumer, for the
   * header names of the config that compiled it; values made safe for a
   * header (anything outside visible ASCII and space percent-encoded).
   */
  readonly consumerLines: string;
  /** [deprecation, sunset] response header values of a rotated key in grace (RFC 9745, RFC 8594), or null. */
  readonly deprecation: readonly [string, string] | null;
}

interface CompiledWindow {
  days: number; // bit per day, 0 = Sunday
  from: number; // minutes after midnight
  to: number;
  timeZone: string;
}

/**
 * A header value: visible ASCII and space kept, `%` and anything else (CR,
 * LF, non-ASCII) percent-encoded as UTF-8, so that the value decodes back to
 * exactly the name (a name holding `%0D` is not one holding a CR).
 */
export function headerSafe(v: string): string {
  return /^[\x20-\x24\x26-\x7e]*$/.test(v) ? v : v.replace(/[^\x20-\x24\x26-\x7e]/gu, (c) => encodeURIComponent(c));
}

/**
 * `https://*.example.com` style pattern -> anchored RegExp: `*` matches any
 * run without `/`, `,` or whitespace (so never two origins joined by a
 * proxy or by Bun's header join).
 */
function originPattern(p: string): RegExp {
  const body = p.toLowerCase().split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^/,\\s]*');
  return new RegExp(`^${body}$`);
}

/**
 * The store's default rotation grace (admin/identity/store/types.ts
 * DEFAULT_GRACE_MS, 30 days; not imported: the data plane does not load
 * admin modules), used only to date the Deprecation header of a rotated key
 * whose record has no rotatedAt.
 */
const DEFAULT_ROTATION_GRACE_MS = 30 * 24 * 3600 * 1000;

function minutesOf(hhmm: string): number {
  const [h, m] = hhmm.split(':');
  return Number(h) * 60 + Number(m);
}

export function compileKey(a: KeyRecordAnswer, headers: { consumerId: string; consumerName: string }): CompiledKey {
  const r = a.restrictions;
  let cidrs: net.BlockList | null = null;
  if (r.cidrs.length > 0) {
    cidrs = new net.BlockList();
    for (const c of r.cidrs) {
      const slash = c.indexOf('/');
      const addr = slash === -1 ? c : c.slice(0, slash);
      const family = net.isIPv6(addr) ? 'ipv6' : 'ipv4';
      const prefix = slash === -1 ? (family === 'ipv6' ? 128 : 32) : Number(c.slice(slash + 1));
      try {
        cidrs.addSubnet(addr, prefix, family);
      } catch { /* the store validated it; an entry it cannot parse admits nothing */ }
    }
  }
  const windows = r.timeWindows.length === 0 ? null : r.timeWindows.map((w: TimeWindow) => ({
    days: w.days.reduce((bits, d) => bits | (1 << DAYS.indexOf(d)), 0),
    from: minutesOf(w.from),
    to: minutesOf(w.to),
    timeZone: w.timeZone,
  }));
  const grants = new Map<string, Set<string>>();
  for (const [route, methods] of a.grants) {
    const set = grants.get(route) ?? new Set<string>();
    for (const m of methods) set.add(m);
    grants.set(route, set);
  }
  // Deprecated since it was rotated (the stored rotatedAt: one value on every worker, every refill, every instance).
  // A record from before rotatedAt was kept: the rotation time a default grace implies.
  const deprecation = a.graceUntil === null ? null : [
    '@' + Math.floor((a.rotatedAt ?? a.graceUntil - DEFAULT_ROTATION_GRACE_MS) / 1000),
    new Date(a.graceUntil).toUTCString(),
  ] as const;
  return {
    answer: a,
    scopes: new Set(a.scopes),
    grants,
    cidrs,
    windows,
    origins: r.origins.length === 0 ? null : r.origins.map(originPattern),
    consumerLines: `${headers.consumerId}: ${headerSafe(a.consumerId)}\r\n${headers.consumerName}: ${headerSafe(a.consumerName)}\r\n`,
    deprecation,
  };
}

/** Local weekday (bit index, 0 = Sunday) and minutes after midnight in `timeZone`, cached per zone and minute. */
const zoneClock = new Map<string, { minute: number; day: number; minutes: number; fmt: Intl.DateTimeFormat }>();

function localTime(timeZone: string, now: number): { day: number; minutes: number } {
  const minute = Math.floor(now / 60_000);
  let z = zoneClock.get(timeZone);
  if (z === undefined) {
    const fmt = new Intl.DateTimeFormat('en-US', { timeZone, weekday: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
    z = { minute: -1, day: 0, minutes: 0, fmt };
    zoneClock.set(timeZone, z);
  }
  if (z.minute !== minute) {
    let day = 0;
    let h = 0;
    let m = 0;
    for (const p of z.fmt.formatToParts(new Date(minute * 60_000))) {
      if (p.type === 'weekday') day = DAYS.indexOf(p.value.toLowerCase().slice(0, 3) as (typeof DAYS)[number]);
      else if (p.type === 'hour') h = Number(p.value);
      else if (p.type === 'minute') m = Number(p.value);
    }
    z.minute = minute;
    z.day = day;
    z.minutes = h * 60 + m;
  }
  return z;
}

function inWindow(w: CompiledWindow, now: number): boolean {
  const t = localTime(w.timeZone, now);
  if (w.from <= w.to) return (w.days & (1 << t.day)) !== 0 && t.minutes >= w.from && t.minutes < w.to;
  // Spans midnight: the part before midnight belongs to the listed day, the part after to the day before it.
  if (t.minutes >= w.from) return (w.days & (1 << t.day)) !== 0;
  if (t.minutes < w.to) return (w.days & (1 << ((t.day + 6) % 7))) !== 0;
  return false;
}

/** The origin (scheme://host[:port]) of a Referer URL, lowercase, or null (not a URL: whitespace, as in two lines joined, never is). */
function refererOrigin(referer: string): string | null {
  if (/\s/.test(referer)) return null;
  const scheme = referer.indexOf('://');
  if (scheme <= 0) return null;
  const end = referer.indexOf('/', scheme + 3);
  return (end === -1 ? referer : referer.slice(0, end)).toLowerCase();
}

/**
 * The decision for key `k` on a route with `auth`, for a request with
 * `method` (upper case) from `clientIp` with Origin `origin` and Referer
 * `referer` (null when absent) at `now` (ms). Returns AUTH_OK or an AUTH_*
 * refusal; for AUTH_KEY_RESTRICTED, restrictionFailed.what says which
 * restriction (`address`, `time`, `origin`). A grant for GET covers HEAD.
 */
export function decide(
  k: CompiledKey, auth: RouteAuth, routeId: string, method: string, clientIp: string,
  origin: string | null, referer: string | null, now: number,
): number {
  const a = k.answer;
  if (a.keyStatus === 'revoked' || a.consumerStatus === 'revoked') return AUTH_KEY_REVOKED;
  if (a.consumerStatus === 'suspended') return AUTH_CONSUMER_SUSPENDED;
  if ((a.expiresAt !== null && now >= a.expiresAt) || (a.graceUntil !== null && now >= a.graceUntil)) return AUTH_KEY_EXPIRED;
  if (k.cidrs !== null) {
    const family = clientIp.indexOf(':') === -1 ? 'ipv4' : 'ipv6';
    if (!k.cidrs.check(clientIp, family)) {
      restrictionFailed.what = 'address';
      return AUTH_KEY_RESTRICTED;
    }
  }
  if (k.windows !== null) {
    let ok = false;
    for (const w of k.windows) if (inWindow(w, now)) { ok = true; break; }
    if (!ok) {
      restrictionFailed.what = 'time';
      return AUTH_KEY_RESTRICTED;
    }
  }
  if (k.origins !== null) {
    const o = origin !== null && origin !== 'null' ? origin.toLowerCase() : referer !== null ? refererOrigin(referer) : null;
    let ok = false;
    // A NUL: the field was sent on several lines (RequestContext.headerOnce): no pattern matches it.
    if (o !== null && o.indexOf('\u0000') === -1) for (const re of k.origins) if (re.test(o)) { ok = true; break; }
    if (!ok) {
      restrictionFailed.what = 'origin';
      return AUTH_KEY_RESTRICTED;
    }
  }
  const scopes = auth.scopes;
  for (let i = 0; i < scopes.length; i++) if (!k.scopes.has(scopes[i]!)) return AUTH_INSUFFICIENT_SCOPE;
  if (auth.grants === 'required') {
    const m = k.grants.get(routeId);
    if (m === undefined || !(m.has('*') || m.has(method) || (method === 'HEAD' && m.has('GET')))) return AUTH_NO_GRANT;
  }
  return AUTH_OK;
}
