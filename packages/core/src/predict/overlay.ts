import { backgroundClass, parseColor, type ClassDef } from '../data/class-map.js';
import type { RasterImage } from '../data/image-io.js';

/**
 * Tints an image with the colours of a label map: each pixel becomes `(1 - alpha) * pixel + alpha * colour` of
 * its class. Pixels of the background class ({@link backgroundClass}: the class marked `background: true`, else the
 * class named `background`, else the class of value 0), and values no class has, are left as they are, so white
 * glass stays white and the tissue shows through.
 *
 * @param image the image, `[height, width, channels]` with 1 or 3 channels.
 * @param values the label map as class values (as written to `_labels` files), `[height, width]`.
 * @param classes the classes with their `#rrggbb` colours (and `background` flags).
 * @param alpha opacity of the class colours. Default 0.4.
 * @returns an RGB image of the same size.
 * @example
 * ```ts
 * await writePng('overlay.png', renderOverlay(image, labelValues, manifest.classes));
 * ```
 */
export function renderOverlay(
  image: RasterImage,
  values: Uint8Array,
  classes: readonly ClassDef[],
  alpha = 0.4,
): RasterImage {
  const { width, height, channels } = image;
  const colours = new Map<number, [number, number, number]>();
  const background = backgroundClass(classes);
  for (const c of classes) if (c !== background) colours.set(c.value, parseColor(c.color));
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    const colour = colours.get(values[i]);
    for (let ch = 0; ch < 3; ch++) {
      const base = image.data[i * channels + (channels === 1 ? 0 : ch)];
      rgb[i * 3 + ch] = colour ? Math.round((1 - alpha) * base + alpha * colour[ch]) : base;
    }
  }
  return { data: rgb, width, height, channels: 3 };
}
