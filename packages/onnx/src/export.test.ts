import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { layers, setupEngine, tf, type ModelManifest } from '@tessera/core';
import {
  createOnnxPredictor,
  cudaProviderInstalled,
  exportOnnx,
  ONNX_METADATA,
  readOnnxMetadata,
  UnsupportedLayerError,
} from './index.js';

const L = layers.layers;

function manifestFor(name: string, channels: number, classes: number, multiple = 1): ModelManifest {
  return {
    format: 'tessera-model',
    formatVersion: 1,
    architecture: {
      name,
      version: '0',
      apiVersion: 1,
      options: {},
      inputMultiple: multiple,
      receptiveField: 1,
      parameters: 0,
    },
    classes: Array.from({ length: classes }, (_, i) => ({ name: `c${i}`, value: i, color: '#000000' })),
    inputChannels: channels,
    normalization: { mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] },
    tileSize: 64,
    mpp: null,
    files: {
      topology: { path: 'model.json', sha256: 'a', bytes: 1 },
      weights: { path: 'weights.bin', sha256: 'b'.repeat(64), bytes: 1 },
    },
    createdAt: '2026-01-01T00:00:00Z',
    createdBy: 'test',
  } as ModelManifest;
}

/** Sets every weight to seeded random values (batch-norm variances positive), so no layer is an identity. */
function randomizeWeights(model: layers.LayersModel, seed = 3): void {
  model.weights.forEach((w, i) => {
    const v = w.read();
    const positive = /moving_variance|gamma/.test(w.originalName);
    w.write(tf.randomUniform(v.shape, positive ? 0.5 : -0.5, positive ? 1.5 : 0.5, 'float32', seed + i));
  });
}

async function maxDifference(model: layers.LayersModel, bytes: Uint8Array, shape: [number, number, number, number]) {
  const x = tf.randomNormal(shape, 0, 1, 'float32', 11);
  const reference = (model.predict(x) as tf.Tensor).dataSync();
  const predictor = await createOnnxPredictor(bytes, { threads: 1 });
  const actual = await predictor.run(x.dataSync() as Float32Array, shape);
  await predictor.dispose();
  x.dispose();
  expect(actual.length).toBe(reference.length);
  let max = 0;
  for (let i = 0; i < actual.length; i++) max = Math.max(max, Math.abs(actual[i] - reference[i]));
  return max;
}

/** A network using every built-in layer converter at least once. */
function everyLayerModel(): layers.LayersModel {
  const input = layers.input({ shape: [null, null, 3] });
  const apply = (layer: layers.layers.Layer, x: layers.SymbolicTensor | layers.SymbolicTensor[]) =>
    layer.apply(x) as layers.SymbolicTensor;
  const x = apply(L.conv2d({ filters: 8, kernelSize: 3, padding: 'same', activation: 'relu' }), input);
  const strided = apply(L.conv2d({ filters: 8, kernelSize: 3, strides: 2, padding: 'same', activation: 'elu' }), x);
  const dilated = apply(L.conv2d({ filters: 8, kernelSize: 3, dilationRate: 2, padding: 'same', useBias: false }), x);
  const dw = apply(L.depthwiseConv2d({ kernelSize: 3, depthMultiplier: 2, strides: 2, padding: 'same' }), dilated);
  let y = apply(L.concatenate(), [strided, apply(L.conv2d({ filters: 8, kernelSize: 1, activation: 'tanh' }), dw)]);
  y = apply(L.batchNormalization({ epsilon: 1e-3 }), y);
  y = apply(L.reLU({ maxValue: 6 }), y);
  y = apply(L.leakyReLU({ alpha: 0.1 }), y);
  const avg = apply(L.averagePooling2d({ poolSize: 2, strides: 2, padding: 'same' }), y);
  const max = apply(L.maxPooling2d({ poolSize: 3, strides: 2, padding: 'same' }), y);
  let z = apply(L.average(), [avg, max]);
  z = apply(L.activation({ activation: 'sigmoid' }), z);
  const pooled = apply(L.reshape({ targetShape: [1, 1, 16] }), apply(L.globalAveragePooling2d({}), z));
  const gmax = apply(L.reshape({ targetShape: [1, 1, 16] }), apply(L.globalMaxPooling2d({}), z));
  z = apply(L.multiply(), [z, apply(L.add(), [pooled, gmax])]);
  z = apply(L.add(), [z, apply(L.conv2d({ filters: 16, kernelSize: 1 }), z)]);
  z = apply(L.maximum(), [z, apply(L.minimum(), [z, apply(L.dropout({ rate: 0.5 }), z)])]);
  z = apply(L.upSampling2d({ size: [2, 2], interpolation: 'bilinear' }), z);
  z = apply(L.conv2dTranspose({ filters: 8, kernelSize: 3, strides: 2, padding: 'same', activation: 'relu' }), z);
  z = apply(
    L.zeroPadding2d({
      padding: [
        [1, 2],
        [3, 0],
      ],
    }),
    z,
  );
  z = apply(
    L.cropping2D({
      cropping: [
        [1, 2],
        [3, 0],
      ],
    }),
    z,
  );
  z = apply(L.conv2d({ filters: 8, kernelSize: 3, padding: 'valid' }), z);
  z = apply(L.conv2dTranspose({ filters: 8, kernelSize: 3, padding: 'valid', activation: 'swish' }), z);
  z = apply(L.upSampling2d({ size: [2, 2] }), apply(L.maxPooling2d({ poolSize: 2 }), z));
  z = apply(L.conv2dTranspose({ filters: 6, kernelSize: 2, strides: 2, padding: 'same' }), z);
  z = apply(L.maxPooling2d({ poolSize: 2 }), z);
  z = apply(L.conv2d({ filters: 4, kernelSize: 1 }), z);
  const out = apply(L.softmax({ axis: -1 }), z);
  return layers.model({ inputs: input, outputs: out });
}

