/**
 * The conformance kit of `@tessera/core/testing` over the compiled plugin (`npm test` builds dist/ first), plus the
 * plugin's own layer: its configuration round trip, and its ONNX converter against tfjs where `@tessera/onnx` is
 * installed. Each kit check throws a message naming the architecture, the case and what came out.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { setupEngine, tf, type ModelManifest } from '@tessera/core';
import {
  checkInputMultiple,
  checkOutputContract,
  checkReceptiveField,
  checkSaveLoad,
  checkTraining,
} from '@tessera/core/testing';
import attentionUnet, { AttentionGate } from '../dist/index.js';

const plugin = attentionUnet();
/** A CPU-fit configuration; the defaults (depth 4, 16 filters) train too, only slower. */
const OPTIONS = { depth: 2, baseFilters: 4 };
const multiple = plugin.inputMultiple({ ...plugin.defaults, ...OPTIONS });
const MODULE = new URL('../dist/index.js', import.meta.url);

describe('attention-unet conformance', { timeout: 120_000 }, () => {
  beforeAll(async () => {
    await setupEngine('wasm');
  });

  it('maps [b, h, w, c] to [b, h, w, classes] probabilities for several sizes and class counts', () => {
    for (const shape of [
      { batch: 1, inputChannels: 1, numClasses: 2, height: 2 * multiple, width: multiple },
      { batch: 2, inputChannels: 3, numClasses: 5, height: 3 * multiple, width: 2 * multiple },
    ]) {
      const { model } = checkOutputContract(plugin, OPTIONS, shape);
      expect(model.layers.filter((l) => l instanceof AttentionGate)).toHaveLength(OPTIONS.depth);
      model.dispose();
    }
  });

  it('rejects an input size that is not a multiple of the declared input multiple', () => {
    expect(checkInputMultiple(plugin, OPTIONS)).toMatch(`divisible by ${multiple}`);
  });

  it('gives identical probabilities after saveModel / loadModel, here and in a fresh worker thread', async () => {
    const shape = { batch: 1, inputChannels: 3, numClasses: 3, height: 64, width: 64 };
    const { model, options } = checkOutputContract(plugin, OPTIONS, shape);
    try {
      const result = await checkSaveLoad(plugin, options, model, shape, { module: MODULE });
      expect(result.maxDifference).toBeLessThanOrEqual(1e-5);
      expect(result.freshThreadMaxDifference).toBeLessThanOrEqual(1e-5);
    } finally {
      model.dispose();
    }
  });

  it('declares a receptive field that bounds the pixels an output depends on: 14 * 2 ** depth - 9', () => {
    expect(plugin.receptiveField({ ...plugin.defaults, ...OPTIONS })).toBe(14 * 2 ** OPTIONS.depth - 9);
    expect(plugin.receptiveField(plugin.defaults)).toBe(14 * 2 ** 4 - 9);
    const shape = { batch: 1, inputChannels: 3, numClasses: 2, height: multiple, width: multiple };
    const { model, options } = checkOutputContract(plugin, OPTIONS, shape);
    try {
      const result = checkReceptiveField(plugin, options, model, 3);
      expect(result.outsideChange).toBeLessThanOrEqual(1e-5);
      expect(result.centreChange).toBeGreaterThan(0);
    } finally {
      model.dispose();
    }
  });

  it('trains on two synthetic 64x64 images to a pixel accuracy above 0.9 in 40 steps', () => {
    const result = checkTraining(plugin, OPTIONS, { size: 64, images: 2, steps: 40, minAccuracy: 0.9 });
    expect(result.lastLoss).toBeLessThan(result.firstLoss * 0.5);
    expect(result.accuracy).toBeGreaterThan(0.9);
  });

  it('the attention gate weights the skip features by a coefficient in (0, 1) per pixel', () => {
    const gate = new AttentionGate({ interChannels: 2, seed: 3 });
    tf.tidy(() => {
      const x = tf.randomUniform([1, 4, 4, 3], 0.5, 1, 'float32', 1);
      const g = tf.randomNormal([1, 4, 4, 5], 0, 1, 'float32', 2);
      const y = gate.apply([x, g]) as tf.Tensor;
      expect(y.shape).toEqual([1, 4, 4, 3]);
      const ratio = tf.div(y, x);
      // One coefficient per pixel, the same for every channel, strictly between 0 and 1.
      const [lo, hi] = [tf.min(ratio).dataSync()[0], tf.max(ratio).dataSync()[0]];
      expect(lo).toBeGreaterThan(0);
      expect(hi).toBeLessThan(1);
      const spread = tf.max(tf.sub(tf.max(ratio, -1), tf.min(ratio, -1))).dataSync()[0];
      expect(spread).toBeLessThan(1e-5);
    });
    expect(gate.getConfig()).toMatchObject({ interChannels: 2, seed: 3 });
  });

  it('converts to ONNX (its own converter for the gate) within 1e-4 of tfjs, where @tessera/onnx is installed', async (ctx) => {
    const onnx = await import('@tessera/onnx').catch(() => null);
    if (!onnx) return ctx.skip();
    const shape = { batch: 1, inputChannels: 3, numClasses: 3, height: 64, width: 64 };
    const { model, options } = checkOutputContract(plugin, OPTIONS, shape);
    try {
      const manifest = {
        architecture: { name: plugin.name, options, inputMultiple: multiple },
        inputChannels: 3,
        classes: [{ name: 'a' }, { name: 'b' }, { name: 'c' }],
        normalization: {},
        files: { weights: { sha256: '' } },
      } as unknown as ModelManifest;
      const bytes = onnx.exportOnnx(model, manifest, { converters: plugin.onnxConverters });
      const predictor = await onnx.createOnnxPredictor(bytes, { threads: 1 });
      const dims = [1, 64, 64, 3] as const;
      const input = tf.randomNormal([...dims], 0, 1, 'float32', 5).dataSync() as Float32Array;
      const reference = tf.tidy(() => (model.predict(tf.tensor4d(input, [...dims])) as tf.Tensor).dataSync());
      const actual = await predictor.run(input, dims);
      await predictor.dispose();
      let max = 0;
      for (let i = 0; i < actual.length; i++) max = Math.max(max, Math.abs(actual[i] - reference[i]));
      expect(actual.length).toBe(reference.length);
      expect(max).toBeLessThanOrEqual(1e-4);
    } finally {
      model.dispose();
    }
  });
});
