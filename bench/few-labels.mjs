#!/usr/bin/env node
/**
 * Few labels: how much a pretrained starting point gives when only 1, 2 or 4 labelled tiles exist. For each
 * architecture, number of labelled tiles and seed, `tessera train` runs for the same time budget from
 *   (a) random weights,
 *   (b) `--init` a self-supervised model (`tessera pretrain`, masked-region inpainting) pretrained on the other shared
 *       H&E images and slides, without their masks,
 *   (c) `--init` a model trained with masks on the other labelled MoNuSeg tiles (a supervised starting point),
 *   (d) `--init` a model pretrained without labels on the same images and slides as (b), but on the nuclei that colour
 *       deconvolution and Otsu's threshold find (`tessera pretrain --trainer he-nuclei`, init name `stain`),
 * then predicts the held-out tiles, scored on the nucleus class by the metric code of quality-vs-pytorch.mjs. For (d)
 * it also scores what needs no labelled tile at all: the stain pseudo-labels of the held-out tiles themselves, and the
 * pretrained network before fine-tuning.
 *
 *   node bench/few-labels.mjs [--archs unet] [--sizes 1,2,4] [--seeds 1,2] [--budget 5] [--pretrain-budget 20]
 *     [--inits random,ssl,supervised,stain] [--finetune="--freeze encoder" --variant freeze]
 *     [--recipe="--config stain-jitter.json" --recipe-name jitter] [--work dir] [--json file]
 *
 * Split of the 20 shared MoNuSeg tiles in name order: tiles 0-3 are the labelled pool (the first 1, 2 or 4), tiles
 * 16-19 are held out for scoring (no run sees them, not even unlabelled), tiles 4-15 are the "other" data: their
 * images (with the shared slides: the CMU SVS and the QuPath OME-TIFFs) for (b), their images and masks for (c).
 * Finished runs are kept in the work folder and not run again, so a long comparison can be run in parts.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfusionMatrix, readImage } from '../packages/core/dist/index.js';
import { pseudoNuclei } from '../packages/trainer-he-nuclei/dist/index.js';

const root = resolve(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    archs: { type: 'string', default: 'unet' },
    sizes: { type: 'string', default: '1,2,4' },
    seeds: { type: 'string', default: '1,2' },
    budget: { type: 'string', default: '5' },
    'pretrain-budget': { type: 'string', default: '20' },
    inits: { type: 'string', default: 'random,ssl,supervised' },
    // Fine-tuning flags for the runs that start from a model (e.g. "--freeze encoder"), and a name for them in the
    // run folders and the table; runs from random weights are the same whatever these say.
    finetune: { type: 'string', default: '' },
    variant: { type: 'string', default: '' },
    // Training flags for every run, from random weights too (e.g. "--config stain-jitter.json"), and a name for them
    // added to every run's name.
    recipe: { type: 'string', default: '' },
    'recipe-name': { type: 'string', default: '' },
    work: { type: 'string' },
    json: { type: 'string' },
  },
});
const shared = process.env.TESSERA_DATA ?? join(root, '../shared/data');
const work = resolve(values.work ?? join(tmpdir(), 'tessera-few-labels'));
const cli = join(root, 'apps/cli/dist/bin.js');
const monuseg = join(shared, 'monuseg-train20');
const stems = readdirSync(join(monuseg, 'images'))
  .filter((f) => f.endsWith('.tif'))
  .sort()
  .map((f) => basename(f, '.tif'));
const pool = stems.slice(0, 4);
const other = stems.slice(4, 16);
const heldOut = stems.slice(16, 20);
const slides = [
  join(shared, 'slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs'),
  join(shared, 'slides/wsi-qupath-ome-tiff'),
];
const classes = {
  classes: [
    { name: 'background', value: 0, color: '#000000' },
    { name: 'nucleus', value: 1, color: '#00ff80' },
  ],
};

/** A folder of links to the images (and masks) of `names`. */
function linkSet(name, names, withMasks = true) {
  const dir = join(work, 'data', name);
  for (const kind of withMasks ? ['images', 'masks'] : ['images']) {
    mkdirSync(join(dir, kind), { recursive: true });
    for (const stem of names) {
      const file = kind === 'images' ? `${stem}.tif` : `${stem}.png`;
      const link = join(dir, kind, file);
      rmSync(link, { force: true });
      symlinkSync(join(monuseg, kind, file), link);
    }
  }
  return dir;
}

