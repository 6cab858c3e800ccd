/** The options of whole-slide prediction, their defaults, and their one check. */
import { availableParallelism } from 'node:os';
import type { ModelManifest } from '@tessera/core';
import { TilerOptionError } from './errors.js';
import type { SlidePlan, TilerPool, TilerProgress } from './predict-slide.js';
import type { SlideRegion } from './regions.js';
import { resolveTileOptions } from './splitter.js';

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

/** {@link TilerOptions} with every default filled in. */
export interface ResolvedTilerOptions
  extends Required<
    Omit<TilerOptions, 'mpp' | 'signal' | 'onProgress' | 'backend' | 'onnx' | 'region' | 'plan' | 'pool'>
  > {
  mpp: number | null;
  backend: string | undefined;
  onnx: { file: string; threads: number; device?: string } | undefined;
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

/** Checks that an option is a positive integer. */
export function positiveInteger(value: unknown, option: string, hint: string): void {
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
