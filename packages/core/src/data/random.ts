/**
 * Seeded pseudo-random numbers for data sampling and augmentation.
 *
 * The generator is sfc32 (Chris Doty-Humphrey's Small Fast Counting generator, 128-bit state), seeded through
 * splitmix32 so that nearby seeds (0, 1, 2...) give unrelated streams. It is not cryptographic.
 */

import { InvalidOptionError, describeValue } from '../errors.js';

/**
 * A deterministic source of random numbers. Two generators made from the same seed (or the same state) return the
 * same sequence on every platform.
 */
export interface Random {
  /** A uniform number in `[0, 1)` with 32 bits of resolution. */
  next(): number;
  /**
   * A uniform integer in `[0, maxExclusive)`.
   * @throws {@link InvalidOptionError} when `maxExclusive` is not a positive integer up to 2^32.
   */
  int(maxExclusive: number): number;
  /**
   * A uniform number in `[lo, hi)`; `lo` when `lo === hi`.
   * @throws {@link InvalidOptionError} when a bound is not finite or `hi < lo`.
   */
  uniform(lo: number, hi: number): number;
  /**
   * A normally distributed number (Box–Muller; consumes two `next()` draws).
   * @param mean - Default `0`.
   * @param std - Default `1`; must be finite and `>= 0`.
   */
  normal(mean?: number, std?: number): number;
  /**
   * An independent generator derived from this one's current state and `label` (numbers and strings are hashed
   * through their decimal text, so `1` and `'1'` give the same stream). Forking does not advance this generator:
   * the same label on the same state always gives the same child stream, so `root.fork(epoch).fork(index)` is
   * reproducible whatever order work is done in.
   */
  fork(label: string | number): Random;
  /** A copy of the 128-bit state as four unsigned 32-bit integers, for {@link restoreRandom}. */
  state(): number[];
}

/** One splitmix32 step: returns the next state and its mixed output. */
function splitmix32(x: number): [next: number, out: number] {
  const next = (x + 0x9e3779b9) >>> 0;
  let z = next;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  z = (z ^ (z >>> 16)) >>> 0;
  return [next, z];
}

/** 32-bit FNV-1a hash of a string's UTF-16 code units. */
function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** Fills a 4-word state from a 32-bit seed with splitmix32. */
function stateFromSeed(seed32: number): Uint32Array {
  const s = new Uint32Array(4);
  let x = seed32 >>> 0;
  for (let i = 0; i < 4; i++) {
    const [next, out] = splitmix32(x);
    x = next;
    s[i] = out;
  }
  return s;
}

class Sfc32 implements Random {
  private readonly s: Uint32Array;

  /** `warmUp` discards the first outputs so that the seed has mixed into every word of the state. */
  constructor(state: Uint32Array, warmUp: boolean) {
    this.s = state;
    if ((state[0] | state[1] | state[2] | state[3]) === 0) state[3] = 1;
    if (warmUp) for (let i = 0; i < 12; i++) this.nextUint32();
  }

  nextUint32(): number {
    const s = this.s;
    const a = s[0];
    const b = s[1];
    const c = s[2];
    const d = s[3];
    const t = (((a + b) >>> 0) + d) >>> 0;
    s[3] = (d + 1) >>> 0;
    s[0] = b ^ (b >>> 9);
    s[1] = (c + (c << 3)) >>> 0;
    s[2] = (((c << 21) | (c >>> 11)) + t) >>> 0;
    return t;
  }

  next(): number {
    return this.nextUint32() / 4294967296;
  }

  int(maxExclusive: number): number {
    if (!Number.isInteger(maxExclusive) || maxExclusive < 1 || maxExclusive > 4294967296) {
      throw new InvalidOptionError(
        `Random.int(maxExclusive): expected an integer between 1 and 4294967296 for maxExclusive ` +
          `but received ${describeValue(maxExclusive)}.`,
        'Pass the number of choices, e.g. rng.int(array.length) with a non-empty array.',
      );
    }
    return Math.floor(this.next() * maxExclusive);
  }

