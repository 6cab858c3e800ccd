import type * as tfl from '@tensorflow/tfjs-layers';
import { ImageMerger, type Blend } from './merger.js';
import { isPredictor, tfjsPredictor, type Predictor } from './predictor.js';
import { resolveTiling, splitImage, type TilePlan } from './splitter.js';

/** A normalised image held in memory: `[height, width, channels]` float32, interleaved. */
export interface FloatImage {
  data: Float32Array;
  width: number;
  height: number;
  channels: number;
}

/** Options of {@link predictProbabilities}. */
export interface PredictOptions {
  /** Height and width given to the network must be multiples of this (the architecture's input multiple). */
  multiple: number;
  /**
   * The network's receptive field in pixels (the manifest's `architecture.receptiveField`): the default overlap and
   * the context trimmed at shared tile edges derive from it, as for slides.
   */
  receptiveField?: number;
  /**
   * Side of the square tiles the image is cut into, a multiple of `multiple` (as `--tile` for slides). Default: the
   * whole image in one pass when it has at most `maxWholePixels` pixels, else 512 rounded up to the multiple.
   */
  tile?: number;
  /**
   * Overlap of neighbouring tiles in pixels, a multiple of `multiple` (as `--overlap` for slides). Default
   * `2 * roundUp(ceil(receptiveField / 2), multiple)`; without `receptiveField`, a quarter of the tile rounded down
   * to the multiple.
   */
  overlap?: number;
  /** Largest image (pixels) predicted in one pass when no tile is given. Default 4 Mpx. */
  maxWholePixels?: number;
  /** Tiles predicted together. Default 1. */
  batchSize?: number;
  /** Tile blending weights. Default `gaussian`. */
  blend?: Blend;
}

/** Index of the pixel that mirror padding puts at `i` along an axis of `n` pixels (the edge pixel is not repeated). */
export function reflectIndex(i: number, n: number): number {
  if (n === 1) return 0;
  const period = 2 * (n - 1);
  let m = i % period;
  if (m < 0) m += period;
  return m < n ? m : period - m;
}

/** Mirror-pads `image` to `height` x `width` (reflecting at the bottom and right edges). */
export function padReflect(image: FloatImage, height: number, width: number): FloatImage {
  const { data, width: w, height: h, channels: c } = image;
  if (height === h && width === w) return image;
  const out = new Float32Array(height * width * c);
  for (let y = 0; y < height; y++) {
    const sy = reflectIndex(y, h);
    for (let x = 0; x < width; x++) {
      const sx = reflectIndex(x, w);
      const src = (sy * w + sx) * c;
      const dst = (y * width + x) * c;
      for (let k = 0; k < c; k++) out[dst + k] = data[src + k];
    }
  }
  return { data: out, width, height, channels: c };
}

/**
 * The tile plan {@link predictProbabilities} uses for an image: one tile of the whole image (rounded up to the
 * multiple) when no tile is given and it has at most `maxWholePixels` pixels, else the slide tiling of
 * `@tessera/tiler` (receptive-field overlap, origins on the input multiple, shared edges trimmed).
 * @throws InvalidOptionError for a tile or overlap that is not a multiple of `multiple`, or an overlap >= tile.
 */
export function planImage(width: number, height: number, options: PredictOptions): TilePlan {
  const { multiple } = options;
  const roundUp = (n: number) => Math.ceil(n / multiple) * multiple;
  const maxWhole = options.maxWholePixels ?? 4 * 1024 * 1024;
  if (options.tile === undefined && roundUp(width) * roundUp(height) <= maxWhole) {
    return splitImage({ width, height, tile: Math.max(roundUp(width), roundUp(height)), overlap: 0, multiple });
  }
  const { tile, overlap, context } = resolveTiling(options);
  return splitImage({ width, height, tile, overlap, multiple, context });
}

/**
 * Per-pixel class probabilities of a normalised image, `[height, width, numClasses]` interleaved: the inferer's
 * splitter ({@link planImage}), the predictor, and an in-memory merger ({@link ImageMerger}). Tiles are mirror-padded
 * past the image as the slide reader does, predicted `batchSize` at a time in plan order, and blended; so an image
 * gives the same bits as a slide of the same pixels predicted by `@tessera/tiler` with the same tile and overlap. A
 * small image without a tile goes through the network in one pass (mirror-padded up to the input multiple).
 *
 * @throws InvalidOptionError for a tile or overlap that is not a multiple of `multiple`, or an overlap >= tile.
 * @example
 * ```ts
 * const probs = await predictProbabilities(model, image, { multiple: 16, receptiveField: 215 });
 * ```
 */
export async function predictProbabilities(
  network: tfl.LayersModel | Predictor,
  image: FloatImage,
  options: PredictOptions,
): Promise<Float32Array> {
  const predictor = isPredictor(network) ? network : tfjsPredictor(network);
  const { width, height, channels: c } = image;
  const plan = planImage(width, height, options);
  const { tileWidth: tw, tileHeight: th } = plan;
  // Every tile lies inside the image rounded up to the multiple: pad once.
  const roundUp = (n: number) => Math.ceil(n / options.multiple) * options.multiple;
  const padded = padReflect(image, roundUp(height), roundUp(width));
  const W = padded.width;
  // Nothing to blend in one tile: constant weights keep the network's values bit for bit.
  const blend = plan.tiles.length === 1 && options.tile === undefined ? 'constant' : (options.blend ?? 'gaussian');
  let merger: ImageMerger | undefined;
  const batchSize = options.batchSize ?? 1;
  const per = tw * th * c;
  for (let i = 0; i < plan.tiles.length; i += batchSize) {
    const group = plan.tiles.slice(i, i + batchSize);
    const batch = new Float32Array(group.length * per);
    group.forEach((t, j) => {
      for (let y = 0; y < th; y++) {
        const from = ((t.y + y) * W + t.x) * c;
        batch.set(padded.data.subarray(from, from + tw * c), j * per + y * tw * c);
      }
    });
    const values = await predictor.run(batch, [group.length, th, tw, c]);
    const k = values.length / (group.length * tw * th);
    merger ??= new ImageMerger({ plan, numClasses: k, blend });
    group.forEach((t, j) => merger!.aggregate(t, values.subarray(j * tw * th * k, (j + 1) * tw * th * k)));
  }
  return merger!.finalize().probabilities;
}
