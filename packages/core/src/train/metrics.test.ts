import { describe, expect, it } from 'vitest';

import { InvalidOptionError } from '../errors.js';
import { ConfusionMatrix, argmaxLabels, makeEvaluationReport } from './metrics.js';

// 4 classes; class 3 appears in neither targets nor predictions.
//   target    0  1  1  1 -1  2  0  0
//   predicted 0  0  1  1  1  2  0  1
// pairs (t, p): (0,0) (1,0) (1,1) (1,1) [ignored] (2,2) (0,0) (0,1)
// counts (row = target, col = predicted):
//   [2, 1, 0, 0]
//   [1, 2, 0, 0]
//   [0, 0, 1, 0]
//   [0, 0, 0, 0]
const TARGET = Int32Array.of(0, 1, 1, 1, -1, 2, 0, 0);
const PREDICTED = Uint8Array.of(0, 0, 1, 1, 1, 2, 0, 1);
function example(): ConfusionMatrix {
  const cm = new ConfusionMatrix(4);
  cm.add(PREDICTED, TARGET);
  return cm;
}

describe('ConfusionMatrix', () => {
  it('counts target rows against predicted columns, skipping -1 targets', () => {
    expect(example().toJSON()).toEqual({
      numClasses: 4,
      counts: [
        [2, 1, 0, 0],
        [1, 2, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 0],
      ],
    });
    expect(Array.from(example().counts)).toEqual([2, 1, 0, 0, 1, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
  });

  it('computes pixel accuracy, IoU and Dice by hand', () => {
    const cm = example();
    // trace 2 + 2 + 1 = 5 of 7 counted pixels
    expect(cm.pixelAccuracy()).toBeCloseTo(5 / 7, 12);
    // class 0: tp 2, fp 1 (col sum 3 - 2), fn 1 (row sum 3 - 2) -> IoU 2/4, Dice 4/6
    // class 1: tp 2, fp 1, fn 1 -> IoU 2/4, Dice 4/6
    // class 2: tp 1, fp 0, fn 0 -> IoU 1, Dice 1
    // class 3: absent from both -> NaN
    const iou = cm.iou();
    const dice = cm.dice();
    expect(iou.slice(0, 3)).toEqual([0.5, 0.5, 1]);
    expect(dice[0]).toBeCloseTo(4 / 6, 12);
    expect(dice[1]).toBeCloseTo(4 / 6, 12);
    expect(dice[2]).toBe(1);
    expect(iou[3]).toBeNaN();
    expect(dice[3]).toBeNaN();
    // means skip the NaN class
    expect(cm.meanIoU()).toBeCloseTo((0.5 + 0.5 + 1) / 3, 12);
    expect(cm.meanDice()).toBeCloseTo((4 / 6 + 4 / 6 + 1) / 3, 12);
  });

  it('scores 0 for a class only predicted, and counts it in the means', () => {
    const cm = new ConfusionMatrix(2);
    // target 0 0, predicted 0 1 -> class 0: tp 1, fn 1 -> IoU 1/2, Dice 2/3; class 1: tp 0, fp 1 -> IoU 0, Dice 0
    cm.add([0, 1], [0, 0]);
    expect(cm.iou()).toEqual([0.5, 0]);
    expect(cm.dice()[0]).toBeCloseTo(2 / 3, 12);
    expect(cm.dice()[1]).toBe(0);
    expect(cm.meanIoU()).toBe(0.25);
    expect(cm.meanDice()).toBeCloseTo(1 / 3, 12);
  });

  it('is NaN everywhere when nothing was counted', () => {
    const cm = new ConfusionMatrix(2);
    cm.add([1, 0], [-1, -1]);
    expect(cm.pixelAccuracy()).toBeNaN();
    expect(cm.meanIoU()).toBeNaN();
    expect(cm.meanDice()).toBeNaN();
  });

  it('merges counts and round-trips through JSON', () => {
    const a = example();
    a.merge(example());
    expect(a.get(0, 0)).toBe(4);
    expect(a.get(1, 0)).toBe(2);
    expect(a.total()).toBe(14);
    expect(a.pixelAccuracy()).toBeCloseTo(10 / 14, 12);
    const copy = ConfusionMatrix.fromJSON(JSON.parse(JSON.stringify(a)));
    expect(Array.from(copy.counts)).toEqual(Array.from(a.counts));
    expect(() => a.merge(new ConfusionMatrix(3))).toThrow(
      'Cannot merge a confusion matrix of 3 classes into one of 4 classes.',
    );
  });

  it('rejects bad arguments with messages naming the value', () => {
    expect(() => new ConfusionMatrix(0)).toThrow(
      'Expected an integer >= 1 for numClasses in ConfusionMatrix but received 0 of type number.',
    );
    const cm = new ConfusionMatrix(2);
    expect(() => cm.add([0, 1], [0])).toThrow(InvalidOptionError);
    expect(() => cm.add([0, 1], [0, 2])).toThrow(
      'Expected target values in [0, 1] or -1 in ConfusionMatrix.add but received 2 at pixel 1.',
    );
    expect(() => cm.add([0, 5], [0, 1])).toThrow(
      'Expected predicted values in [0, 1] in ConfusionMatrix.add but received 5 at pixel 1.',
    );
  });
});

describe('makeEvaluationReport', () => {
  it('collects the metrics per class with names and values', () => {
    const classes = [
      { name: 'background', value: 0 },
      { name: 'nucleus', value: 1 },
      { name: 'membrane', value: 2 },
      { name: 'debris', value: 255 },
    ];
    const report = makeEvaluationReport(example(), classes);
    expect(report.pixelAccuracy).toBeCloseTo(5 / 7, 12);
    expect(report.meanIoU).toBeCloseTo(2 / 3, 12);
    expect(report.meanDice).toBeCloseTo(7 / 9, 12);
    expect(report.classes[1]).toEqual({ name: 'nucleus', value: 1, iou: 0.5, dice: expect.closeTo(2 / 3, 12) });
    expect(report.classes[3].name).toBe('debris');
    expect(report.classes[3].iou).toBeNaN();
    expect(report.confusionMatrix[0]).toEqual([2, 1, 0, 0]);
    // NaN becomes null in JSON
    expect(JSON.parse(JSON.stringify(report)).classes[3].iou).toBeNull();
    expect(() => makeEvaluationReport(example(), classes.slice(0, 2))).toThrow(
      'Expected 4 class descriptions in makeEvaluationReport (one per class of the confusion matrix) but received 2.',
    );
  });
});

describe('argmaxLabels', () => {
  it('takes the argmax over the last axis, ties to the lower class', () => {
    // pixels: [0.1, 0.7, 0.2] -> 1; [0.5, 0.2, 0.3] -> 0; [0.2, 0.4, 0.4] -> 1 (tie); [NaN, 0, 0.1] -> 2
    const p = Float32Array.of(0.1, 0.7, 0.2, 0.5, 0.2, 0.3, 0.2, 0.4, 0.4, NaN, 0, 0.1);
    expect(Array.from(argmaxLabels(p, 3))).toEqual([1, 0, 1, 2]);
  });

  it('rejects a length that numClasses does not divide', () => {
    expect(() => argmaxLabels(new Float32Array(5), 2)).toThrow(
      'Expected a length divisible by numClasses (2) in argmaxLabels but received 5 values.',
    );
    expect(() => argmaxLabels(new Float32Array(4), 0)).toThrow(/numClasses in argmaxLabels but received 0/);
  });
});
