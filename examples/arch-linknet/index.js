/**
 * `tessera-arch-linknet`: LinkNet (Chaurasia and Culurciello, "LinkNet: Exploiting Encoder Representations for
 * Efficient Semantic Segmentation", VCIP 2017) as a Tessera architecture plugin. Plain ES module, no build step.
 */
import { ARCHITECTURE_API_VERSION, defineArchitecture, layers } from '@tessera/core';

/**
 * Defaults of {@link linknet}: the paper's network (four encoder blocks, 64 filters in the first).
 * @type {Readonly<import('./index.js').LinknetOptions>}
 */
export const LINKNET_DEFAULTS = Object.freeze({ depth: 4, baseFilters: 64 });

/**
 * Tracks, along one axis, which input pixels one feature pixel depends on while the network is walked layer by layer
 * as `build()` adds them: a pixel `j` of a feature map at stride `stride` depends on input pixels
 * `stride * j - left ... stride * j + right`. Padding is TensorFlow's 'same' (the odd padding pixel goes after), and
 * every stride-2 layer sees an even size (the input multiple guarantees it).
 */
class Reach {
  stride = 1;
  left = 0;
  right = 0;

  /** A `k` x `k` convolution or pooling with stride 1 or 2. */
  conv(k, strides = 1) {
    const before = strides === 1 ? (k - 1) / 2 : Math.floor(Math.max(k - 2, 0) / 2);
    this.left += this.stride * before;
    this.right += this.stride * (k - 1 - before);
    this.stride *= strides;
    return this;
  }

  /** A `k` x `k` transposed convolution with stride 2 (a "full convolution" in the paper). */
  transposed(k) {
    const before = Math.floor(Math.max(k - 2, 0) / 2);
    this.stride /= 2;
    this.left += this.stride * (k - 1 - before);
    this.right += this.stride * before;
    return this;
  }

  /** Element-wise addition of a branch at the same stride: the union of both reaches. */
  add(other) {
    this.left = Math.max(this.left, other.left);
    this.right = Math.max(this.right, other.right);
    return this;
  }

  copy() {
    return Object.assign(new Reach(), this);
  }
}

/**
 * Receptive field of LinkNet in pixels: `2 * reach + 1`, where `reach` is the farthest an output pixel reaches on
 * either side, computed by walking the same layers as `build()` (981 px at the defaults).
 *
 * @param {import('./index.js').LinknetOptions} options
 * @returns {number}
 */
export function linknetReceptiveField({ depth }) {
  const r = new Reach().conv(7, 2).conv(3, 2); // initial block: 7x7/2 convolution, 3x3/2 max-pooling
  const encoderInputs = [];
  for (let level = 1; level <= depth; level++) {
    encoderInputs.push(r.copy());
    r.conv(3, 2).conv(3); // residual block 1 (its 1x1/2 shortcut reaches less)
    r.conv(3).conv(3); // residual block 2 (identity shortcut)
  }
  for (let level = depth; level >= 1; level--) {
    r.conv(1).transposed(3).conv(1); // decoder block: 1x1, 3x3 full convolution /2, 1x1
    r.add(encoderInputs[level - 1]); // additive skip from the encoder block's input
  }
  r.transposed(3).conv(3).transposed(2); // final block
  return 2 * Math.max(r.left, r.right) + 1;
}

/**
 * LinkNet: an initial block (7x7/2 convolution, 3x3/2 max-pooling), `depth` encoder blocks of two residual units
 * (ResNet-18 style, the first with stride 2, filters doubling per block), and as many decoder blocks (1x1 convolution
 * to a quarter of the channels, 3x3 transposed convolution with stride 2, 1x1 convolution to the channels of the level
 * above) whose outputs are added to the inputs of the matching encoder blocks; a final block (3x3 transposed
 * convolution /2, 3x3 convolution, 2x2 transposed convolution /2) ends in a softmax. Batch normalisation and ReLU
 * follow every convolution but the last.
 *
 * Input `[batch, height, width, inputChannels]` with height and width multiples of `2 ** (depth + 2)` (64 at the
 * defaults); output `[batch, height, width, numClasses]` probabilities.
 *
 * @param {Partial<import('./index.js').LinknetOptions>} [options] overrides of {@link LINKNET_DEFAULTS}.
 * @returns {import('@tessera/core').ArchitecturePlugin<import('./index.js').LinknetOptions>}
 * @example
 * ```js
 * import linknet from 'tessera-arch-linknet';
 * registry.register(linknet({ baseFilters: 32 }));
 * ```
 */
