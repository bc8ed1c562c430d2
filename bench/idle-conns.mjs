#!/usr/bin/env node
// RSS per idle keep-alive connection (issue 13): for each target (default
// turnpike-node = uWS, turnpike-node-backend = server.backend node, nginx),
// open CONNS (10,000) client connections to it, each sending one GET / and
// then keeping its socket open, and read the target's RSS (VmRSS summed over
// its process tree, /proc/PID/status) before and after. KB per connection =
// (RSS with the connections open - RSS before) / connections open.
//
// Method, per target (started alone, pinned to CPU 0 like run.mjs; the
// upstream and the clients on CPU 1):
//   1. warm-up: WARM_CONNS connections opened the same way (same connect
//      concurrency, so the proxy's upstream pool reaches its working size),
//      then closed; SETTLE_S seconds;
//   2. RSS before;
//   3. CONNS connections over PROCS client processes (CONCURRENCY connects in
//      flight per process), each one GET / and the answer read; once all are
//      answered (or OPEN_TIMEOUT_S passed), SETTLE_S seconds, then RSS with
//      the connections open (the last of three reads 0.5 s apart);
//   4. the clients exit (the kernel closes their sockets); SETTLE_S seconds;
//      RSS after close (does the memory come back?).
// uWS closes an HTTP connection idle for 10 s (uWebSockets' fixed
// HTTP_IDLE_TIMEOUT_S), the node backend after TURNPIKE_NODE_IDLE_TIMEOUT_MS
// (10 s by default; this script sets 120 s for the targets it starts): so each
// connection sends one more GET every REFRESH_S (4 s; 0 = never), the same
// for every target, to stay open however long opening 10,000 takes on a busy
// VM. Connections still open at the measurement are counted by the clients.
//
// Knobs (env): CONNS=10000 PROCS=2 CONCURRENCY=200 (connects in flight per
//   client process) WARM_CONNS=1000 SETTLE_S=2 REFRESH_S=4 OPEN_TIMEOUT_S=90
//   TARGETS=turnpike-node,turnpike-node-backend,nginx NAME=idle-conns
//   TURNPIKE_DIST as run.mjs. Load only to 127.0.0.1; the script stops only
//   the processes it started (by PID, also on Ctrl-C).
//
// fd limit: the target needs CONNS + its upstream pool + slack, each client
// CONNS / PROCS + slack. If the soft RLIMIT_NOFILE is below that and the hard
// one allows it, the script re-runs itself under `ulimit -n <hard>` (children
// inherit it); if the hard limit is too low it says so and exits.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const SELF = fileURLToPath(import.meta.url);

// ---------------------------------------------------------------------------
// Client mode: `node idle-conns.mjs --client <port> <count> <concurrency> <refreshMs>`.
// Prints `P {"opened":..,"answered":..,"failed":..,"closed":..,"errors":..,"open":..}`
// every 500 ms on stdout; exits on SIGTERM (the kernel closes the sockets).
if (process.argv[2] === '--client') {
  const [port, count, concurrency, refreshMs] = process.argv.slice(3).map(Number);
  const req = Buffer.from(`GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`, 'latin1');
  const sockets = [];
  const st = { opened: 0, answered: 0, failed: 0, closed: 0, errors: 0, open: 0 };
  let started = 0;
  let inFlight = 0;
  const next = () => {
    while (inFlight < concurrency && started < count) {
      started++;
      inFlight++;
      let answered = false;
      let connected = false;
      const s = net.connect({ host: '127.0.0.1', port });
      s.setNoDelay(true);
      s.once('connect', () => {
        connected = true;
        st.opened++;
        st.open++;
        sockets.push(s);
        s.write(req);
      });
      s.on('data', () => {
        // The answer is a few hundred bytes ("ok"): its first chunk counts.
        if (answered) return;
        answered = true;
        st.answered++;
        inFlight--;
        next();
      });
      s.once('error', () => st.errors++);
      s.once('close', () => {
        if (connected) st.open--;
        st.closed++;
        if (!answered) {
          answered = true;
          st.failed++;
          inFlight--;
          next();
        }
      });
    }
  };
  next();
  if (refreshMs > 0) {
    // One more GET per connection every refreshMs, spread over 100 ms slices.
    let i = 0;
    setInterval(() => {
      const n = Math.ceil(sockets.length / (refreshMs / 100));
      for (let k = 0; k < n && sockets.length > 0; k++, i++) {
        const s = sockets[i % sockets.length];
        if (!s.destroyed) s.write(req);
      }
    }, 100);
  }
  setInterval(() => process.stdout.write(`P ${JSON.stringify(st)}\n`), 500);
  process.once('SIGTERM', () => process.exit(0));
} else {
  await main();
}

