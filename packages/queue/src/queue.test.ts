import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, writeFile, cp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { predictSlide, quantizeBand, type SlideRegion } from '@tessera/tiler';
import { saveTinyUnet } from '../../tiler/test/tiny-model.mjs';
import { parseQueueUrl, redactUrl } from './connection.js';
import { QueueOptionError } from './errors.js';
import { readRegionFile, writeRegionFile } from './region-files.js';
import { parseShard, shardOf } from './shard.js';
import { queueStatus } from './status.js';
import { MIN_REGIONS, regionTileRows, submitSlides, waitForSlides } from './submit.js';
import { hasRedis, startRedis, type TestRedis } from './test-redis.js';
import { startWorker, type RunningWorker } from './worker.js';

const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../../../shared/data');
const CMU = join(DATA, 'slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs');

describe('queue URLs and shards', () => {
  it('parses redis, rediss and unix URLs and never shows the password', () => {
    expect(parseQueueUrl('redis://localhost:6380/2').redis).toMatchObject({ host: 'localhost', port: 6380, db: 2 });
    const tls = parseQueueUrl('rediss://tessera:s3cr%40t@redis.lab');
    expect(tls.redis).toMatchObject({
      username: 'tessera',
      password: 's3cr@t',
      port: 6379,
      tls: { servername: 'redis.lab' },
    });
    expect(tls.display).toBe('rediss://tessera:***@redis.lab');
    expect(parseQueueUrl('unix:///run/redis.sock').redis.path).toBe('/run/redis.sock');
    expect(redactUrl('redis://:pw@h:1')).toBe('redis://:***@h:1');
    expect(() => parseQueueUrl('http://user:pw@host')).toThrow(QueueOptionError);
    expect(() => parseQueueUrl('http://user:pw@host')).toThrow(/"http:\/\/user:\*\*\*@host".*scheme "http:"/);
    expect(() => parseQueueUrl('redis://h/x')).toThrow(/database "x" is not a number/);
  });

  it('shards a list the same way in every process', () => {
    const slides = ['c.svs', 'a.svs', 'd.svs', 'b.svs', 'e.svs'];
    expect(parseShard('1/2')).toEqual({ index: 1, count: 2 });
    const shards = [0, 1, 2].map((i) => shardOf(slides, { index: i, count: 3 }));
    expect(shards).toEqual([['a.svs', 'd.svs'], ['b.svs', 'e.svs'], ['c.svs']]);
    expect(shards.flat().sort()).toEqual([...slides].sort());
    expect(() => parseShard('2/2')).toThrow(/0 <= i < N.*"2\/2"/);
    expect(() => parseShard('x')).toThrow(QueueOptionError);
  });
});

describe('region sizing', () => {
  const stripe = (width: number, rows: number) => ({ width, plan: { rows } });

  it('cuts about 16 Mpx per region, and a small slide into at least MIN_REGIONS regions of whole tile rows', () => {
    // 3 stripes of 16384 px, 90 tile rows each, 448 kept rows per tile: 16 Mpx is 2 tile rows.
    expect(regionTileRows([stripe(16384, 90), stripe(16384, 90), stripe(7232, 90)], 448)).toBe(2);
    // 8000 px wide, 18 tile rows: 16 Mpx would be 4 rows (5 regions); 16 regions need 1 row each.
    expect(MIN_REGIONS).toBe(16);
    expect(regionTileRows([stripe(8000, 18)], 448)).toBe(1);
    // 40 tile rows: 2 rows per region make 20 regions.
    expect(regionTileRows([stripe(8000, 40)], 448)).toBe(2);
    // A size asked for is kept, however few regions it makes.
    expect(regionTileRows([stripe(8000, 18)], 448, 16e6)).toBe(4);
    expect(regionTileRows([stripe(8000, 18)], 448, 1)).toBe(1);
  });
});

