import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ConfigParseError, loadConfigFile, loadConfigText, loadEmbeddedConfig, parseConfigText, validateConfig,
} from '../../../common/config/load.js';
import { defaultConfigYaml } from '../../../common/config/default-config.js';

function parseError(text: string, file: string): ConfigParseError {
  try {
    parseConfigText(text, file);
  } catch (e) {
    if (e instanceof ConfigParseError) return e;
    throw e;
  }
  throw new Error('expected a parse error');
}

describe('parseConfigText', () => {
  it('parses YAML and JSON by extension', () => {
    expect(parseConfigText('server:\n  port: 1\n  host: 0.0.0.0\n', 'a.yaml')).toEqual({ server: { port: 1, host: '0.0.0.0' } });
    expect(parseConfigText('a: on\nb: yes\n', 'a.yml')).toEqual({ a: 'on', b: 'yes' }); // YAML 1.2: not booleans
    expect(parseConfigText('\uFEFF{"server":{"port":1}}', 'a.JSON')).toEqual({ server: { port: 1 } });
    expect(parseConfigText('', 'a.yaml')).toBeNull();
    expect(parseConfigText('a: 1', '<embedded>')).toEqual({ a: 1 });
  });

  it('YAML syntax errors carry line:col', () => {
    const e = parseError('server:\n  port: [1\nadmin: {}\n', 'x.yaml');
    expect(e.line).toBe(3);
    expect(e.col).toBe(1);
    expect(e.message).toBe('x.yaml:3:1: Flow sequence in block collection must be sufficiently indented and end with a ] (YAML syntax error; fix the file and try again)');
  });

  it('duplicate YAML keys are errors', () => {
    const e = parseError('server:\n  port: 1\n  port: 2\n', 'x.yaml');
    expect(e.message).toBe('x.yaml:3:3: Map keys must be unique (YAML syntax error; fix the file and try again)');
  });

  it('unresolved aliases are errors', () => {
    expect(parseError('a: *nope\n', 'x.yaml').message).toMatch(/^x\.yaml: .*nope.*\(YAML alias error; fix the file and try again\)$/);
  });

  it('JSON syntax errors carry line:col', () => {
    const e = parseError('{\n  "server": {"port": 1,}\n}', 'x.json');
    expect([e.line, e.col]).toEqual([2, 24]); // the '}' after the trailing comma
    expect(e.message).toMatch(/^x\.json:2:24: .+ \(JSON syntax error; fix the file and try again\)$/);
    const end = parseError('{"a": 1', 'y.json');
    expect(end.message).toMatch(/^y\.json:1:8: /);
  });

  it('other extensions are refused', () => {
    expect(parseError('a = 1', 'x.toml').message).toBe('x.toml: unsupported file extension ".toml"; name the config file *.yaml, *.yml or *.json');
  });
});

describe('loadConfigFile', () => {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-config-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('loads, overrides and resolves a file', () => {
    const file = join(dir, 'ok.yaml');
    writeFileSync(file, 'upstreams:\n  users:\n    targets: [http://127.0.0.1:9001]\nroutes:\n  - { id: u, path: /u/:id, upstream: users }\n');
    const r = loadConfigFile(file, { env: { TURNPIKE_SERVER__PORT: '9000' }, sets: ['admin.port=0'], version: 3 });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.config.source).toBe(file);
    expect(r.config.version).toBe(3);
    expect(r.config.server.port).toBe(9000);
    expect(r.config.admin.port).toBe(0);
    expect(Object.isFrozen(r.config)).toBe(true);
  });

  it('passes the pattern checker through', () => {
    const file = join(dir, 'p.json');
    writeFileSync(file, JSON.stringify({ upstreams: { a: { targets: ['http://a:1'] } }, routes: [{ id: 'r', path: '/x/:', upstream: 'a' }] }));
    const r = loadConfigFile(file, { env: {}, checkPattern: (p) => (p.endsWith(':') ? 'parameter name missing after ":"' : null) });
    expect(r).toEqual({ ok: false, errors: [{ path: 'routes[0].path', message: 'parameter name missing after ":"' }] });
  });

  it('a missing file is one error with path "" that says what to do', () => {
    const file = join(dir, 'nope.yaml');
    expect(loadConfigFile(file, { env: {} })).toEqual({
      ok: false,
      errors: [{ path: '', message: `config file ${JSON.stringify(file)} not found; check the path, or start without --config to use the embedded default` }],
    });
  });

  it('a directory is refused', () => {
    const r = loadConfigFile(dir, { env: {} });
    expect(r.ok ? '' : r.errors[0]!.message).toMatch(/is a directory; pass the config file itself/);
  });

  it('parse errors become one error with path ""', () => {
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, 'server: [\n');
    const r = loadConfigFile(file, { env: {} });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.errors).toHaveLength(1);
    expect(r.errors[0]!.path).toBe('');
    expect(r.errors[0]!.message).toMatch(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2:1: `));
  });

  it('an empty file is reported as such', () => {
    const file = join(dir, 'empty.yaml');
    writeFileSync(file, '# nothing\n');
    expect(loadConfigFile(file, { env: { TURNPIKE_SERVER__PORT: '1' } })).toEqual({
      ok: false,
      errors: [{ path: '', message: `${file} is empty; write a configuration (turnpike schema describes it) or start without --config to use the embedded default` }],
    });
  });
});

describe('embedded default config', () => {
  it('validates, with the demo upstream enabled', () => {
    const r = loadEmbeddedConfig({ env: {} });
    expect(r.ok ? [] : r.errors).toEqual([]);
    if (!r.ok) return;
    expect(r.config.source).toBe('<embedded>');
    expect(r.config.demo).toEqual({ enabled: true, port: 9090 });
    expect(r.config.server.port).toBe(8080);
    expect(r.config.admin).toEqual({ enabled: true, host: '127.0.0.1', port: 9901, tokensFile: null, auditLog: null });
    expect(r.config.upstreams['demo']!.targets[0]!.url).toBe('http://127.0.0.1:9090');
    const demo = r.config.routes.find((x) => x.path === '/demo/*');
    expect(demo?.rewrite.stripPrefix).toBe('/demo');
    expect(r.config.routes.some((x) => x.path === '/')).toBe(true);
  });

  it('takes env and --set overrides', () => {
    const r = loadEmbeddedConfig({ env: { TURNPIKE_SERVER__PORT: '0' }, sets: ['admin.enabled=false'] });
    expect(r.ok && [r.config.server.port, r.config.admin.enabled]).toEqual([0, false]);
  });

  it('is also valid as a plain document, without the demo flag', () => {
    const r = validateConfig(parseConfigText(defaultConfigYaml, 'turnpike.yaml'));
    expect(r.ok && r.config.demo.enabled).toBe(false);
    expect(loadConfigText(defaultConfigYaml, 'turnpike.yaml', { env: {} }).ok).toBe(true);
  });
});
