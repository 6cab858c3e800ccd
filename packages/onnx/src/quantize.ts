/**
 * Static int8 quantization of an exported Tessera ONNX model into the QDQ format that onnxruntime's own
 * `quantize_static` writes (`QuantFormat.QDQ`, `QInt8` weights per channel, `QUInt8` activations):
 *
 * - the weight of each Conv, ConvTranspose, MatMul and Gemm becomes an int8 initializer, symmetric (zero point 0) with
 *   one scale per output channel, read through a DequantizeLinear along the output-channel axis (0 for Conv and
 *   Gemm with `transB`, 1 for ConvTranspose, whose weight is `[in, out / group, kh, kw]`, MatMul and plain Gemm);
 * - its bias becomes int32 with scale `input scale * weight scale` and zero point 0, as QLinearConv takes it;
 * - every activation such an operator or an Add reads gets a QuantizeLinear → DequantizeLinear pair, uint8 and
 *   asymmetric over its calibrated range; the outputs of operators that only move values (MaxPool, DepthToSpace,
 *   Resize, Transpose, ...) share their input's scale and zero point, so onnxruntime runs them on uint8 too.
 *
 * onnxruntime fuses `DequantizeLinear → Conv → QuantizeLinear` into QLinearConv (and Add into QLinearAdd, ReLU and
 * ReLU6 into the quantization after them, which is why they stay in the graph here where `quantize_static` drops
 * them); operators without an int8 kernel (Softmax, Sigmoid, Mul, ...) run in float between dequantized tensors, as
 * does ConvTranspose (onnxruntime-node 1.30 has no int8 ConvTranspose on CPU: it reads its int8 weights dequantized).
 * A tensor read only by such operators (the logits before the softmax) is not quantized.
 */
import { ONNX_METADATA } from './export.js';
import { calibrateRanges, resolveCalibrationOptions, type CalibrationOptions, type InputTensor } from './calibrate.js';
import { decodeModel, encodeModel, type AttributeValue, type NodeData, type TensorData } from './protobuf.js';

/** Operators whose weight (input 1) is quantized. */
const WEIGHTED = new Set(['Conv', 'ConvTranspose', 'MatMul', 'Gemm']);
/** Operators whose activation inputs are quantized besides the weighted ones (onnxruntime's QLinearAdd). */
const QUANTIZED_INPUTS = new Set(['Add']);
/** Operators that only move or select values: their output (input 0's values) shares input 0's quantization. */
const SAME_SCALE = new Set([
  'MaxPool',
  'DepthToSpace',
  'SpaceToDepth',
  'Resize',
  'Transpose',
  'Flatten',
  'Reshape',
  'Squeeze',
  'Unsqueeze',
  'Slice',
  'Pad',
]);
/** Activations that onnxruntime folds into the QuantizeLinear after them (ReLU, and Clip from 0 as in ReLU6). */
const FUSED_ACTIVATIONS = new Set(['Relu', 'Clip']);
/** Operators with no computation worth listing among those left in float. */
const PLUMBING = new Set(['QuantizeLinear', 'DequantizeLinear', ...SAME_SCALE]);

const INT32_MAX = 2 ** 31 - 1;

/** A weighted node left in float, with why. */
export interface Fp32Node {
  node: string;
  opType: string;
  reason: string;
}

/** What {@link quantizeOnnx} did. */
export interface QuantizationReport {
  method: 'percentile' | 'minmax';
  /** The percentile of the `percentile` method, `null` for `minmax`. */
  percentile: number | null;
  /** Calibration inputs run. */
  tiles: number;
  /** Weighted nodes (Conv, ConvTranspose, MatMul, Gemm) with int8 weights, by operator type. */
  quantizedNodes: Record<string, number>;
  /** Weighted nodes left in float, each with the reason. */
  fp32Nodes: Fp32Node[];
  /** Other operators that run in float on dequantized tensors (no int8 kernel), counted by type. */
  floatOperators: Record<string, number>;
}

