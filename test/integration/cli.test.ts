/** The CLI as a user runs it: help, init, validate, schema, overrides, durations, two gateways in one directory. */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { request } from 'undici';
import { CLI, ROOT, baseConfig, startGateway, startGatewayFile, type Gateway } from '../helpers/gateway.js';
import { startUpstream } from '../helpers/upstream.js';

function cli(args: string[], env: Record<string, string> = {}, cwd = ROOT) {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd, env: { ...process.env, ...env }, encoding: 'utf8' });
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

describe('turnpike --help', () => {
  const COMMANDS = ['start', 'validate', 'reload', 'schema', 'init'];

  it('every command has its usage, options, examples and exit codes; help <command> says the same', () => {
    for (const c of COMMANDS) {
      const r = cli([c, '--help']);
      expect(r.code, c).toBe(0);
      expect(r.err, c).toBe('');
      expect(r.out, c).toMatch(new RegExp(`^Usage: turnpike ${c}`));
      expect(r.out, c).toContain('Examples:');
      expect(r.out, c).toMatch(/Exit codes:\n {2}0 {2}.+\n {2}1 {2}|Exit codes:\n {2}0 {2}.+\n {2}2 {2}/);
      expect(cli([c, '-h']).out, c).toBe(r.out);
      expect(cli(['help', c]).out, c).toBe(r.out);
    }
    const start = cli(['start', '--help']).out;
    for (const o of ['--config FILE', '--set path=value', '--port N', '--workers N', '--watch']) expect(start).toContain(o);
    const validate = cli(['validate', '--help']).out;
    for (const o of ['--diff', '--admin URL', 'warning:', '.turnpike/admin-token-<port>']) expect(validate).toContain(o);
    expect(cli(['reload', '--help']).out).toContain('--admin URL');
  });

  it('--help wins over the rest of the line', () => {
    const r = cli(['start', '--no-such-flag', '--help']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^Usage: turnpike start/);
  });

  it('the general help lists every command; a wrong one is a usage error with a suggestion', () => {
    const all = cli(['--help']);
    expect(all.code).toBe(0);
    for (const c of COMMANDS) expect(all.out).toMatch(new RegExp(`^  ${c} `, 'm'));
    expect(cli([]).out).toBe(all.out);
    const typo = cli(['strat']);
    expect(typo.code).toBe(2);
    expect(typo.err).toContain('unknown command "strat" (did you mean "start"?)');
    const helpTypo = cli(['help', 'relaod']);
    expect(helpTypo.code).toBe(2);
    expect(helpTypo.err).toContain('did you mean "reload"?');
  });

  it('a usage error prints the command\'s own help and exits 2', () => {
    const r = cli(['validate']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^turnpike: validate needs a FILE\n\nUsage: turnpike validate/);
    const bad = cli(['reload', '--bogus']);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/unknown option --bogus\n\nUsage: turnpike reload/);
  });
});

describe('--admin and TURNPIKE_ADMIN_URL', () => {
  it('refuse a URL with credentials and never echo them, from either source', () => {
    const secret = 'hunter2-secret';
    const cases: { args: string[]; env: Record<string, string> }[] = [
      { args: ['reload', '--admin', `http://admin:${secret}@127.0.0.1:1`], env: {} },
      { args: ['reload'], env: { TURNPIKE_ADMIN_URL: `http://admin:${secret}@127.0.0.1:1` } },
      { args: ['reload'], env: { TURNPIKE_ADMIN_URL: `http://:${secret}@127.0.0.1:1` } },
      // Not a URL at all: still not echoed with the secret.
      { args: ['reload'], env: { TURNPIKE_ADMIN_URL: `http://admin:${secret}@127.0.0.1:99999999` } },
    ];
    for (const c of cases) {
      const r = cli(c.args, { TURNPIKE_ADMIN_TOKEN: 'x'.repeat(32), ...c.env });
      expect(r.code, JSON.stringify(c)).not.toBe(0);
      expect(r.out + r.err, JSON.stringify(c)).not.toContain(secret);
      expect(r.err, JSON.stringify(c)).toMatch(/credentials|not a URL/);
    }
  });
});

