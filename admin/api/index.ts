/**
 * Admin API v1: the dispatcher. admin.ts hands every `/admin` and
 * `/admin/...` request here.
 *
 * Per request: authenticate (Bearer token, before anything else, so an
 * unauthenticated client learns nothing about which paths exist) -> find
 * the endpoint (404; 405 with Allow) -> role (403) -> query (Ajv, 400 naming
 * the parameter) -> body (415, 413, 400) -> handler -> audit record for
 * writes. Everything about an endpoint comes from the table in endpoints.ts.
 *
 * With TURNPIKE_TEST_HOOKS=1 every answer is also checked against its
 * response schema and a mismatch is a 500, so the published OpenAPI
 * document is verified by the integration tests; otherwise a mismatch is
 * only logged.
 *
 * Nothing here logs a token or an Authorization header.
 */
import type http from 'node:http';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { ConfigParseError, parseConfigText } from '../../common/config/parse.js';
import type { GatewayConfig } from '../../common/config/types.js';
import { log } from '../../common/log.js';
import type { AdminContext } from '../context.js';
import { AuditLog, type AuditRecord, configHash, defaultAuditLog } from './audit.js';
import {
  type Principal, TokenStore, type TokenEntry, bearerToken, generateToken, loadTokens, removeGeneratedToken, tokenDigest,
  writeGeneratedToken,
} from './auth.js';
import { ENDPOINTS, type Endpoint, type HandlerResult } from './endpoints.js';
import { AdminErrors, ApiError } from './errors.js';
import { buildOpenApi } from './openapi.js';
import * as S from './schemas.js';

export { ENDPOINTS } from './endpoints.js';
export { buildOpenApi } from './openapi.js';

export interface AdminApiOptions {
  /**
   * The port the admin listener bound (admin.port, or the one picked for 0):
   * it names the generated token file and the default audit log.
   */
  adminPort: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Check every answer against its schema and answer 500 on a mismatch. Default: TURNPIKE_TEST_HOOKS=1. */
  strictResponses?: boolean;
  /** The token written to the generated token file when no token is configured (the engine's, kept across admin restarts). Default: a new one. */
  fallbackToken?: string;
}

const MAX_WARNINGS = 20;
/**
 * A request answered before its body was read (401, 413, 415, ...): up to
 * this much of the body is read and dropped first, so the client, still
 * sending, gets the answer instead of a connection reset; past it the
 * connection is closed.
 */
const DRAIN_MAX_BYTES = 4 * 1_048_576;
/** ... and waited for at most this long. */
const DRAIN_MAX_MS = 2_000;

// -- Ajv ----------------------------------------------------------------------

/** Query strings: strings coerced to the schema's types, defaults filled in. */
const queryAjv = new Ajv({ allErrors: false, coerceTypes: true, useDefaults: true, strict: true, allowUnionTypes: true });
/** Answers (test mode): formats are documentation only. */
const responseAjv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true, validateFormats: false });

const compiled = new Map<object, ValidateFunction>();
function validatorFor(ajv: Ajv, schema: object): ValidateFunction {
  let v = compiled.get(schema);
  if (v === undefined) {
    v = ajv.compile(schema);
    compiled.set(schema, v);
  }
  return v;
}

