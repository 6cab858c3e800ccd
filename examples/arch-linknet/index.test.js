/**
 * Conformance of LinkNet with the kit every Tessera architecture passes (`@tessera/core/testing`), at a CPU-fit size,
 * plus checks of what is particular to LinkNet.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { countParameters, setupEngine } from '@tessera/core';
import {
  checkInputMultiple,
  checkOutputContract,
  checkReceptiveField,
  checkSaveLoad,
  checkTraining,
} from '@tessera/core/testing';
import linknet from './index.js';

/** A CPU-fit configuration: two encoder blocks, 8 filters (input multiple 16). */
const SMALL = { depth: 2, baseFilters: 8 };
const plugin = linknet();

describe('tessera-arch-linknet conformance', { timeout: 180_000 }, () => {
  beforeAll(async () => {
    await setupEngine('wasm');
  });

  it('maps [b, h, w, c] to [b, h, w, classes] probabilities for several sizes and class counts', () => {
    for (const shape of [
      { batch: 1, inputChannels: 1, numClasses: 2, height: 32, width: 16 },
      { batch: 2, inputChannels: 3, numClasses: 5, height: 48, width: 32 },
    ]) {
      const { model } = checkOutputContract(plugin, SMALL, shape);
      model.dispose();
    }
  });

  it('rejects an input size that is not a multiple of 2 ** (depth + 2)', () => {
    expect(checkInputMultiple(plugin, SMALL)).toMatch('Expected image height and width divisible by 16');
    expect(checkInputMultiple(plugin, {})).toMatch('Expected image height and width divisible by 64');
  });

  it('gives identical probabilities after saveModel / loadModel', async () => {
    const shape = { batch: 1, inputChannels: 3, numClasses: 3, height: 64, width: 64 };
    const { model, options } = checkOutputContract(plugin, SMALL, shape);
    try {
      expect((await checkSaveLoad(plugin, options, model, shape)).maxDifference).toBeLessThanOrEqual(1e-5);
    } finally {
      model.dispose();
    }
  });

  it('declares a receptive field that bounds the pixels an output depends on', () => {
    const shape = { batch: 1, inputChannels: 3, numClasses: 2, height: 16, width: 16 };
    const { model, options } = checkOutputContract(plugin, SMALL, shape);
    try {
      const result = checkReceptiveField(plugin, options, model, 3);
      expect(result.declared).toBe(plugin.receptiveField(options));
      expect(result.outsideChange).toBeLessThanOrEqual(1e-5);
      expect(result.centreChange).toBeGreaterThan(0);
    } finally {
      model.dispose();
    }
  });

  it('trains on two synthetic 64x64 images to a pixel accuracy above 0.9', () => {
    const result = checkTraining(plugin, SMALL, { size: 64, images: 2, steps: 40, minAccuracy: 0.9 });
    expect(result.lastLoss).toBeLessThan(result.firstLoss * 0.5);
    expect(result.accuracy).toBeGreaterThan(0.9);
  });

  it('has the size of the paper network at the defaults (11.5 million weights; 3 channels in, 2 classes out)', () => {
    const model = plugin.build({ inputChannels: 3, numClasses: 2, options: plugin.defaults });
    try {
      expect(countParameters(model)).toBe(PAPER_PARAMETERS);
    } finally {
      model.dispose();
    }
  });
});

/** Weights of LinkNet at the defaults; the paper reports 11.5 million. */
const PAPER_PARAMETERS = 11_549_506;
