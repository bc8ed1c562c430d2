/**
 * Property: a config that validates is one every worker accepts.
 *
 * The bug this guards against: `turnpike validate` accepted a config (two
 * routes with the same path) that then crashed every worker on reload.
 * Validation now runs the worker's own compile (workers/config-check.ts);
 * these properties check that on generated documents (config-gen.ts) that
 * stress the router and the config rules.
 *
 * A (in-process, many cases): the loader never throws; it returns either
 *   well-formed errors (a message, and a path that exists in the document
 *   or '' for file-level problems) or a config that compiles into a
 *   Dataplane (as given, and as a worker gets it: structured-cloned, with
 *   the previous Dataplane) whose router answers, for every route, a request
 *   built from that route's own pattern, host, method and predicates.
 * B (one real gateway, 2 workers): every generated document is PUT to the
 *   admin API; a document that validates in-process is applied (200, every
 *   worker on the new version, the port still answering each generated
 *   route from a real upstream or with the gateway's JSON errors, no worker
 *   failure in the logs); one that does not is refused with 422 and the
 *   previous config keeps serving.
 *
 * Environment:
 *   CONFIG_PROPERTY_CASES=20000   cases of property A (default 2000)
 *   CONFIG_PROPERTY_GATEWAY_CASES=600  documents of property B (default 60)
 *   CONFIG_PROPERTY_SEED=1234     base seed (default fixed; "random" for a new one)
 *   CONFIG_PROPERTY_REPLAY=<case seed>  run one case of A (the seed a failure prints)
 *   CONFIG_PROPERTY_SHRINK_MS=20000  time to shrink each failing document (default: a few seconds in all)
 *   CONFIG_PROPERTY_VERBOSE=1     print the most common first problems of invalid documents
 */
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent, request } from 'undici';
import { loadConfigDocument } from '../../common/config/load.js';
import type { GatewayConfig } from '../../common/config/types.js';
import { WORKER_CHECKS } from '../../workers/config-check.js';
import { Dataplane, type RouteContext } from '../../workers/dataplane.js';
import { MATCH_FOUND, MATCH_METHOD_NOT_ALLOWED } from '../../workers/router/types.js';
import { ReferenceRouter } from '../unit/router/reference-router.js';
import { CLI, baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { parseTargetUrl } from '../../common/config/validate.js';
import { Rng, caseSeed, exampleRequest, generateDocument, shrinkDocument, shrinkDocumentAsync, type ExampleRequest } from './config-gen.js';

const CASES = Number(process.env.CONFIG_PROPERTY_CASES ?? 2000);
const GATEWAY_CASES = Number(process.env.CONFIG_PROPERTY_GATEWAY_CASES ?? 60);
const SEED_ENV = process.env.CONFIG_PROPERTY_SEED;
const BASE_SEED = SEED_ENV === 'random' ? (Math.random() * 2 ** 32) >>> 0 : SEED_ENV !== undefined ? Number(SEED_ENV) >>> 0 : 0x7e57c0de;
const REPLAY = process.env.CONFIG_PROPERTY_REPLAY;

// ---------------------------------------------------------------------------
// Error paths: `routes[3].match.headers["bad name"]` -> segments -> exists in the document?

function parseErrorPath(path: string): Array<string | number> | null {
  const out: Array<string | number> = [];
  let i = 0;
  const re = /^(?:\.?([A-Za-z_$][\w$-]*)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\])/;
  while (i < path.length) {
    const m = re.exec(path.slice(i));
    if (m === null || (m[1] !== undefined && i === 0 && m[0].startsWith('.'))) return null;
    if (m[1] !== undefined) out.push(m[1]);
    else if (m[2] !== undefined) out.push(Number(m[2]));
    else out.push(JSON.parse(m[3]!) as string);
    i += m[0].length;
  }
  return out;
}

function pathExists(doc: unknown, path: string): boolean {
  const segs = parseErrorPath(path);
  if (segs === null) return false;
  let cur: unknown = doc;
  for (const s of segs) {
    if (typeof s === 'number') {
      if (!Array.isArray(cur) || s >= cur.length) return false;
      cur = cur[s];
    } else {
      if (cur === null || typeof cur !== 'object' || Array.isArray(cur) || !Object.prototype.hasOwnProperty.call(cur, s)) return false;
      cur = (cur as Record<string, unknown>)[s];
    }
  }
  return true;
}

// ---------------------------------------------------------------------------
// Property A: one document, in-process

interface Failure {
  /** Stable kind, kept while shrinking. */
  kind: string;
  detail: string;
}

interface CaseResult {
  valid: boolean;
  failure: Failure | null;
  errorCount: number;
  firstError: string;
  routes: number;
}

const EMPTY_MAP: ReadonlyMap<string, number> = new Map();

