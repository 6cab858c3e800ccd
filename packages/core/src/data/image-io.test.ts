import { existsSync, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputNotFoundError, InvalidInputError, InvalidOptionError, OutputError } from '../errors.js';
import { imageStem, readImage, readMask, writeFileAtomic, writePng } from './image-io.js';

let dir: string;

beforeAll(async () => {
  dir = await fs.mkdtemp(join(tmpdir(), 'tessera-image-io-'));
});

afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

/** A 4x3 RGB image whose every byte is distinct. */
function rgbImage(): Uint8Array {
  return Uint8Array.from({ length: 4 * 3 * 3 }, (_, i) => (i * 7) % 256);
}

describe('writePng / readImage', () => {
  it('round-trips an RGB image exactly and leaves no temporary file', async () => {
    const path = join(dir, 'rgb.png');
    const data = rgbImage();
    await writePng(path, { data, width: 4, height: 3, channels: 3 });
    const back = await readImage(path);
    expect(back).toMatchObject({ width: 4, height: 3, channels: 3 });
    expect(Array.from(back.data)).toEqual(Array.from(data));
    expect((await fs.readdir(dir)).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  it('writes grey as a 1-channel PNG, reads it as grey and expands it to RGB on request', async () => {
    const path = join(dir, 'grey.png');
    const data = Uint8Array.from({ length: 12 }, (_, i) => i * 20);
    await writePng(path, { data, width: 4, height: 3, channels: 1 });
    expect((await sharp(path).metadata()).channels).toBe(1);
    const grey = await readImage(path);
    expect(grey.channels).toBe(1);
    expect(Array.from(grey.data)).toEqual(Array.from(data));
    const rgb = await readImage(path, { channels: 3 });
    expect(rgb.channels).toBe(3);
    expect(Array.from(rgb.data.subarray(0, 9))).toEqual([0, 0, 0, 20, 20, 20, 40, 40, 40]);
  });

  it('converts RGB to grey with channels: 1 and drops alpha', async () => {
    const path = join(dir, 'rgba.png');
    // Pixel 0 is pure white, pixel 1 pure black, both half transparent.
    const data = Uint8Array.from([255, 255, 255, 128, 0, 0, 0, 128]);
    await writePng(path, { data, width: 2, height: 1, channels: 4 });
    const rgb = await readImage(path);
    expect(rgb.channels).toBe(3);
    expect(Array.from(rgb.data)).toEqual([255, 255, 255, 0, 0, 0]);
    const grey = await readImage(path, { channels: 1 });
    expect(grey.channels).toBe(1);
    expect(Array.from(grey.data)).toEqual([255, 0]);
  });

  it('reads LZW TIFF and scales 16-bit images to 8 bits', async () => {
    const tif = join(dir, 'rgb.tif');
    await sharp(Buffer.from(rgbImage()), { raw: { width: 4, height: 3, channels: 3 } })
      .tiff({ compression: 'lzw' })
      .toFile(tif);
    expect(Array.from((await readImage(tif)).data)).toEqual(Array.from(rgbImage()));
    const png16 = join(dir, 'grey16.png');
    const values = new Uint16Array([0, 257, 65535, 32896]);
    await sharp(values, { raw: { width: 4, height: 1, channels: 1 } })
      .toColourspace('grey16')
      .png()
      .toFile(png16);
    const image = await readImage(png16);
    expect(image.channels).toBe(1);
    expect(Array.from(image.data)).toEqual([0, 1, 255, 128]);
  });

  it('reads a real ISBI slice (stored as grey) as one channel', async () => {
    const path = '/work/shared/data/isbi2012-em-membrane/train/image/0.png';
    if (!existsSync(path)) return;
    const image = await readImage(path);
    expect(image).toMatchObject({ width: 512, height: 512, channels: 1 });
    expect(image.data.length).toBe(512 * 512);
  });

  it('names the missing file', async () => {
    const path = join(dir, 'missing.png');
    await expect(readImage(path)).rejects.toThrow(InputNotFoundError);
    await expect(readImage(path)).rejects.toThrow(`Image "${path}" does not exist.`);
    await expect(readImage(dir)).rejects.toThrow('is not a file');
  });

  it('names a corrupt file, says what was expected and what sharp said', async () => {
    const path = join(dir, 'corrupt.png');
    await fs.writeFile(path, 'this is not an image');
    const error = await readImage(path).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidInputError);
    expect((error as InvalidInputError).message).toBe(
      `Image "${path}" could not be decoded as an image: expected PNG, JPEG or TIFF, sharp said: ` +
        'Input file contains unsupported image format.',
    );
    expect((error as InvalidInputError).hint).toContain('re-export');
    // A PNG cut short passes the header check and fails while decoding.
    const whole = await sharp(Buffer.alloc(64 * 64 * 3, 77), { raw: { width: 64, height: 64, channels: 3 } })
      .png()
      .toBuffer();
    const cut = join(dir, 'cut.png');
    await fs.writeFile(cut, whole.subarray(0, whole.length - 40));
    await expect(readImage(cut)).rejects.toThrow(`Image "${cut}" could not be decoded: sharp said:`);
  });

  it('rejects bad arguments', async () => {
    const data = new Uint8Array(5);
    await expect(writePng(join(dir, 'x.png'), { data, width: 2, height: 2, channels: 1 })).rejects.toThrow(
      InvalidOptionError,
    );
    await expect(readImage(join(dir, 'rgb.png'), { channels: 2 as 1 })).rejects.toThrow(
      'expected 1 or 3 for options.channels but received 2 of type number',
    );
  });
});

describe('readMask', () => {
  it('reads grey masks and RGB masks whose channels are equal', async () => {
    const values = Uint8Array.from([0, 1, 2, 255, 1, 0]);
    const grey = join(dir, 'mask-grey.png');
    await writePng(grey, { data: values, width: 3, height: 2, channels: 1 });
    expect(await readMask(grey)).toEqual({ data: values, width: 3, height: 2 });
    const rgb = join(dir, 'mask-rgb.png');
    const triple = Uint8Array.from(Array.from(values).flatMap((v) => [v, v, v]));
    await writePng(rgb, { data: triple, width: 3, height: 2, channels: 3 });
    expect(await readMask(rgb)).toEqual({ data: values, width: 3, height: 2 });
  });

  it('keeps 16-bit mask values instead of scaling them', async () => {
    const path = join(dir, 'mask16.png');
    await sharp(new Uint16Array([0, 1, 2, 3]), { raw: { width: 2, height: 2, channels: 1 } })
      .toColourspace('grey16')
      .png()
      .toFile(path);
    expect(Array.from((await readMask(path)).data)).toEqual([0, 1, 2, 3]);
    const big = join(dir, 'mask16-big.png');
    await sharp(new Uint16Array([0, 300, 2, 3]), { raw: { width: 2, height: 2, channels: 1 } })
      .toColourspace('grey16')
      .png()
      .toFile(big);
    await expect(readMask(big)).rejects.toThrow(
      `Mask "${big}" holds the value 300 at pixel x=1, y=0; expected class values between 0 and 255.`,
    );
  });

  it('rejects colour masks, explaining that masks hold one class value per pixel', async () => {
    const path = join(dir, 'mask-colour.png');
    await writePng(path, { data: Uint8Array.from([0, 0, 0, 255, 0, 0]), width: 2, height: 1, channels: 3 });
    const error = await readMask(path).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidInputError);
    expect((error as Error).message).toBe(
      `Mask "${path}" is a colour image whose channels differ (pixel x=1, y=0 is (255, 0, 0)); ` +
        'expected a single-channel mask holding one class value per pixel.',
    );
    await expect(readMask(join(dir, 'nope.png'))).rejects.toThrow(InputNotFoundError);
  });
});

describe('writeFileAtomic', () => {
  it('writes text and bytes, replacing an existing file', async () => {
    const path = join(dir, 'a.json');
    await writeFileAtomic(path, '{"a":1}');
    await writeFileAtomic(path, '{"a":2}');
    expect(await fs.readFile(path, 'utf8')).toBe('{"a":2}');
    await writeFileAtomic(path, Uint8Array.from([1, 2, 3]));
    expect(Array.from(await fs.readFile(path))).toEqual([1, 2, 3]);
  });

  it('raises OutputError naming the path when the folder is missing, leaving no temporary file', async () => {
    const path = join(dir, 'no-such-folder', 'a.json');
    const error = await writeFileAtomic(path, 'x').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OutputError);
    expect((error as Error).message).toBe(
      `Could not write "${path}": the folder "${join(dir, 'no-such-folder')}" does not exist.`,
    );
    // Renaming onto a folder fails after the temporary file was written: it must be cleaned up.
    const folder = join(dir, 'taken');
    await fs.mkdir(folder);
    await expect(writeFileAtomic(folder, 'x')).rejects.toThrow(OutputError);
    expect((await fs.readdir(dir)).filter((f) => f.startsWith('taken.tmp-'))).toEqual([]);
  });
});

