/**
 * Winograd F(4x4, 3x3) convolution for the tfjs `wasm` backend (Lavin and Gray, "Fast Algorithms for Convolutional
 * Neural Networks", CVPR 2016).
 *
 * XNNPACK runs a 3x3 convolution as a direct GEMM of 9 * ci multiply-adds per output value, already at the speed limit
 * of 128-bit WebAssembly SIMD without fused multiply-add. Winograd's minimal filtering computes each 4x4 output tile
 * from a 6x6 input tile with 36 instead of 144 multiplications per channel pair, so the work becomes 36 matrix
 * products `V_k [tiles, ci] x U_k [ci, co]` (the engine's `matMul`, `simd.ts`) between three cheap transforms (Tessera's
 * SIMD loops, `assembly/kernels.ts`): 4x fewer multiply-adds in the products, for transforms that cost a few reads and
 * writes per value. Training networks made of 3x3 convolutions (VGG-16 in FCN-8s, the DeepLabv3+ decoder) spend most
 * of a step in them: the forward pass, the stride-1 input gradient (itself a 3x3 convolution) and the filter gradient.
 *
 * Used for 3x3 stride-1 undilated NHWC float32 convolutions with channel counts that are multiples of 4, enough of
 * them ({@link MIN_CHANNELS_FORWARD}) and at least {@link MIN_TILES} output tiles; the filter gradient likewise, from
 * more channels; everything else, and `FusedConv2D` with an activation other than none
 * or ReLU or with PReLU weights, runs the builtin kernel. Results differ from the direct convolution by rounding only
 * (relative differences of about 1e-5 of the output's scale); the order of every sum is fixed, so they are
 * deterministic. `TESSERA_WINOGRAD=0` in the environment turns it off (every convolution runs the builtin kernel), for
 * comparisons.
 */
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import {
  convGeometry,
  free,
  matMul,
  pointer,
  simdKernels,
  withWindow,
  type ConvAttrs as GeometryAttrs,
  type ConvGeometry,
  type WasmHeapBackend as WasmBackend,
} from './simd.js';

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

/**
 * Fewer output tiles than this run the builtin kernel: 36 matmul calls cost more than they save on tiny images
 * (measured, forward and both gradients of 128 -> 128 channels: 2 x 16 x 16, 32 tiles, 0.8x the builtin's time;
 * 1 x 16 x 16, 16 tiles, 1.1x).
 */
export const MIN_TILES = 32;

/**
 * Smallest `ci * co` run by Winograd: below, the 36 products are too thin to beat XNNPACK's direct convolution.
 * Measured per layer (time of the direct convolution / Winograd's, with the engine's `gemm` products) on 2 x 256 x 256
 * crops: forward 8 -> 8 channels 0.96, 8 -> 16 0.87, 16 -> 16 1.19; input gradient 1.05, 1.24, 1.50; and on
 * 2 x 128 x 128: forward 16 -> 8 1.35, 16 -> 32 1.67, 32 -> 32 2.15. The filter gradient, whose transforms cost more:
 * 8 -> 16 0.82, 16 -> 16 1.0-1.06, 16 -> 32 1.48, 32 -> 32 1.62, 64 -> 64 2.5.
 */
const MIN_CHANNELS_FORWARD = 256;
const MIN_CHANNELS_FILTER_GRADIENT = 512;

/**
 * Upper bound (bytes) of the transformed input or products of one chunk of tile rows; larger work runs in chunks
 * (a knob for the tests, not part of the package's API).
 */
export const winogradLimits = { chunkBytes: 48 << 20 };

interface ConvAttrs extends GeometryAttrs {
  dataFormat?: string;
  activation?: string;
}

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
): ConvGeometry | null {
  if (process.env.TESSERA_WINOGRAD === '0') return null;
  if (x.dtype !== 'float32' || x.shape.length !== 4 || filterShape.length !== 4) return null;
  if (attrs.dataFormat != null && attrs.dataFormat !== 'NHWC') return null;
  const [kh, kw, ci, co] = filterShape;
  if (kh !== 3 || kw !== 3 || ci % 4 !== 0 || co % 4 !== 0 || ci * co < minChannelProduct || x.shape[3] !== ci) {
    return null;
  }
  const g = convGeometry(x.shape, filterShape, attrs);
  if (g.sh !== 1 || g.sw !== 1 || g.dh !== 1 || g.dw !== 1) return null;
  if (g.oh <= 0 || g.ow <= 0 || g.n * Math.ceil(g.oh / 4) * Math.ceil(g.ow / 4) < MIN_TILES) return null;
  return g;
}

/** Heap pointers shared by a convolution's transforms: its geometry, 1 KB of scratch, a pixel of zeros (padding). */
interface Buffers {
  window: number;
  scratch: number;
  zeros: number;
}

/** Calls `use` with the {@link Buffers} of `g`, freed afterwards. */
function withBuffers<T>(be: WasmBackend, g: ConvGeometry, use: (buffers: Buffers) => T): T {
  const scratch = be.makeOutput([256], 'float32');
  const zeros = be.makeOutput([Math.max(g.c, g.co)], 'float32');
  (be.typedArrayFromHeap(zeros) as Float32Array).fill(0);
  try {
    return withWindow(be, g, (window) => use({ window, scratch: pointer(be, scratch), zeros: pointer(be, zeros) }));
  } finally {
    free(be, zeros);
    free(be, scratch);
  }
}

