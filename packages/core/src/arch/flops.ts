import type * as tfl from '@tensorflow/tfjs-layers';
import * as layers from '@tensorflow/tfjs-layers';
import { InvalidOptionError } from '../errors.js';

type Shape = (number | null)[];

const size = (shape: readonly (number | null)[]): number => shape.reduce<number>((a, b) => a * (b ?? 1), 1);

/** FLOPs (2 per multiply-add) of one layer application from its weights and concrete input/output shapes. */
function layerFlops(layer: tfl.layers.Layer, inShape: Shape, outShape: Shape): number {
  const className = layer.getClassName();
  const w = (suffix: string) => layer.weights.find((v) => v.originalName.endsWith(`/${suffix}`) || v.name === suffix);
  const outPixels = size(outShape.slice(0, -1)); // batch * spatial positions
  const inPixels = size(inShape.slice(0, -1));
  const depthwise = w('depthwise_kernel');
  const pointwise = w('pointwise_kernel');
  const kernel = w('kernel');
  let macs = 0;
  if (depthwise) {
    // [kh, kw, cin, multiplier]: one multiply-add per tap and output channel at every output position.
    macs += outPixels * size(depthwise.shape);
    // Separable: then a 1x1 [1, 1, cin * multiplier, cout].
    if (pointwise) macs += outPixels * size(pointwise.shape);
  } else if (kernel && kernel.shape.length === 4) {
    // Conv2DTranspose scatters every input pixel through the whole kernel [kh, kw, cout, cin].
    macs += (/Transpose/.test(className) ? inPixels : outPixels) * size(kernel.shape);
  } else if (kernel && kernel.shape.length === 2) {
    // Dense [in, out] applied at every position of the leading dimensions.
    macs += outPixels * size(kernel.shape);
  }
  return 2 * macs;
}

/**
 * Floating-point operations of one forward pass of `model` on an input of `inputShape` (`[batch, height, width,
 * channels]`), counting 2 per multiply-add of the convolution (`Conv2D`, `Conv2DTranspose`, `DepthwiseConv2D`,
 * `SeparableConv2D` and any layer with a rank-4 `kernel` or `depthwise_kernel` weight) and `Dense` layers. Biases,
 * activations, normalisation, pooling and resizing are not counted (they are a few per cent at most).
 *
 * Every layer's output shape is derived from the concrete input shape with `computeOutputShape`, in graph order; no
 * tensor is computed.
 *
 * @throws InvalidOptionError when `inputShape` is not 4 positive integers or does not fit the model.
 * @example
 * ```ts
 * const gflops = countFlops(model, [1, 256, 256, 3]) / 1e9;
 * ```
 */
export function countFlops(model: tfl.LayersModel, inputShape: readonly number[]): number {
  let total = 0;
  walkShapes(model, inputShape, (layer, input, output) => (total += layerFlops(layer, input, output)));
  return total;
}

/**
 * Number of values in the outputs of every layer of `model` for an input of `inputShape`: the activations a
 * forward pass keeps for the backward pass (a measure of training memory per sample, times 4 bytes).
 *
 * @throws InvalidOptionError as {@link countFlops}.
 */
export function countActivations(model: tfl.LayersModel, inputShape: readonly number[]): number {
  let total = 0;
  walkShapes(
    model,
    inputShape,
    (_layer, _input, output) => (total += output.reduce<number>((a, b) => a * (b ?? 1), 1)),
  );
  return total;
}

/** Calls `onLayer` with the concrete input and output shape of every layer, in graph order. */
function walkShapes(
  model: tfl.LayersModel,
  inputShape: readonly number[],
  onLayer: (layer: tfl.layers.Layer, input: Shape, output: Shape) => void,
): void {
  if (inputShape.length !== 4 || inputShape.some((v) => !Number.isInteger(v) || v <= 0)) {
    throw new InvalidOptionError(
      `Expected an input shape [batch, height, width, channels] of positive integers for countFlops but received [${inputShape.join(', ')}].`,
    );
  }
  const declared = model.inputs[0].shape;
  if (declared.length !== 4 || declared.some((v, i) => i > 0 && v != null && v !== inputShape[i])) {
    throw new InvalidOptionError(
      `Model "${model.name}" cannot be applied to an input of shape [${inputShape.join(', ')}]: it expects [${declared.map((v) => v ?? 'any').join(', ')}].`,
    );
  }
  const visit = (m: tfl.LayersModel, inShape: Shape): Shape => {
    // Concrete output shape of every symbolic tensor of the graph, from the input's.
    const shapes = new Map<number, Shape>();
    shapes.set(m.inputs[0].id, inShape);
    for (const layer of m.layers) {
      const node = layer.inboundNodes[0];
      if (!node || layer.getClassName() === 'InputLayer') continue;
      const ins = node.inputTensors.map((t) => shapes.get(t.id));
      if (ins.some((v) => v === undefined)) continue;
      let out: Shape;
      try {
        out =
          layer instanceof layers.LayersModel
            ? visit(layer, ins[0] as Shape)
            : (layer.computeOutputShape(ins.length === 1 ? (ins[0] as Shape) : (ins as Shape[])) as Shape);
      } catch (error) {
        throw new InvalidOptionError(
          `Model "${model.name}" cannot be applied to an input of shape [${inputShape.join(', ')}]: layer ` +
            `"${layer.name}" fails on [${ins.map((v) => v!.join(', ')).join('], [')}]: ${(error as Error).message}`,
        );
      }
      if (Array.isArray(out[0])) out = out[0] as unknown as Shape;
      node.outputTensors.forEach((t) => shapes.set(t.id, out));
      if (!(layer instanceof layers.LayersModel)) onLayer(layer, ins[0] as Shape, out);
    }
    return shapes.get(m.outputs[0].id) ?? inShape;
  };
  visit(model, [...inputShape]);
}
