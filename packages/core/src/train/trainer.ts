/**
 * The default trainer: reads the data (`training-data.ts`), chooses and builds the network (`network.ts`), and runs the
 * training loop (`loop.ts`) with its callbacks: the time budget, the validation schedule, early stopping, the best
 * weights as the model, the history, checkpoints and progress events (`callbacks.ts`). Options and types are in
 * `options.ts`, whole-image evaluation in `evaluate.ts`, the recipe's clock and descriptions in `recipe.ts`.
 */
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { resolveArchitectureOptions } from '../arch/architecture.js';
import { registerPluginLayers } from '../arch/plugin-layers.js';
import { backgroundClass } from '../data/class-map.js';
import { createRandom } from '../data/random.js';
import { activeEngine } from '../engine/engine.js';
import { InputNotFoundError, InvalidOptionError } from '../errors.js';
import type { InitProvenance, ModelManifest } from '../model/manifest.js';
import {
  checkOutputDir,
  deserializeModel,
  loadModel,
  draftManifest,
  makeOutputDir,
  MODEL_FILES,
  saveModel,
  type ManifestDraft,
} from '../model/model-io.js';
import { CORE_VERSION } from '../version.js';
import { bestModelSaver, checkpointer, historyWriter, progressEvents } from './callbacks.js';
import {
  CHECKPOINTS,
  latestCheckpoint,
  readNamedWeights,
  saveCheckpoint,
  type CheckpointState,
} from './checkpoints.js';
import { evaluateSamples } from './evaluate.js';
import { earlyStopping, runTrainingLoop, timeBudget, validationSchedule, type TrainingCallback } from './loop.js';
import { getLoss } from './losses.js';
import { makeEvaluationReport, type EvaluationReport } from './metrics.js';
import { chooseNetwork, describeOptions, openNetwork, trainStep, type Network, type NetworkSetup } from './network.js';
import { setLearningRate, setOptimizerWeights } from './optimizers.js';
import {
  TRAINER_API_VERSION,
  resolveTrainOptions,
  type EpochRecord,
  type TrainerPlugin,
  type TrainRequest,
  type TrainResult,
} from './options.js';
import {
  describeSchedule,
  describeSteps,
  describeValidation,
  foregroundDice,
  TrainingClock,
  WeightAverage,
} from './recipe.js';
import { makeSchedule } from './schedules.js';
import { fillBatch, prepareTrainingData } from './training-data.js';
import { transferWeights, type TransferReport } from './transfer.js';
export { MIN_BUDGET_STEPS } from './network.js';
export { validateTrainerPlugin } from './options.js';
export * from './options.js';
export { evaluateSamples } from './evaluate.js';

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
  return {
    name: 'default',
    apiVersion: TRAINER_API_VERSION,
    description: 'supervised training on images with label masks',
    learnsFrom: 'masks',
    train: trainModel,
  };
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
  if (request.masks === undefined) {
    throw new InvalidOptionError(
      'Expected masks (a folder of label masks matched to the images by file name) for the default trainer.',
      'Give --masks, or pretrain without labels: tessera pretrain.',
      'masks',
    );
  }
  const plugin = request.architecture;
  const init = request.init !== undefined ? await loadInitModel(request, plugin) : null;
  let initHeld = init !== null;
  const releaseInit = () => {
    if (initHeld) init!.model.dispose();
    initHeld = false;
  };
  cleanup.push(async () => releaseInit());
  // With --init, the initial model's options are the run's, but for those the user set.
  const userArchOptions = { ...(init?.manifest.architecture.options ?? {}), ...(request.architectureOptions ?? {}) };
  const archOptions = resolveArchitectureOptions(plugin, userArchOptions);
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

  const checkpoint = request.resume ? await latestCheckpoint(out) : undefined;
  if (request.resume && !checkpoint) {
    throw new InputNotFoundError(
      `--resume was given but ${join(out, CHECKPOINTS)} holds no checkpoint.`,
      'Run without --resume to start training, or point --out at the folder of an earlier run.',
    );
  }
  const resumed = checkpoint
    ? (JSON.parse(await readFile(join(checkpoint, 'state.json'), 'utf8')) as CheckpointState)
    : undefined;

  // Data. The input normalisation is the initial model's (its weights were trained on inputs normalised so; data
  // statistics of a few new images can differ several-fold), or the resumed run's, else computed on the images.
  const rootRng = createRandom(o.seed);
  const inherit = resumed?.normalization
    ? { normalization: resumed.normalization, channels: resumed.normalization.mean.length, from: 'resumed run' }
    : init
      ? { normalization: init.manifest.normalization, channels: init.manifest.inputChannels, from: 'initial model' }
      : undefined;
  const data = await prepareTrainingData(request, o, rootRng, inherit);
  const { classMap, trainPairs, valPairs, validation, channels, normalization, trainSamples, valSamples } = data;
  const numClasses = classMap.classes.length;
  emit({
    type: 'data',
    trainSamples: trainSamples.length,
    validationSamples: valSamples.length,
    classes: classMap.classes.map((c) => c.name),
    channels,
  });
  for (const notice of data.notices) emit({ type: 'notice', ...notice });
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
  const transferred: { report?: TransferReport } = {};
  if (init) setup.initialWeights = (model) => (transferred.report = transferWeights(init.model, model));
  // Pretrained layers: those loaded from the initial model, or by the resumed run's (see `state` below).
  setup.pretrained = () => {
    const layers = transferred.report?.loaded ?? state.pretrainedLayers ?? [];
    return { layers, frozen: o.freeze === 'encoder' ? encoderLayers(plugin, state.architectureOptions, layers) : [] };
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
  if (resumed) state = resumed;
  state.normalization = normalization;
  checkPretrainedOptions(o, plugin, init !== null || (state.pretrainedLayers?.length ?? 0) > 0);
  let network: Network;
  let networkChoice: string;
  let averageState: { values: tf.Tensor[]; updates: number } | undefined;
  // The plugin's own layer classes are needed to read checkpoints and the best model back (an SDK caller may pass a
  // plugin that no registry has seen).
  registerPluginLayers(plugin);
  if (checkpoint) {
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
      userArchOptions,
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
  const frozen = network.step.freeze?.layers ?? [];
  if (o.freeze === 'encoder' && frozen.length === 0) {
    throw new InvalidOptionError(
      `Expected freeze "encoder" to freeze encoder layers loaded from the initial model, but none of the layers ` +
        `loaded (${setup.pretrained().layers.length}) is one of ${plugin.name}'s encoder layers.`,
      'Drop --freeze, or start from a model of the same encoder.',
      'freeze',
    );
  }
  if (transferred.report) state.pretrainedLayers = transferred.report.loaded;
  const initProvenance: InitProvenance | undefined =
    init && transferred.report
      ? {
          model: request.initSource ?? request.init!,
          weightsSha256: init.manifest.files.weights.sha256,
          ...transferred.report,
          ...(frozen.length ? { frozen: [...frozen] } : {}),
          normalization: data.normalizationSource === 'initial model' ? 'initial model' : 'training images',
        }
      : undefined;
  releaseInit(); // its weights are in the network now
  if (initProvenance) emit({ type: 'init', ...initProvenance });
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
          masks: resolve(request.masks!),
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
        ...(initProvenance ? { init: initProvenance } : {}),
      },
      createdBy: `@tessera/core ${CORE_VERSION}`,
    });

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

  /** One optimisation step: an augmented batch, the scheduled learning rate, forward and backward passes. */
  const batchImage = new Float32Array(o.batchSize * o.tileSize * o.tileSize * channels);
  const batchLabels = new Int32Array(o.batchSize * o.tileSize * o.tileSize);
  const step = async (done: number) => {
    fillBatch(trainSamples, o, normalization, rootRng.fork(`step-${done}`), batchImage, batchLabels);
    request.transformBatch?.(batchImage, batchLabels, rootRng.fork(`transform-${done}`));
    const freeze = network.step.freeze;
    if (freeze) {
      const active = o.freezeEpochs === null || done < o.freezeEpochs * stepsPerEpoch;
      if (freeze.active && !active) {
        const message = `the ${freeze.layers.length} frozen encoder layers train from step ${done + 1} (epoch ${o.freezeEpochs! + 1}) on`;
        emit({ type: 'notice', level: 'info', message });
      }
      freeze.active = active;
    }
    const lr = lrAt(done);
    lastLr = lr;
    setLearningRate(network.optimizer, lr);
    const stepStarted = performance.now();
    const loss = await trainStep(network.step, batchImage, batchLabels);
    clock.recordStep((performance.now() - stepStarted) / 1000);
    if (!Number.isFinite(loss)) {
      throw new InvalidOptionError(
        `Training diverged at epoch ${Math.floor(done / stepsPerEpoch) + 1}, step ${done + 1}: the loss is ${loss}.`,
        `Lower the learning rate (--lr ${o.lr / 10}).`,
      );
    }
    average?.update(freeze?.active ? freeze.frozenVariables : undefined);
    lossSum += loss;
    lossSteps++;
    state.step = done + 1;
    return { loss, lr };
  };

  /** Validates the current (or averaged) weights: the history row, and whether it is the best so far. */
  const validate = async () => {
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
      bestReport = report;
    }
    return { record, best };
  };

  const metric = o.select === 'dice' && valSamples.length ? 'validation foreground Dice' : 'validation loss';
  const callbacks: TrainingCallback[] = [
    ...(budgetSeconds !== null ? [timeBudget(clock, o.timeBudgetMinutes!)] : []),
    validationSchedule(o.validateEvery, budgetSeconds !== null ? clock : null),
    earlyStopping(o.patience, metric, state),
    bestModelSaver(() => {
      const save = () => saveModel(out, model, draft(bestReport, 'in progress'));
      return average ? average.swapped(save) : save();
    }),
    historyWriter(out, state.history),
    checkpointer(out, o.keepCheckpoints, (dir) => {
      state.averageUpdates = average?.count ?? 0;
      return saveCheckpoint(dir, model, network.optimizer, average, state);
    }),
    progressEvents(emit, () => clock.elapsed(), plan),
  ];
  const stopReason = await runTrainingLoop({
    startStep: state.step,
    stepsPerEpoch,
    maxSteps,
    epochs: o.epochs,
    step,
    validate,
    callbacks,
    signal: request.signal,
  });
  await network.pool?.terminate();
  emit({ type: 'stop', reason: stopReason });

  // The kept model is the best validation's: its report is that validation's (re-evaluated after a resume, whose best
  // validation may come from an earlier session).
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

