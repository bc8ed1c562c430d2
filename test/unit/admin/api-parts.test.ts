/** Redaction, cursors, the audit log and the OpenAPI document built from the endpoint table. */
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { AuditLog, type AuditRecord } from '../../../admin/api/audit.js';
import { ENDPOINTS } from '../../../admin/api/endpoints.js';
import { ADMIN_ERROR_CODES } from '../../../admin/api/errors.js';
import { buildOpenApi } from '../../../admin/api/openapi.js';
import { decodeCursor, encodeCursor, pageByKey } from '../../../admin/api/pagination.js';
import { REDACTED, redact } from '../../../admin/api/redact.js';
import { configSchema } from '../../../common/config/schema.js';

describe('redact', () => {
  it('redacts string values of secret-looking keys and credential header pairs, nothing else', () => {
    const input = {
      clientSecret: 's1', password: 'p', apiToken: 't', signingKey: 'k', keys: ['a'], keyId: 'kid', port: 8080,
      nested: { dbPassword: 'p2', secretCount: 3, list: [{ token: 'x' }] },
      headers: { set: [['x-api-key', 'abc'], ['authorization', 'Bearer z'], ['x-trace', 'keep']], add: [['Cookie', 'c=1']] },
      tokensFile: '/etc/tokens',
    };
    expect(redact(input)).toEqual({
      clientSecret: REDACTED, password: REDACTED, apiToken: REDACTED, signingKey: REDACTED, keys: ['a'], keyId: 'kid', port: 8080,
      nested: { dbPassword: REDACTED, secretCount: 3, list: [{ token: REDACTED }] },
      headers: { set: [['x-api-key', REDACTED], ['authorization', REDACTED], ['x-trace', 'keep']], add: [['Cookie', REDACTED]] },
      tokensFile: REDACTED,
    });
    expect(input.password).toBe('p'); // a copy
  });
});

describe('cursors', () => {
  const items = ['a', 'b', 'c', 'd', 'e'].map((id) => ({ id }));
  it('walks every item once, then next is null', () => {
    const seen: string[] = [];
    let cursor: string | undefined;
    for (let i = 0; i < 10; i++) {
      const p = pageByKey(items, (x) => x.id, 'routes', 2, cursor);
      seen.push(...p.items.map((x) => x.id));
      if (p.next === null) break;
      cursor = p.next;
    }
    expect(seen).toEqual(['a', 'b', 'c', 'd', 'e']);
  });

  it('continues after the key even when the item is gone', () => {
    const c = encodeCursor('routes', 'b');
    expect(pageByKey(items.filter((x) => x.id !== 'b'), (x) => x.id, 'routes', 2, c).items.map((x) => x.id)).toEqual(['c', 'd']);
  });

  it('refuses garbage and cursors of another listing, naming the parameter', () => {
    expect(() => decodeCursor('routes', 'not a cursor!')).toThrow(/cursor/);
    expect(() => decodeCursor('routes', encodeCursor('audit', 3))).toThrow(/another listing \(audit\)/);
    expect(() => decodeCursor('audit', Buffer.from('{"k":"audit","a":"x"}').toString('base64url'))).toThrow(/not a cursor/);
    expect(decodeCursor('audit', encodeCursor('audit', 7))).toBe(7);
  });
});

function rec(i: number): AuditRecord {
  return {
    time: new Date(1_700_000_000_000 + i * 1000).toISOString(), actor: `a${i}`, role: 'admin', action: 'config.reload', method: 'POST',
    path: '/admin/config/reload', result: 'applied', status: 200, dryRun: false, versionBefore: i, versionAfter: i + 1,
    beforeHash: 'x', afterHash: 'y', changes: null, errors: [],
  };
}

