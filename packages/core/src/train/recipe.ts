/**
 * The parts of the default recipe that decide how a run spends its time: the clock that bounds a run by a time
 * budget (step by step) and tells the schedule how far the run is, when to validate, and an exponential moving
 * average of the weights. Chosen by experiment on MoNuSeg and ISBI 2012 (see `bench/quality-vs-pytorch.mjs`).
 */
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import type { ResolvedTrainOptions } from './trainer.js';

/** Validations a time-bounded run aims at, spread over its budget. */
export const VALIDATIONS_PER_BUDGET = 16;
/** Most of a time budget that validation may take: validations are spaced so that each costs at most this share. */
export const VALIDATION_SHARE = 0.1;

/**
 * The clock of a training run: time spent (including earlier sessions of a resumed run), the recent step time, the
 * share of the run done, and whether one more step fits in the time budget.
 */
export class TrainingClock {
  private readonly stepTimes: number[] = [];
  private lastValidationAt: number;
  private lastValidationSeconds = 0;

  /**
   * @param budgetSeconds the time budget, or `null` for none.
   * @param maxSteps the step bound (`epochs * stepsPerEpoch`).
   * @param spentBefore seconds spent before this session (a resumed run).
   * @param startedAt when this session started (`performance.now()`), e.g. before the data was read.
   */
  constructor(
    readonly budgetSeconds: number | null,
    readonly maxSteps: number,
    private readonly spentBefore = 0,
    private readonly startedAt = performance.now(),
  ) {
    this.lastValidationAt = spentBefore;
  }

  /** Seconds spent on the run so far. */
  elapsed(): number {
    return this.spentBefore + (performance.now() - this.startedAt) / 1000;
  }

  /** Records the duration of one optimisation step. */
  recordStep(seconds: number): void {
    this.stepTimes.push(seconds);
    if (this.stepTimes.length > 20) this.stepTimes.shift();
  }

  /** Records a validation that just ended and took `seconds`. */
  recordValidation(seconds: number): void {
    this.lastValidationAt = this.elapsed();
    this.lastValidationSeconds = seconds;
  }

  /** The median of the recent step times (seconds; 0 before the first step). */
  stepSeconds(): number {
    if (this.stepTimes.length === 0) return 0;
    const sorted = [...this.stepTimes].sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)];
  }

  /** Share of the run done after `step` steps, in `[0, 1]`: of the step bound or of the time budget, the larger. */
  progress(step: number): number {
    const bySteps = step / this.maxSteps;
    const byTime = this.budgetSeconds === null ? 0 : this.elapsed() / this.budgetSeconds;
    return Math.min(1, Math.max(bySteps, byTime));
  }

  /** Whether one more step, at the recent step time, would end past the budget. The first step always runs. */
  budgetSpent(): boolean {
    if (this.budgetSeconds === null || this.stepTimes.length === 0) return false;
    return this.elapsed() + this.stepSeconds() > this.budgetSeconds;
  }

  /** Steps that fit in the rest of the budget at the recent step time (`Infinity` without a budget). */
  stepsLeft(): number {
    if (this.budgetSeconds === null) return Infinity;
    const step = this.stepSeconds();
    return step > 0 ? Math.max(0, Math.floor((this.budgetSeconds - this.elapsed()) / step)) : Infinity;
  }

  /**
   * Whether a time-bounded run should validate now: when `budget / VALIDATIONS_PER_BUDGET` has passed since the last
   * validation, and at least the time that keeps validation within {@link VALIDATION_SHARE} of the run.
   */
  validationDue(): boolean {
    if (this.budgetSeconds === null) return false;
    const interval = Math.max(
      this.budgetSeconds / VALIDATIONS_PER_BUDGET,
      (this.lastValidationSeconds * (1 - VALIDATION_SHARE)) / VALIDATION_SHARE,
    );
    return this.elapsed() - this.lastValidationAt >= interval;
  }
}

/**
 * An exponential moving average of a model's trainable weights (Polyak averaging), with the warm-up of
 * `tf.train.ExponentialMovingAverage(num_updates)`: the decay after `n` updates is `min(decay, (1 + n) / (10 + n))`,
 * so the average follows the weights closely early on.
 *
 * @example
 * const average = new WeightAverage(model, 0.99);
 * // after each optimizer step:
 * average.update();
 * const report = await average.swapped(() => evaluate(model));
 */
export class WeightAverage {
  private readonly variables: tf.Variable[];
  private readonly shadows: tf.Variable[];
  private updates = 0;

