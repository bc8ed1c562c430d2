/**
 * Two identity services (two instances' admin threads) on one private
 * Redis (test/helpers/redis.ts), each with two worker lines as real
 * MessageChannel ports: changes made on one instance reach every worker of
 * the other within 1 s over the store's change channel (and an instance's
 * own change reaches its workers once), a flood of one unknown key reads
 * Redis once, the negative cache forgets a hash another instance creates,
 * and a change feed that reconnects makes the workers drop everything.
 * Plus the pepper guard: after Redis loses its data, of two instances with
 * different peppers exactly one serves, and the other says why.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { IdentityService } from '../../admin/identity/service.js';
import { pepperCheck } from '../../admin/identity/store/types.js';
import { createAccessRing, RingReader } from '../../common/access-ring.js';
import { setLogThread } from '../../common/log.js';
import { validateConfig } from '../../common/config/load.js';
import type { GatewayConfig } from '../../common/config/types.js';
import { generateKey, hashKey } from '../../common/identity/keys.js';
import type { IdentityToWorker, KeyAnswer } from '../../common/identity/wire.js';
import { startRedis, type PrivateRedis } from '../helpers/redis.js';

const ctx = { actor: 'test' };
const PREFIX = 'tp:id:'; // redis.keyPrefix default "tp:" + "id:"
let redis: PrivateRedis;
let raw: Redis;
let dir: string;
const pepper = randomBytes(32);
/** Another instance's pepper (a misconfigured one). */
const wrongPepper = randomBytes(32);

// This thread's log lines, read back (the pepper guard's errors).
const logRing = createAccessRing(1 << 20);
setLogThread('test', logRing);
const logReader = new RingReader(logRing);
const logLines: Array<Record<string, unknown>> = [];
function readLogs(): Array<Record<string, unknown>> {
  for (let span = logReader.next(); span !== null; span = logReader.next()) {
    for (const line of logReader.buf.subarray(span[0], span[1]).toString('utf8').split('\n')) if (line !== '') logLines.push(JSON.parse(line));
    logReader.release(span[1]);
  }
  return logLines;
}

beforeAll(async () => {
  redis = await startRedis();
  raw = new Redis(redis.url, { lazyConnect: true });
  await raw.connect();
  dir = mkdtempSync(join(tmpdir(), 'turnpike-idsvc-redis-'));
  writeFileSync(join(dir, 'pepper'), pepper.toString('hex'));
  writeFileSync(join(dir, 'wrong-pepper'), wrongPepper.toString('hex'));
  writeFileSync(join(dir, 'enc1'), randomBytes(32).toString('hex'));
});
afterAll(async () => {
  raw?.disconnect();
  await redis?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function config(pepperFile = 'pepper'): GatewayConfig {
  const r = validateConfig({
    upstreams: { u: { targets: ['http://127.0.0.1:9'] } },
    routes: [{ id: 'orders', path: '/orders', upstream: 'u', auth: {} }],
    redis: { url: redis.url },
    store: { kind: 'redis' },
    secrets: { keyPepper: `file:${join(dir, pepperFile)}`, encryptionKeys: { '1': `file:${join(dir, 'enc1')}` } },
  });
  if (!r.ok) throw new Error(r.errors.map((e) => `${e.path}: ${e.message}`).join('\n'));
  return r.config;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

class WorkerLine {
  readonly invals: Array<{ at: number; hashes: string[] | null }> = [];
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
      } else this.invals.push({ at: performance.now(), hashes: m.hashes });
    });
  }

  ask(key: string): Promise<KeyAnswer> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.port.postMessage({ t: 'key', id, key });
    });
  }

  /** Waits until `count` invalidations arrived (or `ms` passed); returns their hashes. */
  async wait(count: number, ms = 3000): Promise<Array<string[] | null>> {
    const end = Date.now() + ms;
    while (this.invals.length < count && Date.now() < end) await sleep(2);
    return this.invals.map((i) => i.hashes);
  }

  close(): void {
    this.port.close();
  }
}

async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await sleep(10);
}

