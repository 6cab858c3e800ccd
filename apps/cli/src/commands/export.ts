import { join } from 'node:path';
import { EngineError, InvalidOptionError, tf, tfjsPredictor, writeFileAtomic } from '@tessera/core';
import { loadModelFolder } from '../model-folder.js';
import { info } from '../progress.js';
import { importOnnx, pluginConverters } from '../runtime.js';
import { checkQuantizeOptions, exportInt8, type QuantizeCliOptions } from './quantize.js';
import { startEngine } from './shared.js';

/** Formats `tessera export` writes. */
export const EXPORT_FORMATS = ['onnx'] as const;

/**
 * `tessera export <model> --format onnx`: writes `model.onnx` into the model folder (or `--out`), then checks it
 * against the tfjs model on a random input and prints the largest probability difference. With `--quantize int8`
 * it also writes its int8 quantization `model.int8.onnx` beside it (see `quantize.ts`).
 */
export async function exportCommand(
  modelDir: string,
  opts: { format: string; out?: string; backend?: string; json?: boolean; quiet?: boolean } & QuantizeCliOptions,
): Promise<void> {
  const out = { quiet: opts.quiet || opts.json, json: opts.json };
  if (!EXPORT_FORMATS.includes(opts.format as 'onnx')) {
    throw new InvalidOptionError(
      `Expected --format to be one of ${EXPORT_FORMATS.join(', ')} but received ${JSON.stringify(opts.format)}.`,
    );
  }
  const onnx = await importOnnx();
  if (!onnx) {
    throw new EngineError(
      'Exporting to ONNX needs @tessera/onnx, which is not installed.',
      'npm install @tessera/onnx',
    );
  }
  const quantize = checkQuantizeOptions(opts, onnx);
  // The cpu engine unless --backend says otherwise (TESSERA_BACKEND does not apply here).
  await startEngine(opts.backend, out, { engine: 'cpu', reason: 'the default of export; --backend chooses another' });
  const converters = await pluginConverters();
  const { model, manifest } = await loadModelFolder(modelDir);
  let reference: Float32Array;
  let bytes: Uint8Array;
  // Check the export against the tfjs model on a random input of a few input multiples.
  const side = manifest.architecture.inputMultiple * Math.max(1, Math.ceil(64 / manifest.architecture.inputMultiple));
  const shape = [1, side, side, manifest.inputChannels] as const;
  const input = tf.randomNormal([...shape], 0, 1, 'float32', 1).dataSync() as Float32Array;
  try {
    bytes = onnx.exportOnnx(model, manifest, { converters });
    reference = await tfjsPredictor(model).run(input, shape);
  } finally {
    model.dispose();
  }
  const path = opts.out ?? join(modelDir, onnx.ONNX_FILE);
  const predictor = await onnx.createOnnxPredictor(bytes, { threads: 1 });
  const actual = await predictor.run(input, shape);
  await predictor.dispose();
  let maxDiff = 0;
  for (let i = 0; i < reference.length; i++) maxDiff = Math.max(maxDiff, Math.abs(reference[i] - actual[i]));
  // Nothing is written when the export disagrees with the model.
  if (!(maxDiff <= 1e-4)) {
    throw new EngineError(
      `The ONNX export of ${modelDir} differs from the tfjs model by ${maxDiff} (tolerance 1e-4); nothing was written.`,
      'Please report this with the model folder; predict with --runtime tfjs meanwhile.',
    );
  }
  await writeFileAtomic(path, bytes);
  info(
    out,
    `wrote ${path} (${(bytes.byteLength / 1e6).toFixed(1)} MB, ONNX opset ${onnx.ONNX_OPSET}, ${manifest.architecture.name}); ` +
      `max |Δp| against tfjs on a random ${side}x${side} input: ${maxDiff.toExponential(1)}`,
  );
  const int8 = quantize && (await exportInt8(onnx, modelDir, manifest, bytes, path, quantize, out));
  const result = {
    path,
    format: 'onnx',
    opset: onnx.ONNX_OPSET,
    bytes: bytes.byteLength,
    architecture: manifest.architecture.name,
    check: { input: shape, maxAbsProbabilityDifference: maxDiff },
    ...(int8 ? { int8 } : {}),
  };
  if (opts.json) process.stdout.write(JSON.stringify(result) + '\n');
}
