/**
 * Environment and command-line overrides, applied to the raw document before
 * validation (file < env < CLI).
 *
 * Both walk the *schema*, not the document, so a path may create sections the
 * file does not have (`TURNPIKE_SERVER__LIMITS__MAXBODYBYTES` on a file
 * without `server:`) and an unknown path is an error that names the bad
 * segment instead of a setting silently ignored.
 *
 * - Environment: `TURNPIKE_` + segments joined by `__`. Segments match schema
 *   keys case-insensitively (`MAXBODYBYTES` -> `maxBodyBytes`; underscores are
 *   also ignored for schema keys, so `REQUEST_ID_HEADER` works); inside maps
 *   (upstream names, header names) a single `_` stays part of the key and an
 *   existing key is matched case-insensitively, a new one is lowercased.
 *   A variable without `__` whose name is not a top-level section
 *   (`TURNPIKE_CONFIG`, `TURNPIKE_LOG_LEVEL`) is not an override and is left
 *   to whoever reads it; so are the names in RESERVED_ENV_NAMES, whatever
 *   sections the schema gains (`TURNPIKE_ADMIN_TOKEN` is a credential, not
 *   the `admin` section).
 * - CLI: `--set server.port=8081`, `--set routes[0].upstream=users` (or
 *   `routes.0.upstream`), `--set 'server.headers.request.set["x.y"]=1'`.
 * - Values are JSON when they parse as JSON (8081, true, ["GET"], {"a":1}),
 *   else the raw string; a setting that can only be a string always takes
 *   the raw text (so `requestIdHeader=123` stays "123").
 */
import { configSchema } from './schema.js';
import { type ConfigError, type PathSegment, formatPath, isPlainObject, suggestion } from './util.js';

type SchemaNode = Record<string, unknown>;

export interface OverrideResult {
  /** A new document; the input is not modified. */
  doc: unknown;
  errors: ConfigError[];
}

const ROOT = configSchema as unknown as SchemaNode;
const DEFINITIONS = ROOT['definitions'] as Record<string, SchemaNode>;
const FORBIDDEN_KEYS = new Set(['__proto__', 'prototype', 'constructor']);
export const ENV_PREFIX = 'TURNPIKE_';

/** `TURNPIKE_*` variables that are read elsewhere and are never config overrides. */
export const RESERVED_ENV_NAMES: ReadonlySet<string> = new Set([
  'TURNPIKE_ADMIN_TOKEN', // admin API token (admin/api/auth.ts, turnpike reload)
  'TURNPIKE_ADMIN_TOKEN_FILE', // file holding that token
  'TURNPIKE_ADMIN_URL', // admin API address for turnpike reload / validate --diff
  'TURNPIKE_LOG_FORMAT',
  'TURNPIKE_LOG_LEVEL',
  'TURNPIKE_TEST_HOOKS',
  'TURNPIKE_UWS_MODULE',
]);

function deref(node: SchemaNode): SchemaNode {
  const ref = node['$ref'];
  if (typeof ref === 'string' && ref.startsWith('#/definitions/')) return deref(DEFINITIONS[ref.slice(14)]!);
  return node;
}

function types(node: SchemaNode): string[] {
  const t = node['type'];
  if (Array.isArray(t)) return t.map(String);
  if (typeof t === 'string') return [t];
  const branches = node['anyOf'];
  return Array.isArray(branches) ? branches.flatMap((b) => types(deref(b as SchemaNode))) : [];
}

/** The object- or array-typed branch of a union, for walking into it. */
function containerBranch(node: SchemaNode, kind: 'object' | 'array'): SchemaNode | null {
  const n = deref(node);
  if (types(n).length === 1 && n['type'] === kind) return n;
  const branches = n['anyOf'];
  if (Array.isArray(branches)) {
    for (const b of branches) {
      const d = deref(b as SchemaNode);
      if (d['type'] === kind) return d;
    }
  }
  return null;
}

function parseValue(raw: string, leaf: SchemaNode): unknown {
  const t = types(deref(leaf));
  if (t.length === 1 && t[0] === 'string') return raw;
  try {
    return JSON.parse(raw) as unknown;
  } catch {
    return raw;
  }
}

interface Step {
  /** Canonical key or index to write. */
  key: string | number;
  schema: SchemaNode;
}

type Matcher = 'env' | 'cli';

function matchSchemaKey(seg: string, keys: readonly string[], how: Matcher): string | undefined {
  if (keys.includes(seg)) return seg;
  const lower = seg.toLowerCase();
  const ci = keys.find((k) => k.toLowerCase() === lower);
  if (ci !== undefined || how === 'cli') return ci;
  const squashed = lower.replace(/_/g, '');
  return keys.find((k) => k.toLowerCase() === squashed);
}

/**
 * Writes `raw` at `segments` inside `doc` (mutated; it is a private clone).
 * Returns the problem, or null.
 */
