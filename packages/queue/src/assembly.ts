/**
 * Streamed assembly of a slide's outputs: each time a worker finishes a region, it merges into the slide's maps (in a
 * work folder beside the region files) every region that is ready in the order the writer needs, its own and those
 * that finished early, so that when the last region is done the slide job writes only what is left and the final
 * files. One process at a time merges the regions of a run, under a lock in Redis; a worker that finds the lock
 * taken leaves a mark, and the holder looks again after releasing it, so no finished region waits for the slide job.
 * Two processes that overlap (a holder stalled past its lock) write the same bytes to the same rows: the journal is
 * always one of theirs, and the maps are right.
 */
import { randomBytes } from 'node:crypto';
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import {
  appendSlideRegions,
  splitRegions,
  type PredictSlideOptions,
  type SlidePlan,
  type SlideRegion,
  type QuantizedBand,
} from '@tessera/tiler';
import { JobRefusedError } from './errors.js';
import type { SlideJobData } from './jobs.js';
import { readRegionFile, regionDir, regionFile, type RegionHeader } from './region-files.js';

/** The work folder of a run's streamed assembly: beside its region files, removed with them. */
export function assemblyDir(out: string, slide: string, run: string): string {
  return join(regionDir(out, slide, run), 'assembly');
}

/** Compare-and-extend and compare-and-delete of a lock's key, so only its holder renews or releases it. */
const RENEW = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0`;
const RELEASE = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0`;

/** A held lock: renewed while held; `signal` aborts when it is lost (not renewed in time). */
export interface AssemblyLock {
  signal: AbortSignal;
  release: () => Promise<void>;
}

/** Takes the lock `key` for `ttlMs` (renewed every third of it), or returns `null` when another holder has it. */
async function tryLock(client: Redis, key: string, ttlMs: number): Promise<AssemblyLock | null> {
  const token = randomBytes(12).toString('hex');
  if ((await client.set(key, token, 'PX', ttlMs, 'NX')) !== 'OK') return null;
  const lost = new AbortController();
  const timer = setInterval(
    () => {
      client.eval(RENEW, 1, key, token, ttlMs).then(
        (renewed) => renewed === 0 && lost.abort(new Error(`the assembly lock ${key} was lost`)),
        () => undefined, // Redis away for a moment: the next renewal tries again
      );
    },
    Math.max(10, Math.floor(ttlMs / 3)),
  );
  timer.unref();
  return {
    signal: lost.signal,
    release: async () => {
      clearInterval(timer);
      await client.eval(RELEASE, 1, key, token).catch(() => undefined); // else it expires
    },
  };
}

/** Options of {@link createAssembler}. */
export interface AssemblerOptions {
  client: Redis;
  /** Key prefix in Redis (BullMQ's). */
  prefix: string;
  /** Lifetime of the lock of a run's assembly while its holder renews it; a dead holder's lapses after this. */
  lockMs: number;
  log: (line: string) => void;
}

/** What a worker needs to merge a run's regions: its job data, plan and output options on this machine. */
export interface AssemblyJob {
  data: SlideJobData;
  plan: SlidePlan;
  options: PredictSlideOptions;
  /** The engine the regions were computed with; a region of another engine is refused. */
  engine: string;
}

/**
 * Reads a run's region results for the assembly: the bands of a region whose file verifies, `null` when it is not
 * there (yet). `onHeader` sees the header of each region read.
 * @throws {@link JobRefusedError} for a region computed with another engine than `engine`.
 */
export function regionReader(
  data: SlideJobData,
  engine: string,
  onHeader?: (header: RegionHeader) => void,
): (region: SlideRegion) => Promise<QuantizedBand[] | null> {
  return async (region) => {
    const found = await readRegionFile(regionFile(data.out, data.slide, data.run, region), data.run, region);
    if (!found) return null;
    if (found.header.engine !== engine) {
      throw new JobRefusedError(
        `${data.slide}: region ${region.index} was computed with ${found.header.engine} (on ${found.header.host}) ` +
          `but the others with ${engine}, so the output would not be that of one run.`,
        'Run every worker with the same runtime and versions, then submit the slide again.',
      );
    }
    onHeader?.(found.header);
    return found.bands;
  };
}

/** The streamed assembly of a worker process: see the module's comment. */
export interface Assembler {
  /**
   * Merges the ready regions of a job's run into its maps, unless another process is doing so (it then looks again
   * when done). Never throws: a failure is logged, and the slide job writes what is left.
   */
  advance: (job: AssemblyJob) => Promise<void>;
  /** Takes the lock of a run's assembly, waiting while another process holds it (the slide job's turn). */
  lock: (run: string) => Promise<AssemblyLock>;
  /** Forgets a finished run's keys. */
  forget: (run: string) => Promise<void>;
}

/** Starts the streamed assembly of a worker process. */
export function createAssembler(options: AssemblerOptions): Assembler {
  const { client, prefix, lockMs, log } = options;
  const lockKey = (run: string) => `${prefix}:tessera-assembly:${run}:lock`;
  // Set by a worker with a region to merge, cleared by the holder before it looks at the regions.
  const pendingKey = (run: string) => `${prefix}:tessera-assembly:${run}:pending`;

  /** One turn of a holder: the ready regions from where the maps stop. */
  const append = async (job: AssemblyJob, lock: AssemblyLock) => {
    const { data, plan, options: output, engine } = job;
    const workDir = assemblyDir(data.out, data.slide, data.run);
    const regions = splitRegions(plan, data.tileRows);
    const { written, next } = await appendSlideRegions(
      data.slide,
      { ...output, plan, signal: lock.signal },
      { engine, regions, read: regionReader(data, engine), workDir },
    );
    if (written > 0) {
      const upTo = next ? `up to region ${next.index}` : 'all regions';
      log(`slide ${data.slide}: ${written} region(s) merged into the outputs (${upTo})`);
    }
  };

  const advance = async (job: AssemblyJob) => {
    const { run, out, slide } = job.data;
    try {
      await client.set(pendingKey(run), '1', 'PX', 3_600_000);
      for (;;) {
        // The slide job removes the region files when done: a late worker has nothing to merge.
        if (!(await stat(regionDir(out, slide, run)).catch(() => null))) return;
        const lock = await tryLock(client, lockKey(run), lockMs);
        if (!lock) return; // the holder looks again after releasing: the mark is set
        try {
          await client.del(pendingKey(run));
          await append(job, lock);
        } catch (error) {
          if ((error as { code?: string }).code === 'E_PARTIAL_WORK') {
            await rm(assemblyDir(out, slide, run), { recursive: true, force: true }); // the next turn starts afresh
          }
          throw error;
        } finally {
          await lock.release();
        }
        // Regions finished while the lock was held were left to this holder.
        if ((await client.del(pendingKey(run))) === 0) return;
      }
    } catch (error) {
      log(`slide ${slide}: merging finished regions failed (the slide job writes them): ${(error as Error).message}`);
    }
  };

  const lock = async (run: string) => {
    for (;;) {
      const held = await tryLock(client, lockKey(run), lockMs);
      if (held) return held;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  };

  const forget = async (run: string) => {
    await client.del(pendingKey(run), lockKey(run));
  };

  return { advance, lock, forget };
}
