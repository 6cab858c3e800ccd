/**
 * One inferer: an image predicted as a PNG through core's `predictProbabilities` and as a pyramidal TIFF slide through
 * the tiler, with the same model, tile, overlap and runtime, gives the same label map and probabilities (the same
 * splitter, blend weights, trims, batches and plan-order sums).
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  argmaxLabels,
  defaultOverlap,
  loadModel,
  normalizeImage,
  predictProbabilities,
  readImage,
  type ModelManifest,
} from '@tessera/core';
import { saveTinyUnet } from '../test/tiny-model.mjs';
import { streamSlidePrediction } from './predict-slide.js';

const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../../../shared/data');
const HE = join(DATA, 'monuseg-train20/images');

let tmp: string;
let modelDir: string;
let manifest: ModelManifest;
let pngPath: string;
let tiffPath: string;
const W = 301;
const H = 222;
const K = 3;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'tessera-parity-'));
  modelDir = join(tmp, 'model');
  manifest = await saveTinyUnet(modelDir);
  const first = (await readdir(HE)).filter((n) => n.endsWith('.tif')).sort()[0];
  const png = await sharp(join(HE, first))
    .extract({ left: 211, top: 307, width: W, height: H })
    .removeAlpha()
    .png()
    .toBuffer();
  pngPath = join(tmp, 'crop.png');
  tiffPath = join(tmp, 'crop.tiff');
  await sharp(png).toFile(pngPath);
  await sharp(png).tiff({ tile: true, pyramid: true, compression: 'deflate' }).toFile(tiffPath);
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** The PNG through core's image path, as `tessera predict` runs it (labels by `argmaxLabels`). */
async function asImage(tile: number, overlap: number | undefined, blend: 'gaussian' | 'constant', batchSize: number) {
  const { model } = await loadModel(modelDir);
  try {
    const image = await readImage(pngPath, { channels: 3 });
    const probabilities = await predictProbabilities(
      model,
      { data: normalizeImage(image, manifest.normalization), width: W, height: H, channels: 3 },
      {
        multiple: manifest.architecture.inputMultiple,
        receptiveField: manifest.architecture.receptiveField,
        tile,
        overlap,
        blend,
        batchSize,
      },
    );
    return { probabilities, labels: argmaxLabels(probabilities, K) };
  } finally {
    model.dispose();
  }
}

/** The TIFF through the tiler's workers and band merger. */
async function asSlide(tile: number, overlap: number | undefined, blend: 'gaussian' | 'constant', batchSize: number) {
  const probabilities = new Float32Array(W * H * K);
  const labels = new Uint8Array(W * H);
  const run = await streamSlidePrediction(
    tiffPath,
    { model: modelDir, tile, overlap, blend, batchSize, workers: 2, backend: 'cpu', tissue: false },
    {
      band: (band) => {
        for (let r = 0; r < band.height; r++) {
          const from = r * band.width;
          const to = (band.y + r) * W + band.x;
          labels.set(band.labels.subarray(from, from + band.width), to);
          probabilities.set(band.probabilities.subarray(from * K, (from + band.width) * K), to * K);
        }
      },
    },
  );
  return { probabilities, labels, run };
}

describe('image and slide prediction are one inferer', () => {
  it.each([
    [64, undefined, 'gaussian', 3],
    [96, 16, 'constant', 2],
    [128, 56, 'gaussian', 4],
  ] as const)('tile %i, overlap %s, %s blend, batch %i: the same labels and probabilities', async (...args) => {
    const [tile, overlap, blend, batchSize] = args;
    const image = await asImage(tile, overlap, blend, batchSize);
    const slide = await asSlide(tile, overlap, blend, batchSize);
    expect(slide.run.slide.format).toBe('tiff');
    expect([slide.run.width, slide.run.height]).toEqual([W, H]);
    const { inputMultiple, receptiveField } = manifest.architecture;
    expect(slide.run.plan.overlap).toBe(overlap ?? defaultOverlap(receptiveField, inputMultiple));
    expect(slide.run.plan.rows * slide.run.plan.columns).toBeGreaterThan(4);
    let labelDiff = 0;
    let maxDiff = 0;
    let differing = 0;
    for (let i = 0; i < W * H; i++) labelDiff = Math.max(labelDiff, Math.abs(image.labels[i] - slide.labels[i]));
    for (let i = 0; i < W * H * K; i++) {
      const d = Math.abs(image.probabilities[i] - slide.probabilities[i]);
      maxDiff = Math.max(maxDiff, d);
      if (d !== 0) differing++;
    }
    console.log(`tile ${tile} overlap ${slide.run.plan.overlap} ${blend}: max |dp| ${maxDiff}, ${differing} differ`);
    expect(labelDiff).toBe(0);
    expect(maxDiff).toBeLessThanOrEqual(1e-6);
    // Not just equal labels: the map is not one class everywhere.
    expect(new Set(image.labels).size).toBeGreaterThan(1);
  });
});
