/**
 * The policy pipeline: what a route's policies run on and how they answer.
 *
 * A route's policies are compiled once per config version into an array
 * (compile.ts), or null when the route has none: such a route proxies
 * exactly as the plain data plane does, at the same cost. The transports
 * run the array in the request handler, after routing and before the
 * upstream request is built (shared/DESIGN.md, "The policy pipeline"):
 *
 *   ctx.reset(...); for each policy: policy.onRequest(ctx) -> CONTINUE | REFUSED
 *
 * A policy's fast path is synchronous. It can
 *  - answer the request itself: REFUSED, with ctx.refusal (a catalogue
 *    error), ctx.refusalMessage (its message of the moment, or null for the
 *    catalogue's) and ctx.refusalHeaders (name/value pairs: Retry-After...);
 *  - add request headers: ctx.requestLines, raw `name: value\r\n` lines
 *    appended to the upstream head after the client's headers;
 *  - add response headers: ctx.responseHeaders, name/value pairs written
 *    on the proxied response;
 *  - record why it decided: ctx.refusedBy (the policy's name), for logs.
 *
 * One RequestContext per thread, reused for every request (no allocation
 * per request); anything a policy wants to keep past the handler it copies.
 */
import type { GatewayErrorDef } from '../../common/errors.js';

export const CONTINUE = 0;
export const REFUSED = 1;

export interface Policy {
  /** For logs and metrics. */
  readonly name: string;
  /** CONTINUE or REFUSED (then ctx.refusal is set). Must not throw on any input. */
  onRequest(ctx: RequestContext): number;
}

export class RequestContext {
  // -- inputs, set by the transport before the policies run
  /** The shared clock (common/rate-limit-layout.ts), ms. */
  now = 0;
  routeId = '';
  routeSlot = 0;
  /** The address the connection comes from. */
  clientIp = '';
  /** X-Forwarded-For as received (all lines joined), or null. */
  xff: string | null = null;
  /** Request headers as name/value pairs, names lowercase (the transport's array: read only). */
  headers: readonly string[] = [];
  /** The raw query string (no `?`). */
  query = '';
  // -- outputs
  refusal: GatewayErrorDef | null = null;
  refusalMessage: string | null = null;
  readonly refusalHeaders: string[] = [];
  readonly responseHeaders: string[] = [];
  requestLines = '';
  refusedBy = '';

  /** Clears the outputs; the transport then sets the inputs. */
  reset(): void {
    this.refusal = null;
    this.refusalMessage = null;
    this.refusalHeaders.length = 0;
    this.responseHeaders.length = 0;
    this.requestLines = '';
    this.refusedBy = '';
  }

  /** The first value of a request header (lowercase name), or null. */
  header(name: string): string | null {
    const h = this.headers;
    for (let i = 0; i < h.length; i += 2) if (h[i] === name) return h[i + 1]!;
    return null;
  }

  /**
   * The first value of a query parameter, percent-decoded (`+` as space, as
   * forms send it), or null when absent. Undecodable escapes are kept as
   * sent. Decoding matters for keys: `%41` and `A` must be one client.
   */
  queryParam(name: string): string | null {
    const q = this.query;
    if (q === '') return null;
    let at = 0;
    while (at <= q.length) {
      let end = q.indexOf('&', at);
      if (end === -1) end = q.length;
      const eq = q.indexOf('=', at);
      const nameEnd = eq !== -1 && eq < end ? eq : end;
      if (nameEnd - at === name.length && q.startsWith(name, at)) {
        const raw = nameEnd === end ? '' : q.slice(nameEnd + 1, end);
        return decodeQueryValue(raw);
      }
      at = end + 1;
    }
    return null;
  }
}

function decodeQueryValue(raw: string): string {
  if (raw.indexOf('%') === -1 && raw.indexOf('+') === -1) return raw;
  const spaced = raw.replace(/\+/g, ' ');
  try {
    return decodeURIComponent(spaced);
  } catch {
    return spaced;
  }
}
