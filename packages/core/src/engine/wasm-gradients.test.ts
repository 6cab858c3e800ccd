import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
// The tfjs-layers bundle registers tfjs-core's gradient functions (tf.grad needs them).
import '@tensorflow/tfjs-layers';
import { registerWasmGradientKernels } from './wasm-gradients.js';
import { expectNoGrowth, random, relativeError, runOn, type Result } from './test-helpers.js';

type Pad = 'same' | 'valid' | number | [[number, number], [number, number], [number, number], [number, number]];
type Shape4 = [number, number, number, number];

const TOLERANCE = 1e-4;

const sizeOf = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

function expectClose(reference: Result, actual: Result): void {
  expect(actual.shapes).toEqual(reference.shapes);
  reference.values.forEach((values, i) => {
    expect(relativeError(values, actual.values[i]), `output ${i}`).toBeLessThan(TOLERANCE);
  });
}

/** Compares `fn` on wasm (with the new kernels) against cpu. */
async function parity(fn: () => tf.Tensor[]): Promise<void> {
  const reference = await runOn('cpu', fn);
  const actual = await runOn('wasm', fn);
  expectClose(reference, actual);
}

/** A tensor of deterministic random values. */
function rand(shape: number[], seed: number): tf.Tensor {
  return tf.tensor(random(sizeOf(shape), seed), shape);
}

/** Gradients of `sum(f(...inputs) * r)` with `r` random, so that the upstream gradient is not uniform. */
function gradsOf(f: (...inputs: tf.Tensor[]) => tf.Tensor, inputs: tf.Tensor[], seed = 99): tf.Tensor[] {
  const y = f(...inputs);
  const r = rand(y.shape, seed);
  const grads = tf.grads((...xs: tf.Tensor[]) => tf.sum(tf.mul(f(...xs), r)))(inputs);
  return [y, ...grads];
}

/** Inserts zeros between filter taps: a `[kh, kw, a, b]` filter with dilation d becomes an undilated filter. */
function dilateFilter(values: Float32Array, shape: Shape4, d: number): { values: Float32Array; shape: Shape4 } {
  const [kh, kw, a, b] = shape;
  const eh = (kh - 1) * d + 1;
  const ew = (kw - 1) * d + 1;
  const out = new Float32Array(eh * ew * a * b);
  const inner = a * b;
  for (let y = 0; y < kh; y++) {
    for (let x = 0; x < kw; x++) {
      out.set(values.subarray((y * kw + x) * inner, (y * kw + x + 1) * inner), (y * d * ew + x * d) * inner);
    }
  }
  return { values: out, shape: [eh, ew, a, b] };
}

/** The taps of a dilated-filter gradient that belong to the original (undilated) filter. */
function undilate(values: Float32Array, shape: Shape4, d: number): Float32Array {
  const [eh, ew, a, b] = shape;
  const kh = (eh - 1) / d + 1;
  const kw = (ew - 1) / d + 1;
  const inner = a * b;
  const out = new Float32Array(kh * kw * inner);
  for (let y = 0; y < kh; y++) {
    for (let x = 0; x < kw; x++) {
      out.set(values.subarray((y * d * ew + x * d) * inner, (y * d * ew + x * d + 1) * inner), (y * kw + x) * inner);
    }
  }
  return out;
}

beforeAll(async () => {
  registerWasmGradientKernels();
  expect(await tf.setBackend('wasm')).toBe(true);
});

describe('registerWasmGradientKernels', () => {
  it('registers the kernels once and replaces the builtin Conv2DBackpropInput', () => {
    const names = ['Conv2DBackpropFilter', 'Conv2DBackpropInput'];
    names.push('DepthwiseConv2dNativeBackpropFilter', 'DepthwiseConv2dNativeBackpropInput');
    names.push('MaxPoolGrad', 'ResizeNearestNeighborGrad');
    const funcs = names.map((name) => tf.getKernel(name, 'wasm')?.kernelFunc);
    expect(funcs.every((f) => typeof f === 'function')).toBe(true);
    expect(registerWasmGradientKernels()).toEqual([]);
    expect(names.map((name) => tf.getKernel(name, 'wasm')?.kernelFunc)).toEqual(funcs);
  });

  it('rejects NCHW with a clear error', () => {
    const x = tf.zeros([1, 4, 4, 2]);
    const dy = tf.zeros([1, 4, 4, 3]);
    const attrs = { strides: 1, pad: 'same', dataFormat: 'NCHW', filterShape: [3, 3, 2, 3] };
    expect(() => tf.engine().runKernel('Conv2DBackpropFilter', { x, dy }, attrs)).toThrow(/'NCHW'.*'NHWC'/);
    tf.dispose([x, dy]);
  });
});

