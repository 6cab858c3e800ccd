import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { resolveArchitectureOptions, type ArchitecturePlugin } from '../arch/architecture.js';
import { DEFAULT_AUGMENT, randCropAugment, type AugmentOptions } from '../data/augment.js';
import { backgroundClass, inferClassMap, loadClassMap, type ClassMap } from '../data/class-map.js';
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
import { readImage, readImageHeader } from '../data/image-io.js';
import { createRandom, shuffle, type Random } from '../data/random.js';
import { activeEngine } from '../engine/engine.js';
import { registerPluginLayers } from '../arch/plugin-layers.js';
import { DatasetError, InputNotFoundError, InvalidOptionError, describeValue } from '../errors.js';
import type { ModelManifest } from '../model/manifest.js';
import {
  checkOutputDir,
  deserializeModel,
  makeOutputDir,
  MODEL_FILES,
  saveModel,
  draftManifest,
  type ManifestDraft,
} from '../model/model-io.js';
import { predictProbabilities } from '../predict/predict.js';
import type { Predictor } from '../predict/predictor.js';
import { CORE_VERSION } from '../version.js';
import {
  CHECKPOINTS,
  latestCheckpoint,
  pruneCheckpoints,
  readNamedWeights,
  saveCheckpoint,
  type CheckpointState,
} from './checkpoints.js';
import { writeHistory } from './history.js';
import { getLoss, LOSS_NAMES } from './losses.js';
import { argmaxLabels, ConfusionMatrix, makeEvaluationReport, type EvaluationReport } from './metrics.js';
import { chooseNetwork, describeOptions, openNetwork, trainStep, type Network, type NetworkSetup } from './network.js';
import { setLearningRate, setOptimizerWeights } from './optimizers.js';
import {
  describeSchedule,
  describeSteps,
  describeValidation,
  foregroundDice,
  TrainingClock,
  WeightAverage,
} from './recipe.js';
import { makeSchedule, type ScheduleName } from './schedules.js';
export { MIN_BUDGET_STEPS } from './network.js';

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
  /**
   * Stop within one step of this many minutes (then validate once more), keeping the best weights by `select`. The
   * `'cosine'` schedule is then fitted to the budget (it ends at the budget however many steps fit), validation is
   * spread over it, and a plugin's `smallOptions` network is trained instead of the default when the default fits
   * fewer than {@link MIN_BUDGET_STEPS} steps on this engine (options the user set are kept).
   */
  timeBudgetMinutes?: number;
  /** Stop when the selection metric has not improved for this many validations (0 = never). */
  patience?: number;
  /**
   * Steps between validations. Default: once per epoch; with a time budget, {@link VALIDATIONS_PER_BUDGET} times over
   * the budget (fewer when validation would take more than a tenth of it).
   */
  validateEvery?: number;
  /**
   * What chooses the kept weights among the validations: `'dice'`, the mean Dice of the classes but the background
   * (the class flagged `background`, else named so, else of value 0; every class when there is none), the loss
   * breaking ties and standing in when the Dice is undefined; or `'loss'`, the validation loss.
   */
  select?: 'dice' | 'loss';
  /**
   * Decay of an exponential moving average of the weights, validated and kept in place of the raw weights; `0` turns
   * it off.
   */
  ema?: number;
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
  validateEvery: number | null;
  select: 'dice' | 'loss';
  ema: number;
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
  validateEvery: null,
  select: 'dice',
  ema: 0,
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
  /**
   * After the first steps, when the step time is known: what the run chose and why, one sentence each (network
   * size, steps expected in the budget, schedule, validation, selection).
   */
  | { type: 'plan'; network: string; steps: string; schedule: string; validation: string; selection: string }
  | { type: 'step'; epoch: number; step: number; stepsPerEpoch: number; loss: number; lr: number; seconds: number }
  /** A validation: its history row, and whether its weights are the best so far (and were saved as the model). */
  | { type: 'epoch'; record: EpochRecord; best: boolean }
  | { type: 'stop'; reason: string }
  /** After `data`: what reading the data converted (`info`), or what looks wrong in it (`warning`). */
  | { type: 'notice'; level: 'info' | 'warning'; message: string };

