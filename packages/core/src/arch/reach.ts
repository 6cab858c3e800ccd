/**
 * Receptive-field arithmetic: how far a feature pixel reaches into the input, walked along the same plan a network is
 * built from. Pixel `i` of a map of stride `s` depends on input pixels `[s*i - a, s*i + b]`.
 */

/** The input interval one pixel of a feature map depends on (see the module comment). */
export interface Reach {
  /** Stride of the map relative to the input. */
  s: number;
  /** Pixels reached before (above / left of) `s * i`. */
  a: number;
  /** Pixels reached after (below / right of) `s * i`. */
  b: number;
}

/** The input itself. */
export const INPUT_REACH: Readonly<Reach> = { s: 1, a: 0, b: 0 };

/**
 * A 'same'-padded convolution or pooling of kernel `k`, stride `t` and dilation `rate` (on even sizes tfjs pads
 * `floor((k - t) / 2)` before a strided window).
 */
export function reachConv(p: Reach, k: number, t = 1, rate = 1): Reach {
  if (t === 1) {
    return { s: p.s, a: p.a + p.s * rate * Math.floor((k - 1) / 2), b: p.b + p.s * rate * Math.ceil((k - 1) / 2) };
  }
  const before = Math.max(0, Math.floor((k - t) / 2));
  return { s: p.s * t, a: p.a + p.s * before, b: p.b + p.s * (k - 1 - before) };
}

/** A `k` x `k` transposed convolution of stride `t` with 'same' padding (tfjs pads `floor((k - t) / 2)` before). */
export function reachTransposed(p: Reach, k: number, t: number): Reach {
  const s = p.s / t;
  const before = Math.floor((k - t) / 2);
  return { s, a: p.a + s * (k - 1 - before), b: p.b + s * before };
}

/** Bilinear upsampling by `f` without half-pixel centres: fine pixel `o` reads coarse pixels `floor(o / f)` and the next. */
export function reachUpsample(p: Reach, f: number): Reach {
  const s = p.s / f;
  return { s, a: p.a + s * (f - 1), b: p.b + p.s };
}

/** Two maps of the same stride combined (added, concatenated): the wider reach on each side. */
export function reachUnion(p: Reach, q: Reach): Reach {
  return { s: p.s, a: Math.max(p.a, q.a), b: Math.max(p.b, q.b) };
}

/** The receptive field in pixels (side of the square of input pixels one output pixel can depend on). */
export function receptiveFieldOfReach(r: Reach): number {
  return 2 * Math.max(r.a, r.b) + 1;
}
