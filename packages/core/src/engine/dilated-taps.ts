/**
 * Dilated convolutions on small feature maps, one tap at a time, for the tfjs `wasm` backend.
 *
 * DeepLabv3+'s atrous spatial pyramid pooling runs 3x3 convolutions at rates 6, 12 and 18 on the encoder's output,
 * 16 x 16 for a 256 x 256 crop. There most taps of the dilated kernel fall into the zero padding for most output
 * pixels (at rate 18 every tap but the centre does, everywhere), yet XNNPACK multiplies all nine taps by zeros.
 * Taken one tap at a time, a stride-1 convolution is a sum of matrix products over rectangles: tap `(ky, kx)` adds
 * `x[rect shifted by the tap] [m, ci] x W[ky, kx] [ci, co]` into `y[rect]`, where `rect` is the output rectangle whose
 * shifted input lies inside the image. Only the taps' valid rectangles are computed: at 16 x 16, 56% of the
 * multiply-adds at rate 6, 25% at rate 12 and 11% at rate 18. The filter gradient is the same sum read the other way
 * (`dW[ky, kx] = x[shifted rect]^T dy[rect]`), and the stride-1 input gradient is itself such a convolution.
 *
 * Used for stride-1 dilated NHWC float32 convolutions where at most {@link MAX_USEFUL} of the dense multiply-adds are
 * useful; the rest runs the builtin kernel. Each product is the backend's XNNPACK matmul; the rectangles are copied
 * and added by Tessera's SIMD loops (`assembly/kernels.ts`). Sums run in a fixed order (taps in kernel order), so
 * results are deterministic; they differ from the dense convolution's by rounding only.
 */
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import {
  convGeometry,
  free,
  matMul,
  pointer,
  simdKernels,
  type ConvAttrs,
  type ConvGeometry,
  type WasmHeapBackend as WasmBackend,
} from './simd.js';

/** At most this share of a dense convolution's multiply-adds useful (the rest hit padding): run tap by tap. */
export const MAX_USEFUL = 0.6;

/** Larger tensors (values) run the builtin kernel: the copies here hold about one more input and output. */
const MAX_VALUES = 1 << 23;

/** A tap and the output rectangle `[oy, oy + ry) x [ox, ox + rx)` whose input `(oy + iy - oy, ...)` is inside. */
interface Tap {
  index: number;
  oy: number;
  ox: number;
  iy: number;
  ix: number;
  ry: number;
  rx: number;
}

/** Output range `[start, end)` of a tap at input offset `offset` along one axis (empty when `end <= start`). */
function range(offset: number, out: number, size: number): [number, number] {
  return [Math.max(0, -offset), Math.min(out, size - offset)];
}

/** The taps with a non-empty rectangle, or null when the dense kernel should run (see {@link MAX_USEFUL}). */
export function planTaps(g: ConvGeometry): Tap[] | null {
  if ((g.dh === 1 && g.dw === 1) || g.sh !== 1 || g.sw !== 1 || g.oh <= 0 || g.ow <= 0) return null;
  if (Math.max(g.n * g.h * g.w * g.c, g.n * g.oh * g.ow * g.co) > MAX_VALUES) return null;
  const taps: Tap[] = [];
  let useful = 0;
  for (let ky = 0; ky < g.kh; ky++) {
    const dy = ky * g.dh - g.pt;
    const [y0, y1] = range(dy, g.oh, g.h);
    for (let kx = 0; kx < g.kw; kx++) {
      const dx = kx * g.dw - g.pl;
      const [x0, x1] = range(dx, g.ow, g.w);
      if (y1 <= y0 || x1 <= x0) continue;
      taps.push({ index: ky * g.kw + kx, oy: y0, ox: x0, iy: y0 + dy, ix: x0 + dx, ry: y1 - y0, rx: x1 - x0 });
      useful += (y1 - y0) * (x1 - x0);
    }
  }
  return useful <= MAX_USEFUL * g.kh * g.kw * g.oh * g.ow ? taps : null;
}

/** Copies the rectangle `[y, y + ry) x [x, x + rx)` of each image of `t [n, height, width, c]` into `[n, ry, rx, c]`. */
function copyRect(
  be: WasmBackend,
  t: TensorInfo,
  [n, height, width, c]: number[],
  y: number,
  x: number,
  ry: number,
  rx: number,
): TensorInfo {
  const out = be.makeOutput([n * ry * rx, c], 'float32');
  const src = pointer(be, t) + (y * width + x) * c * 4;
  simdKernels(be).copyRect(src, pointer(be, out), n, height * width * c, ry, width * c, rx * c, 0);
  return out;
}

