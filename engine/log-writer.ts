/**
 * The one writer of both logs, in the main thread: the access log (one ring
 * per worker slot) and the gateway log (one ring per thread: main, admin,
 * each worker). Threads put whole lines into their shared-memory rings
 * (common/access-ring.ts); this writes the rings out straight from shared
 * memory and releases the bytes once written. No copy, allocation or
 * message per line or batch.
 *
 * Rules, whatever the destination is (a file, a pipe, a FIFO, a socket, a
 * terminal, /dev/null):
 *
 * - Never block the main thread, and never issue a write that can block
 *   forever: pipes, FIFOs and terminals are written through a descriptor of
 *   our own opened with O_NONBLOCK (stdio: /proc/self/fd/N, a new open file
 *   description, so the inherited one keeps its flags); a full pipe answers
 *   EAGAIN and the write is tried again shortly (1 ms doubling to 50 ms).
 *   Sockets (journald) go through Node's own stdio stream (libuv writes them
 *   when they are writable). Regular files are written on the libuv thread
 *   pool, one write at a time. A FIFO without reader is never waited for
 *   (ENXIO): it is tried again every second.
 * - Whole lines only: a ring holds whole lines, a span of it is written to
 *   the end before anything else goes to that destination (a pipe may take
 *   part of a write), and bytes are released only once written. Every
 *   destination that is one file (stdout and stderr on one pipe, an access
 *   log path that is stderr) is one output, so the gateway log and access
 *   lines never splice: they alternate by whole spans.
 * - A destination that fails (ENOSPC, EIO, EPIPE...) keeps the span and is
 *   tried again every second: nothing is lost while the rings have room, and
 *   a line cut by the failure is completed first when writing works again.
 *   Only a destination that is replaced (SIGUSR1 reopen, a reload, a FIFO
 *   whose reader left) loses the rest of a line cut in the middle (counted),
 *   so the new one starts on a whole line.
 * - Lines are dropped only where a ring is full (the destination is slower
 *   than the traffic, or failing), counted per log: the control block's
 *   C_ACCESS_LOG_DROPPED and C_LOG_DROPPED (turnpike_access_log_dropped_total,
 *   turnpike_gateway_log_dropped_total), and said in a line once the destination
 *   takes lines again.
 * - At exit, close() writes out what the rings hold for at most DRAIN_MS,
 *   then says what could not be written.
 */
import { type Stats, closeSync, constants, fstatSync, openSync, write as fsWrite, writeSync } from 'node:fs';
import type { Socket } from 'node:net';
import { resolve as resolvePath } from 'node:path';
import { type AccessRing, RingReader, countLines } from '../common/access-ring.js';
import { claimMainLogRing, log } from '../common/log.js';
import { C_ACCESS_LOG_DROPPED, C_LOG_DROPPED } from '../common/protocol.js';

/** How often the rings are looked at while lines come (ms). */
export const POLL_MS = 25;
/**
 * A poll that finds nothing to write doubles the wait before the next one
 * up to this (25, 50, 100 ms): an idle gateway's main thread polls 10
 * times a second instead of 40. The first poll that finds lines (or any
 * pump that writes some) brings it back to POLL_MS. So the first line after
 * an idle spell is written at most POLL_IDLE_MAX_MS after it was logged
 * (25 ms once lines keep coming), and a burst after an idle spell must fit
 * its ring for that long: an access log ring (4 MiB, ~12,000 lines) holds
 * 100 ms at ~120,000 requests/s per worker, several times what a worker
 * serves. 200 ms would save another 5 wake-ups a second (~0.5 ms of CPU)
 * for twice the delay.
 */
export const POLL_IDLE_MAX_MS = 100;
/** At exit, how long the writer may take to write out what the rings hold. */
export const DRAIN_MS = 2000;
/** EAGAIN (a full pipe): tried again after this, doubling up to RETRY_MAX_MS. */
const RETRY_MIN_MS = 1;
const RETRY_MAX_MS = 50;
/** A failed write, an open that failed (a FIFO without reader): tried again this often. */
const FAIL_RETRY_MS = 1000;
/** Spans written in one go per destination before other work gets a turn. */
const SPANS_PER_TURN = 64;
/** At most one "lines were dropped" line per log this often. */
const REPORT_EVERY_MS = 1000;

