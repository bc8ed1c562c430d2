/**
 * The reference router: a linear scan written for clarity, not speed. It
 * states the matching rules as plainly as possible so the fast router
 * (workers/router/compile.ts) can be checked against it case by case and
 * on random inputs. It shares nothing with the fast router except
 * normalizePath (used to canonicalise static literals; tested on its own)
 * and the result constants.
 *
 * A route matches a request when:
 *   - host: `*`, or equal, or `*.suffix` and the host ends with `.suffix`
 *     with at least one more character before it;
 *   - path: same number of segments (a trailing `*` takes the rest, possibly
 *     empty), static segments equal, params non-empty (and matching
 *     `^(?:re)$` when they have a regex);
 *   - predicates: every header pair appears among the request headers, every
 *     query pair among the decoded query pairs;
 *   - method: listed, or no list, or HEAD when GET is listed.
 * Among matching routes the winner is the smallest by: priority (desc),
 * host rank, path specificity, explicit HEAD (HEAD requests only),
 * predicate count (desc), config order.
 * No match but some route matched everything except the method: 405, Allow =
 * sorted union of those routes' listed methods.
 */
import type { RouteInput } from '../../../workers/router/types.js';
import { MATCH_FOUND, MATCH_METHOD_NOT_ALLOWED } from '../../../workers/router/types.js';
import { normalizePath } from '../../../workers/router/normalize.js';

type Seg =
  | { kind: 'static'; text: string }
  | { kind: 'regex'; source: string; re: RegExp; name: string }
  | { kind: 'param'; name: string }
  | { kind: 'wildcard' };

/** Rank of each kind at a segment where two routes differ: lower wins. */
const KIND_RANK = { static: 0, regex: 1, param: 2, wildcard: 3 } as const;

interface RefRoute<T> {
  input: RouteInput<T>;
  order: number;
  segs: Seg[];
}

export interface RefResult<T> {
  kind: typeof MATCH_FOUND | typeof MATCH_METHOD_NOT_ALLOWED;
  data: T | null;
  paramNames: string[];
  params: string[];
  allow: string;
}

/** Split a pattern into segments; `(`...`)` may contain `/`. */
function parse(path: string): Seg[] {
  const raw: string[] = [];
  let cur = '';
  let depth = 0;
  for (let i = 1; i < path.length; i++) {
    const ch = path[i]!;
    if (ch === '\\' && depth > 0) {
      cur += ch + path[i + 1];
      i++;
      continue;
    }
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === '/' && depth === 0) {
      raw.push(cur);
      cur = '';
    } else {
      cur += ch;
    }
  }
  raw.push(cur);
  return raw.map((s): Seg => {
    if (s === '*') return { kind: 'wildcard' };
    if (s.startsWith(':')) {
      const open = s.indexOf('(');
      if (open === -1) return { kind: 'param', name: s.slice(1) };
      const source = s.slice(open + 1, -1);
      return { kind: 'regex', source, re: new RegExp(`^(?:${source})$`), name: s.slice(1, open) };
    }
    return { kind: 'static', text: s === '' ? '' : normalizePath('/' + s)!.slice(1) };
  });
}

function segKey(s: Seg): string {
  switch (s.kind) {
    case 'static': return 's' + s.text;
    case 'regex': return 'r' + s.source;
    case 'param': return 'p';
    case 'wildcard': return 'w';
  }
}

function hostMatches(pattern: string, host: string): boolean {
  if (pattern === '*') return true;
  if (pattern.startsWith('*.')) {
    const suffix = pattern.slice(1);
    return host.length > suffix.length && host.endsWith(suffix);
  }
  return pattern === host;
}

/** exact 0, wildcard 1e6 - suffix length (longer first), any 2e6. */
function hostRank(pattern: string): number {
  if (pattern === '*') return 2e6;
  if (pattern.startsWith('*.')) return 1e6 - pattern.length;
  return 0;
}

/** Param values, or null when the path does not match. */
function matchPath(segs: Seg[], path: string): { names: string[]; values: string[] } | null {
  const parts = path.slice(1).split('/');
  const names: string[] = [];
  const values: string[] = [];
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i]!;
    if (s.kind === 'wildcard') {
      if (parts.length < i + 1) return null;
      names.push('*');
      values.push(parts.slice(i).join('/'));
      return { names, values };
    }
    if (i >= parts.length) return null;
    const part = parts[i]!;
    if (s.kind === 'static') {
      if (part !== s.text) return null;
    } else {
      if (part === '') return null;
      if (s.kind === 'regex' && !s.re.test(part)) return null;
      names.push(s.name);
      values.push(part);
    }
  }
  return parts.length === segs.length ? { names, values } : null;
}

