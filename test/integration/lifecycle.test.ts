/** Graceful drain on SIGTERM, and a fatal start error that says what to do. */
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { request } from 'undici';
import { baseConfig, startGateway } from '../helpers/gateway.js';
import { startUpstream } from '../helpers/upstream.js';

describe('drain', () => {
  it('finishes in-flight requests on SIGTERM, refuses new ones, exits 0', async () => {
    const up = await startUpstream((_req, res) => setTimeout(() => res.end('slow-ok'), 600));
    const gw = await startGateway(baseConfig({
      server: { workers: 2, drainTimeoutMs: 5000 },
      upstreams: { up: { targets: [up.url] } },
      routes: [{ id: 'all', path: '/*', upstream: 'up' }],
    }));
    try {
      const inflight = Promise.all([1, 2, 3].map(async () => {
        const r = await request(gw.url + '/slow');
        return { status: r.statusCode, body: await r.body.text() };
      }));
      await new Promise((r) => setTimeout(r, 150));
      gw.proc.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 150));
      const refused = await new Promise<boolean>((resolve) => {
        const s = net.connect(gw.port, '127.0.0.1');
        s.on('connect', () => { s.destroy(); resolve(false); });
        s.on('error', () => resolve(true));
      });
      expect(refused).toBe(true);
      const results = await inflight;
      expect(results).toEqual([1, 2, 3].map(() => ({ status: 200, body: 'slow-ok' })));
      expect(await gw.exited).toBe(0);
    } finally {
      await gw.stop();
      await up.close();
    }
  });
});

describe('drain timeout', () => {
  it('cuts off requests still running at drainTimeoutMs and exits 0', async () => {
    const up = await startUpstream(() => { /* never answers */ });
    const gw = await startGateway(baseConfig({
      server: { workers: 1, drainTimeoutMs: 400 },
      upstreams: { up: { targets: [up.url], timeouts: { responseMs: 60_000 } } },
      routes: [{ id: 'all', path: '/*', upstream: 'up' }],
    }));
    try {
      const stuck = request(gw.url + '/stuck').then((r) => r.body.text()).catch((e: Error) => e);
      await new Promise((r) => setTimeout(r, 200));
      const t = performance.now();
      gw.proc.kill('SIGTERM');
      expect(await gw.exited).toBe(0);
      expect(performance.now() - t).toBeLessThan(3000);
      expect(await stuck).toBeInstanceOf(Error);
      expect(gw.logs.join('\n')).toMatch(/drain timeout: requests were cut off/);
    } finally {
      await gw.stop();
      await up.close();
    }
  });
});

describe('start errors', () => {
  it('refuses an invalid config and names the problem, in one JSON line of the gateway log when it is JSON', async () => {
    const err = await startGateway(baseConfig({
      upstreams: { users: { targets: ['http://127.0.0.1:1'] } },
      routes: [{ id: 'r', path: '/x', upstream: 'usres' }],
    })).then(() => null, (e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    const lines = err!.message.split('\n').slice(1).filter((l) => l !== '');
    // Nothing but JSON lines, and no drain: nothing was started.
    const parsed = lines.map((l) => JSON.parse(l));
    expect(parsed.map((j) => j.msg)).not.toContain('draining');
    expect(parsed.map((j) => j.msg)).not.toContain('stopped');
    const refusal = parsed.find((j) => j.level === 'error')!;
    expect(refusal.msg).toMatch(/^the configuration is invalid, nothing was started/);
    expect(refusal.problems).toEqual(['routes[0].upstream: unknown upstream "usres" (did you mean "users"?)']);
  });
});
