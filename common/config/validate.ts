/**
 * Validation: the JSON Schema (Ajv, allErrors) first, then the rules a schema
 * cannot say well (references between sections, URL shape, template params),
 * all reported together so one run shows every problem in the file.
 *
 * Ajv's messages are written for schema authors ("must NOT have additional
 * properties", "must match a schema in anyOf"); `translateAjvErrors` turns
 * them into `path: message` lines a user can act on. The semantic pass runs
 * on the raw document even when the schema failed, so it is defensive about
 * types: anything of an unexpected type was already reported by the schema.
 *
 * The schema is compiled once, lazily, on first use (a few ms, on the main or
 * admin thread only, never on the data plane).
 */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { DURATION_FORMS, DURATION_MESSAGE, formatDuration, parseDuration } from './duration.js';
import { DEFAULTS, DURATION_NODES, configSchema, MIGRATION_HINTS, TOKEN_PATTERN } from './schema.js';
import { checkRateLimitConfig } from './rate-limit.js';
import { checkIdentityConfig, identityWarnings } from './identity.js';
import { nodeBackendShardable } from './util.js';
import { autoBackend } from '../runtime.js';
import { checkResilience } from './resilience.js';
import { checkDiscovery, discoveryWarnings } from './discovery.js';
import { checkRetry } from './retry.js';
import { checkBalancing } from './balancing.js';
import { type TlsMaterial, loadTlsMaterial } from './tls.js';
import {
  type ConfigError, type PathSegment, describeValue, didYouMean, formatPath, isPlainObject, suggestion,
} from './util.js';

/** Returns null when the route path pattern is valid, else what is wrong. */
export type PatternChecker = (path: string) => string | null;

let compiled: ValidateFunction | null = null;

function validator(): ValidateFunction {
  if (compiled === null) {
    const ajv = new Ajv({ allErrors: true, verbose: true, allowUnionTypes: true, strict: true });
    // Annotation only: the sentence shown when `pattern`, `enum`, `anyOf` or a
    // property-count keyword of the same schema fails.
    ajv.addKeyword({ keyword: 'errorMessage', schemaType: ['string'] });
    compiled = ajv.compile(configSchema as unknown as Record<string, unknown>);
  }
  return compiled;
}

// ---------------------------------------------------------------------------
// Durations: "5s" -> 5000 before the schema checks the bounds

type SchemaNode = Record<string, unknown>;
const DEFINITIONS = (configSchema as unknown as SchemaNode)['definitions'] as Record<string, SchemaNode>;

function derefNode(node: unknown): SchemaNode | null {
  if (!isPlainObject(node)) return null;
  const ref = node['$ref'];
  if (typeof ref === 'string' && ref.startsWith('#/definitions/')) return derefNode(DEFINITIONS[ref.slice(14)]);
  return node;
}

/** The schema of `key` inside an object of schema `node` (a fixed property or a map's values). */
function childSchema(node: SchemaNode, key: string): SchemaNode | null {
  const props = node['properties'];
  if (isPlainObject(props) && Object.prototype.hasOwnProperty.call(props, key)) return derefNode(props[key]);
  return derefNode(node['additionalProperties']);
}

/** Object- or array-shaped branches of a union, for walking into the value. */
function branches(node: SchemaNode): SchemaNode[] {
  const any = node['anyOf'];
  return Array.isArray(any) ? any.map(derefNode).filter((b): b is SchemaNode => b !== null) : [node];
}

function findDurations(value: unknown, node: SchemaNode | null, at: PathSegment[], out: Array<{ at: PathSegment[]; ms: number; text: string }>): void {
  if (node === null) return;
  if (Array.isArray(value)) {
    const items = branches(node).map((b) => derefNode(b['items'])).find((x) => x !== null) ?? null;
    value.forEach((v, i) => findDurations(v, items, [...at, i], out));
    return;
  }
  if (!isPlainObject(value)) return;
  const obj = branches(node).find((b) => b['type'] === 'object' || isPlainObject(b['properties'])) ?? null;
  if (obj === null) return;
  for (const key of Object.keys(value)) {
    const child = childSchema(obj, key);
    if (child === null) continue;
    const v = value[key];
    if (DURATION_NODES.has(child)) {
      if (typeof v === 'string') {
        const ms = parseDuration(v);
        if (ms !== null) out.push({ at: [...at, key], ms, text: v });
      }
    } else {
      findDurations(v, child, [...at, key], out);
    }
  }
}

function toPointer(at: readonly PathSegment[]): string {
  return at.map((s) => `/${String(s).replace(/~/g, '~0').replace(/\//g, '~1')}`).join('');
}

export interface DurationResult {
  /** The document with every valid duration string replaced by its milliseconds (the input itself when there were none). */
  doc: unknown;
  /** JSON pointer -> the string it was converted from, for messages. */
  originals: ReadonlyMap<string, string>;
}

/**
 * Replaces each duration string of a `*Ms` setting ("5s") by its number of
 * milliseconds (5000), in a copy; anything else is left for the schema to
 * judge (a malformed "5 sec" is then refused with the accepted forms).
 */
export function convertDurations(doc: unknown): DurationResult {
  const found: Array<{ at: PathSegment[]; ms: number; text: string }> = [];
  findDurations(doc, configSchema as unknown as SchemaNode, [], found);
  if (found.length === 0) return { doc, originals: new Map() };
  const copy = structuredClone(doc) as Record<string, unknown>;
  const originals = new Map<string, string>();
  for (const { at, ms, text } of found) {
    let cur: unknown = copy;
    for (const s of at.slice(0, -1)) cur = (cur as Record<string | number, unknown>)[s];
    Object.defineProperty(cur, at[at.length - 1]!, { value: ms, enumerable: true, writable: true, configurable: true });
    originals.set(toPointer(at), text);
  }
  return { doc: copy, originals };
}

// ---------------------------------------------------------------------------
// Schema errors -> readable errors

/** JSON pointer -> segments, numeric ones as numbers where the data is an array. */
function pointerToSegments(pointer: string, doc: unknown): PathSegment[] {
  if (pointer === '') return [];
  const out: PathSegment[] = [];
  let cur: unknown = doc;
  for (const raw of pointer.slice(1).split('/')) {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(cur) && /^\d+$/.test(key)) {
      const i = Number(key);
      out.push(i);
      cur = cur[i];
    } else {
      out.push(key);
      cur = isPlainObject(cur) ? cur[key] : undefined;
    }
  }
  return out;
}

