/**
 * Distributed prediction through the real command, on a real `redis-server` (Debian's; `.ci/run` installs it): worker
 * processes, `tessera predict --queue`, and the faults a production queue meets. Each test compares the outputs with
 * an undisturbed one-machine `tessera predict` of the same slide.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NUCLEUS_CLASSES, saveTinyUnet } from '../../../packages/tiler/test/tiny-model.mjs';
import { hasRedis, startRedis, type TestRedis } from '../../../packages/queue/src/test-redis.js';
import { writeTiledTiff } from '../../../packages/tiler/test/tiff-writer.mjs';
import { BIN, tessera } from './test-helpers.js';

const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../../../shared/data');
const CMU = join(DATA, 'slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs');

let root: string;
let model: string;
let slide: string;
let reference: string;
const workers: ChildProcess[] = [];
const servers: TestRedis[] = [];

async function saveModelHere(dir: string) {
  await saveTinyUnet(dir, { classes: NUCLEUS_CLASSES, tileSize: 128, seed: 3, createdBy: 'cli queue test' });
}

/** The common prediction flags: small tiles and regions, so a slide has many region jobs. */
const FLAGS = ['--tile', '128', '--batch', '2', '--probabilities', '--geojson', '--no-tissue'];

function startWorker(url: string, extra: string[] = []): ChildProcess {
  const child = spawn(
    process.execPath,
    [
      BIN,
      'worker',
      '--queue',
      url,
      '--allow-root',
      root,
      '--allow-root',
      DATA,
      '--workers',
      '1',
      '--threads',
      '1',
      '--lock-duration',
      '3000',
      '--stalled-interval',
      '1000',
      ...extra,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  child.stdout!.resume();
  child.stderr!.resume();
  workers.push(child);
  return child;
}

function predictQueued(url: string, inputs: string[], out: string, extra: string[] = []) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [
      BIN,
      'predict',
      ...inputs,
      '--model',
      model,
      '--out',
      out,
      '--queue',
      url,
      '--region-pixels',
      '60000',
      ...FLAGS,
      '--json',
      ...extra,
    ]);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

async function status(url: string) {
  return JSON.parse(tessera(['queue', 'status', '--queue', url, '--json']).stdout);
}

async function until(check: () => Promise<boolean>, ms: number, what: string) {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function expectSameOutputs(dir: string, expected = reference) {
  const names = (await readdir(expected)).filter((n) => !n.endsWith('.html') && !n.endsWith('.resolved.json'));
  expect(names.length).toBe(7);
  for (const name of names) {
    expect((await readFile(join(dir, name))).equals(await readFile(join(expected, name))), name).toBe(true);
  }
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'tessera-cli-queue-'));
  model = join(root, 'model');
  await saveModelHere(model);
  slide = join(root, 'slide.tif');
  await sharp(CMU)
    .extract({ left: 700, top: 900, width: 720, height: 640 })
    .tiff({ tile: true, tileWidth: 128, tileHeight: 128, compression: 'jpeg', quality: 90 })
    .toFile(slide);
  reference = join(root, 'reference');
  const one = tessera([
    'predict',
    slide,
    '--model',
    model,
    '--out',
    reference,
    ...FLAGS,
    '--workers',
    '1',
    '--threads',
    '1',
  ]);
  expect(one.code, one.stderr).toBe(0);
}, 300_000);

afterAll(async () => {
  for (const w of workers) w.kill('SIGKILL');
  for (const s of servers) await s.stop();
  await rm(root, { recursive: true, force: true });
});

