/**
 * The admin thread's identity service (admin/identity/service.ts) over a
 * real SQLite store in a temp directory, with worker lines as real
 * MessageChannel ports speaking common/identity/wire.ts: lookup answers,
 * coalescing and the negative cache (store reads counted), invalidation
 * messages on every kind of change, batched last use, the purge job, eager
 * and lazy opening, and a store that cannot open or fails.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { LatencyCollector } from '../../../admin/context.js';
import { IdentityService, usesIdentity } from '../../../admin/identity/service.js';
import { LatencyRecorder } from '../../../workers/latency.js';
import { MAX_TOUCH_BATCH } from '../../../admin/identity/store/types.js';
import { validateConfig } from '../../../common/config/load.js';
import type { GatewayConfig } from '../../../common/config/types.js';
import { generateKey, hashKey } from '../../../common/identity/keys.js';
import type { IdentityToWorker, KeyAnswer, KeyRecordAnswer } from '../../../common/identity/wire.js';

const root = mkdtempSync(join(tmpdir(), 'turnpike-idsvc-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const ctx = { actor: 'test' };
let n = 0;

/** A config over a fresh directory: pepper and encryption key in files there (the test knows the pepper). */
function setup(opts: { auth?: boolean; identity?: Record<string, unknown>; storePath?: string } = {}): { config: GatewayConfig; pepper: Buffer; dir: string } {
  const dir = join(root, `t${n++}`);
  mkdirSync(dir, { recursive: true });
  const pepper = randomBytes(32);
  writeFileSync(join(dir, 'pepper'), pepper.toString('hex'));
  writeFileSync(join(dir, 'enc1'), randomBytes(32).toString('hex'));
  const r = validateConfig({
    upstreams: { u: { targets: ['http://127.0.0.1:9'] } },
    routes: [{ id: 'orders', path: '/orders', upstream: 'u', ...(opts.auth === false ? {} : { auth: { scopes: ['orders:read'] } }) }],
    store: { kind: 'sqlite', path: opts.storePath ?? join(dir, 'db', 'turnpike.db') },
    secrets: { keyPepper: `file:${join(dir, 'pepper')}`, encryptionKeys: { '1': `file:${join(dir, 'enc1')}` } },
    ...(opts.identity !== undefined ? { identity: opts.identity } : {}),
  });
  if (!r.ok) throw new Error(r.errors.map((e) => `${e.path}: ${e.message}`).join('\n'));
  return { config: r.config, pepper, dir };
}

/** The worker end of a line to the admin thread. */
class WorkerLine {
  readonly received: IdentityToWorker[] = [];
  private readonly port: MessagePort;
  private nextId = 1;
  private readonly waiting = new Map<number, (a: KeyAnswer) => void>();

  constructor(svc: IdentityService, index: number) {
    const ch = new MessageChannel();
    svc.attach(index, ch.port1);
    this.port = ch.port2;
    this.port.on('message', (m: IdentityToWorker) => {
      if (m.t === 'key') {
        this.waiting.get(m.id)?.(m.answer);
        this.waiting.delete(m.id);
      } else this.received.push(m);
    });
    lines.push(this);
  }

