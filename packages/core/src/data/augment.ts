/**
 * Seeded data augmentation for training crops: one random affine crop (flip, quarter turns, free rotation, scale)
 * followed by colour jitter (brightness, contrast, saturation, hue, and H&E stain jitter for RGB histology).
 *
 * Every random function takes a {@link Random} and says so in its name (`rand*`); the same seed gives the same
 * output on every run.
 */

import { InvalidOptionError, describeValue } from '../errors.js';
import { IGNORE_INDEX } from './class-map.js';
import { type LoadedSample, type Normalization, validateNormalization } from './dataset.js';
import type { Random } from './random.js';

/**
 * Augmentations of {@link randCropAugment}. A field left out is off (`{}` = no augmentation, only a random crop
 * position); spread {@link DEFAULT_AUGMENT} for the recommended set: `{ ...DEFAULT_AUGMENT, rotate: 20 }`.
 */
export interface AugmentOptions {
  /** Random horizontal and vertical flips, each with probability 1/2. */
  flip?: boolean;
  /** Random rotation by 0, 90, 180 or 270 degrees (exact, no interpolation). */
  rotate90?: boolean;
  /** Largest free rotation in degrees, uniform in `[-rotate, rotate]`; `0` = off. At most 180. */
  rotate?: number;
  /** Zoom range `[min, max]`, log-uniform, e.g. `[0.8, 1.25]` (above 1 magnifies); `[1, 1]` = off. */
  scale?: [number, number];
  /** Largest brightness shift, added to values in `[0, 1]`: uniform in `[-brightness, brightness]`; `0` = off. */
  brightness?: number;
  /** Largest contrast change: values move away from the crop's mean by a factor in `[1 - c, 1 + c]`; `0` = off. */
  contrast?: number;
  /** Largest hue shift in turns (`0.5` = half the colour wheel), uniform in `[-hue, hue]`; RGB only; `0` = off. */
  hue?: number;
  /** Largest saturation change, factor uniform in `[1 - s, 1 + s]`; RGB only; `0` = off. */
  saturation?: number;
  /**
   * HED stain jitter sigma (Tellez et al. 2018): each stain concentration `C` becomes `C * (1 + a) + b` with `a`, `b`
   * drawn from `N(0, sigma)` per stain and crop; RGB only; `0` = off. Typical values 0.02..0.1.
   */
  stain?: number;
}

/** {@link AugmentOptions} with every field filled. */
export type ResolvedAugmentOptions = Required<AugmentOptions>;

/**
 * Recommended augmentation: random flips and quarter turns (exact, safe for any microscopy image), brightness and
 * contrast jitter of 0.1. Free rotation, scaling, hue, saturation and stain jitter are off; turn them on per data
 * set (e.g. `stain: 0.05` for H&E histology).
 */
export const DEFAULT_AUGMENT: Readonly<ResolvedAugmentOptions> = Object.freeze({
  flip: true,
  rotate90: true,
  rotate: 0,
  scale: [1, 1] as [number, number],
  brightness: 0.1,
  contrast: 0.1,
  hue: 0,
  saturation: 0,
  stain: 0,
});

/** Every augmentation off, the value of each field left out of {@link AugmentOptions}. */
export const NO_AUGMENT: Readonly<ResolvedAugmentOptions> = Object.freeze({
  flip: false,
  rotate90: false,
  rotate: 0,
  scale: [1, 1] as [number, number],
  brightness: 0,
  contrast: 0,
  hue: 0,
  saturation: 0,
  stain: 0,
});

/**
 * Fills and checks augmentation options: fields left out are off (taken from {@link NO_AUGMENT}).
 * @throws {@link InvalidOptionError} naming the field, the allowed range and the value received.
 */
