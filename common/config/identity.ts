/**
 * Identity settings (issue 12): the store (`store`), the secrets behind key
 * hashes (`secrets`), how keys are read and cached (`identity`), who may
 * call a route (`routes[].auth`) and the nginx auth_request listener
 * (`authz`). Schema fragments (schema.ts embeds them), semantic checks
 * (validate.ts) and the resolved values (resolve.ts). README, "Identity".
 */
import type { AuthzConfig, GatewayConfig, IdentityConfig, KeySource, RouteAuth, SecretsRefs, StoreConfig } from './types.js';
import { formatPath, isPlainObject, type ConfigError } from './util.js';

type Obj = Record<string, unknown>;

export const IDENTITY_DEFAULTS = Object.freeze({
  store: Object.freeze({ kind: 'sqlite' as const, path: '.turnpike/turnpike.db' }),
  keys: Object.freeze({ sources: Object.freeze(['authorization', 'header:x-api-key']), env: 'live' }),
  headers: Object.freeze({ consumerId: 'x-consumer-id', consumerName: 'x-consumer-name', routeId: 'x-route-id' }),
  cache: Object.freeze({ size: 10_000, ttlMs: 300_000, negativeSize: 10_000, negativeTtlMs: 30_000 }),
  lookupTimeoutMs: 1_000,
  purgeIntervalMs: 3_600_000,
  rotationGraceMs: 30 * 24 * 3_600_000,
  lastUsedFlushMs: 10_000,
  authzHost: '127.0.0.1',
});

/**
 * `<kind>` or `<kind>:<name>`: authorization | header:<token> | query:<name>
 * | subprotocol:<prefix>. The prefix is checked by checkIdentityConfig
 * (SUBPROTOCOL_PREFIX), whose message says what a prefix may hold.
 */
export const KEY_SOURCE_PATTERN = "^(?:authorization|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|query:[A-Za-z0-9_.~-]+|subprotocol:.*)$";
/**
 * A `subprotocol:<prefix>` source's prefix: 1-64 token characters (RFC 9110
 * 5.6.2 tchar: RFC 6455 4.1 makes every Sec-WebSocket-Protocol entry a
 * token, so a prefix with any other character could never match).
 */
export const SUBPROTOCOL_PREFIX = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$/;
/** A prefix starting with this carries the key base64url-encoded (RFC 4648 5), as Kubernetes' `base64url.bearer.authorization.k8s.io.` does. */
export const BASE64URL_PREFIX = 'base64url.';
/** A scope: what OAuth calls a scope-token (RFC 6749 3.3), without spaces. */
export const SCOPE_PATTERN = '^[\\x21\\x23-\\x5B\\x5D-\\x7E]{1,128}$';
const HEADER_NAME = { type: 'string', minLength: 1, maxLength: 128, pattern: "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", errorMessage: 'must be a valid header name' } as const;
const SECRET_REF = {
  type: 'string', pattern: '^(?:env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$',
  errorMessage: 'must be a reference, "env:NAME" or "file:/path" (a secret is never written in the config itself)',
} as const;

export const storeSchema = {
  type: 'object', additionalProperties: false,
  description: 'Where consumers, API keys, groups and grants live. Default { kind: sqlite, path: .turnpike/turnpike.db }.',
  properties: {
    kind: { type: 'string', enum: ['sqlite', 'redis'], description: '"sqlite" (embedded, one instance; default) or "redis" (shared by every instance; uses redis.url).' },
    path: { type: 'string', minLength: 1, maxLength: 4096, pattern: '^[^\\u0000]*$', errorMessage: 'must be a file path', description: `sqlite: the database file, relative to the working directory. Default "${IDENTITY_DEFAULTS.store.path}".` },
  },
} as const;

export const secretsSchema = {
  type: 'object', additionalProperties: false,
  description: 'References to the secrets behind API keys; never the secrets themselves. Absent ones are generated under .turnpike/ (mode 0600) at the first start.',
  properties: {
    keyPepper: { ...SECRET_REF, description: 'HMAC-SHA256 key of stored key hashes (32+ bytes, hex or base64). "env:NAME" or "file:/path". Default: .turnpike/key-pepper, generated.' },
    encryptionKeys: {
      type: 'object', maxProperties: 100,
      propertyNames: { pattern: '^[1-9][0-9]{0,8}$', errorMessage: 'must be a key version: a positive integer ("1", "2", ...)' },
      additionalProperties: SECRET_REF,
      description: 'AES-256-GCM keys by version ({"2": "env:TURNPIKE_ENC_KEY_2"}); the highest encrypts. Default: version 1 in .turnpike/encryption-key-1, generated.',
    },
  },
} as const;