/**
 * The options of pretrained layers (`freeze`, `freezeEpochs`, `lrPretrained`) need pretrained layers and, for
 * `freeze`, an architecture that names its encoder.
 * @throws InvalidOptionError otherwise.
 */
function checkPretrainedOptions(
  o: ReturnType<typeof resolveTrainOptions>,
  plugin: TrainRequest['architecture'],
  pretrained: boolean,
): void {
  const asked = [
    ...(o.freeze !== 'none' ? [`freeze "${o.freeze}"`] : []),
    ...(o.lrPretrained !== null ? [`lrPretrained ${o.lrPretrained}`] : []),
  ];
  if (asked.length && !pretrained) {
    throw new InvalidOptionError(
      `Expected init (a trained model to start from) with ${asked.join(' and ')}: without it no layer is pretrained.`,
      'Add --init <model folder>, or drop the option.',
      o.freeze !== 'none' ? 'freeze' : 'lrPretrained',
    );
  }
  if (o.freeze === 'encoder' && !plugin.encoder) {
    throw new InvalidOptionError(
      `Expected an architecture that names its encoder layers for freeze "encoder", but "${plugin.name}" declares no encoder.`,
      'Drop --freeze, or give the plugin an encoder(options) (see the plugin guide).',
      'freeze',
    );
  }
}

