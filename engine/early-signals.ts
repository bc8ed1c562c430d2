/**
 * Signals that arrive while `turnpike start` is still loading: from the
 * first statement that runs (bin/turnpike.mjs installs the same handlers
 * before it even loads the CLI, ~50 ms after launch; this module, imported
 * first by cli.ts, does it when the CLI is run directly), a SIGHUP (a
 * `systemctl reload`, a logrotate), SIGTERM, SIGINT or SIGUSR1 is remembered
 * instead of hitting Node's default, which ends the process. start() takes
 * them over once its own handlers are in place. (Before Node runs any code
 * at all, nothing can catch a signal.)
 */
interface Early {
  stop: string | null;
  reload: boolean;
  reopen: boolean;
  handlers: [string, (signal: string) => void][];
}

const KEY = Symbol.for('turnpike.earlySignals');
const registry = globalThis as unknown as Record<symbol, Early | undefined>;

const starting = process.argv[2] === 'start';
if (starting && registry[KEY] === undefined) {
  const early: Early = { stop: null, reload: false, reopen: false, handlers: [] };
  const stop = (signal: string) => { early.stop ??= signal; };
  early.handlers = [
    ['SIGTERM', stop], ['SIGINT', stop], ['SIGHUP', () => { early.reload = true; }], ['SIGUSR1', () => { early.reopen = true; }],
  ];
  for (const [s, h] of early.handlers) process.on(s, h);
  registry[KEY] = early;
}

/** Removes the early handlers and returns what arrived (call once the real handlers are installed). */
export function takeEarlySignals(): { stop: string | null; reload: boolean; reopen: boolean } {
  const early = registry[KEY];
  if (early === undefined) return { stop: null, reload: false, reopen: false };
  for (const [s, h] of early.handlers) process.off(s, h);
  registry[KEY] = undefined;
  return { stop: early.stop, reload: early.reload, reopen: early.reopen };
}