export function resolveAugmentOptions(options: AugmentOptions = {}): ResolvedAugmentOptions {
  const o = { ...NO_AUGMENT, ...options };
  const fail = (key: string, expected: string, value: unknown): never => {
    throw new InvalidOptionError(
      `augment.${key}: expected ${expected} but received ${describeValue(value)}.`,
      'See AugmentOptions for the meaning and range of each augmentation; use 0 or false to turn one off.',
    );
  };
  if (typeof o.flip !== 'boolean') fail('flip', 'true or false', o.flip);
  if (typeof o.rotate90 !== 'boolean') fail('rotate90', 'true or false', o.rotate90);
  const ranges: [keyof AugmentOptions, number][] = [
    ['rotate', 180],
    ['brightness', 1],
    ['contrast', 1],
    ['hue', 0.5],
    ['saturation', 1],
    ['stain', 1],
  ];
  for (const [key, max] of ranges) {
    const v = o[key];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > max) fail(key, `a number between 0 and ${max}`, v);
  }
  const s = o.scale;
  if (!Array.isArray(s) || s.length !== 2 || !s.every((v) => Number.isFinite(v) && v > 0) || s[0] > s[1]) {
    fail('scale', 'two numbers [min, max] with 0 < min <= max', s);
  }
  return { ...o, scale: [s[0], s[1]] };
}

/** The geometry of one crop: output offset from the tile centre → flip → quarter turns → rotation → 1 / scale. */
export interface CropTransform {
  /** Crop centre in source pixel coordinates (pixel `i` spans `[i, i + 1)`). */
  centerX: number;
  centerY: number;
  /** Mirror the output left-right. */
  flipX: boolean;
  /** Mirror the output top-bottom. */
  flipY: boolean;
  /** Exact counter-clockwise quarter turns of the sampling grid, `0..3`. */
  quarterTurns: number;
  /** Free rotation in radians (`0` = none). */
  angle: number;
  /** Zoom factor (`> 1` magnifies: the crop covers `tile / scale` source pixels). */
  scale: number;
}

function assertTile(tile: number): void {
  if (!Number.isInteger(tile) || tile < 1) {
    throw new InvalidOptionError(
      `tile: expected a positive integer tile size in pixels but received ${describeValue(tile)}.`,
      'Pass the model input size, e.g. 256.',
    );
  }
}

/**
 * Draws the geometry of a random crop of a `width x height` image. Without rotation or scaling the crop is
 * pixel-aligned (no interpolation); an image smaller than the tile is centred (and padded by the sampler). Always
 * consumes the same number of draws from `rng`, whatever the options.
 * @throws {@link InvalidOptionError} for a bad tile size or options.
 * @example
 * const t = randCropTransform(1000, 1000, 256, { rotate: 15 }, rng);
 */
export function randCropTransform(
  width: number,
  height: number,
  tile: number,
  options: AugmentOptions,
  rng: Random,
): CropTransform {
  assertTile(tile);
  const o = resolveAugmentOptions(options);
  const uFlipX = rng.next();
  const uFlipY = rng.next();
  const turns = rng.int(4);
  const uAngle = rng.next();
  const uScale = rng.next();
  const uX = rng.next();
  const uY = rng.next();
  const [lo, hi] = o.scale;
  const scale = lo === hi ? lo : Math.exp(Math.log(lo) + uScale * (Math.log(hi) - Math.log(lo)));
  const footprint = tile / scale;
  const place = (size: number, u: number) => {
    const start =
      size >= footprint ? Math.floor(u * (Math.floor(size - footprint) + 1)) : Math.floor((size - footprint) / 2);
    return start + footprint / 2;
  };
  return {
    centerX: place(width, uX),
    centerY: place(height, uY),
    flipX: o.flip && uFlipX < 0.5,
    flipY: o.flip && uFlipY < 0.5,
    quarterTurns: o.rotate90 ? turns : 0,
    angle: o.rotate > 0 ? ((2 * uAngle - 1) * o.rotate * Math.PI) / 180 : 0,
    scale,
  };
}

/** Pixels of a crop: normalized image, labels, and which pixels come from inside the source. */
export interface CropResult {
  /** Shape `[tile, tile, channels]`, normalized like the sample; `0` outside the source. */
  image: Float32Array;
  /** Shape `[tile, tile]`, class indices, `-1` for ignored pixels and pixels outside the source. */
  labels: Int16Array;
  /** Shape `[tile, tile]`, `1` where the pixel comes from inside the source image. */
  inside: Uint8Array;
}

