/**
 * The network a run trains: building it, planning its micro-batches against the engine's memory, starting the worker
 * threads that share its steps, one optimisation step, and choosing its size for a time budget.
 */
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { resolveArchitectureOptions, type ArchitecturePlugin } from '../arch/architecture.js';
import { countActivations, countFlops } from '../arch/flops.js';
import { buildArchitecture, checkModelOutput } from '../arch/plugin-layers.js';
import { InvalidOptionError } from '../errors.js';
import { countParameters, serializeModel } from '../model/model-io.js';
import {
  accumulateGradients,
  applyMovingStatistics,
  batchNormLayers,
  chooseWorkers,
  microBatchGradients,
  splitMicroBatches,
  TrainingWorkers,
  type BatchNormLayer,
  type WorkerChoice,
} from './data-parallel.js';
import { LayerFreeze, layerWeights } from './freeze.js';
import { createOptimizer, GroupedOptimizer } from './optimizers.js';
import type { ResolvedTrainOptions } from './trainer.js';

/** Time-bounded runs train a plugin's `smallOptions` network when its default fits fewer steps than this. */
export const MIN_BUDGET_STEPS = 1000;

const MICRO_BATCH_PIXELS = 2 * 256 * 256;

/**
 * Layer outputs one micro-batch may keep (about 260 MB). Measured on wasm: U-Net with 16 base filters trains at
 * 2 x 256² (244 MB; peak RSS 1.8 GB), with 32 base filters 2 x 256² (488 MB) overflows the 2 GB heap.
 */
const MICRO_BATCH_ACTIVATION_BYTES = 260e6;

/** Layer outputs beyond which one micro-batch cannot train on wasm at all. */
const WASM_MAX_ACTIVATION_BYTES = 300e6;

/** What a training step needs besides the batch. */
export interface StepContext {
  model: tfl.LayersModel;
  optimizer: tf.Optimizer;
  variables: tf.Variable[];
  lossFn: (p: tf.Tensor4D, y: tf.Tensor3D) => tf.Scalar;
  batchSize: number;
  microBatch: number;
  tile: number;
  channels: number;
  /** Worker threads computing all but the first block of micro-batches, if any. */
  workers?: TrainingWorkers;
  batchNorm: BatchNormLayer[];
  /** Layers a step leaves alone while `freeze.active` (transfer learning; see `freeze.ts`). */
  freeze?: LayerFreeze;
}

/**
 * One optimisation step over a batch, computed in micro-batches whose gradients are averaged. With workers, the
 * first block of micro-batches is computed here and the others in the workers; their gradients and batch-norm
 * statistics are then added in micro-batch order with the operations of the single-thread loop, so the step gives the
 * same bits. Returns the batch's mean loss.
 */
export async function trainStep(c: StepContext, images: Float32Array, labels: Int32Array): Promise<number> {
  const { batchSize, microBatch, tile, channels } = c;
  const pixels = tile * tile;
  const parts = Math.ceil(batchSize / microBatch);
  const size = (part: number) => Math.min(microBatch, batchSize - part * microBatch);
  const blocks = splitMicroBatches(parts, 1 + (c.workers?.size ?? 0)).filter((b) => b.length > 0);
  const frozen = c.freeze?.active ?? false;
  const variables = c.freeze ? c.freeze.trained(c.variables) : c.variables;
  const norms = c.freeze ? c.freeze.updatedNorms(c.batchNorm) : c.batchNorm;
  const remote = c.workers?.run(
    blocks.slice(1).map((block) => {
      const from = block[0] * microBatch;
      const to = from + block.reduce((s, part) => s + size(part), 0);
      return {
        images: images.slice(from * pixels * channels, to * pixels * channels),
        labels: labels.slice(from * pixels, to * pixels),
        sizes: block.map(size),
        tile,
        channels,
        frozen,
      };
    }),
  );
  // Keep a failing worker's rejection from going unhandled while this thread computes its own block.
  remote?.catch(() => undefined);
  let lossSum = 0;
  let accumulated: tf.NamedTensorMap | undefined;
  for (const part of blocks[0]) {
    const n = size(part);
    const { loss, grads } = microBatchGradients(
      c.model,
      variables,
      c.lossFn,
      images,
      labels,
      part * microBatch,
      n,
      tile,
      channels,
    );
    lossSum += loss * n;
    accumulated = accumulateGradients(accumulated, grads);
  }
  let offset = 0;
  const offsets = c.variables.map((v) => (offset += v.size) - v.size);
  for (const [b, results] of (remote ? await remote : []).entries()) {
    results.forEach((result, i) => {
      const n = size(blocks[b + 1][i]);
      const grads: tf.NamedTensorMap = {};
      for (const index of result.present) {
        const v = c.variables[index];
        grads[v.name] = tf.tensor(result.grads.subarray(offsets[index], offsets[index] + v.size), v.shape);
      }
      applyMovingStatistics(norms, result.statistics);
      lossSum += result.loss * n;
      accumulated = accumulateGradients(accumulated, grads);
    });
  }
  tf.tidy(() => {
    // Every variable in order, a frozen one with no gradient: optimizers keep their state by position.
    const averaged: Record<string, tf.Tensor | null> = {};
    for (const v of c.variables) {
      const g = accumulated![v.name];
      averaged[v.name] = g === undefined ? null : parts === 1 ? g : tf.div(g, parts);
    }
    c.optimizer.applyGradients(averaged as tf.NamedTensorMap);
  });
  for (const g of Object.values(accumulated!)) g.dispose();
  c.workers?.publish(c.variables);
  return lossSum / batchSize;
}

