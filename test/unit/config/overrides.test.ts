import { describe, expect, it } from 'vitest';
import { applyCliOverrides, applyEnvOverrides, loadConfigText } from '../../../common/config/load.js';
import { parseDotPath } from '../../../common/config/overrides.js';
import { minimal } from './helpers.js';

type Doc = Record<string, any>;

describe('environment overrides', () => {
  it('TURNPIKE_SERVER__PORT sets server.port as a number, creating the section', () => {
    const r = applyEnvOverrides(minimal(), { TURNPIKE_SERVER__PORT: '8081' });
    expect(r.errors).toEqual([]);
    expect((r.doc as Doc).server).toEqual({ port: 8081 });
  });

  it('matches schema keys case-insensitively through several levels', () => {
    const r = applyEnvOverrides({}, { TURNPIKE_SERVER__LIMITS__MAXBODYBYTES: '1024', TURNPIKE_ADMIN__ENABLED: 'false' });
    expect(r.errors).toEqual([]);
    expect(r.doc).toEqual({ server: { limits: { maxBodyBytes: 1024 } }, admin: { enabled: false } });
  });

  it('single underscores stay in the segment (ignored only when matching schema keys)', () => {
    const r = applyEnvOverrides({}, {
      TURNPIKE_SERVER__REQUEST_ID_HEADER: 'x-trace',
      TURNPIKE_SERVER__HEADERS__RESPONSE__SET__X_POWERED_BY: 'turnpike',
    });
    expect(r.errors).toEqual([]);
    expect(r.doc).toEqual({ server: { requestIdHeader: 'x-trace', headers: { response: { set: { x_powered_by: 'turnpike' } } } } });
  });

  it('parses JSON values when they parse, else keeps the string', () => {
    const r = applyEnvOverrides({}, {
      TURNPIKE_SERVER__WORKERS: 'auto',
      TURNPIKE_SERVER__FORWARDED__FORWARDED: 'true',
      TURNPIKE_SERVER__HEADERS__REQUEST__REMOVE: '["cookie","x-debug"]',
      TURNPIKE_SERVER__HOST: '127.0.0.1',
      TURNPIKE_UPSTREAMS: '{"users":{"targets":["http://a:1"]}}',
    });
    expect(r.errors).toEqual([]);
    expect(r.doc).toEqual({
      server: { workers: 'auto', forwarded: { forwarded: true }, headers: { request: { remove: ['cookie', 'x-debug'] } }, host: '127.0.0.1' },
      upstreams: { users: { targets: ['http://a:1'] } },
    });
  });

  it('string-only settings keep the raw text even when it looks like JSON', () => {
    const r = applyEnvOverrides({}, { TURNPIKE_SERVER__REQUESTIDHEADER: '123' });
    expect((r.doc as Doc).server.requestIdHeader).toBe('123');
  });

  it('reaches existing upstreams case-insensitively and array items by index', () => {
    const r = applyEnvOverrides(minimal(), {
      TURNPIKE_UPSTREAMS__USERS__TIMEOUTS__CONNECTMS: '250',
      TURNPIKE_UPSTREAMS__USERS__TARGETS__0: 'http://127.0.0.1:9002',
      TURNPIKE_ROUTES__0__METHODS: '["GET"]',
    });
    expect(r.errors).toEqual([]);
    const doc = r.doc as Doc;
    expect(doc.upstreams.users.timeouts).toEqual({ connectMs: 250 });
    expect(doc.upstreams.users.targets).toEqual(['http://127.0.0.1:9002']);
    expect(doc.routes[0].methods).toEqual(['GET']);
  });

  it('unknown paths are errors that name the variable and the segment', () => {
    const r = applyEnvOverrides(minimal(), {
      TURNPIKE_SERVER__PROT: '1',
      TURNPIKE_SERVR__PORT: '1',
      TURNPIKE_SERVER__PORT__X: '1',
      TURNPIKE_ROUTES__5__ID: 'x',
      TURNPIKE_UPSTREAMS__USERS__TARGETS__0__WEIGHT: '2',
    });
    expect(r.errors).toEqual([
      { path: 'TURNPIKE_ROUTES__5__ID', message: 'index 5 is out of range: routes has 1 item(s) (use 1 to append)' },
      { path: 'TURNPIKE_SERVER__PORT__X', message: 'server.port is a single value; it has no "X"' },
      { path: 'TURNPIKE_SERVER__PROT', message: 'unknown setting "PROT" under server (did you mean "port"?)' },
      { path: 'TURNPIKE_SERVR__PORT', message: 'unknown section "SERVR" at the top level (did you mean "server"?)' },
      {
        path: 'TURNPIKE_UPSTREAMS__USERS__TARGETS__0__WEIGHT',
        message: 'upstreams.users.targets[0] is a single value here, so "WEIGHT" cannot be set inside it; set upstreams.users.targets[0] as a whole',
      },
    ]);
  });

  it('ignores other TURNPIKE_ variables and non-prefixed ones', () => {
    const r = applyEnvOverrides({}, { TURNPIKE_CONFIG: '/etc/x.yaml', TURNPIKE_LOG_LEVEL: 'debug', PORT: '1', turnpike_server__port: '2' });
    expect(r.errors).toEqual([]);
    expect(r.doc).toEqual({});
  });

  it('does not modify the input and refuses prototype keys', () => {
    const doc = minimal();
    const before = JSON.stringify(doc);
    const r = applyEnvOverrides(doc, { TURNPIKE_SERVER__PORT: '1', TURNPIKE_UPSTREAMS____PROTO____X: '1' });
    expect(JSON.stringify(doc)).toBe(before);
    expect(r.errors.map((e) => e.path)).toEqual(['TURNPIKE_UPSTREAMS____PROTO____X']);
    const c = applyCliOverrides(doc, ['upstreams.__proto__.polluted=1']);
    expect(c.errors).toEqual([{ path: '--set upstreams.__proto__.polluted', message: '"__proto__" is not allowed as a name' }]);
    expect(({} as Doc).polluted).toBeUndefined();
  });
});

