/**
 * Every error the gateway answers by itself (common/errors.ts `Errors`) ×
 * every common method, over raw TCP sockets, against real gateway processes
 * and real upstreams.
 *
 * Why: `curl -I` (HEAD) to an unknown path once killed the whole process,
 * because no test ever sent HEAD to a response the gateway makes itself.
 * Each code has a trigger that works for every method (or says in the table
 * why a method cannot reach it), and every (code, method) answer must:
 *  - carry the code's status line (status AND reason phrase);
 *  - carry the same headers as GET's answer to the same trigger (names and
 *    values; the request id, Date and Content-Length differ per request and
 *    are checked on their own);
 *  - be `application/json`, with the request id header, equal for non-HEAD
 *    to the body's `error.requestId`; the body is exactly the catalogue's;
 *  - for HEAD: no body at all, and the Content-Length the GET body has
 *    (same body, this request's id);
 *  - `Allow` on 405 (and only there);
 *  - leave the connection usable (`GET /ok` on the same socket answers 200
 *    from the upstream), unless the answer is one that closes (bad framing,
 *    a declared body above LINGER_MAX_BYTES or a chunked one, shutting_down,
 *    internal_error): then the socket must close;
 *  - leave the gateway process alive (and no worker restarted).
 * Then turnpike_gateway_errors_total{reason} on the admin /metrics must count exactly
 * what the table sent.
 *
 * Two gateways: one for every code but shutting_down (TURNPIKE_TEST_HOOKS=1
 * for internal_error), one that is shut down. All cases run concurrently,
 * each on its own connection; results are collected first, asserted per
 * case below.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Errors, errorBody, errorBodyWith, type GatewayErrorDef } from '../../common/errors.js';
import { LINGER_MAX_BYTES } from '../../workers/transport/backend.js';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startRawUpstream, startUpstream, type Upstream } from '../helpers/upstream.js';
import { sampleValue, scrape } from '../helpers/metrics.js';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKey } from '../../common/identity/keys.js';
import WebSocket, { WebSocketServer } from 'ws';
import { CertFactory } from '../helpers/certs.js';

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH'] as const;
type Method = (typeof METHODS)[number];

/** The suite runs on the node backend too (`npm run test:node-backend`), where some rows differ. */
const NODE_BACKEND = process.env.TURNPIKE_SERVER__BACKEND === 'node';
const RID = 'x-request-id';
const RESPONSE_TIMEOUT_MS = 5000;
/** How long a keep-alive answer is watched for stray bytes (a HEAD body) before the follow-up request. */
const QUIET_MS = 60;
/** How long an answer that closes may take to close its connection (uWS's own idle timeout is ~10 s). */
const CLOSE_WAIT_MS = 1500;

const SMALL_LIMIT = 8; // routes[small].maxBodyBytes
/** The one request /limited/* admits (taken at setup; it reaches the `ok` upstream). */
const LIMITED_SETUP = '/limited/setup';
const LIMITS = { maxUrlBytes: 2048, maxHeaderBytes: 8192, maxHeaderCount: 30 };

// ------------------------------------------------------------------ raw client

interface RawResponse {
  statusLine: string;
  /** [lowercased name, value] in wire order. */
  headers: [string, string][];
  body: Buffer;
}

function header(r: RawResponse, name: string): string[] {
  return r.headers.filter(([k]) => k === name).map(([, v]) => v);
}

/** One client connection that reads HTTP/1.1 responses off a raw socket. */
class RawConn {
  private buf = Buffer.alloc(0);
  ended = false;
  private waiter: (() => void) | null = null;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => { this.buf = Buffer.concat([this.buf, d]); this.wake(); });
    socket.on('end', () => { this.ended = true; this.wake(); });
    socket.on('close', () => { this.ended = true; this.wake(); });
    socket.on('error', () => { /* a reset shows as the end of the stream */ });
  }

  static open(port: number): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => resolve(new RawConn(s)));
      s.once('error', reject);
    });
  }

  write(data: Buffer): void {
    this.socket.write(data);
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** Waits until `ready()` holds or the stream ends; false on timeout. */
  private async until(ready: () => boolean, timeoutMs: number): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    while (!ready()) {
      if (this.ended) return ready();
      const left = deadline - performance.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => { clearTimeout(t); resolve(); };
      });
    }
    return true;
  }

  /** Reads one response; a HEAD response ends with its head whatever its Content-Length says. */
  async read(isHead: boolean, timeoutMs = RESPONSE_TIMEOUT_MS): Promise<RawResponse> {
    const gotHead = await this.until(() => this.buf.indexOf('\r\n\r\n') !== -1, timeoutMs);
    if (!gotHead) {
      throw new Error(`no response head (${this.ended ? 'connection closed' : 'timeout'}); got ${JSON.stringify(this.buf.toString('latin1'))}`);
    }
    const end = this.buf.indexOf('\r\n\r\n');
    const lines = this.buf.subarray(0, end).toString('latin1').split('\r\n');
    const statusLine = lines[0]!;
    const headers = lines.slice(1).map((l): [string, string] => {
      const i = l.indexOf(':');
      return [l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim()];
    });
    this.buf = this.buf.subarray(end + 4);
    const res: RawResponse = { statusLine, headers, body: Buffer.alloc(0) };
    const status = Number(statusLine.split(' ')[1]);
    if (isHead || status === 204 || status === 304) return res;
    const cl = header(res, 'content-length');
    if (cl.length === 1) {
      const n = Number(cl[0]);
      if (!(await this.until(() => this.buf.length >= n, timeoutMs))) {
        throw new Error(`body shorter than Content-Length ${n}: ${JSON.stringify(this.buf.toString('latin1'))}`);
      }
      res.body = Buffer.from(this.buf.subarray(0, n));
      this.buf = this.buf.subarray(n);
      return res;
    }
    if (header(res, 'transfer-encoding').join(',').toLowerCase() === 'chunked') {
      const parts: Buffer[] = [];
      for (;;) {
        if (!(await this.until(() => this.buf.indexOf('\r\n') !== -1, timeoutMs))) throw new Error('truncated chunk size');
        const nl = this.buf.indexOf('\r\n');
        const size = parseInt(this.buf.subarray(0, nl).toString('latin1'), 16);
        if (!(await this.until(() => this.buf.length >= nl + 2 + size + 2, timeoutMs))) throw new Error('truncated chunk');
        parts.push(Buffer.from(this.buf.subarray(nl + 2, nl + 2 + size)));
        this.buf = this.buf.subarray(nl + 2 + size + 2);
        if (size === 0) break;
      }
      res.body = Buffer.concat(parts);
      return res;
    }
    throw new Error(`response without Content-Length or chunked framing: ${statusLine} ${JSON.stringify(headers)}`);
  }

  /** Bytes that arrive within `ms` with nothing asked for (must be none after a complete response). */
  async stray(ms: number): Promise<string> {
    await new Promise((r) => setTimeout(r, ms));
    return this.buf.toString('latin1');
  }

  /** True when the peer closes within `timeoutMs`; `rest` = unread bytes. */
  async closes(timeoutMs: number): Promise<{ closed: boolean; rest: string }> {
    const closed = await this.until(() => this.ended, timeoutMs);
    return { closed, rest: this.buf.toString('latin1') };
  }

  destroy(): void {
    this.socket.destroy();
  }
}

