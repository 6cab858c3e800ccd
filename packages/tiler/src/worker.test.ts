import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { valueSymbol } from 'piscina';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { saveTinyUnet } from '../test/tiny-model.mjs';
import { openSlide, type SlideInfo } from './slide.js';
import { predict, rethrowFailure, type PredictResult, type PredictTask } from './worker.js';

const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../../../shared/data');
const HE = join(DATA, 'monuseg-train20/images');
const W = 203;
const H = 150;
const T = 64;
/** Classes of the tiny model. */
const K = 3;

let tmp: string;
let modelDir: string;
let slide: SlideInfo;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'tessera-worker-'));
  modelDir = join(tmp, 'model');
  await saveTinyUnet(modelDir);
  const first = (await readdir(HE)).filter((n) => n.endsWith('.tif')).sort()[0];
  const path = join(tmp, 'crop.png');
  await sharp(join(HE, first)).extract({ left: 300, top: 400, width: W, height: H }).png().toFile(path);
  slide = await openSlide(path);
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function run(tiles: { x: number; y: number }[]): Promise<PredictResult> {
  const task: PredictTask = {
    model: modelDir,
    backend: 'cpu',
    slide,
    level: 0,
    scale: 1,
    bounds: { width: W, height: H },
    tileWidth: T,
    tileHeight: T,
    tiles,
  };
  // Outside a pool, the result is still wrapped for Piscina's transfer list.
  const outcome = (await predict(task)) as unknown as Record<symbol, unknown>;
  return rethrowFailure((outcome[valueSymbol] ?? outcome) as PredictResult);
}

describe('worker predict', () => {
  it('reads tiles that share a row as one region, with the pixels of reads of their own', async () => {
    // Overlapping and touching tiles (one region), a gap, a tile past the right edge (mirrored), then a new row
    // and a tile left of the previous one: four regions in all.
    const tiles = [
      { x: 0, y: 0 },
      { x: 48, y: 0 },
      { x: 112, y: 0 },
      { x: 190, y: 0 },
      { x: 150, y: 100 },
      { x: 10, y: 100 },
    ];
    const batch = await run(tiles);
    const per = T * T * K;
    expect(batch.probabilities.length).toBe(tiles.length * per);
    for (const [i, tile] of tiles.entries()) {
      const alone = await run([tile]);
      const part = batch.probabilities.subarray(i * per, (i + 1) * per);
      let worst = 0;
      for (let j = 0; j < per; j++) worst = Math.max(worst, Math.abs(part[j] - alone.probabilities[j]));
      expect(worst, `tile ${i} at ${tile.x},${tile.y}`).toBeLessThan(1e-6);
    }
  });

  it('gives each tile its own pixels: tiles of different places differ', async () => {
    const { probabilities } = await run([
      { x: 0, y: 0 },
      { x: 48, y: 0 },
    ]);
    const per = T * T * K;
    let diff = 0;
    for (let j = 0; j < per; j++) diff = Math.max(diff, Math.abs(probabilities[j] - probabilities[per + j]));
    expect(diff).toBeGreaterThan(1e-3);
  });
});

describe('worker predict on a damaged slide', () => {
  it('returns the decoder failure as a Tessera error naming the file, level and region (exit code 5)', async () => {
    // A tiled Deflate TIFF whose tile (2, 1) is damaged: the structure and tile (0, 0) read, that tile does not.
    const path = join(tmp, 'damaged.tif');
    await sharp(join(HE, (await readdir(HE)).filter((n) => n.endsWith('.tif')).sort()[0]))
      .extract({ left: 0, top: 0, width: 256, height: 192 })
      .tiff({ tile: true, tileWidth: 64, tileHeight: 64, compression: 'deflate' })
      .toFile(path);
    const { readFile, writeFile } = await import('node:fs/promises');
    const bytes = Buffer.from(await readFile(path));
    const ifd = bytes.readUInt32LE(4);
    let offsets = 0;
    for (let i = 0; i < bytes.readUInt16LE(ifd); i++) {
      const at = ifd + 2 + 12 * i;
      if (bytes.readUInt16LE(at) === 324) offsets = bytes.readUInt32LE(at + 8);
    }
    const tile = bytes.readUInt32LE(offsets + 4 * (1 * 4 + 2));
    bytes.fill(0xa5, tile + 2, tile + 60);
    await writeFile(path, bytes);
    const damaged = await openSlide(path);
    const task: PredictTask = {
      model: modelDir,
      backend: 'cpu',
      slide: damaged,
      level: 0,
      scale: 1,
      bounds: { width: 256, height: 192 },
      tileWidth: T,
      tileHeight: T,
      tiles: [{ x: 128, y: 64 }],
    };
    const outcome = (await predict(task)) as unknown as Record<symbol, unknown>;
    const error = (() => {
      try {
        rethrowFailure((outcome[valueSymbol] ?? outcome) as PredictResult);
      } catch (e) {
        return e as { code: string; exitCode: number; message: string };
      }
    })();
    expect(error).toMatchObject({ code: 'E_SLIDE_FORMAT', exitCode: 5 });
    expect(error!.message).toMatch(/damaged\.tif" level 0 region x 128, y 64, 64x64 could not be decoded \(Deflate\)/);
  });
});
