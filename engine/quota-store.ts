/**
 * The quota file: counts of local quotas kept on disk, so that a restart
 * loses nothing (issue 10: "persisted in Redis, or on disk when there is no
 * Redis"). Quotas shared through Redis (scope: cluster) are kept there by
 * the admin thread's sync instead; this module touches only quotas whose
 * scope is local (every quota when there is no `redis`).
 *
 * Who does what: the engine's main thread owns the bucket table
 * (common/rate-limit-layout.ts) and this store. At start, before any worker
 * serves, `load` reads the file back into the table. While the gateway
 * runs, a worker that changes a quota count sets the table header's
 * H_QUOTA_DIRTY (algorithms.ts); every QUOTA_SAVE_INTERVAL_MS the store
 * looks at it and, when set, clears it, takes a snapshot of every local
 * quota bucket (each read under its lock) and writes the file. At shutdown
 * (`close`, once the workers have drained) it writes a last snapshot.
 *
 * The file (JSON, mode 0600, written to a temporary file, fsynced, renamed
 * over the old one, the directory fsynced: it is the old one or the new
 * one, never half of either):
 *
 *   { "turnpikeQuotas": 1, "savedAt": "2026-11-30T03:00:00.000Z",
 *     "quotas": [ { "policy": "perKey", "tag": -381124820, "period": "day",
 *                   "timeZone": "UTC", "start": 1764460800000, "end": 1764547200000,
 *                   "keys": [[hi, lo, count], ...], "overflow": count } ] }
 *
 * `tag` names the policy and everything its counts mean (its quota, period,
 * time zone, key...: common/config/rate-limit.ts), so a changed quota never
 * inherits counts; `hi`/`lo` are the 64-bit hash of the key (the key's text
 * is never stored); `start` is the period the counts belong to; `overflow`
 * is the count of the policy's shared overflow bucket, when keys had to
 * use it (table full). At load, a quota whose tag no longer belongs to a
 * local quota of the config, or whose period has ended, is dropped.
 *
 * What a crash loses: the counting since the last save, at most
 * QUOTA_SAVE_INTERVAL_MS (plus the time the save itself takes); those
 * requests are admitted again after the restart. A graceful stop (SIGTERM,
 * SIGINT, the admin API) loses nothing.
 *
 * A file that cannot be used never stops the gateway: one log line says
 * what happened and what to do, and quotas start from zero. A corrupt file
 * is moved aside (`<file>.corrupt-<time>`) so the next save cannot destroy
 * it. A file that cannot be written is retried at every interval, with one
 * log line when it starts failing and one when it works again.
 */