// ------------------------------------------------------------------ requests

const HAS_BODY = new Set<Method>(['POST', 'PUT', 'PATCH']);

/** A raw request: Host `t` unless the headers bring their own; POST/PUT/PATCH carry `hello` unless `body` is given. */
function raw(m: Method, target: string, headers: string[] = [], body?: string, opts: { noHost?: boolean } = {}): Buffer {
  let b = body;
  let hs = headers;
  if (b === undefined && HAS_BODY.has(m)) {
    b = 'hello';
    hs = [...hs, 'Content-Length: 5'];
  }
  const lines = [`${m} ${target} HTTP/1.1`, ...(opts.noHost ? [] : ['Host: t']), ...hs];
  return Buffer.from(lines.join('\r\n') + '\r\n\r\n' + (b ?? ''), 'latin1');
}

const OK_REQUEST = Buffer.from('GET /ok HTTP/1.1\r\nHost: t\r\n\r\n');

// ------------------------------------------------------------------ the table

interface Trigger {
  error: GatewayErrorDef;
  /** How the error is provoked (the table printed in the report). */
  how: string;
  /** The gateway must close the connection after answering (else it must stay usable). */
  closes: boolean;
  request(m: Method): Buffer;
  /** Methods that cannot trigger this error, and why. (None so far: every method reaches every code.) */
  cannot?: Partial<Record<Method, string>>;
  /** The request declares a body it does not send. */
  unsentBody?: boolean;
  /**
   * The body carries the policy's own message of the moment (errorBodyWith:
   * which limit, when to retry) instead of the catalogue's: it must match this.
   */
  message?: RegExp;
  /**
   * Headers whose values hold times in whole seconds (Retry-After, the
   * IETF RateLimit `t=`): between two answers to the same trigger they may
   * differ by one second (a second boundary fell between them), never more;
   * everything else in them must be equal.
   */
  timed?: readonly string[];
}

/** The API keys of the auth rows, made at setup (startMain). */
const keys = { unknown: generateKey('live'), down: generateKey('down'), good: '', revoked: '', expired: '', suspended: '', restricted: '' };
const ADMIN_TOKEN = `errors-${process.pid}-${Date.now()}`;

const manyHeaders = Array.from({ length: LIMITS.maxHeaderCount + 1 }, (_, i) => `X-H${i}: 1`);