/** The layers among `layers` that belong to the architecture's encoder (its `encoder(options).layers` pattern). */
function encoderLayers(
  plugin: TrainRequest['architecture'],
  options: Record<string, unknown>,
  layers: readonly string[],
): string[] {
  const pattern = plugin.encoder?.(options as never).layers;
  return pattern ? layers.filter((name) => new RegExp(pattern.source, pattern.flags.replace('g', '')).test(name)) : [];
}

/**
 * The model a run with `init` starts from: loaded with the plugin's layers registered, of the run's architecture.
 * @throws InvalidOptionError when `resume` is asked too, or the model is of another architecture; the model folder's
 * own errors when it cannot be read.
 */
async function loadInitModel(
  request: TrainRequest,
  plugin: TrainRequest['architecture'],
): Promise<{ model: tfl.LayersModel; manifest: ModelManifest }> {
  if (request.resume) {
    throw new InvalidOptionError(
      `Expected either init or resume, but received both (init "${request.init}"): a resumed run continues its own checkpoint.`,
      'Drop init to resume, or start a new run (another out folder) from the initial model.',
      ['init', 'resume'],
    );
  }
  registerPluginLayers(plugin);
  const loaded = await loadModel(request.init!);
  const name = loaded.manifest.architecture.name;
  if (name !== plugin.name) {
    loaded.model.dispose();
    throw new InvalidOptionError(
      `Expected an initial model of architecture "${plugin.name}" but "${request.init}" is a "${name}" model.`,
      `Train architecture "${name}" to start from it, or give a "${plugin.name}" model.`,
      'init',
    );
  }
  return loaded;
}
