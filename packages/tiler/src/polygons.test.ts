import { describe, expect, it } from 'vitest';
import { TilerOptionError } from './errors.js';
import { polygonize, Polygonizer, type LabelPolygon } from './polygons.js';

/** A label map from rows of digits ('.' = 0). */
function map(rows: string[]): { labels: Uint8Array; width: number; height: number } {
  const width = rows[0].length;
  const labels = Uint8Array.from(rows.join('').split(''), (c) => (c === '.' ? 0 : Number(c)));
  return { labels, width, height: rows.length };
}

/** Seeded xorshift32 in [0, 1). */
function random(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

/** A random map of `classes` values made of blobs, so that regions have holes, islands and pinches. */
function randomMap(width: number, height: number, classes: number, seed: number, noise = 0.15): Uint8Array {
  const rand = random(seed);
  const labels = new Uint8Array(width * height);
  const cell = 3;
  const coarse = Array.from({ length: Math.ceil(width / cell) * Math.ceil(height / cell) }, () =>
    Math.floor(rand() * classes),
  );
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const c = coarse[Math.floor(y / cell) * Math.ceil(width / cell) + Math.floor(x / cell)];
      labels[y * width + x] = rand() < noise ? Math.floor(rand() * classes) : c;
    }
  }
  return labels;
}

/** 4-connected components: a component id per pixel (-1 where the value is not in `values`) and their count. */
function components(labels: Uint8Array, width: number, values: Set<number>): { ids: Int32Array; count: number } {
  const height = labels.length / width;
  const ids = new Int32Array(labels.length).fill(-1);
  let count = 0;
  for (let start = 0; start < labels.length; start++) {
    if (ids[start] >= 0 || !values.has(labels[start])) continue;
    const stack = [start];
    ids[start] = count;
    while (stack.length) {
      const i = stack.pop()!;
      const x = i % width;
      const y = (i - x) / width;
      const next = [
        x > 0 ? i - 1 : -1,
        x < width - 1 ? i + 1 : -1,
        y > 0 ? i - width : -1,
        y < height - 1 ? i + width : -1,
      ];
      for (const n of next) {
        if (n >= 0 && ids[n] < 0 && labels[n] === labels[i]) {
          ids[n] = count;
          stack.push(n);
        }
      }
    }
    count++;
  }
  return { ids, count };
}

/** Signed shoelace area of a closed flat ring (positive: counter-clockwise in its coordinates). */
function signedArea(ring: Float64Array): number {
  let sum = 0;
  for (let i = 0; i + 3 < ring.length; i += 2) sum += ring[i] * ring[i + 3] - ring[i + 2] * ring[i + 1];
  return sum / 2;
}

/** Pixels whose centres lie inside the polygon (even-odd rule over all its rings), in map coordinates. */
function rasterize(
  polygon: LabelPolygon,
  width: number,
  height: number,
  scale = { x: 1, y: 1 },
  offset = { x: 0, y: 0 },
) {
  const inside: number[] = [];
  for (let y = 0; y < height; y++) {
    const cy = offset.y + (y + 0.5) * scale.y;
    const crossings: number[] = [];
    for (const ring of polygon.rings) {
      for (let i = 0; i + 3 < ring.length; i += 2) {
        const [x0, y0, x1, y1] = [ring[i], ring[i + 1], ring[i + 2], ring[i + 3]];
        if (y0 <= cy !== y1 <= cy) crossings.push(x0 + ((cy - y0) / (y1 - y0)) * (x1 - x0));
      }
    }
    crossings.sort((a, b) => a - b);
    for (let x = 0; x < width; x++) {
      const cx = offset.x + (x + 0.5) * scale.x;
      if (crossings.filter((c) => c < cx).length % 2 === 1) inside.push(y * width + x);
    }
  }
  return inside;
}

/**
 * The strong checks: rings closed, axis-aligned, without collinear or repeated vertices, exterior counter-clockwise
 * and holes clockwise; area (exterior minus holes) equals the region's pixels; per class the areas add up to its
 * pixel count; rasterised at pixel centres the polygons give back the label map, one polygon per 4-connected region.
 */
