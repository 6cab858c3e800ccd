/**
 * DICOM whole-slide images (VL Whole Slide Microscopy Image Storage, one instance per level, as OpenSlide reads them):
 * the series structure from the instances' headers, and each level as a {@link TileGrid} of its encapsulated frames
 * (JPEG, JPEG 2000, HTJ2K), decoded by Tessera's tile decoder. Headers are parsed with `dicom-parser`; only the bytes
 * before the pixel data are read, and the pixel data's item headers are read one by one where no offset table says
 * where the frames lie.
 */
import { open, readdir, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import dicomParser, { type DataSet } from 'dicom-parser';
import { InputNotFoundError } from '@tessera/core';
import { SlideFormatError, truncatedSlide } from './errors.js';
import { STRUCTURE_LIMITS, checkLevelSize, maxSlidePixels } from './tiff-structure.js';
import type { SlideInfo, SlideLevel } from './slide.js';
import type { TileCodec, TileGrid } from './tiles.js';

/** SOP Class UID of VL Whole Slide Microscopy Image Storage. */
const WSI_SOP_CLASS = '1.2.840.10008.5.1.4.1.1.77.1.6';

/** Transfer syntaxes whose frames Tessera decodes, with their names and the encoding named in messages. */
const SUPPORTED_SYNTAXES: Readonly<Record<string, { name: string; encoding: string }>> = {
  '1.2.840.10008.1.2.4.50': { name: 'JPEG Baseline (Process 1)', encoding: 'DICOM JPEG baseline' },
  '1.2.840.10008.1.2.4.51': { name: 'JPEG Extended (Process 2 & 4)', encoding: 'DICOM JPEG extended' },
  '1.2.840.10008.1.2.4.90': { name: 'JPEG 2000 Image Compression (Lossless Only)', encoding: 'DICOM JPEG 2000' },
  '1.2.840.10008.1.2.4.91': { name: 'JPEG 2000 Image Compression', encoding: 'DICOM JPEG 2000' },
  '1.2.840.10008.1.2.4.201': { name: 'High-Throughput JPEG 2000 (Lossless Only)', encoding: 'DICOM HTJ2K' },
  '1.2.840.10008.1.2.4.202': {
    name: 'High-Throughput JPEG 2000 with RPCL Options (Lossless Only)',
    encoding: 'DICOM HTJ2K',
  },
  '1.2.840.10008.1.2.4.203': { name: 'High-Throughput JPEG 2000', encoding: 'DICOM HTJ2K' },
  '1.2.840.10008.1.2.1': { name: 'Explicit VR Little Endian (uncompressed)', encoding: 'DICOM uncompressed' },
  '1.2.840.10008.1.2': { name: 'Implicit VR Little Endian (uncompressed)', encoding: 'DICOM uncompressed' },
};

/** Transfer syntaxes whose frames are stored as they are, one after the other (native pixel data). */
const NATIVE_SYNTAXES = new Set(['1.2.840.10008.1.2.1', '1.2.840.10008.1.2']);

/** Names of transfer syntaxes seen in the wild that Tessera does not decode. */
const OTHER_SYNTAXES: Readonly<Record<string, string>> = {
  '1.2.840.10008.1.2.1.99': 'Deflated Explicit VR Little Endian',
  '1.2.840.10008.1.2.2': 'Explicit VR Big Endian (uncompressed)',
  '1.2.840.10008.1.2.4.57': 'JPEG Lossless, Non-Hierarchical (Process 14)',
  '1.2.840.10008.1.2.4.70': 'JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, SV1)',
  '1.2.840.10008.1.2.4.80': 'JPEG-LS Lossless',
  '1.2.840.10008.1.2.4.81': 'JPEG-LS Lossy (Near-Lossless)',
  '1.2.840.10008.1.2.4.110': 'JPEG XL Lossless',
  '1.2.840.10008.1.2.4.111': 'JPEG XL JPEG Recompression',
  '1.2.840.10008.1.2.4.112': 'JPEG XL',
  '1.2.840.10008.1.2.5': 'RLE Lossless',
};

/** Names of SOP classes a DICOM file that is not a whole-slide image may well be. */
const SOP_CLASSES: Readonly<Record<string, string>> = {
  '1.2.840.10008.1.3.10': 'Media Storage Directory (DICOMDIR)',
  '1.2.840.10008.5.1.4.1.1.1': 'Computed Radiography Image',
  '1.2.840.10008.5.1.4.1.1.1.1': 'Digital X-Ray Image',
  '1.2.840.10008.5.1.4.1.1.1.2': 'Digital Mammography X-Ray Image',
  '1.2.840.10008.5.1.4.1.1.2': 'CT Image',
  '1.2.840.10008.5.1.4.1.1.2.1': 'Enhanced CT Image',
  '1.2.840.10008.5.1.4.1.1.4': 'MR Image',
  '1.2.840.10008.5.1.4.1.1.4.1': 'Enhanced MR Image',
  '1.2.840.10008.5.1.4.1.1.6.1': 'Ultrasound Image',
  '1.2.840.10008.5.1.4.1.1.7': 'Secondary Capture Image',
  '1.2.840.10008.5.1.4.1.1.12.1': 'X-Ray Angiographic Image',
  '1.2.840.10008.5.1.4.1.1.20': 'Nuclear Medicine Image',
  '1.2.840.10008.5.1.4.1.1.66.4': 'Segmentation',
  '1.2.840.10008.5.1.4.1.1.77.1.2': 'VL Microscopic Image',
  '1.2.840.10008.5.1.4.1.1.77.1.3': 'VL Slide-Coordinates Microscopic Image',
  '1.2.840.10008.5.1.4.1.1.77.1.4': 'VL Photographic Image',
  '1.2.840.10008.5.1.4.1.1.88.11': 'Basic Text SR',
  '1.2.840.10008.5.1.4.1.1.88.22': 'Enhanced SR',
  '1.2.840.10008.5.1.4.1.1.88.33': 'Comprehensive SR',
  '1.2.840.10008.5.1.4.1.1.91.1': 'Microscopy Bulk Simple Annotations',
  '1.2.840.10008.5.1.4.1.1.104.1': 'Encapsulated PDF',
  '1.2.840.10008.5.1.4.1.1.128': 'PET Image',
  '1.2.840.10008.5.1.4.1.1.481.1': 'RT Image',
};

/** Bytes read first for a header; doubled until the whole header (everything before the pixel data) is in. */
const FIRST_READ = 64 * 1024;
/** Largest header read (TILED_SPARSE per-frame groups of very many frames stay far below). */
const MAX_HEADER = 512 * 1024 * 1024;
/** Bytes read at a time when walking the pixel data's item headers. */
const WINDOW = 256 * 1024;

const ITEM = 'xfffee000';
const SEQUENCE_END = 'xfffee0dd';

/**
 * Whether a file starts like a DICOM Part 10 file: `DICM` at bytes 128 to 131, after the 128-byte preamble.
 * @param head The first bytes of the file (at least 132; fewer gives `false`).
 * @example
 * isDicomHeader(await readFirstBytes('slide/level-0.dcm', 132)); // true
 */
export function isDicomHeader(head: Uint8Array): boolean {
  return head.length >= 132 && head[128] === 0x44 && head[129] === 0x49 && head[130] === 0x43 && head[131] === 0x4d;
}

/** What one instance's header says, with its parsed data set (everything before the pixel data). */
interface Instance {
  file: string;
  bytes: number;
  dataSet: DataSet;
  sopClass: string;
  series: string;
  modality: string;
  /** Value 3 of ImageType (0008,0008): VOLUME, THUMBNAIL, LABEL, OVERVIEW. */
  flavor: string;
  transferSyntax: string;
  totalColumns: number;
  totalRows: number;
  columns: number;
  rows: number;
  frames: number;
  samples: number;
  bitsAllocated: number;
  planar: number;
  photometric: string;
  manufacturer: string;
  container: string;
  concatenation: string;
}

function syntaxName(uid: string): string {
  return SUPPORTED_SYNTAXES[uid]?.name ?? OTHER_SYNTAXES[uid] ?? 'an unknown transfer syntax';
}

function sopClassName(uid: string): string {
  return SOP_CLASSES[uid] ?? `SOP class ${uid || '(missing)'}`;
}

function supportedList(): string {
  return Object.entries(SUPPORTED_SYNTAXES)
    .map(([uid, { name }]) => `${uid} (${name})`)
    .join(', ');
}

const REEXPORT_HINT =
  'Export the slide from the archive or scanner software again with JPEG baseline, JPEG 2000 or HTJ2K frames ' +
  '(e.g. `wsidicomizer` or `dicom-wsi` with their defaults), or convert it to a pyramidal TIFF with QuPath.';

function damaged(file: string, reason: string, cause?: unknown): SlideFormatError {
  return new SlideFormatError(
    `DICOM file "${file}" could not be read as a whole-slide image: ${reason}.`,
    'Check that the file was copied completely (compare its size with the original) and that it opens in QuPath; ' +
      'export the series from the archive again if it does not.',
    cause,
  );
}

/** An error thrown by dicom-parser: a string, an Error, or `{ exception, dataSet }`. */
function parserMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  if (typeof error === 'string') return error;
  if (error && typeof error === 'object' && 'exception' in error) return parserMessage(error.exception);
  return String(error);
}

