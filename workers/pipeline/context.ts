/**
 * The policy pipeline: what a route's policies run on and how they answer.
 *
 * A route's policies are compiled once per config version into an array
 * (compile.ts), or null when the route has none: such a route proxies
 * exactly as the plain data plane does, at the same cost. The transports
 * run the array in the request handler, after routing and before the
 * upstream request is built (shared/DESIGN.md, "The policy pipeline"):
 *
 *   ctx.reset(...); for each policy: policy.onRequest(ctx) -> CONTINUE | REFUSED | PENDING
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
 *
 * The slow path (a decision that needs I/O: a strict rate limit's Redis
 * round trip). A policy returns PENDING after putting a PendingDecision in
 * ctx.pending; the pipeline goes on with the next policies synchronously
 * (so a decision that waits is always taken after every synchronous one of
 * the route; at most one policy per request may go PENDING). Then:
 *  - a later policy, or the transport itself, refuses the request before
 *    the upstream request is built: the transport calls `cancel()` (the
 *    pending policy gives back what it took; no I/O was started);
 *  - otherwise the transport calls `begin(waiter)` once everything
 *    synchronous is done, and the decision calls `waiter.decided(d)`
 *    exactly once, later (never from inside begin), with `d.result`
 *    CONTINUE (d.responseHeaders and d.requestLines to add) or REFUSED
 *    (d.refusal, d.refusalMessage, d.refusalHeaders as above);
 *  - the request ends first (client gone, body too large, the transport's
 *    guard of `guardMs`): the transport calls `abandon()`; the decision
 *    still completes on its own but tells no one.
 * A route whose policies never return PENDING pays nothing for this: the
 * transports test ctx.pending once per request that has policies.
 *
 * A decision that later policies depend on (authentication: a rate limit
 * `by: consumer` needs the consumer) is `resumable`: when it goes PENDING
 * the pipeline stops there and hands it the rest (`capture`): it copies what
 * it needs of the request (the context is reused by the next request) and,
 * once its own decision is taken, runs the remaining policies on its copy;
 * one of those may go PENDING in turn (a strict rate limit), and the
 * resumable decision settles when that one does. The transport sees a
 * single pending decision either way.
 */
import { Errors, type GatewayErrorDef } from '../../common/errors.js';
import type { WsCredential } from '../policies/auth/credential.js';

/** headerOnce's answer for a field sent on more than one line (no header value holds a NUL). */
export const REPEATED = '\u0000repeated';

export const CONTINUE = 0;
export const REFUSED = 1;
/** The decision is not taken yet: ctx.pending holds it (see above). */
export const PENDING = 2;

export interface Policy {
  /** For logs and metrics. */
  readonly name: string;
  /** CONTINUE, REFUSED (then ctx.refusal is set) or PENDING (then ctx.pending is set). Must not throw on any input. */
  onRequest(ctx: RequestContext): number;
}

/** Where a policy writes a refusal or the headers of an admission: the context, or a pending decision. */
export interface PolicyOutcome {
  refusal: GatewayErrorDef | null;
  refusalMessage: string | null;
  readonly refusalHeaders: string[];
  readonly responseHeaders: string[];
  requestLines: string;
  refusedBy: string;
}

/** Who waits for a pending decision (the transport's exchange). */
export interface DecisionWaiter {
  /** Called once, outside the call that began the decision; `d.result` is CONTINUE or REFUSED. */
  decided(d: PendingDecision): void;
}

/**
 * A decision taken asynchronously (see the module comment). The outputs
 * mean what they mean on RequestContext; `result` is PENDING until the
 * waiter is told. Subclasses implement `run` (start the I/O) and `cancel`,
 * and call `settle` once.
 */
export abstract class PendingDecision implements PolicyOutcome {
  result = PENDING;
  refusal: GatewayErrorDef | null = null;
  refusalMessage: string | null = null;
  readonly refusalHeaders: string[] = [];
  readonly responseHeaders: string[] = [];
  requestLines = '';
  refusedBy = '';
  /** The consumer an authentication decision found (RequestContext.consumerId), '' for none. */
  consumerId = '';
  /** A WebSocket upgrade's key as an authentication decision admitted it, for the tunnel (policies/auth/credential.ts); null otherwise. */
  credential: WsCredential | null = null;
  /** The longest this decision can take (ms), timeouts included: past it the transport gives up on it (503 guardError). */
  readonly guardMs: number;
  /** What the transport answers (503, Retry-After: 1) when it gives up on the decision at guardMs. */
  guardError: GatewayErrorDef = Errors.RATE_LIMIT_STORE_UNAVAILABLE;
  private waiter: DecisionWaiter | null = null;
  private begun = false;

  constructor(guardMs: number) {
    this.guardMs = guardMs;
  }

  /** Starts the decision; `waiter.decided(this)` follows, asynchronously. Once. */
  begin(waiter: DecisionWaiter): void {
    if (this.begun) throw new Error('a pending decision was begun twice');
    this.begun = true;
    this.waiter = waiter;
    this.run();
  }

  /** Later policies wait for this decision: the pipeline stops at it and calls `capture` (see the module comment). */
  readonly resumable: boolean = false;

  /**
   * A resumable decision: the request's context as the handler had it (to
   * copy from; it is reused once the handler returns), and the policies
   * still to run after this decision: policies[from..].
   */
  capture(_ctx: RequestContext, _policies: readonly Policy[], _from: number): void {}

  /** The outcome is no longer wanted (the request ended); the decision completes unseen. */
  abandon(): void {
    this.waiter = null;
  }

  /** The request was refused before `begin`: give back whatever was taken. Never tells a waiter. */
  abstract cancel(): void;

  /** Starts the asynchronous part. Must not call `settle` synchronously. */
  protected abstract run(): void;

