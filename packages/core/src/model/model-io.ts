import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { registerBatchNormalization } from '../arch/batch-norm.js';
import { writeFileAtomic } from '../data/image-io.js';
import { InputNotFoundError, ModelFormatError, OutputError, UnknownLayerError } from '../errors.js';
import type { ArchitecturePlugin } from '../arch/architecture.js';
import { MODEL_FORMAT_VERSION, validateManifest, type FileDigest, type ModelManifest } from './manifest.js';

/** File names inside a model folder. */
export const MODEL_FILES = { topology: 'model.json', weights: 'weights.bin', manifest: 'manifest.json' } as const;

/** A manifest before its file digests are known. */
export type ManifestDraft = Omit<ModelManifest, 'files' | 'createdAt'>;

/** The fields of a manifest draft that come neither from the architecture nor from the saved files. */
export type ManifestFields = Omit<ManifestDraft, 'format' | 'formatVersion' | 'architecture'>;

/**
 * The one way to draft a manifest: the architecture block (name, versions, resolved options, input multiple,
 * receptive field, parameter count) comes from the plugin that built `model` with `options`; the rest from `fields`.
 * @example
 * await saveModel(dir, model, draftManifest(plugin, options, model, { classes, inputChannels: 3, normalization,
 *   tileSize: 256, mpp: null, createdBy: 'my script' }));
 */
export function draftManifest<O extends object>(
  plugin: ArchitecturePlugin<O>,
  options: O,
  model: tfl.LayersModel,
  fields: ManifestFields,
): ManifestDraft {
  return {
    format: 'tessera-model',
    formatVersion: MODEL_FORMAT_VERSION,
    architecture: {
      name: plugin.name,
      version: plugin.version,
      apiVersion: plugin.apiVersion,
      options: options as Record<string, unknown>,
      inputMultiple: plugin.inputMultiple(options),
      receptiveField: plugin.receptiveField(options),
      parameters: countParameters(model),
    },
    ...fields,
  };
}

/** SHA-256 of bytes, hex. */
export function sha256(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Serialises a model to its tfjs `model.json` text and weight bytes. */
export async function serializeModel(model: tfl.LayersModel): Promise<{ topology: string; weights: Uint8Array }> {
  let artifacts: tf.io.ModelArtifacts | undefined;
  await model.save(
    tf.io.withSaveHandler(async (a) => {
      artifacts = a;
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }),
  );
  const a = artifacts!;
  const weights = new Uint8Array(tf.io.CompositeArrayBuffer.join(a.weightData!));
  const topology = JSON.stringify({
    format: 'layers-model',
    generatedBy: a.generatedBy,
    convertedBy: null,
    modelTopology: a.modelTopology,
    weightsManifest: [{ paths: [MODEL_FILES.weights], weights: a.weightSpecs }],
  });
  return { topology, weights };
}

/** Rebuilds a model from `model.json` text and weight bytes. */
export async function deserializeModel(
  topology: string,
  weights: Uint8Array,
  source: string,
): Promise<tfl.LayersModel> {
  registerBatchNormalization();
  try {
    const json = JSON.parse(topology) as tf.io.ModelJSON;
    const weightSpecs = json.weightsManifest.flatMap((group) => group.weights);
    const buffer = weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength) as ArrayBuffer;
    return await tfl.loadLayersModel(
      tf.io.fromMemory({ modelTopology: json.modelTopology, weightSpecs, weightData: buffer }),
    );
  } catch (error) {
    const message = (error as Error).message;
    const unknown = /Unknown layer: ([\w$-]+)/.exec(message);
    if (unknown) {
      throw new UnknownLayerError(
        unknown[1],
        `Could not rebuild the network of ${source}: it has a layer of class "${unknown[1]}", which no loaded plugin registers.`,
        'Install the architecture plugin that made the model (tessera archs lists the installed ones); a plugin ' +
          'registers its own layer classes by listing them in "layers".',
        error,
      );
    }
    throw new ModelFormatError(
      `Could not rebuild the network of ${source}: ${message.split('\n')[0]}`,
      'If it uses a third-party architecture, install that plugin; otherwise retrain the model.',
      error,
    );
  }
}

/**
 * Writes a model folder: `model.json` (tfjs topology), `weights.bin` and `manifest.json` (with the
 * SHA-256 of both). Each file is written atomically and the manifest last, so a folder whose
 * manifest matches its files is always complete.
 *
 * @throws OutputError when the folder cannot be written.
 * @example
 * ```ts
 * await saveModel('runs/isbi', model, draft);
 * ```
 */
export async function saveModel(dir: string, model: tfl.LayersModel, draft: ManifestDraft): Promise<ModelManifest> {
  await makeOutputDir(dir);
  const { topology, weights } = await serializeModel(model);
  const digest = (path: string, data: Uint8Array | string): FileDigest => ({
    path,
    sha256: sha256(data),
    bytes: typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength,
  });
  const manifest: ModelManifest = {
    ...draft,
    files: { topology: digest(MODEL_FILES.topology, topology), weights: digest(MODEL_FILES.weights, weights) },
    createdAt: new Date().toISOString(),
  };
  await writeFileAtomic(join(dir, MODEL_FILES.weights), weights);
  await writeFileAtomic(join(dir, MODEL_FILES.topology), topology);
  await writeFileAtomic(join(dir, MODEL_FILES.manifest), JSON.stringify(manifest, null, 2) + '\n');
  return manifest;
}

function outputFolderError(dir: string, reason: string, error?: unknown): OutputError {
  return new OutputError(
    `Cannot use "${dir}" as the output folder: ${reason}.`,
    'Choose a writable --out folder (on a disk, not under /proc or /sys).',
    error,
  );
}