export const identitySchema = {
  type: 'object', additionalProperties: false,
  description: 'How API keys are read, cached and judged.',
  properties: {
    keys: {
      type: 'object', additionalProperties: false,
      description: 'Where API keys are read from, and the label of keys this gateway makes.',
      properties: {
        sources: {
          type: 'array', minItems: 1, maxItems: 8, uniqueItems: true,
          items: { type: 'string', pattern: KEY_SOURCE_PATTERN, errorMessage: 'must be "authorization", "header:<name>", "query:<name>" or "subprotocol:<prefix>"' },
          description: 'Where a key is read, first match wins: "authorization" (Bearer or ApiKey scheme), "header:<name>", "query:<name>" (stripped before forwarding, never logged), "subprotocol:<prefix>" (WebSocket upgrades only: the Sec-WebSocket-Protocol entry starting with <prefix>, the key after it, base64url when the prefix starts with "base64url."; never offered upstream). Default ["authorization", "header:x-api-key"].',
        },
        env: { type: 'string', pattern: '^[a-z0-9]{1,8}$', errorMessage: 'must be 1-8 lowercase letters or digits', description: 'The <env> of keys this gateway makes (tp_<env>_...). Default "live".' },
      },
    },
    headers: {
      type: 'object', additionalProperties: false,
      description: 'Headers sent upstream on authenticated requests; copies sent by clients are removed on every route.',
      properties: {
        consumerId: { ...HEADER_NAME, description: 'Default X-Consumer-Id.' },
        consumerName: { ...HEADER_NAME, description: 'Default X-Consumer-Name.' },
        routeId: { ...HEADER_NAME, description: 'Default X-Route-Id.' },
      },
    },
    cache: {
      type: 'object', additionalProperties: false,
      description: 'Per-worker caches of key lookups.',
      properties: {
        size: { type: 'integer', minimum: 1, maximum: 10_000_000, description: `Keys held per worker (LRU). Default ${IDENTITY_DEFAULTS.cache.size}.` },
        ttlMs: { type: 'integer', minimum: 1_000, maximum: 86_400_000, description: `A cached key is asked again after this long (changes are pushed at once; this bounds a missed one). Default ${IDENTITY_DEFAULTS.cache.ttlMs} (5 min).` },
        negativeSize: { type: 'integer', minimum: 1, maximum: 10_000_000, description: `Unknown keys remembered per worker. Default ${IDENTITY_DEFAULTS.cache.negativeSize}.` },
        negativeTtlMs: { type: 'integer', minimum: 100, maximum: 3_600_000, description: `How long an unknown key is refused without asking the store. Default ${IDENTITY_DEFAULTS.cache.negativeTtlMs} (30 s).` },
      },
    },
    lookupTimeoutMs: { type: 'integer', minimum: 10, maximum: 60_000, description: `A cache miss waits this long for the store, then 503 identity_store_unavailable. Default ${IDENTITY_DEFAULTS.lookupTimeoutMs}.` },
    purgeIntervalMs: { type: 'integer', minimum: 1_000, maximum: 86_400_000 * 7, description: `How often expired keys (and rotated keys past their grace) are removed. Default ${IDENTITY_DEFAULTS.purgeIntervalMs} (1 h).` },
    rotationGraceMs: { type: 'integer', minimum: 0, maximum: 86_400_000 * 366, description: 'How long a rotated key keeps working when the rotation names no grace. Default 30 days.' },
    lastUsedFlushMs: { type: 'integer', minimum: 1_000, maximum: 3_600_000, description: `How often keys' last use is written (batched). Default ${IDENTITY_DEFAULTS.lastUsedFlushMs}.` },
  },
} as const;

export const routeAuthSchema = {
  type: 'object', additionalProperties: false,
  description: 'Who may call this route. Absent: public.',
  properties: {
    any: { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'string', enum: ['key'] }, description: 'Credential kinds accepted, any one suffices: "key" (API keys). Default ["key"].' },
    scopes: { type: 'array', maxItems: 64, uniqueItems: true, items: { type: 'string', pattern: SCOPE_PATTERN, errorMessage: 'must be a scope: printable ASCII, no spaces, quotes or backslashes' }, description: 'Scopes the key must hold, all of them. Default none.' },
    grants: { type: 'string', enum: ['required', 'none'], description: '"required": a grant for the consumer (or one of its groups), this route and the method must exist. Default "none".' },
    forwardCredentials: { type: 'boolean', description: 'Send the credential upstream too. Default false: removed.' },
  },
} as const;

