#!/usr/bin/env node
/**
 * turnpike CLI: start | validate | reload | schema | init | help.
 *
 *   turnpike start [--config FILE] [--set path=value]... [--port N] [--workers N] [--watch]
 *   turnpike validate FILE [--set path=value]... [--diff [--admin URL]]
 *   turnpike reload [--admin URL]
 *   turnpike schema > turnpike.schema.json
 *   turnpike init [FILE]
 *   turnpike consumers|keys|groups|grants <subcommand> ... [--json] [--admin URL]   (identity-cli.ts)
 *   turnpike <command> --help, turnpike help <command>
 *
 * reload and validate --diff talk to a running gateway's admin API
 * (default http://127.0.0.1:9901, or TURNPIKE_ADMIN_URL) with the token in
 * TURNPIKE_ADMIN_TOKEN, TURNPIKE_ADMIN_TOKEN_FILE or the token the gateway
 * generated for that admin port (./.turnpike/admin-token-<port>).
 *
 * Precedence: defaults < config file < TURNPIKE_* environment < CLI flags.
 * Without --config, the embedded default config runs (with its demo upstream).
 *
 * Exit codes: 0 done, 1 refused or failed (invalid config, gateway refused or
 * unreachable, file exists), 2 usage error (unknown command or option).
 */
// First: signals during start-up are remembered, not fatal (early-signals.ts).
import { checkSecretRefs, looseSecretFiles } from '../common/identity/keys.js';
import { takeEarlySignals } from './early-signals.js';
import { readFileSync, watch, writeFileSync } from 'node:fs';
import { CertWatcher, FileSettler, tlsFiles } from './file-watch.js';
import { tlsFilesMatch } from '../common/config/tls.js';
import { dirname, extname, resolve as resolvePath } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LEGACY_TOKEN_FILE, clientToken, generatedTokenFile, loadTokens } from '../admin/api/auth.js';
import { formatChanges } from '../common/config/diff.js';
import { didYouMean } from '../common/config/util.js';
import { formatErrors, loadConfigFile, loadEmbeddedConfig, type LoadResult } from '../common/config/load.js';
import { schemaJson } from '../common/config/schema.js';
import { configureLog, log, logFormat } from '../common/log.js';
import { WORKER_CHECKS } from '../workers/config-check.js';
import { startDemoUpstream } from './demo-upstream.js';
import { COMMANDS, commandHelp, usage } from './help.js';
import { IDENTITY_COMMANDS, runIdentityCommand } from './identity-cli.js';
import { starterConfig } from '../common/config/starter-config.js';
import { Supervisor } from './supervisor.js';
import { LogWriter } from './log-writer.js';

const pkg = JSON.parse(readFileSync(fileURLToPath(new URL('../../package.json', import.meta.url)), 'utf8')) as { version: string };

const DEFAULT_ADMIN_URL = 'http://127.0.0.1:9901';
/** reload waits for every worker to apply the config (5 s each at worst). */
const ADMIN_REQUEST_TIMEOUT_MS = 30_000;

const USAGE = usage(pkg.version, DEFAULT_ADMIN_URL);

interface Args {
  command: string;
  /** --help / -h anywhere: print the command's help. */
  help: boolean;
  file: string | null;
  sets: string[];
  watch: boolean;
  /** validate --diff */
  diff: boolean;
  /** --admin URL */
  admin: string | null;
}

/**
 * --watch (and the certificate watch) applies a file once its bytes have
 * stayed the same across two reads this far apart (engine/file-watch.ts
 * FileSettler; events about other files of the directory do not delay it): a file
 * rewritten in place in several writes (an editor, `cat > file`, a
 * deployment tool) is applied whole, never its first, possibly valid, part.
 */
const WATCH_SETTLE_MS = 250;

