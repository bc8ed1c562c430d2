/**
 * The Bun backend of a worker: Bun.serve({ reusePort }) in each worker
 * thread, and Bun's native fetch() as the upstream client (on Bun it is the
 * cheapest client there is: ~10 µs per proxied request here, see
 * ENVIRONMENT.md). Routing, path normalisation, header plans, limits, error
 * bodies and metrics are the same code as the uWS backend's; only the
 * transport differs.
 *
 * Differences from the uWS backend (documented in the README):
 *  - Bun's Headers merge repeated request headers with ", " (Set-Cookie
 *    excepted), so the upstream sees one line per name;
 *  - connect/response timeouts are enforced together by one AbortSignal
 *    (timeouts.connectMs + timeouts.responseMs) and body idle by Bun itself.
 */
import { Errors, errorBody, type GatewayErrorDef } from '../../common/errors.js';
import { DURATION_BUCKETS, G_IN_FLIGHT, S_UPSTREAM, methodIndex, observe, slotBase } from '../../common/metrics-layout.js';
import { countError, recordRequest } from '../request-metrics.js';
import type { Dataplane } from '../dataplane.js';
import { connectionListed, isSafeRequestId } from '../proxy/headers.js';
import { parseContentLength } from '../proxy/http1-parser.js';
import { MATCH_FOUND } from '../router/types.js';
import { normalizeHost, normalizePath } from '../router/normalize.js';
import type { ServerOptions } from './uws-server.js';

declare const Bun: any;

export class BunServer {
  private dp: Dataplane;
  private server: any = null;
  private ridCounter = 0;
  private readonly ridPrefix: string;
  inFlight = 0;
  draining = false;

  constructor(dp: Dataplane, private readonly opts: ServerOptions) {
    this.dp = dp;
    this.ridPrefix = Math.random().toString(36).slice(2, 10) + '-b' + opts.workerIndex.toString(36) + '-';
  }

  async listen(): Promise<number> {
    const limits = this.dp.config.server.limits;
    this.server = Bun.serve({
      hostname: this.opts.host,
      port: this.opts.port,
      reusePort: true,
      // Bun refuses larger bodies itself; per-route limits are checked below.
      maxRequestBodySize: Math.max(limits.maxBodyBytes, ...this.dp.routes.map((r) => r.maxBodyBytes)),
      fetch: (req: Request, server: any) => this.onRequest(req, server),
      error: () => this.errorResponse(Errors.INTERNAL, this.nextRequestId(), false),
    });
    const port = this.server.port as number;
    this.opts.onListen(port);
    return port;
  }

  setDataplane(dp: Dataplane): void {
    this.dp = dp;
  }

  // Bun's fetch pools upstream connections itself; nothing to retire here.

  stopListening(): void {
    this.draining = true;
    // stop(false): stop accepting, let in-flight requests finish.
    this.server?.stop(false);
  }

  close(): void {
    this.stopListening();
    this.server?.stop(true);
    this.server = null;
  }

  private nextRequestId(): string {
    return this.ridPrefix + (++this.ridCounter).toString(36);
  }

  private count(e: GatewayErrorDef, slot: number, mIdx: number, t0: number): void {
    if (!this.dp.config.metrics.enabled) return;
    countError(this.opts.metrics, e.code);
    recordRequest(this.opts.metrics, this.opts.latency, slot, mIdx, e.status, performance.now() - t0);
  }

  private errorResponse(e: GatewayErrorDef, requestId: string, isHead: boolean, extra?: Record<string, string>): Response {
    const headers: Record<string, string> = { 'content-type': 'application/json', [this.dp.config.server.requestIdHeader]: requestId, ...extra };
    return new Response(isHead ? null : errorBody(e, requestId), { status: e.status, headers });
  }

