/**
 * Recording one request into the worker's shared counters (layout in
 * common/metrics-layout.ts) and its latency histogram. Shared by both
 * backends and the exchange so a request is counted the same way wherever
 * it ends.
 */
import {
  DURATION_BUCKETS, ERROR_CODES, G_ERRORS, S_DURATION, S_REQ_SIZE, S_REQUESTS, S_RES_SIZE, SIZE_BUCKETS, STATUS_CLASSES,
  observe, slotBase,
} from '../common/metrics-layout.js';
import type { LatencyRecorder } from './latency.js';

export const errorIndex: Readonly<Record<string, number>> = Object.fromEntries(ERROR_CODES.map((c, i) => [c, i]));

export function countError(cells: Float64Array, code: string): void {
  const i = errorIndex[code];
  if (i !== undefined) cells[G_ERRORS + i]!++;
}

/** Status class and duration of a finished request (`ms` since it arrived). */
export function recordRequest(
  cells: Float64Array, latency: LatencyRecorder | null, slot: number, methodIdx: number, status: number, ms: number,
): void {
  latency?.recordGateway(ms);
  const base = slotBase(slot);
  const cls = status >= 100 && status < 600 ? ((status / 100) | 0) - 1 : 4;
  cells[base + S_REQUESTS + methodIdx * STATUS_CLASSES.length + cls]!++;
  observe(cells, base + S_DURATION, DURATION_BUCKETS, ms / 1000);
}

export function recordSizes(cells: Float64Array, slot: number, requestBytes: number, responseBytes: number): void {
  const base = slotBase(slot);
  observe(cells, base + S_REQ_SIZE, SIZE_BUCKETS, requestBytes);
  observe(cells, base + S_RES_SIZE, SIZE_BUCKETS, responseBytes);
}