describe('--set overrides', () => {
  it('dot paths, bracket indices and quoted keys', () => {
    const r = applyCliOverrides(minimal(), [
      'server.port=8081',
      'routes[0].upstream=users',
      'routes.0.priority=5',
      'server.headers.request.set["x.y"]=1',
      'upstreams.users.targets[1]=http://127.0.0.1:9002',
      'server.host=::',
    ]);
    expect(r.errors).toEqual([]);
    const doc = r.doc as Doc;
    expect(doc.server.port).toBe(8081);
    expect(doc.server.host).toBe('::');
    expect(doc.server.headers.request.set).toEqual({ 'x.y': 1 });
    expect(doc.routes[0].priority).toBe(5);
    expect(doc.upstreams.users.targets).toEqual(['http://127.0.0.1:9001', 'http://127.0.0.1:9002']);
  });

  it('a later flag wins; values with = keep the rest', () => {
    const r = applyCliOverrides({}, ['server.port=1', 'server.port=2', 'server.headers.request.set.x-q=a=b']);
    expect((r.doc as Doc).server.port).toBe(2);
    expect((r.doc as Doc).server.headers.request.set['x-q']).toBe('a=b');
  });

  it('errors name the flag', () => {
    const r = applyCliOverrides({}, ['server.port', 'server..port=1', 'server.prot=1', 'routes.x.id=1']);
    expect(r.errors).toEqual([
      { path: '--set server.port', message: 'expected path=value, e.g. --set server.port=8081' },
      { path: '--set server..port', message: 'malformed path; use dots and [index], e.g. routes[0].upstream' },
      { path: '--set server.prot', message: 'unknown setting "prot" under server (did you mean "port"?)' },
      { path: '--set routes.x.id', message: 'routes is a list: expected an index, got "x"' },
    ]);
  });

  it('parseDotPath', () => {
    expect(parseDotPath('a.b[2].c')).toEqual(['a', 'b', '2', 'c']);
    expect(parseDotPath('a["x y"].b')).toEqual(['a', 'x y', 'b']);
    expect(parseDotPath('a.')).toBeNull();
    expect(parseDotPath('')).toBeNull();
  });
});

describe('precedence: file < env < --set', () => {
  const yaml = 'server: { port: 1000 }\n';
  it('env beats the file, --set beats env; override errors and validation errors come together', () => {
    const r = loadConfigText(yaml, 't.yaml', { env: { TURNPIKE_SERVER__PORT: '2000' }, sets: ['server.port=3000'] });
    expect(r.ok && r.config.server.port).toBe(3000);
    const e = loadConfigText(yaml, 't.yaml', { env: { TURNPIKE_SERVER__PORT: '2000' } });
    expect(e.ok && e.config.server.port).toBe(2000);
    const bad = loadConfigText(yaml, 't.yaml', { env: { TURNPIKE_SERVER__PORTT: '1' }, sets: ['server.port=x'] });
    expect(bad.ok ? [] : bad.errors).toEqual([
      { path: 'TURNPIKE_SERVER__PORTT', message: 'unknown setting "PORTT" under server (did you mean "port"?)' },
      { path: 'server.port', message: 'must be an integer (got "x")' },
    ]);
  });
});
