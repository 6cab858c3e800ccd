import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { resolveArchitectureOptions, type ArchitecturePlugin } from '../arch/architecture.js';
import { DEFAULT_AUGMENT, randCropAugment, type AugmentOptions } from '../data/augment.js';
import { inferClassMap, loadClassMap, type ClassMap } from '../data/class-map.js';
import {
  classPixelNotices,
  collectMaskValues,
  computeNormalization,
  inspectImages,
  loadSamples,
  pairImagesAndMasks,
  type LoadedSample,
  type Normalization,
  type SamplePair,
} from '../data/dataset.js';
import { readImage, readImageHeader, writeFileAtomic } from '../data/image-io.js';
import { createRandom, shuffle } from '../data/random.js';
import { activeEngine } from '../engine/engine.js';
import { countActivations } from '../arch/flops.js';
import { buildArchitecture, checkModelOutput, registerPluginLayers } from '../arch/plugin-layers.js';
import { DatasetError, InputNotFoundError, InvalidOptionError, describeValue } from '../errors.js';
import type { ModelManifest } from '../model/manifest.js';
import {
  checkOutputDir,
  countParameters,
  deserializeModel,
  makeOutputDir,
  MODEL_FILES,
  saveModel,
  serializeModel,
  type ManifestDraft,
} from '../model/model-io.js';
import { predictProbabilities } from '../predict/predict.js';
import type { Predictor } from '../predict/predictor.js';
import { CORE_VERSION } from '../version.js';
import { getLoss, LOSS_NAMES } from './losses.js';
import { argmaxLabels, ConfusionMatrix, makeEvaluationReport, type EvaluationReport } from './metrics.js';
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
import { createOptimizer, setLearningRate, setOptimizerWeights } from './optimizers.js';
import { renderLineChartPng } from './plot.js';
import { makeSchedule, type ScheduleName } from './schedules.js';

/** The version of the trainer plugin interface. */
export const TRAINER_API_VERSION = 1;

/** User-facing training options; every field is optional (see {@link TRAIN_DEFAULTS}). */
export interface TrainOptions {
  /** Side of the square random crops trained on (pixels). Rounded to the architecture's input multiple. */
  tileSize?: number;
  batchSize?: number;
  /** Maximum number of epochs. */
  epochs?: number;
  /** Optimisation steps per epoch. Default: enough crops to cover the training pixels once, at least 8. */
  stepsPerEpoch?: number;
  optimizer?: string;
  /** Base learning rate. */
  lr?: number;
  schedule?: ScheduleName;
  /** Linear learning-rate warm-up, in steps. */
  warmupSteps?: number;
  loss?: string;
  /** Per-class loss weights, in class order. */
  classWeights?: number[];
  /** Share of the samples held out for validation when no validation folders are given. */
  valSplit?: number;
  seed?: number;
  /** Stop after this many minutes, keeping the best weights by validation loss. */
  timeBudgetMinutes?: number;
  /** Stop when the validation loss has not improved for this many epochs (0 = never). */
  patience?: number;
  /** Data augmentation; `false` turns it off. */
  augment?: Partial<AugmentOptions> | false;
  /** Epoch checkpoints to keep besides the best one. */
  keepCheckpoints?: number;
  /**
   * Crops per forward and backward pass; a step's gradient is the mean of its micro-batches' gradients. Default: as
   * many crops as hold 2 x 256 x 256 pixels (2 crops of 256), at most `batchSize`.
   */
  microBatch?: number;
  /**
   * Threads that compute a step's micro-batches in parallel, the main thread included (capped at the micro-batches of
   * a step). Default: the CPU cores on the wasm engine (single-threaded in Node) when a step has 2 or more
   * micro-batches, else 1. The trained weights are the same bits whatever the number (see `data-parallel.ts`).
   */
  workers?: number;
}

/** {@link TrainOptions} with every default filled. */
export interface ResolvedTrainOptions {
  tileSize: number;
  batchSize: number;
  epochs: number;
  stepsPerEpoch: number | null;
  optimizer: string;
  lr: number;
  schedule: ScheduleName;
  warmupSteps: number;
  loss: string;
  classWeights: number[] | null;
  valSplit: number;
  seed: number;
  timeBudgetMinutes: number | null;
  patience: number;
  augment: AugmentOptions | false;
  keepCheckpoints: number;
  /** `null`: the default (see {@link TrainOptions.microBatch}). */
  microBatch: number | null;
  /** `null`: the default (see {@link TrainOptions.workers}). */
  workers: number | null;
}

