/**
 * Key extraction: the text a request's bucket is named by, per policy
 * (`by`); `consumer` is the id the route's auth policy authenticated.
 *
 * A key function returns the key's text and sets `keyKind.kind`, which
 * seeds the hash, so that keys of different kinds never meet: a tenant
 * header whose value is "10.0.0.7" is not the client 10.0.0.7 of the ip
 * fallback. (No prefix concatenated: no string built per request.)
 *
 * Client address behind proxies (`server.trustedProxies`): when the
 * connection comes from a trusted proxy, the client is the right-most
 * X-Forwarded-For address that is not a trusted proxy (each trusted proxy
 * appends the address it received from; anything left of the first
 * untrusted hop may be forged). The addresses are checked with
 * node:net's BlockList (only runs when trustedProxies is set), or in JS
 * when every rule is an IPv4 subnet and the address a dotted quad (v4Rules).
 * test/unit/policies/rate-limit/client-address.test.ts holds all of it to
 * a BlockList + split reference on generated inputs.
 */
import net from 'node:net';
import { parseCidr } from '../../../common/config/rate-limit.js';
import type { RateLimitPolicy } from '../../../common/config/types.js';
import type { RequestContext } from '../../pipeline/context.js';

export type KeyFn = (ctx: RequestContext) => string;

export const K_IP = 1;
export const K_GLOBAL = 2;
export const K_ROUTE = 3;
export const K_HEADER = 4;
export const K_QUERY = 5;
export const K_CONSUMER = 6;
/** Set by every key function: the kind of the key it returned. */
export const keyKind = { kind: 0 };

/**
 * The rules of a list whose rules are all IPv4 subnets, as (network & mask,
 * mask) pairs, so that a dotted-quad address is checked in JS: BlockList's
 * check builds a native SocketAddress per call (about 1 µs, plus garbage),
 * twice per request behind a proxy. Lists with an IPv6 rule, and addresses
 * that are not dotted quads (IPv6, IPv4-mapped IPv6), keep BlockList.
 */
const v4Rules = new WeakMap<net.BlockList, Int32Array>();

/** The trusted proxies of a config, or null when there are none. */
export function trustedProxyList(cidrs: readonly string[]): net.BlockList | null {
  if (cidrs.length === 0) return null;
  const list = new net.BlockList();
  const pairs: number[] = [];
  let allV4 = true;
  for (const c of cidrs) {
    const parsed = parseCidr(c);
    if (parsed === null) continue; // validation refused it already
    const [addr, prefix, family] = parsed;
    list.addSubnet(addr, prefix, family);
    const a = family === 'ipv4' ? parseIPv4(addr) : -1;
    if (a === -1) allV4 = false;
    else {
      const mask = prefix === 0 ? 0 : -1 << (32 - prefix);
      pairs.push(a & mask, mask);
    }
  }
  if (allV4) v4Rules.set(list, Int32Array.from(pairs));
  return list;
}

/**
 * A dotted-quad IPv4 address as a number (0..2^32-1), or -1 when `s` is not
 * one. Accepts exactly what net.isIPv4 accepts: four decimal parts 0-255,
 * no leading zeros.
 */
export function parseIPv4(s: string): number {
  const n = s.length;
  if (n < 7 || n > 15) return -1;
  let value = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 46 /* . */) {
      if (digits === 0 || dots === 3) return -1;
      value = value * 256 + part;
      part = 0;
      digits = 0;
      dots++;
      continue;
    }
    if (c < 48 || c > 57 || (digits === 1 && part === 0)) return -1;
    part = part * 10 + (c - 48);
    if (part > 255) return -1;
    digits++;
  }
  return dots === 3 && digits !== 0 ? value * 256 + part : -1;
}

function family(addr: string): 'ipv4' | 'ipv6' {
  return addr.indexOf(':') === -1 ? 'ipv4' : 'ipv6';
}

/** Whether the IPv4 address `a` (parseIPv4) is in one of the pairs of v4Rules. */
function inV4Rules(rules: Int32Array, a: number): boolean {
  for (let i = 0; i < rules.length; i += 2) if ((a & rules[i + 1]!) === rules[i]) return true;
  return false;
}

function isTrusted(list: net.BlockList, rules: Int32Array | null, addr: string): boolean {
  if (rules !== null) {
    const a = parseIPv4(addr);
    if (a !== -1) return inV4Rules(rules, a);
  }
  if (net.isIP(addr) === 0) return false;
  return list.check(addr, family(addr));
}

/** The client address, looking behind trusted proxies in X-Forwarded-For. */
export function clientAddress(ctx: RequestContext, trusted: net.BlockList | null, rules: Int32Array | null = trusted === null ? null : v4Rules.get(trusted) ?? null): string {
  const peer = ctx.clientIp;
  if (trusted === null || ctx.xff === null || !isTrusted(trusted, rules, peer)) return peer;
  return behindProxies(ctx.xff, peer, trusted, rules);
}

