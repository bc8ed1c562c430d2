/**
 * Configuration of the keyed balancers (issue 11): `balance:
 * consistent_hash` with `hashOn`, and `balance: sticky` with `sticky`
 * cookies. The schema fragments (merged into schema.ts under
 * `upstreams.<name>`), the cross-field rules (with the path of the
 * problem), and the resolution into what workers/proxy/balancer.ts uses.
 *
 *   upstreams:
 *     users:
 *       targets: [http://10.0.0.11:9001, http://10.0.0.12:9001]
 *       balance: consistent_hash
 *       hashOn: "header:x-user-id"      # ip (default) | header:<name> | cookie:<name> | path
 *     web:
 *       targets: [http://10.0.0.21:8080, http://10.0.0.22:8080]
 *       balance: sticky
 *       sticky: { cookie: tp_affinity, ttlMs: 1h }
 */
import type { HashOnConfig, StickyConfig } from './types.js';
import { type ConfigError, type PathSegment, formatPath, isPlainObject } from './util.js';

export const BALANCING_DEFAULTS = Object.freeze({
  hashOn: 'ip',
  sticky: Object.freeze({ cookie: 'tp_affinity', ttlMs: 3_600_000 }), // 1 h
});

/** Longest sticky cookie life: 400 days, the cap browsers apply to Max-Age (RFC 6265bis 5.6.2). */
export const MAX_STICKY_TTL_MS = 34_560_000_000;

/** RFC 9110 5.6.2 token (a header name; RFC 6265's cookie-name is the same token). */
const TOKEN = "[!#$%&'*+.^_`|~0-9A-Za-z-]+";
export const HASH_ON_PATTERN = `^(?:ip|path|header:${TOKEN}|cookie:${TOKEN})$`;

export const hashOnSchema = {
  type: 'string', pattern: HASH_ON_PATTERN, maxLength: 256,
  errorMessage: 'must be "ip", "path", "header:<name>" or "cookie:<name>" (a name of letters, digits and !#$%&\'*+-.^_`|~, e.g. "header:x-user-id")',
  description: `balance: consistent_hash only: what a request is hashed on. "ip" (the client address), "header:<name>" (the value of that request header, its first line), "cookie:<name>" (that cookie's value) or "path" (the normalized path, without the query). A request without the header or cookie (or with an empty one) is hashed on its client address. Default "${BALANCING_DEFAULTS.hashOn}".`,
  default: BALANCING_DEFAULTS.hashOn,
} as const;

export const stickySchema = {
  type: 'object', additionalProperties: false,
  description: 'balance: sticky only: the affinity cookie. A client without a valid cookie is balanced (weighted round robin) and the response sets `<cookie>=<opaque target id>; Path=/; Max-Age=<ttlMs/1000>; HttpOnly; SameSite=Lax`; later requests carrying it go to that target while it may take requests. Default { cookie: "tp_affinity", ttlMs: 3600000 }.',
  properties: {
    cookie: {
      type: 'string', pattern: `^${TOKEN}$`, maxLength: 128,
      errorMessage: 'must be a cookie name of letters, digits and !#$%&\'*+-.^_`|~ (RFC 6265 cookie-name, no spaces, "=" or ";")',
      description: `The cookie's name. Default "${BALANCING_DEFAULTS.sticky.cookie}".`, default: BALANCING_DEFAULTS.sticky.cookie,
    },
    ttlMs: {
      type: 'integer', minimum: 0, maximum: MAX_STICKY_TTL_MS,
      description: `The cookie's life (Max-Age, in whole seconds: ttlMs / 1000 rounded down). In milliseconds (0..${MAX_STICKY_TTL_MS}, 400 days). 0 = a session cookie (no Max-Age: gone when the browser closes). Default ${BALANCING_DEFAULTS.sticky.ttlMs}.`,
      default: BALANCING_DEFAULTS.sticky.ttlMs,
    },
  },
} as const;

/**
 * Cross-field rules: `hashOn` only with balance consistent_hash, `sticky`
 * only with balance sticky (either alone is a setting that would do
 * nothing: refused, with the path), and a sticky ttlMs of 1..999 ms (a
 * Max-Age of 0 would delete the cookie as it is set).
 */
export function checkBalancing(upstreams: unknown, out: ConfigError[]): void {
  if (!isPlainObject(upstreams)) return;
  for (const [name, up] of Object.entries(upstreams)) {
    if (!isPlainObject(up)) continue;
    const at = (...rest: PathSegment[]) => formatPath(['upstreams', name, ...rest]);
    const balance = typeof up['balance'] === 'string' ? up['balance'] : 'round_robin';
    if (up['hashOn'] !== undefined && balance !== 'consistent_hash') {
      out.push({ path: at('hashOn'), message: `hashOn is used by balance: consistent_hash only (this upstream's balance is "${balance}"); set balance: consistent_hash or remove hashOn` });
    }
    const st = up['sticky'];
    if (st !== undefined && balance !== 'sticky') {
      out.push({ path: at('sticky'), message: `sticky is used by balance: sticky only (this upstream's balance is "${balance}"); set balance: sticky or remove sticky` });
    }
    if (isPlainObject(st) && typeof st['ttlMs'] === 'number' && st['ttlMs'] > 0 && st['ttlMs'] < 1000) {
      out.push({ path: at('sticky', 'ttlMs'), message: `${st['ttlMs']} ms is less than a second: the cookie's Max-Age would be 0, which deletes it; use at least 1000 (1s), or 0 for a session cookie` });
    }
  }
}

/** hashOn of a validated upstream: null unless its balance is consistent_hash. Header names lowercase. */
export function resolveHashOn(raw: Record<string, unknown>): HashOnConfig | null {
  if (raw['balance'] !== 'consistent_hash') return null;
  const text = typeof raw['hashOn'] === 'string' ? raw['hashOn'] : BALANCING_DEFAULTS.hashOn;
  if (text === 'ip' || text === 'path') return { source: text, name: '' };
  const colon = text.indexOf(':');
  const source = text.slice(0, colon) as 'header' | 'cookie';
  const name = text.slice(colon + 1);
  return { source, name: source === 'header' ? name.toLowerCase() : name };
}

/** sticky of a validated upstream: null unless its balance is sticky (then every default filled). */
export function resolveSticky(raw: Record<string, unknown>): StickyConfig | null {
  if (raw['balance'] !== 'sticky') return null;
  const s = isPlainObject(raw['sticky']) ? raw['sticky'] : {};
  const D = BALANCING_DEFAULTS.sticky;
  return {
    cookie: typeof s['cookie'] === 'string' ? s['cookie'] : D.cookie,
    ttlMs: typeof s['ttlMs'] === 'number' ? s['ttlMs'] : D.ttlMs,
  };
}
