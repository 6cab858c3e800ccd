/**
 * __PACKAGE__: the "__NAME__" architecture plugin for Tessera, in TypeScript (compiled to dist/ by `npm run build`).
 *
 * Made by `tessera create-plugin --typescript`: a small encoder/decoder that already passes the conformance kit
 * (`npm test`). Change build(), then receptiveField() and inputMultiple() to match, and run the tests again.
 */
import { ARCHITECTURE_API_VERSION, defineArchitecture, layers, type ArchitecturePlugin } from '@tessera/core';

/** Options of the architecture (every one a user can set with `--arch-option key=value`). */
export interface Options {
  /** Down-sampling levels; input sides must be multiples of `2 ** depth`. */
  depth: number;
  /** Filters of the first level, doubled per level. */
  filters: number;
}

/** Defaults of {@link Options}. */
export const DEFAULTS: Readonly<Options> = Object.freeze({ depth: 2, filters: 16 });

/**
 * Receptive field in pixels: `2 * reach + 1`, where `reach` is the farthest an output pixel reaches into the input
 * on either side. Walk the layers in the order build() adds them; `stride` is the feature map's step in input pixels.
 * TensorFlow's 'same' padding puts an odd padding pixel after the input, so a layer can reach farther on one side.
 */
export function receptiveField({ depth }: Options): number {
  let stride = 1;
  let left = 0;
  let right = 0;
  for (let level = 0; level < depth; level++) {
    left += stride; // 3x3 convolution: one step on each side
    right += stride;
    right += stride; // 2x2 max-pooling with stride 2: one step to the right
    stride *= 2;
  }
  left += stride; // 3x3 bottleneck convolution
  right += stride;
  for (let level = depth - 1; level >= 0; level--) {
    stride /= 2;
    left += stride; // 2x2 transposed convolution with stride 2: one (finer) step to the left
    left += stride; // 3x3 convolution after the skip concatenation
    right += stride;
  }
  return 2 * Math.max(left, right) + 1;
}

type T = layers.SymbolicTensor;

/**
 * The "__NAME__" architecture: `depth` levels of a 3x3 convolution and 2x2 max-pooling, a 3x3 bottleneck, and as many
 * levels of 2x2 transposed convolution, concatenation with the encoder's features and a 3x3 convolution; a 1x1
 * convolution with softmax gives the class probabilities.
 *
 * Input `[batch, height, width, inputChannels]`, height and width multiples of `2 ** depth`; output
 * `[batch, height, width, numClasses]` probabilities.
 *
 * @param options overrides of {@link DEFAULTS}.
 */
export default function createPlugin(options: Partial<Options> = {}): ArchitecturePlugin<Options> {
  return defineArchitecture<Options>({
    name: '__NAME__',
    version: '0.1.0',
    apiVersion: ARCHITECTURE_API_VERSION,
    description: 'A small encoder/decoder with skip connections',
    defaults: { ...DEFAULTS, ...options },
    optionsSchema: {
      depth: { type: 'integer', min: 1, max: 6, description: 'down-sampling levels' },
      filters: { type: 'integer', min: 1, max: 512, description: 'filters of the first level, doubled per level' },
    },
    inputMultiple: (o) => 2 ** o.depth,
    receptiveField,
    build({ inputChannels, numClasses, options: o, seed = 0 }) {
      // Seeded initialisers, one seed per layer: the same seed must give the same initial weights.
      let layerSeed = seed * 1000;
      const heNormal = () => layers.initializers.heNormal({ seed: ++layerSeed });
      const conv3x3 = (x: T, filters: number, name: string) =>
        layers.layers
          .conv2d({ filters, kernelSize: 3, padding: 'same', activation: 'relu', kernelInitializer: heNormal(), name })
          .apply(x) as T;

      const input = layers.input({ shape: [null, null, inputChannels], name: 'image' });
      let x: T = input;
      const skips: T[] = [];
      for (let level = 0; level < o.depth; level++) {
        x = conv3x3(x, o.filters * 2 ** level, `encoder${level}`);
        skips.push(x);
        x = layers.layers.maxPooling2d({ poolSize: 2, strides: 2, name: `pool${level}` }).apply(x) as T;
      }
      x = conv3x3(x, o.filters * 2 ** o.depth, 'bottleneck');
      for (let level = o.depth - 1; level >= 0; level--) {
        const filters = o.filters * 2 ** level;
        x = layers.layers
          .conv2dTranspose({
            filters,
            kernelSize: 2,
            strides: 2,
            padding: 'same',
            kernelInitializer: heNormal(),
            name: `up${level}`,
          })
          .apply(x) as T;
        x = layers.layers.concatenate({ name: `skip${level}` }).apply([skips[level], x]) as T;
        x = conv3x3(x, filters, `decoder${level}`);
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
      return layers.model({ inputs: input, outputs: probabilities, name: '__NAME__' });
    },
  });
}
