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
import net from 'node:net';
import { Worker } from 'node:worker_threads';
import type { GatewayConfig } from '../common/config/types.js';
import { log } from '../common/log.js';
import { DEFAULT_MAX_ROUTE_SLOTS, FIRST_ROUTE_SLOT, metricsBufferBytes } from '../common/metrics-layout.js';
import type { AdminData, FromAdmin, FromWorker, SlotEntries, ToAdmin, ToWorker, WorkerData } from '../common/protocol.js';
import {
  C_CONFIG_VERSION, C_DRAINING, C_RESTARTS, C_WORKER_COUNT, C_WORKER_STATE, CONTROL_BYTES, MAX_WORKERS, W_DEAD, W_STARTING,
} from '../common/protocol.js';

const WORKER_ENTRY = new URL('../workers/worker.js', import.meta.url);
const ADMIN_ENTRY = new URL('../admin/admin.js', import.meta.url);

/** Restart backoff: 100 ms doubling to 10 s; reset after a worker lived 30 s. */
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 10_000;
const STABLE_AFTER_MS = 30_000;

interface Slot {
  index: number;
  worker: Worker | null;
  metrics: SharedArrayBuffer;
  startedAt: number;
  backoffMs: number;
  ready: boolean;
  exiting: boolean;
}

export interface StartedGateway {
  port: number;
  adminPort: number | null;
  backend: string;
  stop(): Promise<number>;
}

export class Supervisor {
  config: GatewayConfig;
  private readonly control = new SharedArrayBuffer(CONTROL_BYTES);
  private readonly controlView = new Int32Array(this.control);
  private readonly slots: Slot[] = [];
  private readonly routeSlots = new Map<string, number>();
  private nextRouteSlot = FIRST_ROUTE_SLOT;
  private admin: Worker | null = null;
  private draining = false;
  private port = 0;
  private backend = '';
  private readonly version: string;
  private readonly startedAt = Date.now();

  constructor(config: GatewayConfig, version: string) {
    if (config.server.workers > MAX_WORKERS) throw new Error(`server.workers: at most ${MAX_WORKERS}`);
    this.config = config;
    this.version = version;
    this.assignSlots(config);
  }

  private assignSlots(config: GatewayConfig): SlotEntries {
    for (const r of config.routes) {
      if (!this.routeSlots.has(r.id) && this.nextRouteSlot < DEFAULT_MAX_ROUTE_SLOTS) this.routeSlots.set(r.id, this.nextRouteSlot++);
    }
    return [...this.routeSlots];
  }

  async start(): Promise<StartedGateway> {
    const n = this.config.server.workers;
    // Workers listen with SO_REUSEPORT, which would let this gateway silently
    // share a port with another process already serving it. A plain bind
    // (no SO_REUSEPORT) fails if anyone holds the port: check first.
    if (this.config.server.port !== 0) await assertPortFree(this.config.server.host, this.config.server.port);
    else {
      // uSockets binds port 0 without SO_REUSEPORT, so the other workers could
      // not join it: pick a free port here and give every worker that one.
      const port = await findFreePort(this.config.server.host);
      this.config = { ...this.config, server: { ...this.config.server, port } };
    }
    Atomics.store(this.controlView, C_WORKER_COUNT, n);
    Atomics.store(this.controlView, C_CONFIG_VERSION, this.config.version);
    for (let i = 0; i < n; i++) {
      this.slots.push({
        index: i, worker: null, metrics: new SharedArrayBuffer(metricsBufferBytes(DEFAULT_MAX_ROUTE_SLOTS)),
        startedAt: 0, backoffMs: BACKOFF_MIN_MS, ready: false, exiting: false,
      });
    }
    await Promise.all(this.slots.map((s) => this.spawnWorker(s)));
    let adminPort: number | null = null;
    if (this.config.admin.enabled) adminPort = await this.spawnAdmin();
    return {
      port: this.port,
      adminPort,
      backend: this.backend,
      stop: () => this.shutdown(),
    };
  }

