/**
 * The main thread's job: own the shared memory, start the admin thread and
 * one data-plane worker per slot, replace threads that die, and drain them
 * in order on shutdown.
 *
 * Shutdown order follows what uWS needs (ENVIRONMENT.md): each worker closes
 * its listen socket, waits for its in-flight requests (up to
 * server.drainTimeoutMs), closes its app and its port, and exits by itself.
 * The main thread never terminate()s a worker that may still hold uWS
 * sockets and never exits before its workers: either aborts the process.
 */
import { createWsConnectionTable } from '../common/websocket-layout.js';
import { H_STORE_DOWN, createClockEpoch, createRateLimitTable } from '../common/rate-limit-layout.js';
import {
  type Stats, chmodSync, chownSync, closeSync, copyFileSync, fchmodSync, fchownSync, fsyncSync, openSync, readFileSync, readdirSync, realpathSync, renameSync, statSync,
  unlinkSync, writeFileSync, writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import { stringify as toYaml } from 'yaml';
import { RESTART_ONLY, diffConfigs, formatChanges } from '../common/config/diff.js';
import { loadConfigDocument, loadConfigFile, loadEmbeddedConfig, type LoadResult } from '../common/config/load.js';
import type { GatewayConfig, TargetConfig, UpstreamConfig } from '../common/config/types.js';
import { configureLog, log, logLevel, setLogLevel, type Level } from '../common/log.js';
import { DEFAULT_MAX_ROUTE_SLOTS, FIRST_ROUTE_SLOT, FIRST_TARGET_SLOT, G_IN_FLIGHT, MAX_TARGET_SLOTS, metricsBufferBytes } from '../common/metrics-layout.js';
import type {
  AdminData, ConfigDocument, DiscoverySnapshot, FromAdmin, TargetSourceEntries, FromWorker, ReloadResult, SlotEntries, ToAdmin, ToWorker, WorkerData,
} from '../common/protocol.js';
import {
  C_CONFIG_VERSION, C_DRAINING, C_EPOCH, C_RELOADS_FAILED, C_RELOADS_OK, C_REQUESTS_LOST, C_RESTARTS, C_WORKER_COUNT, C_WORKER_STATE, CONTROL_BYTES,
  MAX_WORKERS, W_DEAD, W_STARTING,
} from '../common/protocol.js';
import type { TargetSlotEntries } from '../common/protocol.js';
import { WORKER_CHECKS } from '../workers/config-check.js';
import type { LogWriter } from './log-writer.js';
import { type AccessRing, LOG_RING_BYTES, createAccessRing } from '../common/access-ring.js';
import { targetKey } from '../workers/proxy/balancer.js';
import { type QuotaStore, isAlive, openQuotaStore } from './quota-store.js';
import { FIRST_UPSTREAM_SLOT, MAX_UPSTREAM_SLOTS, createUpstreamState, releaseWorker } from '../common/upstream-state-layout.js';
import type { UpstreamSlotEntries } from '../common/protocol.js';
import { generateToken } from '../admin/api/auth.js';
import { usesIdentity } from '../common/config/identity.js';
import { netReusePort, nodeBackendShardable } from '../common/config/util.js';
import { SharedListener } from './shared-listener.js';

const WORKER_ENTRY = new URL('../workers/worker.js', import.meta.url);
const ADMIN_ENTRY = new URL('../admin/admin.js', import.meta.url);

/** The start of a sendConfig failure that means "no answer" (not a refusal). */
const NOT_CONFIRMED = 'did not confirm the config';
/**
 * How long past server.drainTimeoutMs a worker (and the admin thread after
 * them) may take to exit on shutdown before it is terminated: its sockets
 * are closed by then, what is left is a thread blocked in something that
 * does not return (a lookup queued behind a hung getaddrinfo, say).
 */
const SHUTDOWN_GRACE_MS = 5_000;

/** A worker must acknowledge a new config within this, or the reload fails and is rolled back. */
const APPLY_TIMEOUT_MS = 5000;
/** Restart backoff: 100 ms doubling to 10 s; reset after a worker lived 30 s. */
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 10_000;
const STABLE_AFTER_MS = 30_000;

interface Slot {
  index: number;
  worker: Worker | null;
  metrics: SharedArrayBuffer;
  /** This slot's access log ring (common/access-ring.ts): kept across a worker's restarts, like its metrics. */
  accessRing: AccessRing;
  /** This slot's gateway log ring (common/log.ts), kept across restarts too. */
  logRing: AccessRing;
  startedAt: number;
  backoffMs: number;
  ready: boolean;
  exiting: boolean;
  /** Config version this worker serves. */
  version: number;
  /** Waiting for 'config-applied' (null) or 'config-failed' (its message) of a version. */
  acks: Map<number, (failure: string | null) => void>;
  /** The admin thread's end of this worker's stats line, until handed over. */
  statsPort: MessagePort | null;
}

export interface SupervisorOptions {
  /** The config file, or null for the embedded default. */
  configPath: string | null;
  /** The document `config` came from, before overrides (GET /admin/config?format=file). */
  document: unknown;
  /** server.port was 0 (ephemeral) in the config given at start. */
  portWasZero?: boolean;
  /** `--set` flags, re-applied on every reload. */
  sets: readonly string[];
  version: string;
  /** Writes every thread's gateway log and the access log (engine/log-writer.ts); the caller closes it before exiting. */
  logWriter: LogWriter;
}

export interface StartedGateway {
  port: number;
  adminPort: number | null;
  backend: string;
  stop(): Promise<number>;
}

export class Supervisor {
  /**
   * The running config: the user's (`userConfig`) with the targets
   * discovery found merged into their upstreams (mergeDiscovered). What
   * every worker and the admin thread run.
   */
  config: GatewayConfig;
  /** The config as the user wrote it (resolved): what reloads replace and diff against. */
  private userConfig: GatewayConfig;
  /** The last discovery snapshot from the admin thread (admin/discovery/), kept across reloads and admin restarts. */
  private discovered: DiscoverySnapshot = [];
  /** The targets of `config` that discovery added (GET /admin/upstreams `source`). */
  private sources: TargetSourceEntries = [];
  /** A snapshot waiting for its turn on reloadChain (only the newest is applied). */
  private discoveryPending: DiscoverySnapshot | null = null;
  private readonly control = new SharedArrayBuffer(CONTROL_BYTES);
  private readonly controlView = (() => {
    const v = new Int32Array(this.control);
    Atomics.store(v, C_EPOCH, Math.floor(Date.now() / 1000));
    return v;
  })();
  private readonly slots: Slot[] = [];
  private readonly routeSlots = new Map<string, number>();
  private nextRouteSlot = FIRST_ROUTE_SLOT;
  /** `upstream target-url` (workers/proxy/balancer.ts targetKey) -> [upstream, url, metrics slot]. */
  private readonly targetSlots = new Map<string, readonly [string, string, number]>();
  private nextTargetSlot = FIRST_TARGET_SLOT;
  /** Upstream name -> its slot in the shared upstream state: assigned once, never moved or reused. */
  private readonly upstreamSlots = new Map<string, number>();
  private nextUpstreamSlot = FIRST_UPSTREAM_SLOT;
  /**
   * Breakers, health, ejection and in-flight counts per target
   * (common/upstream-state-layout.ts), for the life of the process: a
   * reload keeps every unchanged target's state, a replaced worker finds it.
   */
  private upstreamState: SharedArrayBuffer | null = null;
  /** WebSocket connections per key (common/websocket-layout.ts): one column per worker index. */
  private wsConnections: SharedArrayBuffer | null = null;
  private admin: Worker | null = null;
  /** Delay before the next restart of an admin thread that died (doubles up to BACKOFF_MAX_MS, reset once one lived STABLE_AFTER_MS). */
  private adminBackoffMs = BACKOFF_MIN_MS;
  private adminStartedAt = 0;
  private draining = false;
  private started = false;
  /** server.backend node on Node < 22.12: the one listening socket the workers share (engine/shared-listener.ts). */
  private listener: SharedListener | null = null;
  private port = 0;
  private backend = '';
  private readonly version: string;
  private readonly startedAt = Date.now();
  private readonly opts: SupervisorOptions;
  /** The running config's document, before overrides. */
  private configDoc: unknown;
  /** The lock file held for server.port (lockPort), removed on stop. */
  private portLock: string | null = null;
  /** Writes the access log and every thread's gateway log (engine/log-writer.ts). */
  private readonly logWriter: LogWriter;
  /** The admin thread's gateway log ring (one admin thread at a time). */
  private readonly adminLogRing = createAccessRing(LOG_RING_BYTES);
  /** Reloads run one at a time, in the order asked. */
  private reloadChain: Promise<unknown> = Promise.resolve();
  /**
   * The rate-limit buckets of every thread, for the life of the process:
   * reloads and worker replacements keep them (capacity is read at start).
   * Pages are only touched as buckets are used.
   */
  private readonly rateLimitTable: SharedArrayBuffer;
  private readonly clock = createClockEpoch();
  /** Local quota counts kept on disk (engine/quota-store.ts), from start to shutdown. */
  private quotas: QuotaStore | null = null;

  constructor(config: GatewayConfig, opts: SupervisorOptions) {
    if (config.server.workers > MAX_WORKERS) throw new Error(`server.workers: at most ${MAX_WORKERS}`);
    this.config = config;
    this.userConfig = config;
    this.opts = opts;
    this.configDoc = opts.document;
    this.version = opts.version;
    this.logWriter = opts.logWriter;
    this.logWriter.setControl(this.controlView);
    this.rateLimitTable = createRateLimitTable(config.rateLimitTable.capacity);
    // With Redis, the store counts as away until the admin thread's first
    // connection succeeds: the workers serve before it even starts, and a
    // limit with onStoreError: deny must not admit meanwhile.
    if (config.redis !== null) new Float64Array(this.rateLimitTable)[H_STORE_DOWN] = 1;
    this.assignSlots(config);
  }

  private assignSlots(config: GatewayConfig): SlotEntries {
    for (const r of config.routes) {
      if (!this.routeSlots.has(r.id) && this.nextRouteSlot < DEFAULT_MAX_ROUTE_SLOTS) this.routeSlots.set(r.id, this.nextRouteSlot++);
    }
    for (const u of Object.values(config.upstreams)) {
      for (const t of u.targets) {
        const key = targetKey(u.name, t.url);
        if (!this.targetSlots.has(key) && this.nextTargetSlot < MAX_TARGET_SLOTS) this.targetSlots.set(key, [u.name, t.url, this.nextTargetSlot++]);
      }
      if (!this.upstreamSlots.has(u.name) && this.nextUpstreamSlot < MAX_UPSTREAM_SLOTS) this.upstreamSlots.set(u.name, this.nextUpstreamSlot++);
    }
    return [...this.routeSlots];
  }

  private upstreamSlotEntries(): UpstreamSlotEntries {
    return [...this.upstreamSlots];
  }

  /** Target metrics slots, like route slots: assigned once, never moved or reused. */
  private targetSlotEntries(): TargetSlotEntries {
    return [...this.targetSlots.values()];
  }

  async start(): Promise<StartedGateway> {
    const n = this.config.server.workers;
    // Workers listen with SO_REUSEPORT, which would let this gateway silently
    // share a port with another process already serving it. A plain bind
    // (no SO_REUSEPORT) fails if anyone holds the port: check first.
    if (this.config.server.port !== 0) {
      // The check and the workers' listen are two steps: two gateways
      // started at the same moment could both pass the check and then share
      // the port. A lock file per port closes that gap between gateways.
      this.portLock = lockPort(this.config.server.host, this.config.server.port);
      await assertPortFree(this.config.server.host, this.config.server.port);
    } else {
      // uSockets binds port 0 without SO_REUSEPORT, so the other workers could
      // not join it: pick a free port here and give every worker that one.
      const port = await findFreePort(this.config.server.host);
      this.config = { ...this.config, server: { ...this.config.server, port } };
      this.userConfig = this.config;
    }
    if (this.config.server.backend === 'node' && nodeBackendShardable() && (!netReusePort() || n === 1)) {
      // node:net has no reusePort before Node 22.12: the workers listen on copies of one socket bound
      // here. With one worker too: its crash would otherwise close the port until its replacement listens.
      this.listener = await SharedListener.bind(this.config.server.host, this.config.server.port);
    }
    Atomics.store(this.controlView, C_WORKER_COUNT, n);
    Atomics.store(this.controlView, C_CONFIG_VERSION, this.config.version);
    this.upstreamState = createUpstreamState(n);
    this.wsConnections = createWsConnectionTable(n);
    for (let i = 0; i < n; i++) {
      this.slots.push({
        index: i, worker: null, metrics: new SharedArrayBuffer(metricsBufferBytes(DEFAULT_MAX_ROUTE_SLOTS)), accessRing: createAccessRing(),
        logRing: createAccessRing(LOG_RING_BYTES), startedAt: 0, backoffMs: BACKOFF_MIN_MS, ready: false, exiting: false, version: 0, acks: new Map(), statsPort: null,
      });
    }
    for (const s of this.slots) {
      this.logWriter.addRing(s.accessRing, 'access');
      this.logWriter.addRing(s.logRing, 'log');
    }
    this.logWriter.addRing(this.adminLogRing, 'log');
    this.logWriter.setDestination(this.config.log.access.enabled ? this.config.log.access.destination : null);
    // Quota counts of the last run go back into the table before any worker serves.
    this.quotas = openQuotaStore(this.rateLimitTable, this.clock, this.config, this.opts.portWasZero ?? false);
    const fds = this.listener !== null ? await this.listener.dup(n) : null;
    await Promise.all(this.slots.map((s, i) => this.spawnWorker(s, fds !== null ? fds[i]! : null)));
    this.started = true;
    let adminPort: number | null = null;
    // The admin thread also runs the Redis sync of rate limits, the active
    // health checks, discovery and the identity store (key lookups, the
    // auth_request listener): it starts with any of them even when its
    // listener is off (admin.enabled: false).
    if (this.config.admin.enabled || this.config.redis !== null || hasHealthChecks(this.config) || hasDiscovery(this.config) || usesIdentity(this.config)) {
      const port = await this.spawnAdmin();
      if (this.config.admin.enabled) adminPort = port;
      // The admin thread reports its first discovery round before 'ready':
      // a gateway that says it started serves the targets found.
      await this.reloadChain;
    }
    return {
      port: this.port,
      adminPort,
      backend: this.backend,
      stop: () => this.shutdown(),
    };
  }

  /** `listenFd`: the worker's own copy of the shared listening socket (node backend), or null. */
  private spawnWorker(slot: Slot, listenFd: number | null): Promise<void> {
    const config = this.config;
    const stats = new MessageChannel();
    const data: WorkerData = {
      index: slot.index, config, logLevel: logLevel(), slots: [...this.routeSlots], targetSlots: this.targetSlotEntries(), metrics: slot.metrics, accessRing: slot.accessRing, logRing: slot.logRing, control: this.control, statsPort: stats.port1,
      rateLimitTable: this.rateLimitTable, clock: this.clock, upstreamState: this.upstreamState!, upstreamSlots: this.upstreamSlotEntries(), listenFd,
      wsConnections: this.wsConnections!,
    };
    Atomics.store(this.controlView, C_WORKER_STATE + slot.index, W_STARTING);
    const w = new Worker(WORKER_ENTRY, { workerData: data, transferList: [stats.port1], name: `turnpike-worker-${slot.index}` });
    if (this.admin !== null) {
      this.admin.postMessage({ type: 'stats-port', index: slot.index, port: stats.port2 } satisfies ToAdmin, [stats.port2]);
      slot.statsPort = null;
    } else {
      slot.statsPort = stats.port2;
    }
    slot.worker = w;
    slot.ready = false;
    slot.exiting = false;
    slot.startedAt = Date.now();
    slot.version = config.version;
    return new Promise((resolve, reject) => {
      let settled = false;
      w.on('message', (msg: FromWorker) => {
        if (msg.type === 'ready') {
          slot.ready = true;
          this.port = msg.port;
          this.backend = msg.backend;
          // A reload may have happened while this worker was starting.
          if (slot.version !== this.config.version) this.sendConfig(slot);
          if (!settled) { settled = true; resolve(); }
        } else if (msg.type === 'config-applied' || msg.type === 'config-failed') {
          if (msg.type === 'config-applied') slot.version = msg.version;
          const ack = slot.acks.get(msg.version);
          if (ack) { slot.acks.delete(msg.version); ack(msg.type === 'config-failed' ? msg.message : null); }
        } else if (msg.type === 'fatal') {
          Atomics.store(this.controlView, C_WORKER_STATE + slot.index, W_DEAD);
          log('error', 'worker failed', { worker: slot.index, error: msg.message });
          if (!settled) { settled = true; reject(new Error(msg.message)); }
        }
      });
      w.on('error', (err) => {
        log('error', 'worker thread error', { worker: slot.index, error: err.message });
      });
      w.on('exit', (code) => {
        Atomics.store(this.controlView, C_WORKER_STATE + slot.index, W_DEAD);
        slot.worker = null;
        slot.ready = false;
        // Its replacement starts on the current config.
        for (const ack of slot.acks.values()) ack(null);
        slot.acks.clear();
        if (!settled) { settled = true; reject(new Error(`worker ${slot.index} exited with code ${code} before it was ready`)); }
        const lost = this.countLostRequests(slot);
        // What it held in flight per target and upstream is given back (its replacement starts at zero).
        if (this.upstreamState !== null) releaseWorker(new Int32Array(this.upstreamState), slot.index);
        // At start a failing worker fails the start; later, it is replaced (with backoff).
        if (!this.started || this.draining || slot.exiting) return;
        this.scheduleRestart(slot, code ?? 0, lost);
      });
    });
  }

  /**
   * A worker that died with requests in flight (a crash) never logged or
   * counted them, and their clients got a reset: its in-flight gauge, left in
   * its metrics cells, goes to turnpike_requests_lost_total (C_REQUESTS_LOST)
   * and is cleared. A worker that drained has none left.
   */
  private countLostRequests(slot: Slot): number {
    const cells = new Float64Array(slot.metrics);
    const lost = Math.max(0, Math.round(cells[G_IN_FLIGHT]!));
    cells[G_IN_FLIGHT] = 0;
    if (lost > 0) Atomics.add(this.controlView, C_REQUESTS_LOST, lost);
    return lost;
  }

  private scheduleRestart(slot: Slot, code: number, lostRequests = 0): void {
    const lived = Date.now() - slot.startedAt;
    if (lived >= STABLE_AFTER_MS) slot.backoffMs = BACKOFF_MIN_MS;
    const delay = slot.backoffMs;
    slot.backoffMs = Math.min(BACKOFF_MAX_MS, slot.backoffMs * 2);
    Atomics.add(this.controlView, C_RESTARTS, 1);
    log(delay >= BACKOFF_MAX_MS ? 'error' : 'warn', 'worker exited; restarting', {
      worker: slot.index, code, restartInMs: delay, crashLoop: delay >= BACKOFF_MAX_MS, lostRequests,
    });
    setTimeout(() => {
      if (this.draining) return;
      const fd = this.listener !== null ? this.listener.dup(1).then((fds) => fds[0]!) : Promise.resolve(null);
      fd.then((listenFd) => {
        if (this.draining) return;
        this.spawnWorker(slot, listenFd).catch((err: Error) => {
          // Its exit handler schedules the next attempt, with a longer delay.
          log('error', 'worker restart failed', { worker: slot.index, error: err.message });
        });
      }, (err: Error) => {
        // No copy of the listening socket, no worker: try again later (the others keep serving).
        log('error', 'worker restart failed', { worker: slot.index, error: err.message });
        this.scheduleRestart(slot, code);
      });
    }, delay).unref();
  }

  /** The admin token used when none is configured: one per process, whatever the admin thread's restarts (AdminData.fallbackToken). */
  private readonly fallbackToken = generateToken();

  private spawnAdmin(): Promise<number> {
    const statsPorts = this.slots.map((s) => s.statsPort);
    for (const s of this.slots) s.statsPort = null;
    const data: AdminData = {
      config: this.config, document: this.document(), logLevel: logLevel(), slots: [...this.routeSlots], targetSlots: this.targetSlotEntries(), metrics: this.slots.map((s) => s.metrics),
      control: this.control, logRing: this.adminLogRing, statsPorts, version: this.version, startedAt: this.startedAt,
      rateLimitTable: this.rateLimitTable, clock: this.clock, upstreamState: this.upstreamState!, upstreamSlots: this.upstreamSlotEntries(),
      discovered: this.discovered, sources: this.sources, fallbackToken: this.fallbackToken,
    };
    const w = new Worker(ADMIN_ENTRY, {
      workerData: data, transferList: statsPorts.filter((p): p is MessagePort => p !== null), name: 'turnpike-admin',
    });
    this.admin = w;
    this.adminStartedAt = Date.now();
    return new Promise((resolve, reject) => {
      w.on('message', (msg: FromAdmin) => {
        if (msg.type === 'ready') resolve(msg.port);
        else if (msg.type === 'fatal') reject(new Error(msg.message));
        else if (msg.type === 'log-level') this.changeLogLevel(msg.level, msg.actor);
        else if (msg.type === 'discovery') this.onDiscovery(msg.upstreams);
        else if (msg.type === 'reload') {
          const req = { actor: msg.actor, ...(msg.doc !== undefined ? { doc: msg.doc } : {}), ...(msg.dryRun ? { dryRun: true } : {}) };
          this.reload(req).then(
            (result) => w.postMessage({ type: 'reload-result', id: msg.id, result } satisfies ToAdmin),
            (err: Error) => w.postMessage({
              type: 'reload-result', id: msg.id,
              result: { ok: false, version: this.config.version, errors: [{ path: '', message: err.message }], changes: null, persisted: false },
            } satisfies ToAdmin),
          );
        }
      });
      w.on('error', (err) => {
        // An uncaught exception or rejection in the admin thread: say what it was.
        if (!this.draining) log('error', 'admin thread failed', { error: err.stack ?? err.message });
        reject(err);
      });
      w.on('exit', (code) => {
        if (this.admin !== w) return;
        this.admin = null;
        if (this.draining || !this.started) return;
        this.scheduleAdminRestart(code);
      });
    });
  }

  /**
   * The admin thread died while serving (a bug): the admin API, /metrics,
   * /health, the rate-limit sync and the health checks went with it, while
   * the workers keep serving. It is started again, with the same backoff as
   * a worker; each live worker gets a new latency line for it first.
   */
  private scheduleAdminRestart(code: number): void {
    if (Date.now() - this.adminStartedAt >= STABLE_AFTER_MS) this.adminBackoffMs = BACKOFF_MIN_MS;
    const delay = this.adminBackoffMs;
    this.adminBackoffMs = Math.min(BACKOFF_MAX_MS, this.adminBackoffMs * 2);
    log('error', 'admin thread exited; restarting (the admin API, /metrics, /health, the rate-limit sync and health checks are down meanwhile; requests are still served)', {
      code, restartInMs: delay,
    });
    setTimeout(() => {
      if (this.draining || this.admin !== null) return;
      for (const slot of this.slots) {
        if (slot.worker === null) continue;
        const line = new MessageChannel();
        slot.worker.postMessage({ type: 'stats-port', port: line.port1 } satisfies ToWorker, [line.port1]);
        slot.statsPort?.close();
        slot.statsPort = line.port2;
      }
      this.spawnAdmin().then(
        (port) => log('info', 'admin thread restarted', { adminPort: this.config.admin.enabled ? port : null }),
        (err: Error) => log('error', 'admin thread restart failed', { error: err.message }),
      );
    }, delay).unref();
  }

  /** Sends the current config to one worker; resolves null once applied, or the worker's reason for refusing it. */
  private sendConfig(slot: Slot): Promise<string | null> {
    const w = slot.worker;
    if (w === null) return Promise.resolve(null);
    const version = this.config.version;
    return new Promise<string | null>((resolve) => {
      const timer = setTimeout(() => {
        slot.acks.delete(version);
        // A worker that does not answer in time (its event loop is blocked)
        // has not applied the config yet, and may any moment: the reload is a
        // failure, and the rollback is queued for it too (see reloadNow).
        log('error', 'worker did not confirm the new config in time', { worker: slot.index, version, timeoutMs: APPLY_TIMEOUT_MS });
        resolve(`${NOT_CONFIRMED} within ${APPLY_TIMEOUT_MS} ms (its event loop may be blocked: see /health)`);
      }, APPLY_TIMEOUT_MS);
      slot.acks.set(version, (failure) => { clearTimeout(timer); resolve(failure); });
      w.postMessage({ type: 'config', config: this.config, slots: [...this.routeSlots], targetSlots: this.targetSlotEntries(), upstreamSlots: this.upstreamSlotEntries() } satisfies ToWorker);
    });
  }

  /**
   * Reload from the config file (doc absent) or from a new document. Only a
   * config that validates is applied; a document that applies is first
   * written to the config file atomically. Serialised: concurrent calls run
   * in order.
   */
  reload(req: { doc?: unknown; dryRun?: boolean; actor: string }): Promise<ReloadResult> {
    const run = this.reloadChain.then(() => this.reloadNow(req));
    this.reloadChain = run.catch(() => {});
    return run;
  }

  private async reloadNow(req: { doc?: unknown; dryRun?: boolean; actor: string }): Promise<ReloadResult> {
    const old = this.config;
    if (this.draining && !req.dryRun) {
      // Workers that are closing their sockets cannot take a config, and a
      // document would be persisted for a gateway that is going away.
      const message = 'the gateway is shutting down (draining): reloads are refused; start it again to run this config';
      log('warn', 'reload refused: the gateway is shutting down', { actor: req.actor, version: old.version });
      return { ok: false, version: old.version, errors: [{ path: '', message }], changes: null, persisted: false };
    }
    const version = old.version + 1;
    const common = { env: process.env, sets: this.opts.sets, version, ...WORKER_CHECKS };
    let result: LoadResult;
    if (req.doc !== undefined) result = loadConfigDocument(req.doc, { ...common, source: this.opts.configPath ?? '<admin>', demo: old.demo.enabled });
    else if (this.opts.configPath !== null) result = loadConfigFile(this.opts.configPath, common);
    else result = loadEmbeddedConfig(common);
    const refuse = (errors: { path: string; message: string }[]): ReloadResult => {
      const problems = errors.map((e) => (e.path ? `${e.path}: ${e.message}` : e.message));
      if (req.dryRun) {
        // A check (validate --diff, dry runs): the caller gets the problems; nothing failed here.
        log('info', 'config checked (dry run): it would be refused', { actor: req.actor, version: old.version, problems });
      } else {
        Atomics.add(this.controlView, C_RELOADS_FAILED, 1);
        log('error', 'config refused; the running config keeps serving', { actor: req.actor, version: old.version, problems });
      }
      return { ok: false, version: old.version, errors, changes: null, persisted: false };
    };
    if (!result.ok) return refuse(result.errors);
    let next = result.config;
    // Port 0 was resolved at start; a config that still says 0 keeps that port.
    if (next.server.port === 0 && this.opts.portWasZero) next = { ...next, server: { ...next.server, port: old.server.port } };
    if (next.admin.port === 0 && old.admin.port === 0) next = { ...next, admin: { ...next.admin, port: old.admin.port } };
    // What the user changed: discovered targets are not part of it.
    const oldUser = this.userConfig;
    const changes = diffConfigs(oldUser, next);
    const restartOnly = changes.settings.filter((p) => RESTART_ONLY.some((r) => p === r || p.startsWith(r + '.')));
    // Certificates swap on reload; turning TLS on or off changes what the port speaks, so that is a restart.
    if ((oldUser.server.tls === null) !== (next.server.tls === null)) restartOnly.push('server.tls');
    if (restartOnly.length > 0) {
      return refuse(restartOnly.map((p) => ({ path: p, message: 'cannot change on reload; restart the gateway to apply it' })));
    }
    const warnings = result.warnings;
    if (req.dryRun) return { ok: true, version: old.version, errors: [], changes, persisted: false, warnings };
    // A reload keeps the discovered targets of the upstreams that still have dns or registry.
    this.userConfig = Object.freeze({ ...next }) as GatewayConfig;
    const oldSources = this.sources;
    ({ config: this.config, sources: this.sources } = mergeDiscovered(this.userConfig, this.discovered));
    configureLog(next.log);
    this.logWriter.setDestination(next.log.access.enabled ? next.log.access.destination : null);
    this.assignSlots(next);
    const targets = this.slots.filter((sl) => sl.ready);
    const failures = await Promise.all(targets.map((sl) => this.sendConfig(sl)));
    const refusedBy = targets.flatMap((sl, i) => (failures[i] === null ? [] : [{ worker: sl.index, message: failures[i]! }]));
    // A document from the admin API is written to the config file only once
    // every worker serves it: a refused config is never persisted.
    let persisted = false;
    let writeProblem: string | null = null;
    if (refusedBy.length === 0 && req.doc !== undefined && this.opts.configPath !== null) {
      try {
        writeAtomically(this.opts.configPath, req.doc);
        persisted = true;
      } catch (err) {
        writeProblem = `cannot write ${this.opts.configPath}: ${(err as Error).message}; the reload was rolled back`;
      }
    }
    if (refusedBy.length > 0 || writeProblem !== null) {
      // Roll back: every worker that took the new config goes back to the old one.
      this.config = old;
      this.userConfig = oldUser;
      this.sources = oldSources;
      configureLog(old.log);
      // Those that applied it, and those that did not answer (they will apply
      // it when they do, then this): every worker ends on the old config.
      await Promise.all(targets.filter((_sl, i) => failures[i] === null || failures[i]!.startsWith(NOT_CONFIRMED)).map((sl) => this.sendConfig(sl)));
      const errors = writeProblem !== null
        ? [{ path: '', message: writeProblem }]
        : refusedBy.map((r) => ({ path: '', message: `worker ${r.worker} could not apply the config (${r.message}); every worker was rolled back to version ${old.version}` }));
      return refuse(errors);
    }
    Atomics.store(this.controlView, C_CONFIG_VERSION, next.version);
    this.quotas?.configure(this.config);
    Atomics.add(this.controlView, C_RELOADS_OK, 1);
    this.configDoc = result.document ?? req.doc ?? null;
    this.admin?.postMessage({ type: 'config', config: this.config, slots: [...this.routeSlots], targetSlots: this.targetSlotEntries(), upstreamSlots: this.upstreamSlotEntries(), document: this.document(), discovered: this.discovered, sources: this.sources } satisfies ToAdmin);
    if (this.admin === null && (next.redis !== null || hasHealthChecks(next) || hasDiscovery(next) || usesIdentity(next)) && !this.draining) {
      // `redis` or a health check added by this reload: the admin thread (listener off) starts to sync rate limits or to check targets.
      await this.spawnAdmin().catch((err: Error) => log('error', 'cannot start the admin thread for the rate-limit sync and health checks; cluster limits stay local to this instance and targets unchecked', { error: err.message }));
    }
    log('info', 'config reloaded', { actor: req.actor, version: next.version, changes: formatChanges(changes), persisted });
    for (const w of warnings) log('warn', `config warning: ${w.path === '' ? '' : `${w.path}: `}${w.message}`, { version: next.version });
    return { ok: true, version: next.version, errors: [], changes, persisted, warnings };
  }

  /**
   * A discovery snapshot from the admin thread: applied after the reloads
   * and updates before it (reloadChain), only the newest of those that
   * arrived meanwhile (the admin thread already sends at most one per
   * 250 ms; this coalesces further while workers apply a version).
   */
  private onDiscovery(snapshot: DiscoverySnapshot): void {
    const queued = this.discoveryPending !== null;
    this.discoveryPending = snapshot;
    if (queued) return;
    const run = this.reloadChain.then(() => {
      const snap = this.discoveryPending!;
      this.discoveryPending = null;
      return this.applyDiscovery(snap);
    });
    this.reloadChain = run.catch((err: Error) => log('error', 'discovery update failed', { error: err.message }));
  }

  /**
   * Merges a discovery snapshot into the user's config and, when the
   * targets of some upstream changed, sends every worker the result as a
   * new config version. Not a reload: the config file is not written, no
   * reload is counted or audited; logged at info as `discovery update`.
   * Each worker keeps the runtime of every upstream whose targets did not
   * change; an upstream whose did gets a new one, and the requests in
   * flight on the old one finish there (a removed target is drained).
   * Should a worker refuse the version (a bug), every worker goes back to
   * the previous one and the snapshot is dropped (the next one retries).
   */
  private async applyDiscovery(snapshot: DiscoverySnapshot): Promise<void> {
    const old = this.config;
    const oldDiscovered = this.discovered;
    const oldSources = this.sources;
    this.discovered = snapshot;
    if (this.draining) return;
    const merged = mergeDiscovered(this.userConfig, snapshot);
    const changes = targetChanges(old, merged.config);
    if (changes.length === 0) {
      // Same targets; a URL may have moved between sources (GET /admin/upstreams `source`).
      if (JSON.stringify(merged.sources) !== JSON.stringify(oldSources)) {
        this.sources = merged.sources;
        this.admin?.postMessage({ type: 'config', config: old, slots: [...this.routeSlots], targetSlots: this.targetSlotEntries(), upstreamSlots: this.upstreamSlotEntries(), document: this.document(), discovered: this.discovered, sources: this.sources } satisfies ToAdmin);
      }
      return;
    }
    const next = Object.freeze({ ...merged.config, version: old.version + 1 }) as GatewayConfig;
    this.config = next;
    this.sources = merged.sources;
    this.assignSlots(next);
    const targets = this.slots.filter((sl) => sl.ready);
    const failures = await Promise.all(targets.map((sl) => this.sendConfig(sl)));
    const refusedBy = targets.flatMap((sl, i) => (failures[i] === null ? [] : [{ worker: sl.index, message: failures[i]! }]));
    if (refusedBy.length > 0) {
      this.config = old;
      this.discovered = oldDiscovered;
      this.sources = oldSources;
      await Promise.all(targets.filter((_sl, i) => failures[i] === null || failures[i]!.startsWith(NOT_CONFIRMED)).map((sl) => this.sendConfig(sl)));
      log('error', 'discovery update refused by a worker; every worker keeps the previous targets', { version: old.version, refusedBy });
      return;
    }
    Atomics.store(this.controlView, C_CONFIG_VERSION, next.version);
    this.admin?.postMessage({ type: 'config', config: next, slots: [...this.routeSlots], targetSlots: this.targetSlotEntries(), upstreamSlots: this.upstreamSlotEntries(), document: this.document(), discovered: this.discovered, sources: this.sources } satisfies ToAdmin);
    log('info', 'discovery update', { version: next.version, upstreams: changes });
  }

  /**
   * Sets the gateway log level in every thread, until the next reload
   * (which applies the config's log.level) or restart.
   */
  changeLogLevel(level: Level, actor: string): void {
    const before = logLevel();
    setLogLevel(level);
    for (const s of this.slots) s.worker?.postMessage({ type: 'log-level', level } satisfies ToWorker);
    this.admin?.postMessage({ type: 'log-level', level } satisfies ToAdmin);
    log('info', 'log level changed', { actor, from: before, to: level });
  }

  /** SIGUSR1: access log files are reopened (logrotate's postrotate); the workers log it at debug. */
  reopenLogs(): void {
    this.logWriter.reopen();
    for (const s of this.slots) s.worker?.postMessage({ type: 'reopen-logs' } satisfies ToWorker);
  }

  private document(): ConfigDocument {
    return { document: this.configDoc, format: this.opts.configPath !== null && /\.json$/i.test(this.opts.configPath) ? 'json' : 'yaml' };
  }

  /** Test hook: make worker `i` throw (TURNPIKE_TEST_HOOKS=1). */
  crashWorker(i: number): void {
    this.slots[i]?.worker?.postMessage({ type: 'crash' } satisfies ToWorker);
  }

  /** Test hook (TURNPIKE_TEST_HOOKS=1 and SIGWINCH): makes the admin thread crash. */
  crashAdmin(): void {
    this.admin?.postMessage({ type: 'crash' } satisfies ToAdmin);
  }

  /**
   * Drain every thread, then resolve with the exit code to use. After a
   * start that failed (`failedStart`), the threads that did start are
   * stopped the same way, without the drain delay and without the
   * `draining`/`stopped` lines: nothing was ever served.
   */
  async shutdown(failedStart = false): Promise<number> {
    if (this.draining) return 0;
    this.draining = true;
    Atomics.store(this.controlView, C_DRAINING, 1);
    const timeoutMs = this.config.server.drainTimeoutMs;
    const delayMs = failedStart ? 0 : this.config.server.drainDelayMs;
    if (delayMs > 0) {
      // Health checks fail from now on (admin /health, server.healthPath)
      // while the listeners still accept and serve: load balancers take the
      // node out before it stops accepting.
      log('info', 'drain delay: health checks fail, requests are still served', { delayMs });
      await new Promise((r) => setTimeout(r, delayMs));
    }
    if (!failedStart) log('info', 'draining', { timeoutMs });
    // The workers' copies keep the shared socket listening until each drains.
    this.listener?.close();
    let leftover = 0;
    let stuck = 0;
    await Promise.all(this.slots.map((slot) => new Promise<void>((resolve) => {
      const w = slot.worker;
      if (w === null) return resolve();
      slot.exiting = true;
      w.on('message', (m: FromWorker) => { if (m.type === 'drained') leftover += m.inFlight; });
      // A worker that has not exited SHUTDOWN_GRACE_MS after its drain ran out (blocked
      // in something that never returns) is terminated: a stop always ends.
      const kill = setTimeout(() => { stuck++; void w.terminate(); }, timeoutMs + SHUTDOWN_GRACE_MS);
      w.once('exit', () => { clearTimeout(kill); resolve(); });
      w.postMessage({ type: 'drain', timeoutMs } satisfies ToWorker);
    })));
    // No worker counts any more: the last save of local quota counts.
    await this.quotas?.close();
    if (this.admin !== null) {
      const a = this.admin;
      await new Promise<void>((resolve) => {
        const kill = setTimeout(() => { stuck++; void a.terminate(); }, SHUTDOWN_GRACE_MS);
        a.once('exit', () => { clearTimeout(kill); resolve(); });
        a.postMessage({ type: 'drain' } satisfies ToAdmin);
      });
    }
    if (stuck > 0) log('warn', 'threads that did not stop in time were terminated', { threads: stuck, graceMs: SHUTDOWN_GRACE_MS });
    if (leftover > 0) log('warn', 'drain timeout: requests were cut off', { requests: leftover });
    if (this.portLock !== null) {
      try { unlinkSync(this.portLock); } catch { /* gone already */ }
    }
    if (!failedStart) log('info', 'stopped');
    return 0;
  }
}

/** Some upstream discovers targets (DNS or registry: run by the admin thread). */
function hasDiscovery(config: GatewayConfig): boolean {
  return Object.values(config.upstreams).some((u) => u.dns !== null || u.registry !== null);
}

/**
 * The user's config with discovered targets merged in: for each upstream
 * with `dns` or `registry`, its configured targets (with their weights),
 * then the registered ones, then the DNS ones, each URL once. The snapshot's
 * entries of a source the upstream no longer has (a reload removed it) are
 * ignored. Returns `user` itself when nothing is merged, and which targets
 * were added by which source.
 */
export function mergeDiscovered(user: GatewayConfig, snapshot: DiscoverySnapshot): { config: GatewayConfig; sources: TargetSourceEntries } {
  let upstreams: Record<string, UpstreamConfig> | null = null;
  const sources: (readonly [string, string, 'dns' | 'registry'])[] = [];
  for (const [name, found] of snapshot) {
    const u = user.upstreams[name];
    if (u === undefined || found.length === 0) continue;
    const seen = new Set(u.targets.map((t) => t.url));
    const targets: TargetConfig[] = [...u.targets];
    for (const source of ['registry', 'dns'] as const) {
      if ((source === 'dns' ? u.dns : u.registry) === null) continue;
      for (const t of found) {
        if (t.source !== source || seen.has(t.url)) continue;
        seen.add(t.url);
        targets.push({ url: t.url, host: t.host, port: t.port, tls: t.url.startsWith('https:'), weight: t.weight });
        sources.push([name, t.url, source]);
      }
    }
    if (targets.length === u.targets.length) continue;
    upstreams ??= Object.assign(Object.create(null) as Record<string, UpstreamConfig>, user.upstreams);
    upstreams[name] = Object.freeze({ ...u, targets: Object.freeze(targets) });
  }
  return { config: upstreams === null ? user : Object.freeze({ ...user, upstreams: Object.freeze(upstreams) }) as GatewayConfig, sources };
}

/** Per upstream whose target list differs between two configs: the URLs added and removed (weights changed count as both). */
function targetChanges(a: GatewayConfig, b: GatewayConfig): { upstream: string; added: string[]; removed: string[] }[] {
  const out: { upstream: string; added: string[]; removed: string[] }[] = [];
  for (const u of Object.values(b.upstreams)) {
    const before = a.upstreams[u.name]?.targets ?? [];
    const key = (t: TargetConfig) => `${t.url} ${t.weight}`;
    if (before.length === u.targets.length && before.every((t, i) => key(t) === key(u.targets[i]!))) continue;
    const was = new Set(before.map(key));
    const now = new Set(u.targets.map(key));
    out.push({
      upstream: u.name,
      added: u.targets.filter((t) => !was.has(key(t))).map((t) => t.url),
      removed: before.filter((t) => !now.has(key(t))).map((t) => t.url),
    });
  }
  return out;
}

/** Some upstream has active health checks (run by the admin thread). */
function hasHealthChecks(config: GatewayConfig): boolean {
  return Object.values(config.upstreams).some((u) => u.healthCheck !== null);
}

/** Host names in a lock file's name: 0.0.0.0 and :: (every address) overlap with any other. */
const WILDCARD_HOSTS: ReadonlySet<string> = new Set(['0.0.0.0', '::', '', '[::]']);

/** `<tmpdir>/turnpike-port-<port>-<host>.lock` (the host with anything but letters, digits, `.` and `-` as `_`). */
export function portLockFile(host: string, port: number): string {
  return join(tmpdir(), `turnpike-port-${port}-${host.replace(/[^A-Za-z0-9.-]/g, '_')}.lock`);
}

/**
 * Takes the lock file of server.host and server.port (created exclusively,
 * holding this pid and its start time): two gateways starting at once on
 * one address cannot both pass the free-port check. Gateways on different
 * addresses of one port (127.0.0.1 and 127.0.0.2) do not conflict; 0.0.0.0
 * or :: conflicts with every address of its port. A lock whose process is
 * gone, or whose pid now belongs to another process (pid reuse after a
 * kill -9 or the OOM killer: its start time differs, or it is not a
 * turnpike), is stale and taken over. Returns the file's path (null when no
 * lock can be made in the temp directory: the port check still runs);
 * throws when a live gateway holds the address.
 */
function lockPort(host: string, port: number): string | null {
  const file = portLockFile(host, port);
  const mine = `${process.pid} ${processStartTime(process.pid) ?? ''}\n`;
  let taken = false;
  for (let attempt = 0; attempt < 2 && !taken; attempt++) {
    try {
      writeFileSync(file, mine, { flag: 'wx', mode: 0o644 });
      taken = true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') return null;
      const holder = liveHolder(file);
      if (holder !== null) {
        throw new Error(`${host}:${port} is being taken by another turnpike (pid ${holder}, lock ${file}); stop it or change server.port`);
      }
      try { unlinkSync(file); } catch { /* raced with another: retry once */ }
    }
  }
  if (!taken) throw new Error(`${host}:${port}: could not take the lock ${file}; another turnpike is starting on it, try again`);
  // Another address of this port: only a wildcard (or this one being one) overlaps.
  const prefix = `turnpike-port-${port}-`;
  let names: string[] = [];
  try { names = readdirSync(tmpdir()); } catch { /* unreadable: the port check still runs */ }
  const wildcard = WILDCARD_HOSTS.has(host);
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith('.lock') || join(tmpdir(), name) === file) continue;
    const other = name.slice(prefix.length, -'.lock'.length);
    if (!wildcard && other !== '0.0.0.0' && other !== '__' && other !== '____') continue;
    const holder = liveHolder(join(tmpdir(), name));
    if (holder === null) continue;
    try { unlinkSync(file); } catch { /* gone already */ }
    throw new Error(`port ${port} on ${host} is being taken by another turnpike on an overlapping address (pid ${holder}, lock ${join(tmpdir(), name)}); stop it or change server.port or server.host`);
  }
  return file;
}

