#!/usr/bin/env node
// The echo upstream of the WebSocket bench (ws/run.mjs): sends every
// message back as it came (text stays text, binary stays binary), answers a
// Close with a Close (the clean close), and answers any plain HTTP request
// with 200 "ok" (run.mjs's readiness check goes through the proxy's route
// with a plain GET). No compression, no pings, no idle timeout, messages up
// to 16 MiB. Two implementations (env ECHO):
//   uws (default)  uWebSockets.js 20.30 (@trufflesuite/uws-js-unofficial,
//                  from the root package's node_modules, loaded the way
//                  workers/transport/uws-loader.ts does: the native addon or
//                  nothing); idleTimeout 0, compression DISABLED,
//                  maxPayloadLength 16 MiB, maxBackpressure 64 MiB (a slow
//                  reader must not lose echoes). uWS itself has no connection
//                  limit: the process's fd limit (ulimit -n, 20,000 here) is
//                  the one. About half the `ws` echo's CPU per message.
//   ws             a `ws` WebSocketServer (ws 8.23, permessage-deflate off) on
//                  node:http, the bench's first echo.
//
//   node ws/echo.mjs <port>
//
// Prints `listening <port>` once it listens; exits on SIGTERM (ws: closing
// every connection first).
//
// Fan-out (ws/run.mjs's push phase): GET /push?round=R&bytes=B on the echo's
// own port (not through a proxy) sends one text message of B bytes (default
// 64, at least 32) to every WebSocket connection the echo holds, then replies
// 200 with JSON { round, sockets, sent, backpressured, dropped, pushUs,
// queueUs }: sockets = connections held, sent = sends accepted (uWS: queued
// or written; ws: handed to the socket), backpressured/dropped = uWS sends
// that buffered / were dropped over maxBackpressure, pushUs = the push time
// (process.hrtime.bigint() in µs: CLOCK_MONOTONIC, the same clock in every
// process of the machine) taken before the first send, queueUs = the time the
// sends took. The reply goes out only after every send is queued. The
// message is `p<R> <pushUs> ` padded with 'x' to B bytes: 'p' tells a push
// from an echo (echoes start with a digit), so the clients count it apart.
// Any other plain HTTP request still gets "ok".
import http from 'node:http';
import { createRequire } from 'node:module';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node ws/echo.mjs <port>');
  process.exit(2);
}
const ECHO = process.env.ECHO || 'uws';
if (ECHO === 'uws') {
  const uws = loadUws();
  const app = uws.App();
  const held = new Set(); // the open WebSockets, for /push
  app.ws('/*', {
    compression: uws.DISABLED,
    maxPayloadLength: 16 * 1024 * 1024,
    maxBackpressure: 64 * 1024 * 1024,
    idleTimeout: 0,
    sendPingsAutomatically: false,
    open: (ws) => {
      held.add(ws);
    },
    message: (ws, message, isBinary) => {
      ws.send(message, isBinary, false);
    },
    close: (ws) => {
      held.delete(ws);
    },
  });
  app.get('/push', (res, req) => {
    const q = new URLSearchParams(req.getQuery() ?? '');
    const payload = pushPayload(q);
    const out = { round: payload.round, sockets: held.size, sent: 0, backpressured: 0, dropped: 0, pushUs: payload.pushUs, queueUs: 0 };
    for (const ws of held) {
      // cork: one write per socket; send returns 1 (written), 0 (buffered: backpressure) or 2 (dropped).
      ws.cork(() => {
        const r = ws.send(payload.buf, false, false);
        if (r === 2) out.dropped++;
        else {
          out.sent++;
          if (r === 0) out.backpressured++;
        }
      });
    }
    out.queueUs = monoUs() - payload.pushUs;
    res.cork(() => res.writeHeader('content-type', 'application/json').end(JSON.stringify(out)));
  });
  app.any('/*', (res) => {
    res.writeHeader('content-type', 'text/plain').end('ok');
  });
  let listenSocket = null;
  app.listen('127.0.0.1', port, (ls) => {
    if (!ls) {
      console.error(`cannot listen on 127.0.0.1:${port}`);
      process.exit(1);
    }
    listenSocket = ls;
    console.log(`listening ${port}`);
  });
  process.once('SIGTERM', () => {
    if (listenSocket !== null) uws.us_listen_socket_close(listenSocket);
    process.exit(0);
  });
} else if (ECHO === 'ws') {
  await wsEcho();
} else {
  console.error(`ECHO must be uws or ws, got ${ECHO}`);
  process.exit(2);
}

