/**
 * Recording one request into the worker's shared counters (layout in
 * common/metrics-layout.ts) and its latency histogram. Shared by both
 * backends and the exchange so a request is counted the same way wherever
 * it ends.
 *
 * Per request: one cell for the route's method x code, the route's duration
 * histogram, and, when a target was picked, one cell for the target's code
 * (its cell base comes with the pool, compiled at config time: no lookup).
 */
import {
  DURATION_BUCKETS, ERROR_CODES, G_ERRORS, S_DURATION, S_REQ_SIZE, S_REQUESTS, S_RES_SIZE, SIZE_BUCKETS, CODE_COLUMNS,
  TARGET_ERROR_COLUMN, T_ERRORS, T_LAST_ERROR_AT, T_LAST_ERROR_CODE, T_REQUESTS, codeColumn, observe, slotBase,
} from '../common/metrics-layout.js';
import type { LatencyRecorder } from './latency.js';

export const errorIndex: Readonly<Record<string, number>> = Object.fromEntries(ERROR_CODES.map((c, i) => [c, i]));

/**
 * A gateway error by its code; `target` (a target slot's first cell, -1 for
 * none) also counts an upstream error against the target and records it as
 * the target's last error. Only on error paths.
 */
export function countError(cells: Float64Array, code: string, target = -1): void {
  const i = errorIndex[code];
  if (i === undefined) return;
  cells[G_ERRORS + i]!++;
  if (target < 0) return;
  const k = TARGET_ERROR_COLUMN[i]!;
  if (k < 0) return;
  cells[target + T_ERRORS + k]!++;
  cells[target + T_LAST_ERROR_CODE] = i + 1;
  cells[target + T_LAST_ERROR_AT] = Date.now();
}

/**
 * Status code and duration of a finished request (`ms` since it arrived);
 * status 0 (the client went away first) counts as 499. `target`: the first
 * cell of the target slot the request was sent to, -1 for none.
 */
export function recordRequest(
  cells: Float64Array, latency: LatencyRecorder | null, slot: number, methodIdx: number, status: number, ms: number, target = -1,
): void {
  latency?.recordGateway(ms);
  const base = slotBase(slot);
  const col = codeColumn(status);
  cells[base + S_REQUESTS + methodIdx * CODE_COLUMNS + col]!++;
  if (target >= 0) cells[target + T_REQUESTS + col]!++;
  observe(cells, base + S_DURATION, DURATION_BUCKETS, ms / 1000);
}

export function recordSizes(cells: Float64Array, slot: number, requestBytes: number, responseBytes: number): void {
  const base = slotBase(slot);
  observe(cells, base + S_REQ_SIZE, SIZE_BUCKETS, requestBytes);
  observe(cells, base + S_RES_SIZE, SIZE_BUCKETS, responseBytes);
}
