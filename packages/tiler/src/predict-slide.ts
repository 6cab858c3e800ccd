/**
 * Whole-slide prediction: the splitter lays tiles over a level, a Piscina pool of workers reads and predicts them,
 * the merger blends them band by band, and the writer streams the bands to pyramidal TIFFs. Finished rows are
 * journaled in a partial work folder, so an interrupted prediction continues where it stopped.
 */
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import {
  backgroundClass,
  imageStem,
  makeOutputDir,
  OutputError,
  readManifest,
  receptiveContext,
  writeFileAtomic,
  type ModelManifest,
} from '@tessera/core';
import { partialDamaged, partialMismatch, PredictionInterruptedError, TilerOptionError } from './errors.js';
import { BandMerger, RowPool, type Band } from './merger.js';
import { checkObjectType } from './geojson.js';
import { checkMinArea } from './polygons.js';
import { chooseLevel, openSlide, readThumbnail, verifySlide, type SlideInfo } from './slide.js';
import {
  markTissue,
  resolveTileOptions,
  splitLevel,
  splitStripes,
  tissueMask,
  type Stripe,
  type TileLocation,
  type TilePlan,
} from './splitter.js';
import { rethrowFailure, type InitResult, type PredictResult, type PredictTask, type TaskFailure } from './worker.js';
import { SlideOutputWriter, type QuantizedBand, type SlideOutputs } from './writer.js';

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
  /**
   * Skip tiles without tissue (Otsu on a thumbnail's saturation); their pixels get the background class (core's
   * `backgroundClass`), or class index 0 when the model has none. Default true.
   */
  tissue?: boolean;
  /** Tile blending weights. Default `gaussian`. */
  blend?: 'gaussian' | 'constant';
  /** Compute engine of the workers. Default `auto` (or `TESSERA_BACKEND`). */
  backend?: string;
  /** Architecture plugin modules the workers import before loading the model (see the worker's `init`). */
  plugins?: string[];
  /**
   * Run this ONNX export of the model with onnxruntime-node (`@tessera/onnx`) instead of tfjs, with `threads`
   * per worker (default: the cores divided between the workers).
   */
  onnx?: { file: string; threads?: number; device?: string };
  /**
   * Widest output stripe in pixels: a wider output is predicted in vertical stripes one after the other, so memory
   * does not grow with the slide's width (the tiles along a stripe boundary are predicted for both stripes).
   * Default 16384.
   */
  stripeWidth?: number;
  /**
   * Batches in flight at once (backpressure). Default `3 * workers`: besides the batches the workers hold (being
   * read, being predicted), one waits in the pool's queue, so a worker that finishes a batch starts the next at once
   * instead of waiting for the main thread to blend and write the finished one.
   */
  maxInFlight?: number;
  /**
   * Stops the run: no new batch is started, the batches in flight finish and their rows reach the sink (workers are
   * never killed mid-tile), then the run rejects with the signal's reason and no output is finalised.
   */
  signal?: AbortSignal;
  /** Called after each batch. */
  onProgress?: (progress: TilerProgress) => void;
  /**
   * Predict only these rows of one stripe ({@link splitRegions}), for distributed prediction: the bands handed to the
   * sink cover exactly the region's rows, with the same bits as the same rows of a run over the whole slide (the
   * tiles reaching the region are predicted in the same batches as in a whole run). The sink's `start` return value
   * is ignored. Default: the whole slide.
   */
  region?: SlideRegion;
  /** A plan made before by {@link planSlidePrediction} with the same slide and options (saves planning again). */
  plan?: SlidePlan;
  /** A pool of worker threads kept across runs ({@link createTilerPool}); default: a pool of this run's own. */
  pool?: TilerPool;
}

/** Rows `y..y+height-1` of stripe `stripe` of a slide's output (columns `x..x+width-1`). */
export interface SlideRegion {
  /** Position of the region in {@link splitRegions}' list. */
  index: number;
  stripe: number;
  x: number;
  y: number;
  width: number;
  height: number;
}

/** {@link TilerOptions} with every default filled in. */
export interface ResolvedTilerOptions
  extends Required<
    Omit<TilerOptions, 'mpp' | 'signal' | 'onProgress' | 'backend' | 'onnx' | 'region' | 'plan' | 'pool'>
  > {
  mpp: number | null;
  backend: string | undefined;
  onnx: { file: string; threads: number; device?: string } | undefined;
}