function queryProblem(e: ErrorObject, raw: Record<string, unknown>, known: string[], props: Record<string, { description?: string }> = {}): ApiError {
  if (e.keyword === 'additionalProperties') {
    const name = String((e.params as { additionalProperty: string }).additionalProperty);
    const hint = known.length === 0 ? 'this endpoint takes no query parameters' : `known: ${known.join(', ')}`;
    return new ApiError(AdminErrors.INVALID_QUERY, `unknown query parameter ${JSON.stringify(name)} (${hint})`, { parameter: name });
  }
  if (e.keyword === 'required') {
    const name = String((e.params as { missingProperty: string }).missingProperty);
    // The parameter's own description says what to send.
    const what = props[name]?.description;
    return new ApiError(AdminErrors.INVALID_QUERY, `query parameter ${name} is required${what === undefined ? '' : `: ${what}`}`, { parameter: name });
  }
  const name = e.instancePath.replace(/^\//, '');
  const got = raw[name];
  return new ApiError(AdminErrors.INVALID_QUERY,
    `query parameter ${name}: ${e.message ?? 'invalid'}${got === undefined ? '' : ` (got ${JSON.stringify(got)})`}`, { parameter: name });
}

function parseQuery(search: string, e: Endpoint): Record<string, unknown> {
  const raw: Record<string, unknown> = {};
  for (const [k, v] of new URLSearchParams(search)) {
    if (Object.prototype.hasOwnProperty.call(raw, k)) {
      throw new ApiError(AdminErrors.INVALID_QUERY, `query parameter ${k}: given more than once`, { parameter: k });
    }
    Object.defineProperty(raw, k, { value: v, enumerable: true, writable: true, configurable: true });
  }
  const data = { ...raw };
  const validate = validatorFor(queryAjv, e.query);
  if (!validate(data)) {
    const props = (e.query['properties'] ?? {}) as Record<string, { description?: string }>;
    throw queryProblem(validate.errors![0]!, raw, Object.keys(props), props);
  }
  return data;
}

// -- HTTP helpers -------------------------------------------------------------

function hasBody(req: http.IncomingMessage): boolean {
  const cl = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (cl !== undefined && cl !== '0');
}

function readBody(req: http.IncomingMessage, max: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    req.on('data', (c: Buffer) => {
      if (done) return;
      size += c.length;
      if (size > max) {
        done = true;
        reject(new ApiError(AdminErrors.BODY_TOO_LARGE, `The request body exceeds ${max} bytes (${sizeText(max)}), the most this endpoint takes; send a smaller body.`));
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => { if (!done) { done = true; resolve(Buffer.concat(chunks)); } });
    req.on('error', (err) => { if (!done) { done = true; reject(err); } });
  });
}

/** 1048576 -> "1 MiB", 4096 -> "4 KiB", 1000 -> "1000 bytes". */
function sizeText(bytes: number): string {
  if (bytes % 1_048_576 === 0) return `${bytes / 1_048_576} MiB`;
  if (bytes % 1024 === 0) return `${bytes / 1024} KiB`;
  return `${bytes} bytes`;
}

function mediaType(req: http.IncomingMessage): string {
  return (req.headers['content-type'] ?? '').split(';', 1)[0]!.trim().toLowerCase();
}

async function parseBody(req: http.IncomingMessage, e: Endpoint): Promise<unknown> {
  const spec = e.body!;
  const type = mediaType(req);
  if (!spec.contentTypes.includes(type)) {
    throw new ApiError(AdminErrors.UNSUPPORTED_MEDIA_TYPE,
      `${type === '' ? 'The request has no Content-Type' : `Content-Type ${type} is not accepted here`}; send ${spec.contentTypes.join(', ')}.`);
  }
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > spec.maxBytes) {
    throw new ApiError(AdminErrors.BODY_TOO_LARGE, `The request body (${declared} bytes) exceeds ${spec.maxBytes} bytes (${sizeText(spec.maxBytes)}), the most this endpoint takes; send a smaller body.`);
  }
  const text = (await readBody(req, spec.maxBytes)).toString('utf8');
  if (text.trim() === '') throw new ApiError(AdminErrors.MALFORMED_BODY, `The request body is empty; this endpoint takes ${spec.description}`);
  const json = type === 'application/json';
  try {
    return parseConfigText(text, json ? 'body.json' : 'body.yaml');
  } catch (err) {
    if (!(err instanceof ConfigParseError)) throw err;
    const at = err.line > 0 ? ` at line ${err.line}, column ${err.col}` : '';
    const reason = err.reason.replace(/\s*\((?:JSON|YAML) [a-z]+ error; fix the file and try again\)$/, '');
    throw new ApiError(AdminErrors.MALFORMED_BODY, `The request body is not valid ${json ? 'JSON' : 'YAML'}${at}: ${reason}; fix it and send it again.`);
  }
}

/** Reads and drops the rest of a request body; false when it is longer than `max`, slower than DRAIN_MAX_MS, or failed. */
function drain(req: http.IncomingMessage, max: number): Promise<boolean> {
  if (req.readableEnded || req.complete) return Promise.resolve(true);
  if (Number(req.headers['content-length']) > max) return Promise.resolve(false);
  return new Promise((resolve) => {
    let size = 0;
    const timer = setTimeout(() => { req.pause(); done(false); }, DRAIN_MAX_MS);
    const done = (ok: boolean) => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onFail);
      req.off('close', onClose);
      resolve(ok);
    };
    const onData = (c: Buffer) => { size += c.length; if (size > max) { req.pause(); done(false); } };
    const onEnd = () => done(true);
    const onFail = () => done(false);
    const onClose = () => done(req.complete);
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onFail);
    req.on('close', onClose);
    req.resume();
  });
}

