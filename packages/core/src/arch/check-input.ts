import { InvalidOptionError } from '../errors.js';
import type { ArchitecturePlugin } from './architecture.js';

/**
 * Checks that an image of `height` x `width` pixels can go through an architecture: both sides must be multiples of
 * the plugin's `inputMultiple(options)`. tfjs-layers does not always reject such inputs itself (a fully convolutional
 * model may silently return an output of another size), so callers that do not pad check first.
 *
 * @param plugin the architecture.
 * @param options its resolved options.
 * @throws InvalidOptionError naming the architecture, the multiple, the size received and the padded size to use.
 * @example
 * ```ts
 * checkInputSize(fcn8s(), FCN8S_DEFAULTS, 100, 96);
 * // InvalidOptionError: Expected image height and width divisible by 32 for architecture "fcn8s" but received
 * // 100x96. Pad the image to 128x96 (or use --tile 128).
 * ```
 */
export function checkInputSize<O extends object>(
  plugin: ArchitecturePlugin<O>,
  options: O,
  height: number,
  width: number,
): void {
  const multiple = plugin.inputMultiple(options);
  if (height > 0 && width > 0 && height % multiple === 0 && width % multiple === 0) return;
  const up = (v: number) => Math.max(multiple, Math.ceil(v / multiple) * multiple);
  const ph = up(height);
  const pw = up(width);
  throw new InvalidOptionError(
    `Expected image height and width divisible by ${multiple} for architecture "${plugin.name}" but received ` +
      `${height}x${width}. Pad the image to ${ph}x${pw} (or use --tile ${Math.max(ph, pw)}).`,
  );
}
