import { describe, expect, it } from 'vitest';
import { InvalidOptionError } from '../errors.js';
import { createRandom, restoreRandom, shuffle } from './random.js';

function draws(seed: number, n: number): number[] {
  const rng = createRandom(seed);
  return Array.from({ length: n }, () => rng.next());
}

function correlation(a: number[], b: number[]): number {
  const n = a.length;
  const ma = a.reduce((s, v) => s + v, 0) / n;
  const mb = b.reduce((s, v) => s + v, 0) / n;
  let cov = 0;
  let va = 0;
  let vb = 0;
  for (let i = 0; i < n; i++) {
    cov += (a[i] - ma) * (b[i] - mb);
    va += (a[i] - ma) ** 2;
    vb += (b[i] - mb) ** 2;
  }
  return cov / Math.sqrt(va * vb);
}

describe('createRandom', () => {
  it('is deterministic for a seed and differs between seeds', () => {
    expect(draws(42, 100)).toEqual(draws(42, 100));
    const a = draws(1, 100);
    const b = draws(2, 100);
    expect(a.filter((v, i) => v === b[i]).length).toBe(0);
    expect(Math.abs(correlation(a, b))).toBeLessThan(0.3);
    // Seeds beyond 32 bits and negative seeds are used in full.
    expect(draws(2 ** 40 + 1, 5)).not.toEqual(draws(1, 5));
    expect(draws(-1, 5)).not.toEqual(draws(2 ** 32 - 1, 5));
  });

  it('next() stays in [0, 1) with a uniform mean and spread', () => {
    const v = draws(7, 20000);
    expect(Math.min(...v)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...v)).toBeLessThan(1);
    const mean = v.reduce((s, x) => s + x, 0) / v.length;
    expect(mean).toBeCloseTo(0.5, 1);
    const bins = new Array(10).fill(0);
    for (const x of v) bins[Math.floor(x * 10)]++;
    for (const count of bins) expect(Math.abs(count - 2000)).toBeLessThan(200);
  });

  it('int() covers exactly 0..max-1 and uniform() stays within its bounds', () => {
    const rng = createRandom(3);
    const seen = new Set<number>();
    for (let i = 0; i < 2000; i++) seen.add(rng.int(6));
    expect([...seen].sort()).toEqual([0, 1, 2, 3, 4, 5]);
    for (let i = 0; i < 1000; i++) {
      const u = rng.uniform(-2, 3);
      expect(u).toBeGreaterThanOrEqual(-2);
      expect(u).toBeLessThan(3);
    }
    expect(rng.uniform(4, 4)).toBe(4);
    expect(rng.int(1)).toBe(0);
  });

  it('normal() has the requested mean and standard deviation', () => {
    const rng = createRandom(11);
    const v = Array.from({ length: 20000 }, () => rng.normal(3, 2));
    const mean = v.reduce((s, x) => s + x, 0) / v.length;
    const std = Math.sqrt(v.reduce((s, x) => s + (x - mean) ** 2, 0) / v.length);
    expect(mean).toBeCloseTo(3, 1);
    expect(std).toBeGreaterThan(1.9);
    expect(std).toBeLessThan(2.1);
    expect(v.every(Number.isFinite)).toBe(true);
  });

  it('fork() is deterministic, independent of the parent and of other labels, and leaves the parent alone', () => {
    const parent = createRandom(5);
    const before = parent.state();
    const a1 = parent.fork('a');
    const a2 = parent.fork('a');
    const b = parent.fork('b');
    expect(parent.state()).toEqual(before);
    const sa1 = Array.from({ length: 1000 }, () => a1.next());
    const sa2 = Array.from({ length: 1000 }, () => a2.next());
    const sb = Array.from({ length: 1000 }, () => b.next());
    const sp = Array.from({ length: 1000 }, () => parent.next());
    expect(sa1).toEqual(sa2);
    expect(sa1.filter((v, i) => v === sb[i]).length).toBe(0);
    expect(Math.abs(correlation(sa1, sb))).toBeLessThan(0.1);
    expect(Math.abs(correlation(sa1, sp))).toBeLessThan(0.1);
    // Drawing from a child does not move the parent, and forks of numbers label distinct streams.
    const p2 = createRandom(5);
    p2.fork(1).next();
    expect(p2.next()).toBe(sp[0]);
    expect(p2.fork(1).next()).not.toBe(p2.fork(2).next());
    // A fork depends on the parent's state, not only on the label.
    expect(createRandom(6).fork('a').next()).not.toBe(createRandom(5).fork('a').next());
  });

  it('state() and restoreRandom() continue the same sequence', () => {
    const rng = createRandom(9);
    rng.next();
    const saved = rng.state();
    expect(saved).toHaveLength(4);
    const expected = [rng.next(), rng.next(), rng.normal()];
    const again = restoreRandom(saved);
    expect([again.next(), again.next(), again.normal()]).toEqual(expected);
  });

  it('rejects invalid arguments with messages that name the parameter and the value', () => {
    expect(() => createRandom(1.5)).toThrow(InvalidOptionError);
    expect(() => createRandom(1.5)).toThrow('expected a safe integer for seed but received 1.5 of type number');
    const rng = createRandom(1);
    expect(() => rng.int(0)).toThrow('expected an integer between 1 and 4294967296 for maxExclusive but received 0');
    expect(() => rng.uniform(2, 1)).toThrow('lo 2 of type number and hi 1 of type number');
    expect(() => rng.normal(0, -1)).toThrow('std -1 of type number');
    expect(() => restoreRandom([0, 0, 0, 0])).toThrow('expected 4 unsigned 32-bit integers, not all zero');
  });
});

describe('shuffle', () => {
  it('permutes in place, deterministically, and reaches every position', () => {
    const a = Array.from({ length: 20 }, (_, i) => i);
    const same = shuffle(a, createRandom(1));
    expect(same).toBe(a);
    expect([...a].sort((x, y) => x - y)).toEqual(Array.from({ length: 20 }, (_, i) => i));
    expect(a).not.toEqual(Array.from({ length: 20 }, (_, i) => i));
    expect(
      shuffle(
        Array.from({ length: 20 }, (_, i) => i),
        createRandom(1),
      ),
    ).toEqual(a);
    // Over many shuffles, element 0 lands in each of 4 positions about equally often.
    const rng = createRandom(2);
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < 4000; i++) counts[shuffle([0, 1, 2, 3], rng).indexOf(0)]++;
    for (const c of counts) expect(Math.abs(c - 1000)).toBeLessThan(120);
    expect(shuffle([], rng)).toEqual([]);
  });
});
