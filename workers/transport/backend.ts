/**
 * What every server backend of a worker (uWS, Bun; the strict node:net one
 * later) shares: the interface the worker drives, the options it is built
 * with, and the transport-neutral rules they must apply alike. Importing
 * this pulls in no backend.
 */
import type { Dataplane } from '../dataplane.js';
import type { LatencyRecorder } from '../latency.js';
import type { WorkerLogs } from '../logs.js';

export interface ServerOptions {
  host: string;
  port: number;
  workerIndex: number;
  metrics: Float64Array;
  latency: LatencyRecorder | null;
  /** The worker's access and error logs (their settings follow reloads). */
  logs: WorkerLogs;
  /** The engine's control block (common/protocol.ts): C_DRAINING says whether health checks fail. */
  control: Int32Array;
  /** Called with the port actually bound (useful with port 0). */
  onListen(port: number): void;
  /** This thread's performance.now() -> shared rate-limit clock (common/rate-limit-layout.ts clockOffset). */
  clockOffset: number;
}

/** A worker's server backend, as the worker thread drives it. */
export interface Backend {
  /** Starts listening; resolves the port bound. */
  listen(): Promise<number>;
  /** Swap to a new config between requests; in-flight exchanges keep theirs. */
  setDataplane(dp: Dataplane): void;
  /** Stop accepting new connections; in-flight requests continue. */
  stopListening(): void;
  /** Final close, after drain. */
  close(): void;
  readonly inFlight: number;
}

/**
 * An early answer (an error before the request body was read) keeps the
 * connection when the body still to come is declared with a Content-Length
 * of at most this many bytes: the server reads and discards it by its
 * framing, and the client reads the answer. Closing with unread bytes in
 * the socket makes the kernel send a reset, which can destroy the answer
 * before the client reads it (the problem nginx's lingering_close solves).
 * Larger declared bodies and chunked bodies (of unknown size) close at once
 * rather than be read for nothing.
 */
export const LINGER_MAX_BYTES = 8 * 1024 * 1024;

/** server.healthPath answers: while the engine drains (drainDelayMs included) health checks fail. */
export const HEALTH_OK = '{"status":"ok"}';
export const HEALTH_DRAINING = '{"status":"draining"}';