type LogKind = 'access' | 'log';

interface Source {
  reader: RingReader;
  kind: LogKind;
  /** An output holds a span of this ring (never two at once). */
  held: boolean;
}

interface Span {
  source: Source;
  start: number;
  pos: number;
  end: number;
}

/**
 * How an output writes: `file` (regular file, async on the thread pool),
 * `fd` (non-blocking descriptor, writeSync, EAGAIN retried), `stream`
 * (a socket, through Node's stdio stream), `none` (closed stdio: nothing
 * can be written, lines wait and are dropped).
 */
type Mode = 'file' | 'fd' | 'stream' | 'none';

const O_NONBLOCK = constants.O_NONBLOCK ?? 0;
const O_NOCTTY = constants.O_NOCTTY ?? 0;

class Output {
  fd = -1;
  mode: Mode = 'none';
  /** dev:ino of what it writes to: two outputs on one file would splice. */
  key = '';
  socket: Socket | null = null;
  /** A write is under way (file, stream). */
  inFlight = false;
  cur: Span | null = null;
  /** No attempt before this (performance.now()). */
  waitUntil = 0;
  backoff = 0;
  timer: NodeJS.Timeout | null = null;
  /** The error code while writes fail; null when they work. */
  failing: string | null = null;
  /** The error code while (re)opening the path fails; null when it worked. */
  openError: string | null = null;
  reopenWanted = false;
  /** A reopen that failed is tried again from this time on (performance.now()). */
  reopenAt = 0;
  /** No longer anyone's destination: closed once its write under way is done. */
  retired = false;
  rr = 0;

  constructor(
    /** For messages: `stdout`, `stderr` or the path. */
    readonly name: string,
    /** A path to (re)open, or null for stdio. */
    readonly path: string | null,
  ) {}
}

function keyOf(st: Stats): string {
  return `${st.dev}:${st.ino}`;
}

function errCode(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? (err as Error).message;
}

/** What to do about an open that failed, for the log line. */
function openAdvice(code: string): string {
  switch (code) {
    case 'ENXIO': return 'it is a FIFO with no reader yet: start its reader';
    case 'ENOENT': return 'its directory does not exist: create it';
    case 'EACCES':
    case 'EPERM': return "the gateway's user may not write it: fix its permissions or choose another path";
    case 'EISDIR': return 'it is a directory: name a file';
    default: return 'check the path';
  }
}

export class LogWriter {
  private readonly sources: Source[] = [];
  private readonly stderr: Output;
  private stdout: Output | null = null;
  /** The access log's output (possibly `stderr` itself), or null when the access log is off. */
  private access: Output | null = null;
  private accessWhere: string | null = null;
  /** Outputs replaced, still finishing a write. */
  private readonly retiring = new Set<Output>();
  private control: Int32Array | null = null;
  /** The next poll (a setTimeout re-armed after each: its wait backs off while the rings stay empty). */
  private timer: NodeJS.Timeout | null = null;
  /** The wait before the next poll: POLL_MS, doubling up to POLL_IDLE_MAX_MS while polls find nothing. */
  private pollMs = POLL_MS;
  /** performance.now() when the next poll runs. */
  private pollAt = 0;
  /** Spans taken from the rings (written, dropped or let go) so far: a poll that leaves it unchanged found nothing. */
  private moved = 0;
  /** `moved` as the last pump left it. */
  private movedSeen = 0;
  private pumping = false;
  private closed = false;
  /** Lines the writer itself had to give up (a line cut when its destination was replaced), per log. */
  private readonly lost = { access: 0, log: 0 };
  private readonly reported = { access: 0, log: 0 };
  private readonly lastReport = { access: 0, log: 0 };

  constructor() {
    this.stderr = this.openStdio(2);
    this.addRing(claimMainLogRing(), 'log');
    this.arm();
  }

