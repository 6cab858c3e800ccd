/**
 * The conformance kit of `@tessera/core/testing` over this plugin: the checks every Tessera architecture passes.
 * Run with `npm test`, which builds dist/ first: the tests check the compiled package, as users get it. Each check
 * throws a message naming the architecture, the case and what came out.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { setupEngine } from '@tessera/core';
import {
  checkInputMultiple,
  checkOutputContract,
  checkReceptiveField,
  checkSaveLoad,
  checkTraining,
} from '@tessera/core/testing';
import createPlugin from '../dist/index.js';

const plugin = createPlugin();
/** Options the checks run with (the defaults when empty); keep them small enough for a CPU. */
const OPTIONS = {};
const multiple = plugin.inputMultiple({ ...plugin.defaults, ...OPTIONS });

describe(`architecture "${plugin.name}" conformance`, { timeout: 120_000 }, () => {
  beforeAll(async () => {
    await setupEngine('wasm');
  });

  it('maps [b, h, w, c] to [b, h, w, classes] probabilities for several sizes and class counts', () => {
    for (const shape of [
      { batch: 1, inputChannels: 1, numClasses: 2, height: 2 * multiple, width: multiple },
      { batch: 2, inputChannels: 3, numClasses: 5, height: 3 * multiple, width: 2 * multiple },
    ]) {
      const { model } = checkOutputContract(plugin, OPTIONS, shape);
      model.dispose();
    }
  });

  it('rejects an input size that is not a multiple of the declared input multiple', () => {
    const message = checkInputMultiple(plugin, OPTIONS);
    if (multiple > 1) expect(message).toMatch(`divisible by ${multiple}`);
  });

  it('gives identical probabilities after saveModel / loadModel, here and in a fresh worker thread', async () => {
    const side = Math.ceil(64 / multiple) * multiple;
    const shape = { batch: 1, inputChannels: 3, numClasses: 3, height: side, width: side };
    const { model, options } = checkOutputContract(plugin, OPTIONS, shape);
    try {
      // Also loaded in a fresh worker thread that imports only this module, as training workers, evaluate and
      // predict load models: a layer class registered in build() instead of declared in "layers" fails here.
      const result = await checkSaveLoad(plugin, options, model, shape, {
        module: new URL('../dist/index.js', import.meta.url),
      });
      expect(result.maxDifference).toBeLessThanOrEqual(1e-5);
      expect(result.freshThreadMaxDifference).toBeLessThanOrEqual(1e-5);
    } finally {
      model.dispose();
    }
  });

  it('declares a receptive field that bounds the pixels an output depends on', () => {
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

  it('trains on two synthetic 64x64 images to a pixel accuracy above 0.9', () => {
    const result = checkTraining(plugin, OPTIONS, { size: 64, images: 2, steps: 40, minAccuracy: 0.9 });
    expect(result.lastLoss).toBeLessThan(result.firstLoss * 0.5);
    expect(result.accuracy).toBeGreaterThan(0.9);
  });
});
