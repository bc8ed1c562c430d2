/**
 * Watching files for the engine: the config file (`turnpike start --watch`)
 * and the certificate, key and CA files the running config names (always,
 * when it names any). A change applies as a reload (the caller's `apply`),
 * once the files have settled: a file rewritten in place in several writes
 * is applied whole, never its first, possibly valid, part.
 *
 * Directories are watched, not files: editors and tools replace files by
 * rename, and a Kubernetes Secret or ConfigMap volume swaps a `..data`
 * symlink without touching the file's own name. Any event in a watched
 * directory costs one read of the watched files; only a change in their
 * bytes (through symlinks) applies.
 */
import { type FSWatcher, readFileSync, statSync, watch } from 'node:fs';
import { dirname, resolve as resolvePath } from 'node:path';
import type { GatewayConfig } from '../common/config/types.js';
import { log } from '../common/log.js';

/**
 * Calls `apply` after a burst of changes to `files` once their bytes read
 * the same twice, `settleMs` apart, and differ from the bytes last applied. One settle loop at a time; a change
 * during `apply` starts another.
 */
export class FileSettler {
  private running = false;
  private dirty = false;
  private applied: Buffer | null;

  constructor(private files: readonly string[], private readonly settleMs: number, private readonly apply: () => Promise<unknown>) {
    this.applied = this.read();
  }

  /** Watch other files from now on; what they hold now counts as applied. */
  retarget(files: readonly string[]): void {
    this.files = files;
    this.applied = this.read();
  }

  changed(): void {
    this.dirty = true;
    if (!this.running) void this.settle();
  }

  /** All the files' bytes, each preceded by its length (so that moving bytes between two files is a change), or null while one is missing. */
  private read(): Buffer | null {
    const parts: Buffer[] = [];
    for (const f of this.files) {
      try {
        const b = readFileSync(f);
        const len = Buffer.allocUnsafe(4);
        len.writeUInt32BE(b.length);
        parts.push(len, b);
      } catch {
        return null; // mid-rename: the next event or read will see it
      }
    }
    return Buffer.concat(parts);
  }

  private async settle(): Promise<void> {
    this.running = true;
    try {
      let previous: Buffer | null = null;
      for (;;) {
        this.dirty = false;
        await new Promise((r) => setTimeout(r, this.settleMs));
        const current = this.read();
        // Equal bytes 250 ms apart settle it, whatever else changed in the directory meanwhile (a log
        // file written there every 100 ms must not hold a renewal back: found by the break-it pass).
        if (previous !== null && current !== null && current.equals(previous)) break;
        previous = current;
      }
      this.dirty = false;
      if (this.applied !== null && previous !== null && previous.equals(this.applied)) return;
      this.applied = previous;
      await this.apply();
    } finally {
      this.running = false;
      if (this.dirty) void this.settle();
    }
  }
}

function inode(path: string): number {
  try {
    return statSync(path).ino;
  } catch {
    return -1;
  }
}

/** How often the watched list is matched to the running config (a comparison of paths, no I/O unless it changed). */
const REFRESH_MS = 2_000;

/** Every certificate, key and CA file `config` names (server.tls, its sni entries, upstreams' tls), absolute. */
export function tlsFiles(config: GatewayConfig): string[] {
  const out = new Set<string>();
  const tls = config.server.tls;
  if (tls !== null) {
    for (const p of [tls.default, ...tls.sni]) {
      out.add(resolvePath(p.certFile));
      out.add(resolvePath(p.keyFile));
    }
  }
  for (const u of Object.values(config.upstreams)) {
    if (u.tls.caFile !== null) out.add(resolvePath(u.tls.caFile));
    if (u.tls.clientCert !== null) {
      out.add(resolvePath(u.tls.clientCert.certFile));
      out.add(resolvePath(u.tls.clientCert.keyFile));
    }
  }
  return [...out].sort();
}

/**
 * Reloads when a TLS file of the running config changes. The file list
 * follows the running config (a reload from any source: checked every
 * REFRESH_MS and after each reload this watcher makes). An unwatchable directory (removed, no permission) is logged once
 * and skipped: SIGHUP still reloads.
 */
export class CertWatcher {
  private readonly watchers = new Map<string, FSWatcher>();
  private readonly settler: FileSettler;
  private files: string[] = [];
  private readonly timer: NodeJS.Timeout;

  /** Per file: inode, size and mtime last seen through symlinks (the polling safety net). */
  private seen = '';
  /** Per watched directory: its inode when watched (a directory replaced by another is watched again). */
  private readonly dirInodes = new Map<string, number>();

  /**
   * `upToDate()`: whether the running config already serves what the files
   * hold (a reload from elsewhere, SIGHUP or the admin API, read them: then
   * the watch has nothing to apply).
   */
  constructor(settleMs: number, private readonly current: () => string[], private readonly apply: () => Promise<unknown>, private readonly upToDate: () => boolean) {
    this.settler = new FileSettler([], settleMs, async () => {
      if (!this.upToDate()) await this.apply();
      this.refresh();
    });
    this.timer = setInterval(() => this.refresh(), REFRESH_MS).unref();
    this.refresh();
  }

  /**
   * Matches the watched files and directories to the running config's, and
   * is the safety net of the events: a file whose inode, size or mtime
   * changed since the last call, or a watched directory replaced by another
   * (`mv live live.old && mkdir live`: its watch still follows the old one),
   * counts as a change event.
   */
  refresh(): void {
    const files = this.current();
    if (files.join('\0') !== this.files.join('\0')) {
      this.files = files;
      this.settler.retarget(files);
    }
    const seen = files.map((f) => {
      try {
        const st = statSync(f);
        return `${st.ino}:${st.size}:${st.mtimeMs}`;
      } catch {
        return '-';
      }
    }).join('\0');
    if (seen !== this.seen) {
      if (this.seen !== '') this.settler.changed();
      this.seen = seen;
    }
    const dirs = new Set(files.map((f) => dirname(f)));
    for (const [dir, w] of this.watchers) {
      if (!dirs.has(dir) || inode(dir) !== this.dirInodes.get(dir)) {
        w.close();
        this.watchers.delete(dir);
        this.dirInodes.delete(dir);
      }
    }
    for (const dir of dirs) {
      if (this.watchers.has(dir)) continue;
      try {
        const w = watch(dir, { persistent: false }, () => this.settler.changed());
        w.on('error', () => {
          w.close();
          this.watchers.delete(dir);
        });
        this.watchers.set(dir, w);
        this.dirInodes.set(dir, inode(dir));
      } catch (err) {
        log('warn', 'cannot watch a certificate directory; certificate changes there apply on reload (SIGHUP) only', { directory: dir, error: (err as Error).message });
      }
    }
  }

  close(): void {
    clearInterval(this.timer);
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
  }
}
