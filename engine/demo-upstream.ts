/**
 * The built-in demo upstream, started only with the embedded default config
 * (`npm start` without --config) so a new user sees a request go through
 * the gateway in one command. It echoes what it received as JSON.
 */
import http from 'node:http';

export function startDemoUpstream(port: number, host = '127.0.0.1'): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    let size = 0;
    req.on('data', (c: Buffer) => { size += c.length; });
    req.on('end', () => {
      const body = JSON.stringify({
        service: 'turnpike-demo-upstream',
        method: req.method,
        url: req.url,
        bodyBytes: size,
        headers: req.headers,
      }, null, 2);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      reject(new Error(`demo upstream cannot listen on ${host}:${port} (${err.code}); free the port or run with --config`));
    });
    server.listen(port, host, () => resolve(server));
  });
}
