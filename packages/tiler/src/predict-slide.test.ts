import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, normalizeImage, predictProbabilities, readImage } from '@tessera/core';
import { saveTinyUnet } from '../test/tiny-model.mjs';
import { PartialWorkError, PredictionInterruptedError, TilerOptionError } from './errors.js';
import { exportModelDir } from '@tessera/onnx';
import { resolveTilerOptions } from './options.js';
import { predictSlide, streamSlidePrediction } from './predict-slide.js';

const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../../../shared/data');
const HE = join(DATA, 'monuseg-train20/images');

let tmp: string;
let modelDir: string;
let imagePath: string;
let reference: Float32Array;
const W = 203;
const H = 150;
const K = 3;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'tessera-tiler-'));
  modelDir = join(tmp, 'model');
  await saveTinyUnet(modelDir);
  const first = (await readdir(HE)).filter((n) => n.endsWith('.tif')).sort()[0];
  const crop = await sharp(join(HE, first)).extract({ left: 300, top: 400, width: W, height: H }).png().toBuffer();
  imagePath = join(tmp, 'crop.png');
  await sharp(crop).toFile(imagePath);
  const { model, manifest } = await loadModel(modelDir);
  const image = await readImage(imagePath, { channels: 3 });
  const data = normalizeImage(image, manifest.normalization);
  reference = await predictProbabilities(model, { data, width: W, height: H, channels: 3 }, { multiple: 4 });
  await exportModelDir(modelDir);
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function tiled(
  tile: number,
  overlap: number,
  workers: number,
  runtime: 'tfjs' | 'onnx' = 'tfjs',
  batchSize = 3,
  stripeWidth?: number,
) {
  const probabilities = new Float32Array(W * H * K);
  const labels = new Uint8Array(W * H);
  let pixels = 0;
  let next = { stripe: 0, y: 0, x: 0 };
  const run = await streamSlidePrediction(
    imagePath,
    {
      model: modelDir,
      tile,
      overlap,
      workers,
      batchSize,
      backend: 'cpu',
      tissue: false,
      onnx: runtime === 'onnx' ? { file: join(modelDir, 'model.onnx') } : undefined,
      stripeWidth,
    },
    {
      band: (band) => {
        // Stripes left to right, each top to bottom.
        if (next.y === H) next = { stripe: next.stripe + 1, y: 0, x: next.x };
        expect([band.stripe, band.y]).toEqual([next.stripe, next.y]);
        if (band.y === 0) expect(band.x).toBe(next.stripe === 0 ? 0 : next.x);
        for (let r = 0; r < band.height; r++) {
          const from = r * band.width;
          const to = (band.y + r) * W + band.x;
          labels.set(band.labels.subarray(from, from + band.width), to);
          probabilities.set(band.probabilities.subarray(from * K, (from + band.width) * K), to * K);
        }
        next = { stripe: band.stripe, y: band.y + band.height, x: band.x + band.width };
        pixels += band.height * band.width;
      },
    },
  );
  expect(pixels).toBe(W * H);
  expect(next.x).toBe(W);
  return { probabilities, labels, run };
}

function compare(probabilities: Float32Array, labels: Uint8Array) {
  let maxDiff = 0;
  let disagree = 0;
  for (let i = 0; i < W * H; i++) {
    let best = 0;
    for (let q = 0; q < K; q++) {
      maxDiff = Math.max(maxDiff, Math.abs(probabilities[i * K + q] - reference[i * K + q]));
      if (reference[i * K + q] > reference[i * K + best]) best = q;
    }
    if (best !== labels[i]) disagree++;
  }
  return { maxDiff, disagreement: disagree / (W * H) };
}

