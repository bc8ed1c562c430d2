/**
 * A config can never take the gateway down (issue 8, cases 8 and 9):
 * validation runs the workers' own compile step, a config a worker still
 * refuses is rolled back everywhere and reported as a failure, a config
 * that cannot compile stops `start` with one clear error, and --watch
 * applies a file only once it has settled.
 */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync, appendFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { CLI, ROOT, baseConfig, startGateway, trackProcess, type Gateway } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const TOKEN = 'config-safety-test-token-0123456789';
let up: Upstream;

beforeAll(async () => {
  up = await startUpstream((req, res) => { res.end('ok ' + req.url); });
});
afterAll(async () => {
  await up?.close();
});

/** Two routes with the same host, path, priority and methods: the router refuses the second. */
function duplicateRoutes(extra: Record<string, any> = {}) {
  return baseConfig({
    ...extra,
    upstreams: { up: { targets: [up.url] } },
    routes: [
      { id: 'a', path: '/dup/*', upstream: 'up' },
      { id: 'b', path: '/dup/*', upstream: 'up' },
    ],
  });
}

function run(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = trackProcess(spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: { ...process.env, TURNPIKE_LOG_FORMAT: 'json', ...env } }));
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => { stdout += d; });
    p.stderr.on('data', (d) => { stderr += d; });
    p.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

function tmpFile(name: string, content: unknown): string {
  const file = join(mkdtempSync(join(tmpdir(), 'turnpike-cfg-')), name);
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content, null, 2));
  return file;
}

async function status(gw: Gateway, path: string): Promise<number> {
  const r = await request(gw.url + path);
  await r.body.dump();
  return r.statusCode;
}

