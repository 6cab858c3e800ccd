/**
 * Reading and writing of 8-bit raster images and label masks (PNG, JPEG, TIFF) with sharp, and atomic file writes.
 */

import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { basename, dirname, extname } from 'node:path';
import sharp from 'sharp';
import { InputNotFoundError, InvalidInputError, InvalidOptionError, OutputError, describeValue } from '../errors.js';

/** An 8-bit image with interleaved channels: `data` has shape `[height, width, channels]` (HWC). */
export interface RasterImage {
  /** Pixel values, `height * width * channels` bytes, row by row, channels interleaved. */
  data: Uint8Array;
  width: number;
  height: number;
  /** 1 (grey), 3 (RGB); {@link writePng} also accepts 2 (grey + alpha) and 4 (RGBA). */
  channels: number;
}

/** A single-channel label mask: `data` has shape `[height, width]`, one class value (0..255) per pixel. */
export interface MaskImage {
  data: Uint8Array;
  width: number;
  height: number;
}

/** Options of {@link readImage}. */
export interface ReadImageOptions {
  /**
   * Channels wanted: `1` converts colour to grey (luminance), `3` expands grey to RGB. Default: the file's own colour
   * space, `1` for grey files and `3` for colour files (alpha is always dropped).
   */
  channels?: 1 | 3;
}

/** Image file extensions Tessera reads, lower case, with the dot. */
export const IMAGE_EXTENSIONS: readonly string[] = ['.png', '.jpg', '.jpeg', '.tif', '.tiff'];

const READ_HINT =
  'Check that the file is a PNG, JPEG or TIFF image that opens in an image viewer; re-export it ' +
  '(e.g. `vips copy in.tif out.png`) if it is truncated or uses an unsupported encoding.';