describe('tile invariance', () => {
  it.each([
    [64, 48, 1],
    [64, 56, 2],
    [96, 48, 2],
    [96, 56, 1],
  ])('tile %i, overlap %i, %i worker(s) matches the whole-image prediction', async (tile, overlap, workers) => {
    const { probabilities, labels, run } = await tiled(tile, overlap, workers);
    const { maxDiff, disagreement } = compare(probabilities, labels);
    console.log(
      `tile ${tile} overlap ${overlap} workers ${workers}: max |dp| ${maxDiff.toExponential(2)}, labels differing ${disagreement}`,
    );
    expect(run.tilesPredicted).toBe(run.plan.rows * run.plan.columns);
    expect(maxDiff).toBeLessThan(1e-4);
    expect(disagreement).toBeLessThan(1e-3);
  });

  it.each([
    [64, 48, 2, 1],
    [96, 56, 1, 3],
    [96, 48, 2, 4],
  ])(
    'with the ONNX runtime: tile %i, overlap %i, %i worker(s), batch %i matches the whole-image (tfjs) prediction',
    async (tile, overlap, workers, batch) => {
      const { probabilities, labels, run } = await tiled(tile, overlap, workers, 'onnx', batch);
      const { maxDiff, disagreement } = compare(probabilities, labels);
      console.log(
        `onnx tile ${tile} overlap ${overlap} workers ${workers} batch ${batch}: max |dp| ${maxDiff.toExponential(2)}, labels differing ${disagreement}`,
      );
      expect(run.engine).toMatch(/^onnxruntime-node/);
      expect(maxDiff).toBeLessThan(1e-4);
      expect(disagreement).toBeLessThan(1e-3);
    },
  );

  it.each([
    [64, 48, 2, 'tfjs', 70],
    [96, 56, 1, 'onnx', 100],
    [64, 48, 2, 'onnx', 1],
  ] as const)(
    'cut into stripes: tile %i, overlap %i, %i worker(s), %s, stripes of at most %i px match the whole image',
    async (tile, overlap, workers, runtime, stripeWidth) => {
      const { probabilities, labels, run } = await tiled(tile, overlap, workers, runtime, 3, stripeWidth);
      const { maxDiff, disagreement } = compare(probabilities, labels);
      console.log(
        `stripes ${run.stripes} (${stripeWidth} px) tile ${tile}: max |dp| ${maxDiff.toExponential(2)}, labels differing ${disagreement}`,
      );
      expect(run.stripes).toBeGreaterThan(1);
      // Tiles along a stripe boundary are predicted for both stripes.
      expect(run.tilesPredicted).toBeGreaterThan(run.plan.rows * run.plan.columns);
      expect(maxDiff).toBeLessThan(1e-4);
      expect(disagreement).toBeLessThan(1e-3);
    },
  );

  it('is not invariant with too little overlap (the test can fail)', async () => {
    const { probabilities, labels } = await tiled(64, 8, 1);
    const { maxDiff, disagreement } = compare(probabilities, labels);
    console.log(`tile 64 overlap 8: max |dp| ${maxDiff.toExponential(2)}, labels differing ${disagreement}`);
    expect(maxDiff).toBeGreaterThan(1e-3);
  });
});

describe('options', () => {
  it('derives the overlap from the receptive field and checks values', async () => {
    const { readManifest } = await import('@tessera/core');
    const manifest = await readManifest(modelDir);
    const resolved = resolveTilerOptions({ model: modelDir }, manifest);
    expect(resolved).toMatchObject({ tile: 512, overlap: 48, batchSize: 4, tissue: true, blend: 'gaussian' });
    expect(() => resolveTilerOptions({ model: modelDir, tile: 50 }, manifest)).toThrow(TilerOptionError);
    expect(() => resolveTilerOptions({ model: modelDir, workers: 0 }, manifest)).toThrow(
      /Expected workers to be a positive integer but received 0/,
    );
  });

  it('brings worker errors back with their code and exit code', async () => {
    const promise = streamSlidePrediction(
      imagePath,
      { model: modelDir, backend: 'tfjs-node-gpu', workers: 1 },
      { band: () => {} },
    );
    await expect(promise).rejects.toMatchObject({ code: 'E_ENGINE', exitCode: 9 });
    await expect(promise).rejects.toThrow(/Engine "tfjs-node-gpu" was asked for/);
  });
});