interface ConvCase {
  name: string;
  x: Shape4;
  filter: Shape4;
  strides: number;
  pad: Pad;
}

const convCases: ConvCase[] = [
  { name: '3x3 s1 same, batch 3', x: [3, 16, 16, 8], filter: [3, 3, 8, 12], strides: 1, pad: 'same' },
  { name: '3x3 s2 same, 15x17', x: [1, 15, 17, 8], filter: [3, 3, 8, 12], strides: 2, pad: 'same' },
  { name: '1x1 s1, batch 3', x: [3, 9, 10, 8], filter: [1, 1, 8, 5], strides: 1, pad: 'same' },
  { name: '1x1 s2 valid', x: [1, 15, 17, 6], filter: [1, 1, 6, 5], strides: 2, pad: 'valid' },
  { name: '2x2 s2 valid, batch 3', x: [3, 16, 16, 8], filter: [2, 2, 8, 6], strides: 2, pad: 'valid' },
  { name: '2x2 s2 valid, 15x17 (remainder)', x: [1, 15, 17, 4], filter: [2, 2, 4, 6], strides: 2, pad: 'valid' },
  { name: '3x3 s1 valid, 15x17', x: [1, 15, 17, 6], filter: [3, 3, 6, 7], strides: 1, pad: 'valid' },
  { name: '3x3 s2 valid, 16x16 (cropped)', x: [1, 16, 16, 5], filter: [3, 3, 5, 4], strides: 2, pad: 'valid' },
  { name: '4x4 s2 same, batch 3', x: [3, 15, 17, 5], filter: [4, 4, 5, 6], strides: 2, pad: 'same' },
  { name: '7x7 s2 same', x: [1, 31, 29, 3], filter: [7, 7, 3, 8], strides: 2, pad: 'same' },
  { name: '3x3 s1 pad 3 (wide)', x: [1, 9, 11, 4], filter: [3, 3, 4, 5], strides: 1, pad: 3 },
  {
    name: '3x3 s2 explicit asymmetric pad',
    x: [2, 15, 17, 4],
    filter: [3, 3, 4, 5],
    strides: 2,
    pad: [
      [0, 0],
      [1, 2],
      [2, 0],
      [0, 0],
    ],
  },
];

describe('conv2d gradients (Conv2DBackpropFilter / Conv2DBackpropInput) match cpu', () => {
  for (const c of convCases) {
    it(c.name, async () => {
      await parity(() => {
        const x = rand(c.x, 1);
        const f = rand(c.filter, 2);
        return gradsOf((a, b) => tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, c.strides, c.pad), [x, f]);
      });
    });
  }

  for (const d of [2, 6]) {
    it(`3x3 s1 same, dilation ${d} (kernels called with a dilations attribute)`, async () => {
      const xShape: Shape4 = [2, 17, 15, 4];
      const fShape: Shape4 = [3, 3, 4, 5];
      const xv = random(sizeOf(xShape), 3);
      const fv = random(sizeOf(fShape), 4);
      const dilated = dilateFilter(fv, fShape, d);
      // cpu reference: undilated conv with a zero-inserted filter.
      const reference = await runOn('cpu', () => {
        const x = tf.tensor4d(xv, xShape);
        const fd = tf.tensor4d(dilated.values, dilated.shape);
        const [y, dx, dfd] = gradsOf((a, b) => tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 1, 'same'), [x, fd]);
        return [y, dx, tf.tensor4d(undilate(dfd.dataSync() as Float32Array, dilated.shape, d), fShape)];
      });
      const actual = await runOn('wasm', () => {
        const x = tf.tensor4d(xv, xShape);
        const f = tf.tensor4d(fv, fShape);
        const y = tf.conv2d(x, f, 1, 'same', 'NHWC', d);
        const dy = rand(y.shape, 99);
        const attrs = { strides: 1, pad: 'same', dataFormat: 'NHWC', dilations: d };
        const dx = tf.engine().runKernel('Conv2DBackpropInput', { dy, filter: f }, { ...attrs, inputShape: xShape });
        const df = tf.engine().runKernel('Conv2DBackpropFilter', { x, dy }, { ...attrs, filterShape: fShape });
        return [y, dx as tf.Tensor, df as tf.Tensor];
      });
      expectClose(reference, actual);
    });
  }
});

