// Router adapters. Adding a router is ONE entry: `build(routes)` registers
// every route (`{ method, path, data }`, path in find-my-way syntax: `:name`
// params, trailing `*` wildcard) and returns `find(method, path)`, which must
// return the matched route's `data` (its pattern string), or null/undefined on
// a miss. The wrapper does only what a server must do with the router's
// answer anyway: pick the route out of the result.
//
// `classes`: the request classes the router can answer (Map.get knows only
// static paths); `datasets`: where it runs (default all).
import { existsSync, readFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createRequire } from 'node:module';

const BENCH_DIR = join(dirname(fileURLToPath(import.meta.url)), '..');
const TURNPIKE_ROUTER = join(process.env.TURNPIKE_DIST || join(BENCH_DIR, '..', 'dist'), 'workers/router/compile.js');
const require = createRequire(join(BENCH_DIR, 'package.json'));

// Read from node_modules: some packages do not export ./package.json.
export function pkgVersion(name) {
  try {
    return JSON.parse(readFileSync(join(BENCH_DIR, 'node_modules', name, 'package.json'), 'utf8')).version;
  } catch {
    return null;
  }
}

const isStatic = (p) => !p.includes(':') && !p.includes('*');

export const ADAPTERS = [
  {
    name: 'turnpike',
    label: 'turnpike compileRouter',
    version: () => 'workspace',
    skip: () => (existsSync(TURNPIKE_ROUTER) ? null : `not built: run npm run build (no ${TURNPIKE_ROUTER})`),
    async load() {
      const { compileRouter } = await import(pathToFileURL(TURNPIKE_ROUTER).href);
      return (routes) => {
        const router = compileRouter(
          routes.map((r, i) => ({
            id: `r${i}`,
            host: '*',
            path: r.path,
            methods: [r.method],
            priority: 0,
            match: { headers: [], query: [] },
            data: r.data,
          })),
        );
        const noHeaders = [];
        // A 405 answer (path known, method not) carries data null: a miss.
        return (method, path) => {
          const m = router.find(method, 'localhost', path, noHeaders, '');
          return m === null ? null : m.data;
        };
      };
    },
  },
  {
    name: 'map',
    label: 'Map.get (static floor)',
    version: () => `node ${process.version}`,
    classes: ['static', 'miss'],
    // The synthetic table has no static route: nothing to be a floor of.
    datasets: ['github'],
    async load() {
      return (routes) => {
        const byMethod = Object.create(null);
        for (const r of routes) {
          // Only static paths: a Map cannot answer a param route.
          if (!isStatic(r.path)) continue;
          (byMethod[r.method] ??= new Map()).set(r.path, r.data);
        }
        return (method, path) => {
          const m = byMethod[method];
          return m === undefined ? undefined : m.get(path);
        };
      };
    },
  },
  {
    name: 'find-my-way',
    label: 'find-my-way',
    version: () => pkgVersion('find-my-way'),
    async load() {
      const FindMyWay = (await import('find-my-way')).default;
      return (routes) => {
        const router = FindMyWay();
        const handler = () => {};
        for (const r of routes) router.on(r.method, r.path, handler, r.data);
        return (method, path) => {
          const m = router.find(method, path);
          return m === null ? null : m.store;
        };
      };
    },
  },
  {
    name: 'hono-regexp',
    label: 'hono RegExpRouter',
    version: () => pkgVersion('hono'),
    async load() {
      const { RegExpRouter } = await import('hono/router/reg-exp-router');
      return (routes) => {
        const router = new RegExpRouter();
        for (const r of routes) router.add(r.method, r.path, r.data);
        // match() returns every matching handler (middleware semantics) in
        // registration order; a server takes the first.
        return (method, path) => {
          const h = router.match(method, path)[0];
          return h.length === 0 ? null : h[0][0];
        };
      };
    },
  },
  {
    name: 'hono-trie',
    label: 'hono TrieRouter',
    version: () => pkgVersion('hono'),
    async load() {
      const { TrieRouter } = await import('hono/router/trie-router');
      return (routes) => {
        const router = new TrieRouter();
        for (const r of routes) router.add(r.method, r.path, r.data);
        return (method, path) => {
          const h = router.match(method, path)[0];
          return h.length === 0 ? null : h[0][0];
        };
      };
    },
  },
  {
    name: 'rou3',
    label: 'rou3 compileRouter',
    version: () => pkgVersion('rou3'),
    async load() {
      const { createRouter, addRoute } = await import('rou3');
      const { compileRouter } = await import('rou3/compiler');
      return (routes) => {
        const router = createRouter();
        // rou3 1.x: a trailing `*` matches the rest of the path, as in
        // find-my-way; no rewrite needed.
        for (const r of routes) addRoute(router, r.method, r.path, r.data);
        const match = compileRouter(router);
        return (method, path) => {
          const m = match(method, path);
          return m === undefined ? null : m.data;
        };
      };
    },
  },
  {
    name: 'memoirist',
    label: 'memoirist',
    version: () => pkgVersion('memoirist'),
    async load() {
      const { Memoirist } = await import('memoirist');
      return (routes) => {
        const router = new Memoirist();
        for (const r of routes) router.add(r.method, r.path, r.data);
        return (method, path) => {
          const m = router.find(method, path);
          return m === null ? null : m.store;
        };
      };
    },
  },
  {
    name: 'koa-tree-router',
    label: 'koa-tree-router',
    version: () => pkgVersion('koa-tree-router'),
    async load() {
      const Router = require('koa-tree-router');
      return (routes) => {
        const router = new Router();
        // httprouter syntax: the catch-all must be named (`*rest`).
        for (const r of routes) router.on(r.method, r.path.replace(/\*$/, '*rest'), r.data);
        return (method, path) => {
          const m = router.find(method, path);
          return m.handle === null ? null : m.handle[0];
        };
      };
    },
  },
  {
    name: 'medley',
    label: '@medley/router',
    version: () => pkgVersion('@medley/router'),
    async load() {
      const Router = require('@medley/router');
      return (routes) => {
        const router = new Router();
        for (const r of routes) router.register(r.path)[r.method] = r.data;
        // Path-only router: the method is looked up in the route's store.
        return (method, path) => {
          const m = router.find(path);
          if (m === null) return null;
          const d = m.store[method];
          return d === undefined ? null : d;
        };
      };
    },
  },
];

export function selectAdapters(filter) {
  if (!filter) return ADAPTERS;
  const want = filter.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = want.filter((w) => !ADAPTERS.some((a) => a.name === w));
  if (unknown.length) throw new Error(`unknown router(s) ${unknown.join(', ')}; known: ${ADAPTERS.map((a) => a.name).join(', ')}`);
  return ADAPTERS.filter((a) => want.includes(a.name));
}
