/**
 * The logs on every kind of destination an operator gives them, with real
 * processes, pipes, FIFOs and sockets (issue 9's operator break-it pass):
 *
 * - under load, on a pipe (`| cat`), a socket (a parent's socketpair, as
 *   journald and Node's spawn give), a file: no access line lost, none
 *   spliced, and on stderr the gateway log and access lines never splice;
 * - a stderr reader that stalls (a paused log driver) stops no thread:
 *   requests are answered, /health stays ok, reloads and signals work, what
 *   could not be written is counted and said once stderr moves again;
 * - a FIFO as the access log: no reader at start, a reader that leaves
 *   (SIGUSR1 then), a reader that never reads (a bounded exit);
 * - a file that stops taking bytes mid-line (the write limit, the way a
 *   full disk does): no partial line is ever left, nothing is lost while
 *   the ring has room.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { closeSync, constants, existsSync, mkdtempSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { CLI, ROOT, trackProcess } from '../helpers/gateway.js';
import { freePort } from '../helpers/ports.js';

const DEAD = 'http://127.0.0.1:9'; // discard port: nothing listens, every request is a 502 and an error log line
const AUTOCANNON = join(ROOT, 'node_modules/.bin/autocannon');
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'turnpike-logdest-'));
});

function mkfifo(name: string): string {
  const path = join(dir, name);
  execFileSync('mkfifo', [path]);
  return path;
}

/** `cat FIFO > out`: a fast reader, as `| cat` is. */
function catInto(fifo: string, out: string): ChildProcess {
  return trackProcess(spawn('sh', ['-c', 'exec cat "$0" > "$1"', fifo, out], { stdio: 'ignore' }));
}

/** Opens the FIFO for reading and never reads (a stalled log driver). */
function stallReader(fifo: string): ChildProcess {
  return trackProcess(spawn('sh', ['-c', 'exec sleep 600 < "$0"', fifo], { stdio: 'ignore' }));
}

async function kill(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  p.kill('SIGKILL');
  await new Promise((r) => p.once('exit', r));
}

interface Spawned {
  proc: ChildProcess;
  port: number;
  adminPort: number;
  exited: Promise<number | null>;
  /** What the test read of stdout / stderr when they are the test's own pipes. */
  out: () => string;
  err: () => string;
}

/** A descriptor, a pipe the test reads (`pipe`: a socketpair, as Node spawns), one it never reads (`unread`), or none. */
type Stdio = number | 'pipe' | 'unread' | 'ignore';

/**
 * Starts a gateway on fixed free ports (a stalled stderr cannot say which
 * ports it took) and waits until its admin /health answers.
 */
async function spawnGateway(config: Record<string, any>, stdout: Stdio, stderr: Stdio, env: Record<string, string> = {}, wrap: string[] = []): Promise<Spawned> {
  const port = await freePort();
  const adminPort = await freePort();
  const file = join(mkdtempSync(join(dir, 'cfg-')), 'gw.json');
  writeFileSync(file, JSON.stringify({
    ...config,
    server: { host: '127.0.0.1', port, workers: 2, ...(config.server ?? {}) },
    admin: { enabled: true, host: '127.0.0.1', port: adminPort },
  }));
  const args = [process.execPath, CLI, 'start', '--config', file];
  const cmd = wrap.length > 0 ? wrap[0]! : args[0]!;
  const rest = wrap.length > 0 ? [...wrap.slice(1), ...args] : args.slice(1);
  const proc = trackProcess(spawn(cmd, rest, {
    cwd: ROOT, stdio: ['ignore', stdout === 'unread' ? 'pipe' : stdout, stderr === 'unread' ? 'pipe' : stderr], env: { ...process.env, TURNPIKE_LOG_FORMAT: 'json', TURNPIKE_ADMIN_TOKEN: 'logdest-token-0123456789abcdef', ...env },
  }));
  let out = '';
  let err = '';
  if (stdout === 'pipe') proc.stdout!.on('data', (d) => { out += d; });
  if (stderr === 'pipe') proc.stderr!.on('data', (d) => { err += d; });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`gateway exited (${proc.exitCode}) before starting:\n${err}`);
    if (Date.now() > deadline) throw new Error(`gateway did not start in time:\n${err}`);
    try {
      const r = await request(`http://127.0.0.1:${adminPort}/health`);
      await r.body.dump();
      if (r.statusCode === 200) break;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { proc, port, adminPort, exited, out: () => out, err: () => err };
}

