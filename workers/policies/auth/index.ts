/**
 * The authentication policy of a route with `auth` (issue 12; README,
 * Identity): API keys, read from the configured sources in order, checked
 * offline (format and checksum: common/identity/keys.ts), then against the
 * worker's cache (client.ts), and on a miss against the identity store
 * through the admin thread. The decision itself is common/identity/decide.ts.
 *
 * Answers (RFC 9110 15.5.2 / 15.5.4; the challenge per RFC 6750 3):
 *  - no key                              401 credentials_missing
 *  - malformed key or wrong checksum     401 key_malformed   (no lookup)
 *  - a key the store does not know       401 key_invalid     (then remembered: no lookup)
 *  - revoked / consumer suspended / expired (or past its rotation grace)
 *                                        401 key_revoked, consumer_suspended, key_expired
 *  - a restriction (address, time, origin) 403 key_restricted
 *  - a scope the route requires, missing 403 insufficient_scope
 *  - grants: required and none applies   403 no_grant
 *  - the store does not answer in identity.lookupTimeoutMs (and no stale
 *    entry): 503 identity_store_unavailable, Retry-After: 1
 * Every 401 carries WWW-Authenticate (`Bearer realm="turnpike"` when the
 * Authorization header is a source, else `ApiKey realm="turnpike"`), with
 * error="invalid_token" when a key was presented; insufficient_scope adds
 * error="insufficient_scope" and the scopes required.
 *
 * Admitted: the upstream gets the consumer's id and name and the route id
 * (identity.headers; incoming copies are removed on every route by the
 * header plans), a rotated key in its grace period gets Deprecation and
 * Sunset on the response (RFC 9745, RFC 8594), and ctx.consumerId is set
 * for the policies after it (rate limits by: consumer) and the access log.
 *
 * WebSocket upgrades (issue 14; README, WebSockets): a `subprotocol:<prefix>`
 * source reads the Sec-WebSocket-Protocol offer the transport put in
 * `upgradeOffer` around the policies of an upgrade it will tunnel; a plain
 * HTTP request (upgradeOffer.protocols null) never has a credential there,
 * whatever its Sec-WebSocket-Protocol header says. The transport then
 * offers upstream what offerUpstream() leaves: never a credential entry.
 *
 * Hot path, with a warm cache: the sources are read (a header lookup), one
 * Map get, the checks of decide() and two string appends; no allocation
 * but the request-line concatenation. A miss is a resumable PendingDecision
 * (workers/pipeline/context.ts): the later policies run once it is known.
 */
import type net from 'node:net';
import type { IdentityConfig, KeySource, RouteAuth } from '../../../common/config/types.js';
import { Errors, type GatewayErrorDef } from '../../../common/errors.js';
import {
  AUTH_CONSUMER_SUSPENDED, AUTH_INSUFFICIENT_SCOPE, AUTH_KEY_EXPIRED, AUTH_KEY_RESTRICTED, AUTH_KEY_REVOKED, AUTH_NO_GRANT, AUTH_OK,
  decide, restrictionFailed, type CompiledKey,
} from '../../../common/identity/decide.js';
import { checkKeyFormat, KEY_PREFIX, MAX_KEY_LENGTH } from '../../../common/identity/keys.js';
import type { KeyAnswer } from '../../../common/identity/wire.js';
import { G_AUTH_CACHE_HITS, G_AUTH_CACHE_MISSES, G_AUTH_NEGATIVE_HITS, G_AUTH_ROTATED_KEY_REQUESTS } from '../../../common/metrics-layout.js';
import { CONTINUE, PENDING, PendingDecision, REFUSED, REPEATED, RequestContext, param, paramAt, queryNameIs, type DecisionWaiter, type Policy, type PolicyOutcome } from '../../pipeline/context.js';
import { clientAddress } from '../rate-limit/keys.js';
import type { CachedKey, IdentityClient } from './client.js';
import { WsCredential, validUntil } from './credential.js';

