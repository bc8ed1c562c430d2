/**
 * server.timeouts (the node backend's client timeouts): defaults, duration
 * strings, bounds, and the NodeApp applying them.
 */
import { describe, expect, it } from 'vitest';
import { DEFAULTS } from '../../../common/config/schema.js';
import {
  DEFAULT_BODY_TIMEOUT_MS, DEFAULT_HEADER_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS, NodeApp,
} from '../../../workers/transport/node/app.js';
import { errorsOf, minimal, valid } from '../config/helpers.js';

describe('server.timeouts', () => {
  it('defaults to 10 s each, the values the node App starts with', () => {
    const c = valid(minimal());
    expect(c.server.timeouts).toEqual({ headerMs: 10_000, idleMs: 10_000, bodyMs: 10_000 });
    expect(DEFAULTS.server.timeouts).toEqual({ headerMs: DEFAULT_HEADER_TIMEOUT_MS, idleMs: DEFAULT_IDLE_TIMEOUT_MS, bodyMs: DEFAULT_BODY_TIMEOUT_MS });
    const app = new NodeApp();
    expect([app.headerTimeoutMs, app.idleTimeoutMs, app.bodyTimeoutMs]).toEqual([10_000, 10_000, 10_000]);
  });

  it('takes milliseconds or duration strings, each field on its own', () => {
    const c = valid({ ...minimal(), server: { timeouts: { headerMs: '2s', idleMs: 75_000, bodyMs: '1m' } } });
    expect(c.server.timeouts).toEqual({ headerMs: 2_000, idleMs: 75_000, bodyMs: 60_000 });
    const d = valid({ ...minimal(), server: { timeouts: { idleMs: 500 } } });
    expect(d.server.timeouts).toEqual({ headerMs: 10_000, idleMs: 500, bodyMs: 10_000 });
  });

  it('refuses values out of range and unknown fields', () => {
    expect(errorsOf({ ...minimal(), server: { timeouts: { headerMs: 0 } } }).map((e) => e.path)).toContain('server.timeouts.headerMs');
    expect(errorsOf({ ...minimal(), server: { timeouts: { bodyMs: -1 } } }).map((e) => e.path)).toContain('server.timeouts.bodyMs');
    expect(errorsOf({ ...minimal(), server: { timeouts: { readMs: 5 } } }).length).toBeGreaterThan(0);
  });

  it('NodeApp.setTimeouts applies them', () => {
    const app = new NodeApp();
    app.setTimeouts({ headerMs: 1_500, idleMs: 2_500, bodyMs: 3_500 });
    expect([app.headerTimeoutMs, app.idleTimeoutMs, app.bodyTimeoutMs]).toEqual([1_500, 2_500, 3_500]);
  });
});
