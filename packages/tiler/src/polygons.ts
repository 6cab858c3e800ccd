/**
 * A streaming scanline polygonizer for label maps, in the spirit of GDAL's `GDALPolygonize`: rows go in top to
 * bottom, the polygonizer holds the previous row, a frontier of open boundary chains across the width and the
 * polygons still open, and hands each polygon out as soon as its region ends. Memory is bounded by the width plus
 * the open polygons, never by the height.
 *
 * Regions are 4-connected (pixels of one value sharing an edge), as GDAL's default: two pixels of a class that touch
 * only at a corner are two regions. Rings run along pixel edges with every collinear vertex removed.
 */
import { TilerOptionError } from './errors.js';

/** Options of {@link Polygonizer}. */
export interface PolygonizerOptions {
  /** Width of the label map in pixels. */
  width: number;
  /** Class values (0 to 255) whose regions become polygons. Default: every value but 0 (the background). */
  values?: readonly number[];
  /** Regions of fewer pixels (of the label map, before `scale`) are dropped. Default 0: every region is kept. */
  minArea?: number;
  /**
   * Size of a label-map pixel in output coordinates, e.g. level-0 pixels per pixel of a map predicted at a reduced
   * level or resampled scale. Default 1.
   */
  scale?: number | { x: number; y: number };
  /** Output coordinates of the label map's top-left corner. Default `{ x: 0, y: 0 }`. */
  offset?: { x: number; y: number };
}

/** One connected region of a class: a polygon with holes. */
export interface LabelPolygon {
  /** Class value of the region. */
  value: number;
  /** Pixels of the region in the label map (the polygon's area before `scale`). */
  pixels: number;
  /**
   * The exterior ring then the holes, each as flat `[x0, y0, x1, y1, ...]` output coordinates, closed (the last
   * point repeats the first). Exterior rings are counter-clockwise and holes clockwise in these coordinates (positive
   * and negative shoelace area), as RFC 7946 asks of GeoJSON; with the image's y axis pointing down they appear the
   * other way round on screen.
   */
  rings: Float64Array[];
}

/** Where an open boundary chain continues: one of its two ends. */
interface End {
  chain: Chain;
  tail: boolean;
}

/**
 * An open piece of a region's boundary: vertices from head to tail are `front` read backwards then `back`, each as
 * x, y pairs (a deque made of two stacks).
 */
interface Chain {
  front: number[];
  back: number[];
  head: End;
  tail: End;
}

/** A region being traced (union-find node). */
interface Region {
  parent: Region | null;
  value: number;
  pixels: number;
  /** Open chains of the region; it is complete when the last one closes. */
  open: number;
  /** Closed rings, flat x, y pairs without the closing repeat. */
  rings: number[][];
  /** Whether one of its rings may pass twice through a corner where two of its pixels touch diagonally. */
  pinched: boolean;
}

const OUTSIDE = -1;

function find(region: Region): Region {
  let root = region;
  while (root.parent) root = root.parent;
  while (region.parent && region.parent !== root) {
    const next: Region = region.parent;
    region.parent = root;
    region = next;
  }
  return root;
}

function chainLength(chain: Chain): number {
  return (chain.front.length + chain.back.length) / 2;
}

/** Appends the vertices of `chain` starting at its end `from` to `target`. */
function copyFrom(chain: Chain, from: End, target: number[]): void {
  const [first, second] = from.tail ? [chain.back, chain.front] : [chain.front, chain.back];
  for (let i = first.length - 2; i >= 0; i -= 2) target.push(first[i], first[i + 1]);
  for (let i = 0; i < second.length; i += 2) target.push(second[i], second[i + 1]);
}

/** Twice the signed (shoelace) area of a flat ring, horizontal edges only: the rings are rectilinear. */
function doubleArea(ring: number[]): number {
  let sum = 0;
  const n = ring.length;
  for (let i = 0; i < n; i += 2) {
    const j = (i + 2) % n;
    sum += (ring[j] - ring[i]) * (ring[j + 1] + ring[i + 1]);
  }
  return -sum;
}