export const authzSchema = {
  type: 'object', additionalProperties: false, required: ['port'],
  description: 'The nginx auth_request listener: GET /authz decides as the routes would, for nginx in front. HTTP/1.0 and 1.1.',
  properties: {
    host: { type: 'string', minLength: 1, description: `Address to listen on. Default ${IDENTITY_DEFAULTS.authzHost}.` },
    port: { type: 'integer', minimum: 0, maximum: 65535, description: 'Port (0: any free port).' },
  },
} as const;

// ---------------------------------------------------------------------------
// semantic checks

/** Request fields identity.headers may not name (RFC 9110 7.6.1 hop-by-hop, framing, routing, forwarding). */
const RESERVED_HEADERS: ReadonlySet<string> = new Set([
  'host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'te', 'trailer', 'upgrade', 'expect',
  'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded', 'via', 'proxy', 'content-type', 'content-encoding',
]);

/** Checks what the schema cannot: a redis store needs `redis`, auth sources are sane. */
export function checkIdentityConfig(doc: Obj, out: ConfigError[]): void {
  const store = doc['store'];
  if (isPlainObject(store) && store['kind'] === 'redis' && !isPlainObject(doc['redis'])) {
    out.push({ path: 'store.kind', message: '"redis" needs a "redis" section (redis: { url: redis://host:6379 }); or use kind: sqlite' });
  }
  const redis = doc['redis'];
  if (isPlainObject(store) && store['kind'] === 'redis' && isPlainObject(redis) && redis['url'] === undefined) {
    out.push({ path: 'store.kind', message: '"redis" needs redis.url: the identity store does not run on Sentinel or Cluster yet (rate limits do); use redis.url or kind: sqlite' });
  }
  if (isPlainObject(store) && store['kind'] === 'redis' && store['path'] !== undefined) {
    out.push({ path: 'store.path', message: 'is for kind: sqlite; a redis store lives in redis.url' });
  }
  const h = isPlainObject(doc['identity']) && isPlainObject(doc['identity']['headers']) ? doc['identity']['headers'] : null;
  if (h !== null) {
    // These names are written by the gateway upstream and removed from every client request: never a field
    // that frames the message or routes it, nor one a client authenticates or is identified with.
    const server = isPlainObject(doc['server']) ? doc['server'] : {};
    const rid = typeof server['requestIdHeader'] === 'string' ? server['requestIdHeader'].toLowerCase() : 'x-request-id';
    const keys = (doc['identity'] as Obj)['keys'];
    const ks: readonly unknown[] = isPlainObject(keys) && Array.isArray(keys['sources']) ? keys['sources'] : IDENTITY_DEFAULTS.keys.sources;
    const credentialHeaders = ks.filter((x): x is string => typeof x === 'string').map((x) => (x === 'authorization' ? 'authorization' : x.startsWith('header:') ? x.slice(7).toLowerCase() : ''));
    for (const k of ['consumerId', 'consumerName', 'routeId']) {
      const v = h[k];
      if (typeof v !== 'string') continue;
      const n = v.toLowerCase();
      const why = RESERVED_HEADERS.has(n) || n.startsWith('proxy-') ? 'a header the gateway manages or that frames or routes the request'
        : n === rid ? 'the request id header (server.requestIdHeader)'
        : credentialHeaders.includes(n) ? 'a header API keys are read from (identity.keys.sources)'
        : n === 'cookie' || n === 'authorization' ? 'a credential header'
        : null;
      if (why !== null) out.push({ path: `identity.headers.${k}`, message: `${JSON.stringify(v)} is ${why}; choose a name of its own such as ${JSON.stringify(IDENTITY_DEFAULTS.headers[k as keyof typeof IDENTITY_DEFAULTS.headers])}` });
    }
    // With the defaults filled in: consumerName: X-Consumer-Id collides with the default consumerId.
    const names = (['consumerId', 'consumerName', 'routeId'] as const).map((k) => (typeof h[k] === 'string' ? (h[k] as string) : IDENTITY_DEFAULTS.headers[k]).toLowerCase());
    const d = names.find((n, i) => names.indexOf(n) !== i);
    if (d !== undefined && d !== null) out.push({ path: 'identity.headers', message: `names ${JSON.stringify(d)} twice; give each header its own name` });
  }
  const authz = doc['authz'];
  if (isPlainObject(authz) && typeof authz['port'] === 'number' && authz['port'] !== 0) {
    const server = isPlainObject(doc['server']) ? doc['server'] : {};
    const admin = isPlainObject(doc['admin']) ? doc['admin'] : {};
    const serverPort = typeof server['port'] === 'number' ? server['port'] : 8080;
    const adminPort = admin['enabled'] === false ? null : typeof admin['port'] === 'number' ? admin['port'] : 9901;
    if (authz['port'] === serverPort || authz['port'] === adminPort) {
      out.push({ path: 'authz.port', message: `${authz['port']} is the ${authz['port'] === serverPort ? 'server' : 'admin'} port too: the auth_request listener needs a port of its own (e.g. 9902)` });
    }
  }
  checkSubprotocolSources(doc, out);
  const routes = Array.isArray(doc['routes']) ? doc['routes'] : [];
  routes.forEach((r: unknown, i: number) => {
    if (!isPlainObject(r) || !isPlainObject(r['auth'])) return;
    const scopes = r['auth']['scopes'];
    if (Array.isArray(scopes) && scopes.some((s) => s === '*')) {
      out.push({ path: formatPath(['routes', i, 'auth', 'scopes']), message: '"*" is not a wildcard here: list the scopes a key must hold' });
    }
  });
}

