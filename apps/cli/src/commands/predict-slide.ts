import { InvalidOptionError, readManifest } from '@tessera/core';
import type { PolygonsGeoJson, SlideInfo } from '@tessera/tiler';
import { writeSlideReport } from '../slide-report.js';
import { info, ProgressBar, type OutputOptions } from '../progress.js';
import { importTiler, requireTiler } from '../tiler.js';
import { slideRuntime } from '../runtime.js';

/** Images at least this large (pixels) go to the whole-slide tiler even when they are plain PNG/JPEG/TIFF. */
export const WHOLE_SLIDE_PIXELS = 4096 * 4096;

/** Options of `tessera predict` used for whole slides. */
export interface SlidePredictCliOptions {
  model: string;
  out: string;
  probabilities?: boolean;
  tile?: number;
  overlap?: number;
  workers?: number;
  batch?: number;
  mpp?: number;
  tissue?: boolean;
  stripeWidth?: number;
  backend?: string;
  runtime?: string;
  device?: string;
  threads?: number;
  /** `fp32` (default) or `int8` (the model's `model.int8.onnx`). */
  precision?: string;
  /** Continue an interrupted prediction from its partial work folder in `out`. */
  resume?: boolean;
  /** Also write `<stem>_polygons.geojson` (implied by `geojsonMinArea` and `geojsonObject`). */
  geojson?: boolean;
  geojsonMinArea?: number;
  /** QuPath object type of the polygons: `detection` (default) or `annotation` (see {@link checkGeojsonOptions}). */
  geojsonObject?: string;
}

/** The values `--geojson-object` takes. */
export const GEOJSON_OBJECT_TYPES = ['detection', 'annotation'] as const;

/**
 * Checks `--geojson-min-area` and `--geojson-object` before anything is predicted.
 * @throws core's `InvalidOptionError` (exit code 2) quoting the value and what is valid.
 */
export function checkGeojsonOptions(opts: SlidePredictCliOptions): void {
  const minArea = opts.geojsonMinArea;
  if (minArea !== undefined && !(Number.isFinite(minArea) && minArea >= 0)) {
    throw new InvalidOptionError(
      `Expected --geojson-min-area to be a number of pixels >= 0 but received ${minArea}.`,
      'Give the smallest region to keep in pixels of the label map, e.g. 20; 0 keeps every region.',
    );
  }
  const type = opts.geojsonObject;
  if (type !== undefined && !(GEOJSON_OBJECT_TYPES as readonly string[]).includes(type)) {
    const choices = GEOJSON_OBJECT_TYPES.map((t) => `"${t}"`).join(', ');
    throw new InvalidOptionError(
      `Expected --geojson-object to be one of ${choices} but received "${type}".`,
      'Use detection for many small objects such as nuclei (QuPath draws thousands of them quickly), annotation ' +
        'for a few regions to edit by hand.',
    );
  }
}

/**
 * Whether a slide goes to the tiler: SVS, OME-TIFF, DICOM, tiled or pyramidal TIFF, or any image over 4096 x 4096.
 */
export function isWholeSlide(slide: SlideInfo): boolean {
  if (slide.format === 'svs' || slide.format === 'ome-tiff' || slide.format === 'dicom') return true;
  if (slide.format === 'tiff' && (slide.levels.length > 1 || slide.levels[0].tileWidth !== null)) return true;
  return slide.width * slide.height > WHOLE_SLIDE_PIXELS;
}

/** Files that can only be slides (never ordinary images): their errors are the slide reader's. */
const SLIDE_ONLY = /\.(svs|btf|dcm)$/i;

/**
 * The slide structure of a file (or of a folder holding a DICOM slide) when it should go to the tiler, else `null`
 * (an ordinary image). One decision for every command: a file the slide reader refuses is refused here too, with the
 * reader's message (the same that `tessera info` gives), never read again as an ordinary image.
 */
export async function wholeSlideOf(path: string): Promise<SlideInfo | null> {
  const tiler = await importTiler(); // lazy: the tiler is an optional peer dependency
  if (!tiler) {
    if (SLIDE_ONLY.test(path)) await requireTiler(`Whole slide ${path}`);
    return null; // without the tiler every other file is an ordinary image
  }
  const slide = await tiler.openSlide(path);
  await tiler.verifySlide(slide); // one tile per level: what info checks, predict checks
  return isWholeSlide(slide) ? slide : null;
}