/** Every code but shutting_down, on the main gateway. */
const TABLE: Trigger[] = [
  {
    error: Errors.BAD_REQUEST, how: 'two different Content-Length values (bad framing)', closes: true,
    request: (m) => raw(m, '/api/x', ['Content-Length: 1', 'Content-Length: 2'], ''),
  },
  {
    error: Errors.BAD_REQUEST, how: 'a header value holding DEL (0x7f), on a proxied route', closes: false,
    request: (m) => raw(m, '/api/x', ['X-Odd: a\x7fb']),
  },
  {
    error: Errors.BAD_HOST, how: 'two Host lines', closes: false,
    request: (m) => raw(m, '/api/x', ['Host: a', 'Host: b'], undefined, { noHost: true }),
  },
  {
    error: Errors.BAD_HOST, how: 'an invalid Host value (`a b`)', closes: false,
    request: (m) => raw(m, '/api/x', ['Host: a b'], undefined, { noHost: true }),
  },
  {
    error: Errors.BAD_PATH, how: 'an invalid percent-escape: /a/%zz', closes: false,
    request: (m) => raw(m, '/a/%zz'),
  },
  {
    error: Errors.ROUTE_NOT_FOUND, how: 'a path no route matches: /nowhere', closes: false,
    request: (m) => raw(m, '/nowhere'),
  },
  {
    // Only the CONNECT method triggers it: the GET row sends CONNECT (the
    // answer is compared with nothing but itself), the others cannot.
    error: Errors.NOT_IMPLEMENTED, how: 'the CONNECT method (sent in the GET row), on a routed path', closes: false,
    request: () => raw('CONNECT' as Method, '/api/x'),
    cannot: Object.fromEntries(['HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH'].map((m) => [m, 'only CONNECT triggers not_implemented'])),
  },
  {
    // RFC 9110 15.6.6. The node backend's parser answers it (then closes: what follows cannot be framed);
    // uWS 20.30 gives no answer at all to such a request line (test/fuzz finding F11), so no method can trigger it there.
    error: Errors.VERSION_NOT_SUPPORTED, how: 'an HTTP/2.0 request line (node backend)', closes: true,
    request: (m) => Buffer.from(raw(m, '/api/x').toString('latin1').replace(' HTTP/1.1\r\n', ' HTTP/2.0\r\n'), 'latin1'),
    cannot: NODE_BACKEND ? undefined : Object.fromEntries(METHODS.map((m) => [m, 'uWS 20.30 does not answer an HTTP/2.0 request line (fuzzer finding F11)'])),
  },
  {
    error: Errors.METHOD_NOT_ALLOWED, how: 'a route whose methods are [TRACE] only', closes: false,
    request: (m) => raw(m, '/trace-only'),
  },
  {
    error: Errors.BODY_TOO_LARGE, how: `Content-Length 16 (body sent) on a route with maxBodyBytes ${SMALL_LIMIT}`, closes: false,
    request: (m) => raw(m, '/small/x', ['Content-Length: 16'], '0123456789abcdef'),
  },
  {
    error: Errors.BODY_TOO_LARGE, how: 'Content-Length LINGER_MAX_BYTES + 1 declared (body not sent)', closes: true, unsentBody: true,
    request: (m) => raw(m, '/small/x', [`Content-Length: ${LINGER_MAX_BYTES + 1}`], ''),
  },
  {
    error: Errors.BODY_TOO_LARGE, how: `a chunked body of 16 bytes on a route with maxBodyBytes ${SMALL_LIMIT}`, closes: true,
    request: (m) => raw(m, '/small/x', ['Transfer-Encoding: chunked'], '10\r\n0123456789abcdef\r\n0\r\n\r\n'),
  },
  {
    error: Errors.URL_TOO_LONG, how: `a 3000-byte path (maxUrlBytes ${LIMITS.maxUrlBytes})`, closes: false,
    request: (m) => raw(m, '/api/' + 'a'.repeat(3000)),
  },
  {
    error: Errors.HEADERS_TOO_LARGE, how: `${LIMITS.maxHeaderCount + 1} extra headers (maxHeaderCount ${LIMITS.maxHeaderCount}; under uWS's own 48)`, closes: false,
    request: (m) => raw(m, '/api/x', manyHeaders),
  },
  {
    error: Errors.HEADERS_TOO_LARGE, how: `one 9000-byte header value (maxHeaderBytes ${LIMITS.maxHeaderBytes})`, closes: false,
    request: (m) => raw(m, '/api/x', ['X-Big: ' + 'v'.repeat(9000)]),
  },
  {
    error: Errors.RATE_LIMITED, how: 'a route limited to 1 request per day (by: global, scope: local), that request taken at setup', closes: false,
    request: (m) => raw(m, '/limited/x'),
    message: /^Rate limit "limited#0" exceeded \(1 requests per 24h, by global\); retry in \d+ s\.$/,
    timed: ['retry-after', 'ratelimit'],
  },
  {
    // A WebSocket upgrade is a GET (RFC 6455 4.1): the other methods cannot ask for one.
    error: Errors.TOO_MANY_WEBSOCKET_CONNECTIONS, how: 'a WebSocket upgrade on a route with maxConnectionsPerKey 1, its one connection held from setup', closes: false,
    request: (m) => raw(m, '/wslimit/x', ['Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version: 13']),
    cannot: Object.fromEntries(['HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH'].map((m) => [m, 'only a GET asks for a WebSocket (RFC 6455 4.1)'])),
  },
  {
    error: Errors.RATE_LIMIT_STORE_UNAVAILABLE, how: 'a cluster limit with onStoreError: deny while redis.url points to a closed port', closes: false,
    request: (m) => raw(m, '/storeless/x'),
    message: /^The rate-limit store \(Redis\) is unreachable and limit "storeless#0" refuses requests meanwhile \(onStoreError: deny\); retry later\.$/,
  },
  {
    error: Errors.UPSTREAM_CONNECT_FAILED, how: 'upstream target on a closed port', closes: false,
    request: (m) => raw(m, '/dead/x'),
  },
  {
    error: Errors.UPSTREAM_TLS_FAILED, how: 'https:// target whose certificate a private CA signed, no tls.ca (Node\'s bundled roots refuse it)', closes: false,
    request: (m) => raw(m, '/untrusted/x'),
  },
  {
    error: Errors.UPSTREAM_RESET, how: 'raw upstream that closes on the request head without answering', closes: false,
    request: (m) => raw(m, '/reset/x'),
  },
  {
    error: Errors.UPSTREAM_BAD_RESPONSE, how: 'raw upstream answering `NOT HTTP AT ALL`', closes: false,
    request: (m) => raw(m, '/garbage/x'),
  },
  {
    error: Errors.UPSTREAM_UNAVAILABLE, how: 'pool maxConnections 1, maxPending 0, its one connection held by a request', closes: false,
    request: (m) => raw(m, '/busy/x'),
  },
  {
    error: Errors.CIRCUIT_OPEN, how: 'breaker (failureThreshold 1, openMs 1h) opened by one request to a closed port at setup', closes: false,
    request: (m) => raw(m, '/tripped/x'),
  },
  {
    error: Errors.UPSTREAM_OVERLOADED, how: 'breaker.maxInFlight 1, the one place held by a request the busy upstream never answers', closes: false,
    request: (m) => raw(m, '/full/x'),
  },
  {
    error: Errors.NO_HEALTHY_UPSTREAM, how: 'the only target fails its active health check (closed port, unhealthyThreshold 1)', closes: false,
    request: (m) => raw(m, '/sick/x'),
  },
  {
    error: Errors.UPSTREAM_CONNECT_TIMEOUT, how: 'upstream whose accept queue is full (SYN dropped), connectMs 300', closes: false,
    request: (m) => raw(m, '/blackhole/x'),
  },
  {
    error: Errors.UPSTREAM_TIMEOUT, how: 'raw upstream that never answers, responseMs 300', closes: false,
    request: (m) => raw(m, '/silent/x'),
  },
  // API keys (workers/policies/auth): keys made through the admin API at setup (`keys`).
  {
    error: Errors.CREDENTIALS_MISSING, how: 'a route with auth, no key', closes: false,
    request: (m) => raw(m, '/auth/x'),
  },
  {
    error: Errors.KEY_MALFORMED, how: 'Authorization: Bearer tp_live_short (wrong shape)', closes: false,
    request: (m) => raw(m, '/auth/x', ['Authorization: Bearer tp_live_short']),
  },
  {
    error: Errors.KEY_INVALID, how: 'a well-formed key the store does not know', closes: false,
    request: (m) => raw(m, '/auth/x', [`Authorization: Bearer ${keys.unknown}`]),
  },
  {
    error: Errors.KEY_REVOKED, how: 'a key revoked at setup', closes: false,
    request: (m) => raw(m, '/auth/x', [`Authorization: Bearer ${keys.revoked}`]),
  },
  {
    error: Errors.KEY_EXPIRED, how: 'a key whose expiresAt passed during setup', closes: false,
    request: (m) => raw(m, '/auth/x', [`X-API-Key: ${keys.expired}`]),
  },
  {
    error: Errors.CONSUMER_SUSPENDED, how: 'a key of a consumer created suspended', closes: false,
    request: (m) => raw(m, '/auth/x', [`Authorization: Bearer ${keys.suspended}`]),
  },
  {
    error: Errors.KEY_RESTRICTED, how: 'a key restricted to 192.0.2.0/24', closes: false,
    request: (m) => raw(m, '/auth/x', [`Authorization: Bearer ${keys.restricted}`]),
    message: /^The API key may not be used from here: its allowed client addresses exclude this one\.$/,
  },
  {
    error: Errors.INSUFFICIENT_SCOPE, how: 'a route requiring scope `orders:write`, a key without it', closes: false,
    request: (m) => raw(m, '/scoped/x', [`Authorization: Bearer ${keys.good}`]),
    message: /^The API key lacks a scope this route requires \(orders:write\)\.$/,
  },
  {
    error: Errors.NO_GRANT, how: 'grants: required, no grant for the consumer', closes: false,
    request: (m) => raw(m, '/granted/x', [`Authorization: Bearer ${keys.good}`]),
  },
  {
    error: Errors.IDENTITY_STORE_UNAVAILABLE, how: 'TURNPIKE_TEST_HOOKS=1 + a key of env `down` (the service answers as a store that does not)', closes: false,
    request: (m) => raw(m, '/auth/x', [`Authorization: Bearer ${keys.down}`]),
  },
  {
    // The handler throws before it has looked at the request's framing, so
    // the gateway closes (uws-server.ts internalError passes close = true).
    error: Errors.INTERNAL, how: 'TURNPIKE_TEST_HOOKS=1 + `x-turnpike-test-throw: handler`', closes: true,
    request: (m) => raw(m, '/api/x', ['X-Turnpike-Test-Throw: handler']),
  },
];

