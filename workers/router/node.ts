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
import { MATCH_FOUND } from './types.js';
import type { Predicate } from './predicates.js';
import type { RouteMatchPredicates } from '../../common/config/types.js';
import type { PatternToken } from './pattern.js';
import { SEG_PARAM, SEG_REGEX, SEG_STATIC, SEG_WILDCARD } from './pattern.js';

const EMPTY: readonly string[] = Object.freeze([]);
export { EMPTY as EMPTY_STRINGS };

/**
 * One class for every result the router returns (found and 405): one hidden
 * class for callers. Params are lazy: a match only records the path and the
 * parameter boundaries; the strings are sliced the first time `params` is
 * read (most routes never read them).
 */
export class MatchResultImpl<T> implements MatchResult<T> {
  kind: MatchResult<T>['kind'];
  data: T | null;
  paramNames: readonly string[];
  allow: string;
  /** Path of the last match (only meaningful when the route has params). */
  path: string;
  /**
   * [start0, end0, start1, end1, ...] into `path`. Allocated at the first
   * match (`slots()`): a 10k-route table builds faster and smaller when
   * routes that are never hit have none.
   */
  offsets: number[] | null;
  /** Params built from path + offsets, null until first read after a match. */
  cache: readonly string[] | null;

  constructor(kind: MatchResult<T>['kind'], data: T | null, paramNames: readonly string[]) {
    this.kind = kind;
    this.data = data;
    this.paramNames = paramNames;
    this.allow = '';
    this.path = '';
    this.offsets = null;
    this.cache = EMPTY;
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

/** A compiled route. `result` is returned as is (params recorded) when it matches. */
export class RouteRec<T> {
  constructor(
    readonly id: string,
    /** Position in the config: the last tie-breaker. */
    readonly order: number,
    /** Methods accepted (configured + HEAD when GET is configured; ANY_MASK for any). */
    readonly accept: number,
    /** Methods configured, for the Allow header (ANY_MASK for any). */
    readonly allow: number,
    /** Lists HEAD itself or no methods at all: preferred over GET-implied HEAD. */
    readonly explicitHead: boolean,
    readonly pred: Predicate | null,
    /** The configured predicates (ordering and duplicate detection). */
    readonly match: RouteMatchPredicates,
    readonly result: MatchResultImpl<T>,
  ) {}

  get predCount(): number {
    return this.match.headers.length + this.match.query.length;
  }

  static create<T>(
    id: string, order: number, accept: number, allow: number, explicitHead: boolean,
    pred: Predicate | null, paramNames: readonly string[], match: RouteMatchPredicates, data: T,
  ): RouteRec<T> {
    const result = new MatchResultImpl<T>(MATCH_FOUND, data, paramNames);
    return new RouteRec(id, order, accept, allow, explicitHead, pred, match, result);
  }
}

/**
 * The rarely used parts of a node, kept apart so the common node stays
 * small (a 10k-route table has ~21k nodes).
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

export class Node {
  /** Static edge label ('' for the root and parameter/wildcard nodes). */
  prefix: string;
  /** First character of each static child's label, in `kids` order. */
  codes = '';
  kids: Node[] | null = null;
  param: Node | null = null;
  /** Routes ending here, best first (more predicates, then config order). */
  routes: RouteRec<unknown>[] | null = null;
  x: NodeExtra | null = null;

  constructor(prefix: string) {
    this.prefix = prefix;
  }

  get extra(): NodeExtra {
    if (this.x === null) this.x = new NodeExtra();
    return this.x;
  }

  staticChild(code: number): Node | null {
    const codes = this.codes;
    for (let i = 0; i < codes.length; i++) if (codes.charCodeAt(i) === code) return this.kids![i]!;
    return null;
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

function insertStatic(node: Node, text: string): Node {
  let n = node;
  let pos = 0; // text[pos..] is still to insert
  while (pos < text.length) {
    const code = text.charCodeAt(pos);
    const child = n.staticChild(code);
    if (child === null) {
      const leaf = new Node(pos === 0 ? text : text.slice(pos));
      n.codes += text[pos]!;
      if (n.kids === null) n.kids = [leaf];
      else n.kids.push(leaf);
      return leaf;
    }
    const label = child.prefix;
    const max = Math.min(label.length, text.length - pos);
    let common = 1;
    while (common < max && label.charCodeAt(common) === text.charCodeAt(pos + common)) common++;
    if (common < label.length) {
      // Split: child "abc" + text "abx" -> mid "ab" -> {"c" (old child), ...}.
      const mid = new Node(label.slice(0, common));
      child.prefix = label.slice(common);
      mid.codes = child.prefix[0]!;
      mid.kids = [child];
      n.kids![n.codes.indexOf(text[pos]!)] = mid;
      n = mid;
    } else {
      n = child;
    }
    pos += common;
  }
  return n;
}

/** Insert a route's tokens; returns the terminal node (the caller adds the route). */
export function insertTokens(root: Node, tokens: readonly PatternToken[]): Node {
  let n = root;
  for (const t of tokens) {
    if (t.kind === SEG_STATIC) {
      n = insertStatic(n, t.text);
    } else if (t.kind === SEG_PARAM) {
      if (n.param === null) n.param = new Node('');
      n = n.param;
    } else if (t.kind === SEG_REGEX) {
      const x = n.extra;
      if (x.rx === null) x.rx = [];
      let child = x.rx.find((c) => c.x!.regexSrc === t.text);
      if (child === undefined) {
        child = new Node('');
        child.extra.regex = t.regex;
        child.extra.regexSrc = t.text;
        x.rx.push(child);
      }
      n = child;
    } else {
      const x = n.extra;
      if (x.wild === null) x.wild = new Node('');
      n = x.wild;
    }
  }
  return n;
}

function byPredicatesThenOrder(a: RouteRec<unknown>, b: RouteRec<unknown>): number {
  return b.predCount - a.predCount || a.order - b.order;
}

/** Sort terminal routes and build HEAD orders; returns node count and depth for the caller's limits. */
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
    const routes = n.routes;
    if (routes !== null && routes.length > 1) {
      routes.sort(byPredicatesThenOrder);
      const head = routes.filter((r) => r.explicitHead).concat(routes.filter((r) => !r.explicitHead));
      if (!head.every((r, i) => r === routes[i])) n.extra.headRoutes = head;
    }
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