function reverseRing(ring: number[]): void {
  for (let i = 0, j = ring.length - 2; i < j; i += 2, j -= 2) {
    [ring[i], ring[j]] = [ring[j], ring[i]];
    [ring[i + 1], ring[j + 1]] = [ring[j + 1], ring[i + 1]];
  }
}

/**
 * Splits a ring that passes more than once through a vertex into simple rings. A region pinched at a corner (two of
 * its pixels touch diagonally and are joined elsewhere) is traced as one ring through that corner twice; cut there,
 * it becomes its exterior and a hole touching it at that point, as OGC Simple Features want.
 */
function splitRing(ring: number[], width: number): number[][] {
  const seen = new Map<number, number>();
  const stack: number[] = [];
  const rings: number[][] = [];
  for (let i = 0; i < ring.length; i += 2) {
    const key = ring[i + 1] * (width + 1) + ring[i];
    const at = seen.get(key);
    if (at === undefined) {
      seen.set(key, stack.length);
      stack.push(ring[i], ring[i + 1]);
      continue;
    }
    for (let k = at + 2; k < stack.length; k += 2) seen.delete(stack[k + 1] * (width + 1) + stack[k]);
    rings.push(stack.slice(at));
    stack.length = at + 2;
  }
  rings.push(stack);
  return rings;
}

function option(message: string, hint?: string, name?: string): TilerOptionError {
  return new TilerOptionError(message, hint, name);
}

/**
 * Checks a minimum region area.
 * @throws {@link TilerOptionError} quoting the value when it is not a number of at least 0.
 */
export function checkMinArea(minArea: unknown, name = 'minArea'): number {
  if (minArea === undefined) return 0;
  if (typeof minArea !== 'number' || !Number.isFinite(minArea) || minArea < 0) {
    throw option(
      `Expected ${name} to be a number of pixels >= 0 but received ${String(minArea)}.`,
      'Give the smallest region to keep in pixels of the label map, e.g. 20; 0 keeps every region.',
      name,
    );
  }
  return minArea;
}

/**
 * Turns a label map, streamed row by row, into one polygon (exterior ring and holes) per 4-connected region of each
 * class, along pixel edges. Each polygon is handed to `onPolygon` as soon as its region ends: the polygonizer holds
 * two rows, a frontier across the width and the open regions' boundaries, whatever the height. Regions touching only
 * at a corner are separate polygons; a region pinched at a corner of its own gets a hole touching its exterior there.
 * A class's regions cover exactly its pixels: the polygons' areas add up to its pixel count, and a pixel centre lies
 * inside a polygon of its region and no other of its class.
 * @example
 * const polygonizer = new Polygonizer({ width, values: [1, 2], scale: 4 }, (p) => features.push(p));
 * for (let y = 0; y < height; y++) polygonizer.push(labels.subarray(y * width, (y + 1) * width));
 * polygonizer.finish();
 */
export class Polygonizer {
  private readonly width: number;
  private readonly emit = new Uint8Array(256);
  private readonly minArea: number;
  private readonly scale: { x: number; y: number };
  private readonly offset: { x: number; y: number };
  /** The previous and the current row, padded with `OUTSIDE` on both sides. */
  private above: Int16Array;
  private below: Int16Array;
  /** Regions of the pixels of the previous and the current row (only where the value is emitted). */
  private regionsAbove: (Region | null)[];
  private regionsBelow: (Region | null)[];
  /** Chain ends on the left and right side of the vertical pixel edges at x of the previous row and this one. */
  private leftAbove: (End | null)[];
  private rightAbove: (End | null)[];
  private leftBelow: (End | null)[];
  private rightBelow: (End | null)[];
  private y = 0;
  private done = false;
  private openRegions = 0;
  private readonly droppedByValue = new Map<number, number>();