function tessera(args, log) {
  const started = performance.now();
  const result = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', maxBuffer: 1 << 28 });
  writeFileSync(log, `$ tessera ${args.join(' ')}\n${result.stdout}\n${result.stderr}`);
  if (result.status !== 0) throw new Error(`tessera ${args[0]} failed (exit ${result.status}); see ${log}`);
  return (performance.now() - started) / 1000;
}

/** Nucleus Dice over the held-out tiles of `predict(stem)`'s label maps. */
async function scoreWith(test, predict) {
  const cm = new ConfusionMatrix(2);
  for (const stem of heldOut) {
    const target = await readImage(join(test, 'masks', `${stem}.png`), { channels: 1 });
    cm.add(await predict(stem), Uint8Array.from(target.data));
  }
  return cm.dice()[1];
}

const score = (predictions, test) =>
  scoreWith(test, async (stem) =>
    Uint8Array.from((await readImage(join(predictions, `${stem}_labels.png`), { channels: 1 })).data),
  );

/** Predicts the held-out tiles with `model` (once) and scores them. */
async function predictAndScore(model, predictions, test) {
  if (!existsSync(join(predictions, `${heldOut[0]}_labels.png`))) {
    const predict = ['predict', join(test, 'images'), '--model', model, '--out', predictions];
    tessera([...predict, '--runtime', 'tfjs'], `${predictions}.log`);
  }
  return score(predictions, test);
}

/** Runs `make` unless `done` exists; returns the seconds it took (recorded beside the output). */
function once(out, make) {
  const record = `${out}.seconds`;
  if (existsSync(join(out, 'manifest.json')) && existsSync(record)) return Number(readFileSync(record, 'utf8'));
  rmSync(out, { recursive: true, force: true });
  const seconds = make();
  writeFileSync(record, String(seconds));
  return seconds;
}