function assertSample(sample: LoadedSample): void {
  const { width, height, channels, image, labels } = sample;
  const ok =
    Number.isInteger(width) &&
    width > 0 &&
    Number.isInteger(height) &&
    height > 0 &&
    Number.isInteger(channels) &&
    channels > 0 &&
    image.length === width * height * channels &&
    labels.length === width * height;
  if (!ok) {
    throw new InvalidOptionError(
      `sample "${sample.stem}": expected image of length width * height * channels and labels of length ` +
        `width * height, but received width ${width}, height ${height}, channels ${channels}, image length ` +
        `${image.length} and labels length ${labels.length}.`,
      'Pass a sample produced by loadSamples().',
    );
  }
}

/**
 * Samples a `tile x tile` crop of `sample` through `transform`: the image bilinearly (exactly, without
 * interpolation, where the grid falls on pixel centres), the labels by nearest neighbour. Pixels whose nearest
 * source pixel lies outside the image get label `-1` and image value `0`.
 * @example
 * const { image, labels } = applyCropTransform(sample, 256, { ...t, quarterTurns: 1 });
 */
export function applyCropTransform(sample: LoadedSample, tile: number, transform: CropTransform): CropResult {
  assertTile(tile);
  assertSample(sample);
  const { width: w, height: h, channels: ch, image: src, labels: srcLabels } = sample;
  const { centerX, centerY, flipX, flipY, angle, scale } = transform;
  const turns = ((Math.round(transform.quarterTurns) % 4) + 4) % 4;
  const image = new Float32Array(tile * tile * ch);
  const labels = new Int16Array(tile * tile).fill(IGNORE_INDEX);
  const inside = new Uint8Array(tile * tile);
  const cos = Math.cos(angle);
  const sin = Math.sin(angle);
  const half = tile / 2;
  for (let v = 0; v < tile; v++) {
    for (let u = 0; u < tile; u++) {
      let x = u + 0.5 - half;
      let y = v + 0.5 - half;
      if (flipX) x = -x;
      if (flipY) y = -y;
      // Exact quarter turns (x, y) -> (-y, x) per turn.
      if (turns === 1) [x, y] = [-y, x];
      else if (turns === 2) [x, y] = [-x, -y];
      else if (turns === 3) [x, y] = [y, -x];
      if (angle !== 0) [x, y] = [x * cos - y * sin, x * sin + y * cos];
      if (scale !== 1) {
        x /= scale;
        y /= scale;
      }
      // Continuous pixel index: pixel i has its centre at i + 0.5.
      const px = centerX + x - 0.5;
      const py = centerY + y - 0.5;
      const nx = Math.floor(px + 0.5);
      const ny = Math.floor(py + 0.5);
      if (nx < 0 || ny < 0 || nx >= w || ny >= h) continue;
      const o = v * tile + u;
      inside[o] = 1;
      labels[o] = srcLabels[ny * w + nx];
      const x0 = Math.floor(px);
      const y0 = Math.floor(py);
      const fx = px - x0;
      const fy = py - y0;
      const dst = o * ch;
      if (fx === 0 && fy === 0) {
        const s = (y0 * w + x0) * ch;
        for (let c = 0; c < ch; c++) image[dst + c] = src[s + c];
        continue;
      }
      const xa = Math.min(Math.max(x0, 0), w - 1);
      const xb = Math.min(Math.max(x0 + 1, 0), w - 1);
      const ya = Math.min(Math.max(y0, 0), h - 1);
      const yb = Math.min(Math.max(y0 + 1, 0), h - 1);
      const s00 = (ya * w + xa) * ch;
      const s01 = (ya * w + xb) * ch;
      const s10 = (yb * w + xa) * ch;
      const s11 = (yb * w + xb) * ch;
      for (let c = 0; c < ch; c++) {
        const top = src[s00 + c] + (src[s01 + c] - src[s00 + c]) * fx;
        const bottom = src[s10 + c] + (src[s11 + c] - src[s10 + c]) * fx;
        image[dst + c] = top + (bottom - top) * fy;
      }
    }
  }
  return { image, labels, inside };
}

// ---------------------------------------------------------------------------------------------------------------
// Colour

/**
 * Stain vectors of haematoxylin, eosin and DAB (Ruifrok & Johnston 2001), one per row in optical density RGB,
 * normalized to unit length: `OD = C · RGB_FROM_HED` for concentrations `C = [h, e, d]` (row vectors).
 */
