/**
 * The TIFF structure reader: image file directories (IFDs) of classic TIFF and BigTIFF, in either byte order, read
 * and checked before anything is allocated or followed. A slide's file comes from scanners, network shares and
 * half-finished copies, so every number in it is a claim: the IFD chain is followed with a visited set and at most
 * {@link STRUCTURE_LIMITS}`.directories` IFDs; entry counts and value ranges are checked against the file size before
 * a value is read; scalar tags must hold one value of an integer type; texts and tables have byte limits. What the
 * values mean (sizes, tiles, bombs) is checked per level by {@link checkLevelStructure}.
 */
import type { FileHandle } from 'node:fs/promises';
import { SlideFormatError, notASlide, truncatedSlide } from './errors.js';
import type { TiffDirectory } from './tiff-tiles.js';

/** Fixed limits of the structure reader (the pixel limit is {@link maxSlidePixels}). */
export const STRUCTURE_LIMITS = {
  /** IFDs followed in the main chain and the SubIFDs together. */
  directories: 1024,
  /** Entries in one IFD (real slides have 10 to 40). */
  entries: 4096,
  /** Bytes of one text or XMP value (ImageDescription holds the OME-XML or Philips XML). */
  textBytes: 64 * 1024 * 1024,
  /** Bytes of the JPEGTables of one IFD (quantisation and Huffman tables: a few hundred bytes). */
  jpegTablesBytes: 1024 * 1024,
  /** Entries in one tile or strip table (a 262144 x 262144 level of 128 px tiles has 4.2 million). */
  tableEntries: 2 ** 23,
  /** Pixels along one side of a level: libvips's largest coordinate. */
  side: 10_000_000,
  /** Decoded bytes of one tile or strip (decoders hold one whole). */
  chunkBytes: 256 * 1024 * 1024,
  /** Level size from which the decompression-bomb check applies, in pixels. */
  bombCheckPixels: 64 * 1024 * 1024,
  /** Most declared pixels per byte of stored tile data (distinct ranges) before a level is refused as a bomb. */
  pixelsPerStoredByte: 5000,
} as const;

/** Default of {@link maxSlidePixels}: 100 gigapixels per level (a 316228 x 316228 slide). */
export const DEFAULT_MAX_SLIDE_PIXELS = 1e11;

/**
 * The largest level a slide may declare, in pixels: the option when given, else the `TESSERA_MAX_SLIDE_PIXELS`
 * environment variable, else {@link DEFAULT_MAX_SLIDE_PIXELS}.
 * @throws {@link SlideFormatError} never; an unusable environment value falls back to the default.
 */
export function maxSlidePixels(option?: number): number {
  if (option !== undefined && option > 0) return option;
  const env = Number(process.env.TESSERA_MAX_SLIDE_PIXELS);
  return Number.isFinite(env) && env > 0 ? env : DEFAULT_MAX_SLIDE_PIXELS;
}

/** Bytes per value of the TIFF field types (1 BYTE ... 18 IFD8). */
const TYPE_SIZES: Readonly<Record<number, number>> = {
  1: 1,
  2: 1,
  3: 2,
  4: 4,
  5: 8,
  6: 1,
  7: 1,
  8: 2,
  9: 4,
  10: 8,
  11: 4,
  12: 8,
  13: 4,
  16: 8,
  17: 8,
  18: 8,
};
/** Unsigned integer types: BYTE, SHORT, LONG, IFD, LONG8, IFD8. */
const INTEGER_TYPES = new Set([1, 3, 4, 13, 16, 18]);