interface TransposeCase {
  name: string;
  x: Shape4;
  filter: Shape4;
  out: Shape4;
  strides: number;
  pad: 'same' | 'valid';
}

const transposeCases: TransposeCase[] = [
  {
    name: '2x2 s2 same (U-Net up-conv), batch 3',
    x: [3, 8, 8, 6],
    filter: [2, 2, 4, 6],
    out: [3, 16, 16, 4],
    strides: 2,
    pad: 'same',
  },
  {
    name: '2x2 s2 valid, odd output 17x15',
    x: [1, 8, 7, 6],
    filter: [2, 2, 4, 6],
    out: [1, 17, 15, 4],
    strides: 2,
    pad: 'valid',
  },
  { name: '3x3 s1 same', x: [2, 15, 17, 6], filter: [3, 3, 5, 6], out: [2, 15, 17, 5], strides: 1, pad: 'same' },
  { name: '3x3 s2 same, 15x17', x: [1, 8, 9, 6], filter: [3, 3, 5, 6], out: [1, 15, 17, 5], strides: 2, pad: 'same' },
  { name: '4x4 s2 same', x: [2, 8, 8, 6], filter: [4, 4, 5, 6], out: [2, 16, 16, 5], strides: 2, pad: 'same' },
  { name: '3x3 s1 valid', x: [1, 13, 15, 6], filter: [3, 3, 5, 6], out: [1, 15, 17, 5], strides: 1, pad: 'valid' },
];

describe('conv2dTranspose forward and gradients match cpu', () => {
  for (const c of transposeCases) {
    it(c.name, async () => {
      await parity(() => {
        const x = rand(c.x, 5);
        const f = rand(c.filter, 6);
        const g = (a: tf.Tensor, b: tf.Tensor): tf.Tensor =>
          tf.conv2dTranspose(a as tf.Tensor4D, b as tf.Tensor4D, c.out, c.strides, c.pad);
        return gradsOf(g, [x, f]);
      });
    });
  }
});

interface DepthwiseCase {
  name: string;
  x: Shape4;
  filter: Shape4;
  strides: number;
  pad: 'same' | 'valid';
}

const depthwiseCases: DepthwiseCase[] = [
  { name: '3x3 s1 same, multiplier 1, batch 3', x: [3, 15, 17, 6], filter: [3, 3, 6, 1], strides: 1, pad: 'same' },
  { name: '3x3 s1 same, multiplier 2', x: [1, 15, 17, 6], filter: [3, 3, 6, 2], strides: 1, pad: 'same' },
  { name: '3x3 s2 same, multiplier 1', x: [2, 15, 17, 6], filter: [3, 3, 6, 1], strides: 2, pad: 'same' },
  { name: '3x3 s2 same, multiplier 2', x: [1, 16, 16, 5], filter: [3, 3, 5, 2], strides: 2, pad: 'same' },
  { name: '3x3 s2 valid, 16x16 (cropped)', x: [1, 16, 16, 4], filter: [3, 3, 4, 1], strides: 2, pad: 'valid' },
  { name: '3x3 s2 same, multiplier 1, 13 channels', x: [2, 9, 10, 13], filter: [3, 3, 13, 1], strides: 2, pad: 'same' },
  { name: '5x5 s1 same, multiplier 1, 20 channels', x: [2, 7, 6, 20], filter: [5, 5, 20, 1], strides: 1, pad: 'same' },
  { name: '5x5 s1 valid, multiplier 3', x: [1, 12, 11, 3], filter: [5, 5, 3, 3], strides: 1, pad: 'valid' },
];

