/**
 * `@tessera/tiler`: whole-slide prediction for Tessera. Slide readers (tiled pyramidal TIFF/BigTIFF, Aperio SVS,
 * OME-TIFF, PNG/JPEG), a splitter and a band-by-band merger, a Piscina worker pool, and streamed pyramidal outputs.
 * Importing it has no side effects.
 */
export * from './errors.js';
export {
  chooseLevel,
  openSlide,
  parseAperioMpp,
  parseOmeMpp,
  readRegion,
  readThumbnail,
  type ReadRegionOptions,
  type Region,
  type SlideFormat,
  type SlideInfo,
  type SlideLevel,
} from './slide.js';
export {
  checkTileOptions,
  defaultOverlap,
  markTissue,
  otsuThreshold,
  splitLevel,
  tissueMask,
  type SplitOptions,
  type TileLocation,
  type TilePlan,
} from './splitter.js';
export { BandMerger, type Band, type MergerOptions } from './merger.js';
export {
  SlideOutputWriter,
  VipsFileWriter,
  vipsHeader,
  type ClassArea,
  type OutputClass,
  type SlideOutputOptions,
  type SlideOutputs,
} from './writer.js';
export {
  predictSlide,
  resolveTilerOptions,
  streamSlidePrediction,
  TILER_DEFAULTS,
  type BandSink,
  type OutputGeometry,
  type PredictSlideOptions,
  type ResolvedTilerOptions,
  type TilerOptions,
  type TilerProgress,
  type TilerRun,
} from './predict-slide.js';
