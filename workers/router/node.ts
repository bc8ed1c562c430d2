/**
 * The route tree shared by both matchers (codegen.ts, interpret.ts).
 *
 * A radix tree over the characters of the path, with parameter nodes
 * hanging off nodes whose label ends in `/` (parameters are whole
 * segments). At each node the search tries, in this order:
 *   1. the end of the path (routes stored on the node),
 *   2. the one static child whose label starts with the next character,
 *   3. regex parameter children (in the order they were first configured),
 *   4. the plain parameter child,
 *   5. the wildcard child,
 * and backtracks when a branch yields nothing. Depth-first in this order is
 * exactly "static > regex param > param > wildcard at the first segment
 * where two routes differ".
 */
import type { MatchResult } from './types.js';
import { MATCH_FOUND, MATCH_METHOD_NOT_ALLOWED } from './types.js';
import type { Predicate } from './predicates.js';
import type { PatternToken } from './pattern.js';
import { SEG_PARAM, SEG_REGEX, SEG_STATIC, SEG_WILDCARD } from './pattern.js';

const EMPTY: readonly string[] = Object.freeze([]);
export { EMPTY as EMPTY_STRINGS };

/**
 * A compiled route, and the result the router returns when it matches: one
 * object per route (a 10k-route table keeps 10k of them, so route and result
 * are not two objects), and the same class for the 405 answer, so callers
 * see one hidden class. Params are lazy: a match only records the path and
 * the parameter boundaries; the strings are sliced the first time `params`
 * is read (most routes never read them).
 */
export class RouteRec<T = unknown> implements MatchResult<T> {
  // `declare`: fields set in the constructor only. Emitted class fields would
  // define every property once more per object (10k routes, 20k nodes).
  declare kind: MatchResult<T>['kind'];
  declare data: T | null;
  declare paramNames: readonly string[];
  /** For 405: the Allow header value. */
  declare allow: string;
  /** Path of the last match (only meaningful when the route has params). */
  declare path: string;
  /**
   * [start0, end0, start1, end1, ...] into `path`. Allocated at the first
   * match (`slots()`): a 10k-route table builds faster and smaller when
   * routes that are never hit have none.
   */
  declare offsets: number[] | null;
  /** Params built from path + offsets, null until first read after a match. */
  declare cache: readonly string[] | null;
  /** Position in the config: the last tie-breaker (the route's id is `routes[order].id`). */
  declare readonly order: number;
  /** Methods accepted (configured + HEAD when GET is configured; ANY_MASK for any). */
  declare readonly accept: number;
  /** Methods configured, for the Allow header (ANY_MASK for any). */
  declare readonly allowMask: number;
  /** Lists HEAD itself or no methods at all: preferred over GET-implied HEAD. */
  declare readonly explicitHead: boolean;
  declare readonly pred: Predicate | null;
  /** Number of configured predicates (headers + query): more first. */
  declare readonly predCount: number;
  /** The next route ending on the same node (best first), see Node.routes. */
  declare next: RouteRec<unknown> | null;

  constructor(
    kind: MatchResult<T>['kind'], order: number, accept: number, allowMask: number, explicitHead: boolean,
    pred: Predicate | null, predCount: number, paramNames: readonly string[], data: T | null,
  ) {
    this.kind = kind;
    this.data = data;
    this.paramNames = paramNames;
    this.allow = '';
    this.path = '';
    this.offsets = null;
    this.cache = EMPTY;
    this.order = order;
    this.accept = accept;
    this.allowMask = allowMask;
    this.explicitHead = explicitHead;
    this.pred = pred;
    this.predCount = predCount;
    this.next = null;
  }

  static create<T>(
    order: number, accept: number, allow: number, explicitHead: boolean,
    pred: Predicate | null, paramNames: readonly string[], predCount: number, data: T,
  ): RouteRec<T> {
    return new RouteRec<T>(MATCH_FOUND, order, accept, allow, explicitHead, pred, predCount, paramNames, data);
  }

  /** The router's 405 answer (same class as every route, so one hidden class for callers). */
  static notAllowed<T>(): RouteRec<T> {
    return new RouteRec<T>(MATCH_METHOD_NOT_ALLOWED, -1, 0, 0, false, null, 0, EMPTY, null);
  }

  /** The offsets array, created on first use with exact capacity (push would reserve 16 slots). */
  slots(): number[] {
    let o = this.offsets;
    if (o === null) {
      o = new Array<number>(this.paramNames.length * 2);
      for (let i = 0; i < o.length; i++) o[i] = 0;
      this.offsets = o;
    }
    return o;
  }

