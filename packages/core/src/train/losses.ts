/**
 * Segmentation losses on TensorFlow.js tensors.
 *
 * Every loss takes the model's `probabilities` (softmax output, `[batch, height, width, numClasses]`, float32) and a
 * label map `labels` (`[batch, height, width]`, int32 class indices). A label of `-1` marks a pixel to ignore: it adds
 * nothing to the loss and does not count in the normalization. All losses are built from tfjs ops only, so they are
 * differentiable through tfjs autograd (`tf.grad`, `optimizer.minimize`).
 *
 * Only functional ops are used (`tf.mul(a, b)`, not `a.mul(b)`): importing `@tensorflow/tfjs-core` alone does not
 * install the chained ops.
 *
 * Gradients: tfjs-core 4 does not register gradient functions by itself. Importing `@tensorflow/tfjs-layers` (or
 * `@tensorflow/tfjs-node`) registers all of them; without that, `tf.grad` over these losses fails with
 * "gradient function not found".
 */
import * as tf from '@tensorflow/tfjs-core';

import { fusedSegmentationLoss } from '../engine/gradients.js';
import { InvalidOptionError, describeValue, unknownName } from '../errors.js';

/** Options shared by the losses. Each loss reads the fields it needs and ignores the others. */
export interface LossOptions {
  /**
   * Weight of each class, indexed by class, for cross-entropy and focal loss (and the cross-entropy part of
   * `ce-dice`). Its length must equal `numClasses`. Default: every class weighs 1.
   */
  classWeights?: number[];
  /** Focusing parameter of the focal loss, `>= 0`; `0` gives cross-entropy. Default `2`. */
  gamma?: number;
  /** Smoothing term added to the numerator and denominator of the soft Dice, `>= 0`. Default `1`. */
  smooth?: number;
  /** Probabilities are clipped to `[epsilon, 1 - epsilon]` before logarithms, `0 < epsilon < 0.5`. Default `1e-7`. */
  epsilon?: number;
  /** Weight of the cross-entropy term in `ce-dice`, `>= 0`. Default `1`. */
  ceWeight?: number;
  /** Weight of the Dice term in `ce-dice`, `>= 0`. Default `1`. */
  diceWeight?: number;
}

/** {@link LossOptions} with every default filled in (`classWeights` stays optional: absent means all 1). */
export interface ResolvedLossOptions {
  classWeights?: number[];
  gamma: number;
  smooth: number;
  epsilon: number;
  ceWeight: number;
  diceWeight: number;
}

/** The defaults of {@link LossOptions}. */
export const LOSS_DEFAULTS: Readonly<Omit<ResolvedLossOptions, 'classWeights'>> = Object.freeze({
  gamma: 2,
  smooth: 1,
  epsilon: 1e-7,
  ceWeight: 1,
  diceWeight: 1,
});

/**
 * A loss function: `probabilities` `[batch, height, width, numClasses]` float32 and `labels`
 * `[batch, height, width]` int32 (`-1` = ignore) to a scalar loss.
 */
export type LossFn = (probabilities: tf.Tensor4D, labels: tf.Tensor3D) => tf.Scalar;

/** Names of the registered losses. */
export type LossName = 'cross-entropy' | 'dice' | 'ce-dice' | 'focal';

/** The names {@link getLoss} accepts, in the order they are listed in error messages. */
export const LOSS_NAMES: readonly LossName[] = Object.freeze(['cross-entropy', 'dice', 'ce-dice', 'focal'] as const);

function checkNonNegative(name: string, value: number | undefined): void {
  if (value === undefined) return;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new InvalidOptionError(
      `Expected a finite number >= 0 for loss option ${name} but received ${describeValue(value)}.`,
    );
  }
}

/**
 * Validates loss options and fills in the defaults.
 *
 * @throws InvalidOptionError when a value is out of range (negative `gamma`, `smooth`, weights; `epsilon` outside
 *   `(0, 0.5)`; a class weight that is negative or not finite).
 * @example
 * resolveLossOptions({ gamma: 1 }); // { gamma: 1, smooth: 1, epsilon: 1e-7, ceWeight: 1, diceWeight: 1 }
 */
