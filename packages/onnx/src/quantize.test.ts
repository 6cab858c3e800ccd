import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { layers, setupEngine, tf, type ModelManifest } from '@tessera/core';
import {
  calibrateRanges,
  compareLabels,
  createOnnxPredictor,
  exportOnnx,
  ONNX_METADATA,
  quantizeOnnx,
  QuantizeOptionError,
  readOnnxMetadata,
  type InputTensor,
} from './index.js';
import { decodeModel, encodeModel, type ModelData, type NodeData, type TensorData } from './protobuf.js';

const L = layers.layers;

const manifest = {
  architecture: { name: 'conv-zoo', options: {}, inputMultiple: 4 },
  inputChannels: 3,
  classes: [{ name: 'a' }, { name: 'b' }, { name: 'c' }],
  normalization: {},
  files: { weights: { sha256: 'c'.repeat(64) } },
} as unknown as ModelManifest;

/**
 * Every kind of convolution the exporter writes: plain, strided, dilated, depthwise (group > 1), a 2x2/2 transposed
 * convolution (a 1x1 Conv and DepthToSpace), a 3x3/2 one (ConvTranspose), a residual Add and max pooling.
 */
function convZoo(): layers.LayersModel {
  const input = layers.input({ shape: [null, null, 3] });
  const apply = (layer: layers.layers.Layer, x: layers.SymbolicTensor | layers.SymbolicTensor[]) =>
    layer.apply(x) as layers.SymbolicTensor;
  let x = apply(L.conv2d({ filters: 8, kernelSize: 3, padding: 'same', activation: 'relu' }), input);
  const dilated = apply(L.conv2d({ filters: 8, kernelSize: 3, dilationRate: 2, padding: 'same' }), x);
  x = apply(L.add(), [x, dilated]);
  x = apply(L.depthwiseConv2d({ kernelSize: 3, depthMultiplier: 2, padding: 'same', activation: 'relu' }), x);
  x = apply(L.maxPooling2d({ poolSize: 2 }), x);
  x = apply(L.conv2d({ filters: 8, kernelSize: 3, strides: 2, padding: 'same', activation: 'relu' }), x);
  x = apply(L.conv2dTranspose({ filters: 8, kernelSize: 2, strides: 2, padding: 'same', activation: 'relu' }), x);
  x = apply(L.conv2dTranspose({ filters: 6, kernelSize: 3, strides: 2, padding: 'same', activation: 'relu' }), x);
  x = apply(L.conv2d({ filters: 3, kernelSize: 1, activation: 'softmax' }), x);
  return layers.model({ inputs: input, outputs: x });
}

/** He-normal kernels and small random biases: a network whose labels vary from pixel to pixel. */
function randomizeWeights(model: layers.LayersModel): void {
  model.weights.forEach((w, i) => {
    const shape = w.shape as number[];
    if (/kernel/.test(w.originalName)) {
      const fanIn = /depthwise/.test(w.originalName) ? shape[0] * shape[1] : shape[0] * shape[1] * shape[2];
      w.write(tf.randomNormal(shape, 0, Math.sqrt(2 / fanIn), 'float32', 7 + i));
    } else w.write(tf.randomUniform(shape, -0.1, 0.1, 'float32', 7 + i));
  });
}

/** Smooth random images `[1, side, side, 3]` (sums of sinusoids), different for each seed. */
function inputs(count: number, side: number, seed: number): InputTensor[] {
  return Array.from({ length: count }, (_, k) => {
    const data = new Float32Array(side * side * 3);
    for (let i = 0; i < data.length; i++) {
      const [y, x, c] = [Math.floor(i / (3 * side)), Math.floor(i / 3) % side, i % 3];
      const f = seed * 7 + k * 3 + c;
      data[i] = Math.sin(x * (0.11 + 0.013 * f) + y * 0.07 * c) + Math.cos(y * (0.09 + 0.007 * f) - x * 0.05);
    }
    return { data, shape: [1, side, side, 3] as const };
  });
}

const byName = (model: ModelData) => new Map(model.initializers.map((t) => [t.name, t]));
const producerOf = (model: ModelData) => new Map(model.nodes.flatMap((n) => n.outputs.map((o) => [o, n] as const)));
const intAttr = (n: NodeData, name: string) => (n.attributes[name] as { value: number } | undefined)?.value;

async function probabilities(bytes: Uint8Array, input: InputTensor): Promise<Float32Array> {
  const predictor = await createOnnxPredictor(bytes, { threads: 1 });
  try {
    return await predictor.run(input.data, input.shape);
  } finally {
    await predictor.dispose();
  }
}

