// Upstream retries (issue 11, upstream `retry`): what retries cost on the
// healthy path, where no try fails. Three targets in front of the bench's
// nginx upstream, the same config but the upstream's retry section:
//
//   turnpike-retry-base  no `retry` (the plain proxy: one null check)
//   turnpike-retry       `retry: {}` (every default: GET, HEAD, OPTIONS, PUT,
//                        DELETE retried): a request counted for the budget,
//                        its method looked up; a GET keeps nothing
//   turnpike-retry-post  `retry: { methods: [GET, POST] }`: a POST body
//                        (<= 64 KiB) is kept for a retry, so each chunk is
//                        copied into a buffer of its own instead of the
//                        reused scratch buffer
//
// Meant for get-64 and post-16k, PARALLEL=1 so that a swing of the VM hits
// the three alike:
//   PARALLEL=1 NO_MD=1 TARGETS=turnpike-retry-base,turnpike-retry,turnpike-retry-post SCENARIOS=get-64,post-16k node run.mjs
// Ports 18066-18068. A failure-scenario bench can reuse `retryConfig`.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

const RETRIES = {
  'turnpike-retry-base': { port: 18066, retry: null },
  'turnpike-retry': { port: 18067, retry: {} },
  'turnpike-retry-post': { port: 18068, retry: { methods: ['GET', 'POST'] } },
};

/** A gateway config on `port` in front of `targets` with the upstream's `retry` (null: none). */
export function retryConfig(port, targets, pool, retry) {
  return {
    server: { host: '127.0.0.1', port, workers: 1 },
    admin: { enabled: false },
    log: { access: { enabled: false } },
    upstreams: { up: { targets, pool: { maxConnections: pool }, ...(retry === null ? {} : { retry }) } },
    routes: [{ id: 'all', path: '/*', upstream: 'up' }],
  };
}

/** The three targets. `deps`: { cli, upstreamUrl, pool, notBuilt }. */
export function retryTargets({ cli, upstreamUrl, pool, notBuilt }) {
  return Object.entries(RETRIES).map(([name, { port, retry }]) => ({
    name,
    port,
    skip: notBuilt,
    command: (tmp) => {
      const file = join(tmp, `${name}.json`);
      writeFileSync(file, JSON.stringify(retryConfig(port, [upstreamUrl], pool, retry), null, 2));
      return [process.execPath, [cli, 'start', '--config', file]];
    },
    version: () => `node ${process.version}, retry ${JSON.stringify(retry)}`,
  }));
}
