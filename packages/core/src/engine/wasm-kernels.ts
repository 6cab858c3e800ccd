/**
 * Faster tfjs `wasm` backend kernels for the memory-bound work of a training step.
 *
 * A DeepLabv3+ (MobileNetV2) training step on the wasm backend spent more time in batch normalisation, ReLU6,
 * reductions and copies than in its convolutions: tfjs-backend-wasm copies the data of every `Identity` (tfjs clones
 * each tensor it saves for the backward pass) and of same-dtype `Cast`s, transposes the input of a `Sum` or `Mean`
 * over leading axes (batch norm's moments over batch, height and width), runs `FusedBatchNorm` and `SplitV` as scalar
 * loops, and tfjs-core's gradients of batch normalisation, `Sum`, `Mean` (a `ones` tensor filled in JS) and
 * `ClipByValue` (ReLU6: five full-size ops) are chains of full-size tensor ops. Here:
 *
 * - replacements of builtin kernels, each falling back to the builtin one outside its fast path: `Identity` and
 *   same-dtype `Cast` share the input's data (as the backend's `Reshape` and the cpu backend's `Identity` do); `Sum`
 *   and `Mean` over leading axes are one SIMD pass with float64 column accumulators; `FusedBatchNorm` with
 *   per-channel parameters is the backend's SIMD `Sub`, `Multiply` and `Add`; `SplitV` of float32 data copies row
 *   segments;
 * - new kernels used by Tessera's gradients (`gradients.ts`) on the wasm engine: {@link BATCH_NORM_GRAD} (all five
 *   batch-norm gradients: one SIMD pass for the float64 channel sums and a SIMD `Multiply`), {@link REDUCE_GRAD} and
 *   {@link CLIP_BY_VALUE_GRAD} (one pass each, tfjs-core's values).
 *
 * The SIMD passes are Tessera's own WebAssembly loops (`simd.ts`), working in place on the backend's heap; plain-JS
 * loops are kept for copies. All loops run in a fixed order, so results are deterministic (data-parallel training
 * relies on it).
 */
import {
  backend_util,
  getKernel,
  registerKernel,
  unregisterKernel,
  util,
  type DataType,
  type KernelFunc,
  type TensorInfo,
} from '@tensorflow/tfjs-core';
import {
  ADAM_UPDATE,
  BATCH_NORM_GRAD,
  BATCH_NORM_TRAIN,
  BATCH_NORM_TRAIN_GRAD,
  CLIP_BY_VALUE_GRAD,
  REDUCE_GRAD,
  RELU_GRAD,
  SEG_LOSS,
  SEG_LOSS_GRAD,
  SOFTMAX_GRAD,
  type SegLossAttrs,
} from './gradients.js';
import { tapConv2DKernel } from './dilated-taps.js';
import { noteConvolution } from './input-gradient.js';
import { pointer, simdKernels } from './simd.js';
import { registerOnWasm } from './wasm-gradients.js';
import { winogradConv2DKernel, winogradFusedConv2DKernel } from './winograd.js';

/** The parts of tfjs-backend-wasm's `BackendWasm` that these kernels use. */
interface WasmBackend {
  makeOutput(shape: number[], dtype: DataType): TensorInfo;
  typedArrayFromHeap(info: TensorInfo): backend_util.TypedArray;
  incRef(dataId: object): void;
  disposeData(dataId: object, force?: boolean): boolean;
}

type KernelArgs = Parameters<KernelFunc>[0];

function fail(kernel: string, message: string): never {
  throw new Error(`wasm-kernels ${kernel}: ${message}`);
}

function f32(be: WasmBackend, info: TensorInfo): Float32Array {
  return be.typedArrayFromHeap(info) as Float32Array;
}

/** The builtin kernels replaced here, captured when first replaced (their fallbacks). */
const builtins = new Map<string, KernelFunc>();

function builtin(kernelName: string, args: KernelArgs): TensorInfo | TensorInfo[] {
  const func = builtins.get(kernelName);
  if (func == null) fail(kernelName, 'the builtin wasm kernel was not captured; call registerWasmKernels()');
  return func(args);
}

/**
 * `[outer, inner, k]` when `axis` names exactly the leading axes `0..k-1` of `shape` (`0 < k < rank`): the data is
 * then `[outer, inner]` and the reduction is over its rows. Null otherwise.
 */
function leadingSplit(shape: readonly number[], axis: number | number[] | undefined): [number, number, number] | null {
  if (shape.length < 2) return null;
  const axes = [...new Set(util.parseAxisParam(axis ?? shape.map((_, i) => i), [...shape]))].sort((a, b) => a - b);
  const k = axes.length;
  if (k === 0 || k >= shape.length || axes.some((a, i) => a !== i)) return null;
  return [util.sizeFromShape(shape.slice(0, k)), util.sizeFromShape(shape.slice(k)), k];
}

