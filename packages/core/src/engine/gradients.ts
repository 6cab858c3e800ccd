import * as tf from '@tensorflow/tfjs-core';

// Kernels that `registerWasmKernels` (`wasm-kernels.ts`) adds to the wasm backend and the gradients below use there,
// named here so that this module does not load the wasm backend.

/** All five gradients of `FusedBatchNorm` in one pass: outputs `[dx, dmean, dvariance, dscale, doffset]`. */
export const BATCH_NORM_GRAD = 'TesseraFusedBatchNormGrad';
/** Name of the wasm kernel of one Adam step over a weight tensor (`wasm-kernels.ts`; used by `optimizers.ts`). */
export const ADAM_UPDATE = 'TesseraAdamUpdate';
/**
 * Training-mode batch normalisation ({@link trainingBatchNorm}): inputs `x`, `scale`, `offset`; attribute
 * `varianceEpsilon`; outputs `[y, mean, variance]`.
 */
export const BATCH_NORM_TRAIN = 'TesseraBatchNormTrain';
/**
 * Gradient of training-mode batch normalisation ({@link trainingBatchNorm}): inputs `x`, `dy`, `mean`, `variance`,
 * `scale`; attribute `varianceEpsilon`; outputs `[dx, dscale, doffset]`.
 */
export const BATCH_NORM_TRAIN_GRAD = 'TesseraBatchNormTrainGrad';
/** Gradient of `Sum` and `Mean`: inputs `dy`; attributes `shape` (of `x`), `axes` (reduced) and `divisor`. */
export const REDUCE_GRAD = 'TesseraReduceGrad';
/** Gradient of `ClipByValue`: inputs `dy`, `x`; attributes `clipValueMin`, `clipValueMax`. */
export const CLIP_BY_VALUE_GRAD = 'TesseraClipByValueGrad';
/** Gradient of `Relu`: inputs `dy`, `x`. */
export const RELU_GRAD = 'TesseraReluGrad';
/** Gradient of `Softmax` over the last axis: inputs `y` (the softmax), `dy`. */
export const SOFTMAX_GRAD = 'TesseraSoftmaxGrad';
/**
 * The segmentation losses in one kernel ({@link fusedSegmentationLoss}): inputs `p` (probabilities `[..., C]`,
 * float32), `labels` (int32, `-1` = ignored); attributes of {@link SegLossAttrs}; outputs the scalar loss and the
 * sums it came from (kept for the gradient).
 */
export const SEG_LOSS = 'TesseraSegLoss';
/**
 * Gradient of {@link SEG_LOSS} with respect to `p`: inputs `p`, `labels`, `sums` ({@link SEG_LOSS}'s second output),
 * `dy` (scalar); its attributes.
 */
export const SEG_LOSS_GRAD = 'TesseraSegLossGrad';

/**
 * `ceWeight * cross-entropy + diceWeight * (1 - mean soft Dice)` as `losses.ts` defines them (classWeights on the
 * cross-entropy, probabilities clipped to `[epsilon, 1 - epsilon]` before its logarithm, Dice sums over the whole
 * batch with `smooth`).
 */
export interface SegLossAttrs {
  ceWeight: number;
  diceWeight: number;
  /** Empty for all 1. */
  classWeights: number[];
  epsilon: number;
  smooth: number;
}

/** True when the active backend is wasm and has the Tessera kernel `kernelName`. */
function onWasm(kernelName: string): boolean {
  return tf.getBackend() === 'wasm' && tf.getKernel(kernelName, 'wasm') != null;
}

/** True for a float32 tensor (or none) holding `c` values along the last axis (shape `[c]` or `[1, 1, 1, c]`). */
function channelVector(t: tf.Tensor | undefined, c: number): boolean {
  return t == null || (t.dtype === 'float32' && t.shape[t.shape.length - 1] === c && t.size === c);
}

/**
 * Gradient of `FusedBatchNorm` (tfjs's batch normalisation kernel) using broadcasting instead of
 * tfjs-core's `tile` of the per-channel factors to the full activation shape, which cost a quarter of a
 * U-Net training step on the wasm engine. Same values; inputs `x [..., C]`, `mean`, `variance`, `scale`,
 * `offset` of shape `[C]` (or broadcastable to `x`). On the wasm engine with per-channel parameters, one
 * {@link BATCH_NORM_GRAD} kernel computes all five gradients in one pass.
 */
