import {
  ARCHITECTURE_API_VERSION,
  applyLayer,
  classHead,
  convBnAct,
  defineArchitecture,
  layers,
  reachConv,
  reachTransposed,
  reachUnion,
  receptiveFieldOfReach,
  seedSequence,
  tf,
  vgg16,
  type ArchitecturePlugin,
  type Vgg16Options,
} from '@tessera/core';

/** Skip variants of {@link fcn8s}: the same network with two, one or no skip connections. */
export type FcnVariant = '8s' | '16s' | '32s';

/** Options of {@link fcn8s}. */
export interface Fcn8sOptions {
  /** `'8s'` (pool3 and pool4 skips, the default), `'16s'` (pool4 skip) or `'32s'` (no skip). */
  variant: FcnVariant;
  /** Filters of the first VGG block, doubled per block up to 8x (64 in the paper, so 64-128-256-512-512). Default 16. */
  baseFilters: number;
  /** Filters of the fully convolutional fc6 and fc7 layers (4096 in the paper). Default 256. */
  fcFilters: number;
  /** Kernel side of fc6, applied at 1/32 resolution (7 in the paper, which converts VGG-16's first FC layer). Default 7. */
  fc6Kernel: number;
  /** Batch normalisation after every convolution of the encoder and fc6/fc7 (not in the paper). Default true. */
  batchNorm: boolean;
  /** Dropout after fc6 and fc7 (0.5 in the paper). Default 0. */
  dropout: number;
}

/** Defaults of {@link fcn8s}: a CPU-sized network (the paper's widths are 4x and 16x larger). */
export const FCN8S_DEFAULTS: Fcn8sOptions = {
  variant: '8s',
  baseFilters: 16,
  fcFilters: 256,
  fc6Kernel: 7,
  batchNorm: true,
  dropout: 0,
};

/** The VGG-16 encoder's options for FCN options: `baseFilters` of 64 is VGG-16's width. */
function encoderOptions(o: Fcn8sOptions): Vgg16Options {
  return { width: o.baseFilters / 64, batchNorm: o.batchNorm };
}

/** Receptive field (pixels) of the network described by `o`; see {@link fcn8s}. */
export function fcn8sReceptiveField(o: Fcn8sOptions): number {
  const pools = vgg16.reach(encoderOptions(o), 32);
  let r = reachConv(pools[4], o.fc6Kernel); // fc6; fc7 and the score layers are 1x1
  if (o.variant === '32s') r = reachTransposed(r, 64, 32);
  else {
    r = reachUnion(reachTransposed(r, 4, 2), pools[3]);
    if (o.variant === '16s') r = reachTransposed(r, 32, 16);
    else r = reachTransposed(reachUnion(reachTransposed(r, 4, 2), pools[2]), 16, 8);
  }
  return receptiveFieldOfReach(r);
}

/**
 * Kernel `[k, k, c, c]` of a transposed convolution that upsamples each of `c` channels bilinearly by `factor`
 * (FCN's initialisation; with 'same' padding and `k = 2 * factor` it is exact half-pixel bilinear interpolation).
 */
function bilinearKernel(k: number, channels: number): tf.Tensor4D {
  const factor = Math.floor((k + 1) / 2);
  const centre = k % 2 === 1 ? factor - 1 : factor - 0.5;
  const f = (t: number) => 1 - Math.abs(t - centre) / factor;
  const data = new Float32Array(k * k * channels * channels);
  for (let y = 0; y < k; y++)
    for (let x = 0; x < k; x++)
      for (let c = 0; c < channels; c++) data[((y * k + x) * channels + c) * channels + c] = f(y) * f(x);
  return tf.tensor4d(data, [k, k, channels, channels]);
}

/**
 * FCN-8s (Long, Shelhamer and Darrell, CVPR 2015): a VGG-16 encoder (five blocks of 2, 2, 3, 3, 3 3x3
 * convolutions, each followed by 2x2 max-pooling), fc6 (`fc6Kernel` x `fc6Kernel`) and fc7 (1x1) as
 * convolutions, 1x1 class scores at 1/32 (after fc7), 1/16 (pool4) and 1/8 (pool3), the coarse scores upsampled
 * 2x by learned 4x4/2 transposed convolutions and added to the finer ones, and a final 16x16/8 transposed
 * convolution to the input size (`'16s'`: 32x32/16 from 1/16, `'32s'`: 64x64/32 from 1/32), then a softmax.
 * Every upsampling kernel starts as bilinear interpolation and is learned, as in the paper. Score layers start
 * Glorot-uniform (the paper zero-initialises them on top of a pretrained VGG-16; from scratch, zero scores would make
 * the untrained output independent of the input). 'Same' padding replaces the paper's 100-pixel padding and crops, so the output has the input's size.
 *
 * Input `[batch, height, width, inputChannels]` with height and width multiples of 32; output
 * `[batch, height, width, numClasses]` probabilities. The receptive field is {@link fcn8sReceptiveField}.
 *
 * @param options overrides of {@link FCN8S_DEFAULTS}.
 * @example
 * ```ts
 * const registry = new ArchitectureRegistry().register(fcn8s({ variant: '16s' }));
 * ```
 */
