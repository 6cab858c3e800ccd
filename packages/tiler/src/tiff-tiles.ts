/**
 * TIFF levels decoded by Tessera's tile decoder: which ones ({@link tiffDecoder}) and their {@link TileGrid}s.
 * JPEG and JPEG 2000 levels go this way, because their colour space is not the TIFF's alone to say (QuPath's JFIF
 * tiles in Photometric RGB files, Aperio's YCbCr JPEG 2000) and libvips cannot decode Aperio's JPEG 2000 at all.
 */
import { open } from 'node:fs/promises';
import { jpegColourSpace, scanJpegMarkers } from './codecs.js';
import type { TileCodec, TileGrid } from './tiles.js';

/** The TIFF tags of one image file directory that the slide reader uses, by their TIFF names. */
export interface TiffDirectory {
  ImageWidth: number;
  ImageLength: number;
  TileWidth?: number;
  TileLength?: number;
  TileOffsets?: ArrayLike<number>;
  TileByteCounts?: ArrayLike<number>;
  StripOffsets?: ArrayLike<number>;
  StripByteCounts?: ArrayLike<number>;
  RowsPerStrip?: number;
  Compression?: number;
  PhotometricInterpretation?: number;
  SamplesPerPixel?: number;
  BitsPerSample?: ArrayLike<number> | number;
  PlanarConfiguration?: number;
  JPEGTables?: ArrayLike<number>;
  NewSubfileType?: number;
  ImageDescription?: string;
  XResolution?: ArrayLike<number>;
  YResolution?: ArrayLike<number>;
  ResolutionUnit?: number;
  SubIFDs?: ArrayLike<number>;
  Predictor?: number;
  SampleFormat?: ArrayLike<number>;
  YCbCrSubSampling?: ArrayLike<number>;
  Make?: string;
  XMP?: string;
  /** Whether the IFD has Hamamatsu's private tag 65420 (NDPI). */
  ndpi?: boolean;
  /** File offset of the next IFD in the chain (0 at the end). */
  nextIfd?: number;
}

/** TIFF compression codes whose levels Tessera decodes tile by tile, with the name of each. */
export const TILE_DECODED_COMPRESSIONS: Readonly<Record<number, string>> = {
  7: 'JPEG',
  33003: 'Aperio JPEG 2000 (YCbCr)',
  33005: 'Aperio JPEG 2000 (RGB)',
  34712: 'JPEG 2000',
};

const PHOTOMETRIC_GREY = new Set([0, 1]);
const PHOTOMETRIC_RGB = 2;
const PHOTOMETRIC_YCBCR = 6;

function bitsOf(d: TiffDirectory): number {
  const bits = d.BitsPerSample;
  if (bits === undefined) return 1;
  return typeof bits === 'number' ? bits : Number(bits[0]);
}

/**
 * Who decodes a TIFF level: `tiles` for 8-bit, chunky JPEG and JPEG 2000 levels of grey, RGB or YCbCr samples;
 * `libvips` for everything else (lossless codecs, other sample formats).
 */
export function tiffDecoder(d: TiffDirectory): 'libvips' | 'tiles' {
  const compression = d.Compression ?? 1;
  if (!(compression in TILE_DECODED_COMPRESSIONS)) return 'libvips';
  const samples = d.SamplesPerPixel ?? 1;
  const photometric = d.PhotometricInterpretation ?? (samples >= 3 ? PHOTOMETRIC_RGB : 1);
  const colour = photometric === PHOTOMETRIC_RGB || photometric === PHOTOMETRIC_YCBCR;
  const plain = (samples === 1 && PHOTOMETRIC_GREY.has(photometric)) || (samples === 3 && colour);
  return plain && bitsOf(d) === 8 && (d.PlanarConfiguration ?? 1) === 1 ? 'tiles' : 'libvips';
}

