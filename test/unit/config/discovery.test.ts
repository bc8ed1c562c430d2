/**
 * Discovery configuration (upstreams.<name>.dns and .registry): every kind
 * of nonsense is refused with the path of the problem and what to write
 * instead; the documented forms validate and resolve with their defaults
 * (DISCOVERY_DEFAULTS); targets becomes optional once another source is set.
 */
import { describe, expect, it } from 'vitest';
import { DISCOVERY_DEFAULTS, resolverProblem } from '../../../common/config/discovery.js';
import { validateConfig } from '../../../common/config/load.js';
import { lines, minimal, valid } from './helpers.js';

/** The minimal document with upstream "users" replaced by `up`. */
function withUp(up: Record<string, unknown>): Record<string, unknown> {
  const doc = minimal() as { upstreams: Record<string, unknown> };
  doc.upstreams['users'] = up;
  return doc;
}

describe('discovery config: refused with the path of the problem', () => {
  // [what, the upstream, the exact error lines]
  const cases: [string, Record<string, unknown>, string[]][] = [
    ['no source at all', {}, ['upstreams.users: missing required property "targets" (an upstream needs at least one source of targets: "targets", "dns" or "registry")']],
    ['an empty targets list, no other source', { targets: [] }, ['upstreams.users.targets: must list at least one target; with "dns" or "registry" set, leave "targets" out']],
    ['an empty targets list beside a registry', { targets: [], registry: {} }, ['upstreams.users.targets: must list at least one target; with "dns" or "registry" set, leave "targets" out']],
    ['dns without a name', { dns: { port: 9001 } }, ['upstreams.users.dns: missing required property "name"']],
    ['dns name with a space', { dns: { name: 'users internal' } }, ['upstreams.users.dns.name: must be a DNS name such as "users.internal" (letters, digits, "-", "_" and dots)']],
    ['dns name is a URL', { dns: { name: 'http://users.internal' } }, ['upstreams.users.dns.name: must be a DNS name such as "users.internal" (letters, digits, "-", "_" and dots)']],
    ['dns name is an IP address', { dns: { name: '10.0.0.5', port: 9001 } }, ['upstreams.users.dns.name: "10.0.0.5" is an IP address, not a name to resolve; list it under targets instead (targets: ["http://10.0.0.5:9001"])']],
    ['dns port 0', { dns: { name: 'u.internal', port: 0 } }, ['upstreams.users.dns.port: must be an integer from 1 to 65535 (got 0)']],
    ['dns port too big', { dns: { name: 'u.internal', port: 70000 } }, ['upstreams.users.dns.port: must be an integer from 1 to 65535 (got 70000)']],
    ['refreshMs below 100', { dns: { name: 'u.internal', refreshMs: 10 } }, ['upstreams.users.dns.refreshMs: must be an integer from 100 to 86400000 (got 10)']],
    ['refreshMs not a duration', { dns: { name: 'u.internal', refreshMs: 'often' } }, ['upstreams.users.dns.refreshMs: must be a number of milliseconds or a duration such as "250ms", "5s", "1m" (got "often"); durations are a whole number followed by ms, s, m or h']],
    ['unknown family', { dns: { name: 'u.internal', family: 'ipv5' } }, ['upstreams.users.dns.family: must be one of "any", "ipv4", "ipv6" (got "ipv5") (did you mean "ipv4"?)']],
    ['a resolver named by host name', { dns: { name: 'u.internal', resolvers: ['dns.local:53'] } }, ['upstreams.users.dns.resolvers[0]: "dns.local:53" must be an IP address (a resolver named by a host name would need a resolver itself)']],
    ['a resolver with port 0', { dns: { name: 'u.internal', resolvers: ['127.0.0.1:0'] } }, ['upstreams.users.dns.resolvers[0]: "127.0.0.1:0": port must be from 1 to 65535']],
    ['a resolver as a bracketed IPv4', { dns: { name: 'u.internal', resolvers: ['[127.0.0.1]:53'] } }, ['upstreams.users.dns.resolvers[0]: "[127.0.0.1]:53" is not an IPv6 address in brackets']],
    ['resolvers not a list', { dns: { name: 'u.internal', resolvers: '127.0.0.1' } }, ['upstreams.users.dns.resolvers: must be a list (got "127.0.0.1")']],
    ['typo in dns', { dns: { name: 'u.internal', refresh: 5000 } }, ['upstreams.users.dns: unknown property "refresh" (did you mean "refreshMs"?)']],
    ['dns weight 0', { dns: { name: 'u.internal', weight: 0 } }, ['upstreams.users.dns.weight: must be an integer from 1 to 1000 (got 0)']],
    ['registry ttl below 1 s', { registry: { ttlMs: 500 } }, ['upstreams.users.registry.ttlMs: must be an integer from 1000 to 86400000 (got 500)']],
    ['registry maxTargets 0', { registry: { maxTargets: 0 } }, ['upstreams.users.registry.maxTargets: must be an integer from 1 to 1000 (got 0)']],
    ['registry: true', { registry: true }, ['upstreams.users.registry: must be a mapping (key: value) (got true)']],
    ['typo in registry', { registry: { ttl: 5000 } }, ['upstreams.users.registry: unknown property "ttl" (known: ttlMs, maxTargets)']],
  ];
  it.each(cases)('%s', (_what, up, expected) => {
    expect(lines(withUp(up))).toEqual(expected);
  });
});

