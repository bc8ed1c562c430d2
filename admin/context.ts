/**
 * What the admin thread knows and can do, handed to the admin API (api/):
 * the running config, the shared control block, the metrics view, a reload
 * request to the engine, and merged latency percentiles from the workers.
 */
import type { Discovery } from './discovery/index.js';
import type { IdentityService } from './identity/service.js';
import type { TargetSource } from '../common/protocol.js';
import type { MessagePort } from 'node:worker_threads';
import hdr from 'hdr-histogram-js';
import type { GatewayConfig } from '../common/config/types.js';
import type { Level } from '../common/log.js';
import type { ConfigDocument, ReloadResult, SlotEntries } from '../common/protocol.js';
import type { LatencySnapshot } from '../workers/latency.js';
import type { MetricsView } from './metrics.js';
import type { TargetStateView } from '../common/upstream-state-layout.js';

export interface Percentiles {
  count: number;
  /** Microseconds. */
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
  mean: number;
}

export interface LatencyStats {
  /** Request arrival to response end, all workers merged. */
  gateway: Percentiles;
  /** Request sent upstream to response head. */
  upstream: Percentiles;
  /** Workers that answered (a worker restarting is skipped). */
  workers: number;
}

export interface AdminContext {
  readonly version: string;
  readonly startedAt: number;
  readonly control: Int32Array;
  readonly metrics: MetricsView;
  config(): GatewayConfig;
  /** The running config as its document and the config file's format (GET /admin/config?format=file). */
  configDocument(): ConfigDocument;
  slots(): SlotEntries;
  reload(req: { doc?: unknown; dryRun?: boolean; actor: string }): Promise<ReloadResult>;
  /** The gateway log level now (every thread follows the same level). */
  logLevel(): Level;
  /** Sets it in every thread, until the next reload or restart. */
  setLogLevel(level: Level, actor: string): void;
  latency(): Promise<LatencyStats>;
  /** The shared upstream state (breakers, health, ejection, in-flight): a target's view, or null when it has no slot. */
  targetState?(upstream: string, url: string): TargetStateView | null;
  /** Target discovery (admin/discovery/): the registry endpoints and each target's source. Absent in unit tests of other endpoints. */
  discovery?: Discovery;
  /** Where a target of the running config comes from, and a registered one's expiry (ms since the epoch). */
  targetSource?(upstream: string, url: string): { source: TargetSource; expiresAt: number | null };
  /** The identity service (consumers, keys, groups, grants): the store of the identity endpoints (api/identity.ts). Absent in unit tests of other endpoints. */
  identity?: IdentityService;
}

const STATS_TIMEOUT_MS = 1000;

/** Asks every worker for its histograms and merges them. */
export class LatencyCollector {
  private readonly ports: (MessagePort | null)[];
  private nextId = 1;

  constructor(ports: (MessagePort | null)[]) {
    this.ports = ports;
  }

  setPort(index: number, port: MessagePort): void {
    this.ports[index]?.close();
    this.ports[index] = port;
  }

  close(): void {
    for (const p of this.ports) p?.close();
  }

  async collect(): Promise<LatencyStats> {
    await hdr.initWebAssembly();
    const snaps = await Promise.all(this.ports.map((p) => (p === null ? null : this.ask(p))));
    const opts = { lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 as const, useWebAssembly: true };
    const gateway = hdr.build(opts);
    const upstream = hdr.build(opts);
    let workers = 0;
    for (const s of snaps) {
      if (s === null) continue;
      workers++;
      const g = hdr.decodeFromCompressedBase64(s.gateway, 32, true);
      const u = hdr.decodeFromCompressedBase64(s.upstream, 32, true);
      gateway.add(g);
      upstream.add(u);
      g.destroy();
      u.destroy();
    }
    const out = { gateway: summary(gateway), upstream: summary(upstream), workers };
    gateway.destroy();
    upstream.destroy();
    return out;
  }

  private ask(port: MessagePort): Promise<LatencySnapshot | null> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => { port.off('message', on); resolve(null); }, STATS_TIMEOUT_MS);
      const on = (msg: { id: number; snapshot: LatencySnapshot; t?: string }) => {
        // Identity messages (common/identity/wire.ts) share this line and carry an `id` too: they have a `t`.
        if (msg === null || typeof msg !== 'object' || 't' in msg || msg.id !== id) return;
        clearTimeout(timer);
        port.off('message', on);
        resolve(msg.snapshot);
      };
      port.on('message', on);
      port.postMessage({ id });
    });
  }
}

function summary(h: hdr.Histogram): Percentiles {
  if (h.totalCount === 0) return { count: 0, p50: 0, p90: 0, p99: 0, p999: 0, max: 0, mean: 0 };
  return {
    count: h.totalCount,
    p50: h.getValueAtPercentile(50),
    p90: h.getValueAtPercentile(90),
    p99: h.getValueAtPercentile(99),
    p999: h.getValueAtPercentile(99.9),
    max: h.maxValue,
    mean: Math.round(h.mean),
  };
}
