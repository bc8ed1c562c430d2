/**
 * The breaker and ejection state machine (workers/proxy/breaker.ts) on a
 * real shared state buffer, with a fake clock: every transition, the open
 * time doubling, the probe count, the failure-rate window, the probe lease,
 * ejection growth and its cap; and the wrap-around arithmetic of times.
 */
import { describe, expect, it } from 'vitest';
import type { BreakerConfig, OutlierConfig } from '../../../common/config/types.js';
import {
  ST_CLOSED, ST_HALF_OPEN, ST_OPEN, T_OPEN_UNTIL, T_EJECTIONS, T_HEALTH, T_PROBES, T_STATE, T_TO, T_TRIPS, H_UNHEALTHY, before, createUpstreamState, msUntil,
  releaseWorker, targetCell, workerCell, wrapMs, readTargetState, targetInFlight, upstreamInFlight,
} from '../../../common/upstream-state-layout.js';
import { MAX_TARGET_SLOTS } from '../../../common/metrics-layout.js';
import {
  AVAILABLE, BLOCKED_BREAKER, BLOCKED_HEALTH, OUTCOME_FAILURE, OUTCOME_NONE, OUTCOME_SUCCESS, type BreakerSettings, acquire, availability, eject,
  openTime, record,
} from '../../../workers/proxy/breaker.js';
import { outcomeOf } from '../../../workers/proxy/guard.js';

const BR: BreakerConfig = {
  failureThreshold: 3, failureRate: 0, windowMs: 10_000, minRequests: 20, slowCallMs: 0, openMs: 1000, maxOpenMs: 5000,
  halfOpenProbes: 2, maxInFlight: 0, fallback: null,
};

function setup(br: Partial<BreakerConfig> | null = {}, outlier: OutlierConfig | null = null) {
  const s = new Int32Array(createUpstreamState(2));
  const cfg: BreakerSettings = { breaker: br === null ? null : { ...BR, ...br }, outlier, windowMs: br?.windowMs ?? 10_000, probeLeaseMs: 3000 };
  return { s, b: targetCell(1), cfg };
}

/** A clock well past 2^31 ms (a real Unix time): wrap-around is always in play. */
const T0 = 1_764_470_000_000;

