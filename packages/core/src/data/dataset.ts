/**
 * Training data sets on disk: a folder of images and a folder of label masks matched by file name, loaded into
 * normalized float images and class-index label maps.
 */

import { promises as fs } from 'node:fs';
import { extname, join, resolve } from 'node:path';
import { DatasetError, InputNotFoundError, InvalidOptionError, describeValue } from '../errors.js';
import { type ClassMap, encodeMask, makeLabelLookup } from './class-map.js';
import { IMAGE_EXTENSIONS, type RasterImage, imageStem, readImage, readImageHeader, readMask } from './image-io.js';

/** An image and its label mask, matched by file stem. */
export interface SamplePair {
  /** The image's file name without extension, e.g. `'slice_07'`. */
  stem: string;
  imagePath: string;
  maskPath: string;
}

/** An image and its labels in memory, ready for cropping and augmentation. */
export interface LoadedSample {
  stem: string;
  /** Normalized pixels `(v / 255 - mean[c]) / std[c]`, shape `[height, width, channels]` (HWC). */
  image: Float32Array;
  /** Class indices `0..K-1`, `-1` for ignored pixels, shape `[height, width]`. */
  labels: Int16Array;
  width: number;
  height: number;
  channels: number;
}

/** Per-channel normalization applied to `v / 255`: `(v / 255 - mean[c]) / std[c]`. */
export interface Normalization {
  /** One mean per channel, in `[0, 1]` units. */
  mean: number[];
  /** One standard deviation per channel, `> 0`. */
  std: number[];
}

/** Options of {@link loadSamples}. */
export interface LoadSamplesOptions {
  /** Classes of the masks; values not in it raise a DatasetError. */
  classMap: ClassMap;
  /**
   * Channels of the loaded images. Default: `1` when every image is grey (stored as grey, or colour with all
   * channels equal in every pixel, as some tools save grey PNGs), otherwise `3` (grey images are then expanded to
   * RGB). `1` converts colour images to luminance, `3` expands grey images.
   */
  channels?: 1 | 3;
  /** One mean and std per channel (see {@link computeNormalization}). */
  normalization: Normalization;
}

const MASK_SUFFIXES = ['_mask', '-mask'];

/**
 * Compares strings in natural order: runs of digits compare by numeric value (`'2' < '10'`), other text by code
 * unit; ties (e.g. `'01'` and `'1'`) are broken by plain comparison so the order is total.
 */
