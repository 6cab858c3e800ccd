import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tessera } from './test-helpers.js';
import { createRandom, randSyntheticTissue, writePng } from '@tessera/core';

// Inside the workspace, so that a plugin package made here resolves @tessera/core.
const TMP_PARENT = fileURLToPath(new URL('..', import.meta.url));

let root: string;
let images: string;
let masks: string;
let model: string;

const TRAIN = ['--tile', '32', '--batch', '2', '--steps-per-epoch', '3', '--epochs', '1', '--quiet'];

beforeAll(async () => {
  root = await mkdtemp(join(TMP_PARENT, 'tmp-runtime-test-'));
  images = join(root, 'images');
  masks = join(root, 'masks');
  await mkdir(images);
  await mkdir(masks);
  const rng = createRandom(5);
  for (let i = 0; i < 3; i++) {
    const { image, mask } = randSyntheticTissue({ width: 96, height: 80, density: 30 }, rng.fork(i));
    await writePng(join(images, `tile-${i}.png`), image);
    await writePng(join(masks, `tile-${i}.png`), { data: mask.data, width: 96, height: 80, channels: 1 });
  }
  model = join(root, 'model');
  const train = tessera([
    'train',
    ...['--images', images, '--masks', masks, '--out', model],
    ...['--arch-option', 'depth=2', '--arch-option', 'baseFilters=4'],
    ...TRAIN,
  ]);
  expect(train.code, train.stderr).toBe(0);
});
afterAll(async () => rm(root, { recursive: true, force: true }));

async function rawPixels(file: string): Promise<Buffer> {
  return sharp(file).raw().toBuffer();
}

/** The int8 model of the test model folder. */
const int8File = () => join(model, 'model.int8.onnx');

/** What `tessera export --quantize int8 --json` prints under `int8`. */
interface Int8Record {
  path: string;
  method: string;
  percentile: number | null;
  fp32Nodes: unknown[];
  quantizedNodes: Record<string, number>;
  calibration: { source: string; files: string[]; tiles: number; tileSize: number; sha256: string };
  agreement: { pixels: number; labels: number; dice: Record<string, number | null> };
}

