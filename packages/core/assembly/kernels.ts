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

// ---------------------------------------------------------------------------------------------------------------------
// Winograd F(4x4, 3x3) convolution (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): a 3x3
// stride-1 correlation computes each 4x4 output tile as A^T [(G g G^T) .* (B^T d B)] A from the 6x6 input tile d,
// so the multiplications become 36 matrix products `V_k [tiles, ci] x U_k [ci, co]` (the caller runs them on the
// backend's matmul) with 2.25x fewer multiply-adds than the direct convolution. The transforms here work on four
// channels at a time (NHWC keeps channels contiguous), so `ci` and `co` must be multiples of 4. `table` points at 36
// int32 byte offsets, one per matrix `k = 6 * i + j` (row i, column j of the 6x6 transform domain).

/** The vector at byte offset `o` of the row whose pointer is stored at `slot` (a table of int32 pointers). */
@inline
function gather(slot: usize, o: usize): v128 {
  return v128.load(load<u32>(slot) + o);
}

/** `B^T a` for one column (or row) of six vectors; writes the six results at `out`, 16 bytes apart times `step`. */
@inline
function inputTransform6(a0: v128, a1: v128, a2: v128, a3: v128, a4: v128, a5: v128, out: usize, step: usize): void {
  const four = f32x4.splat(4);
  const five = f32x4.splat(5);
  const two = f32x4.splat(2);
  v128.store(out, f32x4.add(f32x4.sub(f32x4.mul(four, a0), f32x4.mul(five, a2)), a4));
  v128.store(out + step, f32x4.sub(f32x4.add(a3, a4), f32x4.mul(four, f32x4.add(a1, a2))));
  v128.store(out + 2 * step, f32x4.add(f32x4.sub(a4, a3), f32x4.mul(four, f32x4.sub(a1, a2))));
  const a42 = f32x4.sub(a4, a2);
  const a31 = f32x4.mul(two, f32x4.sub(a3, a1));
  v128.store(out + 3 * step, f32x4.add(a42, a31));
  v128.store(out + 4 * step, f32x4.sub(a42, a31));
  v128.store(out + 5 * step, f32x4.add(f32x4.sub(f32x4.mul(four, a1), f32x4.mul(five, a3)), a5));
}

/**
 * Input transform of the tile rows `rowStart .. rowStart + rows` (a tile row is `(b, ty)`, `ty < ceil(oh / 4)`):
 * `V_k[t, c] = (B^T d B)[k]` for every tile `t` (numbered from the first tile of `rowStart`, `ceil(ow / 4)` per row)
 * and channel, where `d` is the 6x6 input patch at `(4 ty - pt, 4 tx - pl)` with zeros outside the input. `zeros`
 * points at `ci` zero floats, `scratch` at 816 bytes. With `transposed` (the chunk's tile count) each `V_k` is
 * written as `[ci, tiles]` instead, for the filter gradient.
 */
export function winogradInput(x: usize, table: usize, zeros: usize, scratch: usize, rowStart: i32, rows: i32, window: usize, transposed: i32): void {
  const win = changetype<Window>(window);
  const c = win.c;
  const th = (win.oh + 3) >> 2;
  const tw = (win.ow + 3) >> 2;
  const pixel = (<usize>c) << 2;
  const tmp = scratch + 144;
  for (let r = 0; r < rows; r++) {
    const row = rowStart + r;
    const b = row / th;
    const y0 = (row - b * th) * 4 - win.pt;
    for (let tx = 0; tx < tw; tx++) {
      const x0 = tx * 4 - win.pl;
      // The 36 source pixels of this tile, or the zero pixel.
      for (let i = 0; i < 6; i++) {
        const yy = y0 + i;
        for (let j = 0; j < 6; j++) {
          const xx = x0 + j;
          const inside = yy >= 0 && yy < win.h && xx >= 0 && xx < win.w;
          store<u32>(scratch + ((<usize>(i * 6 + j)) << 2), inside ? x + <usize>((b * win.h + yy) * win.w + xx) * pixel : zeros);
        }
      }
      const dst = <usize>(r * tw + tx) * pixel;
      for (let k = 0; k < c; k += 4) {
        const o = (<usize>k) << 2;
        // B^T down each column j into tmp[i][j] ...
        for (let j = 0; j < 6; j++) {
          const s = scratch + ((<usize>j) << 2);
          inputTransform6(gather(s, o), gather(s + 24, o), gather(s + 48, o), gather(s + 72, o), gather(s + 96, o), gather(s + 120, o), tmp + ((<usize>j) << 4), 96);
        }
        // ... then along each row i: V_{6i+j}.
        for (let i = 0; i < 6; i++) {
          const t = tmp + <usize>i * 96;
          const out = tmp + 576;
          inputTransform6(v128.load(t), v128.load(t + 16), v128.load(t + 32), v128.load(t + 48), v128.load(t + 64), v128.load(t + 80), out, 16);
          if (transposed == 0) {
            for (let j = 0; j < 6; j++) {
              v128.store(load<u32>(table + ((<usize>(i * 6 + j)) << 2)) + dst + o, v128.load(out + ((<usize>j) << 4)));
            }
          } else {
            // V_k^T [ci, tiles]: lane l of channel k + l goes to row k + l, column t.
            const col = (<usize>(r * tw + tx)) << 2;
            const rowBytes = (<usize>transposed) << 2;
            for (let j = 0; j < 6; j++) {
              const v = v128.load(out + ((<usize>j) << 4));
              const d = load<u32>(table + ((<usize>(i * 6 + j)) << 2)) + <usize>k * rowBytes + col;
              store<f32>(d, f32x4.extract_lane(v, 0));
              store<f32>(d + rowBytes, f32x4.extract_lane(v, 1));
              store<f32>(d + 2 * rowBytes, f32x4.extract_lane(v, 2));
              store<f32>(d + 3 * rowBytes, f32x4.extract_lane(v, 3));
            }
          }
        }
      }
    }
  }
}