export const RGB_FROM_HED: readonly (readonly number[])[] = [
  [0.65, 0.7, 0.29],
  [0.07, 0.99, 0.11],
  [0.27, 0.57, 0.78],
].map((row) => {
  const n = Math.hypot(...row);
  return row.map((v) => v / n);
});

function invert3(m: readonly (readonly number[])[]): number[][] {
  const [[a, b, c], [d, e, f], [g, h, i]] = m;
  const A = e * i - f * h;
  const B = -(d * i - f * g);
  const C = d * h - e * g;
  const det = a * A + b * B + c * C;
  return [
    [A / det, -(b * i - c * h) / det, (b * f - c * e) / det],
    [B / det, (a * i - c * g) / det, -(a * f - c * d) / det],
    [C / det, -(a * h - b * g) / det, (a * e - b * d) / det],
  ];
}

/** Inverse of {@link RGB_FROM_HED}: `C = OD · HED_FROM_RGB`. */
export const HED_FROM_RGB: readonly (readonly number[])[] = invert3(RGB_FROM_HED);

/** Optical density of an intensity in `[0, 1]`, `-ln((255 v + 1) / 256)`: finite at 0, 0 for white. */
function toOd(v: number): number {
  return -Math.log((255 * v + 1) / 256);
}

function fromOd(od: number): number {
  return (256 * Math.exp(-od) - 1) / 255;
}

/**
 * Converts RGB intensities in `[0, 1]` to haematoxylin, eosin and DAB concentrations (colour deconvolution,
 * Ruifrok & Johnston): optical density `-ln((255 v + 1) / 256)`, then projection on {@link HED_FROM_RGB}.
 * @param rgb - Shape `[..., 3]` (interleaved).
 * @returns Concentrations, shape `[..., 3]`, not clipped (so {@link hedToRgb} inverts exactly).
 * @example
 * const hed = rgbToHed(Float32Array.of(0.8, 0.5, 0.7));
 */
export function rgbToHed(rgb: Float32Array): Float32Array {
  const out = new Float32Array(rgb.length);
  const m = HED_FROM_RGB;
  for (let i = 0; i + 2 < rgb.length; i += 3) {
    const r = toOd(rgb[i]);
    const g = toOd(rgb[i + 1]);
    const b = toOd(rgb[i + 2]);
    out[i] = r * m[0][0] + g * m[1][0] + b * m[2][0];
    out[i + 1] = r * m[0][1] + g * m[1][1] + b * m[2][1];
    out[i + 2] = r * m[0][2] + g * m[1][2] + b * m[2][2];
  }
  return out;
}

/**
 * Inverse of {@link rgbToHed}: stain concentrations back to RGB intensities (not clipped to `[0, 1]`).
 * @param hed - Shape `[..., 3]` (interleaved).
 * @example
 * const rgb = hedToRgb(rgbToHed(pixels)); // equals pixels up to float error
 */
export function hedToRgb(hed: Float32Array): Float32Array {
  const out = new Float32Array(hed.length);
  const m = RGB_FROM_HED;
  for (let i = 0; i + 2 < hed.length; i += 3) {
    const h = hed[i];
    const e = hed[i + 1];
    const d = hed[i + 2];
    out[i] = fromOd(h * m[0][0] + e * m[1][0] + d * m[2][0]);
    out[i + 1] = fromOd(h * m[0][1] + e * m[1][1] + d * m[2][1]);
    out[i + 2] = fromOd(h * m[0][2] + e * m[1][2] + d * m[2][2]);
  }
  return out;
}

/**
 * HED stain jitter (Tellez et al. 2018), in place: each stain concentration `C` becomes `C * (1 + a) + b` with
 * `a, b ~ N(0, sigma)` drawn once per stain (6 normal draws, whatever `sigma`), then back to RGB, clipped to `[0, 1]`.
 * @param rgb - RGB intensities in `[0, 1]`, shape `[..., 3]`; changed in place.
 * @param inside - Optional `[pixels]` mask; pixels with `0` are left alone.
 * @example
 * randHedJitter(pixels, 0.05, rng);
 */
