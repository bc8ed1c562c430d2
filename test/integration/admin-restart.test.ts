/**
 * The admin thread dying (a bug in it) must not leave the gateway without
 * its admin API, /metrics, /health, rate-limit sync and health checks for
 * the rest of its life: the engine starts it again (engine/supervisor.ts
 * scheduleAdminRestart), says what killed it, and the workers serve
 * throughout. The crash comes from a test hook (TURNPIKE_TEST_HOOKS=1,
 * SIGWINCH): an exception thrown where nothing in the admin thread catches it.
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { freePort } from '../helpers/ports.js';

const TOKEN = 'admin-restart-test-token-0123456789';
let up: Upstream;

beforeAll(async () => {
  up = await startUpstream();
});

afterAll(async () => {
  await up.close();
});

async function status(url: string, headers: Record<string, string> = {}): Promise<number> {
  try {
    const r = await fetch(url, { headers: { connection: 'close', ...headers } });
    await r.arrayBuffer();
    return r.status;
  } catch {
    return 0; // refused: nothing listens
  }
}

describe('admin thread crash', () => {
  let gw: Gateway;
  let adminPort: number;

  beforeAll(async () => {
    adminPort = await freePort();
    gw = await startGateway(baseConfig({
      server: { workers: 2 },
      admin: { enabled: true, port: adminPort },
      log: { access: { enabled: false } },
      upstreams: { u: { targets: [up.url] } },
      routes: [{ id: 'r', path: '/*', upstream: 'u' }],
    }), { env: { TURNPIKE_TEST_HOOKS: '1', TURNPIKE_ADMIN_TOKEN: TOKEN } });
  });

  afterAll(async () => {
    await gw.stop();
  });

  it('is logged with its stack and restarted on the same port; requests are served throughout; worker latency reaches the new thread', async () => {
    const admin = `http://127.0.0.1:${adminPort}`;
    expect(await status(`${admin}/health`)).toBe(200);
    gw.proc.kill('SIGWINCH');
    // Until it is back: every proxied request is answered, and the admin port comes back.
    const until = performance.now() + 10_000;
    let proxied = 0;
    let back = false;
    let sawDown = false;
    while (performance.now() < until && !back) {
      expect(await status(`${gw.url}/x`)).toBe(200);
      proxied++;
      const h = await status(`${admin}/health`);
      if (h !== 200) sawDown = true;
      else if (sawDown) back = true;
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(sawDown, 'the admin listener went away with its thread').toBe(true);
    expect(back, 'the admin listener came back').toBe(true);
    expect(proxied).toBeGreaterThan(0);
    const records = () => gw.logs.map((l) => { try { return JSON.parse(l); } catch { return null; } }).filter((j) => j !== null);
    // The engine logs "restarted" once the new thread reports ready, which may be just after its listener answers.
    await expect.poll(() => records().some((j) => j.msg === 'admin thread restarted' && j.adminPort === adminPort), { timeout: 5000 }).toBe(true);
    const failed = records();
    const why = failed.find((j) => j.msg === 'admin thread failed');
    expect(why?.error).toContain('admin crash requested by test hook');
    expect(failed.some((j) => j.msg?.startsWith('admin thread exited; restarting'))).toBe(true);
    // The new admin thread collects the workers' latency over the lines they were given.
    const stats = await fetch(`${admin}/admin/stats`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(stats.status).toBe(200);
    const body = await stats.json() as { workers: number };
    expect(body.workers, 'workers whose latency the new admin thread collected').toBe(2);
    // And it keeps working: a second crash is survived too.
    gw.proc.kill('SIGWINCH');
    const again = performance.now() + 10_000;
    let restarts = 0;
    while (performance.now() < again && restarts < 2) {
      restarts = gw.logs.filter((l) => l.includes('"admin thread restarted"')).length;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(restarts).toBe(2);
    expect(await status(`${admin}/health`)).toBe(200);
  });
});

describe('admin thread crash with a generated admin token', () => {
  it('keeps the token: the file clients read still holds the one the restarted thread accepts', async () => {
    const adminPort = await freePort();
    const cwd = mkdtempSync(join(tmpdir(), 'turnpike-admin-restart-'));
    const gw = await startGateway(baseConfig({
      server: { workers: 1 },
      admin: { enabled: true, port: adminPort },
      log: { access: { enabled: false } },
      upstreams: { u: { targets: [up.url] } },
      routes: [{ id: 'r', path: '/*', upstream: 'u' }],
    }), { cwd, env: { TURNPIKE_TEST_HOOKS: '1', TURNPIKE_ADMIN_TOKEN: undefined as unknown as string, TURNPIKE_ADMIN_TOKEN_FILE: undefined as unknown as string } });
    try {
      const admin = `http://127.0.0.1:${adminPort}`;
      const file = join(cwd, '.turnpike', `admin-token-${adminPort}`);
      const token = readFileSync(file, 'utf8').trim();
      const auth = { authorization: `Bearer ${token}` };
      expect(await status(`${admin}/admin/status`, auth)).toBe(200);
      gw.proc.kill('SIGWINCH');
      const until = performance.now() + 10_000;
      while (performance.now() < until && !gw.logs.some((l) => l.includes('"admin thread restarted"'))) await new Promise((r) => setTimeout(r, 50));
      expect(gw.logs.some((l) => l.includes('"admin thread restarted"'))).toBe(true);
      expect(readFileSync(file, 'utf8').trim(), 'the token file after the restart').toBe(token);
      expect(await status(`${admin}/admin/status`, auth)).toBe(200);
    } finally {
      await gw.stop();
    }
  });
});
