/**
 * Tile decoders of the tiled levels ({@link TileGrid}): JPEG through libjpeg-turbo (sharp), JPEG 2000 through
 * OpenJPEG and HTJ2K through OpenJPH (both WebAssembly builds, loaded on first use in each thread). Each returns
 * 8-bit interleaved RGB or grey pixels with the colour space decided by one rule per codec, documented below.
 */
import { createRequire } from 'node:module';
import sharp from 'sharp';
import { SlideFormatError } from './errors.js';
import type { DecodedTile, TileGrid } from './tiles.js';

const require = createRequire(import.meta.url);

/** Marker scan of a JPEG stream up to its first scan: which colour markers it carries. */
export interface JpegMarkers {
  /** An APP0 `JFIF` marker: the samples are YCbCr (JFIF allows nothing else). */
  jfif: boolean;
  /** The transform flag of an APP14 `Adobe` marker (0 = RGB, 1 = YCbCr), or `null` without one. */
  adobeTransform: number | null;
  /** Components of the frame (SOFn), or 0 when no frame header was found before the scan. */
  components: number;
  /** Component identifiers of the frame, in order. */
  ids: number[];
}

/** Reads the markers of a JPEG stream from its SOI to its first SOS (or its end). */
export function scanJpegMarkers(bytes: Uint8Array): JpegMarkers {
  const result: JpegMarkers = { jfif: false, adobeTransform: null, components: 0, ids: [] };
  let at = 2; // after SOI
  while (at + 4 <= bytes.length) {
    if (bytes[at] !== 0xff) break;
    const marker = bytes[at + 1];
    if (marker === 0xff) {
      at += 1; // fill byte
      continue;
    }
    if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) {
      at += 2;
      continue;
    }
    if (marker === 0xd9 || marker === 0xda) break;
    const length = (bytes[at + 2] << 8) | bytes[at + 3];
    const body = at + 4;
    const text = (n: number) => String.fromCharCode(...bytes.subarray(body, body + n));
    if (marker === 0xe0 && length >= 7 && text(5) === 'JFIF\0') result.jfif = true;
    if (marker === 0xee && length >= 14 && text(5) === 'Adobe') result.adobeTransform = bytes[body + 11];
    const isFrame = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
    if (isFrame && length >= 8) {
      result.components = bytes[body + 5];
      result.ids = Array.from({ length: result.components }, (_, k) => bytes[body + 6 + 3 * k]);
    }
    at += 2 + length;
  }
  return result;
}

/**
 * The colour space of the samples of a 3-component JPEG stream, by what the stream says first and the container's
 * tag last:
 * 1. a JFIF marker means YCbCr (JFIF allows nothing else);
 * 2. an Adobe marker says it with its transform flag (0 RGB, otherwise YCbCr);
 * 3. component ids `R`, `G`, `B` mean RGB, and ids 1, 2, 3 mean YCbCr (libjpeg's reading of a stream without
 *    markers: JFIF's numbering);
 * 4. otherwise the container's `photometric` (TIFF Photometric, DICOM PhotometricInterpretation) decides, as libtiff
 *    and OpenSlide read TIFF tiles: Aperio's RGB tiles carry no marker and ids 0, 1, 2.
 * QuPath's OME-TIFF tiles say Photometric RGB but are JFIF YCbCr: the stream wins. OpenSlide and libvips apply rule
 * 4 alone, and read such tiles in false colour.
 */
export function jpegColourSpace(markers: JpegMarkers, photometric: 'rgb' | 'ycbcr' | 'grey'): 'rgb' | 'ycbcr' {
  if (markers.jfif) return 'ycbcr';
  if (markers.adobeTransform !== null) return markers.adobeTransform === 0 ? 'rgb' : 'ycbcr';
  const ids = markers.ids.join(',');
  if (ids === '82,71,66') return 'rgb';
  if (ids === '1,2,3') return 'ycbcr';
  return photometric === 'ycbcr' ? 'ycbcr' : 'rgb';
}

/** An APP14 Adobe marker with the given transform (0 RGB, 1 YCbCr), which libjpeg obeys when no JFIF marker is present. */
function adobeMarker(transform: number): Uint8Array {
  return Uint8Array.from([0xff, 0xee, 0x00, 0x0e, 0x41, 0x64, 0x6f, 0x62, 0x65, 0x00, 0x64, 0, 0, 0, 0, transform]);
}

/**
 * One self-contained JPEG stream for a tile: the TIFF's shared tables spliced in front of the tile's own markers, and
 * an Adobe marker stating the colour space of {@link jpegColourSpace} when the stream does not say it itself, so that
 * libjpeg decodes to RGB exactly as the rule says.
 */
