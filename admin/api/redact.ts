/**
 * Secret redaction for anything the admin API shows of the config.
 *
 * Rule: a key matching SECRET_KEY whose value is a string becomes
 * "[redacted]". The resolved config keeps header edits and match predicates
 * as `[name, value]` pairs, so a pair is treated as a key too: its value is
 * redacted when the name matches the rule or is a credential header
 * (Authorization, Proxy-Authorization, Cookie). Over-redaction is accepted
 * (admin.tokensFile, a path, is shown as "[redacted]"): a false positive
 * hides a value, a false negative leaks one.
 */

export const SECRET_KEY = /secret|password|token|key$/i;
export const CREDENTIAL_HEADERS: ReadonlySet<string> = new Set(['authorization', 'proxy-authorization', 'cookie']);
export const REDACTED = '[redacted]';

function secretName(name: string): boolean {
  return SECRET_KEY.test(name) || CREDENTIAL_HEADERS.has(name.toLowerCase());
}

function isPair(v: unknown): v is [string, unknown] {
  return Array.isArray(v) && v.length === 2 && typeof v[0] === 'string';
}

/** `scheme://user:password@host` -> credentials redacted (the Redis URL). */
function redactUrl(v: string): string {
  return v.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^@/]*@/i, `$1${REDACTED}@`);
}

/** A redacted deep copy (plain objects and arrays; other values as they are). URLs lose their credentials. */
export function redact(value: unknown): unknown {
  if (Array.isArray(value)) {
    return value.map((item) => {
      if (isPair(item) && typeof item[1] === 'string' && secretName(item[0])) return [item[0], REDACTED];
      return redact(item);
    });
  }
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      out[k] = typeof v === 'string' ? (secretName(k) ? REDACTED : k === 'url' ? redactUrl(v) : v) : redact(v);
    }
    return out;
  }
  return value;
}