/** The tap's slice `W[ky, kx] [ci, co]` of a filter `[kh, kw, ci, co]`. */
function filterSlice(be: WasmBackend, filter: TensorInfo, index: number, ci: number, co: number): TensorInfo {
  const out = be.makeOutput([ci, co], 'float32');
  const src = be.typedArrayFromHeap(filter) as Float32Array;
  (be.typedArrayFromHeap(out) as Float32Array).set(src.subarray(index * ci * co, (index + 1) * ci * co));
  return out;
}

/** `y = conv(x, filter)` tap by tap, or null where the dense kernel should run. */
export function tapConv2D(be: WasmBackend, x: TensorInfo, filter: TensorInfo, g: ConvGeometry): TensorInfo | null {
  const taps = planTaps(g);
  if (taps == null) return null;
  const { n, h, w, c: ci, oh, ow, co } = g;
  const y = be.makeOutput([n, oh, ow, co], 'float32');
  (be.typedArrayFromHeap(y) as Float32Array).fill(0);
  for (const t of taps) {
    const whole = t.iy === 0 && t.ix === 0 && t.ry === h && t.rx === w;
    const xs = whole ? x : copyRect(be, x, [n, h, w, ci], t.iy, t.ix, t.ry, t.rx);
    const wt = filterSlice(be, filter, t.index, ci, co);
    const ys = matMul(be, xs, n * t.ry * t.rx, ci, wt, co);
    const dst = pointer(be, y) + (t.oy * ow + t.ox) * co * 4;
    simdKernels(be).copyRect(dst, pointer(be, ys), n, oh * ow * co, t.ry, ow * co, t.rx * co, 1);
    if (xs !== x) free(be, xs);
    free(be, wt);
    free(be, ys);
  }
  return y;
}

/** `dW [kh, kw, ci, co]` of `y = conv(x, W)` from `dy`, tap by tap, or null where the dense kernel should run. */
export function tapFilterGrad(be: WasmBackend, x: TensorInfo, dy: TensorInfo, g: ConvGeometry): TensorInfo | null {
  const taps = planTaps(g);
  if (taps == null) return null;
  const { n, h, w, c: ci, oh, ow, co, kh, kw } = g;
  const out = be.makeOutput([kh, kw, ci, co], 'float32');
  (be.typedArrayFromHeap(out) as Float32Array).fill(0);
  // x channel-major, [ci, n, h, w]: each tap's rectangle is then the matrix x[rect]^T [ci, m] as it is copied.
  const xt = be.makeOutput([ci, n, h, w], 'float32');
  const simd = simdKernels(be);
  simd.toChannelMajor(pointer(be, x), pointer(be, xt), n, h * w, ci);
  for (const t of taps) {
    const m = n * t.ry * t.rx;
    const a = be.makeOutput([ci, m], 'float32');
    simd.copyRect(pointer(be, xt) + (t.iy * w + t.ix) * 4, pointer(be, a), ci * n, h * w, t.ry, w, t.rx, 0);
    const whole = t.oy === 0 && t.ox === 0 && t.ry === oh && t.rx === ow;
    const b = whole ? dy : copyRect(be, dy, [n, oh, ow, co], t.oy, t.ox, t.ry, t.rx);
    const res = matMul(be, a, ci, m, b, co);
    // Views are taken after the allocations: a growing heap detaches older ones.
    (be.typedArrayFromHeap(out) as Float32Array).set(be.typedArrayFromHeap(res) as Float32Array, t.index * ci * co);
    free(be, a);
    if (b !== dy) free(be, b);
    free(be, res);
  }
  free(be, xt);
  return out;
}

/** `Conv2D` (stride 1, dilated, NHWC float32) tap by tap where {@link planTaps} says so, else null. */
export function tapConv2DKernel(args: Parameters<KernelFunc>[0]): TensorInfo | null {
  const { x, filter } = args.inputs as { x: TensorInfo; filter: TensorInfo };
  const attrs = args.attrs as unknown as ConvAttrs & { dataFormat?: string };
  if (x.dtype !== 'float32' || filter.dtype !== 'float32' || x.shape.length !== 4 || filter.shape.length !== 4) {
    return null;
  }
  if ((attrs.dataFormat ?? 'NHWC') !== 'NHWC') return null;
  return tapConv2D(args.backend as WasmBackend, x, filter, convGeometry(x.shape, filter.shape, attrs));
}