class Doubler extends L.Layer {
  static className = 'TestDoubler';
  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return tf.mul(Array.isArray(inputs) ? inputs[0] : inputs, 2);
  }
}

describe('exportOnnx', () => {
  let dir: string;
  beforeAll(async () => {
    await setupEngine('cpu');
    dir = mkdtempSync(join(tmpdir(), 'tessera-onnx-test-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('converts every built-in layer with probabilities within 1e-5 of tfjs, at several sizes and batches', async () => {
    const model = everyLayerModel();
    randomizeWeights(model);
    const bytes = exportOnnx(model, manifestFor('every-layer', 3, 4));
    for (const shape of [
      [1, 16, 16, 3],
      [2, 24, 40, 3],
    ] as [number, number, number, number][]) {
      expect(await maxDifference(model, bytes, shape)).toBeLessThan(1e-5);
    }
    model.dispose();
  });

  it('carries the manifest, classes, normalisation and weight checksum in its metadata', () => {
    const model = everyLayerModel();
    const manifest = manifestFor('every-layer', 3, 4, 4);
    const meta = readOnnxMetadata(exportOnnx(model, manifest));
    expect(JSON.parse(meta[ONNX_METADATA.manifest])).toEqual(manifest);
    expect(JSON.parse(meta[ONNX_METADATA.classes])).toEqual(manifest.classes);
    expect(JSON.parse(meta[ONNX_METADATA.normalization])).toEqual(manifest.normalization);
    expect(meta[ONNX_METADATA.weightsSha256]).toBe('b'.repeat(64));
    expect(meta[ONNX_METADATA.inputMultiple]).toBe('4');
    model.dispose();
  });

  it('names a custom layer class without a converter, and converts it with one', async () => {
    const input = layers.input({ shape: [null, null, 2] });
    const doubled = new Doubler({}).apply(input) as layers.SymbolicTensor;
    const model = layers.model({
      inputs: input,
      outputs: L.softmax({ axis: -1 }).apply(doubled) as layers.SymbolicTensor,
    });
    const manifest = manifestFor('doubler-net', 2, 2);
    expect(() => exportOnnx(model, manifest)).toThrow(UnsupportedLayerError);
    expect(() => exportOnnx(model, manifest)).toThrow(/doubler-net.*no converter for layer class\(es\) TestDoubler/);
    const bytes = exportOnnx(model, manifest, {
      converters: { TestDoubler: (_layer, [x], g) => g.node('Mul', [x, g.constant(new Float32Array([2]), [])]) },
    });
    expect(await maxDifference(model, bytes, [1, 8, 8, 2])).toBeLessThan(1e-6);
  });

  // .ci/run installs python3-onnx; elsewhere the check shows as skipped (apt-get install python3-onnx).
  const python = '/usr/bin/python3';
  const hasOnnx = spawnSync(python, ['-c', 'import onnx'], { encoding: 'utf8' }).status === 0;
  it.skipIf(!hasOnnx)('passes the ONNX checker and strict shape inference of Python onnx (Debian python3-onnx)', () => {
    const model = everyLayerModel();
    const file = join(dir, 'every.onnx');
    writeFileSync(file, exportOnnx(model, manifestFor('every-layer', 3, 4)));
    const script = [
      'import onnx, sys',
      'm = onnx.load(sys.argv[1])',
      'onnx.checker.check_model(m, full_check=True)',
      'g = onnx.shape_inference.infer_shapes(m, strict_mode=True).graph',
      'print([d.dim_param or d.dim_value for d in g.output[0].type.tensor_type.shape.dim])',
    ].join('\n');
    const printed = execFileSync(python, ['-c', script, file], { encoding: 'utf8' }).trim();
    expect(printed).toBe("['batch', 'height', 'width', 4]");
    model.dispose();
  });

  it('runs identically in another ONNX consumer: onnxruntime-web (WebAssembly build) in a separate process', async () => {
    const model = everyLayerModel();
    randomizeWeights(model, 5);
    const bytes = exportOnnx(model, manifestFor('every-layer', 3, 4));
    const file = join(dir, 'consumer.onnx');
    writeFileSync(file, bytes);
    const shape: [number, number, number, number] = [1, 24, 32, 3];
    const input = Float32Array.from({ length: 24 * 32 * 3 }, (_, i) => Math.sin(i * 0.37));
    writeFileSync(join(dir, 'input.bin'), input);
    const script = `
      import * as ort from 'onnxruntime-web';
      import { readFileSync } from 'node:fs';
      ort.env.wasm.numThreads = 1;
      const session = await ort.InferenceSession.create(readFileSync(process.argv[1]));
      const buf = readFileSync(process.argv[2]);
      const x = new ort.Tensor('float32', new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4), ${JSON.stringify(shape)});
      const out = await session.run({ image: x });
      process.stdout.write(JSON.stringify({ dims: out.probabilities.dims, data: Array.from(out.probabilities.data) }));
    `;
    const printed = execFileSync(
      process.execPath,
      ['--input-type=module', '-e', script, file, join(dir, 'input.bin')],
      {
        encoding: 'utf8',
        cwd: new URL('..', import.meta.url).pathname,
        maxBuffer: 64 * 1024 * 1024,
      },
    );
    const other = JSON.parse(printed) as { dims: number[]; data: number[] };
    expect(other.dims).toEqual([1, 24, 32, 4]);
    const predictor = await createOnnxPredictor(bytes, { threads: 1 });
    const mine = await predictor.run(input, shape);
    await predictor.dispose();
    const reference = (model.predict(tf.tensor4d(input, shape)) as tf.Tensor).dataSync();
    let maxVsNode = 0;
    let maxVsTfjs = 0;
    for (let i = 0; i < mine.length; i++) {
      maxVsNode = Math.max(maxVsNode, Math.abs(other.data[i] - mine[i]));
      maxVsTfjs = Math.max(maxVsTfjs, Math.abs(other.data[i] - reference[i]));
    }
    expect(maxVsNode).toBeLessThan(1e-5);
    expect(maxVsTfjs).toBeLessThan(1e-5);
    model.dispose();
  });

  it('fails clearly for --device cuda where the CUDA provider is absent', async () => {
    if (cudaProviderInstalled()) return;
    const model = everyLayerModel();
    const bytes = exportOnnx(model, manifestFor('every-layer', 3, 4));
    await expect(createOnnxPredictor(bytes, { device: 'cuda' })).rejects.toThrow(/no CUDA provider here/);
    await expect(createOnnxPredictor(bytes, { device: 'tpu' as 'cuda' })).rejects.toThrow(/one of cpu, cuda/);
    await expect(createOnnxPredictor(new Uint8Array([1, 2, 3]))).rejects.toThrow(/could not load the ONNX model/);
    model.dispose();
  });
});
