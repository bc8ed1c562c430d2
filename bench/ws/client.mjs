#!/usr/bin/env node
// One load process of the WebSocket bench (ws/run.mjs): opens COUNT
// WebSocket connections to URL (CONCURRENCY handshakes in flight, no
// permessage-deflate), then obeys commands on stdin, one a line:
//
//   go <rate>   every connection sends one MSG_BYTES text message <rate>
//               times a second, the sends of all connections spread evenly
//               over each second (connection i at offset i/COUNT s)
//   stop        stop sending; once every echo is back (or DRAIN_MS passed)
//               print `S <json>`: sent, received, bad echoes, lost, and the
//               RTT histogram (µs, hdr-histogram-js, compressed base64)
//   close       close every connection with 1000 (the clean close the relay
//               must pass on); once all are closed (or CLOSE_MS) print
//               `C <json>` (close codes seen) and exit
//   pstats <K>  the fan-out report: once every open connection got pushes
//               1..K (or DRAIN_MS passed) print `F <json>`: per round the
//               connections that got it and the min/max latency, the
//               latency histogram (µs, one value per delivery), bad,
//               duplicate and negative-latency pushes
//
// Pushes (ws/echo.mjs GET /push, through the proxy): text messages
// `p<round> <pushUs> ` padded with 'x'; 'p' sets them apart from echoes
// (which start with a digit), so they never count as echoes or bad echoes and
// do not disturb `stop`. pushUs is the echo's CLOCK_MONOTONIC in µs
// (process.hrtime.bigint()), the same clock here: latency = receive time
// (process.hrtime.bigint() when the message is parsed) - pushUs, recorded
// per connection in its own histogram. When every open connection of this
// process got round R, `R <json>` ({ round, got, maxUs }) is printed at once,
// so ws/run.mjs knows when a round is fully delivered.
//
// and prints `P <json>` progress every 500 ms (opened, failed, open, errors).
// The send time travels in the message (`<µs> <conn> ` padded with 'x' to
// MSG_BYTES), so several messages may be in flight on one connection and the
// RTT is still exact. Every echo is checked byte for byte: a text message of
// MSG_BYTES, `<digits> <this connection's index> ` then only 'x', and no more
// echoes than sends on that connection; anything else counts as bad.
//
// Two implementations (env CLIENT):
//   raw (default)  a lean client on node:net sockets, written here: the
//                  RFC 6455 opening handshake by hand (random
//                  Sec-WebSocket-Key; the 101 status line, Upgrade,
//                  Connection and Sec-WebSocket-Accept checked, RFC 6455
//                  4.1), text frames masked with a fresh key per frame (4
//                  bytes from a crypto.randomFillSync pool, RFC 6455 5.3),
//                  a minimal parser of the server's frames (unmasked; split
//                  across reads or several in one read; text, binary,
//                  continuation, close, ping answered with a pong, pong),
//                  the clean close (send Close 1000, wait for the server's
//                  Close, end the socket). Reads go through `onread` with one
//                  buffer shared by all sockets of the process (READ=onread,
//                  default) or 'data' events (READ=data).
//   ws             the `ws` 8.23 package's client (the bench's first load
//                  side; ~1.5x the CPU per message of raw at N=9900).
//
//   node ws/client.mjs <url> <count> <concurrency> <msgBytes>
import { createInterface } from 'node:readline';
import net from 'node:net';
import { createHash, randomBytes, randomFillSync } from 'node:crypto';
import * as hdr from 'hdr-histogram-js';

const [url, countS, concS, bytesS] = process.argv.slice(2);
const COUNT = Number(countS);
const CONCURRENCY = Number(concS) || 200;
const MSG_BYTES = Number(bytesS) || 64;
const DRAIN_MS = 3000;
const CLOSE_MS = 20000;
const HANDSHAKE_MS = 30000;
const CLIENT = process.env.CLIENT || 'raw';
const READ = process.env.READ || 'onread';
if (!['raw', 'ws'].includes(CLIENT)) throw new Error(`CLIENT must be raw or ws, got ${CLIENT}`);
if (!['onread', 'data'].includes(READ)) throw new Error(`READ must be onread or data, got ${READ}`);
if (!(MSG_BYTES >= 24)) throw new Error('msgBytes must be >= 24 (room for `<µs> <conn> `)');

const sockets = new Array(COUNT).fill(null); // open connections: raw Conn or ws WebSocket
const outstanding = new Int32Array(COUNT); // sends not yet echoed, per connection
const st = { opened: 0, failed: 0, open: 0, errors: 0, unexpectedCloses: 0 };
const closeCodes = {};
const firstErrors = [];
let started = 0;
let inFlight = 0;
let closing = false;

