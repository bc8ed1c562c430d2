/**
 * Runs generated cases against a real gateway process and a recording
 * upstream, over raw TCP sockets on 127.0.0.1, and checks the properties of
 * oracle.ts on each.
 *
 * One case = one client connection: the case's bytes are written (at once,
 * split with pauses, or cut short by a close/reset), the responses are
 * parsed as they arrive, and the connection ends when the server closes it,
 * when every request has its answer (then the follow-up GET of property d is
 * sent if the connection should still be usable), or when nothing arrives
 * for `stallMs` (a stall, judged by the oracle). `concurrency` lanes run
 * cases side by side; every `batchSize` cases one lane checks property (a).
 */
import net from 'node:net';
import { baseConfig, startGateway, type Gateway } from '../helpers/gateway.js';
import { DEFAULT_LIMITS, generateCase, TAG_RE, type FuzzCase, type GenLimits } from './generator.js';
import { backendOf, findingsOf, judgeCase, judgeUpstream, knownFinding, type Backend, type KnownFinding, type Observation, type Violation } from './oracle.js';
import { RecordingUpstream } from './recording-upstream.js';
import { parseRequests, parseResponse, startsAsHead, type ParsedResponse, type RefParse } from './wire.js';

// ------------------------------------------------------------------ environment

/** The gateway configuration the generator's paths and limits are made for. */
export function gatewayConfig(upstreamUrl: string, L: GenLimits = DEFAULT_LIMITS, workers = 1): Record<string, unknown> {
  const up = 'rec';
  return baseConfig({
    server: {
      workers,
      limits: { maxBodyBytes: L.maxBodyBytes, maxUrlBytes: L.maxUrlBytes, maxHeaderBytes: L.maxHeaderBytes, maxHeaderCount: L.maxHeaderCount },
      headers: { request: { set: { 'x-fz-set': '1' }, remove: ['x-fz-drop'] }, response: { add: { 'x-fz-gw': '1' } } },
      forwarded: { forwarded: true },
      trustedProxies: ['127.0.0.0/8', '::1'],
    },
    upstreams: { [up]: { targets: [upstreamUrl], pool: { maxConnections: 2048, maxPending: 4096 } } },
    routes: [
      { id: 'health', path: '/health-route', methods: ['GET'], upstream: up },
      { id: 'api', path: '/api/*', upstream: up },
      { id: 'chunked', path: '/chunked/*', upstream: up },
      { id: 'r204', path: '/204/*', upstream: up },
      { id: 'r304', path: '/304/*', upstream: up },
      { id: 'head', path: '/head/*', upstream: up },
      { id: 'hop', path: '/hop/*', upstream: up },
      { id: 'close', path: '/close/*', upstream: up },
      { id: 'small', path: '/small/*', upstream: up, maxBodyBytes: L.smallBodyBytes },
      { id: 'getonly', path: '/get-only/*', methods: ['GET'], upstream: up },
      { id: 'users', path: '/v1/users/:id', upstream: up, rewrite: { template: '/api/users/{id}' } },
      { id: 'strip', path: '/strip/*', upstream: up, rewrite: { stripPrefix: '/strip' } },
      { id: 'host', host: 'api.fuzz.test', path: '/host/*', upstream: up, preserveHost: true },
      { id: 'pred', path: '/pred/*', upstream: up, match: { headers: { 'x-fz-ver': '2' } } },
      // Rate-limit key extraction on hostile input; limits high enough never to refuse (the oracle expects the upstream's answer).
      {
        id: 'limited', path: '/limited/*', upstream: up,
        rateLimit: [
          { by: 'header:x-fz-key', rate: 1_000_000_000, per: '1s', headers: 'none' },
          { by: 'query:k', rate: 1_000_000_000, per: '1s', algorithm: 'sliding_window', headers: 'none' },
          { by: 'ip', rate: 1_000_000_000, per: '1s', algorithm: 'gcra', burst: 1_000_000_000, headers: 'none' },
        ],
      },
    ],
  });
}

/**
 * Valid requests through the gateway before a run: 64 connections × 8
 * keep-alive requests to the upstream. A cold gateway (its code not yet
 * compiled, no upstream connection open) answering the run's first burst of
 * `concurrency` new connections on a loaded machine took over 1.5 s
 * (`stallMs`) for some of them, measured on the node backend (upstream_ms
 * ~1 s in the access log); a stall is meant to say "no answer", not "slow
 * start". Fails if any of these requests is not answered 200.
 */
