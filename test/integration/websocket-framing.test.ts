/**
 * WebSocket framing through the gateway, Autobahn-style (RFC 6455 section 5
 * framing, 5.5 control frames, 7.4 close codes, 8.1 UTF-8): a raw TCP client
 * (node:net) does a real handshake, then writes hand-made frames (masking,
 * FIN and opcodes, 7/16/64-bit lengths, RSV bits) to the gateway, and reads
 * and parses every frame the gateway sends back (the close code it gets is
 * the one in the gateway's Close frame). Behind the gateway a `ws` upstream
 * records exactly what it receives (bytes, text or binary, order, pings,
 * its close code and reason) and sends messages and closes on the test's
 * command (upstream-to-client rows).
 *
 * Who does what, as the tunnel (workers/transport/websocket/tunnel.ts) says:
 * the gateway's server side (uWS on the uws backend) reassembles fragmented
 * messages, answers the client's pings itself (pings are not relayed: the
 * upstream must see none) and fails the connection on a protocol error with
 * a Close frame carrying 1002 (1007 for invalid UTF-8: RFC 6455 7.1.7 and
 * 8.1); the upstream is then closed too, having received none of the bad
 * message. The upstream's `ws` reassembles its fragments the same way.
 *
 * The backend is TURNPIKE_SERVER__BACKEND's (uWS when unset), like the other
 * proxy suites: the gateway process inherits the variable.
 *
 * Known findings (KNOWN_FINDINGS below, like test/fuzz/oracle.ts's): RFC 6455
 * deviations of uWebSockets.js 20.30's own C++ frame parser, which runs before
 * any JS (the gateway cannot fix them). A row a finding affects names it in
 * its title (`[WS-U1 on uws]`) and, on a backend the finding lists, asserts
 * the exact behaviour observed there instead of the RFC's; on every other
 * backend (node) it asserts the RFC behaviour. When a build stops showing a
 * finding (the RFC answer comes), the row fails and says to remove it.
 *
 * | id    | backends | summary                                                                                   |
 * |-------|----------|-------------------------------------------------------------------------------------------|
 * | WS-U1 | uws      | a protocol error or invalid UTF-8 ends with a TCP close and no Close frame (not 1002/1007) |
 * | WS-U2 | uws      | valid client close codes 1012-1014 and 3000-3999 are lost: empty Close back, upstream 1001 |
 * | WS-U3 | uws      | an invalid Close frame (1-byte payload, unsendable code, non-UTF-8 reason) gets an empty Close, not 1002/1007 |
 * | WS-U4 | uws      | the MASK bit is ignored: an unmasked frame stalls, or garbage is relayed upstream          |
 */
import crypto from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';

type Backend = 'uws' | 'node';
const BACKEND: Backend = process.env.TURNPIKE_SERVER__BACKEND === 'node' ? 'node' : 'uws';

// ---------------------------------------------------------------- known findings

type FindingId = 'WS-U1' | 'WS-U2' | 'WS-U3' | 'WS-U4';

/** An RFC 6455 deviation of a backend that the gateway's JS cannot fix (the table in the header comment). */
interface KnownFinding {
  id: FindingId;
  /** The backends it shows on; the rows that name it assert the RFC behaviour on every other backend. */
  backends: readonly Backend[];
  summary: string;
}

const UWS: readonly Backend[] = ['uws'];

/**
 * The WebSocket framing deviations of the uWS build (uWebSockets.js 20.30's
 * C++ parser; the node backend passes every row). Delete an entry (or its
 * backend) when a build fixes it: its rows then fail, saying so.
 */
const KNOWN_FINDINGS: readonly KnownFinding[] = [
  {
    id: 'WS-U1',
    backends: UWS,
    summary: 'On a protocol error (control frame over 125 bytes or fragmented, RSV bits, opcode 0x3/0xB, continuation with no '
      + 'message, new message inside a fragmented one, 126-byte Close) and on invalid UTF-8 in a text message, uWS closes the TCP '
      + 'connection without a Close frame (RFC 6455 7.1.7 / 8.1: Close 1002 / 1007). The upstream gets 1001 "client connection '
      + 'lost" and none of the bad message.',
  },
  {
    id: 'WS-U2',
    backends: UWS,
    summary: 'uWS refuses the valid client close codes 1012, 1013, 1014 and 3000-3999 (RFC 6455 7.4.2, IANA registry) and reports '
      + '1006 to JS: the client gets an empty Close back, the upstream 1001 "client connection lost" instead of the code and reason.',
  },
  {
    id: 'WS-U3',
    backends: UWS,
    summary: 'uWS answers a Close frame the peer may not send (1-byte payload; codes 0-999, 1004-1006, 1015, 1016-2999, 5000+; '
      + 'a reason that is not UTF-8) with an empty Close instead of 1002 / 1007 (RFC 6455 7.4.1, 8.1). The upstream gets 1005 (no '
      + 'code) for the 1-byte payload, 1001 "client connection lost" otherwise.',
  },
  {
    id: 'WS-U4',
    backends: UWS,
    summary: 'uWS ignores the MASK bit (RFC 6455 5.1: fail the connection on an unmasked client frame): it takes the first 4 '
      + 'payload bytes as the key, so an unmasked frame alone stalls (no Close; the upstream stays open) and, with bytes after it, '
      + 'garbage is relayed upstream as a message before the rest fails to parse and the TCP connection drops.',
  },
];

function findingOf(id: FindingId): KnownFinding {
  const f = KNOWN_FINDINGS.find((k) => k.id === id);
  if (f === undefined) throw new Error(`${id} is not in KNOWN_FINDINGS: remove it from the rows that name it`);
  return f;
}

