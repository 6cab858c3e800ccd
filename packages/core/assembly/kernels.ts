// SIMD inner loops of Tessera's tfjs `wasm` backend kernels, in AssemblyScript.
//
// Compiled by `scripts/build-simd.mjs` into `src/engine/simd-binary.ts` (a module with no memory of its own: it
// imports the tfjs wasm backend's memory, so every pointer here is a byte offset of a tensor on that heap). No
// allocation, no data segment: the callers own every buffer. Every loop runs in one fixed order, so results are
// deterministic. Float32 lanes are `f32x4`; sums that the callers want exact to float64 use `f64x2` accumulators.

/**
 * The geometry of a sliding-window operation (convolution or pooling, NHWC): input `[n, h, w, c]`, output
 * `[n, oh, ow, .]`, window `kh x kw` with strides `sh, sw`, dilations `dh, dw` and top/left zero padding `pt, pl`.
 * Callers pass a pointer to these 14 int32 values.
 */
@unmanaged
class Window {
  n: i32;
  h: i32;
  w: i32;
  c: i32;
  oh: i32;
  ow: i32;
  kh: i32;
  kw: i32;
  sh: i32;
  sw: i32;
  dh: i32;
  dw: i32;
  pt: i32;
  pl: i32;
}

/** Promotes lanes 2 and 3 of a `f32x4` to a `f64x2`. */
function promoteHigh(v: v128): v128 {
  return f64x2.promote_low_f32x4(v128.shuffle<f32>(v, v, 2, 3, 2, 3));
}

/** Sets `n` float32 values at `p` to zero. */
function zero(p: usize, n: i32): void {
  memory.fill(p, 0, (<usize>n) << 2);
}

/**
 * Column sums of `src [rows, cols]` (float32) in float64, then `dst[j] = f32(sum_j / divisor)`; with `mean` (a
 * pointer to `cols` float32 values, or 0 for none) the sums are of the float32 squares `(x - mean) * (x - mean)`, so
 * that with the mean from a first call and `divisor = rows` this is `mean(square(x - mean))`, the batch variance.
 * `acc` is scratch for `cols` float64 values.
 */
export function columnReduce(
  src: usize,
  rows: i32,
  cols: i32,
  mean: usize,
  acc: usize,
  dst: usize,
  divisor: f64,
): void {
  memory.fill(acc, 0, (<usize>cols) << 3);
  const row = (<usize>cols) << 2;
  let p = src;
  for (let r = 0; r < rows; r++, p += row) {
    let j = 0;
    for (; j + 4 <= cols; j += 4) {
      let v = v128.load(p + ((<usize>j) << 2));
      if (mean != 0) {
        const d = f32x4.sub(v, v128.load(mean + ((<usize>j) << 2)));
        v = f32x4.mul(d, d);
      }
      const a = acc + ((<usize>j) << 3);
      v128.store(a, f64x2.add(v128.load(a), f64x2.promote_low_f32x4(v)));
      v128.store(a + 16, f64x2.add(v128.load(a + 16), promoteHigh(v)));
    }
    for (; j < cols; j++) {
      let v = load<f32>(p + ((<usize>j) << 2));
      if (mean != 0) {
        const d = v - load<f32>(mean + ((<usize>j) << 2));
        v = d * d;
      }
      const a = acc + ((<usize>j) << 3);
      store<f64>(a, load<f64>(a) + <f64>v);
    }
  }
  for (let j = 0; j < cols; j++) {
    store<f32>(dst + ((<usize>j) << 2), <f32>(load<f64>(acc + ((<usize>j) << 3)) / divisor));
  }
}

/**
 * Batch normalisation of `rows` rows of `c` channels with per-channel float32 coefficients
 * `coef = [mean (c), k (c), offset (c)]`: `y = (x - mean) * k + offset`, each operation rounded to float32.
 */