/** One row of the training history (`history.csv`): one validation. */
export interface EpochRecord {
  /** The epoch the validation fell in (1-based; a validation at the end of epoch 2 has epoch 2). */
  epoch: number;
  /** Optimizer steps done. */
  step: number;
  lr: number;
  /** Mean training loss of the steps since the previous validation. */
  trainLoss: number;
  valLoss: number;
  valPixelAccuracy: number;
  valMeanIoU: number;
  valMeanDice: number;
  /** Mean Dice of the classes but the background (see {@link TrainOptions.select}). */
  valForegroundDice: number;
  /** Seconds since the previous validation, this one included. */
  seconds: number;
  /** Seconds since the start of the run. */
  elapsed: number;
}

/** Result of a training run. */
export interface TrainResult {
  out: string;
  manifest: ModelManifest;
  history: EpochRecord[];
  /** Epoch and step of the kept validation. */
  bestEpoch: number;
  bestStep: number;
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
        undefined,
        name,
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
  if (r.validateEvery !== null) int('validateEvery', 1);
  if (r.select !== 'dice' && r.select !== 'loss') {
    throw new InvalidOptionError(
      `Expected "dice" or "loss" for select but received ${describeValue(r.select)}.`,
      undefined,
      'select',
    );
  }
  if (!(typeof r.ema === 'number' && r.ema >= 0 && r.ema < 1)) {
    throw new InvalidOptionError(
      `Expected a decay in [0, 1) for ema (0 turns the average off) but received ${describeValue(r.ema)}.`,
      undefined,
      'ema',
    );
  }
  if (!(typeof r.lr === 'number' && r.lr > 0 && r.lr < 10)) {
    throw new InvalidOptionError(
      `Expected a learning rate between 0 and 10 (exclusive) for lr but received ${describeValue(r.lr)}.`,
      undefined,
      'lr',
    );
  }
  if (!(typeof r.valSplit === 'number' && r.valSplit >= 0 && r.valSplit < 1)) {
    throw new InvalidOptionError(
      `Expected a number in [0, 1) for valSplit but received ${describeValue(r.valSplit)}.`,
      undefined,
      'valSplit',
    );
  }
  if (r.timeBudgetMinutes !== null && !(typeof r.timeBudgetMinutes === 'number' && r.timeBudgetMinutes > 0)) {
    throw new InvalidOptionError(
      `Expected a positive number of minutes for timeBudgetMinutes but received ${describeValue(r.timeBudgetMinutes)}.`,
      undefined,
      'timeBudgetMinutes',
    );
  }
  if (!LOSS_NAMES.includes(r.loss as (typeof LOSS_NAMES)[number])) getLoss(r.loss);
  return r;
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
  const started = performance.now(); // a time budget counts reading the data and choosing the network too
  const o = resolveTrainOptions(request.options);
  const plugin = request.architecture;
  const archOptions = resolveArchitectureOptions(plugin, request.architectureOptions);
  const multiple = plugin.inputMultiple(archOptions);
  if (o.tileSize % multiple !== 0) {
    throw new InvalidOptionError(
      `Expected tileSize to be a multiple of ${multiple} for architecture "${plugin.name}" but received ${o.tileSize}.`,
      `Set tileSize to ${Math.max(multiple, Math.round(o.tileSize / multiple) * multiple)}.`,
      'tileSize',
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
  const maxSteps = stepsPerEpoch * o.epochs;
  const schedule = makeSchedule({ name: o.schedule, baseLr: o.lr, totalSteps: maxSteps, warmupSteps: o.warmupSteps });
  const budgetSeconds = o.timeBudgetMinutes === null ? null : o.timeBudgetMinutes * 60;
  const engine = activeEngine();
  const setup: NetworkSetup = {
    plugin,
    channels,
    numClasses,
    options: o,
    engine: engine?.name,
    pluginModules: request.pluginModules ?? [],
    lossOptions,
    lossFn,
  };

  // Model and optimizer, fresh or from a checkpoint
  let state: CheckpointState = {
    epoch: 0,
    step: 0,
    history: [],
    best: null,
    validationsWithoutImprovement: 0,
    elapsedSeconds: 0,
    startedAt: new Date().toISOString(),
    averageUpdates: 0,
    architectureOptions: archOptions as Record<string, unknown>,
  };
  const checkpoint = request.resume ? await latestCheckpoint(out) : undefined;
  if (request.resume && !checkpoint) {
    throw new InputNotFoundError(
      `--resume was given but ${join(out, CHECKPOINTS)} holds no checkpoint.`,
      'Run without --resume to start training, or point --out at the folder of an earlier run.',
    );
  }
  let network: Network;
  let networkChoice: string;
  let averageState: { values: tf.Tensor[]; updates: number } | undefined;
  if (checkpoint) {
    state = JSON.parse(await readFile(join(checkpoint, 'state.json'), 'utf8')) as CheckpointState;
    registerPluginLayers(plugin);
    const model = await deserializeModel(
      await readFile(join(checkpoint, MODEL_FILES.topology), 'utf8'),
      await readFile(join(checkpoint, MODEL_FILES.weights)),
      checkpoint,
    );
    network = await openNetwork(setup, model, state.architectureOptions);
    await setOptimizerWeights(network.optimizer, await readNamedWeights(checkpoint, 'optimizer'));
    if (state.averageUpdates > 0) {
      const values = (await readNamedWeights(checkpoint, 'average')).map((w) => w.tensor);
      averageState = { values, updates: state.averageUpdates };
    }
    networkChoice = `resumed with the checkpoint's options (${describeOptions(state.architectureOptions)})`;
  } else {
    const choice = await chooseNetwork(
      setup,
      request.architectureOptions ?? {},
      archOptions as Record<string, unknown>,
      budgetSeconds,
      (image, labels) => fillBatch(trainSamples, o, normalization, rootRng.fork('size-trial'), image, labels),
    );
    networkChoice = choice.reason;
    state.architectureOptions = choice.options;
    network = choice.network;
    await makeOutputDir(out);
  }
  cleanup.push(() => network.dispose());
  const { model } = network;
  const chosenOptions = state.architectureOptions;
  const average = o.ema > 0 ? new WeightAverage(model, o.ema, averageState) : undefined;
  if (averageState) tf.dispose(averageState.values);
  cleanup.push(async () => average?.dispose());
  const clock = new TrainingClock(budgetSeconds, maxSteps, state.elapsedSeconds, started);
  emit({
    type: 'start',
    epochs: o.epochs,
    stepsPerEpoch,
    startEpoch: state.epoch + 1,
    parameters: network.parameters,
    workers: network.workers,
    workersReason: network.workersReason,
  });
  const background = backgroundClass(classMap.classes);
  const backgroundIndex = background ? classMap.classes.indexOf(background) : -1;
  const selection =
    (o.select === 'dice' && valSamples.length
      ? `best validation foreground Dice (${background ? `every class but ${background.name}` : 'every class: no background class'})`
      : 'lowest validation loss') +
    (valSamples.length ? '' : ' (no validation images: the training loss)') +
    (average ? ` of the exponential moving average of the weights (decay ${o.ema})` : '');
  const draft = (metrics: EvaluationReport | null, stopReason: string): ManifestDraft =>
    draftManifest(plugin, chosenOptions, model, {
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
        options: { ...o, microBatch: network.microBatch, workers: network.workers } as unknown as Record<
          string,
          unknown
        >,
        seed: o.seed,
        engine: engine
          ? { name: engine.name, backend: engine.backend, threads: engine.threads }
          : { name: tf.getBackend(), backend: tf.getBackend(), threads: 1 },
        startedAt: state.startedAt,
        finishedAt: new Date().toISOString(),
        durationSeconds: Math.round(state.elapsedSeconds * 10) / 10,
        epochs: state.epoch,
        steps: state.step,
        bestEpoch: state.best?.epoch ?? 0,
        bestStep: state.best?.step ?? 0,
        selection,
        stopReason,
        metrics: metrics ? { ...metrics } : {},
      },
      createdBy: `@tessera/core ${CORE_VERSION}`,
    });

  let stopReason = `reached ${o.epochs} epochs`;
  let bestReport: EvaluationReport | null = null;
  let lossSum = 0;
  let lossSteps = 0;
  let sinceValidation = performance.now();
  let planned = false;
  let lastLr = o.lr;
  const plan = () => {
    if (planned) return;
    planned = true;
    emit({
      type: 'plan',
      network: networkChoice,
      steps: describeSteps(clock, state.step, maxSteps, o.epochs),
      schedule: describeSchedule(o, budgetSeconds),
      validation: describeValidation(o, valSamples.length, stepsPerEpoch, budgetSeconds),
      selection,
    });
  };
  const lrAt = (step: number) => (budgetSeconds === null ? schedule(step) : schedule(step, clock.progress(step)));

  /** Validates the current (or averaged) weights, records the row, keeps the best, and checkpoints. */
  const validate = async (): Promise<boolean> => {
    const validationStarted = performance.now();
    const evaluate = async () => {
      const evaluation = valSamples.length
        ? await evaluateSamples(model, valSamples, numClasses, multiple, o.loss, lossOptions)
        : { loss: lossSum / Math.max(1, lossSteps), confusion: null };
      const report = evaluation.confusion ? makeEvaluationReport(evaluation.confusion, classMap.classes) : null;
      return { loss: evaluation.loss, report };
    };
    const { loss, report } = average ? await average.swapped(evaluate) : await evaluate();
    clock.recordValidation((performance.now() - validationStarted) / 1000);
    state.elapsedSeconds = clock.elapsed();
    const record: EpochRecord = {
      epoch: Math.ceil(state.step / stepsPerEpoch),
      step: state.step,
      lr: lastLr,
      trainLoss: lossSum / Math.max(1, lossSteps),
      valLoss: loss,
      valPixelAccuracy: report?.pixelAccuracy ?? NaN,
      valMeanIoU: report?.meanIoU ?? NaN,
      valMeanDice: report?.meanDice ?? NaN,
      valForegroundDice: report
        ? foregroundDice(
            report.classes.map((c) => c.dice),
            backgroundIndex,
          )
        : NaN,
      seconds: Math.round(((performance.now() - sinceValidation) / 1000) * 100) / 100,
      elapsed: Math.round(state.elapsedSeconds * 10) / 10,
    };
    sinceValidation = performance.now();
    lossSum = 0;
    lossSteps = 0;
    state.history.push(record);
    state.epoch = record.epoch;
    const best = state.best === null || isBetter(record, state.best, o.select);
    if (best) {
      state.best = record;
      state.validationsWithoutImprovement = 0;
      bestReport = report;
      const save = () => saveModel(out, model, draft(report, 'in progress'));
      await (average ? average.swapped(save) : save());
    } else {
      state.validationsWithoutImprovement++;
    }
    await writeHistory(out, state.history);
    const ckptDir = join(out, CHECKPOINTS, `step-${String(state.step).padStart(7, '0')}`);
    state.averageUpdates = average?.count ?? 0;
    await saveCheckpoint(ckptDir, model, network.optimizer, average, state);
    await pruneCheckpoints(join(out, CHECKPOINTS), o.keepCheckpoints);
    emit({ type: 'epoch', record, best });
    return best;
  };

  const batchImage = new Float32Array(o.batchSize * o.tileSize * o.tileSize * channels);
  const batchLabels = new Int32Array(o.batchSize * o.tileSize * o.tileSize);
  let lastValidated = state.step;
  for (;;) {
    if (request.signal?.aborted) {
      stopReason = 'interrupted';
      break;
    }
    if (state.step >= maxSteps) break;
    if (clock.budgetSpent()) {
      stopReason = `time budget of ${o.timeBudgetMinutes} minutes`;
      break;
    }
    const epoch = Math.floor(state.step / stepsPerEpoch) + 1;
    fillBatch(trainSamples, o, normalization, rootRng.fork(`step-${state.step}`), batchImage, batchLabels);
    const lr = lrAt(state.step);
    lastLr = lr;
    setLearningRate(network.optimizer, lr);
    const stepStarted = performance.now();
    const loss = await trainStep(network.step, batchImage, batchLabels);
    clock.recordStep((performance.now() - stepStarted) / 1000);
    if (!Number.isFinite(loss)) {
      throw new InvalidOptionError(
        `Training diverged at epoch ${epoch}, step ${state.step + 1}: the loss is ${loss}.`,
        `Lower the learning rate (--lr ${o.lr / 10}).`,
      );
    }
    average?.update();
    lossSum += loss;
    lossSteps++;
    state.step++;
    emit({
      type: 'step',
      epoch,
      step: state.step - (epoch - 1) * stepsPerEpoch,
      stepsPerEpoch,
      loss,
      lr,
      seconds: clock.elapsed(),
    });
    if (state.step >= 3) plan();
    const due =
      o.validateEvery !== null
        ? state.step % o.validateEvery === 0
        : budgetSeconds !== null
          ? clock.validationDue()
          : state.step % stepsPerEpoch === 0;
    if (due) {
      lastValidated = state.step;
      await validate();
      if (o.patience > 0 && state.validationsWithoutImprovement >= o.patience) {
        stopReason = `early stopping: ${o.select === 'dice' && valSamples.length ? 'validation foreground Dice' : 'validation loss'} did not improve for ${o.patience} validations`;
        break;
      }
    }
  }
  plan();
  // The last steps are validated too, so a time-bounded run keeps the weights of its very end when they are best.
  if (stopReason !== 'interrupted' && state.step > lastValidated) await validate();
  await network.pool?.terminate();
  emit({ type: 'stop', reason: stopReason });

  // The kept model is the best validation's: its report is that validation's (re-evaluated after a resume, whose best
  // validation may come from an earlier session).
  const { loadModel } = await import('../model/model-io.js');
  if (state.best === null) {
    throw new InvalidOptionError(
      `Training stopped (${stopReason}) before its first validation, so no model was written to ${out}.`,
      'Give a larger --time-budget or fewer --steps-per-epoch.',
    );
  }
  const best = await loadModel(out);
  const finalEval =
    bestReport ??
    makeEvaluationReport(
      (await evaluateSamples(best.model, valSamples, numClasses, multiple, o.loss, lossOptions)).confusion,
      classMap.classes,
    );
  const manifest = await saveModel(out, best.model, draft(finalEval, stopReason));
  best.model.dispose();
  return {
    out,
    manifest,
    history: state.history,
    bestEpoch: state.best.epoch,
    bestStep: state.best.step,
    stopReason,
    validation: finalEval,
  };
}

/** Whether a validation beats the best so far by the selection metric (the loss breaks ties and stands in). */
function isBetter(record: EpochRecord, best: EpochRecord, select: 'dice' | 'loss'): boolean {
  if (select === 'dice' && Number.isFinite(record.valForegroundDice) && Number.isFinite(best.valForegroundDice)) {
    if (record.valForegroundDice !== best.valForegroundDice) return record.valForegroundDice > best.valForegroundDice;
  }
  return record.valLoss < best.valLoss;
}

/** Fills a batch with augmented random crops of the training samples. */
function fillBatch(
  samples: LoadedSample[],
  o: ResolvedTrainOptions,
  normalization: Normalization,
  rng: Random,
  image: Float32Array,
  labels: Int32Array,
): void {
  const tile = o.tileSize;
  for (let b = 0; b < o.batchSize; b++) {
    const sample = samples[rng.int(samples.length)];
    const crop = randCropAugment(sample, tile, o.augment === false ? {} : o.augment, rng, normalization);
    image.set(crop.image, b * crop.image.length);
    labels.set(crop.labels, b * tile * tile);
  }
}
