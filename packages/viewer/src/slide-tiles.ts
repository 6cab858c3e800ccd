/**
 * Deep Zoom tiles of a slide and of its label map, made from the slide's own levels.
 *
 * - Slide tiles: each Deep Zoom level is read from the slide level just finer than it, resampled by the tiler's
 *   reader (Lanczos). Small Deep Zoom levels that lie far below every slide level (e.g. the overview of a slide
 *   without a pyramid) are made once from the tiler's thumbnail and cut into tiles.
 * - Label tiles: class values, never interpolated: each tile pixel takes the label of the label-map pixel under its
 *   centre, read from the label pyramid level just finer than the tile (whose reduced levels `tessera predict`
 *   writes as the most frequent class of each 2x2 block).
 */
import type { RasterImage } from '@tessera/core';
import type { SlideLevel } from '@tessera/tiler';
import { levelSize, type DeepZoom, type TileRect } from './deep-zoom.js';
import { resizeRaster, type PixelSource } from './source.js';

/** Deep Zoom levels at most this large (longer side) that lie 2x or more below the nearest slide level are made whole. */
export const OVERVIEW_SIDE = 2048;

/** The coarsest level whose downsample is at most `downsample` (level 0 when none is). */
function finestLevelFor(levels: readonly SlideLevel[], base: number, downsample: number): SlideLevel {
  let best = levels[0];
  for (const level of levels) if (base / level.width <= downsample * 1.001) best = level;
  return best;
}

/** Copies `image` into a `width` x `height` raster, repeating its last column and row where it is smaller. */
function padToSize(image: RasterImage, width: number, height: number): RasterImage {
  if (image.width === width && image.height === height) return image;
  const c = image.channels;
  const data = new Uint8Array(width * height * c);
  for (let y = 0; y < height; y++) {
    const sy = Math.min(y, image.height - 1);
    for (let x = 0; x < width; x++) {
      const sx = Math.min(x, image.width - 1);
      const src = (sy * image.width + sx) * c;
      const dst = (y * width + x) * c;
      for (let k = 0; k < c; k++) data[dst + k] = image.data[src + k];
    }
  }
  return { data, width, height, channels: c };
}

/** Cuts `rect` out of a whole-level raster. */
function crop(image: RasterImage, rect: { x: number; y: number; width: number; height: number }): RasterImage {
  const c = image.channels;
  const data = new Uint8Array(rect.width * rect.height * c);
  for (let r = 0; r < rect.height; r++) {
    const src = ((rect.y + r) * image.width + rect.x) * c;
    data.set(image.data.subarray(src, src + rect.width * c), r * rect.width * c);
  }
  return { data, width: rect.width, height: rect.height, channels: c };
}

/** The slide level a Deep Zoom level is read from, and the scale from that level to it. */
function readPlan(source: PixelSource, dz: DeepZoom, dzLevel: number): { level: SlideLevel; scale: number } {
  const slide = source.slide;
  const level = finestLevelFor(slide.levels, slide.width, 2 ** (dz.maxLevel - dzLevel));
  // Level pixels per Deep Zoom pixel, from the widths (the levels' downsample is a mean of both axes).
  const ratio = slide.width / level.width / 2 ** (dz.maxLevel - dzLevel);
  return { level, scale: ratio > 0.998 ? 1 : ratio };
}

/** Whether a Deep Zoom level is made whole (small, and 2x or more below the nearest slide level). */
function madeWhole(source: PixelSource, dz: DeepZoom, dzLevel: number): boolean {
  const size = levelSize(dz, dzLevel);
  return readPlan(source, dz, dzLevel).scale < 0.5 && Math.max(size.width, size.height) <= OVERVIEW_SIDE;
}

/**
 * A Deep Zoom level made whole: the finest such level from the slide's thumbnail (one decode of a slide level), each
 * coarser one by resampling the one above it.
 */
function overviewOf(source: PixelSource, dz: DeepZoom, dzLevel: number): Promise<RasterImage> {
  const size = levelSize(dz, dzLevel);
  if (dzLevel < dz.maxLevel && madeWhole(source, dz, dzLevel + 1)) {
    return source.memo(`deep zoom ${dzLevel}`, async () =>
      resizeRaster(await overviewOf(source, dz, dzLevel + 1), size.width, size.height),
    );
  }
  return source.overview(size.width, size.height);
}