/** The finding `id` when it shows on this run's backend (its rows then assert the uWS behaviour), else null. */
function active(id: FindingId): KnownFinding | null {
  const f = findingOf(id);
  return f.backends.includes(BACKEND) ? f : null;
}

/**
 * Fails, saying to remove the finding, when `got` (what the client saw) is
 * the RFC answer: the backend no longer shows it.
 */
function stillShows(f: KnownFinding, got: string, rfc: string): void {
  if (got === rfc) {
    expect.fail(`${f.id} no longer shows on the ${BACKEND} backend (it gave the RFC 6455 answer: ${rfc}): remove ${f.id} `
      + `(or its backend ${BACKEND}) from KNOWN_FINDINGS and its exact ${BACKEND} behaviour from the rows that name it`);
  }
}

/** An upstream close as compared in this file: code and reason, or that it is still open. */
function describeUpstreamClose(uc: { code: number; reason: Buffer } | null): string {
  return uc === null ? 'still open' : `${uc.code} ${JSON.stringify(uc.reason.toString())}`;
}
/** Every wait in this file is bounded by this (ms); a row normally takes a few ms. */
const WAIT_MS = 5_000;
const MIB = 1 << 20;

// ---------------------------------------------------------------- frames

const OP_CONT = 0x0;
const OP_TEXT = 0x1;
const OP_BINARY = 0x2;
const OP_CLOSE = 0x8;
const OP_PING = 0x9;
const OP_PONG = 0xa;

interface FrameOpts {
  /** FIN bit (default true). */
  fin?: boolean;
  /** RSV1..3 as the 3 bits under FIN (0-7). */
  rsv?: number;
  /** Mask the payload with a random key (default true: a client MUST mask, RFC 6455 5.3). */
  mask?: boolean;
  /** The 4-byte masking key instead of a random one (a row whose bytes must be the same on every run). */
  key?: Buffer;
}

/** One frame as RFC 6455 5.2 lays it out: the shortest length encoding (7, 16 or 64 bits) for the payload. */
function frame(opcode: number, payload: Buffer | string = Buffer.alloc(0), o: FrameOpts = {}): Buffer {
  const data = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const n = data.length;
  const masked = o.mask ?? true;
  const lenBytes = n < 126 ? 0 : n < 65536 ? 2 : 8;
  const head = Buffer.alloc(2 + lenBytes + (masked ? 4 : 0));
  head[0] = ((o.fin ?? true) ? 0x80 : 0) | (((o.rsv ?? 0) & 7) << 4) | (opcode & 0xf);
  head[1] = (masked ? 0x80 : 0) | (n < 126 ? n : n < 65536 ? 126 : 127);
  if (lenBytes === 2) head.writeUInt16BE(n, 2);
  else if (lenBytes === 8) head.writeBigUInt64BE(BigInt(n), 2);
  if (!masked) return Buffer.concat([head, data]);
  const key = o.key ?? crypto.randomBytes(4);
  key.copy(head, 2 + lenBytes);
  const body = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) body[i] = data[i]! ^ key[i & 3]!;
  return Buffer.concat([head, body]);
}

/** A Close frame's payload: 2-byte code then the reason (RFC 6455 5.5.1). */
function closePayload(code: number, reason: Buffer | string = ''): Buffer {
  const r = typeof reason === 'string' ? Buffer.from(reason) : reason;
  const b = Buffer.alloc(2 + r.length);
  b.writeUInt16BE(code, 0);
  r.copy(b, 2);
  return b;
}

/** `data` cut into `n`-byte fragments: a text/binary frame then continuations, FIN on the last. */
function fragments(opcode: number, data: Buffer | string, n: number): Buffer[] {
  const b = typeof data === 'string' ? Buffer.from(data) : data;
  const out: Buffer[] = [];
  for (let at = 0; at < b.length || at === 0; at += n) {
    const last = at + n >= b.length;
    out.push(frame(at === 0 ? opcode : OP_CONT, b.subarray(at, at + n), { fin: last }));
    if (last) break;
  }
  return out;
}

interface Frame { fin: boolean; rsv: number; opcode: number; masked: boolean; payload: Buffer }
interface Msg { binary: boolean; data: Buffer }
const T = (s: string | Buffer): Msg => ({ binary: false, data: Buffer.from(s) });
const B = (b: Buffer | number[]): Msg => ({ binary: true, data: Buffer.from(b) });

/** What a raw client got when the connection ended: the gateway's Close frame, TCP closed without one, or nothing after `waitedMs`. */
function describeClose(f: Frame | null, c?: RawClient, waitedMs = WAIT_MS): string {
  if (f === null) return c !== undefined && !c.tcpClosed ? `no Close frame, TCP still open after ${waitedMs} ms` : 'TCP closed without a Close frame';
  if (f.payload.length === 0) return 'close (no code)';
  if (f.payload.length === 1) return 'close (1-byte payload)';
  return `close ${f.payload.readUInt16BE(0)}`;
}

/**
 * A raw WebSocket client over node:net: the handshake of RFC 6455 4.1 (the
 * 101's Sec-WebSocket-Accept checked), then every frame the gateway sends
 * parsed (server frames are unmasked; a masked one is recorded as such).
 */
class RawClient {
  private buf: Buffer = Buffer.alloc(0);
  /** Every frame received, in order. */
  readonly frames: Frame[] = [];
  /** Whole messages reassembled from text/binary/continuation frames. */
  readonly messages: Msg[] = [];
  private partial: { binary: boolean; parts: Buffer[] } | null = null;
  /** The gateway's Close frame, once received. */
  closeFrame: Frame | null = null;
  tcpClosed = false;
  protocol: string | null = null;
  private waiters: (() => void)[] = [];

