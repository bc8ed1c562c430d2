/**
 * The gateway's own log (not the access log: workers/access-log.ts), the
 * same in every thread: pino, one JSON object per line on stderr, or
 * readable lines through pino-pretty when stderr is a terminal.
 *
 *   {"level":"error","time":"2026-11-30T01:02:03.456Z","pid":123,"thread":"worker-0","msg":"...",...fields}
 *
 * - `time` is ISO-8601 UTC; `thread` is `main`, `admin` or `worker-N`;
 *   JSON escapes every newline, so a field never breaks a line.
 * - Each thread writes its own lines synchronously to fd 2 (one write per
 *   line, so lines from several threads never interleave: writes of up to
 *   PIPE_BUF bytes to a pipe are atomic). This log carries events, not
 *   requests (requests go to the access log, upstream failures are rate
 *   limited by workers/error-log.ts), so a blocking write is rare and short.
 * - Level and format come from `log.level` / `log.format` in the config,
 *   overridden by TURNPIKE_LOG_LEVEL / TURNPIKE_LOG_FORMAT; the level can be
 *   changed at runtime (PUT /admin/logging reaches every thread).
 * Never pass secrets in `fields`; nothing here redacts for you.
 */
import { isatty } from 'node:tty';
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';

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
    return pino(options, pretty({
      destination: 2, sync: true, colorize: isatty(2), singleLine: true, translateTime: 'SYS:yyyy-mm-dd HH:MM:ss.l', ignore: 'pid,hostname',
    }));
  }
  return pino(options, pino.destination({ dest: 2, sync: true }));
}

/** Writes one line at `level` (dropped below the current level). */
export function log(at: Level, msg: string, fields?: Record<string, unknown>): void {
  if (fields === undefined) logger[at](msg);
  else logger[at](fields, msg);
}

/** Names this thread in every line it writes (`thread` field). Call once, first thing in a thread. */
export function setLogThread(name: string): void {
  thread = name;
  logger = build();
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

export function isLevel(v: unknown): v is Level {
  return typeof v === 'string' && (LEVELS as readonly string[]).includes(v);
}