const hist = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 });
let sent = 0;
let received = 0;
let bad = 0;

// Fan-out pushes (see the header): their own histogram and counters.
const pushHist = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 });
const pushRounds = new Map(); // round -> { got, minUs, maxUs, seen: Uint8Array(COUNT), reported }
let pushBad = 0;
let pushDup = 0;
let pushNegative = 0;

function noteError(msg) {
  st.errors++;
  if (firstErrors.length < 5) firstErrors.push(msg);
}

/**
 * One echo (op 1 text, 2 binary; payload buf[s..e)) on connection i at
 * performance.now() `now`: checked byte for byte against what connection i
 * sends (`<µs> <i> ` + 'x' padding, text), its RTT recorded.
 */
function onEcho(i, op, buf, s, e, now) {
  if (op === 1 && e > s && buf[s] === 0x70) return onPush(i, buf, s, e);
  if (op !== 1 || e - s !== MSG_BYTES || outstanding[i] === 0) {
    bad++;
    return;
  }
  let p = s;
  let ts = 0;
  while (p < e && buf[p] >= 48 && buf[p] <= 57) ts = ts * 10 + (buf[p++] - 48);
  if (p === s || p >= e || buf[p] !== 32) {
    bad++;
    return;
  }
  const q0 = ++p;
  let idx = 0;
  while (p < e && buf[p] >= 48 && buf[p] <= 57) idx = idx * 10 + (buf[p++] - 48);
  if (p === q0 || p >= e || buf[p] !== 32 || idx !== i) {
    bad++;
    return;
  }
  for (p++; p < e; p++) {
    if (buf[p] !== 0x78) {
      bad++;
      return;
    }
  }
  outstanding[i]--;
  received++;
  hist.recordValue(Math.max(1, Math.round(now * 1000 - ts)));
}

/**
 * One push (`p<round> <pushUs> ` + 'x' padding, text, payload buf[s..e)) on
 * connection i: latency = CLOCK_MONOTONIC now - pushUs (µs) into pushHist;
 * counted per round, once per connection (a second copy is a duplicate).
 */
function onPush(i, buf, s, e) {
  const recvUs = Number(process.hrtime.bigint() / 1000n);
  let p = s + 1;
  let round = 0;
  while (p < e && buf[p] >= 48 && buf[p] <= 57) round = round * 10 + (buf[p++] - 48);
  if (p === s + 1 || p >= e || buf[p] !== 32) {
    pushBad++;
    return;
  }
  const q0 = ++p;
  let pushUs = 0;
  while (p < e && buf[p] >= 48 && buf[p] <= 57) pushUs = pushUs * 10 + (buf[p++] - 48);
  if (p === q0 || p >= e || buf[p] !== 32) {
    pushBad++;
    return;
  }
  for (p++; p < e; p++) {
    if (buf[p] !== 0x78) {
      pushBad++;
      return;
    }
  }
  let r = pushRounds.get(round);
  if (r === undefined) {
    r = { got: 0, minUs: Infinity, maxUs: 0, seen: new Uint8Array(COUNT), reported: false };
    pushRounds.set(round, r);
  }
  if (r.seen[i]) {
    pushDup++;
    return;
  }
  r.seen[i] = 1;
  r.got++;
  let lat = recvUs - pushUs;
  if (lat < 0) {
    pushNegative++;
    lat = 0;
  }
  if (lat < r.minUs) r.minUs = lat;
  if (lat > r.maxUs) r.maxUs = lat;
  pushHist.recordValue(Math.max(1, lat));
  if (!r.reported && r.got >= st.open) {
    r.reported = true;
    process.stdout.write(`R ${JSON.stringify({ round, got: r.got, maxUs: r.maxUs })}\n`);
  }
}

function onOpened(i, conn) {
  st.opened++;
  st.open++;
  sockets[i] = conn;
  inFlight--;
  next();
}

function onClosed(i, opened, code) {
  closeCodes[code] = (closeCodes[code] ?? 0) + 1;
  if (opened) {
    st.open--;
    sockets[i] = null;
    if (!closing) st.unexpectedCloses++;
  } else {
    st.failed++;
    inFlight--;
    next();
  }
  if (closing && st.open === 0) closed();
}

// ---------------------------------------------------------------------------
// CLIENT=raw

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'; // RFC 6455 1.3
const target = new URL(url);
const HOST = target.hostname;
const PORT = Number(target.port) || 80;
const PATH = `${target.pathname || '/'}${target.search}`;

