/**
 * Event-loop delay and GC durations of one thread, sampled into the
 * thread's shared metrics cells (common/metrics-layout.ts, G_LOOP and G_GC)
 * so the admin thread can export them per thread (`thread="worker-0"`...)
 * with no message and no per-request work. Every worker runs one, and the
 * admin thread runs one for itself (into cells of its own); none runs when
 * nobody can read them (admin.enabled: false, a restart-only setting).
 *
 * - Event loop: no timer of its own where the thread already has one. A
 *   worker's 25 ms sweep (workers/proxy/timers.ts SWEEP_MS, run by
 *   transport/uws-server.ts for the uWS and node backends) calls
 *   loopTick(now), which records the time since the previous sweep into a
 *   perf_hooks.createHistogram(); the admin thread has no such timer and
 *   ticks itself every OWN_TICK_MS. This is what monitorEventLoopDelay did
 *   with its own 10 ms libuv timer (the histogram holds the time between
 *   two ticks of a repeating timer), minus the wake-ups: 100 a second in
 *   every thread cost more CPU than everything else an idle gateway does.
 *   What is exported is the delay beyond the tick period (prom-client
 *   exports the raw value: ~0.010 on an idle loop). Every SAMPLE_MS a tick
 *   summarises the histogram into min, max, mean, stddev, p50, p90, p99,
 *   plus the delay of a setImmediate (prom-client's
 *   nodejs_eventloop_lag_seconds). Node's timers (and libuv's loop clock)
 *   count whole milliseconds, so a delay is known to ~1 ms, as before.
 *   Each tick also stamps G_LOOP_TICK with the time the next tick is due:
 *   a loop blocked right now cannot tick, so the admin thread reports how
 *   overdue that tick is as the lag and max when it is larger. Like
 *   prom-client, the window restarts after each scrape, but no tick delay
 *   is lost to it: ticks go into `cur` (the delays since the last summary);
 *   each summary adds `cur` into `win` (the window the cells show), resets
 *   `cur` and writes the cells from `win`, and first resets `win` when the
 *   admin thread has bumped G_SCRAPE_EPOCH since the previous summary (a
 *   scrape: a new window). So every delay is in the cells from the summary
 *   after it (within SAMPLE_MS) at least until the summary after the next
 *   scrape, i.e. every delay is shown by at least one scrape, and the cells
 *   change every summary whatever the scrape rate. A scrape shows the
 *   delays recorded from (at most SAMPLE_MS before) the previous scrape to
 *   (at most SAMPLE_MS before) itself.
 * - GC: a PerformanceObserver on 'gc' entries, each duration added to the
 *   histogram of its kind (major, minor, incremental, weakcb) with
 *   prom-client's buckets. Counted as they come: a cumulative histogram.
 *
 * On Bun the sampler does not run ('gc' entries are never delivered there,
 * and the Bun backend has no sweep to tick it): G_LOOP_SAMPLED /
 * G_GC_OBSERVED stay 0, so the thread is left out of those metrics rather
 * than reported as zero.
 */
import { type RecordableHistogram, PerformanceObserver, constants, createHistogram } from 'node:perf_hooks';
import {
  GC_BUCKETS, GC_HIST_CELLS, G_GC, G_GC_OBSERVED, G_LOOP, G_LOOP_SAMPLED, G_LOOP_TICK, G_SCRAPE_EPOCH, observe,
} from './metrics-layout.js';

/** How often the event-loop histogram is summarised into the cells (ms). */
export const SAMPLE_MS = 1000;
/** The tick period of a thread with no timer to tick the sampler (the admin thread), ms. */
export const OWN_TICK_MS = 100;

/** perf_hooks GC kind -> index in GC_KINDS (major, minor, incremental, weakcb). */
const GC_KIND_INDEX = new Map<number, number>([
  [constants.NODE_PERFORMANCE_GC_MAJOR, 0],
  [constants.NODE_PERFORMANCE_GC_MINOR, 1],
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL, 2],
  [constants.NODE_PERFORMANCE_GC_WEAKCB, 3],
]);

/** The sampler this thread's own sweep ticks (through loopTick), or null. */
let ticked: RuntimeSampler | null = null;

/**
 * Called by a timer the thread already runs every `periodMs` of its
 * sampler (a worker's sweep), with performance.now() of that run: records
 * the loop delay since the previous call. Does nothing when no sampler of
 * this thread waits for it (admin.enabled: false, Bun). Cost: one
 * histogram record, and once a second the summary.
 */
export function loopTick(now: number): void {
  if (ticked !== null) ticked.tick(now);
}

