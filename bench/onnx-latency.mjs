#!/usr/bin/env node
// Per-tile prediction latency of every architecture with the ONNX runtime (onnxruntime-node) against the tfjs
// wasm backend, in one run, as ratios; achieved GFLOP/s against this machine's measured fp32 peak.
//
//   node bench/onnx-latency.mjs                 # tiles 256 and 512, 2 ONNX threads, 3 timed runs each
//   options: --sizes 256,512  --threads 2  --reps 3  --archs unet,fcn8s,deeplabv3plus  --no-tfjs
//
// Needs `npm run build` first. Networks are built untrained (latency does not depend on the weight values):
// U-Net 4 levels x 32 base filters with batch norm (the configuration of DEVELOPERS.md), FCN-8s and DeepLabv3+
// (MobileNetV2) with their defaults; 3 input channels, 2 classes, batch 1.
// FLOPs are counted by @tessera/core's countFlops (2 x multiply-adds of convolutions). The peak is measured, not
// taken from a data sheet: the fastest of float32 matrix products (MatMul) of several shapes in onnxruntime-node
// with the same thread count (best of 5 runs each), i.e. what its GEMM kernels reach on these cores.
import { availableParallelism } from 'node:os';
import { countFlops, setupEngine, tf } from '@tessera/core';
import { createOnnxPredictor, exportOnnx } from '@tessera/onnx';
import unet from '@tessera/arch-unet';
import fcn8s from '@tessera/arch-fcn8s';
import deeplabv3plus from '@tessera/arch-deeplab';
import * as ort from 'onnxruntime-node';
import { matmulModel } from './onnx-gemm.mjs';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const sizes = arg('sizes', '256,512').split(',').map(Number);
const threads = Number(arg('threads', String(Math.min(2, availableParallelism()))));
const reps = Number(arg('reps', '3'));
const withTfjs = !process.argv.includes('--no-tfjs');
const archNames = arg('archs', 'unet,fcn8s,deeplabv3plus').split(',');

async function time(fn, n) {
  await fn(); // warm-up
  const times = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await fn();
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  return { median: times[Math.floor(times.length / 2)], best: times[0] };
}

// Measured fp32 peak: the fastest of several GEMM shapes in onnxruntime.
let peak = 0;
for (const [m, k, n] of [
  [2048, 2048, 2048],
  [3072, 3072, 3072],
  [1024, 4096, 1024],
  [4096, 1024, 4096],
  [16384, 576, 64],
]) {
  const gemm = await ort.InferenceSession.create(matmulModel(m, k, n), {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
  });
  const a = new ort.Tensor(
    'float32',
    Float32Array.from({ length: m * k }, (_, i) => ((i * 7919) % 1000) / 1000 - 0.5),
    [m, k],
  );
  const gemmTime = await time(() => gemm.run({ a }), 5);
  const gflops = (2 * m * k * n) / (gemmTime.best / 1000) / 1e9;
  console.log(`  MatMul ${m}x${k}x${n}: ${gflops.toFixed(1)} GFLOP/s`);
  peak = Math.max(peak, gflops);
  await gemm.release();
}
console.log(`measured fp32 peak (fastest onnxruntime MatMul, ${threads} threads): ${peak.toFixed(1)} GFLOP/s`);

const engine = await setupEngine('wasm');
const plugins = {
  unet: unet({ depth: 4, baseFilters: 32, batchNorm: true }),
  fcn8s: fcn8s(),
  deeplabv3plus: deeplabv3plus(),
};
const rows = [];
for (const name of archNames) {
  const plugin = plugins[name];
  const model = plugin.build({ inputChannels: 3, numClasses: 2, seed: 1, options: plugin.defaults });
  const manifest = {
    architecture: { name, inputMultiple: plugin.inputMultiple(plugin.defaults) },
    inputChannels: 3,
    classes: [{ name: 'background' }, { name: 'foreground' }],
    normalization: {},
    files: { weights: { sha256: '' } },
  };
  const predictor = await createOnnxPredictor(exportOnnx(model, manifest, { converters: plugin.onnxConverters }), {
    threads,
  });
  for (const size of sizes) {
    const shape = [1, size, size, 3];
    const x = tf.randomNormal(shape, 0, 1, 'float32', 2);
    const data = x.dataSync();
    const flops = countFlops(model, shape);
    const onnx = await time(() => predictor.run(data, shape), reps);
    let wasm = null;
    if (withTfjs) {
      wasm = await time(async () => {
        const y = model.predict(x);
        await y.data();
        y.dispose();
      }, reps);
    }
    x.dispose();
    const gflops = flops / (onnx.median / 1000) / 1e9;
    const row = {
      arch: name,
      tile: size,
      gflop: +(flops / 1e9).toFixed(2),
      onnxMs: +onnx.median.toFixed(1),
      wasmMs: wasm ? +wasm.median.toFixed(1) : null,
      wasmOverOnnx: wasm ? +(wasm.median / onnx.median).toFixed(2) : null,
      onnxGflops: +gflops.toFixed(1),
      shareOfPeak: +(gflops / peak).toFixed(3),
    };
    rows.push(row);
    console.log(JSON.stringify(row));
  }
  await predictor.dispose();
  model.dispose();
}
console.log(
  `\nONNX: onnxruntime-node ${ort.env.versions.node}, ${threads} threads; tfjs: ${engine.name} backend, ${engine.threads} thread(s). Median of ${reps} runs after a warm-up.`,
);
console.log('| architecture | tile | GFLOP | onnx ms | wasm ms | wasm / onnx | onnx GFLOP/s | share of peak |');
console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
for (const r of rows)
  console.log(
    `| ${r.arch} | ${r.tile} | ${r.gflop} | ${r.onnxMs} | ${r.wasmMs ?? '-'} | ${r.wasmOverOnnx ?? '-'} | ${r.onnxGflops} | ${(100 * r.shareOfPeak).toFixed(0)}% |`,
  );
