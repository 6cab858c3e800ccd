import '@tensorflow/tfjs-backend-cpu';
// tfjs-core 4 registers no gradients by itself; tfjs-layers registers all of them on import.
import '@tensorflow/tfjs-layers';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';

import { InvalidOptionError, UnknownNameError } from '../errors.js';
import { LOSS_NAMES, ceDiceLoss, crossEntropyLoss, diceLoss, focalLoss, getLoss } from './losses.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

// A 1x2x2x2 example: four pixels, two classes. Pixel order: (0,0), (0,1), (1,0), (1,1).
//   pixel 0: p = [0.9, 0.1]
//   pixel 1: p = [0.2, 0.8]
//   pixel 2: p = [0.6, 0.4]
//   pixel 3: p = [0.3, 0.7]
const P = [0.9, 0.1, 0.2, 0.8, 0.6, 0.4, 0.3, 0.7];
function probs(values = P): tf.Tensor4D {
  return tf.tensor4d(values, [1, 2, 2, 2], 'float32');
}
function labels(values: number[]): tf.Tensor3D {
  return tf.tensor3d(values, [1, 2, 2], 'int32');
}
function value(t: tf.Scalar): number {
  const v = t.dataSync()[0];
  t.dispose();
  return v;
}

describe('crossEntropyLoss', () => {
  it('is the mean of -log p[y] over the pixels', () => {
    // labels 0, 1, 1, 0 -> p[y] = 0.9, 0.8, 0.4, 0.3
    // (0.10536 + 0.22314 + 0.91629 + 1.20397) / 4
    const expected = -(Math.log(0.9) + Math.log(0.8) + Math.log(0.4) + Math.log(0.3)) / 4;
    expect(expected).toBeCloseTo(0.612192, 5);
    expect(value(crossEntropyLoss(probs(), labels([0, 1, 1, 0])))).toBeCloseTo(expected, 5);
  });

  it('excludes ignored pixels from the sum and the normalization', () => {
    // pixel 3 ignored -> (-log 0.9 - log 0.8 - log 0.4) / 3
    const expected = -(Math.log(0.9) + Math.log(0.8) + Math.log(0.4)) / 3;
    expect(value(crossEntropyLoss(probs(), labels([0, 1, 1, -1])))).toBeCloseTo(expected, 5);
    // changing the probabilities of the ignored pixel changes nothing
    const other = [0.9, 0.1, 0.2, 0.8, 0.6, 0.4, 0.999, 0.001];
    expect(value(crossEntropyLoss(probs(other), labels([0, 1, 1, -1])))).toBeCloseTo(expected, 5);
  });

  it('weights pixels by the weight of their class and normalizes by the summed weights', () => {
    // weights [1, 3]; labels 0, 1, 1, -1
    const expected = (1 * -Math.log(0.9) + 3 * -Math.log(0.8) + 3 * -Math.log(0.4)) / (1 + 3 + 3);
    const loss = crossEntropyLoss(probs(), labels([0, 1, 1, -1]), { classWeights: [1, 3] });
    expect(value(loss)).toBeCloseTo(expected, 5);
  });

  it('clips probabilities to epsilon before the log', () => {
    // p[y] = 0 for every pixel -> -log(1e-7) = 16.118...
    const zeros = [0, 1, 0, 1, 0, 1, 0, 1];
    expect(value(crossEntropyLoss(probs(zeros), labels([0, 0, 0, 0])))).toBeCloseTo(-Math.log(1e-7), 3);
  });

  it('is 0 when every pixel is ignored', () => {
    expect(value(crossEntropyLoss(probs(), labels([-1, -1, -1, -1])))).toBe(0);
  });

  it('has gradient -1 / (N p[y]) on the true class, 0 elsewhere and on ignored pixels', () => {
    const y = labels([0, 1, 1, -1]);
    const grad = tf.grad((p: tf.Tensor) => crossEntropyLoss(p as tf.Tensor4D, y))(probs());
    const g = Array.from(grad.dataSync());
    const expected = [-1 / (3 * 0.9), 0, 0, -1 / (3 * 0.8), 0, -1 / (3 * 0.4), 0, 0];
    g.forEach((v, i) => expect(v).toBeCloseTo(expected[i], 5));
    expect(g.every(Number.isFinite)).toBe(true);
  });

  it('rejects mismatched shapes and class weights of the wrong length', () => {
    expect(() => crossEntropyLoss(probs(), tf.tensor3d([0, 1], [1, 1, 2], 'int32'))).toThrow(
      /labels shape \[1, 1, 2\] does not match probabilities shape \[1, 2, 2, 2\]; expected \[1, 2, 2\]/,
    );
    expect(() => crossEntropyLoss(probs(), labels([0, 1, 1, 0]), { classWeights: [1, 2, 3] })).toThrow(
      /classWeights has 3 entries but probabilities have 2 classes/,
    );
    expect(() => crossEntropyLoss(probs(), labels([0, 1, 1, 0]), { classWeights: [1, -2] })).toThrow(
      'Expected a finite number >= 0 for loss option classWeights[1] but received -2 of type number.',
    );
  });
});

