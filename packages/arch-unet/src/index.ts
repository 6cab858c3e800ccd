import {
  ARCHITECTURE_API_VERSION,
  applyLayer,
  classHead,
  convBnAct,
  defineArchitecture,
  encoders,
  layers,
  reachConv,
  reachTransposed,
  reachUnion,
  receptiveFieldOfReach,
  seedSequence,
  type ArchitecturePlugin,
  type EncoderPlugin,
  type Reach,
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
  /**
   * `'unet'`: the paper's contracting path (the default), or an encoder of core's `encoders` (`vgg16`, `mobilenetv2`,
   * `resnet50`, or one an installed plugin brings) whose features at strides 2 to 32 feed the decoder (smp's U-Net).
   */
  encoder: string;
  /** Width of an `encoder` from the registry relative to its published one (1: VGG-16's 64, ResNet-50's 64 filters). */
  encoderWidth: number;
}

/** Defaults of {@link unet}. */
export const UNET_DEFAULTS: UnetOptions = {
  depth: 4,
  baseFilters: 32,
  batchNorm: true,
  dropout: 0,
  encoder: 'unet',
  encoderWidth: 1,
};

/** Names of the layers of the paper's contracting path (and bottleneck): what `encoder()` names for `'unet'`. */
const UNET_ENCODER_LAYERS = /^(enc\d+_|pool\d+$|bottleneck_)/;

/** The registry encoder of `o`, or null for the paper's own (every registered encoder runs at output stride 32). */
function registryEncoder(o: UnetOptions): EncoderPlugin<any> | null {
  return o.encoder === 'unet' ? null : encoders.get(o.encoder);
}

/** The options of a registry encoder: its defaults, with the width and batch norm asked for where it has them. */
function encoderOptions(encoder: EncoderPlugin<any>, o: UnetOptions): object {
  const schema = encoder.optionsSchema as Record<string, unknown>;
  return {
    ...encoder.defaults,
    ...('width' in schema ? { width: o.encoderWidth } : {}),
    ...('batchNorm' in schema ? { batchNorm: o.batchNorm } : {}),
  };
}

/** Receptive field of the network described by `o` (see {@link unet}). */
export function unetReceptiveField(o: UnetOptions): number {
  const encoder = registryEncoder(o);
  // Half-width reached on each side: 3x3 convs reach 1 step each, a 2x2 pool up to 1 step, and
  // 2x2/2 up-convolutions none; steps double per level. (2 * half + 1 = 14 * 2^depth - 9.)
  if (!encoder) return 14 * 2 ** o.depth - 9;
  const features = encoder.reach(encoderOptions(encoder, o), 32);
  const block = (r: Reach) => reachConv(reachConv(r, 3), 3);
  let r = features[4];
  for (let level = 3; level >= 0; level--) r = block(reachUnion(reachTransposed(r, 2, 2), features[level]));
  return receptiveFieldOfReach(block(reachTransposed(r, 2, 2)));
}