/** Names of the tags the reader uses, for messages. */
export const TAG_NAMES: Readonly<Record<number, string>> = {
  254: 'NewSubfileType',
  256: 'ImageWidth',
  257: 'ImageLength',
  258: 'BitsPerSample',
  259: 'Compression',
  262: 'PhotometricInterpretation',
  270: 'ImageDescription',
  271: 'Make',
  273: 'StripOffsets',
  277: 'SamplesPerPixel',
  278: 'RowsPerStrip',
  279: 'StripByteCounts',
  282: 'XResolution',
  283: 'YResolution',
  284: 'PlanarConfiguration',
  296: 'ResolutionUnit',
  317: 'Predictor',
  322: 'TileWidth',
  323: 'TileLength',
  324: 'TileOffsets',
  325: 'TileByteCounts',
  330: 'SubIFDs',
  339: 'SampleFormat',
  347: 'JPEGTables',
  530: 'YCbCrSubSampling',
  700: 'XMP',
};

const SCALARS: Record<number, keyof TiffDirectory> = {
  254: 'NewSubfileType',
  256: 'ImageWidth',
  257: 'ImageLength',
  259: 'Compression',
  262: 'PhotometricInterpretation',
  277: 'SamplesPerPixel',
  278: 'RowsPerStrip',
  284: 'PlanarConfiguration',
  296: 'ResolutionUnit',
  317: 'Predictor',
  322: 'TileWidth',
  323: 'TileLength',
};
const TABLES = new Set([273, 279, 324, 325]);

/** One IFD entry as stored: where its value lies (inline values are copied out). */
interface RawEntry {
  tag: number;
  type: number;
  count: number;
  /** File offset of the value, or -1 when inline. */
  offset: number;
  inline: Buffer;
}

/** A parsed IFD: its tags as {@link TiffDirectory} names, and where its tile or strip tables lie (read on demand). */
export interface ParsedDirectory extends TiffDirectory {
  /** File offset of the IFD. */
  ifdOffset: number;
  /** Entries of the tile/strip tables, read by {@link readTileTables}. */
  tableEntries: Partial<Record<273 | 279 | 324 | 325, RawEntry>>;
}

/** A TIFF file's structure: the main IFD chain and the first IFD's SubIFDs. */
export interface TiffStructure {
  littleEndian: boolean;
  bigTiff: boolean;
  directories: ParsedDirectory[];
  subDirectories: ParsedDirectory[];
}

/** Reads integers of a buffer in the file's byte order. */
function reader(buffer: Buffer, little: boolean) {
  return {
    u16: (at: number) => (little ? buffer.readUInt16LE(at) : buffer.readUInt16BE(at)),
    u32: (at: number) => (little ? buffer.readUInt32LE(at) : buffer.readUInt32BE(at)),
    u64: (at: number) => Number(little ? buffer.readBigUInt64LE(at) : buffer.readBigUInt64BE(at)),
  };
}

/** Context of one structure read, for messages and reads. */
interface Source {
  path: string;
  handle: FileHandle;
  size: number;
  little: boolean;
  big: boolean;
}

async function readAt(source: Source, offset: number, length: number, what: string): Promise<Buffer> {
  if (!(offset >= 0 && length >= 0 && offset + length <= source.size)) {
    throw notASlide(
      source.path,
      `its ${what} lies at bytes ${offset}-${offset + length}, outside the file of ${source.size} bytes`,
    );
  }
  const buffer = Buffer.alloc(length);
  const { bytesRead } = await source.handle.read(buffer, 0, length, offset);
  if (bytesRead !== length) throw notASlide(source.path, `its ${what} could not be read (the file changed?)`);
  return buffer;
}

/** Integer values of an entry (any integer type); `max` values at most. */
async function integers(source: Source, entry: RawEntry, what: string): Promise<number[]> {
  const size = TYPE_SIZES[entry.type];
  const bytes = entry.offset < 0 ? entry.inline : await readAt(source, entry.offset, entry.count * size, what);
  const io = reader(bytes, source.little);
  const values: number[] = new Array(entry.count);
  for (let i = 0; i < entry.count; i++) {
    const at = i * size;
    values[i] = size === 1 ? bytes[at] : size === 2 ? io.u16(at) : size === 4 ? io.u32(at) : io.u64(at);
  }
  return values;
}

function tagName(tag: number): string {
  return TAG_NAMES[tag] ? `${TAG_NAMES[tag]} (tag ${tag})` : `tag ${tag}`;
}

