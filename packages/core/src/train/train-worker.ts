/**
 * A training worker thread (see `data-parallel.ts`): sets up the main thread's engine, imports the plugin modules,
 * rebuilds the model and answers `step` tasks with the loss, gradients and batch-norm batch statistics of each
 * micro-batch of its share.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs-core';
import { importPluginModules } from '../arch/plugin-layers.js';
import { setupEngine } from '../engine/engine.js';
import { deserializeModel } from '../model/model-io.js';
import {
  batchNormLayers,
  microBatchGradients,
  readMovingStatistics,
  resetMovingStatistics,
  type RemoteMicroBatch,
  type TrainWorkerInit,
  type TrainWorkerMessage,
  type TrainWorkerTask,
} from './data-parallel.js';
import { LayerFreeze } from './freeze.js';
import { getLoss } from './losses.js';

const init = workerData as TrainWorkerInit;
const port = parentPort!;
const post = (message: TrainWorkerMessage, transfer: ArrayBuffer[] = []) => port.postMessage(message, transfer);

async function start() {
  await setupEngine(init.engine);
  // The plugins register their `layers` (and, written before `layers`, whatever their factories register).
  await importPluginModules(init.pluginModules);
  const model = await deserializeModel(init.topology, init.weights, 'the model sent to a training worker');
  const weights = model.trainableWeights;
  const shapes = weights.map((w) => w.shape as number[]);
  if (JSON.stringify(shapes) !== JSON.stringify(init.shapes)) {
    throw new Error('the rebuilt model has other trainable weights than the main thread');
  }
  const layers = batchNormLayers(model);
  const shared = layers.find((l) => (l as unknown as { inboundNodes: unknown[] }).inboundNodes.length > 1);
  if (shared) throw new Error(`batch-norm layer "${shared.name}" is applied more than once per forward pass`);
  if (readMovingStatistics(layers).length !== init.statisticsSize) {
    throw new Error('the rebuilt model has other batch-norm layers than the main thread');
  }
  const sizes = shapes.map((s) => tf.util.sizeFromShape(s));
  const total = sizes.reduce((a, b) => a + b, 0);
  const freeze = new LayerFreeze(model, init.frozenLayers);
  return { model, weights, layers, freeze, sizes, total, lossFn: getLoss(init.loss, init.lossOptions), version: 0 };
}

type State = Awaited<ReturnType<typeof start>>;

function step(state: State, task: TrainWorkerTask): { parts: RemoteMicroBatch[]; transfer: ArrayBuffer[] } {
  if (task.version !== state.version) {
    const published = new Float32Array(init.weightBuffer);
    let offset = 0;
    state.weights.forEach((w, i) => {
      const values = published.slice(offset, offset + state.sizes[i]);
      offset += state.sizes[i];
      // The raw variable, as the optimizer updates it (LayerVariable.write would apply constraints).
      tf.tidy(() => (w.read() as tf.Variable).assign(tf.tensor(values, w.shape as number[])));
    });
    state.version = task.version;
  }
  const variables = state.weights.map((w) => w.read() as tf.Variable);
  state.freeze.active = task.frozen;
  const trained = state.freeze.trained(variables);
  // A frozen batch norm keeps its moving statistics: they are not reset, nor reported.
  const norms = state.freeze.updatedNorms(state.layers);
  const parts: RemoteMicroBatch[] = [];
  const transfer: ArrayBuffer[] = [];
  let start = 0;
  for (const n of task.sizes) {
    resetMovingStatistics(norms);
    const { loss, grads } = microBatchGradients(
      state.model,
      trained,
      state.lossFn,
      task.images,
      task.labels,
      start,
      n,
      task.tile,
      task.channels,
    );
    start += n;
    const flat = new Float32Array(state.total);
    const present: number[] = [];
    let offset = 0;
    variables.forEach((v, i) => {
      const g = grads[v.name];
      if (g) {
        flat.set(g.dataSync() as Float32Array, offset);
        present.push(i);
        g.dispose();
      }
      offset += state.sizes[i];
    });
    const statistics = readMovingStatistics(norms);
    parts.push({ loss, grads: flat, present, statistics });
    transfer.push(flat.buffer, statistics.buffer as ArrayBuffer);
  }
  return { parts, transfer };
}

const ready = start();
ready.then(
  () => post({ type: 'ready' }),
  (error: Error) => post({ type: 'error', message: error.message.split('\n')[0] }),
);
port.on('message', (task: TrainWorkerTask) => {
  ready
    .then((state) => {
      const { parts, transfer } = step(state, task);
      post({ type: 'result', parts }, transfer);
    })
    .catch((error: Error) => post({ type: 'error', message: error.message.split('\n')[0] }));
});