async function metric(g: Spawned, name: string): Promise<number> {
  const r = await request(`http://127.0.0.1:${g.adminPort}/metrics`);
  const text = await r.body.text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(name + ' ') || line.startsWith(name + '{')) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/** autocannon in its own process, so the test keeps reading the pipes. */
function load(url: string, opts: { rate?: number; seconds?: number; amount?: number; connections?: number }): Promise<void> {
  const args = ['-c', String(opts.connections ?? 20), '-j'];
  if (opts.amount !== undefined) args.push('-a', String(opts.amount));
  else args.push('-d', String(opts.seconds ?? 3));
  if (opts.rate !== undefined) args.push('-R', String(opts.rate));
  const p = trackProcess(spawn(AUTOCANNON, [...args, url], { stdio: 'ignore' }));
  return new Promise((resolve) => p.once('exit', () => resolve()));
}

function parseLines(text: string): { lines: any[]; bad: string[] } {
  const lines: any[] = [];
  const bad: string[] = [];
  for (const l of text.split('\n')) {
    if (l === '') continue;
    try { lines.push(JSON.parse(l)); } catch { bad.push(l.slice(0, 300)); }
  }
  return { lines, bad };
}

async function stop(g: Spawned): Promise<number | null> {
  if (g.proc.exitCode === null) g.proc.kill('SIGTERM');
  return g.exited;
}

const routes = {
  upstreams: { dead: { targets: [DEAD] } },
  routes: [{ id: 'dead', path: '/dead/*', upstream: 'dead' }],
};

describe('under load, every access line arrives whole (5,000 requests/s for 3 s)', () => {
  // stdout / stderr as: a pipe (FIFO read by cat), a socket (Node's spawn
  // gives a socketpair), a regular file. Requests are answered by the
  // gateway itself (404) and, with stderr as the destination, half go to a
  // dead upstream: every one of those is an error log line on stderr too.
  const kinds = ['stdout on a pipe', 'stdout on a socket', 'stdout on a file', 'stderr on a pipe, shared with the gateway log'] as const;
  for (const kind of kinds) {
    it(kind, async () => {
      const onStderr = kind.startsWith('stderr');
      const outFile = join(dir, `${kind.replace(/\W+/g, '-')}.out`);
      let fd: number | null = null;
      let reader: ChildProcess | null = null;
      let target: Stdio = 'pipe';
      if (kind.includes('pipe')) {
        const fifo = mkfifo(`${kind.replace(/\W+/g, '-')}.fifo`);
        reader = catInto(fifo, outFile);
        fd = openSync(fifo, constants.O_RDWR); // never blocks; cat is the reader
        target = fd;
      } else if (kind.includes('file')) {
        fd = openSync(outFile, 'w');
        target = fd;
      }
      const config = {
        ...routes,
        log: {
          access: { destination: onStderr ? 'stderr' : 'stdout' },
          // Every failure an error line: the gateway log is as busy as it gets.
          errors: { burst: 10_000, intervalMs: 1000 },
        },
      };
      const g = await spawnGateway(config, onStderr ? 'pipe' : target, onStderr ? target : 'pipe');
      if (fd !== null) closeSync(fd);
      try {
        await Promise.all([
          load(`http://127.0.0.1:${g.port}/nowhere`, { rate: onStderr ? 2500 : 5000, seconds: 3 }),
          ...(onStderr ? [load(`http://127.0.0.1:${g.port}/dead/x`, { rate: 2500, seconds: 3, connections: 10 })] : []),
        ]);
        const answered = await metric(g, 'turnpike_requests_total');
        expect(answered).toBeGreaterThan(5000);
        const read = () => (kind.includes('pipe') || kind.includes('file') ? (existsSync(outFile) ? readFileSync(outFile, 'utf8') : '') : (onStderr ? g.err() : g.out()));
        const accessLines = () => parseLines(read()).lines.filter((j) => typeof j.request_id === 'string' && j.msg === undefined);
        await expect.poll(() => accessLines().length, { timeout: 10_000, interval: 100 }).toBeGreaterThanOrEqual(answered);
        expect(await metric(g, 'turnpike_access_log_dropped_total')).toBe(0);
        const { lines, bad } = parseLines(read());
        expect(bad).toEqual([]);
        const ids = new Set(accessLines().map((j) => j.request_id));
        expect(ids.size).toBe(accessLines().length);
        expect(ids.size).toBe(answered);
        if (onStderr) {
          // Both logs, whole lines only: every 502 has its error line.
          const failures = lines.filter((j) => j.msg === 'upstream connect failed');
          const dead = accessLines().filter((j) => j.status === 502).length;
          expect(dead).toBeGreaterThan(1000);
          expect(failures.length).toBe(dead);
        }
      } finally {
        expect(await stop(g)).toBe(0);
        if (reader !== null) await new Promise((r) => (reader!.exitCode !== null ? r(null) : reader!.once('exit', r)));
      }
    }, 60_000);
  }
});