  get params(): readonly string[] {
    let p = this.cache;
    if (p === null) {
      const o = this.offsets!;
      const n = o.length >> 1;
      const list = new Array<string>(n);
      for (let i = 0; i < n; i++) list[i] = this.path.slice(o[2 * i]!, o[2 * i + 1]!);
      this.cache = p = list;
    }
    return p;
  }
}

/** The result object type: routes are their own results. */
export type MatchResultImpl<T> = RouteRec<T>;

/** A node's routes as an array, best first (code generation and tests; the interpreter walks `next`). */
export function routeList(first: RouteRec<unknown> | null): RouteRec<unknown>[] {
  const list: RouteRec<unknown>[] = [];
  for (let r = first; r !== null; r = r.next) list.push(r);
  return list;
}

/**
 * The rarely used parts of a node, kept apart so the common node stays
 * small (a 10k-route table has ~23k nodes).
 */
export class NodeExtra {
  /** Regex nodes: the segment regex (anchored) and its source. */
  regex: RegExp | null = null;
  regexSrc = '';
  /** Regex parameter children, in the order first configured. */
  rx: Node[] | null = null;
  wild: Node | null = null;
  /** The node's routes in HEAD order (explicit HEAD first); null when identical to `routes`. */
  headRoutes: RouteRec<unknown>[] | null = null;
}

/** Nodes created so far (all trees): compile counts a tree's nodes by difference instead of walking it. */
let nodesCreated = 0;
export function nodeCount(): number {
  return nodesCreated;
}

export class Node {
  // `declare` + constructor assignments, as in RouteRec.
  /** Static edge label ('' for the root and parameter/wildcard nodes). */
  declare prefix: string;
  /** First character of each static child's label, in `kids` order. */
  declare codes: string;
  declare kids: Node[] | null;
  declare param: Node | null;
  /**
   * The best route ending here; the others follow through `next`, best
   * first (more predicates, then config order). A list through the routes
   * themselves: no array per node.
   */
  declare routes: RouteRec<unknown> | null;
  declare x: NodeExtra | null;

  constructor(prefix: string) {
    this.prefix = prefix;
    this.codes = '';
    this.kids = null;
    this.param = null;
    this.routes = null;
    this.x = null;
    nodesCreated++;
  }

  get extra(): NodeExtra {
    if (this.x === null) this.x = new NodeExtra();
    return this.x;
  }
}

export function rxOf(n: Node): Node[] | null {
  return n.x === null ? null : n.x.rx;
}

export function wildOf(n: Node): Node | null {
  return n.x === null ? null : n.x.wild;
}

export function headRoutesOf(n: Node): RouteRec<unknown>[] | null {
  return n.x === null ? null : n.x.headRoutes;
}

export function regexOf(n: Node): RegExp | null {
  return n.x === null ? null : n.x.regex;
}

export function newRoot(): Node {
  return new Node('');
}

/** Insert a route's tokens; returns the terminal node (the caller adds the route). */
export function insertTokens(root: Node, tokens: readonly PatternToken[]): Node {
  let n = root;
  for (let ti = 0; ti < tokens.length; ti++) {
    const t = tokens[ti]!;
    if (t.kind === SEG_STATIC) n = insertStatic(n, t.text, 0, t.text.length);
    else if (t.kind === SEG_PARAM) n = n.param ?? (n.param = new Node(''));
    else n = dynamicChild(n, t);
  }
  return n;
}

/**
 * insertTokens for a pattern isSimplePattern accepted, straight from the
 * pattern (no tokens): the static runs between `/:name` parameters and an
 * optional trailing `/*`, exactly the tokens parsePattern would give.
 */
export function insertSimple(root: Node, path: string): Node {
  const len = path.length;
  let n = root;
  let from = 0; // start of the pending static text
  for (let k = path.indexOf('/:'); k !== -1; k = path.indexOf('/:', from)) {
    n = insertStatic(n, path, from, k + 1);
    n = n.param ?? (n.param = new Node(''));
    from = path.indexOf('/', k + 2);
    if (from === -1) from = len;
  }
  if (path.charCodeAt(len - 1) === 42 /* * */) {
    n = insertStatic(n, path, from, len - 1);
    const x = n.extra;
    return x.wild ?? (x.wild = new Node(''));
  }
  return from < len ? insertStatic(n, path, from, len) : n;
}

