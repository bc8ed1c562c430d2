/**
 * The gatekeeper's decision on a known key (common/identity/decide.ts), as
 * tables: the order of the checks (state, restrictions, scopes, grants),
 * every restriction kind on both sides of its edge, and the header lines a
 * consumer's name can produce (never a CR or LF). Plus the query stripping
 * of an auth route (workers/policies/auth stripQueryParams).
 */
import { describe, expect, it } from 'vitest';
import {
  AUTH_CONSUMER_SUSPENDED, AUTH_INSUFFICIENT_SCOPE, AUTH_KEY_EXPIRED, AUTH_KEY_RESTRICTED, AUTH_KEY_REVOKED, AUTH_NO_GRANT, AUTH_OK,
  compileKey, decide, headerSafe, restrictionFailed,
} from '../../../common/identity/decide.js';
import type { KeyRecordAnswer } from '../../../common/identity/wire.js';
import { DEFAULT_GRACE_MS } from '../../../admin/identity/store/types.js';
import type { RouteAuth } from '../../../common/config/types.js';
import { stripQueryParams } from '../../../workers/policies/auth/index.js';

const HEADERS = { consumerId: 'x-consumer-id', consumerName: 'x-consumer-name' };
const NOW = Date.UTC(2026, 10, 30, 12, 0, 0); // a Monday, 12:00 UTC

function answer(over: Partial<KeyRecordAnswer> = {}): KeyRecordAnswer {
  return {
    ok: true, hash: 'h', keyId: 'key_1', keyName: 'k', keyPrefix: 'tp_live_abcd', keyStatus: 'active', scopes: ['orders:read'],
    restrictions: { cidrs: [], timeWindows: [], origins: [] }, expiresAt: null, graceUntil: null, rotatedAt: null,
    consumerId: 'con_1', consumerName: 'Acme', consumerStatus: 'active', tenant: null, plan: null, groups: [],
    grants: [['orders', ['GET', 'POST']], ['admin', ['*']]],
    ...over,
  };
}

function auth(over: Partial<RouteAuth> = {}): RouteAuth {
  return { any: ['key'], scopes: [], grants: 'none', forwardCredentials: false, ...over };
}

const run = (a: KeyRecordAnswer, r: RouteAuth, o: { route?: string; method?: string; ip?: string; origin?: string | null; referer?: string | null; now?: number } = {}) =>
  decide(compileKey(a, HEADERS), r, o.route ?? 'orders', o.method ?? 'GET', o.ip ?? '10.0.0.7', o.origin ?? null, o.referer ?? null, o.now ?? NOW);

describe('decide: order and outcomes', () => {
  const cases: Array<[string, KeyRecordAnswer, RouteAuth, Parameters<typeof run>[2], number]> = [
    ['an active key, public scopes', answer(), auth(), {}, AUTH_OK],
    ['revoked key', answer({ keyStatus: 'revoked' }), auth(), {}, AUTH_KEY_REVOKED],
    ['revoked consumer (beats suspended)', answer({ consumerStatus: 'revoked' }), auth(), {}, AUTH_KEY_REVOKED],
    ['suspended consumer', answer({ consumerStatus: 'suspended' }), auth(), {}, AUTH_CONSUMER_SUSPENDED],
    ['suspended beats expired', answer({ consumerStatus: 'suspended', expiresAt: NOW - 1 }), auth(), {}, AUTH_CONSUMER_SUSPENDED],
    ['expired at the very ms', answer({ expiresAt: NOW }), auth(), {}, AUTH_KEY_EXPIRED],
    ['expires a ms later', answer({ expiresAt: NOW + 1 }), auth(), {}, AUTH_OK],
    ['rotated, grace over', answer({ graceUntil: NOW }), auth(), {}, AUTH_KEY_EXPIRED],
    ['rotated, in grace', answer({ graceUntil: NOW + 1000 }), auth(), {}, AUTH_OK],
    ['expired beats restriction', answer({ expiresAt: NOW - 1, restrictions: { cidrs: ['192.168.0.0/16'], timeWindows: [], origins: [] } }), auth(), {}, AUTH_KEY_EXPIRED],
    ['restriction beats scope', answer({ restrictions: { cidrs: ['192.168.0.0/16'], timeWindows: [], origins: [] } }), auth({ scopes: ['x'] }), {}, AUTH_KEY_RESTRICTED],
    ['scope held', answer(), auth({ scopes: ['orders:read'] }), {}, AUTH_OK],
    ['one scope of two missing', answer(), auth({ scopes: ['orders:read', 'orders:write'] }), {}, AUTH_INSUFFICIENT_SCOPE],
    ['scope beats grant', answer({ grants: [] }), auth({ scopes: ['nope'], grants: 'required' }), {}, AUTH_INSUFFICIENT_SCOPE],
    ['grant for the method', answer(), auth({ grants: 'required' }), { method: 'POST' }, AUTH_OK],
    ['no grant for the method', answer(), auth({ grants: 'required' }), { method: 'DELETE' }, AUTH_NO_GRANT],
    ['a GET grant covers HEAD', answer(), auth({ grants: 'required' }), { method: 'HEAD' }, AUTH_OK],
    ['a wildcard grant', answer(), auth({ grants: 'required' }), { route: 'admin', method: 'DELETE' }, AUTH_OK],
    ['no grant for the route', answer(), auth({ grants: 'required' }), { route: 'billing' }, AUTH_NO_GRANT],
    ['grants not required', answer({ grants: [] }), auth(), { route: 'billing' }, AUTH_OK],
  ];
  for (const [name, a, r, o, want] of cases) {
    it(name, () => expect(run(a, r, o)).toBe(want));
  }
});

