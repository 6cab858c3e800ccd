import { existsSync, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DatasetError, InputNotFoundError, InvalidOptionError } from '../errors.js';
import { inferClassMap, parseClassMap } from './class-map.js';
import {
  classPixelNotices,
  collectMaskValues,
  computeNormalization,
  inspectImages,
  loadSamples,
  naturalCompare,
  normalizeImage,
  normalizeWindow,
  pairImagesAndMasks,
} from './dataset.js';
import { writePng } from './image-io.js';

let root: string;

beforeAll(async () => {
  root = await fs.mkdtemp(join(tmpdir(), 'tessera-dataset-'));
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

/** Makes `<root>/<name>/{images,masks}` and returns the two folders. */
async function makeFolders(name: string): Promise<{ images: string; masks: string }> {
  const images = join(root, name, 'images');
  const masks = join(root, name, 'masks');
  await fs.mkdir(images, { recursive: true });
  await fs.mkdir(masks, { recursive: true });
  return { images, masks };
}

async function grey(path: string, width: number, height: number, value: (i: number) => number): Promise<void> {
  await writePng(path, {
    data: Uint8Array.from({ length: width * height }, (_, i) => value(i)),
    width,
    height,
    channels: 1,
  });
}

describe('naturalCompare', () => {
  it('orders numbers by value and text by code unit', () => {
    expect(['10', '2', '1', 'b', 'a2', 'a10', 'a1'].sort(naturalCompare)).toEqual([
      '1',
      '2',
      '10',
      'a1',
      'a2',
      'a10',
      'b',
    ]);
    expect(naturalCompare('img_007', 'img_7')).not.toBe(0);
    expect(naturalCompare('x', 'x')).toBe(0);
  });
});

describe('pairImagesAndMasks', () => {
  it('pairs by stem (also _mask / -mask), in natural order, skipping hidden and non-image files', async () => {
    const { images, masks } = await makeFolders('pairing');
    for (const stem of ['10', '2', '1']) await grey(join(images, `${stem}.png`), 2, 2, () => 0);
    await grey(join(images, 'x.TIF'), 2, 2, () => 0);
    await fs.writeFile(join(images, '.hidden.png'), 'not an image');
    await fs.writeFile(join(images, 'notes.txt'), 'hello');
    await grey(join(masks, '1.png'), 2, 2, () => 0);
    await grey(join(masks, '2_mask.png'), 2, 2, () => 0);
    await grey(join(masks, '10-mask.tiff'.replace('.tiff', '.png')), 2, 2, () => 0);
    await grey(join(masks, 'x.png'), 2, 2, () => 0);
    await grey(join(masks, 'orphan.png'), 2, 2, () => 0);
    const pairs = await pairImagesAndMasks(images, masks);
    expect(pairs).toEqual([
      { stem: '1', imagePath: join(images, '1.png'), maskPath: join(masks, '1.png') },
      { stem: '2', imagePath: join(images, '2.png'), maskPath: join(masks, '2_mask.png') },
      { stem: '10', imagePath: join(images, '10.png'), maskPath: join(masks, '10-mask.png') },
      { stem: 'x', imagePath: join(images, 'x.TIF'), maskPath: join(masks, 'x.png') },
    ]);
  });

  it('pairs images and _mask files kept in one folder', async () => {
    const { images } = await makeFolders('one-folder');
    await grey(join(images, 'a.png'), 2, 2, () => 0);
    await grey(join(images, 'a_mask.png'), 2, 2, () => 0);
    expect(await pairImagesAndMasks(images, images)).toEqual([
      { stem: 'a', imagePath: join(images, 'a.png'), maskPath: join(images, 'a_mask.png') },
    ]);
  });

  it('lists up to 5 stems of images without masks', async () => {
    const { images, masks } = await makeFolders('missing-masks');
    for (let i = 0; i < 8; i++) await grey(join(images, `${i}.png`), 2, 2, () => 0);
    await grey(join(masks, '0.png'), 2, 2, () => 0);
    const error = await pairImagesAndMasks(images, masks).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DatasetError);
    expect((error as DatasetError).message).toBe(
      `7 of 8 images in "${images}" have no mask in "${masks}": 1, 2, 3, 4, 5 and 2 more.`,
    );
    expect((error as DatasetError).hint).toContain('"1_mask.<ext>"');
  });

  it('names missing folders, files given as folders, empty folders and ambiguous masks', async () => {
    const { images, masks } = await makeFolders('errors');
    const nowhere = join(root, 'nowhere');
    await expect(pairImagesAndMasks(nowhere, masks)).rejects.toThrow(InputNotFoundError);
    await expect(pairImagesAndMasks(nowhere, masks)).rejects.toThrow(`Images folder "${nowhere}" does not exist.`);
    await expect(pairImagesAndMasks(images, masks)).rejects.toThrow(
      `Images folder "${images}" holds no image files; expected files ending in .png, .jpg, .jpeg, .tif, .tiff`,
    );
    await grey(join(images, 'a.png'), 2, 2, () => 0);
    await expect(pairImagesAndMasks(images, join(images, 'a.png'))).rejects.toThrow(
      `Masks folder "${join(images, 'a.png')}" is not a folder`,
    );
    await grey(join(masks, 'a.png'), 2, 2, () => 0);
    await grey(join(masks, 'a_mask.png'), 2, 2, () => 0);
    await expect(pairImagesAndMasks(images, masks)).rejects.toThrow(
      `Image "${join(images, 'a.png')}" matches 2 masks in "${masks}"`,
    );
    await fs.rm(join(masks, 'a_mask.png'));
    await grey(join(images, 'a.tif'), 2, 2, () => 0);
    await expect(pairImagesAndMasks(images, masks)).rejects.toThrow('holds two images with the stem "a"');
  });
});

describe('loadSamples', () => {
  const classMap = parseClassMap(
    {
      classes: [
        { name: 'background', value: 0 },
        { name: 'nucleus', value: 1 },
      ],
      ignore: 9,
    },
    'test',
  );

  it('normalizes images, encodes labels and reads grey-equal RGB as grey', async () => {
    const { images, masks } = await makeFolders('load');
    // A grey image stored as RGB with equal channels, and a true grey image.
    await writePng(join(images, 'a.png'), {
      data: Uint8Array.from([0, 0, 0, 255, 255, 255]),
      width: 2,
      height: 1,
      channels: 3,
    });
    await grey(join(images, 'b.png'), 2, 1, (i) => [51, 102][i]);
    await grey(join(masks, 'a.png'), 2, 1, (i) => [0, 1][i]);
    await grey(join(masks, 'b.png'), 2, 1, (i) => [9, 1][i]);
    const pairs = await pairImagesAndMasks(images, masks);
    const samples = await loadSamples(pairs, { classMap, normalization: { mean: [0.5], std: [0.5] } });
    expect(samples.map((s) => [s.stem, s.width, s.height, s.channels])).toEqual([
      ['a', 2, 1, 1],
      ['b', 2, 1, 1],
    ]);
    expect(Array.from(samples[0].image)).toEqual([-1, 1]);
    expect(samples[1].image[0]).toBeCloseTo((0.2 - 0.5) / 0.5, 6);
    expect(samples[1].image[1]).toBeCloseTo((0.4 - 0.5) / 0.5, 6);
    expect(Array.from(samples[0].labels)).toEqual([0, 1]);
    expect(Array.from(samples[1].labels)).toEqual([-1, 1]);
    // Asking for RGB expands grey; the normalization must then have three entries.
    const rgb = await loadSamples(pairs, { classMap, channels: 3, normalization: { mean: [0, 0, 0], std: [1, 1, 1] } });
    expect(rgb[1].channels).toBe(3);
    expect(Array.from(rgb[1].image).map((v) => Math.round(v * 255))).toEqual([51, 51, 51, 102, 102, 102]);
    await expect(loadSamples(pairs, { classMap, channels: 3, normalization: { mean: [0], std: [1] } })).rejects.toThrow(
      InvalidOptionError,
    );
    // One true colour image makes the whole set RGB.
    await writePng(join(images, 'c.png'), {
      data: Uint8Array.from([255, 0, 0, 0, 0, 255]),
      width: 2,
      height: 1,
      channels: 3,
    });
    await grey(join(masks, 'c.png'), 2, 1, () => 0);
    const mixed = await loadSamples(await pairImagesAndMasks(images, masks), {
      classMap,
      normalization: { mean: [0, 0, 0], std: [1, 1, 1] },
    });
    expect(mixed.map((s) => s.channels)).toEqual([3, 3, 3]);
    expect(Array.from(mixed[1].image).map((v) => Math.round(v * 255))).toEqual([51, 51, 51, 102, 102, 102]);
  });

  it('names both files and both sizes when a mask does not fit its image', async () => {
    const { images, masks } = await makeFolders('size');
    await grey(join(images, 'a.png'), 4, 3, () => 0);
    await grey(join(masks, 'a.png'), 3, 4, () => 0);
    const pairs = await pairImagesAndMasks(images, masks);
    const error = await loadSamples(pairs, { classMap, normalization: { mean: [0], std: [1] } }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(DatasetError);
    expect((error as Error).message).toBe(
      `Mask "${join(masks, 'a.png')}" is 3x4 pixels but its image "${join(images, 'a.png')}" is 4x3; ` +
        'expected the same size.',
    );
  });

  it('raises the class map error naming the mask with an unknown value', async () => {
    const { images, masks } = await makeFolders('unknown');
    await grey(join(images, 'a.png'), 2, 1, () => 0);
    await grey(join(masks, 'a.png'), 2, 1, () => 255);
    const pairs = await pairImagesAndMasks(images, masks);
    await expect(loadSamples(pairs, { classMap, normalization: { mean: [0], std: [1] } })).rejects.toThrow(
      `Mask "${join(masks, 'a.png')}" holds value 255 (2 pixels)`,
    );
    expect([...(await collectMaskValues(pairs))]).toEqual([255]);
  });
});

describe('computeNormalization / normalizeImage', () => {
  it('computes per-channel mean and std of v / 255', () => {
    const image = { data: Uint8Array.from([0, 10, 255, 10, 51, 10, 204, 10]), width: 4, height: 1, channels: 2 };
    const n = computeNormalization([image]);
    expect(n.mean[0]).toBeCloseTo(0.5, 10);
    // Values 0, 1, 0.2, 0.8: population std sqrt(E[x^2] - E[x]^2) = sqrt(0.42 - 0.25).
    expect(n.std[0]).toBeCloseTo(Math.sqrt(0.17), 10);
    expect(n.mean[1]).toBeCloseTo(10 / 255, 10);
    expect(n.std[1]).toBe(1);
    const out = normalizeImage(image, n);
    expect(out[0]).toBeCloseTo(-0.5 / Math.sqrt(0.17), 5);
    expect(out[1]).toBeCloseTo(0, 6);
    expect(() => computeNormalization([])).toThrow(InvalidOptionError);
    expect(() => computeNormalization([image, { ...image, channels: 1, data: new Uint8Array(4) }])).toThrow(
      'expected every image to have 2 channel(s) like the first, but one has 1',
    );
    expect(() => normalizeImage(image, { mean: [0], std: [1] })).toThrow(
      'normalization: expected 2 finite mean value(s) and 2 std value(s) > 0 (one per channel) but received mean [0]',
    );
  });

  it('normalizeWindow writes a window of an image as normalizeImage of that crop, in place at an offset', () => {
    const width = 5;
    const height = 3;
    const data = Uint8Array.from({ length: width * height * 3 }, (_, i) => (i * 37) % 256);
    const image = { data, width, height, channels: 3 };
    const n = { mean: [0.7, 0.5, 0.6], std: [0.15, 0.2, 0.25] };
    const crop = { data: new Uint8Array(2 * height * 3), width: 2, height, channels: 3 };
    for (let r = 0; r < height; r++) crop.data.set(data.subarray((r * width + 2) * 3, (r * width + 4) * 3), r * 6);
    const out = new Float32Array(4 + crop.data.length + 2).fill(-99);
    normalizeWindow(image, { left: 2, width: 2, height }, n, out, 4);
    expect([...out.subarray(4, 4 + crop.data.length)]).toEqual([...normalizeImage(crop, n)]);
    expect([...out.subarray(0, 4), ...out.subarray(4 + crop.data.length)]).toEqual([-99, -99, -99, -99, -99, -99]);
    expect(() => normalizeWindow(image, { left: 0, width: 1, height: 1 }, { mean: [0], std: [1] }, out, 0)).toThrow(
      InvalidOptionError,
    );
  });
});

const ISBI = '/work/shared/data/isbi2012-em-membrane/train';

describe('real data: ISBI 2012 EM membranes', () => {
  it.skipIf(!existsSync(join(ISBI, 'image')))('pairs 30 slices of 512x512 with class values {0, 255}', async () => {
    const pairs = await pairImagesAndMasks(join(ISBI, 'image'), join(ISBI, 'label'));
    expect(pairs).toHaveLength(30);
    expect(pairs.slice(0, 3).map((p) => p.stem)).toEqual(['0', '1', '2']);
    expect(pairs[29].stem).toBe('29');
    const values = await collectMaskValues(pairs);
    expect([...values].sort((a, b) => a - b)).toEqual([0, 255]);
    const classMap = inferClassMap(values);
    const samples = await loadSamples(pairs.slice(0, 3), { classMap, normalization: { mean: [0.5], std: [0.2] } });
    for (const s of samples) {
      expect([s.width, s.height, s.channels]).toEqual([512, 512, 1]);
      expect(s.image.length).toBe(512 * 512);
      const seen = new Set(s.labels);
      expect([...seen].sort()).toEqual([0, 1]);
    }
  });
});

describe('inspectImages and classPixelNotices: what the data set converts, refuses and warns about', () => {
  it('says which images lose alpha, are scaled from 16 bits or expanded from grey, and refuses a 1x1 image', async () => {
    const { images, masks } = await makeFolders('inspect');
    const sharp = (await import('sharp')).default;
    const rgb = { data: new Uint8Array(16 * 16 * 3).fill(120), width: 16, height: 16, channels: 3 };
    await writePng(join(images, 'a.png'), rgb);
    await writePng(join(images, 'b.png'), {
      data: new Uint8Array(16 * 16 * 4).fill(200),
      width: 16,
      height: 16,
      channels: 4,
    });
    await writePng(join(images, 'c.png'), {
      data: new Uint8Array(16 * 16).fill(90),
      width: 16,
      height: 16,
      channels: 1,
    });
    await sharp(new Uint16Array(16 * 16 * 3).fill(40000), { raw: { width: 16, height: 16, channels: 3 } })
      .toColourspace('rgb16')
      .png()
      .toFile(join(images, 'd.png'));
    for (const stem of ['a', 'b', 'c', 'd']) {
      await writePng(join(masks, `${stem}.png`), { data: new Uint8Array(256), width: 16, height: 16, channels: 1 });
    }
    const pairs = await pairImagesAndMasks(images, masks);
    const notices = await inspectImages(pairs, 3);
    expect(notices.map((n) => n.message)).toEqual([
      '1 of 4 images have an alpha channel, dropped when read (b)',
      '1 of 4 images have more than 8 bits per sample, scaled to 8 bits (d)',
      '1 of 4 images are grey, expanded to RGB to match the others (c)',
    ]);
    expect(notices.every((n) => n.level === 'info')).toBe(true);
    await writePng(join(images, 'e.png'), { data: new Uint8Array(1), width: 1, height: 1, channels: 1 });
    await writePng(join(masks, 'e.png'), { data: new Uint8Array(1), width: 1, height: 1, channels: 1 });
    const tiny = await inspectImages(await pairImagesAndMasks(images, masks), 3).catch((e: unknown) => e);
    expect(tiny).toBeInstanceOf(DatasetError);
    expect((tiny as Error).message).toMatch(/Image ".*e\.png" is 1x1 pixels; expected at least 8x8\./);
  });

  it('warns about a class of very few pixels: a stray mask value when the classes are inferred', async () => {
    const { images, masks } = await makeFolders('rare');
    const labels = new Uint8Array(64 * 64);
    for (let i = 0; i < labels.length / 2; i++) labels[i] = 1;
    labels[5] = 7; // stray values, as an editor's anti-aliasing leaves them
    labels[9] = 128;
    labels[10] = 128;
    await writePng(join(images, 'x.png'), {
      data: new Uint8Array(64 * 64).fill(100),
      width: 64,
      height: 64,
      channels: 1,
    });
    await writePng(join(masks, 'x.png'), { data: labels, width: 64, height: 64, channels: 1 });
    const pairs = await pairImagesAndMasks(images, masks);
    const classMap = inferClassMap(await collectMaskValues(pairs));
    const samples = await loadSamples(pairs, { classMap, normalization: { mean: [0.5], std: [0.25] } });
    const notices = classPixelNotices(samples, classMap, true);
    expect(notices.map((n) => [n.level, n.message.split('.')[0]])).toEqual([
      ['warning', 'Class "class_7" (mask value 7) has only 1 pixel(s) (0'],
      ['warning', 'Class "class_128" (mask value 128) has only 2 pixel(s) (0'],
    ]);
    expect(notices[0].message).toMatch(/in x\. Without --classes every value found in the masks becomes a class/);
    const given = parseClassMap(
      {
        classes: [
          { name: 'bg', value: 0 },
          { name: 'cell', value: 1 },
          { name: 'mitosis', value: 7 },
          { name: 'x', value: 128 },
        ],
      },
      'test',
    );
    const none = classPixelNotices(
      samples.map((s) => ({ ...s, labels: s.labels.map((l) => (l >= 2 ? 0 : l)) })),
      given,
      false,
    );
    expect(none.map((n) => n.message)).toEqual([
      'Class "mitosis" (mask value 7) has no pixels in the masks. The network will hardly learn it: check the masks, or merge it into another class.',
      'Class "x" (mask value 128) has no pixels in the masks. The network will hardly learn it: check the masks, or merge it into another class.',
    ]);
  });
});