export function batchNormApply(x: usize, y: usize, rows: i32, c: i32, coef: usize): void {
  const row = (<usize>c) << 2;
  const m = coef;
  const k = coef + row;
  const b = coef + 2 * row;
  for (let r = 0; r < rows; r++) {
    const o = <usize>r * row;
    let j = 0;
    for (; j + 4 <= c; j += 4) {
      const q = (<usize>j) << 2;
      const centred = f32x4.sub(v128.load(x + o + q), v128.load(m + q));
      v128.store(y + o + q, f32x4.add(f32x4.mul(centred, v128.load(k + q)), v128.load(b + q)));
    }
    for (; j < c; j++) {
      const q = (<usize>j) << 2;
      store<f32>(y + o + q, (load<f32>(x + o + q) - load<f32>(m + q)) * load<f32>(k + q) + load<f32>(b + q));
    }
  }
}

/**
 * Per-channel sums of batch normalisation's gradient over `rows` rows of `c` channels: `sumG[j] += dy[., j]` and
 * `sumGX[j] += dy[., j] * (x[., j] - mean[j])`, in float64 (both zeroed first).
 */
export function batchNormGradSums(
  x: usize,
  dy: usize,
  mean: usize,
  rows: i32,
  c: i32,
  sumG: usize,
  sumGX: usize,
): void {
  memory.fill(sumG, 0, (<usize>c) << 3);
  memory.fill(sumGX, 0, (<usize>c) << 3);
  const row = (<usize>c) << 2;
  let px = x;
  let pg = dy;
  for (let r = 0; r < rows; r++, px += row, pg += row) {
    let j = 0;
    for (; j + 4 <= c; j += 4) {
      const o = (<usize>j) << 2;
      const g = v128.load(pg + o);
      const xm = v128.load(px + o);
      const m = v128.load(mean + o);
      const g0 = f64x2.promote_low_f32x4(g);
      const g1 = promoteHigh(g);
      const d0 = f64x2.sub(f64x2.promote_low_f32x4(xm), f64x2.promote_low_f32x4(m));
      const d1 = f64x2.sub(promoteHigh(xm), promoteHigh(m));
      const a = sumG + ((<usize>j) << 3);
      const b = sumGX + ((<usize>j) << 3);
      v128.store(a, f64x2.add(v128.load(a), g0));
      v128.store(a + 16, f64x2.add(v128.load(a + 16), g1));
      v128.store(b, f64x2.add(v128.load(b), f64x2.mul(g0, d0)));
      v128.store(b + 16, f64x2.add(v128.load(b + 16), f64x2.mul(g1, d1)));
    }
    for (; j < c; j++) {
      const o = (<usize>j) << 2;
      const g = <f64>load<f32>(pg + o);
      const d = <f64>load<f32>(px + o) - <f64>load<f32>(mean + o);
      const a = sumG + ((<usize>j) << 3);
      const b = sumGX + ((<usize>j) << 3);
      store<f64>(a, load<f64>(a) + g);
      store<f64>(b, load<f64>(b) + g * d);
    }
  }
}

/**
 * The input gradient of training-mode batch normalisation over `rows` rows of `c` channels, given per-channel
 * float32 coefficients `coef = [a (c), b (c), d (c), mean (c)]`: `dx = a * dy + b * (x - mean) + d`.
 */
export function batchNormTrainGrad(x: usize, dy: usize, dx: usize, rows: i32, c: i32, coef: usize): void {
  const row = (<usize>c) << 2;
  const a = coef;
  const b = coef + row;
  const d = coef + 2 * row;
  const m = coef + 3 * row;
  for (let r = 0; r < rows; r++) {
    const o = <usize>r * row;
    let j = 0;
    for (; j + 4 <= c; j += 4) {
      const k = (<usize>j) << 2;
      const centred = f32x4.sub(v128.load(x + o + k), v128.load(m + k));
      const scaled = f32x4.add(
        f32x4.mul(v128.load(a + k), v128.load(dy + o + k)),
        f32x4.mul(v128.load(b + k), centred),
      );
      v128.store(dx + o + k, f32x4.add(scaled, v128.load(d + k)));
    }
    for (; j < c; j++) {
      const k = (<usize>j) << 2;
      const centred = load<f32>(x + o + k) - load<f32>(m + k);
      store<f32>(dx + o + k, load<f32>(a + k) * load<f32>(dy + o + k) + load<f32>(b + k) * centred + load<f32>(d + k));
    }
  }
}

