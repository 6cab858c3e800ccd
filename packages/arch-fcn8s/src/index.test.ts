import { beforeAll, describe, expect, it } from 'vitest';
import {
  ArchitectureRegistry,
  InvalidOptionError,
  countParameters,
  resolveArchitectureOptions,
  setupEngine,
  tf,
} from '@tessera/core';
import fcn8s, { FCN8S_DEFAULTS, fcn8sReceptiveField } from './index.js';

describe('fcn8s plugin', () => {
  beforeAll(async () => {
    await setupEngine('wasm');
  });

  it('registers under its name with the declared defaults', () => {
    const registry = new ArchitectureRegistry().register(fcn8s());
    expect(registry.get('fcn8s').defaults).toEqual(FCN8S_DEFAULTS);
    expect(fcn8s({ variant: '16s' }).defaults).toEqual({ ...FCN8S_DEFAULTS, variant: '16s' });
  });

  it('validates its options', () => {
    const plugin = fcn8s();
    expect(() => resolveArchitectureOptions(plugin, { variant: '4s' })).toThrow(
      new InvalidOptionError(
        'Expected one of "8s", "16s", "32s" for option "variant" of architecture "fcn8s" but received "4s" of type string.',
      ),
    );
    expect(() => resolveArchitectureOptions(plugin, { fc6Kernel: 4 })).toThrow(
      /one of 1, 3, 5, 7 for option "fc6Kernel"/,
    );
    expect(() => resolveArchitectureOptions(plugin, { baseFilters: 0 })).toThrow(InvalidOptionError);
    expect(resolveArchitectureOptions(plugin, { fcFilters: '128' }).fcFilters).toBe(128);
  });

  it('declares input multiple 32 and its receptive field', () => {
    const plugin = fcn8s();
    expect(plugin.inputMultiple(FCN8S_DEFAULTS)).toBe(32);
    // Encoder reach 2+4+12+24+48 left, fc6 7x7 at stride 32 adds 96, the 16x16/8 upsampling 11 (see the README).
    expect(fcn8sReceptiveField(FCN8S_DEFAULTS)).toBe(491);
    expect(fcn8sReceptiveField({ ...FCN8S_DEFAULTS, variant: '16s' })).toBe(483);
    expect(fcn8sReceptiveField({ ...FCN8S_DEFAULTS, variant: '32s' })).toBe(467);
    expect(fcn8sReceptiveField({ ...FCN8S_DEFAULTS, fc6Kernel: 1 })).toBe(299);
  });

  it.each([
    ['8s', 1, 2, 64, 32],
    ['16s', 3, 4, 32, 96],
    ['32s', 3, 3, 64, 64],
  ] as const)('variant %s maps [b, h, w, %i] to [b, h, w, %i] probabilities (%i x %i)', (variant, c, k, h, w) => {
    const plugin = fcn8s();
    const options = resolveArchitectureOptions(plugin, { variant, baseFilters: 4, fcFilters: 16 });
    const model = plugin.build({ inputChannels: c, numClasses: k, options, seed: 1 });
    const out = tf.tidy(() => model.predict(tf.randomUniform([2, h, w, c], 0, 1, 'float32', 1)) as tf.Tensor);
    expect(out.shape).toEqual([2, h, w, k]);
    for (const s of tf.tidy(() => tf.sum(out, -1).dataSync())) expect(s).toBeCloseTo(1, 4);
    out.dispose();
    model.dispose();
  });

  it('initialises the upsampling as bilinear interpolation', () => {
    const plugin = fcn8s();
    const model = plugin.build({ inputChannels: 3, numClasses: 2, options: FCN8S_DEFAULTS });
    const kernel = model.getLayer('upscore2').getWeights()[0];
    expect(kernel.shape).toEqual([4, 4, 2, 2]);
    const k = kernel.arraySync() as number[][][][];
    expect(k.map((row) => row.map((col) => col[0][0]))[1]).toEqual([0.1875, 0.5625, 0.5625, 0.1875]);
    expect(k[1][1][0][1]).toBe(0); // no mixing of classes
    model.dispose();
  });

  it('gives identical initial weights for the same seed', () => {
    const plugin = fcn8s();
    const options = resolveArchitectureOptions(plugin, { baseFilters: 4, fcFilters: 8 });
    const w = (seed: number) => {
      const m = plugin.build({ inputChannels: 1, numClasses: 2, options, seed });
      const v = Array.from(m.getWeights()[0].dataSync());
      m.dispose();
      return v;
    };
    expect(w(5)).toEqual(w(5));
    expect(w(6)).not.toEqual(w(5));
  });

  it('has 134,489,759 parameters at the paper configuration (VGG-16, fc 4096, 21 classes)', () => {
    // Reference: Long et al.'s Caffe FCN-8s (voc-fcn8s), ~134M: VGG-16 convs 14,714,688 + fc6 7x7x512x4096 + 4096 =
    // 102,764,544 + fc7 16,781,312 + scores 86,037 + 10,773 + 5,397 + bias-free deconvs 7,056 + 7,056 + 112,896.
    const plugin = fcn8s();
    const options = resolveArchitectureOptions(plugin, { baseFilters: 64, fcFilters: 4096, batchNorm: false });
    const model = plugin.build({ inputChannels: 3, numClasses: 21, options });
    expect(countParameters(model)).toBe(134_489_759);
    model.dispose();
  });
});
