/**
 * Downstream TLS on the node backend only (workers/transport/node/tls.ts):
 * what the backend-neutral tls-server.test.ts cannot ask of uWS or Bun.
 * Handshake counting by reason (turnpike_tls_handshakes_total,
 * turnpike_tls_handshake_failures_total{reason}), the handshake deadline
 * (server.timeouts.headerMs), the plain-HTTP answer, SNI picked from the
 * ClientHello (a ClientHello sent one byte at a time, names in any case, an
 * RSA SNI certificate next to an ECDSA default), minVersion TLSv1.3,
 * alpn/ecdhCurve, and the connection handler unchanged over TLS
 * (pipelining, large responses, header timeout, a WebSocket frame sent with
 * its handshake). Real gateway processes, 127.0.0.1, ephemeral ports.
 */
import { execFile } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocketServer } from 'ws';
import { CertFactory, type CertFiles } from '../helpers/certs.js';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { sampleValue, scrape } from '../helpers/metrics.js';

/** server.timeouts.headerMs here: the handshake deadline (swept once a second, so it fires 1-2 s after accept). */
const HEADER_MS = 1000;
const REASONS = ['protocol_version', 'no_shared_cipher', 'unknown_server_name', 'bad_certificate', 'timeout', 'not_tls', 'other'] as const;
type Reason = (typeof REASONS)[number];
/** A client's error for a handshake_failure alert (OpenSSL 3.0: SSLV3_ALERT_..., 3.2+ on Node 22: SSL/TLS_ALERT_...). */
const HANDSHAKE_FAILURE = /^ERR_SSL_(SSLV3|SSL\/TLS)_ALERT_HANDSHAKE_FAILURE$/;

const certs = new CertFactory();
let ca: CertFiles;
let defCert: CertFiles;
let apiCert: CertFiles;
let wildRsa: CertFiles;
let up: http.Server;
let upUrl = '';
/** A 200 KB body the upstream serves at /echo/big (bytes known to the test). */
const BIG = Buffer.alloc(200 * 1024);
for (let i = 0; i < BIG.length; i++) BIG[i] = (i * 7 + 3) & 0xff;

/** /echo/stream: a prefix larger than the loopback socket buffers, then small lines written one by one. */
const STREAM_PREFIX = 8 * 1024 * 1024;
const STREAM_LINES = 2000;
/** Line `i` of /echo/stream: ~1 KB, its number throughout (a line overwritten by another shows). */
const streamLine = (i: number) => `${i}:`.padEnd(1000, `.${i}`) + '\n';

const fp = (c: CertFiles) => new X509Certificate(c.certPem).fingerprint256;

beforeAll(async () => {
  ca = certs.ca();
  defCert = certs.leaf({ names: ['default.test', 'localhost'], ca });
  apiCert = certs.leaf({ names: ['api.example.com'], ca });
  wildRsa = certs.leaf({ names: ['*.example.com'], ca, keyType: 'rsa' });
  up = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.url!.startsWith('/echo/stream')) {
        // STREAM_PREFIX bytes (more than the loopback socket buffers hold), then STREAM_LINES small writes.
        res.writeHead(200, { 'content-type': 'text/plain' });
        let sent = 0;
        let line = 0;
        const pump = (): void => {
          while (sent < STREAM_PREFIX) {
            const n = Math.min(64 * 1024, STREAM_PREFIX - sent);
            sent += n;
            if (!res.write(BIG.subarray(0, n))) { res.once('drain', pump); return; }
          }
          if (line < STREAM_LINES) {
            res.write(streamLine(line++));
            setImmediate(pump);
            return;
          }
          res.end();
        };
        pump();
        return;
      }
      if (req.url!.startsWith('/echo/big')) {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': BIG.length });
        res.end(BIG);
        return;
      }
      const body = JSON.stringify({ url: req.url, proto: req.headers['x-forwarded-proto'] ?? null });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  up.keepAliveTimeout = 30_000;
  const wss = new WebSocketServer({ server: up });
  wss.on('connection', (ws) => ws.on('message', (d, binary) => ws.send(binary ? d : `echo:${d.toString()}`)));
  await new Promise<void>((r) => up.listen(0, '127.0.0.1', () => r()));
  upUrl = `http://127.0.0.1:${(up.address() as net.AddressInfo).port}`;
});

