/**
 * The merger of the inferer (MONAI `inferers/merger.py`): blend weights, the weighted sums of a tile's kept pixels,
 * and the division that finishes a row. {@link ImageMerger} holds a whole image in memory; the tiler's `BandMerger`
 * builds on the same functions to hold only a few tile rows of a slide. Tiles are summed in plan order in float32,
 * so both give the same bits for the same tiles.
 */
import { InvalidOptionError } from '../errors.js';
import type { TileLocation, TilePlan } from './splitter.js';

/** Weights of a tile's pixels when tiles are blended: Gaussian (falling towards the edges) or constant. */
export type Blend = 'gaussian' | 'constant';

/** The running sums of one output row: `sum` `[width, numClasses]` and `weight` `[width]`. */
export interface RowAccumulator {
  sum: Float32Array;
  weight: Float32Array;
}

function gaussianLine(size: number): Float32Array {
  const sigma = size / 8;
  const centre = (size - 1) / 2;
  const line = new Float32Array(size);
  for (let i = 0; i < size; i++) line[i] = Math.max(Math.exp(-((i - centre) ** 2) / (2 * sigma * sigma)), 1e-3);
  return line;
}

/**
 * Blend weights of a `[height, width]` tile, row-major: the product of two Gaussian lines (sigma a eighth of the side,
 * at least 1e-3 at the edges) or all ones.
 * @example
 * const weights = tileWeights(512, 512, 'gaussian');
 */
export function tileWeights(width: number, height: number, blend: Blend = 'gaussian'): Float32Array {
  if (blend !== 'gaussian' && blend !== 'constant') {
    throw new InvalidOptionError(
      `Expected blend "gaussian" or "constant" but received "${String(blend)}".`,
      undefined,
      'blend',
    );
  }
  if (blend === 'constant') return new Float32Array(width * height).fill(1);
  const gy = gaussianLine(height);
  const gx = gaussianLine(width);
  const out = new Float32Array(width * height);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) out[y * width + x] = gy[y] * gx[x];
  return out;
}

/** 2-D Gaussian-like window weights of a square tile that fall to a small positive value at the edges. */
export function blendWeights(size: number): Float32Array {
  return tileWeights(size, size, 'gaussian');
}

/**
 * Adds a tile's probabilities, `[tileHeight, tileWidth, numClasses]`, times `weights` to the accumulators of the image
 * rows it keeps: only the pixels inside its trim, inside the plan's `width` and `height`, and (for a tile that starts
 * left of its plan, as in the tiler's stripes) right of column 0. Rows above `startRow` are left alone.
 */
export function accumulateTile(
  plan: TilePlan,
  tile: TileLocation,
  probabilities: Float32Array,
  weights: Float32Array,
  numClasses: number,
  row: (y: number) => RowAccumulator,
  startRow = 0,
): void {
  const { tileWidth: tw, tileHeight: th, width, height } = plan;
  const k = numClasses;
  const y1 = Math.min(th - tile.trim.bottom, height - tile.y);
  const x0 = Math.max(tile.trim.left, -tile.x);
  const x1 = Math.min(tw - tile.trim.right, width - tile.x);
  for (let ty = Math.max(tile.trim.top, startRow - tile.y); ty < y1; ty++) {
    const { sum, weight } = row(tile.y + ty);
    const wRow = ty * tw;
    const offset = tile.x - wRow; // image column of weight index i: i + offset
    if (k === 2) {
      for (let i = wRow + x0, end = wRow + x1; i < end; i++) {
        const w = weights[i];
        const p = i + offset;
        weight[p] += w;
        sum[2 * p] += w * probabilities[2 * i];
        sum[2 * p + 1] += w * probabilities[2 * i + 1];
      }
    } else {
      for (let i = wRow + x0, end = wRow + x1; i < end; i++) {
        const w = weights[i];
        const p = i + offset;
        weight[p] += w;
        for (let q = 0, src = i * k, dst = p * k; q < k; q++) sum[dst + q] += w * probabilities[src + q];
      }
    }
  }
}

/**
 * Finishes a row: divides its sums by its weights into `probabilities` (`[width, numClasses]` from pixel `offset`;
 * `null` to skip them) and writes the class index of the highest one (the first on ties) to `labels` from `offset`.
 * Pixels of weight 0 (no tile kept them) are left as they are.
 */
