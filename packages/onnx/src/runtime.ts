import { closeSync, existsSync, openSync, readdirSync, readSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import { EngineError, InvalidOptionError, type Predictor } from '@tessera/core';
import * as ort from 'onnxruntime-node';
import { ONNX_IO } from './export.js';

/** Devices the ONNX runtime can run on. */
export const ONNX_DEVICES = ['cpu', 'cuda'] as const;
/** One of {@link ONNX_DEVICES}. */
export type OnnxDevice = (typeof ONNX_DEVICES)[number];

/** Options of {@link createOnnxPredictor}. */
export interface OnnxPredictorOptions {
  /** Threads of the CPU engine. Default: the machine's cores (divide them between workers yourself). */
  threads?: number;
  /** `cpu` (default) or `cuda` (onnxruntime's CUDA execution provider; fails clearly where absent). */
  device?: OnnxDevice;
  /**
   * Whether the CPU engine's threads spin between operators instead of sleeping (default `true`: lowest latency
   * when the model has the cores to itself). Turn it off where other work shares the cores, such as tile decoding
   * beside inference: spinning threads take the CPU time that work needs.
   */
  spin?: boolean;
}

const CUDA_HINT =
  'The CUDA execution provider is not installed. On a machine with an NVIDIA GPU, CUDA 12 and internet access, ' +
  'install it with `ONNXRUNTIME_NODE_INSTALL=1 npm rebuild onnxruntime-node` (or run on --device cpu).';

/** The first bytes of an ELF shared library (Linux). */
const ELF_MAGIC = [0x7f, 0x45, 0x4c, 0x46];

function isLibrary(path: string): boolean {
  if (process.platform !== 'linux') return true;
  // @tessera/onnx's preinstall leaves small text markers under the provider's names so that installs do not download
  // it (scripts/cpu-only.cjs); only a real library counts.
  const head = Buffer.alloc(4);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, head, 0, 4, 0);
  } finally {
    closeSync(fd);
  }
  return ELF_MAGIC.every((b, i) => head[i] === b);
}

/** Whether onnxruntime-node's CUDA provider library is present beside its binding. */
export function cudaProviderInstalled(): boolean {
  try {
    const root = dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json'));
    const dir = join(root, 'bin', `napi-v6`, process.platform, process.arch);
    const dirs = existsSync(dir) ? [dir] : [];
    return dirs.some((d) => readdirSync(d).some((f) => f.includes('providers_cuda') && isLibrary(join(d, f))));
  } catch {
    return false;
  }
}

/** The onnxruntime-node version in use. */
export const ONNXRUNTIME_VERSION: string = ort.env.versions.node ?? ort.env.versions.common;

/**
 * A {@link Predictor} running an exported Tessera ONNX model (see `exportOnnx`) with onnxruntime-node.
 *
 * @throws EngineError when the device is unavailable or the bytes are not a model onnxruntime can load.
 * @example
 * ```ts
 * const predictor = await createOnnxPredictor(await readFile('runs/isbi/model.onnx'), { threads: 2 });
 * const probs = await predictProbabilities(predictor, image, { multiple: 16 });
 * ```
 */
export async function createOnnxPredictor(model: Uint8Array, options: OnnxPredictorOptions = {}): Promise<Predictor> {
  const device = options.device ?? 'cpu';
  if (!ONNX_DEVICES.includes(device)) {
    throw new InvalidOptionError(
      `Expected --device to be one of ${ONNX_DEVICES.join(', ')} but received ${JSON.stringify(device)}.`,
    );
  }
  const threads = options.threads ?? availableParallelism();
  if (!Number.isInteger(threads) || threads < 1) {
    throw new InvalidOptionError(`Expected a positive whole number of threads but received ${String(threads)}.`);
  }
  if (device === 'cuda' && !cudaProviderInstalled()) {
    throw new EngineError(
      `--device cuda was asked for, but onnxruntime-node ${ONNXRUNTIME_VERSION} has no CUDA provider here.`,
      CUDA_HINT,
    );
  }
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(model, {
      executionProviders: [device],
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: 'all',
      extra: { session: { intra_op: { allow_spinning: options.spin === false ? '0' : '1' } } },
    });
  } catch (error) {
    throw new EngineError(
      `onnxruntime-node ${ONNXRUNTIME_VERSION} could not load the ONNX model on ${device}: ${(error as Error).message}`,
      device === 'cuda'
        ? CUDA_HINT
        : 'Re-export the model with `tessera export <model> --format onnx`, or use --runtime tfjs.',
      error,
    );
  }
  return {
    runtime: 'onnx',
    description: `onnxruntime-node ${ONNXRUNTIME_VERSION} (${device}, ${threads} thread${threads === 1 ? '' : 's'})`,
    async run(batch, shape) {
      const input = new ort.Tensor('float32', batch, [...shape]);
      const result = await session.run({ [ONNX_IO.input]: input });
      const output = result[ONNX_IO.output];
      const data = output.data as Float32Array;
      return data;
    },
    async dispose() {
      await session.release();
    },
  };
}