function send(req: http.IncomingMessage, res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const s = JSON.stringify(body);
  const h: Record<string, string | number> = {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(s),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    ...headers,
  };
  // Answering before the body was read: close, rather than read an unknown amount.
  if (hasBody(req) && !req.complete && !req.readableEnded) h['connection'] = 'close';
  res.writeHead(status, h);
  res.end(s);
}

// -- the API ------------------------------------------------------------------

/** Endpoints by path, for 404/405 (paths without parameters). */
const BY_PATH = new Map<string, Endpoint[]>();
/** Endpoints of paths with `{param}` segments: the path as a regular expression, its parameter names. */
const TEMPLATES = new Map<string, { re: RegExp; names: string[]; list: Endpoint[] }>();
for (const e of ENDPOINTS) {
  if (e.path.includes('{')) {
    let t = TEMPLATES.get(e.path);
    if (t === undefined) {
      const names: string[] = [];
      const re = new RegExp('^' + e.path.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\{([A-Za-z]+)\}/g, (_m, n: string) => { names.push(n); return '([^/]+)'; }) + '$');
      TEMPLATES.set(e.path, (t = { re, names, list: [] }));
    }
    t.list.push(e);
    continue;
  }
  const list = BY_PATH.get(e.path) ?? [];
  list.push(e);
  BY_PATH.set(e.path, list);
}

/** The endpoints of a request path and its path parameters (percent-decoded), or null. */
function endpointsOf(path: string): { list: Endpoint[]; params: Record<string, string> } | null {
  const list = BY_PATH.get(path);
  if (list !== undefined) return { list, params: {} };
  for (const t of TEMPLATES.values()) {
    const m = t.re.exec(path);
    if (m === null) continue;
    const params: Record<string, string> = {};
    try {
      t.names.forEach((n, i) => { params[n] = decodeURIComponent(m[i + 1]!); });
    } catch {
      return null; // a malformed percent-escape: no such path
    }
    return { list: t.list, params };
  }
  return null;
}

function allowOf(list: readonly Endpoint[]): string {
  return list.flatMap((e) => (e.method === 'GET' ? ['GET', 'HEAD'] : [e.method])).join(', ');
}

/** The request handler, and `stop()`: the generated token file goes away with the gateway. */
export interface AdminApi {
  (req: http.IncomingMessage, res: http.ServerResponse): void;
  stop(): void;
}

/**
 * Builds the admin API request handler, once the admin listener is bound
 * (so a gateway that cannot get its admin port never touches the token file
 * or audit log of the one that holds it). Reads the tokens and opens the
 * audit log now: a bad tokens file or an unwritable audit log throws, which
 * fails the gateway's start with the message (file and line).
 */