/** Defaults of {@link TrainOptions}. */
export const TRAIN_DEFAULTS: ResolvedTrainOptions = {
  tileSize: 256,
  batchSize: 4,
  epochs: 50,
  stepsPerEpoch: null,
  optimizer: 'adam',
  lr: 1e-3,
  schedule: 'cosine',
  warmupSteps: 0,
  loss: 'ce-dice',
  classWeights: null,
  valSplit: 0.2,
  seed: 42,
  timeBudgetMinutes: null,
  patience: 0,
  augment: DEFAULT_AUGMENT,
  keepCheckpoints: 2,
  microBatch: null,
  workers: null,
};

/** What to train on and where to write. */
export interface TrainRequest {
  architecture: ArchitecturePlugin<any>;
  /** User options of the architecture (validated against its schema). */
  architectureOptions?: Record<string, unknown>;
  images: string;
  masks: string;
  /** Validation folders; otherwise `valSplit` of the training pairs is held out. */
  valImages?: string;
  valMasks?: string;
  /** Path of a class-map JSON file, or a class map; default: inferred from the masks. */
  classes?: string | ClassMap;
  /** Output model folder. */
  out: string;
  options?: TrainOptions;
  /** Continue from the newest checkpoint in `out`. */
  resume?: boolean;
  /** µm per pixel of the training images, recorded in the manifest. */
  mpp?: number;
  /** Aborting stops training after the current step; the last epoch checkpoint stays usable for `resume`. */
  signal?: AbortSignal;
  /**
   * Modules (URLs or specifiers) that training worker threads import before they rebuild the model, each
   * default-exported factory called once, so that the custom layers of plugin architectures register there too (the
   * CLI passes the plugin modules it loaded). Without them a model with custom layers trains on one thread.
   */
  pluginModules?: string[];
  onEvent?: (event: TrainEvent) => void;
}

/** Progress events emitted while training. */
export type TrainEvent =
  | { type: 'data'; trainSamples: number; validationSamples: number; classes: string[]; channels: number }
  | {
      type: 'start';
      epochs: number;
      stepsPerEpoch: number;
      startEpoch: number;
      parameters: number;
      /** Threads computing each step (see {@link TrainOptions.workers}) and why that many. */
      workers: number;
      workersReason: string;
    }
  | { type: 'step'; epoch: number; step: number; stepsPerEpoch: number; loss: number; lr: number; seconds: number }
  | { type: 'epoch'; record: EpochRecord; best: boolean }
  | { type: 'stop'; reason: string }
  /** After `data`: what reading the data converted (`info`), or what looks wrong in it (`warning`). */
  | { type: 'notice'; level: 'info' | 'warning'; message: string };

/** One row of the training history (`history.csv`). */
export interface EpochRecord {
  epoch: number;
  step: number;
  lr: number;
  trainLoss: number;
  valLoss: number;
  valPixelAccuracy: number;
  valMeanIoU: number;
  valMeanDice: number;
  seconds: number;
}

/** Result of a training run. */
export interface TrainResult {
  out: string;
  manifest: ModelManifest;
  history: EpochRecord[];
  bestEpoch: number;
  stopReason: string;
  validation: EvaluationReport;
}

/** A trainer plugin: turns a {@link TrainRequest} into a trained model folder. */
export interface TrainerPlugin {
  readonly name: string;
  readonly apiVersion: number;
  train(request: TrainRequest): Promise<TrainResult>;
}

/**
 * Validates training options and fills defaults.
 * @throws InvalidOptionError quoting the bad value and the allowed range.
 */