// Mask keys: 4 bytes per frame from a pool refilled by crypto.randomFillSync.
const maskPool = Buffer.allocUnsafe(64 * 1024);
let maskAt = maskPool.length;
function maskKeyAt() {
  if (maskAt + 4 > maskPool.length) {
    randomFillSync(maskPool);
    maskAt = 0;
  }
  const at = maskAt;
  maskAt += 4;
  return at;
}

/** A masked client frame (FIN set) of opcode op with payload[ps..pe). */
function frame(op, payload, ps = 0, pe = payload.length) {
  const len = pe - ps;
  const h = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const out = Buffer.allocUnsafe(h + 4 + len);
  out[0] = 0x80 | op;
  if (h === 2) out[1] = 0x80 | len;
  else if (h === 4) {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(len, 2);
  } else {
    out[1] = 0x80 | 127;
    out.writeUInt32BE(Math.floor(len / 2 ** 32), 2);
    out.writeUInt32BE(len >>> 0, 6);
  }
  const k = maskKeyAt();
  const m0 = maskPool[k], m1 = maskPool[k + 1], m2 = maskPool[k + 2], m3 = maskPool[k + 3];
  out[h] = m0;
  out[h + 1] = m1;
  out[h + 2] = m2;
  out[h + 3] = m3;
  const o = h + 4;
  let j = 0;
  for (; j + 4 <= len; j += 4) {
    out[o + j] = payload[ps + j] ^ m0;
    out[o + j + 1] = payload[ps + j + 1] ^ m1;
    out[o + j + 2] = payload[ps + j + 2] ^ m2;
    out[o + j + 3] = payload[ps + j + 3] ^ m3;
  }
  for (; j < len; j++) out[o + j] = payload[ps + j] ^ maskPool[k + (j & 3)];
  return out;
}

// The message payload is built here per send: 'x' padding, the head written over its start.
const scratch = Buffer.alloc(MSG_BYTES, 0x78);
const readBuf = Buffer.allocUnsafe(256 * 1024); // READ=onread: shared by every socket of this process
const MAX_FRAME = 64 * 1024 * 1024;

const HS = 0; // handshake sent, waiting for the 101
const OPEN = 1;
const CLOSING = 2; // our Close sent, waiting for the server's
const DONE = 3; // Close exchanged (or failed): the socket is ending