describe.skipIf(!hasRedis)('tessera predict --queue with tessera worker', () => {
  it('a worker killed with SIGKILL mid-region: its job stalls, another worker finishes it, outputs unchanged', async () => {
    const redis = await startRedis();
    servers.push(redis);
    const first = startWorker(redis.url);
    let log = '';
    first.stderr!.on('data', (d) => (log += d));
    const out = join(root, 'killed');
    const run = predictQueued(redis.url, [slide], out);
    // Killed while it computes its second region (the first one loads the model).
    await until(async () => (log.match(/: started/g) ?? []).length >= 2, 240_000, 'a second region to start');
    first.kill('SIGKILL');
    const second = startWorker(redis.url);
    let secondLog = '';
    second.stderr!.on('data', (d) => (secondLog += d));
    const result = await run;
    expect(result.code, result.stderr).toBe(0);
    await expectSameOutputs(out);
    // SIGTERM: the worker finishes what it holds (nothing now) and exits 0.
    const exited = new Promise<number | null>((resolve) => second.once('exit', resolve));
    second.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(secondLog).toMatch(/SIGTERM: finishing the active jobs, then stopping/);
    const after = await status(redis.url);
    expect(after.regions.failed).toBe(0);
    expect(after.regions.completed).toBeGreaterThan(3);
  });

  it('Redis restarted mid-run (AOF on): workers reconnect and the run completes with the same outputs', async () => {
    const redis = await startRedis({ aof: true });
    servers.push(redis);
    startWorker(redis.url);
    const out = join(root, 'restarted');
    const run = predictQueued(redis.url, [slide], out);
    await until(async () => (await status(redis.url)).regions.completed > 1, 90_000, 'two regions');
    await redis.restart(true);
    const result = await run;
    expect(result.code, result.stderr).toBe(0);
    await expectSameOutputs(out);
  });

  it('a region that fails every attempt fails its slide, naming the slide, region and cause; others complete', async () => {
    const redis = await startRedis();
    servers.push(redis);
    startWorker(redis.url);
    // A JPEG TIFF whose tile (2, 1) holds garbage: the reads of every region that reaches it fail.
    const good = await sharp(CMU).extract({ left: 0, top: 0, width: 128, height: 128 }).jpeg().toBuffer();
    const tiles = Array.from({ length: 16 }, (_, i) => (i === 6 ? Buffer.alloc(good.length, 0x5a) : good));
    const broken = join(root, 'broken.tif');
    writeTiledTiff(broken, [
      { width: 512, height: 512, tileWidth: 128, tileHeight: 128, tiles, compression: 7, photometric: 6 },
    ]);
    const out = join(root, 'mixed');
    const result = await predictQueued(redis.url, [broken, slide], out);
    expect(result.code).toBe(5);
    expect(result.stderr).toMatch(
      /broken\.tif failed: region \d+ \(rows \d+-\d+ of stripe 0\): .*level 0 region .* could not be decoded/,
    );
    const records = JSON.parse(result.stdout).outputs;
    expect(records.find((r: { input: string }) => r.input.endsWith('broken.tif')).error).toMatch(/region/);
    await expectSameOutputs(out);
    expect((await readdir(out)).filter((n) => n.startsWith('broken_'))).toEqual([]);
  });

  it('submitting again does nothing new; --detach returns at once; queue status, retry and clean', async () => {
    const redis = await startRedis();
    servers.push(redis);
    const out = join(root, 'detached');
    const detached = await predictQueued(redis.url, [slide], out, ['--detach']);
    expect(detached.code, detached.stderr).toBe(0);
    expect(detached.stderr).toMatch(/submitted as slide-[0-9a-f]+ \(\d+ regions\)/);
    const again = await predictQueued(redis.url, [slide], out, ['--detach']);
    expect(again.stderr).toMatch(/already queued as slide-/);
    const waiting = await status(redis.url);
    expect(waiting.workers).toEqual([]);
    expect(waiting.running[0].regions).toBeGreaterThan(3);
    startWorker(redis.url);
    const waited = await predictQueued(redis.url, [slide], out);
    expect(waited.code, waited.stderr).toBe(0);
    await expectSameOutputs(out);
    const done = await predictQueued(redis.url, [slide], out, ['--detach']);
    expect(done.stderr).toMatch(/already done as slide-/);
    expect(tessera(['queue', 'retry', '--queue', redis.url]).stdout).toMatch(/re-queued 0 failed region/);
    expect(tessera(['queue', 'clean', '--queue', redis.url]).stdout).toMatch(/removed \d+ finished job/);
    expect((await status(redis.url)).slides.completed).toBe(0);
  });

  it('--precision int8: workers run model.int8.onnx, same bits as one machine; a worker with another int8 file refuses', async () => {
    // An int8 copy of the model, calibrated on a crop of the CMU slide.
    const int8Model = join(root, 'int8-model');
    await saveTinyUnet(int8Model, { classes: NUCLEUS_CLASSES, tileSize: 128, seed: 3, createdBy: 'cli queue test' });
    const calibration = join(root, 'calibration');
    await mkdir(calibration, { recursive: true });
    await sharp(CMU).extract({ left: 0, top: 0, width: 256, height: 256 }).png().toFile(join(calibration, 'c.png'));
    const quantize = (method: string) =>
      tessera([
        ...['export', int8Model, '--format', 'onnx', '--quantize', 'int8', '--calibration', calibration],
        ...['--calibration-method', method, '--force'],
      ]);
    expect(quantize('percentile').code).toBe(0);
    const flags = ['--model', int8Model, ...FLAGS, '--precision', 'int8'];
    const local = join(root, 'int8-reference');
    const one = tessera(['predict', slide, '--out', local, ...flags, '--workers', '1', '--threads', '1']);
    expect(one.code, one.stderr).toBe(0);

    const redis = await startRedis();
    servers.push(redis);
    const worker = startWorker(redis.url);
    const run = (out: string, extra: string[] = []) =>
      predictQueued(redis.url, [slide], out, ['--model', int8Model, '--precision', 'int8', ...extra]);
    const queued = await run(join(root, 'int8-queued'));
    expect(queued.code, queued.stderr).toBe(0);
    await expectSameOutputs(join(root, 'int8-queued'), local);
    const exited = new Promise((resolve) => worker.once('exit', resolve));
    worker.kill('SIGTERM');
    await exited;

    // Submitted for this int8 file; the workers find another calibration's file: the slide fails, saying why.
    const detached = await run(join(root, 'int8-other'), ['--detach']);
    expect(detached.code, detached.stderr).toBe(0);
    expect(quantize('minmax').code).toBe(0);
    const refusing = startWorker(redis.url);
    let log = '';
    refusing.stderr!.on('data', (d) => (log += d));
    const refusal = /model\.int8\.onnx has SHA-256 \w{12}… but the job was submitted for the int8 model \w{12}…/;
    // The worker's log line and the failed state arrive by different paths: wait for both.
    await until(async () => refusal.test(log), 120_000, 'the worker to refuse the int8 job');
    await until(async () => (await status(redis.url)).slides.failed > 0, 120_000, 'the int8 slide to fail');
  });

  it('a worker refuses paths outside its --allow-root, and bad queue URLs are exit 2 without a password shown', async () => {
    const bad = tessera(['queue', 'status', '--queue', 'http://user:secret@host']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).not.toMatch(/secret/);
    const unreachable = tessera(['queue', 'status', '--queue', `unix://${join(root, 'none.sock')}`]);
    expect(unreachable.code).toBe(11);
    expect(unreachable.stderr).toMatch(/Cannot reach the queue at unix:/);
    const worker = tessera(['worker', '--queue', 'redis://localhost:1']);
    expect(worker.code).toBe(2);
    expect(worker.stderr).toMatch(/at least one --allow-root/);
  });
});

describe('tessera predict --shard', () => {
  it('predicts the i-th of N shards of the sorted inputs', async () => {
    const dir = join(root, 'many');
    await mkdir(dir, { recursive: true });
    for (const name of ['c', 'a', 'b']) {
      await sharp(CMU)
        .extract({ left: 0, top: 0, width: 64, height: 64 })
        .png()
        .toFile(join(dir, `${name}.png`));
    }
    const out = join(root, 'shard');
    const result = tessera(['predict', dir, '--model', model, '--out', out, '--shard', '1/2', '--json']);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/shard 1\/2: 1 of 3 input\(s\)/);
    expect(JSON.parse(result.stdout).outputs.map((o: { input: string }) => o.input.split('/').pop())).toEqual([
      'b.png',
    ]);
    expect(tessera(['predict', dir, '--model', model, '--out', out, '--shard', '2/2']).code).toBe(2);
  });
});
