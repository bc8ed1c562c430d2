/**
 * Admin thread: the control-plane HTTP server (127.0.0.1 by default).
 *
 *   GET /health   200 {"status":"ok"} when every worker serves; 503 while
 *                 starting, draining or after a worker died (load balancers
 *                 stop sending at once when the gateway drains). No auth.
 *   GET /metrics  Prometheus text, summed across workers (see metrics.ts).
 *                 No auth: scrapers run on the same host or network.
 *   /admin/...    the admin API v1 (api/), behind an admin token.
 *
 * The thread also runs the Redis sync of cluster-wide rate limits
 * (rate-limit/): the engine starts it whenever `redis` is set, with or
 * without the listener (`admin.enabled: false` runs the thread without
 * one, and reports port 0).
 *
 * node:http is used here, not uWS: nothing on this thread is hot, and it
 * keeps the admin side independent of the data plane's server backend.
 */
import { RateLimitTable, clockOffset } from '../common/rate-limit-layout.js';
import http from 'node:http';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import type { GatewayConfig } from '../common/config/types.js';
import type { AdminData, ConfigDocument, FromAdmin, ReloadResult, SlotEntries, ToAdmin } from '../common/protocol.js';
import { C_DRAINING, C_WORKER_COUNT, workerState } from '../common/protocol.js';
import { configureLog, logLevel, setLogLevel, setLogThread } from '../common/log.js';
import { type AdminApi, createAdminApi } from './api/index.js';
import { LatencyCollector, type AdminContext } from './context.js';
import { MetricsView } from './metrics.js';
import { RateLimitSync } from './rate-limit/index.js';
import { HealthChecker, resilienceMetrics } from './upstream-health.js';
import { Discovery } from './discovery/index.js';
import { IdentityService } from './identity/service.js';
import { AuthzListener } from './identity/authz.js';
import { RedirectListener } from './redirect-http.js';
import { readTargetState } from '../common/upstream-state-layout.js';
import { FIRST_TARGET_SLOT, MAX_TARGET_SLOTS } from '../common/metrics-layout.js';
import { needsGuard } from '../workers/proxy/guard.js';
import type { TargetSlotEntries, TargetSourceEntries, UpstreamSlotEntries } from '../common/protocol.js';

/** Upstreams whose targets have resilience state (workers/proxy/guard.ts needsGuard). */
function guardedUpstreams(config: GatewayConfig): ReadonlySet<string> {
  return new Set(Object.values(config.upstreams).filter(needsGuard).map((u) => u.name));
}

if (isMainThread || parentPort === null) throw new Error('admin/admin.js runs as a worker thread; start the gateway with `turnpike start`.');

const port = parentPort;
const data = workerData as AdminData;
setLogThread('admin', data.logRing);
setLogLevel(data.logLevel);
const control = new Int32Array(data.control);
const rateLimitTable = new RateLimitTable(data.rateLimitTable);
const offset = clockOffset(data.clock);
const rateLimitSync = new RateLimitSync({ table: rateLimitTable, now: () => performance.now() + offset });
// Upstream resilience (common/upstream-state-layout.ts): active health checks write it, /metrics and the admin API read it.
const upstreamState = new Int32Array(data.upstreamState);
const healthChecker = new HealthChecker(upstreamState);
let targetSlots: TargetSlotEntries = data.targetSlots;
let upstreamSlots: UpstreamSlotEntries = data.upstreamSlots;
let guarded: ReadonlySet<string> = guardedUpstreams(data.config);
// Targets from DNS and the registry: snapshots go to the engine, which merges them into the config every thread runs.
const discovery = new Discovery({ push: (upstreams) => send({ type: 'discovery', upstreams }), seed: data.discovered });
/** `upstream url` -> source, for the targets discovery added to the running config. */
const sourceMap = (entries: TargetSourceEntries) => new Map(entries.map(([u, url, s]) => [u + ' ' + url, s]));
let sources = sourceMap(data.sources);
/** Upstreams with retries (their retry counters are shown in /metrics). */
const retryingUpstreams = (config: GatewayConfig): ReadonlySet<string> => new Set(Object.values(config.upstreams).filter((u) => u.retry !== null).map((u) => u.name));
let retrying: ReadonlySet<string> = retryingUpstreams(data.config);
// Consumers and API keys (issue 12): the store, the workers' key lookups on their stats lines, invalidation, purge.
const identity = new IdentityService(data.config);
const metrics = new MetricsView(data.metrics, control, data.slots, {
  targetSlots: data.targetSlots, config: data.config, version: data.version, rateLimitTable, clockOffset: offset,
  rateLimitSync: () => rateLimitSync.stats(),
  extra: [...resilienceMetrics(upstreamState, () => targetSlots, () => upstreamSlots, () => guarded, () => retrying), ...discovery.metrics(() => config), ...identity.metrics()],
});
healthChecker.configure(data.config, data.targetSlots);
const collector = new LatencyCollector(data.statsPorts);
data.statsPorts.forEach((p, i) => { if (p !== null) identity.attach(i, p); });
const identityOpened = identity.start();
// The nginx auth_request listener (authz; identity/authz.ts): decides as a worker would, on its own identity line.
const authz = new AuthzListener({ service: identity, now: () => performance.now() + offset });
let config: GatewayConfig = data.config;
let document: ConfigDocument = data.document;
let slots: SlotEntries = data.slots;

