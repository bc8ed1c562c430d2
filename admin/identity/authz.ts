/**
 * The nginx auth_request listener (issue 12; README, "nginx auth_request
 * mode"): with `authz: {host, port}` set, the admin thread serves
 *
 *   <any method> /authz     the decision a worker would take on the request
 *                           nginx describes in X-Original-* headers
 *
 * for nginx's `auth_request` (https://nginx.org/en/docs/http/ngx_http_auth_request_module.html):
 * 2xx lets the request through, 401 and 403 are passed to the client
 * (401 with our WWW-Authenticate), anything else is an nginx 500.
 *
 * Input (the subrequest's headers; nginx passes the client's headers on by
 * default, so the credential headers arrive as the client sent them):
 *   X-Original-URI     path and query as the client sent them ($request_uri)   required
 *   X-Original-Method  the client's method ($request_method)                   required
 *   X-Original-Host    the client's host ($host)                               required
 *   X-Real-IP          the client's address ($remote_addr)                     required
 *   Authorization, X-API-Key, ...  as identity.keys.sources say; a
 *                      `query:<name>` source reads X-Original-URI's query
 *   Origin, Referer    for keys restricted to origins
 *   <requestIdHeader>  kept as the request id when safe, else one is made
 * A missing, repeated or malformed X-Original-* or X-Real-IP header is a
 * 400 bad_request whose message names the header and the nginx line that
 * sends it. X-Real-IP is required, not defaulted to the peer (nginx): an
 * nginx without `proxy_set_header X-Real-IP` passes the client's own
 * X-Real-IP on, so that a defaulted header would let a client choose its
 * address; required, such an nginx answers 500 to every ordinary request
 * (fails closed, and visibly). The listener cannot tell a client's X-Real-IP
 * from nginx's when it is the only one: the proxy_set_header lines are what
 * make these headers trustworthy (README).
 * The other headers reach the auth policy one entry per line as received
 * (rawHeaders, never joined), so a credential header sent twice is seen as
 * such, as in a worker.
 *
 * Decision, exactly as a worker's (workers/transport/uws-server.ts): the
 * path is normalised (normalizePath: 400 bad_path), the host checked
 * (400 bad_host) and normalised, a Router compiled from config.routes
 * (rebuilt on every config) finds the route: none 404 route_not_found,
 * method not allowed 405 (with Allow); a route without `auth` 200; else the
 * route's AuthPolicy (workers/policies/auth) runs on a RequestContext made
 * from the subrequest. Its IdentityClient is this listener's own, on a
 * MessageChannel whose other end the IdentityService serves like a worker
 * line (index AUTHZ_LINE): the same caches, negative cache, coalescing and
 * revocation broadcasts as a worker. Only the auth decision is taken here:
 * rate limits and the rest of the route's policies are not run.
 *
 * Output:
 *   200  empty body; the consumer headers (identity.headers: X-Consumer-Id,
 *        X-Consumer-Name, X-Route-Id) and, for a rotated key in its grace
 *        period, Deprecation and Sunset: read them in nginx with
 *        auth_request_set $x $upstream_http_x_consumer_id;
 *   4xx/5xx  the gateway's JSON error {"error":{"code","message","requestId"}}
 *        (common/errors.ts) with its headers (WWW-Authenticate, Retry-After).
 *        503 identity_store_unavailable (store down, key never seen) becomes
 *        an nginx 500: nginx knows only 2xx, 401 and 403.
 * Every answer has Content-Length and Cache-Control: no-store, and the
 * request id header.
 *
 * node:http, not uWS: nginx sends subrequests as HTTP/1.0 unless
 * `proxy_http_version 1.1` is set, and the bundled uWS build cannot serve
 * HTTP/1.0 at all (shared/ENVIRONMENT.md). node:http answers 1.0 and 1.1,
 * keeps 1.1 connections (and 1.0 ones that ask for it) alive, and closes the
 * others after the answer. Nothing here is the hot path of the gateway.
 * Hostile input cannot crash it: node:http refuses heads larger than
 * AUTHZ_MAX_HEADER_BYTES (431) and malformed ones (400), and every handler
 * error is a 500 internal_error, logged.
 */
