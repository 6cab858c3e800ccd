import { describe, expect, it } from 'vitest';
import { InvalidOptionError } from '../errors.js';
import {
  type CropTransform,
  DEFAULT_AUGMENT,
  HED_FROM_RGB,
  NO_AUGMENT,
  RGB_FROM_HED,
  applyCropTransform,
  hedToRgb,
  randBrightnessContrast,
  randCropAugment,
  randCropTransform,
  randHedJitter,
  randHueSaturation,
  resolveAugmentOptions,
  rgbToHed,
} from './augment.js';
import type { LoadedSample, Normalization } from './dataset.js';
import { createRandom } from './random.js';

const IDENTITY: CropTransform = {
  centerX: 0,
  centerY: 0,
  flipX: false,
  flipY: false,
  quarterTurns: 0,
  angle: 0,
  scale: 1,
};

/** A sample whose pixel (x, y) has image value `y * width + x` (+ 1000 c) and label `(x + y) % classes`. */
function rampSample(width: number, height: number, channels = 1, classes = 3): LoadedSample {
  const image = new Float32Array(width * height * channels);
  const labels = new Int16Array(width * height);
  for (let i = 0; i < width * height; i++) {
    for (let c = 0; c < channels; c++) image[i * channels + c] = i + 1000 * c;
    labels[i] = ((i % width) + Math.floor(i / width)) % classes;
  }
  return { stem: 'ramp', image, labels, width, height, channels };
}

/** A random RGB sample in normalized units for `mean 0.5, std 0.25`, with labels 0..2 and some -1. */
function noiseSample(width: number, height: number, seed: number): LoadedSample {
  const rng = createRandom(seed);
  const image = Float32Array.from({ length: width * height * 3 }, () => (rng.next() - 0.5) / 0.25);
  const labels = Int16Array.from({ length: width * height }, () => rng.int(4) - 1);
  return { stem: 'noise', image, labels, width, height, channels: 3 };
}

const RGB_NORM: Normalization = { mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] };
const GREY_NORM: Normalization = { mean: [0], std: [1] };
const ALL_ON = {
  flip: true,
  rotate90: true,
  rotate: 30,
  scale: [0.8, 1.25] as [number, number],
  brightness: 0.2,
  contrast: 0.2,
  hue: 0.05,
  saturation: 0.2,
  stain: 0.05,
};

