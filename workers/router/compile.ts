/**
 * compileRouter: routes in, one immutable lookup structure out (built per
 * config version, swapped as a whole).
 *
 * Layout:
 *   host buckets   exact Map, wildcard suffixes (longest first), `*`
 *   -> tiers       one per distinct priority in the bucket, highest first
 *   -> static maps path -> result per method (GET map first): a fully
 *                  static route is answered by one Map.get
 *   -> tree        radix tree (node.ts) compiled to a function (codegen.ts)
 *                  or searched by interpret.ts when it is very large
 *
 * Which route wins (the reference implementation in
 * test/unit/router/reference-router.ts states the same thing as a sort):
 *   1. higher `priority`;
 *   2. host: exact > `*.suffix` (longer suffix first) > `*`;
 *   3. path: at the first segment where two routes differ, static > regex
 *      param > param > wildcard (regex params among themselves: config order);
 *   4. for HEAD: a route listing HEAD (or no methods) before one that gets
 *      HEAD from GET;
 *   5. more predicates (headers + query) first;
 *   6. config order.
 * A route matches when host, path, method and predicates all match. When
 * none does but some route matched everything except the method, the
 * answer is 405 with `allow` = the sorted union of those routes' configured
 * methods.
 */
import type { MatchResult, RouteInput, Router } from './types.js';
import { MATCH_METHOD_NOT_ALLOWED } from './types.js';
import { ANY_MASK, M_GET, M_HEAD, MethodTable } from './methods.js';
import { compilePredicate, predicateKey } from './predicates.js';
import { parsePattern } from './pattern.js';
import type { Node } from './node.js';
import { MatchResultImpl, RouteRec, finalizeTree, headRoutesOf, insertTokens, newRoot } from './node.js';
import type { Matcher } from './matcher.js';
import { SearchState } from './matcher.js';
import type { CodegenTuning } from './codegen.js';
import { DEFAULT_TUNING, generateMatcher } from './codegen.js';
import { makeInterpreter } from './interpret.js';

export { validateRoutePattern } from './pattern.js';
export { normalizeHost, normalizePath } from './normalize.js';

export interface CompileOptions {
  /**
   * 'auto' (default): generate code unless a tree is too large to be worth
   * it; 'always' / 'never' force one matcher (tests run both).
   */
  codegen?: 'auto' | 'always' | 'never';
  /** Code generator knobs (benchmarks and tests only). */
  tuning?: Partial<CodegenTuning>;
}

/** Trees above this many nodes are interpreted in 'auto' mode (compile time and code size). */
const CODEGEN_MAX_NODES = 4000;
/** Generated code nests a block per tree level. */
const CODEGEN_MAX_DEPTH = 120;
/** Host buckets with more wildcard suffixes than this are looked up label by label in a Map. */
const WILDCARD_LINEAR_MAX = 8;

const NO_PREDICATES = Object.freeze({ headers: Object.freeze([]), query: Object.freeze([]) });

