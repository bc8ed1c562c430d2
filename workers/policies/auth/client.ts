/**
 * A worker's side of API-key identity (issue 12): its caches and its line to
 * the admin thread, which owns the store (admin/identity/service.ts; the
 * messages are common/identity/wire.ts).
 *
 * Caches, per worker, keyed by the key as sent (a well-formed key's text;
 * kept in this thread's memory only, never logged or sent anywhere but the
 * admin thread):
 *  - positive: key -> CompiledKey (common/identity/decide.ts), at most
 *    `identity.cache.size` entries, each asked again after `ttlMs` (changes
 *    are pushed at once by 'inval'; the ttl bounds one that was missed);
 *    when full, the oldest insertion goes (a Map keeps insertion order: no
 *    work per hit, unlike a true LRU);
 *  - negative: keys the store does not know, at most `negativeSize`, for
 *    `negativeTtlMs`: a flood of one invalid key asks the store once.
 * A miss is asked once however many requests wait for it (coalesced), and
 * waits `lookupTimeoutMs` at most; at most MAX_WAITING_LOOKUPS keys are
 * asked at once (more: 503 at once). While the store cannot answer, a key
 * whose cached entry is past its ttl keeps being used (stale-if-error): an
 * outage refuses only keys never seen.
 *
 * Last use: a hit records its time on the entry; every `lastUsedFlushMs`
 * the entries used since the last report go to the admin thread in one
 * message ({t:'used'}), which writes them in one store call.
 */
import type { MessagePort } from 'node:worker_threads';
import type { IdentityConfig } from '../../../common/config/types.js';
import { compileKey, type CompiledKey } from '../../../common/identity/decide.js';
import type { IdentityToAdmin, IdentityToWorker, KeyAnswer } from '../../../common/identity/wire.js';
import { resolveIdentity } from '../../../common/config/identity.js';

/** A positive cache entry. */
export interface CachedKey {
  key: CompiledKey;
  /** When to ask the store again (ms, Date.now clock). */
  staleAt: number;
  /** Last use seen here (ms), and what was last reported. */
  usedAt: number;
  reportedAt: number;
}

export type LookupCallback = (entry: CachedKey | null, answer: KeyAnswer) => void;

interface Waiting {
  id: number;
  key: string;
  callbacks: LookupCallback[];
  timer: NodeJS.Timeout;
}

/**
 * Lookups one worker may have waiting at once. Past it a miss is answered
 * unavailable (503) at once instead of queueing more messages for the admin
 * thread: a flood of distinct made-up keys cannot grow a queue without
 * bound, and keys already cached keep working meanwhile.
 */
export const MAX_WAITING_LOOKUPS = 4096;

const UNAVAILABLE_BUSY: KeyAnswer = { ok: false, reason: 'unavailable', message: `${MAX_WAITING_LOOKUPS} key lookups already waiting in this worker` };
const UNAVAILABLE_TIMEOUT: KeyAnswer = { ok: false, reason: 'unavailable', message: 'no answer from the admin thread within identity.lookupTimeoutMs' };
const UNAVAILABLE_NO_LINE: KeyAnswer = { ok: false, reason: 'unavailable', message: 'no line to the admin thread' };

export class IdentityClient {
  private config: IdentityConfig = resolveIdentity({});
  private port: MessagePort | null = null;
  private readonly onMessage = (msg: unknown) => this.receive(msg);
  readonly positive = new Map<string, CachedKey>();
  /** key -> until (ms). */
  readonly negative = new Map<string, number>();
  /** hash -> key, for invalidation by hash. */
  private readonly byHash = new Map<string, string>();
  private readonly waiting = new Map<string, Waiting>();
  private readonly waitingById = new Map<number, Waiting>();
  private nextId = 1;
  private flushTimer: NodeJS.Timeout | null = null;
  /** Invalidations applied so far ({t:'inval'} received): a holder of an answer taken earlier knows it may be stale. */
  invalidations = 0;
  /** Told after each {t:'inval'} is applied (onInvalidate). */
  private readonly invalListeners: Array<(hashes: readonly string[] | null) => void> = [];

  /** The line to the admin thread (WorkerData.statsPort, replaced when the admin thread restarts). */
  attach(port: MessagePort): void {
    this.port?.off('message', this.onMessage);
    this.port = port;
    port.on('message', this.onMessage);
    // Answers in flight on the old line are lost with it: their waiters time out.
  }

  /** Settings of the running config: sizes, ttls, timeouts, header names. Compiled entries stay (header names are read when used). */
  configure(c: IdentityConfig): void {
    const headersChanged = c.headers.consumerId !== this.config.headers.consumerId || c.headers.consumerName !== this.config.headers.consumerName;
    this.config = c;
    if (headersChanged) this.clear();
    if (this.flushTimer !== null) clearInterval(this.flushTimer);
    this.flushTimer = setInterval(() => this.reportUse(), c.lastUsedFlushMs);
    this.flushTimer.unref();
  }

  /** The cached entry of `key`, fresh or stale, or undefined. */
  cached(key: string): CachedKey | undefined {
    return this.positive.get(key);
  }

  /** Whether `key` is known not to exist (and still remembered so at `now`). */
  knownUnknown(key: string, now: number): boolean {
    const until = this.negative.get(key);
    if (until === undefined) return false;
    if (now < until) return true;
    this.negative.delete(key);
    return false;
  }

