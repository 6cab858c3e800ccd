import { InvalidInputError } from '@tessera/core';
import { importOptional } from './optional.js';

/** The module `@tessera/tiler`. */
export type TilerModule = typeof import('@tessera/tiler');

/**
 * `@tessera/tiler`, imported on first use, or `null` when it is not installed. The tiler is an optional peer
 * dependency of the CLI, needed only for whole slides: the CLI starts and predicts ordinary images without it.
 */
export const importTiler: () => Promise<TilerModule | null> = importOptional(
  '@tessera/tiler',
  () => import('@tessera/tiler'),
);

/**
 * `@tessera/tiler`, for `what` (e.g. "Whole slide CMU-1.svs").
 * @throws InvalidInputError naming the input and the package to install when the tiler is not installed.
 */
export async function requireTiler(what: string): Promise<TilerModule> {
  const tiler = await importTiler();
  if (!tiler) {
    throw new InvalidInputError(
      `${what} needs the whole-slide tiler @tessera/tiler, which is not installed here.`,
      'Install it beside the CLI: npm install @tessera/tiler',
    );
  }
  return tiler;
}
