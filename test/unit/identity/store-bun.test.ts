/**
 * The SQLite identity store on Bun: runs test/bun/identity-sqlite.ts under
 * the project's Bun (node_modules/.bin/bun), where the store must pick
 * bun:sqlite (better-sqlite3 does not load on Bun).
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

it('opens and works on Bun through bun:sqlite', () => {
  const r = spawnSync(`${ROOT}node_modules/.bin/bun`, [`${ROOT}test/bun/identity-sqlite.ts`], { encoding: 'utf8', timeout: 30_000, cwd: ROOT });
  const out = `${r.stdout}\n${r.stderr}`;
  expect(r.status, out).toBe(0);
  const results = JSON.parse(r.stdout.split('\n')[0]!);
  expect(results.runtime).toBe('bun');
  expect(Object.values(results).filter((v) => v !== 'ok' && v !== 'bun'), out).toEqual([]);
  expect(Object.keys(results)).toHaveLength(6);
  expect(r.stdout).toContain('5 passed, 0 failed');
});
