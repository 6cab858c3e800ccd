import { ModelFormatError, type OnnxLayer, type OnnxLayerConverter } from '@tessera/core';

/** `[a, b]` from a tfjs config value that is a number or a pair. */
function pair(value: unknown, fallback: number): [number, number] {
  if (Array.isArray(value)) return [Number(value[0]), Number(value[1] ?? value[0])];
  if (typeof value === 'number') return [value, value];
  return [fallback, fallback];
}

function padding(layer: OnnxLayer): 'same' | 'valid' {
  const p = layer.config.padding;
  if (p === 'same' || p === 'valid') return p;
  throw new ModelFormatError(
    `Cannot convert layer "${layer.name}" to ONNX: padding ${JSON.stringify(p)} is not supported.`,
  );
}

function channelsLast(layer: OnnxLayer): void {
  const format = layer.config.dataFormat;
  if (format !== undefined && format !== 'channelsLast') {
    throw new ModelFormatError(
      `Cannot convert layer "${layer.name}" to ONNX: dataFormat ${JSON.stringify(format)} (expected "channelsLast").`,
    );
  }
}

/** The ONNX axis of a tfjs (channels-last) axis of the layer's output: 4-D tensors are NCHW in ONNX. */
function onnxAxis(layer: OnnxLayer, axis: unknown): number {
  const rank = layer.outputShape.length;
  const a = Number(axis);
  if (!Number.isInteger(a) || a < -rank || a >= rank) {
    throw new ModelFormatError(
      `Cannot convert layer "${layer.name}" to ONNX: axis ${JSON.stringify(axis)} for rank ${rank}.`,
    );
  }
  const positive = (a + rank) % rank;
  return rank === 4 ? [0, 2, 3, 1][positive] : positive;
}

/** Conv2D (`depthwise` false) or DepthwiseConv2D, with their activation. */
const convolution =
  (depthwise: boolean): OnnxLayerConverter =>
  (layer, [x], g) => {
    channelsLast(layer);
    const y = g.conv(x, {
      kernel: depthwise ? layer.weights.depthwise_kernel : layer.weights.kernel,
      bias: layer.config.useBias === false ? undefined : layer.weights.bias,
      strides: pair(layer.config.strides, 1),
      dilations: pair(layer.config.dilationRate, 1),
      padding: padding(layer),
      depthwise,
    });
    return g.activation(y, String(layer.config.activation ?? 'linear'));
  };

const conv2dTranspose: OnnxLayerConverter = (layer, [x], g) => {
  channelsLast(layer);
  const kernel = layer.weights.kernel; // [kh, kw, out, in]
  const [kh, kw, co, ci] = kernel.shape;
  const [sh, sw] = pair(layer.config.strides, 1);
  // ONNX ConvTranspose weights are [in, out, kh, kw].
  const w = new Float32Array(kernel.values.length);
  for (let y = 0; y < kh; y++)
    for (let xx = 0; xx < kw; xx++)
      for (let o = 0; o < co; o++)
        for (let i = 0; i < ci; i++)
          w[((i * co + o) * kh + y) * kw + xx] = kernel.values[((y * kw + xx) * co + o) * ci + i];
  const bias = layer.config.useBias !== false ? layer.weights.bias : undefined;
  if (kh === sh && kw === sw && kh === kw) {
    // Kernel = stride (U-Net's 2x2/2 up-convolution): the outputs do not overlap, so it is a 1x1 convolution to
    // co * k * k channels followed by DepthToSpace, which runs on the fast convolution kernels.
    const k = kh;
    const w1 = new Float32Array(co * k * k * ci);
    const b1 = new Float32Array(co * k * k);
    for (let o = 0; o < co; o++)
      for (let y = 0; y < k; y++)
        for (let xx = 0; xx < k; xx++) {
          const row = (o * k + y) * k + xx;
          if (bias) b1[row] = bias.values[o];
          for (let i = 0; i < ci; i++) w1[row * ci + i] = kernel.values[((y * k + xx) * co + o) * ci + i];
        }
    const conv = g.node('Conv', [x, g.constant(w1, [co * k * k, ci, 1, 1]), g.constant(b1, [co * k * k])], {
      kernel_shape: [1, 1],
    });
    const y = g.node('DepthToSpace', [conv], { blocksize: k, mode: 'CRD' });
    return g.activation(y, String(layer.config.activation ?? 'linear'));
  }
  const inputs = [x, g.constant(w, [ci, co, kh, kw])];
  if (bias) inputs.push(g.constant(bias.values, [co]));
  // tfjs 'same': output = input * stride, cropping floor((k - s) / 2) before; 'valid': (input - 1) * s + k.
  let pads = [0, 0, 0, 0];
  if (padding(layer) === 'same') {
    const th = Math.max(kh - sh, 0);
    const tw = Math.max(kw - sw, 0);
    pads = [Math.floor(th / 2), Math.floor(tw / 2), th - Math.floor(th / 2), tw - Math.floor(tw / 2)];
  }
  const y = g.node('ConvTranspose', inputs, { kernel_shape: [kh, kw], strides: [sh, sw], pads });
  return g.activation(y, String(layer.config.activation ?? 'linear'));
};

