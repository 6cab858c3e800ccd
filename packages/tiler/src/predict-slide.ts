/**
 * Whole-slide prediction: the splitter lays tiles over a level, a Piscina pool of workers reads and predicts them,
 * the merger blends them band by band, and the writer streams the bands to pyramidal TIFFs.
 */
import { mkdir } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { imageStem, OutputError, readManifest, type ModelManifest } from '@tessera/core';
import { TilerOptionError } from './errors.js';
import { BandMerger, type Band } from './merger.js';
import { chooseLevel, openSlide, readThumbnail, type SlideInfo } from './slide.js';
import { checkTileOptions, defaultOverlap, markTissue, splitLevel, tissueMask, type TilePlan } from './splitter.js';
import { rethrowFailure, type InitResult, type PredictResult, type PredictTask, type TaskFailure } from './worker.js';
import { SlideOutputWriter, type SlideOutputs } from './writer.js';

/** Options of {@link predictSlide} and {@link streamSlidePrediction}; all optional but `model`. */
export interface TilerOptions {
  /** Model folder written by `tessera train`. */
  model: string;
  /** Worker threads. Default: `os.availableParallelism()`, at most 8. */
  workers?: number;
  /** Tiles per network call. Default 4. */
  batchSize?: number;
  /** Tile side in pixels, a multiple of the architecture's input multiple. Default 512 rounded up to it. */
  tile?: number;
  /**
   * Overlap of neighbouring tiles. Default `2 * roundUp(ceil(receptiveField / 2), inputMultiple)`: each tile then
   * keeps only pixels whose receptive field lies inside it, and the result does not depend on the tiling.
   */
  overlap?: number;
  /** µm/px to predict at. Default: the model's µm/px when the model and the slide both know theirs, else level 0. */
  mpp?: number;
  /** Skip tiles without tissue (Otsu on a thumbnail's saturation). Default true. */
  tissue?: boolean;
  /** Tile blending weights. Default `gaussian`. */
  blend?: 'gaussian' | 'constant';
  /** Compute engine of the workers. Default `auto` (or `TESSERA_BACKEND`). */
  backend?: string;
  /** Architecture plugin modules the workers import before loading the model (see the worker's `init`). */
  plugins?: string[];
  /** Batches in flight at once (backpressure). Default `2 * workers`. */
  maxInFlight?: number;
  /** Cancels the run: running tasks are stopped and no output is finalised. */
  signal?: AbortSignal;
  /** Called after each batch. */
  onProgress?: (progress: TilerProgress) => void;
}

/** {@link TilerOptions} with every default filled in. */
export interface ResolvedTilerOptions
  extends Required<Omit<TilerOptions, 'mpp' | 'signal' | 'onProgress' | 'backend'>> {
  mpp: number | null;
  backend: string | undefined;
}

/** Progress of a run. */
export interface TilerProgress {
  tilesDone: number;
  tilesTotal: number;
  /** Output pixels finished (rows emitted times width). */
  pixelsDone: number;
  pixelsTotal: number;
  elapsedMs: number;
}

/** What a run did. */
export interface TilerRun {
  slide: SlideInfo;
  level: number;
  scale: number;
  /** µm/px of the output, or `null`. */
  mpp: number | null;
  width: number;
  height: number;
  options: ResolvedTilerOptions;
  plan: Omit<TilePlan, 'tiles'>;
  tilesPredicted: number;
  tilesSkipped: number;
  engine: string;
  /** Wall time, and time summed over workers reading tiles and running the network. */
  timings: { wallMs: number; readMs: number; inferMs: number; mergeMs: number };
  /** Largest number of output rows held in the merger at once. */
  peakRows: number;
}

/** The size and µm/px of the output, known before the first band. */
export interface OutputGeometry {
  width: number;
  height: number;
  mpp: number | null;
  level: number;
  scale: number;
  numClasses: number;
}

/** Receives a run's output: `start` once, then every band top to bottom. */
export interface BandSink {
  start?: (geometry: OutputGeometry) => void | Promise<void>;
  band: (band: Band) => void | Promise<void>;
}

/** Defaults of {@link TilerOptions}. */
export const TILER_DEFAULTS = { batchSize: 4, tile: 512, tissue: true, blend: 'gaussian', maxWorkers: 8 } as const;

function positiveInteger(value: unknown, flag: string, hint: string): void {
  if (!(Number.isInteger(value) && (value as number) > 0)) {
    throw new TilerOptionError(`Expected ${flag} to be a positive integer but received ${String(value)}.`, hint);
  }
}

/**
 * Fills in the defaults of {@link TilerOptions} for a model, and checks them once.
 * @throws {@link TilerOptionError} naming the option, what was expected and what came.
 */
