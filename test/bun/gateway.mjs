/**
 * Starting the gateway (dist/) under Bun, for the Bun smoke scripts
 * (run-smoke.mjs, tls-smoke.mjs).
 *
 * `startBunGateway(configFile, env)` spawns `bun dist/engine/cli.js start
 * --config <configFile>` with JSON logs and `env` added to this process's
 * environment, stdout and stderr piped. Returns `{ proc, logs, exited,
 * started }`: `logs`, the stderr lines so far (strings, growing); `exited`,
 * a Promise of the exit code; `started`, a Promise of the parsed
 * "turnpike started" log line (its `port`: where the gateway listens),
 * rejected with the logs when the gateway exits first or has not started
 * within 20 s. Stdout is left as it is (the caller reads or resumes it).
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BUN = join(ROOT, 'node_modules/.bin/bun');

export function startBunGateway(configFile, env = {}) {
  const proc = spawn(BUN, [join(ROOT, 'dist/engine/cli.js'), 'start', '--config', configFile], {
    env: { ...process.env, TURNPIKE_LOG_FORMAT: 'json', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs = [];
  const exited = new Promise((r) => proc.on('exit', (code) => r(code)));
  const started = new Promise((resolve, reject) => {
    let buf = '';
    proc.stderr.on('data', (c) => {
      buf += c;
      let nl;
      while ((nl = buf.indexOf('\n')) !== -1) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        logs.push(line);
        try { const j = JSON.parse(line); if (j.msg === 'turnpike started') resolve(j); } catch {}
      }
    });
    proc.on('exit', (code) => reject(new Error(`bun gateway exited (${code}):\n${logs.join('\n')}`)));
    setTimeout(() => reject(new Error(`bun gateway did not start:\n${logs.join('\n')}`)), 20000);
  });
  return { proc, logs, exited, started };
}
