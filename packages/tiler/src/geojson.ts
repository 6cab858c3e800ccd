/**
 * GeoJSON output of label maps: the polygons of {@link Polygonizer} as a FeatureCollection that QuPath imports as
 * classified detections or annotations (File > Import objects, or `importObjectsFromFile` in a script). Streamed to a
 * temporary file and renamed when complete.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import { backgroundClass, describeValue, OutputError, parseColor } from '@tessera/core';
import { checkMinArea, Polygonizer, type LabelPolygon } from './polygons.js';
import { TilerOptionError } from './errors.js';

/** A class of the label map. */
export interface GeoJsonClass {
  name: string;
  /** Pixel value of the class in the label map. */
  value: number;
  /** `#rrggbb`. */
  color: string;
  /** The class map's background flag (see core's `backgroundClass`); absent in older model folders. */
  background?: boolean;
}

/** The QuPath object types a polygon can be written as. */
const OBJECT_TYPES = ['detection', 'annotation'] as const;

/** Options of {@link writePolygonsGeoJson}. */
export interface PolygonsGeoJsonOptions {
  /** Width of the label map. */
  width: number;
  /** The classes of the model, in class-index order. */
  classes: readonly GeoJsonClass[];
  /**
   * Names of the classes to trace (the background class too, when named here). Default: every class but the
   * background class of core's `backgroundClass` (the class marked `background: true`, else the class named
   * `background` in any case, else the class of value 0; with none of these, every class).
   */
  include?: readonly string[];
  /**
   * QuPath object type of each polygon, written as `properties.objectType`: `'detection'` (light, for the thousands
   * of nuclei or cells of a slide) or `'annotation'` (editable, for a few large regions; QuPath slows down with many).
   * Default `'detection'`.
   */
  objectType?: 'detection' | 'annotation';
  /** Regions of fewer label-map pixels are left out. Default 0 (none). */
  minArea?: number;
  /** Level-0 pixels per label-map pixel (the map may be predicted at a reduced level or scale). Default 1. */
  scale?: { x: number; y: number };
  /** Where the file is written before it is renamed to `path` (same file system). Default: beside `path`. */
  tmp?: string;
  /** Stops between chunks of rows; no file is left behind. */
  signal?: AbortSignal;
}

/** Polygons written per class. */
export interface ClassPolygons {
  name: string;
  value: number;
  /** Polygons written. */
  polygons: number;
  /** Regions left out as smaller than `minArea`. */
  dropped: number;
  /** Label-map pixels covered by the polygons written. */
  pixels: number;
}

/** What {@link writePolygonsGeoJson} wrote. */
export interface PolygonsGeoJson {
  path: string;
  classes: ClassPolygons[];
  /** Time spent reading, tracing and writing. */
  ms: number;
}

/**
 * Checks the `objectType` option of {@link writePolygonsGeoJson}.
 * @param name - How the caller calls it, named in the error (e.g. `'geojson.objectType'`).
 * @returns the object type, `'detection'` when `objectType` is undefined.
 * @throws {@link TilerOptionError} quoting the value and the valid choices.
 */
export function checkObjectType(objectType: unknown, name = 'objectType'): 'detection' | 'annotation' {
  if (objectType === undefined) return 'detection';
  if (typeof objectType !== 'string' || !(OBJECT_TYPES as readonly string[]).includes(objectType)) {
    throw new TilerOptionError(
      `Expected ${name} to be one of ${OBJECT_TYPES.map((t) => `"${t}"`).join(', ')} but received ` +
        `${describeValue(objectType)}.`,
      'Use "detection" for many small objects such as nuclei (QuPath draws thousands quickly), "annotation" for a ' +
        'few regions to edit by hand.',
      name,
    );
  }
  return objectType as 'detection' | 'annotation';
}

/** A coordinate as written: integers as they are, else rounded to 1/1000 pixel. */
function coordinate(value: number): string {
  return Number.isInteger(value) ? String(value) : String(Math.round(value * 1000) / 1000);
}