describe('turnpike init', () => {
  it('prints a commented starter config that validates, and starts', async () => {
    const printed = cli(['init']);
    expect(printed.code).toBe(0);
    const text = printed.out;
    for (const section of ['server:', 'admin:', 'upstreams:', 'routes:', 'headers:', 'timeouts:']) expect(text).toContain(section);
    // Every key line carries a comment with its default (sections and list items aside).
    for (const key of ['port', 'workers', 'drainTimeoutMs', 'maxBodyBytes', 'connectMs', 'idleTimeoutMs', 'balance']) {
      expect(text).toMatch(new RegExp(`^\\s+${key}: .*# .*default`, 'm'));
    }
    const dir = mkdtempSync(join(tmpdir(), 'turnpike-init-'));
    const file = join(dir, 'turnpike.yaml');
    writeFileSync(file, text);
    const v = cli(['validate', file]);
    expect(v.err).toBe('');
    expect(v.code).toBe(0);
    expect(v.out).toContain('valid (2 routes, 1 upstreams)');

    const up = await startUpstream();
    const gw = await startGatewayFile(file, {
      args: ['--set', 'server.host=127.0.0.1', '--port', '0', '--workers', '1', '--set', 'admin.enabled=false', '--set', `upstreams.app.targets[0]=${up.url}`],
    });
    try {
      const r = await request(`${gw.url}/api/hello?x=1`, { headers: { cookie: 'session=1' } });
      await r.body.dump();
      expect(r.statusCode).toBe(200);
      expect(r.headers['x-content-type-options']).toBe('nosniff');
      expect(r.headers['cache-control']).toBe('no-store');
      const seen = up.seen.at(-1)!;
      expect(seen.url).toBe('/hello?x=1');
      expect(seen.headers['x-gateway']).toBe('turnpike');
      expect(seen.headers['cookie']).toBeUndefined();
      const site = await request(`${gw.url}/about`);
      await site.body.dump();
      expect(site.statusCode).toBe(200);
      expect(up.seen.at(-1)!.url).toBe('/about');
    } finally {
      await gw.stop();
      await up.close();
    }
  });

  it('writes FILE, never over an existing one', () => {
    const dir = mkdtempSync(join(tmpdir(), 'turnpike-init-'));
    const file = join(dir, 'gw.yaml');
    const w = cli(['init', file]);
    expect(w.code).toBe(0);
    expect(w.out).toContain(`wrote ${file}`);
    expect(readFileSync(file, 'utf8')).toBe(cli(['init']).out);
    writeFileSync(file, 'mine\n');
    const again = cli(['init', file]);
    expect(again.code).toBe(1);
    expect(again.err).toContain('already exists; nothing was written');
    expect(readFileSync(file, 'utf8')).toBe('mine\n');
    const json = cli(['init', join(dir, 'gw.json')]);
    expect(json.code).toBe(2);
    expect(json.err).toContain('name the file *.yaml or *.yml');
    expect(existsSync(join(dir, 'gw.json'))).toBe(false);
  });
});

