/**
 * Active health checks (upstreams.<name>.healthCheck), run by the admin
 * thread so a target gets one probe per interval whatever the number of
 * workers. Each verdict goes into the shared upstream state
 * (common/upstream-state-layout.ts T_HEALTH), which every worker reads when
 * it picks a target: a target marked unhealthy stops receiving requests at
 * once, everywhere.
 *
 * A check is `GET <path>` on its own connection (no keep-alive: a check
 * proves the target accepts connections too), answered within timeoutMs
 * with a status in expectStatus. unhealthyThreshold failures in a row make
 * the target unhealthy, healthyThreshold successes in a row healthy again.
 * Before its first verdict a target is `unknown` and receives traffic.
 *
 * Reloads: a target whose check settings are unchanged keeps its timer and
 * its streak; a target that is no longer checked goes back to `unknown`.
 *
 * Discovered targets (DNS, registry: admin/discovery/) are checked like
 * configured ones: the config `configure` receives is the running one, with
 * them merged in, and each discovery update is such a config. A target that
 * appears is checked at once (and receives traffic while `unknown`); one
 * that disappears stops being checked.
 *
 * An https:// target is checked over TLS with its upstream's `tls` settings
 * (the CA bundle, servername, rejectUnauthorized, client certificate and
 * minVersion the workers use: workers/proxy/upstream-pool.ts): a target
 * whose certificate the proxy would refuse fails its check, with the TLS
 * error's code as the reason in the log line.
 */
import http from 'node:http';
import https from 'node:https';
import type { ConnectionOptions } from 'node:tls';
import type { GatewayConfig, HealthCheckConfig, TargetConfig, UpstreamTlsConfig } from '../common/config/types.js';
import type { TargetSlotEntries, UpstreamSlotEntries } from '../common/protocol.js';
import {
  H_HEALTHY, H_UNHEALTHY, H_UNKNOWN, HEALTH_CHECK_RESULTS, BREAKER_STATE_NAMES, T_EJECTIONS, T_HC, T_HEALTH, T_STATE, T_TO, U_OVERLOADED,
  RETRY_REASONS, U_BUDGET_EXHAUSTED, U_RETRIES, MAX_UPSTREAM_SLOTS, FIRST_UPSTREAM_SLOT, targetCell, upstreamCell, ST_TRANSIT, ST_OPEN,
} from '../common/upstream-state-layout.js';
import { FIRST_TARGET_SLOT, MAX_TARGET_SLOTS } from '../common/metrics-layout.js';
import { UPSTREAM_TLS_DEFAULTS, sniFor } from '../common/config/tls.js';
import { log } from '../common/log.js';

interface Checker {
  key: string;
  /** Settings and target, as JSON: a reload that changes neither keeps the checker. */
  spec: string;
  upstream: string;
  target: TargetConfig;
  cfg: HealthCheckConfig;
  /** TLS options for an https:// target (its upstream's `tls`), or null: plain HTTP. */
  tls: https.RequestOptions | null;
  cell: number;
  timer: ReturnType<typeof setInterval>;
  ok: number;
  fail: number;
  running: boolean;
}

/**
 * The request options of a check on an https:// target: what the workers'
 * connections use (upstream-pool.ts poolTls), each check a full handshake
 * (no session reuse: a check proves the target's certificate as it is now).
 */
function checkTls(t: TargetConfig, tls: UpstreamTlsConfig | null): https.RequestOptions {
  const c = tls ?? UPSTREAM_TLS_DEFAULTS;
  const o: https.RequestOptions & ConnectionOptions = {
    rejectUnauthorized: c.rejectUnauthorized,
    minVersion: c.minVersion,
    ALPNProtocols: ['http/1.1'],
    // '': no SNI for an IP address (RFC 6066 3; https.Agent would send the host); the certificate is then checked against the IP.
    servername: sniFor(t.host, c.servername) ?? '',
  };
  if (c.caPem !== null) o.ca = c.caPem;
  if (c.clientCert !== null) {
    o.cert = c.clientCert.certPem;
    o.key = c.clientCert.keyPem;
  }
  return o;
}

const RESULT_SUCCESS = 0;
const RESULT_FAILURE = 1;
const RESULT_TIMEOUT = 2;

export class HealthChecker {
  private readonly checkers = new Map<string, Checker>();
  private stopped = false;

  constructor(private readonly state: Int32Array) {}

