#!/usr/bin/env node
// Entry for `npx turnpike`: runs the compiled CLI (TypeScript is built to dist/).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('../dist/engine/cli.js', import.meta.url));
if (!existsSync(cli)) {
  process.stderr.write('turnpike: not built yet. Run `npm run build` in the turnpike folder (npm start does it for you).\n');
  process.exit(1);
}
await import(cli);
