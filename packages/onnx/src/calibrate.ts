/**
 * Calibration of activation ranges for int8 quantization: the fp32 model runs in onnxruntime-node on calibration
 * tiles, with every tensor to be quantized added as a graph output of a calibration copy, and each tensor's range is
 * taken from its values over all tiles.
 */
import * as ort from 'onnxruntime-node';
import { ONNX_IO } from './export.js';
import { QuantizeOptionError } from './errors.js';
import { encodeModel, type ModelData } from './protobuf.js';

/**
 * How a tensor's range is chosen from its calibration values:
 * - `percentile` (default): the `percentile`% of the values in the middle, cutting `(100 - percentile) / 2`% on each
 *   side (from a 2048-bin histogram over the tensor's minimum and maximum), so that rare outliers do not coarsen the
 *   steps of every other value;
 * - `minmax`: the smallest and largest value seen.
 *
 * Either way the range is widened to include 0, which must be exact (zero padding, ReLU).
 */
export const CALIBRATION_METHODS = ['percentile', 'minmax'] as const;
/** One of {@link CALIBRATION_METHODS}. */
export type CalibrationMethod = (typeof CALIBRATION_METHODS)[number];

/** The default percentile of the `percentile` method. */
export const DEFAULT_PERCENTILE = 99.99;

/** Bins of the histogram the `percentile` method reads. */
const HISTOGRAM_BINS = 2048;

/** A network input: normalised pixels `[batch, height, width, channels]`, as the model's `image` input takes them. */
export interface InputTensor {
  data: Float32Array;
  shape: readonly [number, number, number, number];
}

/** The range `[min, max]` a tensor is quantized over. */
export interface TensorRange {
  min: number;
  max: number;
}

/** Options of {@link calibrateRanges}. */
export interface CalibrationOptions {
  /** Default `percentile`. */
  method?: CalibrationMethod;
  /** Share of the values kept by the `percentile` method, in percent, above 50 and at most 100. Default 99.99. */
  percentile?: number;
  /** Threads of onnxruntime. Default 1. */
  threads?: number;
}

/**
 * Checks the calibration options.
 * @throws QuantizeOptionError naming the bad method or percentile and the valid ones.
 */
export function resolveCalibrationOptions(options: CalibrationOptions): Required<CalibrationOptions> {
  const method = options.method ?? 'percentile';
  if (!CALIBRATION_METHODS.includes(method)) {
    throw new QuantizeOptionError(
      `Expected the calibration method to be one of ${CALIBRATION_METHODS.join(', ')} but received ${JSON.stringify(method)}.`,
      undefined,
      'calibrationMethod',
    );
  }
  const percentile = options.percentile ?? DEFAULT_PERCENTILE;
  if (!(Number.isFinite(percentile) && percentile > 50 && percentile <= 100)) {
    throw new QuantizeOptionError(
      `Expected the calibration percentile to be above 50 and at most 100 but received ${percentile}.`,
      `${DEFAULT_PERCENTILE} (the default) keeps all but the 0.005% most extreme values on each side.`,
      'percentile',
    );
  }
  return { method, percentile, threads: options.threads ?? 1 };
}

/**
 * Runs `model` on every tile and calls `visit` with the values of each of `tensors` (graph inputs included), one
 * tile at a time: memory holds one tile's activations.
 */
async function visitTensors(
  model: ModelData,
  tensors: readonly string[],
  tiles: readonly InputTensor[],
  threads: number,
  visit: (tensor: string, values: Float32Array) => void,
): Promise<void> {
  const inputs = new Set(model.inputs.map((i) => i.name));
  const outputs = new Set(model.outputs.map((o) => o.name));
  const fetched = tensors.filter((t) => !inputs.has(t));
  const copy: ModelData = {
    ...model,
    outputs: [...model.outputs, ...fetched.filter((t) => !outputs.has(t)).map((name) => ({ name }))],
  };
  const session = await ort.InferenceSession.create(encodeModel(copy), {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
  });
  try {
    for (const tile of tiles) {
      const result = fetched.length
        ? await session.run({ [ONNX_IO.input]: new ort.Tensor('float32', tile.data, [...tile.shape]) }, fetched)
        : {};
      for (const t of tensors) visit(t, inputs.has(t) ? tile.data : (result[t].data as Float32Array));
      for (const value of Object.values(result)) value.dispose();
    }
  } finally {
    await session.release();
  }
}

/**
 * The range of each of `tensors` (names of float tensors of `model`, its graph input included) over the calibration
 * tiles, by the method of `options` (see {@link CALIBRATION_METHODS}). The `percentile` method runs the tiles twice:
 * once for each tensor's extremes, once for its histogram between them.
 *
 * @throws QuantizeOptionError for a bad method or percentile, or no tiles.
 * @example
 * ```ts
 * const ranges = await calibrateRanges(decodeModel(bytes), ['conv1/Relu_3'], tiles, { method: 'minmax' });
 * ```
 */
export async function calibrateRanges(
  model: ModelData,
  tensors: readonly string[],
  tiles: readonly InputTensor[],
  options: CalibrationOptions = {},
): Promise<Map<string, TensorRange>> {
  const { method, percentile, threads } = resolveCalibrationOptions(options);
  if (tiles.length === 0) {
    throw new QuantizeOptionError('Expected at least one calibration tile but received none.', undefined, 'tiles');
  }
  const ranges = new Map(tensors.map((t) => [t, { min: Infinity, max: -Infinity }]));
  await visitTensors(model, tensors, tiles, threads, (t, values) => {
    const r = ranges.get(t)!;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v < r.min) r.min = v;
      if (v > r.max) r.max = v;
    }
  });
  if (method === 'minmax' || percentile === 100) return ranges;
  const histograms = new Map(tensors.map((t) => [t, new Float64Array(HISTOGRAM_BINS)]));
  await visitTensors(model, tensors, tiles, threads, (t, values) => {
    const { min, max } = ranges.get(t)!;
    const bins = histograms.get(t)!;
    const scale = max > min ? HISTOGRAM_BINS / (max - min) : 0;
    for (let i = 0; i < values.length; i++) {
      bins[Math.min(HISTOGRAM_BINS - 1, Math.floor((values[i] - min) * scale))]++;
    }
  });
  const cut = (100 - percentile) / 200;
  return new Map(
    tensors.map((t) => {
      const { min, max } = ranges.get(t)!;
      const bins = histograms.get(t)!;
      const total = bins.reduce((a, b) => a + b, 0);
      const width = (max - min) / HISTOGRAM_BINS;
      // The left edge of the bin where the cumulative share first exceeds `cut`, the right edge of the bin where it
      // first reaches 1 - cut.
      let low = 0;
      let seen = 0;
      while (low < HISTOGRAM_BINS - 1 && (seen + bins[low]) / total <= cut) seen += bins[low++];
      let high = HISTOGRAM_BINS - 1;
      seen = 0;
      while (high > 0 && (seen + bins[high]) / total <= cut) seen += bins[high--];
      return [t, { min: min + low * width, max: Math.min(max, min + (high + 1) * width) }];
    }),
  );
}
