import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import {
  InvalidOptionError,
  readManifest,
  writeFileAtomic,
  type InitProvenance,
  type TrainOptions,
} from '@tessera/core';
import { getArchitecture, loadRegistry } from '../plugins.js';
import { resolveModelReference } from '../model-packages.js';
import { getTrainer } from '../trainers.js';
import { colour, formatDuration, info, ProgressBar, warn } from '../progress.js';
import { writeTrainingReport } from '../report.js';
import { parseKeyValues, requireOption, startEngine } from './shared.js';

/** Options of `tessera train` after parsing. */
export interface TrainCliOptions {
  arch: string;
  archOption: string[] | Record<string, unknown>;
  images?: string;
  masks?: string;
  out: string;
  classes?: string;
  epochs?: number;
  timeBudget?: number;
  tile?: number;
  batch?: number;
  stepsPerEpoch?: number;
  optimizer?: string;
  lr?: number;
  schedule?: 'constant' | 'step' | 'cosine';
  warmupSteps?: number;
  loss?: string;
  classWeights?: number[];
  valSplit?: number;
  valImages?: string;
  valMasks?: string;
  patience?: number;
  validateEvery?: number;
  select?: 'dice' | 'loss';
  ema?: number;
  augment?: boolean | Record<string, unknown>;
  mpp?: number;
  seed?: number;
  workers?: number;
  microBatch?: number;
  backend?: string;
  config?: string;
  resume?: boolean;
  init?: string;
  /** Trainer name, plugin package or file (default `default`). */
  trainer?: string;
  /** `tessera pretrain`: every input given to --images. */
  sources?: string[];
  /** Run as `tessera pretrain` (a trainer that learns from images alone). */
  pretrain?: boolean;
  freeze?: 'encoder' | 'none';
  freezeEpochs?: number;
  lrPretrained?: number;
  quiet?: boolean;
  json?: boolean;
}

