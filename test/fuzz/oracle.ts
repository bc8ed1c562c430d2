/**
 * The fuzzer's properties, checked for every case (one client connection):
 *
 *  (a) the gateway never dies: its process is alive, a plain
 *      `GET /health-route` answers 200 after every batch, and no worker
 *      failure or restart (or internal error) is logged -- checked by the
 *      harness, not per case;
 *  (b) every request either gets a well-framed HTTP/1.1 response (RFC 9112
 *      4-7; RFC 9110 8.6 and 15: no body for HEAD, 204, 304; no framing
 *      header on a 204) or the connection is closed; a request without an
 *      answer within the stall bound is acceptable only when it is
 *      incomplete (the server is waiting for bytes it was promised) or has
 *      one of the defects ENVIRONMENT.md lists uWS as stalling on;
 *  (c) nothing malformed reaches the upstream (each head it receives is
 *      checked by `parseUpstreamRequest`, each body's framing too), and a
 *      request the gateway answered with a 4xx of its own never reached it
 *      (matched by X-Request-Id);
 *  (d) after a response that neither said `Connection: close` nor was
 *      followed by a close, the connection still works: a plain GET on it
 *      gets a 200.
 * Plus what RFC 9110/9112 and the README promise about a forwarded request
 * ("fidelity": method, query and end-to-end header values and the body reach
 * the upstream unchanged; hop-by-hop fields do not) and about closing
 * (RFC 9112 9.6: a server that receives or sends `close` closes; 6.1/6.3:
 * after a request with bad framing it closes).
 *
 * Exceptions are listed below with their source (RFC or ENVIRONMENT.md).
 * Findings that were reported but not fixed yet are in KNOWN_FINDINGS: they
 * are still counted and printed, but do not fail the bounded test (set
 * FUZZ_STRICT=1 to make them fail).
 */
import { header, isWebSocketHandshake, startsAsHead, type ParsedResponse, type RefParse, type RefRequest } from './wire.js';
import { HOP_RESPONSE_FIELDS, UPSTREAM_BODIES, type UpstreamRecord } from './recording-upstream.js';

// ------------------------------------------------------------------ backends

/**
 * The HTTP server the gateway runs on (README "The node backend"): `uws`
 * (uWebSockets.js 20.30, the default on Node) or `node` (the strict RFC 9112
 * server on node:net). The properties are the same; what differs is which
 * stalls are documented (none on `node`: it answers every defect at once)
 * and which known findings apply (each finding names its backends).
 */
export type Backend = 'uws' | 'node';

/** The backend a TURNPIKE_SERVER__BACKEND value (or none) selects on Node: `auto` is uWS. */
export function backendOf(value: string | undefined): Backend {
  const v = (value ?? '').trim().toLowerCase();
  if (v === '' || v === 'auto' || v === 'uws') return 'uws';
  if (v === 'node') return 'node';
  throw new Error(`fuzzer: unsupported backend ${JSON.stringify(value)} (uws, node or auto)`);
}

// ------------------------------------------------------------------ reasons

/**
 * Request defects on which this uWS build gives no answer and holds the
 * connection until its ~10 s idle timeout (ENVIRONMENT.md, "uWebSockets.js":
 * "a header line with a space before the colon, a NUL, or a bare LF; more
 * than 48 request headers; HTTP/1.0 without Host; an absolute-form target";
 * "HTTP/1.0 is not served at all, with or without Host"). The JS handler
 * never runs, so the gateway cannot answer: a stall on these is expected.
 */
export const DOCUMENTED_STALL = new Set(['space-before-colon', 'nul', 'bare-lf', 'too-many-headers', 'http10', 'absolute-form']);

/**
 * The documented stalls of a backend: the node backend answers every
 * defect at once (README: 400 for bare LF, NUL, space before the colon...;
 * more than 48 fields, HTTP/1.0 and absolute-form are served), so none.
 */
const NO_STALL = new Set<string>();
function documentedStall(backend: Backend): Set<string> {
  return backend === 'uws' ? DOCUMENTED_STALL : NO_STALL;
}

/**
 * Defects after which RFC 9112 obliges a server to close the connection
 * once it has answered: 6.1 (Content-Length with Transfer-Encoding) and
 * 6.3 (4, 5: a Transfer-Encoding whose final coding is not chunked, an
 * invalid or conflicting Content-Length).
 */
export const MUST_CLOSE = new Set(['cl-te', 'te-not-chunked', 'bad-cl', 'cl-conflict']);

/**
 * Defects a server MUST answer with 400 (so a 2xx from the upstream means
 * the gateway forwarded it): RFC 9112 3.2 (no Host, several Host lines, an
 * invalid Host), 5.1 (whitespace before the colon), 6.3 (invalid or
 * conflicting Content-Length; chunked not final). NUL/CR in values and
 * obs-fold may instead be replaced by SP (RFC 9110 5.5, RFC 9112 5.2): those
 * are judged by what the upstream receives.
 */
export const MUST_REJECT = new Set(['missing-host', 'multiple-host', 'bad-host', 'space-before-colon', 'bad-cl', 'cl-conflict', 'te-not-chunked']);

/**
 * Deviations that do not change how a request is delimited or routed: a
 * request with only these is compared field by field with what the upstream
 * received. Raw non-ASCII, unsafe or badly escaped bytes in the target are
 * here because the README promises a byte-exact query (or a 400).
 */