async function warmUp(port: number): Promise<void> {
  await Promise.all(Array.from({ length: 64 }, (_, lane) => new Promise<void>((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let buf = '';
    let left = 8;
    const send = (): void => void s.write(`GET /api/fz-warm-up?t=w${lane}-${left} HTTP/1.1\r\nHost: fuzz.test\r\n\r\n`);
    const timer = setTimeout(() => { s.destroy(); reject(new Error('fuzzer warm-up: no answer from the gateway within 30 s')); }, 30_000);
    s.on('connect', send);
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.slice(0, end);
        const len = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? NaN);
        if (!head.startsWith('HTTP/1.1 200 ') || !Number.isFinite(len)) {
          clearTimeout(timer);
          s.destroy();
          reject(new Error('fuzzer warm-up: unexpected answer ' + JSON.stringify(head.slice(0, 200))));
          return;
        }
        if (buf.length < end + 4 + len) return;
        buf = buf.slice(end + 4 + len);
        if (--left > 0) send();
        else { clearTimeout(timer); s.end(); resolve(); return; }
      }
    });
    s.on('error', (e) => { clearTimeout(timer); reject(e); });
  })));
}

/** Log lines that mean property (a) failed: a worker died or a handler threw. */
const FATAL_LOG = /worker failed|worker exited|restarting|internal error|uncaught|admin thread exited/i;

export class FuzzEnv {
  private logCursor = 0;
  private constructor(readonly upstream: RecordingUpstream, readonly gw: Gateway, readonly backend: Backend) {}

  /**
   * Starts the recording upstream and the gateway on `backend` (default:
   * the one TURNPIKE_SERVER__BACKEND selects, uWS when unset), given to the
   * gateway through that variable (it overrides the config file).
   */
  static async start(workers = 1, backend: Backend = backendOf(process.env.TURNPIKE_SERVER__BACKEND)): Promise<FuzzEnv> {
    const upstream = new RecordingUpstream();
    await upstream.start();
    try {
      const gw = await startGateway(gatewayConfig(upstream.url, DEFAULT_LIMITS, workers), { env: { TURNPIKE_SERVER__BACKEND: backend } });
      await warmUp(gw.port);
      return new FuzzEnv(upstream, gw, backend);
    } catch (e) {
      await upstream.close();
      throw e;
    }
  }

  get port(): number {
    return this.gw.port;
  }

  async stop(): Promise<void> {
    await this.gw.stop();
    await this.upstream.close();
  }

  /**
   * Property (a): the process is alive, nothing fatal was logged since the
   * last check, and `GET /health-route` answers 200. Returns problems.
   */
  async checkAlive(timeoutMs = 3000): Promise<string[]> {
    const problems: string[] = [];
    if (this.gw.proc.exitCode !== null || this.gw.proc.signalCode !== null) {
      problems.push(`a:gateway-exited:${this.gw.proc.exitCode ?? this.gw.proc.signalCode}`);
      return problems;
    }
    const logs = this.gw.logs;
    for (; this.logCursor < logs.length; this.logCursor++) {
      const line = logs[this.logCursor]!;
      if (FATAL_LOG.test(line)) problems.push('a:fatal-log-line:' + line.slice(0, 300));
    }
    const r = await rawExchange(this.port, 'GET /health-route HTTP/1.1\r\nHost: fuzz.test\r\nConnection: close\r\n\r\n', timeoutMs);
    if (!/^HTTP\/1\.1 200 /.test(r)) problems.push('a:health-route-not-200:' + JSON.stringify(r.slice(0, 200)));
    return problems;
  }
}

function rawExchange(port: number, data: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let text = '';
    const t = setTimeout(() => s.destroy(), timeoutMs);
    s.on('data', (d) => { text += d.toString('latin1'); });
    s.on('error', () => {});
    s.on('close', () => { clearTimeout(t); resolve(text); });
    s.write(data);
  });
}

// ------------------------------------------------------------------ one case

let attempts = 0;

/** The case bytes with every correlation token replaced by this attempt's own. */
function tagged(bytes: Buffer, tag: string): Buffer {
  const s = bytes.toString('latin1');
  TAG_RE.lastIndex = 0;
  return TAG_RE.test(s) ? Buffer.from(s.replace(TAG_RE, tag), 'latin1') : bytes;
}