/** CLOCK_MONOTONIC in µs (process.hrtime.bigint(): uv_hrtime, shared by every process on Linux). */
function monoUs() {
  return Number(process.hrtime.bigint() / 1000n);
}

/**
 * The message of one /push: query round (integer >= 0) and bytes (32 ..
 * 65536, default 64); returns { round, pushUs, buf } with buf =
 * `p<round> <pushUs> ` + 'x' padding, pushUs taken now (before any send).
 */
function pushPayload(q) {
  const round = Math.max(0, Math.floor(Number(q.get('round')) || 0));
  const bytes = Math.min(65536, Math.max(32, Math.floor(Number(q.get('bytes')) || 64)));
  const pushUs = monoUs();
  const buf = Buffer.alloc(bytes, 0x78);
  buf.write(`p${round} ${pushUs} `, 0, 'latin1');
  return { round, pushUs, buf };
}

/**
 * uWebSockets.js from the root package (/work/main/node_modules), the native
 * addon only: the package falls back to a node:http imitation (no
 * WebSockets) on a Node it has no binary for; that is refused here.
 */
function loadUws() {
  const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'package.json');
  const require = createRequire(root);
  const saved = [console.warn, console.log];
  let said = '';
  console.warn = console.log = (...a) => { said += `${a.join(' ')}\n`; };
  let mod;
  try {
    mod = require('@trufflesuite/uws-js-unofficial');
  } finally {
    [console.warn, console.log] = saved;
  }
  if (/fall/i.test(said) || !Function.prototype.toString.call(mod.us_listen_socket_close).includes('[native code]')) {
    console.error(`no native uWebSockets.js for node ${process.version} (ABI ${process.versions.modules}); use ECHO=ws\n${said}`);
    process.exit(1);
  }
  return mod;
}

/** ECHO=ws: the `ws` WebSocketServer on node:http. */
async function wsEcho() {
  const { WebSocketServer } = await import('ws');

  let wss = null;
  const server = http.createServer((req, res) => {
    req.resume();
    if (req.url.startsWith('/push')) {
      const payload = pushPayload(new URL(req.url, 'http://x').searchParams);
      const out = { round: payload.round, sockets: wss.clients.size, sent: 0, backpressured: 0, dropped: 0, pushUs: payload.pushUs, queueUs: 0 };
      for (const ws of wss.clients) {
        if (ws.readyState !== 1) continue;
        ws.send(payload.buf, { binary: false, compress: false });
        out.sent++;
      }
      out.queueUs = monoUs() - payload.pushUs;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(out));
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' });
    res.end('ok');
  });
  // Keep idle upgraded sockets: node:http's timeouts do not apply after the
  // upgrade, but headersTimeout/requestTimeout would bite slow handshakes.
  server.requestTimeout = 0;
  server.headersTimeout = 60000;

  wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 16 * 1024 * 1024, clientTracking: true });
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary, compress: false }));
    ws.on('error', () => {});
  });

  server.listen({ port, host: '127.0.0.1', backlog: 4096 }, () => console.log(`listening ${port}`));

  process.once('SIGTERM', () => {
    for (const ws of wss.clients) ws.terminate();
    server.close();
    process.exit(0);
  });
}