/** Hint-table key: indices as `[]`, upstream names as `*`. */
function hintKey(segments: readonly PathSegment[]): string {
  let out = '';
  segments.forEach((s, i) => {
    if (typeof s === 'number') out += '[]';
    else if (i === 1 && segments[0] === 'upstreams') out += '.*';
    else out += out === '' ? s : `.${s}`;
  });
  return out;
}

const TYPE_NAMES: Record<string, string> = {
  string: 'a string', integer: 'an integer', number: 'a number', boolean: 'true or false',
  object: 'a mapping (key: value)', array: 'a list', null: 'null',
};

function typeName(t: unknown): string {
  const list = Array.isArray(t) ? t.map(String) : [String(t)];
  const names = list.map((x) => TYPE_NAMES[x] ?? x);
  return names.length === 1 ? names[0]! : `${names.slice(0, -1).join(', ')} or ${names[names.length - 1]}`;
}

const USES_ERROR_MESSAGE = new Set(['pattern', 'enum', 'anyOf', 'oneOf', 'minProperties', 'maxProperties', 'const']);

/** A duration setting's message: the accepted forms, or its bounds in both units. */
function durationMessage(e: ErrorObject, original: string | undefined): string {
  const parent = (e.parentSchema ?? {}) as Record<string, unknown>;
  const min = parent['minimum'];
  const max = parent['maximum'];
  if ((e.keyword === 'minimum' || e.keyword === 'maximum') && typeof min === 'number' && typeof max === 'number') {
    const got = original === undefined ? describeValue(e.data) : `${JSON.stringify(original)} = ${String(e.data)} ms`;
    const limit = (n: number) => (formatDuration(n) === `${n}ms` ? `${n} ms` : `${n} ms (${formatDuration(n)})`);
    return `must be from ${limit(min)} to ${limit(max)} (got ${got})`;
  }
  if (typeof e.data === 'number') {
    return `${DURATION_MESSAGE.replace('a number of', 'a whole number of')} (got ${describeValue(e.data)}); ${DURATION_FORMS}`;
  }
  return `${DURATION_MESSAGE} (got ${describeValue(original ?? e.data)}); ${DURATION_FORMS}`;
}

function messageFor(e: ErrorObject, originals: ReadonlyMap<string, string> = new Map()): string {
  const parent = (e.parentSchema ?? {}) as Record<string, unknown>;
  const original = originals.get(e.instancePath);
  if (DURATION_NODES.has(parent) && (original !== undefined || e.keyword === 'type' || e.keyword === 'pattern')) {
    return durationMessage(e, original);
  }
  const custom = typeof parent['errorMessage'] === 'string' ? parent['errorMessage'] : null;
  if (custom !== null && USES_ERROR_MESSAGE.has(e.keyword)) return custom;
  const p = e.params as Record<string, unknown>;
  const got = ` (got ${describeValue(e.data)})`;
  switch (e.keyword) {
    case 'type':
      return `must be ${typeName(p['type'])}${got}`;
    case 'minimum':
    case 'maximum': {
      const min = parent['minimum'];
      const max = parent['maximum'];
      const t = parent['type'];
      const kind = t === 'integer' || (Array.isArray(t) && t.includes('integer')) ? 'an integer' : 'a number';
      if (typeof min === 'number' && typeof max === 'number') return `must be ${kind} from ${min} to ${max}${got}`;
      return `must be ${e.keyword === 'minimum' ? '>=' : '<='} ${String(p['limit'])}${got}`;
    }
    case 'enum': {
      const allowed = (p['allowedValues'] as unknown[]).map(String);
      const hint = typeof e.data === 'string' ? suggestion(e.data, allowed) : '';
      return `must be one of ${allowed.map((a) => JSON.stringify(a)).join(', ')}${got}${hint}`;
    }
    case 'minLength':
      return p['limit'] === 1 ? 'must not be empty' : `must be at least ${String(p['limit'])} characters long`;
    case 'maxLength':
      return `must be at most ${String(p['limit'])} characters long (got ${typeof e.data === 'string' ? e.data.length : '?'})`;
    case 'minItems':
      // An empty target list beside dns/registry: say that the list may go.
      if (/^\/upstreams\/[^/]+\/targets$/.test(e.instancePath)) return 'must list at least one target; with "dns" or "registry" set, leave "targets" out';
      return p['limit'] === 1 ? 'must have at least one item' : `must have at least ${String(p['limit'])} items`;
    case 'maxItems':
      return `must have at most ${String(p['limit'])} items`;
    case 'uniqueItems':
      return `has the same item twice (items ${Math.min(Number(p['i']), Number(p['j']))} and ${Math.max(Number(p['i']), Number(p['j']))})`;
    case 'pattern':
      return 'has an invalid format';
    case 'minProperties':
      return `must have at least ${String(p['limit'])} properties`;
    case 'maxProperties':
      return `must have at most ${String(p['limit'])} properties`;
    case 'anyOf':
    case 'oneOf':
      return `has an invalid value${got}`;
    default:
      return e.message ?? 'is invalid';
  }
}

function isUnder(child: ErrorObject, parent: ErrorObject): boolean {
  const ip = parent.instancePath;
  const instanceOk = child.instancePath === ip || child.instancePath.startsWith(`${ip}/`);
  return instanceOk && child.schemaPath.startsWith(`${parent.schemaPath}/`);
}

/**
 * For `anyOf`, report the errors of the one branch that applies to the
 * value's type (an object target with a bad weight says "weight must be..."),
 * or the union's own message when no branch or several apply.
 */
function collapseUnions(errors: ErrorObject[]): ErrorObject[] {
  const dropped = new Set<ErrorObject>();
  for (const u of errors) {
    if (u.keyword !== 'anyOf' && u.keyword !== 'oneOf') continue;
    const branches = new Map<string, ErrorObject[]>();
    for (const e of errors) {
      if (e === u || !isUnder(e, u)) continue;
      const idx = e.schemaPath.slice(u.schemaPath.length + 1).split('/')[0]!;
      let list = branches.get(idx);
      if (list === undefined) branches.set(idx, (list = []));
      list.push(e);
    }
    const applicable = [...branches.entries()].filter(([idx, list]) => !list.some(
      (e) => e.keyword === 'type' && e.instancePath === u.instancePath && e.schemaPath === `${u.schemaPath}/${idx}/type`,
    ));
    for (const list of branches.values()) for (const e of list) dropped.add(e);
    if (applicable.length === 1) {
      for (const e of applicable[0]![1]) dropped.delete(e);
      dropped.add(u);
    }
  }
  return errors.filter((e) => !dropped.has(e));
}

