/**
 * Upstream resilience configuration (breaker, healthCheck,
 * outlierDetection, balance: p2c): every kind of nonsense is refused with
 * the path of the problem and what to write instead; every documented form
 * validates and resolves to the numbers the data plane uses, defaults named.
 */
import { describe, expect, it } from 'vitest';
import { loadConfigText } from '../../../common/config/load.js';
import { RESILIENCE_DEFAULTS } from '../../../common/config/resilience.js';
import { lines, minimal, valid } from './helpers.js';

function withUp(extra: Record<string, unknown>): Record<string, unknown> {
  const doc = minimal() as { upstreams: { users: Record<string, unknown> } };
  Object.assign(doc.upstreams.users, extra);
  return doc;
}

describe('resilience config: refused with the path of the problem', () => {
  // [what, upstream fields, the exact error lines]
  const cases: [string, Record<string, unknown>, string[]][] = [
    ['negative failureThreshold', { breaker: { failureThreshold: -1 } }, ['upstreams.users.breaker.failureThreshold: must be an integer from 0 to 1000000 (got -1)']],
    ['failureRate over 100', { breaker: { failureRate: 101 } }, ['upstreams.users.breaker.failureRate: must be an integer from 0 to 100 (got 101)']],
    ['windowMs not a duration', { breaker: { windowMs: '5x' } }, ['upstreams.users.breaker.windowMs: must be a number of milliseconds or a duration such as "250ms", "5s", "1m" (got "5x"); durations are a whole number followed by ms, s, m or h']],
    ['windowMs below 100', { breaker: { windowMs: 50 } }, ['upstreams.users.breaker.windowMs: must be an integer from 100 to 86400000 (got 50)']],
    ['maxOpenMs below openMs', { breaker: { openMs: 60000, maxOpenMs: 1000 } }, ['upstreams.users.breaker.maxOpenMs: maxOpenMs (1000) is shorter than openMs (60000); the open time only grows from openMs up to maxOpenMs']],
    ['openMs above the default maxOpenMs', { breaker: { openMs: '10m' } }, ['upstreams.users.breaker.openMs: maxOpenMs (300000) is shorter than openMs (600000); the open time only grows from openMs up to maxOpenMs']],
    ['a breaker that can never open', { breaker: { failureThreshold: 0, failureRate: 0 } }, ['upstreams.users.breaker: failureThreshold and failureRate are both 0, so the breaker could never open; set one of them (or remove breaker)']],
    ['no probes', { breaker: { halfOpenProbes: 0 } }, ['upstreams.users.breaker.halfOpenProbes: must be an integer from 1 to 1000 (got 0)']],
    ['negative maxInFlight', { breaker: { maxInFlight: -1 } }, ['upstreams.users.breaker.maxInFlight: must be an integer from 0 to 1000000000 (got -1)']],
    ['typo in a breaker field', { breaker: { treshold: 5 } }, ['upstreams.users.breaker: unknown property "treshold" (known: failureThreshold, failureRate, windowMs, minRequests, slowCallMs, openMs, maxOpenMs, halfOpenProbes, maxInFlight, fallback)']],
    ['breaker: true', { breaker: true }, ['upstreams.users.breaker: must be a mapping (key: value) (got true)']],
    ['fallback status 99', { breaker: { fallback: { status: 99 } } }, ['upstreams.users.breaker.fallback.status: must be an integer from 200 to 599 (got 99)']],
    ['fallback 204 with a body', { breaker: { fallback: { status: 204, body: 'x' } } }, ['upstreams.users.breaker.fallback.body: a 204 response has no body; remove body or use another status']],
    ['fallback sets Content-Length', { breaker: { fallback: { headers: { 'Content-Length': '5' } } } }, ['upstreams.users.breaker.fallback.headers.Content-Length: "Content-Length" is written by the gateway (the body\'s length and the connection\'s framing); remove it']],
    ['fallback header with a newline', { breaker: { fallback: { headers: { 'x-a': 'a\nb' } } } }, ['upstreams.users.breaker.fallback.headers.x-a: must not contain control characters (CR, LF, NUL, ...)']],
    ['fallback body not text', { breaker: { fallback: { body: 5 } } }, ['upstreams.users.breaker.fallback.body: must be a string (got 5)']],
    ['health path without /', { healthCheck: { path: 'health' } }, ['upstreams.users.healthCheck.path: must be a path starting with "/" (printable ASCII, no spaces)']],
    ['check timeout past its interval', { healthCheck: { intervalMs: '1s', timeoutMs: '2s' } }, ['upstreams.users.healthCheck.timeoutMs: timeoutMs (2000) is longer than intervalMs (1000); a check must end before the next one starts']],
    ['interval below 100 ms', { healthCheck: { intervalMs: 10 } }, ['upstreams.users.healthCheck.intervalMs: must be an integer from 100 to 86400000 (got 10)']],
    ['expectStatus malformed', { healthCheck: { expectStatus: '200-' } }, ['upstreams.users.healthCheck.expectStatus: must be status codes or ranges separated by commas, such as "200-399" or "200,204"']],
    ['expectStatus backwards', { healthCheck: { expectStatus: '399-200' } }, ['upstreams.users.healthCheck.expectStatus: range "399-200" goes backwards; write the low code first ("200-399")']],
    ['healthyThreshold 0', { healthCheck: { healthyThreshold: 0 } }, ['upstreams.users.healthCheck.healthyThreshold: must be an integer from 1 to 100 (got 0)']],
    ['consecutiveFailures 0', { outlierDetection: { consecutiveFailures: 0 } }, ['upstreams.users.outlierDetection.consecutiveFailures: must be an integer from 1 to 1000000 (got 0)']],
    ['maxEjectionPercent 150', { outlierDetection: { maxEjectionPercent: 150 } }, ['upstreams.users.outlierDetection.maxEjectionPercent: must be an integer from 0 to 100 (got 150)']],
    ['baseEjectionMs 0', { outlierDetection: { baseEjectionMs: 0 } }, ['upstreams.users.outlierDetection.baseEjectionMs: must be an integer from 1 to 86400000 (got 0)']],
    ['balance typo', { balance: 'p2cc' }, ['upstreams.users.balance: must be one of "round_robin", "least_conn", "random", "ip_hash", "p2c", "consistent_hash", "sticky" (got "p2cc") (did you mean "p2c"?)']],
    ['renamed: circuitBreaker', { circuitBreaker: {} }, ['upstreams.users: unsupported property "circuitBreaker", use "breaker" instead']],
    ['hashOn without consistent_hash (test/unit/config/balancing.test.ts has the rest)', { hashOn: 'ip' }, ['upstreams.users.hashOn: hashOn is used by balance: consistent_hash only (this upstream\'s balance is "round_robin"); set balance: consistent_hash or remove hashOn']],
  ];
  it.each(cases)('%s', (_what, up, want) => {
    expect(lines(withUp(up))).toEqual(want);
  });
});

