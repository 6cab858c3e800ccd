/**
 * GeoJSON outlines (`<stem>_polygons.geojson` of `tessera predict --geojson`, or any FeatureCollection of Polygons
 * and MultiPolygons in level-0 pixels, e.g. exported by QuPath) drawn into Deep Zoom tiles.
 *
 * The file is read once, feature by feature where it holds one feature per line (as Tessera writes it, so that a
 * file of hundreds of thousands of polygons is never one JSON string), into flat typed arrays and a grid index, and
 * each tile draws the rings of the polygons whose bounds meet it.
 */
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import type { TileRect } from './deep-zoom.js';
import { ViewerPredictionsError } from './errors.js';

/** Side of the grid cells of the index, in level-0 pixels. */
const CELL = 256;
/** Files that are not one feature per line are parsed whole up to this size. */
const WHOLE_FILE_BYTES = 512 * 1024 * 1024;

interface Builder {
  coords: number[];
  ringStarts: number[];
  polygonRings: number[];
  classOf: number[];
  bounds: number[];
}

/** Polygons of a GeoJSON file, indexed by a grid over level-0 pixels. */
export class OutlineIndex {
  private constructor(
    /** x, y pairs of every ring, one after the other. */
    private readonly coords: Float32Array,
    /** First coordinate pair of each ring, and one past the last ring's end. */
    private readonly ringStarts: Uint32Array,
    /** First ring of each polygon, and one past the last polygon's. */
    private readonly polygonRings: Uint32Array,
    /** Class (index into the names given to {@link OutlineIndex.load}) of each polygon, 255 when unknown. */
    private readonly classOf: Uint8Array,
    /** minX, minY, maxX, maxY of each polygon. */
    private readonly bounds: Float32Array,
    private readonly cells: Map<number, Uint32Array>,
    private readonly columns: number,
    /** Polygons per class index. */
    readonly counts: number[],
  ) {}

  /** Number of polygons. */
  get size(): number {
    return this.classOf.length;
  }

  /**
   * Reads a GeoJSON file; each feature's class is its `properties.classification.name` (QuPath), else
   * `properties.name` or `properties.class`, looked up in `classNames`.
   * @throws {@link ViewerPredictionsError} when the file is not a GeoJSON FeatureCollection.
   */
  static async load(path: string, classNames: readonly string[], width: number): Promise<OutlineIndex> {
    const b: Builder = { coords: [], ringStarts: [], polygonRings: [], classOf: [], bounds: [] };
    const lookup = new Map(classNames.map((n, i) => [n, i]));
    const add = (feature: unknown) => addFeature(b, feature, lookup);
    let perLine = true;
    const lines = createInterface({ input: createReadStream(path, 'utf8'), crlfDelay: Infinity });
    let n = 0;
    for await (const raw of lines) {
      const line = raw.trim();
      n++;
      if (n === 1) {
        // Tessera's layout opens the collection on a line of its own.
        if (line.startsWith('{"type":"FeatureCollection"') && line.endsWith('[')) continue;
        perLine = false;
        break;
      }
      if (line === ']}' || line === ']' || line === '') continue;
      if (!line.startsWith('{"type":"Feature"')) {
        perLine = false;
        break;
      }
      try {
        add(JSON.parse(line.endsWith(',') ? line.slice(0, -1) : line));
      } catch {
        perLine = false;
        break;
      }
    }
    lines.close();
    if (!perLine) {
      b.coords = [];
      b.ringStarts = [];
      b.polygonRings = [];
      b.classOf = [];
      b.bounds = [];
      const bytes = (await stat(path)).size;
      if (bytes > WHOLE_FILE_BYTES) {
        throw new ViewerPredictionsError(
          `GeoJSON "${path}" has ${bytes} bytes and not one feature per line; expected at most ${WHOLE_FILE_BYTES} ` +
            'bytes for a file that is parsed whole.',
          'Write it with tessera predict --geojson (one feature per line), or leave it out of the folder.',
        );
      }
      let json: { type?: string; features?: unknown[] };
      try {
        json = JSON.parse(await readFile(path, 'utf8'));
      } catch (error) {
        throw new ViewerPredictionsError(
          `GeoJSON "${path}" could not be parsed: ${(error as Error).message}.`,
          'Predict again with --geojson, which rewrites it, or remove the file to view without outlines.',
          error,
        );
      }
      if (json?.type !== 'FeatureCollection' || !Array.isArray(json.features)) {
        throw new ViewerPredictionsError(
          `GeoJSON "${path}": expected a FeatureCollection but received ${json?.type ?? typeof json}.`,
          'Outlines are read from FeatureCollections of Polygon and MultiPolygon features in level-0 pixels.',
        );
      }
      for (const f of json.features) add(f);
    }
    return OutlineIndex.build(b, classNames.length, width);
  }

