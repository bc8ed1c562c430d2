/**
 * Retry configuration (upstreams.<name>.retry, routes[].retry): every bad
 * field is refused with its path and what to write instead; every
 * documented form validates and resolves to the numbers the data plane
 * uses, defaults named (RETRY_DEFAULTS).
 */
import { describe, expect, it } from 'vitest';
import { RETRY_DEFAULTS } from '../../../common/config/retry.js';
import { lines, minimal, valid } from './helpers.js';

function withUp(extra: Record<string, unknown>, route: Record<string, unknown> = {}): Record<string, unknown> {
  const doc = minimal() as { upstreams: { users: Record<string, unknown> }; routes: Record<string, unknown>[] };
  Object.assign(doc.upstreams.users, extra);
  Object.assign(doc.routes[0]!, route);
  return doc;
}

describe('retry config: refused with the path of the problem', () => {
  // [what, upstream fields, route fields, the exact error lines]
  const cases: [string, Record<string, unknown>, Record<string, unknown>, string[]][] = [
    ['negative attempts', { retry: { attempts: -1 } }, {}, ['upstreams.users.retry.attempts: must be an integer from 0 to 10 (got -1)']],
    ['too many attempts', { retry: { attempts: 11 } }, {}, ['upstreams.users.retry.attempts: must be an integer from 0 to 10 (got 11)']],
    ['unknown condition', { retry: { on: ['connect_failure', 'gateway_error'] } }, {}, ['upstreams.users.retry.on[1]: must be connect_failure, reset, timeout, a status from "500" to "599", or "5xx"']],
    ['a 4xx status', { retry: { on: ['429'] } }, {}, ['upstreams.users.retry.on[0]: must be connect_failure, reset, timeout, a status from "500" to "599", or "5xx"']],
    ['a 4xx status unquoted', { retry: { on: [404] } }, {}, ['upstreams.users.retry.on[0]: must be an integer from 500 to 599 (got 404)']],
    ['no condition', { retry: { on: [] } }, {}, ['upstreams.users.retry.on: must have at least one item']],
    ['a condition twice', { retry: { on: ['reset', 'reset'] } }, {}, ['upstreams.users.retry.on: has the same item twice (items 0 and 1)']],
    ['negative backoff', { retry: { backoffMs: -5 } }, {}, ['upstreams.users.retry.backoffMs: must be an integer from 0 to 60000 (got -5)']],
    ['backoff not a duration', { retry: { backoffMs: 'soon' } }, {}, ['upstreams.users.retry.backoffMs: must be a number of milliseconds or a duration such as "250ms", "5s", "1m" (got "soon"); durations are a whole number followed by ms, s, m or h']],
    ['maxBackoffMs below backoffMs', { retry: { backoffMs: 100, maxBackoffMs: 50 } }, {}, ['upstreams.users.retry.maxBackoffMs: maxBackoffMs (50) is shorter than backoffMs (100); the wait grows from backoffMs up to maxBackoffMs']],
    ['backoffMs above the default maxBackoffMs', { retry: { backoffMs: '1s' } }, {}, ['upstreams.users.retry.backoffMs: maxBackoffMs (250) is shorter than backoffMs (1000); the wait grows from backoffMs up to maxBackoffMs']],
    ['maxBackoffMs over a minute', { retry: { maxBackoffMs: '2m' } }, {}, ['upstreams.users.retry.maxBackoffMs: must be from 0 ms to 60000 ms (1m) (got "2m" = 120000 ms)']],
    ['negative perTryTimeoutMs', { retry: { perTryTimeoutMs: -1 } }, {}, ['upstreams.users.retry.perTryTimeoutMs: must be an integer from 0 to 86400000 (got -1)']],
    ['perTryTimeoutMs not under totalMs', { retry: { perTryTimeoutMs: '5s' }, timeouts: { totalMs: '5s' } }, {}, ['upstreams.users.retry.perTryTimeoutMs: perTryTimeoutMs (5000) is not shorter than timeouts.totalMs (5000), so no retry could follow a timed-out try; lower it or raise totalMs']],
    ['budgetPercent over 100', { retry: { budgetPercent: 150 } }, {}, ['upstreams.users.retry.budgetPercent: must be an integer from 0 to 100 (got 150)']],
    ['method with a space', { retry: { methods: ['GET', 'P OST'] } }, {}, ['upstreams.users.retry.methods[1]: must be an HTTP method such as GET or POST']],
    ['typo in a retry field', { retry: { attempt: 3 } }, {}, ['upstreams.users.retry: unknown property "attempt" (did you mean "attempts"?)']],
    ['retry: true', { retry: true }, {}, ['upstreams.users.retry: must be a mapping (key: value) (got true)']],
    ['route retry without methods', { retry: {} }, { retry: {} }, ['routes[0].retry: missing required property "methods"']],
    ['route retry with another field', { retry: {} }, { retry: { methods: ['POST'], attempts: 5 } }, ['routes[0].retry: unknown property "attempts" (known: methods)']],
    ['route retry on an upstream without retry', {}, { retry: { methods: ['POST'] } }, ['routes[0].retry: upstream "users" has no retry section, so this route would never retry; add retry to the upstream (or remove it here)']],
  ];
  it.each(cases)('%s', (_what, up, route, want) => {
    expect(lines(withUp(up, route))).toEqual(want);
  });
});

