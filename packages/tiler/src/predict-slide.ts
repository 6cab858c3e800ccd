/**
 * Whole-slide prediction, the orchestration: the slide's plan (level, size, tiles), a Piscina pool of workers that
 * read and predict the tiles, the merger that blends them band by band, and the run's record. Its options are in
 * `options.ts`, the cutting into regions in `regions.ts`, the journal of partial work in `journal.ts` and the writing
 * of the outputs in `outputs.ts` (whose files are made by `writer.ts`, `geojson.ts` and `polygons.ts`).
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { backgroundClass, readManifest, receptiveContext, type ModelManifest, type RasterImage } from '@tessera/core';
import { BandMerger, RowPool, type Band } from './merger.js';
import { chooseLevel, openSlide, readThumbnail, verifySlide, type SlideInfo } from './slide.js';
import {
  markTissue,
  splitLevel,
  splitStripes,
  tissueMask,
  type Stripe,
  type TileLocation,
  type TilePlan,
} from './splitter.js';
import { rethrowFailure, type InitResult, type PredictResult, type PredictTask, type TaskFailure } from './worker.js';
import type { SlideOutputs } from './writer.js';
import { resumedPixels, toResumePoint, type ResumePoint } from './journal.js';
import { resolveTilerOptions, type ResolvedTilerOptions, type TilerOptions } from './options.js';
import { checkRegion } from './regions.js';
import { writeSlideOutputs } from './outputs.js';

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
  /** The slide and its overview, as the plan read them (the outputs need its level-0 size and the overlay). */
  slide: SlideInfo;
  thumbnail?: RasterImage;
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

/** Class index given to the pixels of tiles skipped as background: the background class, else 0. */
export function skippedTileClass(manifest: ModelManifest): number {
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
  /** The slide, opened once for the whole run. */
  slide: SlideInfo;
  /**
   * An RGB overview of the slide, at most 1024 px, when tissue detection read it (the overlay then uses it too, so it
   * is read once); without tissue detection the outputs read it at the end.
   */
  thumbnail?: RasterImage;
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
  let thumbnail: RasterImage | undefined;
  if (resolved.tissue && slide.channels === 3) {
    thumbnail = await readThumbnail(slide, 1024);
    markTissue(plan, tissueMask(thumbnail), thumbnail.width, thumbnail.height);
  }
  const stripes = splitStripes(plan, resolved.stripeWidth);
  const numClasses = manifest.classes.length;
  return {
    manifest,
    options: resolved,
    slide,
    thumbnail,
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
      slide,
      thumbnail: planned.thumbnail,
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