/** Throws InputNotFoundError when `path` does not exist or is not a file. */
async function assertFile(path: string, what: string): Promise<void> {
  let stat;
  try {
    stat = await fs.stat(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new InputNotFoundError(
      code === 'ENOENT'
        ? `${what} "${path}" does not exist.`
        : `${what} "${path}" cannot be read (${(error as Error).message}).`,
      'Check the path (relative paths start from the current folder) and the file permissions.',
      error,
    );
  }
  if (!stat.isFile()) {
    throw new InputNotFoundError(
      `${what} "${path}" is not a file (it is a folder or a special file); expected an image file.`,
      'Pass the path of one image file, not of a folder.',
    );
  }
}

/** Reads the header of an image file, mapping sharp's failures to InvalidInputError. */
async function readMetadata(path: string, what: string): Promise<sharp.Metadata> {
  await assertFile(path, what);
  let meta: sharp.Metadata;
  try {
    meta = await sharp(path, { limitInputPixels: false }).metadata();
    if (!meta.width || !meta.height || !meta.channels) throw new Error('no width, height or channel count');
  } catch (error) {
    throw new InvalidInputError(
      `${what} "${path}" could not be decoded as an image: expected PNG, JPEG or TIFF, sharp said: ` +
        `${(error as Error).message}.`,
      READ_HINT,
      error,
    );
  }
  // The size, not the format: sharp refuses more pixels than this unless told otherwise, and an image this large is
  // read whole into memory here.
  if (meta.width * meta.height > MAX_IMAGE_PIXELS) {
    throw new InvalidInputError(
      `${what} "${path}" is ${meta.width} x ${meta.height} px (${((meta.width * meta.height) / 1e6).toFixed(0)} ` +
        `megapixels); images read whole are limited to ${Math.round(MAX_IMAGE_PIXELS / 1e6)} megapixels ` +
        '(16383 x 16383).',
      what === 'Image'
        ? 'Predict it as a whole slide (`tessera predict` tiles images over 4096 x 4096 px when @tessera/tiler is ' +
          'installed), or cut it into tiles for training (e.g. `vips dzsave in.png tiles --depth one`).'
        : 'Cut the image and its mask into tiles of the same size (e.g. `vips dzsave in.png tiles --depth one`).',
    );
  }
  return meta;
}

/** Pixels of the largest image read whole (sharp's default limit: 16383 x 16383). */
export const MAX_IMAGE_PIXELS = 0x3fff * 0x3fff;

/** Runs a sharp pipeline to raw pixels, mapping decode failures (e.g. truncated data) to InvalidInputError. */
async function toRaw(
  pipeline: sharp.Sharp,
  path: string,
  what: string,
): Promise<{ data: Buffer; info: sharp.OutputInfo }> {
  try {
    return await pipeline.toBuffer({ resolveWithObject: true });
  } catch (error) {
    throw new InvalidInputError(
      `${what} "${path}" could not be decoded: sharp said: ${(error as Error).message}.`,
      READ_HINT,
      error,
    );
  }
}

/** What an image file holds, from its header: what {@link readImage} keeps and what it converts. */
export interface ImageHeader {
  width: number;
  height: number;
  /** Colour channels as read: 1 (grey) or 3 (RGB, also for CMYK and palette files, converted). */
  channels: 1 | 3;
  /** Whether the file has an alpha channel (dropped when read). */
  alpha: boolean;
  /** Bits per sample in the file (16-bit samples are scaled to 8 bits when read). */
  bits: number;
  /** libvips's colour space of the file, e.g. `srgb`, `b-w`, `cmyk`, `rgb16`, `grey16`. */
  space: string;
}

const BITS: Record<string, number> = {
  uchar: 8,
  char: 8,
  ushort: 16,
  short: 16,
  uint: 32,
  int: 32,
  float: 32,
  double: 64,
};

/**
 * Reads an image's header (no pixels).
 * @throws {@link InputNotFoundError} when the file is missing, {@link InvalidInputError} when it is not an image.
 * @example
 * const { width, height, alpha, bits } = await readImageHeader('train/0.png');
 */
export async function readImageHeader(path: string): Promise<ImageHeader> {
  const meta = await readMetadata(path, 'Image');
  return {
    width: meta.width!,
    height: meta.height!,
    channels: colourChannels(meta),
    alpha: !!meta.hasAlpha,
    bits: BITS[meta.depth ?? 'uchar'] ?? 8,
    space: String(meta.space ?? ''),
  };
}

/** Colour channels of a file, alpha excluded: 1 for grey files, 3 for RGB (and CMYK, converted). */
function colourChannels(meta: sharp.Metadata): 1 | 3 {
  const channels = (meta.channels ?? 3) - (meta.hasAlpha ? 1 : 0);
  return channels === 1 && meta.space !== 'cmyk' ? 1 : 3;
}

function asUint8(buffer: Buffer): Uint8Array {
  return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
}

/**
 * Reads an image file into 8-bit interleaved pixels. PNG, JPEG and TIFF (first page) are supported, grey or RGB,
 * with or without alpha (alpha is dropped); 16-bit images are scaled to 8 bits. A file stored as grey gives
 * 1 channel, a colour file 3 channels, unless `options.channels` asks otherwise.
 * @returns `data` of shape `[height, width, channels]`.
 * @throws {@link InputNotFoundError} when the file is missing or is not a file.
 * @throws {@link InvalidInputError} when the file is corrupt or not a supported image, with sharp's message.
 * @example
 * const { data, width, height, channels } = await readImage('slices/0.png', { channels: 1 });
 */
export async function readImage(path: string, options: ReadImageOptions = {}): Promise<RasterImage> {
  const wanted = options.channels;
  if (wanted !== undefined && wanted !== 1 && wanted !== 3) {
    throw new InvalidOptionError(
      `readImage("${path}"): expected 1 or 3 for options.channels but received ${describeValue(wanted)}.`,
      'Pass channels: 1 for grey or channels: 3 for RGB, or leave it out to keep the file\u2019s colour space.',
    );
  }
  const meta = await readMetadata(path, 'Image');
  const native = colourChannels(meta);
  const channels = wanted ?? native;
  let pipeline = sharp(path);
  if (channels === 1) {
    pipeline = native === 1 ? pipeline.extractChannel(0) : pipeline.removeAlpha().toColourspace('b-w');
  } else {
    pipeline = pipeline.removeAlpha().toColourspace('srgb');
  }
  const { data, info } = await toRaw(pipeline.raw({ depth: 'uchar' }), path, 'Image');
  if (info.channels !== channels) {
    throw new InvalidInputError(
      `Image "${path}" decoded to ${info.channels} channels, expected ${channels}.`,
      'Convert the image to 8-bit grey or RGB (e.g. `vips colourspace in.tif out.png srgb`).',
    );
  }
  if (data.length !== info.width * info.height * channels) {
    throw new InvalidInputError(
      `Image "${path}" decoded to ${data.length} bytes where ${info.width}x${info.height} pixels of ${channels} ` +
        `channel(s) take ${info.width * info.height * channels}.`,
      READ_HINT,
    );
  }
  return { data: asUint8(data), width: info.width, height: info.height, channels };
}

/**
 * Reads a label mask: one class value (0..255) per pixel. Grey files are read as they are (16-bit masks keep their
 * values, which must be at most 255); a colour file is accepted only when all its colour channels are equal in every
 * pixel, and then its first channel is used.
 * @returns `data` of shape `[height, width]`.
 * @throws {@link InputNotFoundError} when the file is missing.
 * @throws {@link InvalidInputError} when the file is corrupt, is a colour mask (channels differ), or holds values
 * above 255.
 * @example
 * const mask = await readMask('masks/0.png'); // mask.data[y * mask.width + x] is a class value
 */
export async function readMask(path: string): Promise<MaskImage> {
  const meta = await readMetadata(path, 'Mask');
  const native = colourChannels(meta);
  const wide = meta.depth === 'ushort' || meta.depth === 'uint' || meta.depth === 'short' || meta.depth === 'int';
  let pipeline = sharp(path).removeAlpha();
  if (wide) {
    pipeline = pipeline.toColourspace(native === 1 ? 'grey16' : 'rgb16').raw({ depth: 'ushort' });
  } else {
    pipeline = (native === 1 ? pipeline.extractChannel(0) : pipeline.toColourspace('srgb')).raw({ depth: 'uchar' });
  }
  const { data, info } = await toRaw(pipeline, path, 'Mask');
  const { width, height, channels } = info;
  const n = width * height;
  const values: ArrayLike<number> = wide
    ? new Uint16Array(data.buffer, data.byteOffset, data.byteLength / 2)
    : asUint8(data);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const v = values[i * channels];
    for (let c = 1; c < channels; c++) {
      const other = values[i * channels + c];
      if (other !== v) {
        const x = i % width;
        const y = Math.floor(i / width);
        const colour = Array.from({ length: channels }, (_, k) => values[i * channels + k]).join(', ');
        throw new InvalidInputError(
          `Mask "${path}" is a colour image whose channels differ (pixel x=${x}, y=${y} is (${colour})); ` +
            'expected a single-channel mask holding one class value per pixel.',
          'Save the mask as a grey PNG whose pixel values are the class values (e.g. 0 = background, 1 = nucleus); ' +
            'palette PNGs are expanded to colours, so convert them to their index values first.',
        );
      }
    }
    if (v > 255) {
      throw new InvalidInputError(
        `Mask "${path}" holds the value ${v} at pixel x=${i % width}, y=${Math.floor(i / width)}; ` +
          'expected class values between 0 and 255.',
        'Renumber the classes to 0..255 and save the mask as an 8-bit grey PNG.',
      );
    }
    out[i] = v;
  }
  return { data: out, width, height };
}

