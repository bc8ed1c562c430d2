/**
 * Data-plane worker thread entry. Builds the Dataplane from the config it is
 * handed, starts the backend (uWS on Node, Bun.serve on Bun, the node:net
 * server with server.backend: node), and follows the engine's messages: new
 * config, drain, and (tests only) crash.
 */
import { IdentityClient } from './policies/auth/client.js';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import type { FromWorker, TargetSlotEntries, ToWorker, UpstreamSlotEntries, WorkerData } from '../common/protocol.js';
import type { ResilienceEnv } from './proxy/guard.js';
import { resetGauges } from '../common/metrics-layout.js';
import { C_WORKER_BEAT, C_WORKER_STATE, HEARTBEAT_MS, W_DEAD, W_DRAINING, W_READY, beatNow } from '../common/protocol.js';
import { log, setLogLevel, setLogThread } from '../common/log.js';
import { Dataplane } from './dataplane.js';
import { targetKey } from './proxy/balancer.js';
import { LatencyRecorder } from './latency.js';
import { WorkerLogs } from './logs.js';
import { setPoolGauges } from './proxy/upstream-pool.js';
import { RuntimeSampler } from '../common/runtime-metrics.js';
import { SWEEP_MS } from './proxy/timers.js';
import { ConfigRefusedError, type Backend } from './transport/backend.js';
import { RateLimitTable, clockOffset } from '../common/rate-limit-layout.js';
import { StrictStores } from './policies/rate-limit/strict-store.js';
import { WsConnectionTable } from '../common/websocket-layout.js';

if (isMainThread || parentPort === null) throw new Error('workers/worker.js runs as a worker thread; start the gateway with `turnpike start`.');

const port = parentPort;
const data = workerData as WorkerData;
/** The line to the admin thread's latency collector; replaced when the admin thread is restarted ('stats-port'). */
let statsPort = data.statsPort;
setLogThread(`worker-${data.index}`, data.logRing);
const control = new Int32Array(data.control);
const metrics = new Float64Array(data.metrics);
// A replacement worker inherits its slot's counters; gauges restart from zero
// (the dead worker's sockets are gone with it).
resetGauges(metrics);
setPoolGauges(metrics);
// Event-loop delay and GC of this thread, into its shared cells (no message, no per-request work), only when
// /metrics is served (admin.enabled is restart-only). The backend's SWEEP_MS sweep ticks it (loopTick): no timer of its own.
if (data.config.admin.enabled) new RuntimeSampler(metrics, { periodMs: SWEEP_MS, external: true }).start();
const TEST_HOOKS = process.env.TURNPIKE_TEST_HOOKS === '1';
const isBun = typeof (process.versions as Record<string, string | undefined>).bun === 'string';

function send(msg: FromWorker): void {
  port.postMessage(msg);
}

let active: Backend | null = null;
let crashing = false;

/**
 * A worker that throws must not take the process down. Node aborts the whole
 * process ("uv_loop_close() while having open handles", exit 134) when a
 * worker thread dies holding uWS sockets, so a fatal error here closes the
 * sockets in the order uWS needs and lets the thread end by itself; the
 * engine sees the exit and starts a replacement. Only this worker's
 * in-flight requests are lost.
 */
function crash(err: unknown): void {
  if (crashing) return;
  crashing = true;
  // A config the backend cannot serve (at start): its one-line message; a bug: its stack.
  const message = err instanceof ConfigRefusedError ? err.message : err instanceof Error ? err.stack ?? err.message : String(err);
  Atomics.store(control, C_WORKER_STATE + data.index, W_DEAD);
  send({ type: 'fatal', message });
  try {
    // 'crashed': in-flight requests stay counted, for turnpike_requests_lost_total.
    void Promise.resolve(active?.close('crashed')).catch(() => {});
  } catch { /* closing what we can */ }
  statsPort.close();
  port.close();
}
process.on('uncaughtException', crash);
process.on('unhandledRejection', crash);

function targetSlotMap(entries: TargetSlotEntries): Map<string, number> {
  return new Map(entries.map(([upstream, url, slot]) => [targetKey(upstream, url), slot]));
}

const upstreamState = new Int32Array(data.upstreamState);
const resilienceOf = (entries: UpstreamSlotEntries): ResilienceEnv => ({
  state: upstreamState, upstreamSlots: new Map(entries), workerIndex: data.index, clockOffset: clockOffset(data.clock),
});
const shared = {
  rateLimitTable: new RateLimitTable(data.rateLimitTable), metrics, strictStores: new StrictStores(`worker-${data.index}`),
  resilience: resilienceOf(data.upstreamSlots),
  // API keys (workers/policies/auth): caches, and lookups on the line to the admin thread.
  identity: new IdentityClient(),
};
shared.identity.attach(statsPort);

/**
 * A Dataplane built for a config the worker then refused: the upstream
 * runtimes it made (those `current` does not share) and its policies'
 * connections are let go; `current` keeps serving untouched.
 */
function discard(next: Dataplane, current: Dataplane): void {
  for (const [name, u] of next.upstreams) if (current.upstreams.get(name) !== u) u.close();
  next.releasePolicies();
}