describe('predictSlide', () => {
  it('writes a pyramidal label TIFF, overlay, areas and probability maps', async () => {
    const out = join(tmp, 'out');
    const { outputs, run } = await predictSlide(imagePath, {
      model: modelDir,
      out,
      tile: 64,
      workers: 1,
      backend: 'cpu',
      tissue: false,
      probabilities: true,
    });
    const meta = await sharp(outputs.labels).metadata();
    expect([meta.width, meta.height, meta.channels]).toEqual([W, H, 1]);
    const labelPixels = await sharp(outputs.labels).extractChannel(0).raw().toBuffer();
    const { labels } = await tiled(64, 48, 1);
    expect(Buffer.from(labelPixels).equals(Buffer.from(labels))).toBe(true); // class values 0, 1, 2 = indices
    expect(outputs.probabilities).toHaveLength(3);
    expect(outputs.areas.reduce((s, a) => s + a.pixels, 0)).toBe(W * H);
    expect((await readdir(out)).filter((n) => n.includes('.tmp-'))).toEqual([]);
    expect(run.timings.inferMs).toBeGreaterThan(0);
  });

  it('stops on an AbortSignal and leaves no output behind', async () => {
    const out = join(tmp, 'aborted');
    const controller = new AbortController();
    const promise = predictSlide(imagePath, {
      model: modelDir,
      out,
      tile: 64,
      overlap: 56,
      batchSize: 1,
      maxInFlight: 1,
      workers: 1,
      backend: 'cpu',
      tissue: false,
      signal: controller.signal,
      onProgress: (p) => {
        if (p.tilesDone >= 2) controller.abort();
      },
    });
    await expect(promise).rejects.toThrow(/crop\.png" was interrupted before any row of the output was finished/);
    await expect(promise).rejects.toMatchObject({ code: 'E_INTERRUPTED', exitCode: 130, partial: null });
    expect(await readdir(out)).toEqual([]);
  });
});

describe('tiles skipped as background', () => {
  it("get the model's background class, also when it is not class 0", async () => {
    // White glass with a stained patch in the top-left corner: only tiles near the patch are predicted.
    const [width, height] = [192, 128];
    const pixels = new Uint8Array(width * height * 3).fill(255);
    for (let y = 0; y < 48; y++) for (let x = 0; x < 48; x++) pixels.set([170, 70, 150], (y * width + x) * 3);
    const slide = join(tmp, 'glass.png');
    await sharp(pixels, { raw: { width, height, channels: 3 } })
      .png()
      .toFile(slide);
    // The tiny model with its third class (stroma, value 2) flagged as the background.
    const model = join(tmp, 'model-flagged');
    await saveTinyUnet(model);
    const manifest = JSON.parse(await readFile(join(model, 'manifest.json'), 'utf8'));
    manifest.classes[2].background = true;
    await writeFile(join(model, 'manifest.json'), JSON.stringify(manifest));
    const labelsOf = async (modelDir: string, out: string) => {
      const { outputs, run } = await predictSlide(slide, {
        model: modelDir,
        out,
        tile: 64,
        workers: 1,
        backend: 'cpu',
      });
      expect(run.tilesSkipped).toBeGreaterThan(0);
      return { labels: await sharp(outputs.labels).extractChannel(0).raw().toBuffer(), outputs };
    };
    const corner = (labels: Buffer) => [...labels.subarray((height - 1) * width + width - 32, height * width)];
    const flagged = await labelsOf(model, join(tmp, 'glass-flagged'));
    expect(new Set(corner(flagged.labels))).toEqual(new Set([2]));
    // The overlay leaves that background untinted: the glass corner of the thumbnail stays white.
    const overlay = await sharp(flagged.outputs.overlay).raw().toBuffer({ resolveWithObject: true });
    const last = (overlay.info.width * overlay.info.height - 1) * 3;
    expect([...overlay.data.subarray(last, last + 3)]).toEqual([255, 255, 255]);
    // Without the flag the class named "background" (value 0) is the background, as before.
    const plain = await labelsOf(modelDir, join(tmp, 'glass-plain'));
    expect(new Set(corner(plain.labels))).toEqual(new Set([0]));
  });
});

describe('resume', () => {
  const settings = {
    tile: 64,
    overlap: 48,
    batchSize: 2,
    workers: 2,
    backend: 'cpu',
    tissue: false,
    probabilities: true,
  } as const;
  const files = ['crop_labels.tif', 'crop_prob_background.tif', 'crop_prob_nucleus.tif', 'crop_prob_stroma.tif'];
  const finals = [...files, 'crop_overlay.png', 'crop_areas.json', 'crop_areas.csv'];

  async function interrupt(out: string, options: object = {}) {
    const controller = new AbortController();
    const error = await predictSlide(imagePath, {
      model: modelDir,
      out,
      ...settings,
      ...options,
      maxInFlight: 1,
      signal: controller.signal,
      onProgress: (p) => {
        if (p.pixelsDone >= p.pixelsTotal / 3) controller.abort();
      },
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PredictionInterruptedError);
    return error as PredictionInterruptedError;
  }

  it('continues an interrupted prediction to the same bytes as an uninterrupted one', async () => {
    const straight = join(tmp, 'straight');
    const full = await predictSlide(imagePath, { model: modelDir, out: straight, ...settings });
    expect(full.run.resumedRows).toBe(0);

    const out = join(tmp, 'resumed');
    const stopped = await interrupt(out);
    expect(stopped.rows).toBeGreaterThan(0);
    expect(stopped.rows).toBeLessThan(H);
    expect(stopped.partial).toBe(join(out, '.crop.partial'));
    expect(stopped.message).toContain(`after ${stopped.rows} of ${H} output rows`);
    expect(stopped.hint).toContain('--resume');
    expect(await readdir(out)).toEqual(['.crop.partial']); // no final file
    const journal = JSON.parse(await readFile(join(stopped.partial!, 'journal.json'), 'utf8'));
    expect(journal.rows).toBe(stopped.rows);
    expect(journal.counts.reduce((a: number, b: number) => a + b, 0)).toBe(stopped.rows * W);

    const resumed = await predictSlide(imagePath, { model: modelDir, out, ...settings, workers: 1, resume: true });
    expect(resumed.run.resumedRows).toBe(stopped.rows);
    expect(resumed.run.tilesPredicted).toBeLessThan(full.run.tilesPredicted);
    expect((await readdir(out)).sort()).toEqual([...finals].sort()); // partial folder removed
    for (const name of finals) {
      const [a, b] = [await readFile(join(straight, name)), await readFile(join(out, name))];
      expect(b.equals(a), name).toBe(true);
    }
    expect(resumed.outputs.areas).toEqual(full.outputs.areas);
  });

  it('continues an interrupted prediction in a later stripe to the same bytes', async () => {
    const striped = { ...settings, stripeWidth: 70 };
    const straight = join(tmp, 'straight-striped');
    const full = await predictSlide(imagePath, { model: modelDir, out: straight, ...striped });
    expect(full.run.stripes).toBeGreaterThanOrEqual(3);

    const out = join(tmp, 'resumed-striped');
    const controller = new AbortController();
    const stopped = (await predictSlide(imagePath, {
      model: modelDir,
      out,
      ...striped,
      maxInFlight: 1,
      signal: controller.signal,
      onProgress: (p) => {
        if (p.pixelsDone >= p.pixelsTotal / 2) controller.abort();
      },
    }).catch((e: unknown) => e)) as PredictionInterruptedError;
    expect(stopped).toBeInstanceOf(PredictionInterruptedError);
    expect(stopped.stripe).toBeGreaterThanOrEqual(1);
    expect(stopped.message).toContain(`of stripe ${stopped.stripe + 1} of ${full.run.stripes}`);
    const journal = JSON.parse(await readFile(join(stopped.partial!, 'journal.json'), 'utf8'));
    expect([journal.stripe, journal.rows]).toEqual([stopped.stripe, stopped.rows]);

    const resumed = await predictSlide(imagePath, { model: modelDir, out, ...striped, workers: 1, resume: true });
    expect([resumed.run.resumedStripe, resumed.run.resumedRows]).toEqual([stopped.stripe, stopped.rows]);
    expect(resumed.run.tilesPredicted).toBeLessThan(full.run.tilesPredicted);
    for (const name of finals) {
      const [a, b] = [await readFile(join(straight, name)), await readFile(join(out, name))];
      expect(b.equals(a), name).toBe(true);
    }
    const other = predictSlide(imagePath, { model: modelDir, out: join(tmp, 'x'), ...striped, stripeWidth: 0 });
    await expect(other).rejects.toThrow(/Expected stripeWidth to be a positive integer but received 0/);
  });

  it('refuses partial work made with other settings, and replaces it without resume', async () => {
    const out = join(tmp, 'mismatch');
    const stopped = await interrupt(out);
    const other = predictSlide(imagePath, { model: modelDir, out, ...settings, overlap: 56, resume: true });
    await expect(other).rejects.toBeInstanceOf(PartialWorkError);
    await expect(other).rejects.toMatchObject({ code: 'E_PARTIAL_WORK', exitCode: 2 });
    await expect(other).rejects.toThrow(
      `Cannot resume from "${stopped.partial}": it was made with overlap 48, but this run has overlap 56.`,
    );
    await expect(other).rejects.toMatchObject({ hint: expect.stringContaining('Drop --resume') });
    expect(JSON.parse(await readFile(join(stopped.partial!, 'journal.json'), 'utf8')).rows).toBe(stopped.rows);

    const fresh = await predictSlide(imagePath, { model: modelDir, out, ...settings, overlap: 56 });
    expect(fresh.run.resumedRows).toBe(0);
    expect(await readdir(out)).not.toContain('.crop.partial');
  });
});
