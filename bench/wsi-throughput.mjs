#!/usr/bin/env node
// Whole-slide prediction throughput of @tessera/tiler on a synthetic pyramidal JPEG TIFF made here from real H&E
// tiles (MoNuSeg, ../shared/data/monuseg-train20/images, repeated with mirroring).
//
//   node bench/wsi-throughput.mjs                     # 40000 x 40000 and 20000 x 20000, 1 and 2 workers
//   node bench/wsi-throughput.mjs --sizes 3000,6000   # quick check
//   options: --sizes a,b  --workers 1,2  --tile 512  --batch 4  --inflight <batches>  --runtime onnx|tfjs
//            --backend wasm  --model <dir>  --keep
//            --malloc cli|default
//
// Runtime: onnx (default; onnxruntime-node, the model exported to <model>/model.onnx first, threads per worker =
// cores / workers) or tfjs (--backend). The default model is an untrained U-Net (depth 3, 8 base filters): the
// benchmark measures the tiler, and a small network makes the share of time outside inference harder to keep low.
//
// Needs `npm run build` first, and size^2 * 3 bytes of free temporary disk for the raw canvas (4.8 GB at 40000).
// Each (size, workers) run happens in a child process so its peak RSS (process.resourceUsage().maxRSS, all threads)
// is its own. Prints one JSON line per run and a table: Mpx/s, peak RSS, share of wall time outside inference
// (reading, decoding, blending, writing, idle) = 1 - (inference time summed over workers / workers) / wall time.
// Also the highest RSS sampled while tiles are predicted and while outputs are written (rssPredictingMB,
// rssWritingMB), and the main thread's peak JS heap and ArrayBuffers (mainHeapMB, mainArrayBuffersMB), every 100 ms.
// A size WxH (e.g. 32000x8000) makes a rectangular slide: same area, another width, to tell width from area.
// On glibc the runs get the malloc settings `tessera predict` runs with (--malloc cli, the default: a fixed mmap
// threshold unless the environment sets one, see apps/cli/src/allocator.ts); --malloc default leaves the environment
// as it is (glibc's adjusting threshold unless set), as in a process that calls the tiler as a library.
import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DATA = process.env.TESSERA_DATA ?? join(ROOT, '../shared/data');

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

/** Writes an N x N RGB canvas of mirrored H&E tiles row band by row band, then a tiled pyramidal JPEG TIFF. */
async function makeSlide(size, dir) {
  const [width, height] = String(size)
    .split('x')
    .map(Number)
    .concat(Number(String(size).split('x')[0]))
    .slice(0, 2);
  const { VipsFileWriter } = await import('@tessera/tiler');
  const folder = join(DATA, 'monuseg-train20/images');
  const names = (await readdir(folder)).filter((n) => n.endsWith('.tif')).sort();
  const tiles = [];
  for (const name of names)
    tiles.push(await sharp(join(folder, name)).removeAlpha().resize(1000, 1000).raw().toBuffer());
  const raw = join(dir, `canvas-${size}.v`);
  const writer = new VipsFileWriter(raw, width, height, 3, 1000 / 0.5);
  const band = Buffer.alloc(1000 * width * 3);
  for (let y0 = 0; y0 < height; y0 += 1000) {
    const rows = Math.min(1000, height - y0);
    for (let x0 = 0, k = 0; x0 < width; x0 += 1000, k++) {
      const tile = tiles[(k * 7 + (y0 / 1000) * 3) % tiles.length];
      const cols = Math.min(1000, width - x0);
      for (let r = 0; r < rows; r++) tile.copy(band, (r * width + x0) * 3, r * 3000, r * 3000 + cols * 3);
    }
    writer.append(band.subarray(0, rows * width * 3));
  }
  writer.close();
  const slide = join(dir, `synthetic-${size}.tif`);
  const start = performance.now();
  await sharp(raw, { limitInputPixels: false })
    .tiff({ tile: true, tileWidth: 256, tileHeight: 256, pyramid: true, compression: 'jpeg', quality: 85 })
    .toFile(slide);
  await rm(raw);
  console.error(`made ${slide} in ${((performance.now() - start) / 1000).toFixed(1)} s`);
  return slide;
}

async function makeModel(dir) {
  const { NUCLEUS_CLASSES, saveTinyUnet } = await import('../packages/tiler/test/tiny-model.mjs');
  const out = join(dir, 'model');
  await saveTinyUnet(out, {
    depth: 3,
    baseFilters: 8,
    classes: NUCLEUS_CLASSES,
    tileSize: 512,
    seed: 1,
    createdBy: 'bench/wsi-throughput.mjs',
  });
  return out;
}

