/**
 * The merger: blends probability tiles into the output band by band, so only the rows still being written by
 * unfinished tile rows are held in memory. Tiles are added in plan order whatever order they arrive in, so the
 * blended values are the same bits on every run (which resuming an interrupted run relies on).
 */
import { blendWeights } from '@tessera/core';
import type { TileLocation, TilePlan } from './splitter.js';

/** Finished rows of the output. */
export interface Band {
  /** First image row of the band. */
  y: number;
  height: number;
  width: number;
  /** Blended class probabilities, `[height, width, numClasses]`; all zero where no tile was predicted. */
  probabilities: Float32Array;
  /** Class index (0..numClasses-1) of the highest probability, `[height, width]`; `fallbackClass` where none. */
  labels: Uint8Array;
}

/** Options of {@link BandMerger}. */
export interface MergerOptions {
  plan: TilePlan;
  numClasses: number;
  /** `gaussian` (core's `blendWeights`, the default) or `constant` weights inside each tile's kept area. */
  blend?: 'gaussian' | 'constant';
  /** Class index given to pixels no tile covered (skipped background tiles). Default 0. */
  fallbackClass?: number;
  /**
   * Image rows above this one are finished already (an interrupted run): they are neither accumulated nor emitted,
   * and the first band starts here. Default 0.
   */
  startRow?: number;
  /** Receives finished bands, top to bottom, each exactly once. */
  onBand: (band: Band) => void;
}

interface RowAccumulator {
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
 * Aggregates probability tiles in any order and emits the rows of the output as soon as every tile that covers them
 * has arrived. Tiles are blended in plan order (a tile that arrives early waits for the ones before it), so the
 * floating-point sums, and the output, do not depend on the order in which workers finish. Memory: the accumulators
 * of the rows between the first unfinished tile row and the last tile added (about two tile rows of
 * `width * numClasses` floats), and the tiles waiting for earlier ones (at most those in flight).
 * @example
 * const merger = new BandMerger({ plan, numClasses: 2, onBand: (band) => writer.write(band) });
 * merger.aggregate(plan.tiles[0], probabilities); // ... every tile, or merger.skip(tile)
 * merger.finalize();
 */
export class BandMerger {
  private readonly plan: TilePlan;
  private readonly k: number;
  private readonly weights: Float32Array;
  private readonly rows = new Map<number, RowAccumulator>();
  private readonly doneInRow: number[];
  private readonly keptFrom: number[];
  private readonly fallback: number;
  private readonly onBand: (band: Band) => void;
  private readonly startRow: number;
  /** Tiles received ahead of their turn (`null`: skipped), by index, and the index of the next tile to add. */
  private readonly waiting = new Map<number, Float32Array | null>();
  private next = 0;
  private finishedRows = 0;
  private emitted: number;
  /** Largest number of image rows held at once (for memory checks). */
  peakRows = 0;

  constructor(options: MergerOptions) {
    const { plan, numClasses } = options;
    this.plan = plan;
    this.k = numClasses;
    this.fallback = options.fallbackClass ?? 0;
    this.onBand = options.onBand;
    this.startRow = options.startRow ?? 0;
    if (!(Number.isInteger(this.startRow) && this.startRow >= 0 && this.startRow <= plan.height)) {
      throw new RangeError(`BandMerger: expected startRow between 0 and ${plan.height} but received ${this.startRow}`);
    }
    this.emitted = this.startRow;
    const { tileWidth: tw, tileHeight: th } = plan;
    if (options.blend === 'constant') this.weights = new Float32Array(tw * th).fill(1);
    else if (tw === th) this.weights = blendWeights(tw);
    else {
      const gy = gaussianLine(th);
      const gx = gaussianLine(tw);
      this.weights = new Float32Array(tw * th);
      for (let y = 0; y < th; y++) for (let x = 0; x < tw; x++) this.weights[y * tw + x] = gy[y] * gx[x];
    }
    this.doneInRow = new Array<number>(plan.rows).fill(0);
    // The first image row a tile row or any later one may still write.
    this.keptFrom = [...plan.keptRowStarts];
    for (let i = this.keptFrom.length - 2; i >= 0; i--)
      this.keptFrom[i] = Math.min(this.keptFrom[i], this.keptFrom[i + 1]);
  }

