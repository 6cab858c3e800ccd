/**
 * One conformance table over every installed architecture plugin (`@tessera/arch-*`, found the way the CLI finds
 * them). A new plugin is covered without new test code: it runs at its defaults unless SMALL_OPTIONS lists smaller
 * CPU-fit configurations for it.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  InvalidOptionError,
  PluginError,
  createOptimizer,
  createRandom,
  defineArchitecture,
  getLoss,
  layers,
  randSyntheticTissue,
  setupEngine,
  tf,
  type ArchitecturePlugin,
  type ModelManifest,
} from '@tessera/core';
import { loadRegistry } from '@tessera/cli';
import { compareLabels, createOnnxPredictor, exportOnnx, quantizeOnnx, type InputTensor } from '@tessera/onnx';
import unet from '@tessera/arch-unet';
// The conformance kit plugin authors use too.
import {
  checkEncoderLayers,
  checkInputMultiple,
  checkOutputContract,
  checkReceptiveField,
  checkSaveLoad,
  checkTraining,
} from '@tessera/core/testing';

/** CPU-fit configurations per architecture; an architecture not listed runs at its defaults. */
const SMALL_OPTIONS: Record<string, Record<string, unknown>[]> = {
  unet: [
    { depth: 3, baseFilters: 8 },
    // The U-Net decoder on each of core's encoders (smp-style), at a fraction of their published widths.
    { encoder: 'vgg16', encoderWidth: 0.125, baseFilters: 8 },
    { encoder: 'mobilenetv2', encoderWidth: 0.25, baseFilters: 8 },
    { encoder: 'resnet50', encoderWidth: 0.125, baseFilters: 8 },
  ],
  fcn8s: [{ baseFilters: 8, fcFilters: 64 }],
  deeplabv3plus: [{}, { backbone: 'resnet50', resnetWidth: 8, outputStride: 8 }],
};

/**
 * Options under which the receptive field is checked, for architectures whose declared field excludes a global
 * branch (DeepLabv3+'s image-level pooling sees the whole input by design).
 */
const LOCAL_FIELD_OPTIONS: Record<string, Record<string, unknown>> = { deeplabv3plus: { imagePooling: false } };

const { registry, moduleOf } = await loadRegistry();
const plugins = registry.list() as ArchitecturePlugin<any>[];
const cases = plugins.flatMap((plugin) =>
  (SMALL_OPTIONS[plugin.name] ?? [{}]).map((options) => ({
    label: `${plugin.name} ${JSON.stringify(options)}`,
    plugin,
    options,
  })),
);
const timings: Record<string, Record<string, number>> = {};
/** int8 against fp32 label agreement per case, printed with the timings. */
const agreements: Record<string, number> = {};

/** A real H&E crop (MoNuSeg), normalised to about zero mean and unit spread, `[1, size, size, 3]`. */
async function realCrop(size: number): Promise<Float32Array> {
  const folder = join(new URL('../../shared/data/monuseg-train20/images', import.meta.url).pathname);
  const first = (await readdir(folder)).filter((n) => n.endsWith('.tif')).sort()[0];
  const raw = await sharp(join(folder, first))
    .removeAlpha()
    .extract({ left: 200, top: 300, width: size, height: size })
    .raw()
    .toBuffer();
  return Float32Array.from(raw, (v) => (v / 255 - 0.6) / 0.2);
}

/**
 * Trains a 3-channel, 2-class model with Adam for `steps` steps on four synthetic H&E-like `size` x `size` tiles,
 * then runs them through it in training mode until its batch-norm moving statistics have settled (as a full training
 * run leaves them); returns those tiles and four others, normalised, `[1, size, size, 3]` each.
 */
function trainBriefly(model: layers.LayersModel, size: number, steps = 40): Record<'seen' | 'unseen', InputTensor[]> {
  const rng = createRandom(11);
  const tiles = Array.from({ length: 8 }, (_, i) =>
    randSyntheticTissue({ width: size, height: size, density: 40 }, rng.fork(i)),
  );
  const inputs = tiles.map((t) => Float32Array.from(t.image.data, (v) => v / 255 - 0.5));
  const x = tf.tensor4d(Float32Array.from(inputs.slice(0, 4).flatMap((v) => Array.from(v))), [4, size, size, 3]);
  const y = tf.tensor3d(
    Int32Array.from(tiles.slice(0, 4).flatMap((t) => Array.from(t.mask.data))),
    [4, size, size],
    'int32',
  );
  const optimizer = createOptimizer('adam', 0.01);
  const loss = getLoss('cross-entropy');
  const variables = model.trainableWeights.map((v) => v.read() as tf.Variable);
  for (let step = 0; step < steps; step++) {
    tf.tidy(() => {
      const { grads } = tf.variableGrads(() => loss(model.apply(x, { training: true }) as tf.Tensor4D, y), variables);
      optimizer.applyGradients(grads);
    });
  }
  for (let pass = 0; pass < 100; pass++) tf.tidy(() => void model.apply(x, { training: true }));
  tf.dispose([x, y]);
  optimizer.dispose();
  const tensor = (data: Float32Array) => ({ data, shape: [1, size, size, 3] as const });
  return { seen: inputs.slice(0, 4).map(tensor), unseen: inputs.slice(4).map(tensor) };
}