const fusedBatchNormGradient: tf.GradConfig = {
  kernelName: 'FusedBatchNorm',
  inputsToSave: ['x', 'mean', 'variance', 'scale'],
  gradFunc: (dy, saved, attrs) => {
    const { varianceEpsilon } = attrs as { varianceEpsilon: number };
    const [x, mean, variance, scale] = saved;
    const g = dy as tf.Tensor;
    const c = x.shape[x.shape.length - 1];
    if (
      onWasm(BATCH_NORM_GRAD) &&
      x.dtype === 'float32' &&
      g.dtype === 'float32' &&
      [mean, variance, scale].every((t) => channelVector(t, c))
    ) {
      const inputs: tf.NamedTensorMap = scale ? { x, mean, variance, scale, dy: g } : { x, mean, variance, dy: g };
      const [dx, dMean, dVariance, dScale, dOffset] = tf
        .engine()
        .runKernel(BATCH_NORM_GRAD, inputs, { varianceEpsilon }) as tf.Tensor[];
      return {
        x: () => dx,
        mean: () => tf.reshape(dMean, mean.shape),
        variance: () => tf.reshape(dVariance, variance.shape),
        scale: () => tf.reshape(dScale, scale ? scale.shape : mean.shape),
        offset: () => tf.reshape(dOffset, mean.shape),
      };
    }
    const axes = tf.backend_util.getReductionAxes(mean.shape, x.shape);
    const reduce = (t: tf.Tensor) => tf.reshape(axes.length ? tf.sum(t, axes) : t, mean.shape);
    const scaleValue = scale ?? tf.scalar(1);
    const invStd = tf.rsqrt(tf.add(variance, tf.scalar(varianceEpsilon)));
    const xMinusMean = tf.sub(x, mean);
    return {
      x: () => tf.mul(g, tf.mul(invStd, scaleValue)),
      mean: () => reduce(tf.mul(g, tf.neg(tf.mul(invStd, scaleValue)))),
      variance: () => reduce(tf.mul(tf.mul(g, xMinusMean), tf.mul(tf.mul(tf.pow(invStd, 3), scaleValue), -0.5))),
      scale: () => reduce(tf.mul(g, tf.mul(xMinusMean, invStd))),
      offset: () => reduce(g),
    };
  },
};

type GradFunc = tf.GradConfig['gradFunc'];
type Gradients = ReturnType<GradFunc>;

/**
 * Replaces the registered gradient of `kernelName` by `fast` where that returns a result (on the wasm engine),
 * keeping the registered one (tfjs-core's) everywhere else. Does nothing when no gradient is registered.
 */
function overrideOnWasm(
  kernelName: string,
  fast: (dy: tf.Tensor, saved: tf.Tensor[], attrs: tf.NamedAttrMap) => Gradients | null,
): void {
  const original = tf.getGradient(kernelName);
  if (original == null) return;
  tf.registerGradient({
    ...original,
    gradFunc: (dy, saved, attrs) =>
      (dy instanceof tf.Tensor && fast(dy, saved, attrs)) || original.gradFunc(dy, saved, attrs),
  });
}

/**
 * `Sum` and `Mean`: one {@link REDUCE_GRAD} pass instead of tfjs-core's `ones` (filled in JS and copied to the wasm
 * heap), `mul` and, for `Mean`, `div`.
 */
function reduceGradient(kind: 'Sum' | 'Mean') {
  return (dy: tf.Tensor, saved: tf.Tensor[], attrs: tf.NamedAttrMap): Gradients | null => {
    const [x] = saved;
    if (!onWasm(REDUCE_GRAD) || x.dtype !== 'float32' || dy.dtype !== 'float32') return null;
    const axes = [...new Set(tf.util.parseAxisParam((attrs as { axis: number | number[] }).axis, x.shape))];
    const divisor = kind === 'Mean' ? tf.util.sizeFromShape(axes.map((a) => x.shape[a])) : 1;
    return { x: () => tf.engine().runKernel(REDUCE_GRAD, { dy }, { shape: x.shape, axes, divisor }) as tf.Tensor };
  };
}

