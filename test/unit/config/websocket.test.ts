/** routes[].websocket: defaults, `false`, and errors that name the path (common/config/websocket.ts). */
import { describe, expect, it } from 'vitest';
import { validateConfig } from '../../../common/config/load.js';
import { WEBSOCKET_DEFAULTS } from '../../../common/config/websocket.js';
import { lines, minimal } from './helpers.js';

function withRoute(route: Record<string, unknown>): Record<string, unknown> {
  return { ...minimal(), routes: [{ id: 'r', path: '/x', upstream: 'users', ...route }] };
}

function resolved(route: Record<string, unknown>): unknown {
  const r = validateConfig(withRoute(route), { source: '<test>' } as any);
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  return r.config.routes[0]!.websocket;
}

describe('routes[].websocket', () => {
  it('every route proxies upgrades by default; true and {} are the defaults; false turns it off', () => {
    expect(resolved({})).toEqual(WEBSOCKET_DEFAULTS);
    expect(resolved({ websocket: true })).toEqual(WEBSOCKET_DEFAULTS);
    expect(resolved({ websocket: {} })).toEqual(WEBSOCKET_DEFAULTS);
    expect(resolved({ websocket: false })).toBeNull();
    expect(resolved({ websocket: { maxMessageBytes: 4096, messagesPerSecond: 50, idleTimeoutMs: '2m', pingIntervalMs: '10s', compression: true } })).toEqual({
      ...WEBSOCKET_DEFAULTS, maxMessageBytes: 4096, messagesPerSecond: 50, idleTimeoutMs: 120_000, pingIntervalMs: 10_000, compression: true,
    });
  });

  it('takes maxConnectionsPerKey, drainMs (a duration) and messagesPerSecondAction; defaults: 0, 30 s, close', () => {
    expect(WEBSOCKET_DEFAULTS).toMatchObject({ maxConnectionsPerKey: 0, drainMs: 30_000, messagesPerSecondAction: 'close' });
    expect(resolved({ websocket: { maxConnectionsPerKey: 3, drainMs: '5s', messagesPerSecond: 10, messagesPerSecondAction: 'drop' } })).toEqual({
      ...WEBSOCKET_DEFAULTS, maxConnectionsPerKey: 3, drainMs: 5_000, messagesPerSecond: 10, messagesPerSecondAction: 'drop',
    });
    expect(resolved({ websocket: { drainMs: 0 } })).toEqual({ ...WEBSOCKET_DEFAULTS, drainMs: 0 });
  });

  it('names the path and the problem of a bad drainMs, maxConnectionsPerKey or messagesPerSecondAction', () => {
    expect(lines(withRoute({ websocket: { drainMs: -1 } }))[0]).toMatch(/^routes\[0\]\.websocket\.drainMs: /);
    expect(lines(withRoute({ websocket: { maxConnectionsPerKey: 1.5 } }))).toEqual(['routes[0].websocket.maxConnectionsPerKey: must be an integer (got 1.5)']);
    expect(lines(withRoute({ websocket: { messagesPerSecondAction: 'queue' } }))).toEqual(['routes[0].websocket.messagesPerSecondAction: must be "close" or "drop"']);
  });

  it('perKeyLeaseMs: a duration from 1 s to 1 h, default 15 s; outside it the path and the problem', () => {
    expect(WEBSOCKET_DEFAULTS).toMatchObject({ perKeyLeaseMs: 15_000 });
    expect(resolved({ websocket: { perKeyLeaseMs: '20s' } })).toEqual({ ...WEBSOCKET_DEFAULTS, perKeyLeaseMs: 20_000 });
    for (const bad of [999, 3_600_001, 'later', -5]) {
      expect(lines(withRoute({ websocket: { perKeyLeaseMs: bad } }))[0], String(bad)).toMatch(/^routes\[0\]\.websocket\.perKeyLeaseMs: /);
    }
    expect(resolved({ websocket: { perKeyLeaseMs: 1000 } })).toEqual({ ...WEBSOCKET_DEFAULTS, perKeyLeaseMs: 1000 });
    expect(resolved({ websocket: { perKeyLeaseMs: '1h' } })).toEqual({ ...WEBSOCKET_DEFAULTS, perKeyLeaseMs: 3_600_000 });
  });

  it('names the path and the problem of a bad value', () => {
    expect(lines(withRoute({ websocket: { maxMessageBytes: 0 } }))).toEqual(['routes[0].websocket.maxMessageBytes: must be an integer from 1 to 67108864 (got 0)']);
    expect(lines(withRoute({ websocket: { messagesPerSecond: -1 } }))).toEqual(['routes[0].websocket.messagesPerSecond: must be an integer from 0 to 1000000 (got -1)']);
    expect(lines(withRoute({ websocket: { idleTimeoutMs: 'soon' } }))[0]).toMatch(/^routes\[0\]\.websocket\.idleTimeoutMs: /);
    expect(lines(withRoute({ websocket: { compression: 'yes' } }))).toEqual(['routes[0].websocket.compression: must be true or false (got "yes")']);
    expect(lines(withRoute({ websocket: { maxMessageSize: 1 } }))).toEqual([
      'routes[0].websocket: unknown property "maxMessageSize" (did you mean "maxMessageBytes"?)',
    ]);
    expect(lines(withRoute({ websocket: 'on' }))).toEqual([
      'routes[0].websocket: must be false, true or an object such as { maxMessageBytes: 1048576, messagesPerSecond: 50 }',
    ]);
  });
});