const HOST_EXACT_RE = /^(?:\[[0-9a-f:.]+\]|[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?)$/;

type StaticTable = ReadonlyArray<MatchResultImpl<unknown> | null>;

class Tier {
  constructor(
    readonly priority: number,
    /** GET: path -> result of the first route (no predicates) taking GET. */
    readonly staticGet: Map<string, MatchResultImpl<unknown>>,
    /** Any method: path -> per method index, result or null (null = ask the tree). */
    readonly staticAll: Map<string, StaticTable>,
    /**
     * 1 at staticKey(path) of every static path: most dynamic paths skip the
     * Map probe (whose hashing of a fresh request string costs per character).
     */
    readonly staticFilter: Uint8Array,
    readonly match: Matcher,
  ) {}
}

/** (length mod 64, last char mod 64): a 4096-slot filter in front of the static maps. */
function staticKey(path: string): number {
  const len = path.length;
  return ((len & 63) << 6) | (path.charCodeAt(len - 1) & 63);
}

class Bucket {
  constructor(readonly tiers: Tier[], readonly maxPriority: number) {}
}

interface WildcardHost {
  /** `.example.com` for `*.example.com`. */
  suffix: string;
  bucket: Bucket;
}

/** A tier while routes are being inserted. */
interface TierDraft {
  priority: number;
  root: Node;
  staticNodes: Map<string, Node>;
}

function fail(id: unknown, reason: string): never {
  throw new Error(`route ${JSON.stringify(String(id))}: ${reason}`);
}

function checkHost(id: string, host: unknown): string {
  if (typeof host !== 'string' || host.length === 0) fail(id, 'host must be "*", a host name or "*.domain"');
  const h = host.toLowerCase();
  if (h === '*') return h;
  const exact = h.startsWith('*.') ? h.slice(2) : h;
  if (!HOST_EXACT_RE.test(exact) || exact.includes('..') || exact.includes('*')) {
    fail(id, `invalid host ${JSON.stringify(host)} (use "*", "api.example.com" or "*.example.com")`);
  }
  return h;
}

function checkPairs(id: string, what: string, pairs: unknown): void {
  if (!Array.isArray(pairs)) fail(id, `match.${what} must be an array of [name, value]`);
  for (const p of pairs) {
    if (!Array.isArray(p) || p.length !== 2 || typeof p[0] !== 'string' || typeof p[1] !== 'string' || p[0] === '') {
      fail(id, `match.${what} must be an array of [name, value] string pairs`);
    }
  }
}

/** Compile routes into a Router. Throws an Error naming the route for any invalid or duplicate route. */
export function compileRouter<T>(routes: readonly RouteInput<T>[], options: CompileOptions = {}): Router<T> {
  const mode = options.codegen ?? 'auto';
  // Routes with the same parameter names share one frozen array.
  const namesCache = new Map<string, readonly string[]>();
  const tuning: CodegenTuning = { ...DEFAULT_TUNING, ...options.tuning };
  const methods = new MethodTable();
  // host -> priority -> tree under construction. Routes go into their tree
  // as they are read, so nothing per route outlives this loop except what
  // the router keeps (fewer survivors = less GC copying on big tables).
  const byHost = new Map<string, Map<number, TierDraft>>();
  const sameNode = new Map<Node, Map<string, RouteRec<unknown>[]>>();

  for (let order = 0; order < routes.length; order++) {
    const input = routes[order]!;
    const id = input.id;
    if (typeof id !== 'string' || id === '') fail(id, 'id must be a non-empty string');
    const host = checkHost(id, input.host);
    const parsed = parsePattern(input.path);
    if (typeof parsed === 'string') fail(id, `invalid path ${JSON.stringify(input.path)}: ${parsed}`);
    const priority = input.priority ?? 0;
    if (typeof priority !== 'number' || !Number.isFinite(priority)) fail(id, 'priority must be a finite number');
    if (!Array.isArray(input.methods)) fail(id, 'methods must be an array');
    let accept = 0;
    let allow = 0;
    let explicitHead = false;
    for (const m of input.methods) {
      const idx = methods.register(m);
      if (typeof idx === 'string') fail(id, idx);
      allow |= 1 << idx;
      if (idx === M_HEAD) explicitHead = true;
    }
    accept = allow;
    if ((allow & (1 << M_GET)) !== 0) accept |= 1 << M_HEAD;
    if (input.methods.length === 0) {
      accept = ANY_MASK;
      allow = ANY_MASK;
      explicitHead = true;
    }
    const match = input.match ?? NO_PREDICATES;
    checkPairs(id, 'headers', match.headers);
    checkPairs(id, 'query', match.query);
    const pred = compilePredicate(match);
    const namesKey = parsed.paramNames.join('/');
    let paramNames = namesCache.get(namesKey);
    if (paramNames === undefined) namesCache.set(namesKey, (paramNames = Object.freeze(parsed.paramNames.slice())));
    const rec = RouteRec.create<T>(id, order, accept, allow, explicitHead, pred, paramNames, match, input.data);

    let tiers = byHost.get(host);
    if (tiers === undefined) byHost.set(host, (tiers = new Map()));
    let tier = tiers.get(priority);
    if (tier === undefined) tiers.set(priority, (tier = { priority, root: newRoot(), staticNodes: new Map() }));
    const node = insertTokens(tier.root, parsed.tokens);
    if (node.routes === null) {
      node.routes = [rec as RouteRec<unknown>];
    } else {
      // Same tree + same node = same host, priority and path shape. Index the
      // node's routes by predicate set (built when a node gets its second route).
      let byPreds = sameNode.get(node);
      if (byPreds === undefined) {
        sameNode.set(node, (byPreds = new Map()));
        const first = node.routes[0]!;
        byPreds.set(predicateKey(first.match), [first]);
      }
      const key = predicateKey(match);
      const same = byPreds.get(key);
      if (same === undefined) byPreds.set(key, [rec as RouteRec<unknown>]);
      else {
        for (const o of same) {
          const overlap = o.allow & rec.allow;
          if (overlap !== 0) {
            const names = rec.allow === ANY_MASK || o.allow === ANY_MASK ? 'any method' : methods.allowString(overlap);
            fail(id, `duplicate of route ${JSON.stringify(o.id)} (same host, path, priority and predicates; both take ${names})`);
          }
        }
        same.push(rec as RouteRec<unknown>);
      }
      node.routes.push(rec as RouteRec<unknown>);
    }
    if (parsed.staticPath !== null) tier.staticNodes.set(parsed.staticPath, node);
  }

  const state = new SearchState();
  const headBit = 1 << M_HEAD;
  const tableSize = methods.tableSize;
  const buildTier = ({ priority, root, staticNodes }: TierDraft): Tier => {
    const shape = finalizeTree(root);
    const staticGet = new Map<string, MatchResultImpl<unknown>>();
    const staticAll = new Map<string, StaticTable>();
    const staticFilter = new Uint8Array(4096);
    for (const [path, node] of staticNodes) {
      staticFilter[staticKey(path)] = 1;
      const table = new Array<MatchResultImpl<unknown> | null>(tableSize).fill(null);
      for (let mi = 0; mi < tableSize; mi++) {
        const mb = 1 << mi;
        const head = headRoutesOf(node);
        const ordered = mi === M_HEAD && head !== null ? head : node.routes!;
        const first = ordered.find((r) => (r.accept & mb) !== 0);
        table[mi] = first !== undefined && first.pred === null ? first.result : null;
      }
      staticAll.set(path, table);
      if (table[M_GET] !== null) staticGet.set(path, table[M_GET]!);
    }
    let match: Matcher | null = null;
    const wantCodegen = mode === 'always' ||
      (mode === 'auto' && shape.nodes <= CODEGEN_MAX_NODES && shape.maxDepth <= CODEGEN_MAX_DEPTH);
    if (wantCodegen) {
      try {
        const generated = generateMatcher(root, state, headBit, tuning, mode === 'auto');
        if (generated !== null) match = generated.match;
      } catch (err) {
        // Code generation disabled (--disallow-code-generation-from-strings) or refused: interpret.
        if (mode === 'always') throw err;
      }
    }
    if (match === null) match = makeInterpreter(root, shape.maxDepth, shape.maxParams, state, headBit);
    return new Tier(priority, staticGet, staticAll, staticFilter, match);
  };

  let any: Bucket | null = null;
  const exact = new Map<string, Bucket>();
  const wild: WildcardHost[] = [];
  for (const [host, tiersByPriority] of byHost) {
    const priorities = [...tiersByPriority.keys()].sort((a, b) => b - a);
    const tiers = priorities.map((p) => buildTier(tiersByPriority.get(p)!));
    const bucket = new Bucket(tiers, priorities[0]!);
    if (host === '*') any = bucket;
    else if (host.startsWith('*.')) wild.push({ suffix: host.slice(1), bucket });
    else exact.set(host, bucket);
  }
  wild.sort((a, b) => b.suffix.length - a.suffix.length);
  return new CompiledRouter<T>(routes.length, methods, state, any, exact, wild);
}

class CompiledRouter<T> implements Router<T> {
  readonly size: number;
  readonly #methods: MethodTable;
  readonly #state: SearchState;
  /** The only tier when every route is on host `*` with one priority: the common case gets a straight path. */
  readonly #only: Tier | null;
  readonly #any: Bucket | null;
  readonly #exact: Map<string, Bucket> | null;
  readonly #wild: WildcardHost[] | null;
  readonly #wildMap: Map<string, Bucket> | null;
  readonly #notAllowed: MatchResultImpl<T>;

  constructor(
    size: number, methods: MethodTable, state: SearchState,
    any: Bucket | null, exact: Map<string, Bucket>, wild: WildcardHost[],
  ) {
    this.size = size;
    this.#methods = methods;
    this.#state = state;
    this.#any = any;
    this.#exact = exact.size === 0 ? null : exact;
    this.#wild = wild.length === 0 || wild.length > WILDCARD_LINEAR_MAX ? null : wild;
    this.#wildMap = wild.length > WILDCARD_LINEAR_MAX ? new Map(wild.map((w) => [w.suffix, w.bucket])) : null;
    this.#only = any !== null && any.tiers.length === 1 && exact.size === 0 && wild.length === 0 ? any.tiers[0]! : null;
    this.#notAllowed = new MatchResultImpl<T>(MATCH_METHOD_NOT_ALLOWED, null, Object.freeze([]) as readonly string[]);
  }

  // This is the hot path -- change with care! Kept small so V8 inlines it
  // into the caller: static hits cost a filter probe and one Map.get.
  find(method: string, host: string, path: string, headers: readonly string[], query: string): MatchResult<T> | null {
    const only = this.#only;
    if (only === null) return this.#findByHost(method, host, path, headers, query);
    const len = path.length;
    if (only.staticFilter[((len & 63) << 6) | (path.charCodeAt(len - 1) & 63)] !== 0) {
      // 'GET' literals are interned: usually a pointer comparison.
      if (method === 'GET') {
        const r = only.staticGet.get(path);
        if (r !== undefined) return r as MatchResultImpl<T>;
      } else {
        const t = only.staticAll.get(path);
        if (t !== undefined) {
          const r = t[this.#methods.index(method)]!;
          if (r !== null) return r as MatchResultImpl<T>;
        }
      }
    }
    return this.#searchOnly(only, method, path, len, headers, query);
  }

  #searchOnly(
    only: Tier, method: string, path: string, len: number, headers: readonly string[], query: string,
  ): MatchResult<T> | null {
    const mi = method === 'GET' ? M_GET : this.#methods.index(method);
    const state = this.#state;
    state.allow = 0;
    const r = only.match(path, len, 1 << mi, headers, query);
    if (r !== null) return r as MatchResultImpl<T>;
    return state.allow === 0 ? null : this.#methodNotAllowed(state.allow);
  }

  #methodNotAllowed(mask: number): MatchResult<T> {
    const res = this.#notAllowed;
    res.allow = this.#methods.allowString(mask);
    return res;
  }

  #findByHost(method: string, host: string, path: string, headers: readonly string[], query: string): MatchResult<T> | null {
    const mi = method === 'GET' ? M_GET : this.#methods.index(method);
    const state = this.#state;
    state.allow = 0;
    state.best = null;
    state.bestPriority = 0;
    if (this.#exact !== null) {
      const b = this.#exact.get(host);
      if (b !== undefined) this.#searchBucket(b, mi, path, headers, query);
    }
    const wild = this.#wild;
    if (wild !== null) {
      for (let i = 0; i < wild.length; i++) {
        const w = wild[i]!;
        if (host.length > w.suffix.length && host.endsWith(w.suffix)) this.#searchBucket(w.bucket, mi, path, headers, query);
      }
    } else if (this.#wildMap !== null) {
      // Leftmost dot first = longest suffix first.
      for (let d = host.indexOf('.', 1); d !== -1; d = host.indexOf('.', d + 1)) {
        const b = this.#wildMap.get(host.slice(d));
        if (b !== undefined) this.#searchBucket(b, mi, path, headers, query);
      }
    }
    if (this.#any !== null) this.#searchBucket(this.#any, mi, path, headers, query);
    const best = state.best;
    if (best !== null) {
      state.best = null;
      return best as MatchResultImpl<T>;
    }
    return state.allow === 0 ? null : this.#methodNotAllowed(state.allow);
  }

  /** Search a bucket's tiers (highest priority first); keeps the best result in state. */
  #searchBucket(b: Bucket, mi: number, path: string, headers: readonly string[], query: string): void {
    const state = this.#state;
    if (state.best !== null && b.maxPriority <= state.bestPriority) return;
    const tiers = b.tiers;
    for (let i = 0; i < tiers.length; i++) {
      const t = tiers[i]!;
      if (state.best !== null && t.priority <= state.bestPriority) return;
      let r: MatchResultImpl<unknown> | null = null;
      if (t.staticFilter[staticKey(path)] === 0) {
        // not a static path of this tier
      } else if (mi === M_GET) {
        const s = t.staticGet.get(path);
        if (s !== undefined) r = s;
      } else {
        const s = t.staticAll.get(path);
        if (s !== undefined) r = s[mi]!;
      }
      if (r === null) r = t.match(path, path.length, 1 << mi, headers, query);
      if (r !== null) {
        state.best = r;
        state.bestPriority = t.priority;
        return;
      }
    }
  }
}
