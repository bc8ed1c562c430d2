/**
 * Secrets in the config: the one place that decides what is shown of them,
 * wherever a config value is rendered. Used by GET /admin/config (the
 * resolved config), log lines (the Redis address of the rate-limit store,
 * refused configs), and every problem a config load reports (validation
 * messages: the admin API's 422 answers and audit records, `turnpike
 * validate`, start and reload failures).
 *
 * What is a secret:
 *  - the string value of a key matching SECRET_KEY (`password`, `secret`,
 *    `token`, `credential`, `...key`: an API key, say);
 *  - the value of a header edit or match predicate (`[name, value]` pairs,
 *    or `{Name: value}` maps in the document as written) whose name matches
 *    that rule or is a credential header (Authorization, Cookie...);
 *  - in any URL (the Redis URL): the credentials before `@`, and the value of
 *    a query parameter whose name matches the rule (`?password=`).
 * Over-redaction is accepted (admin.tokensFile, a path, is shown as
 * "[redacted]"): a false positive hides a value, a false negative leaks one.
 * The redis section's sentinels and cluster nodes carry no credentials
 * (host and port only): a password goes in redis.url.
 */

export const REDACTED = '[redacted]';
/** Keys (and header or parameter names) whose values are secrets. */
export const SECRET_KEY = /secret|passw(?:or)?d|token|credential|key$|keypem$/i;
/** Headers that carry credentials whatever their name says. */
export const CREDENTIAL_HEADERS: ReadonlySet<string> = new Set(['authorization', 'proxy-authorization', 'cookie', 'set-cookie']);

/** Whether values under this key, header or parameter name are secrets. */
export function isSecretName(name: string): boolean {
  return SECRET_KEY.test(name) || CREDENTIAL_HEADERS.has(name.toLowerCase());
}

/** `scheme://` then the authority's credentials, up to the `@` before the host (none when the authority has no `@`). */
const URL_CREDENTIALS = /^([a-z][a-z0-9+.-]*:\/\/)([^@/?#]*)@/i;

/**
 * A URL without its secrets: credentials (`redis://user:pw@host` ->
 * `redis://[redacted]@host`) and secret query parameters
 * (`?password=x` -> `?password=[redacted]`). Anything else as it is; a
 * string that is not a URL comes back unchanged.
 */
export function redactUrl(url: string): string {
  let out = url.replace(URL_CREDENTIALS, `$1${REDACTED}@`);
  const q = out.indexOf('?');
  if (q !== -1) {
    out = out.slice(0, q + 1) + out.slice(q + 1).replace(/(^|[&;])([^&;=#]*)=([^&;#]*)/g, (m, sep: string, name: string) => {
      let decoded = name;
      try { decoded = decodeURIComponent(name.replace(/\+/g, ' ')); } catch { /* as sent */ }
      return isSecretName(decoded.trim()) ? `${sep}${name}=${REDACTED}` : m;
    });
  }
  return out;
}

function looksLikeUrl(v: string): boolean {
  return v.indexOf('://') > 0;
}

function isPair(v: unknown): v is [string, unknown] {
  return Array.isArray(v) && v.length === 2 && typeof v[0] === 'string';
}

function isScalar(v: unknown): v is string | number | boolean {
  return typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean';
}

/**
 * A redacted deep copy (plain objects and arrays; other values as they
 * are) of the resolved config: string values of secret keys and pairs, and
 * URLs' secrets. (Numbers are never secrets there: header values are text.)
 */
export function redactConfig(value: unknown): unknown {
  if (Array.isArray(value)) {
    return value.map((item) => {
      if (isPair(item) && typeof item[1] === 'string' && isSecretName(item[0])) return [item[0], REDACTED];
      return typeof item === 'string' && looksLikeUrl(item) ? redactUrl(item) : redactConfig(item);
    });
  }
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      if (typeof v === 'string') out[k] = isSecretName(k) ? REDACTED : looksLikeUrl(v) ? redactUrl(v) : v;
      else out[k] = redactConfig(v);
    }
    return out;
  }
  return value;
}

/** Secrets shorter than this are not looked for in text: "on" or "1" would be hidden everywhere. */
const MIN_SCRUBBED = 4;
/** describeValue (util.ts) cuts strings to this many characters before `...`: such a prefix is looked for too. */
const SHOWN_PREFIX = 57;

function addSecret(out: Set<string>, v: string): void {
  if (v.length < MIN_SCRUBBED) return;
  out.add(v);
  const escaped = JSON.stringify(v).slice(1, -1);
  if (escaped !== v) out.add(escaped);
  if (v.length > SHOWN_PREFIX + 3) out.add(v.slice(0, SHOWN_PREFIX));
}

function urlSecrets(out: Set<string>, url: string): void {
  const m = URL_CREDENTIALS.exec(url);
  if (m !== null && m[2] !== '') {
    addSecret(out, m[2]!);
    const colon = m[2]!.indexOf(':');
    if (colon !== -1) {
      addSecret(out, m[2]!.slice(colon + 1));
      try { addSecret(out, decodeURIComponent(m[2]!.slice(colon + 1))); } catch { /* as written */ }
    }
  }
  const q = url.indexOf('?');
  if (q === -1) return;
  for (const part of url.slice(q + 1).split(/[&;#]/)) {
    const eq = part.indexOf('=');
    if (eq <= 0) continue;
    let name = part.slice(0, eq);
    try { name = decodeURIComponent(name.replace(/\+/g, ' ')); } catch { /* as sent */ }
    if (isSecretName(name.trim())) {
      addSecret(out, part.slice(eq + 1));
      try { addSecret(out, decodeURIComponent(part.slice(eq + 1))); } catch { /* as written */ }
    }
  }
}

/**
 * Every secret value in a config document (as written or resolved), by the
 * same rule as redactConfig: what scrubSecrets must keep out of any text.
 */
export function secretValues(doc: unknown, out: Set<string> = new Set()): Set<string> {
  const walk = (v: unknown, depth: number): void => {
    if (depth > 64) return;
    if (Array.isArray(v)) {
      for (const item of v) {
        if (isPair(item) && isScalar(item[1]) && isSecretName(item[0])) addSecret(out, String(item[1]));
        else if (typeof item === 'string' && looksLikeUrl(item)) urlSecrets(out, item);
        else walk(item, depth + 1);
      }
      return;
    }
    if (v === null || typeof v !== 'object') return;
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
      if (isScalar(x) && isSecretName(k)) addSecret(out, String(x));
      else if (typeof x === 'string' && looksLikeUrl(x)) urlSecrets(out, x);
      else walk(x, depth + 1);
    }
  };
  walk(doc, 0);
  return out;
}

/** `text` with every occurrence of a secret replaced by "[redacted]" (longest first). */
export function scrubSecrets(text: string, secrets: ReadonlySet<string>): string {
  if (secrets.size === 0 || text === '') return text;
  let out = text;
  for (const s of [...secrets].sort((a, b) => b.length - a.length)) {
    if (out.includes(s)) out = out.split(s).join(REDACTED);
  }
  return out;
}
