#!/usr/bin/env node
// Whole-slide prediction of one slide with each runtime (ONNX via onnxruntime-node, tfjs on wasm), in one run:
// wall time and speed ratio, and how far the label maps differ (pixels whose class differs, out of all).
//
//   node bench/slide-runtimes.mjs --model <model-dir> [--slide <file>] [--workers 2] [--tile 512]
//
// Default slide: ../shared/data/slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs. Needs `npm run build`.
// Each run is a separate `tessera predict` process; its wall time covers starting the workers, loading the
// model, reading, predicting, blending and writing the outputs.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const model = arg('model');
if (!model) {
  console.error('usage: node bench/slide-runtimes.mjs --model <model-dir> [--slide <file>] [--workers n] [--tile px]');
  process.exit(2);
}
const slide = arg('slide', join(ROOT, '../shared/data/slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs'));
const extra = ['--workers', arg('workers', '2'), ...(arg('tile') ? ['--tile', arg('tile')] : [])];
const dir = mkdtempSync(join(tmpdir(), 'tessera-slide-runtimes-'));
const stem = basename(slide).replace(/\.[^.]+$/, '');

const runs = {};
for (const runtime of ['onnx', 'tfjs']) {
  const out = join(dir, runtime);
  const start = performance.now();
  const r = spawnSync(
    process.execPath,
    [
      join(ROOT, 'apps/cli/dist/bin.js'),
      'predict',
      slide,
      '--model',
      model,
      '--out',
      out,
      '--runtime',
      runtime,
      '--backend',
      'wasm',
      ...extra,
    ],
    { encoding: 'utf8' },
  );
  const seconds = (performance.now() - start) / 1000;
  if (r.status !== 0) {
    console.error(r.stderr);
    process.exit(1);
  }
  const line = r.stderr.split('\n').find((l) => l.includes('Mpx/s')) ?? '';
  runs[runtime] = { seconds, labels: join(out, `${stem}_labels.tif`), line: line.trim() };
  console.log(`${runtime}: ${seconds.toFixed(1)} s wall — ${line.trim()}`);
}
const a = await sharp(runs.onnx.labels, { page: 0 }).raw().toBuffer({ resolveWithObject: true });
const b = await sharp(runs.tfjs.labels, { page: 0 }).raw().toBuffer({ resolveWithObject: true });
let differing = 0;
for (let i = 0; i < a.data.length; i++) if (a.data[i] !== b.data[i]) differing++;
const result = {
  slide,
  size: `${a.info.width}x${a.info.height}`,
  onnxSeconds: +runs.onnx.seconds.toFixed(1),
  tfjsSeconds: +runs.tfjs.seconds.toFixed(1),
  tfjsOverOnnx: +(runs.tfjs.seconds / runs.onnx.seconds).toFixed(2),
  labelPixelsDiffering: differing,
  labelPixelsDifferingShare: differing / a.data.length,
};
console.log(JSON.stringify(result));
rmSync(dir, { recursive: true, force: true });