async function child() {
  const { predictSlide } = await import('@tessera/tiler');
  const [slide, model, out, workers] = [arg('slide'), arg('model'), arg('out'), Number(arg('workers'))];
  // RSS sampled while tiles are predicted and while the outputs are written, to tell the two phases apart.
  const rss = { predicting: 0, writing: 0 };
  const main = { heapUsed: 0, arrayBuffers: 0 };
  let phase = 'predicting';
  const sampler = setInterval(() => {
    const m = process.memoryUsage();
    rss[phase] = Math.max(rss[phase], m.rss);
    main.heapUsed = Math.max(main.heapUsed, m.heapUsed);
    main.arrayBuffers = Math.max(main.arrayBuffers, m.arrayBuffers);
  }, 100);
  const { run } = await predictSlide(slide, {
    onProgress: (p) => {
      if (p.tilesDone === p.tilesTotal) phase = 'writing';
    },
    model,
    out,
    workers,
    tile: Number(arg('tile', '512')),
    batchSize: Number(arg('batch', '4')),
    backend: arg('backend'),
    tissue: false,
    maxInFlight: arg('inflight') ? Number(arg('inflight')) : undefined,
    onnx: arg('runtime', 'onnx') === 'onnx' ? { file: join(model, 'model.onnx') } : undefined,
  });
  clearInterval(sampler);
  const wall = run.timings.wallMs;
  const result = {
    size: run.width === run.height ? run.width : `${run.width}x${run.height}`,
    workers,
    engine: run.engine,
    tiles: run.tilesPredicted,
    wallSeconds: +(wall / 1000).toFixed(2),
    mpxPerSecond: +((run.width * run.height) / 1e6 / (wall / 1000)).toFixed(3),
    peakRssMB: Math.round(process.resourceUsage().maxRSS / 1024),
    rssPredictingMB: Math.round(rss.predicting / 1e6),
    rssWritingMB: Math.round(rss.writing / 1e6),
    mainHeapMB: Math.round(main.heapUsed / 1e6),
    mainArrayBuffersMB: Math.round(main.arrayBuffers / 1e6),
    peakMergerRows: run.peakRows,
    outsideInference: +(1 - run.timings.inferMs / workers / wall).toFixed(3),
    readSecondsAllWorkers: +(run.timings.readMs / 1000).toFixed(2),
    mergeSeconds: +(run.timings.mergeMs / 1000).toFixed(2),
  };
  process.stdout.write(JSON.stringify(result) + '\n');
}

async function main() {
  const sizes = arg('sizes', '40000,20000').split(',');
  const workerCounts = arg('workers', '1,2').split(',').map(Number);
  const malloc = arg('malloc', 'cli');
  if (malloc !== 'cli' && malloc !== 'default') throw new Error(`--malloc: expected cli or default, not ${malloc}`);
  const { MALLOC_SETTINGS } = await import('@tessera/cli');
  const env = malloc === 'cli' ? { ...MALLOC_SETTINGS, ...process.env } : process.env;
  const dir = await mkdtemp(join(tmpdir(), 'tessera-bench-'));
  try {
    const model = arg('model') ?? (await makeModel(dir));
    if (arg('runtime', 'onnx') === 'onnx') {
      const { setupEngine } = await import('@tessera/core');
      const { exportModelDir } = await import('@tessera/onnx');
      await setupEngine('cpu');
      await exportModelDir(model);
    }
    const results = [];
    for (const size of sizes) {
      const slide = await makeSlide(size, dir);
      for (const workers of workerCounts) {
        const out = join(dir, `out-${size}-${workers}`);
        const passed = ['tile', 'batch', 'inflight', 'backend', 'runtime'].flatMap((k) =>
          arg(k) ? [`--${k}`, arg(k)] : [],
        );
        const args = [fileURLToPath(import.meta.url), '--child', '--slide', slide, '--model', model, '--out', out];
        const res = spawnSync(process.execPath, [...args, '--workers', String(workers), ...passed], {
          encoding: 'utf8',
          stdio: ['ignore', 'pipe', 'inherit'],
          env,
        });
        if (res.status !== 0) throw new Error(`run size ${size} workers ${workers} failed (${res.status})`);
        const result = { ...JSON.parse(res.stdout.trim().split('\n').pop()), malloc };
        console.log(JSON.stringify(result));
        results.push(result);
        await rm(out, { recursive: true, force: true });
      }
      await rm(slide);
    }
    console.table(results);
  } finally {
    if (!process.argv.includes('--keep')) await rm(dir, { recursive: true, force: true });
  }
}

await (process.argv.includes('--child') ? child() : main());
