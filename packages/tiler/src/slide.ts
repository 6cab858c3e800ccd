/**
 * Whole-slide image reading: structure from the TIFF directories (read and checked by `tiff-structure.ts` before
 * anything is allocated), pixels from libvips (sharp) or Tessera's tile decoder, which decode only the tiles a region
 * touches.
 */
import { open, stat, type FileHandle } from 'node:fs/promises';
import { extname } from 'node:path';
import sharp from 'sharp';
import { InputNotFoundError, reflectIndex, type RasterImage } from '@tessera/core';
import { isDicomHeader, openDicomSlide, dicomTileGrid } from './dicom.js';
import { readGridRegion, type TileGrid } from './tiles.js';
import { jpegLevelDecoder, tiffDecoder, tiffTileGrid, type TiffDirectory } from './tiff-tiles.js';
import {
  STRUCTURE_LIMITS,
  checkLevelSize,
  checkLevelStructure,
  maxSlidePixels,
  readTileTables,
  readTiffStructure,
  type ParsedDirectory,
  type TiffStructure,
} from './tiff-structure.js';
import {
  SUPPORTED_COMPRESSIONS,
  SlideFormatError,
  TilerOptionError,
  compressionName,
  noSuchLevel,
  notASlide,
  regionOutside,
  unsupportedCompression,
} from './errors.js';

/** File formats {@link openSlide} recognises. */
export type SlideFormat = 'svs' | 'ome-tiff' | 'tiff' | 'dicom' | 'png' | 'jpeg';

/** One resolution level of a slide. */
export interface SlideLevel {
  /** Index in {@link SlideInfo.levels}, 0 = full resolution. */
  index: number;
  width: number;
  height: number;
  /** Level 0 size over this level's size (mean of both axes); 1 for level 0. */
  downsample: number;
  /** Tile size in pixels, or `null` for strip-organised or non-TIFF images. */
  tileWidth: number | null;
  tileHeight: number | null;
  /** TIFF compression code (1 = none, 7 = JPEG, 8 = Deflate...), `null` for PNG/JPEG files. */
  compression: number | null;
  /** libvips addressing of the level: `page` (IFD in the main chain) and, for OME SubIFD pyramids, `subifd`. */
  page: number;
  subifd: number;
  /**
   * Who decodes the level's pixels: `tiles`, Tessera's own tile decoder ({@link TileGrid}: JPEG with its colour rule,
   * JPEG 2000, DICOM frames), or `libvips` (lossless TIFF codecs, PNG and JPEG files).
   */
  decoder: 'libvips' | 'tiles';
  /** The file holding this level when it is not {@link SlideInfo.path} (DICOM: one instance per level). */
  file?: string;
  /** How the level's pixels are encoded when that is not a TIFF compression code (DICOM: the transfer syntax). */
  encoding?: string;
}

/** The structure of a slide, as read by {@link openSlide}. */
export interface SlideInfo {
  path: string;
  format: SlideFormat;
  /** Scanner vendor or writer when known (`aperio`, `ome`), else `generic`. */
  vendor: string;
  /** Level 0 size. */
  width: number;
  height: number;
  /** Colour channels (1 grey, 3 RGB; alpha is dropped when reading). */
  channels: number;
  levels: SlideLevel[];
  /** µm per pixel at level 0 along x and y, or `null` when the file does not say. */
  mpp: { x: number; y: number } | null;
  /** Where {@link mpp} came from. */
  mppSource: 'aperio' | 'ome-xml' | 'philips-xml' | 'tiff-resolution' | 'dicom' | null;
  /** Other images stored in the file and not part of the pyramid (thumbnail, label, macro). */
  associated: { name: string; width: number; height: number }[];
  /** File size in bytes. */
  bytes: number;
}

/** A rectangle of a level, in that level's pixels. */
export interface Region {
  x: number;
  y: number;
  width: number;
  height: number;
}

type Directory = TiffDirectory;