const FIDELITY_OK = new Set([
  'obs-text', 'expect-100', 'trailers', 'cl-repeated', 'name-special-tchar', 'non-ascii-target', 'unsafe-char-in-target', 'bad-escape-in-target',
  'fragment-in-target',
]);

/** Host, Content-Length or Transfer-Encoding holds a byte >= 0x80 (finding F2 changes what they say). */
function framingNonAscii(req: RefRequest): boolean {
  return req.headers.some(([n, val]) => (n === 'host' || n === 'content-length' || n === 'transfer-encoding') && /[\x80-\xff]/.test(val));
}

/**
 * The defect to name a smuggling violation after: one a known desync comes
 * from (F1 empty-name line, F19 chunk terminator) if any request has it, else the first.
 */
function smugglingDefect(ref: RefParse): string {
  for (const d of DESYNC_DEFECTS) if (ref.requests.some((r) => r.reasons.includes(d))) return d;
  return ref.requests.map(firstDefect).find((d) => d !== 'valid') ?? 'valid';
}

const DESYNC_DEFECTS = ['empty-name', 'chunk-bare-lf', 'chunk-data-no-crlf'];

/** The same for one request. */
function desyncDefect(req: RefRequest): string {
  return DESYNC_DEFECTS.find((d) => req.reasons.includes(d)) ?? firstDefect(req);
}

/** The first defect of a request that is not a harmless deviation (for naming violations), or `valid`. */
function firstDefect(req: RefRequest): string {
  return req.reasons.find((r) => !FIDELITY_OK.has(r) && r !== 'incomplete') ?? 'valid';
}

/** Request fields the gateway manages itself or must drop (README Proxying; RFC 9110 7.6.1), not compared. */
const NOT_COMPARED = new Set([
  'host', 'content-length', 'transfer-encoding', 'expect', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded',
  'proxy', 'x-request-id', 'connection', 'keep-alive', 'te', 'trailer', 'upgrade', 'proxy-connection', 'x-fz-drop', 'x-fz-set',
]);

// ------------------------------------------------------------------ findings

export interface KnownFinding {
  id: string;
  /** The backends it shows on (each was checked against every backend: README of test/fuzz). */
  backends: readonly Backend[];
  /** Matches violation signatures this finding explains. */
  match: RegExp;
  /** Request defects (reference-parser reasons) on which uWS stalls, for stall findings. */
  stallReasons?: string[];
  summary: string;
  /** A minimal input that shows it (latin1), run by fuzz.test.ts to notice when it gets fixed. */
  reproducer: string;
  /** Write the reproducer in pieces, split at these offsets, 150 ms apart (the answer to the first comes in between). */
  splits?: number[];
  /** False when it shows only with some timing (the reproducer test skips it). */
  deterministic?: boolean;
}

const F1_SMUGGLED = 'GET /api/smuggled?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\n\r\n';
const F1_HEAD = `POST /api/x?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\n: x\r\nContent-Length: ${F1_SMUGGLED.length}\r\n\r\n`;
const F18_FIRST = 'HEAD /304/x?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\nConnection: keep-alive, close\r\n\r\n';
const F19_HEAD = 'POST /api/x?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n100\r\n';

const stall = (id: string, reasons: string[], summary: string, reproducer: string): KnownFinding => ({
  id, backends: UWS, match: new RegExp(`^b:stall:(?:${reasons.join('|')})$`), stallReasons: reasons, summary, reproducer,
});

/**
 * Fixed since (commit 4d6d8a0), so no longer listed: the fuzzer now fails if
 * they come back. F4 (critical): query characters U+0100-U+01FF became CR/LF/SP
 * in the upstream request line when a field value was latin1 (request
 * injection); F8: CONNECT with origin-form was proxied. F5 and F18 are only
 * partly fixed (their entries below say what remains).
 *
 * Violations this fuzzer found, reported, and not fixed yet (the gateway's
 * code is owned by others). Each is a real deviation from the RFCs, the
 * README or ENVIRONMENT.md, not an accepted behaviour: they are counted and
 * printed but do not fail the bounded test. Delete an entry when it is
 * fixed: fuzz.test.ts checks that every reproducer still shows its finding,
 * and the fuzzer keeps the fix from regressing.
 */
const UWS: readonly Backend[] = ['uws'];
const ALL: readonly Backend[] = ['uws', 'node'];

