/**
 * rateLimitTable.quotaFile: where local quota counts are kept
 * (engine/quota-store.ts). Resolved as written (null: the default, named
 * by the port); nonsense refused with its path.
 */
import { describe, expect, it } from 'vitest';
import { loadConfigText } from '../../../common/config/load.js';
import { lines, minimal, valid } from './helpers.js';

describe('rateLimitTable.quotaFile', () => {
  it('defaults to none (the engine then uses .turnpike/quotas-<server port>.json) and keeps what is written', () => {
    expect(valid(minimal()).rateLimitTable).toEqual({ capacity: 262144, quotaFile: null });
    expect(valid({ ...minimal(), rateLimitTable: { quotaFile: '/var/lib/turnpike/quotas.json' } }).rateLimitTable.quotaFile).toBe('/var/lib/turnpike/quotas.json');
    expect(valid({ ...minimal(), rateLimitTable: { capacity: 4096, quotaFile: 'q.json' } }).rateLimitTable).toEqual({ capacity: 4096, quotaFile: 'q.json' });
  });

  it('refuses what cannot be a file name, with the path of the problem', () => {
    expect(lines({ ...minimal(), rateLimitTable: { quotaFile: '' } })).toEqual(['rateLimitTable.quotaFile: must not be empty']);
    expect(lines({ ...minimal(), rateLimitTable: { quotaFile: 'a\u0000b' } })).toEqual(['rateLimitTable.quotaFile: must be a file path (e.g. .turnpike/quotas.json)']);
    expect(lines({ ...minimal(), rateLimitTable: { quotaFile: 5 } })).toEqual(['rateLimitTable.quotaFile: must be a string (got 5)']);
    expect(lines({ ...minimal(), rateLimitTable: { quotaFlie: 'q.json' } })).toEqual(['rateLimitTable: unknown property "quotaFlie" (did you mean "quotaFile"?)']);
  });

  it('can be set from the environment and the command line like any other setting', () => {
    const yaml = 'upstreams: { users: { targets: ["http://127.0.0.1:9001"] } }\nroutes: [{ id: users, path: /u, upstream: users }]\n';
    const fromEnv = loadConfigText(yaml, 't.yaml', { env: { TURNPIKE_RATELIMITTABLE__QUOTAFILE: '/tmp/q.json' } });
    expect(fromEnv.ok && fromEnv.config.rateLimitTable.quotaFile).toBe('/tmp/q.json');
    const fromSet = loadConfigText(yaml, 't.yaml', { env: {}, sets: ['rateLimitTable.quotaFile=/srv/q.json'] });
    expect(fromSet.ok && fromSet.config.rateLimitTable.quotaFile).toBe('/srv/q.json');
  });
});
