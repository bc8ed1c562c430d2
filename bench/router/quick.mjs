#!/usr/bin/env node
// Quick look while working on a router: mitata, all routers in ONE process,
// one class of the github table (default mix). Faster and noisier than
// router/run.mjs (shared JIT state, no per-router process); never publish
// these numbers, use run.mjs for RESULTS.md.
// usage: node router/quick.mjs [class] [router,router...]
import { run, bench, summary, do_not_optimize } from 'mitata';
import { ADAPTERS } from './adapters.mjs';
import { loadDataset } from './datasets.mjs';

const cls = process.argv[2] || 'mix';
const only = process.argv[3]?.split(',');
const ds = loadDataset('github');
const reqs = ds.requests.filter((r) => cls === 'mix' || r.class === cls);
if (reqs.length === 0) throw new Error(`no requests of class ${cls}; classes: ${ds.classes.join(', ')}`);

summary(() => {
  for (const a of ADAPTERS) {
    if (only && !only.includes(a.name)) continue;
    if (a.skip?.()) continue;
    if (a.classes && (cls === 'mix' || !a.classes.includes(cls))) continue;
    bench(`${a.name} ${cls} x${reqs.length}`, async function* () {
      const find = (await a.load())(ds.routes);
      for (const r of reqs) {
        if ((find(r.method, r.path) ?? null) !== r.expect) throw new Error(`${a.name}: wrong route for ${r.method} ${r.path}`);
      }
      yield () => {
        for (let i = 0; i < reqs.length; i++) do_not_optimize(find(reqs[i].method, reqs[i].path));
      };
    });
  }
});
await run();
