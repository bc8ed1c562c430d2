/**
 * The error log of a worker: every upstream failure and every 5xx the
 * gateway answers itself becomes one `error` line in the gateway log saying
 * what failed (request id, route, upstream, target, phase, the error code
 * and the errno or timeout behind it), so the request id in a 502 body is
 * found in the log.
 *
 * (503 rate_limit_store_unavailable is left out: STATE_ERRORS.)
 *
 * A dead target fails every request sent to it: lines are rate limited per
 * (error code, target), `burst` lines per `intervalMs` window, after which
 * one line reports how many were left out. State is bounded (at most
 * MAX_KEYS keys; past that the oldest window is reported and dropped).
 */
import { log } from '../common/log.js';

/** Where in the exchange an upstream failure happened. */
export type Phase = 'connect' | 'send' | 'head' | 'body' | 'gateway' | 'websocket';

export interface ErrorReport {
  requestId: string;
  route: string;
  upstream: string;
  target: string;
  phase: Phase;
  /** Gateway error code (upstream_reset, upstream_timeout, ...). */
  code: string;
  status: number;
  /** errno code (ECONNREFUSED...), timeout name, or parse error; '' when none. */
  detail: string;
}

interface Window {
  start: number;
  logged: number;
  suppressed: number;
  code: string;
  target: string;
}

const MAX_KEYS = 1024;

/**
 * 5xx answers that are a policy's documented decision about a state logged
 * once when it starts and once when it ends, never per request: 503
 * rate_limit_store_unavailable (`onStoreError: deny` while Redis is away;
 * the rate-limit store logs "unreachable" and "reachable again"). Each is
 * still in the access log and in turnpike_gateway_errors_total.
 */
const STATE_ERRORS: ReadonlySet<string> = new Set(['rate_limit_store_unavailable']);

export class ErrorLog {
  private readonly windows = new Map<string, Window>();

  constructor(private burst: number, private intervalMs: number) {}

  configure(burst: number, intervalMs: number): void {
    this.burst = burst;
    this.intervalMs = intervalMs;
  }

  report(r: ErrorReport, now: number): void {
    if (STATE_ERRORS.has(r.code)) return;
    const key = r.code + ' ' + r.target;
    let w = this.windows.get(key);
    if (w !== undefined && now - w.start >= this.intervalMs) {
      this.summarize(w);
      this.windows.delete(key);
      w = undefined;
    }
    if (w === undefined) {
      if (this.windows.size >= MAX_KEYS) this.evictOldest();
      w = { start: now, logged: 0, suppressed: 0, code: r.code, target: r.target };
      this.windows.set(key, w);
    }
    if (w.logged >= this.burst) {
      w.suppressed++;
      return;
    }
    w.logged++;
    log('error', messageFor(r), {
      requestId: r.requestId, status: r.status, error: r.code, phase: r.phase,
      ...(r.detail !== '' ? { detail: r.detail } : {}),
      route: r.route, ...(r.upstream !== '' ? { upstream: r.upstream, target: r.target } : {}),
    });
  }

  /** Reports and clears windows that have ended (the worker's sweeper calls this every second). */
  sweep(now: number): void {
    for (const [key, w] of this.windows) {
      if (now - w.start < this.intervalMs) continue;
      this.summarize(w);
      this.windows.delete(key);
    }
  }

  private summarize(w: Window): void {
    if (w.suppressed === 0) return;
    log('error', w.target !== '' ? 'more upstream failures of this kind were left out of the log' : 'more gateway errors of this kind were left out of the log', {
      error: w.code, ...(w.target !== '' ? { target: w.target } : {}), suppressed: w.suppressed, intervalMs: this.intervalMs,
    });
  }

  private evictOldest(): void {
    const first = this.windows.entries().next();
    if (first.done === true) return;
    this.summarize(first.value[1]);
    this.windows.delete(first.value[0]);
  }
}

function messageFor(r: ErrorReport): string {
  if (r.code === 'shutting_down' && r.phase !== 'gateway') {
    return r.phase === 'body'
      ? 'server.drainTimeoutMs ran out during the response body; the client connection was closed'
      : 'server.drainTimeoutMs ran out before the response head; answered 503';
  }
  // The TLS handshake with an https:// target (upstream-pool.ts): `detail` says why (certificate refused, wrong name...).
  if (r.code === 'upstream_tls_failed') return 'upstream TLS handshake failed';
  switch (r.phase) {
    case 'connect': return 'upstream connect failed';
    case 'send': return 'upstream failed while the request was sent';
    case 'head': return 'upstream failed before the response head';
    case 'body': return 'upstream failed during the response body; the client connection was closed';
    case 'websocket': return 'upstream failed during a proxied WebSocket; the client got a Close (1014, or 1009 for a message too big)';
    default: return 'the gateway answered with an error';
  }
}