describe('randCropAugment', () => {
  it('is deterministic for a seed, differs between seeds and between successive calls', () => {
    const sample = noiseSample(40, 30, 1);
    const a = randCropAugment(sample, 16, ALL_ON, createRandom(7), RGB_NORM);
    const b = randCropAugment(sample, 16, ALL_ON, createRandom(7), RGB_NORM);
    expect(Array.from(a.image)).toEqual(Array.from(b.image));
    expect(Array.from(a.labels)).toEqual(Array.from(b.labels));
    const c = randCropAugment(sample, 16, ALL_ON, createRandom(8), RGB_NORM);
    expect(Array.from(c.image)).not.toEqual(Array.from(a.image));
    const rng = createRandom(7);
    const first = randCropAugment(sample, 16, ALL_ON, rng, RGB_NORM);
    const second = randCropAugment(sample, 16, ALL_ON, rng, RGB_NORM);
    expect(Array.from(second.image)).not.toEqual(Array.from(first.image));
    expect(a.image.length).toBe(16 * 16 * 3);
    expect(a.labels.length).toBe(16 * 16);
  });

  it('without augmentation copies an exact pixel-aligned window of the sample', () => {
    const sample = rampSample(20, 10);
    for (let seed = 0; seed < 5; seed++) {
      const { image, labels } = randCropAugment(sample, 4, NO_AUGMENT, createRandom(seed), GREY_NORM);
      const x0 = image[0] % 20;
      const y0 = Math.floor(image[0] / 20);
      expect(Number.isInteger(image[0])).toBe(true);
      for (let v = 0; v < 4; v++) {
        for (let u = 0; u < 4; u++) {
          expect(image[v * 4 + u]).toBe((y0 + v) * 20 + x0 + u);
          expect(labels[v * 4 + u]).toBe((x0 + u + y0 + v) % 3);
        }
      }
    }
  });

  it('flips give the expected pixels of an asymmetric image', () => {
    // 3x2 image  0 1 2 / 3 4 5
    const sample = rampSample(3, 2);
    const crop = (t: Partial<CropTransform>) =>
      Array.from(applyCropTransform(sample, 3, { ...IDENTITY, centerX: 1.5, centerY: 1.5, ...t }).image);
    // A 3x3 tile over a 3x2 image: the last row is outside (value 0).
    expect(crop({})).toEqual([0, 1, 2, 3, 4, 5, 0, 0, 0]);
    expect(crop({ flipX: true })).toEqual([2, 1, 0, 5, 4, 3, 0, 0, 0]);
    const square = rampSample(3, 3);
    const flipped = (t: Partial<CropTransform>) =>
      Array.from(applyCropTransform(square, 3, { ...IDENTITY, centerX: 1.5, centerY: 1.5, ...t }).image);
    expect(flipped({ flipY: true })).toEqual([6, 7, 8, 3, 4, 5, 0, 1, 2]);
    expect(flipped({ flipX: true, flipY: true })).toEqual([8, 7, 6, 5, 4, 3, 2, 1, 0]);
    // randCropAugment with flip only produces exactly these four variants, and all of them.
    const seen = new Set<string>();
    for (let seed = 0; seed < 40; seed++) {
      const out = randCropAugment(square, 3, { ...NO_AUGMENT, flip: true }, createRandom(seed), GREY_NORM);
      seen.add(Array.from(out.image).join(','));
    }
    expect([...seen].sort()).toEqual(
      ['0,1,2,3,4,5,6,7,8', '2,1,0,5,4,3,8,7,6', '6,7,8,3,4,5,0,1,2', '8,7,6,5,4,3,2,1,0'].sort(),
    );
  });

  it('rotate90 is an exact index permutation', () => {
    const n = 6;
    const sample = rampSample(n, n, 2);
    const rotations = [0, 1, 2, 3].map((quarterTurns) =>
      applyCropTransform(sample, n, { ...IDENTITY, centerX: n / 2, centerY: n / 2, quarterTurns }),
    );
    // One counter-clockwise turn of the sampling grid: output (u, v) takes source (x = n - 1 - v, y = u).
    const one = rotations[1];
    for (let v = 0; v < n; v++) {
      for (let u = 0; u < n; u++) {
        const s = u * n + (n - 1 - v);
        expect(one.image[(v * n + u) * 2]).toBe(s);
        expect(one.image[(v * n + u) * 2 + 1]).toBe(s + 1000);
        expect(one.labels[v * n + u]).toBe(sample.labels[s]);
      }
    }
    for (const r of rotations) {
      expect(Array.from(r.image.filter((_, i) => i % 2 === 0)).sort((a, b) => a - b)).toEqual(
        Array.from({ length: n * n }, (_, i) => i),
      );
      expect(r.inside.every((v) => v === 1)).toBe(true);
    }
    const two = Array.from(rotations[2].image.filter((_, i) => i % 2 === 0));
    expect(two).toEqual(Array.from({ length: n * n }, (_, i) => n * n - 1 - i));
    // Through randCropAugment: always one of the four exact rotations, and every one occurs.
    const variants = rotations.map((r) => Array.from(r.image).join(','));
    const seen = new Set<number>();
    for (let seed = 0; seed < 40; seed++) {
      const out = randCropAugment(sample, n, { ...NO_AUGMENT, rotate90: true }, createRandom(seed), {
        mean: [0, 0],
        std: [1, 1],
      });
      const k = variants.indexOf(Array.from(out.image).join(','));
      expect(k).toBeGreaterThanOrEqual(0);
      seen.add(k);
    }
    expect([...seen].sort()).toEqual([0, 1, 2, 3]);
  });

  it('pads a sample smaller than the tile with ignore labels and zero image values', () => {
    const sample = rampSample(2, 2);
    const { image, labels } = randCropAugment(sample, 4, NO_AUGMENT, createRandom(1), GREY_NORM);
    expect(Array.from(labels)).toEqual([-1, -1, -1, -1, -1, 0, 1, -1, -1, 1, 2, -1, -1, -1, -1, -1]);
    expect(Array.from(image)).toEqual([0, 0, 0, 0, 0, 0, 1, 0, 0, 2, 3, 0, 0, 0, 0, 0]);
  });

  it('keeps labels to valid class indices or -1 under rotation and scaling', () => {
    const sample = rampSample(50, 40, 1, 4);
    const counts = new Map<number, number>();
    for (let seed = 0; seed < 10; seed++) {
      const { labels } = randCropAugment(
        sample,
        32,
        { ...ALL_ON, rotate: 45, scale: [0.5, 2] },
        createRandom(seed),
        GREY_NORM,
      );
      for (const l of labels) counts.set(l, (counts.get(l) ?? 0) + 1);
    }
    expect([...counts.keys()].every((l) => l >= -1 && l <= 3 && Number.isInteger(l))).toBe(true);
    for (const k of [0, 1, 2, 3]) expect(counts.get(k)).toBeGreaterThan(0);
  });

  it('samples bilinearly under scaling and rotation', () => {
    // Image value = x, so any rotation/scale gives values that vary linearly along the sampling direction.
    const w = 20;
    const image = Float32Array.from({ length: w * w }, (_, i) => i % w);
    const sample: LoadedSample = { stem: 'x', image, labels: new Int16Array(w * w), width: w, height: w, channels: 1 };
    const t = { ...IDENTITY, centerX: 10, centerY: 10, scale: 2 };
    const out = applyCropTransform(sample, 4, t).image;
    // Output u maps to source pixel 10 + (u + 0.5 - 2) / 2 - 0.5 = 8.75 + u / 2.
    expect(Array.from(out.slice(0, 4))).toEqual([8.75, 9.25, 9.75, 10.25]);
    const turned = applyCropTransform(sample, 2, { ...IDENTITY, centerX: 10, centerY: 10, angle: Math.PI / 4 }).image;
    // Output (0, 0) offset (-0.5, -0.5) rotated 45 degrees -> x offset 0, so x = 9.5.
    expect(turned[0]).toBeCloseTo(9.5, 5);
    expect(turned[1]).toBeCloseTo(9.5 + Math.SQRT1_2, 5);
  });

  it('colour ops leave the geometry alone and brightness/contrast is affine on grey', () => {
    const sample = rampSample(30, 30);
    const norm: Normalization = { mean: [0], std: [0.001] }; // de-normalized values 0..0.9
    const plain = randCropAugment(sample, 8, { ...NO_AUGMENT, flip: true }, createRandom(3), norm);
    const lit = randCropAugment(
      sample,
      8,
      { ...NO_AUGMENT, flip: true, brightness: 0.2, contrast: 0.2 },
      createRandom(3),
      norm,
    );
    expect(Array.from(lit.labels)).toEqual(Array.from(plain.labels));
    expect(Array.from(lit.image)).not.toEqual(Array.from(plain.image));
    // out = a * in + b for every pixel.
    const a = (lit.image[1] - lit.image[0]) / (plain.image[1] - plain.image[0]);
    const b = lit.image[0] - a * plain.image[0];
    expect(a).toBeGreaterThan(0.75);
    expect(a).toBeLessThan(1.25);
    for (let i = 0; i < plain.image.length; i++) expect(lit.image[i]).toBeCloseTo(a * plain.image[i] + b, 2); // float32 at ~500
    // Hue, saturation and stain do nothing to grey images.
    const greyColour = randCropAugment(
      sample,
      8,
      { ...NO_AUGMENT, flip: true, hue: 0.3, saturation: 0.5, stain: 0.2 },
      createRandom(3),
      norm,
    );
    expect(Array.from(greyColour.image)).toEqual(Array.from(plain.image));
  });

  it('rejects bad options, tiles and normalizations with messages naming them', () => {
    const sample = rampSample(4, 4);
    const rng = createRandom(1);
    expect(() => randCropAugment(sample, 0, {}, rng, GREY_NORM)).toThrow(
      'tile: expected a positive integer tile size in pixels but received 0 of type number.',
    );
    expect(() => randCropAugment(sample, 4, { rotate: -5 }, rng, GREY_NORM)).toThrow(
      'augment.rotate: expected a number between 0 and 180 but received -5 of type number.',
    );
    expect(() => randCropAugment(sample, 4, { scale: [2, 1] }, rng, GREY_NORM)).toThrow(
      'augment.scale: expected two numbers [min, max] with 0 < min <= max but received [2,1] of type array.',
    );
    expect(() => randCropAugment(sample, 4, { hue: 0.7 }, rng, GREY_NORM)).toThrow(InvalidOptionError);
    expect(() => randCropAugment(sample, 4, {}, rng, RGB_NORM)).toThrow('normalization: expected 1 finite mean');
    expect(() => randCropAugment({ ...sample, labels: new Int16Array(3) }, 4, {}, rng, GREY_NORM)).toThrow(
      'labels length 3',
    );
    expect(resolveAugmentOptions({})).toEqual(NO_AUGMENT);
    expect(resolveAugmentOptions({ ...DEFAULT_AUGMENT, flip: false })).toEqual({ ...DEFAULT_AUGMENT, flip: false });
    // Left-out fields are off: {} only picks a crop position, like NO_AUGMENT.
    const sample2 = rampSample(12, 12);
    const none = randCropAugment(sample2, 4, {}, createRandom(9), GREY_NORM);
    const off = randCropAugment(sample2, 4, NO_AUGMENT, createRandom(9), GREY_NORM);
    expect(Array.from(none.image)).toEqual(Array.from(off.image));
  });
});

