/**
 * The one writer of the access log, in the main thread. Workers put whole
 * lines into their shared-memory rings (common/access-ring.ts); this polls
 * the rings every POLL_MS and writes what they hold straight from shared
 * memory to the destination with fs.write on the libuv thread pool (one
 * write at a time, in order), then releases the bytes to the worker. The
 * main thread never blocks on a slow pipe or disk, and there is no copy,
 * allocation or message per line or batch.
 *
 * - One writer, so lines of different workers never interleave, on a file
 *   or a pipe, and writes can be large. `stderr` as a destination is shared
 *   with the gateway log, whose lines fall between two writes.
 * - A destination that cannot keep up fills the rings; a worker whose ring
 *   is full drops its lines and counts them (`turnpike_access_log_dropped_total`,
 *   summed here into the control block's C_ACCESS_LOG_DROPPED with the
 *   lines of failed writes).
 * - SIGUSR1 reopens a file destination (logrotate's postrotate): the write
 *   under way finishes on the old file.
 * - A reload that moves the access log: what the rings hold then goes to
 *   the new destination.
 */
import { closeSync, openSync, write as fsWrite } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { type AccessRing, RingReader } from '../common/access-ring.js';
import { log } from '../common/log.js';
import { C_ACCESS_LOG_DROPPED } from '../common/protocol.js';

/** How often the rings are looked at (ms). */
export const POLL_MS = 25;
/** At shutdown, how long the writer may take to write out what the rings hold. */
const DRAIN_MS = 2000;

function lineCount(b: Uint8Array): number {
  let n = 0;
  for (let i = b.indexOf(10); i !== -1; i = b.indexOf(10, i + 1)) n++;
  return n;
}

export class AccessWriter {
  private readonly readers: RingReader[];
  private fd = -1;
  private file: string | null = null;
  private where: string | null = null;
  private writing = false;
  private failing = false;
  private reopenWanted = false;
  private failedLines = 0;
  private next = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(rings: readonly AccessRing[], private readonly control: Int32Array) {
    this.readers = rings.map((r) => new RingReader(r));
    this.timer = setInterval(() => this.poll(), POLL_MS);
    this.timer.unref();
  }

  /** The running config's destination (`stdout`, `stderr`, a file path), or null when the access log is off. */
  setDestination(where: string | null): void {
    if (where === this.where) return;
    const oldFd = this.file !== null ? this.fd : -1;
    this.where = where;
    this.file = null;
    this.fd = -1;
    if (where === 'stdout') this.fd = 1;
    else if (where === 'stderr') this.fd = 2;
    else if (where !== null) {
      try {
        this.file = resolvePath(where);
        this.fd = openSync(this.file, 'a', 0o640);
      } catch (err) {
        this.file = null;
        log('error', 'cannot open the access log; its lines are dropped until it can be', { destination: where, error: (err as Error).message });
      }
    }
    if (oldFd >= 0) this.closeLater(oldFd);
  }

  reopen(): void {
    if (this.file !== null) this.reopenWanted = true;
  }

  /** Writes out what the rings hold (at most DRAIN_MS), then stops: the last step of a drain. */
  async drain(): Promise<void> {
    clearInterval(this.timer);
    const until = Date.now() + DRAIN_MS;
    for (;;) {
      this.poll();
      const empty = !this.writing && this.readers.every((r) => r.next() === null);
      if (empty || Date.now() > until) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    if (this.file !== null) {
      try { closeSync(this.fd); } catch { /* gone already */ }
    }
  }

  private closeLater(fd: number): void {
    // A write to it may be under way: close once the thread pool is done with it.
    setTimeout(() => { try { closeSync(fd); } catch { /* gone already */ } }, 1000).unref();
  }

  private poll(): void {
    Atomics.store(this.control, C_ACCESS_LOG_DROPPED, this.readers.reduce((n, r) => n + r.dropped, 0) + this.failedLines);
    if (this.writing) return;
    if (this.reopenWanted && this.file !== null) {
      this.reopenWanted = false;
      try {
        const fd = openSync(this.file, 'a', 0o640);
        this.closeLater(this.fd);
        this.fd = fd;
      } catch (err) {
        log('error', 'access log: cannot reopen the file; still writing to the old one', { destination: this.where, error: (err as Error).message });
      }
    }
    // Round robin over the rings, one span at a time.
    for (let k = 0; k < this.readers.length; k++) {
      const i = (this.next + k) % this.readers.length;
      const reader = this.readers[i]!;
      const span = reader.next();
      if (span === null) continue;
      this.next = i + 1;
      if (this.fd < 0) {
        reader.release(span[1]); // off, or the file cannot be opened: dropped (counted when it failed)
        if (this.where !== null) this.failedLines += lineCount(reader.buf.subarray(span[0], span[1]));
        continue;
      }
      this.writing = true;
      this.writeSpan(reader, span[0], span[1]);
      return;
    }
  }

  private writeSpan(reader: RingReader, start: number, end: number): void {
    fsWrite(this.fd, reader.buf, start, end - start, null, (err, written) => {
      if (err !== null) {
        this.failedLines += lineCount(reader.buf.subarray(start, end));
        if (!this.failing) {
          this.failing = true;
          log('error', 'access log lines dropped: the write failed', { destination: this.where, error: err.message });
        }
        reader.release(end);
      } else if (start + written < end) {
        this.writeSpan(reader, start + written, end); // a pipe took part of it
        return;
      } else {
        this.failing = false;
        reader.release(end);
      }
      this.writing = false;
      this.poll(); // more may be waiting
    });
  }
}
