/**
 * The ONNX model an exporter writes, as plain data, and its encoding as `onnx.ModelProto` by protobufjs with the
 * schema of `onnx-proto.ts`.
 */
import { ModelProto } from './onnx-proto.js';

/** ONNX TensorProto.DataType values used here. */
export const DataType = { FLOAT: 1, INT64: 7 } as const;

/** An initializer or constant tensor. */
export interface TensorData {
  name: string;
  dims: readonly number[];
  /** float32 or int64 values, stored little-endian in `raw_data`. */
  values: Float32Array | BigInt64Array;
}

/** An attribute value: a float, an int, a string, a list of ints or floats, or a tensor. */
export type AttributeValue =
  | { type: 'float'; value: number }
  | { type: 'int'; value: number }
  | { type: 'string'; value: string }
  | { type: 'ints'; value: readonly number[] }
  | { type: 'floats'; value: readonly number[] }
  | { type: 'tensor'; value: TensorData };

export interface NodeData {
  name: string;
  opType: string;
  inputs: readonly string[];
  outputs: readonly string[];
  attributes: Readonly<Record<string, AttributeValue>>;
}

/** A graph input or output: element type float32, dims numeric or named (dynamic). */
export interface ValueInfoData {
  name: string;
  dims: readonly (number | string)[];
}

export interface ModelData {
  irVersion: number;
  opsetVersion: number;
  producerName: string;
  producerVersion: string;
  docString?: string;
  graphName: string;
  nodes: readonly NodeData[];
  initializers: readonly TensorData[];
  inputs: readonly ValueInfoData[];
  outputs: readonly ValueInfoData[];
  metadata: Readonly<Record<string, string>>;
}

/** The `TensorProto` of a tensor: `raw_data` little-endian (the platform's order on every platform Node supports). */
function tensorProto(t: TensorData) {
  return {
    dims: [...t.dims],
    dataType: t.values instanceof Float32Array ? DataType.FLOAT : DataType.INT64,
    name: t.name,
    rawData: new Uint8Array(t.values.buffer, t.values.byteOffset, t.values.byteLength),
  };
}

// AttributeProto.AttributeType
const ATTRIBUTE_TYPE = { float: 1, int: 2, string: 3, tensor: 4, floats: 6, ints: 7 } as const;

function attributeProto(name: string, a: AttributeValue) {
  const value =
    a.type === 'float'
      ? { f: a.value }
      : a.type === 'int'
        ? { i: a.value }
        : a.type === 'string'
          ? { s: new TextEncoder().encode(a.value) }
          : a.type === 'tensor'
            ? { t: tensorProto(a.value) }
            : a.type === 'floats'
              ? { floats: [...a.value] }
              : { ints: [...a.value] };
  return { name, ...value, type: ATTRIBUTE_TYPE[a.type] };
}

function valueInfoProto(v: ValueInfoData) {
  const dim = v.dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d }));
  return { name: v.name, type: { tensorType: { elemType: DataType.FLOAT, shape: { dim } } } };
}

/** Encodes a whole ONNX model (`ModelProto`). */
export function encodeModel(model: ModelData): Uint8Array {
  const message = ModelProto.fromObject({
    irVersion: model.irVersion,
    producerName: model.producerName,
    producerVersion: model.producerVersion,
    domain: 'org.tessera',
    ...(model.docString ? { docString: model.docString } : {}),
    graph: {
      node: model.nodes.map((n) => ({
        input: [...n.inputs],
        output: [...n.outputs],
        name: n.name,
        opType: n.opType,
        attribute: Object.entries(n.attributes).map(([name, a]) => attributeProto(name, a)),
      })),
      name: model.graphName,
      initializer: model.initializers.map(tensorProto),
      input: model.inputs.map(valueInfoProto),
      output: model.outputs.map(valueInfoProto),
    },
    opsetImport: [{ domain: '', version: model.opsetVersion }],
    metadataProps: Object.entries(model.metadata).map(([key, value]) => ({ key, value })),
  });
  return ModelProto.encode(message).finish();
}
