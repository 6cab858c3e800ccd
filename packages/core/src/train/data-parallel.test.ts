import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { ARCHITECTURE_API_VERSION, defineArchitecture } from '../arch/architecture.js';
import { createRandom } from '../data/random.js';
import { randSyntheticTissue } from '../data/synthetic.js';
import { writePng } from '../data/image-io.js';
import { setupEngine } from '../engine/engine.js';
import {
  applyMovingStatistics,
  batchNormLayers,
  chooseWorkers,
  readMovingStatistics,
  resetMovingStatistics,
  splitMicroBatches,
} from './data-parallel.js';
import { defaultTrainer, type TrainEvent, type TrainRequest } from './trainer.js';

/** Conv, batch norm, pool, conv, upsample, 1x1 softmax: small, with batch-norm statistics to keep consistent. */
const tinyNet = defineArchitecture<{ filters: number }>({
  name: 'tiny-net',
  version: '1.0.0',
  apiVersion: ARCHITECTURE_API_VERSION,
  description: 'test network',
  defaults: { filters: 4 },
  optionsSchema: { filters: { type: 'integer', min: 1, max: 64, description: 'filters' } },
  inputMultiple: () => 2,
  receptiveField: () => 9,
  build: ({ inputChannels, numClasses, options, seed = 0 }) => {
    const init = (k: number) => tfl.initializers.heNormal({ seed: seed * 10 + k });
    const input = tfl.input({ shape: [null, null, inputChannels] });
    let x = tfl.layers
      .conv2d({ filters: options.filters, kernelSize: 3, padding: 'same', kernelInitializer: init(1) })
      .apply(input) as tfl.SymbolicTensor;
    x = tfl.layers.batchNormalization({ momentum: 0.9 }).apply(x) as tfl.SymbolicTensor;
    x = tfl.layers.reLU().apply(x) as tfl.SymbolicTensor;
    x = tfl.layers.maxPooling2d({ poolSize: 2 }).apply(x) as tfl.SymbolicTensor;
    x = tfl.layers
      .conv2d({ filters: options.filters, kernelSize: 3, padding: 'same', kernelInitializer: init(2) })
      .apply(x) as tfl.SymbolicTensor;
    x = tfl.layers.batchNormalization().apply(x) as tfl.SymbolicTensor;
    x = tfl.layers.reLU().apply(x) as tfl.SymbolicTensor;
    x = tfl.layers.upSampling2d({ size: [2, 2] }).apply(x) as tfl.SymbolicTensor;
    const output = tfl.layers
      .conv2d({ filters: numClasses, kernelSize: 1, activation: 'softmax', kernelInitializer: init(3) })
      .apply(x) as tfl.SymbolicTensor;
    return tfl.model({ inputs: input, outputs: output });
  },
});

/** A layer class registered in this thread only: worker threads cannot rebuild a model that uses it. */
class LocalScale extends tfl.layers.Layer {
  static className = 'TestLocalScale';
  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return tf.mul(Array.isArray(inputs) ? inputs[0] : inputs, 1);
  }
}
tf.serialization.registerClass(LocalScale);
const localLayerNet = defineArchitecture<{ filters: number }>({
  ...tinyNet,
  name: 'local-layer-net',
  build: (spec) => {
    const inner = tinyNet.build(spec);
    const input = tfl.input({ shape: [null, null, spec.inputChannels] });
    const scaled = new LocalScale({}).apply(input) as tfl.SymbolicTensor;
    return tfl.model({ inputs: input, outputs: inner.apply(scaled) as tfl.SymbolicTensor });
  },
});

let root: string;
/** Batches of 4 crops in micro-batches of 1: 4 micro-batches per step to share. */
const OPTIONS = {
  tileSize: 16,
  batchSize: 4,
  microBatch: 1,
  stepsPerEpoch: 2,
  schedule: 'constant' as const,
  lr: 0.01,
  seed: 5,
  valSplit: 0.25,
};

async function train(name: string, options: Record<string, unknown>, extra: Partial<TrainRequest> = {}) {
  const events: TrainEvent[] = [];
  const out = join(root, name);
  const result = await defaultTrainer().train({
    architecture: tinyNet,
    images: join(root, 'images'),
    masks: join(root, 'masks'),
    out,
    options: { ...OPTIONS, ...options },
    onEvent: (e) => events.push(e),
    ...extra,
  });
  const start = events.find((e) => e.type === 'start') as Extract<TrainEvent, { type: 'start' }>;
  // Checkpoints are named by step; validation (and so a checkpoint) falls at each epoch's end.
  const weights = (epoch: number) =>
    readFile(join(out, 'checkpoints', `step-${String(epoch * OPTIONS.stepsPerEpoch).padStart(7, '0')}`, 'weights.bin'));
  return { result, start, weights, events };
}

beforeAll(async () => {
  await setupEngine('wasm');
  root = await mkdtemp(join(tmpdir(), 'tessera-workers-'));
  await mkdir(join(root, 'images'));
  await mkdir(join(root, 'masks'));
  const rng = createRandom(3);
  for (let i = 0; i < 4; i++) {
    const { image, mask } = randSyntheticTissue({ width: 32, height: 32, density: 30 }, rng.fork(i));
    await writePng(join(root, 'images', `s${i}.png`), image);
    await writePng(join(root, 'masks', `s${i}.png`), { data: mask.data, width: 32, height: 32, channels: 1 });
  }
});
afterAll(async () => rm(root, { recursive: true, force: true }));

