/**
 * server.backend: node (workers/transport/node/app.ts, issue 13): the real
 * gateway on the strict node:net server in front of real upstreams, over
 * undici and raw sockets (for what no ordinary client sends: HTTP/1.0,
 * pipelining, malformed lines, a slow head), and behind a real nginx with
 * its default `proxy_http_version 1.0`.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { findNginx, startNginx, type Nginx } from '../helpers/nginx.js';
import { RawConnection } from '../helpers/raw-http.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

/** Size of the large responses (/api/big, /api/big-chunked): many upstream reads, several 64 KiB staging buffers. */
const BIG_BYTES = 3 * 1024 * 1024 + 12_345;

/** `len` bytes of the large body from offset `off`: a pattern that differs at every offset (a misplaced or reused byte shows). */
function bigPattern(off: number, len: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) {
    const x = off + i;
    b[i] = (x ^ (x >>> 8) ^ (x >>> 16) ^ (x >>> 5)) & 0xff;
  }
  return b;
}

/** The header timeout the gateway runs with here (server.timeouts.headerMs), short so the slowloris test is quick. */
const HEADER_TIMEOUT_MS = 1_500;

let up: Upstream;
let gw: Gateway;

beforeAll(async () => {
  up = await startUpstream((req, res, body) => {
    const u = new URL(req.url!, 'http://x');
    if (u.pathname === '/digest') {
      res.end(createHash('sha256').update(body).digest('hex') + ':' + body.length);
      return;
    }
    if (u.pathname === '/api/big' || u.pathname === '/api/big-chunked') {
      // BIG_BYTES of a pattern that differs at every offset, in uneven writes.
      const n = Number(u.searchParams.get('n') ?? BIG_BYTES);
      const chunked = u.pathname === '/api/big-chunked';
      res.writeHead(200, chunked ? { 'content-type': 'application/octet-stream' } : { 'content-type': 'application/octet-stream', 'content-length': n });
      let off = 0;
      const more = (): void => {
        while (off < n) {
          const len = Math.min(n - off, 1000 + ((off * 7) % 90_000));
          const ok = res.write(bigPattern(off, len));
          off += len;
          if (!ok) { res.once('drain', more); return; }
        }
        res.end();
      };
      more();
      return;
    }
    if (u.pathname === '/api/slow') {
      setTimeout(() => res.end('slow:' + req.url), 150);
      return;
    }
    if (u.pathname.startsWith('/stream')) {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('part-1;');
      setTimeout(() => res.end('part-2;'), 5);
      return;
    }
    const out = JSON.stringify({ method: req.method, url: req.url, headers: req.headers, bodyLength: body.length });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) });
    res.end(req.method === 'HEAD' ? undefined : out);
  });
  gw = await startGateway(baseConfig({
    server: { workers: 1, backend: 'node', healthPath: '/healthz', timeouts: { headerMs: HEADER_TIMEOUT_MS } },
    upstreams: { echo: { targets: [up.url] } },
    routes: [
      { id: 'api', path: '/api/*', upstream: 'echo' },
      { id: 'digest', path: '/digest', upstream: 'echo' },
      { id: 'stream', path: '/stream', upstream: 'echo' },
      { id: 'hosted', path: '/hosted/*', host: 'only.example.com', upstream: 'echo' },
    ],
  }));
});

afterAll(async () => {
  await gw?.stop();
  await up?.close();
});

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

/** Sends `data` on a new connection and collects every byte until the server closes (or `ms`). */
function rawAll(port: number, data: string, ms = 5_000): Promise<{ text: string; closed: boolean; ms: number }> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const s = net.connect(port, '127.0.0.1', () => s.write(Buffer.from(data, 'latin1')));
    const chunks: Buffer[] = [];
    s.on('data', (d) => chunks.push(d));
    s.on('error', () => {});
    const t = setTimeout(() => { s.destroy(); resolve({ text: Buffer.concat(chunks).toString('latin1'), closed: false, ms: Date.now() - t0 }); }, ms);
    s.on('close', () => { clearTimeout(t); resolve({ text: Buffer.concat(chunks).toString('latin1'), closed: true, ms: Date.now() - t0 }); });
  });
}

const header = (r: { headers: [string, string][] }, name: string) => r.headers.filter(([k]) => k === name).map(([, v]) => v);

