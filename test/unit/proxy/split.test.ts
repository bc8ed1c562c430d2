/**
 * The traffic split's choice (workers/proxy/split.ts) on plain header lists:
 * smooth weighted round robin exact per cycle, `when` overrides in list
 * order (header and cookie, exact values), weight 0 reached only through
 * `when`, hashOn stable per key with the documented fallback to the peer
 * address, the share of keys a weight change moves, and cookie parsing.
 * The end-to-end behaviour over sockets is in
 * test/integration/traffic-split.test.ts.
 */
import { describe, expect, it } from 'vitest';
import type { RouteUpstreamConfig } from '../../../common/config/types.js';
import { Split, cookieEquals, headerEquals } from '../../../workers/proxy/split.js';

const e = (name: string, weight: number, when: RouteUpstreamConfig['when'] = null): RouteUpstreamConfig => ({ name, weight, when });
const make = (entries: RouteUpstreamConfig[], hashOn: string | null = null) => new Split(entries, hashOn, entries.map((x) => x.name));

function counts(s: Split<string>, n: number, req: (i: number) => [string[], string, string]): Record<string, number> {
  const out: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const [h, ip, path] = req(i);
    const b = s.choose(h, ip, path);
    out[b] = (out[b] ?? 0) + 1;
  }
  return out;
}

describe('split without hashOn: smooth weighted round robin', () => {
  it.each([
    [[90, 10], 10_000, [9000, 1000]],
    [[1, 1], 10, [5, 5]],
    [[5, 1, 1], 700, [500, 100, 100]],
    [[3, 0, 7], 1000, [300, 0, 700]],
  ])('weights %j over %i requests: exact shares', (weights, n, expected) => {
    const s = make(weights.map((w, i) => e(`u${i}`, w)));
    const c = counts(s, n, () => [[], '10.0.0.1', '/']);
    expect(weights.map((_, i) => c[`u${i}`] ?? 0)).toEqual(expected);
  });

  it('interleaves (never a run longer than needed): 2:1 gives a a b', () => {
    const s = make([e('a', 2), e('b', 1)]);
    expect(Array.from({ length: 6 }, () => s.choose([], '', '/'))).toEqual(['a', 'b', 'a', 'a', 'b', 'a']);
  });
});

describe('when overrides', () => {
  const s = make([
    e('v1', 100),
    e('v2', 0, { kind: 'header', name: 'x-canary', equals: '1' }),
    e('v3', 0, { kind: 'cookie', name: 'canary', equals: 'always' }),
  ]);
  it.each([
    ['no header', [], 'v1'],
    ['header match', ['x-canary', '1'], 'v2'],
    ['header other value', ['x-canary', '0'], 'v1'],
    ['header value case matters', ['x-canary', 'TRUE'], 'v1'],
    ['header prefix is not equal', ['x-canary', '10'], 'v1'],
    ['header repeated: joined "1, 1" is not "1"', ['x-canary', '1', 'x-canary', '1'], 'v1'],
    ['cookie match', ['cookie', 'a=b; canary=always; c=d'], 'v3'],
    ['cookie first of the line', ['cookie', 'canary=always'], 'v3'],
    ['cookie with spaces around', ['cookie', 'a=1;  canary=always  ;b=2'], 'v3'],
    ['cookie other value', ['cookie', 'canary=never'], 'v1'],
    ['cookie longer value', ['cookie', 'canary=alwaysx'], 'v1'],
    ['cookie name is a suffix of another', ['cookie', 'xcanary=always'], 'v1'],
    ['cookie name case matters', ['cookie', 'Canary=always'], 'v1'],
    ['cookie the first pair of that name wins', ['cookie', 'canary=no; canary=always'], 'v1'],
    ['cookie in a second Cookie line', ['cookie', 'a=1', 'cookie', 'canary=always'], 'v3'],
    ['both: first in list order wins', ['cookie', 'canary=always', 'x-canary', '1'], 'v2'],
  ])('%s', (_what, hdrs, expected) => {
    for (let i = 0; i < 5; i++) expect(s.choose(hdrs as string[], '10.0.0.1', '/')).toBe(expected);
  });

  it('weight 0 with a when is never reached without it', () => {
    const c = counts(s, 1000, () => [['cookie', 'canary=no', 'x-canary', '2'], '10.0.0.1', '/']);
    expect(c).toEqual({ v1: 1000 });
  });
});

