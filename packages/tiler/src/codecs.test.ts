import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import {
  completeJpeg,
  j2kSubsampling,
  jpegColourSpace,
  scanJpegMarkers,
  ycbcrToRgb,
  type JpegMarkers,
} from './codecs.js';

const markers = (over: Partial<JpegMarkers>): JpegMarkers => ({
  jfif: false,
  adobeTransform: null,
  components: 3,
  ids: [0, 1, 2],
  ...over,
});

describe('jpegColourSpace: the stream first, the container last', () => {
  it.each([
    ['JFIF in a Photometric RGB file (QuPath)', markers({ jfif: true }), 'rgb', 'ycbcr'],
    ['Adobe transform 0 in a Photometric YCbCr file', markers({ adobeTransform: 0 }), 'ycbcr', 'rgb'],
    ['Adobe transform 1', markers({ adobeTransform: 1 }), 'rgb', 'ycbcr'],
    ['ids R, G, B', markers({ ids: [82, 71, 66] }), 'ycbcr', 'rgb'],
    ['ids 1, 2, 3 without markers', markers({ ids: [1, 2, 3] }), 'rgb', 'ycbcr'],
    ['ids 0, 1, 2 in a Photometric RGB file (Aperio)', markers({}), 'rgb', 'rgb'],
    ['ids 0, 1, 2 in a Photometric YCbCr file', markers({}), 'ycbcr', 'ycbcr'],
  ] as const)('%s', (_name, m, photometric, expected) => {
    expect(jpegColourSpace(m, photometric)).toBe(expected);
  });
});

describe('completeJpeg', () => {
  it('splices shared tables and states the colour space with an Adobe marker that libjpeg obeys', async () => {
    // A red tile encoded as YCbCr (sharp writes ids 1, 2, 3 and no JFIF marker).
    const red = await sharp({ create: { width: 16, height: 16, channels: 3, background: '#c81e1e' } })
      .jpeg({ quality: 95 })
      .toBuffer();
    expect(scanJpegMarkers(red)).toMatchObject({ jfif: false, adobeTransform: null, components: 3, ids: [1, 2, 3] });
    // Read as YCbCr (the stream's ids): red; forced to RGB by an Adobe marker (what the TIFF tag alone would say):
    // the raw Y, Cb, Cr values.
    const asStream = await sharp(completeJpeg(red, undefined, 'rgb'))
      .raw()
      .toBuffer();
    expect(Math.abs(asStream[0] - 200)).toBeLessThanOrEqual(3);
    expect(asStream[1]).toBeLessThan(40);
    const renamed = Buffer.from(red);
    const sof = renamed.indexOf(Buffer.from([0xff, 0xc0]));
    const sos = renamed.indexOf(Buffer.from([0xff, 0xda]));
    for (const k of [0, 1, 2]) {
      renamed[sof + 10 + 3 * k] = k; // ids 0, 1, 2 (frame and scan): the container decides
      renamed[sos + 5 + 2 * k] = k;
    }
    const forced = completeJpeg(renamed, undefined, 'rgb');
    expect(scanJpegMarkers(forced).adobeTransform).toBe(0);
    const raw = await sharp(forced).raw().toBuffer();
    expect(Math.abs(raw[0] - 81)).toBeLessThanOrEqual(3); // Y of #c81e1e
    expect(Math.abs(raw[2] - 213)).toBeLessThanOrEqual(3); // Cr
    // Tables first: a stream of tables (SOI ... EOI) and an abbreviated tile decode as one image.
    const tables = Buffer.concat([red.subarray(0, 2), Buffer.from([0xff, 0xd9])]);
    expect(
      (
        await sharp(completeJpeg(red, tables, 'rgb'))
          .raw()
          .toBuffer()
      ).equals(asStream),
    ).toBe(true);
  });
});

describe('JPEG 2000 helpers', () => {
  it('reads component subsampling from the SIZ marker', () => {
    const siz = Buffer.alloc(51);
    siz.set([0xff, 0x4f, 0xff, 0x51]);
    siz.writeUInt16BE(3, 40);
    siz.set([7, 1, 1, 7, 2, 1, 7, 2, 1], 42);
    expect(j2kSubsampling(siz)).toEqual([
      [1, 1],
      [2, 1],
      [2, 1],
    ]);
    expect(j2kSubsampling(Buffer.from([0, 0, 0, 12]))).toBeNull();
  });

  it("converts YCbCr with OpenSlide's tables", () => {
    const pixels = Uint8Array.from([128, 128, 128, 76, 85, 255, 255, 128, 128]);
    ycbcrToRgb(pixels);
    expect(Array.from(pixels)).toEqual([128, 128, 128, 254, 0, 0, 255, 255, 255]);
  });
});
