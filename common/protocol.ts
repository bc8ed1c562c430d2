/**
 * Messages between the threads, and the shared control block.
 *
 * Every message is a discriminated union on `type`; nothing else crosses a
 * thread boundary except the SharedArrayBuffers described here and in
 * metrics-layout.ts.
 */
import type { MessagePort } from 'node:worker_threads';
import type { GatewayConfig } from './config/types.js';
import type { Level } from './log.js';
import type { AccessRing } from './access-ring.js';
import type { ClockEpoch } from './rate-limit-layout.js';

/** Route id -> metrics slot, stable for the life of the process. */
export type SlotEntries = ReadonlyArray<readonly [routeId: string, slot: number]>;
/** (upstream name, target url) -> metrics slot, stable for the life of the process. */
export type TargetSlotEntries = ReadonlyArray<readonly [upstream: string, url: string, slot: number]>;
/** Upstream name -> its slot in the shared upstream state (common/upstream-state-layout.ts), stable for the life of the process. */
export type UpstreamSlotEntries = ReadonlyArray<readonly [upstream: string, slot: number]>;

/** Where a target of the running config comes from (GET /admin/upstreams `source`). */
export type TargetSource = 'config' | 'dns' | 'registry';

/** A target found by discovery (admin/discovery/): what the engine merges into its upstream's targets. */
export interface DiscoveredTarget {
  /** Normalised `http://host:port`, as a config target's. */
  url: string;
  host: string;
  port: number;
  weight: number;
  source: 'dns' | 'registry';
  /** Registry: when it expires unless renewed (ms since the epoch); DNS: null. */
  expiresAt: number | null;
}

/**
 * Every upstream with `dns` or `registry` and the targets discovery finds for
 * it now (registrations first, then DNS answers; one URL at most once per
 * source). A whole snapshot, never a delta: the engine keeps the last one.
 */
export type DiscoverySnapshot = ReadonlyArray<readonly [upstream: string, targets: readonly DiscoveredTarget[]]>;

/** The targets of the running config that discovery added (every other target is from the config file). */
export type TargetSourceEntries = ReadonlyArray<readonly [upstream: string, url: string, source: 'dns' | 'registry']>;

export interface WorkerData {
  index: number;
  config: GatewayConfig;
  /** The gateway log level now (a runtime change may differ from config.log.level). */
  logLevel: Level;
  slots: SlotEntries;
  targetSlots: TargetSlotEntries;
  metrics: SharedArrayBuffer;
  /** This worker slot's access log ring (common/access-ring.ts). */
  accessRing: AccessRing;
  /** This worker slot's gateway log ring (common/log.ts), written to stderr by the engine. */
  logRing: AccessRing;
  control: SharedArrayBuffer;
  /** Private line to the admin thread for latency snapshots (see workers/latency.ts). */
  statsPort: MessagePort;
  /** The process's rate-limit buckets (common/rate-limit-layout.ts), created once at start. */
  rateLimitTable: SharedArrayBuffer;
  /** The shared clock's epoch (common/rate-limit-layout.ts). */
  clock: ClockEpoch;
  /** Breakers, health, ejection and in-flight per target (common/upstream-state-layout.ts), created once at start. */
  upstreamState: SharedArrayBuffer;
  upstreamSlots: UpstreamSlotEntries;
  /** WebSocket connections per key, one column per worker index (common/websocket-layout.ts), created once at start. */
  wsConnections: SharedArrayBuffer;
  /**
   * server.backend node on Node: this worker's own descriptor of the engine's
   * listening socket (engine/shared-listener.ts), which it listens on and
   * closes when it exits; null for the other backends (each binds the port).
   */
  listenFd: number | null;
}

export interface AdminData {
  config: GatewayConfig;
  document: ConfigDocument;
  logLevel: Level;
  slots: SlotEntries;
  targetSlots: TargetSlotEntries;
  /** One per worker index. */
  metrics: SharedArrayBuffer[];
  control: SharedArrayBuffer;
  /** The admin thread's gateway log ring (common/log.ts), written to stderr by the engine. */
  logRing: AccessRing;
  /** One per worker index that exists when the admin thread starts. */
  statsPorts: (MessagePort | null)[];
  version: string;
  startedAt: number;
  rateLimitTable: SharedArrayBuffer;
  clock: ClockEpoch;
  upstreamState: SharedArrayBuffer;
  upstreamSlots: UpstreamSlotEntries;
  /** The discovered targets the running config was built with (a restarted admin thread starts from them). */
  discovered: DiscoverySnapshot;
  /** Which targets of `config` discovery added. */
  sources: TargetSourceEntries;
  /**
   * The admin token used when none is configured (admin/api/auth.ts),
   * made once by the engine, so that an admin thread restarted after a
   * crash keeps the token clients already read from its file.
   */
  fallbackToken: string;
}

export type ToWorker =
  | { type: 'config'; config: GatewayConfig; slots: SlotEntries; targetSlots: TargetSlotEntries; upstreamSlots: UpstreamSlotEntries }
  | { type: 'drain'; timeoutMs: number }
  /** The gateway log level, changed at runtime (PUT /admin/logging). */
  | { type: 'log-level'; level: Level }
  /** SIGUSR1: reopen log files (logrotate). */
  | { type: 'reopen-logs' }
  /** A new admin thread replaced one that died: the worker's end of its latency line (see workers/latency.ts). */
  | { type: 'stats-port'; port: MessagePort }
  | { type: 'crash' };