/** The `geojson` option of `predictSlide` for `--geojson`, `--geojson-min-area` and `--geojson-object`. */
export function geojsonOption(
  opts: SlidePredictCliOptions,
): { minArea?: number; objectType: 'detection' | 'annotation' } | undefined {
  if (!opts.geojson && opts.geojsonMinArea === undefined && opts.geojsonObject === undefined) return undefined;
  return { minArea: opts.geojsonMinArea, objectType: opts.geojsonObject === 'annotation' ? 'annotation' : 'detection' };
}

/** One line about a GeoJSON file: where it is, polygons per class, the time taken. */
export function describePolygons(polygons: PolygonsGeoJson): string {
  const counts = polygons.classes.map((c) => `${c.polygons} ${c.name}${c.dropped ? ` (+${c.dropped} dropped)` : ''}`);
  return `${polygons.path} (${counts.join(', ')}; ${(polygons.ms / 1000).toFixed(2)} s)`;
}

/** The JSON record's fields for a GeoJSON file. */
export function polygonsRecord(polygons: PolygonsGeoJson | undefined) {
  if (!polygons) return {};
  return {
    geojson: polygons.path,
    polygons: Object.fromEntries(polygons.classes.map((c) => [c.name, c.polygons])),
  };
}

/** Predicts one whole slide with a progress bar (tiles, Mpx/s, ETA); returns the JSON record. */
export async function predictWholeSlide(
  path: string,
  opts: SlidePredictCliOptions,
  out: OutputOptions,
  plugins: string[] = [],
) {
  let bar: ProgressBar | undefined;
  const { predictSlide } = await requireTiler(`Whole slide ${path}`);
  const runtime = await slideRuntime(opts, out);
  info(out, `runtime: ${runtime.label}`);
  // Ctrl-C / SIGTERM: stop the workers; the finished rows stay journaled for --resume (twice: quit at once).
  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) process.exit(130);
    bar?.clear();
    info(out, `${signal} received: stopping, the finished rows are kept (send again to quit at once)`);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const { run, outputs } = await predictSlide(path, {
    onnx: runtime.onnx,
    model: opts.model,
    out: opts.out,
    probabilities: opts.probabilities,
    tile: opts.tile,
    overlap: opts.overlap,
    workers: opts.workers,
    batchSize: opts.batch,
    mpp: opts.mpp,
    tissue: opts.tissue,
    stripeWidth: opts.stripeWidth,
    backend: opts.backend,
    plugins,
    resume: opts.resume,
    geojson: geojsonOption(opts),
    signal: controller.signal,
    onProgress: (p) => {
      bar ??= new ProgressBar('slide', p.tilesTotal, out, 'tile');
      const mpx = p.pixelsDone / 1e6 / Math.max(p.elapsedMs / 1000, 1e-9);
      bar.update(p.tilesDone, `${mpx.toFixed(2)} Mpx/s`);
    },
  }).finally(() => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    bar?.clear();
    return runtime.cleanup();
  });
  const seconds = run.timings.wallMs / 1000;
  if (opts.resume) {
    info(
      out,
      run.resumedPixels > 0
        ? `${path}: resumed at row ${run.resumedRows} of ${run.height}` +
            `${run.stripes > 1 ? ` in stripe ${run.resumedStripe + 1} of ${run.stripes}` : ''} from the partial work in ${opts.out}`
        : `${path}: no partial work to resume in ${opts.out}, predicted from the first row`,
    );
  }
  const pixels = run.width * run.height - run.resumedPixels;
  info(
    out,
    `${path}: ${run.width} x ${run.height} px (level ${run.level}${run.scale !== 1 ? `, scale ${run.scale.toFixed(3)}` : ''}), ` +
      `${run.tilesPredicted} tiles predicted, ${run.tilesSkipped} skipped as background, ` +
      `${(pixels / 1e6 / seconds).toFixed(2)} Mpx/s on ${run.options.workers} worker(s) (${run.engine})`,
  );
  if (outputs.polygons) info(out, `polygons: ${describePolygons(outputs.polygons)}`);
  const report = await writeSlideReport(run, outputs, opts.model, await readManifest(opts.model));
  info(out, `report: ${report}`);
  return {
    input: path,
    report,
    labels: outputs.labels,
    overlay: outputs.overlay,
    areas: outputs.areasJson,
    probabilities: outputs.probabilities.length ? outputs.probabilities : undefined,
    ...polygonsRecord(outputs.polygons),
    classPixels: Object.fromEntries(outputs.areas.map((a) => [a.name, a.pixels])),
    wholeSlide: {
      width: run.width,
      height: run.height,
      level: run.level,
      mpp: run.mpp,
      tiles: run.tilesPredicted,
      skipped: run.tilesSkipped,
      resumedRows: run.resumedRows,
      seconds,
    },
  };
}