/**
 * Parses the header bytes of a DICOM file up to the top-level pixel data element (included: its offset and length),
 * or all of it when `complete` and it has no pixel data (annotations, structured reports, DICOMDIR).
 * dicom-parser 1.8.21 reads elements of VR OV (the Extended Offset Table, 7FE0,0001 and 7FE0,0002) with the short
 * explicit-VR header and derails (cornerstonejs/dicomParser#284): then parsing stops before the table, and the two
 * table elements and the pixel data element are read from there with dicom-parser's element readers.
 * @throws what dicom-parser throws when the bytes end before the pixel data.
 */
function parseHeaderBytes(bytes: Uint8Array, complete: boolean): DataSet {
  let dataSet: DataSet | undefined;
  let failure: unknown;
  try {
    dataSet = dicomParser.parseDicom(bytes, { untilTag: 'x7fe00010' });
  } catch (error) {
    failure = error;
    dataSet = (error as { dataSet?: DataSet } | undefined)?.dataSet;
  }
  if (dataSet?.elements.x7fe00001?.vr !== 'OV') {
    if (failure !== undefined || !dataSet) throw failure;
    if (!dataSet.elements.x7fe00010 && !complete) throw new Error('the bytes end before the pixel data (7FE0,0010)');
    return dataSet;
  }
  const header = dicomParser.parseDicom(bytes, { untilTag: 'x7fe00001' });
  // The table's tag and VR are read; its 12-byte header goes on with 2 reserved bytes and a 4-byte length.
  const stream = new dicomParser.ByteStream(
    dicomParser.littleEndianByteArrayParser,
    bytes,
    header.elements.x7fe00001.dataOffset - 8,
  );
  for (const tag of ['x7fe00001', 'x7fe00002']) {
    const start = stream.position;
    const found = dicomParser.readTag(stream);
    const vr = stream.readFixedString(2);
    if (found !== tag || vr !== 'OV') {
      stream.position = start;
      break;
    }
    stream.seek(2);
    const length = stream.readUint32();
    header.elements[tag] = { tag, vr, length, dataOffset: stream.position };
    stream.seek(length);
  }
  const pixelData = dicomParser.readDicomElementExplicit(stream, header.warnings, 'x7fe00010');
  if (pixelData.tag !== 'x7fe00010') throw new Error(`expected the pixel data after the extended offset table`);
  header.elements.x7fe00010 = pixelData;
  return header;
}

/**
 * Reads and parses the header of a DICOM file: everything before the top-level pixel data (7FE0,0010), whose element
 * (offset and length, not the values) is included. Reads `FIRST_READ` bytes and doubles until the header is in.
 * @returns `null` when the file is not a DICOM Part 10 file.
 */