describe('breaker state machine', () => {
  it('closed -> open after failureThreshold failures in a row; a success resets the count', () => {
    const { s, b, cfg } = setup();
    let now = T0;
    record(s, b, cfg, false, OUTCOME_FAILURE, now);
    record(s, b, cfg, false, OUTCOME_FAILURE, now);
    record(s, b, cfg, false, OUTCOME_SUCCESS, now);
    record(s, b, cfg, false, OUTCOME_FAILURE, now);
    record(s, b, cfg, false, OUTCOME_FAILURE, now);
    expect(Atomics.load(s, b + T_STATE)).toBe(ST_CLOSED);
    record(s, b, cfg, false, OUTCOME_FAILURE, now);
    expect(Atomics.load(s, b + T_STATE)).toBe(ST_OPEN);
    expect(acquire(s, b, cfg, now)).toBe(-1);
    expect(availability(s, b, 2, now + 999)).toBe(BLOCKED_BREAKER);
    now += 1000;
    expect(availability(s, b, 2, now)).toBe(AVAILABLE);
    expect(Atomics.load(s, b + T_TO + ST_OPEN)).toBe(1);
  });

  it('half-open admits exactly halfOpenProbes, closes when all succeed', () => {
    const { s, b, cfg } = setup();
    let now = T0;
    for (let i = 0; i < 3; i++) record(s, b, cfg, false, OUTCOME_FAILURE, now);
    now += 1000;
    expect(acquire(s, b, cfg, now)).toBe(1);
    expect(Atomics.load(s, b + T_STATE)).toBe(ST_HALF_OPEN);
    expect(acquire(s, b, cfg, now)).toBe(1);
    expect(acquire(s, b, cfg, now)).toBe(-1);
    expect(availability(s, b, 2, now)).toBe(BLOCKED_BREAKER);
    record(s, b, cfg, true, OUTCOME_SUCCESS, now);
    expect(Atomics.load(s, b + T_STATE)).toBe(ST_HALF_OPEN);
    record(s, b, cfg, true, OUTCOME_SUCCESS, now);
    expect(Atomics.load(s, b + T_STATE)).toBe(ST_CLOSED);
    expect(Atomics.load(s, b + T_TRIPS)).toBe(0);
    expect(acquire(s, b, cfg, now)).toBe(0);
    expect([0, 1, 2].map((k) => Atomics.load(s, b + T_TO + k))).toEqual([1, 1, 1]);
  });

  it('a failed probe reopens for twice as long, up to maxOpenMs; closing resets it', () => {
    const { s, b, cfg } = setup();
    let now = T0;
    for (let i = 0; i < 3; i++) record(s, b, cfg, false, OUTCOME_FAILURE, now);
    const opens: number[] = [];
    for (let trip = 0; trip < 5; trip++) {
      const until = Atomics.load(s, b + T_OPEN_UNTIL);
      opens.push(msUntil(now, until));
      now += msUntil(now, until);
      expect(acquire(s, b, cfg, now)).toBe(1);
      record(s, b, cfg, true, OUTCOME_FAILURE, now);
      expect(Atomics.load(s, b + T_STATE)).toBe(ST_OPEN);
    }
    expect(opens).toEqual([1000, 2000, 4000, 5000, 5000]);
    expect(openTime(cfg.breaker!, 1)).toBe(1000);
    expect(openTime(cfg.breaker!, 40)).toBe(5000);
  });

  it('a probe with no verdict gives its place back; a late non-probe result does not count as a probe', () => {
    const { s, b, cfg } = setup({ halfOpenProbes: 1 });
    let now = T0;
    for (let i = 0; i < 3; i++) record(s, b, cfg, false, OUTCOME_FAILURE, now);
    now += 1000;
    expect(acquire(s, b, cfg, now)).toBe(1);
    expect(acquire(s, b, cfg, now)).toBe(-1);
    record(s, b, cfg, true, OUTCOME_NONE, now);
    expect(Atomics.load(s, b + T_PROBES)).toBe(0);
    expect(acquire(s, b, cfg, now)).toBe(1);
    // A request admitted before the trip fails now: not a probe, no reopening.
    record(s, b, cfg, false, OUTCOME_FAILURE, now);
    expect(Atomics.load(s, b + T_STATE)).toBe(ST_HALF_OPEN);
    record(s, b, cfg, true, OUTCOME_SUCCESS, now);
    expect(Atomics.load(s, b + T_STATE)).toBe(ST_CLOSED);
  });

  it('probe places held too long (a dead worker) are given back after the lease', () => {
    const { s, b, cfg } = setup({ halfOpenProbes: 1 });
    let now = T0;
    for (let i = 0; i < 3; i++) record(s, b, cfg, false, OUTCOME_FAILURE, now);
    now += 1000;
    expect(acquire(s, b, cfg, now)).toBe(1); // this holder never comes back
    now += cfg.probeLeaseMs - 1;
    expect(acquire(s, b, cfg, now)).toBe(-1);
    now += 2;
    expect(acquire(s, b, cfg, now)).toBe(1);
  });

  it('failure rate over the window, once minRequests are in it', () => {
    const { s, b, cfg } = setup({ failureThreshold: 0, failureRate: 50, minRequests: 10, windowMs: 1000 });
    const now = T0;
    // 9 requests, 5 failures (alternating): below minRequests.
    for (let i = 0; i < 9; i++) record(s, b, cfg, false, i % 2 === 0 ? OUTCOME_FAILURE : OUTCOME_SUCCESS, now);
    expect(Atomics.load(s, b + T_STATE)).toBe(ST_CLOSED);
    record(s, b, cfg, false, OUTCOME_SUCCESS, now); // 10 requests, 5 failures: 50%, but the trip is judged on a failure
    expect(Atomics.load(s, b + T_STATE)).toBe(ST_CLOSED);
    record(s, b, cfg, false, OUTCOME_FAILURE, now); // 11, 6 failures: 54%
    expect(Atomics.load(s, b + T_STATE)).toBe(ST_OPEN);
  });

  it('the previous window counts in proportion to its overlap; an old one not at all', () => {
    const { s, b, cfg } = setup({ failureThreshold: 0, failureRate: 50, minRequests: 10, windowMs: 1000 });
    let now = T0;
    for (let i = 0; i < 8; i++) record(s, b, cfg, false, OUTCOME_FAILURE, now); // window 1: 8 failures
    now += 1000; // window 2 begins: window 1 weighs 1.0 at its very start
    record(s, b, cfg, false, OUTCOME_SUCCESS, now);
    record(s, b, cfg, false, OUTCOME_FAILURE, now); // 8 + 2 = 10 requests, 9 failures
    expect(Atomics.load(s, b + T_STATE)).toBe(ST_OPEN);
    const o = setup({ failureThreshold: 0, failureRate: 50, minRequests: 10, windowMs: 1000 });
    now = T0;
    for (let i = 0; i < 8; i++) record(o.s, o.b, o.cfg, false, OUTCOME_FAILURE, now);
    now += 5000; // long gone
    for (let i = 0; i < 3; i++) record(o.s, o.b, o.cfg, false, OUTCOME_FAILURE, now);
    expect(Atomics.load(o.s, o.b + T_STATE)).toBe(ST_CLOSED);
  });

  it('slow calls and what counts as a failure', () => {
    expect(outcomeOf('', 200, 50, 0)).toBe(OUTCOME_SUCCESS);
    expect(outcomeOf('', 200, 50, 40)).toBe(OUTCOME_FAILURE);
    expect(outcomeOf('', 404, 5, 40)).toBe(OUTCOME_SUCCESS);
    expect(outcomeOf('', 503, 5, 0)).toBe(OUTCOME_FAILURE);
    for (const c of ['upstream_connect_failed', 'upstream_connect_timeout', 'upstream_reset', 'upstream_bad_response', 'upstream_timeout', 'upstream_aborted']) {
      expect(outcomeOf(c, 502, -1, 0)).toBe(OUTCOME_FAILURE);
    }
    expect(outcomeOf('client_aborted', 499, -1, 0)).toBe(OUTCOME_NONE);
    expect(outcomeOf('client_aborted', 500, 10, 0)).toBe(OUTCOME_FAILURE); // the target had answered 5xx
    expect(outcomeOf('upstream_unavailable', 503, -1, 0)).toBe(OUTCOME_NONE);
  });

  it('without a breaker every request is admitted; unhealthy targets are not available', () => {
    const { s, b, cfg } = setup(null);
    for (let i = 0; i < 50; i++) record(s, b, cfg, false, OUTCOME_FAILURE, T0);
    expect(acquire(s, b, cfg, T0)).toBe(0);
    Atomics.store(s, b + T_HEALTH, H_UNHEALTHY);
    expect(availability(s, b, 1, T0)).toBe(BLOCKED_HEALTH);
  });
});

