// One autocannon run in its own process (lib/ac-run.mjs), pinned to the
// load CPU when taskset exists: the shared runner of latency.mjs and
// failure.mjs. Resolves with the ACJSON result ac-run.mjs prints.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { BENCH_DIR, LOAD_CPU } from './targets.mjs';
import { which } from './proc.mjs';

/** `opts`: ac-run.mjs's JSON options (url, connections, duration s, rate, pacing...). Killed after duration + 30 s. */
export function autocannonRun(opts) {
  const args = [join(BENCH_DIR, 'lib/ac-run.mjs'), JSON.stringify(opts)];
  const [cmd, argv] = which('taskset') ? ['taskset', ['-c', String(LOAD_CPU), process.execPath, ...args]] : [process.execPath, args];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const guard = setTimeout(() => child.kill('SIGKILL'), ((opts.duration ?? 10) + 30) * 1000);
    // 'close', not 'exit': the pipes are drained by then, so the result line is never lost.
    child.once('close', (code) => {
      clearTimeout(guard);
      const line = out.split('\n').find((l) => l.startsWith('ACJSON '));
      if (!line) return reject(new Error(`autocannon gave no result (exit ${code}): ${(err || out).trim().slice(0, 300)}`));
      const r = JSON.parse(line.slice(7));
      if (r.error) return reject(new Error(r.error));
      resolve(r);
    });
  });
}
