/**
 * Levels stored as grids of separately encoded tiles (TIFF tiles and strips, DICOM frames), decoded by Tessera
 * itself: each tile's bytes are read from the file and decoded by the codec of {@link TileCodec}, and a region is
 * assembled from the tiles it touches. This is the path of every lossy codec, where the colour space of the decoded
 * pixels depends on more than the pixels (JPEG's markers against the TIFF's Photometric tag, Aperio's JPEG 2000
 * variants), so that Tessera decides it by one documented rule instead of inheriting a library's guess.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { SlideFormatError } from './errors.js';
import { decodeTile } from './codecs.js';

/** How the bytes of one tile are encoded, and what colour space they hold. */
export type TileCodec =
  | {
      /**
       * Baseline or progressive JPEG (TIFF compression 7, DICOM 1.2.840.10008.1.2.4.50/51). The colour space is
       * decided per tile: a JFIF marker means YCbCr, an Adobe marker its transform flag, and otherwise `photometric`
       * (the TIFF tag or DICOM attribute) as libtiff and OpenSlide read it.
       */
      kind: 'jpeg';
      /** The TIFF JPEGTables stream (quantisation and Huffman tables shared by all tiles), if any. */
      tables?: Uint8Array;
      photometric: 'rgb' | 'ycbcr' | 'grey';
    }
  | {
      /**
       * A JPEG 2000 codestream or JP2 file (Aperio 33003/33005, TIFF 34712, DICOM 1.2.840.10008.1.2.4.90/91).
       * `ycbcr` (Aperio 33003): the components are Y, Cb, Cr (Cb and Cr possibly subsampled) without the
       * codestream's own colour transform, converted to RGB as OpenSlide does; `rgb`: the decoded components are RGB
       * (after the codestream's own transform, if any).
       */
      kind: 'jpeg2000';
      colour: 'rgb' | 'ycbcr';
    }
  | {
      /** High-throughput JPEG 2000 (DICOM 1.2.840.10008.1.2.4.201/202/203). */
      kind: 'htj2k';
    }
  | {
      /** Uncompressed 8-bit samples, interleaved, `tileWidth x tileHeight` of them (DICOM native pixel data). */
      kind: 'raw';
    };

/** A level stored as a grid of encoded tiles in one file. Plain data, so it can be sent to worker threads. */
export interface TileGrid {
  /** The file holding the tiles. */
  file: string;
  /** Level size in pixels. */
  width: number;
  height: number;
  /** Size of every tile (tiles at the right and bottom edges are stored at full size and cropped). */
  tileWidth: number;
  tileHeight: number;
  /** Tiles per row and per column: `ceil(width / tileWidth)`, `ceil(height / tileHeight)`. */
  columns: number;
  rows: number;
  /**
   * Byte offset and length in `file` of tile `(column, row)`, at index `row * columns + column`. A length of 0 marks
   * a tile that is not stored (sparse TIFFs, DICOM TILED_SPARSE), read as {@link TileGrid.fill}.
   */
  offsets: Float64Array;
  lengths: Float64Array;
  /**
   * DICOM encapsulated pixel data: each range spans the frame's fragments with their 8-byte item headers (tag
   * FFFE,E000 and length), which are dropped before decoding.
   */
  dicomItems?: boolean;
  codec: TileCodec;
  /** Samples per pixel of the decoded tiles: 1 (grey) or 3 (RGB). */
  samples: 1 | 3;
  /** Value of every sample of a tile that is not stored (255: white glass). */
  fill: number;
  /** Human name of the encoding for messages, e.g. `JPEG`, `Aperio JPEG 2000 (YCbCr)`, `DICOM JPEG 2000`. */
  encoding: string;
  /** Where the grid is in the slide, for messages: the level index. */
  level: number;
}

/** A decoded tile: `[tileHeight, tileWidth, samples]` 8-bit pixels. */
export interface DecodedTile {
  data: Uint8Array;
  width: number;
  height: number;
  channels: number;
}