/** `A^T a` for one column (or row) of six vectors: four results. */
@inline
function outputTransform6(a0: v128, a1: v128, a2: v128, a3: v128, a4: v128, a5: v128, out: usize, step: usize): void {
  const p12 = f32x4.add(a1, a2);
  const m12 = f32x4.sub(a1, a2);
  const p34 = f32x4.add(a3, a4);
  const m34 = f32x4.sub(a3, a4);
  v128.store(out, f32x4.add(f32x4.add(a0, p12), p34));
  v128.store(out + step, f32x4.add(m12, f32x4.mul(f32x4.splat(2), m34)));
  v128.store(out + 2 * step, f32x4.add(p12, f32x4.mul(f32x4.splat(4), p34)));
  v128.store(out + 3 * step, f32x4.add(f32x4.add(m12, f32x4.mul(f32x4.splat(8), m34)), a5));
}

/**
 * Output transform of the tile rows `rowStart .. rowStart + rows`: `y = A^T M A` for every tile and output channel
 * from the 36 products `M_k [tiles, co]` (`table`), plus `bias` (`co` floats, or 0 for none), then ReLU when `relu`
 * is 1; written to `y [n, oh, ow, co]` where the tile lies inside it. `scratch` points at 480 bytes.
 */
export function winogradOutput(table: usize, y: usize, bias: usize, relu: i32, scratch: usize, rowStart: i32, rows: i32, co: i32, window: usize): void {
  const win = changetype<Window>(window);
  const th = (win.oh + 3) >> 2;
  const tw = (win.ow + 3) >> 2;
  const pixel = (<usize>co) << 2;
  const zero4 = f32x4.splat(0);
  const out = scratch + 384;
  for (let r = 0; r < rows; r++) {
    const row = rowStart + r;
    const b = row / th;
    const y0 = (row - b * th) * 4;
    const ny = min(4, win.oh - y0);
    for (let tx = 0; tx < tw; tx++) {
      const x0 = tx * 4;
      const nx = min(4, win.ow - x0);
      const src = <usize>(r * tw + tx) * pixel;
      for (let k = 0; k < co; k += 4) {
        const o = (<usize>k) << 2;
        // A^T down each column j into scratch[i][j] (4 x 6) ...
        for (let j = 0; j < 6; j++) {
          const m = table + ((<usize>j) << 2);
          outputTransform6(gather(m, src + o), gather(m + 24, src + o), gather(m + 48, src + o), gather(m + 72, src + o), gather(m + 96, src + o), gather(m + 120, src + o), scratch + ((<usize>j) << 4), 96);
        }
        const bv = bias != 0 ? v128.load(bias + o) : zero4;
        // ... then along each row i, the four outputs of that row.
        for (let i = 0; i < ny; i++) {
          const t = scratch + <usize>i * 96;
          outputTransform6(v128.load(t), v128.load(t + 16), v128.load(t + 32), v128.load(t + 48), v128.load(t + 64), v128.load(t + 80), out, 16);
          const d = y + <usize>((b * win.oh + y0 + i) * win.ow + x0) * pixel + o;
          for (let j = 0; j < nx; j++) {
            let v = f32x4.add(v128.load(out + ((<usize>j) << 4)), bv);
            if (relu != 0) v = f32x4.max(v, zero4);
            v128.store(d + <usize>j * pixel, v);
          }
        }
      }
    }
  }
}

/** `G a` for three vectors (a column or row of a 3x3 filter): six results. */
@inline
function filterTransform3(a0: v128, a1: v128, a2: v128, out: usize, step: usize): void {
  const sixth = f32x4.splat(<f32>(1.0 / 6.0));
  const p = f32x4.add(a0, a2);
  v128.store(out, f32x4.mul(a0, f32x4.splat(0.25)));
  v128.store(out + step, f32x4.neg(f32x4.mul(f32x4.add(p, a1), sixth)));
  v128.store(out + 2 * step, f32x4.neg(f32x4.mul(f32x4.sub(p, a1), sixth)));
  const q = f32x4.add(f32x4.mul(a0, f32x4.splat(<f32>(1.0 / 24.0))), f32x4.mul(a2, sixth));
  const s = f32x4.mul(a1, f32x4.splat(<f32>(1.0 / 12.0)));
  v128.store(out + 3 * step, f32x4.add(q, s));
  v128.store(out + 4 * step, f32x4.sub(q, s));
  v128.store(out + 5 * step, a2);
}

