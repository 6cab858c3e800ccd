/**
 * Confusion-matrix based segmentation metrics on plain arrays (no tensors): pixel accuracy, per-class IoU and Dice,
 * and their means, plus a JSON-ready evaluation report.
 */
import { InvalidOptionError, describeValue } from '../errors.js';

function checkNumClasses(context: string, numClasses: number): void {
  if (!Number.isInteger(numClasses) || numClasses < 1) {
    throw new InvalidOptionError(
      `Expected an integer >= 1 for numClasses in ${context} but received ${describeValue(numClasses)}.`,
    );
  }
}

/** Mean of the values that are not NaN; NaN when none is. */
function nanMean(values: readonly number[]): number {
  let sum = 0;
  let n = 0;
  for (const v of values) {
    if (!Number.isNaN(v)) {
      sum += v;
      n++;
    }
  }
  return n === 0 ? NaN : sum / n;
}

/** The serialized form of a {@link ConfusionMatrix}. */
export interface ConfusionMatrixJSON {
  numClasses: number;
  /** `counts[target][predicted]`. */
  counts: number[][];
}

/**
 * A confusion matrix of pixel counts, `numClasses x numClasses`, row = target class, column = predicted class.
 * Accumulate label maps with {@link ConfusionMatrix.add}, combine matrices (from workers or batches) with
 * {@link ConfusionMatrix.merge}, then read the metrics.
 *
 * A class absent from both the targets and the predictions has no defined IoU or Dice (0 / 0): its entry is `NaN`, and
 * {@link ConfusionMatrix.meanIoU} / {@link ConfusionMatrix.meanDice} skip it. A class present in only one of them
 * scores 0 and counts in the means.
 *
 * @example
 * const cm = new ConfusionMatrix(3);
 * cm.add(argmaxLabels(probabilities, 3), labels); // labels: -1 = ignore
 * console.log(cm.meanIoU(), cm.iou());
 */
export class ConfusionMatrix {
  /** Number of classes; class indices run from 0 to `numClasses - 1`. */
  readonly numClasses: number;
  /** Pixel counts, row-major `numClasses x numClasses`: `counts[target * numClasses + predicted]`. */
  readonly counts: Float64Array;

  /**
   * @param numClasses number of classes, an integer `>= 1`.
   * @throws InvalidOptionError when `numClasses` is not an integer `>= 1`.
   */
  constructor(numClasses: number) {
    checkNumClasses('ConfusionMatrix', numClasses);
    this.numClasses = numClasses;
    this.counts = new Float64Array(numClasses * numClasses);
  }

  /**
   * Rebuilds a matrix from {@link ConfusionMatrix.toJSON} output.
   *
   * @throws InvalidOptionError when `counts` is not `numClasses x numClasses` non-negative numbers.
   * @example
   * const copy = ConfusionMatrix.fromJSON(JSON.parse(JSON.stringify(cm)));
   */
  static fromJSON(json: ConfusionMatrixJSON): ConfusionMatrix {
    const cm = new ConfusionMatrix(json.numClasses);
    const n = json.numClasses;
    if (!Array.isArray(json.counts) || json.counts.length !== n) {
      throw new InvalidOptionError(
        `Expected ${n} rows of counts in ConfusionMatrix.fromJSON but received ${describeValue(json.counts)}.`,
      );
    }
    json.counts.forEach((row, t) => {
      if (!Array.isArray(row) || row.length !== n || row.some((v) => !(typeof v === 'number' && v >= 0))) {
        throw new InvalidOptionError(
          `Expected ${n} counts >= 0 in row ${t} of ConfusionMatrix.fromJSON but received ${describeValue(row)}.`,
        );
      }
      row.forEach((v, p) => (cm.counts[t * n + p] = v));
    });
    return cm;
  }