const batchNormalization: OnnxLayerConverter = (layer, [x], g) => {
  if (onnxAxis(layer, layer.config.axis ?? -1) !== 1) {
    throw new ModelFormatError(
      `Cannot convert layer "${layer.name}" to ONNX: batch normalisation over a non-channel axis.`,
    );
  }
  const mean = layer.weights.moving_mean.values;
  const n = mean.length;
  const gamma = layer.weights.gamma?.values ?? new Float32Array(n).fill(1);
  const beta = layer.weights.beta?.values ?? new Float32Array(n);
  return g.node(
    'BatchNormalization',
    [
      x,
      g.constant(gamma, [n]),
      g.constant(beta, [n]),
      g.constant(mean, [n]),
      g.constant(layer.weights.moving_variance.values, [n]),
    ],
    { epsilon: { float: Number(layer.config.epsilon ?? 1e-3) } },
  );
};

const pool =
  (op: 'MaxPool' | 'AveragePool'): OnnxLayerConverter =>
  (layer, [x], g) => {
    channelsLast(layer);
    const kernel = pair(layer.config.poolSize, 2);
    const strides = pair(layer.config.strides ?? layer.config.poolSize, 2);
    const attributes: Record<string, number | string | number[]> = { kernel_shape: kernel, strides };
    // TensorFlow's 'same' pooling pads after, ignoring padded cells; SAME_UPPER does the same.
    if (padding(layer) === 'same') attributes.auto_pad = 'SAME_UPPER';
    return g.node(op, [x], attributes);
  };

const globalPool =
  (op: 'GlobalAveragePool' | 'GlobalMaxPool'): OnnxLayerConverter =>
  (layer, [x], g) => {
    channelsLast(layer);
    const pooled = g.node(op, [x]);
    return layer.config.keepDims ? pooled : g.node('Flatten', [pooled], { axis: 1 });
  };

const upSampling2d: OnnxLayerConverter = (layer, [x], g) => {
  channelsLast(layer);
  const [sh, sw] = pair(layer.config.size, 2);
  const bilinear = layer.config.interpolation === 'bilinear';
  // tfjs resizes with alignCorners = false and halfPixelCenters = false: ONNX's 'asymmetric' coordinates.
  return g.node('Resize', [x, '', g.constant(new Float32Array([1, 1, sh, sw]), [4])], {
    mode: bilinear ? 'linear' : 'nearest',
    coordinate_transformation_mode: 'asymmetric',
    nearest_mode: 'floor',
  });
};

