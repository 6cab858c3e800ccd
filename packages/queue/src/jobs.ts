/** What a distributed run puts in its jobs, and how jobs are named. */
import type { SlideRegion } from '@tessera/tiler';

/** Names of the two queues (under the BullMQ prefix of {@link QueueNames}). */
export const QUEUES = { slides: 'tessera-slides', regions: 'tessera-regions' } as const;

/** The settings that shape a slide's output bits, the same for every region (part of the run's key). */
export interface RunSettings {
  tile?: number;
  overlap?: number;
  batchSize?: number;
  mpp?: number;
  tissue?: boolean;
  stripeWidth?: number;
  blend?: 'gaussian' | 'constant';
  probabilities: boolean;
  geojson?: { minArea?: number; objectType?: 'detection' | 'annotation' };
  /** The prediction runtime every worker must use: its arithmetic decides the output bits. */
  runtime: 'onnx' | 'tfjs';
  /** tfjs engine (`wasm`, `tfjs-node`, …) when `runtime` is `tfjs`. */
  backend?: string;
  /**
   * `int8`: every worker runs the model's `model.int8.onnx` (ONNX runtime), whose SHA-256 is `int8Sha256`; its
   * calibration decides the output bits, so a worker whose file differs refuses the job. Absent: fp32.
   */
  precision?: 'int8';
  int8Sha256?: string;
}

/** Data of a slide job (the parent of its region jobs). Paths are absolute, as every machine mounts them. */
export interface SlideJobData {
  version: 1;
  slide: string;
  slideSha256: string;
  model: string;
  modelChecksum: string;
  /** The model's architecture, by name: workers run only architectures installed on their machine. */
  architecture: string;
  out: string;
  settings: RunSettings;
  /** Key of the run: slide, model and settings. */
  run: string;
  /** Rows of tiles per region ({@link splitRegions}), and the regions that gives. */
  tileRows: number;
  regions: number;
  /** Output pixels of the slide. */
  pixels: number;
  submittedFrom: string;
}

/** Data of a region job. */
export interface RegionJobData extends SlideJobData {
  region: SlideRegion;
}

/** What a region job returns. */
export interface RegionResult {
  region: number;
  pixels: number;
  engine: string;
  tiles: number;
  /** Time the region's tiles took to read, predict and merge (summed over tiler threads), for the run's record. */
  timings?: { readMs: number; inferMs: number; mergeMs: number };
  /** Whether a verified file of an earlier attempt was found (nothing computed). */
  reused: boolean;
  host: string;
  wallMs: number;
}

/** Job id of a slide of a run (ids never contain `:`). */
export function slideJobId(run: string): string {
  return `slide-${run}`;
}

/** Job id of a region of a run. */
export function regionJobId(run: string, region: number): string {
  return `region-${run}-${region}`;
}
