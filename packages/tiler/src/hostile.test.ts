import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidInputError } from '@tessera/core';
import { makeCorpus } from '../test/fuzz/corpus.mjs';
import { REGRESSIONS } from '../test/fuzz/regressions.mjs';
import { buildTiledTiff, toBigEndian } from '../test/fuzz/tiff-layout.mjs';
import { GENERATORS, mutate, randomGenerator } from '../test/fuzz/mutate.mjs';
import { SlideFormatError } from './errors.js';
import { openSlide, readRegion, readThumbnail, verifySlide } from './slide.js';
import { DEFAULT_MAX_SLIDE_PIXELS, maxSlidePixels } from './tiff-structure.js';

type Seed = { name: string; ext: string; bytes: Buffer };
let seeds: Seed[];
let tmp: string;

beforeAll(async () => {
  seeds = (await makeCorpus()) as Seed[];
  tmp = await mkdtemp(join(tmpdir(), 'tessera-hostile-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** Everything `tessera info` and `predict` do with a slide before predicting: structure, one tile, thumbnail. */
async function readAll(path: string) {
  const slide = await openSlide(path);
  await verifySlide(slide);
  await readThumbnail(slide, 1024);
  return slide;
}

describe('hostile slides: fixed regression cases', () => {
  it.each(REGRESSIONS.map((r) => [r.name, r] as const))('%s', async (_name, regression) => {
    const { ext, bytes } = regression.build(seeds);
    const path = join(tmp, `regression-${REGRESSIONS.indexOf(regression)}${ext}`);
    await writeFile(path, bytes);
    const started = performance.now();
    const error = await readAll(path).then(
      () => null,
      (e: unknown) => e,
    );
    expect(performance.now() - started).toBeLessThan(10_000);
    if (regression.read) {
      // A damaged attribute that is not needed: read as absent.
      expect(error).toBeNull();
      return;
    }
    expect(error, 'refused').toBeInstanceOf(SlideFormatError);
    expect(error).toBeInstanceOf(InvalidInputError);
    expect((error as SlideFormatError).exitCode).toBe(5);
    expect((error as Error).message).toContain(path);
    expect((error as Error).message).toMatch(regression.message);
  });
});

describe('the structure reader', () => {
  it('reads big-endian and BigTIFF copies of the seeds as their originals, pixel for pixel', async () => {
    for (const name of ['derived/jpeg-pyramid.tif', 'derived/bigtiff-deflate.tif', 'small.svs']) {
      const seed = seeds.find((s) => s.name.endsWith(name))!;
      const le = join(tmp, `le-${name.replace(/\W/g, '_')}${seed.ext}`);
      const be = join(tmp, `be-${name.replace(/\W/g, '_')}${seed.ext}`);
      await writeFile(le, seed.bytes);
      await writeFile(be, toBigEndian(seed.bytes)!);
      const [a, b] = [await readAll(le), await readAll(be)];
      expect(b.levels.map((l) => [l.width, l.height, l.tileWidth, l.compression])).toEqual(
        a.levels.map((l) => [l.width, l.height, l.tileWidth, l.compression]),
      );
      expect(a.levels.length).toBeGreaterThanOrEqual(name === 'small.svs' ? 1 : 3);
      const last = a.levels.length - 1;
      const region = { x: 0, y: 0, width: a.levels[last].width, height: a.levels[last].height };
      const pixelsA = await readRegion(a, region, { level: last });
      const pixelsB = await readRegion(b, region, { level: last });
      expect(Buffer.from(pixelsB.data).equals(Buffer.from(pixelsA.data))).toBe(true);
    }
  });

  it('limits the pixels of a level, by option or TESSERA_MAX_SLIDE_PIXELS, and says how to raise it', async () => {
    const seed = seeds.find((s) => s.name.endsWith('boxes.tiff'))!;
    const path = join(tmp, 'limit.tiff');
    await writeFile(path, seed.bytes);
    const refused = await openSlide(path, { maxPixels: 300 * 249 }).catch((e: unknown) => e as SlideFormatError);
    expect(refused.message).toMatch(/level 0 declares 300 x 250 px \(0\.1 megapixels\), more than the limit of 0\.1/);
    expect(refused.hint).toMatch(/raise the limit with the environment variable TESSERA_MAX_SLIDE_PIXELS/);
    expect(refused.exitCode).toBe(5);
    await expect(openSlide(path, { maxPixels: 300 * 250 })).resolves.toMatchObject({ width: 300 });
    expect(maxSlidePixels()).toBe(DEFAULT_MAX_SLIDE_PIXELS);
    process.env.TESSERA_MAX_SLIDE_PIXELS = '1000';
    try {
      expect(maxSlidePixels()).toBe(1000);
      const error = await openSlide(path).catch((e: unknown) => e as SlideFormatError);
      expect(error).toBeInstanceOf(SlideFormatError);
      expect(error.hint).toMatch(/TESSERA_MAX_SLIDE_PIXELS=1000000000/);
    } finally {
      delete process.env.TESSERA_MAX_SLIDE_PIXELS;
    }
  });

  it('accepts a large slide whose tiles hold data, and refuses the same geometry pointing at one tile', async () => {
    // 16384 x 16384 px in 256 px tiles, each tile its own 2 kB: 65 pixels per stored byte, a plausible slide.
    const tile = Buffer.alloc(2048, 7);
    const honest = buildTiledTiff({ width: 16384, height: 16384, tile, compression: 8 });
    // buildTiledTiff shares the tile; give each entry its own copy for the honest file.
    const n = 64 * 64;
    const ifdEnd = honest.length;
    const copies = Buffer.concat([honest, Buffer.alloc(n * tile.length, 7)]);
    const offsetsAt = copies.indexOf(Buffer.from([0x44, 0x01, 0x04, 0x00])); // tag 324, type LONG
    const table = copies.readUInt32LE(offsetsAt + 8);
    for (let i = 0; i < n; i++) copies.writeUInt32LE(ifdEnd + i * tile.length, table + 4 * i);
    const good = join(tmp, 'honest.tif');
    await writeFile(good, copies);
    const slide = await openSlide(good);
    expect(slide.levels[0]).toMatchObject({ width: 16384, height: 16384, tileWidth: 256 });
    const bomb = join(tmp, 'bomb.tif');
    await writeFile(bomb, honest);
    await expect(openSlide(bomb)).rejects.toThrow(
      /4096 stored tiles point at 1 distinct offset\(s\) holding 2048 bytes/,
    );
  });
});

describe('hostile slides: a short seeded mutation run in-process', () => {
  it('gives a slide or a SlideFormatError for 150 mutated seeds, each within 10 s', async () => {
    const outcomes = { ok: 0, refused: 0 };
    for (let i = 0; i < 150; i++) {
      const rng = randomGenerator(1000 + i);
      const made =
        i % 25 === 0
          ? GENERATORS[rng.pick(Object.keys(GENERATORS)) as keyof typeof GENERATORS](rng, seeds)
          : (() => {
              const source = rng.pick(seeds);
              return { ext: source.ext, ...mutate(source.bytes, rng) };
            })();
      const path = join(tmp, `m-${i}${made.ext}`);
      await writeFile(path, made.bytes);
      const started = performance.now();
      const error = await readAll(path).then(
        () => null,
        (e: unknown) => e,
      );
      expect(performance.now() - started, `case ${i}`).toBeLessThan(10_000);
      if (error) {
        expect(error, `case ${i}: ${String(error)}`).toBeInstanceOf(InvalidInputError);
        expect((error as SlideFormatError).exitCode, `case ${i}`).toBe(5);
        outcomes.refused++;
      } else outcomes.ok++;
      await rm(path);
    }
    expect(outcomes.refused).toBeGreaterThan(30); // the mutations do reach the checks
    expect(outcomes.ok).toBeGreaterThan(10); // and not everything is refused
  });
});