/** Reads one IFD at `offset`; `label` names it in messages (`IFD 3`, `SubIFD 1`). */
async function readDirectory(source: Source, offset: number, label: string): Promise<ParsedDirectory> {
  const { path, big } = source;
  const head = big ? 8 : 2;
  const entrySize = big ? 20 : 12;
  const countBytes = await readAt(source, offset, head, `${label} (at byte ${offset})`);
  const io0 = reader(countBytes, source.little);
  const n = big ? io0.u64(0) : io0.u16(0);
  if (n === 0 || n > STRUCTURE_LIMITS.entries) {
    throw notASlide(
      path,
      `${label} (at byte ${offset}) declares ${n} entries (expected 1 to ${STRUCTURE_LIMITS.entries})`,
    );
  }
  const block = await readAt(source, offset + head, n * entrySize, `${label} (${n} entries at byte ${offset})`);
  const io = reader(block, source.little);
  const d = { ifdOffset: offset, tableEntries: {} } as ParsedDirectory;
  const fields = d as unknown as Record<string, unknown>;
  const seen = new Set<number>();
  for (let i = 0; i < n; i++) {
    const at = i * entrySize;
    const tag = io.u16(at);
    if (!(tag in TAG_NAMES) && tag !== 65420) continue; // tags the reader does not use are never read
    const type = io.u16(at + 2);
    const count = big ? io.u64(at + 4) : io.u32(at + 4);
    const size = TYPE_SIZES[type];
    const where = `${label} ${tagName(tag)}`;
    if (seen.has(tag)) continue; // a repeated tag: the first one counts, as in libtiff
    seen.add(tag);
    if (tag === 65420) {
      d.ndpi = true;
      continue;
    }
    if (size === undefined) throw notASlide(path, `${where} has field type ${type}, which TIFF does not define`);
    const bytes = count * size;
    const inlineBytes = big ? 8 : 4;
    const valueAt = at + (big ? 12 : 8);
    const entry: RawEntry = {
      tag,
      type,
      count,
      offset: bytes <= inlineBytes ? -1 : big ? io.u64(valueAt) : io.u32(valueAt),
      inline: block.subarray(valueAt, valueAt + Math.min(bytes, inlineBytes)),
    };
    if (entry.offset >= 0 && !(entry.offset + bytes <= source.size)) {
      throw notASlide(
        path,
        `${where} says ${count} values at byte ${entry.offset}, which end past the end of the file (${source.size} bytes)`,
      );
    }
    if (tag in SCALARS) {
      if (!INTEGER_TYPES.has(type) || count !== 1) {
        const shown =
          INTEGER_TYPES.has(type) && count > 1 && count <= 8
            ? ` (${(await integers(source, entry, where)).join(', ')})`
            : '';
        throw notASlide(path, `${where} holds ${count} value(s) of field type ${type}${shown}, expected one integer`);
      }
      fields[SCALARS[tag]] = (await integers(source, entry, where))[0];
    } else if (TABLES.has(tag)) {
      if (!INTEGER_TYPES.has(type)) throw notASlide(path, `${where} has field type ${type}, expected integers`);
      d.tableEntries[tag as 273] = entry;
    } else if (tag === 258 || tag === 339 || tag === 530 || tag === 330) {
      if (!INTEGER_TYPES.has(type) || count === 0 || count > 1024) {
        throw notASlide(path, `${where} holds ${count} value(s) of field type ${type}, expected 1 to 1024 integers`);
      }
      const values = await integers(source, entry, where);
      if (tag === 258) d.BitsPerSample = values;
      else if (tag === 339) d.SampleFormat = values;
      else if (tag === 530) d.YCbCrSubSampling = values;
      else d.SubIFDs = values;
    } else if (tag === 282 || tag === 283) {
      if (type !== 5 || count !== 1) continue; // a resolution in another form is ignored, as if absent
      const value = entry.offset < 0 ? entry.inline : await readAt(source, entry.offset, 8, where);
      const r = reader(value, source.little);
      fields[tag === 282 ? 'XResolution' : 'YResolution'] = [r.u32(0), r.u32(4)];
    } else {
      // Texts and byte strings: ImageDescription, Make, XMP, JPEGTables.
      const limit = tag === 347 ? STRUCTURE_LIMITS.jpegTablesBytes : STRUCTURE_LIMITS.textBytes;
      if (bytes > limit) throw notASlide(path, `${where} claims ${bytes} bytes (at most ${limit} expected)`);
      if (size !== 1) continue; // not a string of bytes: ignored
      const value = entry.offset < 0 ? Buffer.from(entry.inline) : await readAt(source, entry.offset, bytes, where);
      if (tag === 347) d.JPEGTables = new Uint8Array(value);
      else {
        const text = value.toString('utf8').replace(/\0+$/, '');
        if (tag === 270) d.ImageDescription ??= text;
        else if (tag === 271) d.Make ??= text;
        else d.XMP ??= text;
      }
    }
  }
  const io2 = reader(
    await readAt(source, offset + head + n * entrySize, big ? 8 : 4, `${label} next pointer`),
    source.little,
  );
  d.nextIfd = big ? io2.u64(0) : io2.u32(0);
  return d;
}

