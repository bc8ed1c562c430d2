/**
 * Shared-memory rings of the logs: the access log (one ring per worker slot)
 * and the gateway log (one per thread: main, admin, each worker), each
 * written by its thread (one line at a time) and read by the engine's
 * writer (engine/log-writer.ts), which sends the bytes to the destination
 * straight from shared memory. No allocation, copy or message
 * per line or per batch: a 64 KiB buffer per batch was external memory
 * that pushed V8 into frequent major GCs (the same trap as request body
 * chunks: see the README's Performance section).
 *
 * Single producer, single consumer, lock-free with Atomics:
 *   header[H_WRITE]  end of the published bytes (the worker stores it after
 *                    the line's bytes are in place: a line is published
 *                    whole or not at all)
 *   header[H_READ]   start of the bytes not yet written out (the engine
 *                    stores it once its write of them has completed)
 *   header[H_WRAP]   where the published bytes end before the worker
 *                    wrapped to offset 0
 *   header[H_DROPPED] lines the worker could not fit (the ring was full: the
 *                    destination is slower than the traffic)
 * H_WRITE === H_READ means empty; the writer always leaves a gap of at least
 * one byte, so a full ring never looks empty.
 */

/** Bytes of one worker's access log ring: ~12,000 access log lines of 330 bytes. */
export const RING_BYTES = 4 * 1024 * 1024;
/** Bytes of one thread's gateway log ring: ~1,000 lines of 250 bytes (the log carries events, not requests). */
export const LOG_RING_BYTES = 256 * 1024;
export const H_WRITE = 0;
export const H_READ = 1;
export const H_WRAP = 2;
export const H_DROPPED = 3;
export const HEADER_BYTES = 4 * 4;

export interface AccessRing {
  data: SharedArrayBuffer;
  header: SharedArrayBuffer;
}

/** A ring of `bytes` bytes (RING_BYTES for an access log ring, LOG_RING_BYTES for a gateway log ring). */
export function createAccessRing(bytes = RING_BYTES): AccessRing {
  return { data: new SharedArrayBuffer(bytes), header: new SharedArrayBuffer(HEADER_BYTES) };
}

/** The worker's end. */
export class RingWriter {
  private readonly buf: Buffer;
  private readonly h: Int32Array;
  private readonly size: number;

  constructor(ring: AccessRing) {
    this.buf = Buffer.from(ring.data);
    this.h = new Int32Array(ring.header);
    this.size = ring.data.byteLength;
  }

  /** Appends one line (with its newline); false (and counted) when the ring is full. */
  write(line: string): boolean {
    const n = Buffer.byteLength(line, 'utf8');
    const h = this.h;
    const w = Atomics.load(h, H_WRITE);
    const r = Atomics.load(h, H_READ);
    if (w >= r) {
      if (this.size - w > n) {
        this.buf.write(line, w, n, 'utf8');
        Atomics.store(h, H_WRITE, w + n);
        return true;
      }
      if (r > n) {
        // Wrap: the bytes published so far end at w; this line starts at 0.
        Atomics.store(h, H_WRAP, w);
        this.buf.write(line, 0, n, 'utf8');
        Atomics.store(h, H_WRITE, n);
        return true;
      }
    } else if (r - w > n) {
      this.buf.write(line, w, n, 'utf8');
      Atomics.store(h, H_WRITE, w + n);
      return true;
    }
    Atomics.add(h, H_DROPPED, 1);
    return false;
  }
}

/** The engine's end: the next published span, then release it once written out. */
export class RingReader {
  readonly buf: Buffer;
  private readonly h: Int32Array;

  constructor(ring: AccessRing) {
    this.buf = Buffer.from(ring.data);
    this.h = new Int32Array(ring.header);
  }

  /** [start, end) of the next published bytes, or null when there are none. */
  next(): [number, number] | null {
    const h = this.h;
    let r = Atomics.load(h, H_READ);
    const w = Atomics.load(h, H_WRITE);
    if (r === w) return null;
    if (w > r) return [r, w];
    const wrap = Atomics.load(h, H_WRAP);
    if (r < wrap) return [r, wrap];
    // Everything before the wrap is out: go on from 0.
    r = 0;
    Atomics.store(h, H_READ, 0);
    return w > 0 ? [0, w] : null;
  }

  /** The bytes up to `end` are written out: the worker may reuse them. */
  release(end: number): void {
    Atomics.store(this.h, H_READ, end);
  }

  /** Lines the writer could not fit (the ring was full), a running total. */
  get dropped(): number {
    return Atomics.load(this.h, H_DROPPED);
  }

  /** Lines published and not yet released from `from` on (what would be lost if nothing more is written). */
  linesWaiting(from = Atomics.load(this.h, H_READ)): number {
    const w = Atomics.load(this.h, H_WRITE);
    if (from === w) return 0;
    if (w > from) return countLines(this.buf, from, w);
    return countLines(this.buf, from, Atomics.load(this.h, H_WRAP)) + countLines(this.buf, 0, w);
  }
}

/** Newlines in buf[start, end). */
export function countLines(buf: Uint8Array, start: number, end: number): number {
  let n = 0;
  for (let i = buf.indexOf(10, start); i !== -1 && i < end; i = buf.indexOf(10, i + 1)) n++;
  return n;
}
