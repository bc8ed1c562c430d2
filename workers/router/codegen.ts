/**
 * Compiles a route tree into one JavaScript function (plus helpers for big
 * subtrees), find-my-way / rou3 style: the tree becomes nested `if`s and
 * `switch`es on character codes, so backtracking is just falling out of a
 * block, parameter boundaries live in local variables, and V8 turns the
 * static-child dispatch into jump tables.
 *
 * Safety: routes come from the admin API. Nothing route-derived is pasted
 * into the source except static path literals, and those only through
 * JSON.stringify (they are also checked to be printable ASCII, which the
 * pattern parser guarantees). Regexes, predicates, results and param names
 * reach the generated code only through closure arrays indexed by number.
 *
 * Shape of the generated code for one node at position variable `p`:
 *   if (p === len) { <routes ending here> }              // end of path
 *   if (p < len) switch (path.charCodeAt(p)) {           // static children
 *     case 117: if (path.startsWith("sers/", p + 1)) { const p2 = p + 6; ... } break;
 *   }
 *   { let e = path.indexOf("/", p); if (e === -1) e = len;  // parameters
 *     if (e !== p) { if (RX[0].test(path.slice(p, e))) {...}  ...param child at e... } }
 *   <wildcard routes>
 */
import type { Matcher, SearchState } from './matcher.js';
import type { Predicate } from './predicates.js';
import type { MatchResultImpl, Node, RouteRec } from './node.js';
import { headRoutesOf, regexOf, routeList, rxOf, wildOf } from './node.js';
import { ANY_MASK } from './methods.js';

export interface CodegenTuning {
  /** Literals up to this many chars are compared with inline charCodeAt, longer ones with startsWith. */
  inlineChars: number;
  /** Subtrees whose code exceeds this many chars become their own function (keeps each one optimisable by TurboFan). */
  splitChars: number;
  /** Find the end of a parameter segment with indexOf (builtin call) or an inline charCodeAt loop. */
  scan: 'indexOf' | 'loop';
}

export const DEFAULT_TUNING: CodegenTuning = { inlineChars: 12, splitChars: 3000, scan: 'indexOf' };
const SAFE_LITERAL = /^[\x21-\x7e]*$/;

type AllowFn = (mb: number, h: readonly string[], q: string) => number;

class Generator {
  readonly fns: string[] = [];
  readonly results: MatchResultImpl<unknown>[] = [];
  readonly preds: Predicate[] = [];
  readonly allowFns: AllowFn[] = [];
  readonly regexes: RegExp[] = [];
  readonly #resultIndex = new Map<RouteRec<unknown>, number>();
  #counter = 1; // 0 is the root position, p0

  constructor(readonly headBit: number, readonly tuning: CodegenTuning) {}

  name(prefix: string): string {
    return prefix + this.#counter++;
  }

  literal(s: string): string {
    if (!SAFE_LITERAL.test(s)) throw new Error(`router codegen: unexpected character in path literal ${JSON.stringify(s)}`);
    return JSON.stringify(s);
  }

  resultIndex(r: RouteRec<unknown>): number {
    let i = this.#resultIndex.get(r);
    if (i === undefined) {
      i = this.results.push(r) - 1;
      this.#resultIndex.set(r, i);
    }
    return i;
  }

  /** `hoistKids` false: the root, whose child would otherwise be a function called by an otherwise empty one. */
  node(n: Node, pv: string, params: readonly string[], hoistKids = true): string {
    let c = '';
    if (n.routes !== null) c += `if (${pv} === len) {${this.terminal(n, params)}}\n`;
    if (n.kids !== null) c += this.statics(n, pv, params, hoistKids);
    if (rxOf(n) !== null || n.param !== null) c += this.parameters(n, pv, params);
    const wild = wildOf(n);
    if (wild !== null) c += this.terminal(wild, [...params, pv, 'len']);
    return c;
  }

  /** Code for a child subtree, hoisted into its own function when big. */
  sub(n: Node, pv: string, params: readonly string[], hoist = true): string {
    const code = this.node(n, pv, params);
    if (!hoist || code.length <= this.tuning.splitChars) return code;
    const fname = this.name('f');
    const args = ['path', 'len', 'mb', 'h', 'q', pv];
    for (const v of params) if (v !== 'len' && !args.includes(v)) args.push(v);
    const list = args.join(', ');
    this.fns.push(`function ${fname}(${list}) {\n${code}return null;\n}`);
    return `{ const r = ${fname}(${list}); if (r !== null) return r; }\n`;
  }

  prefixCond(prefix: string, pv: string, from: number): string {
    const n = prefix.length - from;
    if (n <= 0) return '';
    if (n <= this.tuning.inlineChars) {
      this.literal(prefix);
      const parts = [`${pv} + ${prefix.length} <= len`];
      for (let i = from; i < prefix.length; i++) {
        parts.push(`path.charCodeAt(${i === 0 ? pv : `${pv} + ${i}`}) === ${prefix.charCodeAt(i)}`);
      }
      return parts.join(' && ');
    }
    return `path.startsWith(${this.literal(prefix.slice(from))}, ${from === 0 ? pv : `${pv} + ${from}`})`;
  }

  statics(n: Node, pv: string, params: readonly string[], hoist: boolean): string {
    const kids = n.kids!;
    if (kids.length === 1) {
      const k = kids[0]!;
      const v = this.name('p');
      return `if (${this.prefixCond(k.prefix, pv, 0)}) { const ${v} = ${pv} + ${k.prefix.length};\n${this.sub(k, v, params, hoist)}}\n`;
    }
    let s = `if (${pv} < len) switch (path.charCodeAt(${pv})) {\n`;
    for (let i = 0; i < kids.length; i++) {
      const k = kids[i]!;
      const v = this.name('p');
      const rest = this.prefixCond(k.prefix, pv, 1);
      s += `case ${n.codes.charCodeAt(i)}: ${rest === '' ? '' : `if (${rest}) `}{ const ${v} = ${pv} + ${k.prefix.length};\n${this.sub(k, v, params, hoist)}} break;\n`;
    }
    return s + '}\n';
  }

