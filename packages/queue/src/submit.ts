/**
 * Submitting slides: one BullMQ flow per slide, a slide job whose children are its region jobs, with ids derived from
 * the slide's and model's checksums, the settings and the region, so that submitting the same slides again adds
 * nothing. Waiting: the slide jobs' progress over every worker, until each completes or fails.
 */
import { hostname } from 'node:os';
import { mkdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import { OutputError } from '@tessera/core';
import { FlowProducer, Queue, type Job } from 'bullmq';
import { planSlidePrediction, splitRegions, type SlideRegion } from '@tessera/tiler';
import { fileSha256, keyOf, modelChecksum } from './checksum.js';
import { connect, workerName, type QueueTarget } from './connection.js';
import { SlideFailedError } from './errors.js';
import { QUEUES, regionJobId, slideJobId, type RegionJobData, type RunSettings, type SlideJobData } from './jobs.js';
import { tilerOptions } from './run.js';

/** What to predict, and where. */
export interface SubmitRequest {
  model: string;
  out: string;
  settings: RunSettings;
  /**
   * Output pixels per region, about. Default: 16 Mpx (some seconds of work on one CPU worker), smaller on a slide of
   * fewer than {@link MIN_REGIONS} such regions, down to one row of tiles.
   */
  regionPixels?: number;
  /** Attempts per region job before its slide fails. Default 3. */
  attempts?: number;
  /** BullMQ key prefix. Default `bull`. */
  prefix?: string;
}

/** One slide as submitted. */
export interface SubmittedSlide {
  slide: string;
  jobId: string;
  run: string;
  regions: number;
  pixels: number;
  /** `new`: added now; `queued`: already in the queue (waiting or running); `completed`/`failed`: done earlier. */
  status: 'new' | 'queued' | 'completed' | 'failed';
}

/**
 * Regions a slide is cut into at least, when it has that many rows of tiles and `regionPixels` is not given, so that
 * a small slide can keep many workers busy: cut into 4 regions of 16 Mpx, a 64 Mpx slide would use 4 of 16 workers.
 * A region costs a job, a file and a merge besides its tiles (on 2 workers, 1-row regions measured within the spread
 * of runs of 16 Mpx ones: see the README's distributed throughput).
 */
export const MIN_REGIONS = 16;

/**
 * Rows of tiles per region: about `pixels` output pixels per region (whole rows of tiles across a stripe, whose width
 * is the output's, at most the stripe width option), or, by default, fewer rows so that the slide makes at least
 * {@link MIN_REGIONS} regions.
 */
export function regionTileRows(
  stripes: { width: number; plan: { rows: number } }[],
  keptTileHeight: number,
  pixels?: number,
): number {
  const width = Math.max(...stripes.map((stripe) => stripe.width));
  const bySize = Math.max(1, Math.round((pixels ?? 16e6) / (width * Math.max(1, keptTileHeight))));
  if (pixels !== undefined) return bySize;
  const tileRows = stripes.reduce((sum, stripe) => sum + stripe.plan.rows, 0);
  return Math.max(1, Math.min(bySize, Math.floor(tileRows / MIN_REGIONS)));
}

/**
 * Submits one flow per slide (idempotent) and returns what each became.
 * @throws {@link QueueConnectionError} when the queue cannot be reached; the tiler's and core's errors for a slide or
 * model that cannot be read here (the submitting machine plans the regions).
 */
export async function submitSlides(
  target: QueueTarget,
  slides: string[],
  request: SubmitRequest,
): Promise<SubmittedSlide[]> {
  await connect(target); // fails fast when the server cannot be reached
  const connection = { ...target.redis, lazyConnect: false };
  const prefix = request.prefix ?? 'bull';
  const flows = new FlowProducer({ connection, prefix });
  const slidesQueue = new Queue(QUEUES.slides, { connection, prefix });
  try {
    const model = resolve(request.model);
    const out = resolve(request.out);
    try {
      await mkdir(out, { recursive: true });
    } catch (error) {
      throw new OutputError(
        `Cannot create the output folder "${out}": ${(error as Error).message}.`,
        'Choose an --out on the shared storage every worker mounts.',
        error,
      );
    }
    const { checksum, manifest } = await modelChecksum(model);
    const submitted: SubmittedSlide[] = [];
    for (const input of slides) {
      const slide = resolve(input);
      const slideSha256 = await fileSha256(slide);
      const run = keyOf({ slideSha256, model: checksum, settings: request.settings, out });
      const jobId = slideJobId(run);
      const existing = await slidesQueue.getJob(jobId);
      if (existing) {
        const state = await existing.getState();
        const status = state === 'completed' ? 'completed' : state === 'failed' ? 'failed' : 'queued';
        const data = existing.data as SlideJobData;
        submitted.push({ slide, jobId, run, regions: data.regions, pixels: data.pixels, status });
        continue;
      }
      const base: Omit<SlideJobData, 'tileRows' | 'regions' | 'pixels'> = {
        version: 1,
        slide,
        slideSha256,
        model,
        modelChecksum: checksum,
        architecture: manifest.architecture.name,
        out,
        settings: request.settings,
        run,
        submittedFrom: hostname(),
      };
      const plan = await planSlidePrediction(slide, tilerOptions({ ...base, tileRows: 1, regions: 0, pixels: 0 }));
      const kept = plan.plan.keptRowEnds[0] - plan.plan.keptRowStarts[0];
      const rows = regionTileRows(plan.stripes, kept, request.regionPixels);
      const regions: SlideRegion[] = splitRegions(plan, rows);
      const data: SlideJobData = {
        ...base,
        tileRows: rows,
        regions: regions.length,
        pixels: plan.width * plan.height,
      };
      await flows.add({
        name: 'slide',
        queueName: QUEUES.slides,
        data,
        opts: { jobId, attempts: 2, backoff: { type: 'fixed', delay: 1000 } },
        children: regions.map((region) => ({
          name: 'region',
          queueName: QUEUES.regions,
          data: { ...data, region } satisfies RegionJobData,
          opts: {
            jobId: regionJobId(run, region.index),
            attempts: request.attempts ?? 3,
            backoff: { type: 'exponential', delay: 1000 },
            failParentOnFailure: true,
          },
        })),
      });
      submitted.push({ slide, jobId, run, regions: regions.length, pixels: data.pixels, status: 'new' });
    }
    return submitted;
  } finally {
    await flows.close();
    await slidesQueue.close();
  }
}

/** Progress of the slides being waited for. */
export interface QueueProgress {
  regionsDone: number;
  regionsTotal: number;
  pixelsDone: number;
  pixelsTotal: number;
  slidesDone: number;
  slidesFailed: number;
  slidesTotal: number;
  elapsedMs: number;
  /** Names of the workers connected to the region queue (`host:pid`). */
  workers: string[];
}

/** How a slide ended. */
export interface SlideOutcome {
  slide: string;
  jobId: string;
  /** The slide job's return value (the CLI's record of the outputs), when it completed. */
  result?: unknown;
  /** Why it failed: names the slide, the region and the cause. */
  error?: SlideFailedError;
}

/** Why a slide job failed, with its first failed region and that region's cause. */
async function failureOf(job: Job, regionsQueue: Queue): Promise<SlideFailedError> {
  const data = job.data as SlideJobData;
  const failed = await job.getFailedChildrenValues().catch(() => ({}) as Record<string, string>);
  let message = `${data.slide} failed: ${job.failedReason || 'unknown reason'}`;
  for (const [key, reason] of Object.entries(failed)) {
    const child = await regionsQueue.getJob(key.split(':').pop()!);
    const region = (child?.data as RegionJobData | undefined)?.region;
    const where = region
      ? `region ${region.index} (rows ${region.y}-${region.y + region.height - 1} of stripe ${region.stripe})`
      : key;
    message = `${data.slide} failed: ${where}: ${reason}`;
    break;
  }
  if (Object.keys(failed).length === 0 && /child .* failed/i.test(job.failedReason ?? '')) {
    // BullMQ names the child in the parent's reason: look it up.
    const id = /region-[0-9a-f]+-\d+/.exec(job.failedReason)?.[0];
    const child = id ? await regionsQueue.getJob(id) : undefined;
    if (child) {
      const region = (child.data as RegionJobData).region;
      message =
        `${data.slide} failed: region ${region.index} (rows ${region.y}-${region.y + region.height - 1} of stripe ` +
        `${region.stripe}): ${child.failedReason}`;
    }
  }
  return new SlideFailedError(
    message,
    'Fix the cause, then `tessera queue retry --queue <url>` re-runs the failed jobs (finished regions are kept).',
  );
}

/**
 * Waits until every slide job completes or fails, calling `onProgress` about every `intervalMs`.
 * @returns one outcome per slide, in the order given.
 */
export async function waitForSlides(
  target: QueueTarget,
  slides: SubmittedSlide[],
  options: {
    onProgress?: (progress: QueueProgress) => void;
    intervalMs?: number;
    prefix?: string;
    signal?: AbortSignal;
  } = {},
): Promise<SlideOutcome[]> {
  await connect(target);
  const connection = { ...target.redis, lazyConnect: false };
  const prefix = options.prefix ?? 'bull';
  const slidesQueue = new Queue(QUEUES.slides, { connection, prefix });
  const regionsQueue = new Queue(QUEUES.regions, { connection, prefix });
  const started = performance.now();
  const outcomes = new Map<string, SlideOutcome>();
  try {
    for (;;) {
      options.signal?.throwIfAborted();
      let regionsDone = 0;
      let pixelsDone = 0;
      for (const s of slides) {
        if (outcomes.has(s.jobId)) {
          regionsDone += s.regions;
          pixelsDone += s.pixels;
          continue;
        }
        const job = await slidesQueue.getJob(s.jobId);
        if (!job) {
          outcomes.set(s.jobId, {
            slide: s.slide,
            jobId: s.jobId,
            error: new SlideFailedError(`${s.slide}: its job ${s.jobId} is no longer in the queue (cleaned?).`),
          });
          continue;
        }
        const state = await job.getState();
        if (state === 'completed') {
          outcomes.set(s.jobId, { slide: s.slide, jobId: s.jobId, result: job.returnvalue });
        } else if (state === 'failed') {
          outcomes.set(s.jobId, { slide: s.slide, jobId: s.jobId, error: await failureOf(job, regionsQueue) });
        } else {
          const counts = await job.getDependenciesCount();
          const done = counts.processed ?? 0;
          regionsDone += done;
          pixelsDone += (s.pixels * done) / Math.max(1, s.regions);
        }
      }
      const workers = (await regionsQueue.getWorkers()).map(workerName);
      options.onProgress?.({
        regionsDone,
        regionsTotal: slides.reduce((n, s) => n + s.regions, 0),
        pixelsDone,
        pixelsTotal: slides.reduce((n, s) => n + s.pixels, 0),
        slidesDone: [...outcomes.values()].filter((o) => !o.error).length,
        slidesFailed: [...outcomes.values()].filter((o) => o.error).length,
        slidesTotal: slides.length,
        elapsedMs: performance.now() - started,
        workers,
      });
      if (outcomes.size === slides.length) break;
      await new Promise((r) => setTimeout(r, options.intervalMs ?? 500));
    }
    return slides.map((s) => outcomes.get(s.jobId)!);
  } finally {
    await slidesQueue.close();
    await regionsQueue.close();
  }
}