  private static build(b: Builder, classCount: number, width: number): OutlineIndex {
    b.ringStarts.push(b.coords.length / 2);
    b.polygonRings.push(b.ringStarts.length - 1);
    const columns = Math.max(1, Math.ceil(width / CELL));
    const lists = new Map<number, number[]>();
    const counts = new Array<number>(classCount).fill(0);
    for (let p = 0; p < b.classOf.length; p++) {
      if (b.classOf[p] < classCount) counts[b.classOf[p]]++;
      const [x0, y0, x1, y1] = [b.bounds[p * 4], b.bounds[p * 4 + 1], b.bounds[p * 4 + 2], b.bounds[p * 4 + 3]];
      for (let cy = Math.max(0, Math.floor(y0 / CELL)); cy <= Math.floor(y1 / CELL); cy++) {
        for (let cx = Math.max(0, Math.floor(x0 / CELL)); cx <= Math.min(columns - 1, Math.floor(x1 / CELL)); cx++) {
          const key = cy * columns + cx;
          let list = lists.get(key);
          if (!list) lists.set(key, (list = []));
          list.push(p);
        }
      }
    }
    const cells = new Map<number, Uint32Array>();
    for (const [k, list] of lists) cells.set(k, Uint32Array.from(list));
    return new OutlineIndex(
      Float32Array.from(b.coords),
      Uint32Array.from(b.ringStarts),
      Uint32Array.from(b.polygonRings),
      Uint8Array.from(b.classOf),
      Float32Array.from(b.bounds),
      cells,
      columns,
      counts,
    );
  }

  /**
   * Draws the outlines of the polygons meeting a Deep Zoom tile, 1 pixel wide in the class colours of `colours`
   * (`[256, 4]` RGBA by class index; alpha 0 hides a class). Returns `null` when the tile has none.
   */
  draw(rect: TileRect, colours: Uint8Array): Uint8Array | null {
    const f = rect.downsample;
    const gx0 = rect.x * f;
    const gy0 = rect.y * f;
    const gx1 = (rect.x + rect.width) * f;
    const gy1 = (rect.y + rect.height) * f;
    const seen = new Set<number>();
    let out: Uint8Array | null = null;
    for (let cy = Math.max(0, Math.floor(gy0 / CELL)); cy <= Math.floor(gy1 / CELL); cy++) {
      for (
        let cx = Math.max(0, Math.floor(gx0 / CELL));
        cx <= Math.min(this.columns - 1, Math.floor(gx1 / CELL));
        cx++
      ) {
        const list = this.cells.get(cy * this.columns + cx);
        if (!list) continue;
        for (const p of list) {
          if (seen.has(p)) continue;
          seen.add(p);
          const b = this.bounds;
          if (b[p * 4] > gx1 || b[p * 4 + 2] < gx0 || b[p * 4 + 1] > gy1 || b[p * 4 + 3] < gy0) continue;
          const c = this.classOf[p] * 4;
          if (colours[c + 3] === 0) continue;
          out ??= new Uint8Array(rect.width * rect.height * 4);
          for (let r = this.polygonRings[p]; r < this.polygonRings[p + 1]; r++) {
            this.drawRing(out, rect, r, colours.subarray(c, c + 4));
          }
        }
      }
    }
    return out;
  }

