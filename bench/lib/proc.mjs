// Process plumbing shared by run.mjs, latency.mjs and the router bench:
// spawning pinned processes, waiting for a port to answer, reading CPU time
// and RSS of a process tree from /proc, and stopping only what we started.
//
// CPU accounting: utime+stime (fields 14 and 15 of /proc/PID/stat) are in
// clock ticks (getconf CLK_TCK, 100 on Linux). They cover every thread of a
// process, so a Node process with worker threads is one PID; nginx is a
// master plus its worker, so we sum over the whole tree rooted at the PID we
// spawned.
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, openSync, closeSync, existsSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

let clkTck = 0;
export function clockTicks() {
  if (clkTck) return clkTck;
  try {
    clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    clkTck = 100;
  }
  return clkTck;
}

export function which(cmd) {
  for (const dir of (process.env.PATH || '').split(':').concat(['/usr/sbin', '/sbin'])) {
    if (dir && existsSync(`${dir}/${cmd}`)) return `${dir}/${cmd}`;
  }
  return null;
}

const hasTaskset = which('taskset') !== null;

/** Parse /proc/PID/stat; the comm field may hold spaces and parens. */
function readStat(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // rest[0] is field 3 (state): field n is rest[n - 3].
    return { ppid: Number(rest[1]), utime: Number(rest[11]), stime: Number(rest[12]) };
  } catch {
    return null;
  }
}

/** The PID and all of its descendants (nginx master + worker, ...). */
export function processTree(rootPid) {
  const children = new Map();
  for (const name of readdirSync('/proc')) {
    const c = name.charCodeAt(0);
    if (c < 48 || c > 57) continue;
    const st = readStat(name);
    if (st === null) continue;
    let list = children.get(st.ppid);
    if (list === undefined) children.set(st.ppid, (list = []));
    list.push(Number(name));
  }
  const out = [rootPid];
  for (let i = 0; i < out.length; i++) {
    const kids = children.get(out[i]);
    if (kids !== undefined) out.push(...kids);
  }
  return out;
}

/** Per-PID CPU ticks for a tree, to diff later with cpuDeltaTicks. */
export function cpuSnapshot(rootPid) {
  const snap = new Map();
  for (const pid of processTree(rootPid)) {
    const st = readStat(pid);
    if (st !== null) snap.set(pid, st.utime + st.stime);
  }
  return snap;
}

export function cpuDeltaTicks(before, after) {
  let ticks = 0;
  for (const [pid, t] of after) ticks += t - (before.get(pid) ?? 0);
  return ticks;
}

/**
 * Per-PID user and kernel CPU ticks for a tree (utime, stime: fields 14 and
 * 15 of /proc/PID/stat), to diff later with cpuDeltaSplit. Like cpuSnapshot,
 * but the two kept apart: Map pid -> { utime, stime }.
 */
export function cpuSnapshotSplit(rootPid) {
  const snap = new Map();
  for (const pid of processTree(rootPid)) {
    const st = readStat(pid);
    if (st !== null) snap.set(pid, { utime: st.utime, stime: st.stime });
  }
  return snap;
}

/**
 * { utime, stime, ticks } spent between two cpuSnapshotSplit snapshots, in
 * clock ticks (ticksToMicros converts); a PID only in `after` counts from 0,
 * a PID gone by `after` counts nothing (its ticks are lost, as in cpuDeltaTicks).
 */
export function cpuDeltaSplit(before, after) {
  let utime = 0;
  let stime = 0;
  for (const [pid, t] of after) {
    const b = before.get(pid);
    utime += t.utime - (b?.utime ?? 0);
    stime += t.stime - (b?.stime ?? 0);
  }
  return { utime, stime, ticks: utime + stime };
}

/**
 * Nanoseconds on CPU (user + kernel) summed over every thread of every
 * process of the tree: field 1 of /proc/PID/task/TID/schedstat (the
 * scheduler's sum_exec_runtime). Finer than utime+stime (whole clock ticks,
 * 10 ms at CLK_TCK 100) for short windows; a thread that exited between two
 * readings loses its time (utime+stime keep it in the process). A thread
 * running right now may show its time up to one scheduler tick late. Returns
 * null when no schedstat file could be read (kernel without schedstats).
 */
export function cpuRuntimeNs(rootPid) {
  let ns = 0;
  let any = false;
  for (const pid of processTree(rootPid)) {
    let tids;
    try {
      tids = readdirSync(`/proc/${pid}/task`);
    } catch {
      continue;
    }
    for (const tid of tids) {
      try {
        ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
        any = true;
      } catch {}
    }
  }
  return any ? ns : null;
}

/** User and kernel ticks summed over a tree (to split CPU into JS/native vs syscalls). */
export function cpuSplit(rootPid) {
  let utime = 0;
  let stime = 0;
  for (const pid of processTree(rootPid)) {
    const st = readStat(pid);
    if (st !== null) { utime += st.utime; stime += st.stime; }
  }
  return { utime, stime };
}

