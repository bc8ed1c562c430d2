/**
 * What `turnpike init` prints: a commented starter config a new user edits
 * instead of starting from the reference. Every key carries its default and
 * unit, taken from DEFAULTS, so the comments cannot drift from the schema;
 * test/integration/cli.test.ts checks that the text validates and starts.
 *
 * Unlike the embedded default config (default-config.ts) it needs a service
 * of the user's own: its one upstream points at http://127.0.0.1:3000.
 */
import { formatDuration } from './duration.js';
import { DEFAULTS } from './schema.js';

const d = DEFAULTS;
const dur = (ms: number) => (ms === 0 ? '0' : formatDuration(ms));

/** Comments after a value start in this column (or two spaces after a longer value). */
const COMMENT_COLUMN = 31;

/** Lines `key: value   # comment` with their comments lined up. */
function alignComments(text: string): string {
  return text.split('\n').map((line) => {
    const m = /^(\s*[^\s#].*?)\s{2,}(# .*)$/.exec(line);
    if (m === null) return line;
    const code = m[1]!;
    return `${code.length <= COMMENT_COLUMN - 3 ? code.padEnd(COMMENT_COLUMN - 1) : `${code} `} ${m[2]!}`;
  }).join('\n');
}

/** The starter config, YAML. */
export function starterConfig(): string {
  const up = d.upstream;
  return alignComments(`# Turnpike gateway configuration (written by \`turnpike init\`).
#
#   turnpike validate turnpike.yaml         # every problem by path; warnings too
#   turnpike start --config turnpike.yaml   # then: curl -i http://127.0.0.1:${d.server.port}/api/hello
#
# Each key shows its default: delete the lines you do not change. Override
# any value without editing this file: TURNPIKE_SERVER__PORT=8081 in the
# environment, or --set server.port=8081 (precedence: file < env < flags).
# Durations (keys ending in Ms) take milliseconds or "250ms", "5s", "1m", "1h".
# Editor completion: \`turnpike schema > turnpike.schema.json\` next to this file.
# yaml-language-server: $schema=./turnpike.schema.json

server:
  host: ${d.server.host}            # listen address (default ${d.server.host}: every IPv4 interface)
  port: ${d.server.port}               # listen port (default ${d.server.port}; 0 = a free port, printed at start)
  workers: ${d.server.workers}            # worker threads: auto = one per CPU, or 1..256 (default ${d.server.workers})
  drainTimeoutMs: ${dur(d.server.drainTimeoutMs)}       # on SIGTERM/SIGINT, time in-flight requests get (default ${dur(d.server.drainTimeoutMs)})
  requestIdHeader: ${d.server.requestIdHeader}   # kept when the client sends a safe one, else generated (default ${d.server.requestIdHeader})
  limits:
    maxBodyBytes: ${d.server.limits.maxBodyBytes}   # request body, bytes; 413 above (default ${d.server.limits.maxBodyBytes} = 10 MiB)
    maxUrlBytes: ${d.server.limits.maxUrlBytes}       # path + query, bytes; 414 above (default ${d.server.limits.maxUrlBytes})
    maxHeaderBytes: ${d.server.limits.maxHeaderBytes}   # header names + values, bytes; 431 above (default ${d.server.limits.maxHeaderBytes})
    maxHeaderCount: ${d.server.limits.maxHeaderCount}     # request headers; 431 above (default ${d.server.limits.maxHeaderCount})
  forwarded:
    xForwardedFor: ${d.server.forwarded.xForwardedFor}         # append the client address to X-Forwarded-For (default ${d.server.forwarded.xForwardedFor})
    xForwardedProtoHost: ${d.server.forwarded.xForwardedProtoHost}   # set X-Forwarded-Proto and X-Forwarded-Host (default ${d.server.forwarded.xForwardedProtoHost})
  headers:                     # header rules for every route (default none)
    response:
      set:
        x-content-type-options: nosniff

admin:
  enabled: ${d.admin.enabled}                # /health, /metrics and the admin API (default ${d.admin.enabled})
  host: ${d.admin.host}            # loopback only; never expose it unprotected (default ${d.admin.host})
  port: ${d.admin.port}                   # (default ${d.admin.port}) with no token configured, one is generated
                               # into .turnpike/admin-token-<port> (turnpike reload finds it)

upstreams:
  app:                         # a name of your choice; routes refer to it
    targets:                   # http://host:port, or { url: ..., weight: 1..1000 } (default weight ${up.weight})
      - http://127.0.0.1:3000  # your service
    balance: ${up.balance}        # round_robin | least_conn | random | ip_hash | p2c | consistent_hash | sticky (default ${up.balance})
    pool:
      maxConnections: ${up.pool.maxConnections}      # sockets per target per worker thread (default ${up.pool.maxConnections})
      idleTimeoutMs: ${dur(up.pool.idleTimeoutMs)}        # idle keep-alive sockets closed after (default ${dur(up.pool.idleTimeoutMs)})
      maxPending: ${up.pool.maxPending}        # requests waiting for a socket, per target per worker; 503 beyond (default ${up.pool.maxPending})
    timeouts:
      connectMs: ${dur(up.timeouts.connectMs)}             # TCP connect; 504 upstream_connect_timeout past it (default ${dur(up.timeouts.connectMs)})
      responseMs: ${dur(up.timeouts.responseMs)}           # request sent -> response head; 504 upstream_timeout (default ${dur(up.timeouts.responseMs)})
      idleMs: ${dur(up.timeouts.idleMs)}               # silence inside a response body; connection closed (default ${dur(up.timeouts.idleMs)})
      totalMs: ${dur(up.timeouts.totalMs)}                 # whole exchange; 0 = no limit (default ${dur(up.timeouts.totalMs)})

routes:                        # the highest priority wins, then the most specific path (static > :param > *)
  - id: api                    # unique; names the route in metrics, logs and the admin API
    host: "${d.route.host}"                  # api.example.com, *.example.com or * (default *)
    path: /api/*               # static segments, :name, :name(regex), a trailing *
    methods: [GET, POST, PUT, PATCH, DELETE]   # default: any method; GET also matches HEAD
    upstream: app
    rewrite:
      stripPrefix: /api        # /api/users -> /users upstream (default: the path as matched)
    headers:                   # header rules for this route: remove, then set, then add (default none)
      request:
        set:
          x-gateway: turnpike
        remove: [cookie]
      response:
        add:
          cache-control: no-store
  - id: site                   # everything else, unchanged
    path: /*
    upstream: app
`);
}
