/**
 * The fuzzer's upstream: a raw `net` server that records exactly the bytes
 * of every request head it receives, checks each one strictly
 * (`parseUpstreamRequest`: property c), reads the body by the gateway's own
 * framing (a strictly checked chunked body, or Content-Length), and answers
 * a small fixed response chosen by the first path segment:
 *
 *   /chunked/...  200, chunked body `hello, world`
 *   /204/...      204, no body
 *   /304/...      304 with an ETag, no body
 *   /head/...     200, Content-Length 11 (`hello world`; HEAD: head only)
 *   /hop/...      200 carrying hop-by-hop fields the gateway must strip
 *   /close/...    200 with `Connection: close`, then closes its side
 *   anything else 200, Content-Length 2, `ok`
 * and a request head it cannot frame gets a 400 (`X-Fz-Up: rejected`) and a close.
 *
 * Every response carries `X-Fz-Up: <kind>` so the client side knows the
 * answer came from here (a 4xx without it is the gateway's own).
 */
import net from 'node:net';
import { parseUpstreamRequest, upstreamChunked, header, type UpstreamHead } from './wire.js';
import { TAG_RE } from './generator.js';

export interface UpstreamRecord {
  seq: number;
  at: number;
  /** The request head exactly as received (latin1), without its empty line. */
  head: string;
  parsed: UpstreamHead;
  rid: string | null;
  tag: string | null;
  /** Decoded body (latin1; capped), once complete. */
  body: string;
  /** Head and body both received and well framed. */
  complete: boolean;
  /** A violation found in the body framing (property c). */
  bodyViolation: string | null;
}

/** The body each response kind carries (for GET; HEAD/204/304 have none). */
export const UPSTREAM_BODIES: Record<string, string> = {
  default: 'ok', chunked: 'hello, world', head: 'hello world', hop: 'hop', close: 'close', '204': '', '304': '',
};

/** Fields the /hop/ response carries that must not reach the client (RFC 9110 7.6.1). */
export const HOP_RESPONSE_FIELDS = ['connection', 'keep-alive', 'x-fz-hop', 'proxy-authenticate', 'trailer', 'upgrade', 'proxy-connection'];

function responseFor(kind: string, head: boolean): string {
  const body = UPSTREAM_BODIES[kind] ?? 'ok';
  const tail = (h: string): string => h + '\r\n' + (head ? '' : body);
  switch (kind) {
    case 'chunked':
      return 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Fz-Up: chunked\r\n\r\n' + (head ? '' : '5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n');
    case '204':
      return 'HTTP/1.1 204 No Content\r\nX-Fz-Up: 204\r\n\r\n';
    case '304':
      return 'HTTP/1.1 304 Not Modified\r\nETag: "fz"\r\nX-Fz-Up: 304\r\n\r\n';
    case 'head':
      return tail('HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Type: text/plain\r\nX-Fz-Up: head\r\n');
    case 'hop':
      return tail('HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Fz-Hop\r\nKeep-Alive: timeout=5\r\nX-Fz-Hop: secret\r\n' +
        'Proxy-Authenticate: Basic realm="x"\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\nUpgrade: h2c\r\nContent-Length: 3\r\nX-Fz-Up: hop\r\n');
    case 'close':
      return tail('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\nX-Fz-Up: close\r\n');
    default:
      return tail('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Fz-Up: default\r\n');
  }
}

function kindOf(target: string): string {
  const m = /^\/([^/?]*)/.exec(target);
  const first = m?.[1] ?? '';
  return first in UPSTREAM_BODIES && first !== 'default' ? first : 'default';
}

const BODY_CAP = 256 * 1024;
/** FUZZ_DEBUG_UPSTREAM=1 logs every read (for replays of one case). */
const DEBUG = process.env.FUZZ_DEBUG_UPSTREAM === '1';
const HEAD_CAP = 1024 * 1024;

