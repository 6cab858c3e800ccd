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
  verifySlide,
  type OpenSlideOptions,
  type ReadRegionOptions,
  type Region,
  type SlideFormat,
  type SlideInfo,
  type SlideLevel,
} from './slide.js';
export { DEFAULT_MAX_SLIDE_PIXELS, STRUCTURE_LIMITS, maxSlidePixels } from './tiff-structure.js';
export {
  checkTileOptions,
  defaultOverlap,
  markTissue,
  otsuThreshold,
  resolveTileOptions,
  splitLevel,
  splitStripes,
  tissueMask,
  type Stripe,
  type SplitOptions,
  type TileLocation,
  type TilePlan,
} from './splitter.js';
export { BandMerger, RowPool, type Band, type MergerOptions, type RowAccumulator } from './merger.js';
export {
  quantizeBand,
  SlideOutputWriter,
  VipsFileWriter,
  vipsHeader,
  type ClassArea,
  type OutputClass,
  type QuantizedBand,
  type SlideOutputOptions,
  type SlideOutputs,
} from './writer.js';
export { Polygonizer, type LabelPolygon, type PolygonizerOptions } from './polygons.js';
export {
  writePolygonsGeoJson,
  type ClassPolygons,
  type GeoJsonClass,
  type PolygonsGeoJson,
  type PolygonsGeoJsonOptions,
} from './geojson.js';
export { appendSlideRegions, assembleSlidePrediction, type AssemblyProgress, type RegionResults } from './assemble.js';
export {
  createTilerPool,
  planSlidePrediction,
  predictSlide,
  streamSlidePrediction,
  type BandSink,
  type OutputGeometry,
  type PredictSlideOptions,
  type SlidePlan,
  type TilerPool,
  type TilerProgress,
  type TilerRun,
} from './predict-slide.js';
export { resolveTilerOptions, TILER_DEFAULTS, type ResolvedTilerOptions, type TilerOptions } from './options.js';
export { splitRegions, type SlideRegion } from './regions.js';
export type { ResumePoint } from './journal.js';
