/**
 * The worker of distributed prediction (`tessera worker`): takes region jobs and runs them on the tiler's Piscina
 * pool, writing each region's rows to shared storage and then merging the regions that are ready into the slide's
 * outputs (streamed assembly, see `assembly.ts`), and takes slide jobs once all their regions are done, writing what
 * is left and the final files. It keeps one prepared runtime and one pool of tiler threads per model (path and
 * checksum) and runtime across jobs, so only its first job of a model loads it. It runs only architectures installed
 * on its own machine (by name), reads and writes only under the roots it was started with, and refuses a model whose
 * checksum differs from the job's.
 */
import { access, constants, realpath, rm, rmdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, sep } from 'node:path';
import { UnrecoverableError, Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import {
  assembleSlidePrediction,
  createTilerPool,
  planSlidePrediction,
  quantizeBand,
  splitRegions,
  streamSlidePrediction,
  type PredictSlideOptions,
  type QuantizedBand,
  type RegionResults,
  type SlideOutputs,
  type SlidePlan,
  type SlideRegion,
  type TilerPool,
  type TilerRun,
} from '@tessera/tiler';
import { assemblyDir, createAssembler, regionReader, type Assembler } from './assembly.js';
import { fileSha256, modelChecksum } from './checksum.js';
import { connect, type QueueTarget } from './connection.js';
import { JobRefusedError, QueueOptionError } from './errors.js';
import { QUEUES, type RegionJobData, type RegionResult, type SlideJobData } from './jobs.js';
import { readRegionFile, regionDir, regionFile, writeRegionFile } from './region-files.js';
import { outputOptions, tilerOptions, type LocalTiler } from './run.js';

/** What this machine brings to a job: engine, plugins and ONNX file for its model; released by `cleanup`. */
export interface PreparedJob extends LocalTiler {
  /** A description of the runtime for logs, e.g. `onnx (onnxruntime-node cpu, 2 threads)`. */
  label?: string;
  cleanup?: () => Promise<void>;
}

/** Options of {@link startWorker}. */
export interface WorkerOptions {
  target: QueueTarget;
  /** Folders under which slides, models and outputs may lie (resolved, symbolic links followed). At least one. */
  allowRoots: string[];
  /** Region jobs run at once by this process. Default 1. */
  concurrency?: number;
  /** Tiler worker threads per region job. Default: the tiler's default. */
  workers?: number;
  /**
   * Sets up the runtime of a job's model on this machine: the ONNX file or tfjs engine asked for by the job's
   * `settings.runtime`, and the module specifiers of the installed plugin named by `architecture`. Throw
   * {@link JobRefusedError} when this machine cannot (the architecture is not installed here).
   */
  prepare: (data: SlideJobData) => Promise<PreparedJob>;
  /** Called with a finished slide's run and outputs (e.g. to write the HTML report); its result is the job's. */
  finalize?: (data: SlideJobData, run: TilerRun, outputs: SlideOutputs) => Promise<unknown>;
  /** Lock of an active job, renewed while it runs; a worker that dies loses it after this long. Default 30000 ms. */
  lockDuration?: number;
  /** How often stalled jobs (of dead workers) are looked for. Default 30000 ms. */
  stalledInterval?: number;
  /** BullMQ key prefix. Default `bull`. */
  prefix?: string;
  /** Receives one line per job event. */
  log?: (line: string) => void;
}

/** A running worker. */
export interface RunningWorker {
  /** The worker's name in the queue: `host:pid`. */
  name: string;
  /** Stops taking jobs; waits for the active ones to finish (or, with `force`, abandons them to other workers). */
  close: (force?: boolean) => Promise<void>;
}

const HOST = hostname();

/** Resolves the allowed roots once (they must exist). */
async function resolveRoots(roots: string[]): Promise<string[]> {
  if (roots.length === 0) {
    throw new QueueOptionError(
      'Expected at least one --allow-root: the folders under which this worker may read slides and models and write ' +
        'outputs.',
      'Give the shared storage every machine mounts, e.g. --allow-root /mnt/slides --allow-root /mnt/results.',
    );
  }
  const resolved: string[] = [];
  for (const root of roots) {
    try {
      resolved.push(await realpath(root));
    } catch {
      throw new QueueOptionError(`--allow-root "${root}" does not exist on ${HOST}.`, 'Give folders that exist here.');
    }
  }
  return resolved;
}

/** Refuses a path outside the roots or unreadable here (a job never makes a worker read elsewhere). */
async function checkPath(path: string, what: string, roots: string[], mode: number): Promise<void> {
  let real: string;
  try {
    real = await realpath(path);
    await access(real, mode);
  } catch (error) {
    throw new JobRefusedError(
      `Worker ${HOST} cannot ${mode === constants.W_OK ? 'write' : 'read'} the ${what} "${path}" ` +
        `(${(error as NodeJS.ErrnoException).code ?? (error as Error).message}).`,
      'Mount the shared storage at the same path on every machine (NFS and the like), or run the worker where it is.',
    );
  }
  if (!roots.some((root) => real === root || real.startsWith(root + sep))) {
    throw new JobRefusedError(
      `Worker ${HOST} refuses the ${what} "${path}": it lies outside the folders it may use (${roots.join(', ')}).`,
      'Start the worker with --allow-root for the shared storage that holds it.',
    );
  }
}

/** The checks every job passes before any work: paths, model and slide checksums. */
async function checkJob(data: SlideJobData, roots: string[]): Promise<void> {
  await checkPath(data.slide, 'slide', roots, constants.R_OK);
  await checkPath(data.model, 'model folder', roots, constants.R_OK);
  await checkPath(data.out, 'output folder', roots, constants.W_OK);
  const { checksum, manifest } = await modelChecksum(data.model);
  if (checksum !== data.modelChecksum || manifest.architecture.name !== data.architecture) {
    throw new JobRefusedError(
      `Worker ${HOST} refuses ${data.slide}: its model "${data.model}" has checksum ${checksum.slice(0, 12)}… ` +
        `(architecture ${manifest.architecture.name}) but the job was submitted for ${data.modelChecksum.slice(0, 12)}… ` +
        `(architecture ${data.architecture}).`,
      'Every machine must see the same model folder: copy the model again, or submit the slides again with it.',
    );
  }
  const sha = await fileSha256(data.slide);
  if (sha !== data.slideSha256) {
    throw new JobRefusedError(
      `Worker ${HOST} refuses ${data.slide}: the slide here has SHA-256 ${sha.slice(0, 12)}… but the job was ` +
        `submitted for ${data.slideSha256.slice(0, 12)}….`,
      'The slide changed or differs between machines: submit it again.',
    );
  }
}

/** Sums the timings of the regions of a slide (those of jobs from before region results carried them count 0). */
function regionTimings(children: RegionResult[]): { readMs: number; inferMs: number; mergeMs: number } {
  const sum = { readMs: 0, inferMs: 0, mergeMs: 0 };
  for (const { timings } of children) {
    sum.readMs += timings?.readMs ?? 0;
    sum.inferMs += timings?.inferMs ?? 0;
    sum.mergeMs += timings?.mergeMs ?? 0;
  }
  return sum;
}

/**
 * Writes a slide's outputs: the regions the streamed assembly has not merged, then the final files, under the run's
 * assembly lock; `written` counts the regions this took. Work left by streamed merging that cannot be continued
 * (damaged, or of other settings) is dropped and the outputs are written from all the region files.
 */
async function writeSlide(
  data: SlideJobData,
  options: PredictSlideOptions,
  results: Omit<RegionResults, 'read' | 'workDir'>,
  assembler: Assembler,
  log: (line: string) => void,
): Promise<{ run: TilerRun; outputs: SlideOutputs; written: number }> {
  const workDir = assemblyDir(data.out, data.slide, data.run);
  const read = regionReader(data, results.engine);
  const lock = await assembler.lock(data.run);
  let written = 0;
  try {
    const readOrFail = async (region: SlideRegion) => {
      written++;
      const bands = await read(region);
      if (!bands) {
        throw new Error(
          `the result of region ${region.index} (rows ${region.y}-${region.y + region.height - 1} of stripe ` +
            `${region.stripe}) is missing or does not verify in ${regionDir(data.out, data.slide, data.run)}`,
        );
      }
      return bands;
    };
    const assemble = async () => {
      written = 0;
      const merged = { ...results, read: readOrFail, workDir };
      return { ...(await assembleSlidePrediction(data.slide, { ...options, signal: lock.signal }, merged)), written };
    };
    try {
      return await assemble();
    } catch (error) {
      if ((error as { code?: string }).code !== 'E_PARTIAL_WORK') throw error;
      log(`slide ${data.slide}: ${(error as Error).message} Writing it from all the region files instead.`);
      await rm(workDir, { recursive: true, force: true });
      return await assemble();
    }
  } finally {
    await lock.release();
  }
}

/** Runs a job's work; a refusal fails the job at once (no retry), anything else may be retried. */
async function refusing<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof JobRefusedError) throw new UnrecoverableError(`${error.message} ${error.hint ?? ''}`.trim());
    throw error;
  }
}