/** What the auth policies of a worker share. */
export interface AuthEnv {
  /** The worker's caches and line to the admin thread; null outside a worker (validation): every miss is unavailable. */
  client: IdentityClient | null;
  identity: IdentityConfig;
  metrics: Float64Array | null;
  trusted: net.BlockList | null;
  /** The longest a later policy of the route may wait after the lookup (a strict rate limit: redis.commandTimeoutMs + its slack), ms. */
  laterGuardMs: number;
}

const REFUSALS: readonly GatewayErrorDef[] = [
  Errors.INTERNAL, // AUTH_OK: never used
  Errors.KEY_REVOKED, Errors.CONSUMER_SUSPENDED, Errors.KEY_EXPIRED, Errors.KEY_RESTRICTED, Errors.INSUFFICIENT_SCOPE, Errors.NO_GRANT,
];

const REPEATED_MESSAGE = 'The request carries its API key more than once (a repeated credential header, query parameter or subprotocol entry); send exactly one.';

/** Slack past lookupTimeoutMs before the transport's own guard gives up (the lookup's timer settles first). */
const GUARD_SLACK_MS = 1_000;

/**
 * The credential of an Authorization value with the `Bearer` or `ApiKey`
 * scheme (case-insensitive, RFC 9110 11.1), then spaces: '' when the scheme
 * comes alone (a key was meant but is missing: key_malformed), null for
 * another scheme (Basic...: not ours, the next source is read).
 */
function fromAuthorization(v: string): string | null {
  if (v.length < 6 || (v.length > 6 && v.charCodeAt(6) !== 32)) return null;
  // Compared in place, ignoring case: no lowercased copy per request.
  if (!schemeIs(v, 'bearer') && !schemeIs(v, 'apikey')) return null;
  return v.slice(6).trim();
}

/** Whether v starts with `scheme` (lowercase letters) in any case. */
function schemeIs(v: string, scheme: string): boolean {
  for (let i = 0; i < scheme.length; i++) if ((v.charCodeAt(i) | 0x20) !== scheme.charCodeAt(i)) return false;
  return true;
}

/**
 * The Sec-WebSocket-Protocol offer (entries in order, trimmed, none empty)
 * of the WebSocket upgrade whose route policies run now, or null: a plain
 * HTTP request. Set by the transport's upgrade handlers just around
 * `ctx.run` (uws-server.ts upgrade(): uWS and node backends; bun-server.ts
 * handle() for a handshake it will tunnel) and set back to null in a
 * `finally`: the policies read their sources synchronously, in `run`, and
 * a worker runs one request's policies at a time.
 *
 * `credential`: set by the auth policy when it admits such an upgrade with
 * a cached key (a lookup brings it on its PendingDecision instead), for the
 * tunnel, which closes when that key stops working (credential.ts). The
 * transport reads it after `ctx.run` and sets it back to null with
 * `protocols`. A plain request never sets it: no cost on the HTTP path.
 */
export const upgradeOffer: { protocols: readonly string[] | null; credential: WsCredential | null } = { protocols: null, credential: null };

/** The entries of a Sec-WebSocket-Protocol value (RFC 6455 4.1: a comma-separated list of tokens), trimmed, empty ones dropped. null or '': none. */
export function parseProtocols(value: string | null): string[] {
  const out: string[] = [];
  if (value !== null && value !== '') for (const p of value.split(',')) if (p.trim() !== '') out.push(p.trim());
  return out;
}

/** Strictly base64url (RFC 4648 5) without padding: the alphabet only, and no length that leaves 6 bits over. */
const BASE64URL = /^[A-Za-z0-9_-]*$/;

/**
 * The credential of a `subprotocol:<prefix>` source in an upgrade's offer:
 * the rest of the one entry starting with the prefix ('' when the entry is
 * the prefix alone: key_malformed), base64url-decoded for a `base64url.`
 * prefix ('' when it is not valid base64url: key_malformed; never the text
 * as sent, which could be a key in the clear), REPEATED when two entries
 * carry one, null when none does.
 */
