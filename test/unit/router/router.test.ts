import { describe, expect, it } from 'vitest';
import type { RouteInput, Router } from '../../../workers/router/types.js';
import { MATCH_FOUND, MATCH_METHOD_NOT_ALLOWED } from '../../../workers/router/types.js';
import type { CompileOptions } from '../../../workers/router/compile.js';
import { compileRouter, validateRoutePattern } from '../../../workers/router/compile.js';
import { normalizePath } from '../../../workers/router/normalize.js';
import { generateSource } from '../../../workers/router/codegen.js';
import { RouteRec, finalizeTree, insertTokens, newRoot } from '../../../workers/router/node.js';
import { parseGeneral, parsePattern } from '../../../workers/router/pattern.js';
import { ReferenceRouter } from './reference-router.js';
import type { CaseResult, CaseRouter } from './router.cases.js';
import { githubRequests, githubRouteInputs, route, runTest } from './router.cases.js';

/** Every matcher configuration: default, forced codegen, interpreter, codegen with every subtree hoisted into its own function. */
const CONFIGS: Array<{ name: string; options: CompileOptions }> = [
  { name: 'auto', options: { codegen: 'auto' } },
  { name: 'codegen', options: { codegen: 'always' } },
  { name: 'interpreter', options: { codegen: 'never' } },
  { name: 'codegen, all split, startsWith', options: { codegen: 'always', tuning: { splitChars: 1, inlineChars: 0 } } },
  { name: 'codegen, loop scan', options: { codegen: 'always', tuning: { scan: 'loop', inlineChars: 64 } } },
];
const MODES = CONFIGS.map((c) => c.name);

for (const c of CONFIGS) {
  runTest({ name: `compiled (${c.name})`, newRouter: (routes) => compileRouter(routes, c.options) });
}
runTest({ name: 'reference', newRouter: (routes) => new ReferenceRouter(routes) });