describe('region files', () => {
  it('round-trip, and are not used when damaged or of another run', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tessera-region-'));
    const region: SlideRegion = { index: 3, stripe: 1, x: 100, y: 40, width: 5, height: 4 };
    const band = quantizeBand(
      {
        y: 40,
        x: 100,
        stripe: 1,
        height: 4,
        width: 5,
        labels: Uint8Array.from({ length: 20 }, (_, i) => i % 2),
        probabilities: Float32Array.from({ length: 40 }, (_, i) => (i % 7) / 7),
      },
      2,
      true,
    );
    const file = join(dir, 'r.region');
    const header = {
      run: 'abc',
      region,
      engine: 'cpu',
      tiles: 2,
      timings: { readMs: 1, inferMs: 2, mergeMs: 3, wallMs: 4 },
      host: 'h',
    };
    await writeRegionFile(file, header, [band]);
    const back = await readRegionFile(file, 'abc', region);
    expect(back?.bands[0].labels).toEqual(band.labels);
    expect(back?.bands[0].probabilities[1]).toEqual(band.probabilities[1]);
    expect(await readRegionFile(file, 'other-run', region)).toBeNull();
    const bytes = await readFile(file);
    bytes[bytes.length - 1] ^= 1;
    await writeFile(file, bytes);
    expect(await readRegionFile(file, 'abc', region)).toBeNull();
    expect((await readdir(dir)).filter((n) => n.includes('.tmp'))).toEqual([]);
    await rm(dir, { recursive: true, force: true });
  });
});