/**
 * Filter transform: `U_k [ci, co] = (G g G^T)[k]` of the filter `g [3, 3, ci, co]`. `scratch` points at 768 bytes.
 */
export function winogradFilter(g: usize, table: usize, scratch: usize, ci: i32, co: i32): void {
  const row = (<usize>co) << 2;
  const tap = <usize>ci * row;
  const out = scratch + 288;
  for (let c = 0; c < ci; c++) {
    for (let k = 0; k < co; k += 4) {
      const o = <usize>c * row + ((<usize>k) << 2);
      // G down each filter column kx into scratch[i][kx] (6 x 3) ...
      for (let kx = 0; kx < 3; kx++) {
        const s = g + o + <usize>kx * tap;
        filterTransform3(v128.load(s), v128.load(s + 3 * tap), v128.load(s + 6 * tap), scratch + ((<usize>kx) << 4), 48);
      }
      // ... then along each row i.
      for (let i = 0; i < 6; i++) {
        const t = scratch + <usize>i * 48;
        filterTransform3(v128.load(t), v128.load(t + 16), v128.load(t + 32), out, 16);
        for (let j = 0; j < 6; j++) {
          v128.store(load<u32>(table + ((<usize>(i * 6 + j)) << 2)) + o, v128.load(out + ((<usize>j) << 4)));
        }
      }
    }
  }
}

/** `A a` for four vectors (a column or row of an output-gradient tile): six results. */
@inline
function gradTransform4(a0: v128, a1: v128, a2: v128, a3: v128, out: usize, step: usize): void {
  const p02 = f32x4.add(a0, a2);
  const p13 = f32x4.add(a1, a3);
  const q02 = f32x4.add(a0, f32x4.mul(f32x4.splat(4), a2));
  const q13 = f32x4.add(f32x4.mul(f32x4.splat(2), a1), f32x4.mul(f32x4.splat(8), a3));
  v128.store(out, a0);
  v128.store(out + step, f32x4.add(p02, p13));
  v128.store(out + 2 * step, f32x4.sub(p02, p13));
  v128.store(out + 3 * step, f32x4.add(q02, q13));
  v128.store(out + 4 * step, f32x4.sub(q02, q13));
  v128.store(out + 5 * step, a3);
}

/**
 * Output-gradient transform for the filter gradient: `W_k [tiles, co] = (A dY A^T)[k]` of every 4x4 tile of
 * `dy [n, oh, ow, co]` (zeros beyond `oh` and `ow`), tile rows `rowStart .. rowStart + rows`. `zeros` points at `co`
 * zero floats, `scratch` at 720 bytes.
 */
export function winogradGradOutput(dy: usize, table: usize, zeros: usize, scratch: usize, rowStart: i32, rows: i32, co: i32, window: usize): void {
  const win = changetype<Window>(window);
  const th = (win.oh + 3) >> 2;
  const tw = (win.ow + 3) >> 2;
  const pixel = (<usize>co) << 2;
  const tmp = scratch + 64;
  const out = tmp + 384;
  for (let r = 0; r < rows; r++) {
    const row = rowStart + r;
    const b = row / th;
    const y0 = (row - b * th) * 4;
    for (let tx = 0; tx < tw; tx++) {
      const x0 = tx * 4;
      for (let i = 0; i < 4; i++) {
        for (let j = 0; j < 4; j++) {
          const inside = y0 + i < win.oh && x0 + j < win.ow;
          store<u32>(
            scratch + ((<usize>(i * 4 + j)) << 2),
            inside ? dy + <usize>((b * win.oh + y0 + i) * win.ow + x0 + j) * pixel : zeros,
          );
        }
      }
      const dst = <usize>(r * tw + tx) * pixel;
      for (let k = 0; k < co; k += 4) {
        const o = (<usize>k) << 2;
        // A down each column j (4 -> 6) into tmp[i][j] (6 x 4) ...
        for (let j = 0; j < 4; j++) {
          const s = scratch + ((<usize>j) << 2);
          gradTransform4(gather(s, o), gather(s + 16, o), gather(s + 32, o), gather(s + 48, o), tmp + ((<usize>j) << 4), 64);
        }
        // ... then along each row i (4 -> 6): W_{6i+j}.
        for (let i = 0; i < 6; i++) {
          const t = tmp + <usize>i * 64;
          gradTransform4(v128.load(t), v128.load(t + 16), v128.load(t + 32), v128.load(t + 48), out, 16);
          for (let j = 0; j < 6; j++) {
            v128.store(load<u32>(table + ((<usize>(i * 6 + j)) << 2)) + dst + o, v128.load(out + ((<usize>j) << 4)));
          }
        }
      }
    }
  }
}

