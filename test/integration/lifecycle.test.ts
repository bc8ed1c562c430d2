/** Graceful drain on SIGTERM, and a fatal start error that says what to do. */
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { request } from 'undici';
import { baseConfig, startGateway } from '../helpers/gateway.js';
import { rawBody, rawRequest, startUpstream } from '../helpers/upstream.js';

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
  it('cuts off requests still running at drainTimeoutMs, logs them as the gateway\'s doing (503 or the status sent, error shutting_down), exits 0', async () => {
    // /stuck never answers; /partial sends its head and 40 of 100 body bytes, then stalls.
    const held: import('node:http').ServerResponse[] = [];
    const up = await startUpstream((req, res) => {
      held.push(res);
      if (req.url === '/partial') {
        res.writeHead(200, { 'content-length': '100' });
        res.write('x'.repeat(40));
      }
    });
    const gw = await startGateway(baseConfig({
      server: { workers: 1, drainTimeoutMs: 400 },
      upstreams: { up: { targets: [up.url], timeouts: { responseMs: 60_000 } } },
      routes: [{ id: 'all', path: '/*', upstream: 'up' }],
    }));
    try {
      const answers = ['GET /stuck', 'HEAD /stuck', 'GET /partial'].map((r) => rawRequest(gw.port, `${r} HTTP/1.1\r\nHost: t\r\n\r\n`, 10_000));
      await expect.poll(() => held.length, { timeout: 5000 }).toBe(3);
      const t = performance.now();
      gw.proc.kill('SIGTERM');
      expect(await gw.exited).toBe(0);
      expect(performance.now() - t).toBeLessThan(3000);
      const [get, head, partial] = await Promise.all(answers);
      // What the clients saw: a 503 shutting_down (closed), and a body cut short.
      for (const a of [get!, head!]) {
        expect(a.text).toMatch(/^HTTP\/1\.1 503 Service Unavailable\r\n/);
        expect(a.closed).toBe(true);
      }
      const body = JSON.parse(rawBody(get!.text));
      expect(body.error.code).toBe('shutting_down');
      expect(body.error.message).toMatch(/drainTimeoutMs/);
      expect(head!.text.endsWith('\r\n\r\n')).toBe(true); // no body
      expect(partial!.text).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
      expect(partial!.text.endsWith('x'.repeat(40))).toBe(true);
      expect(partial!.closed).toBe(true);
      expect(gw.logs.join('\n')).toMatch(/drain timeout: requests were cut off/);
      // What the access log says: what the client saw, and that the gateway cut it (never 499 client_aborted).
      const lines = gw.logs.map((l) => { try { return JSON.parse(l); } catch { return null; } }).filter((j) => j !== null && 'status' in j && !('msg' in j));
      const line = (method: string, path: string) => lines.find((l) => l.method === method && l.path === path);
      expect(line('GET', '/stuck')).toMatchObject({ status: 503, error: 'shutting_down', bytes_sent: Buffer.byteLength(rawBody(get!.text)), upstream_ms: null });
      expect(line('HEAD', '/stuck')).toMatchObject({ status: 503, error: 'shutting_down', bytes_sent: 0 });
      expect(line('GET', '/partial')).toMatchObject({ status: 200, error: 'shutting_down', bytes_sent: 40 });
      expect(lines.filter((l) => l.error === 'client_aborted' || l.status === 499)).toEqual([]);
    } finally {
      for (const r of held) r.destroy();
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
