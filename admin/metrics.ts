/**
 * /metrics: turns the workers' shared counters (common/metrics-layout.ts)
 * into Prometheus metrics through prom-client.
 *
 * Workers never send a message per request: each one owns a Float64Array in
 * shared memory; at scrape time this module sums the arrays of every worker
 * slot and hands the totals to prom-client as custom metrics whose get()
 * reads them. Labels are bounded: route id and (upstream, target) from the
 * config, each capped with an `_overflow` value past the cap; method (8
 * values); code (a fixed table of 23 codes and one bucket per class); error
 * reason (a fixed list); thread (admin + one per worker) -- never raw
 * paths, hosts or keys.
 *
 * Names follow the Prometheus conventions (base units, `_total` counters,
 * `_seconds`, `_bytes`); label names follow Kong's (`route`, `code`,
 * `upstream`, `target`). prom-client's default process and runtime metrics
 * keep their standard names (process_*, nodejs_*), except that event-loop
 * delay and GC come from every thread (label `thread`): prom-client's own
 * would only see the admin thread, where no traffic is served.
 */
import client from 'prom-client';
import type { GatewayConfig } from '../common/config/types.js';
import {
  CODE_COLUMNS, CODE_LABELS, DURATION_BUCKETS, ERROR_CODES, GC_BUCKETS, GC_HIST_CELLS, GC_KINDS, GLOBAL_CELLS,
  G_ERRORS, G_GC, G_GC_OBSERVED, G_IN_FLIGHT, G_LOOP, G_LOOP_SAMPLED, G_LOOP_TICK, G_SCRAPE_EPOCH, LOOP_STATS, METHODS, OVERFLOW_SLOT,
  S_DURATION, S_REQ_SIZE, S_REQUESTS, S_RES_SIZE, SIZE_BUCKETS, SLOT_CELLS, S_RATE_LIMIT, RATE_LIMIT_RESULTS, G_RATE_LIMIT_OVERFLOW, G_AUTH_CACHE_HITS, G_AUTH_NEGATIVE_HITS, G_AUTH_CACHE_MISSES, G_AUTH_ROTATED_KEY_REQUESTS, TARGET_OVERFLOW_SLOT, T_ERRORS, T_IDLE,
  T_LAST_ERROR_AT, T_LAST_ERROR_CODE, T_LATENCY, T_OPEN, T_REQUESTS, UPSTREAM_ERROR_CODES, slotBase, targetBase,
  G_TLS_FAILURES, G_TLS_HANDSHAKES, TLS_FAILURE_REASONS, G_WS_PER_KEY, G_WS_PER_KEY_STORE_DOWN, G_WS_PER_KEY_STORE_OPEN, WS_PER_KEY_DECIDERS, G_WS_UPGRADE_FAILURES, S_WS_BYTES, S_WS_CLOSES, S_WS_LIMITS, S_WS_MESSAGES, S_WS_OPEN, WS_CLOSE_LABELS, WS_DIRECTIONS, WS_LIMITS,
  WS_UPGRADE_FAILURE_REASONS,
} from '../common/metrics-layout.js';
import type { SlotEntries, TargetSlotEntries } from '../common/protocol.js';
import {
  C_ACCESS_LOG_DROPPED, C_CONFIG_VERSION, C_LOG_DROPPED, C_RELOADS_FAILED, C_RELOADS_OK, C_REQUESTS_LOST, C_RESTARTS, C_WORKER_COUNT, C_WORKER_STATE,
  W_DRAINING, W_READY,
} from '../common/protocol.js';
import { OWN_TICK_MS, RuntimeSampler } from '../common/runtime-metrics.js';
import { uwsPackageVersion } from '../workers/transport/uws-loader.js';
import type { RateLimitTable } from '../common/rate-limit-layout.js';
import { SYNC_DURATION_BUCKETS, STORE_ERROR_REASONS, type RateLimitSyncStats } from './rate-limit/index.js';

type Values = { labels: Record<string, string | number>; value: number; metricName?: string }[];

interface CustomMetric {
  name: string;
  help: string;
  type: string;
  aggregator: string;
  get(): Promise<{ name: string; help: string; type: string; values: Values; aggregator: string }>;
  reset(): void;
}

/** prom-client defaults replaced by per-thread ones (see runtime-metrics.ts). */
const PER_THREAD_DEFAULTS = [...LOOP_STATS.map((s) => `nodejs_eventloop_lag${s}_seconds`), 'nodejs_gc_duration_seconds'];

