#!/usr/bin/env node
/**
 * Builds the model package @tessera/model-he-nuclei: a U-Net for nuclei in H&E at 40x, trained with `tessera train`
 * (default recipe, a time budget) on the shared MoNuSeg 2018 tiles, scored on held-out tiles, exported to ONNX, with
 * a model card (README.md) written from card.md.
 *
 *   node models/he-nuclei/train.mjs [--time-budget 25] [--out packages/model-he-nuclei] [--mpp 0.25] [--seed 1]
 *     [--backend <engine>] [--version 1.0.0] [--work <dir>] [--force] [--reuse] [-- <more tessera train flags>]
 *
 * --reuse (with --work) rebuilds the package and its card from the model an earlier run trained in that folder.
 *
 * Data (read from ../shared/data or $TESSERA_DATA, never copied into the package): monuseg-train20, its 20 tiles in
 * name order, the first 16 to train on (tessera train holds out its own validation share of them), the last 4 held
 * out and scored on the nucleus class with @tessera/core's ConfusionMatrix, as bench/quality-vs-pytorch.mjs does.
 * Needs `npm run build`. Run it on a quiet machine: the time budget buys fewer steps on a busy one.
 */
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { basename, join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfusionMatrix, readImage } from '../../packages/core/dist/index.js';

const here = import.meta.dirname;
const root = resolve(here, '../..');
const cli = join(root, 'apps/cli/dist/bin.js');
const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    'time-budget': { type: 'string', default: '25' },
    out: { type: 'string', default: join(root, 'packages/model-he-nuclei') },
    mpp: { type: 'string', default: '0.25' },
    seed: { type: 'string', default: '1' },
    backend: { type: 'string' },
    version: { type: 'string', default: '1.0.0' },
    data: {
      type: 'string',
      default: join(process.env.TESSERA_DATA ?? join(root, '../shared/data'), 'monuseg-train20'),
    },
    work: { type: 'string' },
    force: { type: 'boolean', default: false },
    reuse: { type: 'boolean', default: false },
  },
});

const NAME = '@tessera/model-he-nuclei';
/** The licence of the weights: that of the data they were trained on (monuseg-train20/SOURCE.txt). */
const LICENSE = 'CC-BY-NC-SA-4.0';
const TRAIN_COUNT = 16;
/** models/he-nuclei/sample/: a real H&E region shipped in the package (sample/SOURCE.txt says where from). */
const SAMPLE = 'OS-1-crop.tif';
const CLASSES = [
  { name: 'background', value: 0, color: '#000000' },
  { name: 'nucleus', value: 1, color: '#00ff80' },
];
/** The files of the model folder that go into the package (no checkpoints, no report with local paths). */
const PACKAGE_FILES = ['model.json', 'weights.bin', 'manifest.json', 'model.onnx', 'history.csv', 'loss-curve.png'];

const fail = (message) => {
  console.error(`error: ${message}`);
  process.exit(1);
};
const minutes = Number(values['time-budget']);
if (!(minutes > 0))
  fail(`Expected --time-budget to be a positive number of minutes but received ${values['time-budget']}.`);
const mpp = Number(values.mpp);
if (!(mpp > 0)) fail(`Expected --mpp to be a positive number of µm per pixel but received ${values.mpp}.`);
if (!existsSync(cli)) fail(`${cli} does not exist: run npm run build first.`);
if (!existsSync(join(values.data, 'images'))) fail(`${values.data}/images does not exist: set TESSERA_DATA or --data.`);
const out = resolve(values.out);
if (existsSync(out) && readdirSync(out).length > 0 && !values.force) {
  fail(`${out} exists and is not empty. Add --force to replace its model/, package.json and README.md.`);
}

// The split: tiles in name order, the first 16 to train on, the last 4 held out.
const stems = readdirSync(join(values.data, 'images'))
  .filter((f) => f.endsWith('.tif'))
  .sort()
  .map((f) => basename(f, '.tif'));
if (stems.length !== 20)
  fail(`Expected the 20 tiles of monuseg-train20 in ${values.data}/images but found ${stems.length}.`);
const split = { train: stems.slice(0, TRAIN_COUNT), test: stems.slice(TRAIN_COUNT) };
const work = resolve(values.work ?? mkdtempSync(join(tmpdir(), 'tessera-he-nuclei-')));
for (const [name, list] of Object.entries(split)) {
  for (const sub of ['images', 'masks']) mkdirSync(join(work, name, sub), { recursive: true });
  for (const stem of list) {
    const link = (target, path) => {
      rmSync(path, { force: true });
      symlinkSync(target, path);
    };
    link(join(values.data, 'images', `${stem}.tif`), join(work, name, 'images', `${stem}.tif`));
    link(join(values.data, 'masks', `${stem}.png`), join(work, name, 'masks', `${stem}.png`));
  }
}
writeFileSync(join(work, 'classes.json'), JSON.stringify({ classes: CLASSES }, null, 2) + '\n');

