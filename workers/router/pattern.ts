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
 */
import { normalizePath } from './normalize.js';

export const SEG_STATIC = 0;
export const SEG_REGEX = 1;
export const SEG_PARAM = 2;
export const SEG_WILDCARD = 3;
export type SegmentKind = typeof SEG_STATIC | typeof SEG_REGEX | typeof SEG_PARAM | typeof SEG_WILDCARD;

export interface PatternSegment {
  kind: SegmentKind;
  /** Canonical literal (static), regex source (regex), '' otherwise. */
  text: string;
  /** Parameter name (`*` for the wildcard), '' for static segments. */
  name: string;
}

export interface ParsedPattern {
  segments: PatternSegment[];
  /** In path order; the wildcard is named `*`. */
  paramNames: string[];
  /** Identifies the matching behaviour: equal keys <=> same set of matched paths and same tree position. */
  shapeKey: string;
}

/** Parts of a pattern as inserted in the radix tree: static text runs between parameters. */
export type PatternToken =
  | { kind: typeof SEG_STATIC; text: string }
  | { kind: typeof SEG_REGEX; text: string; regex: RegExp }
  | { kind: typeof SEG_PARAM }
  | { kind: typeof SEG_WILDCARD };

const NAME_CHAR = /[A-Za-z0-9_]/;
const NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Upper bound on one pattern, so a hostile admin request cannot build a giant matcher. */
export const MAX_PATTERN_LENGTH = 2048;

/** Compile a parameter regex anchored to the whole segment; string = error. */
export function compileSegmentRegex(src: string): RegExp | string {
  try {
    return new RegExp('^(?:' + src + ')$');
  } catch (err) {
    return (err as Error).message;
  }
}

/** Parse a pattern; returns an error message instead of throwing. */
export function parsePattern(path: string): ParsedPattern | string {
  if (typeof path !== 'string' || path.length === 0 || path.charCodeAt(0) !== 47) {
    return 'path must start with "/"';
  }
  if (path.length > MAX_PATTERN_LENGTH) return `path is longer than ${MAX_PATTERN_LENGTH} characters`;
  const len = path.length;
  const segments: PatternSegment[] = [];
  const paramNames: string[] = [];
  let i = 1;
  for (;;) {
    const c = path[i];
    if (c === ':') {
      let j = i + 1;
      while (j < len && NAME_CHAR.test(path[j]!)) j++;
      const name = path.slice(i + 1, j);
      if (name === '') return `empty parameter name at offset ${i}`;
      if (!NAME_RE.test(name)) return `invalid parameter name "${name}" (must match ^[A-Za-z_][A-Za-z0-9_]*$)`;
      if (paramNames.includes(name)) return `duplicate parameter name "${name}"`;
      let regexSrc: string | null = null;
      if (path[j] === '(') {
        const close = findRegexEnd(path, j);
        if (close < 0) return `unbalanced parentheses in the regex of ":${name}"`;
        regexSrc = path.slice(j + 1, close);
        if (regexSrc === '') return `empty regex for ":${name}"`;
        const re = compileSegmentRegex(regexSrc);
        if (typeof re === 'string') return `invalid regex for ":${name}": ${re}`;
        j = close + 1;
      }
      if (j < len && path[j] !== '/') {
        return `parameter ":${name}" must be a whole segment (unexpected "${path[j]}" at offset ${j})`;
      }
      paramNames.push(name);
      segments.push(
        regexSrc === null
          ? { kind: SEG_PARAM, text: '', name }
          : { kind: SEG_REGEX, text: regexSrc, name },
      );
      i = j;
    } else if (c === '*' && (i + 1 === len || path[i + 1] === '/')) {
      if (i + 1 !== len) return '"*" must be the last segment';
      segments.push({ kind: SEG_WILDCARD, text: '', name: '*' });
      paramNames.push('*');
      i = i + 1;
    } else {
      let j = i;
      while (j < len && path[j] !== '/') j++;
      const lit = path.slice(i, j);
      if (lit === '') {
        if (j !== len) return `empty segment at offset ${i} ("//" never matches a normalised path)`;
      } else {
        if (lit.includes('*')) return `"*" is only allowed as the whole last segment (segment "${lit}")`;
        if (lit.includes('(') || lit.includes(')')) {
          return `parentheses are only allowed right after a parameter name (segment "${lit}")`;
        }
        if (lit === '.' || lit === '..') return `dot segment "${lit}" is not allowed`;
      }
      let canonical = '';
      if (lit !== '') {
        const norm = normalizePath('/' + lit);
        if (norm === null) return `invalid character or escape in segment "${lit}"`;
        canonical = norm.slice(1);
        if (canonical === '' || canonical.includes('/')) return `segment "${lit}" is a dot segment once decoded`;
      }
      segments.push({ kind: SEG_STATIC, text: canonical, name: '' });
      i = j;
    }
    if (i >= len) break;
    // path[i] === '/': next segment.
    i++;
    if (i === len) {
      // Trailing slash: an empty last static segment.
      segments.push({ kind: SEG_STATIC, text: '', name: '' });
      break;
    }
  }
  const shapeKey = JSON.stringify(segments.map((s) => [s.kind, s.text]));
  return { segments, paramNames, shapeKey };
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

/** Split parsed segments into tree tokens: `/repos/:o/x` -> "/repos/", param, "/x". */
export function toTokens(p: ParsedPattern): PatternToken[] {
  const tokens: PatternToken[] = [];
  let buf = '';
  for (const s of p.segments) {
    buf += '/';
    if (s.kind === SEG_STATIC) {
      buf += s.text;
      continue;
    }
    tokens.push({ kind: SEG_STATIC, text: buf });
    buf = '';
    if (s.kind === SEG_REGEX) {
      tokens.push({ kind: SEG_REGEX, text: s.text, regex: compileSegmentRegex(s.text) as RegExp });
    } else if (s.kind === SEG_PARAM) {
      tokens.push({ kind: SEG_PARAM });
    } else {
      tokens.push({ kind: SEG_WILDCARD });
    }
  }
  if (buf !== '') tokens.push({ kind: SEG_STATIC, text: buf });
  return tokens;
}
