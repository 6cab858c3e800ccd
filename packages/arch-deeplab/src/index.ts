import {
  ARCHITECTURE_API_VERSION,
  batchNormalization,
  InvalidOptionError,
  defineArchitecture,
  layers,
  type ArchitecturePlugin,
} from '@tessera/core';
import { AtrousConv2D, atrousOnnxConverter } from './atrous.js';

export { AtrousConv2D, atrousOnnxConverter, registerDeeplabLayers, type AtrousConv2DArgs } from './atrous.js';

/** Backbones of {@link deeplabv3plus}. */
export type DeeplabBackbone = 'mobilenetv2' | 'resnet50';

/** Options of {@link deeplabv3plus}. */
export interface DeeplabOptions {
  /** `'mobilenetv2'` (inverted residuals, light; the default) or `'resnet50'` (bottleneck blocks [3, 4, 6, 3]). */
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

/** MobileNetV2 inverted-residual stages: expansion t, output channels c, blocks n, first stride s. */
const MOBILENET_STAGES: readonly [number, number, number, number][] = [
  [1, 16, 1, 1],
  [6, 24, 2, 2],
  [6, 32, 3, 2],
  [6, 64, 4, 2],
  [6, 96, 3, 1],
  [6, 160, 3, 2],
  [6, 320, 1, 1],
];

/** ResNet-50 stages: bottleneck blocks and width factor. */
const RESNET_STAGES: readonly [number, number][] = [
  [3, 1],
  [4, 2],
  [6, 4],
  [3, 8],
];

/** Channels rounded to a multiple of 8, never more than 10% down (MobileNetV2's `_make_divisible`). */
function divisible(v: number): number {
  const r = Math.max(8, Math.floor((v + 4) / 8) * 8);
  return r < 0.9 * v ? r + 8 : r;
}

/** The ASPP atrous rates: 6, 12, 18 at output stride 16, doubled at 8, times `rateScale` (at least 1). */
export function asppRates(o: DeeplabOptions): number[] {
  return [6, 12, 18].map((r) => Math.max(1, Math.round((r * o.rateScale * 16) / o.outputStride)));
}

/**
 * Input interval of one feature pixel: pixel `i` of a map of stride `s` depends on input pixels
 * `[s*i - a, s*i + b]`. Used to derive the receptive field from the same plan the network is built from.
 */
interface Reach {
  s: number;
  a: number;
  b: number;
}

/** A 'same' conv/pool of kernel k, stride t (on even sizes tfjs pads `floor((k - t) / 2)` before) and rate r. */
function reachConv(p: Reach, k: number, t = 1, r = 1): Reach {
  if (t === 1) return { s: p.s, a: p.a + p.s * r * Math.floor((k - 1) / 2), b: p.b + p.s * r * Math.ceil((k - 1) / 2) };
  const before = Math.max(0, Math.floor((k - t) / 2));
  return { s: p.s * t, a: p.a + p.s * before, b: p.b + p.s * (k - 1 - before) };
}
/** Bilinear upsampling by f (no half-pixel centres): fine pixel o reads coarse pixels floor(o/f) and the next. */
function reachUpsample(p: Reach, f: number): Reach {
  const s = p.s / f;
  return { s, a: p.a + s * (f - 1), b: p.b + p.s };
}
const union = (p: Reach, q: Reach): Reach => ({ s: p.s, a: Math.max(p.a, q.a), b: Math.max(p.b, q.b) });

/** One step of a backbone plan: what the builder creates and the receptive-field walk follows. */
type Step =
  | { kind: 'conv'; k: number; stride: number; rate: number }
  | { kind: 'pool' }
  | { kind: 'mobile'; expand: number; out: number; stride: number; rate: number }
  | { kind: 'bottleneck'; mid: number; out: number; stride: number; rate: number; project: boolean }
  | { kind: 'lowLevel' };

/** The backbone as a list of steps, with strides beyond the output stride turned into atrous rates. */
function backbonePlan(o: DeeplabOptions): Step[] {
  const steps: Step[] = [];
  let stride = 2;
  let rate = 1;
  // A stage's first block keeps the previous rate; the following blocks use the multiplied rate.
  const next = (s: number): { stride: number; rate: number } => {
    if (s === 1) return { stride: 1, rate };
    if (stride * s > o.outputStride) {
      const first = { stride: 1, rate };
      rate *= s;
      return first;
    }
    stride *= s;
    return { stride: s, rate };
  };
  if (o.backbone === 'mobilenetv2') {
    steps.push({ kind: 'conv', k: 3, stride: 2, rate: 1 });
    MOBILENET_STAGES.forEach(([t, c, n, s], i) => {
      for (let j = 0; j < n; j++) {
        const { stride: st, rate: r } = j === 0 ? next(s) : { stride: 1, rate };
        steps.push({ kind: 'mobile', expand: t, out: divisible(c * o.widthMultiplier), stride: st, rate: r });
      }
      if (i === 1) steps.push({ kind: 'lowLevel' }); // end of the stride-4 stage
    });
  } else {
    steps.push({ kind: 'conv', k: 7, stride: 2, rate: 1 }, { kind: 'pool' });
    stride = 4;
    RESNET_STAGES.forEach(([n, f], i) => {
      for (let j = 0; j < n; j++) {
        const { stride: st, rate: r } = j === 0 ? next(i === 0 ? 1 : 2) : { stride: 1, rate };
        const mid = o.resnetWidth * f;
        steps.push({ kind: 'bottleneck', mid, out: 4 * mid, stride: st, rate: r, project: j === 0 });
      }
      if (i === 0) steps.push({ kind: 'lowLevel' });
    });
  }
  return steps;
}

/** Receptive field (pixels) of the network described by `o`, not counting the image-level pooling branch. */
export function deeplabReceptiveField(o: DeeplabOptions): number {
  let r: Reach = { s: 1, a: 0, b: 0 };
  let low = r;
  for (const step of backbonePlan(o)) {
    if (step.kind === 'conv') r = reachConv(r, step.k, step.stride, step.rate);
    else if (step.kind === 'pool') r = reachConv(r, 3, 2);
    else if (step.kind === 'lowLevel') low = r;
    else if (step.kind === 'mobile')
      r = reachConv(r, 3, step.stride, step.rate); // 1x1s add nothing
    else {
      // Bottleneck: the 3x3 carries stride and rate; the shortcut (identity or strided 1x1) reaches less.
      const main = reachConv(r, 3, step.stride, step.rate);
      r = union(main, reachConv(r, 1, step.stride));
    }
  }
  // ASPP: the widest atrous branch covers the others (the 1x1 branch reaches nothing more).
  r = reachConv(r, 3, 1, Math.max(...asppRates(o)));
  r = union(reachUpsample(r, o.outputStride / 4), low);
  r = reachConv(reachConv(r, 3), 3);
  r = reachUpsample(r, 4);
  return 2 * Math.max(r.a, r.b) + 1;
}

/**
 * DeepLabv3+ (Chen, Zhu, Papandreou, Schroff and Adam, ECCV 2018): an encoder with atrous convolution at output
 * stride 16 (or 8), atrous spatial pyramid pooling (a 1x1 branch, three 3x3 atrous branches at rates 6, 12, 18
 * (doubled at output stride 8) and an image-level branch: global average pooling, 1x1 convolution, broadcast back
 * to the feature map), a 1x1 projection, and a decoder that upsamples the ASPP output bilinearly to 1/4 resolution,
 * concatenates it with a 1x1 (48-channel in the paper) projection of the backbone's 1/4-resolution features, applies
 * two 3x3 convolutions, a 1x1 classifier and a 4x bilinear upsampling to the input size, then a softmax.
 *
 * Backbones: MobileNetV2 (Sandler et al. 2018; inverted residual blocks with depthwise 3x3 convolutions and a width
 * multiplier, without its final 1280-channel layer) or ResNet-50 (He et al. 2016; bottleneck blocks [3, 4, 6, 3],
 * stride on the 3x3, base width `resnetWidth`). Strides that would pass the output stride become atrous rates
 * (the stage's first block keeps the previous rate). Every convolution is followed by batch normalisation and
 * ReLU (ReLU6 in MobileNetV2); the image-level branch uses a bias instead of batch normalisation, so it behaves
 * the same with batches of one.
 *
 * Dilated convolutions use the {@link AtrousConv2D} layer (class `TesseraAtrousConv2D`), declared in the plugin's
 * `layers`: core registers it wherever a model is loaded.
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
  return defineArchitecture<DeeplabOptions>({
    name: 'deeplabv3plus',
    version: '0.1.0',
    apiVersion: ARCHITECTURE_API_VERSION,
    description: 'DeepLabv3+ (Chen et al. 2018): atrous encoder, ASPP and a 1/4-resolution decoder',
    defaults: { ...DEEPLAB_DEFAULTS, ...options },
    optionsSchema: {
      backbone: { type: 'string', choices: ['mobilenetv2', 'resnet50'], description: 'encoder network' },
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
    build({ inputChannels, numClasses, options: o, seed = 0 }) {
      if (o.outputStride !== 8 && o.outputStride !== 16) {
        throw new InvalidOptionError(
          `Expected 8 or 16 for option "outputStride" of architecture "deeplabv3plus" but received ${o.outputStride}.`,
        );
      }
      let layerSeed = seed * 1000;
      type T = layers.SymbolicTensor;
      const apply = (layer: layers.layers.Layer, x: T | T[]) => layer.apply(x as never) as T;
      const channels = (x: T) => x.shape[3] as number;
      let count = 0;
      const id = (prefix: string) => `${prefix}_${++count}`;
      /** Convolution (atrous when rate > 1) + batch norm + activation. */
      const conv = (
        x: T,
        filters: number,
        k: number,
        opts: {
          stride?: number;
          rate?: number;
          act?: 'relu' | 'relu6' | null;
          depthwise?: boolean;
          name?: string;
        } = {},
      ): T => {
        const { stride = 1, rate = 1, act = 'relu', depthwise = false } = opts;
        const name = opts.name ?? id(depthwise ? 'dwconv' : 'conv');
        if (rate > 1) {
          x = apply(
            new AtrousConv2D({
              filters,
              kernelSize: k,
              dilationRate: rate,
              depthwise,
              useBias: false,
              seed: ++layerSeed,
              name,
            }),
            x,
          );
        } else if (depthwise) {
          x = apply(
            layers.layers.depthwiseConv2d({
              kernelSize: k,
              strides: stride,
              padding: 'same',
              useBias: false,
              // He-normal over the 3x3 taps of one channel (tfjs counts fan-in as k*k*cin for depthwise kernels,
              // which would shrink activations by sqrt(cin) per block).
              depthwiseInitializer: layers.initializers.varianceScaling({
                scale: 2 * channels(x),
                mode: 'fanIn',
                distribution: 'normal',
                seed: ++layerSeed,
              }),
              name,
            }),
            x,
          );
        } else {
          x = apply(
            layers.layers.conv2d({
              filters,
              kernelSize: k,
              strides: stride,
              padding: 'same',
              useBias: false,
              kernelInitializer: layers.initializers.heNormal({ seed: ++layerSeed }),
              name,
            }),
            x,
          );
        }
        x = apply(batchNormalization({ momentum: 0.9, name: `${name}_bn` }), x);
        if (act === 'relu') x = apply(layers.layers.reLU({ name: `${name}_relu` }), x);
        if (act === 'relu6') x = apply(layers.layers.reLU({ maxValue: 6, name: `${name}_relu6` }), x);
        return x;
      };
      // Backbone
      const input = layers.input({ shape: [null, null, inputChannels], name: 'image' });
      let x: T = input;
      let low: T = input;
      for (const step of backbonePlan(o)) {
        if (step.kind === 'conv') {
          const filters = o.backbone === 'mobilenetv2' ? divisible(32 * o.widthMultiplier) : o.resnetWidth;
          x = conv(x, filters, step.k, {
            stride: step.stride,
            act: o.backbone === 'mobilenetv2' ? 'relu6' : 'relu',
            name: 'stem',
          });
        } else if (step.kind === 'pool') {
          x = apply(layers.layers.maxPooling2d({ poolSize: 3, strides: 2, padding: 'same', name: 'stem_pool' }), x);
        } else if (step.kind === 'lowLevel') {
          low = x;
        } else if (step.kind === 'mobile') {
          const cin = channels(x);
          const name = id('block');
          let y = x;
          if (step.expand !== 1) y = conv(y, cin * step.expand, 1, { act: 'relu6', name: `${name}_expand` });
          y = conv(y, 0, 3, {
            stride: step.stride,
            rate: step.rate,
            act: 'relu6',
            depthwise: true,
            name: `${name}_depthwise`,
          });
          y = conv(y, step.out, 1, { act: null, name: `${name}_project` });
          x = step.stride === 1 && cin === step.out ? apply(layers.layers.add({ name: `${name}_add` }), [x, y]) : y;
        } else {
          const name = id('bottleneck');
          let y = conv(x, step.mid, 1, { name: `${name}_reduce` });
          y = conv(y, step.mid, 3, { stride: step.stride, rate: step.rate, name: `${name}_conv3x3` });
          y = conv(y, step.out, 1, { act: null, name: `${name}_expand` });
          const shortcut = step.project
            ? conv(x, step.out, 1, { stride: step.stride, act: null, name: `${name}_shortcut` })
            : x;
          x = apply(layers.layers.add({ name: `${name}_add` }), [shortcut, y]);
          x = apply(layers.layers.reLU({ name: `${name}_out` }), x);
        }
      }

