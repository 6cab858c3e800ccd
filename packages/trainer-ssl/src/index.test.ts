import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createRandom,
  defaultTrainer,
  randSyntheticTissue,
  setupEngine,
  writePng,
  type RasterImage,
  type TrainEvent,
} from '@tessera/core';
import unet from '@tessera/arch-unet';
import { openSlide, readThumbnail, tissueMask } from '@tessera/tiler';
import inpaintingTrainer, { fitPalette, maskRegions, quantize, sampleTiles, type InpaintingRecord } from './index.js';

const CMU = join(
  import.meta.dirname,
  '../../../../shared/data/slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs',
);
let root: string;

beforeAll(async () => {
  await setupEngine('wasm');
  root = await mkdtemp(join(tmpdir(), 'tessera-ssl-'));
  await mkdir(join(root, 'images'));
  await mkdir(join(root, 'masks'));
  const rng = createRandom(3);
  for (let i = 0; i < 4; i++) {
    const { image, mask } = randSyntheticTissue({ width: 64, height: 64, density: 30 }, rng.fork(i));
    await writePng(join(root, 'images', `s${i}.png`), image);
    await writePng(join(root, 'masks', `s${i}.png`), { data: mask.data, width: 64, height: 64, channels: 1 });
  }
});
afterAll(async () => rm(root, { recursive: true, force: true }));

describe('palette', () => {
  it('finds the colours of an image and maps each pixel to the nearest', () => {
    const colours = [
      [200, 40, 40],
      [20, 20, 160],
      [240, 240, 240],
    ];
    const data = new Uint8Array(30 * 30 * 3);
    for (let p = 0; p < 900; p++)
      data.set(
        colours[p % 3].map((v) => v + ((p * 7) % 5) - 2),
        p * 3,
      );
    const image: RasterImage = { data, width: 30, height: 30, channels: 3 };
    const palette = fitPalette([image], 3, createRandom(1));
    // Dark to bright; each found colour within the +-2 noise of a true one.
    expect(palette.map((c) => c.reduce((s, v) => s + v, 0))).toEqual(
      [...palette.map((c) => c.reduce((s, v) => s + v, 0))].sort((a, b) => a - b),
    );
    for (const colour of colours) {
      expect(palette.some((c) => c.every((v, i) => Math.abs(v - colour[i]) <= 2))).toBe(true);
    }
    const labels = quantize(image, palette);
    for (let p = 0; p < 900; p++)
      expect(palette[labels[p]].every((v, i) => Math.abs(v - colours[p % 3][i]) <= 4)).toBe(true);
  });
});

describe('maskRegions', () => {
  it('blanks 25-50% of each crop and scores only the blanked pixels', () => {
    const tile = 32;
    const image = new Float32Array(3 * tile * tile * 3).fill(1);
    const labels = new Int32Array(3 * tile * tile).fill(5);
    maskRegions(image, labels, createRandom(4), tile);
    for (let b = 0; b < 3; b++) {
      let blanked = 0;
      for (let p = 0; p < tile * tile; p++) {
        const at = b * tile * tile + p;
        const zero = image[at * 3] === 0 && image[at * 3 + 1] === 0 && image[at * 3 + 2] === 0;
        expect(labels[at]).toBe(zero ? 5 : -1);
        if (zero) blanked++;
      }
      expect(blanked / (tile * tile)).toBeGreaterThanOrEqual(0.25);
      expect(blanked / (tile * tile)).toBeLessThan(0.5 + (2 * (8 * 8)) / (tile * tile));
    }
  });
});