/** Request deviations after which the follow-up GET of property (d) is still a fair test. */
const FOLLOW_UP_OK = new Set([
  'obs-text', 'expect-100', 'trailers', 'cl-repeated', 'name-special-tchar', 'non-ascii-target', 'unsafe-char-in-target', 'bad-escape-in-target',
  'fragment-in-target',
]);

const FOLLOW_UP = (tag: string): string => `GET /api/fz-follow-up?t=${tag} HTTP/1.1\r\nHost: fuzz.test\r\n\r\n`;

interface Plan {
  bytes: Buffer;
  splits: number[];
  writeDelayMs: number;
  abort: FuzzCase['abort'];
}

/** Drives one connection (see the file comment) and reports what the client saw. */
function drive(port: number, plan: Plan, ref: RefParse, stallMs: number, tag: string): Promise<Observation> {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host: '127.0.0.1', noDelay: true });
    let text = '';
    let pos = 0;
    const responses: ParsedResponse[] = [];
    let closed = false;
    let writesDone = false;
    let finished = false;
    let followUpAt = -1;
    let timer: NodeJS.Timeout | undefined;
    const complete = ref.requests.filter((r) => r.complete).length;

    const finish = (terminal: Observation['terminal'], badWhy = ''): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      sock.destroy();
      resolve({ responses, terminal, badWhy, followUpAt, received: text.length > 4096 ? text.slice(0, 4096) : text });
    };
    const arm = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => finish('timeout'), stallMs);
    };
    const pump = (): void => {
      while (!finished && pos < text.length) {
        const i = responses.length;
        const req = followUpAt >= 0 && i >= followUpAt ? undefined : ref.requests[i];
        // A head the reference parser could not finish (a NUL, a cut) but whose request line says HEAD:
        // the server knows the method, and an answer to a HEAD has no body (RFC 9110 9.3.2) either way.
        const headLike = followUpAt < 0 && (req === undefined || !req.complete) && startsAsHead(ref, i);
        const r0 = parseResponse(text, pos, { head: req?.method === 'HEAD', connect: req?.method === 'CONNECT', eof: closed });
        const r = headLike && r0.kind === 'bad' && r0.why === 'truncated-body' ? parseResponse(text, pos, { head: true, connect: false, eof: closed }) : r0;
        if (r.kind === 'more') break;
        // A 100 Continue and then a close: no final response, the connection closed (acceptable, property b).
        if (r.kind === 'bad' && r.why === 'eof-after-interim') return finish('closed');
        if (r.kind === 'bad') return finish('bad-response', r.why);
        responses.push(r.res);
        pos = r.end;
        if (r.res.framing === 'tunnel') return finish('tunnel');
      }
      if (finished) return;
      if (closed) return finish('closed');
      if (!writesDone) return;
      if (followUpAt >= 0) {
        if (responses.length > followUpAt) finish('done');
        return;
      }
      // Every request sent has its answer and nothing is left over: the
      // connection is idle. Unless someone said `close` (then the server
      // must close it: wait for that), it must take another request (d).
      // Only after input that is valid (up to the deviations the oracle
      // compares field by field): after a defective request the server may
      // have read the bytes differently from our reference parser, so what
      // follows would not be a fair test of (d).
      if (ref.exact && responses.length >= complete && pos === text.length) {
        const closeDue = responses.some((x) => x.connectionClose) || ref.requests.some((x) => x.closeOption || x.reasons.includes('cl-te'));
        if (closeDue) return;
        if (!ref.requests.every((x) => x.reasons.every((r) => FOLLOW_UP_OK.has(r)))) return finish('done');
        followUpAt = responses.length;
        sock.write(FOLLOW_UP(tag));
        arm();
      }
    };

    sock.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      if (writesDone) arm();
      pump();
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      closed = true;
      if (!finished) pump();
      if (!finished) finish('closed');
    });
    sock.on('connect', () => {
      const { bytes, splits, writeDelayMs, abort } = plan;
      if (abort !== null) {
        sock.write(bytes.subarray(0, abort.at), () => {
          if (abort.reset) sock.resetAndDestroy();
          else sock.end();
          finish('aborted');
        });
        return;
      }
      const cuts = [0, ...splits, bytes.length];
      let k = 0;
      const next = (): void => {
        if (finished) return;
        const a = cuts[k]!;
        const b = cuts[k + 1]!;
        k++;
        sock.write(bytes.subarray(a, b));
        if (k < cuts.length - 1) setTimeout(next, writeDelayMs);
        else {
          writesDone = true;
          arm();
          pump();
        }
      };
      next();
    });
  });
}

