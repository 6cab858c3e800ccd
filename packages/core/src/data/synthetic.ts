import type { MaskImage, RasterImage } from './image-io.js';
import type { Random } from './random.js';

/** Options of {@link randSyntheticTissue}. */
export interface SyntheticTissueOptions {
  width: number;
  height: number;
  /** Nuclei per 10,000 pixels. Default 6. */
  density?: number;
  /** Nucleus radius range in pixels. Default [5, 11]. */
  radius?: [number, number];
}

/**
 * A procedurally drawn H&E-like tile: pink stroma with fibres and noise, purple elliptical nuclei with
 * darker chromatin speckles, and the matching mask (1 = nucleus, 0 = background). Used by `tessera demo`
 * and by tests that need labelled RGB data.
 *
 * @example
 * ```ts
 * const { image, mask } = randSyntheticTissue({ width: 256, height: 256 }, createRandom(1));
 * ```
 */
export function randSyntheticTissue(
  options: SyntheticTissueOptions,
  rng: Random,
): { image: RasterImage; mask: MaskImage } {
  const { width, height } = options;
  const density = options.density ?? 6;
  const [rMin, rMax] = options.radius ?? [5, 11];
  const n = width * height;
  const rgb = new Float32Array(n * 3);
  const mask = new Uint8Array(n);
  // Stroma: pink, modulated by low-frequency waves (fibres) and pixel noise.
  const waves = Array.from({ length: 4 }, () => ({
    fx: rng.uniform(0.01, 0.06),
    fy: rng.uniform(0.01, 0.06),
    phase: rng.uniform(0, Math.PI * 2),
    amp: rng.uniform(0.03, 0.08),
  }));
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let t = 0;
      for (const w of waves) t += w.amp * Math.sin(w.fx * x + w.fy * y + w.phase);
      const i = (y * width + x) * 3;
      const noise = rng.normal(0, 0.025);
      rgb[i] = 0.93 + t * 0.3 + noise;
      rgb[i + 1] = 0.72 + t + noise;
      rgb[i + 2] = 0.82 + t * 0.6 + noise;
    }
  }
  const count = Math.round((density * n) / 10_000);
  for (let k = 0; k < count; k++) {
    const cx = rng.uniform(0, width);
    const cy = rng.uniform(0, height);
    const a = rng.uniform(rMin, rMax);
    const b = a * rng.uniform(0.55, 1);
    const angle = rng.uniform(0, Math.PI);
    const cos = Math.cos(angle);
    const sin = Math.sin(angle);
    const shade = rng.uniform(0.75, 1.1);
    const x0 = Math.max(0, Math.floor(cx - a - 1));
    const x1 = Math.min(width - 1, Math.ceil(cx + a + 1));
    const y0 = Math.max(0, Math.floor(cy - a - 1));
    const y1 = Math.min(height - 1, Math.ceil(cy + a + 1));
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        const dx = x - cx;
        const dy = y - cy;
        const u = (dx * cos + dy * sin) / a;
        const v = (-dx * sin + dy * cos) / b;
        const r2 = u * u + v * v;
        if (r2 > 1) continue;
        const p = y * width + x;
        mask[p] = 1;
        const speckle = rng.next() < 0.15 ? -0.12 : 0;
        const edge = 0.08 * r2;
        rgb[p * 3] = (0.36 + edge + speckle) * shade;
        rgb[p * 3 + 1] = (0.22 + edge + speckle) * shade;
        rgb[p * 3 + 2] = (0.55 + edge + speckle) * shade;
      }
    }
  }
  const data = new Uint8Array(n * 3);
  for (let i = 0; i < n * 3; i++) data[i] = Math.max(0, Math.min(255, Math.round(rgb[i] * 255)));
  return { image: { data, width, height, channels: 3 }, mask: { data: mask, width, height } };
}
