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
import { MATCH_FOUND } from './types.js';
import { ANY_MASK, M_GET, M_HEAD, MethodTable } from './methods.js';
import { compilePredicate, predicateKey } from './predicates.js';
import { SEG_STATIC, isSimplePattern, parsePattern, simpleParamNames } from './pattern.js';
import type { MatchResultImpl, Node } from './node.js';
import { EMPTY_STRINGS, RouteRec, finalizeTree, headRoutesOf, insertSimple, insertTokens, newRoot, nodeCount, routeList, setRoutes } from './node.js';
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
  /** Nodes in the tree, counted as they are created. */
  nodes: number;
  /** Bounds for the interpreter's stacks (a big tree is not walked): depth (every edge takes >= 1 character of static text or one parameter), most params. */
  maxDepth: number;
  maxParams: number;
}

/** A route the router cannot take; `routeId` names it (for `routes[i]` paths in config errors). */
export class RouteCompileError extends Error {
  constructor(readonly routeId: string, readonly reason: string) {
    super(`route ${JSON.stringify(routeId)}: ${reason}`);
    this.name = 'RouteCompileError';
  }
}

function fail(id: unknown, reason: string): never {
  throw new RouteCompileError(String(id), reason);
}

function checkHost(id: string, host: unknown): string {
  if (host === '*') return host;
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
  for (let i = 0; i < pairs.length; i++) {
    const p: unknown = pairs[i];
    if (!Array.isArray(p) || p.length !== 2 || typeof p[0] !== 'string' || typeof p[1] !== 'string' || p[0] === '') {
      fail(id, `match.${what} must be an array of [name, value] string pairs`);
    }
  }
}

/**
 * Reads the routes into trees (one per host and priority). Routes go into
 * their tree as they are read, so nothing per route outlives this except
 * what the router keeps (fewer survivors = less GC copying on big tables).
 * Kept as small methods: a 10k-route table is read before the JIT has
 * optimised much, and the optimiser's work on one big function would
 * compete with the build for the CPU.
 */
class TreeBuilder<T> {
  readonly methods = new MethodTable();
  /** host -> priority -> tree under construction. */
  readonly byHost = new Map<string, Map<number, TierDraft>>();
  /** Nodes holding more than one route, with their routes by predicate set (duplicate detection). */
  readonly sameNode = new Map<Node, { all: RouteRec<unknown>[]; byPreds: Map<string, RouteRec<unknown>[]> }>();
  /** Routes with the same parameter names share one frozen array. */
  readonly #names = new Map<string, readonly string[]>();
  /** Param names of the route being added (fast path). */
  readonly #scratchNames: string[] = [];
  /** The last tree used: consecutive routes usually share host and priority. */
  #lastHost = '';
  #lastPriority = 0;
  #lastTier: TierDraft | null = null;

  constructor(readonly routes: readonly RouteInput<T>[]) {}