  private constructor(readonly sock: net.Socket) {}

  /** Opens `path` on the gateway; resolves once the 101 came (rejects with the status line otherwise). */
  static connect(port: number, path: string, protocols: string[] = []): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const sock = net.connect(port, '127.0.0.1');
      const c = new RawClient(sock);
      const key = crypto.randomBytes(16).toString('base64');
      const accept = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
      let head = Buffer.alloc(0);
      let upgraded = false;
      const timer = setTimeout(() => { sock.destroy(); reject(new Error(`no 101 for ${path} in ${WAIT_MS} ms`)); }, WAIT_MS);
      sock.on('error', (err) => { if (!upgraded) { clearTimeout(timer); reject(err); } });
      sock.on('close', () => {
        c.tcpClosed = true;
        c.wake();
        if (!upgraded) { clearTimeout(timer); reject(new Error(`connection closed before the 101: ${head.toString('latin1')}`)); }
      });
      sock.on('data', (d: Buffer) => {
        if (upgraded) { c.onData(d); return; }
        head = Buffer.concat([head, d]);
        const end = head.indexOf('\r\n\r\n');
        if (end === -1) return;
        upgraded = true;
        clearTimeout(timer);
        const lines = head.subarray(0, end).toString('latin1').split('\r\n');
        const hdr = new Map(lines.slice(1).map((l) => [l.slice(0, l.indexOf(':')).trim().toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
        if (!/^HTTP\/1\.1 101 /.test(lines[0]!)) { sock.destroy(); reject(new Error(`upgrade refused: ${head.toString('latin1')}`)); return; }
        if (hdr.get('sec-websocket-accept') !== accept) { sock.destroy(); reject(new Error(`bad Sec-WebSocket-Accept: ${lines.join(' | ')}`)); return; }
        c.protocol = hdr.get('sec-websocket-protocol') ?? null;
        resolve(c);
        const rest = head.subarray(end + 4);
        if (rest.length > 0) c.onData(rest);
      });
      sock.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n`
        + `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n`
        + (protocols.length > 0 ? `Sec-WebSocket-Protocol: ${protocols.join(', ')}\r\n` : '') + '\r\n');
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    for (;;) {
      const b = this.buf;
      if (b.length < 2) break;
      let n = b[1]! & 0x7f;
      let at = 2;
      if (n === 126) { if (b.length < 4) break; n = b.readUInt16BE(2); at = 4; }
      else if (n === 127) { if (b.length < 10) break; n = Number(b.readBigUInt64BE(2)); at = 10; }
      const masked = (b[1]! & 0x80) !== 0;
      const key = masked ? b.subarray(at, at + 4) : null;
      if (masked) at += 4;
      if (b.length < at + n) break;
      const payload = Buffer.from(b.subarray(at, at + n));
      if (key !== null) for (let i = 0; i < n; i++) payload[i] ^= key[i & 3]!;
      const f: Frame = { fin: (b[0]! & 0x80) !== 0, rsv: (b[0]! >> 4) & 7, opcode: b[0]! & 0xf, masked, payload };
      this.buf = b.subarray(at + n);
      this.frames.push(f);
      if (f.opcode === OP_CLOSE && this.closeFrame === null) this.closeFrame = f;
      if (f.opcode === OP_TEXT || f.opcode === OP_BINARY) this.partial = { binary: f.opcode === OP_BINARY, parts: [f.payload] };
      else if (f.opcode === OP_CONT && this.partial !== null) this.partial.parts.push(f.payload);
      if (f.fin && f.opcode < 8 && this.partial !== null) {
        this.messages.push({ binary: this.partial.binary, data: Buffer.concat(this.partial.parts) });
        this.partial = null;
      }
    }
    this.wake();
  }

  send(...frames: Buffer[]): void {
    this.sock.write(frames.length === 1 ? frames[0]! : Buffer.concat(frames));
  }

  /** Polls (event-driven) until `cond`, or the connection closed, or `ms` passed. */
  async until(cond: () => boolean, ms = WAIT_MS): Promise<boolean> {
    const end = Date.now() + ms;
    while (!cond()) {
      if (this.tcpClosed || Date.now() > end) return cond();
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, end - Date.now()));
        this.waiters.push(() => { clearTimeout(t); r(); });
      });
    }
    return true;
  }

  /** The gateway's Close frame (null: the TCP connection closed, or `ms` passed, without one). */
  async closed(ms = WAIT_MS): Promise<Frame | null> {
    await this.until(() => this.closeFrame !== null, ms);
    return this.closeFrame;
  }

  /** Waits for the gateway to close the TCP connection (it closes first after the close handshake, RFC 6455 7.1.1). */
  async tcpEnd(): Promise<boolean> {
    return this.until(() => this.tcpClosed);
  }

  destroy(): void {
    this.sock.destroy();
  }
}

// ---------------------------------------------------------------- upstream

/** What the upstream saw of one connection (by the `id` query parameter of the client's URL). */
interface Seen {
  ws: WebSocket;
  protocol: string;
  messages: Msg[];
  pings: Buffer[];
  close: { code: number; reason: Buffer } | null;
  closedP: Promise<{ code: number; reason: Buffer }>;
}
const seen = new Map<string, Seen>();
let upServer: http.Server;
let wss: WebSocketServer;
let gw: Gateway;
let counter = 0;

function startUpstream(): Promise<number> {
  upServer = http.createServer((_req, res) => res.end('plain'));
  wss = new WebSocketServer({
    server: upServer,
    maxPayload: 64 * MIB,
    perMessageDeflate: false,
    handleProtocols: (set: Set<string>) => (set.has('chat.v2') ? 'chat.v2' : false),
  });
  wss.on('connection', (ws: WebSocket, req: http.IncomingMessage) => {
    const id = new URL(req.url!, 'http://x').searchParams.get('id') ?? 'none';
    const s: Seen = { ws, protocol: ws.protocol, messages: [], pings: [], close: null, closedP: null! };
    s.closedP = new Promise((r) => ws.on('close', (code: number, reason: Buffer) => { s.close = { code, reason }; r(s.close); }));
    ws.on('message', (data: Buffer, binary: boolean) => s.messages.push({ binary, data }));
    ws.on('ping', (d: Buffer) => s.pings.push(d));
    ws.on('error', () => {});
    seen.set(id, s);
  });
  return new Promise((r) => upServer.listen(0, '127.0.0.1', () => r((upServer.address() as net.AddressInfo).port)));
}

async function upstreamOf(id: string): Promise<Seen> {
  const end = Date.now() + WAIT_MS;
  while (!seen.has(id) && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
  const s = seen.get(id);
  if (!s) throw new Error(`the upstream never saw connection ${id}`);
  return s;
}

/** Resolves the upstream's close, or null when it is still open after WAIT_MS. */
function upstreamClosed(s: Seen): Promise<{ code: number; reason: Buffer } | null> {
  return Promise.race([s.closedP, new Promise<null>((r) => setTimeout(() => r(null), WAIT_MS))]);
}

/** A raw client on a fresh upstream connection (`chat.v2` offered; the upstream chooses it). */
async function open(): Promise<{ c: RawClient; up: Seen }> {
  const id = `f${++counter}`;
  const c = await RawClient.connect(gw.port, `/ws/t?id=${id}`, ['chat.v1', 'chat.v2']);
  return { c, up: await upstreamOf(id) };
}

/** Messages compared as readable values: a failure shows kind, length and the first bytes (hex), never 1 MiB of digits. */
function show(ms: Msg[]): string[] {
  return ms.map((m) => `${m.binary ? 'binary' : 'text'} ${m.data.length} ${crypto.createHash('sha1').update(m.data).digest('hex').slice(0, 12)} ${m.data.subarray(0, 24).toString('hex')}`);
}

beforeAll(async () => {
  const upPort = await startUpstream();
  gw = await startGateway(baseConfig({
    upstreams: { up: { targets: [`http://127.0.0.1:${upPort}`] } },
    routes: [
      // No gateway pings or idle closes: every frame the client gets is one the test caused.
      { id: 'ws', path: '/ws/*', upstream: 'up', websocket: { maxMessageBytes: 2 * MIB, pingIntervalMs: 0, idleTimeoutMs: 0 } },
    ],
  }));
}, 60_000);