/**
 * Writes `data` to `path` atomically: it is first written to `path + '.tmp-<pid>-<random>'` in the same folder, then
 * renamed over `path`, so readers never see a half-written file. The temporary file is removed on failure.
 * @param data the content, or its parts in order (written with one `writev`).
 * @param options `durable`: flush the file to the disk before the rename, for files a resumed run trusts (journals,
 *   region results).
 * @throws {@link OutputError} naming `path` when the folder is missing or cannot be written.
 * @example
 * await writeFileAtomic('model/manifest.json', JSON.stringify(manifest, null, 2));
 */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array | readonly Uint8Array[],
  options: { durable?: boolean } = {},
): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  try {
    const handle = await fs.open(tmp, 'w');
    try {
      if (Array.isArray(data)) await handle.writev(data as Uint8Array[]);
      else await handle.writeFile(data as string | Uint8Array);
      if (options.durable) await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(tmp, path);
  } catch (error) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    const code = (error as NodeJS.ErrnoException).code;
    const reason =
      code === 'ENOENT'
        ? `the folder "${dirname(path)}" does not exist`
        : code === 'EACCES' || code === 'EPERM'
          ? `permission to write in "${dirname(path)}" was denied`
          : code === 'EISDIR'
            ? `"${path}" is a folder`
            : (error as Error).message;
    throw new OutputError(
      `Could not write "${path}": ${reason}.`,
      'Create the output folder first, check that it is writable and that the disk is not full.',
      error,
    );
  }
}

/**
 * Encodes an image as PNG and writes it atomically (see {@link writeFileAtomic}). 1 and 2 channel images are saved
 * as grey (+ alpha), 3 and 4 channel images as RGB(A).
 * @param image - `data` of shape `[height, width, channels]`, 8 bits.
 * @throws {@link InvalidOptionError} when `data`'s length does not match `width * height * channels`.
 * @throws {@link OutputError} when the folder cannot be written.
 * @example
 * await writePng('out/0.png', { data: labels, width: 512, height: 512, channels: 1 });
 */
export async function writePng(path: string, image: RasterImage): Promise<void> {
  const { data, width, height, channels } = image;
  const sizeOk = Number.isInteger(width) && width > 0 && Number.isInteger(height) && height > 0;
  if (!sizeOk || ![1, 2, 3, 4].includes(channels) || data.length !== width * height * channels) {
    throw new InvalidOptionError(
      `writePng("${path}"): expected positive integer width and height, 1 to 4 channels and ` +
        `width * height * channels bytes of data, but received width ${describeValue(width)}, height ` +
        `${describeValue(height)}, channels ${describeValue(channels)} and ${data.length} bytes.`,
      'Pass data of length width * height * channels, laid out row by row with interleaved channels.',
    );
  }
  let pipeline = sharp(data, { raw: { width, height, channels: channels as 1 | 2 | 3 | 4 } });
  if (channels <= 2) pipeline = pipeline.toColourspace('b-w');
  const png = await pipeline.png().toBuffer();
  await writeFileAtomic(path, png);
}

/**
 * The file name without its folder and its last extension: `imageStem('/data/images/slice_07.tif')` is
 * `'slice_07'`; `'a.ome.tif'` gives `'a.ome'`.
 */
export function imageStem(path: string): string {
  const name = basename(path);
  const ext = extname(name);
  return ext ? name.slice(0, -ext.length) : name;
}
