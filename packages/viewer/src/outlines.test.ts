import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deepZoom, tileRect } from './deep-zoom.js';
import { OutlineIndex } from './outlines.js';

const feature = (name: string, ring: number[][], holes: number[][][] = []) => ({
  type: 'Feature',
  geometry: { type: 'Polygon', coordinates: [ring, ...holes] },
  properties: { objectType: 'detection', classification: { name, color: [255, 0, 0] } },
});
// A 4 x 3 nucleus at (10, 20) with a 1 x 1 hole, and a 2 x 2 region of a class the viewer does not know.
const nucleus = feature(
  'nucleus',
  [
    [14, 23],
    [10, 23],
    [10, 20],
    [14, 20],
    [14, 23],
  ],
  [
    [
      [12, 21],
      [12, 22],
      [11, 22],
      [11, 21],
      [12, 21],
    ],
  ],
);
const other = feature('tumour', [
  [302, 2],
  [300, 2],
  [300, 0],
  [302, 0],
  [302, 2],
]);

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tessera-outlines-'));
  // As Tessera writes it (one feature per line) and pretty-printed (as other programs may).
  await writeFile(
    join(dir, 'lines.geojson'),
    `{"type":"FeatureCollection","features":[\n${JSON.stringify(nucleus)},\n${JSON.stringify(other)}\n]}\n`,
  );
  await writeFile(
    join(dir, 'pretty.geojson'),
    JSON.stringify({ type: 'FeatureCollection', features: [nucleus, other] }, null, 2),
  );
  await writeFile(join(dir, 'bad.geojson'), '{"type":"Feature"}');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Colours by class index: background, nucleus red; index 255 (unknown classes) yellow. */
function colours(showNucleus = true): Uint8Array {
  const table = new Uint8Array(256 * 4);
  if (showNucleus) table.set([255, 0, 0, 255], 4);
  table.set([255, 255, 0, 255], 255 * 4);
  return table;
}

function drawn(pixels: Uint8Array | null, width: number): string[] {
  const out: string[] = [];
  if (!pixels) return out;
  for (let i = 0; i < pixels.length / 4; i++) if (pixels[i * 4 + 3]) out.push(`${i % width},${Math.floor(i / width)}`);
  return out;
}

describe('GeoJSON outlines', () => {
  it.each(['lines.geojson', 'pretty.geojson'])(
    'reads %s and draws the rings on the pixels along their edges',
    async (file) => {
      const index = await OutlineIndex.load(join(dir, file), ['background', 'nucleus'], 2220);
      expect(index.size).toBe(2);
      expect(index.counts).toEqual([0, 1]);
      const dz = deepZoom(2220, 2967);
      const rect = tileRect(dz, 12, 0, 0);
      const pixels = index.draw(rect, colours());
      const points = drawn(pixels, rect.width);
      // The exterior: columns 10 and 14, rows 20 and 23 between them; the hole: columns 11-12, rows 21-22.
      for (const p of ['10,20', '14,20', '10,23', '14,23', '12,20', '10,22', '11,21', '12,22'])
        expect(points).toContain(p);
      expect(points).not.toContain('13,22'); // inside, not on an edge
      expect(points).not.toContain('9,20');
      expect(Array.from(pixels!.subarray((20 * rect.width + 10) * 4, (20 * rect.width + 10) * 4 + 4))).toEqual([
        255, 0, 0, 255,
      ]);
      // The unknown class is drawn in the colour of index 255, in the tile that holds it.
      const right = tileRect(dz, 12, 1, 0);
      const yellow = index.draw(right, colours());
      const at = (0 * right.width + 300 - right.x) * 4;
      expect(Array.from(yellow!.subarray(at, at + 4))).toEqual([255, 255, 0, 255]);
    },
  );

  it('draws nothing for hidden classes, and halves coordinates at the next level down', async () => {
    const index = await OutlineIndex.load(join(dir, 'lines.geojson'), ['background', 'nucleus'], 2220);
    const dz = deepZoom(2220, 2967);
    expect(index.draw(tileRect(dz, 12, 0, 0), colours(false))).toBeNull();
    const half = tileRect(dz, 11, 0, 0);
    const points = drawn(index.draw(half, colours()), half.width);
    expect(points).toContain('5,10');
    expect(points).toContain('7,11');
    const near = points.filter((p) => Number(p.split(',')[0]) < 100);
    expect(near.every((p) => /^[5-7],1[01]$/.test(p))).toBe(true);
    expect(points).toContain('150,0'); // the other polygon, at x 300 / 2
  });

  it('refuses a file that is not a FeatureCollection, naming it', async () => {
    await expect(OutlineIndex.load(join(dir, 'bad.geojson'), ['nucleus'], 100)).rejects.toThrow(
      /GeoJSON ".*bad\.geojson": expected a FeatureCollection but received Feature/,
    );
  });
});