import { chmodSync, closeSync, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import fsp from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { QUOTA_SAVE_INTERVAL_MS, defaultQuotaFile } from '../common/config/rate-limit.js';
import type { GatewayConfig, RateLimitPolicy } from '../common/config/types.js';
import { log, type Level } from '../common/log.js';
import {
  E_HI, E_LO, E_TAG, F_A, F_B, F_C, F_EXPIRES, F_PENDING, F_SYNC, H_QUOTA_DIRTY, RateLimitTable, clockOffset, type ClockEpoch,
  type FindResult,
} from '../common/rate-limit-layout.js';
import { PeriodCache, type Period } from '../workers/policies/rate-limit/calendar.js';

/** The file format's version (`turnpikeQuotas`). */
export const QUOTA_FILE_VERSION = 1;

/** One local quota policy, as the store needs it. */
interface QuotaPolicy {
  name: string;
  tag: number;
  period: Period;
  timeZone: string;
  /** The period that is current, refreshed at each snapshot. */
  cache: PeriodCache;
}

/** One policy's counts in the file. */
export interface SavedQuota {
  policy: string;
  tag: number;
  period: Period;
  timeZone: string;
  start: number;
  end: number;
  keys: [number, number, number][];
  overflow?: number;
}

export interface QuotaFile {
  turnpikeQuotas: number;
  savedAt: string;
  quotas: SavedQuota[];
}

/** What `load` did, for its log line and for tests. */
export interface LoadReport {
  path: string;
  /** Keys whose counts are back in the table. */
  restored: number;
  /** Dropped: their period is over. */
  ended: number;
  /** Dropped: no local quota of the config has their tag any more (removed, or changed). */
  unknown: number;
  /** Dropped: malformed entries. */
  invalid: number;
  /** Not restored: the key's probe window was full (the table is too small). */
  full: number;
  /** The file could not be used at all (its reason), or null. */
  problem: string | null;
}

export interface QuotaStoreOptions {
  /** The table every thread decides on. */
  table: RateLimitTable;
  /** The shared clock (Unix ms), as the workers read it. */
  now: () => number;
  /** Relative paths are resolved from here (the working directory). */
  cwd: string;
  /** The log (common/log.ts's log, or a test's). */
  log: (level: Level, msg: string, fields?: Record<string, unknown>) => void;
  /** server.port was 0: the default file name changes at every start (said once, at start). */
  portWasZero?: boolean;
}

/** The local quota policies of a config, by tag. */
export function localQuotas(config: GatewayConfig): Map<number, RateLimitPolicy> {
  const out = new Map<number, RateLimitPolicy>();
  const add = (p: RateLimitPolicy) => {
    if (p.algorithm === 'quota' && p.scope === 'local' && p.period !== null) out.set(p.tag, p);
  };
  for (const p of Object.values(config.rateLimits)) add(p);
  for (const r of config.routes) for (const p of r.rateLimit) add(p);
  return out;
}

/** The quota file of a config: rateLimitTable.quotaFile, or the default named by the port served. */
export function quotaFilePath(config: GatewayConfig, cwd: string): string {
  return resolve(cwd, config.rateLimitTable.quotaFile ?? defaultQuotaFile(config.server.port));
}

/**
 * The engine's store, at start: reads the file back into the table
 * (before any worker serves) and saves from then on. `table` is the
 * engine's SharedArrayBuffer, `epoch` the clock every thread shares.
 */
export function openQuotaStore(table: SharedArrayBuffer, epoch: ClockEpoch, config: GatewayConfig, portWasZero: boolean): QuotaStore {
  const offset = clockOffset(epoch);
  const store = new QuotaStore({ table: new RateLimitTable(table), now: () => performance.now() + offset, cwd: process.cwd(), log, portWasZero });
  store.configure(config);
  store.load();
  store.start();
  return store;
}

const scratch: FindResult = { isNew: false, overflowed: false };

export class QuotaStore {
  private readonly table: RateLimitTable;
  private readonly now: () => number;
  private readonly cwd: string;
  private readonly log: QuotaStoreOptions['log'];
  private readonly portWasZero: boolean;
  private policies = new Map<number, QuotaPolicy>();
  /** Absolute path of the file. */
  path = '';
  /** The path is the default one (named by the port). */
  private usingDefault = true;
  /** Something the next save must write even if no count changed (a reload, a dropped entry, a failed write). */
  private pending = false;
  /** Whether this process ever had the file's content (read or written): an empty config then still writes. */
  private owned = false;
  /** The last write failed (its message), so that failures are logged once per state change. */
  private failing: string | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** A write in progress (the interval never overlaps two). */
  private writing: Promise<void> | null = null;
  /** Saves done, for tests and logs. */
  saves = 0;

  constructor(opts: QuotaStoreOptions) {
    this.table = opts.table;
    this.now = opts.now;
    this.cwd = opts.cwd;
    this.log = opts.log;
    this.portWasZero = opts.portWasZero ?? false;
  }

  /**
   * Takes the local quotas and the file path of a config (at start, and
   * after every reload). A changed set of quotas, or a new path, is
   * written at the next interval.
   */
  configure(config: GatewayConfig): void {
    const next = new Map<number, QuotaPolicy>();
    for (const [tag, p] of localQuotas(config)) {
      const old = this.policies.get(tag);
      next.set(tag, old ?? { name: p.name, tag, period: p.period!, timeZone: p.timeZone, cache: new PeriodCache(p.period!, p.timeZone) });
    }
    const changed = next.size !== this.policies.size || [...next.keys()].some((t) => !this.policies.has(t));
    this.policies = next;
    const path = quotaFilePath(config, this.cwd);
    this.usingDefault = config.rateLimitTable.quotaFile === null;
    if (this.path !== '' && path !== this.path) {
      this.log('info', 'quota counts are kept in a new file from now on (the old one is left as it is)', { from: this.path, to: path });
      this.pending = true;
    }
    this.path = path;
    if (changed && this.owned) this.pending = true;
  }

  /**
   * Reads the file back into the table (at start, before the workers
   * serve). Never throws: a missing file is a first start; any other
   * problem is logged once, and quotas start from zero.
   */
  load(): LoadReport {
    const report: LoadReport = { path: this.path, restored: 0, ended: 0, unknown: 0, invalid: 0, full: 0, problem: null };
    this.removeStaleTemporaries();
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      if (code === 'ENOENT') {
        this.owned = true;
        return report;
      }
      report.problem = `cannot be read (${code})`;
      this.log('error', `quota file ${this.path} cannot be read (${code}); local quotas start from zero and their counts cannot be saved either: give the gateway read and write access to it, or set rateLimitTable.quotaFile to a file it can use`, { file: this.path, code });
      return report;
    }
    let doc: QuotaFile;
    try {
      doc = parseQuotaFile(text);
    } catch (err) {
      report.problem = (err as Error).message;
      this.setAside(report.problem);
      this.owned = true;
      return report;
    }
    this.owned = true;
    const now = this.now();
    for (const q of doc.quotas) {
      const pol = this.policies.get(q.tag);
      if (pol === undefined) {
        report.unknown += q.keys.length + (q.overflow !== undefined ? 1 : 0);
        continue;
      }
      pol.cache.at(now);
      const { start, end } = pol.cache;
      if (q.start !== start) {
        report.ended += q.keys.length + (q.overflow !== undefined ? 1 : 0);
        continue;
      }
      for (const k of q.keys) {
        if (!validKey(k)) {
          report.invalid++;
          continue;
        }
        if (this.restore(q.tag, k[0], k[1], k[2], start, end, now)) report.restored++;
        else report.full++;
      }
      if (q.overflow !== undefined) {
        if (validCount(q.overflow)) this.restoreOverflow(q.tag, q.overflow, start, end, now);
        else report.invalid++;
      }
    }
    // Restoring is not a change; but what was dropped should leave the file too.
    this.table.f64[H_QUOTA_DIRTY] = 0;
    if (report.ended + report.unknown + report.invalid > 0) this.pending = true;
    this.log('info', 'quota counts restored', {
      file: this.path, keys: report.restored, droppedEnded: report.ended, droppedUnknownPolicy: report.unknown, droppedInvalid: report.invalid,
      ...(report.full > 0 ? { notRestoredTableFull: report.full } : {}),
    });
    if (report.full > 0) {
      this.log('warn', `${report.full} saved quota keys did not fit in the rate-limit table and start from zero: raise rateLimitTable.capacity`, { file: this.path });
    }
    return report;
  }

  /** Starts saving every QUOTA_SAVE_INTERVAL_MS (only when something changed). */
  start(): void {
    if (this.timer !== null) return;
    if (this.portWasZero && this.usingDefault && this.policies.size > 0) {
      this.log('warn', `local quota counts are saved to ${this.path}, named by a port picked at random (server.port 0): the next start will not find them; set rateLimitTable.quotaFile to keep them across restarts`, { file: this.path });
    }
    this.timer = setInterval(() => { void this.tick(); }, QUOTA_SAVE_INTERVAL_MS);
    this.timer.unref();
  }

  /** One interval: a save when something changed and no write is in progress. */
  async tick(): Promise<void> {
    if (this.writing !== null) return;
    if (!this.needsSave()) return;
    const text = this.snapshot();
    if (text === null) return;
    this.writing = this.write(text, false).finally(() => { this.writing = null; });
    await this.writing;
  }

  /**
   * The last save (at shutdown, once no worker counts any more): waits for
   * a write in progress, then writes synchronously if anything changed.
   */
  async close(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    if (this.writing !== null) await this.writing;
    if (!this.needsSave()) return;
    const text = this.snapshot();
    if (text !== null) await this.write(text, true);
  }

  private needsSave(): boolean {
    return this.pending || this.table.f64[H_QUOTA_DIRTY] !== 0;
  }

  /**
   * The file's text for the counts in the table now, or null when there is
   * nothing to keep and never was (no file is created for a config
   * without local quotas).
   */
  snapshot(): string | null {
    const t = this.table;
    const f64 = t.f64;
    const i32 = t.i32;
    // Cleared before reading: a count changed from now on sets it again (workers
    // set it after changing a count, under the bucket's lock, which this scan takes).
    f64[H_QUOTA_DIRTY] = 0;
    this.pending = false;
    if (this.policies.size === 0 && !this.owned) return null;
    const now = this.now();
    const out = new Map<number, SavedQuota>();
    for (const pol of this.policies.values()) {
      pol.cache.at(now);
      out.set(pol.tag, { policy: pol.name, tag: pol.tag, period: pol.period, timeZone: pol.timeZone, start: pol.cache.start, end: pol.cache.end, keys: [] });
    }
    let ahead = false;
    const read = (e: number, overflow: boolean): void => {
      const b = t.base(e);
      const tag = Atomics.load(i32, b + E_TAG);
      if (tag === 0) return;
      const q = out.get(tag);
      if (q === undefined) return;
      t.lock(e);
      const hi = i32[b + E_HI]!;
      const lo = i32[b + E_LO]!;
      const count = f64[(b >> 1) + F_A]!;
      const start = f64[(b >> 1) + F_B]!;
      const same = i32[b + E_TAG] === tag;
      t.unlock(e);
      if (!same || count <= 0) return;
      if (start > q.start) ahead = true; // counted in the next period already (a worker's clock ran ahead of this reading)
      if (start !== q.start) return;
      if (overflow) q.overflow = count;
      else q.keys.push([hi, lo, count]);
    };
    for (let e = 0; e < t.capacity; e++) read(e, false);
    for (const pol of this.policies.values()) read(t.overflowEntry(pol.tag), true);
    if (ahead) this.pending = true;
    const doc: QuotaFile = { turnpikeQuotas: QUOTA_FILE_VERSION, savedAt: new Date().toISOString(), quotas: [...out.values()] };
    return JSON.stringify(doc) + '\n';
  }

  /** Writes `text` atomically (synchronously at shutdown); on failure, the next interval tries again. */
  private async write(text: string, sync: boolean): Promise<void> {
    try {
      if (sync) writeAtomicallySync(this.path, text);
      else await writeAtomically(this.path, text);
      this.owned = true;
      this.saves++;
      if (this.failing !== null) {
        this.log('info', 'quota file written again', { file: this.path });
        this.failing = null;
      }
    } catch (err) {
      this.pending = true;
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      if (this.failing !== code) {
        this.failing = code;
        this.log('error', `quota file ${this.path} cannot be written (${code}); counts are kept in memory and saved once it can be: check the directory's permissions and free space, or set rateLimitTable.quotaFile`, { file: this.path, code });
      }
    }
  }

  /** Puts one key's count back (false: its window was full). */
  private restore(tag: number, hi: number, lo: number, count: number, start: number, end: number, now: number): boolean {
    const t = this.table;
    const e = t.find(tag, hi, lo, now, scratch);
    if (scratch.overflowed) {
      t.unlock(e);
      return false;
    }
    const fb = t.base(e) >> 1;
    const f64 = t.f64;
    f64[fb + F_A] = scratch.isNew ? count : Math.max(count, f64[fb + F_A]!);
    f64[fb + F_B] = start;
    f64[fb + F_C] = 0;
    f64[fb + F_EXPIRES] = end;
    f64[fb + F_PENDING] = 0;
    f64[fb + F_SYNC] = 0;
    t.unlock(e);
    return true;
  }

  private restoreOverflow(tag: number, count: number, start: number, end: number, now: number): void {
    const t = this.table;
    const e = t.overflowEntry(tag);
    const b = t.base(e);
    const fb = b >> 1;
    t.lock(e);
    const cur = t.i32[b + E_TAG];
    if (cur === 0 || cur === tag || t.f64[fb + F_EXPIRES]! <= now) {
      t.i32[b + E_HI] = 0;
      t.i32[b + E_LO] = 0;
      t.i32[b + E_TAG] = tag;
      t.f64[fb + F_A] = count;
      t.f64[fb + F_B] = start;
      t.f64[fb + F_C] = 0;
      t.f64[fb + F_EXPIRES] = end;
      t.f64[fb + F_PENDING] = 0;
      t.f64[fb + F_SYNC] = 0;
    }
    t.unlock(e);
  }

  /** A corrupt file is renamed, so that the next save cannot overwrite it. */
  private setAside(reason: string): void {
    const aside = `${this.path}.corrupt-${new Date().toISOString().replace(/[:.]/g, '-')}`;
    try {
      renameSync(this.path, aside);
      this.log('error', `quota file ${this.path} is not a valid quota file (${reason}); local quotas start from zero. It was moved to ${aside}: look at it if counts matter, then delete it`, { file: this.path, movedTo: aside });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      this.log('error', `quota file ${this.path} is not a valid quota file (${reason}) and could not be moved aside (${code}); local quotas start from zero and the next save replaces it: copy it elsewhere now if counts matter`, { file: this.path, code });
    }
  }

  /** Temporary files left by a process that died while writing (`<file>.tmp-<pid>`). */
  private removeStaleTemporaries(): void {
    const dir = dirname(this.path);
    const prefix = basename(this.path) + '.tmp-';
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return;
    }
    for (const n of names) {
      if (!n.startsWith(prefix)) continue;
      const pid = Number(n.slice(prefix.length));
      if (pid === process.pid || !Number.isInteger(pid) || isAlive(pid)) continue;
      try { unlinkSync(join(dir, n)); } catch { /* gone already */ }
    }
  }
}