describe('depthwiseConv2d gradients (DepthwiseConv2dNativeBackprop*) match cpu', () => {
  for (const c of depthwiseCases) {
    it(c.name, async () => {
      await parity(() => {
        const x = rand(c.x, 7);
        const f = rand(c.filter, 8);
        const g = (a: tf.Tensor, b: tf.Tensor): tf.Tensor =>
          tf.depthwiseConv2d(a as tf.Tensor4D, b as tf.Tensor4D, c.strides, c.pad);
        return gradsOf(g, [x, f]);
      });
    });
  }

  for (const m of [1, 2]) {
    it(`3x3 s1 same, dilation 2, multiplier ${m} (kernels called with a dilations attribute)`, async () => {
      const d = 2;
      const xShape: Shape4 = [2, 15, 17, 13];
      const fShape: Shape4 = [3, 3, 13, m];
      const xv = random(sizeOf(xShape), 9);
      const fv = random(sizeOf(fShape), 10);
      const dilated = dilateFilter(fv, fShape, d);
      const reference = await runOn('cpu', () => {
        const x = tf.tensor4d(xv, xShape);
        const fd = tf.tensor4d(dilated.values, dilated.shape);
        const g = (a: tf.Tensor, b: tf.Tensor): tf.Tensor =>
          tf.depthwiseConv2d(a as tf.Tensor4D, b as tf.Tensor4D, 1, 'same');
        const [y, dx, dfd] = gradsOf(g, [x, fd]);
        return [y, dx, tf.tensor4d(undilate(dfd.dataSync() as Float32Array, dilated.shape, d), fShape)];
      });
      const actual = await runOn('wasm', () => {
        const x = tf.tensor4d(xv, xShape);
        const f = tf.tensor4d(fv, fShape);
        const y = tf.depthwiseConv2d(x, f, 1, 'same', 'NHWC', d);
        const dy = rand(y.shape, 99);
        const attrs = { strides: 1, pad: 'same', dilations: d };
        const dx = tf.engine().runKernel(
          'DepthwiseConv2dNativeBackpropInput',
          { dy, filter: f },
          {
            ...attrs,
            inputShape: xShape,
          },
        );
        const df = tf
          .engine()
          .runKernel('DepthwiseConv2dNativeBackpropFilter', { x, dy }, { ...attrs, filterShape: fShape });
        return [y, dx as tf.Tensor, df as tf.Tensor];
      });
      expectClose(reference, actual);
    });
  }

  for (const strides of [1, 2]) {
    it(`separableConv2d, stride ${strides}, multiplier 2`, async () => {
      await parity(() => {
        const x = rand([2, 15, 17, 4], 11);
        const dw = rand([3, 3, 4, 2], 12);
        const pw = rand([1, 1, 8, 6], 13);
        const g = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor): tf.Tensor =>
          tf.separableConv2d(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D, strides, 'same');
        return gradsOf(g, [x, dw, pw]);
      });
    });
  }
});

