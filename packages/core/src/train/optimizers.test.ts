import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
// tfjs-core 4 registers no gradients by itself; tfjs-layers registers all of them on import.
import '@tensorflow/tfjs-layers';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';

import { UnknownNameError } from '../errors.js';
import { ADAM_UPDATE } from '../engine/gradients.js';
import { registerWasmKernels } from '../engine/wasm-kernels.js';
import {
  OPTIMIZER_NAMES,
  createOptimizer,
  getLearningRate,
  setLearningRate,
  setOptimizerWeights,
} from './optimizers.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

/** One step on `loss = sum(g * w)` (gradient exactly `g`) from `w0`; returns the new values of `w`. */
function step(optimizer: tf.Optimizer, w: tf.Variable, g: number[]): number[] {
  const gradient = tf.tensor1d(g);
  optimizer.minimize(() => tf.sum(tf.mul(gradient, w)) as tf.Scalar);
  gradient.dispose();
  return Array.from(w.dataSync());
}

describe('createOptimizer', () => {
  it('creates each optimizer with its learning rate', () => {
    expect(OPTIMIZER_NAMES).toEqual(['adam', 'sgd', 'rmsprop']);
    expect(createOptimizer('adam', 0.01).getClassName()).toBe('Adam');
    expect(createOptimizer('sgd', 0.01).getClassName()).toBe('Momentum');
    expect(createOptimizer('sgd', 0.01, { momentum: 0 }).getClassName()).toBe('SGD');
    expect(createOptimizer('rmsprop', 0.01).getClassName()).toBe('RMSProp');
    expect(createOptimizer('sgd', 0.01, { momentum: 0.5 }).getConfig()).toEqual({
      learningRate: 0.01,
      momentum: 0.5,
      useNesterov: false,
    });
    expect(getLearningRate(createOptimizer('adam', 0.25))).toBe(0.25);
  });

  it('fails for an unknown name, listing the valid names', () => {
    expect(() => createOptimizer('adamw', 0.1)).toThrow(UnknownNameError);
    expect(() => createOptimizer('adamw', 0.1)).toThrow(
      'Unknown optimizer "adamw". Did you mean "adam"? Valid choices: adam, sgd, rmsprop.',
    );
  });

  it('rejects bad values, quoting them', () => {
    expect(() => createOptimizer('sgd', 0)).toThrow(
      'Expected a finite number > 0 for the learning rate in createOptimizer but received 0 of type number.',
    );
    expect(() => createOptimizer('sgd', 0.1, { momentum: 1 })).toThrow(
      'Expected a number in [0, 1) for optimizer option momentum but received 1 of type number.',
    );
    expect(() => createOptimizer('adam', 0.1, { weightDecay: -1 })).toThrow(
      'Expected a number >= 0 for optimizer option weightDecay but received -1 of type number.',
    );
  });
});