export function resolveLossOptions(options: LossOptions = {}): ResolvedLossOptions {
  checkNonNegative('gamma', options.gamma);
  checkNonNegative('smooth', options.smooth);
  checkNonNegative('ceWeight', options.ceWeight);
  checkNonNegative('diceWeight', options.diceWeight);
  const epsilon = options.epsilon;
  if (epsilon !== undefined && (typeof epsilon !== 'number' || !(epsilon > 0 && epsilon < 0.5))) {
    throw new InvalidOptionError(
      `Expected a number in (0, 0.5) for loss option epsilon but received ${describeValue(epsilon)}.`,
    );
  }
  const weights = options.classWeights;
  if (weights !== undefined) {
    if (!Array.isArray(weights) || weights.length === 0) {
      throw new InvalidOptionError(
        `Expected a non-empty array of numbers for loss option classWeights but received ${describeValue(weights)}.`,
      );
    }
    weights.forEach((w, i) => {
      if (typeof w !== 'number' || !Number.isFinite(w) || w < 0) {
        throw new InvalidOptionError(
          `Expected a finite number >= 0 for loss option classWeights[${i}] but received ${describeValue(w)}.`,
        );
      }
    });
  }
  return {
    classWeights: weights === undefined ? undefined : [...weights],
    gamma: options.gamma ?? LOSS_DEFAULTS.gamma,
    smooth: options.smooth ?? LOSS_DEFAULTS.smooth,
    epsilon: options.epsilon ?? LOSS_DEFAULTS.epsilon,
    ceWeight: options.ceWeight ?? LOSS_DEFAULTS.ceWeight,
    diceWeight: options.diceWeight ?? LOSS_DEFAULTS.diceWeight,
  };
}

/** Checks ranks and matching shapes; returns `numClasses`. */
function checkShapes(context: string, probabilities: tf.Tensor, labels: tf.Tensor, weights?: number[]): number {
  if (probabilities.rank !== 4) {
    throw new InvalidOptionError(
      `Error in ${context}: probabilities must be rank 4 [batch, height, width, numClasses], ` +
        `but got rank ${probabilities.rank} (shape [${probabilities.shape.join(', ')}]).`,
    );
  }
  if (labels.rank !== 3) {
    throw new InvalidOptionError(
      `Error in ${context}: labels must be rank 3 [batch, height, width], ` +
        `but got rank ${labels.rank} (shape [${labels.shape.join(', ')}]).`,
    );
  }
  const [b, h, w, numClasses] = probabilities.shape;
  if (labels.shape[0] !== b || labels.shape[1] !== h || labels.shape[2] !== w) {
    throw new InvalidOptionError(
      `Error in ${context}: labels shape [${labels.shape.join(', ')}] does not match probabilities shape ` +
        `[${probabilities.shape.join(', ')}]; expected [${b}, ${h}, ${w}].`,
    );
  }
  if (weights !== undefined && weights.length !== numClasses) {
    throw new InvalidOptionError(
      `Error in ${context}: classWeights has ${weights.length} entries but probabilities have ${numClasses} classes.`,
    );
  }
  return numClasses;
}

/** One-hot of the labels (ignored pixels clipped to class 0) `[b, h, w, C]` and the valid-pixel mask `[b, h, w]`. */
function oneHotAndMask(labels: tf.Tensor3D, numClasses: number): { oneHot: tf.Tensor4D; mask: tf.Tensor3D } {
  const labelsInt = labels.dtype === 'int32' ? labels : tf.cast(labels, 'int32');
  const mask = tf.cast(tf.greaterEqual(labelsInt, 0), 'float32') as tf.Tensor3D;
  const safe = tf.maximum(labelsInt, tf.scalar(0, 'int32'));
  const flat = tf.reshape(safe, [-1]) as tf.Tensor1D;
  // int32 one-hot then cast: the wasm backend's OneHot writes integer bits into float32 outputs (tfjs 4.22).
  const oneHot = tf.reshape(tf.cast(tf.oneHot(flat, numClasses), 'float32'), [
    ...labels.shape,
    numClasses,
  ]) as tf.Tensor4D;
  return { oneHot, mask };
}

/** The terms of a segmentation loss and their weights; an absent term is not computed. */
interface LossTerms {
  /** Weight of the (focal) cross-entropy term. */
  ce?: number;
  /** Weight of the Dice term. */
  dice?: number;
  /** Focusing parameter of the cross-entropy term; 0 (default) is plain cross-entropy. */
  gamma?: number;
}

/**
 * Every loss of this module: `ce * (focal) cross-entropy + dice * Dice loss` after one shape check. Without focusing
 * it is one kernel where the engine has it (wasm: the same values to float32 rounding, a fraction of the time), else
 * tensor operations (a term alone is returned unweighted).
 */
