import {
  countParameters,
  PluginError,
  resolveArchitectureOptions,
  tf,
  TesseraError,
  type ArchitecturePlugin,
  type ModelManifest,
} from '@tessera/core';
import { colour, info } from '../progress.js';
import { getArchitecture, isPluginReference, loadRegistry } from '../plugins.js';
import { importOnnx } from '../runtime.js';
import { parseKeyValues, startEngine } from './shared.js';

/** Options of `tessera check-plugin`. */
export interface CheckPluginCliOptions {
  archOption: string[];
  /** `false` with `--no-training`. */
  training?: boolean;
  backend?: string;
  quiet?: boolean;
  json?: boolean;
}

/** One check's outcome. */
export interface PluginCheckResult {
  name: string;
  status: 'ok' | 'failed' | 'skipped';
  detail: string;
  hint?: string;
  seconds: number;
}

type Check = { name: string; run: () => Promise<string | { skipped: string }> };

/**
 * `tessera check-plugin <file|package|name>`: loads an architecture plugin exactly as `train`, `evaluate` and `predict`
 * do (discovery, the one-core check, `validatePlugin`, its `layers`), then runs the conformance kit of
 * `@tessera/core/testing` over it: output contract, input multiple, save/load in this thread and in a fresh worker
 * thread that imports only the plugin's module (as training and slide workers do), receptive field, training on
 * synthetic tissue, and, where `@tessera/onnx` is installed, the ONNX export against tfjs.
 *
 * @throws PluginError (exit code 8) naming the checks that failed; the output lists each with its message and hint.
 */
