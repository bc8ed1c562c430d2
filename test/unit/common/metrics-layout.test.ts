/**
 * The shared-memory metrics layout: the status-code table behind the `code`
 * label, and the sections of a worker's buffer not overlapping.
 */
import { describe, expect, it } from 'vitest';
import {
  CODE_LABELS, DEFAULT_MAX_ROUTE_SLOTS, ERROR_CODES, GLOBAL_CELLS, G_GC, G_LOOP, LOOP_STATS, MAX_TARGET_SLOTS, SLOT_CELLS,
  STATUS_CODES, TARGET_CELLS, TARGET_ERROR_COLUMN, UPSTREAM_ERROR_CODES, codeColumn, metricsBufferBytes, slotBase, targetBase,
} from '../../../common/metrics-layout.js';

describe('code table', () => {
  it('gives each common code its own column and every other code its class bucket', () => {
    for (const c of STATUS_CODES) expect(CODE_LABELS[codeColumn(c)]).toBe(String(c));
    expect(CODE_LABELS[codeColumn(418)]).toBe('4xx');
    expect(CODE_LABELS[codeColumn(100)]).toBe('1xx');
    expect(CODE_LABELS[codeColumn(207)]).toBe('2xx');
    expect(CODE_LABELS[codeColumn(308)]).toBe('3xx');
    expect(CODE_LABELS[codeColumn(599)]).toBe('5xx');
    // No response (the client left): 499, as nginx logs it.
    expect(CODE_LABELS[codeColumn(0)]).toBe('499');
    for (let s = 100; s < 600; s++) expect(CODE_LABELS[codeColumn(s)]!.charAt(0), String(s)).toBe(String(s).charAt(0));
    expect(CODE_LABELS[codeColumn(700)]).toBe('5xx');
  });

  it('has 28 columns: 23 codes and 5 class buckets', () => {
    expect(CODE_LABELS).toHaveLength(28);
    expect(new Set(CODE_LABELS).size).toBe(28);
  });
});

describe('buffer layout', () => {
  it('keeps global cells, route slots and target slots apart, inside the buffer', () => {
    expect(G_LOOP + LOOP_STATS.length).toBeLessThanOrEqual(G_GC);
    expect(slotBase(0)).toBe(GLOBAL_CELLS);
    expect(targetBase(0)).toBe(slotBase(DEFAULT_MAX_ROUTE_SLOTS));
    expect(targetBase(MAX_TARGET_SLOTS - 1) + TARGET_CELLS).toBe(metricsBufferBytes(DEFAULT_MAX_ROUTE_SLOTS) / 8);
    expect(SLOT_CELLS).toBeGreaterThan(0);
  });

  it('maps every upstream error code to a target column, and nothing else', () => {
    const mapped = ERROR_CODES.filter((_c, i) => TARGET_ERROR_COLUMN[i]! >= 0);
    expect(mapped.sort()).toEqual([...UPSTREAM_ERROR_CODES].sort());
    UPSTREAM_ERROR_CODES.forEach((c, k) => expect(TARGET_ERROR_COLUMN[ERROR_CODES.indexOf(c as never)]).toBe(k));
  });
});