describe('randCropTransform', () => {
  it('places crops inside the image and draws scale and angle within their ranges', () => {
    for (let seed = 0; seed < 50; seed++) {
      const t = randCropTransform(100, 60, 16, { rotate: 10, scale: [0.5, 2] }, createRandom(seed));
      expect(t.scale).toBeGreaterThanOrEqual(0.5);
      expect(t.scale).toBeLessThanOrEqual(2);
      expect(Math.abs(t.angle)).toBeLessThanOrEqual((10 * Math.PI) / 180);
      const half = 16 / t.scale / 2;
      expect(t.centerX - half).toBeGreaterThanOrEqual(0);
      expect(t.centerX + half).toBeLessThanOrEqual(100);
      expect(t.centerY - half).toBeGreaterThanOrEqual(0);
      expect(t.centerY + half).toBeLessThanOrEqual(60);
    }
    const off = randCropTransform(100, 60, 16, NO_AUGMENT, createRandom(1));
    expect([off.flipX, off.flipY, off.quarterTurns, off.angle, off.scale]).toEqual([false, false, 0, 0, 1]);
    expect(Number.isInteger(off.centerX - 8)).toBe(true);
  });
});

describe('HED colour deconvolution', () => {
  it('round-trips RGB through HED with error below 1e-4', () => {
    const rng = createRandom(5);
    const rgb = Float32Array.from({ length: 3 * 1000 }, () => rng.next());
    rgb.set([0, 0, 0, 1, 1, 1], 0);
    const back = hedToRgb(rgbToHed(rgb));
    let worst = 0;
    for (let i = 0; i < rgb.length; i++) worst = Math.max(worst, Math.abs(back[i] - rgb[i]));
    expect(worst).toBeLessThan(1e-4);
  });

  it('uses unit stain vectors whose inverse is exact, and maps pure haematoxylin to H only', () => {
    for (const row of RGB_FROM_HED) expect(Math.hypot(...row)).toBeCloseTo(1, 12);
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 3; j++) {
        const dot = [0, 1, 2].reduce((s, k) => s + RGB_FROM_HED[i][k] * HED_FROM_RGB[k][j], 0);
        expect(dot).toBeCloseTo(i === j ? 1 : 0, 12);
      }
    }
    expect(Array.from(rgbToHed(Float32Array.of(1, 1, 1)))).toEqual([0, 0, 0]);
    const hed = rgbToHed(hedToRgb(Float32Array.of(0.8, 0, 0)));
    expect(hed[0]).toBeCloseTo(0.8, 5);
    expect(hed[1]).toBeCloseTo(0, 5);
    expect(hed[2]).toBeCloseTo(0, 5);
    // Haematoxylin absorbs red most: a stained pixel is bluish-purple (red lowest).
    const purple = hedToRgb(Float32Array.of(0.8, 0, 0));
    expect(purple[0]).toBeLessThan(purple[2]);
  });

  it('randHedJitter is seeded, stays in [0, 1], and leaves masked pixels and sigma 0 alone', () => {
    const rgb = Float32Array.of(0.9, 0.6, 0.8, 0.3, 0.1, 0.5, 1, 1, 1);
    const a = rgb.slice();
    const b = rgb.slice();
    randHedJitter(a, 0.1, createRandom(3), Uint8Array.of(1, 1, 0));
    randHedJitter(b, 0.1, createRandom(3), Uint8Array.of(1, 1, 0));
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(Array.from(a.slice(0, 6))).not.toEqual(Array.from(rgb.slice(0, 6)));
    expect(Array.from(a.slice(6))).toEqual([1, 1, 1]);
    expect(a.every((v) => v >= 0 && v <= 1)).toBe(true);
    const same = rgb.slice();
    randHedJitter(same, 0, createRandom(3));
    expect(Array.from(same)).toEqual(Array.from(rgb));
  });
});

