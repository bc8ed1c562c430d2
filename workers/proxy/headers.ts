/**
 * Header plans: what to drop, set and add on the way up and down, compiled
 * once per route when a config is applied (global -> upstream -> route rules
 * merged), so a request only does one Set lookup per header.
 *
 * RFC 9110 7.6.1: a proxy removes the hop-by-hop fields (Connection and every
 * field it names, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade)
 * before forwarding. Framing (Content-Length / Transfer-Encoding), Host, the
 * X-Forwarded-* family, Expect and the request id are rebuilt by the gateway
 * itself, so they are dropped from what is copied too.
 *
 * Proxy authentication (RFC 9110 11.7) stops here, both ways: the gateway is
 * the first inbound server the client talks to, so a client's
 * Proxy-Authorization is meant for no one behind it (and is a credential
 * that must not leak to an upstream), and an upstream's Proxy-Authenticate /
 * Proxy-Authentication-Info "applies only to the next outbound client on the
 * response chain" -- that is the gateway, never the end client. On requests
 * every `Proxy-*` field and `Proxy` (httpoxy: CGI-style upstreams turn it
 * into HTTP_PROXY) are removed; on responses the three proxy-auth/connection
 * fields are, and `Proxy-Status` (RFC 9209, meant for the client) passes.
 */
import type { HeaderPolicy, HeaderRules } from '../../common/config/types.js';

export const HOP_BY_HOP: readonly string[] = [
  'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade',
];

/** Managed by the gateway on the request side (`proxy-*` is dropped by prefix in the transports). */
const REQUEST_MANAGED = [
  'host', 'content-length', 'expect', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded', 'proxy',
];
/** Written by uWS itself on the response side (it adds Date and Content-Length), and proxy auth (see above). */
const RESPONSE_MANAGED = ['content-length', 'date', 'proxy-authenticate', 'proxy-authentication-info'];

export interface RequestPlan {
  /** Lowercase names never copied from the client request. */
  readonly drop: ReadonlySet<string>;
  /** Preformatted `name: value\r\n` lines appended to every request. */
  readonly extraLines: string;
}

export interface ResponsePlan {
  readonly drop: ReadonlySet<string>;
  /** Flat [name, value, ...] written after the upstream's headers. */
  readonly extra: readonly string[];
}

/** Merge rule levels in order: remove, then set (replace), then add (append). */
function mergeRules(levels: readonly HeaderRules[]): { removed: Set<string>; final: Map<string, string[]> } {
  const removed = new Set<string>();
  const final = new Map<string, string[]>();
  for (const r of levels) {
    for (const name of r.remove) {
      removed.add(name);
      final.delete(name);
    }
    for (const [name, value] of r.set) {
      removed.add(name); // a set replaces whatever the other side sent
      final.set(name, [value]);
    }
    for (const [name, value] of r.add) {
      const list = final.get(name);
      if (list) list.push(value);
      else final.set(name, [value]);
    }
  }
  return { removed, final };
}

/** `alsoDrop`: lowercase names the policies own (identity headers, an auth route's credential headers). */
export function compileRequestPlan(policies: readonly HeaderPolicy[], requestIdHeader: string, alsoDrop: readonly string[] = []): RequestPlan {
  const { removed, final } = mergeRules(policies.map((p) => p.request));
  const drop = new Set<string>([...HOP_BY_HOP, ...REQUEST_MANAGED, requestIdHeader, ...removed, ...alsoDrop]);
  let extraLines = '';
  for (const [name, values] of final) for (const v of values) extraLines += `${name}: ${v}\r\n`;
  // The request head is written as latin1 (one char = one byte); a configured
  // value is text, sent as its UTF-8 bytes (as uWS does on the response side).
  return { drop, extraLines: Buffer.from(extraLines, 'utf8').toString('latin1') };
}

export function compileResponsePlan(policies: readonly HeaderPolicy[]): ResponsePlan {
  const { removed, final } = mergeRules(policies.map((p) => p.response));
  const drop = new Set<string>([...HOP_BY_HOP, ...RESPONSE_MANAGED, ...removed]);
  const extra: string[] = [];
  for (const [name, values] of final) for (const v of values) extra.push(name, v);
  return { drop, extra };
}

/**
 * Names listed in a Connection header value (all its lines joined with
 * ", "), beyond keep-alive/close (which are already dropped). Null when there
 * are none: the common case, no work.
 */
export function connectionListed(value: string): Set<string> | null {
  // The usual values name nothing beyond what is always dropped.
  const n = value.length;
  if ((n === 10 || n === 5) && /^(?:keep-alive|close)$/i.test(value)) return null;
  let out: Set<string> | null = null;
  for (const part of value.split(',')) {
    const name = part.trim().toLowerCase();
    if (name === '' || name === 'close' || name === 'keep-alive') continue;
    (out ??= new Set()).add(name);
  }
  return out;
}

/**
 * The `close` connection option anywhere in a Connection value (RFC 9112
 * 9.6: the connection closes after the response), case-insensitively.
 */
export function hasCloseOption(value: string): boolean {
  const n = value.length;
  if (n < 5) return false;
  if (n === 10 && value === 'keep-alive') return false;
  for (let i = 0, start = 0; i <= n; i++) {
    if (i === n || value.charCodeAt(i) === 44) {
      let a = start;
      let b = i;
      while (a < b && (value.charCodeAt(a) === 32 || value.charCodeAt(a) === 9)) a++;
      while (b > a && (value.charCodeAt(b - 1) === 32 || value.charCodeAt(b - 1) === 9)) b--;
      if (b - a === 5 && value.slice(a, b).toLowerCase() === 'close') return true;
      start = i + 1;
    }
  }
  return false;
}

/** A client-supplied request id we are willing to forward (and echo into JSON). */
export function isSafeRequestId(v: string): boolean {
  const n = v.length;
  if (n === 0 || n > 128) return false;
  for (let i = 0; i < n; i++) {
    const c = v.charCodeAt(i);
    // [A-Za-z0-9._:-]
    if (!((c >= 0x30 && c <= 0x3a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x2d || c === 0x2e || c === 0x5f)) {
      return false;
    }
  }
  return true;
}
