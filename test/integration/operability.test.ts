/**
 * An operator's first hour (issue 9): a health endpoint on the public
 * listener for load balancers, a drain delay so they take the node out
 * before it stops accepting, and the running config dumped in its file
 * format so that it round-trips into PUT /admin/config, which keeps a
 * backup and the file's mode.
 */
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { parse as parseYaml } from 'yaml';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { rawExchange } from '../helpers/raw-http.js';

const TOKEN = 'operability-test-admin-token-0123456789';
let up: Upstream;

beforeAll(async () => {
  up = await startUpstream((req, res) => { res.end('ok ' + req.url); });
});
afterAll(async () => {
  await up?.close();
});

function config(server: Record<string, unknown> = {}) {
  return baseConfig({
    server: { workers: 2, ...server },
    admin: { enabled: true, port: 0 },
    upstreams: { up: { targets: [up.url] } },
    routes: [{ id: 'all', path: '/*', upstream: 'up' }],
  });
}

async function get(url: string, method = 'GET', headers: Record<string, string> = {}) {
  const r = await request(url, { method: method as any, headers });
  return { status: r.statusCode, headers: r.headers, body: await r.body.text() };
}

describe('server.healthPath and server.drainDelayMs', () => {
  it('answers health checks on the public listener, not routed; fails them during the drain delay while requests are still served', async () => {
    const gw = await startGateway(config({ healthPath: '/healthz', drainDelayMs: 1500, drainTimeoutMs: 2000 }), { env: { TURNPIKE_ADMIN_TOKEN: TOKEN } });
    try {
      const h = await get(gw.url + '/healthz');
      expect(h).toMatchObject({ status: 200, body: '{"status":"ok"}' });
      expect(h.headers['content-type']).toBe('application/json');
      expect(h.headers['cache-control']).toBe('no-store');
      expect(up.seen.some((s) => s.url === '/healthz')).toBe(false); // answered by the gateway, not the catch-all route
      const head = await rawExchange(gw.port, 'HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n', true);
      expect(head.res.status).toBe(200);
      expect(head.res.body.length).toBe(0);
      expect(head.res.headers.find(([k]) => k === 'content-length')?.[1]).toBe(String('{"status":"ok"}'.length));
      head.conn.close();
      const post = await get(gw.url + '/healthz', 'POST');
      expect(post.status).toBe(405);
      expect(post.headers['allow']).toBe('GET, HEAD');
      expect((await get(gw.url + '/healthz?probe=1')).status).toBe(200);
      expect((await get(gw.url + '/healthz/sub')).body).toBe('ok /healthz/sub'); // only the exact path

      gw.proc.kill('SIGTERM');
      // During the delay: health fails everywhere, traffic is still served.
      await expect.poll(async () => (await get(gw.url + '/healthz')).status, { timeout: 1000, interval: 20 }).toBe(503);
      expect((await get(gw.url + '/healthz')).body).toBe('{"status":"draining"}');
      expect((await get(`http://127.0.0.1:${gw.adminPort}/health`)).status).toBe(503);
      for (let i = 0; i < 5; i++) expect((await get(gw.url + '/served')).status).toBe(200);
      expect(await gw.exited).toBe(0);
      const lines = gw.logs.map((l) => { try { return JSON.parse(l); } catch { return null; } }).filter((j) => j?.msg);
      const delay = lines.findIndex((j) => j.msg === 'drain delay: health checks fail, requests are still served');
      const draining = lines.findIndex((j) => j.msg === 'draining');
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(lines[delay].delayMs).toBe(1500);
      expect(draining).toBeGreaterThan(delay);
      expect(Date.parse(lines[draining].time) - Date.parse(lines[delay].time)).toBeGreaterThanOrEqual(1400);
    } finally {
      await gw.stop();
    }
  });

  it('is off by default: the path is routed like any other', async () => {
    const gw = await startGateway(config());
    try {
      expect((await get(gw.url + '/healthz')).body).toBe('ok /healthz');
    } finally {
      await gw.stop();
    }
  });
});