  configure(config: GatewayConfig, targetSlots: TargetSlotEntries): void {
    if (this.stopped) return;
    const slotOf = new Map(targetSlots.map(([u, url, slot]) => [u + ' ' + url, slot]));
    const wanted = new Set<string>();
    for (const u of Object.values(config.upstreams)) {
      const cfg = u.healthCheck;
      if (cfg === null) continue;
      for (const t of u.targets) {
        const key = u.name + ' ' + t.url;
        const slot = slotOf.get(key);
        // A target past the slot cap has no shared state to report into.
        if (slot === undefined || slot < FIRST_TARGET_SLOT || slot >= MAX_TARGET_SLOTS) continue;
        wanted.add(key);
        const spec = JSON.stringify([cfg, t.host, t.port, t.tls === true ? u.tls : null]);
        const old = this.checkers.get(key);
        if (old !== undefined && old.spec === spec) continue;
        if (old !== undefined) clearInterval(old.timer);
        const c: Checker = {
          key, spec, upstream: u.name, target: t, cfg, tls: t.tls === true ? checkTls(t, u.tls) : null, cell: targetCell(slot), ok: 0, fail: 0, running: false,
          timer: setInterval(() => this.check(c), cfg.intervalMs),
        };
        c.timer.unref();
        this.checkers.set(key, c);
        this.check(c); // a first verdict without waiting a whole interval
      }
    }
    for (const [key, c] of this.checkers) {
      if (wanted.has(key)) continue;
      clearInterval(c.timer);
      this.checkers.delete(key);
      Atomics.store(this.state, c.cell + T_HEALTH, H_UNKNOWN);
    }
  }

  stop(): void {
    this.stopped = true;
    for (const c of this.checkers.values()) clearInterval(c.timer);
    this.checkers.clear();
  }

  private check(c: Checker): void {
    if (c.running || this.stopped) return; // the previous one is still out (it ends within timeoutMs)
    c.running = true;
    let settled = false;
    const done = (result: number, detail: string) => {
      if (settled) return;
      settled = true;
      c.running = false;
      clearTimeout(timer);
      req.destroy();
      if (this.checkers.get(c.key) !== c) return; // replaced or removed meanwhile
      this.verdict(c, result, detail);
    };
    const opts: http.RequestOptions = {
      host: c.target.host, port: c.target.port, path: c.cfg.path, agent: false,
      headers: { 'user-agent': 'turnpike-health-check', connection: 'close' },
    };
    const onResponse = (res: http.IncomingMessage) => {
      const status = res.statusCode ?? 0;
      res.resume();
      const ok = c.cfg.expectStatus.some((r) => status >= r.lo && status <= r.hi);
      done(ok ? RESULT_SUCCESS : RESULT_FAILURE, `status ${status}`);
    };
    const req = c.tls === null ? http.get(opts, onResponse) : https.get({ ...opts, ...c.tls }, onResponse);
    req.on('error', (err: NodeJS.ErrnoException) => done(RESULT_FAILURE, err.code ?? err.message));
    const timer = setTimeout(() => done(RESULT_TIMEOUT, `no response within ${c.cfg.timeoutMs} ms`), c.cfg.timeoutMs);
    timer.unref();
  }

  private verdict(c: Checker, result: number, detail: string): void {
    const s = this.state;
    Atomics.add(s, c.cell + T_HC + result, 1);
    const before = Atomics.load(s, c.cell + T_HEALTH);
    if (result === RESULT_SUCCESS) {
      c.fail = 0;
      c.ok++;
      if (c.ok >= c.cfg.healthyThreshold && before !== H_HEALTHY) {
        Atomics.store(s, c.cell + T_HEALTH, H_HEALTHY);
        if (before === H_UNHEALTHY) log('info', 'upstream target healthy again', { upstream: c.upstream, target: c.target.url });
      }
    } else {
      c.ok = 0;
      c.fail++;
      if (c.fail >= c.cfg.unhealthyThreshold && before !== H_UNHEALTHY) {
        Atomics.store(s, c.cell + T_HEALTH, H_UNHEALTHY);
        log('warn', 'upstream target unhealthy: no more requests are sent to it', {
          upstream: c.upstream, target: c.target.url, failedChecks: c.fail, lastCheck: HEALTH_CHECK_RESULTS[result], detail,
        });
      }
    }
  }
}

type Values = { labels: Record<string, string | number>; value: number }[];

