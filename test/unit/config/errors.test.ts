import { describe, expect, it } from 'vitest';
import { formatErrors, loadConfigText, validateConfig } from '../../../common/config/load.js';
import { didYouMean, editDistance, formatPath } from '../../../common/config/util.js';
import { errorsOf, lines, minimal } from './helpers.js';
import { validateRoutePattern } from '../../../workers/router/compile.js';

function withServer(server: unknown): Record<string, unknown> {
  return { ...minimal(), server };
}

function withUpstream(up: unknown): Record<string, unknown> {
  return { ...minimal(), upstreams: { users: up } };
}

function withRoute(route: Record<string, unknown>): Record<string, unknown> {
  return { ...minimal(), routes: [{ id: 'r', path: '/x', upstream: 'users', ...route }] };
}

describe('schema errors: readable path and message', () => {
  it('top level must be a mapping; empty config', () => {
    expect(lines(null)).toEqual([': the config is empty']);
    expect(lines([1])).toEqual([': the config must be a mapping of sections (server, admin, upstreams, routes), got a list']);
  });

  it('unknown property with did-you-mean, or the known list', () => {
    expect(lines(withServer({ prot: 1 }))).toEqual(['server: unknown property "prot" (did you mean "port"?)']);
    expect(lines(withServer({ limits: { zzz: 1 } }))).toEqual([
      'server.limits: unknown property "zzz" (known: maxBodyBytes, maxUrlBytes, maxHeaderBytes, maxHeaderCount)',
    ]);
    expect(lines({ ...minimal(), sevrer: {} })).toEqual([': unknown property "sevrer" (did you mean "server"?)']);
  });

  it('renamed options get a migration hint', () => {
    expect(lines(withUpstream({ targets: ['http://a:1'], timeouts: { readMs: 5 } }))).toEqual([
      'upstreams.users.timeouts: unsupported property "readMs", use "responseMs" instead',
    ]);
    expect(lines(withRoute({ service: 'users' }))).toEqual(['routes[0]: unsupported property "service", use "upstream" instead']);
    expect(lines({ ...minimal(), ratelimits: {} })).toEqual([': unsupported property "ratelimits", use "rateLimits" instead']);
    expect(lines(withRoute({ rate_limit: [] }))).toEqual(['routes[0]: unsupported property "rate_limit", use "rateLimit" (a list) instead']);
  });

  it('missing required properties', () => {
    expect(lines({ upstreams: { users: {} } })).toEqual(['upstreams.users: missing required property "targets" (an upstream needs at least one source of targets: "targets", "dns" or "registry")']);
    expect(lines({ ...minimal(), routes: [{ id: 'x', path: '/' }] })).toEqual([
      'routes[0]: needs "upstream" (an upstream name) or "upstreams" (a weighted list such as [{ name: v1, weight: 90 }, { name: v2, weight: 10 }])',
    ]);
  });

  it('types, with what was given', () => {
    expect(lines(withServer({ port: '8080' }))).toEqual(['server.port: must be an integer (got "8080")']);
    expect(lines(withServer({ port: 1.5 }))).toEqual(['server.port: must be an integer (got 1.5)']);
    expect(lines({ ...minimal(), admin: { enabled: 'yes' } })).toEqual(['admin.enabled: must be true or false (got "yes")']);
    expect(lines({ ...minimal(), routes: {} })).toEqual(['routes: must be a list (got an object)']);
    expect(lines({ ...minimal(), routes: ['x'] })).toEqual(['routes[0]: must be a mapping (key: value) (got "x")']);
  });

  it('ranges name both bounds', () => {
    expect(lines(withServer({ port: 70000 }))).toEqual(['server.port: must be an integer from 0 to 65535 (got 70000)']);
    expect(lines(withServer({ port: -1 }))).toEqual(['server.port: must be an integer from 0 to 65535 (got -1)']);
    expect(lines(withUpstream({ targets: [{ url: 'http://a:1', weight: 0 }] }))).toEqual([
      'upstreams.users.targets[0].weight: must be an integer from 1 to 1000 (got 0)',
    ]);
    expect(lines(withUpstream({ targets: ['http://a:1'], pool: { maxConnections: 100001 } }))).toEqual([
      'upstreams.users.pool.maxConnections: must be an integer from 1 to 100000 (got 100001)',
    ]);
    expect(lines(withUpstream({ targets: ['http://a:1'], timeouts: { connectMs: 0, totalMs: 0 } }))).toEqual([
      'upstreams.users.timeouts.connectMs: must be an integer from 1 to 86400000 (got 0)',
    ]);
  });

  it('workers: "auto" or 1..256, reported from the branch that applies', () => {
    expect(lines(withServer({ workers: 0 }))).toEqual(['server.workers: must be an integer from 1 to 256 (got 0)']);
    expect(lines(withServer({ workers: 'many' }))).toEqual(['server.workers: must be "auto" or an integer from 1 to 256']);
    expect(lines(withServer({ workers: true }))).toEqual(['server.workers: must be "auto" or an integer from 1 to 256']);
  });

  it('enums list the allowed values and suggest the closest', () => {
    expect(lines(withUpstream({ targets: ['http://a:1'], balance: 'least-conn' }))).toEqual([
      'upstreams.users.balance: must be one of "round_robin", "least_conn", "random", "ip_hash", "p2c", "consistent_hash", "sticky" (got "least-conn") (did you mean "least_conn"?)',
    ]);
    expect(lines(withServer({ backend: 'nginx' }))).toEqual(['server.backend: must be one of "auto", "uws", "bun", "node" (got "nginx")']);
  });

  it('a target that is neither a string nor an object', () => {
    expect(lines(withUpstream({ targets: [8080] }))).toEqual([
      'upstreams.users.targets[0]: must be a URL string like "http://127.0.0.1:9001" or an object { url, weight }',
    ]);
    expect(lines(withUpstream({ targets: [] }))).toEqual(['upstreams.users.targets: must list at least one target; with "dns" or "registry" set, leave "targets" out']);
    // An object target is checked as an object (the string branch does not apply).
    expect(lines(withUpstream({ targets: [{ url: 'http://a:1', wieght: 2 }] }))).toEqual([
      'upstreams.users.targets[0]: unknown property "wieght" (did you mean "weight"?)',
    ]);
    expect(lines(withUpstream({ targets: 'http://a:1' }))).toEqual(['upstreams.users.targets: must be a list (got "http://a:1")']);
  });

  it('header names and values', () => {
    expect(lines(withServer({ headers: { request: { set: { 'bad name': 'x' } } } }))).toEqual([
      'server.headers.request.set["bad name"]: must be a valid header name (letters, digits and !#$%&\'*+-.^_`|~, no spaces or colons)',
    ]);
    expect(lines(withServer({ headers: { response: { add: { 'x-a': 'a\r\nx-injected: 1' } } } }))).toEqual([
      'server.headers.response.add.x-a: must not contain control characters (CR, LF, NUL, ...)',
    ]);
    expect(lines(withServer({ headers: { request: { remove: ['ok', 'x:y'] } } }))).toEqual([
      'server.headers.request.remove[1]: must be a valid header name (letters, digits and !#$%&\'*+-.^_`|~, no spaces or colons)',
    ]);
    expect(lines(withServer({ requestIdHeader: 'x id' }))[0]).toMatch(/^server\.requestIdHeader: must be a valid header name/);
  });

  it('host patterns', () => {
    for (const host of ['*', '*.example.com', 'api.example.com', 'localhost', '10.0.0.1', 'API.Example.COM']) {
      expect(validateConfig(withRoute({ host })).ok, host).toBe(true);
    }
    for (const host of ['http://x.com', 'x.com:8080', 'a.*.com', '*x.com', '-a.com', 'a..b', '']) {
      expect(lines(withRoute({ host })), host).toEqual([
        'routes[0].host: must be "*", a wildcard like "*.example.com" or a hostname like "api.example.com" (no port, no scheme)',
      ]);
    }
  });

  it('route path, methods, id, rewrite shape', () => {
    expect(lines(withRoute({ path: 'x' }))).toEqual(['routes[0].path: must start with "/"']);
    expect(lines(withRoute({ methods: ['GET', 'G T'] }))).toEqual(['routes[0].methods[1]: must be an HTTP method such as GET or POST']);
    expect(lines(withRoute({ methods: ['GET', 'GET'] }))).toEqual(['routes[0].methods: has the same item twice (items 0 and 1)']);
    expect(lines(withRoute({ id: 'has space' }))[0]).toMatch(/^routes\[0\]\.id: must be a route id/);
    expect(lines(withRoute({ rewrite: { stripPrefix: '/x', template: '/y' } }))).toEqual([
      'routes[0].rewrite: must set exactly one of stripPrefix, replacePrefix or template',
    ]);
    expect(lines(withRoute({ rewrite: {} }))).toEqual(['routes[0].rewrite: must set exactly one of stripPrefix, replacePrefix or template']);
    expect(lines(withRoute({ rewrite: { replacePrefix: { from: '/x' } } }))).toEqual([
      'routes[0].rewrite.replacePrefix: missing required property "to"',
    ]);
  });

  it('upstream names', () => {
    expect(lines({ upstreams: { 'bad name': { targets: ['http://a:1'] } } })).toEqual([
      'upstreams["bad name"]: must be a valid upstream name (letters, digits, "_", ".", ":" and "-", starting with a letter or digit)',
    ]);
  });
});

