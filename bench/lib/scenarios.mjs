// Load scenarios. Adding one is ONE entry: method, path on the target,
// connections, and an optional request body size. The wrk Lua script that
// sets the method/body and prints a JSON summary is generated from it.
export const SCENARIOS = [
  { name: 'get-64', method: 'GET', path: '/', connections: 64, note: 'GET, 2-byte "ok" response' },
  { name: 'get-256', method: 'GET', path: '/', connections: 256, note: 'GET, 256 connections' },
  { name: 'post-16k', method: 'POST', path: '/', connections: 64, bodyBytes: 16 * 1024, note: 'POST 16 KiB body, "ok" response' },
  { name: 'get-1m', method: 'GET', path: '/1mb', connections: 16, note: 'GET, 1 MiB response' },
  // Rate limiting (issue 10): GET whose client address is one of `keys`
  // (10.0.0.0 + k) in X-Forwarded-For and in X-Client, so a policy `by: ip`
  // behind `server.trustedProxies` or `by: "header:x-client"` sees that many
  // clients. Meant for the turnpike-plain / turnpike-ratelimit* targets.
  { name: 'ratelimit', method: 'GET', path: '/', connections: 64, keys: 10000, note: 'GET, 10,000 client addresses in X-Forwarded-For / X-Client' },
  // The same addresses at 16 connections: strict limits (one Redis round
  // trip per request) are for low-rate traffic, where latency shows.
  { name: 'ratelimit-strict', method: 'GET', path: '/', connections: 16, keys: 10000, note: 'GET, 10,000 client addresses, 16 connections' },
  // One connection, one request at a time: the latency a decision adds
  // when nothing queues (a strict limit: one Redis round trip).
  { name: 'ratelimit-c1', method: 'GET', path: '/', connections: 1, keys: 10000, note: 'GET, 10,000 client addresses, 1 connection' },
  // Traffic split (issue 11, routes[].upstreams): a browser-like GET with a
  // Cookie header, so that hashOn "cookie:session" has its key to read. For
  // the turnpike-split* targets (lib/split-targets.mjs).
  { name: 'split-cookie', method: 'GET', path: '/', connections: 64, headers: { Cookie: 'theme=dark; session=4f1c2b9e7a; lang=en' }, note: 'GET with a 3-cookie Cookie header' },
  // API keys (issue 12, routes[].auth): a GET with `Authorization: Bearer
  // <key>`, the key made by the target once it runs (lib/auth-targets.mjs
  // writes it to auth-header-<port>.txt in the run's temp dir, beside this
  // script). For the turnpike-auth* targets only (their route /orders/*):
  // others have no such file.
  { name: 'auth', method: 'GET', path: '/orders/1', connections: 64, headerFiles: { Authorization: 'auth-header' }, note: 'GET with Authorization: Bearer <API key>' },
  // TLS (issue 15). A `tls: true` scenario runs only on targets with
  // `tls: true` (lib/tls-targets.mjs: loaded over https), every other
  // scenario only on plain targets. wrk (-t1) runs with
  // lib/wrk-tls-shim.c preloaded, which counts its handshakes (full and
  // resumed) and, for `fullHandshake`, drops the session wrk would offer
  // on a reconnect.
  { name: 'tls-get-64', tls: true, method: 'GET', path: '/', connections: 64, note: 'GET over TLS, keep-alive (64 handshakes per run)' },
  // Connection: close, so a new connection and handshake per request. wrk
  // keeps the last session of each connection slot and offers it again:
  // against a server that takes tickets or has a session cache these are
  // resumed handshakes (the shim's count says how many).
  { name: 'tls-handshake', tls: true, method: 'GET', path: '/', connections: 64, headers: { Connection: 'close' }, note: 'GET over TLS, Connection: close: a handshake per request, resumed when the server allows it' },
  { name: 'tls-handshake-full', tls: true, fullHandshake: true, method: 'GET', path: '/', connections: 64, headers: { Connection: 'close' }, note: 'GET over TLS, Connection: close, every handshake a full one (no session offered)' },
  // The same two over TLS 1.2 (wrk capped by the shim): a resumed TLS 1.2
  // handshake does no key exchange, a TLS 1.3 one does (psk_dhe_ke).
  { name: 'tls12-handshake', tls: true, tlsMax: '1.2', method: 'GET', path: '/', connections: 64, headers: { Connection: 'close' }, note: 'GET over TLS 1.2, Connection: close: a handshake per request, resumed when the server allows it' },
  { name: 'tls12-handshake-full', tls: true, tlsMax: '1.2', fullHandshake: true, method: 'GET', path: '/', connections: 64, headers: { Connection: 'close' }, note: 'GET over TLS 1.2, Connection: close, every handshake a full one' },
  // The plain baseline of tls-handshake: a new TCP connection per request.
  { name: 'close-64', method: 'GET', path: '/', connections: 64, headers: { Connection: 'close' }, note: 'GET, Connection: close: a new TCP connection per request' },
];

