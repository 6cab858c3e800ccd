import * as layers from '@tensorflow/tfjs-layers';
import { applyLayer, convBnAct } from '../blocks.js';
import { INPUT_REACH, reachConv, type Reach } from '../reach.js';
import { defineEncoder, type EncoderPlugin } from './encoder.js';

/** Options of the VGG-16 encoder. */
export interface Vgg16Options {
  /** Width relative to VGG-16's (64-128-256-512-512 filters). Default 1. */
  width: number;
  /** Batch normalisation after every convolution (VGG-16-BN); without it the convolutions have biases. Default true. */
  batchNorm: boolean;
}

/** Convolutions per block and the width factor of each block. */
const BLOCKS: readonly { convs: number; width: number }[] = [
  { convs: 2, width: 1 },
  { convs: 2, width: 2 },
  { convs: 3, width: 4 },
  { convs: 3, width: 8 },
  { convs: 3, width: 8 },
];

/** Filters of the first block at a width (64 at width 1). */
export function vggFilters(width: number): number {
  return Math.max(1, Math.round(64 * width));
}

/**
 * VGG-16 (Simonyan and Zisserman, ICLR 2015) without its fully connected layers: five blocks of 2, 2, 3, 3, 3 3x3
 * convolutions, each followed by 2x2 max-pooling. Features: the outputs of pool1 to pool5 (strides 2 to 32). Layers
 * `block<b>_conv<k>` (with `_bn`, `_relu`) and `pool<b>`. At width 1 without batch norm it has VGG-16's 14,714,688
 * convolution weights (torchvision's `vgg16().features`).
 */
export const vgg16: EncoderPlugin<Vgg16Options> = defineEncoder<Vgg16Options>({
  name: 'vgg16',
  description: 'VGG-16 (Simonyan and Zisserman 2015): 13 3x3 convolutions in 5 blocks, max-pooling',
  defaults: { width: 1, batchNorm: true },
  optionsSchema: {
    width: { type: 'number', min: 0.01, max: 4, description: 'width relative to VGG-16 (64 filters first)' },
    batchNorm: { type: 'boolean', description: 'batch normalisation after each convolution' },
  },
  outputStrides: [32],
  layerPattern: /^(block[1-5]_conv\d|pool[1-5]$)/,
  build({ input, options, seeds }) {
    const base = vggFilters(options.width);
    let x = input;
    const features: layers.SymbolicTensor[] = [];
    BLOCKS.forEach((block, b) => {
      for (let k = 1; k <= block.convs; k++) {
        x = convBnAct(x, {
          filters: base * block.width,
          kernelSize: 3,
          batchNorm: options.batchNorm,
          name: `block${b + 1}_conv${k}`,
          seeds,
        });
      }
      x = applyLayer(layers.layers.maxPooling2d({ poolSize: 2, strides: 2, name: `pool${b + 1}` }), x);
      features.push(x);
    });
    return features;
  },
  reach() {
    let r: Reach = INPUT_REACH;
    const reaches: Reach[] = [];
    for (const block of BLOCKS) {
      for (let k = 0; k < block.convs; k++) r = reachConv(r, 3);
      r = reachConv(r, 2, 2);
      reaches.push(r);
    }
    return reaches;
  },
});
