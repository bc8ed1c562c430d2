// API-key authentication (issue 12, routes[].auth): what checking a key
// costs per request with a warm cache. Four targets in front of the bench's
// nginx upstream, the same config (a SQLite identity store, the admin
// listener, secrets in files of the run's temp dir) but the route's `auth`:
//
//   turnpike-auth-base               no `auth` (the key is sent, not read)
//   turnpike-auth-key                `auth: {}`: the key read from
//                                    Authorization, one Map get in the
//                                    worker's cache, decide(), the consumer
//                                    headers added
//   turnpike-auth-key-scopes-grants  `auth: { scopes: [orders:read],
//                                    grants: required }`, the consumer
//                                    granted GET on the route: the scope and
//                                    grant checks too
//   turnpike-auth-invalid            `auth: {}`, every request carries a
//                                    well-formed key the store does not know:
//                                    401 key_invalid from the negative cache
//                                    (wrk counts them as errors)
//
// Each target, once up (verify), creates a consumer with one key through
// its admin API (POST /admin/consumers, and POST /admin/grants for the
// grants target), checks that the key is admitted (or, for the invalid
// target, refused with key_invalid) and writes `Bearer <key>` to
// `<tmp>/auth-header-<port>.txt`, which the `auth` scenario's wrk script
// reads at start (lib/scenarios.mjs headerFiles): the key exists only once
// the target runs. The base target makes a key too, so every target gets
// the same request bytes. The first request per worker warms its cache;
// run.mjs's warm-up run does the rest.
//
// The route under test is `orders` on /orders/* (the scenario GETs
// /orders/1); a public route on / lets run.mjs see the target up (a 200)
// before any key exists. Meant for the `auth` scenario, PARALLEL=1 so a
// swing of the VM hits the targets alike (tables: auth-report.mjs):
//   PARALLEL=1 NO_MD=1 TARGETS=turnpike-auth-base,turnpike-auth-key,turnpike-auth-key-scopes-grants SCENARIOS=auth node run.mjs
// Ports 18075-18078 (gateways) and 18086-18089 (their admin listeners).
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { cmdOutput } from './proc.mjs';

/** The route under test (the grant names it) and the path the `auth` scenario loads. */
const ROUTE_ID = 'orders';
/** The key's scope (and the scopes target's requirement). */
const SCOPE = 'orders:read';
/** What the `auth` scenario requests (lib/scenarios.mjs). */
export const AUTH_PATH = '/orders/1';

export const AUTH_TARGETS = {
  'turnpike-auth-base': { port: 18075, adminPort: 18086, auth: null },
  'turnpike-auth-key': { port: 18076, adminPort: 18087, auth: {} },
  'turnpike-auth-key-scopes-grants': { port: 18077, adminPort: 18088, auth: { scopes: [SCOPE], grants: 'required' }, grant: true },
  'turnpike-auth-invalid': { port: 18078, adminPort: 18089, auth: {}, invalid: true },
};

/** Where a target's `Authorization` value goes: the `auth` scenario's wrk script reads `<script dir>/auth-header-<port>.txt`. */
export const authHeaderFile = (tmp, port) => join(tmp, `auth-header-${port}.txt`);

/**
 * The gateway config of one auth target. Secrets and the admin token (its
 * SHA-256 in a tokens file) live in `tmp`, as do the store and the audit
 * log: nothing is written under the working directory (.turnpike/).
 */