/** True when `info` holds `c` values along the last axis of the data it applies to (shape `[c]`, `[1, 1, 1, c]`). */
function isChannelVector(info: TensorInfo | undefined, c: number): boolean {
  if (info == null) return true;
  const s = info.shape;
  return info.dtype === 'float32' && s.length >= 1 && s[s.length - 1] === c && util.sizeFromShape(s) === c;
}

// ---------------------------------------------------------------------------------------------------------------------
// Replacements of builtin kernels

/** `Identity` without a copy: the output shares the input's data (tensors are immutable). */
function identity(args: KernelArgs): TensorInfo | TensorInfo[] {
  const x = args.inputs.x as TensorInfo;
  if (x.dtype === 'string') return builtin('Identity', args);
  (args.backend as WasmBackend).incRef(x.dataId);
  return { dataId: x.dataId, shape: [...x.shape], dtype: x.dtype };
}

/** `Cast` to the input's own dtype without a copy. */
function cast(args: KernelArgs): TensorInfo | TensorInfo[] {
  const x = args.inputs.x as TensorInfo;
  if (x.dtype === 'string' || x.dtype !== (args.attrs as { dtype?: DataType }).dtype) return builtin('Cast', args);
  (args.backend as WasmBackend).incRef(x.dataId);
  return { dataId: x.dataId, shape: [...x.shape], dtype: x.dtype };
}

/** Column sums of `x [outer, inner]` (SIMD, float64 accumulators), divided by `outer` for `Mean`. */
function columnReduce(kernel: 'Sum' | 'Mean', args: KernelArgs): TensorInfo | TensorInfo[] {
  const x = args.inputs.x as TensorInfo;
  const { axis, keepDims } = args.attrs as { axis?: number | number[]; keepDims?: boolean };
  const split = x.dtype === 'float32' ? leadingSplit(x.shape, axis) : null;
  if (split == null) return builtin(kernel, args);
  const [outer, inner, k] = split;
  const be = args.backend as WasmBackend;
  const tail = x.shape.slice(k);
  const out = be.makeOutput(keepDims ? [...new Array<number>(k).fill(1), ...tail] : tail, 'float32');
  // Float64 column accumulators.
  const acc = be.makeOutput([2 * inner], 'float32');
  const divisor = kernel === 'Mean' ? outer : 1;
  simdKernels(be).columnReduce(pointer(be, x), outer, inner, 0, pointer(be, acc), pointer(be, out), divisor);
  be.disposeData(acc.dataId);
  return out;
}

/** Per-channel inverse standard deviation times scale, `scale / sqrt(variance + epsilon)`, as float32. */
function channelFactors(variance: Float32Array, scale: Float32Array | null, eps: number): Float32Array {
  const c = variance.length;
  const k = new Float32Array(c);
  for (let j = 0; j < c; j++) k[j] = Math.fround(1 / Math.sqrt(variance[j] + eps)) * (scale ? scale[j] : 1);
  return k;
}

/**
 * `SplitV` of float32 data (the gradient of `concat`, e.g. DeepLab's ASPP and decoder concatenations along
 * channels): each piece is a strided copy of row segments, instead of the builtin's generic `Slice` per piece.
 */
function splitV(args: KernelArgs): TensorInfo | TensorInfo[] {
  const x = args.inputs.x as TensorInfo;
  if (x.dtype !== 'float32' || x.shape.length === 0) return builtin('SplitV', args);
  const { numOrSizeSplits, axis } = args.attrs as { numOrSizeSplits: number | number[]; axis: number | number[] };
  const a = util.parseAxisParam(axis, [...x.shape])[0];
  const sizes = backend_util.prepareSplitSize(x, numOrSizeSplits, a);
  const be = args.backend as WasmBackend;
  const outer = util.sizeFromShape(x.shape.slice(0, a));
  const inner = util.sizeFromShape(x.shape.slice(a + 1));
  const row = x.shape[a] * inner;
  const outs = sizes.map((size) =>
    be.makeOutput(
      x.shape.map((d, i) => (i === a ? size : d)),
      'float32',
    ),
  );
  const src = f32(be, x);
  let begin = 0;
  outs.forEach((out, p) => {
    const len = sizes[p] * inner;
    const dst = f32(be, out);
    for (let r = 0, o = 0; r < outer; r++) {
      const s = r * row + begin;
      if (len >= 64) {
        dst.set(src.subarray(s, s + len), o);
        o += len;
      } else {
        for (let j = 0; j < len; j++, o++) dst[o] = src[s + j];
      }
    }
    begin += len;
  });
  return outs;
}

/** Runs the wasm backend's kernel `name` (a registered one, e.g. the SIMD element-wise ops). */
function callKernel(name: string, args: Omit<KernelArgs, 'attrs'> & { attrs?: KernelArgs['attrs'] }): TensorInfo {
  const config = getKernel(name, 'wasm');
  if (config == null) fail(name, `the wasm backend has no '${name}' kernel`);
  const out = config.kernelFunc({ attrs: {}, ...args });
  return Array.isArray(out) ? out[0] : out;
}

