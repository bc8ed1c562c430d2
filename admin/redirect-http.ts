/**
 * The plain-HTTP redirect listener (server.redirectHttp, issue 15): every
 * request is answered with a redirect to the same URL over https, as
 * nginx's `return 308 https://$host$request_uri;` server block does.
 *
 *   GET /a/b?c=d HTTP/1.1   Host: api.example.com:8080
 *   -> 308, Location: https://api.example.com[:<httpsPort>]/a/b?c=d
 *
 * - Path and query are kept byte for byte (an absolute-form target gives its
 *   path and query; `*` and CONNECT get 400). The host is the Host header's
 *   name without its port; a missing or malformed Host is a 400 bad_host
 *   (never echoed into Location unchecked: no header injection, RFC 3986
 *   reg-name / IP-literal characters only). The https port is
 *   redirectHttp.httpsPort (default server.port), left out when 443.
 * - With acmeChallengeDir, GET/HEAD /.well-known/acme-challenge/<token>
 *   serves the file <dir>/<token> (RFC 8555 8.3: the token is base64url, so
 *   nothing else is accepted: no path can leave the directory; a symbolic
 *   link, a FIFO or a file over 4 KiB is not served), 404 when absent.
 *   Turnpike has no ACME client: one run beside it writes there.
 * - No Strict-Transport-Security here: RFC 6797 7.2 forbids it over plain
 *   HTTP.
 *
 * node:http on the admin thread, not a data-plane worker: it is not hot
 * (one answer per client, then the client speaks https), it serves
 * HTTP/1.0 (which the bundled uWS build cannot), and it works the same
 * whatever server.backend is. Limits: node:http's 16 KiB of headers,
 * headers within 10 s, idle keep-alive closed after 5 s.
 */
import http from 'node:http';
import { constants as fsConstants } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { join } from 'node:path';
import type { GatewayConfig, RedirectHttpConfig } from '../common/config/types.js';
import { log } from '../common/log.js';

const ACME_PREFIX = '/.well-known/acme-challenge/';
/** RFC 8555 8.1: a token is base64url without padding (at least 128 bits: 22+ characters; longer allowed). */
const ACME_TOKEN = /^[A-Za-z0-9_-]{1,256}$/;
/** Host header: reg-name or IPv4 (RFC 3986 3.2.2), or an IP-literal, then an optional port. */
const HOST = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]{1,253})(?::(\d{1,5}))?$/;
/** Request-target characters allowed in Location as they are (RFC 3986 pchar, "/", "?", and "%"-escapes); anything else is escaped. */
const UNSAFE_TARGET = /[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]/g;

export interface RedirectSettings {
  status: number;
  /** The https port named in Location (443 is left out). */
  httpsPort: number;
  acmeChallengeDir: string | null;
}

function plain(res: http.ServerResponse, status: number, code: string, message: string): void {
  const body = JSON.stringify({ error: { code, message } });
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(body);
}

