/**
 * The outputs of a slide prediction: bands from a run (or from region results) streamed into the writer, journaled
 * in a partial work folder as they are flushed, then the label and probability pyramids, overlay, areas and polygons.
 */
import { mkdir, rm, stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { imageStem, makeOutputDir, OutputError, readManifest, writeFileAtomic, type RasterImage } from '@tessera/core';
import { PredictionInterruptedError } from './errors.js';
import { checkObjectType } from './geojson.js';
import {
  JOURNAL_INTERVAL_MS,
  partialWorkDir,
  readJournal,
  type PartialJournal,
  type PartialSettings,
  type ResumePoint,
} from './journal.js';
import type { Band } from './merger.js';
import { checkMinArea } from './polygons.js';
import {
  skippedTileClass,
  type BandSink,
  type OutputGeometry,
  type PredictSlideOptions,
  type TilerRun,
} from './predict-slide.js';
import { readThumbnail } from './slide.js';
import { SlideOutputWriter, type QuantizedBand, type SlideOutputs } from './writer.js';

/** Receives the bands of a slide's output, as a run computes them or as region results bring them. */
export type OutputSink = Omit<BandSink, 'band'> & { band: (band: Band | QuantizedBand) => Promise<void> };

/** Where the rows of a slide's output come from: a run here, or region results computed elsewhere. */
export type BandProducer = (sink: OutputSink) => Promise<TilerRun>;

/** Where {@link writeSlideOutputs} keeps its partial work, and whether it writes the final files. */
export interface OutputWork {
  /** The partial work folder (maps and journal). Default `<out>/.<stem>.partial`. */
  dir?: string;
  /**
   * Stop once the producer is done, with the maps and the journal kept in `dir` for a later call with `resume`,
   * instead of writing the final files. Default false.
   */
  suspend?: boolean;
}

/**
 * predictSlide's work around a producer of bands: settings, partial work, the writer, and the final files (or, with
 * `work.suspend`, the journal of the rows written so far and no final file).
 */
export async function writeSlideOutputs(
  slidePath: string,
  options: PredictSlideOptions,
  produce: BandProducer,
  work?: OutputWork & { suspend?: false },
): Promise<{ run: TilerRun; outputs: SlideOutputs }>;
export async function writeSlideOutputs(
  slidePath: string,
  options: PredictSlideOptions,
  produce: BandProducer,
  work: OutputWork & { suspend: true },
): Promise<{ run: TilerRun; outputs?: undefined }>;
export async function writeSlideOutputs(
  slidePath: string,
  options: PredictSlideOptions,
  produce: BandProducer,
  work: OutputWork = {},
): Promise<{ run: TilerRun; outputs?: SlideOutputs }> {
  const manifest = await readManifest(options.model);
  if (typeof options.geojson === 'object') {
    checkMinArea(options.geojson.minArea, 'geojson.minArea');
    checkObjectType(options.geojson.objectType, 'geojson.objectType');
  }
  // Polygons are written in level-0 pixels: the output may be of a reduced level or scale.
  const geojsonOutput = (geometry: OutputGeometry) => {
    const { slide } = geometry;
    const scale = { x: slide.width / geometry.width, y: slide.height / geometry.height };
    const { minArea, objectType } = typeof options.geojson === 'object' ? options.geojson : {};
    return { scale, minArea, objectType };
  };
  await makeOutputDir(options.out); // folder by folder: a path under /proc fails at once instead of spinning
  let writer: SlideOutputWriter | undefined;
  let thumbnail: RasterImage | undefined;
  const stem = imageStem(basename(slidePath)).replace(/\.ome$/i, '');
  const partial = work.dir ?? partialWorkDir(options.out, stem);
  let ownsPartial = false;
  let journaled: ResumePoint = { stripe: 0, row: 0 };
  let journaledAt = 0;
  let height = 0;
  let stripeCount = 1;
  let settings: PartialSettings;
  const journal = async () => {
    const { stripe, rows, counts } = writer!.checkpoint();
    const record: PartialJournal = { format: 'tessera-slide-partial', version: 2, settings, stripe, rows, counts };
    await writeFileAtomic(join(partial, 'journal.json'), JSON.stringify(record, null, 2) + '\n', { durable: true });
    journaled = { stripe, row: rows };
    journaledAt = performance.now();
  };
  try {
    const run = await produce({
      start: async (geometry) => {
        thumbnail = geometry.thumbnail;
        height = geometry.height;
        stripeCount = geometry.stripes.length;
        const file = await stat(slidePath);
        const o = geometry.options;
        settings = {
          slide: resolve(slidePath),
          slideBytes: file.size,
          slideModified: file.mtime.toISOString(),
          modelWeights: manifest.files.weights.sha256,
          modelTopology: manifest.files.topology.sha256,
          // Skipped tiles get the background class: named when it is not class 0 (older runs always used class 0).
          classes:
            manifest.classes.map((c) => `${c.name}=${c.value}`).join(', ') +
            (skippedTileClass(manifest) !== 0
              ? `; skipped tiles: ${manifest.classes[skippedTileClass(manifest)].name}`
              : ''),
          level: geometry.level,
          scale: geometry.scale,
          mpp: geometry.mpp,
          width: geometry.width,
          height: geometry.height,
          tile: o.tile,
          overlap: o.overlap,
          batchSize: o.batchSize,
          blend: o.blend,
          tissue: o.tissue,
          engine: geometry.engine,
          probabilities: !!options.probabilities,
          stripeWidth: o.stripeWidth,
        };
        const kept = options.resume
          ? await readJournal(partial, settings, manifest.classes.length, geometry.stripes)
          : null;
        try {
          if (!kept) {
            await rm(partial, { recursive: true, force: true });
            await mkdir(partial);
            ownsPartial = true;
          }
        } catch (error) {
          throw new OutputError(
            `Cannot create the partial work folder "${partial}": ${(error as Error).message}.`,
            'Choose a writable --out.',
            error,
          );
        }
        writer = new SlideOutputWriter({
          dir: options.out,
          stem,
          width: geometry.width,
          height: geometry.height,
          classes: manifest.classes,
          mpp: geometry.mpp === null ? null : { x: geometry.mpp, y: geometry.mpp },
          probabilities: options.probabilities,
          workDir: partial,
          stripes: geometry.stripes,
          resume: kept ? { stripe: kept.stripe, rows: kept.rows, counts: kept.counts } : undefined,
          geojson: options.geojson ? geojsonOutput(geometry) : undefined,
        });
        ownsPartial = true;
        await journal();
        return journaled;
      },
      probabilities: !!options.probabilities,
      band: async (band) => {
        writer!.write(band);
        // Syncing the maps costs a few ms: journal about once a second (and when stopped, below).
        if (performance.now() - journaledAt >= JOURNAL_INTERVAL_MS || band.y + band.height === height) {
          await journal();
        }
      },
    });
    options.signal?.throwIfAborted();
    if (work.suspend) {
      await journal();
      await writer!.abort(); // closes the maps, which stay in the partial work folder for the next call
      return { run };
    }
    thumbnail ??= await readThumbnail(run.slide, 1024);
    const outputs = await writer!.finish(thumbnail, options.signal);
    await rm(partial, { recursive: true, force: true });
    return { run, outputs };
  } catch (error) {
    if (options.signal?.aborted && writer && ownsPartial) {
      // Every band handed out so far is written: record them, so --resume starts after the last one.
      await journal().catch(() => undefined);
    }
    await writer?.abort();
    const kept = ownsPartial && (journaled.stripe > 0 || journaled.row > 0);
    if (ownsPartial && !kept) await rm(partial, { recursive: true, force: true });
    if (options.signal?.aborted) {
      throw new PredictionInterruptedError(slidePath, kept ? partial : null, journaled.row, height, {
        stripe: journaled.stripe,
        stripes: stripeCount,
      });
    }
    throw error;
  }
}
