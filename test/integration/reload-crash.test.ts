/**
 * The gateway must never drop a request because its config changed or a
 * thread died. Real gateway process, real upstream, a bounded client loop.
 */
import { renameSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent, request } from 'undici';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

let up: Upstream;
beforeAll(async () => {
  up = await startUpstream((_req, res) => { res.end('ok'); });
});
afterAll(async () => {
  await up?.close();
});

function configs(upUrl: string) {
  const common = { upstreams: { up: { targets: [upUrl] } } };
  const A = baseConfig({
    server: { workers: 2, headers: { response: { set: { 'x-config': 'A' } } } },
    ...common,
    routes: [{ id: 'stable', path: '/stable/*', upstream: 'up' }],
  });
  const B = baseConfig({
    server: { workers: 2, headers: { response: { set: { 'x-config': 'B' } } } },
    ...common,
    routes: [{ id: 'stable', path: '/stable/*', upstream: 'up' }, { id: 'toggled', path: '/toggled/*', upstream: 'up' }],
  });
  return { A, B };
}

/** Resolves when the gateway logged a line matching `pred` (checks lines from `from`). */
async function waitLog(gw: Gateway, from: number, pred: (j: any) => boolean, timeoutMs = 5000): Promise<any> {
  const end = Date.now() + timeoutMs;
  let i = from;
  while (Date.now() < end) {
    for (; i < gw.logs.length; i++) {
      try {
        const j = JSON.parse(gw.logs[i]!);
        if (pred(j)) return j;
      } catch { /* not JSON */ }
    }
    await new Promise((r) => setTimeout(r, 2));
  }
  throw new Error('log line not seen in time:\n' + gw.logs.slice(from).join('\n'));
}

describe('reload under load', () => {
  it('100 reloads alternating two route sets: no failed request, each answer from the live route set', async () => {
    const { A, B } = configs(up.url);
    const gw = await startGateway(A);
    // Pin the port the first start resolved, so reloads don't see a change.
    const pin = (c: any) => ({ ...c, server: { ...c.server, port: gw.port } });
    writeFileSync(gw.configFile, JSON.stringify(pin(A)));
    type Sample = { path: string; t0: number; t1: number; status: number; cfg: string | null; error: string | null };
    const samples: Sample[] = [];
    const windows: { set: 'A' | 'B'; from: number; to: number }[] = [];
    let running = true;
    const client = async (k: number) => {
      const agent = new Agent({ connections: 2 });
      let n = 0;
      while (running) {
        const path = (n++ + k) % 2 === 0 ? '/stable/x' : '/toggled/x';
        const t0 = performance.now() + performance.timeOrigin;
        try {
          const r = await request(gw.url + path, { dispatcher: agent });
          await r.body.dump();
          const cfg = r.headers['x-config'];
          samples.push({ path, t0, t1: performance.now() + performance.timeOrigin, status: r.statusCode, cfg: typeof cfg === 'string' ? cfg : null, error: null });
        } catch (e) {
          samples.push({ path, t0, t1: performance.now() + performance.timeOrigin, status: 0, cfg: null, error: (e as Error).message });
        }
      }
      await agent.close();
    };
    try {
      const clients = [0, 1, 2, 3].map(client);
      let live: 'A' | 'B' = 'A';
      let from = performance.now() + performance.timeOrigin;
      for (let i = 0; i < 100; i++) {
        const next: 'A' | 'B' = live === 'A' ? 'B' : 'A';
        writeFileSync(gw.configFile, JSON.stringify(pin(next === 'A' ? A : B)));
        const mark = gw.logs.length;
        const sent = performance.now() + performance.timeOrigin;
        windows.push({ set: live, from, to: sent });
        gw.proc.kill('SIGHUP');
        const line = await waitLog(gw, mark, (j) => j.msg === 'config reloaded' || j.msg?.startsWith('config refused'));
        expect(line.msg).toBe('config reloaded');
        expect(line.version).toBe(i + 2);
        live = next;
        from = performance.now() + performance.timeOrigin;
        await new Promise((r) => setTimeout(r, 15));
      }
      running = false;
      await Promise.all(clients);
    } finally {
      running = false;
      await gw.stop();
    }
    expect(samples.length).toBeGreaterThan(400);
    // No failed or reset request, ever.
    expect(samples.filter((s) => s.error !== null)).toEqual([]);
    for (const s of samples) {
      if (s.path === '/stable/x') {
        expect(s.status).toBe(200);
        expect(['A', 'B']).toContain(s.cfg);
      } else if (s.status === 200) {
        expect(s.cfg).toBe('B'); // only B has the toggled route
      } else {
        expect(s.status).toBe(404);
      }
    }
    // Requests that ran entirely inside one config's window saw exactly that config.
    let checked = 0;
    for (const s of samples) {
      const w = windows.find((w) => s.t0 >= w.from && s.t1 <= w.to);
      if (w === undefined) continue;
      checked++;
      if (s.path === '/toggled/x') expect(s.status, `toggled during ${w.set}`).toBe(w.set === 'B' ? 200 : 404);
      else expect(s.cfg, `stable during ${w.set}`).toBe(w.set);
    }
    expect(checked).toBeGreaterThan(100);
  }, 60_000);

  it('--watch reloads when the config file is replaced', async () => {
    const { A, B } = configs(up.url);
    const gw = await startGateway(A, { args: ['--watch'] });
    try {
      const before = await request(gw.url + '/toggled/x');
      await before.body.dump();
      expect(before.statusCode).toBe(404);
      const mark = gw.logs.length;
      // Write a temp file and rename it over the config, as editors do.
      const tmp = gw.configFile + '.new';
      writeFileSync(tmp, JSON.stringify({ ...B, server: { ...B.server, port: gw.port } }));
      renameSync(tmp, gw.configFile);
      const line = await waitLog(gw, mark, (j) => j.msg === 'config reloaded');
      expect(line.actor).toBe('file-watch');
      const after = await request(gw.url + '/toggled/x');
      await after.body.dump();
      expect(after.statusCode).toBe(200);
    } finally {
      await gw.stop();
    }
  });

  it('refuses a bad config on SIGHUP and keeps serving the old one', async () => {
    const { A } = configs(up.url);
    const gw = await startGateway(A);
    try {
      writeFileSync(gw.configFile, JSON.stringify({ ...A, routes: [{ id: 'x', path: '/x', upstream: 'nope' }] }));
      const mark = gw.logs.length;
      gw.proc.kill('SIGHUP');
      const line = await waitLog(gw, mark, (j) => String(j.msg).startsWith('config refused'));
      expect(line.problems.join('\n')).toMatch(/routes\[0\]\.upstream: unknown upstream "nope"/);
      const r = await request(gw.url + '/stable/still');
      await r.body.dump();
      expect(r.statusCode).toBe(200);
      expect(r.headers['x-config']).toBe('A');
    } finally {
      await gw.stop();
    }
  });

  it('refuses a reload that changes a restart-only setting', async () => {
    const { A } = configs(up.url);
    const gw = await startGateway(A);
    try {
      writeFileSync(gw.configFile, JSON.stringify({ ...A, server: { ...A.server, port: gw.port, workers: 3 } }));
      const mark = gw.logs.length;
      gw.proc.kill('SIGHUP');
      const line = await waitLog(gw, mark, (j) => String(j.msg).startsWith('config refused'));
      expect(line.problems.join('\n')).toMatch(/server\.workers: cannot change on reload; restart/);
    } finally {
      await gw.stop();
    }
  });
});