  private row(y: number): RowAccumulator {
    let acc = this.rows.get(y);
    if (!acc) {
      acc = { sum: new Float32Array(this.plan.width * this.k), weight: new Float32Array(this.plan.width) };
      this.rows.set(y, acc);
      this.peakRows = Math.max(this.peakRows, this.rows.size);
    }
    return acc;
  }

  /**
   * Adds a tile's probabilities, `[tileHeight, tileWidth, numClasses]`, weighted inside its kept area (once the
   * tiles before it in the plan are added or skipped).
   */
  aggregate(tile: TileLocation, probabilities: Float32Array): void {
    this.receive(tile, probabilities);
  }

  /** Records a tile that is not predicted (background): its pixels get the fallback class unless others cover them. */
  skip(tile: TileLocation): void {
    this.receive(tile, null);
  }

  private receive(tile: TileLocation, probabilities: Float32Array | null): void {
    if (tile.index < this.next || tile.index >= this.plan.tiles.length || this.waiting.has(tile.index)) {
      throw new Error(`BandMerger: tile ${tile.index} was received twice or is not a tile of this plan`);
    }
    this.waiting.set(tile.index, probabilities);
    while (this.waiting.has(this.next)) {
      const next = this.plan.tiles[this.next];
      const values = this.waiting.get(this.next)!;
      this.waiting.delete(this.next);
      this.next++;
      if (values) this.add(next, values);
      this.done(next);
    }
  }

  private add(tile: TileLocation, probabilities: Float32Array): void {
    const { tileWidth: tw, tileHeight: th, width, height } = this.plan;
    const k = this.k;
    const y1 = Math.min(th - tile.trim.bottom, height - tile.y);
    const x1 = Math.min(tw - tile.trim.right, width - tile.x);
    for (let ty = Math.max(tile.trim.top, this.startRow - tile.y); ty < y1; ty++) {
      const acc = this.row(tile.y + ty);
      for (let tx = tile.trim.left; tx < x1; tx++) {
        const w = this.weights[ty * tw + tx];
        const p = tile.x + tx;
        acc.weight[p] += w;
        const src = (ty * tw + tx) * k;
        const dst = p * k;
        for (let q = 0; q < k; q++) acc.sum[dst + q] += w * probabilities[src + q];
      }
    }
  }

  private done(tile: TileLocation): void {
    this.doneInRow[tile.row]++;
    while (this.finishedRows < this.plan.rows && this.doneInRow[this.finishedRows] === this.plan.columns) {
      this.finishedRows++;
    }
    const limit =
      this.finishedRows >= this.plan.rows
        ? this.plan.height
        : Math.min(this.plan.height, this.keptFrom[this.finishedRows]);
    if (limit > this.emitted) this.emit(limit);
  }

  private emit(limit: number): void {
    const { width } = this.plan;
    const k = this.k;
    const height = limit - this.emitted;
    const probabilities = new Float32Array(height * width * k);
    const labels = new Uint8Array(height * width).fill(this.fallback);
    for (let r = 0; r < height; r++) {
      const y = this.emitted + r;
      const acc = this.rows.get(y);
      if (!acc) continue;
      for (let x = 0; x < width; x++) {
        const w = acc.weight[x];
        if (w === 0) continue;
        const base = (r * width + x) * k;
        let best = 0;
        let bestValue = -Infinity;
        for (let q = 0; q < k; q++) {
          const v = acc.sum[x * k + q] / w;
          probabilities[base + q] = v;
          if (v > bestValue) {
            bestValue = v;
            best = q;
          }
        }
        labels[r * width + x] = best;
      }
      this.rows.delete(y);
    }
    const band: Band = { y: this.emitted, height, width, probabilities, labels };
    this.emitted = limit;
    this.onBand(band);
  }

  /** Whether every row has been emitted. */
  get complete(): boolean {
    return this.emitted >= this.plan.height;
  }
}