/** What a network needs besides its weights: the data's shape and the run's options. */
export interface NetworkSetup {
  plugin: ArchitecturePlugin<any>;
  channels: 1 | 3;
  numClasses: number;
  options: ResolvedTrainOptions;
  engine: string | undefined;
  pluginModules: string[];
  lossOptions: { classWeights?: number[] };
  lossFn: (p: tf.Tensor4D, y: tf.Tensor3D) => tf.Scalar;
  /** Sets a freshly built network's initial weights (transfer learning), before any worker thread copies them. */
  initialWeights?: (model: tfl.LayersModel) => void;
  /**
   * The layers holding pretrained weights, which train at `lrPretrained` when it is set, and those of them that the
   * run freezes (asked once the network is built and its initial weights set).
   */
  pretrained?: () => { layers: readonly string[]; frozen: readonly string[] };
}

/** A model ready to train: its optimizer, micro-batching and worker threads. */
export interface Network {
  model: tfl.LayersModel;
  optimizer: tf.Optimizer;
  parameters: number;
  microBatch: number;
  workers: number;
  workersReason: string;
  pool?: TrainingWorkers;
  step: StepContext;
  /** Replaces the optimizer by a fresh one (its state back to the start). */
  resetOptimizer(): void;
  dispose(): Promise<void>;
}

export function buildNetwork(setup: NetworkSetup, options: Record<string, unknown>): tfl.LayersModel {
  const { plugin, channels, numClasses } = setup;
  const tile = setup.options.tileSize;
  const model = buildArchitecture(plugin, {
    inputChannels: channels,
    numClasses,
    tileSize: tile,
    options,
    seed: setup.options.seed,
  });
  // The build contract, once, on a small input (the conformance kit's check and messages): a network that outputs
  // logits or another class count is refused here rather than trained or failing after a step.
  const multiple = plugin.inputMultiple(options);
  const side = Math.min(tile, multiple * Math.max(1, Math.ceil(64 / multiple)));
  try {
    checkModelOutput(plugin, options, model, {
      batch: 1,
      height: side,
      width: side,
      inputChannels: channels,
      numClasses,
    });
  } catch (error) {
    model.dispose();
    throw error;
  }
  setup.initialWeights?.(model);
  return model;
}

