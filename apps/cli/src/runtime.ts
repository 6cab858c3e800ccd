import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  activeEngine,
  EngineError,
  InvalidOptionError,
  readManifest,
  setupEngine,
  TesseraError,
  tfjsPredictor,
  type ModelManifest,
  type OnnxLayerConverter,
  type Predictor,
} from '@tessera/core';
import { importOptional } from './optional.js';
import { explainModelLoadError, loadModelFolder } from './model-folder.js';
import { loadRegistry, warnPluginVersion } from './plugins.js';
import { info, warn, type OutputOptions } from './progress.js';

/** Values of `--runtime`. */
export const RUNTIMES = ['auto', 'onnx', 'tfjs'] as const;
/** Values of `--device`. */
export const DEVICES = ['cpu', 'cuda'] as const;
/** Values of `--precision`: `int8` runs the model's `model.int8.onnx` (see `tessera export --quantize int8`). */
export const PRECISIONS = ['fp32', 'int8'] as const;

/** The module `@tessera/onnx`. */
export type OnnxModule = typeof import('@tessera/onnx');

/** `@tessera/onnx` imported on first use, or `null` when it is not installed (it is an optional peer). */
export const importOnnx: () => Promise<OnnxModule | null> = importOptional(
  '@tessera/onnx',
  () => import('@tessera/onnx'),
);

/** What the user asked for. */
export interface RuntimeRequest {
  model: string;
  runtime?: string;
  device?: string;
  /** `fp32` (default) or `int8`. */
  precision?: string;
  /** Threads of the ONNX engine (per worker for slides). */
  threads?: number;
  /** tfjs engine used to read the model for an export made now (when none is set up yet). */
  backend?: string;
}

/** The runtime chosen for a model: ONNX bytes to run, or tfjs, with the reason. */
export type RuntimeChoice =
  | {
      kind: 'onnx';
      bytes: Uint8Array;
      manifest: ModelManifest;
      source: string;
      device: (typeof DEVICES)[number];
      reason: string;
    }
  | { kind: 'tfjs'; reason: string };

function check<T extends string>(value: string | undefined, valid: readonly T[], flag: string): T | undefined {
  if (value === undefined) return undefined;
  if (!valid.includes(value as T)) {
    throw new InvalidOptionError(
      `Expected ${flag} to be one of ${valid.join(', ')} but received ${JSON.stringify(value)}.`,
    );
  }
  return value as T;
}

/**
 * The ONNX converters of every installed plugin (loading them also registers their custom layers); two plugins with
 * different converters for one layer class are refused.
 */
export async function pluginConverters(): Promise<Record<string, OnnxLayerConverter>> {
  const { registry } = await loadRegistry();
  return registry.onnxConverters();
}

/**
 * Chooses how to run a model: `--runtime onnx` or `auto` (the default) use onnxruntime-node where `@tessera/onnx`
 * is installed and the model converts (its `model.onnx`, or an export made now); `auto` falls back to tfjs with a
 * warning naming why. `--precision int8` runs its `model.int8.onnx`, which must exist and be made from the current
 * weights. The tfjs engine must already be set up (an export reads the tfjs model).
 */
