/**
 * The embedded default configuration: what `npm start` runs without
 * --config (`turnpike init` prints a different one, starter-config.ts, for a
 * service of the user's own). It
 * needs nothing else running: its only upstream is the demo server the engine
 * starts itself when the config is loaded with `loadEmbeddedConfig` (the
 * resolved config then has `demo.enabled: true`). Written as YAML so the
 * comments reach the user.
 */

/** Port of the built-in demo upstream (matches the `demo` target below). */
export const DEMO_PORT = 9090;

/** `source` of a config loaded from the text below. */
export const EMBEDDED_SOURCE = '<embedded>';

export const defaultConfigYaml = `# Turnpike configuration.
#
# Every setting is optional unless marked required; \`turnpike schema\` prints
# the JSON Schema with each default and unit (point your editor at it for
# completion). Override any value without editing this file:
#   environment:  TURNPIKE_SERVER__PORT=8081   (double underscore = nesting)
#   flags:        --set server.port=8081
# Precedence: this file < environment < flags.

server:
  host: 0.0.0.0            # all IPv4 interfaces
  port: 8080
  workers: auto            # one worker thread per CPU, or a count 1..256
  drainTimeoutMs: 30000    # on SIGTERM, in-flight requests get 30 s to finish
  requestIdHeader: x-request-id
  limits:
    maxBodyBytes: 10485760 # 10 MiB, above it: 413
    maxUrlBytes: 8192      # above it: 414
    maxHeaderBytes: 32768  # above it: 431
    maxHeaderCount: 100
  forwarded:
    xForwardedFor: true        # append the client address
    xForwardedProtoHost: true  # set X-Forwarded-Proto / X-Forwarded-Host
    forwarded: false           # RFC 7239 Forwarded header

admin:
  enabled: true
  host: 127.0.0.1          # loopback only: the admin API is not for the internet
  port: 9901

upstreams:
  # A demo server the gateway starts itself with this default config.
  # Replace it with your services: targets are http://host:port.
  demo:
    targets:
      - url: http://127.0.0.1:${DEMO_PORT}
        weight: 1
    balance: round_robin   # round_robin | least_conn | random | ip_hash | p2c | consistent_hash (+ hashOn) | sticky (+ sticky)
    pool:
      maxConnections: 256  # per target, per worker thread
      idleTimeoutMs: 30000
    timeouts:
      connectMs: 1000      # -> 504 upstream_connect_timeout
      responseMs: 15000    # request sent -> response head
      idleMs: 30000        # silence inside a response body
      totalMs: 0           # 0 = no limit on the whole exchange
    headers:
      response:
        set:
          x-served-by: turnpike-demo

routes:
  # GET / is answered by the demo upstream.
  - id: home
    host: "*"              # any Host; or api.example.com, *.example.com
    path: /
    methods: [GET, HEAD]
    upstream: demo

  # /demo/anything -> /anything on the demo upstream.
  - id: demo
    path: /demo/*
    upstream: demo
    rewrite:
      stripPrefix: /demo

  # Path parameters and a rewrite template: /api/v1/users/42 -> /users/42.
  - id: demo-users
    path: /api/v1/users/:id
    methods: [GET]
    upstream: demo
    rewrite:
      template: /users/{id}

  # Header predicates: only requests with "x-api-version: 2"; a higher
  # priority wins over the route above for the same path.
  - id: demo-users-v2
    path: /api/v1/users/:id
    methods: [GET]
    priority: 10
    match:
      headers:
        x-api-version: "2"
    upstream: demo
    rewrite:
      template: /v2/users/{id}
`;

/** Alias of defaultConfigYaml. */
export const defaultConfigText = defaultConfigYaml;