export const KNOWN_FINDINGS: KnownFinding[] = [
  {
    id: 'F1-smuggling-fields-dropped-after-empty-name',
    backends: UWS,
    // The defect tag may come with others (`empty-name:non-ascii-target`): the same uWS fault.
    match: /^c:(?:request-body-length-changed:body-dropped|upstream-got-more-requests-than-client-sent|response-to-a-request-the-client-did-not-send):empty-name(?::[a-z0-9-]+)*$|empty-name-line-present/,
    summary: 'uWS stops reading header fields at a line with an empty name (`: x`) but still answers: every later field is dropped, ' +
      'Content-Length included, so the gateway forwards the request without its body and the body bytes are parsed as the next ' +
      'request on the connection (request smuggling when a front proxy passes such a line: the smuggled request reaches the ' +
      'upstream). RFC 9112 5 / RFC 9110 5.1: a field name is a token (non-empty); the message is invalid (400).',
    reproducer: F1_HEAD + F1_SMUGGLED,
    // The body after the answer (a slow upload): the smuggled request is then served, not refused as pipelined.
    splits: [F1_HEAD.length],
  },
  {
    id: 'F2-non-ascii-trimmed-from-field-value-ends',
    backends: UWS,
    match: new RegExp([
      '^fidelity:header-(?:value-altered|count-changed):non-ascii$',
      '^rfc:forwarded-request-that-must-be-rejected:(?:bad-host|bad-cl|cl-conflict|te-not-chunked):non-ascii$',
      '^rfc:connection-not-closed-after-request-with-[a-z-]+-non-ascii:',
      '^b:stall:[a-z-]+:non-ascii$',
      'connection-non-ascii',
    ].join('|')),
    summary: 'uWS trims bytes >= 0x80 at the start and end of a field value as if they were whitespace (`X-A: \\xc3\\xa9t\\xc3\\xa9` ' +
      'reaches the upstream as `x-a: t`; `Host: \\xc3\\xa9.test` is accepted and routed as `.test`; `Content-Length: \\xa98` ' +
      'is read as 8, where an RFC reader refuses it: a framing disagreement with any front proxy). obs-text is a legal field ' +
      'value byte (RFC 9110 5.5); README: header bytes reach the upstream exactly or the request is refused.',
    reproducer: 'GET /api/x?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\nX-A: \xc3\xa9t\xc3\xa9\r\n\r\n',
  },
  {
    id: 'F3-chunked-trailers-break-keep-alive',
    backends: UWS,
    match: /^d:.*trailers/,
    summary: 'After a chunked request body with a trailer section (`0\\r\\nX-T: 1\\r\\n\\r\\n`, RFC 9112 7.1.2), the next request on ' +
      'the connection never gets an answer: uWS apparently takes the trailer bytes for the start of the next request.',
    reproducer: 'POST /api/x?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n',
  },
  {
    id: 'F5-close-not-initiated-after-bodyless-response',
    backends: UWS,
    match: /^rfc:connection-not-closed-after-(?:request|response)-with-connection-close:bodyless-response$/,
    summary: 'Partly fixed in 4d6d8a0 (a client `Connection: close` on a HEAD now closes). Still: a HEAD (also 204/304) ' +
      'answered with `Connection: close` -- the gateway\'s own error after bad framing (`Transfer-Encoding: E`), or `close` ' +
      'inside a Connection list -- leaves the connection open until the client sends more. RFC 9112 9.6: the server ' +
      'MUST initiate the close after that response.',
    reproducer: 'HEAD /api/x?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\nTransfer-Encoding: E\r\n\r\n',
  },
  {
    id: 'F18-request-after-close-processed',
    backends: UWS,
    match: /^rfc:request-processed-after-close$/,
    summary: 'Partly fixed in 4d6d8a0 (a request already pipelined behind a closing answer now makes uWS close). Still: ' +
      'when a response says `Connection: close` but the connection stays open (F5, F6), a request the client sends next ' +
      'is served. RFC 9112 9.6: after `close` the server MUST NOT process further requests.',
    reproducer: F18_FIRST + 'GET /api/after-close?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\n\r\n',
    splits: [F18_FIRST.length],
  },
  {
    id: 'F6-close-not-initiated-after-streamed-response',
    backends: UWS,
    match: /^rfc:connection-not-closed-after-(?:request|response)-with-connection-close:chunked-response$/,
    summary: 'A streamed (chunked) response to a request with `close` inside a Connection list carries `Connection: close` ' +
      'but the gateway leaves the connection open (uws-respond.ts: this uWS build cannot close after a streamed body). ' +
      'RFC 9112 9.6: a server that sends `close` MUST initiate the close.',
    reproducer: 'GET /chunked/x?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\nConnection: keep-alive, close\r\n\r\n',
  },
  {
    id: 'F7-invalid-target-characters-forwarded',
    backends: ALL,
    match: /^c:upstream-target-(?:non-ascii|fragment|unsafe-char|bad-escape)$/,
    summary: 'Raw bytes that are not allowed in a request-target (non-ASCII, `#`, `"<>\\^`{|}`, invalid `%` escapes) are passed ' +
      'to the upstream in the query (RFC 9112 3.2 / RFC 3986 3.4). The README promises a byte-exact query, so this is a ' +
      'design decision to confirm (nginx does the same); the path is normalized and refused (400 bad_path) instead.',
    reproducer: 'GET /api/x?t=FzT00000000&a=%zz&b="<>"#f HTTP/1.1\r\nHost: fuzz.test\r\n\r\n',
  },
  {
    id: 'F19-smuggling-chunk-data-terminator-not-checked',
    backends: UWS,
    match: /^c:(?:request-body-length-changed(?::body-dropped)?|upstream-got-more-requests-than-client-sent|response-to-a-request-the-client-did-not-send):(?:chunk-bare-lf|chunk-data-no-crlf)$/,
    summary: 'HIGH. uWS skips the 2 bytes after chunk data without checking they are CRLF. After `5\\r\\nhello\\n100\\r\\n` ' +
      'it reads `00` as the last chunk, so the 0x100 bytes an RFC 9112 reader (which may accept a bare LF there, 2.2) takes ' +
      'as chunk data are parsed as the next request: a smuggled `GET /api/smuggled` reached the upstream. The gateway ' +
      'forwards a different body than the client sent.',
    reproducer: F19_HEAD + '\r\nGET /api/smuggled?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\nX-Pad: ' + 'p'.repeat(184) + '\r\n\r\n\r\n0\r\n\r\n',
    splits: [F19_HEAD.length],
  },
  {
    id: 'F21-large-head-answer-then-next-request-dropped',
    backends: UWS,
    match: /^d:connection-closed-on-follow-up:.*large-head/,
    deterministic: false,
    summary: 'After a request head of tens of KB (a 100 KB target, a 70 KB field) answered by the gateway itself (414/431, ' +
      'which it asks uWS to end with a close), the response carries no `Connection: close` and the connection is closed when ' +
      'the next request arrives right after it, unanswered (timing-dependent; sometimes no response at all). RFC 9112 9.6: ' +
      'a close the server intends must be announced with `close`.',
    reproducer: 'GET /api/' + 'p'.repeat(100_000) + '?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\n\r\n',
  },
  stall('F9-stall-on-legal-field-name-characters', ['name-special-tchar'],
    'uWS accepts only [A-Za-z0-9-] in field names and gives no answer (a ~10 s stall) for legal names with other tchars ' +
    '(`X_Y`, `X.Y`, `X%Y`; RFC 9110 5.6.2): valid requests that hang.',
    'GET /api/x?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\nX_Y: 1\r\n\r\n'),
  stall('F10-stall-on-missing-host', ['missing-host'],
    'An HTTP/1.1 request without Host gets no answer (stall) instead of 400 (RFC 9112 3.2: MUST 400); ENVIRONMENT.md lists ' +
    'only "HTTP/1.0 without Host".',
    'GET /api/x?t=FzT00000000 HTTP/1.1\r\n\r\n'),
  stall('F11-stall-on-http-versions', ['higher-minor-version', 'unsupported-version', 'bad-version'],
    'HTTP/1.2 (RFC 9112 2.3: process as HTTP/1.1), HTTP/2.0 or HTTP/0.9 (505), `http/1.1` or `HTTP/11` (400): no answer.',
    'GET /api/x?t=FzT00000000 HTTP/1.2\r\nHost: fuzz.test\r\n\r\n'),
  stall('F12-stall-on-request-line-syntax', ['bad-request-line', 'bad-target', 'nul-in-request-line', 'bad-method'],
    'A malformed request line (two spaces, a tab, a space in the target, no version, a target without `/`, a control ' +
    'character in the method) gets no answer instead of 400 (RFC 9112 3: SHOULD 400).',
    'GET /api/x?t=FzT00000000&a b HTTP/1.1\r\nHost: fuzz.test\r\n\r\n'),
  stall('F13-stall-on-asterisk-and-authority-form', ['asterisk-form', 'asterisk-form-not-options', 'authority-form'],
    '`OPTIONS * HTTP/1.1` (valid, RFC 9112 3.2.4) and `CONNECT host:port` (authority-form) get no answer.',
    'OPTIONS * HTTP/1.1\r\nHost: fuzz.test\r\n\r\n'),
  stall('F14-stall-on-control-characters', ['ctl-in-target', 'ctl-in-value', 'bare-cr', 'del-in-value'],
    'Control characters other than NUL (0x01-0x1f, a bare CR) in the target or a field value, and DEL in some positions, ' +
    'get no answer instead of 400 (RFC 9110 5.5, RFC 9112 2.2). ENVIRONMENT.md lists only NUL.',
    'GET /api/x?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\nX-A: a\x01b\r\n\r\n'),
  stall('F15-stall-on-field-line-syntax', ['obs-fold', 'no-colon', 'bad-name-char'],
    'obs-fold (RFC 9112 5.2: MUST 400 or replace), a field line without a colon, or a name with a non-token character ' +
    'gets no answer instead of 400.',
    'GET /api/x?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\nX-A: 1\r\n folded\r\n\r\n'),
  stall('F16-stall-on-leading-empty-line', ['leading-empty-line'],
    'An empty line (CRLF) before the request line gets no answer; RFC 9112 2.2: a server SHOULD ignore at least one.',
    '\r\nGET /api/x?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\n\r\n'),
  stall('F17-stall-on-chunked-framing-defects', ['chunk-ext', 'chunk-bare-lf', 'chunk-data-no-crlf', 'bad-trailer', 'cl-te', 'bad-chunk-size'],
    'Some chunked framing defects get no answer instead of 400 + close: an empty chunk extension (`5;`), a bare LF in chunk ' +
    'framing together with other defects, chunk data not followed by CRLF (uWS skips any 2 bytes there), an invalid trailer ' +
    'line, some invalid chunk sizes (`bb\\xe2`), and Content-Length: 0 with Transfer-Encoding (ENVIRONMENT.md: bad chunk sizes, ' +
    'CL+TE and chunk extensions close).',
    'POST /api/x?t=FzT00000000 HTTP/1.1\r\nHost: fuzz.test\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n'),
];