/** `tessera train`. */
export async function trainCommand(cliOptions: TrainCliOptions, cmd: Command): Promise<void> {
  let opts = cliOptions;
  if (cliOptions.config) {
    // Loaded only here: the schema library adds a noticeable share of the CLI's start-up time.
    const { mergeConfig, readConfig } = await import('../config.js');
    // From a file, archOption may be an object of architecture options and augment one of augmentation settings.
    const fromFile = await readConfig(cliOptions.config, cmd, ['archOption', 'augment']);
    opts = mergeConfig(
      cliOptions as unknown as Record<string, unknown>,
      fromFile,
      (key) => cmd.getOptionValueSource(key) === 'cli',
    ) as unknown as TrainCliOptions;
  }
  // --init: a model folder or an installed model package.
  const init = opts.init !== undefined ? await resolveModelReference(opts.init) : undefined;
  if (init) opts = { ...opts, init: init.dir };
  const trainer = await getTrainer(opts.trainer ?? 'default');
  const learnsFrom = trainer.plugin.learnsFrom ?? 'masks';
  if (opts.pretrain && learnsFrom !== 'images') {
    throw new InvalidOptionError(
      `Expected a trainer that learns from images alone for "tessera pretrain" but trainer "${trainer.plugin.name}" (${trainer.source}) learns from masks.`,
      'Use "tessera train" for it, or a trainer listed by "tessera trainers" as learning from images.',
      '--trainer',
    );
  }
  requireOption(opts.images, '--images', 'Give the folder of training images, e.g. --images data/train/images.');
  if (learnsFrom === 'masks') {
    requireOption(opts.masks, '--masks', 'Give the folder of label masks, e.g. --masks data/train/masks.');
  }
  const out = { quiet: opts.quiet, json: opts.json };
  const engine = await startEngine(opts.backend, out);
  // --init without --arch: the initial model's architecture.
  const arch =
    opts.init !== undefined && cmd.getOptionValueSource('arch') === 'default'
      ? (await readManifest(opts.init)).architecture.name
      : opts.arch;
  const plugins = await loadRegistry(arch);
  const { extraName, modules } = plugins;
  const architecture = getArchitecture(plugins, extraName ?? arch);
  const architectureOptions = Array.isArray(opts.archOption)
    ? parseKeyValues(opts.archOption, '--arch-option')
    : opts.archOption;
  const options: TrainOptions = {
    tileSize: opts.tile,
    batchSize: opts.batch,
    epochs: opts.epochs,
    stepsPerEpoch: opts.stepsPerEpoch,
    optimizer: opts.optimizer,
    lr: opts.lr,
    schedule: opts.schedule,
    warmupSteps: opts.warmupSteps,
    loss: opts.loss,
    classWeights: opts.classWeights,
    valSplit: opts.valSplit,
    seed: opts.seed,
    timeBudgetMinutes: opts.timeBudget,
    patience: opts.patience,
    validateEvery: opts.validateEvery,
    select: opts.select,
    ema: opts.ema,
    augment: opts.augment === false ? false : typeof opts.augment === 'object' ? opts.augment : undefined,
    workers: opts.workers,
    microBatch: opts.microBatch,
    freeze: opts.freeze,
    freezeEpochs: opts.freezeEpochs,
    lrPretrained: opts.lrPretrained,
  };

  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) process.exit(130);
    info(out, `\n${signal} received: stopping after the current step (send again to quit at once)`);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  let bar: ProgressBar | undefined;
  let currentEpoch = 0;
  const started = performance.now();
  try {
    const result = await trainer.plugin.train({
      architecture,
      architectureOptions,
      images: opts.images!,
      masks: opts.masks,
      ...(opts.sources ? { sources: opts.sources } : {}),
      valImages: opts.valImages,
      valMasks: opts.valMasks,
      classes: opts.classes,
      out: opts.out,
      options,
      resume: opts.resume,
      init: opts.init,
      initSource: init?.source,
      mpp: opts.mpp,
      signal: controller.signal,
      // Training worker threads import the plugins too, so that custom layers rebuild there.
      pluginModules: modules,
      onEvent: (event) => {
        switch (event.type) {
          case 'notice':
            if (event.level === 'warning') warn(out, event.message);
            else info(out, `note: ${event.message}`);
            break;
          case 'init':
            info(
              out,
              `init: ${event.loaded.length} layer(s) loaded from ${event.model} (weights SHA-256 ${event.weightsSha256.slice(0, 12)}…)` +
                (event.reinitialised.length
                  ? `; ${event.reinitialised.length} initialised afresh:`
                  : '; none initialised afresh'),
            );
            printInitTable(out, event, options);
            if (event.normalization) {
              info(
                out,
                event.normalization === 'initial model'
                  ? 'init: input normalisation (mean, std) taken from the initial model, which its weights expect'
                  : 'init: input normalisation computed on the training images (the initial model has other channels)',
              );
            }
            break;
          case 'data':
            info(
              out,
              `data: ${event.trainSamples} training and ${event.validationSamples} validation images, ${event.channels} channel(s), classes ${event.classes.join(', ')}`,
            );
            break;
          case 'start':
            info(
              out,
              `model: ${architecture.name}, ${event.parameters.toLocaleString('en-US')} parameters; at most ${event.epochs} epochs of ${event.stepsPerEpoch} steps${event.startEpoch > 1 ? `, resuming at epoch ${event.startEpoch}` : ''}`,
            );
            info(
              out,
              `training: engine ${engine.name}, ${event.workers} training worker${event.workers === 1 ? '' : 's'} (${event.workersReason.replace(/^asked for/, 'asked for with --workers')})`,
            );
            break;
          case 'plan':
            info(out, `network: ${event.network}`);
            info(out, `steps: ${event.steps}`);
            info(out, `schedule: ${event.schedule}`);
            info(out, `validation: ${event.validation}`);
            info(out, `kept weights: the ${event.selection}`);
            break;
          case 'step':
            if (event.epoch !== currentEpoch) {
              currentEpoch = event.epoch;
              bar = new ProgressBar(`epoch ${event.epoch}`, event.stepsPerEpoch, out, 'step');
            }
            bar?.update(event.step, `loss ${event.loss.toFixed(4)} lr ${event.lr.toExponential(2)}`);
            break;
          case 'epoch': {
            bar?.clear();
            const r = event.record;
            info(
              out,
              `step ${r.step} (epoch ${r.epoch}): train loss ${r.trainLoss.toFixed(4)}, val loss ${r.valLoss.toFixed(4)}, ` +
                `pixel acc ${r.valPixelAccuracy.toFixed(4)}, foreground Dice ${r.valForegroundDice.toFixed(4)}, ${formatDuration(r.elapsed)}` +
                (event.best ? colour(' (best, saved)', 'green') : ''),
            );
            currentEpoch = 0; // a fresh progress bar after the validation's line
            break;
          }
          case 'stop':
            bar?.clear();
            info(out, `stopped: ${event.reason}`);
            break;
        }
      },
    });
    const resolved = {
      command: opts.pretrain ? 'pretrain' : 'train',
      trainer: trainer.plugin.name,
      arch: architecture.name,
      archOptions: result.manifest.architecture.options,
      images: opts.sources ? opts.sources.map((p) => resolve(p)) : resolve(opts.images!),
      masks: opts.masks ? resolve(opts.masks) : null,
      valImages: opts.valImages ? resolve(opts.valImages) : null,
      valMasks: opts.valMasks ? resolve(opts.valMasks) : null,
      classes: result.manifest.classes,
      ignore: result.manifest.ignore ?? null,
      backend: engine.name,
      ...(result.manifest.training?.options ?? {}),
    };
    await writeFileAtomic(join(result.out, 'config.resolved.json'), JSON.stringify(resolved, null, 2) + '\n');
    const report = await writeTrainingReport(result.out, result.manifest, result.history, result.validation);
    const seconds = (performance.now() - started) / 1000;
    const v = result.validation;
    info(
      out,
      `model: ${result.out} (kept step ${result.bestStep}, epoch ${result.bestEpoch}; ${formatDuration(seconds)}, engine ${engine.name})`,
    );
    info(
      out,
      `validation: pixel accuracy ${v.pixelAccuracy.toFixed(4)}, mean IoU ${v.meanIoU.toFixed(4)}, mean Dice ${v.meanDice.toFixed(4)}`,
    );
    for (const c of v.classes)
      info(out, `  ${c.name} (value ${c.value}): IoU ${c.iou.toFixed(4)}, Dice ${c.dice.toFixed(4)}`);
    info(out, `report: ${report}`);
    info(out, `loss curve: ${join(result.out, 'loss-curve.png')}, history: ${join(result.out, 'history.csv')}`);
    if (opts.json) {
      process.stdout.write(
        JSON.stringify({
          model: result.out,
          engine: engine.name,
          seconds,
          bestEpoch: result.bestEpoch,
          bestStep: result.bestStep,
          stopReason: result.stopReason,
          validation: v,
        }) + '\n',
      );
    }
    if (result.stopReason === 'interrupted') process.exitCode = 130;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** The layers of a run with --init: loaded (and frozen, or at another learning rate), or initialised afresh and why. */
function printInitTable(out: { quiet?: boolean; json?: boolean }, event: InitProvenance, options: TrainOptions): void {
  const frozen = new Set(event.frozen ?? []);
  const freezing = options.freezeEpochs ? `frozen for ${options.freezeEpochs} epoch(s)` : 'frozen';
  const loaded = options.lrPretrained !== undefined ? `loaded, lr ${options.lrPretrained}` : 'loaded';
  const rows = [
    ...event.loaded.map((layer) => [layer, frozen.has(layer) ? `${loaded}, ${freezing}` : loaded]),
    ...event.reinitialised.map(({ layer, reason }) => [layer, `initialised afresh: ${reason}`]),
  ];
  const width = Math.max(5, ...rows.map(([layer]) => layer.length));
  info(out, `  ${'layer'.padEnd(width)}  weights`);
  for (const [layer, status] of rows) info(out, `  ${layer.padEnd(width)}  ${status}`);
}
