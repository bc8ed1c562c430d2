#!/usr/bin/env node
// One load process of the WebSocket bench (ws/run.mjs): opens COUNT
// WebSocket connections to URL (`ws` 8.23 client, permessage-deflate off,
// CONCURRENCY handshakes in flight), then obeys commands on stdin, one a line:
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
//
// and prints `P <json>` progress every 500 ms (opened, failed, open, errors).
// The send time travels in the message (`<µs> <conn> ` padded with 'x' to
// MSG_BYTES), so several messages may be in flight on one connection and the
// RTT is still exact; an echo that does not match what was sent counts as bad.
//
//   node ws/client.mjs <url> <count> <concurrency> <msgBytes>
import { createInterface } from 'node:readline';
import WebSocket from 'ws';
import * as hdr from 'hdr-histogram-js';

const [url, countS, concS, bytesS] = process.argv.slice(2);
const COUNT = Number(countS);
const CONCURRENCY = Number(concS) || 200;
const MSG_BYTES = Number(bytesS) || 64;
const DRAIN_MS = 3000;
const CLOSE_MS = 20000;

const sockets = new Array(COUNT).fill(null);
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

function noteError(msg) {
  st.errors++;
  if (firstErrors.length < 5) firstErrors.push(msg);
}

function connect(i) {
  started++;
  inFlight++;
  let opened = false;
  const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: 30000 });
  ws.on('open', () => {
    opened = true;
    st.opened++;
    st.open++;
    sockets[i] = ws;
    inFlight--;
    next();
  });
  ws.on('message', (data, isBinary) => {
    const now = performance.now();
    const s = isBinary ? '' : data.toString('latin1');
    const sp = s.indexOf(' ');
    const sp2 = sp > 0 ? s.indexOf(' ', sp + 1) : -1;
    if (s.length !== MSG_BYTES || sp2 < 0 || Number(s.slice(sp + 1, sp2)) !== i) {
      bad++;
      return;
    }
    received++;
    const rtt = now * 1000 - Number(s.slice(0, sp));
    hist.recordValue(Math.max(1, Math.round(rtt)));
  });
  ws.on('unexpected-response', (_req, res) => {
    noteError(`HTTP ${res.statusCode} on upgrade`);
    res.resume();
    ws.terminate();
  });
  ws.on('error', (err) => noteError(err.message));
  ws.on('close', (code) => {
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
  });
}

function next() {
  while (inFlight < CONCURRENCY && started < COUNT) connect(started);
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
      const ws = sockets[i];
      if (ws === null || ws.readyState !== 1) continue;
      const head = `${Math.round(performance.now() * 1000)} ${i} `;
      ws.send(head + pad.slice(head.length), { binary: false, compress: false });
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
  for (const ws of sockets) if (ws !== null) ws.close(1000, 'bench done');
  setTimeout(() => {
    for (const ws of sockets) if (ws !== null) ws.terminate();
    setTimeout(closed, 500);
  }, CLOSE_MS).unref();
}

createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, arg] = line.trim().split(/\s+/);
  if (cmd === 'go') go(Number(arg) || 1);
  else if (cmd === 'stop') stop();
  else if (cmd === 'close') closeAll();
});
process.stdin.once('end', () => process.exit(0));
process.once('SIGTERM', () => process.exit(0));