function segmentationLoss(
  context: string,
  probabilities: tf.Tensor4D,
  labels: tf.Tensor3D,
  options: ResolvedLossOptions,
  { ce, dice, gamma = 0 }: LossTerms,
): tf.Scalar {
  const numClasses = checkShapes(context, probabilities, labels, ce === undefined ? undefined : options.classWeights);
  if (gamma === 0) {
    const fused = fusedSegmentationLoss(probabilities, labels, {
      ceWeight: ce ?? 0,
      diceWeight: dice ?? 0,
      classWeights: ce === undefined ? [] : (options.classWeights ?? []),
      epsilon: options.epsilon,
      smooth: options.smooth,
    });
    if (fused) return fused;
  }
  return tf.tidy(() => {
    const ceTerm = ce === undefined ? undefined : focalTerm(probabilities, labels, numClasses, gamma, options);
    const diceTerm = dice === undefined ? undefined : softDiceTerm(probabilities, labels, numClasses, options.smooth);
    if (ceTerm === undefined) return diceTerm!;
    if (diceTerm === undefined) return ceTerm;
    return tf.add(tf.mul(ceTerm, ce!), tf.mul(diceTerm, dice!)) as tf.Scalar;
  });
}

/**
 * Per-pixel `weight * (1 - p_y)^gamma * -log(p_y)` summed over valid pixels, divided by the summed weight of the
 * valid pixels. `gamma = 0` gives cross-entropy.
 */
function focalTerm(
  probabilities: tf.Tensor4D,
  labels: tf.Tensor3D,
  numClasses: number,
  gamma: number,
  options: ResolvedLossOptions,
): tf.Scalar {
  return tf.tidy(() => {
    const { oneHot, mask } = oneHotAndMask(labels, numClasses);
    const pTrue = tf.sum(tf.mul(probabilities, oneHot), -1);
    const clipped = tf.clipByValue(pTrue, options.epsilon, 1 - options.epsilon);
    let perPixel = tf.neg(tf.log(clipped));
    if (gamma !== 0) perPixel = tf.mul(tf.pow(tf.sub(1, clipped), gamma), perPixel);
    let pixelWeight: tf.Tensor = mask;
    if (options.classWeights !== undefined) {
      const classWeights = tf.tensor1d(options.classWeights, 'float32');
      pixelWeight = tf.mul(mask, tf.sum(tf.mul(oneHot, classWeights), -1));
    }
    // max(., tiny) instead of divNoNan: divNoNan goes through `equal`, which has no gradient in tfjs.
    return tf.div(tf.sum(tf.mul(perPixel, pixelWeight)), tf.maximum(tf.sum(pixelWeight), 1e-12)) as tf.Scalar;
  });
}

/**
 * Pixel-wise categorical cross-entropy: the mean over non-ignored pixels of `-w[y] * log(p[y])`, normalized by the
 * summed class weights of those pixels (PyTorch's weighted mean; without weights, the plain mean). Probabilities are
 * clipped to `[epsilon, 1 - epsilon]`. When every pixel is ignored the loss is 0.
 *
 * @param probabilities softmax output `[batch, height, width, numClasses]`, float32.
 * @param labels class indices `[batch, height, width]`, int32, `-1` = ignore; must be `< numClasses`.
 * @param options `classWeights` (default all 1), `epsilon` (default `1e-7`).
 * @returns a scalar loss.
 * @throws InvalidOptionError for wrong ranks, mismatched shapes, or `classWeights` of the wrong length.
 * @example
 * const loss = crossEntropyLoss(model.predict(images) as tf.Tensor4D, labels, { classWeights: [1, 5] });
 */
export function crossEntropyLoss(
  probabilities: tf.Tensor4D,
  labels: tf.Tensor3D,
  options: LossOptions = {},
): tf.Scalar {
  return segmentationLoss('crossEntropyLoss', probabilities, labels, resolveLossOptions(options), { ce: 1 });
}

/**
 * Focal loss (Lin et al. 2017): `-w[y] * (1 - p[y])^gamma * log(p[y])` per non-ignored pixel, normalized like
 * {@link crossEntropyLoss} by the summed class weights of those pixels. It down-weights pixels that are already well
 * classified. `gamma = 0` gives cross-entropy.
 *
 * @param probabilities softmax output `[batch, height, width, numClasses]`, float32.
 * @param labels class indices `[batch, height, width]`, int32, `-1` = ignore.
 * @param options `gamma` (default `2`), `classWeights` (default all 1; the "alpha" of the paper), `epsilon`.
 * @returns a scalar loss.
 * @throws InvalidOptionError for wrong ranks, mismatched shapes, a negative `gamma`, or bad `classWeights`.
 * @example
 * const loss = focalLoss(probabilities, labels, { gamma: 2 });
 */
export function focalLoss(probabilities: tf.Tensor4D, labels: tf.Tensor3D, options: LossOptions = {}): tf.Scalar {
  const resolved = resolveLossOptions(options);
  return segmentationLoss('focalLoss', probabilities, labels, resolved, { ce: 1, gamma: resolved.gamma });
}

