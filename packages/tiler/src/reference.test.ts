/**
 * Every slide reader against an independent decoder, in colour: the shared slides, and the kinds of slide archives
 * hold that are made here from them (Aperio JPEG 2000 SVS 33003/33005, libvips JPEG pyramids in YCbCr and RGB, a
 * QuPath-style OME-TIFF with SubIFD levels and JFIF tiles in a Photometric RGB file). At several levels and regions
 * (tile-misaligned interiors, the bottom-right edge, whole levels), Tessera's pixels must equal OpenSlide's
 * (python3-openslide) or, where OpenSlide cannot read the file, Pillow's decode of each tile located by tifffile;
 * within 1 grey level for lossy codecs (decoders of different libraries), exactly otherwise. Level sizes, downsamples
 * and µm/px must equal OpenSlide's. `.ci/run` installs the reference tools; without them these tests are skipped.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasOpenJpegTools, writeJfifOmeTiff, writeJpeg2000Svs } from '../test/make-slides.mjs';
import { openSlide, readRegion, type SlideInfo } from './slide.js';

const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../../../shared/data');
const SLIDES = join(DATA, 'slides');
const CMU = join(SLIDES, 'wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs');
const FIXTURES = join(SLIDES, 'wsi-openslide-python-fixtures');
const OME = join(SLIDES, 'wsi-qupath-ome-tiff');
const PYTHON = '/usr/bin/python3';
const REFERENCE = join(import.meta.dirname, '../test/reference.py');

const hasReference = spawnSync(PYTHON, ['-c', 'import openslide, tifffile, PIL, numpy']).status === 0;
const hasVips = spawnSync('vips', ['--version']).status === 0;
const hasPydicom = spawnSync(PYTHON, ['-c', 'import pydicom']).status === 0;
const dir = mkdtempSync(join(tmpdir(), 'tessera-reference-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Reference = 'openslide' | 'tiles' | 'dicom';
interface Case {
  name: string;
  path: () => string;
  reference: Reference;
  /** Largest allowed difference of one sample. */
  tolerance: number;
  /** Whether the tools that make this slide are present (else the case is skipped, visibly). Default true. */
  available?: boolean;
}

const generated = (name: string) => join(dir, name);

const CASES: Case[] = [
  {
    name: 'CMU-1-Small-Region.svs (Aperio JPEG)',
    path: () => CMU,
    reference: 'openslide',
    tolerance: 1,
    available: true,
  },
  {
    name: 'small.svs (Aperio JPEG, 16x16)',
    path: () => join(FIXTURES, 'small.svs'),
    reference: 'openslide',
    tolerance: 1,
  },
  {
    name: 'boxes.tiff (generic, Deflate)',
    path: () => join(FIXTURES, 'boxes.tiff'),
    reference: 'openslide',
    tolerance: 0,
  },
  {
    name: 'OS-1-detail.ome.tif (QuPath JFIF)',
    path: () => join(OME, 'OS-1-detail.ome.tif'),
    reference: 'tiles',
    tolerance: 1,
  },
  {
    name: 'OS-2-ndpi.ome.tif (QuPath JFIF)',
    path: () => join(OME, 'OS-2-ndpi.ome.tif'),
    reference: 'tiles',
    tolerance: 1,
  },
  {
    name: 'OS-2-vsi.ome.tif (QuPath JFIF)',
    path: () => join(OME, 'OS-2-vsi.ome.tif'),
    reference: 'tiles',
    tolerance: 1,
  },
  {
    name: 'boxes_0.dcm (DICOM WSI, JPEG baseline frames)',
    path: () => join(FIXTURES, 'boxes_0.dcm'),
    reference: 'dicom',
    tolerance: 1,
    available: hasPydicom,
  },
  ...[33003, 33005].map((code) => ({
    name: `Aperio JPEG 2000 ${code} SVS from CMU`,
    path: () => generated(`cmu-${code}.svs`),
    reference: 'openslide' as const,
    tolerance: 1,
    available: hasOpenJpegTools,
  })),
  {
    name: 'libvips JPEG pyramid, Photometric YCbCr',
    path: () => generated('vips-ycbcr.tif'),
    reference: 'openslide',
    tolerance: 1,
    available: hasVips,
  },
  {
    name: 'libvips JPEG pyramid, RGB JPEG',
    path: () => generated('vips-rgb.tif'),
    reference: 'openslide',
    tolerance: 1,
    available: hasVips,
  },
  {
    name: 'OME-TIFF SubIFD pyramid, JFIF-less YCbCr tiles in Photometric RGB',
    path: () => generated('subifd.ome.tif'),
    reference: 'tiles',
    tolerance: 1,
    available: true,
  },
];

function referenceRegion(mode: Reference, path: string, level: number, x: number, y: number, w: number, h: number) {
  const args = [REFERENCE, mode, path, ...[level, x, y, w, h].map(String)];
  return execFileSync(PYTHON, args, { maxBuffer: 1 << 30 });
}

