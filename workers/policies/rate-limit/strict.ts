/**
 * Strict rate limits (`mode: strict`): one atomic Redis decision per limit
 * and request, for low-rate, high-value limits where the batched mode's
 * over-admission between syncs is not acceptable. The limit then holds
 * exactly across every worker of every instance: the decision is a Lua
 * script (strict-scripts.ts) on one key, on Redis's clock.
 *
 * Where it sits: the route's RateLimitPolicyRunner (index.ts) decides its
 * in-memory limits first, in the handler; if they all admit and the route
 * has strict limits, it records their key hashes and returns PENDING with
 * a StrictDecision (this file) in ctx.pending. The transport begins it
 * once the rest of the request is known to be proxied; every strict limit
 * of the request is sent at once (one EVALSHA each, pipelined), and when
 * all replies are in:
 *  - all admitted: the headers of every limit of the route (ietf/legacy,
 *    exactly as for in-memory limits) and CONTINUE;
 *  - one refused (the first in list order counts): 429 with its
 *    Retry-After, headers and message, as in memory; the strict limits that
 *    had admitted get their unit back in Redis (the undo script, sent
 *    without waiting) and the in-memory ones in the table. A refused
 *    request consumes nothing; meanwhile a concurrent request may see a
 *    unit fewer, never one more.
 *  - a store error (no reply within redis.commandTimeoutMs of the moment
 *    the decision was asked: a deadline per decision, strict-store.ts
 *    `watch`; connection lost; script error): the store goes down (one log
 *    line, strict-store.ts)
 *    and that limit follows its onStoreError: allow_local decides it in
 *    memory on the shared table with H_SHARE (as batched limits do while
 *    Redis is away), deny refuses with 503 rate_limit_store_unavailable
 *    and Retry-After: 1. Never a 500, never a wait beyond the command
 *    timeout. While the store is down, later requests are decided in the
 *    handler without trying Redis (index.ts).
 *
 * Redis keys: `${redis.keyPrefix}rl:s:${tag}:${hi}${lo}`, the policy tag
 * and the 64-bit key hash as zero-padded hex. The tag is a hash of what the
 * policy means (common/config/rate-limit.ts), the key hash one of the key's
 * text: the same on every instance, worker and config version (no per-node
 * keys), and no client text in Redis.
 *
 * A client that goes away while its decision is pending: the decision
 * completes anyway and what it admitted stays taken (the request reached
 * the gateway); nothing waits for it and nothing leaks.
 */
import { Errors } from '../../../common/errors.js';
import { log } from '../../../common/log.js';
import { PendingDecision, CONTINUE, PENDING, REFUSED } from '../../pipeline/context.js';
import { RL_ALLOWED, RL_LIMITED, RL_STORE_UNAVAILABLE } from '../../../common/metrics-layout.js';
import type { RateLimitPolicyRunner } from './index.js';
import type { Deadlined, StrictStore } from './strict-store.js';

/** Per position of a StrictDecision. */
const P_MEMORY = 0; // decided in memory in the handler (admitted)
const P_WAITING = 1; // sent to Redis, no reply yet
const P_ADMITTED = 2; // Redis admitted
const P_REFUSED = 3; // Redis refused
const P_FAILED = 4; // store error: onStoreError decides

/** How long past the command timeout the transport waits before giving up on a decision (a bug guard: the store settles by itself). */
const GUARD_SLACK_MS = 1_000;

function hex8(x: number): string {
  return (x >>> 0).toString(16).padStart(8, '0');
}

/** The Redis key of a strict limit's bucket (see the module comment). */
export function strictKey(prefix: string, tag: number, hi: number, lo: number): string {
  return prefix + hex8(tag) + ':' + hex8(hi) + hex8(lo);
}

/**
 * The strict part of one request's rate-limit decision (see the module
 * comment). Made by the runner in the handler, with copies of what its
 * per-thread scratch holds for positions [0, n): in-memory admissions
 * (entry, window, remaining, reset; entry -1 for a strict limit) and the
 * key hashes of the strict limits.
 */