function parseArgs(argv: string[]): Args {
  const out: Args = { command: argv[0] ?? 'help', help: false, file: null, sets: [], watch: false, diff: false, admin: null };
  // Help wins over everything else on the line: `turnpike start --bogus --help` explains, it does not fail.
  for (let i = 1; i < argv.length; i++) {
    if (VALUE_OPTIONS.has(argv[i]!)) i++;
    else if (argv[i] === '--help' || argv[i] === '-h') out.help = true;
  }
  if (out.help) return out;
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]!;
    const next = () => {
      const v = argv[++i];
      if (v === undefined) fail(`${a} needs a value`, out.command);
      return v;
    };
    if (a === '--config' || a === '-c') out.file = next();
    else if (a === '--set') out.sets.push(next());
    else if (a.startsWith('--set=')) out.sets.push(a.slice(6));
    else if (a === '--port') out.sets.push(`server.port=${next()}`);
    else if (a === '--workers') out.sets.push(`server.workers=${next()}`);
    else if (a === '--watch') out.watch = true;
    else if (a === '--diff') out.diff = true;
    else if (a === '--admin') out.admin = next();
    else if (a.startsWith('--admin=')) out.admin = a.slice(8);
    else if (!a.startsWith('-') && out.file === null) out.file = a;
    else if (!a.startsWith('-')) fail(`unexpected argument ${JSON.stringify(a)} (after ${JSON.stringify(out.file)})`, out.command);
    else fail(`unknown option ${a}`, out.command);
  }
  return out;
}

/** Options followed by a value (skipped when looking for --help). */
const VALUE_OPTIONS = new Set(['--config', '-c', '--set', '--port', '--workers', '--admin']);

/** A usage error: the message, the right help (the command's, when known), exit 2. */
function fail(message: string, command?: string): never {
  const help = command !== undefined && Object.hasOwn(COMMANDS, command) ? commandHelp(command, DEFAULT_ADMIN_URL) : USAGE;
  process.stderr.write(`turnpike: ${message}\n\n${help}\n`);
  process.exit(2);
}

function load(args: Args): { result: LoadResult; embedded: boolean } {
  const opts = { env: process.env, sets: args.sets, version: 1, ...WORKER_CHECKS };
  if (args.file === null) return { result: loadEmbeddedConfig(opts), embedded: true };
  return { result: loadConfigFile(args.file, opts), embedded: false };
}

/** libuv thread pool size the gateway starts with unless UV_THREADPOOL_SIZE is set (libuv's default: 4). */
const UV_THREADPOOL_SIZE = 16;

