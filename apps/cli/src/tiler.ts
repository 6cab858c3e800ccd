import { InvalidInputError } from '@tessera/core';

/** The module `@tessera/tiler`. */
export type TilerModule = typeof import('@tessera/tiler');

let loading: Promise<TilerModule | null> | undefined;

/**
 * `@tessera/tiler`, imported on first use, or `null` when it is not installed. The tiler is an optional peer
 * dependency of the CLI, needed only for whole slides: the CLI starts and predicts ordinary images without it.
 */
export function importTiler(): Promise<TilerModule | null> {
  loading ??= import('@tessera/tiler').catch((error: unknown) => {
    const e = error as { code?: string; message?: string };
    // Only the tiler itself missing means "not installed"; a missing dependency of the tiler is a real failure.
    if (e?.code === 'ERR_MODULE_NOT_FOUND' && /['"]@tessera\/tiler['"]/.test(String(e.message))) return null;
    throw error;
  });
  return loading;
}

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
