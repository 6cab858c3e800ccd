import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import * as tfl from '@tensorflow/tfjs-layers';
import { setupEngine } from '../engine/engine.js';
import { BATCH_NORM_TRAIN, BATCH_NORM_TRAIN_GRAD } from '../engine/gradients.js';
import { expectNoGrowth, random, relativeError } from '../engine/test-helpers.js';
import { batchNormalization } from './batch-norm.js';

interface Outcome {
  y: Float32Array;
  moving: Float32Array[];
  grads: Float32Array[];
}

/**
 * One training-mode call of a batch-norm layer made by `make` on `x [shape]` with set weights, and the gradients of
 * `sum(y * w)` with respect to `x`, gamma and beta.
 */
function trainingStep(make: () => tfl.layers.Layer, shape: number[]): Outcome {
  const c = shape[shape.length - 1];
  const size = shape.reduce((a, b) => a * b, 1);
  const layer = make();
  layer.build(shape);
  tf.tidy(() =>
    layer.setWeights([
      tf.add(tf.tensor1d(random(c, 1)), 1.5),
      tf.tensor1d(random(c, 2)),
      tf.tensor1d(random(c, 3)),
      tf.add(tf.tensor1d(random(c, 4)), 2),
    ]),
  );
  // Channels with a large mean and a small spread, as after a ReLU: the cancellation-prone case.
  const x = tf.variable(tf.add(tf.tensor(random(size, 5), shape), tf.mul(tf.tensor1d(random(c, 6)), 20)));
  const w = tf.tensor(random(size, 7), shape);
  let y: tf.Tensor | undefined;
  const { value, grads } = tf.variableGrads(() => {
    y = tf.keep(layer.apply(x, { training: true }) as tf.Tensor);
    return tf.sum(tf.mul(y, w));
  }, [x, ...layer.trainableWeights.map((v) => v.read() as tf.Variable)]);
  const outcome: Outcome = {
    y: y!.dataSync() as Float32Array,
    moving: layer.nonTrainableWeights.map((v) => v.read().dataSync() as Float32Array),
    grads: Object.values(grads).map((g) => g.dataSync() as Float32Array),
  };
  tf.dispose([x, w, y!, value, ...Object.values(grads)]);
  layer.weights.forEach((v) => v.dispose());
  return outcome;
}

describe('batchNormalization', () => {
  beforeAll(async () => {
    await setupEngine('wasm');
  });

  for (const backend of ['cpu', 'wasm'] as const) {
    for (const shape of [
      [2, 7, 5, 6],
      [3, 9, 16],
    ]) {
      it(`trains like tfjs-layers' BatchNormalization on ${backend}, [${shape}]`, async () => {
        expect(await tf.setBackend(backend)).toBe(true);
        // tfjs-layers keeps the initial values of a layer's weights (4 tensors here): the fast layer leaks no more.
        const start = tf.memory().numTensors;
        const reference = trainingStep(() => tfl.layers.batchNormalization({ momentum: 0.9 }), shape);
        const middle = tf.memory().numTensors;
        let fast: Outcome | undefined;
        const { kernelNames } = await tf.profile(() => {
          fast = trainingStep(() => batchNormalization({ momentum: 0.9 }), shape);
        });
        expect(kernelNames.includes(BATCH_NORM_TRAIN)).toBe(backend === 'wasm');
        expect(kernelNames.includes(BATCH_NORM_TRAIN_GRAD)).toBe(backend === 'wasm');
        expect(tf.memory().numTensors - middle).toBe(middle - start);
        // The same forward operations: the same output and moving statistics, bit for bit.
        expect(fast!.y).toEqual(reference.y);
        expect(fast!.moving).toEqual(reference.moving);
        // One fused gradient instead of the chain through the batch statistics: equal up to rounding.
        expect(fast!.grads.map((g) => g.length)).toEqual(reference.grads.map((g) => g.length));
        fast!.grads.forEach((g, i) => expect(relativeError(reference.grads[i], g), `gradient ${i}`).toBeLessThan(1e-5));
      });
    }
  }

  it('frees what its wasm kernels allocate, and names the kernel on bad input', async () => {
    await tf.setBackend('wasm');
    const x = tf.tensor(random(2 * 3 * 4 * 5, 8), [2, 3, 4, 5]);
    const c = (seed: number) => tf.tensor1d(random(5, seed));
    const [mean, scale, variance] = [c(9), c(10), tf.add(c(11), 2)];
    expectNoGrowth(() =>
      tf.dispose(
        tf.engine().runKernel(BATCH_NORM_TRAIN_GRAD, { x, dy: x, mean, variance, scale }, { varianceEpsilon: 1e-3 }),
      ),
    );
    expectNoGrowth(() =>
      tf.dispose(tf.engine().runKernel(BATCH_NORM_TRAIN, { x, scale, offset: mean }, { varianceEpsilon: 1e-3 })),
    );
    expect(() =>
      tf.engine().runKernel(BATCH_NORM_TRAIN_GRAD, { x, dy: tf.zeros([2, 3, 4, 4]), mean, variance, scale }, {}),
    ).toThrow(/TesseraBatchNormTrainGrad: dy and x shapes differ/);
    tf.dispose([x, mean, scale, variance]);
  });

  it('infers like tfjs-layers, and saves and loads as TesseraBatchNormalization', async () => {
    await tf.setBackend('cpu');
    const input = tfl.input({ shape: [4, 4, 3] });
    const output = batchNormalization({ momentum: 0.9, name: 'bn' }).apply(input) as tfl.SymbolicTensor;
    const model = tfl.model({ inputs: input, outputs: output });
    model.layers[1].setWeights([tf.ones([3]), tf.zeros([3]), tf.fill([3], 0.5), tf.fill([3], 4)]);
    const y = model.predict(tf.fill([1, 4, 4, 3], 2.5)) as tf.Tensor;
    expect(Array.from(y.dataSync()).every((v) => Math.abs(v - 1) < 1e-3)).toBe(true);
    const json = model.toJSON(null, false) as unknown as { config: { layers: { class_name: string }[] } };
    expect(json.config.layers[1].class_name).toBe('TesseraBatchNormalization');
    const loaded = await tfl.models.modelFromJSON({ modelTopology: json } as never);
    expect(loaded.layers[1].constructor).toBe(model.layers[1].constructor);
  });
});
