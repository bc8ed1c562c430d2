/**
 * Data-driven tree search: the fallback when code generation is off or the
 * tree is too big to be worth compiling (thousands of routes). Same order
 * and results as the generated matcher (tests run both against the
 * reference): depth-first, static > regex param > param > wildcard, with an
 * explicit stack in preallocated typed arrays (no recursion, no allocation
 * except the params array of a match).
 */
import type { Matcher, SearchState } from './matcher.js';
import type { MatchResultImpl, Node, RouteRec } from './node.js';
import { headRoutesOf } from './node.js';

const ST_END = 0;
const ST_STATIC = 1;
const ST_SEGMENT = 2;
const ST_REGEX = 3;
const ST_PARAM = 4;
const ST_WILDCARD = 5;
const ST_POP = 6;

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
  const sub = new Int32Array(depth);
  const nParams = new Int32Array(depth);
  const pa = new Int32Array(maxParams + 1);
  const pb = new Int32Array(maxParams + 1);

  function terminal(
    node: Node, n: number, path: string, mb: number, h: readonly string[], q: string,
  ): MatchResultImpl<unknown> | null {
    let list: RouteRec<unknown>[] = node.routes!;
    if (mb === headBit) {
      const head = headRoutesOf(node);
      if (head !== null) list = head;
    }
    for (let i = 0; i < list.length; i++) {
      const r = list[i]!;
      if ((r.accept & mb) !== 0 && (r.pred === null || r.pred(h, q))) {
        const res = r.result;
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
    }
    // Nothing accepted the method: remember what would have (405 + Allow).
    let allow = 0;
    for (let i = 0; i < list.length; i++) {
      const r = list[i]!;
      if ((r.accept & mb) === 0 && (r.pred === null || r.pred(h, q))) allow |= r.allow;
    }
    state.allow |= allow;
    return null;
  }

  // This is the hot path for big tables -- change with care!
  return function interpret(path, len, mb, h, q) {
    let sp = 0;
    nodes[0] = root;
    pos[0] = 0;
    stage[0] = ST_END;
    nParams[0] = 0;
    while (sp >= 0) {
      const node = nodes[sp]!;
      const p = pos[sp]!;
      switch (stage[sp]) {
        case ST_END: {
          stage[sp] = ST_STATIC;
          if (p === len && node.routes !== null) {
            const r = terminal(node, nParams[sp]!, path, mb, h, q);
            if (r !== null) return r;
          }
          break;
        }
        case ST_STATIC: {
          stage[sp] = ST_SEGMENT;
          if (p < len && node.kids !== null) {
            const child = node.staticChild(path.charCodeAt(p));
            if (child !== null && path.startsWith(child.prefix, p)) {
              const n = nParams[sp]!;
              sp++;
              nodes[sp] = child;
              pos[sp] = p + child.prefix.length;
              stage[sp] = ST_END;
              nParams[sp] = n;
            }
          }
          break;
        }
        case ST_SEGMENT: {
          stage[sp] = ST_WILDCARD;
          if (node.param !== null || (node.x !== null && node.x.rx !== null)) {
            let e = path.indexOf('/', p);
            if (e === -1) e = len;
            if (e !== p) {
              segEnd[sp] = e;
              sub[sp] = 0;
              stage[sp] = node.x !== null && node.x.rx !== null ? ST_REGEX : ST_PARAM;
            }
          }
          break;
        }
        case ST_REGEX: {
          const rx = node.x!.rx!;
          const k = sub[sp]!;
          if (k + 1 < rx.length) sub[sp] = k + 1;
          else stage[sp] = ST_PARAM;
          const e = segEnd[sp]!;
          const child = rx[k]!;
          if (child.x!.regex!.test(path.slice(p, e))) {
            const n = nParams[sp]!;
            pa[n] = p;
            pb[n] = e;
            sp++;
            nodes[sp] = child;
            pos[sp] = e;
            stage[sp] = ST_END;
            nParams[sp] = n + 1;
          }
          break;
        }
        case ST_PARAM: {
          stage[sp] = ST_WILDCARD;
          const child = node.param;
          if (child !== null) {
            const n = nParams[sp]!;
            const e = segEnd[sp]!;
            pa[n] = p;
            pb[n] = e;
            sp++;
            nodes[sp] = child;
            pos[sp] = e;
            stage[sp] = ST_END;
            nParams[sp] = n + 1;
          }
          break;
        }
        case ST_WILDCARD: {
          stage[sp] = ST_POP;
          const w = node.x === null ? null : node.x.wild;
          if (w !== null) {
            const n = nParams[sp]!;
            pa[n] = p;
            pb[n] = len;
            const r = terminal(w, n + 1, path, mb, h, q);
            if (r !== null) return r;
          }
          break;
        }
        default:
          sp--;
      }
    }
    return null;
  };
}