/**
 * Starts a worker on both queues of a server. Region jobs run `concurrency` at a time; slide jobs one at a time.
 * @throws {@link QueueConnectionError} when the server cannot be reached, {@link QueueOptionError} for bad roots.
 */
export async function startWorker(options: WorkerOptions): Promise<RunningWorker> {
  const roots = await resolveRoots(options.allowRoots);
  await connect(options.target);
  const name = `${HOST}:${process.pid}`;
  const log = options.log ?? (() => undefined);
  const connection = { ...options.target.redis, lazyConnect: false };
  const common = {
    connection,
    prefix: options.prefix ?? 'bull',
    name,
    lockDuration: options.lockDuration ?? 30_000,
    stalledInterval: options.stalledInterval ?? 30_000,
    maxStalledCount: 3,
  };
  // Runtimes and pools are kept per model (path and checksum) and runtime, for the worker's lifetime.
  const prepared = new Map<string, Promise<PreparedJob>>();
  const runtimeKey = (data: SlideJobData) =>
    `${data.model}\0${data.modelChecksum}\0${data.settings.runtime}\0${data.settings.backend ?? ''}\0` +
    `${data.settings.precision ?? 'fp32'}\0${data.settings.int8Sha256 ?? ''}`;
  const prepare = (data: SlideJobData) => {
    const key = runtimeKey(data);
    let entry = prepared.get(key);
    if (!entry) {
      entry = options.prepare(data);
      prepared.set(key, entry);
      entry.catch(() => prepared.delete(key));
    }
    return entry;
  };
  /** The tiler's setup of a job on this machine: its prepared runtime, with this worker's threads. */
  const localFor = async (data: SlideJobData): Promise<PreparedJob> => {
    const prepared = await prepare(data);
    return { ...prepared, workers: options.workers ?? prepared.workers };
  };
  // One pool of tiler threads per model and runtime, kept across region jobs (each thread loads the model once).
  const pools = new Map<string, Promise<TilerPool>>();
  const poolFor = (data: SlideJobData, local: LocalTiler) => {
    const key = runtimeKey(data);
    let pool = pools.get(key);
    if (!pool) {
      pool = createTilerPool(tilerOptions(data, local));
      pools.set(key, pool);
      pool.catch(() => pools.delete(key));
    }
    return pool;
  };
  // Plans per run (the tissue mask reads a thumbnail of the slide): the regions of a slide share one.
  const plans = new Map<string, Promise<SlidePlan>>();
  const planFor = (data: SlideJobData, local: LocalTiler) => {
    let plan = plans.get(data.run);
    if (!plan) {
      plan = planSlidePrediction(data.slide, tilerOptions(data, local));
      plans.set(data.run, plan);
      plan.catch(() => plans.delete(data.run));
      if (plans.size > 16) plans.delete(plans.keys().next().value!);
    }
    return plan;
  };

  // Streamed assembly: regions are merged into their slide's outputs as they finish, by whichever worker is free.
  const client = new Redis(connection);
  client.on('error', () => undefined); // the BullMQ workers report the server's errors
  const assembler = createAssembler({ client, prefix: common.prefix, lockMs: common.lockDuration, log });
  const merging = new Set<Promise<void>>();
  /** Merges the ready regions of a job's slide after the job, without holding up the next region. */
  const advance = (data: SlideJobData, engine: string) => {
    const work = (async () => {
      const local = await localFor(data);
      const job = { data, engine, plan: await planFor(data, local), options: outputOptions(data, local) };
      await assembler.advance(job);
    })().catch((error: Error) => log(`slide ${data.slide}: regions not merged yet: ${error.message}`));
    merging.add(work);
    void work.finally(() => merging.delete(work));
  };

  const regions = new Worker<RegionJobData, RegionResult>(
    QUEUES.regions,
    (job: Job<RegionJobData>) =>
      refusing(async () => {
        const started = performance.now();
        const data = job.data;
        const region = data.region;
        await checkJob(data, roots);
        const file = regionFile(data.out, data.slide, data.run, region);
        const existing = await readRegionFile(file, data.run, region);
        const pixels = region.width * region.height;
        if (existing) {
          log(`region ${region.index} of ${data.slide}: verified result found, not computed again`);
          const { engine, tiles, timings } = existing.header;
          advance(data, engine);
          return { region: region.index, pixels, engine, tiles, timings, reused: true, host: HOST, wallMs: 0 };
        }
        log(`region ${region.index} of ${data.slide}: started`);
        const local = await localFor(data);
        const [pool, plan] = await Promise.all([poolFor(data, local), planFor(data, local)]);
        const bands: QuantizedBand[] = [];
        const planned = { probabilities: data.settings.probabilities };
        const run = await streamSlidePrediction(
          data.slide,
          { ...tilerOptions(data, local), region, pool, plan },
          {
            probabilities: planned.probabilities,
            band: (band) => {
              bands.push(
                quantizeBand(band, band.probabilities.length / (band.width * band.height) || 0, planned.probabilities),
              );
            },
          },
        );
        const wallMs = performance.now() - started;
        const timings = { ...run.timings, wallMs };
        await writeRegionFile(
          file,
          {
            run: data.run,
            region,
            engine: run.engine,
            tiles: run.tilesPredicted,
            timings,
            host: HOST,
          },
          bands,
        );
        advance(data, run.engine);
        log(
          `region ${region.index} of ${data.slide}: ${run.tilesPredicted} tiles, ${(pixels / 1e6 / (wallMs / 1000)).toFixed(2)} Mpx/s`,
        );
        return {
          region: region.index,
          pixels,
          engine: run.engine,
          tiles: run.tilesPredicted,
          timings,
          reused: false,
          host: HOST,
          wallMs,
        };
      }),
    { ...common, concurrency: options.concurrency ?? 1 },
  );

  const slides = new Worker<SlideJobData, unknown>(
    QUEUES.slides,
    (job: Job<SlideJobData>) =>
      refusing(async () => {
        const data = job.data;
        await checkJob(data, roots);
        const local = await localFor(data);
        const plan = await planFor(data, local);
        const children = Object.values(await job.getChildrenValues()) as RegionResult[];
        const engines = [...new Set(children.map((c) => c.engine))];
        if (engines.length !== 1) {
          throw new JobRefusedError(
            `${data.slide}: its regions were computed with different engines (${engines.join(' | ')}), so the ` +
              'output would not be that of one run.',
            'Run every worker with the same runtime and versions, then submit the slide again.',
          );
        }
        // The same cut as the submitter's.
        const all = splitRegions(plan, data.tileRows);
        if (all.length !== data.regions) {
          throw new JobRefusedError(
            `${data.slide}: the slide cuts into ${all.length} regions here but into ${data.regions} where it was ` +
              'submitted (another version of Tessera?).',
            'Run the same version of Tessera on every machine.',
          );
        }
        const tiles = children.reduce((n, c) => n + c.tiles, 0);
        const { run, outputs, written } = await writeSlide(
          data,
          { ...outputOptions(data, local), plan },
          { engine: engines[0], regions: all, tilesPredicted: tiles, timings: regionTimings(children) },
          assembler,
          log,
        );
        const result = options.finalize ? await options.finalize(data, run, outputs) : { labels: outputs.labels };
        const dir = regionDir(data.out, data.slide, data.run);
        await rm(dir, { recursive: true, force: true });
        await rmdir(dirname(dir)).catch(() => undefined); // when no other run of the slide is under way
        await assembler.forget(data.run);
        log(
          `slide ${data.slide}: outputs written (${tiles} tiles over ${all.length} regions, ${written} of them by the ` +
            'slide job)',
        );
        return result;
      }),
    { ...common, concurrency: 1 },
  );

  for (const worker of [regions, slides]) {
    worker.on('failed', (job, error) => log(`job ${job?.id ?? '?'} failed: ${error.message}`));
    worker.on('error', (error) => log(`queue: ${error.message}`));
  }
  return {
    name,
    close: async (force = false) => {
      await Promise.all([regions.close(force), slides.close(force)]);
      await Promise.all(merging);
      client.disconnect();
      for (const pool of pools.values()) await (await pool.catch(() => undefined))?.destroy();
      for (const entry of prepared.values()) await (await entry.catch(() => undefined))?.cleanup?.();
    },
  };
}