const time = async <R>(label: string, what: string, fn: () => R | Promise<R>): Promise<R> => {
  const start = performance.now();
  try {
    return await fn();
  } finally {
    (timings[label] ??= {})[what] = Math.round((performance.now() - start) / 100) / 10;
  }
};

describe('architecture conformance table', () => {
  beforeAll(async () => {
    await setupEngine('wasm');
  });
  afterAll(() => {
    console.log(`conformance timings (s):\n${JSON.stringify(timings, null, 1)}`);
    console.log(`int8 against fp32 label agreement on unseen tiles:\n${JSON.stringify(agreements, null, 1)}`);
  });

  it('discovers every installed architecture package', () => {
    expect(plugins.map((p) => p.name)).toEqual(expect.arrayContaining(['unet', 'fcn8s', 'deeplabv3plus']));
  });

  describe.each(cases)('$label', ({ label, plugin, options }) => {
    it('maps [b, h, w, c] to [b, h, w, classes] probabilities for several sizes and class counts', async () => {
      const multiple = plugin.inputMultiple({ ...plugin.defaults, ...options });
      for (const shape of [
        { batch: 1, inputChannels: 1, numClasses: 2, height: 2 * multiple, width: multiple },
        { batch: 2, inputChannels: 3, numClasses: 5, height: 3 * multiple, width: 2 * multiple },
      ]) {
        const { model } = await time(label, `output ${shape.height}x${shape.width}`, () =>
          checkOutputContract(plugin, options, shape),
        );
        model.dispose();
      }
    });

    it('runs under the ONNX runtime within 1e-4 of tfjs, on random and real H&E inputs', async () => {
      const multiple = plugin.inputMultiple({ ...plugin.defaults, ...options });
      const side = Math.ceil(96 / multiple) * multiple;
      const shape = { batch: 1, inputChannels: 3, numClasses: 3, height: side, width: side };
      const { model, options: resolved } = checkOutputContract(plugin, options, shape);
      try {
        // Batch-norm statistics away from their initial 0 and 1, so normalisation is exercised too.
        model.weights.forEach((w, i) => {
          if (/moving_mean|moving_variance/.test(w.originalName)) {
            w.write(tf.randomUniform(w.shape as number[], 0.5, 1.5, 'float32', i));
          }
        });
        const manifest = {
          architecture: { name: plugin.name, options: resolved, inputMultiple: multiple },
          inputChannels: 3,
          classes: [{ name: 'a' }, { name: 'b' }, { name: 'c' }],
          normalization: {},
          files: { weights: { sha256: '' } },
        } as unknown as ModelManifest;
        const bytes = await time(label, 'onnx export', () =>
          exportOnnx(model, manifest, { converters: plugin.onnxConverters }),
        );
        const predictor = await createOnnxPredictor(bytes, { threads: 1 });
        const dims = [1, side, side, 3] as const;
        const random = tf.randomNormal([...dims], 0, 1, 'float32', 5).dataSync() as Float32Array;
        for (const input of [random, await realCrop(side)]) {
          const reference = tf.tidy(() => (model.predict(tf.tensor4d(input, [...dims])) as tf.Tensor).dataSync());
          const actual = await time(label, 'onnx run', () => predictor.run(input, dims));
          let max = 0;
          for (let i = 0; i < actual.length; i++) max = Math.max(max, Math.abs(actual[i] - reference[i]));
          expect(actual.length).toBe(reference.length);
          expect(max).toBeLessThanOrEqual(1e-4);
        }
        await predictor.dispose();
      } finally {
        model.dispose();
      }
    });

    it('quantizes to int8 (ONNX QDQ) with every convolution, labels agreeing with fp32 after brief training', async () => {
      const multiple = plugin.inputMultiple({ ...plugin.defaults, ...options });
      const size = Math.ceil(64 / multiple) * multiple;
      const shape = { batch: 1, inputChannels: 3, numClasses: 2, height: size, width: size };
      const { model, options: resolved } = checkOutputContract(plugin, options, shape);
      try {
        const { seen, unseen } = await time(label, 'brief training', () => trainBriefly(model, size));
        const manifest = {
          architecture: { name: plugin.name, options: resolved, inputMultiple: multiple },
          inputChannels: 3,
          classes: [{ name: 'background' }, { name: 'nucleus' }],
          normalization: {},
          files: { weights: { sha256: '' } },
        } as unknown as ModelManifest;
        const fp32 = exportOnnx(model, manifest, { converters: plugin.onnxConverters });
        const { bytes, report } = await time(label, 'int8 quantization', () => quantizeOnnx(fp32, seen));
        expect(report.fp32Nodes).toEqual([]);
        expect(Object.keys(report.quantizedNodes)).toContain('Conv');
        const { agreement, dice } = await compareLabels(fp32, bytes, unseen);
        agreements[label] = Math.round(agreement * 1e4) / 1e4;
        // A briefly trained network is still mostly random and amplifies rounding layer by layer: the U-Nets and
        // FCN-8s agree on 99.5-99.99% of the pixels, DeepLabv3+ on MobileNetV2 on 99%, on the 16 bottlenecks of an
        // 8-channel ResNet-50 on 92% (one grey level of noise on its input flips 1.8% of its labels).
        expect(agreement).toBeGreaterThan(0.9);
        for (const d of dice) expect(d).toBeGreaterThan(0.85);
      } finally {
        model.dispose();
      }
    });

    it('rejects an input size that is not a multiple of the declared input multiple', () => {
      const message = checkInputMultiple(plugin, options);
      const multiple = plugin.inputMultiple({ ...plugin.defaults, ...options });
      if (multiple > 1) expect(message).toMatch(`Expected image height and width divisible by ${multiple}`);
    });

    it('gives identical probabilities after saveModel / loadModel, here and in a fresh worker thread', async () => {
      const shape = { batch: 1, inputChannels: 3, numClasses: 3, height: 64, width: 64 };
      const multiple = plugin.inputMultiple({ ...plugin.defaults, ...options });
      shape.height = shape.width = Math.ceil(64 / multiple) * multiple;
      const { model, options: resolved } = checkOutputContract(plugin, options, shape);
      try {
        // The fresh thread imports only the plugin's module, as training and slide workers do: its layer classes
        // must come from the plugin's "layers" (DeepLabv3+'s atrous convolution does).
        const module = moduleOf.get(plugin.name);
        const { maxDifference, freshThreadMaxDifference } = await time(label, 'save/load', () =>
          checkSaveLoad(plugin, resolved, model, shape, { module }),
        );
        expect(maxDifference).toBeLessThanOrEqual(1e-5);
        expect(freshThreadMaxDifference).toBeLessThanOrEqual(1e-5);
      } finally {
        model.dispose();
      }
    });

    it('declares a receptive field that bounds the pixels an output depends on', async () => {
      const fieldOptions = { ...options, ...LOCAL_FIELD_OPTIONS[plugin.name] };
      const { model, options: resolved } = checkOutputContract(plugin, fieldOptions, {
        batch: 1,
        inputChannels: 3,
        numClasses: 2,
        height: plugin.inputMultiple({ ...plugin.defaults, ...fieldOptions }),
        width: plugin.inputMultiple({ ...plugin.defaults, ...fieldOptions }),
      });
      try {
        const result = await time(label, 'receptive field', () => checkReceptiveField(plugin, resolved, model, 3));
        expect(result.outsideChange).toBeLessThanOrEqual(1e-5);
        expect(result.centreChange).toBeGreaterThan(0);
      } finally {
        model.dispose();
      }
    });

    it.skipIf(!plugin.encoder)("names its encoder's layers (for freezing and transfer)", () => {
      const { model, options: resolved } = checkOutputContract(plugin, options, {
        batch: 1,
        inputChannels: 3,
        numClasses: 2,
        height: 64,
        width: 64,
      });
      try {
        const { name, encoderLayers, otherWeightedLayers } = checkEncoderLayers(plugin, resolved, model);
        const named = resolved as { encoder?: string; backbone?: string };
        if (named.encoder ?? named.backbone) expect(name).toBe(named.encoder ?? named.backbone);
        expect(encoderLayers.length).toBeGreaterThan(otherWeightedLayers.length / 4);
      } finally {
        model.dispose();
      }
    });

    it('trains on two synthetic 64x64 images to a pixel accuracy above 0.9 in 40 steps', async () => {
      const result = await time(label, 'training', () =>
        checkTraining(plugin, options, { size: 64, images: 2, steps: 40, minAccuracy: 0.9 }),
      );
      expect(result.lastLoss).toBeLessThan(result.firstLoss * 0.5);
      expect(result.accuracy).toBeGreaterThan(0.9);
    });
  });
});