/** `ClipByValue` (ReLU6): one {@link CLIP_BY_VALUE_GRAD} pass instead of five full-size ops. */
function clipByValueGradient(dy: tf.Tensor, saved: tf.Tensor[], attrs: tf.NamedAttrMap): Gradients | null {
  const [x] = saved;
  if (!onWasm(CLIP_BY_VALUE_GRAD) || x.dtype !== 'float32' || dy.dtype !== 'float32') return null;
  const { clipValueMin, clipValueMax } = attrs as { clipValueMin: number; clipValueMax: number };
  return { x: () => tf.engine().runKernel(CLIP_BY_VALUE_GRAD, { dy, x }, { clipValueMin, clipValueMax }) as tf.Tensor };
}

/**
 * Training-mode batch normalisation of `x` over all axes but the last, with the values of tfjs-layers'
 * `BatchNormalization` (`tf.moments`, then `tf.batchNorm` with `scale` and `offset`): the same output and statistics
 * bit for bit (on wasm, the three-pass {@link BATCH_NORM_TRAIN} kernel performs those float32 operations). Its
 * gradient is one operation instead of the chain through `moments` (a dozen full-size operations per layer): on the
 * wasm engine the two-pass {@link BATCH_NORM_TRAIN_GRAD} kernel, elsewhere the same closed form with tensor
 * operations.
 *
 * @returns the output, and the batch's `mean` and `variance` (`[c]`, for the moving averages; the caller disposes
 * them).
 */
export function trainingBatchNorm(
  x: tf.Tensor,
  scale: tf.Tensor,
  offset: tf.Tensor,
  varianceEpsilon: number,
): { y: tf.Tensor; mean: tf.Tensor; variance: tf.Tensor } {
  const axes = x.shape.slice(0, -1).map((_, i) => i);
  let statistics: { mean: tf.Tensor; variance: tf.Tensor } | undefined;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, gamma, beta] = args as tf.Tensor[];
    const save = args[3] as tf.GradSaveFunc;
    const { y, mean, variance } = batchNormForward(input, gamma, beta, axes, varianceEpsilon);
    save([input, mean, variance, gamma]);
    statistics = { mean: tf.keep(mean), variance: tf.keep(variance) };
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => trainingBatchNormGradient(dy, saved, axes, varianceEpsilon),
    };
  });
  const y = op(x, scale, offset);
  return { y, ...statistics! };
}

/** The forward pass of {@link trainingBatchNorm}: one {@link BATCH_NORM_TRAIN} kernel on wasm (the same values). */
function batchNormForward(
  x: tf.Tensor,
  scale: tf.Tensor,
  offset: tf.Tensor,
  axes: number[],
  varianceEpsilon: number,
): { y: tf.Tensor; mean: tf.Tensor; variance: tf.Tensor } {
  const c = x.shape[x.rank - 1];
  if (onWasm(BATCH_NORM_TRAIN) && x.dtype === 'float32' && channelVector(scale, c) && channelVector(offset, c)) {
    const [y, mean, variance] = tf
      .engine()
      .runKernel(BATCH_NORM_TRAIN, { x, scale, offset }, { varianceEpsilon }) as tf.Tensor[];
    return { y, mean, variance };
  }
  const { mean, variance } = tf.moments(x, axes);
  return { y: tf.batchNorm(x, mean, variance, offset, scale, varianceEpsilon), mean, variance };
}

/** Gradients `[dx, dscale, doffset]` of {@link trainingBatchNorm}. */
function trainingBatchNormGradient(
  dy: tf.Tensor,
  [x, mean, variance, scale]: tf.Tensor[],
  axes: number[],
  varianceEpsilon: number,
): tf.Tensor[] {
  if (onWasm(BATCH_NORM_TRAIN_GRAD) && x.dtype === 'float32' && dy.dtype === 'float32') {
    const inputs = { x, dy, mean, variance, scale };
    return tf.engine().runKernel(BATCH_NORM_TRAIN_GRAD, inputs, { varianceEpsilon }) as tf.Tensor[];
  }
  const n = x.size / x.shape[x.rank - 1];
  const invStd = tf.rsqrt(tf.add(variance, varianceEpsilon));
  const centred = tf.sub(x, mean);
  const sumG = tf.sum(dy, axes);
  const sumGX = tf.sum(tf.mul(dy, centred), axes);
  const k = tf.mul(scale, invStd);
  const viaVariance = tf.mul(centred, tf.mul(tf.square(invStd), tf.div(sumGX, n)));
  const dx = tf.mul(k, tf.sub(tf.sub(dy, tf.div(sumG, n)), viaVariance));
  return [dx, tf.mul(sumGX, invStd), sumG];
}