describe('outlier ejection', () => {
  const O: OutlierConfig = { consecutiveFailures: 2, baseEjectionMs: 1000, maxEjectionPercent: 50 };

  it('ejects after consecutiveFailures, for base x times ejected, capped by maxEjectionPercent', () => {
    const { s, cfg } = setup(null, O);
    const cells = [targetCell(1), targetCell(2), targetCell(3), targetCell(4)];
    let now = T0;
    const fail = (c: number) => {
      if (record(s, c, cfg, false, OUTCOME_FAILURE, now)) eject(s, c, cells, O, now);
    };
    fail(cells[0]!);
    expect(availability(s, cells[0]!, 1, now)).toBe(AVAILABLE);
    fail(cells[0]!);
    expect(availability(s, cells[0]!, 1, now)).toBe(BLOCKED_HEALTH);
    fail(cells[1]!); fail(cells[1]!);
    fail(cells[2]!); fail(cells[2]!); // a third of four would be 75%: refused
    expect(availability(s, cells[1]!, 1, now)).toBe(BLOCKED_HEALTH);
    expect(availability(s, cells[2]!, 1, now)).toBe(AVAILABLE);
    expect(cells.map((c) => Atomics.load(s, c + T_EJECTIONS))).toEqual([1, 1, 0, 0]);
    now += 1000;
    expect(availability(s, cells[0]!, 1, now)).toBe(AVAILABLE);
    fail(cells[0]!); fail(cells[0]!);
    // Second ejection: twice as long.
    expect(readTargetState(s, 1, now).ejectedUntil).toBe(new Date(now + 2000).toISOString());
  });

  it('0%: never ejects', () => {
    const o = { ...O, maxEjectionPercent: 0 };
    const { s } = setup(null, o);
    expect(eject(s, targetCell(1), [targetCell(1), targetCell(2)], o, T0)).toBe(false);
  });
});

describe('shared state layout', () => {
  it('times compare across the 32-bit wrap', () => {
    const t = 2 ** 32 - 10; // wraps within the next 10 ms
    const until = wrapMs(t + 100);
    expect(before(t, until)).toBe(true);
    expect(before(t + 99, until)).toBe(true);
    expect(before(t + 100, until)).toBe(false);
    expect(msUntil(t + 40, until)).toBe(60);
  });

  it('in flight is the sum of the workers\' own cells; a dead worker\'s are cleared', () => {
    const s = new Int32Array(createUpstreamState(2));
    s[workerCell(0) + 5] = 4;
    s[workerCell(1) + 5] = 3;
    s[workerCell(0) + MAX_TARGET_SLOTS + 2] = 4;
    s[workerCell(1) + MAX_TARGET_SLOTS + 2] = 3;
    expect(targetInFlight(s, 5)).toBe(7);
    expect(upstreamInFlight(s, 2)).toBe(7);
    releaseWorker(s, 1);
    expect(targetInFlight(s, 5)).toBe(4);
    expect(upstreamInFlight(s, 2)).toBe(4);
  });
});