afterAll(async () => {
  up?.closeAllConnections();
  await new Promise<void>((r) => (up ? up.close(() => r()) : r()));
  certs.cleanup();
});

function config(tlsOver: Record<string, unknown> = {}): Record<string, any> {
  return baseConfig({
    server: {
      backend: 'node', workers: 1,
      timeouts: { headerMs: HEADER_MS, idleMs: 10_000, bodyMs: 10_000 },
      forwarded: { xForwardedProtoHost: true },
      tls: {
        cert: defCert.certFile, key: defCert.keyFile,
        sni: [
          { hosts: ['api.example.com'], cert: apiCert.certFile, key: apiCert.keyFile },
          { hosts: ['*.example.com'], cert: wildRsa.certFile, key: wildRsa.keyFile },
        ],
        ...tlsOver,
      },
    },
    admin: { enabled: true, port: 0 },
    upstreams: { echo: { targets: [upUrl] } },
    routes: [{ id: 'echo', path: '/echo/*', upstream: 'echo' }],
  });
}

function start(cfg: Record<string, any>): Promise<Gateway> {
  return startGateway(cfg, { env: { TURNPIKE_SERVER__BACKEND: 'node', TURNPIKE_ADMIN_TOKEN: 'tls-node-test-admin-token-0123456789abcdef' } });
}

interface Counts { handshakes: number; failures: Record<Reason, number> }

async function counts(gw: Gateway): Promise<Counts> {
  const text = await scrape(gw.adminPort!);
  const failures = {} as Record<Reason, number>;
  for (const r of REASONS) failures[r] = sampleValue(text, `turnpike_tls_handshake_failures_total{reason="${r}"}`) ?? 0;
  return { handshakes: sampleValue(text, 'turnpike_tls_handshakes_total') ?? 0, failures };
}

/** The counters moved by exactly `handshakes` and `failures` (every other reason unchanged); polled: the cells are read from shared memory. */
async function expectDelta(gw: Gateway, before: Counts, handshakes: number, failures: Partial<Record<Reason, number>>): Promise<void> {
  const want = { handshakes: before.handshakes + handshakes, failures: { ...before.failures } };
  for (const [r, n] of Object.entries(failures)) want.failures[r as Reason] += n!;
  await expect.poll(() => counts(gw), { timeout: 5000, interval: 100 }).toEqual(want);
}

interface Hs { ok: boolean; fingerprint: string; protocol: string | null; alpn: string | false; error: string }

function handshake(port: number, servername: string | undefined, extra: tls.ConnectionOptions = {}): Promise<Hs> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false, ...extra }, () => {
      const r = { ok: true, fingerprint: s.getPeerCertificate().fingerprint256, protocol: s.getProtocol(), alpn: s.alpnProtocol ?? false, error: '' };
      // end(), not destroy(): a TLS 1.3 client is done before its Finished reached the server, and a destroy can
      // drop it (the server then counts a failed handshake, `other`: it never completed).
      s.end();
      resolve(r);
    });
    s.setTimeout(5000, () => s.destroy(new Error('timeout')));
    s.on('error', (e: NodeJS.ErrnoException) => resolve({ ok: false, fingerprint: '', protocol: null, alpn: false, error: e.code ?? e.message }));
  });
}

/** A raw TCP client: writes `data` (if any), collects what comes back until the server closes; resolves the bytes and how long the close took. */
function rawExchange(port: number, data: Buffer | string | null, o: { end?: boolean; timeoutMs?: number } = {}): Promise<{ got: Buffer; ms: number; closed: boolean }> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const chunks: Buffer[] = [];
    const s = net.connect(port, '127.0.0.1', () => {
      if (data !== null) s.write(data);
      if (o.end) s.end();
    });
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('error', () => {});
    const timer = setTimeout(() => { s.destroy(); resolve({ got: Buffer.concat(chunks), ms: performance.now() - t0, closed: false }); }, o.timeoutMs ?? 5000);
    s.on('close', () => { clearTimeout(timer); resolve({ got: Buffer.concat(chunks), ms: performance.now() - t0, closed: true }); });
  });
}

