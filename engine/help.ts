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
    ...identityCommands(adminUrl),
  };
}

const IDENTITY_EXIT_CODES = [
  [0, 'done'],
  [1, 'the gateway refused (the reason and what to do are printed), could not be reached, or refused the token'],
  USAGE_ERROR,
] as const;

const IDENTITY_COMMON: ReadonlyArray<readonly [string, string]> = [
  ['--json', 'print the admin API\'s JSON instead of a table (lists: {"items": [...]}, every page)'],
  ['--admin URL', 'the gateway\'s admin listener'],
];

/** consumers, keys, groups, grants (engine/identity-cli.ts, over the admin API's identity endpoints). */
function identityCommands(adminUrl: string): Record<string, CommandHelp> {
  const token = ADMIN_TOKEN_TEXT(adminUrl);
  return {
    consumers: {
      usage: 'turnpike consumers list [--tenant T] [--limit N] | get ID | create NAME [options] | update ID [options] | delete ID',
      summary: 'manage consumers (who calls the API): list, get, create (with keys), update, delete',
      description:
        'Consumers of the identity store, through the admin API (/admin/consumers). create --key NAME makes keys\n' +
        'with the consumer and prints them once. update --status suspended|revoked stops every key of the\n' +
        'consumer on every worker within about a second; delete removes it with its keys and grants.\n' +
        'Writes need a token with the admin role; every write is audited (GET /admin/identity/audit).\n' + token,
      options: [
        ['--tenant T, --plan P', 'tenant label, rate-limit tier (update: "" clears it)'],
        ['--status S', 'active, suspended or revoked'],
        ['--group G', 'a group the consumer belongs to, by id or by name, repeatable (update: replaces the list; --no-groups empties it)'],
        ['--meta k=v', 'a metadata entry, repeatable (update: replaces the metadata)'],
        ['--key NAME', 'create: also make a key with this name, repeatable (printed once)'],
        ['--id ID', 'create: choose the id (default a generated one)'],
        ['--name N', 'update: the new name'],
        ['--limit N', 'list: at most N (default every page)'],
        ...IDENTITY_COMMON,
      ],
      examples: [
        'turnpike consumers create acme --tenant t1 --plan gold --key ci',
        'turnpike consumers list --tenant t1',
        'turnpike consumers update con_01J... --status suspended',
        'turnpike consumers delete con_01J... --admin http://127.0.0.1:9902',
      ],
      exitCodes: IDENTITY_EXIT_CODES,
    },
    keys: {
      usage: 'turnpike keys list [--consumer ID] [--limit N] | get ID | create CONSUMER_ID [options] | rotate ID [--grace 30d] | revoke ID',
      summary: 'manage API keys: list, get, create (printed once), rotate, revoke',
      description:
        'API keys of the identity store, through the admin API (/admin/keys). create and rotate print the new\n' +
        'key once, on stdout (a warning on stderr says so): the gateway keeps only a hash. rotate keeps the old\n' +
        'key working for --grace (default identity.rotationGraceMs, 30 days), with Deprecation and Sunset\n' +
        'headers on its answers; revoke refuses the key everywhere within about a second.\n' + token,
      options: [
        ['--name N', 'create: what the key is for (default "default")'],
        ['--scope S', 'create: a scope the key holds, repeatable'],
        ['--expires WHEN', 'create: a duration from now ("90d", "12h"), an ISO-8601 time or ms since the epoch'],
        ['--cidr C, --origin O', 'create: allowed client addresses / Origin patterns, repeatable'],
        ['--id ID', 'create: choose the key id'],
        ['--grace D', 'rotate: how long the old key keeps working ("30d", "12h", "0s": it stops now)'],
        ['--consumer ID', 'list: one consumer\'s keys'],
        ['--limit N', 'list: at most N (default every page)'],
        ...IDENTITY_COMMON,
      ],
      examples: [
        'turnpike keys create con_01J... --name ci --scope orders:read --expires 90d',
        'KEY=$(turnpike keys create con_01J... --name ci | sed -n "s/^  key: *//p")',
        'turnpike keys list --consumer con_01J...',
        'turnpike keys rotate key_01J... --grace 7d',
        'turnpike keys revoke key_01J...',
      ],
      exitCodes: IDENTITY_EXIT_CODES,
    },
    groups: {
      usage: 'turnpike groups list [--limit N] | get ID | create NAME [--description D] [--id ID] | update ID [--name N] [--description D] | delete ID',
      summary: 'manage groups of consumers (grants to a group hold for every member)',
      description:
        'Groups of the identity store, through the admin API (/admin/groups). Consumers join a group with\n' +
        '`turnpike consumers update ID --group GROUP` (its id or its name); delete removes the group, its grants and its\n' +
        'memberships.\n' + token,
      options: [
        ['--description D', 'what the group is for (update: "" clears it)'],
        ['--name N', 'update: the new name'],
        ['--id ID', 'create: choose the id'],
        ['--limit N', 'list: at most N (default every page)'],
        ...IDENTITY_COMMON,
      ],
      examples: ['turnpike groups create partners --description "partner integrations"', 'turnpike groups list'],
      exitCodes: IDENTITY_EXIT_CODES,
    },
    grants: {
      usage: 'turnpike grants list [--subject consumer:ID|group:G] | get ID | create --subject consumer:ID|group:G --route ROUTE [--method M]... | delete ID',
      summary: 'manage grants: which consumer or group may call which route (routes with grants: required)',
      description:
        'Grants of the identity store, through the admin API (/admin/grants). A grant lets a consumer (or\n' +
        'every member of a group) call a route with the methods given (default any) when the route\'s auth\n' +
        'says grants: required. A route id the running config does not have is accepted with a warning.\n' + token,
      options: [
        ['--subject S', 'consumer:<id> or group:<id or name> (list: only that subject\'s own grants)'],
        ['--route ROUTE', 'create: the route id (routes[].id)'],
        ['--method M', 'create: a method, repeatable (default any)'],
        ['--id ID', 'create: choose the id'],
        ['--limit N', 'list: at most N (default every page)'],
        ...IDENTITY_COMMON,
      ],
      examples: [
        'turnpike grants create --subject consumer:con_01J... --route orders --method GET --method POST',
        'turnpike grants create --subject group:partners --route docs',
        'turnpike grants list --subject group:partners',
      ],
      exitCodes: IDENTITY_EXIT_CODES,
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
