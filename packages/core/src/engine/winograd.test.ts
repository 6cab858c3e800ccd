import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
// The tfjs-layers bundle registers tfjs-core's gradient functions (tf.grad needs them).
import '@tensorflow/tfjs-layers';
import { registerWasmGradientKernels } from './wasm-gradients.js';
import { registerWasmKernels } from './wasm-kernels.js';
import { expectNoGrowth, random, relativeError, runOn, type Result } from './test-helpers.js';
import { winogradLimits } from './winograd.js';

type Pad = 'same' | 'valid' | [[number, number], [number, number], [number, number], [number, number]];

/** Winograd F(4x4, 3x3) rounds differently from a direct sum: relative errors of about 1e-5 of the output's scale. */
const TOLERANCE = 1e-4;

function rand(shape: number[], seed: number): tf.Tensor {
  return tf.tensor(
    random(
      shape.reduce((a, b) => a * b, 1),
      seed,
    ),
    shape,
  );
}

/** `conv2d` (fused with bias and ReLU when asked) and the gradients of `sum(y * r)` for x and the filter. */
function convAndGrads(xShape: number[], co: number, pad: Pad, fused: boolean): tf.Tensor[] {
  const x = rand(xShape, 1);
  const w = rand([3, 3, xShape[3], co], 2);
  const bias = rand([co], 3);
  const f = (a: tf.Tensor, b: tf.Tensor) =>
    fused
      ? tf.fused.conv2d({ x: a as tf.Tensor4D, filter: b as tf.Tensor4D, strides: 1, pad, bias, activation: 'relu' })
      : tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 1, pad);
  const y = f(x, w);
  const r = rand(y.shape, 4);
  return [y, ...tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(f(a, b), r)))([x, w])];
}

/** Runs `fn` on wasm with Winograd on (the default) or off (`TESSERA_WINOGRAD=0`: the builtin kernels). */
async function onWasm(fn: () => tf.Tensor[], winograd: boolean): Promise<Result> {
  process.env.TESSERA_WINOGRAD = winograd ? '1' : '0';
  try {
    return await runOn('wasm', fn);
  } finally {
    delete process.env.TESSERA_WINOGRAD;
  }
}

const same = (a: Result, b: Result) =>
  a.values.every((v, i) => Buffer.from(v.buffer).equals(Buffer.from(b.values[i].buffer)));

beforeAll(() => {
  registerWasmGradientKernels();
  registerWasmKernels();
});

afterEach(() => {
  winogradLimits.chunkBytes = 48 << 20;
});

describe('Winograd F(4x4, 3x3) convolutions on wasm', () => {
  // The outputs that Winograd computes (0 the forward pass, 1 the input gradient, 2 the filter gradient); the others
  // run the builtin kernels.
  const cases: [string, number[], number, Pad, boolean, number[]][] = [
    ['same padding, 64 -> 64 channels', [1, 32, 36, 64], 64, 'same', false, [0, 1, 2]],
    ['valid padding, sizes not multiples of 4', [1, 34, 38, 64], 64, 'valid', false, [0, 1, 2]],
    ['bias and ReLU fused, 16 -> 32 channels', [1, 41, 38, 16], 32, 'valid', true, [0, 1, 2]],
    [
      'explicit uneven padding',
      [3, 17, 26, 24],
      32,
      [
        [0, 0],
        [2, 0],
        [0, 1],
        [0, 0],
      ],
      false,
      [0, 1, 2],
    ],
    ['16 -> 16 channels: the filter gradient is left to the builtin', [2, 20, 24, 16], 16, 'same', false, [0, 1]],
  ];
  it.each(cases)(
    '%s: forward, input and filter gradients match the cpu backend',
    async (_, shape, co, pad, fused, ran) => {
      const fn = () => convAndGrads(shape, co, pad, fused);
      const reference = await runOn('cpu', fn);
      const winograd = await onWasm(fn, true);
      const builtin = await onWasm(fn, false);
      expect(winograd.shapes).toEqual(reference.shapes);
      reference.values.forEach((values, i) => {
        expect(relativeError(values, winograd.values[i]), `output ${i}`).toBeLessThan(TOLERANCE);
      });
      // Where Winograd ran, its sums are rounded differently from the builtin kernels'; elsewhere they are the same.
      winograd.values.forEach((values, i) => {
        const equal = Buffer.from(values.buffer).equals(Buffer.from(builtin.values[i].buffer));
        expect(equal, `output ${i}`).toBe(!ran.includes(i));
      });
    },
  );

  it('gives the same bits in chunks of tile rows, run after run, and frees what it allocates', async () => {
    const fn = () => convAndGrads([2, 24, 28, 64], 64, 'same', true);
    const whole = await onWasm(fn, true);
    winogradLimits.chunkBytes = 36 * 4 * 7 * 64 * 3; // 3 of the 12 tile rows per chunk
    const chunked = await onWasm(fn, true);
    // The filter gradient sums the chunks' products: the same values within rounding; the rest the same bits.
    close(whole, chunked);
    expect(
      same({ shapes: [], values: whole.values.slice(0, 2) }, { shapes: [], values: chunked.values.slice(0, 2) }),
    ).toBe(true);
    expect(same(await onWasm(fn, true), chunked)).toBe(true);
    expectNoGrowth(() => tf.tidy(() => void fn()));
  });

  it('leaves to the builtin kernels what it does not cover: strides, dilations, few channels, other activations', async () => {
    const x = rand([1, 32, 32, 16], 5);
    const cases: (() => tf.Tensor)[] = [
      () => tf.conv2d(x as tf.Tensor4D, rand([3, 3, 16, 32], 6) as tf.Tensor4D, 2, 'same'),
      () => tf.conv2d(x as tf.Tensor4D, rand([3, 3, 16, 32], 6) as tf.Tensor4D, 1, 'same', 'NHWC', 2),
      () =>
        tf.conv2d(
          tf.slice(x, [0, 0, 0, 0], [1, 32, 32, 8]) as tf.Tensor4D,
          rand([3, 3, 8, 8], 6) as tf.Tensor4D,
          1,
          'same',
        ),
      () => tf.conv2d(x as tf.Tensor4D, rand([5, 5, 16, 32], 6) as tf.Tensor4D, 1, 'same'),
      () =>
        tf.conv2d(
          tf.slice(x, [0, 0, 0, 0], [1, 32, 32, 6]) as tf.Tensor4D,
          rand([3, 3, 6, 32], 6) as tf.Tensor4D,
          1,
          'same',
        ),
      () =>
        tf.conv2d(
          tf.slice(x, [0, 0, 0, 0], [1, 8, 8, 16]) as tf.Tensor4D,
          rand([3, 3, 16, 32], 6) as tf.Tensor4D,
          1,
          'same',
        ),
      () =>
        tf.fused.conv2d({
          x: x as tf.Tensor4D,
          filter: rand([3, 3, 16, 32], 6) as tf.Tensor4D,
          activation: 'elu',
          strides: 1,
          pad: 'same',
        }),
    ];
    for (const [i, make] of cases.entries()) {
      const fn = () => [make()];
      expect(same(await onWasm(fn, true), await onWasm(fn, false)), `case ${i}`).toBe(true);
    }
  });
});

function close(expected: Result, actual: Result): void {
  expect(actual.shapes).toEqual(expected.shapes);
  expected.values.forEach((values, i) => {
    expect(relativeError(values, actual.values[i]), `output ${i}`).toBeLessThan(TOLERANCE);
  });
}
