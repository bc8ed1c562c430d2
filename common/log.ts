/**
 * The gateway's own log (not the access log: workers/access-log.ts), the
 * same in every thread: pino, one JSON object per line on stderr, or
 * readable lines (pino-pretty) when stderr is a terminal.
 *
 *   {"level":"error","time":"2026-11-30T01:02:03.456Z","pid":123,"thread":"worker-0","msg":"...",...fields}
 *
 * - `time` is ISO-8601 UTC; `thread` is `main`, `admin` or `worker-N`;
 *   JSON escapes every newline, so a field never breaks a line.
 * - No thread of a running gateway writes to stderr itself: each copies its
 *   lines into its own ring in shared memory (common/access-ring.ts, handed
 *   over with setLogThread; the main thread's is created here), and the
 *   engine's writer (engine/log-writer.ts) writes every ring out, between
 *   the access log's batches when that goes to stderr too. A stalled stderr
 *   reader (a paused log driver, a full pipe) therefore never blocks a
 *   thread: when a ring is full its lines are dropped and counted
 *   (`turnpike_log_dropped_total`, and a line saying how many once stderr
 *   takes lines again).
 * - Until the writer claims it (`turnpike start` does first thing), the
 *   main thread writes its lines straight to fd 2, as any CLI does; a
 *   thread given no ring yet keeps its first lines (up to 64 KiB) for it.
 * - Level and format come from `log.level` / `log.format` in the config,
 *   overridden by TURNPIKE_LOG_LEVEL / TURNPIKE_LOG_FORMAT; the level can be
 *   changed at runtime (PUT /admin/logging reaches every thread).
 * Never pass secrets in `fields`; nothing here redacts for you.
 */
import { writeSync } from 'node:fs';
import { isatty } from 'node:tty';
import { isMainThread } from 'node:worker_threads';
import pino, { type Logger } from 'pino';
import { prettyFactory } from 'pino-pretty';
import { type AccessRing, LOG_RING_BYTES, RingWriter, createAccessRing } from './access-ring.js';

export type Level = 'debug' | 'info' | 'warn' | 'error';
export type LogFormat = 'json' | 'pretty';

const LEVELS: readonly Level[] = ['debug', 'info', 'warn', 'error'];

function envLevel(): Level | null {
  const v = process.env.TURNPIKE_LOG_LEVEL;
  return v !== undefined && (LEVELS as readonly string[]).includes(v) ? (v as Level) : null;
}

function envFormat(): LogFormat | null {
  const v = process.env.TURNPIKE_LOG_FORMAT;
  return v === 'json' || v === 'pretty' ? v : null;
}

/** Lines a thread keeps while it has no ring yet (bytes, roughly). */
const EARLY_BYTES = 64 * 1024;

/**
 * Where this thread's lines go: its ring once it has one; before that the
 * main thread writes them to fd 2 and other threads keep them.
 */
class Sink {
  ring: RingWriter | null = null;
  private early: string[] = [];
  private earlyBytes = 0;
  direct = isMainThread;

  write(line: string): void {
    const r = this.ring;
    if (r !== null) {
      r.write(line);
    } else if (this.direct) {
      try { writeSync(2, line); } catch { /* stderr full or gone: a CLI's line is lost, never waited for */ }
    } else if (this.earlyBytes + line.length <= EARLY_BYTES) {
      this.early.push(line);
      this.earlyBytes += line.length;
    }
  }

  attach(ring: AccessRing): void {
    this.ring = new RingWriter(ring);
    for (const line of this.early) this.ring.write(line);
    this.early = [];
    this.earlyBytes = 0;
  }
}

const sink = new Sink();
/** The main thread's ring, written out by the engine's writer once it claims it (claimMainLogRing). */
const mainRing: AccessRing | null = isMainThread ? createAccessRing(LOG_RING_BYTES) : null;

let thread = 'main';
let level: Level = envLevel() ?? 'info';
let format: LogFormat = envFormat() ?? (isatty(2) ? 'pretty' : 'json');
let logger: Logger = build();

function build(): Logger {
  const options = {
    level,
    base: { pid: process.pid, thread },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  if (format === 'pretty') {
    const pretty = prettyFactory({
      colorize: isatty(2), singleLine: true, translateTime: 'SYS:yyyy-mm-dd HH:MM:ss.l', ignore: 'pid,hostname',
    });
    return pino(options, { write: (s: string) => sink.write(pretty(s)) });
  }
  return pino(options, { write: (s: string) => sink.write(s) });
}

/** Writes one line at `level` (dropped below the current level). */
export function log(at: Level, msg: string, fields?: Record<string, unknown>): void {
  if (fields === undefined) logger[at](msg);
  else logger[at](fields, msg);
}

/**
 * Names this thread in every line it writes (`thread` field) and gives it
 * its ring (the engine's writer writes it to stderr). Call once, first
 * thing in a thread.
 */
export function setLogThread(name: string, ring?: AccessRing): void {
  thread = name;
  logger = build();
  if (ring !== undefined) sink.attach(ring);
}

/**
 * The main thread's ring, for the engine's writer (engine/log-writer.ts):
 * from this call on, the main thread's lines wait there instead of being
 * written to fd 2 by the thread itself. Main thread only.
 */
export function claimMainLogRing(): AccessRing {
  if (mainRing === null) throw new Error('claimMainLogRing: main thread only');
  if (sink.ring === null) sink.attach(mainRing);
  return mainRing;
}

/**
 * Back to writing straight to fd 2 (the writer has stopped: the process
 * is about to exit). Lines still in the ring are the writer's to account for.
 */
export function releaseMainLogRing(): void {
  sink.ring = null;
  sink.direct = isMainThread;
}

/**
 * Applies the config's `log.level` and `log.format` (the environment
 * variables win over both, as documented).
 */
export function configureLog(config: { level: Level; format: LogFormat | null }): void {
  const nextLevel = envLevel() ?? config.level;
  const nextFormat = envFormat() ?? config.format ?? format;
  if (nextFormat !== format) {
    format = nextFormat;
    level = nextLevel;
    logger = build();
  } else if (nextLevel !== level) {
    setLogLevel(nextLevel);
  }
}

/** Changes the level at runtime (PUT /admin/logging). */
export function setLogLevel(next: Level): void {
  level = next;
  logger.level = next;
}

export function logLevel(): Level {
  return level;
}

/** The format lines are written in now (`json` or `pretty`). */
export function logFormat(): LogFormat {
  return format;
}

export function isLevel(v: unknown): v is Level {
  return typeof v === 'string' && (LEVELS as readonly string[]).includes(v);
}
