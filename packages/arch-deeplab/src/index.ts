import {
  ARCHITECTURE_API_VERSION,
  AtrousConv2D,
  InvalidOptionError,
  applyLayer,
  atrousOnnxConverter,
  classHead,
  convBnAct,
  defineArchitecture,
  encoders,
  layers,
  reachConv,
  reachUnion,
  reachUpsample,
  receptiveFieldOfReach,
  registerPluginLayers,
  seedSequence,
  type ArchitecturePlugin,
  type EncoderPlugin,
} from '@tessera/core';

export { AtrousConv2D, atrousOnnxConverter, type AtrousConv2DArgs } from '@tessera/core';

/**
 * Registers the layer class of DeepLabv3+ models (core's `TesseraAtrousConv2D`) with tfjs's serialisation, for
 * `loadModel` without any registry. Registering the plugin (`ArchitectureRegistry.register`) does this. Idempotent.
 */
export function registerDeeplabLayers(): void {
  registerPluginLayers(deeplabv3plus());
}

/** Backbones of {@link deeplabv3plus}: the registered encoders that dilate (output stride 8 and 16). */
export type DeeplabBackbone = 'mobilenetv2' | 'resnet50' | (string & {});

/** Options of {@link deeplabv3plus}. */
export interface DeeplabOptions {
  /**
   * An encoder of core's `encoders` that can run at output stride 8 and 16: `'mobilenetv2'` (inverted residuals,
   * light; the default), `'resnet50'` (bottleneck blocks [3, 4, 6, 3]) or one an installed plugin brings.
   */
  backbone: DeeplabBackbone;
  /** Ratio of input size to the encoder's output size: 16 (default) or 8. Strides beyond it become atrous rates. */
  outputStride: number;
  /** MobileNetV2 width multiplier (1 in the paper). Default 0.5. */
  widthMultiplier: number;
  /** ResNet base width: the stem's filters; bottleneck widths are 1x, 2x, 4x, 8x it (64 = ResNet-50). Default 16. */
  resnetWidth: number;
  /** Filters of every ASPP branch and of the decoder's 3x3 convolutions (256 in the paper). Default 64. */
  asppFilters: number;
  /** Filters of the decoder's 1x1 projection of the 1/4-resolution features (48 in the paper). Default 24. */
  lowLevelFilters: number;
  /** Multiplies the ASPP atrous rates 6, 12, 18 (which double at output stride 8). Default 1. */
  rateScale: number;
  /** The ASPP image-level branch (global average pooling). Default true. */
  imagePooling: boolean;
}

/** Defaults of {@link deeplabv3plus}: a CPU-sized MobileNetV2 network at output stride 16. */
export const DEEPLAB_DEFAULTS: DeeplabOptions = {
  backbone: 'mobilenetv2',
  outputStride: 16,
  widthMultiplier: 0.5,
  resnetWidth: 16,
  asppFilters: 64,
  lowLevelFilters: 24,
  rateScale: 1,
  imagePooling: true,
};

/** The backbone and its options: the width options apply to the built-in encoders, others get their defaults. */
function backbone(o: DeeplabOptions): { encoder: EncoderPlugin<any>; options: object } {
  const encoder = encoders.get(o.backbone);
  if (o.backbone === 'mobilenetv2') return { encoder, options: { width: o.widthMultiplier } };
  if (o.backbone === 'resnet50') return { encoder, options: { width: o.resnetWidth / 64 } };
  return { encoder, options: encoder.defaults };
}

/** The ASPP atrous rates: 6, 12, 18 at output stride 16, doubled at 8, times `rateScale` (at least 1). */
export function asppRates(o: DeeplabOptions): number[] {
  return [6, 12, 18].map((r) => Math.max(1, Math.round((r * o.rateScale * 16) / o.outputStride)));
}

/** Receptive field (pixels) of the network described by `o`, not counting the image-level pooling branch. */
export function deeplabReceptiveField(o: DeeplabOptions): number {
  const { encoder, options } = backbone(o);
  const features = encoder.reach(options, o.outputStride);
  // ASPP: the widest atrous branch covers the others (the 1x1 branch reaches nothing more).
  let r = reachConv(features[4], 3, 1, Math.max(...asppRates(o)));
  r = reachUnion(reachUpsample(r, o.outputStride / 4), features[1]);
  r = reachConv(reachConv(r, 3), 3);
  r = reachUpsample(r, 4);
  return receptiveFieldOfReach(r);
}