  /**
   * Counts one pair of label maps, pixel by pixel.
   *
   * @param predicted predicted class per pixel, integers in `[0, numClasses)`.
   * @param target true class per pixel, integers in `[0, numClasses)`, or `-1` to ignore the pixel.
   * @throws InvalidOptionError when the lengths differ or a value is out of range (the first bad pixel is named).
   * @example
   * cm.add(Uint8Array.of(0, 1, 1), Int32Array.of(0, 1, -1));
   */
  add(predicted: ArrayLike<number>, target: ArrayLike<number>): void {
    if (predicted.length !== target.length) {
      throw new InvalidOptionError(
        `Expected predicted and target of the same length in ConfusionMatrix.add but received ` +
          `${predicted.length} and ${target.length}.`,
      );
    }
    const n = this.numClasses;
    for (let i = 0; i < target.length; i++) {
      const t = target[i];
      if (t === -1) continue;
      const p = predicted[i];
      if (!(Number.isInteger(t) && t >= 0 && t < n)) {
        throw new InvalidOptionError(
          `Expected target values in [0, ${n - 1}] or -1 in ConfusionMatrix.add but received ${t} at pixel ${i}.`,
        );
      }
      if (!(Number.isInteger(p) && p >= 0 && p < n)) {
        throw new InvalidOptionError(
          `Expected predicted values in [0, ${n - 1}] in ConfusionMatrix.add but received ${p} at pixel ${i}.`,
        );
      }
      this.counts[t * n + p]++;
    }
  }

  /**
   * Adds the counts of another matrix into this one.
   *
   * @throws InvalidOptionError when the numbers of classes differ.
   * @example
   * total.merge(workerMatrix);
   */
  merge(other: ConfusionMatrix): void {
    if (other.numClasses !== this.numClasses) {
      throw new InvalidOptionError(
        `Cannot merge a confusion matrix of ${other.numClasses} classes into one of ${this.numClasses} classes.`,
      );
    }
    for (let i = 0; i < this.counts.length; i++) this.counts[i] += other.counts[i];
  }

  /** Count of pixels with target `t` predicted as `p`. */
  get(t: number, p: number): number {
    return this.counts[t * this.numClasses + p];
  }

  /** Total number of counted (non-ignored) pixels. */
  total(): number {
    let sum = 0;
    for (const v of this.counts) sum += v;
    return sum;
  }

  /**
   * Fraction of counted pixels whose prediction equals the target: trace / total. NaN when nothing was counted.
   * @example
   * cm.pixelAccuracy(); // 0.75
   */
  pixelAccuracy(): number {
    const total = this.total();
    if (total === 0) return NaN;
    let trace = 0;
    for (let c = 0; c < this.numClasses; c++) trace += this.get(c, c);
    return trace / total;
  }

  /** True positives, false positives and false negatives of class `c`. */
  private tpFpFn(c: number): [number, number, number] {
    const tp = this.get(c, c);
    let rowSum = 0;
    let colSum = 0;
    for (let k = 0; k < this.numClasses; k++) {
      rowSum += this.get(c, k);
      colSum += this.get(k, c);
    }
    return [tp, colSum - tp, rowSum - tp];
  }

  /**
   * Intersection over union per class, `tp / (tp + fp + fn)`; NaN for a class absent from targets and predictions.
   * @example
   * cm.iou(); // [0.5, 0.6667, NaN]
   */
  iou(): number[] {
    return Array.from({ length: this.numClasses }, (_, c) => {
      const [tp, fp, fn] = this.tpFpFn(c);
      const denominator = tp + fp + fn;
      return denominator === 0 ? NaN : tp / denominator;
    });
  }

  /**
   * Dice (F1) per class, `2 tp / (2 tp + fp + fn)`; NaN for a class absent from targets and predictions.
   * @example
   * cm.dice(); // [0.6667, 0.8, NaN]
   */
  dice(): number[] {
    return Array.from({ length: this.numClasses }, (_, c) => {
      const [tp, fp, fn] = this.tpFpFn(c);
      const denominator = 2 * tp + fp + fn;
      return denominator === 0 ? NaN : (2 * tp) / denominator;
    });
  }

  /**
   * Mean of {@link ConfusionMatrix.iou} over the classes whose IoU is defined (NaN entries skipped); NaN if none is.
   * @example
   * cm.meanIoU();
   */
  meanIoU(): number {
    return nanMean(this.iou());
  }

  /**
   * Mean of {@link ConfusionMatrix.dice} over the classes whose Dice is defined (NaN entries skipped); NaN if none is.
   * @example
   * cm.meanDice();
   */
  meanDice(): number {
    return nanMean(this.dice());
  }

  /** The counts as nested arrays, `rows[target][predicted]`. */
  toRows(): number[][] {
    const n = this.numClasses;
    return Array.from({ length: n }, (_, t) => Array.from(this.counts.subarray(t * n, (t + 1) * n)));
  }

