import { describe, expect, it } from 'vitest';
import { InvalidOptionError } from '../errors.js';
import { blendWeights, ImageMerger, tileWeights } from './merger.js';
import { padReflect, planImage, predictProbabilities, reflectIndex, type FloatImage } from './predict.js';
import type { Predictor } from './predictor.js';
import { checkTileOptions, defaultOverlap, receptiveContext, resolveTiling, splitImage } from './splitter.js';

/** A network of receptive field 1: class 1 = sigmoid(channel 0), class 0 = 1 - that. Records the batch shapes. */
function pointwise(): Predictor & { shapes: number[][] } {
  const shapes: number[][] = [];
  return {
    runtime: 'test',
    description: 'pointwise sigmoid',
    shapes,
    async run(batch, shape) {
      shapes.push([...shape]);
      const c = shape[3];
      const out = new Float32Array((batch.length / c) * 2);
      for (let i = 0; i < batch.length / c; i++) {
        const p = 1 / (1 + Math.exp(-batch[i * c]));
        out[2 * i] = 1 - p;
        out[2 * i + 1] = p;
      }
      return out;
    },
    async dispose() {},
  };
}

function image(width: number, height: number, channels = 2): FloatImage {
  const data = Float32Array.from({ length: width * height * channels }, (_, i) => Math.sin(i * 0.37) * 3);
  return { data, width, height, channels };
}

describe('splitter', () => {
  it('derives overlap and trimmed context from the receptive field, as for slides', () => {
    expect(resolveTiling({ multiple: 16, receptiveField: 215 })).toEqual({ tile: 512, overlap: 224, context: 112 });
    expect(resolveTiling({ multiple: 4, receptiveField: 47, tile: 64 })).toEqual({
      tile: 64,
      overlap: 48,
      context: 24,
    });
    expect(defaultOverlap(47, 4)).toBe(2 * receptiveContext(47, 4));
    // Without a receptive field: a quarter of the tile, on the multiple, and half of it trimmed.
    expect(resolveTiling({ multiple: 16, tile: 96 })).toEqual({ tile: 96, overlap: 16, context: 8 });
  });

  it('names the option, the expectation and the value', () => {
    expect(() => checkTileOptions(100, 0, 16)).toThrow(
      "Expected tile to be a positive multiple of 16 (the architecture's input multiple) but received 100.",
    );
    expect(() => resolveTiling({ multiple: 8, tile: 64, overlap: 12 })).toThrow(
      'Expected overlap to be a multiple of 8 between 0 and 56 but received 12.',
    );
    expect(() => resolveTiling({ multiple: 16, receptiveField: 215, tile: 128 })).toThrow(
      "The model's receptive field (215 px) needs neighbouring tiles to share 224 px, which is not smaller than tile 128.",
    );
    expect(() => checkTileOptions(64, 64, 16)).toThrow(InvalidOptionError);
  });

  it('starts tiles on the input multiple and keeps every pixel when overlap = 2 * context', () => {
    const plan = splitImage({ width: 203, height: 150, tile: 64, overlap: 48, multiple: 4, context: 24 });
    expect(plan.rowStarts).toEqual([0, 16, 32, 48, 64, 80, 88]);
    expect(plan.tiles.every((t) => t.x % 4 === 0 && t.y % 4 === 0)).toBe(true);
    const coverage = new Uint8Array(203 * 150);
    for (const t of plan.tiles) {
      for (let y = t.y + t.trim.top; y < Math.min(150, t.y + 64 - t.trim.bottom); y++)
        for (let x = t.x + t.trim.left; x < Math.min(203, t.x + 64 - t.trim.right); x++) coverage[y * 203 + x]++;
    }
    expect(Math.min(...coverage)).toBe(1);
    // More than once only where the last tile row (from 88) or column (from 140), flush with the edge, overlaps its
    // neighbour by more than the overlap: kept from 88 + 24 and 140 + 24 on.
    expect(coverage.subarray(0, 112 * 203).every((c, i) => c === 1 || i % 203 >= 164)).toBe(true);
    expect(plan.tiles[1].trim).toEqual({ top: 0, bottom: 24, left: 24, right: 24 });
  });

  it('plans one tile of the whole image without a tile, the slide tiling with one', () => {
    const whole = planImage(203, 150, { multiple: 8 });
    expect([whole.tiles.length, whole.tileWidth, whole.tileHeight]).toEqual([1, 208, 152]);
    const tiled = planImage(203, 150, { multiple: 4, receptiveField: 47, tile: 64 });
    expect(tiled).toEqual(splitImage({ width: 203, height: 150, tile: 64, overlap: 48, multiple: 4, context: 24 }));
    expect(planImage(203, 150, { multiple: 4, maxWholePixels: 1000 }).tileWidth).toBe(204);
    expect(planImage(2000, 1000, { multiple: 16, receptiveField: 40, maxWholePixels: 1000 }).tileWidth).toBe(512);
  });

  it('mirrors without repeating the edge pixel', () => {
    expect([-2, -1, 0, 1, 2, 3, 4, 5, 6].map((i) => reflectIndex(i, 3))).toEqual([2, 1, 0, 1, 2, 1, 0, 1, 2]);
    const padded = padReflect({ data: Float32Array.from([1, 2, 3]), width: 3, height: 1, channels: 1 }, 2, 5);
    expect([...padded.data]).toEqual([1, 2, 3, 2, 1, 1, 2, 3, 2, 1]);
  });
});