export function createAdminApi(ctx: AdminContext, opts: AdminApiOptions): AdminApi {
  const env = opts.env ?? process.env;
  const adminPort = opts.adminPort;
  const auditPath = (c: GatewayConfig) => c.admin.auditLog ?? defaultAuditLog(adminPort);
  const cwd = opts.cwd ?? process.cwd();
  const strict = opts.strictResponses ?? env['TURNPIKE_TEST_HOOKS'] === '1';
  const warnings: string[] = [];
  const warn = (message: string) => {
    log('warn', message);
    warnings.push(message);
    if (warnings.length > MAX_WARNINGS) warnings.shift();
  };

  let generated: TokenEntry | null = null;
  let store = new TokenStore([]);
  let lastConfig: GatewayConfig = ctx.config();

  /** Configured tokens, else the generated one (created on first need). */
  const useTokens = (entries: TokenEntry[], config: GatewayConfig): void => {
    if (entries.length > 0) {
      store = new TokenStore(entries);
      if (!entries.some((e) => e.role === 'admin')) warn('no admin API token has the admin role: the config cannot be changed through the API');
      return;
    }
    if (generated === null) {
      const token = opts.fallbackToken ?? generateToken();
      try {
        const { path } = writeGeneratedToken(cwd, adminPort, token);
        const host = config.admin.host === '0.0.0.0' ? '127.0.0.1' : config.admin.host.includes(':') ? `[${config.admin.host}]` : config.admin.host;
        const where = `http://${host}:${adminPort}`;
        log('warn', 'no admin API token configured; generated one (it changes on every start)', {
          file: path,
          usage: `curl -H "Authorization: Bearer $(cat ${path})" ${where}/admin/status`,
          hint: 'set TURNPIKE_ADMIN_TOKEN or admin.tokensFile to choose your own tokens',
        });
        generated = { name: 'generated', role: 'admin', digest: tokenDigest(token), origin: path };
      } catch (e) {
        warn(`no admin API token configured and none could be generated (${(e as Error).message}); the admin API refuses every request until TURNPIKE_ADMIN_TOKEN or admin.tokensFile is set`);
      }
    }
    store = new TokenStore(generated === null ? [] : [generated]);
  };

  const start = loadTokens({ env, tokensFile: lastConfig.admin.tokensFile, cwd });
  for (const w of start.warnings) warn(w);
  useTokens(start.entries, lastConfig);
  const audit = new AuditLog();
  audit.open(auditPath(lastConfig), cwd);

  /** After a reload: re-read the tokens (rotation = edit the file + reload) and follow a moved audit log. */
  const refresh = (): void => {
    const config = ctx.config();
    if (config === lastConfig) return;
    const prev = lastConfig;
    lastConfig = config;
    try {
      const t = loadTokens({ env, tokensFile: config.admin.tokensFile, cwd });
      useTokens(t.entries, config);
    } catch (e) {
      warn(`${(e as Error).message}\n(config version ${config.version}: the previous admin tokens stay in use)`);
    }
    if (config.admin.auditLog !== prev.admin.auditLog) {
      try {
        audit.open(auditPath(config), cwd);
      } catch (e) {
        warn(`${(e as Error).message} (the audit log stays at ${audit.path})`);
      }
    }
  };

  let openapi: Record<string, unknown> | null = null;
  const openapiDoc = () => (openapi ??= buildOpenApi(ENDPOINTS, ctx.version));

  const checkAnswer = (e: Endpoint | null, status: number, body: unknown): ApiError | null => {
    const schema = e?.responses[status]?.schema ?? (status >= 400 ? S.errorBody : null);
    if (schema === null) {
      return new ApiError(AdminErrors.INTERNAL, `${e?.method} ${e?.path} answered ${status}, which its table entry does not list`);
    }
    const v = validatorFor(responseAjv, schema);
    if (v(body)) return null;
    const why = (v.errors ?? []).slice(0, 5).map((x) => `${x.instancePath || '/'} ${x.message}`).join('; ');
    return new ApiError(AdminErrors.INTERNAL, `answer ${status} of ${e?.method ?? ''} ${e?.path ?? ''} does not match its schema: ${why}`);
  };

  const answer = async (req: http.IncomingMessage, res: http.ServerResponse, e: Endpoint | null, status: number, body: unknown, headers: Record<string, string> = {}) => {
    if (hasBody(req)) await drain(req, DRAIN_MAX_BYTES);
    const bad = checkAnswer(e, status, body);
    if (bad !== null) {
      log(strict ? 'error' : 'warn', 'admin API answer does not match the OpenAPI schema', { problem: bad.message });
      if (strict) return send(req, res, 500, bad.body());
    }
    send(req, res, status, body, headers);
  };

  const record = (e: Endpoint, p: Principal, before: GatewayConfig, path: string, status: number, outcome: HandlerResult['audit'] | null) => {
    const now = ctx.config();
    const entry: AuditRecord = {
      time: new Date().toISOString(),
      actor: p.name,
      role: p.role,
      action: e.audit!,
      method: e.method,
      path,
      result: outcome?.result ?? (status === 403 ? 'forbidden' : status >= 500 ? 'error' : 'rejected'),
      status,
      dryRun: outcome?.dryRun ?? false,
      versionBefore: before.version,
      versionAfter: outcome?.versionAfter ?? now.version,
      beforeHash: configHash(before),
      afterHash: configHash(now),
      changes: outcome?.changes ?? null,
      errors: (outcome?.errors ?? []).slice(0, 50),
    };
    const problem = audit.append(entry);
    if (problem !== null) warn(`admin.auditLog: ${problem}`);
  };

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    refresh();
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    const search = q === -1 ? '' : url.slice(q + 1);

    const token = bearerToken(req.headers['authorization']);
    const principal = token === null ? null : store.authenticate(token);
    if (principal === null) {
      const e = new ApiError(AdminErrors.UNAUTHORIZED,
        token === null ? 'Missing admin token; send "Authorization: Bearer <token>".' : 'Invalid admin token.');
      return answer(req, res, null, 401, e.body(), {
        'www-authenticate': token === null ? 'Bearer realm="turnpike-admin"' : 'Bearer realm="turnpike-admin", error="invalid_token"',
      });
    }

    const found = endpointsOf(path);
    if (found === null) {
      const e = new ApiError(AdminErrors.NOT_FOUND, `No admin endpoint ${path}; GET /admin/openapi.json lists them.`);
      return answer(req, res, null, 404, e.body());
    }
    const list = found.list;
    const method = req.method === 'HEAD' ? 'GET' : req.method;
    const endpoint = list.find((x) => x.method === method);
    if (endpoint === undefined) {
      const allow = allowOf(list);
      const e = new ApiError(AdminErrors.METHOD_NOT_ALLOWED, `${path} accepts ${allow}, not ${req.method}.`);
      return answer(req, res, null, 405, e.body(), { allow });
    }

    const before = ctx.config();
    let result: HandlerResult;
    let headers: Record<string, string> = {};
    try {
      if (endpoint.role === 'admin' && principal.role !== 'admin') {
        throw new ApiError(AdminErrors.FORBIDDEN, `${endpoint.method} ${endpoint.path} changes the gateway and needs a token with the admin role; "${principal.name}" has the ${principal.role} role.`);
      }
      const query = parseQuery(search, endpoint);
      let body: unknown = undefined;
      if (endpoint.body !== null) {
        if (!(endpoint.body.optional === true && !hasBody(req))) body = await parseBody(req, endpoint);
      } else if (endpoint.method !== 'GET' && hasBody(req)) {
        const got = await readBody(req, 64 * 1024).catch(() => Buffer.alloc(1));
        if (got.length > 0) {
          throw new ApiError(AdminErrors.UNEXPECTED_BODY, `${endpoint.method} ${endpoint.path} takes no body${endpoint.audit === 'config.reload' ? '; to apply a new document use PUT /admin/config' : ''}.`);
        }
      }
      result = await endpoint.handler({
        api: ctx, principal, params: found.params, query, body, audit, warnings: () => [...warnings], openapi: openapiDoc,
      });
    } catch (err) {
      let e: ApiError;
      if (err instanceof ApiError) {
        e = err;
        headers = err.headers;
      } else {
        log('error', 'admin API handler failed', { method: endpoint.method, path: endpoint.path, error: (err as Error)?.stack ?? String(err) });
        e = new ApiError(AdminErrors.INTERNAL);
      }
      const problems = Array.isArray(e.details['errors']) ? e.details['errors'] as { path: string; message: string }[] : [{ path: '', message: e.message }];
      result = { status: e.status, body: e.body(), audit: { result: e.status === 403 ? 'forbidden' : e.status >= 500 ? 'error' : 'rejected', dryRun: false, versionAfter: before.version, changes: null, errors: problems } };
    }
    if (endpoint.audit !== null) record(endpoint, principal, before, path, result.status, result.audit ?? null);
    if (result.raw !== undefined) {
      const text = result.raw.text;
      res.writeHead(result.status, {
        'content-type': result.raw.contentType, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store', 'x-content-type-options': 'nosniff',
      });
      res.end(text);
      return;
    }
    await answer(req, res, endpoint, result.status, result.body, headers);
  }

  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    handle(req, res).catch((err: Error) => {
      log('error', 'admin API request failed', { error: err?.stack ?? String(err) });
      if (!res.headersSent) send(req, res, 500, new ApiError(AdminErrors.INTERNAL).body());
      else res.destroy();
    });
  };
  return Object.assign(handler, {
    stop(): void {
      const g = generated as TokenEntry | null;
      if (g !== null) removeGeneratedToken(g.origin, g.digest);
      audit.close();
    },
  });
}