function describeRequest(r: ExampleRequest): string {
  return `${r.method} ${r.path}${r.query === '' ? '' : '?' + r.query} host=${JSON.stringify(r.host)} headers=${JSON.stringify(r.headers)}`;
}

/**
 * Checks one document. `previous` is the Dataplane of an earlier valid
 * document, as a worker has one when a reload arrives.
 */
function checkDocument(doc: unknown, seed: number, previous: { dp: Dataplane | null }): CaseResult {
  try {
    return checkDocumentUnguarded(doc, seed, previous);
  } catch (err) {
    // Not the gateway's fault as far as we know: the request builder or the reference router.
    const failure = { kind: 'the check itself threw', detail: err instanceof Error ? err.stack ?? err.message : String(err) };
    return { valid: false, failure, errorCount: 0, firstError: '', routes: 0 };
  }
}

function checkDocumentUnguarded(doc: unknown, seed: number, previous: { dp: Dataplane | null }): CaseResult {
  const res: CaseResult = { valid: false, failure: null, errorCount: 0, firstError: '', routes: 0 };
  const before = JSON.stringify(doc);
  const fail = (kind: string, detail: string): CaseResult => { res.failure = { kind, detail }; return res; };
  let loaded: ReturnType<typeof loadConfigDocument>;
  try {
    loaded = loadConfigDocument(doc, { env: {}, ...WORKER_CHECKS });
  } catch (err) {
    return fail('loader threw', err instanceof Error ? err.stack ?? err.message : String(err));
  }
  if (JSON.stringify(doc) !== before) return fail('loader modified the document', 'the document passed in changed (load.ts: callers\' objects are never modified)');
  if (!loaded.ok) {
    res.errorCount = loaded.errors.length;
    if (!Array.isArray(loaded.errors) || loaded.errors.length === 0) return fail('invalid without errors', JSON.stringify(loaded));
    for (const e of loaded.errors) {
      if (typeof e.message !== 'string' || e.message.trim() === '') return fail('error without a message', JSON.stringify(e));
      if (typeof e.path !== 'string' || (e.path !== '' && !pathExists(doc, e.path))) {
        return fail('error path not in the document', `${JSON.stringify(e.path)}: ${e.message}`);
      }
    }
    const e0 = loaded.errors[0]!;
    res.firstError = `${e0.path}: ${e0.message}`;
    return res;
  }
  res.valid = true;
  const config = loaded.config;
  res.routes = config.routes.length;
  // As validation compiles it...
  let plain: Dataplane;
  try {
    plain = new Dataplane(config, new Map(), null);
  } catch (err) {
    return fail('Dataplane threw on a valid config', err instanceof Error ? err.message : String(err));
  }
  plain.retire(null);
  // ...and as a worker gets it: a structured clone (postMessage), metrics slots, the previous Dataplane.
  let dp: Dataplane;
  try {
    const slots = new Map(config.routes.map((r, i) => [r.id, i + 1] as const));
    dp = new Dataplane(structuredClone(config) as GatewayConfig, slots, previous.dp);
  } catch (err) {
    return fail('Dataplane threw on a valid config as a worker gets it', err instanceof Error ? err.message : String(err));
  }
  previous.dp?.retire(dp);
  previous.dp = dp;
  // The reference router (test/unit/router) is a plain linear scan; it does
  // not parse every regex the real one does (`[)]`): then it is not asked.
  let ref: ReferenceRouter<number> | null = null;
  try {
    ref = new ReferenceRouter(config.routes.map((r, i) => ({
      id: r.id, host: r.host, path: r.path, methods: r.methods, priority: r.priority, match: r.match, data: i,
    })));
  } catch { /* no reference for this table */ }
  const rng = new Rng(seed ^ 0x5bd1e995);
  for (let i = 0; i < config.routes.length; i++) {
    const route = config.routes[i]!;
    const req = exampleRequest(route, rng);
    const at = `routes[${i}] (id ${JSON.stringify(route.id)}, path ${JSON.stringify(route.path)})`;
    if (req.path === null) return fail('no request path for a valid pattern', at);
    let m: ReturnType<typeof dp.router.find>;
    try {
      m = dp.router.find(req.method, req.host, req.path, req.headers, req.query);
    } catch (err) {
      return fail('router.find threw', `${at}: ${describeRequest(req)}: ${err instanceof Error ? err.stack : String(err)}`);
    }
    const got = m === null ? null : { kind: m.kind, data: m.data as RouteContext | null, names: [...m.paramNames], params: [...m.params], allow: m.allow };
    if (!req.exact) continue;
    if (got === null || got.kind !== MATCH_FOUND) {
      return fail('a route does not answer its own request', `${at}: ${describeRequest(req)} -> ${got === null ? '404' : `405 (allow ${got.allow})`}`);
    }
    let want: ReturnType<ReferenceRouter<number>['find']> | undefined;
    try {
      want = ref === null ? undefined : ref.find(req.method, req.host, req.path, req.headers, req.query);
    } catch { want = undefined; }
    const winner = dp.routes.indexOf(got.data!);
    if (want === undefined) { /* no reference */ } else if (want === null || want.kind !== MATCH_FOUND || want.data !== winner || JSON.stringify(want.params) !== JSON.stringify(got.params)) {
      return fail('router disagrees with the reference router', `${at}: ${describeRequest(req)} -> routes[${winner}] ${JSON.stringify(got.params)}, reference: ${want === null ? '404' : want.kind === MATCH_METHOD_NOT_ALLOWED ? '405' : `routes[${String(want.data)}] ${JSON.stringify(want.params)}`}`);
    }
    const ctx = got.data!;
    if (ctx.rewrite !== null) {
      let out: unknown;
      try {
        out = ctx.rewrite(req.path, got.names, got.params);
      } catch (err) {
        return fail('rewrite threw', `${at}: ${describeRequest(req)}: ${String(err)}`);
      }
      if (typeof out !== 'string' || !out.startsWith('/')) return fail('rewrite gave a path not starting with "/"', `${at}: ${JSON.stringify(out)}`);
    }
    // The validator promises that a template names only the route's params.
    const template = config.routes[winner]!.rewrite.template;
    if (template !== null) {
      for (const [, name] of template.matchAll(/\{([^{}]*)\}/g)) {
        if (!got.names.includes(name!)) {
          return fail('template placeholder is not a param of the matched route', `routes[${winner}] path ${JSON.stringify(config.routes[winner]!.path)} template ${JSON.stringify(template)}: {${name}} not in ${JSON.stringify(got.names)}`);
        }
      }
    }
  }
  return res;
}

