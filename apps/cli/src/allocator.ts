/**
 * glibc's malloc and whole-slide prediction. glibc gives a large block its own memory map, returned to the system
 * when freed, until the first such block is freed: it then raises its mmap threshold to that block's size (up to
 * 32 MB) and serves later blocks of that size from its arenas, which keep what is freed for reuse. The tiler's workers
 * allocate and free buffers of 1 to 13 MB for every batch of tiles (decoded pixels, network inputs and outputs), the
 * arenas fragmented, and the process grew the longer a slide ran, and so with the slide's size. A fixed threshold
 * turns the adjustment off. glibc reads it from the environment when a process starts, so `tessera predict` and
 * `tessera worker` (which runs the same tiler, region after region, for as long as it lives) run themselves again,
 * once, with it set.
 */
import { spawn } from 'node:child_process';

/** The environment settings of glibc's malloc that `tessera predict` and `worker` run with: a fixed 4 MiB mmap threshold. */
export const MALLOC_SETTINGS: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: String(4 * 1024 * 1024) };

/** Whether this process runs on glibc (Linux but not musl). */
export function isGlibc(): boolean {
  if (process.platform !== 'linux') return false;
  const report = process.report.getReport() as { header?: { glibcVersionRuntime?: string } };
  return Boolean(report.header?.glibcVersionRuntime);
}

/**
 * The environment to run the command line `argv` in again, or `null` to run it as it is: only for `tessera predict`
 * and `tessera worker` on glibc, and never when the environment already sets the mmap threshold (`MALLOC_MMAP_THRESHOLD_`, or
 * `glibc.malloc.mmap_threshold` in `GLIBC_TUNABLES`), preloads another allocator (`LD_PRELOAD` of jemalloc,
 * tcmalloc...), or Node.js runs under the inspector (the process run again could not open its port). The process run
 * again has the setting, so it runs the command itself.
 * @example
 * mallocEnvironment(['node', 'tessera', 'predict', 'slide.svs'], {}, [], () => true); // { MALLOC_MMAP_THRESHOLD_: '4194304' }
 */
export function mallocEnvironment(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  execArgv: readonly string[] = process.execArgv,
  glibc: () => boolean = isGlibc,
): NodeJS.ProcessEnv | null {
  if (argv[2] !== 'predict' && argv[2] !== 'worker') return null;
  const kept =
    env.MALLOC_MMAP_THRESHOLD_ !== undefined ||
    /glibc\.malloc\.mmap_threshold/.test(env.GLIBC_TUNABLES ?? '') ||
    /malloc/i.test(env.LD_PRELOAD ?? '') ||
    /--inspect/.test([...execArgv, env.NODE_OPTIONS ?? ''].join(' '));
  return kept || !glibc() ? null : { ...env, ...MALLOC_SETTINGS };
}

/** Signals passed on to the command run again. */
const FORWARDED: NodeJS.Signals[] = ['SIGTERM', 'SIGHUP'];

/**
 * Runs this Node.js command line again in a child process with `env`, sharing stdin, stdout and stderr, and resolves
 * to its exit code; when a signal ended it, this process ends with the same signal. SIGTERM and SIGHUP sent to this
 * process are passed on. Ctrl-C is not: the terminal sends SIGINT to the child as well (one process group), and a
 * second one would make it quit at once instead of stopping cleanly, so this process only ignores it.
 * @throws the spawn error when the child cannot be started (nothing has run then).
 */
export function rerun(env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], { stdio: 'inherit', env });
    const pass = (signal: NodeJS.Signals) => child.kill(signal);
    const ignore = () => undefined;
    const release = () => {
      for (const signal of FORWARDED) process.off(signal, pass);
      process.off('SIGINT', ignore);
    };
    for (const signal of FORWARDED) process.on(signal, pass);
    process.on('SIGINT', ignore);
    child.on('error', (error) => {
      if (child.pid !== undefined) return; // a signal that could not be passed on: the child runs on
      release();
      reject(error);
    });
    child.on('exit', (code, signal) => {
      release();
      if (signal) process.kill(process.pid, signal);
      resolve(code ?? 1);
    });
  });
}
