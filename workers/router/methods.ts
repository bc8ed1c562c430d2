/**
 * Methods as bits, so "does this route accept the method" is one AND.
 *
 * Bits 0-8 are the standard methods, then any other method a route names,
 * then one bit (index `names.length`) for every method no route names: only
 * routes without a method list accept it. A route's `accept` mask is its methods plus HEAD when it
 * lists GET; its `allow` mask is what the config lists (the Allow header
 * shows only configured methods).
 */

export const STANDARD_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'CONNECT', 'TRACE'] as const;
export const M_GET = 0;
export const M_HEAD = 1;
/** Every bit 0..30: a route without a method list. */
export const ANY_MASK = 0x7fffffff;
/** Standard + extras must leave room for the "other" bit below bit 31. */
const MAX_EXTRA = 30 - STANDARD_METHODS.length;
const METHOD_TOKEN = /^[A-Z][A-Z0-9_-]*$/;
const MAX_ALLOW_CACHE = 256;

export class MethodTable {
  /** Non-standard methods named by some route -> bit index. */
  readonly #extras = new Map<string, number>();
  /** Method name per bit index (standard + extras). */
  readonly names: string[] = [...STANDARD_METHODS];
  readonly #allowCache = new Map<number, string>();

  /** Bit index of a configured method name, registering extras; string = error. */
  register(method: string): number | string {
    const std = standardIndex(method);
    if (std >= 0) return std;
    if (typeof method !== 'string' || !METHOD_TOKEN.test(method)) return `invalid method ${JSON.stringify(method)}`;
    const known = this.#extras.get(method);
    if (known !== undefined) return known;
    if (this.#extras.size >= MAX_EXTRA) return `too many distinct non-standard methods (max ${MAX_EXTRA})`;
    const idx = STANDARD_METHODS.length + this.#extras.size;
    this.#extras.set(method, idx);
    this.names.push(method);
    return idx;
  }

  /** Bit index of a request method (`names.length` when no route names it). */
  index(method: string): number {
    const std = standardIndex(method);
    if (std >= 0) return std;
    if (this.#extras.size === 0) return this.names.length;
    const x = this.#extras.get(method);
    return x === undefined ? this.names.length : x;
  }

  /** Length of a per-method table: every named method plus the "other" slot. */
  get tableSize(): number {
    return this.names.length + 1;
  }

  /** `Allow` header value for a mask of configured methods: sorted, comma-separated. */
  allowString(mask: number): string {
    let s = this.#allowCache.get(mask);
    if (s !== undefined) return s;
    const list: string[] = [];
    for (let i = 0; i < this.names.length; i++) if ((mask & (1 << i)) !== 0) list.push(this.names[i]!);
    list.sort();
    s = list.join(', ');
    // Masks come from the config, never from request data, but bound it anyway.
    if (this.#allowCache.size < MAX_ALLOW_CACHE) this.#allowCache.set(mask, s);
    return s;
  }
}

function standardIndex(method: string): number {
  switch (method) {
    case 'GET': return 0;
    case 'HEAD': return 1;
    case 'POST': return 2;
    case 'PUT': return 3;
    case 'DELETE': return 4;
    case 'PATCH': return 5;
    case 'OPTIONS': return 6;
    case 'CONNECT': return 7;
    case 'TRACE': return 8;
    default: return -1;
  }
}