async function readHeader(file: string): Promise<{ dataSet: DataSet; bytes: number } | null> {
  let handle: FileHandle;
  try {
    handle = await open(file, 'r');
  } catch (error) {
    throw new InputNotFoundError(
      `DICOM file "${file}" does not exist or cannot be read.`,
      'Check the path (relative paths start from the current folder).',
      error,
    );
  }
  try {
    const size = (await handle.stat()).size;
    let want = Math.min(size, FIRST_READ);
    for (;;) {
      const buffer = Buffer.alloc(want);
      const { bytesRead } = await handle.read(buffer, 0, want, 0);
      const bytes = new Uint8Array(buffer.buffer, buffer.byteOffset, bytesRead);
      if (!isDicomHeader(bytes)) return null;
      try {
        return { dataSet: parseHeaderBytes(bytes, bytesRead >= size), bytes: size };
      } catch (error) {
        if (bytesRead >= size)
          throw damaged(file, `expected a DICOM header but dicom-parser failed: ${parserMessage(error)}`, error);
      }
      if (want >= MAX_HEADER) {
        throw damaged(file, `expected the pixel data (7FE0,0010) within the first ${MAX_HEADER} bytes but found none`);
      }
      want = Math.min(size, want * 2);
    }
  } finally {
    await handle.close();
  }
}

/**
 * dicom-parser's readers throw on malformed values (a TypeError for a multi-valued string with fewer values than
 * asked): an attribute that cannot be read counts as absent, like one the file does not have.
 */
function orAbsent<T>(read: () => T, absent: T): T {
  try {
    return read() ?? absent;
  } catch {
    return absent;
  }
}

function text(dataSet: DataSet, tag: string, index?: number): string {
  return orAbsent(() => (dataSet.string(tag, index) ?? '').trim(), '');
}

/** A US, UL or IS attribute as a number (0 when absent). */
function count(dataSet: DataSet, tag: string): number {
  return orAbsent(() => countOf(dataSet, tag), 0);
}

function countOf(dataSet: DataSet, tag: string): number {
  const element = dataSet.elements[tag];
  if (!element || element.length === 0) return 0;
  if (element.vr === 'US') return dataSet.uint16(tag) ?? 0;
  if (element.vr === 'UL') return dataSet.uint32(tag) ?? 0;
  if (element.vr === 'IS') return dataSet.intString(tag) ?? 0;
  // Implicit VR files: the length says which.
  if (element.length === 2) return dataSet.uint16(tag) ?? 0;
  if (element.length === 4 && !element.vr) return dataSet.uint32(tag) ?? 0;
  return dataSet.intString(tag) ?? 0;
}

function instanceOf(file: string, dataSet: DataSet, bytes: number): Instance {
  const columns = count(dataSet, 'x00280011');
  const rows = count(dataSet, 'x00280010');
  return {
    file,
    bytes,
    dataSet,
    sopClass: text(dataSet, 'x00080016') || text(dataSet, 'x00020002'),
    series: text(dataSet, 'x0020000e'),
    modality: text(dataSet, 'x00080060'),
    flavor: text(dataSet, 'x00080008', 2).toUpperCase(),
    transferSyntax: text(dataSet, 'x00020010').replace(/\0/g, ''),
    totalColumns: count(dataSet, 'x00480006') || columns,
    totalRows: count(dataSet, 'x00480007') || rows,
    columns,
    rows,
    frames: count(dataSet, 'x00280008') || 1,
    samples: count(dataSet, 'x00280002') || 1,
    bitsAllocated: count(dataSet, 'x00280100'),
    planar: count(dataSet, 'x00280006'),
    photometric: text(dataSet, 'x00280004').toUpperCase(),
    manufacturer: text(dataSet, 'x00080070'),
    container: text(dataSet, 'x00400512'),
    concatenation: text(dataSet, 'x00209161'),
  };
}

function notWsi(instance: Instance): SlideFormatError {
  const name = SOP_CLASSES[instance.sopClass];
  const modality = instance.modality ? `, modality ${instance.modality}` : '';
  const what = name
    ? `a ${name} (SOP Class UID ${instance.sopClass}${modality})`
    : `an instance of an unrecognised SOP class (SOP Class UID ${instance.sopClass || 'missing'}${modality})`;
  return new SlideFormatError(
    `"${instance.file}" is a DICOM file, but ${what}; expected a VL Whole Slide Microscopy Image ` +
      `(SOP Class UID ${WSI_SOP_CLASS}).`,
    'Tessera reads DICOM whole-slide images only: pass a slide instance (ImageType VOLUME) or the folder of its series.',
  );
}

/** µm per pixel from SharedFunctionalGroupsSequence > PixelMeasuresSequence > PixelSpacing (mm, row\column). */
function pixelSpacing(dataSet: DataSet): { x: number; y: number } | null {
  const shared = dataSet.elements.x52009229?.items?.[0]?.dataSet;
  const measures = shared?.elements.x00289110?.items?.[0]?.dataSet;
  if (!measures) return null;
  const row = orAbsent(() => measures.floatString('x00280030', 0), undefined);
  const column = orAbsent(() => measures.floatString('x00280030', 1), undefined) ?? row;
  if (!(row! > 0) || !(column! > 0)) return null;
  return { x: column! * 1000, y: row! * 1000 };
}

/**
 * Checks that the frames of a level instance can be decoded and says how: the codec, the samples and the encoding.
 * @throws {@link SlideFormatError} for another transfer syntax, more than 8 bits, or a photometric interpretation the
 * codec cannot give.
 */