  /**
   * @throws {@link TilerOptionError} for a width that is not a positive integer, values outside 0..255, a negative
   * `minArea` or a scale that is not positive.
   */
  constructor(
    options: PolygonizerOptions,
    private readonly onPolygon: (polygon: LabelPolygon) => void,
  ) {
    const { width } = options;
    if (!(Number.isInteger(width) && width > 0)) {
      throw option(`Polygonizer: expected width to be a positive integer but received ${String(width)}.`);
    }
    this.width = width;
    const values = options.values ?? Array.from({ length: 255 }, (_, i) => i + 1);
    for (const value of values) {
      if (!(Number.isInteger(value) && value >= 0 && value <= 255)) {
        throw option(`Polygonizer: expected class values between 0 and 255 but received ${String(value)}.`);
      }
      this.emit[value] = 1;
    }
    this.minArea = checkMinArea(options.minArea);
    const scale =
      typeof options.scale === 'number' ? { x: options.scale, y: options.scale } : (options.scale ?? { x: 1, y: 1 });
    if (!(scale.x > 0 && scale.y > 0 && Number.isFinite(scale.x) && Number.isFinite(scale.y))) {
      throw option(`Polygonizer: expected a positive scale but received ${JSON.stringify(options.scale)}.`);
    }
    this.scale = scale;
    this.offset = options.offset ?? { x: 0, y: 0 };
    this.above = new Int16Array(width + 2).fill(OUTSIDE);
    this.below = new Int16Array(width + 2).fill(OUTSIDE);
    this.regionsAbove = new Array<Region | null>(width).fill(null);
    this.regionsBelow = new Array<Region | null>(width).fill(null);
    this.leftAbove = new Array<End | null>(width + 1).fill(null);
    this.rightAbove = new Array<End | null>(width + 1).fill(null);
    this.leftBelow = new Array<End | null>(width + 1).fill(null);
    this.rightBelow = new Array<End | null>(width + 1).fill(null);
  }

  /** Rows pushed so far. */
  get rows(): number {
    return this.y;
  }

  /** Regions begun and not yet handed out (the polygons held in memory). */
  get openPolygons(): number {
    return this.openRegions;
  }

  /** Regions dropped by `minArea`, per class value. */
  get dropped(): ReadonlyMap<number, number> {
    return this.droppedByValue;
  }

  /**
   * Adds rows below those pushed so far.
   * @param rows - class values `[rows, width]`, one or more whole rows.
   * @throws {@link TilerOptionError} when `rows` is not a whole number of rows, or after {@link finish}.
   */
  push(rows: Uint8Array): void {
    const w = this.width;
    if (this.done) throw option('Polygonizer: push() after finish().');
    if (rows.length % w !== 0) {
      throw option(`Polygonizer: expected whole rows of ${w} values but received ${rows.length} values.`);
    }
    for (let start = 0; start < rows.length; start += w) {
      const row = this.below;
      for (let x = 0; x < w; x++) row[x + 1] = rows[start + x];
      this.label();
      this.trace();
      this.advance();
    }
  }

  /** Closes the last row and hands out every polygon still open. */
  finish(): void {
    if (this.done) return;
    this.below.fill(OUTSIDE);
    this.trace();
    this.done = true;
    if (this.openRegions !== 0) throw new Error(`internal: ${this.openRegions} regions left open`);
  }

  /** Finds the regions of the current row's runs, joining those of the previous row that they touch. */
  private label(): void {
    const w = this.width;
    const a = this.above;
    const b = this.below;
    const regions = this.regionsBelow;
    const above = this.regionsAbove;
    let x = 0;
    while (x < w) {
      const value = b[x + 1];
      let end = x + 1;
      while (end < w && b[end + 1] === value) end++;
      if (this.emit[value]) {
        let region: Region | null = null;
        let last: Region | null = null;
        for (let i = x; i < end; i++) {
          if (a[i + 1] !== value) continue;
          const other = above[i]!;
          if (other === last) continue;
          last = other;
          region = region ? this.union(region, other) : find(other);
        }
        if (!region) {
          region = { parent: null, value, pixels: 0, open: 0, rings: [], pinched: false };
          this.openRegions++;
        }
        region.pixels += end - x;
        for (let i = x; i < end; i++) regions[i] = region;
      }
      x = end;
    }
  }

