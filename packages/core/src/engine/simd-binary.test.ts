import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

describe('simd-binary.ts', () => {
  it('is what assembly/kernels.ts compiles to (run `npm run build:simd -w @tessera/core` after editing it)', () => {
    const script = fileURLToPath(new URL('../../scripts/build-simd.mjs', import.meta.url));
    const run = spawnSync(process.execPath, [script, '--check'], { encoding: 'utf8' });
    expect(run.stderr + run.stdout).toMatch(/matches assembly\/kernels\.ts/);
    expect(run.status).toBe(0);
  });
});
