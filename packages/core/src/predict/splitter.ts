/**
 * The splitter of the inferer (MONAI `inferers/splitter.py`): where the tiles of an image go and how much of each tile
 * is kept. Images (`predictProbabilities`) and slides (`@tessera/tiler`) are cut by the same code, so `--tile` and
 * `--overlap` mean the same for a PNG and an SVS.
 */
import { InvalidOptionError } from '../errors.js';

/** Tile side used when none is given, rounded up to the input multiple. */
export const DEFAULT_TILE = 512;

/** Options of {@link splitImage}. */
export interface SplitOptions {
  /** Size of the image to cover (an image, a slide level, or a resampled level), in pixels. */
  width: number;
  height: number;
  /** Side of the square tiles; a multiple of `multiple`. */
  tile: number;
  /** Pixels shared by neighbouring tiles; a multiple of `multiple`, less than `tile`. */
  overlap: number;
  /** The architecture's input multiple: tile origins fall on multiples of it, so pooling grids line up. */
  multiple: number;
  /**
   * Pixels discarded at each tile edge that touches another tile (the receptive half-width of the network, see
   * {@link receptiveContext}), at most half the overlap with that neighbour. Default: half the overlap.
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

/** The tiles of an image. */
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
  return 2 * receptiveContext(receptiveField, multiple);
}

/**
 * Pixels trimmed at each shared tile edge for a network of this receptive field: its half-width `ceil(rf / 2)` rounded
 * up to the input multiple (half of {@link defaultOverlap}).
 */
export function receptiveContext(receptiveField: number, multiple: number): number {
  return Math.ceil(Math.ceil(receptiveField / 2) / multiple) * multiple;
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
 * @throws {@link InvalidOptionError} for a tile that is not a positive multiple of `multiple`, or an overlap that is
 * not a multiple of it below the tile size.
 */
export function checkTileOptions(tile: number, overlap: number, multiple: number): void {
  if (!(Number.isInteger(tile) && tile > 0 && tile % multiple === 0)) {
    throw new InvalidOptionError(
      `Expected tile to be a positive multiple of ${multiple} (the architecture's input multiple) but received ` +
        `${tile}.`,
      `Set tile to ${Math.max(multiple, Math.ceil(tile / multiple) * multiple || multiple)}.`,
      'tile',
    );
  }
  if (!(Number.isInteger(overlap) && overlap >= 0 && overlap < tile && overlap % multiple === 0)) {
    throw new InvalidOptionError(
      `Expected overlap to be a multiple of ${multiple} between 0 and ${tile - multiple} but received ${overlap}.`,
      `Set overlap to ${Math.min(tile - multiple, Math.ceil(Math.max(0, overlap) / multiple) * multiple)}.`,
      'overlap',
    );
  }
}

/** Options of {@link resolveTiling}: the architecture's numbers and the user's tile and overlap, if any. */
export interface TilingOptions {
  multiple: number;
  /** The network's receptive field in pixels; the overlap and the trimmed context derive from it. */
  receptiveField?: number;
  /** Default {@link DEFAULT_TILE} rounded up to `multiple`. */
  tile?: number;
  /**
   * Default {@link defaultOverlap} of `receptiveField`; without a receptive field, a quarter of the tile rounded down
   * to `multiple`.
   */
  overlap?: number;
}

/**
 * Fills in and checks the tile, overlap and trimmed context of a tiling, the same for images and slides.
 * @returns `context`: {@link receptiveContext} when the receptive field is known, else half the overlap.
 * @throws {@link InvalidOptionError} for a tile or overlap that is not a multiple of `multiple`, an overlap not below
 * the tile, or a receptive field that needs an overlap not below the tile.
 * @example
 * const { tile, overlap, context } = resolveTiling({ multiple: 16, receptiveField: 215 }); // 512, 224, 112
 */
export function resolveTiling(options: TilingOptions): { tile: number; overlap: number; context: number } {
  const { multiple, receptiveField } = options;
  const tile = options.tile ?? Math.ceil(DEFAULT_TILE / multiple) * multiple;
  const derived =
    receptiveField === undefined
      ? Math.floor(tile / 4 / multiple) * multiple
      : defaultOverlap(receptiveField, multiple);
  const overlap = options.overlap ?? derived;
  if (options.overlap === undefined && receptiveField !== undefined && overlap >= tile) {
    throw new InvalidOptionError(
      `The model's receptive field (${receptiveField} px) needs neighbouring tiles to share ${overlap} px, ` +
        `which is not smaller than tile ${tile}.`,
      `Set tile to a larger size, e.g. ${Math.ceil((overlap * 2) / multiple) * multiple}, or set overlap.`,
      ['tile', 'overlap'],
    );
  }
  checkTileOptions(tile, overlap, multiple);
  const context = receptiveField === undefined ? Math.floor(overlap / 2) : receptiveContext(receptiveField, multiple);
  return { tile, overlap, context };
}

/**
 * Lays square tiles over an image in row-major order. Origins are multiples of the input multiple, the last tile of
 * each row and column is flush with the image rounded up to the multiple, so every tile is the same size and no tile
 * reaches more than `multiple - 1` pixels past the image (those pixels mirror the ones inside: `padReflect`, or the
 * slide reader). Each tile keeps its pixels at least `context` from the edges it shares with neighbours, so when
 * `overlap >= 2 * context` and `context` is the network's receptive half-width, the stitched result does not depend
 * on the tiling.
 * @throws {@link InvalidOptionError} for a tile or overlap that is not a multiple of `multiple`, or overlap >= tile.
 * @example
 * const plan = splitImage({ width: 2220, height: 2967, tile: 512, overlap: 48, multiple: 16 });
 */
export function splitImage(options: SplitOptions): TilePlan {
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
