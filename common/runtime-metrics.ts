/**
 * Event-loop delay and GC durations of one thread, sampled into the
 * thread's shared metrics cells (common/metrics-layout.ts, G_LOOP and G_GC)
 * so the admin thread can export them per thread (`thread="worker-0"`...)
 * with no message and no per-request work. Every worker runs one, and the
 * admin thread runs one for itself (into cells of its own).
 *
 * - Event loop: perf_hooks.monitorEventLoopDelay (10 ms resolution, what
 *   prom-client uses) summarised every second into min, max, mean, stddev,
 *   p50, p90, p99, plus the delay of a setImmediate (prom-client's
 *   nodejs_eventloop_lag_seconds). The histogram holds the time between
 *   two ticks of its timer; what is exported is the delay beyond the 10 ms
 *   resolution (prom-client exports the raw value: ~0.010 on an idle loop).
 *   Each tick also stamps G_LOOP_TICK: a loop blocked right now cannot
 *   sample itself, so the admin thread reports the time since the last
 *   tick (less the sampling period) as the lag and max when it is larger. Like prom-client, the window restarts
 *   after each scrape: the admin thread bumps G_SCRAPE_EPOCH, the sampler
 *   sees it at its next tick and resets the histogram (until the new window
 *   has a second of data, the cells keep the previous window's values).
 * - GC: a PerformanceObserver on 'gc' entries, each duration added to the
 *   histogram of its kind (major, minor, incremental, weakcb) with
 *   prom-client's buckets. Counted as they come: a cumulative histogram.
 *
 * On Bun neither API reports anything (monitorEventLoopDelay records no
 * sample, no 'gc' entry is ever delivered): there the sampler does not run
 * and G_LOOP_SAMPLED / G_GC_OBSERVED stay 0, so the thread is left out of
 * those metrics rather than reported as zero.
 */
import { type IntervalHistogram, PerformanceObserver, constants, monitorEventLoopDelay } from 'node:perf_hooks';
import {
  GC_BUCKETS, GC_HIST_CELLS, G_GC, G_GC_OBSERVED, G_LOOP, G_LOOP_SAMPLED, G_LOOP_TICK, G_SCRAPE_EPOCH, observe,
} from './metrics-layout.js';

/** How often the event-loop histogram is summarised into the cells. */
export const SAMPLE_MS = 1000;
const RESOLUTION_MS = 10;

/** perf_hooks GC kind -> index in GC_KINDS (major, minor, incremental, weakcb). */
const GC_KIND_INDEX = new Map<number, number>([
  [constants.NODE_PERFORMANCE_GC_MAJOR, 0],
  [constants.NODE_PERFORMANCE_GC_MINOR, 1],
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL, 2],
  [constants.NODE_PERFORMANCE_GC_WEAKCB, 3],
]);

/** A histogram value (ns between timer ticks) -> delay beyond the resolution, seconds. */
function delay(ns: number): number {
  return Math.max(0, ns / 1e6 - RESOLUTION_MS) / 1000;
}

export class RuntimeSampler {
  private histogram: IntervalHistogram | null = null;
  private observer: PerformanceObserver | null = null;
  private timer: NodeJS.Timeout | null = null;
  private epoch: number;
  private lagStart = 0;

  constructor(private readonly cells: Float64Array) {
    this.epoch = cells[G_SCRAPE_EPOCH]!;
  }

  start(): this {
    const c = this.cells;
    // Bun has both APIs but they report nothing (no delay samples, no 'gc' entries): zeros would look like data.
    if (typeof (process.versions as Record<string, string | undefined>).bun === 'string') return this;
    try {
      const h = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
      h.enable();
      this.histogram = h;
      c[G_LOOP_TICK] = Date.now();
      c[G_LOOP_SAMPLED] = 1;
      this.timer = setInterval(this.sample, SAMPLE_MS);
      this.timer.unref();
    } catch {
      // Not implemented on this runtime (Bun).
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
    this.histogram?.disable();
    this.observer?.disconnect();
  }

  private readonly sample = (): void => {
    const c = this.cells;
    const h = this.histogram!;
    c[G_LOOP_TICK] = Date.now();
    const epoch = c[G_SCRAPE_EPOCH]!;
    if (epoch !== this.epoch) {
      // Scraped since the last sample: a new window starts.
      this.epoch = epoch;
      h.reset();
      return;
    }
    if (h.count === 0) return;
    // The histogram records the time between two ticks of its 10 ms timer:
    // the delay is what exceeds the resolution.
    c[G_LOOP + 1] = delay(h.min);
    c[G_LOOP + 2] = delay(h.max);
    c[G_LOOP + 3] = delay(h.mean);
    c[G_LOOP + 4] = h.stddev / 1e9;
    c[G_LOOP + 5] = delay(h.percentile(50));
    c[G_LOOP + 6] = delay(h.percentile(90));
    c[G_LOOP + 7] = delay(h.percentile(99));
    this.lagStart = performance.now();
    setImmediate(this.lagDone);
  };

  private readonly lagDone = (): void => {
    this.cells[G_LOOP] = (performance.now() - this.lagStart) / 1000;
  };
}