/**
 * U-Net (Ronneberger, Fischer and Brox, MICCAI 2015): a symmetric encoder/decoder with two 3x3
 * convolutions per level, 2x2 max-pooling, 2x2 up-convolutions, skip connections by concatenation
 * and a 1x1 softmax head. Convolutions use 'same' padding, so the output has the input's size.
 *
 * With `encoder` set to one of core's `encoders` (e.g. `resnet50`), the contracting path is that encoder and the
 * decoder takes its features at strides 16, 8, 4 and 2 as skips, then up-convolves once more to the input's size
 * (segmentation_models.pytorch's U-Net); `encoder()` names the encoder's layers either way.
 *
 * Input `[batch, height, width, inputChannels]` with height and width multiples of `2 ** depth` (32 with a registry
 * encoder); output `[batch, height, width, numClasses]` probabilities.
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
      encoder: {
        type: 'string',
        choices: ['unet', ...encoders.names()],
        description: "the paper's contracting path, or an encoder of core's registry (depth is then 5)",
      },
      encoderWidth: { type: 'number', min: 0.01, max: 4, description: 'width of a registered encoder (1 = published)' },
    },
    inputMultiple: (o) => (registryEncoder(o) ? 32 : 2 ** o.depth),
    receptiveField: unetReceptiveField,
    encoder: (o) => {
      const encoder = registryEncoder(o);
      return encoder
        ? { name: encoder.name, layers: encoder.layerPattern }
        : { name: 'unet', layers: UNET_ENCODER_LAYERS };
    },
    // The registry encoders' custom layers (none at output stride 32, but declared: everything the plugin may bring).
    layers: [...new Set(encoders.list().flatMap((e) => e.layers ?? []))],
    onnxConverters: Object.assign({}, ...encoders.list().map((e) => e.onnxConverters ?? {})),
    build({ inputChannels, numClasses, options: o, seed = 0 }) {
      const seeds = seedSequence(seed);
      type T = layers.SymbolicTensor;
      const convBlock = (x: T, filters: number, name: string): T => {
        for (let k = 1; k <= 2; k++) {
          x = convBnAct(x, {
            filters,
            kernelSize: 3,
            batchNorm: o.batchNorm,
            name: `${name}_conv${k}`,
            names: { bn: `${name}_bn${k}`, act: `${name}_relu${k}` },
            seeds,
          });
        }
        return x;
      };
      const upBlock = (x: T, skip: T | null, filters: number, level: number): T => {
        x = applyLayer(
          layers.layers.conv2dTranspose({
            filters,
            kernelSize: 2,
            strides: 2,
            padding: 'same',
            kernelInitializer: layers.initializers.heNormal({ seed: seeds.next() }),
            name: `up${level}`,
          }),
          x,
        );
        if (skip) x = applyLayer(layers.layers.concatenate({ axis: -1, name: `skip${level}` }), [skip, x]);
        return convBlock(x, filters, `dec${level}`);
      };
      const input = layers.input({ shape: [null, null, inputChannels], name: 'image' });
      const encoder = registryEncoder(o);
      let x: T;
      if (encoder) {
        // smp's U-Net: the encoder's features at strides 2..32, decoder widths baseFilters * stride / 2 (256, 128,
        // 64, 32, 16 at the default 32), and a last up-convolution to the input's size without a skip.
        const features = encoder.build({ input, options: encoderOptions(encoder, o), outputStride: 32, seeds });
        x = features[4];
        if (o.dropout > 0) {
          x = applyLayer(layers.layers.dropout({ rate: o.dropout, name: 'bottleneck_dropout' }), x);
        }
        for (let level = 3; level >= 0; level--) {
          x = upBlock(x, features[level], Math.max(1, o.baseFilters * 2 ** level), level + 1);
        }
        x = upBlock(x, null, Math.max(1, Math.floor(o.baseFilters / 2)), 0);
      } else {
        x = input;
        const skips: T[] = [];
        for (let level = 0; level < o.depth; level++) {
          x = convBlock(x, o.baseFilters * 2 ** level, `enc${level}`);
          skips.push(x);
          x = applyLayer(layers.layers.maxPooling2d({ poolSize: 2, strides: 2, name: `pool${level}` }), x);
        }
        x = convBlock(x, o.baseFilters * 2 ** o.depth, 'bottleneck');
        if (o.dropout > 0) {
          x = applyLayer(layers.layers.dropout({ rate: o.dropout, name: 'bottleneck_dropout' }), x);
        }
        for (let level = o.depth - 1; level >= 0; level--) {
          x = upBlock(x, skips[level], o.baseFilters * 2 ** level, level);
        }
      }
      const output = classHead(x, numClasses, { name: 'probabilities', seeds });
      return layers.model({ inputs: input, outputs: output, name: 'unet' });
    },
  });
}

export { unet };