mkdirSync(work, { recursive: true });
writeFileSync(join(work, 'classes.json'), JSON.stringify(classes));
const test = linkSet('held-out', heldOut);
const otherSet = linkSet('other', other);
const results = [];
const PLUGINS = { unet: 'arch-unet', fcn8s: 'arch-fcn8s', deeplabv3plus: 'arch-deeplab' };
for (const arch of values.archs.split(',')) {
  // One network size for every run of an architecture (its small network where it has one, as a time budget would
  // choose on this machine), so that the starting point is the only difference.
  const plugin = (await import(`../packages/${PLUGINS[arch]}/dist/index.js`)).default();
  const sizeArgs = Object.entries(plugin.smallOptions ?? {}).flatMap(([k, v]) => ['--arch-option', `${k}=${v}`]);
  const starts = {};
  if (values.inits.includes('ssl')) {
    const out = join(work, `${arch}-ssl`);
    const sources = [join(otherSet, 'images'), ...slides.filter((s) => existsSync(s))];
    const seconds = once(out, () =>
      tessera(
        ['pretrain', '--arch', arch, ...sizeArgs, '--images', ...sources, '--out', out].concat([
          '--time-budget',
          values['pretrain-budget'],
        ]),
        `${out}.log`,
      ),
    );
    starts.ssl = { model: out, seconds };
    console.log(`${arch}: pretrained (self-supervised) in ${seconds.toFixed(0)} s`);
  }
  if (values.inits.includes('stain')) {
    const out = join(work, `${arch}-stain`);
    const sources = [join(otherSet, 'images'), ...slides.filter((s) => existsSync(s))];
    const args = ['pretrain', '--trainer', 'he-nuclei', '--arch', arch, ...sizeArgs, '--images', ...sources];
    const seconds = once(out, () =>
      tessera([...args, '--out', out, '--time-budget', values['pretrain-budget']], `${out}.log`),
    );
    starts.stain = { model: out, seconds };
    // What needs no labelled tile: the pretrained network as it is, and the stain pseudo-labels themselves (at the
    // MoNuSeg tiles' 0.25 µm/px).
    const alone = await predictAndScore(out, `${out}-predictions`, test);
    const pseudo = await scoreWith(test, async (stem) => {
      const image = await readImage(join(test, 'images', `${stem}.tif`), { channels: 3 });
      return pseudoNuclei([image], 0.25).masks[0];
    });
    results.push({ arch, init: 'stain', startSeconds: seconds, startDice: alone, pseudoLabelDice: pseudo });
    console.log(
      `${arch}: pretrained on stain pseudo-labels in ${seconds.toFixed(0)} s; held-out nucleus Dice of that network ` +
        `${alone.toFixed(3)}, of the pseudo-labels themselves ${pseudo.toFixed(3)}`,
    );
  }
  if (values.inits.includes('supervised')) {
    const out = join(work, `${arch}-supervised`);
    const args = ['train', '--arch', arch, ...sizeArgs, '--images', join(otherSet, 'images')];
    args.push('--masks', join(otherSet, 'masks'));
    args.push('--classes', join(work, 'classes.json'), '--out', out, '--time-budget', values['pretrain-budget']);
    const seconds = once(out, () => tessera(args, `${out}.log`));
    starts.supervised = { model: out, seconds };
    console.log(`${arch}: trained on the 12 other labelled tiles in ${seconds.toFixed(0)} s`);
  }
  for (const size of values.sizes.split(',').map(Number)) {
    const labelled = linkSet(`pool-${size}`, pool.slice(0, size));
    for (const seed of values.seeds.split(',')) {
      for (const init of values.inits.split(',')) {
        const finetune = init !== 'random' && values.finetune ? values.finetune.split(/\s+/) : [];
        if (finetune.length && !values.variant) throw new Error('--finetune needs --variant <name> for its runs');
        const recipe = values.recipe ? values.recipe.split(/\s+/) : [];
        if (recipe.length && !values['recipe-name'])
          throw new Error('--recipe needs --recipe-name <name> for its runs');
        const name = `${finetune.length ? `${init}-${values.variant}` : init}${recipe.length ? `+${values['recipe-name']}` : ''}`;
        const tag = `${arch}-${size}-${name}-seed${seed}`;
        const out = join(work, tag);
        const args = ['train', '--arch', arch, ...sizeArgs, '--images', join(labelled, 'images'), '--masks'];
        args.push(join(labelled, 'masks'), '--classes', join(work, 'classes.json'), '--out', out);
        // Every labelled tile trains (none held out for validation: with 1-4 there is none to spare), so the kept
        // weights are those of the lowest training loss.
        args.push('--time-budget', values.budget, '--seed', seed, '--val-split', '0');
        if (init !== 'random') args.push('--init', starts[init].model, ...finetune);
        args.push(...recipe);
        const seconds = once(out, () => tessera(args, `${out}.log`));
        const dice = await predictAndScore(out, join(work, `${tag}-predictions`), test);
        const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8'));
        const row = {
          arch,
          labelled: size,
          init: name,
          seed: Number(seed),
          dice,
          seconds,
          steps: manifest.training.steps,
        };
        results.push(row);
        console.log(JSON.stringify(row));
      }
    }
  }
  for (const [init, start] of Object.entries(starts)) {
    if (init !== 'stain') results.push({ arch, init, startSeconds: start.seconds });
  }
}

const rows = results.filter((r) => r.dice !== undefined);
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const columns = values.inits
  .split(',')
  .map((init) => (init !== 'random' && values.finetune ? `${init}-${values.variant}` : init))
  .map((name) => (values.recipe ? `${name}+${values['recipe-name']}` : name));
console.log(`\n| network | labelled tiles | ${columns.join(' | ')} |`);
console.log(`| --- | --- |${columns.map(() => ' --- |').join('')}`);
for (const arch of values.archs.split(',')) {
  for (const size of values.sizes.split(',').map(Number)) {
    const cells = columns.map((init) => {
      const runs = rows.filter((r) => r.arch === arch && r.labelled === size && r.init === init);
      return runs.length
        ? `${mean(runs.map((r) => r.dice)).toFixed(3)} (${runs.map((r) => r.dice.toFixed(3)).join(', ')})`
        : '-';
    });
    console.log(`| ${arch} | ${size} | ${cells.join(' | ')} |`);
  }
}
console.log(
  `\nnucleus Dice on the 4 held-out tiles, mean (per seed); ${values.budget} min per run; work folder ${work}`,
);
if (values.json) writeFileSync(values.json, JSON.stringify(results, null, 2) + '\n');
