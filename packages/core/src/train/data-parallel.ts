/**
 * Data-parallel training steps: a step's micro-batches are shared between the main thread and worker threads, each
 * holding a replica of the model. Workers send back, per micro-batch, the loss, the gradients and the batch-norm batch
 * statistics; the main thread adds them in micro-batch order with the very tensor operations a single thread would
 * have run, applies the optimizer and publishes the new weights. A run with workers therefore reproduces the
 * single-thread run bit for bit (on a deterministic engine such as wasm or cpu).
 *
 * Batch norm: a worker's replica runs with momentum 0 from zero moving statistics, so what tfjs-layers writes into them
 * is exactly the micro-batch's mean and variance; the main thread then applies the moving-average update with the
 * layer's own operations, in micro-batch order. Limits: other layers that change their weights during a
 * training-mode call are not kept in step (tfjs-layers has none besides BatchNormalization), and dropout draws
 * unseeded random numbers in tfjs, so runs with dropout are not reproducible, with or without workers.
 */
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { BATCH_NORM_CLASS_NAMES } from '../arch/batch-norm.js';
import { EngineError } from '../errors.js';
import { withoutInputGradient } from '../engine/input-gradient.js';
import type { LossFn, LossOptions } from './losses.js';

/** Loss and gradients (by variable name) of one micro-batch. */
export interface MicroBatchGradients {
  /** Mean loss over the micro-batch. */
  loss: number;
  grads: tf.NamedTensorMap;
}

/**
 * Forward and backward pass over crops `[start, start + n)` of a batch. `images` is `[batch, tile, tile, channels]`
 * and `labels` `[batch, tile, tile]`, both flattened. Batch-norm layers update their moving statistics, as in any
 * training-mode call.
 */
export function microBatchGradients(
  model: tfl.LayersModel,
  variables: tf.Variable[],
  lossFn: LossFn,
  images: Float32Array,
  labels: Int32Array,
  start: number,
  n: number,
  tile: number,
  channels: number,
): MicroBatchGradients {
  const pixels = tile * tile;
  const { value, grads } = tf.tidy(() => {
    const x = tf.tensor4d(images.subarray(start * pixels * channels, (start + n) * pixels * channels), [
      n,
      tile,
      tile,
      channels,
    ]);
    const y = tf.tensor3d(labels.subarray(start * pixels, (start + n) * pixels), [n, tile, tile], 'int32');
    // Only the weights' gradients are wanted: the input's is skipped where the engine can (`input-gradient.ts`).
    return withoutInputGradient(x, () =>
      tf.variableGrads(() => lossFn(model.apply(x, { training: true }) as tf.Tensor4D, y), variables),
    );
  });
  const loss = value.dataSync()[0];
  value.dispose();
  return { loss, grads };
}

/** Adds `grads` into `sum` (disposing both operands), or returns `grads` as the first term. */
export function accumulateGradients(sum: tf.NamedTensorMap | undefined, grads: tf.NamedTensorMap): tf.NamedTensorMap {
  if (!sum) return grads;
  for (const name of Object.keys(grads)) {
    const added = tf.add(sum[name], grads[name]);
    sum[name].dispose();
    grads[name].dispose();
    sum[name] = added;
  }
  return sum;
}

/** The parts of a tfjs-layers `BatchNormalization` layer that training updates. */
export interface BatchNormLayer {
  name: string;
  momentum: number;
  movingMean: tfl.LayerVariable;
  movingVariance: tfl.LayerVariable;
}

/** The batch-norm layers of a model (nested models included), in layer order. */
export function batchNormLayers(model: tfl.LayersModel): BatchNormLayer[] {
  const found: BatchNormLayer[] = [];
  const visit = (layers: tfl.layers.Layer[]) => {
    for (const layer of layers) {
      const nested = (layer as unknown as { layers?: tfl.layers.Layer[] }).layers;
      if (Array.isArray(nested)) visit(nested);
      else if (BATCH_NORM_CLASS_NAMES.includes(layer.getClassName())) found.push(layer as unknown as BatchNormLayer);
    }
  };
  visit(model.layers);
  return found;
}

