/**
 * The node App's WebSocket side (workers/transport/node/app.ts ws(),
 * res.upgrade; node/websocket.ts): the uWS behavior contract the gateway's
 * hub and tunnels rely on, without the gateway. Real `ws` clients and raw
 * sockets on 127.0.0.1.
 *
 * The upgrade handler here answers asynchronously (as the tunnel does after
 * the upstream's 101): `/now` upgrades at once, `/later` after 50 ms, `/refuse`
 * answers 403, `/yield` passes the request to the HTTP handler.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { NodeApp, nodeUws, type NodeListenSocket, type NodeRequest, type NodeResponse } from '../../../workers/transport/node/app.js';
import { SEND_BACKPRESSURE, SEND_SUCCESS, type NodeWebSocket } from '../../../workers/transport/node/websocket.js';

interface Data { path: string }

let app: NodeApp;
let port = 0;
let ls: NodeListenSocket;
/** Open server-side WebSockets, by path. */
const open = new Map<string, NodeWebSocket>();
/** What the behavior saw: messages (text as received) and closes (code:reason). */
const events: string[] = [];

function makeApp(compression: number = nodeUws.DISABLED, maxPayloadLength = 1024): NodeApp {
  const a = nodeUws.App();
  a.any('/*', (res: NodeResponse, req: NodeRequest) => {
    res.end('http:' + req.getUrl());
  });
  a.ws('/*', {
    maxPayloadLength,
    compression,
    upgrade: (res: NodeResponse, req: NodeRequest, context: unknown) => {
      const path = req.getUrl();
      if (path === '/yield') {
        req.setYield(true);
        return;
      }
      const key = req.getHeader('sec-websocket-key');
      const ext = req.getHeader('sec-websocket-extensions');
      const protocol = req.getHeader('sec-websocket-protocol').split(',')[0]!.trim();
      let aborted = false;
      res.onAborted(() => { aborted = true; });
      const go = (): void => {
        if (aborted) return;
        if (path === '/refuse') {
          res.cork(() => res.writeStatus('403 Forbidden').end('no'));
          return;
        }
        res.cork(() => {
          res.writeStatus('101 Switching Protocols');
          res.writeHeader('x-policy', 'yes');
          res.upgrade({ path } satisfies Data, key, protocol, ext, context);
        });
      };
      if (path === '/later' || path === '/refuse') setTimeout(go, 50);
      else go();
    },
    open: (ws: NodeWebSocket) => {
      open.set((ws.getUserData() as Data).path, ws);
    },
    message: (ws: NodeWebSocket, ab: ArrayBuffer, isBinary: boolean) => {
      const text = Buffer.from(ab).toString();
      events.push(`${(ws.getUserData() as Data).path}:${isBinary ? 'bin' : 'text'}:${text}`);
      if (text === 'end') ws.end(4100, 'asked');
      else ws.send(Buffer.from('echo:' + text), isBinary, true); // compressed where negotiated
    },
    close: (ws: NodeWebSocket, code: number, message: ArrayBuffer) => {
      const path = (ws.getUserData() as Data).path;
      open.delete(path);
      events.push(`${path}:close:${code}:${Buffer.from(message).toString()}`);
    },
  });
  return a;
}

beforeAll(async () => {
  app = makeApp();
  await new Promise<void>((resolve, reject) => app.listen('127.0.0.1', 0, (s) => {
    if (s === false) return reject(new Error('listen failed'));
    ls = s;
    port = s.port;
    resolve();
  }));
});

