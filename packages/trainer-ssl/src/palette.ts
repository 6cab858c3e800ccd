/**
 * A colour palette of the pretraining tiles (k-means over a sample of their pixels) and the quantisation of a tile to
 * palette indices: the classes the inpainting network predicts, as image GPT predicts 9-bit palette colours.
 */
import type { Random, RasterImage } from '@tessera/core';

/** `k` colours (`channels` values each, 0-255) by k-means over at most `samples` pixels of `images`. */
export function fitPalette(images: readonly RasterImage[], k: number, random: Random, samples = 65536): number[][] {
  const channels = images[0].channels;
  const total = images.reduce((s, im) => s + im.width * im.height, 0);
  const n = Math.min(samples, total);
  const points = new Float32Array(n * channels);
  for (let i = 0; i < n; i++) {
    const image = images[random.int(images.length)];
    const p = random.int(image.width * image.height) * channels;
    for (let c = 0; c < channels; c++) points[i * channels + c] = image.data[p + c];
  }
  // k-means++ seeding, then Lloyd iterations.
  const centres: number[][] = [Array.from(points.subarray(0, channels))];
  const nearest = new Float32Array(n).fill(Infinity);
  while (centres.length < k) {
    const last = centres[centres.length - 1];
    let sum = 0;
    for (let i = 0; i < n; i++) {
      nearest[i] = Math.min(nearest[i], distance(points, i, last, channels));
      sum += nearest[i];
    }
    let pick = random.next() * sum;
    let chosen = n - 1;
    for (let i = 0; i < n; i++) {
      pick -= nearest[i];
      if (pick <= 0) {
        chosen = i;
        break;
      }
    }
    centres.push(Array.from(points.subarray(chosen * channels, (chosen + 1) * channels)));
  }
  const assignment = new Int32Array(n);
  for (let iteration = 0; iteration < 15; iteration++) {
    const sums = centres.map(() => new Float64Array(channels));
    const counts = new Int32Array(k);
    for (let i = 0; i < n; i++) {
      const j = closest(points, i, centres, channels);
      assignment[i] = j;
      counts[j]++;
      for (let c = 0; c < channels; c++) sums[j][c] += points[i * channels + c];
    }
    centres.forEach((centre, j) => {
      if (counts[j] > 0) for (let c = 0; c < channels; c++) centre[c] = sums[j][c] / counts[j];
    });
  }
  // Dark to bright, so that the class order means something in a legend.
  return centres
    .map((c) => c.map((v) => Math.round(v)))
    .sort((a, b) => a.reduce((s, v) => s + v, 0) - b.reduce((s, v) => s + v, 0));
}

/** The palette index of each pixel of `image` (nearest colour). */
export function quantize(image: RasterImage, palette: readonly number[][]): Uint8Array {
  const { channels } = image;
  const pixels = image.width * image.height;
  const labels = new Uint8Array(pixels);
  const values = Float32Array.from(image.data);
  for (let i = 0; i < pixels; i++) labels[i] = closest(values, i, palette, channels);
  return labels;
}

function distance(points: Float32Array, i: number, centre: readonly number[], channels: number): number {
  let d = 0;
  for (let c = 0; c < channels; c++) {
    const e = points[i * channels + c] - centre[c];
    d += e * e;
  }
  return d;
}

function closest(points: Float32Array, i: number, centres: readonly (readonly number[])[], channels: number): number {
  let best = 0;
  let bestDistance = Infinity;
  centres.forEach((centre, j) => {
    const d = distance(points, i, centre, channels);
    if (d < bestDistance) {
      bestDistance = d;
      best = j;
    }
  });
  return best;
}
