import { beforeAll, describe, expect, it } from 'vitest';
import {
  ArchitectureRegistry,
  countParameters,
  createOptimizer,
  createRandom,
  getLoss,
  randSyntheticTissue,
  resolveArchitectureOptions,
  setupEngine,
  tf,
} from '@tessera/core';
import unet, { UNET_DEFAULTS } from './index.js';

describe('unet plugin', () => {
  beforeAll(async () => {
    await setupEngine('wasm');
  });

  it('registers under its name with the declared defaults', () => {
    const registry = new ArchitectureRegistry().register(unet());
    expect(registry.get('unet').defaults).toEqual(UNET_DEFAULTS);
    expect(unet({ baseFilters: 8 }).defaults).toEqual({ ...UNET_DEFAULTS, baseFilters: 8 });
  });

  it('declares its input multiple and receptive field from its depth', () => {
    const plugin = unet();
    expect(plugin.inputMultiple({ ...UNET_DEFAULTS, depth: 4 })).toBe(16);
    expect(plugin.inputMultiple({ ...UNET_DEFAULTS, depth: 2 })).toBe(4);
    expect(plugin.receptiveField({ ...UNET_DEFAULTS, depth: 4 })).toBe(215);
  });

  it('has the paper configuration parameter count (64 base filters, 1 channel, 2 classes: 31,030,658)', () => {
    const plugin = unet();
    const model = plugin.build({
      inputChannels: 1,
      numClasses: 2,
      options: resolveArchitectureOptions(plugin, { baseFilters: 64, batchNorm: false }),
    });
    // By hand, conv(a->b) = 9ab + b, upconv(a->b) = 4ab + b: encoder 4,684,224 + bottleneck 14,157,824
    // + decoder 12,188,480 + 1x1 head 130 (the figure of Ronneberger et al.'s network; padding changes no weights).
    expect(countParameters(model)).toBe(31_030_658);
    model.dispose();
  });

  it.each([
    [1, 2, 32, 48, { depth: 2, baseFilters: 4 }],
    [3, 4, 64, 64, { depth: 3, baseFilters: 4, batchNorm: false, dropout: 0.2 }],
  ])('maps [b, h, w, %i] to [b, h, w, %i] probabilities (%i x %i)', (channels, classes, h, w, options) => {
    const plugin = unet();
    const model = plugin.build({
      inputChannels: channels,
      numClasses: classes,
      options: resolveArchitectureOptions(plugin, options),
      seed: 1,
    });
    const out = tf.tidy(() => model.predict(tf.randomUniform([2, h, w, channels], 0, 1, 'float32', 1)) as tf.Tensor);
    expect(out.shape).toEqual([2, h, w, classes]);
    const sums = tf.tidy(() => tf.sum(out, -1).dataSync());
    for (const s of sums) expect(s).toBeCloseTo(1, 4);
    out.dispose();
    model.dispose();
  });

  it("takes any of core's encoders (smp's U-Net) and names the encoder's layers", () => {
    const plugin = unet();
    expect(() => resolveArchitectureOptions(plugin, { encoder: 'resnet5' })).toThrow(
      /Expected one of "unet", "vgg16", "mobilenetv2", "resnet50" for option "encoder" of architecture "unet" but received "resnet5"/,
    );
    expect(plugin.encoder!(UNET_DEFAULTS)).toEqual({ name: 'unet', layers: /^(enc\d+_|pool\d+$|bottleneck_)/ });
    for (const [encoder, count] of [
      ['vgg16', 14_714_688],
      ['mobilenetv2', 1_811_712],
      ['resnet50', 23_508_032],
    ] as const) {
      const options = resolveArchitectureOptions(plugin, { encoder, batchNorm: encoder !== 'vgg16' });
      expect(plugin.inputMultiple(options)).toBe(32);
      const { name, layers: pattern } = plugin.encoder!(options);
      expect(name).toBe(encoder);
      const model = plugin.build({ inputChannels: 3, numClasses: 2, options, seed: 1 });
      // The encoder's layers hold the published network's weights (VGG-16 without batch norm here), nothing more.
      const inEncoder = model.trainableWeights.filter((w) => pattern.test(w.originalName.split('/')[0]));
      expect(inEncoder.reduce((sum, w) => sum + w.shape.reduce((a, b) => a * b, 1), 0)).toBe(count);
      // The receptive field of the whole network reaches past the encoder's deepest features (the decoder adds).
      expect(plugin.receptiveField(options)).toBeGreaterThan(200);
      model.dispose();
    }
    const small = resolveArchitectureOptions(plugin, { encoder: 'mobilenetv2', encoderWidth: 0.25, baseFilters: 8 });
    const model = plugin.build({ inputChannels: 3, numClasses: 4, options: small, seed: 2 });
    const out = tf.tidy(() => model.predict(tf.randomUniform([2, 64, 96, 3], 0, 1, 'float32', 1)) as tf.Tensor);
    expect(out.shape).toEqual([2, 64, 96, 4]);
    out.dispose();
    model.dispose();
  });

  it('gives identical initial weights for the same seed', () => {
    const plugin = unet();
    const options = resolveArchitectureOptions(plugin, { depth: 2, baseFilters: 4 });
    const a = plugin.build({ inputChannels: 1, numClasses: 2, options, seed: 5 });
    const b = plugin.build({ inputChannels: 1, numClasses: 2, options, seed: 5 });
    const c = plugin.build({ inputChannels: 1, numClasses: 2, options, seed: 6 });
    const w = (m: typeof a) => Array.from(m.getWeights()[0].dataSync());
    expect(w(b)).toEqual(w(a));
    expect(w(c)).not.toEqual(w(a));
  });

  it('overfits a tiny fixed set on the wasm engine', () => {
    const plugin = unet();
    const options = resolveArchitectureOptions(plugin, { depth: 2, baseFilters: 8 });
    const model = plugin.build({ inputChannels: 3, numClasses: 2, options, seed: 3 });
    const rng = createRandom(11);
    const size = 48;
    const samples = [0, 1].map((i) => randSyntheticTissue({ width: size, height: size, density: 40 }, rng.fork(i)));
    const x = tf.tensor4d(Float32Array.from(samples.flatMap((s) => Array.from(s.image.data, (v) => v / 255 - 0.5))), [
      2,
      size,
      size,
      3,
    ]);
    const y = tf.tensor3d(Int32Array.from(samples.flatMap((s) => Array.from(s.mask.data))), [2, size, size], 'int32');
    const optimizer = createOptimizer('adam', 0.01);
    const loss = getLoss('cross-entropy');
    const variables = model.trainableWeights.map((v) => v.read() as tf.Variable);
    let first = 0;
    let last = 0;
    for (let step = 0; step < 40; step++) {
      last = tf.tidy(() => {
        const { value, grads } = tf.variableGrads(
          () => loss(model.apply(x, { training: true }) as tf.Tensor4D, y),
          variables,
        );
        optimizer.applyGradients(grads);
        return value.dataSync()[0];
      });
      if (step === 0) first = last;
    }
    const accuracy = tf.tidy(() => {
      const predicted = tf.argMax(model.apply(x, { training: true }) as tf.Tensor, -1);
      return tf.mean(tf.cast(tf.equal(predicted, y), 'float32')).dataSync()[0];
    });
    expect(last).toBeLessThan(first * 0.3);
    expect(accuracy).toBeGreaterThan(0.97);
  });
});