describe('identity service on Redis: two instances', () => {
  let a: IdentityService;
  let b: IdentityService;
  let lines: WorkerLine[];

  beforeEach(async () => {
    if (!redis.running) await redis.restart();
    await raw.flushall();
    a = new IdentityService(config());
    b = new IdentityService(config());
    a.start();
    b.start();
    await Promise.all([a.getStore(), b.getStore()]);
    // Both change feeds subscribed before anything is written.
    await until(() => a.storeUp && b.storeUp, 3000);
    expect(a.storeUp && b.storeUp).toBe(true);
    lines = [new WorkerLine(a, 0), new WorkerLine(a, 1), new WorkerLine(b, 0), new WorkerLine(b, 1)];
  });

  afterEach(async () => {
    for (const l of lines) l.close();
    await Promise.all([a.close(), b.close()]);
  });

  it('a revocation on one instance reaches every worker of the other within 1 s; its own workers hear it once', async () => {
    const [a0, a1, b0, b1] = lines as [WorkerLine, WorkerLine, WorkerLine, WorkerLine];
    const store = await a.getStore();
    const { keys } = await store.createConsumer({ name: 'acme', keys: [{ name: 'k' }] }, ctx);
    const hash = keys[0]!.record.hash;
    // The creation reaches everyone too (workers may hold the new hash as unknown).
    for (const l of lines) expect(await l.wait(1)).toEqual([[hash]]);
    expect(await b.lookup(keys[0]!.key)).toMatchObject({ ok: true, keyStatus: 'active', consumerName: 'acme' });

    const t0 = performance.now();
    await store.revokeKey(keys[0]!.record.id, ctx);
    for (const l of [b0, b1]) expect(await l.wait(2, 1000)).toEqual([[hash], [hash]]);
    const delay = Math.max(b0.invals[1]!.at, b1.invals[1]!.at) - t0;
    expect(delay).toBeLessThan(1000);
    expect(await b.lookup(keys[0]!.key)).toMatchObject({ ok: true, keyStatus: 'revoked' });
    // Instance A's own change: its workers got it once (the pub/sub echo is skipped).
    await sleep(100);
    expect(a0.invals.map((i) => i.hashes)).toEqual([[hash], [hash]]);
    expect(a1.invals.map((i) => i.hashes)).toEqual([[hash], [hash]]);
    expect(a.stats().invalidations).toBe(2);
    expect(b.stats().invalidations).toBe(2);
    console.log(`cross-instance revocation delay: ${delay.toFixed(1)} ms`);
  });

  it('suspensions and grant changes cross instances: key hashes, and null for grants', async () => {
    const [a0, , b0] = lines as [WorkerLine, WorkerLine, WorkerLine, WorkerLine];
    const sa = await a.getStore();
    const sb = await b.getStore();
    const { consumer, keys } = await sa.createConsumer({ name: 'c', keys: [{ name: 'x' }, { name: 'y' }] }, ctx);
    await b0.wait(1);
    await sb.updateConsumer(consumer.id, { status: 'suspended' }, ctx);
    const got = await a0.wait(2);
    expect([...got[1]!].sort()).toEqual(keys.map((k) => k.record.hash).sort());
    await sb.createGrant({ subject: { kind: 'consumer', id: consumer.id }, routeId: 'orders' }, ctx);
    expect((await a0.wait(3))[2]).toBeNull();
    expect(await a.lookup(keys[1]!.key)).toMatchObject({ ok: true, consumerStatus: 'suspended' });
  });

  it('a flood of one unknown key from two workers reads Redis once', async () => {
    const [, , b0, b1] = lines as [WorkerLine, WorkerLine, WorkerLine, WorkerLine];
    const bad = generateKey('live');
    const answers = await Promise.all(Array.from({ length: 400 }, (_, i) => (i % 2 === 0 ? b0 : b1).ask(bad)));
    expect(answers.every((x) => !x.ok && x.reason === 'unknown')).toBe(true);
    for (let i = 0; i < 100; i++) await b1.ask(bad);
    const s = b.stats();
    expect(s.storeLookups).toBe(1);
    expect(s.unknown + s.negativeCached).toBe(500);
    expect(s.negativeCached).toBeGreaterThanOrEqual(100);
  });

  it('a hash another instance makes known leaves this instance\'s negative cache', async () => {
    const [, , b0, b1] = lines as [WorkerLine, WorkerLine, WorkerLine, WorkerLine];
    const sa = await a.getStore();
    const { keys } = await sa.createConsumer({ name: 'c', keys: [{ name: 'k' }] }, ctx);
    await b0.wait(1);
    const later = generateKey('live');
    const h = hashKey(pepper, later);
    expect(await b.lookup(later)).toEqual({ ok: false, reason: 'unknown' });
    expect(await b.lookup(later)).toEqual({ ok: false, reason: 'unknown' });
    expect(b.stats()).toMatchObject({ storeLookups: 1, negativeCached: 1 });
    // The hash is indexed (by hand, under an existing key) and a creation naming it is published, as another instance would.
    await raw.set(`${PREFIX}kh:${h}`, keys[0]!.record.id);
    await raw.publish(`${PREFIX}changes`, JSON.stringify([{ kind: 'key', op: 'create', ids: [keys[0]!.record.id], keyHashes: [h], at: Date.now() }]));
    for (const l of [b0, b1]) expect((await l.wait(2))[1]).toEqual([h]);
    expect(await b.lookup(later)).toMatchObject({ ok: true, keyId: keys[0]!.record.id });
    expect(b.stats().storeLookups).toBe(2);
  });

  it('last use from workers is written to Redis in one batch', async () => {
    const sa = await a.getStore();
    const { keys } = await sa.createConsumer({ name: 'c', keys: [{ name: 'k' }] }, ctx);
    a.used([keys[0]!.record.id, 5_000, keys[0]!.record.id, 7_000]);
    b.used([keys[0]!.record.id, 6_000]);
    await Promise.all([a.flushUsed(), b.flushUsed()]);
    expect((await sa.getKey(keys[0]!.record.id))!.lastUsedAt).toBe(7_000);
    expect(a.stats().touchCalls + b.stats().touchCalls).toBe(2);
  });

  it('after the change feed reconnects (messages may have been missed), workers drop everything', async () => {
    const [a0, a1, b0, b1] = lines as [WorkerLine, WorkerLine, WorkerLine, WorkerLine];
    const bad = generateKey('live');
    expect(await b.lookup(bad)).toEqual({ ok: false, reason: 'unknown' });
    await redis.kill();
    await until(() => !b.storeUp, 3000);
    expect(b.storeUp).toBe(false);
    expect(await b0.ask(generateKey('live'))).toMatchObject({ ok: false, reason: 'unavailable' });
    await redis.restart();
    for (const l of [a0, a1, b0, b1]) expect(await l.wait(1, 5000)).toEqual([null]);
    await until(() => a.storeUp && b.storeUp, 3000);
    expect(b.storeUp).toBe(true);
    // The negative cache was forgotten too: the next lookup of that key reads again.
    const before = b.stats().storeLookups;
    expect(await b.lookup(bad)).toEqual({ ok: false, reason: 'unknown' });
    expect(b.stats().storeLookups).toBe(before + 1);
  });
});

