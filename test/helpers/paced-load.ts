/**
 * A paced HTTP load for rate-limit tests: GET `path` on several gateways
 * at a fixed total rate (spread evenly over them), over keep-alive
 * connections (undici Pools), for a bounded time, counting answers by
 * status. Real sockets, loopback only.
 *
 * Pacing: every tick the requests due since the start (rate × elapsed) are
 * sent, so a late tick catches up instead of lowering the rate; at most
 * `maxInFlight` per gateway wait at once (further ones are counted as
 * `skipped`, never queued: the offered rate stays honest).
 */
import { Pool } from 'undici';

export interface LoadResult {
  sent: number;
  skipped: number;
  /** Answers by status, per gateway (index as given) and in total. */
  byStatus: Record<number, number>;
  perGateway: Record<number, number>[];
  /** Requests that failed without an answer (connection errors). */
  failures: number;
  /** performance.now() of the first and the last request sent. */
  firstSentAt: number;
  lastSentAt: number;
  /** Bodies of the first answer seen per status (for error checks). */
  samples: Record<number, { headers: Record<string, string | string[] | undefined>; body: string }>;
}

export interface LoadOptions {
  /** Requests per second over all gateways. */
  rate: number;
  durationMs: number;
  path: string;
  headers?: Record<string, string>;
  maxInFlight?: number;
  connections?: number;
}

export async function pacedLoad(urls: readonly string[], opts: LoadOptions): Promise<LoadResult> {
  const pools = urls.map((u) => new Pool(u, { connections: opts.connections ?? 16, pipelining: 1 }));
  const maxInFlight = opts.maxInFlight ?? 64;
  const inFlight = urls.map(() => 0);
  const res: LoadResult = {
    sent: 0, skipped: 0, byStatus: {}, perGateway: urls.map(() => ({})), failures: 0, firstSentAt: 0, lastSentAt: 0, samples: {},
  };
  const pending = new Set<Promise<void>>();
  const start = performance.now();
  let issued = 0;
  let next = 0;
  const one = (g: number) => {
    if (inFlight[g]! >= maxInFlight) {
      res.skipped++;
      return;
    }
    inFlight[g]!++;
    const at = performance.now();
    if (res.sent === 0) res.firstSentAt = at;
    res.lastSentAt = at;
    res.sent++;
    const p = pools[g]!.request({ path: opts.path, method: 'GET', headers: opts.headers ?? {} }).then(async (r) => {
      const body = await r.body.text();
      res.byStatus[r.statusCode] = (res.byStatus[r.statusCode] ?? 0) + 1;
      const pg = res.perGateway[g]!;
      pg[r.statusCode] = (pg[r.statusCode] ?? 0) + 1;
      if (res.samples[r.statusCode] === undefined) res.samples[r.statusCode] = { headers: r.headers, body };
    }, () => { res.failures++; }).finally(() => {
      inFlight[g]!--;
      pending.delete(p);
    });
    pending.add(p);
  };
  while (performance.now() - start < opts.durationMs) {
    const due = Math.floor(((performance.now() - start) / 1000) * opts.rate);
    while (issued < due) {
      one(next);
      next = (next + 1) % urls.length;
      issued++;
    }
    await new Promise((r) => setTimeout(r, 2));
  }
  await Promise.all(pending);
  await Promise.all(pools.map((p) => p.close()));
  return res;
}

/** How many answers were 2xx, in a count by status. */
export function admitted(by: Record<number, number>): number {
  let n = 0;
  for (const [code, count] of Object.entries(by)) if (Number(code) >= 200 && Number(code) < 300) n += count;
  return n;
}
