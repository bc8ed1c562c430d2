/**
 * An open WebSocket does not outlive its credential (README, WebSockets):
 * the open tunnels of a worker's WsHub that an API key admitted, indexed by
 * key, re-checked when the identity store says the key may have changed.
 *
 * The admin thread sends every worker {t:'inval', hashes} for every key or
 * consumer change naming those key hashes (creations and renames included),
 * and hashes null for grant and group changes or a missed broadcast
 * (admin/identity/service.ts). So an invalidation is never taken as a
 * revocation by itself: the key is asked again, as a request with it would
 * be (policies/auth/client.ts: a fresh cache entry, else a lookup through
 * the admin thread), and the answer decided again for each tunnel as its
 * upgrade was (policies/auth/credential.ts WsCredential.judge):
 *  - still admitted: the tunnel stays, its validity end follows the answer
 *    (an expiresAt set or moved by the change);
 *  - refused (revoked, consumer suspended or revoked, expired, and also a
 *    scope, grant or restriction change that now refuses the route: what a
 *    new upgrade would get), or the key is gone (its consumer deleted): the
 *    tunnel closes, 1008 to the client, 1001 upstream (WsTunnel.
 *    closeForCredential);
 *  - the store cannot answer: the tunnel stays (a request would be admitted
 *    on its stale entry, or refused 503 without one; an outage must not cut
 *    every tunnel), and the key is asked again after RETRY_MS.
 *
 * Cost: nothing per message or per request. A re-check is per distinct key
 * (one lookup serves all of a key's tunnels), at most MAX_IN_FLIGHT lookups
 * at once and BATCH keys per turn of the event loop, so that a null
 * invalidation with 10k tunnels open neither sends 10k lookups in one tick
 * nor fills the identity client's MAX_WAITING_LOOKUPS, which requests need.
 * Expiry itself needs no lookup: WsTunnel.tick() compares the validity end
 * with the hub's wall clock on its 250 ms sweep.
 *
 * An invalidation during the handshake (between the decision and the 101)
 * is not missed: a credential remembers the identity client's invalidation
 * count when it was decided, and one that changed since is re-checked when
 * the tunnel opens.
 */
import type { KeyAnswer } from '../../../common/identity/wire.js';
import type { CachedKey, IdentityClient } from '../../policies/auth/client.js';
import { DELETED, type WsCredential } from '../../policies/auth/credential.js';
import type { WsTunnel } from './tunnel.js';

/** Re-check lookups in flight at once, per worker. */
export const MAX_IN_FLIGHT = 32;
/** Keys re-checked per turn of the event loop (a cached answer needs no lookup, but still costs a decision per tunnel). */
export const BATCH = 64;
/** A key the store could not answer about is asked again after this (ms). */
export const RETRY_MS = 2_000;

export class CredentialWatch {
  /** Key text -> the open tunnels it admitted. */
  private readonly byKey = new Map<string, Set<WsTunnel>>();
  /** Key hash (what invalidations name) -> key text. */
  private readonly keyOfHash = new Map<string, string>();
  private client: IdentityClient | null = null;
  private unsubscribe: (() => void) | null = null;
  /** Keys to re-check, in order (queue[head..]), and the same as a set (each key once). */
  private queue: string[] = [];
  private head = 0;
  private readonly queued = new Set<string>();
  private inFlight = 0;
  private scheduled = false;
  private readonly retry = new Set<string>();
  private retryTimer: NodeJS.Timeout | null = null;
  private closed = false;

  /** Watches open tunnel `t`, admitted with `c`. */
  add(t: WsTunnel, c: WsCredential): void {
    const client = c.client;
    if (client === null || this.closed) return;
    if (this.client !== client) {
      this.unsubscribe?.();
      this.client = client;
      this.unsubscribe = client.onInvalidate((hashes) => this.invalidated(hashes));
    }
    let set = this.byKey.get(c.key);
    if (set === undefined) {
      set = new Set();
      this.byKey.set(c.key, set);
      this.keyOfHash.set(c.hash, c.key);
    }
    set.add(t);
    if (c.seen !== client.invalidations) this.recheck(c.key);
  }

  /** `t` (admitted with `c`) is no longer open. Idempotent. */
  remove(t: WsTunnel, c: WsCredential): void {
    const set = this.byKey.get(c.key);
    if (set === undefined || !set.delete(t)) return;
    if (set.size !== 0) return;
    this.byKey.delete(c.key);
    if (this.keyOfHash.get(c.hash) === c.key) this.keyOfHash.delete(c.hash);
  }

  /** The hub closes: no more re-checks (answers in flight are ignored). */
  close(): void {
    this.closed = true;
    this.unsubscribe?.();
    this.unsubscribe = null;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.byKey.clear();
    this.keyOfHash.clear();
    this.queue = [];
    this.head = 0;
    this.queued.clear();
    this.retry.clear();
  }

  /** {t:'inval'} from the admin thread, already applied to the identity client's caches. */
  private invalidated(hashes: readonly string[] | null): void {
    if (hashes === null) {
      for (const key of this.byKey.keys()) this.recheck(key);
      return;
    }
    for (const h of hashes) {
      const key = this.keyOfHash.get(h);
      if (key !== undefined) this.recheck(key);
    }
  }

  private recheck(key: string): void {
    if (this.queued.has(key)) return;
    this.queued.add(key);
    this.queue.push(key);
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.pump();
    });
  }

  /** Starts re-checks from the queue: at most BATCH now, while fewer than MAX_IN_FLIGHT lookups wait. */
  private pump(): void {
    let n = 0;
    while (this.head < this.queue.length && this.inFlight < MAX_IN_FLIGHT && !this.closed) {
      if (n++ === BATCH) {
        this.schedule();
        return;
      }
      const key = this.queue[this.head++]!;
      this.queued.delete(key);
      this.check(key);
    }
    if (this.head === this.queue.length) {
      this.queue.length = 0;
      this.head = 0;
    }
  }

  /** Asks about `key` as a request would: a fresh cache entry, else a lookup. */
  private check(key: string): void {
    const client = this.client;
    if (client === null || !this.byKey.has(key)) return;
    const cached = client.cached(key);
    if (cached !== undefined && Date.now() < cached.staleAt) {
      this.apply(key, cached, null);
      return;
    }
    this.inFlight++;
    client.lookup(key, (entry, answer) => {
      this.inFlight--;
      if (this.closed) return;
      try {
        this.apply(key, entry, answer);
      } finally {
        this.pump();
      }
    });
  }

  /** The answer about `key` (entry null: unknown or unavailable, says `answer`), for each of its tunnels. */
  private apply(key: string, entry: CachedKey | null, answer: KeyAnswer | null): void {
    const set = this.byKey.get(key);
    if (set === undefined) return;
    if (entry === null) {
      if (answer !== null && !answer.ok && answer.reason === 'unknown') {
        for (const t of [...set]) t.closeForCredential(DELETED);
      } else {
        this.retryLater(key);
      }
      return;
    }
    const now = Date.now();
    // A copy: a close removes the tunnel from the set.
    for (const t of [...set]) {
      const c = t.credential;
      if (c === null) continue;
      const refusal = c.judge(entry, now);
      if (refusal !== null) t.closeForCredential(refusal);
    }
  }

  private retryLater(key: string): void {
    this.retry.add(key);
    if (this.retryTimer !== null) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      for (const k of this.retry) this.recheck(k);
      this.retry.clear();
    }, RETRY_MS);
    this.retryTimer.unref();
  }
}
