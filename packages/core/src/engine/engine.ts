import * as tf from '@tensorflow/tfjs-core';
import { EngineError, unknownName } from '../errors.js';
import { registerBatchNormalization } from '../arch/batch-norm.js';
import { registerFastGradients } from './gradients.js';

/** Engines Tessera can run on, fastest first. */
export const ENGINE_NAMES = ['tfjs-node-gpu', 'tfjs-node', 'wasm', 'cpu'] as const;
/** One of {@link ENGINE_NAMES}. */
export type EngineName = (typeof ENGINE_NAMES)[number];

/** The engine in use, as printed by the CLI and recorded in manifests. */
export interface EngineInfo {
  /** Engine name, e.g. `wasm`. */
  name: EngineName;
  /** The tfjs backend name, e.g. `wasm`, `tensorflow`, `cpu`. */
  backend: string;
  /** Threads the engine computes with. */
  threads: number;
  /** Why this engine was chosen. */
  reason: string;
}

/** Presence of one engine on this machine, for `tessera doctor`. */
export interface EngineProbe {
  name: EngineName;
  available: boolean;
  /** Why it is missing, or what it is. */
  detail: string;
  /** How to install it, when missing. */
  install?: string;
}

const INSTALL: Record<EngineName, string> = {
  'tfjs-node-gpu':
    'npm install @tensorflow/tfjs-node-gpu@4.22.0 (needs CUDA 11.8/cuDNN 8 and internet access to download libtensorflow)',
  'tfjs-node':
    'npm install @tensorflow/tfjs-node@4.22.0 (downloads libtensorflow from storage.googleapis.com at install)',
  wasm: 'bundled with @tessera/core (@tensorflow/tfjs-backend-wasm)',
  cpu: 'bundled with @tessera/core (@tensorflow/tfjs-backend-cpu)',
};

let active: EngineInfo | undefined;

async function tryLoad(name: EngineName): Promise<{ ok: true; backend: string } | { ok: false; detail: string }> {
  try {
    switch (name) {
      case 'tfjs-node-gpu':
        await import(/* optional peer */ '@tensorflow/tfjs-node-gpu' as string);
        return { ok: true, backend: 'tensorflow' };
      case 'tfjs-node':
        await import(/* optional peer */ '@tensorflow/tfjs-node' as string);
        return { ok: true, backend: 'tensorflow' };
      case 'wasm': {
        await import('@tensorflow/tfjs-backend-wasm');
        const { registerWasmGradientKernels } = await import('./wasm-gradients.js');
        registerWasmGradientKernels();
        (await import('./wasm-kernels.js')).registerWasmKernels();
        return { ok: true, backend: 'wasm' };
      }
      case 'cpu':
        await import('@tensorflow/tfjs-backend-cpu');
        return { ok: true, backend: 'cpu' };
    }
  } catch (error) {
    const code = (error as { code?: string }).code;
    const message = (error as Error).message ?? '';
    const missing =
      code === 'ERR_MODULE_NOT_FOUND' ||
      code === 'MODULE_NOT_FOUND' ||
      /Cannot find (module|package)|Could not resolve|Failed to load url/.test(message);
    const detail = missing ? 'not installed' : `failed to load: ${(error as Error).message.split('\n')[0]}`;
    return { ok: false, detail };
  }
}

/**
 * Lists every engine and whether it can be loaded here. Loading registers backends but does not
 * change the active one.
 */
export async function probeEngines(): Promise<EngineProbe[]> {
  const probes: EngineProbe[] = [];
  for (const name of ENGINE_NAMES) {
    const result = await tryLoad(name);
    probes.push(
      result.ok
        ? { name, available: true, detail: `tfjs backend "${result.backend}"` }
        : { name, available: false, detail: result.detail, install: INSTALL[name] },
    );
  }
  return probes;
}

/**
 * Selects and initialises the compute engine: the one asked for (`requested`, else the
 * `TESSERA_BACKEND` environment variable), or the fastest present in the order
 * tfjs-node-gpu, tfjs-node, wasm, cpu.
 *
 * @param requested engine name or `auto` (default).
 * @throws UnknownNameError for a name not in {@link ENGINE_NAMES}; EngineError when the requested one is absent.
 * @example
 * ```ts
 * const engine = await setupEngine('wasm'); // { name: 'wasm', backend: 'wasm', threads: 1, reason: ... }
 * ```
 */
export async function setupEngine(requested?: string): Promise<EngineInfo> {
  const fromEnv = process.env.TESSERA_BACKEND;
  const wanted = (requested ?? fromEnv ?? 'auto').trim();
  const via = requested !== undefined ? '--backend' : fromEnv !== undefined ? 'TESSERA_BACKEND' : 'default';
  if (wanted !== 'auto' && !(ENGINE_NAMES as readonly string[]).includes(wanted)) {
    throw unknownName(
      'engine',
      wanted,
      ['auto', ...ENGINE_NAMES],
      'Run "tessera doctor" to see which engines are installed.',
    );
  }
  // tfjs-layers registers every op's gradient with tfjs-core; training needs them on any engine.
  await import('@tensorflow/tfjs-layers');
  // Production mode: no debug checks, and no console advertising for tfjs-node on the cpu engine.
  tf.env().set('PROD', true);
  registerFastGradients();
  registerBatchNormalization();
  (await import('./dilated-gradients.js')).registerDilatedGradients();
  const candidates: EngineName[] = wanted === 'auto' ? [...ENGINE_NAMES] : [wanted as EngineName];
  const skipped: string[] = [];
  for (const name of candidates) {
    const result = await tryLoad(name);
    if (!result.ok) {
      if (wanted !== 'auto') {
        throw new EngineError(
          `Engine "${name}" was asked for (${via}) but is ${result.detail}.`,
          `Install it: ${INSTALL[name]}`,
        );
      }
      skipped.push(`${name} ${result.detail}`);
      continue;
    }
    const ok = await tf.setBackend(result.backend);
    await tf.ready();
    if (!ok) {
      if (wanted !== 'auto') throw new EngineError(`Engine "${name}" failed to initialise on this machine.`);
      skipped.push(`${name} failed to initialise`);
      continue;
    }
    const reason =
      wanted === 'auto'
        ? skipped.length
          ? `fastest available (${skipped.join('; ')})`
          : 'fastest available'
        : `asked for with ${via}`;
    active = { name, backend: result.backend, threads: engineThreads(name), reason };
    return active;
  }
  throw new EngineError('No engine could be initialised.', 'Reinstall @tessera/core.');
}

function engineThreads(name: EngineName): number {
  if (name === 'wasm') {
    // Threads are disabled in Node by tfjs-backend-wasm.
    return 1;
  }
  if (name === 'cpu') return 1;
  return 0; // decided by libtensorflow (all cores)
}

/** The engine chosen by the last {@link setupEngine} call, if any. */
export function activeEngine(): EngineInfo | undefined {
  return active;
}