function send(msg: FromAdmin): void {
  port.postMessage(msg);
}

let nextReloadId = 1;
const pendingReloads = new Map<number, (r: ReloadResult) => void>();

const ctx: AdminContext = {
  version: data.version,
  startedAt: data.startedAt,
  control,
  metrics,
  config: () => config,
  configDocument: () => document,
  slots: () => slots,
  reload(req) {
    const id = nextReloadId++;
    return new Promise<ReloadResult>((resolve) => {
      pendingReloads.set(id, resolve);
      send({ type: 'reload', id, actor: req.actor, ...(req.doc !== undefined ? { doc: req.doc } : {}), ...(req.dryRun ? { dryRun: true } : {}) });
    });
  },
  latency: () => collector.collect(),
  targetState(upstream, url) {
    const slot = targetSlots.find(([u, t]) => u === upstream && t === url)?.[2];
    if (slot === undefined || slot < FIRST_TARGET_SLOT || slot >= MAX_TARGET_SLOTS || !guarded.has(upstream)) return null;
    return readTargetState(upstreamState, slot, performance.now() + offset);
  },
  discovery,
  identity,
  targetSource(upstream, url) {
    const source = sources.get(upstream + ' ' + url) ?? 'config';
    return { source, expiresAt: source === 'registry' ? discovery.expiresAt(upstream, url) : null };
  },
  logLevel: () => logLevel(),
  setLogLevel(level, actor) {
    setLogLevel(level);
    send({ type: 'log-level', level, actor });
  },
};

/** 200 only when not draining and every worker is ready (a stalled worker, its event loop blocked, counts against). */
export function health(): { ok: boolean; body: unknown } {
  const n = Atomics.load(control, C_WORKER_COUNT);
  const workers = [];
  let ready = 0;
  for (let i = 0; i < n; i++) {
    const state = workerState(control, i);
    if (state === 'ready') ready++;
    workers.push({ index: i, state });
  }
  const draining = Atomics.load(control, C_DRAINING) === 1;
  const ok = !draining && ready === n;
  return { ok, body: { status: draining ? 'draining' : ok ? 'ok' : 'degraded', workers } };
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  const s = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s), 'cache-control': 'no-store' });
  res.end(s);
}

/**
 * Built once the listener is bound: the generated token file and the default
 * audit log are named by the bound port, and a gateway that cannot get its
 * admin port must not touch the files of the one that holds it.
 */
let api: AdminApi | null = null;

const server = http.createServer((req, res) => {
  const url = req.url ?? '/';
  const path = url.split('?', 1)[0];
  if (path === '/health' || path === '/metrics') {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      json(res, 405, { error: { code: 'method_not_allowed', message: `${path} is read-only: use GET.` } });
      return;
    }
    if (path === '/health') {
      const h = health();
      json(res, h.ok ? 200 : 503, h.body);
      return;
    }
    metrics.scrape().then((text) => {
      res.writeHead(200, { 'content-type': metrics.registry.contentType, 'cache-control': 'no-store' });
      res.end(text);
    }, (err: Error) => json(res, 500, { error: { code: 'internal_error', message: err.message } }));
    return;
  }
  if (path === '/admin' || path!.startsWith('/admin/')) {
    if (api === null) {
      json(res, 503, { error: { code: 'unavailable', message: 'The admin API is starting; try again in a moment.' } });
      return;
    }
    api(req, res);
    return;
  }
  json(res, 404, { error: { code: 'not_found', message: 'Unknown admin endpoint; try GET /health, GET /metrics or GET /admin/openapi.json.' } });
});
server.keepAliveTimeout = 5000;