/** The known findings of a backend. */
export function findingsOf(backend: Backend): KnownFinding[] {
  return KNOWN_FINDINGS.filter((f) => f.backends.includes(backend));
}

/** Request defects a known finding of the backend says it stalls on. */
const KNOWN_STALL_REASONS: Record<Backend, Set<string>> = {
  uws: new Set(findingsOf('uws').flatMap((f) => f.stallReasons ?? [])),
  node: new Set(findingsOf('node').flatMap((f) => f.stallReasons ?? [])),
};

/** The known finding of `backend` that explains a violation signature, or null (a new violation: it fails). */
export function knownFinding(signature: string, backend: Backend): KnownFinding | null {
  for (const f of KNOWN_FINDINGS) if (f.backends.includes(backend) && f.match.test(signature)) return f;
  return null;
}

// ------------------------------------------------------------------ verdicts

export interface Violation {
  /** Stable key: `<property>:<what>[:<detail>]`. */
  signature: string;
  detail: string;
}

/** What the client saw on one connection (harness.ts fills it in). */
export interface Observation {
  responses: ParsedResponse[];
  terminal: 'closed' | 'timeout' | 'bad-response' | 'tunnel' | 'done' | 'aborted';
  badWhy: string;
  /** The follow-up GET of property (d) was sent: responses from this index answer it. */
  followUpAt: number;
  /** Bytes received (latin1, capped) for reports. */
  received: string;
}