function fromOffer(offer: readonly string[], src: { prefix: string; base64url: boolean }): string | null {
  let v: string | null = null;
  for (let i = 0; i < offer.length; i++) {
    const p = offer[i]!;
    if (!p.startsWith(src.prefix)) continue;
    if (v !== null) return REPEATED;
    v = p.slice(src.prefix.length);
  }
  if (v === null || !src.base64url || v === '') return v;
  return BASE64URL.test(v) && v.length % 4 !== 1 ? Buffer.from(v, 'base64url').toString('latin1') : '';
}

/**
 * What of a WebSocket upgrade's offer goes upstream, for a route whose
 * policies are `policies`: without every entry a `subprotocol:` key source
 * of the route's auth reads (whether it was the credential used or not),
 * unless the route forwards credentials (`auth.forwardCredentials`). The
 * same array when nothing is removed. A route without auth reads no
 * credential, so it removes nothing, as it forwards an X-API-Key header.
 * An empty result: the upstream handshake has no Sec-WebSocket-Protocol,
 * and the client's 101 names no subprotocol.
 */
export function offerUpstream(policies: readonly Policy[] | null, protocols: string[]): string[] {
  if (policies === null || protocols.length === 0) return protocols;
  for (let i = 0; i < policies.length; i++) {
    const p = policies[i]!;
    if (!(p instanceof AuthPolicy) || p.protocolPrefixes === null) continue;
    const prefixes = p.protocolPrefixes;
    return protocols.filter((e) => !prefixes.some((x) => e.startsWith(x)));
  }
  return protocols;
}

/**
 * `query` (raw, no `?`) without the parameters named `names` (as sent or
 * percent-decoded, as extraction reads them: pipeline/context.ts
 * queryNameIs): an auth route's key never reaches the upstream in the URL.
 * Parameter order and encoding are kept.
 */
export function stripQueryParams(query: string, names: readonly string[]): string {
  let out = '';
  for (let at = 0; at <= query.length; at = param.end + 1) {
    paramAt(query, at);
    let drop = false;
    for (let i = 0; i < names.length && !drop; i++) drop = queryNameIs(query, at, param.nameEnd, names[i]!);
    if (!drop) out += (out === '' ? '' : '&') + query.slice(at, param.end);
  }
  return out;
}

export class AuthPolicy implements Policy {
  readonly name = 'auth';
  private readonly sources: readonly KeySource[];
  /** `x-route-id: <id>\r\n`. */
  private readonly routeLine: string;
  private readonly challenge: string;
  readonly invalidChallenge: string;
  private readonly scopeChallenge: string;
  /** The prefixes of the `subprotocol:` sources, removed from an upgrade's offer upstream (offerUpstream); null: none, or forwardCredentials. */
  readonly protocolPrefixes: readonly string[] | null;

  constructor(readonly auth: RouteAuth, routeId: string, readonly env: AuthEnv) {
    this.sources = env.identity.keys.sources;
    const prefixes = this.sources.flatMap((s) => (s.kind === 'subprotocol' ? [s.prefix] : []));
    this.protocolPrefixes = prefixes.length === 0 || auth.forwardCredentials ? null : prefixes;
    this.routeLine = `${env.identity.headers.routeId}: ${routeId}\r\n`;
    const scheme = this.sources.some((s) => s.kind === 'authorization') ? 'Bearer' : 'ApiKey';
    this.challenge = `${scheme} realm="turnpike"`;
    this.invalidChallenge = `${scheme} realm="turnpike", error="invalid_token"`;
    this.scopeChallenge = `${scheme} realm="turnpike", error="insufficient_scope", scope="${auth.scopes.join(' ')}"`;
  }

