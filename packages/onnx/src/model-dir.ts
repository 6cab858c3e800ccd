import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadModel, readManifest, writeFileAtomic, type ModelManifest, type OnnxLayerConverter } from '@tessera/core';
import { exportOnnx, ONNX_METADATA } from './export.js';

/** File name of the exported ONNX model inside a model folder. */
export const ONNX_FILE = 'model.onnx';

/**
 * The `metadata_props` of an ONNX model, read straight from its bytes (top-level ModelProto field 14) without
 * loading it.
 */
export function readOnnxMetadata(bytes: Uint8Array): Record<string, string> {
  const decoder = new TextDecoder();
  const out: Record<string, string> = {};
  let pos = 0;
  const varint = (): bigint => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (pos >= bytes.length) throw new Error('truncated varint');
      const b = bytes[pos++];
      result |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return result;
      shift += 7n;
    }
  };
  // Walks the fields of one message in [start, end), calling `onField` for length-delimited ones.
  const fields = (end: number, onField: (field: number, start: number, end: number) => void) => {
    while (pos < end) {
      const tag = Number(varint());
      const field = tag >>> 3;
      const wire = tag & 7;
      if (wire === 0) varint();
      else if (wire === 1) pos += 8;
      else if (wire === 5) pos += 4;
      else if (wire === 2) {
        const length = Number(varint());
        const start = pos;
        pos += length;
        onField(field, start, start + length);
      } else throw new Error(`unsupported wire type ${wire}`);
    }
  };
  fields(bytes.length, (field, start, end) => {
    if (field !== 14) return;
    const after = pos;
    pos = start;
    let key = '';
    let value = '';
    fields(end, (f, s, e) => {
      if (f === 1) key = decoder.decode(bytes.subarray(s, e));
      if (f === 2) value = decoder.decode(bytes.subarray(s, e));
    });
    out[key] = value;
    pos = after;
  });
  return out;
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
