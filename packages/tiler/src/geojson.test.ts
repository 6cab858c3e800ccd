import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { saveTinyUnet } from '../test/tiny-model.mjs';
import { TilerOptionError } from './errors.js';
import { checkObjectType, writePolygonsGeoJson } from './geojson.js';
import { predictSlide } from './predict-slide.js';
import { openSlide } from './slide.js';

const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../../../shared/data');
const CMU = join(DATA, 'slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs');

interface Feature {
  type: string;
  geometry: { type: string; coordinates: number[][][] };
  properties: { objectType: string; classification: { name: string; color: number[] } };
}

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'tessera-geojson-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const classes = [
  { name: 'background', value: 0, color: '#000000' },
  { name: 'nucleus', value: 255, color: '#ff8000' },
  { name: 'stroma', value: 128, color: '#00ff00' },
];

/** Signed shoelace area of a GeoJSON ring. */
function ringArea(ring: number[][]): number {
  let sum = 0;
  for (let i = 0; i + 1 < ring.length; i++) sum += ring[i][0] * ring[i + 1][1] - ring[i + 1][0] * ring[i][1];
  return sum / 2;
}

/** Area per class name of a FeatureCollection (exterior minus holes), checking rings as RFC 7946 wants them. */
function areasOf(features: Feature[]): Map<string, number> {
  const areas = new Map<string, number>();
  for (const { geometry, properties } of features) {
    expect(geometry.type).toBe('Polygon');
    let area = 0;
    geometry.coordinates.forEach((ring, r) => {
      expect(ring[0]).toEqual(ring[ring.length - 1]);
      const a = ringArea(ring);
      expect(r === 0 ? a > 0 : a < 0).toBe(true);
      area += a;
    });
    const name = properties.classification.name;
    areas.set(name, (areas.get(name) ?? 0) + area);
  }
  return areas;
}

