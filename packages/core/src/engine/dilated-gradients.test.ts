import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
// The tfjs-layers bundle registers tfjs-core's gradient functions (tf.grad needs them).
import '@tensorflow/tfjs-layers';
import { registerDilatedGradients } from './dilated-gradients.js';
import { registerWasmGradientKernels } from './wasm-gradients.js';
import { random } from './test-helpers.js';

type Shape4 = [number, number, number, number];
type Pad = 'same' | 'valid';

const sizeOf = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/** The filter with `rate - 1` zeros inserted between taps: a rate-1 conv with it equals the dilated conv. */
function zeroInserted(filter: tf.Tensor4D, [rh, rw]: [number, number]): tf.Tensor4D {
  const [kh, kw, a, b] = filter.shape;
  const src = filter.dataSync();
  const eh = (kh - 1) * rh + 1;
  const ew = (kw - 1) * rw + 1;
  const out = new Float32Array(eh * ew * a * b);
  for (let y = 0; y < kh; y++)
    for (let x = 0; x < kw; x++)
      out.set(src.subarray((y * kw + x) * a * b, (y * kw + x + 1) * a * b), (y * rh * ew + x * rw) * a * b);
  return tf.tensor4d(out, [eh, ew, a, b]);
}

/** Samples the taps of a zero-inserted filter's gradient back to the dilated filter's shape. */
function taps(grad: tf.Tensor4D, shape: Shape4, [rh, rw]: [number, number]): Float32Array {
  const [kh, kw, a, b] = shape;
  const ew = grad.shape[1];
  const src = grad.dataSync();
  const out = new Float32Array(sizeOf(shape));
  for (let y = 0; y < kh; y++)
    for (let x = 0; x < kw; x++)
      out.set(src.subarray((y * rh * ew + x * rw) * a * b, (y * rh * ew + x * rw + 1) * a * b), (y * kw + x) * a * b);
  return out;
}

interface Case {
  name: string;
  x: Shape4;
  filter: Shape4;
  rate: [number, number];
  pad: Pad;
  depthwise: boolean;
}

const CASES: Case[] = [
  { name: 'conv 3x3 rate 2 same', x: [2, 9, 11, 3], filter: [3, 3, 3, 4], rate: [2, 2], pad: 'same', depthwise: false },
  { name: 'conv 3x3 rate 6 same', x: [1, 8, 8, 2], filter: [3, 3, 2, 3], rate: [6, 6], pad: 'same', depthwise: false },
  {
    name: 'conv 3x2 rates 2x3 valid',
    x: [2, 12, 13, 2],
    filter: [3, 2, 2, 5],
    rate: [2, 3],
    pad: 'valid',
    depthwise: false,
  },
  {
    name: 'depthwise 3x3 rate 2 same',
    x: [2, 10, 9, 4],
    filter: [3, 3, 4, 1],
    rate: [2, 2],
    pad: 'same',
    depthwise: true,
  },
  {
    name: 'depthwise x2 rate 3 valid',
    x: [1, 13, 11, 3],
    filter: [3, 3, 3, 2],
    rate: [3, 3],
    pad: 'valid',
    depthwise: true,
  },
];

/** d(sum(conv(x, W) * weights)) / d(x, W) for the dilated conv and for the zero-inserted reference. */
function gradients(c: Case): { dx: Float32Array; dw: Float32Array; refDx: Float32Array; refDw: Float32Array } {
  return tf.tidy(() => {
    const x = tf.tensor4d(random(sizeOf(c.x), 1), c.x);
    const w = tf.tensor4d(random(sizeOf(c.filter), 2), c.filter);
    const conv = (xx: tf.Tensor4D, ww: tf.Tensor4D, rate: [number, number]) =>
      c.depthwise ? tf.depthwiseConv2d(xx, ww, 1, c.pad, 'NHWC', rate) : tf.conv2d(xx, ww, 1, c.pad, 'NHWC', rate);
    const outShape = conv(x, w, c.rate).shape;
    const weights = tf.tensor(random(sizeOf(outShape), 3), outShape);
    const loss = (xx: tf.Tensor4D, ww: tf.Tensor4D, rate: [number, number]) =>
      tf.sum(tf.mul(conv(xx, ww, rate), weights));
    const [dx, dw] = tf.grads((xx: tf.Tensor, ww: tf.Tensor) => loss(xx as tf.Tensor4D, ww as tf.Tensor4D, c.rate))([
      x,
      w,
    ]);
    const wz = zeroInserted(w, c.rate);
    const [refDx, refDwz] = tf.grads((xx: tf.Tensor, ww: tf.Tensor) =>
      loss(xx as tf.Tensor4D, ww as tf.Tensor4D, [1, 1]),
    )([x, wz]);
    return {
      dx: dx.dataSync() as Float32Array,
      dw: dw.dataSync() as Float32Array,
      refDx: refDx.dataSync() as Float32Array,
      refDw: taps(refDwz as tf.Tensor4D, c.filter, c.rate),
    };
  });
}