  private spawnWorker(slot: Slot): Promise<void> {
    const data: WorkerData = {
      index: slot.index, config: this.config, slots: [...this.routeSlots], metrics: slot.metrics, control: this.control,
    };
    Atomics.store(this.controlView, C_WORKER_STATE + slot.index, W_STARTING);
    const w = new Worker(WORKER_ENTRY, { workerData: data, name: `turnpike-worker-${slot.index}` });
    slot.worker = w;
    slot.ready = false;
    slot.exiting = false;
    slot.startedAt = Date.now();
    return new Promise((resolve, reject) => {
      let settled = false;
      w.on('message', (msg: FromWorker) => {
        if (msg.type === 'ready') {
          slot.ready = true;
          if (this.port === 0) this.port = msg.port;
          this.backend = msg.backend;
          if (!settled) { settled = true; resolve(); }
        } else if (msg.type === 'fatal') {
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
        if (!settled) { settled = true; reject(new Error(`worker ${slot.index} exited with code ${code} before it was ready`)); return; }
        if (this.draining || slot.exiting) return;
        this.scheduleRestart(slot, code);
      });
    });
  }

  private scheduleRestart(slot: Slot, code: number): void {
    const lived = Date.now() - slot.startedAt;
    if (lived >= STABLE_AFTER_MS) slot.backoffMs = BACKOFF_MIN_MS;
    const delay = slot.backoffMs;
    slot.backoffMs = Math.min(BACKOFF_MAX_MS, slot.backoffMs * 2);
    Atomics.add(this.controlView, C_RESTARTS, 1);
    log(delay >= BACKOFF_MAX_MS ? 'error' : 'warn', 'worker exited; restarting', {
      worker: slot.index, code, restartInMs: delay, crashLoop: delay >= BACKOFF_MAX_MS,
    });
    setTimeout(() => {
      if (this.draining) return;
      this.spawnWorker(slot).catch((err: Error) => {
        log('error', 'worker restart failed', { worker: slot.index, error: err.message });
      });
    }, delay).unref();
  }

  private spawnAdmin(): Promise<number> {
    const data: AdminData = {
      config: this.config, slots: [...this.routeSlots], metrics: this.slots.map((s) => s.metrics),
      control: this.control, version: this.version, startedAt: this.startedAt,
    };
    const w = new Worker(ADMIN_ENTRY, { workerData: data, name: 'turnpike-admin' });
    this.admin = w;
    return new Promise((resolve, reject) => {
      w.on('message', (msg: FromAdmin) => {
        if (msg.type === 'ready') resolve(msg.port);
        else if (msg.type === 'fatal') reject(new Error(msg.message));
      });
      w.on('error', (err) => reject(err));
      w.on('exit', (code) => {
        this.admin = null;
        if (!this.draining) log('error', 'admin thread exited', { code });
      });
    });
  }

  /** Test hook: make worker `i` throw (TURNPIKE_TEST_HOOKS=1). */
  crashWorker(i: number): void {
    this.slots[i]?.worker?.postMessage({ type: 'crash' } satisfies ToWorker);
  }

  /** Drain every thread, then resolve with the exit code to use. */
  async shutdown(): Promise<number> {
    if (this.draining) return 0;
    this.draining = true;
    Atomics.store(this.controlView, C_DRAINING, 1);
    const timeoutMs = this.config.server.drainTimeoutMs;
    log('info', 'draining', { timeoutMs });
    let leftover = 0;
    await Promise.all(this.slots.map((slot) => new Promise<void>((resolve) => {
      const w = slot.worker;
      if (w === null) return resolve();
      slot.exiting = true;
      w.on('message', (m: FromWorker) => { if (m.type === 'drained') leftover += m.inFlight; });
      w.once('exit', () => resolve());
      w.postMessage({ type: 'drain', timeoutMs } satisfies ToWorker);
    })));
    if (this.admin !== null) {
      const a = this.admin;
      await new Promise<void>((resolve) => {
        a.once('exit', () => resolve());
        a.postMessage({ type: 'drain' } satisfies ToAdmin);
      });
    }
    if (leftover > 0) log('warn', 'drain timeout: requests were cut off', { requests: leftover });
    log('info', 'stopped');
    return 0;
  }
}

function assertPortFree(host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', (err: NodeJS.ErrnoException) => {
      reject(new Error(`${host}:${port} is not available (${err.code}): another process listens there; stop it or change server.port`));
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
