/**
 * The merger: blends probability tiles into the output band by band, so only the rows still being written by
 * unfinished tile rows are held in memory. Tiles are added in plan order whatever order they arrive in, so the
 * blended values are the same bits on every run (which resuming an interrupted run relies on). The weights, the
 * weighted sums and the division are core's (`tileWeights`, `accumulateTile`, `finishRow`), shared with the in-memory
 * `ImageMerger` of image prediction, so a slide and an image of the same pixels give the same bits.
 */
import { accumulateTile, finishRow, tileWeights, type RowAccumulator } from '@tessera/core';
import type { TileLocation, TilePlan } from './splitter.js';

export type { RowAccumulator } from '@tessera/core';

/** Finished rows of the output. */
export interface Band {
  /** First image row of the band. */
  y: number;
  /** First image column of the band: 0, or where its stripe starts when the slide is cut into stripes. */
  x: number;
  /** Index of the band's stripe (0 when the slide is not cut into stripes). */
  stripe: number;
  height: number;
  width: number;
  /**
   * Blended class probabilities, `[height, width, numClasses]`; all zero where no tile was predicted. Empty when the
   * merger was made with `probabilities: false`.
   */
  probabilities: Float32Array;
  /** Class index (0..numClasses-1) of the highest probability, `[height, width]`; `fallbackClass` where none. */
  labels: Uint8Array;
}

/** Options of {@link BandMerger}. */
export interface MergerOptions {
  plan: TilePlan;
  numClasses: number;
  /** `gaussian` (core's `tileWeights`, the default) or `constant` weights inside each tile's kept area. */
  blend?: 'gaussian' | 'constant';
  /** Class index given to pixels no tile covered (skipped background tiles). Default 0. */
  fallbackClass?: number;
  /**
   * Image rows above this one are finished already (an interrupted run): they are neither accumulated nor emitted,
   * and the first band starts here. Default 0.
   */
  startRow?: number;
  /** Image column of the plan's column 0 and the stripe index, copied to every band. Default 0 and 0. */
  x?: number;
  stripe?: number;
  /** Whether bands carry the blended probabilities (else only class indices). Default true. */
  probabilities?: boolean;
  /** Most rows in one band (finished rows are handed out in bands of at most this many). Default 64. */
  maxBandRows?: number;
  /**
   * Where the merger takes its row accumulators from and gives them back to: pass one pool to the mergers of every
   * stripe of a slide, so that each stripe reuses the rows of the one before instead of allocating its own. Default: a
   * pool of its own.
   */
  pool?: RowPool;
  /** Receives finished bands, top to bottom, each exactly once. */
  onBand: (band: Band) => void;
}

/**
 * Row accumulators for mergers of up to `width` pixels and `numClasses` classes, kept for reuse when a merger is done
 * with them. Rows are allocated once and handed out zeroed, as views of the width asked for: the mergers of a slide's
 * stripes, one after the other, then hold the rows of the widest stripe between them, however many stripes there
 * are. Fresh rows for each stripe (about 90 MB for a stripe of 16384 px and 512 px tiles), allocated while the last
 * stripe's rows waited for the garbage collector, grew the process with every stripe, and so with the slide's width.
 * @example
 * const pool = new RowPool(16384, 2);
 * const merger = new BandMerger({ plan: stripe.plan, numClasses: 2, pool, onBand });
 */
export class RowPool {
  private readonly free: Float32Array[] = [];
  /** Rows allocated so far (for memory checks): the most rows its mergers held at once, not their sum. */
  allocated = 0;

  constructor(
    readonly width: number,
    readonly numClasses: number,
  ) {
    if (!(Number.isInteger(width) && width > 0 && Number.isInteger(numClasses) && numClasses > 0)) {
      throw new RangeError(
        `RowPool: expected a positive integer width and numClasses but received ${width} and ${numClasses}`,
      );
    }
  }

