import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import * as tfl from '@tensorflow/tfjs-layers';
import { InvalidOptionError } from '../errors.js';
import { defineArchitecture } from './architecture.js';
import { checkInputSize } from './check-input.js';
import { countFlops } from './flops.js';

/** 8x8x3 -> conv 3x3 (4) -> depthwise 3x3/2 -> transposed 2x2/2 (5) -> separable 3x3 (6) -> dense (2). */
function tinyModel(): tfl.LayersModel {
  const input = tfl.input({ shape: [null, null, 3] });
  let x = tfl.layers.conv2d({ filters: 4, kernelSize: 3, padding: 'same' }).apply(input) as tfl.SymbolicTensor;
  x = tfl.layers.depthwiseConv2d({ kernelSize: 3, strides: 2, padding: 'same' }).apply(x) as tfl.SymbolicTensor;
  x = tfl.layers
    .conv2dTranspose({ filters: 5, kernelSize: 2, strides: 2, padding: 'same' })
    .apply(x) as tfl.SymbolicTensor;
  x = tfl.layers.batchNormalization().apply(x) as tfl.SymbolicTensor;
  x = tfl.layers.separableConv2d({ filters: 6, kernelSize: 3, padding: 'same' }).apply(x) as tfl.SymbolicTensor;
  x = tfl.layers.dense({ units: 2, activation: 'softmax' }).apply(x) as tfl.SymbolicTensor;
  return tfl.model({ inputs: input, outputs: x });
}

describe('countFlops', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });

  it('counts 2 FLOPs per multiply-add of each layer at the concrete input size', () => {
    const model = tinyModel();
    // By hand (multiply-adds): conv 8*8 px * 3*3*3*4 = 6912; depthwise 4*4 px * 3*3*4 = 576;
    // transposed 4*4 input px * 2*2*4*5 = 1280; separable 8*8 * (3*3*5 + 5*6) = 4800; dense 8*8 * 6*2 = 768.
    expect(countFlops(model, [1, 8, 8, 3])).toBe(2 * (6912 + 576 + 1280 + 4800 + 768));
    // Linear in the batch and in the number of pixels.
    expect(countFlops(model, [2, 16, 8, 3])).toBe(4 * 2 * (6912 + 576 + 1280 + 4800 + 768));
    model.dispose();
  });

  it('rejects a shape that is not [batch, height, width, channels]', () => {
    const model = tinyModel();
    expect(() => countFlops(model, [8, 8, 3])).toThrow(InvalidOptionError);
    expect(() => countFlops(model, [1, 8, 8, 7])).toThrow(/cannot be applied to an input of shape \[1, 8, 8, 7\]/);
    model.dispose();
  });
});

describe('checkInputSize', () => {
  const plugin = defineArchitecture<{ levels: number }>({
    name: 'fcn8s',
    version: '0.0.0',
    apiVersion: 1,
    description: 'stub',
    defaults: { levels: 5 },
    optionsSchema: { levels: { type: 'integer', description: 'pooling levels' } },
    inputMultiple: (o) => 2 ** o.levels,
    receptiveField: () => 1,
    build: () => tinyModel(),
  });

  it('accepts multiples of the input multiple', () => {
    expect(() => checkInputSize(plugin, { levels: 5 }, 128, 96)).not.toThrow();
  });

  it('names the multiple, the size received and the padded size', () => {
    expect(() => checkInputSize(plugin, { levels: 5 }, 100, 96)).toThrow(
      new InvalidOptionError(
        'Expected image height and width divisible by 32 for architecture "fcn8s" but received 100x96. Pad the image to 128x96 (or use --tile 128).',
      ),
    );
    expect(() => checkInputSize(plugin, { levels: 2 }, 6, 3)).toThrow(
      'Expected image height and width divisible by 4 for architecture "fcn8s" but received 6x3. Pad the image to 8x4 (or use --tile 8).',
    );
  });
});
