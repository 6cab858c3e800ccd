import { beforeAll, describe, expect, it } from 'vitest';
import {
  ArchitectureRegistry,
  InvalidOptionError,
  countParameters,
  resolveArchitectureOptions,
  setupEngine,
  tf,
} from '@tessera/core';
import deeplabv3plus, { DEEPLAB_DEFAULTS, asppRates, deeplabReceptiveField } from './index.js';

describe('deeplabv3plus plugin', () => {
  beforeAll(async () => {
    await setupEngine('wasm');
  });

  it('registers under its name with the declared defaults', () => {
    const registry = new ArchitectureRegistry().register(deeplabv3plus());
    expect(registry.get('deeplabv3plus').defaults).toEqual(DEEPLAB_DEFAULTS);
    expect(deeplabv3plus({ backbone: 'resnet50' }).defaults.backbone).toBe('resnet50');
  });

  it('validates its options', () => {
    const plugin = deeplabv3plus();
    expect(() => resolveArchitectureOptions(plugin, { backbone: 'xception' })).toThrow(
      new InvalidOptionError(
        'Expected one of "mobilenetv2", "resnet50" for option "backbone" of architecture "deeplabv3plus" but received "xception" of type string.',
      ),
    );
    expect(() => resolveArchitectureOptions(plugin, { outputStride: 32 })).toThrow(
      /one of 8, 16 for option "outputStride"/,
    );
    expect(() => resolveArchitectureOptions(plugin, { widthMultiplier: 0 })).toThrow(InvalidOptionError);
  });

  it('derives rates, input multiple and receptive field from the output stride', () => {
    const plugin = deeplabv3plus();
    expect(asppRates(DEEPLAB_DEFAULTS)).toEqual([6, 12, 18]);
    expect(asppRates({ ...DEEPLAB_DEFAULTS, outputStride: 8 })).toEqual([12, 24, 36]);
    expect(asppRates({ ...DEEPLAB_DEFAULTS, rateScale: 0.5 })).toEqual([3, 6, 9]);
    expect(plugin.inputMultiple({ ...DEEPLAB_DEFAULTS, outputStride: 8 })).toBe(8);
    expect(deeplabReceptiveField(DEEPLAB_DEFAULTS)).toBe(1153);
    expect(deeplabReceptiveField({ ...DEEPLAB_DEFAULTS, backbone: 'resnet50' })).toBe(1089);
  });

  it.each([
    [{}, 1, 2, 32, 48],
    [{ outputStride: 8, imagePooling: false }, 3, 4, 16, 40],
    [{ backbone: 'resnet50', resnetWidth: 4, asppFilters: 8 }, 3, 3, 64, 32],
  ] as const)('%j maps [b, h, w, %i] to [b, h, w, %i] probabilities (%i x %i)', (opts, c, k, h, w) => {
    const plugin = deeplabv3plus();
    const model = plugin.build({
      inputChannels: c,
      numClasses: k,
      options: resolveArchitectureOptions(plugin, opts),
      seed: 1,
    });
    const out = tf.tidy(() => model.predict(tf.randomUniform([2, h, w, c], 0, 1, 'float32', 1)) as tf.Tensor);
    expect(out.shape).toEqual([2, h, w, k]);
    for (const s of tf.tidy(() => tf.sum(out, -1).dataSync())) expect(s).toBeCloseTo(1, 4);
    out.dispose();
    model.dispose();
  });

  it('uses atrous layers exactly where the stride would pass the output stride', () => {
    const plugin = deeplabv3plus();
    const rates = (opts: object) => {
      const model = plugin.build({
        inputChannels: 3,
        numClasses: 2,
        options: resolveArchitectureOptions(plugin, opts),
      });
      const r = model.layers
        .filter((l) => l.getClassName() === 'TesseraAtrousConv2D' && !l.name.startsWith('aspp'))
        .map((l) => l.getConfig().dilationRate);
      model.dispose();
      return r;
    };
    // MobileNetV2 at OS 16: the 160-channel stage (3 blocks) and the 320 block after its first block: rate 2.
    expect(rates({})).toEqual([2, 2, 2]);
    // ResNet-50 at OS 16: stage 4's second and third blocks at rate 2; at OS 8 stage 3 at 2, stage 4 at 4 (first 2).
    expect(rates({ backbone: 'resnet50', resnetWidth: 4 })).toEqual([2, 2]);
    expect(rates({ backbone: 'resnet50', resnetWidth: 4, outputStride: 8 })).toEqual([2, 2, 2, 2, 2, 2, 4, 4]);
  });

  it('makes every output pixel depend on the whole image through the image-level branch', () => {
    const plugin = deeplabv3plus();
    const model = plugin.build({ inputChannels: 1, numClasses: 2, options: DEEPLAB_DEFAULTS, seed: 2 });
    const [a, b] = tf.tidy(() => {
      const x = tf.randomUniform([1, 64, 64, 1], 0, 1, 'float32', 3);
      const far = tf.add(
        x,
        tf.reshape(
          tf.pad(tf.fill([16, 16], 3), [
            [48, 0],
            [48, 0],
          ]),
          [1, 64, 64, 1],
        ),
      );
      const at = (t: tf.Tensor) => tf.slice(model.predict(t) as tf.Tensor, [0, 0, 0, 0], [1, 1, 1, 2]).dataSync();
      return [at(x), at(far)];
    });
    expect(Math.abs(a[0] - b[0])).toBeGreaterThan(0);
    model.dispose();
  });

  it('gives identical initial weights for the same seed', () => {
    const plugin = deeplabv3plus();
    const w = (seed: number) => {
      const m = plugin.build({ inputChannels: 1, numClasses: 2, options: DEEPLAB_DEFAULTS, seed });
      const v = m.getWeights().map((t) => Array.from(t.dataSync()).slice(0, 8));
      m.dispose();
      return v;
    };
    expect(w(5)).toEqual(w(5));
    expect(w(6)).not.toEqual(w(5));
  });

  it('has 40,410,774 weights (40,351,925 trainable) with ResNet-50 at the paper configuration, 21 classes', () => {
    // Reference: ~40M in torchvision-style DeepLabv3+ ResNet-50 heads with full 3x3 ASPP convolutions.
    // Backbone, ASPP and decoder figures: see the README.
    // segmentation_models.pytorch's DeepLabV3Plus(resnet50) has ~26.7M because its ASPP and decoder 3x3s are
    // depthwise separable; torchvision's deeplabv3_resnet50 (~42M) is DeepLabv3 with an auxiliary FCN head.
    const plugin = deeplabv3plus();
    const options = resolveArchitectureOptions(plugin, {
      backbone: 'resnet50',
      resnetWidth: 64,
      asppFilters: 256,
      lowLevelFilters: 48,
    });
    const model = plugin.build({ inputChannels: 3, numClasses: 21, options });
    const trainable = model.trainableWeights.reduce((s, v) => s + v.shape.reduce((a, b) => a * b, 1), 0);
    expect(countParameters(model)).toBe(40_410_774);
    expect(trainable).toBe(40_351_925);
    model.dispose();
  });
});
