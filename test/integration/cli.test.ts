/** The CLI as a user runs it: validate, schema, overrides. */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { request } from 'undici';
import { CLI, ROOT, baseConfig, startGateway } from '../helpers/gateway.js';
import { startUpstream } from '../helpers/upstream.js';

function cli(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: ROOT, env: { ...process.env, ...env }, encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function file(name: string, text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-cli-'));
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe('turnpike validate', () => {
  it('accepts a valid YAML config', () => {
    const p = file('ok.yaml', `
upstreams:
  users:
    targets: [http://127.0.0.1:9001]
routes:
  - id: users
    path: /api/v1/users/:id
    methods: [GET]
    upstream: users
`);
    const r = cli(['validate', p]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toContain('valid (1 routes, 1 upstreams)');
  });

  it('lists every problem by its path and exits non-zero', () => {
    const p = file('bad.yaml', `
server: { port: 99999, colour: blue }
upstreams:
  users:
    targets: [http://127.0.0.1:9001]
routes:
  - id: a
    path: /a
    upstream: usres
  - id: a
    path: /b/:x(
    upstream: users
`);
    const r = cli(['validate', p]);
    expect(r.code).toBe(1);
    expect(r.err).toContain('routes[0].upstream: unknown upstream "usres" (did you mean "users"?)');
    expect(r.err).toMatch(/server\.port/);
    expect(r.err).toMatch(/server.*colour/);
    expect(r.err).toMatch(/routes\[1\]\.id/);
    expect(r.err).toMatch(/routes\[1\]\.path/);
  });

  it('checks admin.tokensFile: a missing file or a bad line is a problem', () => {
    const cfg = (tokens: string) => `
admin: { tokensFile: ${JSON.stringify(tokens)} }
upstreams: { u: { targets: [http://127.0.0.1:9001] } }
routes: [ { id: r, path: /, upstream: u } ]
`;
    const missing = cli(['validate', file('tok-missing.yaml', cfg(join(tmpdir(), `turnpike-no-such-tokens-${process.pid}`)))]);
    expect(missing.code).toBe(1);
    expect(missing.err).toMatch(/admin\.tokensFile: cannot read .*no-such-tokens.* \(not found\); fix the path or remove the setting/);
    const bad = cli(['validate', file('tok-bad.yaml', cfg(file('tokens-bad', 'ops admin sha256:abc\n')))]);
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/admin\.tokensFile .*tokens-bad has 1 bad line/);
    const okTokens = file('tokens-ok', `ops admin sha256:${'a'.repeat(64)}\n`);
    const ok = cli(['validate', file('tok-ok.yaml', cfg(okTokens))]);
    expect(ok.err).toBe('');
    expect(ok.code).toBe(0);
  });

  it('reports a YAML syntax error with its position', () => {
    const r = cli(['validate', file('syntax.yaml', 'routes: [\n  - id: x\n')]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/syntax\.yaml:2:\d+: .*YAML syntax error/);
  });

  it('reports a missing file with what to do', () => {
    const r = cli(['validate', '/nonexistent/turnpike.yaml']);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/nonexistent/);
  });
});

describe('turnpike schema', () => {
  it('prints a JSON Schema with descriptions', () => {
    const r = cli(['schema']);
    expect(r.code).toBe(0);
    const s = JSON.parse(r.out);
    expect(s.type).toBe('object');
    expect(s.properties.server.properties.port.description).toMatch(/default/i);
  });
});

describe('overrides', () => {
  it('environment overrides the file and --set overrides the environment', async () => {
    const up = await startUpstream();
    const gw = await startGateway(
      baseConfig({ upstreams: { up: { targets: [up.url] } }, routes: [{ id: 'r', path: '/*', upstream: 'up' }] }),
      { env: { TURNPIKE_SERVER__REQUESTIDHEADER: 'x-from-env', TURNPIKE_SERVER__LIMITS__MAXURLBYTES: '100' }, args: ['--set', 'server.requestIdHeader=x-trace-id'] },
    );
    try {
      const r = await request(gw.url + '/a');
      await r.body.dump();
      expect(String(r.headers['x-trace-id'])).toMatch(/^[a-z0-9]+-0-[a-z0-9]+$/);
      expect(r.headers['x-from-env']).toBeUndefined();
      const long = await request(gw.url + '/' + 'a'.repeat(120));
      await long.body.dump();
      expect(long.statusCode).toBe(414);
    } finally {
      await gw.stop();
      await up.close();
    }
  });
});
