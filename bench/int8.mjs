#!/usr/bin/env node
// int8 (ONNX QDQ, written by `tessera export --quantize int8` / @tessera/onnx's quantizeOnnx) against fp32, both on
// onnxruntime-node with the same threads: per-tile latency, whole-slide throughput and nucleus Dice, as ratios.
//
//   node bench/int8.mjs                                   # latency: tiles 256 and 512, U-Net, FCN-8s, DeepLabv3+
//   node bench/int8.mjs --slide ../shared/data/slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs
//   node bench/int8.mjs --model runs/monuseg              # nucleus Dice on its held-out MoNuSeg images
//   options: --sizes 256,512  --threads 2  --reps 9  --archs unet,fcn8s,deeplabv3plus  --small
//            --slide <file> [--workers 2] [--tile 512] [--slide-reps 1]  --model <dir> [--heldout 5]
//
// Needs `npm run build` first.
// Latency: networks built untrained (latency does not depend on the weight values), as in bench/onnx-latency.mjs:
// U-Net 4 levels x 32 base filters with batch norm, FCN-8s and DeepLabv3+ (MobileNetV2) with their defaults (--small:
// a fraction of that, for a quick check); 3 input channels, 2 classes, batch 1. Each is quantized with 8 calibration
// crops of MoNuSeg H&E. fp32 and int8 run interleaved (fp32, int8, int8, fp32, ...) after a warm-up of each; the
// median of --reps runs each and fp32 / int8 (above 1: int8 is faster).
// Whole slide (--slide): `predictSlide` of @tessera/tiler on --model (else an untrained U-Net, depth 3 x 8 filters),
// every tile (no tissue detection), model.onnx then model.int8.onnx, --slide-reps times each, interleaved; Mpx/s.
// The model's model.int8.onnx is made with `tessera export --quantize int8 --force` where missing.
// Dice (--model): the MoNuSeg images (../shared/data/monuseg-train20) not among the model's training images, each
// predicted whole with fp32 and int8; nucleus Dice (mask value 1) against the masks, and int8-fp32 label agreement.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import {
  argmaxLabels,
  imageStem,
  normalizeImage,
  predictProbabilities,
  readImage,
  readManifest,
  readMask,
  setupEngine,
} from '@tessera/core';
import { createOnnxPredictor, exportOnnx, quantizeOnnx, ONNXRUNTIME_VERSION } from '@tessera/onnx';
import unet from '@tessera/arch-unet';
import fcn8s from '@tessera/arch-fcn8s';
import deeplabv3plus from '@tessera/arch-deeplab';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DATA = process.env.TESSERA_DATA ?? join(ROOT, '../shared/data');
const MONUSEG = join(DATA, 'monuseg-train20');
const CLI = join(ROOT, 'apps/cli/dist/bin.js');

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const sizes = arg('sizes', '256,512').split(',').map(Number);
const threads = Number(arg('threads', String(Math.min(2, availableParallelism()))));
const reps = Number(arg('reps', '9'));
const archNames = arg('archs', 'unet,fcn8s,deeplabv3plus').split(',');
const small = process.argv.includes('--small');
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

/** `count` crops `[1, size, size, 3]` of MoNuSeg images, normalised as `(v / 255 - 0.6) / 0.2`. */
async function crops(size, count) {
  const folder = join(MONUSEG, 'images');
  const names = (await readdir(folder)).filter((n) => n.endsWith('.tif')).sort();
  const out = [];
  for (let i = 0; i < count; i++) {
    const raw = await sharp(join(folder, names[i % names.length]))
      .removeAlpha()
      .extract({ left: (i * 97) % (1000 - size), top: (i * 53) % (1000 - size), width: size, height: size })
      .raw()
      .toBuffer();
    out.push({ data: Float32Array.from(raw, (v) => (v / 255 - 0.6) / 0.2), shape: [1, size, size, 3] });
  }
  return out;
}

/** Median times of `a` and `b`, run interleaved (a b b a a b ...) after one warm-up run each. */
async function interleaved(a, b, n) {
  await a();
  await b();
  const times = { a: [], b: [] };
  for (let i = 0; i < n; i++) {
    for (const [key, fn] of i % 2
      ? [
          ['b', b],
          ['a', a],
        ]
      : [
          ['a', a],
          ['b', b],
        ]) {
      const start = performance.now();
      await fn();
      times[key].push(performance.now() - start);
    }
  }
  return { a: median(times.a), b: median(times.b) };
}