/**
 * DeepLabv3+ (Chen, Zhu, Papandreou, Schroff and Adam, ECCV 2018): an encoder with atrous convolution at output
 * stride 16 (or 8), atrous spatial pyramid pooling (a 1x1 branch, three 3x3 atrous branches at rates 6, 12, 18
 * (doubled at output stride 8) and an image-level branch: global average pooling, 1x1 convolution, broadcast back
 * to the feature map), a 1x1 projection, and a decoder that upsamples the ASPP output bilinearly to 1/4 resolution,
 * concatenates it with a 1x1 (48-channel in the paper) projection of the backbone's 1/4-resolution features, applies
 * two 3x3 convolutions, a 1x1 classifier and a 4x bilinear upsampling to the input size, then a softmax.
 *
 * Backbones come from core's `encoders`: MobileNetV2 (Sandler et al. 2018; inverted residual blocks with depthwise
 * 3x3 convolutions and a width multiplier, without its final 1280-channel layer), ResNet-50 (He et al. 2016;
 * bottleneck blocks [3, 4, 6, 3], stride on the 3x3, base width `resnetWidth`), or any encoder registered before the
 * factory is called that runs at output stride 8 and 16. Strides that would pass the output stride become atrous
 * rates (the stage's first block keeps the previous rate). Every convolution is followed by batch normalisation and
 * ReLU (ReLU6 in MobileNetV2); the image-level branch uses a bias instead of batch normalisation, so it behaves
 * the same with batches of one.
 *
 * Dilated convolutions use core's {@link AtrousConv2D} layer (class `TesseraAtrousConv2D`), declared in the plugin's
 * `layers`: core registers it wherever a model is loaded. The plugin's `encoder()` names the backbone's layers.
 *
 * Input `[batch, height, width, inputChannels]` with height and width multiples of `outputStride`; output
 * `[batch, height, width, numClasses]` probabilities. The declared receptive field
 * ({@link deeplabReceptiveField}) excludes the image-level branch, which sees the whole input.
 *
 * @param options overrides of {@link DEEPLAB_DEFAULTS}.
 * @example
 * ```ts
 * const registry = new ArchitectureRegistry().register(deeplabv3plus({ backbone: 'resnet50', resnetWidth: 64 }));
 * ```
 */
