import { availableParallelism } from 'node:os';
import { join, relative } from 'node:path';
import {
  InvalidOptionError,
  MODEL_FILES,
  readManifest,
  writeFileAtomic,
  type ModelManifest,
  type QuantizationProvenance,
} from '@tessera/core';
import { calibrationSet } from '../calibration.js';
import { info, warn, type OutputOptions } from '../progress.js';
import type { OnnxModule } from '../runtime.js';

/** Values of `--quantize`. */
export const QUANTIZE_PRECISIONS = ['int8'] as const;
/** Default of `--min-agreement`: the share of calibration pixels whose int8 label must match fp32's. */
export const DEFAULT_MIN_AGREEMENT = 0.99;

/** The quantization flags of `tessera export`. */
export interface QuantizeCliOptions {
  quantize?: string;
  calibration?: string[];
  calibrationMethod?: string;
  minAgreement?: number;
  force?: boolean;
}

/** The quantization asked for, checked. */
export interface QuantizeRequest {
  calibration: string[];
  method: 'percentile' | 'minmax';
  minAgreement: number;
  force: boolean;
}

/**
 * Checks the quantization flags before any work: `undefined` without `--quantize`.
 * @throws InvalidOptionError naming the bad value and the valid ones, or a flag given without `--quantize`.
 */
export function checkQuantizeOptions(opts: QuantizeCliOptions, onnx: OnnxModule): QuantizeRequest | undefined {
  if (opts.quantize === undefined) {
    const stray = [
      opts.calibration?.length && '--calibration',
      opts.calibrationMethod !== undefined && '--calibration-method',
      opts.minAgreement !== undefined && '--min-agreement',
      opts.force && '--force',
    ].filter(Boolean);
    if (stray.length) {
      throw new InvalidOptionError(
        `${stray.join(', ')} ${stray.length > 1 ? 'apply' : 'applies'} to int8 quantization, which was not asked for.`,
        'Add --quantize int8.',
      );
    }
    return undefined;
  }
  if (!(QUANTIZE_PRECISIONS as readonly string[]).includes(opts.quantize)) {
    throw new InvalidOptionError(
      `Expected --quantize to be one of ${QUANTIZE_PRECISIONS.join(', ')} but received ${JSON.stringify(opts.quantize)}.`,
    );
  }
  const method = opts.calibrationMethod ?? 'percentile';
  if (!(onnx.CALIBRATION_METHODS as readonly string[]).includes(method)) {
    throw new InvalidOptionError(
      `Expected --calibration-method to be one of ${onnx.CALIBRATION_METHODS.join(', ')} but received ${JSON.stringify(method)}.`,
    );
  }
  const minAgreement = opts.minAgreement ?? DEFAULT_MIN_AGREEMENT;
  if (!(Number.isFinite(minAgreement) && minAgreement >= 0)) {
    throw new InvalidOptionError(
      `Expected --min-agreement to be a share of pixels >= 0 (e.g. ${DEFAULT_MIN_AGREEMENT}) but received ${minAgreement}.`,
    );
  }
  return {
    calibration: opts.calibration ?? [],
    method: method as QuantizeRequest['method'],
    minAgreement,
    force: !!opts.force,
  };
}

const percent = (share: number) => `${(share * 100).toFixed(2)}%`;

/**
 * Quantizes the fp32 export `fp32` (written at `fp32Path`) of the model folder `dir` to int8 and writes it beside it
 * (`model.onnx` → `model.int8.onnx`), after comparing both models' labels on the calibration tiles; records the
 * quantization in the folder's manifest.json.
 *
 * @throws QuantizationAccuracyError (exit code 12) when the labels agree less often than `--min-agreement`, unless
 *   `--force`; the int8 model is not written then (the fp32 one, checked on its own, is).
 */
export async function exportInt8(
  onnx: OnnxModule,
  dir: string,
  manifest: ModelManifest,
  fp32: Uint8Array,
  fp32Path: string,
  request: QuantizeRequest,
  out: OutputOptions,
) {
  const calibration = await calibrationSet(dir, manifest, request.calibration);
  const { method } = request;
  const described = method === 'percentile' ? `percentile ${onnx.DEFAULT_PERCENTILE}` : 'minmax';
  info(
    out,
    `calibrating int8 on ${calibration.tiles.length} tiles of ${calibration.tileSize} x ${calibration.tileSize} from ` +
      `${calibration.files.length} ${calibration.source === '--calibration' ? '--calibration' : 'training'} image(s) (${described})`,
  );
  const threads = availableParallelism();
  const { bytes, report } = await onnx.quantizeOnnx(fp32, calibration.tiles, { method, threads });
  const quantized = Object.entries(report.quantizedNodes).map(([op, n]) => `${n} ${op}`);
  info(out, `int8 weights (per output channel) for ${quantized.join(', ') || 'no node'}`);
  for (const n of report.fp32Nodes) warn(out, `left in fp32: ${n.node} (${n.opType}): ${n.reason}`);
  const { pixels, agreement, dice } = await onnx.compareLabels(fp32, bytes, calibration.tiles, { threads });
  const diceByClass = Object.fromEntries(manifest.classes.map((c, i) => [c.name, dice[i] ?? null]));
  info(
    out,
    `int8 vs fp32 on the calibration tiles: labels agree on ${percent(agreement)} of ${pixels} pixels ` +
      `(--min-agreement ${request.minAgreement}); Dice per class: ` +
      Object.entries(diceByClass)
        .map(([name, d]) => `${name} ${d === null ? 'n/a' : d.toFixed(4)}`)
        .join(', '),
  );
  const path = fp32Path.replace(/\.onnx$/i, '') + '.int8.onnx';
  if (agreement < request.minAgreement) {
    const measured = `the int8 labels agree with fp32 on ${percent(agreement)} of the calibration pixels (${agreement.toFixed(4)})`;
    if (!request.force) {
      throw new onnx.QuantizationAccuracyError(
        `Refusing to write ${path}: ${measured}, below --min-agreement ${request.minAgreement}.`,
        'Calibrate on more typical images (--calibration), try --calibration-method minmax, lower --min-agreement, ' +
          'or write it anyway with --force.',
      );
    }
    warn(out, `${measured}, below --min-agreement ${request.minAgreement}; written anyway (--force)`);
  }
  await writeFileAtomic(path, bytes);
  const record: QuantizationProvenance = {
    precision: 'int8',
    file: relative(dir, path),
    format: 'onnx-qdq',
    method,
    percentile: report.percentile,
    calibration: {
      source: calibration.source,
      files: calibration.files,
      tiles: calibration.tiles.length,
      tileSize: calibration.tileSize,
      sha256: calibration.sha256,
    },
    quantizedNodes: report.quantizedNodes,
    fp32Nodes: report.fp32Nodes,
    agreement: { pixels, labels: agreement, dice: diceByClass, threshold: request.minAgreement, forced: request.force },
    weightsSha256: manifest.files.weights.sha256,
    createdAt: new Date().toISOString(),
  };
  const current = await readManifest(dir);
  await writeFileAtomic(
    join(dir, MODEL_FILES.manifest),
    JSON.stringify({ ...current, quantization: record }, null, 2) + '\n',
  );
  info(out, `wrote ${path} (${(bytes.byteLength / 1e6).toFixed(1)} MB, int8 QDQ); recorded in ${MODEL_FILES.manifest}`);
  return { path, bytes: bytes.byteLength, ...record };
}
