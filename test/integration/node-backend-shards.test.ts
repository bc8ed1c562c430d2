/**
 * server.backend: node with several worker threads (engine/shared-listener.ts):
 * the engine binds one socket and gives each worker its own descriptor of it.
 * Checked with a real gateway process, real connections:
 *  - connections are served by several workers of the one port;
 *  - a worker that crashes closes only its descriptor: the port keeps
 *    accepting (no connection refused while it is replaced), the replacement
 *    gets a new descriptor and serves;
 *  - a stopped gateway leaves nothing listening.
 */
import net from 'node:net';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const WORKERS = 3;

let up: Upstream;
beforeAll(async () => {
  up = await startUpstream((req, res) => {
    // A little wait keeps several connections in flight at once, so idle workers take the next ones.
    setTimeout(() => res.end('ok ' + req.url), 5);
  });
});
afterAll(async () => {
  await up?.close();
});

interface Hit { t: number; ok: boolean; worker: string | null; error?: string }

/** One request on a fresh connection; the worker from the request id (`<prefix>-<worker>-<n>`) as `<worker>:<prefix>`. */
async function hitOnce(gw: Gateway): Promise<Hit> {
  const agent = new Agent({ connections: 1 });
  try {
    const r = await request(gw.url + '/x', { dispatcher: agent });
    await r.body.dump();
    const rid = String(r.headers['x-request-id']).split('-');
    return { t: performance.now(), ok: r.statusCode === 200, worker: `${rid[1]}:${rid[0]}` };
  } catch (err) {
    return { t: performance.now(), ok: false, worker: null, error: (err as NodeJS.ErrnoException).code ?? String(err) };
  } finally {
    await agent.close();
  }
}

describe('server.backend: node, several worker threads on one port', () => {
  let gw: Gateway;
  beforeAll(async () => {
    gw = await startGateway(baseConfig({
      server: { workers: WORKERS, backend: 'node' },
      admin: { enabled: true, port: 0 },
      upstreams: { up: { targets: [up.url] } },
      routes: [{ id: 'all', path: '/*', upstream: 'up' }],
    }), { env: { TURNPIKE_TEST_HOOKS: '1' } });
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it('serves connections from more than one worker', async () => {
    // The threads share one listening socket: whichever wakes first accepts the whole backlog, so one
    // burst can land on one thread by chance (a CI run saw 120 on one). Bursts until two threads
    // answered, 10 at most.
    const hits: Awaited<ReturnType<typeof hitOnce>>[] = [];
    const workers = new Set<string>();
    for (let burst = 0; burst < 10 && workers.size < 2; burst++) {
      const got = await Promise.all(Array.from({ length: 24 }, () => hitOnce(gw)));
      hits.push(...got);
      for (const h of got) if (h.worker !== null) workers.add(h.worker.split(':')[0]!);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(hits.filter((h) => !h.ok)).toEqual([]);
    expect(workers.size, `workers that answered: ${[...workers].join(', ')}`).toBeGreaterThanOrEqual(2);
  });

  it('a crashed worker closes only its own descriptor: the port keeps accepting, its replacement serves', async () => {
    const hits: Hit[] = [];
    let running = true;
    const loop = async (): Promise<void> => {
      while (running) hits.push(await hitOnce(gw));
    };
    const loops = [loop(), loop(), loop(), loop()];
    let crashAt = 0;
    try {
      await new Promise((r) => setTimeout(r, 300));
      crashAt = performance.now();
      gw.proc.kill('SIGUSR2'); // test hook: worker 0 throws
      // Long enough for the replacement (backoff + a new descriptor + start) to serve.
      await new Promise((r) => setTimeout(r, 2500));
    } finally {
      running = false;
      await Promise.all(loops);
    }
    const after = hits.filter((h) => h.t > crashAt);
    // Not one connection refused or reset at connect: the socket never stopped listening.
    const refused = after.filter((h) => h.error === 'ECONNREFUSED');
    expect(refused, 'connections refused after the crash').toEqual([]);
    // At most the requests in flight on the dying worker failed (4 client loops).
    expect(after.filter((h) => !h.ok).length).toBeLessThanOrEqual(4);
    // A new worker 0 (new request-id prefix) answered.
    const before0 = new Set(hits.filter((h) => h.t < crashAt && h.worker?.startsWith('0:')).map((h) => h.worker));
    const after0 = new Set(after.filter((h) => h.worker?.startsWith('0:')).map((h) => h.worker));
    expect([...after0].some((p) => !before0.has(p)), `worker 0 ids before ${[...before0].join(', ')}, after ${[...after0].join(', ')}`).toBe(true);
    const m = await (await request(`http://127.0.0.1:${gw.adminPort}/metrics`)).body.text();
    expect(m).toMatch(/^turnpike_worker_restarts_total 1$/m);
    // Every worker (the replacement included) still takes connections.
    const later = await Promise.all(Array.from({ length: 150 }, () => hitOnce(gw)));
    expect(later.filter((h) => !h.ok)).toEqual([]);
  }, 30_000);

  it('a stopped gateway leaves nothing listening on its port', async () => {
    const port = gw.port;
    expect(await gw.stop()).toBe(0);
    const err = await new Promise<string>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); resolve('connected'); });
      s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    });
    expect(err).toBe('ECONNREFUSED');
  });
});

describe('server.backend: node, server.host a name', () => {
  it('looks the name up and listens on its address (localhost), like the other backends', async () => {
    const gw = await startGateway(baseConfig({
      server: { workers: 2, backend: 'node', host: 'localhost' },
      upstreams: { up: { targets: [up.url] } },
      routes: [{ id: 'all', path: '/*', upstream: 'up' }],
    }));
    try {
      const r = await request(`http://localhost:${gw.port}/named`);
      expect(r.statusCode).toBe(200);
      expect(await r.body.text()).toBe('ok /named');
    } finally {
      await gw.stop();
    }
  });
});

describe('the started line names a URL a client can use', () => {
  // An IPv6 address goes in brackets (RFC 3986 3.2.2); a wildcard address becomes its family's loopback.
  it.each([['::1', '[::1]'], ['::', '[::1]'], ['0.0.0.0', '127.0.0.1']])('server.host %s -> http://%s:<port>', async (host, shown) => {
    const gw = await startGateway(baseConfig({
      server: { workers: 1, backend: 'node', host },
      upstreams: { up: { targets: [up.url] } },
      routes: [{ id: 'all', path: '/*', upstream: 'up' }],
    }));
    try {
      const line = JSON.parse(gw.logs.find((l) => l.includes('"turnpike started"'))!);
      expect(line.url).toBe(`http://${shown}:${gw.port}`);
      const r = await request(`${line.url}/via-url`);
      expect(await r.body.text()).toBe('ok /via-url');
    } finally {
      await gw.stop();
    }
  });
});

describe('server.backend: node, port already taken', () => {
  it('refuses to start with the address and what to do', async () => {
    const holder = net.createServer();
    await new Promise<void>((r) => holder.listen(0, '127.0.0.1', () => r()));
    const port = (holder.address() as net.AddressInfo).port;
    try {
      await expect(startGateway(baseConfig({
        server: { workers: 2, backend: 'node', port },
        upstreams: { up: { targets: [up.url] } },
        routes: [{ id: 'all', path: '/*', upstream: 'up' }],
      }), { timeoutMs: 10_000 })).rejects.toThrow(/in use|EADDRINUSE/);
    } finally {
      holder.close();
    }
  });
});
