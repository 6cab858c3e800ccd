/**
 * Tessera's SIMD loops for the tfjs `wasm` backend (`assembly/kernels.ts`, compiled into `simd-binary.ts`): a small
 * WebAssembly module that imports the backend's own memory, so it works in place on tensors' data, with no copies.
 * One instance per backend memory (each worker thread has its own backend).
 */
import {
  backend_util,
  getKernel,
  type DataType,
  type NamedAttrMap,
  type NamedTensorInfoMap,
  type TensorInfo,
} from '@tensorflow/tfjs-core';
import { SIMD_KERNELS_WASM } from './simd-binary.js';

/** The parts of tfjs-backend-wasm's `BackendWasm` used here. */
export interface WasmHeapBackend {
  makeOutput(shape: number[], dtype: DataType): TensorInfo;
  typedArrayFromHeap(info: TensorInfo): backend_util.TypedArray;
  disposeData(dataId: object, force?: boolean): boolean;
}

/** The module's exports; every pointer is a byte offset on the backend's heap (see `assembly/kernels.ts`). */
export interface SimdKernels {
  columnReduce(src: number, rows: number, cols: number, mean: number, acc: number, dst: number, divisor: number): void;
  batchNormGradSums(x: number, dy: number, mean: number, rows: number, c: number, sumG: number, sumGX: number): void;
  clipByValueGrad(x: number, dy: number, out: number, n: number, lo: number, hi: number): void;
  reluGrad(x: number, dy: number, out: number, n: number): void;
  batchNormTrainGrad(x: number, dy: number, dx: number, rows: number, c: number, coefficients: number): void;
  batchNormApply(x: number, y: number, rows: number, c: number, coefficients: number): void;
  toChannelMajor(src: number, dst: number, n: number, hw: number, c: number): void;
  /** `window` points at a {@link SimdWindow} on the heap (see {@link withWindow}). */
  im2colRows(xt: number, a: number, r0: number, rows: number, window: number): void;
  maxPoolGrad(x: number, dy: number, dx: number, window: number): void;
  depthwiseGrad(mode: 0 | 1, src: number, dy: number, out: number, window: number): void;
  copyRect(
    src: number,
    dst: number,
    planes: number,
    planeStride: number,
    rows: number,
    rowStride: number,
    len: number,
    add: 0 | 1,
  ): void;
  gemm(a: number, b: number, c: number, m: number, k: number, n: number): void;
  softmaxRows(x: number, y: number, rows: number, c: number): void;
  softmaxGrad(y: number, dy: number, dx: number, rows: number, c: number): void;
  /** `weights` 0 for none; writes `2 + 3c` float64 values at `sums`. */
  segLossSums(
    p: number,
    labels: number,
    n: number,
    c: number,
    weights: number,
    lo: number,
    hi: number,
    sums: number,
  ): void;
  /** `coef` points at `a_0..a_(c-1), b_0..b_(c-1)` (float32). */
  segLossGrad(
    p: number,
    labels: number,
    n: number,
    c: number,
    weights: number,
    lo: number,
    hi: number,
    ceScale: number,
    coef: number,
    dp: number,
  ): void;
  /** `k` points at `b1, b2, c1, c2, eps, step, d1, d2` (float32). */
  adamUpdate(
    w: number,
    g: number,
    m: number,
    v: number,
    nw: number,
    nm: number,
    nv: number,
    n: number,
    k: number,
  ): void;
}

/** The parts of the WebAssembly JS API used here (the repository's TypeScript libs do not declare it). */
interface WebAssemblyApi {
  Memory: abstract new () => object;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: object };
}
const wasmApi = (globalThis as unknown as { WebAssembly: WebAssemblyApi }).WebAssembly;

let compiled: object | undefined;
const instances = new WeakMap<object, SimdKernels>();

/** The backend's `WebAssembly.Memory` (the Emscripten module's exported `memory`). */
function backendMemory(be: WasmHeapBackend): object {
  const memory = (be as unknown as { wasm?: { asm?: { memory?: unknown } } }).wasm?.asm?.memory;
  if (!(memory instanceof wasmApi.Memory)) {
    throw new Error(
      'simd: the tfjs wasm backend does not expose its WebAssembly memory (wasm.asm.memory); ' +
        'use @tensorflow/tfjs-backend-wasm 4.22.0, the version Tessera is built against',
    );
  }
  return memory;
}

/** The SIMD kernels bound to `be`'s memory (instantiated once per memory). */
export function simdKernels(be: WasmHeapBackend): SimdKernels {
  const memory = backendMemory(be);
  let kernels = instances.get(memory);
  if (kernels == null) {
    compiled ??= new wasmApi.Module(Buffer.from(SIMD_KERNELS_WASM, 'base64'));
    const instance = new wasmApi.Instance(compiled, { env: { memory } });
    kernels = instance.exports as unknown as SimdKernels;
    instances.set(memory, kernels);
  }
  return kernels;
}

