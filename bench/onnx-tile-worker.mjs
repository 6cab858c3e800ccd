// Worker thread of bench/int8.mjs's model-only ceiling: one onnxruntime-node session with the tiler's threads per
// worker, running batches of pre-decoded, normalised tiles that the main thread placed in a SharedArrayBuffer. No
// decoding, no merging: only the network.
import { parentPort, workerData } from 'node:worker_threads';
import { createOnnxPredictor } from '@tessera/onnx';

const { bytes, threads, shared, shape } = workerData;
const predictor = await createOnnxPredictor(new Uint8Array(bytes), { threads });
const perBatch = shape[0] * shape[1] * shape[2] * shape[3];
parentPort.on('message', async (batch) => {
  if (batch === null) {
    await predictor.dispose();
    parentPort.postMessage('closed');
    return;
  }
  // A copy into this thread's own memory, as the tiler's workers hold their batch (onnxruntime reads plain buffers).
  const input = new Float32Array(perBatch);
  input.set(new Float32Array(shared, batch * perBatch * 4, perBatch));
  await predictor.run(input, shape);
  parentPort.postMessage(batch);
});
parentPort.postMessage('ready');