export function naturalCompare(a: string, b: string): number {
  const ta = a.match(/\d+|\D+/g) ?? [];
  const tb = b.match(/\d+|\D+/g) ?? [];
  for (let i = 0; i < Math.min(ta.length, tb.length); i++) {
    const x = ta[i];
    const y = tb[i];
    if (x === y) continue;
    const dx = /^\d/.test(x);
    const dy = /^\d/.test(y);
    if (dx && dy) {
      const nx = x.replace(/^0+(?=\d)/, '');
      const ny = y.replace(/^0+(?=\d)/, '');
      if (nx.length !== ny.length) return nx.length - ny.length;
      if (nx !== ny) return nx < ny ? -1 : 1;
      continue;
    }
    return x < y ? -1 : 1;
  }
  if (ta.length !== tb.length) return ta.length - tb.length;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Image files (by extension, case-insensitive, hidden files skipped) of a folder, with their stems. */
async function listImageFiles(dir: string, role: 'Images' | 'Masks'): Promise<{ stem: string; path: string }[]> {
  let stat;
  try {
    stat = await fs.stat(dir);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new InputNotFoundError(
      code === 'ENOENT'
        ? `${role} folder "${dir}" does not exist.`
        : code === 'ELOOP'
          ? `${role} folder "${dir}" cannot be opened: its symbolic links form a loop.`
          : `${role} folder "${dir}" cannot be read (${(error as Error).message}).`,
      code === 'ELOOP'
        ? 'Point the link at the folder itself (`ls -l` shows where each link leads).'
        : `Check the ${role.toLowerCase()} folder path (relative paths start from the current folder).`,
      error,
    );
  }
  if (!stat.isDirectory()) {
    throw new InputNotFoundError(
      `${role} folder "${dir}" is not a folder; expected a folder of ${role.toLowerCase()}.`,
      `Pass the folder that holds the ${role.toLowerCase()}, not a file.`,
    );
  }
  const entries = await fs.readdir(dir, { withFileTypes: true });
  const files: { stem: string; path: string }[] = [];
  for (const entry of entries) {
    if (entry.name.startsWith('.') || !IMAGE_EXTENSIONS.includes(extname(entry.name).toLowerCase())) continue;
    const path = join(dir, entry.name);
    if (entry.isFile() || (entry.isSymbolicLink() && (await fs.stat(path).catch(() => undefined))?.isFile())) {
      files.push({ stem: imageStem(entry.name), path });
    }
  }
  return files.sort((a, b) => naturalCompare(a.stem, b.stem) || naturalCompare(a.path, b.path));
}

function listNames(names: string[], max = 5): string {
  const shown = names.slice(0, max).join(', ');
  return names.length > max ? `${shown} and ${names.length - max} more` : shown;
}

/**
 * Lists the images of `imagesDir` (`.png .jpg .jpeg .tif .tiff`, any case, hidden files skipped) and finds each
 * one's mask in `masksDir` by file stem: image `a.tif` matches mask `a.*`, `a_mask.*` or `a-mask.*` (any supported
 * extension). Masks without an image are ignored. When both folders are the same, only the `_mask`/`-mask` names
 * are masks and the other files are images.
 * @returns The pairs sorted by stem in natural order (`2` before `10`).
 * @throws {@link InputNotFoundError} when a folder is missing or is not a folder.
 * @throws {@link DatasetError} when there are no images, two images share a stem, an image matches several masks,
 * or images have no mask (listing up to 5 stems).
 * @example
 * const pairs = await pairImagesAndMasks('data/train/image', 'data/train/label');
 */
export async function pairImagesAndMasks(imagesDir: string, masksDir: string): Promise<SamplePair[]> {
  const sameFolder = resolve(imagesDir) === resolve(masksDir);
  const isMaskName = (stem: string) => MASK_SUFFIXES.some((s) => stem.endsWith(s) && stem.length > s.length);
  let images = await listImageFiles(imagesDir, 'Images');
  if (sameFolder) images = images.filter((f) => !isMaskName(f.stem));
  const masks = sameFolder
    ? (await listImageFiles(masksDir, 'Masks')).filter((f) => isMaskName(f.stem))
    : await listImageFiles(masksDir, 'Masks');
  if (images.length === 0) {
    throw new DatasetError(
      `Images folder "${imagesDir}" holds no image files; expected files ending in ` +
        `${IMAGE_EXTENSIONS.join(', ')} (any case).`,
      'Point the images folder at the folder that holds the training images, or convert them to PNG or TIFF.',
    );
  }
  const imageByStem = new Map<string, string>();
  for (const { stem, path } of images) {
    const other = imageByStem.get(stem);
    if (other !== undefined) {
      throw new DatasetError(
        `Images folder "${imagesDir}" holds two images with the stem "${stem}": "${other}" and "${path}"; ` +
          'expected one image per stem, since masks are matched by stem.',
        'Remove or rename one of the two images.',
      );
    }
    imageByStem.set(stem, path);
  }
  const masksByStem = new Map<string, string[]>();
  for (const { stem, path } of masks) masksByStem.set(stem, [...(masksByStem.get(stem) ?? []), path]);
  const pairs: SamplePair[] = [];
  const missing: string[] = [];
  for (const { stem, path } of images) {
    const candidates = [sameFolder ? [] : (masksByStem.get(stem) ?? [])]
      .concat(MASK_SUFFIXES.map((s) => masksByStem.get(stem + s) ?? []))
      .flat();
    if (candidates.length === 0) {
      missing.push(stem);
    } else if (candidates.length > 1) {
      throw new DatasetError(
        `Image "${path}" matches ${candidates.length} masks in "${masksDir}": ${candidates.map((c) => `"${c}"`).join(', ')}; ` +
          'expected exactly one mask per image.',
        'Remove or rename the extra masks so that each image stem has one mask.',
      );
    } else {
      pairs.push({ stem, imagePath: path, maskPath: candidates[0] });
    }
  }
  if (missing.length > 0) {
    throw new DatasetError(
      `${missing.length} of ${images.length} images in "${imagesDir}" have no mask in "${masksDir}": ` +
        `${listNames(missing)}.`,
      `Masks are matched by file name: image "${missing[0]}.<ext>" needs a mask "${missing[0]}.<ext>", ` +
        `"${missing[0]}_mask.<ext>" or "${missing[0]}-mask.<ext>" in "${masksDir}". Add the missing masks or move ` +
        'those images out of the folder.',
    );
  }
  return pairs;
}

/** Runs `fn` over `items` with at most `limit` at a time, keeping the order of the results. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>) {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

function channelsEqual(image: RasterImage): boolean {
  const { data, channels } = image;
  if (channels === 1) return true;
  for (let i = 0; i < data.length; i += channels) {
    for (let c = 1; c < channels; c++) if (data[i + c] !== data[i]) return false;
  }
  return true;
}

/** Converts grey-equal colour to 1 channel, or grey to 3 channels; other images are returned as they are. */
function withChannels(image: RasterImage, channels: number): RasterImage {
  if (image.channels === channels) return image;
  const n = image.width * image.height;
  const data = new Uint8Array(n * channels);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < channels; c++)
      data[i * channels + c] = image.data[i * image.channels + Math.min(c, image.channels - 1)];
  }
  return { ...image, data, channels };
}

