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
import { ANY_MASK } from './methods.js';
import type { PatternToken, SegmentKind } from './pattern.js';
import { SEG_PARAM, SEG_REGEX, SEG_STATIC, SEG_WILDCARD } from './pattern.js';

const EMPTY: readonly string[] = Object.freeze([]);
export { EMPTY as EMPTY_STRINGS };

/** One class for every result the router returns (found and 405): one hidden class for callers. */
export class MatchResultImpl<T> implements MatchResult<T> {
  kind: MatchResult<T>['kind'];
  data: T | null;
  paramNames: readonly string[];
  params: readonly string[];
  allow: string;
  constructor(kind: MatchResult<T>['kind'], data: T | null, paramNames: readonly string[]) {
    this.kind = kind;
    this.data = data;
    this.paramNames = paramNames;
    this.params = EMPTY;
    this.allow = '';
  }
}

/** A compiled route. `result` is returned as is (params filled in) when it matches. */
export class RouteRec<T> {
  constructor(
    readonly id: string,
    /** Position in the config: the last tie-breaker. */
    readonly order: number,
    readonly priority: number,
    /** Methods accepted (configured + HEAD when GET is configured; ANY_MASK for any). */
    readonly accept: number,
    /** Methods configured, for the Allow header. */
    readonly allow: number,
    /** Lists HEAD itself or no methods at all: preferred over GET-implied HEAD. */
    readonly explicitHead: boolean,
    readonly pred: Predicate | null,
    readonly predCount: number,
    readonly nParams: number,
    readonly result: MatchResultImpl<T>,
  ) {}

  get anyMethod(): boolean {
    return this.accept === ANY_MASK;
  }

  static create<T>(
    id: string, order: number, priority: number, accept: number, allow: number, explicitHead: boolean,
    pred: Predicate | null, predCount: number, paramNames: readonly string[], data: T,
  ): RouteRec<T> {
    const result = new MatchResultImpl<T>(MATCH_FOUND, data, paramNames);
    return new RouteRec(id, order, priority, accept, allow, explicitHead, pred, predCount, paramNames.length, result);
  }
}

export class Node {
  /** Static edge label ('' for the root and parameter/wildcard nodes). */
  prefix: string;
  kind: SegmentKind;
  /** Regex nodes: the segment regex (anchored) and its source. */
  regex: RegExp | null;
  regexSrc: string;
  /** First character code of each static child, parallel to `kids`. */
  codes: number[] | null = null;
  kids: Node[] | null = null;
  rx: Node[] | null = null;
  param: Node | null = null;
  wild: Node | null = null;
  /** Routes ending here, best first (more predicates, then config order). */
  routes: RouteRec<unknown>[] | null = null;
  /** Same routes in HEAD order (explicit HEAD first); null when identical to `routes`. */
  headRoutes: RouteRec<unknown>[] | null = null;

  constructor(kind: SegmentKind, prefix: string, regex: RegExp | null, regexSrc: string) {
    this.kind = kind;
    this.prefix = prefix;
    this.regex = regex;
    this.regexSrc = regexSrc;
  }

  staticChild(code: number): Node | null {
    const codes = this.codes;
    if (codes === null) return null;
    for (let i = 0; i < codes.length; i++) if (codes[i] === code) return this.kids![i]!;
    return null;
  }
}

export function newRoot(): Node {
  return new Node(SEG_STATIC, '', null, '');
}

function commonPrefix(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  return i;
}

function insertStatic(node: Node, text: string): Node {
  let n = node;
  let rest = text;
  while (rest.length > 0) {
    const code = rest.charCodeAt(0);
    const child = n.staticChild(code);
    if (child === null) {
      const leaf = new Node(SEG_STATIC, rest, null, '');
      if (n.codes === null) {
        n.codes = [];
        n.kids = [];
      }
      n.codes.push(code);
      n.kids!.push(leaf);
      return leaf;
    }
    const common = commonPrefix(child.prefix, rest);
    if (common < child.prefix.length) {
      // Split: child "abc" + text "abx" -> mid "ab" -> {"c" (old child), ...}.
      const mid = new Node(SEG_STATIC, child.prefix.slice(0, common), null, '');
      child.prefix = child.prefix.slice(common);
      mid.codes = [child.prefix.charCodeAt(0)];
      mid.kids = [child];
      n.kids![n.codes!.indexOf(code)] = mid;
      n = mid;
    } else {
      n = child;
    }
    rest = rest.slice(common);
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
      if (n.param === null) n.param = new Node(SEG_PARAM, '', null, '');
      n = n.param;
    } else if (t.kind === SEG_REGEX) {
      if (n.rx === null) n.rx = [];
      let child = n.rx.find((c) => c.regexSrc === t.text);
      if (child === undefined) {
        child = new Node(SEG_REGEX, '', t.regex, t.text);
        n.rx.push(child);
      }
      n = child;
    } else {
      if (n.wild === null) n.wild = new Node(SEG_WILDCARD, '', null, '');
      n = n.wild;
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
  const stack: Array<[Node, number, number]> = [[root, 1, 0]];
  while (stack.length > 0) {
    const [n, depth, params] = stack.pop()!;
    nodes++;
    if (depth > maxDepth) maxDepth = depth;
    if (params > maxParams) maxParams = params;
    if (n.routes !== null) {
      n.routes.sort(byPredicatesThenOrder);
      const head = n.routes.filter((r) => r.explicitHead).concat(n.routes.filter((r) => !r.explicitHead));
      n.headRoutes = head.every((r, i) => r === n.routes![i]) ? null : head;
    }
    if (n.kids !== null) for (const k of n.kids) stack.push([k, depth + 1, params]);
    if (n.rx !== null) for (const k of n.rx) stack.push([k, depth + 1, params + 1]);
    if (n.param !== null) stack.push([n.param, depth + 1, params + 1]);
    if (n.wild !== null) stack.push([n.wild, depth + 1, params + 1]);
  }
  return { nodes, maxDepth, maxParams };
}

export { SEG_PARAM, SEG_REGEX, SEG_STATIC, SEG_WILDCARD };