/** `G^T a` for six vectors: three results. */
@inline
function filterGradTransform6(a0: v128, a1: v128, a2: v128, a3: v128, a4: v128, a5: v128, out: usize, step: usize): void {
  const sixth = f32x4.splat(<f32>(1.0 / 6.0));
  const p12 = f32x4.add(a1, a2);
  const p34 = f32x4.add(a3, a4);
  v128.store(
    out,
    f32x4.add(
      f32x4.sub(f32x4.mul(a0, f32x4.splat(0.25)), f32x4.mul(p12, sixth)),
      f32x4.mul(p34, f32x4.splat(<f32>(1.0 / 24.0))),
    ),
  );
  v128.store(
    out + step,
    f32x4.add(f32x4.mul(f32x4.sub(a2, a1), sixth), f32x4.mul(f32x4.sub(a3, a4), f32x4.splat(<f32>(1.0 / 12.0)))),
  );
  v128.store(out + 2 * step, f32x4.add(f32x4.mul(f32x4.sub(p34, p12), sixth), a5));
}

/**
 * The filter gradient `dg [3, 3, ci, co] = G^T dU G` from the 36 transform-domain gradients `dU_k [ci, co]`
 * (`table`). `scratch` points at 336 bytes.
 */
export function winogradFilterGrad(table: usize, dg: usize, scratch: usize, ci: i32, co: i32): void {
  const row = (<usize>co) << 2;
  const tap = <usize>ci * row;
  const out = scratch + 288;
  for (let c = 0; c < ci; c++) {
    for (let k = 0; k < co; k += 4) {
      const o = <usize>c * row + ((<usize>k) << 2);
      // G^T down each column j into scratch[i][j] (3 x 6) ...
      for (let j = 0; j < 6; j++) {
        const m = table + ((<usize>j) << 2);
        filterGradTransform6(gather(m, o), gather(m + 24, o), gather(m + 48, o), gather(m + 72, o), gather(m + 96, o), gather(m + 120, o), scratch + ((<usize>j) << 4), 96);
      }
      // ... then along each row ky.
      for (let ky = 0; ky < 3; ky++) {
        const t = scratch + <usize>ky * 96;
        filterGradTransform6(v128.load(t), v128.load(t + 16), v128.load(t + 32), v128.load(t + 48), v128.load(t + 64), v128.load(t + 80), out, 16);
        for (let kx = 0; kx < 3; kx++) v128.store(dg + <usize>(ky * 3 + kx) * tap + o, v128.load(out + ((<usize>kx) << 4)));
      }
    }
  }
}

/**
 * One Adam step over `n` weights, in float32 with the operations of tfjs's `AdamOptimizer` in its order (so the same
 * bits as Tessera's scalar pass in `optimizers.ts`): `m' = m b1 + g c1`, `v' = v b2 + (g g) c2`,
 * `w' = ((m' / d1) / (sqrt(v' / d2) + eps)) step + w`. `k` points at the eight float32 values
 * `b1, b2, c1, c2, eps, step, d1, d2`. Outputs go to `nw`, `nm`, `nv` (the inputs are left as they are).
 */