export function ticksToMicros(ticks) {
  return (ticks * 1e6) / clockTicks();
}

/** Sum of VmRSS (kB) over the process tree. */
export function rssKb(rootPid) {
  let kb = 0;
  for (const pid of processTree(rootPid)) {
    try {
      const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m) kb += Number(m[1]);
    } catch {}
  }
  return kb;
}

/**
 * Spawn `cmd args` pinned to `cpu` (taskset -c). taskset execs the command,
 * so the returned child's PID is the program's own PID. Output goes to
 * logFile (appended) so a failing peer can be diagnosed.
 */
export function spawnPinned(cpu, cmd, args, { logFile, env, cwd } = {}) {
  const fd = logFile ? openSync(logFile, 'a') : 'ignore';
  const argv = hasTaskset && cpu !== null && cpu !== undefined ? ['taskset', ['-c', String(cpu), cmd, ...args]] : [cmd, args];
  const child = spawn(argv[0], argv[1], {
    stdio: ['ignore', fd, fd],
    env: env ? { ...process.env, ...env } : process.env,
    cwd,
  });
  if (typeof fd === 'number') closeSync(fd);
  child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  started.add(child);
  child.once('exit', () => started.delete(child));
  return child;
}

const started = new Set();

/** SIGTERM one child we started, SIGKILL after graceMs. */
export async function stopChild(child, graceMs = 5000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(child.pid, 'SIGTERM');
  } catch {
    return;
  }
  const res = await Promise.race([child.exited, sleep(graceMs).then(() => null)]);
  if (res === null) {
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {}
    await child.exited;
  }
}

/** Stop every child this process started (by PID), e.g. on SIGINT. */
export async function stopAll() {
  await Promise.all([...started].map((c) => stopChild(c)));
}

let hooked = false;
export function stopAllOnExit() {
  if (hooked) return;
  hooked = true;
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.once(sig, async () => {
      process.stderr.write(`\n${sig}: stopping started processes\n`);
      await stopAll();
      process.exit(130);
    });
  }
  process.once('exit', () => {
    for (const c of started) {
      try {
        process.kill(c.pid, 'SIGKILL');
      } catch {}
    }
  });
}

export function portInUse(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const s = net.connect({ port, host });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

function getStatus(port, path, tls = false) {
  return new Promise((resolve) => {
    // tls: over https, the certificate not checked (a bench target's own).
    const opts = { host: '127.0.0.1', port, path, agent: false, headers: { connection: 'close' }, timeout: 1000 };
    const req = (tls ? https.get({ ...opts, rejectUnauthorized: false }, onRes) : http.get(opts, onRes));
    function onRes(res) {
      res.resume();
      res.once('end', () => resolve(res.statusCode));
      res.once('error', () => resolve(0));
    }
    req.once('timeout', () => req.destroy());
    req.once('error', () => resolve(0));
  });
}

/**
 * Wait until GET path on port answers 200 (through a proxy that proves the
 * whole path to the upstream works), or the child dies, or timeoutMs passes.
 * tls: the port serves https.
 */
export async function waitReady(port, { path = '/', child, timeoutMs = 15000, tls = false } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last = 0;
  while (Date.now() < deadline) {
    if (child && (child.exitCode !== null || child.signalCode !== null)) {
      throw new Error(`exited before it was ready (code ${child.exitCode}, signal ${child.signalCode})`);
    }
    last = await getStatus(port, path, tls);
    if (last === 200) return;
    await sleep(100);
  }
  throw new Error(`not ready on port ${port} after ${timeoutMs} ms (last status ${last || 'no answer'})`);
}

/** stdout + stderr of a short command (nginx -v prints to stderr), or null. */
export function cmdOutput(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 10000 });
  if (r.error) return null;
  return `${r.stdout || ''}${r.stderr || ''}`.trim() || null;
}

function cpuTotals() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3] + (f[4] || 0); // idle + iowait
  return { idle, total: f.reduce((a, b) => a + b, 0) };
}

/**
 * Share of the machine's CPU busy over `ms` (0-100), before we start any
 * load: other sessions' builds or tests on this shared VM make every number
 * noisy, and the results file should say so.
 */
export async function machineBusyPct(ms = 1000) {
  try {
    const a = cpuTotals();
    await sleep(ms);
    const b = cpuTotals();
    const total = b.total - a.total;
    return total > 0 ? Math.round((100 * (total - (b.idle - a.idle))) / total) : null;
  } catch {
    return null;
  }
}

/** Busy and total clock ticks of one CPU (/proc/stat `cpuN` line). */
export function cpuLineTicks(cpu) {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n').find((l) => l.startsWith(`cpu${cpu} `));
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    return { busy: total - f[3] - (f[4] || 0), total };
  } catch {
    return null;
  }
}