  /** Records the result and tells the waiter, if one still waits. */
  protected settle(result: number): void {
    this.result = result;
    const w = this.waiter;
    this.waiter = null;
    if (w !== null) w.decided(this);
  }
}

export class RequestContext implements PolicyOutcome {
  // -- inputs, set by the transport before the policies run
  /** The shared clock (common/rate-limit-layout.ts), ms. */
  now = 0;
  routeId = '';
  routeSlot = 0;
  /** Upper case. */
  method = 'GET';
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
  /** Set with PENDING: the decision still to come (see the module comment). */
  pending: PendingDecision | null = null;
  /** The authenticated consumer (auth policy), '' when none: rate limits `by: consumer`, the access log. */
  consumerId = '';

  /**
   * Runs a route's policies in order for one request, with this context's
   * outputs cleared and its inputs set from the arguments (what every
   * server backend does, in one place). Returns REFUSED at the first
   * refusal (a decision a policy left pending is cancelled first: what it
   * took is given back; the refusal is in `refusal`, `refusalHeaders`,
   * `refusalMessage`), else CONTINUE (then `pending` may hold a decision
   * still to come).
   */
  run(
    policies: readonly Policy[], now: number, routeId: string, routeSlot: number, method: string,
    clientIp: string, xff: string | null, headers: readonly string[], query: string,
  ): number {
    this.reset();
    this.now = now;
    this.routeId = routeId;
    this.routeSlot = routeSlot;
    this.method = method;
    this.clientIp = clientIp;
    this.xff = xff;
    this.headers = headers;
    this.query = query;
    return this.runFrom(policies, 0);
  }

  /** Runs policies[from..] on this context as it is (outputs kept): what `run` does after setting it up, and what a resumable decision does on its copy. */
  runFrom(policies: readonly Policy[], from: number): number {
    for (let i = from; i < policies.length; i++) {
      const r = policies[i]!.onRequest(this);
      if (r === REFUSED) {
        this.pending?.cancel();
        return REFUSED;
      }
      if (r === PENDING && this.pending!.resumable) {
        this.pending!.capture(this, policies, i + 1);
        return CONTINUE;
      }
    }
    return CONTINUE;
  }

  /** Clears the outputs; the transport then sets the inputs. */
  reset(): void {
    this.pending = null;
    this.refusal = null;
    this.refusalMessage = null;
    this.refusalHeaders.length = 0;
    this.responseHeaders.length = 0;
    this.requestLines = '';
    this.refusedBy = '';
    this.consumerId = '';
  }

  /**
   * The value of a request header's last line (lowercase name), or null.
   * Last, not first or all of them joined: a proxy in front that appends
   * the header writes the last line, and whatever a client puts before it
   * (a line of its own, varied per request to get a fresh key) is not read,
   * as the right-most X-Forwarded-For hop is the one trusted.
   */
  header(name: string): string | null {
    const h = this.headers;
    for (let i = h.length - 2; i >= 0; i -= 2) if (h[i] === name) return h[i + 1]!;
    return null;
  }

  /**
   * The value of a request header sent on exactly one line (lowercase
   * name); null when absent, REPEATED when sent more than once. For fields
   * that must be unambiguous (a credential, an Origin checked against a
   * key's restrictions): a proxy in front and the gateway could otherwise
   * read different lines, and the Bun backend sees them joined.
   */
  headerOnce(name: string): string | null {
    const h = this.headers;
    let found: string | null = null;
    for (let i = 0; i < h.length; i += 2) {
      if (h[i] !== name) continue;
      if (found !== null) return REPEATED;
      found = h[i + 1]!;
    }
    return found;
  }

  /** Whether query parameter `name` appears more than once (compared as queryParam does). */
  queryRepeated(name: string): boolean {
    const q = this.query;
    let n = 0;
    for (let at = 0; at <= q.length; at = param.end + 1) {
      paramAt(q, at);
      if (queryNameIs(q, at, param.nameEnd, name) && ++n > 1) return true;
    }
    return false;
  }

  /**
   * The first value of a query parameter, percent-decoded (`+` as space, as
   * forms send it), or null when absent. Undecodable escapes are kept as
   * sent. Decoding matters for keys: `%41` and `A` must be one client.
   */
  queryParam(name: string): string | null {
    const q = this.query;
    if (q === '') return null;
    for (let at = 0; at <= q.length; at = param.end + 1) {
      paramAt(q, at);
      const { nameEnd, end } = param;
      if (queryNameIs(q, at, nameEnd, name)) return decodeQueryValue(nameEnd === end ? '' : q.slice(nameEnd + 1, end));
    }
    return null;
  }
}

/** Where the query parameter found by paramAt ends: its name at `nameEnd`, itself at `end` (one scratch object: no allocation). */
export const param = { nameEnd: 0, end: 0 };

/** The bounds of the query parameter starting at `at` (`&`-separated, `name[=value]`) into `param`. */
export function paramAt(q: string, at: number): void {
  let end = q.indexOf('&', at);
  if (end === -1) end = q.length;
  const eq = q.indexOf('=', at);
  param.nameEnd = eq !== -1 && eq < end ? eq : end;
  param.end = end;
}

/**
 * Whether the parameter name q[at, end) is `name`: as sent, or once
 * percent-decoded (`api%5Fkey` is `api_key`, as the upstream's framework
 * will read it). The decoding runs only for a name holding `%` or `+`.
 */
export function queryNameIs(q: string, at: number, end: number, name: string): boolean {
  if (end - at === name.length && q.startsWith(name, at)) return true;
  const raw = q.slice(at, end);
  return (raw.indexOf('%') !== -1 || raw.indexOf('+') !== -1) && decodeQueryValue(raw) === name;
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