export function adamUpdate(w: usize, g: usize, m: usize, v: usize, nw: usize, nm: usize, nv: usize, n: i32, k: usize): void {
  const b1 = load<f32>(k);
  const b2 = load<f32>(k, 4);
  const c1 = load<f32>(k, 8);
  const c2 = load<f32>(k, 12);
  const eps = load<f32>(k, 16);
  const step = load<f32>(k, 20);
  const d1 = load<f32>(k, 24);
  const d2 = load<f32>(k, 28);
  const vb1 = f32x4.splat(b1);
  const vb2 = f32x4.splat(b2);
  const vc1 = f32x4.splat(c1);
  const vc2 = f32x4.splat(c2);
  const veps = f32x4.splat(eps);
  const vstep = f32x4.splat(step);
  const vd1 = f32x4.splat(d1);
  const vd2 = f32x4.splat(d2);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const o = (<usize>i) << 2;
    const gi = v128.load(g + o);
    const mi = f32x4.add(f32x4.mul(v128.load(m + o), vb1), f32x4.mul(gi, vc1));
    const vi = f32x4.add(f32x4.mul(v128.load(v + o), vb2), f32x4.mul(f32x4.mul(gi, gi), vc2));
    v128.store(nm + o, mi);
    v128.store(nv + o, vi);
    const denominator = f32x4.add(f32x4.sqrt(f32x4.div(vi, vd2)), veps);
    v128.store(nw + o, f32x4.add(f32x4.mul(f32x4.div(f32x4.div(mi, vd1), denominator), vstep), v128.load(w + o)));
  }
  for (; i < n; i++) {
    const o = (<usize>i) << 2;
    const gi = load<f32>(g + o);
    const mi: f32 = load<f32>(m + o) * b1 + gi * c1;
    const vi: f32 = load<f32>(v + o) * b2 + gi * gi * c2;
    store<f32>(nm + o, mi);
    store<f32>(nv + o, vi);
    const denominator: f32 = <f32>Mathf.sqrt(vi / d2) + eps;
    store<f32>(nw + o, (mi / d1 / denominator) * step + load<f32>(w + o));
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Softmax and the segmentation losses (cross-entropy, soft Dice)

/** `e^x` per lane in float32 (Cephes `expf`: range reduction by ln 2 and a degree-6 polynomial; relative error < 2e-7). */
function exp4(v: v128): v128 {
  const x0 = f32x4.max(f32x4.min(v, f32x4.splat(88.3762626647949)), f32x4.splat(-87.3365478515625));
  const fx = f32x4.floor(f32x4.add(f32x4.mul(x0, f32x4.splat(1.44269504088896341)), f32x4.splat(0.5)));
  const x = f32x4.sub(f32x4.sub(x0, f32x4.mul(fx, f32x4.splat(0.693359375))), f32x4.mul(fx, f32x4.splat(-2.12194440e-4)));
  const z = f32x4.mul(x, x);
  let y = f32x4.splat(1.9875691500e-4);
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(1.3981999507e-3));
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(8.3334519073e-3));
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(4.1665795894e-2));
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(1.6666665459e-1));
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(5.0000001201e-1));
  y = f32x4.add(f32x4.add(f32x4.mul(y, z), x), f32x4.splat(1));
  const pow2n = i32x4.shl(i32x4.add(i32x4.trunc_sat_f32x4_s(fx), i32x4.splat(127)), 23);
  return f32x4.mul(y, pow2n);
}

/** Natural logarithm per lane of positive normal float32 values (Cephes `logf`; relative error < 2e-7). */
function log4(v: v128): v128 {
  const bits = v;
  let e = f32x4.convert_i32x4_s(i32x4.sub(i32x4.shr_u(bits, 23), i32x4.splat(126)));
  // The mantissa as a value in [0.5, 1).
  let x = v128.or(v128.and(bits, i32x4.splat(0x807fffff)), i32x4.splat(0x3f000000));
  const small = f32x4.lt(x, f32x4.splat(0.707106781186547524));
  e = f32x4.sub(e, v128.and(small, f32x4.splat(1)));
  // x < sqrt(1/2): 2x - 1, else x - 1
  x = f32x4.sub(f32x4.add(x, v128.and(small, x)), f32x4.splat(1));
  const z = f32x4.mul(x, x);
  let y = f32x4.splat(7.0376836292e-2);
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(-1.1514610310e-1));
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(1.1676998740e-1));
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(-1.2420140846e-1));
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(1.4249322787e-1));
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(-1.6668057665e-1));
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(2.0000714765e-1));
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(-2.4999993993e-1));
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(3.3333331174e-1));
  y = f32x4.mul(f32x4.mul(y, x), z);
  y = f32x4.add(y, f32x4.mul(e, f32x4.splat(-2.12194440e-4)));
  y = f32x4.sub(y, f32x4.mul(z, f32x4.splat(0.5)));
  return f32x4.add(f32x4.add(x, y), f32x4.mul(e, f32x4.splat(0.693359375)));
}

/**
 * Softmax over the last axis: `y[r, k] = e^(x[r, k] - m_r) / sum_j e^(x[r, j] - m_r)` with `m_r` the row's maximum,
 * for `rows` rows of `c` float32 values. Two classes run four rows per SIMD step; other widths four values of a row.
 */
export function softmaxRows(x: usize, y: usize, rows: i32, c: i32): void {
  let r = 0;
  if (c == 2) {
    for (; r + 4 <= rows; r += 4) {
      const o = (<usize>r) << 3;
      const lo = v128.load(x + o);
      const hi = v128.load(x + o + 16);
      const a = v128.shuffle<f32>(lo, hi, 0, 2, 4, 6);
      const b = v128.shuffle<f32>(lo, hi, 1, 3, 5, 7);
      const m = f32x4.max(a, b);
      const ea = exp4(f32x4.sub(a, m));
      const eb = exp4(f32x4.sub(b, m));
      const s = f32x4.add(ea, eb);
      const ya = f32x4.div(ea, s);
      const yb = f32x4.div(eb, s);
      v128.store(y + o, v128.shuffle<f32>(ya, yb, 0, 4, 1, 5));
      v128.store(y + o + 16, v128.shuffle<f32>(ya, yb, 2, 6, 3, 7));
    }
  }
  for (; r < rows; r++) {
    const o = (<usize>r * <usize>c) << 2;
    let m = load<f32>(x + o);
    for (let k = 1; k < c; k++) m = max(m, load<f32>(x + o + ((<usize>k) << 2)));
    const vm = f32x4.splat(m);
    let s: f32 = 0;
    let k = 0;
    for (; k + 4 <= c; k += 4) {
      const q = o + ((<usize>k) << 2);
      const e = exp4(f32x4.sub(v128.load(x + q), vm));
      v128.store(y + q, e);
      s += f32x4.extract_lane(e, 0) + f32x4.extract_lane(e, 1) + f32x4.extract_lane(e, 2) + f32x4.extract_lane(e, 3);
    }
    for (; k < c; k++) {
      const q = o + ((<usize>k) << 2);
      const e = f32x4.extract_lane(exp4(f32x4.splat(load<f32>(x + q) - m)), 0);
      store<f32>(y + q, e);
      s += e;
    }
    for (k = 0; k < c; k++) {
      const q = y + o + ((<usize>k) << 2);
      store<f32>(q, load<f32>(q) / s);
    }
  }
}