describe('a worker that dies', () => {
  it('is replaced within 1 s while the port keeps answering; the restart is counted', async () => {
    const gw = await startGateway(baseConfig({
      server: { workers: 2 },
      admin: { enabled: true, port: 0 },
      upstreams: { up: { targets: [up.url] } },
      routes: [{ id: 'all', path: '/*', upstream: 'up' }],
    }), { env: { TURNPIKE_TEST_HOOKS: '1' } });
    type Hit = { t: number; ok: boolean; worker: string | null };
    const hits: Hit[] = [];
    let running = true;
    const loop = async () => {
      while (running) {
        // A fresh connection each time, so the kernel spreads them over both workers.
        const agent = new Agent({ connections: 1 });
        try {
          const r = await request(gw.url + '/x', { dispatcher: agent });
          await r.body.dump();
          const rid = String(r.headers['x-request-id']).split('-');
          hits.push({ t: performance.now(), ok: r.statusCode === 200, worker: `${rid[1]}:${rid[0]}` });
        } catch {
          hits.push({ t: performance.now(), ok: false, worker: null });
        }
        await agent.close();
      }
    };
    try {
      const loops = [loop(), loop(), loop()];
      await new Promise((r) => setTimeout(r, 300));
      const before = new Set(hits.filter((h) => h.worker?.startsWith('0:')).map((h) => h.worker));
      expect(before.size).toBe(1);
      const crashAt = performance.now();
      gw.proc.kill('SIGUSR2'); // test hook: worker 0 throws
      await new Promise((r) => setTimeout(r, 1500));
      running = false;
      await Promise.all(loops);
      const after = hits.filter((h) => h.t > crashAt);
      // A new worker 0 (new id prefix) answered within 1 s of the crash.
      const replacement = after.find((h) => h.worker?.startsWith('0:') && !before.has(h.worker));
      expect(replacement).toBeDefined();
      expect(replacement!.t - crashAt).toBeLessThan(1000);
      // The port kept answering: worker 1 served throughout, and at most the
      // requests in flight on the dying worker failed (3 client loops).
      expect(after.filter((h) => h.worker?.startsWith('1:')).length).toBeGreaterThan(5);
      expect(after.filter((h) => !h.ok).length).toBeLessThanOrEqual(3);
      const m = await (await request(`http://127.0.0.1:${gw.adminPort}/metrics`)).body.text();
      expect(m).toMatch(/^turnpike_worker_restarts_total 1$/m);
      const health = await request(`http://127.0.0.1:${gw.adminPort}/health`);
      expect(health.statusCode).toBe(200);
      await health.body.dump();
    } finally {
      running = false;
      await gw.stop();
    }
  }, 30_000);
});