/** Progress of a run; a resumed run counts only the work left to it (tiles and rows below the finished rows). */
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
  /** Tiles run through the network by this run, and tiles skipped as background. */
  tilesPredicted: number;
  tilesSkipped: number;
  /**
   * Where this run started: the stripe, and the rows at its top, that an interrupted run had finished (0 and 0 for
   * a fresh run). Earlier stripes were finished too.
   */
  resumedRows: number;
  resumedStripe: number;
  /** Output pixels that the interrupted run had finished. */
  resumedPixels: number;
  /** Stripes the output was cut into (1 unless wider than `stripeWidth`). */
  stripes: number;
  engine: string;
  /** Wall time, and time summed over workers reading tiles and running the network. */
  timings: { wallMs: number; readMs: number; inferMs: number; mergeMs: number };
  /** Largest number of output rows held in the merger at once. */
  peakRows: number;
}

/** The size and µm/px of the output, known before the first band, with the settings that shape it. */
export interface OutputGeometry {
  width: number;
  height: number;
  mpp: number | null;
  level: number;
  scale: number;
  numClasses: number;
  /** The options in effect. */
  options: ResolvedTilerOptions;
  /** The engine the workers run (`wasm`, `tfjs-node`...). */
  engine: string;
  /**
   * The vertical stripes the output is cut into, left to right (one unless wider than `stripeWidth`): bands of a
   * stripe come top to bottom, stripe after stripe.
   */
  stripes: { x: number; width: number }[];
}

/** Receives a run's output: `start` once, then every band top to bottom. */
export interface BandSink {
  /**
   * Called once, before the first band. May return where an interrupted run with the same settings stopped: the
   * stripe and the finished rows at its top (a number: rows of stripe 0). Bands then start there, and only the tiles
   * that reach below those rows, and those of later stripes, are predicted. Default: the start.
   */
  start?: (geometry: OutputGeometry) => void | number | ResumePoint | Promise<void | number | ResumePoint>;
  band: (band: Band) => void | Promise<void>;
  /** Whether the sink uses `band.probabilities` (else they are left empty, which saves time). Default true. */
  probabilities?: boolean;
}

/** Defaults of {@link TilerOptions}. */
export const TILER_DEFAULTS = {
  batchSize: 4,
  tile: 512,
  tissue: true,
  blend: 'gaussian',
  maxWorkers: 8,
  stripeWidth: 16384,
} as const;

function positiveInteger(value: unknown, option: string, hint: string): void {
  if (!(Number.isInteger(value) && (value as number) > 0)) {
    throw new TilerOptionError(
      `Expected ${option} to be a positive integer but received ${String(value)}.`,
      hint,
      option,
    );
  }
}

/**
 * Fills in the defaults of {@link TilerOptions} for a model, and checks them once.
 * @throws {@link TilerOptionError} naming the option, what was expected and what came.
 */
export function resolveTilerOptions(options: TilerOptions, manifest: ModelManifest): ResolvedTilerOptions {
  const multiple = manifest.architecture.inputMultiple;
  const workers = options.workers ?? Math.min(TILER_DEFAULTS.maxWorkers, availableParallelism());
  positiveInteger(workers, 'workers', 'Set workers to 1 up to the number of CPU cores.');
  const batchSize = options.batchSize ?? TILER_DEFAULTS.batchSize;
  positiveInteger(batchSize, 'batchSize', 'Set batchSize to 1 to 16.');
  // The tiling of image prediction (core's resolveTiling): the same tile and overlap mean the same for both.
  const { tile, overlap } = resolveTileOptions({
    multiple,
    receptiveField: manifest.architecture.receptiveField,
    tile: options.tile ?? Math.ceil(TILER_DEFAULTS.tile / multiple) * multiple,
    overlap: options.overlap,
  });
  if (options.mpp !== undefined && !(options.mpp > 0)) {
    throw new TilerOptionError(`Expected mpp to be a positive number but received ${options.mpp}.`, undefined, 'mpp');
  }
  const stripeWidth = options.stripeWidth ?? TILER_DEFAULTS.stripeWidth;
  positiveInteger(stripeWidth, 'stripeWidth', 'Use a stripe width of at least the tile size, e.g. 16384.');
  const maxInFlight = options.maxInFlight ?? 3 * workers;
  positiveInteger(maxInFlight, 'maxInFlight', 'Allow at least one batch in flight.');
  if (options.blend !== undefined && options.blend !== 'gaussian' && options.blend !== 'constant') {
    throw new TilerOptionError(
      `Expected blend "gaussian" or "constant" but received "${String(options.blend)}".`,
      undefined,
      'blend',
    );
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
    onnx: options.onnx && {
      ...options.onnx,
      threads: options.onnx.threads ?? Math.max(1, Math.floor(availableParallelism() / workers)),
    },
    maxInFlight,
    stripeWidth,
  };
}