function codecOf(instance: Instance, level: number): { codec: TileCodec; samples: 1 | 3; encoding: string } {
  const where = `DICOM file "${instance.file}" (level ${level})`;
  const uid = instance.transferSyntax;
  const syntax = SUPPORTED_SYNTAXES[uid];
  if (!syntax) {
    const native = /uncompressed/.test(OTHER_SYNTAXES[uid] ?? '');
    const planar = native && instance.planar === 1 ? ', colour-by-plane' : '';
    throw new SlideFormatError(
      `${where} stores its frames as ${syntaxName(uid)}${planar} (transfer syntax ${uid || 'missing'}); expected ` +
        `one of ${supportedList()}.`,
      native
        ? `Tessera does not read uncompressed DICOM frames. ${REEXPORT_HINT}`
        : `Tessera cannot decode this encoding. ${REEXPORT_HINT}`,
    );
  }
  if (instance.bitsAllocated !== 8) {
    throw new SlideFormatError(
      `${where}: expected 8 bits allocated per sample (BitsAllocated, 0028,0100) but the file has ` +
        `${instance.bitsAllocated || 'none'}.`,
      `Tessera reads 8-bit brightfield slides only. ${REEXPORT_HINT}`,
    );
  }
  if (instance.samples !== 1 && instance.samples !== 3) {
    throw new SlideFormatError(
      `${where}: expected 1 or 3 samples per pixel (SamplesPerPixel, 0028,0002) but the file has ${instance.samples}.`,
      'Tessera reads grey and RGB slides only.',
    );
  }
  const photometric = instance.photometric;
  const grey = photometric === 'MONOCHROME2';
  const allowed = uid.endsWith('.50') || uid.endsWith('.51') ? ['YBR_FULL_422', 'YBR_FULL', 'RGB', 'MONOCHROME2'] : [];
  if (uid.endsWith('.90') || uid.endsWith('.91')) allowed.push('YBR_ICT', 'YBR_RCT', 'RGB', 'YBR_FULL', 'MONOCHROME2');
  if (/\.20[123]$/.test(uid)) allowed.push('YBR_ICT', 'YBR_RCT', 'RGB', 'MONOCHROME2');
  if (NATIVE_SYNTAXES.has(uid)) allowed.push('RGB', 'MONOCHROME2');
  if (NATIVE_SYNTAXES.has(uid) && instance.planar === 1) {
    throw new SlideFormatError(
      `${where} stores its uncompressed frames colour-by-plane (PlanarConfiguration 1); expected colour-by-pixel (0).`,
      `Tessera reads interleaved uncompressed frames only. ${REEXPORT_HINT}`,
    );
  }
  if (!allowed.includes(photometric) || grey !== (instance.samples === 1)) {
    throw new SlideFormatError(
      `${where}: expected a PhotometricInterpretation (0028,0004) of ${allowed.join(', ')} for ${syntax.name} ` +
        `(${instance.samples === 1 ? 'MONOCHROME2 for 1 sample' : 'a colour one for 3 samples'}) but the file has ` +
        `${photometric || 'none'} with ${instance.samples} sample(s) per pixel.`,
      `Tessera cannot tell the colours of these frames. ${REEXPORT_HINT}`,
    );
  }
  let codec: TileCodec;
  if (uid.endsWith('.50') || uid.endsWith('.51')) {
    codec = { kind: 'jpeg', photometric: grey ? 'grey' : photometric === 'RGB' ? 'rgb' : 'ycbcr' };
  } else if (NATIVE_SYNTAXES.has(uid)) {
    codec = { kind: 'raw' };
  } else if (uid.endsWith('.90') || uid.endsWith('.91')) {
    // YBR_ICT and YBR_RCT are undone by the codestream's own component transform; YBR_FULL is YCbCr without it.
    codec = { kind: 'jpeg2000', colour: photometric === 'YBR_FULL' ? 'ycbcr' : 'rgb' };
  } else {
    codec = { kind: 'htj2k' };
  }
  return { codec, samples: instance.samples === 1 ? 1 : 3, encoding: syntax.encoding };
}

/** Checks the geometry of a level instance: sizes, frames, and no concatenation. */
function checkGeometry(instance: Instance, level: number): void {
  const where = `DICOM file "${instance.file}" (level ${level})`;
  if (!(instance.columns > 0 && instance.rows > 0 && instance.totalColumns > 0 && instance.totalRows > 0)) {
    throw new SlideFormatError(
      `${where}: expected a tile size (Columns, Rows) and a level size (TotalPixelMatrixColumns, ` +
        `TotalPixelMatrixRows) but found tiles ${instance.columns}x${instance.rows} and level ` +
        `${instance.totalColumns}x${instance.totalRows}.`,
      'The file is not a complete whole-slide instance: export the series from the archive again.',
    );
  }
  // The sizes are claims like any other: within the limits, tiles that a decoder can hold, and no more pixels than
  // the file's bytes can plausibly encode (a sparse level of a few frames claiming gigapixels is a bomb).
  checkLevelSize(
    { path: instance.file, level, maxPixels: maxSlidePixels() },
    instance.totalColumns,
    instance.totalRows,
  );
  const tiles = Math.ceil(instance.totalColumns / instance.columns) * Math.ceil(instance.totalRows / instance.rows);
  if (instance.columns > 65536 || instance.rows > 65536 || tiles > STRUCTURE_LIMITS.tableEntries) {
    throw damaged(
      instance.file,
      `level ${level} has tiles of ${instance.columns}x${instance.rows} px, ${tiles} of them (expected tiles of at ` +
        `most 65536 px a side and at most ${STRUCTURE_LIMITS.tableEntries} tiles)`,
    );
  }
  const pixels = instance.totalColumns * instance.totalRows;
  if (pixels >= STRUCTURE_LIMITS.bombCheckPixels && pixels / instance.bytes > STRUCTURE_LIMITS.pixelsPerStoredByte) {
    throw damaged(
      instance.file,
      `level ${level} declares ${instance.totalColumns}x${instance.totalRows} px in a file of ${instance.bytes} bytes ` +
        `(over ${STRUCTURE_LIMITS.pixelsPerStoredByte} pixels per byte): it is truncated or a decompression bomb`,
    );
  }
  if (!instance.dataSet.elements.x7fe00010) {
    throw damaged(instance.file, `expected pixel data (7FE0,0010) for level ${level} but the file has none`);
  }
  if (instance.concatenation) {
    throw new SlideFormatError(
      `${where} is one part of a concatenation (ConcatenationUID ${instance.concatenation}): its level is split ` +
        'over several files, which Tessera does not join; expected one file per level.',
      'Export the series again without concatenations (one instance per level), e.g. with `wsidicomizer`.',
    );
  }
}

