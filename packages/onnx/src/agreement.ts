import type { InputTensor } from './calibrate.js';
import { createOnnxPredictor } from './runtime.js';

/** How often two models give the same arg-max label (see {@link compareLabels}). */
export interface LabelAgreement {
  /** Pixels compared. */
  pixels: number;
  /** Share of the pixels whose arg-max label is the same, 0 to 1. */
  agreement: number;
  /**
   * Per class, the Dice coefficient of the candidate's pixels of that class against the reference's; `null` where
   * neither model gives the class to any pixel.
   */
  dice: (number | null)[];
}

function argmax(probabilities: Float32Array, classes: number): Uint8Array {
  const labels = new Uint8Array(probabilities.length / classes);
  for (let p = 0; p < labels.length; p++) {
    let best = 0;
    for (let c = 1; c < classes; c++) if (probabilities[p * classes + c] > probabilities[p * classes + best]) best = c;
    labels[p] = best;
  }
  return labels;
}

/**
 * Runs two ONNX models (e.g. fp32 and its int8 quantization) on the same inputs with onnxruntime-node and compares
 * their arg-max label maps: pixel agreement and per-class Dice of `candidate` against `reference`.
 *
 * @param inputs normalised inputs `[batch, height, width, channels]`.
 * @throws EngineError when onnxruntime cannot load either model.
 * @example
 * ```ts
 * const { agreement, dice } = await compareLabels(fp32Bytes, int8Bytes, tiles);
 * ```
 */
export async function compareLabels(
  reference: Uint8Array,
  candidate: Uint8Array,
  inputs: readonly InputTensor[],
  options: { threads?: number } = {},
): Promise<LabelAgreement> {
  const a = await createOnnxPredictor(reference, { threads: options.threads ?? 1, spin: false });
  const b = await createOnnxPredictor(candidate, { threads: options.threads ?? 1, spin: false });
  let pixels = 0;
  let same = 0;
  let both: number[] = [];
  let either: number[] = [];
  try {
    for (const input of inputs) {
      const [batch, height, width] = input.shape;
      const n = batch * height * width;
      const pa = await a.run(input.data, input.shape);
      const classes = pa.length / n;
      const la = argmax(pa, classes);
      const lb = argmax(await b.run(input.data, input.shape), classes);
      if (both.length === 0) {
        both = new Array<number>(classes).fill(0);
        either = new Array<number>(classes).fill(0);
      }
      for (let p = 0; p < n; p++) {
        either[la[p]]++;
        either[lb[p]]++;
        if (la[p] === lb[p]) {
          same++;
          both[la[p]] += 2;
        }
      }
      pixels += n;
    }
  } finally {
    await a.dispose();
    await b.dispose();
  }
  return {
    pixels,
    agreement: pixels ? same / pixels : 1,
    dice: both.map((x, c) => (either[c] ? x / either[c] : null)),
  };
}
