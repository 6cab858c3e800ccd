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
    const int8 = (extra: string[]) =>
      tessera(['predict', images, '--model', model, '--out', out, '--precision', 'int8', ...extra]);
    const tfjs = int8(['--runtime', 'tfjs']);
    expect(tfjs.code).toBe(2);
    expect(tfjs.stderr).toContain('--precision int8 needs --runtime onnx (or auto)');
    const queue = int8(['--queue', 'redis://q']);
    expect(queue.code).toBe(2);
    expect(queue.stderr).toContain('--precision int8 is not supported with --queue yet');
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
    const exported = tessera(['export', model, '--format', 'onnx', '--quantize', 'int8', '--json']);
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
    expect(int8.agreement.labels).toBeGreaterThanOrEqual(0.99);
    Object.assign(manifest, JSON.parse(await readFile(join(model, 'manifest.json'), 'utf8')));
    expect(manifest.quantization).toMatchObject({ file: 'model.int8.onnx', format: 'onnx-qdq', precision: 'int8' });
    expect(manifest.quantization.calibration).toEqual(int8.calibration);
    expect(manifest.quantization.agreement).toEqual({ ...int8.agreement, threshold: 0.99, forced: false });
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
