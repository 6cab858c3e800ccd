import { layers, tf, type OnnxLayerConverter } from '@tessera/core';

/** Configuration of {@link AttentionGate}: every constructor argument, as `getConfig()` saves it. */
export interface AttentionGateArgs {
  /** Channels of the gate's inner projection (`F_int` in the paper). */
  interChannels: number;
  /** Seed of the Glorot-uniform initialisers of its three projections. */
  seed: number;
  name?: string;
  trainable?: boolean;
}

/**
 * The additive attention gate of Attention U-Net (Oktay et al. 2018, "Attention U-Net: Learning Where to Look for
 * the Pancreas", MIDL): applied to `[x, g]`, the skip features `x` `[batch, height, width, Fx]` and the gating signal
 * `g` `[batch, height, width, Fg]` (the decoder's up-sampled features, at the same size), it returns
 * `x * sigmoid(psi(relu(Wx x + Wg g + bg)) + bpsi)`: the skip features weighted, per pixel, by a coefficient in
 * (0, 1) that the decoder's context decides. `Wx`, `Wg` and `psi` are 1x1 convolutions (`psi` to one channel), so the
 * gate reaches no neighbouring pixel.
 *
 * Weights: `wx` `[1, 1, Fx, F_int]`, `wg` `[1, 1, Fg, F_int]`, `bg` `[F_int]`, `psi` `[1, 1, F_int, 1]`, `psi_bias`
 * `[1]`. Serialised as class `AttentionUnetAttentionGate`; the plugin declares it in `layers`, so Tessera registers it
 * wherever a model is loaded, and converts it with {@link attentionGateOnnxConverter}.
 */
export class AttentionGate extends layers.layers.Layer {
  /** @nocollapse */
  static className = 'AttentionUnetAttentionGate';
  private readonly interChannels: number;
  private readonly seed: number;
  private wx: layers.LayerVariable | null = null;
  private wg: layers.LayerVariable | null = null;
  private bg: layers.LayerVariable | null = null;
  private psi: layers.LayerVariable | null = null;
  private psiBias: layers.LayerVariable | null = null;

  constructor(args: AttentionGateArgs) {
    super({ name: args.name, trainable: args.trainable });
    this.interChannels = args.interChannels;
    this.seed = args.seed;
  }

  override build(inputShape: layers.Shape | layers.Shape[]): void {
    const [xShape, gShape] = inputShape as layers.Shape[];
    const fx = xShape[3] as number;
    const fg = gShape[3] as number;
    const k = this.interChannels;
    const glorot = (i: number) => layers.initializers.glorotUniform({ seed: this.seed * 4 + i });
    const zeros = layers.initializers.zeros();
    this.wx = this.addWeight('wx', [1, 1, fx, k], 'float32', glorot(1));
    this.wg = this.addWeight('wg', [1, 1, fg, k], 'float32', glorot(2));
    this.bg = this.addWeight('bg', [k], 'float32', zeros);
    this.psi = this.addWeight('psi', [1, 1, k, 1], 'float32', glorot(3));
    this.psiBias = this.addWeight('psi_bias', [1], 'float32', zeros);
    this.built = true;
  }

  override computeOutputShape(inputShape: layers.Shape | layers.Shape[]): layers.Shape {
    return (inputShape as layers.Shape[])[0];
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return tf.tidy(() => {
      const [x, g] = inputs as tf.Tensor4D[];
      const project = (t: tf.Tensor4D, w: layers.LayerVariable) => tf.conv2d(t, w.read() as tf.Tensor4D, 1, 'valid');
      const inner = tf.relu(tf.add(tf.add(project(x, this.wx!), project(g, this.wg!)), this.bg!.read())) as tf.Tensor4D;
      const alpha = tf.sigmoid(tf.add(project(inner, this.psi!), this.psiBias!.read()));
      return tf.mul(x, alpha);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), interChannels: this.interChannels, seed: this.seed };
  }
}

/**
 * ONNX converter of {@link AttentionGate}, listed in the plugin's `onnxConverters`. Its inputs arrive as the names of
 * NCHW tensors (`[batch, channels, height, width]`), in the order the layer was applied to (`[x, g]`); the weights come
 * in their tfjs layout, which `graph.conv` takes as it is. ONNX's `Mul` broadcasts the one-channel coefficient over
 * the channels of `x`.
 */
export const attentionGateOnnxConverter: OnnxLayerConverter = (layer, [x, g], graph) => {
  const w = layer.weights;
  const fromX = graph.conv(x, { kernel: w.wx, padding: 'valid' });
  const fromG = graph.conv(g, { kernel: w.wg, bias: w.bg, padding: 'valid' });
  const inner = graph.node('Relu', [graph.node('Add', [fromX, fromG])]);
  const alpha = graph.node('Sigmoid', [graph.conv(inner, { kernel: w.psi, bias: w.psi_bias, padding: 'valid' })]);
  return graph.node('Mul', [x, alpha]);
};
