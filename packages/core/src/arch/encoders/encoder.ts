/**
 * Encoders: the feature-extracting half of a segmentation network as a part any decoder can use (smp's encoder +
 * decoder + head). An encoder is a plain object, like an architecture plugin: it builds its layers on a symbolic input
 * and returns feature maps at strides 2, 4, 8, 16 and 32, names every layer it makes by one pattern (so that freezing
 * and transfer can find them), declares the custom layer classes and ONNX converters it needs, and walks its own
 * receptive field. {@link encoders} holds the built-in VGG-16, MobileNetV2 and ResNet-50; an architecture plugin that
 * brings another declares it in its `encoders`, and core registers it with the plugin.
 */
import type * as tfl from '@tensorflow/tfjs-layers';
import { PluginError, describeValue, unknownName } from '../../errors.js';
import type { LayerClass, OptionSpec } from '../architecture.js';
import type { OnnxLayerConverter } from '../onnx-converter.js';
import type { Reach } from '../reach.js';

/** What an encoder's `build()` receives. */
export interface EncoderBuildSpec<O> {
  /** The symbolic input (or the output of layers before the encoder), `[batch, height, width, channels]`. */
  input: tfl.SymbolicTensor;
  /** Resolved options. */
  options: O;
  /** 32, or one of the encoder's `outputStrides`: strides past it become dilation (atrous convolution). */
  outputStride: number;
  /** The network's seed sequence (see `seedSequence`): the encoder takes one seed per initialiser, in build order. */
  seeds: { next: () => number };
}

/** An encoder: see the module comment. Make one with {@link defineEncoder}. */
export interface EncoderPlugin<O extends object = Record<string, unknown>> {
  /** Registry name, lower-case, e.g. `resnet50`. */
  readonly name: string;
  /** One line saying what the encoder is, with its reference. */
  readonly description: string;
  readonly defaults: O;
  readonly optionsSchema: { readonly [K in keyof O]: OptionSpec };
  /** Output strides it can be built at: `[32]`, or `[8, 16, 32]` for encoders that dilate their last stages (32 always). */
  readonly outputStrides: readonly number[];
  /** Every layer `build()` makes has a name matching this (and no layer of a decoder or head should). */
  readonly layerPattern: RegExp;
  /** Custom layer classes its layers use (registered by core wherever a model is built or loaded). */
  readonly layers?: readonly LayerClass[];
  /** ONNX converters of those classes, by class name. */
  readonly onnxConverters?: Readonly<Record<string, OnnxLayerConverter>>;
  /**
   * Builds the encoder on `spec.input` and returns its 5 feature maps, fine to coarse, at strides 2, 4, 8, 16 and 32
   * (strides past `outputStride` stay at it).
   */
  build(spec: EncoderBuildSpec<O>): tfl.SymbolicTensor[];
  /** The reach of each feature map `build()` returns (see `reach.ts`), for the network's receptive field. */
  reach(options: O, outputStride: number): Reach[];
}

/** Identity helper that gives encoder authors types at no runtime cost. */
export function defineEncoder<O extends object>(encoder: EncoderPlugin<O>): EncoderPlugin<O> {
  return encoder;
}

/** Strides of an encoder's feature maps at an output stride. */
export function featureStrides(outputStride: number): number[] {
  return [2, 4, 8, 16, 32].map((s) => Math.min(s, outputStride));
}

/** One block of a backbone, as {@link stageBlocks} plans it. */
export interface PlannedBlock {
  /** Index of its stage. */
  stage: number;
  /** Stride of its strided convolution (1 once the output stride is reached). */
  stride: number;
  /** Dilation rate of its spatial convolution. */
  rate: number;
  /** The stage's first block (the one that downsamples, and where a projection shortcut goes). */
  first: boolean;
  /** The stage's last block (where a feature map is taken). */
  last: boolean;
}

/**
 * The blocks of a backbone's stages at an output stride: each stage's first block downsamples by the stage's `stride`
 * until the output stride is reached (the stem brings `stemStride`); past it, strides become dilation rates, and a
 * stage's first block keeps the previous rate while the blocks after it use the multiplied one (DeepLab's rule).
 * @example
 * stageBlocks([{ blocks: 3, stride: 1 }, { blocks: 4, stride: 2 }], 16, 4); // 7 blocks, the 5th of stride 2
 */
export function stageBlocks(
  stages: readonly { blocks: number; stride: number }[],
  outputStride: number,
  stemStride: number,
): PlannedBlock[] {
  let stride = stemStride;
  let rate = 1;
  const planned: PlannedBlock[] = [];
  stages.forEach(({ blocks, stride: s }, stage) => {
    for (let j = 0; j < blocks; j++) {
      const first = j === 0;
      let blockStride = 1;
      const blockRate = rate;
      if (first && s > 1) {
        if (stride * s > outputStride) rate *= s;
        else {
          stride *= s;
          blockStride = s;
        }
      }
      planned.push({ stage, stride: blockStride, rate: blockRate, first, last: j === blocks - 1 });
    }
  });
  return planned;
}

/** Encoders by name. {@link encoders} is the one core and the built-in architectures use. */
export class EncoderRegistry {
  private readonly byName = new Map<string, EncoderPlugin<any>>();

  /**
   * Adds an encoder; adding the same object again does nothing.
   * @throws PluginError for an encoder without a valid name, `build`, `reach` or `layerPattern`, or with the name of
   * another encoder.
   */
  register(encoder: EncoderPlugin<any>, source = 'an architecture plugin'): this {
    const e = encoder as Partial<EncoderPlugin<object>> | null;
    if (e === null || typeof e !== 'object' || typeof e.name !== 'string' || !/^[a-z][a-z0-9-]*$/.test(e.name)) {
      throw new PluginError(
        `Expected an encoder with a lower-case name from ${source} but received ${describeValue(e?.name ?? e)}.`,
      );
    }
    if (
      typeof e.build !== 'function' ||
      typeof e.reach !== 'function' ||
      !(e.layerPattern instanceof RegExp) ||
      !e.outputStrides?.includes(32)
    ) {
      throw new PluginError(
        `Encoder "${e.name}" from ${source} needs build(), reach(), a layerPattern RegExp and outputStrides that ` +
          'include 32 (every encoder runs undilated).',
      );
    }
    const existing = this.byName.get(e.name);
    if (existing === encoder) return this;
    if (existing) {
      throw new PluginError(
        `Encoder "${e.name}" from ${source} has the name of an encoder already registered.`,
        'Give the encoder a name of its own, e.g. prefixed with its package name.',
      );
    }
    this.byName.set(e.name, encoder);
    return this;
  }

  /** @throws UnknownNameError naming the encoder, the nearest registered name and all of them. */
  get(name: string): EncoderPlugin<any> {
    const encoder = this.byName.get(name);
    if (!encoder) {
      throw unknownName('encoder', name, this.names(), 'Install the architecture plugin that brings the encoder.');
    }
    return encoder;
  }

  names(): string[] {
    return [...this.byName.keys()];
  }

  list(): EncoderPlugin<any>[] {
    return [...this.byName.values()];
  }
}