      // ASPP
      const branches: T[] = [conv(x, o.asppFilters, 1, { name: 'aspp_1x1' })];
      asppRates(o).forEach((rate, i) => branches.push(conv(x, o.asppFilters, 3, { rate, name: `aspp_rate${i + 1}` })));
      if (o.imagePooling) {
        let pooled = apply(layers.layers.globalAveragePooling2d({ name: 'aspp_pool' }), x);
        pooled = apply(layers.layers.reshape({ targetShape: [1, 1, channels(x)], name: 'aspp_pool_reshape' }), pooled);
        pooled = apply(
          layers.layers.conv2d({
            filters: o.asppFilters,
            kernelSize: 1,
            activation: 'relu',
            kernelInitializer: layers.initializers.heNormal({ seed: ++layerSeed }),
            name: 'aspp_pool_conv',
          }),
          pooled,
        );
        // Broadcast [b, 1, 1, f] to the feature map's [b, h, w, f] for any h, w: multiply by a constant
        // [b, h, w, 1] map of ones (a frozen 1x1 convolution with zero kernel and unit bias).
        const ones = apply(
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
        branches.push(apply(layers.layers.multiply({ name: 'aspp_pool_broadcast' }), [ones, pooled]));
      }
      let aspp = apply(layers.layers.concatenate({ axis: -1, name: 'aspp_concat' }), branches);
      aspp = conv(aspp, o.asppFilters, 1, { name: 'aspp_project' });

      // Decoder
      const up = o.outputStride / 4;
      aspp = apply(
        layers.layers.upSampling2d({ size: [up, up], interpolation: 'bilinear', name: 'decoder_upsample' }),
        aspp,
      );
      const lowProjected = conv(low, o.lowLevelFilters, 1, { name: 'decoder_low_level' });
      let y = apply(layers.layers.concatenate({ axis: -1, name: 'decoder_concat' }), [aspp, lowProjected]);
      y = conv(y, o.asppFilters, 3, { name: 'decoder_conv1' });
      y = conv(y, o.asppFilters, 3, { name: 'decoder_conv2' });
      y = apply(
        layers.layers.conv2d({
          filters: numClasses,
          kernelSize: 1,
          kernelInitializer: layers.initializers.glorotUniform({ seed: ++layerSeed }),
          name: 'classifier',
        }),
        y,
      );
      y = apply(layers.layers.upSampling2d({ size: [4, 4], interpolation: 'bilinear', name: 'upsample' }), y);
      const output = apply(layers.layers.softmax({ axis: -1, name: 'probabilities' }), y);
      return layers.model({ inputs: input, outputs: output, name: `deeplabv3plus_${o.backbone}` });
    },
  });
}

export { deeplabv3plus };