/** Options of {@link quantizeOnnx}. */
export type QuantizeOptions = CalibrationOptions;

function intAttr(n: NodeData, name: string, fallback: number): number {
  const a = n.attributes[name] as AttributeValue | undefined;
  return a && a.type === 'int' ? a.value : fallback;
}

/** The axis of a weighted node's weight that indexes its output channels. */
function outputAxis(n: NodeData): number {
  if (n.opType === 'Conv') return 0;
  if (n.opType === 'Gemm') return intAttr(n, 'transB', 0) ? 0 : 1;
  return 1; // ConvTranspose [in, out / group, ...], MatMul [in, out]
}

/** Why a weighted node cannot be quantized, or `undefined` when it can. */
function unquantizable(n: NodeData, init: Map<string, TensorData>): string | undefined {
  if (init.has(n.inputs[0])) return 'its first input is a constant, not an activation';
  const weight = init.get(n.inputs[1]);
  if (!weight) return 'its weight is computed in the graph, not a constant initializer';
  if (!(weight.values instanceof Float32Array)) return 'its weight is not float32';
  const rank = weight.dims.length;
  if ((n.opType === 'MatMul' || n.opType === 'Gemm') && rank !== 2) return `its weight has rank ${rank}, not 2`;
  if (rank < 3 && (n.opType === 'Conv' || n.opType === 'ConvTranspose')) return `its weight has rank ${rank}`;
  return undefined;
}

/**
 * Symmetric int8 values and one scale per slice of `axis`, `max |w| / 127`; a slice of zeros takes `zeroScale(c)`.
 */
function quantizeWeight(
  w: TensorData,
  axis: number,
  zeroScale: (channel: number) => number,
): { values: Int8Array; scales: Float32Array } {
  const dims = w.dims;
  const channels = dims[axis];
  const inner = dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  const values = w.values as Float32Array;
  const channelOf = (i: number) => Math.floor(i / inner) % channels;
  const scales = new Float32Array(channels);
  for (let i = 0; i < values.length; i++) {
    const c = channelOf(i);
    scales[c] = Math.max(scales[c], Math.abs(values[i]) / 127);
  }
  for (let c = 0; c < channels; c++) if (scales[c] === 0) scales[c] = zeroScale(c);
  const q = new Int8Array(values.length);
  for (let i = 0; i < values.length; i++) {
    q[i] = Math.max(-127, Math.min(127, Math.round(values[i] / scales[channelOf(i)])));
  }
  return { values: q, scales };
}

/** uint8 scale and zero point of a range, widened to include 0 (exact, for zero padding and ReLU). */
function activationParams(min: number, max: number): { scale: number; zeroPoint: number } {
  const lo = Math.min(min, 0);
  const hi = Math.max(max, 0);
  const scale = Math.fround((hi - lo) / 255);
  if (!(scale > 0)) return { scale: 1, zeroPoint: 0 };
  return { scale, zeroPoint: Math.max(0, Math.min(255, Math.round(-lo / scale))) };
}

/**
 * Quantizes an ONNX model written by `exportOnnx` to int8 in the QDQ format (see the module comment), calibrating the
 * activation ranges on `tiles` with onnxruntime-node. The result keeps the input and output of the original (float
 * `image` in, float `probabilities` out) and its metadata, plus a `tessera.quantization` entry.
 *
 * @param tiles normalised inputs `[batch, height, width, channels]`, e.g. tiles of the training images.
 * @throws QuantizeOptionError for a bad calibration method or percentile, or no tiles.
 * @example
 * ```ts
 * const { bytes, report } = await quantizeOnnx(await readFile('model/model.onnx'), tiles, { method: 'percentile' });
 * ```
 */