/** The gradient of a softmax over the last axis, from its output `y`: `dx[r, k] = dy y - (sum_j dy[r, j] y[r, j]) y`. */
export function softmaxGrad(y: usize, dy: usize, dx: usize, rows: i32, c: i32): void {
  let r = 0;
  if (c == 2) {
    for (; r + 2 <= rows; r += 2) {
      const o = (<usize>r) << 3;
      const vy = v128.load(y + o);
      const p = f32x4.mul(v128.load(dy + o), vy);
      // the sum of each row's two products, in both of its lanes
      const s = f32x4.add(p, v128.shuffle<f32>(p, p, 1, 0, 3, 2));
      v128.store(dx + o, f32x4.sub(p, f32x4.mul(s, vy)));
    }
  }
  for (; r < rows; r++) {
    const o = (<usize>r * <usize>c) << 2;
    let s: f32 = 0;
    for (let k = 0; k < c; k++) {
      const q = o + ((<usize>k) << 2);
      s += load<f32>(dy + q) * load<f32>(y + q);
    }
    for (let k = 0; k < c; k++) {
      const q = o + ((<usize>k) << 2);
      const yk = load<f32>(y + q);
      store<f32>(dx + q, load<f32>(dy + q) * yk - s * yk);
    }
  }
}

/**
 * Adds pixel `i`'s probabilities to the class sums of {@link segLossSums}; returns `p_y` (0 for a pixel of no class, 1
 * for an ignored pixel or `i >= n`, which weigh 0).
 */
@inline
function pixelSums(p: usize, labels: usize, i: i32, n: i32, c: i32, sumP: usize, count: usize, inter: usize): f32 {
  if (i >= n) return 1;
  const y = load<i32>(labels + ((<usize>i) << 2));
  if (y < 0) return 1;
  const row = p + ((<usize>i * <usize>c) << 2);
  for (let k = 0; k < c; k++) {
    const q = sumP + ((<usize>k) << 3);
    store<f64>(q, load<f64>(q) + <f64>load<f32>(row + ((<usize>k) << 2)));
  }
  if (y >= c) return 0;
  const pt = load<f32>(row + ((<usize>y) << 2));
  const qc = count + ((<usize>y) << 3);
  store<f64>(qc, load<f64>(qc) + 1);
  const qi = inter + ((<usize>y) << 3);
  store<f64>(qi, load<f64>(qi) + <f64>pt);
  return pt;
}

/** The cross-entropy weight of pixel `i` in {@link segLossSums}. */
@inline
function pixelWeight(labels: usize, i: i32, n: i32, c: i32, weights: usize): f32 {
  if (i >= n) return 0;
  const y = load<i32>(labels + ((<usize>i) << 2));
  if (y < 0) return 0;
  if (y >= c) return weights ? 0 : 1;
  return weights ? load<f32>(weights + ((<usize>y) << 2)) : 1;
}

/**
 * The sums behind the cross-entropy and soft Dice of `n` pixels: probabilities `p [n, c]` (float32), labels `[n]`
 * (int32; negative = ignored; `>= c` = a valid pixel of no class), class weights `weights [c]` (float32, 0 = all 1).
 * Writes `2 + 3c` float64 values to `sums`: the weighted cross-entropy `sum w_y * -log(clip(p_y, lo, hi))` (a pixel of
 * no class has `p_y = 0` and weight 1 without class weights, 0 with them), the summed weight, then per class the sum
 * of `p_k` over valid pixels, the count of pixels labelled `k` and the sum of `p_k` over those pixels.
 */