describe('merger', () => {
  it('has Gaussian weights that fall to at least 1e-3 at the edges, and constant ones', () => {
    // sigma = side / 8 around the centre: exp(-3.5^2 / 2) along 8 px, exp(-1.5^2 / 0.5) along 4 px.
    const w = tileWeights(8, 4, 'gaussian');
    expect(w.length).toBe(32);
    expect(w[0]).toBeCloseTo(Math.exp(-6.125) * Math.exp(-4.5), 10);
    expect(w[1 * 8 + 3]).toBeCloseTo(Math.exp(-0.125) * Math.exp(-0.5), 6);
    // 32 px: exp(-15.5^2 / 32) < 1e-3 at the edge, so the floor holds.
    expect(Math.min(...tileWeights(32, 32))).toBeCloseTo(1e-6, 12);
    expect([...blendWeights(6)]).toEqual([...tileWeights(6, 6)]);
    expect([...tileWeights(3, 2, 'constant')]).toEqual([1, 1, 1, 1, 1, 1]);
    expect(() => tileWeights(3, 3, 'box' as 'constant')).toThrow('Expected blend "gaussian" or "constant"');
  });

  it('blends tiles of the same field back into the field, in plan order whatever the arrival order', () => {
    const plan = splitImage({ width: 90, height: 70, tile: 32, overlap: 16, multiple: 4, context: 4 });
    const field = (x: number, y: number, q: number) => (q === 0 ? x / 90 : y / 70);
    const tileOf = (t: (typeof plan.tiles)[number]) => {
      const p = new Float32Array(32 * 32 * 2);
      for (let y = 0; y < 32; y++)
        for (let x = 0; x < 32; x++) for (let q = 0; q < 2; q++) p[(y * 32 + x) * 2 + q] = field(t.x + x, t.y + y, q);
      return p;
    };
    const inOrder = new ImageMerger({ plan, numClasses: 2 });
    for (const t of plan.tiles) inOrder.aggregate(t, tileOf(t));
    const shuffled = new ImageMerger({ plan, numClasses: 2 });
    const order = plan.tiles.map((t) => t.index).sort((a, b) => ((a * 7) % 11) - ((b * 7) % 11) || a - b);
    for (const i of order) shuffled.aggregate(plan.tiles[i], tileOf(plan.tiles[i]));
    const a = inOrder.finalize();
    const b = shuffled.finalize();
    expect(b.probabilities).toEqual(a.probabilities);
    for (let y = 0; y < 70; y++)
      for (let x = 0; x < 90; x++) {
        expect(a.probabilities[(y * 90 + x) * 2]).toBeCloseTo(x / 90, 6);
        expect(a.labels[y * 90 + x]).toBe(y / 70 > x / 90 ? 1 : 0);
      }
    expect(() => inOrder.aggregate(plan.tiles[0], tileOf(plan.tiles[0]))).toThrow('tile 0 was received twice');
    expect(() => new ImageMerger({ plan, numClasses: 2 }).finalize()).toThrow(
      `${plan.tiles.length} tile(s) of the plan were not aggregated`,
    );
  });
});

describe('predictProbabilities', () => {
  it('gives the network output bit for bit for an image predicted in one pass', async () => {
    const img = image(30, 21);
    const net = pointwise();
    const probs = await predictProbabilities(net, img, { multiple: 8 });
    expect(net.shapes).toEqual([[1, 24, 32, 2]]);
    const padded = padReflect(img, 24, 32);
    const direct = await pointwise().run(padded.data, [1, 24, 32, 2]);
    const expected = new Float32Array(30 * 21 * 2);
    for (let y = 0; y < 21; y++) expected.set(direct.subarray(y * 32 * 2, (y * 32 + 30) * 2), y * 30 * 2);
    expect(probs).toEqual(expected);
  });

  it('cuts tiles on the input multiple with the receptive-field overlap, and blends them', async () => {
    const img = image(203, 150);
    const net = pointwise();
    const probs = await predictProbabilities(net, img, { multiple: 4, receptiveField: 47, tile: 64, batchSize: 5 });
    const plan = planImage(203, 150, { multiple: 4, receptiveField: 47, tile: 64 });
    expect(plan.overlap).toBe(48);
    // 7 rows (0, 16, ..., 80, 88) x 10 columns (0, 16, ..., 128, 140) of 64 x 64 tiles, in batches of 5.
    expect([plan.rows, plan.columns]).toEqual([7, 10]);
    expect(plan.tiles.map((t) => t.x).slice(0, 10)).toEqual([0, 16, 32, 48, 64, 80, 96, 112, 128, 140]);
    expect(net.shapes.map((s) => s[0])).toEqual(new Array<number>(14).fill(5));
    expect(net.shapes.every((s) => s[1] === 64 && s[2] === 64 && s[3] === 2)).toBe(true);
    let maxDiff = 0;
    for (let i = 0; i < 203 * 150; i++) {
      const p = 1 / (1 + Math.exp(-img.data[i * 2]));
      maxDiff = Math.max(maxDiff, Math.abs(probs[i * 2 + 1] - p));
    }
    expect(maxDiff).toBeLessThan(1e-6);
  });

  it('refuses a tile that is not on the input multiple', async () => {
    await expect(predictProbabilities(pointwise(), image(40, 40), { multiple: 16, tile: 100 })).rejects.toThrow(
      "Expected tile to be a positive multiple of 16 (the architecture's input multiple) but received 100.",
    );
  });
});