/** Number of floats of the moving statistics of `layers` (means and variances). */
export function movingStatisticsSize(layers: BatchNormLayer[]): number {
  return layers.reduce((s, l) => s + 2 * tf.util.sizeFromShape(l.movingMean.shape as number[]), 0);
}

/**
 * Applies one micro-batch's batch statistics (per layer: mean then variance, as read by
 * {@link readMovingStatistics} in a worker) to the moving statistics, with the operations of tfjs-layers'
 * `BatchNormalization.call` (`moving - (moving - batch) * (1 - momentum)`), so that the result has the same bits as
 * when the layer itself had seen the micro-batch.
 */
export function applyMovingStatistics(layers: BatchNormLayer[], statistics: Float32Array): void {
  let offset = 0;
  for (const layer of layers) {
    for (const variable of [layer.movingMean, layer.movingVariance]) {
      const size = tf.util.sizeFromShape(variable.shape as number[]);
      const batch = statistics.subarray(offset, offset + size);
      offset += size;
      // tfjs's float32 operations in JavaScript (each result rounded to float32): one tensor write, not four ops.
      const decay = Math.fround(1 - layer.momentum);
      const original = variable.read().dataSync() as Float32Array;
      const updated = new Float32Array(size);
      for (let j = 0; j < size; j++) {
        updated[j] = Math.fround(original[j] - Math.fround(Math.fround(original[j] - batch[j]) * decay));
      }
      tf.tidy(() => {
        variable.write(tf.tensor(updated, variable.shape as number[]));
      });
    }
  }
}

/**
 * Makes the batch-norm layers of a worker's replica record the batch statistics of the next training-mode call:
 * momentum 0 and zero moving statistics make tfjs-layers' update `0 - (0 - batch) * 1` write the batch mean and
 * variance exactly. Call before each micro-batch, then {@link readMovingStatistics}.
 */
export function resetMovingStatistics(layers: BatchNormLayer[]): void {
  for (const layer of layers) {
    layer.momentum = 0;
    for (const variable of [layer.movingMean, layer.movingVariance]) {
      tf.tidy(() => {
        variable.write(tf.zeros(variable.shape as number[]));
      });
    }
  }
}

/** The moving statistics of `layers` as one array (per layer: mean then variance). */
export function readMovingStatistics(layers: BatchNormLayer[]): Float32Array {
  const out = new Float32Array(movingStatisticsSize(layers));
  let offset = 0;
  for (const layer of layers) {
    for (const variable of [layer.movingMean, layer.movingVariance]) {
      const values = variable.read().dataSync() as Float32Array;
      out.set(values, offset);
      offset += values.length;
    }
  }
  return out;
}

/**
 * Splits micro-batches `0..parts-1` into `workers` contiguous blocks, the main thread's (the first) no larger than the
 * others, since it also applies the optimizer.
 *
 * @example
 * splitMicroBatches(3, 2); // [[0], [1, 2]]
 */
export function splitMicroBatches(parts: number, workers: number): number[][] {
  const blocks: number[][] = [];
  for (let w = 0; w < workers; w++) {
    const from = Math.floor((w * parts) / workers);
    const to = Math.floor(((w + 1) * parts) / workers);
    blocks.push(Array.from({ length: to - from }, (_, i) => from + i));
  }
  return blocks;
}

/** How many threads compute a step's micro-batches, and why. */
export interface WorkerChoice {
  workers: number;
  reason: string;
}

/**
 * The number of training threads (the main thread included): `requested` capped at the micro-batches of a step, or by
 * default the CPU cores when the engine is wasm (single-threaded in Node) and a step has at least 2 micro-batches,
 * else 1.
 *
 * @example
 * chooseWorkers(null, 'wasm', 2, 2).workers; // 2
 */