describe('quantizeOnnx', () => {
  let dir: string;
  let fp32: Uint8Array;
  let int8: Uint8Array;
  let report: Awaited<ReturnType<typeof quantizeOnnx>>['report'];
  beforeAll(async () => {
    await setupEngine('cpu');
    dir = mkdtempSync(join(tmpdir(), 'tessera-quantize-test-'));
    const model = convZoo();
    randomizeWeights(model);
    fp32 = exportOnnx(model, manifest);
    model.dispose();
    ({ bytes: int8, report } = await quantizeOnnx(fp32, inputs(4, 32, 1)));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('quantizes plain, dilated, depthwise and transposed convolutions, none left in fp32', () => {
    expect(report.fp32Nodes).toEqual([]);
    // 5 Conv2D/DepthwiseConv2D, the 2x2/2 transposed convolution as a 1x1 Conv, and one ConvTranspose.
    expect(report.quantizedNodes).toEqual({ Conv: 6, ConvTranspose: 1 });
    expect(report.floatOperators).toEqual({ Softmax: 1 });
    const q = decodeModel(int8);
    const weighted = q.nodes.filter((n) => n.opType === 'Conv' || n.opType === 'ConvTranspose');
    expect(weighted.some((n) => (intAttr(n, 'group') ?? 1) > 1)).toBe(true);
    const dilations = (n: NodeData) => (n.attributes.dilations as { type: 'ints'; value: readonly number[] }).value;
    expect(weighted.some((n) => dilations(n)[0] === 2)).toBe(true);
    const producer = producerOf(q);
    for (const n of weighted) {
      // Every quantized operator reads a dequantized activation and a dequantized weight.
      expect(producer.get(n.inputs[0])?.opType, n.name).toBe('DequantizeLinear');
      expect(producer.get(n.inputs[1])?.opType, n.name).toBe('DequantizeLinear');
    }
    expect(q.initializers.filter((t) => t.values instanceof Float32Array && t.dims.length === 4)).toEqual([]);
  });

  it('stores weights as int8 with one scale per output channel (axis 0, ConvTranspose axis 1) and zero points 0', () => {
    const original = byName(decodeModel(fp32));
    const q = decodeModel(int8);
    const init = byName(q);
    const producer = producerOf(q);
    for (const n of q.nodes.filter((n) => n.opType === 'Conv' || n.opType === 'ConvTranspose')) {
      const dq = producer.get(n.inputs[1])!;
      const [values, scale, zero] = dq.inputs.map((name) => init.get(name)!);
      const axis = n.opType === 'ConvTranspose' ? 1 : 0;
      expect(values.values).toBeInstanceOf(Int8Array);
      expect(intAttr(dq, 'axis')).toBe(axis);
      expect(scale.dims).toEqual([values.dims[axis]]);
      expect(zero.values).toEqual(new Int8Array(values.dims[axis]));
      // Symmetric: each channel's largest |weight| maps to 127, and dequantizes to within half a step.
      const w = original.get(dq.inputs[0].replace(/_quantized$/, ''))!.values as Float32Array;
      const inner = values.dims.slice(axis + 1).reduce((a, b) => a * b, 1);
      for (let i = 0; i < w.length; i++) {
        const s = (scale.values as Float32Array)[Math.floor(i / inner) % values.dims[axis]];
        expect(Math.abs((values.values as Int8Array)[i] * s - w[i])).toBeLessThanOrEqual(s / 2 + 1e-7);
      }
      expect(Math.max(...Array.from(values.values as Int8Array, Math.abs))).toBe(127);
    }
  });

  it('stores biases as int32 at scale input scale x weight scale, and activations as uint8', () => {
    const q = decodeModel(int8);
    const init = byName(q);
    const producer = producerOf(q);
    for (const n of q.nodes.filter((n) => n.opType === 'Conv' && n.inputs[2])) {
      const bias = producer.get(n.inputs[2])!;
      const weight = producer.get(n.inputs[1])!;
      const input = producer.get(n.inputs[0])!;
      expect(init.get(bias.inputs[0])!.values).toBeInstanceOf(Int32Array);
      expect(init.get(input.inputs[2])!.values).toBeInstanceOf(Uint8Array);
      const inputScale = (init.get(input.inputs[1])!.values as Float32Array)[0];
      const weightScales = init.get(weight.inputs[1])!.values as Float32Array;
      const biasScales = init.get(bias.inputs[1])!.values as Float32Array;
      biasScales.forEach((s, c) => expect(s).toBeCloseTo(inputScale * weightScales[c], 9));
    }
  });

  it('runs in onnxruntime-node with labels agreeing with fp32 on unseen inputs', async () => {
    const unseen = inputs(4, 48, 2);
    const { agreement, dice, pixels } = await compareLabels(fp32, int8, unseen);
    expect(pixels).toBe(4 * 48 * 48);
    expect(agreement).toBeGreaterThan(0.97);
    // Every class is predicted somewhere, so the agreement is not that of a constant map.
    for (const d of dice) expect(d).toBeGreaterThan(0.9);
    const [a, b] = [await probabilities(fp32, unseen[0]), await probabilities(int8, unseen[0])];
    expect(b.length).toBe(a.length);
    let max = 0;
    for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
    expect(max).toBeGreaterThan(0);
    expect(max).toBeLessThan(0.2);
  });

  it('keeps the metadata of the fp32 model and adds its report', () => {
    const meta = readOnnxMetadata(int8);
    expect(meta[ONNX_METADATA.weightsSha256]).toBe('c'.repeat(64));
    expect(JSON.parse(meta[ONNX_METADATA.quantization])).toEqual(report);
    expect(report).toMatchObject({ method: 'percentile', percentile: 99.99, tiles: 4 });
  });

  // .ci/run installs python3-onnx; elsewhere the check shows as skipped (apt-get install python3-onnx).
  const python = '/usr/bin/python3';
  const hasOnnx = spawnSync(python, ['-c', 'import onnx'], { encoding: 'utf8' }).status === 0;
  it.skipIf(!hasOnnx)('passes the ONNX checker and strict shape inference of Python onnx (Debian python3-onnx)', () => {
    const file = join(dir, 'int8.onnx');
    writeFileSync(file, int8);
    const script = [
      'import onnx, sys',
      'm = onnx.load(sys.argv[1])',
      'onnx.checker.check_model(m, full_check=True)',
      'g = onnx.shape_inference.infer_shapes(m, strict_mode=True).graph',
      'print([d.dim_param or d.dim_value for d in g.output[0].type.tensor_type.shape.dim])',
    ].join('\n');
    expect(execFileSync(python, ['-c', script, file], { encoding: 'utf8' }).trim()).toBe(
      "['batch', 'height', 'width', 3]",
    );
  });
});

/** A graph by hand: `image` → `body` → `probabilities`, with the given initializers. */
function handModel(nodes: NodeData[], initializers: TensorData[], classes: number): Uint8Array {
  return encodeModel({
    irVersion: 8,
    opsetVersion: 17,
    producerName: 'test',
    producerVersion: '0',
    graphName: 'hand',
    nodes,
    initializers,
    inputs: [{ name: 'image', dims: ['batch', 'height', 'width', 8] }],
    outputs: [{ name: 'probabilities', dims: ['batch', 'height', 'width', classes] }],
    metadata: {},
  });
}
const node = (opType: string, inputs: string[], output: string, attributes: NodeData['attributes'] = {}) => ({
  name: output,
  opType,
  inputs,
  outputs: [output],
  attributes,
});
const randomTensor = (name: string, dims: number[], seed: number): TensorData => ({
  name,
  dims,
  values: tf.randomNormal(dims, 0, 0.5, 'float32', seed).dataSync() as Float32Array,
});
const features = (seed: number): InputTensor[] =>
  [0, 1, 2].map((k) => ({
    data: tf.randomNormal([1, 4, 16, 8], 0, 1, 'float32', seed + k).dataSync() as Float32Array,
    shape: [1, 4, 16, 8] as const,
  }));

describe('quantizeOnnx on MatMul, Gemm and what it cannot quantize', () => {
  beforeAll(async () => {
    await setupEngine('cpu');
  });

  it('quantizes Gemm (transB: axis 0) and MatMul (axis 1) weights per output channel', async () => {
    const fp32 = handModel(
      [
        node('Flatten', ['image'], 'flat', { axis: { type: 'int', value: 3 } }),
        node('Gemm', ['flat', 'w1', 'b1'], 'hidden', { transB: { type: 'int', value: 1 } }),
        node('Relu', ['hidden'], 'relu'),
        node('MatMul', ['relu', 'w2'], 'logits'),
        node('Reshape', ['logits', 'shape'], 'pixels'),
        node('Softmax', ['pixels'], 'probabilities', { axis: { type: 'int', value: -1 } }),
      ],
      [
        randomTensor('w1', [6, 8], 1),
        randomTensor('b1', [6], 2),
        randomTensor('w2', [6, 3], 3),
        { name: 'shape', dims: [4], values: BigInt64Array.from([1n, 4n, -1n, 3n]) },
      ],
      3,
    );
    const { bytes, report } = await quantizeOnnx(fp32, features(10), { method: 'minmax' });
    expect(report.quantizedNodes).toEqual({ Gemm: 1, MatMul: 1 });
    expect(report.percentile).toBeNull();
    const q = decodeModel(bytes);
    const init = byName(q);
    const producer = producerOf(q);
    for (const [op, axis, channels] of [
      ['Gemm', 0, 6],
      ['MatMul', 1, 3],
    ] as const) {
      const dq = producer.get(q.nodes.find((n) => n.opType === op)!.inputs[1])!;
      expect(intAttr(dq, 'axis')).toBe(axis);
      expect(init.get(dq.inputs[0])!.values).toBeInstanceOf(Int8Array);
      expect(init.get(dq.inputs[1])!.dims).toEqual([channels]);
    }
    const { agreement } = await compareLabels(fp32, bytes, features(20));
    expect(agreement).toBeGreaterThan(0.95);
  });

  it('leaves a convolution whose weight is computed in fp32 and says why', async () => {
    const fp32 = handModel(
      [
        node('Transpose', ['image'], 'nchw', { perm: { type: 'ints', value: [0, 3, 1, 2] } }),
        node('Mul', ['w', 'two'], 'doubled'),
        node('Conv', ['nchw', 'doubled'], 'logits', { kernel_shape: { type: 'ints', value: [1, 1] } }),
        node('Softmax', ['logits'], 'softmax', { axis: { type: 'int', value: 1 } }),
        node('Transpose', ['softmax'], 'probabilities', { perm: { type: 'ints', value: [0, 2, 3, 1] } }),
      ],
      [randomTensor('w', [2, 8, 1, 1], 4), { name: 'two', dims: [], values: new Float32Array([2]) }],
      2,
    );
    const { bytes, report } = await quantizeOnnx(fp32, features(30));
    expect(report.quantizedNodes).toEqual({});
    expect(report.fp32Nodes).toEqual([
      { node: 'logits', opType: 'Conv', reason: 'its weight is computed in the graph, not a constant initializer' },
    ]);
    expect(await probabilities(bytes, features(40)[0])).toEqual(await probabilities(fp32, features(40)[0]));
  });
});

describe('calibrateRanges', () => {
  // One extreme value among 16 x 16 x 8 values spread evenly over [-1, 1].
  const values = Float32Array.from({ length: 16 * 16 * 8 }, (_, i) => -1 + (2 * i) / (16 * 16 * 8 - 1));
  values[100] = 50;
  const tile: InputTensor = { data: values, shape: [1, 16, 16, 8] };
  const model = decodeModel(
    handModel([node('Softmax', ['image'], 'probabilities', { axis: { type: 'int', value: -1 } })], [], 8),
  );

  it('takes the extremes with minmax, and cuts rare outliers with percentile', async () => {
    const minmax = (await calibrateRanges(model, ['image'], [tile], { method: 'minmax' })).get('image')!;
    expect(minmax).toEqual({ min: -1, max: 50 });
    const percentile = (await calibrateRanges(model, ['image'], [tile], { percentile: 99.9 })).get('image')!;
    // 0.05% of 2048 values on each side is one value: the outlier goes, the range is [-1, 1] to a histogram bin.
    expect(percentile.min).toBeCloseTo(-1, 6);
    expect(percentile.max).toBeGreaterThan(0.99);
    expect(percentile.max).toBeLessThan(1 + 51 / 2048 + 1e-6);
  });

  it('names a bad method, percentile or an empty calibration set, with the valid values', async () => {
    const cases: [Parameters<typeof calibrateRanges>[3], InputTensor[], string][] = [
      [
        { method: 'kl' as 'minmax' },
        [tile],
        'Expected the calibration method to be one of percentile, minmax but received "kl".',
      ],
      [
        { percentile: 40 },
        [tile],
        'Expected the calibration percentile to be above 50 and at most 100 but received 40.',
      ],
      [{}, [], 'Expected at least one calibration tile but received none.'],
    ];
    for (const [options, tiles, message] of cases) {
      const error = await calibrateRanges(model, ['image'], tiles, options).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(QuantizeOptionError);
      expect((error as QuantizeOptionError).message).toBe(message);
      expect((error as QuantizeOptionError).code).toBe('E_QUANTIZE_OPTION');
    }
  });
});