  uniform(lo: number, hi: number): number {
    if (!Number.isFinite(lo) || !Number.isFinite(hi) || hi < lo) {
      throw new InvalidOptionError(
        `Random.uniform(lo, hi): expected finite bounds with lo <= hi but received lo ${describeValue(lo)} ` +
          `and hi ${describeValue(hi)}.`,
        'Swap the bounds or pass finite numbers.',
      );
    }
    return lo + (hi - lo) * this.next();
  }

  normal(mean = 0, std = 1): number {
    if (!Number.isFinite(mean) || !Number.isFinite(std) || std < 0) {
      throw new InvalidOptionError(
        `Random.normal(mean, std): expected a finite mean and a finite std >= 0 but received mean ` +
          `${describeValue(mean)} and std ${describeValue(std)}.`,
        'Pass a non-negative standard deviation.',
      );
    }
    // 1 - next() lies in (0, 1], so the logarithm is finite.
    const u1 = 1 - this.next();
    const u2 = this.next();
    return mean + std * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }

  fork(label: string | number): Random {
    // Chain splitmix32 through the label hash and every state word: each child word depends on all of them.
    const words = [fnv1a(String(label)), this.s[0], this.s[1], this.s[2], this.s[3]];
    let x = 0x243f6a88;
    for (const w of words) x = splitmix32((x ^ w) >>> 0)[1];
    const child = new Uint32Array(4);
    for (let i = 0; i < 4; i++) {
      const [next, out] = splitmix32((x ^ words[i + 1]) >>> 0);
      x = next;
      child[i] = out;
    }
    return new Sfc32(child, true);
  }

  state(): number[] {
    return Array.from(this.s);
  }
}

/**
 * Creates a seeded generator.
 * @param seed - Any safe integer (negative and above 2^32 included); different seeds give unrelated streams.
 * @throws {@link InvalidOptionError} when `seed` is not a safe integer.
 * @example
 * const rng = createRandom(42);
 * const x = rng.uniform(-1, 1);
 * const epochRng = rng.fork(3); // same stream for epoch 3 on every run
 */
export function createRandom(seed: number): Random {
  if (!Number.isSafeInteger(seed)) {
    throw new InvalidOptionError(
      `createRandom(seed): expected a safe integer for seed but received ${describeValue(seed)}.`,
      'Pass an integer seed such as 42 (e.g. --seed 42).',
    );
  }
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 4294967296) >>> 0;
  const [, mixedHi] = splitmix32(hi ^ 0x6a09e667);
  return new Sfc32(stateFromSeed((lo ^ mixedHi) >>> 0), true);
}

/**
 * Re-creates a generator from a saved {@link Random.state} so that it continues the same sequence.
 * @param state - Four unsigned 32-bit integers, not all zero.
 * @throws {@link InvalidOptionError} when `state` does not have that shape.
 * @example
 * const saved = rng.state();
 * const again = restoreRandom(saved); // again.next() === rng.next()
 */
export function restoreRandom(state: readonly number[]): Random {
  const valid =
    Array.isArray(state) &&
    state.length === 4 &&
    state.every((v) => Number.isInteger(v) && v >= 0 && v <= 0xffffffff) &&
    state.some((v) => v !== 0);
  if (!valid) {
    throw new InvalidOptionError(
      `restoreRandom(state): expected 4 unsigned 32-bit integers, not all zero, but received ${describeValue(state)}.`,
      'Pass the array returned by rng.state().',
    );
  }
  return new Sfc32(Uint32Array.from(state), false);
}

/**
 * Shuffles `array` in place (Fisher–Yates) and returns it.
 * @example
 * shuffle([1, 2, 3, 4], createRandom(7));
 */
export function shuffle<T>(array: T[], rng: Random): T[] {
  for (let i = array.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const tmp = array[i];
    array[i] = array[j];
    array[j] = tmp;
  }
  return array;
}