function check(
  labels: Uint8Array,
  width: number,
  polygons: LabelPolygon[],
  values: number[],
  scale = { x: 1, y: 1 },
  offset = { x: 0, y: 0 },
): void {
  const height = labels.length / width;
  const errors: string[] = [];
  const fail = (message: string) => errors.length < 10 && errors.push(message);
  polygons.forEach((polygon, p) => {
    let area = 0;
    polygon.rings.forEach((ring, r) => {
      const n = ring.length / 2;
      const at = `polygon ${p} ring ${r}`;
      if (n < 5) fail(`${at}: ${n} points`);
      if (ring[0] !== ring[ring.length - 2] || ring[1] !== ring[ring.length - 1]) fail(`${at}: not closed`);
      const seen = new Set<string>();
      for (let i = 0; i < n - 1; i++) {
        const key = `${ring[2 * i]},${ring[2 * i + 1]}`;
        if (seen.has(key)) fail(`${at}: repeated vertex ${key}`);
        seen.add(key);
        const [dx, dy] = [ring[2 * i + 2] - ring[2 * i], ring[2 * i + 3] - ring[2 * i + 1]];
        if ((dx === 0) === (dy === 0)) fail(`${at}: edge ${i} not axis-aligned`);
        const j = (i + 1) % (n - 1);
        const [ex, ey] = [ring[2 * j + 2] - ring[2 * j], ring[2 * j + 3] - ring[2 * j + 1]];
        if (dx * ey - dy * ex === 0) fail(`${at}: collinear vertex ${j}`);
      }
      const a = signedArea(ring);
      if (r === 0 ? a <= 0 : a >= 0) fail(`${at}: ${r === 0 ? 'exterior' : 'hole'} with signed area ${a}`);
      area += a;
    });
    if (Math.abs(area - polygon.pixels * scale.x * scale.y) > 1e-6) fail(`polygon ${p}: area ${area}`);
  });
  const emitted = new Set(values);
  for (const value of values) {
    const pixels = labels.filter((v) => v === value).length;
    const area = polygons.filter((p) => p.value === value).reduce((s, p) => s + p.pixels, 0);
    if (area !== pixels) fail(`class ${value}: polygons of ${area} pixels, map has ${pixels}`);
  }
  const { ids, count } = components(labels, width, emitted);
  if (polygons.length !== count) fail(`${polygons.length} polygons for ${count} regions`);
  const owner = new Int32Array(labels.length).fill(-1);
  const regions = new Set<number>();
  polygons.forEach((polygon, p) => {
    const inside = rasterize(polygon, width, height, scale, offset);
    if (inside.length !== polygon.pixels) fail(`polygon ${p}: covers ${inside.length} of ${polygon.pixels} pixels`);
    const region = ids[inside[0]];
    if (regions.has(region)) fail(`polygon ${p}: region ${region} twice`);
    regions.add(region);
    for (const i of inside) {
      if (owner[i] !== -1) fail(`pixel ${i} in polygons ${owner[i]} and ${p}`);
      owner[i] = p;
      if (labels[i] !== polygon.value || ids[i] !== region) fail(`pixel ${i} in polygon ${p} of another region`);
    }
  });
  for (let i = 0; i < labels.length; i++) {
    if (owner[i] >= 0 !== emitted.has(labels[i])) fail(`pixel ${i} (value ${labels[i]}) covered: ${owner[i] >= 0}`);
  }
  if (errors.length) throw new Error(errors.join('\n'));
}

/** A ring as `[x, y]` points, rotated to start at its smallest point (the closing point dropped). */
function points(ring: Float64Array): number[][] {
  const pts: number[][] = [];
  for (let i = 0; i + 2 < ring.length; i += 2) pts.push([ring[i], ring[i + 1]]);
  let start = 0;
  pts.forEach(([x, y], i) => {
    const [bx, by] = pts[start];
    if (y < by || (y === by && x < bx)) start = i;
  });
  return [...pts.slice(start), ...pts.slice(0, start)];
}

