/**
 * The check harness of the Bun smoke scripts (run-smoke.mjs, tls-smoke.mjs):
 * `check(name, fn)` runs one check and prints ok/FAIL without stopping the
 * script; `eq` compares by JSON; `finish()` prints the tally and exits 1 when
 * a check failed.
 */
let passed = 0;
let failed = 0;

export async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`  ok   ${name}`);
  } catch (err) {
    failed++;
    console.log(`  FAIL ${name}: ${err.message}`);
  }
}

export function eq(a, b, what) {
  if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${what}: expected ${JSON.stringify(b)}, got ${JSON.stringify(a)}`);
}

export function finish() {
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}
