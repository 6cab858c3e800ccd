/**
 * The pretext task's corruption: rectangles of each training crop are blanked (set to the normalised mean, 0) and only
 * their pixels are scored, so the network learns to fill in tissue from its context (Pathak et al.'s context
 * encoders; the in-painting task of Models Genesis), not to copy visible pixels through its skip connections.
 */
import type { Random } from '@tessera/core';

/** The share of each crop that is blanked: drawn uniformly in this range per crop. */
export const MASKED_SHARE: readonly [number, number] = [0.25, 0.5];

/**
 * Blanks random rectangles (sides 1/8 to 1/4 of the crop) of each crop of a batch until its share is reached, and
 * sets the labels of the pixels left visible to -1 (ignored by the loss).
 * @param image `[batch, tile, tile, channels]`, normalised.
 * @param labels `[batch, tile, tile]` class indices.
 */
export function maskRegions(image: Float32Array, labels: Int32Array, random: Random, tile: number): void {
  const pixels = tile * tile;
  const batch = labels.length / pixels;
  const channels = image.length / labels.length;
  const masked = new Uint8Array(pixels);
  for (let b = 0; b < batch; b++) {
    masked.fill(0);
    const share = random.uniform(MASKED_SHARE[0], MASKED_SHARE[1]);
    let count = 0;
    const [small, large] = [Math.max(1, Math.round(tile / 8)), Math.max(1, Math.round(tile / 4))];
    while (count < share * pixels) {
      const h = small + random.int(large - small + 1);
      const w = small + random.int(large - small + 1);
      const y0 = random.int(tile - h + 1);
      const x0 = random.int(tile - w + 1);
      for (let y = y0; y < y0 + h; y++) {
        for (let x = x0; x < x0 + w; x++) {
          const p = y * tile + x;
          if (!masked[p]) count++;
          masked[p] = 1;
        }
      }
    }
    for (let p = 0; p < pixels; p++) {
      const at = b * pixels + p;
      if (masked[p]) image.fill(0, at * channels, (at + 1) * channels);
      else labels[at] = -1;
    }
  }
}