describe('a stalled stderr reader never stops the gateway', () => {
  for (const kind of ['pipe', 'socket'] as const) {
    it(`stderr on a ${kind} whose reader stops reading: requests, /health, reloads and SIGTERM all work; drops are counted and said`, async () => {
      let fifo: string | null = null;
      let staller: ChildProcess | null = null;
      let stderr: Stdio = 'unread';
      let fd: number | null = null;
      if (kind === 'pipe') {
        fifo = mkfifo('stalled-stderr.fifo');
        staller = stallReader(fifo);
        fd = openSync(fifo, constants.O_WRONLY); // the staller has it open for reading
        stderr = fd;
      }
      const g = await spawnGateway({ ...routes, log: { access: { enabled: false }, errors: { burst: 10_000, intervalMs: 1000 } } }, 'ignore', stderr);
      if (fd !== null) closeSync(fd);
      // The test never reads the socket: its buffers fill like the pipe's.
      let cat: ChildProcess | null = null;
      try {
        // ~5 MB of error lines: far more than a pipe or socket buffer holds.
        await load(`http://127.0.0.1:${g.port}/dead/x`, { amount: 12_000, connections: 20 });
        const t0 = performance.now();
        await new Promise((r) => setTimeout(r, 3500)); // longer than a worker may be silent before it is reported stalled
        const health = await request(`http://127.0.0.1:${g.adminPort}/health`);
        expect(health.statusCode).toBe(200);
        const body = await health.body.json() as any;
        expect(JSON.stringify(body)).not.toContain('stalled');
        // Every request is answered, at once.
        for (let i = 0; i < 50; i++) {
          const r = await request(`http://127.0.0.1:${g.port}/dead/x`, { headersTimeout: 2000 });
          await r.body.dump();
          expect(r.statusCode).toBe(502);
        }
        expect(performance.now() - t0).toBeLessThan(8000);
        // The main thread too: a reload is applied.
        g.proc.kill('SIGHUP');
        await expect.poll(() => metric(g, 'turnpike_config_version'), { timeout: 3000, interval: 50 }).toBe(2);
        expect(await metric(g, 'turnpike_gateway_log_dropped_total')).toBeGreaterThan(0);
        if (fifo !== null) {
          // The reader moves again: what waited comes out whole, then a line saying how many were dropped.
          const out = join(dir, 'stalled-stderr.out');
          cat = catInto(fifo, out);
          await kill(staller!);
          await expect.poll(() => parseLines(existsSync(out) ? readFileSync(out, 'utf8') : '').lines
            .some((j) => j.msg?.startsWith('gateway log lines were dropped')), { timeout: 5000, interval: 100 }).toBe(true);
          const { lines, bad } = parseLines(readFileSync(out, 'utf8'));
          expect(bad).toEqual([]);
          const report = lines.find((j) => j.msg?.startsWith('gateway log lines were dropped'));
          expect(report.dropped).toBeGreaterThan(0);
          expect(report.total).toBe(await metric(g, 'turnpike_gateway_log_dropped_total'));
        }
        const t1 = performance.now();
        expect(await stop(g)).toBe(0);
        expect(performance.now() - t1).toBeLessThan(6000);
      } finally {
        await stop(g);
        if (staller !== null) await kill(staller);
        if (cat !== null) await kill(cat);
      }
    }, 60_000);
  }
});

