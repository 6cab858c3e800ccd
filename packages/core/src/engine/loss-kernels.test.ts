import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
// The tfjs-layers bundle registers tfjs-core's gradient functions (tf.grad needs them).
import '@tensorflow/tfjs-layers';
import { SEG_LOSS, SEG_LOSS_GRAD, SOFTMAX_GRAD } from './gradients.js';
import { expectParity, random, useTesseraWasm } from './test-helpers.js';
import { ceDiceLoss, crossEntropyLoss, diceLoss, focalLoss, type LossOptions } from '../train/losses.js';

/** Deterministic logits `[b, h, w, c]` spread over about [-6, 6]. */
const logits = (shape: number[], seed: number) =>
  tf.mul(
    tf.tensor(
      random(
        shape.reduce((a, b) => a * b, 1),
        seed,
      ),
      shape,
    ),
    6,
  );

/** Labels in `[-1, c]`: some ignored (-1), some of no class (`c`) when `outOfRange`. */
function labels(shape: number[], c: number, seed: number, outOfRange = false): tf.Tensor3D {
  const values = random(
    shape.reduce((a, b) => a * b, 1),
    seed,
  ).map((v) => {
    const k = Math.floor(((v + 1) / 2) * (c + 2)) - 1;
    return outOfRange ? k : Math.min(k, c - 1);
  });
  return tf.tensor(Int32Array.from(values), shape, 'int32') as tf.Tensor3D;
}

/** The loss and its gradient with respect to the logits (through a softmax). */
function lossAndGrad(
  loss: (p: tf.Tensor4D, y: tf.Tensor3D, o: LossOptions) => tf.Scalar,
  shape: number[],
  options: LossOptions,
  outOfRange = false,
): tf.Tensor[] {
  const x = logits(shape, 3);
  const y = labels(shape.slice(0, 3), shape[3], 4, outOfRange);
  const f = (z: tf.Tensor) => loss(tf.softmax(z) as tf.Tensor4D, y, options);
  const { value, grad } = tf.valueAndGrad(f)(x);
  return [value, grad];
}

beforeAll(useTesseraWasm);

/** Names of the kernels that ran on wasm during `fn`. */
async function kernelsOf(fn: () => tf.Tensor[]): Promise<string[]> {
  await tf.setBackend('wasm');
  const profile = await tf.profile(() => tf.tidy(fn) as unknown as tf.Tensor);
  return profile.kernels.map((k) => k.name);
}

describe('the fused segmentation losses on wasm', () => {
  const cases: [string, (p: tf.Tensor4D, y: tf.Tensor3D, o: LossOptions) => tf.Scalar, LossOptions][] = [
    ['ce-dice', ceDiceLoss, {}],
    [
      'ce-dice, weighted terms and classes, smooth 0.5',
      ceDiceLoss,
      { ceWeight: 0.3, diceWeight: 2, classWeights: [1, 4, 0.5], smooth: 0.5 },
    ],
    ['cross-entropy', crossEntropyLoss, {}],
    ['cross-entropy, class weights, epsilon 0.01', crossEntropyLoss, { classWeights: [2, 0.5, 1], epsilon: 0.01 }],
    ['dice', diceLoss, { smooth: 2 }],
  ];
  for (const [name, loss, options] of cases) {
    for (const shape of [
      [2, 16, 16, 2],
      [1, 9, 7, 3],
    ]) {
      const c = shape[3];
      const o =
        options.classWeights && c !== 3 ? { ...options, classWeights: options.classWeights.slice(0, c) } : options;
      it(`${name} [${shape}]: loss and gradient as tfjs-core's tensor operations on cpu, within 1e-5`, async () => {
        await expectParity(() => lossAndGrad(loss, shape, o), 1e-5);
        const ran = await kernelsOf(() => lossAndGrad(loss, shape, o));
        expect(ran).toContain(SEG_LOSS);
        expect(ran).toContain(SEG_LOSS_GRAD);
        expect(ran).toContain(SOFTMAX_GRAD);
      });
    }
  }

  it('labels of no class (>= C) and ignored pixels (-1) as on cpu', async () => {
    await expectParity(() => lossAndGrad(ceDiceLoss, [2, 8, 8, 2], {}, true), 1e-5);
    await expectParity(() => lossAndGrad(crossEntropyLoss, [2, 8, 8, 2], { classWeights: [1, 3] }, true), 1e-5);
  });

  it('every pixel ignored gives the losses of cpu (cross-entropy 0, Dice 0 with smooth 1)', async () => {
    const run = () => {
      const p = tf.softmax(logits([1, 4, 4, 2], 5)) as tf.Tensor4D;
      const y = tf.fill([1, 4, 4], -1, 'int32') as tf.Tensor3D;
      return [crossEntropyLoss(p, y), ceDiceLoss(p, y), diceLoss(p, y)];
    };
    const values = async (backend: string) => {
      await tf.setBackend(backend);
      const outs = tf.tidy(run);
      const v = outs.map((t) => t.dataSync()[0]);
      tf.dispose(outs);
      return v;
    };
    expect(await values('wasm')).toEqual(await values('cpu'));
    expect(await kernelsOf(run)).toContain(SEG_LOSS);
  });

  it('focal loss (gamma != 0) keeps the tensor operations', async () => {
    const ran = await kernelsOf(() => lossAndGrad(focalLoss, [1, 8, 8, 2], { gamma: 2 }));
    expect(ran).not.toContain(SEG_LOSS);
    await expectParity(() => lossAndGrad(focalLoss, [1, 8, 8, 2], { gamma: 2 }), 1e-5);
  });

  it('softmax over the last axis as on cpu, for 2, 3, 5 and 11 classes and rows not a multiple of 4', async () => {
    for (const c of [2, 3, 5, 11]) {
      await expectParity(() => [tf.softmax(logits([3, 5, 7, c], c))], 1e-6);
    }
    // Large logits do not overflow.
    await expectParity(
      () => [
        tf.softmax(
          tf.tensor2d([
            [1000, 0],
            [-1000, 1000],
            [88, 89],
          ]),
        ),
      ],
      1e-6,
    );
  });
});