function expectClose(actual: Float32Array, expected: Float32Array): void {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  for (let i = 0; i < actual.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
  expect(worst).toBeLessThan(1e-3);
}

describe('registerDilatedGradients', () => {
  beforeAll(() => {
    registerWasmGradientKernels();
    registerDilatedGradients();
    registerDilatedGradients(); // idempotent
  });

  it('delegates rate 1 (here strided) to the tfjs gradient', async () => {
    await tf.setBackend('cpu');
    const g = tf.tidy(() => {
      const x = tf.tensor4d(random(2 * 5 * 5 * 2, 4), [2, 5, 5, 2]);
      const w = tf.tensor4d(random(3 * 3 * 2 * 3, 5), [3, 3, 2, 3]);
      return Array.from(
        tf
          .grad((ww: tf.Tensor) => tf.sum(tf.conv2d(x, ww as tf.Tensor4D, 2, 'same')))(w)
          .dataSync(),
      );
    });
    expect(g).toHaveLength(54);
    expect(g.some((v) => v !== 0)).toBe(true);
  });

  // cpu: the space-to-batch path; wasm: the dilated backprop kernels of wasm-gradients.ts.
  for (const backend of ['cpu', 'wasm'] as const) {
    it.each(CASES)(`on ${backend}: $name equals the zero-inserted-filter reference`, async (c) => {
      expect(await tf.setBackend(backend)).toBe(true);
      const before = tf.memory().numTensors;
      const { dx, dw, refDx, refDw } = gradients(c);
      expect(tf.memory().numTensors).toBe(before);
      expectClose(dx, refDx);
      expectClose(dw, refDw);
      expect(dw.some((v) => v !== 0)).toBe(true);
    });
  }

  it('matches finite differences of a dilated conv on wasm', async () => {
    expect(await tf.setBackend('wasm')).toBe(true);
    const xShape: Shape4 = [1, 7, 7, 2];
    const wShape: Shape4 = [3, 3, 2, 2];
    const xv = random(sizeOf(xShape), 7);
    const wv = random(sizeOf(wShape), 8);
    const f = (w: Float32Array) =>
      tf.tidy(() => {
        const y = tf.conv2d(tf.tensor4d(xv, xShape), tf.tensor4d(w, wShape), 1, 'same', 'NHWC', 2);
        return tf.sum(tf.square(y)).dataSync()[0];
      });
    const analytic = tf.tidy(
      () =>
        tf
          .grad((w: tf.Tensor) =>
            tf.sum(tf.square(tf.conv2d(tf.tensor4d(xv, xShape), w as tf.Tensor4D, 1, 'same', 'NHWC', 2))),
          )(tf.tensor4d(wv, wShape))
          .dataSync() as Float32Array,
    );
    const eps = 1e-2;
    for (const i of [0, 5, 17, 35]) {
      const plus = Float32Array.from(wv);
      const minus = Float32Array.from(wv);
      plus[i] += eps;
      minus[i] -= eps;
      const numeric = (f(plus) - f(minus)) / (2 * eps);
      expect(Math.abs(analytic[i] - numeric)).toBeLessThan(2e-2 * Math.max(1, Math.abs(numeric)));
    }
  });
});