async function latency() {
  const plugins = {
    unet: unet(small ? { depth: 2, baseFilters: 8 } : { depth: 4, baseFilters: 32, batchNorm: true }),
    fcn8s: fcn8s(small ? { baseFilters: 8, fcFilters: 64 } : {}),
    deeplabv3plus: deeplabv3plus(small ? { widthMultiplier: 0.25, asppFilters: 16 } : {}),
  };
  const rows = [];
  for (const name of archNames) {
    const plugin = plugins[name];
    const model = plugin.build({ inputChannels: 3, numClasses: 2, seed: 1, options: plugin.defaults });
    const multiple = plugin.inputMultiple(plugin.defaults);
    const manifest = {
      architecture: { name, inputMultiple: multiple },
      inputChannels: 3,
      classes: [{ name: 'background' }, { name: 'foreground' }],
      normalization: {},
      files: { weights: { sha256: '' } },
    };
    const fp32 = exportOnnx(model, manifest, { converters: plugin.onnxConverters });
    model.dispose();
    const calibration = Math.ceil(Math.min(...sizes) / multiple) * multiple;
    const { bytes: int8 } = await quantizeOnnx(fp32, await crops(calibration, 8), { threads });
    const [p32, p8] = [await createOnnxPredictor(fp32, { threads }), await createOnnxPredictor(int8, { threads })];
    for (const size of sizes) {
      const [input] = await crops(size, 1);
      const t = await interleaved(
        () => p32.run(input.data, input.shape),
        () => p8.run(input.data, input.shape),
        reps,
      );
      const row = {
        arch: name,
        tile: size,
        fp32Ms: +t.a.toFixed(1),
        int8Ms: +t.b.toFixed(1),
        speedup: +(t.a / t.b).toFixed(2),
      };
      rows.push(row);
      console.error(JSON.stringify(row));
    }
    await p32.dispose();
    await p8.dispose();
  }
  console.log(
    `\nPer tile, onnxruntime-node ${ONNXRUNTIME_VERSION}, ${threads} threads, batch 1; median of ${reps} interleaved runs.`,
  );
  console.log('| architecture | tile | fp32 ms | int8 ms | fp32 / int8 |');
  console.log('| --- | --- | --- | --- | --- |');
  for (const r of rows) console.log(`| ${r.arch} | ${r.tile} | ${r.fp32Ms} | ${r.int8Ms} | ${r.speedup} |`);
}

/** Makes `<model>/model.int8.onnx` with the CLI where it is missing (model.onnx with it). */
function ensureInt8(model, calibration) {
  if (existsSync(join(model, 'model.int8.onnx'))) return;
  const args = [CLI, 'export', model, '--format', 'onnx', '--quantize', 'int8', '--force'];
  if (calibration) args.push('--calibration', calibration);
  const result = spawnSync(process.execPath, args, { encoding: 'utf8', stdio: ['ignore', 'ignore', 'inherit'] });
  if (result.status !== 0) throw new Error(`tessera export --quantize int8 ${model} failed (${result.status})`);
}

async function slideThroughput(slide, dir) {
  const { predictSlide } = await import('@tessera/tiler');
  let model = arg('model');
  if (!model) {
    const { NUCLEUS_CLASSES, saveTinyUnet } = await import('../packages/tiler/test/tiny-model.mjs');
    model = join(dir, 'model');
    await saveTinyUnet(model, { depth: 3, baseFilters: 8, classes: NUCLEUS_CLASSES, tileSize: 512, seed: 1 });
  }
  ensureInt8(model, arg('model') ? undefined : join(MONUSEG, 'images'));
  const workers = Number(arg('workers', '2'));
  const mpx = { fp32: [], int8: [] };
  let engine = {};
  for (let i = 0; i < Number(arg('slide-reps', '1')); i++) {
    for (const [precision, file] of [
      ['fp32', 'model.onnx'],
      ['int8', 'model.int8.onnx'],
    ]) {
      const out = await mkdtemp(join(dir, `slide-${precision}-`));
      const { run } = await predictSlide(slide, {
        model,
        out,
        workers,
        tile: Number(arg('tile', '512')),
        tissue: false,
        onnx: { file: join(model, file) },
      });
      mpx[precision].push((run.width * run.height) / 1e6 / (run.timings.wallMs / 1000));
      engine[precision] = run.engine;
      await rm(out, { recursive: true, force: true });
    }
  }
  const [a, b] = [median(mpx.fp32), median(mpx.int8)];
  console.log(`\nWhole slide ${slide}, ${workers} worker(s), every tile; ${engine.int8}.`);
  console.log('| slide | workers | fp32 Mpx/s | int8 Mpx/s | int8 / fp32 |');
  console.log('| --- | --- | --- | --- | --- |');
  console.log(`| ${slide.split('/').pop()} | ${workers} | ${a.toFixed(2)} | ${b.toFixed(2)} | ${(b / a).toFixed(2)} |`);
}

