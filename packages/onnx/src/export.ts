import {
  CORE_VERSION,
  ModelFormatError,
  type ModelManifest,
  type OnnxAttribute,
  type OnnxConvOptions,
  type OnnxGraph,
  type OnnxLayer,
  type OnnxLayerConverter,
  type OnnxWeight,
  type layers,
} from '@tessera/core';
import { encodeModel, type AttributeValue, type NodeData, type TensorData } from './protobuf.js';
import { BUILTIN_CONVERTERS } from './converters.js';
import { optimizeGraph } from './optimize.js';

/** The ONNX operator set written (ONNX 1.12, onnxruntime 1.13 and later read it). */
export const ONNX_OPSET = 17;
/** ONNX IR version matching {@link ONNX_OPSET}. */
const IR_VERSION = 8;

/** Names of the graph's input and output: `image` `[batch, height, width, channels]` → `probabilities`. */
export const ONNX_IO = { input: 'image', output: 'probabilities' } as const;

/** Metadata keys the exporter writes (all values are strings; JSON where structured). */
export const ONNX_METADATA = {
  manifest: 'tessera.manifest',
  weightsSha256: 'tessera.weights_sha256',
  classes: 'tessera.classes',
  normalization: 'tessera.normalization',
  inputMultiple: 'tessera.input_multiple',
  /** In int8 models (see `quantizeOnnx`): the quantization report, JSON. */
  quantization: 'tessera.quantization',
} as const;

/** Options of {@link exportOnnx}. */
export interface ExportOnnxOptions {
  /** Converters for plugins' custom layers, by class name (see `ArchitecturePlugin.onnxConverters`). */
  converters?: Readonly<Record<string, OnnxLayerConverter>>;
  /** Apply the graph rewrites of `optimize.ts` (batch-norm folding, concat splitting). Default true. */
  optimize?: boolean;
}

interface InboundRef {
  layer: string;
  node: number;
  tensor: number;
}

interface LayerConfigEntry {
  name: string;
  className: string;
  config: Record<string, unknown>;
  inboundNodes: [string, number, number, unknown][][];
}

/** Thrown when a layer has no converter; the message names every unconvertible layer class. */
export class UnsupportedLayerError extends ModelFormatError {}

function attributeValue(value: OnnxAttribute): AttributeValue {
  if (typeof value === 'number') return { type: 'int', value };
  if (typeof value === 'string') return { type: 'string', value };
  if (Array.isArray(value)) return { type: 'ints', value: value as number[] };
  if ('float' in (value as object)) return { type: 'float', value: (value as { float: number }).float };
  return { type: 'floats', value: (value as { floats: number[] }).floats };
}

/** Permutes a `[a, b, c, d]` tensor to `[d, c, a, b]` (tfjs HWIO kernels → ONNX OIHW). */
function hwioToOihw(w: OnnxWeight): { values: Float32Array; dims: number[] } {
  const [kh, kw, ci, co] = w.shape;
  const out = new Float32Array(w.values.length);
  for (let y = 0; y < kh; y++)
    for (let x = 0; x < kw; x++)
      for (let i = 0; i < ci; i++)
        for (let o = 0; o < co; o++) out[((o * ci + i) * kh + y) * kw + x] = w.values[((y * kw + x) * ci + i) * co + o];
  return { values: out, dims: [co, ci, kh, kw] };
}

class GraphBuilder implements OnnxGraph {
  readonly nodes: NodeData[] = [];
  readonly initializers: TensorData[] = [];
  private counter = 0;
  /** Prefix of the names made for the layer being converted. */
  scope = 'graph';

  private fresh(kind: string): string {
    return `${this.scope}/${kind}_${this.counter++}`;
  }

  node(opType: string, inputs: readonly string[], attributes: Readonly<Record<string, OnnxAttribute>> = {}): string {
    const output = this.fresh(opType);
    this.nodes.push({
      name: output,
      opType,
      inputs,
      outputs: [output],
      attributes: Object.fromEntries(Object.entries(attributes).map(([k, v]) => [k, attributeValue(v)])),
    });
    return output;
  }

  constant(values: Float32Array, dims: readonly number[]): string {
    const name = this.fresh('const');
    this.initializers.push({ name, dims, values });
    return name;
  }

