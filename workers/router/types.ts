/**
 * The router's contract. The data plane calls `find` once per request, so
 * everything about it is shaped for the hot path: no allocation on a static
 * hit, one reused result object, no config lookups.
 */
import type { RouteMatchPredicates } from '../../common/config/types.js';

export interface RouteInput<T> {
  id: string;
  /** `*`, `api.example.com` or `*.example.com` (lowercase). */
  host: string;
  /** Static segments, `:name`, `:name(regex)`, trailing `*` (named `*` in params). */
  path: string;
  /** Uppercase methods; empty = any. */
  methods: readonly string[];
  /** Higher wins before specificity is considered (default 0). */
  priority: number;
  match: RouteMatchPredicates;
  data: T;
}

export const MATCH_FOUND = 1;
export const MATCH_METHOD_NOT_ALLOWED = 2;

/**
 * Reused between calls of one router (one thread, synchronous use): read
 * what you need before the next `find`.
 */
export interface MatchResult<T> {
  kind: typeof MATCH_FOUND | typeof MATCH_METHOD_NOT_ALLOWED;
  /** The route's data; null for 405. */
  data: T | null;
  /** Parameter names of the matched route, in path order (`*` for a wildcard). */
  paramNames: readonly string[];
  /** Parameter values in the same order, as they appear in the normalised path. */
  params: readonly string[];
  /** For 405: the `Allow` header value, e.g. `GET, HEAD`. */
  allow: string;
}

export interface Router<T> {
  /**
   * host: lowercase, port removed (see normalizeHost); path: already
   * normalised (see normalizePath); headers: flat [name, value, ...] with
   * lowercase names; query: the raw query string without `?`.
   * Returns null when nothing matches (404).
   */
  find(method: string, host: string, path: string, headers: readonly string[], query: string): MatchResult<T> | null;
  readonly size: number;
}
