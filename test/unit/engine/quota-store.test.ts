/**
 * The quota file (engine/quota-store.ts), white-box and socket-free: a real
 * bucket table, real quota decisions (algorithms.ts) on it as a worker
 * makes them, a fake clock, files in a temporary directory.
 *
 * - counts survive: saved, then read back into a new table, the next
 *   request of a key continues from its count (quota 5: 3 used, 2 more);
 * - what is dropped at load: ended periods, quotas whose tag is gone (a
 *   changed quota number, a removed policy), malformed keys; cluster
 *   quotas are never written (Redis keeps them);
 * - saves only when a count changed; the file is mode 0600, written
 *   atomically (no temporary file left), stale temporaries of dead
 *   processes are removed; the overflow bucket is kept too;
 * - bad files never stop a start: a corrupt one is moved aside with one
 *   log line saying what to do, an unreadable one is reported once, a
 *   failing save is reported once per state change and retried.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { GatewayConfig, RateLimitPolicy } from '../../../common/config/types.js';
import type { Level } from '../../../common/log.js';
import { H_QUOTA_DIRTY, OVERFLOW_ENTRIES, PROBE_WINDOW, RateLimitTable, createRateLimitTable, hashKey, type FindResult } from '../../../common/rate-limit-layout.js';
import { QuotaStore, localQuotas, parseQuotaFile, quotaFilePath, type QuotaFile } from '../../../engine/quota-store.js';
import { Decision, quota } from '../../../workers/policies/rate-limit/algorithms.js';
import { periodBounds } from '../../../workers/policies/rate-limit/calendar.js';
import { valid } from '../config/helpers.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'turnpike-quota-store-'));
  dirs.push(d);
  return d;
}

/** 2025-12-01 10:00 UTC, with a fraction, as the shared clock gives it. */
const NOON = Date.parse('2025-12-01T10:00:00Z') + 0.37;

function configOf(limits: Record<string, unknown>, extra: Record<string, unknown> = {}): GatewayConfig {
  return valid({
    upstreams: { u: { targets: ['http://127.0.0.1:9001'] } },
    rateLimits: limits,
    routes: [{ id: 'r', path: '/x', upstream: 'u', rateLimit: Object.keys(limits) }],
    ...extra,
  });
}

interface Harness {
  table: RateLimitTable;
  store: QuotaStore;
  logs: { level: Level; msg: string; fields?: Record<string, unknown> }[];
  clock: { now: number };
  config: GatewayConfig;
}

function harness(config: GatewayConfig, dir: string, clock = { now: NOON }, sab = createRateLimitTable(1024)): Harness {
  const table = new RateLimitTable(sab);
  const logs: Harness['logs'] = [];
  const store = new QuotaStore({ table, now: () => clock.now, cwd: dir, log: (level, msg, fields) => logs.push({ level, msg, ...(fields ? { fields } : {}) }) });
  store.configure(config);
  return { table, store, logs, clock, config };
}

const found: FindResult = { isNew: false, overflowed: false };

/** One request as a worker decides it (index.ts: the key's hash seeded by its kind). */
function admit(h: Harness, pol: RateLimitPolicy, key: string, now = h.clock.now): boolean {
  const hash = new Int32Array(2);
  hashKey(pol.tag ^ Math.imul(4, 0x9e3779b9), key, hash);
  const e = h.table.find(pol.tag, hash[0]!, hash[1]!, now, found);
  const [s, end] = periodBounds(now, pol.period!, pol.timeZone);
  const d = new Decision();
  quota(h.table.f64, h.table.base(e) >> 1, found.isNew, now, pol.rate, s, end, d);
  h.table.unlock(e);
  return d.allowed;
}

function admitted(h: Harness, pol: RateLimitPolicy, key: string, n: number): number {
  let a = 0;
  for (let i = 0; i < n; i++) if (admit(h, pol, key)) a++;
  return a;
}

