// Peer: node-http-proxy (http-proxy 1.x) on node:http with a keep-alive agent
// sized like the other peers' upstream pools.
// usage: node node-http-proxy.mjs <listenPort> <upstreamUrl> [maxSockets]
import http from 'node:http';
import httpProxy from 'http-proxy';

const [port, target, maxSockets = '512'] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: true, maxSockets: Number(maxSockets), maxFreeSockets: Number(maxSockets) });
const proxy = httpProxy.createProxyServer({ target, agent, xfwd: false });
proxy.on('error', (err, req, res) => {
  if (!res.headersSent) res.writeHead(502);
  res.end();
});
const server = http.createServer((req, res) => proxy.web(req, res));
server.keepAliveTimeout = 120_000;
server.maxRequestsPerSocket = 0;
server.listen(Number(port), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