async function start(args: Args): Promise<void> {
  if (args.diff || args.admin !== null) fail('--diff and --admin go with validate and reload, not start', 'start');
  // libuv's thread pool (getaddrinfo, file I/O) is shared by every thread of
  // the process; its default of 4 lets a few hung DNS lookups (dns discovery
  // without resolvers) stall the workers' connects to host-name targets.
  // Read by libuv when the pool first starts, which is after this line. A
  // value the user set wins.
  process.env['UV_THREADPOOL_SIZE'] ??= String(UV_THREADPOOL_SIZE);
  // From here on no line of the gateway log is written by the thread that
  // logs it: the writer does, never blocking (engine/log-writer.ts).
  const logWriter = new LogWriter();
  /** Writes out what the logs hold (for at most a few seconds), then exits. */
  const exit = async (code: number): Promise<never> => {
    await logWriter.close();
    process.exit(code);
  };
  const { result } = load(args);
  if (!result.ok) {
    if (logFormat() === 'json') {
      // Not a terminal (or TURNPIKE_LOG_FORMAT=json): one JSON line, like every other line of the gateway log.
      log('error', 'the configuration is invalid, nothing was started: fix the problems listed, check with `turnpike validate`', {
        config: args.file ?? '<embedded>', problems: result.errors.map((e) => (e.path ? `${e.path}: ${e.message}` : e.message)),
      });
    } else {
      process.stderr.write(`turnpike: the configuration is invalid, nothing was started:\n${formatErrors(result.errors)}\n`);
    }
    return exit(1);
  }
  const config = result.config;
  configureLog(config.log);
  // A secret reference that does not resolve (an unset variable, an unreadable file) would leave every auth route answering 503.
  const secretProblems = checkSecretRefs({ keyPepper: config.secrets.keyPepper ?? undefined, encryptionKeys: { ...config.secrets.encryptionKeys } });
  if (secretProblems.length > 0) {
    log('error', 'the identity secrets cannot be read, nothing was started: set the variables or fix the files named, check with `turnpike validate`', { problems: secretProblems });
    return exit(1);
  }
  for (const w of looseSecretFiles({ keyPepper: config.secrets.keyPepper ?? undefined, encryptionKeys: { ...config.secrets.encryptionKeys } })) log('warn', `secret file readable by others: ${w}`);
  if (config.demo.enabled) await startDemoUpstream(config.demo.port);
  const sup = new Supervisor(config, {
    configPath: args.file === null ? null : resolvePath(args.file),
    document: result.document ?? null,
    portWasZero: config.server.port === 0,
    sets: args.sets,
    version: pkg.version,
    logWriter,
  });
  // Valid, but probably not what was meant: said once, at start (validate prints the same).
  for (const w of result.warnings) log('warn', `config warning: ${w.path === '' ? '' : `${w.path}: `}${w.message}`);
  // Signal handlers go in before the threads start: Node's default for
  // SIGHUP/SIGTERM would end the process, and a `systemctl reload` or a
  // logrotate right after a start must not. What arrives while starting is
  // done once the gateway runs.
  let gw: Awaited<ReturnType<Supervisor['start']>> | null = null;
  let stopping = false;
  let pendingReload = false;
  let pendingReopen = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log('info', 'signal received, draining', { signal });
    if (gw !== null) gw.stop().then((code) => exit(code), () => exit(1));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // SIGHUP: reload the config file; a bad file is refused and logged, the old config keeps serving.
  process.on('SIGHUP', () => {
    if (gw === null) pendingReload = true;
    else void sup.reload({ actor: 'SIGHUP' });
  });
  // SIGUSR1: reopen access log files (logrotate's postrotate: `kill -USR1 <pid>`).
  process.on('SIGUSR1', () => {
    if (gw === null) pendingReopen = true;
    else sup.reopenLogs();
  });
  const early = takeEarlySignals();
  if (early.stop !== null) stop(early.stop);
  if (early.reload) pendingReload = true;
  if (early.reopen) pendingReopen = true;
  try {
    gw = await sup.start();
  } catch (err) {
    log('error', 'failed to start', { error: (err as Error).message });
    await sup.shutdown(true);
    return exit(1);
  }
  if (stopping) {
    gw.stop().then((code) => exit(code), () => exit(1));
    return;
  }
  if (pendingReload) void sup.reload({ actor: 'SIGHUP' });
  if (pendingReopen) sup.reopenLogs();
  if (args.watch && args.file !== null) {
    // Editors replace files (rename) as often as they write them: watch the
    // directory entry, and reload once the file has settled.
    const file = resolvePath(args.file);
    const settler = new FileSettler([file], WATCH_SETTLE_MS, () => sup.reload({ actor: 'file-watch' }));
    // Any event in the directory: a Kubernetes ConfigMap volume swaps a
    // `..data` symlink, never touching the file's own name; the settler
    // reloads only when the file's bytes (through any symlinks) changed.
    watch(dirname(file), { persistent: false }, () => settler.changed());
  }
  // Certificates renewed on disk (certbot, cert-manager) apply by themselves, --watch or not: a reload like any
  // other, so a half-written pair is refused (key does not match) and the old one keeps serving until both settle.
  new CertWatcher(WATCH_SETTLE_MS, () => tlsFiles(sup.config), () => sup.reload({ actor: 'cert-watch' }), () => tlsFilesMatch(sup.config));
  if (process.env.TURNPIKE_TEST_HOOKS === '1') {
    // Test hooks: `kill -USR2` makes worker 0 crash (see test/integration).
    process.on('SIGUSR2', () => sup.crashWorker(0));
    // And `kill -WINCH` the admin thread.
    process.on('SIGWINCH', () => sup.crashAdmin());
  }
  // Handlers first: a signal that arrives right after the line below must not hit Node's defaults.
  log('info', 'turnpike started', {
    url: startedUrl(config.server.host, gw.port, config.server.tls !== null),
    port: gw.port,
    adminPort: gw.adminPort,
    workers: config.server.workers,
    backend: gw.backend,
    config: config.source,
    routes: config.routes.length,
  });
}

