/**
 * `turnpike --help`, `turnpike <command> --help` and `turnpike help <command>`:
 * every command with its options, examples and exit codes, in one table.
 */

export interface CommandHelp {
  usage: string;
  /** One line, for the command list. */
  summary: string;
  /** What it does, a few lines. */
  description: string;
  options: ReadonlyArray<readonly [flag: string, text: string]>;
  examples: readonly string[];
  exitCodes: ReadonlyArray<readonly [code: number, text: string]>;
}

const ADMIN_TOKEN_TEXT = (adminUrl: string) =>
  `The admin API is at --admin URL (default ${adminUrl}, or TURNPIKE_ADMIN_URL). The token comes\n` +
  'from TURNPIKE_ADMIN_TOKEN, TURNPIKE_ADMIN_TOKEN_FILE, or the one the gateway generated for that\n' +
  'admin port when none is configured: .turnpike/admin-token-<port> in the directory it was started\n' +
  'from (then .turnpike/admin-token, the name older versions used).';

const USAGE_ERROR = [2, 'usage error: unknown command or option, a missing value (the help is printed)'] as const;

export function commands(adminUrl: string): Readonly<Record<string, CommandHelp>> {
  return {
    start: {
      usage: 'turnpike start [--config FILE] [--set path=value]... [--port N] [--workers N] [--watch]',
      summary: 'run the gateway (the embedded default config and its demo upstream without --config)',
      description:
        'Loads and validates the config (defaults < FILE < TURNPIKE_* environment < flags), starts the worker\n' +
        'threads and the admin listener, and serves until SIGTERM or SIGINT (drain, then exit 0). SIGHUP\n' +
        'reloads the file; an invalid file is refused and the running config keeps serving.',
      options: [
        ['-c, --config FILE', 'YAML (.yaml, .yml) or JSON (.json) config; without it, the embedded default config'],
        ['--set path=value', 'override one setting, repeatable: --set server.port=8081, --set routes[0].upstream=users,\n' +
          '--set upstreams.users.timeouts.connectMs=2s (values are JSON when they parse, else text)'],
        ['--port N', 'same as --set server.port=N (0 = a free port, printed at start)'],
        ['--workers N', 'same as --set server.workers=N (1..256, or auto)'],
        ['--watch', 'reload when the config file changes (once its bytes have settled for 250 ms)'],
      ],
      examples: [
        'turnpike start                                   # embedded default config on :8080, demo upstream',
        'turnpike start --config turnpike.yaml --watch',
        'turnpike start -c turnpike.yaml --port 8081 --set admin.port=9902   # a second gateway next to the first',
        'TURNPIKE_SERVER__LIMITS__MAXBODYBYTES=1048576 turnpike start -c turnpike.yaml',
      ],
      exitCodes: [
        [0, 'stopped by SIGTERM/SIGINT after draining'],
        [1, 'invalid config (every problem is printed), or the gateway could not start (a port in use, no uWS build for this Node)'],
        USAGE_ERROR,
      ],
    },
    validate: {
      usage: 'turnpike validate FILE [--set path=value]... [--diff [--admin URL]]',
      summary: 'check a config file (every problem by path); --diff: what it would change on the running gateway',
      description:
        'Runs the same checks as start and reload (schema, references, the workers\' own route compile, the\n' +
        'tokens file), with the same environment and --set overrides. Problems go to stderr, one per line,\n' +
        'as path: message. Warnings (valid, but probably not meant: an upstream no route uses, no routes, a\n' +
        'header name the uWS backend never receives) go to stderr prefixed "warning:" and do not fail.\n' +
        'With --diff, the running gateway also validates FILE and answers what a reload would change\n' +
        '(a dry run: nothing is applied; a viewer token is enough).\n' + ADMIN_TOKEN_TEXT(adminUrl),
      options: [
        ['--set path=value', 'override one setting, as start does (repeatable)'],
        ['--diff', 'also ask the running gateway what FILE would change'],
        ['--admin URL', `with --diff: the gateway's admin listener (default ${adminUrl})`],
      ],
      examples: [
        'turnpike validate turnpike.yaml',
        'turnpike validate turnpike.yaml --set server.port=8081',
        'turnpike validate --diff turnpike.yaml --admin http://127.0.0.1:9902',
      ],
      exitCodes: [
        [0, 'valid (warnings, if any, are on stderr); with --diff, the gateway would accept it too'],
        [1, 'invalid, or (--diff) the gateway refused it, could not be reached, or refused the token'],
        USAGE_ERROR,
      ],
    },
    reload: {
      usage: 'turnpike reload [--admin URL]',
      summary: 'make the running gateway re-read its config file (as SIGHUP does) and say what changed',
      description:
        'Calls POST /admin/config/reload: the gateway re-reads its own config file with its own environment\n' +
        'and --set flags, validates it, and applies it to every worker without dropping a request. A refused\n' +
        'config changes nothing (the running one keeps serving). Needs a token with the admin role.\n' +
        ADMIN_TOKEN_TEXT(adminUrl),
      options: [
        ['--admin URL', `the gateway's admin listener (default ${adminUrl})`],
      ],
      examples: [
        'turnpike reload',
        'turnpike reload --admin http://127.0.0.1:9902',
        'TURNPIKE_ADMIN_TOKEN=... turnpike reload --admin http://10.0.0.5:9901',
      ],
      exitCodes: [
        [0, 'applied (the changes are printed)'],
        [1, 'refused (every problem is printed), the gateway could not be reached, or it refused the token'],
        USAGE_ERROR,
      ],
    },
    schema: {
      usage: 'turnpike schema',
      summary: 'print the config JSON Schema (editor completion and checks)',
      description:
        'Prints the JSON Schema (draft-07) of the config file, with every default and unit in the\n' +
        'descriptions. YAML editors pick it up from a first-line comment:\n' +
        '  # yaml-language-server: $schema=./turnpike.schema.json',
      options: [],
      examples: ['turnpike schema > turnpike.schema.json'],
      exitCodes: [[0, 'printed'], USAGE_ERROR],
    },
    init: {
      usage: 'turnpike init [FILE]',
      summary: 'print (or write to FILE) a commented starter config',
      description:
        'A starter config in YAML: server, admin, one upstream, two routes and header rules, each key\n' +
        'commented with its default and unit. It validates and starts as it is (point the upstream at your\n' +
        'service first). Without FILE it is printed; with FILE it is written there, never over an existing file.',
      options: [],
      examples: [
        'turnpike init turnpike.yaml && turnpike validate turnpike.yaml',
        'turnpike init > turnpike.yaml',
      ],
      exitCodes: [
        [0, 'printed, or written to FILE'],
        [1, 'FILE already exists (nothing written) or cannot be written'],
        [2, 'usage error, or FILE is not named *.yaml or *.yml'],
      ],
    },
  };
}

