/** A slide's output cut into regions of whole tile rows, for work spread over processes or machines. */
import { TilerOptionError } from './errors.js';
import { positiveInteger } from './options.js';
import type { SlidePlan } from './predict-slide.js';
import type { Stripe } from './splitter.js';

/** Rows `y..y+height-1` of stripe `stripe` of a slide's output (columns `x..x+width-1`). */
export interface SlideRegion {
  /** Position of the region in {@link splitRegions}' list. */
  index: number;
  stripe: number;
  x: number;
  y: number;
  width: number;
  height: number;
}

/**
 * Cuts a planned slide into regions of about `tileRows` rows of tiles each, stripe by stripe, top to bottom. Region
 * boundaries lie where a tile row's kept rows start, so each region needs only the tiles whose kept rows reach into
 * it (those of the tile rows at a boundary are predicted for both regions, with the same bits).
 * @example
 * const regions = splitRegions(await planSlidePrediction('CMU-1.svs', { model }), 4);
 */
export function splitRegions(slidePlan: SlidePlan, tileRows: number): SlideRegion[] {
  positiveInteger(tileRows, 'tileRows', 'Use regions of at least 1 row of tiles, e.g. 4.');
  const regions: SlideRegion[] = [];
  for (const stripe of slidePlan.stripes) {
    const { rows, keptRowStarts, height } = stripe.plan;
    for (let row = 0; row < rows; row += tileRows) {
      const y = row === 0 ? 0 : keptRowStarts[row];
      const end = row + tileRows >= rows ? height : keptRowStarts[row + tileRows];
      if (end > y) {
        regions.push({
          index: regions.length,
          stripe: stripe.index,
          x: stripe.x,
          y,
          width: stripe.width,
          height: end - y,
        });
      }
    }
  }
  return regions;
}

/** Refuses a region that is not one of {@link splitRegions} of this output. */
export function checkRegion(region: SlideRegion, stripes: Stripe[], height: number): void {
  const stripe = stripes[region.stripe];
  const ok =
    stripe !== undefined &&
    region.x === stripe.x &&
    region.width === stripe.width &&
    Number.isInteger(region.y) &&
    Number.isInteger(region.height) &&
    region.y >= 0 &&
    region.height > 0 &&
    region.y + region.height <= height;
  if (!ok) {
    throw new TilerOptionError(
      `Expected a region of this slide's output (${stripes.length} stripe(s), ${height} rows) but received ` +
        `${JSON.stringify(region)}.`,
      'Take regions from splitRegions() of the same slide, model and options.',
    );
  }
}
