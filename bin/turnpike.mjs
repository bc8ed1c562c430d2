#!/usr/bin/env node
// Entry for `npx turnpike`: runs the compiled CLI (TypeScript is built to dist/).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// `turnpike start`: a signal that arrives while the CLI loads is remembered,
// not fatal (engine/early-signals.ts takes these handlers over).
if (process.argv[2] === 'start') {
  const early = { stop: null, reload: false, reopen: false, handlers: [] };
  const stop = (signal) => { early.stop ??= signal; };
  early.handlers = [
    ['SIGTERM', stop], ['SIGINT', stop], ['SIGHUP', () => { early.reload = true; }], ['SIGUSR1', () => { early.reopen = true; }],
  ];
  for (const [s, h] of early.handlers) process.on(s, h);
  globalThis[Symbol.for('turnpike.earlySignals')] = early;
  // Test hook: tests wait for this line before they signal a starting gateway.
  if (process.env.TURNPIKE_TEST_HOOKS === '1') process.stderr.write('{"msg":"early signal handlers installed"}\n');
}

const cli = fileURLToPath(new URL('../dist/engine/cli.js', import.meta.url));
if (!existsSync(cli)) {
  process.stderr.write('turnpike: not built yet. Run `npm run build` in the turnpike folder (npm start does it for you).\n');
  process.exit(1);
}
await import(cli);
