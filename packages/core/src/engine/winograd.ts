/**
 * Winograd F(4x4, 3x3) convolution for the tfjs `wasm` backend (Lavin and Gray, "Fast Algorithms for Convolutional
 * Neural Networks", CVPR 2016).
 *
 * XNNPACK runs a 3x3 convolution as a direct GEMM of 9 * ci multiply-adds per output value, already at the speed limit
 * of 128-bit WebAssembly SIMD without fused multiply-add. Winograd's minimal filtering computes each 4x4 output tile
 * from a 6x6 input tile with 36 instead of 144 multiplications per channel pair, so the work becomes 36 matrix
 * products `V_k [tiles, ci] x U_k [ci, co]` (the backend's XNNPACK matmul) between three cheap transforms (Tessera's
 * SIMD loops, `assembly/kernels.ts`): 4x fewer multiply-adds in the products, for transforms that cost a few reads and
 * writes per value. Training networks made of 3x3 convolutions (VGG-16 in FCN-8s, the DeepLabv3+ decoder) spend most
 * of a step in them: the forward pass, and the stride-1 input gradient, which is itself a 3x3 convolution.
 *
 * Used for 3x3 stride-1 undilated NHWC float32 convolutions with channel counts that are multiples of 4, enough of
 * them ({@link MIN_CHANNELS_FORWARD}) and at least {@link MIN_TILES} output tiles; the filter gradient likewise, from
 * more channels; everything else, and `FusedConv2D` with an activation other than none
 * or ReLU or with PReLU weights, runs the builtin kernel. Results differ from the direct convolution by rounding only
 * (relative differences of about 1e-6 of the output's scale); the order of every sum is fixed, so they are
 * deterministic. `TESSERA_WINOGRAD=0` in the environment turns it off (every convolution runs the builtin kernel), for
 * comparisons.
 */
import { backend_util, type DataType, type KernelFunc, type TensorInfo } from '@tensorflow/tfjs-core';
import { pointer, simdKernels, withWindow, type SimdWindow } from './simd.js';

/** The parts of tfjs-backend-wasm's `BackendWasm` used here. */
interface WasmBackend {
  makeOutput(shape: number[], dtype: DataType): TensorInfo;
  typedArrayFromHeap(info: TensorInfo): backend_util.TypedArray;
  disposeData(dataId: object, force?: boolean): boolean;
}

/** A kernel of the SIMD module: heap pointers (byte offsets) and counts, in the order `assembly/kernels.ts` gives. */
type SimdKernel = (...pointersAndCounts: number[]) => void;

/** The Winograd kernels of the SIMD module (`assembly/kernels.ts`), each documented there. */
interface WinogradKernels {
  winogradInput: SimdKernel;
  winogradGradOutput: SimdKernel;
  winogradOutput: SimdKernel;
  winogradFilter: SimdKernel;
  winogradFilterGrad: SimdKernel;
}

type KernelArgs = Parameters<KernelFunc>[0];

/** Fewer output tiles than this run the builtin kernel: 36 matmul calls cost more than they save on tiny images. */
export const MIN_TILES = 64;

/**
 * Smallest `ci * co` run by Winograd: below, the 36 products are too thin to beat XNNPACK's direct convolution
 * (measured per layer on 2 x 256 x 256 crops: 16 -> 16 channels ran 0.9x, 16 -> 32 1.6x; the filter gradient, whose
 * transforms cost more, 0.6x at 16 -> 16, 0.8x at 32 -> 32, 1.0x at 32 -> 64 and 1.2-1.9x from 64 -> 64 up).
 */
const MIN_CHANNELS_FORWARD = 512;
const MIN_CHANNELS_FILTER_GRADIENT = 4096;

/**
 * Upper bound (bytes) of the transformed input or products of one chunk of tile rows; larger work runs in chunks
 * (a knob for the tests, not part of the package's API).
 */
export const winogradLimits = { chunkBytes: 48 << 20 };

interface ConvAttrs {
  strides: [number, number] | number;
  pad: 'valid' | 'same' | number | backend_util.ExplicitPadding;
  dilations?: [number, number] | number;
  dataFormat?: string;
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
  activation?: string;
}

function matMul(be: WasmBackend, a: TensorInfo, m: number, k: number, b: TensorInfo, n: number, call: CallKernel) {
  return call(
    'BatchMatMul',
    {
      a: { dataId: a.dataId, shape: [m, k], dtype: 'float32' },
      b: { dataId: b.dataId, shape: [k, n], dtype: 'float32' },
    },
    { transposeA: false, transposeB: false },
  );
}

/** Runs a kernel of the wasm backend (the caller's registry lookup). */
export type CallKernel = (
  name: string,
  inputs: Record<string, TensorInfo>,
  attrs: Record<string, unknown>,
) => TensorInfo;