describe('decide: restrictions', () => {
  const cidr = (cidrs: string[]) => answer({ restrictions: { cidrs, timeWindows: [], origins: [] } });
  it.each([
    [['10.0.0.0/8'], '10.255.1.2', AUTH_OK],
    [['10.0.0.0/8'], '11.0.0.1', AUTH_KEY_RESTRICTED],
    [['10.0.0.7'], '10.0.0.7', AUTH_OK],
    [['10.0.0.7'], '10.0.0.8', AUTH_KEY_RESTRICTED],
    [['fd00::/8'], 'fd12::1', AUTH_OK],
    [['fd00::/8'], '::1', AUTH_KEY_RESTRICTED],
    [['192.168.0.0/16', '::1/128'], '::1', AUTH_OK],
  ] as const)('cidrs %j, client %s', (cidrs, ip, want) => {
    expect(run(cidr([...cidrs]), auth(), { ip })).toBe(want);
    if (want !== AUTH_OK) expect(restrictionFailed.what).toBe('address');
  });

  const win = (from: string, to: string, days: string[], timeZone = 'UTC') =>
    answer({ restrictions: { cidrs: [], origins: [], timeWindows: [{ days: days as never, from, to, timeZone }] } });
  it.each([
    ['09:00', '17:00', ['mon'], 'UTC', NOW, AUTH_OK],
    ['09:00', '12:00', ['mon'], 'UTC', NOW, AUTH_KEY_RESTRICTED], // `to` is exclusive
    ['12:00', '12:01', ['mon'], 'UTC', NOW, AUTH_OK],
    ['09:00', '17:00', ['tue'], 'UTC', NOW, AUTH_KEY_RESTRICTED],
    // 12:00 UTC is 07:00 in New York (EST): outside 09-17 there.
    ['09:00', '17:00', ['mon'], 'America/New_York', NOW, AUTH_KEY_RESTRICTED],
    ['06:00', '08:00', ['mon'], 'America/New_York', NOW, AUTH_OK],
    // Across midnight: Monday 22:00 - Tuesday 02:00.
    ['22:00', '02:00', ['mon'], 'UTC', Date.UTC(2026, 10, 30, 23, 0), AUTH_OK],
    ['22:00', '02:00', ['mon'], 'UTC', Date.UTC(2026, 11, 1, 1, 59), AUTH_OK],
    ['22:00', '02:00', ['mon'], 'UTC', Date.UTC(2026, 11, 1, 2, 0), AUTH_KEY_RESTRICTED],
    ['22:00', '02:00', ['tue'], 'UTC', Date.UTC(2026, 11, 1, 1, 0), AUTH_KEY_RESTRICTED],
  ] as const)('window %s-%s %j in %s', (from, to, days, tz, now, want) => {
    expect(run(win(from, to, [...days], tz), auth(), { now })).toBe(want);
    if (want !== AUTH_OK) expect(restrictionFailed.what).toBe('time');
  });

  const orig = (origins: string[]) => answer({ restrictions: { cidrs: [], timeWindows: [], origins } });
  it.each([
    [['https://app.example.com'], 'https://app.example.com', null, AUTH_OK],
    [['https://app.example.com'], 'HTTPS://APP.EXAMPLE.COM', null, AUTH_OK],
    [['https://app.example.com'], 'https://evil.com', null, AUTH_KEY_RESTRICTED],
    [['https://*.example.com'], 'https://a.b.example.com', null, AUTH_OK],
    [['https://*.example.com'], 'https://example.com.evil.com', null, AUTH_KEY_RESTRICTED],
    [['https://*.example.com'], 'https://evil.com/.example.com', null, AUTH_KEY_RESTRICTED],
    [['https://app.example.com'], null, 'https://app.example.com/page?q=1', AUTH_OK],
    [['https://app.example.com'], null, 'https://app.example.com.evil.com/x', AUTH_KEY_RESTRICTED],
    // Two Referer lines joined (Bun), or garbage with a space: no URL, no origin.
    [['https://app.example.com'], null, 'https://app.example.com/x, https://evil.example/y', AUTH_KEY_RESTRICTED],
    [['https://app.example.com'], null, null, AUTH_KEY_RESTRICTED],
    [['https://app.example.com'], 'null', null, AUTH_KEY_RESTRICTED],
    [['https://*'], 'https://evil.com, null', null, AUTH_KEY_RESTRICTED],
    [['https://*.example.com'], 'https://a.example.com https://b.example.com', null, AUTH_KEY_RESTRICTED],
  ] as const)('origins %j, Origin %s, Referer %s', (origins, origin, referer, want) => {
    expect(run(orig([...origins]), auth(), { origin, referer })).toBe(want);
    if (want !== AUTH_OK) expect(restrictionFailed.what).toBe('origin');
  });
});