export interface CaseVerdict {
  violations: Violation[];
  /** Outcome labels for the summary (`status:200`, `closed`, `stall:expected:incomplete`...). */
  outcomes: string[];
  /** Request ids of the gateway's own 4xx answers (must never reach the upstream). */
  gatewayRejects: { rid: string; status: number; chunkedBody: boolean }[];
}

/**
 * Defects on which this uWS build closes the connection at once
 * (ENVIRONMENT.md: extension methods, lowercase methods): never the cause of
 * a stall, so never the name a stall is filed under.
 */
const DOCUMENTED_CLOSE = new Set(['extension-method', 'bad-method']);

/** Whether a stall on the first unanswered request is acceptable (and why), or the violation it is. */
export function stallSignature(req: RefRequest | undefined, backend: Backend): { expected: string } | { violation: string } {
  // Every request we could delimit was answered; the server may well have
  // read the rest differently (leniently): nothing is owed.
  if (req === undefined) return { expected: 'idle-after-answers' };
  // RFC 9112 6.3/7.1: the server waits for the bytes the message promised.
  if (req.reasons.includes('incomplete')) return { expected: 'incomplete' };
  const doc = req.reasons.find((r) => documentedStall(backend).has(r));
  if (doc !== undefined) return { expected: 'documented:' + doc };
  // Name it after the defect most likely to cause it: one already known to stall uWS, else the first.
  const cause =
    req.reasons.find((r) => KNOWN_STALL_REASONS[backend].has(r)) ??
    req.reasons.find((r) => !FIDELITY_OK.has(r) && !DOCUMENTED_CLOSE.has(r)) ??
    req.reasons.find((r) => !FIDELITY_OK.has(r));
  // A framing field with bytes >= 0x80: finding F2 (uWS trims them, then reads another length or host).
  const nonAscii = cause !== undefined && MUST_REJECT.has(cause) && framingNonAscii(req) ? ':non-ascii' : '';
  return { violation: 'b:stall:' + (cause ?? 'valid-request') + nonAscii };
}

function gatewayErrorCode(res: ParsedResponse): string {
  try {
    const j = JSON.parse(res.body) as { error?: { code?: string } };
    return j.error?.code ?? '?';
  } catch {
    return '?';
  }
}

function query(target: string): string | null {
  const q = target.indexOf('?');
  return q < 0 ? null : target.slice(q + 1);
}

const show = (s: string): string => JSON.stringify(s.length > 120 ? s.slice(0, 120) + '...' : s);

/**
 * Fidelity of a forwarded request (RFC 9110 7.6: a proxy forwards the
 * message, minus hop-by-hop fields; README: the query and header bytes reach
 * the upstream exactly, or the request is refused).
 */
