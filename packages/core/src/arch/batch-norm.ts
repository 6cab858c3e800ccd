import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { trainingBatchNorm } from '../engine/gradients.js';

/** The arguments of tfjs-layers' `batchNormalization`. */
export type BatchNormalizationArgs = NonNullable<Parameters<typeof tfl.layers.batchNormalization>[0]>;

/** The fields of tfjs-layers' `BatchNormalization` that the training path reads. */
interface BatchNormFields {
  axis: number;
  momentum: number;
  epsilon: number;
  gamma?: tfl.LayerVariable;
  beta?: tfl.LayerVariable;
  movingMean: tfl.LayerVariable;
  movingVariance: tfl.LayerVariable;
}

type LayerClass = new (args: BatchNormalizationArgs) => tfl.layers.Layer;

/** Class names of batch-norm layers: tfjs-layers' and {@link batchNormalization}'s. */
export const BATCH_NORM_CLASS_NAMES: readonly string[] = ['BatchNormalization', 'TesseraBatchNormalization'];

let fastClass: LayerClass | undefined;

/** tfjs-layers' moving-average update, the same operations: `moving - (moving - batch) * (1 - momentum)`. */
function movingAverage(variable: tfl.LayerVariable, value: tf.Tensor, momentum: number): void {
  tf.tidy(() => {
    const current = variable.read();
    variable.write(tf.sub(current, tf.mul(tf.sub(current, value), 1 - momentum)));
  });
}

/**
 * tfjs-layers' `BatchNormalization` class with a fused training gradient ({@link trainingBatchNorm}), defined on
 * first use and registered for deserialisation as `TesseraBatchNormalization`: a model rebuilt from its saved
 * topology (a checkpoint to resume, a data-parallel worker's replica) gets the same layers, so the same bits.
 */
function batchNormalizationClass(): LayerClass {
  if (fastClass) return fastClass;
  const entry = tf.serialization.SerializationMap.getMap().classNameMap[BATCH_NORM_CLASS_NAMES[0]];
  if (entry == null) throw new Error("batchNormalization: tfjs-layers' BatchNormalization class is not registered");
  const Base = entry[0] as unknown as LayerClass;
  class BatchNormalization extends Base {
    static className = 'TesseraBatchNormalization';

    override call(inputs: tf.Tensor | tf.Tensor[], kwargs: Record<string, unknown>): tf.Tensor | tf.Tensor[] {
      const x = Array.isArray(inputs) ? inputs[0] : inputs;
      const self = this as unknown as BatchNormFields;
      const axis = self.axis >= 0 ? self.axis : self.axis + x.rank;
      if (kwargs?.training !== true || x.rank < 2 || axis !== x.rank - 1 || !self.gamma || !self.beta) {
        return super.call(inputs, kwargs);
      }
      return tf.tidy(() => {
        const { y, mean, variance } = trainingBatchNorm(x, self.gamma!.read(), self.beta!.read(), self.epsilon);
        movingAverage(self.movingMean, mean, self.momentum);
        movingAverage(self.movingVariance, variance, self.momentum);
        tf.dispose([mean, variance]);
        return y;
      });
    }
  }
  tf.serialization.registerClass(BatchNormalization as unknown as tf.serialization.SerializableConstructor<never>);
  fastClass = BatchNormalization;
  return fastClass;
}

/**
 * Batch normalisation for architecture plugins: tfjs-layers' `BatchNormalization` (same arguments, weights, forward
 * values and inference; saved as class `TesseraBatchNormalization`), whose training step (statistics of the batch,
 * over every axis but the last) has one fused gradient instead of the chain through the batch statistics: about a
 * dozen fewer full-size operations per layer and step, which matters most on the wasm engine.
 *
 * @example
 * ```ts
 * x = batchNormalization({ momentum: 0.9, name: 'enc1_bn' }).apply(x) as SymbolicTensor;
 * ```
 */
export function batchNormalization(args: BatchNormalizationArgs = {}): tfl.layers.Layer {
  return new (batchNormalizationClass())(args);
}

/** Registers {@link batchNormalization}'s class for deserialisation (`setupEngine` and `loadModel` call it). Idempotent. */
export function registerBatchNormalization(): void {
  batchNormalizationClass();
}
