#!/usr/bin/env node
// The echo upstream of the WebSocket bench (ws/run.mjs): a `ws`
// WebSocketServer (ws 8.23, permessage-deflate off) that sends every message
// back as it came (text stays text), on a node:http server that answers any
// plain HTTP request with 200 "ok" (run.mjs's readiness check goes through
// the proxy's route with a plain GET).
//
//   node ws/echo.mjs <port>
//
// Prints `listening <port>` once it listens; exits on SIGTERM (closing every
// connection with 1001 first). No pings, no idle timeout: it only echoes.
import http from 'node:http';
import { WebSocketServer } from 'ws';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node ws/echo.mjs <port>');
  process.exit(2);
}

const server = http.createServer((req, res) => {
  req.resume();
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' });
  res.end('ok');
});
// Keep idle upgraded sockets: node:http's timeouts do not apply after the
// upgrade, but headersTimeout/requestTimeout would bite slow handshakes.
server.requestTimeout = 0;
server.headersTimeout = 60000;

const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 16 * 1024 * 1024, clientTracking: true });
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
