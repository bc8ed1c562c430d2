// Keyed balancers (issue 11, balance: consistent_hash): what hashing a
// request header and looking it up in the Maglev table costs on the hot
// path, against round robin over the same two targets:
//
//   turnpike-hash-base  two targets, balance round_robin
//   turnpike-hash       the same two targets, balance consistent_hash,
//                       hashOn "header:x-client" (10,000 distinct keys in
//                       the `ratelimit` scenario: X-Client carries one of
//                       10,000 addresses per request)
//
// Same scenario, same run (PARALLEL=1 so that a swing of the VM hits both
// alike): the difference in CPU-µs per request is the key's extraction
// (a scan of the request's header list), its xxHash32 and the table lookup.
//   PARALLEL=1 NO_MD=1 TARGETS=turnpike-hash-base,turnpike-hash SCENARIOS=ratelimit node run.mjs
// Two targets need two upstream addresses (duplicate targets are refused,
// and the bench's nginx listens on one), so each target starts two node:http
// upstreams of its own (peers/upstream-node.mjs, pinned to the load
// generator's CPU), as lib/resilience-targets.mjs does. Ports 18069-18074.
import { twoTargetGateway } from './resilience-targets.mjs';

/** A key verify() sends (the scenario's keys are 10.x addresses in X-Client). */
const VERIFY_HEADERS = { 'x-client': '10.0.0.1' };

/** The pair: [round robin, consistent_hash on a header]. `deps`: { cli, benchDir, pool, loadCpu, notBuilt }. */
export function balancingTargets(deps) {
  return [
    twoTargetGateway(deps, 'turnpike-hash-base', 18069, [18071, 18072], { balance: 'round_robin' }, VERIFY_HEADERS),
    twoTargetGateway(deps, 'turnpike-hash', 18070, [18073, 18074], { balance: 'consistent_hash', hashOn: 'header:x-client' }, VERIFY_HEADERS),
  ];
}
