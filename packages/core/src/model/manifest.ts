import type { ClassDef } from '../data/class-map.js';
import type { Normalization } from '../data/dataset.js';
import { ModelFormatError, describeValue } from '../errors.js';

/** The model-folder format version written by this release; folders with a larger one are refused. */
export const MODEL_FORMAT_VERSION = 1;

/** Provenance of a trained model: what it was trained on, how, and how well. */
export interface TrainingProvenance {
  /** Training data folders and sample stems. */
  data: { images: string; masks: string; trainStems: string[]; validationStems: string[]; validation: string };
  /** The fully resolved training options. */
  options: Record<string, unknown>;
  seed: number;
  engine: { name: string; backend: string; threads: number };
  startedAt: string;
  finishedAt: string;
  durationSeconds: number;
  epochs: number;
  steps: number;
  /** Epoch in which the kept weights were validated (the best by the selection metric). */
  bestEpoch: number;
  /** Step at which the kept weights were validated. Absent in manifests written before validation by step. */
  bestStep?: number;
  /** How the kept weights were chosen, e.g. `'best validation foreground Dice (exponential moving average 0.99)'`. */
  selection?: string;
  stopReason: string;
  /** Final validation metrics of the kept weights. */
  metrics: Record<string, unknown>;
  /** The trained model the weights started from (`--init`), when they did not start random. */
  init?: InitProvenance;
}

/** Where a run's initial weights came from (transfer learning). */
export interface InitProvenance {
  /** The model folder as given, or the model package (`name@version`) it came from. */
  model: string;
  /** SHA-256 of its weights file. */
  weightsSha256: string;
  /** Layers whose weights were loaded from it. */
  loaded: string[];
  /** Layers initialised afresh, each with why (no layer of that name there, or other weight shapes). */
  reinitialised: { layer: string; reason: string }[];
  /** Loaded encoder layers the run froze (`freeze`; for `freezeEpochs` epochs when set, else the whole run). */
  frozen?: string[];
  /**
   * Where the run's input normalisation came from: `initial model` (its mean and std, which its weights were trained
   * with: the default when the input channels match) or `training images` (computed afresh).
   */
  normalization?: 'initial model' | 'training images';
}

/**
 * The int8 quantization of a model's ONNX export (`tessera export <model> --format onnx --quantize int8`): how it
 * was calibrated and how closely its labels follow the fp32 model's.
 */
export interface QuantizationProvenance {
  precision: 'int8';
  /** The quantized model, relative to the model folder (normally `model.int8.onnx`). */
  file: string;
  /** ONNX QuantizeLinear/DequantizeLinear pairs, int8 weights per output channel, uint8 activations. */
  format: 'onnx-qdq';
  /** How activation ranges were calibrated: `percentile` or `minmax`. */
  method: string;
  /** The percentile of the `percentile` method, `null` for `minmax`. */
  percentile: number | null;
  /** The calibration tiles: the images they were cut from, their number and size, SHA-256 of their 8-bit pixels. */
  calibration: { source: string; files: string[]; tiles: number; tileSize: number; sha256: string };
  /** Weighted nodes with int8 weights, by operator type. */
  quantizedNodes: Record<string, number>;
  /** Weighted nodes left in float, each with the reason. */
  fp32Nodes: { node: string; opType: string; reason: string }[];
  /**
   * int8 against fp32 on the calibration tiles: share of pixels with the same arg-max label, Dice per class name
   * (`null` where neither model gives the class), the threshold asked for and whether `--force` overrode it.
   */
  agreement: {
    pixels: number;
    labels: number;
    dice: Record<string, number | null>;
    threshold: number;
    forced: boolean;
  };
  /** SHA-256 of the weights quantized. */
  weightsSha256: string;
  createdAt: string;
}

/** `manifest.json` of a model folder. Everything needed to apply the model besides its weights. */
export interface ModelManifest {
  format: 'tessera-model';
  formatVersion: number;
  architecture: {
    name: string;
    version: string;
    apiVersion: number;
    options: Record<string, unknown>;
    inputMultiple: number;
    receptiveField: number;
    parameters: number;
  };
  classes: ClassDef[];
  ignore?: number;
  inputChannels: number;
  /** Applied as `(pixel / 255 - mean[c]) / std[c]`. */
  normalization: Normalization;
  tileSize: number;
  /** µm per pixel of the training data, when known. */
  mpp: number | null;
  training?: TrainingProvenance;
  /** The int8 quantization of its ONNX export, when one was made. */
  quantization?: QuantizationProvenance;
  files: { topology: FileDigest; weights: FileDigest };
  createdAt: string;
  createdBy: string;
}

/** A file of the model folder with its SHA-256 and size. */
export interface FileDigest {
  path: string;
  sha256: string;
  bytes: number;
}

/**
 * Checks a parsed manifest.json. Classes without a `background` flag (every folder written before it existed) are
 * fine: core's `backgroundClass` then falls back to the class named `background`, else the class of value 0.
 * @throws ModelFormatError naming the folder and the bad field (including a `background` flag that is not a boolean,
 * or `"background": true` on more than one class).
 */
export function validateManifest(value: unknown, dir: string): ModelManifest {
  const m = value as Partial<ModelManifest> | null;
  const fail = (what: string, hint = 'Re-export or retrain the model.') =>
    new ModelFormatError(`Model folder ${dir} has an invalid manifest.json: ${what}.`, hint);
  const flagHint =
    'Edit manifest.json: "background": true on one class at most, or no flag at all (the class named ' +
    '"background" is then the background, else the class of value 0).';
  if (!m || typeof m !== 'object') throw fail(`expected an object, received ${describeValue(value)}`);
  if (m.format !== 'tessera-model') throw fail(`"format" is ${describeValue(m.format)}, expected "tessera-model"`);
  if (typeof m.formatVersion !== 'number') throw fail('"formatVersion" is missing');
  if (m.formatVersion > MODEL_FORMAT_VERSION) {
    throw new ModelFormatError(
      `Model folder ${dir} has format version ${m.formatVersion}, but this Tessera reads versions up to ${MODEL_FORMAT_VERSION}.`,
      'Upgrade Tessera (npm install @tessera/cli@latest) to use this model.',
    );
  }
  if (!m.architecture || typeof m.architecture.name !== 'string') throw fail('"architecture.name" is missing');
  if (!Array.isArray(m.classes) || m.classes.length < 2) throw fail('"classes" must list at least two classes');
  const flagged: string[] = [];
  m.classes.forEach((c, i) => {
    const flag = (c as { background?: unknown } | null)?.background;
    if (flag !== undefined && typeof flag !== 'boolean') {
      throw fail(`expected classes[${i}].background to be true or false but received ${describeValue(flag)}`, flagHint);
    }
    if (flag === true) flagged.push(`classes[${i}] ("${c.name}")`);
  });
  if (flagged.length > 1) {
    throw fail(
      `${flagged.join(' and ')} are ${flagged.length === 2 ? 'both' : 'all'} marked "background": true; ` +
        'expected at most one background class',
      flagHint,
    );
  }
  if (!Number.isInteger(m.inputChannels) || (m.inputChannels as number) < 1) throw fail('"inputChannels" is missing');
  if (!m.normalization || !Array.isArray(m.normalization.mean)) throw fail('"normalization" is missing');
  if (!m.files?.weights?.sha256 || !m.files?.topology?.sha256) throw fail('"files" with checksums is missing');
  return m as ModelManifest;
}
