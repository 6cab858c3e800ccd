/**
 * Slide outputs assembled from region results computed elsewhere (distributed prediction). The regions are merged
 * into the outputs as they become ready, in the order the writer needs (stripe by stripe, top to bottom): each
 * {@link appendSlideRegions} call writes the ready regions that follow the rows written so far and keeps the maps
 * and their journal in a work folder, so any process can continue where another stopped; regions that are ready
 * early simply wait until the rows above them are written. {@link assembleSlidePrediction} then writes what is left
 * (after streamed appends, the last region or two) and the final files.
 */
import type { SlideOutputs, QuantizedBand } from './writer.js';
import { TilerOptionError } from './errors.js';
import { toResumePoint, type ResumePoint } from './journal.js';
import { writeSlideOutputs, type OutputSink } from './outputs.js';
import {
  planSlidePrediction,
  tilerRun,
  type OutputGeometry,
  type PredictSlideOptions,
  type SlidePlan,
  type TilerRun,
} from './predict-slide.js';
import { checkRegion, type SlideRegion } from './regions.js';

/** Region results to assemble into a slide's outputs with {@link assembleSlidePrediction}. */
export interface RegionResults {
  /** The engine every region was computed with (the output's bits depend on it). */
  engine: string;
  /** The regions of {@link splitRegions}, all of them, in any order. */
  regions: SlideRegion[];
  /**
   * The bands of one region, top to bottom, or `null` while the region is not done ({@link appendSlideRegions} then
   * stops before it; {@link assembleSlidePrediction} refuses it).
   */
  read: (region: SlideRegion) => Promise<QuantizedBand[] | null>;
  /**
   * Work folder of a streamed assembly: the maps and the journal of the rows written so far, continued by each
   * {@link appendSlideRegions} call and by the final {@link assembleSlidePrediction}, which removes it. Give a folder
   * of this run only (e.g. beside the region results); its parent must exist. Default: none, every region is written
   * by the final call (through the slide's partial work folder in `out`).
   */
  workDir?: string;
  /** Time spent on the regions elsewhere, and tiles predicted there, for the run's record. */
  timings?: { readMs: number; inferMs: number; mergeMs: number };
  tilesPredicted?: number;
}

/** What an {@link appendSlideRegions} call did. */
export interface AssemblyProgress {
  /** Regions written by this call. */
  written: number;
  /** The first region not written yet (not ready), or `null` when every region is written. */
  next: SlideRegion | null;
}

/**
 * Checks that the regions cover the output exactly once, stripe by stripe from row 0, and returns them in the order
 * the writer needs.
 * @throws {@link TilerOptionError} naming the first region out of place, or the pixels covered.
 */
function outputOrder(regions: SlideRegion[], planned: SlidePlan): SlideRegion[] {
  const { width, height, stripes } = planned;
  const ordered = [...regions].sort((a, b) => a.stripe - b.stripe || a.y - b.y);
  let covered = 0;
  for (const [i, region] of ordered.entries()) {
    checkRegion(region, stripes, height);
    const previous = ordered[i - 1];
    const expected = previous && previous.stripe === region.stripe ? previous.y + previous.height : 0;
    if (region.y !== expected) {
      throw new TilerOptionError(
        `Expected the regions of stripe ${region.stripe} to follow each other from row 0, but region ` +
          `${region.index} starts at row ${region.y} instead of ${expected}.`,
        'Assemble every region of splitRegions() of the same slide, model and options.',
      );
    }
    covered += region.width * region.height;
  }
  if (covered !== width * height) {
    throw new TilerOptionError(
      `Expected regions covering the ${width} x ${height} output once but they cover ${covered} pixels.`,
      'Assemble every region of splitRegions() of the same slide, model and options.',
    );
  }
  return ordered;
}

/** Whether all of `region` lies above `point` (written before). */
function writtenBefore(region: { stripe: number; y: number; height: number }, point: ResumePoint): boolean {
  return region.stripe < point.stripe || (region.stripe === point.stripe && region.y + region.height <= point.row);
}

/** The output's geometry as a run over the whole slide would report it. */
function outputGeometry(planned: SlidePlan, engine: string): OutputGeometry {
  const { width, height, mpp, level, scale, numClasses, options, stripes, slide, thumbnail } = planned;
  const columns = stripes.map((stripe) => ({ x: stripe.x, width: stripe.width }));
  return { width, height, mpp, level, scale, numClasses, options, engine, slide, thumbnail, stripes: columns };
}