async function nucleusDice(model) {
  ensureInt8(model);
  const manifest = await readManifest(model);
  const nucleus = manifest.classes.findIndex((c) => c.value === 1);
  if (nucleus < 0) throw new Error(`${model} has no class of mask value 1 (MoNuSeg nuclei)`);
  const trained = new Set(manifest.training?.data.trainStems ?? []);
  const names = (await readdir(join(MONUSEG, 'images'))).filter((n) => n.endsWith('.tif')).sort();
  const heldOut = names.filter((n) => !trained.has(imageStem(n))).slice(0, Number(arg('heldout', '5')));
  if (heldOut.length === 0) throw new Error(`every MoNuSeg image is among the training images of ${model}`);
  const bytes = {
    fp32: new Uint8Array(await readFile(join(model, 'model.onnx'))),
    int8: new Uint8Array(await readFile(join(model, 'model.int8.onnx'))),
  };
  const counts = { fp32: [0, 0], int8: [0, 0] }; // [2 |A ∩ B|, |A| + |B|]
  let same = 0;
  let pixels = 0;
  for (const name of heldOut) {
    const image = await readImage(join(MONUSEG, 'images', name), { channels: 3 });
    const mask = await readMask(join(MONUSEG, 'masks', `${imageStem(name)}.png`));
    const input = {
      data: normalizeImage(image, manifest.normalization),
      width: image.width,
      height: image.height,
      channels: 3,
    };
    const labels = {};
    for (const precision of ['fp32', 'int8']) {
      const predictor = await createOnnxPredictor(bytes[precision], { threads });
      const probs = await predictProbabilities(predictor, input, {
        multiple: manifest.architecture.inputMultiple,
        receptiveField: manifest.architecture.receptiveField,
      });
      await predictor.dispose();
      labels[precision] = argmaxLabels(probs, manifest.classes.length);
      const c = counts[precision];
      for (let i = 0; i < mask.data.length; i++) {
        const [p, t] = [labels[precision][i] === nucleus, mask.data[i] === 1];
        c[0] += p && t ? 2 : 0;
        c[1] += (p ? 1 : 0) + (t ? 1 : 0);
      }
    }
    for (let i = 0; i < labels.fp32.length; i++) same += labels.fp32[i] === labels.int8[i] ? 1 : 0;
    pixels += labels.fp32.length;
  }
  const dice = (c) => c[0] / c[1];
  console.log(`\nNucleus Dice of ${model} on ${heldOut.length} held-out MoNuSeg image(s) (${heldOut.join(', ')}).`);
  console.log('| model | images | fp32 Dice | int8 Dice | int8 - fp32 | label agreement |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  console.log(
    `| ${model.split('/').pop()} | ${heldOut.length} | ${dice(counts.fp32).toFixed(4)} | ${dice(counts.int8).toFixed(4)} | ` +
      `${(dice(counts.int8) - dice(counts.fp32)).toFixed(4)} | ${((100 * same) / pixels).toFixed(2)}% |`,
  );
}

await setupEngine('cpu');
await latency();
const dir = await mkdtemp(join(tmpdir(), 'tessera-int8-bench-'));
try {
  if (arg('slide')) await slideThroughput(arg('slide'), dir);
  if (arg('model')) await nucleusDice(arg('model'));
} finally {
  await rm(dir, { recursive: true, force: true });
}
