import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';

/**
 * Something that turns a batch of normalised images into per-pixel class probabilities: the seam between
 * prediction and the engine that runs the network. Tessera ships two: {@link tfjsPredictor} (any tfjs backend)
 * and the ONNX Runtime one of `@tessera/onnx`.
 */
export interface Predictor {
  /** Runtime family, e.g. `tfjs` or `onnx`. */
  readonly runtime: string;
  /** One line for logs, e.g. `tfjs (wasm)` or `onnxruntime-node 1.30.0 (cpu, 2 threads)`. */
  readonly description: string;
  /**
   * Probabilities `[n, h, w, classes]` (interleaved, float32) of a batch `[n, h, w, channels]`; `h` and `w`
   * must be multiples of the architecture's input multiple.
   */
  run(batch: Float32Array, shape: readonly [number, number, number, number]): Promise<Float32Array>;
  /** Frees the engine's memory. */
  dispose(): Promise<void>;
}

/** True for a {@link Predictor} (as opposed to a tfjs model). */
export function isPredictor(value: unknown): value is Predictor {
  return typeof value === 'object' && value !== null && typeof (value as Predictor).run === 'function';
}

/**
 * A {@link Predictor} over a tfjs model on the active tfjs backend.
 *
 * @example
 * ```ts
 * const predictor = tfjsPredictor((await loadModel('runs/isbi')).model);
 * ```
 */
export function tfjsPredictor(model: tfl.LayersModel): Predictor {
  return {
    runtime: 'tfjs',
    description: `tfjs (${tf.getBackend()})`,
    async run(batch, shape) {
      const output = tf.tidy(() => model.predict(tf.tensor4d(batch, [...shape])) as tf.Tensor);
      try {
        return (await output.data()) as Float32Array;
      } finally {
        output.dispose();
      }
    },
    async dispose() {
      model.dispose();
    },
  };
}
