/**
 * The few Protocol Buffers messages of ONNX's `onnx.proto` that an exporter writes (ModelProto, GraphProto,
 * NodeProto, AttributeProto, TensorProto, ValueInfoProto), encoded by hand: field numbers follow onnx.proto
 * (IR version 8). Repeated scalars are written unpacked, which every protobuf parser accepts.
 */

/** Growable byte buffer with protobuf's wire-format primitives. */
class Writer {
  private bytes = new Uint8Array(1024);
  length = 0;

  private ensure(extra: number): void {
    if (this.length + extra <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < this.length + extra) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.bytes.subarray(0, this.length));
    this.bytes = next;
  }

  varint(value: number | bigint): void {
    // int64 two's complement for negative values (10 bytes), as protobuf does.
    let v = BigInt.asUintN(64, BigInt(value));
    this.ensure(10);
    while (v >= 0x80n) {
      this.bytes[this.length++] = Number(v & 0x7fn) | 0x80;
      v >>= 7n;
    }
    this.bytes[this.length++] = Number(v);
  }

  tag(field: number, wireType: 0 | 1 | 2 | 5): void {
    this.varint((field << 3) | wireType);
  }

  raw(data: Uint8Array): void {
    this.ensure(data.length);
    this.bytes.set(data, this.length);
    this.length += data.length;
  }

  finish(): Uint8Array {
    return this.bytes.slice(0, this.length);
  }
}

const encoder = new TextEncoder();

/** One message being written: typed field setters in field-number terms. */
class Message {
  readonly w = new Writer();

  int(field: number, value: number | bigint): this {
    this.w.tag(field, 0);
    this.w.varint(value);
    return this;
  }

  ints(field: number, values: readonly (number | bigint)[]): this {
    for (const v of values) this.int(field, v);
    return this;
  }

  float(field: number, value: number): this {
    this.w.tag(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.w.raw(b);
    return this;
  }

  floats(field: number, values: readonly number[]): this {
    for (const v of values) this.float(field, v);
    return this;
  }

  bytes(field: number, data: Uint8Array): this {
    this.w.tag(field, 2);
    this.w.varint(data.length);
    this.w.raw(data);
    return this;
  }

  string(field: number, value: string): this {
    return this.bytes(field, encoder.encode(value));
  }

  strings(field: number, values: readonly string[]): this {
    for (const v of values) this.string(field, v);
    return this;
  }

  message(field: number, message: Message | Uint8Array): this {
    return this.bytes(field, message instanceof Message ? message.w.finish() : message);
  }

  finish(): Uint8Array {
    return this.w.finish();
  }
}

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

function tensorProto(t: TensorData): Message {
  const m = new Message().ints(1, t.dims).int(2, t.values instanceof Float32Array ? DataType.FLOAT : DataType.INT64);
  m.string(8, t.name);
  const bytes = new Uint8Array(t.values.buffer, t.values.byteOffset, t.values.byteLength);
  // raw_data is little-endian; typed arrays are in the platform's order, which is little-endian on every
  // platform Node supports.
  return m.bytes(9, bytes);
}

// AttributeProto.AttributeType
const ATTRIBUTE_TYPE = { float: 1, int: 2, string: 3, tensor: 4, floats: 6, ints: 7 } as const;

function attributeProto(name: string, a: AttributeValue): Message {
  const m = new Message().string(1, name);
  switch (a.type) {
    case 'float':
      m.float(2, a.value);
      break;
    case 'int':
      m.int(3, a.value);
      break;
    case 'string':
      m.string(4, a.value);
      break;
    case 'tensor':
      m.message(5, tensorProto(a.value));
      break;
    case 'floats':
      m.floats(7, a.value);
      break;
    case 'ints':
      m.ints(8, a.value);
      break;
  }
  return m.int(20, ATTRIBUTE_TYPE[a.type]);
}

function nodeProto(n: NodeData): Message {
  const m = new Message().strings(1, n.inputs).strings(2, n.outputs).string(3, n.name).string(4, n.opType);
  for (const [name, a] of Object.entries(n.attributes)) m.message(5, attributeProto(name, a));
  return m;
}

function valueInfoProto(v: ValueInfoData): Message {
  const shape = new Message();
  for (const d of v.dims)
    shape.message(1, typeof d === 'number' ? new Message().int(1, d) : new Message().string(2, d));
  const tensorType = new Message().int(1, DataType.FLOAT).message(2, shape);
  return new Message().string(1, v.name).message(2, new Message().message(1, tensorType));
}

/** Encodes a whole ONNX model (`ModelProto`). */
export function encodeModel(model: ModelData): Uint8Array {
  const graph = new Message();
  for (const n of model.nodes) graph.message(1, nodeProto(n));
  graph.string(2, model.graphName);
  for (const t of model.initializers) graph.message(5, tensorProto(t));
  for (const v of model.inputs) graph.message(11, valueInfoProto(v));
  for (const v of model.outputs) graph.message(12, valueInfoProto(v));
  const m = new Message()
    .int(1, model.irVersion)
    .string(2, model.producerName)
    .string(3, model.producerVersion)
    .string(4, 'org.tessera');
  if (model.docString) m.string(6, model.docString);
  m.message(7, graph);
  m.message(8, new Message().string(1, '').int(2, model.opsetVersion));
  for (const [key, value] of Object.entries(model.metadata))
    m.message(14, new Message().string(1, key).string(2, value));
  return m.finish();
}
