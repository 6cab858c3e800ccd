import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, tessera } from './test-helpers.js';
import { createRandom, randSyntheticTissue, writePng } from '@tessera/core';

const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../../../shared/data');
const SLIDES = join(DATA, 'slides');

let root: string;
let images: string;
let masks: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'tessera-cli-'));
  images = join(root, 'images');
  masks = join(root, 'masks');
  await mkdir(images);
  await mkdir(masks);
  const rng = createRandom(3);
  for (let i = 0; i < 4; i++) {
    const { image, mask } = randSyntheticTissue({ width: 64, height: 64, density: 30 }, rng.fork(i));
    await writePng(join(images, `tile-${i}.png`), image);
    await writePng(join(masks, `tile-${i}.png`), { data: mask.data, width: 64, height: 64, channels: 1 });
  }
  await writeFile(
    join(root, 'classes.json'),
    JSON.stringify({
      classes: [
        { name: 'background', value: 0, color: '#000000' },
        { name: 'nucleus', value: 1, color: '#0000ff' },
      ],
    }),
  );
});
afterAll(async () => rm(root, { recursive: true, force: true }));

const TINY = [
  '--arch-option',
  'depth=2',
  '--arch-option',
  'baseFilters=4',
  '--tile',
  '32',
  '--batch',
  '2',
  '--steps-per-epoch',
  '2',
];

/** `tessera train` on the synthetic set with a class map (file in `root`), into `out`, for `epochs`. */
const trainArgs = (out: string, epochs: number, classes = 'classes.json') => [
  'train',
  '--images',
  images,
  '--masks',
  masks,
  '--classes',
  join(root, classes),
  '--out',
  out,
  '--epochs',
  String(epochs),
];

