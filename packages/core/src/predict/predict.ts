import type * as tfl from '@tensorflow/tfjs-layers';
import { InvalidOptionError } from '../errors.js';
import { isPredictor, tfjsPredictor, type Predictor } from './predictor.js';

/** A normalised image held in memory: `[height, width, channels]` float32, interleaved. */
export interface FloatImage {
  data: Float32Array;
  width: number;
  height: number;
  channels: number;
}

/** Options of {@link predictProbabilities}. */
export interface PredictOptions {
  /** Height and width given to the network must be multiples of this (the architecture's input multiple). */
  multiple: number;
  /**
   * Side of the square windows the image is cut into. Default: the whole image in one pass when it has at
   * most `maxWholePixels` pixels, else 512 rounded to the multiple.
   */
  tile?: number;
  /** Overlap of neighbouring windows in pixels. Default: a quarter of the tile. */
  overlap?: number;
  /** Largest image (pixels) predicted in one pass when no tile is given. Default 4 Mpx. */
  maxWholePixels?: number;
  /** Windows predicted together. Default 1. */
  batchSize?: number;
}

/** Mirror-pads `image` to `height` x `width` (reflecting at the bottom and right edges). */
export function padReflect(image: FloatImage, height: number, width: number): FloatImage {
  const { data, width: w, height: h, channels: c } = image;
  if (height === h && width === w) return image;
  const out = new Float32Array(height * width * c);
  const reflect = (i: number, n: number) => {
    if (n === 1) return 0;
    const period = 2 * (n - 1);
    let m = i % period;
    if (m < 0) m += period;
    return m < n ? m : period - m;
  };
  for (let y = 0; y < height; y++) {
    const sy = reflect(y, h);
    for (let x = 0; x < width; x++) {
      const sx = reflect(x, w);
      const src = (sy * w + sx) * c;
      const dst = (y * width + x) * c;
      for (let k = 0; k < c; k++) out[dst + k] = data[src + k];
    }
  }
  return { data: out, width, height, channels: c };
}

async function runWindows(predictor: Predictor, windows: FloatImage[]): Promise<Float32Array[]> {
  const { width, height, channels } = windows[0];
  const batch = new Float32Array(windows.length * width * height * channels);
  windows.forEach((w, i) => batch.set(w.data, i * w.data.length));
  const values = await predictor.run(batch, [windows.length, height, width, channels]);
  const per = values.length / windows.length;
  return windows.map((_, i) => values.subarray(i * per, (i + 1) * per));
}

/** 2-D Gaussian-like window weights that fall to a small positive value at the edges. */
export function blendWeights(size: number): Float32Array {
  const sigma = size / 8;
  const centre = (size - 1) / 2;
  const line = new Float32Array(size);
  for (let i = 0; i < size; i++) line[i] = Math.max(Math.exp(-((i - centre) ** 2) / (2 * sigma * sigma)), 1e-3);
  const out = new Float32Array(size * size);
  for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) out[y * size + x] = line[y] * line[x];
  return out;
}

/**
 * Per-pixel class probabilities of a normalised image, `[height, width, numClasses]` interleaved.
 * Small images go through the network in one pass (mirror-padded up to the input multiple); larger
 * ones are cut into overlapping windows blended with Gaussian weights.
 *
 * @throws InvalidOptionError for a tile that is not a multiple of `multiple` or an overlap >= tile.
 * @example
 * ```ts
 * const probs = await predictProbabilities(model, image, { multiple: 16 });
 * ```
 */
export async function predictProbabilities(
  network: tfl.LayersModel | Predictor,
  image: FloatImage,
  options: PredictOptions,
): Promise<Float32Array> {
  const predictor = isPredictor(network) ? network : tfjsPredictor(network);
  const { multiple } = options;
  const roundUp = (n: number) => Math.ceil(n / multiple) * multiple;
  const { width, height } = image;
  const maxWhole = options.maxWholePixels ?? 4 * 1024 * 1024;
  if (options.tile === undefined && roundUp(width) * roundUp(height) <= maxWhole) {
    const padded = padReflect(image, roundUp(height), roundUp(width));
    const probs = (await runWindows(predictor, [padded]))[0];
    const k = probs.length / (padded.width * padded.height);
    if (padded === image) return probs;
    const out = new Float32Array(width * height * k);
    for (let y = 0; y < height; y++)
      out.set(probs.subarray(y * padded.width * k, (y * padded.width + width) * k), y * width * k);
    return out;
  }
  const tile = options.tile ?? roundUp(512);
  if (tile % multiple !== 0 || tile <= 0) {
    throw new InvalidOptionError(
      `Expected a tile size that is a positive multiple of ${multiple} but received ${tile}.`,
      `Use --tile ${roundUp(tile)}.`,
    );
  }
  const overlap = options.overlap ?? Math.floor(tile / 4);
  if (!(overlap >= 0 && overlap < tile)) {
    throw new InvalidOptionError(`Expected an overlap between 0 and ${tile - 1} pixels but received ${overlap}.`);
  }
  const paddedImage = padReflect(image, Math.max(height, tile), Math.max(width, tile));
  const H = paddedImage.height;
  const W = paddedImage.width;
  const stride = tile - overlap;
  const starts = (n: number) => {
    const s: number[] = [];
    for (let p = 0; ; p += stride) {
      if (p + tile >= n) {
        s.push(n - tile);
        break;
      }
      s.push(p);
    }
    return s;
  };
  const weights = blendWeights(tile);
  let acc: Float32Array | undefined;
  let k = 0;
  const norm = new Float32Array(H * W);
  const c = image.channels;
  const locations = starts(H).flatMap((y) => starts(W).map((x) => [y, x] as const));
  const batchSize = options.batchSize ?? 1;
  for (let i = 0; i < locations.length; i += batchSize) {
    const group = locations.slice(i, i + batchSize);
    const windows = group.map(([y0, x0]) => {
      const data = new Float32Array(tile * tile * c);
      for (let y = 0; y < tile; y++) {
        data.set(paddedImage.data.subarray(((y0 + y) * W + x0) * c, ((y0 + y) * W + x0 + tile) * c), y * tile * c);
      }
      return { data, width: tile, height: tile, channels: c };
    });
    const results = await runWindows(predictor, windows);
    group.forEach(([y0, x0], j) => {
      const probs = results[j];
      if (!acc) {
        k = probs.length / (tile * tile);
        acc = new Float32Array(H * W * k);
      }
      for (let y = 0; y < tile; y++) {
        for (let x = 0; x < tile; x++) {
          const w = weights[y * tile + x];
          const p = (y0 + y) * W + x0 + x;
          norm[p] += w;
          const src = (y * tile + x) * k;
          for (let q = 0; q < k; q++) acc![p * k + q] += w * probs[src + q];
        }
      }
    });
  }
  const out = new Float32Array(width * height * k);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const p = y * W + x;
      for (let q = 0; q < k; q++) out[(y * width + x) * k + q] = acc![p * k + q] / norm[p];
    }
  }
  return out;
}