describe('imageStem', () => {
  it('strips the folder and the last extension', () => {
    expect(imageStem('/data/images/slice_07.tif')).toBe('slice_07');
    expect(imageStem('a.ome.tif')).toBe('a.ome');
    expect(imageStem('C:/x/NoExt')).toBe('NoExt');
    expect(imageStem('rel/0.PNG')).toBe('0');
  });
});

describe('images too large to read whole', () => {
  it('names the size, not the format, for a 20000 x 20000 PNG (exit code 5)', async () => {
    // A PNG header (with a valid CRC) of 20000 x 20000 RGB: only the header is read before the refusal.
    const small = await sharp({ create: { width: 2, height: 2, channels: 3, background: '#808080' } })
      .png()
      .toBuffer();
    const png = Buffer.from(small);
    png.writeUInt32BE(20000, 16);
    png.writeUInt32BE(20000, 20);
    const { crc32 } = await import('node:zlib');
    png.writeUInt32BE(crc32(png.subarray(12, 29)) >>> 0, 29);
    const path = join(dir, 'huge.png');
    await fs.writeFile(path, png);
    const error = await readImage(path).catch((e: unknown) => e as InvalidInputError);
    expect(error).toBeInstanceOf(InvalidInputError);
    expect(error.message).toBe(
      `Image "${path}" is 20000 x 20000 px (400 megapixels); images read whole are limited to 268 megapixels (16383 x 16383).`,
    );
    expect(error.hint).toMatch(/Predict it as a whole slide/);
    expect(error.message).not.toMatch(/could not be decoded|expected PNG/);
  });
});