describe('target URL errors', () => {
  const cases: Array<[string, string]> = [
    ['https://a:1/x', 'must not have a path (got "/x"); use the route\'s rewrite to change the path'],
    ['ws://a:1', 'unsupported scheme "ws://"; only http:// and https:// upstreams are supported'],
    ['localhost:9001', 'must be an absolute http:// or https:// URL such as "http://127.0.0.1:9001" (got "localhost:9001")'],
    ['http://a:1/api', 'must not have a path (got "/api"); use the route\'s rewrite to change the path'],
    ['http://a:1/?x=1', 'must not have a query string'],
    ['http://a:1#f', 'must not have a fragment (#...)'],
    ['http://u:p@a:1', 'must not contain credentials (user:password@); set an Authorization header under headers.request.set instead'],
    ['http://a:0', 'port must be from 1 to 65535 (got 0)'],
    ['http://a:99999', 'is not a valid URL (got "http://a:99999"); expected http://host:port with a port from 1 to 65535'],
    ['http://a..b:1', 'host "a..b" is not a valid host name: it has an empty label (two dots in a row, or a leading dot)'],
    ['http://-bad-:1', 'host "-bad-" is not a valid host name: the label "-bad-" must be letters, digits, "-" and "_", not starting or ending with "-"'],
    ['http://a-.example:1', 'host "a-.example" is not a valid host name: the label "a-" must be letters, digits, "-" and "_", not starting or ending with "-"'],
    [`http://${'l'.repeat(64)}.example:1`, `host "${'l'.repeat(57)}..." is not a valid host name: the label "${'l'.repeat(20)}..." is 64 characters long (at most 63)`],
    [`http://${Array(50).fill('abcde').join('.')}:1`, `host "${Array(50).fill('abcde').join('.').slice(0, 57)}..." is not a valid host name: it is 299 characters long (at most 253)`],
  ];
  for (const [url, message] of cases) {
    it(url, () => {
      expect(errorsOf(withUpstream({ targets: [url] }))).toEqual([{ path: 'upstreams.users.targets[0]', message }]);
      expect(errorsOf(withUpstream({ targets: [{ url }] }))).toEqual([{ path: 'upstreams.users.targets[0].url', message }]);
    });
  }

  it('host names as services name themselves are accepted: underscores, a trailing dot, IPv4 in any form, IPv6', () => {
    for (const url of ['http://my_service:8080', 'http://users.default.svc.cluster.local.:9001', 'http://0x7f.1:80', 'http://[::1]:80', `http://${'l'.repeat(63)}:1`]) {
      expect(validateConfig(withUpstream({ targets: [url] })).ok, url).toBe(true);
    }
  });

  it('duplicate targets', () => {
    expect(lines(withUpstream({ targets: ['http://a:1', 'http://A:1/'] }))).toEqual([
      'upstreams.users.targets[1]: duplicate target http://a:1 (same as targets[0]); use weight to send it more traffic',
    ]);
  });
});