  private async onRequest(req: Request, server: any): Promise<Response> {
    const t0 = performance.now();
    const dp = this.dp;
    const cfg = dp.config.server;
    const limits = cfg.limits;
    const method = req.method;
    const mIdx = methodIndex(method);
    const isHead = method === 'HEAD';
    const ridName = cfg.requestIdHeader;
    const incomingRid = req.headers.get(ridName);
    const requestId = incomingRid !== null && isSafeRequestId(incomingRid) ? incomingRid : this.nextRequestId();
    const reject = (e: GatewayErrorDef, slot = 0, extra?: Record<string, string>) => {
      this.count(e, slot, mIdx, t0);
      return this.errorResponse(e, requestId, isHead, extra);
    };
    if (this.draining) return reject(Errors.SHUTTING_DOWN);

    // The request target: Bun hands an absolute URL; take path and query verbatim.
    const url = req.url;
    const pathStart = url.indexOf('/', url.indexOf('://') + 3);
    const target = pathStart === -1 ? '/' : url.slice(pathStart);
    if (target.length > limits.maxUrlBytes) return reject(Errors.URL_TOO_LONG);
    const q = target.indexOf('?');
    const rawPath = q === -1 ? target : target.slice(0, q);
    const query = q === -1 ? '' : target.slice(q + 1);

    const flat: string[] = [];
    let bytes = 0;
    req.headers.forEach((v: string, k: string) => {
      flat.push(k, v);
      bytes += k.length + v.length;
    });
    if (flat.length > limits.maxHeaderCount * 2 || bytes > limits.maxHeaderBytes) return reject(Errors.HEADERS_TOO_LARGE);
    const cl = req.headers.get('content-length');
    const te = req.headers.get('transfer-encoding');
    let contentLength = -1;
    if (cl !== null) {
      contentLength = parseContentLength(cl);
      if (contentLength < 0 || te !== null) return reject(Errors.BAD_REQUEST);
    } else if (te !== null && te.toLowerCase() !== 'chunked') {
      return reject(Errors.BAD_REQUEST);
    }

    const path = normalizePath(rawPath);
    if (path === null) return reject(Errors.BAD_PATH);
    const hostHeader = req.headers.get('host') ?? '';
    const m = dp.router.find(method, normalizeHost(hostHeader), path, flat, query);
    if (m === null) return reject(Errors.ROUTE_NOT_FOUND);
    if (m.kind !== MATCH_FOUND) return reject(Errors.METHOD_NOT_ALLOWED, 0, { allow: m.allow });
    const route = m.data!;
    if (contentLength > route.maxBodyBytes) return reject(Errors.BODY_TOO_LARGE, route.slot);

    const upstreamPath = route.rewrite === null ? path : route.rewrite(path, m.paramNames, m.params);
    const clientIp: string = server.requestIP(req)?.address ?? '';
    const pool = route.upstream.pick(clientIp);
    const headers = new Headers();
    const drop = route.requestPlan.drop;
    const conn = req.headers.get('connection');
    const listed = conn !== null ? connectionListed(conn) : null;
    for (let i = 0; i < flat.length; i += 2) {
      const k = flat[i]!;
      if (drop.has(k) || k.startsWith('proxy-') || (listed !== null && listed.has(k))) continue;
      headers.append(k, flat[i + 1]!);
    }
    headers.set('host', route.preserveHost && hostHeader !== '' ? hostHeader : pool.hostHeader);
    const fwd = cfg.forwarded;
    const xff = req.headers.get('x-forwarded-for');
    if (fwd.xForwardedFor) headers.set('x-forwarded-for', xff === null ? clientIp : `${xff}, ${clientIp}`);
    if (fwd.xForwardedProtoHost) {
      headers.set('x-forwarded-proto', 'http');
      headers.set('x-forwarded-host', hostHeader);
    }
    if (fwd.forwarded) {
      const forIp = clientIp.includes(':') ? `"[${clientIp}]"` : clientIp;
      const el = `for=${forIp};host="${hostHeader.replace(/["\\]/g, '')}";proto=http`;
      const prev = req.headers.get('forwarded');
      headers.set('forwarded', prev === null ? el : `${prev}, ${el}`);
    }
    headers.set(ridName, requestId);
    const extraLines = route.requestPlan.extraLines;
    if (extraLines !== '') {
      for (const line of extraLines.split('\r\n')) {
        const c = line.indexOf(':');
        if (c > 0) headers.append(line.slice(0, c), line.slice(c + 2));
      }
    }
    if (contentLength >= 0) headers.set('content-length', String(contentLength));

    const t = route.upstream.config.timeouts;
    const cells = this.opts.metrics;
    const base = slotBase(route.slot);
    this.inFlight++;
    cells[G_IN_FLIGHT]!++;
    const tSent = performance.now();
    let up: Response;
    try {
      up = await fetch(`http://${pool.hostHeader}${query === '' ? upstreamPath : `${upstreamPath}?${query}`}`, {
        method,
        headers,
        body: method === 'GET' || method === 'HEAD' ? undefined : req.body,
        redirect: 'manual',
        decompress: false,
        keepalive: true,
        signal: AbortSignal.timeout(t.connectMs + t.responseMs),
        duplex: 'half', // stream the request body
      } as RequestInit);
    } catch (err) {
      this.inFlight--;
      cells[G_IN_FLIGHT]!--;
      const name = (err as Error).name;
      const code = (err as { code?: string }).code ?? '';
      if (name === 'TimeoutError' || name === 'AbortError') return reject(Errors.UPSTREAM_TIMEOUT, route.slot);
      if (code === 'ConnectionRefused' || code === 'ECONNREFUSED' || code === 'FailedToOpenSocket') {
        return reject(Errors.UPSTREAM_CONNECT_FAILED, route.slot);
      }
      return reject(Errors.UPSTREAM_RESET, route.slot);
    }
    const metricsOn = dp.config.metrics.enabled;
    const upMs = performance.now() - tSent;
    if (metricsOn) {
      observe(cells, base + S_UPSTREAM, DURATION_BUCKETS, upMs / 1000);
      this.opts.latency?.recordUpstream(upMs);
    }
    const out = new Headers();
    const rdrop = route.responsePlan.drop;
    const rconn = up.headers.get('connection');
    const rlisted = rconn !== null ? connectionListed(rconn) : null;
    let sawRid = false;
    up.headers.forEach((v: string, k: string) => {
      if (k === 'set-cookie' || rdrop.has(k) || (rlisted !== null && rlisted.has(k))) return;
      if (k === ridName) sawRid = true;
      out.append(k, v);
    });
    // Headers.forEach merges Set-Cookie; getSetCookie keeps each one apart.
    if (!rdrop.has('set-cookie')) for (const c of up.headers.getSetCookie()) out.append('set-cookie', c);
    if (!sawRid) out.set(ridName, requestId);
    const extra = route.responsePlan.extra;
    for (let i = 0; i < extra.length; i += 2) out.append(extra[i]!, extra[i + 1]!);
    const status = up.status;
    const noBody = isHead || status === 204 || status === 304;
    if (isHead) {
      const upLen = up.headers.get('content-length');
      if (upLen !== null) out.set('content-length', upLen);
    }
    this.inFlight--;
    cells[G_IN_FLIGHT]!--;
    if (metricsOn) recordRequest(cells, this.opts.latency, route.slot, mIdx, status, performance.now() - t0);
    return new Response(noBody ? null : up.body, { status, statusText: up.statusText, headers: out });
  }
}
