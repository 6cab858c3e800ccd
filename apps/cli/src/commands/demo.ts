import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createRandom, randSyntheticTissue, writeFileAtomic, writePng } from '@tessera/core';
import { info } from '../progress.js';
import { evaluateCommand } from './evaluate.js';
import { predictCommand } from './predict.js';
import { trainCommand } from './train.js';
import type { Command } from 'commander';

/** Options of `tessera demo`. */
export interface DemoOptions {
  out: string;
  timeBudget: number;
  seed: number;
  backend?: string;
  quiet?: boolean;
  json?: boolean;
}

/**
 * `tessera demo`: draws a small labelled H&E-like data set, trains a small U-Net on it within the time
 * budget, evaluates it on held-out tiles and predicts them with overlays.
 */
export async function demoCommand(opts: DemoOptions): Promise<void> {
  const out = resolve(opts.out);
  const started = performance.now();
  const rng = createRandom(opts.seed);
  const dirs = {
    trainImages: join(out, 'data', 'train', 'images'),
    trainMasks: join(out, 'data', 'train', 'masks'),
    testImages: join(out, 'data', 'test', 'images'),
    testMasks: join(out, 'data', 'test', 'masks'),
  };
  for (const dir of Object.values(dirs)) await mkdir(dir, { recursive: true });
  const write = async (imagesDir: string, masksDir: string, name: string, size: number) => {
    const { image, mask } = randSyntheticTissue({ width: size, height: size }, rng.fork(name));
    await writePng(join(imagesDir, `${name}.png`), image);
    await writePng(join(masksDir, `${name}.png`), { data: mask.data, width: size, height: size, channels: 1 });
  };
  for (let i = 0; i < 12; i++)
    await write(dirs.trainImages, dirs.trainMasks, `tile-${String(i).padStart(2, '0')}`, 192);
  for (let i = 0; i < 2; i++) await write(dirs.testImages, dirs.testMasks, `test-${i}`, 384);
  const classes = join(out, 'data', 'classes.json');
  await writeFileAtomic(
    classes,
    JSON.stringify(
      {
        classes: [
          { name: 'background', value: 0, color: '#f0e0f0' },
          { name: 'nucleus', value: 1, color: '#2060ff' },
        ],
      },
      null,
      2,
    ),
  );
  info(opts, `demo data: 12 training tiles (192 px) and 2 test tiles (384 px) in ${join(out, 'data')}`);
  const model = join(out, 'model');
  const fakeCommand = { getOptionValueSource: () => 'cli' } as unknown as Command;
  await trainCommand(
    {
      arch: 'unet',
      archOption: ['depth=3', 'baseFilters=8'],
      images: dirs.trainImages,
      masks: dirs.trainMasks,
      classes,
      out: model,
      epochs: 200,
      timeBudget: opts.timeBudget,
      tile: 96,
      batch: 4,
      stepsPerEpoch: 10,
      lr: 3e-3,
      schedule: 'constant',
      valSplit: 0.17,
      seed: opts.seed,
      backend: opts.backend,
      quiet: opts.quiet,
    },
    fakeCommand,
  );
  info(opts, 'evaluating on the 2 held-out test tiles:');
  await evaluateCommand({
    model,
    images: dirs.testImages,
    masks: dirs.testMasks,
    backend: opts.backend,
    quiet: opts.quiet,
  });
  const predictions = join(out, 'predictions');
  await predictCommand([dirs.testImages], {
    model,
    out: predictions,
    overlay: true,
    probabilities: true,
    backend: opts.backend,
    quiet: opts.quiet,
  });
  const seconds = (performance.now() - started) / 1000;
  info(opts, `\ndemo finished in ${seconds.toFixed(0)} s`);
  info(opts, `  model:        ${model} (manifest.json, loss-curve.png, history.csv)`);
  info(opts, `  predictions:  ${predictions} (label maps, probability maps, overlays)`);
}