  /** A zeroed accumulator for a row of `width` pixels (at most the pool's width). */
  take(width: number): RowAccumulator {
    if (!(Number.isInteger(width) && width > 0 && width <= this.width)) {
      throw new RangeError(`RowPool: expected a row width between 1 and ${this.width} but received ${width}`);
    }
    const k = this.numClasses;
    let row = this.free.pop();
    if (row) row.fill(0, 0, width * k).fill(0, this.width * k, this.width * k + width);
    else {
      row = new Float32Array(this.width * (k + 1));
      this.allocated++;
    }
    return { sum: row.subarray(0, width * k), weight: row.subarray(this.width * k, this.width * k + width) };
  }

  /** Takes back an accumulator handed out by {@link RowPool.take}. */
  give(row: RowAccumulator): void {
    this.free.push(new Float32Array(row.sum.buffer, row.sum.byteOffset, this.width * (this.numClasses + 1)));
  }
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
  /** Accumulators of emitted rows go back here for reuse (allocating fresh ones row by row is slow). */
  private readonly pool: RowPool;
  private readonly maxBandRows: number;
  private readonly x: number;
  private readonly stripe: number;
  private readonly keepProbabilities: boolean;
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
    this.maxBandRows = options.maxBandRows ?? 64;
    this.x = options.x ?? 0;
    this.stripe = options.stripe ?? 0;
    this.keepProbabilities = options.probabilities ?? true;
    this.pool = options.pool ?? new RowPool(plan.width, numClasses);
    if (this.pool.width < plan.width || this.pool.numClasses !== numClasses) {
      throw new RangeError(
        `BandMerger: expected a pool of rows at least ${plan.width} px wide with ${numClasses} classes but received ` +
          `one of ${this.pool.width} px with ${this.pool.numClasses}`,
      );
    }
    if (!(Number.isInteger(this.maxBandRows) && this.maxBandRows > 0)) {
      throw new RangeError(
        `BandMerger: expected maxBandRows to be a positive integer but received ${this.maxBandRows}`,
      );
    }
    this.weights = tileWeights(plan.tileWidth, plan.tileHeight, options.blend ?? 'gaussian');
    this.doneInRow = new Array<number>(plan.rows).fill(0);
    // The first image row a tile row or any later one may still write.
    this.keptFrom = [...plan.keptRowStarts];
    for (let i = this.keptFrom.length - 2; i >= 0; i--)
      this.keptFrom[i] = Math.min(this.keptFrom[i], this.keptFrom[i + 1]);
  }

  private row(y: number): RowAccumulator {
    let acc = this.rows.get(y);
    if (!acc) {
      acc = this.pool.take(this.plan.width);
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
    accumulateTile(this.plan, tile, probabilities, this.weights, this.k, (y) => this.row(y), this.startRow);
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
    while (this.emitted < limit) {
      const height = Math.min(limit - this.emitted, this.maxBandRows);
      const band = this.blend(this.emitted, height);
      this.emitted += height;
      this.onBand(band);
    }
  }

  /** Divides the sums of rows `y0..y0+height-1` by their weights, takes the arg-max and frees the rows. */
  private blend(y0: number, height: number): Band {
    const { width } = this.plan;
    const probabilities = new Float32Array(this.keepProbabilities ? height * width * this.k : 0);
    const labels = new Uint8Array(height * width).fill(this.fallback);
    for (let r = 0; r < height; r++) {
      const acc = this.rows.get(y0 + r);
      if (!acc) continue;
      finishRow(acc, width, this.k, this.keepProbabilities ? probabilities : null, labels, r * width);
      this.rows.delete(y0 + r);
      this.pool.give(acc);
    }
    return { y: y0, x: this.x, stripe: this.stripe, height, width, probabilities, labels };
  }

  /** The image row after the last emitted one. */
  get emittedRows(): number {
    return this.emitted;
  }

  /** Whether every row has been emitted. */
  get complete(): boolean {
    return this.emitted >= this.plan.height;
  }
}
