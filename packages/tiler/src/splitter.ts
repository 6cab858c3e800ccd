/**
 * The splitter: where the tiles of a level go, how much of each tile is kept, and which tiles hold tissue.
 */
import type { RasterImage } from '@tessera/core';
import { TilerOptionError } from './errors.js';

/** Options of {@link splitLevel}. */
export interface SplitOptions {
  /** Size of the image to cover (the level, or the resampled level), in pixels. */
  width: number;
  height: number;
  /** Side of the square tiles; a multiple of `multiple`. */
  tile: number;
  /** Pixels shared by neighbouring tiles; a multiple of `multiple`, less than `tile`. */
  overlap: number;
  /** The architecture's input multiple: tile origins fall on multiples of it, so pooling grids line up. */
  multiple: number;
  /**
   * Pixels discarded at each tile edge that touches another tile (the receptive half-width of the network), at most
   * half the overlap with that neighbour. Default: half the overlap.
   */
  context?: number;
}

/** One tile: where it is read from and which part of it counts. */
export interface TileLocation {
  /** Index in the plan, row-major. */
  index: number;
  /** Tile row and column. */
  row: number;
  column: number;
  /** Top-left corner in image pixels (a multiple of the input multiple). */
  x: number;
  y: number;
  /** Pixels discarded at each side (0 at the image edges). */
  trim: { top: number; bottom: number; left: number; right: number };
  /** Whether the tile holds tissue (always true without tissue detection). */
  tissue: boolean;
}

/** The tiles of a level. */
export interface TilePlan {
  width: number;
  height: number;
  /** Tile size: `tile`, or less along a side shorter than `tile` (the side rounded up to the multiple). */
  tileWidth: number;
  tileHeight: number;
  overlap: number;
  /** Rows and columns of tiles. */
  rows: number;
  columns: number;
  /** Top of each tile row, the first image row each tile row keeps, and the image row after the last one it keeps. */
  rowStarts: number[];
  keptRowStarts: number[];
  keptRowEnds: number[];
  tiles: TileLocation[];
}

/** Receptive-field-derived overlap: `2 * roundUp(ceil(rf / 2), multiple)`, so each side keeps its full context. */
export function defaultOverlap(receptiveField: number, multiple: number): number {
  return 2 * Math.ceil(Math.ceil(receptiveField / 2) / multiple) * multiple;
}

function starts(n: number, tile: number, stride: number): number[] {
  const result: number[] = [];
  for (let p = 0; ; p += stride) {
    if (p + tile >= n) {
      result.push(Math.max(0, n - tile));
      break;
    }
    result.push(p);
  }
  return result;
}

/**
 * Checks a tile size and overlap against an input multiple.
 * @throws {@link TilerOptionError} for a tile that is not a positive multiple of `multiple`, or an overlap that is not
 * a multiple of it below the tile size.
 */
export function checkTileOptions(tile: number, overlap: number, multiple: number): void {
  if (!(Number.isInteger(tile) && tile > 0 && tile % multiple === 0)) {
    throw new TilerOptionError(
      `Expected --tile to be a positive multiple of ${multiple} (the architecture's input multiple) but received ` +
        `${tile}.`,
      `Use --tile ${Math.max(multiple, Math.ceil(tile / multiple) * multiple || multiple)}.`,
    );
  }
  if (!(Number.isInteger(overlap) && overlap >= 0 && overlap < tile && overlap % multiple === 0)) {
    throw new TilerOptionError(
      `Expected --overlap to be a multiple of ${multiple} between 0 and ${tile - multiple} but received ${overlap}.`,
      `Use --overlap ${Math.min(tile - multiple, Math.ceil(Math.max(0, overlap) / multiple) * multiple)}.`,
    );
  }
}

/**
 * Lays square tiles over an image in row-major order. Origins are multiples of the input multiple, the last tile of
 * each row and column is flush with the image rounded up to the multiple, so every tile is the same size and no tile
 * reaches more than `multiple - 1` pixels past the image (those pixels are mirrored by the reader). Each tile keeps
 * its pixels at least `context` from the edges it shares with neighbours, so when `overlap >= 2 * context` and
 * `context` is the network's receptive half-width, the stitched result does not depend on the tiling.
 * @throws {@link TilerOptionError} for a tile or overlap that is not a multiple of `multiple`, or overlap >= tile.
 * @example
 * const plan = splitLevel({ width: 2220, height: 2967, tile: 512, overlap: 48, multiple: 16 });
 */
export function splitLevel(options: SplitOptions): TilePlan {
  const { width, height, tile, overlap, multiple } = options;
  checkTileOptions(tile, overlap, multiple);
  const context = options.context ?? Math.floor(overlap / 2);
  const roundUp = (n: number) => Math.ceil(n / multiple) * multiple;
  const tileWidth = Math.min(tile, roundUp(width));
  const tileHeight = Math.min(tile, roundUp(height));
  const ys = starts(roundUp(height), tileHeight, tileHeight - overlap);
  const xs = starts(roundUp(width), tileWidth, tileWidth - overlap);
  const trims = (list: number[], size: number) =>
    list.map((p, i) => ({
      before: i === 0 ? 0 : Math.min(context, Math.floor((list[i - 1] + size - p) / 2)),
      after: i === list.length - 1 ? 0 : Math.min(context, Math.floor((p + size - list[i + 1]) / 2)),
    }));
  const rowTrims = trims(ys, tileHeight);
  const columnTrims = trims(xs, tileWidth);
  const tiles: TileLocation[] = [];
  ys.forEach((y, row) =>
    xs.forEach((x, column) =>
      tiles.push({
        index: tiles.length,
        row,
        column,
        x,
        y,
        trim: {
          top: rowTrims[row].before,
          bottom: rowTrims[row].after,
          left: columnTrims[column].before,
          right: columnTrims[column].after,
        },
        tissue: true,
      }),
    ),
  );
  return {
    width,
    height,
    tileWidth,
    tileHeight,
    overlap,
    rows: ys.length,
    columns: xs.length,
    rowStarts: ys,
    keptRowStarts: ys.map((y, i) => y + rowTrims[i].before),
    keptRowEnds: ys.map((y, i) => Math.min(height, y + tileHeight - rowTrims[i].after)),
    tiles,
  };
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
