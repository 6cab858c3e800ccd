#!/usr/bin/env node
// int8 (ONNX QDQ, written by `tessera export --quantize int8` / @tessera/onnx's quantizeOnnx) against fp32, both on
// onnxruntime-node with the same threads: per-tile latency, whole-slide throughput and nucleus Dice, as ratios.
//
//   node bench/int8.mjs                                   # latency: tiles 256 and 512, U-Net, FCN-8s, DeepLabv3+
//   node bench/int8.mjs --slide ../shared/data/slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs
//   node bench/int8.mjs --model runs/monuseg              # nucleus Dice on its held-out MoNuSeg images
//   options: --sizes 256,512  --threads 2  --reps 9  --archs unet,fcn8s,deeplabv3plus  --small  --no-latency
//            --slide <file> [--workers 2] [--tile 512] [--slide-reps 1]  --model <dir> [--heldout 5]
//
// Needs `npm run build` first.
// Latency: networks built untrained (latency does not depend on the weight values), as in bench/onnx-latency.mjs:
// U-Net 4 levels x 32 base filters with batch norm, FCN-8s and DeepLabv3+ (MobileNetV2) with their defaults (--small:
// a fraction of that, for a quick check); 3 input channels, 2 classes, batch 1. Each is quantized with 8 calibration
// crops of MoNuSeg H&E. fp32 and int8 run interleaved (fp32, int8, int8, fp32, ...) after a warm-up of each; the
// median of --reps runs each and fp32 / int8 (above 1: int8 is faster).
// Whole slide (--slide): `predictSlide` of @tessera/tiler on --model (else an untrained U-Net, depth 3 x 8 filters),
// every tile (no tissue detection), model.onnx then model.int8.onnx, --slide-reps times each, interleaved; Mpx/s,
// beside the model-only ceiling of the same run (its tiles decoded into memory first, then the network alone on the
// same workers and threads), and the label agreement of int8 with fp32 over the whole slide. At the model's µm/px, or
// the slide's own where the model's is finer.
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

/**
 * The same tiles as a tiler run (its plan, batch size, workers and threads per worker), decoded and normalised into
 * memory first, then run through the network only: worker threads each with one onnxruntime session, taking the next
 * batch as they finish one. Returns the wall seconds of the network part.
 */
