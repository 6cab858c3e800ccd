#!/usr/bin/env node
/**
 * Slide reading speed, side by side in one run: the same pixels (the shared CMU-1-Small-Region tiled into a larger
 * slide) stored as an Aperio-style JPEG TIFF (240 px tiles), as Aperio JPEG 2000 SVS 33005 (RGB) and 33003 (YCbCr
 * 4:2:2), read region by region in raster order (512 px regions overlapping by 64 px, as the tiler reads them, one
 * thread) by:
 *   - Tessera's `readRegion`: JPEG levels whose stream agrees with the TIFF tag go to libvips's region reader (as
 *     before this change); the same file forced through Tessera's tile decoder (the path of QuPath-style JFIF tiles:
 *     one sharp call per 240 px tile); JPEG 2000 through the tile decoder (OpenJPEG in WebAssembly);
 *   - OpenSlide (python3-openslide: native libjpeg-turbo and OpenJPEG), for reference.
 * Prints Mpx/s per reader and format, and the ratios against the JPEG path.
 *
 *   node bench/slide-read.mjs [--size 6000] [--regions 120]
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { openSlide, readRegion } from '../packages/tiler/dist/index.js';
import { hasOpenJpegTools, writeJpeg2000Svs } from '../packages/tiler/test/make-slides.mjs';
import { writeTiledTiff } from '../packages/tiler/test/tiff-writer.mjs';

const { values } = parseArgs({
  options: { size: { type: 'string', default: '6000' }, regions: { type: 'string', default: '120' } },
});
const SIZE = Number(values.size);
const REGIONS = Number(values.regions);
const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../shared/data');
const CMU = join(DATA, 'slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs');
sharp.cache(false);

const dir = mkdtempSync(join(tmpdir(), 'tessera-slide-read-'));
try {
  // The source pixels: CMU-1-Small-Region repeated (mirrored) to SIZE x SIZE.
  const cmu = await openSlide(CMU);
  const { data: tile } = await readRegion(
    cmu,
    { x: 0, y: 0, width: SIZE, height: SIZE },
    { bounds: { width: 2220, height: 2967 } },
  );
  const rgb = Buffer.from(tile.buffer, tile.byteOffset, tile.byteLength);
  console.log(`source: ${SIZE} x ${SIZE} px from CMU-1-Small-Region (mirrored at its edges)`);

  // Aperio-style JPEG: 240 px tiles, RGB JPEG without markers (ids 0,1,2 like Aperio's) is hard to make here, so the
  // tiles are sharp's YCbCr JPEGs in a Photometric YCbCr TIFF, which both readers decode the same way.
  const tiles = [];
  for (let y = 0; y < SIZE; y += 240) {
    for (let x = 0; x < SIZE; x += 240) {
      const w = Math.min(240, SIZE - x);
      const h = Math.min(240, SIZE - y);
      let img = sharp(rgb, { raw: { width: SIZE, height: SIZE, channels: 3 } }).extract({
        left: x,
        top: y,
        width: w,
        height: h,
      });
      if (w < 240 || h < 240)
        img = sharp(await img.raw().toBuffer(), { raw: { width: w, height: h, channels: 3 } }).extend({
          right: 240 - w,
          bottom: 240 - h,
          extendWith: 'copy',
        });
      tiles.push(await img.jpeg({ quality: 80 }).toBuffer());
    }
  }
  const files = { jpeg: join(dir, 'jpeg.tif') };
  writeTiledTiff(files.jpeg, [
    { width: SIZE, height: SIZE, tileWidth: 240, tileHeight: 240, tiles, compression: 7, photometric: 6 },
  ]);
  if (hasOpenJpegTools) {
    for (const code of [33005, 33003]) {
      const start = performance.now();
      files[`j2k-${code}`] = join(dir, `j2k-${code}.svs`);
      await writeJpeg2000Svs(files[`j2k-${code}`], rgb, SIZE, SIZE, { compression: code, downsamples: [] });
      console.log(`made ${code} SVS in ${((performance.now() - start) / 1000).toFixed(0)} s`);
    }
  } else console.log('opj_compress missing (apt-get install libopenjp2-tools): JPEG 2000 rows skipped');

  // Regions in raster order, 512 px with 64 px overlap, the first REGIONS of them.
  const regions = [];
  for (let y = 0; y + 512 <= SIZE && regions.length < REGIONS; y += 448) {
    for (let x = 0; x + 512 <= SIZE && regions.length < REGIONS; x += 448)
      regions.push({ x, y, width: 512, height: 512 });
  }
  const mpx = (regions.length * 512 * 512) / 1e6;

  const results = [];
  const time = async (name, fn) => {
    const start = performance.now();
    await fn();
    const s = (performance.now() - start) / 1000;
    results.push({ name, mpxs: mpx / s });
    console.log(
      `${name.padEnd(44)} ${(mpx / s).toFixed(2).padStart(7)} Mpx/s (${regions.length} regions in ${s.toFixed(2)} s)`,
    );
  };
  for (const [kind, file] of Object.entries(files)) {
    const slide = await openSlide(file);
    await time(`tessera ${kind} (${slide.levels[0].decoder})`, async () => {
      for (const r of regions) await readRegion(slide, r);
    });
    if (slide.levels[0].decoder === 'libvips') {
      // The same file through the tile decoder: the path of JPEG slides libvips reads in false colour (QuPath's).
      const tiled = { ...slide, levels: slide.levels.map((l) => ({ ...l, decoder: 'tiles' })) };
      await time(`tessera ${kind} (tiles, the QuPath JFIF path)`, async () => {
        for (const r of regions) await readRegion(tiled, r);
      });
    }
  }
  if (spawnSync('/usr/bin/python3', ['-c', 'import openslide']).status === 0) {
    const script = join(dir, 'read.py');
    writeFileSync(
      script,
      'import sys, time, json, openslide\n' +
        'regions = json.loads(sys.argv[2])\ns = openslide.OpenSlide(sys.argv[1])\nt = time.perf_counter()\n' +
        'for x, y in regions: s.read_region((x, y), 0, (512, 512))\nprint(time.perf_counter() - t)\n',
    );
    const coords = JSON.stringify(regions.map((r) => [r.x, r.y]));
    for (const [kind, file] of Object.entries(files)) {
      const s = Number(execFileSync('/usr/bin/python3', [script, file, coords]).toString());
      results.push({ name: `openslide ${kind}`, mpxs: mpx / s });
      console.log(
        `${`openslide ${kind} (native, reference)`.padEnd(44)} ${(mpx / s).toFixed(2).padStart(7)} Mpx/s (${s.toFixed(2)} s)`,
      );
    }
  }
  const base = results.find((r) => r.name.startsWith('tessera jpeg')).mpxs;
  console.log('\nratios against tessera jpeg (libvips):');
  for (const r of results) console.log(`  ${r.name.padEnd(42)} ${(r.mpxs / base).toFixed(2)}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