/**
 * Reads the IFD chain of a TIFF file and the first IFD's SubIFDs, checking each pointer, count and byte range against
 * the file before reading it.
 * @throws {@link SlideFormatError} (exit code 5) naming the file, the IFD and the tag: a loop in the IFD chain or
 * SubIFDs, more than {@link STRUCTURE_LIMITS}`.directories` IFDs, an entry count or value past the end of the file, a
 * scalar tag with several values or a non-integer type.
 */
export async function readTiffStructure(path: string, handle: FileHandle, size: number): Promise<TiffStructure> {
  const header = Buffer.alloc(16);
  await handle.read(header, 0, Math.min(16, size), 0);
  const little = header.toString('latin1', 0, 2) === 'II';
  const magic = little ? header.readUInt16LE(2) : header.readUInt16BE(2);
  const big = magic === 43;
  if (size < (big ? 16 : 8)) throw notASlide(path, `the file has only ${size} bytes, fewer than a TIFF header`);
  const source: Source = { path, handle, size, little, big };
  const io = reader(header, little);
  if (big && (io.u16(4) !== 8 || io.u16(6) !== 0)) {
    throw notASlide(path, `its BigTIFF header gives an offset size of ${io.u16(4)} (expected 8)`);
  }
  const visited = new Map<number, string>();
  const follow = (offset: number, label: string) => {
    if (offset < (big ? 16 : 8) || offset >= size) {
      throw notASlide(path, `${label} starts at byte ${offset}, outside the file of ${size} bytes`);
    }
    const before = visited.get(offset);
    if (before !== undefined) {
      throw notASlide(path, `${label} at byte ${offset} is an IFD already read (${before}): the IFD chain loops`);
    }
    if (visited.size >= STRUCTURE_LIMITS.directories) {
      throw notASlide(path, `it has more than ${STRUCTURE_LIMITS.directories} IFDs`);
    }
    visited.set(offset, label);
  };
  const directories: ParsedDirectory[] = [];
  let next = big ? io.u64(8) : io.u32(4);
  while (next !== 0) {
    const label = `IFD ${directories.length}`;
    follow(next, label);
    const d = await readDirectory(source, next, label);
    directories.push(d);
    next = d.nextIfd ?? 0;
  }
  if (directories.length === 0) throw notASlide(path, 'its header points at no IFD (offset 0)');
  const subDirectories: ParsedDirectory[] = [];
  for (const [k, offset] of Array.from(directories[0].SubIFDs ?? []).entries()) {
    const label = `SubIFD ${k} of IFD 0`;
    follow(offset, label);
    subDirectories.push(await readDirectory(source, offset, label));
  }
  return { littleEndian: little, bigTiff: big, directories, subDirectories };
}

