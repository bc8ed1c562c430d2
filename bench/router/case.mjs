// One router on one dataset, in a fresh process (run by router/run.mjs with
// --expose-gc): build it (timed), verify every request returns
// the expected route, time lookups per request class, then measure the heap
// the router retains. Prints one line
// `ROUTERJSON {...}`.
//
// usage: node --expose-gc case.mjs <router> <dataset>   (env SAMPLES, SAMPLE_MS, WARMUP_MS)
//
// The loop: for one class, the requests are cycled in a tight loop calling
// find(method, path); every result is folded into a sink that is returned
// and printed, so the calls cannot be optimised away. One warm-up pass over
// all requests first, then per class: a warm-up, a calibration (iterations
// for ~SAMPLE_MS), SAMPLES timed samples with process.hrtime.bigint(), and
// the median.
import { ADAPTERS } from './adapters.mjs';
import { loadDataset } from './datasets.mjs';

const [routerName, datasetName] = process.argv.slice(2);
const SAMPLES = Number(process.env.SAMPLES || 7);
const SAMPLE_MS = Number(process.env.SAMPLE_MS || 100);
const WARMUP_MS = Number(process.env.WARMUP_MS || 300);

const adapter = ADAPTERS.find((a) => a.name === routerName);
if (!adapter) throw new Error(`unknown router ${routerName}`);
const ds = loadDataset(datasetName);
const out = { router: adapter.name, label: adapter.label, version: adapter.version(), dataset: ds.name, routes: ds.routes.length };
const print = () => console.log(`ROUTERJSON ${JSON.stringify(out)}`);
const skipReason = adapter.skip?.() ?? null;
if (skipReason) {
  out.skipped = skipReason;
  print();
  process.exit(0);
}

const gc = globalThis.gc;
if (typeof gc !== 'function') throw new Error('run with --expose-gc');
const fullGc = async () => {
  for (let i = 0; i < 4; i++) {
    await new Promise((r) => setTimeout(r, 2));
    gc();
  }
};

const supported = (cls) => !adapter.classes || cls === 'mix' || adapter.classes.includes(cls);
// `mix` for a router that cannot answer every class would not be comparable.
const classes = ds.classes.filter((c) => (c === 'mix' ? !adapter.classes : supported(c)));
const requests = ds.requests.filter((r) => supported(r.class));
if (classes.length === 0) {
  out.skipped = `answers none of this dataset's classes (${ds.classes.join(', ')})`;
  print();
  process.exit(0);
}

const makeBuild = await adapter.load();

// --- build: time ------------------------------------------------------------
await fullGc();
let find;
const t0 = process.hrtime.bigint();
try {
  find = makeBuild(ds.routes);
  // Some routers compile lazily on the first lookup (hono RegExpRouter):
  // that belongs to the build.
  find(requests[0].method, requests[0].path);
} catch (err) {
  out.error = `build failed: ${err.message}`;
  print();
  process.exit(0);
}
out.buildMs = Math.round((Number(process.hrtime.bigint() - t0) / 1e6) * 10) / 10;

// --- verify: a wrong router is not fast -----------------------------------------
const mismatches = [];
for (const r of requests) {
  let got;
  try {
    got = find(r.method, r.path) ?? null;
  } catch (err) {
    got = `throws: ${err.message}`;
  }
  if (got !== r.expect) mismatches.push({ class: r.class, method: r.method, path: r.path, expect: r.expect, got });
}
out.verified = mismatches.length === 0;
if (mismatches.length) {
  out.mismatches = mismatches;
  print();
  process.exit(0);
}

// --- time ---------------------------------------------------------------------
function loop(methods, paths, iterations) {
  const n = paths.length;
  let sink = 0;
  for (let k = 0; k < iterations; k++) {
    for (let i = 0; i < n; i++) {
      const d = find(methods[i], paths[i]);
      sink += d == null ? 1 : d.length;
    }
  }
  return sink;
}

function timeMs(methods, paths, iterations) {
  const s = process.hrtime.bigint();
  const sink = loop(methods, paths, iterations);
  return [Number(process.hrtime.bigint() - s) / 1e6, sink];
}

/** Run batches (doubling while short) for about `ms`; returns [iterations, ms, sink]. */
function runFor(methods, paths, ms) {
  let it = 1;
  let iters = 0;
  let total = 0;
  let sink = 0;
  while (total < ms) {
    const [t, s] = timeMs(methods, paths, it);
    total += t;
    iters += it;
    sink += s;
    if (t < ms / 10) it *= 2;
  }
  return [iters, total, sink];
}

const median = (v) => {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

let sinkAll = 0;
// Warm every path of the router once before any class is timed.
sinkAll += runFor(requests.map((r) => r.method), requests.map((r) => r.path), WARMUP_MS)[2];

out.classes = {};
for (const cls of classes) {
  const reqs = cls === 'mix' ? requests : requests.filter((r) => r.class === cls);
  const methods = reqs.map((r) => r.method);
  const paths = reqs.map((r) => r.path);
  const [it0, ms0, s0] = runFor(methods, paths, WARMUP_MS / 3);
  sinkAll += s0;
  // Iterations for one sample of ~SAMPLE_MS, from the warm-up's pace.
  const perIterMs = ms0 / Math.max(1, it0);
  const iterations = Math.max(1, Math.round(SAMPLE_MS / Math.max(perIterMs, 1e-6)));
  const rates = [];
  for (let s = 0; s < SAMPLES; s++) {
    const [t, sink] = timeMs(methods, paths, iterations);
    sinkAll += sink;
    rates.push((iterations * reqs.length) / (t / 1000));
  }
  out.classes[cls] = { requests: reqs.length, lookupsPerSec: Math.round(median(rates)), samples: rates.map(Math.round) };
}
out.sink = sinkAll;

// --- heap: what the router retains --------------------------------------------
// Measured last, as heapUsed with the router alive minus heapUsed once it is
// dropped, both after GCs: a before/after-build delta drowns a small router
// in start-up garbage V8 keeps freeing for a while (it came out negative).
await fullGc();
const heapWith = process.memoryUsage().heapUsed;
find = null;
await fullGc();
out.heapMB = Math.round(((heapWith - process.memoryUsage().heapUsed) / 2 ** 20) * 100) / 100;
print();