/** Class index given to the pixels of tiles skipped as background: the background class, else 0. */
function skippedTileClass(manifest: ModelManifest): number {
  const background = backgroundClass(manifest.classes);
  return background ? manifest.classes.indexOf(background) : 0;
}

/** Path of the compiled worker module (tests run from `src/`, the worker always from `dist/`). */
function workerFile(): string {
  const here = fileURLToPath(import.meta.url);
  return here.endsWith('.ts') ? join(dirname(here), '../dist/worker.js') : join(dirname(here), 'worker.js');
}

/** Everything a run over a slide decides before the first tile: the model, options, level, size and tile plan. */
export interface SlidePlan {
  manifest: ModelManifest;
  options: ResolvedTilerOptions;
  slide: SlideInfo;
  level: number;
  scale: number;
  mpp: number | null;
  width: number;
  height: number;
  plan: TilePlan;
  stripes: Stripe[];
  numClasses: number;
  /** Class index of the pixels of tiles skipped as background. */
  fallbackClass: number;
}

function createPiscina(resolved: ResolvedTilerOptions): Piscina {
  return new Piscina({
    filename: workerFile(),
    minThreads: resolved.workers,
    maxThreads: resolved.workers,
    // ONNX inference runs off the worker's JS thread, so a second task can read and decode its tiles meanwhile.
    concurrentTasksPerWorker: resolved.onnx ? 2 : 1,
    idleTimeout: 1000,
  });
}

/**
 * A pool of tiler worker threads kept across runs (region jobs of a distributed worker): the threads load each model
 * once and keep it, instead of a pool started and stopped per run. Pass it as {@link TilerOptions.pool} to runs with
 * the same `workers` and runtime; `destroy` it when done.
 */
export interface TilerPool {
  piscina: Piscina;
  destroy: () => Promise<void>;
}

/** Starts a {@link TilerPool} for runs with these options (their `workers` and runtime). */
export async function createTilerPool(options: TilerOptions): Promise<TilerPool> {
  const resolved = resolveTilerOptions(options, await readManifest(options.model));
  const piscina = createPiscina(resolved);
  return { piscina, destroy: () => piscina.destroy() };
}

/**
 * Plans the prediction of a slide as {@link streamSlidePrediction} does (the same level, size, tiles, tissue and
 * stripes), without predicting anything: what a coordinator needs to cut the work into regions.
 * @throws as {@link streamSlidePrediction} before its first tile.
 */
export async function planSlidePrediction(slidePath: string, options: TilerOptions): Promise<SlidePlan> {
  const manifest = await readManifest(options.model);
  const resolved = resolveTilerOptions(options, manifest);
  const slide = await openSlide(slidePath);
  await verifySlide(slide); // a slide no decoder reads fails here, before any output is made
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
    context: receptiveContext(manifest.architecture.receptiveField, multiple),
  });
  if (resolved.tissue && slide.channels === 3) {
    const thumbnail = await readThumbnail(slide, 1024);
    markTissue(plan, tissueMask(thumbnail), thumbnail.width, thumbnail.height);
  }
  const stripes = splitStripes(plan, resolved.stripeWidth);
  const numClasses = manifest.classes.length;
  return {
    manifest,
    options: resolved,
    slide,
    level,
    scale,
    mpp,
    width,
    height,
    plan,
    stripes,
    numClasses,
    fallbackClass: skippedTileClass(manifest),
  };
}

/**
 * Cuts a planned slide into regions of about `tileRows` rows of tiles each, stripe by stripe, top to bottom. Region
 * boundaries lie where a tile row's kept rows start, so each region needs only the tiles whose kept rows reach into
 * it (those of the tile rows at a boundary are predicted for both regions, with the same bits).
 * @example
 * const regions = splitRegions(await planSlidePrediction('CMU-1.svs', { model }), 4);
 */
export function splitRegions(slidePlan: SlidePlan, tileRows: number): SlideRegion[] {
  positiveInteger(tileRows, 'tileRows', 'Use regions of at least 1 row of tiles, e.g. 4.');
  const regions: SlideRegion[] = [];
  for (const stripe of slidePlan.stripes) {
    const { rows, keptRowStarts, height } = stripe.plan;
    for (let row = 0; row < rows; row += tileRows) {
      const y = row === 0 ? 0 : keptRowStarts[row];
      const end = row + tileRows >= rows ? height : keptRowStarts[row + tileRows];
      if (end > y) {
        regions.push({
          index: regions.length,
          stripe: stripe.index,
          x: stripe.x,
          y,
          width: stripe.width,
          height: end - y,
        });
      }
    }
  }
  return regions;
}