/** Reads byte ranges of a file through one window of {@link WINDOW} bytes. */
class FileWindow {
  private start = 0;
  private bytes = new Uint8Array(0);

  constructor(
    private readonly handle: FileHandle,
    readonly size: number,
  ) {}

  /** `length` bytes at `position`, or fewer at the end of the file. */
  async at(position: number, length: number): Promise<Uint8Array> {
    const offset = position - this.start;
    if (offset >= 0 && offset + length <= this.bytes.length) return this.bytes.subarray(offset, offset + length);
    const want = Math.max(0, Math.min(Math.max(length, WINDOW), this.size - position));
    const buffer = Buffer.allocUnsafe(want);
    const { bytesRead } = await this.handle.read(buffer, 0, want, position);
    this.start = position;
    this.bytes = new Uint8Array(buffer.buffer, buffer.byteOffset, bytesRead);
    return this.bytes.subarray(0, Math.min(length, bytesRead));
  }
}

/** `(GGGG,EEEE)` of dicom-parser's `xggggeeee`. */
function tagName(tag: string): string {
  return `(${tag.slice(1, 5)},${tag.slice(5, 9)})`.toUpperCase();
}

/** The tag and length of an item header (8 bytes), read with dicom-parser. */
function itemHeader(bytes: Uint8Array): { tag: string; length: number } {
  const stream = new dicomParser.ByteStream(dicomParser.littleEndianByteArrayParser, bytes, 0);
  const tag = dicomParser.readTag(stream);
  return { tag, length: stream.readUint32() };
}

interface Fragment {
  /** File offset of the item header. */
  header: number;
  /** Length of the fragment's bytes after the header. */
  length: number;
}

/**
 * Reads the item headers of encapsulated pixel data from `position` (an item header) to the sequence delimiter, or
 * only `limit` of them.
 */
async function walkFragments(
  window: FileWindow,
  position: number,
  file: string,
  level: number,
  limit = Infinity,
): Promise<{ fragments: Fragment[]; end: number }> {
  const fragments: Fragment[] = [];
  let at = position;
  while (fragments.length < limit) {
    const bytes = await window.at(at, 8);
    if (bytes.length < 8) throw truncatedSlide(file, level, at + 8, window.size);
    const { tag, length } = itemHeader(bytes);
    if (tag === SEQUENCE_END) break;
    if (tag !== ITEM) {
      throw damaged(
        file,
        `expected a fragment item (FFFE,E000) at byte ${at} of the pixel data but found ${tagName(tag)}`,
      );
    }
    if (at + 8 + length > window.size) throw truncatedSlide(file, level, at + 8 + length, window.size);
    fragments.push({ header: at, length });
    at += 8 + length;
  }
  return { fragments, end: at };
}

/** Whether a fragment ends a codestream: JPEG EOI or JPEG 2000 EOC (both FFD9), maybe followed by padding. */
async function endsCodestream(window: FileWindow, fragment: Fragment): Promise<boolean> {
  const end = fragment.header + 8 + fragment.length;
  const tail = await window.at(end - 3, 3);
  if (fragment.length < 2 || tail.length < 3) return false;
  return (tail[1] === 0xff && tail[2] === 0xd9) || (tail[0] === 0xff && tail[1] === 0xd9 && tail[2] === 0x00);
}

/** 64-bit unsigned values (VR OV) of an element in the header. */
function uint64s(dataSet: DataSet, tag: string): number[] {
  const element = dataSet.elements[tag];
  if (!element) return [];
  const view = new DataView(dataSet.byteArray.buffer, dataSet.byteArray.byteOffset + element.dataOffset);
  return Array.from({ length: Math.floor(element.length / 8) }, (_, i) => Number(view.getBigUint64(i * 8, true)));
}

/**
 * File ranges of the frames of encapsulated pixel data, each spanning the frame's fragments with their item headers.
 * Offsets come from the Extended Offset Table, else the Basic Offset Table, else one fragment per frame, else
 * fragments grouped by their end-of-codestream markers.
 */
async function frameRanges(
  instance: Instance,
  handle: FileHandle,
  level: number,
): Promise<{ offsets: number[]; lengths: number[] }> {
  const { file, dataSet, frames } = instance;
  const window = new FileWindow(handle, instance.bytes);
  const pixelData = dataSet.elements.x7fe00010;
  const start = pixelData.dataOffset;
  const [bot] = (await walkFragments(window, start, file, level, 1)).fragments;
  if (!bot) throw damaged(file, 'expected a Basic Offset Table item at the start of the pixel data but found none');
  const base = bot.header + 8 + bot.length; // first fragment's item header: offsets count from here
  const offsets: number[] = [];
  const lengths: number[] = [];

  const extended = uint64s(dataSet, 'x7fe00001');
  const extendedLengths = uint64s(dataSet, 'x7fe00002');
  if (extended.length === frames && extendedLengths.length === frames) {
    // One fragment per frame (the standard's condition for this table); fragments are padded to even lengths.
    for (let i = 0; i < frames; i++) {
      offsets.push(base + extended[i]);
      lengths.push(8 + extendedLengths[i] + (extendedLengths[i] % 2));
    }
    return { offsets, lengths };
  }

  const table: number[] = [];
  if (bot.length >= 4 * frames && bot.length > 0) {
    const bytes = await window.at(bot.header + 8, bot.length);
    const stream = new dicomParser.ByteStream(dicomParser.littleEndianByteArrayParser, bytes, 0);
    for (let i = 0; i < frames; i++) table.push(stream.readUint32());
  }
  // A 32-bit table wraps past 4 GiB: then the fragments are walked instead.
  const increasing = table.length === frames && table[0] === 0 && table.every((v, i) => i === 0 || v > table[i - 1]);
  if (increasing) {
    const last = await walkFragments(window, base + table[frames - 1], file, level);
    for (let i = 0; i < frames; i++) {
      const end = i + 1 < frames ? base + table[i + 1] : last.end;
      offsets.push(base + table[i]);
      lengths.push(end - (base + table[i]));
    }
    return { offsets, lengths };
  }

  const { fragments } = await walkFragments(window, base, file, level);
  if (fragments.length === frames) {
    for (const fragment of fragments) {
      offsets.push(fragment.header);
      lengths.push(8 + fragment.length);
    }
    return { offsets, lengths };
  }
  let first = 0;
  for (let k = 0; k < fragments.length; k++) {
    if (!(await endsCodestream(window, fragments[k])) && k + 1 < fragments.length) continue;
    const end = fragments[k].header + 8 + fragments[k].length;
    offsets.push(fragments[first].header);
    lengths.push(end - fragments[first].header);
    first = k + 1;
  }
  if (offsets.length !== frames) {
    throw damaged(
      file,
      `expected ${frames} codestreams (NumberOfFrames) in its pixel data but its ${fragments.length} fragments form ` +
        `${offsets.length}, and no offset table says where the frames start`,
    );
  }
  return { offsets, lengths };
}