/** Whether a process `pid` exists (signal 0; EPERM: it exists, owned by another user). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const INT32_MIN = -2_147_483_648;
const INT32_MAX = 2_147_483_647;

function isInt32(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= INT32_MIN && v <= INT32_MAX;
}

function validCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v > 0 && v <= Number.MAX_SAFE_INTEGER;
}

function validKey(k: unknown): k is [number, number, number] {
  return Array.isArray(k) && k.length === 3 && isInt32(k[0]) && isInt32(k[1]) && validCount(k[2]);
}

/**
 * The file's content, checked for shape (not for each key: a bad key is
 * skipped on its own). Throws an Error saying what is wrong.
 */
export function parseQuotaFile(text: string): QuotaFile {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new Error(`not JSON: ${(err as Error).message}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new Error('not a JSON object');
  const d = doc as Record<string, unknown>;
  if (d['turnpikeQuotas'] !== QUOTA_FILE_VERSION) {
    throw new Error(d['turnpikeQuotas'] === undefined ? 'no "turnpikeQuotas" version: not a quota file' : `format version ${JSON.stringify(d['turnpikeQuotas'])}, this gateway reads ${QUOTA_FILE_VERSION}`);
  }
  if (!Array.isArray(d['quotas'])) throw new Error('"quotas" is not a list');
  const quotas = d['quotas'] as unknown[];
  quotas.forEach((q, i) => {
    const o = q as Record<string, unknown> | null;
    if (typeof o !== 'object' || o === null) throw new Error(`quotas[${i}] is not an object`);
    if (!isInt32(o['tag'])) throw new Error(`quotas[${i}].tag is not a 32-bit integer`);
    if (typeof o['start'] !== 'number' || !Number.isFinite(o['start'])) throw new Error(`quotas[${i}].start is not a time`);
    if (!Array.isArray(o['keys'])) throw new Error(`quotas[${i}].keys is not a list`);
  });
  return d as unknown as QuotaFile;
}

/** Creates the file's directory (mode 0700) when missing. */
function ensureDir(dir: string): void {
  const created = mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (created !== undefined) chmodSync(dir, 0o700);
}

/**
 * Write to `<path>.tmp-<pid>` (mode 0600), fsync, rename over `path`, fsync
 * the directory: the file is the old one or the new one, never half.
 */
async function writeAtomically(path: string, text: string): Promise<void> {
  const dir = dirname(path);
  ensureDir(dir);
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await fsp.open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } catch (err) {
    await fh.close();
    await fsp.unlink(tmp).catch(() => {});
    throw err;
  }
  await fh.close();
  try {
    await fsp.rename(tmp, path);
  } catch (err) {
    await fsp.unlink(tmp).catch(() => {});
    throw err;
  }
  try {
    const dh = await fsp.open(dir, 'r');
    try { await dh.sync(); } finally { await dh.close(); }
  } catch { /* some filesystems refuse a directory fsync; the rename is done */ }
}

/** writeAtomically, blocking (the last save, at shutdown). */
function writeAtomicallySync(path: string, text: string): void {
  const dir = dirname(path);
  ensureDir(dir);
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    try { unlinkSync(tmp); } catch { /* best effort */ }
    throw err;
  }
  closeSync(fd);
  try {
    renameSync(tmp, path);
  } catch (err) {
    try { unlinkSync(tmp); } catch { /* best effort */ }
    throw err;
  }
  try {
    const dfd = openSync(dir, 'r');
    try { fsyncSync(dfd); } finally { closeSync(dfd); }
  } catch { /* as above */ }
}
