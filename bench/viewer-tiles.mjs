#!/usr/bin/env node
/**
 * Tile latency of `tessera view` on the shared CMU-1-Small-Region SVS: every 256 x 256 Deep Zoom tile of several
 * levels, slide tiles (JPEG from the SVS through the tiler's reader) and overlay tiles (PNG from the label pyramid of
 * `tessera predict`), each asked for twice over HTTP, one request at a time: cold (made on demand) and cached. Prints
 * p50 and p95 per level and layer. The predictions are made first by a tiny untrained U-Net (ONNX runtime), or
 * given with --predictions (a `tessera predict --out` folder of the CMU slide).
 *
 *   npm run build && node bench/viewer-tiles.mjs [--predictions dir] [--levels 12,11,10,9]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { saveTinyUnet } from '../packages/tiler/test/tiny-model.mjs';
import { exportModelDir } from '../packages/onnx/dist/index.js';
import { predictSlide } from '../packages/tiler/dist/index.js';
import { deepZoom, levelTiles, startViewer } from '../packages/viewer/dist/index.js';

const { values } = parseArgs({
  options: { predictions: { type: 'string' }, levels: { type: 'string', default: '12,11,10,9,8' } },
});
const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../shared/data');
const CMU = join(DATA, 'slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs');
const LEVELS = values.levels.split(',').map(Number);

async function makePredictions(dir) {
  const model = join(dir, 'model');
  await saveTinyUnet(model, { tileSize: 256, seed: 1, createdBy: 'viewer bench' });
  const { path } = await exportModelDir(model);
  const out = join(dir, 'predictions');
  await predictSlide(CMU, { model, out, workers: 2, batchSize: 2, onnx: { file: path, threads: 1 } });
  return out;
}

function get(port, path) {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    request({ host: '127.0.0.1', port, path }, (res) => {
      let bytes = 0;
      res.on('data', (c) => (bytes += c.length));
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`${path}: HTTP ${res.statusCode}`));
        else resolve({ ms: performance.now() - started, bytes });
      });
    })
      .on('error', reject)
      .end();
  });
}

const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];

const dir = mkdtempSync(join(tmpdir(), 'tessera-viewer-bench-'));
try {
  const predictions = values.predictions ?? (await makePredictions(dir));
  const viewer = await startViewer({ slide: CMU, predictions });
  const dz = deepZoom(2220, 2967);
  const rows = [];
  for (const [layer, ext] of [
    ['image', 'jpeg'],
    ['labels', 'png'],
  ]) {
    for (const level of LEVELS) {
      const { columns, rows: r } = levelTiles(dz, level);
      const paths = [];
      for (let row = 0; row < r; row++)
        for (let column = 0; column < columns; column++) {
          paths.push(`/slides/0/${layer}_files/${level}/${column}_${row}.${ext}`);
        }
      const cold = [];
      const cached = [];
      let bytes = 0;
      for (const p of paths) {
        const first = await get(viewer.port, p);
        cold.push(first.ms);
        bytes += first.bytes;
      }
      for (const p of paths) cached.push((await get(viewer.port, p)).ms);
      cold.sort((a, b) => a - b);
      cached.sort((a, b) => a - b);
      rows.push({
        layer: layer === 'image' ? 'slide (JPEG)' : 'overlay (PNG)',
        level,
        downsample: 2 ** (dz.maxLevel - level),
        tiles: paths.length,
        'cold p50 ms': quantile(cold, 0.5).toFixed(1),
        'cold p95 ms': quantile(cold, 0.95).toFixed(1),
        'cached p50 ms': quantile(cached, 0.5).toFixed(2),
        'cached p95 ms': quantile(cached, 0.95).toFixed(2),
        'mean KB': (bytes / paths.length / 1024).toFixed(1),
      });
    }
  }
  console.log(`CMU-1-Small-Region.svs (2220 x 2967, one level, 240 px JPEG tiles); Deep Zoom 254 + 1 px overlap`);
  console.table(rows);
  const stats = viewer.stats();
  console.log(`tile cache: ${stats.entries} tiles, ${(stats.bytes / 1e6).toFixed(1)} MB, ${stats.hits} hits`);
  await viewer.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