port.on('message', (msg: ToAdmin) => {
  switch (msg.type) {
    case 'config':
      config = msg.config;
      document = msg.document;
      slots = msg.slots;
      metrics.setSlots(msg.slots, msg.targetSlots, msg.config);
      targetSlots = msg.targetSlots;
      upstreamSlots = msg.upstreamSlots;
      guarded = guardedUpstreams(msg.config);
      retrying = retryingUpstreams(msg.config);
      healthChecker.configure(msg.config, msg.targetSlots);
      sources = sourceMap(msg.sources);
      void discovery.configure(msg.config);
      configureLog(msg.config.log);
      void rateLimitSync.configure(msg.config);
      identity.configure(msg.config);
      authz.reconfigure(msg.config);
      redirect.reconfigure(msg.config);
      break;
    case 'log-level':
      setLogLevel(msg.level);
      break;
    case 'reload-result': {
      const resolve = pendingReloads.get(msg.id);
      pendingReloads.delete(msg.id);
      resolve?.(msg.result);
      break;
    }
    case 'stats-port':
      collector.setPort(msg.index, msg.port);
      identity.attach(msg.index, msg.port);
      break;
    case 'crash':
      // Test hook: a bug in the admin thread, thrown where nothing catches it.
      if (process.env.TURNPIKE_TEST_HOOKS === '1') setImmediate(() => { throw new Error('admin crash requested by test hook'); });
      break;
    case 'drain':
      healthChecker.stop();
      discovery.stop();
      api?.stop();
      if (server.listening) {
        server.close();
        server.closeAllConnections();
      }
      collector.close();
      // The workers are gone: a last push of what they admitted (and of keys' last use), then the thread may end.
      void Promise.allSettled([rateLimitSync.stop(), identity.close(), authz.close(), redirect.close()]).finally(() => port.close());
      break;
  }
});

// The store's first outcome (connected or not) is known before the thread
// reports ready: a gateway that says it started knows its Redis state.
// Discovery's first round too: the engine applies the targets found before the gateway reports started.
// The auth_request listener's too: a start that cannot bind authz.port fails with the message.
const authzStarted = authz.configure(data.config).catch((err: Error) => { send({ type: 'fatal', message: err.message }); return new Promise<never>(() => {}); });
// The identity store's first open, when the config uses it: a store this gateway can never use (another pepper's,
// a newer schema) fails the start with the message; an unreachable one is a warning (logged) and is tried again.
const identityStarted = identityOpened.then((r) => {
  if (r.state === 'failed' && r.permanent) {
    send({ type: 'fatal', message: `cannot use the identity store: ${r.error.message}` });
    return new Promise<never>(() => {});
  }
  return undefined;
});
// The https redirect listener (server.redirectHttp): a start that cannot bind it fails with the message.
const redirect = new RedirectListener();
const redirectStarted = redirect.configure(data.config).catch((err: Error) => { send({ type: 'fatal', message: err.message }); return new Promise<never>(() => {}); });
const syncStarted = Promise.all([rateLimitSync.configure(data.config), discovery.configure(data.config), authzStarted, identityStarted, redirectStarted]);
if (data.config.admin.enabled) {
  server.once('error', (err: NodeJS.ErrnoException) => {
    send({ type: 'fatal', message: `admin cannot listen on ${data.config.admin.host}:${data.config.admin.port} (${err.code}); change admin.port or set admin.enabled: false` });
  });
  server.listen(data.config.admin.port, data.config.admin.host, () => {
    const addr = server.address();
    const bound = typeof addr === 'object' && addr !== null ? addr.port : 0;
    try {
      api = createAdminApi(ctx, { adminPort: bound, fallbackToken: data.fallbackToken });
    } catch (err) {
      // A bad tokens file or an unwritable audit log: the start fails with the message.
      server.close();
      send({ type: 'fatal', message: (err as Error).message });
      return;
    }
    void syncStarted.then(() => send({ type: 'ready', port: bound }));
  });
} else {
  void syncStarted.then(() => send({ type: 'ready', port: 0 }));
}