import http from 'node:http';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import type { AuthzConfig, GatewayConfig } from '../../common/config/types.js';
import { Errors, errorBody, errorBodyWith, type GatewayErrorDef } from '../../common/errors.js';
import { log } from '../../common/log.js';
import { MAX_WORKERS } from '../../common/protocol.js';
import { AuthPolicy } from '../../workers/policies/auth/index.js';
import { IdentityClient } from '../../workers/policies/auth/client.js';
import { CONTINUE, REFUSED, RequestContext, type DecisionWaiter, type PendingDecision, type Policy, type PolicyOutcome } from '../../workers/pipeline/context.js';
import { compileRouter } from '../../workers/router/compile.js';
import { isValidHost, normalizeHost, normalizePath } from '../../workers/router/normalize.js';
import { MATCH_FOUND, type Router } from '../../workers/router/types.js';
import { isSafeRequestId } from '../../workers/proxy/headers.js';

/** The one path served; anything else is 404 not_found. */
export const AUTHZ_PATH = '/authz';
/**
 * The IdentityService line index of this listener: past every worker index
 * (0..MAX_WORKERS-1), so it never replaces a worker's line and is served,
 * broadcast to and closed like one.
 */
export const AUTHZ_LINE = MAX_WORKERS;
/** Largest request head node:http accepts here (bytes); past it, 431. A client's headers pass through nginx into the subrequest. */
export const AUTHZ_MAX_HEADER_BYTES = 65_536; // 64 KiB
/** Idle keep-alive connections are closed after this long (ms); nginx's `keepalive_timeout` to an upstream is 60 s by default, so an upstream keepalive pool reconnects. */
export const AUTHZ_KEEP_ALIVE_MS = 65_000;
/** A request head must arrive within this long (ms), or the connection is closed (slow-loris guard). */
export const AUTHZ_HEADERS_TIMEOUT_MS = 10_000;
/** Longest method token taken from X-Original-Method. */
export const AUTHZ_MAX_METHOD_LENGTH = 32;

/** What the listener needs of the IdentityService (admin/identity/service.ts). */
export interface AuthzIdentityLines {
  attach(index: number, port: MessagePort): void;
  detach(index: number): void;
}

export interface AuthzOptions {
  service: AuthzIdentityLines;
  /** The shared clock (common/rate-limit-layout.ts), ms: what a worker's ctx.now is. */
  now: () => number;
}

/** A route as the listener sees it: its id and its auth policy (as a pipeline of one), or null when public. */
interface AuthzRoute {
  id: string;
  policies: readonly Policy[] | null;
}

const TOKEN_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const JSON_TYPE = 'application/json';

/** How a header is missing or wrong, and the nginx line that fixes it. */
const NGINX_LINE: Readonly<Record<string, string>> = {
  'x-original-uri': 'proxy_set_header X-Original-URI $request_uri;',
  'x-original-method': 'proxy_set_header X-Original-Method $request_method;',
  'x-original-host': 'proxy_set_header X-Original-Host $host;',
  'x-real-ip': 'proxy_set_header X-Real-IP $remote_addr;',
};

/** A listening server and the port it got. */
interface BoundServer {
  server: http.Server;
  port: number;
}

/** The auth_request listener; see the module comment. One per admin thread. */
export class AuthzListener {
  private server: http.Server | null = null;
  /** What the running server was started for. */
  private bound: AuthzConfig | null = null;
  private boundPort = 0;
  private router: Router<AuthzRoute> | null = null;
  private config: GatewayConfig | null = null;
  private client: IdentityClient | null = null;
  private line: MessagePort | null = null;
  /** Shared by every request: ctx.run is synchronous, and a pending decision copies what it needs. */
  private readonly ctx = new RequestContext();
  private readonly ridPrefix = 'authz-' + randomBytes(4).toString('hex') + '-';
  private ridCounter = 0;
  /** Serialises configure/close: a reload that rebinds waits for the previous one. */
  private chain: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(private readonly opts: AuthzOptions) {}

  /** The bound port, or null when not listening. */
  get port(): number | null {
    return this.server === null ? null : this.boundPort;
  }

  /**
   * Applies `config`: starts the listener when `authz` is set, stops it when
   * not, rebinds when host or port changed (port 0 keeps the port it got),
   * and rebuilds the routes either way. Resolves once listening (or
   * stopped). A move binds the new address first and closes the old
   * listener only once that worked; when the new address cannot be bound,
   * the old listener keeps serving (with the new routes), an error saying
   * so is logged, and this resolves. With no listener running (the start),
   * an address that cannot be bound rejects with a message saying what to
   * change.
   */
  configure(config: GatewayConfig): Promise<void> {
    const next = this.chain.then(() => this.apply(config));
    this.chain = next.catch(() => {});
    return next;
  }