/**
 * The resilience metrics (README, Metrics), read from the shared state at
 * scrape: breaker state and transitions, health checks and ejections per
 * target, maxInFlight refusals per upstream. `targets()` and `upstreams()`
 * give the running config's (name, slot) lists.
 */
export function resilienceMetrics(
  state: Int32Array,
  targets: () => TargetSlotEntries,
  upstreams: () => UpstreamSlotEntries,
  guarded: () => ReadonlySet<string>,
  /** Upstreams with a retry section (their retry counters are shown). */
  retrying: () => ReadonlySet<string> = () => new Set(),
): { name: string; help: string; type: string; collect: () => Values }[] {
  const perRetrying = (f: (cell: number, upstream: string, out: Values) => void) => () => {
    const out: Values = [];
    const r = retrying();
    for (const [upstream, slot] of upstreams()) {
      if (r.has(upstream) && slot >= FIRST_UPSTREAM_SLOT && slot < MAX_UPSTREAM_SLOTS) f(upstreamCell(slot), upstream, out);
    }
    return out;
  };
  const each = (f: (cell: number, labels: { upstream: string; target: string }, out: Values) => void) => () => {
    const out: Values = [];
    const g = guarded();
    for (const [upstream, target, slot] of targets()) {
      if (!g.has(upstream) || slot < FIRST_TARGET_SLOT || slot >= MAX_TARGET_SLOTS) continue;
      f(targetCell(slot), { upstream, target }, out);
    }
    return out;
  };
  return [
    {
      name: 'turnpike_circuit_breaker_state', type: 'gauge',
      help: 'Circuit breaker state per target: 0 closed, 1 open, 2 half-open (upstreams with a breaker, health check, outlier detection or p2c).',
      collect: each((c, labels, out) => {
        const st = Atomics.load(state, c + T_STATE);
        out.push({ labels, value: st === ST_TRANSIT ? ST_OPEN : st });
      }),
    },
    {
      name: 'turnpike_circuit_breaker_transitions_total', type: 'counter',
      help: 'Circuit breaker state changes per target, by the state entered (to: closed, open, half_open).',
      collect: each((c, labels, out) => {
        for (let k = 0; k < 3; k++) out.push({ labels: { ...labels, to: BREAKER_STATE_NAMES[k]! }, value: Atomics.load(state, c + T_TO + k) });
      }),
    },
    {
      name: 'turnpike_upstream_health_checks_total', type: 'counter',
      help: 'Active health checks per target, by result: success, failure (refused, reset or an unexpected status) or timeout.',
      collect: each((c, labels, out) => {
        HEALTH_CHECK_RESULTS.forEach((result, k) => out.push({ labels: { ...labels, result }, value: Atomics.load(state, c + T_HC + k) }));
      }),
    },
    {
      name: 'turnpike_upstream_ejections_total', type: 'counter',
      help: 'Outlier ejections per target (outlierDetection: consecutive failures from real traffic).',
      collect: each((c, labels, out) => out.push({ labels, value: Atomics.load(state, c + T_EJECTIONS) })),
    },
    {
      name: 'turnpike_upstream_overloaded_total', type: 'counter',
      help: 'Requests refused with 503 upstream_overloaded because breaker.maxInFlight requests were in flight to the upstream.',
      collect: () => {
        const out: Values = [];
        const g = guarded();
        for (const [upstream, slot] of upstreams()) if (g.has(upstream)) out.push({ labels: { upstream }, value: Atomics.load(state, upstreamCell(slot) + U_OVERLOADED) });
        return out;
      },
    },
    {
      name: 'turnpike_upstream_retries_total', type: 'counter',
      help: 'Retries made to the upstream (upstreams with retry), by reason: the condition of the failed try (connect_failure, reset, timeout, the status "500".."504", or "5xx" for another listed 5xx).',
      collect: perRetrying((c, upstream, out) => {
        RETRY_REASONS.forEach((reason, k) => out.push({ labels: { upstream, reason }, value: Atomics.load(state, c + U_RETRIES + k) }));
      }),
    },
    {
      name: 'turnpike_upstream_retry_budget_exhausted_total', type: 'counter',
      help: 'Retries not made because the retry budget (retry.budgetPercent of the upstream\'s requests over 10 s, plus 10) was used up: the failure went to the client.',
      collect: perRetrying((c, upstream, out) => out.push({ labels: { upstream }, value: Atomics.load(state, c + U_BUDGET_EXHAUSTED) })),
    },
  ];
}