export interface SamplerOptions {
  /** The period of the ticks, ms: the histogram holds times between ticks, the delay is what exceeds it. */
  periodMs: number;
  /**
   * true: the thread ticks the sampler from a timer it already runs, by
   * calling loopTick() every periodMs (one such sampler per thread);
   * false: the sampler runs its own setInterval(periodMs).
   */
  external: boolean;
}

export class RuntimeSampler {
  /** Tick delays since the last summary (ns between two ticks). */
  private cur: RecordableHistogram | null = null;
  /** The window the cells show: the summaries since the first one after the last scrape. */
  private win: RecordableHistogram | null = null;
  private observer: PerformanceObserver | null = null;
  private timer: NodeJS.Timeout | null = null;
  private epoch: number;
  private lagStart = 0;
  /** performance.now() of the previous tick; 0 before the first (the time until then is start-up, not delay). */
  private last = 0;
  /** performance.now() of the last summary. */
  private summarised = 0;
  private readonly periodMs: number;

  constructor(private readonly cells: Float64Array, private readonly opts: SamplerOptions) {
    this.epoch = cells[G_SCRAPE_EPOCH]!;
    this.periodMs = opts.periodMs;
  }

  start(): this {
    const c = this.cells;
    // Bun delivers no 'gc' entry, and its backend has no sweep to tick this: zeros would look like data.
    if (typeof (process.versions as Record<string, string | undefined>).bun === 'string') return this;
    this.cur = createHistogram();
    this.win = createHistogram();
    this.summarised = performance.now();
    // Due: the first tick (the sweep starts once the backend listens, within a period of this).
    c[G_LOOP_TICK] = Date.now() + this.periodMs;
    c[G_LOOP_SAMPLED] = 1;
    if (this.opts.external) {
      ticked = this;
    } else {
      this.timer = setInterval(() => this.tick(performance.now()), this.periodMs);
      this.timer.unref();
    }
    try {
      const obs = new PerformanceObserver((list) => {
        for (const e of list.getEntries()) {
          const kind = GC_KIND_INDEX.get((e as { detail?: { kind?: number } | null }).detail?.kind ?? -1);
          if (kind !== undefined) observe(c, G_GC + kind * GC_HIST_CELLS, GC_BUCKETS, e.duration / 1000);
        }
      });
      obs.observe({ entryTypes: ['gc'] });
      this.observer = obs;
      c[G_GC_OBSERVED] = 1;
    } catch {
      // No 'gc' entries on this runtime.
    }
    return this;
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    if (ticked === this) ticked = null;
    this.cur = null;
    this.win = null;
    this.observer?.disconnect();
  }

  /**
   * One tick, `now` = performance.now(): the time since the previous tick
   * goes into `cur` (ns, what monitorEventLoopDelay records), and every
   * SAMPLE_MS `cur` is moved into the window and the window summarised into
   * the cells.
   */
  tick(now: number): void {
    const h = this.cur;
    if (h === null) return;
    const c = this.cells;
    c[G_LOOP_TICK] = Date.now() + this.periodMs;
    if (this.last !== 0) h.record(Math.max(1, Math.round((now - this.last) * 1e6)));
    this.last = now;
    if (now - this.summarised >= SAMPLE_MS) {
      this.summarised = now;
      this.sample(h, this.win!);
    }
  }

  /** A histogram value (ns between two ticks) -> the delay beyond the tick period, seconds. */
  private delay(ns: number): number {
    return Math.max(0, ns / 1e6 - this.periodMs) / 1000;
  }

  /**
   * One summary: `cur` (the delays since the last summary) joins the window
   * `win` (a new one if a scrape bumped G_SCRAPE_EPOCH since the last
   * summary), `cur` is emptied and the cells get the window's statistics.
   */
  private sample(cur: RecordableHistogram, h: RecordableHistogram): void {
    const c = this.cells;
    const epoch = c[G_SCRAPE_EPOCH]!;
    if (epoch !== this.epoch) {
      // Scraped since the last summary: a new window starts, with the delays since that summary.
      this.epoch = epoch;
      h.reset();
    }
    h.add(cur);
    cur.reset();
    if (h.count === 0) return;
    c[G_LOOP + 1] = this.delay(h.min);
    c[G_LOOP + 2] = this.delay(h.max);
    c[G_LOOP + 3] = this.delay(h.mean);
    c[G_LOOP + 4] = h.stddev / 1e9;
    c[G_LOOP + 5] = this.delay(h.percentile(50));
    c[G_LOOP + 6] = this.delay(h.percentile(90));
    c[G_LOOP + 7] = this.delay(h.percentile(99));
    this.lagStart = performance.now();
    setImmediate(this.lagDone);
  }

  private readonly lagDone = (): void => {
    this.cells[G_LOOP] = (performance.now() - this.lagStart) / 1000;
  };
}
