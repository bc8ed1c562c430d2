/**
 * TLS to upstreams (issue 15): https:// targets through the gateway's own
 * upstream client (workers/proxy/upstream-pool.ts), wss:// through the
 * WebSocket tunnel, and health checks over https, against real node:https
 * upstreams whose certificates come from test/helpers/certs.ts.
 *
 * One gateway per backend (uws, node: both run uws-exchange.ts over the
 * same pool) with one upstream per case; every https server counts its TLS
 * connections and whether each resumed a session.
 */
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { CertFactory, type CertFiles } from '../helpers/certs.js';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { Errors } from '../../common/errors.js';

const BIG_BYTES = 8 * 1024 * 1024;
const BIG = randomBytes(BIG_BYTES);
const BIG_SHA = createHash('sha256').update(BIG).digest('hex');
/** /stream: BIG four times, written as the socket takes it (write() false: wait for drain). */
const STREAM_BYTES = 4 * BIG_BYTES;
const STREAM_SHA = createHash('sha256').update(BIG).update(BIG).update(BIG).update(BIG).digest('hex');

interface TlsUpstream {
  port: number;
  url: string;
  /** One entry per TLS connection accepted (handshake completed): whether it resumed a session. */
  conns: { reused: boolean; alpn: string | false; servername: string | false; clientCert: boolean }[];
  /** Requests seen: method, url, body length, the connection's index in `conns`. */
  seen: { method: string; url: string; bodyLength: number; conn: number; ua: string }[];
  /** Bytes of /stream its socket has taken so far. */
  streamWritten: number;
  wss: WebSocketServer | null;
  close(): Promise<void>;
}

interface TlsUpstreamOptions {
  cert: CertFiles;
  /** mTLS: require a client certificate signed by this CA. */
  clientCa?: CertFiles;
  /** Also accept WebSockets (echo). */
  ws?: boolean;
}

async function startTlsUpstream(o: TlsUpstreamOptions): Promise<TlsUpstream> {
  const conns: TlsUpstream['conns'] = [];
  const seen: TlsUpstream['seen'] = [];
  const index = new WeakMap<net.Socket, number>();
  const up = { streamWritten: 0 } as TlsUpstream;
  const server = https.createServer({
    key: o.cert.keyPem, cert: o.cert.certPem,
    ...(o.clientCa ? { requestCert: true, rejectUnauthorized: true, ca: o.clientCa.certPem } : {}),
  }, (req, res) => {
    let n = 0;
    const h = createHash('sha256');
    req.on('data', (c: Buffer) => { n += c.length; h.update(c); });
    req.on('end', () => {
      seen.push({ method: req.method!, url: req.url!, bodyLength: n, conn: index.get(req.socket) ?? -1, ua: String(req.headers['user-agent'] ?? '') });
      if (req.url === '/big') {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(BIG_BYTES) });
        res.end(BIG);
        return;
      }
      if (req.url === '/stream') {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(STREAM_BYTES) });
        up.streamWritten = 0;
        const CHUNK = 64 * 1024;
        const pump = (): void => {
          while (up.streamWritten < STREAM_BYTES) {
            const at = up.streamWritten % BIG_BYTES;
            up.streamWritten += CHUNK;
            if (!res.write(BIG.subarray(at, at + CHUNK))) {
              res.once('drain', pump);
              return;
            }
          }
          res.end();
        };
        pump();
        return;
      }
      const delay = req.url!.startsWith('/slow') ? 150 : 0;
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ method: req.method, url: req.url, host: req.headers.host, bodyLength: n, sha: h.digest('hex') }));
      }, delay);
    });
  });
  server.keepAliveTimeout = 30_000;
  server.on('secureConnection', (s: tls.TLSSocket) => {
    index.set(s, conns.length);
    conns.push({ reused: s.isSessionReused(), alpn: s.alpnProtocol, servername: (s as any).servername ?? false, clientCert: s.authorized });
  });
  server.on('tlsClientError', () => { /* refused handshakes: counted by nobody */ });
  let wss: WebSocketServer | null = null;
  if (o.ws) {
    wss = new WebSocketServer({ server });
    wss.on('connection', (ws) => {
      ws.on('error', () => {});
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    });
  }
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  return Object.assign(up, {
    port, url: `https://127.0.0.1:${port}`, conns, seen, wss,
    close: () => new Promise<void>((r) => {
      for (const c of wss?.clients ?? []) c.terminate();
      server.closeAllConnections();
      server.close(() => r());
    }),
  });
}