describe('discovery config: valid forms and their defaults', () => {
  it('dns alone: targets optional, every default filled in', () => {
    const u = valid(withUp({ dns: { name: 'Users.Internal.' } })).upstreams['users']!;
    expect(u.targets).toEqual([]);
    expect(u.dns).toEqual({ name: 'users.internal', port: 80, refreshMs: 5000, family: 'any', resolvers: [], timeoutMs: 2000, weight: 1 });
    expect(u.registry).toBeNull();
    expect(DISCOVERY_DEFAULTS.dns.refreshMs).toBe(5000);
  });

  it('the issue\'s example: dns with durations and resolvers; registry beside static targets', () => {
    const doc = {
      upstreams: {
        users: { dns: { name: 'users.internal', port: 9001, refreshMs: '5s', family: 'ipv4', resolvers: ['127.0.0.1:5353', '::1', '[::1]:5353'] } },
        orders: { registry: { ttlMs: '30s' }, targets: ['http://10.0.0.5:9001'] },
      },
      routes: [{ id: 'u', path: '/u', upstream: 'users' }, { id: 'o', path: '/o', upstream: 'orders' }],
    };
    const c = valid(doc);
    expect(c.upstreams['users']!.dns).toEqual({ name: 'users.internal', port: 9001, refreshMs: 5000, family: 'ipv4', resolvers: ['127.0.0.1:5353', '::1', '[::1]:5353'], timeoutMs: 2000, weight: 1 });
    expect(c.upstreams['orders']!.registry).toEqual({ ttlMs: 30000, maxTargets: 256 });
    expect(c.upstreams['orders']!.targets.map((t) => t.url)).toEqual(['http://10.0.0.5:9001']);
    expect(c.upstreams['orders']!.dns).toBeNull();
  });

  it('registry: {} takes every default', () => {
    expect(valid(withUp({ registry: {} })).upstreams['users']!.registry).toEqual({ ttlMs: DISCOVERY_DEFAULTS.registry.ttlMs, maxTargets: DISCOVERY_DEFAULTS.registry.maxTargets });
  });

  it('a registry no one can write (admin off, no redis) is a warning, not an error', () => {
    const doc = { ...withUp({ registry: {} }), admin: { enabled: false } };
    const r = validateConfig(doc);
    expect(r.ok).toBe(true);
    expect(r.ok && r.warnings.map((w) => w.path)).toContain('upstreams.users.registry');
  });

  it.each([
    ['127.0.0.1', null], ['127.0.0.1:53', null], ['::1', null], ['[::1]:5353', null], ['[fe80::1]', null],
    ['127.0.0.1:99999', 'port'], ['localhost', 'IP address'], ['[::1', 'must be'], ['1.2.3.4:x', 'must be'],
  ])('resolver %s', (text, problem) => {
    const p = resolverProblem(text);
    if (problem === null) expect(p).toBeNull();
    else expect(p).toContain(problem);
  });
});

describe('targets that are the gateway itself', () => {
  it('a target or dns name on a loopback address with server.port or admin.port is warned about (a loop); other hosts and ports are not', async () => {
    const { checkDocument } = await import('../../../common/config/validate.js');
    const doc = {
      server: { port: 18403 },
      admin: { port: 9901 },
      upstreams: {
        a: { targets: ['http://127.0.0.1:18403', 'http://localhost:9901', 'http://10.0.0.1:18403', 'http://127.0.0.1:18404', 'http://[::1]:18403', 'http://0.0.0.0:18403'] },
        b: { dns: { name: 'localhost', port: 18403 } },
        c: { dns: { name: 'users.internal', port: 18403 } },
      },
      routes: [{ id: 'a', path: '/a/*', upstream: 'a' }, { id: 'b', path: '/b/*', upstream: 'b' }, { id: 'c', path: '/c/*', upstream: 'c' }],
    };
    const loop = (what: string) => `this is the gateway's own ${what}: a request sent there comes back in as a new one until the pools fill (a loop); point it at the service`;
    expect(checkDocument(doc).warnings.map((w) => `${w.path}: ${w.message}`)).toEqual([
      `upstreams.a.targets[0]: ${loop('proxy listener (server.port)')}`,
      `upstreams.a.targets[1]: ${loop('admin listener (admin.port)')}`,
      `upstreams.a.targets[4]: ${loop('proxy listener (server.port)')}`,
      `upstreams.a.targets[5]: ${loop('proxy listener (server.port)')}`,
      `upstreams.b.dns: ${loop('proxy listener (server.port)')}`,
    ]);
  });
});
