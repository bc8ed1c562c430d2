#!/usr/bin/env node
// Bun smoke test: the same gateway (dist/) started under Bun, its workers on
// Bun.serve({ reusePort }), in front of a real node:http upstream. Run by
// `npm run test:bun` (and CI). Prints "N passed, N failed".
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BUN = join(ROOT, 'node_modules/.bin/bun');

const upstream = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    if (req.url.endsWith('/cookies')) {
      res.setHeader('set-cookie', ['a=1', 'b=2']);
      res.setHeader('connection', 'keep-alive, x-hop');
      res.setHeader('x-hop', 'no');
      return res.end('cookies');
    }
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, bodyLength: body.length }));
  });
});
await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
const upPort = upstream.address().port;

const dir = mkdtempSync(join(tmpdir(), 'turnpike-bun-'));
const configFile = join(dir, 'turnpike.json');
writeFileSync(configFile, JSON.stringify({
  server: { host: '127.0.0.1', port: 0, workers: 2, backend: 'bun', limits: { maxBodyBytes: 1000 } },
  admin: { enabled: true, host: '127.0.0.1', port: 0 },
  upstreams: { up: { targets: [`http://127.0.0.1:${upPort}`] } },
  routes: [
    { id: 'users', path: '/users/:id', methods: ['GET'], upstream: 'up', rewrite: { template: '/internal/{id}' } },
    { id: 'all', path: '/api/*', upstream: 'up' },
  ],
}));

const proc = spawn(BUN, [join(ROOT, 'dist/engine/cli.js'), 'start', '--config', configFile], {
  env: { ...process.env, TURNPIKE_LOG_FORMAT: 'json' }, stdio: ['ignore', 'pipe', 'pipe'],
});
const logs = [];
const started = await new Promise((resolve, reject) => {
  let buf = '';
  proc.stderr.on('data', (c) => {
    buf += c;
    let nl;
    while ((nl = buf.indexOf('\n')) !== -1) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      logs.push(line);
      try { const j = JSON.parse(line); if (j.msg === 'turnpike started') resolve(j); } catch {}
    }
  });
  proc.on('exit', (code) => reject(new Error(`bun gateway exited (${code}):\n${logs.join('\n')}`)));
  setTimeout(() => reject(new Error(`bun gateway did not start:\n${logs.join('\n')}`)), 20000);
});
const base = `http://127.0.0.1:${started.port}`;

let passed = 0;
let failed = 0;
async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`  ok   ${name}`);
  } catch (err) {
    failed++;
    console.log(`  FAIL ${name}: ${err.message}`);
  }
}
function eq(a, b, what) {
  if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${what}: expected ${JSON.stringify(b)}, got ${JSON.stringify(a)}`);
}

console.log(`bun smoke: gateway on ${base} (backend ${started.backend})`);
await check('runs the bun backend', () => eq(started.backend, 'bun', 'backend'));
await check('proxies GET with template rewrite and query', async () => {
  const r = await fetch(`${base}/users/7?x=%20y`);
  eq(r.status, 200, 'status');
  const j = await r.json();
  eq(j.url, '/internal/7?x=%20y', 'url');
  eq(j.headers['x-forwarded-for'], '127.0.0.1', 'xff');
  eq(typeof j.headers['x-request-id'], 'string', 'request id');
});
await check('streams a POST body', async () => {
  const r = await fetch(`${base}/api/post`, { method: 'POST', body: 'x'.repeat(500) });
  eq((await r.json()).bodyLength, 500, 'bodyLength');
});
await check('413 over the body limit', async () => {
  const r = await fetch(`${base}/api/post`, { method: 'POST', body: 'x'.repeat(5000) });
  eq(r.status, 413, 'status');
});
await check('404 JSON for no route, 405 with Allow', async () => {
  const r = await fetch(`${base}/nope`);
  eq(r.status, 404, 'status');
  eq((await r.json()).error.code, 'route_not_found', 'code');
  const m = await fetch(`${base}/users/1`, { method: 'DELETE' });
  eq(m.status, 405, '405');
  eq(m.headers.get('allow')?.includes('GET'), true, 'allow');
});
await check('keeps Set-Cookie apart and strips hop-by-hop', async () => {
  const r = await fetch(`${base}/api/cookies`);
  eq(r.headers.getSetCookie(), ['a=1', 'b=2'], 'set-cookie');
  eq(r.headers.get('x-hop'), null, 'x-hop');
});
await check('normalises the path before routing', async () => {
  const r = await fetch(`${base}/api/a/../b//c`);
  eq((await r.json()).url, '/api/b/c', 'url');
});
await check('passes an extension method (PURGE) through', async () => {
  const r = await fetch(`${base}/api/purge`, { method: 'PURGE' });
  eq(r.status, 200, 'status');
  eq((await r.json()).method, 'PURGE', 'method');
});
await check('admin health sees both workers', async () => {
  const r = await fetch(`http://127.0.0.1:${started.adminPort}/health`);
  const j = await r.json();
  eq(r.status, 200, 'status');
  eq(j.workers.length, 2, 'workers');
});

proc.kill('SIGTERM');
const code = await new Promise((r) => proc.on('exit', r));
await check('drains and exits 0 on SIGTERM', async () => eq(code, 0, 'exit code'));
upstream.close();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