describe('writePolygonsGeoJson', () => {
  it('writes a FeatureCollection of QuPath detections with class names and colours', async () => {
    // 6 x 4: a nucleus frame with a stroma pixel inside it, a stroma speck
    const rows = ['.ssss.', '.ssss.', 'nnn..s', 'nsn...'].map((r) =>
      [...r].map((c) => (c === 'n' ? 255 : c === 's' ? 128 : 0)),
    );
    const labels = Uint8Array.from(rows.flat());
    const path = join(tmp, 'small_polygons.geojson');
    const chunks = [labels.subarray(0, 12), labels.subarray(12)]; // rows arrive in chunks
    const written = await writePolygonsGeoJson(path, chunks, { width: 6, classes, scale: { x: 2, y: 2 } });
    const json = JSON.parse(await readFile(path, 'utf8'));
    expect(json.type).toBe('FeatureCollection');
    const features = json.features as Feature[];
    expect(features).toHaveLength(4);
    expect(features[0].type).toBe('Feature');
    expect(features.find((f) => f.properties.classification.name === 'nucleus')?.properties).toEqual({
      objectType: 'detection',
      classification: { name: 'nucleus', color: [255, 128, 0] },
    });
    const areas = areasOf(features);
    expect(Object.fromEntries(areas)).toEqual({ nucleus: 5 * 4, stroma: 10 * 4 });
    expect(written.classes).toEqual([
      { name: 'nucleus', value: 255, polygons: 1, dropped: 0, pixels: 5 },
      { name: 'stroma', value: 128, polygons: 3, dropped: 0, pixels: 10 },
    ]);
    expect(written.path).toBe(path);
    expect((await readdir(tmp)).filter((n) => n.includes('.tmp-'))).toEqual([]);

    const some = await writePolygonsGeoJson(path, [labels], { width: 6, classes, include: ['stroma'], minArea: 2 });
    expect(some.classes).toEqual([{ name: 'stroma', value: 128, polygons: 1, dropped: 2, pixels: 8 }]);
  });

  it('writes annotations when asked, and refuses other object types', async () => {
    const path = join(tmp, 'annotations.geojson');
    const labels = Uint8Array.from([255, 0, 0, 128]);
    await writePolygonsGeoJson(path, [labels], { width: 2, classes, objectType: 'annotation' });
    const features = JSON.parse(await readFile(path, 'utf8')).features as Feature[];
    expect(features.map((f) => f.properties)).toEqual([
      { objectType: 'annotation', classification: { name: 'nucleus', color: [255, 128, 0] } },
      { objectType: 'annotation', classification: { name: 'stroma', color: [0, 255, 0] } },
    ]);
    const cell = 'cell' as 'detection';
    const bad = writePolygonsGeoJson(join(tmp, 'cells.geojson'), [labels], { width: 2, classes, objectType: cell });
    await expect(bad).rejects.toBeInstanceOf(TilerOptionError);
    await expect(bad).rejects.toThrow('Expected objectType to be one of "detection", "annotation" but received "cell"');
    expect(checkObjectType(undefined)).toBe('detection');
    expect(() => checkObjectType('Detection', 'geojson.objectType')).toThrow(
      'Expected geojson.objectType to be one of "detection", "annotation" but received "Detection" of type string.',
    );
    expect((await readdir(tmp)).filter((n) => n.startsWith('cells'))).toEqual([]);
  });

  it("leaves out the background class of core's rule, not the first class", async () => {
    const path = join(tmp, 'rule.geojson');
    const labels = Uint8Array.from([0, 1, 1, 0, 5, 5]); // 3 x 2
    const trace = async (
      cls: { name: string; value: number; color: string; background?: boolean }[],
      include?: string[],
    ) => (await writePolygonsGeoJson(path, [labels], { width: 3, classes: cls, include })).classes.map((c) => c.name);
    // Automatic class map of an older model: class_0 (value 0) is the background by its value.
    const auto = [
      { name: 'class_0', value: 0, color: '#000000' },
      { name: 'class_1', value: 1, color: '#e6194b' },
      { name: 'class_5', value: 5, color: '#3cb44b' },
    ];
    expect(await trace(auto)).toEqual(['class_1', 'class_5']);
    // The background need not come first: a class named Background anywhere, or a flag on a non-zero class.
    expect(await trace([auto[1], auto[0], { ...auto[2], name: 'Background' }])).toEqual(['class_1', 'class_0']);
    const flagged = [{ ...auto[0], name: 'tumour' }, auto[1], { ...auto[2], name: 'glass', background: true }];
    expect(await trace(flagged)).toEqual(['tumour', 'class_1']);
    // No background at all (value 0 flagged false): every class is traced.
    expect(await trace([{ ...auto[0], background: false }, auto[1]])).toEqual(['class_0', 'class_1']);
    // include still asks for the background by name.
    expect(await trace(flagged, ['glass', 'tumour'])).toEqual(['tumour', 'glass']);
  });

  it('refuses unknown classes and a bad minimum area, and leaves no file behind', async () => {
    const path = join(tmp, 'bad.geojson');
    const labels = new Uint8Array(4);
    await expect(writePolygonsGeoJson(path, [labels], { width: 2, classes, include: ['tumour'] })).rejects.toThrow(
      'Expected classes to trace among "background", "nucleus", "stroma" but received "tumour".',
    );
    const bad = writePolygonsGeoJson(path, [labels], { width: 2, classes, minArea: -5 });
    await expect(bad).rejects.toBeInstanceOf(TilerOptionError);
    await expect(bad).rejects.toThrow('Expected minArea to be a number of pixels >= 0 but received -5.');
    expect((await readdir(tmp)).filter((n) => n.startsWith('bad'))).toEqual([]);
  });

  it('stops on an AbortSignal between chunks and leaves no file behind', async () => {
    const controller = new AbortController();
    const path = join(tmp, 'stopped.geojson');
    async function* rows() {
      yield new Uint8Array(8).fill(255);
      controller.abort(new Error('stop here'));
      yield new Uint8Array(8);
    }
    const stopped = writePolygonsGeoJson(path, rows(), { width: 4, classes, signal: controller.signal });
    await expect(stopped).rejects.toThrow('stop here');
    expect((await readdir(tmp)).filter((n) => n.startsWith('stopped'))).toEqual([]);
  });
});

