/**
 * Fast gradient kernels for the tfjs `wasm` backend.
 *
 * The wasm backend (XNNPACK) ships fast forward kernels but no `Conv2DBackpropFilter`,
 * `DepthwiseConv2dNativeBackpropFilter` or `DepthwiseConv2dNativeBackpropInput`, and its `Conv2DBackpropInput`
 * (also the forward pass of `conv2dTranspose`) is a plain loop. The kernels here rewrite each gradient as one of the
 * backend's fast primitives (XNNPACK `Conv2D`, `DepthwiseConv2dNative`, `BatchMatMul`), Tessera's SIMD loops
 * (`simd.ts`) and cheap rearrangements written in plain JS over the wasm heap:
 *
 * - `Conv2DBackpropFilter`: one matmul `A [KH*KW*Cin, P] x dy [P, Cout]` (P = N*OH*OW, dy used as is), where the
 *   rows of `A` are built from a channel-major copy of `x` by contiguous row-segment copies (chunked over rows; the
 *   copy and the rows are SIMD loops).
 * - `Conv2DBackpropInput`: stride 1 is a conv of `dy` with the spatially flipped, in/out-swapped filter; strided cases
 *   are one matmul `dy [P, Cout] x W^T [Cout, KH*KW*Cin]` followed by a col2im scatter-add (a plain depth-to-space
 *   copy when kernel == stride without overlap or padding, e.g. the 2x2 stride-2 U-Net up-convolution).
 * - `DepthwiseConv2dNativeBackpropInput`: strided with channel multiplier 1 (MobileNetV2), a SIMD scatter loop over
 *   `dy`; otherwise an XNNPACK depthwise conv of (zero-upsampled when strided) `dy` with the flipped filter, then a
 *   sum over the channel multiplier.
 * - `DepthwiseConv2dNativeBackpropFilter`: with channel multiplier 1, a SIMD scatter loop over `dy` (XNNPACK runs a
 *   depthwise conv with a filter as large as `dy` at a fraction of its speed); otherwise, per image, an XNNPACK
 *   depthwise conv of `x[n]` with `dy[n]` as the filter.
 * - `MaxPoolGrad` (the builtin is wrong for windows whose values are all negative) and `ResizeNearestNeighborGrad`
 *   (the builtin is slow): plain JS scatter loops.
 *
 * Convolutions accept NHWC only, any strides, dilations (an optional `dilations` attribute for the two Conv2D
 * kernels, whose tfjs attributes do not carry one) and padding (`'same'`, `'valid'`, a number or explicit pads).
 */
import '@tensorflow/tfjs-backend-wasm';
import {
  backend_util,
  getKernel,
  registerKernel,
  unregisterKernel,
  type KernelConfig,
  type KernelFunc,
  type NamedAttrMap,
  type NamedTensorInfoMap,
  type TensorInfo,
} from '@tensorflow/tfjs-core';
import {
  callWasm,
  convGeometry,
  free,
  matMul,
  pointer,
  simdKernels,
  withWindow,
  type ConvAttrs as GeometryAttrs,
  type ConvGeometry,
  type SimdWindow,
  type WasmHeapBackend as WasmBackend,
} from './simd.js';
import { tapFilterGrad } from './dilated-taps.js';
import { inputGradientUnused } from './input-gradient.js';
import { winogradFilterGradient } from './winograd.js';

type Pad = GeometryAttrs['pad'];
type Shape4 = [number, number, number, number];

interface ConvAttrs extends GeometryAttrs {
  dataFormat?: 'NHWC' | 'NCHW';
  filterShape?: Shape4;
  inputShape?: Shape4;
}

/** Resolved geometry of a forward convolution `x [n,h,w,c] * filter -> y [n,oh,ow,co]` (NHWC). */
type Geometry = ConvGeometry;

/** Upper bound (elements / pointers) for one temporary buffer; larger work is split into chunks. */
const CHUNK_ELEMENTS = 1 << 23;

function fail(kernel: string, message: string): never {
  throw new Error(`wasm-gradients ${kernel}: ${message}`);
}

function checkDataFormat(kernel: string, dataFormat: string | undefined): void {
  if (dataFormat != null && dataFormat !== 'NHWC') {
    fail(kernel, `dataFormat '${dataFormat}' is not supported; valid choices: 'NHWC'`);
  }
}