const LOOP_HELP = [
  'Event loop delay of the thread: a setImmediate\'s delay at the last sample (every second).',
  'The minimum recorded event loop delay of the thread since the previous scrape.',
  'The maximum recorded event loop delay of the thread since the previous scrape.',
  'The mean of the recorded event loop delays of the thread since the previous scrape.',
  'The standard deviation of the recorded event loop delays of the thread since the previous scrape.',
  'The 50th percentile of the recorded event loop delays of the thread since the previous scrape.',
  'The 90th percentile of the recorded event loop delays of the thread since the previous scrape.',
  'The 99th percentile of the recorded event loop delays of the thread since the previous scrape.',
];

export interface MetricsOptions {
  targetSlots: TargetSlotEntries;
  config: GatewayConfig;
  /** Turnpike version (turnpike_build_info). */
  version: string;
  /** The process's rate-limit buckets (fill and capacity gauges). */
  rateLimitTable: RateLimitTable;
  /** The shared clock: this thread's performance.now() offset (common/rate-limit-layout.ts). */
  clockOffset: number;
  /** The Redis sync of cluster rate limits (admin/rate-limit/): its state and counters, read at scrape. */
  rateLimitSync?: () => RateLimitSyncStats;
  /** More metrics read at scrape (the upstream resilience state: admin/upstream-health.ts). */
  extra?: readonly { name: string; help: string; type: string; collect: () => Values }[];
}

/** One target's counters for GET /admin/upstreams, summed over the workers. */
export interface TargetStats {
  requests: number;
  /** Requests by `code` label (the code table), non-zero only. */
  responses: Record<string, number>;
  /** Upstream errors by code (every UPSTREAM_ERROR_CODES entry). */
  errors: Record<string, number>;
  open: number;
  idle: number;
  lastError: { code: string; at: string } | null;
  /** Past the target cap: these counters are shared by every overflowed target. */
  overflow: boolean;
}

interface TargetName {
  upstream: string;
  target: string;
}

export class MetricsView {
  readonly registry = new client.Registry();
  private readonly buffers: Float64Array[];
  /** The admin thread's own runtime cells (event loop, GC). */
  private readonly adminCells = new Float64Array(GLOBAL_CELLS);
  private slotNames = new Map<number, string>();
  /** Route id -> its upstream: the running config's, or the last one it had (a removed route keeps its counters). */
  private readonly routeUpstream = new Map<string, string>();
  private targetNames = new Map<number, TargetName>();
  private targetSlotOf = new Map<string, number>();
  /** turnpike_tls_certificate_expiry_seconds samples of the running config. */
  private certificates: Values = [];
  /** Route ids of the running config that proxy WebSockets (their open gauge shows at 0 too). */
  private wsRoutes = new Set<string>();
  /** Route slot -> the names of its rate limits, by position (the running config's). */
  private rateLimitNames = new Map<number, readonly string[]>();
  private readonly table: RateLimitTable;
  private readonly clockOffset: number;
  private readonly buildLabels: Record<string, string>;

