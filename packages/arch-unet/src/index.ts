import {
  ARCHITECTURE_API_VERSION,
  batchNormalization,
  defineArchitecture,
  layers,
  type ArchitecturePlugin,
} from '@tessera/core';

/** Options of {@link unet}. */
export interface UnetOptions {
  /** Number of down-sampling levels (max-pool steps). Default 4, as in the paper. */
  depth: number;
  /** Filters of the first level; doubled at each level down. Default 32 (64 in the paper). */
  baseFilters: number;
  /** Batch normalisation after every 3x3 convolution. Default true. */
  batchNorm: boolean;
  /** Dropout rate at the bottleneck (the paper uses 0.5). Default 0. */
  dropout: number;
}

/** Defaults of {@link unet}. */
export const UNET_DEFAULTS: UnetOptions = { depth: 4, baseFilters: 32, batchNorm: true, dropout: 0 };

/**
 * U-Net (Ronneberger, Fischer and Brox, MICCAI 2015): a symmetric encoder/decoder with two 3x3
 * convolutions per level, 2x2 max-pooling, 2x2 up-convolutions, skip connections by concatenation
 * and a 1x1 softmax head. Convolutions use 'same' padding, so the output has the input's size.
 *
 * Input `[batch, height, width, inputChannels]` with height and width multiples of `2 ** depth`;
 * output `[batch, height, width, numClasses]` probabilities.
 *
 * @param options overrides of {@link UNET_DEFAULTS}.
 * @example
 * ```ts
 * const registry = new ArchitectureRegistry().register(unet({ baseFilters: 16 }));
 * ```
 */
export default function unet(options: Partial<UnetOptions> = {}): ArchitecturePlugin<UnetOptions> {
  return defineArchitecture<UnetOptions>({
    name: 'unet',
    version: '0.1.0',
    apiVersion: ARCHITECTURE_API_VERSION,
    description: 'U-Net (Ronneberger et al. 2015): encoder/decoder with skip connections',
    defaults: { ...UNET_DEFAULTS, ...options },
    // Half the filters: a quarter of the work per step, for time budgets that hold too few steps of the default.
    smallOptions: { baseFilters: Math.max(1, Math.floor((options.baseFilters ?? UNET_DEFAULTS.baseFilters) / 2)) },
    optionsSchema: {
      depth: { type: 'integer', min: 1, max: 7, description: 'down-sampling levels (max-pool steps)' },
      baseFilters: { type: 'integer', min: 1, max: 1024, description: 'filters of the first level, doubled per level' },
      batchNorm: { type: 'boolean', description: 'batch normalisation after each 3x3 convolution' },
      dropout: { type: 'number', min: 0, max: 0.95, description: 'dropout rate at the bottleneck' },
    },
    inputMultiple: (o) => 2 ** o.depth,
    // Half-width reached on each side: 3x3 convs reach 1 step each, a 2x2 pool up to 1 step, and
    // 2x2/2 up-convolutions none; steps double per level. (2 * half + 1 = 14 * 2^depth - 9.)
    receptiveField: (o) => 14 * 2 ** o.depth - 9,
    build({ inputChannels, numClasses, options: o, seed = 0 }) {
      let layerSeed = seed * 1000;
      const init = () => layers.initializers.heNormal({ seed: ++layerSeed });
      const convBlock = (x: layers.SymbolicTensor, filters: number, name: string): layers.SymbolicTensor => {
        for (let k = 1; k <= 2; k++) {
          x = layers.layers
            .conv2d({
              filters,
              kernelSize: 3,
              padding: 'same',
              activation: o.batchNorm ? 'linear' : 'relu',
              useBias: !o.batchNorm,
              kernelInitializer: init(),
              name: `${name}_conv${k}`,
            })
            .apply(x) as layers.SymbolicTensor;
          if (o.batchNorm) {
            // Momentum 0.9 (PyTorch's 0.1): moving statistics that keep up with short CPU trainings.
            x = batchNormalization({ momentum: 0.9, name: `${name}_bn${k}` }).apply(x) as layers.SymbolicTensor;
            x = layers.layers.reLU({ name: `${name}_relu${k}` }).apply(x) as layers.SymbolicTensor;
          }
        }
        return x;
      };
      const input = layers.input({ shape: [null, null, inputChannels], name: 'image' });
      let x: layers.SymbolicTensor = input;
      const skips: layers.SymbolicTensor[] = [];
      for (let level = 0; level < o.depth; level++) {
        x = convBlock(x, o.baseFilters * 2 ** level, `enc${level}`);
        skips.push(x);
        x = layers.layers
          .maxPooling2d({ poolSize: 2, strides: 2, name: `pool${level}` })
          .apply(x) as layers.SymbolicTensor;
      }
      x = convBlock(x, o.baseFilters * 2 ** o.depth, 'bottleneck');
      if (o.dropout > 0)
        x = layers.layers.dropout({ rate: o.dropout, name: 'bottleneck_dropout' }).apply(x) as layers.SymbolicTensor;
      for (let level = o.depth - 1; level >= 0; level--) {
        const filters = o.baseFilters * 2 ** level;
        x = layers.layers
          .conv2dTranspose({
            filters,
            kernelSize: 2,
            strides: 2,
            padding: 'same',
            kernelInitializer: init(),
            name: `up${level}`,
          })
          .apply(x) as layers.SymbolicTensor;
        x = layers.layers
          .concatenate({ axis: -1, name: `skip${level}` })
          .apply([skips[level], x]) as layers.SymbolicTensor;
        x = convBlock(x, filters, `dec${level}`);
      }
      const output = layers.layers
        .conv2d({
          filters: numClasses,
          kernelSize: 1,
          activation: 'softmax',
          kernelInitializer: layers.initializers.glorotUniform({ seed: ++layerSeed }),
          name: 'probabilities',
        })
        .apply(x) as layers.SymbolicTensor;
      return layers.model({ inputs: input, outputs: output, name: 'unet' });
    },
  });
}

export { unet };
