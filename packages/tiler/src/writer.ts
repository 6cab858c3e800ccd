/**
 * Outputs of whole-slide prediction, streamed: rows go to uncompressed VIPS files on disk (never the whole map in
 * memory), which are then turned into tiled pyramidal TIFFs (the label map by {@link writeLabelPyramid}, whose
 * reduced levels keep class values; probability maps by libvips). Every final file is written under a temporary name
 * in the same folder and renamed when complete. The VIPS files can live in a work folder that outlasts the process,
 * so that an interrupted prediction continues where it stopped.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, fstatSync, fsyncSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { deflateSync } from 'node:zlib';
import sharp from 'sharp';
import { OutputError, renderOverlay, writeFileAtomic, writePng, type RasterImage } from '@tessera/core';
import { partialDamaged } from './errors.js';
import { writePolygonsGeoJson, type PolygonsGeoJson } from './geojson.js';
import type { Band } from './merger.js';

/** Magic number of a VIPS file written little-endian (`VIPS_MAGIC_INTEL`), stored big-endian. */
const VIPS_MAGIC_INTEL = 0xb6a6f208;

/**
 * The 64-byte header of an uncompressed 8-bit VIPS (`.v`) image: magic, width, height, bands, bits, band format
 * (0 = uchar), coding (0 = none), interpretation (1 = B_W, 22 = sRGB, 0 = multiband), x/y resolution in pixels per mm,
 * then unused fields. Pixels follow, row by row, bands interleaved.
 */
export function vipsHeader(width: number, height: number, bands: number, pixelsPerMm = 1): Buffer {
  const header = Buffer.alloc(64);
  header.writeUInt32BE(VIPS_MAGIC_INTEL, 0);
  header.writeInt32LE(width, 4);
  header.writeInt32LE(height, 8);
  header.writeInt32LE(bands, 12);
  header.writeInt32LE(8, 16); // Bbits (ignored)
  header.writeInt32LE(0, 20); // BandFmt: VIPS_FORMAT_UCHAR
  header.writeInt32LE(0, 24); // Coding: VIPS_CODING_NONE
  header.writeInt32LE(bands === 1 ? 1 : bands === 3 ? 22 : 0, 28); // Type: B_W, sRGB or multiband
  header.writeFloatLE(pixelsPerMm, 32);
  header.writeFloatLE(pixelsPerMm, 36);
  return header;
}

/** Appends rows to a VIPS file opened by path; libvips reads (and memory-maps) it by path. */
export class VipsFileWriter {
  private readonly fd: number;
  private rows = 0;
  private position = 64;

  /**
   * Creates the file, or with `resumeRows` reopens a file written before and keeps its first `resumeRows` rows
   * (anything after them is cut off). With `reserve`, the file is made its full size at once (sparse on most file
   * systems) for {@link VipsFileWriter.writeRegion}, and reopening keeps all of it.
   * @throws {@link PartialWorkError} when the file to reopen is missing, of another size, or shorter than that.
   */
  constructor(
    readonly path: string,
    readonly width: number,
    readonly height: number,
    readonly bands: number,
    pixelsPerMm = 1,
    resumeRows = 0,
    private readonly reserve = false,
  ) {
    const fullSize = 64 + width * height * bands;
    if (resumeRows === 0) {
      this.fd = openSync(path, 'w');
      writeSync(this.fd, vipsHeader(width, height, bands, pixelsPerMm));
      if (reserve) ftruncateSync(this.fd, fullSize);
      return;
    }
    const fail = (reason: string) => partialDamaged(dirname(path), `${basename(path)} ${reason}`);
    let fd: number;
    try {
      fd = openSync(path, 'r+');
    } catch (error) {
      throw fail(`cannot be opened (${(error as Error).message})`);
    }
    const header = Buffer.alloc(64);
    readSync(fd, header, 0, 64, 0);
    const size = [header.readInt32LE(4), header.readInt32LE(8), header.readInt32LE(12)];
    const rowBytes = width * bands;
    const bytes = fstatSync(fd).size;
    const kept = reserve ? height : Math.floor((bytes - 64) / rowBytes);
    let reason = '';
    if (header.readUInt32BE(0) !== VIPS_MAGIC_INTEL || size.join() !== [width, height, bands].join()) {
      reason = `is not a ${width}x${height} ${bands}-band VIPS file`;
    } else if (reserve && bytes !== fullSize) {
      reason = `is ${bytes} bytes long, not ${fullSize}`;
    } else if (kept < resumeRows)
      reason = `holds ${Math.max(0, kept)} finished rows, but the journal says ${resumeRows}`;
    if (reason) {
      closeSync(fd);
      throw fail(reason);
    }
    this.fd = fd;
    this.rows = resumeRows;
    this.position = 64 + resumeRows * rowBytes;
    if (!reserve) ftruncateSync(fd, this.position);
  }

