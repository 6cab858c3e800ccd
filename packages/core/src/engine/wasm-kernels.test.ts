import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
// The tfjs-layers bundle registers tfjs-core's gradient functions (tf.grad needs them).
import '@tensorflow/tfjs-layers';
import { BATCH_NORM_GRAD, CLIP_BY_VALUE_GRAD, REDUCE_GRAD, RELU_GRAD, registerFastGradients } from './gradients.js';
import { registerWasmKernels } from './wasm-kernels.js';
import { expectNoGrowth, expectParity, random } from './test-helpers.js';

const TOLERANCE = 1e-5;

/** A tensor of deterministic random values in `[lo, hi)`. */
function rand(shape: number[], seed: number, lo = -1, hi = 1): tf.Tensor {
  const values = random(
    shape.reduce((a, b) => a * b, 1),
    seed,
  ).map((v) => lo + ((v + 1) / 2) * (hi - lo));
  return tf.tensor(values, shape);
}

/** Compares `fn` on wasm (with Tessera's kernels and gradients) against cpu. */
const parity = (fn: () => tf.Tensor[]) => expectParity(fn, TOLERANCE);

/** `f(...inputs)` and the gradients of `sum(f(...inputs) * r)` (`r` random, so the upstream gradient varies). */
function gradsOf(f: (...inputs: tf.Tensor[]) => tf.Tensor, inputs: tf.Tensor[], seed = 99): tf.Tensor[] {
  const y = f(...inputs);
  const r = rand(y.shape, seed);
  return [y, ...tf.grads((...xs: tf.Tensor[]) => tf.sum(tf.mul(f(...xs), r)))(inputs)];
}

beforeAll(async () => {
  registerWasmKernels();
  registerFastGradients();
  expect(await tf.setBackend('wasm')).toBe(true);
});

describe('registerWasmKernels', () => {
  it('registers the kernels once, keeping the builtin setup functions', () => {
    const names = ['Conv2D', 'FusedConv2D', 'Identity', 'Cast', 'Sum', 'Mean', 'FusedBatchNorm', 'SplitV'];
    names.push(BATCH_NORM_GRAD, REDUCE_GRAD, CLIP_BY_VALUE_GRAD);
    const configs = names.map((name) => tf.getKernel(name, 'wasm'));
    expect(configs.every((c) => typeof c?.kernelFunc === 'function')).toBe(true);
    expect(typeof tf.getKernel('Sum', 'wasm')?.setupFunc).toBe('function');
    expect(registerWasmKernels()).toEqual([]);
    expect(names.map((name) => tf.getKernel(name, 'wasm')?.kernelFunc)).toEqual(configs.map((c) => c?.kernelFunc));
  });

  it('uses the one-pass gradient kernels on wasm', async () => {
    expect(await tf.setBackend('wasm')).toBe(true);
    const x = rand([2, 4, 4, 3], 1);
    const info = await tf.profile(() =>
      tf.grad((a: tf.Tensor) => {
        const { mean, variance } = tf.moments(a, [0, 1, 2]);
        return tf.sum(tf.clipByValue(tf.batchNorm(a, mean, variance, tf.zerosLike(mean), tf.onesLike(mean)), 0, 1));
      })(x),
    );
    const names = info.kernels.map((k) => k.name);
    expect(names).toEqual(expect.arrayContaining([BATCH_NORM_GRAD, REDUCE_GRAD, CLIP_BY_VALUE_GRAD]));
    expect(names).not.toContain('LogicalAnd');
    tf.dispose([x, info.result as tf.Tensor]);
  });
});

describe('gradient kernel errors', () => {
  it('name the kernel and what was expected', async () => {
    expect(await tf.setBackend('wasm')).toBe(true);
    const x = rand([2, 3, 4], 60);
    const c = rand([4], 61, 0.5, 1);
    const dy = rand([2, 3, 5], 62);
    expect(() =>
      tf.engine().runKernel(BATCH_NORM_GRAD, { x, mean: c, variance: c, scale: c, dy }, { varianceEpsilon: 1e-3 }),
    ).toThrow(/TesseraFusedBatchNormGrad: dy and x shapes differ/);
    expect(() => tf.engine().runKernel(REDUCE_GRAD, { dy: c }, { shape: [2, 3, 5], axes: [0, 1], divisor: 1 })).toThrow(
      /TesseraReduceGrad: dy \[4\] is not \[2, 3, 5\] reduced over axes \[0, 1\]/,
    );
    expect(() => tf.engine().runKernel(CLIP_BY_VALUE_GRAD, { dy, x }, { clipValueMin: 0, clipValueMax: 1 })).toThrow(
      /TesseraClipByValueGrad: expected float32 dy and x of one shape/,
    );
    tf.dispose([x, c, dy]);
  });
});

