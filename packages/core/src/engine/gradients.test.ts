import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-layers';
import { registerFastGradients } from './gradients.js';

function batchNormGrads(): number[][] {
  return tf.tidy(() => {
    const x = tf.randomNormal([2, 5, 3, 4], 0, 1, 'float32', 1);
    const mean = tf.randomNormal([4], 0, 1, 'float32', 2);
    const variance = tf.randomUniform([4], 0.5, 2, 'float32', 3);
    const scale = tf.randomNormal([4], 1, 0.3, 'float32', 4);
    const offset = tf.randomNormal([4], 0, 1, 'float32', 5);
    const w = tf.randomNormal([2, 5, 3, 4], 0, 1, 'float32', 6);
    const grads = tf.grads((a, m, v, s, o) => tf.sum(tf.mul(tf.batchNorm(a, m, v, o, s, 1e-3), w)))([
      x,
      mean,
      variance,
      scale,
      offset,
    ]);
    return grads.map((g) => Array.from(g.dataSync()));
  });
}

describe('registerFastGradients', () => {
  it('gives the same batch-norm gradients as tfjs-core', async () => {
    await tf.setBackend('cpu');
    const reference = batchNormGrads();
    registerFastGradients();
    const fast = batchNormGrads();
    expect(fast.map((g) => g.length)).toEqual([120, 4, 4, 4, 4]);
    for (let i = 0; i < reference.length; i++) {
      for (let j = 0; j < reference[i].length; j++) expect(fast[i][j]).toBeCloseTo(reference[i][j], 4);
    }
  });
});
