/**
 * Route path patterns: parsing and validation.
 *
 * Grammar (segments separated by `/`, the pattern starts with `/`):
 *   static     literal characters, in the same canonical form normalizePath
 *              produces (escapes are canonicalised here: `%7e` -> `~`,
 *              `%2f` -> `%2F`); `.`/`..` and empty middle segments are
 *              refused; a trailing `/` is an empty last segment.
 *   `:name`    one whole, non-empty segment; name /^[A-Za-z_][A-Za-z0-9_]*$/.
 *   `:name(re)` the same, and `re` must match the whole segment (it is
 *              compiled as `^(?:re)$`).
 *   `*`        only as the whole last segment: the rest of the path,
 *              possibly empty (param name `*`).
 * A parameter is always a whole segment (`/files/:name.json` is refused).
 *
 * Patterns come from the admin API, so nothing parsed here is trusted: the
 * code generator only ever embeds literals through JSON.stringify, and
 * regexes and names travel through closure arrays (see codegen.ts).
 *
 * ReDoS: a route regex is matched against a segment the client chose, so a
 * catastrophic one (`(a|a)+` on `aaaa...!`) would freeze a worker for
 * seconds per request. On V8 this module turns on the engine's fallback to
 * its linear-time regexp engine after excessive backtracking
 * (--enable-experimental-regexp-engine-on-excessive-backtracks: ordinary
 * matches keep the fast backtracking engine, a runaway one finishes in
 * linear time), and refuses route regexes the linear engine cannot run
 * (backreferences, lookarounds), which the fallback could not rescue. The
 * flags are process-wide and set before any route regex is compiled, in
 * every thread that imports this module. Bun (JavaScriptCore) has neither:
 * there the README's ReDoS caveat stands.
 */
import { setFlagsFromString } from 'node:v8';
import { isPlainRange, normalizePath } from './normalize.js';

/** True when V8's linear-time regexp engine is on (checked by compiling with its `l` flag). */
const LINEAR_REGEXPS = (() => {
  if (typeof (process.versions as Record<string, string | undefined>).bun === 'string') return false;
  try {
    setFlagsFromString('--enable-experimental-regexp-engine');
    setFlagsFromString('--enable-experimental-regexp-engine-on-excessive-backtracks');
    new RegExp('a', 'l');
    return true;
  } catch {
    return false;
  }
})();

export const SEG_STATIC = 0;
export const SEG_REGEX = 1;
export const SEG_PARAM = 2;
export const SEG_WILDCARD = 3;
export type SegmentKind = typeof SEG_STATIC | typeof SEG_REGEX | typeof SEG_PARAM | typeof SEG_WILDCARD;

/** Parts of a pattern as inserted in the radix tree: static text runs (with their slashes) between parameters. */
export type PatternToken =
  | { kind: typeof SEG_STATIC; text: string }
  | { kind: typeof SEG_REGEX; text: string; regex: RegExp }
  | { kind: typeof SEG_PARAM }
  | { kind: typeof SEG_WILDCARD };

export interface ParsedPattern {
  /** `/repos/:o/x` -> "/repos/", param, "/x". */
  tokens: PatternToken[];
  /** In path order; the wildcard is named `*`. */
  paramNames: string[];
  /** The canonical path when the pattern has no parameter, else null. */
  staticPath: string | null;
}

/** `*`, `(` or `)` in s[start, end): pchars, but reserved for pattern syntax. */
function hasSpecial(s: string, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c === 42 || c === 40 || c === 41) return true;
  }
  return false;
}

function isNameChar(c: number): boolean {
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c === 95;
}
const NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Upper bound on one pattern, so a hostile admin request cannot build a giant matcher. */
export const MAX_PATTERN_LENGTH = 2048;

/** The linear-time engine can run it: then a runaway match falls back to it instead of freezing the worker. */
function linearCapable(src: string): boolean {
  try {
    new RegExp('^(?:' + src + ')$', 'l');
    return true;
  } catch {
    return false;
  }
}

