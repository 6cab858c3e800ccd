/**
 * `tessera-arch-attention-unet`: Attention U-Net (Oktay et al. 2018) as a Tessera architecture plugin, written in
 * TypeScript. An example of a plugin that brings its own layer class ({@link AttentionGate}, declared in `layers`)
 * and its ONNX converter (in `onnxConverters`).
 */
import {
  ARCHITECTURE_API_VERSION,
  batchNormalization,
  defineArchitecture,
  layers,
  type ArchitecturePlugin,
} from '@tessera/core';
import { AttentionGate, attentionGateOnnxConverter } from './attention-gate.js';

export { AttentionGate, attentionGateOnnxConverter, type AttentionGateArgs } from './attention-gate.js';

/** Options of {@link attentionUnet}. */
export interface AttentionUnetOptions {
  /** Down-sampling levels; input sides must be multiples of `2 ** depth`. */
  depth: number;
  /** Filters of the first level, doubled per level (64 in the paper; 16 here, a CPU-fit default). */
  baseFilters: number;
}

/** Defaults of {@link AttentionUnetOptions}. */
export const ATTENTION_UNET_DEFAULTS: Readonly<AttentionUnetOptions> = Object.freeze({ depth: 4, baseFilters: 16 });

/**
 * Receptive field in pixels, walking the layers in the order `build()` adds them (see "Writing an architecture
 * plugin", section 6): `left` and `right` are how far one output pixel reaches on each side, `stride` the feature map's
 * step in input pixels. The attention gates and the concatenations join branches pixel by pixel, so they add nothing
 * to the reach of the up-sampled branch, which is the larger one. At depth `d` this is `14 * 2 ** d - 9`, U-Net's.
 */
export function attentionUnetReceptiveField({ depth }: AttentionUnetOptions): number {
  let stride = 1;
  let left = 0;
  let right = 0;
  for (let level = 0; level < depth; level++) {
    left += 2 * stride; // two 3x3 convolutions
    right += 2 * stride;
    right += stride; // 2x2 max-pooling with stride 2: the odd padding pixel goes after
    stride *= 2;
  }
  left += 2 * stride; // the bottleneck's two 3x3 convolutions
  right += 2 * stride;
  for (let level = depth - 1; level >= 0; level--) {
    stride /= 2;
    left += stride; // 2x2 transposed convolution with stride 2
    left += 2 * stride; // two 3x3 convolutions after the gated skip
    right += 2 * stride;
  }
  return 2 * Math.max(left, right) + 1;
}

type T = layers.SymbolicTensor;

/**
 * Attention U-Net: U-Net's encoder (per level two 3x3 convolutions with batch normalisation and ReLU, then 2x2
 * max-pooling) and decoder (2x2 transposed convolution, concatenation with the skip features, two 3x3 convolutions),
 * where each skip passes an {@link AttentionGate} driven by the up-sampled decoder features first; a 1x1 convolution
 * with softmax gives the class probabilities.
 *
 * Input `[batch, height, width, inputChannels]`, height and width multiples of `2 ** depth`; output
 * `[batch, height, width, numClasses]` probabilities.
 *
 * @param options overrides of {@link ATTENTION_UNET_DEFAULTS}.
 * @example
 * ```ts
 * const registry = new ArchitectureRegistry().register(attentionUnet({ baseFilters: 32 }));
 * ```
 */
export default function attentionUnet(
  options: Partial<AttentionUnetOptions> = {},
): ArchitecturePlugin<AttentionUnetOptions> {
  return defineArchitecture<AttentionUnetOptions>({
    name: 'attention-unet',
    version: '0.1.0',
    apiVersion: ARCHITECTURE_API_VERSION,
    description: 'Attention U-Net (Oktay et al. 2018): U-Net whose skips pass additive attention gates',
    defaults: { ...ATTENTION_UNET_DEFAULTS, ...options },
    optionsSchema: {
      depth: { type: 'integer', min: 1, max: 6, description: 'down-sampling levels' },
      baseFilters: { type: 'integer', min: 1, max: 256, description: 'filters of the first level, doubled per level' },
    },
    inputMultiple: (o) => 2 ** o.depth,
    receptiveField: attentionUnetReceptiveField,
    // The plugin's own layer class: Tessera registers it wherever a model is loaded (workers, evaluate, predict).
    layers: [AttentionGate],
    onnxConverters: { [AttentionGate.className]: attentionGateOnnxConverter },
    build({ inputChannels, numClasses, options: o, seed = 0 }) {
      let layerSeed = seed * 1000;
      const heNormal = () => layers.initializers.heNormal({ seed: ++layerSeed });
      const block = (x: T, filters: number, name: string): T => {
        for (const unit of [1, 2]) {
          x = layers.layers
            .conv2d({
              filters,
              kernelSize: 3,
              padding: 'same',
              useBias: false,
              kernelInitializer: heNormal(),
              name: `${name}_conv${unit}`,
            })
            .apply(x) as T;
          x = batchNormalization({ name: `${name}_bn${unit}` }).apply(x) as T;
          x = layers.layers.activation({ activation: 'relu', name: `${name}_relu${unit}` }).apply(x) as T;
        }
        return x;
      };
      const input = layers.input({ shape: [null, null, inputChannels], name: 'image' });
      let x: T = input;
      const skips: T[] = [];
      for (let level = 0; level < o.depth; level++) {
        x = block(x, o.baseFilters * 2 ** level, `encoder${level}`);
        skips.push(x);
        x = layers.layers.maxPooling2d({ poolSize: 2, strides: 2, name: `pool${level}` }).apply(x) as T;
      }
      x = block(x, o.baseFilters * 2 ** o.depth, 'bottleneck');
      for (let level = o.depth - 1; level >= 0; level--) {
        const filters = o.baseFilters * 2 ** level;
        const up = layers.layers
          .conv2dTranspose({
            filters,
            kernelSize: 2,
            strides: 2,
            padding: 'same',
            kernelInitializer: heNormal(),
            name: `up${level}`,
          })
          .apply(x) as T;
        const gate = new AttentionGate({
          interChannels: Math.max(1, filters / 2),
          seed: ++layerSeed,
          name: `attention${level}`,
        });
        const gated = gate.apply([skips[level], up]) as T;
        x = layers.layers.concatenate({ name: `skip${level}` }).apply([gated, up]) as T;
        x = block(x, filters, `decoder${level}`);
      }
      const probabilities = layers.layers
        .conv2d({
          filters: numClasses,
          kernelSize: 1,
          activation: 'softmax',
          kernelInitializer: layers.initializers.glorotUniform({ seed: ++layerSeed }),
          name: 'probabilities',
        })
        .apply(x) as T;
      return layers.model({ inputs: input, outputs: probabilities, name: 'attention-unet' });
    },
  });
}
