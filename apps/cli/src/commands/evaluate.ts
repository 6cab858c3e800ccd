import { evaluateSamples, loadSamples, makeEvaluationReport, pairImagesAndMasks } from '@tessera/core';
import { loadModelFolder } from '../model-folder.js';
import { info, ProgressBar } from '../progress.js';
import { startEngine } from './shared.js';

/** `tessera evaluate`. */
export async function evaluateCommand(opts: {
  model: string;
  images: string;
  masks: string;
  backend?: string;
  json?: boolean;
  quiet?: boolean;
}): Promise<void> {
  const out = { quiet: opts.quiet || opts.json, json: opts.json };
  await startEngine(opts.backend, out);
  // Installed plugins register their layer classes before the model is rebuilt.
  const { model, manifest } = await loadModelFolder(opts.model);
  const pairs = await pairImagesAndMasks(opts.images, opts.masks);
  const classMap = { classes: manifest.classes, ...(manifest.ignore !== undefined ? { ignore: manifest.ignore } : {}) };
  const samples = await loadSamples(pairs, {
    classMap,
    channels: manifest.inputChannels as 1 | 3,
    normalization: manifest.normalization,
  });
  const bar = new ProgressBar('evaluate', samples.length, out, 'image');
  let confusion: Awaited<ReturnType<typeof evaluateSamples>>['confusion'] | undefined;
  let lossSum = 0;
  for (const [i, sample] of samples.entries()) {
    const result = await evaluateSamples(
      model,
      [sample],
      manifest.classes.length,
      manifest.architecture.inputMultiple,
      'cross-entropy',
    );
    lossSum += result.loss;
    if (confusion) confusion.merge(result.confusion);
    else confusion = result.confusion;
    bar.update(i + 1);
  }
  bar.clear();
  const report = makeEvaluationReport(confusion!, manifest.classes);
  if (opts.json) {
    process.stdout.write(
      JSON.stringify({ images: samples.length, crossEntropy: lossSum / samples.length, ...report }) + '\n',
    );
    return;
  }
  info({}, `images: ${samples.length}`);
  info(
    {},
    `pixel accuracy ${report.pixelAccuracy.toFixed(4)}, mean IoU ${report.meanIoU.toFixed(4)}, mean Dice ${report.meanDice.toFixed(4)}`,
  );
  for (const c of report.classes)
    info({}, `  ${c.name} (value ${c.value}): IoU ${c.iou.toFixed(4)}, Dice ${c.dice.toFixed(4)}`);
}
