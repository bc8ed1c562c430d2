/**
 * The router conformance suite (model: hono src/router/common.case.test.ts).
 * Every router implementation runs the same table through
 * `runTest({ name, newRouter, skip })`: the compiled router in each of its
 * matcher modes and the linear reference router. A skip must carry its
 * reason; none is needed today.
 *
 * Requests go through normalizePath / normalizeHost first, exactly as the
 * proxy does, so the encoding and dot-segment cases test the whole routing
 * decision, not just the tree.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { RouteInput } from '../../../workers/router/types.js';
import { MATCH_FOUND, MATCH_METHOD_NOT_ALLOWED } from '../../../workers/router/types.js';
import { normalizeHost, normalizePath } from '../../../workers/router/normalize.js';

export interface CaseResult {
  kind: number;
  data: string | null;
  paramNames: readonly string[];
  params: readonly string[];
  allow: string;
}

export interface CaseRouter {
  find(method: string, host: string, path: string, headers: readonly string[], query: string): CaseResult | null;
}

export interface RunTestOptions {
  name: string;
  newRouter: (routes: RouteInput<string>[]) => CaseRouter;
  /** Case names (`describe > it` titles joined by ' > ') to skip, each with the reason. */
  skip?: ReadonlyArray<{ name: string; reason: string }>;
}

export interface RouteOpts {
  host?: string;
  methods?: string[];
  priority?: number;
  headers?: Array<[string, string]>;
  query?: Array<[string, string]>;
}

/** A route whose data is its id. */
export function route(id: string, path: string, o: RouteOpts = {}): RouteInput<string> {
  return {
    id,
    host: o.host ?? '*',
    path,
    methods: o.methods ?? ['GET'],
    priority: o.priority ?? 0,
    match: { headers: o.headers ?? [], query: o.query ?? [] },
    data: id,
  };
}

export const BAD_PATH = 'bad-path' as const;

export interface ReqOpts {
  host?: string;
  headers?: string[];
}

/** What the proxy does: split the target, normalise path and host, then find. */
export function request(
  router: CaseRouter, method: string, target: string, o: ReqOpts = {},
): CaseResult | null | typeof BAD_PATH {
  const q = target.indexOf('?');
  const rawPath = q === -1 ? target : target.slice(0, q);
  const query = q === -1 ? '' : target.slice(q + 1);
  const path = normalizePath(rawPath);
  if (path === null) return BAD_PATH;
  const res = router.find(method, normalizeHost(o.host ?? 'example.com'), path, o.headers ?? [], query);
  // Copy: results are reused by the next find.
  return res === null ? null : { ...res, paramNames: [...res.paramNames], params: [...res.params] };
}

function expectFound(res: ReturnType<typeof request>, id: string, params?: Record<string, string>): void {
  expect(res, `expected route ${id}`).not.toBeNull();
  expect(res).not.toBe(BAD_PATH);
  const r = res as CaseResult;
  expect({ kind: r.kind, data: r.data }).toEqual({ kind: MATCH_FOUND, data: id });
  const got: Record<string, string> = {};
  r.paramNames.forEach((n, i) => (got[n] = r.params[i]!));
  expect(r.params.length).toBe(r.paramNames.length);
  expect(got).toEqual(params ?? {});
}

function expect405(res: ReturnType<typeof request>, allow: string): void {
  expect(res).not.toBeNull();
  expect(res).not.toBe(BAD_PATH);
  const r = res as CaseResult;
  expect({ kind: r.kind, data: r.data, allow: r.allow }).toEqual({ kind: MATCH_METHOD_NOT_ALLOWED, data: null, allow });
}

function expectNone(res: ReturnType<typeof request>): void {
  expect(res).toBeNull();
}

interface GithubRoute { method: string; path: string }
interface GithubRequest { class: string; method: string; path: string; expect: string | null }

function fixture<T>(name: string): T {
  return JSON.parse(readFileSync(new URL(`./fixtures/${name}`, import.meta.url), 'utf8')) as T;
}

export const githubRoutes: GithubRoute[] = fixture('github-api-routes.json');
export const githubRequests: GithubRequest[] = fixture('github-api-requests.json');