describe('semantic errors', () => {
  it('unknown upstream with did-you-mean', () => {
    const doc = { ...minimal(), routes: [0, 1, 2, 3].map((i) => ({ id: `r${i}`, path: '/', upstream: i === 3 ? 'usres' : 'users' })) };
    expect(lines(doc)).toEqual(['routes[3].upstream: unknown upstream "usres" (did you mean "users"?)']);
  });

  it('unknown upstream without a close name lists the known ones, or says there are none', () => {
    expect(lines(withRoute({ upstream: 'billing' }))).toEqual(['routes[0].upstream: unknown upstream "billing" (known: users)']);
    expect(lines({ routes: [{ id: 'a', path: '/', upstream: 'x' }] })).toEqual([
      'routes[0].upstream: unknown upstream "x" (no upstreams are defined; add one under "upstreams")',
    ]);
    // Object.prototype names are not upstreams.
    expect(lines(withRoute({ upstream: 'toString' }))).toEqual(['routes[0].upstream: unknown upstream "toString" (known: users)']);
  });

  it('duplicate route ids', () => {
    const doc = { ...minimal(), routes: [{ id: 'a', path: '/', upstream: 'users' }, { id: 'b', path: '/', upstream: 'users' }, { id: 'a', path: '/x', upstream: 'users' }] };
    expect(lines(doc)).toEqual(['routes[2].id: duplicate route id "a" (also routes[0].id)']);
  });

  it('route patterns go through the router validator when given', () => {
    const checkPattern = (p: string): string | null => (p.includes('::') ? 'empty parameter name' : null);
    expect(lines(withRoute({ path: '/a/::x' }), { checkPattern })).toEqual(['routes[0].path: empty parameter name']);
    expect(validateConfig(withRoute({ path: '/a/::x' })).ok).toBe(true);
    expect(validateConfig(withRoute({ path: '/a/:x' }), { checkPattern }).ok).toBe(true);
  });

  it('template placeholders must be params of the path', () => {
    expect(lines(withRoute({ path: '/users/:id', rewrite: { template: '/u/{idd}' } }))).toEqual([
      'routes[0].rewrite.template: placeholder {idd} is not a parameter of the route path (did you mean {id}?); parameters of "/users/:id": {id}',
    ]);
    expect(lines(withRoute({ path: '/users', rewrite: { template: '/u/{id}' } }))).toEqual([
      'routes[0].rewrite.template: placeholder {id} is not a parameter of the route path; the route path "/users" has no parameters',
    ]);
    expect(lines(withRoute({ path: '/users/:id', rewrite: { template: '/u/{id' } }))).toEqual([
      'routes[0].rewrite.template: has an unbalanced "{" or "}"',
    ]);
    const ok = ['/u/{id}/{*}', '/{org}-{id}'];
    expect(validateConfig(withRoute({ path: '/o/:org/u/:id(\\d+)/*', rewrite: { template: ok[0] } })).ok).toBe(true);
    expect(validateConfig(withRoute({ path: '/o/:org/:id((?:a|b)x)', rewrite: { template: ok[1] } })).ok).toBe(true);
  });

  it('prefix rewrites that can never apply', () => {
    expect(lines(withRoute({ path: '/api/*', rewrite: { stripPrefix: '/v1' } }))).toEqual([
      'routes[0].rewrite.stripPrefix: "/v1" is not a prefix of the route path "/api/*", so it would never apply',
    ]);
    expect(lines(withRoute({ path: '/api/*', rewrite: { replacePrefix: { from: '/b', to: '/c' } } }))).toEqual([
      'routes[0].rewrite.replacePrefix.from: "/b" is not a prefix of the route path "/api/*", so it would never apply',
    ]);
    expect(validateConfig(withRoute({ path: '/api/*', rewrite: { stripPrefix: '/api' } })).ok).toBe(true);
  });

  it('framing headers cannot be set or added; set names are case-insensitive', () => {
    expect(lines(withRoute({ headers: { request: { set: { 'Content-Length': '1' }, add: { connection: 'x' } } } }))).toEqual([
      'routes[0].headers.request.set.Content-Length: header "content-length" is managed by the gateway (message framing / hop-by-hop) and cannot be set',
      'routes[0].headers.request.add.connection: header "connection" is managed by the gateway (message framing / hop-by-hop) and cannot be added',
    ]);
    expect(lines(withUpstream({ targets: ['http://a:1'], headers: { response: { set: { 'X-A': '1', 'x-a': '2' } } } }))).toEqual([
      'upstreams.users.headers.response.set.x-a: header "x-a" is already set as "X-A" (header names are case-insensitive)',
    ]);
  });

  it('admin and server on the same port', () => {
    expect(lines({ ...minimal(), server: { port: 9000 }, admin: { port: 9000 } })).toEqual([
      'admin.port: same port as server.port (9000); choose another port or set admin.enabled: false',
    ]);
    expect(validateConfig({ ...minimal(), server: { port: 9000 }, admin: { port: 9000, enabled: false } }).ok).toBe(true);
    expect(validateConfig({ ...minimal(), server: { port: 0 }, admin: { port: 0 } }).ok).toBe(true);
  });

  it('reports schema and semantic problems together', () => {
    const doc = {
      server: { port: 'x' },
      upstreams: { users: { targets: ['ftp://a:1'] } },
      routes: [{ id: 'a', path: '/', upstream: 'usres' }, { id: 'a', path: '/', upstream: 'users' }],
    };
    expect(lines(doc)).toEqual([
      'server.port: must be an integer (got "x")',
      'upstreams.users.targets[0]: unsupported scheme "ftp://"; only http:// and https:// upstreams are supported',
      'routes[0].upstream: unknown upstream "usres" (did you mean "users"?)',
      'routes[1].id: duplicate route id "a" (also routes[0].id)',
    ]);
  });
});

