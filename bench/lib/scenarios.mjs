// Load scenarios. Adding one is ONE entry: method, path on the target,
// connections, and an optional request body size. The wrk Lua script that
// sets the method/body and prints a JSON summary is generated from it.
export const SCENARIOS = [
  { name: 'get-64', method: 'GET', path: '/', connections: 64, note: 'GET, 2-byte "ok" response' },
  { name: 'get-256', method: 'GET', path: '/', connections: 256, note: 'GET, 256 connections' },
  { name: 'post-16k', method: 'POST', path: '/', connections: 64, bodyBytes: 16 * 1024, note: 'POST 16 KiB body, "ok" response' },
  { name: 'get-1m', method: 'GET', path: '/1mb', connections: 16, note: 'GET, 1 MiB response' },
];

export function selectScenarios(filter) {
  if (!filter) return SCENARIOS;
  const want = filter.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = want.filter((w) => !SCENARIOS.some((s) => s.name === w));
  if (unknown.length) throw new Error(`unknown scenario(s) ${unknown.join(', ')}; known: ${SCENARIOS.map((s) => s.name).join(', ')}`);
  return SCENARIOS.filter((s) => want.includes(s.name));
}

/**
 * The wrk script. No `request`/`response` function is defined, so wrk keeps
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
