import * as tf from '@tensorflow/tfjs-core';
import * as layers from '@tensorflow/tfjs-layers';
import type { OnnxLayerConverter } from '../onnx-converter.js';

/** Configuration of {@link AtrousConv2D}. */
export interface AtrousConv2DArgs {
  /** Output channels (ignored when `depthwise`: the output has the input's channels). */
  filters: number;
  kernelSize: number;
  /** Dilation rate (atrous rate), the same along both axes. */
  dilationRate: number;
  /** Depthwise (one filter per input channel) instead of a full convolution. */
  depthwise: boolean;
  useBias: boolean;
  /** Seed of the He-normal kernel initialiser. */
  seed: number;
  name?: string;
  trainable?: boolean;
}

/**
 * A stride-1, 'same'-padded atrous (dilated) convolution, full or depthwise, that trains on every engine.
 *
 * The tfjs-layers `Conv2D` layer calls `tf.fused.conv2d`, whose gradient (a `customGrad` closure) rejects dilation
 * rates above 1, and its `DepthwiseConv2D` layer ignores `dilationRate`. This layer calls the unfused
 * `tf.conv2d` / `tf.depthwiseConv2d` ops, whose gradients `@tessera/core` makes dilation-aware
 * (`registerDilatedGradients`, installed by `setupEngine`).
 *
 * Weights: `kernel` `[k, k, cin, filters]` (depthwise: `depthwise_kernel` `[k, k, cin, 1]`) and `bias`.
 * Serialised as class `TesseraAtrousConv2D`. The encoders that use it (MobileNetV2 and ResNet-50 at output stride 8
 * or 16) declare it in their `layers`, and so does every architecture built on them.
 */
export class AtrousConv2D extends layers.layers.Layer {
  /** @nocollapse */
  static className = 'TesseraAtrousConv2D';
  private readonly args: AtrousConv2DArgs;
  private kernel: layers.LayerVariable | null = null;
  private bias: layers.LayerVariable | null = null;

  constructor(args: AtrousConv2DArgs) {
    super({ name: args.name, trainable: args.trainable });
    this.args = {
      filters: args.filters,
      kernelSize: args.kernelSize,
      dilationRate: args.dilationRate,
      depthwise: args.depthwise,
      useBias: args.useBias,
      seed: args.seed,
    };
  }

  override build(inputShape: layers.Shape | layers.Shape[]): void {
    const shape = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as layers.Shape;
    const cin = shape[3] as number;
    const { kernelSize: k, depthwise, filters, seed, useBias } = this.args;
    this.kernel = this.addWeight(
      depthwise ? 'depthwise_kernel' : 'kernel',
      [k, k, cin, depthwise ? 1 : filters],
      'float32',
      // He-normal; for depthwise kernels over the k*k taps of one channel (tfjs's fan-in would count k*k*cin).
      depthwise
        ? layers.initializers.varianceScaling({ scale: 2 * cin, mode: 'fanIn', distribution: 'normal', seed })
        : layers.initializers.heNormal({ seed }),
    );
    if (useBias) {
      this.bias = this.addWeight('bias', [depthwise ? cin : filters], 'float32', layers.initializers.zeros());
    }
    this.built = true;
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return tf.tidy(() => {
      const x = (Array.isArray(inputs) ? inputs[0] : inputs) as tf.Tensor4D;
      const kernel = this.kernel!.read() as tf.Tensor4D;
      const rate = this.args.dilationRate;
      let y: tf.Tensor = this.args.depthwise
        ? tf.depthwiseConv2d(x, kernel, 1, 'same', 'NHWC', rate)
        : tf.conv2d(x, kernel, 1, 'same', 'NHWC', rate);
      if (this.bias) y = tf.add(y, this.bias.read());
      return y;
    });
  }

  override computeOutputShape(inputShape: layers.Shape | layers.Shape[]): layers.Shape {
    const shape = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as layers.Shape;
    return [shape[0], shape[1], shape[2], this.args.depthwise ? shape[3] : this.args.filters];
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), ...this.args };
  }
}

/**
 * ONNX converter of {@link AtrousConv2D}: a dilated (depthwise) convolution with TensorFlow's 'same' padding.
 * Listed in the encoders' `onnxConverters`, and so in those of the architectures built on them.
 */
export const atrousOnnxConverter: OnnxLayerConverter = (layer, [x], graph) => {
  const rate = Number(layer.config.dilationRate);
  const depthwise = Boolean(layer.config.depthwise);
  return graph.conv(x, {
    kernel: depthwise ? layer.weights.depthwise_kernel : layer.weights.kernel,
    bias: layer.weights.bias,
    dilations: [rate, rate],
    padding: 'same',
    depthwise,
  });
};
