/**
 * The one place that loads uWebSockets.js.
 *
 * The package we can install here (@trufflesuite/uws-js-unofficial, see
 * ENVIRONMENT.md) ships native binaries for Node ABI 93/108/115 only, and on
 * any other runtime it silently falls back to a JS imitation built on
 * node:http that throws "Not implemented" for tryEnd, onWritable, upgrade...
 * A proxy on that fallback would fail on its first streamed response, so we
 * refuse to start instead, and say what to do. To use another uWS build, set
 * TURNPIKE_UWS_MODULE to its package name or path.
 *
 * Only the uWS backend imports this module's loadUws (uws-server.ts when it
 * is given no other module): the node backend (server.backend: node, what
 * `auto` means on Node 22+, common/runtime.ts) never loads the addon.
 */
import { createRequire } from 'node:module';
import { DEFAULT_UWS_MODULE as DEFAULT_MODULE } from '../../common/runtime.js';
import type { ServerTlsConfig } from '../../common/config/types.js';

const require = createRequire(import.meta.url);

export type UWS = typeof import('@trufflesuite/uws-js-unofficial');

/**
 * What the transport (uws-server.ts) uses of a uWS module: a uWebSockets.js
 * build, or the node:net server of workers/transport/node/app.ts.
 * `strictHttp`: the server implements HTTP/1.x strictly itself (no uWS 20.30
 * quirks to work around; header values are latin1 strings, one char per
 * byte; the App takes `setLimits` and a `parseErrorHandler`).
 */
export interface UwsModule {
  App(): any;
  /**
   * uWebSockets.js's TLS app (server.tls, built by uws-tls.ts): options as
   * uSockets takes them (`key_file_name`, `cert_file_name`, `ssl_ciphers`:
   * certificates from files only). Absent: the module serves no TLS.
   */
  SSLApp?(options: Record<string, unknown>): any;
  /**
   * A TLS app built from the config's PEM in memory, preferred over SSLApp
   * when present (the node backend): one router for every server name, and
   * `app.setTls(tls)` changes the certificates in place on a reload (no
   * second listen socket: Node 20's net has no SO_REUSEPORT).
   */
  TlsApp?(tls: ServerTlsConfig): any;
  /**
   * With TlsApp: builds what `setTls(tls)` will use (it reuses it), and
   * throws a ConfigRefusedError (transport/backend.ts) naming the setting
   * when the certificates or settings cannot be loaded (Backend.prepare).
   */
  prepareTls?(tls: ServerTlsConfig): void;
  us_listen_socket_close(ls: any): void;
  us_socket_local_port(ls: any): number;
  readonly strictHttp?: boolean;
}

export class UwsUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UwsUnavailableError';
  }
}

let cached: UWS | null = null;

/** The version of the uWS package `loadUws` loads (package.json), or `unknown`; loads no native code. */
export function uwsPackageVersion(): string {
  const name = process.env.TURNPIKE_UWS_MODULE || DEFAULT_MODULE;
  try {
    const v = (require(`${name}/package.json`) as { version?: unknown }).version;
    return typeof v === 'string' ? v : 'unknown';
  } catch {
    return 'unknown';
  }
}

export function loadUws(): UWS {
  if (cached !== null) return cached;
  const name = process.env.TURNPIKE_UWS_MODULE || DEFAULT_MODULE;
  if ((process.versions as Record<string, string>).bun) {
    throw new UwsUnavailableError('uWebSockets.js has no native build for Bun; use server.backend: bun (the default on Bun).');
  }
  // The package prints a warning and falls back instead of throwing; silence
  // that path and detect it ourselves.
  const savedWarn = console.warn;
  const savedLog = console.log;
  let warned = '';
  console.warn = (...a: unknown[]) => { warned += a.join(' ') + '\n'; };
  console.log = (...a: unknown[]) => { warned += a.join(' ') + '\n'; };
  let mod: UWS;
  try {
    mod = require(name) as UWS;
  } catch (err) {
    throw new UwsUnavailableError(`cannot load ${name}: ${(err as Error).message}. Run npm ci, or set TURNPIKE_UWS_MODULE.`);
  } finally {
    console.warn = savedWarn;
    console.log = savedLog;
  }
  if (!isNative(mod) || warned.includes('Falling back') || warned.includes('fallback')) {
    throw new UwsUnavailableError(
      `${name} has no native binary for Node ${process.version} (ABI ${process.versions.modules}, ${process.platform}-${process.arch}) ` +
      'and fell back to a JS imitation that cannot stream or proxy. Use server.backend: node (or auto, which picks it on this Node), ' +
      'run Turnpike on Node 20 (ABI 115) for uWS, use Bun (server.backend: bun), or point TURNPIKE_UWS_MODULE at a uWS build for this Node.',
    );
  }
  cached = mod;
  return mod;
}

/** The native addon exposes us_listen_socket_close as a native function; the fallback's App is a JS class. */
function isNative(mod: UWS): boolean {
  const fn = (mod as any).us_listen_socket_close;
  if (typeof fn !== 'function') return false;
  return Function.prototype.toString.call(fn).includes('[native code]');
}