describe('GET /admin/config?format=file and PUT /admin/config', () => {
  let gw: Gateway;
  const admin = async (method: string, path: string, body?: { type: string; text: string }) => {
    const r = await request(`http://127.0.0.1:${gw.adminPort}${path}`, {
      method: method as any,
      headers: { authorization: `Bearer ${TOKEN}`, ...(body ? { 'content-type': body.type } : {}) },
      ...(body ? { body: body.text } : {}),
    });
    return { status: r.statusCode, type: String(r.headers['content-type'] ?? ''), text: await r.body.text() };
  };

  beforeAll(async () => {
    gw = await startGateway(config({ healthPath: '/hc' }), { env: { TURNPIKE_ADMIN_TOKEN: TOKEN, TURNPIKE_SERVER__DRAINTIMEOUTMS: '1234' } });
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it('dumps the document as written (not the overrides, not the defaults) in the file\'s format, and it round-trips', async () => {
    const dump = await admin('GET', '/admin/config?format=file');
    expect(dump.status).toBe(200);
    expect(dump.type).toBe('application/json; charset=utf-8'); // the config file is turnpike.json
    const doc = JSON.parse(dump.text);
    expect(doc).toEqual(JSON.parse(readFileSync(gw.configFile, 'utf8')));
    expect(doc.server.drainTimeoutMs).toBeUndefined(); // the environment override is not part of the document
    // Edit and send it back.
    doc.routes.push({ id: 'added', path: '/added/*', upstream: 'up' });
    const put = await admin('PUT', '/admin/config', { type: 'application/json', text: JSON.stringify(doc) });
    expect(put.status).toBe(200);
    const again = JSON.parse((await admin('GET', '/admin/config?format=file')).text);
    expect(again.routes.map((r: { id: string }) => r.id)).toEqual(['all', 'added']);
    const resolved = JSON.parse((await admin('GET', '/admin/config')).text);
    expect(resolved.server.drainTimeoutMs).toBe(1234); // the override still applies on top
  });

  it('PUT keeps a backup of the file it replaces and keeps its mode', async () => {
    chmodSync(gw.configFile, 0o640);
    const before = readFileSync(gw.configFile, 'utf8');
    const doc = JSON.parse(before);
    doc.routes = doc.routes.filter((r: { id: string }) => r.id !== 'added');
    const put = await admin('PUT', '/admin/config', { type: 'application/json', text: JSON.stringify(doc) });
    expect(put.status).toBe(200);
    expect(statSync(gw.configFile).mode & 0o777).toBe(0o640);
    expect(readFileSync(gw.configFile + '.bak', 'utf8')).toBe(before);
    expect(statSync(gw.configFile + '.bak').mode & 0o777).toBe(0o640);
    expect(JSON.parse(readFileSync(gw.configFile, 'utf8')).routes.map((r: { id: string }) => r.id)).toEqual(['all']);
  });

  it('a YAML config file is dumped as YAML', async () => {
    const yamlFile = gw.configFile.replace(/\.json$/, '.yaml');
    writeFileSync(yamlFile, 'server: { host: 127.0.0.1, port: 0, workers: 1 }\nadmin: { enabled: true, port: 0 }\n' +
      `upstreams:\n  up: { targets: ["${up.url}"] }\nroutes:\n  - { id: y, path: "/*", upstream: up }\n`);
    const { spawn } = await import('node:child_process');
    const { CLI, ROOT, trackProcess } = await import('../helpers/gateway.js');
    const p = trackProcess(spawn(process.execPath, [CLI, 'start', '--config', yamlFile], { cwd: ROOT, env: { ...process.env, TURNPIKE_LOG_FORMAT: 'json', TURNPIKE_ADMIN_TOKEN: TOKEN } }));
    p.stdout.resume();
    try {
      const adminPort = await new Promise<number>((resolve) => {
        let buf = '';
        p.stderr.on('data', (d) => {
          buf += d;
          for (const l of buf.split('\n')) { try { const j = JSON.parse(l); if (j.msg === 'turnpike started') resolve(j.adminPort); } catch { /* partial */ } }
        });
      });
      const r = await request(`http://127.0.0.1:${adminPort}/admin/config?format=file`, { headers: { authorization: `Bearer ${TOKEN}` } });
      expect(r.headers['content-type']).toBe('application/yaml; charset=utf-8');
      const doc = parseYaml(await r.body.text());
      expect(doc.routes).toEqual([{ id: 'y', path: '/*', upstream: 'up' }]);
    } finally {
      p.kill('SIGTERM');
      await new Promise((r) => p.once('exit', r));
    }
  });
});
