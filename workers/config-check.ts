/**
 * What a config must pass before any worker is given it, run by `turnpike
 * validate`, at start, and on every reload (SIGHUP, --watch, admin API):
 * the route pattern check, then EXACTLY the compile step a worker runs when
 * it applies a config (`new Dataplane`: router, route contexts, header
 * plans, rewrites, upstream runtimes). One function, shared: a config that
 * validates is one every worker accepts, so a reload can no longer be
 * "applied" and then crash every worker on it.
 *
 * It lives on the worker side (common/ must not import workers/) and is
 * handed to the loader by the engine as its `checkPattern`/`checkCompile`
 * options.
 */
import type { ConfigError } from '../common/config/load.js';
import type { GatewayConfig } from '../common/config/types.js';
import { Dataplane } from './dataplane.js';
import { RouteCompileError, validateRoutePattern } from './router/compile.js';

/**
 * Compiles `config` as a worker would (no sockets are opened) and returns
 * the problems, each with the path of the route it concerns when known:
 * `routes[3]: duplicate of route "users" (...)`. Empty when it compiles.
 */
export function compileErrors(config: GatewayConfig): ConfigError[] {
  try {
    new Dataplane(config, new Map(), null);
    return [];
  } catch (err) {
    if (err instanceof RouteCompileError) {
      const i = config.routes.findIndex((r) => r.id === err.routeId);
      return [{ path: i === -1 ? 'routes' : `routes[${i}]`, message: err.reason }];
    }
    return [{ path: '', message: `the configuration cannot be compiled: ${err instanceof Error ? err.message : String(err)}` }];
  }
}

/** The loader options every caller in the engine passes (cli start/validate, supervisor reload). */
export const WORKER_CHECKS = Object.freeze({ checkPattern: validateRoutePattern, checkCompile: compileErrors });
