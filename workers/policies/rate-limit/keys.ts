/**
 * Key extraction: the text a request's bucket is named by, per policy
 * (`by`). The interface identity will plug into (`consumer`) is KeyFn.
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
 * node:net's BlockList (native; only runs when trustedProxies is set).
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
/** Set by every key function: the kind of the key it returned. */
export const keyKind = { kind: 0 };

/** The trusted proxies of a config, or null when there are none. */
export function trustedProxyList(cidrs: readonly string[]): net.BlockList | null {
  if (cidrs.length === 0) return null;
  const list = new net.BlockList();
  for (const c of cidrs) {
    const parsed = parseCidr(c);
    if (parsed === null) continue; // validation refused it already
    const [addr, prefix, family] = parsed;
    list.addSubnet(addr, prefix, family);
  }
  return list;
}

function family(addr: string): 'ipv4' | 'ipv6' {
  return addr.indexOf(':') === -1 ? 'ipv4' : 'ipv6';
}

function isTrusted(list: net.BlockList, addr: string): boolean {
  if (net.isIP(addr) === 0) return false;
  return list.check(addr, family(addr));
}

/** The client address, looking behind trusted proxies in X-Forwarded-For. */
export function clientAddress(ctx: RequestContext, trusted: net.BlockList | null): string {
  const peer = ctx.clientIp;
  if (trusted === null || ctx.xff === null || !isTrusted(trusted, peer)) return peer;
  const hops = ctx.xff.split(',');
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = stripPort(hops[i]!.trim());
    if (hop === '') continue;
    if (!isTrusted(trusted, hop)) return net.isIP(hop) === 0 ? peer : hop;
  }
  // Every hop is a trusted proxy: the left-most one is as close to the client as we know.
  const first = stripPort(hops[0]!.trim());
  return net.isIP(first) === 0 ? peer : first;
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
  const ip: KeyFn = trusted === null
    ? (ctx) => {
      keyKind.kind = K_IP;
      return ctx.clientIp;
    }
    : (ctx) => {
      keyKind.kind = K_IP;
      return clientAddress(ctx, trusted);
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