describe('sampleTiles', () => {
  it('cuts an image into its grid of tiles', async () => {
    const { tiles, sources } = await sampleTiles(
      [join(root, 'images', 's0.png')],
      { tile: 32, channels: 3, perSource: 8, minTissue: 0.5 },
      createRandom(1),
    );
    expect(tiles).toHaveLength(4);
    expect(sources).toEqual([expect.objectContaining({ kind: 'image', tiles: 4 })]);
  });

  it.skipIf(!existsSync(CMU))('samples a slide where its tissue mask says tissue (the CMU SVS)', async () => {
    const { tiles, sources } = await sampleTiles(
      [CMU],
      { tile: 128, channels: 3, perSource: 12, minTissue: 0.5 },
      createRandom(2),
    );
    expect(sources[0]).toMatchObject({ kind: 'slide', tiles: 12 });
    // Each tile is mostly tissue: under half of its pixels are glass (bright and grey).
    for (const tile of tiles) {
      let glass = 0;
      for (let p = 0; p < tile.width * tile.height; p++) {
        const [r, g, b] = tile.data.subarray(p * 3, p * 3 + 3);
        const [hi, lo] = [Math.max(r, g, b), Math.min(r, g, b)];
        if (hi > 215 && hi - lo < 25) glass++;
      }
      expect(glass / (tile.width * tile.height)).toBeLessThan(0.5);
    }
    // and the slide has glass where nothing was taken: its thumbnail is not all tissue.
    const thumbnail = await readThumbnail(await openSlide(CMU), 256, 3);
    const all = tissueMask(thumbnail);
    expect(all.reduce((s, v) => s + v, 0) / all.length).toBeLessThan(0.9);
  });
});

describe('inpaintingTrainer', () => {
  it('pretrains a model that train --init starts from, only the head initialised afresh', async () => {
    const out = join(root, 'pretrained');
    const events: TrainEvent[] = [];
    const architecture = unet({});
    await inpaintingTrainer({ palette: 8, tilesPerSource: 4 }).train({
      architecture,
      architectureOptions: { depth: 2, baseFilters: 4 },
      images: join(root, 'images'),
      out,
      options: { tileSize: 32, batchSize: 2, epochs: 1, stepsPerEpoch: 3, seed: 5 },
      onEvent: (e) => events.push(e),
    });
    const record = JSON.parse(await readFile(join(out, 'pretraining.json'), 'utf8')) as InpaintingRecord;
    expect(record).toMatchObject({ tiles: 16, tileSize: 32 });
    expect(record.palette).toHaveLength(8);
    const manifest = JSON.parse(await readFile(join(out, 'manifest.json'), 'utf8'));
    expect(manifest.classes).toHaveLength(8);
    expect(manifest.training.options).toMatchObject({ loss: 'cross-entropy', valSplit: 0, select: 'loss' });
    expect(
      events.some((e) => e.type === 'notice' && /pretraining on 16 tiles of 32 px from 4 source/.test(e.message)),
    ).toBe(true);

    const events2: TrainEvent[] = [];
    await defaultTrainer().train({
      architecture,
      images: join(root, 'images'),
      masks: join(root, 'masks'),
      out: join(root, 'fine-tuned'),
      init: out,
      options: { tileSize: 32, batchSize: 2, epochs: 1, stepsPerEpoch: 2, freeze: 'encoder', valSplit: 0.25 },
      onEvent: (e) => events2.push(e),
    });
    const init = events2.find((e) => e.type === 'init') as Extract<TrainEvent, { type: 'init' }>;
    expect(init.reinitialised.map((r) => r.layer)).toEqual(['probabilities']);
    expect(init.frozen).toEqual(expect.arrayContaining(['enc1_conv1', 'bottleneck_conv1']));
  });

  it('refuses inputs that give no tiles, naming each', async () => {
    await expect(
      inpaintingTrainer().train({
        architecture: unet({}),
        images: join(root, 'images', 's0.png'),
        out: join(root, 'refused'),
        options: { tileSize: 128 },
      }),
    ).rejects.toThrow(
      /Expected at least 2 tiles of 128 px to pretrain on, but the inputs gave 0: .*s0.png: 0 \(64x64 px, smaller than a 128 px tile\)/,
    );
  });
});
