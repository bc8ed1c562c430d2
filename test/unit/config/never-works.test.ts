/**
 * What validate refuses because it can never work (unknown methods, methods
 * the uWS backend cannot receive, `{id}` parameters, spaces in a path) and
 * what it only warns about (unused upstreams, no routes, match.headers names
 * uWS never receives).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { validateConfig } from '../../../common/config/load.js';
import { EXTENSION_METHODS, STANDARD_METHODS } from '../../../common/config/validate.js';
import { WORKER_CHECKS } from '../../../workers/config-check.js';
import { lines, valid } from './helpers.js';

function route(over: Record<string, unknown>, server: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    server,
    upstreams: { u: { targets: ['http://127.0.0.1:9001'] } },
    routes: [{ id: 'r', path: '/r', upstream: 'u', ...over }],
  };
}

function warnings(doc: unknown): string[] {
  const r = validateConfig(doc, WORKER_CHECKS);
  if (!r.ok) throw new Error(r.errors.map((e) => `${e.path}: ${e.message}`).join('\n'));
  return r.warnings.map((w) => `${w.path}: ${w.message}`);
}

const savedUws = process.env['TURNPIKE_UWS_MODULE'];
afterEach(() => {
  if (savedUws === undefined) delete process.env['TURNPIKE_UWS_MODULE'];
  else process.env['TURNPIKE_UWS_MODULE'] = savedUws;
});

describe('HTTP methods', () => {
  it('standard methods, in any case, are fine on both backends', () => {
    for (const backend of ['uws', 'bun', 'auto']) {
      expect(valid(route({ methods: [...STANDARD_METHODS] }, { backend })).routes[0]!.methods).toHaveLength(STANDARD_METHODS.length);
      valid(route({ methods: ['get', 'Post'] }, { backend }));
    }
  });

  it('an unknown method is refused with a did-you-mean and the standard list', () => {
    expect(lines(route({ methods: ['GET', 'GTE'] }))).toEqual([
      'routes[0].methods[1]: unknown HTTP method "GTE" (did you mean "GET"?): not a method this gateway routes (uWS and Bun close the connection on it). Use a standard method: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE',
    ]);
    expect(lines(route({ methods: ['FETCH'] }, { backend: 'bun' }))[0]).toMatch(/^routes\[0\]\.methods\[0\]: unknown HTTP method "FETCH": not a method this gateway routes/);
    expect(lines(route({ methods: ['X-CUSTOM'] }))[0]).toMatch(/unknown HTTP method "X-CUSTOM"/);
  });

  it('an extension method is refused on the uWS backend (closed before the gateway sees it), accepted on Bun', () => {
    expect(lines(route({ methods: ['PURGE'] }, { backend: 'uws' }))).toEqual([
      'routes[0].methods[0]: PURGE can never reach this route on the uWS backend: this uWebSockets.js build closes the connection on extension methods before the gateway sees the request. Remove it, or use server.backend: node (or bun), which receives PURGE',
    ]);
    // Also next to methods that work: that entry still never works.
    expect(lines(route({ methods: ['GET', 'propfind'] }))).toHaveLength(1);
    // "auto" on Node is uWS.
    expect(lines(route({ methods: ['PURGE'] }))[0]).toMatch(/PURGE can never reach this route on the uWS backend/);
    for (const m of EXTENSION_METHODS) valid(route({ methods: [m] }, { backend: 'bun' }));
  });

  it('with TURNPIKE_UWS_MODULE (another uWS build) an extension method is a warning, not a refusal', () => {
    process.env['TURNPIKE_UWS_MODULE'] = '/opt/uws-build';
    expect(warnings(route({ methods: ['PURGE'] }))).toEqual([
      'routes[0].methods[0]: PURGE: the bundled uWebSockets.js build closes the connection on extension methods; TURNPIKE_UWS_MODULE names another build, so check that it receives PURGE',
    ]);
  });

  it('CONNECT keeps its own message', () => {
    expect(lines(route({ methods: ['CONNECT'] }))).toEqual([
      'routes[0].methods[0]: CONNECT cannot be routed: the gateway does not tunnel (it answers 501 not_implemented)',
    ]);
  });
});

describe('route paths', () => {
  it('{id}-style parameters are refused with the :id form', () => {
    expect(lines(route({ path: '/users/{id}' }))).toEqual([
      'routes[0].path: "{id}" is not a path parameter here, it would only match those characters literally: write ":id" (e.g. "/users/:id"). {name} placeholders belong in rewrite.template',
    ]);
    expect(lines(route({ path: '/users/{id:[0-9]+}' }))[0]).toContain('write ":id([0-9]+)"');
    expect(lines(route({ path: '/files/{*path}' }))[0]).toContain('a trailing wildcard is written "*"');
    expect(lines(route({ path: '/a/{}' }))[0]).toContain('parameters are written ":name"');
  });

  it('braces inside a :name(regex) constraint are the regex\'s own', () => {
    valid(route({ path: '/users/:id(^[0-9]{2,4}$)' }), WORKER_CHECKS);
  });

  it('a space in a path is refused with the %20 hint', () => {
    expect(lines(route({ path: '/api /users' }))).toEqual([
      'routes[0].path: contains a space, which no request path carries raw (clients send a space as %20); remove it, or write %20 if the path really has a space',
    ]);
    valid(route({ path: '/my%20files/*' }), WORKER_CHECKS);
  });
});

describe('warnings', () => {
  it('none for a tidy config', () => {
    expect(warnings(route({}))).toEqual([]);
  });

  it('an upstream no route uses', () => {
    const doc = route({});
    (doc['upstreams'] as Record<string, unknown>)['old'] = { targets: ['http://127.0.0.1:9002'] };
    expect(warnings(doc)).toEqual(['upstreams.old: no route uses this upstream; point a route at it (routes[].upstream: "old") or remove it']);
  });

  it('an empty route list', () => {
    expect(warnings({ upstreams: {}, routes: [] })).toEqual([
      'routes: no routes: every request will be answered 404 route_not_found; add a route under "routes" (turnpike init prints an example)',
    ]);
    expect(warnings({})).toHaveLength(1);
  });

  it('match.headers names the uWS backend never receives (not on Bun)', () => {
    const doc = route({ match: { headers: { x_tenant: 'a', 'x.id': '1', 'x-ok': 'y' } } });
    expect(warnings(doc)).toEqual([
      'routes[0].match.headers.x_tenant: the uWS backend never receives a header named "x_tenant" (this uWebSockets.js build stalls a request whose header names have characters other than letters, digits and "-"), so this route can never match there; match on a name such as "x-tenant", or run on Bun (server.backend: bun)',
      'routes[0].match.headers["x.id"]: the uWS backend never receives a header named "x.id" (this uWebSockets.js build stalls a request whose header names have characters other than letters, digits and "-"), so this route can never match there; match on a name such as "x-id", or run on Bun (server.backend: bun)',
    ]);
    expect(warnings({ ...doc, server: { backend: 'bun' } })).toEqual([]);
  });

  it('an invalid config has errors, not warnings', () => {
    const r = validateConfig({ upstreams: { old: { targets: ['http://a:1'] } }, routes: [{ id: 'r', path: '/', upstream: 'nope' }] });
    expect(r.ok).toBe(false);
    expect('warnings' in r).toBe(false);
  });
});