/** Plans micro-batches and starts the worker threads for a model. */
export async function openNetwork(
  setup: NetworkSetup,
  model: tfl.LayersModel,
  options: Record<string, unknown>,
): Promise<Network> {
  const { plugin, channels, options: o } = setup;
  const tile = o.tileSize;
  // Forward and backward passes run on micro-batches of at most MICRO_BATCH_PIXELS pixels and at most
  // MICRO_BATCH_ACTIVATION_BYTES of layer outputs, their gradients averaged, which bounds the engine's memory (the
  // wasm heap cannot pass 2 GB) whatever the batch size.
  const sampleBytes = 4 * countActivations(model, [1, tile, tile, channels]);
  const microBatch =
    o.microBatch ??
    Math.max(
      1,
      Math.min(
        o.batchSize,
        Math.floor(MICRO_BATCH_PIXELS / (tile * tile)),
        Math.floor(MICRO_BATCH_ACTIVATION_BYTES / sampleBytes),
      ),
    );
  if (setup.engine === 'wasm' && sampleBytes * microBatch > WASM_MAX_ACTIVATION_BYTES) {
    model.dispose();
    throw new InvalidOptionError(
      `A micro-batch of ${microBatch} crop(s) of ${tile}x${tile} px keeps ${((sampleBytes * microBatch) / 1e6).toFixed(0)} MB of ` +
        `layer outputs for ${plugin.name} (${describeOptions(options)}), more than the wasm engine's 2 GB heap can train (about ${WASM_MAX_ACTIVATION_BYTES / 1e6} MB).`,
      `Use a smaller --tile (e.g. ${Math.max(32, tile / 2)}), --micro-batch 1, fewer filters, or install @tensorflow/tfjs-node.`,
    );
  }
  const pretrained = setup.pretrained?.() ?? { layers: [], frozen: [] };
  const freeze = pretrained.frozen.length ? new LayerFreeze(model, pretrained.frozen) : undefined;
  const optimizer = runOptimizer(o, model, pretrained.layers);
  const { workers, workersReason, pool } = await startWorkers(
    chooseWorkers(o.workers, setup.engine, Math.ceil(o.batchSize / microBatch)),
    setup.engine,
    model,
    setup.pluginModules,
    o.loss,
    setup.lossOptions,
    pretrained.frozen,
  );
  const network: Network = {
    model,
    optimizer,
    parameters: countParameters(model),
    microBatch,
    workers,
    workersReason,
    pool,
    step: {
      model,
      optimizer,
      variables: model.trainableWeights.map((w) => w.read() as tf.Variable),
      lossFn: setup.lossFn,
      batchSize: o.batchSize,
      microBatch,
      tile,
      channels,
      workers: pool,
      batchNorm: batchNormLayers(model),
      freeze,
    },
    resetOptimizer() {
      network.optimizer.dispose();
      network.optimizer = runOptimizer(o, model, pretrained.layers);
      network.step.optimizer = network.optimizer;
    },
    async dispose() {
      await pool?.terminate();
      model.dispose();
      network.optimizer.dispose();
    },
  };
  return network;
}

/**
 * The network a run trains, opened: the user's options over the plugin's defaults; with a time budget, when the
 * plugin declares `smallOptions` the user did not override, the small network unless the default would fit
 * {@link MIN_BUDGET_STEPS} steps in the budget. The default's step time is the small network's, timed on two real
 * steps, scaled by their ratio of floating-point operations; the small network's weights and optimizer are then put
 * back to their initial state, so the run is the same as one that chose it without timing.
 */
export async function chooseNetwork(
  setup: NetworkSetup,
  userOptions: Record<string, unknown>,
  defaults: Record<string, unknown>,
  budgetSeconds: number | null,
  batch: (image: Float32Array, labels: Int32Array) => void,
): Promise<{ network: Network; options: Record<string, unknown>; reason: string }> {
  const { plugin } = setup;
  const small = plugin.smallOptions as Record<string, unknown> | undefined;
  const named = describeOptions(defaults);
  const open = async (options: Record<string, unknown>, reason: string) => ({
    network: await openNetwork(setup, buildNetwork(setup, options), options),
    options,
    reason,
  });
  if (budgetSeconds === null) return open(defaults, `${named} (no time budget to fit)`);
  if (!small || Object.keys(small).length === 0) return open(defaults, `${named} (${plugin.name} has one size)`);
  const set = Object.keys(small).filter((key) => userOptions[key] !== undefined);
  if (set.length > 0) return open(defaults, `${named} (${set.join(', ')} set by the user)`);
  const smallOptions = resolveArchitectureOptions(plugin, { ...userOptions, ...small }) as Record<string, unknown>;
  if (plugin.inputMultiple(smallOptions) !== plugin.inputMultiple(defaults)) {
    return open(defaults, `${named} (the small network needs another input multiple)`);
  }
  const { network, reason } = await open(smallOptions, '');
  const { options: o, channels } = setup;
  const input = [1, o.tileSize, o.tileSize, channels];
  const probe = buildNetwork({ ...setup, initialWeights: undefined }, defaults); // only counted, never trained
  const ratio = countFlops(probe, input) / countFlops(network.model, input);
  probe.dispose();
  const seconds = (await timeTwoSteps(network, setup, batch)) * ratio;
  const fits = Math.floor(budgetSeconds / seconds);
  const timed = `about ${seconds.toFixed(2)} s a step (the small network's time x ${ratio.toFixed(1)}, its share of operations), ${fits} steps in the budget`;
  if (fits >= MIN_BUDGET_STEPS) {
    await network.dispose();
    return open(defaults, `${named}: ${timed}`);
  }
  return {
    network,
    options: smallOptions,
    reason: `${describeOptions(smallOptions)}, the small network${reason}: the default (${named}) would take ${timed}, fewer than ${MIN_BUDGET_STEPS}`,
  };
}