/** Refuses a region that is not one of {@link splitRegions} of this output. */
export function checkRegion(region: SlideRegion, stripes: Stripe[], height: number): void {
  const stripe = stripes[region.stripe];
  const ok =
    stripe !== undefined &&
    region.x === stripe.x &&
    region.width === stripe.width &&
    Number.isInteger(region.y) &&
    Number.isInteger(region.height) &&
    region.y >= 0 &&
    region.height > 0 &&
    region.y + region.height <= height;
  if (!ok) {
    throw new TilerOptionError(
      `Expected a region of this slide's output (${stripes.length} stripe(s), ${height} rows) but received ` +
        `${JSON.stringify(region)}.`,
      'Take regions from splitRegions() of the same slide, model and options.',
    );
  }
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
  const planned = options.plan ?? (await planSlidePrediction(slidePath, options));
  const { slide, level, scale, mpp, width, height, plan, stripes, numClasses: k, fallbackClass } = planned;
  const resolved = planned.options;
  const region = options.region;
  if (region) checkRegion(region, stripes, height);
  const pool = options.pool?.piscina ?? createPiscina(resolved);
  const signal = options.signal;
  const timings = { wallMs: 0, readMs: 0, inferMs: 0, mergeMs: 0 };
  let tilesDone = 0;
  let tilesTotal = 0;
  let pixelsDone = 0;
  let engine = '';
  let resumed: ResumePoint = { stripe: 0, row: 0 };
  let tilesPredicted = 0;
  let peakRows = 0;
  // Bands go to the sink one at a time, in order, even when batches finish together.
  let writing: Promise<void> = Promise.resolve();
  try {
    const init = rethrowFailure<InitResult>(
      await pool.run(
        { model: resolved.model, backend: resolved.backend, plugins: resolved.plugins, onnx: resolved.onnx },
        { name: 'init' },
      ),
    );
    signal?.throwIfAborted();
    engine = init.engine;
    const geometry = {
      width,
      height,
      mpp,
      level,
      scale,
      numClasses: k,
      options: resolved,
      engine,
      stripes: stripes.map((stripe) => ({ x: stripe.x, width: stripe.width })),
    };
    const asked = await sink.start?.(geometry);
    const resumeAt = region ? { stripe: region.stripe, row: region.y } : toResumePoint(asked, stripes.length, height);
    const regionEnd = region ? region.y + region.height : Infinity;
    resumed = resumeAt;
    const pixelsTotal = region
      ? region.width * region.height
      : width * height - resumedPixels(resumeAt, stripes, height);
    const runStripes = region ? [stripes[region.stripe]] : stripes.slice(resumeAt.stripe);
    // Tiles left to do, for progress: the rest of the stripe resumed in and every later stripe.
    const neededIn = (stripe: Stripe) => (tile: TileLocation) =>
      (stripe.index > resumeAt.stripe || stripe.plan.keptRowEnds[tile.row] > resumeAt.row) &&
      stripe.plan.keptRowStarts[tile.row] < regionEnd;
    for (const stripe of runStripes) tilesTotal += stripe.plan.tiles.filter(neededIn(stripe)).length;
    const bounds = { width, height };
    // One set of row accumulators for every stripe: memory is that of the widest stripe, not of all of them.
    const rows = new RowPool(Math.max(...stripes.map((s) => s.width)), k);
    for (const stripe of runStripes) {
      if (signal?.aborted) break;
      const startRow = stripe.index === resumeAt.stripe ? resumeAt.row : 0;
      const merger = new BandMerger({
        plan: stripe.plan,
        numClasses: k,
        fallbackClass,
        blend: resolved.blend,
        startRow,
        x: stripe.x,
        stripe: stripe.index,
        probabilities: sink.probabilities ?? true,
        pool: rows,
        onBand: (whole) => {
          // A region's last tiles also cover rows below it, which are not all summed: those rows are left out.
          const band = whole.y + whole.height > regionEnd ? cutBand(whole, regionEnd - whole.y) : whole;
          if (band.height <= 0) return;
          pixelsDone += band.height * band.width;
          writing = writing.then(() => sink.band(band));
          writing.catch(() => undefined); // awaited below; not an unhandled rejection meanwhile
        },
      });
      // A tile is needed when it keeps rows below the finished ones. Batches are cut as in a fresh run and sent when
      // any of their tiles is needed, so every tile is predicted in the same company (the same bits on any engine).
      const needed = neededIn(stripe);
      const tissueTiles = stripe.plan.tiles.filter((t) => t.tissue);
      const batches: TileLocation[][] = [];
      for (let i = 0; i < tissueTiles.length; i += resolved.batchSize) {
        const batch = tissueTiles.slice(i, i + resolved.batchSize);
        if (batch.some(needed)) batches.push(batch);
        else batch.forEach((tile) => merger.skip(tile));
      }
      for (const tile of stripe.plan.tiles) {
        if (!tile.tissue) {
          merger.skip(tile);
          if (needed(tile)) tilesDone++;
        }
      }
      const inFlight: Promise<void>[] = [];
      for (const batch of batches) {
        if (signal?.aborted) break;
        const task: PredictTask = {
          model: resolved.model,
          backend: resolved.backend,
          plugins: resolved.plugins,
          onnx: resolved.onnx,
          slide,
          level,
          scale,
          bounds,
          tileWidth: plan.tileWidth,
          tileHeight: plan.tileHeight,
          tiles: batch.map((t) => ({ x: stripe.tiles[t.index].x, y: t.y })),
        };
        tilesPredicted += batch.length;
        const run = pool.run(task, { name: 'predict' }) as Promise<PredictResult | TaskFailure>;
        const promise = run.then(async (outcome) => {
          const result = rethrowFailure(outcome);
          const mergeStart = performance.now();
          const per = plan.tileWidth * plan.tileHeight * k;
          batch.forEach((tile, j) => {
            if (!needed(tile)) return merger.skip(tile);
            merger.aggregate(tile, result.probabilities.subarray(j * per, (j + 1) * per));
            tilesDone++;
          });
          timings.readMs += result.readMs;
          timings.inferMs += result.inferMs;
          await writing;
          timings.mergeMs += performance.now() - mergeStart;
          options.onProgress?.({
            tilesDone,
            tilesTotal,
            pixelsDone,
            pixelsTotal,
            elapsedMs: performance.now() - started,
          });
        });
        promise.catch(() => undefined); // awaited in order below
        inFlight.push(promise);
        // Oldest first: the merger adds tiles in plan order, so later batches wait for it anyway.
        while (inFlight.length >= resolved.maxInFlight) await inFlight.shift();
      }
      while (inFlight.length) await inFlight.shift();
      await writing;
      signal?.throwIfAborted();
      peakRows = Math.max(peakRows, merger.peakRows);
      if (!merger.complete && !region) {
        throw new Error(`internal: stripe ${stripe.index} incomplete after ${tilesDone} tiles`);
      }
      if (region && merger.emittedRows < regionEnd) {
        throw new Error(`internal: region ${region.index} ended at row ${merger.emittedRows} of ${regionEnd}`);
      }
    }
    signal?.throwIfAborted();
  } finally {
    await writing.catch(() => undefined); // the sink has every band emitted so far, also when stopped
    if (!options.pool) await pool.destroy();
  }
  timings.wallMs = performance.now() - started;
  return tilerRun(planned, {
    tilesPredicted,
    resumedRows: resumed.row,
    resumedStripe: resumed.stripe,
    resumedPixels: resumedPixels(resumed, stripes, height),
    engine,
    timings,
    peakRows,
  });
}

