/**
 * Backpressure and pool bounds: a client that does not read must stall the
 * upstream rather than grow the gateway's memory, and a saturated target
 * queues up to maxPending, then answers 503 at once.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { request } from 'undici';
import { baseConfig, startGateway } from '../helpers/gateway.js';
import { startUpstream } from '../helpers/upstream.js';

function rssMb(pid: number): number {
  // The gateway is one process (threads): its VmRSS covers every worker.
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) / 1024;
}

describe('backpressure', () => {
  it('a client that stops reading stalls the upstream; gateway memory stays bounded', async () => {
    const total = 256 * 1024 * 1024;
    let sent = 0;
    let upstreamDone = false;
    const up = await startUpstream((_req, res) => {
      const block = Buffer.alloc(256 * 1024, 1);
      res.writeHead(200, { 'content-length': String(total) });
      const pump = () => {
        while (sent < total) {
          sent += block.length;
          if (!res.write(block)) { res.once('drain', pump); return; }
        }
        res.end();
        upstreamDone = true;
      };
      pump();
    });
    const gw = await startGateway(baseConfig({ upstreams: { up: { targets: [up.url] } }, routes: [{ id: 'big', path: '/*', upstream: 'up' }] }));
    try {
      const base = rssMb(gw.proc.pid!);
      const client = net.connect(gw.port, '127.0.0.1');
      client.on('error', () => {});
      await new Promise<void>((r) => client.once('connect', () => r()));
      client.write('GET /big HTTP/1.1\r\nHost: a\r\n\r\n');
      client.pause(); // read nothing for a while
      await new Promise((r) => setTimeout(r, 2000));
      const stalledAt = sent;
      const grown = rssMb(gw.proc.pid!) - base;
      // Socket buffers (client, gateway, upstream) hold a few MiB at most: far from 256 MiB.
      expect(upstreamDone).toBe(false);
      expect(stalledAt).toBeLessThan(64 * 1024 * 1024);
      expect(grown).toBeLessThan(64);
      // Reading again lets the whole body through, intact in length.
      let got = 0;
      const done = new Promise<void>((resolve) => {
        client.on('data', (d: Buffer) => {
          got += d.length;
          if (got >= total) resolve();
        });
      });
      client.resume();
      await done;
      expect(got).toBeGreaterThanOrEqual(total);
      expect(sent).toBe(total);
      client.destroy();
    } finally {
      await gw.stop();
      await up.close();
    }
  }, 60_000);
});

describe('pool bounds', () => {
  it('queues up to maxPending per target, then answers 503 at once', async () => {
    const held: (() => void)[] = [];
    const up = await startUpstream((_req, res) => { held.push(() => res.end('done')); });
    const gw = await startGateway(baseConfig({
      upstreams: { up: { targets: [up.url], pool: { maxConnections: 2, maxPending: 1 }, timeouts: { connectMs: 5000 } } },
      routes: [{ id: 'all', path: '/*', upstream: 'up' }],
    }));
    try {
      const inflight = [0, 1, 2].map(() => request(gw.url + '/slow').then(async (r) => ({ status: r.statusCode, body: await r.body.text() })));
      // Two reach the upstream, one waits in the queue.
      for (let i = 0; i < 100 && held.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
      expect(held.length).toBe(2);
      await new Promise((r) => setTimeout(r, 100));
      const t = performance.now();
      const rejected = await request(gw.url + '/slow');
      expect(rejected.statusCode).toBe(503);
      expect((await rejected.body.json() as any).error.code).toBe('upstream_unavailable');
      expect(performance.now() - t).toBeLessThan(1000);
      // Release the two; the queued one then gets a connection and is answered too.
      held.splice(0).forEach((f) => f());
      for (let i = 0; i < 100 && held.length < 1; i++) await new Promise((r) => setTimeout(r, 10));
      expect(held.length).toBe(1);
      held.splice(0).forEach((f) => f());
      expect(await Promise.all(inflight)).toEqual([0, 1, 2].map(() => ({ status: 200, body: 'done' })));
    } finally {
      await gw.stop();
      await up.close();
    }
  });
});