/** `out[i] = lo <= x[i] <= hi ? dy[i] : 0` for `n` values (the gradient of `ClipByValue`). */
export function clipByValueGrad(x: usize, dy: usize, out: usize, n: i32, lo: f32, hi: f32): void {
  const vlo = f32x4.splat(lo);
  const vhi = f32x4.splat(hi);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const o = (<usize>i) << 2;
    const v = v128.load(x + o);
    const inside = v128.and(f32x4.ge(v, vlo), f32x4.le(v, vhi));
    v128.store(out + o, v128.and(v128.load(dy + o), inside));
  }
  for (; i < n; i++) {
    const o = (<usize>i) << 2;
    const v = load<f32>(x + o);
    store<f32>(out + o, v >= lo && v <= hi ? load<f32>(dy + o) : 0);
  }
}

/** `acc[j] += a[j] * b[j]` for `c` float32 values. */
function multiplyAdd(acc: usize, a: usize, b: usize, c: i32): void {
  let j = 0;
  for (; j + 8 <= c; j += 8) {
    const o = (<usize>j) << 2;
    v128.store(acc + o, f32x4.add(v128.load(acc + o), f32x4.mul(v128.load(a + o), v128.load(b + o))));
    v128.store(
      acc + o + 16,
      f32x4.add(v128.load(acc + o + 16), f32x4.mul(v128.load(a + o + 16), v128.load(b + o + 16))),
    );
  }
  for (; j + 4 <= c; j += 4) {
    const o = (<usize>j) << 2;
    v128.store(acc + o, f32x4.add(v128.load(acc + o), f32x4.mul(v128.load(a + o), v128.load(b + o))));
  }
  for (; j < c; j++) {
    const o = (<usize>j) << 2;
    store<f32>(acc + o, load<f32>(acc + o) + load<f32>(a + o) * load<f32>(b + o));
  }
}

/**
 * The two gradients of a depthwise convolution with channel multiplier 1, `y[b,oy,ox,c] = sum_{ky,kx}
 * x[b, oy*sh - pt + ky*dh, ox*sw - pl + kx*dw, c] * w[ky,kx,c]` (NHWC, zero padding), as one scatter loop over the
 * output pixels: with `mode` 0, the filter gradient `out [kh,kw,c] += x[...] * dy[b,oy,ox]`; with `mode` 1, the input
 * gradient `out [n,h,w,c] += w[ky,kx] * dy[b,oy,ox]` (`src` is then the filter). `out` is zeroed first.
 */
export function depthwiseGrad(mode: i32, src: usize, dy: usize, out: usize, window: usize): void {
  const win = changetype<Window>(window);
  zero(out, mode == 0 ? win.kh * win.kw * win.c : win.n * win.h * win.w * win.c);
  const pixel = (<usize>win.c) << 2;
  let g = dy;
  for (let b = 0; b < win.n; b++) {
    for (let oy = 0; oy < win.oh; oy++) {
      for (let ox = 0; ox < win.ow; ox++, g += pixel) {
        for (let ky = 0; ky < win.kh; ky++) {
          const iy = oy * win.sh - win.pt + ky * win.dh;
          if (iy < 0 || iy >= win.h) continue;
          for (let kx = 0; kx < win.kw; kx++) {
            const ix = ox * win.sw - win.pl + kx * win.dw;
            if (ix < 0 || ix >= win.w) continue;
            const image = <usize>((b * win.h + iy) * win.w + ix) * pixel;
            const tap = <usize>(ky * win.kw + kx) * pixel;
            if (mode == 0) multiplyAdd(out + tap, src + image, g, win.c);
            else multiplyAdd(out + image, src + tap, g, win.c);
          }
        }
      }
    }
  }
}

