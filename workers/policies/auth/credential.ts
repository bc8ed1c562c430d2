/**
 * The API key a WebSocket tunnel was opened with (README, WebSockets: "An
 * open WebSocket does not outlive its credential"). The auth policy makes
 * one only for an upgrade it admits (upgradeOffer.protocols set: see
 * index.ts), so a plain HTTP request pays nothing for it; the transport
 * hands it to the tunnel in its UpgradeRequest (websocket/tunnel.ts), and
 * the worker's credential watch (transport/websocket/credential-watch.ts)
 * re-decides it when the identity store says the key may have changed.
 *
 * What it keeps is what the upgrade's decision read (common/identity/
 * decide.ts): the route's auth, the client address as restrictions see it,
 * the Origin and Referer, so that a re-check answers what a new upgrade of
 * the same client would get. The key text stays in this thread's memory
 * (as the identity client's cache keeps it) and is never logged or sent
 * anywhere but the admin thread, as for a request.
 */
import { AUTH_CONSUMER_SUSPENDED, AUTH_KEY_EXPIRED, AUTH_KEY_REVOKED, AUTH_OK, decide } from '../../../common/identity/decide.js';
import type { KeyRecordAnswer } from '../../../common/identity/wire.js';
import type { CachedKey, IdentityClient } from './client.js';
import type { AuthPolicy } from './index.js';

/**
 * When a key stops working by itself: the earlier of its expiresAt and its
 * rotation grace end (graceUntil), ms since the epoch; 0 when neither is
 * set.
 */
export function validUntil(a: KeyRecordAnswer): number {
  const e = a.expiresAt ?? 0;
  const g = a.graceUntil ?? 0;
  return e === 0 ? g : g === 0 ? e : Math.min(e, g);
}

/** How a tunnel is closed for a refused credential: the client's Close reason (RFC 6455 7.1.6; never the key) and the upstream's. */
export interface CredentialRefusal {
  client: string;
  upstream: string;
}

const REVOKED: CredentialRefusal = { client: 'credential revoked', upstream: 'client credential revoked' };
const SUSPENDED: CredentialRefusal = { client: 'credential revoked', upstream: 'client consumer suspended' };
/** The refusal for a key the store no longer knows (its consumer deleted). */
export const DELETED: CredentialRefusal = { client: 'credential revoked', upstream: 'client credential deleted' };
export const EXPIRED: CredentialRefusal = { client: 'credential expired', upstream: 'client credential expired' };
const NOT_ALLOWED: CredentialRefusal = { client: 'credential not allowed', upstream: 'client credential no longer allowed on this route' };

/** The refusal for a decide() result other than AUTH_OK (scope, grant, restriction: not allowed). */
export function refusalOf(result: number): CredentialRefusal {
  switch (result) {
    case AUTH_KEY_REVOKED: return REVOKED;
    case AUTH_CONSUMER_SUSPENDED: return SUSPENDED;
    case AUTH_KEY_EXPIRED: return EXPIRED;
    default: return NOT_ALLOWED;
  }
}

export class WsCredential {
  /**
   * `until`: validUntil() of the answer admitted (ms since the epoch, 0:
   * none), updated by each re-check that admits; past it the tunnel closes
   * (WsTunnel.tick). `seen`: the identity client's invalidation count when
   * the answer was taken (a change during the handshake is re-checked once
   * the tunnel is open).
   */
  constructor(
    readonly policy: AuthPolicy,
    /** The key as sent (well-formed): what a lookup asks. */
    readonly key: string,
    readonly hash: string,
    public until: number,
    readonly routeId: string,
    /** The client address as restrictions read it (behind trusted proxies: X-Forwarded-For's client). */
    readonly clientIp: string,
    readonly origin: string | null,
    readonly referer: string | null,
    readonly seen: number,
  ) {}

  /** The worker's identity client (null outside a worker: nothing to watch). */
  get client(): IdentityClient | null {
    return this.policy.env.client;
  }

  /**
   * Re-decides this credential with a fresh answer `entry` at `now` (ms,
   * Date.now clock): null when it is still admitted (then `until` follows
   * the answer), else how to close.
   */
  judge(entry: CachedKey, now: number): CredentialRefusal | null {
    const r = decide(entry.key, this.policy.auth, this.routeId, 'GET', this.clientIp, this.origin, this.referer, now);
    if (r !== AUTH_OK) return refusalOf(r);
    this.until = validUntil(entry.key.answer);
    return null;
  }
}