let registered = false;

/** `Relu`: one {@link RELU_GRAD} pass (`dy * step(x)`, tfjs-core's values) instead of `Step` and `Multiply`. */
function reluGradient(dy: tf.Tensor, saved: tf.Tensor[]): Gradients | null {
  const [x] = saved;
  if (!onWasm(RELU_GRAD) || x.dtype !== 'float32' || dy.dtype !== 'float32') return null;
  return { x: () => tf.engine().runKernel(RELU_GRAD, { dy, x }) as tf.Tensor };
}

/** `Softmax` over the last axis: one {@link SOFTMAX_GRAD} pass instead of tfjs-core's four full-size ops. */
function softmaxGradient(dy: tf.Tensor, saved: tf.Tensor[], attrs: tf.NamedAttrMap): Gradients | null {
  const [y] = saved;
  const { dim } = attrs as { dim: number };
  if (!onWasm(SOFTMAX_GRAD) || y.dtype !== 'float32' || dy.dtype !== 'float32') return null;
  if (dim !== -1 && dim !== y.rank - 1) return null;
  return { logits: () => tf.engine().runKernel(SOFTMAX_GRAD, { y, dy }) as tf.Tensor };
}

/**
 * The segmentation loss of {@link SegLossAttrs} in one {@link SEG_LOSS} kernel (and its gradient in one
 * {@link SEG_LOSS_GRAD} pass) on the wasm engine, where `losses.ts` would otherwise run some thirty full-size tensor
 * operations forward and back; `null` elsewhere, or for inputs it does not take (not float32 probabilities).
 * Values agree with the tensor-operation form to float32 rounding (its sums are float64).
 */
export function fusedSegmentationLoss(p: tf.Tensor, labels: tf.Tensor, attrs: SegLossAttrs): tf.Scalar | null {
  if (!onWasm(SEG_LOSS) || p.dtype !== 'float32') return null;
  return tf.tidy(() => {
    const labelsInt = labels.dtype === 'int32' ? labels : tf.cast(labels, 'int32');
    const outputs = tf.engine().runKernel(SEG_LOSS, { p, labels: labelsInt }, attrs as unknown as tf.NamedAttrMap);
    return (outputs as tf.Tensor[])[0] as tf.Scalar;
  });
}

/**
 * Registers Tessera's faster gradient functions: batch normalisation (all engines), and on the wasm engine, when
 * `registerWasmKernels` has run, one-pass gradients of `FusedBatchNorm`, `Sum`, `Mean` and `ClipByValue` (tfjs-core's gradients elsewhere). Idempotent; call after tfjs-core's gradients are registered (importing
 * `@tensorflow/tfjs-layers` registers them).
 */
export function registerFastGradients(): void {
  if (registered) return;
  tf.registerGradient(fusedBatchNormGradient);
  overrideOnWasm('Sum', reduceGradient('Sum'));
  overrideOnWasm('Mean', reduceGradient('Mean'));
  overrideOnWasm('ClipByValue', clipByValueGradient);
  overrideOnWasm('Softmax', softmaxGradient);
  overrideOnWasm('Relu', reluGradient);
  tf.registerGradient({
    kernelName: SEG_LOSS,
    inputsToSave: ['p', 'labels'],
    outputsToSave: [false, true],
    gradFunc: (dys, saved, attrs) => {
      const [p, labels, sums] = saved;
      // Two outputs: the loss's gradient comes first (the sums have none).
      const dy = Array.isArray(dys) ? dys[0] : dys;
      return {
        p: () => tf.engine().runKernel(SEG_LOSS_GRAD, { p, labels, sums, dy }, attrs) as tf.Tensor,
        labels: () => tf.zerosLike(labels),
      };
    },
  });
  registered = true;
}
