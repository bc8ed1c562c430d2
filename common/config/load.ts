/**
 * Loading a config, the one entry point for the engine, the admin thread
 * (reload) and `turnpike validate`:
 *
 *   read -> parse (YAML/JSON) -> env overrides -> --set overrides
 *        -> validate (schema + semantic, every problem at once)
 *        -> resolve defaults -> deep-freeze
 *
 * Nothing throws for bad input: every outcome is `{ ok: true, config }` or
 * `{ ok: false, errors }` with `path: message` entries (path "" for problems
 * with the file itself). Like fastify's initial-config-validation: the input
 * is cloned before overrides, so callers' objects are never modified.
 */
import { readFileSync } from 'node:fs';
import type { GatewayConfig } from './types.js';
import { ConfigParseError, parseConfigText } from './parse.js';
import { applyCliOverrides, applyEnvOverrides } from './overrides.js';
import { type PatternChecker, checkDocument } from './validate.js';
import { resolveConfig } from './resolve.js';
import { DEMO_PORT, EMBEDDED_SOURCE, defaultConfigYaml } from './default-config.js';
import type { ConfigError } from './util.js';
import { scrubSecrets, secretValues } from './redact.js';

export type { ConfigError } from './util.js';
export type { PatternChecker } from './validate.js';
export type { OverrideResult } from './overrides.js';
export { parseConfigText, ConfigParseError } from './parse.js';
export { applyEnvOverrides, applyCliOverrides } from './overrides.js';

export type ValidationResult =
  /** `warnings`: valid, but probably not what was meant (an unused upstream, no routes...); see semanticWarnings. */
  /**
   * `document`: the document as written, before environment and --set
   * overrides (loadConfigDocument and the loaders built on it): what a dump
   * of the running config gives back, so that it round-trips.
   */
  | { ok: true; config: GatewayConfig; warnings: ConfigError[]; document?: unknown }
  | { ok: false; errors: ConfigError[] };
/** Same union, under the name the engine uses. */
export type LoadResult = ValidationResult;

/**
 * The data plane's own compile step, run on the resolved config (common/
 * must not import workers/; the engine passes workers/config-check.ts).
 * Returns the problems, empty when a worker would accept the config.
 */
export type CompileChecker = (config: GatewayConfig) => ConfigError[];

export interface ValidateOptions {
  /** The router's pattern validator (common/ must not import workers/). */
  checkPattern?: PatternChecker;
  /** Run after resolution: a config is valid only when a worker can compile it. */
  checkCompile?: CompileChecker;
  /** Default 1. */
  version?: number;
  /** Default `<inline>`. */
  source?: string;
  /** Start the built-in demo upstream (embedded default config only). Default false. */
  demo?: boolean;
}

export interface LoadOptions {
  /** Environment for TURNPIKE_* overrides. Default process.env; pass {} for none. */
  env?: NodeJS.ProcessEnv;
  /** `--set path=value` flags, applied after the environment. */
  sets?: readonly string[];
  version?: number;
  checkPattern?: PatternChecker;
  checkCompile?: CompileChecker;
}

/**
 * Problems without the document's secrets (common/config/redact.ts): they
 * go to logs, the admin API's answers and audit records, and `turnpike
 * validate`'s output, where a value quoted back ("got ...") must not be one.
 */
function scrubbed(errors: ConfigError[], secrets: ReadonlySet<string>): ConfigError[] {
  if (secrets.size === 0 || errors.length === 0) return errors;
  return errors.map((e) => ({ ...e, path: scrubSecrets(e.path, secrets), message: scrubSecrets(e.message, secrets) }));
}

/** Validates a raw document and, when valid, resolves it into a frozen GatewayConfig. */
export function validateConfig(doc: unknown, options: ValidateOptions = {}): ValidationResult {
  const secrets = secretValues(doc);
  const checked = checkDocument(doc, options.checkPattern);
  if (checked.errors.length > 0) return { ok: false, errors: scrubbed(checked.errors, secrets) };
  const config = resolveConfig(checked.doc as Record<string, unknown>, {
    version: options.version ?? 1,
    source: options.source ?? '<inline>',
    demoPort: options.demo === true ? DEMO_PORT : null,
    tls: checked.tls,
  });
  const compileProblems = options.checkCompile?.(config) ?? [];
  if (compileProblems.length > 0) return { ok: false, errors: scrubbed(compileProblems, secrets) };
  return { ok: true, config, warnings: scrubbed(checked.warnings, secrets) };
}