export function completeJpeg(tile: Uint8Array, tables: Uint8Array | undefined, photometric: 'rgb' | 'ycbcr' | 'grey') {
  const parts: Uint8Array[] = [tile.subarray(0, 2)];
  let markers = scanJpegMarkers(tile);
  if (tables && tables.length > 4) {
    const tableMarkers = scanJpegMarkers(tables);
    markers = {
      jfif: markers.jfif || tableMarkers.jfif,
      adobeTransform: markers.adobeTransform ?? tableMarkers.adobeTransform,
      components: markers.components || tableMarkers.components,
      ids: markers.ids.length ? markers.ids : tableMarkers.ids,
    };
    // Tables are SOI ... EOI: keep what lies between.
    const end =
      tables[tables.length - 2] === 0xff && tables[tables.length - 1] === 0xd9 ? tables.length - 2 : undefined;
    parts.push(tables.subarray(2, end));
  }
  if (markers.components === 3 && !markers.jfif && markers.adobeTransform === null) {
    parts.push(adobeMarker(jpegColourSpace(markers, photometric) === 'rgb' ? 0 : 1));
  }
  parts.push(tile.subarray(2));
  return parts.length === 2 ? tile : Buffer.concat(parts);
}

async function decodeJpeg(bytes: Uint8Array, grid: TileGrid & { codec: { kind: 'jpeg' } }): Promise<DecodedTile> {
  const stream = completeJpeg(bytes, grid.codec.tables, grid.codec.photometric);
  // A tile's stream may claim any size: allow the grid's tile size (and a margin), never a decompression bomb.
  const limit = (grid.tileWidth + 16) * (grid.tileHeight + 16);
  const { data, info } = await sharp(stream, { limitInputPixels: limit, failOn: 'error' })
    .raw({ depth: 'uchar' })
    .toBuffer({ resolveWithObject: true });
  return { data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), ...dims(info) };
}

function dims(info: { width: number; height: number; channels: number }) {
  return { width: info.width, height: info.height, channels: info.channels };
}

interface WasmDecoder {
  getEncodedBuffer(length: number): Uint8Array;
  getDecodedBuffer(): Uint8Array;
  decode(): void;
  getFrameInfo(): { width: number; height: number; bitsPerSample: number; componentCount: number; isSigned: boolean };
  delete(): void;
}
type WasmModule = Record<string, new () => WasmDecoder>;

const modules = new Map<string, Promise<WasmModule>>();

/** Loads an Emscripten codec module once per thread, silencing its console output. */
function wasmModule(specifier: string): Promise<WasmModule> {
  let loaded = modules.get(specifier);
  if (!loaded) {
    const factory = require(specifier) as (options: object) => Promise<WasmModule>;
    loaded = factory({ print: () => undefined, printErr: () => undefined });
    modules.set(specifier, loaded);
  }
  return loaded;
}

/**
 * Component subsampling of a JPEG 2000 codestream from its SIZ marker (`[dx, dy]` per component), or `null` when
 * the bytes do not start with a codestream (a JP2 file).
 */
export function j2kSubsampling(bytes: Uint8Array): [number, number][] | null {
  if (bytes[0] !== 0xff || bytes[1] !== 0x4f || bytes[2] !== 0xff || bytes[3] !== 0x51) return null;
  const count = (bytes[40] << 8) | bytes[41];
  const result: [number, number][] = [];
  for (let c = 0; c < count; c++) result.push([bytes[42 + 3 * c + 1], bytes[42 + 3 * c + 2]]);
  return result;
}

/** OpenSlide's YCbCr tables (`make-tables.c`): R and B offsets, and G's fixed-point precursors. */
const R_CR = Int16Array.from({ length: 256 }, (_, i) => Math.round(1.402 * (i - 128)));
const G_CB = Int32Array.from({ length: 256 }, (_, i) => Math.round(65536 * (0.5 - 0.34414 * (i - 128))));
const G_CR = Int32Array.from({ length: 256 }, (_, i) => Math.round(65536 * -0.71414 * (i - 128)));
const B_CB = Int16Array.from({ length: 256 }, (_, i) => Math.round(1.772 * (i - 128)));

/** YCbCr to RGB in place, interleaved, with OpenSlide's arithmetic (Aperio 33003 tiles). */
export function ycbcrToRgb(pixels: Uint8Array): void {
  for (let i = 0; i + 2 < pixels.length; i += 3) {
    const y = pixels[i];
    const cb = pixels[i + 1];
    const cr = pixels[i + 2];
    const r = y + R_CR[cr];
    const g = y + ((G_CB[cb] + G_CR[cr]) >> 16);
    const b = y + B_CB[cb];
    pixels[i] = r < 0 ? 0 : r > 255 ? 255 : r;
    pixels[i + 1] = g < 0 ? 0 : g > 255 ? 255 : g;
    pixels[i + 2] = b < 0 ? 0 : b > 255 ? 255 : b;
  }
}

async function decodeWasm(
  specifier: string,
  className: string,
  bytes: Uint8Array,
): Promise<{ data: Uint8Array; width: number; height: number; channels: number; bits: number }> {
  const module = await wasmModule(specifier);
  const decoder = new module[className]();
  try {
    decoder.getEncodedBuffer(bytes.length).set(bytes);
    decoder.decode();
    const info = decoder.getFrameInfo();
    // The decoded buffer is a view of the module's memory: copy it out before the decoder is freed.
    const data = new Uint8Array(decoder.getDecodedBuffer());
    return { data, width: info.width, height: info.height, channels: info.componentCount, bits: info.bitsPerSample };
  } finally {
    decoder.delete();
  }
}