const PER_KEY = { perKey: { by: 'header:x-key', quota: 5, period: 'day' } };

describe('counts survive a restart', () => {
  it('saves the counts and reads them back into a new table: a key continues from its count', async () => {
    const dir = tempDir();
    const config = configOf(PER_KEY);
    const pol = config.rateLimits['perKey']!;
    const a = harness(config, dir);
    a.store.load();
    expect(admitted(a, pol, 'alice', 3)).toBe(3);
    expect(admitted(a, pol, 'bob', 7)).toBe(5);
    await a.store.tick();
    const file = join(dir, '.turnpike', `quotas-${config.server.port}.json`);
    expect(a.store.path).toBe(file);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, '.turnpike')).mode & 0o777).toBe(0o700);
    expect(readdirSync(join(dir, '.turnpike'))).toEqual([`quotas-${config.server.port}.json`]); // no temporary left
    const doc = JSON.parse(readFileSync(file, 'utf8')) as QuotaFile;
    expect(doc.turnpikeQuotas).toBe(1);
    expect(doc.quotas).toHaveLength(1);
    expect(doc.quotas[0]).toMatchObject({ policy: 'perKey', tag: pol.tag, period: 'day', timeZone: 'UTC', start: Date.parse('2025-12-01T00:00:00Z'), end: Date.parse('2025-12-02T00:00:00Z') });
    expect(doc.quotas[0]!.keys.map((k) => k[2]).sort()).toEqual([3, 5]);
    // No key text in the file, only hashes.
    expect(readFileSync(file, 'utf8')).not.toContain('alice');

    // A new process: a fresh table, the same config, later the same day.
    const b = harness(config, dir, { now: NOON + 3_600_000 });
    const report = b.store.load();
    expect(report).toMatchObject({ restored: 2, ended: 0, unknown: 0, invalid: 0, full: 0, problem: null });
    expect(admitted(b, pol, 'alice', 5)).toBe(2);
    expect(admitted(b, pol, 'bob', 1)).toBe(0);
    expect(admitted(b, pol, 'carol', 6)).toBe(5);
    expect(b.logs.find((l) => l.msg === 'quota counts restored')?.fields).toMatchObject({ keys: 2 });
  });

  it('drops counts of a period that has ended, and of quotas that changed or left the config', async () => {
    const dir = tempDir();
    const config = configOf({ ...PER_KEY, monthly: { by: 'global', quota: 100, period: 'month', timeZone: 'Europe/Paris' } });
    const a = harness(config, dir);
    a.store.load();
    admitted(a, config.rateLimits['perKey']!, 'alice', 2);
    admitted(a, config.rateLimits['monthly']!, 'x', 4);
    await a.store.close();

    // The next day: the daily counts are over, the monthly one is not.
    const b = harness(config, dir, { now: NOON + 86_400_000 });
    expect(b.store.load()).toMatchObject({ restored: 1, ended: 1, unknown: 0 });
    expect(admitted(b, config.rateLimits['perKey']!, 'alice', 5)).toBe(5);
    expect(admitted(b, config.rateLimits['monthly']!, 'x', 100)).toBe(96);

    // The same day, but the daily quota is now 6: a new policy, counted afresh.
    const changed = configOf({ perKey: { by: 'header:x-key', quota: 6, period: 'day' }, monthly: { by: 'global', quota: 100, period: 'month', timeZone: 'Europe/Paris' } });
    const c = harness(changed, dir);
    expect(c.store.load()).toMatchObject({ restored: 1, unknown: 1 });
    expect(admitted(c, changed.rateLimits['perKey']!, 'alice', 10)).toBe(6);
  });

  it('rewrites the file without what it dropped at the next interval, even if no count changes', async () => {
    const dir = tempDir();
    const config = configOf(PER_KEY);
    const a = harness(config, dir);
    a.store.load();
    admitted(a, config.rateLimits['perKey']!, 'k', 1);
    await a.store.close();
    const b = harness(configOf({ renamed: { by: 'header:x-key', quota: 5, period: 'day' } }), dir);
    expect(b.store.load()).toMatchObject({ restored: 0, unknown: 1 });
    await b.store.tick();
    expect((JSON.parse(readFileSync(b.store.path, 'utf8')) as QuotaFile).quotas.map((q) => [q.policy, q.keys.length])).toEqual([['renamed', 0]]);
  });

  it('keeps the overflow bucket of a policy whose keys found the table full', async () => {
    const dir = tempDir();
    const config = configOf(PER_KEY);
    const pol = config.rateLimits['perKey']!;
    const a = harness(config, dir);
    a.store.load();
    // Fill the window of one key's hash with other live buckets, so the key overflows.
    const hash = new Int32Array(2);
    hashKey(pol.tag ^ Math.imul(4, 0x9e3779b9), 'crowded', hash);
    for (let i = 1; i <= PROBE_WINDOW; i++) {
      const e = a.table.find(77, i, hash[1]!, NOON, found);
      a.table.f64[(a.table.base(e) >> 1) + 5] = NOON + 86_400_000;
      a.table.unlock(e);
    }
    expect(admitted(a, pol, 'crowded', 2)).toBe(2);
    expect(a.table.overflows).toBeGreaterThan(0);
    await a.store.close();
    const doc = JSON.parse(readFileSync(a.store.path, 'utf8')) as QuotaFile;
    expect(doc.quotas[0]!.overflow).toBe(2);
    const b = harness(config, dir);
    b.store.load();
    const o = b.table.overflowEntry(pol.tag);
    expect(o).toBe(b.table.capacity + ((pol.tag >>> 0) % OVERFLOW_ENTRIES));
    expect(b.table.f64[(b.table.base(o) >> 1) + 2]).toBe(2);
  });

  it('never writes quotas shared through Redis (scope cluster): the Redis sync keeps those', async () => {
    const dir = tempDir();
    const config = configOf(
      { shared: { by: 'global', quota: 10, period: 'day' }, mine: { by: 'global', quota: 10, period: 'day', scope: 'local' } },
      { redis: { url: 'redis://127.0.0.1:6379' } },
    );
    expect([...localQuotas(config).values()].map((p) => p.name)).toEqual(['mine']);
    const a = harness(config, dir);
    a.store.load();
    admitted(a, config.rateLimits['shared']!, 'x', 3);
    admitted(a, config.rateLimits['mine']!, 'x', 2);
    await a.store.close();
    const doc = JSON.parse(readFileSync(a.store.path, 'utf8')) as QuotaFile;
    expect(doc.quotas.map((q) => [q.policy, q.keys.length])).toEqual([['mine', 1]]);
  });
});