export function resolveTrainOptions(options: TrainOptions = {}): ResolvedTrainOptions {
  const r = { ...TRAIN_DEFAULTS } as ResolvedTrainOptions;
  for (const [key, value] of Object.entries(options)) if (value !== undefined) (r as any)[key] = value;
  if (options.augment !== undefined && options.augment !== false)
    r.augment = { ...DEFAULT_AUGMENT, ...options.augment };
  const int = (name: keyof ResolvedTrainOptions, min: number, max = Number.MAX_SAFE_INTEGER) => {
    const v = r[name];
    if (!Number.isInteger(v) || (v as number) < min || (v as number) > max) {
      throw new InvalidOptionError(
        `Expected an integer between ${min} and ${max} for ${name} but received ${describeValue(v)}.`,
      );
    }
  };
  int('tileSize', 8, 4096);
  int('batchSize', 1, 1024);
  int('epochs', 1, 100000);
  if (r.stepsPerEpoch !== null) int('stepsPerEpoch', 1);
  int('warmupSteps', 0);
  int('seed', 0, 2 ** 32 - 1);
  int('patience', 0);
  int('keepCheckpoints', 0, 1000);
  if (r.microBatch !== null) int('microBatch', 1, r.batchSize);
  if (r.workers !== null) int('workers', 1, 256);
  if (!(typeof r.lr === 'number' && r.lr > 0 && r.lr < 10)) {
    throw new InvalidOptionError(
      `Expected a learning rate between 0 and 10 (exclusive) for lr but received ${describeValue(r.lr)}.`,
    );
  }
  if (!(typeof r.valSplit === 'number' && r.valSplit >= 0 && r.valSplit < 1)) {
    throw new InvalidOptionError(`Expected a number in [0, 1) for valSplit but received ${describeValue(r.valSplit)}.`);
  }
  if (r.timeBudgetMinutes !== null && !(typeof r.timeBudgetMinutes === 'number' && r.timeBudgetMinutes > 0)) {
    throw new InvalidOptionError(
      `Expected a positive number of minutes for timeBudgetMinutes but received ${describeValue(r.timeBudgetMinutes)}.`,
    );
  }
  if (!LOSS_NAMES.includes(r.loss as (typeof LOSS_NAMES)[number])) getLoss(r.loss);
  return r;
}

interface CheckpointState {
  epoch: number;
  step: number;
  history: EpochRecord[];
  bestEpoch: number;
  bestValLoss: number;
  epochsWithoutImprovement: number;
  elapsedSeconds: number;
  startedAt: string;
}

const CHECKPOINTS = 'checkpoints';
const MICRO_BATCH_PIXELS = 2 * 256 * 256;
/**
 * Layer outputs one micro-batch may keep (about 260 MB). Measured on wasm: U-Net with 16 base filters trains at
 * 2 x 256² (244 MB; peak RSS 1.8 GB), with 32 base filters 2 x 256² (488 MB) overflows the 2 GB heap.
 */
const MICRO_BATCH_ACTIVATION_BYTES = 260e6;
/** Layer outputs beyond which one micro-batch cannot train on wasm at all. */
const WASM_MAX_ACTIVATION_BYTES = 300e6;

/** What a training step needs besides the batch. */
interface StepContext {
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
}

/**
 * One optimisation step over a batch, computed in micro-batches whose gradients are averaged. With workers, the
 * first block of micro-batches is computed here and the others in the workers; their gradients and batch-norm
 * statistics are then added in micro-batch order with the operations of the single-thread loop, so the step gives the
 * same bits. Returns the batch's mean loss.
 */
