#!/usr/bin/env node
// The `tessera` command. This file is part of the package's sources rather than of its build, so that npm links the
// command when it installs the package, also in a fresh clone of the repository where dist/ is built afterwards
// (`npm ci && npm run build`, then `npx tessera`).
import { existsSync } from 'node:fs';

const entry = new URL('../dist/bin.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write(
    'tessera: the command is not built yet (apps/cli/dist/bin.js is missing).\n' +
      'hint: run "npm run build" at the root of the Tessera repository, then "npx tessera" again.\n',
  );
  process.exit(1);
}
await import(entry.href);
