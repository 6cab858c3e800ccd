import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  InputNotFoundError,
  loadModel,
  ModelFormatError,
  readManifest,
  writeFileAtomic,
  type ModelManifest,
  type OnnxLayerConverter,
} from '@tessera/core';
import { exportOnnx, ONNX_METADATA } from './export.js';
import { ModelMetadata } from './onnx-proto.js';

/** File name of the exported ONNX model inside a model folder. */
export const ONNX_FILE = 'model.onnx';
/** File name of its int8 quantization (see `quantizeOnnx`), beside it. */
export const INT8_ONNX_FILE = 'model.int8.onnx';

/**
 * The `metadata_props` of an ONNX model, decoded from its bytes without the graph (whose bytes are skipped).
 * @throws Error from protobufjs when the bytes are not a protobuf message.
 */
export function readOnnxMetadata(bytes: Uint8Array): Record<string, string> {
  const { metadataProps = [] } = ModelMetadata.decode(bytes) as unknown as {
    metadataProps?: { key?: string; value?: string }[];
  };
  return Object.fromEntries(metadataProps.map((p) => [p.key ?? '', p.value ?? '']));
}

/**
 * Exports a model folder to ONNX and writes it atomically (default `<dir>/model.onnx`). The tfjs engine must be
 * set up, and plugins with custom layers registered, before calling.
 *
 * @throws UnsupportedLayerError (exit code 7) naming the layer classes that cannot be converted.
 */
export async function exportModelDir(
  dir: string,
  options: { out?: string; converters?: Readonly<Record<string, OnnxLayerConverter>> } = {},
): Promise<{ path: string; bytes: Uint8Array; manifest: ModelManifest }> {
  const { model, manifest } = await loadModel(dir);
  try {
    const bytes = exportOnnx(model, manifest, { converters: options.converters });
    const path = options.out ?? join(dir, ONNX_FILE);
    await writeFileAtomic(path, bytes);
    return { path, bytes, manifest };
  } finally {
    model.dispose();
  }
}

/**
 * The ONNX model of a model folder: its `model.onnx` when that was exported from the folder's current weights,
 * else an export made in memory now (the tfjs engine must then be set up).
 *
 * @throws UnsupportedLayerError when the model has layers without a converter.
 */
export async function onnxForModelDir(
  dir: string,
  options: { converters?: Readonly<Record<string, OnnxLayerConverter>> } = {},
): Promise<{ bytes: Uint8Array; manifest: ModelManifest; source: 'file' | 'exported' | 'stale-file-reexported' }> {
  const manifest = await readManifest(dir);
  let stale = false;
  try {
    const bytes = new Uint8Array(await readFile(join(dir, ONNX_FILE)));
    if (readOnnxMetadata(bytes)[ONNX_METADATA.weightsSha256] === manifest.files.weights.sha256) {
      return { bytes, manifest, source: 'file' };
    }
    stale = true;
  } catch {
    // No (readable) model.onnx: export in memory.
  }
  const { model } = await loadModel(dir);
  try {
    return {
      bytes: exportOnnx(model, manifest, { converters: options.converters }),
      manifest,
      source: stale ? 'stale-file-reexported' : 'exported',
    };
  } finally {
    model.dispose();
  }
}

/**
 * The int8 ONNX model of a model folder, its `model.int8.onnx`, checked to be quantized from the folder's current
 * weights.
 *
 * @throws InputNotFoundError (exit code 4) when the folder has no `model.int8.onnx`, naming the command that makes it.
 * @throws ModelFormatError (exit code 7) when it was quantized from other weights.
 * @example
 * ```ts
 * const { bytes } = await int8OnnxForModelDir('runs/isbi');
 * ```
 */
export async function int8OnnxForModelDir(dir: string): Promise<{ bytes: Uint8Array; manifest: ModelManifest }> {
  const manifest = await readManifest(dir);
  const path = join(dir, INT8_ONNX_FILE);
  const command = `tessera export ${dir} --format onnx --quantize int8`;
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(await readFile(path));
  } catch (error) {
    throw new InputNotFoundError(
      `--precision int8 needs ${path}, which does not exist.`,
      `Make it with \`${command}\` (or predict with --precision fp32).`,
      error,
    );
  }
  const made = readOnnxMetadata(bytes)[ONNX_METADATA.weightsSha256];
  if (made !== manifest.files.weights.sha256) {
    throw new ModelFormatError(
      `${path} was quantized from other weights (sha256 ${String(made).slice(0, 12)}…) than the model's ` +
        `(${manifest.files.weights.sha256.slice(0, 12)}…).`,
      `Quantize the current weights with \`${command}\`.`,
    );
  }
  return { bytes, manifest };
}