describe('when it writes', () => {
  it('only when a count changed; refusals change nothing', async () => {
    const dir = tempDir();
    const config = configOf({ perKey: { by: 'header:x-key', quota: 2, period: 'hour' } });
    const pol = config.rateLimits['perKey']!;
    const h = harness(config, dir);
    h.store.load();
    await h.store.tick();
    expect(h.store.saves).toBe(0);
    expect(existsSync(h.store.path)).toBe(false);
    admitted(h, pol, 'k', 2);
    expect(h.table.f64[H_QUOTA_DIRTY]).toBe(1);
    await h.store.tick();
    expect(h.store.saves).toBe(1);
    expect(h.table.f64[H_QUOTA_DIRTY]).toBe(0);
    await h.store.tick();
    expect(h.store.saves).toBe(1);
    expect(admitted(h, pol, 'k', 3)).toBe(0);
    await h.store.tick();
    expect(h.store.saves).toBe(1);
  });

  it('writes no file for a config without local quotas', async () => {
    const dir = tempDir();
    const config = configOf({ r: { by: 'ip', rate: 5, per: '1s' } });
    const h = harness(config, dir);
    h.store.load();
    await h.store.close();
    expect(existsSync(join(dir, '.turnpike'))).toBe(false);
  });

  it('a reload that removes a quota rewrites the file without it; a new quotaFile is used from then on', async () => {
    const dir = tempDir();
    const both = configOf({ ...PER_KEY, other: { by: 'global', quota: 9, period: 'week' } });
    const h = harness(both, dir);
    h.store.load();
    admitted(h, both.rateLimits['perKey']!, 'k', 1);
    admitted(h, both.rateLimits['other']!, 'k', 1);
    await h.store.tick();
    const first = h.store.path;
    h.store.configure(configOf(PER_KEY));
    await h.store.tick();
    expect((JSON.parse(readFileSync(first, 'utf8')) as QuotaFile).quotas.map((q) => q.policy)).toEqual(['perKey']);
    h.store.configure(configOf(PER_KEY, { rateLimitTable: { quotaFile: 'elsewhere/q.json' } }));
    expect(h.logs.some((l) => l.msg.startsWith('quota counts are kept in a new file'))).toBe(true);
    await h.store.tick();
    expect(h.store.path).toBe(join(dir, 'elsewhere', 'q.json'));
    expect((JSON.parse(readFileSync(h.store.path, 'utf8')) as QuotaFile).quotas[0]!.keys).toHaveLength(1);
  });

  it('keeps a count made in the next period by a worker whose clock ran ahead for the next save', async () => {
    const dir = tempDir();
    const config = configOf({ perKey: { by: 'header:x-key', quota: 5, period: 'hour' } });
    const pol = config.rateLimits['perKey']!;
    const endOfHour = Date.parse('2025-12-01T11:00:00Z');
    const h = harness(config, dir, { now: endOfHour - 0.5 });
    h.store.load();
    admit(h, pol, 'k', endOfHour + 0.1); // the worker's reading is past the hour; the store's is not yet
    await h.store.tick();
    expect((JSON.parse(readFileSync(h.store.path, 'utf8')) as QuotaFile).quotas[0]!.keys).toHaveLength(0);
    h.clock.now = endOfHour + 1;
    await h.store.tick();
    expect((JSON.parse(readFileSync(h.store.path, 'utf8')) as QuotaFile).quotas[0]!.keys).toHaveLength(1);
  });

  it('resolves a relative quotaFile from the working directory; the default is named by the port served', () => {
    const config = configOf(PER_KEY, { server: { port: 8123 } });
    expect(quotaFilePath(config, '/srv/gw')).toBe('/srv/gw/.turnpike/quotas-8123.json');
    expect(quotaFilePath(configOf(PER_KEY, { rateLimitTable: { quotaFile: 'q.json' } }), '/srv/gw')).toBe('/srv/gw/q.json');
    expect(quotaFilePath(configOf(PER_KEY, { rateLimitTable: { quotaFile: '/var/lib/turnpike/q.json' } }), '/srv/gw')).toBe('/var/lib/turnpike/q.json');
  });
});