/**
 * Soft Dice loss: `1 - mean over classes of (2 * sum(p_c * g_c) + smooth) / (sum(p_c) + sum(g_c) + smooth)`, where
 * `g_c` is the one-hot label and the sums run over every non-ignored pixel of the whole batch (one Dice per class per
 * batch). Ignored pixels are masked out of all three sums. Every class counts in the mean, also one absent from the
 * batch; with `smooth > 0` such a class scores near 1 when the model predicts it nowhere.
 *
 * @param probabilities softmax output `[batch, height, width, numClasses]`, float32.
 * @param labels class indices `[batch, height, width]`, int32, `-1` = ignore.
 * @param options `smooth` (default `1`).
 * @returns a scalar loss in `[0, 1]`.
 * @throws InvalidOptionError for wrong ranks, mismatched shapes or a negative `smooth`.
 * @example
 * const loss = diceLoss(probabilities, labels, { smooth: 1 });
 */
export function diceLoss(probabilities: tf.Tensor4D, labels: tf.Tensor3D, options: LossOptions = {}): tf.Scalar {
  return segmentationLoss('diceLoss', probabilities, labels, resolveLossOptions(options), { dice: 1 });
}

/** `1 - mean over classes of the soft Dice` over the whole batch (see {@link diceLoss}), as tensor operations. */
function softDiceTerm(probabilities: tf.Tensor4D, labels: tf.Tensor3D, numClasses: number, smooth: number): tf.Scalar {
  return tf.tidy(() => {
    const { oneHot, mask } = oneHotAndMask(labels, numClasses);
    const mask4 = tf.expandDims(mask, -1);
    const p = tf.mul(probabilities, mask4);
    const g = tf.mul(oneHot, mask4);
    const axes = [0, 1, 2];
    const intersection = tf.sum(tf.mul(p, g), axes);
    const denominator = tf.add(tf.sum(p, axes), tf.sum(g, axes));
    const dice = tf.div(tf.add(tf.mul(intersection, 2), smooth), tf.add(denominator, smooth));
    return tf.sub(1, tf.mean(dice)) as tf.Scalar;
  });
}

/**
 * Cross-entropy plus Dice: `ceWeight * crossEntropyLoss + diceWeight * diceLoss`, a common choice for segmentation
 * with imbalanced classes. `classWeights` apply to the cross-entropy term only.
 *
 * @param probabilities softmax output `[batch, height, width, numClasses]`, float32.
 * @param labels class indices `[batch, height, width]`, int32, `-1` = ignore.
 * @param options `ceWeight` (default `1`), `diceWeight` (default `1`), `classWeights`, `smooth`, `epsilon`.
 * @returns a scalar loss.
 * @throws InvalidOptionError as {@link crossEntropyLoss} and {@link diceLoss}.
 * @example
 * const loss = ceDiceLoss(probabilities, labels, { ceWeight: 0.5, diceWeight: 1 });
 */
export function ceDiceLoss(probabilities: tf.Tensor4D, labels: tf.Tensor3D, options: LossOptions = {}): tf.Scalar {
  const o = resolveLossOptions(options);
  return segmentationLoss('ceDiceLoss', probabilities, labels, o, { ce: o.ceWeight, dice: o.diceWeight });
}

const LOSSES: Record<LossName, (p: tf.Tensor4D, l: tf.Tensor3D, o: ResolvedLossOptions) => tf.Scalar> = {
  'cross-entropy': (p, l, o) => segmentationLoss('cross-entropy loss', p, l, o, { ce: 1 }),
  dice: (p, l, o) => segmentationLoss('diceLoss', p, l, o, { dice: 1 }),
  'ce-dice': (p, l, o) => segmentationLoss('ceDiceLoss', p, l, o, { ce: o.ceWeight, dice: o.diceWeight }),
  focal: (p, l, o) => segmentationLoss('focal loss', p, l, o, { ce: 1, gamma: o.gamma }),
};

/**
 * Looks up a loss by name and binds its options.
 *
 * @param name one of {@link LOSS_NAMES}: `'cross-entropy'`, `'dice'`, `'ce-dice'`, `'focal'`.
 * @param options see {@link LossOptions}; validated once, here.
 * @returns a {@link LossFn} taking `probabilities` `[batch, height, width, numClasses]` and `labels`
 *   `[batch, height, width]`.
 * @throws UnknownNameError for an unknown name (the message lists the valid names).
 * @throws InvalidOptionError for an option out of range.
 * @example
 * const loss = getLoss('focal', { gamma: 2 });
 * const value = optimizer.minimize(() => loss(model.apply(x) as tf.Tensor4D, y), true);
 */
export function getLoss(name: string, options: LossOptions = {}): LossFn {
  if (!Object.prototype.hasOwnProperty.call(LOSSES, name)) throw unknownName('loss', name, LOSS_NAMES);
  const resolved = resolveLossOptions(options);
  const loss = LOSSES[name as LossName];
  return (probabilities, labels) => loss(probabilities, labels, resolved);
}