const SHUTTING_DOWN: Trigger = {
  error: Errors.SHUTTING_DOWN,
  how: 'second gateway: keep-alive connections opened first, one slow request in flight, SIGTERM, then requests on the open connections',
  closes: true,
  request: (m) => raw(m, '/ok'),
};

const ALL_TRIGGERS = [...TABLE, SHUTTING_DOWN];

interface Outcome {
  trigger: Trigger;
  method: Method;
  /** Thrown while running the case (no answer, timeout...). */
  failure?: string;
  response?: RawResponse;
  /** Closing cases: whether the socket closed, and what came after the answer. */
  closed?: boolean;
  /** Bytes after the answer (a HEAD body, a second response...). */
  stray?: string;
  /** Closing cases left open: the answer to a `GET /ok` sent on that connection anyway. */
  servedAfterClose?: RawResponse;
  /** Closing cases left open: the connection closed once that probe was sent. */
  closedAfterProbe?: boolean;
  /** Keep-alive cases: the answer to `GET /ok` sent next on the same socket. */
  followUp?: RawResponse;
  followUpFailure?: string;
}

/** Reads the answer on `c` (the request already sent) and checks what happens to the connection after it. */
async function finish(c: RawConn, t: Trigger, m: Method): Promise<Outcome> {
  const out: Outcome = { trigger: t, method: m };
  try {
    out.response = await c.read(m === 'HEAD');
    if (t.closes) {
      const { closed, rest } = await c.closes(CLOSE_WAIT_MS);
      out.closed = closed;
      out.stray = rest;
      if (!closed && rest === '') {
        // Still open: does it serve the next request? (After bad framing that is request smuggling.)
        c.write(OK_REQUEST);
        try {
          out.servedAfterClose = await c.read(false, 500);
        } catch { /* not served: good */ }
        out.closedAfterProbe = (await c.closes(CLOSE_WAIT_MS)).closed;
      }
      return out;
    }
    out.stray = await c.stray(QUIET_MS);
    if (out.stray !== '') return out;
    c.write(OK_REQUEST);
    try {
      out.followUp = await c.read(false);
    } catch (err) {
      out.followUpFailure = (err as Error).message;
    }
  } catch (err) {
    out.failure = (err as Error).message;
  } finally {
    c.destroy();
  }
  return out;
}

async function runCase(port: number, t: Trigger, m: Method): Promise<Outcome> {
  let c: RawConn;
  try {
    c = await RawConn.open(port);
  } catch (err) {
    return { trigger: t, method: m, failure: `connect: ${(err as Error).message}` };
  }
  c.write(t.request(m));
  return finish(c, t, m);
}

// ------------------------------------------------------------------ fixtures

let okUp: Upstream;
let rawUp: Upstream & { connections: number };
let busyUp: Upstream;
let slowUp: Upstream;
/** An https upstream whose certificate no root CA trusts (upstream_tls_failed); its certificates. */
let untrustedUp: Upstream;
const certs = new CertFactory();
const busyHeld: http.ServerResponse[] = [];
const slowHeld: http.ServerResponse[] = [];
let blackhole: ChildProcess | null = null;
const fillers: net.Socket[] = [];
let gw: Gateway;
let drainGw: Gateway;
let busyHolder: RawConn | null = null;
let fullHolder: RawConn | null = null;
/** The WebSocket upstream of /wslimit/*, and the one connection the setup holds there (maxConnectionsPerKey 1). */
let wsUp: { server: http.Server; wss: WebSocketServer; port: number } | null = null;
let wsHolder: WebSocket | null = null;
/** Gateway errors the setup itself provoked (the tripped breaker's failure, the sick target before its check): counted in /metrics too. */
const setupErrors = new Map<string, number>();
const outcomes = new Map<string, Outcome>();
const key = (t: Trigger, m: Method) => `${ALL_TRIGGERS.indexOf(t)}:${m}`;
let drainMetrics = '';
let drainAliveAfterAnswers = false;
let drainSlowAnswer: RawResponse | null = null;
let drainExit: number | null = null;
/** A setup step that threw (reported by the tests that depend on it, so the rest still run). */
let mainFailure: string | undefined;
let drainFailure: string | undefined;

/** A closed port: bound once, then released. */
async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/**
 * A listener that never accepts: a child process listens with backlog 1,
 * then blocks its event loop for good (Atomics.wait). Connections fill its
 * accept queue; once full, the kernel drops further SYNs, so a connect
 * neither succeeds nor fails until the client gives up.
 */
async function startBlackhole(): Promise<number> {
  const script = `
    const net = require('node:net');
    const s = net.createServer();
    s.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
      require('node:fs').writeSync(1, s.address().port + '\\n');
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
    });`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  blackhole = child;
  const port = await new Promise<number>((resolve, reject) => {
    let text = '';
    child.stdout!.on('data', (d: Buffer) => {
      text += d.toString();
      if (text.includes('\n')) resolve(Number(text.trim()));
    });
    child.once('exit', (code) => reject(new Error(`blackhole exited (${code})`)));
  });
  // Fill the accept queue until a connect no longer completes.
  for (let i = 0; i < 16; i++) {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => {});
    fillers.push(s);
    const connected = await new Promise<boolean>((resolve) => {
      // Loopback handshakes complete in the kernel: a connect that takes this long was dropped.
      const t = setTimeout(() => resolve(false), 400);
      s.once('connect', () => { clearTimeout(t); resolve(true); });
    });
    if (!connected) return port;
  }
  throw new Error('could not fill the blackhole upstream\'s accept queue: connects keep completing');
}

