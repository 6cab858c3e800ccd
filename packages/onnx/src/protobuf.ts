/**
 * The ONNX model an exporter writes, as plain data, its encoding as `onnx.ModelProto` by protobufjs with the
 * schema of `onnx-proto.ts`, and the decoding of such a model back to plain data.
 */
import { ModelFormatError } from '@tessera/core';
import { ModelProto } from './onnx-proto.js';

/** ONNX TensorProto.DataType values used here. */
export const DataType = { FLOAT: 1, UINT8: 2, INT8: 3, INT32: 6, INT64: 7 } as const;

/** The values of a tensor: float32, uint8, int8, int32 or int64. */
export type TensorValues = Float32Array | Uint8Array | Int8Array | Int32Array | BigInt64Array;

/** An initializer or constant tensor. */
export interface TensorData {
  name: string;
  dims: readonly number[];
  /** The values, stored little-endian in `raw_data`; the array type gives the ONNX data type. */
  values: TensorValues;
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

/** A graph input or output: element type float32, dims numeric or named (dynamic), or no shape at all. */
export interface ValueInfoData {
  name: string;
  dims?: readonly (number | string)[];
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

function dataType(values: TensorValues): number {
  if (values instanceof Float32Array) return DataType.FLOAT;
  if (values instanceof Uint8Array) return DataType.UINT8;
  if (values instanceof Int8Array) return DataType.INT8;
  if (values instanceof Int32Array) return DataType.INT32;
  return DataType.INT64;
}

/** The `TensorProto` of a tensor: `raw_data` little-endian (the platform's order on every platform Node supports). */
function tensorProto(t: TensorData) {
  return {
    dims: [...t.dims],
    dataType: dataType(t.values),
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
  if (!v.dims) return { name: v.name, type: { tensorType: { elemType: DataType.FLOAT } } };
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

/** `onnx.ModelProto` as protobufjs's `toObject` gives it (int64 as numbers), the fields of `onnx-proto.ts` only. */
interface DecodedTensor {
  name?: string;
  dims?: number[];
  dataType?: number;
  rawData?: Uint8Array;
}
interface DecodedAttribute {
  name: string;
  type?: number;
  f?: number;
  i?: number;
  s?: Uint8Array;
  t?: DecodedTensor;
  floats?: number[];
  ints?: number[];
}
interface DecodedValueInfo {
  name: string;
  type?: { tensorType?: { elemType?: number; shape?: { dim?: { dimValue?: number; dimParam?: string }[] } } };
}
interface DecodedModel {
  irVersion?: number;
  producerName?: string;
  producerVersion?: string;
  docString?: string;
  graph?: {
    node?: { input?: string[]; output?: string[]; name?: string; opType: string; attribute?: DecodedAttribute[] }[];
    name?: string;
    initializer?: DecodedTensor[];
    input?: DecodedValueInfo[];
    output?: DecodedValueInfo[];
  };
  opsetImport?: { domain?: string; version?: number }[];
  metadataProps?: { key?: string; value?: string }[];
}

const TYPED_ARRAYS: Record<number, { new (buffer: ArrayBuffer): TensorValues; BYTES_PER_ELEMENT: number }> = {
  [DataType.FLOAT]: Float32Array,
  [DataType.UINT8]: Uint8Array,
  [DataType.INT8]: Int8Array,
  [DataType.INT32]: Int32Array,
  [DataType.INT64]: BigInt64Array,
};

function tensorData(t: DecodedTensor): TensorData {
  const name = t.name ?? '';
  const dims = t.dims ?? [];
  const Typed = TYPED_ARRAYS[t.dataType ?? 0];
  const count = dims.reduce((a, b) => a * b, 1);
  const raw = t.rawData ?? new Uint8Array(0);
  if (!Typed || raw.byteLength !== count * Typed.BYTES_PER_ELEMENT) {
    throw new ModelFormatError(
      `Cannot read tensor "${name}" of the ONNX model: data type ${t.dataType} with ${raw.byteLength} bytes of ` +
        `raw_data for dims [${dims.join(', ')}] (expected float, uint8, int8, int32 or int64 values in raw_data).`,
      'Give a model written by `tessera export <model> --format onnx`.',
    );
  }
  // A copy, so that the values are aligned to their element size.
  return { name, dims, values: new Typed(new Uint8Array(raw).buffer) };
}

function attributeValue(a: DecodedAttribute): AttributeValue {
  const type = Object.entries(ATTRIBUTE_TYPE).find(([, code]) => code === a.type)?.[0];
  switch (type) {
    case 'float':
      return { type: 'float', value: a.f ?? 0 };
    case 'int':
      return { type: 'int', value: a.i ?? 0 };
    case 'string':
      return { type: 'string', value: new TextDecoder().decode(a.s ?? new Uint8Array(0)) };
    case 'tensor':
      return { type: 'tensor', value: tensorData(a.t ?? {}) };
    case 'floats':
      return { type: 'floats', value: a.floats ?? [] };
    case 'ints':
      return { type: 'ints', value: a.ints ?? [] };
    default:
      throw new ModelFormatError(
        `Cannot read attribute "${a.name}" of the ONNX model: attribute type ${a.type} (expected float, int, string, tensor, floats or ints).`,
        'Give a model written by `tessera export <model> --format onnx`.',
      );
  }
}

function valueInfoData(v: DecodedValueInfo): ValueInfoData {
  const dim = v.type?.tensorType?.shape?.dim;
  return { name: v.name, dims: dim?.map((d) => d.dimParam ?? d.dimValue ?? '?') };
}

/**
 * Decodes an ONNX model written by {@link encodeModel} (the fields of `onnx-proto.ts`; others are dropped) back to
 * plain data: `encodeModel(decodeModel(bytes))` writes the same model.
 * @throws ModelFormatError when a tensor is not float, uint8, int8, int32 or int64 values in `raw_data`, or an
 *   attribute is of another type; Error from protobufjs when the bytes are not a protobuf message.
 */
export function decodeModel(bytes: Uint8Array): ModelData {
  const m = ModelProto.toObject(ModelProto.decode(bytes), { longs: Number }) as DecodedModel;
  const graph = m.graph ?? {};
  return {
    irVersion: m.irVersion ?? 0,
    opsetVersion: m.opsetImport?.find((o) => !o.domain)?.version ?? 0,
    producerName: m.producerName ?? '',
    producerVersion: m.producerVersion ?? '',
    docString: m.docString,
    graphName: graph.name ?? '',
    nodes: (graph.node ?? []).map((n) => ({
      name: n.name ?? '',
      opType: n.opType,
      inputs: n.input ?? [],
      outputs: n.output ?? [],
      attributes: Object.fromEntries((n.attribute ?? []).map((a) => [a.name, attributeValue(a)])),
    })),
    initializers: (graph.initializer ?? []).map(tensorData),
    inputs: (graph.input ?? []).map(valueInfoData),
    outputs: (graph.output ?? []).map(valueInfoData),
    metadata: Object.fromEntries((m.metadataProps ?? []).map((p) => [p.key ?? '', p.value ?? ''])),
  };
}