export function segLossSums(p: usize, labels: usize, n: i32, c: i32, weights: usize, lo: f32, hi: f32, sums: usize): void {
  memory.fill(sums, 0, (<usize>(2 + 3 * c)) << 3);
  const sumP = sums + 16;
  const count = sumP + ((<usize>c) << 3);
  const inter = count + ((<usize>c) << 3);
  let ce = f64x2.splat(0);
  let weight = f64x2.splat(0);
  const vlo = f32x4.splat(lo);
  const vhi = f32x4.splat(hi);
  for (let i = 0; i < n; i += 4) {
    let pt = f32x4.splat(pixelSums(p, labels, i, n, c, sumP, count, inter));
    pt = f32x4.replace_lane(pt, 1, pixelSums(p, labels, i + 1, n, c, sumP, count, inter));
    pt = f32x4.replace_lane(pt, 2, pixelSums(p, labels, i + 2, n, c, sumP, count, inter));
    pt = f32x4.replace_lane(pt, 3, pixelSums(p, labels, i + 3, n, c, sumP, count, inter));
    let w = f32x4.splat(pixelWeight(labels, i, n, c, weights));
    w = f32x4.replace_lane(w, 1, pixelWeight(labels, i + 1, n, c, weights));
    w = f32x4.replace_lane(w, 2, pixelWeight(labels, i + 2, n, c, weights));
    w = f32x4.replace_lane(w, 3, pixelWeight(labels, i + 3, n, c, weights));
    const term = f32x4.mul(w, f32x4.neg(log4(f32x4.min(f32x4.max(pt, vlo), vhi))));
    ce = f64x2.add(ce, f64x2.add(f64x2.promote_low_f32x4(term), promoteHigh(term)));
    weight = f64x2.add(weight, f64x2.add(f64x2.promote_low_f32x4(w), promoteHigh(w)));
  }
  store<f64>(sums, f64x2.extract_lane(ce, 0) + f64x2.extract_lane(ce, 1));
  store<f64>(sums, f64x2.extract_lane(weight, 0) + f64x2.extract_lane(weight, 1), 8);
}

/**
 * The gradient of `ceScale * cross-entropy sum + Dice term` (see {@link segLossSums}) with respect to `p`: for a valid
 * pixel, `dp[i, k] = a_k + (k == y ? b_k : 0)`, plus `-w_y * ceScale / p_y` at `k == y` where `lo <= p_y <= hi` (the
 * clip passes the gradient); 0 for an ignored pixel. `coef` points at the `2c` float32 values `a_0..a_c-1, b_0..b_c-1`.
 */
