/**
 * Identity configuration (store, secrets, identity, routes[].auth, authz):
 * every kind of nonsense refused with the path of the problem and what to
 * write instead, and valid documents resolved to what the gateway runs.
 */
import { describe, expect, it } from 'vitest';
import { lines, minimal, valid } from './helpers.js';

const withAuth = (auth: unknown) => ({ ...minimal(), routes: [{ id: 'r', path: '/x', upstream: 'users', auth }] });
const REDIS = { url: 'redis://127.0.0.1:6379' };
const TOKEN_RULE = 'it must be 1-64 token characters (RFC 9110 5.6.2: letters, digits and !#$%&\'*+-.^_`|~), such as "turnpike.key." or "base64url.bearer.authorization.k8s.io."';
const NOT_TOKEN = 'holds a character a Sec-WebSocket-Protocol entry cannot (spaces, commas, quotes, "/", ":", "=", non-ASCII...)';

describe('identity settings: refused with the path of the problem', () => {
  const cases: [string, Record<string, unknown>, string[]][] = [
    ['a redis store without redis', { ...minimal(), store: { kind: 'redis' } }, ['store.kind: "redis" needs a "redis" section (redis: { url: redis://host:6379 }); or use kind: sqlite']],
    ['a redis store on Sentinel', { ...minimal(), store: { kind: 'redis' }, redis: { sentinels: [{ host: 'a', port: 1 }], name: 'm' } }, ['store.kind: "redis" needs redis.url: the identity store does not run on Sentinel or Cluster yet (rate limits do); use redis.url or kind: sqlite']],
    ['a path for a redis store', { ...minimal(), store: { kind: 'redis', path: 'x' }, redis: REDIS }, ['store.path: is for kind: sqlite; a redis store lives in redis.url']],
    ['an unknown store kind', { ...minimal(), store: { kind: 'postgres' } }, ['store.kind: must be one of "sqlite", "redis" (got "postgres")']],
    ['a secret written in the config', { ...minimal(), secrets: { keyPepper: 'hunter2' } }, ['secrets.keyPepper: must be a reference, "env:NAME" or "file:/path" (a secret is never written in the config itself)']],
    ['an encryption key version that is not a number', { ...minimal(), secrets: { encryptionKeys: { v2: 'env:X' } } }, ['secrets.encryptionKeys.v2: must be a key version: a positive integer ("1", "2", ...)']],
    ['an encryption key written in the config', { ...minimal(), secrets: { encryptionKeys: { 2: 'abc' } } }, ['secrets.encryptionKeys["2"]: must be a reference, "env:NAME" or "file:/path" (a secret is never written in the config itself)']],
    ['a key source of another kind', { ...minimal(), identity: { keys: { sources: ['cookie:x'] } } }, ['identity.keys.sources[0]: must be "authorization", "header:<name>", "query:<name>" or "subprotocol:<prefix>"']],
    ['no key source', { ...minimal(), identity: { keys: { sources: [] } } }, ['identity.keys.sources: must have at least one item']],
    ['a subprotocol source without a prefix', { ...minimal(), identity: { keys: { sources: ['subprotocol:'] } } }, [`identity.keys.sources[0]: the subprotocol prefix "" is empty: ${TOKEN_RULE}`]],
    ['a subprotocol prefix with a space, a comma, a slash or "="', { ...minimal(), identity: { keys: { sources: ['subprotocol:my key.', 'subprotocol:a,b', 'subprotocol:bearer/', 'subprotocol:k='] } } }, [
      `identity.keys.sources[0]: the subprotocol prefix "my key." ${NOT_TOKEN}: ${TOKEN_RULE}`,
      `identity.keys.sources[1]: the subprotocol prefix "a,b" ${NOT_TOKEN}: ${TOKEN_RULE}`,
      `identity.keys.sources[2]: the subprotocol prefix "bearer/" ${NOT_TOKEN}: ${TOKEN_RULE}`,
      `identity.keys.sources[3]: the subprotocol prefix "k=" ${NOT_TOKEN}: ${TOKEN_RULE}`,
    ]],
    ['a non-ASCII subprotocol prefix', { ...minimal(), identity: { keys: { sources: ['subprotocol:clé.'] } } }, [`identity.keys.sources[0]: the subprotocol prefix "clé." ${NOT_TOKEN}: ${TOKEN_RULE}`]],
    ['a subprotocol prefix of 65 characters', { ...minimal(), identity: { keys: { sources: [`subprotocol:${'a'.repeat(65)}`] } } }, [`identity.keys.sources[0]: the subprotocol prefix "${'a'.repeat(65)}" is 65 characters long: ${TOKEN_RULE}`]],
    ['"base64url." alone', { ...minimal(), identity: { keys: { sources: ['subprotocol:base64url.'] } } }, ['identity.keys.sources[0]: the subprotocol prefix "base64url." names the encoding only: add a name of your own after it, such as "base64url.turnpike.key."']],
    ['two subprotocol prefixes, one starting the other', { ...minimal(), identity: { keys: { sources: ['subprotocol:turnpike.', 'authorization', 'subprotocol:turnpike.key.'] } } }, ['identity.keys.sources[2]: the subprotocol prefix "turnpike.key." overlaps "turnpike." (identity.keys.sources[0]): one entry would match both; give each source a prefix that does not start the other']],
    ['one header name twice (any case)', { ...minimal(), identity: { headers: { consumerId: 'X-A', consumerName: 'x-a' } } }, ['identity.headers: names "x-a" twice; give each header its own name']],
    ['Transfer-Encoding as a consumer header', { ...minimal(), identity: { headers: { consumerName: 'Transfer-Encoding' } } }, ['identity.headers.consumerName: "Transfer-Encoding" is a header the gateway manages or that frames or routes the request; choose a name of its own such as "x-consumer-name"']],
    ['Content-Length, Host, Proxy-*', { ...minimal(), identity: { headers: { consumerId: 'content-length', consumerName: 'HOST', routeId: 'proxy-x' } } }, [
      'identity.headers.consumerId: "content-length" is a header the gateway manages or that frames or routes the request; choose a name of its own such as "x-consumer-id"',
      'identity.headers.consumerName: "HOST" is a header the gateway manages or that frames or routes the request; choose a name of its own such as "x-consumer-name"',
      'identity.headers.routeId: "proxy-x" is a header the gateway manages or that frames or routes the request; choose a name of its own such as "x-route-id"',
    ]],
    ['the request id header', { ...minimal(), server: { requestIdHeader: 'X-Trace' }, identity: { headers: { routeId: 'x-trace' } } }, ['identity.headers.routeId: "x-trace" is the request id header (server.requestIdHeader); choose a name of its own such as "x-route-id"']],
    ['a key source header', { ...minimal(), identity: { headers: { consumerId: 'X-API-Key' } } }, ['identity.headers.consumerId: "X-API-Key" is a header API keys are read from (identity.keys.sources); choose a name of its own such as "x-consumer-id"']],
    ['Authorization', { ...minimal(), identity: { keys: { sources: ['header:x-key'] }, headers: { consumerId: 'Authorization' } } }, ['identity.headers.consumerId: "Authorization" is a credential header; choose a name of its own such as "x-consumer-id"']],
    ['a name that is another header\'s default', { ...minimal(), identity: { headers: { consumerName: 'X-Consumer-Id' } } }, ['identity.headers: names "x-consumer-id" twice; give each header its own name']],
    ['authz on the server port', { ...minimal(), server: { port: 8081 }, authz: { port: 8081 } }, ['authz.port: 8081 is the server port too: the auth_request listener needs a port of its own (e.g. 9902)']],
    ['authz on the default admin port', { ...minimal(), authz: { port: 9901 } }, ['authz.port: 9901 is the admin port too: the auth_request listener needs a port of its own (e.g. 9902)']],
    ['a header name with a space', { ...minimal(), identity: { headers: { routeId: 'x y' } } }, ['identity.headers.routeId: must be a valid header name']],
    ['a key env in capitals', { ...minimal(), identity: { keys: { env: 'LIVE' } } }, ['identity.keys.env: must be 1-8 lowercase letters or digits']],
    ['an empty cache', { ...minimal(), identity: { cache: { size: 0 } } }, ['identity.cache.size: must be an integer from 1 to 10000000 (got 0)']],
    ['a misspelt auth option', withAuth({ scope: ['a'] }), ['routes[0].auth: unknown property "scope" (did you mean "scopes"?)']],
    ['a credential kind not supported', withAuth({ any: ['jwt'] }), ['routes[0].auth.any[0]: must be one of "key" (got "jwt")']],
    ['grants: yes', withAuth({ grants: 'yes' }), ['routes[0].auth.grants: must be one of "required", "none" (got "yes")']],
    ['a "*" scope', withAuth({ scopes: ['*'] }), ['routes[0].auth.scopes: "*" is not a wildcard here: list the scopes a key must hold']],
    ['a scope with a space', withAuth({ scopes: ['a b'] }), ['routes[0].auth.scopes[0]: must be a scope: printable ASCII, no spaces, quotes or backslashes']],
    ['auth: true', withAuth(true), ['routes[0].auth: must be a mapping (key: value) (got true)']],
    ['authz without a port', { ...minimal(), authz: { host: '127.0.0.1' } }, ['authz: missing required property "port"']],
    ['authz on port 70000', { ...minimal(), authz: { port: 70000 } }, ['authz.port: must be an integer from 0 to 65535 (got 70000)']],
  ];
  it.each(cases)('%s', (_what, doc, want) => {
    expect(lines(doc)).toEqual(want);
  });
});

