import { expect } from 'vitest';
import { type ConfigError, type ValidateOptions, validateConfig } from '../../../common/config/load.js';
import type { GatewayConfig } from '../../../common/config/types.js';

/** The smallest valid document: one upstream, one route. */
export function minimal(): Record<string, unknown> {
  return {
    upstreams: { users: { targets: ['http://127.0.0.1:9001'] } },
    routes: [{ id: 'users', path: '/users/:id', upstream: 'users' }],
  };
}

export function valid(doc: unknown, opts: ValidateOptions = {}): GatewayConfig {
  const r = validateConfig(doc, opts);
  if (!r.ok) throw new Error(`expected a valid config, got:\n${r.errors.map((e) => `${e.path}: ${e.message}`).join('\n')}`);
  return r.config;
}

export function errorsOf(doc: unknown, opts: ValidateOptions = {}): ConfigError[] {
  const r = validateConfig(doc, opts);
  expect(r.ok).toBe(false);
  return r.ok ? [] : r.errors;
}

/** `path: message` lines, for exact comparisons. */
export function lines(doc: unknown, opts: ValidateOptions = {}): string[] {
  return errorsOf(doc, opts).map((e) => `${e.path}: ${e.message}`);
}
