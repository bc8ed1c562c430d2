/**
 * Audit trail of admin API writes: one JSON line per attempt (applied,
 * dry run, refused, forbidden or malformed) appended to admin.auditLog
 * (created 0600, directory 0700 when created), and the newest 1000 kept in
 * memory for GET /admin/audit. At start the tail of an existing file is read
 * back, so the listing survives a restart.
 *
 * Writes are synchronous (writeSync on an fd opened with O_APPEND): admin
 * writes are rare, and a line must be on disk before the answer says "done".
 */
import { createHash } from 'node:crypto';
import { chmodSync, closeSync, fstatSync, mkdirSync, openSync, readSync, writeSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { GatewayConfig } from '../../common/config/types.js';
import type { ConfigChanges } from '../../common/protocol.js';
import type { Role } from './auth.js';

export type AuditResult = 'applied' | 'dry_run' | 'refused' | 'forbidden' | 'rejected' | 'error';

export interface AuditRecord {
  /** ISO 8601. */
  time: string;
  /** Token name ("env", "generated", or the tokens-file name). */
  actor: string;
  role: Role;
  /** `config.reload` or `config.replace`. */
  action: string;
  method: string;
  path: string;
  result: AuditResult;
  /** HTTP status answered. */
  status: number;
  dryRun: boolean;
  versionBefore: number;
  versionAfter: number;
  /** SHA-256 (hex) of the resolved config JSON without its version number. */
  beforeHash: string;
  afterHash: string;
  changes: ConfigChanges | null;
  /** The problems, when refused or rejected (at most 50). */
  errors: { path: string; message: string }[];
}

/** In-memory entry: the record and its sequence number (the cursor). */
interface Entry {
  seq: number;
  record: AuditRecord;
}

export const AUDIT_CAPACITY = 1000;

/**
 * admin.auditLog when not set: named by the port the admin listener bound,
 * so gateways started from one directory keep separate trails.
 */
export function defaultAuditLog(adminPort: number): string {
  return `.turnpike/audit-${adminPort}.log`;
}
/** At start, at most this much of the end of an existing file is read back. */
const TAIL_BYTES = 4 * 1024 * 1024;

/** Hash identifying a resolved config's content (the version is left out: same content, same hash). */
export function configHash(config: GatewayConfig): string {
  const { version: _version, ...content } = config;
  return createHash('sha256').update(JSON.stringify(content)).digest('hex');
}

export class AuditLog {
  private readonly entries: Entry[] = [];
  private nextSeq = 1;
  private fd: number | null = null;
  /** Absolute path of the open file. */
  path = '';

  constructor(private readonly capacity = AUDIT_CAPACITY) {}

  /**
   * Opens (creating) the file and reads its tail back. Throws an Error whose
   * message names the setting and the path.
   */
  open(configured: string, cwd: string): void {
    const path = resolve(cwd, configured);
    if (path === this.path && this.fd !== null) return;
    let fd: number;
    try {
      const dir = dirname(path);
      const created = mkdirSync(dir, { recursive: true, mode: 0o700 });
      if (created !== undefined) chmodSync(dir, 0o700);
      fd = openSync(path, 'a+', 0o600);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      throw new Error(`admin.auditLog: cannot open ${JSON.stringify(path)} for appending (${code}); fix the path or its permissions`);
    }
    const first = this.fd === null && this.entries.length === 0;
    this.close();
    this.fd = fd;
    this.path = path;
    if (first) this.readTail(fd);
  }

  close(): void {
    if (this.fd !== null) {
      try { closeSync(this.fd); } catch { /* already closed */ }
      this.fd = null;
    }
  }

  private readTail(fd: number): void {
    const size = fstatSync(fd).size;
    if (size === 0) return;
    const len = Math.min(size, TAIL_BYTES);
    const buf = Buffer.alloc(len);
    readSync(fd, buf, 0, len, size - len);
    const lines = buf.toString('utf8').split('\n');
    if (len < size) lines.shift(); // partial first line
    const records: AuditRecord[] = [];
    for (const line of lines) {
      if (line.trim() === '') continue;
      try {
        const r = JSON.parse(line) as AuditRecord;
        if (typeof r === 'object' && r !== null && typeof r.time === 'string') records.push(r);
      } catch { /* a torn or foreign line: skip it */ }
    }
    for (const record of records.slice(-this.capacity)) this.remember(record);
  }

  private remember(record: AuditRecord): void {
    this.entries.push({ seq: this.nextSeq++, record });
    if (this.entries.length > this.capacity) this.entries.shift();
  }

  /** Records an entry; returns a problem writing the file, or null. The entry is kept in memory either way. */
  append(record: AuditRecord): string | null {
    this.remember(record);
    if (this.fd === null) return 'the audit log is not open';
    try {
      writeSync(this.fd, JSON.stringify(record) + '\n');
      return null;
    } catch (e) {
      return `cannot append to ${this.path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
    }
  }

  /**
   * Newest first: up to `limit` records older than `before` (a sequence
   * number from a previous page), and the sequence number to continue from.
   */
  page(limit: number, before: number | null): { records: AuditRecord[]; next: number | null } {
    const out: AuditRecord[] = [];
    let i = this.entries.length - 1;
    if (before !== null) while (i >= 0 && this.entries[i]!.seq >= before) i--;
    for (; i >= 0 && out.length < limit; i--) out.push(this.entries[i]!.record);
    const next = i >= 0 && out.length > 0 ? this.entries[i + 1]!.seq : null;
    return { records: out, next };
  }

  get size(): number {
    return this.entries.length;
  }
}
