/** Real upstream servers for tests: node:http (node:https with `tls`), and raw TCP for framing cases. */
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';

export interface Upstream {
  port: number;
  url: string;
  /** Requests seen, in order. */
  seen: { method: string; url: string; headers: http.IncomingHttpHeaders; rawHeaders: string[]; body: Buffer }[];
  close(): Promise<void>;
}

export type Handler = (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => void;

/**
 * Echo server by default: answers JSON describing the request. With `tls`
 * (a certificate and key, e.g. test/helpers/certs.ts): an https server,
 * its url https://127.0.0.1:<port>.
 */
export async function startUpstream(handler?: Handler, tls?: { certPem: string; keyPem: string }): Promise<Upstream> {
  const seen: Upstream['seen'] = [];
  const listener: http.RequestListener = (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, rawHeaders: req.rawHeaders, body });
      if (handler) return handler(req, res, body);
      const out = JSON.stringify({ method: req.method, url: req.url, headers: req.headers, rawHeaders: req.rawHeaders, bodyLength: body.length });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(out);
    });
  };
  const server = tls === undefined ? http.createServer(listener) : https.createServer({ cert: tls.certPem, key: tls.keyPem }, listener);
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port, url: `${tls === undefined ? 'http' : 'https'}://127.0.0.1:${port}`, seen,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

/**
 * Raw TCP upstream: `respond` gets the request head text and the socket and
 * writes whatever bytes the test wants (bad framing, early close...).
 */
export async function startRawUpstream(respond: (head: string, socket: net.Socket) => void): Promise<Upstream & { connections: number }> {
  const seen: Upstream['seen'] = [];
  const sockets = new Set<net.Socket>();
  const state = { connections: 0 };
  const server = net.createServer((socket) => {
    state.connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let buf = '';
    socket.on('data', (d) => {
      buf += d.toString('latin1');
      const end = buf.indexOf('\r\n\r\n');
      if (end === -1) return;
      const head = buf.slice(0, end);
      buf = buf.slice(end + 4);
      const [reqLine] = head.split('\r\n');
      const [method, url] = reqLine!.split(' ');
      seen.push({ method: method!, url: url!, headers: {}, rawHeaders: head.split('\r\n').slice(1), body: Buffer.alloc(0) });
      respond(head, socket);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port, url: `http://127.0.0.1:${port}`, seen,
    get connections() { return state.connections; },
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

/** Sends raw bytes to host:port and collects everything until close or timeout. */
export function rawRequest(port: number, data: string | Buffer, waitMs = 1500): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let text = '';
    let closed = false;
    s.on('data', (d) => { text += d.toString('latin1'); });
    s.on('error', () => {});
    s.on('close', () => { closed = true; clearTimeout(t); resolve({ text, closed }); });
    s.write(data);
    const t = setTimeout(() => { s.destroy(); resolve({ text, closed }); }, waitMs);
  });
}

/** The body of a raw HTTP/1.1 response text, de-chunked when it is chunked. */
export function rawBody(text: string): string {
  const i = text.indexOf('\r\n\r\n');
  const head = text.slice(0, i).toLowerCase();
  let body = text.slice(i + 4);
  if (!head.includes('transfer-encoding: chunked')) return body;
  let out = '';
  for (;;) {
    const nl = body.indexOf('\r\n');
    const size = parseInt(body.slice(0, nl), 16);
    if (!(size > 0)) return out;
    out += body.slice(nl + 2, nl + 2 + size);
    body = body.slice(nl + 2 + size + 2);
  }
}
