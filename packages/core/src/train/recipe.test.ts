import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { foregroundDice, TrainingClock, WeightAverage } from './recipe.js';
import { makeSchedule } from './schedules.js';
import { setupEngine } from '../engine/engine.js';

beforeAll(async () => {
  await setupEngine('cpu');
});

function oneWeightModel(value: number): tfl.LayersModel {
  const input = tfl.input({ shape: [1] });
  const dense = tfl.layers.dense({ units: 1, useBias: false, kernelInitializer: tfl.initializers.constant({ value }) });
  return tfl.model({ inputs: input, outputs: dense.apply(input) as tfl.SymbolicTensor });
}

describe('WeightAverage', () => {
  it('follows the weights with the warm-up of num_updates, swaps in and back', async () => {
    const model = oneWeightModel(0);
    const average = new WeightAverage(model, 0.9);
    const kernel = model.trainableWeights[0].read() as tf.Variable;
    let expected = 0;
    for (let n = 0; n < 30; n++) {
      kernel.assign(tf.tensor2d([[n + 1]]));
      average.update();
      const d = Math.min(0.9, (1 + n) / (10 + n));
      expected = d * expected + (1 - d) * (n + 1);
    }
    expect(average.count).toBe(30);
    expect(average.values()[0].dataSync()[0]).toBeCloseTo(expected, 4);
    const seen = await average.swapped(async () => kernel.dataSync()[0]);
    expect(seen).toBeCloseTo(expected, 4);
    expect(kernel.dataSync()[0]).toBe(30);
    average.dispose();
    model.dispose();
  });

  it('continues from a saved state', () => {
    const model = oneWeightModel(1);
    const average = new WeightAverage(model, 0.5, { values: [tf.tensor2d([[4]])], updates: 100 });
    average.update();
    expect(average.values()[0].dataSync()[0]).toBeCloseTo(2.5, 6); // 0.5 * 4 + 0.5 * 1
    average.dispose();
    model.dispose();
  });
});

describe('TrainingClock', () => {
  it('measures progress by steps or by time, whichever is further, and bounds the budget by a step', () => {
    const startedAt = performance.now() - 30_000; // 30 s ago
    const clock = new TrainingClock(60, 1000, 0, startedAt);
    expect(clock.progress(100)).toBeCloseTo(0.5, 2); // half the budget, a tenth of the steps
    expect(clock.progress(900)).toBe(0.9);
    expect(clock.budgetSpent()).toBe(false); // no step timed yet: the first step always runs
    clock.recordStep(20);
    expect(clock.budgetSpent()).toBe(false); // 30 + 20 <= 60
    expect(clock.stepsLeft()).toBe(1);
    clock.recordStep(40);
    clock.recordStep(40);
    expect(clock.stepSeconds()).toBe(40);
    expect(clock.budgetSpent()).toBe(true); // 30 + 40 > 60
    expect(new TrainingClock(null, 10).budgetSpent()).toBe(false);
  });

  it('spaces validations over the budget, further apart when they are slow', () => {
    const clock = new TrainingClock(160, 1000, 0, performance.now() - 11_000);
    expect(clock.validationDue()).toBe(true); // 11 s >= 160 / 16
    clock.recordValidation(5); // 5 s: at most a tenth of the time, so 45 s apart
    expect(clock.validationDue()).toBe(false);
    expect(new TrainingClock(null, 10, 0, performance.now() - 1e6).validationDue()).toBe(false);
  });
});

describe('foregroundDice', () => {
  it('averages the classes but the background, skipping undefined ones', () => {
    expect(foregroundDice([0.98, 0.81], 0)).toBe(0.81);
    expect(foregroundDice([0.81, 0.98], 1)).toBe(0.81);
    expect(foregroundDice([0.9, 0.6, NaN, 0.8], 0)).toBeCloseTo(0.7, 10);
    expect(foregroundDice([0.9, 0.7], -1)).toBeCloseTo(0.8, 10);
    expect(foregroundDice([0.9], 0)).toBe(0.9);
    expect(foregroundDice([0.9, NaN], 0)).toBeNaN();
  });
});

describe('cosine schedule fitted to a budget', () => {
  it('follows the share of the run done, not the step count, after warm-up', () => {
    const lr = makeSchedule({ name: 'cosine', baseLr: 1, totalSteps: 1000, warmupSteps: 2 });
    expect(lr(0, 0.9)).toBe(0.5); // warm-up goes by steps
    expect(lr(10, 0)).toBe(1);
    expect(lr(10, 0.5)).toBeCloseTo(0.5, 10);
    expect(lr(10, 1)).toBe(0);
    expect(lr(10)).toBeCloseTo((1 + Math.cos((Math.PI * 8) / 998)) / 2, 10);
    const step = makeSchedule({ name: 'step', baseLr: 1, totalSteps: 100, stepSize: 10, gamma: 0.5 });
    expect(step(25, 0.9)).toBe(0.25); // progress is for the cosine only
  });
});