/** Heap pointers of `infos`, written on the heap as int32 values; returns the table (free it after use). */
function table(be: WasmBackend, infos: TensorInfo[]): TensorInfo {
  const t = be.makeOutput([infos.length], 'int32');
  (be.typedArrayFromHeap(t) as Int32Array).set(infos.map((info) => pointer(be, info)));
  return t;
}

/** The convolution's geometry when Winograd applies to it, else null. */
function plan(
  x: TensorInfo,
  filterShape: readonly number[],
  attrs: ConvAttrs,
  minChannelProduct: number,
): (SimdWindow & { co: number }) | null {
  if (process.env.TESSERA_WINOGRAD === '0') return null;
  if (x.dtype !== 'float32' || x.shape.length !== 4 || filterShape.length !== 4) return null;
  if (attrs.dataFormat != null && attrs.dataFormat !== 'NHWC') return null;
  const [kh, kw, ci, co] = filterShape;
  if (kh !== 3 || kw !== 3 || ci % 4 !== 0 || co % 4 !== 0 || ci * co < minChannelProduct || x.shape[3] !== ci) {
    return null;
  }
  const info = backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number],
    filterShape as [number, number, number, number],
    attrs.strides,
    attrs.dilations ?? 1,
    attrs.pad,
    attrs.dimRoundingMode,
    false,
    'channelsLast',
  );
  if (info.strideHeight !== 1 || info.strideWidth !== 1 || info.dilationHeight !== 1 || info.dilationWidth !== 1) {
    return null;
  }
  const { outHeight: oh, outWidth: ow } = info;
  if (oh <= 0 || ow <= 0 || info.batchSize * Math.ceil(oh / 4) * Math.ceil(ow / 4) < MIN_TILES) return null;
  return {
    n: info.batchSize,
    h: info.inHeight,
    w: info.inWidth,
    c: ci,
    oh,
    ow,
    kh: 3,
    kw: 3,
    sh: 1,
    sw: 1,
    dh: 1,
    dw: 1,
    pt: info.padInfo.top,
    pl: info.padInfo.left,
    co,
  };
}

/** A chunk of tile rows, with the buffers its transforms share. */
interface Chunk {
  /** First tile row (`b * ceil(oh / 4) + ty`) and number of tile rows. */
  r0: number;
  rows: number;
  /** Tiles of the chunk. */
  tiles: number;
  /** Heap pointers: the geometry, 1 KB of scratch, and a pixel of zeros (the transforms' padding). */
  window: number;
  scratch: number;
  zeros: number;
}

/** Runs `work` over the chunks of tile rows of `g`, each small enough for {@link winogradLimits}. */
function forEachChunk(be: WasmBackend, g: SimdWindow & { co: number }, work: (chunk: Chunk) => void): void {
  const tw = Math.ceil(g.ow / 4);
  const rowsTotal = g.n * Math.ceil(g.oh / 4);
  const widest = Math.max(g.c, g.co);
  const perChunk = Math.max(1, Math.min(rowsTotal, Math.floor(winogradLimits.chunkBytes / (36 * 4 * tw * widest))));
  const scratch = be.makeOutput([256], 'float32');
  const zeros = be.makeOutput([widest], 'float32');
  (be.typedArrayFromHeap(zeros) as Float32Array).fill(0);
  try {
    withWindow(be, g, (window) => {
      for (let r0 = 0; r0 < rowsTotal; r0 += perChunk) {
        const rows = Math.min(perChunk, rowsTotal - r0);
        work({ r0, rows, tiles: rows * tw, window, scratch: pointer(be, scratch), zeros: pointer(be, zeros) });
      }
    });
  } finally {
    free(be, zeros);
    free(be, scratch);
  }
}

/** 36 new matrices of `shape`, filled by `fill` given the heap pointer of a table of their pointers. */
function matrices36(be: WasmBackend, shape: number[], fill: (table: number) => void): TensorInfo[] {
  const out = Array.from({ length: 36 }, () => be.makeOutput(shape, 'float32'));
  const t = table(be, out);
  try {
    fill(pointer(be, t));
  } finally {
    free(be, t);
  }
  return out;
}

/**
 * `y = conv2d(x, filter) (+ bias) (then ReLU)` by Winograd F(4x4, 3x3), or null when it does not apply (see the
 * module's description); `call` runs the backend's other kernels (its matmul).
 */
