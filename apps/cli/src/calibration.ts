import { createHash } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import {
  IMAGE_EXTENSIONS,
  imageStem,
  InputNotFoundError,
  InvalidInputError,
  naturalCompare,
  normalizeWindow,
  readImage,
  type ModelManifest,
} from '@tessera/core';
import type { InputTensor } from '@tessera/onnx';

/** Images sampled for calibration (evenly spaced in their sorted order). */
export const CALIBRATION_IMAGES = 8;
/** Tiles cut from them, at most (spread evenly over each image's grid of whole tiles). */
export const CALIBRATION_TILES = 32;

/** Calibration tiles for int8 quantization, with what they were cut from. */
export interface CalibrationSet {
  /** Normalised tiles `[1, tileSize, tileSize, channels]`. */
  tiles: InputTensor[];
  /** The images the tiles were cut from (of those sampled, the ones holding a whole tile). */
  files: string[];
  tileSize: number;
  /** SHA-256 of the tiles' 8-bit pixels, in order. */
  sha256: string;
  /** Where the images came from: `'--calibration'` or `'training images'`. */
  source: string;
}

const HINT = 'Give calibration images with --calibration <images or folders>.';

async function imagesOf(folder: string): Promise<string[]> {
  const names = (await readdir(folder)).filter(
    (n) => !n.startsWith('.') && IMAGE_EXTENSIONS.includes(extname(n).toLowerCase()),
  );
  return names.sort(naturalCompare).map((n) => join(folder, n));
}

/** The images named by `--calibration`: files as given, folders' images in natural order. */
async function expandCalibration(inputs: readonly string[]): Promise<string[]> {
  const files: string[] = [];
  for (const input of inputs) {
    const info = await stat(input).catch((error: unknown) => {
      throw new InputNotFoundError(`Calibration input ${input} does not exist or cannot be read.`, HINT, error);
    });
    files.push(...(info.isDirectory() ? await imagesOf(input) : [input]));
  }
  if (files.length === 0) {
    throw new InputNotFoundError(
      `--calibration ${inputs.join(' ')} holds no images (${IMAGE_EXTENSIONS.join(', ')}).`,
      HINT,
    );
  }
  return files;
}

/** The training images recorded in the model's manifest. */
async function trainingImages(dir: string, manifest: ModelManifest): Promise<string[]> {
  const data = manifest.training?.data;
  if (!data) {
    throw new InputNotFoundError(
      `Model ${dir} records no training images to calibrate on (its manifest.json has no "training").`,
      HINT,
    );
  }
  const stems = new Set(data.trainStems);
  const files = await imagesOf(data.images).catch(() => []);
  const training = files.filter((f) => stems.has(imageStem(f)));
  if (training.length === 0) {
    throw new InputNotFoundError(
      `The training images of model ${dir} are no longer in ${data.images} (none of its ${stems.size} training stems is there).`,
      HINT,
    );
  }
  return training;
}

/** `count` indices spread evenly over `0 .. n - 1`. */
function spread(n: number, count: number): number[] {
  if (n <= count) return Array.from({ length: n }, (_, i) => i);
  return Array.from({ length: count }, (_, i) => Math.floor(((i + 0.5) * n) / count));
}

/**
 * Calibration tiles for `tessera export --quantize int8`: from `inputs` (images or folders of images) or, without
 * them, the model's training images (its manifest's training record), up to {@link CALIBRATION_IMAGES} images evenly
 * spaced in sorted order, each cut into whole tiles of the model's tile size (rounded up to its input multiple), up to
 * {@link CALIBRATION_TILES} tiles spread evenly over them, normalised as the model expects.
 *
 * @throws InputNotFoundError when there are no images (no training record, the folder gone, an empty --calibration).
 * @throws InvalidInputError when no image holds a whole tile.
 */
export async function calibrationSet(
  dir: string,
  manifest: ModelManifest,
  inputs: readonly string[] = [],
): Promise<CalibrationSet> {
  const all = inputs.length ? await expandCalibration(inputs) : await trainingImages(dir, manifest);
  const files = spread(all.length, CALIBRATION_IMAGES).map((i) => all[i]);
  const multiple = manifest.architecture.inputMultiple;
  const size = Math.ceil(manifest.tileSize / multiple) * multiple;
  const channels = manifest.inputChannels;
  const perImage = Math.ceil(CALIBRATION_TILES / files.length);
  const tiles: InputTensor[] = [];
  const used: string[] = [];
  const hash = createHash('sha256');
  for (const file of files) {
    if (tiles.length === CALIBRATION_TILES) break;
    const image = await readImage(file, { channels: channels as 1 | 3 });
    const columns = Math.floor(image.width / size);
    const rows = Math.floor(image.height / size);
    const cells = spread(columns * rows, Math.min(perImage, CALIBRATION_TILES - tiles.length));
    if (cells.length) used.push(file);
    for (const cell of cells) {
      const [left, top] = [(cell % columns) * size, Math.floor(cell / columns) * size];
      const below = { ...image, data: image.data.subarray(top * image.width * channels), height: image.height - top };
      const data = new Float32Array(size * size * channels);
      normalizeWindow(below, { left, width: size, height: size }, manifest.normalization, data, 0);
      for (let y = 0; y < size; y++) {
        const from = ((top + y) * image.width + left) * channels;
        hash.update(image.data.subarray(from, from + size * channels));
      }
      tiles.push({ data, shape: [1, size, size, channels] });
    }
  }
  if (tiles.length === 0) {
    throw new InvalidInputError(
      `No calibration image holds a whole ${size} x ${size} tile (the model's tile size): ${files.join(', ')}.`,
      `Give larger images with --calibration.`,
    );
  }
  return {
    tiles,
    files: used,
    tileSize: size,
    sha256: hash.digest('hex'),
    source: inputs.length ? '--calibration' : 'training images',
  };
}