/** Tile index of each frame (-1: a frame of another focal plane or optical path, not used). */
function frameTiles(instance: Instance, columns: number, rows: number, level: number): number[] {
  const { dataSet, frames, file } = instance;
  const organisation = text(dataSet, 'x00209311').toUpperCase();
  if (organisation === 'TILED_FULL') {
    // Column fastest, then row, then focal plane, then optical path: the first plane is the first grid's frames.
    return Array.from({ length: frames }, (_, i) => (i < columns * rows ? i : -1));
  }
  const perFrame = dataSet.elements.x52009230?.items ?? [];
  if (perFrame.length !== frames) {
    throw new SlideFormatError(
      `DICOM file "${file}" (level ${level}): expected a PerFrameFunctionalGroupsSequence (5200,9230) of ` +
        `${frames} items giving each frame's position (DimensionOrganizationType ${organisation || 'absent'}) ` +
        `but found ${perFrame.length}.`,
      'The file is not a complete whole-slide instance: export the series from the archive again.',
    );
  }
  const key = (item: DataSet) => {
    const position = item.elements.x0048021a?.items?.[0]?.dataSet;
    const path = item.elements.x00480207?.items?.[0]?.dataSet;
    return {
      column: position?.int32('x0048021e'),
      row: position?.int32('x0048021f'),
      plane: `${position?.string('x0040074a') ?? ''}\0${path?.string('x00480106') ?? ''}`,
    };
  };
  const keys = perFrame.map((item) => key(item.dataSet!));
  const plane = keys[0]?.plane;
  return keys.map(({ column, row, plane: framePlane }, i) => {
    if (framePlane !== plane) return -1;
    const x = (column ?? 0) - 1;
    const y = (row ?? 0) - 1;
    const c = x / instance.columns;
    const r = y / instance.rows;
    if (!Number.isInteger(c) || !Number.isInteger(r) || c < 0 || r < 0 || c >= columns || r >= rows) {
      throw new SlideFormatError(
        `DICOM file "${file}" (level ${level}): expected frame ${i + 1} at a tile corner of the ` +
          `${columns}x${rows} grid of ${instance.columns}x${instance.rows} tiles, but its position ` +
          `(ColumnPositionInTotalImagePixelMatrix, RowPositionInTotalImagePixelMatrix) is ${column}, ${row}.`,
        'Tessera reads tiles on a regular grid only; convert the slide to a pyramidal TIFF with QuPath.',
      );
    }
    return r * columns + c;
  });
}

/**
 * Reads one DICOM whole-slide instance (one level) and returns its tile grid: the byte range of each frame in the
 * file (item headers included, `dicomItems: true`), placed by `TILED_FULL` order or by each frame's position
 * (`TILED_SPARSE`, where tiles without a frame read as white), and the codec of its transfer syntax. Of several
 * focal planes or optical paths, only the first is used. Nothing is cached: callers keep the grid per file.
 * @param file A `.dcm` file holding one level of a slide.
 * @param level The level's index in its slide, for messages.
 * @throws {@link SlideFormatError} for a file that is not a DICOM whole-slide instance, uses a transfer syntax other
 * than JPEG, JPEG 2000 or HTJ2K, more than 8 bits, or whose pixel data is damaged or cut short.
 * @example
 * const grid = await dicomTileGrid(slide.levels[1].file!, 1);
 * const pixels = await readGridRegion(grid, 0, 0, 512, 512); // [512, 512, grid.samples]
 */
export async function dicomTileGrid(file: string, level: number): Promise<TileGrid> {
  try {
    return await readDicomTileGrid(file, level);
  } catch (error) {
    if (error instanceof SlideFormatError || error instanceof InputNotFoundError) throw error;
    throw damaged(file, `its frames of level ${level} could not be located (${parserMessage(error)})`, error);
  }
}

