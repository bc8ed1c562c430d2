// One autocannon run in its own process (latency.mjs pins it to the load
// CPU). Prints one line `ACJSON {...}` with requests/s and latency
// percentiles in µs taken from an hdr-histogram-js histogram of every
// response.
//
// usage: node ac-run.mjs '{"url":"http://127.0.0.1:18001/","connections":64,"duration":10,"rate":20000}'
//
// Pacing. autocannon's overallRate gives each connection a budget per
// SECOND, refilled by a 1 s timer: a connection sends its budget back to back
// and then idles, so at 80% of the max every second starts with ~0.8 s at
// full saturation, and p99 measures saturation rather than the offered rate.
// With PACING "smooth" (the default) one shared 1 ms timer refills each
// connection's budget in small slices instead (through the same
// reqsMadeThisSecond counter autocannon checks), so requests are spread
// evenly; unused budget carries over (at most 100 ms worth) so a slow target
// still receives the offered load. This uses autocannon 9.0.0 internals,
// checked at start; "autocannon" keeps its own behaviour.
import autocannon from 'autocannon';
import * as hdr from 'hdr-histogram-js';

const opts = JSON.parse(process.argv[2]);
const { url, connections = 64, tickMs = 1, duration = 10, rate = 0, pacing = 'smooth', method = 'GET', bodyBytes = 0 } = opts;

await hdr.initWebAssembly();
const mk = () => hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3, useWebAssembly: true });
const raw = mk();
const corrected = mk();

const TICK_MS = Number(tickMs);
const paced = new Set();
let pacer = null;
let perConnRate = 0;

function setupClient(client) {
  if (!rate || pacing !== 'smooth') return;
  if (typeof client.rate !== 'number' || !('reqsMadeThisSecond' in client) || typeof client._doRequest !== 'function') {
    throw new Error('autocannon internals changed: run with pacing "autocannon"');
  }
  // Allow the first request only; the pacer hands out the rest.
  client.reqsMadeThisSecond = client.rate - 1;
  client.__credit = 0;
  setImmediate(() => {
    clearInterval(client.rateInterval);
    paced.add(client);
  });
  if (pacer === null) {
    let last = performance.now();
    pacer = setInterval(() => {
      // Credit by elapsed time, not by tick count: a late timer must not
      // lower the offered rate.
      const now = performance.now();
      const elapsedMs = now - last;
      last = now;
      for (const c of paced) {
        if (c.destroyed) {
          paced.delete(c);
          continue;
        }
        c.__credit += (c.rate * elapsedMs) / 1000;
        const add = Math.floor(c.__credit);
        c.__credit -= add;
        const left = Math.max(0, c.rate - c.reqsMadeThisSecond);
        const budget = Math.min(left + add, Math.max(1, Math.ceil(c.rate / 10)));
        c.reqsMadeThisSecond = c.rate - budget;
        if (c.paused && budget > 0) {
          c.paused = false;
          c._doRequest(c.cer);
        }
      }
    }, TICK_MS);
  }
}

const acOpts = {
  url,
  connections: rate ? Math.min(connections, rate) : connections,
  duration,
  method,
  timeout: 10,
  setupClient,
};
if (bodyBytes) {
  acOpts.body = Buffer.alloc(bodyBytes, 'p');
  acOpts.headers = { 'content-type': 'application/octet-stream' };
}
if (rate) {
  acOpts.overallRate = rate;
  acOpts.ignoreCoordinatedOmission = true; // corrected in our own histogram
}
perConnRate = rate ? rate / acOpts.connections : 0;
// Expected interval between two requests of one connection, for the
// coordinated-omission-corrected histogram.
const intervalUs = perConnRate ? Math.round(1e6 / perConnRate) : 0;

let non2xx = 0;
const instance = autocannon(acOpts, (err, result) => {
  if (pacer) clearInterval(pacer);
  if (err) {
    console.log(`ACJSON ${JSON.stringify({ error: err.message })}`);
    process.exit(1);
  }
  const pct = (h) => ({
    p50: h.getValueAtPercentile(50),
    p90: h.getValueAtPercentile(90),
    p99: h.getValueAtPercentile(99),
    p999: h.getValueAtPercentile(99.9),
    max: h.maxValue,
    mean: Math.round(h.mean),
    count: h.totalCount,
  });
  const seconds = result.duration;
  const out = {
    url,
    connections: acOpts.connections,
    offeredRate: rate || null,
    pacing: rate ? pacing : null,
    durationS: seconds,
    requests: result.requests.total,
    rps: Math.round(result.requests.total / seconds),
    errors: result.errors + result.timeouts + non2xx,
    errorDetail: { socket: result.errors, timeouts: result.timeouts, non2xx },
    latencyUs: pct(raw),
    latencyCorrectedUs: intervalUs ? pct(corrected) : null,
    autocannonP99Ms: result.latency.p99,
  };
  raw.destroy();
  corrected.destroy();
  console.log(`ACJSON ${JSON.stringify(out)}`);
});
instance.on('response', (client, statusCode, resBytes, responseTimeMs) => {
  if (statusCode < 200 || statusCode > 299) non2xx++;
  const us = Math.max(1, Math.round(responseTimeMs * 1000));
  raw.recordValue(us);
  if (intervalUs) corrected.recordValueWithExpectedInterval(us, intervalUs);
});