  /**
   * The key as sent, '' when a source is present but empty, null when no
   * source has one, REPEATED when the first source present is repeated (two
   * Authorization lines, a parameter given twice, two subprotocol entries
   * with the prefix): which one would be meant is ambiguous, so none is
   * (key_malformed).
   */
  extract(ctx: RequestContext): string | null {
    const s = this.sources;
    for (let i = 0; i < s.length; i++) {
      const src = s[i]!;
      let v: string | null;
      if (src.kind === 'authorization') {
        const h = ctx.headerOnce('authorization');
        v = h === null ? null : h === REPEATED ? (this.anyOwnAuthorization(ctx) ? REPEATED : null) : fromAuthorization(h);
        // `Bearer <a JWT for the upstream>`: not a Turnpike key (no tp_ prefix), so the next source is read.
        if (v !== null && v !== REPEATED && v !== '' && !v.startsWith(KEY_PREFIX)) v = null;
      } else if (src.kind === 'header') {
        v = ctx.headerOnce(src.name);
        if (v !== null && v !== REPEATED) v = v.trim();
      } else if (src.kind === 'query') {
        v = ctx.queryParam(src.name);
        if (v !== null && ctx.queryRepeated(src.name)) v = REPEATED;
      } else {
        // WebSocket upgrades only: a plain request's Sec-WebSocket-Protocol is nobody's credential.
        const offer = upgradeOffer.protocols;
        v = offer === null ? null : fromOffer(offer, src);
      }
      if (v !== null) return v;
    }
    return null;
  }

  /** Whether some Authorization line carries a Bearer or ApiKey credential (a repeated Basic one is not ours to refuse). */
  private anyOwnAuthorization(ctx: RequestContext): boolean {
    const h = ctx.headers;
    for (let i = 0; i < h.length; i += 2) if (h[i] === 'authorization' && fromAuthorization(h[i + 1]!) !== null) return true;
    return false;
  }

  onRequest(ctx: RequestContext): number {
    const key = this.extract(ctx);
    if (key === null) return this.refuse(ctx, Errors.CREDENTIALS_MISSING, this.challenge, null);
    if (key === REPEATED) return this.refuse(ctx, Errors.KEY_MALFORMED, this.invalidChallenge, REPEATED_MESSAGE);
    const env = this.env;
    const client = env.client;
    const m = env.metrics;
    // Wall-clock time: expiry and grace are wall-clock instants set through
    // the admin API (the shared clock ctx.now lags it by ~0.5 s in Bun's
    // worker threads).
    const now = Date.now();
    const cached = client === null ? undefined : client.cached(key);
    if (cached !== undefined && now < cached.staleAt) {
      if (m !== null) m[G_AUTH_CACHE_HITS]!++;
      const v = this.admit(ctx, cached, now);
      // A WebSocket upgrade: the tunnel keeps what it was admitted with (never on the HTTP path).
      if (v === CONTINUE && upgradeOffer.protocols !== null) upgradeOffer.credential = this.credentialOf(ctx, key, cached);
      return v;
    }
    if (cached === undefined) {
      // Refused offline: nothing to ask the store about.
      if (key.length > MAX_KEY_LENGTH || checkKeyFormat(key) !== null) return this.refuse(ctx, Errors.KEY_MALFORMED, this.invalidChallenge, null);
      if (client !== null && client.knownUnknown(key, now)) {
        if (m !== null) m[G_AUTH_NEGATIVE_HITS]!++;
        return this.refuse(ctx, Errors.KEY_INVALID, this.invalidChallenge, null);
      }
    }
    if (m !== null) m[G_AUTH_CACHE_MISSES]!++;
    ctx.pending = new AuthLookup(this, key, cached ?? null);
    return PENDING;
  }