/** Compile a parameter regex anchored to the whole segment; string = error. */
export function compileSegmentRegex(src: string): RegExp | string {
  try {
    return new RegExp('^(?:' + src + ')$');
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * Parse a pattern; returns an error message instead of throwing. Runs once
 * per route per config version (10k routes: a few ms), so it works on
 * char codes and slices of the input, canonicalising only literals that
 * need it.
 */
export function parsePattern(path: string): ParsedPattern | string {
  if (typeof path !== 'string' || path.length === 0 || path.charCodeAt(0) !== 47) {
    return 'path must start with "/"';
  }
  const len = path.length;
  if (len > MAX_PATTERN_LENGTH) return `path is longer than ${MAX_PATTERN_LENGTH} characters`;
  if (!SIMPLE_PATTERN.test(path)) return parseGeneral(path);
  // (compileRouter's fast path, isSimplePattern + simpleParamNames +
  // insertSimple in node.ts, reads the same grammar without tokens.)
  // The fast path, inline (one function for the JIT to compile): the same
  // tokens as the general parser, found with indexOf (a big table is parsed
  // before the JIT has optimised anything, so builtins beat character loops).
  const tokens: PatternToken[] = [];
  const paramNames: string[] = [];
  let from = 0; // start of the pending static text
  // Every "/:" starts a parameter: a literal ":" never follows a "/".
  for (let k = path.indexOf('/:'); k !== -1; k = path.indexOf('/:', from)) {
    let end = path.indexOf('/', k + 2);
    if (end === -1) end = len;
    const name = path.slice(k + 2, end);
    // A duplicate name: the general parser writes the message.
    if (paramNames.includes(name)) return parseGeneral(path);
    tokens.push({ kind: SEG_STATIC, text: path.slice(from, k + 1) });
    tokens.push(PARAM_TOKEN);
    paramNames.push(name);
    from = end;
  }
  if (path.charCodeAt(len - 1) === 42 /* * */) {
    tokens.push({ kind: SEG_STATIC, text: path.slice(from, len - 1) });
    tokens.push(WILDCARD_TOKEN);
    paramNames.push('*');
    return { tokens, paramNames, staticPath: null };
  }
  const rest = from === 0 ? path : path.slice(from);
  if (rest !== '') tokens.push({ kind: SEG_STATIC, text: rest });
  return { tokens, paramNames, staticPath: paramNames.length === 0 ? rest : null };
}

/** Raw pchars that are plain in a pattern: no `/`, `%`, and none of the pattern syntax `*`, `(`, `)`, `:`. */
const PLAIN_CLASS = ((): string => {
  let cls = '';
  for (let c = 0x21; c < 0x7f; c++) {
    const ch = String.fromCharCode(c);
    if (isPlainRange(ch, 0, 1) && !hasSpecial(ch, 0, 1) && ch !== ':') cls += '\\x' + c.toString(16);
  }
  return cls;
})();

/**
 * Patterns the fast path takes (nearly all): segments of plain characters
 * (a `:` after the first one is a literal), never `.`/`..`; `:name` params;
 * an optional trailing `/` or `/*`. Segments are delimited by `/`, which no
 * class contains, so matching is linear. Anything else goes to the general
 * parser, which also writes every error message.
 */
const SIMPLE_PATTERN = new RegExp(
  `^(?:/(?:(?!\\.\\.?(?:/|$))[${PLAIN_CLASS}][${PLAIN_CLASS}:]*|:[A-Za-z_][A-Za-z0-9_]*))*(?:/\\*?)?$`,
);
const PARAM_TOKEN: PatternToken = Object.freeze({ kind: SEG_PARAM });
const WILDCARD_TOKEN: PatternToken = Object.freeze({ kind: SEG_WILDCARD });

/**
 * A valid pattern in the fast-path grammar (plain literals, `:name`
 * params, optional trailing `/` or `/*`): already canonical, so compile
 * inserts it straight from the string (insertSimple in node.ts).
 */
export function isSimplePattern(path: unknown): path is string {
  return typeof path === 'string' && path.length > 0 && path.length <= MAX_PATTERN_LENGTH &&
    path.charCodeAt(0) === 47 && SIMPLE_PATTERN.test(path);
}

/** Param names of an isSimplePattern path into `out` (cleared first); false on a duplicate name. */
export function simpleParamNames(path: string, out: string[]): boolean {
  out.length = 0;
  let k = path.indexOf('/:'); // every "/:" starts a parameter
  while (k !== -1) {
    let end = path.indexOf('/', k + 2);
    if (end === -1) end = path.length;
    const name = path.slice(k + 2, end);
    if (out.includes(name)) return false;
    out.push(name);
    k = path.indexOf('/:', end);
  }
  if (path.length >= 2 && path.charCodeAt(path.length - 1) === 42 /* * */) out.push('*');
  return true;
}

/** parsePattern for any pattern: canonicalises escapes and writes every error message. */
export function parseGeneral(path: string): ParsedPattern | string {
  const len = path.length;
  const tokens: PatternToken[] = [];
  const paramNames: string[] = [];
  // Pending static text = `run` (already canonicalised) + path[runStart, i).
  let run = '';
  let runStart = 0;
  let i = 1; // start of the current segment; path[i - 1] === '/'
  while (i < len) {
    const c = path.charCodeAt(i);
    if (c === 58 /* : */) {
      let j = i + 1;
      while (j < len && isNameChar(path.charCodeAt(j))) j++;
      const name = path.slice(i + 1, j);
      if (name === '') return `empty parameter name at offset ${i}`;
      if (!NAME_RE.test(name)) return `invalid parameter name "${name}" (must match ^[A-Za-z_][A-Za-z0-9_]*$)`;
      if (paramNames.includes(name)) return `duplicate parameter name "${name}"`;
      let token: PatternToken = { kind: SEG_PARAM };
      if (path.charCodeAt(j) === 40 /* ( */) {
        const close = findRegexEnd(path, j);
        if (close < 0) return `unbalanced parentheses in the regex of ":${name}"`;
        const src = path.slice(j + 1, close);
        if (src === '') return `empty regex for ":${name}"`;
        const re = compileSegmentRegex(src);
        if (typeof re === 'string') return `invalid regex for ":${name}": ${re}`;
        if (LINEAR_REGEXPS && !linearCapable(src)) {
          return `the regex of ":${name}" uses a backreference or a lookaround, which cannot be matched in linear time: ` +
            'route regexes must be (a client chooses the text they run on: ReDoS); rewrite it without them';
        }
        token = { kind: SEG_REGEX, text: src, regex: re };
        j = close + 1;
      }
      if (j < len && path.charCodeAt(j) !== 47) {
        return `parameter ":${name}" must be a whole segment (unexpected "${path[j]}" at offset ${j})`;
      }
      tokens.push({ kind: SEG_STATIC, text: run + path.slice(runStart, i) });
      tokens.push(token);
      paramNames.push(name);
      run = '';
      runStart = j;
      i = j + 1;
    } else if (c === 42 /* * */ && (i + 1 === len || path.charCodeAt(i + 1) === 47)) {
      if (i + 1 !== len) return '"*" must be the last segment';
      tokens.push({ kind: SEG_STATIC, text: run + path.slice(runStart, i) });
      tokens.push({ kind: SEG_WILDCARD });
      paramNames.push('*');
      run = '';
      runStart = len;
      i = len + 1;
    } else {
      let j = path.indexOf('/', i);
      if (j === -1) j = len;
      if (j === i) return `empty segment at offset ${i} ("//" never matches a normalised path)`;
      // Plain literals (the common case) stay in the raw run, unsliced.
      const dot = path.charCodeAt(i) === 46 && (j === i + 1 || (j === i + 2 && path.charCodeAt(i + 1) === 46));
      if (dot || !isPlainRange(path, i, j) || hasSpecial(path, i, j)) {
        const lit = path.slice(i, j);
        if (lit.includes('*')) return `"*" is only allowed as the whole last segment (segment "${lit}")`;
        if (lit.includes('(') || lit.includes(')')) {
          return `parentheses are only allowed right after a parameter name (segment "${lit}")`;
        }
        if (dot) return `dot segment "${lit}" is not allowed`;
        const norm = normalizePath('/' + lit);
        if (norm === null) return `invalid character or escape in segment "${lit}"`;
        const canonical = norm.slice(1);
        if (canonical === '' || canonical.includes('/')) return `segment "${lit}" is a dot segment once decoded`;
        run += path.slice(runStart, i) + canonical;
        runStart = j;
      }
      i = j + 1;
    }
  }
  // i === len: the pattern ends with '/', an empty last segment (kept in the run).
  const rest = run + path.slice(runStart);
  if (rest !== '') tokens.push({ kind: SEG_STATIC, text: rest });
  const staticPath = paramNames.length === 0 ? rest : null;
  return { tokens, paramNames, staticPath };
}

/**
 * Index of the `)` closing the `(` at `open`, honouring `\` escapes and
 * `[...]` classes; -1 when unbalanced.
 */
function findRegexEnd(path: string, open: number): number {
  let depth = 0;
  let inClass = false;
  for (let j = open; j < path.length; j++) {
    const ch = path[j];
    if (ch === '\\') {
      j++;
      continue;
    }
    if (inClass) {
      if (ch === ']') inClass = false;
      continue;
    }
    if (ch === '[') inClass = true;
    else if (ch === '(') depth++;
    else if (ch === ')') {
      depth--;
      if (depth === 0) return j;
    }
  }
  return -1;
}

/**
 * Error message for a bad route pattern, or null when it is valid. Used by
 * config validation, so every message names the problem in user terms.
 */
export function validateRoutePattern(path: string): string | null {
  const r = parsePattern(path);
  return typeof r === 'string' ? r : null;
}
