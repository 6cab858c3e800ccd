/**
 * Optimizers by name, with a learning rate that can be changed at every step (for the schedules of
 * `schedules.ts`) and optional decoupled weight decay.
 */
import * as tf from '@tensorflow/tfjs-core';

import { ADAM_UPDATE } from '../engine/gradients.js';
import { InvalidOptionError, describeValue, unknownName } from '../errors.js';

/** Names of the optimizers. */
export type OptimizerName = 'adam' | 'sgd' | 'rmsprop';

/** The optimizer names {@link createOptimizer} accepts. */
export const OPTIMIZER_NAMES: readonly OptimizerName[] = Object.freeze(['adam', 'sgd', 'rmsprop'] as const);

/** Options of {@link createOptimizer}; each optimizer reads the fields it uses. */
export interface OptimizerOptions {
  /**
   * Momentum, in `[0, 1)`. `sgd`: default `0.9` (`0` gives plain gradient descent); `rmsprop`: default `0`.
   */
  momentum?: number;
  /** `adam`: decay of the first-moment estimate, in `[0, 1)`. Default `0.9`. */
  beta1?: number;
  /** `adam`: decay of the second-moment estimate, in `[0, 1)`. Default `0.999`. */
  beta2?: number;
  /** `adam`, `rmsprop`: term added to the denominator, `> 0`. Default: the backend's epsilon (`1e-7` in float32). */
  epsilon?: number;
  /**
   * Decoupled weight decay (as in AdamW), `>= 0`: before each update every updated variable is multiplied by
   * `1 - learningRate * weightDecay`. Default `0` (off).
   */
  weightDecay?: number;
}

/** The defaults of {@link OptimizerOptions}. */
export const OPTIMIZER_DEFAULTS = Object.freeze({
  sgdMomentum: 0.9,
  rmspropMomentum: 0,
  beta1: 0.9,
  beta2: 0.999,
  weightDecay: 0,
});

/** The field in which every tfjs optimizer keeps its learning rate (declared `protected` in the typings). */
interface WithLearningRate {
  learningRate: number;
  /** Present on SGD and Momentum, which also cache the scalar `-learningRate` in a field `c`. */
  setLearningRate?: (learningRate: number) => void;
}

function checkLearningRate(context: string, lr: number, allowZero: boolean): void {
  if (!(typeof lr === 'number' && Number.isFinite(lr) && (allowZero ? lr >= 0 : lr > 0))) {
    throw new InvalidOptionError(
      `Expected a finite number ${allowZero ? '>= 0' : '> 0'} for the learning rate in ${context} ` +
        `but received ${describeValue(lr)}.`,
    );
  }
}

function checkRange(name: string, value: number | undefined, expected: string, ok: (v: number) => boolean): void {
  if (value !== undefined && !(typeof value === 'number' && Number.isFinite(value) && ok(value))) {
    throw new InvalidOptionError(
      `Expected ${expected} for optimizer option ${name} but received ${describeValue(value)}.`,
    );
  }
}

/**
 * Creates a tfjs optimizer by name: `'adam'` (`tf.train.adam`), `'sgd'` (`tf.train.momentum`, or `tf.train.sgd` when
 * `momentum` is 0) or `'rmsprop'` (`tf.train.rmsprop`, decay 0.9, not centered).
 *
 * @param name one of {@link OPTIMIZER_NAMES}.
 * @param lr the initial learning rate, `> 0`; change it later with {@link setLearningRate}.
 * @param options see {@link OptimizerOptions}.
 * @returns the optimizer; call `dispose()` on it when training ends.
 * @throws UnknownNameError for an unknown name (the message lists the valid names).
 * @throws InvalidOptionError for a learning rate or option out of range.
 * @example
 * const optimizer = createOptimizer('adam', 1e-3, { weightDecay: 1e-4 });
 * optimizer.minimize(() => loss(model.apply(x) as tf.Tensor4D, y));
 */
