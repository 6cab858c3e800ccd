/**
 * Test fixture: real predictions of the shared CMU-1-Small-Region SVS (and one QuPath OME-TIFF crop, so that the
 * folder lists two slides) by a tiny untrained U-Net, made by the tiler exactly as `tessera predict` makes them
 * (label pyramid, probability pyramids, areas, GeoJSON, `predict.resolved.json`). Made once per checkout, data
 * folder and fixture version in the system's temporary folder, and shared by the test files (which run in parallel
 * processes).
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { saveTinyUnet } from '../../tiler/test/tiny-model.mjs';
import { exportModelDir } from '@tessera/onnx';
import { predictSlide } from '@tessera/tiler';

export const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../../../shared/data');
export const CMU = join(DATA, 'slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs');
export const OME = join(DATA, 'slides/wsi-qupath-ome-tiff/OS-1-detail.ome.tif');

/** Bump when what the fixture makes changes. */
const VERSION = 2;

export interface Fixture {
  root: string;
  model: string;
  onnx: string;
  predictions: string;
}

async function make(root: string): Promise<void> {
  const model = join(root, 'model');
  const predictions = join(root, 'predictions');
  await saveTinyUnet(model, { tileSize: 256, seed: 1, createdBy: 'viewer test' });
  const { path: onnx } = await exportModelDir(model);
  await predictSlide(CMU, {
    model,
    out: predictions,
    workers: 2,
    batchSize: 2,
    probabilities: true,
    geojson: { objectType: 'detection' },
    onnx: { file: onnx, threads: 1 },
  });
  await predictSlide(OME, { model, out: predictions, workers: 1, batchSize: 2, onnx: { file: onnx, threads: 2 } });
  // As `tessera predict` records its run.
  await writeFile(
    join(predictions, 'predict.resolved.json'),
    JSON.stringify({ command: 'predict', model, inputs: [CMU, OME], wholeSlides: 2, out: predictions }, null, 2),
  );
}

/** The fixture, made now if no earlier test run left it (waits for a parallel process that is making it). */
export async function predictionsFixture(): Promise<Fixture> {
  // One fixture per checkout and data folder: predictions record the slide paths they were made from.
  const key = createHash('sha256')
    .update(`${import.meta.dirname}\0${DATA}`)
    .digest('hex')
    .slice(0, 12);
  const root = join(tmpdir(), `tessera-viewer-fixture-v${VERSION}-${key}`);
  const done = join(root, 'done');
  const fixture = {
    root,
    model: join(root, 'model'),
    onnx: join(root, 'model', 'model.onnx'),
    predictions: join(root, 'predictions'),
  };
  if (existsSync(done)) return fixture;
  const lock = `${root}.lock`;
  let owner = false;
  try {
    await mkdir(lock);
    owner = true;
  } catch {
    // another process is making it
  }
  if (owner) {
    try {
      await rm(root, { recursive: true, force: true });
      await make(root);
      await writeFile(done, '');
    } finally {
      await rm(lock, { recursive: true, force: true });
    }
  } else {
    const started = Date.now();
    while (!existsSync(done)) {
      if (Date.now() - started > 600_000) throw new Error(`waited 10 minutes for ${root} to be made`);
      if (!existsSync(lock) && !existsSync(done)) return predictionsFixture();
      // A lock left by a process that died while making the fixture: take it over.
      const age = await stat(lock).then(
        (s) => Date.now() - s.mtimeMs,
        () => 0,
      );
      if (age > 180_000) {
        await rm(lock, { recursive: true, force: true });
        return predictionsFixture();
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  return fixture;
}
