/**
 * Pyramids stored as SubIFDs of the first IFD (as OME-TIFF writers do) in a BigTIFF file, written by libvips (Debian
 * libvips-tools, installed by .ci/run): the reader finds the levels, their downsamples, and reads the same pixels as
 * libvips at every level.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';
import { openSlide, readRegion } from './index.js';

const CMU = fileURLToPath(
  new URL('../../../../shared/data/slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs', import.meta.url),
);
const hasVips = spawnSync('vips', ['--version']).status === 0;
const dir = mkdtempSync(join(tmpdir(), 'tessera-subifd-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('SubIFD pyramids in BigTIFF', () => {
  // .ci/run installs libvips-tools; elsewhere the test shows as skipped.
  it.skipIf(!hasVips)('finds every SubIFD level and reads the pixels libvips reads', async () => {
    const source = join(dir, 'crop.png');
    await sharp(CMU).extract({ left: 0, top: 0, width: 2048, height: 1536 }).png().toFile(source);
    const file = join(dir, 'subifd.ome.tif');
    execFileSync('vips', [
      'tiffsave',
      source,
      file,
      '--tile',
      '--tile-width=256',
      '--tile-height=256',
      '--pyramid',
      '--subifd',
      '--bigtiff',
      '--compression=deflate',
    ]);
    const header = readFileSync(file).subarray(0, 4);
    expect([...header]).toEqual([0x49, 0x49, 43, 0]); // little-endian BigTIFF
    const slide = await openSlide(file);
    expect(slide.levels.map((l) => [l.width, l.height])).toEqual([
      [2048, 1536],
      [1024, 768],
      [512, 384],
      [256, 192],
    ]);
    expect(slide.levels.slice(1).map((l) => l.subifd)).toEqual([0, 1, 2]);
    expect(slide.levels.map((l) => l.downsample)).toEqual([1, 2, 4, 8]);
    for (const level of [0, 2]) {
      const region = await readRegion(slide, { x: 100, y: 60, width: 128, height: 96 }, { level });
      const reference = await sharp(file, { subifd: level - 1 })
        .extract({ left: 100, top: 60, width: 128, height: 96 })
        .removeAlpha()
        .raw()
        .toBuffer();
      expect(Buffer.from(region.data)).toEqual(reference);
    }
  });
});