/**
 * Insert text[pos, end) below n; returns its node. Builtins (indexOf,
 * startsWith) rather than character loops: a big table is inserted before
 * the JIT has optimised this.
 */
function insertStatic(node: Node, text: string, start: number, end: number): Node {
  let n = node;
  let pos = start; // text[pos, end) is still to insert
  while (pos < end) {
    const ch = text[pos]!;
    const i = n.kids === null ? -1 : n.codes.indexOf(ch);
    if (i === -1) {
      const leaf = new Node(pos === 0 && end === text.length ? text : text.slice(pos, end));
      n.codes += ch;
      // Exact-size arrays (push would leave spare capacity in every node of a big tree).
      n.kids = n.kids === null ? [leaf] : n.kids.concat(leaf);
      return leaf;
    }
    const child = n.kids![i]!;
    const label = child.prefix;
    if (pos + label.length <= end && text.startsWith(label, pos)) {
      // The usual step: the whole label matches.
      n = child;
      pos += label.length;
    } else {
      n = n.kids![i] = splitChild(child, text, pos, end);
      pos += n.prefix.length;
    }
  }
  return n;
}

/** Split: child "abc" + text[pos, end) "abx" -> mid "ab" -> {"c" (old child)}; returns mid (the caller puts it in child's place). */
function splitChild(child: Node, text: string, pos: number, end: number): Node {
  const label = child.prefix;
  const max = Math.min(label.length, end - pos);
  let common = 1;
  while (common < max && label.charCodeAt(common) === text.charCodeAt(pos + common)) common++;
  const mid = new Node(label.slice(0, common));
  child.prefix = label.slice(common);
  mid.codes = child.prefix[0]!;
  mid.kids = [child];
  return mid;
}

/** Regex and wildcard children (rare: kept out of insertTokens). */
function dynamicChild(n: Node, t: PatternToken): Node {
  const x = n.extra;
  if (t.kind === SEG_REGEX) {
    if (x.rx === null) x.rx = [];
    let child = x.rx.find((c) => c.x!.regexSrc === t.text);
    if (child === undefined) {
      child = new Node('');
      child.extra.regex = t.regex;
      child.extra.regexSrc = t.text;
      x.rx.push(child);
    }
    return child;
  }
  if (x.wild === null) x.wild = new Node('');
  return x.wild;
}

function byPredicatesThenOrder(a: RouteRec<unknown>, b: RouteRec<unknown>): number {
  return b.predCount - a.predCount || a.order - b.order;
}

/**
 * Set a node's routes (any order): sorts them best first (more predicates,
 * then config order), links them through `next` and, when it differs, keeps
 * the HEAD order (explicit HEAD first).
 */
export function setRoutes(n: Node, list: readonly RouteRec<unknown>[]): void {
  const routes = list.slice().sort(byPredicatesThenOrder);
  for (let i = 0; i < routes.length; i++) routes[i]!.next = i + 1 < routes.length ? routes[i + 1]! : null;
  n.routes = routes.length === 0 ? null : routes[0]!;
  if (routes.length < 2) return;
  const head = routes.filter((r) => r.explicitHead).concat(routes.filter((r) => !r.explicitHead));
  if (!head.every((r, i) => r === routes[i])) n.extra.headRoutes = head;
}

/**
 * Walk a tree: node count, depth and parameter depth. compile runs it only
 * on trees small enough to generate code for; a big tree's shape is
 * counted during insertion.
 */
export function finalizeTree(root: Node): { nodes: number; maxDepth: number; maxParams: number } {
  let nodes = 0;
  let maxDepth = 0;
  let maxParams = 0;
  const stack: Node[] = [root];
  const depths: number[] = [1];
  const paramCounts: number[] = [0];
  while (stack.length > 0) {
    const n = stack.pop()!;
    const depth = depths.pop()!;
    const params = paramCounts.pop()!;
    nodes++;
    if (depth > maxDepth) maxDepth = depth;
    if (params > maxParams) maxParams = params;
    if (n.kids !== null) {
      for (const k of n.kids) {
        stack.push(k);
        depths.push(depth + 1);
        paramCounts.push(params);
      }
    }
    const rx = rxOf(n);
    const dyn = rx === null ? [] : rx.slice();
    if (n.param !== null) dyn.push(n.param);
    const wild = wildOf(n);
    if (wild !== null) dyn.push(wild);
    for (const k of dyn) {
      stack.push(k);
      depths.push(depth + 1);
      paramCounts.push(params + 1);
    }
  }
  return { nodes, maxDepth, maxParams };
}
