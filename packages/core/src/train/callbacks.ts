/**
 * The callbacks that persist and report a training run: the best weights as the model, the history (CSV, JSON,
 * charts), checkpoints for `--resume`, and progress events. Scheduling callbacks (validation, time budget, early
 * stopping) are in `loop.ts`.
 */
import { join } from 'node:path';
import { CHECKPOINTS, pruneCheckpoints } from './checkpoints.js';
import { writeHistory } from './history.js';
import type { TrainingCallback } from './loop.js';
import type { EpochRecord, TrainEvent } from './options.js';

/** Saves the model folder (`save`) after every validation that is the best so far. */
export function bestModelSaver(save: () => Promise<unknown>): TrainingCallback {
  return {
    async afterValidation(_ctx, _record, best) {
      if (best) await save();
    },
  };
}

/** Writes `history.csv`, `history.json` and the loss and metric charts after every validation. */
export function historyWriter(out: string, history: readonly EpochRecord[]): TrainingCallback {
  return {
    async afterValidation() {
      await writeHistory(out, [...history]);
    },
  };
}

/**
 * Writes a checkpoint (`save(dir)`: weights, optimizer state, run state) under `<out>/checkpoints/step-NNNNNNN` after
 * every validation, and keeps the newest `keep` besides the best.
 */
export function checkpointer(out: string, keep: number, save: (dir: string) => Promise<void>): TrainingCallback {
  return {
    async afterValidation(ctx) {
      await save(join(out, CHECKPOINTS, `step-${String(ctx.step).padStart(7, '0')}`));
      await pruneCheckpoints(join(out, CHECKPOINTS), keep);
    },
  };
}

/**
 * Emits the `step` and `epoch` events, and the `plan` (`plan()`, which emits once) after the third step, when the step
 * time is known, or after the last step of a shorter run.
 */
export function progressEvents(
  emit: (event: TrainEvent) => void,
  seconds: () => number,
  plan: () => void,
): TrainingCallback {
  return {
    afterStep(ctx, { epoch, loss, lr }) {
      const stepInEpoch = ctx.step - (epoch - 1) * ctx.stepsPerEpoch;
      emit({ type: 'step', epoch, step: stepInEpoch, stepsPerEpoch: ctx.stepsPerEpoch, loss, lr, seconds: seconds() });
      if (ctx.step >= 3) plan();
    },
    afterValidation(_ctx, record, best) {
      emit({ type: 'epoch', record, best });
    },
    afterSteps() {
      plan();
    },
  };
}