export interface CaseResult {
  ref: RefParse;
  obs: Observation;
  violations: Violation[];
  outcomes: string[];
  /** Upstream-side checks (c), done a moment later so late arrivals are seen. */
  deferred: Promise<Violation[]>;
}

/**
 * A gateway refusal that may come after the request's head was forwarded:
 * a chunked body cut once it crosses the limit (413, README) or once a
 * chunk turns out malformed (400: the node backend answers it if no
 * response has started; uWS refuses bad framing before forwarding). The upstream must then never see the body's end.
 */
function cutMidBody(x: { status: number; chunkedBody: boolean }, backend: Backend): boolean {
  return x.chunkedBody && (x.status === 413 || (x.status === 400 && backend === 'node'));
}

/** Runs one case (or a replay/minimization attempt) and judges it. */
export async function runCase(env: FuzzEnv, plan: Plan, stallMs: number): Promise<CaseResult> {
  const tag = 'FzT' + (++attempts).toString(16).padStart(8, '0').slice(-8);
  const bytes = tagged(plan.bytes, tag);
  const ref = parseRequests(bytes);
  const obs = await drive(env.port, { ...plan, bytes }, ref, stallMs, tag);
  const verdict = judgeCase(ref, obs, (rid) => env.upstream.byRid.get(rid), env.backend);
  const deferred = new Promise<Violation[]>((resolve) => {
    setTimeout(() => {
      const recs = env.upstream.byTag.get(tag) ?? [];
      env.upstream.byTag.delete(tag);
      const sent = ref.requests.length + (obs.followUpAt >= 0 ? 1 : 0);
      // A 413 for a chunked body was streamed until it crossed the limit (README), and a 400 for a
      // malformed chunk found after forwarding began (node backend): their head may have gone upstream.
      const notForwarded = verdict.gatewayRejects.filter((x) => !(cutMidBody(x, env.backend) && env.upstream.byRid.has(x.rid))).length;
      const v = judgeUpstream(recs, ref, sent, notForwarded);
      for (const rej of verdict.gatewayRejects) {
        const rec = env.upstream.byRid.get(rej.rid);
        if (rec === undefined) continue;
        // README: a chunked body is cut off with 413 once it crosses the
        // limit, so its head did go upstream; the upstream must then never
        // see the body's end (it gets an incomplete request, then a close).
        // The same for a 400 answered when a chunk of the body turned out malformed (RFC 9112 7.1).
        if (cutMidBody(rej, env.backend) && !rec.complete) continue;
        v.push({ signature: `c:gateway-${rej.status}-request-reached-upstream`, detail: JSON.stringify(rec.head.slice(0, 200)) });
      }
      resolve(v);
    }, 150);
  });
  return { ref, obs, violations: verdict.violations, outcomes: verdict.outcomes, deferred };
}

// ------------------------------------------------------------------ runs

export interface FuzzOptions {
  seed: number;
  /** Stop after this many requests (messages, as the reference parser counts them) were sent. */
  requests: number;
  concurrency: number;
  stallMs: number;
  /** Cases between two checks of property (a). */
  batchSize: number;
  /** Progress line interval (0: none). */
  progressMs: number;
  /** How many new violation signatures to minimize at the end. */
  minimize: number;
  /** Replay only this case index. */
  onlyCase: number | null;
  log(line: string): void;
}

export interface Sample {
  seed: number;
  index: number;
  caseSeed: number;
  kind: string;
  input: Buffer;
  splits: number[];
  abort: FuzzCase['abort'];
  detail: string;
  received: string;
}

export interface ViolationGroup {
  signature: string;
  count: number;
  known: KnownFinding | null;
  sample: Sample;
  minimized: Buffer | null;
}

export interface FuzzReport {
  backend: Backend;
  seed: number;
  cases: number;
  requests: number;
  followUps: number;
  elapsedMs: number;
  outcomes: [string, number][];
  kinds: [string, number][];
  groups: ViolationGroup[];
  /** Signatures not in KNOWN_FINDINGS: these fail the bounded test. */
  unknown: string[];
}