/** The tile (or strip) offsets and byte counts of a directory, as numbers. */
export async function readTileTables(
  path: string,
  handle: FileHandle,
  size: number,
  d: ParsedDirectory,
  little: boolean,
  big: boolean,
): Promise<{ offsets: number[]; counts: number[] }> {
  const tiled = d.TileWidth !== undefined || d.tableEntries[324] !== undefined;
  const offsetsEntry = tiled ? d.tableEntries[324] : d.tableEntries[273];
  const countsEntry = tiled ? d.tableEntries[325] : d.tableEntries[279];
  const what = tiled ? 'tile' : 'strip';
  if (!offsetsEntry || !countsEntry) {
    throw notASlide(path, `IFD at byte ${d.ifdOffset} has no ${what} offsets or byte counts`);
  }
  for (const entry of [offsetsEntry, countsEntry]) {
    if (entry.count > STRUCTURE_LIMITS.tableEntries) {
      throw notASlide(
        path,
        `${tagName(entry.tag)} of the IFD at byte ${d.ifdOffset} has ${entry.count} entries ` +
          `(at most ${STRUCTURE_LIMITS.tableEntries})`,
      );
    }
  }
  const source: Source = { path, handle, size, little, big };
  return {
    offsets: await integers(source, offsetsEntry, tagName(offsetsEntry.tag)),
    counts: await integers(source, countsEntry, tagName(countsEntry.tag)),
  };
}

/** Photometric interpretations the reader accepts, with their names and samples (colour, and with alpha). */
const PHOTOMETRIC: Readonly<Record<number, { name: string; samples: number[] }>> = {
  0: { name: 'grey (min-is-white)', samples: [1, 2] },
  1: { name: 'grey', samples: [1, 2] },
  2: { name: 'RGB', samples: [3, 4] },
  3: { name: 'palette', samples: [1] },
  5: { name: 'CMYK', samples: [4, 5] },
  6: { name: 'YCbCr', samples: [3] },
};

/** What a level's checks need to know about it. */
export interface LevelContext {
  path: string;
  level: number;
  fileSize: number;
  maxPixels: number;
  /** Who will decode it: libvips reads no tile of byte count 0. */
  decoder: 'libvips' | 'tiles';
}

function levelError(context: LevelContext, text: string, hint?: string): SlideFormatError {
  return new SlideFormatError(
    `Slide "${context.path}" level ${context.level} ${text}.`,
    hint ??
      'The file is damaged or was not written as a slide: copy it again, and check that it opens in QuPath or ' +
        '`vipsheader`.',
  );
}

/**
 * Checks the size, sample layout and tile tables of a level against each other and the file, before any pixel is
 * decoded: size within the limits, a photometric interpretation with the right samples, 8 or 16-bit unsigned samples,
 * tile (or strip) tables with the entry count the size implies, every stored tile inside the file, and declared
 * pixels that the stored bytes can plausibly hold (a file whose tiles all point at the same few bytes is refused as a
 * decompression bomb).
 * @throws {@link SlideFormatError} (exit code 5) naming the file, the level and what is wrong.
 */