describe('prediction runtimes (tfjs and ONNX)', () => {
  it('gives the same label maps and probabilities (within one 8-bit level) with --runtime onnx and tfjs', async () => {
    const onnx = tessera([
      'predict',
      images,
      '--model',
      model,
      '--out',
      join(root, 'p-onnx'),
      '--runtime',
      'onnx',
      '--probabilities',
    ]);
    expect(onnx.code, onnx.stderr).toBe(0);
    expect(onnx.stderr).toMatch(/runtime: onnxruntime-node [\d.]+ \(cpu, \d+ threads?\) \(exported now/);
    const tfjs = tessera([
      'predict',
      images,
      '--model',
      model,
      '--out',
      join(root, 'p-tfjs'),
      '--runtime',
      'tfjs',
      '--probabilities',
    ]);
    expect(tfjs.code, tfjs.stderr).toBe(0);
    expect(tfjs.stderr).toContain('runtime: tfjs (wasm)');
    for (let i = 0; i < 3; i++) {
      const a = await rawPixels(join(root, 'p-onnx', `tile-${i}_labels.png`));
      const b = await rawPixels(join(root, 'p-tfjs', `tile-${i}_labels.png`));
      let differing = 0;
      for (let j = 0; j < a.length; j++) if (a[j] !== b[j]) differing++;
      // Only pixels whose two probabilities tie to ~1e-6 could flip.
      expect(differing / a.length).toBeLessThan(1e-3);
      const pa = await rawPixels(join(root, 'p-onnx', `tile-${i}_prob_class_1.png`));
      const pb = await rawPixels(join(root, 'p-tfjs', `tile-${i}_prob_class_1.png`));
      for (let j = 0; j < pa.length; j++) expect(Math.abs(pa[j] - pb[j])).toBeLessThanOrEqual(1);
    }
  });

  it('exports model.onnx with a checked difference, and predict then uses it', () => {
    const exported = tessera(['export', model, '--format', 'onnx', '--json']);
    expect(exported.code, exported.stderr).toBe(0);
    const result = JSON.parse(exported.stdout) as {
      path: string;
      opset: number;
      check: { maxAbsProbabilityDifference: number };
    };
    expect(result.path).toBe(join(model, 'model.onnx'));
    expect(result.opset).toBe(17);
    expect(result.check.maxAbsProbabilityDifference).toBeLessThan(1e-4);
    expect(existsSync(join(model, 'model.onnx'))).toBe(true);
    const auto = tessera(['predict', join(images, 'tile-0.png'), '--model', model, '--out', join(root, 'p-auto')]);
    expect(auto.code, auto.stderr).toBe(0);
    expect(auto.stderr).toContain('(model.onnx of the model)');
  });

  it('refuses impossible runtime options with the valid choices, and --device cuda without the CUDA provider', () => {
    const bad = tessera(['predict', images, '--model', model, '--out', join(root, 'p-bad'), '--runtime', 'tensorrt']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('Expected --runtime to be one of auto, onnx, tfjs but received "tensorrt"');
    const format = tessera(['export', model, '--format', 'tflite']);
    expect(format.code).toBe(2);
    expect(format.stderr).toContain('Expected --format to be one of onnx but received "tflite"');
    const cuda = tessera(['predict', images, '--model', model, '--out', join(root, 'p-cuda'), '--device', 'cuda']);
    expect(cuda.code).toBe(9);
    expect(cuda.stderr).toMatch(/--device cuda was asked for, but onnxruntime-node .* has no CUDA provider here/);
    expect(cuda.stderr).toContain('ONNXRUNTIME_NODE_INSTALL=1 npm rebuild onnxruntime-node');
    const cudaTfjs = tessera([
      'predict',
      images,
      '--model',
      model,
      '--out',
      join(root, 'p-cuda2'),
      '--runtime',
      'tfjs',
      '--device',
      'cuda',
    ]);
    expect(cudaTfjs.code).toBe(2);
  });

  it('falls back to tfjs with a warning for a plugin layer without an ONNX converter; --runtime onnx names it', async () => {
    // A third-party plugin package with a custom layer and no converter.
    const project = join(root, 'project');
    const pkg = join(project, 'node_modules', 'tessera-arch-doubler');
    await mkdir(pkg, { recursive: true });
    await writeFile(
      join(pkg, 'package.json'),
      JSON.stringify({ name: 'tessera-arch-doubler', version: '1.0.0', type: 'module', main: 'index.js' }),
    );
    await writeFile(
      join(pkg, 'index.js'),
      `import { layers, tf, ARCHITECTURE_API_VERSION } from '@tessera/core';
class Doubler extends layers.layers.Layer {
  static className = 'DoublerLayer';
  call(inputs) { return tf.mul(Array.isArray(inputs) ? inputs[0] : inputs, 2); }
}
tf.serialization.registerClass(Doubler);
export default function doubler() {
  return {
    name: 'doubler', version: '1.0.0', apiVersion: ARCHITECTURE_API_VERSION, description: 'test net',
    defaults: {}, optionsSchema: {}, inputMultiple: () => 1, receptiveField: () => 3,
    build({ inputChannels, numClasses, seed = 0 }) {
      const input = layers.input({ shape: [null, null, inputChannels] });
      const conv = layers.layers.conv2d({ filters: numClasses, kernelSize: 3, padding: 'same',
        kernelInitializer: layers.initializers.glorotUniform({ seed }) }).apply(input);
      const out = layers.layers.softmax({ axis: -1 }).apply(new Doubler({}).apply(conv));
      return layers.model({ inputs: input, outputs: out });
    },
  };
}
`,
    );
    const out = join(project, 'model');
    const train = tessera(
      ['train', '--arch', 'doubler', '--images', images, '--masks', masks, '--out', out, ...TRAIN],
      project,
    );
    expect(train.code, train.stderr).toBe(0);
    const auto = tessera(['predict', images, '--model', out, '--out', join(project, 'p')], project);
    expect(auto.code, auto.stderr).toBe(0);
    expect(auto.stderr).toContain(
      'warning: Cannot export doubler to ONNX: no converter for layer class(es) DoublerLayer.',
    );
    expect(auto.stderr).toContain('Falling back to the tfjs runtime');
    expect(auto.stderr).toContain('runtime: tfjs (wasm) (the model does not convert to ONNX)');
    const forced = tessera(
      ['predict', images, '--model', out, '--out', join(project, 'p2'), '--runtime', 'onnx'],
      project,
    );
    expect(forced.code).toBe(7);
    expect(forced.stderr).toContain('no converter for layer class(es) DoublerLayer');
    expect(await readFile(join(project, 'p', 'tile-0_labels.png'))).toBeTruthy();
  });

  it('refuses bad int8 options with the valid choices', () => {
    const cases: [string[], string][] = [
      [['--quantize', 'int4'], 'Expected --quantize to be one of int8 but received "int4".'],
      [['--quantize', 'int8', '--calibration-method', 'entropy'], 'Expected --calibration-method to be one of'],
      [['--quantize', 'int8', '--min-agreement', '-1'], 'Expected --min-agreement to be a share of pixels >= 0'],
    ];
    for (const [flags, message] of cases) {
      const result = tessera(['export', model, '--format', 'onnx', ...flags]);
      expect(result.code, result.stderr).toBe(2);
      expect(result.stderr).toContain(message);
    }
    const out = join(root, 'p-bad-precision');
    const precision = tessera(['predict', images, '--model', model, '--out', out, '--precision', 'int16']);
    expect(precision.code).toBe(2);
    expect(precision.stderr).toContain('Expected --precision to be one of fp32, int8 but received "int16".');
    const int8 = (extra: string[]) =>
      tessera(['predict', images, '--model', model, '--out', out, '--precision', 'int8', ...extra]);
    const tfjs = int8(['--runtime', 'tfjs']);
    expect(tfjs.code).toBe(2);
    expect(tfjs.stderr).toContain('--precision int8 needs --runtime onnx (or auto)');
  });

  it('predict --precision int8 without model.int8.onnx names the command that makes it', () => {
    expect(existsSync(int8File())).toBe(false);
    const missing = tessera([
      'predict',
      images,
      '--model',
      model,
      '--out',
      join(root, 'p-missing'),
      '--precision',
      'int8',
    ]);
    expect(missing.code).toBe(4);
    expect(missing.stderr).toContain(`--precision int8 needs ${int8File()}, which does not exist.`);
    expect(missing.stderr).toContain(`tessera export ${model} --format onnx --quantize int8`);
  });

  it('writes model.int8.onnx calibrated on the training images, records it, and predicts images and slides with it', async () => {
    // The test model is 3 steps old: its labels flip under a grey level of noise, so 0.97 here (the tables of
    // test/architectures.test.ts check agreement on trained networks).
    const exported = tessera([
      'export',
      model,
      '--format',
      'onnx',
      '--quantize',
      'int8',
      '--min-agreement',
      '0.97',
      '--json',
    ]);
    expect(exported.code, exported.stderr).toBe(0);
    const { int8 } = JSON.parse(exported.stdout) as { int8: Int8Record };
    expect(int8.path).toBe(int8File());
    expect(int8).toMatchObject({ method: 'percentile', percentile: 99.99, fp32Nodes: [] });
    // The training images (not those held out for validation), 96 x 80: six whole 32 x 32 tiles (the model's tile
    // size) each.
    const manifest = JSON.parse(await readFile(join(model, 'manifest.json'), 'utf8'));
    const stems: string[] = manifest.training.data.trainStems;
    expect(int8.calibration.files).toEqual(stems.map((s) => join(images, `${s}.png`)));
    expect(int8.calibration).toMatchObject({ source: 'training images', tiles: 6 * stems.length, tileSize: 32 });
    expect(int8.calibration.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(int8.quantizedNodes.Conv).toBeGreaterThan(0);
    expect(int8.agreement.pixels).toBe(int8.calibration.tiles * 32 * 32);
    expect(int8.agreement.labels).toBeGreaterThanOrEqual(0.97);
    Object.assign(manifest, JSON.parse(await readFile(join(model, 'manifest.json'), 'utf8')));
    expect(manifest.quantization).toMatchObject({ file: 'model.int8.onnx', format: 'onnx-qdq', precision: 'int8' });
    expect(manifest.quantization.calibration).toEqual(int8.calibration);
    expect(manifest.quantization.agreement).toEqual({ ...int8.agreement, threshold: 0.97, forced: false });
    expect(manifest.quantization.weightsSha256).toBe(manifest.files.weights.sha256);

    const fp32 = tessera(['predict', images, '--model', model, '--out', join(root, 'p-fp32'), '--runtime', 'onnx']);
    expect(fp32.code, fp32.stderr).toBe(0);
    const quantized = tessera([
      'predict',
      images,
      '--model',
      model,
      '--out',
      join(root, 'p-int8'),
      '--precision',
      'int8',
    ]);
    expect(quantized.code, quantized.stderr).toBe(0);
    expect(quantized.stderr).toMatch(/runtime: onnxruntime-node [\d.]+ \(cpu, \d+ threads?\) \(model\.int8\.onnx of/);
    let same = 0;
    let pixels = 0;
    for (let i = 0; i < 3; i++) {
      const a = await rawPixels(join(root, 'p-fp32', `tile-${i}_labels.png`));
      const b = await rawPixels(join(root, 'p-int8', `tile-${i}_labels.png`));
      for (let j = 0; j < a.length; j++) same += a[j] === b[j] ? 1 : 0;
      pixels += a.length;
    }
    expect(same / pixels).toBeGreaterThanOrEqual(0.98);

    // A whole slide (a tiled TIFF) goes through the tiler's workers, which read model.int8.onnx.
    const slide = join(root, 'slide.tif');
    await sharp(join(images, 'tile-0.png'))
      .resize(192, 160)
      .tiff({ tile: true, tileWidth: 64, tileHeight: 64 })
      .toFile(slide);
    const slideArgs = (out: string) => [
      'predict',
      slide,
      '--model',
      model,
      '--out',
      out,
      '--workers',
      '1',
      '--no-tissue',
    ];
    const slideFp32 = tessera([...slideArgs(join(root, 's-fp32')), '--runtime', 'onnx']);
    expect(slideFp32.code, slideFp32.stderr).toBe(0);
    const slideInt8 = tessera([...slideArgs(join(root, 's-int8')), '--precision', 'int8']);
    expect(slideInt8.code, slideInt8.stderr).toBe(0);
    expect(slideInt8.stderr).toContain('runtime: onnx (model.int8.onnx of the model)');
    const [a, b] = [
      await rawPixels(join(root, 's-fp32', 'slide_labels.tif')),
      await rawPixels(join(root, 's-int8', 'slide_labels.tif')),
    ];
    const { width, height } = await sharp(join(root, 's-int8', 'slide_labels.tif')).metadata();
    expect([width, height, b.length]).toEqual([192, 160, a.length]);
    let agree = 0;
    for (let j = 0; j < a.length; j++) agree += a[j] === b[j] ? 1 : 0;
    expect(agree / a.length).toBeGreaterThanOrEqual(0.98);
  });

  it('refuses an int8 model below --min-agreement, quoting the figure, the threshold and --force', async () => {
    await rm(int8File(), { force: true });
    const refused = tessera(['export', model, '--format', 'onnx', '--quantize', 'int8', '--min-agreement', '1.01']);
    expect(refused.code).toBe(12);
    expect(refused.stderr).toMatch(
      /calibrating int8 on \d+ tiles of 32 x 32 from 2 training image\(s\) \(percentile 99\.99\)/,
    );
    expect(refused.stderr).toMatch(/int8 weights \(per output channel\) for \d+ Conv\n/);
    expect(refused.stderr).toMatch(
      /labels agree on \d+\.\d\d% of \d+ pixels \(--min-agreement 1\.01\); Dice per class: class_0 \d\.\d{4}, class_1 \d\.\d{4}/,
    );
    expect(refused.stderr).toMatch(
      /error: Refusing to write .*model\.int8\.onnx: the int8 labels agree with fp32 on \d+\.\d\d% of the calibration pixels \(\d\.\d{4}\), below --min-agreement 1\.01\./,
    );
    expect(refused.stderr).toContain('or write it anyway with --force');
    expect(existsSync(int8File())).toBe(false);
    const forced = tessera([
      'export',
      model,
      '--format',
      'onnx',
      '--quantize',
      'int8',
      ...['--min-agreement', '1.01', '--force', '--calibration', images, '--calibration-method', 'minmax', '--json'],
    ]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(forced.stderr).toContain('below --min-agreement 1.01; written anyway (--force)');
    expect(existsSync(int8File())).toBe(true);
    const manifest = JSON.parse(await readFile(join(model, 'manifest.json'), 'utf8'));
    expect(manifest.quantization).toMatchObject({ method: 'minmax', percentile: null });
    expect(manifest.quantization.calibration.source).toBe('--calibration');
    expect(manifest.quantization.agreement).toMatchObject({ threshold: 1.01, forced: true });
  });

  it('refuses a model.int8.onnx quantized from other weights', async () => {
    const copy = join(root, 'model-retrained');
    await cp(model, copy, { recursive: true });
    const manifest = JSON.parse(await readFile(join(copy, 'manifest.json'), 'utf8'));
    manifest.files.weights.sha256 = 'f'.repeat(64);
    await writeFile(join(copy, 'manifest.json'), JSON.stringify(manifest));
    const stale = tessera(['predict', images, '--model', copy, '--out', join(root, 'p-stale'), '--precision', 'int8']);
    expect(stale.code).toBe(7);
    expect(stale.stderr).toContain(`${join(copy, 'model.int8.onnx')} was quantized from other weights`);
    expect(stale.stderr).toContain(`tessera export ${copy} --format onnx --quantize int8`);
  });
});