export class StrictDecision extends PendingDecision implements Deadlined {
  private readonly runner: RateLimitPolicyRunner;
  private readonly store: StrictStore;
  /** The shared clock at the request's arrival (ms) and performance.now() then: the clock of a later in-memory fallback. */
  private readonly now0: number;
  private readonly perf0: number;
  private readonly n: number;
  private readonly entries: Int32Array;
  private readonly windows: Float64Array;
  /** The key each in-memory entry held when it admitted (giveBack checks it still does). */
  private readonly entryHi: Int32Array;
  private readonly entryLo: Int32Array;
  private readonly remaining: Float64Array;
  private readonly reset: Float64Array;
  private readonly retry: Float64Array;
  private readonly hi: Int32Array;
  private readonly lo: Int32Array;
  private readonly state: Uint8Array;
  /** The script's window start per position (the undo script's argument), as Redis returned it. */
  private readonly windowText: string[];
  private readonly keys: string[];
  private waiting = 0;
  /** performance.now() by which every reply must be in (set by run); past it, onStoreError decides. */
  deadline = 0;

  constructor(
    runner: RateLimitPolicyRunner, store: StrictStore, now: number, n: number,
    entries: Int32Array, windows: Float64Array, entryHi: Int32Array, entryLo: Int32Array,
    remaining: Float64Array, reset: Float64Array, hi: Int32Array, lo: Int32Array,
  ) {
    super(store.config.commandTimeoutMs + GUARD_SLACK_MS);
    this.runner = runner;
    this.store = store;
    this.now0 = now;
    this.perf0 = performance.now();
    this.n = n;
    this.entries = entries.slice(0, n);
    this.windows = windows.slice(0, n);
    this.entryHi = entryHi.slice(0, n);
    this.entryLo = entryLo.slice(0, n);
    this.remaining = remaining.slice(0, n);
    this.reset = reset.slice(0, n);
    this.retry = new Float64Array(n);
    this.hi = hi.slice(0, n);
    this.lo = lo.slice(0, n);
    this.state = new Uint8Array(n);
    this.windowText = new Array<string>(n).fill('0');
    this.keys = new Array<string>(n).fill('');
    const limits = runner.limits;
    for (let i = 0; i < n; i++) {
      if (this.entries[i]! >= 0) continue;
      this.state[i] = P_WAITING;
      this.keys[i] = strictKey(store.keyPrefix, limits[i]!.tag, this.hi[i]!, this.lo[i]!);
    }
  }

  /** Sends every strict limit's script at once. */
  protected run(): void {
    this.deadline = performance.now() + this.store.config.commandTimeoutMs;
    const limits = this.runner.limits;
    for (let i = 0; i < this.n; i++) {
      if (this.state[i] !== P_WAITING) continue;
      this.waiting++;
      const l = limits[i]!;
      let p: Promise<unknown>;
      try {
        p = this.store.decide(l.algorithm, this.keys[i]!, l.strictArgs);
      } catch (err) {
        p = Promise.reject(err);
      }
      p.then((reply) => this.onReply(i, reply), (err) => this.onError(i, err));
    }
    if (this.waiting !== 0) this.store.watch(this);
  }

  /**
   * The deadline passed with replies still due (strict-store.ts calls it):
   * those limits failed (the store goes down: later requests do not try
   * Redis) and are decided by their onStoreError now. A reply that still
   * arrives (before ioredis's own timeout drops it) is not used; if it
   * admitted, its unit is given back in Redis (the undo script).
   */
  expire(): void {
    if (this.waiting === 0) return;
    let any = false;
    for (let i = 0; i < this.n; i++) {
      if (this.state[i] !== P_WAITING) continue;
      this.state[i] = P_FAILED;
      any = true;
    }
    this.waiting = 0;
    if (any) this.store.failed(new Error(`timed out: no reply within redis.commandTimeoutMs (${this.store.config.commandTimeoutMs} ms)`));
    this.complete();
  }

  /** Refused before begin (by a later check of the transport): the in-memory admissions are given back; Redis was never asked. */
  cancel(): void {
    this.runner.giveBack(this.entries, this.windows, this.entryHi, this.entryLo, this.n);
  }