  constructor(buffers: SharedArrayBuffer[], private readonly control: Int32Array, slots: SlotEntries, opts: MetricsOptions) {
    this.buffers = buffers.map((b) => new Float64Array(b));
    this.table = opts.rateLimitTable;
    this.clockOffset = opts.clockOffset;
    this.setSlots(slots, opts.targetSlots, opts.config);
    this.buildLabels = buildInfo(opts.version, opts.config);
    // prom-client starts its own monitorEventLoopDelay (a 10 ms timer in this thread) for the lag gauges replaced
    // below; removing them from the registry does not stop it, so its period is made ~24.8 days (2^31-1 ms).
    client.collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 2 ** 31 - 1 });
    for (const name of PER_THREAD_DEFAULTS) this.registry.removeSingleMetric(name);
    // This thread's own loop delay and GC, only when /metrics is served (admin.enabled is restart-only).
    if (opts.config.admin.enabled) new RuntimeSampler(this.adminCells, { periodMs: OWN_TICK_MS, external: false }).start();
    const add = (name: string, help: string, type: string, collect: () => Values) => {
      const m: CustomMetric = {
        name, help, type, aggregator: 'sum',
        get: async () => ({ name, help, type, values: collect(), aggregator: 'sum' }),
        reset: () => {},
      };
      this.registry.registerMetric(m as unknown as client.Metric);
    };
    add('turnpike_requests_total', 'Requests answered, by route, method, status code (uncommon codes in a 1xx..5xx bucket) and the route\'s upstream.', 'counter',
      () => this.requests());
    add('turnpike_request_duration_seconds', 'Time from request arrival to the end of the response (gateway + upstream), by route.', 'histogram',
      () => this.routeHistogram('turnpike_request_duration_seconds', S_DURATION, DURATION_BUCKETS));
    add('turnpike_request_size_bytes', 'Request body size, by route.', 'histogram',
      () => this.routeHistogram('turnpike_request_size_bytes', S_REQ_SIZE, SIZE_BUCKETS));
    add('turnpike_response_size_bytes', 'Response body size, by route.', 'histogram',
      () => this.routeHistogram('turnpike_response_size_bytes', S_RES_SIZE, SIZE_BUCKETS));
    add('turnpike_upstream_requests_total', 'Requests sent (or assigned) to an upstream target, by the status code the client got (the gateway\'s 502/503/504 when the target failed).', 'counter',
      () => this.upstreamRequests());
    add('turnpike_upstream_latency_seconds', 'Time from the request sent to a target to its response head, by upstream and target.', 'histogram',
      () => this.targetHistogram('turnpike_upstream_latency_seconds'));
    add('turnpike_upstream_errors_total', 'Upstream failures by target and reason (the upstream_* error code).', 'counter',
      () => this.upstreamErrors());
    add('turnpike_upstream_connections', 'Upstream sockets held by the workers, by target: open (busy + idle, connecting included) and idle keep-alive.', 'gauge',
      () => this.upstreamConnections());
    add('turnpike_gateway_errors_total', 'Errors the gateway answered or ended a request with, by reason (its stable error code).', 'counter', () => {
      const out: Values = [];
      ERROR_CODES.forEach((reason, i) => out.push({ labels: { reason }, value: this.sum(G_ERRORS + i) }));
      return out;
    });
    add('turnpike_rate_limit_decisions_total', 'Rate-limit decisions by route, policy (its name, or <route>#<position> inline) and result: allowed, limited (429), store_unavailable (503 while Redis is away, onStoreError deny).', 'counter',
      () => this.rateLimitDecisions());
    add('turnpike_rate_limit_table_entries', 'Buckets in use in the shared rate-limit table (idle buckets back to full are free again).', 'gauge',
      () => [{ labels: {}, value: this.table.countLive(performance.now() + this.clockOffset) }]);
    add('turnpike_rate_limit_table_capacity', 'Buckets the shared rate-limit table holds (rateLimitTable.capacity, rounded up to a power of two).', 'gauge',
      () => [{ labels: {}, value: this.table.capacity }]);
    add('turnpike_rate_limit_table_overflow_total', 'Rate-limit lookups that went to their policy\'s overflow bucket: a key that lost every race for a slot, or the quota file\'s restore into a full table.', 'counter',
      () => [{ labels: {}, value: this.sum(G_RATE_LIMIT_OVERFLOW) }]);
    add('turnpike_rate_limit_table_evictions_total', 'Live rate-limit buckets evicted because the table was full around a new key (its own policy\'s first, then the one full again soonest, quotas\' last): the evicted client starts afresh. Grow rateLimitTable.capacity when this rises.', 'counter',
      () => [{ labels: {}, value: this.table.evictions }]);
    this.addRateLimitSync(add, opts.rateLimitSync);
    add('turnpike_auth_key_cache_total', 'API-key checks by where the workers found the answer: hit (their cache), negative_hit (a key known not to exist, refused without asking), miss (asked the identity store through the admin thread).', 'counter',
      () => [
        { labels: { result: 'hit' }, value: this.sum(G_AUTH_CACHE_HITS) },
        { labels: { result: 'negative_hit' }, value: this.sum(G_AUTH_NEGATIVE_HITS) },
        { labels: { result: 'miss' }, value: this.sum(G_AUTH_CACHE_MISSES) },
      ]);
    add('turnpike_auth_rotated_key_requests_total', 'Requests admitted with a rotated API key still in its grace period (answered with Deprecation and Sunset headers): clients that have not switched to the new key yet.', 'counter',
      () => [{ labels: {}, value: this.sum(G_AUTH_ROTATED_KEY_REQUESTS) }]);
    this.addWebSocket(add);
    for (const m of opts.extra ?? []) add(m.name, m.help, m.type, m.collect);
    add('turnpike_active_requests', 'Requests in flight across all workers (uWS exposes no per-connection events for HTTP).', 'gauge',
      () => [{ labels: {}, value: this.sum(G_IN_FLIGHT) }]);
    add('turnpike_access_log_dropped_total', 'Access log lines dropped because the destination could not keep up or failed: a worker\'s 4 MiB ring was full (or a line was cut when its destination was replaced).', 'counter',
      () => [{ labels: {}, value: Atomics.load(this.control, C_ACCESS_LOG_DROPPED) }]);
    add('turnpike_gateway_log_dropped_total', 'Gateway log lines (stderr) dropped because stderr did not take them in time (a stalled reader) or failed: a thread\'s 256 KiB ring was full.', 'counter',
      () => [{ labels: {}, value: Atomics.load(this.control, C_LOG_DROPPED) }]);
    add('turnpike_requests_lost_total', 'Requests in flight in a worker thread when it died (a crash): their clients saw the connection reset, and they have no access log line or turnpike_requests_total count.', 'counter',
      () => [{ labels: {}, value: Atomics.load(this.control, C_REQUESTS_LOST) }]);
    add('turnpike_worker_restarts_total', 'Data-plane worker threads replaced after exiting.', 'counter',
      () => [{ labels: {}, value: Atomics.load(this.control, C_RESTARTS) }]);
    add('turnpike_config_reloads_total', 'Config reloads by result: applied, or refused (the old config kept serving).', 'counter', () => [
      { labels: { result: 'success' }, value: Atomics.load(this.control, C_RELOADS_OK) },
      { labels: { result: 'failure' }, value: Atomics.load(this.control, C_RELOADS_FAILED) },
    ]);
    add('turnpike_config_version', 'Version of the configuration being served.', 'gauge',
      () => [{ labels: {}, value: Atomics.load(this.control, C_CONFIG_VERSION) }]);
    add('turnpike_build_info', 'Always 1; the labels say what runs: Turnpike version, Node (or Bun) version, data-plane backend, uWebSockets.js package version.', 'gauge',
      () => [{ labels: this.buildLabels, value: 1 }]);
    LOOP_STATS.forEach((stat, k) => {
      add(`nodejs_eventloop_lag${stat}_seconds`, LOOP_HELP[k]!, 'gauge', () => this.loopStat(k));
    });
    add('nodejs_gc_duration_seconds', 'Garbage collection duration by thread and kind, one of major, minor, incremental or weakcb.', 'histogram',
      () => this.gcHistogram());
  }

  /**
   * The Redis sync's metrics (admin/rate-limit/index.ts). Without a `redis`
   * section they have no sample (their HELP and TYPE lines still show).
   */
  private addRateLimitSync(add: (name: string, help: string, type: string, collect: () => Values) => void, read: (() => RateLimitSyncStats) | undefined): void {
    const stats = (): RateLimitSyncStats | null => {
      const s = read?.() ?? null;
      return s !== null && s.configured ? s : null;
    };
    add('turnpike_rate_limit_store_up', '1 while the rate-limit store (Redis) answers the sync, 0 while it is unreachable (cluster limits then decide locally, or answer 503 with onStoreError deny).', 'gauge', () => {
      const s = stats();
      return s === null ? [] : [{ labels: {}, value: s.up ? 1 : 0 }];
    });
    add('turnpike_rate_limit_store_errors_total', 'Failed rate-limit store operations by reason: connection (refused, lost, failed reconnection attempt), timeout (longer than redis.commandTimeoutMs), command (Redis answered an error).', 'counter', () => {
      const s = stats();
      return s === null ? [] : STORE_ERROR_REASONS.map((reason) => ({ labels: { reason }, value: s.errors[reason] }));
    });
    add('turnpike_rate_limit_store_instances', 'Gateway instances sharing the rate-limit store, from their heartbeats (this instance\'s share of a cluster limit while Redis is away is 1/this).', 'gauge', () => {
      const s = stats();
      return s === null ? [] : [{ labels: {}, value: s.instances }];
    });
    add('turnpike_rate_limit_sync_duration_seconds', 'Time of one rate-limit sync cycle with Redis: the table scan, the pipelined scripts and writing their answers back.', 'histogram', () => {
      const s = stats();
      if (s === null) return [];
      const name = 'turnpike_rate_limit_sync_duration_seconds';
      const out: Values = s.durationBuckets.map((v, i) => ({
        metricName: `${name}_bucket`, labels: { le: i < SYNC_DURATION_BUCKETS.length ? SYNC_DURATION_BUCKETS[i]! : '+Inf' }, value: v,
      }));
      out.push({ metricName: `${name}_sum`, labels: {}, value: s.durationSum });
      out.push({ metricName: `${name}_count`, labels: {}, value: s.durationCount });
      return out;
    });
    add('turnpike_rate_limit_sync_keys', 'Rate-limit keys the last sync cycle pushed or pulled.', 'gauge', () => {
      const s = stats();
      return s === null ? [] : [{ labels: {}, value: s.lastKeys }];
    });
    add('turnpike_rate_limit_synced_keys_total', 'Rate-limit keys pushed or pulled, summed over the sync cycles.', 'counter', () => {
      const s = stats();
      return s === null ? [] : [{ labels: {}, value: s.keysTotal }];
    });
    add('turnpike_rate_limit_sync_discarded_total', 'Admissions of cluster rate limits never pushed to Redis: decided while it was unreachable (with this instance\'s share), or left by a policy removed from the config.', 'counter', () => {
      const s = stats();
      return s === null ? [] : [{ labels: {}, value: s.discarded }];
    });
  }

  /** WebSocket proxying (workers/transport/websocket/tunnel.ts): the route slots' WS cells and the upgrade failures. */
  private addWebSocket(add: (name: string, help: string, type: string, collect: () => Values) => void): void {
    add('turnpike_websocket_connections_open', 'WebSocket connections open through the gateway (from the client\'s 101 to its close), by route.', 'gauge', () => {
      const out: Values = [];
      for (const [slot, route] of this.slotNames) {
        const v = this.sum(slotBase(slot) + S_WS_OPEN);
        if (v !== 0 || this.wsRoutes.has(route)) out.push({ labels: { route }, value: v });
      }
      return out;
    });
    const perDirection = (offset: number) => (): Values => {
      const out: Values = [];
      for (const [slot, route] of this.slotNames) {
        const base = slotBase(slot) + offset;
        WS_DIRECTIONS.forEach((direction, d) => {
          const v = this.sum(base + d);
          if (v > 0) out.push({ labels: { route, direction }, value: v });
        });
      }
      return out;
    };
    add('turnpike_websocket_messages_total', 'WebSocket messages relayed, by route and direction (client_to_upstream, upstream_to_client); a message refused by a limit is not counted.', 'counter',
      perDirection(S_WS_MESSAGES));
    add('turnpike_websocket_bytes_total', 'Payload bytes of the WebSocket messages relayed (whole messages, before any compression), by route and direction.', 'counter',
      perDirection(S_WS_BYTES));
    add('turnpike_websocket_closes_total', 'WebSocket client connections closed, by route and the close code the client got (or sent, when it closed first; 1005: a Close without a code, 1006: the connection was lost); codes outside the known list are counted as other.', 'counter',
      () => this.routeColumns(S_WS_CLOSES, WS_CLOSE_LABELS, 'code'));
    add('turnpike_websocket_limit_hits_total', 'WebSocket limits reached, by route and limit: max_message (1009), messages_per_second (1008 or a dropped message), max_connections_per_key (429), backpressure (1013), idle (1001), ping_timeout (a side that did not answer a ping), credential (1008: the API key that opened it was revoked, its consumer suspended, or it expired).', 'counter',
      () => this.routeColumns(S_WS_LIMITS, WS_LIMITS, 'limit'));
    add('turnpike_websocket_upgrade_failures_total', 'WebSocket upgrade requests not answered 101, by reason: the gateway error code the client got, or upstream_refused (the upstream answered its handshake with another status, passed on).', 'counter',
      () => this.globalColumns(G_WS_UPGRADE_FAILURES, WS_UPGRADE_FAILURE_REASONS, 'reason'));
    add('turnpike_websocket_per_key_decisions_total', 'WebSocket upgrades on routes with maxConnectionsPerKey while a redis section is set, by what decided them: redis (the count across instances), instance_at_limit (refused by this instance\'s own count, without asking Redis), fallback (Redis unreachable: this instance\'s count alone).', 'counter',
      () => this.globalColumns(G_WS_PER_KEY, WS_PER_KEY_DECIDERS, 'decided_by'));
    add('turnpike_tls_certificate_expiry_seconds', 'When each certificate of the running config expires (its notAfter), in seconds since the Unix epoch: alert on turnpike_tls_certificate_expiry_seconds - time() < 14 * 86400. Labels: certificate (the file as configured), role (default, sni, upstream_client) and, for upstream client certificates, upstream.', 'gauge',
      () => this.certificates);
    add('turnpike_tls_handshakes_total', 'TLS handshakes completed on the public listener (server.tls). Counted on the node backend only: uWebSockets.js and Bun.serve do not report handshakes.', 'counter',
      () => [{ labels: {}, value: this.sum(G_TLS_HANDSHAKES) }]);
    add('turnpike_tls_handshake_failures_total', 'TLS handshakes that failed on the public listener, by reason: protocol_version, no_shared_cipher, unknown_server_name (sniStrict), bad_certificate, timeout (not finished within server.timeouts.headerMs), not_tls (plain HTTP or other bytes), other. Node backend only (see turnpike_tls_handshakes_total).', 'counter',
      () => this.globalColumns(G_TLS_FAILURES, TLS_FAILURE_REASONS, 'reason'));
    add('turnpike_websocket_per_key_store_up', 'Whether maxConnectionsPerKey is counted across instances in Redis right now: 1 when every worker with such a Redis connection reaches it, 0 while one does not (it then decides by this instance\'s count). No sample before the first upgrade that needed one.', 'gauge', () => {
      if (this.sum(G_WS_PER_KEY_STORE_OPEN) <= 0) return [];
      return [{ labels: {}, value: this.sum(G_WS_PER_KEY_STORE_DOWN) > 0 ? 0 : 1 }];
    });
  }

  /** Non-zero worker-wide counters of a column group (cells base + i), labelled `label`: names[i]. */
  private globalColumns(base: number, names: readonly string[], label: string): Values {
    const out: Values = [];
    names.forEach((name, i) => {
      const v = this.sum(base + i);
      if (v > 0) out.push({ labels: { [label]: name }, value: v });
    });
    return out;
  }

  /** Non-zero counters of a per-route column group, labelled route and `label`. */
  private routeColumns(offset: number, names: readonly string[], label: string): Values {
    const out: Values = [];
    for (const [slot, route] of this.slotNames) {
      const base = slotBase(slot) + offset;
      names.forEach((name, k) => {
        const v = this.sum(base + k);
        if (v > 0) out.push({ labels: { route, [label]: name }, value: v });
      });
    }
    return out;
  }

  /** GET /admin/status: WebSocket connections open, in all and per route (routes with none left out). */
  websockets(): { open: number; routes: Record<string, number> } {
    let open = 0;
    const routes: Record<string, number> = {};
    for (const [slot, route] of this.slotNames) {
      const v = this.sum(slotBase(slot) + S_WS_OPEN);
      if (v === 0) continue;
      routes[route] = v;
      open += v;
    }
    return { open, routes };
  }

  private rateLimitDecisions(): Values {
    const out: Values = [];
    for (const [slot, names] of this.rateLimitNames) {
      const route = this.slotNames.get(slot) ?? '_overflow';
      const base = slotBase(slot) + S_RATE_LIMIT;
      names.forEach((policy, i) => {
        RATE_LIMIT_RESULTS.forEach((result, k) => {
          out.push({ labels: { route, policy, result }, value: this.sum(base + i * RATE_LIMIT_RESULTS.length + k) });
        });
      });
    }
    return out;
  }

  /** The Prometheus text; a new event-loop window starts in every thread. */
  async scrape(): Promise<string> {
    const text = await this.registry.metrics();
    this.adminCells[G_SCRAPE_EPOCH]!++;
    for (const b of this.buffers) b[G_SCRAPE_EPOCH]!++;
    return text;
  }

  setSlots(slots: SlotEntries, targetSlots: TargetSlotEntries, config: GatewayConfig): void {
    const names = new Map<number, string>([[0, '_none'], [OVERFLOW_SLOT, '_overflow']]);
    for (const [id, slot] of slots) names.set(slot, id);
    this.slotNames = names;
    // A traffic split's requests count under its upstreams' names joined with "," (per upstream: the target metrics).
    for (const r of config.routes) this.routeUpstream.set(r.id, r.upstream ?? r.upstreams!.map((u) => u.name).join(','));
    const slotOfRoute = new Map(slots);
    const rl = new Map<number, readonly string[]>();
    for (const r of config.routes) {
      const slot = slotOfRoute.get(r.id);
      if (slot !== undefined && r.rateLimit.length > 0) rl.set(slot, r.rateLimit.map((p) => p.name));
    }
    this.rateLimitNames = rl;
    this.wsRoutes = new Set(config.routes.filter((r) => r.websocket !== null).map((r) => r.id));
    this.certificates = certificateExpiries(config);
    const targets = new Map<number, TargetName>([[TARGET_OVERFLOW_SLOT, { upstream: '_overflow', target: '_overflow' }]]);
    const slotOf = new Map<string, number>();
    for (const [upstream, target, slot] of targetSlots) {
      targets.set(slot, { upstream, target });
      slotOf.set(upstream + ' ' + target, slot);
    }
    this.targetNames = targets;
    this.targetSlotOf = slotOf;
  }

  /** GET /admin/upstreams: one target's counters. */
  targetStats(upstream: string, url: string): TargetStats {
    const own = this.targetSlotOf.get(upstream + ' ' + url);
    const base = targetBase(own ?? TARGET_OVERFLOW_SLOT);
    let requests = 0;
    const responses: Record<string, number> = {};
    for (let c = 0; c < CODE_COLUMNS; c++) {
      const v = this.sum(base + T_REQUESTS + c);
      if (v > 0) responses[CODE_LABELS[c]!] = v;
      requests += v;
    }
    const errors: Record<string, number> = {};
    UPSTREAM_ERROR_CODES.forEach((code, k) => { errors[code] = this.sum(base + T_ERRORS + k); });
    // The latest error of any worker.
    let at = 0;
    let code = 0;
    for (const b of this.buffers) {
      if (b[base + T_LAST_ERROR_AT]! > at) {
        at = b[base + T_LAST_ERROR_AT]!;
        code = b[base + T_LAST_ERROR_CODE]!;
      }
    }
    return {
      requests, responses, errors,
      open: this.sum(base + T_OPEN),
      idle: this.sum(base + T_IDLE),
      lastError: at > 0 && code > 0 ? { code: ERROR_CODES[code - 1]!, at: new Date(at).toISOString() } : null,
      overflow: own === undefined,
    };
  }

  private sum(cell: number): number {
    let s = 0;
    for (const b of this.buffers) s += b[cell]!;
    return s;
  }

  /** Threads with their cells: the admin thread, then every worker that is running (a dead one's samples are stale). */
  private threads(): { thread: string; cells: Float64Array }[] {
    const out: { thread: string; cells: Float64Array }[] = [{ thread: 'admin', cells: this.adminCells }];
    const n = Math.min(Atomics.load(this.control, C_WORKER_COUNT), this.buffers.length);
    for (let i = 0; i < n; i++) {
      const st = Atomics.load(this.control, C_WORKER_STATE + i);
      if (st === W_READY || st === W_DRAINING) out.push({ thread: `worker-${i}`, cells: this.buffers[i]! });
    }
    return out;
  }

  private loopStat(k: number): Values {
    const out: Values = [];
    const now = Date.now();
    for (const { thread, cells } of this.threads()) {
      if (cells[G_LOOP_SAMPLED] !== 1) continue;
      let v = cells[G_LOOP + k]!;
      // lag and max: a thread blocked right now has not ticked since; how overdue its next tick is, is its delay so far.
      if (k === 0 || k === 2) v = Math.max(v, (now - cells[G_LOOP_TICK]!) / 1000);
      out.push({ labels: { thread }, value: v });
    }
    return out;
  }

  private gcHistogram(): Values {
    const out: Values = [];
    const name = 'nodejs_gc_duration_seconds';
    const n = GC_BUCKETS.length;
    // Counters: a worker being replaced still shows what its slot counted.
    const threads: { thread: string; cells: Float64Array }[] = [{ thread: 'admin', cells: this.adminCells }, ...this.buffers.map((cells, i) => ({ thread: `worker-${i}`, cells }))];
    for (const { thread, cells } of threads) {
      if (cells[G_GC_OBSERVED] !== 1 && cells[G_GC + n + 2] === 0) continue;
      GC_KINDS.forEach((kind, k) => {
        const base = G_GC + k * GC_HIST_CELLS;
        let cum = 0;
        for (let i = 0; i <= n; i++) {
          cum += cells[base + i]!;
          out.push({ metricName: `${name}_bucket`, labels: { thread, kind, le: i < n ? GC_BUCKETS[i]! : '+Inf' }, value: cum });
        }
        out.push({ metricName: `${name}_sum`, labels: { thread, kind }, value: cells[base + n + 1]! });
        out.push({ metricName: `${name}_count`, labels: { thread, kind }, value: cells[base + n + 2]! });
      });
    }
    return out;
  }

  private upstreamOf(slot: number, route: string): string {
    if (slot === 0) return '_none';
    if (slot === OVERFLOW_SLOT) return '_overflow';
    return this.routeUpstream.get(route) ?? '_none';
  }

  private requests(): Values {
    const out: Values = [];
    for (const [slot, route] of this.slotNames) {
      const base = slotBase(slot);
      const upstream = this.upstreamOf(slot, route);
      for (let m = 0; m < METHODS.length; m++) {
        for (let c = 0; c < CODE_COLUMNS; c++) {
          const v = this.sum(base + S_REQUESTS + m * CODE_COLUMNS + c);
          if (v > 0) out.push({ labels: { route, method: METHODS[m]!, code: CODE_LABELS[c]!, upstream }, value: v });
        }
      }
    }
    return out;
  }

  private upstreamRequests(): Values {
    const out: Values = [];
    for (const [slot, { upstream, target }] of this.targetNames) {
      const base = targetBase(slot);
      for (let c = 0; c < CODE_COLUMNS; c++) {
        const v = this.sum(base + T_REQUESTS + c);
        if (v > 0) out.push({ labels: { upstream, target, code: CODE_LABELS[c]! }, value: v });
      }
    }
    return out;
  }

  private upstreamErrors(): Values {
    const out: Values = [];
    for (const [slot, { upstream, target }] of this.targetNames) {
      const base = targetBase(slot);
      UPSTREAM_ERROR_CODES.forEach((reason, k) => {
        const v = this.sum(base + T_ERRORS + k);
        if (v > 0) out.push({ labels: { upstream, target, reason }, value: v });
      });
    }
    return out;
  }

  private upstreamConnections(): Values {
    const out: Values = [];
    for (const [slot, { upstream, target }] of this.targetNames) {
      const base = targetBase(slot);
      const open = this.sum(base + T_OPEN);
      const idle = this.sum(base + T_IDLE);
      // Every assigned target; the overflow slot only when it holds sockets.
      if (slot === TARGET_OVERFLOW_SLOT && open === 0) continue;
      out.push({ labels: { upstream, target, state: 'open' }, value: open });
      out.push({ labels: { upstream, target, state: 'idle' }, value: idle });
    }
    return out;
  }

  private routeHistogram(name: string, offset: number, buckets: readonly number[]): Values {
    const out: Values = [];
    for (const [slot, route] of this.slotNames) this.histogram(out, name, slotBase(slot) + offset, buckets, { route });
    return out;
  }

  private targetHistogram(name: string): Values {
    const out: Values = [];
    for (const [slot, labels] of this.targetNames) this.histogram(out, name, targetBase(slot) + T_LATENCY, DURATION_BUCKETS, { ...labels });
    return out;
  }

  private histogram(out: Values, name: string, base: number, buckets: readonly number[], labels: Record<string, string>): void {
    const n = buckets.length;
    const count = this.sum(base + n + 2);
    if (count === 0) return;
    let cum = 0;
    for (let i = 0; i <= n; i++) {
      cum += this.sum(base + i);
      out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: i < n ? buckets[i]! : '+Inf' }, value: cum });
    }
    out.push({ metricName: `${name}_sum`, labels, value: this.sum(base + n + 1) });
    out.push({ metricName: `${name}_count`, labels, value: count });
  }
}

