/**
 * A real nginx for tests (the Debian package; `.ci/run` installs it):
 * found on PATH or in the usual sbin directories, else installed with
 * apt-get once; started with its own prefix in a temporary directory on a
 * free 127.0.0.1 port, in the foreground, and stopped by its PID.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { trackProcess } from './gateway.js';
import { freePort } from './ports.js';

let cached: string | null | undefined;

/** The nginx binary, installing nginx-light (or nginx) when missing; null when it cannot be had. */
export function findNginx(): string | null {
  if (cached !== undefined) return cached;
  const look = (): string | null => {
    for (const p of ['/usr/sbin/nginx', '/usr/bin/nginx', '/usr/local/sbin/nginx', '/usr/local/nginx/sbin/nginx']) if (existsSync(p)) return p;
    try {
      return execFileSync('sh', ['-c', 'command -v nginx'], { encoding: 'utf8' }).trim() || null;
    } catch {
      return null;
    }
  };
  cached = look();
  for (const pkg of ['nginx-light', 'nginx']) {
    if (cached !== null) break;
    try {
      execFileSync('sh', ['-c', `(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${pkg}`], { stdio: 'ignore', timeout: 240_000 });
    } catch { /* the next package */ }
    cached = look();
  }
  return cached;
}

export interface Nginx {
  port: number;
  proc: ChildProcess;
  dir: string;
  /** nginx's error log so far. */
  errorLog(): string;
  /** SIGQUIT to the master we spawned (it stops its worker); SIGKILL after 5 s. */
  stop(): Promise<void>;
}

/**
 * nginx listening on a free 127.0.0.1 port with `locations` (the body of its
 * one `server` block, after `listen`). Resolves once it accepts connections;
 * rejects with its output and error log when it does not start within 10 s.
 */
export async function startNginx(bin: string, locations: (port: number) => string): Promise<Nginx> {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-nginx-'));
  chmodSync(dir, 0o755); // nginx's worker (nobody) writes request bodies under it
  for (const d of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(dir, d), { mode: 0o777 });
  const port = await freePort();
  const conf = join(dir, 'nginx.conf');
  writeFileSync(conf, `
worker_processes 1;
error_log ${dir}/error.log info;
pid ${dir}/nginx.pid;
events { worker_connections 256; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${port};
${locations(port)}
  }
}
`);
  const proc = trackProcess(spawn(bin, ['-p', dir, '-e', join(dir, 'error.log'), '-c', conf, '-g', 'daemon off;'], { stdio: ['ignore', 'pipe', 'pipe'] }));
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const errorLog = () => (existsSync(join(dir, 'error.log')) ? readFileSync(join(dir, 'error.log'), 'utf8') : '');
  const until = Date.now() + 10_000;
  for (;;) {
    const ok = await new Promise<boolean>((r) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); r(true); });
      s.once('error', () => r(false));
    });
    if (ok) break;
    if (proc.exitCode !== null || Date.now() > until) throw new Error(`nginx did not start:\n${out}\n${errorLog()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port, proc, dir, errorLog,
    async stop() {
      if (proc.exitCode === null && proc.pid !== undefined) {
        process.kill(proc.pid, 'SIGQUIT');
        const t = setTimeout(() => { if (proc.exitCode === null) proc.kill('SIGKILL'); }, 5_000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}