describe('resilience config: every documented form validates', () => {
  it('absent: off; {}: every default', () => {
    const off = valid(minimal()).upstreams['users']!;
    expect([off.breaker, off.healthCheck, off.outlierDetection]).toEqual([null, null, null]);
    const on = valid(withUp({ breaker: {}, healthCheck: {}, outlierDetection: {}, balance: 'p2c' })).upstreams['users']!;
    expect(on.balance).toBe('p2c');
    expect(on.breaker).toEqual({ ...RESILIENCE_DEFAULTS.breaker, fallback: null });
    expect(on.healthCheck).toEqual({ ...RESILIENCE_DEFAULTS.healthCheck, expectStatus: [{ lo: 200, hi: 399 }] });
    expect(on.outlierDetection).toEqual(RESILIENCE_DEFAULTS.outlierDetection);
    expect(RESILIENCE_DEFAULTS.breaker).toEqual({
      failureThreshold: 5, failureRate: 50, windowMs: 10000, minRequests: 20, slowCallMs: 0, openMs: 30000, maxOpenMs: 300000, halfOpenProbes: 1, maxInFlight: 10000,
    });
  });

  it('the issue\'s YAML, as written (durations as strings too)', () => {
    const yaml = `
upstreams:
  users:
    targets: [http://10.0.0.11:9001, http://10.0.0.12:9001]
    balance: p2c
    healthCheck: { path: /health, intervalMs: 2000, timeoutMs: 500,
                   healthyThreshold: 2, unhealthyThreshold: 2, expectStatus: "200-399" }
    outlierDetection: { consecutiveFailures: 5, baseEjectionMs: 30000, maxEjectionPercent: 50 }
    breaker: { failureThreshold: 5, failureRate: 50, windowMs: 10000, minRequests: 20,
               slowCallMs: 0, openMs: 30000, maxOpenMs: 300000, halfOpenProbes: 1,
               maxInFlight: 10000, fallback: { status: 503, body: '{"degraded":true}',
               headers: { content-type: application/json } } }
  other:
    targets: [http://10.0.0.13:9001]
    breaker: { openMs: 5s, maxOpenMs: 1m, windowMs: 30s, slowCallMs: 250ms }
    healthCheck: { intervalMs: 1s, timeoutMs: 200ms, expectStatus: "200,204,300-302" }
routes:
  - { id: users, path: /users, upstream: users }
  - { id: other, path: /other, upstream: other }
`;
    const r = loadConfigText(yaml, 'turnpike.yaml');
    if (!r.ok) throw new Error(r.errors.map((e) => `${e.path}: ${e.message}`).join('\n'));
    const u = r.config.upstreams['users']!;
    expect(u.breaker!.fallback).toEqual({ status: 503, body: '{"degraded":true}', headers: [['content-type', 'application/json']] });
    const o = r.config.upstreams['other']!;
    expect([o.breaker!.openMs, o.breaker!.maxOpenMs, o.breaker!.windowMs, o.breaker!.slowCallMs]).toEqual([5000, 60000, 30000, 250]);
    expect(o.healthCheck!.expectStatus).toEqual([{ lo: 200, hi: 200 }, { lo: 204, hi: 204 }, { lo: 300, hi: 302 }]);
  });
});
