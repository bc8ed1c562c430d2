/**
 * Cursor pagination. A cursor is opaque to clients (base64url JSON naming
 * the listing and where to continue), and keyset-based: routes and
 * upstreams continue after an id in id order, the audit log before a
 * sequence number, so a page never repeats or skips entries because the
 * config changed or records were added in between.
 */
import { AdminErrors, ApiError } from './errors.js';

export type CursorKind = 'routes' | 'upstreams' | 'audit';

export function encodeCursor(kind: CursorKind, after: string | number): string {
  return Buffer.from(JSON.stringify({ k: kind, a: after }), 'utf8').toString('base64url');
}

function bad(why: string): ApiError {
  return new ApiError(AdminErrors.INVALID_QUERY, `query parameter cursor: ${why}; pass the "next" value of the previous page unchanged, or omit it for the first page`, { parameter: 'cursor' });
}

export function decodeCursor(kind: 'audit', cursor: string): number;
export function decodeCursor(kind: 'routes' | 'upstreams', cursor: string): string;
export function decodeCursor(kind: CursorKind, cursor: string): string | number {
  let parsed: unknown;
  try {
    if (!/^[A-Za-z0-9_-]+$/.test(cursor)) throw new Error('not base64url');
    parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    throw bad('not a cursor issued by this API');
  }
  const p = parsed as { k?: unknown; a?: unknown } | null;
  if (p === null || typeof p !== 'object') throw bad('not a cursor issued by this API');
  if (p.k !== kind) throw bad(`this cursor belongs to another listing (${typeof p.k === 'string' ? p.k : 'unknown'})`);
  const want = kind === 'audit' ? 'number' : 'string';
  if (typeof p.a !== want) throw bad('not a cursor issued by this API');
  return p.a as string | number;
}

/** One page of `items` (already sorted by `key`), after the key in `cursor`. */
export function pageByKey<T>(items: readonly T[], key: (t: T) => string, kind: 'routes' | 'upstreams', limit: number, cursor: string | undefined) {
  const after = cursor === undefined ? null : decodeCursor(kind, cursor);
  const start = after === null ? 0 : lowerBound(items, key, after);
  const page = items.slice(start, start + limit);
  const more = start + limit < items.length;
  return { items: page, next: more && page.length > 0 ? encodeCursor(kind, key(page[page.length - 1]!)) : null };
}

/** First index whose key sorts after `after`. */
function lowerBound<T>(items: readonly T[], key: (t: T) => string, after: string): number {
  let lo = 0;
  let hi = items.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compareKeys(key(items[mid]!), after) <= 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Code-unit order: stable across locales, the same in every process. */
export function compareKeys(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