describe('pooling and resize gradients match cpu', () => {
  const poolCases: { name: string; filter: number; strides: number; pad: 'same' | 'valid' }[] = [
    { name: '2x2 s2 same', filter: 2, strides: 2, pad: 'same' },
    { name: '3x3 s2 same', filter: 3, strides: 2, pad: 'same' },
    { name: '3x3 s1 same', filter: 3, strides: 1, pad: 'same' },
    { name: '2x2 s2 valid', filter: 2, strides: 2, pad: 'valid' },
  ];
  // Inputs are uniform in [-1, 1), so some windows hold only negative values (the builtin wasm MaxPoolGrad sends
  // those gradients to the wrong pixel).
  for (const c of poolCases) {
    it(`maxPool ${c.name}`, async () => {
      await parity(() =>
        gradsOf((a) => tf.maxPool(a as tf.Tensor4D, c.filter, c.strides, c.pad), [rand([3, 15, 17, 5], 14)]),
      );
    });
    it(`maxPool ${c.name}, ties and -Infinity windows (first maximum wins)`, async () => {
      await parity(() => {
        // Values in {-1, -0, 0, 1}, and a column of -Infinity: many ties, and windows with no finite value.
        const ties = tf.round(tf.mul(rand([2, 9, 11, 6], 16), 1.4));
        const x = tf.concat([tf.fill([2, 9, 2, 6], -Infinity), ties], 2);
        // The gradient only: the pooled -Infinity values have no finite relative error.
        return gradsOf((a) => tf.maxPool(a as tf.Tensor4D, c.filter, c.strides, c.pad), [x]).slice(1);
      });
    });
    it(`avgPool ${c.name}`, async () => {
      await parity(() =>
        gradsOf((a) => tf.avgPool(a as tf.Tensor4D, c.filter, c.strides, c.pad), [rand([3, 15, 17, 5], 15)]),
      );
    });
  }

  const resizeCases: { name: string; from: Shape4; size: [number, number]; alignCorners: boolean }[] = [
    { name: 'up 7x9 -> 15x17', from: [2, 7, 9, 3], size: [15, 17], alignCorners: false },
    { name: 'up 7x9 -> 15x17, alignCorners', from: [2, 7, 9, 3], size: [15, 17], alignCorners: true },
    { name: 'up x4 8x8 -> 32x32', from: [1, 8, 8, 4], size: [32, 32], alignCorners: false },
    { name: 'up x2 8x8 -> 16x16, alignCorners', from: [2, 8, 8, 3], size: [16, 16], alignCorners: true },
    { name: 'down 16x15 -> 7x6, alignCorners', from: [1, 16, 15, 3], size: [7, 6], alignCorners: true },
  ];
  const resizers = {
    resizeBilinear: (t: tf.Tensor4D, size: [number, number], ac: boolean) => tf.image.resizeBilinear(t, size, ac),
    resizeNearestNeighbor: (t: tf.Tensor4D, size: [number, number], ac: boolean) =>
      tf.image.resizeNearestNeighbor(t, size, ac),
  };
  for (const [name, resize] of Object.entries(resizers)) {
    for (const c of resizeCases) {
      it(`${name} ${c.name}`, async () => {
        const op = (t: tf.Tensor): tf.Tensor => resize(t as tf.Tensor4D, c.size, c.alignCorners);
        // The tfjs cpu resize gradients are wrong for non-square images (ResizeBilinearGrad even swaps height and
        // width in its output shape), so the reference is J^T dy built from the cpu *forward* op: the resize of every
        // one-hot basis image, contracted with dy.
        const reference = await runOn('cpu', () => {
          const x = rand(c.from, 16);
          const y = op(x);
          const dy = rand(y.shape, 99);
          const [b, h, w, d] = c.from;
          const k = h * w * d;
          const jacobian = tf.reshape(op(tf.reshape(tf.eye(k), [k, h, w, d])), [k, -1]);
          const dx = tf.matMul(tf.reshape(dy, [b, -1]), jacobian, false, true);
          return [y, tf.reshape(dx, c.from)];
        });
        const actual = await runOn('wasm', () => gradsOf(op, [rand(c.from, 16)]));
        expectClose(reference, actual);
      });
    }
  }
});

describe('memory', () => {
  it('does not leak tensors, data ids or wasm heap across repeated gradient steps', async () => {
    expect(await tf.setBackend('wasm')).toBe(true);
    const x = rand([2, 33, 31, 8], 20);
    const f = rand([3, 3, 8, 16], 21);
    const dw = rand([3, 3, 16, 2], 22);
    const up = rand([2, 2, 8, 32], 23);
    const step = (): void => {
      tf.tidy(() => {
        const loss = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor, e: tf.Tensor): tf.Scalar => {
          let y = tf.relu(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 2, 'same'));
          y = tf.depthwiseConv2d(y, c as tf.Tensor4D, 1, 'same');
          y = tf.conv2dTranspose(y, e as tf.Tensor4D, [2, 34, 32, 8], 2, 'same');
          return tf.mean(tf.square(y));
        };
        const grads = tf.grads(loss)([x, f, dw, up]);
        grads.forEach((g) => g.dataSync());
      });
    };
    expectNoGrowth(step);
    tf.dispose([x, f, dw, up]);
  });
});
