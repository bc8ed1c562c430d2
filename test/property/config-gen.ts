/**
 * Seeded generator of Turnpike config documents that stress the router and
 * the config rules, for the "a config that validates is one every worker
 * accepts" property (config-accepted.test.ts).
 *
 * Everything is driven by one deterministic PRNG (mulberry32), so a seed
 * names a document exactly: `generateDocument(new Rng(seed))` gives the same
 * object on every machine.
 *
 * What the documents contain (a good share valid, a good share not):
 * - routes in families: a fresh route, or a variant of an earlier one that
 *   differs in nothing (a duplicate), only in methods (overlapping or not),
 *   priority, predicates, host (also only by letter case), param names
 *   (`/u/:id` vs `/u/:uid`), regex (`:id(\d+)` vs `:id([0-9]+)`), a trailing
 *   slash or a percent-escape that decodes to the same path;
 * - paths with static segments, `:params`, `:params(regex)` (valid, invalid,
 *   overlapping), wildcards, trailing slashes, percent-escapes (valid,
 *   invalid, encoded slashes and dots), very long paths, and up to a few
 *   hundred routes;
 * - hosts: exact, differing only by case, `*.wildcard`, `*`, invalid ones;
 * - methods: lists with HEAD, lowercase, extension methods, too many
 *   extension methods, duplicates, empty lists;
 * - match.headers / match.query predicates (also names differing by case);
 * - rewrites of all three kinds referencing the route's params (and unknown
 *   ones), header rules at every level, per-route maxBodyBytes,
 *   pathForwarding, preserveHost, upstream names and targets;
 * - rate limits: named and inline policies of every algorithm and key kind,
 *   quotas with time zones, references to unknown names, the refusals
 *   validation must make (rate 0, per 1y, header: without a name...),
 *   trusted proxies, table capacities;
 * - then random mutations of the whole document: drop a key, a wrong type,
 *   a bad value, an unknown key, a duplicated route, a root that is not a
 *   mapping.
 */
import { normalizePath } from '../../workers/router/normalize.js';

/** mulberry32: small, seeded, deterministic. */
export class Rng {
  #a: number;
  constructor(readonly seed: number) {
    this.#a = seed >>> 0;
  }

  next(): number {
    this.#a = (this.#a + 0x6d2b79f5) >>> 0;
    let t = this.#a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)]!;
  }

  /** `k` distinct items (fewer when xs is shorter). */
  sample<T>(xs: readonly T[], k: number): T[] {
    const copy = xs.slice();
    const out: T[] = [];
    while (out.length < k && copy.length > 0) out.push(copy.splice(Math.floor(this.next() * copy.length), 1)[0]!);
    return out;
  }
}

