/**
 * Quotas end to end, without Redis: real gateway processes (2 workers), a
 * real upstream, real sockets, the quota file on disk.
 *
 * - `{ by: "header:x-key", quota: 5, period: day }` admits exactly 5 per
 *   key, whichever worker serves; the 6th is 429 with Retry-After = the
 *   seconds until the next local midnight of the quota's time zone, the
 *   IETF headers and the rate_limited body;
 * - a graceful stop (SIGTERM) and a new start with the same config: every
 *   count survived (the 6th is still refused, a key with 3 used has 2 left);
 * - a crash (SIGKILL) loses at most the counting of the last save interval
 *   (QUOTA_SAVE_INTERVAL_MS): what was counted longer ago than that is there
 *   after the restart, what came just before the kill may or may not be;
 * - a changed quota (another number) starts afresh;
 * - a corrupt quota file does not prevent the start: one log line says
 *   what to do, the file is moved aside, quotas start from zero;
 * - the default file, `.turnpike/quotas-<server port>.json` in the working
 *   directory, mode 0600.
 *
 * The quota's day must not end during a test: the time zone is chosen as
 * the one of a few (UTC first) whose midnight is furthest away, at least
 * ten minutes.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QUOTA_SAVE_INTERVAL_MS } from '../../common/config/rate-limit.js';
import { errorBodyWith, Errors } from '../../common/errors.js';
import { baseConfig, startGateway, type Gateway, type StartOptions } from '../helpers/gateway.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

let up: Upstream;
const dirs: string[] = [];

beforeAll(async () => {
  up = await startUpstream();
});

afterAll(async () => {
  await up.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'turnpike-quota-'));
  dirs.push(d);
  return d;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Fixed-offset zones (no DST), so the next midnight is simple arithmetic here. */
const ZONES: [string, number][] = [['UTC', 0], ['Asia/Kolkata', 5.5], ['Asia/Tokyo', 9], ['America/Bogota', -5], ['Pacific/Honolulu', -10]];

/** The next local midnight (Unix ms) of a zone `hours` ahead of UTC. */
function nextMidnight(hours: number, now = Date.now()): number {
  const off = hours * 3_600_000;
  return (Math.floor((now + off) / 86_400_000) + 1) * 86_400_000 - off;
}

/** UTC unless its midnight is less than 10 minutes away; else the zone with the most time left. */
function pickZone(): [string, number] {
  if (nextMidnight(0) - Date.now() > 600_000) return ZONES[0]!;
  return [...ZONES].sort((a, b) => nextMidnight(b[1]) - nextMidnight(a[1]))[0]!;
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  worker: string;
}

/** One request on a connection of its own (the kernel spreads connections over the workers). */
function get(gw: Gateway, path: string, key: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: gw.port, path, agent: false, headers: { 'x-key': key } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => resolve({
        status: res.statusCode!, headers: res.headers, body, worker: String(res.headers['x-request-id'] ?? '').split('-')[1] ?? '',
      }));
    });
    req.on('error', reject);
  });
}

/** `n` requests for `key` at once; the statuses and the workers that answered. */
async function burst(gw: Gateway, key: string, n: number, path = '/q'): Promise<{ ok: number; refused: Answer[]; workers: Set<string> }> {
  const answers = await Promise.all(Array.from({ length: n }, () => get(gw, path, key)));
  const workers = new Set(answers.map((a) => a.worker));
  for (const a of answers) expect([200, 429], a.body).toContain(a.status);
  return { ok: answers.filter((a) => a.status === 200).length, refused: answers.filter((a) => a.status === 429), workers };
}

function quotaConfig(zone: string, over: { quota?: number; quotaFile?: string } = {}): Record<string, unknown> {
  return baseConfig({
    server: { workers: 2 },
    log: { access: { enabled: false } },
    ...(over.quotaFile !== undefined ? { rateLimitTable: { quotaFile: over.quotaFile } } : {}),
    upstreams: { u: { targets: [up.url] } },
    routes: [{ id: 'q', path: '/q', upstream: 'u', rateLimit: [{ by: 'header:x-key', quota: over.quota ?? 5, period: 'day', ...(zone === 'UTC' ? {} : { timeZone: zone }) }] }],
  });
}

