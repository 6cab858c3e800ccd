/**
 * `@tessera/queue`: distributed whole-slide prediction on BullMQ and Redis. Slides are cut into regions (the tiler's
 * `splitRegions`), each a job any worker may run; the regions are merged into the slide's outputs as they finish, and a
 * slide job writes what is left and the final files once all are done, the same bytes as one machine's run. Importing
 * it has no side effects.
 */
export * from './errors.js';
export { parseQueueUrl, redactUrl, type QueueTarget } from './connection.js';
export { QUEUES, type RegionJobData, type RegionResult, type RunSettings, type SlideJobData } from './jobs.js';
export { fileSha256 } from './checksum.js';
export { parseShard, shardOf, type Shard } from './shard.js';
export {
  submitSlides,
  waitForSlides,
  type QueueProgress,
  type SlideOutcome,
  type SubmitRequest,
  type SubmittedSlide,
} from './submit.js';
export { startWorker, type PreparedJob, type RunningWorker, type WorkerOptions } from './worker.js';
export { cleanFinished, queueStatus, retryFailed, type JobCounts, type QueueStatus } from './status.js';
export { readRegionFile, regionFile, writeRegionFile, type RegionHeader } from './region-files.js';
