/**
 * The building blocks architectures and encoders share: seeded initialisers, convolution + batch norm + activation,
 * and the softmax head. Each block names its layers from the name it is given, so networks keep readable, stable
 * layer names (the plugin contract names an encoder's layers by them).
 */
import * as layers from '@tensorflow/tfjs-layers';
import { batchNormalization } from './batch-norm.js';
import { AtrousConv2D } from './encoders/atrous.js';

type T = layers.SymbolicTensor;

/** Applies a layer to one or more symbolic tensors. */
export function applyLayer(layer: layers.layers.Layer, x: T | T[]): T {
  return layer.apply(x as never) as T;
}

/**
 * Seeds for a network's initialisers, one per layer in build order: `seed * 1000 + 1`, `+ 2`, ... The same seed gives
 * the same initial weights; an encoder built inside a network draws from the network's sequence.
 * @example
 * const seeds = seedSequence(spec.seed ?? 0);
 * layers.initializers.heNormal({ seed: seeds.next() });
 */
export function seedSequence(seed = 0): { next: () => number } {
  let current = seed * 1000;
  return { next: () => ++current };
}

/** Options of {@link convBnAct}. */
export interface ConvBlockOptions {
  filters: number;
  kernelSize: number;
  /** Default 1. */
  stride?: number;
  /** Dilation (atrous) rate; above 1 the block uses `AtrousConv2D` (stride 1 only). Default 1. */
  rate?: number;
  /** Depthwise (one filter per input channel; `filters` is ignored). Default false. */
  depthwise?: boolean;
  /** `'relu'`, `'relu6'` or `null` (none). Default `'relu'`. */
  activation?: 'relu' | 'relu6' | null;
  /** Batch normalisation after the convolution (momentum 0.9); without it the convolution has a bias. Default true. */
  batchNorm?: boolean;
  /** The convolution's name; batch norm and activation are named `<name>_bn` and `<name>_relu` (`_relu6`). */
  name: string;
  /** Other names for the batch norm and activation layers. */
  names?: { bn?: string; act?: string };
  /** Seeds of the initialisers. */
  seeds: { next: () => number };
}

/**
 * Convolution ('same' padding, He-normal kernel), then batch normalisation (momentum 0.9: moving statistics that keep
 * up with short CPU trainings) and the activation. Without batch norm the activation is fused into the convolution.
 */
export function convBnAct(x: T, o: ConvBlockOptions): T {
  const { filters, kernelSize, stride = 1, rate = 1, depthwise = false, activation = 'relu', batchNorm = true } = o;
  const channels = x.shape[3] as number;
  const fused = !batchNorm && activation === 'relu';
  if (rate > 1) {
    x = applyLayer(
      new AtrousConv2D({
        filters,
        kernelSize,
        dilationRate: rate,
        depthwise,
        useBias: !batchNorm,
        seed: o.seeds.next(),
        name: o.name,
      }),
      x,
    );
  } else if (depthwise) {
    x = applyLayer(
      layers.layers.depthwiseConv2d({
        kernelSize,
        strides: stride,
        padding: 'same',
        useBias: !batchNorm,
        // He-normal over the k x k taps of one channel (tfjs counts fan-in as k*k*cin for depthwise kernels, which
        // would shrink activations by sqrt(cin) per block).
        depthwiseInitializer: layers.initializers.varianceScaling({
          scale: 2 * channels,
          mode: 'fanIn',
          distribution: 'normal',
          seed: o.seeds.next(),
        }),
        name: o.name,
      }),
      x,
    );
  } else {
    x = applyLayer(
      layers.layers.conv2d({
        filters,
        kernelSize,
        strides: stride,
        padding: 'same',
        activation: fused ? 'relu' : 'linear',
        useBias: !batchNorm,
        kernelInitializer: layers.initializers.heNormal({ seed: o.seeds.next() }),
        name: o.name,
      }),
      x,
    );
  }
  if (batchNorm) x = applyLayer(batchNormalization({ momentum: 0.9, name: o.names?.bn ?? `${o.name}_bn` }), x);
  if (fused || activation === null) return x;
  const name = o.names?.act ?? `${o.name}_${activation}`;
  return applyLayer(layers.layers.reLU({ ...(activation === 'relu6' ? { maxValue: 6 } : {}), name }), x);
}

/** The classifier: a 1x1 convolution to `numClasses` channels (Glorot-uniform), with softmax unless `softmax: false`. */
export function classHead(
  x: T,
  numClasses: number,
  o: { name: string; seeds: { next: () => number }; softmax?: boolean },
): T {
  return applyLayer(
    layers.layers.conv2d({
      filters: numClasses,
      kernelSize: 1,
      activation: o.softmax === false ? 'linear' : 'softmax',
      kernelInitializer: layers.initializers.glorotUniform({ seed: o.seeds.next() }),
      name: o.name,
    }),
    x,
  );
}