export default function fcn8s(options: Partial<Fcn8sOptions> = {}): ArchitecturePlugin<Fcn8sOptions> {
  return defineArchitecture<Fcn8sOptions>({
    name: 'fcn8s',
    version: '0.1.0',
    apiVersion: ARCHITECTURE_API_VERSION,
    description: 'FCN-8s (Long et al. 2015): VGG-16 fully convolutional network with pool3/pool4 skips',
    defaults: { ...FCN8S_DEFAULTS, ...options },
    optionsSchema: {
      variant: { type: 'string', choices: ['8s', '16s', '32s'], description: 'skips: 8s (pool3+pool4), 16s, 32s' },
      baseFilters: { type: 'integer', min: 1, max: 1024, description: 'filters of the first VGG block (paper 64)' },
      fcFilters: { type: 'integer', min: 1, max: 8192, description: 'filters of fc6 and fc7 (paper 4096)' },
      fc6Kernel: { type: 'integer', choices: [1, 3, 5, 7], description: 'kernel side of fc6 at 1/32 (paper 7)' },
      batchNorm: { type: 'boolean', description: 'batch normalisation after each convolution (not in the paper)' },
      dropout: { type: 'number', min: 0, max: 0.95, description: 'dropout after fc6 and fc7 (paper 0.5)' },
    },
    inputMultiple: () => 32,
    receptiveField: fcn8sReceptiveField,
    encoder: () => ({ name: 'vgg16', layers: vgg16.layerPattern }),
    build({ inputChannels, numClasses, options: o, seed = 0 }) {
      const seeds = seedSequence(seed);
      type T = layers.SymbolicTensor;
      const convBlock = (x: T, filters: number, kernelSize: number, name: string) =>
        convBnAct(x, { filters, kernelSize, batchNorm: o.batchNorm, name, seeds });
      const score = (x: T, name: string) => classHead(x, numClasses, { name, seeds, softmax: false });
      const upsample = (x: T, factor: number, name: string) =>
        applyLayer(
          layers.layers.conv2dTranspose({
            filters: numClasses,
            kernelSize: 2 * factor,
            strides: factor,
            padding: 'same',
            useBias: false,
            kernelInitializer: 'zeros', // replaced by the bilinear kernel below
            name,
          }),
          x,
        );

      const input = layers.input({ shape: [null, null, inputChannels], name: 'image' });
      const pools = vgg16.build({ input, options: encoderOptions(o), outputStride: 32, seeds });
      let x = convBlock(pools[4], o.fcFilters, o.fc6Kernel, 'fc6');
      if (o.dropout > 0) x = applyLayer(layers.layers.dropout({ rate: o.dropout, name: 'fc6_dropout' }), x);
      x = convBlock(x, o.fcFilters, 1, 'fc7');
      if (o.dropout > 0) x = applyLayer(layers.layers.dropout({ rate: o.dropout, name: 'fc7_dropout' }), x);
      x = score(x, 'score_fr');
      const upsamplers: [string, number][] = [];
      const up = (t: layers.SymbolicTensor, factor: number, name: string) => {
        upsamplers.push([name, factor]);
        return upsample(t, factor, name);
      };
      if (o.variant === '32s') {
        x = up(x, 32, 'upscore32');
      } else {
        x = up(x, 2, 'upscore2');
        x = applyLayer(layers.layers.add({ name: 'fuse_pool4' }), [x, score(pools[3], 'score_pool4')]);
        if (o.variant === '16s') {
          x = up(x, 16, 'upscore16');
        } else {
          x = up(x, 2, 'upscore_pool4');
          x = applyLayer(layers.layers.add({ name: 'fuse_pool3' }), [x, score(pools[2], 'score_pool3')]);
          x = up(x, 8, 'upscore8');
        }
      }
      const output = applyLayer(layers.layers.softmax({ axis: -1, name: 'probabilities' }), x);
      const model = layers.model({ inputs: input, outputs: output, name: `fcn${o.variant}` });
      for (const [name, factor] of upsamplers) {
        const kernel = bilinearKernel(2 * factor, numClasses);
        model.getLayer(name).setWeights([kernel]);
        kernel.dispose();
      }
      return model;
    },
  });
}

export { fcn8s };