describe('a FIFO as the access log destination never blocks the main thread', () => {
  it('no reader at start: starts at once, says so, writes what waited once a reader comes', async () => {
    const fifo = mkfifo('noreader.fifo');
    const t0 = performance.now();
    const g = await spawnGateway({ log: { access: { destination: fifo } } }, 'ignore', 'pipe');
    expect(performance.now() - t0).toBeLessThan(10_000);
    let cat: ChildProcess | null = null;
    try {
      await expect.poll(() => g.err().includes('"error":"ENXIO"'), { timeout: 2000 }).toBe(true);
      const line = parseLines(g.err()).lines.find((j) => j.error === 'ENXIO');
      expect(line).toMatchObject({ level: 'error', destination: fifo, advice: expect.stringContaining('no reader') });
      for (let i = 0; i < 5; i++) await (await request(`http://127.0.0.1:${g.port}/before-reader`)).body.dump();
      const out = join(dir, 'noreader.out');
      cat = catInto(fifo, out);
      for (let i = 0; i < 5; i++) await (await request(`http://127.0.0.1:${g.port}/after-reader`)).body.dump();
      await expect.poll(() => (existsSync(out) ? parseLines(readFileSync(out, 'utf8')).lines.length : 0), { timeout: 4000, interval: 50 }).toBe(10);
      const { lines, bad } = parseLines(readFileSync(out, 'utf8'));
      expect(bad).toEqual([]);
      expect(lines.filter((j) => j.path === '/before-reader')).toHaveLength(5);
      expect(lines.filter((j) => j.path === '/after-reader')).toHaveLength(5);
      const t1 = performance.now();
      expect(await stop(g)).toBe(0);
      expect(performance.now() - t1).toBeLessThan(5000);
    } finally {
      await stop(g);
      if (cat !== null) await kill(cat);
    }
  }, 40_000);

  it('the reader leaves: SIGUSR1 and reloads still work at once; a new reader gets whole lines', async () => {
    const fifo = mkfifo('leaving.fifo');
    const first = join(dir, 'leaving-1.out');
    let cat = catInto(fifo, first);
    const g = await spawnGateway({ log: { access: { destination: fifo } } }, 'ignore', 'pipe');
    try {
      for (let i = 0; i < 3; i++) await (await request(`http://127.0.0.1:${g.port}/one`)).body.dump();
      await expect.poll(() => (existsSync(first) ? parseLines(readFileSync(first, 'utf8')).lines.length : 0), { timeout: 3000 }).toBe(3);
      await kill(cat);
      for (let i = 0; i < 3; i++) await (await request(`http://127.0.0.1:${g.port}/two`)).body.dump();
      g.proc.kill('SIGUSR1');
      await new Promise((r) => setTimeout(r, 100));
      const t0 = performance.now();
      g.proc.kill('SIGHUP');
      await expect.poll(() => metric(g, 'turnpike_config_version'), { timeout: 3000, interval: 50 }).toBe(2);
      expect(performance.now() - t0).toBeLessThan(2000);
      const second = join(dir, 'leaving-2.out');
      cat = catInto(fifo, second);
      for (let i = 0; i < 3; i++) await (await request(`http://127.0.0.1:${g.port}/three`)).body.dump();
      await expect.poll(() => (existsSync(second) ? parseLines(readFileSync(second, 'utf8')).lines.filter((j) => j.path === '/three').length : 0),
        { timeout: 4000, interval: 50 }).toBe(3);
      expect(parseLines(readFileSync(second, 'utf8')).bad).toEqual([]);
      const t1 = performance.now();
      expect(await stop(g)).toBe(0);
      expect(performance.now() - t1).toBeLessThan(5000);
    } finally {
      await stop(g);
      await kill(cat);
    }
  }, 40_000);

  it('a reader that never reads: SIGTERM exits 0 within a few seconds and says what could not be written', async () => {
    const fifo = mkfifo('stalled.fifo');
    const staller = stallReader(fifo);
    const g = await spawnGateway({ log: { access: { destination: fifo } } }, 'ignore', 'pipe');
    try {
      // ~1 MB of access lines: the pipe takes 64 KiB.
      await load(`http://127.0.0.1:${g.port}/x`, { amount: 3000, connections: 10 });
      const t0 = performance.now();
      expect(await stop(g)).toBe(0);
      expect(performance.now() - t0).toBeLessThan(6000);
      const said = parseLines(g.err()).lines.find((j) => j.msg?.startsWith('log lines could not be written before exit'));
      expect(said).toBeDefined();
      expect(said.accessLines).toBeGreaterThan(0);
    } finally {
      await stop(g);
      await kill(staller);
    }
  }, 40_000);
});