describe('Identity and Cast share data without changing values', () => {
  it('a clone outlives its source', async () => {
    expect(await tf.setBackend('wasm')).toBe(true);
    const x = rand([3, 5], 2);
    const expected = x.dataSync().slice();
    const clone = tf.clone(x);
    const cast = tf.cast(x, 'float32');
    x.dispose();
    expect(clone.dataSync()).toEqual(expected);
    expect(cast.dataSync()).toEqual(expected);
    tf.dispose([clone, cast]);
  });

  it('casts to another dtype with the builtin kernel', async () => {
    await parity(() => [tf.cast(tf.cast(tf.mul(rand([4, 7], 3), 10), 'int32'), 'float32')]);
  });
});

describe('Sum and Mean match cpu', () => {
  const cases: { shape: number[]; axis: number | number[]; keepDims: boolean }[] = [
    { shape: [2, 5, 7, 6], axis: [0, 1, 2], keepDims: false },
    { shape: [2, 5, 7, 6], axis: [2, 0, 1], keepDims: true },
    { shape: [3, 9, 11, 5], axis: [0, 1], keepDims: false },
    { shape: [7, 3], axis: 0, keepDims: false },
    { shape: [5, 3, 4], axis: [1, 2], keepDims: false }, // trailing axes: builtin
    { shape: [5, 3, 4], axis: -1, keepDims: true }, // builtin
    { shape: [5, 3, 4], axis: [0, 2], keepDims: false }, // not leading: builtin
    { shape: [5, 3, 4], axis: [0, 1, 2], keepDims: false }, // all axes: builtin
    { shape: [5, 3, 4], axis: [0, 1, 2], keepDims: true },
    { shape: [6], axis: 0, keepDims: false },
  ];
  for (const { shape, axis, keepDims } of cases) {
    it(`[${shape}] over ${JSON.stringify(axis)}${keepDims ? ', keepDims' : ''}, with gradients`, async () => {
      const x = (): tf.Tensor => rand(shape, 4);
      await parity(() => gradsOf((a) => tf.sum(a, axis, keepDims), [x()]));
      await parity(() => gradsOf((a) => tf.mean(a, axis, keepDims), [x()]));
    });
  }

  it('int32 sums use the builtin kernel', async () => {
    await parity(() => [tf.cast(tf.sum(tf.cast(tf.mul(rand([4, 6, 3], 5), 50), 'int32'), [0, 1]), 'float32')]);
  });
});

describe('batch normalisation forward and gradients match cpu', () => {
  it('given statistics, no scale or offset (forward only)', async () => {
    await parity(() => [tf.batchNorm(rand([2, 5, 3, 4], 10), rand([4], 11, -0.5, 0.5), rand([4], 12, 0.2, 2))]);
  });
  it('given statistics, offset only (forward only)', async () => {
    await parity(() => [tf.batchNorm(rand([3, 4, 6], 15), rand([6], 16), rand([6], 17, 0.2, 2), rand([6], 18))]);
  });

  // tfjs-core takes gradients of batchNorm only with both a scale and an offset (its tape and its gradient's saved
  // inputs do not allow a missing one).
  const cases: { name: string; x: number[]; param: number[] }[] = [
    { name: 'NHWC, [C] parameters', x: [2, 7, 5, 6], param: [6] },
    { name: 'NHWC, [1, 1, 1, C] parameters', x: [3, 4, 5, 8], param: [1, 1, 1, 8] },
    { name: 'rank 2', x: [9, 5], param: [5] },
  ];
  for (const c of cases) {
    it(`given statistics, with gradients: ${c.name}`, async () => {
      await parity(() => {
        const inputs = [rand(c.x, 10), rand(c.param, 11, -0.5, 0.5), rand(c.param, 12, 0.2, 2)];
        inputs.push(rand(c.param, 13, 0.5, 1.5), rand(c.param, 14));
        return gradsOf((x, m, v, s, o) => tf.batchNorm(x, m, v, o, s, 1e-3), inputs);
      });
    });
  }

  it('training mode (moments of the batch), then ReLU and ReLU6, as tfjs-layers runs it', async () => {
    await parity(() =>
      gradsOf(
        (x, gamma, beta) => {
          const { mean, variance } = tf.moments(x, [0, 1, 2]);
          const y = tf.batchNorm(x, mean, variance, beta, gamma, 1e-3);
          return tf.add(tf.clipByValue(tf.relu(y), 0, 1), tf.relu(y));
        },
        [rand([2, 9, 7, 5], 20, -3, 4), rand([5], 21, 0.5, 1.5), rand([5], 22)],
      ),
    );
  });
});