function checkFloat32(kernel: string, ...infos: TensorInfo[]): void {
  for (const info of infos) {
    if (info.dtype !== 'float32') fail(kernel, `dtype '${info.dtype}' is not supported; valid choices: 'float32'`);
  }
}

function checkShape(kernel: string, what: string, got: readonly number[], want: readonly number[]): void {
  if (got.length !== want.length || got.some((v, i) => v !== want[i])) {
    fail(kernel, `${what} has shape [${got.join(', ')}], expected [${want.join(', ')}]`);
  }
}

function geometry(
  kernel: string,
  inShape: Shape4,
  filterShape: Shape4,
  attrs: ConvAttrs,
  depthwise: boolean,
): { geo: Geometry; outShape: number[] } {
  if (inShape.length !== 4 || filterShape.length !== 4) {
    fail(
      kernel,
      `expected rank-4 input and filter shapes, got [${inShape.join(', ')}] and [${filterShape.join(', ')}]`,
    );
  }
  const geo = convGeometry(inShape, filterShape, attrs, depthwise);
  if (geo.oh <= 0 || geo.ow <= 0) {
    fail(kernel, `output size ${geo.oh}x${geo.ow} is empty for input [${inShape.join(', ')}]`);
  }
  return { geo, outShape: [geo.n, geo.oh, geo.ow, geo.co] };
}

function heap(be: WasmBackend, info: TensorInfo): Float32Array {
  return be.typedArrayFromHeap(info) as Float32Array;
}

function explicitPad(top: number, bottom: number, left: number, right: number): backend_util.ExplicitPadding {
  return [
    [0, 0],
    [top, bottom],
    [left, right],
    [0, 0],
  ];
}

function conv2d(
  be: WasmBackend,
  x: TensorInfo,
  filter: TensorInfo,
  strides: [number, number],
  dilations: [number, number],
  pad: backend_util.ExplicitPadding,
): TensorInfo {
  return callWasm('Conv2D', { x, filter }, be, { strides, pad, dilations, dataFormat: 'NHWC' } as NamedAttrMap);
}

function depthwiseConv2d(
  be: WasmBackend,
  x: TensorInfo,
  filter: TensorInfo,
  strides: [number, number],
  dilations: [number, number],
  pad: backend_util.ExplicitPadding,
): TensorInfo {
  return callWasm('DepthwiseConv2dNative', { x, filter }, be, {
    strides,
    pad,
    dilations,
    dataFormat: 'NHWC',
  } as NamedAttrMap);
}

// ---------------------------------------------------------------------------------------------------------------------
// Conv2DBackpropFilter

/** Inputs and geometry of a filter-gradient kernel (`x`, `dy`, attribute `filterShape`), checked. */
function filterGradArgs(kernel: string, { inputs, backend, attrs }: Parameters<KernelFunc>[0], depthwise: boolean) {
  const x = inputs.x as TensorInfo;
  const dy = inputs.dy as TensorInfo;
  const a = attrs as unknown as ConvAttrs;
  checkDataFormat(kernel, a.dataFormat);
  checkFloat32(kernel, x, dy);
  const filterShape = a.filterShape as Shape4;
  const { geo: g, outShape } = geometry(kernel, x.shape as Shape4, filterShape, a, depthwise);
  checkShape(kernel, 'dy', dy.shape, outShape);
  if (filterShape[2] !== g.c) fail(kernel, `filterShape[2] = ${filterShape[2]} does not match x channels ${g.c}`);
  return { be: backend as WasmBackend, x, dy, g };
}

/** Inputs and geometry of an input-gradient kernel (`dy`, `filter`, attribute `inputShape`), checked. */
function inputGradArgs(kernel: string, { inputs, backend, attrs }: Parameters<KernelFunc>[0], depthwise: boolean) {
  const dy = inputs.dy as TensorInfo;
  const filter = inputs.filter as TensorInfo;
  const a = attrs as unknown as ConvAttrs;
  checkDataFormat(kernel, a.dataFormat);
  checkFloat32(kernel, dy, filter);
  const inputShape = a.inputShape as Shape4;
  const { geo: g, outShape } = geometry(kernel, inputShape, filter.shape as Shape4, a, depthwise);
  checkShape(kernel, 'dy', dy.shape, outShape);
  if (filter.shape[2] !== g.c) fail(kernel, `filter in-channels ${filter.shape[2]} do not match inputShape ${g.c}`);
  return { be: backend as WasmBackend, dy, filter, g, inputShape };
}