afterAll(async () => {
  await gw?.stop();
  for (const s of seen.values()) s.ws.terminate();
  wss?.close();
  upServer?.close();
});

// ---------------------------------------------------------------- client to upstream

/** Valid UTF-8 with 2-, 3- and 4-byte sequences (split anywhere by 1-byte fragments). */
const UTF8 = 'κόσμε €𝄞 ok';
const BIN = Buffer.from(Array.from({ length: 300 }, (_, i) => (i * 7) & 0xff));
const ping125 = Buffer.alloc(125, 0x61);
ping125.write('ping-125', 0);

interface Row {
  name: string;
  /** Frames written after the handshake, in one write (a row that needs more writes lists them in `writes`). */
  frames: Buffer[];
  /** What the upstream must receive, exactly, in order. */
  upstream: Msg[];
  /** Pong payloads the client must get back, in order (the gateway answers; the upstream sees no ping). */
  pongs?: Buffer[];
  /**
   * The close: a number is the code of the Close frame the gateway must send
   * (a protocol error: the client sent nothing more); omitted, the row ends
   * with the client's Close 1000, which must come back as 1000.
   */
  close?: number;
  /** What the row gives, exactly, on the backends of a known finding (instead of the RFC answer `close`). */
  deviation?: Deviation;
}

/** A row's exact behaviour on a backend with a known finding. */
interface Deviation {
  finding: FindingId;
  /** What the client sees (describeClose). */
  client: string;
  /** The upstream's close (describeUpstreamClose). */
  upstream: string;
  /** What the upstream receives, exactly, when not the row's `upstream`. */
  messages?: Msg[];
  /**
   * A stall: the client waits this long (ms) for an answer, checks that none
   * came and that the upstream is still open, then drops the TCP connection.
   */
  stallMs?: number;
}

/** The upstream's close when the gateway saw the client's connection end without a usable close code. */
const LOST = '1001 "client connection lost"';
/** WS-U1: a protocol error ends with a TCP close and no Close frame; the upstream is told the client went away. */
const U1: Deviation = { finding: 'WS-U1', client: 'TCP closed without a Close frame', upstream: LOST };
/** WS-U3: an invalid Close frame gets an empty Close back; `upstream` is the upstream's close as observed. */
const U3 = (upstream: string): Deviation => ({ finding: 'WS-U3', client: 'close (no code)', upstream });
/** WS-U4, alone: uWS waits for the 4 payload bytes it is missing (it read the first 4 as the key): nothing comes back. */
const U4_STALL_MS = 500;

/**
 * WS-U4, with a frame behind: the masked frame after the unmasked one has a
 * fixed key so that what uWS makes of the bytes is the same on every run. It
 * reads the unmasked frame's `unma` as the key and `sked` plus this frame's
 * first 4 bytes (0x82 0x85 0x11 0x22) as the 8-byte payload, relays that
 * garbage upstream, then parses 0x33 (RSV2, RSV3, opcode 0x3: a protocol
 * error, WS-U1) and drops the TCP connection.
 */
