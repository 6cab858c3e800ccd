/**
 * Nuclei found without labels in H&E images: colour deconvolution (Ruifrok & Johnston, Anal. Quant. Cytol. Histol.
 * 2001) separates the haematoxylin stain, which binds to nuclear DNA, from eosin; a slightly smoothed haematoxylin map
 * is split by Otsu's threshold (one per source image or slide, so a pale tile is not forced to hold nuclei), holes are
 * filled and specks smaller than a nucleus dropped. These are the pseudo-labels the network is pretrained on.
 */
import { HED_FROM_RGB, type RasterImage } from '@tessera/core';
import { otsuThreshold as binThreshold } from '@tessera/tiler';

/**
 * The haematoxylin amount of each pixel of an RGB(A) image, as core's `rgbToHed` gives it (optical density
 * `-ln((v + 1) / 256)` per channel, projected by `HED_FROM_RGB`), smoothed by a Gaussian of `sigma` px (0: none).
 */
export function haematoxylin(image: RasterImage, sigma = 1): Float32Array {
  if (image.channels < 3) {
    throw new RangeError(`Expected an RGB image for colour deconvolution but received ${image.channels} channel(s).`);
  }
  const n = image.width * image.height;
  const od = new Float32Array(256);
  for (let v = 0; v < 256; v++) od[v] = -Math.log((v + 1) / 256);
  const h = new Float32Array(n);
  for (let p = 0; p < n; p++) {
    const at = p * image.channels;
    h[p] =
      od[image.data[at]] * HED_FROM_RGB[0][0] +
      od[image.data[at + 1]] * HED_FROM_RGB[1][0] +
      od[image.data[at + 2]] * HED_FROM_RGB[2][0];
  }
  return sigma > 0 ? gaussianBlur(h, image.width, image.height, sigma) : h;
}

/** Separable Gaussian smoothing (radius 3 sigma, edges clamped). */
export function gaussianBlur(values: Float32Array, width: number, height: number, sigma: number): Float32Array {
  const radius = Math.max(1, Math.ceil(3 * sigma));
  const taps = Float32Array.from({ length: 2 * radius + 1 }, (_, i) =>
    Math.exp(-((i - radius) ** 2) / (2 * sigma ** 2)),
  );
  const total = taps.reduce((s, t) => s + t, 0);
  for (let i = 0; i < taps.length; i++) taps[i] /= total;
  const rows = new Float32Array(values.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let s = 0;
      for (let t = -radius; t <= radius; t++)
        s += taps[t + radius] * values[y * width + Math.min(width - 1, Math.max(0, x + t))];
      rows[y * width + x] = s;
    }
  }
  const out = new Float32Array(values.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let s = 0;
      for (let t = -radius; t <= radius; t++)
        s += taps[t + radius] * rows[Math.min(height - 1, Math.max(0, y + t)) * width + x];
      out[y * width + x] = s;
    }
  }
  return out;
}

/**
 * Otsu's threshold of the values of all `maps`: tiler's 8-bit `otsuThreshold` over 256 bins between their minimum
 * and maximum; values above the returned level are foreground.
 */
export function otsuThreshold(maps: readonly Float32Array[]): number {
  let [lo, hi] = [Infinity, -Infinity];
  for (const map of maps) {
    for (const v of map) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  if (!(hi > lo)) return hi;
  const width = (hi - lo) / 256;
  const bins = new Uint8Array(maps.reduce((s, m) => s + m.length, 0));
  let at = 0;
  for (const map of maps) for (const v of map) bins[at++] = Math.min(255, Math.floor((v - lo) / width));
  // Bins up to the 8-bit level are background: the threshold is that bin's upper edge.
  return lo + (binThreshold(bins) + 1) * width;
}

/**
 * The pixels above `threshold`, with holes filled (background not connected to the border, 4-connected) and
 * 8-connected components smaller than `minArea` pixels removed: 1 for nucleus, 0 for the rest.
 */
export function nucleusMask(
  values: Float32Array,
  width: number,
  height: number,
  threshold: number,
  minArea: number,
): Uint8Array {
  const n = width * height;
  const mask = new Uint8Array(n);
  for (let p = 0; p < n; p++) mask[p] = values[p] > threshold ? 1 : 0;
  // Fill holes: background reached from the border stays background.
  const outside = new Uint8Array(n);
  const stack: number[] = [];
  const seed = (p: number) => {
    if (!mask[p] && !outside[p]) {
      outside[p] = 1;
      stack.push(p);
    }
  };
  for (let x = 0; x < width; x++) {
    seed(x);
    seed((height - 1) * width + x);
  }
  for (let y = 0; y < height; y++) {
    seed(y * width);
    seed(y * width + width - 1);
  }
  while (stack.length) {
    const p = stack.pop()!;
    const [x, y] = [p % width, Math.floor(p / width)];
    if (x > 0) seed(p - 1);
    if (x < width - 1) seed(p + 1);
    if (y > 0) seed(p - width);
    if (y < height - 1) seed(p + width);
  }
  for (let p = 0; p < n; p++) if (!outside[p]) mask[p] = 1;
  // Drop components smaller than a nucleus.
  const seen = new Uint8Array(n);
  const component: number[] = [];
  for (let start = 0; start < n; start++) {
    if (!mask[start] || seen[start]) continue;
    component.length = 0;
    seen[start] = 1;
    stack.push(start);
    while (stack.length) {
      const p = stack.pop()!;
      component.push(p);
      const [x, y] = [p % width, Math.floor(p / width)];
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const [nx, ny] = [x + dx, y + dy];
          if (nx < 0 || ny < 0 || nx >= width || ny >= height) continue;
          const q = ny * width + nx;
          if (mask[q] && !seen[q]) {
            seen[q] = 1;
            stack.push(q);
          }
        }
      }
    }
    if (component.length < minArea) for (const p of component) mask[p] = 0;
  }
  return mask;
}

/** The smallest nucleus kept, in µm²; at an unknown scale {@link MIN_AREA_PX} pixels. */
export const MIN_AREA_UM2 = 2;
/** The smallest nucleus kept when the µm/px is unknown. */
export const MIN_AREA_PX = 30;

/** Pseudo-labels of one source's tiles: their haematoxylin maps split by the source's Otsu threshold. */
export function pseudoNuclei(
  tiles: readonly RasterImage[],
  mpp: number | null,
): { masks: Uint8Array[]; threshold: number; share: number } {
  const maps = tiles.map((tile) => haematoxylin(tile));
  const threshold = otsuThreshold(maps);
  const minArea = mpp ? Math.max(4, Math.round(MIN_AREA_UM2 / (mpp * mpp))) : MIN_AREA_PX;
  const masks = maps.map((map, i) => nucleusMask(map, tiles[i].width, tiles[i].height, threshold, minArea));
  const pixels = masks.reduce((s, m) => s + m.length, 0);
  const share = masks.reduce((s, m) => s + m.reduce((t, v) => t + v, 0), 0) / Math.max(1, pixels);
  return { masks, threshold, share };
}
