/** `tessera queue status|retry|clean`: what the queues hold, re-running failed jobs, and removing finished ones. */
import { Queue } from 'bullmq';
import { connect, workerName, type QueueTarget } from './connection.js';
import { QUEUES, type SlideJobData } from './jobs.js';

/** Job counts of one queue by state. */
export type JobCounts = Record<'waiting' | 'active' | 'completed' | 'failed' | 'delayed' | 'waiting-children', number>;

/** What {@link queueStatus} reports. */
export interface QueueStatus {
  url: string;
  slides: JobCounts;
  regions: JobCounts;
  /** Workers connected now (`host:pid`). */
  workers: string[];
  /** Slides not finished, with regions done of all. */
  running: { slide: string; jobId: string; state: string; regionsDone: number; regions: number }[];
  /** Failed slides with their reasons. */
  failed: { slide: string; jobId: string; reason: string }[];
}

const STATES = ['waiting', 'active', 'completed', 'failed', 'delayed', 'waiting-children'] as const;

async function withQueues<T>(
  target: QueueTarget,
  prefix: string | undefined,
  work: (slides: Queue, regions: Queue) => Promise<T>,
): Promise<T> {
  await connect(target);
  const connection = { ...target.redis, lazyConnect: false };
  const slides = new Queue(QUEUES.slides, { connection, prefix: prefix ?? 'bull' });
  const regions = new Queue(QUEUES.regions, { connection, prefix: prefix ?? 'bull' });
  try {
    return await work(slides, regions);
  } finally {
    await slides.close();
    await regions.close();
  }
}

/** Counts, workers, running and failed slides of a queue server. */
export function queueStatus(target: QueueTarget, prefix?: string): Promise<QueueStatus> {
  return withQueues(target, prefix, async (slides, regions) => {
    const counts = async (queue: Queue) => (await queue.getJobCounts(...STATES)) as JobCounts;
    const running = [];
    for (const job of await slides.getJobs(['waiting-children', 'waiting', 'active'], 0, 200)) {
      if (!job) continue;
      const data = job.data as SlideJobData;
      const dependencies = await job.getDependenciesCount().catch(() => ({ processed: 0 }));
      running.push({
        slide: data.slide,
        jobId: job.id!,
        state: await job.getState(),
        regionsDone: dependencies.processed ?? 0,
        regions: data.regions,
      });
    }
    const failed = (await slides.getJobs(['failed'], 0, 200))
      .filter((job) => !!job)
      .map((job) => ({ slide: (job.data as SlideJobData).slide, jobId: job.id!, reason: job.failedReason }));
    return {
      url: target.display,
      slides: await counts(slides),
      regions: await counts(regions),
      workers: (await regions.getWorkers()).map(workerName),
      running,
      failed,
    };
  });
}

/**
 * Re-runs failed jobs: failed regions first (their slides then wait for them again), then failed slide jobs.
 * Finished regions are kept. Returns the jobs re-queued per queue.
 */
export function retryFailed(target: QueueTarget, prefix?: string): Promise<{ regions: number; slides: number }> {
  return withQueues(target, prefix, async (slides, regions) => {
    const failedRegions = await regions.getJobs(['failed'], 0, 10_000);
    for (const job of failedRegions) await job?.retry('failed');
    const failedSlides = await slides.getJobs(['failed'], 0, 10_000);
    for (const job of failedSlides) await job?.retry('failed');
    return { regions: failedRegions.length, slides: failedSlides.length };
  });
}

/** Removes finished jobs (`completed`, or `failed` too) older than `graceMs`. Returns the jobs removed. */
export function cleanFinished(
  target: QueueTarget,
  options: { failed?: boolean; graceMs?: number; prefix?: string } = {},
): Promise<number> {
  return withQueues(target, options.prefix, async (slides, regions) => {
    let removed = 0;
    for (const queue of [slides, regions]) {
      for (const state of options.failed ? (['completed', 'failed'] as const) : (['completed'] as const)) {
        removed += (await queue.clean(options.graceMs ?? 0, 100_000, state)).length;
      }
    }
    return removed;
  });
}
