/**
 * The node App's output path (workers/transport/node/app.ts): body chunks
 * handed over from a buffer the caller reuses at once (as the upstream
 * pool's shared READ_BUFFER) reach every client byte for byte, fast or slow
 * (the per-thread staging buffer is reused only once no socket holds bytes
 * from it); tryEnd reports backpressure as the kernel sees it, not as a
 * cork does; request body chunks reach onData exactly; a request sent while
 * a response is under way is answered after it. Real sockets on 127.0.0.1.
 */
import { createHash } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeApp, nodeUws, type NodeListenSocket, type NodeRequest, type NodeResponse } from '../../../workers/transport/node/app.js';

const CHUNK = 64 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** `len` bytes of a pattern that differs at every offset, from offset `off`, written into `out`. */
function pattern(out: Buffer, off: number, len: number): void {
  for (let i = 0; i < len; i++) {
    const x = off + i;
    out[i] = (x ^ (x >>> 8) ^ (x >>> 16) ^ (x >>> 3)) & 0xff;
  }
}

function expected(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  pattern(b, 0, n);
  return b;
}

/** The ok flags tryEnd returned, per response path. */
const oks = new Map<string, boolean[]>();

let app: NodeApp;
let port = 0;

beforeAll(async () => {
  app = nodeUws.App();
  app.any('/*', (res: NodeResponse, req: NodeRequest) => {
    const url = req.getUrl();
    if (url === '/echo') {
      // Request body chunks: the ArrayBuffer is valid during the callback only; copy what is kept (as the exchange does).
      const parts: Buffer[] = [];
      res.onAborted(() => {});
      res.onData((ab, isLast) => {
        parts.push(Buffer.copyBytesFrom(new Uint8Array(ab)));
        if (isLast) {
          const body = Buffer.concat(parts);
          res.cork(() => res.end(`${sha(body)}:${body.length}:${parts.length}`));
        }
      });
      return;
    }
    if (url === '/slow') {
      let aborted = false;
      res.onAborted(() => { aborted = true; });
      setTimeout(() => { if (!aborted) res.cork(() => res.end('slow:' + req.getQuery())); }, 100);
      return;
    }
    // /big?<size>: the body in CHUNK pieces from ONE buffer refilled for each (and scribbled over right after each call).
    const n = Number(req.getQuery());
    const key = url + '?' + req.getQuery() + '#' + oks.size;
    const flags: boolean[] = [];
    oks.set(key, flags);
    const shared = Buffer.allocUnsafe(CHUNK);
    let off = 0;
    let aborted = false;
    res.onAborted(() => { aborted = true; });
    const pump = (): void => {
      while (!aborted && off < n) {
        const len = Math.min(CHUNK, n - off);
        pattern(shared, off, len);
        let r: [boolean, boolean] = [true, false];
        res.cork(() => { r = res.tryEnd(shared.subarray(0, len), n); });
        shared.fill(0xaa); // the caller's buffer is reused at once
        off += len;
        flags.push(r[0]);
        if (r[1]) return;
        if (!r[0]) {
          // Backpressure: the App holds the bytes; go on when it is writable again (from another turn, as an upstream read would).
          res.onWritable(() => { setImmediate(pump); return true; });
          return;
        }
      }
    };
    setImmediate(pump);
  });
  port = await new Promise<number>((resolve, reject) => {
    app.listen('127.0.0.1', 0, (ls: NodeListenSocket | false) => (ls === false ? reject(new Error('listen failed')) : resolve(ls.port)));
  });
});

afterAll(() => {
  app?.close();
});

/** Sends `data`, collects everything until the server closes; `slow`: stop reading for 30 ms every 256 KiB. */
function exchange(data: string | Buffer, slow = false): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(data));
    const chunks: Buffer[] = [];
    let since = 0;
    s.on('data', (d) => {
      chunks.push(d);
      since += d.length;
      if (slow && since > 256 * 1024) {
        since = 0;
        s.pause();
        setTimeout(() => s.resume(), 30);
      }
    });
    s.on('error', reject);
    s.on('close', () => resolve(Buffer.concat(chunks)));
  });
}

function bodyOf(raw: Buffer): Buffer {
  return raw.subarray(raw.indexOf('\r\n\r\n') + 4);
}

describe('node App output', () => {
  it('bodies written from a reused buffer reach slow and fast clients at once byte for byte', async () => {
    const n = 4 * 1024 * 1024 + 777;
    const want = sha(expected(n));
    const get = `GET /big?${n} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`;
    const got = await Promise.all([exchange(get, true), exchange(get), exchange(get, true), exchange(get), exchange(get)]);
    for (const raw of got) {
      expect(raw.subarray(0, 17).toString()).toBe('HTTP/1.1 200 OK\r\n');
      const body = bodyOf(raw);
      expect(body.length).toBe(n);
      expect(sha(body)).toBe(want);
    }
  }, 30_000);

  it('tryEnd reports the kernel\'s backpressure, not the cork\'s: a 64 KiB chunk the kernel takes is ok', async () => {
    const n = 1024 * 1024;
    oks.clear();
    const raw = await exchange(`GET /big?${n} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    expect(sha(bodyOf(raw))).toBe(sha(expected(n)));
    const flags = [...oks.values()][0]!;
    expect(flags.length).toBe(16);
    // Corked, every 64 KiB chunk is above the 16 KiB high-water mark; before the fix every one said false.
    expect(flags.filter((ok) => ok).length).toBeGreaterThan(0);
  });

  it('request body chunks reach onData exactly (several reads, one reused ArrayBuffer)', async () => {
    const body = expected(700_000);
    const raw = await exchange(Buffer.concat([
      Buffer.from(`POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`), body,
    ]));
    const [digest, len, parts] = bodyOf(raw).toString().split(':');
    expect(digest).toBe(sha(body));
    expect(Number(len)).toBe(body.length);
    expect(Number(parts)).toBeGreaterThan(1);
  });

  it('requests sent while a response is under way (separate writes, then pipelined) are answered after it, in order', async () => {
    const s = net.connect(port, '127.0.0.1');
    await new Promise((r) => s.once('connect', r));
    const chunks: Buffer[] = [];
    s.on('data', (d) => chunks.push(d));
    s.write('GET /slow?1 HTTP/1.1\r\nHost: x\r\n\r\n');
    await new Promise((r) => setTimeout(r, 30));
    s.write('GET /slow?2 HTTP/1.1\r\nHost: x\r\n\r\n');
    await new Promise((r) => setTimeout(r, 30));
    s.write('GET /slow?3 HTTP/1.1\r\nHost: x\r\n\r\nGET /slow?4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    await new Promise((r) => s.once('close', r));
    const text = Buffer.concat(chunks).toString();
    expect(text.match(/slow:\d/g)).toEqual(['slow:1', 'slow:2', 'slow:3', 'slow:4']);
    expect(text.match(/HTTP\/1\.1 200 OK/g)!.length).toBe(4);
  });
});
