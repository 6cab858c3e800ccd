import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRandom, InputNotFoundError, ModelFormatError, randSyntheticTissue, writePng } from '@tessera/core';
import { resolveModelReference } from './model-packages.js';
import { tessera } from './test-helpers.js';

let root: string;
let images: string;
/** A consumer project: node_modules holds model packages, valid and not. */
let consumer: string;
/** The tiny trained model folder the packages hold. */
let model: string;
const nm = () => join(consumer, 'node_modules');
const packageOf = (name: string) => join(nm(), name);

async function writePackage(name: string, json: Record<string, unknown>, withModel = true): Promise<void> {
  await mkdir(packageOf(name), { recursive: true });
  await writeFile(join(packageOf(name), 'package.json'), JSON.stringify({ name, ...json }));
  if (withModel) {
    for (const file of ['model.json', 'weights.bin', 'manifest.json']) {
      await cp(join(model, file), join(packageOf(name), 'model', file));
    }
  }
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'tessera-model-packages-'));
  images = join(root, 'images');
  const masks = join(root, 'masks');
  await mkdir(images);
  await mkdir(masks);
  const rng = createRandom(5);
  for (let i = 0; i < 3; i++) {
    const { image, mask } = randSyntheticTissue({ width: 64, height: 64, density: 30 }, rng.fork(i));
    await writePng(join(images, `tile-${i}.png`), image);
    await writePng(join(masks, `tile-${i}.png`), { data: mask.data, width: 64, height: 64, channels: 1 });
  }
  const classes = [
    { name: 'background', value: 0, color: '#000000' },
    { name: 'nucleus', value: 1, color: '#0000ff' },
  ];
  await writeFile(join(root, 'classes.json'), JSON.stringify({ classes }));
  model = join(root, 'model');
  const train = tessera([
    ...['train', '--images', images, '--masks', masks, '--classes', join(root, 'classes.json'), '--out', model],
    ...['--epochs', '1', '--mpp', '0.5'],
    ...['--arch-option', 'depth=2', '--arch-option', 'baseFilters=4', '--tile', '32', '--batch', '2'],
    ...['--steps-per-epoch', '2'],
  ]);
  expect(train.code, train.stderr).toBe(0);

  consumer = join(root, 'consumer');
  await mkdir(consumer);
  await writeFile(join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', private: true }));
  await writePackage('@tessera/model-test', {
    version: '1.2.3',
    license: 'CC-BY-NC-SA-4.0',
    description: 'a tiny test model',
    tessera: {
      model: 'model',
      data: '3 synthetic tiles',
      evaluation: { data: '2 other synthetic tiles', scores: { nucleusDice: 0.5 } },
      sample: 'sample/tile-0.png',
    },
  });
  await cp(join(images, 'tile-0.png'), join(packageOf('@tessera/model-test'), 'sample', 'tile-0.png'));
  await writePackage('tessera-model-nosample', {
    version: '0.1.0',
    tessera: { model: 'model', sample: 'sample/x.tif' },
  });
  await writePackage('tessera-model-broken', { version: '0.1.0' });
  await writePackage('tessera-model-outside', { version: '0.1.0', tessera: { model: '../tessera-model-test' } });
  await writePackage('tessera-model-empty', { version: '0.1.0', tessera: { model: 'weights' } });
  // Named like no model package: not listed, but resolvable by name.
  await writePackage('histo-nuclei', { version: '2.0.0', tessera: { model: 'model' } });
}, 300_000);
afterAll(async () => rm(root, { recursive: true, force: true }));