async function readDicomTileGrid(file: string, level: number): Promise<TileGrid> {
  const header = await readHeader(file);
  if (!header) throw damaged(file, 'expected a DICOM Part 10 file (DICM at byte 128) but the file does not start so');
  const instance = instanceOf(file, header.dataSet, header.bytes);
  if (instance.sopClass !== WSI_SOP_CLASS) throw notWsi(instance);
  checkGeometry(instance, level);
  const { codec, samples, encoding } = codecOf(instance, level);
  const pixelData = instance.dataSet.elements.x7fe00010;
  if (codec.kind === 'raw') return nativeTileGrid(instance, level, samples, encoding);
  if (!pixelData.hadUndefinedLength) {
    throw damaged(
      file,
      `expected encapsulated pixel data (undefined length) for compressed frames but it has a length of ${pixelData.length}`,
    );
  }
  const columns = Math.ceil(instance.totalColumns / instance.columns);
  const rows = Math.ceil(instance.totalRows / instance.rows);
  const tiles = frameTiles(instance, columns, rows, level);
  const handle = await open(file, 'r');
  let ranges: { offsets: number[]; lengths: number[] };
  try {
    ranges = await frameRanges(instance, handle, level);
  } finally {
    await handle.close();
  }
  const offsets = new Float64Array(columns * rows);
  const lengths = new Float64Array(columns * rows);
  for (let i = 0; i < tiles.length; i++) {
    const tile = tiles[i];
    if (tile < 0 || lengths[tile] > 0) continue; // another plane, or a duplicate: the first frame wins
    if (ranges.offsets[i] + ranges.lengths[i] > instance.bytes) {
      throw truncatedSlide(file, level, ranges.offsets[i] + ranges.lengths[i], instance.bytes);
    }
    offsets[tile] = ranges.offsets[i];
    lengths[tile] = ranges.lengths[i];
  }
  return {
    file,
    width: instance.totalColumns,
    height: instance.totalRows,
    tileWidth: instance.columns,
    tileHeight: instance.rows,
    columns,
    rows,
    offsets,
    lengths,
    dicomItems: true,
    codec,
    samples,
    fill: 255,
    encoding,
    level,
  };
}

/** The tile grid of an instance whose frames are stored uncompressed, one after the other. */
function nativeTileGrid(instance: Instance, level: number, samples: 1 | 3, encoding: string): TileGrid {
  const pixelData = instance.dataSet.elements.x7fe00010;
  const columns = Math.ceil(instance.totalColumns / instance.columns);
  const rows = Math.ceil(instance.totalRows / instance.rows);
  const frameBytes = instance.columns * instance.rows * samples;
  const tiles = frameTiles(instance, columns, rows, level);
  const offsets = new Float64Array(columns * rows);
  const lengths = new Float64Array(columns * rows);
  for (let i = 0; i < tiles.length; i++) {
    const tile = tiles[i];
    if (tile < 0 || lengths[tile] > 0) continue;
    const end = pixelData.dataOffset + (i + 1) * frameBytes;
    if (end > instance.bytes) throw truncatedSlide(instance.file, level, end, instance.bytes);
    offsets[tile] = pixelData.dataOffset + i * frameBytes;
    lengths[tile] = frameBytes;
  }
  return {
    file: instance.file,
    width: instance.totalColumns,
    height: instance.totalRows,
    tileWidth: instance.columns,
    tileHeight: instance.rows,
    columns,
    rows,
    offsets,
    lengths,
    codec: { kind: 'raw' },
    samples,
    fill: 255,
    encoding,
    level,
  };
}

/**
 * The DICOM files of a folder with their headers; files that are not DICOM are skipped, and so are damaged DICOM
 * files when `skipDamaged` (the siblings of a file asked for, which may belong to other series).
 */
async function readFolder(folder: string, skipDamaged: boolean): Promise<Instance[]> {
  const names = (await readdir(folder, { withFileTypes: true })).filter((entry) => entry.isFile()).map((e) => e.name);
  names.sort();
  const instances: Instance[] = [];
  for (const name of names) {
    const file = join(folder, name);
    const header = await readHeader(file).catch((error: unknown) => {
      if (error instanceof SlideFormatError && !skipDamaged) throw error;
      return null;
    });
    if (header) instances.push(instanceOf(file, header.dataSet, header.bytes));
  }
  return instances;
}

function describeSeries(instances: Instance[]): string {
  const series = new Map<string, Instance[]>();
  for (const instance of instances) series.set(instance.series, [...(series.get(instance.series) ?? []), instance]);
  return [...series]
    .map(([uid, members]) => {
      const kinds = [...new Set(members.map((m) => (m.sopClass === WSI_SOP_CLASS ? 'WSI' : sopClassName(m.sopClass))))];
      return `${uid || '(no SeriesInstanceUID)'} (${members.length} file(s), ${kinds.join(', ')})`;
    })
    .join('; ');
}

/**
 * Opens a DICOM whole-slide image and reads its structure (no pixels). `path` is one `.dcm` file, whose series is
 * every DICOM file in the same folder with the same SeriesInstanceUID (as OpenSlide does), or a folder holding one
 * slide series (series without a whole-slide instance beside it, such as annotations or a DICOMDIR, are ignored). The levels are the VL Whole Slide Microscopy instances of ImageType VOLUME (or THUMBNAIL when there is no
 * VOLUME), largest first, each in its own file (`level.file`) and decoded by Tessera's tile decoder; LABEL,
 * OVERVIEW and the THUMBNAIL beside VOLUME instances are listed in `associated` as `label`, `macro` and
 * `thumbnail`. µm per pixel comes from level 0's PixelSpacing (shared functional groups).
 * @throws {@link InputNotFoundError} when `path` does not exist.
 * @throws {@link SlideFormatError} for a DICOM file that is not a whole-slide image, a folder with no series or
 * several, a series without a VOLUME instance or whose instances disagree (samples, slide, two instances of one
 * size), or a level whose frames Tessera cannot decode (uncompressed or another transfer syntax, more than 8 bits).
 * @example
 * const slide = await openDicomSlide('slides/case-12/'); // slide.format === 'dicom', slide.levels[0].file
 */
export async function openDicomSlide(path: string): Promise<SlideInfo> {
  try {
    return await readDicomSlide(path);
  } catch (error) {
    if (error instanceof SlideFormatError || error instanceof InputNotFoundError) throw error;
    throw damaged(path, `its attributes could not be read (${parserMessage(error)})`, error);
  }
}

