/**
 * Minimal structured logging: one JSON object per line on stderr (machine
 * friendly for collectors), or a readable line when stderr is a terminal.
 * Never pass secrets in `fields`; nothing here redacts for you.
 */
const pretty = process.stderr.isTTY === true && process.env.TURNPIKE_LOG_FORMAT !== 'json';
const levels = { debug: 10, info: 20, warn: 30, error: 40 } as const;
type Level = keyof typeof levels;
const threshold = levels[(process.env.TURNPIKE_LOG_LEVEL as Level) ?? 'info'] ?? levels.info;

export function log(level: Level, msg: string, fields?: Record<string, unknown>): void {
  if (levels[level] < threshold) return;
  if (pretty) {
    const extra = fields ? ' ' + Object.entries(fields).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' ') : '';
    process.stderr.write(`${new Date().toISOString()} ${level.toUpperCase().padEnd(5)} ${msg}${extra}\n`);
  } else {
    process.stderr.write(JSON.stringify({ level, time: Date.now(), msg, ...fields }) + '\n');
  }
}
