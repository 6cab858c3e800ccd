/** Checkpoints of a training run: the model, optimizer, weight average and loop state after a validation. */
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { writeFileAtomic } from '../data/image-io.js';
import { MODEL_FILES, serializeModel } from '../model/model-io.js';
import type { WeightAverage } from './recipe.js';
import type { EpochRecord } from './trainer.js';
import type { Normalization } from '../data/dataset.js';

export interface CheckpointState {
  epoch: number;
  step: number;
  history: EpochRecord[];
  /** The kept validation's row, or null before the first. */
  best: EpochRecord | null;
  validationsWithoutImprovement: number;
  elapsedSeconds: number;
  startedAt: string;
  /** Updates folded into the weight average (its values are in `average.bin`). */
  averageUpdates: number;
  /** Architecture options chosen by the run (the plugin's small network, or its defaults). */
  architectureOptions: Record<string, unknown>;
  /** Layers loaded from the initial model of a run with `init` (they may train at `lrPretrained`, or be frozen). */
  pretrainedLayers?: string[];
  /** The run's input normalisation (inherited from the initial model, or computed), so a resumed run keeps it. */
  normalization?: Normalization;
}

export const CHECKPOINTS = 'checkpoints';

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

export async function saveCheckpoint(
  dir: string,
  model: tfl.LayersModel,
  optimizer: tf.Optimizer,
  average: WeightAverage | undefined,
  state: CheckpointState,
): Promise<void> {
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  const { topology, weights } = await serializeModel(model);
  const optimizerWeights = await optimizer.getWeights();
  const encoded = await tf.io.encodeWeights(optimizerWeights);
  await writeFileAtomic(join(tmp, MODEL_FILES.topology), topology);
  await writeFileAtomic(join(tmp, MODEL_FILES.weights), weights);
  await writeFileAtomic(join(tmp, 'optimizer.bin'), new Uint8Array(tf.io.CompositeArrayBuffer.join(encoded.data)));
  await writeFileAtomic(join(tmp, 'optimizer.json'), JSON.stringify(encoded.specs));
  if (average) {
    const values = await tf.io.encodeWeights(average.values().map((tensor, i) => ({ name: `average_${i}`, tensor })));
    await writeFileAtomic(join(tmp, 'average.bin'), new Uint8Array(tf.io.CompositeArrayBuffer.join(values.data)));
    await writeFileAtomic(join(tmp, 'average.json'), JSON.stringify(values.specs));
  }
  await writeFileAtomic(join(tmp, 'state.json'), JSON.stringify(state, null, 2));
  await rm(dir, { recursive: true, force: true });
  await rename(tmp, dir);
}

export async function latestCheckpoint(out: string): Promise<string | undefined> {
  const dir = join(out, CHECKPOINTS);
  if (!(await exists(dir))) return undefined;
  const names = (await readdir(dir)).filter((n) => /^step-\d+$/.test(n)).sort();
  for (let i = names.length - 1; i >= 0; i--) {
    if (await exists(join(dir, names[i], 'state.json'))) return join(dir, names[i]);
  }
  return undefined;
}

export async function readNamedWeights(dir: string, name: string): Promise<{ name: string; tensor: tf.Tensor }[]> {
  const specs = JSON.parse(await readFile(join(dir, `${name}.json`), 'utf8')) as tf.io.WeightsManifestEntry[];
  const bytes = await readFile(join(dir, `${name}.bin`));
  const named = tf.io.decodeWeights(
    bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer,
    specs,
  );
  return specs.map((spec) => ({ name: spec.name, tensor: named[spec.name] }));
}

export async function pruneCheckpoints(dir: string, keep: number): Promise<void> {
  const names = (await readdir(dir)).filter((n) => /^step-\d+$/.test(n)).sort();
  for (const name of names.slice(0, Math.max(0, names.length - Math.max(1, keep)))) {
    await rm(join(dir, name), { recursive: true, force: true });
  }
}