  add(order: number): void {
    const input = this.routes[order]!;
    const id = input.id;
    if (typeof id !== 'string' || id === '') fail(id, 'id must be a non-empty string');
    const host = checkHost(id, input.host);
    const path = input.path;
    // Plain patterns (nearly all) skip the tokens: names now, insertion straight from the string.
    const simple = isSimplePattern(path) && simpleParamNames(path, this.#scratchNames);
    const parsed = simple ? null : parsePattern(path);
    if (typeof parsed === 'string') fail(id, `invalid path ${JSON.stringify(path)}: ${parsed}`);
    const priority = input.priority ?? 0;
    if (typeof priority !== 'number' || !Number.isFinite(priority)) fail(id, 'priority must be a finite number');
    const names = parsed === null ? this.#scratchNames : parsed.paramNames;
    const rec = this.record(input, order, names);
    const tier = this.tier(host, priority);
    const created = nodeCount();
    let node: Node;
    // Bound on the depth: every edge takes at least one character of static text or one parameter.
    let depth = 1;
    if (parsed === null) {
      node = insertSimple(tier.root, path);
      depth += path.length;
    } else {
      node = insertTokens(tier.root, parsed.tokens);
      const tokens = parsed.tokens;
      for (let i = 0; i < tokens.length; i++) {
        const t = tokens[i]!;
        depth += t.kind === SEG_STATIC ? t.text.length : 1;
      }
    }
    tier.nodes += nodeCount() - created;
    if (depth > tier.maxDepth) tier.maxDepth = depth;
    if (names.length > tier.maxParams) tier.maxParams = names.length;
    if (node.routes === null) node.routes = rec;
    else this.share(node, rec);
    const staticPath = parsed === null ? (names.length === 0 ? path : null) : parsed.staticPath;
    if (staticPath !== null) tier.staticNodes.set(staticPath, node);
  }

  /** Methods, predicates and names of one route: its record. */
  record(input: RouteInput<T>, order: number, names: readonly string[]): RouteRec<unknown> {
    const id = input.id;
    const ms = input.methods;
    if (!Array.isArray(ms)) fail(id, 'methods must be an array');
    let accept = ANY_MASK;
    let allow = ANY_MASK;
    let explicitHead = true;
    if (ms.length !== 0) {
      allow = 0;
      explicitHead = false;
      for (let i = 0; i < ms.length; i++) {
        const idx = this.methods.register(ms[i]!);
        if (typeof idx === 'string') fail(id, idx);
        allow |= 1 << idx;
        if (idx === M_HEAD) explicitHead = true;
      }
      accept = (allow & (1 << M_GET)) !== 0 ? allow | (1 << M_HEAD) : allow;
    }
    const match = input.match ?? NO_PREDICATES;
    checkPairs(id, 'headers', match.headers);
    checkPairs(id, 'query', match.query);
    const predCount = match.headers.length + match.query.length;
    const pred = predCount === 0 ? null : compilePredicate(match);
    let paramNames: readonly string[] = EMPTY_STRINGS;
    if (names.length !== 0) {
      const key = names.length === 1 ? names[0]! : names.join('/');
      paramNames = this.#names.get(key) ?? EMPTY_STRINGS;
      if (paramNames === EMPTY_STRINGS) this.#names.set(key, (paramNames = Object.freeze(names.slice())));
    }
    return new RouteRec<unknown>(MATCH_FOUND, order, accept, allow, explicitHead, pred, predCount, paramNames, input.data);
  }

  tier(host: string, priority: number): TierDraft {
    const last = this.#lastTier;
    if (last !== null && host === this.#lastHost && priority === this.#lastPriority) return last;
    let tiers = this.byHost.get(host);
    if (tiers === undefined) this.byHost.set(host, (tiers = new Map()));
    let tier = tiers.get(priority);
    if (tier === undefined) {
      tiers.set(priority, (tier = { priority, root: newRoot(), staticNodes: new Map(), nodes: 1, maxDepth: 1, maxParams: 0 }));
    }
    this.#lastHost = host;
    this.#lastPriority = priority;
    this.#lastTier = tier;
    return tier;
  }

  /**
   * A second (third...) route on one node: same tree + same node = same
   * host, priority and path shape. Refuses a duplicate (same predicates,
   * overlapping methods); the node's list is sorted at the end.
   */
  share(node: Node, rec: RouteRec<unknown>): void {
    let shared = this.sameNode.get(node);
    if (shared === undefined) {
      const first = node.routes!;
      this.sameNode.set(node, (shared = { all: [first], byPreds: new Map([[this.predKey(first), [first]]]) }));
    }
    const key = this.predKey(rec);
    const same = shared.byPreds.get(key);
    if (same === undefined) shared.byPreds.set(key, [rec]);
    else {
      for (const o of same) {
        const overlap = o.allowMask & rec.allowMask;
        if (overlap !== 0) {
          const both = rec.allowMask === ANY_MASK || o.allowMask === ANY_MASK ? 'any method' : this.methods.allowString(overlap);
          fail(this.routes[rec.order]!.id, `duplicate of route ${JSON.stringify(this.routes[o.order]!.id)} (same host, path, priority and predicates; both take ${both})`);
        }
      }
      same.push(rec);
    }
    shared.all.push(rec);
  }

  predKey(r: RouteRec<unknown>): string {
    return r.predCount === 0 ? '' : predicateKey(this.routes[r.order]!.match);
  }
}

/** Compile routes into a Router. Throws an Error naming the route for any invalid or duplicate route. */
export function compileRouter<T>(routes: readonly RouteInput<T>[], options: CompileOptions = {}): Router<T> {
  const mode = options.codegen ?? 'auto';
  const tuning: CodegenTuning = { ...DEFAULT_TUNING, ...options.tuning };
  const builder = new TreeBuilder<T>(routes);
  for (let order = 0; order < routes.length; order++) builder.add(order);
  for (const [node, shared] of builder.sameNode) setRoutes(node, shared.all);
  const { methods, byHost } = builder;

  const state = new SearchState();
  const headBit = 1 << M_HEAD;
  const tableSize = methods.tableSize;
  const buildTier = ({ priority, root, staticNodes, nodes, maxDepth, maxParams }: TierDraft): Tier => {
    // Walk the tree only when it may become code: a big tree is interpreted
    // with the bounds counted during insertion.
    const shape = mode === 'never' || (mode === 'auto' && nodes > CODEGEN_MAX_NODES) ? null : finalizeTree(root);
    const staticGet = new Map<string, MatchResultImpl<unknown>>();
    const staticAll = new Map<string, StaticTable>();
    const staticFilter = new Uint8Array(4096);
    for (const [path, node] of staticNodes) {
      staticFilter[staticKey(path)] = 1;
      const table = new Array<MatchResultImpl<unknown> | null>(tableSize).fill(null);
      for (let mi = 0; mi < tableSize; mi++) {
        const mb = 1 << mi;
        const head = headRoutesOf(node);
        const ordered = mi === M_HEAD && head !== null ? head : routeList(node.routes);
        const first = ordered.find((r) => (r.accept & mb) !== 0);
        table[mi] = first !== undefined && first.pred === null ? first : null;
      }
      staticAll.set(path, table);
      if (table[M_GET] !== null) staticGet.set(path, table[M_GET]!);
    }
    let match: Matcher | null = null;
    const wantCodegen = shape !== null && (mode === 'always' || shape.maxDepth <= CODEGEN_MAX_DEPTH);
    if (wantCodegen) {
      try {
        const generated = generateMatcher(root, state, headBit, tuning, mode === 'auto');
        if (generated !== null) match = generated.match;
      } catch (err) {
        // Code generation disabled (--disallow-code-generation-from-strings) or refused: interpret.
        if (mode === 'always') throw err;
      }
    }
    if (match === null) {
      match = shape !== null
        ? makeInterpreter(root, shape.maxDepth, shape.maxParams, state, headBit)
        : makeInterpreter(root, Math.min(maxDepth, nodes), maxParams, state, headBit);
    }
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
    this.#notAllowed = RouteRec.notAllowed<T>();
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
