import { describe, expect, it } from 'vitest';
import { splitImage } from '@tessera/core';
import { BandMerger, RowPool, type Band } from './merger.js';
import {
  checkTileOptions,
  defaultOverlap,
  markTissue,
  otsuThreshold,
  splitLevel,
  splitStripes,
  tissueMask,
} from './splitter.js';

describe('splitLevel', () => {
  it('is the splitter of core (tested there), with the option errors of the tiler', () => {
    const options = { width: 203, height: 150, tile: 64, overlap: 48, multiple: 4, context: 24 };
    expect(splitLevel(options)).toEqual(splitImage(options));
  });

  it('shrinks tiles to small images and derives the overlap from the receptive field', () => {
    const plan = splitLevel({ width: 30, height: 10, tile: 64, overlap: 16, multiple: 8 });
    expect([plan.tileWidth, plan.tileHeight, plan.tiles.length]).toEqual([32, 16, 1]);
    expect(defaultOverlap(47, 4)).toBe(48);
    expect(defaultOverlap(215, 16)).toBe(224);
  });

  it('names the option, the expectation and the value', () => {
    expect(() => checkTileOptions(100, 0, 16)).toThrow(
      'Expected tile to be a positive multiple of 16 (the architecture\u2019s input multiple) but received 100.'.replace(
        '\u2019',
        "'",
      ),
    );
    expect(() => checkTileOptions(64, 64, 16)).toThrow(
      /Expected overlap to be a multiple of 16 between 0 and 48 but received 64/,
    );
  });
});

describe('tissue detection', () => {
  it('thresholds saturation with Otsu and skips tiles on glass', () => {
    expect(otsuThreshold([10, 10, 12, 200, 202, 199])).toBeGreaterThanOrEqual(12);
    // 40x20 thumbnail: left half pink tissue, right half white glass.
    const data = new Uint8Array(40 * 20 * 3);
    for (let i = 0; i < 40 * 20; i++) {
      const tissue = i % 40 < 20;
      data.set(tissue ? [200, 100, 180] : [245, 245, 243], i * 3);
    }
    const mask = tissueMask({ data, width: 40, height: 20, channels: 3 });
    expect(mask[5 * 40 + 3]).toBe(1);
    expect(mask[5 * 40 + 30]).toBe(0);
    const plan = splitLevel({ width: 400, height: 200, tile: 64, overlap: 0, multiple: 4 });
    const kept = markTissue(plan, mask, 40, 20);
    expect(kept).toBeGreaterThan(0);
    expect(plan.tiles.find((t) => t.x >= 256)?.tissue).toBe(false);
    expect(plan.tiles.find((t) => t.x === 0)?.tissue).toBe(true);
  });
});

describe('BandMerger', () => {
  it('emits each row once, in order, holding only a few tile rows', () => {
    const plan = splitLevel({ width: 100, height: 300, tile: 32, overlap: 16, multiple: 4, context: 8 });
    const bands: Band[] = [];
    const merger = new BandMerger({ plan, numClasses: 2, blend: 'constant', onBand: (b) => bands.push(b) });
    for (const tile of plan.tiles) {
      // Class 1 probability = image row / 300, so blending must reproduce it exactly.
      const probs = new Float32Array(32 * 32 * 2);
      for (let y = 0; y < 32; y++)
        for (let x = 0; x < 32; x++) {
          probs[(y * 32 + x) * 2 + 1] = (tile.y + y) / 300;
          probs[(y * 32 + x) * 2] = 1 - (tile.y + y) / 300;
        }
      if (tile.row === 3 && tile.column === 2) merger.skip(tile);
      else merger.aggregate(tile, probs);
    }
    expect(merger.complete).toBe(true);
    expect(bands.map((b) => b.y)).toEqual(bands.map((_, i) => bands.slice(0, i).reduce((s, b) => s + b.height, 0)));
    expect(bands.reduce((s, b) => s + b.height, 0)).toBe(300);
    expect(merger.peakRows).toBeLessThanOrEqual(64);
    for (const band of bands) {
      for (let i = 0; i < band.labels.length; i++) {
        expect(band.labels[i]).toBe(band.probabilities[2 * i + 1] > band.probabilities[2 * i] ? 1 : 0);
      }
    }
    const last = bands[bands.length - 1];
    const y = last.y + last.height - 1;
    expect(last.probabilities[((last.height - 1) * 100 + 50) * 2 + 1]).toBeCloseTo(y / 300, 6);
    expect(last.labels[(last.height - 1) * 100 + 50]).toBe(1);
  });
});

