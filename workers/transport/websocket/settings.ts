/**
 * WebSocket pieces every server backend uses (no uWS, no `ws`): whether a
 * request asks for a WebSocket, a route's `websocket` settings, and the
 * key maxConnectionsPerKey counts by.
 */
import type net from 'node:net';
import type { RedisConfig, RouteWebSocket } from '../../../common/config/types.js';
import type { Dataplane, RouteContext } from '../../dataplane.js';
import type { RequestContext } from '../../pipeline/context.js';
import { clientAddress, trustedProxyList } from '../../policies/rate-limit/keys.js';

/** `websocket` among the Upgrade header's protocols (RFC 9110 7.8), case-insensitively. */
export function isWebSocketUpgrade(v: string): boolean {
  if (v.length === 9) return v.toLowerCase() === 'websocket';
  for (const p of v.split(',')) if (p.trim().toLowerCase() === 'websocket') return true;
  return false;
}

/**
 * The route settings of an upgrade: `websocket` of the route that matched
 * (a split route's branches share it; null: `websocket: false`), looked up
 * by RouteContext. Built once per config version, on its first upgrade.
 */
const settingsCache = new WeakMap<Dataplane, Map<RouteContext, RouteWebSocket | null>>();
export function wsSettings(dp: Dataplane, route: RouteContext): RouteWebSocket | null {
  let m = settingsCache.get(dp);
  if (m === undefined) {
    m = new Map();
    const cfg = dp.config.routes;
    for (let i = 0; i < dp.routes.length; i++) {
      const ws = cfg[i]!.websocket ?? null;
      m.set(dp.routes[i]!, ws);
      if (ws !== null) redisOf.set(ws, dp.config.redis);
    }
    settingsCache.set(dp, m);
  }
  return m.get(route) ?? null;
}

/** The `redis` section of the config a route's settings came from (filled by wsSettings). */
const redisOf = new WeakMap<RouteWebSocket, RedisConfig | null>();

/**
 * The `redis` section of the config whose route has these settings (as
 * wsSettings returned them), or null: none (maxConnectionsPerKey then holds
 * per instance; with one, across instances: cluster-count.ts).
 */
export function wsRedis(s: RouteWebSocket): RedisConfig | null {
  return redisOf.get(s) ?? null;
}

/**
 * uWS's cap on a message it reassembles (maxPayloadLength, fixed when the
 * worker starts): twice the largest maxMessageBytes of the config. A client
 * message between maxMessageBytes and the cap is refused with 1009; past
 * the cap uWS drops the connection without a Close frame (the client sees
 * 1006). A reload that raises maxMessageBytes above half the cap keeps the
 * old cap until the worker restarts.
 */
export function uwsPayloadCap(dp: Dataplane): number {
  let max = 0;
  for (const r of dp.config.routes) if (r.websocket !== null && r.websocket.maxMessageBytes > max) max = r.websocket.maxMessageBytes;
  if (max === 0) max = 1_048_576;
  return 2 * max;
}

/**
 * The client address maxConnectionsPerKey counts a connection under (when
 * no consumer was found): the socket's address, or behind
 * server.trustedProxies the right-most untrusted X-Forwarded-For address,
 * exactly as rate limits `by: ip` see it (policies/rate-limit/keys.ts).
 */
const trustedCache = new WeakMap<Dataplane, net.BlockList | null>();
export function wsKeyAddress(dp: Dataplane, peer: string, xff: string | null): string {
  let trusted = trustedCache.get(dp);
  if (trusted === undefined) {
    trusted = trustedProxyList(dp.config.server.trustedProxies);
    trustedCache.set(dp, trusted);
  }
  if (trusted === null || xff === null) return peer;
  return clientAddress({ clientIp: peer, xff } as RequestContext, trusted);
}