export function winogradConv2D(
  be: WasmBackend,
  x: TensorInfo,
  filter: TensorInfo,
  bias: TensorInfo | undefined,
  relu: boolean,
  attrs: ConvAttrs,
  call: CallKernel,
): TensorInfo | null {
  if (filter.dtype !== 'float32') return null;
  const g = plan(x, filter.shape, attrs, MIN_CHANNELS_FORWARD);
  if (g == null) return null;
  if (bias != null && (bias.dtype !== 'float32' || bias.shape.reduce((a, b) => a * b, 1) !== g.co)) return null;
  const simd = simdKernels(be) as unknown as WinogradKernels;
  const { c: ci, co } = g;
  const y = be.makeOutput([g.n, g.oh, g.ow, co], 'float32');
  let u: TensorInfo[] | undefined;
  forEachChunk(be, g, (chunk) => {
    // U_k [ci, co] = (G g G^T)[k], once (the first chunk's scratch is as good as any).
    u ??= matrices36(be, [ci, co], (t) => simd.winogradFilter(pointer(be, filter), t, chunk.scratch, ci, co));
    const { r0, rows, tiles, window, scratch, zeros } = chunk;
    const v = matrices36(be, [tiles, ci], (t) =>
      simd.winogradInput(pointer(be, x), t, zeros, scratch, r0, rows, window, 0),
    );
    const m = v.map((vk, k) => {
      const mk = matMul(be, vk, tiles, ci, u![k], co, call);
      free(be, vk);
      return mk;
    });
    const mTable = table(be, m);
    const b = bias != null ? pointer(be, bias) : 0;
    simd.winogradOutput(pointer(be, mTable), pointer(be, y), b, relu ? 1 : 0, scratch, r0, rows, co, window);
    free(be, mTable);
    for (const mk of m) free(be, mk);
  });
  for (const uk of u ?? []) free(be, uk);
  return y;
}

/**
 * The filter gradient `dW [3, 3, ci, co]` of a 3x3 stride-1 convolution `x -> dy` by Winograd F(4x4, 3x3), or null
 * when it does not apply: `dW = G^T [sum over tiles of (B^T d B) .* (A dY A^T)] G`, the sum being the 36 products
 * `V_k^T [ci, tiles] x W_k [tiles, co]` (4x fewer multiply-adds than the im2col matmul), accumulated over chunks.
 */
export function winogradFilterGradient(
  be: WasmBackend,
  x: TensorInfo,
  dy: TensorInfo,
  filterShape: readonly number[],
  attrs: ConvAttrs,
  call: CallKernel,
): TensorInfo | null {
  if (dy.dtype !== 'float32') return null;
  const g = plan(x, filterShape, attrs, MIN_CHANNELS_FILTER_GRADIENT);
  if (g == null) return null;
  const simd = simdKernels(be) as unknown as WinogradKernels;
  const { c: ci, co } = g;
  let du: TensorInfo[] | undefined;
  const dw = be.makeOutput([3, 3, ci, co], 'float32');
  forEachChunk(be, g, (chunk) => {
    const { r0, rows, tiles, window, scratch, zeros } = chunk;
    const v = matrices36(be, [ci, tiles], (t) =>
      simd.winogradInput(pointer(be, x), t, zeros, scratch, r0, rows, window, tiles),
    );
    const w = matrices36(be, [tiles, co], (t) =>
      simd.winogradGradOutput(pointer(be, dy), t, zeros, scratch, r0, rows, co, window),
    );
    const products = v.map((vk, k) => {
      const pk = matMul(be, vk, ci, tiles, w[k], co, call);
      free(be, vk);
      free(be, w[k]);
      return pk;
    });
    if (du == null) {
      du = products;
    } else {
      for (let k = 0; k < 36; k++) {
        const acc = be.typedArrayFromHeap(du[k]) as Float32Array;
        const add = be.typedArrayFromHeap(products[k]) as Float32Array;
        for (let i = 0; i < acc.length; i++) acc[i] += add[i];
        free(be, products[k]);
      }
    }
    if (r0 + rows === g.n * Math.ceil(g.oh / 4)) {
      // The last chunk: dW = G^T dU G.
      const duTable = table(be, du);
      simd.winogradFilterGrad(pointer(be, duTable), pointer(be, dw), scratch, ci, co);
      free(be, duTable);
      for (const d of du) free(be, d);
    }
  });
  return dw;
}

function free(be: WasmBackend, info: TensorInfo): void {
  be.disposeData(info.dataId);
}

/** `Conv2D` by Winograd where it applies, else null. */
export function winogradConv2DKernel(args: KernelArgs, call: CallKernel): TensorInfo | null {
  const { x, filter } = args.inputs as { x: TensorInfo; filter: TensorInfo };
  return winogradConv2D(
    args.backend as WasmBackend,
    x,
    filter,
    undefined,
    false,
    args.attrs as unknown as ConvAttrs,
    call,
  );
}

/** `FusedConv2D` (bias, no activation or ReLU, no PReLU weights) by Winograd where it applies, else null. */
export function winogradFusedConv2DKernel(args: KernelArgs, call: CallKernel): TensorInfo | null {
  const { x, filter, bias, preluActivationWeights } = args.inputs as Record<string, TensorInfo | undefined>;
  const attrs = args.attrs as unknown as ConvAttrs;
  const activation = attrs.activation ?? 'linear';
  if (preluActivationWeights != null || (activation !== 'linear' && activation !== 'relu')) return null;
  return winogradConv2D(args.backend as WasmBackend, x!, filter!, bias, activation === 'relu', attrs, call);
}