const metricValue = sampleValue;

/** The access log lines (stdout, JSON) a gateway wrote so far. */
function accessLines(g: Gateway): any[] {
  return g.logs.map((l) => { try { return JSON.parse(l); } catch { return null; } }).filter((j) => j !== null && 'request_id' in j && !('msg' in j));
}

/** The sum of every sample whose series starts with `prefix` (a metric name and `{`, or a whole series). */
function sumSamples(text: string, prefix: string): number {
  let n = 0;
  for (const line of text.split('\n')) if (line.startsWith(prefix)) n += Number(line.slice(line.lastIndexOf(' ') + 1));
  return n;
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Where the main gateway keeps its identity store and generated secrets. */
const identityDir = mkdtempSync(join(tmpdir(), 'tp-errors-id-'));

/** The admin API on the main gateway (consumers and keys for the auth rows). */
async function adminCall(method: string, path: string, body?: unknown): Promise<any> {
  const r = await fetch(`http://127.0.0.1:${gw.adminPort}${path}`, {
    method, headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await r.json();
  if (r.status >= 300) throw new Error(`setup ${method} ${path}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

/** The keys of the auth rows: one per state, the expired one waited out. */
async function makeKeys(): Promise<void> {
  // Far enough ahead that the create (refused for an expiresAt already past) lands before it on a loaded machine.
  const expiresAt = Date.now() + 2000;
  const c = await adminCall('POST', '/admin/consumers', {
    name: 'errors', keys: [
      { name: 'good', scopes: ['orders:read'] }, { name: 'revoked' }, { name: 'expired', expiresAt },
      { name: 'restricted', restrictions: { cidrs: ['192.0.2.0/24'] } },
    ],
  });
  const byName = new Map<string, { id: string; key: string }>(c.keys.map((k: { name: string; id: string; key: string }) => [k.name, k]));
  keys.good = byName.get('good')!.key;
  keys.revoked = byName.get('revoked')!.key;
  keys.expired = byName.get('expired')!.key;
  keys.restricted = byName.get('restricted')!.key;
  await adminCall('POST', `/admin/keys/${byName.get('revoked')!.id}/revoke`);
  const s = await adminCall('POST', '/admin/consumers', { name: 'suspended', status: 'suspended', keys: [{ name: 'k' }] });
  keys.suspended = s.keys[0].key;
  while (Date.now() <= expiresAt) await new Promise((r) => setTimeout(r, 50));
}

/** A WebSocket upstream that accepts every upgrade (and never sends). */
function startWsUpstream(): Promise<{ server: http.Server; wss: WebSocketServer; port: number }> {
  const server = http.createServer((_req, res) => res.end());
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => ws.on('error', () => {}));
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, wss, port: (server.address() as net.AddressInfo).port })));
}

/** The main gateway: every code but shutting_down. */
async function startMain(): Promise<void> {
  const [deadPort, blackholePort, redisPort] = await Promise.all([closedPort(), startBlackhole(), closedPort()]);
  wsUp = await startWsUpstream();
  gw = await startGateway(baseConfig({
    server: { workers: 1, limits: LIMITS },
    admin: { enabled: true, port: 0 },
    // Never reachable: cluster limits are "store down" from the start (the gateway reports itself started once it knows).
    redis: { url: `redis://127.0.0.1:${redisPort}` },
    upstreams: {
      ok: { targets: [okUp.url] },
      wsup: { targets: [`http://127.0.0.1:${wsUp!.port}`] },
      // No tls block: Node's bundled root CAs, which do not trust the test CA.
      untrusted: { targets: [untrustedUp.url] },
      dead: { targets: [`http://127.0.0.1:${deadPort}`] },
      raw: { targets: [rawUp.url], timeouts: { responseMs: 300 } },
      busy: { targets: [busyUp.url], pool: { maxConnections: 1, maxPending: 0 } },
      // responseMs too: if a connect ever got through, the case fails fast with the wrong code.
      blackhole: { targets: [`http://127.0.0.1:${blackholePort}`], timeouts: { connectMs: 300, responseMs: 300 } },
      // One failure opens it for an hour: every method of the table gets circuit_open.
      tripped: { targets: [`http://127.0.0.1:${deadPort}`], breaker: { failureThreshold: 1, failureRate: 0, openMs: '1h', maxOpenMs: '1h' } },
      // One request in flight fills it (held by the busy upstream until teardown).
      full: { targets: [busyUp.url], breaker: { maxInFlight: 1 } },
      // Checked every 100 ms; the closed port fails the first check.
      sick: { targets: [`http://127.0.0.1:${deadPort}`], healthCheck: { intervalMs: 100, timeoutMs: 50, unhealthyThreshold: 1 } },
    },
    routes: [
      { id: 'ok', path: '/ok', methods: ['GET'], upstream: 'ok' },
      { id: 'api', path: '/api/*', upstream: 'ok' },
      { id: 'small', path: '/small/*', upstream: 'ok', maxBodyBytes: SMALL_LIMIT },
      { id: 'trace-only', path: '/trace-only', methods: ['TRACE'], upstream: 'ok' },
      { id: 'dead', path: '/dead/*', upstream: 'dead' },
      { id: 'untrusted', path: '/untrusted/*', upstream: 'untrusted' },
      { id: 'reset', path: '/reset/*', upstream: 'raw' },
      { id: 'garbage', path: '/garbage/*', upstream: 'raw' },
      { id: 'silent', path: '/silent/*', upstream: 'raw' },
      { id: 'busy', path: '/busy/*', upstream: 'busy' },
      { id: 'blackhole', path: '/blackhole/*', upstream: 'blackhole' },
      { id: 'tripped', path: '/tripped/*', upstream: 'tripped' },
      { id: 'full', path: '/full/*', upstream: 'full' },
      { id: 'sick', path: '/sick/*', upstream: 'sick' },
      { id: 'limited', path: '/limited/*', upstream: 'ok', rateLimit: [{ by: 'global', rate: 1, per: '1d', scope: 'local' }] },
      { id: 'storeless', path: '/storeless/*', upstream: 'ok', rateLimit: [{ by: 'global', rate: 1000, per: '1s', onStoreError: 'deny' }] },
      { id: 'auth', path: '/auth/*', upstream: 'ok', auth: {} },
      { id: 'scoped', path: '/scoped/*', upstream: 'ok', auth: { scopes: ['orders:write'] } },
      { id: 'granted', path: '/granted/*', upstream: 'ok', auth: { grants: 'required' } },
      { id: 'wslimit', path: '/wslimit/*', upstream: 'wsup', websocket: { maxConnectionsPerKey: 1, idleTimeoutMs: 0, pingIntervalMs: 0 } },
    ],
    store: { path: join(identityDir, 'id.db') },
  }), { env: { TURNPIKE_TEST_HOOKS: '1', TURNPIKE_ADMIN_TOKEN: ADMIN_TOKEN }, cwd: identityDir });
  await makeKeys();
  // The one WebSocket connection /wslimit/* allows a client address: held until teardown.
  wsHolder = new WebSocket(`ws://127.0.0.1:${gw.port}/wslimit/hold`);
  wsHolder.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    wsHolder!.once('open', () => resolve());
    wsHolder!.once('unexpected-response', (_req, res) => reject(new Error(`setup /wslimit/hold: ${res.statusCode}`)));
  });
  // The day's one request of /limited/*: every request of the table after it is refused.
  const first = await RawConn.open(gw.port);
  first.write(Buffer.from(`GET ${LIMITED_SETUP} HTTP/1.1\r\nHost: t\r\n\r\n`));
  const r = await first.read(false);
  first.destroy();
  if (!r.statusLine.startsWith('HTTP/1.1 200')) throw new Error(`setup GET ${LIMITED_SETUP}: ${r.statusLine}`);
  // Hold the busy upstream's only connection.
  busyHolder = await RawConn.open(gw.port);
  busyHolder.write(Buffer.from('GET /busy/hold HTTP/1.1\r\nHost: t\r\n\r\n'));
  await waitFor(() => busyHeld.length === 1, 5000, 'the busy upstream to hold a request');
  // Open the `tripped` breaker: its one allowed failure.
  const trip = await RawConn.open(gw.port);
  trip.write(Buffer.from('GET /tripped/setup HTTP/1.1\r\nHost: t\r\n\r\n'));
  const tr = await trip.read(false);
  trip.destroy();
  if (!tr.statusLine.startsWith('HTTP/1.1 502')) throw new Error(`setup GET /tripped/setup: ${tr.statusLine}`);
  setupErrors.set('upstream_connect_failed', (setupErrors.get('upstream_connect_failed') ?? 0) + 1);
  // Hold the `full` upstream's one in-flight place (the busy upstream keeps it until teardown).
  fullHolder = await RawConn.open(gw.port);
  fullHolder.write(Buffer.from('GET /full/hold HTTP/1.1\r\nHost: t\r\n\r\n'));
  await waitFor(() => busyHeld.length === 2, 5000, 'the busy upstream to hold the /full request');
  // The `sick` target's first check (within ~100 ms of start) marks it unhealthy.
  const deadline = performance.now() + 5000;
  for (;;) {
    const c = await RawConn.open(gw.port);
    c.write(Buffer.from('GET /sick/setup HTTP/1.1\r\nHost: t\r\n\r\n'));
    const r = await c.read(false);
    c.destroy();
    // Before the first check the closed port answers 502 upstream_connect_failed; after it, 503 no_healthy_upstream.
    const code = r.statusLine.startsWith('HTTP/1.1 503') ? 'no_healthy_upstream' : 'upstream_connect_failed';
    setupErrors.set(code, (setupErrors.get(code) ?? 0) + 1);
    if (code === 'no_healthy_upstream') break;
    if (performance.now() > deadline) throw new Error(`setup GET /sick/setup never became 503: ${r.statusLine}`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

async function runMainTable(): Promise<void> {
  const runs: Promise<void>[] = [];
  for (const t of TABLE) {
    for (const m of METHODS) {
      if (t.cannot?.[m] !== undefined) continue;
      runs.push(runCase(gw.port, t, m).then((o) => { outcomes.set(key(t, m), o); }));
    }
  }
  await Promise.all(runs);
}

/**
 * shutting_down: keep-alive connections opened (and used) first, one slow
 * request in flight, SIGTERM, wait until the listener is closed (then the
 * worker is draining), then each method on an already open connection.
 */
async function runDrainScenario(): Promise<void> {
  drainGw = await startGateway(baseConfig({
    server: { workers: 1, drainTimeoutMs: 10_000 },
    admin: { enabled: true, port: 0 },
    upstreams: { ok: { targets: [okUp.url] }, slow: { targets: [slowUp.url] } },
    routes: [
      { id: 'ok', path: '/ok', methods: ['GET'], upstream: 'ok' },
      { id: 'slow', path: '/slow', upstream: 'slow' },
    ],
  }));
  const conns = new Map<Method, RawConn>();
  await Promise.all(METHODS.map(async (m) => {
    const c = await RawConn.open(drainGw.port);
    c.write(OK_REQUEST);
    const r = await c.read(false);
    if (!r.statusLine.startsWith('HTTP/1.1 200')) throw new Error(`warm-up GET /ok: ${r.statusLine}`);
    conns.set(m, c);
  }));
  const slow = await RawConn.open(drainGw.port);
  slow.write(Buffer.from('GET /slow HTTP/1.1\r\nHost: t\r\n\r\n'));
  await waitFor(() => slowHeld.length === 1, 5000, 'the slow upstream to hold a request');
  drainGw.proc.kill('SIGTERM');
  // Draining once new connections are refused (the worker sets `draining` as it closes its listener).
  const deadline = performance.now() + 5000;
  for (;;) {
    const refused = await new Promise<boolean>((resolve) => {
      const s = net.connect(drainGw.port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); resolve(false); });
      s.once('error', () => resolve(true));
    });
    if (refused) break;
    if (performance.now() > deadline) throw new Error('the draining gateway kept accepting connections');
    await new Promise((r) => setTimeout(r, 10));
  }
  await Promise.all(METHODS.map(async (m) => {
    const c = conns.get(m)!;
    c.write(SHUTTING_DOWN.request(m));
    outcomes.set(key(SHUTTING_DOWN, m), await finish(c, SHUTTING_DOWN, m));
  }));
  drainAliveAfterAnswers = drainGw.proc.exitCode === null && drainGw.proc.signalCode === null;
  // The admin listener serves until the workers are done draining.
  drainMetrics = await scrape(drainGw.adminPort!);
  slowHeld[0]!.end('slow-ok');
  try {
    drainSlowAnswer = await slow.read(false);
  } finally {
    slow.destroy();
  }
  drainExit = await drainGw.exited;
}

