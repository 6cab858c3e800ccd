// A one-node ONNX model `b = a x W` (float32, a: m x k, W: k x n), written with the exporter's own protobuf
// encoder: the GEMMs that measure this machine's fp32 peak for bench/onnx-latency.mjs.
import { encodeModel } from '../packages/onnx/dist/protobuf.js';

export function matmulModel(m, k, n) {
  const w = new Float32Array(k * n);
  for (let i = 0; i < w.length; i++) w[i] = ((i * 104729) % 1000) / 1000 - 0.5;
  return encodeModel({
    irVersion: 8,
    opsetVersion: 17,
    producerName: 'tessera-bench',
    producerVersion: '0',
    graphName: 'gemm',
    nodes: [{ name: 'mm', opType: 'MatMul', inputs: ['a', 'w'], outputs: ['b'], attributes: {} }],
    initializers: [{ name: 'w', dims: [k, n], values: w }],
    inputs: [{ name: 'a', dims: [m, k] }],
    outputs: [{ name: 'b', dims: [m, n] }],
    metadata: {},
  });
}