function decode(s: string): string | null {
  try {
    return decodeURIComponent(s);
  } catch {
    return null;
  }
}

function queryPairs(query: string): Array<[string | null, string | null]> {
  return query
    .split('&')
    .filter((p) => p !== '')
    .map((p) => {
      const eq = p.indexOf('=');
      return eq === -1 ? [decode(p), ''] : [decode(p.slice(0, eq)), decode(p.slice(eq + 1))];
    });
}

function predicatesHold(route: RouteInput<unknown>, headers: readonly string[], query: string): boolean {
  for (const [name, value] of route.match.headers) {
    let found = false;
    for (let i = 0; i + 1 < headers.length; i += 2) {
      if (headers[i] === name.toLowerCase() && headers[i + 1] === value) found = true;
    }
    if (!found) return false;
  }
  const pairs = route.match.query.length > 0 ? queryPairs(query) : [];
  for (const [name, value] of route.match.query) {
    if (!pairs.some(([k, v]) => k === name && v === value)) return false;
  }
  return true;
}

function acceptsMethod(route: RouteInput<unknown>, method: string): boolean {
  if (route.methods.length === 0) return true;
  if (route.methods.includes(method)) return true;
  return method === 'HEAD' && route.methods.includes('GET');
}

export class ReferenceRouter<T> {
  readonly #routes: RefRoute<T>[];

  constructor(routes: readonly RouteInput<T>[]) {
    this.#routes = routes.map((input, order) => ({ input, order, segs: parse(input.path) }));
  }

  /**
   * Regex params among themselves at the same tree position: the one whose
   * (prefix + regex) first appears in config order, among routes with the
   * same host and priority.
   */
  #regexRank(r: RefRoute<T>, upTo: number): number {
    const key = r.segs.slice(0, upTo + 1).map(segKey).join('/');
    let first = Infinity;
    for (const o of this.#routes) {
      if (o.input.host !== r.input.host || o.input.priority !== r.input.priority || o.segs.length <= upTo) continue;
      if (o.segs.slice(0, upTo + 1).map(segKey).join('/') === key) first = Math.min(first, o.order);
    }
    return first;
  }

  /** Negative when a wins. Both routes match the same request. */
  #compare(a: RefRoute<T>, b: RefRoute<T>, method: string): number {
    if (a.input.priority !== b.input.priority) return b.input.priority - a.input.priority;
    const ha = hostRank(a.input.host);
    const hb = hostRank(b.input.host);
    if (ha !== hb) return ha - hb;
    const n = Math.min(a.segs.length, b.segs.length);
    for (let i = 0; i < n; i++) {
      const sa = a.segs[i]!;
      const sb = b.segs[i]!;
      if (sa.kind !== sb.kind) return KIND_RANK[sa.kind] - KIND_RANK[sb.kind];
      if (sa.kind === 'regex' && sb.kind === 'regex' && sa.source !== sb.source) {
        return this.#regexRank(a, i) - this.#regexRank(b, i);
      }
    }
    if (method === 'HEAD') {
      const ea = a.input.methods.length === 0 || a.input.methods.includes('HEAD') ? 0 : 1;
      const eb = b.input.methods.length === 0 || b.input.methods.includes('HEAD') ? 0 : 1;
      if (ea !== eb) return ea - eb;
    }
    const pa = a.input.match.headers.length + a.input.match.query.length;
    const pb = b.input.match.headers.length + b.input.match.query.length;
    if (pa !== pb) return pb - pa;
    return a.order - b.order;
  }

  find(method: string, host: string, path: string, headers: readonly string[], query: string): RefResult<T> | null {
    const candidates: Array<{ route: RefRoute<T>; names: string[]; values: string[] }> = [];
    for (const route of this.#routes) {
      if (!hostMatches(route.input.host, host)) continue;
      const m = matchPath(route.segs, path);
      if (m === null) continue;
      if (!predicatesHold(route.input, headers, query)) continue;
      candidates.push({ route, ...m });
    }
    const full = candidates.filter((c) => acceptsMethod(c.route.input, method));
    if (full.length > 0) {
      full.sort((x, y) => this.#compare(x.route, y.route, method));
      const w = full[0]!;
      return { kind: MATCH_FOUND, data: w.route.input.data, paramNames: w.names, params: w.values, allow: '' };
    }
    if (candidates.length === 0) return null;
    const allow = new Set<string>();
    for (const c of candidates) for (const m of c.route.input.methods) allow.add(m);
    return { kind: MATCH_METHOD_NOT_ALLOWED, data: null, paramNames: [], params: [], allow: [...allow].sort().join(', ') };
  }
}