function authConfig(tmp, name, { port, adminPort, auth }, upstreamUrl, pool, adminToken) {
  const secret = (what) => {
    const f = join(tmp, `${name}-${what}`);
    writeFileSync(f, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
    return `file:${f}`;
  };
  const tokensFile = join(tmp, `${name}-admin-tokens`);
  writeFileSync(tokensFile, `bench admin sha256:${createHash('sha256').update(adminToken).digest('hex')}\n`, { mode: 0o600 });
  return {
    server: { host: '127.0.0.1', port, workers: 1 },
    admin: { enabled: true, host: '127.0.0.1', port: adminPort, tokensFile, auditLog: join(tmp, `${name}-audit.log`) },
    log: { access: { enabled: false } },
    store: { kind: 'sqlite', path: join(tmp, `${name}.db`) },
    secrets: { keyPepper: secret('key-pepper'), encryptionKeys: { 1: secret('encryption-key-1') } },
    upstreams: { up: { targets: [{ url: upstreamUrl }], pool: { maxConnections: pool } } },
    routes: [
      // Public: run.mjs waits for a 200 on / before verify() makes a key.
      { id: 'ready', path: '/', upstream: 'up' },
      { id: ROUTE_ID, path: '/orders/*', upstream: 'up', ...(auth === null ? {} : { auth }) },
    ],
  };
}

/** The four targets. `deps`: { cli, dist (Turnpike's dist/), upstreamUrl, pool, notBuilt }. */
export function authTargets({ cli, dist, upstreamUrl, pool, notBuilt }) {
  return Object.entries(AUTH_TARGETS).map(([name, spec]) => {
    const adminToken = `bench-${randomBytes(16).toString('hex')}`;
    let tmp = null;
    const admin = async (method, path, body) => {
      let r;
      // The admin listener may bind a moment after the data plane (run.mjs waits for the latter): up to ~10 s.
      for (let i = 0; ; i++) {
        try {
          r = await fetch(`http://127.0.0.1:${spec.adminPort}${path}`, {
            method,
            headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
            body: JSON.stringify(body),
          });
          break;
        } catch (err) {
          if (i === 100) throw new Error(`${name}: its admin listener on ${spec.adminPort} does not answer (${err.cause?.code ?? err.message})`);
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      }
      const text = await r.text();
      if (r.status !== 201) throw new Error(`${name}: ${method} ${path} answered ${r.status}: ${text.slice(0, 200)}`);
      return JSON.parse(text);
    };
    return {
      name,
      port: spec.port,
      skip: notBuilt,
      command: (dir) => {
        tmp = dir;
        const file = join(dir, `${name}.json`);
        writeFileSync(file, JSON.stringify(authConfig(dir, name, spec, upstreamUrl, pool, adminToken), null, 2));
        return [process.execPath, [cli, 'start', '--config', file]];
      },
      version: () => `node ${process.version}, auth ${JSON.stringify(spec.auth)}${spec.invalid ? ', an unknown key' : ''}`,
      // Make the key (and grant), check what the target answers it, and
      // hand the Authorization value to the wrk script.
      verify: async () => {
        const made = await admin('POST', '/admin/consumers', { name: 'bench', keys: [{ name: 'k', scopes: [SCOPE] }] });
        let key = made.keys[0].key;
        if (spec.grant) await admin('POST', '/admin/grants', { subject: { kind: 'consumer', id: made.consumer.id }, routeId: ROUTE_ID, methods: ['GET'] });
        if (spec.invalid) {
          // Well formed (checksum right), never issued: passes the offline check, unknown to the store.
          const { generateKey } = await import(pathToFileURL(join(dist, 'common/identity/keys.js')).href);
          key = generateKey(key.split('_')[1]);
        }
        const want = spec.invalid ? 401 : 200;
        for (let i = 0; i < 3; i++) {
          const r = await fetch(`http://127.0.0.1:${spec.port}${AUTH_PATH}`, { headers: { authorization: `Bearer ${key}` } });
          const body = await r.text();
          if (r.status !== want || (want === 200 && body !== 'ok') || (want === 401 && !body.includes('key_invalid'))) {
            throw new Error(`${name}: a request with its key got ${r.status} ${body.slice(0, 160)}, expected ${want}`);
          }
        }
        writeFileSync(authHeaderFile(tmp, spec.port), `Bearer ${key}`);
      },
      // Where the workers found each key (turnpike_auth_key_cache_total from
      // the admin listener's /metrics, run.mjs calls probe() around each
      // run): a warm cache is all hits (or negative hits), no misses. Every
      // target is probed alike (one scrape before the run falls inside it).
      probe: () => {
        const text = cmdOutput('curl', ['-s', '--max-time', '5', '-H', `authorization: Bearer ${adminToken}`, `http://127.0.0.1:${spec.adminPort}/metrics`]) ?? '';
        const count = (result) => Number(text.match(new RegExp(`^turnpike_auth_key_cache_total\\{result="${result}"\\} (\\S+)`, 'm'))?.[1] ?? 0);
        return { hit: count('hit'), negative: count('negative_hit'), miss: count('miss') };
      },
      probeResult: (before, after, requests) => (requests === 0 ? {} : {
        cacheHitsPerReq: Math.round(((after.hit - before.hit) / requests) * 1000) / 1000,
        negativeHitsPerReq: Math.round(((after.negative - before.negative) / requests) * 1000) / 1000,
        cacheMisses: after.miss - before.miss,
      }),
    };
  });
}