const AFTER_UNMASKED = frame(OP_BINARY, Buffer.from('after'), { key: Buffer.from([0x11, 0x22, 0x33, 0x44]) });
const U4_GARBAGE = Buffer.from(Buffer.concat([Buffer.from('sked'), AFTER_UNMASKED.subarray(0, 4)]).map((b, i) => b ^ Buffer.from('unma')[i & 3]!));

/** WS-U2: the valid client close codes (of those the close-code test sends) that uWS loses, and what the row then gives. */
const U2_CODES: readonly number[] = [1012, 1013, 1014, 3000, 3999];
const U2: Deviation = { finding: 'WS-U2', client: 'close (no code)', upstream: LOST };

const rows: Row[] = [
  // --- fragmentation (RFC 6455 5.4): delivered whole, as one message of the first frame's kind
  { name: 'a text message in 3 fragments', frames: fragments(OP_TEXT, 'fragmented!', 4), upstream: [T('fragmented!')] },
  { name: 'a text message in 1-byte fragments, UTF-8 sequences split between them', frames: fragments(OP_TEXT, UTF8, 1), upstream: [T(UTF8)] },
  { name: 'a binary message in 300 1-byte fragments', frames: fragments(OP_BINARY, BIN, 1), upstream: [B(BIN)] },
  { name: 'a binary message in 64 KiB fragments (256 KiB)', frames: fragments(OP_BINARY, Buffer.alloc(256 * 1024, 0x5a), 65536), upstream: [B(Buffer.alloc(256 * 1024, 0x5a))] },
  { name: 'fragments with empty payloads (first, middle and last)', frames: [frame(OP_TEXT, '', { fin: false }), frame(OP_CONT, 'ab', { fin: false }), frame(OP_CONT, '', { fin: false }), frame(OP_CONT, 'cd', { fin: false }), frame(OP_CONT, '', { fin: true })], upstream: [T('abcd')] },
  { name: 'an empty text and an empty binary message', frames: [frame(OP_TEXT, ''), frame(OP_BINARY, Buffer.alloc(0))], upstream: [T(''), B([])] },
  {
    name: 'a ping between the fragments of a text message',
    frames: [frame(OP_TEXT, 'frag', { fin: false }), frame(OP_PING, 'mid'), frame(OP_CONT, 'mented', { fin: true })],
    upstream: [T('fragmented')], pongs: [Buffer.from('mid')],
  },
  {
    name: 'pings and a pong between 1-byte fragments of a binary message',
    frames: [frame(OP_BINARY, Buffer.from([1]), { fin: false }), frame(OP_PING, 'p1'), frame(OP_CONT, Buffer.from([2]), { fin: false }), frame(OP_PONG, 'unsolicited'), frame(OP_PING, 'p2'), frame(OP_CONT, Buffer.from([3]), { fin: true })],
    upstream: [B([1, 2, 3])], pongs: [Buffer.from('p1'), Buffer.from('p2')],
  },
  // --- control frames (RFC 6455 5.5): pings answered by the gateway with an identical payload
  { name: 'a ping with an empty payload', frames: [frame(OP_PING)], upstream: [], pongs: [Buffer.alloc(0)] },
  { name: 'a ping with a 125-byte payload (the largest)', frames: [frame(OP_PING, ping125)], upstream: [], pongs: [ping125] },
  { name: 'an unsolicited pong is ignored', frames: [frame(OP_PONG, 'x'), frame(OP_TEXT, 'after')], upstream: [T('after')] },
  { name: 'a ping with a 126-byte payload (control frames are at most 125)', frames: [frame(OP_PING, Buffer.alloc(126, 1))], upstream: [], close: 1002, deviation: U1 },
  { name: 'a fragmented ping (FIN clear on a control frame)', frames: [frame(OP_PING, 'a', { fin: false }), frame(OP_CONT, 'b')], upstream: [], close: 1002, deviation: U1 },
  // --- lengths (RFC 6455 5.2): 7-bit up to 125, 16-bit up to 65535, 64-bit above
  { name: '125 bytes (the largest 7-bit length)', frames: [frame(OP_BINARY, Buffer.alloc(125, 3))], upstream: [B(Buffer.alloc(125, 3))] },
  { name: '126 bytes (the smallest 16-bit length)', frames: [frame(OP_BINARY, Buffer.alloc(126, 4))], upstream: [B(Buffer.alloc(126, 4))] },
  { name: '65535 bytes (the largest 16-bit length)', frames: [frame(OP_BINARY, Buffer.alloc(65535, 5))], upstream: [B(Buffer.alloc(65535, 5))] },
  { name: '65536 bytes (the smallest 64-bit length)', frames: [frame(OP_BINARY, Buffer.alloc(65536, 6))], upstream: [B(Buffer.alloc(65536, 6))] },
  { name: '1 MiB in one frame (64-bit length), text', frames: [frame(OP_TEXT, Buffer.alloc(MIB, 0x41))], upstream: [T(Buffer.alloc(MIB, 0x41))] },
  // --- UTF-8 (RFC 6455 8.1): invalid text fails the connection with 1007; the upstream gets none of it
  { name: 'invalid UTF-8 in a single-frame text message (0xff)', frames: [frame(OP_TEXT, 'ok'), frame(OP_TEXT, Buffer.from([0x68, 0x69, 0xff]))], upstream: [T('ok')], close: 1007, deviation: U1 },
  { name: 'invalid UTF-8: an encoded surrogate (ED A0 80)', frames: [frame(OP_TEXT, Buffer.from([0xce, 0xba, 0xed, 0xa0, 0x80, 0x65]))], upstream: [], close: 1007, deviation: U1 },
  { name: 'invalid UTF-8: an overlong encoding (C0 AF)', frames: [frame(OP_TEXT, Buffer.from([0x61, 0xc0, 0xaf]))], upstream: [], close: 1007, deviation: U1 },
  {
    name: 'invalid UTF-8 in the last of 3 fragments of a text message',
    frames: [frame(OP_TEXT, 'good'), frame(OP_TEXT, 'héllo', { fin: false }), frame(OP_CONT, ' wor', { fin: false }), frame(OP_CONT, Buffer.from([0x6c, 0xf8, 0x88, 0x80, 0x80, 0x80]), { fin: true })],
    upstream: [T('good')], close: 1007, deviation: U1,
  },
  { name: 'a truncated UTF-8 sequence at the end of a fragmented text message', frames: [frame(OP_TEXT, 'ab', { fin: false }), frame(OP_CONT, Buffer.from([0xe2, 0x82]), { fin: true })], upstream: [], close: 1007, deviation: U1 },
  // --- protocol errors (RFC 6455 5.1-5.4): the gateway fails the connection with 1002
  { name: 'RSV1 set without a negotiated extension', frames: [frame(OP_TEXT, 'ok'), frame(OP_TEXT, 'rsv1', { rsv: 4 })], upstream: [T('ok')], close: 1002, deviation: U1 },
  { name: 'RSV2 set', frames: [frame(OP_BINARY, Buffer.from([1]), { rsv: 2 })], upstream: [], close: 1002, deviation: U1 },
  { name: 'RSV3 set on a ping', frames: [frame(OP_PING, 'x', { rsv: 1 })], upstream: [], close: 1002, deviation: U1 },
  {
    name: 'an unmasked client frame', frames: [frame(OP_TEXT, 'ok'), frame(OP_TEXT, 'unmasked', { mask: false })], upstream: [T('ok')], close: 1002,
    deviation: { finding: 'WS-U4', client: `no Close frame, TCP still open after ${U4_STALL_MS} ms`, upstream: LOST, stallMs: U4_STALL_MS },
  },
  {
    name: 'an unmasked client frame followed by a masked one (nothing after the unmasked frame is relayed)',
    frames: [frame(OP_TEXT, 'ok'), frame(OP_BINARY, Buffer.from('unmasked'), { mask: false }), AFTER_UNMASKED], upstream: [T('ok')], close: 1002,
    deviation: { finding: 'WS-U4', client: 'TCP closed without a Close frame', upstream: LOST, messages: [T('ok'), B(U4_GARBAGE)] },
  },
  { name: 'reserved data opcode 0x3', frames: [frame(0x3, 'x')], upstream: [], close: 1002, deviation: U1 },
  { name: 'reserved control opcode 0xB', frames: [frame(0xb, 'x')], upstream: [], close: 1002, deviation: U1 },
  { name: 'a continuation frame with no message started', frames: [frame(OP_CONT, 'orphan', { fin: true })], upstream: [], close: 1002, deviation: U1 },
  { name: 'a new text frame while a fragmented message is open', frames: [frame(OP_TEXT, 'one', { fin: false }), frame(OP_TEXT, 'two', { fin: true })], upstream: [], close: 1002, deviation: U1 },
  // --- close frames (RFC 6455 5.5.1, 7.4): a valid code reaches the upstream and is echoed
  { name: 'close 1-byte payload', frames: [frame(OP_CLOSE, Buffer.from([0x03]))], upstream: [], close: 1002, deviation: U3('1005 ""') },
  ...[1005, 1006, 1015, 999, 0, 1004, 1016, 2999, 5000].map((code): Row => ({
    name: `close with code ${code} on the wire (may not be sent)`, frames: [frame(OP_CLOSE, closePayload(code, 'bad'))], upstream: [], close: 1002, deviation: U3(LOST),
  })),
  { name: 'close 1000 with a reason whose UTF-8 is invalid', frames: [frame(OP_CLOSE, closePayload(1000, Buffer.from([0x62, 0x79, 0xff])))], upstream: [], close: 1007, deviation: U3(LOST) },
  { name: 'a close frame with a 126-byte payload', frames: [frame(OP_CLOSE, closePayload(1000, Buffer.alloc(124, 0x61)))], upstream: [], close: 1002, deviation: U1 },
  // --- many messages
  {
    name: '1,000 ordered messages, text and binary alternating, in one write',
    frames: Array.from({ length: 1000 }, (_, i) => (i % 2 === 0 ? frame(OP_TEXT, `message ${i}`) : frame(OP_BINARY, Buffer.from(`binary ${i}`)))),
    upstream: Array.from({ length: 1000 }, (_, i) => (i % 2 === 0 ? T(`message ${i}`) : B(Buffer.from(`binary ${i}`)))),
  },
];