/** The path and query of a request target, or null for `*` and authority-form (RFC 9112 3.2). */
export function originForm(target: string): string | null {
  if (target.startsWith('/')) return target;
  const m = /^https?:\/\/[^/?#]*([^#]*)/i.exec(target);
  if (m === null) return null;
  const rest = m[1]!;
  return rest === '' ? '/' : rest.startsWith('?') ? `/${rest}` : rest;
}

/**
 * The Location for a request: `https://<host>[:port]<path?query>`, or a
 * string starting with "!" saying why there is none (for the 400).
 */
export function redirectLocation(hostHeader: string | undefined, target: string, httpsPort: number): string {
  if (hostHeader === undefined || hostHeader === '') return '!the request has no Host header; send Host: <name> so the gateway knows where to redirect';
  const m = hostHeader.length <= 261 ? HOST.exec(hostHeader) : null;
  if (m === null || (m[2] !== undefined && !(Number(m[2]) >= 1 && Number(m[2]) <= 65535))) return '!the Host header is not a host name or address with an optional port (1..65535); send Host: <name>[:port]';
  const path = originForm(target);
  if (path === null) return '!the request target must be a path (/...) or an absolute URL';
  const port = httpsPort === 443 ? '' : `:${httpsPort}`;
  return `https://${m[1]!.toLowerCase()}${port}${path.replace(UNSAFE_TARGET, (c) => encodeURIComponent(c))}`;
}

/** A key authorization is ~90 bytes (RFC 8555 8.1); a larger file is not one. */
const MAX_CHALLENGE_BYTES = 4096;

/**
 * A challenge file's bytes, or null: only a regular file, not a symbolic
 * link (O_NOFOLLOW: a link could name any file the gateway can read), not
 * a FIFO or device (O_NONBLOCK, then fstat: a FIFO would hold a thread of
 * the pool until a writer came), at most MAX_CHALLENGE_BYTES.
 */
async function readChallenge(path: string): Promise<Buffer | null> {
  let fh: FileHandle;
  try {
    fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
  } catch {
    return null;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile() || st.size > MAX_CHALLENGE_BYTES) return null;
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}

/** Serves redirectHttp for the admin thread: configure on every config, close on drain. */
export class RedirectListener {
  private server: http.Server | null = null;
  private bound: { host: string; port: number } | null = null;
  private settings: RedirectSettings | null = null;
  private chain: Promise<void> = Promise.resolve();

  /** The bound port, or null when not listening. */
  get port(): number | null {
    return this.server === null ? null : this.bound!.port;
  }

  /**
   * Starts, stops or updates the listener for `config`. Its address is
   * restart-only (common/config/diff.ts RESTART_ONLY); a listener added by
   * a reload that cannot bind logs an error and stays off. At the start a
   * bind failure rejects with a message saying what to change.
   */
  configure(config: GatewayConfig): Promise<void> {
    const next = this.chain.then(() => this.apply(config.server.redirectHttp, config.server.port));
    this.chain = next.catch(() => {});
    return next;
  }

  /** configure() for a reload: never rejects (a failure is logged). */
  reconfigure(config: GatewayConfig): void {
    this.configure(config).catch((err: Error) => log('error', 'the https redirect listener is off', { error: err.message }));
  }

  close(): Promise<void> {
    const next = this.chain.then(() => this.stop());
    this.chain = next.catch(() => {});
    return next;
  }

  private async apply(want: RedirectHttpConfig | null, serverPort: number): Promise<void> {
    if (want === null) {
      await this.stop();
      return;
    }
    this.settings = { status: want.status, httpsPort: want.httpsPort ?? serverPort, acmeChallengeDir: want.acmeChallengeDir };
    if (this.server !== null) return;
    // requireHostHeader off: a request without Host gets this listener's JSON 400 bad_host, not node's bare 400.
    // connectionsCheckingInterval: headersTimeout is enforced within 1 s (node's default check runs every 30 s).
    const server = http.createServer({ maxHeaderSize: 16_384, requireHostHeader: false, connectionsCheckingInterval: 1_000 }, (req, res) => this.handle(req, res));
    server.headersTimeout = 10_000;
    server.requestTimeout = 10_000;
    server.keepAliveTimeout = 5_000;
    server.on('clientError', (_err, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      else socket.destroy();
    });
    // node:http hands CONNECT to this event (no listener: the socket is closed without a word).
    server.on('connect', (_req, socket) => {
      const body = JSON.stringify({ error: { code: 'bad_request', message: 'CONNECT is not served here; this listener only redirects to https.' } });
      socket.end(`HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        reject(new Error(`the https redirect listener cannot listen on ${want.host}:${want.port} (${err.code ?? err.message}); change server.redirectHttp.port or free the port`));
      });
      server.listen(want.port, want.host, () => resolve());
    });
    const addr = server.address();
    this.server = server;
    this.bound = { host: want.host, port: typeof addr === 'object' && addr !== null ? addr.port : want.port };
    log('info', 'https redirect listener started', { host: want.host, port: this.bound.port, status: want.status });
  }

  private async stop(): Promise<void> {
    const s = this.server;
    if (s === null) return;
    this.server = null;
    this.bound = null;
    await new Promise<void>((resolve) => {
      s.close(() => resolve());
      s.closeAllConnections();
    });
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const settings = this.settings!;
    const target = req.url ?? '/';
    const method = req.method ?? 'GET';
    if (settings.acmeChallengeDir !== null && target.startsWith(ACME_PREFIX) && (method === 'GET' || method === 'HEAD')) {
      this.acme(settings.acmeChallengeDir, target.slice(ACME_PREFIX.length), res);
      return;
    }
    let hosts = 0;
    for (let i = 0; i < req.rawHeaders.length; i += 2) if (req.rawHeaders[i]!.length === 4 && req.rawHeaders[i]!.toLowerCase() === 'host') hosts++;
    if (hosts > 1) {
      plain(res, 400, 'bad_host', 'Cannot redirect to https: the request has more than one Host header (RFC 9112 3.2); send exactly one.');
      return;
    }
    const location = redirectLocation(req.headers.host, target, settings.httpsPort);
    if (location.startsWith('!')) {
      plain(res, 400, 'bad_host', `Cannot redirect to https: ${location.slice(1)}.`);
      return;
    }
    res.writeHead(settings.status, { location, 'content-length': 0, 'cache-control': 'no-store' });
    res.end();
  }

  private acme(dir: string, token: string, res: http.ServerResponse): void {
    const bare = token.split('?', 1)[0]!;
    if (!ACME_TOKEN.test(bare)) {
      plain(res, 404, 'not_found', 'No such ACME challenge token.');
      return;
    }
    readChallenge(join(dir, bare)).then((body) => {
      if (body === null) {
        plain(res, 404, 'not_found', 'No such ACME challenge token (the ACME client has not written it, or it was removed).');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length, 'cache-control': 'no-store' });
      res.end(body);
    }, () => plain(res, 404, 'not_found', 'No such ACME challenge token.'));
  }
}