  /** (Re)schedules the next poll in pollMs. */
  private arm(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.pollAt = performance.now() + this.pollMs;
    this.timer = setTimeout(this.poll, this.pollMs);
    this.timer.unref();
  }

  /** A poll: writes what the rings hold; one that finds nothing waits twice as long for the next (up to POLL_IDLE_MAX_MS). */
  private readonly poll = (): void => {
    this.timer = null;
    if (this.closed) return;
    const before = this.moved;
    // When the next poll runs is not known until this one is done: a wake() meanwhile sets its own timer.
    this.pollAt = Infinity;
    this.pump();
    if (this.closed) return;
    if (this.moved === before) this.pollMs = Math.min(this.pollMs * 2, POLL_IDLE_MAX_MS);
    this.arm();
  };

  /** The control block whose drop counters this keeps up to date. */
  setControl(control: Int32Array): void {
    this.control = control;
  }

  /** A ring to write out: an access log ring (to the access destination) or a gateway log ring (to stderr). */
  addRing(ring: AccessRing, kind: LogKind): void {
    this.sources.push({ reader: new RingReader(ring), kind, held: false });
  }

  /** The running config's access log destination (`stdout`, `stderr`, a file path), or null when the access log is off. */
  setDestination(where: string | null): void {
    if (where === this.accessWhere) return;
    this.accessWhere = where;
    const old = this.access;
    let next: Output | null;
    if (where === null) next = null;
    else if (where === 'stderr') next = this.stderr;
    else if (where === 'stdout') next = this.stdout ??= this.openStdio(1);
    else next = this.openPath(resolvePath(where));
    if (next !== null && next !== this.stderr && next.key !== '' && next.key === this.stderr.key) {
      // The same file as stderr (2>&1, /dev/stderr): one output, or lines would splice.
      this.retire(next);
      next = this.stderr;
    }
    this.access = next;
    // stderr and stdout finish a span they hold (they stay open); a file is let go.
    if (old !== null && old !== next && old !== this.stderr && old !== this.stdout) this.retire(old);
    this.pump();
  }

  /** SIGUSR1: a file destination is opened again (logrotate's postrotate). Never blocks: a FIFO without reader is retried. */
  reopen(): void {
    const out = this.access;
    if (out !== null && out.path !== null) {
      out.reopenWanted = true;
      this.pump();
    }
  }