  private drawRing(out: Uint8Array, rect: TileRect, ring: number, colour: Uint8Array): void {
    const f = rect.downsample;
    const start = this.ringStarts[ring];
    const end = this.ringStarts[ring + 1];
    const { width, height } = rect;
    const plot = (x: number, y: number) => {
      if (x < 0 || y < 0 || x >= width || y >= height) return;
      const i = (y * width + x) * 4;
      out[i] = colour[0];
      out[i + 1] = colour[1];
      out[i + 2] = colour[2];
      out[i + 3] = colour[3];
    };
    // Pixel edges in level-0 coordinates; a vertex at x lies on the left edge of tile pixel floor(x / f - rect.x).
    const px = (i: number) => Math.min(width, Math.floor(this.coords[i * 2] / f - rect.x));
    const py = (i: number) => Math.min(height, Math.floor(this.coords[i * 2 + 1] / f - rect.y));
    for (let i = start; i + 1 < end; i++) {
      let x0 = px(i);
      let y0 = py(i);
      const x1 = px(i + 1);
      const y1 = py(i + 1);
      if ((x0 < 0 && x1 < 0) || (y0 < 0 && y1 < 0) || (x0 >= width && x1 >= width) || (y0 >= height && y1 >= height)) {
        continue;
      }
      // Bresenham from (x0, y0) to (x1, y1).
      const dx = Math.abs(x1 - x0);
      const dy = -Math.abs(y1 - y0);
      const sx = x0 < x1 ? 1 : -1;
      const sy = y0 < y1 ? 1 : -1;
      let err = dx + dy;
      for (;;) {
        plot(x0, y0);
        if (x0 === x1 && y0 === y1) break;
        const e2 = 2 * err;
        if (e2 >= dy) {
          err += dy;
          x0 += sx;
        }
        if (e2 <= dx) {
          err += dx;
          y0 += sy;
        }
      }
    }
  }
}

function addFeature(b: Builder, feature: unknown, lookup: Map<string, number>): void {
  const f = feature as {
    geometry?: { type?: string; coordinates?: unknown };
    properties?: { classification?: { name?: unknown }; name?: unknown; class?: unknown } | null;
  };
  const g = f?.geometry;
  if (!g) return;
  const props = f.properties ?? {};
  const name = props.classification?.name ?? props.name ?? props.class;
  const cls = typeof name === 'string' ? (lookup.get(name) ?? 255) : 255;
  const polygons =
    g.type === 'Polygon'
      ? [g.coordinates]
      : g.type === 'MultiPolygon' && Array.isArray(g.coordinates)
        ? g.coordinates
        : [];
  for (const polygon of polygons) {
    if (!Array.isArray(polygon) || polygon.length === 0) continue;
    let minX = Infinity;
    let minY = Infinity;
    let maxX = -Infinity;
    let maxY = -Infinity;
    const firstRing = b.ringStarts.length;
    for (const ring of polygon) {
      if (!Array.isArray(ring) || ring.length < 2) continue;
      b.ringStarts.push(b.coords.length / 2);
      for (const point of ring) {
        const x = Number((point as number[])[0]);
        const y = Number((point as number[])[1]);
        b.coords.push(x, y);
        if (x < minX) minX = x;
        if (x > maxX) maxX = x;
        if (y < minY) minY = y;
        if (y > maxY) maxY = y;
      }
    }
    if (b.ringStarts.length === firstRing || !Number.isFinite(minX + minY + maxX + maxY)) {
      // No usable ring: drop what was added.
      if (b.ringStarts.length > firstRing) {
        b.coords.length = b.ringStarts[firstRing] * 2;
        b.ringStarts.length = firstRing;
      }
      continue;
    }
    b.polygonRings.push(firstRing);
    b.classOf.push(cls);
    b.bounds.push(minX, minY, maxX, maxY);
  }
}