describe('Polygonizer on small maps', () => {
  it('traces a single pixel as a counter-clockwise unit square', () => {
    const { labels, width } = map(['...', '.1.', '...']);
    const polygons = polygonize(labels, width);
    expect(polygons).toHaveLength(1);
    expect(polygons[0].value).toBe(1);
    expect(polygons[0].pixels).toBe(1);
    expect(points(polygons[0].rings[0])).toEqual([
      [1, 1],
      [2, 1],
      [2, 2],
      [1, 2],
    ]);
  });

  it('traces a map of one class as its border rectangle, with 4 vertices', () => {
    const { labels, width } = map(['111', '111']);
    const [polygon] = polygonize(labels, width);
    expect(points(polygon.rings[0])).toEqual([
      [0, 0],
      [3, 0],
      [3, 2],
      [0, 2],
    ]);
    check(labels, width, polygonize(labels, width), [1]);
  });

  it('keeps the hole of a frame, oriented clockwise', () => {
    const { labels, width } = map(['11111', '1...1', '1...1', '1...1', '11111']);
    const polygons = polygonize(labels, width);
    expect(polygons).toHaveLength(1);
    expect(polygons[0].rings).toHaveLength(2);
    expect(points(polygons[0].rings[1])).toEqual([
      [1, 1],
      [1, 4],
      [4, 4],
      [4, 1],
    ]);
    check(labels, width, polygons, [1]);
  });

  it('gives islands inside holes their own polygons', () => {
    const rows = ['1111111', '1222221', '1211121', '1212121', '1211121', '1222221', '1111111'];
    const { labels, width } = map(rows);
    const polygons = polygonize(labels, width);
    const summary = polygons.map((p) => [p.value, p.pixels, p.rings.length]).sort();
    // outer frame of 1 (hole), frame of 2 (hole), frame of 1 (hole), centre 2
    expect(summary).toEqual([
      [1, 24, 2],
      [1, 8, 2],
      [2, 1, 1],
      [2, 16, 2],
    ]);
    check(labels, width, polygons, [1, 2]);
  });

  it('keeps pixels touching only at a corner apart (4-connectivity)', () => {
    const { labels, width } = map(['1.1', '.1.', '1.1']);
    const polygons = polygonize(labels, width);
    expect(polygons).toHaveLength(5);
    expect(polygons.every((p) => p.pixels === 1 && p.rings.length === 1)).toBe(true);
    check(labels, width, polygons, [1]);
    const background = polygonize(labels, width, { values: [0] });
    expect(background).toHaveLength(4);
    check(labels, width, background, [0]);
  });

  it('cuts a region pinched at its own corner into an exterior and a hole touching it there', () => {
    const { labels, width } = map(['11.', '1.1', '111']);
    const polygons = polygonize(labels, width);
    expect(polygons).toHaveLength(1);
    expect(polygons[0].rings).toHaveLength(2);
    expect(points(polygons[0].rings[1])).toEqual([
      [1, 1],
      [1, 2],
      [2, 2],
      [2, 1],
    ]);
    check(labels, width, polygons, [1]);
  });

  it('cuts two holes touching at a corner apart', () => {
    const { labels, width } = map(['1111', '1.11', '11.1', '1111']);
    const polygons = polygonize(labels, width);
    expect(polygons).toHaveLength(1);
    expect(polygons[0].rings).toHaveLength(3);
    check(labels, width, polygons, [1]);
  });

  it('handles regions touching every border, and values not in 1..n', () => {
    const { labels, width } = map(['7.7.', '7777', '..7.', '9999']);
    const polygons = polygonize(labels, width, { values: [7, 9, 0] });
    check(labels, width, polygons, [7, 9, 0]);
    expect(polygons.filter((p) => p.value === 0)).toHaveLength(4);
  });

  it('scales and offsets coordinates to level 0', () => {
    const { labels, width } = map(['.1', '11']);
    const scale = { x: 2, y: 3 };
    const offset = { x: 100, y: 50 };
    const polygons = polygonize(labels, width, { scale, offset });
    expect(points(polygons[0].rings[0])).toEqual([
      [102, 50],
      [104, 50],
      [104, 56],
      [100, 56],
      [100, 53],
      [102, 53],
    ]);
    check(labels, width, polygons, [1], scale, offset);
    expect(signedArea(polygonize(labels, width, { scale: 0.5 })[0].rings[0])).toBe(0.75);
  });

  it('drops regions smaller than minArea and counts them per class', () => {
    const { labels, width } = map(['1..22', '...22', '11...', '11..1']);
    const polygonizer = new Polygonizer({ width, minArea: 2 }, () => undefined);
    const kept: LabelPolygon[] = [];
    const p = new Polygonizer({ width, minArea: 2 }, (polygon) => kept.push(polygon));
    p.push(labels);
    p.finish();
    expect(kept.map((k) => k.pixels).sort()).toEqual([4, 4]);
    expect([...p.dropped]).toEqual([[1, 2]]);
    polygonizer.finish();
    expect(polygonizer.dropped.size).toBe(0);
  });
});

