/**
 * What crosses between a worker and the admin thread for API keys (issue
 * 12). The admin thread owns the identity store (admin/identity/service.ts);
 * a worker keeps a bounded cache of what it was told
 * (workers/policies/auth/) and asks only on a miss. The messages travel on
 * the worker's private line to the admin thread (WorkerData.statsPort, the
 * line latency snapshots use too): every identity message has a `t` field,
 * latency requests do not.
 *
 * Worker -> admin:
 *   { t: 'key', id, key }          look up a well-formed key (plaintext:
 *                                  the admin thread hashes it with the
 *                                  pepper; the worker never holds the pepper)
 *   { t: 'used', batch }           keys used since the last report:
 *                                  [keyId, atMs, ...] flat (lastUsedAt)
 * Admin -> worker:
 *   { t: 'key', id, answer }       the answer to lookup `id`
 *   { t: 'inval', hashes }         drop these key hashes from the caches
 *                                  (revocation, suspension, any key or
 *                                  consumer change); hashes null: drop
 *                                  everything (grant or group changes, a
 *                                  missed broadcast between instances)
 *
 * Plaintext keys cross only this in-process line; they are never logged,
 * stored or sent elsewhere.
 */
import type { KeyRestrictions } from '../../admin/identity/store/types.js';

/** What the store knows of a key, as far as a decision needs it. */
export interface KeyRecordAnswer {
  ok: true;
  /** HMAC-SHA256(pepper, key), base64url: what revocation names. */
  hash: string;
  keyId: string;
  keyName: string;
  /** `tp_<env>_` + 4 characters: safe to log. */
  keyPrefix: string;
  keyStatus: 'active' | 'revoked';
  scopes: string[];
  restrictions: KeyRestrictions;
  /** ms since the epoch, or null. */
  expiresAt: number | null;
  /** A rotated key's end of grace (ms), or null: until then it works, with Deprecation/Sunset. */
  graceUntil: number | null;
  /** When a rotated key was rotated (ms): its Deprecation date, the same on every worker and instance; null when not rotated. */
  rotatedAt: number | null;
  consumerId: string;
  consumerName: string;
  consumerStatus: 'active' | 'suspended' | 'revoked';
  tenant: string | null;
  plan: string | null;
  groups: string[];
  /** Grants of the consumer and its groups: [routeId, methods (upper case, or ['*'])] pairs. */
  grants: Array<[string, string[]]>;
}

export type KeyAnswer =
  | KeyRecordAnswer
  /** No key has that hash. */
  | { ok: false; reason: 'unknown' }
  /** The store could not answer (Redis down, SQLite busy...): `message` is for the log, never for the client. */
  | { ok: false; reason: 'unavailable'; message: string };

export type IdentityToAdmin =
  | { t: 'key'; id: number; key: string }
  | { t: 'used'; batch: Array<string | number> };

export type IdentityToWorker =
  | { t: 'key'; id: number; answer: KeyAnswer }
  | { t: 'inval'; hashes: string[] | null };
