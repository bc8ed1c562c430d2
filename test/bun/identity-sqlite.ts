// Run by Bun (test/unit/identity/store-bun.test.ts spawns it): the SQLite
// identity store opens on Bun through bun:sqlite (better-sqlite3 does not
// load there) and behaves as on Node for the basics. Bun runs this
// TypeScript directly, importing the sources (.js specifiers resolve to
// .ts). Prints one JSON line of results, then "N passed, N failed".
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hashKey } from '../../common/identity/keys.js';
import { openSqliteStore } from '../../admin/identity/store/sqlite.js';
import { StoreError, keyVerdict } from '../../admin/identity/store/types.js';

const dir = mkdtempSync(join(tmpdir(), 'turnpike-bun-id-'));
const path = join(dir, 'db', 'turnpike.db');
const pepper = randomBytes(32);
let now = 1_800_000_000_000;
const clock = () => now;
const ctx = { actor: 'bun' };
const results: Record<string, unknown> = {};
let passed = 0;
let failed = 0;
async function check(name: string, fn: () => Promise<unknown>) {
  try {
    results[name] = await fn();
    passed++;
  } catch (e) {
    results[name] = `FAIL: ${(e as Error).message}`;
    failed++;
  }
}
function eq(a: unknown, b: unknown, what: string) {
  if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${what}: expected ${JSON.stringify(b)}, got ${JSON.stringify(a)}`);
}

results.runtime = typeof (globalThis as { Bun?: unknown }).Bun !== 'undefined' ? 'bun' : 'node';
const store = await openSqliteStore({ path, pepper, clock });
const plain: string[] = [];
await check('consumer with keys, lookup', async () => {
  const { consumer, keys } = await store.createConsumer({ id: 'c1', name: 'A', keys: [{ id: 'k1', name: 'a' }, { id: 'k2', name: 'b' }] }, ctx);
  plain.push(...keys.map((k) => k.key));
  const l = await store.lookupKey(hashKey(pepper, keys[0]!.key));
  eq([l?.key.id, l?.consumer.id, l && keyVerdict(l, now)], ['k1', consumer.id, 'ok'], 'lookup');
  return 'ok';
});
await check('suspend cascades, rotate, revoke', async () => {
  await store.updateConsumer('c1', { status: 'suspended' }, ctx);
  eq(keyVerdict((await store.lookupKey(hashKey(pepper, plain[1]!)))!, now), 'consumer_suspended', 'suspended');
  await store.updateConsumer('c1', { status: 'active' }, ctx);
  const rot = await store.rotateKey('k1', { graceMs: 10 }, ctx);
  plain.push(rot.key);
  now += 10;
  eq(keyVerdict((await store.lookupKey(rot.old.hash))!, now), 'key_expired', 'old after grace');
  await store.revokeKey('k2', ctx);
  eq(keyVerdict((await store.lookupKey(hashKey(pepper, plain[1]!)))!, now), 'key_revoked', 'revoked');
  eq((await store.purgeExpired(now, ctx)).map((k) => k.id), ['k1'], 'purged');
  await store.touchKeys([{ id: rot.record.id, at: now }]);
  eq((await store.getKey(rot.record.id))?.lastUsedAt, now, 'lastUsedAt');
  return 'ok';
});
await check('atomic: duplicate key id leaves nothing', async () => {
  const e = await store.createConsumer({ id: 'c2', name: 'B', keys: [{ id: 'new', name: 'a' }, { id: 'k2', name: 'dup' }] }, ctx).then(() => null, (err) => err);
  eq(e instanceof StoreError ? e.code : String(e), 'conflict', 'code');
  eq([await store.getConsumer('c2'), await store.getKey('new')], [null, null], 'nothing written');
  return 'ok';
});
await check('paging', async () => {
  for (let i = 0; i < 25; i++) await store.createConsumer({ id: `p${String(i).padStart(2, '0')}`, name: 'p' }, ctx);
  const seen: string[] = [];
  let cursor: string | null = null;
  do {
    const page = await store.listConsumers({ cursor, limit: 4 });
    seen.push(...page.items.map((c) => c.id));
    cursor = page.nextCursor;
  } while (cursor !== null);
  eq(seen.length, 26, 'count');
  eq(new Set(seen).size, 26, 'unique');
  return 'ok';
});
await store.close();
await check('file: 0600, WAL, reopened, no plaintext key in the bytes', async () => {
  eq(statSync(path).mode & 0o777, 0o600, 'mode');
  const again = await openSqliteStore({ path, pepper, clock });
  eq((await again.getConsumer('c1'))?.name, 'A', 'reopened');
  const files = readdirSync(join(dir, 'db'));
  if (!files.includes('turnpike.db-wal')) throw new Error(`no WAL file: ${files.join(', ')}`);
  const bytes = files.map((f) => readFileSync(join(dir, 'db', f)).toString('latin1')).join('\n');
  if (!bytes.includes('"c1"') && !bytes.includes('c1')) throw new Error('the dump holds no data');
  for (const k of plain) if (bytes.includes(k) || bytes.includes(k.slice(8, 41))) throw new Error('plaintext key in the file');
  await again.close();
  return 'ok';
});
rmSync(dir, { recursive: true, force: true });
console.log(JSON.stringify(results));
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
