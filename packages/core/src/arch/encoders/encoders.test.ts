import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import * as tfl from '@tensorflow/tfjs-layers';
import { PluginError, UnknownNameError } from '../../errors.js';
import { defineArchitecture, type ArchitecturePlugin } from '../architecture.js';
import { seedSequence } from '../blocks.js';
import { ArchitectureRegistry } from '../registry.js';
import { reachConv, INPUT_REACH, receptiveFieldOfReach } from '../reach.js';
import {
  EncoderRegistry,
  encoders,
  featureStrides,
  mobilenetv2,
  resnet50,
  vgg16,
  type EncoderPlugin,
} from './index.js';

/** Builds an encoder on a symbolic input and returns the model of its features. */
function build(encoder: EncoderPlugin<any>, options: object, outputStride = 32, channels = 3): tfl.LayersModel {
  const input = tfl.input({ shape: [null, null, channels], name: 'image' });
  const features = encoder.build({ input, options, outputStride, seeds: seedSequence(1) });
  return tfl.model({ inputs: input, outputs: features });
}

/** An architecture plugin that only carries what a test gives it. */
const testPlugin = (name: string, extra: Partial<ArchitecturePlugin<object>>) =>
  defineArchitecture<object>({
    name,
    version: '1.0.0',
    apiVersion: 1,
    description: 'test',
    defaults: {},
    optionsSchema: {},
    inputMultiple: () => 1,
    receptiveField: () => 1,
    build: () => tfl.model({ inputs: tfl.input({ shape: [1] }), outputs: tfl.input({ shape: [1] }) }),
    ...extra,
  });

const trainable = (model: tfl.LayersModel) =>
  model.trainableWeights.reduce((sum, w) => sum + w.shape.reduce((a, b) => a * b, 1), 0);

describe('encoders', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });

  // Published weights: torchvision's vgg16().features, mobilenet_v2().features without its last 1280-channel layer,
  // resnet50() without avgpool and fc (batch-norm moving statistics are buffers there, not parameters).
  it.each([
    ['vgg16', vgg16, { width: 1, batchNorm: false }, 14_714_688],
    ['mobilenetv2', mobilenetv2, { width: 1 }, 1_811_712],
    ['resnet50', resnet50, { width: 1 }, 23_508_032],
  ] as const)("%s has the published network's weights at width 1", (_, encoder, options, count) => {
    const model = build(encoder, options);
    expect(trainable(model)).toBe(count);
    model.dispose();
  });

  it.each([
    ['vgg16', vgg16],
    ['mobilenetv2', mobilenetv2],
    ['resnet50', resnet50],
  ] as const)('%s gives 5 feature maps at strides 2 to 32, dilated past the output stride', (_, encoder) => {
    for (const outputStride of encoder.outputStrides) {
      const model = build(encoder, { ...encoder.defaults, width: 0.125 }, outputStride, 1);
      const out = tf.tidy(() => (model.predict(tf.zeros([1, 64, 64, 1])) as tf.Tensor[]).map((t) => t.shape[1]));
      expect(out).toEqual(featureStrides(outputStride).map((s) => 64 / s));
      // Every layer it made is named by its pattern, and it reaches as far as it says.
      for (const layer of model.layers.slice(1)) expect(layer.name).toMatch(encoder.layerPattern);
      const reaches = encoder.reach({ ...encoder.defaults, width: 0.125 }, outputStride);
      expect(reaches.map((r) => r.s)).toEqual(featureStrides(outputStride));
      model.dispose();
    }
  });

  it('walks receptive fields with the same arithmetic as the networks', () => {
    // VGG-16's pool5: the classic 212 px (a 3x3 conv chain with pools), here the symmetric field 2*max(a, b)+1.
    const pool5 = vgg16.reach(vgg16.defaults, 32)[4];
    expect(pool5.s).toBe(32);
    expect(receptiveFieldOfReach(pool5)).toBe(2 * Math.max(pool5.a, pool5.b) + 1);
    expect(pool5.a + pool5.b + 1).toBe(212);
    expect(receptiveFieldOfReach(reachConv(INPUT_REACH, 3))).toBe(3);
  });

  it('are found by name, with did-you-mean; a name is taken once; the same object registers again freely', () => {
    expect(encoders.names()).toEqual(['vgg16', 'mobilenetv2', 'resnet50']);
    expect(() => encoders.get('resnet5')).toThrow(UnknownNameError);
    expect(() => encoders.get('resnet5')).toThrow(
      /Unknown encoder "resnet5". Did you mean "resnet50"\?.*vgg16, mobilenetv2, resnet50/,
    );
    const registry = new EncoderRegistry().register(vgg16);
    expect(() => registry.register(vgg16)).not.toThrow();
    expect(() => registry.register({ ...vgg16 }, 'tessera-arch-copy')).toThrow(
      /Encoder "vgg16" from tessera-arch-copy has the name/,
    );
    expect(() => registry.register({ name: 'x' } as never)).toThrow(PluginError);
    expect(() => registry.register({ ...vgg16, name: 'dilated-only', outputStrides: [16] })).toThrow(
      /outputStrides that include 32/,
    );
  });

  it('registers the encoders an architecture brings with it', () => {
    const mine: EncoderPlugin<{ width: number }> = { ...vgg16, name: 'test-vgg-copy' } as never;
    new ArchitectureRegistry().register(testPlugin('with-encoder', { encoders: [mine] }));
    expect(encoders.get('test-vgg-copy')).toBe(mine);
  });

  it('merges the ONNX converters of all plugins, refusing two different ones for one class', () => {
    const shared = mobilenetv2.onnxConverters!;
    const registry = new ArchitectureRegistry()
      .register(testPlugin('a', { onnxConverters: shared }))
      .register(testPlugin('b', { onnxConverters: shared }));
    expect(Object.keys(registry.onnxConverters())).toEqual(['TesseraAtrousConv2D']);
    registry.register(testPlugin('c', { onnxConverters: { TesseraAtrousConv2D: () => 'x' } }));
    expect(() => registry.onnxConverters()).toThrow(
      /Architectures "b" and "c" \(from builtin\) both bring an ONNX converter for layer class "TesseraAtrousConv2D"/,
    );
  });
});