describe('server.backend: node: proxying', () => {
  it('GET is proxied exactly, with a Date header and no uWebSockets header', async () => {
    const r = await request(`${gw.url}/api/items?b=%20x&a=1`, { headers: { 'x-custom': 'v1' } });
    expect(r.statusCode).toBe(200);
    expect(r.headers['date']).toMatch(/^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$/);
    expect(r.headers['uwebsockets']).toBeUndefined();
    const j = await r.body.json() as any;
    expect(j.method).toBe('GET');
    expect(j.url).toBe('/api/items?b=%20x&a=1');
    expect(j.headers['x-custom']).toBe('v1');
    expect(j.headers['x-forwarded-for']).toBe('127.0.0.1');
  });

  it('POST with a Content-Length body is proxied byte for byte', async () => {
    const body = Buffer.alloc(300_000);
    for (let i = 0; i < body.length; i++) body[i] = (i * 31) & 0xff;
    const r = await request(`${gw.url}/digest`, { method: 'POST', body });
    expect(r.statusCode).toBe(200);
    expect(await r.body.text()).toBe(`${sha(body)}:${body.length}`);
  });

  it('POST with a chunked body (chunk extensions, trailers) is proxied byte for byte', async () => {
    const c = await RawConnection.open(gw.port);
    c.send('POST /digest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n' +
      '5;ext=1\r\nhello\r\n6;a="b c"\r\n world\r\n0\r\nx-trailer: t\r\n\r\n');
    const r = await c.read();
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe(`${sha('hello world')}:11`);
    c.close();
  });

  it('a streamed response (upstream chunked) reaches an HTTP/1.1 client chunked', async () => {
    const r = await request(`${gw.url}/stream`);
    expect(r.statusCode).toBe(200);
    expect(await r.body.text()).toBe('part-1;part-2;');
  });

  it('an extension method (PURGE) is proxied', async () => {
    const r = await request(`${gw.url}/api/cache/x`, { method: 'PURGE' });
    expect(r.statusCode).toBe(200);
    expect((await r.body.json() as any).method).toBe('PURGE');
  });

  it('HEAD answers the head only, and the connection serves the next request', async () => {
    const c = await RawConnection.open(gw.port);
    c.send('HEAD /api/h HTTP/1.1\r\nHost: x\r\n\r\n');
    const h = await c.read(true);
    expect(h.status).toBe(200);
    expect(h.body.length).toBe(0);
    c.send('GET /api/after HTTP/1.1\r\nHost: x\r\n\r\n');
    const g = await c.read();
    expect(g.status).toBe(200);
    expect(JSON.parse(g.body.toString()).url).toBe('/api/after');
    expect(c.leftover.length).toBe(0);
    c.close();
  });
});

describe('server.backend: node: HTTP/1.0 and pipelining', () => {
  it('HTTP/1.0 without keep-alive: answered, `Connection: close`, and closed', async () => {
    const r = await rawAll(gw.port, 'GET /api/one HTTP/1.0\r\nHost: x\r\n\r\n');
    expect(r.closed).toBe(true);
    expect(r.text).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(r.text.toLowerCase()).toContain('\r\nconnection: close\r\n');
    expect(r.text).toContain('"url":"/api/one"');
  });

  it('HTTP/1.0 with keep-alive: the connection is kept and each response says so', async () => {
    const c = await RawConnection.open(gw.port);
    for (const p of ['/api/k1', '/api/k2']) {
      c.send(`GET ${p} HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n`);
      const r = await c.read();
      expect(r.status).toBe(200);
      expect(header(r, 'connection')).toEqual(['keep-alive']);
      expect(JSON.parse(r.body.toString()).url).toBe(p);
    }
    expect(await c.closesWithin(200)).toBe(false);
    c.close();
  });

  it('HTTP/1.0 and a streamed response: delimited by the close, not chunked', async () => {
    const r = await rawAll(gw.port, 'GET /stream HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n');
    expect(r.closed).toBe(true);
    expect(r.text.toLowerCase()).not.toContain('transfer-encoding');
    expect(r.text.endsWith('\r\n\r\npart-1;part-2;')).toBe(true);
  });

  it('10 pipelined requests in one write are answered in order', async () => {
    const c = await RawConnection.open(gw.port);
    let all = '';
    for (let i = 0; i < 10; i++) all += `GET /api/p${i} HTTP/1.1\r\nHost: x\r\n\r\n`;
    c.send(all);
    for (let i = 0; i < 10; i++) {
      const r = await c.read();
      expect(r.status).toBe(200);
      expect(JSON.parse(r.body.toString()).url).toBe(`/api/p${i}`);
    }
    expect(await c.closesWithin(100)).toBe(false);
    c.close();
  });

  it('pipelined POSTs with bodies, then a close: every answer in order, then the connection closes', async () => {
    let all = '';
    for (let i = 0; i < 3; i++) all += `POST /digest HTTP/1.1\r\nHost: x\r\nContent-Length: ${i + 1}\r\n\r\n${'abc'.slice(0, i + 1)}`;
    all += 'GET /api/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /api/ignored HTTP/1.1\r\nHost: x\r\n\r\n';
    const r = await rawAll(gw.port, all);
    expect(r.closed).toBe(true);
    const statuses = r.text.match(/HTTP\/1\.1 \d{3}/g);
    expect(statuses).toEqual(['HTTP/1.1 200', 'HTTP/1.1 200', 'HTTP/1.1 200', 'HTTP/1.1 200']);
    expect(r.text.indexOf(`${sha('a')}:1`)).toBeLessThan(r.text.indexOf(`${sha('ab')}:2`));
    expect(r.text.indexOf(`${sha('ab')}:2`)).toBeLessThan(r.text.indexOf(`${sha('abc')}:3`));
    expect(r.text).toContain('/api/last');
    expect(r.text).not.toContain('/api/ignored');
  });
});