describe('turnpike validate: what can never work, and warnings', () => {
  it('refuses unknown and uWS-unreachable methods, {id} parameters and spaces, with hints', () => {
    const p = file('never.yaml', `
server: { backend: uws }
upstreams: { u: { targets: [http://127.0.0.1:9001] } }
routes:
  - { id: purge, path: /cache/*, methods: [PURGE], upstream: u }
  - { id: typo, path: /a, methods: [GTE], upstream: u }
  - { id: braces, path: "/users/{id}", upstream: u }
  - { id: space, path: "/my files", upstream: u }
`);
    const r = cli(['validate', p]);
    expect(r.code).toBe(1);
    expect(r.err).toContain('routes[0].methods[0]: PURGE can never reach this route on the uWS backend');
    expect(r.err).toContain('use server.backend: node (or bun)');
    expect(r.err).toContain('routes[1].methods[0]: unknown HTTP method "GTE" (did you mean "GET"?)');
    expect(r.err).toContain('routes[2].path: "{id}" is not a path parameter here');
    expect(r.err).toContain('write ":id"');
    expect(r.err).toContain('routes[3].path: contains a space');
    // The same routes on Bun: PURGE is fine there.
    const bun = cli(['validate', p, '--set', 'server.backend=bun']);
    expect(bun.err).not.toContain('PURGE');
  });

  it('warns (exit 0, "warning:" on stderr) about unused upstreams, no routes and header names uWS never receives', () => {
    const p = file('warn.yaml', `
upstreams:
  u: { targets: [http://127.0.0.1:9001] }
  spare: { targets: [http://127.0.0.1:9002] }
routes:
  - { id: r, path: /, upstream: u, match: { headers: { x_tenant: a } } }
`);
    const r = cli(['validate', p]);
    expect(r.code).toBe(0);
    expect(r.out).toContain('valid (1 routes, 2 upstreams)');
    const warnings = r.err.trim().split('\n');
    expect(warnings).toHaveLength(2);
    for (const w of warnings) expect(w).toMatch(/^warning: /);
    expect(r.err).toContain('warning: routes[0].match.headers.x_tenant: the uWS backend never receives a header named "x_tenant"');
    expect(r.err).toContain('warning: upstreams.spare: no route uses this upstream');
    const empty = cli(['validate', file('empty.yaml', 'routes: []\n')]);
    expect(empty.code).toBe(0);
    expect(empty.err).toBe('warning: routes: no routes: every request will be answered 404 route_not_found; add a route under "routes" (turnpike init prints an example)\n');
  });

  it('durations from the file, the environment and --set; a bad one names the accepted forms', () => {
    const p = file('dur.yaml', `
server: { drainTimeoutMs: 5s }
upstreams: { u: { targets: [http://127.0.0.1:9001], timeouts: { connectMs: 250ms, totalMs: 1m }, pool: { idleTimeoutMs: 1h } } }
routes: [ { id: r, path: /, upstream: u } ]
`);
    expect(cli(['validate', p]).code).toBe(0);
    expect(cli(['validate', p, '--set', 'upstreams.u.timeouts.responseMs=2s'], { TURNPIKE_UPSTREAMS__U__TIMEOUTS__IDLEMS: '30s' }).code).toBe(0);
    const bad = cli(['validate', p, '--set', 'upstreams.u.timeouts.connectMs=5 sec']);
    expect(bad.code).toBe(1);
    expect(bad.err).toContain('upstreams.u.timeouts.connectMs: must be a number of milliseconds or a duration such as "250ms", "5s", "1m" (got "5 sec")');
    const big = cli(['validate', p], { TURNPIKE_SERVER__DRAINTIMEOUTMS: '2h' });
    expect(big.code).toBe(1);
    expect(big.err).toContain('server.drainTimeoutMs: must be from 0 ms to 3600000 ms (1h) (got "2h" = 7200000 ms)');
  });
});

