/**
 * Keyed balancers' configuration (balance: consistent_hash + hashOn,
 * balance: sticky + sticky; common/config/balancing.ts): every kind of bad
 * input is refused with the path of the problem and what to write instead,
 * and every documented form resolves to what the balancer uses, defaults
 * named.
 */
import { describe, expect, it } from 'vitest';
import { BALANCING_DEFAULTS, MAX_STICKY_TTL_MS } from '../../../common/config/balancing.js';
import { lines, minimal, valid } from './helpers.js';

function withUp(extra: Record<string, unknown>): Record<string, unknown> {
  const doc = minimal() as { upstreams: { users: Record<string, unknown> } };
  Object.assign(doc.upstreams.users, extra);
  return doc;
}

const HASH_ON_MSG = 'must be "ip", "path", "header:<name>" or "cookie:<name>" (a name of letters, digits and !#$%&\'*+-.^_`|~, e.g. "header:x-user-id")';

describe('balancing config: refused with the path of the problem', () => {
  // [what, upstream fields, the exact error lines]
  const cases: [string, Record<string, unknown>, string[]][] = [
    ['hashOn without balance', { hashOn: 'header:x-user-id' }, ['upstreams.users.hashOn: hashOn is used by balance: consistent_hash only (this upstream\'s balance is "round_robin"); set balance: consistent_hash or remove hashOn']],
    ['hashOn with ip_hash', { balance: 'ip_hash', hashOn: 'ip' }, ['upstreams.users.hashOn: hashOn is used by balance: consistent_hash only (this upstream\'s balance is "ip_hash"); set balance: consistent_hash or remove hashOn']],
    ['hashOn with sticky', { balance: 'sticky', hashOn: 'ip' }, ['upstreams.users.hashOn: hashOn is used by balance: consistent_hash only (this upstream\'s balance is "sticky"); set balance: consistent_hash or remove hashOn']],
    ['sticky without balance', { sticky: {} }, ['upstreams.users.sticky: sticky is used by balance: sticky only (this upstream\'s balance is "round_robin"); set balance: sticky or remove sticky']],
    ['sticky with consistent_hash', { balance: 'consistent_hash', sticky: { cookie: 'a' } }, ['upstreams.users.sticky: sticky is used by balance: sticky only (this upstream\'s balance is "consistent_hash"); set balance: sticky or remove sticky']],
    ['hashOn unknown source', { balance: 'consistent_hash', hashOn: 'query:id' }, [`upstreams.users.hashOn: ${HASH_ON_MSG}`]],
    ['hashOn header without a name', { balance: 'consistent_hash', hashOn: 'header:' }, [`upstreams.users.hashOn: ${HASH_ON_MSG}`]],
    ['hashOn header name with a space', { balance: 'consistent_hash', hashOn: 'header:x user' }, [`upstreams.users.hashOn: ${HASH_ON_MSG}`]],
    ['hashOn header name with a colon', { balance: 'consistent_hash', hashOn: 'header:x:y' }, [`upstreams.users.hashOn: ${HASH_ON_MSG}`]],
    ['hashOn cookie name with "="', { balance: 'consistent_hash', hashOn: 'cookie:a=b' }, [`upstreams.users.hashOn: ${HASH_ON_MSG}`]],
    ['hashOn cookie name with ";"', { balance: 'consistent_hash', hashOn: 'cookie:a;b' }, [`upstreams.users.hashOn: ${HASH_ON_MSG}`]],
    ['hashOn upper-case source', { balance: 'consistent_hash', hashOn: 'Header:x' }, [`upstreams.users.hashOn: ${HASH_ON_MSG}`]],
    ['hashOn with spaces', { balance: 'consistent_hash', hashOn: ' ip' }, [`upstreams.users.hashOn: ${HASH_ON_MSG}`]],
    ['hashOn not a string', { balance: 'consistent_hash', hashOn: 5 }, ['upstreams.users.hashOn: must be a string (got 5)']],
    ['sticky cookie with a space', { balance: 'sticky', sticky: { cookie: 'my cookie' } }, ['upstreams.users.sticky.cookie: must be a cookie name of letters, digits and !#$%&\'*+-.^_`|~ (RFC 6265 cookie-name, no spaces, "=" or ";")']],
    ['sticky cookie empty', { balance: 'sticky', sticky: { cookie: '' } }, ['upstreams.users.sticky.cookie: must be a cookie name of letters, digits and !#$%&\'*+-.^_`|~ (RFC 6265 cookie-name, no spaces, "=" or ";")']],
    ['sticky ttlMs negative', { balance: 'sticky', sticky: { ttlMs: -1 } }, [`upstreams.users.sticky.ttlMs: must be an integer from 0 to ${MAX_STICKY_TTL_MS} (got -1)`]],
    ['sticky ttlMs past 400 days', { balance: 'sticky', sticky: { ttlMs: '9601h' } }, [`upstreams.users.sticky.ttlMs: must be from 0 ms to ${MAX_STICKY_TTL_MS} ms (9600h) (got "9601h" = 34563600000 ms)`]],
    ['sticky ttlMs under a second', { balance: 'sticky', sticky: { ttlMs: 500 } }, ['upstreams.users.sticky.ttlMs: 500 ms is less than a second: the cookie\'s Max-Age would be 0, which deletes it; use at least 1000 (1s), or 0 for a session cookie']],
    ['sticky typo', { balance: 'sticky', sticky: { name: 'x' } }, ['upstreams.users.sticky: unknown property "name" (known: cookie, ttlMs)']],
    ['sticky: true', { balance: 'sticky', sticky: true }, ['upstreams.users.sticky: must be a mapping (key: value) (got true)']],
    ['balance typo', { balance: 'consistent-hash' }, ['upstreams.users.balance: must be one of "round_robin", "least_conn", "random", "ip_hash", "p2c", "consistent_hash", "sticky" (got "consistent-hash") (did you mean "consistent_hash"?)']],
  ];
  it.each(cases)('%s', (_what, up, want) => {
    expect(lines(withUp(up))).toEqual(want);
  });
});