export function randHedJitter(rgb: Float32Array, sigma: number, rng: Random, inside?: Uint8Array): void {
  const alpha = [0, 1, 2].map(() => rng.normal(0, sigma));
  const beta = [0, 1, 2].map(() => rng.normal(0, sigma));
  if (sigma === 0) return;
  const f = HED_FROM_RGB;
  const g = RGB_FROM_HED;
  for (let p = 0, i = 0; i + 2 < rgb.length; p++, i += 3) {
    if (inside && !inside[p]) continue;
    const r = toOd(rgb[i]);
    const gr = toOd(rgb[i + 1]);
    const b = toOd(rgb[i + 2]);
    const h = (r * f[0][0] + gr * f[1][0] + b * f[2][0]) * (1 + alpha[0]) + beta[0];
    const e = (r * f[0][1] + gr * f[1][1] + b * f[2][1]) * (1 + alpha[1]) + beta[1];
    const d = (r * f[0][2] + gr * f[1][2] + b * f[2][2]) * (1 + alpha[2]) + beta[2];
    for (let k = 0; k < 3; k++) {
      const v = fromOd(h * g[0][k] + e * g[1][k] + d * g[2][k]);
      rgb[i + k] = v < 0 ? 0 : v > 1 ? 1 : v;
    }
  }
}

/**
 * Brightness and contrast jitter, in place, on values in `[0, 1]`: `v' = (v - m) * f + m + d` with `m` the mean of
 * the (inside) pixels, `f` uniform in `[1 - contrast, 1 + contrast]`, `d` uniform in `[-brightness, brightness]`,
 * clipped to `[0, 1]`. Always consumes 2 draws.
 * @param pixels - Shape `[..., channels]`, any channel count.
 * @example
 * randBrightnessContrast(pixels, 1, 0.1, 0.1, rng);
 */
export function randBrightnessContrast(
  pixels: Float32Array,
  channels: number,
  brightness: number,
  contrast: number,
  rng: Random,
  inside?: Uint8Array,
): void {
  const delta = (2 * rng.next() - 1) * brightness;
  const factor = 1 + (2 * rng.next() - 1) * contrast;
  if (brightness === 0 && contrast === 0) return;
  let sum = 0;
  let count = 0;
  for (let p = 0, i = 0; i < pixels.length; p++, i += channels) {
    if (inside && !inside[p]) continue;
    for (let c = 0; c < channels; c++) sum += pixels[i + c];
    count += channels;
  }
  const mean = count > 0 ? sum / count : 0;
  for (let p = 0, i = 0; i < pixels.length; p++, i += channels) {
    if (inside && !inside[p]) continue;
    for (let c = 0; c < channels; c++) {
      const v = (pixels[i + c] - mean) * factor + mean + delta;
      pixels[i + c] = v < 0 ? 0 : v > 1 ? 1 : v;
    }
  }
}

/**
 * Saturation and hue jitter of RGB values in `[0, 1]`, in place: saturation scales the distance from the pixel's
 * luma (`0.299 r + 0.587 g + 0.114 b`) by a factor uniform in `[1 - saturation, 1 + saturation]`, then the hue (HSV)
 * turns by a shift uniform in `[-hue, hue]` turns. Always consumes 2 draws.
 * @param rgb - Shape `[..., 3]`.
 * @example
 * randHueSaturation(pixels, 0.05, 0.2, rng);
 */