/** Byte offset of `info`'s data on the backend's heap. */
export function pointer(be: WasmHeapBackend, info: TensorInfo): number {
  return be.typedArrayFromHeap(info).byteOffset;
}

/**
 * The geometry of a sliding-window operation (NHWC): input `[n, h, w, c]`, output `[n, oh, ow, .]`, a `kh x kw`
 * window with strides `sh, sw`, dilations `dh, dw` and top/left padding `pt, pl` (`Window` in `assembly/kernels.ts`).
 */
export interface SimdWindow {
  n: number;
  h: number;
  w: number;
  c: number;
  oh: number;
  ow: number;
  kh: number;
  kw: number;
  sh: number;
  sw: number;
  dh: number;
  dw: number;
  pt: number;
  pl: number;
}

/** A convolution's geometry: its {@link SimdWindow} (`c` the input channels) and its output channels. */
export interface ConvGeometry extends SimdWindow {
  co: number;
}

/** The attributes of tfjs's convolution kernels that fix their geometry. */
export interface ConvAttrs {
  strides: [number, number] | number;
  pad: 'valid' | 'same' | number | backend_util.ExplicitPadding;
  dilations?: [number, number] | number;
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
}

/** The geometry of an NHWC convolution of `x [n, h, w, c]` by a `[kh, kw, c, co]` filter (tfjs's `computeConv2DInfo`). */
export function convGeometry(
  xShape: readonly number[],
  filterShape: readonly number[],
  attrs: ConvAttrs,
  depthwise = false,
): ConvGeometry {
  const info = backend_util.computeConv2DInfo(
    xShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    attrs.strides,
    attrs.dilations ?? 1,
    attrs.pad,
    attrs.dimRoundingMode,
    depthwise,
    'channelsLast',
  );
  return {
    n: info.batchSize,
    h: info.inHeight,
    w: info.inWidth,
    c: info.inChannels,
    oh: info.outHeight,
    ow: info.outWidth,
    co: info.outChannels,
    kh: info.filterHeight,
    kw: info.filterWidth,
    sh: info.strideHeight,
    sw: info.strideWidth,
    dh: info.dilationHeight,
    dw: info.dilationWidth,
    pt: info.padInfo.top,
    pl: info.padInfo.left,
  };
}

const WINDOW_FIELDS = ['n', 'h', 'w', 'c', 'oh', 'ow', 'kh', 'kw', 'sh', 'sw', 'dh', 'dw', 'pt', 'pl'] as const;

/** Calls `use` with a pointer to `window` written on the backend's heap as 14 int32 values, freed afterwards. */
export function withWindow<T>(be: WasmHeapBackend, window: SimdWindow, use: (window: number) => T): T {
  const info = be.makeOutput([WINDOW_FIELDS.length], 'int32');
  (be.typedArrayFromHeap(info) as Int32Array).set(WINDOW_FIELDS.map((k) => window[k]));
  try {
    return use(pointer(be, info));
  } finally {
    be.disposeData(info.dataId);
  }
}

/** Frees a tensor's data on the backend's heap. */
export function free(be: WasmHeapBackend, info: TensorInfo): void {
  be.disposeData(info.dataId);
}

/** Runs the wasm backend's registered kernel `name` (Tessera's replacement where there is one). */
export function callWasm(
  name: string,
  inputs: NamedTensorInfoMap,
  be: WasmHeapBackend,
  attrs: NamedAttrMap,
): TensorInfo {
  const config = getKernel(name, 'wasm');
  if (config == null) {
    throw new Error(`wasm kernels: the wasm backend has no '${name}' kernel; import '@tensorflow/tfjs-backend-wasm'`);
  }
  const out = config.kernelFunc({ inputs, backend: be, attrs });
  return Array.isArray(out) ? out[0] : out;
}

/**
 * `a [m, k] x b [k, n]` (float32); `a` and `b` may be any shapes with those sizes. With `n` a multiple of 4 it is
 * Tessera's `gemm` loop (`assembly/kernels.ts`), else the backend's XNNPACK matmul. The engine's products all have a
 * new right operand (a gradient, a transformed filter), which XNNPACK repacks on each call at 5-17 ns a value: more
 * than the product itself for the filter gradients of thin layers (a 8 x 32768 x 48 product took 6.5 ms, 1.05 ms
 * without packing), and about half of Winograd's 36 small products. Both sum each value in the same order (the same
 * bits, measured on the engine's shapes).
 */
export function matMul(be: WasmHeapBackend, a: TensorInfo, m: number, k: number, b: TensorInfo, n: number): TensorInfo {
  if (n % 4 === 0) {
    const out = be.makeOutput([m, n], 'float32');
    simdKernels(be).gemm(pointer(be, a), pointer(be, b), pointer(be, out), m, k, n);
    return out;
  }
  const a2: TensorInfo = { dataId: a.dataId, shape: [m, k], dtype: 'float32' };
  const b2: TensorInfo = { dataId: b.dataId, shape: [k, n], dtype: 'float32' };
  return callWasm('BatchMatMul', { a: a2, b: b2 }, be, { transposeA: false, transposeB: false });
}
