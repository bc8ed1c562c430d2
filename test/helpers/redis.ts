/**
 * A private redis-server per test file, on a free loopback port, so that a
 * test can stop it, kill it and start it again (the machine's own Redis on
 * 6379 is never touched). No persistence: `--save "" --appendonly no`.
 *
 * Needs `redis-server` on PATH (.ci/run installs it on a fresh machine).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { trackProcess } from './gateway.js';
import { freePort } from './ports.js';

export interface PrivateRedis {
  port: number;
  url: string;
  /** Running right now. */
  readonly running: boolean;
  /** SIGKILL (an outage: no goodbye to clients); resolves once it exited. */
  kill(): Promise<void>;
  /** Starts it again on the same port (empty: nothing was persisted). */
  restart(): Promise<void>;
  /** Stops it for good (afterAll). */
  stop(): Promise<void>;
}

function launch(port: number): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const p = trackProcess(spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    }));
    let out = '';
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`redis-server on port ${port} did not start within 5 s:\n${out}`));
    }, 5_000);
    p.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot run redis-server (${err.message}); install it (apt-get install -y redis-server) or run .ci/run`));
    });
    p.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('Ready to accept connections')) {
        clearTimeout(timer);
        resolve(p);
      }
    });
    p.stderr!.on('data', (b: Buffer) => { out += b.toString(); });
  });
}

export async function startRedis(): Promise<PrivateRedis> {
  const port = await freePort();
  let proc: ChildProcess | null = await launch(port);
  const exited = (p: ChildProcess) => new Promise<void>((resolve) => {
    if (p.exitCode !== null || p.signalCode !== null) resolve();
    else p.once('exit', () => resolve());
  });
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    get running() {
      return proc !== null;
    },
    async kill() {
      if (proc === null) return;
      const p = proc;
      proc = null;
      p.kill('SIGKILL');
      await exited(p);
    },
    async restart() {
      if (proc !== null) return;
      proc = await launch(port);
    },
    async stop() {
      if (proc === null) return;
      const p = proc;
      proc = null;
      p.kill('SIGTERM');
      await exited(p);
    },
  };
}