interface Answer { status: number; body: string; headers: http.IncomingHttpHeaders }

function request(port: number, path: string, opts: { method?: string; body?: Buffer; agent?: http.Agent } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: opts.method ?? 'GET', agent: opts.agent ?? false }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(parts).toString(), headers: res.headers }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

function codeOf(a: Answer): string | null {
  try {
    return JSON.parse(a.body).error?.code ?? null;
  } catch {
    return null;
  }
}

/** The gateway's error-log lines (stderr JSON) about one request id. */
function errorLines(gw: Gateway, rid: string): any[] {
  return gw.logs.map((l) => { try { return JSON.parse(l); } catch { return null; } })
    .filter((j) => j !== null && j.requestId === rid && j.level === 'error');
}

async function waitFor<T>(f: () => T | undefined | null | false, ms: number, what: string): Promise<T> {
  const deadline = performance.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const certs = new CertFactory();
let ca: CertFiles;
let otherCa: CertFiles;
let clientCert: CertFiles;
/** The upstreams, by case. */
let good: TlsUpstream; // 127.0.0.1 + localhost, private CA: most cases
let alt: TlsUpstream; // only "api.internal": servername cases
let expired: TlsUpstream;
let mtls: TlsUpstream;
let resume: TlsUpstream; // session resumption (its own connection count)
let keep: TlsUpstream; // keep-alive reuse (its own connection count)
let wsUp: TlsUpstream;
let health: TlsUpstream;
/** Accepts TCP and never answers the TLS handshake. */
let stall: net.Server;
let stallPort = 0;
const stalled: net.Socket[] = [];

function gatewayConfig(backend: 'uws' | 'node'): Record<string, any> {
  const caTls = { ca: ca.certFile };
  return baseConfig({
    server: { workers: 1, backend },
    admin: { enabled: true, port: 0 },
    upstreams: {
      privateCa: { targets: [good.url], tls: caTls },
      byName: { targets: [`https://localhost:${good.port}`], tls: caTls },
      wrongCa: { targets: [good.url], tls: { ca: otherCa.certFile } },
      systemCa: { targets: [good.url] },
      noVerify: { targets: [good.url], tls: { rejectUnauthorized: false } },
      sniOk: { targets: [alt.url], tls: { ca: ca.certFile, servername: 'api.internal' } },
      sniWrong: { targets: [alt.url], tls: { ca: ca.certFile, servername: 'other.internal' } },
      sniNone: { targets: [alt.url], tls: caTls },
      expired: { targets: [expired.url], tls: caTls },
      mtlsOk: { targets: [mtls.url], tls: { ca: ca.certFile, cert: clientCert.certFile, key: clientCert.keyFile } },
      mtlsNone: { targets: [mtls.url], tls: caTls },
      // Retried like a connect failure: the first try fails TLS, the second goes to the good target.
      retried: { targets: [`https://127.0.0.1:${expired.port}`, good.url], balance: 'round_robin', tls: caTls, retry: { attempts: 1, backoffMs: 1 } },
      resume: { targets: [resume.url], tls: caTls, pool: { maxConnections: 8 } },
      keep: { targets: [keep.url], tls: caTls },
      wss: { targets: [wsUp.url], tls: caTls },
      wssBad: { targets: [wsUp.url], tls: { ca: otherCa.certFile } },
      checked: { targets: [health.url], tls: caTls, healthCheck: { path: '/health', intervalMs: 200, timeoutMs: 200, healthyThreshold: 1, unhealthyThreshold: 1 } },
      checkedBad: { targets: [health.url], tls: { ca: otherCa.certFile }, healthCheck: { path: '/health-bad', intervalMs: 200, timeoutMs: 200, unhealthyThreshold: 1 } },
      stall: { targets: [`https://127.0.0.1:${stallPort}`], tls: caTls, timeouts: { connectMs: 300 } },
      // One failure opens it: a TLS failure counts against the target as a connect failure does.
      tripped: { targets: [expired.url], tls: caTls, breaker: { failureThreshold: 1, failureRate: 0, openMs: '1h', maxOpenMs: '1h' } },
    },
    routes: [
      ...['privateCa', 'byName', 'wrongCa', 'systemCa', 'noVerify', 'sniOk', 'sniWrong', 'sniNone', 'expired', 'mtlsOk', 'mtlsNone',
        'retried', 'resume', 'keep', 'checked', 'checkedBad', 'tripped', 'stall'].map((u) => ({ id: u, path: `/${u}/*`, upstream: u, rewrite: { stripPrefix: `/${u}` } })),
      { id: 'wss', path: '/wss/*', upstream: 'wss', websocket: { idleTimeoutMs: 0, pingIntervalMs: 0 } },
      { id: 'wssBad', path: '/wssbad/*', upstream: 'wssBad', websocket: { idleTimeoutMs: 0, pingIntervalMs: 0 } },
    ],
  });
}

beforeAll(async () => {
  ca = certs.ca();
  otherCa = certs.ca('Another CA');
  const leaf = certs.leaf({ names: ['127.0.0.1', 'localhost'], ca });
  clientCert = certs.leaf({ names: ['turnpike-client'], ca, usage: 'client' });
  [good, alt, expired, mtls, resume, keep, wsUp, health] = await Promise.all([
    startTlsUpstream({ cert: leaf }),
    startTlsUpstream({ cert: certs.leaf({ names: ['api.internal'], ca }) }),
    startTlsUpstream({ cert: certs.leaf({ names: ['127.0.0.1'], ca, expired: true }) }),
    startTlsUpstream({ cert: leaf, clientCa: ca }),
    startTlsUpstream({ cert: leaf }),
    startTlsUpstream({ cert: leaf }),
    startTlsUpstream({ cert: leaf, ws: true }),
    startTlsUpstream({ cert: leaf }),
  ]);
  stall = net.createServer((s) => { stalled.push(s); s.on('error', () => {}); });
  await new Promise<void>((r) => stall.listen(0, '127.0.0.1', () => r()));
  stallPort = (stall.address() as net.AddressInfo).port;
}, 30_000);

afterAll(async () => {
  await Promise.all([good, alt, expired, mtls, resume, keep, wsUp, health].map((u) => u?.close()));
  for (const s of stalled) s.destroy();
  stall?.close();
  certs.cleanup();
});

// Routes strip their prefix: the upstream sees /x for /<case>/x.
for (const backend of ['uws', 'node'] as const) {
  describe(`https:// upstreams, ${backend} backend`, () => {
    let gw: Gateway;
    beforeAll(async () => {
      for (const u of [resume, keep, good]) { u.conns.length = 0; u.seen.length = 0; }
      gw = await startGateway(gatewayConfig(backend));
    }, 30_000);
    afterAll(async () => {
      await gw?.stop();
    });

    it('a private CA (tls.ca): 200, the request over TLS with ALPN http/1.1; an IP target sends no SNI, a name target sends its name', async () => {
      const r = await request(gw.port, '/privateCa/x?y=1');
      expect(r.status).toBe(200);
      const j = JSON.parse(r.body);
      expect(j).toMatchObject({ method: 'GET', url: '/x?y=1' });
      // Host: the target's authority (port kept: it is not 443).
      expect(j.host).toBe(`127.0.0.1:${good.port}`);
      const named = await request(gw.port, '/byName/x');
      expect(named.status).toBe(200);
      const conns = good.conns;
      expect(conns.length).toBeGreaterThanOrEqual(2);
      expect(conns.every((c) => c.alpn === 'http/1.1')).toBe(true);
      // The IP target's connection carried no server name; the localhost one did.
      expect(conns.map((c) => c.servername)).toEqual(expect.arrayContaining([false, 'localhost']));
    });

    it('a certificate from another CA: 502 upstream_tls_failed, the reason and the target in the error log, not in the answer', async () => {
      const r = await request(gw.port, '/wrongCa/x');
      expect(r.status).toBe(502);
      expect(codeOf(r)).toBe('upstream_tls_failed');
      // The catalogue's message only: no TLS error, no target.
      expect(JSON.parse(r.body).error.message).toBe(Errors.UPSTREAM_TLS_FAILED.message);
      expect(r.body).not.toMatch(/UNABLE_TO|127\.0\.0\.1|verify/i);
      const rid = r.headers['x-request-id'] as string;
      const line = await waitFor(() => errorLines(gw, rid)[0], 3000, 'the error log line');
      expect(line).toMatchObject({
        msg: 'upstream TLS handshake failed', error: 'upstream_tls_failed', status: 502, phase: 'connect', upstream: 'wrongCa', target: good.url,
      });
      expect(line.detail).toMatch(/^TLS handshake: UNABLE_TO_VERIFY_LEAF_SIGNATURE: /);
    });

    it('no tls.ca (Node\'s bundled roots) against a private certificate: 502 upstream_tls_failed', async () => {
      const r = await request(gw.port, '/systemCa/x');
      expect(r.status).toBe(502);
      expect(codeOf(r)).toBe('upstream_tls_failed');
    });

    it('rejectUnauthorized: false accepts the untrusted certificate: 200', async () => {
      const r = await request(gw.port, '/noVerify/x');
      expect(r.status).toBe(200);
      expect(JSON.parse(r.body).url).toBe('/x');
    });

    it('servername: sent as SNI and checked against the certificate (a certificate for another name: ERR_TLS_CERT_ALTNAME_INVALID)', async () => {
      const ok = await request(gw.port, '/sniOk/x');
      expect(ok.status).toBe(200);
      expect(alt.conns.some((c) => c.servername === 'api.internal')).toBe(true);
      for (const path of ['/sniWrong/x', '/sniNone/x']) {
        const r = await request(gw.port, path);
        expect(r.status, path).toBe(502);
        expect(codeOf(r)).toBe('upstream_tls_failed');
        const line = await waitFor(() => errorLines(gw, r.headers['x-request-id'] as string)[0], 3000, 'the error log line');
        expect(line.detail).toMatch(/ERR_TLS_CERT_ALTNAME_INVALID/);
      }
    });

    it('an expired certificate: 502 upstream_tls_failed (CERT_HAS_EXPIRED)', async () => {
      const r = await request(gw.port, '/expired/x');
      expect(r.status).toBe(502);
      expect(codeOf(r)).toBe('upstream_tls_failed');
      const line = await waitFor(() => errorLines(gw, r.headers['x-request-id'] as string)[0], 3000, 'the error log line');
      expect(line.detail).toMatch(/CERT_HAS_EXPIRED/);
    });

    it('mTLS: a target requiring a client certificate answers with tls.cert/key (200) and refuses without (502 upstream_tls_failed)', async () => {
      const ok = await request(gw.port, '/mtlsOk/x', { method: 'POST', body: Buffer.from('hello') });
      expect(ok.status).toBe(200);
      expect(JSON.parse(ok.body)).toMatchObject({ method: 'POST', bodyLength: 5 });
      expect(mtls.conns.some((c) => c.clientCert)).toBe(true);
      const seenBefore = mtls.seen.length;
      const r = await request(gw.port, '/mtlsNone/x', { method: 'POST', body: Buffer.from('hello') });
      expect(r.status).toBe(502);
      expect(codeOf(r)).toBe('upstream_tls_failed');
      // The request never reached the service.
      expect(mtls.seen.length).toBe(seenBefore);
      // OpenSSL's reason, not its error-string tail (was "ERR_SSL_...: \n").
      const line = await waitFor(() => errorLines(gw, r.headers['x-request-id'] as string)[0], 3000, 'the error log line');
      expect(line.detail).toMatch(/^TLS handshake: ERR_SSL_\S+: \S.*(certificate|handshake)/);
      expect(line.detail).not.toMatch(/\n|:\s*$/);
    });

    it('a TLS handshake that never finishes: connectMs covers it (504 upstream_connect_timeout, the log says TCP was up)', async () => {
      const r = await request(gw.port, '/stall/x');
      expect(r.status).toBe(504);
      expect(codeOf(r)).toBe('upstream_connect_timeout');
      const line = await waitFor(() => errorLines(gw, r.headers['x-request-id'] as string)[0], 3000, 'the error log line');
      expect(line.detail).toBe('connect timeout (TCP connected, the TLS handshake did not finish)');
    });

    it('a TLS failure is retried as a connect failure (retry on connect_failure): the next target answers', async () => {
      // round_robin: the expired target first or second; every request ends 200 from the good one.
      for (let i = 0; i < 2; i++) {
        const r = await request(gw.port, '/retried/x');
        expect(r.status).toBe(200);
      }
    });

    it('a TLS failure counts against the target for its breaker: one failure opens it (503 circuit_open next)', async () => {
      const first = await request(gw.port, '/tripped/x');
      expect(codeOf(first)).toBe('upstream_tls_failed');
      const next = await request(gw.port, '/tripped/x');
      expect(next.status).toBe(503);
      expect(codeOf(next)).toBe('circuit_open');
    });

    it('keep-alive: sequential requests share one TLS connection', async () => {
      for (let i = 0; i < 5; i++) expect((await request(gw.port, `/keep/${i}`)).status).toBe(200);
      expect(keep.seen.map((s) => s.url)).toEqual(['/0', '/1', '/2', '/3', '/4']);
      expect(keep.conns).toHaveLength(1);
      expect(new Set(keep.seen.map((s) => s.conn))).toEqual(new Set([0]));
    });

    it('session resumption: new pooled connections resume the session the first one got', async () => {
      expect((await request(gw.port, '/resume/first')).status).toBe(200);
      // Parallel slow requests: the pool must open new connections for them.
      const rs = await Promise.all(Array.from({ length: 4 }, (_, i) => request(gw.port, `/resume/slow${i}`)));
      expect(rs.map((r) => r.status)).toEqual([200, 200, 200, 200]);
      expect(resume.conns.length).toBeGreaterThanOrEqual(4);
      expect(resume.conns[0]!.reused).toBe(false);
      expect(resume.conns.slice(1).map((c) => c.reused)).toEqual(resume.conns.slice(1).map(() => true));
    });

    it('a request body over TLS (1 MiB POST) arrives whole', async () => {
      const body = randomBytes(1024 * 1024);
      const r = await request(gw.port, '/privateCa/upload', { method: 'POST', body });
      expect(r.status).toBe(200);
      const j = JSON.parse(r.body);
      expect(j.bodyLength).toBe(body.length);
      expect(j.sha).toBe(createHash('sha256').update(body).digest('hex'));
    });

    it('8 MiB over TLS to a slow client (~1 s): every byte, in order', async () => {
      const { sha, bytes } = await new Promise<{ sha: string; bytes: number; tEnd: number }>((resolve, reject) => {
        const req = http.get({ host: '127.0.0.1', port: gw.port, path: '/privateCa/big', agent: false }, (res) => {
          expect(res.statusCode).toBe(200);
          const h = createHash('sha256');
          let n = 0;
          // ~64 KiB every 8 ms: ~1 s for 8 MiB.
          res.pause();
          const tick = setInterval(() => {
            let c: Buffer | null;
            let got = 0;
            while (got < 64 * 1024 && (c = res.read()) !== null) { h.update(c); n += c.length; got += c.length; }
          }, 8);
          res.on('end', () => { clearInterval(tick); resolve({ sha: h.digest('hex'), bytes: n }); });
          res.on('error', (e) => { clearInterval(tick); reject(e); });
        });
        req.on('error', reject);
      });
      expect(bytes).toBe(BIG_BYTES);
      expect(sha).toBe(BIG_SHA);
    });

    it('backpressure through the TLS socket: a client that reads nothing holds the upstream back (32 MiB response)', async () => {
      const { written, sha, bytes } = await new Promise<{ written: number; sha: string; bytes: number }>((resolve, reject) => {
        const req = http.get({ host: '127.0.0.1', port: gw.port, path: '/privateCa/stream', agent: false }, (res) => {
          res.pause();
          setTimeout(() => {
            // Socket buffers on the way (client, gateway, upstream) hold ~8 MiB here; a gateway that
            // kept reading would have taken all 32 MiB by now (~0.3 s over loopback TLS).
            const w = good.streamWritten;
            const h = createHash('sha256');
            let n = 0;
            res.on('data', (c: Buffer) => { h.update(c); n += c.length; });
            res.on('end', () => resolve({ written: w, sha: h.digest('hex'), bytes: n }));
            res.resume();
          }, 600);
          res.on('error', reject);
        });
        req.on('error', reject);
      });
      expect(written).toBeLessThan(20 * 1024 * 1024);
      expect(bytes).toBe(STREAM_BYTES);
      expect(sha).toBe(STREAM_SHA);
    });

    it('wss://: a WebSocket round trip through a TLS upstream', async () => {
      const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/wss/echo`);
      const got = await new Promise<string>((resolve, reject) => {
        ws.once('open', () => ws.send('ping over tls'));
        ws.once('message', (d) => resolve(d.toString()));
        ws.once('error', reject);
        ws.once('unexpected-response', (_q, res) => reject(new Error(`upgrade answered ${res.statusCode}`)));
      });
      expect(got).toBe('ping over tls');
      ws.close();
      expect(wsUp.conns.length).toBeGreaterThanOrEqual(1);
      expect(wsUp.seen.length).toBe(0); // the upgrade is not a plain request
    });

    it('wss:// with a certificate the gateway refuses: the upgrade answers 502 upstream_tls_failed, not 101', async () => {
      const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/wssbad/echo`);
      const res = await new Promise<{ status: number; body: string; rid: string }>((resolve, reject) => {
        ws.once('open', () => reject(new Error('upgraded')));
        ws.once('error', () => {});
        ws.once('unexpected-response', (_q, r) => {
          const parts: Buffer[] = [];
          r.on('data', (c: Buffer) => parts.push(c));
          r.on('end', () => resolve({ status: r.statusCode!, body: Buffer.concat(parts).toString(), rid: String(r.headers['x-request-id']) }));
        });
      });
      ws.terminate();
      expect(res.status).toBe(502);
      expect(JSON.parse(res.body).error.code).toBe('upstream_tls_failed');
      const line = await waitFor(() => errorLines(gw, res.rid)[0], 3000, 'the error log line');
      expect(line.detail).toMatch(/UNABLE_TO_VERIFY_LEAF_SIGNATURE/);
    });

    it('health checks over https: with the upstream\'s tls settings they pass (and reach the target decrypted); with a CA that refuses the certificate the target goes unhealthy', async () => {
      await waitFor(() => health.seen.some((s) => s.url === '/health' && s.ua === 'turnpike-health-check'), 5000, 'a health check over TLS');
      expect((await request(gw.port, '/checked/x')).status).toBe(200);
      // The refused certificate fails every check (none reaches the target); requests get 503 no_healthy_upstream once it is marked.
      let last: Answer | null = null;
      const deadline = performance.now() + 5000;
      while (performance.now() < deadline) {
        last = await request(gw.port, '/checkedBad/x');
        if (last.status === 503) break;
        expect(codeOf(last)).toBe('upstream_tls_failed');
        await new Promise((res) => setTimeout(res, 50));
      }
      expect(codeOf(last!)).toBe('no_healthy_upstream');
      expect(health.seen.some((s) => s.url === '/health-bad')).toBe(false);
      const warn = gw.logs.map((l) => { try { return JSON.parse(l); } catch { return null; } })
        .find((j) => j?.msg === 'upstream target unhealthy: no more requests are sent to it' && j.upstream === 'checkedBad');
      expect(warn?.detail).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
    });
  });
}