export async function quantizeOnnx(
  fp32: Uint8Array,
  tiles: readonly InputTensor[],
  options: QuantizeOptions = {},
): Promise<{ bytes: Uint8Array; report: QuantizationReport }> {
  const resolved = resolveCalibrationOptions(options);
  const model = decodeModel(fp32);
  const init = new Map(model.initializers.map((t) => [t.name, t]));
  const isActivation = (name: string) => name !== '' && !init.has(name);

  // The weighted nodes to quantize, and those left in float with why.
  const fp32Nodes: Fp32Node[] = [];
  const weighted = model.nodes.filter((n) => {
    if (!WEIGHTED.has(n.opType)) return false;
    const reason = unquantizable(n, init);
    if (reason) fp32Nodes.push({ node: n.name, opType: n.opType, reason });
    return !reason;
  });
  const weightedSet = new Set(weighted);

  // The activations to quantize: the inputs of quantized operators, then, walking back through value-moving
  // operators, their inputs, whose quantization they share.
  const quantized = new Set<string>();
  for (const n of weighted) quantized.add(n.inputs[0]);
  for (const n of model.nodes) {
    if (QUANTIZED_INPUTS.has(n.opType) && n.inputs.every(isActivation)) n.inputs.forEach((i) => quantized.add(i));
  }
  const shares = new Map<string, string>();
  for (const n of [...model.nodes].reverse()) {
    if (SAME_SCALE.has(n.opType) && quantized.has(n.outputs[0]) && isActivation(n.inputs[0])) {
      quantized.add(n.inputs[0]);
      shares.set(n.outputs[0], n.inputs[0]);
    }
  }
  const root = (t: string): string => (shares.has(t) ? root(shares.get(t)!) : t);
  const calibrated = [...quantized].filter((t) => !shares.has(t));
  const ranges = await calibrateRanges(model, calibrated, tiles, resolved);
  const params = new Map(
    [...quantized].map((t) => {
      const { min, max } = ranges.get(root(t))!;
      return [t, activationParams(min, max)];
    }),
  );

  // The rewritten graph.
  const initializers: TensorData[] = [];
  const nodes: NodeData[] = [];
  const dequantize = (t: string, input: string, axis?: number) => {
    nodes.push({
      name: `${t}_DequantizeLinear`,
      opType: 'DequantizeLinear',
      inputs: [input, `${t}_scale`, `${t}_zero_point`],
      outputs: [`${t}_DequantizeLinear_Output`],
      attributes: axis === undefined ? {} : { axis: { type: 'int', value: axis } },
    });
    return `${t}_DequantizeLinear_Output`;
  };
  const qdq = (t: string) => {
    const { scale, zeroPoint } = params.get(t)!;
    initializers.push(
      { name: `${t}_scale`, dims: [], values: new Float32Array([scale]) },
      { name: `${t}_zero_point`, dims: [], values: new Uint8Array([zeroPoint]) },
    );
    const q = `${t}_QuantizeLinear_Output`;
    const scaleAndZero = [`${t}_scale`, `${t}_zero_point`];
    nodes.push({
      name: `${t}_QuantizeLinear`,
      opType: 'QuantizeLinear',
      inputs: [t, ...scaleAndZero],
      outputs: [q],
      attributes: {},
    });
    dequantize(t, q);
  };
  /** An int8 (or int32) initializer `${name}_quantized` with its scales and zero points, dequantized along `axis`. */
  const constant = (
    name: string,
    values: Int8Array | Int32Array,
    dims: readonly number[],
    scales: Float32Array,
    axis: number,
  ) => {
    const zeros = values instanceof Int8Array ? new Int8Array(scales.length) : new Int32Array(scales.length);
    initializers.push(
      { name: `${name}_quantized`, dims, values },
      { name: `${name}_scale`, dims: [scales.length], values: scales },
      { name: `${name}_zero_point`, dims: [scales.length], values: zeros },
    );
    return dequantize(name, `${name}_quantized`, axis);
  };
  const read = (t: string) => (quantized.has(t) ? `${t}_DequantizeLinear_Output` : t);
  const weights = new Map<string, { output: string; scales: Float32Array }>();
  // A bias shared by nodes with other input or weight scales is quantized once for each.
  const biasUses = new Map<string, number>();
  for (const n of weighted) if (n.inputs[2]) biasUses.set(n.inputs[2], (biasUses.get(n.inputs[2]) ?? 0) + 1);
  for (const input of model.inputs) if (quantized.has(input.name)) qdq(input.name);
  for (const n of model.nodes) {
    const inputs = n.inputs.map(read);
    if (weightedSet.has(n)) {
      const w = init.get(n.inputs[1])!;
      const bias = n.opType === 'MatMul' ? undefined : init.get(n.inputs[2] ?? '');
      const inputScale = params.get(n.inputs[0])!.scale;
      let weight = weights.get(w.name);
      if (!weight) {
        // A channel of zero weights outputs its bias alone (DeepLab's map of ones): its scale keeps 2^24 steps of the
        // bias, where a scale of 1 would round the bias to the input's step.
        const channels = w.dims[outputAxis(n)];
        const biasOf = (c: number) => (bias?.dims[0] === channels ? Math.abs(bias.values[c] as number) : 0);
        const zeroScale = (c: number) => (biasOf(c) > 0 ? biasOf(c) / (inputScale * 2 ** 24) : 1);
        const { values, scales } = quantizeWeight(w, outputAxis(n), zeroScale);
        weight = { output: constant(w.name, values, w.dims, scales, outputAxis(n)), scales };
        weights.set(w.name, weight);
      }
      inputs[1] = weight.output;
      if (bias) {
        // int32 at scale input scale x weight scale, which QLinearConv adds to its int32 accumulator as it is.
        const scales = Float32Array.from(bias.values as Float32Array, (_, c) =>
          Math.fround(inputScale * weight.scales[c % weight.scales.length]),
        );
        const q = Float64Array.from(bias.values as Float32Array, (b, c) => Math.round(b / scales[c]));
        const reason =
          bias.dims.length !== 1
            ? `its bias has dims [${bias.dims.join(', ')}], not one value per output channel`
            : q.some((v) => Math.abs(v) > INT32_MAX)
              ? 'its bias does not fit int32 at the scale input scale x weight scale'
              : undefined;
        if (reason) {
          fp32Nodes.push({
            node: n.name,
            opType: n.opType,
            reason: `${reason}: the bias stays float and onnxruntime runs the node in float on its dequantized input and weight`,
          });
        } else {
          const name = biasUses.get(bias.name)! > 1 ? `${bias.name}_${n.name}` : bias.name;
          inputs[2] = constant(name, Int32Array.from(q), bias.dims, scales, 0);
        }
      }
    }
    nodes.push({ ...n, inputs });
    for (const o of n.outputs) if (quantized.has(o)) qdq(o);
  }
  const used = new Set(nodes.flatMap((n) => n.inputs));
  initializers.unshift(...model.initializers.filter((t) => used.has(t.name)));

  const count = (list: string[]) =>
    Object.fromEntries([...new Set(list)].sort().map((op) => [op, list.filter((o) => o === op).length]));
  const report: QuantizationReport = {
    method: resolved.method,
    percentile: resolved.method === 'percentile' ? resolved.percentile : null,
    tiles: tiles.length,
    quantizedNodes: count(weighted.map((n) => n.opType)),
    fp32Nodes,
    floatOperators: count(
      model.nodes
        .filter((n) => !WEIGHTED.has(n.opType) && !PLUMBING.has(n.opType))
        .filter((n) => !(QUANTIZED_INPUTS.has(n.opType) && n.inputs.every((i) => quantized.has(i))))
        .filter((n) => !(FUSED_ACTIVATIONS.has(n.opType) && quantized.has(n.outputs[0])))
        .map((n) => n.opType),
    ),
  };
  const bytes = encodeModel({
    ...model,
    docString: `${model.docString ?? model.graphName} (int8, QDQ)`,
    nodes,
    initializers,
    metadata: { ...model.metadata, [ONNX_METADATA.quantization]: JSON.stringify(report) },
  });
  return { bytes, report };
}