  /** The decision on a known key (cache hit or answer) into `out`; `ctx` holds the request. */
  admit(ctx: RequestContext, entry: CachedKey, now: number, out: PolicyOutcome = ctx): number {
    const k = entry.key;
    // Repeated Origin or Referer lines match no pattern (REPEATED holds a NUL): a restricted key fails closed.
    const origin = k.origins === null ? null : ctx.headerOnce('origin');
    const referer = k.origins === null ? null : ctx.headerOnce('referer');
    const clientIp = k.cidrs === null ? ctx.clientIp : clientAddress(ctx, this.env.trusted);
    // Known from here on, refused or not: the access log names the consumer of a 401/403 too.
    ctx.consumerId = k.answer.consumerId;
    const r = decide(k, this.auth, ctx.routeId, ctx.method, clientIp, origin, referer, now);
    const dep = k.deprecation;
    // A rotated key hears it on every answer: admitted, refused here (403) or by a later policy (429: it appends to refusalHeaders).
    if (dep !== null && r !== AUTH_KEY_EXPIRED) out.refusalHeaders.push('deprecation', dep[0], 'sunset', dep[1]);
    if (r !== AUTH_OK) return this.refuseWith(out, r);
    entry.usedAt = now;
    out.requestLines += k.consumerLines + this.routeLine;
    if (dep !== null) {
      out.responseHeaders.push('deprecation', dep[0], 'sunset', dep[1]);
      const m = this.env.metrics;
      if (m !== null) m[G_AUTH_ROTATED_KEY_REQUESTS]!++;
    }
    return CONTINUE;
  }

  /**
   * The credential of an upgrade admitted with `key` (its cache entry
   * `entry`) on the request `ctx` holds: what a re-check needs to decide
   * again as admit() did (credential.ts). Upgrades only.
   */
  credentialOf(ctx: RequestContext, key: string, entry: CachedKey): WsCredential {
    const a = entry.key.answer;
    const client = this.env.client;
    return new WsCredential(
      this, key, a.hash, validUntil(a), ctx.routeId, clientAddress(ctx, this.env.trusted),
      ctx.headerOnce('origin'), ctx.headerOnce('referer'), client === null ? 0 : client.invalidations,
    );
  }

  /** A decide() refusal into `out`. */
  refuseWith(out: PolicyOutcome, r: number): number {
    switch (r) {
      case AUTH_KEY_REVOKED:
      case AUTH_CONSUMER_SUSPENDED:
      case AUTH_KEY_EXPIRED:
        return this.refuse(out, REFUSALS[r]!, this.invalidChallenge, null);
      case AUTH_KEY_RESTRICTED:
        return this.refuse(out, Errors.KEY_RESTRICTED, null, `The API key may not be used from here: its allowed ${restrictionFailed.what === 'address' ? 'client addresses exclude this one' : restrictionFailed.what === 'time' ? 'hours exclude this time' : 'origins exclude this Origin or Referer'}.`);
      case AUTH_INSUFFICIENT_SCOPE:
        return this.refuse(out, Errors.INSUFFICIENT_SCOPE, this.scopeChallenge, `The API key lacks a scope this route requires (${this.auth.scopes.join(', ')}).`);
      default:
        return this.refuse(out, REFUSALS[r] ?? Errors.NO_GRANT, null, null);
    }
  }

  refuse(out: PolicyOutcome, e: GatewayErrorDef, challenge: string | null, message: string | null): number {
    out.refusal = e;
    out.refusalMessage = message;
    out.refusedBy = 'auth';
    if (challenge !== null) out.refusalHeaders.push('www-authenticate', challenge);
    return REFUSED;
  }

  /** 503 while the store cannot answer a key never seen. */
  unavailable(out: PolicyOutcome): number {
    out.refusalHeaders.push('retry-after', '1');
    return this.refuse(out, Errors.IDENTITY_STORE_UNAVAILABLE, null, null);
  }

  /** Looks `key` up (a miss); `cb` hears the entry (or null) and the answer. */
  lookup(key: string, cb: (entry: CachedKey | null, answer: KeyAnswer) => void): void {
    const c = this.env.client;
    if (c === null) setImmediate(() => cb(null, { ok: false, reason: 'unavailable', message: 'no identity client in this thread' }));
    else c.lookup(key, cb);
  }
}