describe('focalLoss', () => {
  it('is the mean of -(1 - p[y])^gamma log p[y] (gamma 2)', () => {
    // labels 0, 1, 1, -1 -> p[y] = 0.9, 0.8, 0.4
    // (0.01 * 0.10536 + 0.04 * 0.22314 + 0.36 * 0.91629) / 3
    const expected = (0.1 ** 2 * -Math.log(0.9) + 0.2 ** 2 * -Math.log(0.8) + 0.6 ** 2 * -Math.log(0.4)) / 3;
    expect(expected).toBeCloseTo(0.113281, 5);
    expect(value(focalLoss(probs(), labels([0, 1, 1, -1])))).toBeCloseTo(expected, 5);
  });

  it('equals cross-entropy with gamma 0', () => {
    const y = labels([0, 1, 1, 0]);
    const expected = -(Math.log(0.9) + Math.log(0.8) + Math.log(0.4) + Math.log(0.3)) / 4;
    expect(value(focalLoss(probs(), y, { gamma: 0 }))).toBeCloseTo(expected, 5);
  });

  it('applies class weights', () => {
    // weights [2, 0.5], gamma 1, labels 0, 1, 1, 0
    const num =
      2 * 0.1 * -Math.log(0.9) + 0.5 * 0.2 * -Math.log(0.8) + 0.5 * 0.6 * -Math.log(0.4) + 2 * 0.7 * -Math.log(0.3);
    const expected = num / (2 + 0.5 + 0.5 + 2);
    const loss = focalLoss(probs(), labels([0, 1, 1, 0]), { gamma: 1, classWeights: [2, 0.5] });
    expect(value(loss)).toBeCloseTo(expected, 5);
  });

  it('has a finite, negative gradient on the true class', () => {
    const y = labels([0, 1, 1, -1]);
    const grad = tf.grad((p: tf.Tensor) => focalLoss(p as tf.Tensor4D, y))(probs());
    const g = Array.from(grad.dataSync());
    expect(g.every(Number.isFinite)).toBe(true);
    // d/dp [-(1-p)^2 log p] / 3 = [2(1-p) log p - (1-p)^2 / p] / 3
    const d = (p: number): number => (2 * (1 - p) * Math.log(p) - (1 - p) ** 2 / p) / 3;
    expect(g[0]).toBeCloseTo(d(0.9), 5);
    expect(g[3]).toBeCloseTo(d(0.8), 5);
    expect(g[5]).toBeCloseTo(d(0.4), 5);
    expect(g[0]).toBeLessThan(0);
    expect([g[1], g[2], g[4], g[6], g[7]].map(Math.abs)).toEqual([0, 0, 0, 0, 0]);
  });

  it('rejects a negative gamma', () => {
    expect(() => focalLoss(probs(), labels([0, 0, 0, 0]), { gamma: -1 })).toThrow(
      'Expected a finite number >= 0 for loss option gamma but received -1 of type number.',
    );
  });
});

