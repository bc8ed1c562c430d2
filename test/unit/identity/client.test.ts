/**
 * A worker's key cache (workers/policies/auth/client.ts) over a real
 * MessageChannel, the test answering as the admin thread does (the wire
 * contract, common/identity/wire.ts): coalesced lookups, the negative
 * cache, invalidation by hash (gone) and by flush (kept, stale: the
 * stale-if-error answer while the store is away), the bound on lookups
 * waiting at once, and the last-use report.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { IdentityClient, MAX_WAITING_LOOKUPS } from '../../../workers/policies/auth/client.js';
import { resolveIdentity } from '../../../common/config/identity.js';
import { generateKey } from '../../../common/identity/keys.js';
import type { IdentityToAdmin, KeyRecordAnswer } from '../../../common/identity/wire.js';

const clients: IdentityClient[] = [];
const ports: MessagePort[] = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  for (const p of ports.splice(0)) p.close();
});

function record(hash: string): KeyRecordAnswer {
  return {
    ok: true, hash, keyId: `key_${hash}`, keyName: 'k', keyPrefix: 'tp_live_abcd', keyStatus: 'active', scopes: [],
    restrictions: { cidrs: [], timeWindows: [], origins: [] }, expiresAt: null, graceUntil: null,
    consumerId: 'con_1', consumerName: 'c', consumerStatus: 'active', tenant: null, plan: null, groups: [], grants: [], rotatedAt: null,
  };
}

/** A client and the admin end of its line; `asked` collects what it sent. */
function setup(over: Record<string, unknown> = {}) {
  const { port1, port2 } = new MessageChannel();
  ports.push(port1, port2);
  const client = new IdentityClient();
  clients.push(client);
  client.configure(resolveIdentity(over));
  client.attach(port1);
  const asked: IdentityToAdmin[] = [];
  port2.on('message', (m: IdentityToAdmin) => asked.push(m));
  const lookup = (key: string) => new Promise<{ cached: boolean; reason: string }>((resolve) => client.lookup(key, (e, a) => resolve({ cached: e !== null, reason: a.ok ? 'ok' : a.reason })));
  const waitAsked = async (n: number) => {
    for (let i = 0; i < 200 && asked.length < n; i++) await new Promise((r) => setTimeout(r, 5));
    return asked;
  };
  return { client, admin: port2, asked, lookup, waitAsked };
}

describe('IdentityClient', () => {
  it('asks once for many waiters, caches the answer; a flush keeps it as stale, a hash invalidation drops it', async () => {
    const { client, admin, lookup, waitAsked } = setup();
    const key = generateKey('live');
    const answers = [lookup(key), lookup(key), lookup(key)];
    const [q] = await waitAsked(1);
    expect(q).toEqual({ t: 'key', id: expect.any(Number), key });
    admin.postMessage({ t: 'key', id: (q as { id: number }).id, answer: record('h1') });
    expect(await Promise.all(answers)).toEqual(Array(3).fill({ cached: true, reason: 'ok' }));
    expect(client.cached(key)!.staleAt).toBeGreaterThan(Date.now());

    admin.postMessage({ t: 'inval', hashes: null });
    await new Promise((r) => setTimeout(r, 20));
    expect(client.cached(key), 'kept for stale-if-error').toBeDefined();
    expect(client.cached(key)!.staleAt).toBe(0);

    admin.postMessage({ t: 'inval', hashes: ['h1'] });
    await new Promise((r) => setTimeout(r, 20));
    expect(client.cached(key), 'a revoked key is never served from the cache').toBeUndefined();
  });

  it('remembers unknown keys (negative cache) until a change; times out a lookup nobody answers', async () => {
    const { client, admin, lookup, waitAsked } = setup({ lookupTimeoutMs: 50 });
    const key = generateKey('live');
    const p = lookup(key);
    const [q] = await waitAsked(1);
    admin.postMessage({ t: 'key', id: (q as { id: number }).id, answer: { ok: false, reason: 'unknown' } });
    expect(await p).toEqual({ cached: false, reason: 'unknown' });
    expect(client.knownUnknown(key, Date.now())).toBe(true);
    admin.postMessage({ t: 'inval', hashes: ['any'] });
    await new Promise((r) => setTimeout(r, 20));
    expect(client.knownUnknown(key, Date.now()), 'a change may have created it').toBe(false);
    expect(await lookup(generateKey('live'))).toEqual({ cached: false, reason: 'unavailable' });
  });

  it(`answers unavailable at once past ${MAX_WAITING_LOOKUPS} lookups waiting`, async () => {
    const { lookup, waitAsked } = setup({ lookupTimeoutMs: 5000 });
    for (let i = 0; i < MAX_WAITING_LOOKUPS; i++) void lookup(generateKey('live'));
    const t0 = Date.now();
    expect(await lookup(generateKey('live'))).toEqual({ cached: false, reason: 'unavailable' });
    expect(Date.now() - t0).toBeLessThan(1000);
    expect((await waitAsked(MAX_WAITING_LOOKUPS)).length).toBe(MAX_WAITING_LOOKUPS);
  });

  it('reports the keys used since the last report, once', async () => {
    const { client, admin, asked, lookup, waitAsked } = setup();
    const key = generateKey('live');
    const p = lookup(key);
    const [q] = await waitAsked(1);
    admin.postMessage({ t: 'key', id: (q as { id: number }).id, answer: record('h2') });
    await p;
    client.cached(key)!.usedAt = 1234;
    client.reportUse();
    client.reportUse();
    await waitAsked(2);
    await new Promise((r) => setTimeout(r, 20));
    expect(asked.filter((m) => m.t === 'used')).toEqual([{ t: 'used', batch: ['key_h2', 1234] }]);
  });
});