/**
 * A cache miss (or a stale entry): the store is asked, then the rest of the
 * route's policies run on a copy of the request (resumable: see
 * workers/pipeline/context.ts). Allocated on misses only.
 */
class AuthLookup extends PendingDecision implements DecisionWaiter {
  override readonly resumable = true;
  private readonly copy = new RequestContext();
  private rest: readonly Policy[] = [];
  private from = 0;
  private inner: PendingDecision | null = null;
  /** The lookup is a WebSocket upgrade's: once admitted, `credential` is set for its tunnel. */
  private readonly forUpgrade = upgradeOffer.protocols !== null;

  constructor(private readonly policy: AuthPolicy, private readonly key: string, private readonly stale: CachedKey | null) {
    // The lookup, then whatever a later policy waits for (a strict rate limit's Redis call).
    super(policy.env.identity.lookupTimeoutMs + policy.env.laterGuardMs + GUARD_SLACK_MS);
    this.guardError = Errors.IDENTITY_STORE_UNAVAILABLE;
  }

  override capture(ctx: RequestContext, policies: readonly Policy[], from: number): void {
    const c = this.copy;
    c.now = ctx.now;
    c.routeId = ctx.routeId;
    c.routeSlot = ctx.routeSlot;
    c.method = ctx.method;
    c.clientIp = ctx.clientIp;
    c.xff = ctx.xff;
    c.headers = ctx.headers.slice();
    c.query = ctx.query;
    this.rest = policies;
    this.from = from;
  }

  protected run(): void {
    this.policy.lookup(this.key, (entry, answer) => {
      try {
        this.answered(entry, answer);
      } catch (err) {
        this.refusal = Errors.INTERNAL;
        this.refusalMessage = null;
        this.settle(REFUSED);
        void err;
      }
    });
  }

  private answered(entry: CachedKey | null, answer: KeyAnswer): void {
    const p = this.policy;
    const c = this.copy;
    let use = entry;
    if (use === null) {
      if (!answer.ok && answer.reason === 'unknown') {
        p.refuse(this, Errors.KEY_INVALID, p.invalidChallenge, null);
        this.settle(REFUSED);
        return;
      }
      // Unavailable: a key seen before keeps working (stale-if-error).
      if (this.stale === null) {
        p.unavailable(this);
        this.settle(REFUSED);
        return;
      }
      use = this.stale;
    }
    const admitted = p.admit(c, use, Date.now(), c);
    this.consumerId = c.consumerId;
    if (admitted !== CONTINUE) {
      this.copyRefusal(c);
      this.settle(REFUSED);
      return;
    }
    if (this.forUpgrade) this.credential = p.credentialOf(c, this.key, use);
    if (c.runFrom(this.rest, this.from) === REFUSED) {
      this.copyRefusal(c);
      this.settle(REFUSED);
      return;
    }
    this.takeOutputs(c);
    const inner = c.pending;
    if (inner === null) {
      this.settle(CONTINUE);
      return;
    }
    this.inner = inner;
    inner.begin(this);
  }

  /** DecisionWaiter: a later policy's pending decision (a strict rate limit) is in. */
  decided(d: PendingDecision): void {
    this.inner = null;
    if (d.result !== CONTINUE) {
      this.copyRefusal(d);
      this.settle(REFUSED);
      return;
    }
    this.takeOutputs(d);
    this.settle(CONTINUE);
  }

  private takeOutputs(o: PolicyOutcome): void {
    this.requestLines += o.requestLines;
    for (const h of o.responseHeaders) this.responseHeaders.push(h);
  }

  private copyRefusal(o: PolicyOutcome): void {
    this.refusal = o.refusal;
    this.refusalMessage = o.refusalMessage;
    this.refusedBy = o.refusedBy;
    this.refusalHeaders.length = 0;
    for (const h of o.refusalHeaders) this.refusalHeaders.push(h);
  }

  cancel(): void {
    // Nothing taken yet: the lookup has not started.
  }

  override abandon(): void {
    super.abandon();
    this.inner?.abandon();
  }
}