describe('splitMicroBatches and chooseWorkers', () => {
  it('splits micro-batches into contiguous blocks, the first no larger than the others', () => {
    expect(splitMicroBatches(2, 2)).toEqual([[0], [1]]);
    expect(splitMicroBatches(3, 2)).toEqual([[0], [1, 2]]);
    expect(splitMicroBatches(4, 3)).toEqual([[0], [1], [2, 3]]);
    expect(splitMicroBatches(2, 1)).toEqual([[0, 1]]);
  });

  it('defaults to the cores on wasm with 2 or more micro-batches, else 1, and caps a request', () => {
    expect(chooseWorkers(null, 'wasm', 2, 2)).toEqual({
      workers: 2,
      reason: 'default: 2 CPU cores, 2 micro-batches per step',
    });
    expect(chooseWorkers(null, 'wasm', 8, 4).workers).toBe(4);
    expect(chooseWorkers(null, 'wasm', 1, 2)).toEqual({
      workers: 1,
      reason: 'default: 1 micro-batch per step, nothing to share',
    });
    expect(chooseWorkers(null, 'tfjs-node', 4, 2)).toEqual({
      workers: 1,
      reason: 'default: the tfjs-node engine trains on one thread unless asked',
    });
    expect(chooseWorkers(3, 'cpu', 2, 2)).toEqual({
      workers: 2,
      reason: '3 asked for, capped at the 2 micro-batches per step',
    });
    expect(chooseWorkers(2, 'wasm', 4, 16)).toEqual({ workers: 2, reason: 'asked for' });
  });
});

describe('moving statistics', () => {
  it('replays a batch-norm update from recorded batch statistics to the same bits', () => {
    const build = () => {
      const input = tfl.input({ shape: [4, 4, 3] });
      const output = tfl.layers.batchNormalization({ momentum: 0.9 }).apply(input) as tfl.SymbolicTensor;
      return tfl.model({ inputs: input, outputs: output });
    };
    const x1 = tf.randomNormal([2, 4, 4, 3], 1, 2, 'float32', 1);
    const x2 = tf.randomNormal([2, 4, 4, 3], -1, 3, 'float32', 2);
    // Reference: the layer sees both batches.
    const reference = build();
    tf.dispose([reference.apply(x1, { training: true }), reference.apply(x2, { training: true })] as tf.Tensor[]);
    // Replica: the layer sees x1; x2's statistics are recorded in another replica and replayed.
    const replica = build();
    tf.dispose(replica.apply(x1, { training: true }) as tf.Tensor);
    const recorder = build();
    const recorderLayers = batchNormLayers(recorder);
    resetMovingStatistics(recorderLayers);
    tf.dispose(recorder.apply(x2, { training: true }) as tf.Tensor);
    const statistics = readMovingStatistics(recorderLayers);
    expect(Array.from(statistics.subarray(0, 3)).every((m) => m < 0)).toBe(true); // x2's means, about -1
    applyMovingStatistics(batchNormLayers(replica), statistics);
    expect(readMovingStatistics(batchNormLayers(replica))).toEqual(readMovingStatistics(batchNormLayers(reference)));
    tf.dispose([x1, x2]);
  });
});

describe('training with workers', () => {
  it('gives the 1-worker weights and losses bit for bit with 2 and 3 workers', async () => {
    const one = await train('w1', { epochs: 2, workers: 1 });
    const two = await train('w2', { epochs: 2, workers: 2 });
    const three = await train('w3', { epochs: 2, workers: 3 });
    expect([one.start.workers, two.start.workers, three.start.workers]).toEqual([1, 2, 3]);
    expect(two.start.workersReason).toBe('asked for');
    for (const run of [two, three]) {
      expect(run.result.history.map((h) => h.trainLoss)).toEqual(one.result.history.map((h) => h.trainLoss));
      expect(run.result.history.map((h) => h.valLoss)).toEqual(one.result.history.map((h) => h.valLoss));
      // weights.bin holds the trainable weights and the batch-norm moving statistics.
      expect((await run.weights(2)).equals(await one.weights(2))).toBe(true);
    }
    // A training step changed the weights (the comparison is not between initial weights).
    expect((await one.weights(1)).equals(await one.weights(2))).toBe(false);
  });

  it('stops on abort and resumes, with 2 workers, to the weights of an uninterrupted 2-worker run', async () => {
    const straight = await train('w2-straight', { epochs: 3, workers: 2 });
    const controller = new AbortController();
    const stopped = await train(
      'w2-resumed',
      { epochs: 3, workers: 2 },
      { signal: controller.signal, onEvent: (e) => e.type === 'step' && e.epoch === 2 && controller.abort() },
    );
    expect(stopped.result.stopReason).toBe('interrupted');
    expect(stopped.result.history).toHaveLength(1);
    const resumed = await train('w2-resumed', { epochs: 3, workers: 2 }, { resume: true });
    expect(resumed.start.workers).toBe(2);
    expect(resumed.result.history.map((h) => h.trainLoss)).toEqual(straight.result.history.map((h) => h.trainLoss));
    expect((await resumed.weights(3)).equals(await straight.weights(3))).toBe(true);
  });

  it('falls back to one thread, saying why, when the workers cannot rebuild a layer', async () => {
    const run = await train('fallback', { epochs: 1, stepsPerEpoch: 1, workers: 2 }, { architecture: localLayerNet });
    expect(run.start.workers).toBe(1);
    expect(run.start.workersReason).toMatch(
      /^the worker threads failed to start \(.*TestLocalScale.*\); training on one thread \(wanted 2: asked for\)$/,
    );
    expect(run.result.history).toHaveLength(1);
  });
});