  int64(values: readonly number[]): string {
    const name = this.fresh('i64');
    this.initializers.push({ name, dims: [values.length], values: BigInt64Array.from(values.map(BigInt)) });
    return name;
  }

  conv(input: string, o: OnnxConvOptions): string {
    const [kh, kw, ci, co] = o.kernel.shape;
    const strides = o.strides ?? [1, 1];
    const dilations = o.dilations ?? [1, 1];
    let weight: { values: Float32Array; dims: number[] };
    if (o.depthwise) {
      // [kh, kw, in, multiplier] → [in * multiplier, 1, kh, kw]; output channel c * multiplier + m as in tfjs.
      const values = new Float32Array(o.kernel.values.length);
      for (let y = 0; y < kh; y++)
        for (let x = 0; x < kw; x++)
          for (let c = 0; c < ci; c++)
            for (let m = 0; m < co; m++)
              values[((c * co + m) * kh + y) * kw + x] = o.kernel.values[((y * kw + x) * ci + c) * co + m];
      weight = { values, dims: [ci * co, 1, kh, kw] };
    } else {
      weight = hwioToOihw(o.kernel);
    }
    const inputs = [input, this.constant(weight.values, weight.dims)];
    if (o.bias) inputs.push(this.constant(o.bias.values, [o.bias.values.length]));
    const attributes: Record<string, OnnxAttribute> = {
      kernel_shape: [kh, kw],
      strides: [...strides],
      dilations: [...dilations],
      group: o.depthwise ? ci : 1,
    };
    if (o.padding === 'valid') attributes.pads = [0, 0, 0, 0];
    else if (strides[0] === 1 && strides[1] === 1) {
      // Stride 1: TensorFlow's 'same' padding does not depend on the input size.
      const th = (kh - 1) * dilations[0];
      const tw = (kw - 1) * dilations[1];
      attributes.pads = [Math.floor(th / 2), Math.floor(tw / 2), th - Math.floor(th / 2), tw - Math.floor(tw / 2)];
    } else attributes.auto_pad = 'SAME_UPPER';
    return this.node('Conv', inputs, attributes);
  }

  activation(input: string, name: string): string {
    switch (name) {
      case 'linear':
        return input;
      case 'relu':
        return this.node('Relu', [input]);
      case 'relu6':
        return this.node('Clip', [
          input,
          this.constant(new Float32Array([0]), []),
          this.constant(new Float32Array([6]), []),
        ]);
      case 'sigmoid':
        return this.node('Sigmoid', [input]);
      case 'tanh':
        return this.node('Tanh', [input]);
      case 'elu':
        return this.node('Elu', [input]);
      case 'selu':
        return this.node('Selu', [input]);
      case 'softplus':
        return this.node('Softplus', [input]);
      case 'swish':
        return this.node('Mul', [input, this.node('Sigmoid', [input])]);
      case 'softmax':
        return this.node('Softmax', [input], { axis: 1 });
      default:
        throw new UnsupportedLayerError(
          `Cannot convert activation "${name}" to ONNX. Supported: linear, relu, relu6, sigmoid, tanh, elu, selu, softplus, swish, softmax.`,
        );
    }
  }
}

function layerWeights(layer: layers.layers.Layer): Record<string, OnnxWeight> {
  const out: Record<string, OnnxWeight> = {};
  for (const w of layer.weights) {
    const short = w.originalName.slice(w.originalName.lastIndexOf('/') + 1);
    out[short] = { shape: w.shape as number[], values: w.read().dataSync() as Float32Array };
  }
  return out;
}

/**
 * Converts a trained tfjs model to an ONNX model (opset {@link ONNX_OPSET}): input `image`
 * `[batch, height, width, channels]` float32 (normalised as the manifest says), output `probabilities`
 * `[batch, height, width, classes]`, batch, height and width dynamic. The manifest travels in the metadata.
 *
 * @throws UnsupportedLayerError naming every layer class without a converter.
 * @example
 * ```ts
 * const { model, manifest } = await loadModel('runs/isbi');
 * await writeFile('isbi.onnx', exportOnnx(model, manifest));
 * ```
 */