async function trainStep(c: StepContext, images: Float32Array, labels: Int32Array): Promise<number> {
  const { batchSize, microBatch, tile, channels } = c;
  const pixels = tile * tile;
  const parts = Math.ceil(batchSize / microBatch);
  const size = (part: number) => Math.min(microBatch, batchSize - part * microBatch);
  const blocks = splitMicroBatches(parts, 1 + (c.workers?.size ?? 0)).filter((b) => b.length > 0);
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
      c.variables,
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
      applyMovingStatistics(c.batchNorm, result.statistics);
      lossSum += result.loss * n;
      accumulated = accumulateGradients(accumulated, grads);
    });
  }
  tf.tidy(() => {
    const averaged =
      parts === 1
        ? accumulated!
        : Object.fromEntries(Object.entries(accumulated!).map(([k, g]) => [k, tf.div(g, parts)]));
    c.optimizer.applyGradients(averaged);
  });
  for (const g of Object.values(accumulated!)) g.dispose();
  c.workers?.publish(c.variables);
  return lossSum / batchSize;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function saveCheckpoint(
  dir: string,
  model: tfl.LayersModel,
  optimizer: tf.Optimizer,
  state: CheckpointState,
): Promise<void> {
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  const { topology, weights } = await serializeModel(model);
  const optimizerWeights = await optimizer.getWeights();
  const encoded = await tf.io.encodeWeights(optimizerWeights);
  await writeFileAtomic(join(tmp, MODEL_FILES.topology), topology);
  await writeFileAtomic(join(tmp, MODEL_FILES.weights), weights);
  await writeFileAtomic(join(tmp, 'optimizer.bin'), new Uint8Array(tf.io.CompositeArrayBuffer.join(encoded.data)));
  await writeFileAtomic(join(tmp, 'optimizer.json'), JSON.stringify(encoded.specs));
  await writeFileAtomic(join(tmp, 'state.json'), JSON.stringify(state, null, 2));
  await rm(dir, { recursive: true, force: true });
  const { rename } = await import('node:fs/promises');
  await rename(tmp, dir);
}

async function latestCheckpoint(out: string): Promise<string | undefined> {
  const dir = join(out, CHECKPOINTS);
  if (!(await exists(dir))) return undefined;
  const names = (await readdir(dir)).filter((n) => /^epoch-\d+$/.test(n)).sort();
  for (let i = names.length - 1; i >= 0; i--) {
    if (await exists(join(dir, names[i], 'state.json'))) return join(dir, names[i]);
  }
  return undefined;
}

function toCsv(history: EpochRecord[]): string {
  const keys: (keyof EpochRecord)[] = [
    'epoch',
    'step',
    'lr',
    'trainLoss',
    'valLoss',
    'valPixelAccuracy',
    'valMeanIoU',
    'valMeanDice',
    'seconds',
  ];
  return [keys.join(','), ...history.map((h) => keys.map((k) => String(h[k])).join(','))].join('\n') + '\n';
}

/** Evaluates a model on whole samples: mean loss and the confusion matrix. */
export async function evaluateSamples(
  model: tfl.LayersModel | Predictor,
  samples: LoadedSample[],
  numClasses: number,
  multiple: number,
  lossName: string,
  lossOptions: { classWeights?: number[] } = {},
): Promise<{ loss: number; confusion: ConfusionMatrix }> {
  const lossFn = getLoss(lossName, lossOptions);
  const confusion = new ConfusionMatrix(numClasses);
  let lossSum = 0;
  for (const s of samples) {
    const probs = await predictProbabilities(
      model,
      { data: s.image, width: s.width, height: s.height, channels: s.channels },
      { multiple },
    );
    lossSum += tf.tidy(() => {
      const p = tf.tensor4d(probs, [1, s.height, s.width, numClasses]);
      const y = tf.tensor3d(Int32Array.from(s.labels), [1, s.height, s.width], 'int32');
      return lossFn(p, y).dataSync()[0];
    });
    const predicted = argmaxLabels(probs, numClasses);
    confusion.add(predicted, s.labels);
  }
  return { loss: lossSum / Math.max(1, samples.length), confusion };
}

/**
 * The default trainer: random augmented crops, a chosen loss, optimizer and schedule, validation every
 * epoch, a checkpoint every epoch, the best weights (by validation loss) kept as the model, early stopping,
 * a time budget, and resume.
 *
 * @example
 * ```ts
 * const result = await defaultTrainer().train({ architecture: unet(), images, masks, out: 'runs/em' });
 * ```
 */
export function defaultTrainer(): TrainerPlugin {
  return { name: 'default', apiVersion: TRAINER_API_VERSION, train: trainModel };
}

async function readClassMap(classes: TrainRequest['classes'], pairs: SamplePair[]): Promise<ClassMap> {
  if (classes === undefined) {
    const values = await collectMaskValues(pairs);
    const map = inferClassMap(values);
    if (map.classes.length < 2) {
      throw new DatasetError(
        `The masks hold a single value (${[...values].join(', ')}); at least two classes are needed to train.`,
        'Check that the masks folder holds label masks, or pass --classes with the class map.',
      );
    }
    return map;
  }
  return typeof classes === 'string' ? loadClassMap(classes) : classes;
}

