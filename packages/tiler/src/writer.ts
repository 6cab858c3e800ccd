/**
 * Outputs of whole-slide prediction, streamed: rows go to uncompressed VIPS files on disk (never the whole map in
 * memory), which libvips then turns into tiled pyramidal TIFFs. Every final file is written under a temporary name in
 * the same folder and renamed when complete.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { OutputError, renderOverlay, writeFileAtomic, writePng, type RasterImage } from '@tessera/core';
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

  constructor(
    readonly path: string,
    readonly width: number,
    readonly height: number,
    readonly bands: number,
    pixelsPerMm = 1,
  ) {
    this.fd = openSync(path, 'w');
    writeSync(this.fd, vipsHeader(width, height, bands, pixelsPerMm));
  }

  /** Appends whole rows: `data.length` must be a multiple of `width * bands`. */
  append(data: Uint8Array): void {
    let offset = 0;
    while (offset < data.length) offset += writeSync(this.fd, data, offset, data.length - offset);
    this.rows += data.length / (this.width * this.bands);
  }

  /** Closes the file; throws when fewer or more rows than `height` were written. */
  close(): void {
    closeSync(this.fd);
    if (this.rows !== this.height) {
      throw new OutputError(`${this.path}: wrote ${this.rows} rows, expected ${this.height}.`);
    }
  }
}

/** A class as written to the outputs. */
export interface OutputClass {
  name: string;
  /** Pixel value of the class in the label map. */
  value: number;
  color: string;
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
  /** Tile size of the TIFFs. Default 256. */
  tileSize?: number;
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
}

function tmpName(path: string): string {
  return `${path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
}

/**
 * Receives finished bands of a slide prediction and writes the label map (class values) and optional probability
 * maps as tiled pyramidal TIFFs (Deflate, 256 px tiles, resolution in pixels/cm), an overlay thumbnail and per-class
 * areas. Holds one band at a time; the maps stream to temporary VIPS files next to the outputs.
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
  private finished = false;

  constructor(private readonly options: SlideOutputOptions) {
    const { dir, stem, width, height, classes, mpp } = options;
    const pixelsPerMm = mpp ? 1000 / mpp.x : 1;
    try {
      this.labels = new VipsFileWriter(tmpName(join(dir, `${stem}_labels.v`)), width, height, 1, pixelsPerMm);
      if (options.probabilities) {
        for (const c of classes) {
          const path = tmpName(join(dir, `${stem}_prob_${c.name}.v`));
          this.maps.push(new VipsFileWriter(path, width, height, 1, pixelsPerMm));
        }
      }
    } catch (error) {
      throw new OutputError(
        `Could not create the outputs of ${stem} in "${dir}": ${(error as Error).message}.`,
        'Choose a writable --out folder with free space for the label map.',
        error,
      );
    }
    this.counts = new Array<number>(classes.length).fill(0);
    this.lookup = Uint8Array.from(classes.map((c) => c.value));
  }

  /** Appends a band (rows in order, top to bottom). */
  write(band: Band): void {
    const k = this.options.classes.length;
    const values = new Uint8Array(band.labels.length);
    for (let i = 0; i < values.length; i++) {
      const label = band.labels[i];
      values[i] = this.lookup[label];
      this.counts[label]++;
    }
    this.labels.append(values);
    this.maps.forEach((map, c) => {
      const bytes = new Uint8Array(band.labels.length);
      for (let i = 0; i < bytes.length; i++) bytes[i] = Math.round(band.probabilities[i * k + c] * 255);
      map.append(bytes);
    });
  }

  private async pyramid(source: string, target: string): Promise<void> {
    const { mpp, tileSize = 256 } = this.options;
    const tmp = tmpName(target);
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
   * probabilities), `<stem>_overlay.png` (the label colours over `thumbnail`), `<stem>_areas.json` and `.csv`.
   * Removes the temporary files, also on failure.
   * @param thumbnail - an RGB overview of the slide, any size with the slide's aspect ratio.
   */
  async finish(thumbnail: RasterImage): Promise<SlideOutputs> {
    const { dir, stem, classes, mpp, width, height } = this.options;
    this.finished = true;
    try {
      this.labels.close();
      this.maps.forEach((m) => m.close());
      const labels = join(dir, `${stem}_labels.tif`);
      await this.pyramid(this.labels.path, labels);
      const probabilities: string[] = [];
      for (const [c, map] of this.maps.entries()) {
        const path = join(dir, `${stem}_prob_${classes[c].name}.tif`);
        await this.pyramid(map.path, path);
        probabilities.push(path);
      }
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
      return { labels, overlay, areasJson, areasCsv, probabilities, areas };
    } finally {
      await this.removeTemporaries();
    }
  }

  private async overlay(thumbnail: RasterImage): Promise<RasterImage> {
    const { width, height, channels } = thumbnail;
    const small = await sharp(this.labels.path)
      .resize(width, height, { fit: 'fill', kernel: 'nearest' })
      .extractChannel(0)
      .raw()
      .toBuffer();
    return renderOverlay({ ...thumbnail, width, height, channels }, small, this.options.classes);
  }

  private async removeTemporaries(): Promise<void> {
    for (const file of [this.labels, ...this.maps]) await rm(file.path, { force: true });
  }

  /** Stops writing and removes the temporary files; no final file is created. */
  async abort(): Promise<void> {
    if (!this.finished) {
      this.finished = true;
      for (const file of [this.labels, ...this.maps]) {
        try {
          file.close();
        } catch {
          // incomplete on purpose
        }
      }
    }
    await this.removeTemporaries();
  }
}