describe('server.backend: node: large responses and reads during a response', () => {
  /** GET `path` on a raw connection, reading slowly when `slow` (paused reads: the server meets backpressure), and returns the body (chunked coding removed). */
  function getRaw(path: string, slow: boolean): Promise<{ head: string; body: Buffer }> {
    return new Promise((resolve, reject) => {
      const s = net.connect(gw.port, '127.0.0.1', () => s.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`));
      const chunks: Buffer[] = [];
      let got = 0;
      s.on('data', (d) => {
        chunks.push(d);
        got += d.length;
        if (slow && got > 256 * 1024) {
          // Stop reading for a while: the kernel buffers fill, the gateway's writes stay queued.
          got = 0;
          s.pause();
          setTimeout(() => s.resume(), 40);
        }
      });
      s.on('error', reject);
      s.on('close', () => {
        const all = Buffer.concat(chunks);
        const end = all.indexOf('\r\n\r\n');
        const head = all.subarray(0, end).toString('latin1');
        let body = all.subarray(end + 4);
        if (/transfer-encoding: chunked/i.test(head)) {
          const parts: Buffer[] = [];
          let i = 0;
          for (;;) {
            const eol = body.indexOf('\r\n', i);
            const size = parseInt(body.subarray(i, eol).toString('latin1'), 16);
            if (size === 0) break;
            parts.push(body.subarray(eol + 2, eol + 2 + size));
            i = eol + 2 + size + 2;
          }
          body = Buffer.concat(parts);
        }
        resolve({ head, body });
      });
    });
  }

  it('large responses (Content-Length and chunked) reach slow and fast clients at once byte for byte', async () => {
    const want = sha(bigPattern(0, BIG_BYTES));
    const runs = await Promise.all([
      getRaw('/api/big', true), getRaw('/api/big', false), getRaw('/api/big-chunked', true),
      getRaw('/api/big-chunked', false), getRaw('/api/big', false), getRaw('/api/big', true),
    ]);
    for (const r of runs) {
      expect(r.head).toMatch(/^HTTP\/1\.1 200 /);
      expect(r.body.length).toBe(BIG_BYTES);
      expect(sha(r.body)).toBe(want);
    }
  }, 30_000);

  it('a 1 MiB response over undici, many times on kept connections, byte for byte', async () => {
    const n = 1024 * 1024;
    const want = sha(bigPattern(0, n));
    for (let i = 0; i < 8; i++) {
      const rs = await Promise.all([0, 1, 2, 3].map(() => request(`${gw.url}/api/big?n=${n}`)));
      for (const r of rs) {
        expect(r.statusCode).toBe(200);
        expect(sha(Buffer.from(await r.body.arrayBuffer()))).toBe(want);
      }
    }
  }, 30_000);

  it('a request sent while the previous response is under way (a separate write) is answered after it, in order', async () => {
    const c = await RawConnection.open(gw.port);
    c.send('GET /api/slow?1 HTTP/1.1\r\nHost: x\r\n\r\n');
    await new Promise((r) => setTimeout(r, 40));
    c.send('GET /api/p2 HTTP/1.1\r\nHost: x\r\n\r\n');
    await new Promise((r) => setTimeout(r, 20));
    c.send('GET /api/slow?3 HTTP/1.1\r\nHost: x\r\n\r\nGET /api/p4 HTTP/1.1\r\nHost: x\r\n\r\n');
    const first = await c.read();
    expect(first.body.toString()).toBe('slow:/api/slow?1');
    expect(JSON.parse((await c.read()).body.toString()).url).toBe('/api/p2');
    expect((await c.read()).body.toString()).toBe('slow:/api/slow?3');
    expect(JSON.parse((await c.read()).body.toString()).url).toBe('/api/p4');
    expect(await c.closesWithin(100)).toBe(false);
    c.close();
  });

  it('a client that half-closes while its response is under way still gets it, then the connection closes', async () => {
    const r = await new Promise<{ text: string; closed: boolean }>((resolve) => {
      const s = net.connect({ port: gw.port, host: '127.0.0.1', allowHalfOpen: true }, () => {
        s.write('GET /api/slow?hc HTTP/1.1\r\nHost: x\r\n\r\n');
        setTimeout(() => s.end(), 30);
      });
      const chunks: Buffer[] = [];
      s.on('data', (d) => chunks.push(d));
      s.on('error', () => {});
      const t = setTimeout(() => { s.destroy(); resolve({ text: Buffer.concat(chunks).toString('latin1'), closed: false }); }, 3_000);
      s.on('close', () => { clearTimeout(t); resolve({ text: Buffer.concat(chunks).toString('latin1'), closed: true }); });
    });
    expect(r.text).toMatch(/^HTTP\/1\.1 200 /);
    expect(r.text.endsWith('slow:/api/slow?hc')).toBe(true);
    expect(r.closed).toBe(true);
  });
});

describe('server.backend: node: a client that half-closes in the middle of a request body', () => {
  it('aborts the request at once (logged client_aborted), not at bodyMs: the body can no longer be complete (RFC 9112 8)', async () => {
    for (const [i, body] of [['cl', 'Content-Length: 10\r\n\r\nhello'], ['chunked', 'Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n']] as const) {
      const rid = `fin-mid-body-${i}`;
      const r = await new Promise<{ text: string; closed: boolean }>((resolve) => {
        const s = net.connect({ port: gw.port, host: '127.0.0.1', allowHalfOpen: true }, () => {
          s.write(`POST /digest HTTP/1.1\r\nHost: x\r\nX-Request-Id: ${rid}\r\n${body}`);
          setTimeout(() => s.end(), 100);
        });
        const chunks: Buffer[] = [];
        s.on('data', (d) => chunks.push(d));
        s.on('error', () => {});
        // Half of the body timeout (10 s by default): without the abort the connection waits for it.
        const t = setTimeout(() => { s.destroy(); resolve({ text: Buffer.concat(chunks).toString('latin1'), closed: false }); }, 5_000);
        s.on('close', () => { clearTimeout(t); resolve({ text: Buffer.concat(chunks).toString('latin1'), closed: true }); });
      });
      expect(r.closed, i).toBe(true);
      expect(r.text, i).toBe('');
      await expect.poll(() => gw.logs.some((l) => l.includes(rid) && l.includes('"status"')), { timeout: 3000 }).toBe(true);
      const line = JSON.parse(gw.logs.find((l) => l.includes(rid) && l.includes('"status"'))!);
      expect(line.error, i).toBe('client_aborted');
    }
  });
});

describe('server.backend: node: Expect: 100-continue', () => {
  it('a final answer before 100 Continue (a 404 here) closes the connection: the client may never send the body', async () => {
    const r = await rawAll(gw.port, 'POST /nowhere HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n', 3000);
    expect(r.text).toMatch(/^HTTP\/1\.1 404 /);
    expect(r.text).not.toContain('100 Continue');
    expect(r.text.toLowerCase()).toContain('connection: close');
    expect(r.closed).toBe(true);
  });

  it('a proxied request gets 100 Continue, its body, and keeps the connection', async () => {
    const r = await rawAll(gw.port, 'POST /api/e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello' + 'GET /api/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', 3000);
    expect(r.text).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 /);
    expect(r.text).toContain('"bodyLength":5');
    expect(r.text).toContain('/api/next');
  });
});

describe('server.backend: node: a client that does not read', () => {
  it('pipelined requests answered at once (health, gateway errors) stop being read once the answers back up: memory stays bounded', async () => {
    const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${gw.proc.pid}/status`, 'utf8'))![1]) * 1024;
    const before = rss();
    const s = net.connect(gw.port, '127.0.0.1');
    await new Promise<void>((r) => s.once('connect', () => r()));
    s.pause(); // never reads: the kernel buffers fill, then the gateway's
    s.on('error', () => {});
    const batch = Buffer.from('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\n\r\n'.repeat(500));
    const until = Date.now() + 3000;
    let sent = 0;
    while (Date.now() < until) {
      // Write whether or not the gateway reads (the client's own buffer grows instead when it stops).
      if (s.writableLength < 8 * 1024 * 1024) {
        s.write(batch);
        sent += batch.length;
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    const grown = rss() - before;
    console.log(`[node backend] a non-reading client sent ${(sent / 1e6).toFixed(0)} MB of pipelined requests in 3 s; gateway RSS grew ${(grown / 1e6).toFixed(1)} MB`);
    // Unbounded, it grew ~100 MB/s (every answer kept in the socket's userland buffer).
    expect(grown).toBeLessThan(64 * 1024 * 1024);
    s.destroy();
    const h = await rawAll(gw.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(h.text).toMatch(/^HTTP\/1\.1 200 /);
  });
});

describe('server.backend: node: strict parsing and timeouts', () => {
  const malformed: [string, string, number, string][] = [
    ['space before the colon', 'GET /api/x HTTP/1.1\r\nHost : x\r\n\r\n', 400, 'bad_request'],
    ['bare LF', 'GET /api/x HTTP/1.1\nHost: x\n\n', 400, 'bad_request'],
    ['NUL in a value', 'GET /api/x HTTP/1.1\r\nHost: x\r\nX-A: a\u0000b\r\n\r\n', 400, 'bad_request'],
    ['conflicting Content-Length', 'POST /digest HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab', 400, 'bad_request'],
    ['a URL over the whole-head cap (URL too long, framing not read)', `GET /api/${'a'.repeat(60_000)} HTTP/1.1\r\nHost: x\r\n\r\n`, 414, 'url_too_long'],
    ['two Host lines, then a bare LF', 'GET /api/x HTTP/1.1\r\nHost: x\r\nHost: y\r\nX: 1\n\r\n', 400, 'bad_request'],
  ];
  /** Refusals of well-framed heads: answered, the body (if any) discarded, the connection kept. */
  const kept: [string, string, number, string][] = [
    ['two Host lines', 'GET /api/x HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n', 400, 'bad_host'],
    ['two Host lines, a POST body', 'POST /api/x HTTP/1.1\r\nHost: x\r\nHost: y\r\nContent-Length: 21\r\n\r\nGET /api/smuggled H\r\n', 400, 'bad_host'],
    ['a URL over maxUrlBytes', `GET /api/${'a'.repeat(9000)} HTTP/1.1\r\nHost: x\r\n\r\n`, 414, 'url_too_long'],
    ['too many header lines, a POST body', `POST /api/x HTTP/1.1\r\nHost: x\r\n${'X-H: v\r\n'.repeat(120)}Content-Length: 3\r\n\r\nabc`, 431, 'headers_too_large'],
    ['a 40 KB header value', `GET /api/x HTTP/1.1\r\nHost: x\r\nX-Big: ${'v'.repeat(40_000)}\r\n\r\n`, 431, 'headers_too_large'],
    ['DEL in a header value', 'GET /api/x HTTP/1.1\r\nHost: x\r\nX-D: a\u007fb\r\n\r\n', 400, 'bad_request'],
    ['DEL in the query', 'GET /api/x?a=\u007f HTTP/1.1\r\nHost: x\r\n\r\n', 400, 'bad_request'],
    ['an absolute-form target with another scheme', 'GET ftp://x/api/x HTTP/1.1\r\nHost: x\r\n\r\n', 400, 'bad_request'],
  ];
  for (const [what, data, status, code] of kept) {
    it(`${what}: ${status} ${code}, and the connection serves the next request`, async () => {
      const c = await RawConnection.open(gw.port);
      c.send(data + 'GET /api/after HTTP/1.1\r\nHost: x\r\n\r\n');
      const r = await c.read();
      expect(r.status).toBe(status);
      expect(JSON.parse(r.body.toString()).error.code).toBe(code);
      expect(header(r, 'connection')).toEqual([]);
      const next = await c.read();
      expect(next.status).toBe(200);
      expect(JSON.parse(next.body.toString()).url).toBe('/api/after');
      expect(await c.closesWithin(100)).toBe(false);
      expect(c.leftover.length).toBe(0);
      c.close();
    });
  }

  it('a kept refusal with `Connection: close`, a chunked body, or a body over LINGER_MAX_BYTES: answered, then closed', async () => {
    for (const data of [
      'GET /api/x HTTP/1.1\r\nHost: x\r\nHost: y\r\nConnection: close\r\n\r\n',
      'POST /api/x HTTP/1.1\r\nHost: x\r\nHost: y\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
      'POST /api/x HTTP/1.1\r\nHost: x\r\nHost: y\r\nContent-Length: 99999999\r\n\r\nabc',
      'GET /api/x HTTP/1.0\r\nHost: x\r\nHost: y\r\n\r\n',
    ]) {
      const r = await rawAll(gw.port, data + 'GET /api/after HTTP/1.1\r\nHost: x\r\n\r\n', 3_000);
      expect(r.closed, data).toBe(true);
      expect(r.ms).toBeLessThan(1_000);
      expect(r.text.match(/HTTP\/1\.1 \d{3}/g), data).toEqual(['HTTP/1.1 400']);
      expect(r.text.toLowerCase()).toContain('\r\nconnection: close\r\n');
      expect(r.text).not.toContain('/api/after');
    }
  });

  it('HTTP/1.0 keep-alive: a kept refusal says `Connection: keep-alive` and the connection goes on', async () => {
    const c = await RawConnection.open(gw.port);
    c.send('GET /api/x HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nX-D: \u007f\r\n\r\n');
    const r = await c.read();
    expect(r.status).toBe(400);
    expect(header(r, 'connection')).toEqual(['keep-alive']);
    c.send('GET /api/after HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n');
    expect((await c.read()).status).toBe(200);
    c.close();
  });

  it('a kept refusal of a HEAD is answered without a body, and the connection goes on', async () => {
    const c = await RawConnection.open(gw.port);
    c.send('HEAD /api/x HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\nGET /api/after HTTP/1.1\r\nHost: x\r\n\r\n');
    const h = await c.read(true);
    expect(h.status).toBe(400);
    expect(h.body.length).toBe(0);
    expect(Number(header(h, 'content-length')[0])).toBeGreaterThan(0);
    const g = await c.read();
    expect(g.status).toBe(200);
    expect(JSON.parse(g.body.toString()).url).toBe('/api/after');
    c.close();
  });

  it('CONNECT with an origin-form target is 501 not_implemented (the gateway does not tunnel), and the connection goes on', async () => {
    const c = await RawConnection.open(gw.port);
    for (const t of ['/api/x', 'example.com:443']) {
      c.send(`CONNECT ${t} HTTP/1.1\r\nHost: x\r\n\r\n`);
      const r = await c.read();
      expect(r.status, t).toBe(501);
      expect(JSON.parse(r.body.toString()).error.code).toBe('not_implemented');
    }
    c.send('GET /api/after HTTP/1.1\r\nHost: x\r\n\r\n');
    expect((await c.read()).status).toBe(200);
    c.close();
  });
  for (const [what, data, status, code] of malformed) {
    it(`${what}: ${status} ${code} at once, and the connection closed`, async () => {
      const r = await rawAll(gw.port, data, 3_000);
      expect(r.closed).toBe(true);
      expect(r.ms).toBeLessThan(1_000);
      expect(r.text).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
      const body = JSON.parse(r.text.slice(r.text.indexOf('\r\n\r\n') + 4));
      expect(body.error.code).toBe(code);
      expect(body.error.requestId).toMatch(/^[a-z0-9-]+$/);
    });
  }

  it('a malformed HEAD is answered without a body (the length it would have), then closed', async () => {
    const r = await rawAll(gw.port, 'HEAD /api/x HTTP/1.1\r\nHost: x\r\nX : y\r\n\r\n', 3_000);
    expect(r.closed).toBe(true);
    expect(r.text).toMatch(/^HTTP\/1\.1 400 /);
    expect(r.text.endsWith('\r\n\r\n')).toBe(true);
    expect(Number(/\r\ncontent-length: (\d+)\r\n/i.exec(r.text)?.[1])).toBeGreaterThan(0);
  });

  it('a malformed request after a good one: the good one is answered, then 400 and close', async () => {
    const r = await rawAll(gw.port, 'GET /api/good HTTP/1.1\r\nHost: x\r\n\r\nGET /api/bad HTTP/1.1\r\nHost : x\r\n\r\n', 3_000);
    expect(r.closed).toBe(true);
    expect(r.text.match(/HTTP\/1\.1 \d{3}/g)).toEqual(['HTTP/1.1 200', 'HTTP/1.1 400']);
  });

  it('slowloris: a head still incomplete after the header timeout is closed', async () => {
    const s = net.connect(gw.port, '127.0.0.1');
    s.on('error', () => {});
    await new Promise((r) => s.once('connect', r));
    const t0 = Date.now();
    const closed = new Promise<number>((r) => s.once('close', () => r(Date.now() - t0)));
    s.write('GET /api/slow HTTP/1.1\r\nHost: x\r\n');
    const drip = setInterval(() => { if (!s.destroyed) s.write('X-Drip: 1\r\n'); }, 200);
    const ms = await Promise.race([closed, new Promise<number>((r) => setTimeout(() => r(-1), HEADER_TIMEOUT_MS + 4_000))]);
    clearInterval(drip);
    s.destroy();
    expect(ms).toBeGreaterThanOrEqual(HEADER_TIMEOUT_MS - 50);
    expect(ms).toBeLessThan(HEADER_TIMEOUT_MS + 2_500); // the sweep runs once a second
  });

  it('a gateway error (404) answers every method, HEAD without a body', async () => {
    for (const m of ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'PURGE', 'PROPFIND', 'HEAD']) {
      const c = await RawConnection.open(gw.port);
      c.send(`${m} /nowhere HTTP/1.1\r\nHost: x\r\n${m === 'POST' || m === 'PUT' ? 'Content-Length: 2\r\n\r\nab' : '\r\n'}`);
      const r = await c.read(m === 'HEAD');
      expect(r.status, m).toBe(404);
      expect(header(r, 'content-type'), m).toEqual(['application/json']);
      if (m === 'HEAD') {
        expect(r.body.length).toBe(0);
        expect(Number(header(r, 'content-length')[0])).toBeGreaterThan(0);
      } else {
        expect(JSON.parse(r.body.toString()).error.code, m).toBe('route_not_found');
      }
      // The connection serves the next request.
      c.send('GET /api/next HTTP/1.1\r\nHost: x\r\n\r\n');
      expect((await c.read()).status, m).toBe(200);
      c.close();
    }
  });
});

// ---------------------------------------------------------------- nginx in front

describe('server.backend: node: strictness items of the break-it pass', () => {
  /** The access log line of a request id (JSON log lines of the gateway). */
  const accessLine = async (rid: string): Promise<any> => {
    await expect.poll(() => gw.logs.some((l) => l.includes(rid) && l.includes('"status"')), { timeout: 3000 }).toBe(true);
    return JSON.parse(gw.logs.find((l) => l.includes(rid) && l.includes('"status"'))!);
  };

  it('HTTP/2.0 and HTTP/3.0 in an HTTP/1 request line: 505 version_not_supported (RFC 9110 15.6.6), then closed', async () => {
    for (const v of ['HTTP/2.0', 'HTTP/3.0']) {
      const r = await rawAll(gw.port, `GET /api/x ${v}\r\nHost: x\r\n\r\n`, 3_000);
      expect(r.closed).toBe(true);
      expect(r.text).toMatch(/^HTTP\/1\.1 505 HTTP Version Not Supported\r\n/);
      expect(JSON.parse(r.text.slice(r.text.indexOf('\r\n\r\n') + 4)).error.code).toBe('version_not_supported');
    }
  });

  it('HTTP/1.2 is served as HTTP/1.1 (RFC 9112 2.3): answered 200, the connection kept', async () => {
    const c = await RawConnection.open(gw.port);
    c.send('GET /api/v12 HTTP/1.2\r\nHost: x\r\n\r\nGET /api/next HTTP/1.1\r\nHost: x\r\n\r\n');
    const r = await c.read();
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body.toString()).url).toBe('/api/v12');
    expect((await c.read()).status).toBe(200);
    c.close();
  });

  it('HTTP/1.0 without Host is served (RFC 9112 3.2 requires Host in HTTP/1.1 only): the upstream gets its own name as Host', async () => {
    const r = await rawAll(gw.port, 'GET /api/h10 HTTP/1.0\r\n\r\n', 3_000);
    expect(r.closed).toBe(true);
    expect(r.text).toMatch(/^HTTP\/1\.1 200 /);
    const body = JSON.parse(r.text.slice(r.text.indexOf('\r\n\r\n') + 4));
    expect(body.url).toBe('/api/h10');
    expect(body.headers.host).toBe(new URL(up.url).host);
    // Only routes without `host` match it; in absolute form the target's authority is its host (RFC 9112 3.2.2).
    expect((await rawAll(gw.port, 'GET /hosted/x HTTP/1.0\r\n\r\n', 3_000)).text).toMatch(/^HTTP\/1\.1 404 /);
    const abs = await rawAll(gw.port, 'GET http://only.example.com/hosted/x HTTP/1.0\r\n\r\n', 3_000);
    expect(abs.text).toMatch(/^HTTP\/1\.1 200 /);
    const absBody = JSON.parse(abs.text.slice(abs.text.indexOf('\r\n\r\n') + 4));
    expect(absBody.url).toBe('/hosted/x');
    expect(absBody.headers['x-forwarded-host']).toBe('only.example.com');
    // HTTP/1.1 without Host stays 400 bad_host.
    const r11 = await rawAll(gw.port, 'GET /api/h11 HTTP/1.1\r\nConnection: close\r\n\r\n', 3_000);
    expect(r11.text).toMatch(/^HTTP\/1\.1 400 /);
    expect(r11.text).toContain('"bad_host"');
  });

  it('a bad chunk after the request was forwarded: 400 bad_request (no answer had started), logged as such, then closed', async () => {
    const c = await RawConnection.open(gw.port);
    c.send('POST /digest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n');
    // The head and the first chunk reach the upstream (which waits for the rest) before the bad chunk line.
    await new Promise((r) => setTimeout(r, 300));
    c.send('zz\r\nmore\r\n0\r\n\r\n');
    const r = await c.read();
    expect(r.status).toBe(400);
    expect(JSON.parse(r.body.toString()).error.code).toBe('bad_request');
    expect(header(r, 'connection')).toEqual(['close']);
    expect(await c.closesWithin(2000)).toBe(true);
    const line = await accessLine(header(r, 'x-request-id')[0]!);
    expect(line.status).toBe(400);
    expect(line.error).toBe('bad_request');
  });

  it('a refused HEAD never gets a body: its head split from its method across writes, or behind a request in the same read', async () => {
    const c = await RawConnection.open(gw.port);
    c.send('HEAD /api/x HTTP/1.1\r\nHost: x\r\n');
    await new Promise((r) => setTimeout(r, 100));
    c.send('X : y\r\n\r\n');
    const r = await c.read(true);
    expect(r.status).toBe(400);
    expect(Number(header(r, 'content-length')[0])).toBeGreaterThan(0);
    expect(await c.closesWithin(2000)).toBe(true);
    expect(c.leftover.length).toBe(0);
    const both = await rawAll(gw.port, 'POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcHEAD /api/x HTTP/1.1\r\nHost: x\r\nX : y\r\n\r\n', 3_000);
    expect(both.closed).toBe(true);
    const second = both.text.indexOf('HTTP/1.1 400 ');
    expect(second).toBeGreaterThan(0);
    expect(both.text.endsWith('\r\n\r\n')).toBe(true);
    expect(both.text.slice(second)).not.toContain('{');
  });

  it('`OPTIONS *` (RFC 9112 3.2.4): 200 with Allow and no body, the connection kept; `GET *` is 400', async () => {
    const c = await RawConnection.open(gw.port);
    c.send('OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\nGET /api/after HTTP/1.1\r\nHost: x\r\n\r\n');
    const r = await c.read();
    expect(r.status).toBe(200);
    expect(header(r, 'allow')).toEqual(['GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS']);
    expect(header(r, 'content-length')).toEqual(['0']);
    expect(header(r, 'x-request-id').length).toBe(1);
    expect((await c.read()).status).toBe(200);
    c.close();
    const g = await rawAll(gw.port, 'GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', 3_000);
    expect(g.text).toMatch(/^HTTP\/1\.1 400 /);
    expect(g.text).toContain('"bad_request"');
  });

  it('chunk sizes with many leading zeros are read by their value (RFC 9112 7.1)', async () => {
    const body = 'hello world';
    const r = await rawAll(gw.port, `POST /digest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${'0'.repeat(30)}b\r\n${body}\r\n${'0'.repeat(20)}\r\n\r\n`, 3_000);
    expect(r.text).toMatch(/^HTTP\/1\.1 200 /);
    expect(r.text.endsWith(`${sha(body)}:${body.length}`)).toBe(true);
  });
});

