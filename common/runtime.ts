/**
 * Which server backend `server.backend: auto` means in this process, decided
 * without loading any native code (the config is resolved on the engine's
 * thread, and in the CLI's validate).
 *
 * - Bun: `bun` (Bun.serve; uWS has no build for Bun).
 * - Node with a native binary of the uWS package for this Node's ABI: `uws`.
 *   The package we ship (@trufflesuite/uws-js-unofficial 20.30) has
 *   binaries for ABI 93/108/115 only, so that is Node 20 (ABI 115) here.
 * - Any other Node (22, 24, ...): `node`, the node:net server
 *   (workers/transport/node/app.ts). uWS would only fall back to a JS
 *   imitation that cannot proxy (workers/transport/uws-loader.ts refuses it).
 *
 * TURNPIKE_UWS_MODULE (another uWS build, loaded by uws-loader.ts) counts as
 * "uWS available": whoever set it wants uWS; if it cannot load, the loader
 * says so when the workers start.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/** The uWS package loaded when TURNPIKE_UWS_MODULE is not set. */
export const DEFAULT_UWS_MODULE = '@trufflesuite/uws-js-unofficial';

const IS_BUN = typeof (process.versions as Record<string, string | undefined>)['bun'] === 'string';

/** Whether this process runs on Bun (not Node). */
export function isBun(): boolean {
  return IS_BUN;
}

let nativeCache: boolean | null = null;

/**
 * Whether uWS can run natively here: TURNPIKE_UWS_MODULE is set, or the
 * default package has `binaries/uws_<platform>_<arch>_<ABI>.node` for this
 * Node (the file its loader requires). False on Bun and when the package is
 * not installed. Checks files only; never loads the addon. Cached.
 */
export function uwsNativeAvailable(): boolean {
  if (IS_BUN) return false;
  if ((process.env['TURNPIKE_UWS_MODULE'] ?? '') !== '') return true;
  if (nativeCache !== null) return nativeCache;
  try {
    const pkg = createRequire(import.meta.url).resolve(`${DEFAULT_UWS_MODULE}/package.json`);
    const bin = join(dirname(pkg), 'binaries', `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`);
    nativeCache = existsSync(bin);
  } catch {
    nativeCache = false;
  }
  return nativeCache;
}

/** The backend `server.backend: auto` stands for in this process (see the module comment). */
export function autoBackend(): 'uws' | 'bun' | 'node' {
  if (IS_BUN) return 'bun';
  return uwsNativeAvailable() ? 'uws' : 'node';
}