/** The pid of a live turnpike holding `file`, or null when the lock is stale (or unreadable). */
function liveHolder(file: string): number | null {
  let text: string;
  try { text = readFileSync(file, 'utf8'); } catch { return null; }
  const [pidText, startText] = text.trim().split(/\s+/);
  const pid = Number(pidText);
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid || !isAlive(pid)) return null;
  const start = processStartTime(pid);
  if (startText !== undefined && startText !== '' && start !== null) return startText === start ? pid : null; // pid reused
  // A lock without a start time (written by an older version): a live turnpike has its name on its command line.
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return /turnpike|engine[/\\]cli\.js/.test(cmdline) ? pid : null;
  } catch {
    return pid; // no /proc: a live pid is taken at its word
  }
}

/** The start time of a process (field 22 of /proc/<pid>/stat, clock ticks since boot), or null without /proc. */
function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19] ?? null;
  } catch {
    return null;
  }
}

function assertPortFree(host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', (err: NodeJS.ErrnoException) => {
      switch (err.code) {
        case 'EADDRINUSE':
          reject(new Error(`${host}:${port} is not available (EADDRINUSE): another process listens there; stop it or change server.port`));
          return;
        case 'EADDRNOTAVAIL':
          reject(new Error(`cannot listen on ${host} (EADDRNOTAVAIL): no network interface of this machine has that address; use one it has, or 0.0.0.0 for all`));
          return;
        case 'ENOTFOUND':
        case 'EAI_AGAIN':
          reject(new Error(`cannot listen on ${host} (${err.code}): the host name does not resolve; use an IP address such as 0.0.0.0 or 127.0.0.1`));
          return;
        case 'EACCES':
          reject(new Error(`cannot listen on port ${port} (EACCES): ports below 1024 need privileges; use a port >= 1024 or grant CAP_NET_BIND_SERVICE`));
          return;
        default:
          reject(new Error(`cannot listen on ${host}:${port} (${err.code}): ${err.message}; check server.host and server.port`));
      }
    });
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => resolve()));
  });
}

function findFreePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen({ host, port: 0, exclusive: true }, () => {
      const addr = probe.address() as net.AddressInfo;
      probe.close(() => resolve(addr.port));
    });
  });
}

/**
 * Write temp, fsync, rename, fsync the directory: the file is old or new,
 * never half. The new file keeps the old one's mode (and owner, when the
 * gateway may set it), and the old content is kept as `<path>.bak` (one
 * backup, replaced by the next write, with the old file's mode and owner):
 * PUT /admin/config never loses the file it replaces. A config file that is
 * a symlink is written through it: its target (`<target>.bak` beside it) is
 * replaced and the link stays a link.
 */
function writeAtomically(configPath: string, doc: unknown): void {
  const text = /\.json$/i.test(configPath) ? JSON.stringify(doc, null, 2) + '\n' : toYaml(doc);
  let path = configPath;
  try {
    path = realpathSync(configPath);
  } catch { /* no file yet (or a dangling link's target is missing): written as named */ }
  let old: Stats | null = null;
  try {
    old = statSync(path);
  } catch { /* first write */ }
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', old !== null ? old.mode & 0o7777 : 0o600);
  try {
    writeSync(fd, text);
    if (old !== null) {
      fchmodSync(fd, old.mode & 0o7777);
      try { fchownSync(fd, old.uid, old.gid); } catch { /* not permitted: keeps the gateway's own */ }
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  if (old !== null) {
    const bak = `${path}.bak`;
    copyFileSync(path, bak);
    chmodSync(bak, old.mode & 0o7777);
    try { chownSync(bak, old.uid, old.gid); } catch { /* not permitted: keeps the gateway's own */ }
  }
  renameSync(tmp, path);
  const dfd = openSync(dirname(path), 'r');
  try { fsyncSync(dfd); } finally { closeSync(dfd); }
}