describe.skipIf(!hasRedis)('distributed prediction on a real Redis', () => {
  let redis: TestRedis;
  let tmp: string;
  let model: string;
  let slide: string;
  const workers: RunningWorker[] = [];
  const settings = {
    probabilities: true,
    tile: 96,
    batchSize: 3,
    stripeWidth: 300,
    runtime: 'tfjs' as const,
    backend: 'cpu',
    geojson: {},
  };

  beforeAll(async () => {
    redis = await startRedis();
    tmp = await mkdtemp(join(tmpdir(), 'tessera-queue-'));
    model = join(tmp, 'model');
    await saveTinyUnet(model);
    slide = join(tmp, 'crop.tif');
    await sharp(CMU)
      .extract({ left: 900, top: 1200, width: 600, height: 420 })
      .tiff({ tile: true, tileWidth: 128, tileHeight: 128, compression: 'deflate' })
      .toFile(slide);
  });
  afterAll(async () => {
    for (const w of workers) await w.close(true);
    await redis?.stop();
    await rm(tmp, { recursive: true, force: true });
  });

  /** Each worker's log, and how often it prepared each model. */
  const logs: string[][] = [];
  const prepared: Map<string, number>[] = [];
  const start = async () => {
    const log: string[] = [];
    const models = new Map<string, number>();
    const worker = await startWorker({
      target: parseQueueUrl(redis.url),
      allowRoots: [tmp],
      workers: 1,
      log: (line) => log.push(line),
      prepare: async (data) => {
        models.set(data.model, (models.get(data.model) ?? 0) + 1);
        return { backend: 'cpu', plugins: [] };
      },
    });
    workers.push(worker);
    logs.push(log);
    prepared.push(models);
    return worker;
  };

  it('checking the connection leaves nothing that keeps the process alive (a command exits when done)', async () => {
    // The check's timeout timer used to stay pending: every `tessera queue status` waited out the full timeout (10 s)
    // before it exited. A process that checks with a timeout of an hour must exit as soon as the check is done.
    const url = pathToFileURL(join(import.meta.dirname, '../dist/connection.js')).href;
    const script = `const q = await import(${JSON.stringify(url)});
      await q.connect(q.parseQueueUrl(${JSON.stringify(redis.url)}), 3_600_000);
      await q.connect(q.parseQueueUrl('unix://${join(tmp, 'none.sock')}'), 3_600_000).catch((e) => console.log(e.message));`;
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(child.signal, 'still running after 60 s').toBeNull();
    expect(child.status, child.stderr).toBe(0);
    expect(child.stdout.trim()).toMatch(/^Cannot reach the queue at unix:.*none\.sock: [^.]+\.$/);
  });

  it('submitted with no worker running, completes once workers start, with the bytes of a one-machine run', async () => {
    const target = parseQueueUrl(redis.url);
    const out = join(tmp, 'distributed');
    const submitted = await submitSlides(target, [slide], { model, out, settings, regionPixels: 60_000 });
    expect(submitted[0]).toMatchObject({ status: 'new' });
    expect(submitted[0].regions).toBeGreaterThan(3);
    expect((await queueStatus(target)).workers).toEqual([]);
    await start();
    await start();
    const seen: number[] = [];
    const [outcome] = await waitForSlides(target, submitted, { onProgress: (p) => seen.push(p.workers.length) });
    expect(outcome.error).toBeUndefined();
    expect(Math.max(...seen)).toBe(2);
    // Regions were merged into the outputs as they finished: the slide job wrote at most the last few.
    const lines = logs.flat();
    const merged = lines.filter((l) => /region\(s\) merged into the outputs/.test(l));
    expect(merged.length).toBeGreaterThan(0);
    const last = lines.map((l) => /outputs written .* (\d+) of them by the slide job/.exec(l)).find(Boolean);
    expect(Number(last?.[1])).toBeLessThan(submitted[0].regions / 2);
    // A worker prepares a model once (runtime, ONNX file, plugins), however many of its jobs use it.
    const counts = prepared.flatMap((models) => [...models.values()]);
    expect(counts.length).toBeGreaterThan(0);
    expect(counts.every((n) => n === 1)).toBe(true);
    const whole = join(tmp, 'whole');
    await predictSlide(slide, {
      model,
      out: whole,
      tile: 96,
      batchSize: 3,
      stripeWidth: 300,
      backend: 'cpu',
      workers: 1,
      probabilities: true,
      geojson: {},
    });
    const names = (await readdir(whole)).sort();
    expect((await readdir(out)).sort()).toEqual(names);
    for (const name of names) {
      expect((await readFile(join(out, name))).equals(await readFile(join(whole, name))), name).toBe(true);
    }
    // The same slides again: nothing new is added.
    const again = await submitSlides(target, [slide], { model, out, settings, regionPixels: 60_000 });
    expect(again[0]).toMatchObject({ status: 'completed', jobId: submitted[0].jobId });
    const status = await queueStatus(target);
    expect(status.slides.completed).toBe(1);
    expect(status.regions.completed).toBe(submitted[0].regions);
  });

  it('refuses a model that differs from the submitted one, and a path outside the allowed roots', async () => {
    const target = parseQueueUrl(redis.url);
    const other = join(tmp, 'model-b');
    await cp(model, other, { recursive: true });
    const submitted = await submitSlides(target, [slide], { model: other, out: join(tmp, 'out-b'), settings });
    await saveTinyUnet(other, { mpp: 0.5 }); // another version of the model appears under the same path
    const [outcome] = await waitForSlides(target, submitted);
    expect(outcome.error?.message).toMatch(/refuses .*crop\.tif: its model ".*model-b" has checksum/);
    expect(outcome.error?.message).toMatch(/region \d+ \(rows/);
    const outside = await mkdtemp(join(tmpdir(), 'tessera-outside-'));
    const elsewhere = join(outside, 'crop.tif');
    await cp(slide, elsewhere);
    const refused = await submitSlides(target, [elsewhere], { model, out: join(tmp, 'out-c'), settings });
    const [result] = await waitForSlides(target, refused);
    expect(result.error?.message).toMatch(/refuses the slide ".*crop\.tif": it lies outside the folders it may use/);
    await rm(outside, { recursive: true, force: true });
  });
});