// ---------------------------------------------------------------------------
async function main() {
  const { selectTargets, startTarget, startUpstream, PROXY_CPU, LOAD_CPU, POOL } = await import('./lib/targets.mjs');
  const { rssKb, stopChild, stopAllOnExit, stopAll, which } = await import('./lib/proc.mjs');
  const { machineFacts, writeResultsJson, mdTable, fmt, relPath } = await import('./lib/report.mjs');

  const num = (name, def) => {
    const raw = process.env[name];
    if (raw === undefined || raw === '') return def;
    const n = Number(raw);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number >= 0, got ${raw}`);
    return n;
  };
  const CONNS = num('CONNS', 10000);
  const PROCS = Math.max(1, num('PROCS', 2));
  const CONCURRENCY = Math.max(1, num('CONCURRENCY', 200));
  const WARM_CONNS = num('WARM_CONNS', 1000);
  const SETTLE_S = num('SETTLE_S', 2);
  const REFRESH_S = num('REFRESH_S', 4);
  const OPEN_TIMEOUT_S = num('OPEN_TIMEOUT_S', 90);
  const NAME = (process.env.NAME || 'idle-conns').replace(/[^\w.-]/g, '_');
  const targets = selectTargets(process.env.TARGETS || 'turnpike-node,turnpike-node-backend,nginx');

  // fd limits: re-run under a raised soft limit if needed and allowed.
  const need = CONNS + POOL + 1000;
  const lim = /Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/.exec(readFileSync('/proc/self/limits', 'utf8'));
  const soft = lim && lim[1] !== 'unlimited' ? Number(lim[1]) : Infinity;
  const hard = lim && lim[2] !== 'unlimited' ? Number(lim[2]) : Infinity;
  if (soft < need) {
    if (hard < need || process.env.IDLE_CONNS_REEXEC) {
      console.log(`skip: the fd limit is too low for CONNS=${CONNS} (need ~${need} open files in the target, have soft ${soft}, hard ${hard}); lower CONNS or raise the hard limit (ulimit -Hn)`);
      process.exit(0);
    }
    const raised = Number.isFinite(hard) ? hard : need;
    console.log(`raising the soft fd limit ${soft} -> ${raised} (ulimit -n) and re-running`);
    const child = spawn('sh', ['-c', `ulimit -n ${raised} && exec "$@"`, 'sh', process.execPath, SELF], { stdio: 'inherit', env: { ...process.env, IDLE_CONNS_REEXEC: '1' } });
    for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => child.kill(sig));
    child.once('exit', (code, signal) => process.exit(code ?? (signal ? 130 : 1)));
    return;
  }

  // The node backend closes a connection idle for 10 s by default: keep them
  // for the whole measurement (the refresh GETs keep uWS's fixed 10 s at bay).
  process.env.TURNPIKE_NODE_IDLE_TIMEOUT_MS ||= '120000';

  stopAllOnExit();
  const clients = new Set();
  const killClients = () => {
    for (const c of clients) {
      try {
        process.kill(c.pid, 'SIGKILL');
      } catch {}
    }
  };
  process.once('exit', killClients);

  /** Start PROCS client processes for `total` connections to port; resolve with a handle. */
  function startClients(port, total) {
    const per = Math.ceil(total / PROCS);
    const handles = [];
    for (let i = 0, left = total; i < PROCS && left > 0; i++, left -= per) {
      const n = Math.min(per, left);
      const args = ['-c', String(LOAD_CPU), process.execPath, SELF, '--client', String(port), String(n), String(CONCURRENCY), String(REFRESH_S * 1000)];
      const child = spawn(which('taskset') ? 'taskset' : args[2], which('taskset') ? args : args.slice(3), { stdio: ['ignore', 'pipe', 'inherit'] });
      clients.add(child);
      const h = { child, st: { opened: 0, answered: 0, failed: 0, closed: 0, errors: 0, open: 0 }, n };
      let buf = '';
      child.stdout.on('data', (d) => {
        buf += d;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.startsWith('P ')) h.st = JSON.parse(line.slice(2));
        }
      });
      h.exited = new Promise((resolve) => child.once('exit', () => {
        clients.delete(child);
        resolve();
      }));
      handles.push(h);
    }
    const sum = () => handles.reduce((a, h) => {
      for (const k of Object.keys(a)) a[k] += h.st[k];
      return a;
    }, { opened: 0, answered: 0, failed: 0, closed: 0, errors: 0, open: 0 });
    const stop = async () => {
      for (const h of handles) {
        try {
          process.kill(h.child.pid, 'SIGTERM');
        } catch {}
      }
      await Promise.race([Promise.all(handles.map((h) => h.exited)), sleep(5000)]);
      for (const h of handles) {
        try {
          process.kill(h.child.pid, 'SIGKILL');
        } catch {}
      }
    };
    return { sum, stop };
  }

  /** Wait until `total` connections were answered (or failed), printing progress; true if all answered. */
  async function waitAnswered(c, total, label, timeoutS) {
    const deadline = Date.now() + timeoutS * 1000;
    let lastPrint = 0;
    for (;;) {
      await sleep(250);
      const s = c.sum();
      if (Date.now() - lastPrint > 2000) {
        lastPrint = Date.now();
        console.log(`  ${label}: ${s.opened}/${total} connected, ${s.answered} answered, ${s.open} open, ${s.failed} closed unanswered, ${s.errors} errors`);
      }
      if (s.answered >= total) return true;
      if (s.answered + s.failed >= total) return false; // the rest closed before an answer
      if (Date.now() > deadline) {
        console.log(`  ${label}: timeout after ${timeoutS} s`);
        return false;
      }
    }
  }

  const rssReads = async (pid) => {
    const v = [];
    for (let i = 0; i < 3; i++) {
      if (i) await sleep(500);
      v.push(rssKb(pid));
    }
    return v;
  };

  const facts = machineFacts();
  const tmp = mkdtempSync(join(tmpdir(), 'turnpike-idle-'));
  console.log(`idle keep-alive connections: CONNS=${CONNS} over ${PROCS} client processes, ${CONCURRENCY} connects in flight each, refresh GET every ${REFRESH_S || '-'} s; targets ${targets.map((t) => t.name).join(', ')}`);
  console.log(`temp dir: ${tmp}; node ${process.version}; load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  const upstream = await startUpstream(tmp, join(tmp, 'upstream.log'));
  console.log(`upstream: ${upstream.kind} on 127.0.0.1:${upstream.port}, pid ${upstream.child.pid}`);

  const results = [];
  for (const target of targets) {
    const reason = target.skip();
    if (reason) {
      console.log(`skip ${target.name}: ${reason}`);
      results.push({ target: target.name, skipped: reason });
      continue;
    }
    let t;
    try {
      t = await startTarget(target, tmp, upstream);
    } catch (err) {
      console.log(`FAILED to start ${target.name}: ${err.message}`);
      results.push({ target: target.name, skipped: `failed to start: ${err.message.split('\n')[0]}` });
      continue;
    }
    console.log(`${target.name}: pid ${t.pid} on 127.0.0.1:${target.port} (CPU ${PROXY_CPU}), RSS ${(rssKb(t.pid) / 1024).toFixed(1)} MB at start`);
    const r = { target: target.name, port: target.port, version: target.version?.() ?? null };
    try {
      if (WARM_CONNS > 0) {
        const w = startClients(target.port, WARM_CONNS);
        await waitAnswered(w, WARM_CONNS, 'warm-up', 30);
        await w.stop();
      }
      await sleep(SETTLE_S * 1000);
      r.rssBeforeKb = await rssReads(t.pid);
      const t0 = Date.now();
      const c = startClients(target.port, CONNS);
      r.allAnswered = await waitAnswered(c, CONNS, 'open', OPEN_TIMEOUT_S);
      r.openS = Math.round((Date.now() - t0) / 100) / 10;
      await sleep(SETTLE_S * 1000);
      r.rssOpenKb = await rssReads(t.pid);
      r.clients = c.sum();
      await c.stop();
      await sleep(SETTLE_S * 1000);
      r.rssAfterCloseKb = await rssReads(t.pid);
      const before = r.rssBeforeKb.at(-1);
      const open = r.rssOpenKb.at(-1);
      r.connsOpen = r.clients.open;
      r.kbPerConn = r.connsOpen > 0 ? Math.round(((open - before) / r.connsOpen) * 100) / 100 : null;
      r.deltaMb = Math.round(((open - before) / 1024) * 10) / 10;
      r.keptAfterCloseMb = Math.round(((r.rssAfterCloseKb.at(-1) - before) / 1024) * 10) / 10;
      console.log(`${target.name}: ${r.connsOpen} open (${r.clients.errors} errors, ${r.openS} s to open); RSS ${(before / 1024).toFixed(1)} -> ${(open / 1024).toFixed(1)} MB (+${r.deltaMb} MB) = ${fmt(r.kbPerConn, 2)} KB per connection; ${(r.rssAfterCloseKb.at(-1) / 1024).toFixed(1)} MB after the clients closed`);
    } catch (err) {
      console.log(`${target.name}: FAILED: ${err.message}`);
      r.error = err.message;
    }
    results.push(r);
    await stopChild(t.child);
    await target.stop?.();
  }
  await stopChild(upstream.child);
  await stopAll();

  const file = writeResultsJson(NAME, {
    kind: 'idle-conns',
    name: NAME,
    finishedAt: new Date().toISOString(),
    machine: facts,
    knobs: { CONNS, PROCS, CONCURRENCY, WARM_CONNS, SETTLE_S, REFRESH_S, OPEN_TIMEOUT_S, TURNPIKE_NODE_IDLE_TIMEOUT_MS: process.env.TURNPIKE_NODE_IDLE_TIMEOUT_MS },
    method: 'RSS = VmRSS summed over the target process tree; KB/conn = (RSS with the connections open - RSS before, after a warm-up) / connections the clients still had open',
    results,
  });
  rmSync(tmp, { recursive: true, force: true });
  const rows = results.filter((r) => !r.skipped && !r.error).map((r) => [r.target, r.connsOpen, fmt(r.rssBeforeKb.at(-1) / 1024), fmt(r.rssOpenKb.at(-1) / 1024), fmt(r.deltaMb), fmt(r.kbPerConn, 2), fmt(r.rssAfterCloseKb.at(-1) / 1024)]);
  console.log(`\n${mdTable(['target', 'connections open', 'RSS before MB', 'RSS open MB', 'delta MB', 'KB/conn', 'RSS after close MB'], rows)}`);
  for (const r of results.filter((x) => x.skipped || x.error)) console.log(`not measured: ${r.target} (${r.skipped ?? r.error})`);
  console.log(`wrote ${relPath(file)}`);
}
