/**
 * A worker's logs, shared by its backend and exchanges: the access log
 * (null when off), the rate-limited error log, and the flush timer that
 * writes both out. The worker builds one at start and re-applies the
 * config's `log` section on every reload; the backend reads `access` per
 * request (one property load), so a reload that turns it on or off or moves
 * it takes effect for the next request.
 */
import type { LogConfig } from '../common/config/types.js';
import { configureLog, log } from '../common/log.js';
import { G_ACCESS_LOG_DROPPED } from '../common/metrics-layout.js';
import { AccessLog } from './access-log.js';
import { ErrorLog } from './error-log.js';

/** Queued access-log lines are written at least this often. */
const FLUSH_MS = 50;

export class WorkerLogs {
  access: AccessLog | null = null;
  readonly errors: ErrorLog;
  private timer: NodeJS.Timeout | null = null;
  private lastErrorSweep = 0;
  /** Dropped lines of access logs replaced by a reload (the counter is cumulative). */
  private droppedBefore = 0;

  constructor(config: LogConfig, private readonly metrics: Float64Array) {
    this.errors = new ErrorLog(config.errors.burst, config.errors.intervalMs);
    this.apply(config);
    this.timer = setInterval(() => this.flush(), FLUSH_MS);
    this.timer.unref();
  }

  /** Applies a (new) config's log section. */
  apply(config: LogConfig): void {
    configureLog(config);
    this.errors.configure(config.errors.burst, config.errors.intervalMs);
    const want = config.access;
    const cur = this.access;
    if (cur !== null && want.enabled && JSON.stringify(cur.config) === JSON.stringify(want)) return;
    if (cur !== null) {
      this.droppedBefore += cur.dropped;
      cur.close();
    }
    this.access = null;
    if (!want.enabled) return;
    try {
      this.access = new AccessLog(want);
    } catch (err) {
      // Validation checks that a file destination can be opened; this is a file that went away since.
      log('error', 'cannot open the access log; requests are served without it', { destination: want.destination, error: (err as Error).message });
    }
  }

  private flush(): void {
    const a = this.access;
    if (a !== null) {
      a.sweep();
      this.metrics[G_ACCESS_LOG_DROPPED] = this.droppedBefore + a.dropped;
    }
    const now = performance.now();
    if (now - this.lastErrorSweep >= 1000) {
      this.lastErrorSweep = now;
      this.errors.sweep(now);
    }
  }

  /** SIGUSR1: reopen a file destination (logrotate). */
  reopen(): void {
    this.access?.reopen();
  }

  close(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.access?.close();
  }
}
