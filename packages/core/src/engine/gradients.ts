import * as tf from '@tensorflow/tfjs-core';

/**
 * Gradient of `FusedBatchNorm` (tfjs's batch normalisation kernel) using broadcasting instead of
 * tfjs-core's `tile` of the per-channel factors to the full activation shape, which cost a quarter of a
 * U-Net training step on the wasm engine. Same values; inputs `x [..., C]`, `mean`, `variance`, `scale`,
 * `offset` of shape `[C]` (or broadcastable to `x`).
 */
const fusedBatchNormGradient: tf.GradConfig = {
  kernelName: 'FusedBatchNorm',
  inputsToSave: ['x', 'mean', 'variance', 'scale'],
  gradFunc: (dy, saved, attrs) => {
    const { varianceEpsilon } = attrs as { varianceEpsilon: number };
    const [x, mean, variance, scale] = saved;
    const g = dy as tf.Tensor;
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

let registered = false;

/** Registers Tessera's faster gradient functions (all engines). Idempotent. */
export function registerFastGradients(): void {
  if (registered) return;
  tf.registerGradient(fusedBatchNormGradient);
  registered = true;
}