async function main(): Promise<void> {
  let dp = new Dataplane(data.config, new Map(data.slots), null, targetSlotMap(data.targetSlots), shared);
  const latency = await LatencyRecorder.create();
  const logs = new WorkerLogs(data.config.log, data.accessRing);
  setLogLevel(data.logLevel);
  latency.serve(statsPort);
  const s = data.config.server;
  const wantBun = s.backend === 'bun' || (s.backend === 'auto' && isBun);
  let backend: Backend;
  let backendName: string;
  // WebSocket connections per key (maxConnectionsPerKey), shared by the workers of every backend: this worker's
  // column starts empty (a replacement's predecessor's connections died with it).
  const wsTable = new WsConnectionTable(data.wsConnections, data.index);
  wsTable.reset();
  (await import('./transport/websocket/tunnel.js')).setConnectionTable(wsTable);
  if (wantBun) {
    const { BunServer } = await import('./transport/bun-server.js');
    backend = new BunServer(dp, { host: s.host, port: s.port, workerIndex: data.index, metrics, latency, logs, control, onListen: () => {}, clockOffset: clockOffset(data.clock) });
    backendName = 'bun';
  } else {
    const { UwsServer } = await import('./transport/uws-server.js');
    // server.backend: node: the same transport on the strict node:net server (transport/node/app.ts) instead of uWS.
    const mod = s.backend === 'node' ? (await import('./transport/node/app.js')).nodeUws : undefined;
    if (mod !== undefined && data.listenFd !== null) mod.listenOnFd(data.listenFd);
    mod?.setTlsMetrics(metrics); // downstream TLS handshakes (transport/node/tls.ts), counted in this worker's cells
    backend = new UwsServer(dp, { host: s.host, port: s.port, workerIndex: data.index, metrics, latency, logs, control, onListen: () => {}, clockOffset: clockOffset(data.clock) }, mod);
    backendName = s.backend === 'node' ? 'node' : 'uws';
  }
  active = backend;
  // What the backend cannot load (TLS material BoringSSL refuses) ends the start here, with one line naming the setting.
  backend.prepare?.(dp);
  const bound = await backend.listen();
  Atomics.store(control, C_WORKER_STATE + data.index, W_READY);
  // Heartbeat from this thread's event loop (protocol.ts): /health reports a worker whose loop stopped.
  Atomics.store(control, C_WORKER_BEAT + data.index, beatNow(control));
  setInterval(() => Atomics.store(control, C_WORKER_BEAT + data.index, beatNow(control)), HEARTBEAT_MS).unref();
  send({ type: 'ready', port: bound, backend: backendName });

  port.on('message', (msg: ToWorker) => {
    switch (msg.type) {
      case 'config': {
        // Validation compiles exactly this before any worker sees a config,
        // so this cannot fail unless there is a bug; if it does, the worker
        // keeps serving its current config and the engine rolls the reload
        // back on every worker. A bad config must never take a worker down.
        // The backend too may refuse it: TLS material its library cannot load (backend.prepare builds
        // the new listener, or checks it, before anything is applied).
        let next: Dataplane;
        const resilience = shared.resilience;
        try {
          // Test hook (TURNPIKE_TEST_HOOKS=1 only): a route with this id stands for a config only a worker refuses.
          if (TEST_HOOKS && msg.config.routes.some((r) => r.id === 'test-hook-refused-by-worker')) throw new Error('refused by test hook');
          shared.resilience = resilienceOf(msg.upstreamSlots);
          next = new Dataplane(msg.config, new Map(msg.slots), dp, targetSlotMap(msg.targetSlots), shared);
          try {
            backend.prepare?.(next);
          } catch (err) {
            discard(next, dp);
            throw err;
          }
        } catch (err) {
          // The running config stays: what the refused one changed in the shared state goes back.
          shared.resilience = resilience;
          shared.identity.configure(dp.config.identity);
          send({ type: 'config-failed', version: msg.config.version, message: err instanceof Error ? err.message : String(err) });
          break;
        }
        dp = next;
        backend.setDataplane(dp);
        logs.apply(msg.config.log);
        send({ type: 'config-applied', version: msg.config.version });
        break;
      }
      case 'log-level':
        setLogLevel(msg.level);
        break;
      case 'stats-port':
        // A new admin thread (the last one died): its latency collector asks on this port from now on.
        statsPort.close();
        statsPort = msg.port;
        latency.serve(statsPort);
        shared.identity.attach(statsPort);
        break;
      case 'reopen-logs':
        // The engine reopens the files; this line says the signal reached the worker.
        log('debug', 'log files reopened');
        break;
      case 'drain': {
        Atomics.store(control, C_WORKER_STATE + data.index, W_DRAINING);
        backend.stopListening();
        const deadline = Date.now() + msg.timeoutMs;
        const check = () => {
          if (backend.inFlight === 0 || Date.now() >= deadline) {
            const left = backend.inFlight;
            // What is still in flight is answered 503 shutting_down (or cut mid-body) and logged so.
            const done = () => {
              logs.close();
              shared.identity.close(); // reports the last key uses
              send({ type: 'drained', inFlight: left });
              // Once the sockets and ports are closed the thread has nothing left and exits by itself.
              statsPort.close();
              port.close();
            };
            Promise.resolve(backend.close('drained')).then(done, (err: unknown) => crash(err));
            return;
          }
          setTimeout(check, 20);
        };
        check();
        break;
      }
      case 'crash':
        // Test hook (TURNPIKE_TEST_HOOKS=1 only): simulate a fatal bug in this worker.
        if (TEST_HOOKS) throw new Error('crash requested by test hook');
        break;
    }
  });
}

main().catch(crash);
