import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidInputError } from '@tessera/core';
import { SlideFormatError, SlideRegionError } from './errors.js';
import { chooseLevel, openSlide, parseOmeMpp, parsePhilipsMpp, readRegion, readThumbnail } from './slide.js';
import { writeTiledTiff } from '../test/tiff-writer.mjs';

const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../../../shared/data');
const SLIDES = join(DATA, 'slides');
const CMU = join(SLIDES, 'wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs');
const FIXTURES = join(SLIDES, 'wsi-openslide-python-fixtures');
const OME = join(SLIDES, 'wsi-qupath-ome-tiff');

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'tessera-slide-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('openSlide', () => {
  it.each([
    // file, format, level sizes, mpp
    [CMU, 'svs', [[2220, 2967]], 0.499],
    [join(FIXTURES, 'small.svs'), 'svs', [[16, 16]], 0.499],
    [
      join(FIXTURES, 'boxes.tiff'),
      'tiff',
      [
        [300, 250],
        [150, 125],
        [75, 62],
        [37, 31],
      ],
      null,
    ],
    [join(OME, 'OS-1-detail.ome.tif'), 'ome-tiff', [[1101, 1101]], null],
    [join(OME, 'OS-2-ndpi.ome.tif'), 'ome-tiff', [[2202, 2202]], 0.2270972430394695],
    [join(OME, 'OS-2-vsi.ome.tif'), 'ome-tiff', [[1445, 1445]], null],
    [join(FIXTURES, 'boxes.png'), 'png', [[300, 250]], null],
  ] as const)('%s', async (path, format, sizes, mpp) => {
    const slide = await openSlide(path);
    expect(slide.format).toBe(format);
    expect(slide.levels.map((l) => [l.width, l.height])).toEqual(sizes);
    expect(slide.channels).toBe(3);
    if (mpp === null) {
      if (format === 'ome-tiff') expect(slide.mpp?.x).toBeGreaterThan(0.1);
      else expect(slide.mpp).toBeNull();
    } else expect(slide.mpp?.x).toBeCloseTo(mpp, 6);
  });

  it('reads SVS tiles, vendor, and lists the associated images', async () => {
    const slide = await openSlide(CMU);
    expect(slide).toMatchObject({ vendor: 'aperio', mppSource: 'aperio' });
    expect(slide.levels[0]).toMatchObject({ tileWidth: 240, tileHeight: 240, compression: 7, downsample: 1 });
    expect(slide.associated.map((a) => a.name)).toEqual(['thumbnail', 'label', 'macro']);
  });

  it('reads the OME-XML physical size with its unit', async () => {
    expect(parseOmeMpp('<OME><Image><Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm" SizeX="4">')).toEqual({
      x: 0.25,
      y: 0.25,
    });
    const slide = await openSlide(join(OME, 'OS-2-vsi.ome.tif'));
    expect(slide.mppSource).toBe('ome-xml');
  });

  it('gives the pyramid downsamples of boxes.tiff', async () => {
    const slide = await openSlide(join(FIXTURES, 'boxes.tiff'));
    expect(slide.levels.map((l) => l.downsample.toFixed(3))).toEqual(['1.000', '2.000', '4.016', '8.086']);
    expect(slide.levels[2]).toMatchObject({ tileWidth: 64, compression: 8, page: 2 });
  });

  it('refuses a truncated TIFF, random bytes and a missing file with clear errors', async () => {
    const cut = join(tmp, 'cut.svs');
    const bytes = await readFile(CMU);
    await writeFile(cut, bytes.subarray(0, Math.floor(bytes.length * 0.6)));
    const truncated = await openSlide(cut).catch((e: unknown) => e);
    expect(truncated).toBeInstanceOf(SlideFormatError);
    expect(truncated).toBeInstanceOf(InvalidInputError);
    expect((truncated as SlideFormatError).exitCode).toBe(5);
    expect((truncated as Error).message).toMatch(/cut\.svs.*(truncated|could not be)/);
    expect((truncated as SlideFormatError).code).toMatch(/^E_SLIDE_(TRUNCATED|FORMAT)$/);
    const noise = join(tmp, 'noise.tif');
    await writeFile(noise, Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919 + 13) % 251)));
    await expect(openSlide(noise)).rejects.toThrow(/noise\.tif" could not be opened: expected a tiled.*signature/);
    await expect(openSlide(noise)).rejects.toMatchObject({ code: 'E_SLIDE_FORMAT', exitCode: 5 });
    await expect(openSlide(join(tmp, 'absent.svs'))).rejects.toMatchObject({ exitCode: 4 });
  });

  it('refuses JPEG 2000 compression, naming it and the fix', async () => {
    // A copy of boxes.tiff whose level 0 says compression 65000 (Hamamatsu NDPI JPEG, not a TIFF codec).
    const bytes = Buffer.from(await readFile(join(FIXTURES, 'boxes.tiff')));
    const { fromArrayBuffer } = await import('geotiff');
    const tiff = await fromArrayBuffer(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    const offset = (tiff as unknown as { firstIFDOffset: number }).firstIFDOffset;
    const entries = bytes.readUInt16LE(offset);
    for (let i = 0; i < entries; i++) {
      const at = offset + 2 + i * 12;
      if (bytes.readUInt16LE(at) === 259) bytes.writeUInt16LE(65000, at + 8);
    }
    const ndpi = join(tmp, 'ndpi.tif');
    await writeFile(ndpi, bytes);
    await expect(openSlide(ndpi)).rejects.toThrow(/ndpi\.tif" level 0 uses Hamamatsu NDPI JPEG.*65000/);
    await expect(openSlide(ndpi)).rejects.toMatchObject({ code: 'E_SLIDE_COMPRESSION', exitCode: 5 });
  });
});