describe('diceLoss', () => {
  it('is 1 - mean soft Dice over classes, ignored pixels masked out (smooth 1)', () => {
    // labels 0, 1, 1, -1; valid pixels 0..2
    // class 0: sum p = 0.9 + 0.2 + 0.6 = 1.7, sum g = 1, intersection = 0.9 -> (1.8 + 1) / (1.7 + 1 + 1) = 2.8 / 3.7
    // class 1: sum p = 0.1 + 0.8 + 0.4 = 1.3, sum g = 2, intersection = 0.8 + 0.4 = 1.2 -> (2.4 + 1) / (1.3 + 2 + 1)
    const expected = 1 - (2.8 / 3.7 + 3.4 / 4.3) / 2; // 1 - (0.756757 + 0.790698) / 2
    expect(expected).toBeCloseTo(0.226273, 5);
    expect(value(diceLoss(probs(), labels([0, 1, 1, -1])))).toBeCloseTo(expected, 5);
    const other = [0.9, 0.1, 0.2, 0.8, 0.6, 0.4, 0.01, 0.99];
    expect(value(diceLoss(probs(other), labels([0, 1, 1, -1])))).toBeCloseTo(expected, 5);
  });

  it('uses the smooth option', () => {
    // smooth 0, labels 0, 1, 1, 0
    // class 0: sum p = 0.9 + 0.2 + 0.6 + 0.3 = 2.0, sum g = 2, I = 0.9 + 0.3 = 1.2 -> 2.4 / 4
    // class 1: sum p = 0.1 + 0.8 + 0.4 + 0.7 = 2.0, sum g = 2, I = 0.8 + 0.4 = 1.2 -> 2.4 / 4
    expect(value(diceLoss(probs(), labels([0, 1, 1, 0]), { smooth: 0 }))).toBeCloseTo(1 - 0.6, 5);
  });

  it('is 0 for a perfect prediction and works on a 1x1x3x3 example', () => {
    // 3 pixels in a row, 3 classes, one-hot predictions equal to the labels
    const p = tf.tensor4d([1, 0, 0, 0, 1, 0, 0, 0, 1], [1, 1, 3, 3]);
    expect(value(diceLoss(p, tf.tensor3d([0, 1, 2], [1, 1, 3], 'int32'), { smooth: 0 }))).toBeCloseTo(0, 6);
    // all pixels predicted as class 0, labels 0, 1, 2, smooth 0:
    // class 0: 2*1 / (3 + 1) = 0.5; class 1: 0 / (0 + 1) = 0; class 2: 0 / (0 + 1) = 0 -> 1 - 0.5 / 3
    const q = tf.tensor4d([1, 0, 0, 1, 0, 0, 1, 0, 0], [1, 1, 3, 3]);
    expect(value(diceLoss(q, tf.tensor3d([0, 1, 2], [1, 1, 3], 'int32'), { smooth: 0 }))).toBeCloseTo(1 - 0.5 / 3, 6);
  });

  it('has a finite gradient, negative on the true class of each pixel', () => {
    const y = labels([0, 1, 1, -1]);
    const grad = tf.grad((p: tf.Tensor) => diceLoss(p as tf.Tensor4D, y))(probs());
    const g = Array.from(grad.dataSync());
    expect(g.every(Number.isFinite)).toBe(true);
    // class 0, pixel 0 (true class): dL/dp = -(1/2) * [2 * 3.7 - 2.8] / 3.7^2
    expect(g[0]).toBeCloseTo((-0.5 * (2 * 3.7 - 2.8)) / 3.7 ** 2, 5);
    expect(g[0]).toBeLessThan(0);
    expect(g[3]).toBeLessThan(0);
    expect(g[5]).toBeLessThan(0);
    // class 0 on pixel 1 (false class): dL/dp = -(1/2) * [0 - 2.8] / 3.7^2 > 0
    expect(g[2]).toBeCloseTo((0.5 * 2.8) / 3.7 ** 2, 5);
    // ignored pixel: no gradient
    expect([g[6], g[7]].map(Math.abs)).toEqual([0, 0]);
  });
});

