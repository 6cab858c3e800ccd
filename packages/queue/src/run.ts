/** The tiler options of a run, shared by the submitter, the region jobs and the slide job. */
import type { PredictSlideOptions, TilerOptions } from '@tessera/tiler';
import type { SlideJobData } from './jobs.js';

/** Machine-specific parts of the tiler options: threads, engine, plugins and ONNX file, given by the worker. */
export interface LocalTiler {
  workers?: number;
  backend?: string;
  plugins?: string[];
  onnx?: { file: string; threads?: number; device?: string };
}

/** The tiler options of a job's run on this machine. */
export function tilerOptions(data: SlideJobData, local: LocalTiler = {}): TilerOptions {
  const s = data.settings;
  return {
    model: data.model,
    tile: s.tile,
    overlap: s.overlap,
    batchSize: s.batchSize,
    mpp: s.mpp,
    tissue: s.tissue,
    stripeWidth: s.stripeWidth,
    blend: s.blend,
    backend: local.backend ?? s.backend,
    workers: local.workers,
    plugins: local.plugins,
    onnx: local.onnx,
  };
}

/** The options of the slide job's output writing. */
export function outputOptions(data: SlideJobData, local: LocalTiler = {}): PredictSlideOptions {
  return {
    ...tilerOptions(data, local),
    out: data.out,
    probabilities: data.settings.probabilities,
    geojson: data.settings.geojson,
  };
}
