/**
 * Traffic split configuration (routes[].upstreams, when, hashOn): every
 * kind of nonsense is refused with the path of the problem and what to
 * write instead; the documented forms validate and resolve to what the data
 * plane uses (workers/proxy/split.ts).
 */
import { describe, expect, it } from 'vitest';
import { checkDocument } from '../../../common/config/validate.js';
import { diffConfigs, formatChanges } from '../../../common/config/diff.js';
import { lines, valid } from './helpers.js';

/** Two upstreams, v1 and v2, and one route `api` with the given fields. */
function withRoute(route: Record<string, unknown>): Record<string, unknown> {
  return {
    upstreams: { v1: { targets: ['http://127.0.0.1:9001'] }, v2: { targets: ['http://127.0.0.1:9002'] } },
    routes: [{ id: 'api', path: '/api/*', ...route }],
  };
}

const split = [{ name: 'v1', weight: 90 }, { name: 'v2', weight: 10 }];

describe('traffic split config: refused with the path of the problem', () => {
  // [what, route fields, the exact error lines]
  const cases: [string, Record<string, unknown>, string[]][] = [
    ['both upstream and upstreams', { upstream: 'v1', upstreams: split }, [
      'routes[0]: has both "upstream" and "upstreams"; keep "upstream" for one upstream, or "upstreams" (a weighted list) for a traffic split',
    ]],
    ['neither', {}, [
      'routes[0]: needs "upstream" (an upstream name) or "upstreams" (a weighted list such as [{ name: v1, weight: 90 }, { name: v2, weight: 10 }])',
    ]],
    ['unknown name, with a suggestion', { upstreams: [{ name: 'v1', weight: 1 }, { name: 'v3', weight: 1 }] }, [
      'routes[0].upstreams[1].name: unknown upstream "v3" (did you mean "v1"?)',
    ]],
    ['unknown name, no close one', { upstreams: [{ name: 'v1', weight: 1 }, { name: 'legacy', weight: 1 }] }, [
      'routes[0].upstreams[1].name: unknown upstream "legacy" (known: v1, v2)',
    ]],
    ['duplicate', { upstreams: [{ name: 'v1', weight: 1 }, { name: 'v2', weight: 1 }, { name: 'v1', weight: 2 }] }, [
      'routes[0].upstreams[2].name: "v1" is listed twice (also routes[0].upstreams[0]); list each upstream once and add up its weights',
    ]],
    ['all weights 0', { upstreams: [{ name: 'v1', weight: 0 }, { name: 'v2', weight: 0, when: { header: 'x-canary', equals: '1' } }] }, [
      'routes[0].upstreams: every weight is 0, so requests that match no "when" would have nowhere to go; give at least one upstream a positive weight',
    ]],
    ['weight over 1000', { upstreams: [{ name: 'v1', weight: 1001 }] }, ['routes[0].upstreams[0].weight: must be an integer from 0 to 1000 (got 1001)']],
    ['negative weight', { upstreams: [{ name: 'v1', weight: -1 }, { name: 'v2', weight: 1 }] }, ['routes[0].upstreams[0].weight: must be an integer from 0 to 1000 (got -1)']],
    ['fractional weight', { upstreams: [{ name: 'v1', weight: 0.5 }, { name: 'v2', weight: 1 }] }, ['routes[0].upstreams[0].weight: must be an integer (got 0.5)']],
    ['weight missing', { upstreams: [{ name: 'v1' }] }, ['routes[0].upstreams[0]: missing required property "weight"']],
    ['empty list', { upstreams: [] }, ['routes[0].upstreams: must have at least one item']],
    ['typo in an entry', { upstreams: [{ name: 'v1', wieght: 1, weight: 1 }] }, ['routes[0].upstreams[0]: unknown property "wieght" (did you mean "weight"?)']],
    ['bad hashOn', { upstreams: split, hashOn: 'cookie' }, ['routes[0].hashOn: must be "ip", "path", "header:<name>" or "cookie:<name>"']],
    ['hashOn with a space in the name', { upstreams: split, hashOn: 'header:x user' }, ['routes[0].hashOn: must be "ip", "path", "header:<name>" or "cookie:<name>"']],
    ['hashOn unknown kind', { upstreams: split, hashOn: 'query:user' }, ['routes[0].hashOn: must be "ip", "path", "header:<name>" or "cookie:<name>"']],
    ['hashOn without a split', { upstream: 'v1', hashOn: 'ip' }, [
      'routes[0].hashOn: applies to a traffic split only; set "upstreams" on this route, or remove hashOn (a route with one upstream always uses it)',
    ]],
    ['when with header and cookie', { upstreams: [{ name: 'v1', weight: 1 }, { name: 'v2', weight: 0, when: { header: 'x-c', cookie: 'c', equals: '1' } }] }, [
      'routes[0].upstreams[1].when: must be { header: <name>, equals: <value> } or { cookie: <name>, equals: <value> }',
      'routes[0].upstreams[1].when: must name exactly one of "header" or "cookie", with "equals": { header: x-canary, equals: "1" } or { cookie: canary, equals: always }',
    ]],
    ['when without equals', { upstreams: [{ name: 'v1', weight: 1 }, { name: 'v2', weight: 0, when: { header: 'x-c' } }] }, [
      'routes[0].upstreams[1].when: must be { header: <name>, equals: <value> } or { cookie: <name>, equals: <value> }',
      'routes[0].upstreams[1].when: missing required property "equals"',
    ]],
    ['when with neither header nor cookie', { upstreams: [{ name: 'v1', weight: 1 }, { name: 'v2', weight: 0, when: { query: 'c', equals: '1' } }] }, [
      'routes[0].upstreams[1].when: unknown property "query" (known: header, cookie, equals)',
      'routes[0].upstreams[1].when: must name exactly one of "header" or "cookie", with "equals": { header: x-canary, equals: "1" } or { cookie: canary, equals: always }',
    ]],
    ['when header not a header name', { upstreams: [{ name: 'v1', weight: 1 }, { name: 'v2', weight: 0, when: { header: 'x canary', equals: '1' } }] }, [
      'routes[0].upstreams[1].when.header: must be a valid header name (letters, digits and !#$%&\'*+-.^_`|~, no spaces or colons)',
    ]],
    ['when value with a newline', { upstreams: [{ name: 'v1', weight: 1 }, { name: 'v2', weight: 0, when: { header: 'x-c', equals: 'a\nb' } }] }, [
      'routes[0].upstreams[1].when.equals: must be a non-empty value without control characters (CR, LF, NUL, ...): an empty header or cookie counts as absent, so it could never match',
    ]],
  ];
  for (const [what, route, expected] of cases) {
    it(what, () => {
      expect(lines(withRoute(route))).toEqual(expected);
    });
  }
});

