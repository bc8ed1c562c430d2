// Route tables and request sets for the router micro-bench.
//
// github: /work/shared/data/github-api-routes.json (206 routes) and its 34
//   requests in classes static, param1, multi, wildcard, deep, miss; `mix`
//   is all of them (misses included).
// synthetic-10k: `GET /v{1..3}/tenant{i}/resource{j}/:id`, i, j in 0..99
//   (10,000 routes, the version cycling 1..3), with 64 hits picked by a fixed
//   LCG (class `param`), misses (class `miss`) and `mix`.
//
// Every route's data is its own pattern string, which is what each request's
// `expect` names (null for a miss).
import { readFileSync, existsSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const BENCH_DIR = join(dirname(fileURLToPath(import.meta.url)), '..');
// shared/ sits beside the repo (a CI clone has it too); DATA_DIR overrides.
const DATA_DIR = process.env.DATA_DIR || [join(BENCH_DIR, '../../shared/data'), '/work/shared/data'].find((d) => existsSync(join(d, 'github-api-routes.json')));

export const CLASS_ORDER = ['static', 'param1', 'param', 'multi', 'wildcard', 'deep', 'miss', 'mix'];

function github() {
  if (!DATA_DIR) throw new Error('github-api-routes.json not found: set DATA_DIR to the shared/data folder');
  const routes = JSON.parse(readFileSync(join(DATA_DIR, 'github-api-routes.json'), 'utf8')).map((r) => ({ method: r.method, path: r.path, data: r.path }));
  const requests = JSON.parse(readFileSync(join(DATA_DIR, 'github-api-requests.json'), 'utf8')).map((q) => ({ class: q.class, method: q.method, path: q.path, expect: q.expect }));
  return { name: 'github', routes, requests, source: DATA_DIR };
}

function synthetic10k() {
  const routes = [];
  const version = (i, j) => ((i * 100 + j) % 3) + 1;
  for (let i = 0; i < 100; i++) {
    for (let j = 0; j < 100; j++) {
      const path = `/v${version(i, j)}/tenant${i}/resource${j}/:id`;
      routes.push({ method: 'GET', path, data: path });
    }
  }
  const requests = [];
  let seed = 12345;
  const rnd = (n) => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
  for (let k = 0; k < 64; k++) {
    const i = rnd(100);
    const j = rnd(100);
    const v = version(i, j);
    requests.push({ class: 'param', method: 'GET', path: `/v${v}/tenant${i}/resource${j}/${1000 + rnd(9000)}`, expect: `/v${v}/tenant${i}/resource${j}/:id` });
  }
  const misses = [
    '/v4/tenant1/resource1/5', // unknown version
    `/v${(version(7, 7) % 3) + 1}/tenant7/resource7/5`, // wrong version for that pair
    '/v1/tenant100/resource1/5', // unknown tenant
    `/v${version(3, 4)}/tenant3/resource4`, // no id
    `/v${version(3, 4)}/tenant3/resource4/5/extra`, // one segment too many
    '/nope',
    '/v1/tenant1',
    `/v${version(50, 99)}/tenant50/resource100/1`, // unknown resource
  ];
  for (const path of misses) requests.push({ class: 'miss', method: 'GET', path, expect: null });
  requests.push({ class: 'miss', method: 'POST', path: `/v${version(1, 1)}/tenant1/resource1/5`, expect: null });
  return { name: 'synthetic-10k', routes, requests, source: 'generated' };
}

export const DATASETS = { github, 'synthetic-10k': synthetic10k };

export function loadDataset(name) {
  const f = DATASETS[name];
  if (!f) throw new Error(`unknown dataset ${name}; known: ${Object.keys(DATASETS).join(', ')}`);
  const ds = f();
  // Classes present, in a fixed order, plus `mix` (every request).
  const classes = CLASS_ORDER.filter((c) => c !== 'mix' && ds.requests.some((r) => r.class === c));
  for (const r of ds.requests) if (!classes.includes(r.class)) classes.push(r.class);
  classes.push('mix');
  return { ...ds, classes };
}
