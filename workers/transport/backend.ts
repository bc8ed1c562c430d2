/**
 * What every server backend of a worker (uWS, Bun; the strict node:net one
 * later) shares: the interface the worker drives, the options it is built
 * with, and the transport-neutral rules they must apply alike. Importing
 * this pulls in no backend.
 */
import { errorBody, errorBodyWith, type GatewayErrorDef } from '../../common/errors.js';
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

/**
 * A config this backend cannot serve although it validated (TLS material
 * its TLS library cannot load: BoringSSL on uWS and Bun). The message names
 * the setting and what to do, in one line: it is what the reload's 422 and
 * a failed start say, without a stack trace (workers/worker.ts).
 */
export class ConfigRefusedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigRefusedError';
  }
}

/** Why a backend closes (Backend.close). */
export type CloseReason = 'drained' | 'crashed';

/** A worker's server backend, as the worker thread drives it. */
export interface Backend {
  /** Starts listening; resolves the port bound. */
  listen(): Promise<number>;
  /**
   * Builds, before anything is applied, what serving `dp` needs that can
   * fail: the TLS listener of a changed server.tls (uWS: the new SSLApp,
   * kept for the setDataplane that follows so it is built once; node: the
   * SecureContexts; Bun: each certificate, key and setting loaded into its
   * TLS library). Throws a ConfigRefusedError naming the setting when the
   * backend cannot load it: the worker then refuses the config
   * (`config-failed`) and the engine rolls the reload back. Also run once
   * before listen() (a start with such material ends with that message).
   * The worker calls setDataplane(dp) right after it returns. Absent: a
   * backend with nothing that can fail.
   */
  prepare?(dp: Dataplane): void;
  /** Swap to a new config between requests; in-flight exchanges keep theirs. */
  setDataplane(dp: Dataplane): void;
  /** Stop accepting new connections; in-flight requests continue. */
  stopListening(): void;
  /**
   * Final close. `drained`: after the drain (server.drainTimeoutMs): the
   * requests still in flight are ended by the gateway, answered 503
   * shutting_down when nothing was sent yet, and logged and counted so
   * (never as client_aborted). `crashed`: the worker is dying of a fatal
   * error: in-flight requests are left uncounted, for the engine to add to
   * turnpike_requests_lost_total. Resolves once the sockets are closed.
   */
  close(reason: CloseReason): void | Promise<void>;
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

/**
 * Body bytes of a gateway error's answer (`message`: a policy's, instead of
 * the catalogue's): what the access log's `bytes_sent` and
 * turnpike_response_size_bytes count, as nginx's $body_bytes_sent does
 * (0 for HEAD: no body is sent).
 */
export function gatewayErrorBytes(e: GatewayErrorDef, requestId: string, isHead: boolean, message: string | null = null): number {
  if (isHead) return 0;
  return Buffer.byteLength(message === null ? errorBody(e, requestId) : errorBodyWith(e, message, requestId));
}

/** The 503 shutting_down of a request the drain timeout cut before its response came: it may have reached the upstream. */
export const SHUTDOWN_MESSAGE = 'The gateway shut down (server.drainTimeoutMs ran out) before this request was answered; it may have reached the upstream.';