export function resolveTilerOptions(options: TilerOptions, manifest: ModelManifest): ResolvedTilerOptions {
  const multiple = manifest.architecture.inputMultiple;
  const workers = options.workers ?? Math.min(TILER_DEFAULTS.maxWorkers, availableParallelism());
  positiveInteger(workers, '--workers', 'Use --workers 1 up to the number of CPU cores.');
  const batchSize = options.batchSize ?? TILER_DEFAULTS.batchSize;
  positiveInteger(batchSize, '--batch', 'Use --batch 1 to 16.');
  const tile = options.tile ?? Math.ceil(TILER_DEFAULTS.tile / multiple) * multiple;
  const overlap = options.overlap ?? defaultOverlap(manifest.architecture.receptiveField, multiple);
  if (options.overlap === undefined && overlap >= tile) {
    throw new TilerOptionError(
      `The model's receptive field (${manifest.architecture.receptiveField} px) needs an overlap of ${overlap} px, ` +
        `which is not smaller than --tile ${tile}.`,
      `Use a larger --tile, e.g. --tile ${Math.ceil((overlap * 2) / multiple) * multiple}, or give --overlap.`,
    );
  }
  checkTileOptions(tile, overlap, multiple);
  if (options.mpp !== undefined && !(options.mpp > 0)) {
    throw new TilerOptionError(`Expected --mpp to be a positive number but received ${options.mpp}.`);
  }
  const maxInFlight = options.maxInFlight ?? 2 * workers;
  positiveInteger(maxInFlight, 'maxInFlight', 'Allow at least one batch in flight.');
  if (options.blend !== undefined && options.blend !== 'gaussian' && options.blend !== 'constant') {
    throw new TilerOptionError(`Expected blend "gaussian" or "constant" but received "${String(options.blend)}".`);
  }
  return {
    model: options.model,
    workers,
    batchSize,
    tile,
    overlap,
    mpp: options.mpp ?? null,
    tissue: options.tissue ?? TILER_DEFAULTS.tissue,
    blend: options.blend ?? TILER_DEFAULTS.blend,
    backend: options.backend,
    plugins: options.plugins ?? [],
    maxInFlight,
  };
}

/** Path of the compiled worker module (tests run from `src/`, the worker always from `dist/`). */
function workerFile(): string {
  const here = fileURLToPath(import.meta.url);
  return here.endsWith('.ts') ? join(dirname(here), '../dist/worker.js') : join(dirname(here), 'worker.js');
}

/**
 * Predicts a slide tile by tile in a pool of worker threads and hands the finished bands of the output, top to
 * bottom, to `sink.band` (probabilities `[rows, width, numClasses]` and class indices). Memory stays bounded by a few
 * tile rows of the output whatever the slide size.
 * @throws {@link SlideFormatError} for unreadable slides, {@link TilerOptionError} for bad options, and core's
 * `ModelFormatError`/`EngineError` from the workers.
 * @example
 * const run = await streamSlidePrediction('slide.svs', { model: 'runs/unet', workers: 2 }, { band: (b) => save(b) });
 */