async function readDicomSlide(path: string): Promise<SlideInfo> {
  let isFolder: boolean;
  try {
    isFolder = (await stat(path)).isDirectory();
  } catch (error) {
    throw new InputNotFoundError(
      `Slide "${path}" does not exist.`,
      'Check the path (relative paths start from the current folder).',
      error,
    );
  }
  let series: Instance[];
  if (isFolder) {
    const instances = await readFolder(path, false);
    const uids = new Set(instances.map((i) => i.series));
    // Series without a slide instance (annotations, reports, a DICOMDIR) do not make the folder ambiguous.
    const slides = new Set(instances.filter((i) => i.sopClass === WSI_SOP_CLASS).map((i) => i.series));
    if (instances.length === 0) {
      throw new SlideFormatError(
        `Folder "${path}" holds no DICOM file (none starts with the DICM preamble); expected the files of one ` +
          'DICOM whole-slide series.',
        'Pass the folder that holds the .dcm files of the slide, or one of those files.',
      );
    }
    if (slides.size > 1 || (slides.size === 0 && uids.size > 1)) {
      throw new SlideFormatError(
        `Folder "${path}" holds ${uids.size} DICOM series${slides.size > 1 ? `, ${slides.size} of them slides` : ''}; ` +
          `expected one whole-slide series. Series: ` +
          `${describeSeries(instances)}.`,
        'Pass one .dcm file of the slide instead (its series is then read from the folder), or move each series ' +
          'to a folder of its own.',
      );
    }
    series = slides.size === 1 ? instances.filter((i) => slides.has(i.series)) : instances;
  } else {
    const header = await readHeader(path);
    if (!header) throw damaged(path, 'expected a DICOM Part 10 file (DICM at byte 128) but the file does not start so');
    const chosen = instanceOf(path, header.dataSet, header.bytes);
    if (chosen.sopClass !== WSI_SOP_CLASS) throw notWsi(chosen);
    const siblings = await readFolder(dirname(path), true);
    series = siblings.filter((i) => i.series === chosen.series && basename(i.file) !== basename(path));
    series.unshift(chosen);
  }

  const wsi = series.filter((i) => i.sopClass === WSI_SOP_CLASS);
  if (wsi.length === 0) {
    if (series.length === 1) throw notWsi(series[0]);
    throw new SlideFormatError(
      `"${path}" holds no VL Whole Slide Microscopy Image (SOP Class UID ${WSI_SOP_CLASS}); its series is ` +
        `${describeSeries(series)}.`,
      'Tessera reads DICOM whole-slide images only: pass the folder or a file of a slide series.',
    );
  }
  const volumes = wsi.filter((i) => i.flavor === 'VOLUME');
  const thumbnails = wsi.filter((i) => i.flavor === 'THUMBNAIL');
  const levelInstances = volumes.length > 0 ? volumes : thumbnails;
  if (levelInstances.length === 0) {
    throw new SlideFormatError(
      `"${path}" holds no whole-slide instance of ImageType VOLUME or THUMBNAIL (value 3 of 0008,0008); found ` +
        `${wsi.map((i) => `${basename(i.file)}: ${i.flavor || 'none'}`).join(', ')}.`,
      'The series holds only associated images (label, overview): pass the series of the slide itself.',
    );
  }
  levelInstances.sort((a, b) => b.totalColumns - a.totalColumns || b.totalRows - a.totalRows);

  const first = levelInstances[0];
  for (const [index, instance] of levelInstances.entries()) {
    checkGeometry(instance, index);
    codecOf(instance, index);
    const disagree = (what: string, a: string | number, b: string | number) =>
      new SlideFormatError(
        `DICOM series of "${path}": its instances disagree: "${first.file}" (level 0) has ${what} ${a} but ` +
          `"${instance.file}" (level ${index}) has ${b}; expected one slide with one value.`,
        'The folder may mix slides or scans: keep the files of one series (one SeriesInstanceUID and slide) in it.',
      );
    if (instance.samples !== first.samples) throw disagree('SamplesPerPixel', first.samples, instance.samples);
    if (instance.container && first.container && instance.container !== first.container) {
      throw disagree('ContainerIdentifier', first.container, instance.container);
    }
    const previous = levelInstances[index - 1];
    if (previous && previous.totalColumns === instance.totalColumns && previous.totalRows === instance.totalRows) {
      throw new SlideFormatError(
        `DICOM series of "${path}": its instances disagree: "${previous.file}" and "${instance.file}" are both ` +
          `${instance.flavor} levels of ${instance.totalColumns}x${instance.totalRows}; expected one instance per ` +
          'level (focal planes or optical paths in separate files are not supported).',
        'Keep one instance per level in the folder (e.g. the first focal plane), or export the slide again.',
      );
    }
  }

  const associated: SlideInfo['associated'] = [];
  const named: [string, string][] = [
    ['LABEL', 'label'],
    ['OVERVIEW', 'macro'],
  ];
  if (volumes.length > 0) named.push(['THUMBNAIL', 'thumbnail']);
  for (const [flavor, name] of named) {
    for (const [k, instance] of wsi.filter((i) => i.flavor === flavor).entries()) {
      associated.push({
        name: k === 0 ? name : `${name} ${k + 1}`,
        width: instance.totalColumns,
        height: instance.totalRows,
      });
    }
  }

  const levels: SlideLevel[] = levelInstances.map((instance, index) => ({
    index,
    width: instance.totalColumns,
    height: instance.totalRows,
    downsample: (first.totalColumns / instance.totalColumns + first.totalRows / instance.totalRows) / 2,
    tileWidth: instance.columns,
    tileHeight: instance.rows,
    compression: null,
    page: 0,
    subifd: -1,
    decoder: 'tiles',
    file: instance.file,
    encoding: SUPPORTED_SYNTAXES[instance.transferSyntax]?.encoding ?? syntaxName(instance.transferSyntax),
  }));
  const mpp = pixelSpacing(first.dataSet);
  return {
    path,
    format: 'dicom',
    vendor: first.manufacturer.toLowerCase() || 'dicom',
    width: first.totalColumns,
    height: first.totalRows,
    channels: first.samples === 1 ? 1 : 3,
    levels,
    mpp,
    mppSource: mpp ? 'dicom' : null,
    associated,
    bytes: levelInstances.reduce((sum, instance) => sum + instance.bytes, 0),
  };
}
