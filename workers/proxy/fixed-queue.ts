/**
 * Power-of-two ring buffer FIFO, after node/lib/internal/fixed_queue.js and
 * undici's dispatcher/fixed-queue.js: O(1) push/shift without Array#shift's
 * copying. Bounded by the caller (maxPending), so a single ring that grows
 * by doubling is enough.
 */
export class FixedQueue<T> {
  private buf: (T | undefined)[];
  private head = 0;
  private tail = 0;
  private mask: number;
  length = 0;

  constructor(capacityPow2 = 16) {
    this.buf = new Array(capacityPow2);
    this.mask = capacityPow2 - 1;
  }

  push(v: T): void {
    if (this.length === this.buf.length) this.grow();
    this.buf[this.tail] = v;
    this.tail = (this.tail + 1) & this.mask;
    this.length++;
  }

  shift(): T | undefined {
    if (this.length === 0) return undefined;
    const v = this.buf[this.head];
    this.buf[this.head] = undefined;
    this.head = (this.head + 1) & this.mask;
    this.length--;
    return v;
  }

  private grow(): void {
    const old = this.buf;
    const n = old.length;
    const next = new Array<T | undefined>(n * 2);
    for (let i = 0; i < n; i++) next[i] = old[(this.head + i) & this.mask];
    this.buf = next;
    this.head = 0;
    this.tail = n;
    this.mask = n * 2 - 1;
  }
}