describe('ClipByValue gradient matches cpu', () => {
  it('passes the gradient on [min, max] inclusive, zero elsewhere', async () => {
    await parity(() => {
      const x = tf.tensor([-2, 0, 0.5, 1, 3, -0.25, 1.0000001, 0.9999999], [2, 4]);
      return gradsOf((a) => tf.clipByValue(a, 0, 1), [x]);
    });
    // The SIMD loop's scalar tail (11 = 2 x 4 + 3 values).
    await parity(() => gradsOf((a) => tf.clipByValue(a, 0, 1), [tf.tensor([1, 0, 2, -1, 0.5, 1, 3, 0, 1.5, 1, -0.5])]));
    await parity(() => gradsOf((a) => tf.clipByValue(a, -0.3, 0.4), [rand([3, 8, 9, 4], 30)]));
  });
});

describe('Relu gradient matches cpu', () => {
  it('dy * step(x): 0 at 0 and below, NaN for NaN, in one kernel', async () => {
    await parity(() =>
      gradsOf((a) => tf.relu(a), [tf.tensor([-2, 0, 0.5, 1e-30, -1e-30, 3, -0.25, 7, 2, 0, -1], [11])]),
    );
    await parity(() => gradsOf((a) => tf.relu(a), [rand([3, 8, 9, 4], 31)]));
    await tf.setBackend('wasm');
    const info = await tf.profile(() => tf.grad((a: tf.Tensor) => tf.sum(tf.relu(a)))(tf.tensor([NaN, 1, -1, 0, 2])));
    expect(Array.from((info.result as tf.Tensor).dataSync())).toEqual([NaN, 1, 0, 0, 1]);
    expect(info.kernels.map((k) => k.name)).toContain(RELU_GRAD);
    expect(info.kernels.map((k) => k.name)).not.toContain('Step');
    (info.result as tf.Tensor).dispose();
  });
});

describe('SplitV (concat gradient) matches cpu', () => {
  const cases: { shape: number[]; splits: number | number[]; axis: number }[] = [
    { shape: [2, 6, 5, 88], splits: [64, 24], axis: -1 },
    { shape: [2, 3, 4, 9], splits: [2, -1, 3], axis: 3 },
    { shape: [2, 6, 5, 4], splits: 3, axis: 1 },
    { shape: [4, 5, 3], splits: [1, 3], axis: 0 },
  ];
  for (const { shape, splits, axis } of cases) {
    it(`[${shape}] into ${JSON.stringify(splits)} along ${axis}`, async () => {
      await parity(() => tf.split(rand(shape, 40), splits, axis));
    });
  }

  it('the gradient of concat', async () => {
    await parity(() => gradsOf((a, b) => tf.concat([a, b], -1), [rand([2, 5, 4, 64], 41), rand([2, 5, 4, 24], 42)]));
  });
});

describe('memory', () => {
  it('does not leak tensors, data ids or wasm heap across repeated steps', async () => {
    expect(await tf.setBackend('wasm')).toBe(true);
    const x = rand([2, 17, 15, 12], 50);
    const gamma = rand([12], 51, 0.5, 1.5);
    const beta = rand([12], 52);
    const step = (): void => {
      tf.tidy(() => {
        const grads = tf.grads((a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => {
          const { mean, variance } = tf.moments(a, [0, 1, 2]);
          const y = tf.clipByValue(tf.batchNorm(a, mean, variance, b, g, 1e-3), 0, 6);
          const [p, q] = tf.split(y, [8, 4], -1);
          return tf.add(tf.mean(tf.square(p)), tf.sum(q));
        })([x, gamma, beta]);
        grads.forEach((t) => t.dataSync());
      });
    };
    expectNoGrowth(step);
    tf.dispose([x, gamma, beta]);
  });
});