/** Shrinks a failing document to a small one failing the same way, for the report. */
function minimize(doc: unknown, seed: number, kind: string, budgetMs: number): { doc: unknown; failure: Failure | null } {
  const fails = (d: unknown): boolean => checkDocument(structuredClone(d), seed, { dp: null }).failure?.kind === kind;
  const small = shrinkDocument(doc, fails, budgetMs);
  return { doc: small, failure: checkDocument(structuredClone(small), seed, { dp: null }).failure };
}

function report(title: string, seed: number, failure: Failure, doc: unknown, budgetMs: number): string {
  const min = minimize(doc, seed, failure.kind, budgetMs);
  const file = join(mkdtempSync(join(tmpdir(), 'turnpike-property-')), 'failing-document.json');
  writeFileSync(file, JSON.stringify(doc, null, 2));
  return [
    `${title}: ${failure.kind}`,
    `  case seed ${seed} (replay: CONFIG_PROPERTY_REPLAY=${seed}; base seed ${BASE_SEED})`,
    `  ${failure.detail}`,
    `  minimal document (${min.failure?.detail ?? '?'}):`,
    JSON.stringify(min.doc, null, 2).replace(/^/gm, '    '),
    `  full document: ${file}`,
  ].join('\n');
}

/** Which `it` reports a failure kind. */
const GROUPS = {
  loader: ['loader threw', 'loader modified the document', 'the check itself threw'],
  errors: ['invalid without errors', 'error without a message', 'error path not in the document'],
  compile: ['Dataplane threw on a valid config', 'Dataplane threw on a valid config as a worker gets it'],
  routing: [
    'no request path for a valid pattern', 'router.find threw', 'a route does not answer its own request',
    'router disagrees with the reference router', 'rewrite threw', 'rewrite gave a path not starting with "/"',
    'template placeholder is not a param of the matched route',
  ],
} as const;