export function chooseWorkers(
  requested: number | null,
  engine: string | undefined,
  parts: number,
  cores: number = availableParallelism(),
): WorkerChoice {
  const micro = `${parts} micro-batch${parts === 1 ? '' : 'es'} per step`;
  if (requested !== null) {
    if (requested > parts) return { workers: parts, reason: `${requested} asked for, capped at the ${micro}` };
    return { workers: requested, reason: 'asked for' };
  }
  if (engine !== 'wasm') {
    return { workers: 1, reason: `default: the ${engine ?? 'unset'} engine trains on one thread unless asked` };
  }
  if (parts < 2) return { workers: 1, reason: `default: ${micro}, nothing to share` };
  const workers = Math.min(cores, parts);
  return { workers, reason: `default: ${cores} CPU core${cores === 1 ? '' : 's'}, ${micro}` };
}

/** What a worker thread receives at start (`workerData`). */
export interface TrainWorkerInit {
  engine: string;
  pluginModules: string[];
  topology: string;
  weights: Uint8Array;
  loss: string;
  lossOptions: LossOptions;
  /** Shapes of the trainable variables, in `model.trainableWeights` order. */
  shapes: number[][];
  /** Floats of batch-norm statistics per micro-batch (a consistency check). */
  statisticsSize: number;
  /** The trainable weights published by the main thread after each step, concatenated. */
  weightBuffer: SharedArrayBuffer;
  /** Layers a step leaves alone while a task says `frozen` (see `freeze.ts`). */
  frozenLayers: string[];
}

/** A step's share for one worker: crops of consecutive micro-batches. */
export interface TrainWorkerTask {
  type: 'step';
  /** Version of the weights in the shared buffer; the worker reloads them when it changes. */
  version: number;
  images: Float32Array;
  labels: Int32Array;
  /** Crops of each micro-batch, in order. */
  sizes: number[];
  tile: number;
  channels: number;
  /** Whether the frozen layers are frozen in this step. */
  frozen: boolean;
}

/** One micro-batch computed by a worker. */
export interface RemoteMicroBatch {
  loss: number;
  /** Gradients of the trainable variables, concatenated in variable order. */
  grads: Float32Array;
  /** Indices of the variables that have a gradient (all but the frozen ones, normally). */
  present: number[];
  /** Batch-norm batch statistics of the layers the step updates (see {@link applyMovingStatistics}). */
  statistics: Float32Array;
}

/** Messages from a worker thread. */
export type TrainWorkerMessage =
  | { type: 'ready' }
  | { type: 'result'; parts: RemoteMicroBatch[] }
  | { type: 'error'; message: string };

function workerFile(): string {
  const here = fileURLToPath(import.meta.url);
  // Tests run the TypeScript sources; the worker thread runs the build.
  return here.endsWith('.ts')
    ? join(dirname(here), '../../dist/train/train-worker.js')
    : join(dirname(here), 'train-worker.js');
}

interface Pending {
  resolve: (message: TrainWorkerMessage) => void;
  reject: (error: Error) => void;
}

/** A started worker thread and its one outstanding request. */
class TrainWorker {
  readonly thread: Worker;
  private pending: Pending | undefined;
  private failure: Error | undefined;

  constructor(
    init: TrainWorkerInit,
    readonly index: number,
  ) {
    this.thread = new Worker(workerFile(), { workerData: init });
    this.thread.on('message', (message: TrainWorkerMessage) => this.settle(message));
    this.thread.on('error', (error) => this.fail(error));
    this.thread.on('exit', (code) => this.fail(new Error(`the thread exited with code ${code}`)));
  }

  private settle(message: TrainWorkerMessage): void {
    const pending = this.pending;
    this.pending = undefined;
    if (message.type === 'error') pending?.reject(new Error(message.message));
    else pending?.resolve(message);
  }

  private fail(error: Error): void {
    this.failure ??= error;
    const pending = this.pending;
    this.pending = undefined;
    pending?.reject(error);
  }