class Conn {
  constructor(i) {
    this.i = i;
    this.state = HS;
    this.opened = false;
    this.hs = '';
    this.pending = null; // bytes of an incomplete frame (copied: the read buffer is shared)
    this.frag = null; // payload parts of a fragmented message
    this.fragOp = 0;
    this.code = 1006; // the server's close code; 1006 = the socket closed without one
    this.key = randomBytes(16).toString('base64');
    this.accept = createHash('sha1').update(this.key + GUID).digest('base64');
    const opts = { host: HOST, port: PORT, noDelay: true };
    if (READ === 'onread') opts.onread = { buffer: readBuf, callback: (n, buf) => { this.bytes(buf, 0, n); } };
    const sock = net.connect(opts);
    this.sock = sock;
    if (READ === 'data') sock.on('data', (d) => this.bytes(d, 0, d.length));
    this.timer = setTimeout(() => this.fail(`no handshake in ${HANDSHAKE_MS} ms`), HANDSHAKE_MS);
    sock.once('connect', () => {
      sock.write(`GET ${PATH} HTTP/1.1\r\nHost: ${target.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${this.key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    });
    sock.on('error', (err) => noteError(err.message));
    sock.once('close', () => {
      clearTimeout(this.timer);
      this.state = DONE;
      onClosed(this.i, this.opened, this.code);
    });
  }

  fail(msg) {
    noteError(msg);
    this.state = DONE;
    this.sock.destroy();
  }

  /** Bytes buf[s..e) from the socket (valid only during this call with READ=onread). */
  bytes(buf, s, e) {
    if (this.state === HS) {
      this.hs += buf.toString('latin1', s, e);
      const end = this.hs.indexOf('\r\n\r\n');
      if (end < 0) {
        if (this.hs.length > 16384) this.fail('handshake response too long');
        return;
      }
      if (!this.handshake(this.hs.slice(0, end))) return;
      const rest = this.hs.length > end + 4 ? Buffer.from(this.hs.slice(end + 4), 'latin1') : null;
      this.hs = '';
      if (rest !== null) this.bytes(rest, 0, rest.length);
      return;
    }
    if (this.state === DONE) return;
    if (this.pending !== null) {
      buf = Buffer.concat([this.pending, buf.subarray(s, e)]);
      s = 0;
      e = buf.length;
      this.pending = null;
    }
    const now = performance.now();
    let p = s;
    while (e - p >= 2 && this.state !== DONE) {
      const b0 = buf[p];
      const b1 = buf[p + 1];
      if (b1 & 0x80) return this.fail('masked frame from the server (RFC 6455 5.1)');
      let len = b1 & 0x7f;
      let h = 2;
      if (len === 126) {
        if (e - p < 4) break;
        len = buf.readUInt16BE(p + 2);
        h = 4;
      } else if (len === 127) {
        if (e - p < 10) break;
        len = buf.readUInt32BE(p + 2) * 2 ** 32 + buf.readUInt32BE(p + 6);
        h = 10;
      }
      if (len > MAX_FRAME) return this.fail(`frame of ${len} bytes`);
      if (e - p < h + len) break;
      this.frame(b0, buf, p + h, p + h + len, now);
      p += h + len;
    }
    if (p < e && this.state !== DONE) this.pending = Buffer.from(buf.subarray(p, e));
  }

  /** Checks the 101 response head (RFC 6455 4.1, client requirements 1-4); true if open. */
  handshake(head) {
    const lines = head.split('\r\n');
    if (!/^HTTP\/1\.1 101 /.test(`${lines[0]} `)) {
      this.fail(`${lines[0].slice(0, 60)} on upgrade`);
      return false;
    }
    const hdrs = new Map();
    for (let k = 1; k < lines.length; k++) {
      const c = lines[k].indexOf(':');
      if (c > 0) hdrs.set(lines[k].slice(0, c).trim().toLowerCase(), lines[k].slice(c + 1).trim());
    }
    let why = null;
    if ((hdrs.get('upgrade') ?? '').toLowerCase() !== 'websocket') why = 'no Upgrade: websocket';
    else if (!(hdrs.get('connection') ?? '').toLowerCase().split(/\s*,\s*/).includes('upgrade')) why = 'no Connection: upgrade';
    else if (hdrs.get('sec-websocket-accept') !== this.accept) why = 'bad Sec-WebSocket-Accept';
    else if (hdrs.has('sec-websocket-extensions')) why = 'extension not asked for';
    if (why !== null) {
      this.fail(`101 with ${why}`);
      return false;
    }
    clearTimeout(this.timer);
    this.state = OPEN;
    this.opened = true;
    onOpened(this.i, this);
    return true;
  }

  /** One complete server frame: header byte b0, payload buf[s..e). */
  frame(b0, buf, s, e, now) {
    const fin = (b0 & 0x80) !== 0;
    const op = b0 & 0x0f;
    if (b0 & 0x70) return this.fail('RSV bits set (no extension negotiated)');
    if (op >= 8) {
      if (!fin || e - s > 125) return this.fail('bad control frame');
      if (op === 8) {
        this.code = e - s >= 2 ? buf.readUInt16BE(s) : 1005;
        if (this.state === OPEN) {
          // The server closes first: answer with its code (RFC 6455 5.5.1).
          const body = Buffer.alloc(this.code === 1005 ? 0 : 2);
          if (body.length) body.writeUInt16BE(this.code, 0);
          this.sock.write(frame(8, body));
        }
        this.state = DONE;
        this.sock.end();
      } else if (op === 9) {
        if (this.state === OPEN) this.sock.write(frame(10, buf, s, e));
      } else if (op !== 10) this.fail(`unknown opcode ${op}`);
      return;
    }
    if (op === 0) {
      if (this.frag === null) return this.fail('continuation without a start');
      this.frag.push(Buffer.from(buf.subarray(s, e)));
      if (!fin) return;
      const msg = Buffer.concat(this.frag);
      this.frag = null;
      onEcho(this.i, this.fragOp, msg, 0, msg.length, now);
    } else if (op === 1 || op === 2) {
      if (this.frag !== null) return this.fail('new message inside a fragmented one');
      if (fin) onEcho(this.i, op, buf, s, e, now);
      else {
        this.frag = [Buffer.from(buf.subarray(s, e))];
        this.fragOp = op;
      }
    } else this.fail(`unknown opcode ${op}`);
  }

  /** One bench message: `<µs> <i> ` padded with 'x', a masked text frame. */
  sendMsg(head) {
    scratch.write(head, 0, 'latin1');
    this.sock.write(frame(1, scratch));
    scratch.fill(0x78, 0, head.length);
  }

  /** The clean close: Close 1000 'bench done', then the server's Close ends the socket. */
  close() {
    if (this.state !== OPEN) return;
    this.state = CLOSING;
    const body = Buffer.from('\x03\xe8bench done', 'latin1');
    this.sock.write(frame(8, body));
  }

  terminate() {
    this.sock.destroy();
  }
}

// ---------------------------------------------------------------------------
// CLIENT=ws

let WebSocket = null;
if (CLIENT === 'ws') WebSocket = (await import('ws')).default;

function connectWs(i) {
  let opened = false;
  const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: HANDSHAKE_MS });
  ws.on('open', () => {
    opened = true;
    onOpened(i, ws);
  });
  ws.on('message', (data, isBinary) => {
    const now = performance.now();
    const b = Buffer.isBuffer(data) ? data : Buffer.concat(data);
    onEcho(i, isBinary ? 2 : 1, b, 0, b.length, now);
  });
  ws.on('unexpected-response', (_req, res) => {
    noteError(`HTTP ${res.statusCode} on upgrade`);
    res.resume();
    ws.terminate();
  });
  ws.on('error', (err) => noteError(err.message));
  ws.on('close', (code) => onClosed(i, opened, code));
}

// ---------------------------------------------------------------------------

function next() {
  while (inFlight < CONCURRENCY && started < COUNT) {
    const i = started++;
    inFlight++;
    if (CLIENT === 'raw') new Conn(i);
    else connectWs(i);
  }
}
next();

const progress = setInterval(() => process.stdout.write(`P ${JSON.stringify(st)}\n`), 500);

let sender = null;
function go(rate) {
  const t0 = performance.now();
  let cursor = 0; // sends made so far, over all connections
  const pad = 'x'.repeat(MSG_BYTES);
  sender = setInterval(() => {
    const due = Math.floor(((performance.now() - t0) / 1000) * rate * COUNT);
    for (; cursor < due; cursor++) {
      const i = cursor % COUNT;
      const c = sockets[i];
      if (c === null) continue;
      const head = `${Math.round(performance.now() * 1000)} ${i} `;
      if (CLIENT === 'raw') {
        if (c.state !== OPEN) continue;
        c.sendMsg(head);
      } else {
        if (c.readyState !== 1) continue;
        c.send(head + pad.slice(head.length), { binary: false, compress: false });
      }
      outstanding[i]++;
      sent++;
    }
  }, 2);
}

async function stop() {
  if (sender !== null) clearInterval(sender);
  sender = null;
  const deadline = Date.now() + DRAIN_MS;
  while (received + bad < sent && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  process.stdout.write(`S ${JSON.stringify({ sent, received, bad, lost: sent - received - bad, hist: hdr.encodeIntoCompressedBase64(hist), ...st, firstErrors })}\n`);
}

/** `pstats <K>`: waits (DRAIN_MS at most) until every open connection got rounds 1..K, then prints `F <json>`. */
async function pushStats(k) {
  const complete = () => {
    for (let r = 1; r <= k; r++) if ((pushRounds.get(r)?.got ?? 0) < st.open) return false;
    return true;
  };
  const deadline = Date.now() + DRAIN_MS;
  while (!complete() && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
  const rounds = {};
  for (const [r, x] of pushRounds) rounds[r] = { got: x.got, minUs: x.got ? x.minUs : null, maxUs: x.got ? x.maxUs : null };
  process.stdout.write(`F ${JSON.stringify({ open: st.open, rounds, hist: hdr.encodeIntoCompressedBase64(pushHist), bad: pushBad, dup: pushDup, negative: pushNegative })}\n`);
}

let closedOnce = false;
function closed() {
  if (closedOnce) return;
  closedOnce = true;
  clearInterval(progress);
  process.stdout.write(`P ${JSON.stringify(st)}\n`);
  process.stdout.write(`C ${JSON.stringify({ closeCodes, ...st, firstErrors })}\n`, () => process.exit(0));
}

function closeAll() {
  closing = true;
  if (st.open === 0) return closed();
  for (const c of sockets) if (c !== null) c.close(1000, 'bench done');
  setTimeout(() => {
    for (const c of sockets) if (c !== null) c.terminate();
    setTimeout(closed, 500);
  }, CLOSE_MS).unref();
}

createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, arg] = line.trim().split(/\s+/);
  if (cmd === 'go') go(Number(arg) || 1);
  else if (cmd === 'stop') stop();
  else if (cmd === 'close') closeAll();
  else if (cmd === 'pstats') pushStats(Number(arg) || 1);
});
process.stdin.once('end', () => process.exit(0));
process.once('SIGTERM', () => process.exit(0));
