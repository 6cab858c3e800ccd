import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-wasm';
import * as tfl from '@tensorflow/tfjs-layers';
import { withoutInputGradient } from './input-gradient.js';
import { randomTensor, useTesseraWasm } from './test-helpers.js';

const tensor = randomTensor;

/** A two-layer network whose first convolution (3x3, stride `stride`, linear) runs as tfjs's fused conv. */
function network(stride: number): tfl.LayersModel {
  const input = tfl.input({ shape: [16, 16, 3] });
  let x = tfl.layers
    .conv2d({ filters: 8, kernelSize: 3, strides: stride, padding: 'same', name: 'first' })
    .apply(input);
  x = tfl.layers.activation({ activation: 'relu' }).apply(x);
  x = tfl.layers.conv2d({ filters: 4, kernelSize: 3, padding: 'same', name: 'second' }).apply(x);
  return tfl.model({ inputs: input, outputs: x as tfl.SymbolicTensor });
}

/** Gradients of a loss with respect to the weights and to the input, as flat arrays by name. */
function gradients(model: tfl.LayersModel, x: tf.Tensor, scoped: boolean): Record<string, number[]> {
  const weights = model.trainableWeights.map((w) => w.read());
  const f = (...inputs: tf.Tensor[]) => tf.sum(tf.square(model.apply(inputs[0]) as tf.Tensor)) as tf.Scalar;
  const run = () => tf.grads(f)([x, ...weights]);
  const grads = scoped ? withoutInputGradient(x, run) : run();
  const out: Record<string, number[]> = { input: Array.from(grads[0].dataSync()) };
  model.trainableWeights.forEach((w, i) => (out[w.name] = Array.from(grads[i + 1].dataSync())));
  tf.dispose(grads);
  return out;
}

beforeAll(useTesseraWasm);

describe('withoutInputGradient', () => {
  for (const stride of [1, 2]) {
    it(`skips the first convolution's input gradient (stride ${stride}); the weights' gradients keep every bit`, () => {
      const model = network(stride);
      const x = tensor([2, 16, 16, 3], 7);
      const full = gradients(model, x, false);
      const scoped = gradients(model, x, true);
      expect(full.input.some((v) => v !== 0)).toBe(true);
      // Not computed inside the scope: zeros, which the trainer never reads.
      expect(scoped.input.every((v) => v === 0)).toBe(true);
      for (const name of Object.keys(full).filter((k) => k !== 'input')) expect(scoped[name], name).toEqual(full[name]);
      // Outside the scope everything is computed again.
      expect(gradients(model, x, false).input).toEqual(full.input);
      x.dispose();
    });
  }

  it('computes it when the filter also convolves another tensor (shared weights)', () => {
    const w = tensor([3, 3, 3, 3], 8);
    const x = tensor([1, 8, 8, 3], 9);
    const f = (a: tf.Tensor, b: tf.Tensor) => {
      const conv = (t: tf.Tensor) =>
        tf.fused.conv2d({ x: t as tf.Tensor4D, filter: b as tf.Tensor4D, strides: 1, pad: 'same' });
      return tf.sum(tf.square(conv(conv(a))));
    };
    const full = tf.grads(f)([x, w]);
    const scoped = withoutInputGradient(x, () => tf.grads(f)([x, w]));
    expect(Array.from(scoped[0].dataSync())).toEqual(Array.from(full[0].dataSync()));
    expect(Array.from(scoped[0].dataSync()).some((v) => v !== 0)).toBe(true);
    tf.dispose([...full, ...scoped, w, x]);
  });

  it('computes it when the filter also runs a transposed convolution back to the input shape (tied weights)', () => {
    const w = tensor([3, 3, 3, 5], 10);
    const x = tensor([1, 8, 8, 3], 11);
    const f = (a: tf.Tensor, b: tf.Tensor) => {
      const code = tf.fused.conv2d({ x: a as tf.Tensor4D, filter: b as tf.Tensor4D, strides: 1, pad: 'same' });
      return tf.sum(tf.square(tf.conv2dTranspose(code, b as tf.Tensor4D, [1, 8, 8, 3], 1, 'same')));
    };
    const full = tf.grads(f)([x, w]);
    const scoped = withoutInputGradient(x, () => tf.grads(f)([x, w]));
    expect(Array.from(scoped[0].dataSync())).toEqual(Array.from(full[0].dataSync()));
    expect(Array.from(scoped[1].dataSync())).toEqual(Array.from(full[1].dataSync()));
    tf.dispose([...full, ...scoped, w, x]);
  });
});