/** mulberry32: small, seeded, deterministic. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function snapshot(r: CaseResult | null): unknown {
  if (r === null) return null;
  return { kind: r.kind, data: r.data, paramNames: [...r.paramNames], params: [...r.params], allow: r.allow };
}

describe('compiled router agrees with the reference on random tables (fuzz)', () => {
  const LITERALS = ['a', 'b', 'ab', 'abc', 'x', 'users', 'u', '%7E'];
  const REGEXES = ['\\d+', '[ab]+', 'a.*', '\\d'];
  const HOSTS = ['*', '*', '*', 'a.test', '*.test', '*.a.test'];
  const METHOD_SETS = [[], ['GET'], ['GET'], ['POST'], ['GET', 'POST'], ['HEAD'], ['HEAD', 'PUT'], ['DELETE'], ['PURGE']];
  const REQ_SEGMENTS = ['a', 'b', 'ab', 'abc', 'x', 'users', 'u', '1', '12', 'a1', '', '~', '%7e', '..', '.', '%2F', 'aa'];
  const REQ_HOSTS = ['a.test', 'b.a.test', 'x.test', 'other', 'c.b.a.test', ''];
  const REQ_METHODS = ['GET', 'GET', 'POST', 'HEAD', 'DELETE', 'PUT', 'PURGE'];

  const TABLES = 300;
  const REQUESTS = 80;
  let compiled = 0;
  let dropped = 0;
  let compared = 0;
  let found = 0;
  let notAllowed = 0;

  function randomTable(rnd: () => number, pick: <T>(xs: readonly T[]) => T): RouteInput<string>[] {
    const n = 1 + Math.floor(rnd() * 25);
    const routes: RouteInput<string>[] = [];
    for (let i = 0; i < n; i++) {
      const segs: string[] = [];
      const len = 1 + Math.floor(rnd() * 4);
      let params = 0;
      for (let k = 0; k < len; k++) {
        const x = rnd();
        if (x < 0.55) segs.push(pick(LITERALS));
        else if (x < 0.75) segs.push(`:p${params++}`);
        else if (x < 0.85) segs.push(`:p${params++}(${pick(REGEXES)})`);
        else if (x < 0.93) {
          segs.push('*');
          break;
        } else {
          segs.push('');
          break;
        }
      }
      const r = rnd();
      routes.push({
        id: `r${i}`,
        host: pick(HOSTS),
        path: '/' + segs.join('/'),
        methods: pick(METHOD_SETS),
        priority: r < 0.85 ? 0 : r < 0.93 ? 1 : -1,
        match: {
          headers: rnd() < 0.15 ? [['x-v', pick(['1', '2'])]] : [],
          query: rnd() < 0.1 ? [['q', pick(['1', 'a b'])]] : [],
        },
        data: `r${i}`,
      });
    }
    return routes;
  }

  it(`${TABLES} tables x ${REQUESTS} requests, every matcher mode`, () => {
    const rnd = prng(0x7e57);
    const pick = <T,>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
    for (let t = 0; t < TABLES; t++) {
      let routes = randomTable(rnd, pick);
      let routers: Router<string>[] | null = null;
      while (routers === null) {
        try {
          routers = CONFIGS.map((c) => compileRouter(routes, c.options));
        } catch (err) {
          // Random tables sometimes hold duplicates: they must be refused as such; drop the named route and retry.
          const m = /^route "(r\d+)": duplicate of route/.exec((err as Error).message);
          expect(m, (err as Error).message).not.toBeNull();
          routes = routes.filter((r) => r.id !== m![1]);
          dropped++;
        }
      }
      compiled++;
      const ref = new ReferenceRouter(routes);
      for (let k = 0; k < REQUESTS; k++) {
        let raw: string;
        if (rnd() < 0.5) {
          // Aim at a configured route: fill its params and wildcard with random segments.
          raw = pick(routes).path
            .replace(/:p\d+(\([^)]*\))?/g, () => pick(REQ_SEGMENTS) || 'a')
            .replace(/\*$/, () => Array.from({ length: Math.floor(rnd() * 3) }, () => pick(REQ_SEGMENTS)).join('/'));
        } else {
          const nseg = 1 + Math.floor(rnd() * 5);
          const parts: string[] = [];
          for (let s = 0; s < nseg; s++) parts.push(pick(REQ_SEGMENTS));
          raw = '/' + parts.join('/');
        }
        const path = normalizePath(raw);
        if (path === null) continue;
        const method = pick(REQ_METHODS);
        const host = pick(REQ_HOSTS);
        const headers = rnd() < 0.3 ? ['x-v', pick(['1', '2', '3'])] : [];
        const query = rnd() < 0.3 ? pick(['q=1', 'q=a%20b', 'q=%E0', 'a=1&q=1', 'q']) : '';
        const expected = snapshot(ref.find(method, host, path, headers, query));
        for (let m = 0; m < routers.length; m++) {
          const got = snapshot(routers[m]!.find(method, host, path, headers, query) as CaseResult | null);
          expect(got, `table ${t} mode ${MODES[m]} ${method} ${host} ${path} h=${headers} q=${query}\n${JSON.stringify(routes)}`).toEqual(expected);
        }
        compared++;
        if (expected !== null) {
          if ((expected as CaseResult).kind === MATCH_FOUND) found++;
          else notAllowed++;
        }
      }
    }
    // The generator must actually exercise the routers.
    expect(compiled).toBe(TABLES);
    expect(dropped).toBeGreaterThan(0);
    expect(found).toBeGreaterThan(compared * 0.15);
    expect(notAllowed).toBeGreaterThan(compared * 0.02);
  });
});

describe('compileRouter: errors', () => {
  const compile = (routes: RouteInput<string>[]): Router<string> => compileRouter(routes);

  it('refuses duplicates, naming both routes', () => {
    expect(() => compile([route('one', '/a'), route('two', '/a')])).toThrow(/route "two": duplicate of route "one"/);
    expect(() => compile([route('one', '/u/:id'), route('two', '/u/:name')])).toThrow(/duplicate/);
    expect(() => compile([route('one', '/a', { methods: [] }), route('two', '/a', { methods: ['POST'] })])).toThrow(/any method/);
    expect(() => compile([
      route('one', '/a', { headers: [['x', '1'], ['y', '2']] }),
      route('two', '/a', { headers: [['y', '2'], ['x', '1']] }),
    ])).toThrow(/duplicate/);
  });

  it('accepts routes that differ in host, priority, predicates, methods or regex', () => {
    expect(compile([
      route('1', '/a'),
      route('2', '/a', { host: 'x.test' }),
      route('3', '/a', { priority: 1 }),
      route('4', '/a', { headers: [['x', '1']] }),
      route('5', '/a', { methods: ['POST'] }),
      route('6', '/a', { methods: ['HEAD'] }),
      route('7', '/u/:id(\\d+)'),
      route('8', '/u/:id'),
    ]).size).toBe(8);
  });

  it('refuses invalid patterns, hosts and methods with the route id', () => {
    expect(() => compile([route('bad', 'no-slash')])).toThrow(/route "bad": invalid path/);
    expect(() => compile([route('bad', '/a/:id.json')])).toThrow(/route "bad".*whole segment/);
    expect(() => compile([route('bad', '/a', { host: 'a.*.com' })])).toThrow(/route "bad": invalid host/);
    expect(() => compile([route('bad', '/a', { host: 'a b' })])).toThrow(/invalid host/);
    expect(() => compile([route('bad', '/a', { methods: ['get'] })])).toThrow(/route "bad": invalid method/);
    expect(() => compile([route('bad', '/a', { priority: Number.NaN })])).toThrow(/priority/);
  });

  it('validateRoutePattern explains what is wrong', () => {
    const cases: Array<[string, RegExp | null]> = [
      ['/users/:id', null],
      ['/users/:id(\\d+)/posts', null],
      ['/r/:v([^/]+)/x', null],
      ['/a/', null],
      ['/', null],
      ['/static/*', null],
      ['/v1/projects:batchGet', null],
      ['/a%2fb', null],
      ['/a/:id(\\d+', /unbalanced/],
      ['/a/:id(\\d+))', /parentheses|whole segment/],
      ['/a/:id([)', /unbalanced|invalid regex/],
      ['/a/:id(+)', /invalid regex/],
      ['/a/:id()', /empty regex/],
      ['/a/*/b', /last segment/],
      ['/a*', /whole last segment/],
      ['/a/:id/:id', /duplicate parameter name "id"/],
      ['/a/:', /empty parameter name/],
      ['/a/:1x', /invalid parameter name/],
      ['/a/:na-me', /whole segment/],
      ['/files/:name.json', /whole segment/],
      ['/a//b', /empty segment/],
      ['/a/../b', /dot segment/],
      ['/a/%2e%2E/b', /dot segment/],
      ['/a/%zz', /invalid character or escape/],
      ['/a\\b', /invalid character/],
      ['/a(b)', /parentheses/],
      ['relative', /start with/],
      ['', /start with/],
      ['/' + 'a'.repeat(5000), /longer than/],
    ];
    for (const [p, want] of cases) {
      const err = validateRoutePattern(p);
      if (want === null) expect(err, p).toBeNull();
      else expect(err, p).toMatch(want);
    }
  });
});