const reLU: OnnxLayerConverter = (layer, [x], g) => {
  const max = layer.config.maxValue;
  if (max === null || max === undefined) return g.node('Relu', [x]);
  return g.node('Clip', [x, g.constant(new Float32Array([0]), []), g.constant(new Float32Array([Number(max)]), [])]);
};

const elementwise =
  (op: 'Add' | 'Mul' | 'Max' | 'Min'): OnnxLayerConverter =>
  (_layer, inputs, g) =>
    inputs.slice(1).reduce((acc, x) => g.node(op, [acc, x]), inputs[0]);

const reshape: OnnxLayerConverter = (layer, [x], g) => {
  const target = layer.config.targetShape as number[];
  // The one reshape segmentation heads use: pooled [b, c] back to an image [b, 1, 1, c] (NCHW [b, c, 1, 1]).
  if (target.length === 3 && target[0] === 1 && target[1] === 1) return g.node('Unsqueeze', [x, g.int64([2, 3])]);
  throw new ModelFormatError(
    `Cannot convert layer "${layer.name}" to ONNX: reshape to ${JSON.stringify(target)} (only [1, 1, channels] is supported).`,
  );
};

const zeroPadding2d: OnnxLayerConverter = (layer, [x], g) => {
  const p = layer.config.padding as [[number, number], [number, number]];
  return g.node('Pad', [x, g.int64([0, 0, p[0][0], p[1][0], 0, 0, p[0][1], p[1][1]])]);
};

const cropping2d: OnnxLayerConverter = (layer, [x], g) => {
  const c = layer.config.cropping as [[number, number], [number, number]];
  const end = (n: number) => (n === 0 ? Number.MAX_SAFE_INTEGER : -n);
  return g.node('Slice', [x, g.int64([c[0][0], c[1][0]]), g.int64([end(c[0][1]), end(c[1][1])]), g.int64([2, 3])]);
};

/** Converters for tfjs's built-in layers, by class name. */
export const BUILTIN_CONVERTERS: Readonly<Record<string, OnnxLayerConverter>> = {
  Conv2D: convolution(false),
  DepthwiseConv2D: convolution(true),
  Conv2DTranspose: conv2dTranspose,
  BatchNormalization: batchNormalization,
  TesseraBatchNormalization: batchNormalization,
  MaxPooling2D: pool('MaxPool'),
  AveragePooling2D: pool('AveragePool'),
  GlobalAveragePooling2D: globalPool('GlobalAveragePool'),
  GlobalMaxPooling2D: globalPool('GlobalMaxPool'),
  UpSampling2D: upSampling2d,
  ReLU: reLU,
  LeakyReLU: (layer, [x], g) => g.node('LeakyRelu', [x], { alpha: { float: Number(layer.config.alpha ?? 0.3) } }),
  Activation: (layer, [x], g) => g.activation(x, String(layer.config.activation)),
  // tfjs's Softmax layer defaults to axis 1 (not -1).
  Softmax: (layer, [x], g) => g.node('Softmax', [x], { axis: onnxAxis(layer, layer.config.axis ?? 1) }),
  Add: elementwise('Add'),
  Multiply: elementwise('Mul'),
  Maximum: elementwise('Max'),
  Minimum: elementwise('Min'),
  Average: (layer, inputs, g) =>
    g.node('Mul', [elementwise('Add')(layer, inputs, g), g.constant(new Float32Array([1 / inputs.length]), [])]),
  Concatenate: (layer, inputs, g) => g.node('Concat', inputs, { axis: onnxAxis(layer, layer.config.axis ?? -1) }),
  Reshape: reshape,
  ZeroPadding2D: zeroPadding2d,
  Cropping2D: cropping2d,
  Dropout: (_layer, [x]) => x,
  SpatialDropout2D: (_layer, [x]) => x,
  GaussianNoise: (_layer, [x]) => x,
  GaussianDropout: (_layer, [x]) => x,
};