describe('traffic split config: what validates, resolved', () => {
  it('resolves entries, when and hashOn (header names lowercase, values as text; a single upstream has upstreams: null)', () => {
    const c = valid({
      ...withRoute({
        upstreams: [
          { name: 'v1', weight: 90 },
          { name: 'v2', weight: 10, when: { header: 'X-Canary', equals: 1 } },
          { name: 'v1b', weight: 0, when: { cookie: 'Canary', equals: 'always' } },
        ],
        hashOn: 'header:X-User',
      }),
      upstreams: { v1: { targets: ['http://127.0.0.1:9001'] }, v2: { targets: ['http://127.0.0.1:9002'] }, v1b: { targets: ['http://127.0.0.1:9003'] } },
    });
    expect(c.routes[0]!.upstream).toBeNull();
    expect(c.routes[0]!.upstreams).toEqual([
      { name: 'v1', weight: 90, when: null },
      { name: 'v2', weight: 10, when: { kind: 'header', name: 'x-canary', equals: '1' } },
      { name: 'v1b', weight: 0, when: { kind: 'cookie', name: 'Canary', equals: 'always' } },
    ]);
    expect(c.routes[0]!.hashOn).toBe('header:x-user');
    const one = valid(withRoute({ upstream: 'v1' }));
    expect(one.routes[0]!.upstreams).toBeNull();
    expect(one.routes[0]!.hashOn).toBeNull();
  });

  it.each(['ip', 'path', 'header:x-user-id', 'cookie:session'])('hashOn %s', (h) => {
    expect(valid(withRoute({ upstreams: split, hashOn: h })).routes[0]!.hashOn).toBe(h);
  });

  it('an upstream used only by a split is used (no warning); weight 0 without when is warned about', () => {
    const ok = checkDocument(withRoute({ upstreams: split }));
    expect(ok.errors).toEqual([]);
    expect(ok.warnings).toEqual([]);
    const w = checkDocument(withRoute({ upstreams: [{ name: 'v1', weight: 1 }, { name: 'v2', weight: 0 }] }));
    expect(w.errors).toEqual([]);
    expect(w.warnings.map((e) => `${e.path}: ${e.message}`)).toEqual([
      'routes[0].upstreams[1]: weight 0 and no "when": no request ever goes to this upstream; give it a weight, a "when", or remove it',
    ]);
  });

  it('a when header the uWS backend never receives is warned about there', () => {
    const doc = withRoute({ upstreams: [{ name: 'v1', weight: 1 }, { name: 'v2', weight: 0, when: { header: 'x_canary', equals: '1' } }] });
    (doc as any).server = { backend: 'uws' };
    expect(checkDocument(doc).warnings.map((e) => `${e.path}: ${e.message}`)).toEqual([
      'routes[0].upstreams[1].when.header: the uWS backend never receives a header named "x_canary" (letters, digits and "-" only), so this "when" never matches there; use a name such as "x-canary"',
    ]);
  });

  it('a hashOn header the uWS backend never receives is warned about, on a split and on an upstream; an empty when value is refused', () => {
    const doc = withRoute({ upstreams: split, hashOn: 'header:x_user' }) as any;
    doc.server = { backend: 'uws' };
    doc.upstreams.v1.balance = 'consistent_hash';
    doc.upstreams.v1.hashOn = 'header:tenant.id';
    expect(checkDocument(doc).warnings.map((e) => `${e.path}: ${e.message}`)).toEqual([
      'routes[0].hashOn: the uWS backend never receives a header named "x_user" (letters, digits and "-" only): every request would hash on its address instead; use a name such as "header:x-user"',
      'upstreams.v1.hashOn: the uWS backend never receives a header named "tenant.id" (letters, digits and "-" only): every request would hash on its address instead; use a name such as "header:tenant-id"',
    ]);
    doc.server = { backend: 'bun' };
    expect(checkDocument(doc).warnings).toEqual([]);
    expect(lines(withRoute({ upstreams: [{ name: 'v1', weight: 1 }, { name: 'v2', weight: 0, when: { cookie: 'c', equals: '' } }] }))).toEqual([
      'routes[0].upstreams[1].when.equals: must be a non-empty value without control characters (CR, LF, NUL, ...): an empty header or cookie counts as absent, so it could never match',
    ]);
  });

  it('the config diff names a split route whose weights, when or hashOn change (and its upstreams stay unchanged)', () => {
    const a = valid(withRoute({ upstreams: split }));
    for (const route of [
      { upstreams: [{ name: 'v1', weight: 50 }, { name: 'v2', weight: 50 }] },
      { upstreams: split, hashOn: 'ip' },
      { upstreams: [split[0], { ...split[1], when: { cookie: 'canary', equals: 'always' } }] },
      { upstream: 'v1' },
    ]) {
      const d = diffConfigs(a, valid(withRoute(route)));
      expect(formatChanges(d)).toBe('~ route api');
    }
    expect(formatChanges(diffConfigs(a, valid(withRoute({ upstreams: split }))))).toBe('no changes');
  });
});