describe('helpers', () => {
  it('formatErrors prints one problem per line', () => {
    expect(formatErrors([{ path: 'server.port', message: 'bad' }, { path: '', message: 'file missing' }])).toBe('server.port: bad\nfile missing');
  });

  it('formatPath quotes keys that are not plain', () => {
    expect(formatPath(['routes', 3, 'upstream'])).toBe('routes[3].upstream');
    expect(formatPath(['upstreams', 'users', 'targets', 0, 'url'])).toBe('upstreams.users.targets[0].url');
    expect(formatPath(['set', 'a b', 'x.y'])).toBe('set["a b"]["x.y"]');
  });

  it('edit distance counts a transposition as one edit', () => {
    expect(editDistance('usres', 'users')).toBe(1);
    expect(editDistance('kitten', 'sitting')).toBe(3);
    expect(didYouMean('usres', ['orders', 'users'])).toBe('users');
    expect(didYouMean('zzzzzz', ['users'])).toBeNull();
  });
});

describe('headers the gateway writes itself cannot be configured (found by test/property)', () => {
  it.each(['transfer-encoding', 'content-length', 'host', 'connection', 'authorization', 'cookie', 'date', 'proxy-foo'])(
    'server.requestIdHeader %s is refused', (name) => {
      expect(lines(withServer({ requestIdHeader: name }))[0]).toMatch(/^server\.requestIdHeader: ".*" is a header the gateway or HTTP itself gives a meaning/);
    });

  it.each([
    ['host', /the gateway sends the target's host/], ['expect', /answers Expect itself/], ['x-forwarded-for', /server\.forwarded\.xForwardedFor/],
    ['X-Forwarded-Host', /xForwardedProtoHost/], ['forwarded', /server\.forwarded\.forwarded/], ['x-request-id', /carries the request id/],
  ])('request rule naming %s is refused, saying why', (name, why) => {
    for (const op of ['set', 'add']) {
      const errs = lines(withRoute({ headers: { request: { [op]: { [name]: 'v' } } } }));
      expect(errs).toHaveLength(1);
      expect(errs[0]).toMatch(new RegExp(`^routes\\[0\\]\\.headers\\.request\\.${op}\\.${name}: header "${name.toLowerCase()}" cannot be`));
      expect(errs[0]).toMatch(why);
    }
  });

  it('response rules naming date or uWebSockets are refused (this build writes them itself)', () => {
    expect(lines(withServer({ headers: { response: { set: { Date: 'x' } } } }))).toEqual([
      'server.headers.response.set.Date: header "date" cannot be set: the server writes its own Date on every response (the upstream\'s is dropped)',
    ]);
    expect(lines(withUpstream({ targets: ['http://a:1'], headers: { response: { add: { uWebSockets: '1' } } } }))[0]).toMatch(/uWebSockets writes this header itself/);
  });

  it('removing a managed header stays allowed (it is dropped anyway)', () => {
    expect(validateConfig(withRoute({ headers: { request: { remove: ['host', 'x-forwarded-for'] }, response: { remove: ['date'] } } })).ok).toBe(true);
  });

  it('a port clash with the admin default names the key the document has', () => {
    expect(lines(withServer({ port: 9901 }))).toEqual([
      'server.port: 9901 is the admin listener\'s default port (admin.port); choose another server.port, set admin.port, or set admin.enabled: false',
    ]);
  });
});

describe('rewrite values hold only path characters (found by a break-it pass: CR/LF reached the request line)', () => {
  it.each([
    ['template', { template: '/a\r\nX-Injected: 1\r\nY: /{id}' }, 'template', /control character U\+000D/],
    ['template space', { template: '/a b/{id}' }, 'template', /found " "/],
    ['replacePrefix.to NUL', { replacePrefix: { from: '/x', to: '/y\u0000' } }, 'replacePrefix.to', /control character U\+0000/],
    ['stripPrefix #', { stripPrefix: '/x#' }, 'stripPrefix', /found "#"/],
    ['template query', { template: '/a?b={id}' }, 'template', /found "\?"/],
    ['template non-ASCII', { template: '/café/{id}' }, 'template', /found "é"/],
    ['bad escape', { replacePrefix: { from: '/x', to: '/%zz' } }, 'replacePrefix.to', /invalid percent-escape/],
  ])('%s is refused', (_name, rewrite, at, why) => {
    const errs = lines(withRoute({ path: '/x/:id', rewrite }));
    const line = errs.find((l) => l.startsWith(`routes[0].rewrite.${at}:`));
    expect(line, errs.join('\n')).toBeDefined();
    expect(line).toMatch(why);
  });

  it('path characters, escapes and placeholders are fine', () => {
    expect(validateConfig(withRoute({ path: '/x/:id', rewrite: { template: "/v2/users/{id}/a%20b/~!$&'()*+,;=:@" } })).ok).toBe(true);
  });
});

describe('route regexes must be matchable in linear time (ReDoS)', () => {
  it.each([['a backreference', '/r/:id((a)\\1)'], ['a lookahead', '/r/:id((?=a)a+)'], ['a lookbehind', '/r/:id((?<=x)y)']])('%s is refused', (_n, path) => {
    const errs = lines({ ...minimal(), routes: [{ id: 'r', path, upstream: 'users' }] }, { checkPattern: validateRoutePattern });
    expect(errs.join('\n')).toMatch(/cannot be matched in linear time/);
  });

  it('alternations and nested quantifiers are allowed: the engine falls back to linear time on them', () => {
    expect(validateConfig({ ...minimal(), routes: [{ id: 'r', path: '/r/:id(^(a|a)+$)', upstream: 'users' }] }, { checkPattern: validateRoutePattern }).ok).toBe(true);
  });
});

describe('hostile documents (found by a break-it pass)', () => {
  it('a document nested deeper than 64 levels is refused with a message, not a stack overflow', () => {
    const deep = '['.repeat(200_000) + ']'.repeat(200_000);
    const r = loadConfigText(`{"routes": ${deep}}`, 'deep.json');
    expect(r.ok).toBe(false);
    expect(r.ok ? '' : r.errors[0]!.message).toMatch(/nested deeper than 64 levels/);
  });

  it.each(['127.0.0.1 ', 'a b', ''])('server.host %j is refused', (host) => {
    expect(validateConfig({ ...minimal(), server: { host } }).ok).toBe(false);
  });
});