  /**
   * Asks the store about `key` (well formed) through the admin thread; `cb`
   * gets the new entry (null: unknown or unavailable) and the answer, always
   * asynchronously, within lookupTimeoutMs.
   */
  lookup(key: string, cb: LookupCallback): void {
    const w = this.waiting.get(key);
    if (w !== undefined) {
      w.callbacks.push(cb);
      return;
    }
    const port = this.port;
    if (port === null || this.waiting.size >= MAX_WAITING_LOOKUPS) {
      const answer = port === null ? UNAVAILABLE_NO_LINE : UNAVAILABLE_BUSY;
      setImmediate(() => cb(null, answer));
      return;
    }
    const id = this.nextId++;
    const entry: Waiting = {
      id, key, callbacks: [cb],
      timer: setTimeout(() => this.settle(entry, UNAVAILABLE_TIMEOUT), this.config.lookupTimeoutMs),
    };
    this.waiting.set(key, entry);
    this.waitingById.set(id, entry);
    port.postMessage({ t: 'key', id, key } satisfies IdentityToAdmin);
  }

  private receive(msg: unknown): void {
    const m = msg as IdentityToWorker;
    if (typeof m !== 'object' || m === null || typeof (m as { t?: unknown }).t !== 'string') return; // a latency request
    if (m.t === 'key') {
      const w = this.waitingById.get(m.id);
      if (w !== undefined) this.settle(w, m.answer);
    } else if (m.t === 'inval') {
      this.invalidate(m.hashes);
      for (const fn of this.invalListeners) fn(m.hashes);
    }
  }

  /**
   * `fn` hears every {t:'inval'} from the admin thread (the key hashes it
   * names, or null: anything may have changed), after the caches dropped
   * them: a lookup made from `fn` asks the store again. Used by the
   * WebSocket tunnels, which re-check the key that opened them
   * (transport/websocket/credential-watch.ts). Returns the unsubscribe.
   */
  onInvalidate(fn: (hashes: readonly string[] | null) => void): () => void {
    this.invalListeners.push(fn);
    return () => {
      const i = this.invalListeners.indexOf(fn);
      if (i !== -1) this.invalListeners.splice(i, 1);
    };
  }

  private settle(w: Waiting, answer: KeyAnswer): void {
    clearTimeout(w.timer);
    this.waiting.delete(w.key);
    this.waitingById.delete(w.id);
    let entry: CachedKey | null = null;
    const now = Date.now();
    if (answer.ok) {
      entry = this.remember(w.key, answer, now);
    } else if (answer.reason === 'unknown') {
      this.forget(w.key);
      const c = this.config.cache;
      if (this.negative.size >= c.negativeSize) this.negative.delete(this.negative.keys().next().value!);
      this.negative.set(w.key, now + c.negativeTtlMs);
    }
    for (const cb of w.callbacks) cb(entry, answer);
  }

  private remember(key: string, answer: KeyAnswer & { ok: true }, now: number): CachedKey {
    const old = this.positive.get(key);
    if (old !== undefined) this.positive.delete(key); // re-inserted: it is the newest again
    else if (this.positive.size >= this.config.cache.size) this.forget(this.positive.keys().next().value!);
    this.negative.delete(key);
    const entry: CachedKey = {
      key: compileKey(answer, this.config.headers),
      staleAt: now + this.config.cache.ttlMs,
      usedAt: old?.usedAt ?? 0,
      reportedAt: old?.reportedAt ?? 0,
    };
    this.positive.set(key, entry);
    this.byHash.set(answer.hash, key);
    return entry;
  }

  private forget(key: string): void {
    const e = this.positive.get(key);
    if (e === undefined) return;
    this.positive.delete(key);
    if (this.byHash.get(e.key.answer.hash) === key) this.byHash.delete(e.key.answer.hash);
  }

  /**
   * Drops cached answers for `hashes` (a key revoked, a consumer suspended:
   * never served again from here). null (a grant or group change, a missed
   * broadcast): every entry is asked again at its next use, but kept as the
   * stale-if-error answer, so that a flush while the store is unreachable (a
   * Redis restart) does not refuse the keys in use.
   */
  invalidate(hashes: readonly string[] | null): void {
    this.invalidations++;
    if (hashes === null) {
      for (const e of this.positive.values()) e.staleAt = 0;
      this.negative.clear();
      return;
    }
    for (const h of hashes) {
      const key = this.byHash.get(h);
      if (key !== undefined) this.forget(key);
    }
    // A created key may be in the negative cache under its text, which this
    // thread cannot derive from a hash: negative entries are short-lived,
    // but a new key must work at once, so they go too.
    if (hashes.length > 0) this.negative.clear();
  }

  private clear(): void {
    this.positive.clear();
    this.negative.clear();
    this.byHash.clear();
  }

  /** Sends the keys used since the last report (lastUsedAt), in one message. */
  reportUse(): void {
    const port = this.port;
    if (port === null) return;
    const batch: Array<string | number> = [];
    for (const e of this.positive.values()) {
      if (e.usedAt > e.reportedAt) {
        batch.push(e.key.answer.keyId, e.usedAt);
        e.reportedAt = e.usedAt;
      }
    }
    if (batch.length > 0) port.postMessage({ t: 'used', batch } satisfies IdentityToAdmin);
  }

  close(): void {
    if (this.flushTimer !== null) clearInterval(this.flushTimer);
    this.flushTimer = null;
    this.reportUse();
    for (const w of [...this.waitingById.values()]) this.settle(w, UNAVAILABLE_NO_LINE);
    this.port?.off('message', this.onMessage);
  }
}