describe('files that cannot be used', () => {
  const writeQuotaFile = (h: Harness, text: string) => {
    mkdirSync(join(h.store.path, '..'), { recursive: true });
    writeFileSync(h.store.path, text);
  };

  it.each([
    ['not JSON', '{"turnpikeQuotas": 1, "quot', 'not JSON'],
    ['another format', '{"hello": "world"}', 'no "turnpikeQuotas" version: not a quota file'],
    ['a newer version', '{"turnpikeQuotas": 2, "quotas": []}', 'format version 2, this gateway reads 1'],
    ['quotas not a list', '{"turnpikeQuotas": 1, "quotas": {}}', '"quotas" is not a list'],
    ['a truncated write of an old version', '', 'not JSON'],
  ])('%s: moved aside, one line saying what to do, quotas start from zero, saving works', async (_what, text, reason) => {
    const dir = tempDir();
    const config = configOf(PER_KEY);
    const h = harness(config, dir);
    writeQuotaFile(h, text);
    const report = h.store.load();
    expect(report.problem).toContain(reason);
    const errors = h.logs.filter((l) => l.level === 'error');
    expect(errors).toHaveLength(1);
    expect(errors[0]!.msg).toContain('is not a valid quota file');
    expect(errors[0]!.msg).toContain('local quotas start from zero');
    expect(errors[0]!.msg).toMatch(/moved to .*\.corrupt-.*: look at it if counts matter, then delete it/);
    const aside = String(errors[0]!.fields!['movedTo']);
    expect(readFileSync(aside, 'utf8')).toBe(text);
    expect(admitted(h, config.rateLimits['perKey']!, 'k', 6)).toBe(5);
    await h.store.tick();
    expect(parseQuotaFile(readFileSync(h.store.path, 'utf8')).quotas[0]!.keys).toHaveLength(1);
  });

  it('skips malformed keys and keeps the rest', () => {
    const dir = tempDir();
    const config = configOf(PER_KEY);
    const pol = config.rateLimits['perKey']!;
    const h = harness(config, dir);
    const start = Date.parse('2025-12-01T00:00:00Z');
    writeQuotaFile(h, JSON.stringify({
      turnpikeQuotas: 1, savedAt: 'x',
      quotas: [{ policy: 'perKey', tag: pol.tag, period: 'day', timeZone: 'UTC', start, end: start + 86_400_000, keys: [[1, 2, 3], [1, 'x', 3], [4, 5, -1], [2 ** 31, 0, 1], [6, 7]] }],
    }));
    expect(h.store.load()).toMatchObject({ restored: 1, invalid: 4, problem: null });
  });

  it('a file that cannot be read (a directory here) is reported once; nothing crashes; a failing save is reported once, then its recovery', async () => {
    const dir = tempDir();
    const config = configOf(PER_KEY, { rateLimitTable: { quotaFile: 'q.json' } });
    const h = harness(config, dir);
    mkdirSync(join(dir, 'q.json'));
    const report = h.store.load();
    expect(report.problem).toBe('cannot be read (EISDIR)');
    expect(h.logs.filter((l) => l.level === 'error').map((l) => l.msg)).toEqual([
      `quota file ${join(dir, 'q.json')} cannot be read (EISDIR); local quotas start from zero and their counts cannot be saved either: give the gateway read and write access to it, or set rateLimitTable.quotaFile to a file it can use`,
    ]);
    admitted(h, config.rateLimits['perKey']!, 'k', 1);
    await h.store.tick();
    admitted(h, config.rateLimits['perKey']!, 'k', 1);
    await h.store.tick();
    const writeErrors = h.logs.filter((l) => l.msg.includes('cannot be written'));
    expect(writeErrors).toHaveLength(1);
    expect(writeErrors[0]!.msg).toContain('counts are kept in memory and saved once it can be');
    // Fixed by the operator: the next interval writes, and says so once.
    rmSync(join(dir, 'q.json'), { recursive: true });
    await h.store.tick();
    expect(h.logs.filter((l) => l.msg === 'quota file written again')).toHaveLength(1);
    expect(parseQuotaFile(readFileSync(join(dir, 'q.json'), 'utf8')).quotas[0]!.keys[0]![2]).toBe(2);
  });

  it('removes the temporary file of a process that died while writing, not that of a live one', () => {
    const dir = tempDir();
    const config = configOf(PER_KEY, { rateLimitTable: { quotaFile: 'q.json' } });
    const h = harness(config, dir);
    writeFileSync(join(dir, 'q.json.tmp-999999999'), '{"turn');
    writeFileSync(join(dir, `q.json.tmp-${process.ppid}`), '{"turn');
    h.store.load();
    expect(readdirSync(dir).sort()).toEqual([`q.json.tmp-${process.ppid}`]);
  });
});
