import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ConfusionMatrix,
  RGB_FROM_HED,
  createRandom,
  defaultTrainer,
  randSyntheticTissue,
  readImage,
  setupEngine,
  writePng,
  type RasterImage,
  type TrainEvent,
} from '@tessera/core';
import unet from '@tessera/arch-unet';
import heNucleiTrainer, {
  haematoxylin,
  nucleusMask,
  otsuThreshold,
  pseudoNuclei,
  type HeNucleiRecord,
} from './index.js';

const MONUSEG = join(import.meta.dirname, '../../../../shared/data/monuseg-train20');
let root: string;

/** A pixel whose optical density is `amount` times the stain `vector` (the inverse of the reader's log). */
function stained(amounts: readonly number[]): number[] {
  return [0, 1, 2].map((c) => {
    const od = amounts.reduce((s, a, k) => s + a * RGB_FROM_HED[k][c], 0);
    return Math.round(256 * Math.exp(-od) - 1);
  });
}

function dice(a: Uint8Array, b: Uint8Array): number {
  const cm = new ConfusionMatrix(2);
  cm.add(a, b);
  return cm.dice()[1];
}

beforeAll(async () => {
  await setupEngine('wasm');
  root = await mkdtemp(join(tmpdir(), 'tessera-he-nuclei-'));
  for (const kind of ['images', 'masks', 'grey']) await mkdir(join(root, kind));
  const rng = createRandom(3);
  for (let i = 0; i < 4; i++) {
    const { image, mask } = randSyntheticTissue({ width: 64, height: 64, density: 30 }, rng.fork(i));
    await writePng(join(root, 'images', `s${i}.png`), image);
    await writePng(join(root, 'masks', `s${i}.png`), { data: mask.data, width: 64, height: 64, channels: 1 });
  }
  await writePng(join(root, 'grey', 'g.png'), {
    data: new Uint8Array(64 * 64).fill(90),
    width: 64,
    height: 64,
    channels: 1,
  });
});
afterAll(async () => rm(root, { recursive: true, force: true }));

describe('colour deconvolution', () => {
  it('gives the haematoxylin amount of a pixel mixed from known stain amounts, and none to eosin', () => {
    const mixes = [
      [0.8, 0, 0],
      [0.3, 0.5, 0],
      [0, 0.9, 0],
      [0.5, 0.2, 0.1],
    ];
    const data = Uint8Array.from(mixes.flatMap(stained));
    const h = haematoxylin({ data, width: 4, height: 1, channels: 3 }, 0);
    // Within the rounding of 8-bit pixels.
    mixes.forEach((mix, i) => expect(h[i]).toBeCloseTo(mix[0], 1));
    expect(Math.abs(h[2])).toBeLessThan(0.02);
  });

  it('refuses a grey image', () => {
    expect(() => haematoxylin({ data: new Uint8Array(4), width: 2, height: 2, channels: 1 })).toThrow(
      /Expected an RGB image for colour deconvolution but received 1 channel/,
    );
  });
});

describe('otsuThreshold', () => {
  it('splits two modes between them, over several maps at once', () => {
    const low = Float32Array.from({ length: 300 }, (_, i) => 0.1 + (i % 10) * 0.005);
    const high = Float32Array.from({ length: 100 }, (_, i) => 0.8 + (i % 10) * 0.005);
    const t = otsuThreshold([low, high]);
    expect(Math.max(...low)).toBeLessThan(t);
    expect(Math.min(...high)).toBeGreaterThan(t);
    // A third, brighter group moves it up between the upper modes.
    expect(
      otsuThreshold([low, high, Float32Array.from(high, (v) => v + 2), Float32Array.from(high, (v) => v + 2)]),
    ).toBeGreaterThan(0.8);
  });
});

describe('nucleusMask', () => {
  it('fills holes, drops specks under the minimum area and keeps the rest', () => {
    const [w, h] = [20, 12];
    const values = new Float32Array(w * h);
    const set = (x: number, y: number) => (values[y * w + x] = 1);
    // A 5x5 ring with a hole in the middle, a 2-pixel speck, and a 3x3 blob at the border.
    for (let y = 2; y < 7; y++) for (let x = 2; x < 7; x++) if (y === 2 || y === 6 || x === 2 || x === 6) set(x, y);
    set(12, 5);
    set(13, 5);
    for (let y = 0; y < 3; y++) for (let x = 17; x < 20; x++) set(x, y);
    const mask = nucleusMask(values, w, h, 0.5, 5);
    expect(mask[4 * w + 4]).toBe(1); // the hole, filled
    expect(mask[5 * w + 12]).toBe(0); // the speck, dropped
    expect(mask[1 * w + 18]).toBe(1); // the blob, kept
    expect(mask.reduce((s, v) => s + v, 0)).toBe(25 + 9);
  });
});

