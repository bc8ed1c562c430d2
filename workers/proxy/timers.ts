/**
 * One coarse sweeper per worker instead of a timer per request (undici's
 * util/timers.js makes the same trade): exchanges carry a deadline and sit
 * in an intrusive list; every SWEEP_MS the list is walked and expired
 * exchanges are told so. Creating and clearing a Node timer per request
 * costs more than the whole walk. Timeouts are therefore accurate to
 * +SWEEP_MS, which the README states. The sweep (transport/uws-server.ts)
 * also ticks the thread's event-loop delay sampler
 * (common/runtime-metrics.ts loopTick): how late it runs is the loop delay.
 */

export const SWEEP_MS = 25;

/**
 * A clock refreshed at every sweep, for deadlines that are pushed forward on
 * every body chunk (a performance.now() per chunk adds up on large bodies).
 * It lags real time by at most SWEEP_MS, so such a deadline may fire up to
 * that much early; body idle timeouts are seconds long.
 */
export const coarse = { now: performance.now() };

export interface Timed {
  deadline: number;
  prevTimed: Timed | null;
  nextTimed: Timed | null;
  onDeadline(now: number): void;
}

export class TimerList {
  head: Timed | null = null;
  count = 0;

  add(t: Timed): void {
    t.prevTimed = null;
    t.nextTimed = this.head;
    if (this.head !== null) this.head.prevTimed = t;
    this.head = t;
    this.count++;
  }

  remove(t: Timed): void {
    if (t.prevTimed !== null) t.prevTimed.nextTimed = t.nextTimed;
    else if (this.head === t) this.head = t.nextTimed;
    else return; // not in the list
    if (t.nextTimed !== null) t.nextTimed.prevTimed = t.prevTimed;
    t.prevTimed = null;
    t.nextTimed = null;
    this.count--;
  }

  sweep(now: number): void {
    coarse.now = now;
    let t = this.head;
    while (t !== null) {
      const next = t.nextTimed;
      if (t.deadline > 0 && now >= t.deadline) t.onDeadline(now);
      t = next;
    }
  }
}