describe('BandMerger order and resumption', () => {
  const plan = splitLevel({ width: 90, height: 170, tile: 32, overlap: 16, multiple: 4, context: 8 });
  // Pseudo-random probabilities per tile, so floating-point sums depend on the order they are added in.
  const tileProbabilities = plan.tiles.map((tile) => {
    const values = new Float32Array(32 * 32 * 3);
    let seed = tile.index + 1;
    for (let i = 0; i < values.length; i++) {
      seed = (seed * 48271) % 2147483647;
      values[i] = (seed % 1000) / 999;
    }
    return values;
  });

  function merge(order: number[], startRow = 0, maxBandRows?: number) {
    const bands: Band[] = [];
    const merger = new BandMerger({ plan, numClasses: 3, startRow, maxBandRows, onBand: (b) => bands.push(b) });
    for (const i of order) merger.aggregate(plan.tiles[i], tileProbabilities[i]);
    expect(merger.complete).toBe(true);
    const rows = 170 - startRow;
    const probabilities = new Float32Array(rows * 90 * 3);
    const labels = new Uint8Array(rows * 90);
    expect(bands[0].y).toBe(startRow);
    for (const band of bands) {
      probabilities.set(band.probabilities, (band.y - startRow) * 90 * 3);
      labels.set(band.labels, (band.y - startRow) * 90);
    }
    return { probabilities, labels };
  }

  it('blends tiles in plan order whatever order they arrive in (the same bits)', () => {
    const inOrder = merge(plan.tiles.map((t) => t.index));
    const shuffled = plan.tiles.map((t) => t.index);
    for (let i = shuffled.length - 1; i > 0; i--) {
      const j = (i * 7919) % (i + 1);
      [shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
    }
    const outOfOrder = merge(shuffled);
    expect(Buffer.from(outOfOrder.probabilities.buffer).equals(Buffer.from(inOrder.probabilities.buffer))).toBe(true);
    expect(Buffer.from(outOfOrder.labels).equals(Buffer.from(inOrder.labels))).toBe(true);
  });

  it('hands out the same rows in bands of at most maxBandRows', () => {
    const whole = merge(
      plan.tiles.map((t) => t.index),
      0,
      1000,
    );
    const bands: Band[] = [];
    const merger = new BandMerger({ plan, numClasses: 3, maxBandRows: 7, onBand: (b) => bands.push(b) });
    for (const tile of plan.tiles) merger.aggregate(tile, tileProbabilities[tile.index]);
    expect(Math.max(...bands.map((b) => b.height))).toBe(7);
    const small = merge(
      plan.tiles.map((t) => t.index),
      0,
      7,
    );
    expect(Buffer.from(small.probabilities.buffer).equals(Buffer.from(whole.probabilities.buffer))).toBe(true);
    expect(Buffer.from(small.labels).equals(Buffer.from(whole.labels))).toBe(true);
    expect(() => new BandMerger({ plan, numClasses: 3, maxBandRows: 0, onBand: () => {} })).toThrow(
      /expected maxBandRows to be a positive integer but received 0/,
    );
  });

  it('hands out the same labels without probabilities when asked to', () => {
    const whole = merge(plan.tiles.map((t) => t.index));
    const bands: Band[] = [];
    const merger = new BandMerger({ plan, numClasses: 3, probabilities: false, onBand: (b) => bands.push(b) });
    for (const tile of plan.tiles) merger.aggregate(tile, tileProbabilities[tile.index]);
    const labels = new Uint8Array(170 * 90);
    for (const band of bands) {
      expect(band.probabilities).toHaveLength(0);
      labels.set(band.labels, band.y * 90);
    }
    expect(Buffer.from(labels).equals(Buffer.from(whole.labels))).toBe(true);
  });

  it('starts at a finished row given only the tiles that reach below it, with the same bits', () => {
    const full = merge(plan.tiles.map((t) => t.index));
    const startRow = plan.keptRowEnds[3] + 5; // inside tile row 4's kept rows
    const bands: Band[] = [];
    const merger = new BandMerger({ plan, numClasses: 3, startRow, onBand: (b) => bands.push(b) });
    for (const tile of plan.tiles) {
      if (plan.keptRowEnds[tile.row] > startRow) merger.aggregate(tile, tileProbabilities[tile.index]);
      else merger.skip(tile);
    }
    expect(bands[0].y).toBe(startRow);
    expect(bands.reduce((n, b) => n + b.height, 0)).toBe(170 - startRow);
    const tail = full.probabilities.subarray(startRow * 90 * 3);
    const resumed = new Float32Array(tail.length);
    for (const band of bands) resumed.set(band.probabilities, (band.y - startRow) * 90 * 3);
    expect(Buffer.from(resumed.buffer).equals(Buffer.from(tail.slice().buffer))).toBe(true);
    expect(() => merger.skip(plan.tiles[0])).toThrow(/tile 0 was received twice/);
    expect(() => new BandMerger({ plan, numClasses: 3, startRow: 171, onBand: () => {} })).toThrow(
      /expected startRow between 0 and 170 but received 171/,
    );
  });
});

describe('RowPool', () => {
  it('hands out zeroed rows of the width asked for and reuses them', () => {
    const pool = new RowPool(10, 3);
    const row = pool.take(10);
    expect([row.sum.length, row.weight.length]).toEqual([30, 10]);
    row.sum.fill(7);
    row.weight.fill(7);
    pool.give(row);
    const narrow = pool.take(4);
    expect([narrow.sum.length, narrow.weight.length]).toEqual([12, 4]);
    expect(narrow.sum.buffer).toBe(row.sum.buffer);
    expect([...narrow.sum, ...narrow.weight].every((v) => v === 0)).toBe(true);
    expect(pool.take(10).sum.buffer).not.toBe(row.sum.buffer);
    expect(pool.allocated).toBe(2);
    expect(() => pool.take(11)).toThrow(/expected a row width between 1 and 10 but received 11/);
    expect(() => new RowPool(0, 2)).toThrow(/expected a positive integer width and numClasses but received 0 and 2/);
  });

  it('lets the mergers of the stripes of a slide share the rows of the widest one, with the same bits', () => {
    const plan = splitLevel({ width: 700, height: 200, tile: 64, overlap: 32, multiple: 8, context: 16 });
    const stripes = splitStripes(plan, 300);
    expect(stripes.length).toBeGreaterThanOrEqual(3);
    const probabilities = (x: number, y: number) =>
      new Float32Array(64 * 64 * 2).map((_, i) => ((x * 31 + y * 17 + i) % 97) / 96);
    const run = (pool?: RowPool) => {
      const labels = new Uint8Array(700 * 200);
      const values = new Float32Array(700 * 200 * 2);
      let peak = 0;
      for (const stripe of stripes) {
        const merger = new BandMerger({
          plan: stripe.plan,
          numClasses: 2,
          x: stripe.x,
          pool,
          onBand: (band) => {
            for (let r = 0; r < band.height; r++) {
              const at = (band.y + r) * 700 + band.x;
              labels.set(band.labels.subarray(r * band.width, (r + 1) * band.width), at);
              values.set(band.probabilities.subarray(r * band.width * 2, (r + 1) * band.width * 2), at * 2);
            }
          },
        });
        stripe.plan.tiles.forEach((t, i) => merger.aggregate(t, probabilities(stripe.tiles[i].x, t.y)));
        expect(merger.complete).toBe(true);
        peak = Math.max(peak, merger.peakRows);
      }
      return { labels, values, peak };
    };
    const pool = new RowPool(Math.max(...stripes.map((s) => s.width)), 2);
    const shared = run(pool);
    const own = run();
    expect(Buffer.from(shared.values.buffer).equals(Buffer.from(own.values.buffer))).toBe(true);
    expect(Buffer.from(shared.labels).equals(Buffer.from(own.labels))).toBe(true);
    expect(pool.allocated).toBe(shared.peak);
    expect(
      () => new BandMerger({ plan: stripes[0].plan, numClasses: 2, pool: new RowPool(10, 2), onBand: () => {} }),
    ).toThrow(/expected a pool of rows at least \d+ px wide with 2 classes but received one of 10 px with 2/);
  });
});

describe('splitStripes', () => {
  it.each([1, 100, 333, 1000, 5000])(
    'cuts a plan into stripes of at most %i px that cover every column once',
    (max) => {
      const plan = splitLevel({ width: 2500, height: 300, tile: 256, overlap: 64, multiple: 8, context: 24 });
      const stripes = splitStripes(plan, max);
      expect(stripes[0].x).toBe(0);
      for (const [i, stripe] of stripes.entries()) {
        expect(stripe.index).toBe(i);
        if (i > 0) expect(stripe.x).toBe(stripes[i - 1].x + stripes[i - 1].width);
        // At most max wide, unless one tile column's kept pixels are wider.
        if (stripe.width > max) expect(stripe.plan.columns).toBeLessThanOrEqual(2);
        expect(stripe.plan.width).toBe(stripe.width);
        expect(stripe.plan.tiles).toHaveLength(stripe.plan.columns * plan.rows);
        // Exactly the tiles whose kept columns reach into the stripe, with x relative to it.
        const reaching = plan.tiles.filter(
          (t) => t.x + t.trim.left < stripe.x + stripe.width && t.x + plan.tileWidth - t.trim.right > stripe.x,
        );
        expect(stripe.tiles).toEqual(reaching);
        stripe.plan.tiles.forEach((t, j) => {
          expect(t.index).toBe(j);
          expect(t.x).toBe(stripe.tiles[j].x - stripe.x);
        });
      }
      const last = stripes[stripes.length - 1];
      expect(last.x + last.width).toBe(2500);
      if (max >= 2500) expect(stripes).toHaveLength(1);
      expect(() => splitStripes(plan, 0)).toThrow(/Expected a stripe width that is a positive integer but received 0/);
    },
  );
});