export default function deeplabv3plus(options: Partial<DeeplabOptions> = {}): ArchitecturePlugin<DeeplabOptions> {
  const backbones = encoders
    .list()
    .filter((e) => e.outputStrides.includes(8) && e.outputStrides.includes(16))
    .map((e) => e.name);
  return defineArchitecture<DeeplabOptions>({
    name: 'deeplabv3plus',
    version: '0.1.0',
    apiVersion: ARCHITECTURE_API_VERSION,
    description: 'DeepLabv3+ (Chen et al. 2018): atrous encoder, ASPP and a 1/4-resolution decoder',
    defaults: { ...DEEPLAB_DEFAULTS, ...options },
    optionsSchema: {
      backbone: { type: 'string', choices: backbones, description: "encoder network (core's encoders)" },
      outputStride: { type: 'integer', choices: [8, 16], description: 'input size / encoder output size' },
      widthMultiplier: { type: 'number', min: 0.1, max: 2, description: 'MobileNetV2 width multiplier (paper 1)' },
      resnetWidth: { type: 'integer', min: 1, max: 256, description: 'ResNet stem width (64 = ResNet-50)' },
      asppFilters: { type: 'integer', min: 1, max: 2048, description: 'ASPP and decoder filters (paper 256)' },
      lowLevelFilters: { type: 'integer', min: 1, max: 1024, description: 'decoder low-level projection (paper 48)' },
      rateScale: { type: 'number', min: 0.05, max: 4, description: 'scale of the ASPP rates 6, 12, 18' },
      imagePooling: { type: 'boolean', description: 'ASPP image-level (global average pooling) branch' },
    },
    inputMultiple: (o) => o.outputStride,
    receptiveField: deeplabReceptiveField,
    onnxConverters: { [AtrousConv2D.className]: atrousOnnxConverter },
    layers: [AtrousConv2D],
    encoder: (o) => ({ name: o.backbone, layers: encoders.get(o.backbone).layerPattern }),
    build({ inputChannels, numClasses, options: o, seed = 0 }) {
      if (o.outputStride !== 8 && o.outputStride !== 16) {
        throw new InvalidOptionError(
          `Expected 8 or 16 for option "outputStride" of architecture "deeplabv3plus" but received ${o.outputStride}.`,
        );
      }
      const seeds = seedSequence(seed);
      type T = layers.SymbolicTensor;
      const channels = (x: T) => x.shape[3] as number;
      /** Convolution (atrous when rate > 1) + batch norm + ReLU. */
      const conv = (x: T, filters: number, kernelSize: number, name: string, rate = 1) =>
        convBnAct(x, { filters, kernelSize, rate, name, seeds });

      const input = layers.input({ shape: [null, null, inputChannels], name: 'image' });
      const { encoder, options: encoderOptions } = backbone(o);
      const features = encoder.build({ input, options: encoderOptions, outputStride: o.outputStride, seeds });
      const x = features[4];
      const low = features[1];

      // ASPP
      const branches: T[] = [conv(x, o.asppFilters, 1, 'aspp_1x1')];
      asppRates(o).forEach((rate, i) => branches.push(conv(x, o.asppFilters, 3, `aspp_rate${i + 1}`, rate)));
      if (o.imagePooling) {
        let pooled = applyLayer(layers.layers.globalAveragePooling2d({ name: 'aspp_pool' }), x);
        pooled = applyLayer(
          layers.layers.reshape({ targetShape: [1, 1, channels(x)], name: 'aspp_pool_reshape' }),
          pooled,
        );
        pooled = applyLayer(
          layers.layers.conv2d({
            filters: o.asppFilters,
            kernelSize: 1,
            activation: 'relu',
            kernelInitializer: layers.initializers.heNormal({ seed: seeds.next() }),
            name: 'aspp_pool_conv',
          }),
          pooled,
        );
        // Broadcast [b, 1, 1, f] to the feature map's [b, h, w, f] for any h, w: multiply by a constant
        // [b, h, w, 1] map of ones (a frozen 1x1 convolution with zero kernel and unit bias).
        const ones = applyLayer(
          layers.layers.conv2d({
            filters: 1,
            kernelSize: 1,
            kernelInitializer: 'zeros',
            biasInitializer: 'ones',
            trainable: false,
            name: 'aspp_pool_ones',
          }),
          x,
        );
        branches.push(applyLayer(layers.layers.multiply({ name: 'aspp_pool_broadcast' }), [ones, pooled]));
      }
      let aspp = applyLayer(layers.layers.concatenate({ axis: -1, name: 'aspp_concat' }), branches);
      aspp = conv(aspp, o.asppFilters, 1, 'aspp_project');

      // Decoder
      const up = o.outputStride / 4;
      aspp = applyLayer(
        layers.layers.upSampling2d({ size: [up, up], interpolation: 'bilinear', name: 'decoder_upsample' }),
        aspp,
      );
      const lowProjected = conv(low, o.lowLevelFilters, 1, 'decoder_low_level');
      let y = applyLayer(layers.layers.concatenate({ axis: -1, name: 'decoder_concat' }), [aspp, lowProjected]);
      y = conv(y, o.asppFilters, 3, 'decoder_conv1');
      y = conv(y, o.asppFilters, 3, 'decoder_conv2');
      y = classHead(y, numClasses, { name: 'classifier', seeds, softmax: false });
      y = applyLayer(layers.layers.upSampling2d({ size: [4, 4], interpolation: 'bilinear', name: 'upsample' }), y);
      const output = applyLayer(layers.layers.softmax({ axis: -1, name: 'probabilities' }), y);
      return layers.model({ inputs: input, outputs: output, name: `deeplabv3plus_${o.backbone}` });
    },
  });
}

export { deeplabv3plus };