/** Reads the encoded bytes of one tile, with DICOM item headers removed. */
async function readTileBytes(handle: FileHandle, grid: TileGrid, index: number): Promise<Uint8Array> {
  const offset = grid.offsets[index];
  const length = grid.lengths[index];
  const bytes = Buffer.allocUnsafe(length);
  const { bytesRead } = await handle.read(bytes, 0, length, offset);
  if (bytesRead !== length) {
    throw new SlideFormatError(
      `Slide "${grid.file}" level ${grid.level}: tile ${index % grid.columns},${Math.floor(index / grid.columns)} ` +
        `(bytes ${offset}-${offset + length}) lies past the end of the file.`,
      'The file was cut short: copy or download it again.',
    );
  }
  if (!grid.dicomItems) return bytes;
  // Fragments: (FFFE,E000) little-endian tag, 4-byte length, the bytes.
  const parts: Uint8Array[] = [];
  let at = 0;
  while (at + 8 <= bytes.length) {
    const group = bytes.readUInt16LE(at);
    const element = bytes.readUInt16LE(at + 2);
    const size = bytes.readUInt32LE(at + 4);
    if (group !== 0xfffe || element !== 0xe000 || at + 8 + size > bytes.length) {
      throw new SlideFormatError(
        `DICOM file "${grid.file}" level ${grid.level}: frame ${index} is not a sequence of pixel data fragments ` +
          `(item header at byte ${offset + at} is ${group.toString(16)},${element.toString(16)}).`,
        'The file is damaged: export the series from the archive again.',
      );
    }
    parts.push(bytes.subarray(at + 8, at + 8 + size));
    at += 8 + size;
  }
  return parts.length === 1 ? parts[0] : Buffer.concat(parts);
}

/** Decoded tiles kept per thread, most recently used last (tiles of overlapping regions are decoded once). */
const cache = new Map<string, DecodedTile>();
let cachedBytes = 0;
/** Budget of {@link cache} per thread. */
const CACHE_BYTES = 48 * 1024 * 1024;

function remember(key: string, tile: DecodedTile): void {
  cache.set(key, tile);
  cachedBytes += tile.data.byteLength;
  for (const [oldKey, old] of cache) {
    if (cachedBytes <= CACHE_BYTES) break;
    cache.delete(oldKey);
    cachedBytes -= old.data.byteLength;
  }
}

/** Empties this thread's cache of decoded tiles (tests, and callers that change a file in place). */
export function clearTileCache(): void {
  cache.clear();
  cachedBytes = 0;
}

/**
 * Reads the rectangle `x, y, width, height` (inside the level) of a tile grid as 8-bit interleaved pixels with the
 * grid's samples per pixel, decoding each tile it touches once (decoded tiles are cached per thread).
 * @returns `[height, width, grid.samples]` pixels.
 * @throws {@link SlideFormatError} when a tile lies outside the file or cannot be decoded, naming the file, level,
 * tile and encoding.
 */
export async function readGridRegion(
  grid: TileGrid,
  x: number,
  y: number,
  width: number,
  height: number,
): Promise<Uint8Array> {
  const samples = grid.samples;
  const out = new Uint8Array(width * height * samples);
  const c0 = Math.floor(x / grid.tileWidth);
  const c1 = Math.floor((x + width - 1) / grid.tileWidth);
  const r0 = Math.floor(y / grid.tileHeight);
  const r1 = Math.floor((y + height - 1) / grid.tileHeight);
  let opened: Promise<FileHandle> | undefined;
  const decodeAndRemember = async (key: string) => {
    const index = Number(key.slice(key.lastIndexOf('\0') + 1));
    opened ??= open(grid.file, 'r');
    const tile = await decodeTile(await readTileBytes(await opened, grid, index), grid, index);
    remember(key, tile);
    return tile;
  };
  try {
    const jobs: Promise<void>[] = [];
    for (let row = r0; row <= r1; row++) {
      for (let column = c0; column <= c1; column++) {
        jobs.push(
          (async () => {
            const index = row * grid.columns + column;
            const tx = column * grid.tileWidth;
            const ty = row * grid.tileHeight;
            const left = Math.max(x, tx);
            const top = Math.max(y, ty);
            const right = Math.min(x + width, tx + grid.tileWidth, grid.width);
            const bottom = Math.min(y + height, ty + grid.tileHeight, grid.height);
            if (!(grid.lengths[index] > 0)) {
              for (let r = top; r < bottom; r++) {
                out.fill(grid.fill, ((r - y) * width + left - x) * samples, ((r - y) * width + right - x) * samples);
              }
              return;
            }
            const key = `${grid.file}\0${grid.level}\0${index}`;
            const tile = cache.get(key) ?? (await decodeAndRemember(key));
            cache.delete(key); // most recently used goes last
            cache.set(key, tile);
            const rowBytes = (Math.min(right, tx + tile.width) - left) * samples;
            for (let r = top; r < Math.min(bottom, ty + tile.height); r++) {
              const src = ((r - ty) * tile.width + (left - tx)) * samples;
              const dst = ((r - y) * width + (left - x)) * samples;
              out.set(tile.data.subarray(src, src + rowBytes), dst);
            }
          })(),
        );
      }
    }
    await Promise.all(jobs);
  } finally {
    if (opened) await (await opened.catch(() => undefined))?.close();
  }
  return out;
}