/** The seed of case `i` of a run started with `base` (printed on failure, replayable alone). */
export function caseSeed(base: number, i: number): number {
  let h = (base ^ Math.imul(i + 1, 0x9e3779b9)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

type Obj = Record<string, unknown>;

export interface GenOptions {
  /**
   * Upstream target URLs to use (property B: live servers on 127.0.0.1).
   * Default: a mix of valid, odd and invalid URLs that are never connected to.
   */
  liveTargets?: readonly string[];
  /** Largest route count (default 400). */
  maxRoutes?: number;
  /**
   * Only values JSON can carry (no NaN, Infinity, undefined): documents sent
   * over HTTP. Default false.
   */
  jsonOnly?: boolean;
}

// ---------------------------------------------------------------------------
// Vocabulary

const STATIC_WORDS = [
  'api', 'users', 'u', 'v1', 'v2', 'static', 'files', 'a', 'b', 'posts', 'me', 'orders', 'items', 'health',
  'x.json', 'a:b', '-', '_', '~user', '%7euser', '%7Euser', '%41', 'A', 'caf%C3%A9', 'a%2fb', 'a%2Fb', '..%2F',
  'a%20b', 'a|b', "it's", 'a=b', 'a,b', '@', '!', '$', 'CamelCase', '123', 'x%2e', '.x', '..x',
];
/** Static segments the pattern parser (or, for a space and `{id}`, validation) refuses. */
const BAD_STATIC_WORDS = ['.', '..', '%2e', '%2E%2e', '%2e%2e', '%2E', '%zz', '%0', '%', '%00', 'é', 'a*', 'a(b', 'b)', 'a\\b', '\u0001', '', 'a b', '{id}'];
const PARAM_NAMES = ['id', 'uid', 'ID', '_x', 'name', 'slug', 'p1', 'userId', 'v'];
const BAD_PARAM_NAMES = ['1a', '', 'a-b', 'a.b', 'é'];

/** Regexes for `:name(regex)`, with a segment each one matches (null: valid regex, no sample). */
export const REGEXES: ReadonlyArray<readonly [src: string, sample: string | null]> = [
  ['^[0-9]+$', '123'], ['\\d+', '42'], ['[0-9]+', '7'], ['[a-z]+', 'abc'], ['\\d{2,4}', '123'], ['v[0-9]', 'v1'],
  ['(?:a|b)', 'a'], ['a|b', 'b'], ['[^/]+', 'x'], ['a(b)c', 'abc'], ['.*', 'q'], ['[0-9]+|me', 'me'], ['\\w+', 'w1'],
  ['x{2}', 'xx'], ['(?<n>a)', 'a'], ['(a+)+$', 'aa'], ['[a-f0-9]{8}', 'deadbeef'], ['.+', 'zz'], ['[)]', null],
  ['\\)', null], ['[(]x', null],
];
const BAD_REGEXES = [')', '(', '[', '*', '', '?', 'a{2', '(?<n>a)(?<n>b)', '\\', 'a/b'];

const HOSTS = [
  'api.example.com', 'API.example.com', 'Api.Example.COM', '*.example.com', '*.EXAMPLE.com', '*.a.example.com', '*',
  'localhost', '127.0.0.1', 'example.com', 'b.example.com', 'x-1.example.com', '*.com', 'a.b.c.d.e.example.com',
  `${'l'.repeat(63)}.example.com`,
];
const BAD_HOSTS = [
  'api.example.com:8080', 'http://api.example.com', '*.*.com', '**', 'a..b', '-a.com', '', 'a_b.com',
  `${'x'.repeat(63)}.`.repeat(4) + 'com', 'api.example.com.', '*example.com', 'a/b', ' api.example.com', 'ex ample.com',
];
const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS', 'get', 'post', 'head', 'Delete', 'TRACE'];
/** Extension methods: only a document on the Bun backend can route them (the uWS build closes the connection). */
const EXTENSION_METHODS = ['PURGE', 'PROPFIND', 'report', 'MKCOL', 'search'];
// CONNECT is refused in routes (the gateway does not tunnel); a method no backend receives is refused too.
const BAD_METHODS = ['GE T', '', 'M.1', '1GET', 'GET\n', 'é', 'a!', 'CONNECT', 'connect', 'X-CUSTOM', 'FETCH'];
const PRIORITIES = [0, 0, 1, -1, 5, 10, 1_000_000, -1_000_000];
const BAD_PRIORITIES = [1_000_001, 0.5, '1', null, -1_000_001];
const UPSTREAM_NAMES = ['users', 'users-v2', 'orders', 'a.b', 'svc:1', 'Users', '0', 'constructor', 'toString', 'x_y'];
const BAD_UPSTREAM_NAMES = ['_hidden', '-x', 'a b', '', 'é', 'x'.repeat(129)];
const HEADER_NAMES = ['x-a', 'X-A', 'x-b', 'x-service', 'cookie', 'server', 'cache-control', 'x-request-id', 'content-type', 'accept', 'x_under', '__proto__', 'constructor'];
// A rule may not set or add framing or hop-by-hop fields, nor what the gateway writes itself (host, expect,
// x-forwarded-*, forwarded, the request id header): those are "bad" names for set/add (remove takes any).
const BAD_HEADER_NAMES = ['content-length', 'transfer-encoding', 'connection', 'keep-alive', 'te', 'upgrade', 'bad name', 'x:y', '', 'é',
  'host', 'expect', 'x-forwarded-for', 'forwarded'];
const HEADER_VALUES: unknown[] = ['v', '1', 2, true, false, 0, '', 'a\tb', 'héllo', 'x'.repeat(200), 'a, b', '"quoted"'];
const BAD_HEADER_VALUES: unknown[] = ['a\r\nb', 'a\nb', '\u0000', 'a\u007f', null, [], {}];
/** Predicate header names: never one a client library adds by itself (host, connection, content-length...). */
const PRED_HEADERS = ['x-api-version', 'X-Api-Version', 'x-tenant', 'accept', 'x-flag', 'x-beta', '__proto__'];
const PRED_VALUES: unknown[] = ['1', '2', 2, true, 'acme', 'application/json', '', 'a b', 'v=1;x'];
const QUERY_NAMES = ['v', 'debug', 'a b', 'q', 'ä', 'x[]', '__proto__', 'constructor', '%41', '+'];
const QUERY_VALUES: unknown[] = ['2', '1', 'c d', 1, true, '', 'ö', '%', 'a&b', 'a=b', '+'];
const TARGET_URLS = [
  'http://127.0.0.1:9001', 'http://10.0.0.11:9001', 'http://[::1]:8080', 'http://example.com', 'http://example.org:80',
  'HTTP://Example.COM:9002/', 'http://svc.internal:65535', 'http://a:1', ' http://127.0.0.1:9003 ',
];
const BAD_TARGET_URLS = [
  'https://example.com', 'http://user:pw@h:1', 'http://h:0', 'http://h:65536', 'http://h/path', 'ftp://x',
  '127.0.0.1:9001', 'http://h:1?x', 'http://h:1#f', 'http://', 'http:// h', '',
];

// ---------------------------------------------------------------------------
// Pieces

/** A segment list with what the rewrite generator needs to know about it. */
interface PathShape {
  path: string;
  params: string[];
  wildcard: boolean;
  staticPrefix: string;
}

class DocGen {
  readonly routes: Obj[] = [];
  readonly upstreamNames: string[] = [];
  /** Per-document knobs: how odd this document is. */
  readonly dirty: boolean;
  readonly pBad: number;
  /**
   * How many variants may still be of a kind that can make a duplicate route
   * (same shape, host, priority and predicates, overlapping methods): a few
   * per document, or every document would be one.
   */
  dupeBudget: number;
  /** server.backend is "bun": extension methods (PURGE...) are valid in this document. */
  extensionsOk = false;

  constructor(readonly rng: Rng, readonly opts: GenOptions) {
    this.dirty = rng.chance(0.35);
    this.pBad = this.dirty ? rng.pick([0.01, 0.03, 0.08]) : 0;
    this.dupeBudget = this.dirty ? rng.int(0, 3) : rng.chance(0.3) ? 1 : 0;
  }

  bad(scale = 1): boolean {
    return this.pBad > 0 && this.rng.chance(this.pBad * scale);
  }

  // --- paths

  staticWord(): string {
    return this.bad() ? this.rng.pick(BAD_STATIC_WORDS) : this.rng.pick(STATIC_WORDS);
  }

  regexSrc(): string {
    return this.bad(2) ? this.rng.pick(BAD_REGEXES) : this.rng.pick(REGEXES)[0];
  }

  shape(): PathShape {
    const r = this.rng;
    const segs: string[] = [];
    const params: string[] = [];
    let wildcard = false;
    let staticPrefix = '';
    let prefixOpen = true;
    const nSegs = r.pick([0, 1, 1, 2, 2, 2, 3, 3, 4, 5, 7]);
    for (let k = 0; k < nSegs; k++) {
      const x = r.next();
      if (x < 0.55) {
        const w = this.staticWord();
        segs.push(w);
        if (prefixOpen) staticPrefix += '/' + w;
      } else if (x < 0.93) {
        // A param (x < 0.8) or a regex param.
        prefixOpen = false;
        let name = this.bad() ? r.pick(BAD_PARAM_NAMES) : r.pick(PARAM_NAMES);
        // Clean documents keep names distinct within a path; dirty ones may repeat them.
        if (!this.dirty) for (let n = 2; params.includes(name); n++) name = `${r.pick(PARAM_NAMES)}${n}`;
        params.push(name);
        segs.push(x < 0.8 ? `:${name}` : `:${name}(${this.regexSrc()})`);
      } else {
        prefixOpen = false;
        segs.push('*');
        wildcard = true;
        if (!this.bad(3)) break; // "*" must be last
      }
    }
    let path = '/' + segs.join('/');
    if (!wildcard && segs.length > 0 && r.chance(0.12)) path += '/'; // trailing slash
    if (r.chance(0.02)) {
      const long = this.longPath(path);
      staticPrefix = long.slice(0, long.length - (path === '/' ? 0 : path.replace(/\/$/, '').length)) + staticPrefix;
      path = long;
    }
    if (this.bad()) {
      path = r.pick([
        path.slice(1) || 'x', // no leading slash
        path + '//x', // empty segment
        '/' + 'a'.repeat(2048), // longer than 2048
        '',
        path.replace('/', '//'),
      ]);
    }
    return { path, params, wildcard, staticPrefix };
  }

  /** A path of about 1000..2048 characters (the schema's maxLength is 2048). */
  longPath(base: string): string {
    const target = this.rng.int(1000, 2048);
    let p = base === '/' ? '' : base.replace(/\/$/, '');
    // Append static segments before the first dynamic part would change
    // meaning; put them in front instead.
    const seg = this.rng.pick(['segment', 'x', 'abcdefghij', 'a%7Eb']);
    let front = '';
    while (front.length + p.length + seg.length + 1 <= target) front += '/' + seg;
    p = front + p;
    return p === '' ? '/' : p;
  }

  // --- hosts, methods, predicates

  host(): string {
    if (this.bad()) return this.rng.pick(BAD_HOSTS);
    if (this.rng.chance(0.03)) {
      // Long but valid: up to 253 characters.
      const labels: string[] = [];
      let len = 3; // ".com" less the first dot
      for (;;) {
        const n = this.rng.int(1, 63);
        if (len + n + 1 > 253) break;
        labels.push('h'.repeat(n));
        len += n + 1;
      }
      return labels.join('.') + '.com';
    }
    return this.rng.pick(HOSTS);
  }

  methods(): unknown {
    const r = this.rng;
    if (this.bad()) {
      return r.pick<unknown>([
        ['GET', 'GET'], // uniqueItems
        [r.pick(BAD_METHODS)],
        'GET',
        Array.from({ length: 23 }, (_, i) => `EXT${i}`), // > 21 extension methods
        [1],
      ]);
    }
    if (r.chance(0.1)) return [];
    if (!this.extensionsOk && this.bad()) return [r.pick(EXTENSION_METHODS)]; // refused: the uWS backend never receives it
    return r.sample(this.extensionsOk ? [...METHODS, ...EXTENSION_METHODS] : METHODS, r.int(1, 3));
  }

  mapOf(names: readonly string[], values: readonly unknown[], n: number, badNames: readonly string[] = [], badValues: readonly unknown[] = []): Obj {
    const out: Obj = {};
    for (let i = 0; i < n; i++) {
      const name = badNames.length > 0 && this.bad() ? this.rng.pick(badNames) : this.rng.pick(names);
      const value = badValues.length > 0 && this.bad() ? this.rng.pick(badValues) : this.rng.pick(values);
      // Own properties even for "__proto__" (as JSON.parse makes them).
      Object.defineProperty(out, name, { value, enumerable: true, writable: true, configurable: true });
    }
    return out;
  }

  match(): Obj {
    const r = this.rng;
    const m: Obj = {};
    if (r.chance(0.7)) m['headers'] = this.mapOf(PRED_HEADERS, PRED_VALUES, r.int(1, 2), ['bad name', 'x:y', ''], [null, [], {}]);
    if (r.chance(0.5)) m['query'] = this.mapOf(QUERY_NAMES, QUERY_VALUES, r.int(1, 2), [''], [null, ['a']]);
    return m;
  }

  headerRules(): Obj {
    const r = this.rng;
    const rules: Obj = {};
    if (r.chance(0.6)) rules['set'] = this.mapOf(HEADER_NAMES, HEADER_VALUES, r.int(1, 3), BAD_HEADER_NAMES, BAD_HEADER_VALUES);
    if (r.chance(0.4)) rules['add'] = this.mapOf(HEADER_NAMES, HEADER_VALUES, r.int(1, 2), BAD_HEADER_NAMES, BAD_HEADER_VALUES);
    if (r.chance(0.4)) rules['remove'] = r.sample(HEADER_NAMES, r.int(0, 3)).concat(this.bad() ? ['bad name'] : []);
    return rules;
  }

  headerPolicy(): Obj {
    const p: Obj = {};
    if (this.rng.chance(0.7)) p['request'] = this.headerRules();
    if (this.rng.chance(0.5)) p['response'] = this.headerRules();
    if (this.bad()) p[this.rng.pick(['both', 'req'])] = {};
    return p;
  }

  // --- rewrites

  rewrite(s: PathShape): Obj {
    const r = this.rng;
    const placeholders = [...s.params, ...(s.wildcard ? ['*'] : [])];
    const kind = r.pick(['stripPrefix', 'replacePrefix', 'template', 'template']);
    const prefix = s.staticPrefix === '' ? '/' : s.staticPrefix;
    let rw: Obj;
    if (kind === 'stripPrefix') {
      rw = { stripPrefix: r.pick([prefix, prefix, prefix + '/', '/', prefix + '/more/than/the/static/prefix']) };
      if (this.bad(2)) rw = { stripPrefix: r.pick(['/other', prefix.slice(0, Math.max(1, prefix.length - 1)) + 'z', 'api', '']) };
    } else if (kind === 'replacePrefix') {
      rw = { replacePrefix: { from: r.pick([prefix, prefix, '/']), to: r.pick(['/', '/v2', '/x/y/', '/api/v3', '//double']) } };
      if (this.bad(2)) rw = { replacePrefix: r.pick<unknown>([{ from: '/nope', to: '/' }, { from: prefix }, { from: prefix, to: 'x' }, '/x']) };
    } else {
      const parts = r.sample(placeholders, r.int(0, placeholders.length)).map((p) => `{${p}}`);
      if (this.bad(4)) parts.push(r.pick(['{nope}', '{ID}', '{}', '{*}', '{id}'])); // unknown params (sometimes known)
      let t = '/' + r.pick(['v2', 'internal', 'x']) + (parts.length > 0 ? '/' + parts.join('/') : '');
      const first = placeholders[0];
      if (first !== undefined && r.chance(0.1)) t = r.pick([`/{${first}}`, `/{${first}}{${first}}`, `/a{${first}}b/{${first}}`, `/{${first}}/`]);
      if (this.bad(2)) t = r.pick(['/a/{id', '/a/id}', 'v2/{id}', '/{}', '/{{id}}']);
      rw = { template: t };
    }
    if (this.bad()) {
      // Two kinds, or none.
      rw = r.chance(0.5) ? { ...rw, stripPrefix: '/a', template: '/b' } : {};
    }
    return rw;
  }

  // --- routes

  routeId(i: number): string {
    if (this.bad()) return this.rng.pick(['-x', 'a b', '', 'x'.repeat(129), 'r0', 'r1']);
    return this.rng.pick([`r${i}`, `r${i}`, `route-${i}`, `users.v${i}`, `svc:r${i}`, `R${i}`]);
  }

  upstreamRef(): string {
    if (this.bad(2) || this.upstreamNames.length === 0) return this.rng.pick(['nope', 'user', 'USERS', 'toString', '']);
    return this.rng.pick(this.upstreamNames);
  }

  /** Routes already generated, by what makes two of them duplicates (methods aside). */
  readonly shapes = new Map<string, unknown[]>();

  /** Whether `route` would be a duplicate of one already generated. */
  collides(route: Obj): boolean {
    return (this.shapes.get(this.shapeKey(route)) ?? []).some((m) => methodsOverlap(m, route['methods']));
  }

  remember(route: Obj): void {
    const k = this.shapeKey(route);
    const list = this.shapes.get(k);
    if (list === undefined) this.shapes.set(k, [route['methods']]);
    else list.push(route['methods']);
  }

  shapeKey(route: Obj): string {
    const path = typeof route['path'] === 'string' ? route['path'] : '';
    const generic = patternSegments(path).map((seg) => seg.startsWith(':') ? seg.replace(/^:[A-Za-z0-9_]*/, ':') : seg).join('/');
    const host = typeof route['host'] === 'string' ? route['host'].toLowerCase() : '*';
    return JSON.stringify([host, route['priority'] ?? 0, normalizePath('/' + generic) ?? generic, route['match'] ?? {}]);
  }

  freshRoute(i: number): Obj {
    const r = this.rng;
    let s = this.shape();
    // A fresh route takes a shape of its own (variants make the collisions).
    for (let tries = 0; tries < 4 && this.shapes.has(this.shapeKey({ path: s.path })); tries++) s = this.shape();
    const route: Obj = { id: this.routeId(i), path: s.path, upstream: this.upstreamRef() };
    if (r.chance(0.4)) route['host'] = this.host();
    if (r.chance(0.5)) route['methods'] = this.methods();
    if (r.chance(0.25)) route['priority'] = this.bad() ? r.pick(BAD_PRIORITIES) : r.pick(PRIORITIES);
    if (r.chance(0.2)) route['match'] = this.match();
    if (r.chance(0.3)) route['rewrite'] = this.rewrite(s);
    if (r.chance(0.1)) route['preserveHost'] = this.bad() ? 'yes' : r.chance(0.5);
    if (r.chance(0.12)) route['pathForwarding'] = this.bad() ? 'raw' : r.pick(['normalized', 'original']);
    if (r.chance(0.15)) route['headers'] = this.headerPolicy();
    if (r.chance(0.15)) route['maxBodyBytes'] = this.bad() ? r.pick([-1, 1.5, '10', 1_099_511_627_777]) : r.pick([0, 1, 1024, 1_099_511_627_776]);
    if (r.chance(0.15)) {
      const list: unknown[] = [];
      for (let k = r.pick([1, 1, 2, 3]); k > 0; k--) {
        list.push(this.policyNames.length > 0 && r.chance(0.5) ? (this.bad(0.5) ? 'no-such-policy' : r.pick(this.policyNames)) : this.rateLimitPolicy());
      }
      route['rateLimit'] = list;
    }
    if (this.bad()) route[r.pick(['method', 'stripPrefix', 'name', 'paths', 'Path', 'weight'])] = r.pick(['GET', '/a', 'x', ['/a'], 1]);
    if (this.collides(route) && !this.dirty) {
      // Still taken: a segment of its own in front.
      route['path'] = `/g${i}${s.path === '/' ? '' : s.path}`;
      const rw = route['rewrite'] as Obj | undefined;
      if (rw !== undefined && typeof rw['stripPrefix'] === 'string') rw['stripPrefix'] = `/g${i}${rw['stripPrefix'] === '/' ? '' : rw['stripPrefix']}`;
      const rp = rw?.['replacePrefix'] as Obj | undefined;
      if (rp !== undefined && typeof rp['from'] === 'string') rp['from'] = `/g${i}${rp['from'] === '/' ? '' : rp['from']}`;
    }
    return route;
  }

  /** A copy of `base` that differs in at most one dimension: the router's duplicate and precedence rules. */
  variant(base: Obj, i: number): Obj {
    const r = this.rng;
    const v: Obj = structuredClone(base);
    v['id'] = this.routeId(i);
    const path = typeof v['path'] === 'string' ? v['path'] : '/';
    // Kinds that keep the shape, host, priority and predicates (a duplicate
    // unless the methods are disjoint), and kinds that change one of them.
    const same = ['exact', 'methods-overlap', 'host-case', 'param-rename', 'escape', 'lowercase-methods', 'methods-empty'];
    const differ = ['methods-disjoint', 'priority', 'predicates', 'host', 'regex', 'regex-other', 'trailing-slash', 'wildcard', 'head'];
    let how = r.pick(differ);
    if (this.dupeBudget > 0 && r.chance(0.4)) {
      this.dupeBudget--;
      how = r.pick(same);
    }
    switch (how) {
      case 'exact':
        break;
      case 'methods-disjoint': {
        const used = new Set((Array.isArray(v['methods']) ? v['methods'] : []).map((m) => String(m).toUpperCase()));
        const free = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', ...(this.extensionsOk ? ['PURGE'] : [])].filter((m) => !used.has(m));
        if (used.size === 0) base['methods'] = ['GET']; // the base takes any method: give it one
        v['methods'] = r.sample(free.filter((m) => m !== 'GET' || used.size > 0), r.int(1, 2));
        break;
      }
      case 'methods-overlap':
        v['methods'] = [...(Array.isArray(v['methods']) ? (v['methods'] as unknown[]).slice(0, 1) : ['GET']), r.pick(['POST', 'DELETE'])];
        break;
      case 'priority': {
        const p = typeof v['priority'] === 'number' ? v['priority'] : 0;
        v['priority'] = Math.max(-1_000_000, Math.min(1_000_000, p + r.pick([1, -1, 7])));
        if (v['priority'] === p) v['priority'] = p - 1;
        break;
      }
      case 'predicates':
        v['match'] = this.match();
        break;
      case 'host':
        v['host'] = this.host();
        break;
      case 'host-case': {
        const h = typeof v['host'] === 'string' ? v['host'] : r.pick(['api.example.com', '*.example.com']);
        base['host'] = h;
        v['host'] = r.chance(0.5) ? h.toUpperCase() : h.replace(/^./, (c) => c.toUpperCase());
        break;
      }
      case 'param-rename':
        v['path'] = path.replace(/:([A-Za-z_][A-Za-z0-9_]*)/g, (_m, n: string) => `:${n}${r.pick(['2', 'x', '_b'])}`);
        this.renameTemplate(v);
        break;
      case 'regex':
        v['path'] = path.replace(/:([A-Za-z_][A-Za-z0-9_]*)(?=\/|$)/, (_m, n: string) => `:${n}(${this.regexSrc()})`);
        break;
      case 'regex-other':
        v['path'] = path.replace(/:([A-Za-z_][A-Za-z0-9_]*)\((?:[^()]|\([^()]*\))*\)/, (_m, n: string) => `:${n}(${this.regexSrc()})`);
        break;
      case 'trailing-slash':
        v['path'] = path.endsWith('/') ? (path.length > 1 ? path.slice(0, -1) : '/x') : path.endsWith('*') ? path : path + '/';
        break;
      case 'escape':
        // Same path once canonicalised: an unreserved character written as an escape.
        v['path'] = path.replace(/(^|\/)([a-zA-Z~])/, (_m, sl: string, c: string) => `${sl}%${c.charCodeAt(0).toString(16).toUpperCase()}`);
        if (v['path'] === path) v['path'] = path.replace(/%([0-9a-f]{2})/, (_m, h: string) => `%${h.toUpperCase()}`);
        break;
      case 'wildcard':
        v['path'] = path.endsWith('*') ? path.slice(0, -1) + ':rest' : path.replace(/\/$/, '') + '/*';
        break;
      case 'head':
        v['methods'] = r.pick([['HEAD'], ['GET'], ['HEAD', 'GET'], ['head']]);
        break;
      case 'lowercase-methods':
        v['methods'] = (Array.isArray(v['methods']) ? v['methods'] : ['GET']).map((m) => String(m).toLowerCase());
        break;
      case 'methods-empty':
        v['methods'] = [];
        break;
    }
    for (let tries = 0; tries < 6 && differ.includes(how) && this.collides(v); tries++) {
      // The change was a no-op here (no param to give a regex, same host
      // picked...) or made another route's twin: a priority change instead,
      // so it stays a near-duplicate.
      const p = typeof base['priority'] === 'number' ? base['priority'] : 0;
      v['priority'] = p >= 999_000 ? p - r.int(1, 9) : p + r.int(1, 9);
    }
    return v;
  }

  /** Keep a template rewrite pointing at the renamed params. */
  renameTemplate(v: Obj): void {
    const rw = v['rewrite'];
    if (rw === null || typeof rw !== 'object' || typeof (rw as Obj)['template'] !== 'string') return;
    if (this.rng.chance(0.3)) return; // left pointing at the old names: unknown params
    const names = [...String(v['path']).matchAll(/:([A-Za-z_][A-Za-z0-9_]*)/g)].map((m) => m[1]!);
    const t = String((rw as Obj)['template']).replace(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (m) => (names.length > 0 ? `{${this.rng.pick(names)}}` : m));
    (rw as Obj)['template'] = t;
  }

  // --- upstreams and server

  target(): unknown {
    const r = this.rng;
    const live = this.opts.liveTargets;
    let url: string;
    if (live !== undefined && live.length > 0) {
      const base = r.pick(live);
      url = r.pick([base, base, base + '/', base.replace(/^http/, 'HTTP')]);
      if (this.bad()) url = r.pick(BAD_TARGET_URLS);
    } else {
      url = this.bad(2) ? r.pick(BAD_TARGET_URLS) : r.pick(TARGET_URLS);
    }
    if (r.chance(0.3)) {
      const t: Obj = { url };
      if (r.chance(0.7)) t['weight'] = this.bad() ? r.pick([0, 1001, 1.5, '2']) : r.pick([1, 2, 10, 1000]);
      return t;
    }
    return url;
  }

  upstream(): Obj {
    const r = this.rng;
    const n = r.pick([1, 1, 1, 2, 3]);
    const targets: unknown[] = [];
    const seen = new Set<string>();
    for (let i = 0; i < n * 3 && targets.length < n; i++) {
      const t = this.target();
      // Clean documents keep targets distinct (the same URL twice is refused).
      const key = String(typeof t === 'string' ? t : (t as Obj)['url']).trim().toLowerCase().replace(/\/$/, '').replace(/^(http:\/\/[^:/]*)$/, '$1:80');
      if (seen.has(key) && !this.bad(5)) continue;
      seen.add(key);
      targets.push(t);
    }
    const u: Obj = { targets: this.bad() ? r.pick<unknown>([[], 'http://127.0.0.1:1', null]) : targets };
    if (r.chance(0.3)) u['balance'] = this.bad() ? 'weighted' : r.pick(['round_robin', 'least_conn', 'random', 'ip_hash', 'consistent_hash', 'sticky']);
    // Keyed balancers' settings: mostly with their balance; a bad document may set one without it (refused).
    if (u['balance'] === 'consistent_hash' || this.bad(3)) {
      if (r.chance(0.5)) u['hashOn'] = this.bad() ? r.pick(['query:id', 'header:', 'header:a b', 'cookie:a=b']) : r.pick(['ip', 'path', 'header:x-user-id', 'cookie:sid']);
    }
    if (u['balance'] === 'sticky' || this.bad(3)) {
      if (r.chance(0.5)) u['sticky'] = { cookie: this.bad() ? 'a b' : r.pick(['tp_affinity', 'aff']), ttlMs: this.bad() ? 500 : r.pick<unknown>([0, 1000, '1h']) };
    }
    if (r.chance(0.2)) u['pool'] = { maxConnections: this.bad() ? 0 : r.pick([1, 16, 256]), idleTimeoutMs: r.pick([1, 1000, 30000]), maxPending: r.pick([0, 10, 1024]) };
    if (r.chance(0.2)) u['timeouts'] = { connectMs: r.pick([1, 250, 1000]), responseMs: r.pick([1000, 15000]), idleMs: r.pick([1000, 30000]), totalMs: this.bad() ? -1 : r.pick([0, 60000]) };
    if (r.chance(0.15)) u['headers'] = this.headerPolicy();
    if (this.bad()) u[r.pick(['url', 'servers', 'retry', 'timeout'])] = 'x';
    return u;
  }

  server(): Obj {
    const r = this.rng;
    const s: Obj = { host: '127.0.0.1', port: r.pick([0, 0, 8080, 9901, 65535]) };
    if (r.chance(0.5)) s['workers'] = r.pick<unknown>([1, 2, 'auto', 256]);
    if (r.chance(0.2)) s['limits'] = this.bad(3)
      ? r.pick<unknown>([{ maxBodyBytes: -1 }, { maxUrlBytes: 63 }, { maxHeaderCount: 0 }, { maxHeaderBytes: 1023 }, { maxBodyBytes: 1_099_511_627_777 }])
      : { maxBodyBytes: r.pick([0, 1024, 10_485_760]), maxUrlBytes: r.pick([64, 8192, 1_048_576]), maxHeaderBytes: r.pick([1024, 32768]), maxHeaderCount: r.pick([1, 20, 100, 1000]) };
    if (r.chance(0.15)) s['forwarded'] = { xForwardedFor: r.chance(0.5), xForwardedProtoHost: r.chance(0.5), forwarded: r.chance(0.5) };
    if (r.chance(0.15)) {
      // Also names of headers the gateway writes itself (they validate).
      s['requestIdHeader'] = this.bad() ? 'bad name' : r.chance(0.8)
        ? r.pick(['x-request-id', 'X-Trace-Id', 'x-correlation-id', 'request-id'])
        : r.pick(['host', 'content-length', 'transfer-encoding', 'expect', 'x-forwarded-for', 'connection', 'x_request_id']);
    }
    if (r.chance(0.15)) s['pathForwarding'] = this.bad() ? 'raw' : r.pick(['normalized', 'original']);
    if (r.chance(0.1)) s['trustedProxies'] = this.bad(0.5) ? ['10.0.0.0/33'] : r.sample(['10.0.0.0/8', '127.0.0.1', '::1', 'fd00::/8'], r.pick([1, 2]));
    if (r.chance(0.2)) s['headers'] = this.headerPolicy();
    if (r.chance(0.1)) s['drainTimeoutMs'] = this.bad() ? 3_600_001 : r.pick([0, 100, 30000]);
    // "bun" documents keep extension methods (PURGE...) valid; property B starts them on Node without backend.
    if (r.chance(0.25)) s['backend'] = this.bad() ? 'nginx' : r.pick(['auto', 'uws', 'bun', 'bun', 'bun']);
    this.extensionsOk = s['backend'] === 'bun';
    if (this.bad()) s[r.pick(['threads', 'bind', 'maxBodyBytes', 'listen'])] = 1;
    return s;
  }

  admin(serverPort: unknown): Obj {
    const r = this.rng;
    const a: Obj = { enabled: r.chance(0.5), host: '127.0.0.1' };
    if (r.chance(0.6)) a['port'] = r.pick([0, 9901, 8080, 65535]);
    // Same port as server.port is refused: clean documents rarely do it.
    if (a['port'] === serverPort && serverPort !== 0 && !this.bad(5) && !this.rng.chance(0.1)) a['port'] = 0;
    else if (a['port'] === undefined && serverPort === 9901 && !this.rng.chance(0.3)) a['port'] = 9902;
    if (r.chance(0.1)) a['auditLog'] = this.bad() ? '' : '.turnpike/property-audit.log';
    if (this.bad()) a['bind'] = '0.0.0.0';
    return a;
  }

  /** Names under `rateLimits` (set before the routes are generated). */
  policyNames: string[] = [];

  /** A rate limit or quota: mostly valid, sometimes one of the refusals validation must make. */
  rateLimitPolicy(): unknown {
    const r = this.rng;
    if (this.bad(0.5)) {
      return r.pick<unknown>([
        { rate: 0, per: '1s' }, { rate: 1, per: '1y' }, { rate: 1, per: '2d' }, { by: 'header:', rate: 1, per: '1s' },
        { quota: 5 }, { rate: 1, per: '1s', burst: 2, algorithm: 'fixed_window' }, { rate: 1 }, { rate: 1, per: '1s', scope: 'cluster' },
        { quota: 1, period: 'day', timeZone: 'Mars/Base' }, { rate: 1, per: '1s', mode: 'strict' }, 'x', 42, { by: 'query:', rate: 1, per: '1s' },
      ]);
    }
    if (r.chance(0.2)) {
      const q: Obj = { by: r.pick(['ip', 'global', 'header:x-tenant']), quota: r.pick([1, 1000, 1_000_000_000_000]), period: r.pick(['hour', 'day', 'week', 'month']) };
      if (r.chance(0.5)) q['timeZone'] = r.pick(['UTC', 'Europe/Paris', 'Asia/Kolkata', 'America/New_York']);
      return q;
    }
    const p: Obj = {
      by: r.pick(['ip', 'global', 'route', 'header:x-tenant', 'header:X-Api-Key', 'query:api_key']),
      rate: r.pick([1, 10, 1000, 1_000_000_000]),
      per: r.pick<unknown>(['250ms', '1s', '1m', '1h', '1d', 1, 86_400_000]),
    };
    // At most a billion per second (more is refused as a typo: a clean document keeps under it).
    if (p['rate'] === 1_000_000_000 && (p['per'] === 1 || p['per'] === '250ms')) p['per'] = '1s';
    const alg = r.pick([undefined, 'token_bucket', 'gcra', 'fixed_window', 'sliding_window']);
    if (alg !== undefined) p['algorithm'] = alg;
    if ((alg === undefined || alg === 'token_bucket' || alg === 'gcra') && r.chance(0.3)) p['burst'] = r.pick([1, 5, 1_000_000_000]);
    if (r.chance(0.2)) p['headers'] = r.pick(['ietf', 'legacy', 'both', 'none']);
    if (r.chance(0.1)) p['onStoreError'] = r.pick(['allow_local', 'deny']);
    return p;
  }

  document(): Obj {
    const r = this.rng;
    const doc: Obj = {};
    if (r.chance(0.2)) {
      const named: Obj = {};
      for (const name of r.sample(['standard', 'burst', 'tenant.daily', 'api:v1'], r.pick([1, 2, 3]))) {
        const n = this.bad(0.5) ? r.pick(['bad name', '-x']) : name;
        named[n] = this.rateLimitPolicy();
        this.policyNames.push(n);
      }
      doc['rateLimits'] = named;
    }
    if (r.chance(0.05)) doc['rateLimitTable'] = { capacity: this.bad() ? 10 : r.pick([1024, 5000, 262_144]) };
    if (r.chance(0.05)) doc['$schema'] = './turnpike.schema.json';
    const server = this.server();
    doc['server'] = server;
    doc['admin'] = this.admin(server['port']);
    if (r.chance(0.1)) doc['metrics'] = { enabled: r.chance(0.5) };
    const upstreams: Obj = {};
    for (const name of r.sample(UPSTREAM_NAMES, r.pick([1, 1, 2, 2, 3, 4]))) {
      const n = this.bad(2) ? r.pick(BAD_UPSTREAM_NAMES) : name;
      upstreams[n] = this.upstream();
      this.upstreamNames.push(n);
    }
    doc['upstreams'] = upstreams;
    const max = this.opts.maxRoutes ?? 400;
    const x = r.next();
    const n = Math.min(max, x < 0.55 ? r.int(1, 8) : x < 0.85 ? r.int(9, 40) : x < 0.96 ? r.int(41, 120) : r.int(150, 400));
    for (let i = 0; i < n; i++) {
      const fromFamily = this.routes.length > 0 && r.chance(n > 100 ? 0.15 : 0.35);
      const route = fromFamily ? this.variant(r.pick(this.routes), i) : this.freshRoute(i);
      this.remember(route);
      this.routes.push(route);
    }
    doc['routes'] = this.routes;
    if (this.bad()) doc[r.pick(['redis', 'route', 'upstream', 'listeners'])] = {};
    return doc;
  }
}

/** Whether two routes' method lists share a method (absent or empty = every method). */
function methodsOverlap(a: unknown, b: unknown): boolean {
  if (!Array.isArray(a) || !Array.isArray(b) || a.length === 0 || b.length === 0) return true;
  const set = new Set(a.map((m) => String(m).toUpperCase()));
  return b.some((m) => set.has(String(m).toUpperCase()));
}

// ---------------------------------------------------------------------------
// Mutations of whole documents

type Seg = string | number;

/** Every node path in a JSON-like value (the root excluded). */
export function nodePaths(v: unknown, at: Seg[] = [], out: Seg[][] = []): Seg[][] {
  if (Array.isArray(v)) {
    v.forEach((x, i) => { out.push([...at, i]); nodePaths(x, [...at, i], out); });
  } else if (v !== null && typeof v === 'object') {
    for (const k of Object.keys(v)) { out.push([...at, k]); nodePaths((v as Obj)[k], [...at, k], out); }
  }
  return out;
}

function parentOf(doc: unknown, path: readonly Seg[]): { parent: unknown; key: Seg } {
  let cur: unknown = doc;
  for (const s of path.slice(0, -1)) cur = (cur as Record<string | number, unknown>)[s];
  return { parent: cur, key: path[path.length - 1]! };
}

function setAt(doc: unknown, path: readonly Seg[], value: unknown): void {
  const { parent, key } = parentOf(doc, path);
  Object.defineProperty(parent, key, { value, enumerable: true, writable: true, configurable: true });
}

function deleteAt(doc: unknown, path: readonly Seg[]): void {
  const { parent, key } = parentOf(doc, path);
  if (Array.isArray(parent)) parent.splice(key as number, 1);
  else delete (parent as Obj)[key as string];
}

function typeOf(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v;
}

const WRONG_TYPED: unknown[] = [null, 0, -1, 1.5, '', 'x', true, false, [], {}, [1], { a: 1 }, '/'];

function mutate(rng: Rng, doc: unknown, opts: GenOptions): unknown {
  if (rng.chance(0.02)) return rng.pick<unknown>([null, [], 'routes: []', 42, {}, [doc]]);
  const paths = nodePaths(doc);
  if (paths.length === 0) return doc;
  const path = rng.pick(paths);
  const { parent } = parentOf(doc, path);
  const current = (parent as Record<string | number, unknown>)[path[path.length - 1]!];
  switch (rng.int(0, 6)) {
    case 0: // drop a key (or an array item)
      deleteAt(doc, path);
      break;
    case 1: { // wrong type
      const choices = WRONG_TYPED.filter((w) => typeOf(w) !== typeOf(current));
      setAt(doc, path, structuredClone(rng.pick(choices)));
      break;
    }
    case 2: { // bad value of the same type
      if (typeof current === 'number') {
        const nums = [-1, 0, 1e20, 2 ** 53, 0.5, 65536, -0, 1_099_511_627_777];
        if (opts.jsonOnly !== true) nums.push(Number.NaN, Number.POSITIVE_INFINITY);
        setAt(doc, path, rng.pick(nums));
      } else if (typeof current === 'string') {
        setAt(doc, path, rng.pick(['', ' ', 'a\nb', '\u0000', 'é', 'x'.repeat(3000), '/', '*', current.toUpperCase(), current + ' ', '__proto__']));
      } else if (typeof current === 'boolean') {
        setAt(doc, path, rng.pick(['true', 1, null]));
      } else if (Array.isArray(current)) {
        if (current.length > 0) current.push(structuredClone(current[0])); // a repeated item
        else current.push(rng.pick(['x', 1, null]));
      } else if (current !== null && typeof current === 'object') {
        for (const k of Object.keys(current)) delete (current as Obj)[k];
      }
      break;
    }
    case 3: { // unknown key in an object
      const target = current !== null && typeof current === 'object' && !Array.isArray(current) ? current : parent;
      if (target !== null && typeof target === 'object' && !Array.isArray(target)) {
        (target as Obj)[rng.pick(['extra', 'redis', 'url', 'Path', 'method', 'stripPrefix', 'timeout', 'weight', 'hosts'])] = rng.pick<unknown>(['x', 1, {}, ['GET']]);
      }
      break;
    }
    case 4: { // duplicate a route, with or without a new id
      const routes = (doc as Obj)['routes'];
      if (Array.isArray(routes) && routes.length > 0) {
        const copy = structuredClone(rng.pick(routes)) as unknown;
        if (rng.chance(0.6) && copy !== null && typeof copy === 'object' && !Array.isArray(copy)) (copy as Obj)['id'] = `dup-${rng.int(0, 999)}`;
        routes.splice(rng.int(0, routes.length), 0, copy);
      }
      break;
    }
    case 5: { // a route pointing at an unknown upstream, or an upstream renamed away
      const routes = (doc as Obj)['routes'];
      if (Array.isArray(routes) && routes.length > 0) {
        const rt = rng.pick(routes);
        if (rt !== null && typeof rt === 'object' && !Array.isArray(rt)) (rt as Obj)['upstream'] = rng.pick(['nope', 'Users', 'constructor', 'hasOwnProperty']);
      }
      break;
    }
    case 6: { // a string key replaced by a near miss
      if (typeof path[path.length - 1] === 'string' && parent !== null && typeof parent === 'object' && !Array.isArray(parent)) {
        const key = path[path.length - 1] as string;
        deleteAt(doc, path);
        (parent as Obj)[rng.pick([key.toUpperCase(), key + 's', key.slice(0, -1) || 'x', `${key}_`])] = current;
      }
      break;
    }
  }
  return doc;
}

/**
 * One document from `rng`. About half come out valid; the rest carry one or
 * more problems (schema, semantic, router compile) somewhere.
 */
export function generateDocument(rng: Rng, opts: GenOptions = {}): unknown {
  const g = new DocGen(rng, opts);
  let doc: unknown = g.document();
  const mutations = g.dirty ? rng.pick([0, 0, 1, 1, 2, 3]) : rng.chance(0.12) ? 1 : 0;
  for (let i = 0; i < mutations; i++) doc = mutate(rng, doc, opts);
  return doc;
}

// ---------------------------------------------------------------------------
// A request each route matches

export interface ExampleRequest {
  method: string;
  /** Normalised Host (lowercase, no port). */
  host: string;
  /** Normalised path (what the router sees), or null if the pattern cannot give one. */
  path: string | null;
  /** Flat [lowercase name, value, ...]. */
  headers: string[];
  /** Raw query string without "?". */
  query: string;
  /** True when every part of the request is known to satisfy the route (a regex param without a sample makes it false). */
  exact: boolean;
}

/** A segment matching `^(?:src)$`, from a fixed list of candidates; null when none does. */
export function regexSample(src: string): string | null {
  const known = REGEXES.find(([s]) => s === src);
  if (known !== undefined && known[1] !== null) return known[1];
  let re: RegExp;
  try {
    re = new RegExp(`^(?:${src})$`);
  } catch {
    return null;
  }
  for (const c of ['1', '42', '123', 'a', 'b', 'ab', 'abc', 'aa', 'xx', 'me', 'v1', 'x1', 'w1', 'A', 'x', 'q', 'zz', 'deadbeef', 'a-b', 'a_b', '~', '0']) {
    if (re.test(c)) return c;
  }
  return null;
}

/** Splits a pattern into its segments; `(...)` of a regex param may hold "/". */
export function patternSegments(pattern: string): string[] {
  const segs: string[] = [];
  let cur = '';
  let depth = 0;
  let inClass = false;
  for (let i = 1; i < pattern.length; i++) {
    const ch = pattern[i]!;
    if (depth > 0) {
      if (ch === '\\') { cur += ch + (pattern[i + 1] ?? ''); i++; continue; }
      if (inClass) { if (ch === ']') inClass = false; cur += ch; continue; }
      if (ch === '[') inClass = true;
      else if (ch === '(') depth++;
      else if (ch === ')') depth--;
      cur += ch;
      continue;
    }
    if (ch === '(' && cur.startsWith(':')) { depth = 1; cur += ch; continue; }
    if (ch === '/') { segs.push(cur); cur = ''; continue; }
    cur += ch;
  }
  segs.push(cur);
  return segs;
}

export interface RouteLike {
  host: string;
  path: string;
  methods: readonly string[];
  match: { headers: ReadonlyArray<readonly [string, string]>; query: ReadonlyArray<readonly [string, string]> };
}

const WILDCARD_SAMPLES = ['', 'x', 'x/y', 'a.css'];

/** A concrete request the route matches: its host, a path built from its pattern, its method and predicates. */
export function exampleRequest(route: RouteLike, rng: Rng, allowedMethods?: readonly string[]): ExampleRequest {
  let exact = true;
  let k = 0;
  const segs = patternSegments(route.path).map((seg, i, all) => {
    if (seg.startsWith(':')) {
      const m = /^:([A-Za-z_][A-Za-z0-9_]*)(?:\((.*)\))?$/s.exec(seg);
      if (m !== null && m[2] !== undefined) {
        const s = regexSample(m[2]);
        if (s === null) exact = false;
        return s ?? 'v';
      }
      return `v${k++}`;
    }
    if (seg === '*' && i === all.length - 1) return rng.pick(WILDCARD_SAMPLES);
    return seg;
  });
  const path = normalizePath('/' + segs.join('/'));
  const h = route.host;
  const host = h === '*' ? rng.pick(['any.test', 'api.example.com', '127.0.0.1', '']) : h.startsWith('*.') ? `${rng.pick(['h', 'a.b'])}${h.slice(1)}` : h;
  let methods = route.methods.length === 0 ? ['GET', 'POST', 'DELETE', 'PATCH'] : [...route.methods];
  if (route.methods.includes('GET')) methods.push('HEAD');
  if (allowedMethods !== undefined) {
    const ok = methods.filter((m) => allowedMethods.includes(m));
    if (ok.length === 0) exact = false;
    methods = ok.length > 0 ? ok : ['GET'];
  }
  const headers: string[] = [];
  for (const [n, v] of route.match.headers) headers.push(n, v);
  const query = route.match.query.map(([n, v]) => `${encodeURIComponent(n)}=${encodeURIComponent(v)}`).join('&');
  return { method: rng.pick(methods), host, path, headers, query, exact };
}

// ---------------------------------------------------------------------------
// Shrinking a failing document

/**
 * Smaller variants of `doc`, most promising first: chunks of routes (halves,
 * quarters... single routes), then every key or array item deleted (outer
 * ones first), then strings shortened (a path to "/" or its first segment,
 * halves, one character less).
 */
export function* shrinkCandidates(doc: unknown): Generator<unknown> {
  const routes = doc !== null && typeof doc === 'object' && !Array.isArray(doc) && Array.isArray((doc as Obj)['routes']) ? (doc as Obj)['routes'] as unknown[] : [];
  for (let chunk = Math.floor(routes.length / 2); chunk >= 1; chunk = Math.floor(chunk / 2)) {
    for (let i = 0; i < routes.length; i += chunk) {
      const c = structuredClone(doc) as Obj;
      (c['routes'] as unknown[]).splice(i, chunk);
      yield c;
    }
  }
  for (const p of nodePaths(doc).sort((a, b) => a.length - b.length)) {
    const c = structuredClone(doc);
    deleteAt(c, p);
    yield c;
  }
  for (const p of nodePaths(doc)) {
    const { parent, key } = parentOf(doc, p);
    const cur = (parent as Record<string | number, unknown>)[key];
    if (typeof cur !== 'string' || cur.length <= 1) continue;
    const simplest = cur.startsWith('/') ? ['/', cur.slice(0, Math.max(1, cur.indexOf('/', 1)))] : [];
    for (const shorter of [...simplest, cur.slice(0, Math.ceil(cur.length / 2)), cur.slice(0, -1), cur.slice(1)]) {
      if (shorter === cur) continue;
      const c = structuredClone(doc);
      setAt(c, p, shorter);
      yield c;
    }
  }
}

/**
 * Greedy shrinking: takes the first candidate of shrinkCandidates that still
 * `fails` (the same way), again and again, until none does or `budgetMs` is
 * spent. Returns the smallest document found.
 */
export function shrinkDocument(doc: unknown, fails: (d: unknown) => boolean, budgetMs = 20_000): unknown {
  const end = Date.now() + budgetMs;
  let best = structuredClone(doc);
  let progress = true;
  while (progress && Date.now() < end) {
    progress = false;
    for (const c of shrinkCandidates(best)) {
      if (Date.now() > end) break;
      let f = false;
      try { f = fails(c); } catch { f = false; }
      if (f) { best = c; progress = true; break; }
    }
  }
  return best;
}

/** shrinkDocument for a check that is asynchronous (a real gateway). */
export async function shrinkDocumentAsync(doc: unknown, fails: (d: unknown) => Promise<boolean>, budgetMs = 20_000): Promise<unknown> {
  const end = Date.now() + budgetMs;
  let best = structuredClone(doc);
  let progress = true;
  while (progress && Date.now() < end) {
    progress = false;
    for (const c of shrinkCandidates(best)) {
      if (Date.now() > end) break;
      let f = false;
      try { f = await fails(c); } catch { f = false; }
      if (f) { best = c; progress = true; break; }
    }
  }
  return best;
}