describe('tessera train / evaluate / predict', () => {
  it('trains, evaluates, predicts, resumes and starts from a trained model (--init) end to end', async () => {
    const out = join(root, 'model');
    const train = tessera([...trainArgs(out, 2), ...TINY, '--json']);
    expect(train.stderr).toContain('engine: wasm');
    expect(train.code).toBe(0);
    const result = JSON.parse(train.stdout.trim().split('\n').pop()!);
    expect(result.engine).toBe('wasm');
    expect(result.validation.classes.map((c: { name: string }) => c.name)).toEqual(['background', 'nucleus']);
    for (const file of [
      'model.json',
      'weights.bin',
      'manifest.json',
      'history.csv',
      'loss-curve.png',
      'config.resolved.json',
    ]) {
      expect(existsSync(join(out, file)), file).toBe(true);
    }

    const evaluate = tessera(['evaluate', '--model', out, '--images', images, '--masks', masks, '--json']);
    expect(evaluate.code).toBe(0);
    const report = JSON.parse(evaluate.stdout);
    expect(Object.keys(report)).toEqual(expect.arrayContaining(['pixelAccuracy', 'meanIoU', 'meanDice', 'classes']));
    expect(report.classes[1]).toMatchObject({ name: 'nucleus', value: 1 });
    expect(report.pixelAccuracy).toBeGreaterThanOrEqual(0);
    expect(report.pixelAccuracy).toBeLessThanOrEqual(1);

    const predictions = join(root, 'predictions');
    const predict = tessera(['predict', '--model', out, images, '--out', predictions, '--probabilities', '--overlay']);
    expect(predict.code).toBe(0);
    for (const suffix of ['labels', 'overlay', 'prob_background', 'prob_nucleus']) {
      expect(existsSync(join(predictions, `tile-0_${suffix}.png`)), suffix).toBe(true);
    }

    const resume = tessera([...trainArgs(out, 3), ...TINY, '--resume']);
    expect(resume.code).toBe(0);
    expect(resume.stderr).toContain('resuming at epoch 3');

    // Transfer learning: another class map, the trained model's architecture and options, its weights but the head's.
    await writeFile(
      join(root, 'three-classes.json'),
      JSON.stringify({
        classes: [
          { name: 'background', value: 0, color: '#000000' },
          { name: 'nucleus', value: 1, color: '#0000ff' },
          { name: 'mitosis', value: 2, color: '#ff0000' },
        ],
      }),
    );
    const transferred = join(root, 'transferred');
    // Without --arch and --arch-option: the initial model's (TINY's first 4 items are its --arch-options).
    const pretrained = ['--freeze', 'encoder', '--freeze-epochs', '1', '--lr-pretrained', '1e-4'];
    const init = tessera([
      ...trainArgs(transferred, 2, 'three-classes.json'),
      ...TINY.slice(4),
      ...['--init', out, ...pretrained],
    ]);
    expect(init.code).toBe(0);
    expect(init.stderr).toMatch(
      /init: \d+ layer\(s\) loaded from .*model \(weights SHA-256 [0-9a-f]{12}…\); 1 initialised afresh:/,
    );
    // The table of layers: the encoder's frozen for an epoch, all loaded ones at --lr-pretrained, the head afresh.
    expect(init.stderr).toMatch(/\n {2}enc1_conv1 +loaded, lr 0.0001, frozen for 1 epoch\(s\)\n/);
    expect(init.stderr).toMatch(/\n {2}dec1_conv1 +loaded, lr 0.0001\n/);
    expect(init.stderr).toMatch(
      /\n {2}probabilities +initialised afresh: kernel \[1, 1, 4, 3\] here, \[1, 1, 4, 2\] in the initial model\n/,
    );
    expect(init.stderr).toMatch(/the \d+ frozen encoder layers train from step \d+ \(epoch 2\) on/);
    const manifest = JSON.parse(await readFile(join(transferred, 'manifest.json'), 'utf8'));
    expect(manifest.architecture).toMatchObject({ name: 'unet', options: { depth: 2, baseFilters: 4 } });
    expect(manifest.training.options).toMatchObject({ freeze: 'encoder', freezeEpochs: 1, lrPretrained: 1e-4 });
    expect(manifest.training.init.frozen).toEqual(expect.arrayContaining(['enc1_conv1', 'bottleneck_conv1']));
    expect(manifest.training.init.frozen).not.toContain('dec1_conv1');
    expect(manifest.training.init.reinitialised).toEqual([
      { layer: 'probabilities', reason: 'kernel [1, 1, 4, 3] here, [1, 1, 4, 2] in the initial model' },
    ]);
  });

  it('pretrains without labels (tessera pretrain), lists the trainers, and fine-tunes from the pretrained model', async () => {
    const trainers = tessera(['trainers', '--json']);
    expect(trainers.code).toBe(0);
    expect(JSON.parse(trainers.stdout).trainers).toEqual([
      expect.objectContaining({ name: 'default', learnsFrom: 'masks', source: 'core' }),
      expect.objectContaining({
        name: 'he-nuclei',
        learnsFrom: 'images',
        source: 'package @tessera/trainer-he-nuclei',
      }),
      expect.objectContaining({ name: 'inpainting', learnsFrom: 'images', source: 'package @tessera/trainer-ssl' }),
    ]);
    const pretrained = join(root, 'pretrained');
    const pretrain = tessera(['pretrain', '--images', images, '--out', pretrained, '--epochs', '1', ...TINY]);
    expect(pretrain.code).toBe(0);
    expect(pretrain.stderr).toMatch(/pretraining on 16 tiles of 32 px from 4 source\(s\)/);
    expect(existsSync(join(pretrained, 'pretraining.json'))).toBe(true);
    const tuned = tessera([...trainArgs(join(root, 'tuned'), 1), ...TINY.slice(4), '--init', pretrained]);
    expect(tuned.code).toBe(0);
    expect(tuned.stderr).toMatch(
      /\n {2}probabilities +initialised afresh: kernel \[1, 1, 4, 2\] here, \[1, 1, 4, 16\]/,
    );
    // Pretrained on the H&E stain's nuclei, the model has a nucleus mask's classes: every layer loads, the head too.
    const stain = join(root, 'pretrained-stain');
    const pretrainStain = tessera([
      'pretrain',
      '--trainer',
      'he-nuclei',
      '--images',
      images,
      '--out',
      stain,
      '--epochs',
      '1',
      ...TINY,
    ]);
    expect(pretrainStain.code).toBe(0);
    expect(pretrainStain.stderr).toMatch(/segmenting the nuclei that colour deconvolution .* find/);
    expect(existsSync(join(stain, 'pseudo-labels.png'))).toBe(true);
    const tunedStain = tessera([...trainArgs(join(root, 'tuned-stain'), 1), ...TINY.slice(4), '--init', stain]);
    expect(tunedStain.code).toBe(0);
    expect(tunedStain.stderr).toContain('none initialised afresh');
    expect(tunedStain.stderr).toMatch(/\n {2}probabilities +loaded/);
    // A supervised trainer is not a pretraining one, and an unknown trainer is named with the choices.
    const wrong = tessera(['pretrain', '--images', images, '--out', join(root, 'x'), '--trainer', 'default']);
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toContain('Expected a trainer that learns from images alone for "tessera pretrain"');
    const unknown = tessera([...trainArgs(join(root, 'y'), 1), '--trainer', 'inpaint']);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toMatch(/Unknown trainer "inpaint"\..* Valid choices: default, he-nuclei, inpainting\./);
  });

  it('lists architectures as JSON', () => {
    const archs = tessera(['archs', '--json']);
    expect(archs.code).toBe(0);
    const list = JSON.parse(archs.stdout);
    const names = list.map((a: { name: string }) => a.name);
    expect(names[0]).toBe('unet');
    expect(list[0]).toMatchObject({ source: 'package @tessera/arch-unet', inputMultiple: 16, receptiveField: 215 });
  });
});