  /** Rows written so far (kept rows included). */
  get rowsWritten(): number {
    return this.rows;
  }

  /** Appends whole rows: `data.length` must be a multiple of `width * bands`. */
  append(data: Uint8Array): void {
    let offset = 0;
    while (offset < data.length) {
      offset += writeSync(this.fd, data, offset, data.length - offset, this.position + offset);
    }
    this.position += data.length;
    this.rows += data.length / (this.width * this.bands);
  }

  /**
   * Writes `data`, rows of `regionWidth` pixels, at column `x` and row `y` of a file made with `reserve`; anything
   * else in the file stays as it is.
   */
  writeRegion(x: number, y: number, regionWidth: number, data: Uint8Array): void {
    const rowBytes = regionWidth * this.bands;
    const rows = data.length / rowBytes;
    if (!this.reserve || !Number.isInteger(rows) || x < 0 || x + regionWidth > this.width || y + rows > this.height) {
      throw new RangeError(`${this.path}: cannot write ${regionWidth}x${rows} pixels at ${x},${y}`);
    }
    const full = regionWidth === this.width;
    for (let r = 0; r < (full ? 1 : rows); r++) {
      const chunk = full ? data : data.subarray(r * rowBytes, (r + 1) * rowBytes);
      const at = 64 + ((y + r) * this.width + x) * this.bands;
      for (let offset = 0; offset < chunk.length; ) {
        offset += writeSync(this.fd, chunk, offset, chunk.length - offset, at + offset);
      }
    }
  }

  /** Flushes the rows written so far to the disk (`fsync`), so they survive a crash. */
  sync(): void {
    fsyncSync(this.fd);
  }

  /** Closes the file; throws when fewer or more rows than `height` were appended (not for `reserve`). */
  close(): void {
    closeSync(this.fd);
    if (!this.reserve && this.rows !== this.height) {
      throw new OutputError(`${this.path}: wrote ${this.rows} rows, expected ${this.height}.`);
    }
  }
}

/**
 * A band as the outputs store it: class indices, and one 8-bit map per class of the probabilities times 255
 * (rounded), `[height, width]` each. What a distributed region job hands to the machine that writes the outputs.
 */
export interface QuantizedBand {
  quantized: true;
  y: number;
  x: number;
  stripe: number;
  height: number;
  width: number;
  /** Class index of each pixel. */
  labels: Uint8Array;
  /** Per class, `round(probability * 255)` of each pixel; empty without probability maps. */
  probabilities: Uint8Array[];
}

/** The bytes the outputs store for a band: class indices and, with `probabilities`, 8-bit maps per class. */
export function quantizeBand(band: Band, numClasses: number, probabilities: boolean): QuantizedBand {
  const maps: Uint8Array[] = [];
  if (probabilities) {
    for (let c = 0; c < numClasses; c++) {
      const bytes = new Uint8Array(band.labels.length);
      for (let i = 0; i < bytes.length; i++) bytes[i] = Math.round(band.probabilities[i * numClasses + c] * 255);
      maps.push(bytes);
    }
  }
  const { y, x, stripe, height, width } = band;
  return { quantized: true, y, x, stripe, height, width, labels: band.labels, probabilities: maps };
}

/** A class as written to the outputs. */
export interface OutputClass {
  name: string;
  /** Pixel value of the class in the label map. */
  value: number;
  color: string;
  /** The class map's background flag (see core's `backgroundClass`); absent in older model folders. */
  background?: boolean;
}