describe('retry warnings', () => {
  it('a perTryTimeoutMs longer than responseMs is warned about (it replaces responseMs per try); shorter is not', async () => {
    const { checkDocument } = await import('../../../common/config/validate.js');
    const warn = (retry: Record<string, unknown>, timeouts: Record<string, unknown> = {}) =>
      checkDocument(withUp({ retry, timeouts })).warnings.map((e) => `${e.path}: ${e.message}`);
    expect(warn({ perTryTimeoutMs: 5000 }, { responseMs: 1000 })).toEqual([
      'upstreams.users.retry.perTryTimeoutMs: perTryTimeoutMs (5000) is longer than timeouts.responseMs (1000): each try waits up to perTryTimeoutMs for the response head, and responseMs is not used; lower perTryTimeoutMs (or 0 to use responseMs per try)',
    ]);
    expect(warn({ perTryTimeoutMs: 500 }, { responseMs: 1000 })).toEqual([]);
    expect(warn({ perTryTimeoutMs: 0 })).toEqual([]);
  });
});

describe('route retry on a traffic split', () => {
  /** Upstreams users (as minimal() has it), v1 and v2; the route splits over v1 and v2. */
  function split(v1: Record<string, unknown>, v2: Record<string, unknown>, route: Record<string, unknown>): Record<string, unknown> {
    const doc = minimal() as { upstreams: Record<string, Record<string, unknown>>; routes: Record<string, unknown>[] };
    const users = doc.upstreams['users']!;
    doc.upstreams['v1'] = { ...users, ...v1 };
    doc.upstreams['v2'] = { ...users, ...v2 };
    const r = doc.routes[0]!;
    delete r['upstream'];
    Object.assign(r, { upstreams: [{ name: 'v1', weight: 90 }, { name: 'v2', weight: 10 }] }, route);
    return doc;
  }

  it('is refused when no upstream of the split retries, with every name', () => {
    expect(lines(split({}, {}, { retry: { methods: ['POST'] } }))).toEqual([
      'routes[0].retry: none of the upstreams "v1", "v2" has a retry section, so this route would never retry; add retry to the upstream (or remove it here)',
    ]);
  });

  it('is accepted when one of them retries, and applies to the route', () => {
    const cfg = valid(split({ retry: {} }, {}, { retry: { methods: ['POST'] } }));
    expect(cfg.routes[0]!.retryMethods).toEqual(['POST']);
  });
});

describe('retry config: every documented form validates', () => {
  it('absent: off; {}: every default', () => {
    expect(valid(minimal()).upstreams['users']!.retry).toBeNull();
    const on = valid(withUp({ retry: {} })).upstreams['users']!.retry;
    expect(on).toEqual({
      attempts: RETRY_DEFAULTS.attempts, on: [...RETRY_DEFAULTS.on], backoffMs: 25, maxBackoffMs: 250, perTryTimeoutMs: 0, budgetPercent: 20,
      methods: ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'],
    });
    expect(valid(minimal()).routes[0]!.retryMethods).toBeNull();
  });

  it('the issue\'s example, durations, unquoted statuses, "5xx" and lowercase methods', () => {
    const cfg = valid(withUp({
      retry: {
        attempts: 3, on: ['connect_failure', 'reset', 'timeout', '502', 503, '5xx'], backoffMs: '10ms', maxBackoffMs: '1s',
        perTryTimeoutMs: '2s', budgetPercent: 0, methods: ['get', 'post'],
      },
    }, { retry: { methods: ['patch', 'POST'] } }));
    expect(cfg.upstreams['users']!.retry).toEqual({
      attempts: 3, on: ['connect_failure', 'reset', 'timeout', '502', '503', '5xx'], backoffMs: 10, maxBackoffMs: 1000,
      perTryTimeoutMs: 2000, budgetPercent: 0, methods: ['GET', 'POST'],
    });
    expect(cfg.routes[0]!.retryMethods).toEqual(['PATCH', 'POST']);
  });

  it('attempts 0 and route methods [] (retries off for that route) are accepted', () => {
    const cfg = valid(withUp({ retry: { attempts: 0 } }, { retry: { methods: [] } }));
    expect(cfg.upstreams['users']!.retry!.attempts).toBe(0);
    expect(cfg.routes[0]!.retryMethods).toEqual([]);
  });
});