/**
 * Checks a normalization against a channel count.
 * @throws {@link InvalidOptionError} when `mean`/`std` do not have one finite entry per channel or a std is `<= 0`.
 */
export function validateNormalization(normalization: Normalization, channels: number): void {
  const { mean, std } = normalization ?? ({} as Partial<Normalization>);
  const ok =
    Array.isArray(mean) &&
    Array.isArray(std) &&
    mean.length === channels &&
    std.length === channels &&
    mean.every(Number.isFinite) &&
    std.every((s) => Number.isFinite(s) && s > 0);
  if (!ok) {
    throw new InvalidOptionError(
      `normalization: expected ${channels} finite mean value(s) and ${channels} std value(s) > 0 (one per channel) ` +
        `but received mean ${describeValue(mean)} and std ${describeValue(std)}.`,
      `Compute them with computeNormalization() over the training images, or use mean ${JSON.stringify(
        new Array(channels).fill(0.5),
      )} and std ${JSON.stringify(new Array(channels).fill(0.25))}.`,
    );
  }
}

/**
 * Normalizes 8-bit pixels: `(v / 255 - mean[c]) / std[c]`.
 * @returns `Float32Array` of shape `[height, width, channels]`.
 * @throws {@link InvalidOptionError} when the normalization does not match `image.channels`.
 * @example
 * const input = normalizeImage(await readImage('a.png'), { mean: [0.5], std: [0.25] });
 */
export function normalizeImage(image: RasterImage, normalization: Normalization): Float32Array {
  const out = new Float32Array(image.data.length);
  normalizeWindow(image, { left: 0, width: image.width, height: image.height }, normalization, out, 0);
  return out;
}

/**
 * {@link normalizeImage} of the `width` x `height` window at column `left` of `image` (from its top row), written
 * into `out` from element `offset`: to fill a batch of network inputs in place, several tiles cut from one region.
 * @throws {@link InvalidOptionError} when the normalization does not match `image.channels`.
 */
export function normalizeWindow(
  image: RasterImage,
  window: { left: number; width: number; height: number },
  normalization: Normalization,
  out: Float32Array,
  offset: number,
): void {
  const { channels, data } = image;
  validateNormalization(normalization, channels);
  const scale = normalization.std.map((s) => 1 / (255 * s));
  const shift = normalization.mean.map((m, c) => m / normalization.std[c]);
  const rowLength = window.width * channels;
  for (let r = 0, o = offset; r < window.height; r++) {
    const from = (r * image.width + window.left) * channels;
    for (let i = from; i < from + rowLength; i += channels, o += channels) {
      for (let c = 0; c < channels; c++) out[o + c] = data[i + c] * scale[c] - shift[c];
    }
  }
}

/**
 * Per-channel mean and standard deviation of `v / 255` over every pixel of `images` (all with the same channel
 * count). A constant channel (std below 1e-6) gets std 1, so normalization only centres it.
 * @throws {@link InvalidOptionError} when `images` is empty or channel counts differ.
 * @example
 * const normalization = computeNormalization(images); // e.g. { mean: [0.49], std: [0.17] }
 */
export function computeNormalization(images: readonly RasterImage[]): Normalization {
  if (images.length === 0) {
    throw new InvalidOptionError(
      'computeNormalization(images): expected at least one image but received none.',
      'Pass the training images.',
    );
  }
  const channels = images[0].channels;
  const odd = images.find((im) => im.channels !== channels);
  if (odd !== undefined) {
    throw new InvalidOptionError(
      `computeNormalization(images): expected every image to have ${channels} channel(s) like the first, but one ` +
        `has ${odd.channels}.`,
      'Read all images with the same channels option (readImage(path, { channels })).',
    );
  }
  const sum = new Float64Array(channels);
  const sumSq = new Float64Array(channels);
  let count = 0;
  for (const { data } of images) {
    // Accumulate per image in integers (exact), then fold into the float totals.
    const s = new Float64Array(channels);
    const q = new Float64Array(channels);
    for (let i = 0; i < data.length; i += channels) {
      for (let c = 0; c < channels; c++) {
        const v = data[i + c];
        s[c] += v;
        q[c] += v * v;
      }
    }
    for (let c = 0; c < channels; c++) {
      sum[c] += s[c];
      sumSq[c] += q[c];
    }
    count += data.length / channels;
  }
  const mean: number[] = [];
  const std: number[] = [];
  for (let c = 0; c < channels; c++) {
    const m = sum[c] / count;
    const variance = Math.max(0, sumSq[c] / count - m * m);
    const sd = Math.sqrt(variance) / 255;
    mean.push(m / 255);
    std.push(sd < 1e-6 ? 1 : sd);
  }
  return { mean, std };
}