/** Options of {@link SlideOutputWriter}. */
export interface SlideOutputOptions {
  /** Output folder (must exist). */
  dir: string;
  /** File name stem: outputs are `<stem>_labels.tif`, `<stem>_overlay.png`, `<stem>_areas.json|csv`... */
  stem: string;
  width: number;
  height: number;
  classes: OutputClass[];
  /** µm per pixel of the output, when known: written as TIFF resolution (pixels/cm) and used for areas. */
  mpp: { x: number; y: number } | null;
  /** Also write one 8-bit probability pyramid per class. Default false. */
  probabilities?: boolean;
  /**
   * Also write `<stem>_polygons.geojson`: one polygon per 4-connected region of every class but the background class
   * (core's `backgroundClass`), in level-0 pixel coordinates (see {@link writePolygonsGeoJson}). `scale`: level-0
   * pixels per output pixel (default 1); `minArea`: regions of fewer output pixels are left out (default 0);
   * `objectType`: QuPath object type of the polygons (default `'detection'`). Default: no GeoJSON.
   */
  geojson?: { scale?: { x: number; y: number }; minArea?: number; objectType?: 'detection' | 'annotation' };
  /** Tile size of the TIFFs. Default 256. */
  tileSize?: number;
  /**
   * Folder (must exist) for the streamed maps, `labels.v` and `prob_<class>.v`, which are then kept when the writer
   * is aborted or `finish` fails, so that a later writer can continue them with `resume`. Default: temporary files in
   * `dir`, removed on abort.
   */
  workDir?: string;
  /**
   * The vertical stripes the bands come in, left to right, each top to bottom (see the tiler's `stripeWidth`).
   * Default: one stripe of the full width.
   */
  stripes?: { x: number; width: number }[];
  /**
   * Continue the maps in `workDir` after the first `rows` rows of stripe `stripe` (default 0; earlier stripes are
   * complete), whose per-class pixel counts (all stripes) are `counts`.
   */
  resume?: { stripe?: number; rows: number; counts: number[] };
}

/** Per-class area of the label map. */
export interface ClassArea {
  name: string;
  value: number;
  pixels: number;
  /** Share of all pixels. */
  fraction: number;
  /** Area in µm², `null` without µm/px. */
  areaUm2: number | null;
}

/** The files written by {@link SlideOutputWriter.finish}. */
export interface SlideOutputs {
  labels: string;
  overlay: string;
  areasJson: string;
  areasCsv: string;
  probabilities: string[];
  areas: ClassArea[];
  /** With the `geojson` option: the GeoJSON file, its polygons per class and the time spent tracing them. */
  polygons?: PolygonsGeoJson;
}