describe('resolveModelReference', () => {
  it('gives an existing folder as it is, and a package name or folder as the model folder with name@version', async () => {
    expect(await resolveModelReference(model, consumer)).toEqual({ dir: model, source: model });
    // Relative to the folder resolved from.
    expect(await resolveModelReference('model', root)).toEqual({ dir: model, source: model });
    const installed = { dir: join(packageOf('@tessera/model-test'), 'model'), source: '@tessera/model-test@1.2.3' };
    expect(await resolveModelReference('@tessera/model-test', consumer)).toEqual(installed);
    expect(await resolveModelReference('@tessera/model-test@1.2.3', consumer)).toEqual(installed);
    expect(await resolveModelReference(packageOf('@tessera/model-test'), root)).toEqual(installed);
    expect(await resolveModelReference('histo-nuclei', consumer)).toEqual({
      dir: join(packageOf('histo-nuclei'), 'model'),
      source: 'histo-nuclei@2.0.0',
    });
    // From a sub-folder of the consumer: its node_modules is found above.
    await mkdir(join(consumer, 'data', 'slides'), { recursive: true });
    expect(await resolveModelReference('@tessera/model-test', join(consumer, 'data', 'slides'))).toEqual(installed);
  });

  it('names the reference, the fix and the installed model packages when nothing matches', async () => {
    const error = await resolveModelReference('@tessera/model-nope', consumer).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InputNotFoundError);
    expect((error as InputNotFoundError).message).toBe(
      `No model folder or installed model package named "@tessera/model-nope" (from ${consumer}).`,
    );
    expect((error as InputNotFoundError).hint).toMatch(
      /^Install it with npm install @tessera\/model-nope, or give a model folder; installed model packages: .*@tessera\/model-test.* \(tessera models lists them\)\.$/,
    );
    // Only packages that name a model folder are offered.
    expect((error as InputNotFoundError).hint).not.toContain('tessera-model-broken');
    const path = await resolveModelReference('./runs/nope', consumer).catch((e: InputNotFoundError) => e);
    expect(path).toBeInstanceOf(InputNotFoundError);
    expect((path as InputNotFoundError).hint).toMatch(/^Give the --out folder of a "tessera train" run, or the name/);
  });

  it.each([
    [
      '@tessera/model-test@2.0.0',
      InputNotFoundError,
      /^Expected version 2\.0\.0 of model package @tessera\/model-test but version 1\.2\.3 is installed/,
    ],
    [
      'tessera-model-broken',
      ModelFormatError,
      /^Package tessera-model-broken \(.*\) is not a Tessera model package: expected "tessera": \{ "model": "<folder>" \} in its package\.json but "tessera" is undefined\.$/,
    ],
    [
      'tessera-model-outside',
      ModelFormatError,
      /names "\.\.\/tessera-model-test" in "tessera\.model", which is outside the package\.$/,
    ],
    [
      'tessera-model-nosample',
      ModelFormatError,
      /names the sample "sample\/x\.tif" in "tessera\.sample", but .*x\.tif does not exist\.$/,
    ],
    [
      'tessera-model-empty',
      ModelFormatError,
      /names the model folder "weights" in "tessera\.model", but .*weights has no manifest\.json\.$/,
    ],
  ])('refuses %s', async (ref, type, message) => {
    const error = await resolveModelReference(ref, consumer).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(type);
    expect((error as Error).message).toMatch(message);
  });
});