describe('identity settings: resolution', () => {
  it('defaults: sqlite under .turnpike, Authorization then X-API-Key, X-Consumer-* headers, bounded caches', () => {
    const c = valid(minimal());
    expect(c.store).toEqual({ kind: 'sqlite', path: '.turnpike/turnpike.db' });
    expect(c.secrets).toEqual({ keyPepper: null, encryptionKeys: {} });
    expect(c.authz).toBeNull();
    expect(c.identity).toEqual({
      keys: { sources: [{ kind: 'authorization' }, { kind: 'header', name: 'x-api-key' }], env: 'live' },
      headers: { consumerId: 'x-consumer-id', consumerName: 'x-consumer-name', routeId: 'x-route-id' },
      cache: { size: 10_000, ttlMs: 300_000, negativeSize: 10_000, negativeTtlMs: 30_000 },
      lookupTimeoutMs: 1000, purgeIntervalMs: 3_600_000, rotationGraceMs: 30 * 24 * 3_600_000, lastUsedFlushMs: 10_000,
    });
    expect(c.routes[0]!.auth).toBeNull();
  });

  it('a route\'s auth, header names in lower case, durations, authz', () => {
    const c = valid({
      ...withAuth({ scopes: ['orders:read'], grants: 'required' }),
      identity: { keys: { sources: ['header:X-Key', 'query:key', 'authorization'] }, headers: { consumerId: 'X-User' }, lookupTimeoutMs: '2s', cache: { ttlMs: '1m' } },
      authz: { port: 9902 },
    });
    expect(c.routes[0]!.auth).toEqual({ any: ['key'], scopes: ['orders:read'], grants: 'required', forwardCredentials: false });
    expect(c.identity.keys.sources).toEqual([{ kind: 'header', name: 'x-key' }, { kind: 'query', name: 'key' }, { kind: 'authorization' }]);
    expect(c.identity.headers.consumerId).toBe('x-user');
    expect(c.identity.lookupTimeoutMs).toBe(2000);
    expect(c.identity.cache.ttlMs).toBe(60_000);
    expect(c.authz).toEqual({ host: '127.0.0.1', port: 9902 });
    // The key's query parameter is never logged, whatever redactQuery says.
    expect(c.log.access.redactQuery).toContain('key');
  });

  it('subprotocol key sources: the prefix kept as written (case-sensitive), base64url when it starts with "base64url."', () => {
    const c = valid({ ...withAuth({}), identity: { keys: { sources: ['subprotocol:Turnpike.Key.', 'authorization', 'subprotocol:base64url.bearer.authorization.k8s.io.', "subprotocol:tp_"] } } });
    expect(c.identity.keys.sources).toEqual([
      { kind: 'subprotocol', prefix: 'Turnpike.Key.', base64url: false },
      { kind: 'authorization' },
      { kind: 'subprotocol', prefix: 'base64url.bearer.authorization.k8s.io.', base64url: true },
      { kind: 'subprotocol', prefix: 'tp_', base64url: false },
    ]);
    // Every token character is allowed in a prefix.
    expect(valid({ ...minimal(), identity: { keys: { sources: ["subprotocol:!#$%&'*+-.^_`|~0aZ"] } } }).identity.keys.sources[0]).toEqual({ kind: 'subprotocol', prefix: "!#$%&'*+-.^_`|~0aZ", base64url: false });
  });

  it('rate limits by consumer are accepted', () => {
    const c = valid({ ...minimal(), routes: [{ id: 'r', path: '/x', upstream: 'users', auth: {}, rateLimit: [{ by: 'consumer', rate: 5, per: '1s' }] }] });
    expect(c.routes[0]!.rateLimit[0]!.by).toBe('consumer');
  });
});