/** A secure connection to `name` (verified against the test CA). */
function secure(port: number, name: string, extra: tls.ConnectionOptions = {}): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: name, ca: ca.certPem, ...extra }, () => resolve(s));
    s.once('error', reject);
  });
}

/** Reads from `s` until `done(buffer)` says so (or the socket closes). */
function readUntil(s: net.Socket, done: (b: Buffer) => boolean, timeoutMs = 5000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (done(buf)) finish();
    };
    const finish = () => { s.off('data', onData); clearTimeout(t); resolve(buf); };
    const t = setTimeout(() => { s.off('data', onData); reject(new Error(`timeout; got ${buf.length} bytes: ${buf.subarray(0, 200).toString('latin1')}`)); }, timeoutMs);
    s.on('data', onData);
    s.once('close', finish);
  });
}

/** Parses `n` HTTP/1.1 responses with Content-Length from `b`; their bodies. */
function bodies(b: Buffer, n: number): Buffer[] | null {
  const out: Buffer[] = [];
  let off = 0;
  while (out.length < n) {
    const end = b.indexOf('\r\n\r\n', off);
    if (end === -1) return null;
    const head = b.subarray(off, end).toString('latin1');
    const m = /content-length: (\d+)/i.exec(head);
    const len = m ? Number(m[1]) : 0;
    if (b.length < end + 4 + len) return null;
    out.push(b.subarray(end + 4, end + 4 + len));
    off = end + 4 + len;
  }
  return out;
}