/** The record of a run over a planned slide: the plan's description and what the run did. */
export function tilerRun(
  planned: SlidePlan,
  done: Pick<
    TilerRun,
    'tilesPredicted' | 'resumedRows' | 'resumedStripe' | 'resumedPixels' | 'engine' | 'timings' | 'peakRows'
  >,
): TilerRun {
  const { slide, level, scale, mpp, width, height, plan, stripes } = planned;
  const { tiles, ...planSummary } = plan;
  return {
    slide,
    level,
    scale,
    mpp,
    width,
    height,
    options: planned.options,
    plan: planSummary,
    tilesSkipped: tiles.filter((t) => !t.tissue).length,
    stripes: stripes.length,
    ...done,
  };
}

/** The first `rows` rows of a band. */
function cutBand(band: Band, rows: number): Band {
  const k = band.probabilities.length / (band.width * band.height) || 0;
  return {
    ...band,
    height: Math.max(0, rows),
    labels: band.labels.subarray(0, Math.max(0, rows) * band.width),
    probabilities: band.probabilities.subarray(0, Math.max(0, rows) * band.width * k),
  };
}

/** Where a run starts: the stripe, and the finished rows at its top. */
export interface ResumePoint {
  stripe: number;
  row: number;
}

/** A sink's `start` result as a resume point, checked against the output. */
export function toResumePoint(value: unknown, stripes: number, height: number): ResumePoint {
  const point = value ?? { stripe: 0, row: 0 };
  const { stripe, row } = typeof point === 'number' ? { stripe: 0, row: point } : (point as ResumePoint);
  const within = (n: number, max: number) => Number.isInteger(n) && n >= 0 && n <= max;
  if (!(within(stripe, stripes - 1) && within(row, height))) {
    throw new TilerOptionError(
      `Expected the first unfinished stripe (0 to ${stripes - 1}) and row (0 to ${height}) but received ` +
        `${JSON.stringify(point)}.`,
    );
  }
  return { stripe, row };
}