function bump(m: Map<string, number>, k: string, n = 1): void {
  m.set(k, (m.get(k) ?? 0) + n);
}

export async function runFuzz(env: FuzzEnv, o: FuzzOptions): Promise<FuzzReport> {
  const t0 = performance.now();
  const outcomes = new Map<string, number>();
  const kinds = new Map<string, number>();
  const groups = new Map<string, ViolationGroup>();
  const pending = new Set<Promise<void>>();
  let next = o.onlyCase ?? 0;
  let sent = 0;
  let cases = 0;
  let followUps = 0;
  let stop = false;

  const addViolation = (v: Violation, c: FuzzCase | null, received: string): void => {
    const g = groups.get(v.signature);
    if (g !== undefined) {
      g.count++;
      return;
    }
    const sample: Sample = c === null
      ? { seed: o.seed, index: -1, caseSeed: 0, kind: 'harness', input: Buffer.alloc(0), splits: [], abort: null, detail: v.detail, received }
      : { seed: o.seed, index: c.index, caseSeed: c.seed, kind: c.kind, input: c.bytes, splits: c.splits, abort: c.abort, detail: v.detail, received };
    const known = knownFinding(v.signature, env.backend);
    groups.set(v.signature, { signature: v.signature, count: 1, known, sample, minimized: null });
    if (o.progressMs > 0) {
      o.log(`[fuzz] first ${known === null ? 'NEW violation' : `known violation (${known.id})`} ${v.signature} (case ${sample.index}, ${sample.kind}): ${v.detail}`);
    }
  };

  const aliveCheck = async (): Promise<void> => {
    const problems = await env.checkAlive();
    for (const p of problems) {
      addViolation({ signature: p.split(':').slice(0, 2).join(':'), detail: p }, null, '');
      if (p.startsWith('a:gateway-exited')) stop = true;
    }
  };

  let lastProgress = performance.now();
  let lastSent = 0;
  const progress = (final = false): void => {
    const now = performance.now();
    if (!final && (o.progressMs <= 0 || now - lastProgress < o.progressMs)) return;
    const secs = (now - t0) / 1000;
    const rate = (sent - lastSent) / ((now - lastProgress) / 1000);
    lastProgress = now;
    lastSent = sent;
    let unknown = 0;
    let known = 0;
    for (const g of groups.values()) (g.known === null ? (unknown += g.count) : (known += g.count));
    const st = (k: string) => outcomes.get(k) ?? 0;
    let stalls = 0;
    for (const [k, n] of outcomes) if (k.startsWith('stall:') && k !== 'stall:unexpected') stalls += n;
    o.log(`[fuzz] ${sent} requests / ${cases} cases in ${secs.toFixed(1)} s (${rate.toFixed(0)} req/s now, ${(sent / secs).toFixed(0)} avg)` +
      ` | closed ${st('closed:no-response') + st('closed:after-response')}, expected stalls ${stalls}, follow-ups ok ${st('follow-up:ok')}` +
      ` | violations: ${unknown} new (${[...groups.values()].filter((g) => g.known === null).length} kinds), ${known} known`);
  };
  const ticker = o.progressMs > 0 ? setInterval(() => progress(), o.progressMs) : null;

  const lane = async (): Promise<void> => {
    while (!stop && sent < o.requests) {
      const index = next++;
      const c = generateCase(o.seed, index);
      sent += Math.max(1, parseRequests(c.bytes).requests.length);
      const r = await runCase(env, c, o.stallMs);
      cases++;
      bump(kinds, c.kind.replace(/[:+].*$/, '') + (c.kind.includes('+abort') ? '+abort' : c.kind.includes('+slow') ? '+slow' : ''));
      for (const out of r.outcomes) bump(outcomes, out);
      if (r.obs.followUpAt >= 0) followUps++;
      if (r.obs.terminal === 'timeout') bump(outcomes, 'terminal:stall');
      for (const v of r.violations) addViolation(v, c, r.obs.received);
      const p = r.deferred.then((vs) => {
        for (const v of vs) addViolation(v, c, r.obs.received);
      });
      pending.add(p);
      void p.then(() => pending.delete(p));
      if (cases % o.batchSize === 0) {
        env.upstream.prune(performance.now() - 10_000);
        await aliveCheck();
      }
      if (o.onlyCase !== null) stop = true;
    }
  };
  try {
    await Promise.all(Array.from({ length: o.onlyCase !== null ? 1 : o.concurrency }, () => lane()));
    await Promise.all(pending);
    await aliveCheck();
  } finally {
    if (ticker !== null) clearInterval(ticker);
  }
  const elapsedMs = performance.now() - t0;
  progress(true);

  const list = [...groups.values()].sort((a, b) => Number(a.known !== null) - Number(b.known !== null) || b.count - a.count);
  let budget = o.minimize;
  for (const g of list) {
    if (budget <= 0 || g.known !== null || g.sample.index < 0) continue;
    budget--;
    g.minimized = await minimize(env, g.sample, g.signature, o.stallMs, o.log);
  }
  return {
    backend: env.backend, seed: o.seed, cases, requests: sent, followUps, elapsedMs,
    outcomes: [...outcomes].sort((a, b) => a[0].localeCompare(b[0])),
    kinds: [...kinds].sort((a, b) => b[1] - a[1]),
    groups: list,
    unknown: list.filter((g) => g.known === null).map((g) => g.signature),
  };
}

