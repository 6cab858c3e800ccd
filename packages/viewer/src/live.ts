/**
 * On-demand prediction of the part of a slide in view (`tessera view --model` without predictions): the slide is cut
 * into blocks at the model's µm/px; each block is predicted once, with the receptive-field margin the tiler uses on
 * every side (mirrored at the slide's edges), and kept, so panning back costs nothing.
 */
import { normalizeImage, type ModelManifest, type Predictor } from '@tessera/core';
import { chooseLevel, defaultOverlap } from '@tessera/tiler';
import type { DeepZoom, TileRect } from './deep-zoom.js';
import { ViewerOptionError } from './errors.js';
import type { PixelSource } from './source.js';

/** A model to predict with: a predictor (ONNX or tfjs) and its manifest. */
export interface LiveModel {
  predictor: Predictor;
  manifest: ModelManifest;
}

/** Options of {@link LivePredictions}. */
export interface LiveOptions {
  /** Side of a block in pixels at the model's µm/px; a multiple of the architecture's input multiple. Default 512. */
  blockSize?: number;
  /** Most blocks one view may ask for; a larger view is refused ("zoom in"). Default 24. */
  maxBlocks?: number;
  /** Blocks kept in memory; the oldest go first. Default 256. */
  keepBlocks?: number;
}

/** The answer to {@link LivePredictions.request}. */
export interface LiveRequest {
  /** `queued`: blocks are being predicted; `done`: all were already; `too-large`: the view has over `limit` blocks. */
  status: 'queued' | 'done' | 'too-large';
  /** Blocks the region covers, and those still to predict. */
  blocks: number;
  missing: number;
  limit: number;
}

interface Block {
  /** Class values, `[height, width]`, and probabilities `[height, width, classes]` as bytes (p * 255). */
  values: Uint8Array;
  probabilities: Uint8Array;
  width: number;
  height: number;
}

/** Mirror index at the left and top edges (the right and bottom ones are mirrored by the reader). */
const reflectLow = (i: number) => (i < 0 ? -i : i);

/** Blocks of a slide predicted on demand, and the Deep Zoom tiles and pixels they make. */
export class LivePredictions {
  /** Size of the label map at the model's µm/px, and the slide level and scale it is read from. */
  readonly width: number;
  readonly height: number;
  readonly level: number;
  readonly scale: number;
  readonly blockSize: number;
  readonly margin: number;
  readonly maxBlocks: number;
  /** Notes for the user (e.g. the model's µm/px finer than the slide's). */
  readonly warnings: string[] = [];
  /** Increases each time a block is predicted: tiles made before show less. */
  generation = 0;
  /** Pixels per class index over the predicted blocks. */
  readonly counts: number[];
  lastError: string | null = null;
  /** Milliseconds of the last block predicted. */
  lastMs = 0;
  private readonly keep: number;
  private readonly blocks = new Map<number, Block>();
  private queue: number[] = [];
  private running: Promise<void> | null = null;
  private readonly columns: number;
  private readonly rows: number;

  constructor(
    readonly source: PixelSource,
    readonly model: LiveModel,
    options: LiveOptions = {},
  ) {
    const { manifest } = model;
    const slide = source.slide;
    let level = 0;
    let scale = 1;
    if (manifest.mpp && slide.mpp) {
      try {
        ({ level, scale } = chooseLevel(slide, manifest.mpp));
      } catch (error) {
        this.warnings.push(`${(error as Error).message} Predicting at the slide's full resolution.`);
      }
    }
    this.level = level;
    this.scale = scale;
    const l = slide.levels[level];
    this.width = Math.round(l.width * scale);
    this.height = Math.round(l.height * scale);
    const multiple = manifest.architecture.inputMultiple;
    this.blockSize = options.blockSize ?? 512;
    if (!(Number.isInteger(this.blockSize) && this.blockSize > 0 && this.blockSize % multiple === 0)) {
      throw new ViewerOptionError(
        `Expected the live prediction block size to be a positive multiple of ${multiple} (the architecture's input ` +
          `multiple) but received ${this.blockSize}.`,
        `Use ${Math.max(1, Math.round(this.blockSize / multiple)) * multiple}.`,
      );
    }
    this.margin = defaultOverlap(manifest.architecture.receptiveField, multiple) / 2;
    this.maxBlocks = options.maxBlocks ?? 24;
    this.keep = Math.max(this.maxBlocks, options.keepBlocks ?? 256);
    this.columns = Math.ceil(this.width / this.blockSize);
    this.rows = Math.ceil(this.height / this.blockSize);
    this.counts = new Array<number>(manifest.classes.length).fill(0);
  }

  /** Level-0 slide pixels per pixel of the live label map, along x and y. */
  private get ratio(): { x: number; y: number } {
    return { x: this.source.slide.width / this.width, y: this.source.slide.height / this.height };
  }

  /** Blocks predicted so far, and waiting. */
  get predicted(): number {
    return this.blocks.size;
  }
  get pending(): number {
    return this.queue.length + (this.running ? 1 : 0);
  }