describe('identity settings: warnings', () => {
  it('auth routes with the admin API off; by: consumer on a route without auth', async () => {
    const { semanticWarnings } = await import('../../../common/config/validate.js');
    const w = semanticWarnings({
      ...minimal(), admin: { enabled: false },
      routes: [
        { id: 'a', path: '/a', upstream: 'users', auth: {} },
        { id: 'b', path: '/b', upstream: 'users', rateLimit: [{ by: 'consumer', rate: 1, per: '1s' }] },
      ],
    });
    expect(w.map((x) => x.path)).toEqual(expect.arrayContaining(['admin.enabled', 'routes[1].rateLimit[0].by']));
    const named = semanticWarnings({ ...minimal(), rateLimits: { perConsumer: { by: 'consumer', rate: 1, per: '1s' } }, routes: [{ id: 'p', path: '/p', upstream: 'users', rateLimit: ['perConsumer'] }] });
    expect(named.find((x) => x.path === 'routes[0].rateLimit[0]')?.message).toMatch(/^policy "perConsumer" keys by "consumer" on a route without auth/);
    expect(w.find((x) => x.path === 'admin.enabled')!.message).toContain('no consumer or key can be made');
  });
});

describe('server.backend: node', () => {
  it('serves from several worker threads on every Node version (one shared listening socket); one thread under Bun', async () => {
    const { netReusePort, nodeBackendShardable } = await import('../../../common/config/util.js');
    // Node 22.12+ (23.1+) binds in every thread with reusePort; before, the engine shares one socket.
    expect([netReusePort('20.20.0'), netReusePort('22.11.0'), netReusePort('22.12.0'), netReusePort('23.0.0'), netReusePort('23.1.0'), netReusePort('24.0.0')])
      .toEqual([false, false, true, false, true, true]);
    const doc = { ...minimal(), server: { backend: 'node', workers: 4 } };
    if (nodeBackendShardable()) {
      expect(valid(doc).server.workers).toBe(4);
      expect(valid({ ...minimal(), server: { backend: 'node' } }).server.workers).toBeGreaterThanOrEqual(1);
    } else {
      expect(lines(doc)).toEqual(['server.workers: the node backend serves one worker thread under Bun: set workers: 1 (or auto), or use server.backend: bun']);
      expect(valid({ ...minimal(), server: { backend: 'node' } }).server.workers).toBe(1);
    }
    // Extension methods are routable there (uWS closes them: refused with it).
    const purge = (backend: string) => ({ ...minimal(), server: { backend, workers: 1 }, routes: [{ id: 'p', path: '/p', upstream: 'users', methods: ['PURGE'] }] });
    expect(valid(purge('node')).routes[0]!.methods).toEqual(['PURGE']);
    expect(lines(purge('uws')).length).toBe(1);
  });
});
