/**
 * Conformance checks of the architecture plugin contract: plain functions that throw a descriptive
 * {@link PluginError} when a plugin breaks the contract, and return what they measured otherwise. Test runners
 * (vitest, node:test) call them from one table over every registered architecture; nothing here imports a test
 * framework. Run them on an initialised engine (`await setupEngine('wasm')`).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { Worker } from 'node:worker_threads';
import { resolveArchitectureOptions, type ArchitecturePlugin } from '../arch/architecture.js';
import { checkInputSize } from '../arch/check-input.js';
import { buildArchitecture, checkModelOutput, registerPluginLayers } from '../arch/plugin-layers.js';
import { activeEngine } from '../engine/engine.js';
import { createRandom } from '../data/random.js';
import { randSyntheticTissue } from '../data/synthetic.js';
import { InvalidOptionError, PluginError } from '../errors.js';
import { countParameters, draftManifest, loadModel, saveModel } from '../model/model-io.js';
import { getLoss } from '../train/losses.js';
import type { LoadWorkerInit, LoadWorkerReply } from './load-worker.js';
import { createOptimizer } from '../train/optimizers.js';

type AnyPlugin = ArchitecturePlugin<any>;

/** Shape of one conformance case. */
export interface ConformanceShape {
  batch: number;
  height: number;
  width: number;
  inputChannels: number;
  numClasses: number;
}

/** Deterministic uniform values in `[lo, hi)`. */
function uniform(size: number, seed: number, lo = 0, hi = 1): Float32Array {
  const rng = createRandom(seed);
  return Float32Array.from({ length: size }, () => rng.uniform(lo, hi));
}

function where(plugin: AnyPlugin, options: object): string {
  return `architecture "${plugin.name}" with options ${JSON.stringify(options)}`;
}

/**
 * Builds the plugin's model and checks that it maps `[batch, height, width, inputChannels]` to
 * `[batch, height, width, numClasses]` probabilities: finite, in `[0, 1]`, summing to 1 per pixel. The build itself is
 * checked as the trainer checks it ({@link buildArchitecture}): a layer class registered inside `build()` instead of
 * declared in `layers`, or a model of a second copy of TensorFlow.js, is refused.
 *
 * @param userOptions options validated against the plugin's schema (defaults fill the rest).
 * @throws PluginError naming the architecture, the case and what came out.
 * @returns the built model (the caller disposes it) and the resolved options.
 */
export function checkOutputContract(
  plugin: AnyPlugin,
  userOptions: Record<string, unknown>,
  shape: ConformanceShape,
  seed = 1,
): { model: tfl.LayersModel; options: object } {
  const options = resolveArchitectureOptions(plugin, userOptions);
  const { height, inputChannels, numClasses } = shape;
  const model = buildArchitecture(plugin, { inputChannels, numClasses, options, seed, tileSize: height });
  try {
    checkModelOutput(plugin, options, model, shape, seed);
  } catch (error) {
    model.dispose();
    throw error;
  }
  return { model, options };
}

/**
 * Checks that {@link checkInputSize} rejects an image one multiple plus half a multiple high (not divisible), with
 * the message that tells the user how to pad. Plugins whose input multiple is 1 accept every size and pass.
 *
 * @throws PluginError when the check does not reject the size, or rejects it with another message.
 * @returns the error message, or `undefined` for multiple 1.
 */
export function checkInputMultiple(plugin: AnyPlugin, userOptions: Record<string, unknown>): string | undefined {
  const options = resolveArchitectureOptions(plugin, userOptions);
  const multiple = plugin.inputMultiple(options);
  if (!Number.isInteger(multiple) || multiple < 1) {
    throw new PluginError(
      `Expected a positive integer input multiple from ${where(plugin, options)} but received ${multiple}.`,
    );
  }
  if (multiple === 1) return undefined;
  const bad = multiple + Math.max(1, Math.floor(multiple / 2));
  checkInputSize(plugin, options, multiple * 2, multiple); // a valid size passes
  try {
    checkInputSize(plugin, options, bad, multiple);
  } catch (error) {
    const want = `Expected image height and width divisible by ${multiple} for architecture "${plugin.name}" but received ${bad}x${multiple}. Pad the image to ${2 * multiple}x${multiple} (or use --tile ${2 * multiple}).`;
    if (!(error instanceof InvalidOptionError) || error.message !== want) {
      throw new PluginError(
        `checkInputSize rejected ${bad}x${multiple} with "${(error as Error).message}", expected "${want}".`,
      );
    }
    return error.message;
  }
  throw new PluginError(
    `checkInputSize accepted ${bad}x${multiple} for ${where(plugin, options)} (multiple ${multiple}).`,
  );
}

