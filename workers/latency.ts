/**
 * Per-worker latency histograms (HDR, microseconds) for percentiles at
 * GET /admin/stats. Prometheus histograms have fixed buckets; these give
 * p50/p90/p99/p99.9 with 3 significant digits. Recording is the WASM build
 * (~40 ns a value, ENVIRONMENT.md). Histograms cannot live in shared memory,
 * so the admin thread asks each worker over a private MessagePort and
 * merges the compressed snapshots it gets back.
 */
import type { MessagePort } from 'node:worker_threads';
import hdr from 'hdr-histogram-js';

/** Values above this (60 s) are clamped. */
const HIGHEST_US = 60_000_000;

export interface LatencySnapshot {
  gateway: string;
  upstream: string;
}

export class LatencyRecorder {
  private gateway: hdr.Histogram;
  private upstream: hdr.Histogram;

  private constructor() {
    const opts = { lowestDiscernibleValue: 1, highestTrackableValue: HIGHEST_US, numberOfSignificantValueDigits: 3 as const, useWebAssembly: true };
    this.gateway = hdr.build(opts);
    this.upstream = hdr.build(opts);
  }

  static async create(): Promise<LatencyRecorder> {
    await hdr.initWebAssembly();
    return new LatencyRecorder();
  }

  recordGateway(ms: number): void {
    this.gateway.recordValue(Math.min(HIGHEST_US, Math.max(1, Math.round(ms * 1000))));
  }

  recordUpstream(ms: number): void {
    this.upstream.recordValue(Math.min(HIGHEST_US, Math.max(1, Math.round(ms * 1000))));
  }

  snapshot(): LatencySnapshot {
    return {
      gateway: hdr.encodeIntoCompressedBase64(this.gateway),
      upstream: hdr.encodeIntoCompressedBase64(this.upstream),
    };
  }

  /** Answers `{ id }` requests on the admin thread's port with a snapshot. */
  serve(port: MessagePort): void {
    port.on('message', (msg: { id: number; t?: string }) => {
      if (msg.t !== undefined) return; // identity messages share the line (common/identity/wire.ts)
      port.postMessage({ id: msg.id, snapshot: this.snapshot() });
    });
  }
}
