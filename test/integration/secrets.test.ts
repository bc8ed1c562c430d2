/**
 * Secrets in the config never show, wherever a config value is rendered
 * (common/config/redact.ts decides for all of them): a gateway whose config
 * sets every secret-bearing field (the Redis URL's password and a secret
 * query parameter, Authorization/X-Api-Key/Cookie/Set-Cookie/X-Auth-Token
 * header edits, secret match predicates, the admin token), then every
 * rendering an operator or a viewer token can see:
 *  - GET /admin/config, /admin/status, /admin/routes, /admin/upstreams,
 *    /metrics, /health;
 *  - POST /admin/config/validate and PUT /admin/config: valid (change
 *    lists), invalid (422 problems that quote values back), malformed
 *    (a JSON syntax error right at a secret: V8 quotes the text around it);
 *  - GET /admin/audit and the audit file;
 *  - a SIGHUP reload of a file that is refused (the `config refused` line);
 *  - `turnpike validate FILE` (refused and valid) and `validate --diff`;
 *  - a start refused for an invalid config and for a JSON syntax error;
 *  - the whole gateway log and the access log (a request carrying a secret
 *    query parameter), including the rate-limit store's lines about its
 *    unreachable Redis.
 * None may contain any secret's text.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { CLI, startGateway, startGatewayFile, type Gateway } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const tag = randomBytes(3).toString('hex');
/** Every secret, distinctive enough that finding its text anywhere is a leak. */
const S = {
  redisPassword: `rEdIsPw${tag}q1`,
  redisQueryPassword: `rEdIsQs${tag}q2`,
  authorization: `aUtHhDr${tag}q3`,
  apiKey: `aPiKeY${tag}q4`,
  cookie: `cOoKiE${tag}q5`,
  setCookie: `sEtCoOkIe${tag}q6`,
  routeToken: `rOuTeToKeN${tag}q7`,
  matchSecret: `mAtChSeCrEt${tag}q8`,
  matchQuery: `mAtChQuErY${tag}q9`,
  targetPassword: `tArGeTpW${tag}q10`,
  admin: `aDmInToKeN${tag}${randomBytes(12).toString('hex')}`,
  redisPassword2: `rEdIsPwTwO${tag}q11`,
  headerInWrongPlace: `wRoNgPlAcE${tag}q12`,
};
const SECRETS = Object.values(S);

function leaks(text: string): string[] {
  return SECRETS.filter((s) => text.includes(s));
}

let up: Upstream;
let gw: Gateway;
let admin: string;
let redisPort: number;
const dir = mkdtempSync(join(tmpdir(), 'turnpike-secrets-'));

async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** The config with every secret-bearing field set. */
function doc(redisPassword = S.redisPassword): Record<string, any> {
  return {
    server: {
      host: '127.0.0.1', port: 0, workers: 1,
      headers: { request: { set: { Authorization: `Bearer ${S.authorization}`, 'X-Api-Key': S.apiKey, 'X-Plain': 'visible' } } },
    },
    admin: { enabled: true, host: '127.0.0.1', port: 0 },
    // Never reachable: the rate-limit store logs about it (with its address).
    redis: { url: `redis://default:${redisPassword}@127.0.0.1:${redisPort}/0?password=${S.redisQueryPassword}`, connectTimeoutMs: 200 },
    upstreams: {
      u: {
        targets: [up.url],
        headers: { request: { set: { Cookie: `session=${S.cookie}` } }, response: { set: { 'Set-Cookie': `sid=${S.setCookie}; HttpOnly` } } },
      },
    },
    routes: [{
      id: 'r', path: '/r/*', upstream: 'u',
      headers: { request: { add: { 'X-Auth-Token': S.routeToken } } },
      match: { headers: { 'x-client-secret': S.matchSecret }, query: { api_key: S.matchQuery } },
    }],
  };
}

/** A refused document whose problems would quote secrets back if they could. */
function refusedDoc(): Record<string, any> {
  const d = doc();
  d.upstreams.u.targets = [`http://user:${S.targetPassword}@127.0.0.1:99999`, `user:${S.targetPassword}@127.0.0.1:1`];
  // An Authorization header written as a string where the map of headers goes.
  d.upstreams.u.headers.request.add = `Authorization: Bearer ${S.headerInWrongPlace}`;
  d.routes[0].headers.request.set = { 'X-Api-Key': [S.apiKey] };
  d.redis.url = `http://:${S.redisPassword}@127.0.0.1:${redisPort}`;
  return d;
}

