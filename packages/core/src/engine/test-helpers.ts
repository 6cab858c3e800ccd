/**
 * Helpers of the engine's kernel parity tests (not part of the build): run a function on the cpu and wasm backends
 * and compare the outputs.
 */
import * as tf from '@tensorflow/tfjs-core';
import { expect } from 'vitest';
import { registerDilatedGradients } from './dilated-gradients.js';
import { registerFastGradients } from './gradients.js';
import { registerWasmGradientKernels } from './wasm-gradients.js';
import { registerWasmKernels } from './wasm-kernels.js';

/** Deterministic uniform values in [-1, 1). */
export function random(size: number, seed: number): Float32Array {
  const out = new Float32Array(size);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

/** Output shapes and values of a function run on one backend. */
export interface Result {
  shapes: number[][];
  values: Float32Array[];
}

/** Runs `fn` on one backend and copies its outputs out of the backend; checks that no tensor leaks. */
export async function runOn(backend: 'cpu' | 'wasm', fn: () => tf.Tensor[]): Promise<Result> {
  expect(await tf.setBackend(backend)).toBe(true);
  const before = tf.memory().numTensors;
  const outs = tf.tidy(fn);
  const result = { shapes: outs.map((t) => t.shape), values: outs.map((t) => t.dataSync() as Float32Array) };
  tf.dispose(outs);
  expect(tf.memory().numTensors).toBe(before);
  return result;
}

/** max |a - b| / max |a|; fails on a size mismatch and on an all-zero reference (the test could not fail). */
export function relativeError(reference: Float32Array, actual: Float32Array): number {
  expect(actual.length).toBe(reference.length);
  let maxAbs = 0;
  let maxDiff = 0;
  for (let i = 0; i < reference.length; i++) {
    maxAbs = Math.max(maxAbs, Math.abs(reference[i]));
    const diff = Math.abs(reference[i] - actual[i]);
    maxDiff = Number.isNaN(diff) ? Infinity : Math.max(maxDiff, diff);
  }
  expect(maxAbs).toBeGreaterThan(0);
  return maxDiff / maxAbs;
}

/** Runs `fn` on cpu and on wasm and expects the same shapes and values within `tolerance` (relative). */
export async function expectParity(fn: () => tf.Tensor[], tolerance: number): Promise<void> {
  const reference = await runOn('cpu', fn);
  const actual = await runOn('wasm', fn);
  expect(actual.shapes).toEqual(reference.shapes);
  reference.values.forEach((values, i) => {
    expect(relativeError(values, actual.values[i]), `output ${i}`).toBeLessThan(tolerance);
  });
}

/**
 * Runs `step` once to warm up, then five times more on the current (wasm) backend, and expects no growth of tensors,
 * backend data ids or the wasm heap: kernels free everything they allocate.
 */
export function expectNoGrowth(step: () => void): void {
  const backend = tf.backend() as unknown as { numDataIds(): number; wasm: { HEAPU8: Uint8Array } };
  step();
  const tensors = tf.memory().numTensors;
  const dataIds = backend.numDataIds();
  const heapBytes = backend.wasm.HEAPU8.length;
  for (let i = 0; i < 5; i++) step();
  expect(tf.memory().numTensors).toBe(tensors);
  expect(backend.numDataIds()).toBe(dataIds);
  expect(backend.wasm.HEAPU8.length).toBe(heapBytes);
}

/**
 * Registers all of Tessera's wasm kernels and gradients (as `setupEngine('wasm')` does) and makes wasm the active
 * backend. Import `@tensorflow/tfjs-backend-wasm` and `@tensorflow/tfjs-layers` (tfjs-core's gradients) first.
 */
export async function useTesseraWasm(): Promise<void> {
  registerDilatedGradients();
  registerWasmGradientKernels();
  registerWasmKernels();
  registerFastGradients();
  expect(await tf.setBackend('wasm')).toBe(true);
}

/** A tensor of `shape` holding {@link random} values (seeded). */
export function randomTensor(shape: number[], seed: number): tf.Tensor {
  return tf.tensor(random(tf.util.sizeFromShape(shape), seed), shape);
}
