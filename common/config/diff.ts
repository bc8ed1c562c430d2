/**
 * What changes between two resolved configs: routes and upstreams by id and
 * name, other settings by leaf path. Used by reload logs, the admin API's
 * answers and `turnpike validate --diff`.
 */
import type { ConfigChanges } from '../protocol.js';
import type { GatewayConfig } from './types.js';

function byKey<T>(items: Iterable<[string, T]>): Map<string, string> {
  const m = new Map<string, string>();
  for (const [k, v] of items) m.set(k, JSON.stringify(v));
  return m;
}

function compare(a: Map<string, string>, b: Map<string, string>) {
  const added: string[] = [];
  const removed: string[] = [];
  const changed: string[] = [];
  for (const [k, v] of b) {
    const old = a.get(k);
    if (old === undefined) added.push(k);
    else if (old !== v) changed.push(k);
  }
  for (const k of a.keys()) if (!b.has(k)) removed.push(k);
  return { added, removed, changed };
}

function leafDiff(a: unknown, b: unknown, path: string, out: string[]): void {
  if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object' && !Array.isArray(a) && !Array.isArray(b)) {
    const keys = new Set([...Object.keys(a as object), ...Object.keys(b as object)]);
    for (const k of keys) leafDiff((a as any)[k], (b as any)[k], path === '' ? k : `${path}.${k}`, out);
    return;
  }
  if (JSON.stringify(a) !== JSON.stringify(b)) out.push(path);
}

export function diffConfigs(a: GatewayConfig, b: GatewayConfig): ConfigChanges {
  const settings: string[] = [];
  leafDiff(a.server, b.server, 'server', settings);
  leafDiff(a.admin, b.admin, 'admin', settings);
  // Paths only, never values: a change list may be shown to a viewer token and is logged (redis.url holds a password).
  leafDiff(a.metrics, b.metrics, 'metrics', settings);
  leafDiff(a.log, b.log, 'log', settings);
  leafDiff(a.redis, b.redis, 'redis', settings);
  leafDiff(a.rateLimitTable, b.rateLimitTable, 'rateLimitTable', settings);
  leafDiff(a.store, b.store, 'store', settings);
  leafDiff(a.secrets, b.secrets, 'secrets', settings);
  leafDiff(a.identity, b.identity, 'identity', settings);
  leafDiff(a.authz, b.authz, 'authz', settings);
  return {
    routes: compare(byKey(a.routes.map((r) => [r.id, r])), byKey(b.routes.map((r) => [r.id, r]))),
    upstreams: compare(byKey(Object.entries(a.upstreams)), byKey(Object.entries(b.upstreams))),
    settings,
  };
}

export function isEmptyDiff(c: ConfigChanges): boolean {
  const n = (x: { added: string[]; removed: string[]; changed: string[] }) => x.added.length + x.removed.length + x.changed.length;
  return n(c.routes) + n(c.upstreams) + c.settings.length === 0;
}

/** Human-readable lines: `+ route users`, `- upstream old`, `~ server.limits.maxBodyBytes`. */
export function formatChanges(c: ConfigChanges): string {
  const lines: string[] = [];
  for (const [kind, d] of [['route', c.routes], ['upstream', c.upstreams]] as const) {
    for (const id of d.added) lines.push(`+ ${kind} ${id}`);
    for (const id of d.removed) lines.push(`- ${kind} ${id}`);
    for (const id of d.changed) lines.push(`~ ${kind} ${id}`);
  }
  for (const p of c.settings) lines.push(`~ ${p}`);
  return lines.length === 0 ? 'no changes' : lines.join('\n');
}

/** Settings that only take effect on restart: a reload that changes them is refused. */
// `store` and `secrets`: the identity store and the pepper its hashes were made with are opened once.
export const RESTART_ONLY = ['server.host', 'server.port', 'server.workers', 'server.backend', 'server.redirectHttp.host', 'server.redirectHttp.port', 'admin.host', 'admin.port', 'admin.enabled', 'store', 'secrets'];