// ------------------------------------------------------------------ minimization

/** Does `bytes` (written at once) still show `signature`? */
async function reproduces(env: FuzzEnv, bytes: Buffer, s: Sample, signature: string, stallMs: number, keepPlan: boolean): Promise<boolean> {
  const plan: Plan = keepPlan
    ? { bytes, splits: s.splits.filter((x) => x < bytes.length), writeDelayMs: 5, abort: s.abort === null ? null : { ...s.abort, at: Math.min(s.abort.at, bytes.length) } }
    : { bytes, splits: [], writeDelayMs: 0, abort: null };
  const r = await runCase(env, plan, stallMs);
  const all = [...r.violations, ...(await r.deferred)];
  return all.some((v) => v.signature === signature);
}

/**
 * Candidates with one request's body halved (or emptied), its
 * Content-Length or chunk framing rewritten to match; trailers are kept.
 */
function reframed(buf: Buffer): Buffer[] {
  const ref = parseRequests(buf);
  const text = ref.text;
  const out: Buffer[] = [];
  for (const r of ref.requests) {
    if (!r.complete || r.body === null || r.body.length === 0 || r.framing === 'none') continue;
    const head = text.slice(r.start, r.headEnd);
    const rest = text.slice(r.end);
    for (const n of new Set([r.body.length >> 1, 0])) {
      const body = r.body.slice(0, n);
      let cand: string;
      if (r.framing === 'length') {
        cand = head.replace(/(content-length[ \t]*:[ \t]*)[0-9]+/i, '$1' + n) + body;
      } else {
        const raw = text.slice(r.headEnd, r.end);
        const last = /(?:^|\n)(0+(?:;[^\r\n]*)?\r?\n[\s\S]*)$/.exec(raw);
        if (last === null) continue;
        cand = head + (n > 0 ? n.toString(16) + '\r\n' + body + '\r\n' : '') + last[1];
      }
      out.push(Buffer.from(text.slice(0, r.start) + cand + rest, 'latin1'));
    }
  }
  return out;
}

/**
 * Greedy delta debugging: drop whole lines, then ever smaller byte ranges,
 * keeping any candidate that still shows the same violation signature.
 * Candidates of a round run in parallel. Returns null when even the
 * original input does not reproduce (a timing-dependent violation).
 */
