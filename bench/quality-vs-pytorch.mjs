#!/usr/bin/env node
/**
 * Quality by default: `tessera train` with default options and a time budget against a plain PyTorch script given
 * the same wall-clock budget on the same machine, one after the other, both scored on held-out images by the same
 * metric code (@tessera/core's ConfusionMatrix on the label-map PNGs each writes).
 *
 *   node bench/quality-vs-pytorch.mjs [--data monuseg,isbi] [--budgets 10,25] [--archs unet] [--work dir]
 *     [--sides torch,tessera] [--seed 1] [--json results.json]
 *
 * Splits (read from ../shared/data or $TESSERA_DATA, never copied):
 * - monuseg: the 20 shared MoNuSeg tiles in name order, the first 16 to train on, the last 4 held out; scored on the
 *   nucleus class.
 * - isbi: ISBI 2012 slices 0-24 to train on, 25-29 held out; scored on the membrane class (value 0), with the cell
 *   interior (255) named first in the class map, the background.
 *
 * Tessera runs `tessera train --images --masks [--classes] [--arch] --time-budget M` (defaults otherwise: its own
 * validation split of the training images, network size, schedule, selection) then `tessera predict`. PyTorch runs
 * bench/quality_torch.py: the twin network of bench/torch_models.py, Adam 1e-3, ce-dice, flips and 90 degree
 * rotations, last weights, on every training image. Needs `npm run build` and PyTorch for /usr/bin/python3.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, extname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfusionMatrix, readImage } from '../packages/core/dist/index.js';

const root = resolve(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    data: { type: 'string', default: 'monuseg,isbi' },
    budgets: { type: 'string', default: '10,25' },
    archs: { type: 'string', default: 'unet' },
    work: { type: 'string' },
    sides: { type: 'string', default: 'torch,tessera' },
    seed: { type: 'string', default: '1' },
    json: { type: 'string' },
    'tessera-flags': { type: 'string', default: '' },
    tag: { type: 'string', default: '' },
  },
});
const shared = process.env.TESSERA_DATA ?? join(root, '../shared/data');
const work = resolve(values.work ?? join(tmpdir(), `tessera-quality-${process.pid}`));
const python = '/usr/bin/python3';
const cli = join(root, 'apps/cli/dist/bin.js');

/** The data sets: their training and held-out pairs, class values in class order, and the scored class. */
const DATA = {
  monuseg: () => monuseg(16, 20),
  /** The development split the recipe was chosen on: the first 12 tiles to train on, the next 4 held out. */
  'monuseg-dev': () => monuseg(12, 16),
  isbi: () => {
    const dir = join(shared, 'isbi2012-em-membrane/train');
    const pair = (i) => ({ image: join(dir, 'image', `${i}.png`), mask: join(dir, 'label', `${i}.png`) });
    const slices = Array.from({ length: 30 }, (_, i) => i);
    return {
      train: slices.slice(0, 25).map(pair),
      test: slices.slice(25).map(pair),
      classes: [
        { name: 'cell', value: 255, color: '#000000', background: true },
        { name: 'membrane', value: 0, color: '#ff00ff' },
      ],
      channels: 1,
    };
  },
};

function monuseg(trainCount, testEnd) {
  const dir = join(shared, 'monuseg-train20');
  const stems = readdirSync(join(dir, 'images'))
    .filter((f) => f.endsWith('.tif'))
    .sort()
    .map((f) => basename(f, '.tif'));
  const pair = (s) => ({ image: join(dir, 'images', `${s}.tif`), mask: join(dir, 'masks', `${s}.png`) });
  return {
    train: stems.slice(0, trainCount).map(pair),
    test: stems.slice(trainCount, testEnd).map(pair),
    classes: [
      { name: 'background', value: 0, color: '#000000' },
      { name: 'nucleus', value: 1, color: '#00ff80' },
    ],
    channels: 3,
  };
}

function run(command, args, log) {
  const started = performance.now();
  const result = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 1 << 28 });
  const seconds = (performance.now() - started) / 1000;
  writeFileSync(log, `$ ${command} ${args.join(' ')}\n${result.stdout}\n${result.stderr}`);
  if (result.status !== 0)
    throw new Error(`${command} ${args.slice(0, 3).join(' ')} failed (exit ${result.status}); see ${log}`);
  return { stdout: result.stdout, seconds };
}

/** Same metric code for both sides: a confusion matrix over the held-out label maps. */
async function score(set, labelPath) {
  const cm = new ConfusionMatrix(set.classes.length);
  const index = new Int16Array(256).fill(-1);
  set.classes.forEach((c, i) => (index[c.value] = i));
  for (const pair of set.test) {
    const stem = basename(pair.image, extname(pair.image));
    const target = await readImage(pair.mask, { channels: 1 });
    const predicted = await readImage(labelPath(stem), { channels: 1 });
    if (predicted.width !== target.width || predicted.height !== target.height) {
      throw new Error(
        `${labelPath(stem)} is ${predicted.width}x${predicted.height}, the mask ${target.width}x${target.height}`,
      );
    }
    cm.add(
      Uint8Array.from(predicted.data, (v) => index[v]),
      Uint8Array.from(target.data, (v) => index[v]),
    );
  }
  const dice = cm.dice();
  return {
    scored: dice[1],
    dice: Object.fromEntries(set.classes.map((c, i) => [c.name, dice[i]])),
    meanDice: cm.meanDice(),
  };
}

