/**
 * Compiles a route's policies into the array its requests run, once per
 * config version (fastify's `context[hook] = toSet.length ? toSet : null`):
 * null when the route has no policy, so that such a route proxies exactly
 * as the plain data plane does.
 *
 * Order (shared/DESIGN.md): IP rules -> authentication -> permissions ->
 * rate limits -> request validation -> transforms. Authentication
 * (API keys; permissions are part of its decision) and rate limits exist
 * so far; each policy kind adds its compile step here, in that order.
 */
import type { RouteConfig } from '../../common/config/types.js';
import { RateLimitPolicyRunner, type RateLimitEnv } from '../policies/rate-limit/index.js';
import { AuthPolicy, type AuthEnv } from '../policies/auth/index.js';
import type { Policy } from './context.js';

/** What compiled policies of a worker share (per thread). */
export interface PolicyEnv {
  rateLimit: RateLimitEnv | null;
  auth: AuthEnv | null;
}

export function compilePipeline(route: RouteConfig, routeSlot: number, env: PolicyEnv): Policy[] | null {
  const out: Policy[] = [];
  if (route.auth !== null) {
    if (env.auth === null) throw new Error(`route ${route.id}: auth needs the identity environment, which this thread was not given`);
    out.push(new AuthPolicy(route.auth, route.id, env.auth));
  }
  if (route.rateLimit.length > 0) {
    if (env.rateLimit === null) throw new Error(`route ${route.id}: rate limits need the shared bucket table, which this thread was not given`);
    out.push(new RateLimitPolicyRunner(route.rateLimit, routeSlot, env.rateLimit));
  }
  return out.length === 0 ? null : out;
}