/** Options of {@link checkSaveLoad}. */
export interface SaveLoadCheckOptions {
  /**
   * The plugin's module (a file URL or package name, e.g. `new URL('./index.js', import.meta.url)`). When given, the
   * saved model is also loaded in a fresh worker thread that only imports this module, as training workers,
   * whole-slide workers, `evaluate` and `predict` do, and must give the same probabilities. `tessera check-plugin`
   * always does this.
   */
  module?: string | URL;
}

/** What {@link checkSaveLoad} measured. */
export interface SaveLoadCheckResult {
  /** Largest probability difference between the saved model and the one loaded back in this thread. */
  maxDifference: number;
  /** The same for the model loaded in a fresh worker thread, when `module` was given. */
  freshThreadMaxDifference?: number;
}

function whereToLoadWorker(): string {
  const here = fileURLToPath(import.meta.url);
  // Core's own tests run the TypeScript sources; the worker thread runs the build.
  return here.endsWith('.ts')
    ? join(dirname(here), '../../dist/testing/load-worker.js')
    : join(dirname(here), 'load-worker.js');
}

/** Loads the model folder `dir` in a fresh worker thread that imports only `module`; returns its probabilities. */
async function loadInFreshThread(
  plugin: AnyPlugin,
  module: string,
  dir: string,
  input: Float32Array,
  shape: [number, number, number, number],
): Promise<Float32Array> {
  const init: LoadWorkerInit = { module, dir, engine: activeEngine()?.name, input, shape };
  const reply = await new Promise<LoadWorkerReply>((resolve, reject) => {
    const worker = new Worker(whereToLoadWorker(), { workerData: init });
    worker.once('message', (message: LoadWorkerReply) => {
      resolve(message);
      void worker.terminate();
    });
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`the worker thread exited with code ${code}`)));
  }).catch((error: Error) => ({ error: { message: error.message, hint: undefined } }));
  if ('error' in reply) {
    throw new PluginError(
      `A fresh worker thread that imports ${module} (as training workers, evaluate and predict do) could not load ` +
        `the saved model of architecture "${plugin.name}": ${reply.error.message}`,
      reply.error.hint ??
        'Declare every custom layer class in the plugin\'s "layers" rather than registering it in build().',
    );
  }
  return reply.probabilities;
}

/**
 * Saves `model` with core's `saveModel`, loads it back with `loadModel` and checks that both give the same
 * probabilities (to 1e-5) on a fixed input, and the same parameter count. With `module`, the model is also loaded in
 * a fresh worker thread as training workers, `evaluate` and `predict` load it (see {@link SaveLoadCheckOptions}).
 *
 * @throws PluginError when the reloaded model differs or a fresh thread cannot load it; core's ModelFormatError when
 * it cannot be reloaded here (e.g. a custom layer class that is not registered).
 */