export const COMMANDS = commands('http://127.0.0.1:9901');

function table(rows: ReadonlyArray<readonly [string, string]>, indent = '  '): string {
  const width = Math.max(...rows.map(([a]) => a.length));
  return rows
    .map(([a, b]) => `${indent}${a.padEnd(width)}  ${b.split('\n').join(`\n${indent}${' '.repeat(width)}  `)}`)
    .join('\n');
}

/** `turnpike <command> --help`. */
export function commandHelp(name: string, adminUrl: string): string {
  const c = commands(adminUrl)[name];
  if (c === undefined) throw new Error(`no help for ${name}`);
  const parts = [`Usage: ${c.usage}`, '', c.description];
  if (c.options.length > 0) parts.push('', 'Options:', table(c.options));
  parts.push('', 'Examples:', ...c.examples.map((e) => `  ${e}`));
  parts.push('', 'Exit codes:', table(c.exitCodes.map(([code, text]) => [String(code), text] as const)));
  return parts.join('\n');
}

/** `turnpike`, `turnpike --help`, `turnpike help`. */
export function usage(version: string, adminUrl: string): string {
  const all = commands(adminUrl);
  return [
    `turnpike ${version}: edge proxy and API gateway`,
    '',
    'Usage: turnpike <command> [options]',
    '',
    'Commands:',
    table([
      ...Object.entries(all).map(([name, c]) => [name, c.summary] as const),
      ['help <command>', 'its options, examples and exit codes (or: turnpike <command> --help)'],
      ['--version', 'print the version'],
    ]),
    '',
    'Getting started:',
    '  turnpike init turnpike.yaml        # a commented starter config',
    '  turnpike validate turnpike.yaml',
    '  turnpike start --config turnpike.yaml',
    '',
    'Environment overrides: TURNPIKE_SERVER__PORT=8081 (double underscore = nesting). Exit codes: 0 done,',
    '1 refused or failed, 2 usage error. Docs: README.md.',
  ].join('\n');
}