export async function chooseRuntime(request: RuntimeRequest, out: OutputOptions): Promise<RuntimeChoice> {
  const runtime = check(request.runtime, RUNTIMES, '--runtime') ?? 'auto';
  const device = check(request.device, DEVICES, '--device') ?? 'cpu';
  const precision = check(request.precision, PRECISIONS, '--precision') ?? 'fp32';
  if (request.threads !== undefined && !(Number.isInteger(request.threads) && request.threads >= 1)) {
    throw new InvalidOptionError(`Expected --threads to be a positive integer but received ${request.threads}.`);
  }
  const plugins = await loadRegistry();
  const modelManifest = await readManifest(request.model);
  warnPluginVersion(plugins, modelManifest, request.model);
  if (runtime === 'tfjs') {
    if (precision === 'int8') {
      throw new InvalidOptionError(
        '--precision int8 needs --runtime onnx (or auto): the int8 model is an ONNX file, model.int8.onnx.',
      );
    }
    if (device === 'cuda') {
      throw new InvalidOptionError(
        '--device cuda needs --runtime onnx (or auto); the tfjs GPU path is the tfjs-node-gpu engine (--backend tfjs-node-gpu).',
      );
    }
    return { kind: 'tfjs', reason: 'asked for with --runtime tfjs' };
  }
  const onnx = await importOnnx();
  if (!onnx) {
    if (runtime === 'onnx' || device === 'cuda' || precision === 'int8') {
      throw new EngineError(
        'The ONNX runtime was asked for, but @tessera/onnx is not installed.',
        'npm install @tessera/onnx (it brings onnxruntime-node), or use --runtime tfjs.',
      );
    }
    return { kind: 'tfjs', reason: '@tessera/onnx is not installed (npm install @tessera/onnx for faster prediction)' };
  }
  if (precision === 'int8') {
    const { bytes, manifest } = await onnx.int8OnnxForModelDir(request.model);
    return { kind: 'onnx', bytes, manifest, source: 'int8', device, reason: `${onnx.INT8_ONNX_FILE} of the model` };
  }
  try {
    if (!activeEngine()) await setupEngine(request.backend);
    const { bytes, manifest, source } = await onnx.onnxForModelDir(request.model, {
      converters: await pluginConverters(),
    });
    const from =
      source === 'file'
        ? `${onnx.ONNX_FILE} of the model`
        : source === 'exported'
          ? 'exported now (run "tessera export" once to keep it)'
          : `exported now: ${onnx.ONNX_FILE} was made from other weights`;
    return { kind: 'onnx', bytes, manifest, source, device, reason: from };
  } catch (error) {
    if (runtime === 'auto' && device === 'cpu' && error instanceof onnx.UnsupportedLayerError) {
      warn(out, `${error.message} Falling back to the tfjs runtime.`);
      return { kind: 'tfjs', reason: 'the model does not convert to ONNX' };
    }
    throw explainModelLoadError(error, plugins, modelManifest, request.model);
  }
}

/** A predictor for in-memory prediction (images), and the manifest. */
export async function openPredictor(
  request: RuntimeRequest,
  out: OutputOptions,
): Promise<{ predictor: Predictor; manifest: ModelManifest }> {
  const choice = await chooseRuntime(request, out);
  if (choice.kind === 'tfjs') {
    const { model, manifest } = await loadModelFolder(request.model);
    const predictor = tfjsPredictor(model);
    info(out, `runtime: ${predictor.description} (${choice.reason})`);
    return { predictor, manifest };
  }
  const { manifest } = choice;
  const onnx = (await importOnnx())!;
  const predictor = await onnx.createOnnxPredictor(choice.bytes, {
    threads: request.threads ?? availableParallelism(),
    device: choice.device,
  });
  info(out, `runtime: ${predictor.description} (${choice.reason})`);
  return { predictor, manifest };
}

/**
 * The ONNX settings for the slide workers (`TilerOptions.onnx`), with the path of a file they read; `cleanup`
 * removes a temporary export. `undefined` for tfjs.
 */
export async function slideRuntime(
  request: RuntimeRequest,
  out: OutputOptions,
): Promise<{ onnx?: { file: string; threads?: number; device: string }; cleanup: () => Promise<void>; label: string }> {
  const choice = await chooseRuntime(request, out);
  if (choice.kind === 'tfjs') return { cleanup: async () => {}, label: `tfjs (${choice.reason})` };
  const onnx = (await importOnnx())!;
  if (choice.source === 'file' || choice.source === 'int8') {
    const file = join(request.model, choice.source === 'int8' ? onnx.INT8_ONNX_FILE : onnx.ONNX_FILE);
    return {
      onnx: { file, threads: request.threads, device: choice.device },
      cleanup: async () => {},
      label: `onnx (${choice.reason})`,
    };
  }
  const dir = await mkdtemp(join(tmpdir(), 'tessera-onnx-'));
  const file = join(dir, 'model.onnx');
  try {
    await writeFile(file, choice.bytes);
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error instanceof TesseraError
      ? error
      : new EngineError(`Cannot write a temporary ONNX file: ${String(error)}`);
  }
  return {
    onnx: { file, threads: request.threads, device: choice.device },
    cleanup: () => rm(dir, { recursive: true, force: true }),
    label: `onnx (${choice.reason})`,
  };
}