/** Reads the first bytes: TIFF ('II*\0', 'MM\0*', BigTIFF '+'), PNG, JPEG or DICOM ('DICM' after 128 bytes). */
async function sniff(path: string): Promise<'tiff' | 'png' | 'jpeg' | 'dicom' | null> {
  const handle = await open(path, 'r');
  try {
    const head = Buffer.alloc(132);
    await handle.read(head, 0, 132, 0);
    if (isDicomHeader(head)) return 'dicom';
    const tag = head.readUInt16LE(0);
    if (tag === 0x4949 || tag === 0x4d4d) {
      const magic = tag === 0x4949 ? head.readUInt16LE(2) : head.readUInt16BE(2);
      if (magic === 42 || magic === 43) return 'tiff';
    }
    if (head.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return 'png';
    if (head[0] === 0xff && head[1] === 0xd8) return 'jpeg';
    return null;
  } finally {
    await handle.close();
  }
}

const UNIT_TO_UM: Record<string, number> = {
  pm: 1e-6,
  Å: 1e-4,
  nm: 1e-3,
  µm: 1,
  μm: 1,
  um: 1,
  micron: 1,
  mm: 1e3,
  cm: 1e4,
  m: 1e6,
};

/** µm/px from OME-XML `PhysicalSizeX`/`PhysicalSizeY` of the first image (unit default µm). */
export function parseOmeMpp(xml: string): { x: number; y: number } | null {
  const pixels = /<(?:\w+:)?Pixels\b[^>]*>/.exec(xml)?.[0];
  if (!pixels) return null;
  const attr = (name: string) => new RegExp(`\\b${name}="([^"]*)"`).exec(pixels)?.[1];
  const size = (axis: 'X' | 'Y') => {
    const value = Number(attr(`PhysicalSize${axis}`));
    const factor = UNIT_TO_UM[attr(`PhysicalSize${axis}Unit`) ?? 'µm'];
    return Number.isFinite(value) && value > 0 && factor ? value * factor : null;
  };
  const x = size('X');
  const y = size('Y') ?? x;
  return x && y ? { x, y } : null;
}

/**
 * µm/px from a Philips TIFF's XML ImageDescription: the first `DICOM_PIXEL_SPACING` attribute (row and column
 * spacing in mm, quoted: `"0.000227" "0.000227"`), which is level 0's.
 */
export function parsePhilipsMpp(xml: string): { x: number; y: number } | null {
  const match =
    /Name="DICOM_PIXEL_SPACING"[^>]*>\s*&quot;([0-9.eE+-]+)&quot;\s*&quot;([0-9.eE+-]+)&quot;/.exec(xml) ??
    /Name="DICOM_PIXEL_SPACING"[^>]*>\s*"([0-9.eE+-]+)"\s*"([0-9.eE+-]+)"/.exec(xml);
  if (!match) return null;
  const y = Number(match[1]) * 1000;
  const x = Number(match[2]) * 1000;
  return x > 0 && y > 0 && Number.isFinite(x) && Number.isFinite(y) ? { x, y } : null;
}

/**
 * Refuses TIFF-based vendor formats whose layout this reader would misread: their first IFD is not the slide
 * (Leica SCN starts with its macro image, Ventana BIF with its label), their tiles overlap (BIF), or their levels are
 * single JPEG streams too large to decode whole (Hamamatsu NDPI).
 */
function refuseUnreadLayouts(path: string, directories: Directory[]): void {
  const first = directories[0];
  const description = String(first.ImageDescription ?? '');
  const xmp = first.XMP ?? '';
  const names = directories.map((d) => String(d.ImageDescription ?? ''));
  const refuse = (format: string, why: string) => {
    throw new SlideFormatError(
      `Slide "${path}" is a ${format} file, which Tessera does not read: ${why}.`,
      'Convert it with libvips, whose OpenSlide loader reads it: `vips tiffsave "' +
        path +
        '" out.tif --tile --pyramid --compression jpeg --Q 90` (`vipsheader -f vips-loader` on the slide must say ' +
        'openslideload), then predict out.tif.',
    );
  };
  if (/<scn\b/i.test(description) && /leica/i.test(description)) {
    refuse('Leica SCN', "its first image is the macro overview, and the slide's own pyramid is named in its XML");
  }
  if (String(first.Make ?? '').startsWith('Hamamatsu') || first.ndpi) {
    refuse('Hamamatsu NDPI', 'each level is one JPEG stream of the whole level, too large to decode at once');
  }
  if (xmp.includes('iScan') || names.some((n) => /^level=\d+ mag=/.test(n)) || /^Label[ _]Image/.test(description)) {
    refuse('Ventana BIF', 'its first image is the label, and its tiles overlap by amounts given in its XMP');
  }
}

/** µm/px from an Aperio ImageDescription (`|MPP = 0.4990|`). */
export function parseAperioMpp(description: string): number | null {
  const match = /\|\s*MPP\s*=\s*([0-9.eE+-]+)/.exec(description);
  const value = match ? Number(match[1]) : NaN;
  return Number.isFinite(value) && value > 0 ? value : null;
}

function tiffResolutionMpp(d: Directory): { x: number; y: number } | null {
  const unit = d.ResolutionUnit ?? 2;
  const perUnit = unit === 3 ? 1e4 : unit === 2 ? 25400 : 0;
  const ratio = (r?: ArrayLike<number>) => (r && r.length >= 2 && r[1] ? r[0] / r[1] : 0);
  const x = ratio(d.XResolution);
  const y = ratio(d.YResolution) || x;
  if (!perUnit || !x || !y) return null;
  const mpp = { x: perUnit / x, y: perUnit / y };
  // Screen resolutions (72 dpi = 353 µm/px) are writers' defaults, not microscope pixel sizes.
  return mpp.x >= 0.01 && mpp.x <= 100 ? mpp : null;
}

function levelOf(d: Directory, page: number, subifd: number, index: number, base?: Directory): SlideLevel {
  return {
    index,
    width: d.ImageWidth,
    height: d.ImageLength,
    downsample: base ? (base.ImageWidth / d.ImageWidth + base.ImageLength / d.ImageLength) / 2 : 1,
    tileWidth: d.TileWidth ?? null,
    tileHeight: d.TileLength ?? null,
    compression: d.Compression ?? 1,
    page,
    subifd,
    decoder: tiffDecoder(d),
  };
}

function checkCompression(path: string, d: Directory, level: number): void {
  const compression = d.Compression ?? 1;
  if (!(compression in SUPPORTED_COMPRESSIONS)) throw unsupportedCompression(path, level, compression);
}

/** Options of {@link openSlide}. */
export interface OpenSlideOptions {
  /**
   * Largest level accepted, in pixels. Default: the `TESSERA_MAX_SLIDE_PIXELS` environment variable, else 1e11
   * (100 gigapixels).
   */
  maxPixels?: number;
}

/**
 * Reads a level's tile tables, picks its decoder and checks its structure (size, samples, tables against the file,
 * decompression bombs) before any of its pixels is decoded.
 */
async function prepareLevel(
  path: string,
  handle: FileHandle,
  bytes: number,
  structure: TiffStructure,
  level: SlideLevel,
  d: ParsedDirectory,
  maxPixels: number,
): Promise<void> {
  checkCompression(path, d, level.index);
  const tables = await readTileTables(path, handle, bytes, d, structure.littleEndian, structure.bigTiff);
  if (d.TileWidth !== undefined || d.TileLength !== undefined) {
    d.TileOffsets = tables.offsets;
    d.TileByteCounts = tables.counts;
  } else {
    d.StripOffsets = tables.offsets;
    d.StripByteCounts = tables.counts;
  }
  const context = { path, level: level.index, fileSize: bytes, maxPixels, decoder: level.decoder };
  // Structure first (sizes, tables within the file), so that the JPEG stream looked at next lies inside the file.
  checkLevelStructure({ ...context, decoder: 'tiles' }, d, tables);
  if (level.decoder === 'tiles' && level.compression === 7) {
    level.decoder = await jpegLevelDecoder(path, d);
    const sparse = tables.offsets.some((o, i) => !(o > 0 && tables.counts[i] > 0));
    if (sparse) level.decoder = 'tiles'; // libvips reads no tile of byte count 0; Tessera's decoder fills it
  }
  if (level.decoder === 'libvips') checkLevelStructure({ ...context, decoder: 'libvips' }, d, tables);
}

/**
 * Opens a slide and reads its structure (no pixels): levels with their sizes, downsamples, tiles and compression,
 * the vendor, µm/px and the associated images. Pyramids are recognised as tiled IFDs of decreasing size with the
 * aspect ratio of level 0 (generic TIFF, BigTIFF, Aperio SVS: its stripped thumbnail, label and macro images are
 * listed in `associated`), or as the SubIFDs of the first IFD (OME-TIFF). PNG and JPEG files have one level.
 * @throws {@link InputNotFoundError} when the file is missing.
 * @throws {@link SlideFormatError} for a file that is not a supported image, is truncated, or uses an undecodable
 * compression (JPEG 2000 in SVS), naming the file and what to do.
 * @example
 * const slide = await openSlide('CMU-1-Small-Region.svs'); // slide.levels[0].width === 2220, slide.mpp.x === 0.499
 */
export async function openSlide(path: string, options: OpenSlideOptions = {}): Promise<SlideInfo> {
  let bytes: number;
  try {
    const info = await stat(path);
    if (info.isDirectory()) return await openDicomSlide(path);
    if (!info.isFile()) throw new Error('not a file');
    bytes = info.size;
  } catch (error) {
    if (error instanceof SlideFormatError || error instanceof InputNotFoundError) throw error;
    const code = (error as NodeJS.ErrnoException).code;
    throw new InputNotFoundError(
      code === 'ENOENT'
        ? `Slide "${path}" does not exist.`
        : code === 'ELOOP'
          ? `Slide "${path}" cannot be opened: its symbolic links form a loop.`
          : code
            ? `Slide "${path}" cannot be read (${(error as Error).message}).`
            : `Slide "${path}" is not a file or folder (it is a device, socket or pipe).`,
      code === 'ELOOP'
        ? 'Point the link at the slide itself (`ls -l` shows where each link leads).'
        : 'Check the path (relative paths start from the current folder) and the permissions.',
      error,
    );
  }
  if (extname(path).toLowerCase() === '.mrxs') {
    throw new SlideFormatError(
      `Slide "${path}" is a MIRAX (3DHISTECH) slide, which Tessera does not read: its tiles are in the Data*.dat ` +
        'files of the folder beside it, indexed by Slidedat.ini, and the .mrxs file itself is not the slide.',
      `Convert it with libvips, whose OpenSlide loader reads it: \`vips tiffsave "${path}" out.tif --tile --pyramid ` +
        '--compression jpeg --Q 90`, then predict out.tif.',
    );
  }
  const kind = await sniff(path);
  if (kind === null) {
    const ext = extname(path).toLowerCase();
    throw notASlide(
      path,
      `its first bytes are not a TIFF, PNG, JPEG or DICOM signature${ext ? ` (extension ${ext})` : ''}`,
    );
  }
  if (kind === 'dicom') return openDicomSlide(path);

  const maxPixels = maxSlidePixels(options.maxPixels);
  if (kind !== 'tiff') return openPlainImage(path, kind, bytes, maxPixels);

  const handle = await open(path, 'r');
  try {
    const structure = await readTiffStructure(path, handle, bytes);
    const directories = structure.directories;
    const first = directories[0];
    // Sizes first: everything below divides by them.
    directories.forEach((d, i) => checkLevelSize({ path, level: i, maxPixels: Infinity }, d.ImageWidth, d.ImageLength));
    structure.subDirectories.forEach((d, k) =>
      checkLevelSize({ path, level: k + 1, maxPixels: Infinity }, d.ImageWidth, d.ImageLength),
    );
    const description = String(first.ImageDescription ?? '');
    const isOme = description.includes('<OME') || path.toLowerCase().endsWith('.ome.tif');
    const isAperio = description.startsWith('Aperio');
    const isPhilips = description.includes('<DataObject') && description.includes('DPUfsImport');
    refuseUnreadLayouts(path, directories);
    const levels: SlideLevel[] = [levelOf(first, 0, -1, 0)];
    const levelDirectories: ParsedDirectory[] = [first];
    const associated: SlideInfo['associated'] = [];
    if (structure.subDirectories.length > 0) {
      for (const [k, sub] of structure.subDirectories.entries()) {
        levels.push(levelOf(sub, 0, k, levels.length, first));
        levelDirectories.push(sub);
      }
    } else if (!isOme) {
      const aspect = first.ImageWidth / first.ImageLength;
      for (let i = 1; i < directories.length; i++) {
        const d = directories[i];
        const desc = String(d.ImageDescription ?? '').toLowerCase();
        const previous = levels[levels.length - 1];
        const sameAspect = Math.abs(d.ImageWidth / d.ImageLength / aspect - 1) < 0.02;
        const pyramidal = d.TileWidth !== undefined && sameAspect && d.ImageWidth < previous.width;
        const named = /\b(label|macro|thumbnail)\b/.exec(desc)?.[1];
        if (pyramidal && !named && (d.NewSubfileType ?? 0) !== 9) {
          levels.push(levelOf(d, i, -1, levels.length, first));
          levelDirectories.push(d);
        } else {
          associated.push({
            name: named ?? (isAperio && i === 1 ? 'thumbnail' : `image ${i}`),
            width: d.ImageWidth,
            height: d.ImageLength,
          });
        }
      }
    }
    for (const [k, level] of levels.entries()) {
      await prepareLevel(path, handle, bytes, structure, level, levelDirectories[k], maxPixels);
    }
    let mpp: SlideInfo['mpp'] = null;
    let mppSource: SlideInfo['mppSource'] = null;
    if (isAperio && parseAperioMpp(description)) {
      const value = parseAperioMpp(description)!;
      mpp = { x: value, y: value };
      mppSource = 'aperio';
    } else if (isOme && parseOmeMpp(description)) {
      mpp = parseOmeMpp(description);
      mppSource = 'ome-xml';
    } else if (isPhilips && parsePhilipsMpp(description)) {
      mpp = parsePhilipsMpp(description);
      mppSource = 'philips-xml';
    } else if (tiffResolutionMpp(first)) {
      mpp = tiffResolutionMpp(first);
      mppSource = 'tiff-resolution';
    }
    const samples = first.SamplesPerPixel ?? 1;
    return {
      path,
      format: isAperio ? 'svs' : isOme ? 'ome-tiff' : 'tiff',
      vendor: isAperio ? 'aperio' : isOme ? 'ome' : isPhilips ? 'philips' : 'generic',
      width: first.ImageWidth,
      height: first.ImageLength,
      channels: samples >= 3 ? 3 : 1,
      levels,
      mpp,
      mppSource,
      associated,
      bytes,
    };
  } catch (error) {
    if (error instanceof SlideFormatError) throw error;
    throw notASlide(path, `its TIFF directories could not be read (${(error as Error).message})`, error);
  } finally {
    await handle.close();
  }
}

async function openPlainImage(
  path: string,
  kind: 'png' | 'jpeg',
  bytes: number,
  maxPixels: number,
): Promise<SlideInfo> {
  let meta: sharp.Metadata;
  try {
    meta = await sharp(path, { limitInputPixels: false }).metadata();
  } catch (error) {
    throw notASlide(path, `its ${kind.toUpperCase()} header could not be decoded (${(error as Error).message})`, error);
  }
  const width = meta.width ?? 0;
  const height = meta.height ?? 0;
  checkLevelSize({ path, level: 0, maxPixels }, width, height);
  // Deflate (PNG) packs at most 1032 bytes into one and JPEG a block of 64 pixels into a few bits: a header that
  // claims far more pixels than the file can hold is a damaged file or a decompression bomb.
  if (
    width * height >= STRUCTURE_LIMITS.bombCheckPixels &&
    (width * height) / bytes > STRUCTURE_LIMITS.pixelsPerStoredByte
  ) {
    throw notASlide(
      path,
      `its ${kind.toUpperCase()} header declares ${width} x ${height} px, which its ${bytes} bytes cannot hold ` +
        `(over ${STRUCTURE_LIMITS.pixelsPerStoredByte} pixels per byte): it is truncated or a decompression bomb`,
    );
  }
  const colour = (meta.channels ?? 3) - (meta.hasAlpha ? 1 : 0);
  const level: SlideLevel = {
    index: 0,
    width,
    height,
    downsample: 1,
    tileWidth: null,
    tileHeight: null,
    compression: null,
    page: 0,
    subifd: -1,
    decoder: 'libvips',
  };
  return {
    path,
    format: kind,
    vendor: 'generic',
    width,
    height,
    channels: colour >= 3 || meta.space === 'cmyk' ? 3 : 1,
    levels: [level],
    mpp: null,
    mppSource: null,
    associated: [],
    bytes,
  };
}

/** Options of {@link readRegion}. */
export interface ReadRegionOptions {
  /** Level index. Default 0. */
  level?: number;
  /** Channels wanted: 1 (grey) or 3 (RGB). Default: the slide's. */
  channels?: 1 | 3;
  /**
   * Resampling of the level: the region is given in pixels of the level scaled by this factor (0.5 = half the
   * level's resolution). Default 1.
   */
  scale?: number;
  /**
   * Size of the (scaled) image the region mirrors at: pixels beyond it, at the bottom and the right, are mirror
   * images of the pixels inside (as core's `padReflect`). Default: the scaled level size.
   */
  bounds?: { width: number; height: number };
}

/** libvips input options addressing a level. */
export function levelInput(slide: SlideInfo, level: SlideLevel): sharp.SharpOptions {
  const options: sharp.SharpOptions = { limitInputPixels: false };
  if (slide.format === 'svs' || slide.format === 'ome-tiff' || slide.format === 'tiff') options.page = level.page;
  if (level.subifd >= 0) options.subifd = level.subifd;
  return options;
}

/** Source rectangle of a read, in the (unscaled) level's pixels when `scale` is 1, else in scaled pixels. */
interface SourceRect {
  x0: number;
  y0: number;
  w: number;
  h: number;
}

/** The level pixels under a rectangle of the scaled level, and the rectangle's size once scaled. */
function unscaled(level: SlideLevel, rect: SourceRect, scale: number) {
  if (scale === 1) return { left: rect.x0, top: rect.y0, width: rect.w, height: rect.h };
  const left = Math.floor(rect.x0 / scale);
  const top = Math.floor(rect.y0 / scale);
  const right = Math.min(level.width, Math.ceil((rect.x0 + rect.w) / scale));
  const bottom = Math.min(level.height, Math.ceil((rect.y0 + rect.h) / scale));
  return { left, top, width: right - left, height: bottom - top };
}

/** Resampling and colour conversion of a read, the same for both decoders. */
function finish(pipeline: sharp.Sharp, rect: SourceRect, scale: number, channels: 1 | 3): sharp.Sharp {
  if (scale !== 1) pipeline = pipeline.resize(rect.w, rect.h, { fit: 'fill', kernel: 'lanczos3' });
  pipeline = pipeline.removeAlpha();
  return channels === 1 ? pipeline.toColourspace('b-w') : pipeline.toColourspace('srgb');
}

async function readVipsRegion(
  slide: SlideInfo,
  level: SlideLevel,
  rect: SourceRect,
  scale: number,
  channels: 1 | 3,
): Promise<Uint8Array> {
  const source = sharp(slide.path, levelInput(slide, level)).extract(unscaled(level, rect, scale));
  const raw = await finish(source, rect, scale, channels).raw({ depth: 'uchar' }).toBuffer();
  return new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
}

async function readTiledRegion(
  slide: SlideInfo,
  level: SlideLevel,
  rect: SourceRect,
  scale: number,
  channels: 1 | 3,
): Promise<Uint8Array> {
  const grid = await tileGridOf(slide, level);
  const { left, top, width, height } = unscaled(level, rect, scale);
  const pixels = await readGridRegion(grid, left, top, width, height);
  if (scale === 1 && channels === grid.samples) return pixels;
  const source = sharp(pixels, { raw: { width, height, channels: grid.samples } });
  const raw = await finish(source, rect, scale, channels).raw({ depth: 'uchar' }).toBuffer();
  return new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
}

/** Tile grids of tile-decoded levels, per thread, by file, size and level. */
const grids = new Map<string, Promise<TileGrid>>();

/**
 * The tile grid of a level that Tessera decodes itself (`level.decoder === 'tiles'`), read from the file once per
 * thread: worker threads receive the slide's structure, not its tile tables.
 */
export function tileGridOf(slide: SlideInfo, level: SlideLevel): Promise<TileGrid> {
  const file = level.file ?? slide.path;
  const key = `${file}\0${slide.bytes}\0${level.index}\0${level.page}\0${level.subifd}`;
  const cached = grids.get(key);
  if (cached) return cached;
  const grid = slide.format === 'dicom' ? dicomTileGrid(file, level.index) : tiffGrid(file, level, slide.bytes);
  grids.set(key, grid);
  grid.catch(() => grids.delete(key));
  if (grids.size > 64) grids.delete(grids.keys().next().value!);
  return grid;
}

async function tiffGrid(path: string, level: SlideLevel, bytes: number): Promise<TileGrid> {
  const handle = await open(path, 'r');
  try {
    // The structure is read and checked again in this thread (it was checked when the slide was opened; the file
    // may have changed since).
    const structure = await readTiffStructure(path, handle, bytes);
    const directory = level.subifd >= 0 ? structure.subDirectories[level.subifd] : structure.directories[level.page];
    if (!directory) throw notASlide(path, `level ${level.index} is no longer in the file (was it rewritten?)`);
    const copy = { ...level };
    await prepareLevel(path, handle, bytes, structure, copy, directory, Infinity);
    return tiffTileGrid(path, directory, level.index);
  } finally {
    await handle.close();
  }
}

/**
 * Reads a rectangle of a level as 8-bit interleaved pixels. Only the tiles the region touches are decoded. A region
 * may reach past the bottom or right edge of `bounds`: those pixels mirror the ones inside, so tiles at the edge
 * look like a mirror-padded image.
 * @returns `data` of shape `[region.height, region.width, channels]`.
 * @throws {@link SlideRegionError} for a level that does not exist or a region that starts outside the bounds.
 * @throws {@link SlideFormatError} when the pixels cannot be decoded (corrupt tiles).
 * @example
 * const tile = await readRegion(slide, { x: 1024, y: 512, width: 512, height: 512 }, { level: 1 });
 */
export async function readRegion(
  slide: SlideInfo,
  region: Region,
  options: ReadRegionOptions = {},
): Promise<RasterImage> {
  const index = options.level ?? 0;
  const level = slide.levels[index];
  if (!Number.isInteger(index) || !level) throw noSuchLevel(slide.path, options.level, slide.levels.length);
  const scale = options.scale ?? 1;
  if (!(scale > 0 && scale <= 1)) {
    throw new TilerOptionError(
      `readRegion("${slide.path}"): expected a scale in (0, 1] but received ${scale}.`,
      'Read from a finer level instead of enlarging a coarse one.',
    );
  }
  const bounds = options.bounds ?? {
    width: Math.round(level.width * scale),
    height: Math.round(level.height * scale),
  };
  const channels = options.channels ?? (slide.channels === 1 ? 1 : 3);
  const { x, y, width, height } = region;
  const valid = [x, y, width, height].every(Number.isInteger) && width > 0 && height > 0 && x >= 0 && y >= 0;
  if (!valid || x >= bounds.width || y >= bounds.height) throw regionOutside(slide.path, index, region, bounds);
  // Source rows and columns needed once mirrored at the bounds.
  const xs = Array.from({ length: width }, (_, i) => reflectIndex(x + i, bounds.width));
  const ys = Array.from({ length: height }, (_, i) => reflectIndex(y + i, bounds.height));
  const x0 = Math.min(...xs);
  const y0 = Math.min(...ys);
  const w = Math.max(...xs) - x0 + 1;
  const h = Math.max(...ys) - y0 + 1;
  let raw: Uint8Array;
  try {
    raw =
      level.decoder === 'tiles'
        ? await readTiledRegion(slide, level, { x0, y0, w, h }, scale, channels)
        : await readVipsRegion(slide, level, { x0, y0, w, h }, scale, channels);
    if (raw.length !== w * h * channels) {
      throw new Error(
        `the decoder gave ${raw.length} bytes where ${w}x${h} pixels of ${channels} channel(s) take ${w * h * channels}`,
      );
    }
  } catch (error) {
    if (error instanceof SlideFormatError) throw error;
    throw undecodable(slide, level, `region x ${x0}, y ${y0}, ${w}x${h}`, error);
  }
  const source = raw;
  if (w === width && h === height && x0 === x && y0 === y) return { data: source, width, height, channels };
  const data = new Uint8Array(width * height * channels);
  for (let r = 0; r < height; r++) {
    const srcRow = (ys[r] - y0) * w;
    for (let c = 0; c < width; c++) {
      const src = (srcRow + xs[c] - x0) * channels;
      const dst = (r * width + c) * channels;
      for (let k = 0; k < channels; k++) data[dst + k] = source[src + k];
    }
  }
  return { data, width, height, channels };
}

/** A decoder's failure on a region of a level, as a {@link SlideFormatError} naming the file, level and region. */
function undecodable(slide: SlideInfo, level: SlideLevel, where: string, error: unknown): SlideFormatError {
  const encoding =
    level.compression === null ? (level.encoding ?? slide.format.toUpperCase()) : compressionName(level.compression);
  const reason = String((error as Error)?.message ?? error)
    .replace(/\s+$/, '')
    .replace(/\.$/, '');
  return new SlideFormatError(
    `Slide "${slide.path}" level ${level.index} ${where} could not be decoded (${encoding}): ${reason}.`,
    'The file may be truncated or corrupt: copy it again, or check it with `vips copy <slide> /tmp/check.v`.',
    error,
  );
}

/**
 * Decodes one tile of every level (the top-left one, or the first rows of an untiled image): cheap, and it makes a
 * slide whose pixels no decoder can read fail where its structure is read (`tessera info`, and before `predict`
 * starts), not halfway through a prediction.
 * @throws {@link SlideFormatError} naming the file, the level, the region and the decoder's message.
 * @example
 * await verifySlide(await openSlide('CMU-1-Small-Region.svs'));
 */
export async function verifySlide(slide: SlideInfo): Promise<void> {
  for (const level of slide.levels) {
    const width = Math.min(level.tileWidth ?? 256, level.width);
    const height = Math.min(level.tileHeight ?? 256, level.height);
    await readRegion(slide, { x: 0, y: 0, width, height }, { level: level.index });
  }
}

/**
 * Picks the level to read for a wanted µm/px: the coarsest level whose pixels are at most as large as `mpp` (within
 * 2%), and the scale that resamples it to `mpp` exactly (1 when a level matches).
 * @throws {@link TilerOptionError} when the slide has no µm/px, or `mpp` is finer than level 0.
 * @example
 * const { level, scale } = chooseLevel(slide, 1.0); // a 0.25 µm/px slide: level with downsample 4, scale 1
 */
export function chooseLevel(slide: SlideInfo, mpp: number): { level: number; scale: number; mpp: number } {
  if (!slide.mpp) {
    throw new TilerOptionError(
      `Slide "${slide.path}" does not record its µm/px, so mpp ${mpp} cannot be applied.`,
      'Leave out mpp to predict at full resolution.',
      'mpp',
    );
  }
  const base = (slide.mpp.x + slide.mpp.y) / 2;
  if (!(mpp > 0) || mpp < base * 0.98) {
    throw new TilerOptionError(
      `Slide "${slide.path}": expected mpp of at least ${base.toFixed(4)} (its level 0) but received ${mpp}.`,
      'Tessera does not enlarge slides; train the model at the slide resolution or use a coarser mpp.',
      'mpp',
    );
  }
  let best = slide.levels[0];
  for (const level of slide.levels) if (base * level.downsample <= mpp * 1.02) best = level;
  const levelMpp = base * best.downsample;
  const scale = Math.abs(levelMpp / mpp - 1) <= 0.02 ? 1 : levelMpp / mpp;
  return { level: best.index, scale, mpp: scale === 1 ? levelMpp : mpp };
}

/**
 * A small overview of the whole slide, at most `maxSide` pixels on its longer side, read from the smallest level that
 * is still at least that large.
 */
export async function readThumbnail(slide: SlideInfo, maxSide: number, channels: 1 | 3 = 3): Promise<RasterImage> {
  let level = slide.levels[0];
  for (const l of slide.levels) if (Math.max(l.width, l.height) >= maxSide) level = l;
  try {
    return await thumbnailOf(slide, level, maxSide, channels);
  } catch (error) {
    if (error instanceof SlideFormatError) throw error;
    throw undecodable(slide, level, `(read whole for a ${maxSide} px thumbnail)`, error);
  }
}

async function thumbnailOf(
  slide: SlideInfo,
  level: SlideLevel,
  maxSide: number,
  channels: 1 | 3,
): Promise<RasterImage> {
  let source: sharp.Sharp;
  if (level.decoder === 'libvips') {
    source = sharp(slide.path, levelInput(slide, level));
  } else if (level.width * level.height <= THUMBNAIL_WHOLE_LEVEL) {
    const grid = await tileGridOf(slide, level);
    const pixels = await readGridRegion(grid, 0, 0, level.width, level.height);
    source = sharp(pixels, { raw: { width: level.width, height: level.height, channels: grid.samples } });
  } else {
    return readThumbnailInBands(slide, level, maxSide, channels);
  }
  const pipeline = source
    .resize(maxSide, maxSide, { fit: 'inside', withoutEnlargement: true })
    .removeAlpha()
    .toColourspace(channels === 1 ? 'b-w' : 'srgb');
  const { data, info } = await pipeline.raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  if (info.channels !== channels) throw new Error(`the decoder gave ${info.channels} channels instead of ${channels}`);
  const pixels = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return { data: pixels, width: info.width, height: info.height, channels };
}

/** Levels up to this many pixels are decoded whole for a thumbnail; larger ones in bands of rows. */
const THUMBNAIL_WHOLE_LEVEL = 32 * 1024 * 1024;

/** A thumbnail of a large tile-decoded level, resampled band by band so that memory stays bounded. */
async function readThumbnailInBands(
  slide: SlideInfo,
  level: SlideLevel,
  maxSide: number,
  channels: 1 | 3,
): Promise<RasterImage> {
  const factor = Math.min(maxSide / level.width, maxSide / level.height, 1);
  const width = Math.max(1, Math.round(level.width * factor));
  const height = Math.max(1, Math.round(level.height * factor));
  const scale = width / level.width;
  const data = new Uint8Array(width * height * channels);
  const band = Math.max(1, Math.floor((16 * 1024 * 1024) / (level.width * 3) / Math.ceil(1 / scale)));
  for (let y = 0; y < height; y += band) {
    const rows = Math.min(band, height - y);
    const part = await readRegion(
      slide,
      { x: 0, y, width, height: rows },
      { level: level.index, scale, bounds: { width, height }, channels },
    );
    data.set(part.data, y * width * channels);
  }
  return { data, width, height, channels };
}