  /** configure() for a reload: never thrown; a failure is logged (a move that cannot bind keeps the old listener: see configure). */
  reconfigure(config: GatewayConfig): void {
    this.configure(config).catch((err: Error) => log('error', 'auth_request listener is off', { error: err.message }));
  }

  /** Stops listening (open connections are closed, decisions in flight dropped), drops the identity line. Idempotent. */
  close(): Promise<void> {
    this.closed = true;
    const next = this.chain.then(() => this.stop());
    this.chain = next.catch(() => {});
    return next;
  }

  private async apply(config: GatewayConfig): Promise<void> {
    if (this.closed) return;
    const want = config.authz;
    if (want === null) {
      this.config = config;
      await this.stop();
      return;
    }
    this.rebuild(config);
    this.ensureClient().configure(config.identity);
    const b = this.bound;
    if (this.server !== null && b !== null && b.host === want.host && (want.port === 0 || want.port === b.port || want.port === this.boundPort)) {
      this.bound = want;
      return;
    }
    if (this.server === null) {
      this.adopt(await this.listen(want), want);
      return;
    }
    // A move: the new address first, so that nginx never meets a closed port
    // because of a reload that could not bind.
    const oldHost = b?.host ?? want.host;
    const oldPort = this.boundPort;
    let moved: BoundServer;
    try {
      moved = await this.listen(want);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'EADDRINUSE' && want.port === oldPort && want.host !== oldHost) {
        // Same port, another host: our own socket may be what holds it (a
        // wildcard and a specific address of one port conflict). Close ours,
        // bind the new one; should that fail too, take the old one back.
        await this.stopServer();
        try {
          this.adopt(await this.listen(want), want);
          return;
        } catch (again) {
          try {
            this.adopt(await this.listen({ host: oldHost, port: oldPort }), b!);
          } catch {
            throw again; // the listener is off: reconfigure logs it
          }
          this.keptOld(want, oldHost, oldPort, again as Error);
          return;
        }
      }
      this.keptOld(want, oldHost, oldPort, err as Error);
      return;
    }
    await this.stopServer();
    this.adopt(moved, want);
  }

  /** The error log of a move that could not bind: what failed, what still serves, what to do. */
  private keptOld(want: AuthzConfig, oldHost: string, oldPort: number, err: Error & { code?: string }): void {
    log('error', `auth_request listener could not move: the new port cannot be bound; it keeps serving on ${oldHost}:${oldPort} (with the new routes). Free ${want.host}:${want.port} or choose another authz.port, then reload`, {
      host: want.host, port: want.port, keptHost: oldHost, keptPort: oldPort, error: err.code ?? err.message,
    });
  }

  /** Routes and policies of `config` (a config the workers took compiles here too; if not, the old routes stay and the log says why). */
  private rebuild(config: GatewayConfig): void {
    try {
      const client = this.ensureClient();
      const env = { client, identity: config.identity, metrics: null, trusted: null, laterGuardMs: 0 };
      this.router = compileRouter(config.routes.map((r) => ({
        id: r.id, host: r.host, path: r.path, methods: r.methods, priority: r.priority, match: r.match,
        data: { id: r.id, policies: r.auth === null ? null : [new AuthPolicy(r.auth, r.id, env)] } satisfies AuthzRoute,
      })));
      this.config = config;
    } catch (err) {
      log('error', 'auth_request listener kept its previous routes: the new ones did not compile', { error: (err as Error).message });
      if (this.config === null) throw err;
    }
  }

  private ensureClient(): IdentityClient {
    if (this.client !== null) return this.client;
    const ch = new MessageChannel();
    const client = new IdentityClient();
    client.attach(ch.port1);
    this.opts.service.attach(AUTHZ_LINE, ch.port2);
    this.client = client;
    this.line = ch.port1;
    return client;
  }

  /** A server listening on `want`; rejects (with the errno's `code`) with a message saying what to change. */
  private listen(want: AuthzConfig): Promise<BoundServer> {
    const server = http.createServer({
      maxHeaderSize: AUTHZ_MAX_HEADER_BYTES,
      keepAliveTimeout: AUTHZ_KEEP_ALIVE_MS,
      headersTimeout: AUTHZ_HEADERS_TIMEOUT_MS,
      requestTimeout: AUTHZ_HEADERS_TIMEOUT_MS * 2,
    }, (req, res) => this.onRequest(req, res));
    return new Promise<BoundServer>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => {
        const e = new Error(`the auth_request listener cannot listen on ${want.host}:${want.port} (${err.code ?? err.message}); change authz.port (or authz.host), or remove authz`);
        (e as Error & { code?: string }).code = err.code;
        reject(e);
      };
      server.once('error', onError);
      server.listen(want.port, want.host, () => {
        server.off('error', onError);
        server.on('error', (err) => log('error', 'auth_request listener error', { error: err.message }));
        const addr = server.address();
        resolve({ server, port: typeof addr === 'object' && addr !== null ? addr.port : want.port });
      });
    });
  }

  /** Makes `s` the running listener (the previous one must be stopped already). */
  private adopt(s: BoundServer, want: AuthzConfig): void {
    this.server = s.server;
    this.boundPort = s.port;
    this.bound = want;
    log('info', 'auth_request listener started', { host: want.host, port: s.port });
  }

  private stopServer(): Promise<void> {
    const s = this.server;
    this.server = null;
    this.bound = null;
    if (s === null) return Promise.resolve();
    return new Promise<void>((resolve) => {
      s.close(() => resolve());
      s.closeAllConnections();
      log('info', 'auth_request listener stopped', { port: this.boundPort });
    });
  }

  private async stop(): Promise<void> {
    await this.stopServer();
    const c = this.client;
    this.client = null;
    if (c !== null) {
      c.close(); // waiting lookups settle unavailable: their requests are gone with the connections anyway
      this.opts.service.detach(AUTHZ_LINE);
      this.line?.close();
      this.line = null;
    }
  }

  // ------------------------------------------------------------------ requests

  private nextRequestId(): string {
    return this.ridPrefix + (++this.ridCounter).toString(36);
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    req.resume(); // a body (nginx sends none) is read and dropped
    const config = this.config;
    let rid = '';
    try {
      const ridName = config?.server.requestIdHeader ?? 'x-request-id';
      const raw = req.rawHeaders;
      // Flat [name, value, ...], names lowercase, one entry per header line
      // as received (rawHeaders: never joined, so the auth policy sees a
      // credential header sent twice), as a worker's RequestContext has them.
      const hdrs: string[] = [];
      let uriLines = 0;
      let methodLines = 0;
      let hostLines = 0;
      let ipLines = 0;
      for (let i = 0; i < raw.length; i += 2) {
        const name = raw[i]!.toLowerCase();
        if (name === 'host') continue; // the subrequest's own: X-Original-Host stands for it
        if (name === 'x-original-uri') uriLines++;
        else if (name === 'x-original-method') methodLines++;
        else if (name === 'x-original-host') hostLines++;
        else if (name === 'x-real-ip') ipLines++;
        hdrs.push(name, raw[i + 1]!);
      }
      const last = (name: string): string | null => {
        for (let i = hdrs.length - 2; i >= 0; i -= 2) if (hdrs[i] === name) return hdrs[i + 1]!;
        return null;
      };
      const incomingRid = last(ridName);
      rid = incomingRid !== null && isSafeRequestId(incomingRid) ? incomingRid : this.nextRequestId();

      const url = req.url ?? '/';
      const q = url.indexOf('?');
      if ((q === -1 ? url : url.slice(0, q)) !== AUTHZ_PATH) {
        this.send(res, 404, rid, ridName, JSON.stringify({ error: { code: 'not_found', message: `The auth_request listener answers only ${AUTHZ_PATH}; point nginx's auth location at http://<authz.host>:<authz.port>${AUTHZ_PATH}.`, requestId: rid } }), null);
        return;
      }
      if (config === null || this.router === null) {
        this.refuse(res, rid, ridName, Errors.SHUTTING_DOWN, null, null);
        return;
      }

      // --- the original request, as nginx describes it: each header exactly
      // once (proxy_set_header replaces the client's lines; more than one
      // means the client's own reached us, or nginx sets it twice).
      const uri = last('x-original-uri');
      const method = last('x-original-method');
      const originalHost = last('x-original-host');
      const realIp = last('x-real-ip');
      if (uri === null || uri === '') return this.missing(res, rid, ridName, 'x-original-uri', 'X-Original-URI', 'the path and query the client asked for');
      if (method === null || method === '') return this.missing(res, rid, ridName, 'x-original-method', 'X-Original-Method', 'the client\'s method');
      if (originalHost === null) return this.missing(res, rid, ridName, 'x-original-host', 'X-Original-Host', 'the host the client asked for');
      if (realIp === null || realIp.trim() === '') return this.missing(res, rid, ridName, 'x-real-ip', 'X-Real-IP', 'the client\'s address, for keys restricted to addresses');
      if (uriLines > 1) return this.repeated(res, rid, ridName, 'x-original-uri', 'X-Original-URI', uriLines);
      if (methodLines > 1) return this.repeated(res, rid, ridName, 'x-original-method', 'X-Original-Method', methodLines);
      if (hostLines > 1) return this.repeated(res, rid, ridName, 'x-original-host', 'X-Original-Host', hostLines);
      if (ipLines > 1) return this.repeated(res, rid, ridName, 'x-real-ip', 'X-Real-IP', ipLines);
      if (method.length > AUTHZ_MAX_METHOD_LENGTH || !TOKEN_RE.test(method)) {
        return this.badHeader(res, rid, ridName, 'x-original-method', 'X-Original-Method', `must be an HTTP method token of at most ${AUTHZ_MAX_METHOD_LENGTH} characters`);
      }
      if (uri.length > config.server.limits.maxUrlBytes) {
        this.refuse(res, rid, ridName, Errors.URL_TOO_LONG, null, null);
        return;
      }
      const target = originForm(uri);
      if (target === null) {
        return this.badHeader(res, rid, ridName, 'x-original-uri', 'X-Original-URI', 'must be a request target: /path?query (or an absolute http(s) URL)');
      }
      const qAt = target.indexOf('?');
      const rawPath = qAt === -1 ? target : target.slice(0, qAt);
      const query = qAt === -1 ? '' : target.slice(qAt + 1);
      if (!isValidHost(originalHost)) {
        this.refuse(res, rid, ridName, Errors.BAD_HOST, null, null);
        return;
      }
      const clientIp = realIp.trim();
      if (net.isIP(clientIp) === 0) return this.badHeader(res, rid, ridName, 'x-real-ip', 'X-Real-IP', 'must be an IP address');
      const path = normalizePath(rawPath);
      if (path === null) {
        this.refuse(res, rid, ridName, Errors.BAD_PATH, null, null);
        return;
      }
      // Route predicates on `host` see the client's host, as in a worker.
      hdrs.push('host', originalHost);

      // --- route, then the route's auth
      const m = this.router.find(method, normalizeHost(originalHost), path, hdrs, query);
      if (m === null) {
        this.refuse(res, rid, ridName, Errors.ROUTE_NOT_FOUND, null, null);
        return;
      }
      if (m.kind !== MATCH_FOUND) {
        this.refuse(res, rid, ridName, Errors.METHOD_NOT_ALLOWED, ['allow', m.allow], null);
        return;
      }
      const route = m.data!;
      if (route.policies === null) {
        this.send(res, 200, rid, ridName, '', null);
        return;
      }
      const ctx = this.ctx;
      if (ctx.run(route.policies, this.opts.now(), route.id, 0, method, clientIp, null, hdrs, query) === REFUSED) {
        this.refused(res, rid, ridName, ctx);
        return;
      }
      const pending = ctx.pending;
      if (pending === null) {
        this.admitted(res, rid, ridName, ctx);
        return;
      }
      this.wait(res, rid, ridName, pending);
    } catch (err) {
      log('error', 'auth_request listener failed on a request', { requestId: rid, error: (err as Error).stack ?? String(err) });
      if (!res.headersSent) this.refuse(res, rid || this.nextRequestId(), config?.server.requestIdHeader ?? 'x-request-id', Errors.INTERNAL, null, null);
      else res.destroy();
    }
  }

  /** A cache miss: the answer is sent when the store has answered (or the decision's guard expired: 503). */
  private wait(res: http.ServerResponse, rid: string, ridName: string, pending: PendingDecision): void {
    let done = false;
    const finish = (fn: () => void) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      res.off('close', onClose);
      try {
        fn();
      } catch (err) {
        log('error', 'auth_request listener failed on a request', { requestId: rid, error: (err as Error).stack ?? String(err) });
        if (!res.headersSent) this.refuse(res, rid, ridName, Errors.INTERNAL, null, null);
      }
    };
    const timer = setTimeout(() => finish(() => {
      pending.abandon();
      this.refuse(res, rid, ridName, Errors.IDENTITY_STORE_UNAVAILABLE, ['retry-after', '1'], null);
    }), pending.guardMs);
    const onClose = () => finish(() => pending.abandon());
    res.once('close', onClose);
    const waiter: DecisionWaiter = {
      decided: (d) => finish(() => {
        if (d.result === CONTINUE) this.admitted(res, rid, ridName, d);
        else this.refused(res, rid, ridName, d);
      }),
    };
    pending.begin(waiter);
  }

  /** 200 with the consumer headers (the policy's upstream lines) and its response headers. */
  private admitted(res: http.ServerResponse, rid: string, ridName: string, o: PolicyOutcome): void {
    const extra: string[] = [];
    const lines = o.requestLines;
    let at = 0;
    while (at < lines.length) {
      let end = lines.indexOf('\r\n', at);
      if (end === -1) end = lines.length;
      const colon = lines.indexOf(':', at);
      if (colon !== -1 && colon < end) extra.push(lines.slice(at, colon).trim(), lines.slice(colon + 1, end).trim());
      at = end + 2;
    }
    for (const h of o.responseHeaders) extra.push(h);
    this.send(res, 200, rid, ridName, '', extra);
  }

  private refused(res: http.ServerResponse, rid: string, ridName: string, o: PolicyOutcome): void {
    this.refuse(res, rid, ridName, o.refusal ?? Errors.INTERNAL, o.refusalHeaders.slice(), o.refusalMessage);
  }

  private refuse(res: http.ServerResponse, rid: string, ridName: string, e: GatewayErrorDef, headers: string[] | null, message: string | null): void {
    this.send(res, e.status, rid, ridName, message === null ? errorBody(e, rid) : errorBodyWith(e, message, rid), headers);
  }

  private missing(res: http.ServerResponse, rid: string, ridName: string, key: string, name: string, what: string): void {
    const msg = `The auth_request subrequest has no ${name} header (${what}); add \`${NGINX_LINE[key]}\` to nginx's auth location.`;
    this.refuse(res, rid, ridName, Errors.BAD_REQUEST, null, msg);
  }

  private repeated(res: http.ServerResponse, rid: string, ridName: string, key: string, name: string, lines: number): void {
    const msg = `The auth_request subrequest has ${lines} ${name} headers; it must have exactly one: set it in nginx's auth location with \`${NGINX_LINE[key]}\`, which replaces any the client sent.`;
    this.refuse(res, rid, ridName, Errors.BAD_REQUEST, null, msg);
  }

  private badHeader(res: http.ServerResponse, rid: string, ridName: string, key: string, name: string, what: string): void {
    const msg = `The auth_request subrequest's ${name} header ${what}; nginx sends it with \`${NGINX_LINE[key]}\`.`;
    this.refuse(res, rid, ridName, Errors.BAD_REQUEST, null, msg);
  }

  /** One answer: Content-Length always (HTTP/1.0 and 1.1 alike); node:http decides keep-alive from the request. */
  private send(res: http.ServerResponse, status: number, rid: string, ridName: string, body: string, headers: readonly string[] | null): void {
    if (res.headersSent || res.destroyed) return;
    const h: Record<string, string | string[]> = {
      'content-length': String(Buffer.byteLength(body)),
      'cache-control': 'no-store',
      [ridName]: rid,
    };
    if (body !== '') h['content-type'] = JSON_TYPE;
    if (headers !== null) {
      for (let i = 0; i + 1 < headers.length; i += 2) {
        const k = headers[i]!.toLowerCase();
        const v = headers[i + 1]!;
        const prev = h[k];
        h[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
      }
    }
    res.writeHead(status, h);
    res.end(body);
  }
}

/**
 * The origin-form (`/path?query`) of a request target as a client sent it:
 * origin-form as is, absolute-form (`http://host/path?q`, RFC 9112 3.2.2)
 * without scheme and authority. null for anything else (`*`, garbage).
 */
export function originForm(uri: string): string | null {
  if (uri.charCodeAt(0) === 47 /* / */) return uri;
  const m = /^https?:\/\/[^/?#]*/i.exec(uri);
  if (m === null) return null;
  const rest = uri.slice(m[0].length);
  return rest === '' ? '/' : rest.charCodeAt(0) === 63 /* ? */ ? '/' + rest : rest.charCodeAt(0) === 47 ? rest : null;
}