describe('tessera models and model package names on the command line', () => {
  it('lists installed model packages with their model, and the invalid ones with the reason', () => {
    const run = tessera(['models', '--json'], consumer);
    expect(run.code, run.stderr).toBe(0);
    const rows = JSON.parse(run.stdout) as Record<string, any>[];
    const byName = new Map(rows.map((r) => [r.name, r]));
    expect(byName.get('@tessera/model-test')).toMatchObject({
      valid: true,
      version: '1.2.3',
      license: 'CC-BY-NC-SA-4.0',
      folder: join(packageOf('@tessera/model-test'), 'model'),
      architecture: { name: 'unet', options: { depth: 2, baseFilters: 4 }, installed: true },
      classes: [
        { name: 'background', value: 0 },
        { name: 'nucleus', value: 1 },
      ],
      mpp: 0.5,
      tileSize: 32,
      inputChannels: 3,
      onnx: false,
      training: { data: '3 synthetic tiles', steps: 2 },
      evaluation: { data: '2 other synthetic tiles', scores: { nucleusDice: 0.5 } },
      sample: join(packageOf('@tessera/model-test'), 'sample', 'tile-0.png'),
    });
    expect(
      byName.get('@tessera/model-test').training.trainImages +
        byName.get('@tessera/model-test').training.validationImages,
    ).toBe(3);
    expect(byName.get('tessera-model-broken')).toMatchObject({ valid: false, version: '0.1.0' });
    expect(byName.get('tessera-model-broken').reason).toMatch(/is not a Tessera model package/);
    expect(byName.get('tessera-model-outside').reason).toMatch(/outside the package/);
    expect(byName.has('histo-nuclei')).toBe(false);

    const text = tessera(['models'], consumer);
    expect(text.stdout).toContain('@tessera/model-test 1.2.3  licence CC-BY-NC-SA-4.0  a tiny test model\n');
    expect(text.stdout).toContain('classes background=0, nucleus=1; 3 input channel(s); 0.5 µm/px; tile 32 px');
    expect(text.stdout).toContain('held out: nucleusDice 0.5000 on 2 other synthetic tiles\n');
    expect(text.stdout).toMatch(/tessera-model-broken 0\.1\.0 {2}NOT USABLE: Package tessera-model-broken/);
  });

  it('predicts, evaluates and exports with a package name as with its folder', async () => {
    const [byName, byFolder] = ['by-name', 'by-folder'].map((name) => join(root, name));
    const args = ['--out', byName, '--runtime', 'tfjs'];
    let run = tessera(['predict', images, '--model', '@tessera/model-test', ...args], consumer);
    expect(run.code, run.stderr).toBe(0);
    run = tessera(['predict', images, '--model', model, '--out', byFolder, '--runtime', 'tfjs'], consumer);
    expect(run.code, run.stderr).toBe(0);
    const labels = async (dir: string) => readFile(join(dir, 'tile-0_labels.png'));
    expect((await labels(byName)).equals(await labels(byFolder))).toBe(true);
    const resolved = JSON.parse(await readFile(join(byName, 'predict.resolved.json'), 'utf8'));
    expect(resolved.model).toBe(join(packageOf('@tessera/model-test'), 'model'));

    const evaluate = (ref: string) =>
      tessera(['evaluate', '--model', ref, '--images', images, '--masks', join(root, 'masks'), '--json'], consumer);
    const [named, folder] = [evaluate('@tessera/model-test@1.2.3'), evaluate(model)];
    expect(named.code, named.stderr).toBe(0);
    expect(JSON.parse(named.stdout)).toEqual(JSON.parse(folder.stdout));

    const onnx = join(root, 'exported.onnx');
    run = tessera(['export', '@tessera/model-test', '--out', onnx], consumer);
    expect(run.code, run.stderr).toBe(0);
    expect(existsSync(onnx)).toBe(true);
  });

  it('refuses an unknown package name with the fix, a non-zero exit and no output folder', () => {
    const out = join(root, 'never');
    const run = tessera(['predict', images, '--model', '@tessera/model-nope', '--out', out], consumer);
    expect(run.code).toBe(4);
    expect(run.stderr).toMatch(
      /^error: No model folder or installed model package named "@tessera\/model-nope" \(from .*\)\.\nhint: Install it with npm install @tessera\/model-nope, or give a model folder; installed model packages: .*@tessera\/model-test/,
    );
    expect(existsSync(out)).toBe(false);
    const exported = tessera(['export', 'tessera-model-broken'], consumer);
    expect(exported.code).toBe(7);
    expect(exported.stderr).toMatch(/is not a Tessera model package/);
  });
});

describe('tessera demo on real data', () => {
  it('predicts the sample of every installed model package with its model, after the synthetic demo', () => {
    const out = join(root, 'demo');
    const run = tessera(['demo', '--out', out, '--time-budget', '0.05'], consumer);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/real tissue: {2}@tessera\/model-test@1\.2\.3 on .*tile-0\.png/);
    expect(existsSync(join(out, 'real', 'tessera-model-test', 'tile-0_overlay.png'))).toBe(true);
    expect(existsSync(join(out, 'real', 'tessera-model-test', 'tile-0_labels.png'))).toBe(true);
    // The repository's own model package (a workspace package, seen from the CLI's location) predicts its H&E region.
    expect(run.stderr).toMatch(/real tissue: {2}@tessera\/model-he-nuclei@\d+\.\d+\.\d+ on .*OS-1-crop\.tif/);
    expect(existsSync(join(out, 'real', 'tessera-model-he-nuclei', 'OS-1-crop_overlay.png'))).toBe(true);
  }, 600_000);
});