  /**
   * Writes out what the rings hold (at most `ms`), then stops and says
   * what could not be written: the last step before the process exits.
   * Resolves with the lines left unwritten per log.
   */
  async close(ms = DRAIN_MS): Promise<{ access: number; log: number }> {
    if (this.closed) return { access: 0, log: 0 };
    const until = performance.now() + ms;
    while (!this.idle() && performance.now() < until) {
      this.pump();
      await new Promise((r) => setTimeout(r, 5));
    }
    const left = this.unwritten();
    if (left.access > 0 || left.log > 0) {
      log('warn', 'log lines could not be written before exit: their destination did not take them in time', {
        accessLines: left.access, logLines: left.log, access: this.accessWhere, waitedMs: ms,
      });
      const last = performance.now() + 200;
      while (!this.idle() && performance.now() < last) {
        this.pump();
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    this.closed = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.counters();
    for (const out of [...this.outputs(), ...this.retiring]) if (out.timer !== null) clearTimeout(out.timer);
    return left;
  }

  // ------------------------------------------------------------- opening

  /** fd 1 or 2 as an output, without ever making a write to it block. */
  private openStdio(n: 1 | 2): Output {
    const out = new Output(n === 1 ? 'stdout' : 'stderr', null);
    let st: Stats;
    try {
      st = fstatSync(n);
    } catch {
      return out; // closed (started with 2>&-): nothing can be written
    }
    out.key = keyOf(st);
    if (st.isFile()) {
      out.fd = n;
      out.mode = 'file';
      return out;
    }
    if (st.isFIFO() || st.isCharacterDevice()) {
      // Our own open file description, non-blocking: the inherited one is
      // shared with whoever else holds it (and may be blocking).
      try {
        out.fd = openSync(`/proc/self/fd/${n}`, constants.O_WRONLY | constants.O_APPEND | O_NONBLOCK | O_NOCTTY);
        out.mode = 'fd';
        return out;
      } catch { /* no /proc: Node's own stream below (pipes), or the descriptor itself (a terminal) */ }
      if (st.isCharacterDevice()) {
        out.fd = n;
        out.mode = 'fd';
        return out;
      }
    }
    // A socket (journald, a parent's socketpair), or a pipe without /proc:
    // libuv's stream writes it when it is writable, never blocking.
    const stream = (n === 1 ? process.stdout : process.stderr) as unknown as Socket;
    stream.on('error', () => { /* EPIPE and the like: seen by the write's callback */ });
    out.socket = stream;
    out.fd = n;
    out.mode = 'stream';
    return out;
  }

  private openPath(path: string): Output {
    const out = new Output(path, path);
    this.tryOpen(out);
    return out;
  }

  /** Opens (or reopens) a path output; false (logged once per failure kind) when it cannot be. */
  private tryOpen(out: Output): boolean {
    const path = out.path!;
    let fd: number;
    try {
      fd = openSync(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | O_NONBLOCK | O_NOCTTY, 0o640);
    } catch (err) {
      const code = errCode(err);
      if (out.openError !== code) {
        out.openError = code;
        log('error', out.fd >= 0
          ? 'access log: cannot reopen its destination; still writing to the file open before, tried again every second'
          : 'access log: cannot open its destination; its lines wait in memory (dropped once full) and it is tried again every second', {
          destination: path, error: code, advice: openAdvice(code),
        });
      }
      out.waitUntil = performance.now() + FAIL_RETRY_MS;
      return false;
    }
    let st: Stats;
    try {
      st = fstatSync(fd);
    } catch (err) {
      closeSync(fd);
      out.openError = errCode(err);
      out.waitUntil = performance.now() + FAIL_RETRY_MS;
      return false;
    }
    if (out.fd >= 0) this.closeFd(out);
    out.fd = fd;
    out.key = keyOf(st);
    out.mode = st.isFile() ? 'file' : 'fd';
    if (out.openError !== null) {
      log('info', 'access log: its destination is open', { destination: path, failedWith: out.openError });
      out.openError = null;
    }
    return true;
  }

  private closeFd(out: Output): void {
    if (out.path !== null && out.fd >= 0) {
      try { closeSync(out.fd); } catch { /* gone already */ }
    }
    out.fd = -1;
  }

  /** An output that is no longer a destination: its span goes back to its ring, then it is closed. */
  private retire(out: Output): void {
    out.retired = true;
    if (out.inFlight) {
      this.retiring.add(out);
      return;
    }
    this.handOver(out);
    if (out.timer !== null) clearTimeout(out.timer);
    this.closeFd(out);
  }

  /**
   * The output's span goes back to its ring for the next destination, which
   * starts on a whole line: the rest of a line cut in the middle is dropped.
   */
  private handOver(out: Output): void {
    const span = out.cur;
    if (span === null || out.inFlight) return;
    out.cur = null;
    this.skipCutLine(span);
    span.source.reader.release(span.pos);
    span.source.held = false;
  }

  /** When `span` stopped in the middle of a line: moves past that line and counts it lost. */
  private skipCutLine(span: Span): void {
    const buf = span.source.reader.buf;
    if (span.pos === span.start || buf[span.pos - 1] === 10) return;
    const nl = buf.indexOf(10, span.pos);
    span.pos = nl === -1 || nl >= span.end ? span.end : nl + 1;
    this.lost[span.source.kind]++;
  }

  // ------------------------------------------------------------- writing

  private pump(): void {
    if (this.pumping || this.closed) return;
    this.pumping = true;
    try {
      for (const out of this.outputs()) this.drive(out);
      this.discardOff();
    } finally {
      this.pumping = false;
    }
    this.counters();
    if (this.moved !== this.movedSeen) {
      // Lines came: polls go back to POLL_MS (at once, when they had backed off).
      this.movedSeen = this.moved;
      if (this.pollMs !== POLL_MS) {
        this.pollMs = POLL_MS;
        // (Inside a poll, timer is null: the poll arms the next one itself.)
        if (this.timer !== null && this.pollAt > performance.now() + POLL_MS) this.arm();
      }
    }
  }

  /** Access lines published while the access log is off (a reload turned it off) are let go. */
  private discardOff(): void {
    if (this.access !== null) return;
    for (const s of this.sources) {
      if (s.kind !== 'access' || s.held) continue;
      for (let span = s.reader.next(); span !== null; span = s.reader.next()) {
        s.reader.release(span[1]);
        this.moved++;
      }
    }
  }

  private drive(out: Output): void {
    if (out.inFlight || out.retired) return;
    const now = performance.now();
    if (out.waitUntil > now) return;
    if (out.path !== null && ((out.reopenWanted && out.reopenAt <= now) || out.fd < 0)) {
      const wasOpen = out.fd >= 0;
      out.reopenWanted = false;
      if (!this.tryOpen(out)) {
        // A reopen that fails keeps writing to the file still open (a rotated file), and is tried
        // again after FAIL_RETRY_MS; a closed one waits.
        if (!wasOpen) return;
        out.reopenWanted = true;
        out.reopenAt = now + FAIL_RETRY_MS;
        out.waitUntil = 0;
      } else if (out.cur !== null) {
        // A new file starts on a whole line.
        this.handOver(out);
      }
    }
    if (out.mode === 'none') {
      this.drop(out);
      return;
    }
    for (let turns = 0; turns < SPANS_PER_TURN; turns++) {
      if (out.cur === null) {
        const span = this.nextSpan(out);
        if (span === null) {
          this.report(out);
          return;
        }
        out.cur = span;
      }
      const span = out.cur;
      const buf = span.source.reader.buf;
      if (out.mode === 'fd') {
        let n: number;
        try {
          n = writeSync(out.fd, buf, span.pos, span.end - span.pos);
        } catch (err) {
          this.failed(out, errCode(err));
          return;
        }
        this.wrote(out, n);
        continue; // partly taken (the pipe is full): the next try says EAGAIN and waits
      }
      out.inFlight = true;
      if (out.mode === 'file') {
        fsWrite(out.fd, buf, span.pos, span.end - span.pos, null, (err, n) => this.done(out, err, n));
      } else {
        const len = span.end - span.pos;
        out.socket!.write(buf.subarray(span.pos, span.end), (err) => this.done(out, err ?? null, err ? 0 : len));
      }
      return;
    }
  }

  /** A file or stream write completed. */
  private done(out: Output, err: Error | null | undefined, n: number): void {
    out.inFlight = false;
    if (err) this.failed(out, errCode(err));
    else this.wrote(out, n);
    if (out.retired) {
      this.retiring.delete(out);
      this.retire(out);
    }
    this.pump();
  }

  private wrote(out: Output, n: number): void {
    const span = out.cur!;
    span.pos += n;
    out.backoff = 0;
    if (out.failing !== null) {
      log('info', `${out === this.stderr ? 'gateway' : 'access'} log: writing to its destination works again`, { destination: out.name, failedWith: out.failing });
      out.failing = null;
    }
    if (span.pos >= span.end) {
      span.source.reader.release(span.end);
      span.source.held = false;
      out.cur = null;
    }
  }

  private failed(out: Output, code: string): void {
    const now = performance.now();
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK') {
      // Full (a pipe whose reader is behind): the span waits, the thread never does.
      out.backoff = out.backoff === 0 ? RETRY_MIN_MS : Math.min(RETRY_MAX_MS, out.backoff * 2);
      this.wake(out, out.backoff);
      return;
    }
    if (out.failing !== code) {
      out.failing = code;
      if (out !== this.stderr) {
        log('error', 'access log: writing to its destination fails; its lines wait in memory (dropped once full) and it is tried again every second', {
          destination: out.name, error: code,
        });
      }
    }
    if (out.path !== null && (code === 'EPIPE' || code === 'EBADF' || code === 'ENXIO')) {
      // A FIFO whose reader left: open it again (non-blocking) once a reader is back; its new reader starts on a whole line.
      this.closeFd(out);
      if (out.cur !== null) this.handOver(out);
    }
    out.waitUntil = now + FAIL_RETRY_MS;
    this.wake(out, FAIL_RETRY_MS);
  }

  private wake(out: Output, ms: number): void {
    out.waitUntil = performance.now() + ms;
    if (this.pollAt <= out.waitUntil || out.timer !== null) return; // the poll comes soon enough
    out.timer = setTimeout(() => {
      out.timer = null;
      this.pump();
    }, ms);
  }

  /** A destination that cannot take anything (closed stdio): its lines are let go as they come, counted. */
  private drop(out: Output): void {
    for (const s of this.sources) {
      if (s.held || this.outputOf(s) !== out) continue;
      for (let span = s.reader.next(); span !== null; span = s.reader.next()) {
        this.lost[s.kind] += countLines(s.reader.buf, span[0], span[1]);
        s.reader.release(span[1]);
        this.moved++;
      }
    }
  }

  private outputOf(s: Source): Output | null {
    return s.kind === 'log' ? this.stderr : this.access;
  }

  /** The next span of a ring that goes to `out`, round robin. */
  private nextSpan(out: Output): Span | null {
    const n = this.sources.length;
    for (let k = 0; k < n; k++) {
      const i = (out.rr + k) % n;
      const s = this.sources[i]!;
      if (s.held || this.outputOf(s) !== out) continue;
      const span = s.reader.next();
      if (span === null) continue;
      out.rr = i + 1;
      s.held = true;
      this.moved++;
      return { source: s, start: span[0], pos: span[0], end: span[1] };
    }
    return null;
  }

  // ---------------------------------------------------------- accounting

  private dropped(kind: LogKind): number {
    let n = this.lost[kind];
    for (const s of this.sources) if (s.kind === kind) n += s.reader.dropped;
    return n;
  }

  private counters(): void {
    const c = this.control;
    if (c === null) return;
    Atomics.store(c, C_ACCESS_LOG_DROPPED, this.dropped('access'));
    Atomics.store(c, C_LOG_DROPPED, this.dropped('log'));
  }

  /** Once a destination has caught up: one line saying how many lines were dropped since the last such line. */
  private report(out: Output): void {
    const now = performance.now();
    for (const kind of ['log', 'access'] as const) {
      if ((kind === 'log' ? this.stderr : this.access) !== out) continue;
      const total = this.dropped(kind);
      if (total === this.reported[kind] || now - this.lastReport[kind] < REPORT_EVERY_MS) continue;
      const n = total - this.reported[kind];
      this.reported[kind] = total;
      this.lastReport[kind] = now;
      log('warn', kind === 'log'
        ? 'gateway log lines were dropped: stderr did not take them in time (turnpike_gateway_log_dropped_total)'
        : 'access log lines were dropped: its destination did not keep up or failed (turnpike_access_log_dropped_total)', {
        dropped: n, total, destination: out.name,
      });
    }
  }

  /** The outputs in use, each once: stderr, stdout (when opened), the access log's. */
  private outputs(): Output[] {
    const list = [this.stderr];
    if (this.stdout !== null && this.stdout !== this.stderr) list.push(this.stdout);
    if (this.access !== null && !list.includes(this.access)) list.push(this.access);
    return list;
  }

  private idle(): boolean {
    for (const out of this.outputs()) {
      if (out.cur !== null || out.inFlight) return false;
    }
    for (const out of this.retiring) if (out.inFlight) return false;
    return this.sources.every((s) => s.held || this.outputOf(s) === null || s.reader.next() === null);
  }

  /** Lines still in the rings (those of a span under way from where it stands). */
  private unwritten(): { access: number; log: number } {
    const out = { access: 0, log: 0 };
    const held = new Map<Source, number>();
    for (const o of [...this.outputs(), ...this.retiring]) if (o.cur !== null) held.set(o.cur.source, o.cur.pos);
    for (const s of this.sources) {
      if (this.outputOf(s) === null) continue;
      out[s.kind] += s.reader.linesWaiting(held.get(s));
    }
    return out;
  }
}