describe('pepper guard: two instances with different peppers, after Redis lost its data', () => {
  const RIGHT = pepperCheck(pepper);
  const WRONG = pepperCheck(wrongPepper);
  const services: IdentityService[] = [];
  const svc = (pepperFile: string, pepperCheckMs: number) => {
    const s = new IdentityService(config(pepperFile), { pepperCheckMs });
    services.push(s);
    return s;
  };
  /** Whether `s` answers lookups (a key never made: unknown) rather than unavailable. */
  const serving = async (s: IdentityService) => {
    const a = await s.lookup(generateKey('live'));
    return !a.ok && a.reason === 'unknown';
  };

  beforeEach(async () => {
    if (!redis.running) await redis.restart();
    await raw.flushall();
    readLogs().length = 0;
  });
  afterEach(async () => {
    await Promise.all(services.splice(0).map((s) => s.close()));
  });

  it('the right one re-claims the empty store at its scheduled check; the wrong one, retrying, stays refused; never both serving', async () => {
    const right = svc('pepper', 200);
    expect(await right.start()).toEqual({ state: 'open' });
    const wrong = svc('wrong-pepper', 200);
    const w = await wrong.start();
    expect(w).toMatchObject({ state: 'failed', permanent: true });
    expect(await raw.get(`${PREFIX}pepper`)).toBe(RIGHT);

    await raw.flushall(); // Redis lost everything, the pepper check with it
    expect(await raw.get(`${PREFIX}pepper`)).toBeNull();
    await expect.poll(() => raw.get(`${PREFIX}pepper`), { timeout: 2000, interval: 20 }).toBe(RIGHT);
    await sleep(1100); // the wrong one's retry interval: its next lookup opens again (and checks again)
    expect(await serving(wrong)).toBe(false);
    expect(await serving(right)).toBe(true);
    expect([right.storeUp, wrong.storeUp]).toEqual([true, false]);
    expect(wrong.storeWarning).toContain(`pepper check found in the store: ${RIGHT}, this instance's pepper gives: ${WRONG}`);
    expect(right.storeWarning).toBeNull();
    const refused = readLogs().filter((l) => l['level'] === 'error' && String(l['error']).includes(`this instance's pepper gives: ${WRONG}`));
    expect(refused.length).toBeGreaterThanOrEqual(1);
    expect(String(refused[0]!['msg'])).toMatch(/identity store refused/);
    expect(String(refused[0]!['error'])).toMatch(/set secrets\.keyPepper to the pepper this store was made with/);
  });

  it('the wrong one claims first (its retry); the right one finds another check, closes the store, says so, and its retries are refused; never both serving', async () => {
    const right = svc('pepper', 60_000);
    expect(await right.start()).toEqual({ state: 'open' });
    const wrong = svc('wrong-pepper', 60_000);
    expect(await wrong.start()).toMatchObject({ state: 'failed', permanent: true });
    const lines = [new WorkerLine(right, 0), new WorkerLine(right, 1)];
    try {
      await sleep(1100); // past the wrong one's retry interval
      await raw.flushall();
      expect(await serving(wrong)).toBe(true); // it opened the empty store and claimed it
      expect(await raw.get(`${PREFIX}pepper`)).toBe(WRONG);
      // The right one has not checked yet: the check (scheduled, or at the feed's reconnection) finds the other pepper.
      expect(await right.checkStore()).toBe(false);
      expect(await serving(right)).toBe(false);
      expect([right.storeUp, wrong.storeUp]).toEqual([false, true]);
      for (const l of lines) expect(await l.wait(1)).toEqual([null]); // workers drop what they cached from it
      expect(right.storeWarning).toContain(`pepper check found in the store: ${WRONG}, this instance's pepper gives: ${RIGHT}`);
      const said = readLogs().filter((l) => l['level'] === 'error' && String(l['msg']).startsWith('identity store closed'));
      expect(said).toHaveLength(1);
      expect(String(said[0]!['msg'])).toMatch(/secrets\.keyPepper/);
      expect(String(said[0]!['error'])).toContain(`pepper check found in the store: ${WRONG}, this instance's pepper gives: ${RIGHT}`);
      // Not reopened faster than its retry interval; each retry checks again, and is refused again.
      const reads = right.stats().storeLookups;
      expect(await serving(right)).toBe(false);
      await sleep(1100);
      expect(await serving(right)).toBe(false);
      expect(right.stats().storeLookups).toBe(reads);
      expect([right.storeUp, wrong.storeUp]).toEqual([false, true]);
      // Writes through the store the wrong one holds are its own; the right one writes nothing.
      await expect(right.getStore()).rejects.toMatchObject({ permanent: true });
    } finally {
      for (const l of lines) l.close();
    }
  });

  it('a Redis restart without persistence: the change feed reconnects and the instance claims the empty store again at once', async () => {
    const right = svc('pepper', 60_000);
    expect(await right.start()).toEqual({ state: 'open' });
    await until(() => right.storeUp, 3000);
    await redis.kill();
    await redis.restart();
    await expect.poll(() => raw.get(`${PREFIX}pepper`).catch(() => null), { timeout: 8000, interval: 100 }).toBe(RIGHT);
    const wrong = svc('wrong-pepper', 60_000);
    expect(await wrong.start()).toMatchObject({ state: 'failed', permanent: true });
    expect(await serving(right)).toBe(true);
  });
});