describe('colour jitter', () => {
  it('randHueSaturation keeps HSV value and chroma when only the hue turns, and luma under saturation', () => {
    const rgb = Float32Array.of(0.8, 0.4, 0.2, 0.1, 0.5, 0.3);
    const hueOnly = rgb.slice();
    randHueSaturation(hueOnly, 0.25, 0, createRandom(2));
    expect(Array.from(hueOnly)).not.toEqual(Array.from(rgb));
    for (let i = 0; i < 6; i += 3) {
      const before = Array.from(rgb.slice(i, i + 3));
      const after = Array.from(hueOnly.slice(i, i + 3));
      expect(Math.max(...after)).toBeCloseTo(Math.max(...before), 5);
      expect(Math.max(...after) - Math.min(...after)).toBeCloseTo(Math.max(...before) - Math.min(...before), 5);
    }
    const sat = rgb.slice();
    randHueSaturation(sat, 0, 0.3, createRandom(2));
    const luma = (v: Float32Array, i: number) => 0.299 * v[i] + 0.587 * v[i + 1] + 0.114 * v[i + 2];
    expect(luma(sat, 0)).toBeCloseTo(luma(rgb, 0), 5);
    expect(Array.from(sat)).not.toEqual(Array.from(rgb));
  });

  it('randBrightnessContrast clips to [0, 1] and keeps the mean when only contrast changes', () => {
    const pixels = Float32Array.of(0.2, 0.4, 0.6, 0.8);
    randBrightnessContrast(pixels, 1, 0, 0.5, createRandom(4));
    const mean = pixels.reduce((s, v) => s + v, 0) / 4;
    expect(mean).toBeCloseTo(0.5, 5);
    expect(pixels[3] - pixels[0]).not.toBeCloseTo(0.6, 3);
    const bright = Float32Array.of(0.95, 0.99);
    randBrightnessContrast(bright, 1, 1, 0, createRandom(1));
    expect(bright.every((v) => v >= 0 && v <= 1)).toBe(true);
  });
});