describe(`websocket framing through the gateway, client to upstream (${BACKEND} backend)`, () => {
  it('handshake: 101 with the Sec-WebSocket-Accept of the key, and the subprotocol the upstream chose', async () => {
    const { c, up } = await open();
    expect(c.protocol).toBe('chat.v2');
    expect(up.protocol).toBe('chat.v2');
    c.destroy();
  });

  it('every known finding is reproduced by a row that names it', () => {
    const sent = U2_CODES.filter((code) => clientCloses.some(([c]) => c === code));
    expect(sent, `the close-code rows send every ${U2.finding} code`).toEqual(U2_CODES);
    const named = new Set([...rows.flatMap((r) => (r.deviation ? [r.deviation.finding] : [])), ...(sent.length > 0 ? [U2.finding] : [])]);
    expect(KNOWN_FINDINGS.map((f) => f.id).filter((id) => !named.has(id)), 'findings no row reproduces').toEqual([]);
  });

  const title = (name: string, d: Deviation | undefined): string => (d ? `${name} [${d.finding} on ${findingOf(d.finding).backends.join(', ')}]` : name);

  it.each(rows.map((r) => [title(r.name, r.deviation), r] as const))('%s', async (_name, row) => {
    const { c, up } = await open();
    // The row's exact behaviour on this backend when its finding shows here.
    const dev = row.deviation !== undefined && active(row.deviation.finding) !== null ? row.deviation : undefined;
    try {
      c.send(...row.frames);
      if (dev !== undefined) {
        const f = findingOf(dev.finding);
        const waitMs = dev.stallMs ?? WAIT_MS;
        const cf = await c.closed(waitMs);
        const got = describeClose(cf, c, waitMs);
        stillShows(f, got, `close ${row.close}`);
        expect.soft(got, `${f.id}: what the client sees on ${BACKEND}`).toBe(dev.client);
        if (cf === null && !c.tcpClosed) {
          // The stall: nothing came back and the upstream was not told anything; the client gives up.
          expect.soft(describeUpstreamClose(up.close), `${f.id}: the upstream while the client waits`).toBe('still open');
          c.destroy();
        } else {
          expect.soft(await c.tcpEnd(), `${f.id}: the TCP connection ends`).toBe(true);
        }
        expect.soft(describeUpstreamClose(await upstreamClosed(up)), `${f.id}: the upstream's close on ${BACKEND}`).toBe(dev.upstream);
      } else if (row.close === undefined) {
        // All of the row's frames were read before the Close that follows them (TCP keeps order).
        c.send(frame(OP_CLOSE, closePayload(1000, 'done')));
        const cf = await c.closed();
        expect(describeClose(cf, c)).toBe('close 1000');
        const uc = await upstreamClosed(up);
        expect(uc?.code, 'the upstream gets the client\'s close code').toBe(1000);
        expect(uc?.reason.toString()).toBe('done');
      } else {
        // Soft: the checks below run (and report) even when the close code is wrong.
        const cf = await c.closed();
        expect.soft(describeClose(cf, c), `the gateway's answer to: ${row.name}`).toBe(`close ${row.close}`);
        if (cf === null && !c.tcpClosed) c.destroy(); // stalled: drop it, so that what the upstream got can be checked
        else expect.soft(await c.tcpEnd(), 'the gateway closes the TCP connection after its Close').toBe(true);
        const uc = await upstreamClosed(up);
        expect.soft(uc === null ? 'still open' : 'closed', 'the upstream connection is closed too').toBe('closed');
        // The upstream is told the client went away (1001), or the client's error itself.
        if (uc !== null) expect.soft([1001, row.close], `the upstream's close code (${uc.code})`).toContain(uc.code);
      }
      expect.soft(show(up.messages), 'what the upstream received').toEqual(show(dev?.messages ?? row.upstream));
      const pongs = c.frames.filter((f) => f.opcode === OP_PONG).map((f) => f.payload.toString('hex'));
      expect(pongs, 'pongs the client got').toEqual((row.pongs ?? []).map((p) => p.toString('hex')));
      expect(up.pings.length, 'pings are answered by the gateway, not relayed').toBe(0);
      expect(c.frames.every((f) => !f.masked && f.rsv === 0), 'server frames are unmasked, RSV clear').toBe(true);
      expect(c.messages, 'the client got no message').toEqual([]);
    } finally {
      c.destroy();
    }
  });

  /** Valid close codes a client may send (RFC 6455 7.4.1-7.4.2, IANA registry), with a reason. */
  const clientCloses: [number, string][] = [
    [1000, 'normal'], [1001, 'going away'], [1003, ''], [1007, 'x'], [1008, 'policy'], [1011, 'oops'], [1012, 'restart'], [1013, 'later'], [1014, 'gw'],
    [3000, 'registered'], [3999, ''], [4001, 'custom one'], [4002, 'custom two'], [4999, 'κόσμε'],
  ];
  it.each(clientCloses.map(([code, reason]) => [
    title(`close ${code} (reason ${JSON.stringify(reason)}) from the client reaches the upstream, code and reason, and is echoed`, U2_CODES.includes(code) ? U2 : undefined),
    code, reason,
  ] as const))('%s', async (_name, code, reason) => {
    const { c, up } = await open();
    const f = U2_CODES.includes(code) ? active(U2.finding) : null;
    try {
      c.send(frame(OP_TEXT, 'before'), frame(OP_CLOSE, closePayload(code, reason)));
      const got = describeClose(await c.closed(), c);
      const uc = await upstreamClosed(up);
      if (f !== null) {
        stillShows(f, got, `close ${code}`);
        expect.soft(got, `${f.id}: the Close the client gets back on ${BACKEND}`).toBe(U2.client);
        expect.soft(describeUpstreamClose(uc), `${f.id}: the upstream's close on ${BACKEND}`).toBe(U2.upstream);
      } else {
        expect.soft(got, 'the Close the client gets back').toBe(`close ${code}`);
        expect.soft(uc?.code, 'the upstream\'s close code').toBe(code);
        expect.soft(uc?.reason.toString(), 'the upstream\'s close reason').toBe(reason);
      }
      expect(show(up.messages)).toEqual(show([T('before')]));
      expect(await c.tcpEnd()).toBe(true);
    } finally {
      c.destroy();
    }
  });

  it('a close with a 123-byte reason (125-byte payload, the largest) reaches the upstream whole', async () => {
    const { c, up } = await open();
    try {
      const reason = 'r'.repeat(123);
      c.send(frame(OP_CLOSE, closePayload(4001, reason)));
      expect(describeClose(await c.closed(), c)).toBe('close 4001');
      const uc = await upstreamClosed(up);
      expect(uc?.code).toBe(4001);
      expect(uc?.reason.toString()).toBe(reason);
    } finally {
      c.destroy();
    }
  });

  it('a close without a payload: the upstream gets a close without a code (1005), the client an empty Close back', async () => {
    const { c, up } = await open();
    try {
      c.send(frame(OP_CLOSE));
      expect(describeClose(await c.closed(), c)).toBe('close (no code)');
      expect((await upstreamClosed(up))?.code).toBe(1005);
    } finally {
      c.destroy();
    }
  });

  it('1 MiB binary message in one frame, and one in 16 fragments, reach the upstream byte-exact', async () => {
    const { c, up } = await open();
    try {
      const a = crypto.randomBytes(MIB);
      const b = crypto.randomBytes(MIB);
      c.send(frame(OP_BINARY, a), ...fragments(OP_BINARY, b, 65536));
      c.send(frame(OP_CLOSE, closePayload(1000)));
      expect(describeClose(await c.closed(), c)).toBe('close 1000');
      await upstreamClosed(up);
      expect(show(up.messages)).toEqual(show([B(a), B(b)]));
    } finally {
      c.destroy();
    }
  });
});

