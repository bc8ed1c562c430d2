/**
 * mergeDiscovered (engine/supervisor.ts): how the targets of a discovery
 * snapshot join an upstream's configured ones. Table-driven over the kinds
 * of overlap: each URL once, config first (its weight kept), then the
 * registry, then DNS; a source the upstream no longer has is ignored.
 */
import { describe, expect, it } from 'vitest';
import { mergeDiscovered } from '../../../engine/supervisor.js';
import { validateConfig } from '../../../common/config/load.js';
import type { GatewayConfig } from '../../../common/config/types.js';
import type { DiscoveredTarget } from '../../../common/protocol.js';

function config(up: Record<string, unknown>): GatewayConfig {
  const r = validateConfig({ upstreams: { app: up, other: { targets: ['http://10.0.0.9:1'] } }, routes: [{ id: 'a', path: '/a', upstream: 'app' }, { id: 'o', path: '/o', upstream: 'other' }] });
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  return r.config;
}

const t = (url: string, source: 'dns' | 'registry', weight = 1): DiscoveredTarget => {
  const u = new URL(url);
  return { url, host: u.hostname, port: Number(u.port), weight, source, expiresAt: source === 'registry' ? 1 : null };
};

describe('mergeDiscovered', () => {
  // [what, upstream config, discovered for app, expected [url, weight] list, expected sources]
  const cases: [string, Record<string, unknown>, DiscoveredTarget[], [string, number][], [string, string][]][] = [
    ['dns only', { dns: { name: 'x.test' } }, [t('http://10.0.0.1:80', 'dns'), t('http://10.0.0.2:80', 'dns')],
      [['http://10.0.0.1:80', 1], ['http://10.0.0.2:80', 1]], [['http://10.0.0.1:80', 'dns'], ['http://10.0.0.2:80', 'dns']]],
    ['config first, a URL also in DNS keeps its configured weight and source', { targets: [{ url: 'http://10.0.0.1:80', weight: 5 }], dns: { name: 'x.test' } },
      [t('http://10.0.0.1:80', 'dns'), t('http://10.0.0.3:80', 'dns')], [['http://10.0.0.1:80', 5], ['http://10.0.0.3:80', 1]], [['http://10.0.0.3:80', 'dns']]],
    ['registry before DNS; a URL in both takes the registration', { dns: { name: 'x.test' }, registry: {} },
      [t('http://10.0.0.4:80', 'dns'), t('http://10.0.0.4:80', 'registry', 7), t('http://10.0.0.5:80', 'registry')],
      [['http://10.0.0.4:80', 7], ['http://10.0.0.5:80', 1]], [['http://10.0.0.4:80', 'registry'], ['http://10.0.0.5:80', 'registry']]],
    ['a source the upstream no longer has (reloaded away) is ignored', { targets: ['http://10.0.0.1:80'], registry: {} },
      [t('http://10.0.0.6:80', 'dns'), t('http://10.0.0.7:80', 'registry')], [['http://10.0.0.1:80', 1], ['http://10.0.0.7:80', 1]], [['http://10.0.0.7:80', 'registry']]],
    ['nothing discovered: the configured targets', { targets: ['http://10.0.0.1:80'], dns: { name: 'x.test' } }, [], [['http://10.0.0.1:80', 1]], []],
  ];
  it.each(cases)('%s', (_what, up, found, targets, sources) => {
    const user = config(up);
    const { config: merged, sources: got } = mergeDiscovered(user, [['app', found], ['gone', [t('http://10.0.0.8:80', 'dns')]]]);
    expect(merged.upstreams['app']!.targets.map((x) => [x.url, x.weight])).toEqual(targets);
    expect(got.map(([u, url, s]) => { expect(u).toBe('app'); return [url, s]; })).toEqual(sources);
    // Everything else is the user's config, untouched (the same objects).
    expect(merged.upstreams['other']).toBe(user.upstreams['other']);
    expect(merged.routes).toBe(user.routes);
    expect(user.upstreams['app']!.targets.length).toBe((up['targets'] as unknown[] | undefined)?.length ?? 0);
  });

  it('returns the user\'s config itself when nothing is merged', () => {
    const user = config({ targets: ['http://10.0.0.1:80'] });
    expect(mergeDiscovered(user, []).config).toBe(user);
  });
});