/**
 * `subprotocol:<prefix>` sources: each prefix is 1-64 token characters
 * (SUBPROTOCOL_PREFIX), and no prefix starts another (one entry would be
 * read by both: which source it is would depend on the list's order).
 */
function checkSubprotocolSources(doc: Obj, out: ConfigError[]): void {
  const id = doc['identity'];
  const keys = isPlainObject(id) ? id['keys'] : undefined;
  const sources = isPlainObject(keys) && Array.isArray(keys['sources']) ? keys['sources'] : [];
  const seen: { prefix: string; at: number }[] = [];
  sources.forEach((s: unknown, i: number) => {
    if (typeof s !== 'string' || !s.startsWith('subprotocol:')) return;
    const at = formatPath(['identity', 'keys', 'sources', i]);
    const prefix = s.slice('subprotocol:'.length);
    if (!SUBPROTOCOL_PREFIX.test(prefix)) {
      const why = prefix === '' ? 'is empty' : prefix.length > 64 ? `is ${prefix.length} characters long` : 'holds a character a Sec-WebSocket-Protocol entry cannot (spaces, commas, quotes, "/", ":", "=", non-ASCII...)';
      out.push({ path: at, message: `the subprotocol prefix ${JSON.stringify(prefix)} ${why}: it must be 1-64 token characters (RFC 9110 5.6.2: letters, digits and !#$%&'*+-.^_\`|~), such as "turnpike.key." or "base64url.bearer.authorization.k8s.io."` });
      return;
    }
    if (prefix === BASE64URL_PREFIX) {
      out.push({ path: at, message: `the subprotocol prefix ${JSON.stringify(prefix)} names the encoding only: add a name of your own after it, such as "base64url.turnpike.key."` });
      return;
    }
    for (const o of seen) {
      if (prefix.startsWith(o.prefix) || o.prefix.startsWith(prefix)) {
        out.push({ path: at, message: `the subprotocol prefix ${JSON.stringify(prefix)} overlaps ${JSON.stringify(o.prefix)} (identity.keys.sources[${o.at}]): one entry would match both; give each source a prefix that does not start the other` });
        return;
      }
    }
    seen.push({ prefix, at: i });
  });
}

/** Valid but probably not meant (validate.ts semanticWarnings). */
export function identityWarnings(doc: Obj, out: ConfigError[]): void {
  const routes = Array.isArray(doc['routes']) ? doc['routes'] : [];
  const authRoutes = routes.filter((r) => isPlainObject(r) && isPlainObject(r['auth'])).length;
  const admin = doc['admin'];
  if (authRoutes > 0 && isPlainObject(admin) && admin['enabled'] === false) {
    out.push({ path: 'admin.enabled', message: `${authRoutes} route${authRoutes === 1 ? ' has' : 's have'} auth but the admin API is off: keys are checked, but no consumer or key can be made, rotated or revoked through this gateway (turnpike consumers|keys need the admin API)` });
  }
  const named = isPlainObject(doc['rateLimits']) ? doc['rateLimits'] : {};
  routes.forEach((r: unknown, i: number) => {
    if (!isPlainObject(r) || isPlainObject(r['auth']) || !Array.isArray(r['rateLimit'])) return;
    r['rateLimit'].forEach((item: unknown, k: number) => {
      const p = typeof item === 'string' ? named[item] : item;
      if (isPlainObject(p) && p['by'] === 'consumer') {
        const at = typeof item === 'string' ? ['routes', i, 'rateLimit', k] : ['routes', i, 'rateLimit', k, 'by'];
        const what = typeof item === 'string' ? `policy ${JSON.stringify(item)} keys by "consumer"` : '"consumer"';
        out.push({ path: formatPath(at), message: `${what} on a route without auth: no request has a consumer, so every one is keyed by ip; add auth to the route or key by ip` });
      }
    });
  });
}

