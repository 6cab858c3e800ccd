import { describe, expect, it } from 'vitest';

import { InvalidOptionError, UnknownNameError } from '../errors.js';
import { makeSchedule, resolveScheduleOptions, type ScheduleOptions } from './schedules.js';

function values(options: ScheduleOptions, steps: number): number[] {
  const lr = makeSchedule(options);
  return Array.from({ length: steps }, (_, s) => lr(s));
}

describe('makeSchedule', () => {
  it('constant', () => {
    expect(values({ name: 'constant', baseLr: 0.01, totalSteps: 3 }, 5)).toEqual([0.01, 0.01, 0.01, 0.01, 0.01]);
  });

  it('linear warmup reaches baseLr on the last warmup step', () => {
    // warmupSteps 4: 1 * 1/4, 2/4, 3/4, 4/4, then constant 1
    expect(values({ name: 'constant', baseLr: 1, totalSteps: 10, warmupSteps: 4 }, 6)).toEqual([
      0.25, 0.5, 0.75, 1, 1, 1,
    ]);
  });

  it('step: multiplies by gamma every stepSize steps after warmup', () => {
    // gamma 0.5, stepSize 3: t = 0..2 -> 1, t = 3..5 -> 0.5, t = 6 -> 0.25
    expect(values({ name: 'step', baseLr: 1, totalSteps: 10, stepSize: 3, gamma: 0.5 }, 7)).toEqual([
      1, 1, 1, 0.5, 0.5, 0.5, 0.25,
    ]);
    // default gamma 0.1, warmup 2: 0.5, 1, then t = 0 -> 1, t = 1 -> 0.1 (stepSize 1), t = 2 -> 0.01
    const lr = values({ name: 'step', baseLr: 1, totalSteps: 10, stepSize: 1, warmupSteps: 2 }, 5);
    expect(lr.slice(0, 3)).toEqual([0.5, 1, 1]);
    expect(lr[3]).toBeCloseTo(0.1, 15);
    expect(lr[4]).toBeCloseTo(0.01, 15);
  });

  it('cosine: half a cosine from baseLr to minLr at totalSteps, then flat', () => {
    // baseLr 2, minLr 0, T = 4: 2 * (1 + cos(pi t / 4)) / 2 = 1 + cos(pi t / 4)
    const lr = values({ name: 'cosine', baseLr: 2, totalSteps: 4 }, 6);
    expect(lr[0]).toBe(2);
    expect(lr[1]).toBeCloseTo(1 + Math.SQRT1_2, 14); // 1.7071...
    expect(lr[2]).toBeCloseTo(1, 14);
    expect(lr[3]).toBeCloseTo(1 - Math.SQRT1_2, 14); // 0.2928...
    expect(lr[4]).toBe(0);
    expect(lr[5]).toBe(0);
  });

  it('cosine with warmup and a floor', () => {
    // warmup 2 (baseLr 3): 1.5, 3; then T = 2, minLr 1:
    //   t = 0 -> 3, t = 1 -> 1 + 2 * (1 + cos(pi/2)) / 2 = 2, t = 2 -> 1
    const lr = values({ name: 'cosine', baseLr: 3, totalSteps: 4, warmupSteps: 2, minLr: 1 }, 5);
    expect(lr[0]).toBe(1.5);
    expect(lr[1]).toBe(3);
    expect(lr[2]).toBe(3);
    expect(lr[3]).toBeCloseTo(2, 14);
    expect(lr[4]).toBe(1);
  });

  it('fills defaults', () => {
    expect(resolveScheduleOptions({ name: 'cosine', baseLr: 1e-3, totalSteps: 100 })).toEqual({
      name: 'cosine',
      baseLr: 1e-3,
      totalSteps: 100,
      warmupSteps: 0,
      gamma: 0.1,
      minLr: 0,
      stepSize: undefined,
    });
  });

  it('rejects bad options, quoting the value', () => {
    const base = { name: 'constant', baseLr: 0.1, totalSteps: 10 } as const;
    expect(() => makeSchedule({ ...base, name: 'cosin' as 'cosine' })).toThrow(UnknownNameError);
    expect(() => makeSchedule({ ...base, name: 'cosin' as 'cosine' })).toThrow(
      'Unknown schedule "cosin". Did you mean "cosine"? Valid choices: constant, step, cosine.',
    );
    expect(() => makeSchedule({ ...base, baseLr: -1 })).toThrow(
      'Expected a number > 0 for schedule option baseLr but received -1 of type number.',
    );
    expect(() => makeSchedule({ ...base, totalSteps: 2.5 })).toThrow(
      'Expected an integer >= 1 for schedule option totalSteps but received 2.5 of type number.',
    );
    expect(() => makeSchedule({ ...base, warmupSteps: 10 })).toThrow(
      'Expected an integer in [0, 9] (less than totalSteps) for schedule option warmupSteps ' +
        'but received 10 of type number.',
    );
    expect(() => makeSchedule({ ...base, name: 'step' })).toThrow(InvalidOptionError);
    expect(() => makeSchedule({ ...base, name: 'step', stepSize: 0 })).toThrow(
      'Expected an integer >= 1 for schedule option stepSize but received 0 of type number.',
    );
    expect(() => makeSchedule({ ...base, gamma: 2 })).toThrow(
      'Expected a number in (0, 1] for schedule option gamma but received 2 of type number.',
    );
    expect(() => makeSchedule({ ...base, minLr: 0.5 })).toThrow(
      'Expected a number in [0, 0.1] (at most baseLr) for schedule option minLr but received 0.5 of type number.',
    );
    expect(() => makeSchedule(base)(-1)).toThrow(
      'Expected an integer >= 0 for the step of a learning-rate schedule but received -1 of type number.',
    );
  });
});
