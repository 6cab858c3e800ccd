#!/usr/bin/env node
import { mallocEnvironment, rerun } from './allocator.js';

async function run(): Promise<number> {
  // `tessera predict` on glibc runs itself again once, with malloc settings that keep its memory from growing with
  // the slide's size (see allocator.ts); the commands are loaded only in the process that runs them.
  const env = mallocEnvironment(process.argv, process.env);
  if (env) {
    try {
      return await rerun(env);
    } catch {
      // no process could be started: run the command here, with glibc's own settings
    }
  }
  const { main } = await import('./main.js');
  return main(process.argv);
}

run().then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`tessera: unexpected failure: ${(error as Error)?.stack ?? String(error)}\n`);
    process.exitCode = 70;
  },
);
