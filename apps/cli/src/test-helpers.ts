/** Shared by the CLI's tests (not part of the build): runs the built `tessera` command. */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The built command. */
export const BIN = fileURLToPath(new URL('../dist/bin.js', import.meta.url));

/** Runs `tessera args` on the wasm engine and returns its exit code and output. */
export function tessera(args: string[], cwd?: string): { code: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    cwd,
    env: { ...process.env, TESSERA_BACKEND: 'wasm' },
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}