/**
 * Reads pairs into memory: normalized images and class-index labels. Each mask must have its image's size; mask
 * values are mapped through `options.classMap` (the ignore value becomes `-1`).
 * @param pairs - From {@link pairImagesAndMasks}.
 * @returns One sample per pair, in the same order, all with the same channel count.
 * @throws {@link DatasetError} when a mask's size differs from its image's (naming both files and sizes) or a mask
 * holds a value the class map does not know.
 * @throws {@link InvalidOptionError} when the normalization does not have one entry per channel.
 * @throws {@link InputNotFoundError} / {@link InvalidInputError} when a file is missing or unreadable.
 * @example
 * const samples = await loadSamples(pairs, { classMap, normalization: { mean: [0.5], std: [0.2] } });
 */
export async function loadSamples(pairs: readonly SamplePair[], options: LoadSamplesOptions): Promise<LoadedSample[]> {
  const { classMap, normalization } = options;
  const wanted = options.channels;
  if (wanted !== undefined && wanted !== 1 && wanted !== 3) {
    throw new InvalidOptionError(
      `loadSamples: expected 1 or 3 for options.channels but received ${describeValue(wanted)}.`,
      'Pass channels: 1 (grey) or 3 (RGB), or leave it out to decide from the images.',
    );
  }
  const lookup = makeLabelLookup(classMap);
  const loaded = await mapLimit(pairs, 4, async (pair) => {
    const [image, mask] = await Promise.all([
      readImage(pair.imagePath, wanted === undefined ? {} : { channels: wanted }),
      readMask(pair.maskPath),
    ]);
    if (mask.width !== image.width || mask.height !== image.height) {
      throw new DatasetError(
        `Mask "${pair.maskPath}" is ${mask.width}x${mask.height} pixels but its image "${pair.imagePath}" is ` +
          `${image.width}x${image.height}; expected the same size.`,
        'Export the mask at the image\u2019s full resolution (resize with nearest neighbour if you must), or ' +
          'check that the mask belongs to this image.',
      );
    }
    return { pair, image, labels: encodeMask(mask.data, lookup, pair.maskPath) };
  });
  const channels = wanted ?? (loaded.every(({ image }) => channelsEqual(image)) ? 1 : 3);
  if (loaded.length > 0) validateNormalization(normalization, channels);
  return loaded.map(({ pair, image, labels }) => {
    const raster = withChannels(image, channels);
    return {
      stem: pair.stem,
      image: normalizeImage(raster, normalization),
      labels,
      width: raster.width,
      height: raster.height,
      channels,
    };
  });
}

/**
 * The distinct values found in the masks of `pairs`, to build a class map with `inferClassMap`.
 * @throws {@link InputNotFoundError} / {@link InvalidInputError} when a mask is missing or unreadable.
 * @example
 * const classMap = inferClassMap(await collectMaskValues(pairs));
 */
export async function collectMaskValues(pairs: readonly SamplePair[]): Promise<Set<number>> {
  const values = new Set<number>();
  await mapLimit(pairs, 4, async (pair) => {
    const seen = new Uint8Array(256);
    for (const v of (await readMask(pair.maskPath)).data) seen[v] = 1;
    seen.forEach((flag, v) => {
      if (flag) values.add(v);
    });
  });
  return values;
}

/** A remark about a training data set: what reading it converts (`info`), or what looks wrong (`warning`). */
export interface DataNotice {
  level: 'info' | 'warning';
  message: string;
}

/** Smallest side of a training image, in pixels: smaller images hold no tissue to learn from. */
export const MIN_TRAINING_IMAGE_SIDE = 8;

/** A class with fewer labelled pixels than this share of all labelled pixels (or than 64 pixels) is warned about. */
export const RARE_CLASS_SHARE = 1e-4;

function listed(stems: string[], max = 3): string {
  return stems.slice(0, max).join(', ') + (stems.length > max ? ` and ${stems.length - max} more` : '');
}