function fsReason(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'EACCES' || code === 'EPERM'
    ? 'permission denied'
    : code === 'EROFS'
      ? 'the file system is read-only'
      : code === 'ELOOP'
        ? 'its symbolic links form a loop'
        : code === 'ENOSPC'
          ? 'the disk is full'
          : (error as Error).message;
}

/**
 * Creates the folders of `dir` that are missing, one by one (Node's recursive mkdir retries forever where a parent
 * exists but refuses children, as under /proc), and writes and removes a probe file in it.
 * @returns the folders created, outermost first.
 */
async function prepareOutputDir(dir: string): Promise<string[]> {
  const absolute = resolve(dir);
  const missing: string[] = [];
  for (let at = absolute; ; ) {
    let info;
    try {
      info = await stat(at);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') {
        throw outputFolderError(dir, `"${at}" cannot be read (${fsReason(error)})`, error);
      }
      missing.push(at);
      const parent = dirname(at);
      if (parent === at) throw outputFolderError(dir, 'no part of the path exists');
      at = parent;
      continue;
    }
    if (!info.isDirectory()) throw outputFolderError(dir, `"${at}" is a file, not a folder`);
    break;
  }
  const created: string[] = [];
  try {
    for (const folder of missing.reverse()) {
      try {
        await mkdir(folder);
        created.push(folder);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw outputFolderError(dir, `"${folder}" cannot be created (${fsReason(error)})`, error);
        }
      }
    }
    const probe = join(absolute, `.tessera-write-check-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      await writeFile(probe, '');
    } catch (error) {
      throw outputFolderError(dir, `a file cannot be written in it (${fsReason(error)})`, error);
    } finally {
      await rm(probe, { force: true }).catch(() => undefined);
    }
  } catch (error) {
    await removeEmptyFolders(created);
    throw error;
  }
  return created;
}

async function removeEmptyFolders(created: string[]): Promise<void> {
  for (const folder of [...created].reverse()) await rmdir(folder).catch(() => undefined);
}

/**
 * Creates an output folder (and its parents) and checks that a file can be written in it.
 * @throws {@link OutputError} (exit code 10) naming the folder and the reason: a file in the way, permission denied,
 * a read-only file system, a folder that cannot be created (under /proc).
 * @returns a function that removes the folders this call made that are still empty: a command that fails calls it,
 * so that it leaves no folder behind.
 * @example
 * const undo = await makeOutputDir('runs/isbi');
 */
export async function makeOutputDir(dir: string): Promise<() => Promise<void>> {
  const created = await prepareOutputDir(dir);
  return () => removeEmptyFolders(created);
}

/**
 * Checks, before any work is done, that an output folder can be made and written: makes the missing folders, writes
 * a probe file, and removes what it made, so that a run that fails later leaves no folder behind.
 * @throws {@link OutputError} (exit code 10), as {@link makeOutputDir}.
 * @example
 * await checkOutputDir(opts.out); // at the start of a command
 */
export async function checkOutputDir(dir: string): Promise<void> {
  await removeEmptyFolders(await prepareOutputDir(dir));
}

/** Reads and checks `manifest.json` of a model folder without loading the network. */
export async function readManifest(dir: string): Promise<ModelManifest> {
  const path = join(dir, MODEL_FILES.manifest);
  let text: string;
  try {
    const info = await stat(dir);
    if (!info.isDirectory()) throw new Error('not a folder');
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new InputNotFoundError(
      `Model folder ${dir} not found or has no ${MODEL_FILES.manifest}.`,
      'Pass the --out folder of a "tessera train" run as --model.',
      error,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new ModelFormatError(
      `${path} is not valid JSON: ${(error as Error).message}`,
      'Retrain or re-copy the model folder.',
    );
  }
  return validateManifest(json, dir);
}

/**
 * Loads a model folder written by {@link saveModel}, verifying the checksums of its files.
 *
 * @throws InputNotFoundError for a missing folder; ModelFormatError for a tampered, truncated or incompatible one.
 */
export async function loadModel(dir: string): Promise<{ model: tfl.LayersModel; manifest: ModelManifest }> {
  const manifest = await readManifest(dir);
  const read = async (digest: FileDigest): Promise<Buffer> => {
    let data: Buffer;
    try {
      data = await readFile(join(dir, digest.path));
    } catch (error) {
      throw new ModelFormatError(
        `Model folder ${dir} is missing ${digest.path}.`,
        'Re-copy the whole model folder.',
        error,
      );
    }
    const actual = sha256(data);
    if (data.byteLength !== digest.bytes || actual !== digest.sha256) {
      throw new ModelFormatError(
        `${join(dir, digest.path)} does not match its checksum in manifest.json ` +
          `(expected ${digest.bytes} bytes, sha256 ${digest.sha256.slice(0, 12)}…; found ${data.byteLength} bytes, ${actual.slice(0, 12)}…): ` +
          'the file is truncated or was modified.',
        'Re-copy the model folder from its source, or retrain.',
      );
    }
    return data;
  };
  const topology = (await read(manifest.files.topology)).toString('utf8');
  const weights = await read(manifest.files.weights);
  const model = await deserializeModel(topology, weights, dir);
  return { model, manifest };
}

/** Number of trainable and non-trainable parameters of a model. */
export function countParameters(model: tfl.LayersModel): number {
  return model.weights.reduce((sum, w) => sum + w.shape.reduce<number>((a, b) => a * (b ?? 1), 1), 0);
}