describe('property A: every config the loader accepts compiles and routes (in-process)', () => {
  /** First failure of each kind: its seed and document. */
  const failures = new Map<string, { seed: number; failure: Failure; doc: unknown; count: number }>();
  const stats = { documents: 0, valid: 0, routes: 0, ms: 0 };

  beforeAll(() => {
    const seeds = REPLAY !== undefined ? [Number(REPLAY) >>> 0] : Array.from({ length: CASES }, (_, i) => caseSeed(BASE_SEED, i));
    const previous: { dp: Dataplane | null } = { dp: null };
    const kinds = new Map<string, number>();
    const t0 = performance.now();
    for (const seed of seeds) {
      const doc = generateDocument(new Rng(seed));
      const pristine = structuredClone(doc);
      const r = checkDocument(doc, seed, previous);
      stats.documents++;
      if (r.failure !== null) {
        const f = failures.get(r.failure.kind);
        if (f === undefined) failures.set(r.failure.kind, { seed, failure: r.failure, doc: pristine, count: 1 });
        else f.count++;
      }
      if (r.valid) {
        stats.valid++;
        stats.routes += r.routes;
      } else {
        const k = r.firstError.replace(/^[^ ]*: /, '').replace(/"(?:[^"\\]|\\.)*"/g, '"…"').replace(/\(.*$/, '').slice(0, 60);
        kinds.set(k, (kinds.get(k) ?? 0) + 1);
      }
    }
    previous.dp?.retire(null);
    stats.ms = performance.now() - t0;
    console.log(`property A: ${stats.documents} documents (base seed ${BASE_SEED}), ${stats.valid} valid (${Math.round((100 * stats.valid) / stats.documents)}%, ${stats.routes} routes in them), ${Math.round(stats.ms)} ms`);
    if (process.env.CONFIG_PROPERTY_VERBOSE) console.log([...kinds].sort((a, b) => b[1] - a[1]).slice(0, 60).map(([k, n]) => `${n}\t${k}`).join('\n'));
  }, 600_000);

  function expectNone(group: readonly string[]): void {
    const found = [...failures].filter(([kind]) => group.includes(kind));
    if (found.length === 0) return;
    // Shrinking shares a few seconds (the file's run time stays bounded when it fails).
    const budget = Number(process.env.CONFIG_PROPERTY_SHRINK_MS ?? Math.max(500, Math.floor(6_000 / found.length)));
    expect.fail(found.map(([, f]) => report(`property A failed (${f.count} of ${stats.documents} documents)`, f.seed, f.failure, f.doc, budget)).join('\n\n'));
  }

  it('the loader never throws', () => expectNone(GROUPS.loader), 120_000);
  it('every problem has a message and a path that exists in the document (or "")', () => expectNone(GROUPS.errors), 120_000);
  it('every valid config compiles as a worker compiles it', () => expectNone(GROUPS.compile), 120_000);
  it('every route of a valid config answers a request built from its own pattern', () => expectNone(GROUPS.routing), 120_000);

  it('the generator makes both valid and invalid documents', () => {
    const all = new Set<string>(Object.values(GROUPS).flat());
    expect([...failures.keys()].filter((k) => !all.has(k))).toEqual([]);
    if (REPLAY !== undefined || stats.documents < 200) return;
    expect(stats.valid / stats.documents).toBeGreaterThan(0.3);
    expect(stats.valid / stats.documents).toBeLessThan(0.7);
  });
});

// ---------------------------------------------------------------------------
// Property B: one real gateway, every document PUT to its admin API

/**
 * Log lines that must never appear: a worker (or the admin thread) failed,
 * exited or ignored a config, a request hit an internal error. Every
 * `error` line counts but the expected "config refused" of a 422.
 */
