/** Durations: every `*Ms` setting takes milliseconds or "250ms", "5s", "1m", "1h", with the same bounds. */
import { describe, expect, it } from 'vitest';
import { DURATION_PATTERN, formatDuration, parseDuration } from '../../../common/config/duration.js';
import { loadConfigDocument, validateConfig } from '../../../common/config/load.js';
import { DURATION_NODES, configSchema } from '../../../common/config/schema.js';
import { lines, minimal, valid } from './helpers.js';

/** Every property named `*Ms` anywhere in the schema, with its path and node. */
function msProperties(node: unknown, at: string, out: Array<{ at: string; node: Record<string, unknown> }> = []) {
  if (Array.isArray(node)) {
    node.forEach((n, i) => msProperties(n, `${at}[${i}]`, out));
    return out;
  }
  if (typeof node !== 'object' || node === null) return out;
  const n = node as Record<string, unknown>;
  const props = n['properties'] as Record<string, Record<string, unknown>> | undefined;
  if (props) for (const [k, v] of Object.entries(props)) if (/Ms$/.test(k)) out.push({ at: `${at}.${k}`, node: v });
  for (const [k, v] of Object.entries(n)) msProperties(v, `${at}.${k}`, out);
  return out;
}

function withTimeouts(timeouts: Record<string, unknown>, pool: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    upstreams: { u: { targets: ['http://127.0.0.1:9001'], timeouts, pool } },
    routes: [{ id: 'r', path: '/', upstream: 'u' }],
  };
}

describe('parseDuration', () => {
  it('takes a whole number and one unit: ms, s, m, h', () => {
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('5s')).toBe(5_000);
    expect(parseDuration('1m')).toBe(60_000);
    expect(parseDuration('1h')).toBe(3_600_000);
    expect(parseDuration('0s')).toBe(0);
    expect(parseDuration('007s')).toBe(7_000);
  });

  it('refuses anything else', () => {
    for (const bad of ['5 sec', '5 s', ' 5s', '5s ', '1.5s', '-1s', '+1s', '5', '5S', '5sec', '1h30m', 'ms', '', '1d', '5Ms', '1e3ms']) {
      expect(parseDuration(bad), bad).toBeNull();
    }
  });

  it('formats milliseconds as the shortest exact duration', () => {
    expect(formatDuration(86_400_000)).toBe('24h');
    expect(formatDuration(90_000)).toBe('90s');
    expect(formatDuration(120_000)).toBe('2m');
    expect(formatDuration(1_500)).toBe('1500ms');
    expect(formatDuration(1)).toBe('1ms');
    for (const ms of [1, 999, 1_000, 60_000, 3_600_000, 86_400_000, 1_234_567]) expect(parseDuration(formatDuration(ms))).toBe(ms);
  });
});

describe('the schema', () => {
  it('lets every *Ms setting take a duration string, keeping its integer bounds', () => {
    const found = msProperties(configSchema, '#');
    expect(found.length).toBeGreaterThanOrEqual(6); // drainTimeoutMs, idleTimeoutMs, connectMs, responseMs, idleMs, totalMs (and newer ones)
    for (const { at, node } of found) {
      expect(node['type'], at).toEqual(['integer', 'string']);
      expect(node['pattern'], at).toBe(DURATION_PATTERN);
      expect(typeof node['minimum'], at).toBe('number');
      expect(typeof node['maximum'], at).toBe('number');
      expect(String(node['description']), at).toContain('"5s"');
      expect(DURATION_NODES.has(node), at).toBe(true);
    }
  });
});