async function validate(args: Args): Promise<void> {
  if (args.file === null) fail('validate needs a FILE', 'validate');
  if (args.admin !== null && !args.diff) fail('--admin goes with --diff (validate FILE --diff --admin URL) or with reload', 'validate');
  if (args.watch) fail('--watch goes with start', 'validate');
  const { result } = load(args);
  if (!result.ok) {
    process.stderr.write(`${args.file}: ${result.errors.length} problem${result.errors.length === 1 ? '' : 's'}:\n${formatErrors(result.errors)}\n`);
    process.exit(1);
  }
  const c = result.config;
  if (c.admin.enabled && c.admin.tokensFile !== null) {
    // The admin thread reads it at start and on reload (relative to the
    // gateway's working directory): a bad file is caught here, not there.
    try {
      loadTokens({ env: {}, tokensFile: c.admin.tokensFile, cwd: process.cwd() });
    } catch (e) {
      process.stderr.write(`${args.file}: 1 problem:\n  ${(e as Error).message.replace(/\n/g, '\n  ')}\n`);
      process.exit(1);
    }
  }
  // Secret references (secrets.*) must resolve here too: the gateway refuses to start otherwise.
  const secretProblems = checkSecretRefs({ keyPepper: c.secrets.keyPepper ?? undefined, encryptionKeys: { ...c.secrets.encryptionKeys } });
  if (secretProblems.length > 0) {
    process.stderr.write(`${args.file}: ${secretProblems.length} problem${secretProblems.length === 1 ? '' : 's'}:\n  ${secretProblems.join('\n  ')}\n`);
    process.exit(1);
  }
  process.stdout.write(`${args.file}: valid (${c.routes.length} routes, ${Object.keys(c.upstreams).length} upstreams)\n`);
  writeWarnings(result.warnings);
  if (!args.diff) return;
  // The running gateway validates the same document (with its own
  // environment and --set flags) and answers with what would change.
  const text = readFileSync(args.file, 'utf8');
  const type = extname(args.file).toLowerCase() === '.json' ? 'application/json' : 'application/yaml';
  const admin = adminUrl(args);
  const r = await adminRequest(admin, 'POST', '/admin/config/validate', { type, text });
  if (r.status === 200) {
    const b = r.body as { versionBefore: number; changes: Parameters<typeof formatChanges>[0] };
    process.stdout.write(`against the gateway at ${admin} (config version ${b.versionBefore}), ${args.file} would change:\n${formatChanges(b.changes)}\n(dry run: nothing was applied)\n`);
    return;
  }
  adminFailure(admin, r, `the running gateway would refuse ${args.file}; nothing was applied`);
}

/** `warning: path: message` lines on stderr (valid, but probably not what was meant). */
function writeWarnings(warnings: readonly { path: string; message: string }[]): void {
  for (const w of warnings) process.stderr.write(`warning: ${w.path === '' ? '' : `${w.path}: `}${w.message}\n`);
}

/** The port of an admin URL (http://h:9902 -> 9902; no port: 80 or 443). */
function adminPort(base: string): number {
  const u = new URL(base);
  return u.port !== '' ? Number(u.port) : u.protocol === 'https:' ? 443 : 80;
}

interface AdminAnswer {
  status: number;
  body: unknown;
  tokenFrom: string;
}