function fatalLogLine(line: string): boolean {
  let j: { level?: unknown; msg?: unknown; error?: unknown };
  try {
    j = JSON.parse(line) as typeof j;
  } catch {
    // Not a log record: a crash's stack trace or a native abort on stderr.
    return /error|abort|fatal|segmentation/i.test(line);
  }
  const msg = String(j.msg ?? '');
  // The error log line of an accepted 504 (a generated connectMs of a few ms, see alt504) is the gateway working.
  if (j.level === 'error') return !msg.startsWith('config refused') && j.error !== 'upstream_connect_timeout';
  return /worker|did not confirm|internal error/.test(msg) && j.level === 'warn';
}
/** Methods this uWS build passes through (extension and lowercase methods get the connection closed, see README). */
const WIRE_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'];
/** Header values a client can send unchanged (HTTP trims surrounding whitespace). */
const SENDABLE_VALUE = /^(?:[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?$/;
/**
 * Header names this uWS build lets through: any other token character
 * (`_`, `.`, `!`...) makes it stall the request until its idle timeout,
 * without ever calling the gateway (found by this test; see the report).
 */
const SENDABLE_NAME = /^[A-Za-z0-9-]+$/;
const UPSTREAM_MARKER = 'property-upstream';

interface Probe {
  method: string;
  host: string;
  path: string;
  query: string;
  headers: string[];
  /** What the gateway must answer, from the in-process router and Dataplane. */
  expect: { status: number; code?: string; allow?: string; upstreamUrl?: string; alt431?: boolean; alt429?: boolean; alt504?: boolean };
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

describe('property B: a real gateway (2 workers) applies every document that validates, refuses the rest', () => {
  const token = `property-${process.pid}-${Date.now().toString(36)}`;
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-property-b-'));
  const auditLog = join(dir, 'audit.log');
  let up: StrictUpstream;
  let gw: Gateway;
  let agent: Agent;
  let admin = '';
  const stats = { documents: 0, applied: 0, refused: 0, probes: 0, proxied: 0, ms: 0 };
  /** Config version now serving, and a few probes of it (re-sent after every refused document). */
  const state = { version: 0, keep: [] as Probe[] };

  beforeAll(async () => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run "npm run build" first (npm test does)`);
    up = await startStrictUpstream();
    agent = new Agent({ connections: 4, keepAliveTimeout: 5_000 });
    const base = baseConfig({
      server: { workers: 2 },
      admin: { enabled: true, port: 0, auditLog },
      upstreams: { base: { targets: [up.url] } },
      routes: [{ id: 'canary', path: '/__canary/:x', upstream: 'base' }],
    });
    gw = await startGateway(base, { env: { TURNPIKE_ADMIN_TOKEN: token, TURNPIKE_TEST_HOOKS: '1' } });
    admin = `http://127.0.0.1:${gw.adminPort}`;
    const loaded = loadConfigDocument(base, { env: process.env, ...WORKER_CHECKS });
    if (!loaded.ok) throw new Error(`base config refused: ${JSON.stringify(loaded.errors)}`);
    state.version = (await status()).config.version;
    state.keep = probesFor(loaded.config, new Rng(1), 1);
  }, 60_000);

  afterAll(async () => {
    await gw?.stop();
    await agent?.close();
    await up?.close();
  });

  async function call(method: string, url: string, body?: string): Promise<{ status: number; text: string }> {
    const r = await request(url, {
      method: method as 'GET', dispatcher: agent, headersTimeout: 15_000, bodyTimeout: 15_000,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body } : {}),
    });
    return { status: r.statusCode, text: await r.body.text() };
  }

  async function status(): Promise<{ config: { version: number }; workers: { state: string }[]; restarts: number }> {
    const s = await call('GET', `${admin}/admin/status`);
    if (s.status !== 200) throw new Error(`GET /admin/status: ${s.status} ${s.text}`);
    return JSON.parse(s.text) as { config: { version: number }; workers: { state: string }[]; restarts: number };
  }

  /** Pins what cannot change on reload (listener, threads, admin listener) to the running gateway's values. */
  function pin(doc: unknown): unknown {
    if (!isPlainObject(doc)) return doc;
    const s = doc['server'];
    if (s === undefined || isPlainObject(s)) {
      const server: Record<string, unknown> = { ...s, host: '127.0.0.1', port: 0, workers: 2 };
      delete server['backend'];
      doc['server'] = server;
    }
    // Never a socket beyond 127.0.0.1: a usable target elsewhere (a shrunk
    // URL can become one) is pointed at the live upstream.
    const ups = doc['upstreams'];
    if (isPlainObject(ups)) {
      for (const u of Object.values(ups)) {
        if (!isPlainObject(u) || !Array.isArray(u['targets'])) continue;
        u['targets'] = u['targets'].map((t: unknown) => {
          const url = typeof t === 'string' ? t : isPlainObject(t) ? t['url'] : undefined;
          if (typeof url !== 'string') return t;
          const parsed = parseTargetUrl(url);
          if (typeof parsed === 'string' || parsed.host === '127.0.0.1') return t;
          return typeof t === 'string' ? up.url : { ...(t as Record<string, unknown>), url: up.url };
        });
      }
    }
    const a = doc['admin'];
    if (a === undefined || isPlainObject(a)) {
      const adm: Record<string, unknown> = { ...a, enabled: true, host: '127.0.0.1', port: 0, auditLog };
      delete adm['tokensFile'];
      doc['admin'] = adm;
    }
    return doc;
  }

  /** Requests for some routes of `config` (and one path no route has), with the answer the in-process Dataplane gives. */
  function probesFor(config: GatewayConfig, rng: Rng, count: number): Probe[] {
    const dp = new Dataplane(config, EMPTY_MAP, null);
    const out: Probe[] = [];
    const picks = rng.sample(config.routes.map((_r, i) => i), count);
    const reqs: ExampleRequest[] = picks.map((i) => exampleRequest(config.routes[i]!, rng, WIRE_METHODS));
    reqs.push({ method: 'GET', host: 'nowhere.test', path: `/__property_none_${rng.int(0, 1e6)}`, headers: [], query: '', exact: false });
    for (const req of reqs) {
      if (req.path === null) continue;
      const host = req.host === '' ? 'any.test' : req.host;
      const headers: string[] = [];
      for (let i = 0; i < req.headers.length; i += 2) {
        if (SENDABLE_NAME.test(req.headers[i]!) && SENDABLE_VALUE.test(req.headers[i + 1]!)) headers.push(req.headers[i]!, req.headers[i + 1]!);
      }
      const method = WIRE_METHODS.includes(req.method) ? req.method : 'GET';
      // What uWS hands the router: every header line (host first), names lowercase.
      const m = dp.router.find(method, host, req.path, ['host', host, ...headers], req.query);
      const lim = config.server.limits;
      const alt431 = lim.maxHeaderCount < headers.length / 2 + 4 || lim.maxHeaderBytes < headers.join('').length + 200;
      let expect: Probe['expect'];
      if (req.path.length + req.query.length + 1 > lim.maxUrlBytes) expect = { status: 414, code: 'url_too_long', alt431 };
      else if (m === null) expect = { status: 404, code: 'route_not_found', alt431 };
      else if (m.kind !== MATCH_FOUND) expect = { status: 405, code: 'method_not_allowed', allow: m.allow, alt431 };
      else {
        const ctx = m.data!;
        const forwarded = ctx.rewrite !== null ? ctx.rewrite(req.path, m.paramNames, m.params) : req.path;
        // A route with rate limits may answer 429 rate_limited instead (probes share buckets).
        // A generated timeouts.connectMs of a few ms may run out before a loopback connect completes on a busy
        // machine: the gateway's 504 upstream_connect_timeout is then the right answer, not a routing difference.
        const alt504 = ctx.upstream.config.timeouts.connectMs < 50 || (ctx.split !== null && Object.values(config.upstreams).some((u) => u.timeouts.connectMs < 50));
        expect = { status: 200, upstreamUrl: req.query === '' ? forwarded : `${forwarded}?${req.query}`, alt431, alt429: ctx.policies !== null, alt504 };
      }
      out.push({ method, host, path: req.path, query: req.query, headers, expect });
    }
    dp.retire(null);
    return out;
  }

  /** Sends one probe; the problem, or null when the answer is the expected one. */
  async function runProbe(p: Probe): Promise<Failure | null> {
    const target = `${gw.url}${p.path}${p.query === '' ? '' : `?${p.query}`}`;
    const what = `${p.method} ${p.path}${p.query === '' ? '' : `?${p.query}`} (Host ${p.host}, headers ${JSON.stringify(p.headers)})`;
    const e = p.expect;
    const wanted = e.upstreamUrl !== undefined ? `200 from the upstream, url ${e.upstreamUrl}` : `${e.status} ${e.code}`;
    const seen = up.seen.length;
    let r: { statusCode: number; headers: Record<string, unknown>; body: { text(): Promise<string> } };
    try {
      r = await request(target, {
        method: p.method as 'GET', dispatcher: agent, headers: ['host', p.host, ...p.headers], headersTimeout: 10_000, bodyTimeout: 10_000,
      });
    } catch (err) {
      const why = (err as { code?: string }).code ?? (err as Error).name;
      return { kind: `connection error on the gateway port (${why})`, detail: `${what}: ${(err as Error).message} (expected ${wanted})` };
    }
    stats.probes++;
    const text = await r.body.text();
    const reached = up.seen.length > seen;
    if (e.upstreamUrl !== undefined && reached) {
      stats.proxied++;
      if (r.statusCode !== 200) {
        const got = up.seen[up.seen.length - 1]!.rawHeaders;
        const names = got.filter((_v, i) => i % 2 === 0).map((n) => n.toLowerCase());
        const hosts = names.filter((n) => n === 'host').length;
        const why = hosts !== 1 ? (hosts === 0 ? 'no Host line' : 'more than one Host line') : names.includes('expect') ? 'an Expect it does not know' : `status ${r.statusCode}`;
        return { kind: `the upstream refused the request the gateway built (${why})`, detail: `${what}: the upstream answered ${r.statusCode} ${JSON.stringify(text.slice(0, 200))}; it received ${JSON.stringify(up.seen[up.seen.length - 1]!.rawHeaders)}` };
      }
      if (p.method === 'HEAD') return null;
      let body: { marker?: unknown; url?: unknown } = {};
      try { body = JSON.parse(text) as typeof body; } catch { /* checked below */ }
      if (body.marker !== UPSTREAM_MARKER) return { kind: 'a 200 not from the upstream', detail: `${what}: ${text.slice(0, 300)}` };
      if (body.url !== e.upstreamUrl) return { kind: 'the upstream got another path than the in-process rewrite', detail: `${what}: the upstream got ${JSON.stringify(body.url)} (expected ${JSON.stringify(e.upstreamUrl)})` };
      return null;
    }
    if (r.statusCode === 431 && e.alt431 === true && !reached) return null;
    if (r.statusCode === 429 && e.alt429 === true && !reached && (p.method === 'HEAD' || /"code":"rate_limited"/.test(text))) return null;
    if (r.statusCode === 504 && e.alt504 === true && !reached && (p.method === 'HEAD' || /"code":"upstream_connect_timeout"/.test(text))) return null;
    if (r.statusCode !== e.status || reached) {
      return { kind: 'the gateway answers otherwise than the in-process router', detail: `${what}: ${r.statusCode} ${text.slice(0, 300)}${reached ? ' (from the upstream)' : ''} (expected ${wanted})` };
    }
    if (e.code !== undefined && p.method !== 'HEAD') {
      let code: unknown;
      try { code = (JSON.parse(text) as { error?: { code?: unknown } }).error?.code; } catch { code = undefined; }
      if (code !== e.code) return { kind: 'the gateway answers otherwise than the in-process router', detail: `${what}: ${r.statusCode} body ${text.slice(0, 300)} (expected the gateway's JSON ${e.code})` };
    }
    if (e.allow !== undefined && r.headers['allow'] !== e.allow) {
      return { kind: 'the gateway answers otherwise than the in-process router', detail: `${what}: 405 Allow ${String(r.headers['allow'])} (expected ${e.allow})` };
    }
    return null;
  }

  /**
   * PUTs one document and checks what follows; every problem found. `probes`
   * is how many routes to request (all of them while shrinking).
   */
  async function checkOnGateway(raw: unknown, seed: number, probes: number): Promise<Failure[]> {
    const doc = JSON.parse(JSON.stringify(pin(structuredClone(raw)) ?? null)) as unknown;
    const failures: Failure[] = [];
    const fail = (kind: string, detail: string): void => { failures.push({ kind, detail }); };
    const logMark = gw.logs.length;
    // What the gateway must do, decided in-process with the same loader and
    // environment. The admin API itself refuses a body that is not a mapping
    // (loadConfigDocument(null) would validate as an empty config).
    const want = loadConfigDocument(structuredClone(doc), { env: process.env, ...WORKER_CHECKS, version: state.version + 1 });
    const put = await call('PUT', `${admin}/admin/config`, JSON.stringify(doc));
    if (want.ok && isPlainObject(doc)) {
      if (put.status !== 200) {
        fail('a config that validates was not applied', `PUT /admin/config: ${put.status} ${put.text.slice(0, 1500)}`);
      } else {
        const res = JSON.parse(put.text) as { version: number };
        if (res.version !== state.version + 1) fail('wrong version after apply', `version ${res.version}, expected ${state.version + 1}`);
        state.version = res.version;
        stats.applied++;
        const s = await status();
        if (s.config.version !== state.version || s.workers.some((w) => w.state !== 'ready') || s.restarts !== 0) {
          fail('workers not all serving the new config', JSON.stringify(s));
        }
        const cfg = await call('GET', `${admin}/admin/config`);
        if (cfg.status !== 200 || (JSON.parse(cfg.text) as { version: number }).version !== state.version) {
          fail('GET /admin/config does not show the new config', `${cfg.status} ${cfg.text.slice(0, 500)}`);
        }
        const routes = await call('GET', `${admin}/admin/routes?limit=1000`);
        if (routes.status !== 200) fail('GET /admin/routes failed', `${routes.status} ${routes.text.slice(0, 500)}`);
        let list: Probe[] = [];
        try {
          list = probesFor(want.config, new Rng(seed ^ 0x51ed), probes);
        } catch (err) {
          fail('a config that validates does not compile in-process', err instanceof Error ? err.message : String(err));
        }
        const passed: Probe[] = [];
        for (const p of list) {
          const problem = await runProbe(p);
          if (problem !== null) failures.push(problem);
          else passed.push(p);
        }
        // What the next refused document must leave serving (requests that were answered right).
        state.keep = [...passed.filter((p) => p.expect.upstreamUrl !== undefined).slice(0, 2), ...passed.slice(-1)];
      }
    } else {
      let errors: unknown;
      try { errors = (JSON.parse(put.text) as { error?: { errors?: unknown } }).error?.errors; } catch { errors = undefined; }
      if (put.status !== 422 || !Array.isArray(errors) || errors.length === 0) {
        fail('an invalid config was not refused with 422 and its problems', `PUT: ${put.status} ${put.text.slice(0, 800)}; in-process: ${want.ok ? 'valid' : JSON.stringify(want.errors.slice(0, 3))}`);
        if (put.status === 200) state.version = (JSON.parse(put.text) as { version: number }).version;
      } else {
        stats.refused++;
        const s = await status();
        if (s.config.version !== state.version) fail('a refused config changed the version', JSON.stringify(s));
        for (const p of state.keep) {
          const problem = await runProbe(p);
          if (problem !== null) { fail('the previous config stopped serving after a refused one', `${problem.kind}: ${problem.detail}`); break; }
        }
      }
    }
    const bad = gw.logs.slice(logMark).find(fatalLogLine);
    if (bad !== undefined) fail('a worker failure in the gateway log', bad.slice(0, 1500));
    if (gw.proc.exitCode !== null) fail('the gateway exited', gw.logs.slice(-20).join('\n'));
    return failures;
  }

  /** Smallest document that still fails the same way on the gateway (each try is one PUT and requests to every route). */
  async function minimizeOnGateway(doc: unknown, seed: number, kind: string, budgetMs: number): Promise<{ doc: unknown; detail: string }> {
    const small = await shrinkDocumentAsync(doc, async (d) => {
      if (gw.proc.exitCode !== null) return false;
      return (await checkOnGateway(d, seed, 1000)).some((x) => x.kind === kind);
    }, budgetMs);
    const again = (await checkOnGateway(small, seed, 1000)).find((x) => x.kind === kind);
    return { doc: small, detail: again?.detail ?? '(did not fail again)' };
  }

  it(`${GATEWAY_CASES} generated documents through PUT /admin/config`, async () => {
    const t0 = performance.now();
    const found = new Map<string, { seed: number; detail: string; doc: unknown; count: number }>();
    for (let i = 0; i < GATEWAY_CASES; i++) {
      const seed = caseSeed(BASE_SEED ^ 0xb0b, i);
      const doc = generateDocument(new Rng(seed), { liveTargets: [up.url], maxRoutes: 150, jsonOnly: true });
      stats.documents++;
      const kinds = new Set<string>();
      for (const f of await checkOnGateway(doc, seed, 5)) {
        if (kinds.has(f.kind)) continue; // counted once per document
        kinds.add(f.kind);
        const prev = found.get(f.kind);
        if (prev === undefined) found.set(f.kind, { seed, detail: f.detail, doc: structuredClone(doc), count: 1 });
        else prev.count++;
      }
      if (gw.proc.exitCode !== null) break;
    }
    const metrics = await request(`${admin}/metrics`, { dispatcher: agent });
    await metrics.body.dump();
    if (metrics.statusCode !== 200) found.set('GET /metrics failed', { seed: 0, detail: String(metrics.statusCode), doc: null, count: 1 });
    stats.ms = performance.now() - t0;
    console.log(`property B: ${stats.documents} documents (base seed ${BASE_SEED}), ${stats.applied} applied, ${stats.refused} refused, ${stats.probes} requests to generated routes (${stats.proxied} proxied), ${Math.round(stats.ms)} ms`);
    if (found.size === 0) return;
    const lines: string[] = [];
    for (const [kind, f] of found) {
      const file = join(dir, `failing-${f.seed}.json`);
      writeFileSync(file, JSON.stringify(f.doc, null, 2));
      // Shrinking on the gateway (a PUT and requests per try) shares ~8 s; CONFIG_PROPERTY_SHRINK_MS gives it more.
      const budget = Number(process.env.CONFIG_PROPERTY_SHRINK_MS ?? Math.max(1_000, Math.floor(8_000 / found.size)));
      const min = f.doc === null ? { doc: null, detail: '' } : await minimizeOnGateway(f.doc, f.seed, kind, budget);
      lines.push([
        `property B failed (${f.count} of ${stats.documents} documents): ${kind}`,
        `  case seed ${f.seed} (base seed ${BASE_SEED})`,
        `  ${f.detail}`,
        `  minimal document, as PUT (${min.detail}):`,
        JSON.stringify(pin(structuredClone(min.doc)), null, 2).replace(/^/gm, '    '),
        `  full document: ${file}`,
      ].join('\n'));
    }
    expect.fail(lines.join('\n\n'));
  }, 300_000);
});