  ask(key: string): Promise<KeyAnswer> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.port.postMessage({ t: 'key', id, key });
    });
  }

  used(batch: Array<string | number>): void {
    this.port.postMessage({ t: 'used', batch });
  }

  /** Anything, as the worker would post it. */
  raw(msg: unknown): void {
    this.port.postMessage(msg);
  }

  /** Invalidations received so far, as their `hashes`. */
  invals(): Array<string[] | null> {
    return this.received.filter((m) => m.t === 'inval').map((m) => (m as { hashes: string[] | null }).hashes);
  }

  async waitInvals(count: number, ms = 2000): Promise<Array<string[] | null>> {
    const end = Date.now() + ms;
    while (this.invals().length < count && Date.now() < end) await sleep(5);
    return this.invals();
  }

  close(): void {
    this.port.close();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const lines: WorkerLine[] = [];
const services: IdentityService[] = [];

function service(config: GatewayConfig): IdentityService {
  const s = new IdentityService(config);
  services.push(s);
  return s;
}

afterEach(async () => {
  for (const l of lines.splice(0)) l.close();
  for (const s of services.splice(0)) await s.close();
});

describe('identity service: lookups', () => {
  it('answers a known key with its consumer and merged grants, over a worker line', async () => {
    const { config, pepper } = setup();
    const svc = service(config);
    const store = await svc.getStore();
    const grp = await store.createGroup({ name: 'staff' }, ctx);
    const { consumer, keys } = await store.createConsumer({
      name: 'acme', tenant: 't1', plan: 'gold', groups: [grp.id], keys: [{ name: 'ci', scopes: ['orders:read'], expiresAt: Date.now() + 3_600_000 }],
    }, ctx);
    await store.createGrant({ subject: { kind: 'consumer', id: consumer.id }, routeId: 'orders', methods: ['get'] }, ctx);
    await store.createGrant({ subject: { kind: 'group', id: grp.id }, routeId: 'orders', methods: ['POST'] }, ctx);
    await store.createGrant({ subject: { kind: 'group', id: grp.id }, routeId: 'admin', methods: ['*'] }, ctx);
    const w = new WorkerLine(svc, 0);
    const a = await w.ask(keys[0]!.key) as KeyRecordAnswer;
    expect(a).toEqual({
      ok: true, hash: hashKey(pepper, keys[0]!.key), keyId: keys[0]!.record.id, keyName: 'ci', keyPrefix: keys[0]!.record.prefix,
      keyStatus: 'active', scopes: ['orders:read'], restrictions: { cidrs: [], timeWindows: [], origins: [] },
      expiresAt: keys[0]!.record.expiresAt, graceUntil: null, rotatedAt: null, consumerId: consumer.id, consumerName: 'acme', consumerStatus: 'active',
      tenant: 't1', plan: 'gold', groups: [grp.id], grants: expect.any(Array),
    });
    expect(new Map(a.grants)).toEqual(new Map([['orders', ['GET', 'POST']], ['admin', ['*']]]));
    expect(JSON.stringify(a)).not.toContain(keys[0]!.key);
    expect(svc.stats()).toMatchObject({ storeLookups: 1, found: 1 });
  });

  it('a flood of one unknown key from two workers reads the store once; then the negative cache answers', async () => {
    const { config } = setup();
    const svc = service(config);
    await svc.getStore();
    const w0 = new WorkerLine(svc, 0);
    const w1 = new WorkerLine(svc, 1);
    const bad = generateKey('live');
    const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => (i % 2 === 0 ? w0 : w1).ask(bad)));
    expect(answers.every((a) => !a.ok && a.reason === 'unknown')).toBe(true);
    expect(svc.stats().storeLookups).toBe(1);
    const before = svc.stats();
    expect(before.unknown + before.negativeCached).toBe(200); // joined the one read, or found in the negative cache
    for (let i = 0; i < 50; i++) await w1.ask(bad);
    const s = svc.stats();
    expect(s.storeLookups).toBe(1);
    expect(s.negativeCached).toBe(before.negativeCached + 50);
    const m = Object.fromEntries(svc.metrics().map((f) => [f.name, f.collect()]));
    expect(m['turnpike_identity_store_lookups_total']).toEqual([{ labels: {}, value: 1 }]);
    expect(m['turnpike_identity_lookups_total']).toContainEqual({ labels: { result: 'negative_cached' }, value: s.negativeCached });
    expect(m['turnpike_identity_store_up']).toEqual([{ labels: {}, value: 1 }]);
  });

  it('malformed keys are unknown without a store read; lookup never throws on junk', async () => {
    const { config } = setup();
    const svc = service(config);
    await svc.getStore();
    const good = generateKey('live');
    for (const k of ['', 'x'.repeat(10_000), 'tp_live_é', good.slice(0, -1) + (good.endsWith('A') ? 'B' : 'A'), 42 as unknown as string]) {
      expect(await svc.lookup(k)).toEqual({ ok: false, reason: 'unknown' });
    }
    expect(svc.stats().storeLookups).toBe(0);
  });

  it('concurrent lookups of one known key share one store read', async () => {
    const { config } = setup();
    const svc = service(config);
    const store = await svc.getStore();
    const { keys } = await store.createConsumer({ name: 'c', keys: [{ name: 'k' }] }, ctx);
    const all = await Promise.all(Array.from({ length: 50 }, () => svc.lookup(keys[0]!.key)));
    expect(all.every((a) => a.ok)).toBe(true);
    expect(svc.stats()).toMatchObject({ storeLookups: 1, found: 50 });
    await svc.lookup(keys[0]!.key); // the admin thread keeps no positive cache: workers do
    expect(svc.stats().storeLookups).toBe(2);
  });

  it('a revoked key or a suspended consumer is answered as such, without grants', async () => {
    const { config } = setup();
    const svc = service(config);
    const store = await svc.getStore();
    const { consumer, keys } = await store.createConsumer({ name: 'c', keys: [{ name: 'a' }, { name: 'b' }] }, ctx);
    await store.createGrant({ subject: { kind: 'consumer', id: consumer.id }, routeId: 'orders' }, ctx);
    await store.revokeKey(keys[0]!.record.id, ctx);
    expect(await svc.lookup(keys[0]!.key)).toMatchObject({ ok: true, keyStatus: 'revoked', grants: [] });
    expect(await svc.lookup(keys[1]!.key)).toMatchObject({ ok: true, keyStatus: 'active', grants: [['orders', ['*']]] });
    await store.updateConsumer(consumer.id, { status: 'suspended' }, ctx);
    expect(await svc.lookup(keys[1]!.key)).toMatchObject({ ok: true, consumerStatus: 'suspended', grants: [] });
  });

  it('store errors answer unavailable (no throw, no key in the message), and store_up says 0', async () => {
    const { config } = setup();
    const svc = service(config);
    const store = await svc.getStore();
    const { keys } = await store.createConsumer({ name: 'c', keys: [{ name: 'k' }] }, ctx);
    await store.close(); // the database goes away under the service
    const a = await svc.lookup(keys[0]!.key);
    expect(a).toMatchObject({ ok: false, reason: 'unavailable' });
    expect((a as { message: string }).message).not.toContain(keys[0]!.key);
    expect(svc.stats().unavailable).toBe(1);
    expect(svc.storeUp).toBe(false);
  });
});