/** The codec of a tile-decoded TIFF level. */
export function tiffCodec(d: TiffDirectory): TileCodec {
  const compression = d.Compression ?? 1;
  const samples = d.SamplesPerPixel ?? 1;
  const photometric = d.PhotometricInterpretation ?? (samples >= 3 ? PHOTOMETRIC_RGB : 1);
  if (compression === 7) {
    const tables = d.JPEGTables ? Uint8Array.from(d.JPEGTables) : undefined;
    const space = samples === 1 ? 'grey' : photometric === PHOTOMETRIC_YCBCR ? 'ycbcr' : 'rgb';
    return { kind: 'jpeg', tables, photometric: space };
  }
  // Aperio: 33003 holds YCbCr components, 33005 RGB; other JPEG 2000 in TIFF follows the Photometric tag.
  const ycbcr = compression === 33003 || (compression === 34712 && photometric === PHOTOMETRIC_YCBCR);
  return { kind: 'jpeg2000', colour: ycbcr ? 'ycbcr' : 'rgb' };
}

/** The tile grid of a tile-decoded TIFF level (tiles, or strips as tiles of the image's width). */
export function tiffTileGrid(file: string, d: TiffDirectory, level: number): TileGrid {
  const tiled = d.TileWidth !== undefined && d.TileOffsets !== undefined;
  const tileWidth = tiled ? d.TileWidth! : d.ImageWidth;
  const tileHeight = tiled ? (d.TileLength ?? d.TileWidth!) : Math.min(d.RowsPerStrip ?? d.ImageLength, d.ImageLength);
  const offsets = (tiled ? d.TileOffsets : d.StripOffsets) ?? [];
  const counts = (tiled ? d.TileByteCounts : d.StripByteCounts) ?? [];
  const columns = Math.ceil(d.ImageWidth / tileWidth);
  const rows = Math.ceil(d.ImageLength / tileHeight);
  const n = columns * rows;
  const grid: TileGrid = {
    file,
    width: d.ImageWidth,
    height: d.ImageLength,
    tileWidth,
    tileHeight,
    columns,
    rows,
    offsets: new Float64Array(n),
    lengths: new Float64Array(n),
    codec: tiffCodec(d),
    samples: (d.SamplesPerPixel ?? 1) >= 3 ? 3 : 1,
    fill: 255,
    encoding: TILE_DECODED_COMPRESSIONS[d.Compression ?? 1] ?? `compression ${d.Compression}`,
    level,
  };
  for (let i = 0; i < n && i < offsets.length; i++) {
    grid.offsets[i] = Number(offsets[i]);
    grid.lengths[i] = Number(offsets[i]) > 0 ? Number(counts[i] ?? 0) : 0;
  }
  return grid;
}

/**
 * Who decodes a JPEG level: libvips (faster: one call per region instead of one per tile) when it reads the level's
 * colours right, that is when the colour space the stream states ({@link jpegColourSpace}, read from the first stored
 * tile and the JPEGTables) is the one the Photometric tag says, which is all libvips and OpenSlide go by; Tessera's
 * tile decoder otherwise (QuPath's JFIF tiles in Photometric RGB files).
 */
export async function jpegLevelDecoder(path: string, d: TiffDirectory): Promise<'libvips' | 'tiles'> {
  const codec = tiffCodec(d);
  if (codec.kind !== 'jpeg' || codec.photometric === 'grey') return 'tiles';
  const offsets = d.TileOffsets ?? d.StripOffsets ?? [];
  const counts = d.TileByteCounts ?? d.StripByteCounts ?? [];
  let index = 0;
  while (index < offsets.length && !(Number(offsets[index]) > 0 && Number(counts[index]) > 0)) index++;
  if (index === offsets.length) return 'tiles';
  const handle = await open(path, 'r');
  try {
    const head = Buffer.alloc(Math.min(Number(counts[index]), 65536));
    await handle.read(head, 0, head.length, Number(offsets[index]));
    const tile = scanJpegMarkers(head);
    const tables = codec.tables ? scanJpegMarkers(codec.tables) : tile;
    const markers = {
      jfif: tile.jfif || tables.jfif,
      adobeTransform: tile.adobeTransform ?? tables.adobeTransform,
      components: tile.components || tables.components,
      ids: tile.ids.length ? tile.ids : tables.ids,
    };
    if (markers.components !== 3) return 'tiles';
    return jpegColourSpace(markers, codec.photometric) === codec.photometric ? 'libvips' : 'tiles';
  } finally {
    await handle.close();
  }
}
