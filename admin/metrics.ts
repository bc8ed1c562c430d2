/**
 * /metrics: turns the workers' shared counters (common/metrics-layout.ts)
 * into Prometheus metrics through prom-client.
 *
 * Workers never send a message per request: each one owns a Float64Array in
 * shared memory; at scrape time this module sums the arrays of every worker
 * slot and hands the totals to prom-client as custom metrics whose get()
 * reads them. Labels are bounded: route id (from config, capped, overflow
 * shares `_overflow`), method (8 values), status class (5 values), error code
 * (a fixed list) -- never raw paths, hosts or keys.
 */
import client from 'prom-client';
import {
  DURATION_BUCKETS, ERROR_CODES, G_ACCESS_LOG_DROPPED, G_ERRORS, G_IN_FLIGHT, G_UPSTREAM_IDLE, G_UPSTREAM_OPEN, METHODS, OVERFLOW_SLOT, S_DURATION, S_REQ_SIZE, S_REQUESTS,
  S_RES_SIZE, S_UPSTREAM, SIZE_BUCKETS, SLOT_CELLS, STATUS_CLASSES, slotBase,
} from '../common/metrics-layout.js';
import type { SlotEntries } from '../common/protocol.js';
import { C_CONFIG_VERSION, C_RELOADS_FAILED, C_RELOADS_OK, C_RESTARTS } from '../common/protocol.js';

type Values = { labels: Record<string, string | number>; value: number; metricName?: string }[];

interface CustomMetric {
  name: string;
  help: string;
  type: string;
  aggregator: string;
  get(): Promise<{ name: string; help: string; type: string; values: Values; aggregator: string }>;
  reset(): void;
}

export class MetricsView {
  readonly registry = new client.Registry();
  private readonly buffers: Float64Array[];
  private slotNames = new Map<number, string>();

  constructor(buffers: SharedArrayBuffer[], private readonly control: Int32Array, slots: SlotEntries) {
    this.buffers = buffers.map((b) => new Float64Array(b));
    this.setSlots(slots);
    client.collectDefaultMetrics({ register: this.registry, prefix: 'turnpike_process_' });
    const add = (name: string, help: string, type: string, collect: () => Values) => {
      const m: CustomMetric = {
        name, help, type, aggregator: 'sum',
        get: async () => ({ name, help, type, values: collect(), aggregator: 'sum' }),
        reset: () => {},
      };
      this.registry.registerMetric(m as unknown as client.Metric);
    };
    add('turnpike_requests_total', 'Requests answered, by route, method and status class.', 'counter', () => this.requests());
    add('turnpike_request_duration_seconds', 'Time from request arrival to the end of the response (gateway + upstream).', 'histogram',
      () => this.histogram('turnpike_request_duration_seconds', S_DURATION, DURATION_BUCKETS));
    add('turnpike_upstream_latency_seconds', 'Time from the request sent upstream to the response head received.', 'histogram',
      () => this.histogram('turnpike_upstream_latency_seconds', S_UPSTREAM, DURATION_BUCKETS));
    add('turnpike_request_size_bytes', 'Request body size.', 'histogram',
      () => this.histogram('turnpike_request_size_bytes', S_REQ_SIZE, SIZE_BUCKETS));
    add('turnpike_response_size_bytes', 'Response body size.', 'histogram',
      () => this.histogram('turnpike_response_size_bytes', S_RES_SIZE, SIZE_BUCKETS));
    add('turnpike_errors_total', 'Gateway-level errors by stable error code.', 'counter', () => {
      const out: Values = [];
      ERROR_CODES.forEach((code, i) => out.push({ labels: { code }, value: this.sum(G_ERRORS + i) }));
      return out;
    });
    add('turnpike_active_requests', 'Requests in flight across all workers (uWS exposes no per-connection events for HTTP).', 'gauge',
      () => [{ labels: {}, value: this.sum(G_IN_FLIGHT) }]);
    add('turnpike_upstream_connections', 'Upstream sockets held by the workers: open (busy + idle, connecting included) and idle keep-alive.', 'gauge', () => [
      { labels: { state: 'open' }, value: this.sum(G_UPSTREAM_OPEN) },
      { labels: { state: 'idle' }, value: this.sum(G_UPSTREAM_IDLE) },
    ]);
    add('turnpike_access_log_dropped_total', 'Access log lines dropped because the destination could not keep up (over 8 MiB waiting) or failed.', 'counter',
      () => [{ labels: {}, value: this.sum(G_ACCESS_LOG_DROPPED) }]);
    add('turnpike_worker_restarts_total', 'Data-plane worker threads replaced after exiting.', 'counter',
      () => [{ labels: {}, value: Atomics.load(this.control, C_RESTARTS) }]);
    add('turnpike_config_reloads_total', 'Config reloads by result: applied, or refused (the old config kept serving).', 'counter', () => [
      { labels: { result: 'success' }, value: Atomics.load(this.control, C_RELOADS_OK) },
      { labels: { result: 'failure' }, value: Atomics.load(this.control, C_RELOADS_FAILED) },
    ]);
    add('turnpike_config_version', 'Version of the configuration being served.', 'gauge',
      () => [{ labels: {}, value: Atomics.load(this.control, C_CONFIG_VERSION) }]);
  }

  setSlots(slots: SlotEntries): void {
    const names = new Map<number, string>([[0, '_none'], [OVERFLOW_SLOT, '_overflow']]);
    for (const [id, slot] of slots) names.set(slot, id);
    this.slotNames = names;
  }

  private sum(cell: number): number {
    let s = 0;
    for (const b of this.buffers) s += b[cell]!;
    return s;
  }

  private requests(): Values {
    const out: Values = [];
    for (const [slot, route] of this.slotNames) {
      const base = slotBase(slot);
      for (let m = 0; m < METHODS.length; m++) {
        for (let c = 0; c < STATUS_CLASSES.length; c++) {
          const v = this.sum(base + S_REQUESTS + m * STATUS_CLASSES.length + c);
          if (v > 0) out.push({ labels: { route, method: METHODS[m]!, status_class: STATUS_CLASSES[c]! }, value: v });
        }
      }
    }
    return out;
  }

  private histogram(name: string, offset: number, buckets: readonly number[]): Values {
    const out: Values = [];
    const n = buckets.length;
    for (const [slot, route] of this.slotNames) {
      const base = slotBase(slot) + offset;
      const count = this.sum(base + n + 2);
      if (count === 0) continue;
      let cum = 0;
      for (let i = 0; i <= n; i++) {
        cum += this.sum(base + i);
        out.push({ metricName: `${name}_bucket`, labels: { route, le: i < n ? buckets[i]! : '+Inf' }, value: cum });
      }
      out.push({ metricName: `${name}_sum`, labels: { route }, value: this.sum(base + n + 1) });
      out.push({ metricName: `${name}_count`, labels: { route }, value: count });
    }
    return out;
  }
}

export const CELLS_PER_SLOT = SLOT_CELLS;