/** The record of an assembly, as that of a run over the whole slide. */
function assemblyRun(planned: SlidePlan, results: RegionResults, started: number): TilerRun {
  return tilerRun(planned, {
    tilesPredicted: results.tilesPredicted ?? 0,
    resumedRows: 0,
    resumedStripe: 0,
    resumedPixels: 0,
    engine: results.engine,
    timings: { wallMs: performance.now() - started, readMs: 0, inferMs: 0, mergeMs: 0, ...results.timings },
    peakRows: 0,
  });
}

/**
 * Hands the regions' bands to `sink`, in output order, from where the sink's work stopped. A region that is not ready
 * ends the call when `partial`, else it is refused.
 */
async function writeRegions(
  sink: OutputSink,
  planned: SlidePlan,
  results: RegionResults,
  partial: boolean,
): Promise<AssemblyProgress> {
  const ordered = outputOrder(results.regions, planned);
  const from = toResumePoint(
    await sink.start?.(outputGeometry(planned, results.engine)),
    planned.stripes.length,
    planned.height,
  );
  let written = 0;
  for (const region of ordered) {
    if (writtenBefore(region, from)) continue;
    const bands = await results.read(region);
    if (!bands && partial) return { written, next: region };
    if (!bands) {
      throw new TilerOptionError(
        `Expected the result of region ${region.index} (rows ${region.y}-${region.y + region.height - 1} of stripe ` +
          `${region.stripe}) but it is not ready.`,
        'Assemble the outputs once every region is done (appendSlideRegions writes those that are).',
      );
    }
    // A journal may stop inside a region, after one of its bands.
    for (const band of bands) if (!writtenBefore(band, from)) await sink.band(band);
    written++;
  }
  return { written, next: null };
}

/**
 * Writes the regions whose results are ready into the maps of a streamed assembly in `results.workDir`: from where
 * the earlier calls stopped, in output order, up to the first region not ready. No final file is written (that is
 * {@link assembleSlidePrediction}'s job); the maps and their journal stay in the work folder, so the next call, in
 * this process or another, continues there. Calls must not overlap (a distributed caller holds a lock); a call
 * interrupted by a crash leaves a journal the next call continues from.
 * @throws {@link TilerOptionError} when the regions do not cover the output exactly once or there is no `workDir`,
 * {@link PartialWorkError} when the work folder was made with other settings, and core's `OutputError` when it
 * cannot be written.
 * @example
 * const { next } = await appendSlideRegions('CMU-1.svs', options, { engine, regions, read, workDir });
 */
export async function appendSlideRegions(
  slidePath: string,
  options: PredictSlideOptions,
  results: RegionResults,
): Promise<AssemblyProgress> {
  if (!results.workDir) {
    throw new TilerOptionError(
      'Expected a workDir for appendSlideRegions (where the maps wait between calls) but received none.',
      'Give a folder of this run, e.g. beside its region results.',
    );
  }
  let progress: AssemblyProgress = { written: 0, next: null };
  await writeSlideOutputs(
    slidePath,
    { ...options, resume: true },
    async (sink) => {
      const planned = options.plan ?? (await planSlidePrediction(slidePath, options));
      progress = await writeRegions(sink, planned, results, true);
      return assemblyRun(planned, results, performance.now());
    },
    { dir: results.workDir, suspend: true },
  );
  return progress;
}

/**
 * Writes a slide's outputs from region results computed elsewhere (distributed prediction): the same files, byte for
 * byte, as {@link predictSlide} with the same options, because the regions' rows are those of a whole run and the
 * writer is the same. Regions are written in order, one at a time; with `results.workDir`, only those that
 * {@link appendSlideRegions} has not written yet. Pass `options.plan` to reuse a plan of the same slide and options.
 * @throws {@link TilerOptionError} when the regions do not cover the output exactly once or one is not ready,
 * {@link PartialWorkError} when the work folder was made with other settings.
 * @example
 * const { outputs } = await assembleSlidePrediction('CMU-1.svs', options, { engine, regions, read, workDir });
 */
export async function assembleSlidePrediction(
  slidePath: string,
  options: PredictSlideOptions,
  results: RegionResults,
): Promise<{ run: TilerRun; outputs: SlideOutputs }> {
  const started = performance.now();
  return writeSlideOutputs(
    slidePath,
    { ...options, resume: results.workDir !== undefined },
    async (sink) => {
      const planned = options.plan ?? (await planSlidePrediction(slidePath, options));
      await writeRegions(sink, planned, results, false);
      return assemblyRun(planned, results, started);
    },
    { dir: results.workDir },
  );
}