export class RecordingUpstream {
  port = 0;
  private server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private seq = 0;
  /** Records by x-request-id (the gateway adds one to every request). */
  readonly byRid = new Map<string, UpstreamRecord>();
  /** Records by correlation tag (see generator.ts), for the deferred per-case checks. */
  readonly byTag = new Map<string, UpstreamRecord[]>();
  /** Called when a head arrives (the harness checks it against the gateway's own 4xx answers). */
  onHead: (rec: UpstreamRecord) => void = () => {};
  /** Called when a record gets a body framing violation after its head was seen. */
  onBodyViolation: (rec: UpstreamRecord) => void = () => {};
  heads = 0;
  connections = 0;

  constructor() {
    this.server = net.createServer((s) => this.onConnection(s));
  }

  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  /** Drops records older than `ms` (the harness keeps memory flat over long runs). */
  prune(olderThan: number): void {
    for (const [k, rec] of this.byRid) if (rec.at < olderThan) this.byRid.delete(k);
    for (const [k, list] of this.byTag) if (list[list.length - 1]!.at < olderThan) this.byTag.delete(k);
  }

  private onConnection(socket: net.Socket): void {
    this.connections++;
    this.sockets.add(socket);
    socket.setNoDelay(true);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => {});
    let buf = '';
    let cur: UpstreamRecord | null = null;
    socket.on('data', (d: Buffer) => {
      if (DEBUG) process.stderr.write(`[upstream ${socket.remotePort}] ${JSON.stringify(d.toString('latin1').slice(0, 400))}\n`);
      buf += d.toString('latin1');
      for (;;) {
        if (cur === null) {
          const he = buf.indexOf('\r\n\r\n');
          if (he < 0) {
            if (buf.length > HEAD_CAP) socket.destroy();
            return;
          }
          const head = buf.slice(0, he);
          buf = buf.slice(he + 4);
          cur = this.record(head);
          if (cur.parsed.framing === 'invalid' || cur.parsed.violations.includes('upstream-bad-request-line')) {
            // Cannot frame what follows: answer 400 and close, as a server must (RFC 9112 6.3).
            socket.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nX-Fz-Up: rejected\r\nConnection: close\r\n\r\n');
            cur = null;
            return;
          }
        }
        const rec: UpstreamRecord = cur;
        let body = '';
        if (rec.parsed.framing === 'length') {
          if (buf.length < rec.parsed.length) return;
          body = buf.slice(0, rec.parsed.length);
          buf = buf.slice(rec.parsed.length);
        } else if (rec.parsed.framing === 'chunked') {
          const r = upstreamChunked(buf, 0);
          if (r === 'more') {
            if (buf.length > 64 * 1024 * 1024) socket.destroy();
            return;
          }
          if (typeof r === 'string') {
            rec.bodyViolation = 'upstream-bad-chunked-body:' + r;
            this.onBodyViolation(rec);
            socket.destroy();
            cur = null;
            return;
          }
          body = r.body;
          buf = buf.slice(r.end);
        }
        rec.body = body.length > BODY_CAP ? body.slice(0, BODY_CAP) : body;
        rec.complete = true;
        cur = null;
        const kind = kindOf(rec.parsed.target);
        socket.write(responseFor(kind, rec.parsed.method === 'HEAD'));
        if (kind === 'close') {
          socket.end();
          return;
        }
      }
    });
  }

  private record(head: string): UpstreamRecord {
    this.heads++;
    const parsed = parseUpstreamRequest(head);
    const rid = header(parsed.headers, 'x-request-id') ?? null;
    TAG_RE.lastIndex = 0;
    const tag = TAG_RE.exec(parsed.target)?.[0] ?? (rid !== null ? (/FzT[0-9a-f]{8}/.exec(rid)?.[0] ?? null) : null);
    const rec: UpstreamRecord = { seq: ++this.seq, at: performance.now(), head, parsed, rid, tag, body: '', complete: false, bodyViolation: null };
    if (rid !== null) this.byRid.set(rid, rec);
    if (tag !== null) {
      const list = this.byTag.get(tag);
      if (list) list.push(rec);
      else this.byTag.set(tag, [rec]);
    }
    this.onHead(rec);
    return rec;
  }
}
