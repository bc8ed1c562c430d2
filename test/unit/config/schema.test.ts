import { describe, expect, it } from 'vitest';
import { DEFAULTS, MIGRATION_HINTS, configSchema, schemaJson } from '../../../common/config/schema.js';

type Node = Record<string, unknown>;

const root = JSON.parse(schemaJson()) as Node;
const defs = root['definitions'] as Record<string, Node>;

function deref(n: Node): Node {
  const ref = n['$ref'];
  return typeof ref === 'string' ? defs[ref.replace('#/definitions/', '')]! : n;
}

/** Every (path, schema) of a named property, through refs, maps, arrays and unions. */
function properties(node: Node, at: string, seen = new Set<Node>()): Array<[string, Node]> {
  const n = deref(node);
  if (seen.has(n)) return [];
  seen.add(n);
  const out: Array<[string, Node]> = [];
  for (const [k, child] of Object.entries((n['properties'] ?? {}) as Record<string, Node>)) {
    out.push([`${at}.${k}`, child], ...properties(child, `${at}.${k}`, seen));
  }
  const extra = n['additionalProperties'];
  if (typeof extra === 'object' && extra !== null) out.push(...properties(extra as Node, `${at}.*`, seen));
  if (n['items'] !== undefined) out.push(...properties(n['items'] as Node, `${at}[]`, seen));
  for (const b of (n['anyOf'] ?? []) as Node[]) out.push(...properties(b, at, seen));
  return out;
}

describe('schema', () => {
  it('schemaJson() is JSON equal to the exported object', () => {
    expect(root).toEqual(JSON.parse(JSON.stringify(configSchema)));
    expect(root['$schema']).toBe('http://json-schema.org/draft-07/schema#');
  });

  it('every property has a description', () => {
    const all = properties(root, '');
    expect(all.length).toBeGreaterThan(50);
    const missing = all.filter(([, s]) => typeof deref(s)['description'] !== 'string').map(([p]) => p);
    expect(missing).toEqual([]);
  });

  it('every description of a setting with a default states it', () => {
    const noDefault = properties(root, '').filter(([, s]) => {
      const d = deref(s);
      const dflt = d['default'];
      return dflt !== undefined && typeof dflt !== 'object' && !/Default/.test(String(d['description']));
    });
    expect(noDefault.map(([p]) => p)).toEqual([]);
  });

  it('every object with fixed keys refuses unknown ones', () => {
    const open: string[] = [];
    const visit = (node: Node, at: string, seen: Set<Node>): void => {
      const n = deref(node);
      if (seen.has(n)) return;
      seen.add(n);
      if (n['properties'] !== undefined && n['additionalProperties'] !== false) open.push(at);
      for (const [k, c] of Object.entries((n['properties'] ?? {}) as Record<string, Node>)) visit(c, `${at}.${k}`, seen);
      if (typeof n['additionalProperties'] === 'object') visit(n['additionalProperties'] as Node, `${at}.*`, seen);
      if (n['items'] !== undefined) visit(n['items'] as Node, `${at}[]`, seen);
      for (const b of (n['anyOf'] ?? []) as Node[]) visit(b, at, seen);
    };
    visit(root, '', new Set());
    expect(open).toEqual([]);
  });

  it('schema defaults are the resolver defaults', () => {
    const server = (root['properties'] as Record<string, Node>)['server']!['properties'] as Record<string, Node>;
    expect(server['port']!['default']).toBe(DEFAULTS.server.port);
    expect(((server['limits']!['properties'] as Record<string, Node>)['maxBodyBytes']!)['default']).toBe(10485760);
    const timeouts = (defs['upstream']!['properties'] as Record<string, Node>)['timeouts']!['properties'] as Record<string, Node>;
    expect(timeouts['responseMs']!['default']).toBe(15000);
    expect(String(timeouts['responseMs']!['description'])).toContain('In milliseconds');
  });

  it('migration hints finish a sentence', () => {
    for (const [key, hint] of Object.entries(MIGRATION_HINTS)) {
      expect(hint, key).toMatch(/^(, use |: )/);
    }
  });
});
