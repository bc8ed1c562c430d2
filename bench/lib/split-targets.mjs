// Traffic split (issue 11, routes[].upstreams): what choosing one of several
// upstreams per request costs on the hot path. Three targets, same config
// but the route's upstream choice, all in front of the bench's nginx
// upstream (the split's two upstreams are two names, two pools, for the
// same nginx: only the decision and the pool it lands in differ):
//
//   turnpike-split-base  `upstream: v1` (today's single-upstream route)
//   turnpike-split       `upstreams: [{v1, 90}, {v2, 10}]`: smooth weighted
//                        round robin per worker
//   turnpike-split-hash  the same with hashOn "cookie:session": the Cookie
//                        header found and parsed, the session value hashed
//
// Meant for the `split-cookie` scenario (a GET with a 3-cookie Cookie
// header), PARALLEL=1 so that a swing of the VM hits the three alike:
//   PARALLEL=1 NO_MD=1 TARGETS=turnpike-split-base,turnpike-split,turnpike-split-hash SCENARIOS=split-cookie node run.mjs
// Ports 18063-18065.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

const SPLITS = {
  'turnpike-split-base': { port: 18063, route: { upstream: 'v1' } },
  'turnpike-split': { port: 18064, route: { upstreams: [{ name: 'v1', weight: 90 }, { name: 'v2', weight: 10 }] } },
  'turnpike-split-hash': { port: 18065, route: { upstreams: [{ name: 'v1', weight: 90 }, { name: 'v2', weight: 10 }], hashOn: 'cookie:session' } },
};

/** The three targets. `deps`: { cli, upstreamUrl, pool, notBuilt }. */
export function splitTargets({ cli, upstreamUrl, pool, notBuilt }) {
  return Object.entries(SPLITS).map(([name, { port, route }]) => ({
    name,
    port,
    skip: notBuilt,
    command: (tmp) => {
      const file = join(tmp, `${name}.json`);
      const up = { targets: [upstreamUrl], pool: { maxConnections: pool } };
      writeFileSync(file, JSON.stringify({
        server: { host: '127.0.0.1', port, workers: 1 },
        admin: { enabled: false },
        log: { access: { enabled: false } },
        // Both upstreams in every config (the base's v2 unused): only the route differs.
        upstreams: { v1: up, v2: up },
        routes: [{ id: 'all', path: '/*', ...route }],
      }, null, 2));
      return [process.execPath, [cli, 'start', '--config', file]];
    },
    version: () => `node ${process.version}, route ${JSON.stringify(route)}`,
    verify: async () => {
      for (let i = 0; i < 20; i++) {
        const r = await fetch(`http://127.0.0.1:${port}/`, { headers: { cookie: `session=s${i}` } });
        const body = await r.text();
        if (r.status !== 200 || body !== 'ok') throw new Error(`${name}: ${r.status} ${body.slice(0, 80)}`);
      }
    },
  }));
}