/** The gateway's JSON log lines with this message. */
function logLines(gw: Gateway, msg: string | RegExp): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of gw.logs) {
    try {
      const j = JSON.parse(line) as Record<string, unknown>;
      if (typeof j['msg'] === 'string' && (typeof msg === 'string' ? j['msg'] === msg : msg.test(j['msg']))) out.push(j);
    } catch { /* not JSON */ }
  }
  return out;
}

describe('a daily quota per key, two workers, no Redis', () => {
  const [zone, hours] = pickZone();
  const dir = tempDir();
  const file = join(dir, 'quotas.json');
  let gw: Gateway;

  afterAll(async () => {
    await gw?.stop();
  });

  it('admits exactly 5 per key across both workers; the 6th is 429 until the next local midnight, with the IETF headers', async () => {
    gw = await startGateway(quotaConfig(zone, { quotaFile: file }));
    // Keys pushed hard and at once: 24 requests each, on 24 connections.
    const results = await Promise.all(['a', 'b', 'c'].map((k) => burst(gw, k, 24)));
    for (const r of results) expect(r.ok).toBe(5);
    const workers = new Set(results.flatMap((r) => [...r.workers]));
    expect(workers.size, 'both workers served').toBe(2);

    // A fresh key: the headers of admitted requests count down.
    const first = await get(gw, '/q', 'd');
    expect(first.status).toBe(200);
    const toMidnight = (nextMidnight(hours) - Date.now()) / 1000;
    expect(first.headers['ratelimit-policy']).toBe('"q#0";q=5;w=86400');
    const m = /^"q#0";r=4;t=(\d+)$/.exec(String(first.headers['ratelimit']));
    expect(m, String(first.headers['ratelimit'])).not.toBeNull();
    expect(Math.abs(Number(m![1]) - toMidnight)).toBeLessThanOrEqual(2);
    for (let i = 0; i < 4; i++) expect((await get(gw, '/q', 'd')).status).toBe(200);

    const refused = await get(gw, '/q', 'd');
    expect(refused.status).toBe(429);
    const retry = Number(refused.headers['retry-after']);
    expect(Math.abs(retry - (nextMidnight(hours) - Date.now()) / 1000)).toBeLessThanOrEqual(2);
    expect(refused.headers['ratelimit-policy']).toBe('"q#0";q=5;w=86400');
    expect(refused.headers['ratelimit']).toBe(`"q#0";r=0;t=${retry}`);
    const describe = zone === 'UTC' ? '5 requests per day' : `5 requests per day (${zone})`;
    expect(refused.body).toBe(errorBodyWith(Errors.RATE_LIMITED, `Rate limit "q#0" exceeded (${describe}, by header x-key); retry in ${retry} s.`, String(refused.headers['x-request-id'])));
  });

  it('after a graceful stop (SIGTERM) and a new start with the same config, every count is still there', async () => {
    // 3 of 5 used by "e".
    for (let i = 0; i < 3; i++) expect((await get(gw, '/q', 'e')).status).toBe(200);
    expect(await gw.stop('SIGTERM')).toBe(0);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    gw = await startGateway(quotaConfig(zone, { quotaFile: file }));
    expect(logLines(gw, 'quota counts restored')[0]).toMatchObject({ keys: 5 });
    for (const k of ['a', 'b', 'c', 'd']) expect((await burst(gw, k, 6)).ok, k).toBe(0);
    expect((await burst(gw, 'e', 6)).ok).toBe(2);
    expect((await burst(gw, 'f', 8)).ok).toBe(5);
  });

  it(`a crash (SIGKILL) loses at most the counting of the last ${QUOTA_SAVE_INTERVAL_MS} ms`, async () => {
    // "g": 3 counted well before the crash; "h": 2 before, then 2 right before it.
    for (let i = 0; i < 3; i++) expect((await get(gw, '/q', 'g')).status).toBe(200);
    for (let i = 0; i < 2; i++) expect((await get(gw, '/q', 'h')).status).toBe(200);
    await sleep(QUOTA_SAVE_INTERVAL_MS + 500);
    for (let i = 0; i < 2; i++) expect((await get(gw, '/q', 'h')).status).toBe(200);
    gw.proc.kill('SIGKILL');
    await gw.exited;
    gw = await startGateway(quotaConfig(zone, { quotaFile: file }));
    // Saved long before the kill: all there.
    expect((await burst(gw, 'g', 6)).ok).toBe(2);
    for (const k of ['a', 'f']) expect((await burst(gw, k, 3)).ok, k).toBe(0);
    // The last 2 of "h" may be lost (1 or 3 left), never the 2 before them, and never more.
    const h = (await burst(gw, 'h', 6)).ok;
    expect(h === 1 || h === 3, `h: ${h} left`).toBe(true);
  });

  it('a changed quota (another number) starts afresh', async () => {
    await gw.stop();
    gw = await startGateway(quotaConfig(zone, { quotaFile: file, quota: 7 }));
    expect(logLines(gw, 'quota counts restored')[0]).toMatchObject({ keys: 0 });
    expect((await burst(gw, 'a', 10)).ok).toBe(7);
  });
});

