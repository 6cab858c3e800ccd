import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-wasm';
import '@tensorflow/tfjs-layers';
import { callWasm, matMul, pointer, simdKernels, type WasmHeapBackend } from './simd.js';
import { randomTensor, useTesseraWasm } from './test-helpers.js';

beforeAll(useTesseraWasm);

/** `a [m, k] x b [k, n]` by the engine's `matMul` and by the backend's XNNPACK `BatchMatMul`. */
function both(m: number, k: number, n: number): [Float32Array, Float32Array] {
  const be = tf.backend() as unknown as WasmHeapBackend;
  const a = randomTensor([m, k], m + k);
  const b = randomTensor([k, n], k + n);
  // gemm itself where it applies (n a multiple of 4), so that a matMul falling back to XNNPACK could not pass.
  let ours = matMul(be, a, m, k, b, n);
  if (n % 4 === 0) {
    tf.engine().makeTensorFromTensorInfo(ours).dispose();
    ours = be.makeOutput([m, n], 'float32');
    simdKernels(be).gemm(pointer(be, a), pointer(be, b), pointer(be, ours), m, k, n);
  }
  const xnn = callWasm('BatchMatMul', { a, b }, be, { transposeA: false, transposeB: false });
  const values = [ours, xnn].map((info) => {
    const t = tf.engine().makeTensorFromTensorInfo(info);
    const v = t.dataSync() as Float32Array;
    t.dispose();
    return v;
  });
  tf.dispose([a, b]);
  return values as [Float32Array, Float32Array];
}

describe('matMul on the wasm engine (gemm without packing)', () => {
  // Rows not a multiple of 4, columns a multiple of 8 or 4 (and not of 4: XNNPACK), sums deeper than one block.
  const shapes: [number, number, number][] = [
    [1, 1, 4],
    [5, 3000, 12],
    [8, 37, 8],
    [13, 4100, 20],
    [64, 512, 64],
    [7, 9, 6],
  ];
  for (const [m, k, n] of shapes) {
    it(`${m} x ${k} x ${n}: the bits of XNNPACK's matmul`, () => {
      const [ours, xnn] = both(m, k, n);
      expect(ours.length).toBe(m * n);
      expect(xnn.some((v) => v !== 0)).toBe(true);
      expect(Array.from(ours)).toEqual(Array.from(xnn));
    });
  }
});
