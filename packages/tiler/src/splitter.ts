/**
 * The tiler's side of the splitter: core's `splitImage` over a slide level, vertical stripes of a plan, and which
 * tiles hold tissue. Where the tiles go and how much of each is kept is core's, shared with image prediction.
 */
import {
  checkTileOptions as checkCoreTileOptions,
  InvalidOptionError,
  resolveTiling,
  splitImage,
  type RasterImage,
  type SplitOptions,
  type TileLocation,
  type TilePlan,
  type TilingOptions,
} from '@tessera/core';
import { TilerOptionError } from './errors.js';

export { defaultOverlap, type SplitOptions, type TileLocation, type TilePlan } from '@tessera/core';

/** Runs one of core's tiling functions, raising its option errors as {@link TilerOptionError}s (`E_TILER_OPTION`). */
function asTilerOption<T>(run: () => T): T {
  try {
    return run();
  } catch (error) {
    if (error instanceof InvalidOptionError && !(error instanceof TilerOptionError)) {
      throw new TilerOptionError(error.message, error.hint);
    }
    throw error;
  }
}

/**
 * Checks a tile size and overlap against an input multiple (core's `checkTileOptions`).
 * @throws {@link TilerOptionError} for a tile that is not a positive multiple of `multiple`, or an overlap that is not
 * a multiple of it below the tile size.
 */
export function checkTileOptions(tile: number, overlap: number, multiple: number): void {
  asTilerOption(() => checkCoreTileOptions(tile, overlap, multiple));
}

/**
 * Fills in the tile, overlap and trimmed context for a model as image prediction does (core's `resolveTiling`).
 * @throws {@link TilerOptionError} as {@link checkTileOptions}, or when the receptive field needs an overlap not
 * below the tile.
 */
export function resolveTileOptions(options: TilingOptions): { tile: number; overlap: number; context: number } {
  return asTilerOption(() => resolveTiling(options));
}

/**
 * Lays square tiles over a level with core's `splitImage`, the splitter of image prediction: origins on the input
 * multiple, the last tile of each row and column flush with the level rounded up to the multiple (the pixels past it
 * are mirrored by the reader), and each tile keeping its pixels at least `context` from the edges it shares with
 * neighbours, so when `overlap >= 2 * context` and `context` is the network's receptive half-width, the stitched
 * result does not depend on the tiling.
 * @throws {@link TilerOptionError} for a tile or overlap that is not a multiple of `multiple`, or overlap >= tile.
 * @example
 * const plan = splitLevel({ width: 2220, height: 2967, tile: 512, overlap: 48, multiple: 16 });
 */
export function splitLevel(options: SplitOptions): TilePlan {
  return asTilerOption(() => splitImage(options));
}

/** A vertical stripe of a plan: the image columns it outputs and the tiles that blend into them. */
export interface Stripe {
  /** Index of the stripe, left to right. */
  index: number;
  /** First image column the stripe outputs, and its width. */
  x: number;
  width: number;
  /**
   * The plan of the stripe for the merger: its tiles (plan order, indices from 0) with `x` relative to the stripe,
   * so a tile that starts left of it has a negative `x`; only the columns inside the stripe are blended.
   */
  plan: TilePlan;
  /** The same tiles as in the full plan (where to read them), by the stripe plan's tile index. */
  tiles: TileLocation[];
}

/**
 * Cuts a plan into vertical stripes of at most `maxWidth` image columns (at least one tile column each), processed
 * one after the other, so the merger holds a few tile rows of one stripe, not of the whole width: memory no longer
 * grows with the slide's width. A stripe's boundary lies where a tile column's kept pixels start; the tiles of the
 * column left of it also reach into the stripe and are predicted for both stripes (the same bits each time, so the
 * output does not depend on the stripe width, apart from the tiles' company in a batch).
 * @example
 * for (const stripe of splitStripes(plan, 16384)) predict(stripe.tiles); // merge with stripe.plan
 */
