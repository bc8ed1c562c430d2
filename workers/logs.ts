/**
 * A worker's logs, shared by its backend and exchanges: the access log
 * (null when off; lines go into the worker's shared-memory ring, which the
 * engine writes out: workers/access-log.ts) and the rate-limited error log.
 * The worker builds one at start and re-applies the config's `log` section
 * on every reload; the backend reads `access` per request (one property
 * load), so a reload that turns it on or off takes effect for the next
 * request.
 */
import type { AccessRing } from '../common/access-ring.js';
import type { LogConfig } from '../common/config/types.js';
import { configureLog } from '../common/log.js';
import { AccessLog } from './access-log.js';
import { ErrorLog } from './error-log.js';

/** The error log's windows are reported this often. */
const SWEEP_MS = 1000;

export class WorkerLogs {
  access: AccessLog | null = null;
  readonly errors: ErrorLog;
  private readonly timer: NodeJS.Timeout;

  constructor(config: LogConfig, private readonly ring: AccessRing) {
    this.errors = new ErrorLog(config.errors.burst, config.errors.intervalMs);
    this.apply(config);
    this.timer = setInterval(() => this.errors.sweep(performance.now()), SWEEP_MS);
    this.timer.unref();
  }

  /** Applies a (new) config's log section. */
  apply(config: LogConfig): void {
    configureLog(config);
    this.errors.configure(config.errors.burst, config.errors.intervalMs);
    const want = config.access;
    const cur = this.access;
    if (cur !== null && want.enabled && JSON.stringify(cur.config) === JSON.stringify(want)) return;
    this.access = want.enabled ? new AccessLog(want, this.ring) : null;
  }

  close(): void {
    clearInterval(this.timer);
  }
}
