import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import '@tensorflow/tfjs-backend-cpu';
import { ModelFormatError, InputNotFoundError, OutputError } from '../errors.js';
import { CORE_VERSION } from '../version.js';
import { checkOutputDir, loadModel, makeOutputDir, readManifest, saveModel, type ManifestDraft } from './model-io.js';

function smallModel(): tfl.LayersModel {
  const input = tfl.input({ shape: [null, null, 1] });
  let x = tfl.layers
    .conv2d({
      filters: 3,
      kernelSize: 3,
      padding: 'same',
      activation: 'relu',
      kernelInitializer: tfl.initializers.heNormal({ seed: 1 }),
    })
    .apply(input) as tfl.SymbolicTensor;
  x = tfl.layers.batchNormalization().apply(x) as tfl.SymbolicTensor;
  const output = tfl.layers
    .conv2d({
      filters: 2,
      kernelSize: 1,
      activation: 'softmax',
      kernelInitializer: tfl.initializers.glorotUniform({ seed: 2 }),
    })
    .apply(x) as tfl.SymbolicTensor;
  return tfl.model({ inputs: input, outputs: output });
}

const draft: ManifestDraft = {
  format: 'tessera-model',
  formatVersion: 1,
  architecture: {
    name: 'tiny',
    version: '1.0.0',
    apiVersion: 1,
    options: { width: 3 },
    inputMultiple: 1,
    receptiveField: 3,
    parameters: 20,
  },
  classes: [
    { name: 'membrane', value: 0, color: '#ff0000' },
    { name: 'cell', value: 255, color: '#00ff00' },
  ],
  ignore: 128,
  inputChannels: 1,
  normalization: { mean: [0.5], std: [0.25] },
  tileSize: 64,
  mpp: 0.25,
  createdBy: 'test',
};

describe('model folders', () => {
  let dir: string;
  beforeAll(async () => {
    await tf.setBackend('cpu');
    dir = await mkdtemp(join(tmpdir(), 'tessera-model-'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it('round-trips the manifest and gives identical outputs', async () => {
    const model = smallModel();
    const out = join(dir, 'roundtrip');
    const saved = await saveModel(out, model, draft);
    const { model: loaded, manifest } = await loadModel(out);
    expect(manifest).toEqual(saved);
    expect(manifest.classes).toEqual(draft.classes);
    expect(manifest.files.weights.bytes).toBe(model.countParams() * 4);
    const x = tf.randomNormal([2, 8, 8, 1], 0, 1, 'float32', 3);
    const a = (model.predict(x) as tf.Tensor).dataSync();
    const b = (loaded.predict(x) as tf.Tensor).dataSync();
    expect(Array.from(b)).toEqual(Array.from(a));
  });

  it('refuses tampered and truncated weights, naming the file', async () => {
    const out = join(dir, 'tampered');
    await saveModel(out, smallModel(), draft);
    const weights = await readFile(join(out, 'weights.bin'));
    weights[5] ^= 0xff;
    await writeFile(join(out, 'weights.bin'), weights);
    await expect(loadModel(out)).rejects.toThrow(ModelFormatError);
    await expect(loadModel(out)).rejects.toThrow(
      `${join(out, 'weights.bin')} does not match its checksum in manifest.json`,
    );
    await writeFile(join(out, 'weights.bin'), weights.subarray(0, 10));
    await expect(loadModel(out)).rejects.toThrow('found 10 bytes');
  });

  it('refuses a model from a newer format version', async () => {
    const out = join(dir, 'newer');
    await saveModel(out, smallModel(), draft);
    const manifest = JSON.parse(await readFile(join(out, 'manifest.json'), 'utf8'));
    manifest.formatVersion = 9;
    await writeFile(join(out, 'manifest.json'), JSON.stringify(manifest));
    await expect(readManifest(out)).rejects.toThrow(
      `Model folder ${out} has format version 9, but this Tessera reads versions up to 1.`,
    );
  });

  it('keeps background flags and refuses a bad flag or two flagged classes', async () => {
    const out = join(dir, 'flagged');
    const classes = [
      { name: 'tumour', value: 0, color: '#ff0000', background: false },
      { name: 'glass', value: 255, color: '#ffffff', background: true },
    ];
    await saveModel(out, smallModel(), { ...draft, classes });
    expect((await readManifest(out)).classes).toEqual(classes);
    const manifest = JSON.parse(await readFile(join(out, 'manifest.json'), 'utf8'));
    manifest.classes[0].background = 'no';
    await writeFile(join(out, 'manifest.json'), JSON.stringify(manifest));
    await expect(readManifest(out)).rejects.toThrow(
      `Model folder ${out} has an invalid manifest.json: expected classes[0].background to be true or false but ` +
        'received "no" of type string.',
    );
    manifest.classes[0].background = true;
    await writeFile(join(out, 'manifest.json'), JSON.stringify(manifest));
    const both = readManifest(out);
    await expect(both).rejects.toBeInstanceOf(ModelFormatError);
    await expect(both).rejects.toThrow(
      'classes[0] ("tumour") and classes[1] ("glass") are both marked "background": true; expected at most one ' +
        'background class.',
    );
  });

  it('says when a folder is not a model', async () => {
    await expect(readManifest(join(dir, 'nope'))).rejects.toThrow(InputNotFoundError);
    await expect(readManifest(join(dir, 'nope'))).rejects.toThrow(
      `Model folder ${join(dir, 'nope')} not found or has no manifest.json.`,
    );
  });

  it('keeps CORE_VERSION equal to package.json', async () => {
    const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8'));
    expect(CORE_VERSION).toBe(pkg.version);
  });
});

describe('output folders', () => {
  it('refuses a folder under /proc at once instead of retrying forever, and a file in the way (exit code 10)', async () => {
    const started = performance.now();
    for (const check of [makeOutputDir, checkOutputDir]) {
      const error = await check('/proc/tessera-nowhere/out').catch((e: unknown) => e);
      expect(error).toBeInstanceOf(OutputError);
      expect((error as OutputError).exitCode).toBe(10);
      expect((error as Error).message).toMatch(
        /^Cannot use "\/proc\/tessera-nowhere\/out" as the output folder: "\/proc\/tessera-nowhere" cannot be created/,
      );
    }
    expect(performance.now() - started).toBeLessThan(2000);
    const root = await mkdtemp(join(tmpdir(), 'tessera-out-'));
    try {
      await writeFile(join(root, 'file'), 'x');
      await expect(makeOutputDir(join(root, 'file', 'sub'))).rejects.toThrow(/"[^"]*file" is a file, not a folder/);
      // checkOutputDir makes nothing that stays; makeOutputDir makes the folders.
      await checkOutputDir(join(root, 'a', 'b'));
      await expect(readFile(join(root, 'a'))).rejects.toMatchObject({ code: 'ENOENT' });
      await makeOutputDir(join(root, 'a', 'b'));
      await writeFile(join(root, 'a', 'b', 'ok'), 'x');
      const { readdir } = await import('node:fs/promises');
      expect(await readdir(join(root, 'a', 'b'))).toEqual(['ok']); // no probe file left
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