function conv2DBackpropFilter(args: Parameters<KernelFunc>[0]): TensorInfo {
  const { be, x, dy, g } = filterGradArgs('Conv2DBackpropFilter', args, false);
  const attrs = args.attrs as unknown as ConvAttrs;
  return (
    winogradFilterGradient(be, x, dy, attrs.filterShape!, attrs) ??
    tapFilterGrad(be, x, dy, g) ??
    filterGradMatMul(be, x, dy, g)
  );
}

/**
 * `dW [kh*kw*ci, co] = A [kh*kw*ci, P] x dy [P, co]` (XNNPACK matmul, dy used as is) where row `(t, c)` of `A` holds
 * the input pixels that tap `t` of channel `c` sees for every output position `p = (n, y, x)`. `x` is first made
 * channel-major (`[ci, n, h, w]`), so each row of `A` is built from contiguous row segments. `A` is built and
 * multiplied in chunks of rows to bound its memory.
 */
function filterGradMatMul(be: WasmBackend, x: TensorInfo, dy: TensorInfo, g: Geometry): TensorInfo {
  const { n, h, w, c: ci, oh, ow, co, kh, kw, sh, sw, pt, pl } = g;
  const p = n * oh * ow;
  const rowsTotal = kh * kw * ci;
  const out = be.makeOutput([kh, kw, ci, co], 'float32');
  const xt = be.makeOutput([ci, n, h, w], 'float32');
  const simd = simdKernels(be);
  simd.toChannelMajor(pointer(be, x), pointer(be, xt), n, h * w, ci);
  const direct = kh === 1 && kw === 1 && sh === 1 && sw === 1 && pt === 0 && pl === 0 && oh === h && ow === w;
  const chunk = Math.max(1, Math.min(rowsTotal, Math.floor(CHUNK_ELEMENTS / p)));
  for (let r0 = 0; r0 < rowsTotal; r0 += chunk) {
    const rows = Math.min(chunk, rowsTotal - r0);
    const a = direct ? xt : be.makeOutput([rows, p], 'float32');
    if (a !== xt) {
      withWindow(be, g, (window) => simd.im2colRows(pointer(be, xt), pointer(be, a), r0, rows, window));
    }
    const res = matMul(be, a, rows, p, dy, co);
    if (a !== xt) free(be, a);
    heap(be, out).set(heap(be, res), r0 * co);
    free(be, res);
  }
  free(be, xt);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------------
// Conv2DBackpropInput

function conv2DBackpropInput(args: Parameters<KernelFunc>[0]): TensorInfo {
  const { be, dy, filter, g, inputShape } = inputGradArgs('Conv2DBackpropInput', args, false);
  if (inputGradientUnused(filter, inputShape)) {
    const zeros = be.makeOutput([...inputShape], 'float32');
    heap(be, zeros).fill(0);
    return zeros;
  }
  if (g.sh === 1 && g.sw === 1) {
    const pads = stride1Pads(g);
    if (pads != null) return inputGradStride1(be, dy, filter, g, pads);
  }
  return inputGradCol2Im(be, dy, filter, g, inputShape);
}

/** Explicit pads of the stride-1 "full" correlation that maps dy back to x, or null when one would be negative. */
function stride1Pads(g: Geometry): backend_util.ExplicitPadding | null {
  const top = (g.kh - 1) * g.dh - g.pt;
  const left = (g.kw - 1) * g.dw - g.pl;
  const bottom = g.h - g.oh + g.pt;
  const right = g.w - g.ow + g.pl;
  return top < 0 || left < 0 || bottom < 0 || right < 0 ? null : explicitPad(top, bottom, left, right);
}

/** Stride 1: `dx = conv2d(dy, flip(W) with in/out swapped)`, dilation kept, padding adjusted. */
function inputGradStride1(
  be: WasmBackend,
  dy: TensorInfo,
  filter: TensorInfo,
  g: Geometry,
  pads: backend_util.ExplicitPadding,
): TensorInfo {
  const { c: ci, co, kh, kw } = g;
  const wf = be.makeOutput([kh, kw, co, ci], 'float32');
  const s = heap(be, filter);
  const d = heap(be, wf);
  for (let y = 0; y < kh; y++) {
    for (let x = 0; x < kw; x++) {
      const so = (y * kw + x) * ci * co;
      const dOff = ((kh - 1 - y) * kw + (kw - 1 - x)) * co * ci;
      for (let c = 0; c < ci; c++) {
        for (let o = 0; o < co; o++) d[dOff + o * ci + c] = s[so + c * co + o];
      }
    }
  }
  const out = conv2d(be, dy, wf, [1, 1], [g.dh, g.dw], pads);
  free(be, wf);
  return out;
}

/**
 * General case: `cols [P, KH*KW*ci] = dy [P, co] x W^T [co, KH*KW*ci]` (XNNPACK matmul, chunked over P), then
 * col2im scatter-add into dx. When kernel == stride without overlap, padding or remainder every dx element gets
 * exactly one value and the scatter is a plain depth-to-space copy.
 */
function inputGradCol2Im(
  be: WasmBackend,
  dy: TensorInfo,
  filter: TensorInfo,
  g: Geometry,
  inputShape: Shape4,
): TensorInfo {
  const { n, h, w, c: ci, oh, ow, co, kh, kw, sh, sw, dh, dw, pt, pl } = g;
  const kkc = kh * kw * ci;
  const wt = be.makeOutput([co, kkc], 'float32');
  {
    const s = heap(be, filter);
    const d = heap(be, wt);
    for (let j = 0; j < kkc; j++) {
      const so = j * co;
      for (let o = 0; o < co; o++) d[o * kkc + j] = s[so + o];
    }
  }
  const dx = be.makeOutput([...inputShape], 'float32');
  const exact =
    dh === 1 && dw === 1 && kh === sh && kw === sw && pt === 0 && pl === 0 && oh * sh === h && ow * sw === w;
  if (!exact) heap(be, dx).fill(0);

  const p = n * oh * ow;
  const pix = oh * ow;
  const rows = Math.max(1, Math.min(p, Math.floor(CHUNK_ELEMENTS / Math.max(kkc, co))));
  for (let p0 = 0; p0 < p; p0 += rows) {
    const m = Math.min(rows, p - p0);
    let a = dy;
    if (m !== p) {
      a = be.makeOutput([m, co], 'float32');
      heap(be, a).set(heap(be, dy).subarray(p0 * co, (p0 + m) * co));
    }
    const cols = matMul(be, a, m, co, wt, kkc);
    if (a !== dy) free(be, a);
    const s = heap(be, cols);
    const d = heap(be, dx);
    for (let r = 0; r < m; r++) {
      const q = p0 + r;
      const b = (q / pix) | 0;
      const rem = q - b * pix;
      const y = (rem / ow) | 0;
      const x = rem - y * ow;
      for (let ky = 0; ky < kh; ky++) {
        const iy = y * sh + ky * dh - pt;
        if (iy < 0 || iy >= h) continue;
        for (let kx = 0; kx < kw; kx++) {
          const ix = x * sw + kx * dw - pl;
          if (ix < 0 || ix >= w) continue;
          const dOff = ((b * h + iy) * w + ix) * ci;
          const so = r * kkc + (ky * kw + kx) * ci;
          if (exact) {
            for (let c = 0; c < ci; c++) d[dOff + c] = s[so + c];
          } else {
            for (let c = 0; c < ci; c++) d[dOff + c] += s[so + c];
          }
        }
      }
    }
    free(be, cols);
  }
  free(be, wt);
  return dx;
}

// ---------------------------------------------------------------------------------------------------------------------
// DepthwiseConv2dNativeBackpropInput

function depthwiseBackpropInput(args: Parameters<KernelFunc>[0]): TensorInfo {
  const kernel = 'DepthwiseConv2dNativeBackpropInput';
  const { be, dy, filter, g } = inputGradArgs(kernel, args, true);
  const { n, h, w, c: ci, oh, ow, co, kh, kw, sh, sw, dh, dw, pt, pl } = g;
  const mult = co / ci;
  if (mult === 1 && (sh > 1 || sw > 1)) return depthwiseGradSimd(1, be, filter, dy, g);

  // Spatially flipped filter, viewed as [kh, kw, ci*mult, 1].
  const wf = be.makeOutput([kh, kw, co, 1], 'float32');
  {
    const s = heap(be, filter);
    const d = heap(be, wf);
    for (let t = 0; t < kh * kw; t++) d.set(s.subarray(t * co, (t + 1) * co), (kh * kw - 1 - t) * co);
  }
  let src = dy;
  let pads = sh === 1 && sw === 1 ? stride1Pads(g) : null;
  if (pads == null) {
    // Zero-upsample dy by the stride, placed so that a 'valid' correlation yields exactly h x w.
    const hu = h + (kh - 1) * dh;
    const wu = w + (kw - 1) * dw;
    const top = (kh - 1) * dh - pt;
    const left = (kw - 1) * dw - pl;
    src = be.makeOutput([n, hu, wu, co], 'float32');
    const d = heap(be, src);
    const s = heap(be, dy);
    d.fill(0);
    for (let b = 0; b < n; b++) {
      for (let y = 0; y < oh; y++) {
        const uy = y * sh + top;
        if (uy < 0 || uy >= hu) continue;
        for (let x = 0; x < ow; x++) {
          const ux = x * sw + left;
          if (ux < 0 || ux >= wu) continue;
          const so = ((b * oh + y) * ow + x) * co;
          d.set(s.subarray(so, so + co), ((b * hu + uy) * wu + ux) * co);
        }
      }
    }
    pads = explicitPad(0, 0, 0, 0);
  }
  const res = depthwiseConv2d(be, src, wf, [1, 1], [dh, dw], pads);
  if (src !== dy) free(be, src);
  free(be, wf);
  checkShape(kernel, 'internal depthwise output', res.shape, [n, h, w, co]);
  if (mult === 1) return res;
  const dx = be.makeOutput([n, h, w, ci], 'float32');
  const s = heap(be, res);
  const d = heap(be, dx);
  const total = n * h * w * ci;
  for (let i = 0, j = 0; i < total; i++) {
    let acc = 0;
    for (let m = 0; m < mult; m++, j++) acc += s[j];
    d[i] = acc;
  }
  free(be, res);
  return dx;
}

// ---------------------------------------------------------------------------------------------------------------------
// DepthwiseConv2dNativeBackpropFilter

function depthwiseBackpropFilter(args: Parameters<KernelFunc>[0]): TensorInfo {
  const { be, x, dy, g } = filterGradArgs('DepthwiseConv2dNativeBackpropFilter', args, true);
  return g.co === g.c ? depthwiseGradSimd(0, be, x, dy, g) : depthwiseFilterGradPerImage(be, x, dy, g);
}

/**
 * A gradient of a depthwise convolution with channel multiplier 1 as one SIMD scatter loop over `dy`
 * (`assembly/kernels.ts`): `mode` 0 gives the filter gradient (`src` is `x`), `mode` 1 the input gradient (`src` is
 * the filter).
 */
function depthwiseGradSimd(mode: 0 | 1, be: WasmBackend, src: TensorInfo, dy: TensorInfo, g: Geometry): TensorInfo {
  const { n, h, w, c: ci, kh, kw } = g;
  const out = be.makeOutput(mode === 0 ? [kh, kw, ci, 1] : [n, h, w, ci], 'float32');
  withWindow(be, g, (window) =>
    simdKernels(be).depthwiseGrad(mode, pointer(be, src), pointer(be, dy), pointer(be, out), window),
  );
  return out;
}

/**
 * `dW[kh,kw,c,m] = sum_n sum_{y,x} xpad[n, y*sh + kh*dh, x*sw + kw*dw, c] * dy[n,y,x,c*M+m]`: for each image `n` an
 * XNNPACK depthwise conv of `x[n]` with `dy[n]` as an `[OH, OW, c, M]` filter (stride = original dilation,
 * dilation = original stride, output KH x KW), summed over the batch.
 */
function depthwiseFilterGradPerImage(be: WasmBackend, x: TensorInfo, dy: TensorInfo, g: Geometry): TensorInfo {
  const { n, h, w, c: ci, oh, ow, co, kh, kw, sh, sw, dh, dw, pt, pl } = g;
  const mult = co / ci;
  const out = be.makeOutput([kh, kw, ci, mult], 'float32');
  // Rows/cols of x that contribute (others are cropped) and the bottom/right zero padding still needed.
  const needH = (kh - 1) * dh + (oh - 1) * sh + 1 - pt;
  const needW = (kw - 1) * dw + (ow - 1) * sw + 1 - pl;
  const hc = Math.min(h, needH);
  const wc = Math.min(w, needW);
  if (hc <= 0 || wc <= 0) {
    heap(be, out).fill(0);
    return out;
  }
  const pads = explicitPad(pt, Math.max(0, needH - h), pl, Math.max(0, needW - w));
  const acc = new Float64Array(kh * kw * co);
  const image = oh * ow * co;
  for (let b = 0; b < n; b++) {
    let xb = x;
    if (n > 1 || hc < h || wc < w) {
      xb = be.makeOutput([1, hc, wc, ci], 'float32');
      const d = heap(be, xb);
      const s = heap(be, x);
      for (let y = 0; y < hc; y++) {
        const so = (b * h + y) * w * ci;
        d.set(s.subarray(so, so + wc * ci), y * wc * ci);
      }
    }
    const fb = be.makeOutput([oh, ow, ci, mult], 'float32');
    heap(be, fb).set(heap(be, dy).subarray(b * image, (b + 1) * image));
    const res = depthwiseConv2d(be, xb, fb, [dh, dw], [sh, sw], pads);
    if (xb !== x) free(be, xb);
    free(be, fb);
    checkShape('DepthwiseConv2dNativeBackpropFilter', 'internal depthwise output', res.shape, [1, kh, kw, co]);
    const r = heap(be, res);
    for (let i = 0; i < acc.length; i++) acc[i] += r[i];
    free(be, res);
  }
  heap(be, out).set(acc);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------------
// Pooling and resize gradients: the builtin wasm MaxPoolGrad routes the gradient wrongly when every value of a window
// is negative (it seems to start its max search at 0), and the builtin ResizeNearestNeighborGrad is ~3x slower than a
// plain scatter.

interface PoolAttrs {
  filterSize: [number, number] | number;
  strides: [number, number] | number;
  pad: Pad;
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
}

function poolInfo(kernel: string, x: TensorInfo, dy: TensorInfo, attrs: PoolAttrs): backend_util.Conv2DInfo {
  if (x.shape.length !== 4) fail(kernel, `expected a rank-4 input, got shape [${x.shape.join(', ')}]`);
  const info = backend_util.computePool2DInfo(
    x.shape as Shape4,
    attrs.filterSize,
    attrs.strides,
    1,
    attrs.pad,
    attrs.dimRoundingMode,
  );
  checkShape(kernel, 'dy', dy.shape, info.outShape);
  return info;
}

/** Gradient of max pooling: each output's gradient goes to the first maximum (row-major) of its window. */
function maxPoolGrad({ inputs, backend, attrs }: Parameters<KernelFunc>[0]): TensorInfo {
  const kernel = 'MaxPoolGrad';
  const be = backend as WasmBackend;
  const x = inputs.input as TensorInfo;
  const dy = inputs.dy as TensorInfo;
  checkFloat32(kernel, x, dy);
  const info = poolInfo(kernel, x, dy, attrs as unknown as PoolAttrs);
  const { batchSize: n, inHeight: h, inWidth: w, inChannels: c, outHeight: oh, outWidth: ow } = info;
  const dx = be.makeOutput([...x.shape], 'float32');
  const window: SimdWindow = {
    n,
    h,
    w,
    c,
    oh,
    ow,
    kh: info.effectiveFilterHeight,
    kw: info.effectiveFilterWidth,
    sh: info.strideHeight,
    sw: info.strideWidth,
    dh: 1,
    dw: 1,
    pt: info.padInfo.top,
    pl: info.padInfo.left,
  };
  withWindow(be, window, (at) => simdKernels(be).maxPoolGrad(pointer(be, x), pointer(be, dy), pointer(be, dx), at));
  return dx;
}

interface ResizeAttrs {
  alignCorners?: boolean;
  halfPixelCenters?: boolean;
}

/** Source-coordinate ratio of a resize from `inSize` to `outSize` (tfjs semantics). */
function resizeRatio(inSize: number, outSize: number, alignCorners: boolean): number {
  return alignCorners && outSize > 1 ? (inSize - 1) / (outSize - 1) : inSize / outSize;
}

function resizeInputs(kernel: string, inputs: NamedTensorInfoMap): [TensorInfo, TensorInfo] {
  const images = inputs.images as TensorInfo;
  const dy = inputs.dy as TensorInfo;
  checkFloat32(kernel, images, dy);
  if (images.shape.length !== 4 || dy.shape.length !== 4 || images.shape[0] !== dy.shape[0]) {
    fail(kernel, `images [${images.shape.join(', ')}] and dy [${dy.shape.join(', ')}] must be rank 4 with equal batch`);
  }
  if (images.shape[3] !== dy.shape[3]) fail(kernel, `images and dy depths ${images.shape[3]} != ${dy.shape[3]}`);
  return [images, dy];
}

/** Adjoint of the nearest-neighbour resize: each dy pixel is added to the source pixel it was copied from. */
function resizeNearestNeighborGrad({ inputs, backend, attrs }: Parameters<KernelFunc>[0]): TensorInfo {
  const be = backend as WasmBackend;
  const [images, dy] = resizeInputs('ResizeNearestNeighborGrad', inputs);
  const { alignCorners = false, halfPixelCenters = false } = (attrs ?? {}) as ResizeAttrs;
  const [n, h, w, c] = images.shape;
  const [, oh, ow] = dy.shape;
  const nearest = (i: number, ratio: number, size: number): number => {
    const src = halfPixelCenters ? ratio * (i + 0.5) : ratio * i;
    const v = Math.min(size - 1, alignCorners ? Math.round(src) : Math.floor(src));
    return halfPixelCenters ? Math.max(0, v) : v;
  };
  const rh = resizeRatio(h, oh, alignCorners);
  const rw = resizeRatio(w, ow, alignCorners);
  const cols = Int32Array.from({ length: ow }, (_, x) => nearest(x, rw, w));
  const dx = be.makeOutput([n, h, w, c], 'float32');
  const ds = heap(be, dy);
  const d = heap(be, dx);
  d.fill(0);
  for (let b = 0; b < n; b++) {
    for (let y = 0; y < oh; y++) {
      const row = (b * h + nearest(y, rh, h)) * w;
      for (let x = 0; x < ow; x++) {
        const t = (row + cols[x]) * c;
        const o = ((b * oh + y) * ow + x) * c;
        for (let k = 0; k < c; k++) d[t + k] += ds[o + k];
      }
    }
  }
  return dx;
}

// ---------------------------------------------------------------------------------------------------------------------
// Registration

const KERNELS: readonly { kernelName: string; kernelFunc: KernelFunc }[] = [
  { kernelName: 'Conv2DBackpropFilter', kernelFunc: conv2DBackpropFilter as KernelFunc },
  { kernelName: 'Conv2DBackpropInput', kernelFunc: conv2DBackpropInput as KernelFunc },
  { kernelName: 'DepthwiseConv2dNativeBackpropFilter', kernelFunc: depthwiseBackpropFilter as KernelFunc },
  { kernelName: 'DepthwiseConv2dNativeBackpropInput', kernelFunc: depthwiseBackpropInput as KernelFunc },
  { kernelName: 'MaxPoolGrad', kernelFunc: maxPoolGrad as KernelFunc },
  { kernelName: 'ResizeNearestNeighborGrad', kernelFunc: resizeNearestNeighborGrad as KernelFunc },
];

/**
 * Registers fast gradient kernels for the tfjs `wasm` backend: `Conv2DBackpropFilter`, `Conv2DBackpropInput`
 * (replacing the builtin loop, also used by `conv2dTranspose`), `DepthwiseConv2dNativeBackpropFilter` and
 * `DepthwiseConv2dNativeBackpropInput`. Built on the backend's XNNPACK conv / depthwise conv / matmul kernels plus
 * SIMD loops (`simd.ts`) and plain-JS rearrangements on the wasm heap. NHWC float32 only.
 *
 * Idempotent: kernels already registered by an earlier call are left alone.
 *
 * @returns the kernel names registered by this call (empty when all were already registered).
 *
 * @example
 * ```ts
 * import '@tensorflow/tfjs-backend-wasm';
 * registerWasmGradientKernels();
 * await tf.setBackend('wasm');
 * ```
 */
export function registerWasmGradientKernels(): string[] {
  return registerOnWasm(KERNELS);
}

/**
 * Registers kernels for the wasm backend, replacing other kernels of the same names; returns the names registered
 * (none when these exact kernels are registered already).
 */
export function registerOnWasm(kernels: readonly { kernelName: string; kernelFunc: KernelFunc }[]): string[] {
  const registered: string[] = [];
  for (const { kernelName, kernelFunc } of kernels) {
    const existing = getKernel(kernelName, 'wasm');
    if (existing?.kernelFunc === kernelFunc) continue;
    if (existing != null) unregisterKernel(kernelName, 'wasm');
    const config: KernelConfig = { kernelName, backendName: 'wasm', kernelFunc };
    registerKernel(config);
    registered.push(kernelName);
  }
  return registered;
}