  private union(a: Region, b: Region): Region {
    const ra = find(a);
    const rb = find(b);
    if (ra === rb) return ra;
    const [big, small] = ra.rings.length + ra.open >= rb.rings.length + rb.open ? [ra, rb] : [rb, ra];
    small.parent = big;
    big.pixels += small.pixels;
    big.open += small.open;
    for (const ring of small.rings) big.rings.push(ring);
    small.rings = [];
    big.pinched ||= small.pinched;
    this.openRegions--;
    return big;
  }

  /**
   * Traces the vertices of the line between the previous row and the current one (`y`), left to right. Around each
   * vertex the four pixels NW, NE, SE, SW are split by the pixel edges N, E, S, W where values differ; each sector
   * of equal pixels between two consecutive edges links its region's boundary along those two edges (turning at the
   * vertex unless they are opposite). Chains reaching the vertex from above (N) and from the left (W) are extended,
   * joined or closed into rings; new chains start where a region's top-left corner is.
   */
  private trace(): void {
    const w = this.width;
    const a = this.above;
    const b = this.below;
    const y = this.y;
    let upper: End | null = null; // chain ends along the horizontal edge arriving from the left
    let lower: End | null = null;
    const edges = [false, false, false, false];
    const quadrant = [0, 0, 0, 0];
    for (let x = 0; x <= w; x++) {
      const nw = a[x];
      const ne = a[x + 1];
      const sw = b[x];
      const se = b[x + 1];
      if (nw === ne && sw === se && nw === sw) continue;
      edges[0] = nw !== ne; // N
      edges[1] = ne !== se; // E
      edges[2] = se !== sw; // S
      edges[3] = sw !== nw; // W
      // quadrant[i]: the pixel clockwise after edge i
      quadrant[0] = ne;
      quadrant[1] = se;
      quadrant[2] = sw;
      quadrant[3] = nw;
      let nextUpper: End | null = null;
      let nextLower: End | null = null;
      // a saddle: four edges, a diagonal pair of one value (one pair at most is one region, but which is unknown yet)
      const saddle = edges[0] && edges[1] && edges[2] && edges[3] && (nw === se || ne === sw);
      for (let i = 0; i < 4; i++) {
        if (!edges[i]) continue;
        const value = quadrant[i];
        let j = (i + 1) % 4;
        while (!edges[j]) j = (j + 1) % 4;
        if (!this.emit[value]) continue;
        const corner = (j - i + 4) % 4 !== 2;
        // The region of the pixel after edge i (NE, SE, SW, NW).
        const pixel = i === 0 || i === 1 ? x : x - 1;
        const region = find((i === 0 || i === 3 ? this.regionsAbove : this.regionsBelow)[pixel]!);
        if (saddle && value === quadrant[(i + 2) % 4]) region.pinched = true;
        // The chain end on edge i's side facing the sector, and on edge j's.
        const from = i === 0 ? this.rightAbove[x] : i === 3 ? upper : null;
        const to = j === 0 ? this.leftAbove[x] : j === 3 ? lower : null;
        if (from && to) {
          this.join(from, to, corner, x, y, region);
          continue;
        }
        let end: End;
        if (from || to) {
          end = (from ?? to)!;
          if (corner) (end.tail ? end.chain.back : end.chain.front).push(x, y);
        } else {
          const chain: Chain = { front: [], back: [x, y], head: null!, tail: null! };
          chain.head = { chain, tail: false };
          chain.tail = { chain, tail: true };
          region.open++;
          // the head takes edge i's side, the tail edge j's
          if (i === 1) nextLower = chain.head;
          else this.leftBelow[x] = chain.head;
          if (j === 1) nextUpper = chain.tail;
          else this.rightBelow[x] = chain.tail;
          continue;
        }
        if (from) {
          // continues along edge j: E (upper side) or S (right side)
          if (j === 1) nextUpper = end;
          else this.rightBelow[x] = end;
        } else if (i === 1) nextLower = end;
        else this.leftBelow[x] = end;
      }
      upper = nextUpper;
      lower = nextLower;
    }
  }