describe('durations in a config', () => {
  it('are converted to milliseconds everywhere a ...Ms number is accepted', () => {
    const c = valid({
      ...withTimeouts({ connectMs: '250ms', responseMs: '5s', idleMs: '1m', totalMs: '1h' }, { idleTimeoutMs: '90s' }),
      server: { drainTimeoutMs: '10s' },
    });
    expect(c.upstreams['u']!.timeouts).toEqual({ connectMs: 250, responseMs: 5_000, idleMs: 60_000, totalMs: 3_600_000 });
    expect(c.upstreams['u']!.pool.idleTimeoutMs).toBe(90_000);
    expect(c.server.drainTimeoutMs).toBe(10_000);
  });

  it('numbers still work, and mix with strings', () => {
    const c = valid(withTimeouts({ connectMs: 1500, responseMs: '2s' }));
    expect(c.upstreams['u']!.timeouts.connectMs).toBe(1500);
    expect(c.upstreams['u']!.timeouts.responseMs).toBe(2000);
  });

  it('does not modify the document it was given (PUT /admin/config persists it as written)', () => {
    const doc = withTimeouts({ connectMs: '5s' });
    const before = JSON.stringify(doc);
    valid(doc);
    expect(JSON.stringify(doc)).toBe(before);
  });

  it('refuses a malformed duration with the accepted forms', () => {
    expect(lines(withTimeouts({ connectMs: '5 sec' }))).toEqual([
      'upstreams.u.timeouts.connectMs: must be a number of milliseconds or a duration such as "250ms", "5s", "1m" (got "5 sec"); durations are a whole number followed by ms, s, m or h',
    ]);
    expect(lines({ ...minimal(), server: { drainTimeoutMs: '1.5s' } })).toEqual([
      'server.drainTimeoutMs: must be a number of milliseconds or a duration such as "250ms", "5s", "1m" (got "1.5s"); durations are a whole number followed by ms, s, m or h',
    ]);
    expect(lines(withTimeouts({ idleMs: 2.5 }))).toEqual([
      'upstreams.u.timeouts.idleMs: must be a whole number of milliseconds or a duration such as "250ms", "5s", "1m" (got 2.5); durations are a whole number followed by ms, s, m or h',
    ]);
    expect(lines(withTimeouts({ idleMs: true }))[0]).toMatch(/^upstreams\.u\.timeouts\.idleMs: must be a number of milliseconds or a duration .*\(got true\)/);
  });

  it('keeps the same bounds after conversion, naming both units', () => {
    expect(lines(withTimeouts({ connectMs: '48h' }))).toEqual([
      'upstreams.u.timeouts.connectMs: must be from 1 ms to 86400000 ms (24h) (got "48h" = 172800000 ms)',
    ]);
    expect(lines(withTimeouts({ connectMs: '0s' }))).toEqual([
      'upstreams.u.timeouts.connectMs: must be from 1 ms to 86400000 ms (24h) (got "0s" = 0 ms)',
    ]);
    expect(lines({ ...minimal(), server: { drainTimeoutMs: '2h' } })).toEqual([
      'server.drainTimeoutMs: must be from 0 ms to 3600000 ms (1h) (got "2h" = 7200000 ms)',
    ]);
    expect(lines(withTimeouts({ connectMs: '99999999999999999999h' }))[0]).toMatch(/^upstreams\.u\.timeouts\.connectMs: must be from 1 ms to 86400000 ms \(24h\) \(got "99999999999999999999h"/);
    // The limits themselves are accepted.
    expect(valid(withTimeouts({ connectMs: '24h', totalMs: '0ms' })).upstreams['u']!.timeouts).toMatchObject({ connectMs: 86_400_000, totalMs: 0 });
    // A plain number out of range keeps its old message.
    expect(lines(withTimeouts({ connectMs: 0 }))).toEqual(['upstreams.u.timeouts.connectMs: must be an integer from 1 to 86400000 (got 0)']);
  });

  it('reach the config through the environment and --set', () => {
    const r = loadConfigDocument(withTimeouts({}), {
      env: { TURNPIKE_UPSTREAMS__U__TIMEOUTS__CONNECTMS: '2s', TURNPIKE_SERVER__DRAINTIMEOUTMS: '1m' },
      sets: ['upstreams.u.timeouts.responseMs=250ms', 'upstreams.u.pool.idleTimeoutMs=5000'],
    });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.config.upstreams['u']!.timeouts.connectMs).toBe(2_000);
    expect(r.config.upstreams['u']!.timeouts.responseMs).toBe(250);
    expect(r.config.upstreams['u']!.pool.idleTimeoutMs).toBe(5_000);
    expect(r.config.server.drainTimeoutMs).toBe(60_000);
    const bad = loadConfigDocument(withTimeouts({}), { env: {}, sets: ['upstreams.u.timeouts.connectMs=5 sec'] });
    expect(bad.ok).toBe(false);
    if (bad.ok) return;
    expect(bad.errors.map((e) => `${e.path}: ${e.message}`)).toEqual([
      'upstreams.u.timeouts.connectMs: must be a number of milliseconds or a duration such as "250ms", "5s", "1m" (got "5 sec"); durations are a whole number followed by ms, s, m or h',
    ]);
  });

  it('a duration where a duration does not belong is still a type error', () => {
    const r = validateConfig({ ...minimal(), server: { port: '5s' } });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.errors[0]!.message).toMatch(/must be an integer/);
  });
});