  /**
   * A plain object for `JSON.stringify`; {@link ConfusionMatrix.fromJSON} reads it back.
   * @example
   * JSON.stringify(cm); // {"numClasses":2,"counts":[[3,1],[0,2]]}
   */
  toJSON(): ConfusionMatrixJSON {
    return { numClasses: this.numClasses, counts: this.toRows() };
  }
}

/**
 * Metrics of a model on a data set, ready to be written as JSON. NaN values (classes absent from targets and
 * predictions) become `null` under `JSON.stringify`.
 */
export interface EvaluationReport {
  /** Fraction of counted pixels classified correctly. */
  pixelAccuracy: number;
  /** Mean IoU over classes with a defined IoU. */
  meanIoU: number;
  /** Mean Dice over classes with a defined Dice. */
  meanDice: number;
  /** One entry per class, in class-index order: its name, its value in the label map files, IoU and Dice. */
  classes: { name: string; value: number; iou: number; dice: number }[];
  /** Pixel counts, `confusionMatrix[target][predicted]`. */
  confusionMatrix: number[][];
}

/**
 * Builds an {@link EvaluationReport} from a confusion matrix and the class descriptions.
 *
 * @param cm the accumulated confusion matrix.
 * @param classes one entry per class index, `classes[i]` describing class `i` (`value` is its pixel value in the
 *   mask files).
 * @throws InvalidOptionError when `classes.length` differs from `cm.numClasses`.
 * @example
 * const report = makeEvaluationReport(cm, [{ name: 'background', value: 0 }, { name: 'nucleus', value: 255 }]);
 * await fs.writeFile('evaluation.json', JSON.stringify(report, null, 2));
 */
export function makeEvaluationReport(
  cm: ConfusionMatrix,
  classes: { name: string; value: number }[],
): EvaluationReport {
  if (classes.length !== cm.numClasses) {
    throw new InvalidOptionError(
      `Expected ${cm.numClasses} class descriptions in makeEvaluationReport (one per class of the confusion matrix) ` +
        `but received ${classes.length}.`,
    );
  }
  const iou = cm.iou();
  const dice = cm.dice();
  return {
    pixelAccuracy: cm.pixelAccuracy(),
    meanIoU: cm.meanIoU(),
    meanDice: cm.meanDice(),
    classes: classes.map((c, i) => ({ name: c.name, value: c.value, iou: iou[i], dice: dice[i] })),
    confusionMatrix: cm.toRows(),
  };
}

/**
 * Per-pixel argmax over the last axis: turns probabilities laid out as `[..., numClasses]` (e.g. the data of a
 * `[height, width, numClasses]` tensor) into a label map of `length / numClasses` class indices. Ties go to the lower
 * class index; NaN never wins.
 *
 * @param probabilities flattened probabilities (or logits), `numClasses` values per pixel.
 * @param numClasses number of classes, `1..256`.
 * @returns the class index of each pixel.
 * @throws InvalidOptionError when `numClasses` is out of range or does not divide the length.
 * @example
 * argmaxLabels(Float32Array.of(0.1, 0.9, 0.7, 0.3), 2); // Uint8Array [1, 0]
 */
export function argmaxLabels(probabilities: Float32Array, numClasses: number): Uint8Array {
  if (!Number.isInteger(numClasses) || numClasses < 1 || numClasses > 256) {
    throw new InvalidOptionError(
      `Expected an integer in [1, 256] for numClasses in argmaxLabels but received ${describeValue(numClasses)}.`,
    );
  }
  if (probabilities.length % numClasses !== 0) {
    throw new InvalidOptionError(
      `Expected a length divisible by numClasses (${numClasses}) in argmaxLabels but received ` +
        `${probabilities.length} values.`,
    );
  }
  const pixels = probabilities.length / numClasses;
  const out = new Uint8Array(pixels);
  for (let i = 0; i < pixels; i++) {
    const base = i * numClasses;
    let best = 0;
    let bestValue = probabilities[base];
    for (let c = 1; c < numClasses; c++) {
      const v = probabilities[base + c];
      if (v > bestValue || (Number.isNaN(bestValue) && !Number.isNaN(v))) {
        best = c;
        bestValue = v;
      }
    }
    out[i] = best;
  }
  return out;
}