describe('two gateways started from one directory', () => {
  it('keep their own generated admin token and audit log, named by admin port; reload finds each', async () => {
    delete process.env['TURNPIKE_ADMIN_TOKEN'];
    delete process.env['TURNPIKE_ADMIN_TOKEN_FILE'];
    const cwd = mkdtempSync(join(tmpdir(), 'turnpike-two-'));
    const config = join(cwd, 'turnpike.yaml');
    // admin.port 0: each gateway binds a free port, and names its files by that port.
    writeFileSync(config, `
server: { host: 127.0.0.1, port: 0, workers: 1 }
admin: { host: 127.0.0.1, port: 0 }
upstreams:
  u: { targets: [http://127.0.0.1:9001] }
  spare: { targets: [http://127.0.0.1:9002] }
routes: [ { id: r, path: /, upstream: u } ]
`);
    const tokenFile = (g: Gateway) => join(cwd, '.turnpike', `admin-token-${g.adminPort}`);
    const auditFile = (g: Gateway) => join(cwd, '.turnpike', `audit-${g.adminPort}.log`);
    const a = await startGatewayFile(config, { cwd });
    const b = await startGatewayFile(config, { cwd });
    let c: Gateway | null = null;
    try {
      expect(a.adminPort).not.toBe(b.adminPort);
      const tokA = readFileSync(tokenFile(a), 'utf8').trim();
      const tokB = readFileSync(tokenFile(b), 'utf8').trim();
      expect(tokA).not.toBe(tokB);
      // The warning of the running config is in the gateway log.
      expect(a.logs.join('\n')).toContain('config warning: upstreams.spare: no route uses this upstream');

      // Each reload finds its gateway's token from the admin URL's port, and is audited in that gateway's file only.
      for (const [g, other] of [[a, b], [b, a]] as const) {
        const before = existsSync(auditFile(other)) ? readFileSync(auditFile(other), 'utf8') : '';
        const r = cli(['reload', '--admin', `http://127.0.0.1:${g.adminPort}`], {}, cwd);
        expect(r.code, r.err).toBe(0);
        expect(r.out).toContain('reloaded: config version');
        // The admin API's reload answer carries the warnings; the CLI prints them.
        expect(r.err).toContain('warning: upstreams.spare: no route uses this upstream');
        const last = JSON.parse(readFileSync(auditFile(g), 'utf8').trim().split('\n').at(-1)!);
        expect(last).toMatchObject({ actor: 'generated', action: 'config.reload', result: 'applied' });
        expect(existsSync(auditFile(other)) ? readFileSync(auditFile(other), 'utf8') : '').toBe(before);
      }
      const diff = cli(['validate', '--diff', config, '--admin', `http://127.0.0.1:${b.adminPort}`], {}, cwd);
      expect(diff.code, diff.err).toBe(0);
      expect(diff.out).toContain('(dry run: nothing was applied)');

      // A third one on a's admin port cannot start, and leaves a's token alone.
      const err = await startGatewayFile(config, { cwd, args: ['--set', `admin.port=${a.adminPort}`] }).then(
        (g) => { c = g; return null; },
        (e: Error) => e,
      );
      expect(err?.message).toMatch(new RegExp(`admin cannot listen on 127\\.0\\.0\\.1:${a.adminPort} \\(EADDRINUSE\\); change admin\\.port`));
      expect(readFileSync(tokenFile(a), 'utf8').trim()).toBe(tokA);
      expect(cli(['reload', '--admin', `http://127.0.0.1:${a.adminPort}`], {}, cwd).code).toBe(0);

      // A stopped gateway takes its token file with it; the other's stays, audit logs stay.
      expect(await a.stop()).toBe(0);
      expect(existsSync(tokenFile(a))).toBe(false);
      expect(existsSync(auditFile(a))).toBe(true);
      expect(readFileSync(tokenFile(b), 'utf8').trim()).toBe(tokB);
      const gone = cli(['reload', '--admin', `http://127.0.0.1:${a.adminPort}`], {}, cwd);
      expect(gone.code).toBe(1);
      expect(gone.err).toContain(`.turnpike/admin-token-${a.adminPort}`);

      // The name older versions wrote is still read when there is no per-port file...
      renameSync(tokenFile(b), join(cwd, '.turnpike', 'admin-token'));
      expect(cli(['reload', '--admin', `http://127.0.0.1:${b.adminPort}`], {}, cwd).code).toBe(0);
      // ...and a stale one is explained.
      writeFileSync(join(cwd, '.turnpike', 'admin-token'), 'some-old-token\n');
      const stale = cli(['reload', '--admin', `http://127.0.0.1:${b.adminPort}`], {}, cwd);
      expect(stale.code).toBe(1);
      expect(stale.err).toContain('refused the token from .turnpike/admin-token (401)');
      expect(stale.err).toContain('the name older versions used');
    } finally {
      await a.stop();
      await b.stop();
      await (c as Gateway | null)?.stop();
    }
  });
});
