/**
 * Runs the real table and algorithm code in real worker_threads, on one
 * SharedArrayBuffer. Worker threads cannot load .ts files (ENVIRONMENT.md),
 * and a unit test must not depend on a stale build: the two source modules
 * are transpiled (TypeScript's transpileModule, types dropped, nothing else
 * changed) into a temporary directory, beside a small worker script.
 *
 * The worker script runs one job on its SharedArrayBuffer and posts its
 * result; jobs (`hammer`, `keys`) are described where they are used
 * (layout.test.ts). Every worker waits on a barrier cell so they all start
 * together.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import ts from 'typescript';
import { ROOT } from '../../../helpers/gateway.js';

let dir: string | null = null;

function transpile(src: string): string {
  return ts.transpileModule(readFileSync(join(ROOT, src), 'utf8'), {
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: false },
  }).outputText;
}

const WORKER = `
import { parentPort, workerData } from 'node:worker_threads';
import { RateLimitTable, hashKey } from './rate-limit-layout.mjs';
import { Decision, tokenBucket, quota } from './algorithms.mjs';

const { sab, barrier, job } = workerData;
const table = new RateLimitTable(sab);
for (const t of job.protect ?? []) table.protect(t);
const gate = new Int32Array(barrier);
Atomics.add(gate, 1, 1);
Atomics.wait(gate, 0, 0);
const out = { isNew: false, overflowed: false };
const d = new Decision();
const h = new Int32Array(2);
const p = { algorithm: job.algorithm === 'quota' ? 4 : 0, rate: job.rate, perMs: job.perMs, burst: job.burst };

function decide(key, now) {
  hashKey(job.tag, key, h);
  const e = table.find(job.tag, h[0], h[1], now, out, job.evict === true);
  const fb = table.base(e) >> 1;
  if (job.algorithm === 'quota') quota(table.f64, fb, out.isNew, now, job.rate, job.periodStart, job.periodEnd, d);
  else tokenBucket(table.f64, fb, out.isNew, now, p, 1, d);
  table.unlock(e);
  return d.allowed;
}

let admitted = 0;
if (job.kind === 'hammer') {
  for (let i = 0; i < job.requests; i++) if (decide(job.key, job.now)) admitted++;
  parentPort.postMessage({ admitted, steals: table.steals, overflows: table.overflows, evicted: table.evicted });
} else {
  // keys: every key of the list, starting at this worker's offset, perKey requests each.
  const perKey = {};
  const n = job.keys.length;
  for (let r = 0; r < n; r++) {
    const key = job.keys[(r + job.offset) % n];
    for (let k = 0; k < job.perKey; k++) if (decide(key, job.now)) perKey[key] = (perKey[key] ?? 0) + 1;
  }
  parentPort.postMessage({ perKey, steals: table.steals, overflows: table.overflows, evicted: table.evicted });
}
`;

/** The directory holding the transpiled modules and the worker script (made once per test file). */
export function threadModules(): string {
  if (dir !== null) return dir;
  dir = mkdtempSync(join(tmpdir(), 'turnpike-rl-threads-'));
  writeFileSync(join(dir, 'rate-limit-layout.mjs'), transpile('common/rate-limit-layout.ts'));
  writeFileSync(
    join(dir, 'algorithms.mjs'),
    transpile('workers/policies/rate-limit/algorithms.ts').replace("'../../../common/rate-limit-layout.js'", "'./rate-limit-layout.mjs'"),
  );
  writeFileSync(join(dir, 'worker.mjs'), WORKER);
  return dir;
}

/** Removes the directory (call from afterAll). */
export function removeThreadModules(): void {
  if (dir !== null) rmSync(dir, { recursive: true, force: true });
  dir = null;
}

export interface Job {
  kind: 'hammer' | 'keys';
  algorithm: 'quota' | 'token_bucket';
  tag: number;
  rate: number;
  perMs: number;
  burst: number;
  periodStart?: number;
  periodEnd?: number;
  now: number;
  key?: string;
  requests?: number;
  keys?: string[];
  perKey?: number;
  offset?: number;
  /** find() may evict a live bucket when a key's window is full. */
  evict?: boolean;
  /** Tags this thread's view protects from eviction. */
  protect?: number[];
}

/** Starts one worker per job on `sab`, releases them together, and returns their results. */
export async function runThreads<R>(sab: SharedArrayBuffer, jobs: Job[]): Promise<R[]> {
  const file = join(threadModules(), 'worker.mjs');
  const barrier = new SharedArrayBuffer(8);
  const gate = new Int32Array(barrier);
  const workers = jobs.map((job) => new Worker(file, { workerData: { sab, barrier, job } }));
  const results = workers.map((w) => new Promise<R>((resolve, reject) => {
    w.once('message', (m: R) => resolve(m));
    w.once('error', reject);
    w.once('exit', (code) => { if (code !== 0) reject(new Error(`worker exited with ${code}`)); });
  }));
  // Every worker is parked on the gate: release them at once.
  while (Atomics.load(gate, 1) < jobs.length) await new Promise((r) => setTimeout(r, 2));
  Atomics.store(gate, 0, 1);
  Atomics.notify(gate, 0);
  try {
    return await Promise.all(results);
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}