/** A `[c]` float32 tensor on the wasm heap holding `values`. */
function channelTensor(be: WasmBackend, values: Float32Array): TensorInfo {
  const info = be.makeOutput([values.length], 'float32');
  f32(be, info).set(values);
  return info;
}

/**
 * `FusedBatchNorm` with per-channel (last axis) parameters as the backend's (SIMD) broadcasting `Sub`, `Multiply`
 * and `Add`: `(x - mean) * k + offset` with `k = scale / sqrt(variance + eps)`, several times faster than the builtin
 * kernel's scalar loop.
 */
function fusedBatchNorm(args: KernelArgs): TensorInfo | TensorInfo[] {
  const { x, mean, variance, offset, scale } = args.inputs as Record<string, TensorInfo | undefined>;
  if (x == null || mean == null || variance == null || x.dtype !== 'float32' || x.shape.length < 1) {
    return builtin('FusedBatchNorm', args);
  }
  const c = x.shape[x.shape.length - 1];
  if (![mean, variance, offset, scale].every((t) => isChannelVector(t, c))) return builtin('FusedBatchNorm', args);
  const be = args.backend as WasmBackend;
  const backend = args.backend;
  const eps = (args.attrs as { varianceEpsilon: number }).varianceEpsilon;
  const k = channelTensor(be, channelFactors(f32(be, variance).slice(), scale ? f32(be, scale).slice() : null, eps));
  const m = { ...mean, shape: [c] };
  const centred = callKernel('Sub', { inputs: { a: x, b: m }, backend });
  const scaled = callKernel('Multiply', { inputs: { a: centred, b: k }, backend });
  be.disposeData(centred.dataId);
  be.disposeData(k.dataId);
  if (offset == null) return scaled;
  const out = callKernel('Add', { inputs: { a: scaled, b: { ...offset, shape: [c] } }, backend });
  be.disposeData(scaled.dataId);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------------
// Gradient kernels (see gradients.ts)

/** Float64 per-channel sums `sum(dy)` and `sum(dy * (x - mean))` over the rows of `x` and `dy` (one SIMD pass). */
function channelSums(be: WasmBackend, x: TensorInfo, dy: TensorInfo, mean: TensorInfo, c: number): Float64Array[] {
  // sum(dy) at [0, c) and sum(dy * (x - mean)) at [c, 2c), as float64.
  const sums = be.makeOutput([4 * c], 'float32');
  const at = pointer(be, sums);
  const rows = util.sizeFromShape(x.shape) / c;
  simdKernels(be).batchNormGradSums(pointer(be, x), pointer(be, dy), pointer(be, mean), rows, c, at, at + 8 * c);
  const view = be.typedArrayFromHeap(sums);
  const out = [0, 1].map((i) => new Float64Array(view.buffer, view.byteOffset + 8 * c * i, c).slice());
  be.disposeData(sums.dataId);
  return out;
}

/**
 * All gradients of `FusedBatchNorm` with per-channel parameters: outputs `[dx, dmean, dvariance, dscale, doffset]`,
 * `dx` shaped like `x`, the others `[c]`. Inputs `x`, `mean`, `variance`, `dy` and optionally `scale`; attribute
 * `varianceEpsilon`. One plain-JS pass over `x` and `dy` gives the per-channel sums `sum(dy)` and
 * `sum(dy * (x - mean))`; `dx = dy * scale / sqrt(variance + eps)` is the backend's (SIMD) `Multiply`.
 */
function batchNormGrad(args: KernelArgs): TensorInfo[] {
  const { x, mean, variance, scale, dy } = args.inputs as Record<string, TensorInfo | undefined>;
  if (x == null || mean == null || variance == null || dy == null) fail(BATCH_NORM_GRAD, 'missing input');
  const c = x.shape[x.shape.length - 1];
  if (![mean, variance, scale].every((t) => isChannelVector(t, c)) || x.dtype !== 'float32') {
    fail(BATCH_NORM_GRAD, `expected float32 x with [${c}] parameters, got x [${x.shape.join(', ')}]`);
  }
  if (!util.arraysEqual(dy.shape, x.shape)) fail(BATCH_NORM_GRAD, 'dy and x shapes differ');
  const be = args.backend as WasmBackend;
  const eps = (args.attrs as { varianceEpsilon: number }).varianceEpsilon;
  // Copies: heap views are invalidated when makeOutput grows the wasm memory.
  const v = f32(be, variance).slice();
  const s = scale ? f32(be, scale).slice() : null;
  const k = channelFactors(v, s, eps);
  const factor = channelTensor(be, k);
  const dx = callKernel('Multiply', { inputs: { a: dy, b: factor }, backend: args.backend });
  be.disposeData(factor.dataId);

  const [sumG, sumGX] = channelSums(be, x, dy, mean, c);
  const outs = [0, 1, 2, 3].map(() => be.makeOutput([c], 'float32'));
  const [dMean, dVar, dScale, dOffset] = outs.map((t) => f32(be, t));
  for (let j = 0; j < c; j++) {
    const invStd = 1 / Math.sqrt(v[j] + eps);
    const sj = s ? s[j] : 1;
    dMean[j] = -k[j] * sumG[j];
    dVar[j] = sumGX[j] * invStd * invStd * invStd * sj * -0.5;
    dScale[j] = sumGX[j] * invStd;
    dOffset[j] = sumG[j];
  }
  return [dx, ...outs];
}

/**
 * Training-mode batch normalisation over all axes but the last: outputs `[y, mean, variance]` (`[c]`) with the values
 * of `tf.moments` then `FusedBatchNorm` on this backend (the same float32 operations and float64 sums in the same
 * order), in three SIMD passes instead of seven full-size operations. Inputs `x`, `scale`, `offset` (`[c]`);
 * attribute `varianceEpsilon`.
 */
function batchNormTrain(args: KernelArgs): TensorInfo[] {
  const { x, scale, offset } = args.inputs as Record<string, TensorInfo | undefined>;
  if (x == null || scale == null || offset == null) fail(BATCH_NORM_TRAIN, 'missing input; expected x, scale, offset');
  const c = x.shape[x.shape.length - 1];
  if (x.shape.length < 2 || x.dtype !== 'float32' || ![scale, offset].every((t) => isChannelVector(t, c))) {
    fail(BATCH_NORM_TRAIN, `expected float32 x of rank >= 2 with [${c}] parameters, got x [${x.shape.join(', ')}]`);
  }
  const be = args.backend as WasmBackend;
  const eps = (args.attrs as { varianceEpsilon: number }).varianceEpsilon;
  const rows = util.sizeFromShape(x.shape) / c;
  const simd = simdKernels(be);
  const mean = be.makeOutput([c], 'float32');
  const variance = be.makeOutput([c], 'float32');
  const acc = be.makeOutput([2 * c], 'float32');
  simd.columnReduce(pointer(be, x), rows, c, 0, pointer(be, acc), pointer(be, mean), rows);
  simd.columnReduce(pointer(be, x), rows, c, pointer(be, mean), pointer(be, acc), pointer(be, variance), rows);
  be.disposeData(acc.dataId);
  const coefficients = be.makeOutput([3 * c], 'float32');
  const k = channelFactors(f32(be, variance).slice(), f32(be, scale).slice(), eps);
  const cf = f32(be, coefficients);
  cf.set(f32(be, mean));
  cf.set(k, c);
  cf.set(f32(be, offset), 2 * c);
  const y = be.makeOutput([...x.shape], 'float32');
  simd.batchNormApply(pointer(be, x), pointer(be, y), rows, c, pointer(be, coefficients));
  be.disposeData(coefficients.dataId);
  return [y, mean, variance];
}

/**
 * Gradient of training-mode batch normalisation, where `mean` and `variance` are the batch's own statistics of `x`
 * over all axes but the last (so `x` also reaches the output through them): outputs `[dx, dscale, doffset]`. Inputs
 * `x`, `dy`, and `mean`, `variance`, `scale` of `[c]` values; attribute `varianceEpsilon`. With `k = scale * invStd`
 * and `n` rows, `dx = k * dy - k * invStd^2 * sum(dy * (x - mean)) / n * (x - mean) - k * sum(dy) / n`: one SIMD
 * pass for the channel sums and one for `dx`, instead of the dozen full-size operations of the composed gradient.
 */
function batchNormTrainGrad(args: KernelArgs): TensorInfo[] {
  const { x, dy, mean, variance, scale } = args.inputs as Record<string, TensorInfo | undefined>;
  if (x == null || dy == null || mean == null || variance == null || scale == null) {
    fail(BATCH_NORM_TRAIN_GRAD, 'missing input; expected x, dy, mean, variance and scale');
  }
  const c = x.shape[x.shape.length - 1];
  if (![mean, variance, scale].every((t) => isChannelVector(t, c)) || x.dtype !== 'float32' || dy.dtype !== 'float32') {
    fail(BATCH_NORM_TRAIN_GRAD, `expected float32 x and dy with [${c}] parameters, got x [${x.shape.join(', ')}]`);
  }
  if (!util.arraysEqual(dy.shape, x.shape)) fail(BATCH_NORM_TRAIN_GRAD, 'dy and x shapes differ');
  const be = args.backend as WasmBackend;
  const eps = (args.attrs as { varianceEpsilon: number }).varianceEpsilon;
  const rows = util.sizeFromShape(x.shape) / c;
  const [sumG, sumGX] = channelSums(be, x, dy, mean, c);
  const coefficients = be.makeOutput([4 * c], 'float32');
  const v = f32(be, variance);
  const s = f32(be, scale);
  const m = f32(be, mean);
  const cf = f32(be, coefficients);
  const invStd = new Float64Array(c);
  for (let j = 0; j < c; j++) {
    invStd[j] = 1 / Math.sqrt(v[j] + eps);
    const k = s[j] * invStd[j];
    cf[j] = k;
    cf[c + j] = (-k * invStd[j] * invStd[j] * sumGX[j]) / rows;
    cf[2 * c + j] = (-k * sumG[j]) / rows;
    cf[3 * c + j] = m[j];
  }
  const dx = be.makeOutput([...x.shape], 'float32');
  simdKernels(be).batchNormTrainGrad(
    pointer(be, x),
    pointer(be, dy),
    pointer(be, dx),
    rows,
    c,
    pointer(be, coefficients),
  );
  be.disposeData(coefficients.dataId);
  const dScale = be.makeOutput([c], 'float32');
  const dOffset = be.makeOutput([c], 'float32');
  const ds = f32(be, dScale);
  const doff = f32(be, dOffset);
  for (let j = 0; j < c; j++) {
    ds[j] = sumGX[j] * invStd[j];
    doff[j] = sumG[j];
  }
  return [dx, dScale, dOffset];
}

/**
 * Gradient of `Sum` and `Mean`: `dy` (the reduced shape) broadcast back to `x`'s `shape` along the reduced `axes`,
 * divided by `divisor` (1 for `Sum`, the number of reduced elements for `Mean`; tfjs-core's `ones`, `mul`, `div`).
 */
function reduceGrad(args: KernelArgs): TensorInfo {
  const dy = args.inputs.dy as TensorInfo;
  const { shape, axes, divisor } = args.attrs as { shape: number[]; axes: number[]; divisor: number };
  const be = args.backend as WasmBackend;
  const rank = shape.length;
  const reduced = shape.map((_, d) => axes.includes(d));
  const keptSize = util.sizeFromShape(shape.filter((_, d) => !reduced[d]));
  if (dy.dtype !== 'float32' || util.sizeFromShape(dy.shape) !== keptSize) {
    fail(
      REDUCE_GRAD,
      `dy [${dy.shape.join(', ')}] is not [${shape.join(', ')}] reduced over axes [${axes.join(', ')}]`,
    );
  }
  const g = f32(be, dy);
  const col = new Float32Array(keptSize);
  for (let j = 0; j < keptSize; j++) col[j] = divisor === 1 ? g[j] : g[j] / divisor;
  const out = be.makeOutput([...shape], 'float32');
  const d = f32(be, out);
  const total = d.length;
  if (total === 0) return out;
  // A scalar, or leading axes reduced (batch norm's moments): whole copies of `col`.
  const lead = reduced.indexOf(false);
  if (rank === 0 || (lead >= 0 && reduced.slice(lead).every((r) => !r))) {
    d.set(col);
    for (let filled = keptSize; filled < total; filled *= 2) d.copyWithin(filled, 0, Math.min(filled, total - filled));
    return out;
  }
  // General case: an odometer over all but the last axis; the last axis is a run of one value or of `col`.
  const strides = new Array<number>(rank).fill(0);
  for (let dim = rank - 1, st = 1; dim >= 0; dim--) {
    if (!reduced[dim]) {
      strides[dim] = st;
      st *= shape[dim];
    }
  }
  const len = shape[rank - 1];
  const lastReduced = reduced[rank - 1];
  const index = new Array<number>(rank).fill(0);
  for (let o = 0, src = 0; o < total; ) {
    if (lastReduced) {
      const v = col[src];
      for (let j = 0; j < len; j++) d[o + j] = v;
    } else {
      for (let j = 0; j < len; j++) d[o + j] = col[src + j];
    }
    o += len;
    for (let dim = rank - 2; dim >= 0; dim--) {
      src += strides[dim];
      if (++index[dim] < shape[dim]) break;
      src -= strides[dim] * shape[dim];
      index[dim] = 0;
    }
  }
  return out;
}

/** Reads and checks the `dy` and `x` inputs of an element-wise gradient kernel. */
function elementwiseArgs(kernel: string, args: KernelArgs): [WasmBackend, TensorInfo, TensorInfo, TensorInfo] {
  const dy = args.inputs.dy as TensorInfo;
  const x = args.inputs.x as TensorInfo;
  if (dy.dtype !== 'float32' || x.dtype !== 'float32' || !util.arraysEqual(dy.shape, x.shape)) {
    fail(kernel, `expected float32 dy and x of one shape, got [${dy.shape}] and [${x.shape}]`);
  }
  const be = args.backend as WasmBackend;
  const out = be.makeOutput([...x.shape], 'float32');
  return [be, dy, x, out];
}

/** Gradient of `ClipByValue`: `dy` where `min <= x <= max`, else 0 (tfjs-core's `where(...)`, one pass). */
function clipByValueGrad(args: KernelArgs): TensorInfo {
  const [be, dy, x, out] = elementwiseArgs(CLIP_BY_VALUE_GRAD, args);
  const { clipValueMin: lo, clipValueMax: hi } = args.attrs as { clipValueMin: number; clipValueMax: number };
  const n = util.sizeFromShape(x.shape);
  simdKernels(be).clipByValueGrad(pointer(be, x), pointer(be, dy), pointer(be, out), n, lo, hi);
  return out;
}

/** Gradient of `Relu`: `dy * step(x)` (tfjs-core's two ops, one pass). */
function reluGrad(args: KernelArgs): TensorInfo {
  const [be, dy, x, out] = elementwiseArgs(RELU_GRAD, args);
  simdKernels(be).reluGrad(pointer(be, x), pointer(be, dy), pointer(be, out), util.sizeFromShape(x.shape));
  return out;
}

// ---------------------------------------------------------------------------------------------------------------------
// Softmax and the segmentation losses

/** `Softmax` of float32 data over the last axis: one SIMD pass (the builtin runs XNNPACK's softmax row by row). */
function softmax(args: KernelArgs): TensorInfo | TensorInfo[] {
  const logits = args.inputs.logits as TensorInfo;
  const { dim } = args.attrs as { dim: number };
  const rank = logits.shape.length;
  if (logits.dtype !== 'float32' || rank === 0 || (dim !== -1 && dim !== rank - 1)) return builtin('Softmax', args);
  const be = args.backend as WasmBackend;
  const c = logits.shape[rank - 1];
  const out = be.makeOutput([...logits.shape], 'float32');
  simdKernels(be).softmaxRows(pointer(be, logits), pointer(be, out), util.sizeFromShape(logits.shape) / c, c);
  return out;
}

/** Gradient of `Softmax` over the last axis from its output: `dy y - sum(dy y) y` per row (tfjs-core's formula). */
function softmaxGrad(args: KernelArgs): TensorInfo {
  const y = args.inputs.y as TensorInfo;
  const dy = args.inputs.dy as TensorInfo;
  if (y.dtype !== 'float32' || dy.dtype !== 'float32' || !util.arraysEqual(dy.shape, y.shape)) {
    fail(SOFTMAX_GRAD, `expected float32 y and dy of one shape, got [${y.shape}] and [${dy.shape}]`);
  }
  const be = args.backend as WasmBackend;
  const c = y.shape[y.shape.length - 1];
  const out = be.makeOutput([...y.shape], 'float32');
  simdKernels(be).softmaxGrad(pointer(be, y), pointer(be, dy), pointer(be, out), util.sizeFromShape(y.shape) / c, c);
  return out;
}

/** Checks the inputs of {@link SEG_LOSS} / {@link SEG_LOSS_GRAD}; returns pixels and classes. */
function segLossShape(kernel: string, p: TensorInfo, labels: TensorInfo, attrs: SegLossAttrs): [number, number] {
  const c = p.shape[p.shape.length - 1];
  const n = util.sizeFromShape(p.shape) / c;
  if (p.dtype !== 'float32' || labels.dtype !== 'int32' || !util.arraysEqual(labels.shape, p.shape.slice(0, -1))) {
    fail(
      kernel,
      `expected float32 p [..., C] and int32 labels of its leading shape, got [${p.shape}] and [${labels.shape}]`,
    );
  }
  if (attrs.classWeights.length !== 0 && attrs.classWeights.length !== c) {
    fail(kernel, `classWeights has ${attrs.classWeights.length} entries for ${c} classes`);
  }
  return [n, c];
}

/** The probabilities' clip bounds `[epsilon, 1 - epsilon]` in float32, as tfjs's `clipByValue` takes them. */
function clipBounds(attrs: SegLossAttrs): [number, number] {
  return [Math.fround(attrs.epsilon), Math.fround(1 - attrs.epsilon)];
}

/** Calls `use` with a heap pointer to the class weights (0 for none), freed afterwards. */
function withClassWeights<T>(be: WasmBackend, attrs: SegLossAttrs, use: (weights: number) => T): T {
  if (attrs.classWeights.length === 0) return use(0);
  const weights = be.makeOutput([attrs.classWeights.length], 'float32');
  try {
    f32(be, weights).set(attrs.classWeights);
    return use(pointer(be, weights));
  } finally {
    be.disposeData(weights.dataId);
  }
}

/** The `2 + 3c` float64 sums of `segLossSums` (`assembly/kernels.ts`), held in the bytes of a float32 tensor. */
function sums64(be: WasmBackend, sums: TensorInfo, c: number): Float64Array {
  const view = f32(be, sums);
  return new Float64Array(view.buffer, view.byteOffset, 2 + 3 * c);
}

/** `ceWeight * ce + diceWeight * (1 - mean Dice)` from the sums of `segLossSums`. */
function segLossValue(sums: Float64Array, c: number, a: SegLossAttrs): number {
  const ce = sums[0] / Math.max(sums[1], 1e-12);
  if (a.diceWeight === 0) return a.ceWeight * ce;
  let dice = 0;
  for (let k = 0; k < c; k++) {
    dice += (2 * sums[2 + 2 * c + k] + a.smooth) / (sums[2 + k] + sums[2 + c + k] + a.smooth);
  }
  return a.ceWeight * ce + a.diceWeight * (1 - dice / c);
}

/**
 * The segmentation loss (see `SegLossAttrs` in `gradients.ts`) from one pass of float64 sums. Outputs the scalar loss
 * and the sums (their float64 bytes in a float32 tensor), which the gradient reuses instead of summing again.
 */
function segLoss(args: KernelArgs): TensorInfo[] {
  const { p, labels } = args.inputs as Record<string, TensorInfo>;
  const attrs = args.attrs as unknown as SegLossAttrs;
  const [n, c] = segLossShape(SEG_LOSS, p, labels, attrs);
  const be = args.backend as WasmBackend;
  const sums = be.makeOutput([2 * (2 + 3 * c)], 'float32');
  const [lo, hi] = clipBounds(attrs);
  withClassWeights(be, attrs, (w) =>
    simdKernels(be).segLossSums(pointer(be, p), pointer(be, labels), n, c, w, lo, hi, pointer(be, sums)),
  );
  const loss = be.makeOutput([], 'float32');
  f32(be, loss)[0] = segLossValue(sums64(be, sums, c), c, attrs);
  return [loss, sums];
}

/** Gradient of {@link segLoss} with respect to `p`, times the scalar `dy`, from the forward pass's `sums`. */
function segLossGrad(args: KernelArgs): TensorInfo {
  const { p, labels, sums, dy } = args.inputs as Record<string, TensorInfo>;
  const attrs = args.attrs as unknown as SegLossAttrs;
  const [n, c] = segLossShape(SEG_LOSS_GRAD, p, labels, attrs);
  if (dy.dtype !== 'float32' || util.sizeFromShape(dy.shape) !== 1) {
    fail(SEG_LOSS_GRAD, `expected a scalar dy, got [${dy.shape}]`);
  }
  if (util.sizeFromShape(sums.shape) !== 2 * (2 + 3 * c)) {
    fail(SEG_LOSS_GRAD, `expected the ${SEG_LOSS} sums of ${c} classes, got [${sums.shape}]`);
  }
  const be = args.backend as WasmBackend;
  const g = f32(be, dy)[0];
  const s = sums64(be, sums, c);
  const out = be.makeOutput([...p.shape], 'float32');
  const coef = be.makeOutput([2 * c], 'float32');
  try {
    // d(1 - mean_k dice_k)/dp_ik = a_k + b_k [y == k] over valid pixels, dice_k = (2 I_k + s) / D_k.
    const k = f32(be, coef).fill(0);
    for (let j = 0; j < c && attrs.diceWeight !== 0; j++) {
      const d = s[2 + j] + s[2 + c + j] + attrs.smooth;
      const scale = (g * attrs.diceWeight) / c;
      k[j] = (scale * (2 * s[2 + 2 * c + j] + attrs.smooth)) / (d * d);
      k[c + j] = (-scale * 2) / d;
    }
    const ceScale = (g * attrs.ceWeight) / Math.max(s[1], 1e-12);
    const [lo, hi] = clipBounds(attrs);
    withClassWeights(be, attrs, (w) =>
      simdKernels(be).segLossGrad(
        pointer(be, p),
        pointer(be, labels),
        n,
        c,
        w,
        lo,
        hi,
        ceScale,
        pointer(be, coef),
        pointer(be, out),
      ),
    );
  } finally {
    be.disposeData(coef.dataId);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------------
// Registration

/**
 * `Conv2D`: Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions (`winograd.ts`), tap by tap for dilated ones on small
 * maps (`dilated-taps.ts`), else the builtin.
 */
function conv2D(args: KernelArgs): TensorInfo | TensorInfo[] {
  noteConvolution(args.inputs.x as TensorInfo, args.inputs.filter as TensorInfo);
  return winogradConv2DKernel(args) ?? tapConv2DKernel(args) ?? builtin('Conv2D', args);
}

/** `FusedConv2D`: Winograd F(4x4, 3x3) with bias and ReLU or none (`winograd.ts`), else the builtin. */
function fusedConv2D(args: KernelArgs): TensorInfo | TensorInfo[] {
  noteConvolution(args.inputs.x as TensorInfo, args.inputs.filter as TensorInfo);
  return winogradFusedConv2DKernel(args) ?? builtin('FusedConv2D', args);
}

/**
 * One Adam step over a weight tensor: inputs `w`, `g` (its gradient), `m`, `v` (the moments), attribute
 * `coefficients` (`[b1, b2, 1 - b1, 1 - b2, epsilon, -learningRate, 1 - b1^t, 1 - b2^t]`, float32); outputs
 * `[w', m', v']`. One SIMD pass with tfjs's float32 operations in tfjs's order (`optimizers.ts` has the scalar one).
 */
function adamUpdate(args: KernelArgs): TensorInfo[] {
  const { w, g, m, v } = args.inputs as Record<string, TensorInfo | undefined>;
  if (w == null || g == null || m == null || v == null) fail(ADAM_UPDATE, 'missing input; expected w, g, m and v');
  const n = util.sizeFromShape(w.shape);
  if ([w, g, m, v].some((t) => t.dtype !== 'float32' || util.sizeFromShape(t.shape) !== n)) {
    fail(ADAM_UPDATE, `expected four float32 tensors of ${n} values`);
  }
  const be = args.backend as WasmBackend;
  const k = be.makeOutput([8], 'float32');
  f32(be, k).set((args.attrs as { coefficients: number[] }).coefficients);
  const outs = [w, m, v].map((t) => be.makeOutput([...t.shape], 'float32'));
  const p = (t: TensorInfo) => pointer(be, t);
  simdKernels(be).adamUpdate(p(w), p(g), p(m), p(v), p(outs[0]), p(outs[1]), p(outs[2]), n, p(k));
  be.disposeData(k.dataId);
  return outs;
}

const REPLACEMENTS: readonly { kernelName: string; kernelFunc: KernelFunc }[] = [
  { kernelName: 'Conv2D', kernelFunc: conv2D as KernelFunc },
  { kernelName: 'FusedConv2D', kernelFunc: fusedConv2D as KernelFunc },
  { kernelName: 'Identity', kernelFunc: identity as KernelFunc },
  { kernelName: 'Cast', kernelFunc: cast as KernelFunc },
  { kernelName: 'Sum', kernelFunc: ((args: KernelArgs) => columnReduce('Sum', args)) as KernelFunc },
  { kernelName: 'Mean', kernelFunc: ((args: KernelArgs) => columnReduce('Mean', args)) as KernelFunc },
  { kernelName: 'FusedBatchNorm', kernelFunc: fusedBatchNorm as KernelFunc },
  { kernelName: 'SplitV', kernelFunc: splitV as KernelFunc },
  { kernelName: 'Softmax', kernelFunc: softmax as KernelFunc },
];

const ADDITIONS: readonly { kernelName: string; kernelFunc: KernelFunc }[] = [
  { kernelName: BATCH_NORM_GRAD, kernelFunc: batchNormGrad as unknown as KernelFunc },
  { kernelName: BATCH_NORM_TRAIN, kernelFunc: batchNormTrain as unknown as KernelFunc },
  { kernelName: BATCH_NORM_TRAIN_GRAD, kernelFunc: batchNormTrainGrad as unknown as KernelFunc },
  { kernelName: REDUCE_GRAD, kernelFunc: reduceGrad as KernelFunc },
  { kernelName: CLIP_BY_VALUE_GRAD, kernelFunc: clipByValueGrad as KernelFunc },
  { kernelName: ADAM_UPDATE, kernelFunc: adamUpdate as unknown as KernelFunc },
  { kernelName: RELU_GRAD, kernelFunc: reluGrad as KernelFunc },
  { kernelName: SOFTMAX_GRAD, kernelFunc: softmaxGrad as KernelFunc },
  { kernelName: SEG_LOSS, kernelFunc: segLoss as unknown as KernelFunc },
  { kernelName: SEG_LOSS_GRAD, kernelFunc: segLossGrad as KernelFunc },
];

/**
 * Registers Tessera's faster kernels for the tfjs `wasm` backend: replacements of `Identity`, `Cast`, `Sum`, `Mean`,
 * `FusedBatchNorm` and `SplitV` (each falls back to the builtin kernel outside its fast path) and the gradient kernels
 * {@link BATCH_NORM_GRAD}, {@link BATCH_NORM_TRAIN}, {@link BATCH_NORM_TRAIN_GRAD}, {@link REDUCE_GRAD} and
 * {@link CLIP_BY_VALUE_GRAD} that Tessera's gradients (`gradients.ts`) use on the wasm engine. Import `@tensorflow/tfjs-backend-wasm` first.
 *
 * Idempotent: kernels already registered by an earlier call are left alone.
 *
 * @returns the kernel names registered by this call (empty when all were already registered).
 * @throws Error when the wasm backend's builtin kernels are not registered.
 * @example
 * ```ts
 * import '@tensorflow/tfjs-backend-wasm';
 * registerWasmKernels();
 * await tf.setBackend('wasm');
 * ```
 */
export function registerWasmKernels(): string[] {
  const registered: string[] = [];
  for (const { kernelName, kernelFunc } of REPLACEMENTS) {
    const existing = getKernel(kernelName, 'wasm');
    if (existing?.kernelFunc === kernelFunc) continue;
    if (existing == null)
      fail(kernelName, "the wasm backend has no builtin kernel; import '@tensorflow/tfjs-backend-wasm'");
    if (!builtins.has(kernelName)) builtins.set(kernelName, existing.kernelFunc);
    unregisterKernel(kernelName, 'wasm');
    // Keep the builtin's setup (it binds the wasm functions its kernel calls) for the fallback.
    registerKernel({ ...existing, kernelFunc });
    registered.push(kernelName);
  }
  registered.push(...registerOnWasm(ADDITIONS));
  return registered;
}