describe('the quota file', () => {
  const [zone] = pickZone();

  it('a corrupt file does not prevent the start: one line says what to do, the file is moved aside, quotas start from zero', async () => {
    const dir = tempDir();
    const file = join(dir, 'quotas.json');
    writeFileSync(file, '{"turnpikeQuotas": 1, "quotas": [ {"tag": 12');
    const gw = await startGateway(quotaConfig(zone, { quotaFile: file }));
    try {
      const lines = logLines(gw, /^quota file .* is not a valid quota file/);
      expect(lines).toHaveLength(1);
      expect(String(lines[0]!['msg'])).toMatch(/local quotas start from zero\. It was moved to .*quotas\.json\.corrupt-.*: look at it if counts matter, then delete it$/);
      expect(lines[0]!['level']).toBe('error');
      const aside = readdirSync(dir).filter((n) => n.startsWith('quotas.json.corrupt-'));
      expect(aside).toHaveLength(1);
      expect(readFileSync(join(dir, aside[0]!), 'utf8')).toBe('{"turnpikeQuotas": 1, "quotas": [ {"tag": 12');
      expect((await burst(gw, 'k', 8)).ok).toBe(5);
      // And it saves a good file from then on.
      await sleep(QUOTA_SAVE_INTERVAL_MS + 500);
      expect(JSON.parse(readFileSync(file, 'utf8')).quotas[0].keys[0][2]).toBe(5);
    } finally {
      await gw.stop();
    }
  });

  it('by default: .turnpike/quotas-<server port>.json in the working directory, mode 0600; a warning when the port was picked at random', async () => {
    const cwd = tempDir();
    const opts: StartOptions = { cwd };
    const gw = await startGateway(quotaConfig(zone), opts);
    let port = 0;
    try {
      port = gw.port;
      expect(logLines(gw, /named by a port picked at random \(server\.port 0\)/)).toHaveLength(1);
      expect((await burst(gw, 'k', 3)).ok).toBe(3);
      await sleep(QUOTA_SAVE_INTERVAL_MS + 500);
      const file = join(cwd, '.turnpike', `quotas-${port}.json`);
      expect(existsSync(file)).toBe(true);
      expect(statSync(file).mode & 0o777).toBe(0o600);
    } finally {
      await gw.stop();
    }
    // Started again on that port (as a config with a fixed port would): the counts are there.
    const again = await startGateway({ ...quotaConfig(zone), server: { host: '127.0.0.1', port, workers: 2 } }, opts);
    try {
      expect(logLines(again, /named by a port picked at random/)).toHaveLength(0);
      expect((await burst(again, 'k', 5)).ok).toBe(2);
    } finally {
      await again.stop();
    }
  });
});
