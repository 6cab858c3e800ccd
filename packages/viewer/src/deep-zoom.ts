/**
 * Deep Zoom geometry: the levels and tiles of an image as OpenSeadragon and other Deep Zoom clients address them.
 * Level `maxLevel` is full resolution (level 0 of the slide), each level below halves it, level 0 is one pixel.
 * Tiles are `tileSize` pixels plus `overlap` pixels shared with each neighbour, so that no seam shows between them.
 */
import { badTileCoordinate } from './errors.js';

/** Deep Zoom tile size of the viewer: 254 + 1 overlap on each side, so inner tiles are 256 x 256. */
export const TILE_SIZE = 254;
/** Pixels each tile shares with its neighbours. */
export const TILE_OVERLAP = 1;

/** The Deep Zoom pyramid of an image. */
export interface DeepZoom {
  /** Full-resolution size (level 0 of the slide). */
  width: number;
  height: number;
  tileSize: number;
  overlap: number;
  /** The full-resolution level: `ceil(log2(max(width, height)))`. */
  maxLevel: number;
}

/** A tile rectangle in the pixels of its Deep Zoom level. */
export interface TileRect {
  level: number;
  column: number;
  row: number;
  x: number;
  y: number;
  width: number;
  height: number;
  /** Full-resolution pixels per pixel of this level (`2 ** (maxLevel - level)`). */
  downsample: number;
}

/**
 * The Deep Zoom pyramid of an image of `width` x `height`.
 * @example
 * deepZoom(2220, 2967).maxLevel; // 12
 */
export function deepZoom(width: number, height: number, tileSize = TILE_SIZE, overlap = TILE_OVERLAP): DeepZoom {
  const maxLevel = Math.max(0, Math.ceil(Math.log2(Math.max(width, height))));
  return { width, height, tileSize, overlap, maxLevel };
}

/** Size of a Deep Zoom level in pixels. */
export function levelSize(dz: DeepZoom, level: number): { width: number; height: number } {
  const f = 2 ** (dz.maxLevel - level);
  return { width: Math.max(1, Math.ceil(dz.width / f)), height: Math.max(1, Math.ceil(dz.height / f)) };
}

/** Columns and rows of tiles of a Deep Zoom level. */
export function levelTiles(dz: DeepZoom, level: number): { columns: number; rows: number } {
  const { width, height } = levelSize(dz, level);
  return { columns: Math.ceil(width / dz.tileSize), rows: Math.ceil(height / dz.tileSize) };
}

/** Parses a decimal integer path segment: digits only (no sign, no exponent, no spaces), else `NaN`. */
function parseIndex(text: string): number {
  return /^\d{1,9}$/.test(text) ? Number(text) : NaN;
}

/**
 * The rectangle of tile `column`, `row` of `level`, with its overlap, checked against the pyramid.
 * @throws {@link TileRequestError} (HTTP 400) naming the coordinate, its range and what was received.
 * @example
 * tileRect(deepZoom(2220, 2967), '12', '1', '0'); // { x: 253, y: 0, width: 256, height: 255, ... }
 */
export function tileRect(
  dz: DeepZoom,
  level: string | number,
  column: string | number,
  row: string | number,
): TileRect {
  const what = 'Deep Zoom tile';
  const l = typeof level === 'number' ? level : parseIndex(level);
  if (!(Number.isInteger(l) && l >= 0 && l <= dz.maxLevel))
    throw badTileCoordinate(what, 'level', level, 0, dz.maxLevel);
  const { columns, rows } = levelTiles(dz, l);
  const { width, height } = levelSize(dz, l);
  const c = typeof column === 'number' ? column : parseIndex(column);
  const r = typeof row === 'number' ? row : parseIndex(row);
  if (!(Number.isInteger(c) && c >= 0 && c < columns)) {
    throw badTileCoordinate(`${what} of level ${l}`, 'column', column, 0, columns - 1);
  }
  if (!(Number.isInteger(r) && r >= 0 && r < rows)) {
    throw badTileCoordinate(`${what} of level ${l}`, 'row', row, 0, rows - 1);
  }
  const x = c * dz.tileSize - (c > 0 ? dz.overlap : 0);
  const y = r * dz.tileSize - (r > 0 ? dz.overlap : 0);
  const x1 = Math.min(width, (c + 1) * dz.tileSize + dz.overlap);
  const y1 = Math.min(height, (r + 1) * dz.tileSize + dz.overlap);
  return { level: l, column: c, row: r, x, y, width: x1 - x, height: y1 - y, downsample: 2 ** (dz.maxLevel - l) };
}

/** The Deep Zoom descriptor (`.dzi` XML) of a pyramid whose tiles have `format` (`jpeg` or `png`). */
export function dziXml(dz: DeepZoom, format: 'jpeg' | 'png'): string {
  return (
    '<?xml version="1.0" encoding="UTF-8"?>\n' +
    `<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="${format}" Overlap="${dz.overlap}" ` +
    `TileSize="${dz.tileSize}"><Size Width="${dz.width}" Height="${dz.height}"/></Image>\n`
  );
}