describe('audit log', () => {
  it('appends JSON lines to a 0600 file, pages newest first and keeps the newest N', () => {
    const dir = mkdtempSync(join(tmpdir(), 'turnpike-audit-'));
    const log = new AuditLog(5);
    log.open('sub/audit.log', dir);
    for (let i = 1; i <= 7; i++) expect(log.append(rec(i))).toBeNull();
    const file = join(dir, 'sub/audit.log');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'sub')).mode & 0o777).toBe(0o700);
    const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as AuditRecord);
    expect(lines.map((l) => l.actor)).toEqual(['a1', 'a2', 'a3', 'a4', 'a5', 'a6', 'a7']);
    const p1 = log.page(2, null);
    expect(p1.records.map((r) => r.actor)).toEqual(['a7', 'a6']);
    const p2 = log.page(2, p1.next);
    expect(p2.records.map((r) => r.actor)).toEqual(['a5', 'a4']);
    const p3 = log.page(2, p2.next);
    expect(p3.records.map((r) => r.actor)).toEqual(['a3']);
    expect(p3.next).toBeNull();
    log.close();
    // A restart reads the tail back.
    writeFileSync(file, readFileSync(file, 'utf8') + 'torn line\n');
    const again = new AuditLog(5);
    again.open(file, '/');
    expect(again.page(10, null).records.map((r) => r.actor)).toEqual(['a7', 'a6', 'a5', 'a4', 'a3']);
  });

  it('names the setting when the file cannot be opened', () => {
    const dir = mkdtempSync(join(tmpdir(), 'turnpike-audit-'));
    writeFileSync(join(dir, 'file'), '');
    expect(() => new AuditLog().open('file/audit.log', dir)).toThrow(/admin.auditLog: cannot open/);
  });
});

describe('OpenAPI document', () => {
  const doc = buildOpenApi(ENDPOINTS, '0.0.0-test') as any;

  it('is OpenAPI 3.1 with one operation per table row, each secured by bearer auth', () => {
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.components.securitySchemes.bearerAuth).toEqual(expect.objectContaining({ type: 'http', scheme: 'bearer' }));
    const ops = Object.entries(doc.paths as Record<string, Record<string, any>>).flatMap(([p, m]) => Object.keys(m).map((k) => `${k.toUpperCase()} ${p}`));
    expect(ops.sort()).toEqual(ENDPOINTS.map((e) => `${e.method} ${e.path}`).sort());
    for (const e of ENDPOINTS) {
      const op = doc.paths[e.path][e.method.toLowerCase()];
      expect(op.security).toEqual([{ bearerAuth: [] }]);
      expect(op.responses['401']).toBeDefined();
      expect(op['x-turnpike-role']).toBe(e.role);
    }
  });

  it('every $ref resolves, and the Error schema lists every error code', () => {
    const refs: string[] = [];
    const walk = (n: unknown): void => {
      if (Array.isArray(n)) n.forEach(walk);
      else if (n !== null && typeof n === 'object') {
        for (const [k, v] of Object.entries(n)) (k === '$ref' && typeof v === 'string' ? refs.push(v) : walk(v));
      }
    };
    walk({ paths: doc.paths, components: doc.components });
    const local = refs.filter((r) => r.startsWith('#/components/'));
    for (const r of local) expect(doc.components.schemas[r.slice('#/components/schemas/'.length)], r).toBeDefined();
    // The config schema keeps its own definitions refs (resolved inside its $id resource).
    expect(refs.filter((r) => !r.startsWith('#/components/')).every((r) => r.startsWith('#/definitions/'))).toBe(true);
    expect(doc.components.schemas.Error.properties.error.properties.code.enum).toEqual(ADMIN_ERROR_CODES);
  });

  it('PUT /admin/config takes the config file schema, as JSON and YAML', () => {
    const rb = doc.paths['/admin/config'].put.requestBody;
    expect(Object.keys(rb.content)).toEqual(expect.arrayContaining(['application/json', 'application/yaml', 'text/yaml']));
    const ref = rb.content['application/json'].schema.$ref as string;
    const schema = doc.components.schemas[ref.split('/').pop()!];
    expect(schema.properties).toEqual(JSON.parse(JSON.stringify(configSchema.properties)));
    expect(schema.definitions).toEqual(JSON.parse(JSON.stringify(configSchema.definitions)));
  });

  it('query parameters come from the same schemas the dispatcher validates with', () => {
    const params = doc.paths['/admin/routes'].get.parameters;
    expect(params.map((p: any) => [p.name, p.in, p.schema.type])).toEqual([['limit', 'query', 'integer'], ['cursor', 'query', 'string']]);
    expect(doc.paths['/admin/config'].put.parameters.map((p: any) => p.name)).toEqual(['dryRun']);
  });

  it('every response schema in the table compiles with Ajv', () => {
    const ajv = new Ajv({ strict: true, allowUnionTypes: true, validateFormats: false });
    for (const e of ENDPOINTS) for (const r of Object.values(e.responses)) expect(() => ajv.compile(r.schema)).not.toThrow();
  });
});