function geometry(polygon: LabelPolygon): string {
  const rings = polygon.rings.map((ring) => {
    const points: string[] = [];
    for (let i = 0; i < ring.length; i += 2) points.push(`[${coordinate(ring[i])},${coordinate(ring[i + 1])}]`);
    return `[${points.join(',')}]`;
  });
  return `{"type":"Polygon","coordinates":[${rings.join(',')}]}`;
}

/**
 * Traces the regions of a label map, streamed in chunks of whole rows, and writes them to `path` as a GeoJSON
 * FeatureCollection in level-0 pixel coordinates (origin at the top-left corner of the slide, y down, as QuPath
 * expects), one `Polygon` Feature per 4-connected region, exterior counter-clockwise and holes clockwise as RFC 7946
 * asks. Each Feature is a QuPath object (a detection by default) of its class: `{"type":"Feature","geometry":{...},
 * "properties":{"objectType":"detection","classification":{"name":"nucleus","color":[255,0,0]}}}`. The background
 * class (core's `backgroundClass`) is left out unless `include` names it.
 * Holds the polygonizer's state and one chunk: memory is bounded by the width, not the height.
 * @param rows - label-map rows of class values `[rows, width]`, in order, any number of whole rows per chunk.
 * @throws {@link TilerOptionError} for an unknown class name, a bad `minArea` or `objectType`; core's `OutputError`
 * when the file cannot be written; the abort reason when `signal` fires.
 * @example
 * const written = await writePolygonsGeoJson('out/a_polygons.geojson', [labels], { width, classes: manifest.classes });
 * // written.classes: [{ name: 'nucleus', value: 1, polygons: 212, dropped: 0, pixels: 48311 }]
 */
export async function writePolygonsGeoJson(
  path: string,
  rows: Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
  options: PolygonsGeoJsonOptions,
): Promise<PolygonsGeoJson> {
  const started = performance.now();
  const { width, classes, signal } = options;
  const names = classes.map((c) => c.name);
  for (const name of options.include ?? []) {
    if (!names.includes(name)) {
      throw new TilerOptionError(
        `Expected classes to trace among ${names.map((n) => `"${n}"`).join(', ')} but received "${name}".`,
      );
    }
  }
  const background = backgroundClass(classes);
  const traced = options.include
    ? classes.filter((c) => options.include!.includes(c.name))
    : classes.filter((c) => c !== background);
  const minArea = checkMinArea(options.minArea);
  const objectType = checkObjectType(options.objectType);
  const counts = new Map<number, ClassPolygons>(
    traced.map((c) => [c.value, { name: c.name, value: c.value, polygons: 0, dropped: 0, pixels: 0 }]),
  );
  const properties = new Map(
    traced.map((c) => [
      c.value,
      JSON.stringify({ objectType, classification: { name: c.name, color: parseColor(c.color) } }),
    ]),
  );
  const tmp = options.tmp ?? `${path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  let file: Awaited<ReturnType<typeof open>> | undefined;
  try {
    file = await open(tmp, 'w');
    let text = '{"type":"FeatureCollection","features":[';
    let first = true;
    const polygonizer = new Polygonizer(
      { width, values: traced.map((c) => c.value), minArea, scale: options.scale },
      (polygon) => {
        const count = counts.get(polygon.value)!;
        count.polygons++;
        count.pixels += polygon.pixels;
        const props = properties.get(polygon.value)!;
        text += `${first ? '' : ','}\n{"type":"Feature","geometry":${geometry(polygon)},"properties":${props}}`;
        first = false;
      },
    );
    for await (const chunk of rows) {
      signal?.throwIfAborted();
      polygonizer.push(chunk);
      if (text.length > 1 << 20) {
        await file.write(text);
        text = '';
      }
    }
    polygonizer.finish();
    text += '\n]}\n';
    await file.write(text);
    for (const [value, n] of polygonizer.dropped) counts.get(value)!.dropped = n;
    await file.close();
    file = undefined;
    await rename(tmp, path);
  } catch (error) {
    await file?.close().catch(() => undefined);
    await rm(tmp, { force: true });
    if (signal?.aborted || error instanceof TilerOptionError) throw error;
    throw new OutputError(
      `Could not write "${path}": ${(error as Error).message}.`,
      'Check that the output folder is writable and the disk has space.',
      error,
    );
  }
  return { path, classes: [...counts.values()], ms: performance.now() - started };
}