// ---------------------------------------------------------------- upstream to client

describe(`websocket framing through the gateway, upstream to client (${BACKEND} backend)`, () => {
  /** The raw client's messages once `n` came (or the connection ended). */
  async function received(c: RawClient, n: number): Promise<string[]> {
    await c.until(() => c.messages.length >= n);
    return show(c.messages);
  }

  it('text and binary, fragmented by the upstream (3 fragments, 1-byte fragments), arrive whole and in order', async () => {
    const { c, up } = await open();
    try {
      up.ws.send('fra', { fin: false });
      up.ws.send('gme', { fin: false });
      up.ws.send('nted', { fin: true });
      const utf8 = Buffer.from(UTF8);
      for (let i = 0; i < utf8.length; i++) up.ws.send(utf8.subarray(i, i + 1), { binary: false, fin: i === utf8.length - 1 });
      for (let i = 0; i < BIN.length; i++) up.ws.send(BIN.subarray(i, i + 1), { binary: true, fin: i === BIN.length - 1 });
      expect(await received(c, 3)).toEqual(show([T('fragmented'), T(UTF8), B(BIN)]));
    } finally {
      c.destroy();
    }
  });

  it('an upstream ping between fragments is answered (by the gateway\'s upstream side), not relayed; the message arrives whole', async () => {
    const { c, up } = await open();
    try {
      const pong = new Promise<Buffer>((r) => up.ws.once('pong', r));
      up.ws.send('frag', { fin: false });
      up.ws.ping('up-ping');
      up.ws.send('mented', { fin: true });
      expect(await received(c, 1)).toEqual(show([T('fragmented')]));
      expect((await Promise.race([pong, new Promise((r) => setTimeout(() => r(null), WAIT_MS))]))?.toString()).toBe('up-ping');
      expect(c.frames.filter((f) => f.opcode === OP_PING)).toEqual([]);
    } finally {
      c.destroy();
    }
  });

  it('16- and 64-bit lengths (125, 126, 65535, 65536, 1 MiB) arrive byte-exact', async () => {
    const { c, up } = await open();
    try {
      const sizes = [125, 126, 65535, 65536, MIB];
      const sent = sizes.map((n) => crypto.randomBytes(n));
      for (const s of sent) up.ws.send(s, { binary: true });
      up.ws.send(Buffer.alloc(MIB, 0x42).toString(), { binary: false });
      expect(await received(c, sizes.length + 1)).toEqual(show([...sent.map((s) => B(s)), T(Buffer.alloc(MIB, 0x42))]));
      expect(c.frames.every((f) => !f.masked && f.rsv === 0)).toBe(true);
    } finally {
      c.destroy();
    }
  });

  it('1,000 ordered messages from the upstream', async () => {
    const { c, up } = await open();
    try {
      const want: Msg[] = [];
      for (let i = 0; i < 1000; i++) {
        const m = i % 2 === 0 ? T(`message ${i}`) : B(Buffer.from(`binary ${i}`));
        want.push(m);
        up.ws.send(m.data, { binary: m.binary });
      }
      expect(await received(c, 1000)).toEqual(show(want));
    } finally {
      c.destroy();
    }
  });

  it.each([[4001, 'upstream custom'], [4002, ''], [1000, 'bye'], [3000, 'x'], [1012, 'restart']])('close %i (reason %j) from the upstream reaches the client', async (code, reason) => {
    const { c, up } = await open();
    try {
      up.ws.send('last');
      up.ws.close(code, reason);
      const cf = await c.closed();
      expect(describeClose(cf, c)).toBe(`close ${code}`);
      expect(cf!.payload.subarray(2).toString()).toBe(reason);
      expect(show(c.messages)).toEqual(show([T('last')]));
      // The client answers the Close; the upstream's close handshake completes with its own code.
      c.send(frame(OP_CLOSE, closePayload(code, reason)));
      expect((await upstreamClosed(up))?.code).toBe(code);
    } finally {
      c.destroy();
    }
  });
});