describe('parsePattern: the fast path agrees with the general parser', () => {
  it('on random patterns (seeded), results and error messages alike', () => {
    const rnd = prng(7);
    const pieces = [
      'a', 'users', 'v1', 'tenant42', '-', '_x', '~u', '.', '..', '...', '.a', 'a.b', '%7e', '%7E', '%2f', '%zz', '%',
      ':id', ':id', ':owner', ':Repo_2', ':1x', ':', ':na-me', ':x(\\d+)', ':y([a-z]+)', '*', 'a*', '(', 'a)', ':a:b', 'a:b',
      '!$&\'+,;=@', '|', ' ', '"', '^', '\\', 'caf\u00e9', '',
    ];
    let fast = 0;
    for (let i = 0; i < 4000; i++) {
      const n = 1 + Math.floor(rnd() * 5);
      let p = '';
      for (let k = 0; k < n; k++) p += '/' + pieces[Math.floor(rnd() * pieces.length)]!;
      if (rnd() < 0.2) p += '/';
      const general = parseGeneral(p); // (parsePattern checks the leading "/" and the length before either parser)
      expect(parsePattern(p), p).toEqual(general);
      if (typeof general !== 'string' && !/[%(]/.test(p)) fast++;
    }
    expect(fast).toBeGreaterThan(500); // the table exercised the fast path
    for (const p of ['/', '/*', '/a/', '/a/*', '/:a/*', '/:a/', '/a/:b/c/:d', '/v1/projects:batchGet', '/x/.../y']) {
      expect(parsePattern(p), p).toEqual(parseGeneral(p));
    }
  });
});

describe('compileRouter: results and safety', () => {
  it('a static hit returns the same preallocated result, without params', () => {
    const router = compileRouter([route('a', '/a'), route('u', '/u/:id')]);
    const r1 = router.find('GET', '', '/a', [], '');
    const r2 = router.find('GET', '', '/a', [], '');
    expect(r1).toBe(r2);
    expect(r1!.params).toEqual([]);
    expect(Object.isFrozen(r1!.params)).toBe(true);
    const p1 = router.find('GET', '', '/u/1', [], '');
    expect(p1!.params).toEqual(['1']);
    expect(p1!.paramNames).toEqual(['id']);
  });

  it('every result has the same shape (found and 405)', () => {
    const router = compileRouter([route('a', '/a'), route('u', '/u/:id')]);
    const found = router.find('GET', '', '/u/1', [], '')!;
    const na = router.find('POST', '', '/u/1', [], '')!;
    expect(na.kind).toBe(MATCH_METHOD_NOT_ALLOWED);
    expect(Object.keys(found)).toEqual(Object.keys(na));
  });

  it('route data that looks like code is never executed', () => {
    const evil = '"); globalThis.__pwned = 1; ("';
    const routes: RouteInput<string>[] = [
      { ...route(evil, `/it's/$x;y=z/@a:b/!+,&`), data: evil },
      { ...route('r', '/p/:p(\\d+)'), data: '`${globalThis.__pwned = 2}`' },
      route('q', '/quote%22/:id'),
    ];
    for (const c of CONFIGS) {
      const router = compileRouter(routes, c.options);
      expect(router.find('GET', '', `/it's/$x;y=z/@a:b/!+,&`, [], '')!.data).toBe(evil);
      expect(router.find('GET', '', '/p/12', [], '')!.params).toEqual(['12']);
      expect(router.find('GET', '', '/quote%22/x', [], '')!.data).toBe('q');
      expect(router.find('GET', '', '/quote"/x', [], '')).toBeNull();
    }
    expect((globalThis as Record<string, unknown>).__pwned).toBeUndefined();
  });

  it('generated source holds no route id, data or param name, and literals only JSON-quoted', () => {
    const root = newRoot();
    const evilId = 'id"+process.exit(1)+"';
    for (const [i, path] of ['/lit:a$b/:secretName/x', '/lit:a$b/:other(\\d+)', "/q'uote/*"].entries()) {
      const parsed = parsePattern(path);
      if (typeof parsed === 'string') throw new Error(parsed);
      const node = insertTokens(root, parsed.tokens);
      // Routes carry no id any more: the evil text rides in the data, which must not reach the source either.
      node.routes = RouteRec.create(i, 1, 1, false, null, parsed.paramNames, 0, 'DATA-MARKER' + evilId) as RouteRec<unknown>;
    }
    finalizeTree(root);
    for (const tuning of [{ inlineChars: 0, splitChars: 3000, scan: 'indexOf' as const }, { inlineChars: 64, splitChars: 1, scan: 'loop' as const }]) {
      const src = generateSource(root, 2, tuning);
      expect(src).not.toContain('secretName');
      expect(src).not.toContain('other');
      expect(src).not.toContain('process');
      expect(src).not.toContain('DATA-MARKER');
      expect(src).not.toContain('\\d');
      // Every string literal in the source is one JSON.stringify produced.
      for (const lit of src.match(/"(?:[^"\\]|\\.)*"/g) ?? []) expect(JSON.stringify(JSON.parse(lit))).toBe(lit);
      // Outside those literals there are no other quotes at all.
      expect(src.replace(/"(?:[^"\\]|\\.)*"/g, '""')).not.toMatch(/['`]/);
      if (tuning.inlineChars === 0) expect(src).toContain(`"'uote/"`); // the "q" is a switch case
    }
  });

  it('works when code generation is forbidden, falling back to the interpreter', () => {
    const original = globalThis.Function;
    // Simulate --disallow-code-generation-from-strings.
    (globalThis as Record<string, unknown>).Function = function () {
      throw new EvalError('Code generation from strings disallowed for this context');
    };
    try {
      const router = compileRouter(githubRouteInputs());
      expect(router.find('GET', '', '/repos/a/b/pulls/1', [], '')!.data).toBe('/repos/:owner/:repo/pulls/:number');
    } finally {
      (globalThis as Record<string, unknown>).Function = original;
    }
  });

  it('a tree too big to optimise falls back to the interpreter in auto mode, same answers', () => {
    // 3000 routes on one node (predicates only): one huge generated function.
    const routes: RouteInput<string>[] = [];
    for (let i = 0; i < 3000; i++) routes.push(route(`v${i}`, '/api/:x', { headers: [['x-v', String(i)]] }));
    routes.push(route('plain', '/api/:x'));
    for (const c of CONFIGS.slice(0, 3)) {
      const router = compileRouter(routes, c.options);
      expect(router.find('GET', '', '/api/1', ['x-v', '2999'], '')!.data).toBe('v2999');
      expect(router.find('GET', '', '/api/1', ['x-v', 'nope'], '')!.data).toBe('plain');
      expect(router.find('POST', '', '/api/1', [], '')!.allow).toBe('GET');
    }
  });

  it('10k routes compile (interpreted) and match', () => {
    const routes: RouteInput<string>[] = [];
    for (let v = 1; v <= 3 && routes.length < 10_000; v++) {
      for (let i = 0; i < 334 && routes.length < 10_000; i++) {
        for (let j = 0; j < 10 && routes.length < 10_000; j++) {
          routes.push(route(`${v}-${i}-${j}`, `/v${v}/tenant${i}/resource${j}/:id`));
        }
      }
    }
    const started = performance.now();
    const router = compileRouter(routes);
    const ms = performance.now() - started;
    expect(router.size).toBe(10_000);
    // Generous bound for a loaded CI box; the measured figure is in the README.
    expect(ms).toBeLessThan(2000);
    const r = router.find('GET', '', '/v2/tenant123/resource4/abc', [], '')!;
    expect(r.data).toBe('2-123-4');
    expect(r.params).toEqual(['abc']);
    expect(router.find('GET', '', '/v2/tenant123/resource44/abc', [], '')).toBeNull();
    expect(router.find('POST', '', '/v3/tenant0/resource0/x', [], '')!.allow).toBe('GET');
  });

  it('the github requests table is complete', () => {
    const classes = new Set(githubRequests.map((g) => g.class));
    expect([...classes].sort()).toEqual(['deep', 'miss', 'multi', 'param1', 'static', 'wildcard']);
  });
});

// Type-level check: the compiled router satisfies the case harness interface.
const _check: CaseRouter = compileRouter<string>([]) as CaseRouter;
void _check;