describe('identity service: opening', () => {
  it('opens eagerly at start when a route has auth; never creates a database otherwise', async () => {
    const eager = setup();
    const svc = service(eager.config);
    expect(usesIdentity(eager.config)).toBe(true);
    svc.start();
    const end = Date.now() + 2000;
    while (!svc.storeUp && Date.now() < end) await sleep(5);
    expect(svc.storeUp).toBe(true);
    expect(existsSync(eager.config.store.path)).toBe(true);

    const lazy = setup({ auth: false });
    const quiet = service(lazy.config);
    expect(usesIdentity(lazy.config)).toBe(false);
    quiet.start();
    await sleep(50);
    expect(await quiet.purge()).toBe(0);
    await quiet.flushUsed();
    expect(existsSync(lazy.config.store.path)).toBe(false);
    const m = Object.fromEntries(quiet.metrics().map((f) => [f.name, f.collect()]));
    expect(m['turnpike_identity_store_up']).toEqual([{ labels: {}, value: 0 }]);
    await quiet.getStore(); // lazily, at first use
    expect(existsSync(lazy.config.store.path)).toBe(true);
  });

  it('a store that cannot open answers unavailable, and is tried again at most once per second', async () => {
    const base = join(root, `blocked${n++}`);
    mkdirSync(base);
    writeFileSync(join(base, 'file'), 'not a directory');
    const { config } = setup({ storePath: join(base, 'file', 'turnpike.db') });
    const svc = service(config);
    const key = generateKey('live');
    const a = await svc.lookup(key);
    expect(a).toMatchObject({ ok: false, reason: 'unavailable' });
    expect((a as { message: string }).message).toMatch(/turnpike\.db|store/);
    await expect(svc.getStore()).rejects.toMatchObject({ code: expect.any(String) });
    // Fixed at once, but the next attempt waits for the second to pass.
    rmSync(join(base, 'file'));
    expect(await svc.lookup(key)).toMatchObject({ ok: false, reason: 'unavailable' });
    await sleep(1100);
    expect(await svc.lookup(key)).toEqual({ ok: false, reason: 'unknown' });
    expect(svc.storeUp).toBe(true);
  });

  it('start() resolves with the outcome: open, lazy, a transient failure, a permanent one (another pepper\'s store); storeWarning says while it is down', async () => {
    const ok = setup();
    const up = service(ok.config);
    expect(await up.start()).toEqual({ state: 'open' });
    expect(up.storeWarning).toBeNull();
    expect(await service(setup({ auth: false }).config).start()).toEqual({ state: 'lazy' });

    const base = join(root, `blocked${n++}`);
    mkdirSync(base);
    writeFileSync(join(base, 'file'), 'not a directory');
    const blocked = service(setup({ storePath: join(base, 'file', 'turnpike.db') }).config);
    const t = await blocked.start();
    expect(t).toMatchObject({ state: 'failed', permanent: false });
    expect(blocked.storeWarning).toMatch(/^identity store unavailable: .*turnpike\.db/);

    // A store made with pepper A, this service configured with pepper B.
    const made = setup();
    const storePath = made.config.store.path;
    await (await service(made.config).getStore()).createConsumer({ name: 'a', keys: [{ name: 'k' }] }, ctx);
    for (const s of services.splice(services.length - 1)) await s.close();
    const wrong = service(setup({ storePath }).config);
    const r = await wrong.start();
    expect(r).toMatchObject({ state: 'failed', permanent: true });
    expect((r as { error: Error }).error.message).toMatch(/hashed with another pepper/);
    expect(wrong.storeWarning).toMatch(/identity store unavailable: .*hashed with another pepper/);
    expect(await wrong.lookup(generateKey('live'))).toMatchObject({ ok: false, reason: 'unavailable' });
  });

  it('a key lookup carries when a rotated key was rotated (rotatedAt), the same on every answer', async () => {
    const { config } = setup();
    const svc = service(config);
    const store = await svc.getStore();
    const { keys } = await store.createConsumer({ name: 'r', keys: [{ name: 'k' }] }, ctx);
    const { old } = await store.rotateKey(keys[0]!.record.id, { graceMs: 60_000 }, ctx);
    expect(old.rotatedAt).toEqual(expect.any(Number));
    const a = await svc.lookup(keys[0]!.key) as KeyRecordAnswer;
    expect([a.rotatedAt, a.graceUntil]).toEqual([old.rotatedAt, old.graceUntil]);
    await sleep(10);
    const w = new WorkerLine(svc, 0);
    expect(((await w.ask(keys[0]!.key)) as KeyRecordAnswer).rotatedAt).toBe(old.rotatedAt);
  });
});