export function splitStripes(plan: TilePlan, maxWidth: number): Stripe[] {
  if (!(Number.isInteger(maxWidth) && maxWidth > 0)) {
    throw new TilerOptionError(
      `Expected a stripe width that is a positive integer but received ${maxWidth}.`,
      'Use a stripe width of at least the tile size, e.g. 16384.',
    );
  }
  const firstRow = plan.tiles.slice(0, plan.columns);
  const keptStart = firstRow.map((t) => t.x + t.trim.left);
  const keptEnd = firstRow.map((t) => Math.min(plan.width, t.x + plan.tileWidth - t.trim.right));
  // Stripe boundaries at kept starts of tile columns: as many columns as fit in maxWidth, at least one.
  const endOf = (c: number) => (c < plan.columns ? keptStart[c] : plan.width);
  const bounds = [0];
  for (let column = 0; column < plan.columns; ) {
    let next = column + 1;
    while (next < plan.columns && endOf(next + 1) - keptStart[column] <= maxWidth) next++;
    bounds.push(next);
    column = next;
  }
  const stripes: Stripe[] = [];
  for (let s = 0; s + 1 < bounds.length; s++) {
    const x = keptStart[bounds[s]];
    const end = endOf(bounds[s + 1]);
    // Tile columns whose kept pixels reach into [x, end).
    const columns: number[] = [];
    for (let c = 0; c < plan.columns; c++) if (keptStart[c] < end && keptEnd[c] > x) columns.push(c);
    const tiles = plan.tiles.filter((t) => columns.includes(t.column));
    const local = tiles.map((t, index) => ({ ...t, index, column: t.column - columns[0], x: t.x - x }));
    stripes.push({
      index: s,
      x,
      width: end - x,
      plan: { ...plan, width: end - x, columns: columns.length, tiles: local },
      tiles,
    });
  }
  return stripes;
}

/** Otsu's threshold of 8-bit values: the level that maximises the between-class variance. */
export function otsuThreshold(values: ArrayLike<number>): number {
  const histogram = new Float64Array(256);
  for (let i = 0; i < values.length; i++) histogram[values[i]]++;
  const total = values.length;
  let sum = 0;
  for (let v = 0; v < 256; v++) sum += v * histogram[v];
  let weightBelow = 0;
  let sumBelow = 0;
  let best = 0;
  let bestVariance = -1;
  for (let t = 0; t < 256; t++) {
    weightBelow += histogram[t];
    if (weightBelow === 0) continue;
    const weightAbove = total - weightBelow;
    if (weightAbove === 0) break;
    sumBelow += t * histogram[t];
    const meanBelow = sumBelow / weightBelow;
    const meanAbove = (sum - sumBelow) / weightAbove;
    const variance = weightBelow * weightAbove * (meanBelow - meanAbove) ** 2;
    if (variance > bestVariance) {
      bestVariance = variance;
      best = t;
    }
  }
  return best;
}

/**
 * A tissue mask of a thumbnail: a pixel is tissue when its saturation (RGB) or darkness (grey) is above Otsu's
 * threshold and above `minimum`. Glass is bright and grey, stained tissue is coloured or darker.
 * @returns one byte per thumbnail pixel, 1 = tissue; all ones when the thumbnail has no contrast to threshold.
 */
export function tissueMask(thumbnail: RasterImage, minimum = 20): Uint8Array {
  const { data, width, height, channels } = thumbnail;
  const n = width * height;
  const score = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    if (channels >= 3) {
      const r = data[i * channels];
      const g = data[i * channels + 1];
      const b = data[i * channels + 2];
      const max = Math.max(r, g, b);
      const min = Math.min(r, g, b);
      const saturation = max === 0 ? 0 : ((max - min) * 255) / max;
      score[i] = Math.round(Math.max(saturation, 255 - max));
    } else score[i] = 255 - data[i * channels];
  }
  const threshold = Math.max(otsuThreshold(score), minimum);
  const mask = new Uint8Array(n);
  let count = 0;
  for (let i = 0; i < n; i++) {
    mask[i] = score[i] > threshold ? 1 : 0;
    count += mask[i];
  }
  return count === 0 ? mask.fill(1) : mask;
}

/**
 * Marks the tiles of `plan` that hold tissue: a tile is kept when at least `minFraction` of the thumbnail pixels
 * under it (whole tile, overlap included) are tissue. Changes `plan.tiles[i].tissue` and returns the number kept.
 */
export function markTissue(
  plan: TilePlan,
  mask: Uint8Array,
  maskWidth: number,
  maskHeight: number,
  minFraction = 0.01,
) {
  const sx = maskWidth / plan.width;
  const sy = maskHeight / plan.height;
  let kept = 0;
  for (const tile of plan.tiles) {
    const x0 = Math.floor(tile.x * sx);
    const y0 = Math.floor(tile.y * sy);
    const x1 = Math.min(maskWidth, Math.max(x0 + 1, Math.ceil((tile.x + plan.tileWidth) * sx)));
    const y1 = Math.min(maskHeight, Math.max(y0 + 1, Math.ceil((tile.y + plan.tileHeight) * sy)));
    let hits = 0;
    for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) hits += mask[y * maskWidth + x];
    tile.tissue = hits > 0 && hits >= minFraction * (x1 - x0) * (y1 - y0);
    if (tile.tissue) kept++;
  }
  return kept;
}