function setPath(doc: Record<string, unknown>, segments: readonly string[], raw: string, how: Matcher): string | null {
  let container: Record<string, unknown> | unknown[] = doc;
  let schema: SchemaNode = ROOT;
  const done: PathSegment[] = [];
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i]!;
    const where = done.length === 0 ? 'at the top level' : `under ${formatPath(done)}`;
    if (seg === '') return `empty path segment ${where}`;
    let step: Step;
    if (Array.isArray(container)) {
      const items = schema['items'] as SchemaNode;
      if (!/^\d+$/.test(seg)) return `${formatPath(done)} is a list: expected an index, got ${JSON.stringify(seg)}`;
      const idx = Number(seg);
      if (idx > container.length) return `index ${idx} is out of range: ${formatPath(done)} has ${container.length} item(s) (use ${container.length} to append)`;
      step = { key: idx, schema: items };
    } else {
      const props = schema['properties'] as Record<string, SchemaNode> | undefined;
      const known = props === undefined ? [] : Object.keys(props).filter((k) => k !== '$schema');
      const key = matchSchemaKey(seg, known, how);
      const extra = schema['additionalProperties'];
      if (key !== undefined) {
        step = { key, schema: props![key]! };
      } else if (isPlainObject(extra)) {
        if (FORBIDDEN_KEYS.has(seg)) return `${JSON.stringify(seg)} is not allowed as a name`;
        const existing = Object.keys(container);
        const found = existing.includes(seg) ? seg : existing.find((k) => k.toLowerCase() === seg.toLowerCase());
        step = { key: found ?? (how === 'env' ? seg.toLowerCase() : seg), schema: extra };
      } else {
        const what = done.length === 0 ? 'section' : 'setting';
        const hint = suggestion(seg, known) || (known.length > 0 ? ` (known: ${known.join(', ')})` : '');
        return `unknown ${what} ${JSON.stringify(seg)} ${where}${hint}`;
      }
    }
    const last = i === segments.length - 1;
    if (last) {
      const value = parseValue(raw, step.schema);
      if (Array.isArray(container)) container[step.key as number] = value;
      else Object.defineProperty(container, step.key, { value, enumerable: true, writable: true, configurable: true });
      return null;
    }
    done.push(step.key);
    const current: unknown = Array.isArray(container) ? container[step.key as number] : container[step.key as string];
    const next = deref(step.schema);
    const wantArray = containerBranch(next, 'array');
    const wantObject = containerBranch(next, 'object');
    if (current === undefined) {
      const fresh: Record<string, unknown> | unknown[] = wantArray !== null ? [] : {};
      if (wantArray === null && wantObject === null) return `${formatPath(done)} is a single value; it has no ${JSON.stringify(segments[i + 1])}`;
      if (Array.isArray(container)) container[step.key as number] = fresh;
      else Object.defineProperty(container, step.key, { value: fresh, enumerable: true, writable: true, configurable: true });
      container = fresh;
      schema = (wantArray ?? wantObject)!;
    } else if (Array.isArray(current) && wantArray !== null) {
      container = current;
      schema = wantArray;
    } else if (isPlainObject(current) && wantObject !== null) {
      container = current;
      schema = wantObject;
    } else {
      return `${formatPath(done)} is a single value here, so ${JSON.stringify(segments[i + 1])} cannot be set inside it; set ${formatPath(done)} as a whole`;
    }
  }
  return 'empty path';
}

function cloneDoc(doc: unknown): Record<string, unknown> | null {
  if (doc === null || doc === undefined) return {};
  if (!isPlainObject(doc)) return null;
  return structuredClone(doc);
}

/**
 * `TURNPIKE_SERVER__PORT=8081` -> server.port = 8081. Variables are applied in
 * name order, so `TURNPIKE_SERVER` (a whole section as JSON) comes before
 * `TURNPIKE_SERVER__PORT`.
 */
export function applyEnvOverrides(doc: unknown, env: NodeJS.ProcessEnv): OverrideResult {
  const out = cloneDoc(doc);
  if (out === null) return { doc, errors: [] };
  const errors: ConfigError[] = [];
  const sections = Object.keys(ROOT['properties'] as SchemaNode).map((k) => k.toLowerCase());
  for (const name of Object.keys(env).sort()) {
    const value = env[name];
    if (!name.startsWith(ENV_PREFIX) || value === undefined || RESERVED_ENV_NAMES.has(name)) continue;
    const segments = name.slice(ENV_PREFIX.length).split('__');
    if (segments.length === 1 && !sections.includes(segments[0]!.toLowerCase())) continue;
    const problem = setPath(out, segments, value, 'env');
    if (problem !== null) errors.push({ path: name, message: problem });
  }
  return { doc: out, errors };
}

/** `routes[0].upstream`, `routes.0.upstream`, `set["x.y"]` -> segments; null if malformed. */
export function parseDotPath(path: string): string[] | null {
  const segments: string[] = [];
  let i = 0;
  while (i < path.length) {
    const rest = path.slice(i);
    let m: RegExpExecArray | null;
    if ((m = /^\[(\d+)\]/.exec(rest)) !== null) {
      segments.push(m[1]!);
    } else if ((m = /^\[("(?:[^"\\]|\\.)*")\]/.exec(rest)) !== null) {
      segments.push(JSON.parse(m[1]!) as string);
    } else if ((m = /^[^.[\]]+/.exec(rest)) !== null) {
      segments.push(m[0]);
    } else {
      return null;
    }
    i += m[0].length;
    if (path[i] === '.') {
      i++;
      if (i === path.length) return null;
    } else if (i < path.length && path[i] !== '[') {
      return null;
    }
  }
  return segments.length === 0 ? null : segments;
}

/** `--set server.port=8081` flags, applied in order (a later one wins). */
export function applyCliOverrides(doc: unknown, sets: readonly string[]): OverrideResult {
  const out = cloneDoc(doc);
  if (out === null) return { doc, errors: [] };
  const errors: ConfigError[] = [];
  for (const set of sets) {
    const eq = set.indexOf('=');
    if (eq <= 0) {
      errors.push({ path: `--set ${set}`, message: 'expected path=value, e.g. --set server.port=8081' });
      continue;
    }
    const path = set.slice(0, eq).trim();
    const segments = parseDotPath(path);
    if (segments === null) {
      errors.push({ path: `--set ${path}`, message: 'malformed path; use dots and [index], e.g. routes[0].upstream' });
      continue;
    }
    const problem = setPath(out, segments, set.slice(eq + 1), 'cli');
    if (problem !== null) errors.push({ path: `--set ${path}`, message: problem });
  }
  return { doc: out, errors };
}
