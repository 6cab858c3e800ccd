/**
 * A fresh worker thread for the conformance kit's {@link checkSaveLoad}: it loads a saved model the way training
 * workers, whole-slide workers, `evaluate` and `predict` do (a new TensorFlow.js instance that has only imported the
 * plugin's module, never called its `build()`), predicts one input and sends the probabilities back.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs-core';
import { importPluginModules } from '../arch/plugin-layers.js';
import { setupEngine } from '../engine/engine.js';
import { TesseraError } from '../errors.js';
import { loadModel } from '../model/model-io.js';

/** What the kit sends. */
export interface LoadWorkerInit {
  module: string;
  dir: string;
  engine?: string;
  input: Float32Array;
  shape: [number, number, number, number];
}

/** What the worker answers. */
export type LoadWorkerReply = { probabilities: Float32Array } | { error: { message: string; hint?: string } };

async function run(init: LoadWorkerInit): Promise<Float32Array> {
  await setupEngine(init.engine);
  await importPluginModules([init.module]);
  const { model } = await loadModel(init.dir);
  try {
    return tf.tidy(() => (model.predict(tf.tensor4d(init.input, init.shape)) as tf.Tensor).dataSync() as Float32Array);
  } finally {
    model.dispose();
  }
}

run(workerData as LoadWorkerInit).then(
  (probabilities) => parentPort!.postMessage({ probabilities } satisfies LoadWorkerReply),
  (error: Error) =>
    parentPort!.postMessage({
      error: { message: error.message.split('\n')[0], hint: error instanceof TesseraError ? error.hint : undefined },
    } satisfies LoadWorkerReply),
);