export function createOptimizer(name: string, lr: number, options: OptimizerOptions = {}): tf.Optimizer {
  if (!(OPTIMIZER_NAMES as readonly string[]).includes(name)) throw unknownName('optimizer', name, OPTIMIZER_NAMES);
  checkLearningRate('createOptimizer', lr, false);
  const unit = (v: number): boolean => v >= 0 && v < 1;
  checkRange('momentum', options.momentum, 'a number in [0, 1)', unit);
  checkRange('beta1', options.beta1, 'a number in [0, 1)', unit);
  checkRange('beta2', options.beta2, 'a number in [0, 1)', unit);
  checkRange('epsilon', options.epsilon, 'a number > 0', (v) => v > 0);
  checkRange('weightDecay', options.weightDecay, 'a number >= 0', (v) => v >= 0);

  let optimizer: tf.Optimizer;
  if (name === 'adam') {
    optimizer = tf.train.adam(
      lr,
      options.beta1 ?? OPTIMIZER_DEFAULTS.beta1,
      options.beta2 ?? OPTIMIZER_DEFAULTS.beta2,
      options.epsilon,
    );
    fuseAdam(optimizer as tf.AdamOptimizer);
  } else if (name === 'sgd') {
    const momentum = options.momentum ?? OPTIMIZER_DEFAULTS.sgdMomentum;
    optimizer = momentum === 0 ? tf.train.sgd(lr) : tf.train.momentum(lr, momentum);
  } else {
    optimizer = tf.train.rmsprop(lr, 0.9, options.momentum ?? OPTIMIZER_DEFAULTS.rmspropMomentum, options.epsilon);
  }

  const weightDecay = options.weightDecay ?? OPTIMIZER_DEFAULTS.weightDecay;
  if (weightDecay > 0) addDecoupledWeightDecay(optimizer, weightDecay);
  return optimizer;
}

/** The fields of tfjs's `AdamOptimizer` that {@link fuseAdam} reads and updates. */
interface AdamState {
  learningRate: number;
  beta1: number;
  beta2: number;
  epsilon: number;
  accBeta1: tf.Variable;
  accBeta2: tf.Variable;
  accumulatedFirstMoment: { originalName: string; variable: tf.Variable }[];
  accumulatedSecondMoment: { originalName: string; variable: tf.Variable }[];
  incrementIterations(): void;
}

/**
 * Replaces an Adam optimizer's `applyGradients` by one JavaScript pass per variable that performs tfjs's own float32
 * operations in tfjs's order, each result rounded to float32 (`Math.fround`), so weights and moments get the same
 * bits as with tfjs's `AdamOptimizer` (tested on the cpu and wasm engines), from 3 tensor writes per variable instead
 * of 14 operations: on wasm, networks of many small layers (DeepLabv3+: 260 weight tensors) spent a noticeable part of
 * each step dispatching them. On the wasm engine the pass is one SIMD kernel ({@link ADAM_UPDATE}): the scalar pass
 * over FCN-8s's 2.6 million weights took 80 ms, while the training workers waited for the new weights. The moments stay the optimizer's variables, so `getWeights`/`setWeights` are unchanged.
 */
function fuseAdam(optimizer: tf.AdamOptimizer): void {
  const adam = optimizer as unknown as AdamState;
  const f = Math.fround;
  optimizer.applyGradients = (variableGradients: Parameters<tf.Optimizer['applyGradients']>[0]): void => {
    const names = Array.isArray(variableGradients)
      ? variableGradients.map((v) => v.name)
      : Object.keys(variableGradients);
    const [b1, b2, c1, c2] = [f(adam.beta1), f(adam.beta2), f(1 - adam.beta1), f(1 - adam.beta2)];
    const eps = f(adam.epsilon);
    const step = f(-adam.learningRate);
    const acc1 = adam.accBeta1.dataSync()[0];
    const acc2 = adam.accBeta2.dataSync()[0];
    const [d1, d2] = [f(1 - acc1), f(1 - acc2)];
    const simd = tf.getBackend() === 'wasm' && tf.getKernel(ADAM_UPDATE, 'wasm') !== undefined;
    tf.tidy(() => {
      names.forEach((name, i) => {
        const value = tf.engine().registeredVariables[name];
        adam.accumulatedFirstMoment[i] ??= {
          originalName: `${name}/m`,
          variable: tf.tidy(() => tf.zerosLike(value).variable(false)),
        };
        adam.accumulatedSecondMoment[i] ??= {
          originalName: `${name}/v`,
          variable: tf.tidy(() => tf.zerosLike(value).variable(false)),
        };
        const gradient = Array.isArray(variableGradients) ? variableGradients[i].tensor : variableGradients[name];
        if (gradient == null) return;
        const first = adam.accumulatedFirstMoment[i].variable;
        const second = adam.accumulatedSecondMoment[i].variable;
        if (simd) {
          // The same operations as below, in one SIMD pass on the wasm heap.
          const coefficients = [b1, b2, c1, c2, eps, step, d1, d2];
          const inputs = { w: value, g: gradient, m: first, v: second };
          const [nw, nm, nv] = tf.engine().runKernel(ADAM_UPDATE, inputs, { coefficients }) as tf.Tensor[];
          first.assign(nm);
          second.assign(nv);
          value.assign(nw);
          return;
        }
        const w = value.dataSync() as Float32Array;
        const g = gradient.dataSync() as Float32Array;
        const m = first.dataSync() as Float32Array;
        const v = second.dataSync() as Float32Array;
        const n = w.length;
        const [nw, nm, nv] = [new Float32Array(n), new Float32Array(n), new Float32Array(n)];
        for (let j = 0; j < n; j++) {
          const gj = g[j];
          const mj = f(f(m[j] * b1) + f(gj * c1));
          const vj = f(f(v[j] * b2) + f(f(gj * gj) * c2));
          nm[j] = mj;
          nv[j] = vj;
          const denominator = f(f(Math.sqrt(f(vj / d2))) + eps);
          nw[j] = f(f(f(f(mj / d1) / denominator) * step) + w[j]);
        }
        first.assign(tf.tensor(nm, first.shape));
        second.assign(tf.tensor(nv, second.shape));
        value.assign(tf.tensor(nw, value.shape));
      });
      adam.accBeta1.assign(tf.scalar(f(acc1 * b1)));
      adam.accBeta2.assign(tf.scalar(f(acc2 * b2)));
    });
    adam.incrementIterations();
  };
}