const nginxBin = findNginx();

describe('server.backend: node: nginx in front with its defaults', () => {
  let nginx: Nginx | null = null;
  let port = 0;

  beforeAll(async () => {
    if (nginxBin === null) return;
    // No proxy_http_version: nginx's default, HTTP/1.0 to the gateway, a connection per request.
    nginx = await startNginx(nginxBin, () => `    location / { proxy_pass http://127.0.0.1:${gw.port}; }\n`);
    port = nginx.port;
  });

  afterAll(async () => {
    await nginx?.stop();
  });

  if (nginxBin === null) {
    // A requirement, not an option (as Chromium for the browser test): a missing nginx fails, saying what to do.
    it('nginx is there (test/helpers/nginx.ts installs nginx-light when it can)', () => {
      throw new Error('nginx is not installed and `apt-get install nginx-light` (or nginx) failed: install it (apt-get install -y nginx-light, as root; .ci/run does it on CI) and run again.');
    });
    return;
  }

  it('GET, POST and a streamed response through nginx (proxy_http_version 1.0) answer 200', async () => {
    const g = await request(`http://127.0.0.1:${port}/api/via-nginx?q=1`);
    expect(g.statusCode).toBe(200);
    const j = await g.body.json() as any;
    expect(j.url).toBe('/api/via-nginx?q=1');
    const body = Buffer.alloc(50_000, 9);
    const p = await request(`http://127.0.0.1:${port}/digest`, { method: 'POST', body });
    expect(p.statusCode).toBe(200);
    expect(await p.body.text()).toBe(`${sha(body)}:${body.length}`);
    const s = await request(`http://127.0.0.1:${port}/stream`);
    expect(s.statusCode).toBe(200);
    expect(await s.body.text()).toBe('part-1;part-2;');
    // nginx writes its access log line just after the response: wait for the three.
    const deadline = performance.now() + 5_000;
    let log = '';
    while ((log = readFileSync(join(nginx!.dir, 'access.log'), 'utf8')).match(/" 200 /g)?.length !== 3 && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(log.match(/" 200 /g)?.length, log).toBe(3);
    // No upstream error in nginx's log (uWS's answer to HTTP/1.0 was a timeout there, then a 502).
    expect(readFileSync(join(nginx!.dir, 'error.log'), 'utf8')).not.toMatch(/upstream|timed out/);
  });
});