export function checkLevelStructure(
  context: LevelContext,
  d: TiffDirectory,
  tables: { offsets: number[]; counts: number[] },
): void {
  checkLevelSize(context, d.ImageWidth, d.ImageLength);
  const width = d.ImageWidth;
  const height = d.ImageLength;
  const samples = d.SamplesPerPixel ?? 1;
  const photometric = d.PhotometricInterpretation ?? (samples >= 3 ? 2 : 1);
  const known = PHOTOMETRIC[photometric];
  if (!known) {
    throw levelError(
      context,
      `has PhotometricInterpretation ${photometric}; expected grey (0, 1), RGB (2), palette (3), CMYK (5) or YCbCr (6)`,
      'Convert the slide to RGB first, e.g. `vips tiffsave in.tif out.tif --tile --pyramid --compression jpeg`.',
    );
  }
  if (!known.samples.includes(samples)) {
    throw levelError(
      context,
      `is ${known.name} with ${samples} samples per pixel (expected ${known.samples.join(' or ')})`,
    );
  }
  const bits =
    d.BitsPerSample === undefined
      ? [1]
      : typeof d.BitsPerSample === 'number'
        ? [d.BitsPerSample]
        : Array.from(d.BitsPerSample);
  const depth = bits[0];
  const oneBitGrey = depth === 1 && (photometric === 0 || photometric === 1) && samples === 1;
  if (
    !bits.every((b) => b === depth) ||
    !(depth === 8 || depth === 16 || oneBitGrey || (photometric === 3 && depth <= 8))
  ) {
    throw levelError(context, `has ${bits.join(', ')} bits per sample; expected 8 or 16 for every sample`);
  }
  const format = d.SampleFormat ? Array.from(d.SampleFormat) : [1];
  if (!format.every((f) => f === 1)) {
    throw levelError(
      context,
      `has SampleFormat ${format.join(', ')}; Tessera reads unsigned integer samples (SampleFormat 1)`,
      'Convert the slide to 8-bit, e.g. `vips cast in.tif out.tif uchar --shift`.',
    );
  }
  const planar = d.PlanarConfiguration ?? 1;
  if (planar !== 1 && planar !== 2) throw levelError(context, `has PlanarConfiguration ${planar} (expected 1 or 2)`);
  const predictor = d.Predictor ?? 1;
  if (predictor !== 1 && predictor !== 2) {
    throw levelError(context, `has Predictor ${predictor}; expected 1 (none) or 2 (horizontal differencing)`);
  }
  const sub = d.YCbCrSubSampling ? Array.from(d.YCbCrSubSampling) : [2, 2];
  if (photometric === 6 && (sub.length !== 2 || !sub.every((s) => s === 1 || s === 2 || s === 4))) {
    throw levelError(context, `has YCbCrSubSampling ${sub.join(', ')} (expected two values, each 1, 2 or 4)`);
  }
  if (d.Compression === 7 && depth !== 8) throw levelError(context, `is JPEG with ${depth}-bit samples (expected 8)`);

  const tiled = d.TileWidth !== undefined || d.TileLength !== undefined;
  const tileWidth = tiled ? (d.TileWidth ?? 0) : width;
  const tileHeight = tiled ? (d.TileLength ?? 0) : Math.min(d.RowsPerStrip ?? height, height);
  const what = tiled ? 'tile' : 'strip';
  if (!(tileWidth >= 1 && tileHeight >= 1 && tileWidth <= 65536 && (!tiled || tileHeight <= 65536))) {
    throw levelError(
      context,
      tiled
        ? `has tiles of ${d.TileWidth ?? 'no width'} x ${d.TileLength ?? 'no height'} px (expected 1 to 65536 each)`
        : `has RowsPerStrip ${d.RowsPerStrip} (expected at least 1)`,
    );
  }
  const chunk = tileWidth * tileHeight * samples * (depth === 16 ? 2 : 1);
  if (chunk > STRUCTURE_LIMITS.chunkBytes) {
    throw levelError(
      context,
      `stores its pixels in ${what}s of ${tileWidth} x ${tileHeight} px, ${Math.round(chunk / 1e6)} MB each once ` +
        `decoded (at most ${STRUCTURE_LIMITS.chunkBytes / 1024 / 1024} MB)`,
      'Rewrite it tiled: `vips tiffsave in.tif out.tif --tile --pyramid --compression jpeg --Q 90`.',
    );
  }
  const columns = Math.ceil(width / tileWidth);
  const rows = Math.ceil(height / tileHeight);
  const expected = columns * rows * (planar === 2 ? samples : 1);
  const { offsets, counts } = tables;
  if (offsets.length < expected || counts.length < expected) {
    throw levelError(
      context,
      `is ${width} x ${height} px in ${what}s of ${tileWidth} x ${tileHeight}, which makes ${expected} ${what}s, ` +
        `but its tables list ${offsets.length} offsets and ${counts.length} byte counts`,
    );
  }
  // Stored tiles: inside the file, and in number of distinct bytes plausible for the pixels they claim.
  const ranges: [number, number][] = [];
  let end = 0;
  let empty = 0;
  for (let i = 0; i < expected; i++) {
    const offset = offsets[i];
    const count = counts[i];
    if (!(count > 0) || !(offset > 0)) {
      empty++;
      continue;
    }
    end = Math.max(end, offset + count);
    ranges.push([offset, offset + count]);
  }
  if (end > context.fileSize) throw truncatedSlide(context.path, context.level, end, context.fileSize);
  if (empty > 0 && context.decoder === 'libvips') {
    throw levelError(
      context,
      `has ${empty} of ${expected} ${what}s with no data (offset or byte count 0), which its decoder (libvips) ` +
        `cannot read`,
    );
  }
  const pixels = width * height;
  if (pixels >= STRUCTURE_LIMITS.bombCheckPixels) {
    ranges.sort((a, b) => a[0] - b[0]);
    let stored = 0;
    let reach = 0;
    let distinct = 0;
    let lastStart = -1;
    for (const [from, to] of ranges) {
      if (from !== lastStart) distinct++;
      lastStart = from;
      if (to > reach) {
        stored += to - Math.max(from, reach);
        reach = to;
      }
    }
    if (pixels / Math.max(stored, 1) > STRUCTURE_LIMITS.pixelsPerStoredByte) {
      throw levelError(
        context,
        `declares ${width} x ${height} px (${formatPixels(pixels)}) but its ${ranges.length} stored ` +
          `${what}s point at ${distinct} distinct offset(s) holding ${stored} bytes: ${Math.round(pixels / Math.max(stored, 1))} ` +
          `pixels per stored byte, where slides have at most ${STRUCTURE_LIMITS.pixelsPerStoredByte}. The file is refused ` +
          'as a decompression bomb',
        'A real slide of this size stores far more data: the file is damaged or was made to exhaust memory and time.',
      );
    }
  }
}