export type FromWorker =
  | { type: 'ready'; port: number; backend: string }
  | { type: 'config-applied'; version: number }
  /** The worker could not compile the config (a bug: validation runs the same compile); it keeps its old one. */
  | { type: 'config-failed'; version: number; message: string }
  | { type: 'drained'; inFlight: number }
  | { type: 'fatal'; message: string };

/** What a reload changed, by id/name (see common/config/diff.ts). */
export interface ConfigChanges {
  routes: { added: string[]; removed: string[]; changed: string[] };
  upstreams: { added: string[]; removed: string[]; changed: string[] };
  /** Top-level settings paths that changed, e.g. `server.limits.maxBodyBytes`. */
  settings: string[];
}

export interface ReloadResult {
  ok: boolean;
  /** Version now serving (the new one when ok, the old one when not). */
  version: number;
  errors: { path: string; message: string }[];
  changes: ConfigChanges | null;
  /** PUT only: the document was written to the config file. */
  persisted: boolean;
  /** A valid config's warnings (an unused upstream, no routes...): see common/config/validate.ts semanticWarnings. */
  warnings?: { path: string; message: string }[];
}

/**
 * The running config as its document (before environment and --set
 * overrides) and the format of the config file: GET /admin/config?format=file.
 */
export interface ConfigDocument {
  document: unknown;
  format: 'yaml' | 'json';
}

export type ToAdmin =
  /**
   * The running config (with the discovered targets merged in: `discovered`
   * is what was merged), after a reload or a discovery update.
   */
  | { type: 'config'; config: GatewayConfig; slots: SlotEntries; targetSlots: TargetSlotEntries; upstreamSlots: UpstreamSlotEntries; document: ConfigDocument; discovered: DiscoverySnapshot; sources: TargetSourceEntries }
  | { type: 'reload-result'; id: number; result: ReloadResult }
  /** A worker was (re)started: its stats line. */
  | { type: 'stats-port'; index: number; port: MessagePort }
  | { type: 'log-level'; level: Level }
  | { type: 'drain' }
  /** Test hook (TURNPIKE_TEST_HOOKS=1 only): an uncaught exception in the admin thread. */
  | { type: 'crash' };

export type FromAdmin =
  | { type: 'ready'; port: number }
  | { type: 'fatal'; message: string }
  /**
   * Ask the engine to reload: from the config file (doc absent), or from a
   * new document (PUT /admin/config) that, when valid, is also persisted to
   * the config file atomically. `dryRun` validates and diffs only.
   */
  | { type: 'reload'; id: number; doc?: unknown; dryRun?: boolean; actor: string }
  /** PUT /admin/logging: set the gateway log level in every thread (until the next reload or restart). */
  | { type: 'log-level'; level: Level; actor: string }
  /**
   * Discovery (admin/discovery/) found a new set of targets for some
   * upstream: the whole snapshot. The engine merges it into the user's
   * config and sends the workers a new config version (not a reload: no
   * audit record, no reload count, the config file untouched).
   */
  | { type: 'discovery'; upstreams: DiscoverySnapshot };

// -- control block (Int32Array over a SharedArrayBuffer, written by the engine)
export const C_DRAINING = 0;
export const C_CONFIG_VERSION = 1;
export const C_WORKER_COUNT = 2;
export const C_RESTARTS = 3;
export const C_RELOADS_OK = 4;
export const C_RELOADS_FAILED = 5;
/** Wall-clock second the engine started (heartbeats count from it). */
export const C_EPOCH = 6;
/** Access log lines dropped by the engine's writer (slow or failing destination), a running total. */
export const C_ACCESS_LOG_DROPPED = 7;
/** Per worker index: one of the W_* states. */
export const C_WORKER_STATE = 8;
export const MAX_WORKERS = 256;
/**
 * Per worker index: its last heartbeat, in deciseconds since C_EPOCH. A
 * worker beats every HEARTBEAT_MS from its event loop: a loop blocked (a bug,
 * a runaway computation) stops the beat, and /health says so.
 */
export const C_WORKER_BEAT = C_WORKER_STATE + MAX_WORKERS;
/** Gateway log lines dropped (a thread's ring was full: stderr did not keep up, or failed), a running total. */
export const C_LOG_DROPPED = C_WORKER_BEAT + MAX_WORKERS;
/**
 * Requests in flight in a worker when it died (a crash): their clients got
 * a reset, and no access line or turnpike_requests_total count. A running total.
 */
export const C_REQUESTS_LOST = C_LOG_DROPPED + 1;
export const CONTROL_BYTES = (C_REQUESTS_LOST + 1) * 4;
export const HEARTBEAT_MS = 500;
/** A ready worker whose last beat is older than this is reported `stalled`. */
export const STALLED_AFTER_MS = 3000;

/**
 * A worker's state as reported: starting, ready, draining, dead, or
 * `stalled` for a ready worker whose heartbeat is older than STALLED_AFTER_MS
 * (its event loop is blocked).
 */
export function workerState(control: Int32Array, index: number): string {
  const st = Atomics.load(control, C_WORKER_STATE + index);
  if (st === W_READY && (beatNow(control) - Atomics.load(control, C_WORKER_BEAT + index)) * 100 > STALLED_AFTER_MS) return 'stalled';
  return ['starting', 'ready', 'draining', 'dead'][st] ?? 'unknown';
}

/** Deciseconds since the engine's start: what a heartbeat cell holds. */
export function beatNow(control: Int32Array): number {
  return Math.floor(Date.now() / 100) - Atomics.load(control, C_EPOCH) * 10;
}

export const W_STARTING = 0;
export const W_READY = 1;
export const W_DRAINING = 2;
export const W_DEAD = 3;