/** Runs the CLI, logging to work/<log>; returns its last stdout line parsed as JSON (or null) and the seconds. */
function tessera(args, log) {
  console.log(`$ tessera ${args.join(' ')}`);
  const started = performance.now();
  const result = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', maxBuffer: 1 << 28, cwd: work });
  const seconds = (performance.now() - started) / 1000;
  writeFileSync(join(work, log), `$ tessera ${args.join(' ')}\n${result.stdout}\n${result.stderr}`);
  if (result.status !== 0) {
    fail(
      `tessera ${args[0]} failed (exit ${result.status}):\n${result.stderr.trim().split('\n').slice(-5).join('\n')}\n(log: ${join(work, log)})`,
    );
  }
  const last = result.stdout.trim().split('\n').pop();
  return { json: last?.startsWith('{') ? JSON.parse(last) : null, seconds };
}

const load = loadavg()[0];
if (load > 0.5 * availableParallelism()) {
  console.warn(
    `warning: load average ${load.toFixed(1)} on ${availableParallelism()} cores: the machine is busy, so the time budget buys fewer steps.`,
  );
}

// 1. Train with the default recipe and the time budget.
const modelDir = join(work, 'model');
const trainArgs = ['train', '--images', 'train/images', '--masks', 'train/masks', '--classes', 'classes.json'];
trainArgs.push('--out', 'model', '--time-budget', String(minutes), '--mpp', String(mpp), '--seed', values.seed);
if (values.backend) trainArgs.push('--backend', values.backend);
trainArgs.push(...positionals, '--json');
// --reuse: the model a previous run left in --work (with what its training printed), to rebuild the package and card.
const trainedFile = join(work, 'trained.json');
let trained;
if (values.reuse) {
  if (!existsSync(join(modelDir, 'manifest.json')) || !existsSync(trainedFile)) {
    fail(`--reuse needs the model and trained.json of an earlier run in ${work}; run without --reuse to train.`);
  }
  trained = JSON.parse(readFileSync(trainedFile, 'utf8'));
  console.log(`reusing the model trained in ${modelDir} (${(trained.seconds / 60).toFixed(1)} minutes)`);
} else {
  rmSync(modelDir, { recursive: true, force: true });
  trained = { ...tessera(trainArgs, 'train.log'), load };
  writeFileSync(trainedFile, JSON.stringify(trained) + '\n');
}

// 2. Score on the held-out tiles, with the metric code of bench/quality-vs-pytorch.mjs.
const predictions = join(work, 'predictions');
rmSync(predictions, { recursive: true, force: true });
tessera(['predict', 'test/images', '--model', 'model', '--out', 'predictions', '--runtime', 'tfjs'], 'predict.log');
const cm = new ConfusionMatrix(CLASSES.length);
const index = new Int16Array(256).fill(-1);
CLASSES.forEach((c, i) => (index[c.value] = i));
for (const stem of split.test) {
  const target = await readImage(join(work, 'test/masks', `${stem}.png`), { channels: 1 });
  const predicted = await readImage(join(predictions, `${stem}_labels.png`), { channels: 1 });
  if (predicted.width !== target.width || predicted.height !== target.height) {
    fail(`${stem}_labels.png is ${predicted.width}x${predicted.height}, the mask ${target.width}x${target.height}.`);
  }
  cm.add(
    Uint8Array.from(predicted.data, (v) => index[v]),
    Uint8Array.from(target.data, (v) => index[v]),
  );
}
const heldOut = { nucleusDice: cm.dice()[1], meanDice: cm.meanDice(), pixelAccuracy: cm.pixelAccuracy() };
console.log(`held out (${split.test.length} tiles): ${JSON.stringify(heldOut)}`);

// 3. ONNX export (checked against the tfjs model by the command itself), into the model folder.
tessera(['export', 'model', '--json'], 'export.log');

