/**
 * The training loop and its callbacks (Keras's and Ignite's model): the loop only steps and validates; when to
 * validate, when to stop, what to save and what to report are callbacks, each small and on its own.
 */
import type { EpochRecord } from './options.js';
import type { TrainingClock } from './recipe.js';

/** What the loop tells its callbacks, and how they steer it. */
export interface LoopContext {
  /** Optimizer steps done. */
  readonly step: number;
  readonly stepsPerEpoch: number;
  /** The step bound (`epochs * stepsPerEpoch`). */
  readonly maxSteps: number;
  /** Ends the loop before the next step, with this reason (the first reason given wins). */
  stop(reason: string): void;
  /** Validates after this step. */
  validate(): void;
}

/** One training step's outcome. */
export interface StepRecord {
  /** 1-based epoch the step fell in. */
  epoch: number;
  loss: number;
  lr: number;
}

/** A training callback: any of the hooks, each called in the order the callbacks are listed. */
export interface TrainingCallback {
  /** Before each step (a time budget stops the loop here). */
  beforeStep?(ctx: LoopContext): void;
  /** After each step (validation schedules ask for a validation here). */
  afterStep?(ctx: LoopContext, record: StepRecord): void | Promise<void>;
  /** After each validation, with its history row and whether it is the best so far. */
  afterValidation?(ctx: LoopContext, record: EpochRecord, best: boolean): void | Promise<void>;
  /** Once, after the last step and before the final validation, with the reason the loop stopped. */
  afterSteps?(ctx: LoopContext, stopReason: string): void | Promise<void>;
}

/** What {@link runTrainingLoop} needs besides its callbacks. */
export interface LoopSpec {
  /** Steps already done (a resumed run). */
  startStep: number;
  stepsPerEpoch: number;
  maxSteps: number;
  /** Epochs asked for, for the reason `reached N epochs`. */
  epochs: number;
  /** Runs step `step` (0-based) and returns its loss and learning rate. */
  step(step: number): Promise<{ loss: number; lr: number }>;
  /** Validates the weights after `step` steps: the history row and whether it is the best so far. */
  validate(step: number): Promise<{ record: EpochRecord; best: boolean }>;
  callbacks: TrainingCallback[];
  signal?: AbortSignal;
}

/**
 * Steps until a callback stops the loop, the step bound is reached or `signal` aborts, validating when a callback
 * asks; then validates once more when steps ran since the last validation (unless interrupted), so a time-bounded run
 * keeps the weights of its very end when they are best.
 * @returns why it stopped (`reached N epochs` when nothing else stopped it).
 */
export async function runTrainingLoop(spec: LoopSpec): Promise<string> {
  let step = spec.startStep;
  let stopReason: string | null = null;
  let validateNow = false;
  const ctx: LoopContext = {
    get step() {
      return step;
    },
    stepsPerEpoch: spec.stepsPerEpoch,
    maxSteps: spec.maxSteps,
    stop: (reason) => {
      stopReason ??= reason;
    },
    validate: () => {
      validateNow = true;
    },
  };
  const validate = async () => {
    const { record, best } = await spec.validate(step);
    for (const callback of spec.callbacks) await callback.afterValidation?.(ctx, record, best);
  };
  let lastValidated = step;
  for (;;) {
    if (spec.signal?.aborted) {
      stopReason = 'interrupted';
      break;
    }
    if (step >= spec.maxSteps) break;
    for (const callback of spec.callbacks) callback.beforeStep?.(ctx);
    if (stopReason !== null) break;
    const epoch = Math.floor(step / spec.stepsPerEpoch) + 1;
    const { loss, lr } = await spec.step(step);
    step++;
    for (const callback of spec.callbacks) await callback.afterStep?.(ctx, { epoch, loss, lr });
    if (validateNow) {
      validateNow = false;
      lastValidated = step;
      await validate();
      if (stopReason !== null) break;
    }
  }
  const reason: string = stopReason ?? `reached ${spec.epochs} epochs`;
  for (const callback of spec.callbacks) await callback.afterSteps?.(ctx, reason);
  if (reason !== 'interrupted' && step > lastValidated) await validate();
  return reason;
}

/**
 * When to validate: every `every` steps when set; else, with a time budget, when the clock says (spread over the
 * budget); else at the end of every epoch.
 */
export function validationSchedule(every: number | null, clock: TrainingClock | null): TrainingCallback {
  return {
    afterStep(ctx) {
      const due =
        every !== null
          ? ctx.step % every === 0
          : clock !== null
            ? clock.validationDue()
            : ctx.step % ctx.stepsPerEpoch === 0;
      if (due) ctx.validate();
    },
  };
}

/** Stops before a step that would end past the time budget (see {@link TrainingClock.budgetSpent}). */
export function timeBudget(clock: TrainingClock, minutes: number): TrainingCallback {
  return {
    beforeStep(ctx) {
      if (clock.budgetSpent()) ctx.stop(`time budget of ${minutes} minutes`);
    },
  };
}

/**
 * Stops when `patience` validations in a row were not the best (the count lives in `state`, so a resumed run carries
 * it on); `metric` names the selection metric in the reason.
 */
export function earlyStopping(
  patience: number,
  metric: string,
  state: { validationsWithoutImprovement: number },
): TrainingCallback {
  return {
    afterValidation(ctx, _record, best) {
      state.validationsWithoutImprovement = best ? 0 : state.validationsWithoutImprovement + 1;
      if (patience > 0 && state.validationsWithoutImprovement >= patience) {
        ctx.stop(`early stopping: ${metric} did not improve for ${patience} validations`);
      }
    },
  };
}