export interface LoadTextOptions extends LoadOptions {
  /** Default: fileName. */
  source?: string;
  /** Start the built-in demo upstream (the embedded default config). Default false. */
  demo?: boolean;
}

/**
 * Parse + overrides + validate for config text already in memory (the
 * embedded default, admin API uploads, tests). `fileName` picks the format
 * (see parseConfigText) and labels errors.
 */
export function loadConfigText(text: string, fileName: string, options: LoadTextOptions = {}): ValidationResult {
  let doc: unknown;
  try {
    doc = parseConfigText(text, fileName);
  } catch (e) {
    if (e instanceof ConfigParseError) return { ok: false, errors: [{ path: '', message: e.message }] };
    throw e;
  }
  if (doc === null || doc === undefined) {
    const message = `${fileName} is empty; write a configuration (turnpike schema describes it) or start without --config to use the embedded default`;
    return { ok: false, errors: [{ path: '', message }] };
  }
  return loadConfigDocument(doc, { ...options, source: options.source ?? fileName });
}

/**
 * Overrides + validate for an already parsed document (the admin API's
 * PUT /admin/config body): environment and --set still apply on top, as they
 * would after a restart.
 */
export function loadConfigDocument(doc: unknown, options: LoadTextOptions = {}): ValidationResult {
  const fileName = options.source ?? '<document>';
  const env = applyEnvOverrides(doc, options.env ?? process.env);
  const cli = applyCliOverrides(env.doc, options.sets ?? []);
  const overrideErrors = scrubbed([...env.errors, ...cli.errors], secretValues(cli.doc, secretValues(doc)));
  const result = validateConfig(cli.doc, {
    version: options.version ?? 1,
    source: options.source ?? fileName,
    ...(options.checkPattern !== undefined ? { checkPattern: options.checkPattern } : {}),
    ...(options.checkCompile !== undefined ? { checkCompile: options.checkCompile } : {}),
    ...(options.demo !== undefined ? { demo: options.demo } : {}),
  });
  if (overrideErrors.length === 0) return result.ok ? { ...result, document: doc } : result;
  return { ok: false, errors: [...overrideErrors, ...(result.ok ? [] : result.errors)] };
}

function readProblem(path: string, e: unknown): string {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  switch (code) {
    case 'ENOENT': return `config file ${JSON.stringify(path)} not found; check the path, or start without --config to use the embedded default`;
    case 'EACCES':
    case 'EPERM': return `cannot read config file ${JSON.stringify(path)}: permission denied; check its permissions`;
    case 'EISDIR': return `${JSON.stringify(path)} is a directory; pass the config file itself (e.g. ${path.replace(/\/$/, '')}/turnpike.yaml)`;
    default: return `cannot read config file ${JSON.stringify(path)}: ${e instanceof Error ? e.message : String(e)}`;
  }
}

/**
 * Reads, parses, applies env and --set overrides, validates and resolves a
 * config file. Synchronous: it runs at startup and on reload, off the data
 * plane, and a config file is small.
 */
export function loadConfigFile(path: string, options: LoadOptions = {}): ValidationResult {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    return { ok: false, errors: [{ path: '', message: readProblem(path, e) }] };
  }
  return loadConfigText(text, path, { ...options, source: path });
}

/** The embedded default config (with the demo upstream), plus env and --set overrides. */
export function loadEmbeddedConfig(options: LoadOptions = {}): ValidationResult {
  return loadConfigText(defaultConfigYaml, EMBEDDED_SOURCE, { ...options, source: EMBEDDED_SOURCE, demo: true });
}

/** One problem per line, `path: message` (just the message for file-level problems). */
export function formatErrors(errors: readonly ConfigError[]): string {
  return errors.map((e) => (e.path === '' ? e.message : `${e.path}: ${e.message}`)).join('\n');
}