/**
 * The pixels of a Deep Zoom tile of a slide, `[height, width, channels]` (RGB, or grey for one-channel slides).
 * @example
 * const tile = await slideTile(source, deepZoom(slide.width, slide.height), tileRect(dz, 12, 0, 0));
 */
export async function slideTile(source: PixelSource, dz: DeepZoom, rect: TileRect): Promise<RasterImage> {
  const { level, scale } = readPlan(source, dz, rect.level);
  if (madeWhole(source, dz, rect.level)) return crop(await overviewOf(source, dz, rect.level), rect);
  // The Deep Zoom level may be a pixel larger than the scaled slide level (ceil against round): clip and repeat.
  const bounds = { width: Math.round(level.width * scale), height: Math.round(level.height * scale) };
  const x = Math.min(rect.x, bounds.width - 1);
  const y = Math.min(rect.y, bounds.height - 1);
  const width = Math.max(1, Math.min(rect.x + rect.width, bounds.width) - x);
  const height = Math.max(1, Math.min(rect.y + rect.height, bounds.height) - y);
  const image = await source.read({ x, y, width, height }, level.index, scale);
  return padToSize(image, rect.width, rect.height);
}

/** The label map's pixels under a tile's pixels: for each tile column (or row), a column (row) of a label level. */
function sampleIndices(start: number, count: number, perPixel: number, limit: number): Int32Array {
  const out = new Int32Array(count);
  for (let i = 0; i < count; i++) out[i] = Math.min(limit - 1, Math.floor((start + i + 0.5) * perPixel));
  return out;
}

/**
 * The class values of a Deep Zoom tile of the slide, `[height, width]`, from a label map of any size that covers the
 * slide (`tessera predict` at another µm/px writes a smaller one): the label under each tile pixel's centre.
 * @param slide - Level-0 size of the slide, whose Deep Zoom pyramid `dz` is.
 */
export async function labelTile(labels: PixelSource, dz: DeepZoom, rect: TileRect): Promise<Uint8Array> {
  const map = labels.slide;
  // Label-map pixels (level 0) per Deep Zoom pixel.
  const gx = (rect.downsample * map.width) / dz.width;
  const gy = (rect.downsample * map.height) / dz.height;
  const level = finestLevelFor(map.levels, map.width, Math.max(gx, 1));
  const ax = (gx * level.width) / map.width;
  const ay = (gy * level.height) / map.height;
  const xs = sampleIndices(rect.x, rect.width, ax, level.width);
  const ys = sampleIndices(rect.y, rect.height, ay, level.height);
  const x0 = xs[0];
  const y0 = ys[0];
  const region = { x: x0, y: y0, width: xs[xs.length - 1] - x0 + 1, height: ys[ys.length - 1] - y0 + 1 };
  const image = await labels.read(region, level.index);
  const out = new Uint8Array(rect.width * rect.height);
  const c = image.channels;
  for (let r = 0; r < rect.height; r++) {
    const row = (ys[r] - y0) * region.width;
    for (let q = 0; q < rect.width; q++) out[r * rect.width + q] = image.data[(row + xs[q] - x0) * c];
  }
  return out;
}

/** A colour table over class values: `[256, 4]` RGBA, alpha 0 for values not drawn. */
export type ColourTable = Uint8Array;

/**
 * The RGBA overlay of class values through a colour table; `known` (optional) marks the pixels that have a value
 * (0: transparent).
 */
export function colourise(values: Uint8Array, table: ColourTable, known?: Uint8Array): Uint8Array {
  const out = new Uint8Array(values.length * 4);
  for (let i = 0; i < values.length; i++) {
    if (known && !known[i]) continue;
    const t = values[i] * 4;
    if (table[t + 3] === 0) continue;
    out[i * 4] = table[t];
    out[i * 4 + 1] = table[t + 1];
    out[i * 4 + 2] = table[t + 2];
    out[i * 4 + 3] = table[t + 3];
  }
  return out;
}