describe('identity service: invalidation', () => {
  it('tells every worker what each change drops: revoke, suspend, key create, grant and group changes', async () => {
    const { config } = setup();
    const svc = service(config);
    const store = await svc.getStore();
    const w0 = new WorkerLine(svc, 0);
    const w1 = new WorkerLine(svc, 1);
    const { consumer, keys } = await store.createConsumer({ name: 'c', keys: [{ name: 'a' }, { name: 'b' }] }, ctx);
    const [h0, h1] = [keys[0]!.record.hash, keys[1]!.record.hash];
    // A consumer created with keys: one message for the write, naming the new keys (workers may hold them as unknown).
    expect(await w0.waitInvals(1)).toEqual([[h0, h1]]);

    await store.revokeKey(keys[0]!.record.id, ctx);
    expect(await w0.waitInvals(2)).toEqual([[h0, h1], [h0]]);

    await store.updateConsumer(consumer.id, { status: 'suspended' }, ctx);
    expect([...(await w0.waitInvals(3))[2]!].sort()).toEqual([h0, h1].sort());

    const k3 = await store.createKey(consumer.id, { name: 'c' }, ctx);
    expect((await w0.waitInvals(4))[3]).toEqual([k3.record.hash]);

    const g = await store.createGrant({ subject: { kind: 'consumer', id: consumer.id }, routeId: 'orders' }, ctx);
    expect((await w0.waitInvals(5))[4]).toBeNull();
    await store.deleteGrant(g.id, ctx);
    await store.createGroup({ name: 'staff' }, ctx);
    expect((await w0.waitInvals(7)).slice(5)).toEqual([null, null]);

    // A consumer created without keys: nothing cached can be affected, nothing sent.
    await store.createConsumer({ name: 'empty' }, ctx);
    await sleep(30);
    expect(w0.invals()).toHaveLength(7);
    expect(await w1.waitInvals(7)).toEqual(w0.invals());
    expect(svc.stats().invalidations).toBe(7);
  });

  it('a change naming a hash clears it from the negative cache (a key must not stay unknown)', async () => {
    const { config, pepper } = setup();
    const svc = service(config);
    const store = await svc.getStore();
    const { keys } = await store.createConsumer({ name: 'c', keys: [{ name: 'k' }] }, ctx);
    // A key the store does not know yet...
    const later = generateKey('live');
    expect(await svc.lookup(later)).toEqual({ ok: false, reason: 'unknown' });
    expect(await svc.lookup(later)).toEqual({ ok: false, reason: 'unknown' });
    expect(svc.stats()).toMatchObject({ storeLookups: 1, negativeCached: 1 });
    // ...becomes known (its hash written under an existing key record by hand), and a change names that hash.
    const db = new Database(config.store.path);
    db.prepare('UPDATE api_keys SET hash = ? WHERE id = ?').run(hashKey(pepper, later), keys[0]!.record.id);
    db.close();
    await store.updateKey(keys[0]!.record.id, { name: 'renamed' }, ctx);
    await sleep(5);
    expect(await svc.lookup(later)).toMatchObject({ ok: true, keyId: keys[0]!.record.id, keyName: 'renamed' });
    expect(svc.stats().storeLookups).toBe(2);
  });

  it('a lookup in flight when a change arrives reads again: no stale answer follows an invalidation', async () => {
    const { config } = setup();
    const svc = service(config);
    const store = await svc.getStore();
    const { keys } = await store.createConsumer({ name: 'c', keys: [{ name: 'k' }] }, ctx);
    // The key is read (active), then revoked before the lookup has answered.
    const answer = svc.lookup(keys[0]!.key);
    await store.revokeKey(keys[0]!.record.id, ctx);
    expect(await answer).toMatchObject({ ok: true, keyStatus: 'revoked' });
    expect(svc.stats().storeLookups).toBe(2);
  });
});