function tmpName(path: string): string {
  return `${path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
}

/**
 * Receives finished bands of a slide prediction and writes the label map (class values) and optional probability
 * maps as tiled pyramidal TIFFs (Deflate, 256 px tiles, resolution in pixels/cm), an overlay thumbnail and per-class
 * areas. Holds one band at a time; the maps stream to VIPS files next to the outputs or in `workDir`.
 * @example
 * const writer = new SlideOutputWriter({ dir: 'out', stem: 'CMU-1', width, height, classes, mpp });
 * // merger onBand: (band) => writer.write(band)
 * const outputs = await writer.finish(thumbnail);
 */
export class SlideOutputWriter {
  private readonly labels: VipsFileWriter;
  private readonly maps: VipsFileWriter[] = [];
  private readonly counts: number[];
  private readonly lookup: Uint8Array;
  private readonly stripes: { x: number; width: number }[];
  /** The next band's stripe and first row. */
  private position: { stripe: number; row: number };
  private finished = false;

  /**
   * @throws core's `OutputError` when the maps cannot be created, {@link PartialWorkError} when the maps to resume
   * are missing or shorter than `resume.rows`.
   */
  constructor(private readonly options: SlideOutputOptions) {
    const { dir, stem, width, height, classes, mpp, workDir, resume } = options;
    const pixelsPerMm = mpp ? 1000 / mpp.x : 1;
    this.stripes = options.stripes ?? [{ x: 0, width }];
    this.position = { stripe: resume?.stripe ?? 0, row: resume?.rows ?? 0 };
    // Reopened maps keep every row: earlier stripes are complete below the resumed row too.
    const rows = resume ? height : 0;
    const path = (name: string) => (workDir ? join(workDir, `${name}.v`) : tmpName(join(dir, `${stem}_${name}.v`)));
    const files: VipsFileWriter[] = [];
    try {
      files.push(new VipsFileWriter(path('labels'), width, height, 1, pixelsPerMm, rows, true));
      if (options.probabilities) {
        for (const c of classes) {
          files.push(new VipsFileWriter(path(`prob_${c.name}`), width, height, 1, 1, rows, true));
        }
      }
    } catch (error) {
      for (const file of files) closeQuietly(file);
      if (error instanceof OutputError || (error as { code?: string }).code === 'E_PARTIAL_WORK') throw error;
      throw new OutputError(
        `Could not create the outputs of ${stem} in "${workDir ?? dir}": ${(error as Error).message}.`,
        'Choose a writable --out folder with free space for the label map.',
        error,
      );
    }
    [this.labels, ...this.maps] = files;
    this.counts = resume ? [...resume.counts] : new Array<number>(classes.length).fill(0);
    this.lookup = Uint8Array.from(classes.map((c) => c.value));
  }

  /**
   * Writes the next band: rows of a stripe top to bottom, stripe after stripe. A band already quantized
   * ({@link quantizeBand}, e.g. computed on another machine) is written as it is: the same bytes.
   */
  write(band: Band | QuantizedBand): void {
    const { height } = this.options;
    let { stripe, row } = this.position;
    if (row === height && band.stripe === stripe + 1) [stripe, row] = [stripe + 1, 0];
    const expected = this.stripes[stripe];
    if (band.stripe !== stripe || band.y !== row || band.x !== expected?.x || band.width !== expected.width) {
      throw new Error(
        `SlideOutputWriter: expected rows from ${row} of stripe ${stripe} but received rows from ${band.y} of ` +
          `stripe ${band.stripe}`,
      );
    }
    this.position = { stripe, row: row + band.height };
    const quantized =
      'quantized' in band ? band : quantizeBand(band, this.options.classes.length, this.maps.length > 0);
    if (quantized.probabilities.length !== this.maps.length) {
      throw new Error(
        `SlideOutputWriter: expected ${this.maps.length} probability maps per band but received ` +
          `${quantized.probabilities.length}`,
      );
    }
    const values = new Uint8Array(quantized.labels.length);
    for (let i = 0; i < values.length; i++) {
      const label = quantized.labels[i];
      values[i] = this.lookup[label];
      this.counts[label]++;
    }
    this.labels.writeRegion(band.x, band.y, band.width, values);
    this.maps.forEach((map, c) => map.writeRegion(band.x, band.y, band.width, quantized.probabilities[c]));
  }

  /**
   * Flushes the maps to the disk and returns what they hold: the stripe being written and its rows written (earlier
   * stripes are complete), and the per-class pixel counts of all that, the state a later writer resumes from.
   */
  checkpoint(): { stripe: number; rows: number; counts: number[] } {
    for (const file of [this.labels, ...this.maps]) file.sync();
    return { stripe: this.position.stripe, rows: this.position.row, counts: [...this.counts] };
  }

  /** A temporary name for `target`: in `workDir` when there is one (removed with it), else beside `target`. */
  private tmpFor(target: string): string {
    const { workDir } = this.options;
    return workDir ? tmpName(join(workDir, basename(target))) : tmpName(target);
  }

  private async pyramid(source: string, target: string): Promise<void> {
    const { mpp, tileSize = 256 } = this.options;
    const tmp = this.tmpFor(target);
    try {
      await sharp(source, { limitInputPixels: false })
        .toColourspace('b-w')
        .tiff({
          tile: true,
          tileWidth: tileSize,
          tileHeight: tileSize,
          pyramid: true,
          compression: 'deflate',
          ...(mpp ? { xres: 1000 / mpp.x, yres: 1000 / mpp.y, resolutionUnit: 'cm' as const } : {}),
        })
        .toFile(tmp);
      await rename(tmp, target);
    } catch (error) {
      await rm(tmp, { force: true });
      throw new OutputError(
        `Could not write "${target}": ${(error as Error).message}.`,
        'Check that the output folder is writable and the disk has space.',
        error,
      );
    }
  }

  /**
   * Closes the streams and writes the final files: `<stem>_labels.tif`, `<stem>_prob_<class>.tif` (with
   * probabilities), `<stem>_overlay.png` (the label colours over `thumbnail`, the background class untinted: see
   * core's `backgroundClass`), `<stem>_areas.json` and `.csv`, and
   * with `geojson` `<stem>_polygons.geojson`, traced from the label map read back row by row (bounded memory).
   * Removes the maps when done, and on failure unless they are in `workDir`.
   * @param thumbnail - an RGB overview of the slide, any size with the slide's aspect ratio.
   * @param signal - stops between tile rows of the label map and between files; no final file is left half-written.
   */
  async finish(thumbnail: RasterImage, signal?: AbortSignal): Promise<SlideOutputs> {
    const { dir, stem, classes, mpp, width, height, tileSize = 256 } = this.options;
    this.finished = true;
    let done = false;
    try {
      this.labels.close();
      this.maps.forEach((m) => m.close());
      const { stripe, row } = this.position;
      if (stripe !== this.stripes.length - 1 || row !== height) {
        throw new OutputError(
          `${this.labels.path}: the maps end at row ${row} of stripe ${stripe + 1} of ${this.stripes.length}, ` +
            `not at row ${height} of the last stripe.`,
        );
      }
      const labels = join(dir, `${stem}_labels.tif`);
      const resolution = mpp ? { x: 1e4 / mpp.x, y: 1e4 / mpp.y } : null;
      const tmp = this.tmpFor(labels);
      await writeLabelPyramid(this.labels.path, labels, { width, height, tileSize, resolution, signal, tmp });
      const probabilities: string[] = [];
      for (const [c, map] of this.maps.entries()) {
        signal?.throwIfAborted();
        const path = join(dir, `${stem}_prob_${classes[c].name}.tif`);
        await this.pyramid(map.path, path);
        probabilities.push(path);
      }
      signal?.throwIfAborted();
      const overlay = join(dir, `${stem}_overlay.png`);
      await writePng(overlay, await this.overlay(thumbnail));
      const total = width * height;
      const areas: ClassArea[] = classes.map((c, i) => ({
        name: c.name,
        value: c.value,
        pixels: this.counts[i],
        fraction: this.counts[i] / total,
        areaUm2: mpp ? this.counts[i] * mpp.x * mpp.y : null,
      }));
      const areasJson = join(dir, `${stem}_areas.json`);
      const areasCsv = join(dir, `${stem}_areas.csv`);
      await writeFileAtomic(
        areasJson,
        JSON.stringify({ width, height, mpp, totalPixels: total, classes: areas }, null, 2) + '\n',
      );
      const csv = ['class,value,pixels,fraction,area_um2']
        .concat(areas.map((a) => `${a.name},${a.value},${a.pixels},${a.fraction.toFixed(6)},${a.areaUm2 ?? ''}`))
        .join('\n');
      await writeFileAtomic(areasCsv, csv + '\n');
      const polygons = this.options.geojson && (await this.polygons(signal));
      done = true;
      return { labels, overlay, areasJson, areasCsv, probabilities, areas, ...(polygons ? { polygons } : {}) };
    } finally {
      if (done || !this.options.workDir) await this.removeMaps();
    }
  }

  /** Traces the label map, read back from its VIPS file in chunks of rows, into `<stem>_polygons.geojson`. */
  private async polygons(signal?: AbortSignal): Promise<PolygonsGeoJson> {
    const { dir, stem, width, height, classes, geojson } = this.options;
    const path = join(dir, `${stem}_polygons.geojson`);
    const source = this.labels.path;
    async function* rows(): AsyncGenerator<Uint8Array> {
      const input = await open(source, 'r');
      try {
        const chunkRows = Math.max(1, Math.min(height, Math.floor((4 << 20) / width)));
        const chunk = Buffer.alloc(chunkRows * width);
        for (let y = 0; y < height; y += chunkRows) {
          const n = Math.min(chunkRows, height - y);
          const { bytesRead } = await input.read(chunk, 0, n * width, 64 + y * width);
          if (bytesRead !== n * width) throw new Error(`${source} ends at row ${y + Math.floor(bytesRead / width)}`);
          yield chunk.subarray(0, n * width);
        }
      } finally {
        await input.close();
      }
    }
    return writePolygonsGeoJson(path, rows(), {
      width,
      classes,
      minArea: geojson?.minArea,
      scale: geojson?.scale,
      objectType: geojson?.objectType,
      tmp: this.tmpFor(path),
      signal,
    });
  }

  private async overlay(thumbnail: RasterImage): Promise<RasterImage> {
    const { width, height, channels } = thumbnail;
    const small = subsampleLabels(this.labels.path, this.options.width, this.options.height, width, height);
    return renderOverlay({ ...thumbnail, width, height, channels }, small, this.options.classes);
  }

  private async removeMaps(): Promise<void> {
    for (const file of [this.labels, ...this.maps]) await rm(file.path, { force: true });
  }

  /**
   * Stops writing; no final file is created. The maps are removed, unless they are in `workDir` (then the rows
   * written so far stay there for `resume`).
   */
  async abort(): Promise<void> {
    if (!this.finished) {
      this.finished = true;
      for (const file of [this.labels, ...this.maps]) closeQuietly(file);
    }
    if (!this.options.workDir) await this.removeMaps();
  }
}

/**
 * The labels of a one-band VIPS file at `outWidth` x `outHeight`, by nearest neighbour (each output pixel takes the
 * label under its centre), reading only the rows it needs. Not libvips's nearest resize: on a memory-mapped `.v` file
 * it reads past the mapping's end at some sizes (SIGSEGV for a 1101 x 1101 map shrunk to 1024 x 1024).
 */
export function subsampleLabels(
  path: string,
  width: number,
  height: number,
  outWidth: number,
  outHeight: number,
): Uint8Array {
  const out = new Uint8Array(outWidth * outHeight);
  const columns = Int32Array.from({ length: outWidth }, (_, x) =>
    Math.min(width - 1, Math.floor(((x + 0.5) * width) / outWidth)),
  );
  const row = new Uint8Array(width);
  const fd = openSync(path, 'r');
  try {
    for (let y = 0, last = -1; y < outHeight; y++) {
      const source = Math.min(height - 1, Math.floor(((y + 0.5) * height) / outHeight));
      if (source === last) {
        out.copyWithin(y * outWidth, (y - 1) * outWidth, y * outWidth); // an overlay larger than the map
        continue;
      }
      last = source;
      for (let read = 0; read < width; ) {
        const n = readSync(fd, row, read, width - read, 64 + source * width + read);
        if (n === 0) throw new OutputError(`${path} ends before row ${source} of ${height}.`);
        read += n;
      }
      for (let x = 0; x < outWidth; x++) out[y * outWidth + x] = row[columns[x]];
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

function closeQuietly(file: VipsFileWriter): void {
  try {
    file.close();
  } catch {
    // incomplete on purpose
  }
}

/** Options of {@link writeLabelPyramid}. */
interface LabelPyramidOptions {
  width: number;
  height: number;
  tileSize: number;
  /** Pixels per cm of level 0, or `null`. */
  resolution: { x: number; y: number } | null;
  signal?: AbortSignal;
  /** Where the file is written before it is renamed to its target (same file system). */
  tmp: string;
}

/** Level sizes of a pyramid: halved (rounded down) until a level fits in one tile, as libvips's `--pyramid`. */
export function pyramidLevels(width: number, height: number, tileSize: number): { width: number; height: number }[] {
  const levels = [{ width, height }];
  for (let l = levels[0]; (l.width > tileSize || l.height > tileSize) && l.width > 1 && l.height > 1; ) {
    l = { width: Math.floor(l.width / 2), height: Math.floor(l.height / 2) };
    levels.push(l);
  }
  return levels;
}

/** The most frequent of four values; ties go to the first (top-left, top-right, bottom-left). */
function mode4(a: number, b: number, c: number, d: number): number {
  if (a === b || a === c || a === d) return a;
  if (b === c || b === d) return b;
  if (c === d) return c;
  return a;
}

const SHORT = 3;
const LONG = 4;
const RATIONAL = 5;
const LONG8 = 16;

/** `value` as a TIFF RATIONAL with as many decimals as fit in 32 bits (up to 6). */
function rational(value: number): [number, number] {
  let denominator = 1;
  while (denominator < 1e6 && value * denominator * 10 < 0xffffffff) denominator *= 10;
  return [Math.round(value * denominator), denominator];
}

/**
 * Serialises an IFD at `offset`: entries sorted by tag, values that do not fit in the entry right after it.
 * @returns the bytes and the position of its next-IFD pointer within them.
 */
function encodeIfd(
  entries: [tag: number, type: number, values: number[]][],
  offset: number,
  big: boolean,
): { bytes: Buffer; nextPointer: number } {
  const width = (type: number) => (type === SHORT ? 2 : type === LONG8 ? 8 : 4); // a RATIONAL is two LONGs
  const slot = big ? 8 : 4;
  const entryBytes = big ? 20 : 12;
  const head = big ? 8 : 2;
  const tableBytes = head + entries.length * entryBytes + slot;
  const extra = entries.reduce((n, [, type, values]) => {
    const bytes = width(type) * values.length;
    return bytes > slot ? n + bytes + (bytes % 2) : n;
  }, 0);
  const bytes = Buffer.alloc(tableBytes + extra);
  let data = tableBytes;
  if (big) bytes.writeBigUInt64LE(BigInt(entries.length), 0);
  else bytes.writeUInt16LE(entries.length, 0);
  const put = (at: number, type: number, value: number) => {
    if (type === SHORT) bytes.writeUInt16LE(value, at);
    else if (type === LONG) bytes.writeUInt32LE(value, at);
    else bytes.writeBigUInt64LE(BigInt(value), at);
  };
  entries.forEach(([tag, type, values], i) => {
    const at = head + i * entryBytes;
    bytes.writeUInt16LE(tag, at);
    bytes.writeUInt16LE(type, at + 2);
    const count = type === RATIONAL ? values.length / 2 : values.length;
    if (big) bytes.writeBigUInt64LE(BigInt(count), at + 4);
    else bytes.writeUInt32LE(count, at + 4);
    const valueAt = at + (big ? 12 : 8);
    const total = width(type) * values.length;
    let target = valueAt;
    if (total > slot) {
      put(valueAt, big ? LONG8 : LONG, offset + data);
      target = data;
      data += total + (total % 2);
    }
    values.forEach((v, j) => put(target + j * width(type), type === RATIONAL ? LONG : type, v));
  });
  return { bytes, nextPointer: head + entries.length * entryBytes };
}

/**
 * Writes a one-band 8-bit tiled pyramidal TIFF of class values from the rows of a VIPS file, in one streaming pass
 * (a strip of tiles per level in memory). Each reduced level takes the most frequent value of 2x2 pixels of the
 * level above (ties: the top-left one), so every pixel of every level is a class value of level 0 — libvips's
 * `--pyramid` averages, which invents classes between two neighbours. Tiles are Deflate-compressed; the file is
 * BigTIFF only when it would pass 4 GiB. Written under a temporary name and renamed when complete.
 * @throws core's `OutputError` when the file cannot be written; the abort reason when `signal` fires.
 */
async function writeLabelPyramid(source: string, target: string, options: LabelPyramidOptions): Promise<void> {
  const { width, height, tileSize: T, resolution, signal, tmp } = options;
  const levels = pyramidLevels(width, height, T).map((size) => ({
    ...size,
    columns: Math.ceil(size.width / T),
    strip: new Uint8Array(T * size.width),
    stripRows: 0,
    rowsDone: 0,
    pending: new Uint8Array(size.width),
    offsets: [] as number[],
    counts: [] as number[],
  }));
  const input = await open(source, 'r');
  let output: Awaited<ReturnType<typeof open>> | undefined;
  try {
    output = await open(tmp, 'w');
    const out = output;
    let position = 16; // room for a TIFF or BigTIFF header
    const writeStrip = async (level: (typeof levels)[number]) => {
      for (let c = 0; c < level.columns; c++) {
        const tile = new Uint8Array(T * T);
        const x0 = c * T;
        const x1 = Math.min(level.width, x0 + T);
        for (let r = 0; r < level.stripRows; r++) {
          tile.set(level.strip.subarray(r * level.width + x0, r * level.width + x1), r * T);
        }
        const data = deflateSync(tile);
        await out.write(data, 0, data.length, position);
        level.offsets.push(position);
        level.counts.push(data.length);
        position += data.length;
      }
      level.stripRows = 0;
    };
    const pushRow = async (index: number, row: Uint8Array): Promise<void> => {
      const level = levels[index];
      level.strip.set(row, level.stripRows * level.width);
      level.stripRows++;
      const y = level.rowsDone++;
      if (level.stripRows === T || y === level.height - 1) await writeStrip(level);
      const below = levels[index + 1];
      if (!below) return;
      if (y % 2 === 0) level.pending.set(row);
      else if (y >> 1 < below.height) {
        const a = level.pending;
        const reduced = new Uint8Array(below.width);
        for (let x = 0; x < below.width; x++) {
          reduced[x] = mode4(a[2 * x], a[2 * x + 1], row[2 * x], row[2 * x + 1]);
        }
        await pushRow(index + 1, reduced);
      }
    };
    const chunk = Buffer.alloc(T * width);
    for (let y = 0; y < height; y += T) {
      signal?.throwIfAborted();
      const rows = Math.min(T, height - y);
      const { bytesRead } = await input.read(chunk, 0, rows * width, 64 + y * width);
      if (bytesRead !== rows * width) throw new Error(`${source} ends at row ${y + Math.floor(bytesRead / width)}`);
      for (let r = 0; r < rows; r++) await pushRow(0, chunk.subarray(r * width, (r + 1) * width));
    }
    const entriesOf = (level: (typeof levels)[number], index: number, big: boolean) => {
      const offsetType = big ? LONG8 : LONG;
      const entries: [number, number, number[]][] = [
        [254, LONG, [index === 0 ? 0 : 1]], // NewSubfileType: reduced-resolution image below level 0
        [256, LONG, [level.width]],
        [257, LONG, [level.height]],
        [258, SHORT, [8]],
        [259, SHORT, [8]], // Adobe Deflate
        [262, SHORT, [1]], // BlackIsZero
        [277, SHORT, [1]],
      ];
      if (resolution) {
        entries.push([282, RATIONAL, rational((resolution.x * level.width) / width)]);
        entries.push([283, RATIONAL, rational((resolution.y * level.height) / height)]);
      }
      entries.push([284, SHORT, [1]]);
      if (resolution) entries.push([296, SHORT, [3]]); // centimetre
      entries.push(
        [322, SHORT, [T]],
        [323, SHORT, [T]],
        [324, offsetType, level.offsets],
        [325, offsetType, level.counts],
        [339, SHORT, [1]],
      );
      return entries;
    };
    const directories = (big: boolean) => {
      const parts: Buffer[] = [];
      let at = position + (position % 2);
      const first = at;
      levels.forEach((level, i) => {
        const { bytes, nextPointer } = encodeIfd(entriesOf(level, i, big), at, big);
        const next = i + 1 < levels.length ? at + bytes.length + (bytes.length % 2) : 0;
        if (big) bytes.writeBigUInt64LE(BigInt(next), nextPointer);
        else bytes.writeUInt32LE(next, nextPointer);
        parts.push(bytes, Buffer.alloc(bytes.length % 2));
        at = next;
      });
      return { first, bytes: Buffer.concat(parts) };
    };
    const classicBytes = levels.reduce((n, level) => n + 400 + 8 * level.offsets.length, 0);
    const big = position + classicBytes > 0xffffffff;
    const ifds = directories(big);
    await out.write(ifds.bytes, 0, ifds.bytes.length, ifds.first);
    const header = Buffer.alloc(16);
    header.write('II', 0, 'latin1');
    if (big) {
      header.writeUInt16LE(43, 2);
      header.writeUInt16LE(8, 4);
      header.writeBigUInt64LE(BigInt(ifds.first), 8);
    } else {
      header.writeUInt16LE(42, 2);
      header.writeUInt32LE(ifds.first, 4);
    }
    await out.write(header, 0, 16, 0);
    await out.close();
    output = undefined;
    await rename(tmp, target);
  } catch (error) {
    await output?.close().catch(() => undefined);
    await rm(tmp, { force: true });
    if (signal?.aborted) throw error;
    throw new OutputError(
      `Could not write "${target}": ${(error as Error).message}.`,
      'Check that the output folder is writable and the disk has space.',
      error,
    );
  } finally {
    await input.close();
  }
}