async function trainModel(request: TrainRequest): Promise<TrainResult> {
  const cleanup: (() => Promise<void>)[] = [];
  try {
    return await runTraining(request, cleanup);
  } finally {
    for (const task of cleanup) await task();
  }
}

async function runTraining(request: TrainRequest, cleanup: (() => Promise<void>)[]): Promise<TrainResult> {
  const o = resolveTrainOptions(request.options);
  const plugin = request.architecture;
  const archOptions = resolveArchitectureOptions(plugin, request.architectureOptions);
  const multiple = plugin.inputMultiple(archOptions);
  if (o.tileSize % multiple !== 0) {
    throw new InvalidOptionError(
      `Expected a tile size that is a multiple of ${multiple} for architecture "${plugin.name}" but received ${o.tileSize}.`,
      `Use --tile ${Math.max(multiple, Math.round(o.tileSize / multiple) * multiple)}.`,
    );
  }
  const out = resolve(request.out);
  await checkOutputDir(out); // writable before any data is read (and nothing left behind if training fails)
  const emit = request.onEvent ?? (() => undefined);

  // Data
  const pairs = await pairImagesAndMasks(request.images, request.masks);
  const classMap = await readClassMap(request.classes, pairs);
  const numClasses = classMap.classes.length;
  const rootRng = createRandom(o.seed);
  let trainPairs = pairs;
  let valPairs: SamplePair[] = [];
  let validation = 'none';
  if (request.valImages || request.valMasks) {
    if (!request.valImages || !request.valMasks) {
      throw new InvalidOptionError('Validation folders must be given together: --val-images and --val-masks.');
    }
    valPairs = await pairImagesAndMasks(request.valImages, request.valMasks);
    validation = `folders ${request.valImages} and ${request.valMasks}`;
  } else if (o.valSplit > 0) {
    if (pairs.length < 2) {
      throw new DatasetError(
        `Only ${pairs.length} image in ${request.images}: cannot hold out a validation split.`,
        'Add images, pass --val-images/--val-masks, or use --val-split 0.',
      );
    }
    const order = shuffle([...pairs], rootRng.fork('split'));
    const nVal = Math.min(pairs.length - 1, Math.max(1, Math.round(pairs.length * o.valSplit)));
    const valStems = new Set(order.slice(0, nVal).map((p) => p.stem));
    valPairs = pairs.filter((p) => valStems.has(p.stem));
    trainPairs = pairs.filter((p) => !valStems.has(p.stem));
    validation = `${nVal} of ${pairs.length} images held out (valSplit ${o.valSplit}, seed ${o.seed})`;
  }
  // One channel count for the whole data set: grey when every training image is stored grey.
  const headers = await Promise.all(trainPairs.map((p) => readImageHeader(p.imagePath)));
  const channels: 1 | 3 = headers.every((header) => header.channels === 1) ? 1 : 3;
  const notices = await inspectImages([...trainPairs, ...valPairs], channels);
  let rawImages = await Promise.all(trainPairs.map((p) => readImage(p.imagePath)));
  if (channels === 3 && rawImages.some((image) => image.channels === 1)) {
    rawImages = await Promise.all(trainPairs.map((p) => readImage(p.imagePath, { channels: 3 })));
  }
  const normalization: Normalization = computeNormalization(rawImages);
  rawImages = [];
  const trainSamples = await loadSamples(trainPairs, { classMap, channels, normalization });
  const valSamples = await loadSamples(valPairs, { classMap, channels, normalization });
  notices.push(...classPixelNotices([...trainSamples, ...valSamples], classMap, request.classes === undefined));
  emit({
    type: 'data',
    trainSamples: trainSamples.length,
    validationSamples: valSamples.length,
    classes: classMap.classes.map((c) => c.name),
    channels,
  });
  for (const notice of notices) emit({ type: 'notice', ...notice });
  if (o.classWeights && o.classWeights.length !== numClasses) {
    throw new InvalidOptionError(
      `Expected ${numClasses} class weights (one per class: ${classMap.classes.map((c) => c.name).join(', ')}) but received ${o.classWeights.length}.`,
    );
  }
  const lossOptions = o.classWeights ? { classWeights: o.classWeights } : {};
  const lossFn = getLoss(o.loss, lossOptions);

  const trainPixels = trainSamples.reduce((s, x) => s + x.width * x.height, 0);
  const stepsPerEpoch =
    o.stepsPerEpoch ?? Math.max(8, Math.ceil(trainPixels / (o.tileSize * o.tileSize * o.batchSize)));
  const totalSteps = stepsPerEpoch * o.epochs;
  const schedule = makeSchedule({ name: o.schedule, baseLr: o.lr, totalSteps, warmupSteps: o.warmupSteps });

  // Model and optimizer, fresh or from a checkpoint
  let model: tfl.LayersModel;
  const optimizer = createOptimizer(o.optimizer, o.lr);
  let state: CheckpointState = {
    epoch: 0,
    step: 0,
    history: [],
    bestEpoch: 0,
    bestValLoss: Infinity,
    epochsWithoutImprovement: 0,
    elapsedSeconds: 0,
    startedAt: new Date().toISOString(),
  };
  const checkpoint = request.resume ? await latestCheckpoint(out) : undefined;
  if (request.resume && !checkpoint) {
    throw new InputNotFoundError(
      `--resume was given but ${join(out, CHECKPOINTS)} holds no checkpoint.`,
      'Run without --resume to start training, or point --out at the folder of an earlier run.',
    );
  }
  if (checkpoint) {
    registerPluginLayers(plugin);
    model = await deserializeModel(
      await readFile(join(checkpoint, MODEL_FILES.topology), 'utf8'),
      await readFile(join(checkpoint, MODEL_FILES.weights)),
      checkpoint,
    );
    const specs = JSON.parse(
      await readFile(join(checkpoint, 'optimizer.json'), 'utf8'),
    ) as tf.io.WeightsManifestEntry[];
    const bytes = await readFile(join(checkpoint, 'optimizer.bin'));
    const named = tf.io.decodeWeights(
      bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer,
      specs,
    );
    await setOptimizerWeights(
      optimizer,
      Object.entries(named).map(([name, tensor]) => ({ name, tensor })),
    );
    state = JSON.parse(await readFile(join(checkpoint, 'state.json'), 'utf8')) as CheckpointState;
  } else {
    model = buildArchitecture(plugin, {
      inputChannels: channels,
      numClasses,
      tileSize: o.tileSize,
      options: archOptions,
      seed: o.seed,
    });
    // The build contract, once, on a small input (the conformance kit's check and messages): a network that outputs
    // logits or another class count is refused here rather than trained or failing after a step.
    const side = Math.min(o.tileSize, multiple * Math.max(1, Math.ceil(64 / multiple)));
    try {
      checkModelOutput(plugin, archOptions, model, {
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
    await makeOutputDir(out);
  }
  const variables = model.trainableWeights.map((w) => w.read() as tf.Variable);
  const parameters = countParameters(model);
  const engine = activeEngine();
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
  if (engine?.name === 'wasm' && sampleBytes * microBatch > WASM_MAX_ACTIVATION_BYTES) {
    throw new InvalidOptionError(
      `A micro-batch of ${microBatch} crop(s) of ${tile}x${tile} px keeps ${((sampleBytes * microBatch) / 1e6).toFixed(0)} MB of ` +
        `layer outputs for ${plugin.name}, more than the wasm engine's 2 GB heap can train (about ${WASM_MAX_ACTIVATION_BYTES / 1e6} MB).`,
      `Use a smaller --tile (e.g. ${Math.max(32, tile / 2)}), --micro-batch 1, fewer filters, or install @tensorflow/tfjs-node.`,
    );
  }
  const { workers, workersReason, pool } = await startWorkers(
    chooseWorkers(o.workers, engine?.name, Math.ceil(o.batchSize / microBatch)),
    engine?.name,
    model,
    request.pluginModules ?? [],
    o.loss,
    lossOptions,
  );
  if (pool) cleanup.push(() => pool.terminate());
  emit({
    type: 'start',
    epochs: o.epochs,
    stepsPerEpoch,
    startEpoch: state.epoch + 1,
    parameters,
    workers,
    workersReason,
  });
  const stepContext: StepContext = {
    model,
    optimizer,
    variables,
    lossFn,
    batchSize: o.batchSize,
    microBatch,
    tile,
    channels,
    workers: pool,
    batchNorm: batchNormLayers(model),
  };
  const draft = (metrics: EvaluationReport | null, stopReason: string): ManifestDraft => ({
    format: 'tessera-model',
    formatVersion: 1,
    architecture: {
      name: plugin.name,
      version: plugin.version,
      apiVersion: plugin.apiVersion,
      options: archOptions as Record<string, unknown>,
      inputMultiple: multiple,
      receptiveField: plugin.receptiveField(archOptions),
      parameters,
    },
    classes: classMap.classes,
    ...(classMap.ignore !== undefined ? { ignore: classMap.ignore } : {}),
    inputChannels: channels,
    normalization,
    tileSize: o.tileSize,
    mpp: request.mpp ?? null,
    training: {
      data: {
        images: resolve(request.images),
        masks: resolve(request.masks),
        trainStems: trainPairs.map((p) => p.stem),
        validationStems: valPairs.map((p) => p.stem),
        validation,
      },
      options: { ...o, microBatch, workers } as unknown as Record<string, unknown>,
      seed: o.seed,
      engine: engine
        ? { name: engine.name, backend: engine.backend, threads: engine.threads }
        : { name: tf.getBackend(), backend: tf.getBackend(), threads: 1 },
      startedAt: state.startedAt,
      finishedAt: new Date().toISOString(),
      durationSeconds: Math.round(state.elapsedSeconds * 10) / 10,
      epochs: state.epoch,
      steps: state.step,
      bestEpoch: state.bestEpoch,
      stopReason,
      metrics: metrics ? { ...metrics } : {},
    },
    createdBy: `@tessera/core ${CORE_VERSION}`,
  });

  const budgetSeconds = o.timeBudgetMinutes === null ? Infinity : o.timeBudgetMinutes * 60;
  let stopReason = `reached ${o.epochs} epochs`;
  let bestReport: EvaluationReport | null = null;
  const batchImage = new Float32Array(o.batchSize * tile * tile * channels);
  const batchLabels = new Int32Array(o.batchSize * tile * tile);
  let lastEpochSeconds = 0;

  for (let epoch = state.epoch + 1; epoch <= o.epochs; epoch++) {
    if (request.signal?.aborted) {
      stopReason = 'interrupted';
      break;
    }
    if (state.elapsedSeconds + lastEpochSeconds > budgetSeconds) {
      stopReason = `time budget of ${o.timeBudgetMinutes} minutes`;
      break;
    }
    const epochStart = performance.now();
    const rng = rootRng.fork(`epoch-${epoch}`);
    let lossSum = 0;
    let interrupted = false;
    for (let step = 0; step < stepsPerEpoch; step++) {
      if (request.signal?.aborted) {
        interrupted = true;
        break;
      }
      for (let b = 0; b < o.batchSize; b++) {
        const sample = trainSamples[rng.int(trainSamples.length)];
        const crop = randCropAugment(sample, tile, o.augment === false ? {} : o.augment, rng, normalization);
        batchImage.set(crop.image, b * tile * tile * channels);
        batchLabels.set(crop.labels, b * tile * tile);
      }
      const lr = schedule(state.step);
      setLearningRate(optimizer, lr);
      const loss = await trainStep(stepContext, batchImage, batchLabels);
      if (!Number.isFinite(loss)) {
        throw new InvalidOptionError(
          `Training diverged at epoch ${epoch}, step ${step + 1}: the loss is ${loss}.`,
          `Lower the learning rate (--lr ${o.lr / 10}).`,
        );
      }
      lossSum += loss;
      state.step++;
      emit({
        type: 'step',
        epoch,
        step: step + 1,
        stepsPerEpoch,
        loss,
        lr,
        seconds: (performance.now() - epochStart) / 1000,
      });
    }
    if (interrupted) {
      stopReason = 'interrupted';
      break;
    }
    const evaluation = valSamples.length
      ? await evaluateSamples(model, valSamples, numClasses, multiple, o.loss, lossOptions)
      : { loss: lossSum / stepsPerEpoch, confusion: null };
    lastEpochSeconds = (performance.now() - epochStart) / 1000;
    state.elapsedSeconds += lastEpochSeconds;
    const report = evaluation.confusion ? makeEvaluationReport(evaluation.confusion, classMap.classes) : null;
    const record: EpochRecord = {
      epoch,
      step: state.step,
      lr: schedule(Math.max(0, state.step - 1)),
      trainLoss: lossSum / stepsPerEpoch,
      valLoss: evaluation.loss,
      valPixelAccuracy: report?.pixelAccuracy ?? NaN,
      valMeanIoU: report?.meanIoU ?? NaN,
      valMeanDice: report?.meanDice ?? NaN,
      seconds: Math.round(lastEpochSeconds * 100) / 100,
    };
    state.history.push(record);
    state.epoch = epoch;
    const best = evaluation.loss < state.bestValLoss;
    if (best) {
      state.bestValLoss = evaluation.loss;
      state.bestEpoch = epoch;
      state.epochsWithoutImprovement = 0;
      bestReport = report;
      await saveModel(out, model, draft(report, 'in progress'));
    } else {
      state.epochsWithoutImprovement++;
    }
    await writeHistory(out, state.history);
    const ckptDir = join(out, CHECKPOINTS, `epoch-${String(epoch).padStart(4, '0')}`);
    await saveCheckpoint(ckptDir, model, optimizer, state);
    await pruneCheckpoints(join(out, CHECKPOINTS), o.keepCheckpoints);
    emit({ type: 'epoch', record, best });
    if (o.patience > 0 && state.epochsWithoutImprovement >= o.patience) {
      stopReason = `early stopping: validation loss did not improve for ${o.patience} epochs`;
      break;
    }
  }
  await pool?.terminate();
  emit({ type: 'stop', reason: stopReason });

  // The kept model is the best epoch's; re-evaluate it for the final report and manifest.
  const { loadModel } = await import('../model/model-io.js');
  if (state.bestEpoch === 0) {
    throw new InvalidOptionError(
      `Training stopped (${stopReason}) before finishing its first epoch, so no model was written to ${out}.`,
      'Give a larger --time-budget or fewer --steps-per-epoch.',
    );
  }
  const best = await loadModel(out);
  const finalEval = valSamples.length
    ? makeEvaluationReport(
        (await evaluateSamples(best.model, valSamples, numClasses, multiple, o.loss, lossOptions)).confusion,
        classMap.classes,
      )
    : bestReport!;
  const manifest = await saveModel(out, best.model, draft(finalEval, stopReason));
  best.model.dispose();
  model.dispose();
  optimizer.dispose();
  return { out, manifest, history: state.history, bestEpoch: state.bestEpoch, stopReason, validation: finalEval };
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
    });
    return { workers: choice.workers, workersReason: choice.reason, pool };
  } catch (error) {
    return fallback(`the worker threads failed to start (${(error as Error).message})`);
  }
}

async function pruneCheckpoints(dir: string, keep: number): Promise<void> {
  const names = (await readdir(dir)).filter((n) => /^epoch-\d+$/.test(n)).sort();
  for (const name of names.slice(0, Math.max(0, names.length - Math.max(1, keep)))) {
    await rm(join(dir, name), { recursive: true, force: true });
  }
}

async function writeHistory(out: string, history: EpochRecord[]): Promise<void> {
  await writeFileAtomic(join(out, 'history.csv'), toCsv(history));
  await writeFileAtomic(join(out, 'history.json'), JSON.stringify(history, null, 2) + '\n');
  const points = (key: keyof EpochRecord) =>
    history.map((h) => ({ x: h.epoch, y: h[key] as number })).filter((p) => Number.isFinite(p.y));
  await renderLineChartPng(
    {
      title: 'Loss curve',
      xLabel: 'epoch',
      yLabel: 'loss',
      series: [
        { name: 'training loss', color: '#1f77b4', points: points('trainLoss') },
        { name: 'validation loss', color: '#d62728', points: points('valLoss') },
      ],
    },
    join(out, 'loss-curve.png'),
  );
}
