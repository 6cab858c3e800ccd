// A one-node ONNX model `b = a x W` (float32 N x N), written with the exporter's own protobuf encoder: the GEMM
// that measures this machine's fp32 peak for bench/onnx-latency.mjs.
import { encodeModel } from '../packages/onnx/dist/protobuf.js';

export function matmulModel(n) {
  const w = new Float32Array(n * n);
  for (let i = 0; i < w.length; i++) w[i] = ((i * 104729) % 1000) / 1000 - 0.5;
  return encodeModel({
    irVersion: 8,
    opsetVersion: 17,
    producerName: 'tessera-bench',
    producerVersion: '0',
    graphName: 'gemm',
    nodes: [{ name: 'mm', opType: 'MatMul', inputs: ['a', 'w'], outputs: ['b'], attributes: {} }],
    initializers: [{ name: 'w', dims: [n, n], values: w }],
    inputs: [{ name: 'a', dims: [n, n] }],
    outputs: [{ name: 'b', dims: [n, n] }],
    metadata: {},
  });
}