  parameters(n: Node, pv: string, params: readonly string[]): string {
    const e = this.name('e');
    let s = this.tuning.scan === 'loop'
      ? `{ let ${e} = ${pv}; while (${e} < len && path.charCodeAt(${e}) !== 47) ${e}++;\nif (${e} !== ${pv}) {\n`
      : `{ let ${e} = path.indexOf("/", ${pv}); if (${e} === -1) ${e} = len;\nif (${e} !== ${pv}) {\n`;
    const withParam = [...params, pv, e];
    const rx = rxOf(n);
    if (rx !== null) {
      const sv = this.name('s');
      s += `const ${sv} = path.slice(${pv}, ${e});\n`;
      for (const child of rx) {
        const idx = this.regexes.push(regexOf(child)!) - 1;
        s += `if (RX[${idx}].test(${sv})) {\n${this.sub(child, e, withParam)}}\n`;
      }
    }
    if (n.param !== null) s += this.sub(n.param, e, withParam);
    return s + '}}\n';
  }

  routeBlocks(list: readonly RouteRec<unknown>[], params: readonly string[]): string {
    let s = '';
    for (const r of list) {
      const idx = this.resultIndex(r);
      const conds: string[] = [];
      if (r.accept !== ANY_MASK) conds.push(`(mb & ${r.accept}) !== 0`);
      if (r.pred !== null) conds.push(`PR[${this.preds.push(r.pred) - 1}](h, q)`);
      let ret: string;
      if (r.paramNames.length === 0) {
        ret = `return R[${idx}];`;
      } else {
        // Lazy params: record boundaries only (see MatchResultImpl).
        let stores = '';
        for (let i = 0; i < params.length; i++) stores += `o[${i}] = ${params[i]!}; `;
        ret = `{ const m = R[${idx}]; let o = m.offsets; if (o === null) o = m.slots(); ${stores}m.path = path; m.cache = null; return m; }`;
      }
      if (conds.length === 0) {
        s += ret + '\n';
        break; // later routes are unreachable
      }
      s += `if (${conds.join(' && ')}) ${ret}\n`;
    }
    return s;
  }

  terminal(n: Node, params: readonly string[]): string {
    const routes = routeList(n.routes);
    const head = headRoutesOf(n);
    let s = head !== null
      ? `if (mb === ${this.headBit}) {\n${this.routeBlocks(head, params)}} else {\n${this.routeBlocks(routes, params)}}\n`
      : this.routeBlocks(routes, params);
    // Reached only when no route took the request: record the 405 candidates.
    if (routes.some((r) => r.accept === ANY_MASK && r.pred === null)) return s;
    if (routes.every((r) => r.pred === null)) {
      let mask = 0;
      for (const r of routes) mask |= r.allowMask;
      s += `S.allow |= ${mask};\n`;
    } else {
      const list = routes;
      const fn: AllowFn = (mb, h, q) => {
        let a = 0;
        for (const r of list) if ((r.accept & mb) === 0 && (r.pred === null || r.pred(h, q))) a |= r.allowMask;
        return a;
      };
      s += `S.allow |= AL[${this.allowFns.push(fn) - 1}](mb, h, q);\n`;
    }
    return s;
  }
}

/**
 * Above this many characters a generated function may exceed V8's limit for
 * optimisation (TurboFan skips functions over 60 KB of bytecode) and would
 * run 5-10x slower than the interpreter: refuse, the caller interprets.
 */
export const MAX_FUNCTION_CHARS = 40_000;

/**
 * Generate the matcher for one tree; null when a generated function would be
 * too big to be optimised. Throws if code generation is unavailable (the
 * caller falls back to the interpreter).
 */
export function generateMatcher(
  root: Node, state: SearchState, headBit: number, tuning: CodegenTuning = DEFAULT_TUNING, enforceLimit = true,
): { match: Matcher; sourceLength: number } | null {
  const g = new Generator(headBit, tuning);
  const body = g.node(root, 'p0', [], false);
  if (enforceLimit && (body.length > MAX_FUNCTION_CHARS || g.fns.some((f) => f.length > MAX_FUNCTION_CHARS))) return null;
  const src =
    '"use strict";\n' +
    g.fns.join('\n') +
    `\nreturn function match(path, len, mb, h, q) {\nconst p0 = 0;\n${body}return null;\n};`;
  // eslint-disable-next-line @typescript-eslint/no-implied-eval
  const factory = new Function('R', 'PR', 'AL', 'RX', 'S', src) as (
    R: MatchResultImpl<unknown>[], PR: Predicate[], AL: AllowFn[], RX: RegExp[], S: SearchState,
  ) => Matcher;
  return { match: factory(g.results, g.preds, g.allowFns, g.regexes, state), sourceLength: src.length };
}

/** The generated source, for debugging and for the tests that check nothing unquoted gets in. */
export function generateSource(root: Node, headBit: number, tuning: CodegenTuning = DEFAULT_TUNING): string {
  const g = new Generator(headBit, tuning);
  const body = g.node(root, 'p0', [], false);
  return g.fns.join('\n') + `\nfunction match(path, len, mb, h, q) {\nconst p0 = 0;\n${body}return null;\n}`;
}