  private onReply(i: number, reply: unknown): void {
    const r = reply as [number, number, string, string, string, string];
    if (this.state[i] !== P_WAITING) {
      // Decided without it (the deadline passed): a late admission is given back.
      if (Array.isArray(r) && r[0] === 1) {
        const l = this.runner.limits[i]!;
        this.store.undo(l.algorithm, this.keys[i]!, l.strictArgs, String(r[4]));
      }
      return;
    }
    if (!Array.isArray(r) || r.length !== 6) {
      this.onError(i, new Error(`unexpected reply from the strict rate-limit script: ${JSON.stringify(reply)}`));
      return;
    }
    this.store.succeeded();
    this.state[i] = r[0] === 1 ? P_ADMITTED : P_REFUSED;
    this.remaining[i] = Number(r[1]);
    this.reset[i] = Number(r[2]);
    this.retry[i] = Number(r[3]);
    this.windowText[i] = r[4];
    if (--this.waiting === 0) this.complete();
  }

  private onError(i: number, err: unknown): void {
    if (this.state[i] !== P_WAITING) return; // decided without it (deadline)
    this.store.failed(err);
    this.state[i] = P_FAILED;
    if (--this.waiting === 0) this.complete();
  }

  /**
   * Every reply is in: the outcome, in list order. Never throws: it runs in
   * a promise callback, where a throw would end the worker (unhandled
   * rejection). A bug answers 500 internal_error instead, logged.
   */
  private complete(): void {
    try {
      this.decide();
    } catch (err) {
      if (this.result !== PENDING) return; // the waiter itself threw; the transport guards its own code
      log('error', 'internal error in a strict rate-limit decision; answered 500', { error: err instanceof Error ? err.stack ?? err.message : String(err) });
      this.refusal = Errors.INTERNAL;
      this.refusalMessage = null;
      this.refusalHeaders.length = 0;
      this.settle(REFUSED);
    }
  }

  private decide(): void {
    const runner = this.runner;
    const limits = runner.limits;
    const n = this.n;
    let refusedAt = -1;
    for (let i = 0; i < n && refusedAt === -1; i++) {
      const s = this.state[i]!;
      if (s === P_REFUSED) {
        refusedAt = i;
        runner.count(i, RL_LIMITED);
        runner.refuse(this, limits[i]!, this.retry[i]!);
      } else if (s === P_FAILED) {
        const l = limits[i]!;
        if (l.deny) {
          refusedAt = i;
          runner.count(i, RL_STORE_UNAVAILABLE);
          runner.storeUnavailable(this, l);
          continue;
        }
        // allow_local: decided in memory now, on this instance's share.
        const now = this.now0 + (performance.now() - this.perf0);
        const r = runner.decideLocal(i, this.hi[i]!, this.lo[i]!, now);
        if (!r.allowed) {
          refusedAt = i;
          runner.count(i, RL_LIMITED);
          runner.refuse(this, l, r.retryMs);
          continue;
        }
        this.state[i] = P_MEMORY;
        this.entries[i] = r.entry;
        this.entryHi[i] = r.entryHi;
        this.entryLo[i] = r.entryLo;
        this.windows[i] = r.window;
        this.remaining[i] = r.remaining;
        this.reset[i] = r.resetMs;
      }
    }
    if (refusedAt !== -1) {
      // Nothing consumed: in-memory admissions back to the table, Redis ones back to Redis.
      runner.giveBack(this.entries, this.windows, this.entryHi, this.entryLo, n);
      for (let i = 0; i < n; i++) {
        if (this.state[i] !== P_ADMITTED) continue;
        const l = limits[i]!;
        this.store.undo(l.algorithm, this.keys[i]!, l.strictArgs, this.windowText[i]!);
      }
      this.settle(REFUSED);
      return;
    }
    for (let i = 0; i < n; i++) runner.count(i, RL_ALLOWED);
    runner.admittedHeaders(this.responseHeaders, this.remaining, this.reset, n);
    this.settle(CONTINUE);
  }
}