afterAll(() => {
  app.close();
});

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function connect(path: string, protocols: string[] = [], p = port): Promise<{ ws: WebSocket; headers: Record<string, string | string[] | undefined>; got: string[]; closed: Promise<string> }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${p}${path}`, protocols);
    const got: string[] = [];
    let headers: Record<string, string | string[] | undefined> = {};
    ws.on('upgrade', (r) => { headers = r.headers; });
    ws.on('message', (d) => got.push(d.toString()));
    const closed = new Promise<string>((r) => ws.on('close', (code, reason) => r(`${code}:${reason.toString()}`)));
    ws.on('open', () => resolve({ ws, headers, got, closed }));
    ws.on('error', reject);
    ws.on('unexpected-response', (_q, res) => reject(new Error(`status ${res.statusCode}`)));
  });
}

describe('node App WebSockets', () => {
  it('upgrades when res.upgrade is called later, with the headers written before and the chosen subprotocol; relays both ways', async () => {
    const c = await connect('/later', ['p1', 'p2']);
    expect(c.ws.protocol).toBe('p1');
    expect(c.headers['x-policy']).toBe('yes');
    c.ws.send('hi');
    c.ws.send(Buffer.from([1, 2]));
    await until(() => c.got.length === 2, 'two echoes');
    expect(c.got[0]).toBe('echo:hi');
    expect(events).toContain('/later:text:hi');
    expect(events).toContain('/later:bin:\x01\x02');
    c.ws.close(4000, 'client');
    await until(() => events.includes('/later:close:4000:client'), 'the close callback');
    expect(await c.closed).toBe('4000:client');
  });

  it('counts the connection while it is a WebSocket, and no more once it closed', async () => {
    await until(() => app.connections === 0, 'no connection left');
    const c = await connect('/now');
    expect(app.connections).toBe(1);
    await until(() => open.has('/now'), 'open');
    const w = open.get('/now')!;
    // end(): a Close frame with the code and reason; the close callback follows once the connection is gone.
    w.end(4100, 'server says bye');
    expect(await c.closed).toBe('4100:server says bye');
    await until(() => app.connections === 0, 'the connection to be forgotten');
    // (The client's answer echoes the code and reason: what the close callback gets, as uWS's gets what end() sent.)
    expect(events).toContain('/now:close:4100:server says bye');
  });

  it('send() reports backpressure as uWS does (1 taken, 0 waiting), getBufferedAmount agrees, drain comes', async () => {
    const c = await connect('/bp');
    await until(() => open.has('/bp'), 'open');
    const w = open.get('/bp')!;
    expect(w.send(Buffer.from('small'), false)).toBe(SEND_SUCCESS);
    (c.ws as any)._socket.pause(); // the client stops reading
    let r = SEND_SUCCESS;
    const big = Buffer.alloc(256 * 1024, 1);
    for (let i = 0; i < 64 && r === SEND_SUCCESS; i++) r = w.send(big, true);
    expect(r).toBe(SEND_BACKPRESSURE);
    expect(w.getBufferedAmount()).toBeGreaterThan(0);
    (c.ws as any)._socket.resume();
    await until(() => w.getBufferedAmount() === 0, 'the socket to drain');
    c.ws.terminate();
    await until(() => !open.has('/bp'), 'the close callback (1006)');
    expect(events).toContain('/bp:close:1006:');
  });

  it('pause() stops delivering the client\'s messages until resume()', async () => {
    const c = await connect('/pause');
    await until(() => open.has('/pause'), 'open');
    const w = open.get('/pause')!;
    w.pause();
    c.ws.send('while paused');
    await new Promise((r) => setTimeout(r, 100));
    expect(events).not.toContain('/pause:text:while paused');
    w.resume();
    await until(() => events.includes('/pause:text:while paused'), 'the message after resume');
    c.ws.close();
  });

  it('a handshake answered with an error, or yielded, stays HTTP: keep-alive, the next request is parsed', async () => {
    const key = Buffer.from('0123456789abcdef').toString('base64');
    const hs = (path: string) => `GET ${path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`;
    const out = await new Promise<string>((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => s.write(hs('/refuse') + hs('/yield') + 'GET /plain HTTP/1.1\r\nHost: t\r\n\r\n'));
      let text = '';
      s.on('data', (d) => {
        text += d.toString('latin1');
        if (text.includes('http:/plain')) {
          s.destroy();
          resolve(text);
        }
      });
      s.on('error', reject);
      setTimeout(() => { s.destroy(); reject(new Error(`no third answer: ${JSON.stringify(text)}`)); }, 5000).unref();
    });
    expect(out).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(out).toContain('http:/yield');
    expect(out).not.toContain('101');
  });

  it('a key ws would refuse is not a handshake: the HTTP handler gets the request', async () => {
    const out = await new Promise<string>((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => s.write('GET /badkey HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: not-base64-of-16-bytes!!\r\nSec-WebSocket-Version: 13\r\n\r\n'));
      let text = '';
      s.on('data', (d) => {
        text += d;
        if (text.includes('http:/badkey')) {
          s.destroy();
          resolve(text);
        }
      });
      s.on('error', reject);
      setTimeout(() => { s.destroy(); reject(new Error(`no answer: ${JSON.stringify(text)}`)); }, 5000).unref();
    });
    expect(out).toMatch(/^HTTP\/1\.1 200 OK/);
  });

  it('a message over maxPayloadLength closes with 1009', async () => {
    const c = await connect('/big');
    c.ws.send(Buffer.alloc(2000, 7));
    expect((await c.closed).split(':')[0]).toBe('1009');
  });

  it('close() of the app lets an open WebSocket\'s Close frame out before its socket goes', async () => {
    const a = makeApp();
    const p = await new Promise<number>((resolve, reject) => a.listen('127.0.0.1', 0, (s) => (s === false ? reject(new Error('listen')) : resolve(s.port))));
    const c = await connect('/shutdown', [], p);
    await until(() => open.has('/shutdown'), 'open');
    // What the hub does on shutdown (closeAll: 1001), then the server's close.
    open.get('/shutdown')!.end(1001, 'server shutting down');
    a.close();
    // Not dropped at once: its Close handshake may finish (WS_CLOSE_GRACE_MS at most).
    expect(a.connections).toBe(1);
    expect(await c.closed).toBe('1001:server shutting down');
    await until(() => a.connections === 0, 'the connection to be gone');
  });
});

describe('node App WebSockets with compression (uWS SHARED_COMPRESSOR)', () => {
  let z: NodeApp;
  let zPort = 0;
  beforeAll(async () => {
    z = makeApp(nodeUws.SHARED_COMPRESSOR, 64 * 1024);
    zPort = await new Promise<number>((resolve, reject) => z.listen('127.0.0.1', 0, (s) => (s === false ? reject(new Error('listen')) : resolve(s.port))));
  });
  afterAll(() => z.close());

  it('negotiates permessage-deflate without context takeover, and relays compressed messages', async () => {
    const c = await connect('/z', [], zPort);
    let rsv1 = false;
    // The echo is compressed (RSV1 on its first frame byte): seen on the client's socket before ws inflates it.
    (c.ws as any)._socket.prependListener('data', (d: Buffer) => { if ((d[0]! & 0x40) !== 0) rsv1 = true; });
    expect(c.ws.extensions).toBe('permessage-deflate');
    expect(c.headers['sec-websocket-extensions']).toBe('permessage-deflate; server_no_context_takeover; client_no_context_takeover');
    const big = 'x'.repeat(4000);
    c.ws.send(big);
    await until(() => c.got.length === 1, 'the echo');
    expect(c.got[0]).toBe('echo:' + big);
    expect(rsv1).toBe(true);
    c.ws.close();
  });

  it('an extension offer ws cannot accept is dropped (no compression), never a 400', async () => {
    const key = Buffer.from('0123456789abcdef').toString('base64');
    const head = await new Promise<string>((resolve, reject) => {
      const s = net.connect(zPort, '127.0.0.1', () => s.write(`GET /z2 HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=99\r\n\r\n`));
      let text = '';
      s.on('data', (d) => {
        text += d;
        if (text.includes('\r\n\r\n')) {
          s.destroy();
          resolve(text);
        }
      });
      s.on('error', reject);
      setTimeout(() => { s.destroy(); reject(new Error('no answer')); }, 5000).unref();
    });
    expect(head).toMatch(/^HTTP\/1\.1 101 /);
    expect(head.toLowerCase()).not.toContain('sec-websocket-extensions');
  });
});

void ls;