describe('pseudoNuclei', () => {
  it('finds the nuclei of synthetic H&E tissue', async () => {
    const rng = createRandom(11);
    const made = [0, 1].map((i) => randSyntheticTissue({ width: 96, height: 96, density: 20 }, rng.fork(i)));
    const { masks, share } = pseudoNuclei(
      made.map((m) => m.image),
      null,
    );
    made.forEach((m, i) => expect(dice(masks[i], m.mask.data)).toBeGreaterThan(0.85));
    expect(share).toBeGreaterThan(0.05);
  });

  it('uses one threshold per source, so a tile without nuclei is not forced to hold some', () => {
    const rng = createRandom(12);
    const { image } = randSyntheticTissue({ width: 64, height: 64, density: 30 }, rng);
    // Pale stroma only: eosin with a little noise, no haematoxylin-rich pixel.
    const stroma: RasterImage = {
      data: Uint8Array.from({ length: 64 * 64 * 3 }, (_, i) => stained([0, 0.35 + ((i * 7919) % 13) / 200, 0])[i % 3]),
      width: 64,
      height: 64,
      channels: 3,
    };
    const { masks } = pseudoNuclei([image, stroma], null);
    expect(masks[1].reduce((s, v) => s + v, 0)).toBe(0);
    // Alone, Otsu has to split the stroma's own noise.
    const alone = pseudoNuclei([stroma], null).masks[0].reduce((s, v) => s + v, 0);
    expect(alone).toBeGreaterThan(0);
  });

  it.skipIf(!existsSync(MONUSEG))(
    'agrees with the expert masks of real MoNuSeg tiles (the held-out four of bench/few-labels.mjs)',
    async () => {
      const stems = (await import('node:fs'))
        .readdirSync(join(MONUSEG, 'images'))
        .filter((f) => f.endsWith('.tif'))
        .sort()
        .slice(16, 20);
      const cm = new ConfusionMatrix(2);
      for (const file of stems) {
        const image = await readImage(join(MONUSEG, 'images', file), { channels: 3 });
        const truth = await readImage(join(MONUSEG, 'masks', file.replace('.tif', '.png')), { channels: 1 });
        cm.add(
          pseudoNuclei([image], 0.25).masks[0],
          Uint8Array.from(truth.data, (v) => (v ? 1 : 0)),
        );
      }
      // Measured 0.789 (precision 0.70, recall 0.90): pixel-level, touching nuclei merge.
      expect(cm.dice()[1]).toBeGreaterThan(0.75);
    },
  );
});

describe('heNucleiTrainer', () => {
  it('pretrains a nucleus model that train --init loads whole, head included', async () => {
    const out = join(root, 'pretrained');
    const events: TrainEvent[] = [];
    const architecture = unet({});
    await heNucleiTrainer({ tilesPerSource: 4 }).train({
      architecture,
      architectureOptions: { depth: 2, baseFilters: 4 },
      images: join(root, 'images'),
      out,
      options: { tileSize: 32, batchSize: 2, epochs: 1, stepsPerEpoch: 3, seed: 5 },
      onEvent: (e) => events.push(e),
    });
    const record = JSON.parse(await readFile(join(out, 'pretraining.json'), 'utf8')) as HeNucleiRecord;
    expect(record).toMatchObject({ tiles: 16, tileSize: 32 });
    expect(record.method).toMatch(/colour deconvolution/);
    expect(record.thresholds).toHaveLength(4);
    for (const t of record.thresholds) expect(t.nucleusShare).toBeGreaterThan(0.05);
    const manifest = JSON.parse(await readFile(join(out, 'manifest.json'), 'utf8'));
    expect(manifest.classes.map((c: { name: string }) => c.name)).toEqual(['background', 'nucleus']);
    expect(manifest.training.options).toMatchObject({ valSplit: 0, select: 'loss' });
    const preview = await readImage(join(out, 'pseudo-labels.png'));
    expect([preview.width, preview.height]).toEqual([128, 64]);
    expect(events.some((e) => e.type === 'notice' && /segmenting the nuclei .*% of the pixels/.test(e.message))).toBe(
      true,
    );

    const events2: TrainEvent[] = [];
    await defaultTrainer().train({
      architecture,
      images: join(root, 'images'),
      masks: join(root, 'masks'),
      out: join(root, 'fine-tuned'),
      init: out,
      options: { tileSize: 32, batchSize: 2, epochs: 1, stepsPerEpoch: 2, valSplit: 0.25 },
      onEvent: (e) => events2.push(e),
    });
    const init = events2.find((e) => e.type === 'init') as Extract<TrainEvent, { type: 'init' }>;
    expect(init.reinitialised).toEqual([]);
    expect(init.loaded).toEqual(expect.arrayContaining(['enc1_conv1', 'probabilities']));
  });

  it('refuses grey images, naming the file and the trainer for them', async () => {
    await expect(
      heNucleiTrainer().train({ architecture: unet({}), images: join(root, 'grey'), out: join(root, 'refused') }),
    ).rejects.toThrow(/Expected colour H&E images for the he-nuclei trainer but ".*g\.png" has 1 channel/);
  });
});
