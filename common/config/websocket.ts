/**
 * Configuration of WebSocket proxying (issue 14): the schema fragment
 * (merged into schema.ts under `routes[].websocket`) and its resolution.
 *
 *   routes:
 *     - id: chat
 *       path: /chat/*
 *       upstream: chat
 *       websocket: { maxMessageBytes: 1048576, messagesPerSecond: 50, idleTimeoutMs: 120000,
 *                    pingIntervalMs: 30000, maxConnectionsPerKey: 100, compression: false,
 *                    messagesPerSecondAction: close, drainMs: 30000, perKeyLeaseMs: 15000 }
 *
 * Every route proxies `Upgrade: websocket` requests unless it says
 * `websocket: false`; `websocket: true` or `{}` is every default
 * (WEBSOCKET_DEFAULTS, the one table of them). Any other Upgrade (h2c...)
 * is never honoured: it is stripped as hop-by-hop. What the words mean at
 * run time: workers/transport/websocket/.
 */
import type { RouteWebSocket } from './types.js';

export const WEBSOCKET_DEFAULTS = Object.freeze({
  maxMessageBytes: 1_048_576, // 1 MiB: a larger message closes the connection with 1009
  messagesPerSecond: 0, // per connection, client to upstream; 0 = no limit; past it: messagesPerSecondAction
  messagesPerSecondAction: 'close' as 'close' | 'drop', // close: 1008 (policy violation); drop: the message is not relayed
  idleTimeoutMs: 120_000, // 2 min without a message either way: close 1001 (pings do not count)
  pingIntervalMs: 30_000, // the gateway pings a silent client this often; no answer within another interval: closed
  maxConnectionsPerKey: 0, // open per consumer (or client address) on this route, across the workers; 0 = no limit; past it: 429
  compression: false, // permessage-deflate with the client
  drainMs: 30_000, // a reload that removes or changes the route: its open connections close (1001) this long after; 0 = at once
  perKeyLeaseMs: 15_000, // with `redis`: an instance's maxConnectionsPerKey counts in Redis expire this long after it stops renewing them (crash)
});

/** perKeyLeaseMs bounds (ms): renewed every third of it, so at least 1 s; at most an hour. */
export const MIN_PER_KEY_LEASE_MS = 1_000;
export const MAX_PER_KEY_LEASE_MS = 3_600_000;

/** Largest maxMessageBytes accepted (64 MiB): a whole message is held in memory once on its way through. */
export const MAX_WEBSOCKET_MESSAGE_BYTES = 67_108_864;
const MAX_MS = 86_400_000;

const D = WEBSOCKET_DEFAULTS;