export async function minimize(env: FuzzEnv, s: Sample, signature: string, stallMs: number, log: (l: string) => void): Promise<Buffer | null> {
  let keepPlan = false;
  if (!(await reproduces(env, s.input, s, signature, stallMs, false))) {
    if (!(await reproduces(env, s.input, s, signature, stallMs, true))) {
      log(`[fuzz] ${signature}: does not reproduce on replay; not minimized`);
      return null;
    }
    keepPlan = true;
  }
  let best = s.input;
  let tries = 0;
  const MAX_TRIES = 400;
  const PARALLEL = 16;
  const tryAll = async (cands: Buffer[]): Promise<Buffer | null> => {
    for (let i = 0; i < cands.length && tries < MAX_TRIES; i += PARALLEL) {
      const group = cands.slice(i, i + PARALLEL);
      tries += group.length;
      const ok = await Promise.all(group.map((c) => reproduces(env, c, s, signature, stallMs, keepPlan)));
      const hit = group.filter((_, k) => ok[k]).sort((a, b) => a.length - b.length)[0];
      if (hit !== undefined) return hit;
    }
    return null;
  };
  for (let progress = true; progress && tries < MAX_TRIES;) {
    progress = false;
    // Bodies halved with their framing kept consistent (plain byte cuts
    // would break a Content-Length or chunk size and change the behaviour).
    let hit = await tryAll(reframed(best));
    if (hit !== null) {
      best = hit;
      progress = true;
      continue;
    }
    // Whole lines (never the first), from the end.
    const text = best.toString('latin1');
    const starts: number[] = [];
    for (let i = text.indexOf('\n'); i !== -1 && i < text.length - 1; i = text.indexOf('\n', i + 1)) starts.push(i + 1);
    const lineCands: Buffer[] = [];
    for (let k = starts.length - 1; k >= 0; k--) {
      const a = starts[k]!;
      const b = starts[k + 1] ?? text.length;
      if (text.slice(a, b) === '\r\n' || text.slice(a, b) === '\n') continue;
      lineCands.push(Buffer.concat([best.subarray(0, a), best.subarray(b)]));
    }
    hit = await tryAll(lineCands);
    if (hit !== null) {
      best = hit;
      progress = true;
      continue;
    }
    for (let size = Math.max(1, best.length >> 1); size >= 1 && !progress; size = size === 1 ? 0 : Math.max(1, size >> 1)) {
      const cands: Buffer[] = [];
      for (let at = 0; at + size <= best.length; at += size) cands.push(Buffer.concat([best.subarray(0, at), best.subarray(at + size)]));
      hit = await tryAll(cands.filter((c) => c.length > 0));
      if (hit !== null) {
        best = hit;
        progress = true;
      }
    }
  }
  log(`[fuzz] ${signature}: minimized ${s.input.length} -> ${best.length} bytes in ${tries} tries`);
  return best;
}

// ------------------------------------------------------------------ report

/** The bytes as a JS string literal (latin1; escapes for controls and bytes >= 0x7f), capped. */
export function literal(b: Buffer, cap = 600): string {
  const s = b.subarray(0, cap).toString('latin1');
  let out = '';
  for (const ch of s) {
    const c = ch.charCodeAt(0);
    if (ch === '\r') out += '\\r';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\t') out += '\\t';
    else if (ch === "'" || ch === '\\') out += '\\' + ch;
    else if (c < 32 || c >= 127) out += '\\x' + c.toString(16).padStart(2, '0');
    else out += ch;
  }
  return "'" + out + "'" + (b.length > cap ? ` ... (${b.length} bytes)` : '');
}

export function hex(b: Buffer, cap = 512): string {
  return b.subarray(0, cap).toString('hex') + (b.length > cap ? `... (${b.length} bytes)` : '');
}