export function randHueSaturation(
  rgb: Float32Array,
  hue: number,
  saturation: number,
  rng: Random,
  inside?: Uint8Array,
): void {
  const factor = 1 + (2 * rng.next() - 1) * saturation;
  const shift = (2 * rng.next() - 1) * hue;
  if (hue === 0 && saturation === 0) return;
  for (let p = 0, i = 0; i + 2 < rgb.length; p++, i += 3) {
    if (inside && !inside[p]) continue;
    let r = rgb[i];
    let g = rgb[i + 1];
    let b = rgb[i + 2];
    if (saturation !== 0) {
      const luma = 0.299 * r + 0.587 * g + 0.114 * b;
      r = Math.min(1, Math.max(0, luma + (r - luma) * factor));
      g = Math.min(1, Math.max(0, luma + (g - luma) * factor));
      b = Math.min(1, Math.max(0, luma + (b - luma) * factor));
    }
    if (shift !== 0) {
      const max = Math.max(r, g, b);
      const min = Math.min(r, g, b);
      const chroma = max - min;
      if (chroma > 0) {
        let hh: number;
        if (max === r) hh = ((g - b) / chroma + 6) % 6;
        else if (max === g) hh = (b - r) / chroma + 2;
        else hh = (r - g) / chroma + 4;
        hh = (((hh / 6 + shift) % 1) + 1) % 1;
        const sector = hh * 6;
        const x = chroma * (1 - Math.abs((sector % 2) - 1));
        const k = Math.floor(sector) % 6;
        const [r1, g1, b1] =
          k === 0
            ? [chroma, x, 0]
            : k === 1
              ? [x, chroma, 0]
              : k === 2
                ? [0, chroma, x]
                : k === 3
                  ? [0, x, chroma]
                  : k === 4
                    ? [x, 0, chroma]
                    : [chroma, 0, x];
        r = r1 + min;
        g = g1 + min;
        b = b1 + min;
      }
    }
    rgb[i] = r;
    rgb[i + 1] = g;
    rgb[i + 2] = b;
  }
}

/**
 * A random augmented `tile x tile` training crop of `sample`: one random affine crop (see {@link randCropTransform}
 * and {@link applyCropTransform}: flips, quarter turns, free rotation and scale in one inverse-mapped transform,
 * image bilinear, labels nearest; pixels outside the sample get label `-1` and image value `0`), then colour jitter
 * on de-normalized values in `[0, 1]`: stain (RGB), brightness and contrast, saturation and hue (RGB), and
 * re-normalization. Hue, saturation and stain are skipped for images that are not RGB.
 *
 * Deterministic: consumes exactly one draw of `rng` per call and derives independent streams for the geometry and
 * each colour op from it, so turning one augmentation on or off does not change the others.
 * @param normalization - The sample's normalization (to de-normalize for colour ops), one entry per channel.
 * @returns `image` of shape `[tile, tile, channels]` (normalized), `labels` of shape `[tile, tile]`.
 * @throws {@link InvalidOptionError} for a bad tile size, options, sample or normalization.
 * @example
 * const rng = createRandom(seed).fork(epoch);
 * const { image, labels } = randCropAugment(sample, 256, { rotate: 20, stain: 0.05 }, rng, normalization);
 */
export function randCropAugment(
  sample: LoadedSample,
  tile: number,
  options: AugmentOptions,
  rng: Random,
  normalization: Normalization,
): { image: Float32Array; labels: Int16Array } {
  const o = resolveAugmentOptions(options);
  assertSample(sample);
  validateNormalization(normalization, sample.channels);
  rng.next();
  const transform = randCropTransform(sample.width, sample.height, tile, o, rng.fork('geometry'));
  const { image, labels, inside } = applyCropTransform(sample, tile, transform);
  const rgb = sample.channels === 3;
  const colour = o.brightness > 0 || o.contrast > 0 || (rgb && (o.stain > 0 || o.hue > 0 || o.saturation > 0));
  if (!colour) return { image, labels };
  const ch = sample.channels;
  const { mean, std } = normalization;
  const pixels = new Float32Array(image.length);
  for (let i = 0; i < image.length; i += ch) {
    for (let c = 0; c < ch; c++) pixels[i + c] = Math.min(1, Math.max(0, image[i + c] * std[c] + mean[c]));
  }
  if (rgb && o.stain > 0) randHedJitter(pixels, o.stain, rng.fork('stain'), inside);
  if (o.brightness > 0 || o.contrast > 0) {
    randBrightnessContrast(pixels, ch, o.brightness, o.contrast, rng.fork('brightness-contrast'), inside);
  }
  if (rgb && (o.hue > 0 || o.saturation > 0))
    randHueSaturation(pixels, o.hue, o.saturation, rng.fork('hue-saturation'), inside);
  for (let p = 0, i = 0; i < image.length; p++, i += ch) {
    if (!inside[p]) continue;
    for (let c = 0; c < ch; c++) image[i + c] = (pixels[i + c] - mean[c]) / std[c];
  }
  return { image, labels };
}