describe('hashOn', () => {
  const entries = [e('v1', 90), e('v2', 10)];
  it.each([
    ['ip', (i: number): [string[], string, string] => [[], `10.0.${i >> 8}.${i & 255}`, '/']],
    ['path', (i: number): [string[], string, string] => [[], '10.0.0.1', `/users/${i}`]],
    ['header:x-user', (i: number): [string[], string, string] => [['x-user', `user-${i}`], '10.0.0.1', '/']],
    ['cookie:session', (i: number): [string[], string, string] => [['cookie', `a=1; session=s${i}; z=2`], '10.0.0.1', '/']],
  ])('%s: the same key always gets the same upstream, and 10k keys split 90/10 within 5%%', (hashOn, req) => {
    const s = make(entries, hashOn);
    const first = Array.from({ length: 10_000 }, (_, i) => s.choose(...req(i)));
    const again = Array.from({ length: 10_000 }, (_, i) => make(entries, hashOn).choose(...req(i)));
    expect(again).toEqual(first); // a new Split (another worker, a reload with the same weights) agrees
    const v2 = first.filter((b) => b === 'v2').length;
    expect(Math.abs(v2 - 1000)).toBeLessThan(500);
  });

  it('a missing or empty key hashes the peer address', () => {
    const byHeader = make(entries, 'header:x-user');
    const byCookie = make(entries, 'cookie:session');
    const byIp = make(entries, 'ip');
    for (let i = 0; i < 500; i++) {
      const ip = `192.168.${i >> 8}.${i & 255}`;
      const want = byIp.choose([], ip, '/');
      expect(byHeader.choose([], ip, '/')).toBe(want);
      expect(byHeader.choose(['x-user', ''], ip, '/')).toBe(want);
      expect(byCookie.choose(['cookie', 'other=1'], ip, '/')).toBe(want);
      expect(byCookie.choose(['cookie', 'session='], ip, '/')).toBe(want);
    }
  });

  it('repeated header lines hash as their joined value (as on Bun, which joins them)', () => {
    const s = make(entries, 'header:x-user');
    for (let i = 0; i < 300; i++) {
      expect(s.keyHash(['x-user', `a${i}`, 'x-user', 'b'], '', '/')).toBe(s.keyHash(['x-user', `a${i}, b`], '', '/'));
    }
  });

  it('a weight change moves only the keys that must move: 90/10 -> 50/50 moves ~40%, all from v1 to v2', () => {
    const before = make(entries, 'header:x-user');
    const after = make([e('v1', 50), e('v2', 50)], 'header:x-user');
    let moved = 0;
    for (let i = 0; i < 10_000; i++) {
      const h = ['x-user', `user-${i}`];
      const a = before.choose(h, '', '/');
      const b = after.choose(h, '', '/');
      if (a !== b) {
        moved++;
        expect([a, b]).toEqual(['v1', 'v2']);
      }
    }
    expect(Math.abs(moved - 4000)).toBeLessThan(500);
  });

  it('adding an upstream at the end with 10% moves only the ~10% it takes', () => {
    const before = make([e('v1', 100)], 'cookie:s');
    const after = make([e('v1', 90), e('v2', 10)], 'cookie:s');
    let moved = 0;
    for (let i = 0; i < 10_000; i++) {
      const h = ['cookie', `s=${i}`];
      if (before.choose(h, '', '/') !== after.choose(h, '', '/')) moved++;
    }
    expect(Math.abs(moved - 1000)).toBeLessThan(300);
  });

  it('when overrides win over the hash', () => {
    const s = make([e('v1', 1), e('v2', 1, { kind: 'header', name: 'x-canary', equals: '1' })], 'ip');
    for (let i = 0; i < 200; i++) expect(s.choose(['x-canary', '1'], `10.1.0.${i}`, '/')).toBe('v2');
  });
});

describe('config the validator refuses never builds', () => {
  it.each([
    ['no entries', [], 'a traffic split needs one branch per listed upstream'],
    ['all weights 0', [e('a', 0), e('b', 0)], 'a traffic split needs at least one positive weight'],
  ])('%s', (_w, entries, msg) => {
    expect(() => make(entries as RouteUpstreamConfig[])).toThrow(msg);
  });
});

describe('header and cookie reading', () => {
  it('headerEquals joins repeated lines with ", "', () => {
    expect(headerEquals(['x-a', '1', 'x-a', '2'], 'x-a', '1, 2')).toBe(true);
    expect(headerEquals(['x-a', '1'], 'x-b', '1')).toBe(false);
    expect(headerEquals(['x-a', ''], 'x-a', '')).toBe(true);
  });
  // RFC 6265 5.4 as the balancers read it (maglev.ts cookieRange): the first pair of that name,
  // surrounding DQUOTEs removed, an empty value the same as none.
  it.each([
    ['a=1; b=2', 'b', '2'],
    ['a=1;b=2', 'b', '2'],
    ['b=', 'b', null],
    ['b', 'b', null],
    ['bb=1; b=3', 'b', '3'],
    ['a=b=c; b=x=y', 'b', 'x=y'],
    ['a=1;', 'b', null],
    ['', 'b', null],
    [' \tb = 2', 'b', null],
    ['b=" q "', 'b', ' q '],
    ['b=1  ; c=2', 'b', '1'],
  ])('cookieEquals(cookie: %j, %j) = %j', (line, name, value) => {
    if (value === null) {
      expect(cookieEquals(['cookie', line], name, '')).toBe(false);
      return;
    }
    expect(cookieEquals(['cookie', line], name, value)).toBe(true);
    expect(cookieEquals(['cookie', line], name, value + 'x')).toBe(false);
  });
});
