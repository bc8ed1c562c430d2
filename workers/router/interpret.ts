/**
 * Data-driven tree search: the fallback when code generation is off or the
 * tree is too big to be worth compiling (thousands of routes). Same order
 * and results as the generated matcher (tests run both against the
 * reference): depth-first, static > regex param > param > wildcard.
 *
 * The search walks down the tree in a loop and remembers only choice
 * points: a node is pushed (on preallocated typed-array stacks) only when
 * it has a parameter, regex or wildcard child still to try after the
 * branch being taken, so a purely static descent (most of a big table)
 * pushes nothing. No recursion, no allocation except a route's offsets
 * array on its first match.
 */
import type { Matcher, SearchState } from './matcher.js';
import type { MatchResultImpl, Node, RouteRec } from './node.js';

/** Where to resume at a node: the next alternative to try. */
const AT_STATIC = 0; // end of path, then the static child
const AT_SEGMENT = 1; // regex / param children
const AT_PARAM = 2; // the plain param child (regexes tried)
const AT_WILD = 3; // the wildcard child
/** AT_REGEX + k: regex child k. */
const AT_REGEX = 4;

export function makeInterpreter(
  root: Node,
  maxDepth: number,
  maxParams: number,
  state: SearchState,
  headBit: number,
): Matcher {
  const depth = maxDepth + 1;
  const nodes: Node[] = new Array<Node>(depth).fill(root);
  const pos = new Int32Array(depth);
  const stage = new Int32Array(depth);
  const segEnd = new Int32Array(depth);
  const nParams = new Int32Array(depth);
  const pa = new Int32Array(maxParams + 1);
  const pb = new Int32Array(maxParams + 1);

  function terminal(
    node: Node, n: number, path: string, mb: number, h: readonly string[], q: string,
  ): MatchResultImpl<unknown> | null {
    let list: readonly RouteRec<unknown>[] | null = null;
    if (mb === headBit && node.x !== null) list = node.x.headRoutes;
    if (list === null) {
      for (let r = node.routes; r !== null; r = r.next) {
        if ((r.accept & mb) !== 0 && (r.pred === null || r.pred(h, q))) return found(r, n, path);
      }
    } else {
      for (let i = 0; i < list.length; i++) {
        const r = list[i]!;
        if ((r.accept & mb) !== 0 && (r.pred === null || r.pred(h, q))) return found(r, n, path);
      }
    }
    // Nothing accepted the method: remember what would have (405 + Allow).
    let allow = 0;
    for (let r = node.routes; r !== null; r = r.next) {
      if ((r.accept & mb) === 0 && (r.pred === null || r.pred(h, q))) allow |= r.allowMask;
    }
    state.allow |= allow;
    return null;
  }

  function found(res: RouteRec<unknown>, n: number, path: string): MatchResultImpl<unknown> {
    if (n !== 0) {
      const o = res.slots();
      for (let k = 0; k < n; k++) {
        o[2 * k] = pa[k]!;
        o[2 * k + 1] = pb[k]!;
      }
      res.path = path;
      res.cache = null;
    }
    return res;
  }

  // This is the hot path for big tables -- change with care!
  return function interpret(path, len, mb, h, q) {
    let sp = 0; // choice points on the stacks
    let node = root;
    let p = 0;
    let np = 0; // params recorded (pa/pb[0..np))
    let at = AT_STATIC;
    let e = 0; // end of the segment at p (AT_PARAM, AT_REGEX)
    for (;;) {
      if (at === AT_STATIC) {
        if (p === len) {
          if (node.routes !== null) {
            const r = terminal(node, np, path, mb, h, q);
            if (r !== null) return r;
          }
          // Only a wildcard matches an empty rest (static labels and params are non-empty).
          at = AT_WILD;
        } else {
          let next: Node | null = null;
          const kids = node.kids;
          if (kids !== null) {
            const codes = node.codes;
            const c = path.charCodeAt(p);
            for (let i = 0; i < codes.length; i++) {
              if (codes.charCodeAt(i) === c) {
                // Labels are short: an inline compare beats a startsWith call
                // (the first character matched through `codes`).
                const k = kids[i]!;
                const label = k.prefix;
                const n = label.length;
                if (p + n <= len) {
                  let j = 1;
                  while (j < n && path.charCodeAt(p + j) === label.charCodeAt(j)) j++;
                  if (j === n) next = k;
                }
                break;
              }
            }
          }
          if (next !== null) {
            const x = node.x;
            if (node.param !== null || (x !== null && (x.rx !== null || x.wild !== null))) {
              // Something else to try here if the static branch fails.
              nodes[sp] = node;
              pos[sp] = p;
              nParams[sp] = np;
              stage[sp] = AT_SEGMENT;
              sp++;
            }
            node = next;
            p += next.prefix.length;
            continue;
          }
          at = AT_SEGMENT;
        }
      }
      if (at === AT_SEGMENT) {
        const x = node.x;
        if (node.param !== null || (x !== null && x.rx !== null)) {
          e = path.indexOf('/', p);
          if (e === -1) e = len;
          at = e === p ? AT_WILD : x !== null && x.rx !== null ? AT_REGEX : AT_PARAM;
        } else {
          at = AT_WILD;
        }
      }
      if (at >= AT_REGEX) {
        const rx = node.x!.rx!;
        const seg = path.slice(p, e);
        let k = at - AT_REGEX;
        while (k < rx.length && !rx[k]!.x!.regex!.test(seg)) k++;
        if (k < rx.length) {
          // Resume with the next regex (or the param child) on backtrack.
          nodes[sp] = node;
          pos[sp] = p;
          nParams[sp] = np;
          segEnd[sp] = e;
          stage[sp] = k + 1 < rx.length ? AT_REGEX + k + 1 : AT_PARAM;
          sp++;
          pa[np] = p;
          pb[np] = e;
          np++;
          node = rx[k]!;
          p = e;
          at = AT_STATIC;
          continue;
        }
        at = AT_PARAM;
      }
      if (at === AT_PARAM) {
        const child = node.param;
        if (child !== null) {
          if (node.x !== null && node.x.wild !== null) {
            nodes[sp] = node;
            pos[sp] = p;
            nParams[sp] = np;
            stage[sp] = AT_WILD;
            sp++;
          }
          pa[np] = p;
          pb[np] = e;
          np++;
          node = child;
          p = e;
          at = AT_STATIC;
          continue;
        }
        at = AT_WILD;
      }
      // AT_WILD
      const w = node.x === null ? null : node.x.wild;
      if (w !== null) {
        pa[np] = p;
        pb[np] = len;
        const r = terminal(w, np + 1, path, mb, h, q);
        if (r !== null) return r;
      }
      // Backtrack to the latest choice point.
      if (sp === 0) return null;
      sp--;
      node = nodes[sp]!;
      p = pos[sp]!;
      np = nParams[sp]!;
      e = segEnd[sp]!;
      at = stage[sp]!;
    }
  };
}