/** Wraps `applyGradients` so that each updated variable is first scaled by `1 - lr * weightDecay`. */
function addDecoupledWeightDecay(optimizer: tf.Optimizer, weightDecay: number): void {
  const apply = optimizer.applyGradients.bind(optimizer);
  optimizer.applyGradients = (variableGradients: Parameters<tf.Optimizer['applyGradients']>[0]): void => {
    const names = Array.isArray(variableGradients)
      ? variableGradients.filter((g) => g.tensor != null).map((g) => g.name)
      : Object.keys(variableGradients).filter((n) => variableGradients[n] != null);
    const factor = 1 - getLearningRate(optimizer) * weightDecay;
    const variables = tf.engine().registeredVariables;
    tf.tidy(() => {
      for (const n of names) {
        const variable = variables[n];
        if (variable !== undefined) variable.assign(tf.mul(variable, factor));
      }
    });
    apply(variableGradients);
  };
}

/**
 * The learning rate the optimizer uses for its next step.
 *
 * @example
 * getLearningRate(createOptimizer('sgd', 0.1)); // 0.1
 */
export function getLearningRate(optimizer: tf.Optimizer): number {
  return (optimizer as unknown as WithLearningRate).learningRate;
}

/**
 * Sets the learning rate used by the optimizer's next steps. tfjs optimizers keep it in a `learningRate` field that
 * Adam and RMSProp read at every step, while SGD and Momentum also cache `-learningRate` as a scalar tensor `c`: for
 * those, their own `setLearningRate` is called, which replaces `c` (and disposes the old one).
 *
 * @param optimizer an optimizer from {@link createOptimizer} (or any `tf.train.*` optimizer).
 * @param lr the new learning rate, `>= 0`.
 * @throws InvalidOptionError for a negative or non-finite learning rate.
 * @example
 * const schedule = makeSchedule({ name: 'cosine', baseLr: 1e-3, totalSteps });
 * for (let step = 0; step < totalSteps; step++) {
 *   setLearningRate(optimizer, schedule(step));
 *   optimizer.minimize(lossFn);
 * }
 */
export function setLearningRate(optimizer: tf.Optimizer, lr: number): void {
  checkLearningRate('setLearningRate', lr, true);
  const target = optimizer as unknown as WithLearningRate;
  if (typeof target.setLearningRate === 'function') target.setLearningRate(lr);
  else target.learningRate = lr;
}