describe('interruption', () => {
  it('SIGTERM during training exits 130 keeping checkpoints; --resume reaches the uninterrupted weights', async () => {
    const args = (out: string, epochs: number) => [
      BIN,
      'train',
      '--images',
      images,
      '--masks',
      masks,
      '--out',
      out,
      '--epochs',
      String(epochs),
      ...TINY,
      '--steps-per-epoch',
      '6',
      '--schedule',
      'constant',
      '--seed',
      '5',
    ];
    const straight = join(root, 'kill-straight');
    expect(
      spawnSync(process.execPath, args(straight, 3), { env: { ...process.env, TESSERA_BACKEND: 'wasm' } }).status,
    ).toBe(0);

    const killed = join(root, 'kill-resumed');
    const child = spawn(process.execPath, args(killed, 3), { env: { ...process.env, TESSERA_BACKEND: 'wasm' } });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += String(d)));
    const exited = new Promise<number | null>((done) => child.on('exit', (code) => done(code)));
    for (let i = 0; i < 600 && !existsSync(join(killed, 'checkpoints', 'step-0000006', 'state.json')); i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill('SIGTERM');
    const code = await exited;
    expect(stderr).toContain('SIGTERM received');
    console.log(`killed run exit code ${code}`);
    if (code === 0) return; // the run finished before the signal arrived: nothing to resume (rare on a fast machine)
    expect(code).toBe(130);
    expect(existsSync(join(killed, 'checkpoints', 'step-0000018'))).toBe(false);

    const resumed = spawnSync(process.execPath, [...args(killed, 3), '--resume'], {
      encoding: 'utf8',
      env: { ...process.env, TESSERA_BACKEND: 'wasm' },
    });
    expect(resumed.status).toBe(0);
    const a = await readFile(join(straight, 'checkpoints', 'step-0000018', 'weights.bin'));
    const b = await readFile(join(killed, 'checkpoints', 'step-0000018', 'weights.bin'));
    expect(b.equals(a)).toBe(true);
  });
});

