/**
 * Small helpers shared by the config modules: readable paths, did-you-mean
 * suggestions, value descriptions for messages, deep freeze.
 */

/** One problem with a config: where (`routes[3].upstream`) and what. */
export interface ConfigError {
  path: string;
  message: string;
}

export type PathSegment = string | number;

const PLAIN_KEY = /^[A-Za-z_$][\w$-]*$/;

/**
 * `['routes', 3, 'upstream']` -> `routes[3].upstream`. Keys that would be
 * ambiguous in a dotted path (spaces, dots, leading digits) are quoted:
 * `set["x y"]`.
 */
export function formatPath(segments: readonly PathSegment[]): string {
  let out = '';
  for (const s of segments) {
    if (typeof s === 'number') out += `[${s}]`;
    else if (PLAIN_KEY.test(s)) out += out === '' ? s : `.${s}`;
    else out += `[${JSON.stringify(s)}]`;
  }
  return out;
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Optimal string alignment distance (Levenshtein + adjacent transposition). */
export function editDistance(a: string, b: string): number {
  const n = a.length;
  const m = b.length;
  if (n === 0) return m;
  if (m === 0) return n;
  let prev2: number[] = new Array<number>(m + 1).fill(0);
  let prev: number[] = Array.from({ length: m + 1 }, (_, j) => j);
  let cur: number[] = new Array<number>(m + 1).fill(0);
  for (let i = 1; i <= n; i++) {
    cur[0] = i;
    for (let j = 1; j <= m; j++) {
      const cost = a.charCodeAt(i - 1) === b.charCodeAt(j - 1) ? 0 : 1;
      let d = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, prev2[j - 2]! + 1);
      cur[j] = d;
    }
    [prev2, prev, cur] = [prev, cur, prev2];
  }
  return prev[m]!;
}

/**
 * The closest candidate when it is close enough to be a plausible typo
 * (case-insensitive; at most a third of the length, at least 1 edit), else
 * null.
 */
export function didYouMean(input: string, candidates: Iterable<string>): string | null {
  const lower = input.toLowerCase();
  let best: string | null = null;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = editDistance(lower, c.toLowerCase());
    const limit = Math.max(1, Math.floor(Math.max(lower.length, c.length) / 3));
    if (d <= limit && d < bestD) {
      best = c;
      bestD = d;
    }
  }
  return best;
}

/** ` (did you mean "x"?)` or ``. */
export function suggestion(input: string, candidates: Iterable<string>): string {
  const s = didYouMean(input, candidates);
  return s === null ? '' : ` (did you mean ${JSON.stringify(s)}?)`;
}

/** Credential-looking text: an auth scheme with its credentials, or a name/value that says secret. */
const LOOKS_SECRET = /\b(?:bearer|basic|digest|token)\s+\S{4,}|(?:passw(?:or)?d|secret|token|api[-_]?key|authorization|cookie)\s*[:=]/i;

/** Short rendering of a value for "got ..." in messages. */
export function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') {
    // Messages quote values back ("got ..."), and they reach logs and the
    // admin API: a value that looks like a credential, wherever it was
    // written (an Authorization header given as a string where a mapping
    // goes, say), is described, not shown (common/config/redact.ts hides
    // the values of secret keys themselves).
    if (LOOKS_SECRET.test(v)) return `a string of ${v.length} characters (not shown: it looks like a credential)`;
    // A URL's credentials (`user:pw@host`, with or without a scheme) are not shown either.
    const shown = v.replace(/^([a-z][a-z0-9+.-]*:\/\/)?[^@/?#\s]*:[^@/?#\s]*@/i, (_m, scheme: string | undefined) => `${scheme ?? ''}[redacted]@`);
    const s = shown.length > 60 ? `${shown.slice(0, 57)}...` : shown;
    return JSON.stringify(s);
  }
  return String(v);
}

export function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const k of Object.keys(value)) deepFreeze((value as Record<string, unknown>)[k]);
  }
  return value;
}

/** Whether node:net can share one port between the worker threads (`reusePort`, Node 22.12+ and 23.1+). */
export function netReusePort(version: string = process.versions.node): boolean {
  const [major, minor] = version.split('.').map(Number) as [number, number];
  return major > 23 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
}

/**
 * Whether the node backend can serve from several worker threads: on Node
 * every version can (each worker binds with `reusePort` on 22.12+; before,
 * the engine hands each worker a copy of one listening socket:
 * engine/shared-listener.ts); under Bun the node:net server serves one.
 */
export function nodeBackendShardable(): boolean {
  return typeof (process.versions as Record<string, string | undefined>)['bun'] !== 'string';
}