/** Transposes the 4 x 4 float32 block at `src` (row stride `srcStride` bytes) into `dst` (row stride `dstStride`). */
function transpose4x4(src: usize, srcStride: usize, dst: usize, dstStride: usize): void {
  const r0 = v128.load(src);
  const r1 = v128.load(src + srcStride);
  const r2 = v128.load(src + 2 * srcStride);
  const r3 = v128.load(src + 3 * srcStride);
  const t0 = v128.shuffle<f32>(r0, r1, 0, 4, 1, 5);
  const t1 = v128.shuffle<f32>(r2, r3, 0, 4, 1, 5);
  const t2 = v128.shuffle<f32>(r0, r1, 2, 6, 3, 7);
  const t3 = v128.shuffle<f32>(r2, r3, 2, 6, 3, 7);
  v128.store(dst, v128.shuffle<f32>(t0, t1, 0, 1, 4, 5));
  v128.store(dst + dstStride, v128.shuffle<f32>(t0, t1, 2, 3, 6, 7));
  v128.store(dst + 2 * dstStride, v128.shuffle<f32>(t2, t3, 0, 1, 4, 5));
  v128.store(dst + 3 * dstStride, v128.shuffle<f32>(t2, t3, 2, 3, 6, 7));
}

/**
 * `dst [c, n, hw]` (channel-major) from `src [n, hw, c]`, in 4 x 4 blocks, 16 pixels at a time so that each
 * destination plane receives whole 64-byte cache lines (planes are often a multiple of 4 KiB apart, and narrower
 * writes to many of them thrash the cache).
 */
export function toChannelMajor(src: usize, dst: usize, n: i32, hw: i32, c: i32): void {
  const plane = (<usize>(n * hw)) << 2;
  const pixel = (<usize>c) << 2;
  const c4 = c & ~3;
  for (let b = 0; b < n; b++) {
    const s0 = src + <usize>(b * hw) * pixel;
    const d0 = dst + ((<usize>(b * hw)) << 2);
    let p = 0;
    for (; p + 16 <= hw; p += 16) {
      for (let k = 0; k < c4; k += 4) {
        const s = s0 + <usize>p * pixel + ((<usize>k) << 2);
        const d = d0 + <usize>k * plane + ((<usize>p) << 2);
        transpose4x4(s, pixel, d, plane);
        transpose4x4(s + 4 * pixel, pixel, d + 16, plane);
        transpose4x4(s + 8 * pixel, pixel, d + 32, plane);
        transpose4x4(s + 12 * pixel, pixel, d + 48, plane);
      }
    }
    for (; p + 4 <= hw; p += 4) {
      for (let k = 0; k < c4; k += 4) {
        transpose4x4(
          s0 + <usize>p * pixel + ((<usize>k) << 2),
          pixel,
          d0 + <usize>k * plane + ((<usize>p) << 2),
          plane,
        );
      }
    }
    // The last c % 4 channels of every pixel, and every channel of the last hw % 4 pixels.
    for (let q = 0; q < hw; q++) {
      for (let k = q < p ? c4 : 0; k < c; k++) {
        store<f32>(d0 + <usize>k * plane + ((<usize>q) << 2), load<f32>(s0 + <usize>q * pixel + ((<usize>k) << 2)));
      }
    }
  }
}

/**
 * Rows `r0 .. r0 + rows` of the im2col matrix `a [kh*kw*ci, n*oh*ow]` of a convolution, from the channel-major input
 * `xt [ci, n, h, w]`: row `(t, c)` (tap `t = ky*kw + kx`) holds, for every output pixel `(b, y, x)`, the input value
 * that tap sees (zero in the padding). `a` points at row `r0`.
 */