export function exportOnnx(
  model: layers.LayersModel,
  manifest: ModelManifest,
  options: ExportOnnxOptions = {},
): Uint8Array {
  const converters: Record<string, OnnxLayerConverter> = { ...BUILTIN_CONVERTERS, ...options.converters };
  const config = model.getConfig() as unknown as {
    layers: LayerConfigEntry[];
    inputLayers: [string, number, number][];
    outputLayers: [string, number, number][];
  };
  const missing = [...new Set(config.layers.map((l) => l.className))].filter(
    (c) => c !== 'InputLayer' && !converters[c],
  );
  if (missing.length > 0) {
    throw new UnsupportedLayerError(
      `Cannot export ${manifest.architecture.name} to ONNX: no converter for layer class(es) ${missing.join(', ')}.`,
      `Prediction falls back to tfjs (--runtime tfjs). A plugin can add converters in its onnxConverters.`,
    );
  }
  if (config.inputLayers.length !== 1 || config.outputLayers.length !== 1) {
    throw new UnsupportedLayerError(
      `Cannot export a model with ${config.inputLayers.length} inputs and ${config.outputLayers.length} outputs to ONNX: expected 1 and 1.`,
    );
  }
  const g = new GraphBuilder();
  const tensors = new Map<string, string>();
  const channels = new Map<string, number>();
  const key = (r: InboundRef) => `${r.layer}:${r.node}:${r.tensor}`;
  const byName = new Map(model.layers.map((l) => [l.name, l]));
  g.scope = 'input';
  for (const entry of config.layers) {
    if (entry.className === 'InputLayer') {
      tensors.set(
        key({ layer: entry.name, node: 0, tensor: 0 }),
        g.node('Transpose', [ONNX_IO.input], { perm: [0, 3, 1, 2] }),
      );
      continue;
    }
    if (entry.inboundNodes.length !== 1) {
      throw new UnsupportedLayerError(
        `Cannot export layer "${entry.name}" to ONNX: it is applied ${entry.inboundNodes.length} times (shared layers are not supported).`,
      );
    }
    const inputs = entry.inboundNodes[0].map(([layer, node, tensor]) => {
      const name = tensors.get(key({ layer, node, tensor }));
      if (!name) throw new ModelFormatError(`Layer "${entry.name}" reads "${layer}" before it is computed.`);
      return name;
    });
    const layer: OnnxLayer = {
      className: entry.className,
      name: entry.name,
      config: entry.config,
      weights: layerWeights(byName.get(entry.name)!),
      outputShape: byName.get(entry.name)!.outputShape as (number | null)[],
    };
    g.scope = entry.name;
    const output = converters[entry.className](layer, inputs, g);
    tensors.set(key({ layer: entry.name, node: 0, tensor: 0 }), output);
    const shape = layer.outputShape;
    if (shape.length === 4 && typeof shape[3] === 'number') channels.set(output, shape[3]);
  }
  const [outLayer, outNode, outTensor] = config.outputLayers[0];
  const last = tensors.get(key({ layer: outLayer, node: outNode, tensor: outTensor }))!;
  g.scope = 'output';
  g.nodes.push({
    name: 'output/Transpose',
    opType: 'Transpose',
    inputs: [last],
    outputs: [ONNX_IO.output],
    attributes: { perm: { type: 'ints', value: [0, 2, 3, 1] } },
  });
  const graph = { nodes: g.nodes, initializers: g.initializers };
  if (options.optimize !== false) optimizeGraph(graph, new Set([ONNX_IO.output]), channels);
  return encodeModel({
    irVersion: IR_VERSION,
    opsetVersion: ONNX_OPSET,
    producerName: 'tessera',
    producerVersion: CORE_VERSION,
    docString: `${manifest.architecture.name} segmentation model exported by Tessera`,
    graphName: manifest.architecture.name,
    nodes: graph.nodes,
    initializers: graph.initializers,
    inputs: [{ name: ONNX_IO.input, dims: ['batch', 'height', 'width', manifest.inputChannels] }],
    outputs: [{ name: ONNX_IO.output, dims: ['batch', 'height', 'width', manifest.classes.length] }],
    metadata: {
      [ONNX_METADATA.manifest]: JSON.stringify(manifest),
      [ONNX_METADATA.weightsSha256]: manifest.files.weights.sha256,
      [ONNX_METADATA.classes]: JSON.stringify(manifest.classes),
      [ONNX_METADATA.normalization]: JSON.stringify(manifest.normalization),
      [ONNX_METADATA.inputMultiple]: String(manifest.architecture.inputMultiple),
    },
  });
}