describe('identity service: last use and purge', () => {
  it('merges workers\' last-use reports into max(at) per key, written in one touchKeys per flush', async () => {
    const { config } = setup({ identity: { lastUsedFlushMs: 1000 } });
    const svc = service(config);
    const store = await svc.getStore();
    const { keys } = await store.createConsumer({ name: 'c', keys: [{ name: 'a' }, { name: 'b' }] }, ctx);
    const [a, b] = [keys[0]!.record.id, keys[1]!.record.id];
    const w0 = new WorkerLine(svc, 0);
    const w1 = new WorkerLine(svc, 1);
    const t = 1_700_000_000_000;
    for (let i = 0; i < 100; i++) w0.used([a, t + i, b, t - i]);
    w1.used([a, t + 500, 'junk', -1, 7, t, b]);
    await sleep(20);
    expect((await store.getKey(a))!.lastUsedAt).toBeNull(); // nothing written per request
    expect(svc.stats().touchCalls).toBe(0);
    const end = Date.now() + 3000;
    while ((await store.getKey(a))!.lastUsedAt === null && Date.now() < end) await sleep(50);
    expect((await store.getKey(a))!.lastUsedAt).toBe(t + 500);
    expect((await store.getKey(b))!.lastUsedAt).toBe(t);
    expect(svc.stats().touchCalls).toBe(1);
  });

  it('writes a big batch in chunks of MAX_TOUCH_BATCH, and close() writes what is pending', async () => {
    const { config } = setup({ identity: { lastUsedFlushMs: 3_600_000 } });
    const svc = service(config);
    const store = await svc.getStore();
    const { keys } = await store.createConsumer({ name: 'c', keys: [{ name: 'a' }] }, ctx);
    const batch: Array<string | number> = [];
    for (let i = 0; i < MAX_TOUCH_BATCH + 5; i++) batch.push(`key_unknown${i}`, 1000 + i);
    batch.push(keys[0]!.record.id, 42_000);
    svc.used(batch);
    await svc.flushUsed();
    expect(svc.stats().touchCalls).toBe(2);
    expect((await store.getKey(keys[0]!.record.id))!.lastUsedAt).toBe(42_000);
    svc.used([keys[0]!.record.id, 43_000]);
    await svc.close();
    const reopened = service(config);
    expect((await (await reopened.getStore()).getKey(keys[0]!.record.id))!.lastUsedAt).toBe(43_000);
  });

  it('the purge job removes expired keys on its interval, tells the workers and counts them', async () => {
    const { config } = setup({ identity: { purgeIntervalMs: 1000 } });
    const svc = service(config);
    const store = await svc.getStore();
    const w = new WorkerLine(svc, 0);
    const { consumer, keys } = await store.createConsumer({ name: 'c', keys: [{ name: 'old', expiresAt: Date.now() + 100 }, { name: 'live' }] }, ctx);
    await w.waitInvals(1);
    const end = Date.now() + 3000;
    while (svc.stats().purged === 0 && Date.now() < end) await sleep(50);
    expect(svc.stats().purged).toBe(1);
    expect(await store.getKey(keys[0]!.record.id)).toBeNull();
    expect(await store.getKey(keys[1]!.record.id)).not.toBeNull();
    expect((await w.waitInvals(2))[1]).toEqual([keys[0]!.record.hash]);
    const audit = (await store.listAudit({ limit: 1000 })).items.filter((e) => e.action === 'key.purge');
    expect(audit).toHaveLength(1);
    expect(audit[0]!.actor).toBe('scheduler');
    // Called directly too (a later time): a rotated key past its grace goes.
    const r = await store.rotateKey(keys[1]!.record.id, { graceMs: 1000 }, ctx);
    expect(await svc.purge(Date.now() + 5000)).toBe(1);
    expect(await store.getKey(r.record.id)).not.toBeNull();
    expect(consumer.id).toBeTruthy();
    const m = Object.fromEntries(svc.metrics().map((f) => [f.name, f.collect()]));
    expect(m['turnpike_identity_keys_purged_total']).toEqual([{ labels: {}, value: 2 }]);
  });
});