/** Output pixels finished before `point`. */
function resumedPixels(point: ResumePoint, stripes: { width: number }[], height: number): number {
  let pixels = point.row * stripes[point.stripe].width;
  for (let s = 0; s < point.stripe; s++) pixels += stripes[s].width * height;
  return pixels;
}

/** Least time between two journal entries of a slide prediction (each syncs the maps to the disk). */
const JOURNAL_INTERVAL_MS = 1000;

/** Options of {@link predictSlide}. */
export interface PredictSlideOptions extends TilerOptions {
  /** Output folder; created when missing. */
  out: string;
  /** Also write one 8-bit probability pyramid per class. Default false. */
  probabilities?: boolean;
  /**
   * Continue an interrupted prediction of this slide from its partial work folder `<out>/.<stem>.partial/`: the
   * finished rows are kept and only the tiles reaching the other rows are predicted, and the outputs are the same
   * bytes as those of an uninterrupted run. The folder must come from the same model, slide and settings. Without
   * `resume` (the default), a partial work folder is replaced.
   */
  resume?: boolean;
  /**
   * Also write `<stem>_polygons.geojson`: a GeoJSON FeatureCollection that QuPath imports, one polygon (with holes)
   * per 4-connected region of every class but the background class (core's `backgroundClass`), in level-0 pixel
   * coordinates of the slide. `minArea`: regions of fewer pixels of the label map are left out (default 0: every
   * region is kept, and the polygon areas per class add up to `<stem>_areas.json`'s pixels). `objectType`: QuPath
   * object type of the polygons, `'detection'` (default) or `'annotation'`. Default false.
   */
  geojson?: boolean | { minArea?: number; objectType?: 'detection' | 'annotation' };
}

/** What a partial work folder holds besides the maps: the settings it was made with and how far it got. */
interface PartialJournal {
  format: 'tessera-slide-partial';
  version: 2;
  settings: PartialSettings;
  /** The stripe being written and its rows finished and flushed to the maps (earlier stripes are complete). */
  stripe: number;
  rows: number;
  /** Pixels per class of everything finished. */
  counts: number[];
}

/** Everything that shapes the output bits; a partial work folder is resumed only when all of it matches. */
interface PartialSettings {
  slide: string;
  slideBytes: number;
  slideModified: string;
  modelWeights: string;
  modelTopology: string;
  classes: string;
  level: number;
  scale: number;
  mpp: number | null;
  width: number;
  height: number;
  tile: number;
  overlap: number;
  batchSize: number;
  blend: string;
  tissue: boolean;
  engine: string;
  probabilities: boolean;
  stripeWidth: number;
}

/** How each setting is named in messages. */
const SETTING_NAMES: Record<keyof PartialSettings, string> = {
  slide: 'slide',
  slideBytes: 'slide size (bytes)',
  slideModified: 'slide modification time',
  modelWeights: 'model weights (sha256)',
  modelTopology: 'model topology (sha256)',
  classes: 'classes',
  level: 'level',
  scale: 'scale',
  mpp: 'µm/px',
  width: 'output width',
  height: 'output height',
  tile: 'tile',
  overlap: 'overlap',
  batchSize: 'batchSize',
  blend: 'blend',
  tissue: 'tissue detection',
  engine: 'engine',
  probabilities: 'probabilities',
  stripeWidth: 'stripe width',
};

/** The partial work folder of a slide's prediction into `out`: `<out>/.<stem>.partial`. */
function partialWorkDir(out: string, stem: string): string {
  return join(out, `.${stem}.partial`);
}

/**
 * The journal of a partial work folder made with `settings`, `null` when there is none to resume.
 * @throws {@link PartialWorkError} when the folder was made with other settings or its journal is unreadable.
 */