function openssl(args: string[]): Promise<string> {
  return new Promise((resolve) => {
    const p = execFile('openssl', args, { timeout: 5000 }, (_e, out, err) => resolve(String(out) + String(err)));
    p.stdin?.end();
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('TLS on the node backend: handshakes, counted', () => {
  let gw: Gateway;
  beforeAll(async () => {
    gw = await start(config());
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it('counts completed handshakes; a connection closed before its first byte is not a handshake', async () => {
    const before = await counts(gw);
    for (const name of ['default.test', 'api.example.com', 'www.example.com']) expect((await handshake(gw.port, name)).ok).toBe(true);
    const bare = await rawExchange(gw.port, null, { end: true });
    expect(bare.closed).toBe(true);
    expect(bare.got.length).toBe(0);
    await expectDelta(gw, before, 3, {});
  });

  it('each failure is counted once under its reason', async () => {
    const before = await counts(gw);
    // protocol_version: TLS 1.1 (the client lowers its own security level to offer it).
    const old = await handshake(gw.port, 'default.test', { minVersion: 'TLSv1.1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' });
    expect(old.error).toBe('ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION');
    // no_shared_cipher: a TLS 1.2 suite outside server.tls.ciphers.
    const cipher = await handshake(gw.port, 'default.test', { maxVersion: 'TLSv1.2', ciphers: 'AES128-SHA' });
    expect(cipher.error).toMatch(HANDSHAKE_FAILURE);
    // bad_certificate: a client that does not trust the CA says so with an alert (unknown_ca).
    const refused = await openssl(['s_client', '-connect', `127.0.0.1:${gw.port}`, '-servername', 'default.test', '-verify_return_error']);
    expect(refused).toMatch(/verify error|certificate verify failed/);
    // not_tls: a request line (answered 400), and other bytes (closed).
    const plain = await rawExchange(gw.port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(plain.got.toString('latin1')).toMatch(/^HTTP\/1\.1 400 /);
    const junk = await rawExchange(gw.port, Buffer.from([0x00, 0x01, 0x02, 0xff]));
    expect(junk.closed).toBe(true);
    expect(junk.got.length).toBe(0);
    // other: half a ClientHello, then FIN; and an ALPN offer with nothing in common.
    const half = await rawExchange(gw.port, Buffer.from([0x16, 0x03, 0x01, 0x01, 0x00, 0x01, 0x00]), { end: true });
    expect(half.closed).toBe(true);
    const h2 = await handshake(gw.port, 'default.test', { ALPNProtocols: ['h2'] });
    expect(h2.ok).toBe(false);
    await expectDelta(gw, before, 0, { protocol_version: 1, no_shared_cipher: 1, bad_certificate: 1, not_tls: 2, other: 2 });
  });

  it('a handshake not done within server.timeouts.headerMs is closed and counted as timeout (silent client, and a trickled ClientHello)', async () => {
    const before = await counts(gw);
    const silent = rawExchange(gw.port, null, { timeoutMs: 6000 });
    // A trickle: the 5-byte record header, then one byte every 200 ms (never a whole ClientHello).
    const trickle = new Promise<{ ms: number; closed: boolean }>((resolve) => {
      const t0 = performance.now();
      const s = net.connect(gw.port, '127.0.0.1', () => s.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00])));
      const iv = setInterval(() => s.write(Buffer.from([0x01])), 200);
      s.on('error', () => {});
      const timer = setTimeout(() => { clearInterval(iv); s.destroy(); resolve({ ms: performance.now() - t0, closed: false }); }, 6000);
      s.on('close', () => { clearInterval(iv); clearTimeout(timer); resolve({ ms: performance.now() - t0, closed: true }); });
    });
    const [a, b] = await Promise.all([silent, trickle]);
    for (const r of [a, b]) {
      expect(r.closed).toBe(true);
      expect(r.ms).toBeGreaterThanOrEqual(HEADER_MS - 50);
      expect(r.ms).toBeLessThan(HEADER_MS + 2500); // the sweep runs once a second
    }
    await expectDelta(gw, before, 0, { timeout: 2 });
    // The listener serves on.
    expect((await handshake(gw.port, 'default.test')).ok).toBe(true);
  });
});

describe('TLS on the node backend: what a client sees', () => {
  let gw: Gateway;
  beforeAll(async () => {
    gw = await start(config());
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it('plain HTTP on the TLS port: 400 bad_request saying so, JSON, then closed (as nginx)', async () => {
    const r = await rawExchange(gw.port, 'GET /echo/x HTTP/1.1\r\nHost: default.test\r\n\r\n');
    expect(r.closed).toBe(true);
    const text = r.got.toString('latin1');
    const [head, body] = text.split('\r\n\r\n');
    expect(head).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(head).toMatch(/\r\nconnection: close(\r\n|$)/);
    const len = Number(/content-length: (\d+)/.exec(head!)![1]);
    expect(Buffer.byteLength(body!)).toBe(len);
    const j = JSON.parse(body!);
    expect(j.error.code).toBe('bad_request');
    expect(j.error.message).toMatch(/plain HTTP request was sent to HTTPS port/);
  });

  it('SNI is read from the ClientHello even when it arrives in many small pieces', async () => {
    const tcp = net.connect(gw.port, '127.0.0.1');
    tcp.setNoDelay(true);
    await new Promise((r) => tcp.once('connect', r));
    let split = true;
    const duplex = new Duplex({
      write(chunk: Buffer, _enc, cb) {
        if (!split) { tcp.write(chunk, cb); return; }
        split = false; // the ClientHello only
        void (async () => {
          // 16-byte pieces 1 ms apart: ~100 reads for a ClientHello (Node 22's, with a post-quantum key share, is ~1.5 KB).
          for (let i = 0; i < chunk.length; i += 16) {
            tcp.write(chunk.subarray(i, i + 16));
            await sleep(1);
          }
          cb();
        })();
      },
      read() {},
    });
    tcp.on('data', (d) => duplex.push(d));
    tcp.on('close', () => duplex.push(null));
    const s = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const c = tls.connect({ socket: duplex, servername: 'api.example.com', ca: ca.certPem }, () => resolve(c));
      c.once('error', reject);
    });
    expect(s.getPeerCertificate().fingerprint256).toBe(fp(apiCert));
    s.destroy();
    tcp.destroy();
  });

  it('server names in any case; an RSA certificate for a name while the default is ECDSA (TLS 1.3 and 1.2)', async () => {
    expect((await handshake(gw.port, 'API.Example.COM')).fingerprint).toBe(fp(apiCert));
    expect((await handshake(gw.port, 'WWW.example.com')).fingerprint).toBe(fp(wildRsa));
    for (const v of ['TLSv1.3', 'TLSv1.2'] as const) {
      const h = await handshake(gw.port, 'shop.example.com', { maxVersion: v });
      expect(h.protocol, v).toBe(v);
      expect(h.fingerprint, v).toBe(fp(wildRsa));
      expect((await handshake(gw.port, 'default.test', { maxVersion: v })).fingerprint, v).toBe(fp(defCert));
    }
  });

  it('ALPN: http/1.1 is negotiated when offered (the default alpn)', async () => {
    expect((await handshake(gw.port, 'default.test', { ALPNProtocols: ['h2', 'http/1.1'] })).alpn).toBe('http/1.1');
    expect((await handshake(gw.port, 'default.test')).alpn).toBe(false);
  });

  it('pipelined requests with 200 KB answers over one TLS connection: every byte in order', async () => {
    const s = await secure(gw.port, 'default.test');
    const n = 12;
    let req = '';
    for (let i = 0; i < n; i++) req += `GET /echo/big?i=${i} HTTP/1.1\r\nHost: default.test\r\n\r\n`;
    s.write(req);
    const got = await readUntil(s, (b) => bodies(b, n) !== null, 15_000);
    const bs = bodies(got, n)!;
    expect(bs.length).toBe(n);
    const want = createHash('sha256').update(BIG).digest('hex');
    for (const b of bs) expect(createHash('sha256').update(b).digest('hex')).toBe(want);
    s.destroy();
  });

  it('a client that reads nothing for a while: answers queued behind a full socket stay intact (TLS writes are copied when they must wait)', async () => {
    const s = await secure(gw.port, 'default.test');
    s.pause();
    // 4.8 MB of large answers fill the socket buffers, then small distinct answers queue behind them.
    const big = 24;
    const small = 60;
    let req = '';
    for (let i = 0; i < big; i++) req += `GET /echo/big?i=${i} HTTP/1.1\r\nHost: default.test\r\n\r\n`;
    for (let i = 0; i < small; i++) req += `GET /echo/small-${i}-${'x'.repeat(i * 7)} HTTP/1.1\r\nHost: default.test\r\n\r\n`;
    s.write(req);
    await sleep(1500);
    s.resume();
    const got = await readUntil(s, (b) => bodies(b, big + small) !== null, 20_000);
    const bs = bodies(got, big + small)!;
    const want = createHash('sha256').update(BIG).digest('hex');
    for (let i = 0; i < big; i++) expect(createHash('sha256').update(bs[i]!).digest('hex'), `big ${i}`).toBe(want);
    for (let i = 0; i < small; i++) expect(JSON.parse(bs[big + i]!.toString()).url, `small ${i}`).toBe(`/echo/small-${i}-${'x'.repeat(i * 7)}`);
    s.destroy();
  });

  it('a slow reader of a streamed answer: small chunks written behind a full socket stay intact (TLS writes are copied when they must wait)', async () => {
    const s = await secure(gw.port, 'default.test');
    const chunks: Buffer[] = [];
    const closed = new Promise((r) => s.once('close', r));
    // A slow reader: a pause after every read, so that the gateway's socket stays full and the lines it writes
    // meanwhile wait behind what the kernel has not taken.
    s.on('data', (d: Buffer) => {
      chunks.push(d);
      s.pause();
      setTimeout(() => s.resume(), 2);
    });
    s.write('GET /echo/stream HTTP/1.1\r\nHost: default.test\r\nConnection: close\r\n\r\n');
    await closed;
    const raw = Buffer.concat(chunks);
    const head = raw.indexOf('\r\n\r\n');
    // The chunked body, de-chunked.
    const parts: Buffer[] = [];
    let off = head + 4;
    for (;;) {
      const nl = raw.indexOf('\r\n', off);
      const size = parseInt(raw.subarray(off, nl).toString('latin1'), 16);
      if (!(size > 0)) break;
      parts.push(raw.subarray(nl + 2, nl + 2 + size));
      off = nl + 2 + size + 2;
    }
    const body = Buffer.concat(parts);
    const text = body.subarray(STREAM_PREFIX).toString('latin1');
    const lines = text.split('\n').slice(0, -1);
    expect(lines.length).toBe(STREAM_LINES);
    for (let i = 0; i < STREAM_LINES; i++) if (lines[i] + '\n' !== streamLine(i)) expect(lines[i]!.slice(0, 40), `line ${i}`).toBe(streamLine(i).slice(0, 40));
    for (let i = 0; i < STREAM_PREFIX; i += 64 * 1024) expect(body.subarray(i, i + 64).equals(BIG.subarray(0, 64)), `prefix at ${i}`).toBe(true);
  });

  it('the header timeout still applies after the handshake (a slow request head over TLS is closed)', async () => {
    const s = await secure(gw.port, 'default.test');
    const t0 = performance.now();
    s.write('GET /echo/slow HTTP/1.1\r\nHost: default.test\r\n');
    await new Promise((r) => s.once('close', r));
    const ms = performance.now() - t0;
    expect(ms).toBeGreaterThanOrEqual(HEADER_MS - 50);
    expect(ms).toBeLessThan(HEADER_MS + 2500);
  });

  it('a WebSocket frame sent with the handshake, over TLS, is delivered once', async () => {
    const s = await secure(gw.port, 'default.test');
    const key = Buffer.from('0123456789abcdef').toString('base64');
    const payload = Buffer.from('first');
    const mask = Buffer.from([1, 2, 3, 4]);
    const frame = Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, Buffer.from(payload.map((b, i) => b ^ mask[i % 4]!))]);
    s.write(Buffer.concat([Buffer.from(`GET /echo/ws HTTP/1.1\r\nHost: default.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`), frame]));
    const want = Buffer.from('echo:first');
    const got = await readUntil(s, (b) => {
      const i = b.indexOf('\r\n\r\n');
      return i !== -1 && b.length >= i + 4 + 2 + want.length;
    });
    const i = got.indexOf('\r\n\r\n');
    expect(got.subarray(0, 12).toString()).toBe('HTTP/1.1 101');
    const f = got.subarray(i + 4);
    expect(f[0]).toBe(0x81);
    expect(f[1]).toBe(want.length);
    expect(f.subarray(2, 2 + want.length).toString()).toBe('echo:first');
    // Nothing more (a frame delivered twice would echo twice).
    await sleep(300);
    const extra: Buffer[] = [];
    s.on('data', (d: Buffer) => extra.push(d));
    await sleep(200);
    expect(Buffer.concat(extra).length).toBe(0);
    s.destroy();
  });
});

describe('TLS on the node backend: sniStrict, minVersion TLSv1.3, alpn [], ecdhCurve', () => {
  let gw: Gateway;
  beforeAll(async () => {
    gw = await start(config({ sniStrict: true, minVersion: 'TLSv1.3', alpn: [], ecdhCurve: 'X25519' }));
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it('refuses an unknown name and no name with a handshake_failure alert (never the default certificate), counted unknown_server_name', async () => {
    const before = await counts(gw);
    for (const name of ['other.test', undefined]) {
      const h = await handshake(gw.port, name);
      expect(h.ok, String(name)).toBe(false);
      expect(h.error, String(name)).toMatch(HANDSHAKE_FAILURE);
    }
    expect((await handshake(gw.port, 'localhost')).fingerprint).toBe(fp(defCert));
    expect((await handshake(gw.port, 'a.example.com')).fingerprint).toBe(fp(wildRsa));
    await expectDelta(gw, before, 2, { unknown_server_name: 2 });
  });

  it('minVersion TLSv1.3: a TLS 1.2 client is refused (protocol_version); no ALPN with alpn []; X25519 only', async () => {
    const before = await counts(gw);
    const h12 = await handshake(gw.port, 'default.test', { maxVersion: 'TLSv1.2' });
    expect(h12.error).toBe('ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION');
    const h13 = await handshake(gw.port, 'default.test', { ALPNProtocols: ['http/1.1'] });
    expect(h13.protocol).toBe('TLSv1.3');
    expect(h13.alpn).toBe(false);
    const p256 = await handshake(gw.port, 'default.test', { ecdhCurve: 'prime256v1' });
    expect(p256.ok).toBe(false);
    await expectDelta(gw, before, 1, { protocol_version: 1, no_shared_cipher: 1 });
    const s = await secure(gw.port, 'default.test');
    s.write('GET /echo/ok HTTP/1.1\r\nHost: default.test\r\nConnection: close\r\n\r\n');
    const got = (await readUntil(s, () => false)).toString();
    expect(got).toMatch(/^HTTP\/1\.1 200 /);
    expect(got).toContain('"proto":"https"');
  });
});