describe('readRegion', () => {
  it('reads boxes.tiff level 0 pixel-exactly against boxes.png', async () => {
    const slide = await openSlide(join(FIXTURES, 'boxes.tiff'));
    const png = await sharp(join(FIXTURES, 'boxes.png')).removeAlpha().raw().toBuffer();
    const whole = await readRegion(slide, { x: 0, y: 0, width: 300, height: 250 });
    expect(Buffer.from(whole.data).equals(png)).toBe(true);
    const part = await readRegion(slide, { x: 37, y: 61, width: 100, height: 70 });
    for (let y = 0; y < 70; y++) {
      const row = png.subarray(((61 + y) * 300 + 37) * 3, ((61 + y) * 300 + 137) * 3);
      expect(Buffer.from(part.data.subarray(y * 300, (y + 1) * 300)).equals(row)).toBe(true);
    }
  });

  it('mirrors pixels past the bottom-right edge', async () => {
    const slide = await openSlide(join(FIXTURES, 'boxes.tiff'));
    const region = await readRegion(slide, { x: 290, y: 240, width: 20, height: 20 }, { channels: 1 });
    const inside = await readRegion(slide, { x: 280, y: 230, width: 20, height: 20 }, { channels: 1 });
    // Column 299 + 1 mirrors column 298, row 249 + 2 mirrors row 247.
    expect(region.data[0 * 20 + 10]).toBe(inside.data[10 * 20 + 18]);
    expect(region.data[11 * 20 + 0]).toBe(inside.data[17 * 20 + 10]);
    await expect(readRegion(slide, { x: 300, y: 0, width: 4, height: 4 })).rejects.toBeInstanceOf(SlideRegionError);
    await expect(readRegion(slide, { x: 0, y: 0, width: 4, height: 4 }, { level: 4 })).rejects.toThrow(
      /expected a level between 0 and 3 but received 4/,
    );
  });

  it('reads other levels, resampled regions and thumbnails', async () => {
    const slide = await openSlide(join(FIXTURES, 'boxes.tiff'));
    const level2 = await readRegion(slide, { x: 0, y: 0, width: 75, height: 62 }, { level: 2 });
    expect(level2.data.length).toBe(75 * 62 * 3);
    const half = await readRegion(slide, { x: 0, y: 0, width: 150, height: 125 }, { scale: 0.5 });
    expect(half.width).toBe(150);
    const thumb = await readThumbnail(slide, 64);
    expect([thumb.width, thumb.height]).toEqual([64, 53]);
  });

  it('reads SVS regions fast and chooses levels by µm/px', async () => {
    const slide = await openSlide(CMU);
    const start = performance.now();
    for (let i = 0; i < 8; i++) await readRegion(slide, { x: 200 * i, y: 300 * i, width: 512, height: 512 });
    const perTile = (performance.now() - start) / 8;
    expect(perTile).toBeLessThan(500);
    expect(chooseLevel(slide, 0.499)).toEqual({ level: 0, scale: 1, mpp: 0.499 });
    expect(chooseLevel(slide, 0.998).scale).toBeCloseTo(0.5, 6);
    expect(() => chooseLevel(slide, 0.2)).toThrow(/expected mpp of at least 0.4990 \(its level 0\) but received 0.2/);
  });
});

