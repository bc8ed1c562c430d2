// Upstream resilience (issue 11): what the breaker + p2c decision costs on
// the hot path. Two targets, one pair:
//
//   turnpike-resilience-base  two targets, balance round_robin, nothing else
//                             (the plain proxy over the same two targets)
//   turnpike-resilience       the same two targets, balance p2c and a
//                             breaker with every default (maxInFlight 10000,
//                             failureThreshold 5, failureRate 50...)
//
// Same scenario (get-64), same run, rounds interleaved: the difference in
// CPU-µs per request is the guard's (shared in-flight counts, breaker
// admission and outcome, p2c's two choices). Target: <= 3%.
//
// p2c needs two targets, and the bench's nginx upstream listens on one
// address, so each target here starts two node:http upstreams of its own
// (peers/upstream-node.mjs, pinned to the load generator's CPU like the
// nginx upstream), and the baseline runs over the same kind of pair so that
// only the decision differs. Ports 18057-18062.
//
// Kept in its own module, with what it needs passed in, so that adding it
// to TARGETS is one line:
//   ...resilienceTargets({ cli: TURNPIKE_CLI, benchDir: BENCH_DIR, pool: POOL, loadCpu: LOAD_CPU, notBuilt }),
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnPinned, stopChild } from './proc.mjs';

/**
 * A gateway over two node:http targets of its own (started with it, pinned
 * to the load CPU), with `upstreamExtra` merged into its one upstream; also
 * used by lib/balancing-targets.mjs. `verifyHeaders`: sent by verify().
 */
export function twoTargetGateway({ cli, benchDir, pool, loadCpu, notBuilt }, name, port, upPorts, upstreamExtra, verifyHeaders = {}) {
  let ups = [];
  return {
    name,
    port,
    skip: notBuilt,
    command: (tmp) => {
      ups = upPorts.map((p) => spawnPinned(loadCpu, process.execPath, [join(benchDir, 'peers/upstream-node.mjs'), String(p)], { logFile: join(tmp, `${name}-upstream-${p}.log`) }));
      for (const u of ups) u.unref(); // a harness that never calls stop() still exits
      // Listening before the gateway starts: a refused connection while they
      // boot would count as a failure, and five open a breaker for 30 s.
      for (const p of upPorts) {
        const probe = `const s=require('net').connect(${p},'127.0.0.1');s.on('connect',()=>process.exit(0));s.on('error',()=>process.exit(1));`;
        for (let i = 0; spawnSync(process.execPath, ['-e', probe]).status !== 0; i++) {
          if (i === 100) throw new Error(`${name}: its upstream on ${p} did not start (see ${join(tmp, `${name}-upstream-${p}.log`)})`);
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
        }
      }
      const file = join(tmp, `${name}.json`);
      writeFileSync(file, JSON.stringify({
        server: { host: '127.0.0.1', port, workers: 1 },
        admin: { enabled: false },
        log: { access: { enabled: false } },
        upstreams: { up: { targets: upPorts.map((p) => `http://127.0.0.1:${p}`), pool: { maxConnections: pool }, ...upstreamExtra } },
        routes: [{ id: 'all', path: '/*', upstream: 'up' }],
      }, null, 2));
      return [process.execPath, [cli, 'start', '--config', file]];
    },
    version: () => `node ${process.version}, upstream ${JSON.stringify(upstreamExtra)} over two node:http targets`,
    // Both upstreams answer through the gateway (p2c and round robin both reach each within a few requests).
    verify: async () => {
      for (let i = 0; i < 20; i++) {
        const r = await fetch(`http://127.0.0.1:${port}/`, { headers: verifyHeaders });
        const body = await r.text();
        if (r.status !== 200 || body !== 'ok') throw new Error(`${name}: ${r.status} ${body.slice(0, 80)}`);
      }
    },
    stop: async () => {
      for (const u of ups) await stopChild(u);
      ups = [];
    },
  };
}

/** The pair: [baseline, breaker + p2c]. `deps`: { cli, benchDir, pool, loadCpu, notBuilt }. */
export function resilienceTargets(deps) {
  return [
    twoTargetGateway(deps, 'turnpike-resilience-base', 18057, [18059, 18060], { balance: 'round_robin' }),
    twoTargetGateway(deps, 'turnpike-resilience', 18058, [18061, 18062], { balance: 'p2c', breaker: {} }),
  ];
}