export function finishRow(
  row: RowAccumulator,
  width: number,
  numClasses: number,
  probabilities: Float32Array | null,
  labels: Uint8Array,
  offset: number,
): void {
  const { sum, weight } = row;
  const k = numClasses;
  if (k === 2) {
    // The common two-class case, unrolled (the same values and ties as the loop below).
    for (let x = 0, i = offset; x < width; x++, i++) {
      const w = weight[x];
      if (w === 0) continue;
      const a = sum[2 * x] / w;
      const b = sum[2 * x + 1] / w;
      if (probabilities) {
        probabilities[2 * i] = a;
        probabilities[2 * i + 1] = b;
      }
      labels[i] = b > a ? 1 : 0;
    }
    return;
  }
  for (let x = 0; x < width; x++) {
    const w = weight[x];
    if (w === 0) continue;
    const base = (offset + x) * k;
    let best = 0;
    let bestValue = -Infinity;
    for (let q = 0; q < k; q++) {
      const v = sum[x * k + q] / w;
      if (probabilities) probabilities[base + q] = v;
      if (v > bestValue) {
        bestValue = v;
        best = q;
      }
    }
    labels[offset + x] = best;
  }
}

/** Options of {@link ImageMerger}. */
export interface ImageMergerOptions {
  plan: TilePlan;
  numClasses: number;
  /** Default `gaussian`. */
  blend?: Blend;
}

/**
 * Aggregates the probability tiles of a plan into a whole image held in memory (`[height, width, numClasses]` sums
 * and `[height, width]` weights), in plan order whatever order they arrive in, and `finalize`s them into blended
 * probabilities and labels. The in-memory sibling of the tiler's `BandMerger`, with the same bits.
 * @example
 * const merger = new ImageMerger({ plan, numClasses: 2 });
 * for (const tile of plan.tiles) merger.aggregate(tile, await predict(tile));
 * const { probabilities, labels } = merger.finalize();
 */
export class ImageMerger {
  private readonly plan: TilePlan;
  private readonly k: number;
  private readonly weights: Float32Array;
  private readonly rows: RowAccumulator[];
  private readonly waiting = new Map<number, Float32Array>();
  private next = 0;

  constructor(options: ImageMergerOptions) {
    const { plan, numClasses } = options;
    this.plan = plan;
    this.k = numClasses;
    this.weights = tileWeights(plan.tileWidth, plan.tileHeight, options.blend ?? 'gaussian');
    const sum = new Float32Array(plan.width * plan.height * numClasses);
    const weight = new Float32Array(plan.width * plan.height);
    this.rows = Array.from({ length: plan.height }, (_, y) => ({
      sum: sum.subarray(y * plan.width * numClasses, (y + 1) * plan.width * numClasses),
      weight: weight.subarray(y * plan.width, (y + 1) * plan.width),
    }));
  }

  /** Adds a tile's probabilities, `[tileHeight, tileWidth, numClasses]`, once the tiles before it are added. */
  aggregate(tile: TileLocation, probabilities: Float32Array): void {
    if (tile.index < this.next || tile.index >= this.plan.tiles.length || this.waiting.has(tile.index)) {
      throw new Error(`ImageMerger: tile ${tile.index} was received twice or is not a tile of this plan`);
    }
    this.waiting.set(tile.index, probabilities);
    while (this.waiting.has(this.next)) {
      const values = this.waiting.get(this.next)!;
      this.waiting.delete(this.next);
      accumulateTile(this.plan, this.plan.tiles[this.next++], values, this.weights, this.k, (y) => this.rows[y]);
    }
  }

  /**
   * The blended probabilities `[height, width, numClasses]` and class indices `[height, width]`.
   * @throws Error when a tile of the plan has not been aggregated.
   */
  finalize(): { probabilities: Float32Array; labels: Uint8Array } {
    if (this.next < this.plan.tiles.length) {
      throw new Error(`ImageMerger: ${this.plan.tiles.length - this.next} tile(s) of the plan were not aggregated`);
    }
    const { width, height } = this.plan;
    const probabilities = new Float32Array(width * height * this.k);
    const labels = new Uint8Array(width * height);
    for (let y = 0; y < height; y++) finishRow(this.rows[y], width, this.k, probabilities, labels, y * width);
    return { probabilities, labels };
  }
}