describe('vendor layouts built on TIFF', () => {
  /** A one-tile JPEG page (16x16) with the given description and extra tags. */
  async function page(description: string, extra: object[] = [], size = 16) {
    const tile = await sharp({ create: { width: 16, height: 16, channels: 3, background: '#d05a8c' } })
      .jpeg()
      .toBuffer();
    const n = Math.ceil(size / 16) ** 2;
    return {
      width: size,
      height: size,
      tileWidth: 16,
      tileHeight: 16,
      tiles: Array(n).fill(tile),
      compression: 7,
      photometric: 2,
      description,
      extra,
    };
  }

  it.each([
    [
      'Leica SCN',
      '<?xml version="1.0"?><scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01">',
      [],
      /is a Leica SCN file/,
    ],
    ['Hamamatsu NDPI', 'ndpi', [{ tag: 271, type: 'ascii', value: 'Hamamatsu' }], /is a Hamamatsu NDPI file/],
    [
      'Ventana BIF (XMP)',
      'Label Image',
      [{ tag: 700, type: 'undefined', value: Buffer.from('<iScan Magnification="40"/>') }],
      /is a Ventana BIF file/,
    ],
  ] as const)('refuses %s with exit code 5 and a conversion that works', async (_name, description, extra, message) => {
    const path = join(tmp, `${_name.replace(/\W/g, '')}.tif`);
    writeTiledTiff(path, [await page(description, [...extra])]);
    const error = await openSlide(path).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SlideFormatError);
    expect((error as SlideFormatError).message).toMatch(message);
    expect((error as SlideFormatError).hint).toMatch(/vips tiffsave .* --tile --pyramid --compression jpeg/);
    expect((error as SlideFormatError).exitCode).toBe(5);
  });

  it('refuses a MIRAX index file (its tiles live in the folder beside it), whatever its bytes', async () => {
    const path = join(tmp, 'slide.mrxs');
    await writeFile(
      path,
      await sharp({ create: { width: 8, height: 8, channels: 3, background: '#fff' } })
        .jpeg()
        .toBuffer(),
    );
    await expect(openSlide(path)).rejects.toThrow(/is a MIRAX \(3DHISTECH\) slide.*Slidedat\.ini/);
  });

  it('reads a Philips TIFF: its level chain, and µm/px from its XML', async () => {
    const xml =
      '<?xml version="1.0" encoding="UTF-8" ?><DataObject ObjectType="DPUfsImport">' +
      '<Attribute Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030" PMSVR="IDoubleArray">' +
      '&quot;0.000226907&quot; &quot;0.000226907&quot;</Attribute></DataObject>';
    const path = join(tmp, 'philips.tiff');
    writeTiledTiff(path, [await page(xml, [], 64), await page('', [], 32), await page('', [], 16)]);
    const slide = await openSlide(path);
    expect(slide).toMatchObject({ vendor: 'philips', mppSource: 'philips-xml' });
    expect(slide.mpp?.x).toBeCloseTo(0.226907, 6);
    expect(slide.levels.map((l) => l.width)).toEqual([64, 32, 16]);
    const pixel = (await readRegion(slide, { x: 40, y: 40, width: 1, height: 1 })).data;
    expect(Math.abs(pixel[0] - 0xd0) + Math.abs(pixel[1] - 0x5a) + Math.abs(pixel[2] - 0x8c)).toBeLessThan(12);
    expect(parsePhilipsMpp('<DataObject/>')).toBeNull();
  });
});
