/**
 * Learning-rate schedules: a function from the optimizer step (0-based) to the learning rate, with an optional linear
 * warmup.
 */
import { InvalidOptionError, describeValue, unknownName } from '../errors.js';

/** Names of the schedules. */
export type ScheduleName = 'constant' | 'step' | 'cosine';

/** The schedule names {@link makeSchedule} accepts. */
export const SCHEDULE_NAMES: readonly ScheduleName[] = Object.freeze(['constant', 'step', 'cosine'] as const);

/** Options of {@link makeSchedule}. Step counts are optimizer steps (batches), not epochs. */
export interface ScheduleOptions {
  /** `'constant'`, `'step'` (multiply by `gamma` every `stepSize` steps) or `'cosine'` (half cosine to `minLr`). */
  name: ScheduleName;
  /** The learning rate after warmup, `> 0`. */
  baseLr: number;
  /** Total number of training steps, an integer `>= 1`; `'cosine'` reaches `minLr` at this step. */
  totalSteps: number;
  /**
   * Steps of linear warmup, an integer in `[0, totalSteps)`: step `s < warmupSteps` uses
   * `baseLr * (s + 1) / warmupSteps`. Default `0`.
   */
  warmupSteps?: number;
  /** For `'step'`: steps between decays (counted after warmup), an integer `>= 1`. Required for `'step'`. */
  stepSize?: number;
  /** For `'step'`: the factor applied every `stepSize` steps, in `(0, 1]`. Default `0.1`. */
  gamma?: number;
  /** For `'cosine'`: the floor reached at `totalSteps`, in `[0, baseLr]`. Default `0`. */
  minLr?: number;
}

/** {@link ScheduleOptions} with every default filled in. */
export type ResolvedScheduleOptions = Required<Omit<ScheduleOptions, 'stepSize'>> & { stepSize?: number };

/** The defaults of {@link ScheduleOptions}. */
export const SCHEDULE_DEFAULTS = Object.freeze({ warmupSteps: 0, gamma: 0.1, minLr: 0 });

function fail(name: string, expected: string, value: unknown): never {
  throw new InvalidOptionError(
    `Expected ${expected} for schedule option ${name} but received ${describeValue(value)}.`,
  );
}

function isInteger(value: unknown, min: number): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= min;
}

/**
 * Validates schedule options and fills in the defaults.
 *
 * @throws UnknownNameError for an unknown `name`.
 * @throws InvalidOptionError for a value out of range (the message quotes it).
 * @example
 * resolveScheduleOptions({ name: 'cosine', baseLr: 1e-3, totalSteps: 1000 }).minLr; // 0
 */
export function resolveScheduleOptions(options: ScheduleOptions): ResolvedScheduleOptions {
  const { name, baseLr, totalSteps } = options;
  if (!(SCHEDULE_NAMES as readonly string[]).includes(name))
    throw unknownName('schedule', String(name), SCHEDULE_NAMES);
  if (!(typeof baseLr === 'number' && Number.isFinite(baseLr) && baseLr > 0)) fail('baseLr', 'a number > 0', baseLr);
  if (!isInteger(totalSteps, 1)) fail('totalSteps', 'an integer >= 1', totalSteps);
  const warmupSteps = options.warmupSteps ?? SCHEDULE_DEFAULTS.warmupSteps;
  if (!isInteger(warmupSteps, 0) || warmupSteps >= totalSteps) {
    fail('warmupSteps', `an integer in [0, ${totalSteps - 1}] (less than totalSteps)`, warmupSteps);
  }
  const gamma = options.gamma ?? SCHEDULE_DEFAULTS.gamma;
  if (!(typeof gamma === 'number' && gamma > 0 && gamma <= 1)) fail('gamma', 'a number in (0, 1]', gamma);
  const minLr = options.minLr ?? SCHEDULE_DEFAULTS.minLr;
  if (!(typeof minLr === 'number' && minLr >= 0 && minLr <= baseLr)) {
    fail('minLr', `a number in [0, ${baseLr}] (at most baseLr)`, minLr);
  }
  const stepSize = options.stepSize;
  if (name === 'step' && stepSize === undefined) {
    throw new InvalidOptionError(
      `Expected an integer >= 1 for schedule option stepSize but received undefined.`,
      `The 'step' schedule needs stepSize: the number of steps between two decays by gamma.`,
    );
  }
  if (stepSize !== undefined && !isInteger(stepSize, 1)) fail('stepSize', 'an integer >= 1', stepSize);
  return { name, baseLr, totalSteps, warmupSteps, gamma, minLr, stepSize };
}

/**
 * Makes a learning-rate schedule. With `t = step - warmupSteps` and `T = totalSteps - warmupSteps`:
 *
 * - warmup, `step < warmupSteps`: `baseLr * (step + 1) / warmupSteps` (reaches `baseLr` on the last warmup step);
 * - `'constant'`: `baseLr`;
 * - `'step'`: `baseLr * gamma ^ floor(t / stepSize)`;
 * - `'cosine'`: `minLr + (baseLr - minLr) * (1 + cos(pi * t / T)) / 2`, and `minLr` from `totalSteps` on.
 *
 * A run bounded by time rather than steps passes `progress`, the share of the run done (`0..1`, e.g. the share of a
 * time budget spent): `'cosine'` then uses it in place of `t / T`, so the rate reaches `minLr` when the budget ends
 * however many steps fit in it.
 *
 * @param options see {@link ScheduleOptions}; validated once, here.
 * @returns `(step, progress?) => learningRate`, for integer steps `>= 0` and an optional progress in `[0, 1]`.
 * @throws UnknownNameError for an unknown schedule name.
 * @throws InvalidOptionError for an option out of range; the returned function throws it for a negative or
 *   non-integer step.
 * @example
 * const lr = makeSchedule({ name: 'cosine', baseLr: 1e-3, totalSteps: 1000, warmupSteps: 50 });
 * setLearningRate(optimizer, lr(step));
 */
export function makeSchedule(options: ScheduleOptions): (step: number, progress?: number) => number {
  const { name, baseLr, totalSteps, warmupSteps, gamma, minLr, stepSize } = resolveScheduleOptions(options);
  const span = totalSteps - warmupSteps;
  const afterWarmup: (t: number) => number =
    name === 'constant'
      ? () => baseLr
      : name === 'step'
        ? (t) => baseLr * Math.pow(gamma, Math.floor(t / (stepSize as number)))
        : (t) => cosine(t / span);
  const cosine = (share: number) =>
    share >= 1 ? minLr : minLr + ((baseLr - minLr) * (1 + Math.cos(Math.PI * Math.max(0, share)))) / 2;
  return (step: number, progress?: number): number => {
    if (!isInteger(step, 0)) {
      throw new InvalidOptionError(
        `Expected an integer >= 0 for the step of a learning-rate schedule but received ${describeValue(step)}.`,
      );
    }
    if (step < warmupSteps) return (baseLr * (step + 1)) / warmupSteps;
    if (progress !== undefined && name === 'cosine') return cosine(progress);
    return afterWarmup(step - warmupSteps);
  };
}