export async function streamSlidePrediction(
  slidePath: string,
  options: TilerOptions,
  sink: BandSink,
): Promise<TilerRun> {
  const started = performance.now();
  const manifest = await readManifest(options.model);
  const resolved = resolveTilerOptions(options, manifest);
  const slide = await openSlide(slidePath);
  let level = 0;
  let scale = 1;
  let mpp: number | null = slide.mpp ? (slide.mpp.x + slide.mpp.y) / 2 : null;
  const wanted = resolved.mpp ?? (slide.mpp && manifest.mpp ? manifest.mpp : null);
  if (wanted !== null) ({ level, scale, mpp } = chooseLevel(slide, wanted));
  const base = slide.levels[level];
  const width = Math.round(base.width * scale);
  const height = Math.round(base.height * scale);
  const multiple = manifest.architecture.inputMultiple;
  const plan = splitLevel({
    width,
    height,
    tile: resolved.tile,
    overlap: resolved.overlap,
    multiple,
    context: Math.ceil(Math.ceil(manifest.architecture.receptiveField / 2) / multiple) * multiple,
  });
  if (resolved.tissue && slide.channels === 3) {
    const thumbnail = await readThumbnail(slide, 1024);
    markTissue(plan, tissueMask(thumbnail), thumbnail.width, thumbnail.height);
  }
  const k = manifest.classes.length;
  const pending: Band[] = [];
  const merger = new BandMerger({ plan, numClasses: k, blend: resolved.blend, onBand: (band) => pending.push(band) });
  const flush = async () => {
    while (pending.length) await sink.band(pending.shift()!);
  };
  await sink.start?.({ width, height, mpp, level, scale, numClasses: k });
  const pool = new Piscina({
    filename: workerFile(),
    minThreads: resolved.workers,
    maxThreads: resolved.workers,
    idleTimeout: 1000,
  });
  const signal = options.signal;
  const timings = { wallMs: 0, readMs: 0, inferMs: 0, mergeMs: 0 };
  let tilesDone = 0;
  let pixelsDone = 0;
  let engine = '';
  const toPredict = plan.tiles.filter((t) => t.tissue);
  try {
    const init = rethrowFailure<InitResult>(
      await pool.run(
        { model: resolved.model, backend: resolved.backend, plugins: resolved.plugins },
        { name: 'init', signal },
      ),
    );
    engine = init.engine;
    for (const tile of plan.tiles) {
      if (!tile.tissue) {
        merger.skip(tile);
        tilesDone++;
      }
    }
    const inFlight = new Set<Promise<void>>();
    const bounds = { width, height };
    for (let i = 0; i < toPredict.length; i += resolved.batchSize) {
      const batch = toPredict.slice(i, i + resolved.batchSize);
      const task: PredictTask = {
        model: resolved.model,
        backend: resolved.backend,
        plugins: resolved.plugins,
        slide,
        level,
        scale,
        bounds,
        tileWidth: plan.tileWidth,
        tileHeight: plan.tileHeight,
        tiles: batch.map((t) => ({ x: t.x, y: t.y })),
      };
      const run = pool.run(task, { name: 'predict', signal }) as Promise<PredictResult | TaskFailure>;
      const promise = run.then(async (outcome) => {
        const result = rethrowFailure(outcome);
        const mergeStart = performance.now();
        const per = plan.tileWidth * plan.tileHeight * k;
        batch.forEach((tile, j) => merger.aggregate(tile, result.probabilities.subarray(j * per, (j + 1) * per)));
        timings.readMs += result.readMs;
        timings.inferMs += result.inferMs;
        tilesDone += batch.length;
        for (const band of pending) pixelsDone += band.height * band.width;
        await flush();
        timings.mergeMs += performance.now() - mergeStart;
        options.onProgress?.({
          tilesDone,
          tilesTotal: plan.tiles.length,
          pixelsDone,
          pixelsTotal: width * height,
          elapsedMs: performance.now() - started,
        });
      });
      const tracked = promise.finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
      if (inFlight.size >= resolved.maxInFlight) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    await flush();
    if (!merger.complete) throw new Error(`internal: merger incomplete after ${tilesDone} tiles`);
  } finally {
    await pool.destroy();
  }
  timings.wallMs = performance.now() - started;
  const { tiles: _tiles, ...planSummary } = plan;
  return {
    slide,
    level,
    scale,
    mpp,
    width,
    height,
    options: resolved,
    plan: planSummary,
    tilesPredicted: toPredict.length,
    tilesSkipped: plan.tiles.length - toPredict.length,
    engine,
    timings,
    peakRows: merger.peakRows,
  };
}

/** Options of {@link predictSlide}. */
export interface PredictSlideOptions extends TilerOptions {
  /** Output folder; created when missing. */
  out: string;
  /** Also write one 8-bit probability pyramid per class. Default false. */
  probabilities?: boolean;
}

/**
 * Predicts a whole slide and writes `<stem>_labels.tif` (tiled pyramidal TIFF of class values with the slide's
 * geometry and µm/px), `<stem>_overlay.png`, `<stem>_areas.json`/`.csv` and, with `probabilities`,
 * `<stem>_prob_<class>.tif`. Files appear only when complete; an interrupted run leaves none.
 * @throws as {@link streamSlidePrediction}, and core's `OutputError` when `out` cannot be written.
 * @example
 * const { outputs, run } = await predictSlide('CMU-1.svs', { model: 'runs/he', out: 'predictions' });
 */
export async function predictSlide(
  slidePath: string,
  options: PredictSlideOptions,
): Promise<{ run: TilerRun; outputs: SlideOutputs }> {
  const manifest = await readManifest(options.model);
  try {
    await mkdir(options.out, { recursive: true });
  } catch (error) {
    throw new OutputError(
      `Cannot create the output folder "${options.out}": ${(error as Error).message}.`,
      'Choose a writable --out.',
      error,
    );
  }
  let writer: SlideOutputWriter | undefined;
  const stem = imageStem(basename(slidePath)).replace(/\.ome$/i, '');
  try {
    const run = await streamSlidePrediction(slidePath, options, {
      start: (geometry) => {
        writer = new SlideOutputWriter({
          dir: options.out,
          stem,
          width: geometry.width,
          height: geometry.height,
          classes: manifest.classes,
          mpp: geometry.mpp === null ? null : { x: geometry.mpp, y: geometry.mpp },
          probabilities: options.probabilities,
        });
      },
      band: (band) => writer!.write(band),
    });
    const thumbnail = await readThumbnail(run.slide, 1024);
    const outputs = await writer!.finish(thumbnail);
    return { run, outputs };
  } catch (error) {
    await writer?.abort();
    throw error;
  }
}