export function segLossGrad(
  p: usize,
  labels: usize,
  n: i32,
  c: i32,
  weights: usize,
  lo: f32,
  hi: f32,
  ceScale: f32,
  coef: usize,
  dp: usize,
): void {
  const b = coef + ((<usize>c) << 2);
  for (let i = 0; i < n; i++) {
    const y = load<i32>(labels + ((<usize>i) << 2));
    const o = (<usize>i * <usize>c) << 2;
    if (y < 0) {
      zero(dp + o, c);
      continue;
    }
    memory.copy(dp + o, coef, (<usize>c) << 2);
    if (y < c) {
      const q = (<usize>y) << 2;
      let g = load<f32>(dp + o + q) + load<f32>(b + q);
      const pt = load<f32>(p + o + q);
      if (pt >= lo && pt <= hi) g += (-(weights ? load<f32>(weights + q) : 1) * ceScale) / pt;
      store<f32>(dp + o + q, g);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Rectangles of tensors (the tap-sliced dilated convolutions)

/**
 * Copies `planes x rows` segments of `len` float32 values, segment `(p, r)` starting at `src + p * planeStride + r *
 * rowStride` (strides in values), to `dst` one after another; with `add`, adds them to `dst` instead
 * (`dst` then holds the segments and `src` is the target: the segments are added into the strided layout).
 */
export function copyRect(src: usize, dst: usize, planes: i32, planeStride: i32, rows: i32, rowStride: i32, len: i32, add: i32): void {
  let d = dst;
  const bytes = (<usize>len) << 2;
  for (let p = 0; p < planes; p++) {
    for (let r = 0; r < rows; r++) {
      const s = src + ((<usize>p * <usize>planeStride + <usize>r * <usize>rowStride) << 2);
      if (add) {
        let j = 0;
        for (; j + 4 <= len; j += 4) {
          const o = (<usize>j) << 2;
          v128.store(s + o, f32x4.add(v128.load(s + o), v128.load(d + o)));
        }
        for (; j < len; j++) {
          const o = (<usize>j) << 2;
          store<f32>(s + o, load<f32>(s + o) + load<f32>(d + o));
        }
      } else {
        memory.copy(d, s, bytes);
      }
      d += bytes;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Matrix product for a fresh right operand

/** Depth of one block of {@link gemm}'s sum: a block of 8 columns of `b` (64 KiB) stays in cache across rows. */
const GEMM_DEPTH: i32 = 2048;

/**
 * `c [m, n] = a [m, k] x b [k, n]` (row-major float32, `n` a multiple of 4), with no packing of `b`: XNNPACK's matmul
 * repacks its right operand on every call with a new one (5-17 ns per value, more than the products themselves when
 * `k` is a convolution's pixel count). Blocks of 4 rows x 8 columns of `c` in registers, `k` in blocks of
 * {@link GEMM_DEPTH}; every sum runs in one fixed order.
 */
export function gemm(a: usize, b: usize, c: usize, m: i32, k: i32, n: i32): void {
  zero(c, m * n);
  const rowA = (<usize>k) << 2;
  const rowB = (<usize>n) << 2;
  for (let k0 = 0; k0 < k; k0 += GEMM_DEPTH) {
    const depth = min(GEMM_DEPTH, k - k0);
    let j = 0;
    for (; j + 8 <= n; j += 8) {
      let i = 0;
      for (; i + 4 <= m; i += 4) {
        const pc = c + ((<usize>(i * n + j)) << 2);
        let c00 = v128.load(pc);
        let c01 = v128.load(pc, 16);
        let c10 = v128.load(pc + rowB);
        let c11 = v128.load(pc + rowB, 16);
        let c20 = v128.load(pc + 2 * rowB);
        let c21 = v128.load(pc + 2 * rowB, 16);
        let c30 = v128.load(pc + 3 * rowB);
        let c31 = v128.load(pc + 3 * rowB, 16);
        let pa = a + <usize>i * rowA + ((<usize>k0) << 2);
        let pb = b + <usize>k0 * rowB + ((<usize>j) << 2);
        for (let t = 0; t < depth; t++) {
          const b0 = v128.load(pb);
          const b1 = v128.load(pb, 16);
          const a0 = v128.load32_splat(pa);
          const a1 = v128.load32_splat(pa + rowA);
          const a2 = v128.load32_splat(pa + 2 * rowA);
          const a3 = v128.load32_splat(pa + 3 * rowA);
          c00 = f32x4.add(c00, f32x4.mul(a0, b0));
          c01 = f32x4.add(c01, f32x4.mul(a0, b1));
          c10 = f32x4.add(c10, f32x4.mul(a1, b0));
          c11 = f32x4.add(c11, f32x4.mul(a1, b1));
          c20 = f32x4.add(c20, f32x4.mul(a2, b0));
          c21 = f32x4.add(c21, f32x4.mul(a2, b1));
          c30 = f32x4.add(c30, f32x4.mul(a3, b0));
          c31 = f32x4.add(c31, f32x4.mul(a3, b1));
          pa += 4;
          pb += rowB;
        }
        v128.store(pc, c00);
        v128.store(pc, c01, 16);
        v128.store(pc + rowB, c10);
        v128.store(pc + rowB, c11, 16);
        v128.store(pc + 2 * rowB, c20);
        v128.store(pc + 2 * rowB, c21, 16);
        v128.store(pc + 3 * rowB, c30);
        v128.store(pc + 3 * rowB, c31, 16);
      }
      for (; i < m; i++) gemmRow(a, b, c, i, j, 8, k0, depth, rowA, rowB);
    }
    if (j < n) for (let i = 0; i < m; i++) gemmRow(a, b, c, i, j, 4, k0, depth, rowA, rowB);
  }
}

/** One row of {@link gemm}'s block: `c[i, j .. j + width]` (width 4 or 8) over `depth` values of the sum from `k0`. */
function gemmRow(a: usize, b: usize, c: usize, i: i32, j: i32, width: i32, k0: i32, depth: i32, rowA: usize, rowB: usize): void {
  const pc = c + ((<usize>(i * <i32>(rowB >> 2) + j)) << 2);
  let c0 = v128.load(pc);
  let c1 = width == 8 ? v128.load(pc, 16) : f32x4.splat(0);
  let pa = a + <usize>i * rowA + ((<usize>k0) << 2);
  let pb = b + <usize>k0 * rowB + ((<usize>j) << 2);
  for (let t = 0; t < depth; t++) {
    const a0 = v128.load32_splat(pa);
    c0 = f32x4.add(c0, f32x4.mul(a0, v128.load(pb)));
    if (width == 8) c1 = f32x4.add(c1, f32x4.mul(a0, v128.load(pb, 16)));
    pa += 4;
    pb += rowB;
  }
  v128.store(pc, c0);
  if (width == 8) v128.store(pc, c1, 16);
}

/**
 * `out[i] = dy[i] * step(x[i])` for `n` values, `step(x)` being 1 for `x > 0`, NaN for NaN, else 0: tfjs-core's
 * gradient of `Relu` (`dy * step(x)`) in one pass.
 */
export function reluGrad(x: usize, dy: usize, out: usize, n: i32): void {
  const zero4 = f32x4.splat(0);
  const one4 = f32x4.splat(1);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const o = (<usize>i) << 2;
    const v = v128.load(x + o);
    const step = v128.bitselect(v, v128.and(f32x4.gt(v, zero4), one4), f32x4.ne(v, v));
    v128.store(out + o, f32x4.mul(v128.load(dy + o), step));
  }
  for (; i < n; i++) {
    const o = (<usize>i) << 2;
    const v = load<f32>(x + o);
    store<f32>(out + o, load<f32>(dy + o) * (v != v ? v : v > 0 ? <f32>1 : <f32>0));
  }
}
