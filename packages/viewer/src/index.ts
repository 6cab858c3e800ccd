/**
 * `@tessera/viewer`: a local web viewer of a slide (or an ordinary image) and its predictions: OpenSeadragon over Deep
 * Zoom tiles made on demand from the slide and the label pyramid by `@tessera/tiler`'s reader, class overlay with
 * legend and areas, GeoJSON outlines, the pixel under the cursor, a µm scale bar, and on-demand prediction of the part
 * in view. Importing it has no side effects; {@link startViewer} starts the server.
 */
export * from './errors.js';
export { startViewer, DEFAULT_CACHE_BYTES, type ViewerOptions, type ViewerServer } from './server.js';
export type { LiveModel, LiveOptions } from './live.js';
export type { ViewerClass } from './catalog.js';
export type { LegendRow, SlideDescription } from './slide-view.js';
export {
  deepZoom,
  levelSize,
  levelTiles,
  tileRect,
  TILE_OVERLAP,
  TILE_SIZE,
  type DeepZoom,
  type TileRect,
} from './deep-zoom.js';
