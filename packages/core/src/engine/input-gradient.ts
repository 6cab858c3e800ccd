/**
 * Training computes gradients with respect to the weights only, yet tfjs computes one more, with respect to the
 * network's input image: the first convolution of a tfjs-layers `Conv2D` layer runs as `tf.fused.conv2d`, whose
 * gradient (a `customGrad` closure) computes the input's gradient as eagerly as the filter's, and the tape then drops
 * it. For FCN-8s that is a 16 -> 3 channel convolution over 2 x 256 x 256 pixels, 2% of a training step; for
 * DeepLabv3+ a strided col2im.
 *
 * Inside {@link withoutInputGradient} the wasm engine's kernels skip it: the forward convolutions record which filters
 * see only the given input tensor ({@link noteConvolution}); a `Conv2DBackpropInput` of such a filter, run by the
 * backward pass (no tape recording) and of the input's shape, is that unused gradient and returns zeros
 * ({@link inputGradientUnused}). A filter also applied to another tensor, or used by a forward transposed convolution
 * (tied weights), keeps the full computation. Elsewhere (prediction, user code, other engines) nothing changes.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { TensorInfo } from '@tensorflow/tfjs-core';

interface Scope {
  input: object;
  shape: readonly number[];
  /** Filter data id -> true while every forward convolution with it read the input, false once one did not. */
  filters: Map<object, boolean>;
}

let scope: Scope | null = null;

/** True while the engine records a tape (a forward pass whose gradients will be taken). */
function recording(): boolean {
  return (tf.engine().state as unknown as { gradientDepth: number }).gradientDepth > 0;
}

/**
 * Runs `fn` (a forward and backward pass, e.g. `tf.variableGrads`) with the gradient with respect to `input` left
 * uncomputed where the engine can tell it is unused (see the module notes). Returns what `fn` returns.
 */
export function withoutInputGradient<T>(input: tf.Tensor, fn: () => T): T {
  const outer = scope;
  scope = { input: input.dataId, shape: input.shape, filters: new Map() };
  try {
    return fn();
  } finally {
    scope = outer;
  }
}

/** Called by the forward convolution kernels (`Conv2D`, `FusedConv2D`) with their input and filter. */
export function noteConvolution(x: TensorInfo, filter: TensorInfo): void {
  if (scope == null || !recording()) return;
  const seen = scope.filters.get(filter.dataId);
  scope.filters.set(filter.dataId, (seen ?? true) && x.dataId === scope.input);
}

/**
 * True when a `Conv2DBackpropInput` of `filter` to `inputShape` is the unused gradient of the scope's input; called
 * by that kernel, which then returns zeros. A forward (recorded) call marks the filter as used otherwise.
 */
export function inputGradientUnused(filter: TensorInfo, inputShape: readonly number[]): boolean {
  if (scope == null) return false;
  if (recording()) {
    scope.filters.set(filter.dataId, false);
    return false;
  }
  return scope.filters.get(filter.dataId) === true && tf.util.arraysEqual([...inputShape], [...scope.shape]);
}