beforeAll(async () => {
  [okUp, rawUp, busyUp, slowUp] = await Promise.all([
    startUpstream((req, res, body) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ method: req.method, url: req.url, bodyLength: body.length }));
    }),
    startRawUpstream((head, socket) => {
      const url = head.split(' ')[1]!;
      if (url.startsWith('/reset/')) socket.destroy();
      else if (url.startsWith('/garbage/')) socket.end('NOT HTTP AT ALL\r\n\r\n');
      // /silent/: never answers
    }),
    startUpstream((_req, res) => { busyHeld.push(res); }),
    startUpstream((_req, res) => { slowHeld.push(res); }),
  ]);
  untrustedUp = await startUpstream(undefined, certs.leaf({ names: ['127.0.0.1'], ca: certs.ca() }));
  // The two gateways are independent: run them side by side.
  await Promise.all([
    // The held WebSocket was counted at its 101; its access log line comes when it closes: closed once the table ran.
    startMain().then(runMainTable).then(() => { wsHolder?.close(); }).catch((err: Error) => { mainFailure = err.stack ?? err.message; }),
    runDrainScenario().catch((err: Error) => { drainFailure = err.stack ?? err.message; }),
  ]);
}, 60_000);

afterAll(async () => {
  for (const r of busyHeld) r.end('released');
  busyHolder?.destroy();
  fullHolder?.destroy();
  wsHolder?.terminate();
  for (const s of fillers) s.destroy();
  blackhole?.kill('SIGKILL');
  await gw?.stop();
  await drainGw?.stop();
  await Promise.all([okUp?.close(), rawUp?.close(), busyUp?.close(), slowUp?.close(), untrustedUp?.close()]);
  certs.cleanup();
  if (wsUp !== null) {
    for (const c of wsUp.wss.clients) c.terminate();
    wsUp.wss.close();
    wsUp.server.close();
  }
});