export function translateAjvErrors(ajvErrors: readonly ErrorObject[], doc: unknown, originals: ReadonlyMap<string, string> = new Map()): ConfigError[] {
  const out: ConfigError[] = [];
  for (const e of collapseUnions([...ajvErrors])) {
    const segments = pointerToSegments(e.instancePath, doc);
    if (e.keyword === 'propertyNames') continue; // reported by the inner error, which names the key
    if (e.keyword === 'additionalProperties') {
      const prop = String((e.params as Record<string, unknown>)['additionalProperty']);
      const hint = MIGRATION_HINTS[hintKey([...segments, prop])];
      if (hint !== undefined) {
        out.push({ path: formatPath(segments), message: `unsupported property ${JSON.stringify(prop)}${hint}` });
        continue;
      }
      const props = (e.parentSchema as { properties?: Record<string, unknown> } | undefined)?.properties ?? {};
      const known = Object.keys(props).filter((k) => k !== '$schema');
      const s = suggestion(prop, known);
      const tail = s !== '' ? s : known.length > 0 ? ` (known: ${known.join(', ')})` : '';
      out.push({ path: formatPath(segments), message: `unknown property ${JSON.stringify(prop)}${tail}` });
      continue;
    }
    if (e.keyword === 'required') {
      const prop = String((e.params as Record<string, unknown>)['missingProperty']);
      out.push({ path: formatPath(segments), message: `missing required property ${JSON.stringify(prop)}` });
      continue;
    }
    const name = (e as ErrorObject & { propertyName?: string }).propertyName;
    if (name !== undefined) {
      // A failing key inside a map (propertyNames): point at the key itself.
      out.push({ path: formatPath([...segments, name]), message: messageFor(e, originals) });
      continue;
    }
    out.push({ path: formatPath(segments), message: messageFor(e, originals) });
  }
  return out;
}

// ---------------------------------------------------------------------------
// Semantic checks

export interface ParsedTarget {
  url: string;
  host: string;
  port: number;
  /** https:// */
  tls: boolean;
}

/** Parses an upstream target URL; returns the problem as a string when it is not usable. */
export function parseTargetUrl(raw: string): ParsedTarget | string {
  const text = raw.trim();
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(text);
  if (scheme === null) return `must be an absolute http:// or https:// URL such as "http://127.0.0.1:9001" (got ${describeValue(raw)})`;
  const proto = scheme[1]!.toLowerCase();
  if (proto !== 'http' && proto !== 'https') return `unsupported scheme "${proto}://"; only http:// and https:// upstreams are supported`;
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    return `is not a valid URL (got ${describeValue(raw)}); expected http://host:port with a port from 1 to 65535`;
  }
  if (u.username !== '' || u.password !== '') return 'must not contain credentials (user:password@); set an Authorization header under headers.request.set instead';
  if (u.pathname !== '/' && u.pathname !== '') return `must not have a path (got "${u.pathname}"); use the route's rewrite to change the path`;
  if (u.search !== '' || text.includes('?')) return 'must not have a query string';
  if (u.hash !== '' || text.includes('#')) return 'must not have a fragment (#...)';
  if (u.hostname === '') return 'must name a host';
  const port = u.port === '' ? (proto === 'https' ? 443 : 80) : Number(u.port);
  if (!(port >= 1 && port <= 65535)) return `port must be from 1 to 65535 (got ${port})`;
  const hostname = u.hostname.toLowerCase();
  const host = hostname.startsWith('[') ? hostname.slice(1, -1) : hostname;
  // WHATWG URL has turned every IPv4 form into a dotted quad already.
  if (!hostname.startsWith('[') && !/^\d+\.\d+\.\d+\.\d+$/.test(host)) {
    const bad = badHostName(host);
    if (bad !== null) return `host ${JSON.stringify(host.length > 60 ? host.slice(0, 57) + "..." : host)} is not a valid host name: ${bad}`;
  }
  return { url: `${proto}://${hostname}:${port}`, host, port, tls: proto === 'https' };
}

/**
 * Why `name` is not a DNS host name (RFC 1123 2.1: labels of letters,
 * digits and "-", not starting or ending with "-", 1..63 characters, 253
 * in all; "_" is let through, as container and service names use it), or
 * null when it is one.
 */
function badHostName(name: string): string | null {
  if (name.length > 253) return `it is ${name.length} characters long (at most 253)`;
  const labels = name.endsWith('.') ? name.slice(0, -1).split('.') : name.split('.');
  for (const l of labels) {
    if (l === '') return 'it has an empty label (two dots in a row, or a leading dot)';
    if (l.length > 63) return `the label "${l.slice(0, 20)}..." is ${l.length} characters long (at most 63)`;
    if (!/^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$/.test(l)) return `the label "${l}" must be letters, digits, "-" and "_", not starting or ending with "-"`;
  }
  return null;
}

/** Framing and hop-by-hop fields: the gateway writes these itself (RFC 9110 7.6.1). */
const MANAGED_HEADERS = new Set([
  'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade',
]);

/**
 * Request fields the gateway writes itself, with what to use instead. A rule
 * that set or added one would send the upstream a second line (two Host
 * lines: RFC 9112 3.2 says 400) or fight the gateway's own value.
 */
const REQUEST_MANAGED: ReadonlyMap<string, string> = new Map([
  ['host', 'the gateway sends the target\'s host (or the client\'s with preserveHost: true)'],
  ['expect', 'the gateway answers Expect itself and never forwards it'],
  ['x-forwarded-for', 'the gateway appends it (server.forwarded.xForwardedFor)'],
  ['x-forwarded-proto', 'the gateway sets it (server.forwarded.xForwardedProtoHost)'],
  ['x-forwarded-host', 'the gateway sets it (server.forwarded.xForwardedProtoHost)'],
  ['forwarded', 'the gateway appends it (server.forwarded.forwarded)'],
]);

/**
 * Response fields this uWS build writes itself (every response gets its own
 * `Date` and `uWebSockets: 20`): a rule could only add a second line.
 */