describe('bad input gives one clear message, its own exit code, and no output', () => {
  beforeAll(async () => {
    // boxes.tiff (a small tiled pyramid) whose level 0 claims Hamamatsu NDPI JPEG (compression 65000, which no TIFF
    // reader decodes), and a cut SVS.
    const tiff = await readFile(join(SLIDES, 'wsi-openslide-python-fixtures/boxes.tiff'));
    const ifd = tiff.readUInt32LE(4);
    for (let i = 0; i < tiff.readUInt16LE(ifd); i++) {
      if (tiff.readUInt16LE(ifd + 2 + i * 12) === 259) tiff.writeUInt16LE(65000, ifd + 2 + i * 12 + 8);
    }
    await writeFile(join(root, 'j2k.tif'), tiff);
    const svs = await readFile(join(SLIDES, 'wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs'));
    await writeFile(join(root, 'cut.svs'), svs.subarray(0, Math.floor(svs.length * 0.6)));
  });
  const slideOut = () => join(root, 'bad-slide-out');
  const j2k =
    /j2k\.tif" level 0 uses Hamamatsu NDPI JPEG \(TIFF compression 65000\); expected one of .*JPEG, Deflate.*\nhint: Convert the slide to a JPEG pyramidal TIFF/;
  const cases: [string, () => string[], number, RegExp][] = [
    [
      'missing images folder',
      () => ['train', '--images', join(root, 'nope'), '--masks', masks, '--out', join(root, 'bad1')],
      4,
      /nope/,
    ],
    [
      'unknown architecture',
      () => ['train', '--arch', 'unte', '--images', images, '--masks', masks, '--out', join(root, 'bad2')],
      3,
      /Unknown architecture "unte"\. Did you mean "unet"\?/,
    ],
    [
      'impossible option value',
      () => ['train', '--images', images, '--masks', masks, '--out', join(root, 'bad3'), '--lr', '-1'],
      2,
      // The SDK's option names (lr) come out as the CLI's flags.
      /Expected a learning rate between 0 and 10 \(exclusive\) for --lr but received -1 /,
    ],
    [
      'non-numeric option',
      () => ['train', '--images', images, '--masks', masks, '--out', join(root, 'bad4'), '--epochs', 'ten'],
      2,
      /expected an integer but received "ten"/,
    ],
    [
      'unknown loss',
      () => ['train', '--images', images, '--masks', masks, '--out', join(root, 'bad5'), '--loss', 'dise'],
      3,
      /Unknown loss "dise"\. Did you mean "dice"\?/,
    ],
    [
      'tile not a multiple',
      () => ['train', '--images', images, '--masks', masks, '--out', join(root, 'bad6'), '--tile', '100'],
      2,
      /Expected --tile to be a multiple of 16 for architecture "unet" but received 100\.\nhint: Set --tile to 96\./,
    ],
    [
      'tiler option in flags',
      () => [
        'predict',
        join(SLIDES, 'wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs'),
        '--model',
        join(root, 'model'),
        '--out',
        slideOut(),
        '--workers',
        '0',
      ],
      2,
      /Expected --workers to be a positive integer but received 0\.\nhint: Set --workers to 1 up to the number/,
    ],
    [
      'model folder that is not a model',
      () => ['evaluate', '--model', images, '--images', images, '--masks', masks],
      4,
      /has no manifest\.json/,
    ],
    ['unknown engine', () => ['doctor', '--json', '--nope'], 2, /unknown option/],
    ['slide with an unsupported compression: info', () => ['info', join(root, 'j2k.tif')], 5, j2k],
    [
      'slide with an unsupported compression: predict',
      () => ['predict', join(root, 'j2k.tif'), '--model', join(root, 'model'), '--out', slideOut()],
      5,
      j2k,
    ],
    ['truncated slide: info', () => ['info', join(root, 'cut.svs')], 5, /cut\.svs" (is truncated|could not be opened)/],
    [
      'truncated slide: predict',
      () => ['predict', join(root, 'cut.svs'), '--model', join(root, 'model'), '--out', slideOut()],
      5,
      /cut\.svs" (is truncated|could not be opened).*\nhint: (Copy|Check that the file was copied)/,
    ],
  ];
  it.each(cases)('%s', (_name, args, code, message) => {
    const run = tessera(args());
    expect(run.stderr).toMatch(message);
    expect(run.code).toBe(code);
  });

  it('leaves no output folder behind after a failed start', async () => {
    tessera(['train', '--images', join(root, 'nope'), '--masks', masks, '--out', join(root, 'bad-left')]);
    expect(existsSync(join(root, 'bad-left'))).toBe(false);
    tessera(['predict', join(root, 'j2k.tif'), '--model', join(root, 'model'), '--out', slideOut()]);
    expect(existsSync(slideOut())).toBe(false);
    expect((await readdir(root)).filter((n) => n.includes('.tmp'))).toEqual([]);
  });

  it('refuses a folder without images, images without masks, a corrupt PNG and unknown mask values', async () => {
    const dir = join(root, 'bad-data');
    for (const sub of ['empty', 'images', 'masks', 'corrupt-images', 'odd-masks'])
      await mkdir(join(dir, sub), { recursive: true });
    let run = tessera(['train', '--images', join(dir, 'empty'), '--masks', masks, '--out', join(dir, 'o1')]);
    expect(run.stderr).toContain(`Images folder "${join(dir, 'empty')}" holds no image files`);
    expect(run.code).toBe(6);

    await writeFile(join(dir, 'images', 'lonely.png'), await readFile(join(images, 'tile-0.png')));
    run = tessera(['train', '--images', join(dir, 'images'), '--masks', join(dir, 'masks'), '--out', join(dir, 'o2')]);
    expect(run.stderr).toContain('lonely');
    expect(run.code).toBe(6);

    await writeFile(join(dir, 'corrupt-images', 'tile-0.png'), Buffer.from('not a png at all, just text'));
    await writeFile(join(dir, 'corrupt-images', 'tile-1.png'), await readFile(join(images, 'tile-1.png')));
    run = tessera([
      'train',
      '--images',
      join(dir, 'corrupt-images'),
      '--masks',
      masks,
      '--out',
      join(dir, 'o3'),
      ...TINY,
    ]);
    expect(run.stderr).toContain(join(dir, 'corrupt-images', 'tile-0.png'));
    expect(run.code).toBe(5);

    for (const i of [0, 1, 2, 3]) {
      await writePng(join(dir, 'odd-masks', `tile-${i}.png`), {
        data: new Uint8Array(64 * 64).fill(i === 1 ? 7 : 1),
        width: 64,
        height: 64,
        channels: 1,
      });
    }
    run = tessera([
      'train',
      '--images',
      images,
      '--masks',
      join(dir, 'odd-masks'),
      '--classes',
      join(root, 'classes.json'),
      '--out',
      join(dir, 'o4'),
      ...TINY,
    ]);
    expect(run.stderr).toMatch(/7/);
    expect(run.stderr).toContain('tile-1.png');
    expect(run.code).toBe(6);
    for (const o of ['o1', 'o2', 'o3', 'o4']) expect(existsSync(join(dir, o)), o).toBe(false);
  });

  it('refuses an output folder that cannot be written', async () => {
    const file = join(root, 'a-file');
    await writeFile(file, 'x');
    const run = tessera(['train', '--images', images, '--masks', masks, '--out', join(file, 'model'), ...TINY]);
    expect(run.stderr).toContain(`Cannot use "${join(file, 'model')}" as the output folder: "${file}" is a file`);
    expect(run.code).toBe(10);
  });

  it('refuses models from a newer Tessera and models whose weights were modified', async () => {
    const out = join(root, 'model-for-bad');
    expect(tessera(['train', '--images', images, '--masks', masks, '--out', out, '--epochs', '1', ...TINY]).code).toBe(
      0,
    );
    const newer = join(root, 'model-newer');
    const tampered = join(root, 'model-tampered');
    for (const dir of [newer, tampered]) {
      await mkdir(dir);
      for (const f of ['manifest.json', 'model.json', 'weights.bin'])
        await writeFile(join(dir, f), await readFile(join(out, f)));
    }
    const manifest = JSON.parse(await readFile(join(newer, 'manifest.json'), 'utf8'));
    await writeFile(join(newer, 'manifest.json'), JSON.stringify({ ...manifest, formatVersion: 99 }));
    let run = tessera(['evaluate', '--model', newer, '--images', images, '--masks', masks]);
    expect(run.stderr).toContain('has format version 99, but this Tessera reads versions up to 1');
    expect(run.code).toBe(7);
    const weights = await readFile(join(tampered, 'weights.bin'));
    await writeFile(join(tampered, 'weights.bin'), weights.subarray(0, weights.length - 4));
    run = tessera(['predict', '--model', tampered, images, '--out', join(root, 'never')]);
    expect(run.stderr).toContain('does not match its checksum');
    expect(run.code).toBe(7);
  });

  it('names a mask of the wrong size', async () => {
    const dir = join(root, 'wrong-size');
    await mkdir(join(dir, 'images'), { recursive: true });
    await mkdir(join(dir, 'masks'), { recursive: true });
    await writeFile(join(dir, 'images', 'a.png'), await readFile(join(images, 'tile-0.png')));
    await writeFile(join(dir, 'images', 'b.png'), await readFile(join(images, 'tile-1.png')));
    await writePng(join(dir, 'masks', 'a.png'), { data: new Uint8Array(32 * 32), width: 32, height: 32, channels: 1 });
    await writePng(join(dir, 'masks', 'b.png'), {
      data: new Uint8Array(64 * 64).fill(1),
      width: 64,
      height: 64,
      channels: 1,
    });
    const run = tessera([
      'train',
      '--images',
      join(dir, 'images'),
      '--masks',
      join(dir, 'masks'),
      '--out',
      join(dir, 'out'),
      ...TINY,
    ]);
    expect(run.stderr).toContain('is 32x32 pixels but its image');
    expect(run.code).toBe(6);
  });
});
