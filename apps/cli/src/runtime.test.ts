import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
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
});
