/**
 * The trainer's vocabulary: training options with their defaults and checks, the request, progress events, history
 * rows, the result, and the trainer plugin interface.
 */
import type { ArchitecturePlugin } from '../arch/architecture.js';
import { DEFAULT_AUGMENT, type AugmentOptions } from '../data/augment.js';
import type { ClassMap } from '../data/class-map.js';
import type { Random } from '../data/random.js';
import { InvalidOptionError, PluginError, describeValue } from '../errors.js';
import type { InitProvenance, ModelManifest } from '../model/manifest.js';
import { getLoss, LOSS_NAMES } from './losses.js';
import type { EvaluationReport } from './metrics.js';
import type { ScheduleName } from './schedules.js';

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
  /**
   * With `init`: `'encoder'` freezes the encoder layers loaded from the initial model (the architecture's `encoder`
   * pattern): no gradient, no update, batch norm in inference mode, so they stay bit-identical while frozen.
   */
  freeze?: 'encoder' | 'none';
  /** Epochs the freeze lasts, then the layers train too; default: the whole run. */
  freezeEpochs?: number;
  /**
   * With `init`: the base learning rate of the layers loaded from the initial model (the others train at `lr`); it
   * follows the schedule as `lr` does. Default: `lr`.
   */
  lrPretrained?: number;
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
  freeze: 'encoder' | 'none';
  /** `null`: the whole run. */
  freezeEpochs: number | null;
  /** `null`: `lr`. */
  lrPretrained: number | null;
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
  freeze: 'none',
  freezeEpochs: null,
  lrPretrained: null,
};

/** What to train on and where to write. */
export interface TrainRequest {
  architecture: ArchitecturePlugin<any>;
  /** User options of the architecture (validated against its schema). */
  architectureOptions?: Record<string, unknown>;
  images: string;
  /** The label masks of `images` (matched by file name); what a supervised trainer trains to predict. */
  masks?: string;
  /**
   * For trainers that learn from images alone (`learnsFrom: 'images'`): folders of images and slides, and slide files,
   * to learn from (default: `images`). The default trainer reads `images` and `masks` only.
   */
  sources?: string[];
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
  /**
   * A trained model folder whose weights the network starts from (transfer learning): layers matched by name and
   * weight shapes are loaded, the others (a head for another class count, a first convolution for another channel
   * count) start fresh. Its architecture options are the run's, but for those `architectureOptions` sets.
   */
  init?: string;
  /** How `init` was named, recorded in the manifest instead of its path (e.g. a model package's `name@version`). */
  initSource?: string;
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
  /**
   * Changes each training batch after augmentation, in place: `image` is `[batch, tile, tile, channels]` normalised,
   * `labels` `[batch, tile, tile]` class indices (e.g. a self-supervised trainer masks regions of the input). `random`
   * is the step's own stream, so a run stays reproducible.
   */
  transformBatch?: (image: Float32Array, labels: Int32Array, random: Random) => void;
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
  /** With `init`: the initial model and what was loaded from it (before `start`). */
  | ({ type: 'init' } & InitProvenance)
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

/**
 * A trainer plugin: turns a {@link TrainRequest} into a trained model folder. Made by a factory (the default export
 * of a `@tessera/trainer-*` or `tessera-trainer-*` package) and chosen with `tessera train --trainer <name>`.
 */
export interface TrainerPlugin {
  /** Lower-case letters, digits and "-". */
  readonly name: string;
  /** {@link TRAINER_API_VERSION} of the core it was written for. */
  readonly apiVersion: number;
  /** One line for `tessera trainers`. */
  readonly description?: string;
  /**
   * What it learns from: `'masks'` (images with label masks: supervised; the default) or `'images'` (images and slides
   * alone: self-supervised pretraining, whose model is a starting point for `init`).
   */
  readonly learnsFrom?: 'masks' | 'images';
  train(request: TrainRequest): Promise<TrainResult>;
}

/**
 * Checks a trainer plugin's name, apiVersion and `train` function.
 * @throws PluginError naming the plugin, what is wrong and the fix.
 */
export function validateTrainerPlugin(plugin: unknown, source = 'plugin'): TrainerPlugin {
  const p = plugin as Partial<TrainerPlugin> | null;
  if (p === null || typeof p !== 'object') {
    throw new PluginError(`The ${source} is not a trainer plugin object: received ${describeValue(plugin)}.`);
  }
  if (typeof p.name !== 'string' || !/^[a-z][a-z0-9-]*$/.test(p.name)) {
    throw new PluginError(
      `Trainer plugin from ${source} has an invalid name ${describeValue(p.name)}: expected lower-case letters, digits and "-".`,
    );
  }
  if (p.apiVersion !== TRAINER_API_VERSION) {
    throw new PluginError(
      `Trainer "${p.name}" from ${source} was written for trainer API version ${String(p.apiVersion)}, ` +
        `but this @tessera/core speaks version ${TRAINER_API_VERSION}.`,
      `Install a version of the plugin built for trainer API ${TRAINER_API_VERSION}.`,
    );
  }
  if (typeof p.train !== 'function')
    throw new PluginError(`Trainer "${p.name}" from ${source} has no train() function.`);
  if (p.learnsFrom !== undefined && p.learnsFrom !== 'masks' && p.learnsFrom !== 'images') {
    throw new PluginError(
      `Expected learnsFrom "masks" or "images" for trainer "${p.name}" from ${source} but received ${describeValue(p.learnsFrom)}.`,
    );
  }
  return p as TrainerPlugin;
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
  if (r.lrPretrained !== null && !(typeof r.lrPretrained === 'number' && r.lrPretrained > 0 && r.lrPretrained < 10)) {
    throw new InvalidOptionError(
      `Expected a learning rate between 0 and 10 (exclusive) for lrPretrained but received ${describeValue(r.lrPretrained)}.`,
      undefined,
      'lrPretrained',
    );
  }
  if (r.freeze !== 'encoder' && r.freeze !== 'none') {
    throw new InvalidOptionError(
      `Expected "encoder" or "none" for freeze but received ${describeValue(r.freeze)}.`,
      undefined,
      'freeze',
    );
  }
  if (r.freezeEpochs !== null) int('freezeEpochs', 1);
  if (r.freezeEpochs !== null && r.freeze !== 'encoder') {
    throw new InvalidOptionError(
      `Expected freeze "encoder" with freezeEpochs ${r.freezeEpochs} but received freeze ${describeValue(r.freeze)}.`,
      'Add --freeze encoder, or drop --freeze-epochs.',
      'freezeEpochs',
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
