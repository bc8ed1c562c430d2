/**
 * What a compiled tree looks like to the router: one function per tree
 * (codegen.ts generates it, interpret.ts is the data-driven fallback), and
 * the little state both share with the router for the current lookup.
 */
import type { MatchResultImpl } from './node.js';

/**
 * Searches one tree. `mb` is the method bit; returns the matching route's
 * result (params filled in) or null, OR-ing into `state.allow` the
 * configured methods of routes that matched everything but the method.
 */
export type Matcher = (
  path: string,
  len: number,
  mb: number,
  headers: readonly string[],
  query: string,
) => MatchResultImpl<unknown> | null;

/** Per-router scratch for one lookup (routers are used by one thread, synchronously). */
export class SearchState {
  allow = 0;
  best: MatchResultImpl<unknown> | null = null;
  bestPriority = 0;
}