export async function checkPluginCommand(target: string, opts: CheckPluginCliOptions): Promise<void> {
  const out = { quiet: opts.quiet || opts.json, json: opts.json };
  // The kit is loaded only by this command.
  const { checkInputMultiple, checkOutputContract, checkReceptiveField, checkSaveLoad, checkTraining } = await import(
    '@tessera/core/testing'
  );
  await startEngine(opts.backend, out, {
    engine: 'wasm',
    reason: 'the default of check-plugin: the engine every user has; --backend chooses another',
  });
  const plugins = await loadRegistry(isPluginReference(target) ? target : undefined);
  const plugin = getArchitecture(plugins, plugins.extraName ?? target) as ArchitecturePlugin<any>;
  const module = plugins.moduleOf.get(plugin.name)!;
  const source = plugins.registry.origin(plugin.name).source;
  const userOptions = parseKeyValues(opts.archOption ?? [], '--arch-option');
  const options = resolveArchitectureOptions(plugin, userOptions);
  const multiple = plugin.inputMultiple(options);
  const side = Math.ceil(64 / multiple) * multiple;
  info(
    out,
    `checking architecture "${plugin.name}" ${plugin.version} from ${source}, options ${JSON.stringify(options)}`,
  );

  const checks: Check[] = [
    {
      name: 'output contract',
      run: async () => {
        const shapes = [
          { batch: 1, inputChannels: 1, numClasses: 2, height: 2 * multiple, width: multiple },
          { batch: 2, inputChannels: 3, numClasses: 5, height: 3 * multiple, width: 2 * multiple },
        ];
        for (const shape of shapes) checkOutputContract(plugin, userOptions, shape).model.dispose();
        return `probabilities ${shapes.map((s) => `[${s.batch}, ${s.height}, ${s.width}, ${s.numClasses}]`).join(' and ')}`;
      },
    },
    {
      name: 'input multiple',
      run: async () => {
        const message = checkInputMultiple(plugin, userOptions);
        return message ? `${multiple}; other sizes are refused with the padding to use` : `${multiple}: any size`;
      },
    },
    {
      name: 'save and load',
      run: async () => {
        const shape = { batch: 1, inputChannels: 3, numClasses: 3, height: side, width: side };
        const { model } = checkOutputContract(plugin, userOptions, shape);
        try {
          const r = await checkSaveLoad(plugin, options, model, shape, { module });
          return (
            `${countParameters(model).toLocaleString('en-US')} parameters; max |Δp| ${r.maxDifference.toExponential(1)} ` +
            `here, ${r.freshThreadMaxDifference!.toExponential(1)} in a fresh worker thread that imports only the plugin`
          );
        } finally {
          model.dispose();
        }
      },
    },
    {
      name: 'receptive field',
      run: async () => {
        const shape = { batch: 1, inputChannels: 3, numClasses: 2, height: multiple, width: multiple };
        const { model } = checkOutputContract(plugin, userOptions, shape);
        try {
          const r = checkReceptiveField(plugin, options, model, 3);
          return `${r.declared} px holds (outside change ${r.outsideChange.toExponential(1)}, centre change ${r.centreChange.toExponential(1)})`;
        } finally {
          model.dispose();
        }
      },
    },
    {
      name: 'training',
      run: async () => {
        if (opts.training === false) return { skipped: '--no-training' };
        const r = checkTraining(plugin, userOptions, { size: side, images: 2, steps: 40, minAccuracy: 0.9 });
        return `loss ${r.firstLoss.toFixed(3)} -> ${r.lastLoss.toFixed(3)}, pixel accuracy ${r.accuracy.toFixed(3)} after ${r.steps} Adam steps`;
      },
    },
    {
      name: 'ONNX export',
      run: async () => {
        const onnx = await importOnnx();
        if (!onnx) return { skipped: '@tessera/onnx is not installed; predict uses tfjs' };
        const shape = { batch: 1, inputChannels: 3, numClasses: 3, height: side, width: side };
        const { model } = checkOutputContract(plugin, userOptions, shape);
        try {
          const manifest = {
            architecture: { name: plugin.name, version: plugin.version, options, inputMultiple: multiple },
            inputChannels: 3,
            classes: [{ name: 'a' }, { name: 'b' }, { name: 'c' }],
            normalization: {},
            files: { weights: { sha256: '' } },
          } as unknown as ModelManifest;
          let bytes: Uint8Array;
          try {
            bytes = onnx.exportOnnx(model, manifest, { converters: plugin.onnxConverters });
          } catch (error) {
            if (error instanceof onnx.UnsupportedLayerError) {
              return {
                skipped: `${error.message} predict --runtime auto uses tfjs for this architecture (add converters in onnxConverters)`,
              };
            }
            throw error;
          }
          const dims = [1, side, side, 3] as const;
          const input = tf.randomNormal([...dims], 0, 1, 'float32', 5).dataSync() as Float32Array;
          const reference = tf.tidy(() => (model.predict(tf.tensor4d(input, [...dims])) as tf.Tensor).dataSync());
          const predictor = await onnx.createOnnxPredictor(bytes, { threads: 1 });
          const actual = await predictor.run(input, dims);
          await predictor.dispose();
          let max = actual.length === reference.length ? 0 : Infinity;
          for (let i = 0; i < actual.length; i++) max = Math.max(max, Math.abs(actual[i] - reference[i]));
          if (!(max <= 1e-4)) {
            throw new PluginError(
              `The ONNX export of architecture "${plugin.name}" differs from its tfjs model by ${max} (tolerance 1e-4) on a [1, ${side}, ${side}, 3] input.`,
              'Check the converters in onnxConverters: ONNX tensors are NCHW, and weights come in tfjs layout.',
            );
          }
          return `onnxruntime within ${max.toExponential(1)} of tfjs`;
        } finally {
          model.dispose();
        }
      },
    },
  ];

  const results: PluginCheckResult[] = [];
  for (const check of checks) {
    const start = performance.now();
    let result: Omit<PluginCheckResult, 'seconds'>;
    try {
      const detail = await check.run();
      result =
        typeof detail === 'string'
          ? { name: check.name, status: 'ok', detail }
          : { name: check.name, status: 'skipped', detail: detail.skipped };
    } catch (error) {
      const e = error as Error;
      result = {
        name: check.name,
        status: 'failed',
        detail: e instanceof TesseraError ? e.message : `${e?.name}: ${e?.message}`,
        hint: e instanceof TesseraError ? e.hint : undefined,
      };
    }
    const seconds = Math.round((performance.now() - start) / 100) / 10;
    results.push({ ...result, seconds });
    const label = { ok: colour('ok     ', 'green'), failed: colour('FAILED ', 'red'), skipped: 'skipped' }[
      result.status
    ];
    info(out, `  ${label} ${check.name}: ${result.detail} (${seconds}s)`);
    if (result.hint) info(out, `          hint: ${result.hint}`);
  }
  if (opts.json) {
    process.stdout.write(
      JSON.stringify({ architecture: plugin.name, version: plugin.version, source, module, options, checks: results }) +
        '\n',
    );
  }
  const failed = results.filter((r) => r.status === 'failed');
  if (failed.length > 0) {
    throw new PluginError(
      `${failed.length} of ${results.length} checks failed for architecture "${plugin.name}" from ${source}: ` +
        failed.map((f) => f.name).join(', ') +
        `. First: ${failed[0].detail}`,
      failed[0].hint,
    );
  }
  info(
    out,
    `architecture "${plugin.name}" passes every check that ran (${results.filter((r) => r.status === 'ok').length} of ${results.length})`,
  );
}