/**
 * The client in X-Forwarded-For `xff`, sent by the trusted proxy `peer`:
 * the right-most hop that is not a trusted proxy. The hops are read from
 * the right without splitting the list (no array per request); the same
 * hops as `xff.split(',')`, empty ones skipped.
 */
function behindProxies(xff: string, peer: string, trusted: net.BlockList, rules: Int32Array | null): string {
  for (let end = xff.length; ;) {
    const comma = end === 0 ? -1 : xff.lastIndexOf(',', end - 1);
    const hop = stripPort((comma === -1 && end === xff.length ? xff : xff.slice(comma + 1, end)).trim());
    if (hop !== '') {
      const a = rules === null ? -1 : parseIPv4(hop);
      if (a !== -1) {
        if (!inV4Rules(rules!, a)) return hop; // a valid address: net.isIP(hop) is 4
      } else if (!isTrusted(trusted, rules, hop)) return net.isIP(hop) === 0 ? peer : canonicalIPv6(hop);
    }
    if (comma === -1) break;
    end = comma;
  }
  // Every hop is a trusted proxy: the left-most one is as close to the client as we know.
  const c0 = xff.indexOf(',');
  const first = stripPort((c0 === -1 ? xff : xff.slice(0, c0)).trim());
  return net.isIP(first) === 0 ? peer : canonicalIPv6(first);
}

/**
 * One spelling per address, so that a client keeps one bucket however a
 * proxy writes it: IPv6 in RFC 5952 form (lowercase, zeros compressed, as
 * the gateway formats peer addresses), an IPv4-mapped IPv6 address
 * (`::ffff:10.0.0.7`) as its IPv4 address. Dotted quads are returned as
 * they are (the IPv4 path never gets here with anything else).
 */
export function canonicalIPv6(addr: string): string {
  if (addr.indexOf(':') === -1 || addr.indexOf('%') !== -1) return addr; // zone ids: link-local, left alone
  let host: string;
  try {
    host = new URL('http://[' + addr + ']/').hostname; // WHATWG serialises IPv6 in RFC 5952 form
  } catch {
    return addr;
  }
  const a = host.slice(1, -1);
  // ::ffff:a00:7 is ::ffff:10.0.0.7 (RFC 4291 2.5.5.2).
  const m = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(a);
  if (m === null) return a;
  const hi = parseInt(m[1]!, 16);
  const lo = parseInt(m[2]!, 16);
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

/** `1.2.3.4:5678` -> `1.2.3.4`; `[::1]:80` -> `::1`; anything else as is. */
function stripPort(s: string): string {
  if (s.charCodeAt(0) === 91 /* [ */) {
    const end = s.indexOf(']');
    return end === -1 ? s : s.slice(1, end);
  }
  const colon = s.indexOf(':');
  return colon !== -1 && colon === s.lastIndexOf(':') ? s.slice(0, colon) : s;
}

/** The key function of a policy. */
export function keyFunction(p: RateLimitPolicy, trusted: net.BlockList | null): KeyFn {
  const rules = trusted === null ? null : v4Rules.get(trusted) ?? null;
  let lastPeer = '';
  let lastPeerTrusted = false;
  const ip: KeyFn = trusted === null
    ? (ctx) => {
      keyKind.kind = K_IP;
      return ctx.clientIp;
    }
    : (ctx) => {
      keyKind.kind = K_IP;
      // clientAddress, with the verdict on the peer kept for the next
      // request: behind a load balancer every request comes from one of a
      // few peers (and formatAddress hands out the same string for each).
      const peer = ctx.clientIp;
      if (ctx.xff === null) return peer;
      if (peer !== lastPeer) {
        lastPeerTrusted = isTrusted(trusted, rules, peer);
        lastPeer = peer;
      }
      return lastPeerTrusted ? behindProxies(ctx.xff, peer, trusted, rules) : peer;
    };
  switch (p.by) {
    case 'ip':
      return ip;
    case 'global':
      return () => {
        keyKind.kind = K_GLOBAL;
        return '';
      };
    case 'route':
      return (ctx) => {
        keyKind.kind = K_ROUTE;
        return ctx.routeId;
      };
    case 'header': {
      const name = p.keyName!;
      return (ctx) => {
        const v = ctx.header(name);
        if (v === null || v === '') return ip(ctx);
        keyKind.kind = K_HEADER;
        return v;
      };
    }
    case 'consumer':
      // Set by the route's auth policy, which runs before rate limits; none (a public route): by ip.
      return (ctx) => {
        const c = ctx.consumerId;
        if (c === '') return ip(ctx);
        keyKind.kind = K_CONSUMER;
        return c;
      };
    case 'query': {
      const name = p.keyName!;
      return (ctx) => {
        const v = ctx.queryParam(name);
        if (v === null || v === '') return ip(ctx);
        keyKind.kind = K_QUERY;
        return v;
      };
    }
  }
}