function fidelity(req: RefRequest, rec: UpstreamRecord, out: Violation[], backend: Backend): void {
  const up = rec.parsed;
  // On uWS and node a WebSocket handshake is proxied (README "WebSockets"):
  // the gateway's own client (`ws`) opens the upstream side with its own key
  // (RFC 6455 4.1) and the Upgrade/Connection: upgrade the handshake needs.
  // (Bun answers it 501: nothing reaches the upstream.)
  const ws = (backend === 'uws' || backend === 'node') && isWebSocketHandshake(req.method, req.headers);
  if (up.method !== req.method) {
    const nonAscii = req.reasons.includes('non-ascii-target') ? ':non-ascii-target' : '';
    out.push({ signature: 'fidelity:method' + nonAscii, detail: `client ${req.method}, upstream ${up.method}` });
  }
  const cq = query(req.target);
  const uq = query(up.target);
  if ((cq === null || cq === '' ? null : cq) !== uq) {
    const nonAscii = /[\x80-\xff]/.test(cq ?? '') ? ':non-ascii' : '';
    out.push({ signature: 'fidelity:query' + nonAscii, detail: `client ${show(cq ?? '')}, upstream ${show(uq ?? '')}` });
  }
  const listed = new Set(req.connectionListed);
  const names = new Set(req.headers.map((h) => h[0]));
  for (const n of names) {
    if (NOT_COMPARED.has(n) || n.startsWith('proxy-') || listed.has(n) || n === '') continue;
    // The gateway's client writes its own key, version and extensions (RFC 6455 4.1: one line each).
    if (ws && (n === 'sec-websocket-key' || n === 'sec-websocket-version' || n === 'sec-websocket-extensions')) continue;
    const cv = req.headers.filter((h) => h[0] === n).map((h) => h[1]);
    const uv = up.headers.filter((h) => h[0] === n).map((h) => h[1]);
    if (cv.length !== uv.length || cv.some((v, i) => v !== uv[i])) {
      const altered = cv.length === uv.length ? 'value-altered' : 'count-changed';
      const nonAscii = cv.some((v) => /[\x80-\xff]/.test(v))
        ? ':non-ascii'
        : req.headers.some((h) => h[0] === 'connection' && /[\x80-\xff]/.test(h[1])) ? ':connection-non-ascii' : '';
      out.push({ signature: `fidelity:header-${altered}${nonAscii}`, detail: `${n}: client ${show(cv.join(' | '))}, upstream ${show(uv.join(' | '))}` });
    }
  }
  for (const n of listed) {
    if (n === 'host' || n === 'x-request-id' || n === 'x-fz-set' || n.startsWith('x-forwarded-') || n === 'forwarded') continue;
    if (ws && n === 'upgrade') continue;
    if (up.headers.some((h) => h[0] === n)) out.push({ signature: 'c:connection-listed-field-forwarded', detail: n });
  }
  if (up.headers.some((h) => h[0] === 'x-fz-drop')) out.push({ signature: 'c:header-rule:remove-ignored', detail: 'x-fz-drop reached the upstream' });
  const set = up.headers.filter((h) => h[0] === 'x-fz-set').map((h) => h[1]);
  if (set.length !== 1 || set[0] !== '1') out.push({ signature: 'c:header-rule:set-ignored', detail: `x-fz-set upstream ${show(set.join(' | '))}` });
  if (req.body !== null && !req.reasons.includes('chunk-ext') && rec.complete && rec.body !== req.body && req.body.length <= 256 * 1024) {
    out.push({ signature: 'fidelity:body', detail: `client ${req.body.length} bytes ${show(req.body)}, upstream ${rec.body.length} bytes ${show(rec.body)}` });
  }
}

/**
 * Where the request ends must not change on the way through (property c,
 * the request smuggling guard; RFC 9112 6.3): when the client's request has
 * a determinable body, the upstream gets a body of the same length (any
 * framing), and when it has none, the upstream gets none. A gateway that
 * drops a Content-Length leaves the body on the client connection, where it
 * is read as the next request.
 */
function framingAgreement(req: RefRequest, rec: UpstreamRecord, out: Violation[]): void {
  if (req.framing === 'unknown' || !req.complete || req.body === null || !rec.complete) return;
  const clientLen = req.body.length;
  const upLen = rec.body.length;
  const upFramed = rec.parsed.framing !== 'none';
  if (clientLen > 0 && upLen !== clientLen && upLen < 256 * 1024) {
    out.push({
      signature: 'c:request-body-length-changed' + (upFramed ? '' : ':body-dropped') + ':' + desyncDefect(req),
      detail: `client body ${clientLen} bytes (${req.framing}), upstream ${upFramed ? rec.parsed.framing : 'no body framing'} ${upLen} bytes`,
    });
  }
}

/**
 * Client-side properties (b, d, fidelity, RFC closing rules) of one case.
 * `lookup` finds what the upstream recorded for a request id.
 */