export default function linknet(options = {}) {
  return defineArchitecture({
    name: 'linknet',
    version: '0.1.0',
    apiVersion: ARCHITECTURE_API_VERSION,
    description: 'LinkNet (Chaurasia and Culurciello 2017): residual encoder, light decoder, additive skips',
    defaults: { ...LINKNET_DEFAULTS, ...options },
    optionsSchema: {
      depth: { type: 'integer', min: 1, max: 5, description: 'encoder blocks (each halves the size)' },
      baseFilters: {
        type: 'integer',
        min: 4,
        max: 512,
        description: 'filters of the initial and first encoder block, doubled per block',
      },
    },
    // The initial block halves twice, every encoder block once.
    inputMultiple: (o) => 2 ** (o.depth + 2),
    receptiveField: linknetReceptiveField,
    build({ inputChannels, numClasses, options: o, seed = 0 }) {
      // Seeded initialisers, one seed per layer: the same seed gives the same initial weights.
      let layerSeed = seed * 1000;
      const init = () => layers.initializers.heNormal({ seed: ++layerSeed });
      const L = layers.layers;
      const bnRelu = (x, name, relu = true) => {
        const y = L.batchNormalization({ momentum: 0.9, name: `${name}_bn` }).apply(x);
        return relu ? L.reLU({ name: `${name}_relu` }).apply(y) : y;
      };
      const conv = (x, filters, kernelSize, strides, name, relu = true) =>
        bnRelu(
          L.conv2d({
            filters,
            kernelSize,
            strides,
            padding: 'same',
            useBias: false,
            kernelInitializer: init(),
            name,
          }).apply(x),
          name,
          relu,
        );
      const fullConv = (x, filters, kernelSize, name) =>
        bnRelu(
          L.conv2dTranspose({
            filters,
            kernelSize,
            strides: 2,
            padding: 'same',
            useBias: false,
            kernelInitializer: init(),
            name,
          }).apply(x),
          name,
        );
      const residual = (x, filters, strides, name) => {
        let y = conv(x, filters, 3, strides, `${name}_conv1`);
        y = conv(y, filters, 3, 1, `${name}_conv2`, false);
        const inputFilters = x.shape[x.shape.length - 1];
        const shortcut =
          strides === 1 && inputFilters === filters ? x : conv(x, filters, 1, strides, `${name}_shortcut`, false);
        return L.reLU({ name: `${name}_relu` }).apply(L.add({ name: `${name}_add` }).apply([y, shortcut]));
      };
      const filtersAt = (level) => o.baseFilters * 2 ** Math.max(level - 1, 0); // level 0: the initial block

      const input = layers.input({ shape: [null, null, inputChannels], name: 'image' });
      let x = conv(input, o.baseFilters, 7, 2, 'initial_conv');
      x = L.maxPooling2d({ poolSize: 3, strides: 2, padding: 'same', name: 'initial_pool' }).apply(x);
      const encoderInputs = [];
      for (let level = 1; level <= o.depth; level++) {
        encoderInputs.push(x);
        x = residual(x, filtersAt(level), 2, `encoder${level}_unit1`);
        x = residual(x, filtersAt(level), 1, `encoder${level}_unit2`);
      }
      for (let level = o.depth; level >= 1; level--) {
        const quarter = Math.max(1, Math.floor(filtersAt(level) / 4));
        let y = conv(x, quarter, 1, 1, `decoder${level}_reduce`);
        y = fullConv(y, quarter, 3, `decoder${level}_up`);
        y = conv(y, filtersAt(level - 1), 1, 1, `decoder${level}_expand`);
        x = L.add({ name: `skip${level}` }).apply([encoderInputs[level - 1], y]);
      }
      const half = Math.max(1, Math.floor(o.baseFilters / 2));
      x = fullConv(x, half, 3, 'final_up1');
      x = conv(x, half, 3, 1, 'final_conv');
      const output = L.conv2dTranspose({
        filters: numClasses,
        kernelSize: 2,
        strides: 2,
        padding: 'same',
        activation: 'softmax',
        kernelInitializer: layers.initializers.glorotUniform({ seed: ++layerSeed }),
        name: 'probabilities',
      }).apply(x);
      return layers.model({ inputs: input, outputs: output, name: 'linknet' });
    },
  });
}

export { linknet };