export const CELLS_PER_SLOT = SLOT_CELLS;

/** turnpike_build_info labels. `node` is `bun-<version>` on Bun; `uws` is `none` on the Bun backend. */
function buildInfo(version: string, config: GatewayConfig): Record<string, string> {
  const bun = (process.versions as Record<string, string | undefined>).bun;
  const backend = config.server.backend === 'bun' || (config.server.backend === 'auto' && bun !== undefined) ? 'bun' : config.server.backend === 'node' ? 'node' : 'uws';
  return { version, node: bun !== undefined ? `bun-${bun}` : process.versions.node, backend, uws: backend === 'uws' ? uwsPackageVersion() : 'none' };
}

/** One sample per certificate the config serves or presents (common/config/tls.ts read them): notAfter in Unix seconds. */
function certificateExpiries(config: GatewayConfig): Values {
  const out: Values = [];
  const tls = config.server.tls;
  if (tls !== null) {
    out.push({ labels: { certificate: tls.default.certFile, role: 'default' }, value: Math.floor(tls.default.notAfterMs / 1000) });
    for (const p of tls.sni) out.push({ labels: { certificate: p.certFile, role: 'sni' }, value: Math.floor(p.notAfterMs / 1000) });
  }
  for (const u of Object.values(config.upstreams)) {
    const c = u.tls.clientCert;
    if (c !== null) out.push({ labels: { certificate: c.certFile, role: 'upstream_client', upstream: u.name }, value: Math.floor(c.notAfterMs / 1000) });
  }
  return out;
}
