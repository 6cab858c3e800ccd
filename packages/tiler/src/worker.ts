/**
 * The tiler's worker module, run by Piscina in worker threads. Named tasks: `init` (load the engine and the model,
 * once per thread) and `predict` (read a batch of tiles from the slide by coordinates, normalise them and return
 * their class probabilities, moved back without a copy).
 */
import { move, transferableSymbol, valueSymbol } from 'piscina';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import {
  EngineError,
  importPluginModules,
  loadModel,
  normalizeWindow,
  readManifest,
  setupEngine,
  tfjsPredictor,
  TesseraError,
  type ModelManifest,
  type Predictor,
} from '@tessera/core';
import sharp from 'sharp';
import { readRegion, type SlideInfo } from './slide.js';

// libvips caches recent operations, process-wide. Each tile is read once, so caching gains nothing here, and the
// cache grew the process by about 100 MB per 2,500 tile reads of a large slide: memory would grow with slide size.
sharp.cache(false);

/** Task `init`: the model folder and the engine to use. */
export interface InitTask {
  model: string;
  /** Engine name (`auto`, `tfjs-node`, `wasm`, `cpu`). Default: `auto` or `TESSERA_BACKEND`. */
  backend?: string;
  /**
   * Architecture plugin modules (URLs or specifiers) imported before the model is loaded, so that models with
   * custom layers (e.g. DeepLabv3+'s atrous convolutions) rebuild; each default-exported factory is called once.
   */
  plugins?: string[];
  /**
   * Run an ONNX export of the model with onnxruntime-node (package `@tessera/onnx`) instead of tfjs: the `.onnx`
   * file, threads per worker and device.
   */
  onnx?: { file: string; threads: number; device?: string };
}

/** What `init` reports. */
export interface InitResult {
  engine: string;
  numClasses: number;
  threadId: number;
}

/** Task `predict`: tiles of one slide level, all `tileWidth` x `tileHeight`, read by the worker itself. */
export interface PredictTask extends InitTask {
  slide: SlideInfo;
  level: number;
  /** Resampling of the level (1 = read as stored). */
  scale: number;
  /** Size of the (resampled) level; reads past it are mirrored. */
  bounds: { width: number; height: number };
  tileWidth: number;
  tileHeight: number;
  /** Top-left corners of the tiles. */
  tiles: { x: number; y: number }[];
}

/** What `predict` returns: probabilities `[tiles, tileHeight, tileWidth, numClasses]` and timings. */
export interface PredictResult {
  probabilities: Float32Array;
  numClasses: number;
  readMs: number;
  inferMs: number;
}

interface Loaded {
  predictor: Predictor;
  manifest: ModelManifest;
  engine: string;
}

let engine: Promise<string> | undefined;
const models = new Map<string, Promise<Loaded>>();

async function loadOnnx(task: InitTask & { onnx: NonNullable<InitTask['onnx']> }): Promise<Loaded> {
  let onnx: typeof import('@tessera/onnx');
  try {
    onnx = await import('@tessera/onnx');
  } catch (error) {
    throw new EngineError(
      'The ONNX runtime was asked for, but @tessera/onnx is not installed.',
      'npm install @tessera/onnx, or use --runtime tfjs.',
      error,
    );
  }
  const manifest = await readManifest(task.model);
  const bytes = new Uint8Array(await readFile(task.onnx.file));
  const predictor = await onnx.createOnnxPredictor(bytes, {
    threads: task.onnx.threads,
    device: task.onnx.device as 'cpu' | 'cuda' | undefined,
    // The worker decodes the next tiles while the network runs: spinning engine threads would slow that down.
    spin: false,
  });
  // The ONNX file's checksum is part of the engine's name, so a resumed slide notices another export.
  const digest = createHash('sha256').update(bytes).digest('hex').slice(0, 12);
  return { predictor, manifest, engine: `${predictor.description}, onnx ${digest}` };
}

function load(task: InitTask): Promise<Loaded> {
  const key = `${task.model}\0${task.onnx?.file ?? 'tfjs'}`;
  let loaded = models.get(key);
  if (!loaded) {
    if (task.onnx) {
      loaded = loadOnnx({ ...task, onnx: task.onnx });
    } else {
      engine ??= setupEngine(task.backend).then(async (info) => {
        // The plugins register their `layers` (and, written before `layers`, whatever their factories register).
        await importPluginModules(task.plugins ?? []);
        return info.name;
      });
      loaded = engine.then(async (name) => {
        const { model, manifest } = await loadModel(task.model);
        return { predictor: tfjsPredictor(model), manifest, engine: name };
      });
    }
    models.set(key, loaded);
    loaded.catch(() => models.delete(key));
  }
  return loaded;
}