// ------------------------------------------------------------------ assertions

/**
 * Headers compared with GET's: everything but what differs per request.
 * In `timed` headers the times (whole seconds) are masked: timesOf()
 * checks them apart.
 */
function comparable(r: RawResponse, timed: readonly string[] = []): string[] {
  return r.headers
    .filter(([k]) => k !== RID && k !== 'date' && k !== 'content-length')
    .map(([k, v]) => `${k}: ${timed.includes(k) ? (/^\d+$/.test(v) ? '#' : v.replace(/\bt=\d+/g, 't=#')) : v}`)
    .sort();
}

/** The times in a timed header's values: the value itself when it is a number (Retry-After), else its `t=` parameters. */
function timesOf(r: RawResponse, name: string): number[] {
  return header(r, name).flatMap((v) => (/^\d+$/.test(v) ? [Number(v)] : [...v.matchAll(/\bt=(\d+)/g)].map((m) => Number(m[1]))));
}


/** The error code of a probe served on a connection that should have closed, if it was a gateway error. */
function probeErrorCode(o: Outcome | undefined): string | null {
  const r = o?.servedAfterClose;
  if (r === undefined) return null;
  try {
    return JSON.parse(r.body.toString('utf8')).error.code ?? null;
  } catch {
    return null;
  }
}