/** Regions of a level: the whole level, and at level 0 a tile-misaligned interior and the bottom-right corner. */
function regionsOf(slide: SlideInfo, level: number) {
  const { width, height } = slide.levels[level];
  const regions = [{ x: 0, y: 0, width, height }];
  if (level === 0 && width > 64 && height > 64) {
    regions.push({ x: Math.floor(width / 3) + 7, y: Math.floor(height / 4) + 3, width: 301, height: 257 });
    regions.push({ x: width - 123, y: height - 77, width: 123, height: 77 });
  }
  return regions.map((r) => ({
    ...r,
    width: Math.min(r.width, width - r.x),
    height: Math.min(r.height, height - r.y),
  }));
}

beforeAll(async () => {
  if (!hasReference) return;
  const cmu = await openSlide(CMU);
  const { data } = await readRegion(cmu, { x: 0, y: 0, width: 1200, height: 1500 });
  if (hasOpenJpegTools) {
    for (const compression of [33003, 33005]) {
      await writeJpeg2000Svs(generated(`cmu-${compression}.svs`), data, 1200, 1500, { compression });
    }
  }
  if (hasVips) {
    const png = generated('cmu.png');
    await sharp(data, { raw: { width: 1200, height: 1500, channels: 3 } })
      .png()
      .toFile(png);
    const save = (out: string, extra: string[]) =>
      execFileSync('vips', [
        'tiffsave',
        png,
        out,
        '--tile',
        '--pyramid',
        '--compression',
        'jpeg',
        '--Q',
        '85',
        ...extra,
      ]);
    save(generated('vips-ycbcr.tif'), ['--tile-width', '256', '--tile-height', '256']);
    save(generated('vips-rgb.tif'), ['--tile-width', '128', '--tile-height', '128', '--rgbjpeg']);
  }
  const ndpi = await openSlide(join(OME, 'OS-2-ndpi.ome.tif'));
  const ome = await readRegion(ndpi, { x: 0, y: 0, width: 2202, height: 2202 });
  await writeJfifOmeTiff(generated('subifd.ome.tif'), ome.data, 2202, 2202, { tile: 256 });
}, 300_000);

describe.skipIf(!hasReference)('slide readers against reference decoders', () => {
  for (const { name, path, reference, tolerance, available } of CASES) {
    it.skipIf(available === false)(name, async () => {
      const opened = await openSlide(path());
      // JPEG levels that libvips reads right are read by libvips; check Tessera's tile decoder on them too.
      const forced = opened.levels.some((l) => l.decoder === 'libvips' && l.compression === 7)
        ? [
            {
              ...opened,
              levels: opened.levels.map((l) => (l.compression === 7 ? { ...l, decoder: 'tiles' as const } : l)),
            },
          ]
        : [];
      const rows: string[] = [];
      for (const slide of [opened, ...forced]) {
        for (let level = 0; level < slide.levels.length; level++) {
          for (const region of regionsOf(slide, level)) {
            const file = slide.levels[level].file ?? path();
            const expected = referenceRegion(reference, file, level, region.x, region.y, region.width, region.height);
            const actual = await readRegion(slide, region, { level, channels: 3 });
            expect(actual.data.length).toBe(expected.length);
            let max = 0;
            let sum = 0;
            for (let i = 0; i < expected.length; i++) {
              const d = Math.abs(actual.data[i] - expected[i]);
              sum += d;
              if (d > max) max = d;
            }
            rows.push(
              `level ${level} (${slide.levels[level].decoder}) [${region.x},${region.y} ${region.width}x` +
                `${region.height}] max ${max} mean ${(sum / expected.length).toFixed(4)}`,
            );
            const where = `${path()} level ${level} (${slide.levels[level].decoder}) region ${JSON.stringify(region)}`;
            expect(max, where).toBeLessThanOrEqual(tolerance);
          }
        }
      }
      const slide = opened;
      console.log(`${slide.path.split('/').pop()} (reference: ${reference}):\n  ${rows.join('\n  ')}`);
      if (reference === 'openslide') {
        const props = JSON.parse(execFileSync(PYTHON, [REFERENCE, 'props', path()]).toString()) as {
          levels: [number, number][];
          downsamples: number[];
          mpp: [number, number] | null;
        };
        expect(slide.levels.map((l) => [l.width, l.height])).toEqual(props.levels);
        slide.levels.forEach((l, i) => expect(l.downsample).toBeCloseTo(props.downsamples[i], 6));
        if (props.mpp) expect([slide.mpp?.x, slide.mpp?.y]).toEqual(props.mpp);
        else expect(slide.mppSource === null || slide.mppSource === 'tiff-resolution').toBe(true);
      }
    });
  }

  it('the false-colour reading is caught: the same QuPath tiles decoded as RGB differ from the reference', async () => {
    // Negative control: libvips reads these tiles by the Photometric tag alone, as Tessera did before.
    const path = join(OME, 'OS-2-ndpi.ome.tif');
    const naive = await sharp(path, { page: 0 })
      .extract({ left: 0, top: 512, width: 512, height: 512 })
      .raw()
      .toBuffer();
    const expected = referenceRegion('tiles', path, 0, 0, 512, 512, 512);
    let sum = 0;
    for (let i = 0; i < expected.length; i++) sum += Math.abs(naive[i] - expected[i]);
    expect(sum / expected.length).toBeGreaterThan(20);
  });
});