describe('Polygonizer on random maps', () => {
  it.each([
    [1, 1, 2, 1],
    [5, 1, 3, 2],
    [1, 7, 3, 3],
    [17, 13, 2, 4],
    [40, 31, 3, 5],
    [64, 64, 4, 6],
    [33, 80, 5, 7],
  ])('%i x %i with %i classes (seed %i) gives the map back', (width, height, classes, seed) => {
    for (const noise of [0, 0.15, 0.6]) {
      const labels = randomMap(width, height, classes, seed, noise);
      const all = Array.from({ length: classes }, (_, i) => i);
      check(labels, width, polygonize(labels, width), all.slice(1));
      check(labels, width, polygonize(labels, width, { values: all }), all);
    }
  });

  it('gives the same polygons row by row as in one push', () => {
    const width = 50;
    const labels = randomMap(width, 60, 3, 11);
    const whole = polygonize(labels, width);
    const rows: LabelPolygon[] = [];
    const p = new Polygonizer({ width }, (polygon) => rows.push(polygon));
    for (let y = 0; y < 60; y++) p.push(labels.subarray(y * width, (y + 1) * width));
    p.finish();
    expect(rows).toEqual(whole);
  });
});

describe('streaming', () => {
  it('hands polygons out as their regions end, holding memory bounded by the width', () => {
    const width = 40;
    const height = 20000;
    const band = randomMap(width, 50, 3, 9, 0.2);
    let emitted = 0;
    let peak = 0;
    let emittedAtHalf = 0;
    const p = new Polygonizer({ width }, () => emitted++);
    for (let y = 0; y < height; y++) {
      p.push(band.subarray((y % 50) * width, ((y % 50) + 1) * width));
      peak = Math.max(peak, p.openPolygons);
      if (y === height / 2) emittedAtHalf = emitted;
    }
    p.finish();
    expect(p.openPolygons).toBe(0);
    expect(emittedAtHalf).toBeGreaterThan(emitted / 3);
    expect(peak).toBeLessThanOrEqual(width);
  });
});

describe('options', () => {
  it('rejects bad options quoting the value', () => {
    const make = (options: object) => () => new Polygonizer({ width: 4, ...options }, () => undefined);
    expect(make({ width: 0 })).toThrow(TilerOptionError);
    expect(make({ width: 2.5 })).toThrow('Polygonizer: expected width to be a positive integer but received 2.5.');
    expect(make({ minArea: -1 })).toThrow('Expected minArea to be a number of pixels >= 0 but received -1.');
    expect(make({ values: [256] })).toThrow('Polygonizer: expected class values between 0 and 255 but received 256.');
    expect(make({ scale: 0 })).toThrow('Polygonizer: expected a positive scale but received 0.');
    const p = new Polygonizer({ width: 4 }, () => undefined);
    expect(() => p.push(new Uint8Array(6))).toThrow(
      'Polygonizer: expected whole rows of 4 values but received 6 values.',
    );
    p.finish();
    expect(() => p.push(new Uint8Array(4))).toThrow('Polygonizer: push() after finish().');
  });
});

describe('the checks', () => {
  it('fail on a polygon missing its hole or wound the wrong way', () => {
    const { labels, width } = map(['111', '1.1', '111']);
    const [polygon] = polygonize(labels, width);
    expect(() => check(labels, width, [{ ...polygon, rings: [polygon.rings[0]] }], [1])).toThrow(
      /polygon 0: covers 9 of 8 pixels/,
    );
    const reversed = Float64Array.from(points(polygon.rings[0]).reverse().flat());
    const closed = Float64Array.from([...reversed, reversed[0], reversed[1]]);
    expect(() => check(labels, width, [{ ...polygon, rings: [closed, polygon.rings[1]] }], [1])).toThrow(
      /exterior with signed area -9/,
    );
  });
});