/**
 * A Tessera error raised in a worker, as data: errors lose their class and fields when they cross the thread
 * boundary, so tasks return this and the pool's caller throws it again with {@link rethrowFailure}.
 */
export interface TaskFailure {
  failure: { code: string; exitCode: number; message: string; hint?: string };
}

function failure(error: unknown): TaskFailure {
  if (!(error instanceof TesseraError)) throw error;
  return { failure: { code: error.code, exitCode: error.exitCode, message: error.message, hint: error.hint } };
}

/** Throws the Tessera error a worker returned, with its code, exit code and hint; returns other results. */
export function rethrowFailure<T>(result: T | TaskFailure): T {
  if (result && typeof result === 'object' && 'failure' in result) {
    const { code, exitCode, message, hint } = result.failure;
    throw new TesseraError(code, message, { exitCode, hint });
  }
  return result as T;
}

/** Task `init`: sets up the engine and loads the model in this thread. */
export async function init(task: InitTask): Promise<InitResult | TaskFailure> {
  try {
    const { manifest, engine: name } = await load(task);
    const { threadId } = await import('node:worker_threads');
    return { engine: name, numClasses: manifest.classes.length, threadId };
  } catch (error) {
    return failure(error);
  }
}

/** Task `predict`: reads, normalises and predicts a batch of tiles. */
export async function predict(task: PredictTask): Promise<PredictResult | TaskFailure> {
  try {
    return await predictBatch(task);
  } catch (error) {
    return failure(error);
  }
}

/** The network call in progress in this worker, if any. */
let inferring: Promise<unknown> = Promise.resolve();

/**
 * Network inputs of this worker, kept for the next batch of the same size (at most two: one being read while the
 * other is inferred), instead of a fresh input (12 MB for four 512 px tiles) and a normalised copy of each tile per
 * batch: fewer large blocks for the allocator to hand out and take back, which is what fragments glibc's arenas.
 */
const spareInputs: Float32Array[] = [];

/**
 * Tiles of a batch that lie on one row and overlap or touch, left to right, are read as one region: one open of the
 * slide and one decode of the columns they share, instead of one per tile (a third less reading time for four
 * tiles of a JPEG slide). The tiles are windows of it with the same pixels as reads of their own.
 */
function runsOfTiles(task: PredictTask): { x: number; y: number; lastX: number; tiles: number[] }[] {
  const runs: { x: number; y: number; lastX: number; tiles: number[] }[] = [];
  task.tiles.forEach((t, i) => {
    const last = runs.at(-1);
    if (last && t.y === last.y && t.x > last.lastX && t.x <= last.lastX + task.tileWidth) {
      last.tiles.push(i);
      last.lastX = t.x;
    } else {
      runs.push({ x: t.x, y: t.y, lastX: t.x, tiles: [i] });
    }
  });
  return runs;
}

async function predictBatch(task: PredictTask): Promise<PredictResult> {
  const { predictor, manifest } = await load(task);
  const channels = manifest.inputChannels === 1 ? 1 : 3;
  const readStart = performance.now();
  const per = task.tileWidth * task.tileHeight * channels;
  const count = task.tiles.length;
  const spare = spareInputs.findIndex((input) => input.length === count * per);
  const batch = spare >= 0 ? spareInputs.splice(spare, 1)[0] : new Float32Array(count * per);
  await Promise.all(
    runsOfTiles(task).map(async (run) => {
      const image = await readRegion(
        task.slide,
        { x: run.x, y: run.y, width: run.lastX + task.tileWidth - run.x, height: task.tileHeight },
        { level: task.level, scale: task.scale, bounds: task.bounds, channels },
      );
      for (const i of run.tiles) {
        const window = { left: task.tiles[i].x - run.x, width: task.tileWidth, height: task.tileHeight };
        normalizeWindow(image, window, manifest.normalization, batch, i * per);
      }
    }),
  );
  const readMs = performance.now() - readStart;
  // One network call at a time per worker: with two tasks per worker (ONNX), one reads while the other infers.
  const inference = inferring.then(async () => {
    const start = performance.now();
    const values = await predictor.run(batch, [count, task.tileHeight, task.tileWidth, channels]);
    return { values, ms: performance.now() - start };
  });
  inferring = inference.catch(() => undefined);
  const { values, ms: inferMs } = await inference.finally(() => {
    spareInputs.push(batch); // the network is done with it
    if (spareInputs.length > 2) spareInputs.shift();
  });
  const probabilities =
    values.byteOffset === 0 && values.length === values.buffer.byteLength / 4 ? values : values.slice();
  const result: PredictResult = { probabilities, numClasses: manifest.classes.length, readMs, inferMs };
  return move({
    [transferableSymbol]: [probabilities.buffer],
    [valueSymbol]: result,
  }) as unknown as PredictResult;
}
