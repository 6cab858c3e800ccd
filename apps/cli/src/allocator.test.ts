import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isGlibc, MALLOC_SETTINGS, mallocEnvironment } from './allocator.js';
import { BIN } from './test-helpers.js';

describe('mallocEnvironment', () => {
  const predict = ['node', 'tessera', 'predict', 'slide.svs'];
  const cases: [string, string[], NodeJS.ProcessEnv, string[], boolean, boolean][] = [
    ['predict on glibc', predict, { PATH: '/bin' }, [], true, true],
    ['a distributed worker on glibc', ['node', 'tessera', 'worker', '--queue', 'redis://h'], {}, [], true, true],
    ['another command', ['node', 'tessera', 'train'], {}, [], true, false],
    ['not glibc (musl, macOS, Windows)', predict, {}, [], false, false],
    ['a threshold set already (the process run again)', predict, { MALLOC_MMAP_THRESHOLD_: '131072' }, [], true, false],
    ['the threshold as a glibc tunable', predict, { GLIBC_TUNABLES: 'glibc.malloc.mmap_threshold=1' }, [], true, false],
    ['jemalloc preloaded', predict, { LD_PRELOAD: '/usr/lib/libjemalloc.so.2' }, [], true, false],
    ['the inspector', predict, {}, ['--inspect-brk'], true, false],
    ['the inspector in NODE_OPTIONS', predict, { NODE_OPTIONS: '--inspect=9230' }, [], true, false],
    ['other malloc settings (kept)', predict, { MALLOC_ARENA_MAX: '2' }, [], true, true],
  ];
  it.each(cases)('%s', (_, argv, env, execArgv, glibc, reruns) => {
    const result = mallocEnvironment(argv, env, execArgv, () => glibc);
    expect(result).toEqual(reruns ? { ...env, MALLOC_MMAP_THRESHOLD_: '4194304' } : null);
  });
});

describe.runIf(isGlibc())('tessera predict on glibc runs itself again with the malloc settings', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tessera-allocator-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** Spawn options that import `preload` first into every Node.js process `tessera` starts. */
  const options = (preload: string) => ({
    encoding: 'utf8' as const,
    env: { ...process.env, NODE_OPTIONS: `--import=${preload}`, TESSERA_LOG: join(dir, 'log') },
  });

  it('once, passing the exit code and output through', async () => {
    const preload = join(dir, 'record.mjs');
    await writeFile(
      preload,
      "import { appendFileSync } from 'node:fs';\n" +
        "appendFileSync(process.env.TESSERA_LOG, (process.env.MALLOC_MMAP_THRESHOLD_ ?? '-') + '\\n');\n",
    );
    const result = spawnSync(process.execPath, [BIN, 'predict', '--out', dir], options(preload));
    expect(result.status).toBe(2);
    expect(result.stderr).toContain("required option '--model <dir>' not specified");
    expect((await readFile(join(dir, 'log'), 'utf8')).split('\n')).toEqual([
      '-',
      MALLOC_SETTINGS.MALLOC_MMAP_THRESHOLD_,
      '',
    ]);
  });

  it('passes SIGTERM on, leaves Ctrl-C (sent to the whole process group) to the child, ends as the child ends', async () => {
    const preload = join(dir, 'wait.mjs');
    const ready = join(dir, 'ready');
    await writeFile(
      preload,
      "import { writeFileSync } from 'node:fs';\n" +
        'if (process.env.MALLOC_MMAP_THRESHOLD_) {\n' +
        '  process.on("SIGINT", () => process.exit(43));\n' +
        '  process.on("SIGTERM", () => process.exit(42));\n' +
        '  setInterval(() => undefined, 1000);\n' +
        `  writeFileSync(${JSON.stringify(ready)}, '');\n` +
        '}\n',
    );
    const parent = spawn(process.execPath, [BIN, 'predict'], options(preload));
    const exited = new Promise<number | null>((done) => parent.on('exit', (code) => done(code)));
    for (let i = 0; i < 800 && !existsSync(ready); i++) await new Promise((r) => setTimeout(r, 25));
    parent.kill('SIGINT'); // to the parent alone: not passed on, and the parent stays
    await new Promise((r) => setTimeout(r, 300));
    expect(parent.exitCode).toBeNull();
    parent.kill('SIGTERM');
    expect(await exited).toBe(42);

    const killer = join(dir, 'kill.mjs');
    await writeFile(killer, "if (process.env.MALLOC_MMAP_THRESHOLD_) process.kill(process.pid, 'SIGKILL');\n");
    expect(spawnSync(process.execPath, [BIN, 'predict'], options(killer)).signal).toBe('SIGKILL');
  });
});
