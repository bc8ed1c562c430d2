/**
 * Starts the real gateway (dist/engine/cli.js, built by `npm test`) as a
 * child process on ephemeral ports and waits for its "turnpike started" log
 * line. Every test talks to it over real sockets.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const CLI = join(ROOT, 'dist/engine/cli.js');

// A test that times out never reaches its `finally`: make sure no gateway
// outlives the test process that started it.
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

/** Any other process a test spawns: killed with the test process, so a timed-out test leaves nothing running. */
export function trackProcess<P extends ChildProcess>(p: P): P {
  live.add(p);
  p.once('exit', () => live.delete(p));
  return p;
}

export interface Gateway {
  port: number;
  adminPort: number | null;
  url: string;
  proc: ChildProcess;
  logs: string[];
  configFile: string;
  /** SIGTERM and wait for exit; resolves the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  exited: Promise<number | null>;
}

export interface StartOptions {
  runtime?: 'node' | 'bun';
  env?: Record<string, string>;
  args?: string[];
  timeoutMs?: number;
  /** Working directory of the gateway (default the repository root). */
  cwd?: string;
}

/** A minimal config around the given routes/upstreams, on ephemeral ports. */
export function baseConfig(over: Record<string, any> = {}): Record<string, any> {
  return {
    ...over,
    server: { host: '127.0.0.1', port: 0, workers: 1, ...(over.server ?? {}) },
    admin: { enabled: false, host: '127.0.0.1', port: 0, ...(over.admin ?? {}) },
    upstreams: over.upstreams ?? {},
    routes: over.routes ?? [],
  };
}

export async function startGateway(config: Record<string, any>, opts: StartOptions = {}): Promise<Gateway> {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-test-'));
  const configFile = join(dir, 'turnpike.json');
  writeFileSync(configFile, JSON.stringify(config, null, 2));
  return startGatewayFile(configFile, opts);
}

/** startGateway for a config file already written (YAML or JSON). */
export async function startGatewayFile(configFile: string, opts: StartOptions = {}): Promise<Gateway> {
  const bin = opts.runtime === 'bun' ? join(ROOT, 'node_modules/.bin/bun') : process.execPath;
  const proc = spawn(bin, [CLI, 'start', '--config', configFile, ...(opts.args ?? [])], {
    cwd: opts.cwd ?? ROOT,
    env: { ...process.env, TURNPIKE_LOG_FORMAT: 'json', ...(opts.env ?? {}) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(proc);
  const logs: string[] = [];
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => { live.delete(proc); resolve(code); }));
  const started = new Promise<{ port: number; adminPort: number | null }>((resolve, reject) => {
    let buf = '';
    const onData = (chunk: Buffer) => {
      buf += chunk.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) !== -1) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        logs.push(line);
        try {
          const j = JSON.parse(line);
          if (j.msg === 'turnpike started') resolve({ port: j.port, adminPort: j.adminPort ?? null });
        } catch { /* not JSON */ }
      }
    };
    proc.stderr!.on('data', onData);
    // stdout is the access log by default: one JSON object per line.
    let out = '';
    proc.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      let nl: number;
      while ((nl = out.indexOf('\n')) !== -1) {
        logs.push(out.slice(0, nl));
        out = out.slice(nl + 1);
      }
    });
    exited.then((code) => reject(new Error(`gateway exited (${code}) before starting:\n${logs.join('\n')}`)));
    setTimeout(() => reject(new Error(`gateway did not start in time:\n${logs.join('\n')}`)), opts.timeoutMs ?? 20_000);
  });
  const { port, adminPort } = await started;
  return {
    port, adminPort, url: `http://127.0.0.1:${port}`, proc, logs, configFile, exited,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (proc.exitCode !== null) return proc.exitCode;
      proc.kill(signal);
      return exited;
    },
  };
}