describe('predictSlide with geojson', () => {
  it('writes polygons in level-0 pixels whose areas per class match the areas JSON', async () => {
    // A 768 x 512 crop of CMU-1 as a tiled pyramid at 0.5 µm/px, predicted at 1 µm/px (level 1, half size).
    const slide = join(tmp, 'cmu-crop.tif');
    await sharp(CMU)
      .extract({ left: 600, top: 900, width: 768, height: 512 })
      .tiff({ tile: true, tileWidth: 256, tileHeight: 256, pyramid: true, compression: 'jpeg', xres: 2000, yres: 2000 })
      .toFile(slide);
    expect((await openSlide(slide)).mpp).toEqual({ x: 0.5, y: 0.5 });
    const model = join(tmp, 'model');
    await saveTinyUnet(model);
    const out = join(tmp, 'out');
    const { outputs, run } = await predictSlide(slide, {
      model,
      out,
      mpp: 1,
      tile: 128,
      workers: 1,
      backend: 'cpu',
      tissue: false,
      geojson: true,
    });
    expect([run.level, run.width, run.height]).toEqual([1, 384, 256]);
    const path = join(out, 'cmu-crop_polygons.geojson');
    expect(outputs.polygons?.path).toBe(path);
    const features = JSON.parse(await readFile(path, 'utf8')).features as Feature[];
    const areas = areasOf(features);
    const json = JSON.parse(await readFile(outputs.areasJson, 'utf8'));
    for (const c of json.classes.slice(1)) {
      expect(c.pixels).toBeGreaterThan(0); // the untrained model predicts every class somewhere
      expect(areas.get(c.name), c.name).toBe(c.pixels * 4); // level-0 pixels: twice the size in x and y
      const counted = outputs.polygons!.classes.find((p) => p.name === c.name)!;
      expect(counted.pixels).toBe(c.pixels);
      expect(counted.polygons).toBe(features.filter((f) => f.properties.classification.name === c.name).length);
    }
    expect(areas.has('background')).toBe(false);
    const right = features.reduce((m, f) => Math.max(m, ...f.geometry.coordinates[0].map((p) => p[0])), 0);
    expect(right).toBe(768); // regions reach the right border of the slide, in level-0 pixels
    expect((await readdir(out)).filter((n) => n.includes('.tmp-') || n.startsWith('.'))).toEqual([]);

    const specks = await predictSlide(slide, {
      model,
      out: join(tmp, 'specks'),
      mpp: 1,
      tile: 128,
      workers: 1,
      backend: 'cpu',
      tissue: false,
      geojson: { minArea: 50, objectType: 'annotation' },
    });
    expect(features.every((f) => f.properties.objectType === 'detection')).toBe(true);
    const annotations = JSON.parse(await readFile(specks.outputs.polygons!.path, 'utf8')).features as Feature[];
    expect(annotations.length).toBeGreaterThan(0);
    expect(annotations.every((f) => f.properties.objectType === 'annotation')).toBe(true);
    const kept = specks.outputs.polygons!.classes;
    const all = outputs.polygons!.classes;
    expect(kept.map((c) => c.polygons + c.dropped)).toEqual(all.map((c) => c.polygons));
    expect(kept.some((c) => c.dropped > 0)).toBe(true);
  });

  it('checks the minimum area and the object type before predicting', async () => {
    await expect(
      predictSlide(CMU, { model: join(tmp, 'model'), out: join(tmp, 'never'), geojson: { minArea: Number.NaN } }),
    ).rejects.toThrow('Expected geojson.minArea to be a number of pixels >= 0 but received NaN.');
    const objectType = 'tile' as 'annotation';
    await expect(
      predictSlide(CMU, { model: join(tmp, 'model'), out: join(tmp, 'never'), geojson: { objectType } }),
    ).rejects.toThrow('Expected geojson.objectType to be one of "detection", "annotation" but received "tile"');
    expect(await readdir(tmp)).not.toContain('never');
  });
});