/** `12.3 gigapixels` or `4.5 megapixels`. */
function formatPixels(pixels: number): string {
  return pixels >= 1e9 ? `${(pixels / 1e9).toFixed(1)} gigapixels` : `${(pixels / 1e6).toFixed(1)} megapixels`;
}

/**
 * Checks a level's declared size: positive integers, at most {@link STRUCTURE_LIMITS}`.side` per side and
 * `maxPixels` in all.
 * @throws {@link SlideFormatError} naming the file, the level, the size and how to raise the limit.
 */
export function checkLevelSize(
  context: Pick<LevelContext, 'path' | 'level' | 'maxPixels'>,
  width: unknown,
  height: unknown,
): void {
  const valid = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= STRUCTURE_LIMITS.side;
  if (!valid(width) || !valid(height)) {
    throw new SlideFormatError(
      `Slide "${context.path}" level ${context.level} declares a size of ${String(width ?? 'no width')} x ` +
        `${String(height ?? 'no height')} px; expected whole numbers from 1 to ${STRUCTURE_LIMITS.side.toLocaleString('en-US')}.`,
      'The file is damaged: copy it again, and check that it opens in QuPath or `vipsheader`.',
    );
  }
  const pixels = (width as number) * (height as number);
  if (pixels > context.maxPixels) {
    throw new SlideFormatError(
      `Slide "${context.path}" level ${context.level} declares ${width} x ${height} px ` +
        `(${formatPixels(pixels)}), more than the limit of ${formatPixels(context.maxPixels)}.`,
      'If the slide really is this large, raise the limit with the environment variable TESSERA_MAX_SLIDE_PIXELS ' +
        `(e.g. TESSERA_MAX_SLIDE_PIXELS=${Math.ceil(pixels / 1e9) * 1e9}).`,
    );
  }
}