  /** Joins two chain ends meeting at (x, y): merges their chains, or closes a ring when they are one chain. */
  private join(first: End, second: End, corner: boolean, x: number, y: number, region: Region): void {
    region.open--;
    if (first.chain === second.chain) {
      const chain = first.chain;
      const ring: number[] = [];
      copyFrom(chain, chain.head, ring);
      if (corner) ring.push(x, y);
      region.rings.push(ring);
      if (region.open === 0) this.complete(region);
      return;
    }
    let [keep, drop] = [first, second];
    if (chainLength(keep.chain) < chainLength(drop.chain)) [keep, drop] = [drop, keep];
    const target = keep.tail ? keep.chain.back : keep.chain.front;
    if (corner) target.push(x, y);
    const other = drop.tail ? drop.chain.head : drop.chain.tail;
    copyFrom(drop.chain, drop, target);
    other.chain = keep.chain;
    other.tail = keep.tail;
    if (keep.tail) keep.chain.tail = other;
    else keep.chain.head = other;
  }

  /** Hands out a region whose last ring has closed. */
  private complete(region: Region): void {
    this.openRegions--;
    if (region.pixels < this.minArea) {
      this.droppedByValue.set(region.value, (this.droppedByValue.get(region.value) ?? 0) + 1);
      region.rings = [];
      return;
    }
    const rings = region.pinched ? region.rings.flatMap((r) => splitRing(r, this.width)) : region.rings;
    const areas = rings.map(doubleArea);
    let outer = 0;
    for (let i = 1; i < rings.length; i++) if (Math.abs(areas[i]) > Math.abs(areas[outer])) outer = i;
    const order = [outer, ...rings.keys()].filter((i, k) => k === 0 || i !== outer);
    const { x: sx, y: sy } = this.scale;
    const { x: ox, y: oy } = this.offset;
    const out = order.map((i) => {
      const ring = rings[i];
      if (i === outer ? areas[i] < 0 : areas[i] > 0) reverseRing(ring);
      const coordinates = new Float64Array(ring.length + 2);
      for (let k = 0; k < ring.length; k += 2) {
        coordinates[k] = ox + ring[k] * sx;
        coordinates[k + 1] = oy + ring[k + 1] * sy;
      }
      coordinates[ring.length] = coordinates[0];
      coordinates[ring.length + 1] = coordinates[1];
      return coordinates;
    });
    region.rings = [];
    this.onPolygon({ value: region.value, pixels: region.pixels, rings: out });
  }

  private advance(): void {
    [this.above, this.below] = [this.below, this.above];
    [this.regionsAbove, this.regionsBelow] = [this.regionsBelow, this.regionsAbove];
    [this.leftAbove, this.leftBelow] = [this.leftBelow, this.leftAbove];
    [this.rightAbove, this.rightBelow] = [this.rightBelow, this.rightAbove];
    this.y++;
  }
}

/**
 * Polygons of a label map held in memory (see {@link Polygonizer}).
 * @param labels - class values `[height, width]`.
 */
export function polygonize(
  labels: Uint8Array,
  width: number,
  options: Omit<PolygonizerOptions, 'width'> = {},
): LabelPolygon[] {
  const polygons: LabelPolygon[] = [];
  const polygonizer = new Polygonizer({ ...options, width }, (p) => polygons.push(p));
  polygonizer.push(labels);
  polygonizer.finish();
  return polygons;
}