function layout(name, set) {
  const dir = join(work, name);
  for (const split of ['train', 'test']) {
    mkdirSync(join(dir, split, 'images'), { recursive: true });
    mkdirSync(join(dir, split, 'masks'), { recursive: true });
    for (const pair of set[split]) {
      const stem = basename(pair.image, extname(pair.image));
      const link = (target, path) => {
        rmSync(path, { force: true });
        symlinkSync(target, path);
      };
      link(pair.image, join(dir, split, 'images', basename(pair.image)));
      link(pair.mask, join(dir, split, 'masks', `${stem}.png`));
    }
    const listing = set[split].map((p) => `${p.image}\t${p.mask}`).join('\n') + '\n';
    writeFileSync(join(dir, `${split}.txt`), listing);
  }
  writeFileSync(join(dir, 'classes.json'), JSON.stringify({ classes: set.classes }, null, 2));
  return dir;
}

const sides = values.sides.split(',');
const results = [];
for (const dataName of values.data.split(',')) {
  const set = DATA[dataName]();
  const dir = layout(dataName, set);
  for (const arch of values.archs.split(',')) {
    for (const budget of values.budgets.split(',').map(Number)) {
      const row = { data: dataName, arch, minutes: budget };
      const tag = `${arch}-${budget}${values.tag ? `-${values.tag}` : ''}`;
      if (sides.includes('torch')) {
        const out = join(dir, `torch-${tag}`);
        const { stdout, seconds } = run(
          python,
          [
            join(root, 'bench/quality_torch.py'),
            ...['--model', arch, '--minutes', String(budget), '--train', join(dir, 'train.txt')],
            ...['--test', join(dir, 'test.txt'), '--classes', set.classes.map((c) => c.value).join(',')],
            ...['--out', out, '--channels', String(set.channels), '--seed', values.seed],
          ],
          join(dir, `torch-${tag}.log`),
        );
        const info = JSON.parse(stdout.trim().split('\n').pop());
        row.torch = { ...(await score(set, (stem) => join(out, `${stem}.png`))), steps: info.steps, seconds };
        console.log(`${dataName} ${tag} torch: ${JSON.stringify(row.torch)}`);
      }
      if (sides.includes('tessera')) {
        const model = join(dir, `tessera-${tag}`);
        const predictions = join(dir, `tessera-${tag}-predictions`);
        rmSync(model, { recursive: true, force: true });
        const args = [cli, 'train', '--images', join(dir, 'train/images'), '--masks', join(dir, 'train/masks')];
        args.push('--classes', join(dir, 'classes.json'), '--out', model, '--time-budget', String(budget), '--json');
        if (arch !== 'unet') args.push('--arch', arch);
        if (values['tessera-flags']) args.push(...values['tessera-flags'].split(' '));
        const trained = run(process.execPath, args, join(dir, `tessera-${tag}.log`));
        const summary = JSON.parse(trained.stdout.trim().split('\n').pop());
        const predicted = run(
          process.execPath,
          [cli, 'predict', join(dir, 'test/images'), '--model', model, '--out', predictions, '--runtime', 'tfjs'],
          join(dir, `tessera-${tag}-predict.log`),
        );
        const manifest = JSON.parse((await import('node:fs')).readFileSync(join(model, 'manifest.json'), 'utf8'));
        row.tessera = {
          ...(await score(set, (stem) => join(predictions, `${stem}_labels.png`))),
          steps: manifest.training.steps,
          keptStep: manifest.training.bestStep,
          network: manifest.architecture.options,
          seconds: trained.seconds,
          predictSeconds: predicted.seconds,
          validationDice: summary.validation.classes[1].dice,
        };
        console.log(`${dataName} ${tag} tessera: ${JSON.stringify(row.tessera)}`);
      }
      if (row.torch && row.tessera) row.ratio = row.tessera.scored / row.torch.scored;
      results.push(row);
    }
  }
}

console.log('\n| data | network | budget | PyTorch Dice (steps) | Tessera Dice (steps, kept) | ratio |');
console.log('| --- | --- | --- | --- | --- | --- |');
for (const r of results) {
  const cell = (side, extra) => (side ? `${side.scored.toFixed(4)} (${extra})` : '-');
  console.log(
    `| ${r.data} | ${r.arch} | ${r.minutes} min | ${cell(r.torch, r.torch?.steps)} | ` +
      `${cell(r.tessera, r.tessera && `${r.tessera.steps}, kept ${r.tessera.keptStep}`)} | ${r.ratio?.toFixed(3) ?? '-'} |`,
  );
}
console.log(`\nscored class: monuseg nucleus, isbi membrane; work folder ${work}`);
if (values.json) writeFileSync(values.json, JSON.stringify(results, null, 2) + '\n');
