#!/usr/bin/env node
/**
 * `npm run fuzz -- [options]`: builds the gateway, then runs the fuzzer
 * (test/fuzz/fuzz.test.ts) through vitest, which runs the TypeScript
 * directly (tsx is not a dependency). Options become FUZZ_* variables:
 *
 *   --requests N      requests to send (default 200000)          FUZZ_REQUESTS
 *   --seed N          run seed (default: random, printed)        FUZZ_SEED
 *   --case I          replay one case of --seed, in full         FUZZ_CASE
 *   --concurrency N   connections in flight (default 256)        FUZZ_CONCURRENCY
 *   --stall-ms N      no-answer bound per connection (1500)      FUZZ_STALL_MS
 *   --workers N       gateway worker threads (default 1)         FUZZ_WORKERS
 *   --minimize N      new violation kinds to minimize (20)       FUZZ_MINIMIZE
 *   --progress-ms N   progress line interval (5000)              FUZZ_PROGRESS_MS
 *   --strict          known findings fail too                    FUZZ_STRICT=1
 *   --backend B       the gateway's server: uws (default), node  TURNPIKE_SERVER__BACKEND
 *
 * Variables already set in the environment (e.g. FUZZ_SEED=1 FUZZ_CASE=2
 * npm run fuzz) are kept unless an option overrides them.
 */
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../', import.meta.url));
const names = {
  '--requests': 'FUZZ_REQUESTS', '--seed': 'FUZZ_SEED', '--case': 'FUZZ_CASE', '--concurrency': 'FUZZ_CONCURRENCY',
  '--stall-ms': 'FUZZ_STALL_MS', '--workers': 'FUZZ_WORKERS', '--minimize': 'FUZZ_MINIMIZE', '--progress-ms': 'FUZZ_PROGRESS_MS',
};
const env = { ...process.env };
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
  if (flag === '--strict') { env.FUZZ_STRICT = '1'; continue; }
  if (flag === '--backend') {
    const b = inline ?? args[++i];
    if (b !== 'uws' && b !== 'node' && b !== 'auto') {
      console.error(`--backend takes uws, node or auto, got ${b}`);
      process.exit(2);
    }
    env.TURNPIKE_SERVER__BACKEND = b;
    continue;
  }
  if (flag === '--help' || flag === '-h') {
    console.log('npm run fuzz -- [--requests N] [--seed N] [--case I] [--concurrency N] [--stall-ms N] [--workers N] [--minimize N] [--progress-ms N] [--strict] [--backend uws|node]');
    process.exit(0);
  }
  const name = names[flag];
  const value = inline ?? args[++i];
  if (name === undefined || value === undefined || !/^\d+$/.test(value)) {
    console.error(`unknown option or missing number: ${a} (see --help)`);
    process.exit(2);
  }
  env[name] = value;
}
if (env.FUZZ_CASE === undefined && env.FUZZ_REQUESTS === undefined) env.FUZZ_REQUESTS = '200000';

const build = spawnSync('npm', ['run', 'build', '--silent'], { cwd: root, stdio: 'inherit' });
if (build.status !== 0) process.exit(build.status ?? 1);
// Its own process group: a signal reaches vitest, its fork worker and the
// gateway process the test started (stopping vitest alone leaves them running).
const child = spawn(process.execPath, [`${root}node_modules/vitest/vitest.mjs`, 'run', 'test/fuzz/fuzz.test.ts'], {
  cwd: root, env, stdio: 'inherit', detached: true,
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    try { process.kill(-child.pid, sig); } catch { /* already gone */ }
  });
}
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
