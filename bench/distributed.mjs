#!/usr/bin/env node
/**
 * Distributed prediction on BullMQ and Redis, measured side by side in one run (a real redis-server on a Unix
 * socket, persistence off, stopped at the end):
 *
 * 1. Throughput: one synthetic pyramidal JPEG slide (MoNuSeg H&E tiles, --size px square) predicted by today's
 *    single-process tiler (`tessera predict --workers 2 --threads 1`) and by 2 `tessera worker` processes of 1 tiler
 *    worker x 1 ONNX thread each (`tessera predict --queue`), the same total threads; U-Net depth 3, 8 filters, tile
 *    512, ONNX runtime. Prints both wall times, the throughput ratio, and whether every output but the HTML report is
 *    byte-identical.
 * 2. Queue overhead: --jobs region-sized job payloads (a real job's data) in flows of 100 children, submitted and
 *    processed by workers whose processor does nothing: ms per job of BullMQ's own work (add, fetch, lock, complete,
 *    parent bookkeeping), the jobs per second one Redis sustains, and from it how many worker machines one queue keeps
 *    busy at a given per-worker speed and region size.
 *
 *   node bench/distributed.mjs [--size 8000] [--jobs 10000] [--region-mpx 16] [--worker-mpxs 2.5]
 *     [--region-pixels n] [--worker-logs dir] [--skip throughput|overhead]
 *
 * --region-pixels is passed to `tessera predict --queue` (default: its own region sizing); --worker-logs <dir> keeps
 * what each worker process printed (worker-1.log, worker-2.log).
 */
import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import sharp from 'sharp';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DATA = process.env.TESSERA_DATA ?? join(ROOT, '../shared/data');
const BIN = join(ROOT, 'apps/cli/dist/bin.js');
const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '8000' },
    jobs: { type: 'string', default: '10000' },
    'region-mpx': { type: 'string', default: '16' },
    'worker-mpxs': { type: 'string', default: '2.5' },
    'region-pixels': { type: 'string' },
    'worker-logs': { type: 'string' },
    skip: { type: 'string', default: '' },
  },
});

async function startRedis(dir) {
  const socket = join(dir, 'redis.sock');
  const child = spawn(
    'redis-server',
    ['--port', '0', '--unixsocket', socket, '--dir', dir, '--save', '', '--appendonly', 'no'],
    {
      stdio: 'ignore',
    },
  );
  while (!existsSync(socket)) await new Promise((r) => setTimeout(r, 50));
  return {
    url: `unix://${socket}`,
    socket,
    stop: () => new Promise((r) => (child.once('exit', r), child.kill('SIGTERM'))),
  };
}

async function makeSlide(size, dir) {
  const folder = join(DATA, 'monuseg-train20/images');
  const names = (await readdir(folder)).filter((n) => n.endsWith('.tif')).sort();
  const tiles = [];
  for (const name of names)
    tiles.push(await sharp(join(folder, name)).removeAlpha().resize(1000, 1000).png().toBuffer());
  const composites = [];
  for (let y = 0, k = 0; y < size; y += 1000)
    for (let x = 0; x < size; x += 1000, k++)
      composites.push({ input: tiles[(k * 7) % tiles.length], left: x, top: y });
  const slide = join(dir, `synthetic-${size}.tif`);
  await sharp({ create: { width: size, height: size, channels: 3, background: '#ffffff' }, limitInputPixels: false })
    .composite(composites)
    .tiff({ tile: true, tileWidth: 256, tileHeight: 256, pyramid: true, compression: 'jpeg', quality: 85 })
    .toFile(slide);
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
    createdBy: 'bench/distributed.mjs',
  });
  spawnSync(process.execPath, [BIN, 'export', out, '--format', 'onnx'], { stdio: 'ignore' });
  return out;
}

function run(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) =>
      code === 0 ? resolve(err) : reject(new Error(`tessera ${args[0]} exited ${code}: ${err}`)),
    );
  });
}

