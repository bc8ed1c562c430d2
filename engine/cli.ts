#!/usr/bin/env node
/**
 * turnpike CLI: start | validate | schema.
 *
 *   turnpike start [--config FILE] [--set path=value]... [--port N] [--workers N]
 *   turnpike validate FILE [--set path=value]...
 *   turnpike schema > turnpike.schema.json
 *
 * Precedence: defaults < config file < TURNPIKE_* environment < CLI flags.
 * Without --config, the embedded default config runs (with its demo upstream).
 */
import { readFileSync, watch } from 'node:fs';
import { basename, dirname, resolve as resolvePath } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatErrors, loadConfigFile, loadEmbeddedConfig, type LoadResult } from '../common/config/load.js';
import { schemaJson } from '../common/config/schema.js';
import { log } from '../common/log.js';
import { validateRoutePattern } from '../workers/router/compile.js';
import { startDemoUpstream } from './demo-upstream.js';
import { Supervisor } from './supervisor.js';

const pkg = JSON.parse(readFileSync(fileURLToPath(new URL('../../package.json', import.meta.url)), 'utf8')) as { version: string };

const USAGE = `turnpike ${pkg.version}: edge proxy and API gateway

Usage:
  turnpike start [--config FILE] [--set path=value]... [--port N] [--workers N] [--watch]
  turnpike validate FILE [--set path=value]...
  turnpike schema            print the config JSON Schema (for editors)
  turnpike --version

Without --config, start runs the embedded default config and its demo
upstream. Environment overrides: TURNPIKE_SERVER__PORT=8081 (double
underscore = nesting). Docs: README.md.`;

interface Args {
  command: string;
  file: string | null;
  sets: string[];
  watch: boolean;
}

/** Changes to a watched config file within this window make one reload. */
const WATCH_DEBOUNCE_MS = 200;

function parseArgs(argv: string[]): Args {
  const out: Args = { command: argv[0] ?? 'help', file: null, sets: [], watch: false };
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]!;
    const next = () => {
      const v = argv[++i];
      if (v === undefined) fail(`${a} needs a value`);
      return v;
    };
    if (a === '--config' || a === '-c') out.file = next();
    else if (a === '--set') out.sets.push(next());
    else if (a.startsWith('--set=')) out.sets.push(a.slice(6));
    else if (a === '--port') out.sets.push(`server.port=${next()}`);
    else if (a === '--workers') out.sets.push(`server.workers=${next()}`);
    else if (a === '--watch') out.watch = true;
    else if (!a.startsWith('-') && out.file === null) out.file = a;
    else fail(`unknown option ${a}`);
  }
  return out;
}

function fail(message: string): never {
  process.stderr.write(`turnpike: ${message}\n\n${USAGE}\n`);
  process.exit(2);
}

function load(args: Args): { result: LoadResult; embedded: boolean } {
  const opts = { env: process.env, sets: args.sets, version: 1, checkPattern: validateRoutePattern };
  if (args.file === null) return { result: loadEmbeddedConfig(opts), embedded: true };
  return { result: loadConfigFile(args.file, opts), embedded: false };
}

async function start(args: Args): Promise<void> {
  const { result } = load(args);
  if (!result.ok) {
    process.stderr.write(`turnpike: the configuration is invalid, nothing was started:\n${formatErrors(result.errors)}\n`);
    process.exit(1);
  }
  const config = result.config;
  if (config.demo.enabled) await startDemoUpstream(config.demo.port);
  const sup = new Supervisor(config, {
    configPath: args.file === null ? null : resolvePath(args.file),
    portWasZero: config.server.port === 0,
    sets: args.sets,
    version: pkg.version,
  });
  let gw;
  try {
    gw = await sup.start();
  } catch (err) {
    log('error', 'failed to start', { error: (err as Error).message });
    await sup.shutdown();
    process.exit(1);
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log('info', 'signal received, draining', { signal });
    gw.stop().then((code) => process.exit(code), () => process.exit(1));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // SIGHUP: reload the config file; a bad file is refused and logged, the old config keeps serving.
  process.on('SIGHUP', () => { void sup.reload({ actor: 'SIGHUP' }); });
  if (args.watch && args.file !== null) {
    // Editors replace files (rename) as often as they write them: watch the
    // directory entry and debounce bursts of events into one reload.
    let timer: NodeJS.Timeout | null = null;
    const file = resolvePath(args.file);
    watch(dirname(file), { persistent: false }, (_event, name) => {
      if (name !== basename(file)) return;
      if (timer !== null) clearTimeout(timer);
      timer = setTimeout(() => { timer = null; void sup.reload({ actor: 'file-watch' }); }, WATCH_DEBOUNCE_MS);
    });
  }
  if (process.env.TURNPIKE_TEST_HOOKS === '1') {
    // Test hook: `kill -USR2` makes worker 0 crash (see test/integration).
    process.on('SIGUSR2', () => sup.crashWorker(0));
  }
  // Handlers first: a signal that arrives right after the line below must not hit Node's defaults.
  log('info', 'turnpike started', {
    url: `http://${config.server.host === '0.0.0.0' ? '127.0.0.1' : config.server.host}:${gw.port}`,
    port: gw.port,
    adminPort: gw.adminPort,
    workers: config.server.workers,
    backend: gw.backend,
    config: config.source,
    routes: config.routes.length,
  });
}

function validate(args: Args): void {
  if (args.file === null) fail('validate needs a FILE');
  const { result } = load(args);
  if (!result.ok) {
    process.stderr.write(`${args.file}: ${result.errors.length} problem${result.errors.length === 1 ? '' : 's'}:\n${formatErrors(result.errors)}\n`);
    process.exit(1);
  }
  const c = result.config;
  process.stdout.write(`${args.file}: valid (${c.routes.length} routes, ${Object.keys(c.upstreams).length} upstreams)\n`);
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  switch (args.command) {
    case 'start':
      return start(args);
    case 'validate':
      return validate(args);
    case 'schema':
      process.stdout.write(schemaJson() + '\n');
      return;
    case '--version':
    case '-v':
    case 'version':
      process.stdout.write(pkg.version + '\n');
      return;
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE + '\n');
      return;
    default:
      fail(`unknown command "${args.command}"`);
  }
}

main().catch((err: Error) => {
  process.stderr.write(`turnpike: ${err.message}\n`);
  process.exit(1);
});