export const websocketSchema = {
  description: 'WebSocket upgrades on this route: false = not proxied (the Upgrade header is stripped and the request is proxied as plain HTTP); true or an object = proxied, with these limits. Default: proxied with every default.',
  errorMessage: 'must be false, true or an object such as { maxMessageBytes: 1048576, messagesPerSecond: 50 }',
  anyOf: [
    { type: 'boolean' },
    {
      type: 'object', additionalProperties: false,
      properties: {
        maxMessageBytes: {
          type: 'integer', minimum: 1, maximum: MAX_WEBSOCKET_MESSAGE_BYTES, default: D.maxMessageBytes,
          description: `Largest message either way, in bytes after reassembly of fragments (1..${MAX_WEBSOCKET_MESSAGE_BYTES}); a larger one closes the connection with 1009 (message too big). Default ${D.maxMessageBytes}.`,
        },
        messagesPerSecond: {
          type: 'integer', minimum: 0, maximum: 1_000_000, default: D.messagesPerSecond,
          description: `Messages a client may send per second on one connection (a one-second window); past it, messagesPerSecondAction. 0 = no limit. Default ${D.messagesPerSecond}.`,
        },
        messagesPerSecondAction: {
          type: 'string', enum: ['close', 'drop'], default: D.messagesPerSecondAction,
          errorMessage: 'must be "close" or "drop"',
          description: `What a message over messagesPerSecond does: close = the connection closes with 1008 (policy violation), the upstream gets 1001; drop = the message is not relayed (the connection stays). Each is a limit hit (turnpike_websocket_limit_hits_total{limit="messages_per_second"}). Default ${D.messagesPerSecondAction}.`,
        },
        idleTimeoutMs: {
          type: 'integer', minimum: 0, maximum: MAX_MS, default: D.idleTimeoutMs,
          description: `A connection with no message either way for this long is closed with 1001 (going away) on both sides; pings and pongs do not count. In milliseconds (0..${MAX_MS}; 0 = never). Default ${D.idleTimeoutMs}.`,
        },
        pingIntervalMs: {
          type: 'integer', minimum: 0, maximum: MAX_MS, default: D.pingIntervalMs,
          description: `The gateway pings a client it heard nothing from for this long, and closes it (1001 to the upstream) when nothing comes back within another interval. In milliseconds (0..${MAX_MS}; 0 = no pings). Default ${D.pingIntervalMs}.`,
        },
        maxConnectionsPerKey: {
          type: 'integer', minimum: 0, maximum: 1_000_000, default: D.maxConnectionsPerKey,
          description: `Open WebSocket connections per consumer (the identity policy's), or per client address without one, on this route, across every worker thread of the instance and, with a \`redis\` section, across every instance sharing that Redis (perKeyLeaseMs); one more upgrade is refused with 429 too_many_websocket_connections before the upstream is contacted. 0 = no limit. Default ${D.maxConnectionsPerKey}.`,
        },
        perKeyLeaseMs: {
          type: 'integer', minimum: MIN_PER_KEY_LEASE_MS, maximum: MAX_PER_KEY_LEASE_MS, default: D.perKeyLeaseMs,
          description: `With a \`redis\` section, maxConnectionsPerKey holds across every instance sharing that Redis: each instance keeps its count of a key's connections there under a lease it renews every third of this; an instance that stops renewing (crashed, or cut off from Redis) stops counting on the others this long after. In milliseconds (${MIN_PER_KEY_LEASE_MS}..${MAX_PER_KEY_LEASE_MS}). Default ${D.perKeyLeaseMs}.`,
        },
        drainMs: {
          type: 'integer', minimum: 0, maximum: MAX_MS, default: D.drainMs,
          description: `A reload that removes this route or changes its definition leaves its open connections this long, then closes them with 1001 (going away) both ways; connections of routes a reload does not change are untouched. In milliseconds (0..${MAX_MS}; 0 = close at once). Default ${D.drainMs}.`,
        },
        compression: {
          type: 'boolean', default: D.compression,
          description: `Offer permessage-deflate (RFC 7692) to the client. The upstream side is never compressed. Default ${D.compression}.`,
        },
      },
    },
  ],
} as const;

/** routes[].websocket resolved: null = not proxied (`websocket: false`). */
export function resolveRouteWebSocket(raw: unknown): RouteWebSocket | null {
  if (raw === false) return null;
  const o = typeof raw === 'object' && raw !== null ? (raw as Record<string, unknown>) : {};
  const pick = <T>(k: keyof typeof D): T => (o[k] === undefined ? D[k] : o[k]) as T;
  return {
    maxMessageBytes: pick<number>('maxMessageBytes'),
    messagesPerSecond: pick<number>('messagesPerSecond'),
    idleTimeoutMs: pick<number>('idleTimeoutMs'),
    pingIntervalMs: pick<number>('pingIntervalMs'),
    messagesPerSecondAction: pick<'close' | 'drop'>('messagesPerSecondAction'),
    maxConnectionsPerKey: pick<number>('maxConnectionsPerKey'),
    compression: pick<boolean>('compression'),
    drainMs: pick<number>('drainMs'),
    perKeyLeaseMs: pick<number>('perKeyLeaseMs'),
  };
}