async function api(method: string, path: string, body?: string, type = 'application/json'): Promise<{ status: number; text: string }> {
  const headers: Record<string, string> = { authorization: `Bearer ${S.admin}` };
  if (body !== undefined) headers['content-type'] = type;
  const r = await request(admin + path, { method: method as any, headers, ...(body !== undefined ? { body } : {}) });
  return { status: r.statusCode, text: await r.body.text() };
}

function cli(args: string[]) {
  const env = { ...process.env, TURNPIKE_ADMIN_TOKEN: S.admin, TURNPIKE_LOG_FORMAT: 'json' };
  delete (env as Record<string, string | undefined>)['TURNPIKE_ADMIN_URL'];
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: dir, env, encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, text: `${r.stdout}\n${r.stderr}` };
}

beforeAll(async () => {
  up = await startUpstream();
  redisPort = await closedPort();
  gw = await startGateway(doc(), { env: { TURNPIKE_ADMIN_TOKEN: S.admin }, cwd: dir });
  admin = `http://127.0.0.1:${gw.adminPort}`;
}, 60_000);

afterAll(async () => {
  await gw?.stop();
  await up?.close();
});

describe('config secrets are never rendered', () => {
  it('the gateway serves with them (they are really in use)', async () => {
    const r = await request(`${gw.url}/r/x?api_key=${S.matchQuery}`, { headers: { 'x-client-secret': S.matchSecret } });
    await r.body.dump();
    expect(r.statusCode).toBe(200);
    expect(String(r.headers['set-cookie'])).toContain(S.setCookie);
    const seen = up.seen.at(-1)!;
    expect(seen.headers['authorization']).toBe(`Bearer ${S.authorization}`);
    expect(seen.headers['x-auth-token']).toBe(S.routeToken);
  });

  it('GET /admin/config redacts every one of them, the same way; the other admin pages show none', async () => {
    const r = await api('GET', '/admin/config');
    expect(r.status).toBe(200);
    expect(leaks(r.text)).toEqual([]);
    const c = JSON.parse(r.text);
    expect(c.redis.url).toBe(`redis://[redacted]@127.0.0.1:${redisPort}/0?password=[redacted]`);
    expect(c.server.headers.request.set).toEqual([['authorization', '[redacted]'], ['x-api-key', '[redacted]'], ['x-plain', 'visible']]);
    expect(c.upstreams.u.headers.request.set).toEqual([['cookie', '[redacted]']]);
    expect(c.upstreams.u.headers.response.set).toEqual([['set-cookie', '[redacted]']]);
    expect(c.routes[0].headers.request.add).toEqual([['x-auth-token', '[redacted]']]);
    expect(c.routes[0].match.headers).toEqual([['x-client-secret', '[redacted]']]);
    expect(c.routes[0].match.query).toEqual([['api_key', '[redacted]']]);
    for (const path of ['/admin/status', '/admin/routes', '/admin/upstreams', '/admin/stats', '/metrics', '/health']) {
      const p = await api('GET', path);
      expect(leaks(p.text), path).toEqual([]);
    }
  });

  it('validate and replace: change lists, refused documents (422), malformed bodies (400), the audit trail', async () => {
    const changed = doc(S.redisPassword2);
    changed.server.headers.request.set['X-Api-Key'] = `${S.apiKey}-rotated`;
    const answers: Array<{ status: number; text: string }> = [];
    answers.push(await api('POST', '/admin/config/validate', JSON.stringify(changed)));
    expect(answers[0]!.status).toBe(200);
    expect(JSON.parse(answers[0]!.text).changes.settings).toEqual(expect.arrayContaining(['server.headers.request.set', 'redis.url']));
    const refused = await api('POST', '/admin/config/validate', JSON.stringify(refusedDoc()));
    expect(refused.status).toBe(422);
    const problems = JSON.parse(refused.text).error.errors as { path: string; message: string }[];
    // The problems are there, said without the values.
    expect(problems.map((p) => p.path)).toEqual(expect.arrayContaining(['upstreams.u.targets[0]', 'upstreams.u.targets[1]', 'redis.url']));
    expect(problems.find((p) => p.path === 'upstreams.u.targets[1]')!.message).toContain('[redacted]@127.0.0.1:1');
    answers.push(refused);
    answers.push(await api('PUT', '/admin/config', JSON.stringify(refusedDoc())));
    expect(answers.at(-1)!.status).toBe(422);
    answers.push(await api('PUT', '/admin/config?dryRun=true', JSON.stringify(changed)));
    // V8's JSON.parse quotes the text around a syntax error: here, the Redis password.
    answers.push(await api('PUT', '/admin/config', `{"redis": {"url": redis://:${S.redisPassword}@127.0.0.1:6379}}`));
    expect(answers.at(-1)!.status).toBe(400);
    answers.push(await api('PUT', '/admin/config', `redis:\n  url: "redis://:${S.redisPassword}@h\n`, 'application/yaml'));
    expect(answers.at(-1)!.status).toBe(400);
    answers.push(await api('PUT', '/admin/config', JSON.stringify(changed)));
    expect([200, 422]).toContain(answers.at(-1)!.status);
    for (const a of answers) expect(leaks(a.text), a.text.slice(0, 300)).toEqual([]);
    const audit = await api('GET', '/admin/audit?limit=100');
    expect(JSON.parse(audit.text).items.length).toBeGreaterThanOrEqual(4);
    expect(leaks(audit.text)).toEqual([]);
    const files = readdirSync(join(dir, '.turnpike')).filter((f) => f.startsWith('audit-'));
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) expect(leaks(readFileSync(join(dir, '.turnpike', f), 'utf8')), f).toEqual([]);
  });

  it('a SIGHUP reload of a refused file logs its problems without the secrets', async () => {
    const before = gw.logs.length;
    writeFileSync(gw.configFile, JSON.stringify(refusedDoc(), null, 2));
    gw.proc.kill('SIGHUP');
    await expect.poll(() => gw.logs.slice(before).some((l) => l.includes('config refused')), { timeout: 5000 }).toBe(true);
    const line = gw.logs.slice(before).find((l) => l.includes('config refused'))!;
    expect(JSON.parse(line).problems.length).toBeGreaterThan(0);
    expect(leaks(line)).toEqual([]);
  });

  it('turnpike validate, refused and valid, and validate --diff against the gateway', () => {
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify(refusedDoc()));
    const refused = cli(['validate', bad]);
    expect(refused.code).toBe(1);
    expect(refused.text).toContain('upstreams.u.targets[1]');
    expect(leaks(refused.text)).toEqual([]);
    const syntax = join(dir, 'syntax.json');
    writeFileSync(syntax, `{"redis": {"url": redis://:${S.redisPassword}@h}}`);
    const s = cli(['validate', syntax]);
    expect(s.code).toBe(1);
    expect(leaks(s.text)).toEqual([]);
    const good = join(dir, 'good.json');
    const changed = doc(S.redisPassword2);
    writeFileSync(good, JSON.stringify(changed));
    const diff = cli(['validate', good, '--diff', '--admin', admin]);
    expect(diff.code, diff.text).toBe(0);
    expect(diff.text).toContain('would change');
    expect(leaks(diff.text)).toEqual([]);
  });

  it('a start refused for an invalid config or a JSON syntax error says nothing of the secrets', async () => {
    const err = await startGateway(refusedDoc(), { cwd: dir }).then(() => null, (e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err!.message).toContain('the configuration is invalid');
    expect(leaks(err!.message)).toEqual([]);
    const file = join(dir, 'start-syntax.json');
    writeFileSync(file, `{"server": {"port": 0}, "redis": {"url": redis://:${S.redisPassword}@h}}`);
    const err2 = await startGatewayFile(file, { cwd: dir }).then(() => null, (e: Error) => e);
    expect(err2).toBeInstanceOf(Error);
    expect(leaks(err2!.message)).toEqual([]);
  });

  it('the whole gateway log and access log: none of them, the Redis store\'s lines included', async () => {
    await expect.poll(() => gw.logs.some((l) => l.includes('127.0.0.1:' + redisPort)), { timeout: 10_000 }).toBe(true);
    const text = gw.logs.join('\n');
    expect(text).toContain('[REDACTED]'); // the access line of the request with api_key=...
    expect(leaks(text)).toEqual([]);
  });
});