  /**
   * Asks for the blocks under a region of level-0 pixels (the view), nearest its centre first; blocks queued for an
   * earlier view that this one does not need are dropped.
   */
  request(region: { x: number; y: number; width: number; height: number }): LiveRequest {
    const { x: rx, y: ry } = this.ratio;
    const B = this.blockSize;
    const c0 = Math.max(0, Math.floor(region.x / rx / B));
    const r0 = Math.max(0, Math.floor(region.y / ry / B));
    const c1 = Math.min(this.columns - 1, Math.floor((region.x + region.width) / rx / B));
    const r1 = Math.min(this.rows - 1, Math.floor((region.y + region.height) / ry / B));
    const count = c1 >= c0 && r1 >= r0 ? (c1 - c0 + 1) * (r1 - r0 + 1) : 0;
    if (count > this.maxBlocks) return { status: 'too-large', blocks: count, missing: count, limit: this.maxBlocks };
    const cx = (c0 + c1) / 2;
    const cy = (r0 + r1) / 2;
    const wanted: number[] = [];
    for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) wanted.push(r * this.columns + c);
    const missing = wanted
      .filter((k) => !this.blocks.has(k))
      .sort((a, b) => {
        const d = (k: number) => ((k % this.columns) - cx) ** 2 + (Math.floor(k / this.columns) - cy) ** 2;
        return d(a) - d(b);
      });
    this.queue = [...missing];
    if (missing.length) this.running ??= this.drain();
    return {
      status: missing.length ? 'queued' : 'done',
      blocks: count,
      missing: missing.length,
      limit: this.maxBlocks,
    };
  }

  /** Resolves when no block is waiting. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  private async drain(): Promise<void> {
    try {
      for (let key = this.queue.shift(); key !== undefined; key = this.queue.shift()) {
        if (this.blocks.has(key)) continue;
        const started = performance.now();
        try {
          await this.predictBlock(key);
          this.lastError = null;
        } catch (error) {
          this.lastError = (error as Error).message;
          this.queue = [];
        }
        this.lastMs = performance.now() - started;
      }
    } finally {
      this.running = null;
    }
  }

  private async predictBlock(key: number): Promise<void> {
    const { manifest, predictor } = this.model;
    const B = this.blockSize;
    const m = this.margin;
    const n = B + 2 * m;
    const bx = (key % this.columns) * B;
    const by = Math.floor(key / this.columns) * B;
    const x0 = bx - m;
    const y0 = by - m;
    const rx = Math.max(0, x0);
    const ry = Math.max(0, y0);
    const read = await this.source.readMirrored(
      { x: rx, y: ry, width: x0 + n - rx, height: y0 + n - ry },
      this.level,
      this.scale,
    );
    const c = read.channels;
    const input = new Uint8Array(n * n * c);
    for (let y = 0; y < n; y++) {
      const sy = reflectLow(y0 + y) - ry;
      for (let x = 0; x < n; x++) {
        const src = (sy * read.width + reflectLow(x0 + x) - rx) * c;
        const dst = (y * n + x) * c;
        for (let k = 0; k < c; k++) input[dst + k] = read.data[src + k];
      }
    }
    const normalized = normalizeImage({ data: input, width: n, height: n, channels: c }, manifest.normalization);
    const probs = await predictor.run(normalized, [1, n, n, c]);
    const k = manifest.classes.length;
    const width = Math.min(B, this.width - bx);
    const height = Math.min(B, this.height - by);
    const values = new Uint8Array(width * height);
    const probabilities = new Uint8Array(width * height * k);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const src = ((y + m) * n + x + m) * k;
        let best = 0;
        for (let q = 1; q < k; q++) if (probs[src + q] > probs[src + best]) best = q;
        const i = y * width + x;
        values[i] = manifest.classes[best].value;
        this.counts[best]++;
        for (let q = 0; q < k; q++) probabilities[i * k + q] = Math.round(probs[src + q] * 255);
      }
    }
    this.blocks.set(key, { values, probabilities, width, height });
    while (this.blocks.size > this.keep) {
      const [oldest, block] = this.blocks.entries().next().value!;
      this.blocks.delete(oldest);
      for (let i = 0; i < block.values.length; i++) {
        const q = manifest.classes.findIndex((cl) => cl.value === block.values[i]);
        if (q >= 0) this.counts[q]--;
      }
    }
    this.generation++;
  }

  /**
   * The class values of a Deep Zoom tile from the blocks predicted so far, and which of its pixels have one (0: not
   * predicted yet); `null` when none has.
   */
  tile(dz: DeepZoom, rect: TileRect): { values: Uint8Array; known: Uint8Array } | null {
    const gx = (rect.downsample * this.width) / dz.width;
    const gy = (rect.downsample * this.height) / dz.height;
    const B = this.blockSize;
    const values = new Uint8Array(rect.width * rect.height);
    const known = new Uint8Array(rect.width * rect.height);
    let any = false;
    const xs = Int32Array.from({ length: rect.width }, (_, i) =>
      Math.min(this.width - 1, Math.floor((rect.x + i + 0.5) * gx)),
    );
    for (let r = 0; r < rect.height; r++) {
      const y = Math.min(this.height - 1, Math.floor((rect.y + r + 0.5) * gy));
      const row = Math.floor(y / B) * this.columns;
      for (let q = 0; q < rect.width; q++) {
        const x = xs[q];
        const block = this.blocks.get(row + Math.floor(x / B));
        if (!block) continue;
        values[r * rect.width + q] = block.values[(y % B) * block.width + (x % B)];
        known[r * rect.width + q] = 1;
        any = true;
      }
    }
    return any ? { values, known } : null;
  }

  /** The prediction at a level-0 pixel: class value and probabilities by class index, or `null` if not predicted. */
  pixel(x: number, y: number): { value: number; probabilities: number[] } | null {
    const { x: rx, y: ry } = this.ratio;
    const lx = Math.min(this.width - 1, Math.floor(x / rx));
    const ly = Math.min(this.height - 1, Math.floor(y / ry));
    const B = this.blockSize;
    const block = this.blocks.get(Math.floor(ly / B) * this.columns + Math.floor(lx / B));
    if (!block) return null;
    const i = (ly % B) * block.width + (lx % B);
    const k = this.counts.length;
    return {
      value: block.values[i],
      probabilities: Array.from(block.probabilities.subarray(i * k, i * k + k), (p) => p / 255),
    };
  }
}