describe('ceDiceLoss', () => {
  it('sums the weighted cross-entropy and Dice terms', () => {
    const y = labels([0, 1, 1, -1]);
    const ce = -(Math.log(0.9) + Math.log(0.8) + Math.log(0.4)) / 3;
    const dice = 1 - (2.8 / 3.7 + 3.4 / 4.3) / 2;
    expect(value(ceDiceLoss(probs(), y))).toBeCloseTo(ce + dice, 5);
    expect(value(ceDiceLoss(probs(), y, { ceWeight: 0.5, diceWeight: 2 }))).toBeCloseTo(0.5 * ce + 2 * dice, 5);
  });
});

describe('getLoss', () => {
  it('returns each registered loss with its options bound', () => {
    const y = labels([0, 1, 1, -1]);
    expect(LOSS_NAMES).toEqual(['cross-entropy', 'dice', 'ce-dice', 'focal']);
    const ce = -(Math.log(0.9) + Math.log(0.8) + Math.log(0.4)) / 3;
    const dice = 1 - (2.8 / 3.7 + 3.4 / 4.3) / 2;
    const focal1 = (0.1 * -Math.log(0.9) + 0.2 * -Math.log(0.8) + 0.6 * -Math.log(0.4)) / 3;
    expect(value(getLoss('cross-entropy')(probs(), y))).toBeCloseTo(ce, 5);
    expect(value(getLoss('dice')(probs(), y))).toBeCloseTo(dice, 5);
    expect(value(getLoss('ce-dice')(probs(), y))).toBeCloseTo(ce + dice, 5);
    expect(value(getLoss('focal', { gamma: 1 })(probs(), y))).toBeCloseTo(focal1, 5);
  });

  it('does not leak tensors', () => {
    const p = probs();
    const y = labels([0, 1, 1, -1]);
    const before = tf.memory().numTensors;
    for (const name of LOSS_NAMES) getLoss(name, { classWeights: [1, 2] })(p, y).dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('can be minimized: one SGD step lowers the loss', () => {
    const logits = tf.variable(tf.tensor4d([0, 0, 0, 0, 0, 0, 0, 0], [1, 2, 2, 2]));
    const y = labels([0, 1, 1, -1]);
    const loss = getLoss('ce-dice');
    const optimizer = tf.train.sgd(1);
    const first = optimizer.minimize(() => loss(tf.softmax(logits) as tf.Tensor4D, y), true)!;
    const second = loss(tf.softmax(logits) as tf.Tensor4D, y);
    expect(value(second)).toBeLessThan(value(first));
  });

  it('fails for an unknown name, suggesting and listing the valid names', () => {
    expect(() => getLoss('dise')).toThrow(UnknownNameError);
    expect(() => getLoss('dise')).toThrow(
      'Unknown loss "dise". Did you mean "dice"? Valid choices: cross-entropy, dice, ce-dice, focal.',
    );
    expect(() => getLoss('toString')).toThrow(/Unknown loss "toString"/);
  });

  it('validates options when the loss is looked up', () => {
    expect(() => getLoss('dice', { smooth: -1 })).toThrow(InvalidOptionError);
    expect(() => getLoss('dice', { epsilon: 0 })).toThrow(
      'Expected a number in (0, 0.5) for loss option epsilon but received 0 of type number.',
    );
  });
});