/** The GitHub table as routes: id `METHOD path`, data = the path (what `expect` names). */
export function githubRouteInputs(): RouteInput<string>[] {
  return githubRoutes.map((g) => ({
    id: `${g.method} ${g.path}`,
    host: '*',
    path: g.path,
    methods: [g.method],
    priority: 0,
    match: { headers: [], query: [] },
    data: g.path,
  }));
}

export function runTest({ name, newRouter, skip = [] }: RunTestOptions): void {
  const skipped = new Map(skip.map((s) => [s.name, s.reason]));
  let group = '';
  const d = (title: string, fn: () => void): void => {
    describe(title, () => {
      group = title;
      fn();
    });
  };
  const t = (title: string, fn: () => void): void => {
    const reason = skipped.get(`${group} > ${title}`);
    if (reason !== undefined) it.skip(`${title} (skipped: ${reason})`, fn);
    else it(title, fn);
  };

  describe(`router conformance: ${name}`, () => {
    d('static', () => {
      const router = newRouter([
        route('root', '/'),
        route('a', '/a'),
        route('a-slash', '/a/'),
        route('ab', '/a/b'),
        route('abc-long', '/alpha/beta/gamma/delta'),
        route('upper', '/A'),
        route('tilde', '/~user'),
        route('colon', '/v1/projects:batchGet'),
      ]);
      t('root', () => expectFound(request(router, 'GET', '/'), 'root'));
      t('exact paths', () => {
        expectFound(request(router, 'GET', '/a'), 'a');
        expectFound(request(router, 'GET', '/a/b'), 'ab');
        expectFound(request(router, 'GET', '/alpha/beta/gamma/delta'), 'abc-long');
      });
      t('trailing slash is significant', () => {
        expectFound(request(router, 'GET', '/a/'), 'a-slash');
        expectNone(request(router, 'GET', '/a/b/'));
        expectNone(request(router, 'GET', '/alpha/beta/gamma/delta/'));
      });
      t('case-sensitive', () => {
        expectFound(request(router, 'GET', '/A'), 'upper');
        expectNone(request(router, 'GET', '/AB'));
      });
      t('prefixes and extensions of a route do not match', () => {
        expectNone(request(router, 'GET', '/ab'));
        expectNone(request(router, 'GET', '/a/bc'));
        expectNone(request(router, 'GET', '/alpha/beta/gamma'));
        expectNone(request(router, 'GET', '/alpha/beta/gamma/deltaX'));
        expectNone(request(router, 'GET', '/b'));
      });
      t('pchars in literals', () => {
        expectFound(request(router, 'GET', '/~user'), 'tilde');
        expectFound(request(router, 'GET', '/%7Euser'), 'tilde');
        expectFound(request(router, 'GET', '/v1/projects:batchGet'), 'colon');
      });
      t('runs of slashes are merged', () => {
        expectFound(request(router, 'GET', '//a///b'), 'ab');
        expectFound(request(router, 'GET', '//'), 'root');
      });
    });

    d('params', () => {
      const router = newRouter([
        route('user', '/users/:id'),
        route('user-posts', '/users/:id/posts'),
        route('post', '/users/:user/posts/:post'),
        route('file', '/files/:name'),
        route('tail', '/t/:a/'),
      ]);
      t('one param', () => expectFound(request(router, 'GET', '/users/42'), 'user', { id: '42' }));
      t('param then static', () => expectFound(request(router, 'GET', '/users/42/posts'), 'user-posts', { id: '42' }));
      t('two params, names per route', () => {
        expectFound(request(router, 'GET', '/users/ann/posts/7'), 'post', { user: 'ann', post: '7' });
      });
      t('a param is never empty', () => {
        expectNone(request(router, 'GET', '/users/'));
        // `//` is merged first: this is /users/posts.
        expectFound(request(router, 'GET', '/users//posts'), 'user', { id: 'posts' });
      });
      t('a param is one segment', () => {
        expectNone(request(router, 'GET', '/users/a/b'));
      });
      t('encoded slash stays inside the param value', () => {
        expectFound(request(router, 'GET', '/files/a%2fb'), 'file', { name: 'a%2Fb' });
        expectFound(request(router, 'GET', '/files/..%2F..%2Fetc'), 'file', { name: '..%2F..%2Fetc' });
      });
      t('percent-encoded unreserved chars are decoded, others kept canonical', () => {
        expectFound(request(router, 'GET', '/users/%61%6E%6E'), 'user', { id: 'ann' });
        expectFound(request(router, 'GET', '/files/caf%c3%a9'), 'file', { name: 'caf%C3%A9' });
        expectFound(request(router, 'GET', '/files/a|b'), 'file', { name: 'a%7Cb' });
      });
      t('param before a trailing slash', () => {
        expectFound(request(router, 'GET', '/t/x/'), 'tail', { a: 'x' });
        expectNone(request(router, 'GET', '/t/x'));
      });
    });

    d('regex params', () => {
      const router = newRouter([
        route('num', '/posts/:id(\\d+)'),
        route('slug', '/posts/:slug'),
        route('hex', '/c/:h([0-9a-f]{6})'),
        route('hexlike', '/c/:w(\\w+)'),
        route('noslash', '/r/:v([^/]+)/end'),
        route('alt', '/alt/:x(ab|a)'),
        route('ver', '/v/:major(\\d+)/:minor(\\d+)'),
      ]);
      t('regex param before plain param', () => {
        expectFound(request(router, 'GET', '/posts/123'), 'num', { id: '123' });
        expectFound(request(router, 'GET', '/posts/hello'), 'slug', { slug: 'hello' });
      });
      t('the regex must match the whole segment', () => {
        expectFound(request(router, 'GET', '/posts/12a'), 'slug', { slug: '12a' });
        expectFound(request(router, 'GET', '/alt/ab'), 'alt', { x: 'ab' });
        expectNone(request(router, 'GET', '/alt/abc'));
      });
      t('regex params among themselves: config order', () => {
        expectFound(request(router, 'GET', '/c/abcdef'), 'hex', { h: 'abcdef' });
        expectFound(request(router, 'GET', '/c/abcdefg'), 'hexlike', { w: 'abcdefg' });
        expectNone(request(router, 'GET', '/c/a-b'));
      });
      t('slash inside a character class', () => {
        expectFound(request(router, 'GET', '/r/x/end'), 'noslash', { v: 'x' });
      });
      t('two regex params', () => {
        expectFound(request(router, 'GET', '/v/1/22'), 'ver', { major: '1', minor: '22' });
        expectNone(request(router, 'GET', '/v/1/x'));
      });
    });

    d('wildcard', () => {
      const router = newRouter([
        route('static-all', '/static/*'),
        route('static-css', '/static/css/*'),
        route('static-logo', '/static/logo.png'),
        route('user', '/u/:id'),
        route('u-any', '/u/*'),
        route('catch-all', '/*', { methods: ['GET'] }),
      ]);
      t('rest of the path, possibly empty', () => {
        expectFound(request(router, 'GET', '/static/a/b/c.js'), 'static-all', { '*': 'a/b/c.js' });
        expectFound(request(router, 'GET', '/static/'), 'static-all', { '*': '' });
      });
      t('needs the slash before it', () => {
        expectFound(request(router, 'GET', '/static'), 'catch-all', { '*': 'static' });
      });
      t('longer prefix wins', () => {
        expectFound(request(router, 'GET', '/static/css/site.css'), 'static-css', { '*': 'site.css' });
      });
      t('static beats wildcard', () => expectFound(request(router, 'GET', '/static/logo.png'), 'static-logo'));
      t('param beats wildcard, wildcard takes what the param cannot', () => {
        expectFound(request(router, 'GET', '/u/7'), 'user', { id: '7' });
        expectFound(request(router, 'GET', '/u/7/x'), 'u-any', { '*': '7/x' });
        expectFound(request(router, 'GET', '/u/'), 'u-any', { '*': '' });
      });
      t('catch-all', () => {
        expectFound(request(router, 'GET', '/'), 'catch-all', { '*': '' });
        expectFound(request(router, 'GET', '/nothing/else'), 'catch-all', { '*': 'nothing/else' });
      });
      t('encoded slash in the wildcard stays encoded', () => {
        expectFound(request(router, 'GET', '/static/a%2fb/c'), 'static-all', { '*': 'a%2Fb/c' });
      });
    });

    d('backtracking', () => {
      const router = newRouter([
        route('me', '/users/me'),
        route('posts', '/users/:id/posts'),
        route('abc', '/a/b/c'),
        route('axd', '/a/:x/d'),
        route('ybd', '/:y/b/e'),
        route('deep-static', '/x/y/z/w'),
        route('deep-wild', '/x/*'),
      ]);
      t('static first, then param on failure', () => {
        expectFound(request(router, 'GET', '/users/me'), 'me');
        expectFound(request(router, 'GET', '/users/me/posts'), 'posts', { id: 'me' });
      });
      t('backtracks more than one level', () => {
        expectFound(request(router, 'GET', '/a/b/c'), 'abc');
        expectFound(request(router, 'GET', '/a/b/d'), 'axd', { x: 'b' });
        expectFound(request(router, 'GET', '/a/b/e'), 'ybd', { y: 'a' });
      });
      t('deep static miss falls back to the wildcard', () => {
        expectFound(request(router, 'GET', '/x/y/z/w'), 'deep-static');
        expectFound(request(router, 'GET', '/x/y/z/v'), 'deep-wild', { '*': 'y/z/v' });
        expectFound(request(router, 'GET', '/x/y/z'), 'deep-wild', { '*': 'y/z' });
      });
      t('no match at all', () => expectNone(request(router, 'GET', '/users/me/comments')));
    });

    d('priority', () => {
      const router = newRouter([
        route('me', '/users/me'),
        route('any-user', '/users/:id', { priority: 10 }),
        route('low-static', '/p/q'),
        route('high-wild', '/p/*', { priority: 1 }),
        route('exact-host', '/h', { host: 'api.example.com' }),
        route('any-host-high', '/h', { priority: 5 }),
        route('neg', '/n/:x', { priority: -1 }),
        route('zero-wild', '/n/*'),
      ]);
      t('higher priority beats a more specific path', () => {
        expectFound(request(router, 'GET', '/users/me'), 'any-user', { id: 'me' });
        expectFound(request(router, 'GET', '/p/q'), 'high-wild', { '*': 'q' });
      });
      t('higher priority beats a more exact host', () => {
        expectFound(request(router, 'GET', '/h', { host: 'api.example.com' }), 'any-host-high');
      });
      t('negative priority loses to the default', () => {
        expectFound(request(router, 'GET', '/n/1'), 'zero-wild', { '*': '1' });
      });
    });

    d('methods', () => {
      const router = newRouter([
        route('get-r', '/r'),
        route('del-r', '/r', { methods: ['DELETE'] }),
        route('any', '/any', { methods: [] }),
        route('head-explicit', '/h', { methods: ['HEAD'] }),
        route('get-h', '/h'),
        route('get-h2', '/h2'),
        route('head-h2', '/h2', { methods: ['HEAD'] }),
        route('get-h3', '/h3/:x'),
        route('head-h3', '/h3/:y', { methods: ['HEAD', 'POST'] }),
        route('me-get', '/users/me'),
        route('user-del', '/users/:id', { methods: ['DELETE'] }),
        route('purge', '/cache/:key', { methods: ['PURGE', 'POST'] }),
        route('multi', '/m', { methods: ['PUT', 'PATCH', 'POST'] }),
      ]);
      t('method picks the route', () => {
        expectFound(request(router, 'GET', '/r'), 'get-r');
        expectFound(request(router, 'DELETE', '/r'), 'del-r');
      });
      t('405 with the sorted union of configured methods', () => {
        expect405(request(router, 'PUT', '/r'), 'DELETE, GET');
        expect405(request(router, 'GET', '/m'), 'PATCH, POST, PUT');
      });
      t('GET implies HEAD; Allow lists only what is configured', () => {
        expectFound(request(router, 'HEAD', '/r'), 'get-r');
        expect405(request(router, 'POST', '/users/me'), 'DELETE, GET');
      });
      t('an explicit HEAD route beats the GET one', () => {
        expectFound(request(router, 'HEAD', '/h'), 'head-explicit');
        expectFound(request(router, 'GET', '/h'), 'get-h');
        expectFound(request(router, 'HEAD', '/h2'), 'head-h2');
        expectFound(request(router, 'GET', '/h2'), 'get-h2');
        expectFound(request(router, 'HEAD', '/h3/1'), 'head-h3', { y: '1' });
        expectFound(request(router, 'GET', '/h3/1'), 'get-h3', { x: '1' });
      });
      t('no method list = every method, even unknown ones', () => {
        expectFound(request(router, 'PATCH', '/any'), 'any');
        expectFound(request(router, 'WHATEVER', '/any'), 'any');
      });
      t('method mismatch on the static route backtracks to the param route', () => {
        expectFound(request(router, 'DELETE', '/users/me'), 'user-del', { id: 'me' });
        expectFound(request(router, 'GET', '/users/me'), 'me-get');
      });
      t('non-standard methods', () => {
        expectFound(request(router, 'PURGE', '/cache/k1'), 'purge', { key: 'k1' });
        expect405(request(router, 'GET', '/cache/k1'), 'POST, PURGE');
        expect405(request(router, 'MKCOL', '/r'), 'DELETE, GET');
      });
      t('404 stays 404 whatever the method', () => expectNone(request(router, 'POST', '/missing')));
    });

    d('predicates', () => {
      const router = newRouter([
        route('api-v2', '/api', { headers: [['x-api-version', '2']] }),
        route('api', '/api'),
        route('api-v3-beta', '/api', { headers: [['x-api-version', '3'], ['x-beta', '1']] }),
        route('api-v3', '/api', { headers: [['x-api-version', '3']] }),
        route('q-json', '/q/:id', { query: [['format', 'json']] }),
        route('q-space', '/q/:id', { query: [['name', 'a b']] }),
        route('q', '/q/:id'),
        route('only-h', '/o/only', { headers: [['x-key', 'k']] }),
        route('only-h-post', '/o/only', { methods: ['POST'] }),
        route('static-h', '/s', { headers: [['x-t', '1']] }),
        route('param-s', '/:x'),
      ]);
      t('header predicate selects the route, else fallback', () => {
        expectFound(request(router, 'GET', '/api', { headers: ['x-api-version', '2'] }), 'api-v2');
        expectFound(request(router, 'GET', '/api', { headers: ['x-api-version', '9'] }), 'api');
        expectFound(request(router, 'GET', '/api'), 'api');
      });
      t('more predicates first', () => {
        expectFound(request(router, 'GET', '/api', { headers: ['x-api-version', '3', 'x-beta', '1'] }), 'api-v3-beta');
        expectFound(request(router, 'GET', '/api', { headers: ['x-beta', '1', 'x-api-version', '3'] }), 'api-v3-beta');
        expectFound(request(router, 'GET', '/api', { headers: ['x-api-version', '3'] }), 'api-v3');
      });
      t('any header line with that name may match', () => {
        expectFound(request(router, 'GET', '/api', { headers: ['x-api-version', '1', 'x-api-version', '2'] }), 'api-v2');
      });
      t('query predicate, decoded values', () => {
        expectFound(request(router, 'GET', '/q/1?format=json'), 'q-json', { id: '1' });
        expectFound(request(router, 'GET', '/q/1?a=b&format=json&c'), 'q-json', { id: '1' });
        expectFound(request(router, 'GET', '/q/1?name=a%20b'), 'q-space', { id: '1' });
        expectFound(request(router, 'GET', '/q/1?%6Eame=a%20b'), 'q-space', { id: '1' });
        expectFound(request(router, 'GET', '/q/1?format=xml'), 'q', { id: '1' });
        expectFound(request(router, 'GET', '/q/1?name=a+b'), 'q', { id: '1' });
      });
      t('badly encoded query never matches and never throws', () => {
        expectFound(request(router, 'GET', '/q/1?name=a%2'), 'q', { id: '1' });
        expectFound(request(router, 'GET', '/q/1?format=%E0%A4%A'), 'q', { id: '1' });
        expectFound(request(router, 'GET', '/q/1?format=%C0%AE'), 'q', { id: '1' });
        expectFound(request(router, 'GET', '/q/1?%=json&format=json'), 'q-json', { id: '1' });
      });
      t('failed predicates fall through to less specific paths', () => {
        expectFound(request(router, 'GET', '/s', { headers: ['x-t', '1'] }), 'static-h');
        expectFound(request(router, 'GET', '/s'), 'param-s', { x: 's' });
      });
      t('405 only counts routes whose predicates hold', () => {
        // GET /o/only needs x-key; without it only the POST route matches the path.
        expect405(request(router, 'GET', '/o/only'), 'POST');
        expectFound(request(router, 'GET', '/o/only', { headers: ['x-key', 'k'] }), 'only-h');
        expect405(request(router, 'PUT', '/o/only', { headers: ['x-key', 'k'] }), 'GET, POST');
      });
    });

    d('hosts', () => {
      const router = newRouter([
        route('exact', '/h', { host: 'api.example.com' }),
        route('wild', '/h', { host: '*.example.com' }),
        route('wild-deep', '/h', { host: '*.eu.example.com' }),
        route('any', '/h'),
        route('exact-only', '/only-exact', { host: 'api.example.com' }),
        route('any-fallback', '/fallback'),
        route('v6', '/h', { host: '[::1]' }),
        route('wild-other', '/o', { host: '*.other.org' }),
      ]);
      t('exact > wildcard > any', () => {
        expectFound(request(router, 'GET', '/h', { host: 'api.example.com' }), 'exact');
        expectFound(request(router, 'GET', '/h', { host: 'www.example.com' }), 'wild');
        expectFound(request(router, 'GET', '/h', { host: 'example.org' }), 'any');
      });
      t('longer wildcard suffix first; wildcards match any depth but not the apex', () => {
        expectFound(request(router, 'GET', '/h', { host: 'x.eu.example.com' }), 'wild-deep');
        expectFound(request(router, 'GET', '/h', { host: 'a.b.c.example.com' }), 'wild');
        expectFound(request(router, 'GET', '/h', { host: 'example.com' }), 'any');
        expectFound(request(router, 'GET', '/h', { host: 'eu.example.com' }), 'wild');
        expectFound(request(router, 'GET', '/h', { host: 'badexample.com' }), 'any');
      });
      t('host is normalised: case, port, trailing dot, IPv6', () => {
        expectFound(request(router, 'GET', '/h', { host: 'API.Example.COM:8443' }), 'exact');
        expectFound(request(router, 'GET', '/h', { host: 'api.example.com.' }), 'exact');
        expectFound(request(router, 'GET', '/h', { host: '[::1]:8080' }), 'v6');
      });
      t('a route only matches its host', () => {
        expectFound(request(router, 'GET', '/only-exact', { host: 'api.example.com' }), 'exact-only');
        expectNone(request(router, 'GET', '/only-exact', { host: 'www.example.com' }));
        expectNone(request(router, 'GET', '/o', { host: 'other.org' }));
        expectFound(request(router, 'GET', '/o', { host: 'a.other.org' }), 'wild-other');
      });
      t('an exact host falls back to `*` routes for other paths', () => {
        expectFound(request(router, 'GET', '/fallback', { host: 'api.example.com' }), 'any-fallback');
      });
      t('missing Host only matches `*` routes', () => {
        const res = request(router, 'GET', '/h', { host: '' });
        expectFound(res, 'any');
      });
    });

    d('many wildcard hosts', () => {
      const routes = Array.from({ length: 20 }, (_, i) => route(`t${i}`, '/x', { host: `*.t${i}.example.net` }));
      routes.push(route('wide', '/x', { host: '*.example.net' }));
      const router = newRouter(routes);
      t('label-by-label lookup keeps the longest suffix first', () => {
        expectFound(request(router, 'GET', '/x', { host: 'a.t7.example.net' }), 't7');
        expectFound(request(router, 'GET', '/x', { host: 'a.b.t19.example.net' }), 't19');
        expectFound(request(router, 'GET', '/x', { host: 't7.example.net' }), 'wide');
        expectNone(request(router, 'GET', '/x', { host: 'example.net' }));
      });
    });

    d('path normalisation in routing', () => {
      const router = newRouter([
        route('admin', '/admin'),
        route('public', '/public/*'),
        route('file', '/files/:name'),
      ]);
      t('an encoded slash cannot climb out of a prefix', () => {
        expectFound(request(router, 'GET', '/public/..%2fadmin'), 'public', { '*': '..%2Fadmin' });
        expectFound(request(router, 'GET', '/public/..%2F..%2Fadmin'), 'public', { '*': '..%2F..%2Fadmin' });
      });
      t('dot segments are resolved before routing', () => {
        expectFound(request(router, 'GET', '/public/../admin'), 'admin');
        expectFound(request(router, 'GET', '/public/%2e%2e/admin'), 'admin');
        expectFound(request(router, 'GET', '/public/.%2E/admin'), 'admin');
        expectFound(request(router, 'GET', '/../../admin'), 'admin');
        expectFound(request(router, 'GET', '/./admin'), 'admin');
      });
      t('unreserved escapes are decoded', () => {
        expectFound(request(router, 'GET', '/%61dmin'), 'admin');
        expectFound(request(router, 'GET', '/files/%41%42'), 'file', { name: 'AB' });
      });
      t('bad paths never reach the router', () => {
        expect(request(router, 'GET', '/admin%00')).toBe(BAD_PATH);
        expect(request(router, 'GET', '/a\\..\\admin')).toBe(BAD_PATH);
        expect(request(router, 'GET', '/%zz')).toBe(BAD_PATH);
        expect(request(router, 'GET', '/admin\u00e9')).toBe(BAD_PATH);
        expect(request(router, 'GET', 'admin')).toBe(BAD_PATH);
      });
    });

    d('github API table', () => {
      const router = newRouter(githubRouteInputs());
      t('every configured route matches itself', () => {
        for (const g of githubRoutes) {
          const path = g.path.replace(/:(\w+)/g, 'x-$1').replace(/\*$/, 'a/b');
          const res = request(router, g.method, path);
          expect(res, `${g.method} ${path}`).not.toBeNull();
          expect((res as CaseResult).data, `${g.method} ${path}`).toBe(g.path);
        }
      });
      t('every request of the table gets its expected route', () => {
        expect(githubRequests.length).toBeGreaterThan(30);
        for (const g of githubRequests) {
          const res = request(router, g.method, g.path);
          if (g.expect === null) {
            // A miss: no route (404), or a path that exists for other methods (405).
            const found = res !== null && res !== BAD_PATH && res.kind === MATCH_FOUND;
            expect(found, `${g.method} ${g.path} should not match`).toBe(false);
          } else {
            expect(res, `${g.method} ${g.path}`).not.toBeNull();
            expect((res as CaseResult).kind).toBe(MATCH_FOUND);
            expect((res as CaseResult).data, `${g.method} ${g.path}`).toBe(g.expect);
          }
        }
      });
      t('params of a deep request', () => {
        expectFound(request(router, 'DELETE', '/repos/honojs/hono/issues/123/labels/bug'), '/repos/:owner/:repo/issues/:number/labels/:name', {
          owner: 'honojs', repo: 'hono', number: '123', name: 'bug',
        });
      });
      t('a method the path does not have is 405', () => {
        expect405(request(router, 'PATCH', '/user'), 'GET');
        expect405(request(router, 'POST', '/gists/1/star'), 'DELETE, GET, PUT');
      });
      t('wildcards of the table', () => {
        expectFound(request(router, 'GET', '/repos/acme/api/git/refs/heads/main'), '/repos/:owner/:repo/git/refs/*', {
          owner: 'acme', repo: 'api', '*': 'heads/main',
        });
      });
    });
  });
}