interface StrictUpstream {
  url: string;
  /** Requests received (also those refused before a handler: an unmet Expect). */
  seen: { method: string; url: string; rawHeaders: string[] }[];
  close(): Promise<void>;
}

/**
 * The upstream of property B: an echo with a marker, strict (like nginx) on
 * what a proxy must never send it: more than one Host line is a 400 (RFC
 * 9112 3.2), an Expect it does not know a 417 (RFC 9110 10.1.1; Node's own
 * answer, recorded here too).
 */
async function startStrictUpstream(): Promise<StrictUpstream> {
  const seen: StrictUpstream['seen'] = [];
  const server = http.createServer((req, res) => {
    seen.push({ method: req.method!, url: req.url!, rawHeaders: req.rawHeaders });
    req.resume();
    req.on('end', () => {
      const hosts = req.rawHeaders.filter((_v, i) => i % 2 === 0 && req.rawHeaders[i]!.toLowerCase() === 'host').length;
      if (hosts !== 1) {
        res.writeHead(400, { 'content-type': 'text/plain' });
        res.end(`upstream refused: ${hosts} Host header lines`);
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ marker: UPSTREAM_MARKER, method: req.method, url: req.url }));
    });
  });
  server.on('checkExpectation', (req: http.IncomingMessage, res: http.ServerResponse) => {
    seen.push({ method: req.method!, url: req.url!, rawHeaders: req.rawHeaders });
    res.writeHead(417, { 'content-type': 'text/plain' });
    res.end(`upstream refused: Expect ${JSON.stringify(req.headers.expect)}`);
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`, seen,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}
