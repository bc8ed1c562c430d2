/**
 * Messages between the threads, and the shared control block.
 *
 * Every message is a discriminated union on `type`; nothing else crosses a
 * thread boundary except the SharedArrayBuffers described here and in
 * metrics-layout.ts.
 */
import type { GatewayConfig } from './config/types.js';

/** Route id -> metrics slot, stable for the life of the process. */
export type SlotEntries = ReadonlyArray<readonly [routeId: string, slot: number]>;

export interface WorkerData {
  index: number;
  config: GatewayConfig;
  slots: SlotEntries;
  metrics: SharedArrayBuffer;
  control: SharedArrayBuffer;
}

export interface AdminData {
  config: GatewayConfig;
  slots: SlotEntries;
  /** One per worker index. */
  metrics: SharedArrayBuffer[];
  control: SharedArrayBuffer;
  version: string;
  startedAt: number;
}

export type ToWorker =
  | { type: 'config'; config: GatewayConfig; slots: SlotEntries }
  | { type: 'drain'; timeoutMs: number }
  | { type: 'crash' };

export type FromWorker =
  | { type: 'ready'; port: number; backend: string }
  | { type: 'config-applied'; version: number }
  | { type: 'drained'; inFlight: number }
  | { type: 'fatal'; message: string };

export type ToAdmin =
  | { type: 'config'; config: GatewayConfig; slots: SlotEntries }
  | { type: 'drain' };

export type FromAdmin =
  | { type: 'ready'; port: number }
  | { type: 'fatal'; message: string };

// -- control block (Int32Array over a SharedArrayBuffer, written by the engine)
export const C_DRAINING = 0;
export const C_CONFIG_VERSION = 1;
export const C_WORKER_COUNT = 2;
export const C_RESTARTS = 3;
/** Per worker index: one of the W_* states. */
export const C_WORKER_STATE = 8;
export const MAX_WORKERS = 256;
export const CONTROL_BYTES = (C_WORKER_STATE + MAX_WORKERS) * 4;

export const W_STARTING = 0;
export const W_READY = 1;
export const W_DRAINING = 2;
export const W_DEAD = 3;