describe('balancing config: every documented form resolves', () => {
  // [hashOn as written, resolved]
  const hashOn: [string | undefined, { source: string; name: string }][] = [
    [undefined, { source: 'ip', name: '' }],
    ['ip', { source: 'ip', name: '' }],
    ['path', { source: 'path', name: '' }],
    ['header:x-user-id', { source: 'header', name: 'x-user-id' }],
    ['header:X-User-Id', { source: 'header', name: 'x-user-id' }],
    ['cookie:SessionID', { source: 'cookie', name: 'SessionID' }],
    ['cookie:__Host-sid', { source: 'cookie', name: '__Host-sid' }],
  ];
  it.each(hashOn)('hashOn %j', (text, want) => {
    const up = valid(withUp({ balance: 'consistent_hash', ...(text === undefined ? {} : { hashOn: text }) })).upstreams['users']!;
    expect(up.balance).toBe('consistent_hash');
    expect(up.hashOn).toEqual(want);
    expect(up.sticky).toBeNull();
  });

  it('sticky: defaults, durations, a session cookie', () => {
    expect(BALANCING_DEFAULTS.sticky).toEqual({ cookie: 'tp_affinity', ttlMs: 3_600_000 });
    const d = valid(withUp({ balance: 'sticky' })).upstreams['users']!;
    expect(d.sticky).toEqual({ cookie: 'tp_affinity', ttlMs: 3_600_000 });
    expect(d.hashOn).toBeNull();
    expect(valid(withUp({ balance: 'sticky', sticky: {} })).upstreams['users']!.sticky).toEqual({ cookie: 'tp_affinity', ttlMs: 3_600_000 });
    expect(valid(withUp({ balance: 'sticky', sticky: { cookie: 'aff', ttlMs: '30m' } })).upstreams['users']!.sticky).toEqual({ cookie: 'aff', ttlMs: 1_800_000 });
    expect(valid(withUp({ balance: 'sticky', sticky: { ttlMs: 0 } })).upstreams['users']!.sticky).toEqual({ cookie: 'tp_affinity', ttlMs: 0 });
  });

  it('other balances have neither', () => {
    for (const balance of ['round_robin', 'least_conn', 'random', 'ip_hash', 'p2c']) {
      const up = valid(withUp({ balance })).upstreams['users']!;
      expect([up.hashOn, up.sticky]).toEqual([null, null]);
    }
  });

  it('the issue\'s YAML, as written', async () => {
    const { loadConfigText } = await import('../../../common/config/load.js');
    const r = loadConfigText(`
upstreams:
  users:
    targets: [http://10.0.0.11:9001, http://10.0.0.12:9001]
    balance: consistent_hash
    hashOn: "header:x-user-id"
  web:
    targets: [http://10.0.0.11:9001, http://10.0.0.12:9001]
    balance: sticky
    sticky: { cookie: tp_affinity, ttlMs: 3600000 }
routes:
  - { id: users, path: /users/*, upstream: users }
  - { id: web, path: /*, upstream: web }
`, 'issue.yaml');
    if (!r.ok) throw new Error(r.errors.map((e) => `${e.path}: ${e.message}`).join('\n'));
    expect(r.config.upstreams['users']!.hashOn).toEqual({ source: 'header', name: 'x-user-id' });
    expect(r.config.upstreams['web']!.sticky).toEqual({ cookie: 'tp_affinity', ttlMs: 3_600_000 });
  });
});