/**
 * Seconds of the second of two training steps of a network (the first pays one-time costs); its weights and
 * optimizer are then put back as they were.
 */
async function timeTwoSteps(
  network: Network,
  setup: NetworkSetup,
  batch: (image: Float32Array, labels: Int32Array) => void,
): Promise<number> {
  const o = setup.options;
  const initial = network.model.getWeights().map((w) => tf.clone(w));
  const image = new Float32Array(o.batchSize * o.tileSize * o.tileSize * setup.channels);
  const labels = new Int32Array(o.batchSize * o.tileSize * o.tileSize);
  batch(image, labels);
  let seconds = 0;
  for (let i = 0; i < 2; i++) {
    const started = performance.now();
    await trainStep(network.step, image, labels);
    seconds = (performance.now() - started) / 1000;
  }
  network.model.setWeights(initial);
  tf.dispose(initial);
  network.resetOptimizer();
  network.pool?.publish(network.step.variables);
  return seconds;
}

/**
 * The run's optimizer: one over every variable, or with `lrPretrained`, one group for the pretrained layers' variables
 * at that rate and one for the others at `lr`, both following the schedule.
 */
function runOptimizer(o: ResolvedTrainOptions, model: tfl.LayersModel, pretrained: readonly string[]): tf.Optimizer {
  if (o.lrPretrained === null || pretrained.length === 0) return createOptimizer(o.optimizer, o.lr);
  const names = new Set(layerWeights(model, pretrained).map((w) => (w.read() as tf.Variable).name));
  return new GroupedOptimizer(
    [
      { optimizer: createOptimizer(o.optimizer, o.lr), factor: 1 },
      { optimizer: createOptimizer(o.optimizer, o.lrPretrained), factor: o.lrPretrained / o.lr },
    ],
    (name) => (names.has(name) ? 1 : 0),
    o.lr,
  );
}

export function describeOptions(options: Record<string, unknown>): string {
  return Object.entries(options)
    .map(([key, value]) => `${key} ${String(value)}`)
    .join(', ');
}

/**
 * Starts the worker threads of a {@link WorkerChoice}, or falls back to the main thread alone, saying why, when they
 * cannot reproduce its engine or rebuild the model.
 */
async function startWorkers(
  choice: WorkerChoice,
  engine: string | undefined,
  model: tfl.LayersModel,
  pluginModules: string[],
  loss: string,
  lossOptions: { classWeights?: number[] },
  frozenLayers: readonly string[],
): Promise<{ workers: number; workersReason: string; pool?: TrainingWorkers }> {
  if (choice.workers === 1) return { workers: 1, workersReason: choice.reason };
  const fallback = (why: string) => ({
    workers: 1,
    workersReason: `${why}; training on one thread (wanted ${choice.workers}: ${choice.reason})`,
  });
  if (engine === undefined) return fallback('the engine was not set up with setupEngine, which workers would repeat');
  try {
    const pool = await TrainingWorkers.start({
      threads: choice.workers - 1,
      engine,
      pluginModules,
      model,
      serialized: await serializeModel(model),
      loss,
      lossOptions,
      frozenLayers: [...frozenLayers],
    });
    return { workers: choice.workers, workersReason: choice.reason, pool };
  } catch (error) {
    return fallback(`the worker threads failed to start (${(error as Error).message})`);
  }
}