// 4. The package: model/, package.json, README.md (the card).
const manifest = JSON.parse(readFileSync(join(modelDir, 'manifest.json'), 'utf8'));
const t = manifest.training;
mkdirSync(out, { recursive: true });
rmSync(join(out, 'model'), { recursive: true, force: true });
mkdirSync(join(out, 'model'));
for (const file of PACKAGE_FILES) {
  if (existsSync(join(modelDir, file))) copyFileSync(join(modelDir, file), join(out, 'model', file));
}
// A real H&E region the model was not trained on (its licence allows shipping it), for `tessera demo`.
rmSync(join(out, 'sample'), { recursive: true, force: true });
mkdirSync(join(out, 'sample'));
for (const file of [SAMPLE, 'SOURCE.txt']) copyFileSync(join(here, 'sample', file), join(out, 'sample', file));
const dataLine = `MoNuSeg 2018 training set (H&E, 40x, 7 organs, TCGA), ${split.train.length} of its 1000x1000 tiles; licence CC BY-NC-SA 4.0`;
const evaluationData = `${split.test.length} held-out MoNuSeg 2018 training tiles (${split.test.join(', ')})`;
const pkg = {
  name: NAME,
  version: values.version,
  description: `Nucleus segmentation of H&E images and slides at 40x (${mpp} µm/px): a Tessera ${manifest.architecture.name} trained on MoNuSeg 2018`,
  license: LICENSE,
  keywords: ['tessera-model', 'segmentation', 'nuclei', 'histology', 'H&E', 'monuseg'],
  files: ['model', 'sample', 'README.md'],
  tessera: {
    model: 'model',
    sample: `sample/${SAMPLE}`,
    data: dataLine,
    evaluation: { data: evaluationData, scores: heldOut },
  },
};
writeFileSync(join(out, 'package.json'), JSON.stringify(pkg, null, 2) + '\n');

const cpu = cpus()[0]?.model?.trim() ?? 'unknown CPU';
const arch = manifest.architecture;
const fields = {
  name: NAME,
  version: values.version,
  mpp: String(mpp),
  architecture: `${arch.name} ${arch.version}`,
  architectureOptions: JSON.stringify(arch.options),
  parameters: arch.parameters.toLocaleString('en-US'),
  classes: manifest.classes.map((c) => `\`${c.name}\` = ${c.value}`).join(', '),
  tileSize: String(manifest.tileSize),
  inputChannels: String(manifest.inputChannels),
  normalization: ['mean', 'std']
    .map((k) => `${k} [${manifest.normalization[k].map((v) => v.toFixed(3)).join(', ')}]`)
    .join(', '),
  receptiveField: String(arch.receptiveField),
  inputMultiple: String(arch.inputMultiple),
  trainCount: String(split.train.length),
  trainStems: t.data.trainStems.join(', '),
  validationStems: t.data.validationStems.join(', '),
  validation: t.data.validation,
  testCount: String(split.test.length),
  testStems: split.test.join(', '),
  command: `tessera ${trainArgs
    .filter((a) => a !== '--json')
    .map((a) => (a.includes(' ') ? `'${a}'` : a))
    .join(' ')}`,
  options: JSON.stringify(t.options, null, 2),
  seed: String(t.seed),
  minutes: String(minutes),
  duration: `${(t.durationSeconds / 60).toFixed(1)} minutes (${t.steps} steps, ${t.epochs} epochs; wall ${(trained.seconds / 60).toFixed(1)} minutes with data loading)`,
  stopReason: t.stopReason,
  selection: t.selection ?? 'best validation foreground Dice',
  bestStep: String(t.bestStep ?? '?'),
  engine: `${t.engine.name} (${t.engine.threads} thread${t.engine.threads === 1 ? '' : 's'})`,
  machine: `${availableParallelism()} cores (${cpu}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.versions.node}, load average ${(trained.load ?? load).toFixed(1)} at the start`,
  validationDice: (t.metrics.classes ?? []).map((c) => `${c.name} ${c.dice.toFixed(4)}`).join(', '),
  nucleusDice: heldOut.nucleusDice.toFixed(4),
  meanDice: heldOut.meanDice.toFixed(4),
  pixelAccuracy: heldOut.pixelAccuracy.toFixed(4),
  license: LICENSE,
  createdBy: manifest.createdBy,
  script: relative(root, join(here, 'train.mjs')),
};
/** The card laid out by the repository's Prettier settings (tables aligned after the fill), or as it is. */
async function formatMarkdown(text) {
  try {
    const prettier = await import('prettier');
    const config = (await prettier.resolveConfig(join(root, 'README.md'))) ?? {};
    return await prettier.format(text, { ...config, parser: 'markdown' });
  } catch {
    return text;
  }
}
const card = readFileSync(join(here, 'card.md'), 'utf8').replace(/\{\{(\w+)\}\}/g, (whole, key) => {
  if (!(key in fields)) fail(`card.md names {{${key}}}, which train.mjs does not fill.`);
  return fields[key];
});
writeFileSync(join(out, 'README.md'), await formatMarkdown(card));

console.log(`wrote ${out}: ${NAME}@${values.version}, held-out nucleus Dice ${heldOut.nucleusDice.toFixed(4)}`);
if (out.startsWith(join(root, 'packages') + '/')) {
  console.log(
    'a new workspace package: run npm install at the repository root (it links it and updates package-lock.json)',
  );
}
if (values.work) console.log(`work folder kept: ${work}`);
else rmSync(work, { recursive: true, force: true });