describe('a file that stops taking bytes mid-line (its size limit, as a full disk does)', () => {
  it('leaves no partial line: the cut line is completed once writing works again, and nothing is lost meanwhile', async () => {
    const file = join(dir, 'limited.log');
    // The soft file-size limit makes a write stop mid-line (EFBIG), exactly as
    // ENOSPC does; SIGXFSZ is ignored so the write fails instead of killing the process.
    const g = await spawnGateway({ server: { workers: 1 }, log: { access: { destination: file } } }, 'ignore', 'pipe', {},
      ['sh', '-c', 'trap "" XFSZ; exec prlimit --fsize=3000: "$@"', 'sh']);
    try {
      for (let i = 0; i < 20; i++) await (await request(`http://127.0.0.1:${g.port}/full/${i}`)).body.dump();
      await expect.poll(() => g.err().includes('"error":"EFBIG"'), { timeout: 3000 }).toBe(true);
      const cut = readFileSync(file, 'utf8');
      expect(cut.length).toBe(3000);
      expect(cut.endsWith('\n')).toBe(false); // the limit cut a line
      // Space again (the operator freed some): the limit goes.
      execFileSync('prlimit', ['--pid', String(g.proc.pid), '--fsize=unlimited']);
      for (let i = 20; i < 25; i++) await (await request(`http://127.0.0.1:${g.port}/full/${i}`)).body.dump();
      await expect.poll(() => parseLines(readFileSync(file, 'utf8')).lines.length, { timeout: 4000, interval: 100 }).toBe(25);
      const { lines, bad } = parseLines(readFileSync(file, 'utf8'));
      expect(bad).toEqual([]);
      expect(lines.map((j) => j.path)).toEqual(Array.from({ length: 25 }, (_v, i) => `/full/${i}`));
      expect(parseLines(g.err()).lines.some((j) => j.msg?.startsWith('access log: writing to its destination works again'))).toBe(true);
      expect(statSync(file).size).toBeGreaterThan(3000);
    } finally {
      expect(await stop(g)).toBe(0);
    }
  }, 40_000);
});