describe('every gateway error × every method', () => {
  for (const t of ALL_TRIGGERS) for (const m of METHODS) it(`${t.error.code} ${m}: ${t.how}`, () => {
    if (t.cannot?.[m] !== undefined) return; // documented in the table
    expect(t === SHUTTING_DOWN ? drainFailure : mainFailure, 'setup').toBeUndefined();
    const o = outcomes.get(key(t, m));
    expect(o, 'case did not run').toBeDefined();
    expect(o!.failure, 'an answer').toBeUndefined();
    const r = o!.response!;
    const e = t.error;

    // Status and reason are the code's.
    expect(r.statusLine).toBe(`HTTP/1.1 ${e.statusLine}`);
    expect(header(r, 'content-type')).toEqual(['application/json']);
    const ids = header(r, RID);
    expect(ids).toHaveLength(1);
    const rid = ids[0]!;
    expect(rid).toMatch(/^[A-Za-z0-9._:-]{1,128}$/);
    const contentLength = header(r, 'content-length');
    expect(contentLength).toHaveLength(1);

    if (m === 'HEAD') {
      // No body, and the length GET's body has (the same body around this request's id).
      expect(r.body.length).toBe(0);
      expect(o!.stray ?? '', 'bytes after a HEAD answer').toBe('');
      const get = outcomes.get(key(t, 'GET'))?.response;
      expect(get, 'GET answer to compare with').toBeDefined();
      // A policy's message of the moment: GET's (a retry time of the same length, see `timed`).
      const expected = t.message === undefined ? errorBody(e, rid) : errorBodyWith(e, JSON.parse(get!.body.toString('utf8')).error.message, rid);
      expect(Number(contentLength[0])).toBe(expected.length);
      const getRid = header(get!, RID)[0]!;
      expect(Number(contentLength[0])).toBe(get!.body.length - getRid.length + rid.length);
    } else {
      expect(Number(contentLength[0])).toBe(r.body.length);
      const body = JSON.parse(r.body.toString('utf8'));
      expect(body.error.code).toBe(e.code);
      expect(body.error.requestId).toBe(rid);
      if (t.message === undefined) {
        expect(r.body.toString('utf8')).toBe(errorBody(e, rid));
      } else {
        expect(body.error.message).toMatch(t.message);
        expect(r.body.toString('utf8')).toBe(errorBodyWith(e, body.error.message, rid));
        // "retry in N s" says what Retry-After says.
        const retryIn = /retry in (\d+) s/.exec(body.error.message);
        if (retryIn !== null) expect(header(r, 'retry-after')).toEqual([retryIn[1]]);
      }
      expect(o!.stray ?? '', 'bytes after the answer').toBe('');
    }

    if (e === Errors.METHOD_NOT_ALLOWED) expect(header(r, 'allow')).toEqual(['TRACE']);
    else expect(header(r, 'allow')).toEqual([]);

    // Same headers as GET's answer to the same trigger (times within a second of GET's).
    if (m !== 'GET') {
      const get = outcomes.get(key(t, 'GET'))?.response;
      expect(get, 'GET answer to compare with').toBeDefined();
      expect(comparable(r, t.timed)).toEqual(comparable(get!, t.timed));
      for (const name of t.timed ?? []) {
        const mine = timesOf(r, name);
        const gets = timesOf(get!, name);
        expect(mine.length, `${name} holds a time`).toBeGreaterThan(0);
        expect(mine.length).toBe(gets.length);
        mine.forEach((v, i) => expect(Math.abs(v - gets[i]!), `${name}: ${v} vs GET's ${gets[i]}`).toBeLessThanOrEqual(1));
      }
    }

    // The connection after the answer.
    if (t.closes) {
      expect(o!.servedAfterClose?.statusLine, 'a request on a connection the gateway said it closes must not be served').toBeUndefined();
      // After a HEAD answer this uWS build cannot close at once: the head
      // ends so that the connection serves nothing more, and whatever the
      // client sends next closes it (workers/transport/uws-respond.ts, README).
      // (When the request declared a body it has not sent, the probe's bytes
      // are that body's: the connection then ends with the body or uWS's idle
      // timeout, still serving nothing, which the assertion above checks.)
      if (m === 'HEAD' && !o!.closed) {
        if (!t.unsentBody) expect(o!.closedAfterProbe, 'the connection closes when anything more arrives').toBe(true);
      } else {
        expect(o!.closed, 'the gateway closes the connection after this answer').toBe(true);
      }
    } else {
      expect(o!.followUpFailure, 'GET /ok on the same connection').toBeUndefined();
      const f = o!.followUp!;
      expect(f.statusLine).toMatch(/^HTTP\/1\.1 200 /);
      expect(JSON.parse(f.body.toString('utf8')).url).toBe('/ok');
    }
  });

  it('the main gateway is alive, no worker restarted, no refused request reached an upstream, and /metrics counts every error the table sent', async () => {
    expect(mainFailure, 'setup').toBeUndefined();
    expect(gw.proc.exitCode).toBeNull();
    expect(gw.proc.signalCode).toBeNull();
    // Still answering.
    const c = await RawConn.open(gw.port);
    c.write(OK_REQUEST);
    expect((await c.read(false)).statusLine).toMatch(/^HTTP\/1\.1 200 /);
    c.destroy();
    // Every request the `ok` upstream saw is a follow-up GET /ok (or the one
    // setup request of /limited/*): the client errors refused on /api/*,
    // /small/*, /limited/* and /storeless/* never left the gateway.
    expect(okUp.seen.filter((s) => s.url !== '/ok').map((s) => `${s.method} ${s.url.slice(0, 40)}`)).toEqual([`GET ${LIMITED_SETUP}`]);
    const text = await scrape(gw.adminPort!);
    expect(metricValue(text, 'turnpike_worker_restarts_total')).toBe(0);
    const sent = new Map<string, number>();
    for (const t of TABLE) {
      const n = METHODS.filter((m) => t.cannot?.[m] === undefined).length;
      sent.set(t.error.code, (sent.get(t.error.code) ?? 0) + n);
    }
    // A probe that a connection left open answered with an error counts too (its own test fails).
    for (const t of TABLE) for (const m of METHODS) {
      const code = probeErrorCode(outcomes.get(key(t, m)));
      if (code !== null) sent.set(code, (sent.get(code) ?? 0) + 1);
    }
    for (const [code, n] of setupErrors) sent.set(code, (sent.get(code) ?? 0) + n);
    const counted = Object.fromEntries([...sent.keys()].map((code) => [code, metricValue(text, `turnpike_gateway_errors_total{reason="${code}"}`)]));
    expect(counted).toEqual(Object.fromEntries(sent));
  });

  it('the access log line of every answer: its status and code, and bytes_sent = the body bytes written (0 for HEAD)', async () => {
    expect(mainFailure, 'setup').toBeUndefined();
    const wrong: string[] = [];
    const check = (lines: any[], t: Trigger, m: Method) => {
      const o = outcomes.get(key(t, m));
      const r = o?.response;
      if (r === undefined) return;
      const rid = header(r, RID)[0];
      const line = lines.find((l) => l.request_id === rid);
      const want = { status: t.error.status, error: t.error.code, bytes_sent: m === 'HEAD' ? 0 : r.body.length };
      const got = line === undefined ? undefined : { status: line.status, error: line.error, bytes_sent: line.bytes_sent };
      if (JSON.stringify(got) !== JSON.stringify(want)) wrong.push(`${t.error.code} ${m} (${t.how}): ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
    };
    let lines: any[] = [];
    await expect.poll(() => {
      lines = accessLines(gw);
      return TABLE.every((t) => METHODS.every((m) => {
        const r = outcomes.get(key(t, m))?.response;
        return r === undefined || lines.some((l) => l.request_id === header(r, RID)[0]);
      }));
    }, { timeout: 5000 }).toBe(true);
    for (const t of TABLE) for (const m of METHODS) check(lines, t, m);
    if (drainFailure === undefined) {
      const dl = await drainGw.exited.then(() => accessLines(drainGw));
      for (const m of METHODS) check(dl, SHUTTING_DOWN, m);
    }
    expect(wrong).toEqual([]);
  });

  it('turnpike_response_size_bytes counts what the access log says was sent: every request, the gateway\'s own answers included', async () => {
    expect(mainFailure, 'setup').toBeUndefined();
    // Once every request counted has its line (the busy upstream's held request has neither yet).
    let text = '';
    let lines: any[] = [];
    await expect.poll(async () => {
      text = await scrape(gw.adminPort!);
      lines = accessLines(gw);
      return sumSamples(text, 'turnpike_requests_total{') === lines.length;
    }, { timeout: 5000 }).toBe(true);
    expect(sumSamples(text, 'turnpike_response_size_bytes_count{')).toBe(lines.length);
    expect(sumSamples(text, 'turnpike_response_size_bytes_sum{')).toBe(lines.reduce((n, l) => n + l.bytes_sent, 0));
    expect(sumSamples(text, 'turnpike_response_size_bytes_sum{route="_none"}')).toBeGreaterThan(0);
  });

  it('the draining gateway answered shutting_down while alive, counted it, then finished its slow request and exited 0', () => {
    expect(drainFailure, 'setup').toBeUndefined();
    expect(drainAliveAfterAnswers).toBe(true);
    const probes = METHODS.filter((m) => probeErrorCode(outcomes.get(key(SHUTTING_DOWN, m))) === 'shutting_down').length;
    expect(metricValue(drainMetrics, 'turnpike_gateway_errors_total{reason="shutting_down"}')).toBe(METHODS.length + probes);
    expect(drainSlowAnswer?.statusLine).toMatch(/^HTTP\/1\.1 200 /);
    expect(drainSlowAnswer?.body.toString()).toBe('slow-ok');
    expect(drainExit).toBe(0);
  });

  it('covers every code in the catalogue', () => {
    const covered = new Set(ALL_TRIGGERS.map((t) => t.error.code));
    expect([...covered].sort()).toEqual(Object.values(Errors).map((e) => e.code).sort());
  });
});