function adminUrl(args: Args): string {
  const raw = args.admin ?? process.env.TURNPIKE_ADMIN_URL ?? DEFAULT_ADMIN_URL;
  let u: URL;
  try {
    u = new URL(/^[a-z]+:\/\//i.test(raw) ? raw : `http://${raw}`);
  } catch {
    // Shown without anything that looks like credentials (user:secret@...).
    fail(`--admin: ${JSON.stringify(raw.replace(/\/\/[^/@]*@/, '//***@'))} is not a URL; use e.g. ${DEFAULT_ADMIN_URL}`, args.command);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') fail(`--admin: use an http:// URL, e.g. ${DEFAULT_ADMIN_URL}`, args.command);
  if (u.username !== '' || u.password !== '') {
    // A secret in a URL ends up in shell history, process lists and logs: the token has its own variable.
    fail('--admin: the URL carries credentials (user:password@), which are never sent nor shown; remove them and put the admin token in TURNPIKE_ADMIN_TOKEN (or TURNPIKE_ADMIN_TOKEN_FILE)', args.command);
  }
  const path = u.pathname.replace(/\/+$/, '').replace(/\/admin$/, '');
  return u.origin + path;
}

/** One admin API call; exits with a clear message when the gateway cannot be reached. */
async function adminRequest(base: string, method: string, path: string, body?: { type: string; text: string }): Promise<AdminAnswer> {
  const port = adminPort(base);
  const cred = clientToken(process.env, process.cwd(), port);
  if (cred === null) {
    process.stderr.write(`turnpike: no admin token found for the admin API at ${base}. Set TURNPIKE_ADMIN_TOKEN (or TURNPIKE_ADMIN_TOKEN_FILE), ` +
      `or run this in the directory the gateway was started from: without a configured token it writes one to ${generatedTokenFile(port)} there ` +
      `(named by its admin port; is --admin the right port?).\n`);
    process.exit(1);
  }
  let res: Response;
  try {
    res = await fetch(base + path, {
      method,
      headers: { authorization: `Bearer ${cred.token}`, accept: 'application/json', ...(body ? { 'content-type': body.type } : {}) },
      ...(body ? { body: body.text } : {}),
      signal: AbortSignal.timeout(ADMIN_REQUEST_TIMEOUT_MS),
    });
  } catch (err) {
    const e = err as Error & { cause?: { code?: string; message?: string } };
    const why = e.name === 'TimeoutError' ? `no answer within ${ADMIN_REQUEST_TIMEOUT_MS / 1000} s` : (e.cause?.code ?? e.cause?.message ?? e.message);
    process.stderr.write(`turnpike: cannot reach the admin API at ${base} (${why}): the gateway doesn't seem to run there.\n` +
      `Start it with \`turnpike start --config FILE\`, or point at its admin listener with --admin http://HOST:PORT ` +
      `(its admin.host and admin.port; admin.enabled must be true).\n`);
    process.exit(1);
  }
  const text = await res.text();
  let parsed: unknown = text;
  try { parsed = JSON.parse(text); } catch { /* not JSON: shown as text */ }
  return { status: res.status, body: parsed, tokenFrom: cred.from };
}

/** Prints an admin API error answer and exits 1. */
function adminFailure(base: string, r: AdminAnswer, refusedHeadline: string): never {
  const err = (r.body as { error?: { code?: string; message?: string; errors?: { path: string; message: string }[] } } | null)?.error;
  if (r.status === 422 && err?.errors) {
    process.stderr.write(`${refusedHeadline}:\n${formatErrors(err.errors)}\n`);
  } else if (r.status === 401) {
    const stale = r.tokenFrom === LEGACY_TOKEN_FILE
      ? ` ${LEGACY_TOKEN_FILE} is the name older versions used; this gateway's own generated token would be ${generatedTokenFile(adminPort(base))}, and there is none: check --admin, or run this where the gateway was started.`
      : '';
    process.stderr.write(`turnpike: the admin API at ${base} refused the token from ${r.tokenFrom} (401). Use a token the gateway knows: its TURNPIKE_ADMIN_TOKEN, one in its admin.tokensFile, or the one it generated (${generatedTokenFile(adminPort(base))} in its working directory).${stale}\n`);
  } else if (r.status === 403) {
    process.stderr.write(`turnpike: the token from ${r.tokenFrom} has the viewer role; this needs a token with the admin role (403).\n`);
  } else {
    const what = err?.message ?? (typeof r.body === 'string' ? r.body.slice(0, 500) : JSON.stringify(r.body));
    process.stderr.write(`turnpike: the admin API at ${base} answered ${r.status}${err?.code ? ` ${err.code}` : ''}: ${what}\n`);
  }
  process.exit(1);
}

async function reload(args: Args): Promise<void> {
  if (args.file !== null || args.sets.length > 0 || args.diff || args.watch) {
    fail('reload takes only --admin URL; the gateway re-reads its own config file (with its own --set flags)', 'reload');
  }
  const admin = adminUrl(args);
  const r = await adminRequest(admin, 'POST', '/admin/config/reload');
  if (r.status === 200) {
    const b = r.body as { version: number; versionBefore: number; persisted: boolean; changes: Parameters<typeof formatChanges>[0]; warnings?: { path: string; message: string }[] };
    process.stdout.write(`reloaded: config version ${b.version} (was ${b.versionBefore})\n${formatChanges(b.changes)}\n`);
    writeWarnings(b.warnings ?? []);
    return;
  }
  adminFailure(admin, r, 'reload refused; the running config keeps serving');
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  // consumers, keys, groups, grants: their own options (identity-cli.ts), over this file's admin client.
  if (IDENTITY_COMMANDS.includes(argv[0] ?? '') && !argv.includes('--help') && !argv.includes('-h')) {
    return runIdentityCommand(argv, {
      url: (admin, command) => adminUrl({ command, help: false, file: null, sets: [], watch: false, diff: false, admin }),
      request: adminRequest,
      failure: adminFailure,
      usage: fail,
    });
  }
  const args = parseArgs(argv);
  if (args.help && !['help', '--help', '-h'].includes(args.command)) return showHelp(args.command);
  switch (args.command) {
    case 'start':
      return start(args);
    case 'validate':
      return validate(args);
    case 'reload':
      return reload(args);
    case 'schema':
      if (args.file !== null || args.sets.length > 0 || args.watch || args.diff || args.admin !== null) fail('schema takes no arguments; it prints the JSON Schema to stdout', 'schema');
      process.stdout.write(schemaJson() + '\n');
      return;
    case 'init':
      return init(args);
    case '--version':
    case '-v':
    case 'version':
      process.stdout.write(pkg.version + '\n');
      return;
    case 'help':
    case '--help':
    case '-h':
      // `turnpike help start`, `turnpike --help start`
      if (args.file !== null) return showHelp(args.file);
      process.stdout.write(USAGE + '\n');
      return;
    default:
      fail(unknownCommand(args.command));
  }
}

function unknownCommand(name: string): string {
  const close = didYouMean(name, Object.keys(COMMANDS));
  return `unknown command ${JSON.stringify(name)}${close === null ? '' : ` (did you mean "${close}"?)`}; the commands are ${Object.keys(COMMANDS).join(', ')}`;
}

function showHelp(command: string): void {
  if (!Object.hasOwn(COMMANDS, command)) fail(unknownCommand(command));
  process.stdout.write(commandHelp(command, DEFAULT_ADMIN_URL) + '\n');
}

/**
 * `turnpike init`: the starter config on stdout, or into FILE, which must
 * not exist yet (opened with O_EXCL: never a file overwritten, not even one
 * created a moment ago by someone else).
 */
function init(args: Args): void {
  if (args.sets.length > 0 || args.watch || args.diff || args.admin !== null) {
    fail('init takes only an optional FILE; edit the written file (or use --set when you start it)', 'init');
  }
  const text = starterConfig();
  if (args.file === null) {
    process.stdout.write(text);
    return;
  }
  const file = args.file;
  const ext = extname(file).toLowerCase();
  if (ext !== '.yaml' && ext !== '.yml') {
    fail(`init writes a commented YAML config: name the file *.yaml or *.yml (got ${JSON.stringify(file)})`, 'init');
  }
  try {
    writeFileSync(file, text, { flag: 'wx', mode: 0o644 });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'EEXIST'
      ? `${file} already exists; nothing was written. init never overwrites a file: choose another name, or move the existing one away first`
      : code === 'ENOENT'
        ? `cannot write ${file}: its directory does not exist; create it first or choose another path`
        : `cannot write ${file} (${code ?? (e as Error).message}); check the path and its permissions`;
    process.stderr.write(`turnpike: ${why}\n`);
    process.exit(1);
  }
  process.stdout.write(`wrote ${file}: a starter config. Point upstreams.app.targets at your service, then:\n` +
    `  turnpike validate ${file}\n  turnpike start --config ${file}\n`);
}

main().catch((err: Error) => {
  process.stderr.write(`turnpike: ${err.message}\n`);
  process.exit(1);
});

/**
 * The URL the `turnpike started` line gives: a wildcard address becomes the
 * loopback of its family, an IPv6 address goes in brackets (RFC 3986 3.2.2).
 */
export function startedUrl(host: string, port: number, tls = false): string {
  const h = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return `${tls ? 'https' : 'http'}://${h.includes(':') ? `[${h}]` : h}:${port}`;
}