export function im2colRows(xt: usize, a: usize, r0: i32, rows: i32, window: usize): void {
  const win = changetype<Window>(window);
  const p = win.n * win.oh * win.ow;
  for (let r = 0; r < rows; r++) {
    const t = (r0 + r) / win.c;
    const c = r0 + r - t * win.c;
    const ky = t / win.kw;
    const kx = t - ky * win.kw;
    // Output columns x0 .. x1 whose tap kx lands inside the input row.
    let x0 = 0;
    while (x0 < win.ow && x0 * win.sw + kx * win.dw - win.pl < 0) x0++;
    let x1 = win.ow;
    while (x1 > x0 && (x1 - 1) * win.sw + kx * win.dw - win.pl >= win.w) x1--;
    const len = x1 - x0;
    const rowBase = a + ((<usize>(r * p)) << 2);
    for (let b = 0; b < win.n; b++) {
      for (let y = 0; y < win.oh; y++) {
        const d = rowBase + ((<usize>((b * win.oh + y) * win.ow)) << 2);
        const iy = y * win.sh + ky * win.dh - win.pt;
        if (iy < 0 || iy >= win.h || len == 0) {
          memory.fill(d, 0, (<usize>win.ow) << 2);
          continue;
        }
        if (x0 > 0) memory.fill(d, 0, (<usize>x0) << 2);
        if (x1 < win.ow) memory.fill(d + ((<usize>x1) << 2), 0, (<usize>(win.ow - x1)) << 2);
        const s = xt + ((<usize>(((c * win.n + b) * win.h + iy) * win.w + x0 * win.sw + kx * win.dw - win.pl)) << 2);
        const o = d + ((<usize>x0) << 2);
        if (win.sw == 1) {
          memory.copy(o, s, (<usize>len) << 2);
        } else {
          const step = (<usize>win.sw) << 2;
          for (let i = 0; i < len; i++) store<f32>(o + ((<usize>i) << 2), load<f32>(s + <usize>i * step));
        }
      }
    }
  }
}

/**
 * Gradient of max pooling (NHWC): each `dy[b,y,x,c]` is added to `dx` at the first maximum (row-major) of its
 * window; a window whose values are all -Infinity or NaN passes nothing. Channels four at a time: a first pass finds
 * each lane's maximum, a second adds `dy` where a lane first meets it. `dx` is zeroed first.
 */
export function maxPoolGrad(x: usize, dy: usize, dx: usize, window: usize): void {
  const win = changetype<Window>(window);
  zero(dx, win.n * win.h * win.w * win.c);
  const pixel = (<usize>win.c) << 2;
  const minusInf = f32x4.splat(-Infinity);
  let g = dy;
  for (let b = 0; b < win.n; b++) {
    for (let y = 0; y < win.oh; y++) {
      const r0 = max(0, y * win.sh - win.pt);
      const r1 = min(win.h, y * win.sh - win.pt + win.kh);
      for (let xx = 0; xx < win.ow; xx++, g += pixel) {
        const c0 = max(0, xx * win.sw - win.pl);
        const c1 = min(win.w, xx * win.sw - win.pl + win.kw);
        let k = 0;
        for (; k + 4 <= win.c; k += 4) {
          const lane = (<usize>k) << 2;
          let best = minusInf;
          for (let r = r0; r < r1; r++) {
            for (let col = c0; col < c1; col++) {
              const v = v128.load(x + <usize>((b * win.h + r) * win.w + col) * pixel + lane);
              best = v128.bitselect(v, best, f32x4.gt(v, best));
            }
          }
          let open = f32x4.gt(best, minusInf);
          const gv = v128.load(g + lane);
          for (let r = r0; r < r1 && v128.any_true(open); r++) {
            for (let col = c0; col < c1; col++) {
              const at = <usize>((b * win.h + r) * win.w + col) * pixel + lane;
              const hit = v128.and(f32x4.eq(v128.load(x + at), best), open);
              if (!v128.any_true(hit)) continue;
              v128.store(dx + at, f32x4.add(v128.load(dx + at), v128.and(gv, hit)));
              open = v128.andnot(open, hit);
            }
          }
        }
        for (; k < win.c; k++) {
          const lane = (<usize>k) << 2;
          let best: f32 = -Infinity;
          let where: usize = 0;
          for (let r = r0; r < r1; r++) {
            for (let col = c0; col < c1; col++) {
              const at = <usize>((b * win.h + r) * win.w + col) * pixel + lane;
              const v = load<f32>(x + at);
              if (v > best) {
                best = v;
                where = at + 1;
              }
            }
          }
          if (where != 0) store<f32>(dx + where - 1, load<f32>(dx + where - 1) + load<f32>(g + lane));
        }
      }
    }
  }
}