describe('the conformance checks fail broken plugins', () => {
  beforeAll(async () => {
    await setupEngine('wasm');
  });

  /** A tiny plugin whose build is `body` applied to a 3x3 conv of the input. */
  const tiny = (name: string, body: (x: layers.SymbolicTensor, classes: number) => layers.SymbolicTensor, rf = 3) =>
    defineArchitecture<{ width: number }>({
      name,
      version: '0.0.0',
      apiVersion: 1,
      description: 'deliberately broken',
      defaults: { width: 4 },
      optionsSchema: { width: { type: 'integer', min: 1, description: 'filters' } },
      inputMultiple: () => 2,
      receptiveField: () => rf,
      build: ({ inputChannels, numClasses }) => {
        const input = layers.input({ shape: [null, null, inputChannels] });
        const x = layers.layers
          .conv2d({ filters: 4, kernelSize: 3, padding: 'same' })
          .apply(input) as layers.SymbolicTensor;
        return layers.model({ inputs: input, outputs: body(x, numClasses) });
      },
    });
  const shape = { batch: 1, inputChannels: 3, numClasses: 2, height: 16, width: 16 };

  it('rejects an output of the wrong size', () => {
    const halfSize = tiny('half-size', (x, k) => {
      const pooled = layers.layers.maxPooling2d({ poolSize: 2 }).apply(x) as layers.SymbolicTensor;
      return layers.layers
        .conv2d({ filters: k, kernelSize: 1, activation: 'softmax' })
        .apply(pooled) as layers.SymbolicTensor;
    });
    expect(() => checkOutputContract(halfSize, {}, shape)).toThrow(
      /Expected output shape \[1, 16, 16, 2\] from architecture "half-size".* but received \[1, 8, 8, 2\]/,
    );
  });

  it('rejects outputs that are not probabilities', () => {
    const logits = tiny(
      'logits',
      (x, k) => layers.layers.conv2d({ filters: k, kernelSize: 1 }).apply(x) as layers.SymbolicTensor,
    );
    expect(() => checkOutputContract(logits, {}, shape)).toThrow(PluginError);
  });

  it('rejects a receptive field declared too small', () => {
    const base = unet({ depth: 2, baseFilters: 4 });
    const tooSmall = { ...base, name: 'unet-small-field', receptiveField: () => 21 } as typeof base;
    const { model, options } = checkOutputContract(tooSmall, {}, shape);
    try {
      expect(() => checkReceptiveField(tooSmall, options, model, 3)).toThrow(
        /Declared receptive field 21 px .* is too small/,
      );
      // The true field (14 * 2^2 - 9 = 47) passes.
      expect(checkReceptiveField(base, options, model, 3).outsideChange).toBeLessThanOrEqual(1e-5);
    } finally {
      model.dispose();
    }
  });

  it('rejects a network whose centre pixel does not reach the centre output', () => {
    // Two 3x3 convs declared (rf 5) but the output ignores the input entirely after a zero conv.
    const deaf = tiny(
      'deaf',
      (x, k) =>
        layers.layers
          .conv2d({ filters: k, kernelSize: 1, kernelInitializer: 'zeros', activation: 'softmax' })
          .apply(x) as layers.SymbolicTensor,
      5,
    );
    const { model, options } = checkOutputContract(deaf, {}, shape);
    try {
      expect(() => checkReceptiveField(deaf, options, model, 3)).toThrow(/did not change the centre output/);
    } finally {
      model.dispose();
    }
  });

  it('checkInputSize names the architecture, the size received and the padding to use', async () => {
    const { checkInputSize } = await import('@tessera/core');
    const fcn = registry.get('fcn8s');
    expect(() => checkInputSize(fcn, fcn.defaults, 100, 96)).toThrow(InvalidOptionError);
    expect(() => checkInputSize(fcn, fcn.defaults, 100, 96)).toThrow(
      'Expected image height and width divisible by 32 for architecture "fcn8s" but received 100x96. Pad the image to 128x96 (or use --tile 128).',
    );
    expect(() => checkInputSize(fcn, fcn.defaults, 128, 96)).not.toThrow();
  });
});
