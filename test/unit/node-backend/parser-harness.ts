/**
 * Test harness for workers/transport/node/request-parser.ts: feeds inputs
 * split at chosen positions through ONE shared buffer that is scribbled
 * over after each execute (as the server's static `onread` buffer is), and
 * records what the parser hands out in a split-independent form (body
 * bytes of one request joined), so that any two feedings can be compared.
 */
import {
  R_ERROR, R_OK, R_PAUSED, RequestParser, type ParsedRequest, type RequestParserOptions, type RequestSink,
} from '../../../workers/transport/node/request-parser.js';

export const LIMITS: RequestParserOptions = { maxUrlBytes: 8192, maxHeaderBytes: 32768, maxHeaderCount: 100 };

export interface Msg {
  /** A refused head (onRequestRefused) has req.errorCode set. */
  req: ParsedRequest;
  body: string;
  trailers: string[] | null;
  ended: boolean;
}

export interface Outcome {
  msgs: Msg[];
  /** 'ok' (input used up, nothing refused); the final error's code (R_ERROR); else the first refused head's code. */
  result: string;
  reason: string;
  /** No final error: the parser went on after every refusal (the connection is kept). */
  kept: boolean;
  errorInBody: boolean;
  /** Order of events: H (head), R (refused head), E (end); checks N+1's head never comes before N's end. */
  order: string;
  buffered: number;
  idle: boolean;
}

/** Pause policy: where the sink pauses (and the harness resumes at once, after the callback). */
export interface PausePlan {
  onHead?: boolean;
  onBody?: boolean;
  onEnd?: boolean;
}

class Recorder implements RequestSink {
  msgs: Msg[] = [];
  order = '';
  parser: RequestParser | null = null;
  plan: PausePlan = {};
  onRequestHead(req: ParsedRequest): void {
    this.msgs.push({ req, body: '', trailers: null, ended: false });
    this.order += 'H';
    if (this.plan.onHead) this.parser!.pause();
  }
  onRequestRefused(req: ParsedRequest): void {
    if (req.errorCode === '') throw new Error('refused head without an error code');
    this.msgs.push({ req, body: '', trailers: null, ended: false });
    this.order += 'R';
    if (this.plan.onHead) this.parser!.pause();
  }
  onRequestBody(buf: Buffer, start: number, end: number): void {
    const m = this.msgs[this.msgs.length - 1]!;
    if (m.ended) throw new Error('body after end');
    m.body += buf.toString('latin1', start, end);
    if (this.plan.onBody) this.parser!.pause();
  }
  onRequestEnd(trailers: string[] | null): void {
    const m = this.msgs[this.msgs.length - 1]!;
    if (m.ended) throw new Error('double end');
    m.ended = true;
    m.trailers = trailers;
    this.order += 'E';
    if (this.plan.onEnd) this.parser!.pause();
  }
}

const SHARED = Buffer.alloc(1 << 20);

/**
 * Feeds `input` cut at `cuts` (sorted positions) and returns what came out.
 * Every execute reads from SHARED, overwritten with 0xEE afterwards.
 */
export function feed(input: Buffer, cuts: number[], opts: RequestParserOptions = LIMITS, plan: PausePlan = {}): Outcome {
  const rec = new Recorder();
  const p = new RequestParser(rec, opts);
  rec.parser = p;
  rec.plan = plan;
  let r = R_OK;
  let prev = 0;
  const points = [...cuts, input.length];
  for (const at of points) {
    const cut = Math.min(at, input.length);
    if (cut < prev) continue;
    const n = cut - prev;
    input.copy(SHARED, 0, prev, cut);
    r = p.execute(SHARED, 0, n);
    SHARED.fill(0xee, 0, n);
    prev = cut;
    let guard = 0;
    while (r === R_PAUSED) {
      if (++guard > 1_000_000) throw new Error('resume loop does not end');
      r = p.resume();
    }
    if (r === R_ERROR) break;
  }
  const refused = rec.msgs.find((m) => m.req.errorCode !== '');
  return {
    msgs: rec.msgs,
    result: r === R_ERROR ? p.errorCode : refused !== undefined ? refused.req.errorCode : 'ok',
    reason: r === R_ERROR ? p.errorReason : refused !== undefined ? refused.req.errorReason : '',
    kept: r !== R_ERROR,
    errorInBody: r === R_ERROR ? p.errorInBody : false,
    order: rec.order,
    buffered: p.bufferedBytes,
    idle: p.idle,
  };
}

/** A comparable digest of an outcome (the ParsedRequest fields, bodies, trailers, verdict). */
export function digest(o: Outcome): string {
  return JSON.stringify({
    msgs: o.msgs.map((m) => ({ ...m.req, body: m.body, trailers: m.trailers, ended: m.ended })),
    result: o.result, reason: o.reason, kept: o.kept, errorInBody: o.errorInBody, order: o.order, buffered: o.buffered, idle: o.idle,
  });
}

export function whole(input: Buffer | string, opts: RequestParserOptions = LIMITS): Outcome {
  return feed(typeof input === 'string' ? Buffer.from(input, 'latin1') : input, [], opts);
}

/**
 * Checks that every split of `input` into two reads, into single bytes, and
 * (for short inputs) into three reads at each pair of positions, gives the
 * same outcome as the whole input. Returns the whole-input outcome.
 */
export function splitInvariant(input: Buffer, opts: RequestParserOptions = LIMITS, threeWay = false): Outcome {
  const ref = feed(input, [], opts);
  const want = digest(ref);
  for (let k = 1; k < input.length; k++) {
    const got = digest(feed(input, [k], opts));
    if (got !== want) throw new Error(`split at ${k} differs:\n${got}\nwant:\n${want}`);
  }
  const bytes: number[] = [];
  for (let k = 1; k < input.length; k++) bytes.push(k);
  const got = digest(feed(input, bytes, opts));
  if (got !== want) throw new Error(`byte-by-byte differs:\n${got}\nwant:\n${want}`);
  if (threeWay) {
    for (let a = 1; a < input.length; a++) {
      for (let b = a + 1; b < input.length; b++) {
        const g = digest(feed(input, [a, b], opts));
        if (g !== want) throw new Error(`split at ${a},${b} differs:\n${g}\nwant:\n${want}`);
      }
    }
  }
  return ref;
}

/** Deterministic PRNG (mulberry32) so a failing fuzz case can be replayed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
