// Fallback upstream when nginx is missing: node:http answering "ok" to any
// request (draining POST bodies) and a 1 MiB body on /1mb.
// usage: node upstream-node.mjs <port>
import http from 'node:http';

const port = Number(process.argv[2] || 18000);
const big = Buffer.alloc(1024 * 1024, 'x');
const server = http.createServer((req, res) => {
  const reply = () => {
    if (req.url === '/1mb') {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': big.length });
      res.end(big);
    } else {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 2 });
      res.end('ok');
    }
  };
  if (req.method === 'GET' || req.method === 'HEAD') reply();
  else {
    req.resume();
    req.once('end', reply);
  }
});
server.keepAliveTimeout = 120_000;
server.maxRequestsPerSocket = 0;
server.listen(port, '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