async function readJournal(
  dir: string,
  settings: PartialSettings,
  numClasses: number,
  stripes: { width: number }[],
): Promise<PartialJournal | null> {
  let text: string;
  try {
    text = await readFile(join(dir, 'journal.json'), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw partialDamaged(dir, `its journal.json cannot be read (${(error as Error).message})`);
  }
  let journal: PartialJournal;
  try {
    journal = JSON.parse(text) as PartialJournal;
  } catch (error) {
    throw partialDamaged(dir, `its journal.json is not JSON (${(error as Error).message})`);
  }
  if (journal?.format !== 'tessera-slide-partial' || journal.version !== 2 || typeof journal.settings !== 'object') {
    throw partialDamaged(dir, 'its journal.json is not a version 2 journal of tessera predict');
  }
  for (const key of Object.keys(settings) as (keyof PartialSettings)[]) {
    if (JSON.stringify(journal.settings[key]) !== JSON.stringify(settings[key])) {
      throw partialMismatch(dir, SETTING_NAMES[key], journal.settings[key], settings[key]);
    }
  }
  const { stripe, rows, counts } = journal;
  const valid =
    Number.isInteger(stripe) &&
    stripe >= 0 &&
    stripe < stripes.length &&
    Number.isInteger(rows) &&
    rows >= 0 &&
    rows <= settings.height &&
    Array.isArray(counts) &&
    counts.length === numClasses &&
    counts.reduce((sum, n) => sum + n, 0) === resumedPixels({ stripe, row: rows }, stripes, settings.height);
  if (!valid) {
    throw partialDamaged(
      dir,
      `its journal.json says ${String(rows)} rows of stripe ${String(stripe)} with pixel counts that do not add up`,
    );
  }
  return journal;
}

/**
 * Predicts a whole slide and writes `<stem>_labels.tif` (tiled pyramidal TIFF of class values with the slide's
 * geometry and µm/px), `<stem>_overlay.png`, `<stem>_areas.json`/`.csv`, with `probabilities`
 * `<stem>_prob_<class>.tif` and with `geojson` `<stem>_polygons.geojson`. Files appear only when complete. Meanwhile the finished rows are journaled in
 * `<out>/.<stem>.partial/`, which an interrupted run (`signal`, or a killed process) leaves behind and a run with
 * `resume` continues from; it is removed on success.
 * @throws as {@link streamSlidePrediction}, core's `OutputError` when `out` cannot be written,
 * {@link PartialWorkError} when `resume` finds partial work made with other settings, and
 * {@link PredictionInterruptedError} (exit code 130) when `signal` stops the run.
 * @example
 * const { outputs, run } = await predictSlide('CMU-1.svs', { model: 'runs/he', out: 'predictions', resume: true });
 */
export async function predictSlide(
  slidePath: string,
  options: PredictSlideOptions,
): Promise<{ run: TilerRun; outputs: SlideOutputs }> {
  return writeSlideOutputs(slidePath, options, (sink) => streamSlidePrediction(slidePath, options, sink));
}

/** Receives the bands of a slide's output, as a run computes them or as region results bring them. */
export type OutputSink = Omit<BandSink, 'band'> & { band: (band: Band | QuantizedBand) => Promise<void> };

/** Where the rows of a slide's output come from: a run here, or region results computed elsewhere. */
export type BandProducer = (sink: OutputSink) => Promise<TilerRun>;

/** Where {@link writeSlideOutputs} keeps its partial work, and whether it writes the final files. */
export interface OutputWork {
  /** The partial work folder (maps and journal). Default `<out>/.<stem>.partial`. */
  dir?: string;
  /**
   * Stop once the producer is done, with the maps and the journal kept in `dir` for a later call with `resume`,
   * instead of writing the final files. Default false.
   */
  suspend?: boolean;
}

/**
 * predictSlide's work around a producer of bands: settings, partial work, the writer, and the final files (or, with
 * `work.suspend`, the journal of the rows written so far and no final file).
 */
export async function writeSlideOutputs(
  slidePath: string,
  options: PredictSlideOptions,
  produce: BandProducer,
  work?: OutputWork & { suspend?: false },
): Promise<{ run: TilerRun; outputs: SlideOutputs }>;
export async function writeSlideOutputs(
  slidePath: string,
  options: PredictSlideOptions,
  produce: BandProducer,
  work: OutputWork & { suspend: true },
): Promise<{ run: TilerRun; outputs?: undefined }>;
export async function writeSlideOutputs(
  slidePath: string,
  options: PredictSlideOptions,
  produce: BandProducer,
  work: OutputWork = {},
): Promise<{ run: TilerRun; outputs?: SlideOutputs }> {
  const manifest = await readManifest(options.model);
  if (typeof options.geojson === 'object') {
    checkMinArea(options.geojson.minArea, 'geojson.minArea');
    checkObjectType(options.geojson.objectType, 'geojson.objectType');
  }
  // Polygons are written in level-0 pixels: the output may be of a reduced level or scale.
  const geojsonOutput = async (geometry: OutputGeometry) => {
    const slide = await openSlide(slidePath);
    const scale = { x: slide.width / geometry.width, y: slide.height / geometry.height };
    const { minArea, objectType } = typeof options.geojson === 'object' ? options.geojson : {};
    return { scale, minArea, objectType };
  };
  await makeOutputDir(options.out); // folder by folder: a path under /proc fails at once instead of spinning
  let writer: SlideOutputWriter | undefined;
  const stem = imageStem(basename(slidePath)).replace(/\.ome$/i, '');
  const partial = work.dir ?? partialWorkDir(options.out, stem);
  let ownsPartial = false;
  let journaled: ResumePoint = { stripe: 0, row: 0 };
  let journaledAt = 0;
  let height = 0;
  let stripeCount = 1;
  let settings: PartialSettings;
  const journal = async () => {
    const { stripe, rows, counts } = writer!.checkpoint();
    const record: PartialJournal = { format: 'tessera-slide-partial', version: 2, settings, stripe, rows, counts };
    await writeFileAtomic(join(partial, 'journal.json'), JSON.stringify(record, null, 2) + '\n', { durable: true });
    journaled = { stripe, row: rows };
    journaledAt = performance.now();
  };
  try {
    const run = await produce({
      start: async (geometry) => {
        height = geometry.height;
        stripeCount = geometry.stripes.length;
        const file = await stat(slidePath);
        const o = geometry.options;
        settings = {
          slide: resolve(slidePath),
          slideBytes: file.size,
          slideModified: file.mtime.toISOString(),
          modelWeights: manifest.files.weights.sha256,
          modelTopology: manifest.files.topology.sha256,
          // Skipped tiles get the background class: named when it is not class 0 (older runs always used class 0).
          classes:
            manifest.classes.map((c) => `${c.name}=${c.value}`).join(', ') +
            (skippedTileClass(manifest) !== 0
              ? `; skipped tiles: ${manifest.classes[skippedTileClass(manifest)].name}`
              : ''),
          level: geometry.level,
          scale: geometry.scale,
          mpp: geometry.mpp,
          width: geometry.width,
          height: geometry.height,
          tile: o.tile,
          overlap: o.overlap,
          batchSize: o.batchSize,
          blend: o.blend,
          tissue: o.tissue,
          engine: geometry.engine,
          probabilities: !!options.probabilities,
          stripeWidth: o.stripeWidth,
        };
        const kept = options.resume
          ? await readJournal(partial, settings, manifest.classes.length, geometry.stripes)
          : null;
        try {
          if (!kept) {
            await rm(partial, { recursive: true, force: true });
            await mkdir(partial);
            ownsPartial = true;
          }
        } catch (error) {
          throw new OutputError(
            `Cannot create the partial work folder "${partial}": ${(error as Error).message}.`,
            'Choose a writable --out.',
            error,
          );
        }
        writer = new SlideOutputWriter({
          dir: options.out,
          stem,
          width: geometry.width,
          height: geometry.height,
          classes: manifest.classes,
          mpp: geometry.mpp === null ? null : { x: geometry.mpp, y: geometry.mpp },
          probabilities: options.probabilities,
          workDir: partial,
          stripes: geometry.stripes,
          resume: kept ? { stripe: kept.stripe, rows: kept.rows, counts: kept.counts } : undefined,
          geojson: options.geojson ? await geojsonOutput(geometry) : undefined,
        });
        ownsPartial = true;
        await journal();
        return journaled;
      },
      probabilities: !!options.probabilities,
      band: async (band) => {
        writer!.write(band);
        // Syncing the maps costs a few ms: journal about once a second (and when stopped, below).
        if (performance.now() - journaledAt >= JOURNAL_INTERVAL_MS || band.y + band.height === height) {
          await journal();
        }
      },
    });
    options.signal?.throwIfAborted();
    if (work.suspend) {
      await journal();
      await writer!.abort(); // closes the maps, which stay in the partial work folder for the next call
      return { run };
    }
    const thumbnail = await readThumbnail(run.slide, 1024);
    const outputs = await writer!.finish(thumbnail, options.signal);
    await rm(partial, { recursive: true, force: true });
    return { run, outputs };
  } catch (error) {
    if (options.signal?.aborted && writer && ownsPartial) {
      // Every band handed out so far is written: record them, so --resume starts after the last one.
      await journal().catch(() => undefined);
    }
    await writer?.abort();
    const kept = ownsPartial && (journaled.stripe > 0 || journaled.row > 0);
    if (ownsPartial && !kept) await rm(partial, { recursive: true, force: true });
    if (options.signal?.aborted) {
      throw new PredictionInterruptedError(slidePath, kept ? partial : null, journaled.row, height, {
        stripe: journaled.stripe,
        stripes: stripeCount,
      });
    }
    throw error;
  }
}