async function modelOnlySeconds(slide, model, file, run) {
  const { Worker } = await import('node:worker_threads');
  const { openSlide, readRegion, splitLevel } = await import('@tessera/tiler');
  const manifest = await readManifest(model);
  const info = await openSlide(slide);
  if (run.scale !== 1) throw new Error(`model-only needs a run at a level's own scale (this one: ${run.scale})`);
  const level = await readRegion(info, { x: 0, y: 0, width: run.width, height: run.height }, { level: run.level });
  const plan = splitLevel({
    width: run.width,
    height: run.height,
    tile: run.options.tile,
    overlap: run.options.overlap,
    multiple: manifest.architecture.inputMultiple,
  });
  const [th, tw, c] = [plan.tileHeight, plan.tileWidth, 3];
  const batchSize = run.options.batchSize;
  const batches = Math.ceil(plan.tiles.length / batchSize);
  const perBatch = batchSize * th * tw * c;
  const shared = new SharedArrayBuffer(batches * perBatch * 4);
  const all = new Float32Array(shared);
  const { mean, std } = manifest.normalization;
  plan.tiles.forEach((tile, i) => {
    const base = i * th * tw * c;
    for (let y = 0; y < th; y++) {
      // Pixels past the level's edge are mirrored, as the tiler's reader does.
      const sy = Math.min(tile.y + y, 2 * run.height - 2 - (tile.y + y));
      for (let x = 0; x < tw; x++) {
        const sx = Math.min(tile.x + x, 2 * run.width - 2 - (tile.x + x));
        const from = (sy * run.width + sx) * c;
        const to = base + (y * tw + x) * c;
        for (let k = 0; k < c; k++) all[to + k] = (level.data[from + k] / 255 - mean[k]) / std[k];
      }
    }
  });
  const bytes = await readFile(join(model, file));
  const shape = [batchSize, th, tw, c];
  const workers = [];
  for (let i = 0; i < run.options.workers; i++) {
    const worker = new Worker(new URL('./onnx-tile-worker.mjs', import.meta.url), {
      workerData: { bytes, threads: run.options.onnx.threads, shared, shape },
    });
    await new Promise((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    workers.push(worker);
  }
  const started = performance.now();
  let next = 0;
  await Promise.all(
    workers.map(
      (worker) =>
        new Promise((resolve, reject) => {
          const give = () => (next < batches ? worker.postMessage(next++) : resolve());
          worker.on('message', give);
          worker.once('error', reject);
          give();
        }),
    ),
  );
  const seconds = (performance.now() - started) / 1000;
  for (const worker of workers) await worker.terminate();
  return seconds;
}

/** Share of pixels with the same label in two label TIFFs (level 0). */
async function labelAgreement(a, b) {
  const [x, y] = [await sharp(a, { page: 0 }).raw().toBuffer(), await sharp(b, { page: 0 }).raw().toBuffer()];
  if (x.length !== y.length) throw new Error(`${a} and ${b} differ in size`);
  let same = 0;
  for (let i = 0; i < x.length; i++) same += x[i] === y[i] ? 1 : 0;
  return same / x.length;
}

async function slideThroughput(slide, dir) {
  const { openSlide, predictSlide } = await import('@tessera/tiler');
  let model = arg('model');
  if (!model) {
    const { NUCLEUS_CLASSES, saveTinyUnet } = await import('../packages/tiler/test/tiny-model.mjs');
    model = join(dir, 'model');
    await saveTinyUnet(model, { depth: 3, baseFilters: 8, classes: NUCLEUS_CLASSES, tileSize: 512, seed: 1 });
  }
  ensureInt8(model, arg('model') ? undefined : join(MONUSEG, 'images'));
  // The model's µm/px, or the slide's own where the model's is finer (Tessera does not enlarge slides).
  const info = await openSlide(slide);
  const slideMpp = info.mpp ? (info.mpp.x + info.mpp.y) / 2 : null;
  const modelMpp = (await readManifest(model)).mpp;
  const mpp = slideMpp && modelMpp ? Math.max(slideMpp, modelMpp) : undefined;
  const workers = Number(arg('workers', '2'));
  const mpx = { fp32: [], int8: [] };
  const ceiling = { fp32: [], int8: [] };
  const labels = {};
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
        mpp,
        tile: Number(arg('tile', '512')),
        tissue: false,
        onnx: { file: join(model, file) },
      });
      const pixels = (run.width * run.height) / 1e6;
      mpx[precision].push(pixels / (run.timings.wallMs / 1000));
      ceiling[precision].push(pixels / (await modelOnlySeconds(slide, model, file, run)));
      engine[precision] = run.engine;
      if (i === 0) labels[precision] = { out, run };
      else await rm(out, { recursive: true, force: true });
    }
  }
  const stem = imageStem(slide);
  const agreement = await labelAgreement(
    join(labels.fp32.out, `${stem}_labels.tif`),
    join(labels.int8.out, `${stem}_labels.tif`),
  );
  const run = labels.int8.run;
  console.log(
    `\nWhole slide ${slide} at ${run.mpp?.toFixed(3) ?? '?'} µm/px (${run.width} x ${run.height}), ${workers} worker(s), ` +
      `${run.options.onnx.threads} thread(s) each, every tile (${run.tilesPredicted} of ${run.options.tile} px, batch ` +
      `${run.options.batchSize}); ${engine.int8}; median of ${arg('slide-reps', '1')} run(s). Model only: the same ` +
      'tiles decoded into memory first, the same workers and threads, the network alone.',
  );
  console.log('| precision | tiler Mpx/s | model-only Mpx/s | tiler / model-only |\n| --- | --- | --- | --- |');
  for (const precision of ['fp32', 'int8']) {
    const [a, b] = [median(mpx[precision]), median(ceiling[precision])];
    console.log(`| ${precision} | ${a.toFixed(2)} | ${b.toFixed(2)} | ${(a / b).toFixed(2)} |`);
  }
  const [a, b] = [median(mpx.fp32), median(mpx.int8)];
  console.log(
    `int8 / fp32, tiler: ${(b / a).toFixed(2)}; model only: ${(median(ceiling.int8) / median(ceiling.fp32)).toFixed(2)}`,
  );
  console.log(`label agreement int8 vs fp32 on the whole slide: ${(100 * agreement).toFixed(2)}%`);
  for (const { out } of Object.values(labels)) await rm(out, { recursive: true, force: true });
}

async function nucleusDice(model) {
  ensureInt8(model);
  const manifest = await readManifest(model);
  const nucleus = manifest.classes.findIndex((c) => c.value === 1);
  if (nucleus < 0) throw new Error(`${model} has no class of mask value 1 (MoNuSeg nuclei)`);
  // Held out: neither trained on nor used to choose the kept weights.
  const data = manifest.training?.data;
  const trained = new Set([...(data?.trainStems ?? []), ...(data?.validationStems ?? [])]);
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
if (!process.argv.includes('--no-latency')) await latency();
const dir = await mkdtemp(join(tmpdir(), 'tessera-int8-bench-'));
try {
  if (arg('slide')) await slideThroughput(arg('slide'), dir);
  if (arg('model')) await nucleusDice(arg('model'));
} finally {
  await rm(dir, { recursive: true, force: true });
}
