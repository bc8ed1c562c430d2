/**
 * Request fuzzer against a real gateway process (see harness.ts for how a
 * case runs, oracle.ts for the properties checked).
 *
 * In `npm test`: two bounded runs, one with a fixed seed and one with a
 * random seed (printed in the test name; replay it with FUZZ_SEED=<seed>).
 * Long runs and replays go through `npm run fuzz` (test/fuzz/run.mjs), which
 * sets FUZZ_REQUESTS / FUZZ_CASE for this file:
 *
 *   npm run fuzz -- --requests 1000000
 *   FUZZ_SEED=123 FUZZ_CASE=4567 npm run fuzz     # one case, described in full
 *
 * The backend is TURNPIKE_SERVER__BACKEND's (uWS when unset; `npm run
 * fuzz -- --backend node` sets it): `npm run test:node-backend` runs this
 * file on the node backend, `npm test` on uWS.
 *
 * Violations listed in oracle.ts KNOWN_FINDINGS for the backend are
 * reported but do not fail (FUZZ_STRICT=1 makes them fail); any other
 * violation fails.
 */
import { randomInt } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeCase, formatReport, FuzzEnv, runFuzz, staleKnownFindings, type FuzzOptions, type FuzzReport } from './harness.js';
import { backendOf } from './oracle.js';

const env = process.env;
const num = (name: string, dflt: number): number => (env[name] !== undefined && env[name] !== '' ? Number(env[name]) : dflt);
const FIXED_SEED = 0x5eed;
const RANDOM_SEED = randomInt(1, 2 ** 31);
const LONG = num('FUZZ_REQUESTS', 0);
const ONLY = env.FUZZ_CASE !== undefined && env.FUZZ_CASE !== '' ? Number(env.FUZZ_CASE) : null;
const STRICT = env.FUZZ_STRICT === '1';
const BACKEND = backendOf(env.TURNPIKE_SERVER__BACKEND);
const log = (line: string): void => void process.stderr.write(line + '\n');

function options(seed: number, requests: number, over: Partial<FuzzOptions> = {}): FuzzOptions {
  return {
    seed,
    requests,
    concurrency: num('FUZZ_CONCURRENCY', 256),
    stallMs: num('FUZZ_STALL_MS', 1500),
    batchSize: num('FUZZ_BATCH', 500),
    progressMs: 0,
    minimize: num('FUZZ_MINIMIZE', 0),
    onlyCase: null,
    log,
    ...over,
  };
}

function check(report: FuzzReport, details: boolean): void {
  const text = formatReport(report, details);
  log(text);
  const failing = STRICT ? report.groups.map((g) => g.signature) : report.unknown;
  expect(failing, text).toEqual([]);
}

describe(`request fuzzer (raw sockets against a real gateway, backend ${BACKEND})`, () => {
  let fz: FuzzEnv;
  beforeAll(async () => {
    fz = await FuzzEnv.start(num('FUZZ_WORKERS', 1), BACKEND);
  });
  afterAll(async () => {
    await fz?.stop();
  });

  if (ONLY !== null) {
    const seed = num('FUZZ_SEED', FIXED_SEED);
    it(`replays case ${ONLY} of seed ${seed}`, async () => {
      log(await describeCase(fz, seed, ONLY, num('FUZZ_STALL_MS', 1500)));
      expect((await fz.checkAlive())).toEqual([]);
    }, 60_000);
  } else if (LONG > 0) {
    const seed = num('FUZZ_SEED', RANDOM_SEED);
    it(`long run: ${LONG} requests, seed ${seed}`, async () => {
      log(`[fuzz] backend ${BACKEND}, seed ${seed}; replay a case with FUZZ_SEED=${seed} FUZZ_CASE=<index> npm run fuzz${BACKEND === 'uws' ? '' : ` -- --backend ${BACKEND}`}`);
      check(await runFuzz(fz, options(seed, LONG, { progressMs: num('FUZZ_PROGRESS_MS', 5000), minimize: num('FUZZ_MINIMIZE', 20) })), true);
    }, 48 * 3600_000);
  } else {
    const n = num('FUZZ_BOUNDED_REQUESTS', 2000);
    it(`fixed seed ${FIXED_SEED}: ${n} requests`, async () => {
      check(await runFuzz(fz, options(FIXED_SEED, n)), false);
    }, 30_000);
    it(`random seed ${RANDOM_SEED}: ${n} requests (replay: FUZZ_SEED=${RANDOM_SEED} npm run fuzz -- --requests ${n})`, async () => {
      check(await runFuzz(fz, options(RANDOM_SEED, n)), false);
    }, 30_000);
    it(`every known finding of the ${BACKEND} backend still reproduces (delete the entry of a fixed one in oracle.ts, or its backend)`, async () => {
      expect(await staleKnownFindings(fz, num('FUZZ_STALL_MS', 1500))).toEqual([]);
    }, 30_000);
  }
});