const RESPONSE_MANAGED: ReadonlyMap<string, string> = new Map([
  ['date', 'the server writes its own Date on every response (the upstream\'s is dropped)'],
  ['uwebsockets', 'uWebSockets writes this header itself on every response'],
]);

/**
 * Names server.requestIdHeader may not take: the gateway writes the request
 * id into that header on the way up and down, so it must be a header of its
 * own, never one that frames a message, routes it or carries credentials.
 */
const RESERVED_REQUEST_ID_NAMES = new Set([
  ...MANAGED_HEADERS, ...REQUEST_MANAGED.keys(), ...RESPONSE_MANAGED.keys(),
  'authorization', 'proxy-authorization', 'cookie', 'set-cookie', 'content-type', 'content-encoding', 'location',
]);

/** Characters a rewritten path may hold as they are: RFC 3986 pchar (unreserved, sub-delims, ":", "@") and "/". */
const PATH_CHARS = /^[A-Za-z0-9\-._~!$&'()*+,;=:@/]$/;

/** Null when `v` holds only path characters and valid %HH escapes; else what is wrong, for a rewrite value. */
function rewriteCharProblem(v: string): string | null {
  for (let k = 0; k < v.length; k++) {
    const c = v[k]!;
    if (c === '%') {
      if (!/^%[0-9A-Fa-f]{2}$/.test(v.slice(k, k + 3))) return `has an invalid percent-escape at ${JSON.stringify(v.slice(k, k + 3))} (write %HH with two hex digits)`;
      k += 2;
      continue;
    }
    if (PATH_CHARS.test(c)) continue;
    const shown = c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f ? `control character U+${c.charCodeAt(0).toString(16).padStart(4, '0').toUpperCase()}` : JSON.stringify(c);
    return `may hold only path characters (letters, digits, -._~!$&'()*+,;=:@/ and %HH escapes); found ${shown} (percent-encode it, e.g. %20 for a space; a rewrite cannot add a query or a fragment)`;
  }
  return null;
}

/** Params of a route path pattern in order (`*` for the trailing wildcard). */
export function pathParams(path: string): string[] {
  const names: string[] = [];
  for (let i = 0; i < path.length; i++) {
    const c = path[i];
    if (c === '(') {
      // Skip a regex constraint, which may itself contain ':' (e.g. `(?:a|b)`).
      let depth = 0;
      for (; i < path.length; i++) {
        if (path[i] === '\\') { i++; continue; }
        if (path[i] === '(') depth++;
        else if (path[i] === ')' && --depth === 0) break;
      }
    } else if (c === ':') {
      const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(path.slice(i + 1));
      if (m !== null) {
        names.push(m[0]);
        i += m[0].length;
      }
    } else if (c === '*' && i === path.length - 1) {
      names.push('*');
    }
  }
  return names;
}

/** Leading part of a path pattern before any param, regex or wildcard. */
function staticPrefix(path: string): string {
  const m = /[:*(]/.exec(path);
  return m === null ? path : path.slice(0, m.index);
}

function checkHeaderPolicy(policy: unknown, at: PathSegment[], out: ConfigError[], requestIdHeader: string): void {
  if (!isPlainObject(policy)) return;
  for (const side of ['request', 'response'] as const) {
    const rules = policy[side];
    if (!isPlainObject(rules)) continue;
    for (const op of ['set', 'add'] as const) {
      const map = rules[op];
      if (!isPlainObject(map)) continue;
      const seen = new Map<string, string>();
      for (const name of Object.keys(map)) {
        const lower = name.toLowerCase();
        const path = formatPath([...at, side, op, name]);
        const verb = op === 'set' ? 'set' : 'added';
        if (MANAGED_HEADERS.has(lower) || lower.startsWith('proxy-')) {
          out.push({ path, message: `header "${lower}" is managed by the gateway (message framing / hop-by-hop) and cannot be ${verb}` });
        } else if (side === 'request' && REQUEST_MANAGED.has(lower)) {
          out.push({ path, message: `header "${lower}" cannot be ${verb}: ${REQUEST_MANAGED.get(lower)!}` });
        } else if (side === 'response' && RESPONSE_MANAGED.has(lower)) {
          out.push({ path, message: `header "${lower}" cannot be ${verb}: ${RESPONSE_MANAGED.get(lower)!}` });
        } else if (lower === requestIdHeader) {
          out.push({ path, message: `header "${lower}" cannot be ${verb}: it carries the request id (server.requestIdHeader)` });
        }
        const prev = seen.get(lower);
        if (prev !== undefined && op === 'set') {
          out.push({ path, message: `header "${lower}" is already set as ${JSON.stringify(prev)} (header names are case-insensitive)` });
        }
        seen.set(lower, name);
      }
    }
  }
}

function checkUpstreams(upstreams: unknown, out: ConfigError[], requestIdHeader: string): void {
  if (!isPlainObject(upstreams)) return;
  for (const name of Object.keys(upstreams)) {
    const up = upstreams[name];
    if (!isPlainObject(up)) continue;
    checkHeaderPolicy(up['headers'], ['upstreams', name, 'headers'], out, requestIdHeader);
    const targets = up['targets'];
    if (!Array.isArray(targets)) continue;
    const seen = new Map<string, number>();
    targets.forEach((t, i) => {
      let raw: unknown;
      let at: PathSegment[];
      if (typeof t === 'string') {
        raw = t;
        at = ['upstreams', name, 'targets', i];
      } else if (isPlainObject(t)) {
        raw = t['url'];
        at = ['upstreams', name, 'targets', i, 'url'];
      } else {
        return;
      }
      if (typeof raw !== 'string' || raw === '') return;
      const parsed = parseTargetUrl(raw);
      if (typeof parsed === 'string') {
        out.push({ path: formatPath(at), message: parsed });
        return;
      }
      const prev = seen.get(parsed.url);
      if (prev !== undefined) {
        out.push({ path: formatPath(at), message: `duplicate target ${parsed.url} (same as targets[${prev}]); use weight to send it more traffic` });
      } else {
        seen.set(parsed.url, i);
      }
    });
  }
}

// -- methods and paths that can never match ----------------------------------

/** What uWS (this build) and Bun.serve both receive: RFC 9110's methods and PATCH (CONNECT: see below). */
export const STANDARD_METHODS: readonly string[] = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE'];
/**
 * Extension methods Bun.serve 1.4 receives (its method table, probed over
 * raw sockets). The bundled uWS build closes the connection on every one of
 * them, and both close it on any method outside these lists.
 */
export const EXTENSION_METHODS: readonly string[] = [
  'ACL', 'BIND', 'CHECKOUT', 'COPY', 'LINK', 'LOCK', 'M-SEARCH', 'MERGE', 'MKACTIVITY', 'MKCALENDAR', 'MKCOL', 'MOVE',
  'NOTIFY', 'PROPFIND', 'PROPPATCH', 'PURGE', 'QUERY', 'REBIND', 'REPORT', 'SEARCH', 'SOURCE', 'SUBSCRIBE', 'UNBIND',
  'UNLINK', 'UNLOCK', 'UNSUBSCRIBE',
];

const METHOD_TOKEN = new RegExp(TOKEN_PATTERN);

/**
 * The server backend this document runs on in this process: server.backend,
 * or for "auto" the runtime's (common/runtime.ts autoBackend: uws on Node 20,
 * node on Node 22+, bun on Bun), as resolve.ts picks it for the workers.
 */
export function effectiveBackend(doc: Record<string, unknown>): 'uws' | 'bun' | 'node' {
  const server = doc['server'];
  const b = isPlainObject(server) ? server['backend'] : undefined;
  if (b === 'uws' || b === 'bun' || b === 'node') return b;
  return autoBackend();
}


/**
 * The node backend's worker threads share one listening socket that the
 * engine hands them (engine/shared-listener.ts), on every Node version; under
 * Bun it serves one worker thread (`workers: auto` then means 1, resolve.ts).
 */
function checkNodeBackend(doc: Record<string, unknown>, out: ConfigError[]): void {
  const server = doc['server'];
  if (!isPlainObject(server) || server['backend'] !== 'node' || nodeBackendShardable()) return;
  const w = server['workers'];
  if (typeof w === 'number' && w > 1) {
    out.push({ path: 'server.workers', message: 'the node backend serves one worker thread under Bun: set workers: 1 (or auto), or use server.backend: bun' });
  }
}

/** TURNPIKE_UWS_MODULE points the loader at another uWS build, whose limits this one's facts may not describe. */
function customUws(): boolean {
  return (process.env['TURNPIKE_UWS_MODULE'] ?? '') !== '';
}

function checkMethods(methods: unknown[], i: number, backend: 'uws' | 'bun' | 'node', out: ConfigError[]): void {
  methods.forEach((m: unknown, k: number) => {
    if (typeof m !== 'string' || !METHOD_TOKEN.test(m)) return; // the schema says what is wrong
    const at = formatPath(['routes', i, 'methods', k]);
    const up = m.toUpperCase();
    if (up === 'CONNECT') {
      out.push({ path: at, message: 'CONNECT cannot be routed: the gateway does not tunnel (it answers 501 not_implemented)' });
    } else if (!STANDARD_METHODS.includes(up) && !EXTENSION_METHODS.includes(up)) {
      const close = didYouMean(up, [...STANDARD_METHODS, ...EXTENSION_METHODS]);
      out.push({
        path: at,
        message: `unknown HTTP method ${JSON.stringify(m)}${close === null ? '' : ` (did you mean ${JSON.stringify(close)}?)`}: not a method this gateway routes (uWS and Bun close the connection on it). Use a standard method: ${STANDARD_METHODS.join(', ')}`,
      });
    } else if (EXTENSION_METHODS.includes(up) && backend === 'uws' && !customUws()) {
      out.push({
        path: at,
        message: `${up} can never reach this route on the uWS backend: this uWebSockets.js build closes the connection on extension methods before the gateway sees the request. Remove it, or use server.backend: node (or bun), which receives ${up}`,
      });
    }
  });
}

/** A path pattern without its `:name(regex)` constraints. */
function outsideRegexes(path: string): string {
  let out = '';
  for (let i = 0; i < path.length; i++) {
    if (path[i] === '(' && i > 0 && /[A-Za-z0-9_]/.test(path[i - 1]!)) {
      let depth = 0;
      for (; i < path.length; i++) {
        if (path[i] === '\\') { i++; continue; }
        if (path[i] === '(') depth++;
        else if (path[i] === ')' && --depth === 0) break;
      }
      out += '\u0000'; // where the regex was: its braces and spaces are the regex's business
      continue;
    }
    out += path[i];
  }
  return out;
}

/** `{id}`-style parameters and spaces: a route path that could never be what it looks like. */
function checkPathSyntax(path: string, at: PathSegment[], out: ConfigError[]): void {
  const text = outsideRegexes(path);
  const brace = /\{([^{}/]*)\}/.exec(text);
  if (brace !== null) {
    const inner = brace[1]!;
    const named = /^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?::(.+))?$/.exec(inner);
    let hint: string;
    if (inner.startsWith('*') || inner.startsWith('...')) hint = 'a trailing wildcard is written "*" as the last segment (e.g. "/static/*")';
    else if (named !== null) hint = `write ":${named[1]}${named[2] !== undefined ? `(${named[2]})` : ''}" (e.g. "/users/:${named[1]}")`;
    else hint = 'parameters are written ":name" (e.g. "/users/:id")';
    out.push({
      path: formatPath(at),
      message: `"{${inner}}" is not a path parameter here, it would only match those characters literally: ${hint}. {name} placeholders belong in rewrite.template`,
    });
  }
  if (/\s/.test(text)) {
    const what = text.includes(' ') ? 'a space' : 'whitespace';
    out.push({
      path: formatPath(at),
      message: `contains ${what}, which no request path carries raw (clients send a space as %20); remove it, or write %20 if the path really has a space`,
    });
  }
}

/**
 * A route's upstream choice (workers/proxy/split.ts): exactly one of
 * `upstream` and `upstreams`; in a split every name known and listed once,
 * some weight positive, `when` naming exactly one of header or cookie;
 * `hashOn` only with a split. Paths name the exact entry.
 */
function checkSplit(r: Record<string, unknown>, i: number, upstreams: string[], out: ConfigError[]): void {
  const one = r['upstream'];
  const split = r['upstreams'];
  if (one !== undefined && split !== undefined) {
    out.push({ path: formatPath(['routes', i]), message: 'has both "upstream" and "upstreams"; keep "upstream" for one upstream, or "upstreams" (a weighted list) for a traffic split' });
  } else if (one === undefined && split === undefined) {
    out.push({ path: formatPath(['routes', i]), message: 'needs "upstream" (an upstream name) or "upstreams" (a weighted list such as [{ name: v1, weight: 90 }, { name: v2, weight: 10 }])' });
  }
  if (r['hashOn'] !== undefined && split === undefined) {
    out.push({ path: formatPath(['routes', i, 'hashOn']), message: 'applies to a traffic split only; set "upstreams" on this route, or remove hashOn (a route with one upstream always uses it)' });
  }
  if (!Array.isArray(split)) return;
  const seen = new Map<string, number>();
  let positive = false;
  split.forEach((u: unknown, k: number) => {
    if (!isPlainObject(u)) return;
    const name = u['name'];
    if (typeof name === 'string' && name !== '') {
      const prev = seen.get(name);
      if (prev !== undefined) {
        out.push({ path: formatPath(['routes', i, 'upstreams', k, 'name']), message: `${JSON.stringify(name)} is listed twice (also routes[${i}].upstreams[${prev}]); list each upstream once and add up its weights` });
      } else {
        seen.set(name, k);
      }
      if (!upstreams.includes(name)) {
        const tail = upstreams.length === 0
          ? ' (no upstreams are defined; add one under "upstreams")'
          : suggestion(name, upstreams) || ` (known: ${upstreams.join(', ')})`;
        out.push({ path: formatPath(['routes', i, 'upstreams', k, 'name']), message: `unknown upstream ${JSON.stringify(name)}${tail}` });
      }
    }
    if (typeof u['weight'] === 'number' && u['weight'] > 0) positive = true;
    const w = u['when'];
    if (isPlainObject(w) && (w['header'] === undefined) === (w['cookie'] === undefined)) {
      out.push({ path: formatPath(['routes', i, 'upstreams', k, 'when']), message: 'must name exactly one of "header" or "cookie", with "equals": { header: x-canary, equals: "1" } or { cookie: canary, equals: always }' });
    }
  });
  if (!positive && split.length > 0 && split.every((u) => isPlainObject(u) && typeof u['weight'] === 'number')) {
    out.push({ path: formatPath(['routes', i, 'upstreams']), message: 'every weight is 0, so requests that match no "when" would have nowhere to go; give at least one upstream a positive weight' });
  }
}

function checkRoutes(doc: Record<string, unknown>, checkPattern: PatternChecker | undefined, out: ConfigError[], requestIdHeader: string): void {
  const routes = doc['routes'];
  if (!Array.isArray(routes)) return;
  const upstreams = isPlainObject(doc['upstreams']) ? Object.keys(doc['upstreams']) : [];
  const backend = effectiveBackend(doc);
  const ids = new Map<string, number>();
  routes.forEach((r, i) => {
    if (!isPlainObject(r)) return;
    const id = r['id'];
    if (typeof id === 'string') {
      const prev = ids.get(id);
      if (prev !== undefined) out.push({ path: formatPath(['routes', i, 'id']), message: `duplicate route id ${JSON.stringify(id)} (also routes[${prev}].id)` });
      else ids.set(id, i);
    }
    const up = r['upstream'];
    if (typeof up === 'string' && up !== '' && !upstreams.includes(up)) {
      const tail = upstreams.length === 0
        ? ' (no upstreams are defined; add one under "upstreams")'
        : suggestion(up, upstreams) || ` (known: ${upstreams.join(', ')})`;
      out.push({ path: formatPath(['routes', i, 'upstream']), message: `unknown upstream ${JSON.stringify(up)}${tail}` });
    }
    checkSplit(r, i, upstreams, out);
    const path = r['path'];
    const pathOk = typeof path === 'string' && path.startsWith('/');
    if (pathOk && checkPattern !== undefined) {
      const problem = checkPattern(path);
      if (problem !== null) out.push({ path: formatPath(['routes', i, 'path']), message: problem });
    }
    checkHeaderPolicy(r['headers'], ['routes', i, 'headers'], out, requestIdHeader);
    if (Array.isArray(r['methods'])) checkMethods(r['methods'], i, backend, out);
    if (pathOk) checkPathSyntax(path, ['routes', i, 'path'], out);
    const rw = r['rewrite'];
    if (isPlainObject(rw)) {
      // What a rewrite produces goes on the upstream's request line: only
      // path characters (RFC 3986 pchar and "/", valid %HH escapes); never a
      // space, CR/LF (a header or request injected upstream), "?" or "#".
      const checkChars = (v: unknown, at: PathSegment[], placeholders: boolean): void => {
        if (typeof v !== 'string') return;
        // Template placeholders, and braces left unbalanced (reported below), are not path characters to check.
        const problem = rewriteCharProblem(placeholders ? v.replace(/\{[^{}]*\}/g, '').replace(/[{}]/g, '') : v);
        if (problem !== null) out.push({ path: formatPath(at), message: problem });
      };
      checkChars(rw['stripPrefix'], ['routes', i, 'rewrite', 'stripPrefix'], false);
      checkChars(rw['template'], ['routes', i, 'rewrite', 'template'], true);
      const rpc = rw['replacePrefix'];
      if (isPlainObject(rpc)) {
        checkChars(rpc['from'], ['routes', i, 'rewrite', 'replacePrefix', 'from'], false);
        checkChars(rpc['to'], ['routes', i, 'rewrite', 'replacePrefix', 'to'], false);
      }
    }
    if (!pathOk || !isPlainObject(rw)) return;
    const params = pathParams(path);
    const template = rw['template'];
    if (typeof template === 'string') {
      const at = formatPath(['routes', i, 'rewrite', 'template']);
      const used = [...template.matchAll(/\{([^{}]*)\}/g)].map((m) => m[1]!);
      const rest = template.replace(/\{[^{}]*\}/g, '');
      if (rest.includes('{') || rest.includes('}')) out.push({ path: at, message: 'has an unbalanced "{" or "}"' });
      for (const name of used) {
        if (params.includes(name)) continue;
        const known = params.length === 0
          ? `the route path ${JSON.stringify(path)} has no parameters`
          : `parameters of ${JSON.stringify(path)}: ${params.map((p) => `{${p}}`).join(', ')}`;
        const close = name === '' ? null : didYouMean(name, params.filter((p) => p !== '*'));
        const s = close === null ? '' : ` (did you mean {${close}}?)`;
        out.push({ path: at, message: `placeholder {${name}} is not a parameter of the route path${s}; ${known}` });
      }
    }
    const prefix = staticPrefix(path);
    const checkPrefix = (p: unknown, at: PathSegment[]): void => {
      if (typeof p !== 'string' || p.length > prefix.length) return;
      if (!prefix.startsWith(p)) {
        out.push({ path: formatPath(at), message: `${JSON.stringify(p)} is not a prefix of the route path ${JSON.stringify(path)}, so it would never apply` });
      }
    };
    checkPrefix(rw['stripPrefix'], ['routes', i, 'rewrite', 'stripPrefix']);
    const rp = rw['replacePrefix'];
    if (isPlainObject(rp)) checkPrefix(rp['from'], ['routes', i, 'rewrite', 'replacePrefix', 'from']);
  });
}

export function semanticErrors(doc: Record<string, unknown>, checkPattern?: PatternChecker): ConfigError[] {
  const out: ConfigError[] = [];
  const server = doc['server'];
  const admin = doc['admin'];
  const rid = isPlainObject(server) && typeof server['requestIdHeader'] === 'string' ? server['requestIdHeader'].toLowerCase() : DEFAULTS.server.requestIdHeader;
  if (RESERVED_REQUEST_ID_NAMES.has(rid) || rid.startsWith('proxy-')) {
    out.push({ path: 'server.requestIdHeader', message: `"${rid}" is a header the gateway or HTTP itself gives a meaning; the request id needs a header of its own (e.g. x-request-id)` });
  }
  if (isPlainObject(server)) checkHeaderPolicy(server['headers'], ['server', 'headers'], out, rid);
  checkUpstreams(doc['upstreams'], out, rid);
  checkResilience(doc['upstreams'], out);
  checkDiscovery(doc['upstreams'], out);
  checkRetry(doc, out);
  checkBalancing(doc['upstreams'], out);
  checkRoutes(doc, checkPattern, out, rid);
  checkRateLimitConfig(doc, out);
  checkIdentityConfig(doc, out);
  checkNodeBackend(doc, out);
  const serverPort = isPlainObject(server) && server['port'] !== undefined ? server['port'] : DEFAULTS.server.port;
  const adminPort = isPlainObject(admin) && admin['port'] !== undefined ? admin['port'] : DEFAULTS.admin.port;
  const adminOn = !(isPlainObject(admin) && admin['enabled'] === false);
  const validPort = (p: unknown): p is number => Number.isInteger(p) && (p as number) > 0 && (p as number) <= 65535;
  if (adminOn && validPort(serverPort) && serverPort === adminPort) {
    // Name a key the document has: the clash may come from a default.
    const adminSet = isPlainObject(admin) && admin['port'] !== undefined;
    out.push(adminSet
      ? { path: 'admin.port', message: `same port as server.port (${serverPort}); choose another port or set admin.enabled: false` }
      : { path: 'server.port', message: `${serverPort} is the admin listener's default port (admin.port); choose another server.port, set admin.port, or set admin.enabled: false` });
  }
  return out;
}

// ---------------------------------------------------------------------------
// Warnings: valid, but probably not what was meant

/** Header names the uWS backend receives: letters, digits and "-" only. */
const UWS_HEADER_NAME = /^[A-Za-z0-9-]+$/;

/**
 * What a valid document does that is probably a mistake: upstreams no route
 * uses, no routes at all, `match.headers` names the uWS backend never
 * receives, extension methods with another uWS build. Never a reason to
 * refuse; `turnpike validate` prints them (`warning:` on stderr), start and
 * reload log them, the admin API returns them.
 */
export function semanticWarnings(doc: Record<string, unknown>): ConfigError[] {
  const out: ConfigError[] = [];
  const routes = Array.isArray(doc['routes']) ? doc['routes'] : [];
  const upstreams = isPlainObject(doc['upstreams']) ? Object.keys(doc['upstreams']) : [];
  const backend = effectiveBackend(doc);
  discoveryWarnings(doc, out);
  identityWarnings(doc, out);
  if (routes.length === 0) {
    out.push({ path: 'routes', message: 'no routes: every request will be answered 404 route_not_found; add a route under "routes" (turnpike init prints an example)' });
  }
  const used = new Set<string>();
  routes.forEach((r: unknown, i: number) => {
    if (!isPlainObject(r)) return;
    if (typeof r['upstream'] === 'string') used.add(r['upstream']);
    if (Array.isArray(r['upstreams'])) {
      r['upstreams'].forEach((u: unknown, k: number) => {
        if (!isPlainObject(u)) return;
        if (typeof u['name'] === 'string') used.add(u['name']);
        if (u['weight'] === 0 && u['when'] === undefined) {
          out.push({ path: formatPath(['routes', i, 'upstreams', k]), message: 'weight 0 and no "when": no request ever goes to this upstream; give it a weight, a "when", or remove it' });
        }
        const h = isPlainObject(u['when']) ? u['when']['header'] : undefined;
        if (backend === 'uws' && typeof h === 'string' && !UWS_HEADER_NAME.test(h)) {
          out.push({
            path: formatPath(['routes', i, 'upstreams', k, 'when', 'header']),
            message: `the uWS backend never receives a header named ${JSON.stringify(h)} (letters, digits and "-" only), so this "when" never matches there; use a name such as ${JSON.stringify(h.replace(/[^A-Za-z0-9-]+/g, '-'))}`,
          });
        }
      });
    }
    if (backend === 'uws') unseenHashHeader(r['hashOn'], ['routes', i, 'hashOn'], out);
    const match = r['match'];
    const headers = isPlainObject(match) ? match['headers'] : undefined;
    if (backend === 'uws' && isPlainObject(headers)) {
      for (const name of Object.keys(headers)) {
        if (UWS_HEADER_NAME.test(name)) continue;
        const better = name.replace(/[^A-Za-z0-9-]+/g, '-');
        out.push({
          path: formatPath(['routes', i, 'match', 'headers', name]),
          message: `the uWS backend never receives a header named ${JSON.stringify(name)} (this uWebSockets.js build stalls a request whose header names have characters other than letters, digits and "-"), so this route can never match there; match on a name such as ${JSON.stringify(better)}, or run on Bun (server.backend: bun)`,
        });
      }
    }
    if (backend === 'uws' && customUws() && Array.isArray(r['methods'])) {
      r['methods'].forEach((m: unknown, k: number) => {
        if (typeof m === 'string' && EXTENSION_METHODS.includes(m.toUpperCase())) {
          out.push({
            path: formatPath(['routes', i, 'methods', k]),
            message: `${m.toUpperCase()}: the bundled uWebSockets.js build closes the connection on extension methods; TURNPIKE_UWS_MODULE names another build, so check that it receives ${m.toUpperCase()}`,
          });
        }
      });
    }
  });
  const ups = isPlainObject(doc['upstreams']) ? doc['upstreams'] : {};
  for (const [name, u] of Object.entries(ups)) {
    if (!isPlainObject(u)) continue;
    if (backend === 'uws') unseenHashHeader(u['hashOn'], ['upstreams', name, 'hashOn'], out);
    selfTargets(doc, name, u, out);
    // A per-try timeout replaces responseMs for every try (README, Retries): longer than it is probably not meant.
    const retry = u['retry'];
    const t = u['timeouts'];
    const perTry = isPlainObject(retry) ? retry['perTryTimeoutMs'] : undefined;
    const response = isPlainObject(t) && typeof t['responseMs'] === 'number' ? t['responseMs'] : DEFAULTS.upstream.timeouts.responseMs;
    if (typeof perTry === 'number' && perTry > response) {
      out.push({
        path: formatPath(['upstreams', name, 'retry', 'perTryTimeoutMs']),
        message: `perTryTimeoutMs (${perTry}) is longer than timeouts.responseMs (${response}): each try waits up to perTryTimeoutMs for the response head, and responseMs is not used; lower perTryTimeoutMs (or 0 to use responseMs per try)`,
      });
    }
  }
  for (const name of upstreams) {
    if (used.has(name)) continue;
    out.push({ path: formatPath(['upstreams', name]), message: 'no route uses this upstream; point a route at it (routes[].upstream: ' + JSON.stringify(name) + ') or remove it' });
  }
  return out;
}

/**
 * Targets (and a dns name) that are this gateway's own proxy or admin
 * listener, as far as the config says without a lookup (a loopback address,
 * localhost, 0.0.0.0 or ::, with server.port or admin.port): a request sent
 * there comes back in as a new one, until the pools fill.
 */
function selfTargets(doc: Record<string, unknown>, name: string, u: Record<string, unknown>, out: ConfigError[]): void {
  const server = isPlainObject(doc['server']) ? doc['server'] : {};
  const admin = isPlainObject(doc['admin']) ? doc['admin'] : {};
  const ports = new Map<number, string>();
  const sp = typeof server['port'] === 'number' ? server['port'] : DEFAULTS.server.port;
  if (sp > 0) ports.set(sp, 'proxy listener (server.port)');
  const ap = typeof admin['port'] === 'number' ? admin['port'] : DEFAULTS.admin.port;
  if (admin['enabled'] !== false && ap > 0 && !ports.has(ap)) ports.set(ap, 'admin listener (admin.port)');
  const local = (h: string) => /^(localhost\.?|127\.\d+\.\d+\.\d+|0\.0\.0\.0|::1?|::ffff:7f[0-9a-f]{2}:[0-9a-f]{1,4}|::ffff:127\.\d+\.\d+\.\d+)$/.test(h);
  const message = (what: string) => `this is the gateway's own ${what}: a request sent there comes back in as a new one until the pools fill (a loop); point it at the service`;
  const targets = Array.isArray(u['targets']) ? u['targets'] : [];
  targets.forEach((t: unknown, k: number) => {
    const raw = typeof t === 'string' ? t : isPlainObject(t) && typeof t['url'] === 'string' ? t['url'] : null;
    if (raw === null) return;
    const parsed = parseTargetUrl(raw);
    if (typeof parsed === 'string') return;
    const what = ports.get(parsed.port);
    if (what !== undefined && local(parsed.host)) out.push({ path: formatPath(['upstreams', name, 'targets', k]), message: message(what) });
  });
  const dns = u['dns'];
  if (isPlainObject(dns) && typeof dns['name'] === 'string' && local(dns['name'].toLowerCase())) {
    const what = ports.get(typeof dns['port'] === 'number' ? dns['port'] : 80);
    if (what !== undefined) out.push({ path: formatPath(['upstreams', name, 'dns']), message: message(what) });
  }
}

/** A hashOn "header:<name>" the uWS backend never receives (letters, digits and "-" only): hashing falls back to the address, and such requests stall there. */
function unseenHashHeader(hashOn: unknown, path: PathSegment[], out: ConfigError[]): void {
  if (typeof hashOn !== 'string' || !hashOn.startsWith('header:')) return;
  const h = hashOn.slice(7);
  if (UWS_HEADER_NAME.test(h)) return;
  out.push({
    path: formatPath(path),
    message: `the uWS backend never receives a header named ${JSON.stringify(h)} (letters, digits and "-" only): every request would hash on its address instead; use a name such as ${JSON.stringify('header:' + h.replace(/[^A-Za-z0-9-]+/g, '-'))}`,
  });
}

/** Schema and semantic errors of a raw document; empty when it is valid. */
export function collectErrors(doc: unknown, checkPattern?: PatternChecker): ConfigError[] {
  return checkDocument(doc, checkPattern).errors;
}

/**
 * Converts duration strings (convertDurations), then collects the schema and
 * semantic errors, and the warnings. `doc` is the converted document: the
 * one to resolve when `errors` is empty.
 */
export function checkDocument(raw: unknown, checkPattern?: PatternChecker): { doc: unknown; errors: ConfigError[]; warnings: ConfigError[]; tls: TlsMaterial | null } {
  if (!isPlainObject(raw)) {
    const what = raw === null || raw === undefined ? 'the config is empty' : `the config must be a mapping of sections (server, admin, upstreams, routes), got ${describeValue(raw)}`;
    return { doc: raw, errors: [{ path: '', message: what }], warnings: [], tls: null };
  }
  const { doc, originals } = convertDurations(raw);
  const validate = validator();
  const errors = validate(doc) ? [] : translateAjvErrors(validate.errors ?? [], doc, originals);
  errors.push(...semanticErrors(doc as Record<string, unknown>, checkPattern));
  // Certificates are read here, once: the resolved config serves the bytes checked (common/config/tls.ts).
  const tls = loadTlsMaterial(doc as Record<string, unknown>, effectiveBackend(doc as Record<string, unknown>));
  errors.push(...tls.errors);
  const seen = new Set<string>();
  return {
    doc,
    tls,
    warnings: [...semanticWarnings(doc as Record<string, unknown>), ...tls.warnings],
    errors: errors.filter((e) => {
      const k = `${e.path}\0${e.message}`;
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    }),
  };
}