describe('setLearningRate', () => {
  it('SGD without momentum moves a variable by exactly lr * grad, with the new rate', () => {
    const optimizer = createOptimizer('sgd', 0.1, { momentum: 0 });
    const w = tf.variable(tf.tensor1d([1, 2]));
    // lr 0.1, g = [1, -2] -> w = [1 - 0.1, 2 + 0.2]
    expect(step(optimizer, w, [1, -2])).toEqual([Math.fround(0.9), Math.fround(2.2)]);
    setLearningRate(optimizer, 0.5);
    expect(getLearningRate(optimizer)).toBe(0.5);
    // lr 0.5, g = [1, -2] -> w = [0.9 - 0.5, 2.2 + 1.0]
    const after = step(optimizer, w, [1, -2]);
    expect(after[0]).toBeCloseTo(0.4, 6);
    expect(after[1]).toBeCloseTo(3.2, 6);
  });

  it('Momentum uses the new rate (its cached scalar is replaced)', () => {
    const optimizer = createOptimizer('sgd', 0.1, { momentum: 0.9 });
    setLearningRate(optimizer, 0.5);
    const w = tf.variable(tf.tensor1d([0]));
    // first step: accumulation = g = 2 -> w = 0 - 0.5 * 2 = -1
    expect(step(optimizer, w, [2])).toEqual([-1]);
    // second step: accumulation = 0.9 * 2 + 2 = 3.8; lr 0.25 -> w = -1 - 0.25 * 3.8 = -1.95
    setLearningRate(optimizer, 0.25);
    expect(step(optimizer, w, [2])[0]).toBeCloseTo(-1.95, 6);
  });

  it('RMSProp uses the new rate', () => {
    const optimizer = createOptimizer('rmsprop', 0.1, { epsilon: 1e-7 });
    setLearningRate(optimizer, 0.5);
    const w = tf.variable(tf.tensor1d([0]));
    // mean square = (1 - 0.9) * 2^2 = 0.4; w = 0 - 0.5 * 2 / sqrt(0.4 + 1e-7) = -1.58113...
    expect(step(optimizer, w, [2])[0]).toBeCloseTo((-0.5 * 2) / Math.sqrt(0.4 + 1e-7), 5);
  });

  it('Adam uses the new rate', () => {
    const optimizer = createOptimizer('adam', 0.1, { epsilon: 1e-7 });
    setLearningRate(optimizer, 0.5);
    const w = tf.variable(tf.tensor1d([0]));
    // first step: m_hat = g, v_hat = g^2 -> w = 0 - 0.5 * 2 / (2 + 1e-7) = -0.5; with lr 0.1 it would be -0.1
    expect(step(optimizer, w, [2])[0]).toBeCloseTo(-0.5, 5); // float32 bias correction: error ~3e-6
  });

  it('does not leak tensors when the rate changes at every step', () => {
    const optimizer = createOptimizer('sgd', 0.1);
    const w = tf.variable(tf.tensor1d([0]));
    step(optimizer, w, [1]);
    const before = tf.memory().numTensors;
    for (let i = 0; i < 5; i++) {
      setLearningRate(optimizer, 0.1 / (i + 1));
      step(optimizer, w, [1]);
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  it('rejects a negative rate', () => {
    expect(() => setLearningRate(createOptimizer('adam', 0.1), -0.1)).toThrow(
      'Expected a finite number >= 0 for the learning rate in setLearningRate but received -0.1 of type number.',
    );
  });
});

describe('weightDecay', () => {
  it('scales variables by 1 - lr * weightDecay before the update', () => {
    const optimizer = createOptimizer('sgd', 0.1, { momentum: 0, weightDecay: 0.5 });
    const w = tf.variable(tf.tensor1d([2]));
    // w = 2 * (1 - 0.1 * 0.5) - 0.1 * 3 = 1.9 - 0.3 = 1.6
    expect(step(optimizer, w, [3])[0]).toBeCloseTo(1.6, 6);
    // follows the learning rate: lr 0.2 -> w = 1.6 * (1 - 0.2 * 0.5) - 0.2 * 3 = 1.44 - 0.6 = 0.84
    setLearningRate(optimizer, 0.2);
    expect(step(optimizer, w, [3])[0]).toBeCloseTo(0.84, 6);
  });
});

describe('setOptimizerWeights', () => {
  it.each(OPTIMIZER_NAMES)('%s: restored state continues to the bits of an uninterrupted run', async (name) => {
    const gradients = [0.3, -1.7, 0.02, 2.5, -0.4, 0.9, 1.1, -0.05];
    for (let stopAt = 1; stopAt <= 6; stopAt++) {
      const straight = createOptimizer(name, 0.1);
      const w = tf.variable(tf.tensor1d([0.5, -0.25]));
      const g = (t: number) => [gradients[t], gradients[t + 1]];
      for (let t = 0; t < stopAt; t++) step(straight, w, g(t));
      const saved = await straight.getWeights();
      const resumed = createOptimizer(name, 0.1);
      // setWeights takes ownership of the tensors it is given: pass copies.
      await setOptimizerWeights(
        resumed,
        saved.map((s) => ({ name: s.name, tensor: s.tensor.clone() })),
      );
      const wResumed = tf.variable(w.clone());
      for (let t = stopAt; t < stopAt + 2; t++) {
        expect(step(resumed, wResumed, g(t))).toEqual(step(straight, w, g(t)));
      }
      if (name === 'adam') {
        const acc = (o: tf.Optimizer) =>
          [(o as unknown as { accBeta2: tf.Variable }).accBeta2.dataSync()[0]] as number[];
        expect(acc(resumed)).toEqual(acc(straight));
      }
      tf.dispose([w, wResumed]);
      straight.dispose();
      resumed.dispose();
    }
  });
});

describe('Adam in one pass per variable', () => {
  /** tfjs's own AdamOptimizer and ours, the same steps (a rate change, a missing gradient); weights and moments. */
  async function run(fused: boolean, tag: string): Promise<Float32Array[]> {
    const optimizer = fused ? createOptimizer('adam', 3e-3, { epsilon: 1e-7 }) : tf.train.adam(3e-3, 0.9, 0.999, 1e-7);
    const shapes = [[3, 3, 4, 8], [8], [1], [257]];
    let seed = 7;
    const random = (n: number) =>
      Float32Array.from({ length: n }, () => ((seed = (seed * 48271) % 2147483647) / 2147483647) * 2 - 1);
    const variables = shapes.map((shape, i) =>
      tf.tidy(() =>
        tf.variable(tf.tensor(random(tf.util.sizeFromShape(shape)), shape), true, `adam-${tag}-${fused}-${i}`),
      ),
    );
    for (let t = 0; t < 6; t++) {
      if (t === 3) setLearningRate(optimizer, 1e-3);
      const gradients: tf.NamedTensorMap = {};
      variables.forEach((v, i) => {
        // tfjs skips a variable whose gradient is null: its moments stay as they are.
        const values = random(v.size).map((x) => x * 10 ** (i - 2));
        gradients[v.name] = t === 4 && i === 1 ? (null as unknown as tf.Tensor) : tf.tensor(values, v.shape);
      });
      optimizer.applyGradients(gradients);
      tf.dispose(Object.values(gradients).filter((g) => g !== null));
    }
    const [iterations, ...saved] = await optimizer.getWeights();
    iterations.tensor.dispose();
    const moments = saved.map((w) => w.tensor.dataSync() as Float32Array);
    const out = [...variables.map((v) => v.dataSync() as Float32Array), ...moments].map((a) => a.slice());
    optimizer.dispose();
    tf.dispose(variables);
    return out;
  }

  it.each(['cpu', 'wasm', 'wasm with its SIMD kernel'])('gives the bits of tfjs AdamOptimizer on %s', async (name) => {
    const backend = name.split(' ')[0];
    // The last case registers Tessera's wasm kernels: the pass is then one SIMD kernel per variable.
    if (name !== backend) registerWasmKernels();
    await tf.setBackend(backend);
    const before = tf.memory().numTensors;
    const profile = await tf.profile(async () => void (await run(true, name)));
    expect(profile.kernels.some((k) => k.name === ADAM_UPDATE)).toBe(name !== backend);
    const ours = await run(true, backend);
    expect(tf.memory().numTensors).toBe(before);
    const theirs = await run(false, backend);
    expect(ours).toHaveLength(4 + 8);
    ours.forEach((values, i) =>
      expect(Buffer.from(values.buffer).equals(Buffer.from(theirs[i].buffer)), `array ${i}`).toBe(true),
    );
    await tf.setBackend('cpu');
  });
});