export function judgeCase(ref: RefParse, obs: Observation, lookup: (rid: string) => UpstreamRecord | undefined, backend: Backend): CaseVerdict {
  const v: Violation[] = [];
  const outcomes: string[] = [];
  const gatewayRejects: CaseVerdict['gatewayRejects'] = [];
  const main = obs.followUpAt >= 0 ? obs.responses.slice(0, obs.followUpAt) : obs.responses;
  let closeDue: string | null = null;
  /** What the response that made the close due was: bodyless (HEAD/204/304), chunked, or with a length. */
  let closeShape = '';
  let allBenignSoFar = true;
  for (let i = 0; i < main.length; i++) {
    const res = main[i]!;
    const req = ref.requests[i];
    outcomes.push('status:' + res.status);
    if (closeDue !== null) v.push({ signature: 'rfc:request-processed-after-close', detail: `response ${i + 1} after ${closeDue} (RFC 9112 9.6)` });
    const rid = header(res.headers, 'x-request-id');
    if (rid === undefined) v.push({ signature: 'b:response-without-request-id', detail: `status ${res.status}` });
    const kind = header(res.headers, 'x-fz-up');
    // With a healthy upstream a 5xx is a gateway failure, except 501 and 505, the statuses RFC 9110
    // 15.6.2/15.6.6 give a server for a method or an HTTP version it does not support.
    if (res.status >= 500 && res.status !== 501 && res.status !== 505) {
      v.push({ signature: `b:gateway-${res.status}:${kind === undefined ? gatewayErrorCode(res) : 'upstream'}`, detail: show(res.body) });
    }
    if (kind === undefined && res.status >= 400 && res.status < 500 && rid !== undefined) {
      // Declared chunked (whatever its chunks look like): the gateway streams such a body until it crosses the limit.
      gatewayRejects.push({ rid, status: res.status, chunkedBody: req?.headers.some((h) => h[0] === 'transfer-encoding') ?? false });
      // A head the server read as HEAD (its request line starts so, even where the reference parser could not finish it) gets no body.
      const code = req?.method === 'HEAD' || (res.body === '' && startsAsHead(ref, i)) ? 'head' : gatewayErrorCode(res);
      if (code === '?') v.push({ signature: 'b:gateway-error-body-not-json', detail: show(res.body) });
      outcomes.push('gateway:' + (code === 'head' ? `head-${res.status}` : code));
    }
    if (req !== undefined) allBenignSoFar &&= req.reasons.every((r) => FIDELITY_OK.has(r));
    if (kind !== undefined && kind !== 'rejected' && req !== undefined) {
      // Came from the upstream: it must have been a request the gateway may forward.
      const mustReject = req.reasons.find((r) => MUST_REJECT.has(r));
      if (mustReject !== undefined) {
        // uWS trims bytes >= 0x80 at the ends of field values (see KNOWN_FINDINGS): tell those apart.
        const nonAscii = framingNonAscii(req);
        const emptyName = req.reasons.includes('empty-name') ? ':empty-name-line-present' : '';
        v.push({ signature: 'rfc:forwarded-request-that-must-be-rejected:' + mustReject + (nonAscii ? ':non-ascii' : '') + emptyName, detail: `status ${res.status}` });
      }
      const lenient = req.reasons.filter((r) => !FIDELITY_OK.has(r));
      for (const r of lenient) outcomes.push('lenient:' + r);
      const rec = rid === undefined ? undefined : lookup(rid);
      if (rec === undefined) {
        const nonAscii = req.reasons.includes('non-ascii-target') ? ':non-ascii-target' : '';
        v.push({ signature: 'c:upstream-response-without-upstream-record' + nonAscii, detail: `rid ${rid}` });
      }
      else {
        framingAgreement(req, rec, v);
        if (allBenignSoFar) fidelity(req, rec, v, backend);
      }
      const bodyless = req.method === 'HEAD' || res.status === 204 || res.status === 304 || res.framing === 'tunnel';
      const want = bodyless ? '' : UPSTREAM_BODIES[kind] ?? '?';
      if (res.body !== want) v.push({ signature: 'b:response-body-altered', detail: `${kind}: got ${show(res.body)}, want ${show(want)}` });
      if (kind === 'hop') {
        for (const n of HOP_RESPONSE_FIELDS) {
          const val = header(res.headers, n);
          // The server's own `close`, or `keep-alive` to an HTTP/1.0 client that asked to keep the connection (RFC 9112 9.3), are not forwarded fields.
          const own = n === 'connection' && val !== undefined && (val.toLowerCase() === 'close' || (val.toLowerCase() === 'keep-alive' && req.version === 'HTTP/1.0'));
          if (val !== undefined && !own) {
            v.push({ signature: 'rfc:hop-by-hop-response-field-forwarded:' + n, detail: `${n}: ${val}` });
          }
        }
      }
    }
    const before = closeDue;
    if (res.connectionClose) closeDue ??= 'a response with Connection: close';
    if (req?.closeOption) closeDue ??= 'a request with Connection: close' + (req.reasons.includes('empty-name') ? ' (empty-name line present)' : '');
    const mc = req?.reasons.find((r) => MUST_CLOSE.has(r));
    if (mc !== undefined) {
      const why = req!.reasons.includes('empty-name') ? ' (empty-name line present)' : framingNonAscii(req!) ? ' (non-ascii)' : '';
      closeDue ??= 'a request with ' + mc + why;
    }
    if (before === null && closeDue !== null) {
      closeShape = req?.method === 'HEAD' || res.status === 204 || res.status === 304 ? 'bodyless' : res.framing === 'chunked' ? 'chunked' : 'sized';
    }
  }

  // Every byte the client sent belongs to the requests the reference parser
  // delimited; an answer beyond those answers a request the client never
  // sent: the server read the bytes differently (request smuggling).
  if (ref.exact && main.length > ref.requests.length) {
    const defect = smugglingDefect(ref);
    const nonAscii = ref.requests.some((r) => r.reasons.includes('non-ascii-target')) ? ':non-ascii-target' : '';
    v.push({ signature: `c:response-to-a-request-the-client-did-not-send:${defect}${nonAscii}`, detail: `${ref.requests.length} requests sent, ${main.length} responses` });
  }

  switch (obs.terminal) {
    case 'bad-response':
      v.push({ signature: 'b:malformed-response:' + obs.badWhy, detail: show(obs.received) });
      break;
    case 'timeout': {
      if (obs.followUpAt >= 0) {
        v.push({ signature: 'd:connection-unusable-after-response:' + shape(ref), detail: 'the follow-up GET got no answer' });
      } else if (closeDue !== null) {
        // RFC 9112 9.6: the server MUST initiate closure after such a response.
        v.push({
          signature: 'rfc:connection-not-closed-after-' + closeDue.replace(/^a /, '').replace(/[ :()]+/g, '-').replace(/-$/, '').toLowerCase() + ':' + closeShape + '-response',
          detail: closeDue,
        });
      } else {
        const s = stallSignature(ref.requests[main.length], backend);
        if ('expected' in s) outcomes.push('stall:' + s.expected);
        else {
          outcomes.push('stall:unexpected');
          v.push({ signature: s.violation, detail: `request ${main.length + 1}: reasons [${ref.requests[main.length]?.reasons.join(', ') ?? ''}]` });
        }
      }
      break;
    }
    case 'closed':
      outcomes.push(main.length === 0 ? 'closed:no-response' : 'closed:after-response');
      if (main.length === 0 && ref.requests[0] !== undefined && ref.requests[0].complete && ref.requests[0].reasons.every((r) => FIDELITY_OK.has(r))) {
        outcomes.push('closed:no-response-to-valid-request' + (ref.requests.length > 1 ? ':pipelined' : ':single'));
      }
      // The node backend answers every request it read, a defective one with 400 (README "The node
      // backend"): a close without any answer to a complete request, or to one with a defect, is a violation there.
      const first = ref.requests[0];
      if (backend === 'node' && main.length === 0 && first !== undefined && (first.complete || firstDefect(first) !== 'valid')) {
        v.push({ signature: 'b:closed-without-answer:' + firstDefect(first), detail: `reasons [${first.reasons.join(', ')}]` });
      }
      if (obs.followUpAt >= 0 && obs.responses.length <= obs.followUpAt) {
        v.push({ signature: 'd:connection-closed-on-follow-up:' + shape(ref), detail: 'closed without answering the follow-up GET' });
      }
      break;
    case 'tunnel':
      outcomes.push('tunnel');
      break;
    case 'aborted':
      outcomes.push('aborted');
      break;
    case 'done':
      break;
  }
  if (obs.followUpAt >= 0 && obs.responses.length > obs.followUpAt) {
    const f = obs.responses[obs.followUpAt]!;
    if (f.status !== 200 || header(f.headers, 'x-fz-up') === undefined) {
      v.push({ signature: `d:follow-up-not-answered-by-upstream:${f.status}:${shape(ref)}`, detail: show(f.body) });
    } else outcomes.push('follow-up:ok');
  }
  return { violations: v, outcomes, gatewayRejects };
}