export async function checkSaveLoad(
  plugin: AnyPlugin,
  options: object,
  model: tfl.LayersModel,
  shape: ConformanceShape,
  check: SaveLoadCheckOptions = {},
): Promise<SaveLoadCheckResult> {
  const dir = await mkdtemp(join(tmpdir(), `tessera-conformance-${plugin.name}-`));
  try {
    const draft = draftManifest(plugin, options, model, {
      classes: Array.from({ length: shape.numClasses }, (_, i) => ({
        name: `class${i}`,
        value: i,
        color: '#000000',
      })),
      inputChannels: shape.inputChannels,
      normalization: {
        mean: Array.from({ length: shape.inputChannels }, () => 0.5),
        std: Array.from({ length: shape.inputChannels }, () => 0.25),
      },
      tileSize: shape.height,
      mpp: null,
      createdBy: 'tessera conformance',
    });
    await saveModel(dir, model, draft);
    registerPluginLayers(plugin);
    const { model: loaded } = await loadModel(dir);
    try {
      if (countParameters(loaded) !== countParameters(model)) {
        throw new PluginError(
          `The reloaded ${where(plugin, options)} has ${countParameters(loaded)} parameters, the saved one ${countParameters(model)}.`,
        );
      }
      const { batch, height, width, inputChannels } = shape;
      const input = uniform(batch * height * width * inputChannels, 99);
      const inputShape: [number, number, number, number] = [batch, height, width, inputChannels];
      const expected = tf.tidy(() => (model.predict(tf.tensor4d(input, inputShape)) as tf.Tensor).dataSync());
      const difference = (actual: ArrayLike<number>) => {
        if (actual.length !== expected.length) return Infinity;
        let max = 0;
        for (let i = 0; i < actual.length; i++) max = Math.max(max, Math.abs(actual[i] - expected[i]));
        return max;
      };
      const maxDifference = difference(
        tf.tidy(() => (loaded.predict(tf.tensor4d(input, inputShape)) as tf.Tensor).dataSync()),
      );
      if (!(maxDifference <= 1e-5)) {
        throw new PluginError(
          `The reloaded ${where(plugin, options)} gives other probabilities than the saved one (max difference ${maxDifference}).`,
          'Every layer must serialise its whole configuration (getConfig) and all its weights.',
        );
      }
      if (check.module === undefined) return { maxDifference };
      const fresh = await loadInFreshThread(plugin, String(check.module), dir, input, inputShape);
      const freshThreadMaxDifference = difference(fresh);
      if (!(freshThreadMaxDifference <= 1e-5)) {
        throw new PluginError(
          `The ${where(plugin, options)} loaded in a fresh worker thread from ${String(check.module)} gives other ` +
            `probabilities than the saved one (max difference ${freshThreadMaxDifference}).`,
          'Every layer must serialise its whole configuration (getConfig) and all its weights.',
        );
      }
      return { maxDifference, freshThreadMaxDifference };
    } finally {
      loaded.dispose();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Options of {@link checkTraining}. */
export interface TrainingCheckOptions {
  /** Side of the synthetic images (a multiple of the input multiple). Default 64. */
  size?: number;
  /** Number of synthetic images. Default 2. */
  images?: number;
  /** Optimisation steps (Adam, one batch of all images). Default 60. */
  steps?: number;
  /** Learning rate. Default 0.01. */
  lr?: number;
  /** Required final pixel accuracy. Default 0.9. */
  minAccuracy?: number;
  /** Required ratio last loss / first loss at most. Default 0.5. */
  maxLossRatio?: number;
  seed?: number;
}

/** What {@link checkTraining} measured. */
export interface TrainingCheckResult {
  firstLoss: number;
  lastLoss: number;
  accuracy: number;
  /** Share of the majority class: the accuracy of a constant prediction. */
  majority: number;
  steps: number;
  seconds: number;
}

/**
 * Trains a fresh model (3 input channels, 2 classes) on a fixed set of synthetic H&E-like images
 * (`randSyntheticTissue`, nuclei vs background) with Adam and cross-entropy, and checks that the loss falls and
 * that the pixel accuracy on the training images (batch statistics, as in training) reaches `minAccuracy` and beats
 * a constant prediction.
 *
 * @throws PluginError with the losses and accuracy reached.
 */
export function checkTraining(
  plugin: AnyPlugin,
  userOptions: Record<string, unknown>,
  opts: TrainingCheckOptions = {},
): TrainingCheckResult {
  const { size = 64, images = 2, steps = 60, lr = 0.01, minAccuracy = 0.9, maxLossRatio = 0.5, seed = 3 } = opts;
  const options = resolveArchitectureOptions(plugin, userOptions);
  const model = buildArchitecture(plugin, { inputChannels: 3, numClasses: 2, options, seed, tileSize: size });
  const rng = createRandom(11);
  const samples = Array.from({ length: images }, (_, i) =>
    randSyntheticTissue({ width: size, height: size, density: 40 }, rng.fork(i)),
  );
  const labels = Int32Array.from(samples.flatMap((s) => Array.from(s.mask.data)));
  const ones = labels.reduce((a, b) => a + b, 0);
  const majority = Math.max(ones, labels.length - ones) / labels.length;
  const optimizer = createOptimizer('adam', lr);
  const loss = getLoss('cross-entropy');
  const start = performance.now();
  let firstLoss = NaN;
  let lastLoss = NaN;
  let accuracy = 0;
  try {
    const [x, y] = [
      tf.tensor4d(Float32Array.from(samples.flatMap((s) => Array.from(s.image.data, (v) => v / 255 - 0.5))), [
        images,
        size,
        size,
        3,
      ]),
      tf.tensor3d(labels, [images, size, size], 'int32'),
    ];
    const variables = model.trainableWeights.map((v) => v.read() as tf.Variable);
    for (let step = 0; step < steps; step++) {
      lastLoss = tf.tidy(() => {
        const { value, grads } = tf.variableGrads(
          () => loss(model.apply(x, { training: true }) as tf.Tensor4D, y),
          variables,
        );
        optimizer.applyGradients(grads);
        return value.dataSync()[0];
      });
      if (step === 0) firstLoss = lastLoss;
      if (!Number.isFinite(lastLoss)) break;
    }
    accuracy = tf.tidy(() => {
      const predicted = tf.argMax(model.apply(x, { training: true }) as tf.Tensor, -1);
      return tf.mean(tf.cast(tf.equal(predicted, y), 'float32')).dataSync()[0];
    });
    tf.dispose([x, y]);
  } finally {
    optimizer.dispose();
    model.dispose();
  }
  const result = { firstLoss, lastLoss, accuracy, majority, steps, seconds: (performance.now() - start) / 1000 };
  const summary = `loss ${firstLoss.toFixed(4)} -> ${lastLoss.toFixed(4)}, pixel accuracy ${accuracy.toFixed(4)} (constant prediction ${majority.toFixed(4)}) after ${steps} steps`;
  if (!(lastLoss <= firstLoss * maxLossRatio)) {
    throw new PluginError(
      `Expected training of ${where(plugin, options)} to lower the loss to at most ${maxLossRatio} of its start: ${summary}.`,
    );
  }
  if (!(accuracy >= minAccuracy && accuracy > majority)) {
    throw new PluginError(
      `Expected training of ${where(plugin, options)} to reach a pixel accuracy of ${minAccuracy} above the constant prediction: ${summary}.`,
    );
  }
  return result;
}

/** What {@link checkReceptiveField} measured. */
export interface ReceptiveFieldCheckResult {
  /** Declared receptive field (pixels). */
  declared: number;
  /** Side of the square test image. */
  size: number;
  /** Largest change of the centre output when everything farther than `floor(declared / 2)` was changed. */
  outsideChange: number;
  /** Change of the centre output when the centre input pixel was changed. */
  centreChange: number;
}

/**
 * Checks the declared receptive field on a model in inference mode: on an image of side
 * `rf + 2 * multiple` (rounded up to the multiple), replacing every input pixel farther than `floor(rf / 2)` from
 * the centre (in either axis) by other random values must leave the centre output pixel unchanged (to 1e-5), and
 * changing the centre input pixel must change it (so the check can fail both ways).
 *
 * @throws PluginError when a pixel outside the declared field changes the output, or the centre pixel does not.
 */
export function checkReceptiveField(
  plugin: AnyPlugin,
  options: object,
  model: tfl.LayersModel,
  inputChannels: number,
): ReceptiveFieldCheckResult {
  const declared = plugin.receptiveField(options);
  const multiple = plugin.inputMultiple(options);
  if (!Number.isInteger(declared) || declared < 1) {
    throw new PluginError(
      `Expected a positive integer receptive field from ${where(plugin, options)} but received ${declared}.`,
    );
  }
  const half = Math.floor(declared / 2);
  const size = Math.ceil((declared + 2 * multiple) / multiple) * multiple;
  const c = size / 2;
  const n = size * size * inputChannels;
  const base = uniform(n, 5);
  const noise = uniform(n, 6);
  const outside = Float32Array.from(base);
  for (let yy = 0; yy < size; yy++) {
    for (let xx = 0; xx < size; xx++) {
      if (Math.abs(yy - c) <= half && Math.abs(xx - c) <= half) continue;
      for (let k = 0; k < inputChannels; k++) {
        const i = (yy * size + xx) * inputChannels + k;
        outside[i] = noise[i];
      }
    }
  }
  const centre = Float32Array.from(base);
  for (let k = 0; k < inputChannels; k++) centre[(c * size + c) * inputChannels + k] += 5;
  const [outsideChange, centreChange] = tf.tidy(() => {
    const centreOutput = (data: Float32Array) => {
      const y = model.predict(tf.tensor4d(data, [1, size, size, inputChannels])) as tf.Tensor4D;
      return tf.slice(y, [0, c, c, 0], [1, 1, 1, y.shape[3]]).dataSync();
    };
    const a = centreOutput(base);
    const b = centreOutput(outside);
    const d = centreOutput(centre);
    const diff = (u: ArrayLike<number>, v: ArrayLike<number>) => {
      let m = 0;
      for (let i = 0; i < u.length; i++) m = Math.max(m, Math.abs(u[i] - v[i]));
      return m;
    };
    return [diff(a, b), diff(a, d)];
  });
  const result = { declared, size, outsideChange, centreChange };
  if (!(outsideChange <= 1e-5)) {
    throw new PluginError(
      `Declared receptive field ${declared} px of ${where(plugin, options)} is too small: changing input pixels farther than ${half} px ` +
        `from the centre of a ${size}x${size} image changed the centre output by ${outsideChange}.`,
      'Declare a receptive field that covers every input pixel that can influence an output pixel.',
    );
  }
  if (!(centreChange > 1e-7)) {
    throw new PluginError(
      `Changing the centre pixel of a ${size}x${size} image did not change the centre output of ${where(plugin, options)}.`,
    );
  }
  return result;
}

/** What {@link checkEncoderLayers} found. */
export interface EncoderLayersCheckResult {
  /** The encoder's name, as `plugin.encoder(options)` gives it. */
  name: string;
  /** Layers of the model whose names match the encoder's pattern. */
  encoderLayers: string[];
  /** Layers with weights that do not (decoder and head). */
  otherWeightedLayers: string[];
}

/**
 * Checks that `plugin.encoder(options)` names the encoder's layers of a model built with `options`: its pattern matches
 * some layers with weights, not the output layer, and not every layer with weights (a decoder and a head remain), so
 * that freezing the encoder and transferring it find exactly those layers.
 *
 * @throws PluginError when the plugin declares no `encoder()`, or the pattern matches none, all, or the output layer.
 */
export function checkEncoderLayers(
  plugin: AnyPlugin,
  options: object,
  model: tfl.LayersModel,
): EncoderLayersCheckResult {
  if (typeof plugin.encoder !== 'function') {
    throw new PluginError(`${where(plugin, options)} declares no encoder() naming its encoder's layers.`);
  }
  const { name, layers: pattern } = plugin.encoder(options);
  const weighted = model.layers.filter((layer) => layer.weights.length > 0);
  const encoderLayers = weighted.filter((layer) => pattern.test(layer.name)).map((layer) => layer.name);
  const otherWeightedLayers = weighted.filter((layer) => !pattern.test(layer.name)).map((layer) => layer.name);
  const output = model.outputs[0].sourceLayer.name;
  const fail = (what: string) =>
    new PluginError(
      `The encoder "${name}" that ${where(plugin, options)} declares (layers ${pattern}) ${what}.`,
      "Make encoder() return the pattern the encoder's layer names match, and name decoder and head layers otherwise.",
    );
  if (encoderLayers.length === 0) throw fail('matches no layer with weights');
  if (otherWeightedLayers.length === 0) throw fail('matches every layer with weights, the head included');
  if (pattern.test(output)) throw fail(`matches the output layer "${output}"`);
  return { name, encoderLayers, otherWeightedLayers };
}