/**
 * Calls `work(r0, rows, tiles)` for the chunks of tile rows of `g` (a tile row is `(b, ty)`), each small enough for
 * {@link winogradLimits}.
 */
function forEachChunk(g: ConvGeometry, work: (r0: number, rows: number, tiles: number) => void): void {
  const tw = Math.ceil(g.ow / 4);
  const rowsTotal = g.n * Math.ceil(g.oh / 4);
  const bytesPerRow = 36 * 4 * tw * Math.max(g.c, g.co);
  const perChunk = Math.max(1, Math.min(rowsTotal, Math.floor(winogradLimits.chunkBytes / bytesPerRow)));
  for (let r0 = 0; r0 < rowsTotal; r0 += perChunk) {
    const rows = Math.min(perChunk, rowsTotal - r0);
    work(r0, rows, rows * tw);
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
): TensorInfo | null {
  if (filter.dtype !== 'float32') return null;
  const g = plan(x, filter.shape, attrs, MIN_CHANNELS_FORWARD);
  if (g == null) return null;
  if (bias != null && (bias.dtype !== 'float32' || bias.shape.reduce((a, b) => a * b, 1) !== g.co)) return null;
  const simd = simdKernels(be) as unknown as WinogradKernels;
  const { c: ci, co } = g;
  const y = be.makeOutput([g.n, g.oh, g.ow, co], 'float32');
  withBuffers(be, g, ({ window, scratch, zeros }) => {
    // U_k [ci, co] = (G g G^T)[k].
    const u = matrices36(be, [ci, co], (t) => simd.winogradFilter(pointer(be, filter), t, scratch, ci, co));
    forEachChunk(g, (r0, rows, tiles) => {
      const v = matrices36(be, [tiles, ci], (t) =>
        simd.winogradInput(pointer(be, x), t, zeros, scratch, r0, rows, window, 0),
      );
      const m = v.map((vk, k) => {
        const mk = matMul(be, vk, tiles, ci, u[k], co);
        free(be, vk);
        return mk;
      });
      const mTable = table(be, m);
      const b = bias != null ? pointer(be, bias) : 0;
      simd.winogradOutput(pointer(be, mTable), pointer(be, y), b, relu ? 1 : 0, scratch, r0, rows, co, window);
      free(be, mTable);
      for (const mk of m) free(be, mk);
    });
    for (const uk of u) free(be, uk);
  });
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
): TensorInfo | null {
  if (dy.dtype !== 'float32') return null;
  const g = plan(x, filterShape, attrs, MIN_CHANNELS_FILTER_GRADIENT);
  if (g == null) return null;
  const simd = simdKernels(be) as unknown as WinogradKernels;
  const { c: ci, co } = g;
  const dw = be.makeOutput([3, 3, ci, co], 'float32');
  withBuffers(be, g, ({ window, scratch, zeros }) => {
    let du: TensorInfo[] | undefined;
    forEachChunk(g, (r0, rows, tiles) => {
      const v = matrices36(be, [ci, tiles], (t) =>
        simd.winogradInput(pointer(be, x), t, zeros, scratch, r0, rows, window, tiles),
      );
      const w = matrices36(be, [tiles, co], (t) =>
        simd.winogradGradOutput(pointer(be, dy), t, zeros, scratch, r0, rows, co, window),
      );
      const products = v.map((vk, k) => {
        const pk = matMul(be, vk, ci, tiles, w[k], co);
        free(be, vk);
        free(be, w[k]);
        return pk;
      });
      if (du == null) {
        du = products;
        return;
      }
      // Later chunks add their products in chunk order.
      for (let k = 0; k < 36; k++) {
        const acc = be.typedArrayFromHeap(du[k]) as Float32Array;
        const add = be.typedArrayFromHeap(products[k]) as Float32Array;
        for (let i = 0; i < acc.length; i++) acc[i] += add[i];
        free(be, products[k]);
      }
    });
    // dW = G^T dU G.
    const duTable = table(be, du!);
    simd.winogradFilterGrad(pointer(be, duTable), pointer(be, dw), scratch, ci, co);
    free(be, duTable);
    for (const d of du!) free(be, d);
  });
  return dw;
}

/** `Conv2D` by Winograd where it applies, else null. */
export function winogradConv2DKernel(args: KernelArgs): TensorInfo | null {
  const { x, filter } = args.inputs as { x: TensorInfo; filter: TensorInfo };
  return winogradConv2D(args.backend as WasmBackend, x, filter, undefined, false, args.attrs as unknown as ConvAttrs);
}

/** `FusedConv2D` (bias, no activation or ReLU, no PReLU weights) by Winograd where it applies, else null. */
export function winogradFusedConv2DKernel(args: KernelArgs): TensorInfo | null {
  const { x, filter, bias, preluActivationWeights } = args.inputs as Record<string, TensorInfo | undefined>;
  const attrs = args.attrs as unknown as ConvAttrs;
  const activation = attrs.activation ?? 'linear';
  if (preluActivationWeights != null || (activation !== 'linear' && activation !== 'relu')) return null;
  return winogradConv2D(args.backend as WasmBackend, x!, filter!, bias, activation === 'relu', attrs);
}