async function admin(gw: Gateway, method: string, path: string, body?: unknown) {
  const r = await request(`http://127.0.0.1:${gw.adminPort}${path}`, {
    method: method as any,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  return { status: r.statusCode, body: await r.body.json() as any };
}

async function metric(gw: Gateway, line: string): Promise<number> {
  const r = await request(`http://127.0.0.1:${gw.adminPort}/metrics`);
  const text = await r.body.text();
  const m = text.split('\n').find((l) => l.startsWith(line + ' '));
  return m === undefined ? 0 : Number(m.slice(line.length + 1));
}

describe('validation runs the workers\' compile step (case 8)', () => {
  it('turnpike validate refuses duplicate routes and names the route', async () => {
    const file = tmpFile('dup.json', duplicateRoutes());
    const r = await run(['validate', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('routes[1]: duplicate of route "a"');
  });

  it('start refuses a config that cannot compile: one clear error, exit 1, no restart loop', async () => {
    const file = tmpFile('dup.json', duplicateRoutes());
    const r = await run(['start', '--config', file]);
    expect(r.code).toBe(1);
    // stderr is not a terminal: one JSON line (the gateway log's format) naming the route.
    const lines = r.stderr.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l));
    const refusal = lines.find((j) => j.level === 'error');
    expect(refusal.msg).toContain('the configuration is invalid, nothing was started');
    expect(refusal.problems).toHaveLength(1);
    expect(refusal.problems[0]).toMatch(/^routes\[1\]: duplicate of route "a" /);
    expect(r.stderr).not.toContain('worker exited');
  });

  describe('on a running gateway', () => {
    let gw: Gateway;
    let good: Record<string, any>; // port 0 stays the port resolved at start on every reload
    beforeAll(async () => {
      good = baseConfig({
        server: { workers: 2 },
        admin: { enabled: true, port: 0 },
        upstreams: { up: { targets: [up.url] } },
        routes: [{ id: 'a', path: '/dup/*', upstream: 'up' }],
      });
      gw = await startGateway(good, { env: { TURNPIKE_ADMIN_TOKEN: TOKEN, TURNPIKE_TEST_HOOKS: '1' } });
    });
    afterAll(async () => {
      await gw?.stop();
    });

    it('SIGHUP with duplicate routes: refused, counted as a failure, the old config keeps serving', async () => {
      const failures = await metric(gw, 'turnpike_config_reloads_total{result="failure"}');
      const bad = { ...duplicateRoutes(), server: good.server, admin: good.admin };
      writeFileSync(gw.configFile, JSON.stringify(bad));
      const from = gw.logs.length;
      gw.proc.kill('SIGHUP');
      await expect.poll(() => gw.logs.slice(from).some((l) => l.includes('config refused')), { timeout: 5000 }).toBe(true);
      expect(gw.logs.slice(from).join('\n')).toContain('duplicate of route');
      expect(await metric(gw, 'turnpike_config_reloads_total{result="failure"}')).toBe(failures + 1);
      for (let i = 0; i < 20; i++) expect(await status(gw, '/dup/x')).toBe(200);
      expect(gw.logs.some((l) => l.includes('worker failed') || l.includes('worker exited'))).toBe(false);
      writeFileSync(gw.configFile, JSON.stringify(good));
    });

    it('PUT /admin/config with duplicate routes: 422 naming the route, nothing persisted', async () => {
      const before = readFileSync(gw.configFile, 'utf8');
      const r = await admin(gw, 'PUT', '/admin/config', { ...duplicateRoutes(), server: good.server, admin: good.admin });
      expect(r.status).toBe(422);
      expect(JSON.stringify(r.body)).toContain('duplicate of route');
      expect(readFileSync(gw.configFile, 'utf8')).toBe(before);
      expect(await status(gw, '/dup/x')).toBe(200);
    });

    it('a config a worker still refuses is rolled back on every worker, reported as a failure, and not persisted', async () => {
      const before = readFileSync(gw.configFile, 'utf8');
      const failures = await metric(gw, 'turnpike_config_reloads_total{result="failure"}');
      const version = (await admin(gw, 'GET', '/admin/status')).body.config?.version;
      // Valid for the validator; the test hook makes every worker refuse it.
      const refused = {
        ...good,
        routes: [{ id: 'test-hook-refused-by-worker', path: '/refused/*', upstream: 'up' }],
      };
      const r = await admin(gw, 'PUT', '/admin/config', refused);
      expect(r.status, JSON.stringify(r.body)).toBe(422);
      expect(JSON.stringify(r.body), JSON.stringify(r.body)).toContain("rolled back");
      expect(readFileSync(gw.configFile, 'utf8')).toBe(before);
      expect(await metric(gw, 'turnpike_config_reloads_total{result="failure"}')).toBe(failures + 1);
      expect((await admin(gw, 'GET', '/admin/status')).body.config?.version).toBe(version);
      // Both workers serve the old route set (many connections spread over both).
      const codes = await Promise.all(Array.from({ length: 40 }, async (_v, i) => status(gw, i % 2 === 0 ? '/dup/x' : '/refused/x')));
      expect(codes.filter((c, i) => (i % 2 === 0 ? c !== 200 : c !== 404))).toEqual([]);
      expect(gw.logs.some((l) => l.includes('worker failed') || l.includes('worker exited'))).toBe(false);
    });
  });
});

describe('--watch applies a file only once it has settled (case 9)', () => {
  it('a file rewritten in place in two writes 300 ms apart never serves its first part', async () => {
    const routes = (ids: string[]) => ids.map((id) => `  - id: ${id}\n    path: /${id}/*\n    upstream: up\n`).join('');
    const header = `server: { host: 127.0.0.1, port: 0, workers: 1 }\nadmin: { enabled: false }\nupstreams:\n  up: { targets: ["${up.url}"] }\nroutes:\n`;
    // The CLI directly (startGateway writes JSON): this test rewrites YAML text.
    const file = tmpFile('watched.yaml', header + routes(['keep', 'second']));
    const proc = trackProcess(spawn(process.execPath, [CLI, 'start', '--config', file, '--watch'], { cwd: ROOT, env: { ...process.env, TURNPIKE_LOG_FORMAT: 'json' } }));
    proc.stdout.resume(); // the access log: a pipe nobody reads fills up
    try {
      const port = await new Promise<number>((resolve, reject) => {
        let buf = '';
        proc.stderr.on('data', (d) => {
          buf += d;
          for (const line of buf.split('\n')) {
            try {
              const j = JSON.parse(line);
              if (j.msg === 'turnpike started') resolve(j.port);
            } catch { /* a partial line */ }
          }
        });
        proc.on('exit', () => reject(new Error('exited: ' + buf)));
      });
      const url = `http://127.0.0.1:${port}`;
      const get = async (p: string) => { const r = await request(url + p); await r.body.dump(); return r.statusCode; };
      expect(await get('/second/x')).toBe(200);
      // Rewrite in place in two writes; the first part alone is a valid
      // config without the route "second" (port 0 keeps the resolved port).
      const codes: number[] = [];
      let sampling = true;
      const sampler = (async () => { while (sampling) codes.push(await get('/second/x')); })();
      writeFileSync(file, header + routes(['keep']));
      await new Promise((r) => setTimeout(r, 300));
      appendFileSync(file, routes(['second', 'third']));
      await expect.poll(() => get('/third/x'), { timeout: 5000, interval: 50 }).toBe(200);
      sampling = false;
      await sampler;
      expect(codes.length).toBeGreaterThan(10);
      expect(codes.filter((c) => c !== 200)).toEqual([]);
    } finally {
      proc.kill('SIGTERM');
      await new Promise((r) => proc.once('exit', r));
    }
  });
});

describe('a worker whose event loop is blocked', () => {
  it('is reported stalled by /health, and a reload it cannot confirm fails and is rolled back everywhere', async () => {
    const good = baseConfig({
      server: { workers: 1 },
      admin: { enabled: true, port: 0 },
      upstreams: { up: { targets: [up.url] } },
      routes: [{ id: 'a', path: '/a/*', upstream: 'up' }],
    });
    const gw = await startGateway(good, { env: { TURNPIKE_ADMIN_TOKEN: TOKEN, TURNPIKE_TEST_HOOKS: '1' } });
    try {
      expect((await admin(gw, 'GET', '/admin/status')).body.workers).toEqual([{ index: 0, state: 'ready' }]);
      // Block the only worker for 12 s: stalled after 3 s, a reload sent then is not confirmed within 5 s.
      const blocked = request(gw.url + '/a/x', { headers: { 'x-turnpike-test-block': '12000' } }).then((r) => r.body.dump(), () => {});
      await new Promise((r) => setTimeout(r, 300));
      await expect.poll(async () => {
        const r = await request(`http://127.0.0.1:${gw.adminPort}/health`);
        return { status: r.statusCode, body: await r.body.json() };
      }, { timeout: 6000, interval: 200 }).toEqual({ status: 503, body: { status: 'degraded', workers: [{ index: 0, state: 'stalled' }] } });
      const before = readFileSync(gw.configFile, 'utf8');
      const r = await admin(gw, 'PUT', '/admin/config', { ...good, routes: [...good.routes, { id: 'b', path: '/b/*', upstream: 'up' }] });
      expect(r.status).toBe(422);
      expect(JSON.stringify(r.body)).toContain('did not confirm the config');
      expect(readFileSync(gw.configFile, 'utf8')).toBe(before);
      await blocked;
      // Unblocked: it applied the new config and then the rollback; the old route set serves.
      await expect.poll(async () => status(gw, '/b/x'), { timeout: 12_000, interval: 200 }).toBe(404);
      expect(await status(gw, '/a/x')).toBe(200);
      await expect.poll(async () => (await request(`http://127.0.0.1:${gw.adminPort}/health`)).statusCode, { timeout: 3000 }).toBe(200);
    } finally {
      await gw.stop();
    }
  }, 40_000);
});

describe('signals while the gateway starts', () => {
  // Through bin/turnpike.mjs, as `npx turnpike` runs it. Before Node runs any
  // code nothing can catch a signal: the tests wait for the bin's first line
  // (a test-hook marker), then signal while the CLI is still loading.
  const BIN = join(ROOT, 'bin/turnpike.mjs');
  const launch = (file: string) => {
    const p = trackProcess(spawn(process.execPath, [BIN, 'start', '--config', file], { cwd: ROOT, env: { ...process.env, TURNPIKE_LOG_FORMAT: 'json', TURNPIKE_TEST_HOOKS: '1' } }));
    p.stdout.resume();
    let err = '';
    const early = new Promise<void>((resolve) => p.stderr.on('data', (d) => {
      err += d;
      if (err.includes('early signal handlers installed')) resolve();
    }));
    return { p, early, err: () => err };
  };

  it.each([0, 100])('SIGHUP %i ms after the first line ran is a reload once started, never the end of the process', async (delay) => {
    const file = tmpFile('early.json', baseConfig({ upstreams: { up: { targets: [up.url] } }, routes: [{ id: 'a', path: '/a/*', upstream: 'up' }] }));
    const { p, early, err } = launch(file);
    try {
      await early;
      await new Promise((r) => setTimeout(r, delay));
      expect(err()).not.toContain('"msg":"turnpike started"'); // still starting
      p.kill('SIGHUP');
      await expect.poll(() => err().includes('"msg":"config reloaded"') || p.exitCode !== null || p.signalCode !== null, { timeout: 10_000 }).toBe(true);
      expect(p.signalCode).toBeNull();
      expect(p.exitCode).toBeNull();
      expect(err()).toContain('"actor":"SIGHUP"');
    } finally {
      p.kill('SIGTERM');
      await new Promise((r) => (p.exitCode !== null || p.signalCode !== null ? r(null) : p.once('exit', r)));
    }
  });

  it('SIGTERM while starting stops the gateway cleanly once it has started', async () => {
    const file = tmpFile('early-term.json', baseConfig({ upstreams: { up: { targets: [up.url] } }, routes: [{ id: 'a', path: '/a/*', upstream: 'up' }] }));
    const { p, early, err } = launch(file);
    await early;
    expect(err()).not.toContain('"msg":"turnpike started"');
    p.kill('SIGTERM');
    const code = await new Promise((r) => p.once('exit', (c) => r(c)));
    expect(code).toBe(0);
  });
});

describe('--watch and Kubernetes ConfigMap volumes', () => {
  it('reloads when the ..data symlink is swapped (the file\'s own name never changes)', async () => {
    const { mkdirSync, symlinkSync, renameSync: mv } = await import('node:fs');
    const dir = mkdtempSync(join(tmpdir(), 'turnpike-cm-'));
    const yaml = (routes: string[]) => `server: { host: 127.0.0.1, port: 0, workers: 1 }\nadmin: { enabled: false }\n` +
      `upstreams:\n  up: { targets: ["${up.url}"] }\nroutes:\n` + routes.map((r) => `  - { id: ${r}, path: "/${r}/*", upstream: up }\n`).join('');
    mkdirSync(join(dir, '..v1'));
    writeFileSync(join(dir, '..v1', 'gw.yaml'), yaml(['one']));
    symlinkSync('..v1', join(dir, '..data'));
    symlinkSync('..data/gw.yaml', join(dir, 'gw.yaml'));
    const p = trackProcess(spawn(process.execPath, [CLI, 'start', '--config', join(dir, 'gw.yaml'), '--watch'], { cwd: ROOT, env: { ...process.env, TURNPIKE_LOG_FORMAT: 'json' } }));
    p.stdout.resume();
    try {
      const port = await new Promise<number>((resolve, reject) => {
        let buf = '';
        p.stderr.on('data', (d) => {
          buf += d;
          for (const l of buf.split('\n')) { try { const j = JSON.parse(l); if (j.msg === 'turnpike started') resolve(j.port); } catch { /* partial */ } }
        });
        p.on('exit', () => reject(new Error(buf)));
      });
      const get = async (path: string) => { const r = await request(`http://127.0.0.1:${port}${path}`); await r.body.dump(); return r.statusCode; };
      expect(await get('/one/x')).toBe(200);
      expect(await get('/two/x')).toBe(404);
      // What the kubelet does: write the new version, then swap ..data atomically.
      mkdirSync(join(dir, '..v2'));
      writeFileSync(join(dir, '..v2', 'gw.yaml'), yaml(['one', 'two']));
      symlinkSync('..v2', join(dir, '..data_tmp'));
      mv(join(dir, '..data_tmp'), join(dir, '..data'));
      await expect.poll(() => get('/two/x'), { timeout: 5000, interval: 50 }).toBe(200);
    } finally {
      p.kill('SIGTERM');
      await new Promise((r) => p.once('exit', r));
    }
  });
});

describe('two gateways started at the same moment on one port', () => {
  it('exactly one of them serves it; the other stops with a clear error', async () => {
    const net = await import('node:net');
    const port = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)); });
    });
    const cfg = tmpFile('race.json', { ...baseConfig({ upstreams: { up: { targets: [up.url] } }, routes: [{ id: 'a', path: '/a/*', upstream: 'up' }] }), server: { host: '127.0.0.1', port, workers: 1 } });
    const launch = () => {
      const p = trackProcess(spawn(process.execPath, [CLI, 'start', '--config', cfg], { cwd: ROOT, env: { ...process.env, TURNPIKE_LOG_FORMAT: 'json' } }));
      p.stdout.resume();
      let err = '';
      p.stderr.on('data', (d) => { err += d; });
      const outcome = new Promise<'started' | 'refused'>((resolve) => {
        p.stderr.on('data', () => { if (err.includes('"msg":"turnpike started"')) resolve('started'); });
        p.on('exit', () => resolve('refused'));
      });
      return { p, outcome, err: () => err };
    };
    const a = launch();
    const b = launch();
    try {
      const outcomes = await Promise.all([a.outcome, b.outcome]);
      expect(outcomes.sort()).toEqual(['refused', 'started']);
      const loser = a.p.exitCode !== null ? a : b;
      expect(loser.err()).toMatch(/is being taken by another turnpike|is not available \(EADDRINUSE\)/);
    } finally {
      for (const g of [a, b]) {
        if (g.p.exitCode === null) {
          g.p.kill('SIGTERM');
          await new Promise((r) => g.p.once('exit', r));
        }
      }
    }
  });
});