async function throughput(dir, redis) {
  const size = Number(values.size);
  const slide = await makeSlide(size, dir);
  const model = await makeModel(dir);
  const flags = ['--model', model, '--tile', '512', '--batch', '4', '--no-tissue', '--runtime', 'onnx'];
  let start = performance.now();
  await run(['predict', slide, '--out', join(dir, 'single'), ...flags, '--workers', '2', '--threads', '1']);
  const single = (performance.now() - start) / 1000;
  const logs = values['worker-logs'];
  const workers = [1, 2].map((i) => {
    const child = spawn(
      process.execPath,
      [BIN, 'worker', '--queue', redis.url, '--allow-root', dir, '--workers', '1', '--threads', '1'],
      { stdio: ['ignore', logs ? 'pipe' : 'ignore', logs ? 'pipe' : 'ignore'] },
    );
    if (logs) {
      const out = createWriteStream(join(logs, `worker-${i}.log`));
      child.stdout.pipe(out);
      child.stderr.pipe(out);
    }
    return child;
  });
  start = performance.now();
  const regionFlags = values['region-pixels'] ? ['--region-pixels', values['region-pixels']] : [];
  await run(['predict', slide, '--out', join(dir, 'queued'), ...flags, '--queue', redis.url, ...regionFlags]);
  const queued = (performance.now() - start) / 1000;
  if (logs) console.log(`   queue done at ${new Date().toISOString()}`);
  for (const w of workers) w.kill('SIGTERM');
  const names = (await readdir(join(dir, 'single'))).filter(
    (n) => (!n.endsWith('.html') && !n.endsWith('.json')) || n.endsWith('_areas.json'),
  );
  const same = [];
  for (const name of names)
    same.push((await readFile(join(dir, 'single', name))).equals(await readFile(join(dir, 'queued', name))));
  const mpx = (size * size) / 1e6;
  console.log(`\n1. ${size} x ${size} slide (${mpx.toFixed(0)} Mpx), U-Net d3/f8, tile 512, ONNX, 2 threads in all`);
  console.log(
    `   single process, 2 tiler workers x 1 thread: ${single.toFixed(1)} s, ${(mpx / single).toFixed(2)} Mpx/s`,
  );
  console.log(
    `   2 worker processes x 1 tiler worker x 1 thread (queue): ${queued.toFixed(1)} s, ${(mpx / queued).toFixed(2)} Mpx/s`,
  );
  console.log(`   throughput ratio queue / single: ${(single / queued).toFixed(3)}`);
  console.log(`   outputs identical: ${same.every(Boolean)} (${names.length} files: ${names.join(', ')})`);
}

async function overhead(redis) {
  const { FlowProducer, Worker, Queue } = await import('bullmq');
  const connection = { path: redis.socket, maxRetriesPerRequest: null };
  const jobs = Number(values.jobs);
  const flows = new FlowProducer({ connection });
  const data = {
    version: 1,
    slide: '/mnt/slides/study/slide-000123.svs',
    slideSha256: 'a'.repeat(64),
    model: '/mnt/models/he-nuclei',
    modelChecksum: 'b'.repeat(64),
    architecture: 'unet',
    out: '/mnt/results/study',
    settings: { probabilities: false, runtime: 'onnx' },
    run: 'c'.repeat(32),
    tileRows: 4,
    regions: 100,
    pixels: 1.6e9,
    submittedFrom: 'submit-host',
  };
  let start = performance.now();
  for (let s = 0; s < jobs / 100; s++) {
    await flows.add({
      name: 'slide',
      queueName: 'bench-slides',
      data,
      opts: { jobId: `slide-${s}` },
      children: Array.from({ length: 100 }, (_, i) => ({
        name: 'region',
        queueName: 'bench-regions',
        data: { ...data, region: { index: i, stripe: 0, x: 0, y: i * 1792, width: 16384, height: 1792 } },
        opts: { jobId: `region-${s}-${i}`, failParentOnFailure: true },
      })),
    });
  }
  const submitMs = performance.now() - start;
  let done = 0;
  start = performance.now();
  const finished = new Promise((resolve) => {
    const workers = [1, 2, 3, 4].map(
      () =>
        new Worker(
          'bench-regions',
          async () => {
            if (++done === jobs) resolve(workers);
            return { ok: 1 };
          },
          { connection, concurrency: 8 },
        ),
    );
  });
  const workers = await finished;
  const processMs = performance.now() - start;
  for (const w of workers) await w.close();
  await flows.close();
  const perJob = (submitMs + processMs) / jobs;
  const jobsPerSecond = jobs / (processMs / 1000);
  const regionMpx = Number(values['region-mpx']);
  const workerMpxs = Number(values['worker-mpxs']);
  const jobsPerWorker = workerMpxs / regionMpx;
  console.log(`\n2. Queue overhead, ${jobs} region jobs in flows of 100 (no-op processor, 4 workers x concurrency 8)`);
  console.log(`   submit: ${(submitMs / jobs).toFixed(3)} ms/job (${(jobs / (submitMs / 1000)).toFixed(0)} jobs/s)`);
  console.log(
    `   process: ${(processMs / jobs).toFixed(3)} ms/job, ${jobsPerSecond.toFixed(0)} jobs/s sustained by one Redis`,
  );
  console.log(`   total BullMQ work: ${perJob.toFixed(3)} ms per region job`);
  console.log(
    `   one queue keeps busy about ${Math.floor(jobsPerSecond / jobsPerWorker)} worker machines at ${workerMpxs} Mpx/s ` +
      `each with ${regionMpx} Mpx regions (${jobsPerWorker.toFixed(3)} jobs/s per worker)`,
  );
  const q = new Queue('bench-regions', { connection });
  await q.obliterate({ force: true });
  await q.close();
}

const dir = await mkdtemp(join(tmpdir(), 'tessera-bench-distributed-'));
const redis = await startRedis(dir);
try {
  if (!values.skip.includes('throughput')) await throughput(dir, redis);
  if (!values.skip.includes('overhead')) await overhead(redis);
} finally {
  await redis.stop();
  await rm(dir, { recursive: true, force: true });
}