describe('upstream header lines', () => {
  it.each([
    ['Acme', 'Acme'],
    ['Ac\r\nX-Injected: 1', 'Ac%0D%0AX-Injected: 1'],
    ['Zoë', 'Zo%C3%AB'],
    ['tab\there', 'tab%09here'],
    ['😀', '%F0%9F%98%80'],
    ['a%0D%0Ab', 'a%250D%250Ab'],
    ['100%', '100%25'],
  ])('name %j is sent as %j', (name, sent) => {
    expect(headerSafe(name)).toBe(sent);
    const lines = compileKey(answer({ consumerName: name }), HEADERS).consumerLines;
    expect(lines).toBe(`x-consumer-id: con_1\r\nx-consumer-name: ${sent}\r\n`);
    expect(lines.split('\r\n').length).toBe(3);
  });

  it('a rotated key in grace carries Deprecation (@seconds of its rotation, RFC 9745) and Sunset (IMF-fixdate)', () => {
    const rotatedAt = Date.UTC(2026, 10, 30, 8, 15, 42, 999);
    const k = compileKey(answer({ graceUntil: Date.UTC(2026, 11, 30, 0, 0, 0), rotatedAt }), HEADERS);
    expect(k.deprecation).toEqual([`@${Math.floor(rotatedAt / 1000)}`, 'Wed, 30 Dec 2026 00:00:00 GMT']);
    expect(compileKey(answer(), HEADERS).deprecation).toBeNull();
  });

  it('the Deprecation value is stable: the stored rotation time, whatever the time (or worker, or refill) that compiles the key', async () => {
    const a = answer({ graceUntil: NOW + 86_400_000, rotatedAt: NOW - 3_600_000 });
    const first = compileKey(a, HEADERS).deprecation;
    await new Promise((r) => setTimeout(r, 1100)); // past a whole second: the old value (compile time) would differ
    expect(compileKey({ ...a }, HEADERS).deprecation).toEqual(first);
    expect(first![0]).toBe(`@${Math.floor((NOW - 3_600_000) / 1000)}`);
  });

  it('a record without rotatedAt (rotated before it was kept) is dated graceUntil minus the default grace, not the compile time', () => {
    const graceUntil = Date.UTC(2026, 11, 30, 0, 0, 0);
    const k = compileKey(answer({ graceUntil, rotatedAt: null }), HEADERS);
    expect(k.deprecation![0]).toBe(`@${Math.floor((graceUntil - DEFAULT_GRACE_MS) / 1000)}`);
  });
});

describe('stripQueryParams', () => {
  it.each([
    ['api_key=tp_x&a=1', ['api_key'], 'a=1'],
    ['a=1&api_key=tp_x', ['api_key'], 'a=1'],
    ['a=1&api_key=tp_x&b=2', ['api_key'], 'a=1&b=2'],
    ['api_key=1&api_key=2', ['api_key'], ''],
    ['api_key', ['api_key'], ''],
    ['api_keyx=1&xapi_key=2', ['api_key'], 'api_keyx=1&xapi_key=2'],
    ['a=%20&&b', ['api_key'], 'a=%20&&b'],
    ['k=1&t=2&z=3', ['k', 't'], 'z=3'],
    ['api%5Fkey=x&a=1', ['api_key'], 'a=1'],
    ['api%5fkey=x&api_key=y', ['api_key'], ''],
    ['api%5Gkey=x', ['api_key'], 'api%5Gkey=x'],
  ])('%s without %j is %s', (q, names, want) => {
    expect(stripQueryParams(q, names)).toBe(want);
  });
});