/** The run summary; `details` also prints inputs and replay lines for known findings (new ones always get them). */
export function formatReport(r: FuzzReport, details = true): string {
  const lines: string[] = [];
  const secs = r.elapsedMs / 1000;
  lines.push(`fuzz summary (backend ${r.backend}): seed ${r.seed} (0x${r.seed.toString(16)}), ${r.requests} requests in ${r.cases} connections, ${r.followUps} follow-ups, ${secs.toFixed(1)} s, ${(r.requests / secs).toFixed(0)} req/s`);
  lines.push('case kinds: ' + r.kinds.map(([k, n]) => `${k} ${n}`).join(', '));
  const pick = (p: string) => r.outcomes.filter(([k]) => k.startsWith(p));
  lines.push('responses by status: ' + pick('status:').map(([k, n]) => `${k.slice(7)} ${n}`).join(', '));
  lines.push('gateway error codes: ' + pick('gateway:').map(([k, n]) => `${k.slice(8)} ${n}`).join(', '));
  lines.push('connection ends: ' + [...pick('closed:'), ...pick('terminal:'), ...pick('follow-up:'), ...pick('aborted'), ...pick('tunnel')].map(([k, n]) => `${k} ${n}`).join(', '));
  lines.push('stalls (by reason): ' + pick('stall:').map(([k, n]) => `${k.slice(6)} ${n}`).join(', '));
  const lenient = pick('lenient:');
  if (lenient.length > 0) lines.push('answered by the upstream despite a defect (lenient, not failed): ' + lenient.map(([k, n]) => `${k.slice(8)} ${n}`).join(', '));
  const unknown = r.groups.filter((g) => g.known === null);
  const known = r.groups.filter((g) => g.known !== null);
  lines.push(`violations: ${unknown.length} new kinds (${unknown.reduce((a, g) => a + g.count, 0)}), ${known.length} known kinds (${known.reduce((a, g) => a + g.count, 0)})`);
  for (const g of [...unknown, ...known]) {
    const s = g.sample;
    lines.push(`  ${g.known === null ? 'NEW  ' : 'known'} ${g.signature} x${g.count}${g.known !== null ? ` [${g.known.id}]` : ''}`);
    if (g.known !== null && !details) continue;
    lines.push(`        ${s.detail}`);
    if (s.index >= 0) {
      lines.push(`        replay: FUZZ_SEED=${s.seed} FUZZ_CASE=${s.index} npm run fuzz${r.backend === 'uws' ? '' : ` -- --backend ${r.backend}`}   (case seed ${s.caseSeed}, ${s.kind}${s.splits.length ? `, splits ${s.splits.join(',')}` : ''}${s.abort ? `, abort at ${s.abort.at}${s.abort.reset ? ' (RST)' : ''}` : ''})`);
      lines.push(`        input ${literal(s.input)}`);
      lines.push(`        hex   ${hex(s.input)}`);
      if (g.minimized !== null) lines.push(`        minimized ${literal(g.minimized)}  hex ${hex(g.minimized)}`);
      if (s.received !== '') lines.push(`        received ${literal(Buffer.from(s.received, 'latin1'), 300)}`);
    }
  }
  return lines.join('\n');
}

/** Replays one case and describes everything about it (FUZZ_CASE). */
export async function describeCase(env: FuzzEnv, seed: number, index: number, stallMs: number): Promise<string> {
  const c = generateCase(seed, index);
  const r = await runCase(env, c, stallMs);
  const deferred = await r.deferred;
  const lines = [
    `case ${index} of seed ${seed} (case seed ${c.seed}, backend ${env.backend}): ${c.kind}`,
    `input ${literal(c.bytes, 4096)}`,
    `writes: ${c.abort ? `abort after ${c.abort.at} bytes${c.abort.reset ? ' (RST)' : ''}` : c.splits.length ? `split at ${c.splits.join(',')}, ${c.writeDelayMs} ms apart` : 'one write'}`,
  ];
  r.ref.requests.forEach((q, i) => lines.push(`request ${i + 1}: ${q.method} ${JSON.stringify(q.target.slice(0, 200))} ${q.version} framing ${q.framing} complete ${q.complete} reasons [${q.reasons.join(', ')}]`));
  r.obs.responses.forEach((x, i) => lines.push(`response ${i + 1}${i === r.obs.followUpAt ? ' (follow-up)' : ''}: ${x.status} ${x.reason} framing ${x.framing} ${JSON.stringify(x.headers)} body ${JSON.stringify(x.body.slice(0, 200))}`));
  lines.push(`terminal: ${r.obs.terminal} ${r.obs.badWhy}`);
  lines.push(`received ${literal(Buffer.from(r.obs.received, 'latin1'), 2000)}`);
  lines.push(`outcomes: ${r.outcomes.join(', ')}`);
  for (const v of [...r.violations, ...deferred]) lines.push(`VIOLATION ${v.signature}: ${v.detail}${knownFinding(v.signature, env.backend) ? ' (known)' : ''}`);
  return lines.join('\n');
}

/**
 * Runs the reproducer of every known finding of the env's backend and
 * returns those that no longer show their violation there (fixed: the entry
 * should go, or the backend be taken out of its `backends`).
 */
export async function staleKnownFindings(env: FuzzEnv, stallMs: number): Promise<{ id: string; saw: string[] }[]> {
  const stale: { id: string; saw: string[] }[] = [];
  await Promise.all(findingsOf(env.backend).filter((f) => f.deterministic !== false).map(async (f) => {
    const r = await runCase(env, { bytes: Buffer.from(f.reproducer, 'latin1'), splits: f.splits ?? [], writeDelayMs: 150, abort: null }, stallMs);
    const saw = [...r.violations, ...(await r.deferred)].map((v) => v.signature);
    if (!saw.some((sig) => f.match.test(sig))) stale.push({ id: f.id, saw });
  }));
  return stale;
}