  /**
   * @param model the model whose trainable weights are averaged.
   * @param decay the decay, in `(0, 1)`.
   * @param state averaged values and update count to continue from (a resumed run), in trainable-weight order.
   */
  constructor(
    model: tfl.LayersModel,
    readonly decay: number,
    state?: { values: tf.Tensor[]; updates: number },
  ) {
    this.variables = model.trainableWeights.map((w) => w.read() as tf.Variable);
    this.shadows = this.variables.map((v, i) => tf.variable(state ? state.values[i] : v, false));
    this.updates = state?.updates ?? 0;
  }

  /** Number of updates so far. */
  get count(): number {
    return this.updates;
  }

  /** Folds the current weights into the average, but those of `frozen` (indices of unchanged weights). */
  update(frozen?: ReadonlySet<number>): void {
    const d = Math.min(this.decay, (1 + this.updates) / (10 + this.updates));
    tf.tidy(() => {
      this.shadows.forEach((s, i) => {
        if (!frozen?.has(i)) s.assign(tf.add(tf.mul(s, d), tf.mul(this.variables[i], 1 - d)));
      });
    });
    this.updates++;
  }

  /** The averaged values, in trainable-weight order (for checkpoints). */
  values(): tf.Tensor[] {
    return this.shadows;
  }

  /** Runs `fn` with the averaged weights in the model, then puts the trained weights back. */
  async swapped<T>(fn: () => Promise<T>): Promise<T> {
    const saved = this.variables.map((v) => tf.clone(v));
    this.variables.forEach((v, i) => v.assign(this.shadows[i]));
    try {
      return await fn();
    } finally {
      this.variables.forEach((v, i) => v.assign(saved[i]));
      tf.dispose(saved);
    }
  }

  dispose(): void {
    tf.dispose(this.shadows);
  }
}

/**
 * Mean Dice over the classes but the background (the class map's, see `backgroundClass`), NaN entries skipped; over
 * every class when there is no background class.
 *
 * @param dice Dice of each class, in class order.
 * @param background index of the background class, or -1 for none.
 * @example
 * foregroundDice([0.98, 0.81], 0); // 0.81
 */
export function foregroundDice(dice: readonly number[], background: number): number {
  const classes = dice.filter((_, i) => i !== background || dice.length === 1);
  const defined = classes.filter((d) => Number.isFinite(d));
  return defined.length ? defined.reduce((s, d) => s + d, 0) / defined.length : NaN;
}

/** What the run expects to do, from the step time measured so far (validation taking up to its share of the rest). */
export function describeSteps(clock: TrainingClock, step: number, maxSteps: number, epochs: number): string {
  const seconds = clock.stepSeconds();
  if (clock.budgetSeconds === null)
    return `${maxSteps} steps (${epochs} epochs) at about ${seconds.toFixed(2)} s a step`;
  const expected = Math.min(maxSteps, step + Math.floor(clock.stepsLeft() * (1 - VALIDATION_SHARE)));
  return `about ${expected} steps in the ${Number((clock.budgetSeconds / 60).toPrecision(3))}-minute budget at ${seconds.toFixed(2)} s a step${expected >= maxSteps ? ` (bounded by ${epochs} epochs)` : ''}`;
}

/** The learning-rate schedule in words. */
export function describeSchedule(o: ResolvedTrainOptions, budgetSeconds: number | null): string {
  const warmup = o.warmupSteps > 0 ? ` after ${o.warmupSteps} warm-up steps` : '';
  if (o.schedule === 'cosine') {
    return `${o.optimizer}, learning rate ${o.lr} decaying on a half cosine to 0${warmup}, ending at the ${budgetSeconds === null ? 'last step' : 'end of the budget (or the last epoch, whichever is first)'}`;
  }
  return `${o.optimizer}, learning rate ${o.lr}, ${o.schedule} schedule${warmup}`;
}

/** When and on what the run validates, in words. */
export function describeValidation(
  o: ResolvedTrainOptions,
  samples: number,
  stepsPerEpoch: number,
  budgetSeconds: number | null,
): string {
  const on = samples
    ? `on ${samples} whole validation image${samples === 1 ? '' : 's'}`
    : 'on the training loss (no validation images)';
  const when =
    o.validateEvery !== null
      ? `every ${o.validateEvery} steps`
      : budgetSeconds !== null
        ? `every ${(budgetSeconds / VALIDATIONS_PER_BUDGET / 60).toFixed(1)} minutes or more (at most ${Math.round(VALIDATION_SHARE * 100)}% of the time)`
        : `every epoch (${stepsPerEpoch} steps)`;
  return `${when} and after the last step, ${on}`;
}
