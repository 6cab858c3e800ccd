/**
 * The public interface for converting a plugin's custom tfjs layers to ONNX. The exporter (`@tessera/onnx`)
 * converts tfjs's built-in layers itself; a plugin whose model uses a layer class of its own lists a converter
 * for it in {@link ArchitecturePlugin.onnxConverters}. Tensors are named by strings; 4-D ones are NCHW.
 */

/** An attribute of an ONNX node: integers, strings and int lists as they are; floats marked. */
export type OnnxAttribute = number | string | readonly number[] | { float: number } | { floats: readonly number[] };

/** A weight of the layer being converted: its tfjs shape (e.g. `[kh, kw, in, out]`) and values. */
export interface OnnxWeight {
  shape: readonly number[];
  values: Float32Array;
}

/** The layer being converted: its class, name, `getConfig()` and weights by short name (`kernel`, `bias`...). */
export interface OnnxLayer {
  className: string;
  name: string;
  config: Readonly<Record<string, unknown>>;
  weights: Readonly<Record<string, OnnxWeight>>;
  /** tfjs (channels-last) shape of the layer's output, `null` for dynamic dimensions. */
  outputShape: readonly (number | null)[];
}

/**
 * A tfjs-style 2-D convolution: `kernel` is `[kh, kw, in, out]` (or `[kh, kw, in, multiplier]` when `depthwise`),
 * padding `same` (TensorFlow's, extra pixel after) or `valid`.
 */
export interface OnnxConvOptions {
  kernel: OnnxWeight;
  bias?: OnnxWeight;
  strides?: readonly [number, number];
  dilations?: readonly [number, number];
  padding: 'same' | 'valid';
  depthwise?: boolean;
}

/** What a converter writes with. */
export interface OnnxGraph {
  /** Adds a node of the default ONNX domain and returns the name of its (first) output. */
  node(opType: string, inputs: readonly string[], attributes?: Readonly<Record<string, OnnxAttribute>>): string;
  /** Adds a float32 constant and returns its name. */
  constant(values: Float32Array, dims: readonly number[]): string;
  /** Adds an int64 constant (e.g. axes, pads, shapes) and returns its name. */
  int64(values: readonly number[]): string;
  /** A tfjs-style 2-D convolution of an NCHW tensor (see {@link OnnxConvOptions}). */
  conv(input: string, options: OnnxConvOptions): string;
  /** A tfjs activation by name (`linear`, `relu`, `relu6`, `sigmoid`, `tanh`, `softmax` over channels...). */
  activation(input: string, name: string): string;
}

/** Converts one layer: receives the names of its (NCHW) inputs and returns the name of its output. */
export type OnnxLayerConverter = (layer: OnnxLayer, inputs: readonly string[], graph: OnnxGraph) => string;