/** What was notable about a connection's (valid) requests, for naming (d) violations: `trailers`, `chunked`... */
function shape(ref: RefParse): string {
  const tags = new Set<string>();
  for (const r of ref.requests) {
    for (const x of r.reasons) if (x !== 'obs-text') tags.add(x);
    if (r.framing === 'chunked') tags.add('chunked');
    else if (r.framing === 'length' && r.body !== '') tags.add('length');
    if (r.method === 'HEAD') tags.add('head');
    // Finding F20: uWS closes after a 5-byte value in the first Connection line, as if it were `close`.
    const conn = r.headers.find((h) => h[0] === 'connection')?.[1] ?? '';
    if (conn.length === 5 && conn.toLowerCase() !== 'close') tags.add('connection-value-of-5-bytes');
    // Finding F2: uWS trims bytes >= 0x80, so `Connection: \xff close` means close to it.
    if (r.headers.some((h) => h[0] === 'connection' && /[\x80-\xff]/.test(h[1]))) tags.add('connection-non-ascii');
    // Finding F21: a large head answered by the gateway, then the connection drops the next request.
    if (r.headEnd - r.start > 16384) tags.add('large-head');
  }
  if (ref.requests.length > 1) tags.add('pipelined');
  return tags.size === 0 ? 'plain' : [...tags].sort().join('+');
}

/**
 * Property (c) for the requests the upstream received from one case
 * (correlated by the case's tag), and the request smuggling guard: the
 * upstream never gets more distinct requests (by request id; a retry keeps
 * its id) than the client sent on the connection, follow-up included.
 * Violations get `:non-ascii-target` appended when the client's target
 * held non-ASCII bytes (what finding F4 needs to show).
 */
export function judgeUpstream(records: UpstreamRecord[], ref: RefParse, sent: number, answeredByGateway: number): Violation[] {
  const v: Violation[] = [];
  const suffix = ref.requests.some((r) => r.reasons.includes('non-ascii-target')) ? ':non-ascii-target' : '';
  for (const rec of records) {
    for (const x of rec.parsed.violations) v.push({ signature: 'c:' + x + (x.startsWith('upstream-target-') ? '' : suffix), detail: show(rec.head) });
    if (rec.bodyViolation !== null) v.push({ signature: 'c:' + rec.bodyViolation + suffix, detail: show(rec.head) });
  }
  // Requests the gateway answered itself were not forwarded (checked by id in the harness).
  const ids = new Set(records.map((r) => r.rid ?? 'none:' + r.seq));
  if (ids.size > sent - answeredByGateway) {
    const defect = smugglingDefect(ref);
    v.push({
      signature: `c:upstream-got-more-requests-than-client-sent:${defect}${suffix}`,
      detail: `client sent ${sent} (${answeredByGateway} answered by the gateway), upstream got ${ids.size}: ${records.map((r) => show(r.head.slice(0, r.head.indexOf('\r\n')))).join(', ')}`,
    });
  }
  return v;
}