export function selectScenarios(filter) {
  if (!filter) return SCENARIOS;
  const want = filter.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = want.filter((w) => !SCENARIOS.some((s) => s.name === w));
  if (unknown.length) throw new Error(`unknown scenario(s) ${unknown.join(', ')}; known: ${SCENARIOS.map((s) => s.name).join(', ')}`);
  return SCENARIOS.filter((s) => want.includes(s.name));
}

/**
 * Requests spread over `n` client addresses. All `n` requests are built once
 * in `init` (wrk.format) in a shuffled order (fixed seed: the same order every
 * run), and `request` hands them out in turn: per request wrk runs one Lua
 * call that returns a prebuilt string, no formatting. Connections share the
 * counter (one Lua state per wrk thread, -t1), so every address comes back
 * once per `n` requests whatever the connection count.
 */
function keysLua(n) {
  return `
local reqs = {}
local n = ${n}
local i = 0
init = function(args)
  local order = {}
  for k = 1, n do order[k] = k - 1 end
  math.randomseed(20261130)
  for k = n, 2, -1 do
    local j = math.random(k)
    order[k], order[j] = order[j], order[k]
  end
  for k = 1, n do
    local a = order[k]
    local ip = string.format("10.%d.%d.%d", math.floor(a / 65536) % 256, math.floor(a / 256) % 256, a % 256)
    reqs[k] = wrk.format(nil, nil, { ["Host"] = wrk.headers["Host"], ["X-Forwarded-For"] = ip, ["X-Client"] = ip })
  end
end
request = function()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end
`;
}

/**
 * Sets header `name` to the content of `<prefix>-<port>.txt` in the
 * script's own directory (the run's temp dir), read once when wrk loads the
 * script (wrk.port is set by then): a value only known once the target runs
 * (an API key it made), still one pre-built request and no Lua per request.
 * Without the file the script fails to load and wrk says so on stderr.
 */
function headerFileLua(name, prefix) {
  return `
do
  local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
  local path = dir .. ${JSON.stringify(`${prefix}-`)} .. wrk.port .. ".txt"
  local f = io.open(path, "r")
  if f == nil then error("no " .. path .. ": this scenario is for a target that writes it") end
  wrk.headers[${JSON.stringify(name)}] = f:read("*a")
  f:close()
end`;
}

/**
 * The wrk script. Unless the scenario spreads keys (keysLua), no
 * `request`/`response` function is defined, so wrk keeps
 * sending one pre-built request and runs no Lua per request; `done` runs
 * once and prints the summary as JSON (latency percentiles in µs).
 */
export function wrkLua(scenario) {
  const lines = [];
  if (scenario.method !== 'GET') lines.push(`wrk.method = "${scenario.method}"`);
  if (scenario.bodyBytes) {
    lines.push(`wrk.body = string.rep("p", ${scenario.bodyBytes})`);
    lines.push('wrk.headers["Content-Type"] = "application/octet-stream"');
  }
  for (const [k, v] of Object.entries(scenario.headers ?? {})) lines.push(`wrk.headers[${JSON.stringify(k)}] = ${JSON.stringify(v)}`);
  for (const [k, prefix] of Object.entries(scenario.headerFiles ?? {})) lines.push(headerFileLua(k, prefix));
  if (scenario.keys) lines.push(keysLua(scenario.keys));
  lines.push(`
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
`);
  return lines.join('\n');
}