  /** The next message of the worker (after sending `task`, if given). */
  request(task?: TrainWorkerTask, transfer: ArrayBuffer[] = []): Promise<TrainWorkerMessage> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      if (task) this.thread.postMessage(task, transfer);
    });
  }
}

/** What {@link TrainingWorkers.start} needs. */
export interface TrainingWorkersOptions {
  /** Worker threads to start (besides the main thread). */
  threads: number;
  engine: string;
  pluginModules: string[];
  model: tfl.LayersModel;
  /** The serialised model (`serializeModel`). */
  serialized: { topology: string; weights: Uint8Array };
  loss: string;
  lossOptions: LossOptions;
  /** Layers to leave alone in the steps that say so (see `freeze.ts`). */
  frozenLayers?: string[];
}

/**
 * Worker threads holding replicas of the model being trained. {@link TrainingWorkers.run} computes blocks of
 * micro-batches; {@link TrainingWorkers.publish} sends them the weights after each optimizer step.
 */
export class TrainingWorkers {
  private version = 0;

  private constructor(
    private readonly workers: TrainWorker[],
    private readonly weightView: Float32Array,
    private readonly offsets: number[],
  ) {}

  /** Number of worker threads. */
  get size(): number {
    return this.workers.length;
  }

  /**
   * Starts the threads and waits until each has set up the engine and rebuilt the model.
   * @throws Error (the first thread's failure, e.g. a layer class it cannot import); no thread is left running.
   */
  static async start(options: TrainingWorkersOptions): Promise<TrainingWorkers> {
    const shapes = options.model.trainableWeights.map((w) => w.shape as number[]);
    const offsets: number[] = [];
    let total = 0;
    for (const shape of shapes) {
      offsets.push(total);
      total += tf.util.sizeFromShape(shape);
    }
    const weightBuffer = new SharedArrayBuffer(total * 4);
    const init: TrainWorkerInit = {
      engine: options.engine,
      pluginModules: options.pluginModules,
      topology: options.serialized.topology,
      weights: options.serialized.weights,
      loss: options.loss,
      lossOptions: options.lossOptions,
      shapes,
      statisticsSize: movingStatisticsSize(batchNormLayers(options.model)),
      weightBuffer,
      frozenLayers: options.frozenLayers ?? [],
    };
    const workers = Array.from({ length: options.threads }, (_, i) => new TrainWorker(init, i + 1));
    const pool = new TrainingWorkers(workers, new Float32Array(weightBuffer), offsets);
    try {
      await Promise.all(workers.map((w) => w.request()));
    } catch (error) {
      await pool.terminate();
      throw error;
    }
    return pool;
  }

  /**
   * Computes blocks of micro-batches, block `i` on worker `i`, and returns each block's results in micro-batch order.
   * @throws EngineError when a worker fails.
   */
  async run(blocks: Omit<TrainWorkerTask, 'type' | 'version'>[]): Promise<RemoteMicroBatch[][]> {
    return Promise.all(
      blocks.map(async (block, i) => {
        const worker = this.workers[i];
        try {
          const message = await worker.request({ type: 'step', version: this.version, ...block }, [
            block.images.buffer as ArrayBuffer,
            block.labels.buffer as ArrayBuffer,
          ]);
          return (message as Extract<TrainWorkerMessage, { type: 'result' }>).parts;
        } catch (error) {
          throw new EngineError(
            `Training worker ${worker.index} failed: ${(error as Error).message}`,
            'Train on one thread with --workers 1.',
            error,
          );
        }
      }),
    );
  }

  /** Publishes the trainable weights (`variables` in `model.trainableWeights` order) to the workers. */
  publish(variables: tf.Variable[]): void {
    variables.forEach((v, i) => this.weightView.set(v.dataSync() as Float32Array, this.offsets[i]));
    this.version++;
  }

  /** Stops the threads. */
  async terminate(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.thread.terminate()));
  }
}