describe('identity service: lines', () => {
  it('ignores latency messages on the line, and a replaced worker line takes over', async () => {
    const { config } = setup();
    const svc = service(config);
    const store = await svc.getStore();
    const { keys } = await store.createConsumer({ name: 'c', keys: [{ name: 'k' }] }, ctx);
    const old = new WorkerLine(svc, 0);
    const fresh = new WorkerLine(svc, 0); // worker 0 replaced
    await store.revokeKey(keys[0]!.record.id, ctx);
    await fresh.waitInvals(1);
    await sleep(20);
    expect(fresh.invals()).toEqual([[keys[0]!.record.hash]]);
    expect(old.invals()).toEqual([]);
    expect(await fresh.ask(keys[0]!.key)).toMatchObject({ ok: true, keyStatus: 'revoked' });
    // A latency reply (no `t`) and junk are not identity messages: no answer, no harm.
    fresh.raw({ id: 1, snapshot: { gateway: '', upstream: '' } });
    fresh.raw({ t: 'nonsense' });
    fresh.raw(null);
    await sleep(20);
    expect(fresh.received.filter((m) => m.t === 'key')).toEqual([]);
    expect(svc.rotationGraceMs).toBe(30 * 24 * 3_600_000);
  });

  it('one line carries latency snapshots and key lookups: each side ignores the other\'s messages, even with the same id', async () => {
    const { config } = setup();
    const svc = service(config);
    await svc.getStore();
    const ch = new MessageChannel();
    const collector = new LatencyCollector([ch.port1]);
    svc.attach(0, ch.port1);
    const rec = await LatencyRecorder.create();
    rec.recordGateway(2);
    rec.recordUpstream(1);
    const worker = ch.port2;
    const answers: IdentityToWorker[] = [];
    worker.on('message', (m: { id?: number; t?: string }) => {
      if (m.t !== undefined) {
        answers.push(m as IdentityToWorker);
        return;
      }
      // A latency request {id}: first a lookup carrying the same id, then the snapshot.
      worker.postMessage({ t: 'key', id: m.id, key: generateKey('live') });
      worker.postMessage({ t: 'used', batch: [] });
      worker.postMessage({ id: m.id, snapshot: rec.snapshot() });
    });
    const stats = await collector.collect();
    expect(stats.workers).toBe(1);
    expect(stats.gateway.count).toBe(1);
    const end = Date.now() + 1000;
    while (answers.length === 0 && Date.now() < end) await sleep(5);
    expect(answers).toEqual([{ t: 'key', id: 1, answer: { ok: false, reason: 'unknown' } }]);
    collector.close();
    ch.port2.close();
  });
});