/**
 * The image size a JPEG 2000 codestream declares in its SIZ marker (the codestream may sit inside a JP2 file: its
 * SOC and SIZ markers are looked for in the first 4 KB), or `null` when none is found.
 */
export function j2kDeclaredSize(bytes: Uint8Array): { width: number; height: number } | null {
  const end = Math.min(bytes.length - 24, 4096);
  for (let at = 0; at < end; at++) {
    if (bytes[at] === 0xff && bytes[at + 1] === 0x4f && bytes[at + 2] === 0xff && bytes[at + 3] === 0x51) {
      const view = new DataView(bytes.buffer, bytes.byteOffset + at + 4);
      // Lsiz (2), Rsiz (2), Xsiz, Ysiz, XOsiz, YOsiz (4 each)
      return { width: view.getUint32(4) - view.getUint32(12), height: view.getUint32(8) - view.getUint32(16) };
    }
  }
  return null;
}

async function decodeJpeg2000(bytes: Uint8Array, grid: TileGrid): Promise<DecodedTile> {
  const declared = j2kDeclaredSize(bytes);
  if (!declared) throw new Error('no JPEG 2000 codestream header (SOC and SIZ markers) in its first 4 KB');
  if (
    !(declared.width >= 1 && declared.height >= 1) ||
    declared.width * declared.height > (grid.tileWidth + 16) * (grid.tileHeight + 16)
  ) {
    throw new Error(
      `its codestream declares ${declared.width} x ${declared.height} px, larger than a ${grid.tileWidth} x ` +
        `${grid.tileHeight} tile`,
    );
  }
  const htj2k = grid.codec.kind === 'htj2k';
  const decoded = htj2k
    ? await decodeWasm('@cornerstonejs/codec-openjph', 'HTJ2KDecoder', bytes)
    : await decodeWasm('@cornerstonejs/codec-openjpeg/decodewasmjs', 'J2KDecoder', bytes);
  if (decoded.bits !== 8) {
    throw new Error(`expected 8 bits per sample but the codestream has ${decoded.bits}`);
  }
  if (grid.codec.kind === 'jpeg2000' && grid.codec.colour === 'ycbcr' && decoded.channels === 3) {
    // OpenJPEG's decoder already turns subsampled YCbCr into RGB (as opj_decompress does); full-resolution YCbCr
    // components come out as they are.
    const sub = j2kSubsampling(bytes);
    const subsampled = sub !== null && sub.some(([dx, dy]) => dx !== 1 || dy !== 1);
    if (!subsampled) ycbcrToRgb(decoded.data);
  }
  return { data: decoded.data, width: decoded.width, height: decoded.height, channels: decoded.channels };
}

/** Converts decoded pixels to `samples` channels (grey to RGB by repetition, RGB to grey by libvips's weights). */
function toSamples(tile: DecodedTile, samples: 1 | 3): DecodedTile {
  if (tile.channels === samples) return tile;
  const n = tile.width * tile.height;
  const data = new Uint8Array(n * samples);
  for (let i = 0; i < n; i++) {
    const src = i * tile.channels;
    if (samples === 3) {
      const v = tile.data[src];
      data[i * 3] = v;
      data[i * 3 + 1] = v;
      data[i * 3 + 2] = v;
    } else {
      const r = tile.data[src];
      const g = tile.data[src + 1];
      const b = tile.data[src + 2];
      data[i] = Math.round(0.2126 * r + 0.7152 * g + 0.0722 * b);
    }
  }
  return { data, width: tile.width, height: tile.height, channels: samples };
}

/**
 * Decodes the bytes of tile `index` of a grid to 8-bit interleaved pixels with the grid's samples per pixel.
 * @throws {@link SlideFormatError} naming the file, level, tile and encoding when the bytes cannot be decoded.
 */
export async function decodeTile(bytes: Uint8Array, grid: TileGrid, index: number): Promise<DecodedTile> {
  try {
    if (grid.codec.kind === 'raw') {
      const expected = grid.tileWidth * grid.tileHeight * grid.samples;
      if (bytes.length !== expected) throw new Error(`expected ${expected} bytes of samples but found ${bytes.length}`);
      return { data: bytes, width: grid.tileWidth, height: grid.tileHeight, channels: grid.samples };
    }
    const tile =
      grid.codec.kind === 'jpeg'
        ? await decodeJpeg(bytes, { ...grid, codec: grid.codec })
        : await decodeJpeg2000(bytes, grid);
    return toSamples(tile, grid.samples);
  } catch (error) {
    if (error instanceof SlideFormatError) throw error;
    const column = index % grid.columns;
    const row = Math.floor(index / grid.columns);
    throw new SlideFormatError(
      `Slide "${grid.file}" level ${grid.level}: tile ${column},${row} (${grid.encoding}, ${bytes.length} bytes) ` +
        `could not be decoded: ${(error as Error).message}.`,
      'The file may be damaged: copy it again, or check that it opens in QuPath.',
      error,
    );
  }
}