/**
 * Checks the images of a data set from their headers, before any pixel is loaded: refuses images too small to train
 * on, and says what reading them as 8-bit `channels`-channel images converts (alpha dropped, 16-bit samples scaled to
 * 8 bits, CMYK converted to RGB, grey expanded to RGB or colour reduced to grey).
 * @returns one `info` notice per kind of conversion, naming how many images and which.
 * @throws {@link DatasetError} (exit code 6) for an image smaller than {@link MIN_TRAINING_IMAGE_SIDE} on a side.
 * @example
 * for (const n of await inspectImages(pairs, 3)) console.log(n.message);
 */
export async function inspectImages(pairs: readonly SamplePair[], channels: 1 | 3): Promise<DataNotice[]> {
  const headers = await mapLimit(pairs, 8, async (pair) => ({ pair, header: await readImageHeader(pair.imagePath) }));
  const tiny = headers.filter(
    ({ header }) => header.width < MIN_TRAINING_IMAGE_SIDE || header.height < MIN_TRAINING_IMAGE_SIDE,
  );
  if (tiny.length > 0) {
    const { pair, header } = tiny[0];
    throw new DatasetError(
      `Image "${pair.imagePath}" is ${header.width}x${header.height} pixels; expected at least ` +
        `${MIN_TRAINING_IMAGE_SIDE}x${MIN_TRAINING_IMAGE_SIDE}` +
        (tiny.length > 1 ? ` (${tiny.length} images are too small: ${listed(tiny.map((t) => t.pair.stem))})` : '') +
        '.',
      'Remove the image and its mask from the data set, or export it at its full size.',
    );
  }
  const notices: DataNotice[] = [];
  const note = (which: typeof headers, what: string) => {
    if (which.length === 0) return;
    const stems = which.map((h) => h.pair.stem);
    notices.push({
      level: 'info',
      message: `${which.length} of ${headers.length} images ${what} (${listed(stems)})`,
    });
  };
  note(
    headers.filter((h) => h.header.alpha),
    'have an alpha channel, dropped when read',
  );
  note(
    headers.filter((h) => h.header.bits > 8),
    'have more than 8 bits per sample, scaled to 8 bits',
  );
  note(
    headers.filter((h) => h.header.space === 'cmyk'),
    'are CMYK, converted to RGB',
  );
  if (channels === 3)
    note(
      headers.filter((h) => h.header.channels === 1),
      'are grey, expanded to RGB to match the others',
    );
  else
    note(
      headers.filter((h) => h.header.channels === 3),
      'are colour, converted to grey',
    );
  return notices;
}

/**
 * Counts the labelled pixels of each class over loaded samples and warns about classes that have none or very few
 * (under {@link RARE_CLASS_SHARE} of the labelled pixels, or under 64): a stray mask value becomes such a class when
 * the classes are inferred from the masks.
 * @param inferred - whether the class map was inferred from the masks (no `--classes`): the warning then says how to
 * name the classes.
 * @example
 * const notices = classPixelNotices(samples, classMap, true);
 */
export function classPixelNotices(
  samples: readonly LoadedSample[],
  classMap: ClassMap,
  inferred: boolean,
): DataNotice[] {
  const k = classMap.classes.length;
  const counts = new Array<number>(k).fill(0);
  const where: string[][] = Array.from({ length: k }, () => []);
  for (const sample of samples) {
    const own = new Array<number>(k).fill(0);
    for (const label of sample.labels) if (label >= 0 && label < k) own[label]++;
    own.forEach((n, c) => {
      counts[c] += n;
      if (n > 0) where[c].push(sample.stem);
    });
  }
  const total = counts.reduce((a, b) => a + b, 0);
  const notices: DataNotice[] = [];
  classMap.classes.forEach((cls, c) => {
    const n = counts[c];
    if (total === 0 || (n >= 64 && n / total >= RARE_CLASS_SHARE)) return;
    const name = `Class "${cls.name}" (mask value ${cls.value})`;
    const share = total > 0 ? ` (${((100 * n) / total).toPrecision(2)}% of the labelled pixels)` : '';
    const why = inferred
      ? ' Without --classes every value found in the masks becomes a class: if this value is a stray one, pass ' +
        '--classes with the real classes (values outside them are then refused), or fix the masks.'
      : ' The network will hardly learn it: check the masks, or merge it into another class.';
    notices.push({
      level: 'warning',
      message:
        n === 0
          ? `${name} has no pixels in the masks.${why}`
          : `${name} has only ${n} pixel(s)${share}, in ${listed(where[c])}.${why}`,
    });
  });
  return notices;
}