// ---------------------------------------------------------------------------
// resolved values

function obj(v: unknown): Obj {
  return isPlainObject(v) ? v : {};
}

function pick<T>(o: Obj, k: string, d: T): T {
  return o[k] === undefined ? d : (o[k] as T);
}

/** One `identity.keys.sources` entry (validated), resolved. */
export function parseKeySource(text: string): KeySource {
  if (text === 'authorization') return { kind: 'authorization' };
  const at = text.indexOf(':');
  const kind = text.slice(0, at);
  const name = text.slice(at + 1);
  if (kind === 'subprotocol') return { kind: 'subprotocol', prefix: name, base64url: name.startsWith(BASE64URL_PREFIX) };
  return kind === 'header' ? { kind: 'header', name: name.toLowerCase() } : { kind: 'query', name };
}

export function resolveStore(raw: unknown): StoreConfig {
  const s = obj(raw);
  return { kind: pick(s, 'kind', IDENTITY_DEFAULTS.store.kind), path: pick(s, 'path', IDENTITY_DEFAULTS.store.path) };
}

export function resolveSecrets(raw: unknown): SecretsRefs {
  const s = obj(raw);
  return { keyPepper: pick<string | null>(s, 'keyPepper', null), encryptionKeys: { ...obj(s['encryptionKeys']) } as Record<string, string> };
}

export function resolveIdentity(raw: unknown): IdentityConfig {
  const s = obj(raw);
  const d = IDENTITY_DEFAULTS;
  const keys = obj(s['keys']);
  const h = obj(s['headers']);
  const c = obj(s['cache']);
  return {
    keys: {
      sources: pick<readonly string[]>(keys, 'sources', d.keys.sources).map(parseKeySource),
      env: pick(keys, 'env', d.keys.env),
    },
    headers: {
      consumerId: pick(h, 'consumerId', d.headers.consumerId).toLowerCase(),
      consumerName: pick(h, 'consumerName', d.headers.consumerName).toLowerCase(),
      routeId: pick(h, 'routeId', d.headers.routeId).toLowerCase(),
    },
    cache: {
      size: pick(c, 'size', d.cache.size),
      ttlMs: pick(c, 'ttlMs', d.cache.ttlMs),
      negativeSize: pick(c, 'negativeSize', d.cache.negativeSize),
      negativeTtlMs: pick(c, 'negativeTtlMs', d.cache.negativeTtlMs),
    },
    lookupTimeoutMs: pick(s, 'lookupTimeoutMs', d.lookupTimeoutMs),
    purgeIntervalMs: pick(s, 'purgeIntervalMs', d.purgeIntervalMs),
    rotationGraceMs: pick(s, 'rotationGraceMs', d.rotationGraceMs),
    lastUsedFlushMs: pick(s, 'lastUsedFlushMs', d.lastUsedFlushMs),
  };
}

export function resolveRouteAuth(raw: unknown): RouteAuth | null {
  if (!isPlainObject(raw)) return null;
  return {
    any: pick<readonly 'key'[]>(raw, 'any', ['key']),
    scopes: pick<readonly string[]>(raw, 'scopes', []),
    grants: pick<'required' | 'none'>(raw, 'grants', 'none'),
    forwardCredentials: pick(raw, 'forwardCredentials', false),
  };
}

export function resolveAuthz(raw: unknown): AuthzConfig | null {
  if (!isPlainObject(raw)) return null;
  return { host: pick(raw, 'host', IDENTITY_DEFAULTS.authzHost), port: raw['port'] as number };
}

/** Does this config use identity (eager open)? A route with `auth`, or the auth_request listener. */
export function usesIdentity(config: GatewayConfig): boolean {
  return config.authz !== null || config.routes.some((r) => r.auth !== null);
}