/**
 * Restores optimizer state saved with `optimizer.getWeights()` so that the following steps give the same bits as if
 * training had not stopped. tfjs's `AdamOptimizer.setWeights` sets its bias-correction powers to
 * `pow(beta, iterations + 1)`, which can differ in the last bit from the float32 product `beta * beta * ...` that an
 * uninterrupted run accumulates one step at a time (for `beta2 = 0.999`, after 2 or 5 steps); this redoes the product.
 *
 * @param optimizer an optimizer from {@link createOptimizer}, with the configuration of the one that was saved.
 * @param weights what `getWeights()` returned (the iteration count first).
 * @example
 * const saved = await optimizer.getWeights();
 * await setOptimizerWeights(createOptimizer('adam', 1e-3), saved);
 */
export async function setOptimizerWeights(
  optimizer: tf.Optimizer,
  weights: Parameters<tf.Optimizer['setWeights']>[0],
): Promise<void> {
  await optimizer.setWeights(weights);
  if (optimizer.getClassName() !== 'Adam') return;
  const adam = optimizer as unknown as {
    beta1: number;
    beta2: number;
    accBeta1: tf.Variable;
    accBeta2: tf.Variable;
    iterations: number;
  };
  // Adam starts from beta and multiplies by beta after each step, in float32 (a float32 product is fround(a * b)).
  const product = (beta: number): number => {
    const b = Math.fround(beta);
    let acc = b;
    for (let i = 0; i < adam.iterations; i++) acc = Math.fround(acc * b);
    return acc;
  };
  tf.tidy(() => {
    adam.accBeta1.assign(tf.scalar(product(adam.beta1)));
    adam.accBeta2.assign(tf.scalar(product(adam.beta2)));
  });
}

/** A named tensor of an optimizer's weights. */
type NamedTensor = Parameters<tf.Optimizer['setWeights']>[0][number];

/** One group of a {@link GroupedOptimizer}: its own optimizer and its share of the learning rate. */
export interface OptimizerGroup {
  optimizer: tf.Optimizer;
  /** The group's learning rate over the base learning rate. */
  factor: number;
}

/**
 * Optimizers of the same kind over groups of variables, each at its own share of the learning rate (e.g. a lower rate
 * for the layers of a pretrained model). Gradients go to their variable's group in the order given, so each group's
 * optimizer sees its variables in a fixed order (tfjs optimizers keep their state by position). Its weights are the
 * groups' weights, named `group<i>/<name>`, for checkpoints.
 */
export class GroupedOptimizer extends tf.Optimizer {
  static className = 'GroupedOptimizer';
  private base: number;

  /**
   * @param groups the groups, the first one the default for variables `groupOf` does not place.
   * @param groupOf the group index of a variable (by name).
   * @param lr the base learning rate.
   */
  constructor(
    private readonly groups: readonly OptimizerGroup[],
    private readonly groupOf: (variable: string) => number,
    lr: number,
  ) {
    super();
    this.base = lr;
    this.setLearningRate(lr);
  }

  /** The base learning rate (the first group's is `factor` times it). */
  get learningRate(): number {
    return this.base;
  }

  setLearningRate(lr: number): void {
    this.base = lr;
    for (const group of this.groups) setLearningRate(group.optimizer, lr * group.factor);
  }

  applyGradients(variableGradients: tf.NamedTensorMap | NamedTensor[]): void {
    const entries = Array.isArray(variableGradients)
      ? variableGradients.map((g) => [g.name, g.tensor] as const)
      : Object.entries(variableGradients);
    const parts: tf.NamedTensorMap[] = this.groups.map(() => ({}));
    for (const [name, tensor] of entries) parts[this.groupOf(name)][name] = tensor;
    this.groups.forEach((group, i) => group.optimizer.applyGradients(parts[i]));
  }

  override async getWeights(): Promise<NamedTensor[]> {
    const all: NamedTensor[] = [];
    for (const [i, group] of this.groups.entries()) {
      for (const w of await group.optimizer.getWeights()) all.push({ name: `group${i}/${w.name}`, tensor: w.tensor });
    }
    return all;
  }

  override async setWeights(weights: NamedTensor[]): Promise<void> {
    for (const [i, group] of this.groups.entries()) {
      const prefix = `group${i}/`;
      const mine = weights
        .filter((w) => w.name.startsWith(prefix))
        .map((w) => ({ name: w.name.slice(prefix.length), tensor: w.tensor }));
      await setOptimizerWeights(group.optimizer, mine);
    }
  }

  override dispose(): void {
    for (const group of this.groups) group.optimizer.dispose();
  }

  getConfig(): tf.serialization.ConfigDict {
    return { factors: this.groups.map((g) => g.factor) };
  }
}
